/**
 * comm.free() (MPI_Comm_free): a program that makes and frees communicators for ever never runs
 * out of context ids, misuse is refused with an MpiError, and a freed communicator's leftover
 * messages are discarded, never delivered to the communicator that takes its id next. Real
 * guests on the bypass path (fixtures/mpi-comm-free.ts).
 *
 * Before it, ids only grew: the 32,768th dup or split of a job failed "out of context ids".
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

test("33,000 communicators made and freed in turn; free() refuses the world, a freed one and pending requests; leftovers are discarded, not delivered to the next holder of the id", async () => {
  const lines: string[] = [];
  const res = await new Job(host, {
    n: 2,
    path: "bypass",
    program: new URL("./fixtures/mpi-comm-free.js", import.meta.url),
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  }).run();
  const bad = res.failed;
  assert.equal(res.exitCode, 0, `rank ${bad?.rank} failed: ${bad?.error?.stack}\n${lines.join("\n")}`);
  const [r0, r1] = res.ranks.map((r) => r.result as Record<string, unknown>);
  for (const r of [r0, r1]) {
    assert.equal(r.rounds, 33_000);
    assert.match(String(r.freeWorld), /^MPI free: the world communicator cannot be freed/);
    assert.match(String(r.freePending), /^MPI free: 1 request\(s\) of this communicator are not complete/);
    assert.match(String(r.useFreed), /^MPI send: this communicator was freed/);
    assert.match(String(r.freeFreed), /^MPI free: this communicator was freed/);
    assert.equal(r.sameId, true, "the freed id is taken again");
    assert.equal(r.leftoverSeen, false);
  }
  // Rank 0 had three messages nobody received; rank 1 its one to itself.
  assert.equal(r0.discarded, 3);
  assert.equal(r1.discarded, 1);
});

test("free() beside a job-mate that keeps sending on the communicator returns, discarding what was there within its budget", async () => {
  const lines: string[] = [];
  const res = await new Job(host, {
    n: 2,
    path: "bypass",
    program: new URL("./fixtures/mpi-free-flood.js", import.meta.url),
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  }).run();
  assert.equal(res.exitCode, 0, `${res.failed?.error?.stack}\n${lines.join("\n")}`);
  const [r0, r1] = res.ranks.map((r) => r.result as Record<string, unknown>);
  assert.equal(
    r1.gaveUp,
    false,
    "free() returned only once the sender stopped (it kept discarding for as long as messages came)",
  );
  assert.equal(r0.freed, true);
  assert.ok((r0.discarded as number) > 0, "what was there was discarded");
});

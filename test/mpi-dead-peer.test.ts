/**
 * A rank whose MX peer has failed costs the ranks that wait on it a clear MpiError naming it,
 * never a hang (design §3): receives from it (blocking, non-blocking, sendrecv, probe), posted
 * before it went or after, and collectives on a communicator with it, on every surviving rank
 * — also one whose own MX sees nothing dead. Real guests on the bypass path; the fixture
 * (fixtures/mpi-dead-peer.ts) fails the peers with MX's own failure path (mx_disconnect).
 *
 * MX matches receives on bits, not peers: before the fix, rank 0's receive from the failed
 * rank waited for ever, as did the collectives. A guard stops the job after a minute and
 * fails the test with where each rank waits.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { runGuarded } from "./helpers/guarded-job.js";

let host: Host;
before(async () => {
  host = await Host.start({ maxEndpoints: 64, endpointsPerDomain: 8 });
});
after(() => host.stop());

function run(mode: "p2p" | "coll"): Promise<Record<string, string>[]> {
  return runGuarded(host, {
    n: 3,
    path: "bypass",
    program: new URL("./fixtures/mpi-dead-peer.js", import.meta.url),
    argv: [mode],
    pages: 4096,
    maxHeapMb: 256,
  });
}

/** An MpiError that names `rank` as gone, with MX's reason. */
function gone(got: string | undefined, rank: number, reason: RegExp): void {
  assert.match(got ?? "(no result)", /^MpiError: MPI/);
  assert.match(got ?? "", new RegExp(`rank ${rank} is unreachable \\(this peer is disconnected: `), got);
  assert.match(got ?? "", reason, got);
}

/** What rank 0 reads in the channel rank 2 closed (channel-abi.ts LaneClosed). */
const PEER_DISCONNECTED = /the peer disconnected from us \(mx_disconnect\)/;
const DISCONNECTED = /this peer is disconnected: we disconnected from this peer \(mx_disconnect\)/;

test("receives from a failed rank fail with an MpiError naming it (waiting when it failed, or posted after): recv, irecv + wait, sendrecv, probe; then every rank's collectives", async () => {
  const [r0, r1, r2] = await run("p2p");
  // Rank 0's MX saw rank 2's channel close while its receive waited.
  gone(r0.dyingWhileWaiting, 2, PEER_DISCONNECTED);
  for (const k of ["recv", "irecvWait", "sendrecvDeadSource", "probe"]) gone(r0[k], 2, PEER_DISCONNECTED);
  // The send to the failed rank fails at once: its error, not a wait on the receive.
  assert.match(r0.sendrecvSameRank, /^MpiError: MPI: send to rank 2 failed: .*the peer disconnected from us/);
  // Rank 2 failed the pair itself.
  for (const k of ["recv", "irecvWait", "probe"]) gone(r2[k], 0, DISCONNECTED);
  assert.match(r2.sendrecvSameRank, /^MpiError: MPI: send to rank 0 failed: .*disconnected/);
  // What rank 0's sendrecv sent to a live rank arrived.
  assert.equal(r1.recvFromLive, "completed");
  assert.equal(r1.got, "7");
  // Twenty more, each failing on its receive while its rendezvous send was under way: the
  // sends were delivered (rank 1 got them all), and rank 0's MX keeps none of them.
  assert.equal(r0.loopedFailures, "20");
  assert.equal(r0.keptAfterErrors, "nothing");
  // Collectives: ranks 0 and 2 know their pair failed; rank 1 does not, and hears it from them.
  gone(r0.barrier, 2, PEER_DISCONNECTED);
  gone(r2.barrier, 0, DISCONNECTED);
  assert.match(
    r1.barrier,
    /^MpiError: MPI barrier: rank [02] left a collective on this communicator with an error/,
  );
  assert.match(r1.barrier, /rank [02] (is unreachable|failed: MX_STATUS_ENDPOINT_UNREACHABLE)/);
  for (const r of [r0, r1, r2]) {
    assert.match(
      r.allreduceAfter,
      /^MpiError: MPI allreduce: an earlier collective on this communicator failed/,
    );
    assert.match(r.finalize, /^MpiError: MPI finalize: its barrier failed/);
  }
});

test("a rank that fails while the others are in an allreduce: both survivors' allreduce fails with an MpiError naming it", async () => {
  const [r0, r1, r2] = await run("coll");
  for (const r of [r0, r1]) {
    assert.match(r.allreduce, /^MpiError: MPI allreduce: /);
    // Either it saw rank 2 go (before its exchange with it, or in it), or a survivor that did told it.
    assert.match(
      r.allreduce,
      /rank 2 (is unreachable|failed: MX_STATUS_ENDPOINT_UNREACHABLE) \(this peer is disconnected: the peer disconnected from us \(mx_disconnect\)\)/,
    );
    assert.match(r.barrier, /^MpiError: MPI barrier: /);
  }
  gone(r2.barrier, 0, DISCONNECTED);
  for (const r of [r0, r1, r2]) assert.match(r.finalize, /^MpiError: MPI finalize: its barrier failed/);
});

/**
 * The MPI library on real ranks (guests on the bypass path, processes on the native path):
 * every collective against a serial reference for several lengths and rank counts,
 * point-to-point semantics (wildcards, probe, waitany, self messages), communicators
 * (dup, split), misuse errors, and a failing rank that ends its job without a hang.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job, type JobResult } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";

let host: Host;
before(async () => {
  host = await Host.start({ maxEndpoints: 64, endpointsPerDomain: 8 });
});
after(() => host.stop());

async function run(
  n: number,
  path: "native" | "bypass",
  fixture: string,
  argv: string[] = [],
): Promise<{ res: JobResult; lines: string[] }> {
  const lines: string[] = [];
  const job = new Job(host, {
    n,
    path,
    program: new URL(`./fixtures/${fixture}.js`, import.meta.url),
    argv,
    pages: 4096,
    maxHeapMb: 256,
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  });
  return { res: await job.run(), lines };
}

function ok(r: { res: JobResult; lines: string[] }): unknown[] {
  const bad = r.res.failed;
  assert.equal(
    r.res.exitCode,
    0,
    `rank ${bad?.rank} failed: ${bad?.error?.stack ?? bad?.error?.message}\n${r.lines.join("\n")}`,
  );
  return r.res.ranks.map((x) => x.result);
}

const LENGTHS = [0, 1, 7, 1000, 100_003];
// Eight ranks (on the 2-core CI machine): the deeper trees, eager and rendezvous (20,011
// doubles are 160 KB); four ranks take 100,003 through the large sizes' pipelines.
const LENGTHS_8 = [0, 1, 7, 1000, 20_011];

for (const n of [1, 2, 3, 4, 8]) {
  const lengths = n === 8 ? LENGTHS_8 : LENGTHS;
  test(`collectives on ${n} native rank(s), lengths ${lengths.join(", ")}`, async () => {
    const results = ok(await run(n, "native", "mpi-coll", [JSON.stringify(lengths)]));
    const checks = results.map((c) => (c as { checks: number }).checks);
    for (const c of checks) assert.ok(c > 0);
  });
}

for (const [n, lengths] of [
  [2, [0, 1, 7, 1000]],
  [3, [0, 7, 100_003]],
] as const) {
  test(`collectives on ${n} bypass ranks (guests), lengths ${lengths.join(", ")}`, async () => {
    const results = ok(await run(n, "bypass", "mpi-coll", [JSON.stringify(lengths)]));
    for (const c of results) assert.ok((c as { checks: number }).checks > 0);
  });
}

for (const [n, path] of [
  [1, "native"],
  [4, "bypass"],
  [5, "native"],
] as const) {
  test(`point-to-point, communicators and misuse on ${n} ${path} rank(s)`, async () => {
    const results = ok(await run(n, path, "mpi-p2p")) as Record<string, unknown>[];
    const r0 = results[0];
    assert.deepEqual(
      r0.anySource,
      Array.from({ length: n - 1 }, (_, i) => i + 1),
    );
    if (n > 1) {
      assert.deepEqual(r0.probe, { source: 1, count: 7, bytes: 56, got: 7, v: 1.5 });
      assert.deepEqual(
        r0.waitany,
        Array.from({ length: n - 1 }, (_, i) => i),
      );
    }
    for (const [rank, r] of results.entries()) {
      assert.equal(r.ring, (rank - 1 + n) % n);
      assert.equal(r.self, true);
      assert.equal(r.dupSum, (n * (n - 1)) / 2);
      const mine = Array.from({ length: n }, (_, i) => i).filter((i) => i % 2 === rank % 2);
      const members = [...mine].reverse();
      assert.deepEqual(r.split, {
        rank: members.indexOf(rank),
        size: mine.length,
        members,
        sum: mine.reduce((a, b) => a + b, 0),
      });
      const errs = r.errors as string[];
      // Named for the call the program made (send's bad dest is send's, not the isend inside it).
      assert.match(errs[0], new RegExp(`^MPI send: dest ${n} is out of range`));
      assert.match(errs[1], /tag -1 is invalid/);
      assert.match(errs[2], /buf must be a numeric TypedArray.*got Array/);
      assert.match(errs[3], /rbuf is a Float64Array but sbuf is a Int32Array/);
      assert.match(errs[4], /op sum is not an MPI operation/);
      assert.match(errs[5], /rbuf has \d+ elements but needs at least/);
      assert.match(errs[6], /root -3 is out of range/);
      assert.match(errs[7], new RegExp(`^MPI sendrecv: dest ${n} is out of range`));
      assert.match(r.afterFinalize as string, /MPI.finalize was called/);
    }
  });
}

test("a rank that throws: the job fails with its rank, the others are stopped (no hang)", async () => {
  const { res } = await run(4, "bypass", "mpi-fail", ["2"]);
  assert.notEqual(res.exitCode, 0);
  assert.equal(res.failed?.rank, 2);
  assert.match(res.failed?.error?.message ?? "", /rank 2 gives up/);
  assert.equal(res.ranks.length, 4);
});

test("MPI.init outside a job says to use myrixen run", async () => {
  const dom = await host.startGuest({
    module: new URL("./fixtures/mpi-nojob.js", import.meta.url),
    pages: 256,
    output: "pipe",
  });
  const e = await dom.exited;
  assert.notEqual(e.state, "shutdown");
  assert.match(e.error?.message ?? "", /run this program with myrixen run/);
});

test("default --pages: 2 ranks send 40 KiB, 44 KiB, ... up to 16 MiB from heap typed arrays, contents checked", async () => {
  const lines: string[] = [];
  const job = new Job(host, {
    n: 2,
    path: "bypass",
    program: new URL("./fixtures/mpi-sizes.js", import.meta.url),
    argv: [String(16 << 20)],
    maxHeapMb: 512,
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  });
  const res = await job.run();
  const bad = res.failed;
  assert.equal(res.exitCode, 0, `rank ${bad?.rank} failed: ${bad?.error?.message}\n${lines.join("\n")}`);
  const r = res.ranks[1].result as { messages: number; bytes: number };
  assert.equal(r.messages, 267);
});

test("a message the rank's memory cannot bounce fails at that size with an error naming --pages", async () => {
  const lines: string[] = [];
  const job = new Job(host, {
    n: 2,
    // The split path stages a rendezvous in registered memory; co-resident ranks on the
    // bypass path push it through their channel instead (the next test).
    path: "split",
    program: new URL("./fixtures/mpi-sizes.js", import.meta.url),
    argv: [String(16 << 20)],
    pages: 2048, // 8 MiB: a 16 MiB message cannot be staged in it
    maxHeapMb: 512,
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  });
  const res = await job.run();
  assert.notEqual(res.exitCode, 0);
  const msg = res.failed?.error?.message ?? "";
  assert.match(msg, /--pages/, msg);
  // It got past the sizes that fit: the failure is at a message of several MiB.
  assert.match(msg, /\b(\d{7,8}) bytes\b/, msg);
});

test("co-resident ranks on the bypass path move messages larger than their memory: pushed through the channel, nothing staged", async () => {
  const res = await new Job(host, {
    n: 2,
    path: "bypass",
    program: new URL("./fixtures/mpi-sizes.js", import.meta.url),
    argv: [String(16 << 20)],
    pages: 2048, // 8 MiB, as above: a bounce of 16 MiB could not be had
    maxHeapMb: 512,
  }).run();
  assert.equal(res.exitCode, 0, res.failed?.error?.message);
  const r = res.ranks[1].result as { messages: number; bytes: number };
  assert.ok(r.bytes > 16 << 20, JSON.stringify(r));
});

test("source verification: forged match bits and a stranger's messages are rejected, never delivered as another rank's", async () => {
  const results = ok(await run(3, "bypass", "mpi-forge")) as Record<string, unknown>[];
  const r0 = results[0];
  for (const k of ["exact", "any", "stranger", "big"]) {
    assert.equal(typeof r0[k], "string", `${k}: ${JSON.stringify(r0[k])} was delivered`);
  }
  assert.match(r0.exact as string, /rank 2\b.*claim.*rank 1|claim.*rank 1.*rank 2\b/);
  assert.match(r0.any as string, /rank 2\b/);
  assert.match(r0.stranger as string, /not .*(job|rank)/);
  assert.deepEqual(r0.genuine, [
    { source: 1, v: 50 },
    { source: 1, v: 60 },
    { source: 1, v: 70 },
    { source: 1, v: 80 },
  ]);
  assert.equal(r0.rejected, 4);
});

/**
 * The latency breakdown: traced ping-pongs between two guests (bypass) stamp every stage of
 * every message in order; the stages add up to about the one-way latency of the same run;
 * with tracing off nothing is stamped; benchBreakdown's rows are valid benchmark rows.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { benchBreakdown, tracedPingpong } from "../src/bench/breakdown.js";
import { type BenchProfile, makeRow, profileFor } from "../src/bench/harness.js";
import { MxPair } from "../src/bench/mx.js";
import { Host } from "../src/host/host.js";
import { collate, TraceBuffer, TraceStage, traceId, traceNow } from "../src/mx/trace.js";

let host: Host;
let pair: MxPair;
before(async () => {
  host = await Host.start({});
  pair = await MxPair.start(host, "bypass");
  await pair.pingpong(8, 2000, 0);
  await pair.pingpong(64 * 1024, 50, 0);
});
after(async () => {
  await pair.stop();
  await host.stop();
});

test("trace buffer: a ring that keeps the newest records; collate joins by id", () => {
  const tb = new TraceBuffer(3); // rounded up to 4
  assert.equal(tb.capacity, 4);
  const id = traceId(0, 5, 7);
  assert.equal(id % 2 ** 32, 7);
  for (let k = 1; k <= 6; k++) tb.record(id, k, k * 10);
  assert.equal(tb.count, 6);
  assert.deepEqual(
    tb.records().map((r) => r.stage),
    [3, 4, 5, 6],
  );
  const m = collate(tb.records()).get(id)!;
  assert.equal(m.get(TraceStage.Completed), 50);
  tb.clear();
  assert.equal(tb.records().length, 0);
  const a = traceNow();
  const b = traceNow();
  assert.ok(b >= a && a > 0);
});

for (const [bytes, protocol, stages] of [
  [8, "eager", ["written", "seen", "copied", "completed"]],
  [
    64 * 1024,
    "rndv",
    // Co-resident: pushed through the channel once the receiver's CTS came (channel-path.ts).
    ["rndv-sent", "seen", "push-started", "copied", "completed"],
  ],
] as const) {
  test(`bypass ${bytes} B: every message has every stage, in order; stages ≈ one-way latency`, async () => {
    const iters = bytes <= 8 ? 500 : 50;
    const run = await tracedPingpong(pair, bytes, iters, 20);
    assert.equal(run.protocol, protocol);
    assert.deepEqual(run.stages, stages);
    assert.equal(run.incomplete, 0, "every traced message has every stage");
    assert.equal(run.messages.length, 2 * iters, "both messages of each round trip were traced");
    for (const s of run.stamps)
      for (let k = 1; k < s.length; k++)
        assert.ok(s[k] >= s[k - 1], `stage ${k} (${s[k]}) before stage ${k - 1} (${s[k - 1]})`);
    for (const m of run.messages) for (const d of m) assert.ok(d >= 0 && Number.isFinite(d));
    // Each message's stages sum to its time from isend to the receiver's wait seeing it done,
    // which lies within its round trip (2 × one-way). How close it comes to one-way depends
    // on the machine's load (wake-ups between a receive and the reply), so no lower bound.
    const sums = run.messages.map((m) => m.reduce((x, y) => x + y, 0));
    const mean = sums.reduce((x, y) => x + y, 0) / sums.length;
    assert.ok(run.latencyUs > 0);
    assert.ok(
      mean > 0 && mean <= 2 * run.latencyUs,
      `stage sum ${mean.toFixed(2)} µs vs one-way latency ${run.latencyUs.toFixed(2)} µs`,
    );
  });
}

test("tracing off: the trace buffers stay empty (8 B and 64 KiB)", async () => {
  for (const bytes of [8, 64 * 1024]) {
    const run = await tracedPingpong(pair, bytes, 50, 5, false);
    assert.equal(run.records, 0, `${bytes} B: records with tracing off`);
    assert.ok(run.latencyUs > 0);
  }
});

test("benchBreakdown: rows pass makeRow validation and carry their stage", async () => {
  const profile: BenchProfile = { ...profileFor(true), runs: 2, warmupRuns: 0 };
  const rows = await benchBreakdown(host, profile, { sizes: [8, 64 * 1024], transports: ["bypass"] });
  assert.equal(rows.length, 4 + 5); // eager stages, and a co-resident rendezvous pushed through the channel
  for (const r of rows) {
    assert.equal(r.bench, "breakdown");
    assert.equal(r.transport, "bypass");
    assert.equal(r.metric, "latency_us");
    assert.equal(typeof r.stage, "string");
    const { stage, ...plain } = r;
    assert.deepEqual(makeRow(plain, plain), plain, `row ${stage}`);
    assert.equal(r.runs, 2);
  }
  assert.deepEqual(
    rows.filter((r) => r.bytes === 8).map((r) => r.stage),
    ["written", "seen", "copied", "completed"],
  );
});

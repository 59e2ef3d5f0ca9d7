/**
 * The latency breakdown: traced ping-pongs between two guests stamp every stage of every
 * message in order — on the co-resident channel (bypass, one host), on the NIC path across
 * two hosts linked over loopback TCP (both NICs stamp into their rings), and on the split
 * path (netfront, netback, bridge; one host and across hosts). Each stage is ≥ 0 and a
 * message's stages add up to its measured total (completed − posted) within the method's
 * error (float rounding: the stages telescope); with tracing off nothing is stamped anywhere;
 * benchBreakdown's rows are valid benchmark rows. No timing thresholds.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  type BreakdownRun,
  benchBreakdown,
  breakdownItersFor,
  stageHandoffs,
  tracedPingpong,
} from "../src/bench/breakdown.js";
import { type BenchProfile, makeRow, profileFor } from "../src/bench/harness.js";
import { type LinkedHosts, startLinkedHosts } from "../src/bench/hosts.js";
import { MxPair } from "../src/bench/mx.js";
import { Host } from "../src/host/host.js";
import {
  collate,
  EAGER_STAGES,
  NIC_EAGER_STAGES,
  NIC_RNDV_STAGES,
  SPLIT_EAGER_STAGES,
  SPLIT_RNDV_STAGES,
  TraceBuffer,
  TraceStage,
  traceId,
  traceNow,
} from "../src/mx/trace.js";
import { ETHER_TRACE_BYTES, etherTraceId, putEtherTrace } from "../src/nic/trace-ring.js";

let host: Host;
let pair: MxPair;
let linked: LinkedHosts;
before(async () => {
  host = await Host.start({});
  pair = await MxPair.start(host, "bypass");
  await pair.pingpong(8, 2000, 0);
  await pair.pingpong(64 * 1024, 50, 0);
  linked = await startLinkedHosts();
});
after(async () => {
  await pair.stop();
  await host.stop();
  await linked?.stop();
});

/**
 * What every traced run must show, whatever the path: every measured message has every stage,
 * stamps in order (each stage ≥ 0), and its stages sum to its own measured total
 * (completed − posted, the same stamps: exact but for float rounding, < 1 ns).
 */
function assertRun(run: BreakdownRun, iters: number, stages: readonly string[], protocol: string): void {
  assert.equal(run.protocol, protocol);
  assert.deepEqual(run.stages, stages);
  assert.equal(
    run.incomplete,
    0,
    `every traced message has every stage; missing: ${JSON.stringify(run.missing)}`,
  );
  assert.equal(run.messages.length, 2 * iters, "both messages of each round trip were traced");
  for (const [i, s] of run.stamps.entries()) {
    for (let k = 1; k < s.length; k++)
      assert.ok(s[k] >= s[k - 1], `stage ${stages[k - 1]} (${s[k]}) before the one before it (${s[k - 1]})`);
    const total = (s[s.length - 1] - s[0]) * 1000;
    const sum = run.messages[i].reduce((x, y) => x + y, 0);
    assert.ok(Math.abs(sum - total) < 1e-3, `stages sum to ${sum} µs, the message took ${total} µs`);
  }
  for (const m of run.messages) for (const d of m) assert.ok(d >= 0 && Number.isFinite(d));
  assert.ok(run.latencyUs > 0);
  assert.ok(run.wakeups >= 0 && Number.isFinite(run.wakeups));
}

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
    96 * 1024,
    "rndv",
    // Co-resident, above the channel's eager limit (64 KiB): pushed through the channel once
    // the receiver's CTS came (channel-path.ts).
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
  const rows = await benchBreakdown(host, profile, { sizes: [8, 96 * 1024], transports: ["bypass"] });
  assert.equal(rows.length, 4 + 5); // eager stages, and a co-resident rendezvous pushed through the channel
  for (const r of rows) {
    assert.equal(r.bench, "breakdown");
    assert.equal(r.transport, "bypass");
    assert.equal(r.metric, "latency_us");
    assert.equal(typeof r.stage, "string");
    const { stage, handoffs, wakeups, ...plain } = r;
    assert.equal(
      handoffs,
      r.bytes === 8 ? 1 : 3,
      "bypass: sender → receiver; a pull adds receiver → NIC → receiver",
    );
    assert.ok(typeof wakeups === "number" && wakeups >= 0);
    assert.deepEqual(makeRow(plain, plain), plain, `row ${stage}`);
    assert.equal(r.runs, 2);
  }
  assert.deepEqual(
    rows.filter((r) => r.bytes === 8).map((r) => r.stage),
    ["written", "seen", "copied", "completed"],
  );
});

test("trace ring helpers: a traced Ethernet frame's trailer; collate keeps a stage's first stamp; hand-offs per path", () => {
  const f = new Uint8Array(100 + ETHER_TRACE_BYTES);
  const id = traceId(3, 7, 0xfffffffe);
  assert.equal(etherTraceId(f), 0, "no trailer");
  putEtherTrace(f, 100, id);
  assert.equal(etherTraceId(f), id);
  assert.equal(etherTraceId(f, 100), 0, "a shorter frame has no trailer");
  const m = collate(
    [{ id, stage: TraceStage.Bridged, t: 5 }],
    [{ id, stage: TraceStage.Bridged, t: 3 }],
    [{ id, stage: TraceStage.Bridged, t: 9 }],
  ).get(id)!;
  assert.equal(m.get(TraceStage.Bridged), 3);
  // Thread changes along the stages, plus the hops no stamp shows.
  assert.equal(stageHandoffs(EAGER_STAGES), 1);
  assert.equal(stageHandoffs(NIC_EAGER_STAGES), 3, "guest → NIC A → NIC B → guest");
  assert.equal(stageHandoffs(NIC_RNDV_STAGES), 7, "… then NIC B → NIC A → NIC B (the pull) → guest");
  assert.equal(stageHandoffs(SPLIT_EAGER_STAGES), 2, "guest → driver domain → guest");
  assert.equal(stageHandoffs(SPLIT_RNDV_STAGES), 6);
  // Iterations fit netback's ring, and stay modest across hosts.
  const full = profileFor(false);
  const it = breakdownItersFor(full, 4096, "split", "intra-host");
  assert.ok(it.iters > 0 && (it.iters + it.warmup) * 4 * 3 <= 1 << 14);
  assert.ok(
    breakdownItersFor(full, 8, "bypass", "cross-host").iters +
      breakdownItersFor(full, 8, "bypass", "cross-host").warmup <=
      1000,
  );
});

test("cross-host NIC path (bypass): the NICs stamp every SEND and the remote pull; stages ≥ 0 and sum to each message's total", async () => {
  const hosts = [linked.a, linked.b] as const;
  const p = await MxPair.start(hosts, "bypass");
  try {
    await p.pingpong(8, 50, 0);
    const eager = await tracedPingpong(p, 8, 100, 10, true, hosts);
    assertRun(
      eager,
      100,
      ["written", "nic-taken", "on-link", "off-link", "delivered", "seen", "copied", "completed"],
      "eager",
    );
    assert.equal(eager.handoffs, 3);
    // Above the NIC path's eager limit (SEND_MAX, 64 KiB): a rendezvous the NIC pulls.
    const rndv = await tracedPingpong(p, 128 * 1024, 10, 2, true, hosts);
    assertRun(
      rndv,
      10,
      [
        "rndv-sent",
        "nic-taken",
        "on-link",
        "off-link",
        "delivered",
        "seen",
        "pull-posted",
        "nic-seen",
        "pull-requested",
        "pull-data",
        "dma-done",
        "event-seen",
        "completed",
      ],
      "rndv",
    );
    assert.equal(rndv.handoffs, 7);
    // Tracing off: the NICs' rings are on, yet nothing carries a trace id, so nothing is stamped.
    const off = await tracedPingpong(p, 8, 50, 5, false, hosts);
    assert.equal(off.records, 0, "records with tracing off");
    const offRndv = await tracedPingpong(p, 128 * 1024, 5, 1, false, hosts);
    assert.equal(offRndv.records, 0, "records with tracing off (rendezvous)");
  } finally {
    await p.stop();
  }
});

for (const scope of ["intra-host", "cross-host"] as const) {
  test(`split path ${scope}: netback and the bridge stamp traced frames; stages ≥ 0 and sum to each message's total`, async () => {
    const hosts = scope === "cross-host" ? ([linked.a, linked.b] as const) : ([host] as const);
    const p = await MxPair.start(scope === "cross-host" ? [linked.a, linked.b] : host, "split");
    try {
      await p.pingpong(8, 20, 0);
      const cross = scope === "cross-host" ? ["bridged-in"] : [];
      for (const bytes of [8, 4096]) {
        const run = await tracedPingpong(p, bytes, 40, 5, true, hosts);
        assertRun(
          run,
          40,
          ["written", "netback-tx", "bridged", ...cross, "seen", "copied", "completed"],
          "eager",
        );
        assert.equal(run.handoffs, scope === "cross-host" ? 5 : 2);
      }
      const rndv = await tracedPingpong(p, 64 * 1024, 6, 1, true, hosts);
      assertRun(
        rndv,
        6,
        ["rndv-sent", "netback-tx", "bridged", ...cross, "seen", "pull-posted", "completed"],
        "rndv",
      );
      assert.equal(rndv.handoffs, scope === "cross-host" ? 15 : 6);
      const off = await tracedPingpong(p, 4096, 20, 2, false, hosts);
      assert.equal(off.records, 0, "records with tracing off: no trailer, no netback stamp");
    } finally {
      await p.stop();
    }
  });
}

test("benchBreakdown across hosts: rows of scope cross-host per stage, for the NIC path and the split path", async () => {
  const profile: BenchProfile = { ...profileFor(true), runs: 1, warmupRuns: 0 };
  const rows = await benchBreakdown([linked.a, linked.b], profile, {
    sizes: [8],
    transports: ["bypass", "split"],
  });
  for (const r of rows) {
    assert.equal(r.scope, "cross-host");
    assert.ok(r.median >= 0);
    const { stage, handoffs, wakeups, ...plain } = r;
    assert.deepEqual(makeRow(plain, plain), plain, `row ${stage}`);
  }
  assert.deepEqual(
    rows.filter((r) => r.transport === "bypass").map((r) => r.stage),
    ["written", "nic-taken", "on-link", "off-link", "delivered", "seen", "copied", "completed"],
  );
  assert.deepEqual(
    rows.filter((r) => r.transport === "split").map((r) => r.stage),
    ["written", "netback-tx", "bridged", "bridged-in", "seen", "copied", "completed"],
  );
});

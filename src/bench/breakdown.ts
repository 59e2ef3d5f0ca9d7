/**
 * `myrixen bench breakdown`: where each microsecond of a one-way message goes. Two ranks of
 * mx-bench ping-pong with tracing on (mx/trace.ts); the stamps of both ranks and of the NIC
 * are joined by message id, and each stage's duration (its stamp minus the previous stage's)
 * is summarised. One row per (transport, size, stage):
 *   { bench: "breakdown", transport, scope, bytes, metric: "latency_us", median, min, max, runs, stage }
 * median/min/max over runs of each run's median over its messages, so the stages of one
 * (transport, size) add up to about the one-way latency of a traced ping-pong.
 *   eager (≤ 32 KiB)  written, seen, copied, completed
 *   rendezvous        rndv-sent, seen, pull-posted, nic-seen, dma-done, event-seen, completed
 *   co-resident rndv  rndv-sent, seen, push-started, copied, completed (pushed through the channel)
 * (`posted`, the start, has no duration of its own.)
 */
import { once } from "node:events";
import type { Host } from "../host/host.js";
import {
  collate,
  crossHostSplit,
  EAGER_STAGES,
  NIC_EAGER_STAGES,
  NIC_RNDV_STAGES,
  PUSH_STAGES,
  RNDV_STAGES,
  SPLIT_EAGER_STAGES,
  SPLIT_RNDV_STAGES,
  STAGE_NAMES,
  STAGE_THREAD,
  stageDurations,
  TraceBuffer,
  TraceStage,
  traceNow,
  unpack,
} from "../mx/trace.js";
import { NET_TRACE_RECORDS } from "../netback/stats.js";
import type { MxBenchCommand } from "../programs/mx-bench.js";
import { type BenchProfile, type BenchRow, makeRow } from "./harness.js";
import { MxPair, type MxPath, type Placement, type Progress, scopeOf } from "./mx.js";
import { BREAKDOWN_TRANSPORTS } from "./transports.js";

export { BREAKDOWN_TRANSPORTS };
export const BREAKDOWN_SIZES: readonly number[] = [8, 4096, 64 * 1024, 1024 * 1024];

/** A benchmark row with the stage it measures (an extension of the row format). */
export interface BreakdownRow extends BenchRow {
  bench: "breakdown";
  stage: string;
  /** Thread hand-offs per message on this path (the same on every stage row of a transport and size). */
  handoffs?: number;
  /** Wake-ups per message (median over the runs; see BreakdownRun.wakeups). */
  wakeups?: number;
}

export interface BreakdownOptions {
  sizes?: number[];
  transports?: string[];
}

/** One traced ping-pong run. */
export interface BreakdownRun {
  /** One-way latency of the run (round trip / 2, timed by rank a, tracing on), µs. */
  latencyUs: number;
  /** "eager" or "rndv": which stage list the messages followed. */
  protocol: "eager" | "rndv";
  /** Stage names, in order, after `posted`. */
  stages: string[];
  /** Per message with every stage: its stage durations (µs), in the order of `stages`. */
  messages: number[][];
  /** Traced messages missing a stage (should be 0). */
  incomplete: number;
  /** Per stage name: how many of the incomplete messages lack it (what went missing, for diagnosis). */
  missing: Record<string, number>;
  /** Trace records the two ranks (and the NICs, across hosts) returned. */
  records: number;
  /** Per message: the stamps (trace-clock ms) of every stage, `posted` first (for checks). */
  stamps: number[][];
  /** Thread hand-offs a message makes along its stages (stageHandoffs). */
  handoffs: number;
  /**
   * Wake-ups per message, counted over the whole run (warm-up included): interrupts raised on
   * a sleeping endpoint owner (by a peer or a NIC), NIC threads woken from sleep and, on the
   * split path, event-channel notifications between netfront and netback.
   */
  wakeups: number;
}

/** The stage list a message followed, from the stages it has: the NIC path, the split path or the channel. */
export function stageOrder(m: ReadonlyMap<number, number>): readonly number[] {
  const rndv = m.has(TraceStage.RndvSent);
  if (m.has(TraceStage.NicTaken)) {
    const order = rndv ? NIC_RNDV_STAGES : NIC_EAGER_STAGES;
    // To an endpoint of the same NIC with no loopback link: placed directly, no frame.
    if (!m.has(TraceStage.OnLink) && !m.has(TraceStage.OffLink))
      return order.filter((s) => s !== TraceStage.OnLink && s !== TraceStage.OffLink);
    return order;
  }
  if (m.has(TraceStage.NetbackTx) || m.has(TraceStage.Bridged)) {
    const order = rndv ? SPLIT_RNDV_STAGES : SPLIT_EAGER_STAGES;
    return m.has(TraceStage.BridgedIn) ? crossHostSplit(order) : order;
  }
  // A co-resident rendezvous pushed through the channel (channel-path.ts) rather than pulled.
  if (m.has(TraceStage.PushStarted)) return PUSH_STAGES;
  return rndv ? RNDV_STAGES : EAGER_STAGES;
}

/**
 * Thread hand-offs along `order`: each change of the thread that stamps consecutive stages
 * (STAGE_THREAD), plus the ones no stamp shows: a remote pull's request is served by the
 * sender's NIC before its data comes back (two more); across hosts a split frame passes
 * NIC A and NIC B between bridged and bridged-in (two more); a
 * split rendezvous's PULL and DATA frames go receiver → netback → sender → netback →
 * receiver (four more; ten across hosts).
 */
export function stageHandoffs(order: readonly number[], crossHost = false): number {
  let n = 0;
  for (let k = 1; k < order.length; k++) {
    if (STAGE_THREAD[order[k]] !== STAGE_THREAD[order[k - 1]]) n++;
    if (order[k] === TraceStage.PullData) n += 2;
    if (order[k] === TraceStage.BridgedIn) n += 2;
    if (order[k] === TraceStage.Completed && order[k - 1] === TraceStage.PullPosted) n += crossHost ? 10 : 4;
  }
  return n;
}

/** Iterations of a traced ping-pong by size (a rank keeps ~8 trace records per round trip). */
export function breakdownIters(profile: BenchProfile, bytes: number): { iters: number; warmup: number } {
  const quick = profile.name === "quick";
  if (bytes <= 8192) return quick ? { iters: 1000, warmup: 200 } : { iters: 5000, warmup: 500 };
  if (bytes <= 256 * 1024) return quick ? { iters: 100, warmup: 10 } : { iters: 500, warmup: 20 };
  return quick ? { iters: 20, warmup: 2 } : { iters: 100, warmup: 5 };
}

/**
 * Iterations for one transport: breakdownIters, fewer where a run's stamps must all fit a
 * ring that cannot grow with the run (netback's: NET_TRACE_RECORDS; a split message stamps
 * about two records per frame on each host) or where a round trip costs ~1 ms (cross-host).
 */
export function breakdownItersFor(
  profile: BenchProfile,
  bytes: number,
  path: MxPath,
  scope: string,
): { iters: number; warmup: number } {
  const it = breakdownIters(profile, bytes);
  let cap = Number.POSITIVE_INFINITY;
  if (path === "split") {
    const frames = bytes > 32 * 1024 ? 1 : Math.max(1, Math.ceil(bytes / 1400));
    cap = Math.floor((NET_TRACE_RECORDS * 0.8) / (4 * frames));
  }
  if (scope === "cross-host") cap = Math.min(cap, 1000);
  if (it.iters + it.warmup <= cap) return it;
  const warmup = Math.min(it.warmup, Math.floor(cap / 10));
  return { iters: cap - warmup, warmup };
}

/** Wake-up counters summed over `hosts` (each counted once) and the pair's two ranks. */
async function wakeCount(pair: MxPair, hosts: readonly Host[]): Promise<number> {
  let n = 0;
  for (const h of new Set(hosts)) {
    const g = h.nic.counters().global;
    n += g.wakeups + g.interrupt_kicks;
    if (pair.path === "split") {
      const t = h.netStats().totals;
      n += t.notificationsSent + t.notificationsReceived;
    }
  }
  const [ca, cb] = await pair.counters();
  return n + (ca.kicks ?? 0) + (cb.kicks ?? 0);
}

/**
 * Runs one traced ping-pong on a started pair and joins both ranks' stamps (and, with
 * `hosts`, their NICs' trace rings) by message.
 * `trace = false`: the same run with the ranks' trace buffers present but tracing off.
 */
export async function tracedPingpong(
  pair: MxPair,
  bytes: number,
  iters: number,
  warmup: number,
  trace = true,
  hosts: readonly Host[] = [],
): Promise<BreakdownRun> {
  const [a, b] = pair.domains;
  const cmd = (role: "a" | "b"): MxBenchCommand => ({ kind: "breakdown", role, bytes, iters, warmup, trace });
  // Each NIC stamps into a fresh ring of its own while this run lasts (nic/trace-ring.ts).
  const nics = [...new Set(hosts)];
  // Rings are on even with tracing off: then they must stay empty (nothing carries a trace id).
  const rings = nics.map(() => new TraceBuffer((iters + warmup + 1) * 12 + 64));
  await Promise.all(rings.map((r, i) => nics[i].nic.setTrace(r.sab)));
  // The split path: netback stamps into its stats page's ring while it is on.
  const netRings = pair.path === "split" ? nics.map((h) => h.netTrace()) : [];
  for (const r of netRings) r.on = true;
  const startT = traceNow();
  const wakeBefore = await wakeCount(pair, hosts);
  const ra = once(a, "message");
  const rb = once(b, "message");
  const failed = Promise.race([a.exited, b.exited]).then((e) => {
    throw new Error(`mx-bench rank ${e.state}: ${e.error?.message ?? "ended early"}`);
  });
  b.send(cmd("b"));
  a.send(cmd("a"));
  type Reply = { us: number; since: number; trace: Float64Array };
  let va: Reply;
  let vb: Reply;
  try {
    [[va], [vb]] = (await Promise.race([Promise.all([ra, rb]), failed])) as [[Reply], [Reply]];
  } finally {
    await Promise.all(rings.map((_, i) => nics[i].nic.setTrace(undefined)));
    for (const r of netRings) r.on = false;
  }
  const wakeups = ((await wakeCount(pair, hosts)) - wakeBefore) / (2 * (iters + warmup));
  // A ring that outlives runs (netback's) holds older runs' records too: only this run's count.
  const nicRecords = [...rings, ...netRings].map((r) => r.records().filter((x) => x.t >= startT));
  const byId = collate(unpack(va.trace), unpack(vb.trace), ...nicRecords);
  // The stage list is the one the measured messages follow (the first one's).
  let order: readonly number[] | undefined;
  const messages: number[][] = [];
  const stamps: number[][] = [];
  let incomplete = 0;
  const missing: Record<string, number> = {};
  for (const m of byId.values()) {
    // Warm-up, or a ring's stamp of an earlier run's message (a frame resent late).
    if ((m.get(TraceStage.Posted) ?? Number.NEGATIVE_INFINITY) < va.since) continue;
    order ??= stageOrder(m);
    const d = stageDurations(m, order);
    if (!d) {
      incomplete++;
      for (const s of order) if (!m.has(s)) missing[STAGE_NAMES[s]] = (missing[STAGE_NAMES[s]] ?? 0) + 1;
      continue;
    }
    messages.push(d.map((ms) => ms * 1000));
    stamps.push(order.map((s) => m.get(s)!));
  }
  order ??= EAGER_STAGES;
  return {
    latencyUs: va.us,
    protocol: order.includes(TraceStage.RndvSent) ? "rndv" : "eager",
    stages: order.slice(1).map((s) => STAGE_NAMES[s]),
    messages,
    incomplete,
    missing,
    records: (va.trace.length + vb.trace.length) / 3 + nicRecords.reduce((n, r) => n + r.length, 0),
    stamps,
    handoffs: stageHandoffs(order, nics.length > 1),
    wakeups,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const n = s.length;
  return n % 2 === 1 ? s[n >> 1] : (s[(n >> 1) - 1] + s[n >> 1]) / 2;
}

/** Per stage, the median over a run's messages (µs). */
export function stageMedians(run: BreakdownRun): number[] {
  return run.stages.map((_, k) => median(run.messages.map((m) => m[k])));
}

/**
 * The breakdown for `transports` × `sizes` on `placement` (one host: intra-host; two linked
 * hosts: cross-host): rows per stage, plus progress. Runs interleave the transports so all
 * see the same machine.
 */
export async function benchBreakdown(
  placement: Placement,
  profile: BenchProfile,
  opts: BreakdownOptions = {},
  progress: Progress = () => {},
): Promise<BreakdownRow[]> {
  const sizes = opts.sizes ?? [...BREAKDOWN_SIZES];
  const transports = BREAKDOWN_TRANSPORTS.filter((t) =>
    (opts.transports ?? BREAKDOWN_TRANSPORTS).includes(t),
  );
  const scope = scopeOf(placement);
  const hosts: readonly Host[] = Array.isArray(placement) ? placement : [placement as Host];
  const rows: BreakdownRow[] = [];
  const pairs = new Map<MxPath, MxPair>();
  try {
    for (const t of transports) {
      progress(`breakdown ${scope}: starting ${t} pair`);
      const pair = await MxPair.start(placement, t, { busyPoll: true });
      pairs.set(t, pair);
      // Warm the JIT on both protocols, traced and not.
      await pair.pingpong(8, scope === "cross-host" ? 500 : 5_000, 0);
      await pair.pingpong(64 * 1024, scope === "cross-host" ? 20 : 100, 0);
      await tracedPingpong(pair, 8, scope === "cross-host" ? 100 : 500, 0, true, hosts);
      await tracedPingpong(pair, 64 * 1024, 10, 0, true, hosts);
    }
    for (const bytes of sizes) {
      const perStage = new Map<
        MxPath,
        { stages: string[]; samples: number[][]; handoffs: number; wakeups: number[] }
      >();
      for (let r = 0; r < profile.runs + profile.warmupRuns; r++) {
        for (const [t, pair] of pairs) {
          progress(`breakdown ${scope} ${bytes} B, ${t}, run ${r + 1}`);
          const { iters, warmup } = breakdownItersFor(profile, bytes, t, scope);
          const run = await tracedPingpong(pair, bytes, iters, warmup, true, hosts);
          if (r < profile.warmupRuns) continue;
          if (run.messages.length === 0) throw new Error(`breakdown ${t} ${bytes} B: no complete trace`);
          const med = stageMedians(run);
          let e = perStage.get(t);
          if (!e)
            perStage.set(
              t,
              (e = {
                stages: run.stages,
                samples: run.stages.map(() => []),
                handoffs: run.handoffs,
                wakeups: [],
              }),
            );
          med.forEach((v, k) => {
            e.samples[k].push(v);
          });
          e.wakeups.push(run.wakeups);
        }
      }
      for (const [t, e] of perStage)
        e.stages.forEach((stage, k) => {
          const row = makeRow(
            { bench: "breakdown", transport: t, scope, bytes, metric: "latency_us" },
            e.samples[k],
          );
          rows.push({
            ...row,
            bench: "breakdown",
            stage,
            handoffs: e.handoffs,
            wakeups: Number(median(e.wakeups).toFixed(2)),
          });
        });
    }
  } finally {
    for (const p of pairs.values()) await p.stop();
  }
  return rows;
}

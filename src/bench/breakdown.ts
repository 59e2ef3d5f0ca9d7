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
  EAGER_STAGES,
  PUSH_STAGES,
  RNDV_STAGES,
  STAGE_NAMES,
  stageDurations,
  TraceStage,
  unpack,
} from "../mx/trace.js";
import type { MxBenchCommand } from "../programs/mx-bench.js";
import { type BenchProfile, type BenchRow, makeRow } from "./harness.js";
import { MxPair, type MxPath, type Progress } from "./mx.js";

export const BREAKDOWN_TRANSPORTS: readonly MxPath[] = ["native", "bypass"];
export const BREAKDOWN_SIZES: readonly number[] = [8, 4096, 64 * 1024, 1024 * 1024];

/** A benchmark row with the stage it measures (an extension of the row format). */
export interface BreakdownRow extends BenchRow {
  bench: "breakdown";
  stage: string;
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
  /** Trace records the two ranks returned. */
  records: number;
  /** Per message: the stamps (trace-clock ms) of every stage, `posted` first (for checks). */
  stamps: number[][];
}

/** Iterations of a traced ping-pong by size (a rank keeps ~8 trace records per round trip). */
export function breakdownIters(profile: BenchProfile, bytes: number): { iters: number; warmup: number } {
  const quick = profile.name === "quick";
  if (bytes <= 8192) return quick ? { iters: 1000, warmup: 200 } : { iters: 5000, warmup: 500 };
  if (bytes <= 256 * 1024) return quick ? { iters: 100, warmup: 10 } : { iters: 500, warmup: 20 };
  return quick ? { iters: 20, warmup: 2 } : { iters: 100, warmup: 5 };
}

/**
 * Runs one traced ping-pong on a started pair and joins both ranks' stamps by message.
 * `trace = false`: the same run with the ranks' trace buffers present but tracing off.
 */
export async function tracedPingpong(
  pair: MxPair,
  bytes: number,
  iters: number,
  warmup: number,
  trace = true,
): Promise<BreakdownRun> {
  const [a, b] = pair.domains;
  const cmd = (role: "a" | "b"): MxBenchCommand => ({ kind: "breakdown", role, bytes, iters, warmup, trace });
  const ra = once(a, "message");
  const rb = once(b, "message");
  const failed = Promise.race([a.exited, b.exited]).then((e) => {
    throw new Error(`mx-bench rank ${e.state}: ${e.error?.message ?? "ended early"}`);
  });
  b.send(cmd("b"));
  a.send(cmd("a"));
  type Reply = { us: number; since: number; trace: Float64Array };
  const [[va], [vb]] = (await Promise.race([Promise.all([ra, rb]), failed])) as [[Reply], [Reply]];
  const byId = collate(unpack(va.trace), unpack(vb.trace));
  let rndv = false;
  let pushed = false;
  for (const m of byId.values()) {
    if (m.has(TraceStage.RndvSent)) rndv = true;
    if (m.has(TraceStage.PushStarted)) pushed = true;
  }
  const order = pushed ? PUSH_STAGES : rndv ? RNDV_STAGES : EAGER_STAGES;
  const messages: number[][] = [];
  const stamps: number[][] = [];
  let incomplete = 0;
  for (const m of byId.values()) {
    if ((m.get(TraceStage.Posted) ?? Number.POSITIVE_INFINITY) < va.since) continue; // warm-up
    const d = stageDurations(m, order);
    if (!d) {
      incomplete++;
      continue;
    }
    messages.push(d.map((ms) => ms * 1000));
    stamps.push(order.map((s) => m.get(s)!));
  }
  return {
    latencyUs: va.us,
    protocol: rndv ? "rndv" : "eager",
    stages: order.slice(1).map((s) => STAGE_NAMES[s]),
    messages,
    incomplete,
    records: (va.trace.length + vb.trace.length) / 3,
    stamps,
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
 * The breakdown for `transports` (native, bypass) × `sizes`: rows per stage, plus progress.
 * Runs interleave the transports so both see the same machine.
 */
export async function benchBreakdown(
  host: Host,
  profile: BenchProfile,
  opts: BreakdownOptions = {},
  progress: Progress = () => {},
): Promise<BreakdownRow[]> {
  const sizes = opts.sizes ?? [...BREAKDOWN_SIZES];
  const transports = BREAKDOWN_TRANSPORTS.filter((t) =>
    (opts.transports ?? BREAKDOWN_TRANSPORTS).includes(t),
  );
  const rows: BreakdownRow[] = [];
  const pairs = new Map<MxPath, MxPair>();
  try {
    for (const t of transports) {
      progress(`breakdown: starting ${t} pair`);
      const pair = await MxPair.start(host, t);
      pairs.set(t, pair);
      // Warm the JIT on both protocols, traced and not.
      await pair.pingpong(8, 5_000, 0);
      await pair.pingpong(64 * 1024, 100, 0);
      await tracedPingpong(pair, 8, 500, 0);
      await tracedPingpong(pair, 64 * 1024, 20, 0);
    }
    for (const bytes of sizes) {
      const { iters, warmup } = breakdownIters(profile, bytes);
      const perStage = new Map<MxPath, { stages: string[]; samples: number[][] }>();
      for (let r = 0; r < profile.runs + profile.warmupRuns; r++) {
        for (const [t, pair] of pairs) {
          progress(`breakdown ${bytes} B, ${t}, run ${r + 1}`);
          const run = await tracedPingpong(pair, bytes, iters, warmup);
          if (r < profile.warmupRuns) continue;
          if (run.messages.length === 0) throw new Error(`breakdown ${t} ${bytes} B: no complete trace`);
          const med = stageMedians(run);
          let e = perStage.get(t);
          if (!e) perStage.set(t, (e = { stages: run.stages, samples: run.stages.map(() => []) }));
          med.forEach((v, k) => {
            e.samples[k].push(v);
          });
        }
      }
      for (const [t, e] of perStage)
        e.stages.forEach((stage, k) => {
          const row = makeRow(
            { bench: "breakdown", transport: t, bytes, metric: "latency_us" },
            e.samples[k],
          );
          rows.push({ ...row, bench: "breakdown", stage });
        });
    }
  } finally {
    for (const p of pairs.values()) await p.stop();
  }
  return rows;
}

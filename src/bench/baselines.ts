/**
 * Raw baselines: the limits of this machine measured in plain worker threads with no project
 * machinery (SharedArrayBuffer ping-pong, a three-thread relay, a SAB ring stream,
 * MessageChannel postMessage, memcpy). Each function starts its own workers, measures,
 * terminates them, and returns one sample per run; benchmarks put these next to every
 * transport measured in the same run.
 */

import { MessageChannel, type TransferListItem, Worker } from "node:worker_threads";
import { DEFAULT_SPIN_US } from "../xen/wait.js";
import type { WorkerJob, WorkerReport } from "./baseline-worker.js";
import { BASELINE_JOB, SLOT_STRIDE } from "./baseline-worker.js";
import { type BenchRow, type Metric, makeRow, type Scope } from "./harness.js";

const WORKER_URL = new URL("./baseline-worker.js", import.meta.url);

/** Default guard against a wedged baseline (a worker that never reports). */
export const DEFAULT_BASELINE_TIMEOUT_MS = 10 * 60 * 1000;

export interface BaselineOptions {
  /** Message size in bytes (0 = flag only, where allowed). */
  bytes: number;
  /** Timed iterations per run (round trips, copies, or windows). */
  iters: number;
  /** Untimed iterations at the start of each run (default: min(iters, 1000)). */
  warmup?: number;
  /** Samples returned (one per run). */
  runs: number;
  /** Extra runs at the start whose samples are discarded (default 0). */
  warmupRuns?: number;
  /** Reject if no result after this long (default 10 minutes). */
  timeoutMs?: number;
}

export interface SpinOptions extends BaselineOptions {
  /** Spin budget before blocking in Atomics.wait (default DEFAULT_SPIN_US). */
  spinUs?: number;
}

export interface BaselineResult {
  transport: "raw-sab" | "raw-relay" | "postmessage" | "memcpy";
  metric: Metric;
  bytes: number;
  iters: number;
  warmup: number;
  /** One per run: one-way latency in µs (round trip / 2), or MB/s (10^6 bytes/s). */
  samples: number[];
  spinUs?: number;
  /** postMessage: structured clone or ArrayBuffer transfer. */
  mode?: "clone" | "transfer";
  /** Stream: messages in flight per window, and ring slots. */
  window?: number;
  slots?: number;
}

function checkInt(name: string, v: unknown, min: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new Error(`${name} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}

function common(label: string, o: BaselineOptions, minBytes: number) {
  const bytes = checkInt(`${label}: bytes`, o.bytes, minBytes);
  const iters = checkInt(`${label}: iters`, o.iters, 1);
  const warmup = checkInt(`${label}: warmup`, o.warmup ?? Math.min(iters, 1000), 0);
  const runs = checkInt(`${label}: runs`, o.runs, 1);
  const warmupRuns = checkInt(`${label}: warmupRuns`, o.warmupRuns ?? 0, 0);
  const timeoutMs = o.timeoutMs ?? DEFAULT_BASELINE_TIMEOUT_MS;
  if (!(timeoutMs > 0)) throw new Error(`${label}: timeoutMs must be positive`);
  return {
    job: BASELINE_JOB as typeof BASELINE_JOB,
    bytes,
    iters,
    warmup,
    runs: runs + warmupRuns,
    warmupRuns,
    timeoutMs,
  };
}

function spinOf(label: string, o: SpinOptions): number {
  const s = o.spinUs ?? DEFAULT_SPIN_US;
  if (typeof s !== "number" || !Number.isFinite(s) || s < 0) throw new Error(`${label}: spinUs must be >= 0`);
  return s;
}

function sab(bytes: number): SharedArrayBuffer {
  return new SharedArrayBuffer(Math.max(bytes, 1));
}

function ctrlSab(slots: number): SharedArrayBuffer {
  return new SharedArrayBuffer(slots * SLOT_STRIDE * 4);
}

export type BaselineWorkerSpec = { job: WorkerJob; transferList?: TransferListItem[] };

/**
 * Start one worker per spec; resolve with the samples posted by spec `measurer`. Any worker
 * error, early exit or the timeout rejects; all workers are terminated before returning.
 * Exported for tests; benchmarks call the functions below.
 */
export async function runBaselineWorkers(
  label: string,
  specs: BaselineWorkerSpec[],
  measurer: number,
  timeoutMs: number,
): Promise<number[]> {
  const workers: Worker[] = [];
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<number[]>((resolve, reject) => {
      let settled = false;
      const fail = (msg: string, cause?: unknown) => {
        if (settled) return;
        settled = true;
        reject(new Error(`${label}: ${msg}`, cause === undefined ? undefined : { cause }));
      };
      timer = setTimeout(() => fail(`no result after ${timeoutMs} ms (workers stuck?)`), timeoutMs);
      specs.forEach((spec, i) => {
        const role = `${spec.job.kind}/${spec.job.role}`;
        let w: Worker;
        try {
          w = new Worker(WORKER_URL, { workerData: spec.job, transferList: spec.transferList });
        } catch (e) {
          fail(`cannot start worker ${role}: ${e instanceof Error ? e.message : String(e)}`, e);
          return;
        }
        workers.push(w);
        w.on("error", (e) => fail(`worker ${role} failed: ${e instanceof Error ? e.message : String(e)}`, e));
        w.on("messageerror", (e) => fail(`worker ${role} sent an unreadable message`, e));
        w.on("exit", (code) => {
          if (i === measurer) fail(`worker ${role} exited (code ${code}) before reporting`);
          else if (code !== 0) fail(`worker ${role} exited with code ${code}`);
        });
        if (i === measurer) {
          w.on("message", (m: WorkerReport) => {
            if (settled) return;
            if (m?.type !== "samples" || !Array.isArray(m.samples)) {
              fail(`worker ${role} sent an unexpected message`);
              return;
            }
            if (!m.samples.every((s) => Number.isFinite(s) && s > 0)) {
              fail(`worker ${role} reported non-positive or non-finite samples: ${m.samples.join(", ")}`);
              return;
            }
            settled = true;
            resolve(m.samples);
          });
        }
      });
    });
  } finally {
    if (timer) clearTimeout(timer);
    await Promise.all(workers.map((w) => w.terminate().catch(() => 0)));
  }
}

/**
 * Two workers ping-ponging through a SharedArrayBuffer, spin-then-block (transport raw-sab).
 * `budgetMs`: each timed run ends after that long even short of `iters` (its sample is the
 * mean over the round trips it made).
 */
export async function rawSabPingPong(opts: SpinOptions & { budgetMs?: number }): Promise<BaselineResult> {
  const label = "raw-sab ping-pong";
  const c = common(label, opts, 0);
  const spinUs = spinOf(label, opts);
  const budgetMs = opts.budgetMs;
  if (budgetMs !== undefined && !(budgetMs > 0)) throw new Error(`${label}: budgetMs must be positive`);
  const ctrl = ctrlSab(2);
  const ab = sab(c.bytes);
  const ba = sab(c.bytes);
  const base = { kind: "sab-pingpong", ctrl, ab, ba, spinUs, budgetMs, ...c } as const;
  const samples = await runBaselineWorkers(
    label,
    [{ job: { ...base, role: "ping" } }, { job: { ...base, role: "echo" } }],
    0,
    c.timeoutMs,
  );
  return {
    transport: "raw-sab",
    metric: "latency_us",
    bytes: c.bytes,
    iters: c.iters,
    warmup: c.warmup,
    samples,
    spinUs,
  };
}

/** Three workers A → C → B → C → A, C relaying, all spin-then-block (transport raw-relay). */
export async function rawRelayPingPong(opts: SpinOptions): Promise<BaselineResult> {
  const label = "raw-relay ping-pong";
  const c = common(label, opts, 0);
  const spinUs = spinOf(label, opts);
  const ctrl = ctrlSab(4);
  const bufs = [sab(c.bytes), sab(c.bytes), sab(c.bytes), sab(c.bytes)] as [
    SharedArrayBuffer,
    SharedArrayBuffer,
    SharedArrayBuffer,
    SharedArrayBuffer,
  ];
  const base = { kind: "sab-relay", ctrl, bufs, spinUs, ...c } as const;
  const samples = await runBaselineWorkers(
    label,
    [{ job: { ...base, role: "a" } }, { job: { ...base, role: "relay" } }, { job: { ...base, role: "b" } }],
    0,
    c.timeoutMs,
  );
  return {
    transport: "raw-relay",
    metric: "latency_us",
    bytes: c.bytes,
    iters: c.iters,
    warmup: c.warmup,
    samples,
    spinUs,
  };
}

/** Two workers on a MessageChannel: structured clone of a Uint8Array, or transfer of its buffer. */
export async function postMessagePingPong(
  opts: BaselineOptions & { transfer: boolean },
): Promise<BaselineResult> {
  const label = `postmessage ping-pong (${opts.transfer ? "transfer" : "clone"})`;
  const c = common(label, opts, 0);
  const { port1, port2 } = new MessageChannel();
  const base = { kind: "postmessage", transfer: !!opts.transfer, ...c } as const;
  try {
    const samples = await runBaselineWorkers(
      label,
      [
        { job: { ...base, role: "ping", port: port1 }, transferList: [port1] },
        { job: { ...base, role: "echo", port: port2 }, transferList: [port2] },
      ],
      0,
      c.timeoutMs,
    );
    return {
      transport: "postmessage",
      metric: "latency_us",
      bytes: c.bytes,
      iters: c.iters,
      warmup: c.warmup,
      samples,
      mode: opts.transfer ? "transfer" : "clone",
    };
  } finally {
    port1.close();
    port2.close();
  }
}

/** Uint8Array.set between two SharedArrayBuffers in one worker; MB/s with MB = 10^6 bytes. */
export async function memcpyBandwidth(opts: BaselineOptions): Promise<BaselineResult> {
  const label = "memcpy bandwidth";
  const c = common(label, { warmup: Math.max(1, Math.min(opts.iters, 100)), ...opts }, 1);
  const job: WorkerJob = { kind: "memcpy", role: "copy", src: sab(c.bytes), dst: sab(c.bytes), ...c };
  const samples = await runBaselineWorkers(label, [{ job }], 0, c.timeoutMs);
  return {
    transport: "memcpy",
    metric: "bandwidth_MBps",
    bytes: c.bytes,
    iters: c.iters,
    warmup: c.warmup,
    samples,
  };
}

/** Ring memory used by rawSabStream at most (slots shrink for large messages). */
export const STREAM_RING_BYTES = 16 * 1024 * 1024;

/**
 * osu_bw-style stream: the sender pushes windows of `window` (default 64) messages through a
 * SAB ring to the receiver, which acknowledges each window; `iters` = windows per run. MB/s.
 * Transport raw-sab (metric bandwidth_MBps).
 */
export async function rawSabStream(opts: SpinOptions & { window?: number }): Promise<BaselineResult> {
  const label = "raw-sab stream";
  const c = common(label, { warmup: Math.max(1, Math.min(opts.iters, 10)), ...opts }, 1);
  const spinUs = spinOf(label, opts);
  const window = checkInt(`${label}: window`, opts.window ?? 64, 1);
  const slots = Math.max(2, Math.min(window, Math.floor(STREAM_RING_BYTES / c.bytes)));
  const ctrl = ctrlSab(3);
  const ring = new SharedArrayBuffer(slots * c.bytes);
  const base = { kind: "sab-stream", ctrl, ring, slots, window, spinUs, ...c } as const;
  const samples = await runBaselineWorkers(
    label,
    [{ job: { ...base, role: "send" } }, { job: { ...base, role: "recv" } }],
    0,
    c.timeoutMs,
  );
  return {
    transport: "raw-sab",
    metric: "bandwidth_MBps",
    bytes: c.bytes,
    iters: c.iters,
    warmup: c.warmup,
    samples,
    spinUs,
    window,
    slots,
  };
}

/** A benchmark row from a baseline result. */
export function baselineRow(bench: string, r: BaselineResult, scope: Scope = "intra-host"): BenchRow {
  return makeRow({ bench, transport: r.transport, scope, bytes: r.bytes, metric: r.metric }, r.samples);
}

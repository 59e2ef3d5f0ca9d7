/**
 * Worker entry for the raw baselines (src/bench/baselines.ts): plain worker threads with no
 * project machinery — SharedArrayBuffer ping-pong, a three-thread relay, a SAB ring stream,
 * MessageChannel ping-pong and a one-thread memcpy. The measuring worker times its loops with
 * performance.now() and posts one sample per run: `{ type: "samples", samples }`.
 */

import { type MessagePort, parentPort, workerData } from "node:worker_threads";
import { copyBytes } from "../xen/copy.js";
import { adaptiveWait } from "../xen/wait.js";

/** Int32 words between control slots (64 bytes: one cache line per slot). */
export const SLOT_STRIDE = 16;

/** Marker on every job, so that importing this module from some other worker does nothing. */
export const BASELINE_JOB = "myrixen-baseline";

interface Common {
  job: typeof BASELINE_JOB;
  bytes: number;
  iters: number;
  warmup: number;
  /** Total runs, including `warmupRuns` whose samples are discarded. */
  runs: number;
  warmupRuns: number;
}

export type WorkerJob =
  | (Common & {
      kind: "sab-pingpong";
      role: "ping" | "echo";
      ctrl: SharedArrayBuffer;
      ab: SharedArrayBuffer;
      ba: SharedArrayBuffer;
      spinUs: number;
      /** A timed loop ends after this long whatever its count (a quick look on a busy machine). */
      budgetMs?: number;
    })
  | (Common & {
      kind: "sab-relay";
      role: "a" | "relay" | "b";
      ctrl: SharedArrayBuffer;
      /** Payload buffers A→C, C→B, B→C, C→A. */
      bufs: [SharedArrayBuffer, SharedArrayBuffer, SharedArrayBuffer, SharedArrayBuffer];
      spinUs: number;
    })
  | (Common & {
      kind: "sab-stream";
      role: "send" | "recv";
      ctrl: SharedArrayBuffer;
      ring: SharedArrayBuffer;
      slots: number;
      window: number;
      spinUs: number;
    })
  | (Common & { kind: "postmessage"; role: "ping" | "echo"; port: MessagePort; transfer: boolean })
  | (Common & { kind: "memcpy"; role: "copy"; src: SharedArrayBuffer; dst: SharedArrayBuffer });

export type WorkerReport = { type: "samples"; samples: number[] };

/** One direction of notification: a sequence word plus a "waiter is asleep" flag in the same line. */
class Chan {
  private readonly idx: number;
  private armed = false;
  private expected = 0;
  private readonly arm: () => boolean;

  constructor(
    private readonly ctrl: Int32Array,
    slot: number,
    private readonly spinUs: number,
  ) {
    this.idx = slot * SLOT_STRIDE;
    this.arm = () => {
      Atomics.store(this.ctrl, this.idx + 1, 1);
      this.armed = true;
      return Atomics.load(this.ctrl, this.idx) === this.expected;
    };
  }

  /** Publish a new sequence value; wake the peer only if it went to sleep. */
  signal(value: number): void {
    Atomics.store(this.ctrl, this.idx, value);
    if (Atomics.load(this.ctrl, this.idx + 1) !== 0) Atomics.notify(this.ctrl, this.idx);
  }

  /** Spin then block until the word differs from `expected`; returns the new value. */
  waitWhile(expected: number): number {
    this.expected = expected;
    adaptiveWait(this.ctrl, this.idx, expected, this.spinUs, Number.POSITIVE_INFINITY, this.arm);
    if (this.armed) {
      Atomics.store(this.ctrl, this.idx + 1, 0);
      this.armed = false;
    }
    return Atomics.load(this.ctrl, this.idx);
  }

  load(): number {
    return Atomics.load(this.ctrl, this.idx);
  }
}

function report(samples: number[]): void {
  const msg: WorkerReport = { type: "samples", samples };
  parentPort!.postMessage(msg);
}

function pattern(bytes: number, seed: number): Uint8Array {
  const a = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) a[i] = (i * 31 + seed) & 0xff;
  return a;
}

function checkPayload(got: Uint8Array, want: Uint8Array, what: string): void {
  const n = want.length;
  if (n === 0) return;
  if (got[0] !== want[0] || got[n - 1] !== want[n - 1] || got[n >> 1] !== want[n >> 1]) {
    throw new Error(`${what}: payload corrupted`);
  }
}

/** Steps between two clock reads of a loop with a time budget. */
const BUDGET_CHECK_STEPS = 256;

/**
 * Run `runs` timed loops of `iters` after `warmup` steps; `perIter` turns a loop's elapsed
 * µs and the steps it ran into the sample. With `budgetMs`, a timed loop also ends once that
 * long has passed (checked every BUDGET_CHECK_STEPS steps): on a loaded machine each hand-off
 * of a ping-pong can cost a scheduler wake-up, and a quick look should not take minutes.
 */
function timedRuns(
  job: Common,
  step: () => void,
  verify: () => void,
  perIter: (elapsedUs: number, iters: number) => number,
  budgetMs = Number.POSITIVE_INFINITY,
) {
  const samples: number[] = [];
  for (let r = 0; r < job.runs; r++) {
    for (let i = 0; i < job.warmup; i++) step();
    const t0 = performance.now();
    const end = t0 + budgetMs;
    let done = 0;
    while (done < job.iters) {
      const n = Math.min(BUDGET_CHECK_STEPS, job.iters - done);
      for (let i = 0; i < n; i++) step();
      done += n;
      if (performance.now() >= end) break;
    }
    const elapsedUs = Math.max((performance.now() - t0) * 1000, 1e-3);
    verify();
    if (r >= job.warmupRuns) samples.push(perIter(elapsedUs, done));
  }
  return samples;
}

/**
 * The copies are the project's own (xen/copy.ts: memcpy for large copies touching shared
 * memory, where V8's `set` copies a word at a time), so a floor measures the fastest copy
 * JavaScript has here, not a slower one than the library uses.
 */
function copyInto(dst: Uint8Array, src: Uint8Array): void {
  copyBytes(dst, 0, src, 0, src.length);
}

/** Payload bytes that travel in the signal's own cache line (after its sequence and sleep words). */
export const INLINE_PAYLOAD = 4 * (SLOT_STRIDE - 2);

function sabPingPong(job: Extract<WorkerJob, { kind: "sab-pingpong" }>): void {
  const ctrl = new Int32Array(job.ctrl);
  const ab = new Chan(ctrl, 0, job.spinUs);
  const ba = new Chan(ctrl, 1, job.spinUs);
  const bytes = job.bytes;
  // A payload that fits rides in the line whose sequence word publishes it (Open MPI sm's fast
  // box, and the MX channel's records): one line crosses the cores per message, so this stays
  // the floor for small messages. Larger ones go through buffers of their own.
  const inline = bytes <= INLINE_PAYLOAD;
  const lineOf = (slot: number) => slot * SLOT_STRIDE * 4 + 8;
  const shAB = inline ? new Uint8Array(job.ctrl, lineOf(0), bytes) : new Uint8Array(job.ab, 0, bytes);
  const shBA = inline ? new Uint8Array(job.ctrl, lineOf(1), bytes) : new Uint8Array(job.ba, 0, bytes);
  const dst = new Uint8Array(bytes);
  let seq = 0;
  if (job.role === "ping") {
    const src = pattern(bytes, 1);
    const want = pattern(bytes, 2);
    const step = () => {
      if (bytes > 0) copyInto(shAB, src);
      seq++;
      ab.signal(seq);
      ba.waitWhile(seq - 1);
      if (bytes > 0) copyInto(dst, shBA);
    };
    const samples = timedRuns(
      job,
      step,
      () => checkPayload(dst, want, "raw-sab ping"),
      (us, iters) => us / iters / 2,
      job.budgetMs,
    );
    // Loops cut short by the budget sent fewer messages than the echo counts on: a sequence
    // value out of order (-1) tells it to stop.
    if (seq !== job.runs * (job.warmup + job.iters)) ab.signal(-1);
    report(samples);
  } else {
    const src = pattern(bytes, 2);
    const want = pattern(bytes, 1);
    const total = job.runs * (job.warmup + job.iters);
    for (let i = 0; i < total; i++) {
      seq++;
      if (ab.waitWhile(seq - 1) !== seq) break;
      if (bytes > 0) {
        copyInto(dst, shAB);
        copyInto(shBA, src);
      }
      ba.signal(seq);
    }
    checkPayload(dst, want, "raw-sab echo");
  }
}

function sabRelay(job: Extract<WorkerJob, { kind: "sab-relay" }>): void {
  const ctrl = new Int32Array(job.ctrl);
  // Hops: 0 = A→C, 1 = C→B, 2 = B→C, 3 = C→A.
  const ch = [0, 1, 2, 3].map((s) => new Chan(ctrl, s, job.spinUs));
  const bytes = job.bytes;
  const sh = job.bufs.map((b) => new Uint8Array(b, 0, bytes));
  const dst = new Uint8Array(bytes);
  const total = job.runs * (job.warmup + job.iters);
  let seq = 0;
  if (job.role === "a") {
    const src = pattern(bytes, 3);
    const want = pattern(bytes, 4);
    const step = () => {
      if (bytes > 0) copyInto(sh[0], src);
      seq++;
      ch[0].signal(seq);
      ch[3].waitWhile(seq - 1);
      if (bytes > 0) copyInto(dst, sh[3]);
    };
    report(
      timedRuns(
        job,
        step,
        () => checkPayload(dst, want, "raw-relay A"),
        (us, iters) => us / iters / 2,
      ),
    );
  } else if (job.role === "relay") {
    for (let i = 0; i < total; i++) {
      seq++;
      ch[0].waitWhile(seq - 1);
      if (bytes > 0) copyInto(sh[1], sh[0]);
      ch[1].signal(seq);
      ch[2].waitWhile(seq - 1);
      if (bytes > 0) copyInto(sh[3], sh[2]);
      ch[3].signal(seq);
    }
  } else {
    const src = pattern(bytes, 4);
    const want = pattern(bytes, 3);
    for (let i = 0; i < total; i++) {
      seq++;
      ch[1].waitWhile(seq - 1);
      if (bytes > 0) {
        copyInto(dst, sh[1]);
        copyInto(sh[2], src);
      }
      ch[2].signal(seq);
    }
    checkPayload(dst, want, "raw-relay B");
  }
}

function sabStream(job: Extract<WorkerJob, { kind: "sab-stream" }>): void {
  const ctrl = new Int32Array(job.ctrl);
  const head = new Chan(ctrl, 0, job.spinUs);
  const tail = new Chan(ctrl, 1, job.spinUs);
  const ack = new Chan(ctrl, 2, job.spinUs);
  const { bytes, slots, window } = job;
  const ring = Array.from({ length: slots }, (_, i) => new Uint8Array(job.ring, i * bytes, bytes));
  if (job.role === "send") {
    const src = pattern(bytes, 5);
    let h = 0;
    let windows = 0;
    const step = () => {
      for (let m = 0; m < window; m++) {
        let t = tail.load();
        while (h - t >= slots) t = tail.waitWhile(t);
        copyInto(ring[h % slots], src);
        h++;
        head.signal(h);
      }
      windows++;
      let a = ack.load();
      while (a !== windows) a = ack.waitWhile(a);
    };
    // Bandwidth in MB/s (10^6 bytes) = bytes per µs.
    report(
      timedRuns(
        job,
        step,
        () => {},
        (us, iters) => (bytes * window * iters) / us,
      ),
    );
  } else {
    const dst = new Uint8Array(bytes);
    const want = pattern(bytes, 5);
    const totalWindows = job.runs * (job.warmup + job.iters);
    let t = 0;
    for (let w = 1; w <= totalWindows; w++) {
      for (let m = 0; m < window; m++) {
        let h = head.load();
        while (h === t) h = head.waitWhile(h);
        copyInto(dst, ring[t % slots]);
        t++;
        tail.signal(t);
      }
      ack.signal(w);
    }
    checkPayload(dst, want, "raw-sab stream receiver");
  }
}

function postMessagePingPong(job: Extract<WorkerJob, { kind: "postmessage" }>): void {
  const { port, transfer, bytes } = job;
  const send = (buf: Uint8Array) => {
    if (transfer) port.postMessage(buf, [buf.buffer as ArrayBuffer]);
    else port.postMessage(buf);
  };
  const check = (m: unknown): Uint8Array => {
    if (!(m instanceof Uint8Array) || m.length !== bytes) throw new Error("postmessage: unexpected message");
    return m;
  };
  if (job.role === "echo") {
    port.on("message", (m: unknown) => send(check(m)));
    return;
  }
  const perRun = job.warmup + job.iters;
  const samples: number[] = [];
  let run = 0;
  let i = 0;
  let t0 = performance.now();
  port.on("message", (m: unknown) => {
    const buf = check(m);
    i++;
    if (i === job.warmup) t0 = performance.now();
    if (i === perRun) {
      const us = Math.max((performance.now() - t0) * 1000, 1e-3);
      if (run >= job.warmupRuns) samples.push(us / job.iters / 2);
      run++;
      i = 0;
      if (run === job.runs) {
        report(samples);
        port.close();
        return;
      }
      if (job.warmup === 0) t0 = performance.now();
    }
    send(buf);
  });
  t0 = performance.now();
  send(pattern(bytes, 6));
}

function memcpy(job: Extract<WorkerJob, { kind: "memcpy" }>): void {
  const src = new Uint8Array(job.src, 0, job.bytes);
  const dst = new Uint8Array(job.dst, 0, job.bytes);
  src.set(pattern(job.bytes, 7));
  report(
    timedRuns(
      job,
      () => copyInto(dst, src),
      () => checkPayload(dst, src, "memcpy"),
      (us, iters) => (job.bytes * iters) / us,
    ),
  );
}

if (parentPort && (workerData as { job?: unknown } | null)?.job === BASELINE_JOB) {
  const job = workerData as WorkerJob;
  switch (job.kind) {
    case "sab-pingpong":
      sabPingPong(job);
      break;
    case "sab-relay":
      sabRelay(job);
      break;
    case "sab-stream":
      sabStream(job);
      break;
    case "postmessage":
      postMessagePingPong(job);
      break;
    case "memcpy":
      memcpy(job);
      break;
    default:
      throw new Error(`baseline-worker: unknown job ${(job as { kind: string }).kind}`);
  }
}

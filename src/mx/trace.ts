/**
 * Message tracing: where each microsecond of a message goes.
 *
 * An endpoint opened with `trace: true` (or after `enableTrace()`) stamps each message at
 * each stage of its path into its own TraceBuffer; the stamps of both ends (and the NIC's,
 * carried back in the PULL_DONE event) are joined by message id afterwards (`collate`).
 *
 *   eager       posted → written → seen → copied → completed
 *   rendezvous  posted → rndv-sent → seen → pull-posted → nic-seen → dma-done → event-seen → completed
 *
 * The clock (`traceNow`) is `performance.timeOrigin + performance.now()` in ms, shifted by a
 * fixed epoch (TRACE_EPOCH_MS) so the double keeps its precision: the plain sum is ~1.8e12 ms,
 * where one ulp is 0.244 µs — as large as a whole small-message stage. Shifted, one ulp is
 * ~15 ns. In Node 20 every worker of a process has the same timeOrigin and performance.now()
 * reads one monotonic clock, so stamps from different threads compare directly (measured:
 * the two threads' clocks agree within the ~0.1 µs a cross-thread handshake can resolve).
 *
 * A buffer is a ring of RECORD_WORDS float64 (message id, stage, time) over a
 * SharedArrayBuffer, written by its endpoint's thread only; header word 0 counts records
 * ever written. When full it overwrites the oldest records.
 */

import { TRACE_EPOCH_MS } from "../nic/clock.js";

export const TraceStage = {
  Posted: 1,
  Written: 2,
  Seen: 3,
  Copied: 4,
  Completed: 5,
  RndvSent: 6,
  PullPosted: 7,
  NicSeen: 8,
  DmaDone: 9,
  EventSeen: 10,
  /** A co-resident rendezvous: the sender read the receiver's CTS and starts pushing it. */
  PushStarted: 11,
} as const;
export type TraceStageId = (typeof TraceStage)[keyof typeof TraceStage];

export const STAGE_NAMES: Record<number, string> = {
  [TraceStage.Posted]: "posted",
  [TraceStage.Written]: "written",
  [TraceStage.Seen]: "seen",
  [TraceStage.Copied]: "copied",
  [TraceStage.Completed]: "completed",
  [TraceStage.RndvSent]: "rndv-sent",
  [TraceStage.PullPosted]: "pull-posted",
  [TraceStage.NicSeen]: "nic-seen",
  [TraceStage.DmaDone]: "dma-done",
  [TraceStage.EventSeen]: "event-seen",
  [TraceStage.PushStarted]: "push-started",
};

/** The stages of an eager message, in order. */
export const EAGER_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.Written,
  TraceStage.Seen,
  TraceStage.Copied,
  TraceStage.Completed,
];
/** The stages of a rendezvous (pulled) message, in order. */
export const RNDV_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.RndvSent,
  TraceStage.Seen,
  TraceStage.PullPosted,
  TraceStage.NicSeen,
  TraceStage.DmaDone,
  TraceStage.EventSeen,
  TraceStage.Completed,
];

/** The stages of a rendezvous pushed through a co-resident channel (channel-path.ts), in order. */
export const PUSH_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.RndvSent,
  TraceStage.Seen,
  TraceStage.PushStarted,
  TraceStage.Copied,
  TraceStage.Completed,
];

/**
 * Channel record flag (type word, bits 16..31, next to channel.ts's FLAG_NO_PAYLOAD = 1):
 * the sender traced this message and protocol word aux5 holds its trace sequence number.
 */
export const FLAG_TRACED = 2;

// The trace clock lives below MX, in the NIC that stamps events with it (nic/clock.ts).
export { TRACE_EPOCH_MS, traceNow } from "../nic/clock.js";

/**
 * A message id, the same at both ends: the sender's (nic, endpoint) and its per-endpoint
 * sequence number (the u32 that travels in aux5). Exact in a double.
 */
export function traceId(nic: number, endpoint: number, seq: number): number {
  return ((nic & 0x1f) * 0x10000 + (endpoint & 0xffff)) * 0x100000000 + (seq >>> 0);
}

export const HEADER_WORDS = 4;
export const RECORD_WORDS = 3;
export const DEFAULT_TRACE_RECORDS = 1 << 16;

export interface TraceRecord {
  id: number;
  stage: number;
  t: number;
}

/** A ring of trace records over a SharedArrayBuffer (one writer: the endpoint's thread). */
export class TraceBuffer {
  readonly sab: SharedArrayBuffer;
  readonly capacity: number;
  private readonly f: Float64Array;
  private readonly mask: number;
  private n = 0;

  /** `capacity` is rounded up to a power of two. */
  constructor(capacity: number = DEFAULT_TRACE_RECORDS) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 24)
      throw new RangeError(`trace capacity must be an integer in 1..${1 << 24}, got ${String(capacity)}`);
    let cap = 1;
    while (cap < capacity) cap *= 2;
    this.capacity = cap;
    this.mask = cap - 1;
    this.sab = new SharedArrayBuffer((HEADER_WORDS + cap * RECORD_WORDS) * 8);
    this.f = new Float64Array(this.sab);
    this.f[1] = cap;
    this.f[2] = TRACE_EPOCH_MS;
  }

  /** Appends one record (the hot path when tracing: three stores and a counter). */
  record(id: number, stage: number, t: number): void {
    const i = HEADER_WORDS + (this.n & this.mask) * RECORD_WORDS;
    const f = this.f;
    f[i] = id;
    f[i + 1] = stage;
    f[i + 2] = t;
    f[0] = ++this.n;
  }

  /** Records ever written (more than `capacity` means the oldest were overwritten). */
  get count(): number {
    return this.n;
  }

  clear(): void {
    this.n = 0;
    this.f[0] = 0;
  }

  /** The records still held, oldest first, as a flat copy (id, stage, t)*: cheap to post to another thread. */
  snapshot(): Float64Array {
    const held = Math.min(this.n, this.capacity);
    const out = new Float64Array(held * RECORD_WORDS);
    const first = this.n - held;
    for (let k = 0; k < held; k++) {
      const i = HEADER_WORDS + ((first + k) & this.mask) * RECORD_WORDS;
      out[k * 3] = this.f[i];
      out[k * 3 + 1] = this.f[i + 1];
      out[k * 3 + 2] = this.f[i + 2];
    }
    return out;
  }

  records(): TraceRecord[] {
    return unpack(this.snapshot());
  }
}

export function unpack(flat: Float64Array): TraceRecord[] {
  const out: TraceRecord[] = [];
  for (let k = 0; k + 2 < flat.length; k += RECORD_WORDS)
    out.push({ id: flat[k], stage: flat[k + 1], t: flat[k + 2] });
  return out;
}

/** Joins records (from any number of buffers) by message id: id → stage → time. */
export function collate(...sets: Iterable<TraceRecord>[]): Map<number, Map<number, number>> {
  const byId = new Map<number, Map<number, number>>();
  for (const set of sets)
    for (const r of set) {
      let m = byId.get(r.id);
      if (!m) byId.set(r.id, (m = new Map()));
      m.set(r.stage, r.t);
    }
  return byId;
}

/**
 * A message's stage durations in ms (each stage: its time minus the previous stage's), in
 * the order of `stages` minus the first; undefined unless the message has every stage.
 */
export function stageDurations(stamps: Map<number, number>, stages: readonly number[]): number[] | undefined {
  const out: number[] = [];
  let prev = stamps.get(stages[0]);
  if (prev === undefined) return undefined;
  for (let k = 1; k < stages.length; k++) {
    const t = stamps.get(stages[k]);
    if (t === undefined) return undefined;
    out.push(t - prev);
    prev = t;
  }
  return out;
}

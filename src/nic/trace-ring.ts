/**
 * Trace rings: where the stamps of a traced message are kept by the threads it passes through
 * (mx/trace.ts explains the stages and how they are joined). A ring is (message id, stage,
 * time) records of float64 over a SharedArrayBuffer with one writer, so the thread that
 * reads it (the bench) needs no help from the writer. It lives below the MX library because
 * the NIC writes one: a NIC thread's stamps (taking a traced SEND, putting it on the link,
 * taking it off, delivering it; a remote pull's request and first data) go into its thread's
 * ring, `nicTrace.ring`, set only while someone traces (NicDevice.setTrace). With no ring,
 * an untraced descriptor or frame costs the NIC the flag test it already makes.
 */

import { TRACE_EPOCH_MS, traceNow } from "./clock.js";

/**
 * A message id, the same in every thread: the sender's (nic, endpoint) and its per-endpoint
 * trace sequence number (the u32 that travels in the record, descriptor, frame and event
 * words). Exact in a double.
 */
export function traceId(nic: number, endpoint: number, seq: number): number {
  return ((nic & 0x1f) * 0x10000 + (endpoint & 0xffff)) * 0x100000000 + (seq >>> 0);
}

/** The stages a NIC stamps (numbers shared with mx/trace.ts TraceStage). */
export const NicTraceStage = {
  /** The sending NIC took the SEND descriptor from the send queue. */
  NicTaken: 11,
  /** The sending NIC handed the SEND frame to the link (socket.write returned). */
  OnLink: 12,
  /** The receiving NIC read the SEND frame off the link. */
  OffLink: 13,
  /** The receiving NIC placed the payload and wrote the RECV event (before raising the interrupt). */
  Delivered: 14,
  /** The puller's NIC sent the PULL_REQUEST. */
  PullRequested: 15,
  /** The puller's NIC got the first PULL_REPLY (the request crossed, the peer NIC served it, data came back). */
  PullData: 16,
  /** Split path: the netback pass that took the traced frame off the sending guest's tx ring has taken its requests. */
  NetbackTx: 17,
  /** Split path: the frame is copied and checked; the sending host's bridge forwards it (to a vif or the uplink). */
  Bridged: 18,
  /** Split path across hosts: the receiving host's netback took it from its uplink; its bridge forwards it. */
  BridgedIn: 19,
} as const;

export const HEADER_WORDS = 4;
export const RECORD_WORDS = 3;
export const DEFAULT_TRACE_RECORDS = 1 << 16;

export interface TraceRecord {
  id: number;
  stage: number;
  t: number;
}

/** A ring of trace records over a SharedArrayBuffer (one writer). Header word 0 counts records ever written. */
export class TraceBuffer {
  readonly sab: SharedArrayBuffer;
  readonly capacity: number;
  private readonly f: Float64Array;
  private readonly mask: number;
  private n = 0;

  /**
   * `capacity` is rounded up to a power of two. `sab`: an existing ring's memory, from
   * `byteOffset` (another thread's view of it; capacity 0: the one its header says).
   */
  constructor(capacity: number = DEFAULT_TRACE_RECORDS, sab?: SharedArrayBuffer, byteOffset = 0) {
    if (sab !== undefined && capacity === 0) capacity = new Float64Array(sab, byteOffset, HEADER_WORDS)[1];
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 24)
      throw new RangeError(`trace capacity must be an integer in 1..${1 << 24}, got ${String(capacity)}`);
    let cap = 1;
    while (cap < capacity) cap *= 2;
    this.capacity = cap;
    this.mask = cap - 1;
    this.sab = sab ?? new SharedArrayBuffer(traceRingBytes(cap));
    this.f = new Float64Array(this.sab, byteOffset, HEADER_WORDS + cap * RECORD_WORDS);
    this.n = this.f[0];
    this.f[1] = cap;
    this.f[2] = TRACE_EPOCH_MS;
  }

  /** Header word 3: a switch the ring's reader may set for a writer that stamps only while it is on. */
  get on(): boolean {
    return this.f[3] !== 0;
  }

  set on(v: boolean) {
    this.f[3] = v ? 1 : 0;
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
    return Math.max(this.n, this.f[0]);
  }

  clear(): void {
    this.n = 0;
    this.f[0] = 0;
  }

  /** The records still held, oldest first, as a flat copy (id, stage, t)*: cheap to post to another thread. */
  snapshot(): Float64Array {
    const n = this.count; // the writer may be another thread: its count is in word 0
    const held = Math.min(n, this.capacity);
    const out = new Float64Array(held * RECORD_WORDS);
    const first = n - held;
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

/** Bytes of a ring of `capacity` records (a power of two). */
export function traceRingBytes(capacity: number): number {
  return (HEADER_WORDS + capacity * RECORD_WORDS) * 8;
}

export function unpack(flat: Float64Array): TraceRecord[] {
  const out: TraceRecord[] = [];
  for (let k = 0; k + 2 < flat.length; k += RECORD_WORDS)
    out.push({ id: flat[k], stage: flat[k + 1], t: flat[k + 2] });
  return out;
}

/** This thread's NIC trace ring: undefined unless someone traces (one per thread; a NIC thread runs one NIC). */
export const nicTrace: { ring: TraceBuffer | undefined } = { ring: undefined };

/** Stamps `stage` of message (nic, endpoint, seq) now, if this thread has a ring. */
export function nicStamp(nic: number, endpoint: number, seq: number, stage: number): void {
  const ring = nicTrace.ring;
  if (ring !== undefined) ring.record(traceId(nic, endpoint, seq), stage, traceNow());
}

// ---- traced Ethernet frames (the split path) ---------------------------------------------------
//
// A traced frame ends with a trailer: ETHER_TRACE_MAGIC (u32, little-endian) then the message's
// trace id (float64, little-endian), after everything its protocol counts (MXoE's payload
// word says where its bytes end, so its receiver ignores what follows). The backend and the
// bridge read it only while their ring is on; untraced frames have none and cost nothing.

export const ETHER_TRACE_MAGIC = 0x5254584d; // "MXTR"
export const ETHER_TRACE_BYTES = 12;

/** Appends the trailer for message `id` at `at` (the frame must have room for ETHER_TRACE_BYTES). */
export function putEtherTrace(frame: Uint8Array, at: number, id: number): void {
  const v = new DataView(frame.buffer, frame.byteOffset + at, ETHER_TRACE_BYTES);
  v.setUint32(0, ETHER_TRACE_MAGIC, true);
  v.setFloat64(4, id, true);
}

/** The trace id in the trailer of a frame of `len` bytes, or 0 when it has none. */
export function etherTraceId(frame: Uint8Array, len: number = frame.length): number {
  if (len < ETHER_TRACE_BYTES + 14 || len > frame.length) return 0;
  const v = new DataView(frame.buffer, frame.byteOffset + len - ETHER_TRACE_BYTES, ETHER_TRACE_BYTES);
  if (v.getUint32(0, true) !== ETHER_TRACE_MAGIC) return 0;
  const id = v.getFloat64(4, true);
  return Number.isSafeInteger(id) && id > 0 ? id : 0;
}

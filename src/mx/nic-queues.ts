/**
 * The endpoint's queues in its NIC window (nic/window.ts), the library's side: the send
 * queue it produces descriptors into (its doorbell wakes a sleeping NIC), the event queue it
 * consumes, and the receive area whose space it gives back. Events go to their owners:
 *
 *   PULL_DONE (or an ERROR for a pull)     the NIC pulls below (the rendezvous receives)
 *   CONNECT_DONE (or an ERROR for one)     the connects below
 *   RECV, SEND_DONE (or an ERROR for one)  the records sent through the NIC (nic-path.ts)
 *   DRIVER                                 the backend's words (driver-abi.ts: a channel came or went)
 *
 * A matched rendezvous from a channel or from another NIC is pulled here: a PULL descriptor
 * naming the sender's pull right (records.ts AUX_XP_*), into the receive buffer registered
 * for it (regions.ts); the NIC copies once and reports PULL_DONE.
 */
import { MxStatus } from "../nic/status.js";
import {
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  D_TRACE_SEQ,
  DESC_WORDS,
  DFLAG_EXPOSURE,
  DFLAG_REMOTE,
  DFLAG_TRACE,
  E_AUX0,
  E_COOKIE,
  E_EXTRA,
  E_REASON,
  E_RECV_SPAN,
  E_SRC_SESSION,
  E_TRACE_DMA_DONE,
  E_TRACE_NIC_SEEN,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  NIC_SLEEPING_HOLDING,
  Opcode,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_SLEEPING,
  W_RQ_CONS,
  W_SQ_CONS,
  W_SQ_PROD,
} from "../nic/window.js";
import type { Completion } from "./completion.js";
import { COOKIE_CONNECT, COOKIE_SEND, NR_ID_MASK, pullFailureText } from "./nic-records.js";
import type { Regions } from "./regions.js";
import { TraceStage, traceNow } from "./trace.js";
import type {
  EndpointContext,
  InboundRecord,
  MxRequest,
  Partner,
  PeerLossListener,
  Puller,
} from "./types.js";

/** Who takes the RECV and SEND_DONE events: the records sent through the NIC (nic-path.ts). */
export interface NicRecordSink {
  /** A RECV event at word `base` of the window (its receive-area space is released after). */
  onRecv(base: number): void;
  /** A SEND of ours finished: SEND_DONE with the NIC's ErrorReason, or an ERROR for its descriptor. */
  onSendDone(cookie: number, status: number, reason: number): void;
}

/** Who takes the DRIVER events (channel-path.ts). */
export interface DriverEventSink {
  onDriverEvent(kind: number, channelId: number, nic: number, endpoint: number, session: number): void;
}

/**
 * How recently a local pull must have been posted or done for a sleep to look for itself
 * rather than wait for a kick (pullingLocally): a stream's pulls end every 30–50 µs.
 */
const QUIET_WHILE_MOVING_MS = 2;

/** A rendezvous receive the NIC is pulling. */
interface NicPull {
  recv: MxRequest;
  source: Partner;
  syncId: number;
  xfer: number;
  /**
   * The source went away while the NIC pulled: the receive fails with this status, but only
   * when the NIC reports the pull done — until then it may still write into the buffer, which
   * must not be handed back (to the user or the bounce pool) under a live copy.
   */
  failed: number | undefined;
  /** From this host's memory: the NIC copies it itself, at memcpy's pace (no wire). */
  local: boolean;
}

/** A CONNECT descriptor's answer, once it came. */
export interface NicConnect {
  readonly id: number;
  done: boolean;
  status: number;
  session: number;
  /** REJECTED: how long the peer's NIC refuses us (ms), after too many wrong keys. */
  retryAfter: number;
}

const NO_RECORDS: NicRecordSink = { onRecv() {}, onSendDone() {} };
const NO_DRIVER_EVENTS: DriverEventSink = { onDriverEvent() {} };

export class NicQueues implements Puller, PeerLossListener {
  readonly window: Int32Array;
  readonly windowBytes: Uint8Array;
  /** The window as float64 pairs: the NIC's trace stamps in a PULL_DONE (window.ts). */
  private readonly windowF64: Float64Array;
  private sqProd: number;
  private eqCons: number;
  /** poll() is handling events: a handler that polls again (through slot's wait) returns at once. */
  private polling = false;
  private rqCons: number;
  private readonly pulls = new Map<number, NicPull>();
  /** Of `pulls`, those from this host's memory. */
  private localPulls = 0;
  /** When one of those was last posted or done (performance.now(), ms). */
  private localPullMovedAt = 0;
  private readonly connects = new Map<number, NicConnect>();
  private records = NO_RECORDS;
  private driverEvents = NO_DRIVER_EVENTS;

  constructor(
    window: SharedArrayBuffer,
    private readonly ctx: EndpointContext,
    private readonly completion: Completion,
    private readonly regions: Regions,
  ) {
    this.window = new Int32Array(window);
    this.windowBytes = new Uint8Array(window);
    this.windowF64 = new Float64Array(window);
    // int32s, the words' own bits: u32s leave V8's small integers past 2^31 (channel.ts).
    this.sqProd = Atomics.load(this.window, W_SQ_PROD);
    this.eqCons = Atomics.load(this.window, W_EQ_CONS);
    this.rqCons = Atomics.load(this.window, W_RQ_CONS);
  }

  /** Who takes the events that are not the queues' own. */
  attach(records: NicRecordSink, driverEvents: DriverEventSink): void {
    this.records = records;
    this.driverEvents = driverEvents;
  }

  /** The NIC is pulling something for us. */
  get pulling(): boolean {
    return this.pulls.size > 0;
  }

  /**
   * The NIC is copying for us from this host's memory: its pulls end every few tens of µs, so
   * we may sleep in short slices rather than be kicked at each (window.ts OWNER_SLEEPING_QUIET).
   * Only while they move — one posted or done in the last QUIET_WHILE_MOVING_MS: a pull that
   * waits behind a stalled descriptor, for our caps, or for ever (the endpoint closed under
   * us) is slept on as anything else, not looked at every 0.1 ms. A pull across the wire
   * ends at the wire's pace: kicked, as before.
   */
  get pullingLocally(): boolean {
    return this.localPulls > 0 && performance.now() - this.localPullMovedAt < QUIET_WHILE_MOVING_MS;
  }

  // ---- the send queue ---------------------------------------------------------------------------

  /** Descriptors the send queue has room for now. */
  sqFree(): number {
    return SQ_ENTRIES - ((this.sqProd - Atomics.load(this.window, W_SQ_CONS)) >>> 0);
  }

  /** Descriptors posted that the NIC has not taken yet. */
  sqPending(): number {
    return Math.min(SQ_ENTRIES, (this.sqProd - Atomics.load(this.window, W_SQ_CONS)) >>> 0);
  }

  /**
   * The next send-queue descriptor, zeroed; its word index in the window. `wait`: if the
   * queue is full, poll events until the NIC consumed one (else the caller checked sqFree).
   * Called from an event's handler, the poll returns at once; the NIC takes descriptors while
   * its events wait in the endpoint's backlog, so the queue still frees.
   */
  slot(wait: boolean): number {
    const w = this.window;
    if (wait) while (this.sqFree() === 0) this.poll();
    const base = (SQ_OFFSET >> 2) + (this.sqProd & (SQ_ENTRIES - 1)) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) w[base + i] = 0;
    return base;
  }

  /** Publishes the descriptor `slot` gave (the doorbell), waking the NIC if it sleeps. */
  post(): void {
    const w = this.window;
    this.sqProd = (this.sqProd + 1) | 0;
    Atomics.store(w, W_SQ_PROD, this.sqProd);
    if (Atomics.load(w, W_NIC_SLEEPING) !== 0) Atomics.notify(w, W_SQ_PROD);
  }

  // ---- the event queue ----------------------------------------------------------------------------

  /** Takes every event the NIC has written, each to its owner. */
  poll(): void {
    const w = this.window;
    const prod = Atomics.load(w, W_EQ_PROD);
    if (prod === this.eqCons || this.polling) return;
    // Not re-entrant: a handler that polled again would take the events after the one being
    // handled, and this loop, its bound passed, would then run through stale slots for 2^32
    // rounds (an osu_bibw window of pulled rendezvous hung that way, in a NOTIFY's wait).
    this.polling = true;
    try {
      this.takeEvents(w, prod);
    } finally {
      this.polling = false;
    }
    Atomics.store(w, W_EQ_CONS, this.eqCons);
    // A sleeping NIC that holds deliveries for us waits for the receive space just released.
    if (Atomics.load(w, W_NIC_SLEEPING) === NIC_SLEEPING_HOLDING) Atomics.notify(w, W_SQ_PROD);
  }

  private takeEvents(w: Int32Array, prod: number): void {
    while (this.eqCons !== prod) {
      const base = (EQ_OFFSET >> 2) + (this.eqCons & (EQ_ENTRIES - 1)) * EVENT_WORDS;
      const tw = w[base + E_TYPE];
      const type = tw & 0xffff;
      const status = tw >>> 16;
      const cookie = w[base + E_COOKIE] >>> 0;
      if (type === EventType.PullDone || (type === EventType.Error && this.pulls.has(cookie))) {
        this.pullDone(cookie, type === EventType.PullDone && status === MxStatus.SUCCESS, status, base);
      } else if (type === EventType.Driver) {
        this.driverEvents.onDriverEvent(
          cookie,
          w[base + E_EXTRA] >>> 0,
          w[base + E_EXTRA + 1] >>> 0,
          w[base + E_EXTRA + 2] >>> 0,
          w[base + E_EXTRA + 3] >>> 0,
        );
      } else if (type === EventType.Recv) {
        this.records.onRecv(base);
        this.rqCons = (this.rqCons + w[base + E_RECV_SPAN]) | 0;
        Atomics.store(w, W_RQ_CONS, this.rqCons);
      } else if (type === EventType.SendDone || (type === EventType.Error && (cookie & COOKIE_SEND) !== 0)) {
        this.records.onSendDone(
          cookie,
          status === 0 && type === EventType.Error ? MxStatus.ABORTED : status,
          type === EventType.SendDone ? w[base + E_REASON] >>> 0 : 0,
        );
      } else if (
        type === EventType.ConnectDone ||
        (type === EventType.Error && (cookie & COOKIE_CONNECT) !== 0)
      ) {
        const c = this.connects.get(cookie & NR_ID_MASK);
        if (c) {
          c.done = true;
          c.status = type === EventType.Error ? status || MxStatus.ABORTED : status;
          c.session = w[base + E_SRC_SESSION] >>> 0;
          c.retryAfter = w[base + E_AUX0] >>> 0;
        }
      } else if (type === EventType.Error) {
        this.ctx.counters.nicErrors++;
      }
      this.eqCons = (this.eqCons + 1) | 0;
    }
  }

  // ---- rendezvous pulls -----------------------------------------------------------------------------

  /**
   * Asks the NIC to pull `xfer` bytes of the rendezvous `rec` from `source` into `req`: the
   * source is the pull right the sender armed (window.ts DFLAG_EXPOSURE: region = its index,
   * key = its key, offset within it), on another NIC across the link (DFLAG_REMOTE) or ours.
   */
  startPull(req: MxRequest, source: Partner, rec: InboundRecord, xfer: number): void {
    // Read before anything that may progress (the queue may be full): the record is reused.
    const syncId = rec.syncId;
    const region = rec.region;
    const key = rec.key;
    const offset = rec.offset;
    const dst = this.regions.pullTarget(req, xfer);
    if (dst === undefined) {
      this.completion.complete(req, MxStatus.NO_RESOURCES, 0);
      source.notify(syncId, 0, MxStatus.NO_RESOURCES);
      return;
    }
    const cookie = this.ctx.newId(this.pulls);
    const local = source.nic === this.ctx.nicId;
    this.pulls.set(cookie, { recv: req, source, syncId, xfer, failed: undefined, local });
    if (local) {
      this.localPulls++;
      this.localPullMovedAt = performance.now();
    }
    this.ctx.counters.pulls++;
    const tb = this.ctx.trace;
    const tid = tb !== undefined ? req.traceId : 0;
    let dflags = (tid !== 0 ? DFLAG_TRACE : 0) | DFLAG_EXPOSURE;
    if (!local) dflags |= DFLAG_REMOTE;
    const w = this.window;
    const b = this.slot(true);
    w[b + D_OPCODE] = Opcode.Pull | (dflags << 16);
    w[b + D_COOKIE] = cookie;
    w[b + D_SRC_REGION] = region;
    w[b + D_SRC_KEY] = key;
    w[b + D_SRC_OFFSET] = offset;
    w[b + D_DST_REGION] = dst.regionId;
    w[b + D_DST_OFFSET] = (req.bounce ?? req.buffer).byteOffset - dst.start;
    w[b + D_LENGTH] = xfer;
    w[b + D_DEST_NIC] = source.nic;
    w[b + D_DEST_ENDPOINT] = source.endpoint;
    w[b + D_DEST_SESSION] = source.session;
    w[b + D_TRACE_SEQ] = tid % 0x100000000;
    if (tid !== 0 && tb !== undefined) tb.record(tid, TraceStage.PullPosted, traceNow());
    this.post();
  }

  /** A pull ended: the receive completes, and the sender is told (NOTIFY) if it waits. */
  private pullDone(cookie: number, ok: boolean, status: number, base: number): void {
    const p = this.pulls.get(cookie);
    if (p === undefined) {
      this.ctx.counters.nicErrors++;
      return;
    }
    this.pulls.delete(cookie);
    if (p.local) {
      this.localPulls--;
      this.localPullMovedAt = performance.now();
    }
    if (p.failed !== undefined) {
      this.completion.complete(p.recv, p.failed, 0);
      return;
    }
    const tb = this.ctx.trace;
    if (tb !== undefined && p.recv.traceId !== 0 && ok) {
      // The NIC's stamps (float64 pairs at E_EXTRA of PULL_DONE, window.ts) and ours.
      const now = traceNow();
      const seen = this.windowF64[(base + E_TRACE_NIC_SEEN) >> 1];
      const done = this.windowF64[(base + E_TRACE_DMA_DONE) >> 1];
      if (seen !== 0) tb.record(p.recv.traceId, TraceStage.NicSeen, seen);
      if (done !== 0) tb.record(p.recv.traceId, TraceStage.DmaDone, done);
      tb.record(p.recv.traceId, TraceStage.EventSeen, now);
    }
    const xfer = ok ? p.xfer : 0;
    const code = !ok
      ? status || MxStatus.ABORTED
      : xfer < p.recv.msgLength
        ? MxStatus.TRUNCATED
        : MxStatus.SUCCESS;
    if (!ok) p.recv.reason ??= pullFailureText(code);
    if (p.syncId !== 0) p.source.notify(p.syncId, xfer, ok ? MxStatus.SUCCESS : code);
    this.completion.complete(p.recv, code, xfer);
  }

  /** The data of a failed peer would be its last words: its pulls fail, once the NIC let go of the buffer. */
  peerLost(peer: Partner, why: string, code: number): void {
    for (const p of this.pulls.values()) {
      if (p.source === peer) {
        p.failed ??= code;
        p.recv.reason ??= why;
      }
    }
  }

  // ---- connects ---------------------------------------------------------------------------------------

  /**
   * mx_connect to an endpoint on another NIC: a CONNECT descriptor; the NICs check the key
   * between themselves. The answer arrives in the returned object (CONNECT_DONE); `endConnect`
   * forgets it.
   */
  connect(nic: number, endpoint: number, key: number): NicConnect {
    const c: NicConnect = {
      id: this.ctx.newId(this.connects),
      done: false,
      status: MxStatus.PENDING,
      session: 0,
      retryAfter: 0,
    };
    this.connects.set(c.id, c);
    const w = this.window;
    const b = this.slot(true);
    w[b + D_OPCODE] = Opcode.Connect;
    w[b + D_COOKIE] = COOKIE_CONNECT | c.id;
    w[b + D_SRC_KEY] = key;
    w[b + D_DEST_NIC] = nic;
    w[b + D_DEST_ENDPOINT] = endpoint;
    this.post();
    return c;
  }

  endConnect(c: NicConnect): void {
    this.connects.delete(c.id);
  }
}

/**
 * Completions into endpoints' event queues, and interrupts (Open-MX's driver/linux/
 * omx_event.c). Every event the NIC writes is built here, one method per type, from the word
 * tables of window.ts; the engines say what happened and never touch an event's words.
 *
 * An event goes into the endpoint's event queue if the queue has room and nothing is held
 * before it; else into the endpoint's backlog (EVENT_BACKLOG events, kept in order and moved
 * into the queue as the owner consumes). A completion the NIC owes the endpoint always finds
 * room there: each descriptor reserves one as it is taken (reserve, EndpointContext.owed), and
 * unexpected events — RECVs, DRIVER events — go into the backlog only while the held events
 * and the reserved completions stay below the backlog's line (endpoints.ts BACKLOG_RESERVE),
 * DRIVER events DRIVER_BACKLOG at most; one that finds no room is refused (a delivery waits,
 * a DRIVER event is EAGAIN), never dropped. Before, a co-resident peer connecting and closing
 * in a loop filled an endpoint's queue and backlog with myrback's DRIVER events, and the
 * completion of a send the owner had outstanding was dropped: the request never ended. An
 * event that finds no room at all is dropped and counted (event_drops), which the accounting
 * above keeps from happening. Interrupts are
 * raised once per endpoint per round however many events it got (flushRaises), and kick only
 * an owner that said it sleeps, in its window (window.ts W_OWNER_SLEEPING, raiseInterrupt).
 *
 * Allocation: events are built in one preallocated scratch event; nothing is allocated per
 * event.
 */
import { type NicClock, traceNow } from "./clock.js";
import { CONNECT_FORGET_MS, CONNECT_LOCKOUT_MAX_MS, CONNECT_LOCKOUT_MS } from "./connect-throttle.js";
import { EndpointCounter, ERROR_REASON_SLOT, NicCounter } from "./counters.js";
import {
  BACKLOG_RESERVE,
  DRIVER_BACKLOG,
  type EndpointContext,
  type EndpointTable,
  EVENT_BACKLOG,
  M_AUX0,
  M_AUX1,
  M_MATCH_HI,
  M_MATCH_LO,
  M_SRC_EP,
  M_SRC_NIC,
  M_SRC_SESSION,
  M_TRACE,
} from "./endpoints.js";
import { PORT_I_SLEEPING } from "./ether-port.js";
import { OwnRefusals } from "./own-refusals.js";
import { PULL_FORGET_MS, PULL_LOCKOUT_MAX_MS, PULL_LOCKOUT_MS } from "./pull-throttle.js";
import { SESSION_FORGET_MS, SESSION_LOCKOUT_MAX_MS, SESSION_LOCKOUT_MS } from "./session-throttle.js";
import { MxStatus, REASON_STATUS, reasonOfStatus } from "./status.js";
import {
  D_COOKIE,
  D_LENGTH,
  D_OPCODE,
  E_AUX0,
  E_AUX1,
  E_BAD_INDEX_CONSUMER,
  E_BAD_INDEX_PRODUCER,
  E_CONNECT_RETRY_MS,
  E_COOKIE,
  E_DRIVER_WORDS,
  E_ERROR_OPCODE,
  E_LENGTH,
  E_MATCH_HI,
  E_MATCH_LO,
  E_REASON,
  E_RECV_OFFSET,
  E_RECV_SPAN,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_SRC_SESSION,
  E_TRACE_DMA_DONE,
  E_TRACE_NIC_SEEN,
  E_TRACE_SEQ,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  ErrorReason,
  EVENT_WORDS,
  EventType,
  OWNER_SLEEPING_QUIET,
  raiseInterrupt,
  W_EQ_CONS,
  W_EQ_PROD,
  W_OWNER_SLEEPING,
} from "./window.js";

const EQ_W = EQ_OFFSET / 4;
/** The backlog's line (endpoints.ts BACKLOG_RESERVE): held events plus owed completions stay below it. */
const BACKLOG_LINE = EVENT_BACKLOG - BACKLOG_RESERVE;

// What an event is to the backlog's accounting (post).
/** The completion of a taken descriptor: its reservation is released. */
const OWED = 0;
/** A completion nothing reserved (a BadIndex report). */
const UNOWED = 1;
/** A RECV: placed only where roomForUnexpected said. */
const UNEXPECTED = 2;
/** A DRIVER event: counted against DRIVER_BACKLOG while it is held. */
const DRIVER = 3;

/** The E_TYPE word of a PULL_DONE that succeeded: the one event an interrupt may leave for later. */
const PULL_DONE_SUCCESS = EventType.PullDone | (MxStatus.SUCCESS << 16);

export class Events {
  /** The event being built. */
  private readonly ev = new Int32Array(EVENT_WORDS);
  private readonly evF64 = new Float64Array(this.ev.buffer);
  /** Endpoints to raise at the end of the round, each once. */
  private readonly raiseIds: Int32Array;
  private raiseCount = 0;
  /** The Ethernet port's interrupt words, once the port is open (ether-service.ts). */
  portIntr: Int32Array = new Int32Array(0);
  private portNeedRaise = false;
  /** What this NIC's endpoints were refused, per owner: counted from the answers posted here. */
  readonly own: OwnRefusals;

  constructor(
    private readonly eps: EndpointTable,
    private readonly c: Float64Array,
    clock: NicClock,
  ) {
    this.own = new OwnRefusals(clock, c);
    this.raiseIds = new Int32Array(eps.maxEndpoints);
  }

  // ---- one method per event type (window.ts has their word tables) -------------------------

  /**
   * PULL_DONE. `seenAt` ≠ 0: a traced pull; its stamps go into the event (E_TRACE_*).
   * `answeringNic`, `ownerEp`: the NIC and the endpoint whose right it asked for.
   */
  postPullDone(
    ctx: EndpointContext,
    cookie: number,
    len: number,
    status: number,
    seenAt: number,
    answeringNic: number,
    ownerEp: number,
  ): void {
    if (status !== MxStatus.SUCCESS) {
      noteRefusal(ctx, status);
      this.own.pullAnswered(ctx, answeringNic, ownerEp, status);
    }
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.PullDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_LENGTH] = len;
    if (seenAt !== 0) {
      this.evF64[E_TRACE_NIC_SEEN >> 1] = seenAt;
      this.evF64[E_TRACE_DMA_DONE >> 1] = traceNow();
    }
    this.post(ctx, OWED);
  }

  /** SEND_DONE: how a SEND of ctx ended (at `answeringNic`, the receiver's); a failure carries its ErrorReason. */
  postSendDone(
    ctx: EndpointContext,
    cookie: number,
    len: number,
    status: number,
    reason = reasonOfStatus(status),
    answeringNic = this.eps.nicId,
  ): void {
    if (status !== MxStatus.SUCCESS) {
      this.c[NicCounter.send_failures]++;
      noteRefusal(ctx, status);
      this.own.sendAnswered(ctx, answeringNic, status);
    }
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.SendDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_LENGTH] = len;
    ev[E_REASON] = reason;
    this.post(ctx, OWED);
  }

  /**
   * RECV: the delivery whose metadata is `m` (endpoints.ts M_*) was placed at `offset` of ctx's
   * receive area, `span` bytes to release.
   */
  postRecv(ctx: EndpointContext, m: Int32Array, len: number, offset: number, span: number): void {
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.Recv;
    ev[E_LENGTH] = len;
    ev[E_SRC_NIC] = m[M_SRC_NIC];
    ev[E_SRC_ENDPOINT] = m[M_SRC_EP];
    ev[E_SRC_SESSION] = m[M_SRC_SESSION];
    ev[E_MATCH_HI] = m[M_MATCH_HI];
    ev[E_MATCH_LO] = m[M_MATCH_LO];
    ev[E_RECV_OFFSET] = offset;
    ev[E_RECV_SPAN] = span;
    ev[E_AUX0] = m[M_AUX0];
    ev[E_AUX1] = m[M_AUX1];
    ev[E_TRACE_SEQ] = m[M_TRACE];
    this.post(ctx, UNEXPECTED);
  }

  /** ERROR: the descriptor `d` was refused for `reason`. */
  postError(
    ctx: EndpointContext,
    d: Int32Array,
    reason: number,
    status: number = REASON_STATUS[reason],
  ): void {
    this.c[NicCounter.errors]++;
    this.c[ERROR_REASON_SLOT[reason]]++;
    noteRefusal(ctx, status);
    this.c[ctx.base + EndpointCounter.errors]++;
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.Error | (status << 16);
    ev[E_COOKIE] = d[D_COOKIE];
    ev[E_LENGTH] = d[D_LENGTH];
    ev[E_REASON] = reason;
    ev[E_ERROR_OPCODE] = d[D_OPCODE];
    this.post(ctx, OWED);
  }

  /** ERROR (BadIndex): the owner's W_SQ_PROD `prod` is no index the NIC's `cons` can reach. */
  postBadIndex(ctx: EndpointContext, prod: number, cons: number): void {
    this.c[NicCounter.errors]++;
    this.c[NicCounter.error_bad_index]++;
    this.c[ctx.base + EndpointCounter.errors]++;
    this.c[ctx.base + EndpointCounter.bad_index]++;
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.Error | (MxStatus.ABORTED << 16);
    ev[E_REASON] = ErrorReason.BadIndex;
    ev[E_BAD_INDEX_PRODUCER] = prod | 0;
    ev[E_BAD_INDEX_CONSUMER] = cons | 0;
    this.post(ctx, UNOWED);
  }

  /** CONNECT_DONE: the CONNECT `cookie` of ctx found endpoint (nic, ep) with `session`, or not. */
  postConnectDone(
    ctx: EndpointContext,
    cookie: number,
    nic: number,
    ep: number,
    session: number,
    status: number,
    retryAfterMs = 0,
  ): void {
    if (status !== MxStatus.SUCCESS) {
      this.c[NicCounter.connect_failures]++;
      noteRefusal(ctx, status, retryAfterMs);
      this.own.connectAnswered(ctx, nic, status);
    }
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.ConnectDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_SRC_NIC] = nic;
    ev[E_SRC_ENDPOINT] = ep;
    ev[E_SRC_SESSION] = session;
    ev[E_CONNECT_RETRY_MS] = retryAfterMs;
    this.post(ctx, OWED);
  }

  /**
   * DRIVER: `words` (checked: at most EVENT_WORDS − E_DRIVER_WORDS) on the driver's request.
   * false (counted driver_refused): the queue is full and the backlog has no room for it — its
   * room is kept for the completions owed, or it holds DRIVER_BACKLOG DRIVER events already.
   */
  postDriver(ctx: EndpointContext, cookie: number, words: readonly number[]): boolean {
    if (!this.roomForUnexpected(ctx) || ctx.blDriver >= DRIVER_BACKLOG) {
      this.c[NicCounter.driver_refused]++;
      this.c[ctx.base + EndpointCounter.driver_refused]++;
      return false;
    }
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.Driver;
    ev[E_COOKIE] = cookie;
    for (let i = 0; i < words.length; i++) ev[E_DRIVER_WORDS + i] = words[i];
    return this.post(ctx, DRIVER);
  }

  // ---- what the NIC owes an endpoint ----------------------------------------------------------

  /** Whether ctx may have one more completion owed: its queue takes a descriptor only then. */
  roomForCompletion(ctx: EndpointContext): boolean {
    return ctx.blCount + ctx.owed < BACKLOG_LINE;
  }

  /**
   * Whether an unexpected event (a RECV, a DRIVER event) may be posted to ctx now: straight
   * into its queue, or into its backlog below the line, leaving room for every completion owed.
   */
  roomForUnexpected(ctx: EndpointContext): boolean {
    // The backlog's room first: no look at the owner's index while it has room anyway.
    return ctx.blCount + ctx.owed < BACKLOG_LINE || (ctx.blCount === 0 && this.eqHasRoom(ctx));
  }

  /** ctx's descriptor is taken: its completion is owed (roomForCompletion said it has room). */
  reserve(ctx: EndpointContext): void {
    ctx.owed++;
    this.c[ctx.base + EndpointCounter.completions_owed] = ctx.owed;
  }

  /** A reservation no event will spend: a NOP, a descriptor that waits (taken again later), one lost to a bug. */
  unreserve(ctx: EndpointContext): void {
    if (ctx.owed > 0) ctx.owed--;
    this.c[ctx.base + EndpointCounter.completions_owed] = ctx.owed;
  }

  /** ctx closed: nothing is held for it, and nothing owed (its requests ended without events). */
  reset(ctx: EndpointContext): void {
    ctx.blCount = 0;
    ctx.blDriver = 0;
    ctx.owed = 0;
    this.c[ctx.base + EndpointCounter.completions_owed] = 0;
  }

  // ---- the queue and the backlog --------------------------------------------------------------

  private eqHasRoom(ctx: EndpointContext): boolean {
    // A consumer index that is ahead of ours (garbage) reads as a full queue.
    return (ctx.eqProd - Atomics.load(ctx.w, W_EQ_CONS)) >>> 0 < EQ_ENTRIES;
  }

  private writeEvent(ctx: EndpointContext, src: Int32Array, srcBase: number): void {
    const w = ctx.w;
    const base = EQ_W + (ctx.eqProd & (EQ_ENTRIES - 1)) * EVENT_WORDS;
    for (let i = 0; i < EVENT_WORDS; i++) w[base + i] = src[srcBase + i];
    // An int32, the word's own bits (a u32 leaves V8's small integers past 2^31: mx/channel.ts).
    ctx.eqProd = (ctx.eqProd + 1) | 0;
    // The owner reads an event only after it sees W_EQ_PROD pass it: the words are stored first.
    Atomics.store(w, W_EQ_PROD, ctx.eqProd);
    this.c[NicCounter.events]++;
    this.c[ctx.base + EndpointCounter.events]++;
    this.raise(ctx, src[srcBase + E_TYPE] !== PULL_DONE_SUCCESS);
  }

  /**
   * Posts the built event, of `kind` (OWED, UNOWED, UNEXPECTED, DRIVER), to ctx: into its event
   * queue, else its backlog. The accounting above leaves an owed completion room in the
   * backlog; were it ever wrong, the event would be dropped and counted (event_drops).
   */
  private post(ctx: EndpointContext, kind: number): boolean {
    if (kind === OWED) {
      // Its reservation is spent: the room it kept is the room it takes now.
      if (ctx.owed > 0) ctx.owed--;
      this.c[ctx.base + EndpointCounter.completions_owed] = ctx.owed;
    }
    if (ctx.blCount === 0 && this.eqHasRoom(ctx)) {
      this.writeEvent(ctx, this.ev, 0);
      return true;
    }
    if (ctx.blCount < EVENT_BACKLOG) {
      ctx.backlog!.set(this.ev, ((ctx.blHead + ctx.blCount) % EVENT_BACKLOG) * EVENT_WORDS);
      ctx.blCount++;
      if (kind === DRIVER) ctx.blDriver++;
      this.c[NicCounter.event_backlog]++;
      this.c[ctx.base + EndpointCounter.event_backlog]++;
      return true;
    }
    this.c[NicCounter.event_drops]++;
    this.c[ctx.base + EndpointCounter.event_drops]++;
    return false;
  }

  /** Moves held events into ctx's queue while it has room. Returns whether it moved any. */
  drainBacklog(ctx: EndpointContext): boolean {
    let did = false;
    const bl = ctx.backlog!;
    while (ctx.blCount > 0 && this.eqHasRoom(ctx)) {
      const at = ctx.blHead * EVENT_WORDS;
      if ((bl[at + E_TYPE] & 0xffff) === EventType.Driver) ctx.blDriver--;
      this.writeEvent(ctx, bl, at);
      ctx.blHead = (ctx.blHead + 1) % EVENT_BACKLOG;
      ctx.blCount--;
      did = true;
    }
    return did;
  }

  // ---- interrupts -------------------------------------------------------------------------------

  /**
   * ctx gets an interrupt at the end of the round. `urgent`: it may not wait for an owner
   * sleeping OWNER_SLEEPING_QUIET (flushRaises) — all but a pull done well (an endpoint closed
   * under its owner, too).
   */
  raise(ctx: EndpointContext, urgent = true): void {
    if (urgent) ctx.raiseUrgent = true;
    if (ctx.needRaise) return;
    ctx.needRaise = true;
    this.raiseIds[this.raiseCount++] = ctx.id;
  }

  /** The Ethernet port gets an interrupt at the end of the round. */
  raisePort(): void {
    this.portNeedRaise = true;
  }

  /**
   * One interrupt per endpoint per round, however many events it got. Only pulls done well,
   * and more of the owner's work at hand (a pull being copied, descriptors posted and not yet
   * taken — not completions owed by the wire, which come at its pace): it may wait for an
   * owner sleeping OWNER_SLEEPING_QUIET, who looks by itself (window.ts).
   */
  flushRaises(): void {
    const ctxs = this.eps.ctxs;
    for (let i = 0; i < this.raiseCount; i++) {
      const ctx = ctxs[this.raiseIds[i]];
      ctx.needRaise = false;
      const quietOk = !ctx.raiseUrgent && (ctx.pulling || ctx.sqCons !== ctx.prodSeen);
      ctx.raiseUrgent = false;
      this.c[NicCounter.interrupts]++;
      this.c[ctx.base + EndpointCounter.interrupts]++;
      if (raiseInterrupt(ctx.w, W_OWNER_SLEEPING, ctx.intr, quietOk)) this.c[NicCounter.interrupt_kicks]++;
      // (A plain look: one that lost the race with its owner's wake-up may be counted too.)
      else if (quietOk && ctx.w[W_OWNER_SLEEPING] === OWNER_SLEEPING_QUIET)
        this.c[NicCounter.interrupts_quiet]++;
    }
    this.raiseCount = 0;
    if (this.portNeedRaise) {
      this.portNeedRaise = false;
      this.c[NicCounter.interrupts]++;
      if (raiseInterrupt(this.portIntr, PORT_I_SLEEPING, this.portIntr)) this.c[NicCounter.interrupt_kicks]++;
    }
  }
}

/**
 * The lockout an answer implies when it does not say how long: REJECTED without a time (a
 * session or pull lockout) may last the longest any throttle gives; a plain refusal (BAD_KEY,
 * BAD_SESSION, BAD_RDMAWIN) may be the last free one, which starts the shortest.
 */
const LOCKOUT_UNSAID_MS = Math.max(CONNECT_LOCKOUT_MAX_MS, SESSION_LOCKOUT_MAX_MS, PULL_LOCKOUT_MAX_MS);
const LOCKOUT_FIRST_MS = Math.min(CONNECT_LOCKOUT_MS, SESSION_LOCKOUT_MS, PULL_LOCKOUT_MS);
/** How long the refusing NIC may keep a refusal on record (the longest forget time of the throttles). */
const REFUSALS_KEPT_MS = Math.max(CONNECT_FORGET_MS, SESSION_FORGET_MS, PULL_FORGET_MS);

/**
 * What a refusal says of the lockouts ctx's endpoint id may carry at the NIC that refused
 * (EndpointContext.lockedUntil): REJECTED is one, for `retryMs` when the answer says; a plain
 * BAD_KEY, BAD_SESSION or BAD_RDMAWIN may have been the last free refusal, which starts one.
 */
export function noteRefusal(ctx: EndpointContext, status: number, retryMs = 0): void {
  if (status === MxStatus.REJECTED)
    ctx.noteLockout(retryMs > 0 ? retryMs : LOCKOUT_UNSAID_MS, REFUSALS_KEPT_MS);
  else if (status === MxStatus.BAD_KEY || status === MxStatus.BAD_SESSION || status === MxStatus.BAD_RDMAWIN)
    ctx.noteLockout(LOCKOUT_FIRST_MS, REFUSALS_KEPT_MS);
}

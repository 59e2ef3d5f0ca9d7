/**
 * Endpoint contexts: the NIC's own state for each endpoint (authoritative: the window is only
 * a mirror of it), their limits, and the control operations that open, close and look them up
 * (Open-MX's driver/linux/omx_endpoints.c). Every engine reaches an endpoint through the
 * EndpointTable; what closing one costs the engines (its wire requests, held deliveries, a
 * pull in progress) is ordered by nic.ts.
 */
import { isInt, type NicControlRequest, type OpenEndpointReply } from "./control.js";
import { EndpointCounter, endpointCounterBase } from "./counters.js";
import { NicError } from "./status.js";
import { randomNonzeroU32, type Tpt } from "./tpt.js";
import {
  ANY_ENDPOINT,
  EndpointState,
  EVENT_WORDS,
  INTR_BYTES,
  RECV_BYTES,
  RECV_OFFSET,
  W_ENDPOINT_ID,
  W_NIC_ID,
  W_NIC_SLEEPING,
  W_SESSION,
  W_STATE,
  WINDOW_BYTES,
} from "./window.js";

export const DEFAULT_MAX_ENDPOINTS = 32;
/** Endpoint ids are context indices; MX endpoint indices stay below 256. */
export const MAX_ENDPOINTS_LIMIT = 256;
/** Events held per endpoint while its event queue is full. */
export const EVENT_BACKLOG = 512;
/**
 * The backlog's line, EVENT_BACKLOG − BACKLOG_RESERVE: held events plus the completions the
 * NIC owes the endpoint (EndpointContext.owed) stay below it. A descriptor is taken only while
 * its completion fits below the line, and an unexpected event (a RECV, a DRIVER event) goes
 * into the backlog only while it does too, so a completion the NIC owes always finds room and
 * is never dropped (Open-MX's rule: the library reserves an event slot for each expected event
 * before it submits the request). The reserve itself is for completions nothing reserved: a
 * BadIndex report.
 */
export const BACKLOG_RESERVE = 8;
/**
 * DRIVER events (myrback's CONNECT and DISCONNECT) held in one endpoint's backlog at most:
 * a co-resident peer that connects and closes in a loop cannot take the unexpected events'
 * whole share of it (a further one is refused EAGAIN; myrback then talks through the NIC).
 */
export const DRIVER_BACKLOG = 64;
/**
 * Deliveries queued per endpoint while its receive area (or event queue) is full. Each has a
 * staging buffer of SEND_MAX bytes, allocated on first use and kept while the endpoint is open
 * (let go when it closes): per endpoint, so that one slow receiver never costs the others their
 * queue. Its senders share it (delivery.ts mayHold): one sending host or domain holds 24 at most.
 */
export const DELIVERY_QUEUE = 32;
const MAX_OWNER_LABEL = 256;

/**
 * What a descriptor's engine returns when the descriptor must wait at the head of its queue
 * (for a link, a window, a slot). Otherwise an engine returns the bytes it moved in this
 * round (≥ 0: the descriptor is consumed), which the poll loop adds up to give the other
 * endpoints their turn (nic.ts serviceSq).
 */
export const STALLED = -1;

// ---- a delivery's metadata --------------------------------------------------------------------
//
// A message on its way into an endpoint's receive area (delivery.ts), as 16 words: the scratch
// a SEND is delivered from, and each delivery held in an endpoint's queue. Written by this NIC
// only: from a SEND descriptor of its own endpoint, or from a SEND frame (frame.ts).

/** The sending NIC. */
export const M_SRC_NIC = 0;
/** The sending endpoint and its session: who hears how the delivery ended. */
export const M_SRC_EP = 1;
export const M_SRC_SESSION = 2;
/** The receiving endpoint and the session the sender named. */
export const M_DEST_EP = 3;
export const M_DEST_SESSION = 4;
/** Carried into the RECV event unchanged. */
export const M_MATCH_HI = 5;
export const M_MATCH_LO = 6;
export const M_AUX0 = 7;
export const M_AUX1 = 8;
/** The sender's descriptor cookie, for its SEND_DONE (or the SEND_ACK). */
export const M_COOKIE = 9;
/** Payload bytes. */
export const M_LENGTH = 10;
/** 1 when the payload came in a frame: its completion goes back as a SEND_ACK frame. */
export const M_VIA_LINK = 11;
/** The sending NIC's window tag (frame.ts F_TAG), echoed in the SEND_ACK. */
export const M_TAG = 12;
/** The message's trace sequence (F_TRACE), 0 when untraced. */
export const M_TRACE = 13;
export const META_WORDS = 16;

/**
 * Closed ids an owner may leave locked out (or with refusals on record) and still open another
 * id by number (EndpointTable.taintedBy).
 */
export const TAINTED_IDS_PER_OWNER = 2;

/**
 * An owner label's 32-bit tag (FNV-1a): the incarnation this NIC keeps an endpoint's refusals
 * under (own-refusals.ts), the same for every endpoint of one owner.
 */
export function ownerTag(owner: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < owner.length; i++) h = Math.imul(h ^ owner.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** One endpoint context: the NIC's own state for it (authoritative; the window is only a mirror). */
export class EndpointContext {
  open = false;
  session = 0;
  key = 0;
  owner = "";
  /** ownerTag(owner): what this NIC keeps the refusals of the id's requests under (own-refusals.ts). */
  ownerTag = 0;
  /**
   * Until when (performance.now() ms) a NIC may be locking this endpoint id out for what it sent
   * (wrong keys, sessions, refused pulls), as the answers it got said, and the owner it had
   * then. This NIC keeps that owner's record per id (own-refusals.ts), so the id goes back to
   * that owner first and reopening sheds nothing (EndpointTable.pickFree).
   */
  lockedUntil = 0;
  lockedOwner = "";
  /**
   * Until when a NIC may still keep a record of refusals of this endpoint id (a throttle's
   * forget time after the last one). A newcomer given the id starts a record of its own there,
   * but the id's record counts every owner (refusal-throttle.ts): such an id goes to a newcomer
   * only when no clean one is free (EndpointTable.pickFree).
   */
  refusedUntil = 0;
  intrBuffer: SharedArrayBuffer | null = null;
  w: Int32Array = new Int32Array(0);
  intr: Int32Array = new Int32Array(0);
  recv: Uint8Array = new Uint8Array(0);
  sqCons = 0;
  eqProd = 0;
  rqProd = 0;
  prodSeen = 0;
  /** Held events: EVENT_BACKLOG events of EVENT_WORDS, allocated on first open. */
  backlog: Int32Array | null = null;
  blHead = 0;
  blCount = 0;
  /** Of the held events, DRIVER events (DRIVER_BACKLOG at most). */
  blDriver = 0;
  /**
   * Completions the NIC owes this endpoint: descriptors taken whose completion event
   * (SEND_DONE, PULL_DONE, CONNECT_DONE, ERROR) is not posted yet. Reserved as a descriptor
   * is taken, released as its completion is posted (events.ts), zero again when the
   * endpoint closes; blCount + owed stays below the backlog's line (BACKLOG_RESERVE).
   */
  owed = 0;
  /** Queued deliveries, a ring: metadata and staged payload per entry. */
  readonly dqMeta = new Int32Array(DELIVERY_QUEUE * META_WORDS);
  readonly dqBuf: (Uint8Array | null)[] = new Array<Uint8Array | null>(DELIVERY_QUEUE).fill(null);
  /** When each queued delivery started waiting (HOLD_MS bounds it). */
  readonly dqSince = new Float64Array(DELIVERY_QUEUE);
  /** Whose each queued delivery is (delivery.ts senderKey): what the held places are shared by. */
  readonly dqKey = new Float64Array(DELIVERY_QUEUE);
  /** The address block each queued delivery came from (delivery.ts senderBlock; 0: none). */
  readonly dqBlock = new Float64Array(DELIVERY_QUEUE);
  dqHead = 0;
  dqCount = 0;
  // The local PULL the DMA engine copies a chunk per round (dma.ts), while `pulling`.
  pulling = false;
  pullSrcId = 0;
  pullDstId = 0;
  pullSrcOff = 0;
  pullDstOff = 0;
  pullLeft = 0;
  pullLen = 0;
  pullCookie = 0;
  /** Trace-clock time the NIC took a traced PULL (0: untraced). */
  pullSeenAt = 0;
  /** The pull right the chunked pull copies under (its owner's endpoint and session), or -1. */
  pullXp = -1;
  pullXpEp = 0;
  pullXpSession = 0;
  /** A SEND waits for its link to take frames again. */
  linkStalled = false;
  /** Since when the head descriptor has waited on the link to stallNic (0: it does not). */
  stallSince = 0;
  stallNic = 0;
  /** Its latest wait was for the link to take frames (back-pressure, a full control queue). */
  stallPushback = false;
  needRaise = false;
  /** Among the events of this round's interrupt, one that is news (anything but a pull done well). */
  raiseUrgent = false;
  waiterPending = false;
  waiterGen = 0;
  /** The first slot of this endpoint's counters. */
  readonly base: number;

  constructor(readonly id: number) {
    this.base = endpointCounterBase(id);
  }

  /**
   * An answer said (or may have meant) that some NIC locks this endpoint out for `ms` from now,
   * and keeps the refusals behind it for `rememberMs`.
   */
  noteLockout(ms: number, rememberMs: number): void {
    const now = performance.now();
    if (now + ms > this.lockedUntil) this.lockedUntil = now + ms;
    if (now + rememberMs > this.refusedUntil) this.refusedUntil = now + rememberMs;
    this.lockedOwner = this.owner;
  }
}

/** Every endpoint context of the NIC, and the compact list of the open ones. */
export class EndpointTable {
  readonly ctxs: EndpointContext[] = [];
  /** Ids of open endpoints, compact, for the poll loop. */
  readonly openIds: Int32Array;
  openCount = 0;
  private readonly rnd = new Uint32Array(1);

  constructor(
    readonly nicId: number,
    readonly maxEndpoints: number,
    private readonly tpt: Tpt,
    private readonly c: Float64Array,
  ) {
    for (let i = 0; i < maxEndpoints; i++) this.ctxs.push(new EndpointContext(i));
    this.openIds = new Int32Array(maxEndpoints);
  }

  /** A control request's endpoint id, checked. */
  checkId(v: unknown, op: string): number {
    if (!isInt(v) || v < 0 || v >= this.maxEndpoints)
      throw new NicError(
        "EINVAL",
        `${op}: endpointId must be an integer in 0..${this.maxEndpoints - 1}, got ${String(v)}`,
      );
    return v;
  }

  /** A control request's endpoint, which must be open. */
  openCtx(v: unknown, op: string): EndpointContext {
    const ctx = this.ctxs[this.checkId(v, op)];
    if (!ctx.open) throw new NicError("ENOENT", `${op}: endpoint ${String(v)} is not open`);
    return ctx;
  }

  /** Ids of the open endpoints, ascending. */
  openList(): number[] {
    const ids: number[] = [];
    for (const ctx of this.ctxs) if (ctx.open) ids.push(ctx.id);
    return ids;
  }

  open(r: Extract<NicControlRequest, { op: "open_endpoint" }>): OpenEndpointReply {
    if (typeof r.owner !== "string" || r.owner.length > MAX_OWNER_LABEL)
      throw new NicError(
        "EINVAL",
        `open_endpoint: owner must be a string of at most ${MAX_OWNER_LABEL} characters`,
      );
    if (!isInt(r.key) || r.key < 0 || r.key > 0xffffffff)
      throw new NicError("EINVAL", `open_endpoint: key must be a u32, got ${String(r.key)}`);
    if (r.group !== undefined && (!isInt(r.group) || r.group < 0 || r.group > 0xffffffff))
      throw new NicError("EINVAL", `open_endpoint: group must be a u32 or absent, got ${String(r.group)}`);
    let ctx: EndpointContext | undefined;
    if (r.endpointId === ANY_ENDPOINT) {
      ctx = this.pickFree(r.owner);
      if (!ctx)
        throw new NicError(
          "ENOSPC",
          `open_endpoint: all ${this.maxEndpoints} endpoint contexts are in use; close one first`,
        );
    } else {
      if (!isInt(r.endpointId) || r.endpointId < 0 || r.endpointId >= this.maxEndpoints)
        throw new NicError(
          "EINVAL",
          `open_endpoint: endpointId must be an integer in 0..${this.maxEndpoints - 1} or ANY_ENDPOINT, got ${String(r.endpointId)}`,
        );
      ctx = this.ctxs[r.endpointId];
      if (ctx.open)
        throw new NicError(
          "EBUSY",
          // Not by whom: the asker may be another tenant's guest (the host's inspection names owners).
          `open_endpoint: endpoint ${r.endpointId} is already open`,
        );
      // Its own locked ids it may always open again (they are what it is told to open).
      const own = this.taintedBy(r.owner);
      if (own.length >= TAINTED_IDS_PER_OWNER && !own.includes(ctx.id))
        throw new NicError(
          "EBUSY",
          `open_endpoint: ${r.owner} left endpoint ids ${own.join(", ")} locked out for wrong keys, sessions or pulls; ` +
            "open one of those (or ANY_ENDPOINT) until their lockouts end",
        );
    }
    if (
      (r.window !== undefined &&
        !(r.window instanceof SharedArrayBuffer && r.window.byteLength === WINDOW_BYTES)) ||
      (r.intr !== undefined && !(r.intr instanceof SharedArrayBuffer && r.intr.byteLength === INTR_BYTES))
    )
      throw new NicError(
        "EINVAL",
        `open_endpoint: window and intr must be SharedArrayBuffers of ${WINDOW_BYTES} and ${INTR_BYTES} bytes`,
      );
    const window = r.window ?? new SharedArrayBuffer(WINDOW_BYTES);
    const intrBuffer = r.intr ?? new SharedArrayBuffer(INTR_BYTES);
    // Reused memory starts as clean as fresh memory.
    if (r.window) new Uint8Array(window).fill(0);
    if (r.intr) new Uint8Array(intrBuffer).fill(0);
    let session: number;
    do session = randomNonzeroU32(this.rnd);
    while (session === ctx.session);
    ctx.session = session;
    ctx.key = r.key;
    ctx.owner = r.owner;
    ctx.ownerTag = ownerTag(r.owner);
    ctx.intrBuffer = intrBuffer;
    ctx.w = new Int32Array(window);
    ctx.intr = new Int32Array(intrBuffer);
    ctx.recv = new Uint8Array(window, RECV_OFFSET, RECV_BYTES);
    ctx.sqCons = ctx.eqProd = ctx.rqProd = ctx.prodSeen = 0;
    ctx.backlog ??= new Int32Array(EVENT_BACKLOG * EVENT_WORDS);
    ctx.blHead = ctx.blCount = ctx.blDriver = ctx.owed = ctx.dqHead = ctx.dqCount = 0;
    this.c[ctx.base + EndpointCounter.completions_owed] = 0;
    ctx.pulling = ctx.linkStalled = ctx.needRaise = ctx.raiseUrgent = ctx.waiterPending = false;
    ctx.w[W_ENDPOINT_ID] = ctx.id;
    ctx.w[W_NIC_ID] = this.nicId;
    ctx.w[W_SESSION] = session | 0;
    Atomics.store(ctx.w, W_STATE, EndpointState.Open);
    ctx.open = true;
    this.openIds[this.openCount++] = ctx.id;
    this.c[ctx.base + EndpointCounter.opens]++;
    return { endpointId: ctx.id, session, window, intr: intrBuffer };
  }

  /**
   * The closed ids that `owner` left with a lockout or a refusal record.
   * An owner that left TAINTED_IDS_PER_OWNER of them opens no other id by number: this NIC
   * keeps an owner's refusals per id (own-refusals.ts), so every fresh id would be a fresh
   * allowance for a guesser holding one endpoint at a time; and a refusing NIC's record of an
   * id counts all its owners (refusal-throttle.ts), which guesses from every free id in turn
   * would fill until a later job's first connect were refused.
   */
  private taintedBy(owner: string): number[] {
    const now = performance.now();
    const ids: number[] = [];
    for (const c of this.ctxs)
      if (!c.open && c.lockedOwner === owner && (c.lockedUntil > now || c.refusedUntil > now)) ids.push(c.id);
    return ids;
  }

  /**
   * A free context for an open that names no id. An id that a NIC may still lock out for what
   * its last owner sent goes back to that owner first: this NIC keeps the owner's record per id
   * (own-refusals.ts), so a guest that got itself locked out cannot shed it by reopening.
   * Another owner gets such an id only when no other is free (then the one whose lockout ends
   * first): it starts clean where it asks, but for the id's own record there, which counts
   * every owner (refusal-throttle.ts). Otherwise the lowest free id, as before.
   */
  private pickFree(owner: string): EndpointContext | undefined {
    const now = performance.now();
    let clean: EndpointContext | undefined;
    let refused: EndpointContext | undefined;
    let locked: EndpointContext | undefined;
    for (const c of this.ctxs) {
      if (c.open) continue;
      if (c.lockedUntil > now) {
        if (c.lockedOwner === owner) return c;
        if (locked === undefined || c.lockedUntil < locked.lockedUntil) locked = c;
      } else if (c.refusedUntil > now) {
        // Refused not long ago: a guesser that reopens gets its own record back; a newcomer
        // gets such an id only when no clean one is left (the oldest record first).
        if (c.lockedOwner === owner) return c;
        if (refused === undefined || c.refusedUntil < refused.refusedUntil) refused = c;
      } else clean ??= c;
    }
    return clean ?? refused ?? locked;
  }

  /**
   * The first step of closing ctx: it stops being served, its window says Closed and its
   * regions go. What waited on it is ended by the engines next (nic.ts closeEndpoint).
   */
  markClosed(ctx: EndpointContext): void {
    ctx.open = false;
    for (let i = 0; i < this.openCount; i++) {
      if (this.openIds[i] === ctx.id) {
        this.openIds[i] = this.openIds[--this.openCount];
        break;
      }
    }
    Atomics.store(ctx.w, W_STATE, EndpointState.Closed);
    Atomics.store(ctx.w, W_NIC_SLEEPING, 0);
    this.tpt.dropOwner(ctx.id);
  }
}

/**
 * The emulated NIC engine (the MX firmware of a Myri-10G): endpoint contexts and their
 * windows, the TPT, the DMA (PULL) engine, SEND delivery into receive areas, event queues
 * with a bounded backlog, interrupts, links to other NICs, and the idle/sleep loop.
 *
 * It runs in the NIC worker (nic-worker.ts) but has no worker dependency, so unit tests may
 * drive it in-thread with control() and poll().
 *
 * Trust: every word an owner writes into its window (descriptors, producer and consumer
 * indices, even the control words the NIC itself wrote) and every frame from a link is
 * hostile. The NIC keeps its own copy of each index and each endpoint's state and session,
 * copies a descriptor out of the queue before validating it, and reaches memory only through
 * the TPT. Garbage gets an ERROR event and a counter.
 *
 * Events the NIC writes (word offsets from window.ts):
 *   PULL_DONE  cookie, length; status SUCCESS or ABORTED (a region went away mid-pull); for a
 *              descriptor with DFLAG_TRACE, the NIC's stamps at E_TRACE_NIC_SEEN / E_TRACE_DMA_DONE
 *   SEND_DONE  cookie, length; status SUCCESS once the payload is placed, else ENDPOINT_UNKNOWN,
 *              ENDPOINT_CLOSED, BAD_SESSION, ENDPOINT_UNREACHABLE or NO_RESOURCES (E_REASON says more)
 *   RECV       source nic/endpoint/session, match words, aux words, length, E_RECV_OFFSET, E_RECV_SPAN
 *   ERROR      cookie, length, E_REASON, word 13 = the descriptor's opcode word; for BadIndex
 *              word 13 = the producer index seen, word 14 = the NIC's consumer index
 *   DRIVER     cookie, words at E_EXTRA..
 *
 * Idle: after work the NIC polls its endpoints for POLL_BUDGET_MS, then sets W_NIC_SLEEPING in
 * every open window, re-checks every doorbell, and waits in its event loop (one
 * Atomics.waitAsync per window on W_SQ_PROD). A doorbell with notify, a control request or a
 * link frame wakes it. Owners do not notify when they only consume events or release receive
 * space, so while completions or deliveries wait for such space a backstop timer (1 → 8 ms)
 * re-checks; an owner that wants them sooner notifies W_SQ_PROD after releasing space while
 * W_NIC_SLEEPING is 1 (notify wakes the NIC whatever the word's value).
 *
 * Allocation: the per-descriptor path uses preallocated scratch arrays and numbers only; the
 * one object it creates is the typed-array view `Uint8Array.prototype.set` needs per copied
 * run (copies up to 64 bytes are done by a loop instead), and a SEND over a link creates
 * the view of its frame.
 */
import type { MessagePort } from "node:worker_threads";
import { traceNow } from "../mx/trace.js";
import { serveSyncCalls } from "../xen/sync-call.js";
import type {
  LookupReply,
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  RegisterRegionReply,
} from "./control.js";
import { allocNicCounters, E, ERROR_REASON_SLOT, epBase, G } from "./counters.js";
import {
  checkFrame,
  F_AUX0,
  F_AUX1,
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_NIC,
  F_DEST_SESSION,
  F_LENGTH,
  F_MATCH_HI,
  F_MATCH_LO,
  F_SRC_ENDPOINT,
  F_SRC_NIC,
  F_SRC_SESSION,
  F_STATUS,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  getWord,
  initFrame,
  type Link,
  setWord,
} from "./link.js";
import { MxStatus, NicError } from "./status.js";
import { copyBytes, DEFAULT_MAX_REGIONS, randomNonzeroU32, Tpt } from "./tpt.js";
import {
  Access,
  ANY_ENDPOINT,
  D_AUX0,
  D_AUX1,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_MATCH_HI,
  D_MATCH_LO,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DESC_WORDS,
  DFLAG_TRACE,
  E_AUX0,
  E_AUX1,
  E_COOKIE,
  E_EXTRA,
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
  E_TYPE,
  EndpointState,
  EQ_ENTRIES,
  EQ_OFFSET,
  ErrorReason,
  EVENT_WORDS,
  EventType,
  INTR_BYTES,
  Opcode,
  RECV_ALIGN,
  RECV_BYTES,
  RECV_OFFSET,
  raiseInterrupt,
  SEND_MAX,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_ENDPOINT_ID,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_ID,
  W_NIC_SLEEPING,
  W_RQ_CONS,
  W_RQ_PROD,
  W_SESSION,
  W_SQ_CONS,
  W_SQ_PROD,
  W_STATE,
  WINDOW_BYTES,
} from "./window.js";

export const DEFAULT_MAX_ENDPOINTS = 32;
/** Endpoint ids are context indices; MX endpoint indices stay below 256 (B7). */
export const MAX_ENDPOINTS_LIMIT = 256;
/** Descriptors taken from one endpoint per round, so that one busy owner cannot starve the others. */
export const SQ_BATCH = 64;
/** A PULL longer than this is copied a chunk per round (other endpoints are served in between). */
export const PULL_CHUNK = 1 << 20;
/** Completions held per endpoint while its event queue is full. */
export const EVENT_BACKLOG = 512;
/** An endpoint's descriptors wait while fewer backlog entries than this are free (they would complete into it). */
const BACKLOG_RESERVE = 8;
/**
 * Deliveries queued per endpoint while its receive area (or event queue) is full. Each has a
 * staging buffer of SEND_MAX bytes, allocated on first use and kept: per endpoint, so that
 * one slow receiver never costs the others their queue.
 */
export const DELIVERY_QUEUE = 32;
/** Acknowledgements held while a link pushes back. */
const ACK_QUEUE = 1024;
/** Keep polling this long after the last work before sleeping (machine-limits.md: ~20-50 µs). */
export const POLL_BUDGET_MS = 0.04;
/** Longest run of the poll loop before it yields to the event loop (control requests, link frames). */
const SLICE_MS = 2;
const BACKSTOP_MIN_MS = 1;
const BACKSTOP_MAX_MS = 8;
const MAX_OWNER_LABEL = 256;

const SQ_W = SQ_OFFSET / 4;
const EQ_W = EQ_OFFSET / 4;

/** MX status of an ERROR event by ErrorReason. */
const REASON_STATUS: readonly number[] = [
  MxStatus.ABORTED,
  MxStatus.ABORTED, // UnknownOpcode
  MxStatus.BAD_RDMAWIN, // BadRegion
  MxStatus.BAD_KEY, // BadKey
  MxStatus.BAD_RDMAWIN, // OutOfBounds
  MxStatus.BAD_RDMAWIN, // Permission
  MxStatus.ABORTED, // BadLength
  MxStatus.ENDPOINT_UNKNOWN, // UnknownEndpoint
  MxStatus.BAD_SESSION, // BadSession
  MxStatus.ABORTED, // BadIndex
  MxStatus.NO_RESOURCES, // NoResources
  MxStatus.ENDPOINT_UNREACHABLE, // Unreachable
];

/** The ErrorReason a failed delivery's SEND_DONE carries in E_REASON, by MX status. */
function reasonOfStatus(status: number): number {
  switch (status) {
    case MxStatus.ENDPOINT_UNKNOWN:
    case MxStatus.ENDPOINT_CLOSED:
      return ErrorReason.UnknownEndpoint;
    case MxStatus.BAD_SESSION:
      return ErrorReason.BadSession;
    case MxStatus.ENDPOINT_UNREACHABLE:
      return ErrorReason.Unreachable;
    case MxStatus.NO_RESOURCES:
      return ErrorReason.NoResources;
    default:
      return 0;
  }
}

// Delivery metadata (this.dv and each queued delivery): 16 words.
const M_SRC_NIC = 0;
const M_SRC_EP = 1;
const M_SRC_SESSION = 2;
const M_DEST_EP = 3;
const M_DEST_SESSION = 4;
const M_MATCH_HI = 5;
const M_MATCH_LO = 6;
const M_AUX0 = 7;
const M_AUX1 = 8;
const M_COOKIE = 9;
const M_LENGTH = 10;
/** 1 when the payload came in a frame: its completion goes back as a SEND_ACK frame. */
const M_VIA_LINK = 11;
const M_STATUS = 12;
const META_WORDS = 16;

const CONSUMED = 0;
const STALLED = 1;

export interface NicOptions {
  nicId: number;
  maxEndpoints?: number;
  maxRegions?: number;
  /** The counters' shared memory (allocNicCounters(maxEndpoints)); allocated if absent. */
  counters?: SharedArrayBuffer;
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

/** Whether v fits a 32-bit word (as u32 or i32). */
function isWord(v: unknown): v is number {
  return isInt(v) && v >= -0x80000000 && v <= 0xffffffff;
}

/** Validates NIC options (host side before spawning, and the engine again). Throws NicError. */
export function checkNicOptions(o: unknown): Required<Omit<NicOptions, "counters">> {
  const opts = o as Partial<NicOptions> | null;
  if (typeof opts !== "object" || opts === null)
    throw new NicError("EINVAL", "NIC options must be an object");
  const { nicId, maxEndpoints = DEFAULT_MAX_ENDPOINTS, maxRegions = DEFAULT_MAX_REGIONS } = opts;
  // 0xffffffff is MX_ANY_NIC.
  if (!isInt(nicId) || nicId < 0 || nicId > 0xfffffffe)
    throw new NicError("EINVAL", `nicId must be an integer in 0..4294967294, got ${String(nicId)}`);
  if (!isInt(maxEndpoints) || maxEndpoints < 1 || maxEndpoints > MAX_ENDPOINTS_LIMIT)
    throw new NicError(
      "EINVAL",
      `maxEndpoints must be an integer in 1..${MAX_ENDPOINTS_LIMIT}, got ${String(maxEndpoints)}`,
    );
  if (!isInt(maxRegions) || maxRegions < 1 || maxRegions > 65536)
    throw new NicError("EINVAL", `maxRegions must be an integer in 1..65536, got ${String(maxRegions)}`);
  return { nicId, maxEndpoints, maxRegions };
}

/** One endpoint context: the NIC's own state for it (authoritative; the window is only a mirror). */
class EndpointContext {
  open = false;
  session = 0;
  key = 0;
  owner = "";
  intrBuffer: SharedArrayBuffer | null = null;
  w: Int32Array = new Int32Array(0);
  intr: Int32Array = new Int32Array(0);
  recv: Uint8Array = new Uint8Array(0);
  sqCons = 0;
  eqProd = 0;
  rqProd = 0;
  prodSeen = 0;
  /** Held completions: EVENT_BACKLOG events of EVENT_WORDS, allocated on first open. */
  backlog: Int32Array | null = null;
  blHead = 0;
  blCount = 0;
  /** Queued deliveries, a ring: metadata and staged payload per entry. */
  readonly dqMeta = new Int32Array(DELIVERY_QUEUE * META_WORDS);
  readonly dqBuf: (Uint8Array | null)[] = new Array<Uint8Array | null>(DELIVERY_QUEUE).fill(null);
  dqHead = 0;
  dqCount = 0;
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
  /** A SEND waits for its link to take frames again. */
  linkStalled = false;
  needRaise = false;
  waiterPending = false;
  waiterGen = 0;
  readonly base: number;

  constructor(readonly id: number) {
    this.base = epBase(id);
  }
}

export class Nic {
  readonly nicId: number;
  readonly maxEndpoints: number;
  readonly tpt: Tpt;
  readonly countersBuffer: SharedArrayBuffer;
  private readonly c: Float64Array;
  private readonly ctxs: EndpointContext[] = [];
  /** Ids of open endpoints, compact, for the poll loop. */
  private readonly openIds: Int32Array;
  private openCount = 0;
  private readonly raiseIds: Int32Array;
  private raiseCount = 0;
  private readonly links = new Map<number, Link>();

  // Scratch: the descriptor being executed, the event being written, the delivery in hand.
  private readonly d = new Int32Array(DESC_WORDS);
  private readonly ev = new Int32Array(EVENT_WORDS);
  private readonly evF64 = new Float64Array(this.ev.buffer);
  private readonly dv = new Int32Array(META_WORDS);
  private readonly txFrame = new Uint8Array(FRAME_MAX);
  private readonly ackFrame = new Uint8Array(FRAME_HEADER_BYTES);

  private readonly ackQueue = new Int32Array(ACK_QUEUE * META_WORDS);
  private ackHead = 0;
  private ackCount = 0;

  private readonly rnd = new Uint32Array(1);
  /** Bytes one endpoint's descriptors moved in this round: past PULL_CHUNK the others get their turn. */
  private roundBytes = 0;
  private scheduled = false;
  private asleep = false;
  /** Between start() and stop(): the loop runs by itself. Without start() a test drives poll(). */
  private running = false;
  private backstop: ReturnType<typeof setTimeout> | null = null;
  private backoffMs = BACKSTOP_MIN_MS;

  constructor(options: NicOptions) {
    const { nicId, maxEndpoints, maxRegions } = checkNicOptions(options);
    this.nicId = nicId;
    this.maxEndpoints = maxEndpoints;
    this.tpt = new Tpt(maxRegions);
    this.countersBuffer = options.counters ?? allocNicCounters(maxEndpoints);
    this.c = new Float64Array(this.countersBuffer);
    if (this.c.length < epBase(maxEndpoints))
      throw new NicError("EINVAL", `the counters buffer is too small for ${maxEndpoints} endpoints`);
    for (let i = 0; i < maxEndpoints; i++) this.ctxs.push(new EndpointContext(i));
    this.openIds = new Int32Array(maxEndpoints);
    this.raiseIds = new Int32Array(maxEndpoints);
  }

  // ---- the control interface (control.ts) ------------------------------------------------

  /** Serves a driver's control channel (see control.ts) until the port closes. */
  serveDriver(port: MessagePort, replyWord: SharedArrayBuffer): void {
    serveSyncCalls(port, replyWord, (req) => this.control(req));
  }

  /** Executes one control request; throws NicError for a bad one. */
  control(req: unknown): unknown {
    this.c[G.control_requests]++;
    try {
      return this.dispatch(req);
    } catch (e) {
      this.c[G.control_errors]++;
      throw e;
    } finally {
      this.flushRaises();
      // A request may have opened an endpoint or freed space: let the loop look.
      this.kick();
    }
  }

  private dispatch(req: unknown): unknown {
    if (typeof req !== "object" || req === null || typeof (req as { op?: unknown }).op !== "string")
      throw new NicError("EINVAL", "a control request must be an object with a string `op`");
    const r = req as NicControlRequest;
    switch (r.op) {
      case "open_endpoint":
        return this.openEndpoint(r);
      case "close_endpoint":
        this.closeEndpoint(this.openCtx(r.endpointId, "close_endpoint"));
        return null;
      case "register_region":
        return this.registerRegion(r);
      case "deregister_region":
        this.tpt.deregister(this.openCtx(r.endpointId, "deregister_region").id, r.regionId);
        return null;
      case "lookup_endpoint":
        return this.lookupEndpoint(r);
      case "deliver_event":
        this.deliverEvent(r);
        return null;
      case "info":
        return this.info();
      default:
        throw new NicError(
          "EINVAL",
          `unknown control op ${JSON.stringify((r as { op: string }).op)}: expected open_endpoint, close_endpoint, register_region, deregister_region, lookup_endpoint, deliver_event or info`,
        );
    }
  }

  private checkEndpointId(v: unknown, op: string): number {
    if (!isInt(v) || v < 0 || v >= this.maxEndpoints)
      throw new NicError(
        "EINVAL",
        `${op}: endpointId must be an integer in 0..${this.maxEndpoints - 1}, got ${String(v)}`,
      );
    return v;
  }

  private openCtx(v: unknown, op: string): EndpointContext {
    const ctx = this.ctxs[this.checkEndpointId(v, op)];
    if (!ctx.open) throw new NicError("ENOENT", `${op}: endpoint ${String(v)} is not open`);
    return ctx;
  }

  private openEndpoint(r: Extract<NicControlRequest, { op: "open_endpoint" }>): OpenEndpointReply {
    if (typeof r.owner !== "string" || r.owner.length > MAX_OWNER_LABEL)
      throw new NicError(
        "EINVAL",
        `open_endpoint: owner must be a string of at most ${MAX_OWNER_LABEL} characters`,
      );
    if (!isInt(r.key) || r.key < 0 || r.key > 0xffffffff)
      throw new NicError("EINVAL", `open_endpoint: key must be a u32, got ${String(r.key)}`);
    let ctx: EndpointContext | undefined;
    if (r.endpointId === ANY_ENDPOINT) {
      ctx = this.ctxs.find((c) => !c.open);
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
          `open_endpoint: endpoint ${r.endpointId} is already open (by ${JSON.stringify(ctx.owner)})`,
        );
    }
    const window = new SharedArrayBuffer(WINDOW_BYTES);
    const intrBuffer = new SharedArrayBuffer(INTR_BYTES);
    let session: number;
    do session = randomNonzeroU32(this.rnd);
    while (session === ctx.session);
    ctx.session = session;
    ctx.key = r.key;
    ctx.owner = r.owner;
    ctx.intrBuffer = intrBuffer;
    ctx.w = new Int32Array(window);
    ctx.intr = new Int32Array(intrBuffer);
    ctx.recv = new Uint8Array(window, RECV_OFFSET, RECV_BYTES);
    ctx.sqCons = ctx.eqProd = ctx.rqProd = ctx.prodSeen = 0;
    ctx.backlog ??= new Int32Array(EVENT_BACKLOG * EVENT_WORDS);
    ctx.blHead = ctx.blCount = ctx.dqHead = ctx.dqCount = 0;
    ctx.pulling = ctx.linkStalled = ctx.needRaise = ctx.waiterPending = false;
    ctx.w[W_ENDPOINT_ID] = ctx.id;
    ctx.w[W_NIC_ID] = this.nicId;
    ctx.w[W_SESSION] = session | 0;
    Atomics.store(ctx.w, W_STATE, EndpointState.Open);
    ctx.open = true;
    this.openIds[this.openCount++] = ctx.id;
    this.c[ctx.base + E.opens]++;
    return { endpointId: ctx.id, session, window, intr: intrBuffer };
  }

  private closeEndpoint(ctx: EndpointContext): void {
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
    // Payloads queued for it will never be placed: their senders learn it now.
    while (ctx.dqCount > 0) {
      this.loadQueued(ctx, ctx.dqHead);
      ctx.dqHead = (ctx.dqHead + 1) % DELIVERY_QUEUE;
      ctx.dqCount--;
      this.completeSend(MxStatus.ENDPOINT_CLOSED);
    }
    ctx.pulling = ctx.linkStalled = false;
    ctx.blCount = 0;
    // Release our own waiter on the dead window, and wake an owner blocked on it: it reads Closed.
    Atomics.notify(ctx.w, W_SQ_PROD);
    this.raise(ctx);
  }

  private registerRegion(r: Extract<NicControlRequest, { op: "register_region" }>): RegisterRegionReply {
    const ctx = this.openCtx(r.endpointId, "register_region");
    return this.tpt.register(ctx.id, r.memory, r.runs, r.access);
  }

  private lookupEndpoint(r: Extract<NicControlRequest, { op: "lookup_endpoint" }>): LookupReply {
    const id = this.checkEndpointId(r.endpointId, "lookup_endpoint");
    if (!isInt(r.key) || r.key < 0 || r.key > 0xffffffff)
      throw new NicError("EINVAL", `lookup_endpoint: key must be a u32, got ${String(r.key)}`);
    const ctx = this.ctxs[id];
    if (!ctx.open) return { status: "unknown" };
    if (ctx.key !== r.key) return { status: "bad_key" };
    return { status: "ok", session: ctx.session, intr: ctx.intrBuffer!, owner: ctx.owner };
  }

  private deliverEvent(r: Extract<NicControlRequest, { op: "deliver_event" }>): void {
    const ctx = this.openCtx(r.endpointId, "deliver_event");
    if (!isWord(r.cookie)) throw new NicError("EINVAL", `deliver_event: cookie must be a 32-bit integer`);
    const words = r.words;
    if (!Array.isArray(words) || words.length > EVENT_WORDS - E_EXTRA || !words.every(isWord))
      throw new NicError(
        "EINVAL",
        `deliver_event: words must be an array of at most ${EVENT_WORDS - E_EXTRA} 32-bit integers`,
      );
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.Driver;
    ev[E_COOKIE] = r.cookie;
    for (let i = 0; i < words.length; i++) ev[E_EXTRA + i] = words[i];
    if (!this.postEvent(ctx))
      throw new NicError(
        "EAGAIN",
        `deliver_event: endpoint ${ctx.id}'s event queue and backlog are full; its owner is not consuming events`,
      );
  }

  info(): NicInfo {
    const openEndpoints: number[] = [];
    for (const ctx of this.ctxs) if (ctx.open) openEndpoints.push(ctx.id);
    return {
      nicId: this.nicId,
      maxEndpoints: this.maxEndpoints,
      openEndpoints,
      regions: this.tpt.count,
      links: [...this.links.keys()].sort((a, b) => a - b),
    };
  }

  // ---- links -------------------------------------------------------------------------------

  /**
   * Attaches a link to `link.peerNic`. A link whose peer is this NIC itself (loopback) takes
   * over this NIC's own SENDs, which otherwise are placed directly without frames.
   */
  attachLink(link: Link): void {
    if (this.links.has(link.peerNic))
      throw new NicError("EBUSY", `a link to NIC ${link.peerNic} is already attached; detach it first`);
    this.links.set(link.peerNic, link);
    link.onFrame((frame) => this.onFrame(link, frame));
    link.onWritable?.(() => this.kick());
    this.kick();
  }

  detachLink(peerNic: number): void {
    const link = this.links.get(peerNic);
    if (!link) throw new NicError("ENOENT", `no link to NIC ${peerNic} is attached`);
    this.links.delete(peerNic);
    link.close();
    this.kick();
  }

  private onFrame(link: Link, frame: Uint8Array): void {
    this.c[G.frames_rx]++;
    try {
      const type = checkFrame(frame);
      if (
        type < 0 ||
        getWord(frame, F_DEST_NIC) !== this.nicId ||
        getWord(frame, F_SRC_NIC) !== link.peerNic
      ) {
        this.c[G.frames_bad]++;
      } else if (type === FrameType.Send) {
        const m = this.dv;
        m[M_SRC_NIC] = getWord(frame, F_SRC_NIC);
        m[M_SRC_EP] = getWord(frame, F_SRC_ENDPOINT);
        m[M_SRC_SESSION] = getWord(frame, F_SRC_SESSION);
        m[M_DEST_EP] = getWord(frame, F_DEST_ENDPOINT);
        m[M_DEST_SESSION] = getWord(frame, F_DEST_SESSION);
        m[M_MATCH_HI] = getWord(frame, F_MATCH_HI);
        m[M_MATCH_LO] = getWord(frame, F_MATCH_LO);
        m[M_AUX0] = getWord(frame, F_AUX0);
        m[M_AUX1] = getWord(frame, F_AUX1);
        m[M_COOKIE] = getWord(frame, F_COOKIE);
        m[M_LENGTH] = getWord(frame, F_LENGTH);
        m[M_VIA_LINK] = 1;
        const status = this.deliver(-1, 0, frame, FRAME_HEADER_BYTES);
        if (status !== MxStatus.PENDING) this.completeSend(status);
      } else if (type === FrameType.SendAck) {
        const ep = getWord(frame, F_DEST_ENDPOINT);
        const ctx = ep < this.maxEndpoints ? this.ctxs[ep] : null;
        if (ctx?.open && ctx.session === getWord(frame, F_DEST_SESSION)) {
          this.sendDone(
            ctx,
            getWord(frame, F_COOKIE),
            getWord(frame, F_AUX0),
            getWord(frame, F_STATUS) & 0xffff,
          );
        } else {
          this.c[G.acks_dropped]++;
        }
      } else {
        this.c[G.frames_bad]++;
      }
    } catch {
      this.c[G.internal_errors]++;
    }
    this.flushRaises();
    this.kick();
  }

  // ---- the run loop ------------------------------------------------------------------------

  /** Starts serving (the worker calls it once). */
  start(): void {
    this.running = true;
    this.kick();
  }

  stop(): void {
    this.running = false;
    if (this.backstop) clearTimeout(this.backstop);
    this.backstop = null;
    for (const link of this.links.values()) link.close();
    this.links.clear();
    for (const ctx of this.ctxs) if (ctx.open) Atomics.notify(ctx.w, W_SQ_PROD);
  }

  /** Something may need doing: wake the NIC if it sleeps and make sure the loop runs. */
  readonly kick = (): void => {
    if (!this.running) return;
    if (this.asleep) this.wake(false);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.runSlice);
    }
  };

  private wake(byTimer: boolean): void {
    this.asleep = false;
    this.c[G.wakeups]++;
    if (byTimer) this.c[G.timer_wakeups]++;
    if (this.backstop) {
      clearTimeout(this.backstop);
      this.backstop = null;
    }
    for (let i = 0; i < this.openCount; i++) Atomics.store(this.ctxs[this.openIds[i]].w, W_NIC_SLEEPING, 0);
  }

  private readonly runSlice = (): void => {
    this.scheduled = false;
    if (!this.running) return;
    const start = performance.now();
    let idleSince = -1;
    for (;;) {
      const did = this.poll();
      const now = performance.now();
      if (did) {
        idleSince = -1;
        this.backoffMs = BACKSTOP_MIN_MS;
      } else if (idleSince < 0) {
        idleSince = now;
      } else if (now - idleSince >= POLL_BUDGET_MS) {
        break;
      }
      if (now - start >= SLICE_MS) {
        // Busy: let control requests and link frames in, then carry on.
        this.scheduled = true;
        setImmediate(this.runSlice);
        return;
      }
    }
    this.sleep();
  };

  private sleep(): void {
    for (let i = 0; i < this.openCount; i++) Atomics.store(this.ctxs[this.openIds[i]].w, W_NIC_SLEEPING, 1);
    // An owner that rang before it could see the flag did not notify: look once more.
    if (this.poll()) {
      for (let i = 0; i < this.openCount; i++) Atomics.store(this.ctxs[this.openIds[i]].w, W_NIC_SLEEPING, 0);
      this.scheduled = true;
      setImmediate(this.runSlice);
      return;
    }
    this.asleep = true;
    this.c[G.sleeps]++;
    let changed = false;
    for (let i = 0; i < this.openCount; i++) {
      const ctx = this.ctxs[this.openIds[i]];
      // A waiter armed in an earlier sleep and never notified still stands: notify wakes it.
      if (ctx.waiterPending) continue;
      const r = Atomics.waitAsync(ctx.w, W_SQ_PROD, ctx.prodSeen | 0);
      if (!r.async) {
        changed = true;
        continue;
      }
      ctx.waiterPending = true;
      const gen = ++ctx.waiterGen;
      r.value.then(() => {
        if (ctx.waiterGen === gen) ctx.waiterPending = false;
        this.kick();
      });
    }
    if (changed) {
      this.kick();
      return;
    }
    if (this.hasDeferredWork()) {
      this.backstop = setTimeout(this.onBackstop, this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, BACKSTOP_MAX_MS);
    }
  }

  private readonly onBackstop = (): void => {
    this.backstop = null;
    if (this.asleep) this.wake(true);
    this.kick();
  };

  /** Work that waits for an owner to free space or a link to take frames (no doorbell announces it). */
  private hasDeferredWork(): boolean {
    if (this.ackCount > 0) return true;
    for (let i = 0; i < this.openCount; i++) {
      const ctx = this.ctxs[this.openIds[i]];
      if (ctx.blCount > 0 || ctx.dqCount > 0 || ctx.linkStalled || ctx.pulling) return true;
      if (ctx.prodSeen !== ctx.sqCons) return true;
    }
    return false;
  }

  /** One round over every open endpoint. Returns whether anything was done. */
  poll(): boolean {
    let did = false;
    if (this.ackCount > 0 && this.flushAcks()) did = true;
    for (let i = 0; i < this.openCount; i++) {
      const ctx = this.ctxs[this.openIds[i]];
      try {
        if (this.serviceEndpoint(ctx)) did = true;
      } catch {
        // A bug, never an owner's garbage: count it, resynchronise, keep serving the others.
        this.c[G.internal_errors]++;
        ctx.pulling = false;
        ctx.sqCons = ctx.prodSeen;
        Atomics.store(ctx.w, W_SQ_CONS, ctx.sqCons | 0);
      }
    }
    this.flushRaises();
    return did;
  }

  private serviceEndpoint(ctx: EndpointContext): boolean {
    let did = false;
    if (ctx.blCount > 0 && this.drainBacklog(ctx)) did = true;
    if (ctx.dqCount > 0 && this.drainDeliveries(ctx)) did = true;
    if (ctx.pulling) {
      this.pullChunk(ctx);
      did = true;
    }
    if (this.serviceSq(ctx)) did = true;
    return did;
  }

  // ---- descriptors -------------------------------------------------------------------------

  private serviceSq(ctx: EndpointContext): boolean {
    const w = ctx.w;
    const prod = Atomics.load(w, W_SQ_PROD) >>> 0;
    ctx.prodSeen = prod;
    let cons = ctx.sqCons;
    if (prod === cons) return false;
    if ((prod - cons) >>> 0 > SQ_ENTRIES) {
      // Ahead by more than the queue holds, or backwards: garbage. Report once, resynchronise.
      this.c[G.errors]++;
      this.c[G.error_bad_index]++;
      this.c[ctx.base + E.errors]++;
      this.c[ctx.base + E.bad_index]++;
      const ev = this.ev;
      ev.fill(0);
      ev[E_TYPE] = EventType.Error | (MxStatus.ABORTED << 16);
      ev[E_REASON] = ErrorReason.BadIndex;
      ev[E_REASON + 1] = prod | 0;
      ev[E_REASON + 2] = cons | 0;
      this.postEvent(ctx);
      ctx.sqCons = prod;
      Atomics.store(w, W_SQ_CONS, prod | 0);
      return true;
    }
    let n = 0;
    const d = this.d;
    this.roundBytes = 0;
    while (
      cons !== prod &&
      n < SQ_BATCH &&
      this.roundBytes < PULL_CHUNK &&
      !ctx.pulling &&
      ctx.blCount <= EVENT_BACKLOG - BACKLOG_RESERVE
    ) {
      // Copy it out first: the owner may rewrite the slot while we look at it.
      const base = SQ_W + (cons & (SQ_ENTRIES - 1)) * DESC_WORDS;
      for (let i = 0; i < DESC_WORDS; i++) d[i] = w[base + i];
      if (this.execute(ctx) === STALLED) break;
      this.c[G.descriptors]++;
      this.c[ctx.base + E.descriptors]++;
      cons = (cons + 1) >>> 0;
      n++;
    }
    if (n === 0) return false;
    ctx.sqCons = cons;
    Atomics.store(w, W_SQ_CONS, cons | 0);
    return true;
  }

  private execute(ctx: EndpointContext): number {
    switch (this.d[D_OPCODE] & 0xffff) {
      case Opcode.Nop:
        this.c[G.nops]++;
        return CONSUMED;
      case Opcode.Pull:
        this.execPull(ctx);
        return CONSUMED;
      case Opcode.Send:
        return this.execSend(ctx);
      default:
        this.descError(ctx, ErrorReason.UnknownOpcode);
        return CONSUMED;
    }
  }

  /** Refuses the descriptor in this.d with an ERROR event. */
  private descError(ctx: EndpointContext, reason: number, status: number = REASON_STATUS[reason]): void {
    this.c[G.errors]++;
    this.c[ERROR_REASON_SLOT[reason]]++;
    this.c[ctx.base + E.errors]++;
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.Error | (status << 16);
    ev[E_COOKIE] = this.d[D_COOKIE];
    ev[E_LENGTH] = this.d[D_LENGTH];
    ev[E_REASON] = reason;
    ev[E_REASON + 1] = this.d[D_OPCODE];
    this.postEvent(ctx);
  }

  private execPull(ctx: EndpointContext): void {
    const d = this.d;
    // nic-seen: a traced descriptor is stamped as the NIC takes it (window.ts, DFLAG_TRACE).
    const seenAt = (d[D_OPCODE] >>> 16) & DFLAG_TRACE ? traceNow() : 0;
    const t = this.tpt;
    const len = d[D_LENGTH] >>> 0;
    const srcOff = d[D_SRC_OFFSET] >>> 0;
    const dstOff = d[D_DST_OFFSET] >>> 0;
    const src = t.lookup(d[D_SRC_REGION]);
    const dst = t.lookup(d[D_DST_REGION]);
    let reason = 0;
    if (src < 0) {
      if (t.closedWithEndpoint(d[D_SRC_REGION])) {
        // The region went with its endpoint: tell the puller the peer is gone, as MX would.
        this.descError(ctx, ErrorReason.UnknownEndpoint, MxStatus.ENDPOINT_CLOSED);
        return;
      }
      reason = ErrorReason.BadRegion;
    } else if (t.key[src] !== d[D_SRC_KEY] >>> 0) reason = ErrorReason.BadKey;
    else if ((t.access[src] & Access.RemoteRead) === 0) reason = ErrorReason.Permission;
    else if (!t.inBounds(src, srcOff, len)) reason = ErrorReason.OutOfBounds;
    else if (dst < 0) reason = ErrorReason.BadRegion;
    else if (t.owner[dst] !== ctx.id || (t.access[dst] & Access.LocalWrite) === 0)
      reason = ErrorReason.Permission;
    else if (!t.inBounds(dst, dstOff, len)) reason = ErrorReason.OutOfBounds;
    if (reason !== 0) {
      this.descError(ctx, reason);
      return;
    }
    this.c[G.pulls]++;
    this.c[ctx.base + E.pulls]++;
    if (len <= PULL_CHUNK) {
      t.copy(src, srcOff, dst, dstOff, len);
      this.roundBytes += len;
      this.countPulled(ctx, len);
      this.pullDone(ctx, d[D_COOKIE], len, MxStatus.SUCCESS, seenAt);
      return;
    }
    // Large: a chunk per round, this endpoint's later descriptors waiting (completions stay in order).
    ctx.pulling = true;
    ctx.pullSrcId = d[D_SRC_REGION] >>> 0;
    ctx.pullDstId = d[D_DST_REGION] >>> 0;
    ctx.pullSrcOff = srcOff;
    ctx.pullDstOff = dstOff;
    ctx.pullLeft = len;
    ctx.pullLen = len;
    ctx.pullCookie = d[D_COOKIE];
    ctx.pullSeenAt = seenAt;
  }

  private pullChunk(ctx: EndpointContext): void {
    const t = this.tpt;
    // Regions are immutable while their id resolves; one that went away ends the pull.
    const src = t.lookup(ctx.pullSrcId);
    const dst = t.lookup(ctx.pullDstId);
    if (src < 0 || dst < 0 || t.owner[dst] !== ctx.id) {
      ctx.pulling = false;
      this.pullDone(ctx, ctx.pullCookie, ctx.pullLen - ctx.pullLeft, MxStatus.ABORTED);
      return;
    }
    const n = Math.min(PULL_CHUNK, ctx.pullLeft);
    t.copy(src, ctx.pullSrcOff, dst, ctx.pullDstOff, n);
    ctx.pullSrcOff += n;
    ctx.pullDstOff += n;
    ctx.pullLeft -= n;
    this.countPulled(ctx, n);
    if (ctx.pullLeft === 0) {
      ctx.pulling = false;
      this.pullDone(ctx, ctx.pullCookie, ctx.pullLen, MxStatus.SUCCESS, ctx.pullSeenAt);
    }
  }

  private countPulled(ctx: EndpointContext, n: number): void {
    this.c[G.pull_bytes] += n;
    this.c[G.pull_chunks]++;
    this.c[ctx.base + E.pull_bytes] += n;
  }

  /** `seenAt` ≠ 0: a traced pull; its stamps go into the event (window.ts E_TRACE_*). */
  private pullDone(ctx: EndpointContext, cookie: number, len: number, status: number, seenAt = 0): void {
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.PullDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_LENGTH] = len;
    if (seenAt !== 0) {
      this.evF64[E_TRACE_NIC_SEEN >> 1] = seenAt;
      this.evF64[E_TRACE_DMA_DONE >> 1] = traceNow();
    }
    this.postEvent(ctx);
  }

  private execSend(ctx: EndpointContext): number {
    const d = this.d;
    const t = this.tpt;
    const len = d[D_LENGTH] >>> 0;
    if (len > SEND_MAX) {
      this.descError(ctx, ErrorReason.BadLength);
      return CONSUMED;
    }
    const srcOff = d[D_SRC_OFFSET] >>> 0;
    let src = -1;
    // A zero-length message needs no buffer (MX sends them).
    if (len > 0) {
      src = t.lookup(d[D_SRC_REGION]);
      let reason = 0;
      if (src < 0) reason = ErrorReason.BadRegion;
      else if (t.owner[src] !== ctx.id || (t.access[src] & Access.LocalRead) === 0)
        reason = ErrorReason.Permission;
      else if (!t.inBounds(src, srcOff, len)) reason = ErrorReason.OutOfBounds;
      if (reason !== 0) {
        this.descError(ctx, reason);
        return CONSUMED;
      }
    }
    const destNic = d[D_DEST_NIC] >>> 0;
    const cookie = d[D_COOKIE];
    const link = this.links.get(destNic);
    if (link === undefined) {
      this.countSend(ctx, len);
      if (destNic !== this.nicId) {
        this.sendDone(ctx, cookie, len, MxStatus.ENDPOINT_UNREACHABLE);
        return CONSUMED;
      }
      // Our own endpoint and no loopback link: place it directly, one copy.
      const m = this.dv;
      m[M_SRC_NIC] = this.nicId;
      m[M_SRC_EP] = ctx.id;
      m[M_SRC_SESSION] = ctx.session;
      m[M_DEST_EP] = d[D_DEST_ENDPOINT];
      m[M_DEST_SESSION] = d[D_DEST_SESSION];
      m[M_MATCH_HI] = d[D_MATCH_HI];
      m[M_MATCH_LO] = d[D_MATCH_LO];
      m[M_AUX0] = d[D_AUX0];
      m[M_AUX1] = d[D_AUX1];
      m[M_COOKIE] = cookie;
      m[M_LENGTH] = len;
      m[M_VIA_LINK] = 0;
      const status = this.deliver(src, srcOff, null, 0);
      if (status !== MxStatus.PENDING) this.completeSend(status);
      return CONSUMED;
    }
    const f = this.txFrame;
    initFrame(f, FrameType.Send, len);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, ctx.id);
    setWord(f, F_SRC_SESSION, ctx.session);
    setWord(f, F_DEST_NIC, destNic);
    setWord(f, F_DEST_ENDPOINT, d[D_DEST_ENDPOINT]);
    setWord(f, F_DEST_SESSION, d[D_DEST_SESSION]);
    setWord(f, F_MATCH_HI, d[D_MATCH_HI]);
    setWord(f, F_MATCH_LO, d[D_MATCH_LO]);
    setWord(f, F_AUX0, d[D_AUX0]);
    setWord(f, F_AUX1, d[D_AUX1]);
    setWord(f, F_COOKIE, cookie);
    if (len > 0) t.copyOut(src, srcOff, len, f, FRAME_HEADER_BYTES);
    if (!link.send(f.subarray(0, FRAME_HEADER_BYTES + len))) {
      // The wire pushes back: this descriptor stays at the head of the queue and is retried.
      this.c[G.link_backpressure]++;
      ctx.linkStalled = true;
      return STALLED;
    }
    ctx.linkStalled = false;
    this.c[G.frames_tx]++;
    this.countSend(ctx, len);
    return CONSUMED;
  }

  private countSend(ctx: EndpointContext, len: number): void {
    this.roundBytes += len;
    this.c[G.sends]++;
    this.c[G.send_bytes] += len;
    this.c[ctx.base + E.sends]++;
    this.c[ctx.base + E.send_bytes] += len;
  }

  private sendDone(ctx: EndpointContext, cookie: number, len: number, status: number): void {
    if (status !== MxStatus.SUCCESS) this.c[G.send_failures]++;
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.SendDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_LENGTH] = len;
    ev[E_REASON] = reasonOfStatus(status);
    this.postEvent(ctx);
  }

  // ---- delivery into receive areas -----------------------------------------------------------

  /**
   * Delivers the message described by this.dv, whose payload is region `srcSlot` at `srcOff`
   * (srcSlot ≥ 0) or `srcBytes` at `srcBytesOff`: places it now, queues it (PENDING), or
   * returns the MX status of the failure.
   */
  private deliver(srcSlot: number, srcOff: number, srcBytes: Uint8Array | null, srcBytesOff: number): number {
    const m = this.dv;
    const destEp = m[M_DEST_EP] >>> 0;
    if (destEp >= this.maxEndpoints) return MxStatus.ENDPOINT_UNKNOWN;
    const ctx = this.ctxs[destEp];
    if (!ctx.open) return MxStatus.ENDPOINT_CLOSED;
    if (m[M_DEST_SESSION] >>> 0 !== ctx.session) return MxStatus.BAD_SESSION;
    if (ctx.dqCount === 0 && this.place(ctx, srcSlot, srcOff, srcBytes, srcBytesOff)) return MxStatus.SUCCESS;
    if (ctx.dqCount >= DELIVERY_QUEUE) {
      this.c[G.delivery_rejected]++;
      this.c[ctx.base + E.delivery_rejected]++;
      return MxStatus.NO_RESOURCES;
    }
    const s = (ctx.dqHead + ctx.dqCount) % DELIVERY_QUEUE;
    ctx.dqMeta.set(m, s * META_WORDS);
    let buf = ctx.dqBuf[s];
    if (buf === null) buf = ctx.dqBuf[s] = new Uint8Array(SEND_MAX);
    const len = m[M_LENGTH] >>> 0;
    if (srcSlot >= 0) this.tpt.copyOut(srcSlot, srcOff, len, buf, 0);
    else copyBytes(buf, 0, srcBytes!, srcBytesOff, len);
    ctx.dqCount++;
    this.c[G.delivery_queued]++;
    this.c[ctx.base + E.delivery_queued]++;
    return MxStatus.PENDING;
  }

  /** Places this.dv's payload in ctx's receive area and posts the RECV event, if both have room. */
  private place(
    ctx: EndpointContext,
    srcSlot: number,
    srcOff: number,
    srcBytes: Uint8Array | null,
    srcBytesOff: number,
  ): boolean {
    const m = this.dv;
    const w = ctx.w;
    const len = m[M_LENGTH] >>> 0;
    if (ctx.blCount >= EVENT_BACKLOG - BACKLOG_RESERVE) return false;
    const used = (ctx.rqProd - (Atomics.load(w, W_RQ_CONS) >>> 0)) >>> 0;
    // A consumer index ahead of ours is the owner's garbage: nothing fits until it is sane.
    if (used > RECV_BYTES) return false;
    const record = (len + RECV_ALIGN - 1) & ~(RECV_ALIGN - 1);
    const pos = ctx.rqProd & (RECV_BYTES - 1);
    let offset = pos;
    let span = record;
    if (pos + record > RECV_BYTES) {
      // A record never wraps: skip the tail, and the owner releases it with this record.
      offset = 0;
      span = RECV_BYTES - pos + record;
    }
    if (span > RECV_BYTES - used) return false;
    if (len > 0) {
      if (srcSlot >= 0) this.tpt.copyOut(srcSlot, srcOff, len, ctx.recv, offset);
      else copyBytes(ctx.recv, offset, srcBytes!, srcBytesOff, len);
    }
    ctx.rqProd = (ctx.rqProd + span) >>> 0;
    Atomics.store(w, W_RQ_PROD, ctx.rqProd | 0);
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
    this.postEvent(ctx);
    this.c[G.recvs]++;
    this.c[G.recv_bytes] += len;
    this.c[ctx.base + E.recvs]++;
    this.c[ctx.base + E.recv_bytes] += len;
    return true;
  }

  private loadQueued(ctx: EndpointContext, s: number): void {
    const base = s * META_WORDS;
    for (let i = 0; i < META_WORDS; i++) this.dv[i] = ctx.dqMeta[base + i];
  }

  private drainDeliveries(ctx: EndpointContext): boolean {
    let did = false;
    while (ctx.dqCount > 0) {
      const s = ctx.dqHead;
      this.loadQueued(ctx, s);
      if (!this.place(ctx, -1, 0, ctx.dqBuf[s], 0)) break;
      ctx.dqHead = (ctx.dqHead + 1) % DELIVERY_QUEUE;
      ctx.dqCount--;
      this.completeSend(MxStatus.SUCCESS);
      did = true;
    }
    return did;
  }

  /** Tells the sender of this.dv's message how its delivery ended: SEND_DONE here, or a SEND_ACK frame. */
  private completeSend(status: number): void {
    const m = this.dv;
    if (m[M_VIA_LINK] !== 0) {
      m[M_STATUS] = status;
      if (this.ackCount > 0 || !this.sendAck(m, 0)) this.queueAck();
      return;
    }
    const ep = m[M_SRC_EP] >>> 0;
    const ctx = ep < this.maxEndpoints ? this.ctxs[ep] : null;
    // The sender may have closed (or closed and reopened) meanwhile: then nobody waits for it.
    if (ctx?.open && ctx.session === m[M_SRC_SESSION] >>> 0)
      this.sendDone(ctx, m[M_COOKIE], m[M_LENGTH] >>> 0, status);
  }

  /** Sends the SEND_ACK for the delivery whose metadata is at words[base..]. */
  private sendAck(words: Int32Array, base: number): boolean {
    const srcNic = words[base + M_SRC_NIC] >>> 0;
    const link = this.links.get(srcNic);
    if (!link) {
      this.c[G.acks_dropped]++;
      return true;
    }
    const f = this.ackFrame;
    initFrame(f, FrameType.SendAck, 0);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, words[base + M_DEST_EP]);
    setWord(f, F_SRC_SESSION, words[base + M_DEST_SESSION]);
    setWord(f, F_DEST_NIC, srcNic);
    setWord(f, F_DEST_ENDPOINT, words[base + M_SRC_EP]);
    setWord(f, F_DEST_SESSION, words[base + M_SRC_SESSION]);
    setWord(f, F_COOKIE, words[base + M_COOKIE]);
    setWord(f, F_STATUS, words[base + M_STATUS]);
    setWord(f, F_AUX0, words[base + M_LENGTH]);
    if (!link.send(f)) {
      this.c[G.link_backpressure]++;
      return false;
    }
    this.c[G.frames_tx]++;
    return true;
  }

  private queueAck(): void {
    if (this.ackCount === ACK_QUEUE) {
      this.c[G.acks_dropped]++;
      return;
    }
    this.ackQueue.set(this.dv, ((this.ackHead + this.ackCount) % ACK_QUEUE) * META_WORDS);
    this.ackCount++;
  }

  private flushAcks(): boolean {
    let did = false;
    while (this.ackCount > 0 && this.sendAck(this.ackQueue, this.ackHead * META_WORDS)) {
      this.ackHead = (this.ackHead + 1) % ACK_QUEUE;
      this.ackCount--;
      did = true;
    }
    return did;
  }

  // ---- events and interrupts -----------------------------------------------------------------

  private eqHasRoom(ctx: EndpointContext): boolean {
    // A consumer index that is ahead of ours (garbage) reads as a full queue.
    return (ctx.eqProd - (Atomics.load(ctx.w, W_EQ_CONS) >>> 0)) >>> 0 < EQ_ENTRIES;
  }

  private writeEvent(ctx: EndpointContext, src: Int32Array, srcBase: number): void {
    const w = ctx.w;
    const base = EQ_W + (ctx.eqProd & (EQ_ENTRIES - 1)) * EVENT_WORDS;
    for (let i = 0; i < EVENT_WORDS; i++) w[base + i] = src[srcBase + i];
    ctx.eqProd = (ctx.eqProd + 1) >>> 0;
    Atomics.store(w, W_EQ_PROD, ctx.eqProd | 0);
    this.c[G.events]++;
    this.c[ctx.base + E.events]++;
    this.raise(ctx);
  }

  /** Posts this.ev to ctx: into its event queue, else its backlog, else it is dropped (counted). */
  private postEvent(ctx: EndpointContext): boolean {
    if (ctx.blCount === 0 && this.eqHasRoom(ctx)) {
      this.writeEvent(ctx, this.ev, 0);
      return true;
    }
    if (ctx.blCount < EVENT_BACKLOG) {
      ctx.backlog!.set(this.ev, ((ctx.blHead + ctx.blCount) % EVENT_BACKLOG) * EVENT_WORDS);
      ctx.blCount++;
      this.c[G.event_backlog]++;
      this.c[ctx.base + E.event_backlog]++;
      return true;
    }
    this.c[G.event_drops]++;
    this.c[ctx.base + E.event_drops]++;
    return false;
  }

  private drainBacklog(ctx: EndpointContext): boolean {
    let did = false;
    while (ctx.blCount > 0 && this.eqHasRoom(ctx)) {
      this.writeEvent(ctx, ctx.backlog!, ctx.blHead * EVENT_WORDS);
      ctx.blHead = (ctx.blHead + 1) % EVENT_BACKLOG;
      ctx.blCount--;
      did = true;
    }
    return did;
  }

  private raise(ctx: EndpointContext): void {
    if (ctx.needRaise) return;
    ctx.needRaise = true;
    this.raiseIds[this.raiseCount++] = ctx.id;
  }

  /** One interrupt per endpoint per round, however many events it got. */
  private flushRaises(): void {
    for (let i = 0; i < this.raiseCount; i++) {
      const ctx = this.ctxs[this.raiseIds[i]];
      ctx.needRaise = false;
      this.c[G.interrupts]++;
      this.c[ctx.base + E.interrupts]++;
      if (raiseInterrupt(ctx.intr)) this.c[G.interrupt_kicks]++;
    }
    this.raiseCount = 0;
  }
}

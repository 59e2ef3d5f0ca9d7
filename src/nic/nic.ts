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
 * Events the NIC writes: window.ts has each type's words. Frames between NICs: frame.ts has
 * each type's words and who writes them.
 *
 * Wire state is bounded: SEND_WINDOW unacknowledged SENDs per link, DEST_CREDITS of them per
 * destination endpoint, and PULL_JOBS_PER_LINK pulls per link (a full one holds the
 * descriptor in its queue), CONNECT_SLOTS connects (full: a NO_RESOURCES CONNECT_DONE),
 * REMOTE_PULL_SLOTS pulls in all; a delivery is held for receive space HOLD_MS at most. A link
 * that goes away completes everything that waits on it with ENDPOINT_UNREACHABLE at once; a
 * wire timer (running only while something waits) does so request by request after
 * WIRE_TIMEOUT_MS without progress, and for the whole link once its peer is silent (nothing
 * heard for WIRE_TIMEOUT_MS while a request of ours on it is overdue, or a descriptor has
 * waited that long on a link that takes no frames). Remote PULLs do not hold the endpoint's
 * queue: their PULL_DONE may come after later descriptors' completions.
 *
 * Idle: after work the NIC polls its endpoints for POLL_BUDGET_MS, then sets W_NIC_SLEEPING in
 * every open window, re-checks every doorbell, and waits in its event loop (one
 * Atomics.waitAsync per window on W_SQ_PROD). A doorbell with notify, a control request or a
 * link frame wakes it. Owners do not notify when they only consume events or release receive
 * space, so while completions or deliveries wait for such space a backstop timer (1 → 8 ms)
 * re-checks; an owner that wants them sooner notifies W_SQ_PROD after releasing space while
 * W_NIC_SLEEPING is 1 (notify wakes the NIC whatever the word's value).
 *
 * Allocation: the per-descriptor and per-frame paths use preallocated scratch arrays and
 * numbers only; the one object they create is the typed-array view `Uint8Array.prototype.set`
 * needs per copied run (copies up to 64 bytes are done by a loop instead), and a frame with a
 * payload sent on a link (SEND, PULL_REPLY, ETHERNET) creates the view of its frame.
 */
import type { MessagePort } from "node:worker_threads";
import { serveSyncCalls } from "../xen/sync-call.js";
import { traceNow } from "./clock.js";
import { CONNECT_LOCKOUT_MAX_MS, ConnectThrottle } from "./connect-throttle.js";
import type {
  LinkStateInfo,
  LookupReply,
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  OpenEtherPortReply,
  RegisterRegionReply,
} from "./control.js";
import {
  allocNicCounters,
  EndpointCounter,
  ERROR_REASON_SLOT,
  endpointCounterBase,
  NicCounter,
} from "./counters.js";
import {
  allocEtherPort,
  ETHER_MAX_FRAME,
  ETHER_MIN_FRAME,
  P_NIC_SLEEPING,
  P_RX_HEAD,
  P_RX_TAIL,
  P_STAT_RX_DROPPED,
  P_STAT_TX_BAD,
  P_STAT_TX_DROPPED,
  P_TX_HEAD,
  P_TX_TAIL,
  P_TX_WAITING,
  PORT_INTR_OFFSET,
  PORT_INTR_WORDS,
  PORT_RING_BYTES,
  PORT_RX_OFFSET,
  PORT_TX_OFFSET,
  RECORD_SKIP,
  recordBytes,
  ringPut,
} from "./ether-port.js";
import { ExposureGrant, endExposure, exposureLive, takeExposure } from "./exposure.js";
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
  F_TAG,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  getWord,
  initFrame,
  setWord,
} from "./frame.js";
import type { Link } from "./link.js";
import { CTRL_QUEUE, JOB_ROUND, LinkState, MacTable, PULL_JOBS_PER_LINK, SEND_WINDOW } from "./link-state.js";
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
  DFLAG_EXPOSURE,
  DFLAG_REMOTE,
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
  HOLD_MS,
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
  WIRE_TIMEOUT_MS,
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
/** CONNECTs waiting for their CONNECT_REPLY, across links. */
export const CONNECT_SLOTS = 256;
/** Remote PULLs outstanding, across links (the slot is the low 8 bits of a request id). */
export const REMOTE_PULL_SLOTS = 256;
/** How often the wire timer looks for requests past WIRE_TIMEOUT_MS (only while some wait). */
const WIRE_TICK_MS = 100;
/** A receiver holding a delivery from a link tells its sender so this often (a PENDING SEND_ACK). */
const KEEPALIVE_MS = WIRE_TIMEOUT_MS / 3;
/** Frames taken from the Ethernet port's TX ring per round. */
const ETHER_BATCH = 64;
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
  MxStatus.BAD_RDMAWIN, // NoRight
  MxStatus.NO_RESOURCES, // HoldExpired
];

/** The largest ErrorReason a peer's SEND_ACK may carry (anything else is replaced by reasonOfStatus). */
const MAX_REASON = ErrorReason.HoldExpired;

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
/** The sending NIC's window tag (frame.ts F_TAG), echoed in the SEND_ACK. */
const M_TAG = 12;
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

/** The low 32 bits of a MAC address whose bytes 2..5 start at b[o]. */
function macLo(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
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
  /** When each queued delivery started waiting (HOLD_MS bounds it). */
  readonly dqSince = new Float64Array(DELIVERY_QUEUE);
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
  /** The pull right the chunked pull copies under (its owner's endpoint and session), or -1. */
  pullXp = -1;
  pullXpEp = 0;
  pullXpSession = 0;
  /** A SEND waits for its link to take frames again. */
  linkStalled = false;
  /** Since when the head descriptor has waited on the link to stallNic (0: it does not). */
  stallSince = 0;
  stallNic = 0;
  needRaise = false;
  waiterPending = false;
  waiterGen = 0;
  readonly base: number;

  constructor(readonly id: number) {
    this.base = endpointCounterBase(id);
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
  private readonly links = new Map<number, LinkState>();
  /** The attached links, compact, for the poll loop and flooding (no iterator per round). */
  private readonly linkList: LinkState[] = [];
  /** Every peer a link is known for: up, or down while a reconnecting link retries. */
  private readonly linkInfo = new Map<number, { state: "up" | "down"; reconnects: number }>();
  private readonly stopHooks: (() => void)[] = [];

  // Scratch: the descriptor being executed, the event being written, the delivery in hand.
  private readonly d = new Int32Array(DESC_WORDS);
  private readonly ev = new Int32Array(EVENT_WORDS);
  private readonly evF64 = new Float64Array(this.ev.buffer);
  private readonly dv = new Int32Array(META_WORDS);
  private readonly txFrame = new Uint8Array(FRAME_MAX);
  /** The header-only frame being built (sendHdr sends or queues it). */
  private readonly hdr = new Uint8Array(FRAME_HEADER_BYTES);
  /** A queued header on its way out (flushCtrl). */
  private readonly ctrlOut = new Uint8Array(FRAME_HEADER_BYTES);
  /** performance.now() as of the current round or frame: wire deadlines and MAC ageing. */
  private now = 0;

  // CONNECTs awaiting a reply (typed arrays by slot; a request id is seq << 8 | slot).
  private readonly cnUsed = new Uint8Array(CONNECT_SLOTS);
  private readonly cnId = new Uint32Array(CONNECT_SLOTS);
  private readonly cnEp = new Uint32Array(CONNECT_SLOTS);
  private readonly cnSession = new Uint32Array(CONNECT_SLOTS);
  private readonly cnCookie = new Int32Array(CONNECT_SLOTS);
  private readonly cnNic = new Uint32Array(CONNECT_SLOTS);
  private readonly cnDestEp = new Uint32Array(CONNECT_SLOTS);
  private readonly cnDeadline = new Float64Array(CONNECT_SLOTS);
  private readonly cnFree = new Int32Array(CONNECT_SLOTS);
  private cnFreeCount = CONNECT_SLOTS;
  private cnSeq = 0;

  // Remote PULLs this NIC asked for (requester side), by slot.
  private readonly rpUsed = new Uint8Array(REMOTE_PULL_SLOTS);
  private readonly rpId = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpEp = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpSession = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpCookie = new Int32Array(REMOTE_PULL_SLOTS);
  private readonly rpNic = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpSrcEp = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpDst = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpDstOff = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpLen = new Uint32Array(REMOTE_PULL_SLOTS);
  private readonly rpGot = new Uint32Array(REMOTE_PULL_SLOTS);
  /** When the pull last made progress (or started). */
  private readonly rpLast = new Float64Array(REMOTE_PULL_SLOTS);
  private readonly rpSeenAt = new Float64Array(REMOTE_PULL_SLOTS);
  private readonly rpFree = new Int32Array(REMOTE_PULL_SLOTS);
  private rpFreeCount = REMOTE_PULL_SLOTS;
  private rpSeq = 0;

  /** Where a pull right that pullSourceStatus took points (when it says SUCCESS). */
  private readonly grant = new ExposureGrant();
  /** pullSourceStatus's refusal as an ErrorReason (for a local PULL's ERROR event). */
  private refusal = 0;
  /** serveJob: the link pushed back. */
  private jobRefused = false;
  /** wireTick completed or sent something. */
  private wireActed = false;
  private wireTimer: ReturnType<typeof setTimeout> | null = null;
  private lastKeepalive = 0;

  // The Ethernet port (ether-port.ts), once opened.
  private port: SharedArrayBuffer | null = null;
  private portW: Int32Array = new Int32Array(0);
  private portU32: Uint32Array = new Uint32Array(0);
  private portBytes: Uint8Array = new Uint8Array(0);
  private portIntr: Int32Array = new Int32Array(0);
  private portTxTail = 0;
  private portTxSeen = 0;
  private portRxHead = 0;
  /** A unicast frame waits for its link to take frames again. */
  private portTxStalled = false;
  private portNeedRaise = false;
  private portWaiterPending = false;
  private portWaiterGen = 0;
  private readonly macs = new MacTable();

  private readonly rnd = new Uint32Array(1);
  /** Wrong endpoint keys, per requesting endpoint (connect-throttle.ts). */
  private readonly throttle = new ConnectThrottle();
  /** connectCheck's lockout in ms when it answers REJECTED. */
  private retryAfter = 0;
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
    if (this.c.length < endpointCounterBase(maxEndpoints))
      throw new NicError("EINVAL", `the counters buffer is too small for ${maxEndpoints} endpoints`);
    for (let i = 0; i < maxEndpoints; i++) this.ctxs.push(new EndpointContext(i));
    this.openIds = new Int32Array(maxEndpoints);
    this.raiseIds = new Int32Array(maxEndpoints);
    for (let i = 0; i < CONNECT_SLOTS; i++) this.cnFree[i] = i;
    for (let i = 0; i < REMOTE_PULL_SLOTS; i++) this.rpFree[i] = i;
  }

  // ---- the control interface (control.ts) ------------------------------------------------

  /** Serves a driver's control channel (see control.ts) until the port closes. */
  serveDriver(port: MessagePort, replyWord: SharedArrayBuffer): void {
    serveSyncCalls(port, replyWord, (req) => this.control(req));
  }

  /** Executes one control request; throws NicError for a bad one. */
  control(req: unknown): unknown {
    this.c[NicCounter.control_requests]++;
    try {
      return this.dispatch(req);
    } catch (e) {
      this.c[NicCounter.control_errors]++;
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
      case "open_ether_port":
        return this.openEtherPort();
      case "info":
        return this.info();
      default:
        throw new NicError(
          "EINVAL",
          `unknown control op ${JSON.stringify((r as { op: string }).op)}: expected open_endpoint, close_endpoint, register_region, deregister_region, lookup_endpoint, deliver_event, open_ether_port or info`,
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
    this.c[ctx.base + EndpointCounter.opens]++;
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
    // Its wire requests end with it: nobody reads their completions, and the peers stop serving them.
    this.dropWireRequests(ctx.id);
    // Payloads queued for it will never be placed: their senders learn it now.
    while (ctx.dqCount > 0) {
      this.loadQueued(ctx, ctx.dqHead);
      ctx.dqHead = (ctx.dqHead + 1) % DELIVERY_QUEUE;
      ctx.dqCount--;
      this.completeSend(MxStatus.ENDPOINT_CLOSED);
    }
    this.stopPull(ctx);
    ctx.linkStalled = false;
    ctx.stallSince = 0;
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
    if (r.requester === undefined) {
      if (!ctx.open) return { status: "unknown" };
      if (ctx.key !== r.key) return { status: "bad_key" };
    } else {
      // The driver connects on behalf of its endpoint `requester`: wrong keys are throttled.
      const from = this.checkEndpointId(r.requester, "lookup_endpoint requester");
      this.now = performance.now();
      const status = this.connectCheck(this.nicId, from, id, r.key);
      if (status === MxStatus.REJECTED) return { status: "throttled", retryAfterMs: this.retryAfter };
      if (status === MxStatus.ENDPOINT_UNKNOWN) return { status: "unknown" };
      if (status === MxStatus.BAD_KEY) return { status: "bad_key" };
    }
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
      linkStates: [...this.linkInfo.entries()]
        .map(([peerNic, i]): LinkStateInfo => ({ peerNic, state: i.state, reconnects: i.reconnects }))
        .sort((a, b) => a.peerNic - b.peerNic),
      etherPort: this.port !== null,
    };
  }

  // ---- links -------------------------------------------------------------------------------

  /**
   * Attaches a link to `link.peerNic`. A link whose peer is this NIC itself (loopback) takes
   * over this NIC's own SENDs, which otherwise are placed directly without frames. `replace`:
   * a link already attached to that peer is taken out first, as lost (the peer reconnected).
   */
  attachLink(link: Link, replace = false): void {
    const old = this.links.get(link.peerNic);
    let reconnected = false;
    if (old) {
      if (!replace)
        throw new NicError("EBUSY", `a link to NIC ${link.peerNic} is already attached; detach it first`);
      this.c[NicCounter.link_losses]++;
      this.removeLink(old);
      old.link.close();
      reconnected = true;
    }
    const ls = new LinkState(link, link.peerNic);
    ls.lastRx = ls.lastTx = performance.now();
    ls.index = this.linkList.length;
    this.linkList.push(ls);
    this.links.set(link.peerNic, ls);
    const info = this.linkInfo.get(link.peerNic);
    if (info === undefined) {
      this.linkInfo.set(link.peerNic, { state: "up", reconnects: 0 });
    } else {
      if (info.state === "down" || reconnected) {
        info.reconnects++;
        this.c[NicCounter.link_reconnects]++;
      }
      info.state = "up";
    }
    link.onFrame((frame) => this.onFrame(ls, frame));
    link.onWritable?.(() => this.kick());
    this.kick();
  }

  /** Detaches the link to `peerNic` on request: what waits on it completes ENDPOINT_UNREACHABLE. */
  detachLink(peerNic: number): void {
    const ls = this.links.get(peerNic);
    if (!ls) throw new NicError("ENOENT", `no link to NIC ${peerNic} is attached`);
    this.removeLink(ls);
    this.linkInfo.delete(peerNic);
    ls.link.close();
  }

  /**
   * The link went down by itself (the peer went away, a stream fault). `retrying`: a
   * reconnecting link tries again, and the peer shows as "down" meanwhile.
   */
  linkLost(link: Link, retrying: boolean): void {
    const ls = this.links.get(link.peerNic);
    // A link that was already replaced or detached: nothing waits on it any more.
    if (ls === undefined || ls.link !== link) return;
    this.c[NicCounter.link_losses]++;
    this.removeLink(ls);
    const info = this.linkInfo.get(link.peerNic);
    if (retrying && info) info.state = "down";
    else this.linkInfo.delete(link.peerNic);
  }

  /** A reconnecting link gave up or was cancelled: forget the peer unless a link to it is attached. */
  forgetLink(peerNic: number): void {
    if (!this.links.has(peerNic)) this.linkInfo.delete(peerNic);
  }

  hasLink(peerNic: number): boolean {
    return this.links.has(peerNic);
  }

  /** Runs `cb` when the NIC stops (reconnecting links cancel their retries). */
  onStop(cb: () => void): void {
    this.stopHooks.push(cb);
  }

  /** Takes a link out of service; whatever waits on it completes ENDPOINT_UNREACHABLE now. */
  private removeLink(ls: LinkState): void {
    ls.attached = false;
    this.links.delete(ls.peerNic);
    const last = this.linkList.pop()!;
    if (last !== ls) {
      this.linkList[ls.index] = last;
      last.index = ls.index;
    }
    try {
      this.failLink(ls);
    } catch {
      this.c[NicCounter.internal_errors]++;
    }
    this.flushRaises();
    this.kick();
  }

  private failLink(ls: LinkState): void {
    for (let i = 0; i < SEND_WINDOW && ls.sCount > 0; i++) {
      if (ls.sUsed[i] === 0) continue;
      ls.completeSend(i);
      this.sendDoneTo(ls.sEp[i], ls.sSession[i], ls.sCookie[i], ls.sLen[i], MxStatus.ENDPOINT_UNREACHABLE);
    }
    // Requests on a removed link: the link was the current one for its peer until now.
    for (let s = 0; s < CONNECT_SLOTS; s++)
      if (this.cnUsed[s] === 1 && this.cnNic[s] === ls.peerNic)
        this.finishConnect(s, MxStatus.ENDPOINT_UNREACHABLE, 0);
    for (let s = 0; s < REMOTE_PULL_SLOTS; s++)
      if (this.rpUsed[s] === 1 && this.rpNic[s] === ls.peerNic)
        this.finishPull(s, MxStatus.ENDPOINT_UNREACHABLE, null);
    this.dropJobs(ls);
    ls.ctrlCount = 0;
    ls.pullsOut = 0;
  }

  private onFrame(ls: LinkState, frame: Uint8Array): void {
    if (!ls.attached) return;
    this.c[NicCounter.frames_rx]++;
    this.now = performance.now();
    // Whatever it says, the peer is alive.
    ls.lastRx = this.now;
    ls.silentUntil = 0;
    try {
      const type = checkFrame(frame);
      if (type < 0 || getWord(frame, F_DEST_NIC) !== this.nicId || getWord(frame, F_SRC_NIC) !== ls.peerNic) {
        this.c[NicCounter.frames_bad]++;
      } else {
        switch (type) {
          case FrameType.Send:
            this.rxSend(frame);
            break;
          case FrameType.SendAck:
            this.rxSendAck(ls, frame);
            break;
          case FrameType.ConnectRequest:
            this.rxConnectRequest(ls, frame);
            break;
          case FrameType.ConnectReply:
            this.rxConnectReply(ls, frame);
            break;
          case FrameType.PullRequest:
            this.rxPullRequest(ls, frame);
            break;
          case FrameType.PullReply:
            this.rxPullReply(ls, frame);
            break;
          case FrameType.Ethernet:
            this.rxEthernet(ls, frame);
            break;
          default:
            this.c[NicCounter.frames_unknown]++;
        }
      }
    } catch {
      this.c[NicCounter.internal_errors]++;
    }
    this.flushRaises();
    this.kick();
  }

  /**
   * Sends the header-only frame in this.hdr on `ls`, or queues it behind earlier ones while
   * the link pushes back. false: the queue is full and the frame is dropped.
   */
  private sendHdr(ls: LinkState): boolean {
    if (ls.ctrlCount === 0) {
      if (ls.link.send(this.hdr)) {
        this.c[NicCounter.frames_tx]++;
        ls.lastTx = this.now;
        return true;
      }
      this.c[NicCounter.link_backpressure]++;
    }
    if (ls.ctrlCount === CTRL_QUEUE) return false;
    ls.ctrl.set(this.hdr, ((ls.ctrlHead + ls.ctrlCount) % CTRL_QUEUE) * FRAME_HEADER_BYTES);
    ls.ctrlCount++;
    return true;
  }

  private flushCtrl(ls: LinkState): boolean {
    let did = false;
    const out = this.ctrlOut;
    while (ls.ctrlCount > 0) {
      const base = ls.ctrlHead * FRAME_HEADER_BYTES;
      for (let i = 0; i < FRAME_HEADER_BYTES; i++) out[i] = ls.ctrl[base + i];
      if (!ls.link.send(out)) {
        this.c[NicCounter.link_backpressure]++;
        break;
      }
      ls.lastTx = this.now;
      this.c[NicCounter.frames_tx]++;
      ls.ctrlHead = (ls.ctrlHead + 1) % CTRL_QUEUE;
      ls.ctrlCount--;
      did = true;
    }
    return did;
  }

  // ---- SEND over a link ----------------------------------------------------------------------

  private rxSend(frame: Uint8Array): void {
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
    m[M_TAG] = getWord(frame, F_TAG);
    const status = this.deliver(-1, 0, frame, FRAME_HEADER_BYTES);
    // Wake the receiver before writing the ACK to the socket: it is what the message waits on.
    this.flushRaises();
    if (status !== MxStatus.PENDING) this.completeSend(status);
    // A held delivery: the wire timer tells its sender to keep waiting, for HOLD_MS at most.
    else this.armWireTimer();
  }

  private rxSendAck(ls: LinkState, frame: Uint8Array): void {
    const ep = getWord(frame, F_DEST_ENDPOINT);
    const session = getWord(frame, F_DEST_SESSION);
    const cookie = getWord(frame, F_COOKIE) | 0;
    const i = ls.findSend(getWord(frame, F_TAG), ep | 0, session, cookie);
    if (i < 0) {
      // Late (after a timeout) or garbage.
      this.c[NicCounter.acks_dropped]++;
      return;
    }
    let status = getWord(frame, F_STATUS);
    if (status === MxStatus.PENDING) {
      ls.sDeadline[i] = this.now + WIRE_TIMEOUT_MS;
      return;
    }
    const len = ls.sLen[i];
    ls.completeSend(i);
    if (status > MxStatus.NO_RESOURCES) status = MxStatus.ABORTED;
    // The receiving NIC's reason, if it is one we know.
    const r = getWord(frame, F_AUX1);
    this.sendDoneTo(ep, session, cookie, len, status, r > 0 && r <= MAX_REASON ? r : reasonOfStatus(status));
  }

  /** SEND_DONE to endpoint `ep` if it is still the one (same session) that sent. */
  private sendDoneTo(
    ep: number,
    session: number,
    cookie: number,
    len: number,
    status: number,
    reason = reasonOfStatus(status),
  ): void {
    if (ep >= this.maxEndpoints) return;
    const ctx = this.ctxs[ep];
    if (ctx.open && ctx.session === session) this.sendDone(ctx, cookie, len, status, reason);
  }

  /**
   * Tells the sending NIC how a delivery from a link ended (PENDING: still held) with a
   * SEND_ACK: its window tag echoed, the ErrorReason of a failure in aux1.
   */
  private ackDelivery(words: Int32Array, base: number, status: number, reason: number): void {
    const srcNic = words[base + M_SRC_NIC] >>> 0;
    const ls = this.links.get(srcNic);
    if (!ls) {
      this.c[NicCounter.acks_dropped]++;
      return;
    }
    const f = this.hdr;
    initFrame(f, FrameType.SendAck, 0);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, words[base + M_DEST_EP]);
    setWord(f, F_SRC_SESSION, words[base + M_DEST_SESSION]);
    setWord(f, F_DEST_NIC, srcNic);
    setWord(f, F_DEST_ENDPOINT, words[base + M_SRC_EP]);
    setWord(f, F_DEST_SESSION, words[base + M_SRC_SESSION]);
    setWord(f, F_COOKIE, words[base + M_COOKIE]);
    setWord(f, F_STATUS, status);
    setWord(f, F_TAG, words[base + M_TAG]);
    setWord(f, F_AUX0, words[base + M_LENGTH]);
    setWord(f, F_AUX1, reason);
    if (!this.sendHdr(ls)) this.c[NicCounter.acks_dropped]++;
  }

  // ---- CONNECT ----------------------------------------------------------------------------------

  private execConnect(ctx: EndpointContext): number {
    const d = this.d;
    const destNic = d[D_DEST_NIC] >>> 0;
    const destEp = d[D_DEST_ENDPOINT] >>> 0;
    const cookie = d[D_COOKIE];
    if (destNic === this.nicId) {
      this.c[NicCounter.connects]++;
      const status = this.connectCheck(this.nicId, ctx.id, destEp, d[D_SRC_KEY] >>> 0);
      const session = status === MxStatus.SUCCESS ? this.ctxs[destEp].session : 0;
      this.connectDone(ctx, cookie, destNic, destEp, session, status, this.retryAfter);
      return CONSUMED;
    }
    const ls = this.usableLink(destNic);
    if (ls === undefined || this.cnFreeCount === 0) {
      this.c[NicCounter.connects]++;
      const status = ls === undefined ? MxStatus.ENDPOINT_UNREACHABLE : MxStatus.NO_RESOURCES;
      this.connectDone(ctx, cookie, destNic, destEp, 0, status);
      return CONSUMED;
    }
    if (ls.ctrlCount === CTRL_QUEUE) return this.stalled(ctx, destNic);
    const s = this.cnFree[--this.cnFreeCount];
    const id = (((++this.cnSeq & 0xffffff) << 8) | s) >>> 0;
    this.cnUsed[s] = 1;
    this.cnId[s] = id;
    this.cnEp[s] = ctx.id;
    this.cnSession[s] = ctx.session;
    this.cnCookie[s] = cookie;
    this.cnNic[s] = destNic;
    this.cnDestEp[s] = destEp;
    this.cnDeadline[s] = this.now + WIRE_TIMEOUT_MS;
    const f = this.hdr;
    initFrame(f, FrameType.ConnectRequest, 0);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, ctx.id);
    setWord(f, F_SRC_SESSION, ctx.session);
    setWord(f, F_DEST_NIC, destNic);
    setWord(f, F_DEST_ENDPOINT, destEp);
    setWord(f, F_COOKIE, id);
    setWord(f, F_AUX0, d[D_SRC_KEY]);
    this.sendHdr(ls);
    this.c[NicCounter.connects]++;
    this.armWireTimer();
    return CONSUMED;
  }

  /**
   * The answer to requester (nic, ep)'s connect to endpoint `target` of this NIC with `key`:
   * SUCCESS, ENDPOINT_UNKNOWN (not open), BAD_KEY, or REJECTED while the requester is locked
   * out for wrong keys (this.retryAfter = ms left; connect-throttle.ts), the key unexamined.
   */
  private connectCheck(nic: number, ep: number, target: number, key: number): number {
    this.retryAfter = 0;
    if (target >= this.maxEndpoints || !this.ctxs[target].open) return MxStatus.ENDPOINT_UNKNOWN;
    const wait = this.throttle.lockedFor(nic, ep, this.now);
    if (wait > 0) {
      this.c[NicCounter.connects_throttled]++;
      this.retryAfter = wait;
      return MxStatus.REJECTED;
    }
    if (this.ctxs[target].key === key) {
      this.throttle.succeeded(nic, ep);
      return MxStatus.SUCCESS;
    }
    this.c[NicCounter.connect_bad_keys]++;
    this.throttle.failed(nic, ep, this.now);
    return MxStatus.BAD_KEY;
  }

  private connectDone(
    ctx: EndpointContext,
    cookie: number,
    nic: number,
    ep: number,
    session: number,
    status: number,
    retryAfter = 0,
  ): void {
    if (status !== MxStatus.SUCCESS) this.c[NicCounter.connect_failures]++;
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.ConnectDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_SRC_NIC] = nic;
    ev[E_SRC_ENDPOINT] = ep;
    ev[E_SRC_SESSION] = session;
    ev[E_AUX0] = retryAfter;
    this.postEvent(ctx);
  }

  private finishConnect(s: number, status: number, session: number, retryAfter = 0): void {
    this.cnUsed[s] = 0;
    this.cnFree[this.cnFreeCount++] = s;
    const ctx = this.ctxs[this.cnEp[s]];
    if (ctx.open && ctx.session === this.cnSession[s])
      this.connectDone(ctx, this.cnCookie[s], this.cnNic[s], this.cnDestEp[s], session, status, retryAfter);
  }

  private rxConnectRequest(ls: LinkState, frame: Uint8Array): void {
    this.c[NicCounter.connects_served]++;
    const ep = getWord(frame, F_DEST_ENDPOINT);
    // The requester is the peer NIC (its link says which) and the endpoint it names.
    const status = this.connectCheck(ls.peerNic, getWord(frame, F_SRC_ENDPOINT), ep, getWord(frame, F_AUX0));
    const f = this.hdr;
    initFrame(f, FrameType.ConnectReply, 0);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, ep);
    setWord(f, F_SRC_SESSION, status === MxStatus.SUCCESS ? this.ctxs[ep].session : 0);
    setWord(f, F_DEST_NIC, ls.peerNic);
    setWord(f, F_DEST_ENDPOINT, getWord(frame, F_SRC_ENDPOINT));
    setWord(f, F_DEST_SESSION, getWord(frame, F_SRC_SESSION));
    setWord(f, F_COOKIE, getWord(frame, F_COOKIE));
    setWord(f, F_STATUS, status);
    setWord(f, F_AUX0, this.retryAfter);
    // Dropped when the link's queue is full: the requester times out.
    if (!this.sendHdr(ls)) this.c[NicCounter.acks_dropped]++;
  }

  private rxConnectReply(ls: LinkState, frame: Uint8Array): void {
    const id = getWord(frame, F_COOKIE);
    const s = id & (CONNECT_SLOTS - 1);
    if (
      this.cnUsed[s] !== 1 ||
      this.cnId[s] !== id ||
      this.cnNic[s] !== ls.peerNic ||
      getWord(frame, F_SRC_ENDPOINT) !== this.cnDestEp[s] ||
      getWord(frame, F_DEST_ENDPOINT) !== this.cnEp[s] ||
      getWord(frame, F_DEST_SESSION) !== this.cnSession[s]
    ) {
      this.c[NicCounter.connect_replies_unknown]++;
      return;
    }
    const st = getWord(frame, F_STATUS);
    const status = st > MxStatus.NO_RESOURCES || st === MxStatus.PENDING ? MxStatus.ABORTED : st;
    // A lockout is at most a minute: anything longer is garbage, and says nothing.
    const wait = getWord(frame, F_AUX0);
    this.finishConnect(
      s,
      status,
      status === MxStatus.SUCCESS ? getWord(frame, F_SRC_SESSION) : 0,
      status === MxStatus.REJECTED && wait <= CONNECT_LOCKOUT_MAX_MS ? wait : 0,
    );
  }

  // ---- remote PULL: requester side --------------------------------------------------------------

  private execRemotePull(ctx: EndpointContext): number {
    const d = this.d;
    const t = this.tpt;
    const len = d[D_LENGTH] >>> 0;
    const dstOff = d[D_DST_OFFSET] >>> 0;
    const dst = t.lookup(d[D_DST_REGION]);
    let reason = 0;
    if (dst < 0) reason = ErrorReason.BadRegion;
    else if (t.owner[dst] !== ctx.id || (t.access[dst] & Access.LocalWrite) === 0)
      reason = ErrorReason.Permission;
    else if (!t.inBounds(dst, dstOff, len)) reason = ErrorReason.OutOfBounds;
    if (reason !== 0) {
      this.descError(ctx, reason);
      return CONSUMED;
    }
    const destNic = d[D_DEST_NIC] >>> 0;
    const srcEp = d[D_DEST_ENDPOINT] >>> 0;
    const srcSession = d[D_DEST_SESSION] >>> 0;
    const srcOff = d[D_SRC_OFFSET] >>> 0;
    const cookie = d[D_COOKIE];
    const ls = this.usableLink(destNic);
    if (
      ls !== undefined &&
      (this.rpFreeCount === 0 || ls.pullsOut >= PULL_JOBS_PER_LINK || ls.ctrlCount === CTRL_QUEUE)
    ) {
      // Back-pressure: the descriptor waits at the head of the queue.
      return this.stalled(ctx, destNic);
    }
    const seenAt = (d[D_OPCODE] >>> 16) & DFLAG_TRACE ? traceNow() : 0;
    this.c[NicCounter.remote_pulls]++;
    this.c[ctx.base + EndpointCounter.pulls]++;
    if (ls === undefined) {
      let status: number = MxStatus.ENDPOINT_UNREACHABLE;
      if (destNic === this.nicId) {
        // The source is on this NIC and there is no loopback link: check it as a peer would, copy here.
        const index = d[D_SRC_REGION] >>> 0;
        status = this.pullSourceStatus(srcEp, srcSession, index, d[D_SRC_KEY], srcOff, len);
        if (status === MxStatus.SUCCESS) {
          this.c[NicCounter.remote_pull_bytes] += len;
          const g = this.grant;
          this.startCopy(ctx, g.slot, g.region, g.start, dst, dstOff, len, seenAt, srcEp, srcSession, index);
          return CONSUMED;
        }
      }
      this.c[NicCounter.remote_pull_failures]++;
      this.pullDone(ctx, cookie, 0, status, seenAt);
      return CONSUMED;
    }
    const s = this.rpFree[--this.rpFreeCount];
    const id = (((++this.rpSeq & 0xffffff) << 8) | s) >>> 0;
    this.rpUsed[s] = 1;
    this.rpId[s] = id;
    this.rpEp[s] = ctx.id;
    this.rpSession[s] = ctx.session;
    this.rpCookie[s] = cookie;
    this.rpNic[s] = destNic;
    this.rpSrcEp[s] = srcEp;
    this.rpDst[s] = d[D_DST_REGION];
    this.rpDstOff[s] = dstOff;
    this.rpLen[s] = len;
    this.rpGot[s] = 0;
    this.rpLast[s] = this.now;
    this.rpSeenAt[s] = seenAt;
    ls.pullsOut++;
    const f = this.hdr;
    initFrame(f, FrameType.PullRequest, 0);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, ctx.id);
    setWord(f, F_SRC_SESSION, ctx.session);
    setWord(f, F_DEST_NIC, destNic);
    setWord(f, F_DEST_ENDPOINT, srcEp);
    setWord(f, F_DEST_SESSION, srcSession);
    setWord(f, F_COOKIE, id);
    setWord(f, F_MATCH_HI, d[D_SRC_REGION]);
    setWord(f, F_MATCH_LO, d[D_SRC_KEY]);
    setWord(f, F_AUX0, srcOff);
    setWord(f, F_AUX1, len);
    this.sendHdr(ls);
    this.armWireTimer();
    return CONSUMED;
  }

  private rxPullReply(ls: LinkState, frame: Uint8Array): void {
    this.c[NicCounter.pull_replies_rx]++;
    const id = getWord(frame, F_COOKIE);
    const s = id & (REMOTE_PULL_SLOTS - 1);
    if (
      this.rpUsed[s] !== 1 ||
      this.rpId[s] !== id ||
      this.rpNic[s] !== ls.peerNic ||
      getWord(frame, F_DEST_ENDPOINT) !== this.rpEp[s] ||
      getWord(frame, F_DEST_SESSION) !== this.rpSession[s] ||
      getWord(frame, F_SRC_ENDPOINT) !== this.rpSrcEp[s] ||
      getWord(frame, F_AUX1) !== this.rpLen[s]
    ) {
      this.c[NicCounter.pull_replies_bad]++;
      return;
    }
    const n = getWord(frame, F_LENGTH);
    const st = getWord(frame, F_STATUS);
    if (st !== MxStatus.SUCCESS) {
      if (n !== 0) {
        this.c[NicCounter.pull_replies_bad]++;
        return;
      }
      this.finishPull(s, st > MxStatus.NO_RESOURCES || st === MxStatus.PENDING ? MxStatus.ABORTED : st, null);
      return;
    }
    const got = this.rpGot[s];
    const len = this.rpLen[s];
    // Replies come in order on a link: each must continue exactly where the last one ended.
    if (getWord(frame, F_AUX0) !== got || n > len - got || (n === 0 && len !== 0)) {
      this.c[NicCounter.pull_replies_bad]++;
      return;
    }
    if (n > 0) {
      const t = this.tpt;
      // The destination may have been deregistered (or its endpoint closed) since the descriptor.
      const dst = t.lookup(this.rpDst[s]);
      if (dst < 0 || t.owner[dst] !== this.rpEp[s]) {
        this.finishPull(s, MxStatus.ABORTED, ls);
        return;
      }
      t.copyIn(frame, FRAME_HEADER_BYTES, n, dst, this.rpDstOff[s] + got);
      this.rpGot[s] = got + n;
      this.c[NicCounter.remote_pull_bytes] += n;
      this.c[this.ctxs[this.rpEp[s]].base + EndpointCounter.pull_bytes] += n;
    }
    this.rpLast[s] = this.now;
    if (this.rpGot[s] === len) this.finishPull(s, MxStatus.SUCCESS, null);
  }

  /** Ends remote pull `s` with PULL_DONE(status); `cancel`: tell the peer on that link to stop serving it. */
  private finishPull(s: number, status: number, cancel: LinkState | null): void {
    this.rpUsed[s] = 0;
    this.rpFree[this.rpFreeCount++] = s;
    const ls = this.links.get(this.rpNic[s]);
    if (ls !== undefined && ls.pullsOut > 0) ls.pullsOut--;
    if (cancel?.attached) {
      const f = this.hdr;
      initFrame(f, FrameType.PullRequest, 0);
      setWord(f, F_SRC_NIC, this.nicId);
      setWord(f, F_SRC_ENDPOINT, this.rpEp[s]);
      setWord(f, F_SRC_SESSION, this.rpSession[s]);
      setWord(f, F_DEST_NIC, cancel.peerNic);
      setWord(f, F_DEST_ENDPOINT, this.rpSrcEp[s]);
      setWord(f, F_COOKIE, this.rpId[s]);
      setWord(f, F_STATUS, MxStatus.ABORTED);
      this.sendHdr(cancel);
    }
    if (status !== MxStatus.SUCCESS) this.c[NicCounter.remote_pull_failures]++;
    const ctx = this.ctxs[this.rpEp[s]];
    if (ctx.open && ctx.session === this.rpSession[s])
      this.pullDone(ctx, this.rpCookie[s], this.rpGot[s], status, this.rpSeenAt[s]);
  }

  /** An endpoint closed: its connects and remote pulls end without events; the peers stop serving. */
  private dropWireRequests(ep: number): void {
    for (let s = 0; s < CONNECT_SLOTS; s++)
      if (this.cnUsed[s] === 1 && this.cnEp[s] === ep) this.finishConnect(s, MxStatus.ENDPOINT_CLOSED, 0);
    for (let s = 0; s < REMOTE_PULL_SLOTS; s++)
      if (this.rpUsed[s] === 1 && this.rpEp[s] === ep)
        this.finishPull(s, MxStatus.ENDPOINT_CLOSED, this.links.get(this.rpNic[s]) ?? null);
  }

  // ---- remote PULL: responder side --------------------------------------------------------------

  /**
   * Takes the pull right `index` (presenting `key`) that endpoint `ep` with session `session`
   * armed, for [off, off + len) of what it exposes (window.ts, the exposure table): SUCCESS
   * (this.grant says where to copy from; the right is Busy until endRight) or the MX status of
   * the refusal, with its ErrorReason in this.refusal. The region's own key plays no part: a
   * peer reaches another endpoint's memory only through a right armed for that one message.
   */
  private pullSourceStatus(
    ep: number,
    session: number,
    index: number,
    key: number,
    off: number,
    len: number,
  ): number {
    this.refusal = ErrorReason.UnknownEndpoint;
    if (ep >= this.maxEndpoints) return MxStatus.ENDPOINT_UNKNOWN;
    const owner = this.ctxs[ep];
    if (!owner.open) return MxStatus.ENDPOINT_CLOSED;
    this.refusal = ErrorReason.BadSession;
    if (owner.session !== session >>> 0) return MxStatus.BAD_SESSION;
    const reason = takeExposure(
      owner.w,
      ep,
      index >>> 0,
      key >>> 0,
      off >>> 0,
      len >>> 0,
      this.tpt,
      this.grant,
    );
    this.refusal = reason;
    if (reason === 0) {
      this.c[NicCounter.pull_rights_taken]++;
      return MxStatus.SUCCESS;
    }
    this.c[NicCounter.pull_rights_refused]++;
    // The region went with its endpoint: the puller hears that the peer closed, as MX would say.
    return reason === ErrorReason.UnknownEndpoint ? MxStatus.ENDPOINT_CLOSED : REASON_STATUS[reason];
  }

  /** The transfer under pull right `index` of endpoint `ep` (session `session`) ended: it is spent. */
  private endRight(ep: number, session: number, index: number): void {
    if (index < 0 || ep >= this.maxEndpoints) return;
    const owner = this.ctxs[ep];
    if (owner.open && owner.session === session) endExposure(owner.w, index);
  }

  /** Whether a transfer may copy on under that right: its owner has not revoked it. */
  private rightLive(ep: number, session: number, index: number): boolean {
    const owner = this.ctxs[ep];
    return owner.open && owner.session === session && exposureLive(owner.w, index);
  }

  /** A served pull ends (done, failed, cancelled, its link gone): its right is spent, its job slot freed. */
  private dropJob(ls: LinkState, j: number): void {
    if (ls.jUsed[j] === 0) return;
    this.endRight(ls.jSrcEp[j], ls.jSrcSession[j], ls.jXp[j]);
    ls.freeJob(j);
  }

  private dropJobs(ls: LinkState): void {
    for (let j = 0; j < PULL_JOBS_PER_LINK; j++) this.dropJob(ls, j);
  }

  private rxPullRequest(ls: LinkState, frame: Uint8Array): void {
    this.c[NicCounter.pull_requests_rx]++;
    const id = getWord(frame, F_COOKIE);
    if (getWord(frame, F_STATUS) !== 0) {
      // A cancel: the requester gave up on it.
      for (let j = 0; j < PULL_JOBS_PER_LINK; j++)
        if (ls.jUsed[j] === 1 && ls.jId[j] === id) this.dropJob(ls, j);
      return;
    }
    const reqEp = getWord(frame, F_SRC_ENDPOINT);
    const reqSession = getWord(frame, F_SRC_SESSION);
    const srcEp = getWord(frame, F_DEST_ENDPOINT);
    const srcSession = getWord(frame, F_DEST_SESSION);
    const len = getWord(frame, F_AUX1);
    // A job slot first: a request refused for want of one must not spend its right.
    const j = ls.jobCount < PULL_JOBS_PER_LINK ? ls.jUsed.indexOf(0) : -1;
    const index = getWord(frame, F_MATCH_HI);
    const status =
      j < 0
        ? MxStatus.NO_RESOURCES
        : this.pullSourceStatus(
            srcEp,
            srcSession,
            index,
            getWord(frame, F_MATCH_LO),
            getWord(frame, F_AUX0),
            len,
          );
    if (status !== MxStatus.SUCCESS) {
      this.replyPullError(ls, id, reqEp, reqSession, srcEp, srcSession, len, status);
      return;
    }
    ls.jUsed[j] = 1;
    ls.jobCount++;
    ls.jId[j] = id;
    ls.jReqEp[j] = reqEp;
    ls.jReqSession[j] = reqSession;
    ls.jSrcEp[j] = srcEp;
    ls.jSrcSession[j] = srcSession;
    ls.jXp[j] = index;
    ls.jRegion[j] = this.grant.region;
    ls.jOff[j] = this.grant.start;
    ls.jLen[j] = len;
    ls.jSent[j] = 0;
  }

  private replyPullError(
    ls: LinkState,
    id: number,
    reqEp: number,
    reqSession: number,
    srcEp: number,
    srcSession: number,
    len: number,
    status: number,
  ): void {
    const f = this.hdr;
    initFrame(f, FrameType.PullReply, 0);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_SRC_ENDPOINT, srcEp);
    setWord(f, F_SRC_SESSION, srcSession);
    setWord(f, F_DEST_NIC, ls.peerNic);
    setWord(f, F_DEST_ENDPOINT, reqEp);
    setWord(f, F_DEST_SESSION, reqSession);
    setWord(f, F_COOKIE, id);
    setWord(f, F_STATUS, status);
    setWord(f, F_AUX1, len);
    if (this.sendHdr(ls)) this.c[NicCounter.pull_replies_tx]++;
    else this.c[NicCounter.acks_dropped]++;
  }

  /** Serves `ls`'s jobs in turn, up to PULL_CHUNK bytes this round. Returns whether it sent anything. */
  private serveJobs(ls: LinkState): boolean {
    let budget = PULL_CHUNK;
    let did = false;
    let j = ls.jNext;
    for (let visits = 0; visits < PULL_JOBS_PER_LINK && budget > 0 && ls.jobCount > 0; visits++) {
      if (ls.jUsed[j] === 1) {
        const had = ls.jobCount;
        const sent = this.serveJob(ls, j, Math.min(JOB_ROUND, budget));
        if (sent > 0 || ls.jobCount !== had) did = true;
        if (this.jobRefused) {
          // The link pushes back: this job goes first when it can take frames again.
          ls.jNext = j;
          return did;
        }
        budget -= sent;
      }
      j = (j + 1) % PULL_JOBS_PER_LINK;
    }
    ls.jNext = j;
    return did;
  }

  /** Sends up to `budget` bytes of job j as PULL_REPLY frames; this.jobRefused when the link pushed back. */
  private serveJob(ls: LinkState, j: number, budget: number): number {
    this.jobRefused = false;
    const t = this.tpt;
    const srcEp = ls.jSrcEp[j];
    const owner = this.ctxs[srcEp];
    const slot = t.lookup(ls.jRegion[j]);
    const ownerGone = !owner.open || owner.session !== ls.jSrcSession[j];
    // Looked at before every visit: a right its owner revoked copies nothing more.
    const revoked = !ownerGone && !exposureLive(owner.w, ls.jXp[j]);
    if (ownerGone || revoked || slot < 0 || t.owner[slot] !== srcEp) {
      // Deregistered, revoked or closed mid-transfer: the requester gets an error, never stale bytes.
      if (revoked) this.c[NicCounter.pull_rights_revoked]++;
      this.replyPullError(
        ls,
        ls.jId[j],
        ls.jReqEp[j],
        ls.jReqSession[j],
        srcEp,
        ls.jSrcSession[j],
        ls.jLen[j],
        ownerGone ? MxStatus.ENDPOINT_CLOSED : MxStatus.ABORTED,
      );
      this.dropJob(ls, j);
      return 0;
    }
    const f = this.txFrame;
    const len = ls.jLen[j];
    let sent = 0;
    do {
      const off = ls.jSent[j];
      const n = Math.min(SEND_MAX, len - off);
      initFrame(f, FrameType.PullReply, n);
      setWord(f, F_SRC_NIC, this.nicId);
      setWord(f, F_SRC_ENDPOINT, srcEp);
      setWord(f, F_SRC_SESSION, ls.jSrcSession[j]);
      setWord(f, F_DEST_NIC, ls.peerNic);
      setWord(f, F_DEST_ENDPOINT, ls.jReqEp[j]);
      setWord(f, F_DEST_SESSION, ls.jReqSession[j]);
      setWord(f, F_COOKIE, ls.jId[j]);
      setWord(f, F_AUX0, off);
      setWord(f, F_AUX1, len);
      if (n > 0) t.copyOut(slot, ls.jOff[j] + off, n, f, FRAME_HEADER_BYTES);
      if (!ls.link.send(f.subarray(0, FRAME_HEADER_BYTES + n))) {
        this.c[NicCounter.link_backpressure]++;
        this.jobRefused = true;
        return sent;
      }
      ls.lastTx = this.now;
      ls.jSent[j] = off + n;
      sent += n;
      this.c[NicCounter.frames_tx]++;
      this.c[NicCounter.pull_replies_tx]++;
      this.c[NicCounter.pull_served_bytes] += n;
    } while (ls.jSent[j] < len && sent < budget);
    if (ls.jSent[j] === len) this.dropJob(ls, j);
    return sent;
  }

  // ---- liveness --------------------------------------------------------------------------------

  /** The link to `nic` if requests may go on it: attached, and not found silent a moment ago. */
  private usableLink(nic: number): LinkState | undefined {
    const ls = this.links.get(nic);
    return ls !== undefined && this.now >= ls.silentUntil ? ls : undefined;
  }

  /** ctx's head descriptor waits on the link to `nic` (window, share, queue or back-pressure). */
  private stalled(ctx: EndpointContext, nic: number): number {
    ctx.linkStalled = true;
    if (ctx.stallSince === 0 || ctx.stallNic !== nic) {
      ctx.stallSince = this.now;
      ctx.stallNic = nic;
    }
    // The wire timer watches it: a link that neither talks nor takes frames is a silent peer.
    this.armWireTimer();
    return STALLED;
  }

  /**
   * The peer on `ls` has said nothing for WIRE_TIMEOUT_MS while something of ours on it went
   * overdue: its host stopped or froze, or the network between us did. Everything waiting on
   * the link fails ENDPOINT_UNREACHABLE now, not one request per timeout (queued SENDs would
   * otherwise go out and time out one round after another, or wait forever on a link that no
   * longer takes frames), and for another WIRE_TIMEOUT_MS requests to it fail at once. Any
   * frame from the peer ends that. The link itself stays: the peer may come back.
   */
  private silenceLink(ls: LinkState): void {
    this.c[NicCounter.links_silent]++;
    ls.silentUntil = this.now + WIRE_TIMEOUT_MS;
    this.failLink(ls);
    this.wireActed = true;
  }

  // ---- the wire timer ---------------------------------------------------------------------------

  /** Makes sure the wire timer runs (it stops by itself once nothing waits on another NIC). */
  private armWireTimer(): void {
    if (this.wireTimer !== null) return;
    this.wireTimer = setTimeout(this.onWireTick, WIRE_TICK_MS);
    // In-thread users (tests) must not be kept alive by it.
    this.wireTimer.unref();
  }

  private readonly onWireTick = (): void => {
    this.wireTimer = null;
    this.now = performance.now();
    this.wireActed = false;
    let waiting = false;
    try {
      waiting = this.wireTick();
    } catch {
      this.c[NicCounter.internal_errors]++;
    }
    this.flushRaises();
    if (waiting) this.armWireTimer();
    // Only when it completed or sent something: an idle NIC must stay asleep.
    if (this.wireActed) this.kick();
  };

  /**
   * Completes what waited WIRE_TIMEOUT_MS; sends keepalives for held deliveries (this.wireActed
   * when it did either). Returns whether anything still waits.
   */
  private wireTick(): boolean {
    const now = this.now;
    let waiting = false;
    for (let s = 0; s < CONNECT_SLOTS; s++) {
      if (this.cnUsed[s] !== 1) continue;
      if (now >= this.cnDeadline[s]) {
        this.wireActed = true;
        this.checkSilence(this.links.get(this.cnNic[s]));
        this.finishConnect(s, MxStatus.ENDPOINT_UNREACHABLE, 0);
      } else waiting = true;
    }
    for (let s = 0; s < REMOTE_PULL_SLOTS; s++) {
      if (this.rpUsed[s] !== 1) continue;
      if (now - this.rpLast[s] >= WIRE_TIMEOUT_MS) {
        this.wireActed = true;
        this.c[NicCounter.pull_timeouts]++;
        const ls = this.links.get(this.rpNic[s]);
        this.checkSilence(ls);
        this.finishPull(s, MxStatus.ENDPOINT_UNREACHABLE, ls ?? null);
      } else waiting = true;
    }
    for (let k = 0; k < this.linkList.length; k++) {
      const ls = this.linkList[k];
      for (let i = 0; i < SEND_WINDOW && ls.sCount > 0; i++) {
        if (ls.sUsed[i] === 0) continue;
        if (now >= ls.sDeadline[i]) {
          this.wireActed = true;
          this.checkSilence(ls);
          ls.completeSend(i);
          this.c[NicCounter.send_timeouts]++;
          this.sendDoneTo(
            ls.sEp[i],
            ls.sSession[i],
            ls.sCookie[i],
            ls.sLen[i],
            MxStatus.ENDPOINT_UNREACHABLE,
          );
        } else waiting = true;
      }
    }
    const keepalive = now - this.lastKeepalive >= KEEPALIVE_MS;
    let held = false;
    for (let i = 0; i < this.openCount; i++) {
      const ctx = this.ctxs[this.openIds[i]];
      if (ctx.dqCount > 0 && now - ctx.dqSince[ctx.dqHead] >= HOLD_MS) {
        this.wireActed = true;
        this.expireDeliveries(ctx);
      }
      // Held deliveries keep the timer running (they expire); those from links get keepalives.
      if (ctx.dqCount > 0) held = true;
      for (let q = 0; q < ctx.dqCount; q++) {
        const base = ((ctx.dqHead + q) % DELIVERY_QUEUE) * META_WORDS;
        if (keepalive && ctx.dqMeta[base + M_VIA_LINK] !== 0)
          this.ackDelivery(ctx.dqMeta, base, MxStatus.PENDING, 0);
      }
    }
    if (held && keepalive) {
      this.lastKeepalive = now;
      this.wireActed = true;
    }
    // A descriptor that has waited WIRE_TIMEOUT_MS on a link that neither said anything nor
    // took a frame in that time waits on a silent peer.
    for (let i = 0; i < this.openCount; i++) {
      const ctx = this.ctxs[this.openIds[i]];
      if (ctx.stallSince === 0) continue;
      waiting = true;
      const ls = this.links.get(ctx.stallNic);
      if (ls !== undefined && now - ctx.stallSince >= WIRE_TIMEOUT_MS && now - ls.lastTx >= WIRE_TIMEOUT_MS)
        this.checkSilence(ls);
    }
    for (let k = this.linkList.length - 1; k >= 0; k--) {
      const ls = this.linkList[k];
      if (!ls.silenceDue) continue;
      ls.silenceDue = false;
      this.silenceLink(ls);
    }
    return waiting || held;
  }

  /** Something on `ls` went overdue: if the peer has been quiet as long, it is silent (silenceLink). */
  private checkSilence(ls: LinkState | undefined): void {
    if (ls !== undefined && this.now - ls.lastRx >= WIRE_TIMEOUT_MS) ls.silenceDue = true;
  }

  // ---- the Ethernet port ------------------------------------------------------------------------

  private openEtherPort(): OpenEtherPortReply {
    if (this.port === null) {
      const p = allocEtherPort();
      this.portW = new Int32Array(p);
      this.portU32 = new Uint32Array(p);
      this.portBytes = new Uint8Array(p);
      this.portIntr = new Int32Array(p, PORT_INTR_OFFSET, PORT_INTR_WORDS);
      this.portTxTail = this.portTxSeen = this.portRxHead = 0;
      this.port = p;
    }
    return { port: this.port };
  }

  /** Takes frames the driver queued and puts them on the wire. Returns whether it took any. */
  private serviceEtherTx(): boolean {
    const w = this.portW;
    const head = Atomics.load(w, P_TX_HEAD) >>> 0;
    this.portTxSeen = head;
    let tail = this.portTxTail;
    if (head === tail) return false;
    this.portTxStalled = false;
    let n = 0;
    let bad = false;
    while (tail !== head && n < ETHER_BATCH) {
      const avail = (head - tail) >>> 0;
      if (avail > PORT_RING_BYTES) {
        bad = true;
        break;
      }
      const pos = tail & (PORT_RING_BYTES - 1);
      const len = this.portU32[(PORT_TX_OFFSET + pos) >> 2];
      if (len === RECORD_SKIP) {
        if (PORT_RING_BYTES - pos > avail) {
          bad = true;
          break;
        }
        tail = (tail + PORT_RING_BYTES - pos) >>> 0;
        continue;
      }
      const rec = len <= PORT_RING_BYTES ? recordBytes(len) : 0;
      if (rec === 0 || rec > avail || pos + rec > PORT_RING_BYTES) {
        bad = true;
        break;
      }
      if (len < ETHER_MIN_FRAME || len > ETHER_MAX_FRAME) {
        // A whole record with a length no Ethernet frame has: drop it, keep the ring.
        this.c[NicCounter.ether_bad]++;
        Atomics.add(w, P_STAT_TX_BAD, 1);
      } else if (!this.etherOut(PORT_TX_OFFSET + pos + 4, len)) {
        this.portTxStalled = true;
        break;
      }
      tail = (tail + rec) >>> 0;
      n++;
    }
    if (bad) {
      // Indices or a length word that describe no record: drop everything queued, resynchronise.
      this.c[NicCounter.ether_bad]++;
      Atomics.add(w, P_STAT_TX_BAD, 1);
      tail = head;
    }
    if (tail === this.portTxTail) return false;
    this.portTxTail = tail;
    Atomics.store(w, P_TX_TAIL, tail | 0);
    if (Atomics.load(w, P_TX_WAITING) !== 0) {
      // The driver found the ring full: it may be waiting for room.
      Atomics.store(w, P_TX_WAITING, 0);
      this.portNeedRaise = true;
    }
    return true;
  }

  /**
   * Sends the driver's frame at port byte `off` as an ETHERNET link frame: to the link its
   * destination MAC was learned on, else (broadcast, multicast, unknown) to every link.
   * false: that one link pushes back (the frame stays in the ring).
   */
  private etherOut(off: number, len: number): boolean {
    const b = this.portBytes;
    if (this.linkList.length === 0) {
      this.c[NicCounter.ether_dropped]++;
      Atomics.add(this.portW, P_STAT_TX_DROPPED, 1);
      return true;
    }
    const f = this.txFrame;
    initFrame(f, FrameType.Ethernet, len);
    setWord(f, F_SRC_NIC, this.nicId);
    copyBytes(f, FRAME_HEADER_BYTES, b, off, len);
    const out = f.subarray(0, FRAME_HEADER_BYTES + len);
    if ((b[off] & 1) === 0) {
      const peer = this.macs.lookup((b[off] << 8) | b[off + 1], macLo(b, off + 2), (this.now / 1000) | 0);
      const ls = peer >= 0 ? this.links.get(peer) : undefined;
      if (ls !== undefined) {
        setWord(f, F_DEST_NIC, ls.peerNic);
        if (!ls.link.send(out)) {
          this.c[NicCounter.link_backpressure]++;
          return false;
        }
        this.c[NicCounter.frames_tx]++;
        this.c[NicCounter.ether_tx]++;
        return true;
      }
    }
    // Flood. A link that pushes back loses its copy (a switch drops too): the others go on.
    this.c[NicCounter.ether_flooded]++;
    this.c[NicCounter.ether_tx]++;
    for (let k = 0; k < this.linkList.length; k++) {
      const ls = this.linkList[k];
      setWord(f, F_DEST_NIC, ls.peerNic);
      if (ls.link.send(out)) this.c[NicCounter.frames_tx]++;
      else {
        this.c[NicCounter.link_backpressure]++;
        this.c[NicCounter.ether_dropped]++;
        Atomics.add(this.portW, P_STAT_TX_DROPPED, 1);
      }
    }
    return true;
  }

  /** An ETHERNET frame from a link: learn its source MAC, put it in the port's RX ring. */
  private rxEthernet(ls: LinkState, frame: Uint8Array): void {
    const len = getWord(frame, F_LENGTH);
    if (len < ETHER_MIN_FRAME || len > ETHER_MAX_FRAME) {
      this.c[NicCounter.frames_bad]++;
      return;
    }
    const src = FRAME_HEADER_BYTES + 6;
    // A group address is never a sender's: do not learn it.
    if ((frame[src] & 1) === 0)
      this.macs.learn(
        (frame[src] << 8) | frame[src + 1],
        macLo(frame, src + 2),
        ls.peerNic,
        (this.now / 1000) | 0,
      );
    if (this.port === null) {
      this.c[NicCounter.ether_dropped]++;
      return;
    }
    const w = this.portW;
    const head = ringPut(
      this.portBytes,
      this.portU32,
      PORT_RX_OFFSET,
      this.portRxHead,
      Atomics.load(w, P_RX_TAIL) >>> 0,
      frame,
      FRAME_HEADER_BYTES,
      len,
    );
    if (head < 0) {
      // The driver does not keep up: drop, as a NIC whose receive ring is full does.
      this.c[NicCounter.ether_dropped]++;
      Atomics.add(w, P_STAT_RX_DROPPED, 1);
      return;
    }
    this.portRxHead = head;
    Atomics.store(w, P_RX_HEAD, head | 0);
    this.c[NicCounter.ether_rx]++;
    this.portNeedRaise = true;
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
    if (this.wireTimer) clearTimeout(this.wireTimer);
    this.wireTimer = null;
    for (const cb of this.stopHooks.splice(0)) {
      try {
        cb();
      } catch {
        // A hook's failure must not keep the NIC from stopping.
      }
    }
    for (const ls of this.linkList) {
      ls.attached = false;
      ls.link.close();
    }
    this.links.clear();
    this.linkList.length = 0;
    this.linkInfo.clear();
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
    this.c[NicCounter.wakeups]++;
    if (byTimer) this.c[NicCounter.timer_wakeups]++;
    if (this.backstop) {
      clearTimeout(this.backstop);
      this.backstop = null;
    }
    for (let i = 0; i < this.openCount; i++) Atomics.store(this.ctxs[this.openIds[i]].w, W_NIC_SLEEPING, 0);
    if (this.port !== null) Atomics.store(this.portW, P_NIC_SLEEPING, 0);
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
    if (this.port !== null) Atomics.store(this.portW, P_NIC_SLEEPING, 1);
    // An owner that rang before it could see the flag did not notify: look once more.
    if (this.poll()) {
      for (let i = 0; i < this.openCount; i++) Atomics.store(this.ctxs[this.openIds[i]].w, W_NIC_SLEEPING, 0);
      if (this.port !== null) Atomics.store(this.portW, P_NIC_SLEEPING, 0);
      this.scheduled = true;
      setImmediate(this.runSlice);
      return;
    }
    this.asleep = true;
    this.c[NicCounter.sleeps]++;
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
    if (this.port !== null && !this.portWaiterPending) {
      // The driver's doorbell: it notifies the TX head word when it sees P_NIC_SLEEPING.
      const r = Atomics.waitAsync(this.portW, P_TX_HEAD, this.portTxSeen | 0);
      if (!r.async) changed = true;
      else {
        this.portWaiterPending = true;
        const gen = ++this.portWaiterGen;
        r.value.then(() => {
          if (this.portWaiterGen === gen) this.portWaiterPending = false;
          this.kick();
        });
      }
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
    if (this.portTxStalled) return true;
    for (let k = 0; k < this.linkList.length; k++) {
      const ls = this.linkList[k];
      if (ls.ctrlCount > 0 || ls.jobCount > 0) return true;
    }
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
    this.now = performance.now();
    for (let k = 0; k < this.linkList.length; k++) {
      const ls = this.linkList[k];
      try {
        if (ls.ctrlCount > 0 && this.flushCtrl(ls)) did = true;
        if (ls.jobCount > 0 && this.serveJobs(ls)) did = true;
      } catch {
        // A bug, never a peer's garbage: count it, drop that link's jobs (their requesters time out).
        this.c[NicCounter.internal_errors]++;
        this.dropJobs(ls);
      }
    }
    if (this.port !== null) {
      try {
        if (this.serviceEtherTx()) did = true;
      } catch {
        this.c[NicCounter.internal_errors]++;
        this.portTxTail = Atomics.load(this.portW, P_TX_HEAD) >>> 0;
        Atomics.store(this.portW, P_TX_TAIL, this.portTxTail | 0);
      }
    }
    for (let i = 0; i < this.openCount; i++) {
      const ctx = this.ctxs[this.openIds[i]];
      try {
        if (this.serviceEndpoint(ctx)) did = true;
      } catch {
        // A bug, never an owner's garbage: count it, resynchronise, keep serving the others.
        this.c[NicCounter.internal_errors]++;
        this.stopPull(ctx);
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
    // Set again below if the head descriptor still has to wait (for a link, a window, a slot).
    ctx.linkStalled = false;
    let cons = ctx.sqCons;
    if (prod === cons) return false;
    if ((prod - cons) >>> 0 > SQ_ENTRIES) {
      // Ahead by more than the queue holds, or backwards: garbage. Report once, resynchronise.
      this.c[NicCounter.errors]++;
      this.c[NicCounter.error_bad_index]++;
      this.c[ctx.base + EndpointCounter.errors]++;
      this.c[ctx.base + EndpointCounter.bad_index]++;
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
      ctx.stallSince = 0;
      this.c[NicCounter.descriptors]++;
      this.c[ctx.base + EndpointCounter.descriptors]++;
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
        this.c[NicCounter.nops]++;
        return CONSUMED;
      case Opcode.Pull:
        if ((this.d[D_OPCODE] >>> 16) & DFLAG_REMOTE) return this.execRemotePull(ctx);
        this.execPull(ctx);
        return CONSUMED;
      case Opcode.Send:
        return this.execSend(ctx);
      case Opcode.Connect:
        return this.execConnect(ctx);
      default:
        this.descError(ctx, ErrorReason.UnknownOpcode);
        return CONSUMED;
    }
  }

  /** Refuses the descriptor in this.d with an ERROR event. */
  private descError(ctx: EndpointContext, reason: number, status: number = REASON_STATUS[reason]): void {
    this.c[NicCounter.errors]++;
    this.c[ERROR_REASON_SLOT[reason]]++;
    this.c[ctx.base + EndpointCounter.errors]++;
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
    const dst = t.lookup(d[D_DST_REGION]);
    // The destination first: a descriptor refused for it must not spend a pull right.
    let reason = 0;
    if (dst < 0) reason = ErrorReason.BadRegion;
    else if (t.owner[dst] !== ctx.id || (t.access[dst] & Access.LocalWrite) === 0)
      reason = ErrorReason.Permission;
    else if (!t.inBounds(dst, dstOff, len)) reason = ErrorReason.OutOfBounds;
    if (reason !== 0) {
      this.descError(ctx, reason);
      return;
    }
    if ((d[D_OPCODE] >>> 16) & DFLAG_EXPOSURE) {
      // Another endpoint's memory: only through the pull right it armed for this message.
      const srcEp = d[D_DEST_ENDPOINT] >>> 0;
      const srcSession = d[D_DEST_SESSION] >>> 0;
      const index = d[D_SRC_REGION] >>> 0;
      const status = this.pullSourceStatus(srcEp, srcSession, index, d[D_SRC_KEY], srcOff, len);
      if (status !== MxStatus.SUCCESS) {
        this.descError(ctx, this.refusal, status);
        return;
      }
      this.c[NicCounter.pulls]++;
      this.c[ctx.base + EndpointCounter.pulls]++;
      const g = this.grant;
      this.startCopy(ctx, g.slot, g.region, g.start, dst, dstOff, len, seenAt, srcEp, srcSession, index);
      return;
    }
    // A copy between two regions of this endpoint: its own key is enough.
    const src = t.lookup(d[D_SRC_REGION]);
    if (src < 0) reason = ErrorReason.BadRegion;
    else if (t.owner[src] !== ctx.id || (t.access[src] & (Access.LocalRead | Access.RemoteRead)) === 0)
      reason = ErrorReason.Permission;
    else if (t.key[src] !== d[D_SRC_KEY] >>> 0) reason = ErrorReason.BadKey;
    else if (!t.inBounds(src, srcOff, len)) reason = ErrorReason.OutOfBounds;
    if (reason !== 0) {
      this.descError(ctx, reason);
      return;
    }
    this.c[NicCounter.pulls]++;
    this.c[ctx.base + EndpointCounter.pulls]++;
    this.startCopy(ctx, src, d[D_SRC_REGION] >>> 0, srcOff, dst, dstOff, len, seenAt, 0, 0, -1);
  }

  /**
   * The DMA engine copies the PULL in this.d (both ranges checked) from region `src` (slot; id
   * `srcId`): now, or a chunk per round. `xp` ≥ 0: the pull right of endpoint (`xpEp`,
   * `xpSession`) it copies under, spent when the copy ends.
   */
  private startCopy(
    ctx: EndpointContext,
    src: number,
    srcId: number,
    srcOff: number,
    dst: number,
    dstOff: number,
    len: number,
    seenAt: number,
    xpEp: number,
    xpSession: number,
    xp: number,
  ): void {
    const d = this.d;
    if (len <= PULL_CHUNK) {
      this.tpt.copy(src, srcOff, dst, dstOff, len);
      this.endRight(xpEp, xpSession, xp);
      this.roundBytes += len;
      this.countPulled(ctx, len);
      this.pullDone(ctx, d[D_COOKIE], len, MxStatus.SUCCESS, seenAt);
      return;
    }
    // Large: a chunk per round, this endpoint's later descriptors waiting (completions stay in order).
    ctx.pulling = true;
    ctx.pullXp = xp;
    ctx.pullXpEp = xpEp;
    ctx.pullXpSession = xpSession;
    ctx.pullSrcId = srcId;
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
    // Regions are immutable while their id resolves; one that went away ends the pull, and so
    // does a right its owner revoked (looked at before every chunk).
    const src = t.lookup(ctx.pullSrcId);
    const dst = t.lookup(ctx.pullDstId);
    const revoked = ctx.pullXp >= 0 && !this.rightLive(ctx.pullXpEp, ctx.pullXpSession, ctx.pullXp);
    if (src < 0 || dst < 0 || t.owner[dst] !== ctx.id || revoked) {
      if (revoked) this.c[NicCounter.pull_rights_revoked]++;
      this.stopPull(ctx);
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
      this.stopPull(ctx);
      this.pullDone(ctx, ctx.pullCookie, ctx.pullLen, MxStatus.SUCCESS, ctx.pullSeenAt);
    }
  }

  /** Ends ctx's chunked pull, if any: its pull right is spent. */
  private stopPull(ctx: EndpointContext): void {
    if (!ctx.pulling) return;
    ctx.pulling = false;
    this.endRight(ctx.pullXpEp, ctx.pullXpSession, ctx.pullXp);
    ctx.pullXp = -1;
  }

  private countPulled(ctx: EndpointContext, n: number): void {
    this.c[NicCounter.pull_bytes] += n;
    this.c[NicCounter.pull_chunks]++;
    this.c[ctx.base + EndpointCounter.pull_bytes] += n;
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
    const ls = this.usableLink(destNic);
    if (ls === undefined) {
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
      // Held: the wire timer ends the hold after HOLD_MS if the receiver never makes room.
      else this.armWireTimer();
      return CONSUMED;
    }
    if (!ls.canSend(d[D_DEST_ENDPOINT])) {
      // The window, or the destination endpoint's share of it, is full: this one waits in the
      // queue. Other destinations' SENDs (other endpoints' queues) go on.
      this.c[ls.sCount === SEND_WINDOW ? NicCounter.send_window_full : NicCounter.send_dest_full]++;
      return this.stalled(ctx, destNic);
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
    setWord(f, F_TAG, ls.nextTag());
    if (len > 0) t.copyOut(src, srcOff, len, f, FRAME_HEADER_BYTES);
    if (!ls.link.send(f.subarray(0, FRAME_HEADER_BYTES + len))) {
      // The wire pushes back: this descriptor stays at the head of the queue and is retried.
      this.c[NicCounter.link_backpressure]++;
      return this.stalled(ctx, destNic);
    }
    ls.lastTx = this.now;
    ls.pushSend(ctx.id, ctx.session, cookie, len, d[D_DEST_ENDPOINT], this.now + WIRE_TIMEOUT_MS);
    this.armWireTimer();
    this.c[NicCounter.frames_tx]++;
    this.countSend(ctx, len);
    return CONSUMED;
  }

  private countSend(ctx: EndpointContext, len: number): void {
    this.roundBytes += len;
    this.c[NicCounter.sends]++;
    this.c[NicCounter.send_bytes] += len;
    this.c[ctx.base + EndpointCounter.sends]++;
    this.c[ctx.base + EndpointCounter.send_bytes] += len;
  }

  private sendDone(
    ctx: EndpointContext,
    cookie: number,
    len: number,
    status: number,
    reason = reasonOfStatus(status),
  ): void {
    if (status !== MxStatus.SUCCESS) this.c[NicCounter.send_failures]++;
    const ev = this.ev;
    ev.fill(0);
    ev[E_TYPE] = EventType.SendDone | (status << 16);
    ev[E_COOKIE] = cookie;
    ev[E_LENGTH] = len;
    ev[E_REASON] = reason;
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
      this.c[NicCounter.delivery_rejected]++;
      this.c[ctx.base + EndpointCounter.delivery_rejected]++;
      return MxStatus.NO_RESOURCES;
    }
    const s = (ctx.dqHead + ctx.dqCount) % DELIVERY_QUEUE;
    ctx.dqMeta.set(m, s * META_WORDS);
    ctx.dqSince[s] = this.now;
    let buf = ctx.dqBuf[s];
    if (buf === null) buf = ctx.dqBuf[s] = new Uint8Array(SEND_MAX);
    const len = m[M_LENGTH] >>> 0;
    if (srcSlot >= 0) this.tpt.copyOut(srcSlot, srcOff, len, buf, 0);
    else copyBytes(buf, 0, srcBytes!, srcBytesOff, len);
    ctx.dqCount++;
    this.c[NicCounter.delivery_queued]++;
    this.c[ctx.base + EndpointCounter.delivery_queued]++;
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
    this.c[NicCounter.recvs]++;
    this.c[NicCounter.recv_bytes] += len;
    this.c[ctx.base + EndpointCounter.recvs]++;
    this.c[ctx.base + EndpointCounter.recv_bytes] += len;
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
  private completeSend(status: number, reason = reasonOfStatus(status)): void {
    const m = this.dv;
    if (m[M_VIA_LINK] !== 0) {
      this.ackDelivery(m, 0, status, reason);
      return;
    }
    const ep = m[M_SRC_EP] >>> 0;
    const ctx = ep < this.maxEndpoints ? this.ctxs[ep] : null;
    // The sender may have closed (or closed and reopened) meanwhile: then nobody waits for it.
    if (ctx?.open && ctx.session === m[M_SRC_SESSION] >>> 0)
      this.sendDone(ctx, m[M_COOKIE], m[M_LENGTH] >>> 0, status, reason);
  }

  /**
   * ctx's oldest held delivery waited HOLD_MS for receive space: it fails NO_RESOURCES
   * (HoldExpired), and so does every later one from the same sender still held — placing
   * those would leave a hole in that sender's sequence — while other senders' keep their
   * place. Repeats while the new oldest one has waited as long.
   */
  private expireDeliveries(ctx: EndpointContext): void {
    const meta = ctx.dqMeta;
    while (ctx.dqCount > 0 && this.now - ctx.dqSince[ctx.dqHead] >= HOLD_MS) {
      const h = ctx.dqHead * META_WORDS;
      const nic = meta[h + M_SRC_NIC];
      const ep = meta[h + M_SRC_EP];
      const session = meta[h + M_SRC_SESSION];
      let kept = 0;
      for (let q = 0; q < ctx.dqCount; q++) {
        const s = (ctx.dqHead + q) % DELIVERY_QUEUE;
        const b = s * META_WORDS;
        if (meta[b + M_SRC_NIC] === nic && meta[b + M_SRC_EP] === ep && meta[b + M_SRC_SESSION] === session) {
          this.loadQueued(ctx, s);
          this.c[NicCounter.delivery_expired]++;
          this.c[ctx.base + EndpointCounter.delivery_expired]++;
          this.completeSend(MxStatus.NO_RESOURCES, ErrorReason.HoldExpired);
          continue;
        }
        // Kept, moved up to close the gap (staging buffers are swapped, not reallocated).
        const t = (ctx.dqHead + kept) % DELIVERY_QUEUE;
        if (t !== s) {
          meta.copyWithin(t * META_WORDS, b, b + META_WORDS);
          const buf = ctx.dqBuf[t];
          ctx.dqBuf[t] = ctx.dqBuf[s];
          ctx.dqBuf[s] = buf;
          ctx.dqSince[t] = ctx.dqSince[s];
        }
        kept++;
      }
      ctx.dqCount = kept;
    }
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
    this.c[NicCounter.events]++;
    this.c[ctx.base + EndpointCounter.events]++;
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
      this.c[NicCounter.event_backlog]++;
      this.c[ctx.base + EndpointCounter.event_backlog]++;
      return true;
    }
    this.c[NicCounter.event_drops]++;
    this.c[ctx.base + EndpointCounter.event_drops]++;
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
      this.c[NicCounter.interrupts]++;
      this.c[ctx.base + EndpointCounter.interrupts]++;
      if (raiseInterrupt(ctx.intr)) this.c[NicCounter.interrupt_kicks]++;
    }
    this.raiseCount = 0;
    if (this.portNeedRaise) {
      this.portNeedRaise = false;
      this.c[NicCounter.interrupts]++;
      if (raiseInterrupt(this.portIntr)) this.c[NicCounter.interrupt_kicks]++;
    }
  }
}

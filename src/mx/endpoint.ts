/**
 * An MX endpoint: matching, ordering, eager and rendezvous protocols, completion and
 * blocking — the MX library proper, the same code for a guest (bypass) and for a native
 * process. Below it, a driver (driver.ts) did the set-up; from then on this code talks only
 * to the NIC window and to co-resident channels, never to the driver, the backend or the
 * hypervisor.
 *
 * Protocol on a co-resident channel (records of channel.ts):
 *   EAGER  match, length, payload inline; aux0 = sync id (issend: the receiver answers
 *          with NOTIFY when it matched), aux1 = sender sequence
 *   RNDV   match, message length, no payload; aux0 = sync id (the send completes on
 *          NOTIFY), aux1 = sequence, aux2 = exposure index, aux3 = its key, aux4 = 0 (the
 *          pull right armed for this message in our window: window.ts, the exposure table)
 *   NOTIFY aux0 = sync id, aux1 = bytes transferred, aux2 = MX status
 * Tracing (trace.ts): a traced EAGER or RNDV record has FLAG_TRACED in its flags and its
 * trace sequence number in aux5; a traced PULL descriptor has DFLAG_TRACE and its PULL_DONE
 * carries the NIC's stamps in E_EXTRA. With tracing off each stage costs one boolean check.
 * A large message stays in the sender's registered memory until the receiver matches it
 * and asks its NIC to PULL it (one copy, receiver-driven, as in Open-MX); then the
 * receiver tells the sender with NOTIFY.
 *
 * Progress happens inside API calls (as in Open-MX: no progression thread). Blocking calls
 * spin on progress for a short budget, then sleep on the endpoint's interrupt page; senders
 * and the NIC kick it only while its owner says it sleeps.
 */

import { getRandomValues } from "node:crypto";
import { CR_FLAG_NO_PAYLOAD as FLAG_NO_PAYLOAD, RECORD_HEADER_BYTES } from "../myrixen/channel-abi.js";
import {
  DRIVER_EVENT_CONNECT,
  DRIVER_EVENT_DISCONNECT,
  type DriverChannel,
  type MxDriver,
  MxDriverError,
} from "../myrixen/driver-abi.js";
import { MxStatus } from "../nic/status.js";
import {
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
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  EXPOSURE_ENTRIES,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  I_SEQ,
  I_SLEEPING,
  Opcode,
  RECV_BYTES,
  RECV_OFFSET,
  raiseInterrupt,
  SEND_MAX,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_SLEEPING,
  W_RQ_CONS,
  W_SQ_CONS,
  W_SQ_PROD,
  WIRE_TIMEOUT_MS,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../nic/window.js";
import { LaneReader, LaneWriter } from "./channel.js";
import { DEFAULT_RNDV_THRESHOLD, MX_INFINITE, MxError, MxReturn } from "./codes.js";
import {
  BROADCAST_MAC,
  type EtherHub,
  EtherLink,
  frameWord as etherWord,
  initEtherFrame,
  MxoeType,
  MxoeWord,
  macString,
  PAYLOAD_AT,
  setFrameWord as setEtherWord,
} from "./ether.js";
import {
  COOKIE_CONNECT,
  COOKIE_SEND,
  DEFAULT_STAGING_SLOTS,
  sendFailureText,
  NR_ID_MASK as WIRE_ID_MASK,
  NR_ID_SHIFT as WIRE_ID_SHIFT,
  NR_RNDV_BYTES as WIRE_RNDV_BYTES,
  NR_TYPE_MASK as WIRE_TYPE_MASK,
  SendStaging as WireStaging,
  nicRecordAux0 as wireAux0,
} from "./nic-records.js";
import {
  BouncePool,
  MEMORY_KNOB,
  RegCache,
  type RegCounters,
  type RegEntry,
  type RegLimits,
  regLimits,
} from "./regcache.js";
import { SPLIT_ENDPOINT_BASE } from "./split-driver.js";
import { DEFAULT_TRACE_RECORDS, FLAG_TRACED, TraceBuffer, TraceStage, traceId, traceNow } from "./trace.js";

const REC_EAGER = 1;
const REC_RNDV = 2;
const REC_NOTIFY = 3;
/** Wire only (wire.ts): a liveness probe; its SEND_DONE tells whether the peer is still there. */
const REC_PING = 4;
const REC_MAX = REC_NOTIFY;

/** How sends to a peer travel. */
const VIA_NONE = 0;
/** A co-resident channel (channel.ts): two threads, no NIC. */
const VIA_CHANNEL = 1;
/** NIC SEND descriptors (wire.ts): a peer on another NIC, over a link. */
const VIA_WIRE = 2;
/** MX over Ethernet through the guest's netfront (ether.ts): the split path. */
const VIA_ETHER = 3;
/** Record flag (local): a rendezvous that came over Ethernet is pulled over Ethernet. */
const FLAG_ETHER = 0x80;
/** A connect over Ethernet repeats its broadcast this often until answered. */
const CONNECT_RETRY_MS = 100;
/** A closing endpoint resends its unacknowledged Ethernet frames for at most this long (ms). */
const LINGER_MS = 2000;
/** While some peer is reached over Ethernet, sleeps are cut into slices this short (ms). */
const MIXED_SLICE_MS = 1;
/** A SEND without a completion to report (NOTIFY, PING). */
const NO_SLOT = 0xffff;
/** Records held back because an earlier one of the same peer has not arrived yet, at most. */
const MAX_HELD = 4096;
/** A peer we wait on (a rendezvous or synchronous send) is probed after this long without news. */
const PROBE_AFTER_MS = 250;

/** How long a blocking call spins on progress before it sleeps, µs (machine-limits.md). */
export const DEFAULT_SPIN_US = 20;
/** Polls of a blocking wait before it looks at the clock (a spinning peer answers well within them). */
const FAST_POLLS = 256;
/** A sleeping endpoint re-checks at least this often, so no peer can make it sleep forever. */
const SLEEP_SLICE_MS = 100;

/** The address of a connected peer endpoint (mx_endpoint_addr_t). */
export class MxAddress {
  /** @internal */ writer?: LaneWriter;
  /** @internal */ reader?: LaneReader;
  /** @internal */ peerIntr?: Int32Array;
  /** @internal */ channelId = -1;
  /** @internal */ sendSeq = 0;
  /** @internal */ backlog: MxRequest[] = [];
  /** @internal */ dead?: string;
  /** @internal How sends to this peer travel (VIA_*). */ via = VIA_NONE;
  /** @internal The sequence number the next message from this peer must carry (MX keeps a pair's order). */
  recvSeq = 0;
  /** @internal Messages that arrived ahead of an earlier one (only when the peer's path changed). */
  held: Held[] | undefined;
  /** @internal Whether a connect checked this peer's key (a peer that only sent to us is not). */
  verified = false;
  /** @internal When we last heard from the peer or last probed it (ms, performance.now()). */
  lastNews = 0;
  /** @internal A probe is in flight. */
  probing = false;
  /** @internal Why a message to this peer failed (a hole in its sequence), once one has. */
  holed: string | undefined;
  /** @internal How sends went before Ethernet was chosen (VIA_CHANNEL, VIA_WIRE or VIA_NONE). */
  fastVia = VIA_NONE;
  /** @internal The peer's frame stream over Ethernet, once resolved (ether.ts). */
  eth: EtherLink | undefined;
  /** @internal The peer said it is on the split path: reach it over Ethernet. */
  peerSplit = false;
  /** @internal An eager message arriving in several frames. */
  rxEager: { seq: number; buf: Uint8Array; got: number } | undefined;
  /** @internal Control frames waiting for window room: (type, id, offset, msgSeq, length) fives. */
  ctlQueue: number[] | undefined;
  /** @internal Rendezvous data the peer pulls from us over Ethernet, in order. */
  serving: { req: MxRequest; pullId: number; off: number; end: number }[] | undefined;
  /** A value the application may attach (mx_set_endpoint_addr_context). */
  context: unknown;

  constructor(
    /** @internal The endpoint this address was connected on. */
    readonly owner: unknown,
    readonly nic: number,
    readonly endpoint: number,
    readonly session: number,
  ) {}

  toString(): string {
    return `nic ${this.nic} endpoint ${this.endpoint}`;
  }
}

/** mx_status_t. */
export class MxStatusInfo {
  code: number = MxStatus.PENDING;
  source: MxAddress | undefined;
  matchHi = 0;
  matchLo = 0;
  /** The sender's original length. */
  msgLength = 0;
  /** Bytes actually moved (min of message and receive buffer). */
  xferLength = 0;
  context: unknown;
  /** Why the request failed, when the library knows more than the status code says. */
  reason: string | undefined = undefined;

  /** The 64-bit match value. */
  get matchInfo(): bigint {
    return (BigInt(this.matchHi) << 32n) | BigInt(this.matchLo);
  }

  get codeName(): string {
    return mxStatusName(this.code);
  }
}

export function mxStatusName(code: number): string {
  for (const [k, v] of Object.entries(MxStatus)) if (v === code) return `MX_STATUS_${k}`;
  return `MX_STATUS_UNKNOWN(${code})`;
}

type RequestKind = "send" | "recv";

/**
 * mx_request_t: a send or a receive in flight. It is its own status (`req.status === req`),
 * so a message costs one object, not two.
 */
export class MxRequest extends MxStatusInfo {
  done = false;
  /** @internal */ dest?: MxAddress;
  /** @internal */ buffer: Uint8Array;
  /** @internal */ matchMaskHi = 0xffffffff;
  /** @internal */ matchMaskLo = 0xffffffff;
  /** @internal */ sync = false;
  /** @internal */ syncId = 0;
  /** @internal */ rndv = false;
  /** @internal A whole bounce buffer (its size class) standing in for `buffer` in this domain's memory. */
  bounce?: Uint8Array;
  /** @internal The registration this request holds while in flight (regcache.ts). */
  reg: RegEntry | undefined = undefined;
  /** @internal */ completedByUser = false;
  /** @internal Message id while traced (trace.ts), else 0. */
  traceId = 0;
  /** @internal The pull right armed for this rendezvous send (exposure index), or -1. */
  xp = -1;
  /** @internal Completion waits for the NIC to let go of the right: the status it will get. */
  xpCode = -1;
  xpXfer = 0;

  constructor(
    readonly kind: RequestKind,
    buffer: Uint8Array,
    context: unknown,
  ) {
    super();
    this.buffer = buffer;
    this.context = context;
  }

  /** mx_status_t of this request (the request itself). */
  get status(): MxStatusInfo {
    return this;
  }
}

interface Unexpected {
  source: MxAddress;
  matchHi: number;
  matchLo: number;
  length: number;
  /** Eager: the payload, copied out of the channel. */
  data?: Uint8Array;
  syncId: number;
  rndv: boolean;
  region: number;
  key: number;
  offset: number;
  traceId: number;
  /** Record flags (FLAG_ETHER: pull it over Ethernet). */
  flags: number;
}

/** A message kept until the ones before it arrive (its eager payload copied out). */
interface Held {
  seq: number;
  rndv: boolean;
  flags: number;
  matchHi: number;
  matchLo: number;
  length: number;
  syncId: number;
  region: number;
  key: number;
  offset: number;
  traceSeq: number;
  data: Uint8Array | undefined;
}

interface PendingConnect {
  done: boolean;
  status: number;
  session: number;
  /** REJECTED: how long the peer's NIC refuses us (ms), after too many wrong keys. */
  retryAfter?: number;
  /** Over Ethernet: who answered, and whether it is on the split path. */
  mac?: Uint8Array;
  peerSplit?: boolean;
}

/** A rendezvous we pull over Ethernet: DATA frames land straight in the receive buffer. */
interface EtherPull {
  recv: MxRequest;
  source: MxAddress;
  syncId: number;
  xfer: number;
  got: number;
}

interface PendingPull {
  recv: MxRequest;
  source: MxAddress;
  syncId: number;
  xfer: number;
  /**
   * The source went away while the NIC pulled: the receive fails with this status, but only
   * when the NIC reports the pull done — until then it may still write into the buffer, which
   * must not be handed back (to the user or the bounce pool) under a live copy.
   */
  failed?: number;
}

export interface EndpointCounters extends RegCounters {
  sends: number;
  recvs: number;
  eager: number;
  rndv: number;
  pulls: number;
  unexpected: number;
  /** Interrupts this endpoint raised on a peer that had announced it would sleep. */
  kicks: number;
  /** Times this endpoint announced it would sleep (a peer may kick only after one). */
  sleeps: number;
  progress: number;
  channelErrors: number;
  nicErrors: number;
  bounces: number;
  /** Records sent and received through the NIC (peers on other NICs). */
  wireSends: number;
  wireRecvs: number;
  /** Messages that arrived ahead of their turn and waited (a peer changing paths). */
  held: number;
  /** Liveness probes sent to peers we were waiting on. */
  probes: number;
}

export interface EndpointOptions {
  /** MX_ANY_ENDPOINT (default) or a specific id. */
  endpointId?: number;
  key: number;
  /** Eager up to this many bytes; rendezvous above (default 32 KiB). */
  rndvThreshold?: number;
  spinUs?: number;
  /** This domain's memory: buffers in it are registered in place; others are bounce-copied. */
  memory?: SharedArrayBuffer;
  /** Stamp each message's stages into a trace buffer (true, or its capacity in records). */
  trace?: boolean | number;
  /** The guest's MX-over-Ethernet hub (netfront): the split path, and the fallback. */
  ether?: EtherHub;
  /** Start on the split path (every peer over Ethernet). */
  split?: boolean;
}

const u32 = (n: number) => n >>> 0;

function checkMatch(hi: number, lo: number, mhi: number, mlo: number): void {
  if ((u32(hi) & ~u32(mhi)) !== 0 || (u32(lo) & ~u32(mlo)) !== 0)
    throw new MxError("MX_BAD_MATCH_MASK", "match info has bits outside the match mask");
}

function checkBuffer(buf: unknown, what: string): Uint8Array {
  if (!(buf instanceof Uint8Array))
    throw new MxError("MX_BAD_SEG_LIST", `${what}: the buffer must be a Uint8Array`);
  return buf;
}

/** An open MX endpoint. */
export class MxEndpoint {
  readonly endpointId: number;
  readonly session: number;
  readonly nicId: number;
  readonly key: number;
  /** The path the endpoint's own traffic takes now: "native", "bypass" or "split". */
  get path(): string {
    return this.split ? "split" : this.fastPath;
  }
  /** Why this endpoint is on the split path although the library wanted the fast one, if it is. */
  fallbackReason: string | undefined;
  /** The path of its driver (what `switchPath("bypass")` returns to). */
  private readonly fastPath: string;
  /** Every peer is reached over Ethernet (ether.ts), the driver domain in the middle. */
  private split = false;
  private readonly hub: EtherHub | undefined;
  private readonly etherPeers: MxAddress[] = [];
  private readonly etherPulls = new Map<number, EtherPull>();
  private readonly etherScratch = new Uint8Array(PAYLOAD_AT);
  readonly counters: EndpointCounters = {
    sends: 0,
    recvs: 0,
    eager: 0,
    rndv: 0,
    pulls: 0,
    unexpected: 0,
    kicks: 0,
    sleeps: 0,
    progress: 0,
    channelErrors: 0,
    nicErrors: 0,
    bounces: 0,
    registrations: 0,
    deregistrations: 0,
    regCacheHits: 0,
    regCacheEvictions: 0,
    regionsCached: 0,
    bytesCached: 0,
    bouncePooledBytes: 0,
    wireSends: 0,
    wireRecvs: 0,
    held: 0,
    probes: 0,
  };
  closed = false;
  /** Stages are being stamped into `traceBuffer` (see enableTrace). */
  tracing = false;
  /** The trace buffer (kept after disableTrace, so it can be read). */
  traceBuffer: TraceBuffer | undefined;
  private traceSeq = 0;
  private windowF64: Float64Array | undefined;

  private readonly window: Int32Array;
  private readonly windowBytes: Uint8Array;
  private readonly intr: Int32Array;
  private readonly rndvThreshold: number;
  private readonly spinUs: number;
  private readonly memory?: SharedArrayBuffer;
  private readonly peers: MxAddress[] = [];
  /** Peers in `peers` that died since it was last compacted. */
  private deadPeers = 0;
  private readonly peerIndex = new Map<string, MxAddress>();
  private readonly posted: MxRequest[] = [];
  private readonly unexpected: Unexpected[] = [];
  private readonly completed: MxRequest[] = [];
  private reapedInQueue = 0;
  private readonly waitingSync = new Map<number, MxRequest>();
  private readonly pulls = new Map<number, PendingPull>();
  /** Registrations of message memory, reused across messages (regcache.ts). */
  private readonly regs: RegCache;
  private readonly bouncePool: BouncePool;
  /** The driver registers memory with a NIC (the split driver has nothing to register). */
  private readonly registers: boolean;
  private nextId = 1;
  /** Our exposure table (window.ts): pull rights for our rendezvous sends, one per message. */
  private readonly xpTable: Int32Array;
  private readonly xpFree = new Int32Array(EXPOSURE_ENTRIES);
  private xpFreeCount = EXPOSURE_ENTRIES;
  private readonly xpKeys = new Uint32Array(64);
  private xpKeyAt = 64;
  /** Sends whose completion waits for the NIC to stop copying under their revoked right. */
  private readonly xpRevoking: MxRequest[] = [];
  private sqProd = 0;
  private eqCons = 0;
  private rqCons = 0;
  /** Eager payloads leaving through the NIC (opened with the first wire send). */
  private staging: WireStaging | undefined;
  /** Why the staging area could not be opened (the last attempt), for the sends that fail. */
  private stagingError: string | undefined;
  private readonly connects = new Map<number, PendingConnect>();
  /** The peer of the last wire record: consecutive records mostly come from one peer. */
  private lastWirePeer: MxAddress | undefined;
  /** Some peer is reached through the NIC: its records arrive as events, so poll them on every progress. */
  private usesWire = false;
  private wakeupPending = false;

  constructor(
    private readonly driver: MxDriver,
    opts: EndpointOptions,
  ) {
    if (!Number.isInteger(opts.key) || opts.key < 0 || opts.key > 0xffffffff)
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        `endpoint key must be a 32-bit unsigned integer, got ${String(opts.key)}`,
      );
    const t = opts.rndvThreshold ?? DEFAULT_RNDV_THRESHOLD;
    if (!Number.isInteger(t) || t < 0 || t > 64 * 1024)
      throw new MxError("MX_BAD_PARAM_VAL", `rndvThreshold must be an integer in 0..65536, got ${String(t)}`);
    this.rndvThreshold = t;
    this.spinUs = opts.spinUs ?? DEFAULT_SPIN_US;
    this.memory = opts.memory;
    this.key = opts.key >>> 0;
    this.fastPath = driver.path;
    this.hub = opts.ether;
    this.nicId = driver.nicId;
    let ep: ReturnType<MxDriver["openEndpoint"]>;
    try {
      ep = driver.openEndpoint(opts.endpointId ?? 0xffffffff, this.key);
    } catch (e) {
      throw asMxError(e, "MX_BAD_ENDPOINT");
    }
    this.endpointId = ep.endpointId;
    this.session = ep.session;
    this.window = new Int32Array(ep.window);
    this.windowBytes = new Uint8Array(ep.window);
    this.intr = new Int32Array(ep.intr);
    this.xpTable = new Int32Array(ep.window, EXPOSURE_OFFSET, EXPOSURE_ENTRIES * EXPOSURE_WORDS);
    for (let i = 0; i < EXPOSURE_ENTRIES; i++) this.xpFree[i] = EXPOSURE_ENTRIES - 1 - i;
    this.sqProd = Atomics.load(this.window, W_SQ_PROD) >>> 0;
    this.eqCons = Atomics.load(this.window, W_EQ_CONS) >>> 0;
    this.rqCons = Atomics.load(this.window, W_RQ_CONS) >>> 0;
    const limits = regLimits(opts.memory?.byteLength ?? 64 << 20);
    this.regs = new RegCache(driver, this.endpointId, limits, this.counters);
    this.bouncePool = new BouncePool(driver, this.regs, limits.bouncePoolBytes, this.counters);
    this.registers = driver.path !== "split";
    if (opts.trace) this.enableTrace(opts.trace === true ? DEFAULT_TRACE_RECORDS : opts.trace);
    if (this.hub) {
      this.hub.attach(this.endpointId, {
        onFrame: (f, type) => this.onEtherFrame(f, type),
        afterPoll: () => this.afterEtherPoll(),
      });
      this.split = opts.split === true || driver.path === "split";
    } else if (opts.split) {
      throw new MxError(
        "MX_NO_DEV",
        "the split path needs a network device (netfront); this domain has none",
      );
    }
  }

  // ---- tracing --------------------------------------------------------------------------------

  /** Starts stamping messages into a fresh trace buffer of `capacity` records (default 65536). */
  enableTrace(capacity: number = DEFAULT_TRACE_RECORDS): TraceBuffer {
    this.traceBuffer = new TraceBuffer(capacity);
    this.windowF64 ??= new Float64Array(this.window.buffer);
    this.tracing = true;
    return this.traceBuffer;
  }

  /** Stops stamping; the buffer stays readable. */
  disableTrace(): void {
    this.tracing = false;
  }

  get address(): { nic: number; endpoint: number } {
    return { nic: this.nicId, endpoint: this.endpointId };
  }

  // ---- connections ----------------------------------------------------------------------

  /** mx_connect: resolves a peer endpoint, checking its key. Connecting twice returns the same address. */
  connect(nic: number, endpoint: number, key: number, timeoutMs: number = 2 * WIRE_TIMEOUT_MS): MxAddress {
    this.checkOpen();
    for (const [v, what] of [
      [nic, "nic"],
      [endpoint, "endpoint"],
      [key, "key"],
    ] as const)
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff)
        throw new MxError(
          "MX_BAD_PARAM_VAL",
          `connect: ${what} must be a 32-bit unsigned integer, got ${String(v)}`,
        );
    const known = this.peerIndex.get(`${nic}:${endpoint}`);
    if (known && !known.dead && known.verified) return known;
    // A split-only endpoint (ours or the peer's) is reached over Ethernet, key checked by its owner.
    if (this.fastPath === "split" || endpoint >= SPLIT_ENDPOINT_BASE)
      return this.connectEther(nic, endpoint, key >>> 0, 0, timeoutMs);
    if (nic !== this.nicId) return this.connectWire(nic, endpoint, key >>> 0, timeoutMs);
    let conn: ReturnType<MxDriver["connect"]>;
    try {
      conn = this.driver.connect(this.endpointId, nic, endpoint, key >>> 0);
    } catch (e) {
      throw asMxError(e, "MX_CONNECTION_FAILED");
    }
    const addr = this.addPeer(conn.peerNic, conn.peerEndpoint, conn.peerSession);
    addr.verified = true;
    if (conn.channel) this.attachChannel(addr, conn.channel);
    // A same-NIC peer without a channel is still reachable: the NIC delivers locally.
    else this.setFastVia(addr, VIA_WIRE);
    if (this.split) this.resolveEther(addr, timeoutMs);
    return addr;
  }

  /**
   * mx_connect to an endpoint on another NIC: the NICs check the key between themselves
   * (CONNECT descriptor, window.ts); neither backend is asked. Blocks, progressing, until the
   * answer or `timeoutMs`.
   */
  private connectWire(nic: number, endpoint: number, key: number, timeoutMs: number): MxAddress {
    const id = this.newId();
    const pending: PendingConnect = { done: false, status: MxStatus.PENDING, session: 0 };
    this.connects.set(id, pending);
    try {
      const b = this.sqSlot(true);
      const w = this.window;
      w[b + D_OPCODE] = Opcode.Connect;
      w[b + D_COOKIE] = COOKIE_CONNECT | id;
      w[b + D_SRC_KEY] = key;
      w[b + D_DEST_NIC] = nic;
      w[b + D_DEST_ENDPOINT] = endpoint;
      this.sqPost();
      this.block(() => pending.done, timeoutMs);
    } finally {
      this.connects.delete(id);
    }
    const where = `nic ${nic} endpoint ${endpoint}`;
    switch (pending.done ? pending.status : MxStatus.TIMEOUT) {
      case MxStatus.SUCCESS: {
        const old = this.peerIndex.get(`${nic}:${endpoint}`);
        if (old && !old.dead && old.session !== pending.session)
          this.failPeer(old, "the peer endpoint was reopened", MxStatus.ENDPOINT_CLOSED);
        const addr = this.addPeer(nic, endpoint, pending.session);
        addr.verified = true;
        this.setFastVia(addr, VIA_WIRE);
        if (this.split) this.resolveEther(addr, timeoutMs);
        return addr;
      }
      case MxStatus.BAD_KEY:
        throw new MxError("MX_BAD_CONNECTION_KEY", `${where} refused the key 0x${key.toString(16)}`);
      case MxStatus.REJECTED:
        throw new MxError(
          "MX_BUSY",
          `${where} refuses connections from this endpoint for ${pending.retryAfter ?? 0} ms more: too many wrong keys (retry then, with the key its owner opened it with)`,
        );
      case MxStatus.ENDPOINT_UNKNOWN:
      case MxStatus.ENDPOINT_CLOSED:
        throw new MxError("MX_CONNECTION_FAILED", `${where}: no such endpoint is open`);
      case MxStatus.TIMEOUT:
        throw new MxError("MX_TIMEOUT", `${where} did not answer within ${timeoutMs} ms`);
      default:
        throw new MxError(
          "MX_CONNECTION_FAILED",
          `${where} is unreachable (${mxStatusName(pending.status)}): no live link from NIC ${this.nicId} to NIC ${nic}`,
        );
    }
  }

  /** mx_disconnect: forgets a peer; its pending sends complete with MX_STATUS_ENDPOINT_CLOSED. */
  disconnect(addr: MxAddress): void {
    // Kept in the index, dead: connecting again continues the pair's sequence numbers.
    this.failPeer(addr, "disconnected", MxStatus.ENDPOINT_CLOSED);
  }

  private addPeer(nic: number, endpoint: number, session: number): MxAddress {
    const k = `${nic}:${endpoint}`;
    const old = this.peerIndex.get(k);
    if (old && !old.dead) return old;
    const a = new MxAddress(this, nic, endpoint, session);
    if (old && old.session === session) {
      // The same peer endpoint again (after mx_disconnect): its side kept counting.
      a.sendSeq = old.sendSeq;
      a.recvSeq = old.recvSeq;
    }
    a.lastNews = performance.now();
    this.peers.push(a);
    this.peerIndex.set(k, a);
    return a;
  }

  private attachChannel(addr: MxAddress, ch: DriverChannel): void {
    if (addr.writer && addr.channelId === ch.channelId) return;
    addr.channelId = ch.channelId;
    addr.writer = new LaneWriter(ch.channel, ch.side);
    addr.reader = new LaneReader(ch.channel, (1 - ch.side) as 0 | 1, REC_MAX);
    addr.peerIntr = new Int32Array(ch.peerIntr);
    addr.fastVia = VIA_CHANNEL;
    this.recomputeVia(addr);
  }

  /** Ethernet if either side is on the split path (and the peer's MAC is known), else the fast way. */
  private recomputeVia(peer: MxAddress): void {
    peer.via = (this.split || peer.peerSplit) && peer.eth !== undefined ? VIA_ETHER : peer.fastVia;
    if (peer.fastVia === VIA_WIRE) this.usesWire = true;
  }

  private setFastVia(peer: MxAddress, via: number): void {
    if (peer.fastVia === VIA_NONE) peer.fastVia = via;
    this.recomputeVia(peer);
  }

  // ---- sends and receives -----------------------------------------------------------------

  /** mx_isend with the 64-bit match value as two 32-bit words (no BigInt on the hot path). */
  isend(buffer: Uint8Array, dest: MxAddress, matchHi: number, matchLo: number, context?: unknown): MxRequest {
    return this.send(buffer, dest, matchHi, matchLo, context, false);
  }

  /** mx_issend: completes only once the receiver has matched the message. */
  issend(
    buffer: Uint8Array,
    dest: MxAddress,
    matchHi: number,
    matchLo: number,
    context?: unknown,
  ): MxRequest {
    return this.send(buffer, dest, matchHi, matchLo, context, true);
  }

  private send(
    buffer: Uint8Array,
    dest: MxAddress,
    matchHi: number,
    matchLo: number,
    context: unknown,
    sync: boolean,
  ): MxRequest {
    this.checkOpen();
    checkBuffer(buffer, "isend");
    if (!(dest instanceof MxAddress) || dest.owner !== this)
      throw new MxError(
        "MX_BAD_ADDR_LIST",
        "isend: destination is not an address connected on this endpoint",
      );
    const req = new MxRequest("send", buffer, context);
    req.dest = dest;
    req.status.matchHi = u32(matchHi);
    req.status.matchLo = u32(matchLo);
    req.status.msgLength = buffer.length;
    req.status.source = dest;
    req.sync = sync;
    req.rndv = buffer.length > this.rndvThreshold;
    this.counters.sends++;
    if (this.tracing) {
      this.traceSeq = (this.traceSeq + 1) >>> 0 || 1;
      req.traceId = traceId(this.nicId, this.endpointId, this.traceSeq);
      this.traceBuffer!.record(req.traceId, TraceStage.Posted, traceNow());
    }
    if (dest.dead) {
      req.reason = `this peer is disconnected: ${dest.dead}`;
      this.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return req;
    }
    if (dest.via === VIA_NONE) {
      this.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return req;
    }
    if (req.rndv && !this.prepareRndv(req)) return req;
    if (dest.backlog.length > 0 || !this.trySend(req)) dest.backlog.push(req);
    return req;
  }

  /** Hands the send to its peer's path; false if that path is full right now (it is retried in order). */
  private trySend(req: MxRequest): boolean {
    const via = req.dest!.via;
    return via === VIA_CHANNEL
      ? this.trySendChannel(req)
      : via === VIA_WIRE
        ? this.trySendWire(req)
        : this.trySendEther(req);
  }

  /** Writes the send's record into the channel; false if the lane is full right now. */
  private trySendChannel(req: MxRequest): boolean {
    const dest = req.dest!;
    const w = dest.writer!;
    if (req.rndv && !this.expose(req)) return false;
    const payload = req.rndv ? 0 : req.buffer.length;
    const at = w.reserve(payload);
    if (at < 0) return false;
    const words = w.words;
    const i = at >>> 2;
    if (req.sync || req.rndv) {
      req.syncId = this.newId();
      this.waitingSync.set(req.syncId, req);
    }
    words[i + 1] = (req.rndv ? REC_RNDV : REC_EAGER) | ((req.rndv ? FLAG_NO_PAYLOAD : 0) << 16);
    words[i + 2] = req.status.matchHi;
    words[i + 3] = req.status.matchLo;
    words[i + 4] = req.buffer.length;
    words[i + 5] = req.syncId;
    words[i + 6] = dest.sendSeq++;
    if (req.rndv) {
      words[i + 7] = req.xp;
      words[i + 8] = this.xpTable[req.xp * EXPOSURE_WORDS + X_KEY];
      words[i + 9] = 0;
      this.counters.rndv++;
    } else {
      if (payload > 0) copyInto(w.bytes, at + RECORD_HEADER_BYTES, req.buffer, 0, payload);
      this.counters.eager++;
    }
    if (this.tracing && req.traceId !== 0) {
      // Stamped before the commit: the receiver may see the record the moment it is published.
      words[i + 1] |= FLAG_TRACED << 16;
      words[i + 10] = req.traceId % 0x100000000;
      this.traceBuffer!.record(req.traceId, req.rndv ? TraceStage.RndvSent : TraceStage.Written, traceNow());
    }
    w.commit();
    if (raiseInterrupt(dest.peerIntr!)) this.counters.kicks++;
    // An eager send is complete once its data is in the channel (MX may complete eager sends locally).
    if (!req.sync && !req.rndv) this.complete(req, MxStatus.SUCCESS, req.buffer.length);
    return true;
  }

  /**
   * Posts the send's record as a NIC SEND (wire.ts): eager data through a staging slot, a
   * rendezvous as its 16-byte announcement. false if the send queue or the staging slots are
   * full right now.
   */
  private trySendWire(req: MxRequest): boolean {
    const dest = req.dest!;
    if (this.sqFree() === 0) return false;
    let st = this.staging;
    if (st === undefined) {
      st = this.staging = this.openStaging();
      if (st === undefined) {
        // No memory or registration left for the staging area: this send cannot leave.
        req.reason = this.stagingError;
        this.complete(req, MxStatus.NO_RESOURCES, 0);
        this.counters.nicErrors++;
        return true;
      }
    }
    if (req.rndv && !this.expose(req)) return false;
    const slot = st.take(req);
    if (slot < 0) return false;
    const at = st.offsetOf(slot);
    let len: number;
    if (req.rndv) {
      const b = st.bytes;
      putWord(b, at, req.buffer.length);
      putWord(b, at + 4, req.xp);
      putWord(b, at + 8, this.xpTable[req.xp * EXPOSURE_WORDS + X_KEY]);
      putWord(b, at + 12, 0);
      len = WIRE_RNDV_BYTES;
      this.counters.rndv++;
    } else {
      len = req.buffer.length;
      if (len > 0) copyInto(st.bytes, at, req.buffer, 0, len);
      this.counters.eager++;
    }
    if (req.sync || req.rndv) {
      req.syncId = this.newId();
      this.waitingSync.set(req.syncId, req);
    }
    const aux1 = dest.sendSeq;
    dest.sendSeq = (dest.sendSeq + 1) >>> 0;
    const w = this.window;
    const b = this.sqSlot(false);
    w[b + D_OPCODE] = Opcode.Send;
    w[b + D_COOKIE] = COOKIE_SEND | slot;
    w[b + D_SRC_REGION] = st.regionId;
    w[b + D_SRC_OFFSET] = at;
    w[b + D_LENGTH] = len;
    w[b + D_DEST_NIC] = dest.nic;
    w[b + D_DEST_ENDPOINT] = dest.endpoint;
    w[b + D_DEST_SESSION] = dest.session;
    w[b + D_MATCH_HI] = req.status.matchHi;
    w[b + D_MATCH_LO] = req.status.matchLo;
    w[b + D_AUX0] = wireAux0(req.rndv ? REC_RNDV : REC_EAGER, 0, req.syncId);
    w[b + D_AUX1] = aux1;
    this.sqPost();
    this.counters.wireSends++;
    return true;
  }

  /**
   * The staging area for eager sends through the NIC, sized to the domain (a 1 MiB guest
   * cannot give 32 slots of 32 KiB): an eighth of its memory at most, fewer slots if that
   * fails (idle registrations and pooled bounce buffers are given back first), at least one.
   */
  private openStaging(): WireStaging | undefined {
    const ram = this.memory?.byteLength ?? 64 << 20;
    let slots = Math.max(1, Math.min(DEFAULT_STAGING_SLOTS, Math.floor(ram / 8 / SEND_MAX)));
    for (;;) {
      try {
        return new WireStaging(this.driver, this.endpointId, slots);
      } catch (e) {
        if (slots > 1) slots >>= 1;
        else if (!this.regs.evictIdle() && !this.bouncePool.shrink()) {
          this.stagingError = `the staging area for messages through the NIC (${SEND_MAX} bytes) could not be set up: ${(e as Error).message}; ${MEMORY_KNOB}`;
          return undefined;
        }
      }
    }
  }

  /** A payload-less wire record (NOTIFY, PING): `slotOwner` gets the SEND_DONE, if any. */
  private postWireControl(peer: MxAddress, type: number, id: number, aux1: number, matchHi: number): void {
    const w = this.window;
    const b = this.sqSlot(true);
    w[b + D_OPCODE] = Opcode.Send;
    w[b + D_COOKIE] = COOKIE_SEND | NO_SLOT;
    w[b + D_DEST_NIC] = peer.nic;
    w[b + D_DEST_ENDPOINT] = peer.endpoint;
    w[b + D_DEST_SESSION] = peer.session;
    w[b + D_MATCH_HI] = matchHi;
    w[b + D_AUX0] = wireAux0(type, 0, id);
    w[b + D_AUX1] = aux1;
    this.sqPost();
    this.counters.wireSends++;
  }

  /**
   * A rendezvous send's data in registered memory of this domain (bounce-copied if it is not
   * there), held until the send completes. false: the request failed with the reason.
   */
  private prepareRndv(req: MxRequest): boolean {
    try {
      if (!this.inMemory(req.buffer)) {
        req.bounce = this.bouncePool.take(req.buffer.length);
        req.bounce.set(req.buffer);
        this.counters.bounces++;
      }
      if (this.registers) req.reg = this.regs.acquire(req.bounce ?? req.buffer);
      return true;
    } catch (e) {
      req.reason = `isend of ${req.buffer.length} bytes: ${(e as Error).message}`;
      this.complete(req, MxStatus.NO_RESOURCES, 0);
      return false;
    }
  }

  // ---- pull rights (window.ts, the exposure table) ----------------------------------------------
  //
  // A rendezvous names an entry of our exposure table armed for that one message, never our
  // region's key: our NIC lets the receiver pull it once, and we revoke it when the send ends.

  /**
   * Arms a pull right for the rendezvous send's payload (once; it stays armed if the record
   * has to wait for room). false: all EXPOSURE_ENTRIES are in use, the send waits.
   */
  private expose(req: MxRequest): boolean {
    if (req.xp >= 0) return true;
    if (this.xpFreeCount === 0) return false;
    // prepareRndv registered the data (the cache entry may cover more: the right does not).
    const r = req.reg!;
    const i = this.xpFree[--this.xpFreeCount];
    const x = this.xpTable;
    const b = i * EXPOSURE_WORDS;
    // In window.ts's order: the range, a fresh key, then the state that makes it takeable.
    Atomics.store(x, b + X_REGION, r.regionId);
    Atomics.store(x, b + X_OFFSET, (req.bounce ?? req.buffer).byteOffset - r.start);
    Atomics.store(x, b + X_LENGTH, req.buffer.length);
    Atomics.store(x, b + X_KEY, this.freshKey());
    Atomics.store(x, b + X_STATE, ExposureState.Armed);
    req.xp = i;
    return true;
  }

  /**
   * Revokes the send's right as it completes with (code, xfer). false: the NIC is still
   * copying under it — the send completes once the NIC lets go (our buffer is read until then).
   */
  private unexpose(req: MxRequest, code: number, xfer: number): boolean {
    if (req.xpCode >= 0) return false;
    const x = this.xpTable;
    const at = req.xp * EXPOSURE_WORDS + X_STATE;
    let st = Atomics.compareExchange(x, at, ExposureState.Armed, ExposureState.Free);
    if (st === ExposureState.Busy)
      st = Atomics.compareExchange(x, at, ExposureState.Busy, ExposureState.Revoking);
    if (st === ExposureState.Busy || st === ExposureState.Revoking) {
      req.xpCode = code;
      req.xpXfer = xfer;
      this.xpRevoking.push(req);
      return false;
    }
    this.freeRight(req);
    return true;
  }

  private freeRight(req: MxRequest): void {
    const b = req.xp * EXPOSURE_WORDS;
    Atomics.store(this.xpTable, b + X_STATE, ExposureState.Free);
    Atomics.store(this.xpTable, b + X_KEY, 0);
    this.xpFree[this.xpFreeCount++] = req.xp;
    req.xp = -1;
  }

  /** Completes the sends whose revoked rights the NIC has let go of. */
  private finishRevokes(): void {
    const list = this.xpRevoking;
    for (let i = list.length - 1; i >= 0; i--) {
      const req = list[i];
      const st = Atomics.load(this.xpTable, req.xp * EXPOSURE_WORDS + X_STATE);
      if (st === ExposureState.Busy || st === ExposureState.Revoking) continue;
      list.splice(i, 1);
      this.freeRight(req);
      const code = req.xpCode;
      req.xpCode = -1;
      this.complete(req, code, req.xpXfer);
    }
  }

  /** A nonzero random key, from a batch drawn 64 at a time (one getRandomValues per 64 messages). */
  private freshKey(): number {
    let k = 0;
    while (k === 0) {
      if (this.xpKeyAt === this.xpKeys.length) {
        getRandomValues(this.xpKeys);
        this.xpKeyAt = 0;
      }
      k = this.xpKeys[this.xpKeyAt++];
    }
    return k;
  }

  /** mx_irecv with match value and mask as 32-bit word pairs. */
  irecv(
    buffer: Uint8Array,
    matchHi: number,
    matchLo: number,
    maskHi: number,
    maskLo: number,
    context?: unknown,
  ): MxRequest {
    this.checkOpen();
    checkBuffer(buffer, "irecv");
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    const req = new MxRequest("recv", buffer, context);
    req.status.matchHi = u32(matchHi);
    req.status.matchLo = u32(matchLo);
    req.matchMaskHi = u32(maskHi);
    req.matchMaskLo = u32(maskLo);
    this.counters.recvs++;
    // Unexpected messages first, in arrival order. (Messages still in a channel are matched
    // against the posted queue, this receive included, when progress reads them: same result.)
    for (let i = 0; i < this.unexpected.length; i++) {
      const u = this.unexpected[i];
      if (
        (u.matchHi & req.matchMaskHi) >>> 0 === req.status.matchHi &&
        (u.matchLo & req.matchMaskLo) >>> 0 === req.status.matchLo
      ) {
        this.unexpected.splice(i, 1);
        this.deliverUnexpected(req, u);
        return req;
      }
    }
    this.posted.push(req);
    return req;
  }

  private deliverUnexpected(req: MxRequest, u: Unexpected): void {
    req.status.source = u.source;
    req.status.matchHi = u.matchHi;
    req.status.matchLo = u.matchLo;
    req.status.msgLength = u.length;
    req.traceId = u.traceId;
    if (u.rndv) {
      this.startPull(req, u.source, u.region, u.key, u.offset, u.length, u.syncId, u.flags);
      return;
    }
    const xfer = Math.min(u.length, req.buffer.length);
    if (xfer > 0) req.buffer.set(u.data!.subarray(0, xfer));
    if (u.traceId !== 0 && this.tracing) this.traceBuffer!.record(u.traceId, TraceStage.Copied, traceNow());
    if (u.syncId !== 0) this.sendNotify(u.source, u.syncId, xfer, MxStatus.SUCCESS);
    this.complete(req, xfer < u.length ? MxStatus.TRUNCATED : MxStatus.SUCCESS, xfer);
  }

  // ---- completion -----------------------------------------------------------------------------

  /** mx_test: if the request is done, returns its status and frees it; otherwise undefined. */
  test(req: MxRequest): MxStatusInfo | undefined {
    this.checkRequest(req);
    if (!req.done) this.progress();
    return req.done ? this.reap(req) : undefined;
  }

  /**
   * mx_wait: blocks until the request completes or `timeoutMs` passes (MX_INFINITE = 0:
   * forever). Returns the status, or undefined on timeout or mx_wakeup.
   */
  wait(req: MxRequest, timeoutMs: number = MX_INFINITE): MxStatusInfo | undefined {
    this.checkRequest(req);
    // The common case — the peer answers within a few hundred polls — reads no clock and
    // allocates nothing.
    for (let i = 0; i < FAST_POLLS; i++) {
      if (req.done) return this.reap(req);
      this.progress();
    }
    if (req.done || this.block(() => req.done, timeoutMs)) return this.reap(req);
    return undefined;
  }

  /** mx_test_any: the first completed request whose match value fits (info, mask). */
  testAny(matchHi: number, matchLo: number, maskHi: number, maskLo: number): MxStatusInfo | undefined {
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    this.progress();
    const r = this.findCompleted(matchHi, matchLo, maskHi, maskLo);
    return r ? this.reap(r) : undefined;
  }

  waitAny(
    timeoutMs: number,
    matchHi: number,
    matchLo: number,
    maskHi: number,
    maskLo: number,
  ): MxStatusInfo | undefined {
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    let found: MxRequest | undefined;
    const ok = this.block(() => {
      found = this.findCompleted(matchHi, matchLo, maskHi, maskLo);
      return found !== undefined;
    }, timeoutMs);
    return ok && found ? this.reap(found) : undefined;
  }

  /** mx_ipeek: some completed request, not yet reaped (the caller then tests it). */
  ipeek(): MxRequest | undefined {
    this.progress();
    return this.firstCompleted();
  }

  peek(timeoutMs: number = MX_INFINITE): MxRequest | undefined {
    return this.block(() => this.firstCompleted() !== undefined, timeoutMs)
      ? this.firstCompleted()
      : undefined;
  }

  /** mx_iprobe: is an unexpected message matching (info, mask) waiting? Does not consume it. */
  iprobe(matchHi: number, matchLo: number, maskHi: number, maskLo: number): MxStatusInfo | undefined {
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    this.progress();
    return this.probeStatus(matchHi, matchLo, maskHi, maskLo);
  }

  probe(
    timeoutMs: number,
    matchHi: number,
    matchLo: number,
    maskHi: number,
    maskLo: number,
  ): MxStatusInfo | undefined {
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    let s: MxStatusInfo | undefined;
    this.block(() => (s = this.probeStatus(matchHi, matchLo, maskHi, maskLo)) !== undefined, timeoutMs);
    return s;
  }

  /** mx_cancel: removes an unmatched receive (true) — sends and matched receives cannot be cancelled. */
  cancel(req: MxRequest): boolean {
    this.checkRequest(req);
    if (req.kind === "send") throw new MxError("MX_CANCEL_NOT_SUPPORTED", "a send cannot be cancelled");
    const i = this.posted.indexOf(req);
    if (i < 0) return false;
    this.posted.splice(i, 1);
    this.complete(req, MxStatus.CANCELLED, 0);
    return true;
  }

  /** mx_wakeup: the next (or current) blocking call on this endpoint returns without a result. */
  wakeup(): void {
    this.wakeupPending = true;
    Atomics.add(this.intr, I_SEQ, 1);
    Atomics.notify(this.intr, I_SEQ);
  }

  /** Promise variant of wait for programs that keep an event loop: sleeps with Atomics.waitAsync. */
  async waitAsync(req: MxRequest, timeoutMs: number = MX_INFINITE): Promise<MxStatusInfo | undefined> {
    this.checkRequest(req);
    const deadline = timeoutMs === MX_INFINITE ? Number.POSITIVE_INFINITY : performance.now() + timeoutMs;
    for (;;) {
      this.progress();
      if (req.done) return this.reap(req);
      const left = deadline - performance.now();
      if (left <= 0) return undefined;
      const seq = Atomics.load(this.intr, I_SEQ);
      Atomics.store(this.intr, I_SLEEPING, 1);
      this.counters.sleeps++;
      this.progress(true);
      if (req.done) {
        Atomics.store(this.intr, I_SLEEPING, 0);
        return this.reap(req);
      }
      const r = Atomics.waitAsync(this.intr, I_SEQ, seq, Math.min(left, SLEEP_SLICE_MS));
      if (r.async) await r.value;
      Atomics.store(this.intr, I_SLEEPING, 0);
    }
  }

  private findCompleted(mh: number, ml: number, mmh: number, mml: number): MxRequest | undefined {
    for (const r of this.completed) {
      if (
        !r.completedByUser &&
        (r.status.matchHi & mmh) >>> 0 === u32(mh) &&
        (r.status.matchLo & mml) >>> 0 === u32(ml)
      )
        return r;
    }
    return undefined;
  }

  private probeStatus(mh: number, ml: number, mmh: number, mml: number): MxStatusInfo | undefined {
    for (const u of this.unexpected) {
      if ((u.matchHi & mmh) >>> 0 === u32(mh) && (u.matchLo & mml) >>> 0 === u32(ml)) {
        const s = new MxStatusInfo();
        s.code = MxStatus.SUCCESS;
        s.source = u.source;
        s.matchHi = u.matchHi;
        s.matchLo = u.matchLo;
        s.msgLength = u.length;
        s.xferLength = u.length;
        return s;
      }
    }
    return undefined;
  }

  /**
   * Hands a completed request to the user. The completion queue (for test_any, ipeek) is
   * cleaned lazily: a reaped entry is skipped there and swept out in batches.
   */
  private reap(req: MxRequest): MxStatusInfo {
    if (!req.completedByUser) {
      req.completedByUser = true;
      if (this.tracing && req.traceId !== 0 && req.kind === "recv")
        this.traceBuffer!.record(req.traceId, TraceStage.Completed, traceNow());
      if (++this.reapedInQueue >= 256) this.compactCompleted();
    }
    return req;
  }

  private compactCompleted(): void {
    let k = 0;
    for (const r of this.completed) if (!r.completedByUser) this.completed[k++] = r;
    this.completed.length = k;
    this.reapedInQueue = 0;
  }

  private firstCompleted(): MxRequest | undefined {
    for (const r of this.completed) if (!r.completedByUser) return r;
    return undefined;
  }

  private complete(req: MxRequest, code: number, xfer: number): void {
    if (req.done) return;
    // A rendezvous send's pull right ends with it; its buffer is ours again only once it has.
    if (req.xp >= 0 && !this.unexpose(req, code, xfer)) return;
    req.status.code = code;
    req.status.xferLength = xfer;
    req.done = true;
    if (req.reg !== undefined) {
      this.regs.release(req.reg);
      req.reg = undefined;
    }
    if (req.bounce) {
      if (req.kind === "recv" && xfer > 0) req.buffer.set(req.bounce.subarray(0, xfer));
      this.bouncePool.give(req.bounce);
      req.bounce = undefined;
    }
    this.completed.push(req);
  }

  /**
   * Blocks until `ready()` holds: spins on progress for spinUs, then sleeps on the
   * interrupt page (announcing it, then re-checking, so no kick is lost), in slices.
   */
  private block(ready: () => boolean, timeoutMs: number): boolean {
    if (!Number.isFinite(timeoutMs) && timeoutMs !== Number.POSITIVE_INFINITY)
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        `timeout must be a number of ms (0 = MX_INFINITE), got ${String(timeoutMs)}`,
      );
    const infinite = timeoutMs === MX_INFINITE || timeoutMs === Number.POSITIVE_INFINITY;
    const start = performance.now();
    const deadline = infinite ? Number.POSITIVE_INFINITY : start + timeoutMs;
    this.progress();
    if (ready()) return true;
    const spinEnd = start + this.spinUs / 1000;
    for (let i = 0; ; i++) {
      if (this.wakeupPending) {
        this.wakeupPending = false;
        return false;
      }
      this.progress();
      if (ready()) return true;
      if ((i & 63) === 63 && performance.now() >= spinEnd) break;
    }
    const intr = this.intr;
    for (;;) {
      const now = performance.now();
      if (now >= deadline) return false;
      const seq = Atomics.load(intr, I_SEQ);
      Atomics.store(intr, I_SLEEPING, 1);
      this.counters.sleeps++;
      this.progress(true);
      if (ready() || this.wakeupPending) {
        Atomics.store(intr, I_SLEEPING, 0);
        if (this.wakeupPending) {
          this.wakeupPending = false;
          return ready();
        }
        return true;
      }
      if (this.hub !== undefined && this.split) {
        // Our peers reach us over Ethernet: netback's event channel wakes us. A peer still
        // writing to an old channel kicks the interrupt page, hence the short slices.
        Atomics.store(intr, I_SLEEPING, 0);
        this.hub.wait(Math.min(deadline - now, MIXED_SLICE_MS));
      } else {
        const slice = this.etherPeers.length > 0 ? MIXED_SLICE_MS : SLEEP_SLICE_MS;
        Atomics.wait(intr, I_SEQ, seq, Math.min(deadline - now, slice));
      }
      Atomics.store(intr, I_SLEEPING, 0);
      // Woken: spin again briefly, the sender usually has more for us.
      const again = performance.now() + this.spinUs / 1000;
      for (let i = 0; ; i++) {
        this.progress();
        if (ready()) return true;
        if ((i & 63) === 63 && performance.now() >= again) break;
      }
    }
  }

  // ---- progress -------------------------------------------------------------------------------

  /** Moves everything that can move: channel records in, NIC events, backlogged sends out. */
  progress(full = false): void {
    if (this.closed) return;
    // Rare conditions (a peer gone, a NIC event with nothing pulling) are looked at on every
    // 32nd idle poll only: a spinning wait then touches one cache line per peer.
    const sweep = full || (++this.counters.progress & 31) === 0 || this.pulls.size > 0;
    // Peers that died are dropped from the poll list (a survivor of many peers stays fast).
    if (this.deadPeers > 0) this.compactPeers();
    const peers = this.peers;
    let moved = false;
    for (let p = 0; p < peers.length; p++) {
      const peer = peers[p];
      const rd = peer.reader;
      if (peer.dead) continue;
      if (!rd) {
        if (peer.backlog.length > 0) this.flushBacklog(peer);
        continue;
      }
      while (rd.next()) {
        this.onRecord(peer, rd);
        rd.release();
        moved = true;
      }
      // Space freed: a writer that found the lane full and went to sleep wakes.
      if (moved && rd.takeSpaceWanted()) {
        Atomics.add(peer.peerIntr!, I_SEQ, 1);
        Atomics.notify(peer.peerIntr!, I_SEQ);
      }
      if (rd.broken) {
        this.counters.channelErrors++;
        this.failPeer(
          peer,
          `peer wrote garbage into the channel: ${rd.broken}`,
          MxStatus.ENDPOINT_UNREACHABLE,
        );
        continue;
      }
      if (peer.backlog.length > 0) this.flushBacklog(peer);
      if (!sweep || moved) continue;
      if (rd.closed || peer.writer!.closed) {
        this.failPeer(peer, "the peer endpoint went away", MxStatus.ENDPOINT_CLOSED);
      }
    }
    if (sweep && this.xpRevoking.length > 0) this.finishRevokes();
    if (sweep || this.usesWire) {
      this.pollEvents();
      if (sweep && this.waitingSync.size > 0 && this.usesWire) this.probeSilentPeers(performance.now());
    }
    // Ethernet: every time while it carries traffic; else now and then (every 256th poll, and
    // before sleeping), to answer connects and path changes without taxing the fast path.
    if (
      this.hub !== undefined &&
      (this.split || this.etherPeers.length > 0 || full || (this.counters.progress & 255) === 0)
    )
      this.hub.poll();
  }

  private flushBacklog(peer: MxAddress): void {
    while (peer.backlog.length > 0) {
      if (!this.trySend(peer.backlog[0])) return;
      peer.backlog.shift();
    }
  }

  private onRecord(peer: MxAddress, rd: LaneReader): void {
    const type = rd.type;
    if (type === REC_NOTIFY) {
      this.onNotify(rd.aux[0], rd.aux[1], rd.aux[2]);
      return;
    }
    const a = rd.aux;
    this.deliverRecord(
      peer,
      type === REC_RNDV,
      rd.flags,
      rd.matchHi,
      rd.matchLo,
      rd.length,
      a[0],
      a[1],
      a[2],
      a[3],
      a[4],
      a[5],
      rd.bytes,
      rd.payload,
    );
  }

  /** A NOTIFY: the receiver matched our synchronous send, or pulled our rendezvous. */
  private onNotify(syncId: number, xfer: number, status: number): void {
    const req = this.waitingSync.get(syncId);
    if (!req) {
      this.counters.channelErrors++;
      return;
    }
    this.waitingSync.delete(syncId);
    this.complete(
      req,
      status === MxStatus.TRUNCATED ? MxStatus.SUCCESS : status,
      Math.min(xfer, req.buffer.length),
    );
  }

  /**
   * An EAGER or RNDV record from `peer`, whichever path brought it: matched against the
   * posted receives in sequence order (a record ahead of its turn waits in `peer.held`).
   */
  private deliverRecord(
    peer: MxAddress,
    rndv: boolean,
    flags: number,
    mh: number,
    ml: number,
    length: number,
    syncId: number,
    seq: number,
    region: number,
    key: number,
    offset: number,
    traceSeq: number,
    bytes: Uint8Array | null,
    payload: number,
  ): void {
    if (seq !== peer.recvSeq) {
      this.hold(
        peer,
        rndv,
        flags,
        mh,
        ml,
        length,
        syncId,
        seq,
        region,
        key,
        offset,
        traceSeq,
        bytes,
        payload,
      );
      return;
    }
    peer.recvSeq = (seq + 1) >>> 0;
    this.matchRecord(
      peer,
      rndv,
      flags,
      mh,
      ml,
      length,
      syncId,
      region,
      key,
      offset,
      traceSeq,
      bytes,
      payload,
    );
    if (peer.held !== undefined && peer.held.length > 0) this.releaseHeld(peer);
  }

  private hold(
    peer: MxAddress,
    rndv: boolean,
    flags: number,
    mh: number,
    ml: number,
    length: number,
    syncId: number,
    seq: number,
    region: number,
    key: number,
    offset: number,
    traceSeq: number,
    bytes: Uint8Array | null,
    payload: number,
  ): void {
    // Behind us: a duplicate, which no path of ours produces. A peer that runs far ahead is broken.
    if (((seq - peer.recvSeq) | 0) < 0 || (peer.held?.length ?? 0) >= MAX_HELD) {
      this.counters.channelErrors++;
      if ((peer.held?.length ?? 0) >= MAX_HELD)
        this.failPeer(peer, "the peer's sequence numbers ran away", MxStatus.ENDPOINT_UNREACHABLE);
      return;
    }
    this.counters.held++;
    const held = (peer.held ??= []);
    const h: Held = {
      seq,
      rndv,
      flags,
      matchHi: mh,
      matchLo: ml,
      length,
      syncId,
      region,
      key,
      offset,
      traceSeq,
      data: !rndv && bytes !== null ? bytes.slice(payload, payload + length) : undefined,
    };
    let i = held.length;
    while (i > 0 && ((held[i - 1].seq - seq) | 0) > 0) i--;
    held.splice(i, 0, h);
  }

  private releaseHeld(peer: MxAddress): void {
    const held = peer.held!;
    while (held.length > 0 && held[0].seq === peer.recvSeq) {
      const h = held.shift()!;
      peer.recvSeq = (h.seq + 1) >>> 0;
      this.matchRecord(
        peer,
        h.rndv,
        h.flags,
        h.matchHi,
        h.matchLo,
        h.length,
        h.syncId,
        h.region,
        h.key,
        h.offset,
        h.traceSeq,
        h.data ?? null,
        0,
      );
    }
  }

  private matchRecord(
    peer: MxAddress,
    rndv: boolean,
    flags: number,
    mh: number,
    ml: number,
    length: number,
    syncId: number,
    region: number,
    key: number,
    offset: number,
    traceSeq: number,
    bytes: Uint8Array | null,
    payload: number,
  ): void {
    let tid = 0;
    if (this.tracing && (flags & FLAG_TRACED) !== 0) {
      tid = traceId(peer.nic, peer.endpoint, traceSeq);
      this.traceBuffer!.record(tid, TraceStage.Seen, traceNow());
    }
    const posted = this.posted;
    for (let i = 0; i < posted.length; i++) {
      const r = posted[i];
      if (
        (mh & r.matchMaskHi) >>> 0 === r.status.matchHi &&
        (ml & r.matchMaskLo) >>> 0 === r.status.matchLo
      ) {
        posted.splice(i, 1);
        r.status.source = peer;
        r.status.matchHi = mh;
        r.status.matchLo = ml;
        r.status.msgLength = length;
        r.traceId = tid;
        if (rndv) {
          this.startPull(r, peer, region, key, offset, length, syncId, flags);
        } else {
          const xfer = Math.min(length, r.buffer.length);
          if (xfer > 0) copyInto(r.buffer, 0, bytes!, payload, xfer);
          if (tid !== 0) this.traceBuffer!.record(tid, TraceStage.Copied, traceNow());
          if (syncId !== 0) this.sendNotify(peer, syncId, xfer, MxStatus.SUCCESS);
          this.complete(r, xfer < length ? MxStatus.TRUNCATED : MxStatus.SUCCESS, xfer);
        }
        return;
      }
    }
    this.counters.unexpected++;
    this.unexpected.push({
      source: peer,
      matchHi: mh,
      matchLo: ml,
      length,
      data: rndv || bytes === null ? undefined : bytes.slice(payload, payload + length),
      syncId,
      rndv,
      region,
      key,
      offset,
      traceId: tid,
      flags,
    });
  }

  /** Answers a synchronous send or a finished pull. Control records are tiny; a full lane is retried. */
  private sendNotify(peer: MxAddress, syncId: number, xfer: number, status: number): void {
    if (peer.dead) return;
    if (peer.via === VIA_ETHER) {
      this.etherNotify(peer, syncId, xfer, status);
      return;
    }
    if (peer.via === VIA_WIRE) {
      this.postWireControl(peer, REC_NOTIFY, syncId, status, xfer);
      return;
    }
    const w = peer.writer;
    if (!w) return;
    let at = w.reserve(0);
    while (at < 0) {
      // The peer drains its lane in its own progress; our notify must not be lost.
      if (peer.dead || w.closed) return;
      this.pollEvents();
      at = w.reserve(0);
    }
    const i = at >>> 2;
    w.words[i + 1] = REC_NOTIFY;
    w.words[i + 2] = 0;
    w.words[i + 3] = 0;
    w.words[i + 4] = 0;
    w.words[i + 5] = syncId;
    w.words[i + 6] = xfer;
    w.words[i + 7] = status;
    w.commit();
    if (raiseInterrupt(peer.peerIntr!)) this.counters.kicks++;
  }

  // ---- rendezvous through the NIC ------------------------------------------------------------

  private startPull(
    req: MxRequest,
    source: MxAddress,
    region: number,
    key: number,
    offset: number,
    length: number,
    syncId: number,
    flags: number,
  ): void {
    const xfer = Math.min(length, req.buffer.length);
    if (xfer === 0) {
      this.sendNotify(source, syncId, 0, MxStatus.SUCCESS);
      this.complete(req, length > 0 ? MxStatus.TRUNCATED : MxStatus.SUCCESS, 0);
      return;
    }
    if (flags & FLAG_ETHER) {
      this.etherPull(req, source, syncId, xfer);
      return;
    }
    const dst = this.pullTarget(req, xfer);
    if (dst === undefined) {
      this.sendNotify(source, syncId, 0, MxStatus.NO_RESOURCES);
      return;
    }
    const cookie = this.newId();
    this.pulls.set(cookie, { recv: req, source, syncId, xfer });
    this.counters.pulls++;
    const tid = this.tracing ? req.traceId : 0;
    // The source is the pull right the sender armed (window.ts DFLAG_EXPOSURE: region = its
    // index, key = its key, offset within it); from another NIC across the link (DFLAG_REMOTE).
    let dflags = (tid !== 0 ? DFLAG_TRACE : 0) | DFLAG_EXPOSURE;
    if (source.nic !== this.nicId) dflags |= DFLAG_REMOTE;
    const w = this.window;
    const b = this.sqSlot(true);
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
    if (tid !== 0) this.traceBuffer!.record(tid, TraceStage.PullPosted, traceNow());
    this.sqPost();
  }

  private sqFree(): number {
    return SQ_ENTRIES - ((this.sqProd - (Atomics.load(this.window, W_SQ_CONS) >>> 0)) >>> 0);
  }

  /**
   * The next send-queue descriptor, zeroed; its word index in the window. `wait`: if the
   * queue is full, progress until the NIC consumed one (else the caller checked sqFree).
   */
  private sqSlot(wait: boolean): number {
    const w = this.window;
    if (wait) while (this.sqFree() === 0) this.pollEvents();
    const base = (SQ_OFFSET >> 2) + (this.sqProd % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) w[base + i] = 0;
    return base;
  }

  /** Publishes the descriptor sqSlot gave (the doorbell), waking the NIC if it sleeps. */
  private sqPost(): void {
    const w = this.window;
    this.sqProd = (this.sqProd + 1) >>> 0;
    Atomics.store(w, W_SQ_PROD, this.sqProd | 0);
    if (Atomics.load(w, W_NIC_SLEEPING) !== 0) Atomics.notify(w, W_SQ_PROD);
  }

  private pollEvents(): void {
    const w = this.window;
    const prod = Atomics.load(w, W_EQ_PROD) >>> 0;
    if (prod === this.eqCons) return;
    while (this.eqCons !== prod) {
      const base = (EQ_OFFSET >> 2) + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
      const tw = w[base + E_TYPE];
      const type = tw & 0xffff;
      const status = tw >>> 16;
      const cookie = w[base + E_COOKIE] >>> 0;
      if (type === EventType.PullDone || (type === EventType.Error && this.pulls.has(cookie))) {
        const p = this.pulls.get(cookie);
        if (p) {
          this.pulls.delete(cookie);
          if (p.failed !== undefined) this.complete(p.recv, p.failed, 0);
          else {
            const ok = type === EventType.PullDone && status === MxStatus.SUCCESS;
            if (this.tracing && p.recv.traceId !== 0 && ok) this.tracePullDone(p.recv.traceId, base);
            const xfer = ok ? p.xfer : 0;
            const code = !ok
              ? status || MxStatus.ABORTED
              : xfer < p.recv.status.msgLength
                ? MxStatus.TRUNCATED
                : MxStatus.SUCCESS;
            if (p.syncId !== 0) this.sendNotify(p.source, p.syncId, xfer, ok ? MxStatus.SUCCESS : code);
            this.complete(p.recv, code, xfer);
          }
        } else this.counters.nicErrors++;
      } else if (type === EventType.Driver) {
        this.onDriverEvent(
          cookie,
          w[base + E_EXTRA] >>> 0,
          w[base + E_EXTRA + 1] >>> 0,
          w[base + E_EXTRA + 2] >>> 0,
          w[base + E_EXTRA + 3] >>> 0,
        );
      } else if (type === EventType.Recv) {
        this.onWireRecv(base);
      } else if (type === EventType.SendDone || (type === EventType.Error && (cookie & COOKIE_SEND) !== 0)) {
        this.onSendDone(
          cookie,
          status === 0 && type === EventType.Error ? MxStatus.ABORTED : status,
          type === EventType.SendDone ? w[base + E_REASON] >>> 0 : 0,
        );
      } else if (
        type === EventType.ConnectDone ||
        (type === EventType.Error && (cookie & COOKIE_CONNECT) !== 0)
      ) {
        const c = this.connects.get(cookie & WIRE_ID_MASK);
        if (c) {
          c.done = true;
          c.status = type === EventType.Error ? status || MxStatus.ABORTED : status;
          c.session = w[base + E_SRC_SESSION] >>> 0;
          c.retryAfter = w[base + E_AUX0] >>> 0;
        }
      } else if (type === EventType.Error) {
        this.counters.nicErrors++;
      }
      this.eqCons = (this.eqCons + 1) >>> 0;
    }
    Atomics.store(w, W_EQ_CONS, this.eqCons | 0);
  }

  /** A record that came through the NIC (RECV event; wire.ts packing), then its receive-area space released. */
  private onWireRecv(base: number): void {
    const w = this.window;
    const nic = w[base + E_SRC_NIC] >>> 0;
    const ep = w[base + E_SRC_ENDPOINT] >>> 0;
    const session = w[base + E_SRC_SESSION] >>> 0;
    const len = w[base + E_LENGTH] >>> 0;
    const off = w[base + E_RECV_OFFSET] >>> 0;
    const aux0 = w[base + E_AUX0] >>> 0;
    const aux1 = w[base + E_AUX1] >>> 0;
    const mh = w[base + E_MATCH_HI] >>> 0;
    const ml = w[base + E_MATCH_LO] >>> 0;
    this.counters.wireRecvs++;
    if (off + len <= RECV_BYTES) {
      const peer = this.wirePeer(nic, ep, session);
      peer.lastNews = performance.now();
      const type = aux0 & WIRE_TYPE_MASK;
      const id = aux0 >>> WIRE_ID_SHIFT;
      const pay = RECV_OFFSET + off;
      const b = this.windowBytes;
      if (type === REC_EAGER) {
        this.deliverRecord(peer, false, 0, mh, ml, len, id, aux1, 0, 0, 0, 0, b, pay);
      } else if (type === REC_RNDV && len === WIRE_RNDV_BYTES) {
        const msgLen = getWord(b, pay);
        this.deliverRecord(
          peer,
          true,
          0,
          mh,
          ml,
          msgLen,
          id,
          aux1,
          getWord(b, pay + 4),
          getWord(b, pay + 8),
          getWord(b, pay + 12),
          0,
          null,
          0,
        );
      } else if (type === REC_NOTIFY) {
        this.onNotify(id, mh, aux1);
      } else if (type !== REC_PING) {
        this.counters.channelErrors++;
      }
    } else {
      this.counters.nicErrors++;
    }
    this.rqCons = (this.rqCons + (w[base + E_RECV_SPAN] >>> 0)) >>> 0;
    Atomics.store(w, W_RQ_CONS, this.rqCons | 0);
  }

  /** The address of the wire peer (nic, ep, session): known, or learned from its first message. */
  private wirePeer(nic: number, ep: number, session: number): MxAddress {
    const last = this.lastWirePeer;
    if (
      last !== undefined &&
      last.nic === nic &&
      last.endpoint === ep &&
      last.session === session &&
      !last.dead
    )
      return last;
    let peer = this.peerIndex.get(`${nic}:${ep}`);
    if (peer && !peer.dead && peer.session !== session) {
      this.failPeer(peer, "the peer endpoint was reopened", MxStatus.ENDPOINT_CLOSED);
      peer = undefined;
    }
    if (!peer || peer.dead) {
      peer = this.addPeer(nic, ep, session);
      this.setFastVia(peer, VIA_WIRE);
    }
    this.lastWirePeer = peer;
    return peer;
  }

  /** A SEND of ours finished (SEND_DONE with the NIC's ErrorReason, or an ERROR for its descriptor). */
  private onSendDone(cookie: number, status: number, reason: number): void {
    const slot = cookie & 0xffff;
    if (slot === NO_SLOT) {
      if (status !== MxStatus.SUCCESS) this.counters.nicErrors++;
      return;
    }
    const st = this.staging;
    if (st === undefined || slot >= st.slots) {
      this.counters.nicErrors++;
      return;
    }
    const owner = st.release(slot);
    if (owner instanceof MxAddress) {
      // A probe: the peer answered, or is gone.
      owner.probing = false;
      if (status === MxStatus.SUCCESS) owner.lastNews = performance.now();
      else
        this.failPeer(
          owner,
          sendFailureText(status, reason) ?? `the peer did not answer our probe (${mxStatusName(status)})`,
          status,
        );
      return;
    }
    const req = owner as MxRequest | undefined;
    if (req === undefined) return;
    const dest = req.dest;
    if (status === MxStatus.SUCCESS) {
      // Placed after a sequence hole (an earlier send to this peer failed): its receiver will
      // never match it, so it did not arrive either.
      if (dest?.holed !== undefined) {
        req.reason = `an earlier message to this peer failed (${dest.holed}); nothing after it is matched`;
        this.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      } else if (!req.sync && !req.rndv) this.complete(req, MxStatus.SUCCESS, req.buffer.length);
      return;
    }
    if (req.syncId !== 0) this.waitingSync.delete(req.syncId);
    req.reason = sendFailureText(status, reason);
    this.complete(req, status, 0);
    if (!dest) return;
    // A message that did not arrive leaves a hole in this peer's sequence: the receiver would
    // hold everything after it forever. So the peer is done for; what waits on it fails now.
    dest.holed ??= `${mxStatusName(status)}${req.reason ? `: ${req.reason}` : ""}`;
    this.failPeer(
      dest,
      status === MxStatus.ENDPOINT_CLOSED ||
        status === MxStatus.BAD_SESSION ||
        status === MxStatus.ENDPOINT_UNKNOWN
        ? `the peer endpoint went away (${mxStatusName(status)})`
        : `a message to it failed (${dest.holed})`,
      status,
    );
  }

  /**
   * Peers on other NICs that owe us an answer (a NOTIFY for a rendezvous or synchronous send)
   * and have been silent a while get a PING: its SEND_DONE fails if the peer endpoint or its
   * host is gone, and then everything waiting on that peer fails instead of hanging.
   */
  private probeSilentPeers(now: number): void {
    if (this.waitingSync.size === 0) return;
    for (const r of this.waitingSync.values()) {
      const p = r.dest;
      if (!p || p.via !== VIA_WIRE || p.dead || p.probing || now - p.lastNews < PROBE_AFTER_MS) continue;
      const st = this.staging;
      if (!st || this.sqFree() === 0) return;
      const slot = st.take(p);
      if (slot < 0) return;
      p.probing = true;
      p.lastNews = now;
      const w = this.window;
      const b = this.sqSlot(false);
      w[b + D_OPCODE] = Opcode.Send;
      w[b + D_COOKIE] = COOKIE_SEND | slot;
      w[b + D_DEST_NIC] = p.nic;
      w[b + D_DEST_ENDPOINT] = p.endpoint;
      w[b + D_DEST_SESSION] = p.session;
      w[b + D_AUX0] = wireAux0(REC_PING, 0, 0);
      this.sqPost();
      this.counters.probes++;
    }
  }

  /** The NIC's stamps (float64 pairs at E_EXTRA of PULL_DONE, window.ts) and ours. */
  private tracePullDone(tid: number, base: number): void {
    const now = traceNow();
    const f = this.windowF64!;
    const tb = this.traceBuffer!;
    const seen = f[(base + E_TRACE_NIC_SEEN) >> 1];
    const done = f[(base + E_TRACE_DMA_DONE) >> 1];
    if (seen !== 0) tb.record(tid, TraceStage.NicSeen, seen);
    if (done !== 0) tb.record(tid, TraceStage.DmaDone, done);
    tb.record(tid, TraceStage.EventSeen, now);
  }

  private onDriverEvent(
    kind: number,
    channelId: number,
    nic: number,
    endpoint: number,
    session: number,
  ): void {
    if (kind === DRIVER_EVENT_CONNECT) {
      const known = this.peerIndex.get(`${nic}:${endpoint}`);
      if (known && !known.dead && known.channelId === channelId) return;
      try {
        const ch = this.driver.acceptChannel(this.endpointId, channelId);
        const addr = this.addPeer(ch.peerNic, ch.peerEndpoint, ch.peerSession);
        this.attachChannel(addr, ch);
      } catch {
        this.counters.channelErrors++;
      }
    } else if (kind === DRIVER_EVENT_DISCONNECT) {
      void session;
      const peer = this.peerIndex.get(`${nic}:${endpoint}`);
      if (peer && (peer.channelId === channelId || channelId === 0xffffffff)) {
        // Take what the peer managed to send before it went away, then fail the rest.
        if (peer.reader)
          while (peer.reader.next()) {
            this.onRecord(peer, peer.reader);
            peer.reader.release();
          }
        this.failPeer(peer, "the peer endpoint went away", MxStatus.ENDPOINT_CLOSED);
      }
    }
  }

  private compactPeers(): void {
    let n = 0;
    for (const p of this.peers) if (!p.dead) this.peers[n++] = p;
    this.peers.length = n;
    this.deadPeers = 0;
  }

  /**
   * A dead peer's channel is dropped here and unmapped by the driver, so the backend can give
   * the memory back: a survivor keeps nothing of a peer that went away.
   */
  private releaseChannelOf(peer: MxAddress): void {
    if (!peer.writer) return;
    const id = peer.channelId;
    peer.writer = undefined;
    peer.reader = undefined;
    peer.peerIntr = undefined;
    try {
      this.driver.releaseChannel?.(this.endpointId, id);
    } catch {
      this.counters.channelErrors++;
    }
  }

  /** A peer is gone: everything waiting on it completes with an error status; nothing hangs. */
  private failPeer(peer: MxAddress, why: string, code: number): void {
    if (peer.dead) return;
    peer.dead = why;
    this.deadPeers++;
    for (const r of peer.backlog.splice(0)) {
      r.reason ??= why;
      this.complete(r, code, 0);
    }
    for (const [id, r] of this.waitingSync) {
      if (r.dest === peer) {
        this.waitingSync.delete(id);
        r.reason ??= why;
        this.complete(r, code, 0);
      }
    }
    for (const p of this.pulls.values()) {
      // The data would be the peer's last words: report the loss, once the NIC let go of the buffer.
      if (p.source === peer) {
        p.failed ??= code;
        p.recv.reason ??= why;
      }
    }
    for (let i = this.unexpected.length - 1; i >= 0; i--) {
      if (this.unexpected[i].source === peer && this.unexpected[i].rndv) this.unexpected.splice(i, 1);
    }
    for (const [id, p] of this.etherPulls) {
      if (p.source === peer) {
        this.etherPulls.delete(id);
        this.complete(p.recv, code, 0);
      }
    }
    peer.serving = undefined;
    peer.ctlQueue = undefined;
    const i = this.etherPeers.indexOf(peer);
    if (i >= 0) this.etherPeers.splice(i, 1);
    this.releaseChannelOf(peer);
  }

  // ---- the split path: MX over Ethernet (ether.ts) ---------------------------------------------

  /**
   * Moves this endpoint to the split path ("split": every peer over Ethernet, through netback
   * and the bridge) or back to its fast path ("bypass"/"native"), with traffic flowing. Peers
   * are told with a PATH frame and keep reading every way in, and each pair's messages carry
   * sequence numbers, so nothing is lost, duplicated or reordered by the move.
   */
  switchPath(to: "split" | "bypass" | "native", timeoutMs: number = 2 * WIRE_TIMEOUT_MS): void {
    this.checkOpen();
    if (to !== "split" && to !== this.fastPath)
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        this.fastPath === "split"
          ? "this endpoint has no fast path (it fell back to the split path when it opened)"
          : `switchPath: expected "split" or "${this.fastPath}", got ${JSON.stringify(to)}`,
      );
    if (this.hub === undefined)
      throw new MxError(
        "MX_NO_DEV",
        "switchPath: this domain has no network device (netfront) for the split path",
      );
    const split = to === "split";
    if (split === this.split) return;
    // Every peer must be reachable over Ethernet before anything goes that way.
    for (const p of this.peers) if (!p.dead && p.eth === undefined) this.resolveEther(p, timeoutMs);
    this.split = split;
    for (const p of this.peers) {
      if (p.dead) continue;
      this.recomputeVia(p);
      if (p.eth !== undefined) this.sendPath(p);
    }
    this.hub.flush();
  }

  /** Tells a peer which path we are on (a sequenced control frame). */
  private sendPath(peer: MxAddress): void {
    this.etherControl(peer, MxoeType.Path, 0, 0, this.split ? 1 : 0, 0);
  }

  /**
   * A payload-less sequenced frame (PATH, PULL, NOTIFY) to `peer`: now if the window has
   * room, else queued and sent first when acks open it. Never waits: it may be called from
   * inside the hub's poll, which cannot poll again.
   */
  private etherControl(
    peer: MxAddress,
    type: number,
    id: number,
    offset: number,
    msgSeq: number,
    length: number,
  ): void {
    const link = peer.eth!;
    const q = peer.ctlQueue;
    if (link.room === 0 || (q !== undefined && q.length > 0)) {
      (peer.ctlQueue ??= []).push(type, id, offset, msgSeq, length);
      return;
    }
    this.writeControl(link, type, id, offset, msgSeq, length);
    link.pump(performance.now());
    this.hub!.flush();
  }

  private writeControl(
    link: EtherLink,
    type: number,
    id: number,
    offset: number,
    msgSeq: number,
    length: number,
  ): void {
    const f = link.reserve(type, 0);
    setEtherWord(f, MxoeWord.id, id);
    setEtherWord(f, MxoeWord.offset, offset);
    setEtherWord(f, MxoeWord.msgSeq, msgSeq);
    setEtherWord(f, MxoeWord.length, length);
    link.commit();
  }

  /** Queued control frames go out first, as the window allows. */
  private flushControl(peer: MxAddress): void {
    const q = peer.ctlQueue!;
    const link = peer.eth!;
    let i = 0;
    while (i < q.length && link.room > 0) {
      this.writeControl(link, q[i], q[i + 1], q[i + 2], q[i + 3], q[i + 4]);
      i += 5;
    }
    q.splice(0, i);
    link.pump(performance.now());
  }

  /** The peer's MAC, asked for over Ethernet by its session (proof of an earlier connect). */
  private resolveEther(peer: MxAddress, timeoutMs: number): void {
    this.connectEther(peer.nic, peer.endpoint, 0, peer.session, timeoutMs);
  }

  /**
   * mx_connect over Ethernet: a broadcast CONNECT (repeated until answered) that the owner of
   * (nic, endpoint) answers with its MAC and session — after checking `key`, or, to resolve
   * an already connected peer, `session`.
   */
  private connectEther(
    nic: number,
    endpoint: number,
    key: number,
    session: number,
    timeoutMs: number,
  ): MxAddress {
    const hub = this.hub;
    const where = `nic ${nic} endpoint ${endpoint}`;
    if (hub === undefined)
      throw new MxError(
        "MX_CONNECTION_FAILED",
        `${where} is on the split path and this domain has no network device`,
      );
    const id = this.newId();
    const pending: PendingConnect = { done: false, status: MxStatus.PENDING, session: 0 };
    this.connects.set(id, pending);
    const f = this.etherScratch;
    const send = () => {
      initEtherFrame(f, BROADCAST_MAC, hub.mac, MxoeType.Connect);
      setEtherWord(f, MxoeWord.dstNic, nic);
      setEtherWord(f, MxoeWord.dstEp, endpoint);
      setEtherWord(f, MxoeWord.dstSession, session);
      setEtherWord(f, MxoeWord.srcNic, this.nicId);
      setEtherWord(f, MxoeWord.srcEp, this.endpointId);
      setEtherWord(f, MxoeWord.srcSession, this.session);
      setEtherWord(f, MxoeWord.id, id);
      setEtherWord(f, MxoeWord.offset, key);
      setEtherWord(f, MxoeWord.matchHi, this.split ? 1 : 0);
      hub.send(f);
      hub.flush();
    };
    let last = performance.now();
    send();
    try {
      this.block(() => {
        if (pending.done) return true;
        const now = performance.now();
        if (now - last >= CONNECT_RETRY_MS) {
          last = now;
          send();
        }
        return false;
      }, timeoutMs);
    } finally {
      this.connects.delete(id);
    }
    if (!pending.done)
      throw new MxError("MX_TIMEOUT", `${where} did not answer over Ethernet within ${timeoutMs} ms`);
    if (pending.status === MxStatus.BAD_KEY)
      throw new MxError("MX_BAD_CONNECTION_KEY", `${where} refused the key 0x${key.toString(16)}`);
    if (pending.status !== MxStatus.SUCCESS)
      throw new MxError("MX_CONNECTION_FAILED", `${where}: ${mxStatusName(pending.status)}`);
    const peer = this.learnEtherPeer(
      nic,
      endpoint,
      pending.session,
      pending.mac!,
      pending.peerSplit === true,
    );
    if (peer === undefined)
      throw new MxError(
        "MX_CONNECTION_FAILED",
        `${where} answered from MAC ${macString(pending.mac!)}, but that endpoint is known at another MAC: refused as a spoofed answer`,
      );
    if (session === 0) peer.verified = true;
    return peer;
  }

  /**
   * The peer (nic, ep, session) reachable at `mac`: known, or new. A peer is keyed on its
   * MAC as well (netback lets no guest send from another's MAC): a claim to be a known peer
   * from another MAC is refused (undefined) and counted, never followed.
   */
  private learnEtherPeer(
    nic: number,
    ep: number,
    session: number,
    mac: Uint8Array,
    peerSplit: boolean,
  ): MxAddress | undefined {
    let peer = this.peerIndex.get(`${nic}:${ep}`);
    if (peer?.eth !== undefined && !peer.dead && peer.session === session && !macAt(mac, 0, peer.eth.mac)) {
      this.hub!.counters.spoofed++;
      return undefined;
    }
    if (peer && !peer.dead && peer.session !== session) {
      this.failPeer(peer, "the peer endpoint was reopened", MxStatus.ENDPOINT_CLOSED);
      peer = undefined;
    }
    if (!peer || peer.dead) peer = this.addPeer(nic, ep, session);
    if (peer.eth === undefined) {
      peer.eth = new EtherLink(
        this.hub!,
        mac,
        { nic: this.nicId, ep: this.endpointId, session: this.session },
        nic,
        ep,
        session,
      );
      this.etherPeers.push(peer);
    }
    peer.peerSplit = peerSplit;
    this.recomputeVia(peer);
    return peer;
  }

  /** A frame for this endpoint (the hub checked its headers and destination). */
  private onEtherFrame(f: Uint8Array, type: number): void {
    const srcNic = etherWord(f, MxoeWord.srcNic);
    const srcEp = etherWord(f, MxoeWord.srcEp);
    const srcSession = etherWord(f, MxoeWord.srcSession);
    if (type === MxoeType.Connect) {
      this.answerConnect(f, srcNic, srcEp, srcSession);
      return;
    }
    if (type === MxoeType.ConnectReply) {
      const c = this.connects.get(etherWord(f, MxoeWord.id));
      if (c && !c.done && etherWord(f, MxoeWord.dstSession) === this.session) {
        c.done = true;
        c.status = etherWord(f, MxoeWord.msgSeq);
        c.session = srcSession;
        c.mac = f.slice(6, 12);
        c.peerSplit = etherWord(f, MxoeWord.matchHi) === 1;
      }
      return;
    }
    if (type === MxoeType.Nack) {
      const gone = this.peerIndex.get(`${srcNic}:${srcEp}`);
      if (
        gone?.eth !== undefined &&
        !gone.dead &&
        gone.session === srcSession &&
        etherWord(f, MxoeWord.dstSession) === this.session &&
        macAt(f, 6, gone.eth.mac)
      )
        this.failPeer(gone, "the peer endpoint is closed", MxStatus.ENDPOINT_CLOSED);
      return;
    }
    if (etherWord(f, MxoeWord.dstSession) !== this.session) {
      this.hub!.counters.dropped++;
      return;
    }
    const peer = this.peerIndex.get(`${srcNic}:${srcEp}`);
    const link = peer?.eth;
    if (peer === undefined || link === undefined || peer.dead || peer.session !== srcSession) {
      this.hub!.counters.dropped++;
      return;
    }
    // The header names the sender; the source MAC (anti-spoofed by netback) must agree.
    if (!macAt(f, 6, link.mac)) {
      this.hub!.counters.spoofed++;
      return;
    }
    const now = performance.now();
    link.onAck(etherWord(f, MxoeWord.ack), now);
    if (type === MxoeType.Ack || !link.accept(etherWord(f, MxoeWord.seq))) return;
    peer.lastNews = now;
    const n = etherWord(f, MxoeWord.payload);
    switch (type) {
      case MxoeType.Eager:
        this.etherEager(peer, f, n);
        return;
      case MxoeType.Rndv:
        this.deliverRecord(
          peer,
          true,
          FLAG_ETHER,
          etherWord(f, MxoeWord.matchHi),
          etherWord(f, MxoeWord.matchLo),
          etherWord(f, MxoeWord.length),
          etherWord(f, MxoeWord.id),
          etherWord(f, MxoeWord.msgSeq),
          0,
          0,
          0,
          0,
          null,
          0,
        );
        return;
      case MxoeType.Pull: {
        // The receiver matched our rendezvous and asks for its bytes.
        const req = this.waitingSync.get(etherWord(f, MxoeWord.id));
        const len = etherWord(f, MxoeWord.length);
        if (!req?.rndv || len > req.buffer.length) {
          this.counters.channelErrors++;
          return;
        }
        (peer.serving ??= []).push({ req, pullId: etherWord(f, MxoeWord.offset), off: 0, end: len });
        this.serve(peer);
        return;
      }
      case MxoeType.Data: {
        const p = this.etherPulls.get(etherWord(f, MxoeWord.id));
        const off = etherWord(f, MxoeWord.offset);
        if (!p || p.source !== peer || off + n > p.xfer) {
          this.counters.channelErrors++;
          return;
        }
        p.recv.buffer.set(f.subarray(PAYLOAD_AT, PAYLOAD_AT + n), off);
        p.got += n;
        if (p.got >= p.xfer) {
          this.etherPulls.delete(etherWord(f, MxoeWord.id));
          this.sendNotify(peer, p.syncId, p.xfer, MxStatus.SUCCESS);
          this.complete(
            p.recv,
            p.xfer < p.recv.status.msgLength ? MxStatus.TRUNCATED : MxStatus.SUCCESS,
            p.xfer,
          );
        }
        return;
      }
      case MxoeType.Notify:
        this.onNotify(
          etherWord(f, MxoeWord.id),
          etherWord(f, MxoeWord.offset),
          etherWord(f, MxoeWord.msgSeq),
        );
        return;
      case MxoeType.Path:
        peer.peerSplit = etherWord(f, MxoeWord.msgSeq) === 1;
        this.recomputeVia(peer);
        return;
      default:
        this.counters.channelErrors++;
    }
  }

  /** An eager fragment: delivered at once if whole, else gathered (a message's frames are consecutive). */
  private etherEager(peer: MxAddress, f: Uint8Array, n: number): void {
    const length = etherWord(f, MxoeWord.length);
    const off = etherWord(f, MxoeWord.offset);
    const seq = etherWord(f, MxoeWord.msgSeq);
    const mh = etherWord(f, MxoeWord.matchHi);
    const ml = etherWord(f, MxoeWord.matchLo);
    const syncId = etherWord(f, MxoeWord.id);
    if (off === 0 && n === length) {
      this.deliverRecord(peer, false, 0, mh, ml, length, syncId, seq, 0, 0, 0, 0, f, PAYLOAD_AT);
      return;
    }
    if (length > 64 * 1024 || off + n > length) {
      this.counters.channelErrors++;
      return;
    }
    let rx = peer.rxEager;
    if (off === 0) rx = peer.rxEager = { seq, buf: new Uint8Array(length), got: 0 };
    if (rx === undefined || rx.seq !== seq || rx.buf.length !== length || rx.got !== off) {
      this.counters.channelErrors++;
      peer.rxEager = undefined;
      return;
    }
    rx.buf.set(f.subarray(PAYLOAD_AT, PAYLOAD_AT + n), off);
    rx.got += n;
    if (rx.got === length) {
      peer.rxEager = undefined;
      this.deliverRecord(peer, false, 0, mh, ml, length, syncId, seq, 0, 0, 0, 0, rx.buf, 0);
    }
  }

  /** The owner of (nic, ep) answers a CONNECT: key (or session) checked, and learns who asked. */
  private answerConnect(f: Uint8Array, srcNic: number, srcEp: number, srcSession: number): void {
    const resolveSession = etherWord(f, MxoeWord.dstSession);
    const status =
      resolveSession !== 0
        ? resolveSession === this.session
          ? MxStatus.SUCCESS
          : MxStatus.BAD_SESSION
        : etherWord(f, MxoeWord.offset) === this.key
          ? MxStatus.SUCCESS
          : MxStatus.BAD_KEY;
    const mac = f.slice(6, 12);
    const peerSplit = etherWord(f, MxoeWord.matchHi) === 1;
    const id = etherWord(f, MxoeWord.id);
    // A claim to be a peer we know at another MAC gets no answer.
    if (status === MxStatus.SUCCESS && !this.learnEtherPeer(srcNic, srcEp, srcSession, mac, peerSplit))
      return;
    const r = this.etherScratch;
    initEtherFrame(r, mac, this.hub!.mac, MxoeType.ConnectReply);
    setEtherWord(r, MxoeWord.dstNic, srcNic);
    setEtherWord(r, MxoeWord.dstEp, srcEp);
    setEtherWord(r, MxoeWord.dstSession, srcSession);
    setEtherWord(r, MxoeWord.srcNic, this.nicId);
    setEtherWord(r, MxoeWord.srcEp, this.endpointId);
    setEtherWord(r, MxoeWord.srcSession, this.session);
    setEtherWord(r, MxoeWord.id, id);
    setEtherWord(r, MxoeWord.msgSeq, status);
    setEtherWord(r, MxoeWord.matchHi, this.split ? 1 : 0);
    this.hub!.send(r);
  }

  /** After the hub's poll: timers, acks, rendezvous data and backlogs of Ethernet peers. */
  private afterEtherPoll(): void {
    if (this.etherPeers.length === 0) return;
    const now = performance.now();
    for (let i = this.etherPeers.length - 1; i >= 0; i--) {
      const p = this.etherPeers[i];
      if (p.dead) continue;
      if (!p.eth!.tick(now)) {
        this.failPeer(p, "the peer stopped acknowledging over Ethernet", MxStatus.ENDPOINT_UNREACHABLE);
        continue;
      }
      if (p.ctlQueue !== undefined && p.ctlQueue.length > 0) this.flushControl(p);
      if (p.serving !== undefined && p.serving.length > 0) this.serve(p);
      if (p.backlog.length > 0 && p.via === VIA_ETHER) this.flushBacklog(p);
    }
  }

  /** Streams pulled rendezvous data to `peer` as the window allows. */
  private serve(peer: MxAddress): void {
    const link = peer.eth!;
    const jobs = peer.serving!;
    const max = this.hub!.maxPayload;
    while (jobs.length > 0 && link.room > 0) {
      const j = jobs[0];
      const n = Math.min(max, j.end - j.off);
      const f = link.reserve(MxoeType.Data, n);
      setEtherWord(f, MxoeWord.id, j.pullId);
      setEtherWord(f, MxoeWord.offset, j.off);
      const src = j.req.bounce ?? j.req.buffer;
      f.set(src.subarray(j.off, j.off + n), PAYLOAD_AT);
      link.commit();
      j.off += n;
      if (j.off >= j.end) jobs.shift();
    }
    link.pump(performance.now());
  }

  /** A send over Ethernet: eager in consecutive frames (all or none), or a rendezvous announcement. */
  private trySendEther(req: MxRequest): boolean {
    const dest = req.dest!;
    const link = dest.eth!;
    const n = req.buffer.length;
    const max = this.hub!.maxPayload;
    const frames = req.rndv ? 1 : Math.max(1, Math.ceil(n / max));
    if (link.room < frames || (dest.ctlQueue !== undefined && dest.ctlQueue.length > 0)) return false;
    if (req.sync || req.rndv) {
      req.syncId = this.newId();
      this.waitingSync.set(req.syncId, req);
    }
    const seq = dest.sendSeq;
    dest.sendSeq = (dest.sendSeq + 1) >>> 0;
    if (req.rndv) {
      const f = link.reserve(MxoeType.Rndv, 0);
      this.stampMessage(f, req, seq);
      link.commit();
      this.counters.rndv++;
    } else {
      for (let off = 0, k = 0; k < frames; k++, off += max) {
        const len = Math.min(max, n - off);
        const f = link.reserve(MxoeType.Eager, len);
        this.stampMessage(f, req, seq);
        setEtherWord(f, MxoeWord.offset, off);
        if (len > 0) f.set(req.buffer.subarray(off, off + len), PAYLOAD_AT);
        link.commit();
      }
      this.counters.eager++;
    }
    link.pump(performance.now());
    this.hub!.flush();
    if (!req.sync && !req.rndv) this.complete(req, MxStatus.SUCCESS, n);
    return true;
  }

  private stampMessage(f: Uint8Array, req: MxRequest, seq: number): void {
    setEtherWord(f, MxoeWord.matchHi, req.status.matchHi);
    setEtherWord(f, MxoeWord.matchLo, req.status.matchLo);
    setEtherWord(f, MxoeWord.length, req.buffer.length);
    setEtherWord(f, MxoeWord.msgSeq, seq);
    setEtherWord(f, MxoeWord.id, req.syncId);
  }

  private etherNotify(peer: MxAddress, syncId: number, xfer: number, status: number): void {
    this.etherControl(peer, MxoeType.Notify, syncId, xfer, status, 0);
  }

  /** The receiver's side of a rendezvous over Ethernet: ask the sender for the bytes. */
  private etherPull(req: MxRequest, source: MxAddress, syncId: number, xfer: number): void {
    const link = source.eth;
    if (link === undefined) {
      this.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return;
    }
    const pullId = this.newId();
    this.etherPulls.set(pullId, { recv: req, source, syncId, xfer, got: 0 });
    this.counters.pulls++;
    this.etherControl(source, MxoeType.Pull, syncId, pullId, 0, xfer);
  }

  /**
   * Before closing: frames already handed to the reliable stream (eager sends complete as
   * they enter it) are resent until acknowledged, for at most LINGER_MS — a closing
   * endpoint must not take its last messages with it.
   */
  private lingerEther(): void {
    const hub = this.hub;
    if (hub === undefined || this.etherPeers.length === 0) return;
    const until = performance.now() + LINGER_MS;
    const owed = () =>
      this.etherPeers.some(
        (p) => !p.dead && (p.eth!.unacked > 0 || p.backlog.length > 0 || (p.ctlQueue?.length ?? 0) > 0),
      );
    while (owed() && performance.now() < until) {
      hub.poll();
      if (owed()) hub.wait(1);
    }
  }

  /** Where this endpoint's Ethernet frames go out, if it has a network device. */
  get mac(): string | undefined {
    return this.hub ? macString(this.hub.mac) : undefined;
  }

  // ---- memory ---------------------------------------------------------------------------------

  private inMemory(bytes: Uint8Array): boolean {
    return this.memory !== undefined && bytes.buffer === this.memory;
  }

  /**
   * Where a pull of `xfer` bytes lands: the receive buffer, or a bounce buffer standing in
   * for it, registered and held until the receive completes. undefined: the receive failed
   * (completed with MX_STATUS_NO_RESOURCES and the reason).
   */
  private pullTarget(req: MxRequest, xfer: number): RegEntry | undefined {
    try {
      if (!this.inMemory(req.buffer)) {
        req.bounce = this.bouncePool.take(xfer);
        this.counters.bounces++;
      }
      req.reg = this.regs.acquire(req.bounce ?? req.buffer);
      return req.reg;
    } catch (e) {
      req.reason = `receiving ${xfer} bytes: ${(e as Error).message}`;
      this.complete(req, MxStatus.NO_RESOURCES, 0);
      return undefined;
    }
  }

  /** The bounds of this endpoint's registration cache and bounce pool (regcache.ts). */
  get cacheLimits(): RegLimits {
    return this.regs.limits;
  }

  /** Memory for message buffers: in this domain's memory, so large messages need no bounce copy. */
  alloc(length: number): Uint8Array {
    this.checkOpen();
    if (!Number.isInteger(length) || length < 0)
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        `alloc: length must be a non-negative integer, got ${String(length)}`,
      );
    if (length === 0) return new Uint8Array(0);
    for (;;) {
      try {
        return this.driver.allocBuffer(length);
      } catch (e) {
        // Idle bounce buffers give their memory back before the program is told no.
        if (this.bouncePool.shrink()) continue;
        const m = asMxError(e, "MX_NO_RESOURCES");
        throw new MxError(
          m.codeName,
          `alloc(${length}): ${m.message.replace(/^MX_[A-Z_]+: /, "").replace(/; give the domain more pages.*$/, "")}; ${MEMORY_KNOB}`,
        );
      }
    }
  }

  free(buffer: Uint8Array): void {
    // Nothing stays registered in memory that goes back to the allocator.
    this.regs.drop(buffer.buffer, buffer.byteOffset, buffer.byteOffset + buffer.length);
    this.driver.freeBuffer(buffer);
  }

  // ---- teardown ---------------------------------------------------------------------------------

  /** mx_close_endpoint: pending requests complete with MX_STATUS_ENDPOINT_CLOSED; channels close. */
  close(): void {
    if (this.closed) return;
    this.lingerEther();
    for (const peer of this.peers) {
      // Peers over Ethernet hear of it now (on the fast path the backend tells them).
      if (peer.eth !== undefined && !peer.dead)
        this.hub!.sendClosed(
          peer.eth.mac,
          { nic: peer.nic, ep: peer.endpoint, session: peer.session },
          { nic: this.nicId, ep: this.endpointId, session: this.session },
        );
      this.failPeer(peer, "endpoint closed", MxStatus.ENDPOINT_CLOSED);
      peer.writer?.close();
      peer.reader?.close();
    }
    for (const r of this.posted.splice(0)) this.complete(r, MxStatus.ENDPOINT_CLOSED, 0);
    this.closed = true;
    this.hub?.detach(this.endpointId);
    try {
      this.driver.closeEndpoint(this.endpointId);
    } catch {
      // The driver side may already be gone (host shutting down): nothing left to release here.
    }
    // The window and every right in it are gone with the endpoint: no copy can be under way.
    for (const req of this.xpRevoking.splice(0)) {
      req.xp = -1;
      const code = req.xpCode;
      req.xpCode = -1;
      this.complete(req, code, req.xpXfer);
    }
    // Closing released the endpoint's registrations; the bounce buffers go back to memory.
    this.regs.clear();
    this.bouncePool.drain(false);
  }

  /** A nonzero 32-bit id for a sync send or a pull (0 means "none" on the wire). */
  private newId(): number {
    const id = this.nextId;
    // 24 bits: ids travel in a wire record's aux0 (wire.ts); 0 means "none".
    this.nextId = (this.nextId + 1) & WIRE_ID_MASK || 1;
    return id;
  }

  private checkOpen(): void {
    if (this.closed) throw new MxError("MX_BAD_ENDPOINT", `endpoint ${this.endpointId} is closed`);
  }

  private checkRequest(req: MxRequest): void {
    if (!(req instanceof MxRequest)) throw new MxError("MX_BAD_REQUEST", "not a request of this library");
    if (req.completedByUser)
      throw new MxError("MX_BAD_REQUEST", "this request was already completed (tested or waited)");
  }

  /** Peers this endpoint knows (connected to, or that connected to it). */
  connectedPeers(): readonly MxAddress[] {
    return this.peers.filter((p) => !p.dead);
  }
}

/** Whether the 6 bytes of `f` at `at` are `mac`. */
function macAt(f: Uint8Array, at: number, mac: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (f[at + i] !== mac[i]) return false;
  return true;
}

function getWord(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}

function putWord(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

/** Copies `n` bytes; a plain loop for small messages, where TypedArray.set's view costs more than the copy. */
function copyInto(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  if (n <= 64) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i];
  } else {
    dst.set(srcOff === 0 && n === src.length ? src : src.subarray(srcOff, srcOff + n), dstOff);
  }
}

function asMxError(e: unknown, fallback: ConstructorParameters<typeof MxError>[0]): MxError {
  if (e instanceof MxError) return e;
  if (e instanceof MxDriverError) {
    const name = (e.code in MxReturn ? e.code : fallback) as ConstructorParameters<typeof MxError>[0];
    return new MxError(name, e.message.replace(/^MX_[A-Z_]+: /, ""));
  }
  return new MxError(fallback, (e as Error)?.message ?? String(e));
}

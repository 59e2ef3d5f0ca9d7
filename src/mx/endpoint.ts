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
 *          NOTIFY), aux1 = sequence, aux2 = region, aux3 = key, aux4 = offset in region
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

import { MxStatus } from "../nic/status.js";
import {
  Access,
  D_COOKIE,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DESC_WORDS,
  DFLAG_TRACE,
  E_COOKIE,
  E_EXTRA,
  E_TRACE_DMA_DONE,
  E_TRACE_NIC_SEEN,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  I_SEQ,
  I_SLEEPING,
  Opcode,
  raiseInterrupt,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_SLEEPING,
  W_SQ_CONS,
  W_SQ_PROD,
} from "../nic/window.js";
import { FLAG_NO_PAYLOAD, LaneReader, LaneWriter, RECORD_HEADER_BYTES } from "./channel.js";
import { DEFAULT_RNDV_THRESHOLD, MX_INFINITE, MxError, MxReturn } from "./codes.js";
import {
  DRIVER_EVENT_CONNECT,
  DRIVER_EVENT_DISCONNECT,
  type DriverChannel,
  type MxDriver,
  MxDriverError,
} from "./driver.js";
import { DEFAULT_TRACE_RECORDS, FLAG_TRACED, TraceBuffer, TraceStage, traceId, traceNow } from "./trace.js";

const REC_EAGER = 1;
const REC_RNDV = 2;
const REC_NOTIFY = 3;
const REC_MAX = REC_NOTIFY;

/** How long a blocking call spins on progress before it sleeps, µs (machine-limits.md). */
export const DEFAULT_SPIN_US = 20;
/** Bounce buffers kept registered for reuse, at most this many bytes. */
const BOUNCE_POOL_BYTES = 64 * 1024 * 1024;
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
  /** @internal */ bounce?: Uint8Array;
  /** @internal */ completedByUser = false;
  /** @internal Message id while traced (trace.ts), else 0. */
  traceId = 0;

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
}

interface PendingPull {
  recv: MxRequest;
  source: MxAddress;
  syncId: number;
  xfer: number;
}

export interface EndpointCounters {
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
  registrations: number;
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
  readonly path: string;
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
  };
  closed = false;
  /** Stages are being stamped into `traceBuffer` (see enableTrace). */
  tracing = false;
  /** The trace buffer (kept after disableTrace, so it can be read). */
  traceBuffer: TraceBuffer | undefined;
  private traceSeq = 0;
  private windowF64: Float64Array | undefined;

  private readonly window: Int32Array;
  private readonly intr: Int32Array;
  private readonly rndvThreshold: number;
  private readonly spinUs: number;
  private readonly memory?: SharedArrayBuffer;
  private readonly peers: MxAddress[] = [];
  private readonly peerIndex = new Map<string, MxAddress>();
  private readonly posted: MxRequest[] = [];
  private readonly unexpected: Unexpected[] = [];
  private readonly completed: MxRequest[] = [];
  private reapedInQueue = 0;
  private readonly waitingSync = new Map<number, MxRequest>();
  private readonly pulls = new Map<number, PendingPull>();
  private readonly regions = new Map<string, { regionId: number; key: number; bytes: Uint8Array }>();
  private nextId = 1;
  private readonly bouncePool: Uint8Array[] = [];
  private sqProd = 0;
  private eqCons = 0;
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
    this.path = driver.path;
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
    this.intr = new Int32Array(ep.intr);
    this.sqProd = Atomics.load(this.window, W_SQ_PROD) >>> 0;
    this.eqCons = Atomics.load(this.window, W_EQ_CONS) >>> 0;
    if (opts.trace) this.enableTrace(opts.trace === true ? DEFAULT_TRACE_RECORDS : opts.trace);
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
  connect(nic: number, endpoint: number, key: number): MxAddress {
    this.checkOpen();
    const known = this.peerIndex.get(`${nic}:${endpoint}`);
    if (known && !known.dead) return known;
    let conn: ReturnType<MxDriver["connect"]>;
    try {
      conn = this.driver.connect(this.endpointId, nic, endpoint, key >>> 0);
    } catch (e) {
      throw asMxError(e, "MX_CONNECTION_FAILED");
    }
    const addr = this.addPeer(conn.peerNic, conn.peerEndpoint, conn.peerSession);
    if (conn.channel) this.attachChannel(addr, conn.channel);
    return addr;
  }

  /** mx_disconnect: forgets a peer; its pending sends complete with MX_STATUS_ENDPOINT_CLOSED. */
  disconnect(addr: MxAddress): void {
    this.failPeer(addr, "disconnected", MxStatus.ENDPOINT_CLOSED);
    this.peerIndex.delete(`${addr.nic}:${addr.endpoint}`);
  }

  private addPeer(nic: number, endpoint: number, session: number): MxAddress {
    const k = `${nic}:${endpoint}`;
    const old = this.peerIndex.get(k);
    if (old && !old.dead) return old;
    const a = new MxAddress(this, nic, endpoint, session);
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
      this.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return req;
    }
    if (!dest.writer) {
      // Only co-resident peers exist until the link path lands (multi-host).
      this.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return req;
    }
    if (req.rndv) this.prepareRndv(req);
    if (dest.backlog.length > 0 || !this.trySend(req)) dest.backlog.push(req);
    return req;
  }

  /** Writes the send's record into the channel; false if the lane is full right now. */
  private trySend(req: MxRequest): boolean {
    const dest = req.dest!;
    const w = dest.writer!;
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
      const r = this.regionFor(req.bounce ?? req.buffer);
      words[i + 7] = r.regionId;
      words[i + 8] = r.key;
      words[i + 9] = r.offset;
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

  private prepareRndv(req: MxRequest): void {
    if (!this.inMemory(req.buffer)) {
      req.bounce = this.takeBounce(req.buffer.length);
      req.bounce.set(req.buffer);
      this.counters.bounces++;
    }
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
      this.startPull(req, u.source, u.region, u.key, u.offset, u.length, u.syncId);
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
    req.status.code = code;
    req.status.xferLength = xfer;
    req.done = true;
    if (req.bounce) {
      if (req.kind === "recv" && xfer > 0) req.buffer.set(req.bounce.subarray(0, xfer));
      this.releaseBounce(req.bounce);
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
      Atomics.wait(intr, I_SEQ, seq, Math.min(deadline - now, SLEEP_SLICE_MS));
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
    const peers = this.peers;
    let moved = false;
    for (let p = 0; p < peers.length; p++) {
      const peer = peers[p];
      const rd = peer.reader;
      if (!rd || peer.dead) continue;
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
    if (sweep) this.pollEvents();
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
      const req = this.waitingSync.get(rd.aux[0]);
      if (!req) {
        this.counters.channelErrors++;
        return;
      }
      this.waitingSync.delete(rd.aux[0]);
      const status = rd.aux[2];
      this.complete(
        req,
        status === MxStatus.TRUNCATED ? MxStatus.SUCCESS : status,
        Math.min(rd.aux[1], req.buffer.length),
      );
      return;
    }
    const mh = rd.matchHi;
    const ml = rd.matchLo;
    const length = rd.length;
    const rndv = type === REC_RNDV;
    const syncId = rd.aux[0];
    let tid = 0;
    if (this.tracing && (rd.flags & FLAG_TRACED) !== 0) {
      tid = traceId(peer.nic, peer.endpoint, rd.aux[5]);
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
          this.startPull(r, peer, rd.aux[2], rd.aux[3], rd.aux[4], length, syncId);
        } else {
          const xfer = Math.min(length, r.buffer.length);
          if (xfer > 0) copyInto(r.buffer, 0, rd.bytes, rd.payload, xfer);
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
      data: rndv ? undefined : rd.bytes.slice(rd.payload, rd.payload + length),
      syncId,
      rndv,
      region: rd.aux[2],
      key: rd.aux[3],
      offset: rd.aux[4],
      traceId: tid,
    });
  }

  /** Answers a synchronous send or a finished pull. Control records are tiny; a full lane is retried. */
  private sendNotify(peer: MxAddress, syncId: number, xfer: number, status: number): void {
    const w = peer.writer;
    if (!w || peer.dead) return;
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
  ): void {
    const xfer = Math.min(length, req.buffer.length);
    if (xfer === 0) {
      this.sendNotify(source, syncId, 0, MxStatus.SUCCESS);
      this.complete(req, length > 0 ? MxStatus.TRUNCATED : MxStatus.SUCCESS, 0);
      return;
    }
    let target = req.buffer;
    if (!this.inMemory(target)) {
      req.bounce = this.takeBounce(xfer);
      target = req.bounce;
      this.counters.bounces++;
    }
    const dst = this.regionFor(target);
    const cookie = this.newId();
    this.pulls.set(cookie, { recv: req, source, syncId, xfer });
    this.counters.pulls++;
    const tid = this.tracing ? req.traceId : 0;
    const op = tid !== 0 ? Opcode.Pull | (DFLAG_TRACE << 16) : Opcode.Pull;
    this.postDescriptor(op, cookie, region, key, offset, dst.regionId, dst.offset, xfer, tid);
  }

  private postDescriptor(
    opcode: number,
    cookie: number,
    srcRegion: number,
    srcKey: number,
    srcOffset: number,
    dstRegion: number,
    dstOffset: number,
    length: number,
    tid = 0,
  ): void {
    const w = this.window;
    // The send queue holds SQ_ENTRIES descriptors; wait for the NIC to consume if it is full.
    while ((this.sqProd - (Atomics.load(w, W_SQ_CONS) >>> 0)) >>> 0 >= SQ_ENTRIES) this.pollEvents();
    const base = (SQ_OFFSET >> 2) + (this.sqProd % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) w[base + i] = 0;
    w[base + D_OPCODE] = opcode;
    w[base + D_COOKIE] = cookie;
    w[base + D_SRC_REGION] = srcRegion;
    w[base + D_SRC_KEY] = srcKey;
    w[base + D_SRC_OFFSET] = srcOffset;
    w[base + D_DST_REGION] = dstRegion;
    w[base + D_DST_OFFSET] = dstOffset;
    w[base + D_LENGTH] = length;
    this.sqProd = (this.sqProd + 1) >>> 0;
    if (tid !== 0) this.traceBuffer!.record(tid, TraceStage.PullPosted, traceNow());
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
        } else this.counters.nicErrors++;
      } else if (type === EventType.Driver) {
        this.onDriverEvent(
          cookie,
          w[base + E_EXTRA] >>> 0,
          w[base + E_EXTRA + 1] >>> 0,
          w[base + E_EXTRA + 2] >>> 0,
          w[base + E_EXTRA + 3] >>> 0,
        );
      } else if (type === EventType.Error) {
        this.counters.nicErrors++;
      }
      this.eqCons = (this.eqCons + 1) >>> 0;
    }
    Atomics.store(w, W_EQ_CONS, this.eqCons | 0);
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

  /** A peer is gone: everything waiting on it completes with an error status; nothing hangs. */
  private failPeer(peer: MxAddress, why: string, code: number): void {
    if (peer.dead) return;
    peer.dead = why;
    for (const r of peer.backlog.splice(0)) this.complete(r, code, 0);
    for (const [id, r] of this.waitingSync) {
      if (r.dest === peer) {
        this.waitingSync.delete(id);
        this.complete(r, code, 0);
      }
    }
    for (const [cookie, p] of this.pulls) {
      if (p.source === peer) {
        // The NIC may still complete it; the data would be the peer's last words. Report the loss.
        this.pulls.delete(cookie);
        this.complete(p.recv, code, 0);
      }
    }
    for (let i = this.unexpected.length - 1; i >= 0; i--) {
      if (this.unexpected[i].source === peer && this.unexpected[i].rndv) this.unexpected.splice(i, 1);
    }
  }

  // ---- memory ---------------------------------------------------------------------------------

  private inMemory(bytes: Uint8Array): boolean {
    return this.memory !== undefined && bytes.buffer === this.memory;
  }

  /**
   * The registered region covering the pages of `bytes` (registered the first time and
   * cached: registration is a control operation), and the offset of `bytes` in it. Regions
   * allow local access and remote reads (with their key), as a send or receive buffer needs.
   */
  private regionFor(bytes: Uint8Array): { regionId: number; key: number; offset: number } {
    const start = bytes.byteOffset & ~4095;
    const end = (bytes.byteOffset + bytes.length + 4095) & ~4095;
    const k = `${start}:${end}`;
    let r = this.regions.get(k);
    if (!r) {
      const view = new Uint8Array(bytes.buffer as SharedArrayBuffer, start, end - start);
      let reg: { regionId: number; key: number };
      try {
        reg = this.driver.registerRegion(
          this.endpointId,
          view,
          Access.LocalRead | Access.LocalWrite | Access.RemoteRead,
        );
      } catch (e) {
        throw asMxError(e, "MX_NO_RESOURCES");
      }
      r = { ...reg, bytes: view };
      this.regions.set(k, r);
      this.counters.registrations++;
    }
    return { regionId: r.regionId, key: r.key, offset: bytes.byteOffset - start };
  }

  /**
   * Bounce buffers are kept (still registered) for reuse: a program that sends from its own
   * heap again and again then pays a copy per message, not a registration round trip.
   */
  private takeBounce(length: number): Uint8Array {
    const pages = Math.ceil(length / 4096);
    const i = this.bouncePool.findIndex((b) => b.length / 4096 === pages);
    if (i >= 0) return this.bouncePool.splice(i, 1)[0].subarray(0, length);
    return this.driver.allocBuffer(pages * 4096).subarray(0, length);
  }

  private releaseBounce(b: Uint8Array): void {
    const whole = new Uint8Array(
      b.buffer as SharedArrayBuffer,
      b.byteOffset,
      Math.ceil(b.length / 4096) * 4096,
    );
    this.bouncePool.push(whole);
    let pooled = 0;
    for (const p of this.bouncePool) pooled += p.length;
    while (pooled > BOUNCE_POOL_BYTES && this.bouncePool.length > 0) {
      const old = this.bouncePool.shift()!;
      pooled -= old.length;
      this.free(old);
    }
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
    return this.driver.allocBuffer(length);
  }

  free(buffer: Uint8Array): void {
    for (const [k, r] of this.regions) {
      if (
        r.bytes.buffer === buffer.buffer &&
        r.bytes.byteOffset <= buffer.byteOffset &&
        buffer.byteOffset < r.bytes.byteOffset + r.bytes.length
      ) {
        this.regions.delete(k);
        try {
          this.driver.deregisterRegion(this.endpointId, r.regionId);
        } catch {
          // ignore: closing
        }
      }
    }
    this.driver.freeBuffer(buffer);
  }

  // ---- teardown ---------------------------------------------------------------------------------

  /** mx_close_endpoint: pending requests complete with MX_STATUS_ENDPOINT_CLOSED; channels close. */
  close(): void {
    if (this.closed) return;
    for (const peer of this.peers) {
      this.failPeer(peer, "endpoint closed", MxStatus.ENDPOINT_CLOSED);
      peer.writer?.close();
      peer.reader?.close();
    }
    for (const r of this.posted.splice(0)) this.complete(r, MxStatus.ENDPOINT_CLOSED, 0);
    this.closed = true;
    try {
      this.driver.closeEndpoint(this.endpointId);
    } catch {
      // The driver side may already be gone (host shutting down): nothing left to release here.
    }
  }

  /** A nonzero 32-bit id for a sync send or a pull (0 means "none" on the wire). */
  private newId(): number {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0 || 1;
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

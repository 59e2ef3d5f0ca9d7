/**
 * An MX endpoint (mx_endpoint_t): the MX API of one endpoint, and its progress and blocking
 * loop — the same code for a guest (bypass), a native process and the split path. Below it
 * a driver (myrixen/driver-abi.ts) did the set-up; from then on the endpoint talks only to
 * its NIC window, its co-resident channels and its netfront, never to the driver, the
 * backend or the hypervisor.
 *
 * The parts, one concern each, imports one way (top to bottom):
 *
 *   endpoint.ts         this facade: open, the API, progress and blocking, close
 *   endpoint-options.ts the options and arguments it is given, checked as given
 *   connections.ts      mx_connect on every way; switchPath
 *   channel-path.ts     a peer on our NIC through a granted channel    ┐ one PeerPath
 *   nic-path.ts         a peer through the NIC (another NIC, or ours)  │ per partner,
 *   ether-path.ts       a peer over Ethernet (the split path)          ┘ chosen per peer
 *   ether-connect.ts    connects over Ethernet (the hub's handler)
 *   nic-queues.ts       the window's send and event queues; NIC pulls; connects
 *   matching.ts         posted and unexpected queues (unexpected.ts), a pair's order (held records)
 *   partner.ts          the peer table; failing a peer
 *   pending-sends.ts    sends waiting for their receiver's NOTIFY
 *   completion.ts       the completion queue; pull rights and memory given back
 *   pull-rights.ts      the exposure table: one pull right per rendezvous
 *   regions.ts          registered memory and bounce buffers (regcache.ts), alloc/free
 *   types.ts            requests and their states, statuses, address and partner
 *   records.ts, nic-records.ts, channel.ts, ether.ts   what travels, on each way
 *   (trace.ts: with tracing off, each stage a message passes costs one check)
 *
 * Progress happens inside API calls (as in Open-MX: no progression thread). Blocking calls
 * spin on progress for a short budget, then sleep on the endpoint's interrupt page; senders
 * and the NIC kick it only while its owner says it sleeps.
 *
 * Why one file of ~700 lines: it is the MX API itself (about 30 calls, each a few lines that
 * check arguments and hand over to the parts above) around the one progress and blocking loop
 * they all share; cut further, a reader would chase mx_wait's logic through several files.
 */
import type { MxDriver } from "../myrixen/driver-abi.js";
import { MxStatus } from "../nic/status.js";
import {
  I_SEQ,
  OWNER_SLEEPING,
  OWNER_SLEEPING_QUIET,
  QUIET_SLICE_MS,
  W_OWNER_SLEEPING,
  WIRE_TIMEOUT_MS,
} from "../nic/window.js";
import { Channels } from "./channel-path.js";
import { asMxError, BufferCheck, checkMatch, MX_INFINITE, MxError } from "./codes.js";
import { Completion } from "./completion.js";
import { Connections } from "./connections.js";
import {
  checkOptions,
  checkSpin,
  checkTimeout,
  checkTraceCapacity,
  type EndpointOptions,
  shown,
  u32Arg,
} from "./endpoint-options.js";
import { EtherConnector } from "./ether-connect.js";
import { EtherEngine } from "./ether-path.js";
import { LaneGroups } from "./lane-policer.js";
import { Matching } from "./matching.js";
import { NicRecords } from "./nic-path.js";
import { NicQueues } from "./nic-queues.js";
import { PartnerTable } from "./partner.js";
import { PendingSends } from "./pending-sends.js";
import { PullRights } from "./pull-rights.js";
import type { RegLimits } from "./regcache.js";
import { Regions } from "./regions.js";
import { PREEMPTED_GAP_US, SpinBudget } from "./spin-budget.js";
import { DEFAULT_TRACE_RECORDS, TraceBuffer, TraceStage, traceId, traceNow } from "./trace.js";
import {
  type Block,
  EndpointContext,
  type EndpointCounters,
  type MxAddress,
  MxRequest,
  type MxStatusInfo,
  type Partner,
  type PeerPath,
  RequestState,
} from "./types.js";

export type { EndpointOptions } from "./endpoint-options.js";
export { DEFAULT_SPIN_US, MAX_SPIN_US } from "./endpoint-options.js";
export type { EndpointCounters } from "./types.js";
export { MxAddress, MxRequest, MxStatusInfo } from "./types.js";

/** PREEMPTED_GAP_US in ms, the unit of performance.now(). */
const PREEMPTED_GAP_MS = PREEMPTED_GAP_US / 1000;
/** Polls of a blocking wait before it looks at the clock (a spinning peer answers well within them). */
const FAST_POLLS = 256;
/** A sleeping endpoint re-checks at least this often, so no peer can make it sleep forever. */
const SLEEP_SLICE_MS = 100;
/**
 * A closing endpoint waits at most this long (ms) for its NIC to take what it already posted:
 * the NOTIFY answering a rendezvous it just received, its last sends. Closed at once, those
 * were dropped, and a peer's rendezvous send failed ENDPOINT_CLOSED although its data had
 * arrived (a receiver that closes right after its last receive). MX over Ethernet lingers the
 * same way (ether-path.ts LINGER_MS).
 */
const NIC_LINGER_MS = 1000;
/** While some peer is reached over Ethernet, sleeps are cut into slices this short (ms). */
const MIXED_SLICE_MS = 1;

/** An open MX endpoint. */
export class MxEndpoint {
  readonly endpointId: number;
  readonly session: number;
  readonly nicId: number;
  readonly key: number;
  private readonly ctxCounters: EndpointCounters;
  /** Why this endpoint is on the split path although the library wanted the fast one, if it is. */
  fallbackReason: string | undefined;
  closed = false;
  /** The trace buffer (kept after disableTrace, so it can be read). */
  traceBuffer: TraceBuffer | undefined;

  private readonly rndvThreshold: number;
  /** The user chose the threshold: it holds on every path (no channel eager above it). */
  private readonly thresholdSet: boolean;
  private readonly rights: PullRights;
  private readonly spinUs: number;
  private spin: SpinBudget;
  /** Of the last blockFor: it went to sleep; its spin saw a preemption. */
  private blockSlept = false;
  private blockPreempted = false;
  private readonly intr: Int32Array;
  /** The NIC window's control words: W_OWNER_SLEEPING, our "kick me" to the NIC, is there. */
  private readonly win: Int32Array;
  /** The buffers isend and irecv were last given, and the library's views of them (codes.ts). */
  private readonly sendBuffer = new BufferCheck();
  private readonly recvBuffer = new BufferCheck();
  private readonly ctx: EndpointContext;
  private readonly regions: Regions;
  private readonly completion: Completion;
  private readonly partners: PartnerTable;
  private readonly sends: PendingSends;
  private readonly matching: Matching;
  private readonly nic: NicQueues;
  private readonly nicRecords: NicRecords;
  private readonly connections: Connections;
  /** MX over Ethernet, if the domain has a network device: its path, and its connects. */
  private readonly ether: EtherEngine | undefined;
  private readonly etherConnect: EtherConnector | undefined;
  private traceSeq = 0;
  private wakeupPending = false;

  constructor(
    private readonly driver: MxDriver,
    opts: EndpointOptions,
  ) {
    // Every option is checked before the driver opens anything: an option it refuses costs
    // no endpoint (a NIC context, one of the domain's quota).
    const o = checkOptions(opts);
    this.rndvThreshold = o.rndvThreshold;
    this.thresholdSet = opts.rndvThreshold !== undefined;
    this.spinUs = o.spinUs;
    this.spin = new SpinBudget(o.spinUs, o.spinMaxUs);
    this.key = opts.key >>> 0;
    this.nicId = driver.nicId;
    let ep: ReturnType<MxDriver["openEndpoint"]>;
    try {
      ep = driver.openEndpoint(o.endpointId, this.key);
    } catch (e) {
      throw asMxError(e, "MX_BAD_ENDPOINT");
    }
    this.endpointId = ep.endpointId;
    this.session = ep.session;
    try {
      this.intr = new Int32Array(ep.intr);
      this.win = new Int32Array(ep.window, 0, W_OWNER_SLEEPING + 1);
      // The parts, bottom up (the header's table).
      const ctx = (this.ctx = new EndpointContext(this.nicId, this.endpointId, this.session, this.key));
      this.ctxCounters = ctx.counters;
      const regions = (this.regions = new Regions(driver, this.endpointId, opts.memory, ctx.counters));
      const rights = (this.rights = new PullRights(ep.window));
      const completion = (this.completion = new Completion(ctx, regions, rights));
      const partners = (this.partners = new PartnerTable(completion));
      const sends = (this.sends = new PendingSends(ctx, completion));
      const matching = (this.matching = new Matching(ctx, completion, partners, o.maxUnexpected));
      const nic = (this.nic = new NicQueues(ep.window, ctx, completion, regions));
      const parts = { ctx, driver, nic, partners, sends, completion, matching, rights, regions };
      const nicRecords = (this.nicRecords = new NicRecords(parts));
      const channels = new Channels({ ...parts, laneGroups: new LaneGroups() });
      nic.attach(nicRecords, channels);
      // Told of a failed peer in this order: its waiting sends, NIC pulls, unexpected rendezvous, Ethernet state.
      partners.onPeerLost(sends);
      partners.onPeerLost(nic);
      partners.onPeerLost(matching);
      if (o.trace > 0) this.enableTrace(o.trace);
      if (opts.ether !== undefined) {
        this.ether = new EtherEngine(opts.ether, parts);
        this.etherConnect = new EtherConnector(this.ether, parts);
        partners.onPeerLost(this.ether);
        partners.split = opts.split === true || driver.path === "split";
      }
      const block: Block = (ready, timeoutMs) => this.block(ready, timeoutMs);
      this.connections = new Connections(
        ctx,
        driver,
        partners,
        channels,
        nicRecords,
        this.etherConnect,
        block,
      );
    } catch (e) {
      // The driver opened the endpoint: it goes back now, not at mx_finalize (40 failed opens
      // once held all of a domain's endpoints until then).
      this.closed = true;
      try {
        this.etherConnect?.detach();
      } catch {
        // a hub that never took the endpoint
      }
      try {
        driver.closeEndpoint(this.endpointId);
      } catch {
        // the driver side is gone already: nothing left to release
      }
      const m = asMxError(e, "MX_FAILURE");
      throw new MxError(
        m.codeName,
        `${m.message.replace(/^MX_[A-Z_]+: /, "")} (while setting up endpoint ${this.endpointId}; it was closed again)`,
      );
    }
  }

  /** What this endpoint counted (MX's statistics): progress rounds as of this read. */
  get counters(): EndpointCounters {
    const c = this.ctxCounters;
    c.progress = this.ctx.rounds >>> 0;
    return c;
  }

  /** The path the endpoint's own traffic takes now: "native", "bypass" or "split". */
  get path(): string {
    return this.partners.split ? "split" : this.driver.path;
  }

  get address(): { nic: number; endpoint: number } {
    return { nic: this.nicId, endpoint: this.endpointId };
  }

  /** Where this endpoint's Ethernet frames go out, if it has a network device. */
  get mac(): string | undefined {
    return this.ether?.mac;
  }

  /** The bounds of this endpoint's registration cache and bounce pool (regcache.ts). */
  get cacheLimits(): RegLimits {
    return this.regions.limits;
  }

  // ---- tracing --------------------------------------------------------------------------------

  /** Stages are being stamped into `traceBuffer` (see enableTrace). */
  get tracing(): boolean {
    return this.ctx.trace !== undefined;
  }

  /** Starts stamping messages into a fresh trace buffer of `capacity` records (default 65536). */
  enableTrace(capacity: number = DEFAULT_TRACE_RECORDS): TraceBuffer {
    this.traceBuffer = new TraceBuffer(checkTraceCapacity(capacity, "enableTrace: capacity"));
    this.ctx.trace = this.traceBuffer;
    return this.traceBuffer;
  }

  /** Stops stamping; the buffer stays readable. */
  disableTrace(): void {
    this.ctx.trace = undefined;
  }

  // ---- connections ----------------------------------------------------------------------

  /** mx_connect: resolves a peer endpoint, checking its key. Connecting twice returns the same address. */
  connect(nic: number, endpoint: number, key: number, timeoutMs: number = 2 * WIRE_TIMEOUT_MS): MxAddress {
    this.checkOpen();
    checkTimeout(timeoutMs, "connect: timeout");
    return this.connections.connect(nic, endpoint, key, timeoutMs).address;
  }

  /**
   * mx_disconnect: forgets a peer; its pending sends complete with MX_STATUS_ENDPOINT_CLOSED.
   * What it already wrote into our channel is taken first (as when a peer goes away).
   */
  disconnect(addr: MxAddress): void {
    // Kept in the index, dead: connecting again continues the pair's sequence numbers (a
    // co-resident pair's channel closes for both sides: its next connection starts afresh).
    const peer = this.partners.of(addr);
    if (peer === undefined) return;
    // What already went into its Ethernet stream reaches it first (a closing endpoint's linger).
    this.ether?.lingerFor(peer);
    this.connections.disconnect(peer);
  }

  /** Peers this endpoint knows (connected to, or that connected to it). */
  connectedPeers(): readonly MxAddress[] {
    return this.partners.live().map((p) => p.address);
  }

  /**
   * Why the peer behind `addr` is gone — the library failed it (garbage, a flood, silence),
   * it went away, it was disconnected or this endpoint closed — or undefined while it lives
   * (and for an address not connected on this endpoint). Receives match on bits, not peers,
   * so a layer that knows which peer a receive waits on asks here (MPI's exact-source receives).
   */
  peerDead(addr: MxAddress): string | undefined {
    return this.partners.of(addr)?.dead;
  }

  /**
   * Moves this endpoint to the split path ("split": every peer over Ethernet, through netback
   * and the bridge) or back to its fast path ("bypass"/"native"), with traffic flowing. Peers
   * are told with a PATH frame and keep reading every way in, and each pair's messages carry
   * sequence numbers, so nothing is lost, duplicated or reordered by the move.
   */
  switchPath(to: "split" | "bypass" | "native", timeoutMs: number = 2 * WIRE_TIMEOUT_MS): void {
    this.checkOpen();
    checkTimeout(timeoutMs, "switchPath: timeout");
    this.connections.switchPath(to, timeoutMs);
  }

  // ---- sends and receives -----------------------------------------------------------------

  /** mx_isend with the 64-bit match value as two 32-bit words (no BigInt on the hot path). */
  isend(buffer: Uint8Array, dest: MxAddress, matchHi: number, matchLo: number, context?: unknown): MxRequest {
    return this.send(
      buffer,
      dest,
      u32Arg(matchHi, "isend: matchHi"),
      u32Arg(matchLo, "isend: matchLo"),
      context,
      false,
    );
  }

  /** mx_issend: completes only once the receiver has matched the message. */
  issend(
    buffer: Uint8Array,
    dest: MxAddress,
    matchHi: number,
    matchLo: number,
    context?: unknown,
  ): MxRequest {
    return this.send(
      buffer,
      dest,
      u32Arg(matchHi, "issend: matchHi"),
      u32Arg(matchLo, "issend: matchLo"),
      context,
      true,
    );
  }

  /** isend and issend, the match words checked (u32Arg) by them. */
  private send(
    buffer: Uint8Array,
    dest: MxAddress,
    matchHi: number,
    matchLo: number,
    context: unknown,
    sync: boolean,
  ): MxRequest {
    this.checkOpen();
    const view = this.sendBuffer.check(buffer, "isend");
    const peer = this.partners.of(dest);
    if (peer === undefined)
      throw new MxError(
        "MX_BAD_ADDR_LIST",
        "isend: destination is not an address connected on this endpoint",
      );
    const req = new MxRequest("send", view, context);
    req.peer = peer;
    req.matchHi = matchHi;
    req.matchLo = matchLo;
    req.msgLength = view.length;
    req.source = dest;
    req.sync = sync;
    MxRequest.claim(req, this.ctx);
    // The path's own eager limit applies unless the owner chose a threshold.
    const limit = this.thresholdSet ? this.rndvThreshold : (peer.path?.eagerLimit ?? this.rndvThreshold);
    req.rndv = view.length > limit;
    this.ctxCounters.sends++;
    const tb = this.ctx.trace;
    if (tb !== undefined) {
      this.traceSeq = (this.traceSeq + 1) >>> 0 || 1;
      req.traceId = traceId(this.nicId, this.endpointId, this.traceSeq);
      tb.record(req.traceId, TraceStage.Posted, traceNow());
    }
    const path = peer.path;
    if (peer.dead !== undefined || path === undefined) {
      if (peer.dead !== undefined) req.reason = `this peer is disconnected: ${peer.dead}`;
      this.completion.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return req;
    }
    if (req.rndv && this.sentEager(req, peer, path)) return req;
    if (req.rndv && path.pushes?.(req) !== true && !this.regions.prepareSend(req)) {
      this.completion.complete(req, MxStatus.NO_RESOURCES, 0);
      return req;
    }
    if (peer.backlog.length > 0 || !path.trySend(req)) peer.backlog.push(req);
    return req;
  }

  /**
   * A message above the threshold that its path takes eager (a co-resident channel, up to
   * its eagerMax): written now, or queued in order behind the sends waiting for lane room, as
   * a smaller eager send is. A lane that is full now is read by a peer that is busy copying
   * out (a window of 64 KiB sends): waiting for it beats handing the message to the NIC. A
   * later path change meets eager messages of at most CHANNEL_EAGER_BYTES, which every path
   * carries (the NIC's SEND_MAX, MX over Ethernet's eager limit; test/mx-channel-eager.test.ts).
   */
  private sentEager(req: MxRequest, peer: Partner, path: PeerPath): boolean {
    const max = path.eagerMax;
    if (max === undefined || this.thresholdSet || req.buffer.length > max) return false;
    req.rndv = false;
    if (peer.backlog.length > 0 || !path.trySend(req)) peer.backlog.push(req);
    return true;
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
    // Each word read once, as given (no valueOf runs): what checkMatch sees is what is stored.
    matchHi = u32Arg(matchHi, "irecv: matchHi");
    matchLo = u32Arg(matchLo, "irecv: matchLo");
    maskHi = u32Arg(maskHi, "irecv: maskHi");
    maskLo = u32Arg(maskLo, "irecv: maskLo");
    this.checkOpen();
    const view = this.recvBuffer.check(buffer, "irecv");
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    const req = new MxRequest("recv", view, context);
    req.matchHi = matchHi;
    req.matchLo = matchLo;
    req.matchMaskHi = maskHi | 0;
    req.matchMaskLo = maskLo | 0;
    MxRequest.claim(req, this.ctx);
    this.ctxCounters.recvs++;
    this.matching.post(req);
    return req;
  }

  // ---- completion -----------------------------------------------------------------------------

  /** mx_test: if the request is done, returns its status and frees it; otherwise undefined. */
  test(req: MxRequest): MxStatusInfo | undefined {
    this.checkRequest(req);
    if (!req.done) this.progress();
    return req.done ? this.completion.reap(req) : undefined;
  }

  /**
   * mx_wait: blocks until the request completes or `timeoutMs` passes (MX_INFINITE = 0:
   * forever). Returns the status, or undefined on timeout or mx_wakeup.
   */
  wait(req: MxRequest, timeoutMs: number = MX_INFINITE): MxStatusInfo | undefined {
    this.checkRequest(req);
    checkTimeout(timeoutMs);
    // The common case — the peer answers within a few hundred polls — reads no clock and
    // allocates nothing.
    for (let i = 0; i < FAST_POLLS; i++) {
      if (req.done) return this.completion.reap(req);
      this.progress();
    }
    if (req.done || this.block(() => req.done, timeoutMs)) return this.completion.reap(req);
    return undefined;
  }

  /** mx_test_any: the first completed request whose match value fits (info, mask). */
  testAny(matchHi: number, matchLo: number, maskHi: number, maskLo: number): MxStatusInfo | undefined {
    matchHi = u32Arg(matchHi, "testAny: matchHi");
    matchLo = u32Arg(matchLo, "testAny: matchLo");
    maskHi = u32Arg(maskHi, "testAny: maskHi");
    maskLo = u32Arg(maskLo, "testAny: maskLo");
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    this.progress();
    const r = this.completion.find(matchHi, matchLo, maskHi, maskLo);
    return r ? this.completion.reap(r) : undefined;
  }

  waitAny(
    timeoutMs: number,
    matchHi: number,
    matchLo: number,
    maskHi: number,
    maskLo: number,
  ): MxStatusInfo | undefined {
    checkTimeout(timeoutMs);
    matchHi = u32Arg(matchHi, "waitAny: matchHi");
    matchLo = u32Arg(matchLo, "waitAny: matchLo");
    maskHi = u32Arg(maskHi, "waitAny: maskHi");
    maskLo = u32Arg(maskLo, "waitAny: maskLo");
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    let found: MxRequest | undefined;
    // A closed endpoint completes nothing more: what completed at its close is there, or not.
    const ok = this.block(() => {
      found = this.completion.find(matchHi, matchLo, maskHi, maskLo);
      return found !== undefined || this.closed;
    }, timeoutMs);
    return ok && found ? this.completion.reap(found) : undefined;
  }

  /** mx_ipeek: some completed request, not yet reaped (the caller then tests it). */
  ipeek(): MxRequest | undefined {
    this.progress();
    return this.completion.first();
  }

  peek(timeoutMs: number = MX_INFINITE): MxRequest | undefined {
    checkTimeout(timeoutMs);
    return this.block(() => this.completion.first() !== undefined || this.closed, timeoutMs)
      ? this.completion.first()
      : undefined;
  }

  /** mx_iprobe: is an unexpected message matching (info, mask) waiting? Does not consume it. */
  iprobe(matchHi: number, matchLo: number, maskHi: number, maskLo: number): MxStatusInfo | undefined {
    matchHi = u32Arg(matchHi, "iprobe: matchHi");
    matchLo = u32Arg(matchLo, "iprobe: matchLo");
    maskHi = u32Arg(maskHi, "iprobe: maskHi");
    maskLo = u32Arg(maskLo, "iprobe: maskLo");
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    this.progress();
    return this.matching.probe(matchHi, matchLo, maskHi, maskLo);
  }

  probe(
    timeoutMs: number,
    matchHi: number,
    matchLo: number,
    maskHi: number,
    maskLo: number,
  ): MxStatusInfo | undefined {
    checkTimeout(timeoutMs);
    matchHi = u32Arg(matchHi, "probe: matchHi");
    matchLo = u32Arg(matchLo, "probe: matchLo");
    maskHi = u32Arg(maskHi, "probe: maskHi");
    maskLo = u32Arg(maskLo, "probe: maskLo");
    checkMatch(matchHi, matchLo, maskHi, maskLo);
    this.checkOpen();
    let s: MxStatusInfo | undefined;
    this.block(
      () => (s = this.matching.probe(matchHi, matchLo, maskHi, maskLo)) !== undefined || this.closed,
      timeoutMs,
    );
    return s;
  }

  /** mx_cancel: removes an unmatched receive (true) — sends and matched receives cannot be cancelled. */
  cancel(req: MxRequest): boolean {
    this.checkRequest(req);
    if (req.kind === "send") throw new MxError("MX_CANCEL_NOT_SUPPORTED", "a send cannot be cancelled");
    return this.matching.cancel(req);
  }

  /**
   * mx_forget: the request goes on and completes as it would (a send is still delivered, what
   * it holds goes back), but it is never reported, and the endpoint keeps nothing of it. For
   * a request its owner will not wait for: an error abandoned an exchange midway.
   */
  forget(req: MxRequest): void {
    this.checkRequest(req);
    this.completion.forget(req);
  }

  /** The longest a blocking call may spin before it sleeps, µs (EndpointOptions.spinMaxUs). */
  get spinMaxUs(): number {
    return Math.max(this.spin.maxUs, this.spinUs);
  }

  /**
   * Changes spinMaxUs once the owner knows more than at open (MPI, once it knows where its
   * peers are: ranks that all share this host's channels may busy-poll, ranks with a peer
   * behind the NIC leave it the cores). The spin starts again from the short one.
   */
  setSpinMax(us: number): void {
    this.spin = new SpinBudget(this.spinUs, checkSpin(us, "spinMaxUs"));
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
    checkTimeout(timeoutMs);
    const deadline = timeoutMs === MX_INFINITE ? Number.POSITIVE_INFINITY : performance.now() + timeoutMs;
    for (;;) {
      this.progress();
      if (req.done) return this.completion.reap(req);
      const left = deadline - performance.now();
      if (left <= 0) return undefined;
      // As sleepUntil: announce, look again, look at the flags once more, sleep.
      const seq = Atomics.load(this.intr, I_SEQ);
      this.announceSleep();
      this.ctxCounters.sleeps++;
      this.progress(true);
      if (req.done) {
        this.endSleep();
        return this.completion.reap(req);
      }
      if (this.sleepAnnounced()) {
        const r = Atomics.waitAsync(this.intr, I_SEQ, seq, this.sleepSlice(left, SLEEP_SLICE_MS));
        if ((r.async ? await r.value : r.value) === "timed-out") this.ctxCounters.sleepTimeouts++;
      }
      this.endSleep();
    }
  }

  // ---- progress and blocking ------------------------------------------------------------------

  /**
   * Moves everything that can move: channel records in, NIC events, backlogged sends out,
   * Ethernet. True if a channel moved something (a record read, a pushed piece or a
   * backlogged send written).
   */
  progress(full = false): boolean {
    if (this.closed) return false;
    let movedAny = false;
    // Rare conditions (a peer gone, a NIC event with nothing pulling) are looked at on every
    // 32nd idle poll only: a spinning wait then touches one cache line per peer.
    const ctx = this.ctx;
    const round = (ctx.rounds = (ctx.rounds + 1) | 0);
    const sweep = full || (round & 31) === 0 || this.nic.pulling;
    const partners = this.partners;
    partners.compact();
    this.ctx.lookAgainAt = 0;
    const peers = partners.list;
    for (let p = 0; p < peers.length; p++) {
      const peer = peers[p];
      if (peer.dead !== undefined) continue;
      const ch = peer.channel;
      if (ch === undefined) {
        if (peer.backlog.length > 0) partners.flush(peer);
        continue;
      }
      const moved = ch.receive(sweep);
      if (moved) movedAny = true;
      if (peer.dead !== undefined) continue;
      // Sends that waited for lane room and went now count as movement: the writer of a
      // window of eager messages keeps spinning while the reader makes room, not sleeping
      // at every lane-full (a 64 KiB stream fell to 1.5–3 GB/s in runs where it slept).
      if (peer.backlog.length > 0 && partners.flush(peer)) movedAny = true;
      if (sweep && !moved) ch.checkClosed();
    }
    if (sweep) this.completion.finishRevokes();
    if (sweep || partners.usesNic) {
      this.nic.poll();
      if (sweep && this.sends.size > 0 && partners.usesNic)
        this.nicRecords.probeSilentPeers(performance.now());
      if (this.nicRecords.retrying) this.nicRecords.retryBusy(performance.now());
    }
    // Ethernet: every time while it carries traffic; else now and then (every 256th poll, and
    // before sleeping), to answer connects and path changes without taxing the fast path.
    const ether = this.ether;
    if (ether !== undefined && (partners.split || ether.active || full || (round & 255) === 0)) ether.poll();
    return movedAny;
  }

  /**
   * Blocks until `ready()` holds: spins on progress for spinUs, then sleeps on the
   * interrupt page (announcing it, then re-checking, so no kick is lost), in slices.
   */
  private block(ready: () => boolean, timeoutMs: number): boolean {
    if (!this.spin.adaptive) return this.blockFor(ready, timeoutMs);
    const start = performance.now();
    this.blockSlept = false;
    this.blockPreempted = false;
    const ok = this.blockFor(ready, timeoutMs);
    this.spin.after((performance.now() - start) * 1000, this.blockSlept, this.blockPreempted);
    return ok;
  }

  private blockFor(ready: () => boolean, timeoutMs: number): boolean {
    checkTimeout(timeoutMs);
    const infinite = timeoutMs === MX_INFINITE || timeoutMs === Number.POSITIVE_INFINITY;
    const start = performance.now();
    const deadline = infinite ? Number.POSITIVE_INFINITY : start + timeoutMs;
    this.progress();
    if (ready()) return true;
    // The spin lasts spinUs past the last time a channel moved something: a large message
    // pushed piece by piece keeps both sides spinning rather than sleeping between pieces.
    // (An adaptive spin starts from its current budget, and watches for preemption: a gap
    // between clock reads while nothing moved.)
    // While the NIC copies for us (a pull we asked for, or a rendezvous of ours it may pull),
    // its thread needs a core: the spin is the short one, not the busy-poll (a 64 KiB stream
    // on one host: 1.0–1.6 GB/s busy-polling against 1.6–3.1 spinning briefly).
    const nicBusy = this.nic.pulling || this.rights.armed > 0;
    const budgetMs = (nicBusy ? this.spinUs : this.spin.budgetUs) / 1000;
    const spinMs = this.spinUs / 1000;
    // No spin outlasts the timeout.
    let spinEnd = Math.min(start + budgetMs, deadline);
    let moving = false;
    let lastRead = start;
    let movedSinceRead = false;
    for (let i = 0; ; i++) {
      if (this.wakeupPending) {
        this.wakeupPending = false;
        return false;
      }
      if (this.progress()) moving = movedSinceRead = true;
      if (ready()) return true;
      if ((i & 63) === 63) {
        // Every comparison is made on every clock read, none behind a && that is rarely
        // true: one V8 had never seen evaluated deoptimized this loop when it first was (a
        // preemption, a transfer that kept moving), and V8 recompiled the loop in 17–22 ms
        // each time, in MPI jobs on a core a rank was using.
        const now = performance.now();
        const stalled = now - lastRead > PREEMPTED_GAP_MS;
        const shortSpinDone = now - start >= spinMs;
        const beforeDeadline = now < deadline;
        const spinDone = now >= spinEnd;
        const extended = now + spinMs;
        const reachesFurther = extended > spinEnd;
        if (stalled && !movedSinceRead) this.blockPreempted = true;
        lastRead = now;
        movedSinceRead = false;
        if (this.blockPreempted && shortSpinDone) break;
        if (moving && beforeDeadline) {
          if (reachesFurther) spinEnd = extended;
          moving = false;
        } else if (spinDone) break;
      }
    }
    return this.sleepUntil(ready, deadline);
  }

  /**
   * The sleeping half of blockFor: sleeps on the interrupt page in slices until `ready()` or
   * the deadline. Its own method so that V8 optimizes the spin apart from it: a branch here
   * taken for the first time deoptimizes only this, not the spin every wait runs through
   * (which V8 recompiled in 17–22 ms each time, on a core a rank was using).
   */
  private sleepUntil(ready: () => boolean, deadline: number): boolean {
    const intr = this.intr;
    this.blockSlept = true;
    for (;;) {
      const now = performance.now();
      if (now >= deadline) return false;
      // No kick is lost. Each waker (the NIC, a co-resident peer) publishes its event or record
      // and then looks at its own "kick me" flag; we read I_SEQ, raise every flag, then look
      // at everything (progress(true)) — all with sequentially consistent atomics. So either
      // our look finds what it published, or its look finds its flag up: it takes the flag
      // down and bumps I_SEQ, and our wait on the value read before returns at once (or the
      // notify after the bump wakes it). Each flag lives where only that waker and we reach
      // it (announceSleep), so a hostile peer can silence its own kicks, never another's.
      // I_SEQ is on the interrupt page, which every peer holds: a hostile one could set it
      // back to `seq` after a kick, so the flags are looked at once more just before the
      // wait — one taken down since means a kick is on its way, and we look again instead.
      const seq = Atomics.load(intr, I_SEQ);
      // Our NIC copies for us from this host's memory: its pulls done well need not kick us
      // while it has more of our work (window.ts OWNER_SLEEPING_QUIET); we look every
      // QUIET_SLICE_MS instead. (A pull across the wire ends at the wire's pace: kicked.)
      const quiet = this.nic.pullingLocally;
      this.announceSleep(quiet);
      this.ctxCounters.sleeps++;
      this.progress(true);
      if (ready() || this.wakeupPending) {
        this.endSleep();
        if (this.wakeupPending) {
          this.wakeupPending = false;
          return ready();
        }
        return true;
      }
      const ether = this.ether;
      if (ether !== undefined && this.partners.split) {
        // Our peers reach us over Ethernet: netback's event channel wakes us. A peer still
        // writing to an old channel kicks no more, hence the short slices.
        this.endSleep();
        ether.wait(Math.min(deadline - now, MIXED_SLICE_MS));
      } else if (this.sleepAnnounced(quiet)) {
        const slice = quiet ? QUIET_SLICE_MS : ether?.active ? MIXED_SLICE_MS : SLEEP_SLICE_MS;
        if (Atomics.wait(intr, I_SEQ, seq, this.sleepSlice(deadline - now, slice)) === "timed-out")
          this.ctxCounters.sleepTimeouts++;
      }
      this.endSleep();
      // Woken: spin again briefly (longer while something moves), the sender usually has more for us.
      let again = Math.min(performance.now() + this.spinUs / 1000, deadline);
      let movedSince = false;
      for (let i = 0; ; i++) {
        if (this.progress()) movedSince = true;
        if (ready()) return true;
        if ((i & 63) === 63) {
          const now = performance.now();
          if (movedSince && now < deadline) {
            again = now + this.spinUs / 1000;
            movedSince = false;
          } else if (now >= again) break;
        }
      }
    }
  }

  /**
   * Says "kick me" to everyone who may wake us, each in memory that only it and we reach: to
   * the NIC in our window (W_OWNER_SLEEPING), to each co-resident peer in the lane it writes
   * to us (ChannelEnd.announceSleep). Never on the interrupt page, which all our peers hold:
   * a flag there, one peer could clear for all of them (window.ts). Atomic stores, each
   * before the look that follows (sleepUntil).
   */
  private announceSleep(quiet = false): void {
    Atomics.store(this.win, W_OWNER_SLEEPING, quiet ? OWNER_SLEEPING_QUIET : OWNER_SLEEPING);
    const peers = this.partners.list;
    for (let p = 0; p < peers.length; p++) peers[p].channel?.announceSleep();
  }

  /**
   * Whether every flag announceSleep raised is still up: false once a waker took its own down
   * (it kicked us, or is about to), or when a channel mapped since has none.
   */
  private sleepAnnounced(quiet = false): boolean {
    if (Atomics.load(this.win, W_OWNER_SLEEPING) !== (quiet ? OWNER_SLEEPING_QUIET : OWNER_SLEEPING))
      return false;
    const peers = this.partners.list;
    for (let p = 0; p < peers.length; p++) {
      const ch = peers[p].channel;
      if (ch !== undefined && !ch.sleepAnnounced()) return false;
    }
    return true;
  }

  /** Awake: every flag announceSleep raised comes down, so no waker kicks us while we run. */
  private endSleep(): void {
    const win = this.win;
    if (win[W_OWNER_SLEEPING] !== 0) Atomics.store(win, W_OWNER_SLEEPING, 0);
    const peers = this.partners.list;
    for (let p = 0; p < peers.length; p++) peers[p].channel?.awake();
  }

  /** How long one sleep may last: no longer than `left` or `slice`, nor past the time a lane held by its caps may be read again. */
  private sleepSlice(left: number, slice: number): number {
    const held = this.ctx.lookAgainAt;
    const t = Math.min(left, slice);
    return held === 0 ? t : Math.min(t, Math.max(0, held - performance.now()));
  }

  // ---- memory ---------------------------------------------------------------------------------

  /** Memory for message buffers: in this domain's memory, so large messages need no bounce copy. */
  alloc(length: number): Uint8Array {
    this.checkOpen();
    if (typeof length !== "number")
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        `alloc: length must be a non-negative integer, got ${shown(length)}`,
      );
    return this.regions.alloc(length);
  }

  free(buffer: Uint8Array): void {
    this.regions.free(buffer);
  }

  // ---- teardown ---------------------------------------------------------------------------------

  /** mx_close_endpoint: pending requests complete with MX_STATUS_ENDPOINT_CLOSED; channels close. */
  close(): void {
    if (this.closed) return;
    const until = performance.now() + NIC_LINGER_MS;
    while (this.nic.sqPending() > 0 && performance.now() < until) {
      this.nic.poll();
      const seq = Atomics.load(this.intr, I_SEQ);
      if (this.nic.sqPending() > 0) Atomics.wait(this.intr, I_SEQ, seq, 1);
    }
    const ether = this.ether;
    ether?.linger();
    ether?.close();
    this.connections.closing();
    for (const peer of this.partners.list)
      this.partners.fail(peer, "endpoint closed", MxStatus.ENDPOINT_CLOSED);
    this.matching.closePosted(MxStatus.ENDPOINT_CLOSED);
    this.closed = true;
    this.etherConnect?.detach();
    try {
      this.driver.closeEndpoint(this.endpointId);
    } catch {
      // The driver side may already be gone (host shutting down): nothing left to release here.
    }
    // The window and every right in it are gone with the endpoint: no copy can be under way.
    this.completion.abandonRevokes();
    // Closing released the endpoint's registrations; the bounce buffers, the buffers alloc
    // handed out that free did not take back, and the NIC staging area go back to memory.
    this.regions.close();
    this.nicRecords.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new MxError("MX_BAD_ENDPOINT", `endpoint ${this.endpointId} is closed`);
  }

  private checkRequest(req: MxRequest): void {
    const whose = MxRequest.of(req, this.ctx);
    if (whose !== "yes")
      throw new MxError(
        "MX_BAD_REQUEST",
        whose === "foreign"
          ? `this request belongs to another endpoint, not to endpoint ${this.endpointId}: wait for it on the endpoint that posted it`
          : "not a request of this library",
      );
    if (req.state === RequestState.Reaped || req.forgotten)
      throw new MxError(
        "MX_BAD_REQUEST",
        req.forgotten
          ? "this request was forgotten (mx_forget): it is never reported"
          : "this request was already completed (tested or waited)",
      );
  }
}

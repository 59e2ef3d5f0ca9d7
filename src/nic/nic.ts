/**
 * The emulated NIC (the MX firmware of a Myri-10G): the Nic object builds its engines, serves
 * the driver's control requests, and runs the loop that polls its endpoints and sleeps when
 * idle (Open-MX's driver/linux/omx_main.c and omx_dev.c). It runs in the NIC worker
 * (nic-worker.ts) but has no worker dependency, so unit tests may drive it in-thread with
 * control() and poll().
 *
 * Where things are, like Open-MX's driver (each file names its counterpart). The contracts,
 * which import nothing above them: window.ts (the endpoint window: control words, descriptors,
 * events, pull rights, each word and who writes it), frame.ts (the frames between NICs, per
 * type, and the one writer of their headers), ether-port.ts (the Ethernet port's rings),
 * control.ts (control requests), status.ts, counters.ts, clock.ts. The engines, each
 * importing only those below it:
 *
 *   nic.ts          Nic: construction, control(), the run loop, the send queues' descriptors
 *   control-service.ts  what each control request does (open, close, regions, lookup, QoS, info)
 *   links.ts        attach/detach/lose links, frame dispatch, the wire timer, silent peers
 *   send.ts         SEND descriptors out, SEND and SEND_ACK frames in, the send window
 *   remote-pull.ts  remote PULLs: RemotePullTable (requester) and served jobs (responder)
 *   connect.ts      CONNECT: ConnectTable, key checks (connect-throttle.ts), frames
 *   ether-service.ts  the Ethernet port's rings ↔ ETHERNET frames, MAC learning
 *   delivery.ts     payloads into receive areas, the delivery queue, SEND_ACKs, keepalives
 *   dma.ts          local PULLs: the chunked copy engine
 *   exposure.ts     pull rights: take, check, end
 *   events.ts       every event the NIC writes, the backlog, interrupts
 *   link-state.ts   per-link state (control queue, send window, jobs), LinkTable, MacTable
 *   slot-table.ts   SlotTable: the slots and ids of the connect, remote-pull, window and job tables
 *   endpoints.ts    EndpointContext, EndpointTable: open, close, look up
 *   tpt.ts          the translation and protection table
 *
 * Trust: every word an owner writes into its window (descriptors, producer and consumer
 * indices, even the control words the NIC itself wrote) and every frame from a link is
 * hostile. The NIC keeps its own copy of each index and each endpoint's state and session,
 * copies a descriptor out of the queue before validating it, and reaches memory only through
 * the TPT. Garbage gets an ERROR event and a counter.
 *
 * Wire state is bounded: SEND_WINDOW unacknowledged SENDs per link (more on a NIC of more than
 * 32 endpoints: every endpoint's share fits), DEST_CREDITS of them per destination endpoint and
 * SRC_CREDITS per sending endpoint, PULL_JOBS_PER_LINK pulls per link and a domain's share of
 * them, as many as it leaves free for domains holding none (PULL_LINK_SHARE; a pull beyond
 * waits parked, holding no queue),
 * CONNECT_CREDITS connects per endpoint and PULL_CREDITS remote pulls per endpoint (the next
 * waits in its queue); a delivery is held for receive space HOLD_MS at most. What a lost or
 * silent link costs, and the wire timer, are in links.ts.
 *
 * Idle: after work the NIC polls its endpoints for its poll budget (poll-budget.ts: up to
 * POLL_AFTER_EVENTS_MS after it gave an owner events, POLL_AFTER_FRAMES_MS after it only moved
 * frames; shorter while its wake-ups come later than that), then sets W_NIC_SLEEPING in
 * every open window, re-checks every doorbell, and waits in its event loop (one
 * Atomics.waitAsync per window on W_SQ_PROD). A doorbell with notify, a control request or a
 * link frame wakes it. Owners do not notify when they only consume events or release receive
 * space, so while completions or deliveries wait for such space a backstop timer (1 → 8 ms)
 * re-checks; an owner notifies W_SQ_PROD after releasing space while W_NIC_SLEEPING is
 * NIC_SLEEPING_HOLDING (the NIC holds deliveries for it; notify wakes the NIC whatever the
 * word's value).
 *
 * Allocation: the per-descriptor and per-frame paths use preallocated scratch (the descriptor
 * in hand here, the event in events.ts, the delivery and frames in each engine), passed as
 * arguments, and numbers only; the one object they create is the typed-array view
 * `Uint8Array.prototype.set` needs per copied run (copies up to 64 bytes are done by a loop
 * instead), and a frame with a payload sent on a link (SEND, PULL_REPLY, ETHERNET) creates the
 * view of its frame.
 */
import type { MessagePort } from "node:worker_threads";
import { serveSyncCalls } from "../xen/sync-call.js";
import { NicClock } from "./clock.js";
import { ConnectLockout, Connector } from "./connect.js";
import { isInt, type NicInfo } from "./control.js";
import { ControlService } from "./control-service.js";
import { allocNicCounters, EndpointCounter, endpointCounterBase, NicCounter } from "./counters.js";
import { Delivery } from "./delivery.js";
import { DmaEngine } from "./dma.js";
import {
  DEFAULT_MAX_ENDPOINTS,
  type EndpointContext,
  EndpointTable,
  MAX_ENDPOINTS_LIMIT,
  STALLED,
} from "./endpoints.js";
import { EtherService } from "./ether-service.js";
import { Events } from "./events.js";
import { PullRights } from "./exposure.js";
import type { Link } from "./link.js";
import { LinkBound, MAX_LINKS, MAX_LINKS_LIMIT, MAX_LINKS_PER_ADDRESS } from "./link-bound.js";
import { LinkTable } from "./link-state.js";
import { Links } from "./links.js";
import { POLL_AFTER_EVENTS_MS, POLL_AFTER_FRAMES_MS, PollBudget } from "./poll-budget.js";
import { QosScheduler } from "./qos.js";
import { RemotePull } from "./remote-pull.js";
import { SendEngine } from "./send.js";
import { NicError } from "./status.js";
import { DEFAULT_MAX_REGIONS, Tpt } from "./tpt.js";
import {
  D_OPCODE,
  DESC_WORDS,
  DFLAG_REMOTE,
  ErrorReason,
  NIC_SLEEPING_HOLDING,
  Opcode,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_NIC_SLEEPING,
  W_SQ_CONS,
  W_SQ_PROD,
} from "./window.js";

/** Descriptors taken from one endpoint per round, so that one busy owner cannot starve the others. */
export const SQ_BATCH = 64;
/** Longest run of the poll loop before it yields to the event loop (control requests, link frames). */
const SLICE_MS = 2;
/**
 * With links attached, frames arrive through the event loop (the socket), which a running poll
 * loop does not see: it yields this often while busy, and after every idle round while it
 * polls, so that a frame from the wire is read within microseconds rather than at the end of
 * a slice or after a sleep and a wake-up (each yield is one non-blocking look at the sockets).
 */
export const LINKED_SLICE_MS = 0.25;
const BACKSTOP_MIN_MS = 1;
const BACKSTOP_MAX_MS = 8;

const SQ_W = SQ_OFFSET / 4;

export interface NicOptions {
  nicId: number;
  maxEndpoints?: number;
  maxRegions?: number;
  /** Peer NIC ids linked, or kept after their link went, in all (link-bound.ts; default MAX_LINKS). */
  maxLinks?: number;
  /** The same per remote address (default MAX_LINKS_PER_ADDRESS). */
  maxLinksPerAddress?: number;
  /** The counters' shared memory (allocNicCounters(maxEndpoints)); allocated if absent. */
  counters?: SharedArrayBuffer;
}

/** Validates NIC options (host side before spawning, and the engine again). Throws NicError. */
export function checkNicOptions(o: unknown): Required<Omit<NicOptions, "counters">> {
  const opts = o as Partial<NicOptions> | null;
  if (typeof opts !== "object" || opts === null)
    throw new NicError("EINVAL", "NIC options must be an object");
  const {
    nicId,
    maxEndpoints = DEFAULT_MAX_ENDPOINTS,
    maxRegions = DEFAULT_MAX_REGIONS,
    maxLinks = MAX_LINKS,
    maxLinksPerAddress = MAX_LINKS_PER_ADDRESS,
  } = opts;
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
  for (const [name, v] of [
    ["maxLinks", maxLinks],
    ["maxLinksPerAddress", maxLinksPerAddress],
  ] as const)
    if (!isInt(v) || v < 1 || v > MAX_LINKS_LIMIT)
      throw new NicError("EINVAL", `${name} must be an integer in 1..${MAX_LINKS_LIMIT}, got ${String(v)}`);
  return { nicId, maxEndpoints, maxRegions, maxLinks, maxLinksPerAddress };
}

export class Nic {
  readonly nicId: number;
  readonly maxEndpoints: number;
  readonly tpt: Tpt;
  readonly countersBuffer: SharedArrayBuffer;
  private readonly c: Float64Array;
  private readonly clock = new NicClock();
  private readonly eps: EndpointTable;
  private readonly events: Events;
  private readonly linkTable: LinkTable;
  private readonly dma: DmaEngine;
  private readonly delivery: Delivery;
  private readonly connector: Connector;
  private readonly remotePull: RemotePull;
  private readonly send: SendEngine;
  private readonly ether: EtherService;
  private readonly links: Links;
  /** Weights and caps per endpoint (qos.ts): who is served next, and who waits. */
  private readonly qos: QosScheduler;
  private readonly stopHooks: (() => void)[] = [];
  /** The descriptor being executed, copied out of its queue. */
  private readonly d = new Int32Array(DESC_WORDS);
  /** What each control request does (control-service.ts). */
  private readonly controlService: ControlService;
  /**
   * The endpoint whose descriptor is executing, and what it was owed once the descriptor's
   * completion was reserved: a descriptor that throws (a bug) before its completion is posted
   * gives its reservation back (poll).
   */
  private inHand: EndpointContext | null = null;
  private inHandOwed = 0;

  private scheduled = false;
  private asleep = false;
  /** Between start() and stop(): the loop runs by itself. Without start() a test drives poll(). */
  private running = false;
  private backstop: ReturnType<typeof setTimeout> | null = null;
  private backoffMs = BACKSTOP_MIN_MS;
  /** When the loop last found nothing to do (-1: it did something since). */
  private idleSince = -1;
  /**
   * How long the loop polls with nothing to do before it sleeps, adapted to the gaps it sees:
   * one budget for quiet spells after the NIC gave an owner events (its answer comes from a
   * guest on this host, soon), one for those after it only moved frames (what comes next comes
   * from the wire, later). One budget for both swung between them and wasted one kind of poll
   * in every ping-pong.
   */
  private readonly pollAfterEvents = new PollBudget(POLL_AFTER_EVENTS_MS);
  private readonly pollAfterFrames = new PollBudget(POLL_AFTER_FRAMES_MS);
  /** The budget of the current quiet spell. */
  private pollBudget = this.pollAfterEvents;
  /** NicCounter.events when the last quiet spell began. */
  private eventsAtQuiet = 0;

  constructor(options: NicOptions) {
    const { nicId, maxEndpoints, maxRegions, maxLinks, maxLinksPerAddress } = checkNicOptions(options);
    this.nicId = nicId;
    this.maxEndpoints = maxEndpoints;
    this.tpt = new Tpt(maxRegions);
    this.countersBuffer = options.counters ?? allocNicCounters(maxEndpoints);
    const c = (this.c = new Float64Array(this.countersBuffer));
    if (c.length < endpointCounterBase(maxEndpoints))
      throw new NicError("EINVAL", `the counters buffer is too small for ${maxEndpoints} endpoints`);
    const clock = this.clock;
    const eps = (this.eps = new EndpointTable(nicId, maxEndpoints, this.tpt, c));
    const events = (this.events = new Events(eps, c, clock));
    const rights = new PullRights(eps, this.tpt, clock, c);
    const table = (this.linkTable = new LinkTable(c, clock));
    this.dma = new DmaEngine(this.tpt, rights, events, c);
    const qos = (this.qos = new QosScheduler(maxEndpoints, c));
    this.delivery = new Delivery(nicId, eps, this.tpt, events, table, clock, c, qos.chargeOf);
    this.connector = new Connector(nicId, eps, events, table, clock, c);
    this.remotePull = new RemotePull(nicId, eps, this.tpt, rights, this.dma, events, table, clock, c, qos);
    this.send = new SendEngine(nicId, eps, this.tpt, events, this.delivery, table, clock, c, qos.chargeOf);
    this.ether = new EtherService(nicId, table, events, clock, c);
    this.links = new Links(
      nicId,
      table,
      eps,
      events,
      this.delivery,
      this.send,
      this.connector,
      this.remotePull,
      this.ether,
      clock,
      c,
      this.kick,
      new LinkBound(maxLinks, maxLinksPerAddress),
    );
    this.controlService = new ControlService({
      nicId,
      maxEndpoints,
      clock,
      eps,
      tpt: this.tpt,
      events,
      qos,
      dma: this.dma,
      delivery: this.delivery,
      connector: this.connector,
      remotePull: this.remotePull,
      ether: this.ether,
      linkTable: table,
      links: this.links,
      lockout: new ConnectLockout(),
    });
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
      return this.controlService.dispatch(req);
    } catch (e) {
      this.c[NicCounter.control_errors]++;
      throw e;
    } finally {
      this.events.flushRaises();
      // A request may have opened an endpoint or freed space: let the loop look.
      this.kick();
    }
  }

  /** What the NIC has open and attached (the info request). */
  info(): NicInfo {
    return this.controlService.info();
  }

  // ---- links (links.ts says what each does; tcp-link.ts drives them) ------------------------

  /** Attaches a link to `link.peerNic` (EBUSY if one is, unless `replace`: the peer reconnected). */
  attachLink(link: Link, replace = false): void {
    this.links.attach(link, replace);
  }

  /** Throws (EMLINK, counted links_refused) if a link from `peerNic` at `address` would be refused for the NIC's bounds. */
  checkLinkBound(peerNic: number, address: string): void {
    this.links.checkBound(peerNic, address);
  }

  /** Detaches the link to `peerNic` on request. */
  detachLink(peerNic: number): void {
    this.links.detach(peerNic);
  }

  /** The link went down by itself; `retrying`: a reconnecting link tries again. */
  linkLost(link: Link, retrying: boolean): void {
    this.links.lost(link, retrying);
  }

  /** A reconnecting link was cancelled, or gave up (`gaveUp`). */
  forgetLink(peerNic: number, gaveUp = false): void {
    this.links.forget(peerNic, gaveUp);
  }

  hasLink(peerNic: number): boolean {
    return this.linkTable.has(peerNic);
  }

  /** The link attached to `peerNic`, if any. */
  attachedLink(peerNic: number): Link | undefined {
    return this.linkTable.get(peerNic)?.link;
  }

  /** Runs `cb` when the NIC stops (reconnecting links cancel their retries). */
  onStop(cb: () => void): void {
    this.stopHooks.push(cb);
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
    this.linkTable.stopWireTimer();
    for (const cb of this.stopHooks.splice(0)) {
      try {
        cb();
      } catch {
        // A hook's failure must not keep the NIC from stopping.
      }
    }
    this.links.closeAll();
    for (const ctx of this.eps.ctxs) if (ctx.open) Atomics.notify(ctx.w, W_SQ_PROD);
  }

  /** Something may need doing: wake the NIC if it sleeps and make sure the loop runs. */
  readonly kick = (): void => {
    if (!this.running) return;
    // News (a frame, a doorbell, a request): the idle budget starts again.
    this.idleSince = -1;
    if (this.asleep) this.wake(false);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.runSlice);
    }
  };

  /** W_NIC_SLEEPING (and the Ethernet port's) in every open window. */
  private setSleeping(sleeping: number): void {
    const ctxs = this.eps.ctxs;
    const openIds = this.eps.openIds;
    for (let i = 0; i < this.eps.openCount; i++) {
      const ctx = ctxs[openIds[i]];
      // Holding deliveries for it: its owner tells us when it frees receive space (no backstop wait).
      const v = sleeping !== 0 && ctx.dqCount > 0 ? NIC_SLEEPING_HOLDING : sleeping;
      Atomics.store(ctx.w, W_NIC_SLEEPING, v);
    }
    this.ether.setSleeping(sleeping);
  }

  private wake(byTimer: boolean): void {
    this.asleep = false;
    this.c[NicCounter.wakeups]++;
    if (byTimer) {
      this.c[NicCounter.timer_wakeups]++;
      this.pollBudget.wokeByTimer();
    } else this.pollBudget.woke(performance.now());
    if (this.backstop) {
      clearTimeout(this.backstop);
      this.backstop = null;
    }
    this.setSleeping(0);
  }

  private readonly runSlice = (): void => {
    this.scheduled = false;
    if (!this.running) return;
    const start = performance.now();
    const linked = this.linkTable.list.length > 0;
    const slice = linked ? LINKED_SLICE_MS : SLICE_MS;
    for (;;) {
      const did = this.poll();
      const now = performance.now();
      if (did) {
        this.idleSince = -1;
        this.backoffMs = BACKSTOP_MIN_MS;
      } else if (this.idleSince < 0) {
        this.idleSince = now;
        const events = this.c[NicCounter.events];
        this.pollBudget = events !== this.eventsAtQuiet ? this.pollAfterEvents : this.pollAfterFrames;
        this.eventsAtQuiet = events;
      } else if (now - this.idleSince >= this.pollBudget.ms) {
        break;
      }
      // Busy: let control requests and link frames in, then carry on. Idle with links: look at
      // the sockets between rounds (the idle budget runs on across these yields).
      if (now - start >= slice || (linked && !did)) {
        this.scheduled = true;
        setImmediate(this.runSlice);
        return;
      }
    }
    const quietSince = this.idleSince;
    this.idleSince = -1;
    this.sleep(quietSince);
  };

  private sleep(quietSince: number): void {
    // Nothing more will ride with held SEND_ACKs: they go now, before the NIC stops looking.
    if (this.linkTable.acksHeld > 0) {
      this.links.cork();
      this.linkTable.flushAllAcks();
      this.links.uncork();
    }
    this.setSleeping(1);
    // An owner that rang before it could see the flag did not notify: look once more.
    if (this.poll()) {
      this.setSleeping(0);
      this.scheduled = true;
      setImmediate(this.runSlice);
      return;
    }
    this.asleep = true;
    this.pollBudget.slept(quietSince);
    this.c[NicCounter.sleeps]++;
    let changed = false;
    const ctxs = this.eps.ctxs;
    const openIds = this.eps.openIds;
    for (let i = 0; i < this.eps.openCount; i++) {
      const ctx = ctxs[openIds[i]];
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
    if (this.ether.armDoorbell(this.kick)) changed = true;
    if (changed) {
      this.kick();
      return;
    }
    if (this.hasDeferredWork()) {
      // Capped work waits for its bucket: wake when it is paid, not a backoff later.
      const capWait = this.qos.waitMs(openIds, this.eps.openCount);
      const ms = capWait >= 0 && capWait < this.backoffMs ? Math.max(capWait, 0.1) : this.backoffMs;
      this.backstop = setTimeout(this.onBackstop, ms);
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
    if (this.ether.txStalled) return true;
    if (this.links.hasDeferredWork()) return true;
    const ctxs = this.eps.ctxs;
    const openIds = this.eps.openIds;
    for (let i = 0; i < this.eps.openCount; i++) {
      const ctx = ctxs[openIds[i]];
      if (ctx.blCount > 0 || ctx.dqCount > 0 || ctx.linkStalled || ctx.pulling) return true;
      if (ctx.prodSeen !== ctx.sqCons) return true;
    }
    return false;
  }

  /** One round over every link, the Ethernet port and every open endpoint. Returns whether anything was done. */
  poll(): boolean {
    this.clock.tick();
    this.qos.beginRound(this.eps.openIds, this.eps.openCount, this.clock.now);
    // The round's frames (SENDs, held SEND_ACKs, requests) leave together at its end.
    this.links.cork();
    let did = this.links.poll();
    if (this.ether.poll()) did = true;
    const ctxs = this.eps.ctxs;
    const openIds = this.eps.openIds;
    for (let i = 0; i < this.eps.openCount; i++) {
      const ctx = ctxs[openIds[i]];
      try {
        if (this.serviceEndpoint(ctx)) did = true;
      } catch {
        // A bug, never an owner's garbage: count it, resynchronise, keep serving the others.
        this.c[NicCounter.internal_errors]++;
        // What will never complete now owes nothing: the descriptor in hand, if its completion
        // was not posted, else a chunked pull that stops here.
        const pulling = ctx.pulling;
        if (this.inHand === ctx && ctx.owed === this.inHandOwed) this.events.unreserve(ctx);
        else if (pulling) this.events.unreserve(ctx);
        this.inHand = null;
        this.dma.stop(ctx);
        ctx.sqCons = ctx.prodSeen;
        Atomics.store(ctx.w, W_SQ_CONS, ctx.sqCons | 0);
      }
    }
    this.links.uncork();
    this.events.flushRaises();
    // Work held only by its weight this round goes in the next ones: keep polling.
    if (this.qos.deficitHeld) {
      this.qos.deficitHeld = false;
      did = true;
    }
    return did;
  }

  private serviceEndpoint(ctx: EndpointContext): boolean {
    let did = false;
    if (ctx.blCount > 0 && this.events.drainBacklog(ctx)) did = true;
    if (ctx.dqCount > 0 && this.delivery.drain(ctx)) did = true;
    if (ctx.pulling) {
      this.dma.copyChunk(ctx);
      did = true;
    }
    if (this.serviceSq(ctx)) did = true;
    return did;
  }

  // ---- descriptors -------------------------------------------------------------------------

  /**
   * Takes ctx's new descriptors, up to SQ_BATCH and while their payers' deficits and caps allow
   * (qos.ts), and executes them in order.
   */
  private serviceSq(ctx: EndpointContext): boolean {
    const w = ctx.w;
    // int32s, the words' own bits: u32s leave V8's small integers past 2^31 (mx/channel.ts).
    const prod = Atomics.load(w, W_SQ_PROD);
    ctx.prodSeen = prod;
    // Set again below if the head descriptor still has to wait (for a link, a window, a slot).
    ctx.linkStalled = false;
    let cons = ctx.sqCons;
    if (prod === cons) return false;
    // No room for one more completion: the queue waits until its owner consumes events.
    const events = this.events;
    if (!events.roomForCompletion(ctx)) return false;
    if ((prod - cons) >>> 0 > SQ_ENTRIES) {
      // Ahead by more than the queue holds, or backwards: garbage. Report once, resynchronise.
      this.events.postBadIndex(ctx, prod, cons);
      ctx.sqCons = prod;
      Atomics.store(w, W_SQ_CONS, prod);
      return true;
    }
    let n = 0;
    const d = this.d;
    const qos = this.qos;
    // Each descriptor taken reserves its completion's room (events.ts): none is ever dropped.
    while (cons !== prod && n < SQ_BATCH && !ctx.pulling && events.roomForCompletion(ctx)) {
      // Copy it out first: the owner may rewrite the slot while we look at it.
      const base = SQ_W + (cons & (SQ_ENTRIES - 1)) * DESC_WORDS;
      for (let i = 0; i < DESC_WORDS; i++) d[i] = w[base + i];
      // Its payer's share of this round is spent, or a cap holds it: it waits in the queue.
      if (!qos.admit(ctx.id, d)) {
        this.c[NicCounter.qos_deferred]++;
        break;
      }
      const errors = this.c[ctx.base + EndpointCounter.errors];
      events.reserve(ctx);
      this.inHand = ctx;
      this.inHandOwed = ctx.owed;
      const moved = this.execute(ctx, d);
      this.inHand = null;
      if (moved === STALLED) {
        // It waits at the head of the queue and is taken again: nothing is owed for it yet.
        events.unreserve(ctx);
        break;
      }
      // A refused descriptor moved nothing: it costs DESCRIPTOR_COST, not the length it claims.
      qos.charge(ctx.id, this.c[ctx.base + EndpointCounter.errors] !== errors);
      ctx.stallSince = 0;
      this.c[NicCounter.descriptors]++;
      this.c[ctx.base + EndpointCounter.descriptors]++;
      cons = (cons + 1) | 0;
      n++;
    }
    if (n === 0) return false;
    ctx.sqCons = cons;
    // The NIC is done with the slots before the owner may reuse them.
    Atomics.store(w, W_SQ_CONS, cons);
    return true;
  }

  /** Executes descriptor `d` of ctx. Returns the bytes it moved in this round, or STALLED. */
  private execute(ctx: EndpointContext, d: Int32Array): number {
    switch (d[D_OPCODE] & 0xffff) {
      case Opcode.Nop:
        this.c[NicCounter.nops]++;
        // A NOP completes with no event.
        this.events.unreserve(ctx);
        return 0;
      case Opcode.Pull:
        if ((d[D_OPCODE] >>> 16) & DFLAG_REMOTE) return this.remotePull.execPull(ctx, d);
        return this.dma.execPull(ctx, d);
      case Opcode.Send:
        return this.send.execSend(ctx, d);
      case Opcode.Connect:
        return this.connector.execConnect(ctx, d);
      default:
        this.events.postError(ctx, d, ErrorReason.UnknownOpcode);
        return 0;
    }
  }
}

/**
 * CONNECT (Open-MX keeps its peer table in driver/linux/omx_peer.c and sends connect packets
 * from omx_send.c): a CONNECT descriptor resolves an endpoint of this NIC or of another one,
 * presenting its key. The NIC that owns the endpoint asked for checks the key, throttling a
 * requester's wrong keys (connect-throttle.ts); for another NIC's endpoint a CONNECT_REQUEST
 * frame asks it and its CONNECT_REPLY answers (frame.ts). The CONNECTs waiting for a reply sit
 * in the ConnectTable, across links, at most CONNECT_CREDITS per requesting endpoint (a further
 * one waits at the head of that endpoint's own queue), and the table has room for every
 * endpoint's share at once; a lost link or WIRE_TIMEOUT_MS without a reply completes one
 * ENDPOINT_UNREACHABLE. Every outcome is a CONNECT_DONE event (events.ts).
 */
import type { NicClock } from "./clock.js";
import { CONNECT_LOCKOUT_MAX_MS, ConnectThrottle } from "./connect-throttle.js";
import { NicCounter } from "./counters.js";
import { type EndpointContext, type EndpointTable, MAX_ENDPOINTS_LIMIT, STALLED } from "./endpoints.js";
import type { Events } from "./events.js";
import {
  beginFrame,
  F_CONNECT_KEY,
  F_CONNECT_RETRY_MS,
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_SESSION,
  F_SRC_ENDPOINT,
  F_SRC_SESSION,
  F_STATUS,
  FRAME_HEADER_BYTES,
  FrameType,
  getWord,
  setFrameDest,
  setFrameSource,
  setWord,
} from "./frame.js";
import { CTRL_QUEUE, type LinkState, type LinkTable, WIRE_ACTED, WIRE_WAITING } from "./link-state.js";
import { SharedSlotTable } from "./slot-table.js";
import { MxStatus } from "./status.js";
import { D_COOKIE, D_DEST_ENDPOINT, D_DEST_NIC, D_SRC_KEY, WIRE_TIMEOUT_MS } from "./window.js";

/**
 * CONNECTs one endpoint may have waiting for their CONNECT_REPLY, across links; a further one
 * waits at the head of that endpoint's send queue until one of them ends (counted as
 * connect_ep_full). The table holds maxEndpoints × CONNECT_CREDITS (512 with the default 32
 * endpoints, 4096 at MAX_ENDPOINTS_LIMIT), so every endpoint can be at its share at once and
 * none can take another's: before, 256 slots were shared by all, and one endpoint that asked a
 * peer which never answers kept them full (WIRE_TIMEOUT_MS at a time, again and again), so
 * every other endpoint's connect across hosts failed NO_RESOURCES. The MX library has one
 * connect outstanding per endpoint (mx_connect blocks for its answer); 16 leaves room for a
 * library that asks many peers at once, at 37 bytes a slot.
 */
export const CONNECT_CREDITS = 16;
/** Slot bits of the table's ids: room for MAX_ENDPOINTS_LIMIT × CONNECT_CREDITS slots. */
const CONNECT_SLOT_BITS = 12;

/**
 * The CONNECTs this NIC asked other NICs for, by slot (slot-table.ts: nothing is allocated
 * per request). The request id in the CONNECT_REQUEST's F_COOKIE is the slot's id, so a
 * reply finds its slot at once and a late reply for a reused slot does not match.
 */
export class ConnectTable extends SharedSlotTable {
  /** The requesting endpoint's session (SharedSlotTable.ep: the endpoint). */
  readonly session: Uint32Array;
  /** The descriptor's cookie, for the CONNECT_DONE. */
  readonly cookie: Int32Array;
  /** The endpoint asked for: its NIC (the link the reply must come on) and its id. */
  readonly nic: Uint32Array;
  readonly destEp: Uint32Array;
  /** When it completes ENDPOINT_UNREACHABLE without a reply. */
  readonly deadline: Float64Array;

  constructor(maxEndpoints: number) {
    super(maxEndpoints, CONNECT_CREDITS, CONNECT_SLOT_BITS);
    const slots = this.capacity;
    this.session = new Uint32Array(slots);
    this.cookie = new Int32Array(slots);
    this.nic = new Uint32Array(slots);
    this.destEp = new Uint32Array(slots);
    this.deadline = new Float64Array(slots);
  }
}

/** Where a key check that answers REJECTED says how long the requester must wait. */
export class ConnectLockout {
  /** ms left (0 unless the check answered REJECTED). */
  retryAfterMs = 0;
}

export class Connector {
  readonly table: ConnectTable;
  /** Wrong endpoint keys, per requesting endpoint (connect-throttle.ts). */
  private readonly throttle = new ConnectThrottle();
  private readonly lockout = new ConnectLockout();
  /** The header being built. */
  private readonly hdr = new Uint8Array(FRAME_HEADER_BYTES);

  constructor(
    private readonly nicId: number,
    private readonly eps: EndpointTable,
    private readonly events: Events,
    private readonly links: LinkTable,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
  ) {
    this.table = new ConnectTable(eps.maxEndpoints);
  }

  /**
   * The answer to requester (nic, ep)'s connect, from its incarnation `inc` (the session it
   * has), to endpoint `target` of this NIC with `key`:
   * SUCCESS, ENDPOINT_UNKNOWN (not open), BAD_KEY, or REJECTED while the requester is locked
   * out for wrong keys (out.retryAfterMs = ms left), the key unexamined.
   */
  check(nic: number, ep: number, inc: number, target: number, key: number, out: ConnectLockout): number {
    out.retryAfterMs = 0;
    const ctxs = this.eps.ctxs;
    if (target >= this.eps.maxEndpoints || !ctxs[target].open) return MxStatus.ENDPOINT_UNKNOWN;
    const now = this.clock.now;
    const wait = this.throttle.lockedFor(nic, ep, inc, now);
    if (wait > 0) {
      this.c[NicCounter.connects_throttled]++;
      out.retryAfterMs = wait;
      return MxStatus.REJECTED;
    }
    // The right key forgives nothing (connect-throttle.ts): a guesser connecting to its own
    // endpoint between guesses had its record cleared, and was never locked out.
    if (ctxs[target].key === key) return MxStatus.SUCCESS;
    this.c[NicCounter.connect_bad_keys]++;
    this.throttle.failed(nic, ep, inc, now);
    return MxStatus.BAD_KEY;
  }

  // ---- CONNECT descriptors ----------------------------------------------------------------------

  /** Executes ctx's CONNECT descriptor `d`. Returns 0 (it moves no payload) or STALLED. */
  execConnect(ctx: EndpointContext, d: Int32Array): number {
    const destNic = d[D_DEST_NIC] >>> 0;
    const destEp = d[D_DEST_ENDPOINT] >>> 0;
    const cookie = d[D_COOKIE];
    // Its owner locked out by that NIC, as this one counts (own-refusals.ts): not sent.
    const wait = this.events.own.connectWait(ctx, destNic);
    if (wait > 0) {
      this.events.postConnectDone(ctx, cookie, destNic, destEp, 0, MxStatus.REJECTED, wait);
      return 0;
    }
    if (destNic === this.nicId) {
      this.c[NicCounter.connects]++;
      const lockout = this.lockout;
      const status = this.check(this.nicId, ctx.id, ctx.session, destEp, d[D_SRC_KEY] >>> 0, lockout);
      const session = status === MxStatus.SUCCESS ? this.eps.ctxs[destEp].session : 0;
      this.events.postConnectDone(ctx, cookie, destNic, destEp, session, status, lockout.retryAfterMs);
      return 0;
    }
    const ls = this.links.usable(destNic);
    const t = this.table;
    if (ls === undefined) {
      this.c[NicCounter.connects]++;
      this.events.postConnectDone(ctx, cookie, destNic, destEp, 0, MxStatus.ENDPOINT_UNREACHABLE);
      return 0;
    }
    if (!t.canTake(ctx.id)) {
      // This endpoint's share is taken (the table itself has room for every share): this one
      // waits at the head of its own queue until one of its connects ends (a reply, the link's
      // loss or WIRE_TIMEOUT_MS; the wire timer runs meanwhile), and the backstop retries it.
      // Not a stall on the link: the link's silence is not judged by it.
      this.c[NicCounter.connect_ep_full]++;
      ctx.linkStalled = true;
      return STALLED;
    }
    if (ls.ctrlCount >= CTRL_QUEUE) return this.links.stall(ctx, destNic, true);
    const s = t.takeFor(ctx.id);
    t.session[s] = ctx.session;
    t.cookie[s] = cookie;
    t.nic[s] = destNic;
    t.destEp[s] = destEp;
    t.deadline[s] = this.clock.now + WIRE_TIMEOUT_MS;
    const f = this.hdr;
    beginFrame(f, FrameType.ConnectRequest, 0, t.id[s]);
    setFrameSource(f, this.nicId, ctx.id, ctx.session);
    setFrameDest(f, destNic, destEp, 0);
    setWord(f, F_CONNECT_KEY, d[D_SRC_KEY]);
    this.links.sendHeader(ls, f);
    this.c[NicCounter.connects]++;
    this.links.armWireTimer();
    return 0;
  }

  /** Ends the CONNECT in slot `s`: a CONNECT_DONE if its endpoint is still the one that asked. */
  private finish(s: number, status: number, session: number, retryAfterMs = 0): void {
    const t = this.table;
    t.releaseSlot(s);
    const ctx = this.eps.ctxs[t.ep[s]];
    if (ctx.open && ctx.session === t.session[s])
      this.events.postConnectDone(ctx, t.cookie[s], t.nic[s], t.destEp[s], session, status, retryAfterMs);
  }

  // ---- CONNECT frames ---------------------------------------------------------------------------

  /** A peer NIC asks for one of our endpoints: check the key and answer with a CONNECT_REPLY. */
  rxConnectRequest(ls: LinkState, frame: Uint8Array): void {
    this.c[NicCounter.connects_served]++;
    const ep = getWord(frame, F_DEST_ENDPOINT);
    const requester = getWord(frame, F_SRC_ENDPOINT);
    const lockout = this.lockout;
    let status: number;
    if (requester >= MAX_ENDPOINTS_LIMIT) {
      // No NIC has such an endpoint: refused, the key unexamined. The throttle keys on the
      // requester a frame names, so a peer NIC naming a new one per guess had
      // CONNECT_FREE_FAILS prompt answers per guess (an oracle at wire speed).
      this.c[NicCounter.frames_bad]++;
      lockout.retryAfterMs = 0;
      status = MxStatus.BAD_ENDPOINT;
    } else {
      // The requester is the peer NIC (its link says which) and the endpoint it names.
      status = this.check(
        ls.peerNic,
        requester,
        getWord(frame, F_SRC_SESSION),
        ep,
        getWord(frame, F_CONNECT_KEY),
        lockout,
      );
    }
    const f = this.hdr;
    beginFrame(f, FrameType.ConnectReply, 0, getWord(frame, F_COOKIE));
    setFrameSource(f, this.nicId, ep, status === MxStatus.SUCCESS ? this.eps.ctxs[ep].session : 0);
    setFrameDest(f, ls.peerNic, getWord(frame, F_SRC_ENDPOINT), getWord(frame, F_SRC_SESSION));
    setWord(f, F_STATUS, status);
    setWord(f, F_CONNECT_RETRY_MS, lockout.retryAfterMs);
    // Dropped when the link's queue is full: the requester times out.
    if (!this.links.sendHeader(ls, f)) this.c[NicCounter.acks_dropped]++;
  }

  /** The answer to one of our CONNECT_REQUESTs. */
  rxConnectReply(ls: LinkState, frame: Uint8Array): void {
    const t = this.table;
    const s = t.find(getWord(frame, F_COOKIE));
    if (
      s < 0 ||
      t.nic[s] !== ls.peerNic ||
      getWord(frame, F_SRC_ENDPOINT) !== t.destEp[s] ||
      getWord(frame, F_DEST_ENDPOINT) !== t.ep[s] ||
      getWord(frame, F_DEST_SESSION) !== t.session[s]
    ) {
      this.c[NicCounter.connect_replies_unknown]++;
      return;
    }
    const st = getWord(frame, F_STATUS);
    const status = st > MxStatus.NO_RESOURCES || st === MxStatus.PENDING ? MxStatus.ABORTED : st;
    // A lockout is at most a minute: anything longer is garbage, and says nothing.
    const wait = getWord(frame, F_CONNECT_RETRY_MS);
    this.finish(
      s,
      status,
      status === MxStatus.SUCCESS ? getWord(frame, F_SRC_SESSION) : 0,
      status === MxStatus.REJECTED && wait <= CONNECT_LOCKOUT_MAX_MS ? wait : 0,
    );
  }

  // ---- when an endpoint closes, a link fails, the wire timer ticks ----------------------------

  /** Endpoint `ep` closed: its CONNECTs end without events. */
  dropEndpoint(ep: number): void {
    const t = this.table;
    for (let s = 0; s < t.capacity; s++)
      if (t.used[s] === 1 && t.ep[s] === ep) this.finish(s, MxStatus.ENDPOINT_CLOSED, 0);
  }

  /** The link to `peerNic` is gone or silent: its CONNECTs complete ENDPOINT_UNREACHABLE. */
  failLink(peerNic: number): void {
    const t = this.table;
    for (let s = 0; s < t.capacity; s++)
      if (t.used[s] === 1 && t.nic[s] === peerNic) this.finish(s, MxStatus.ENDPOINT_UNREACHABLE, 0);
  }

  /** The wire timer: CONNECTs past their deadline complete ENDPOINT_UNREACHABLE. Returns WIRE_* flags. */
  tick(): number {
    const t = this.table;
    if (t.count === 0) return 0;
    const now = this.clock.now;
    let flags = 0;
    for (let s = 0; s < t.capacity; s++) {
      if (t.used[s] !== 1) continue;
      if (now >= t.deadline[s]) {
        flags |= WIRE_ACTED;
        this.links.checkSilence(this.links.get(t.nic[s]));
        this.finish(s, MxStatus.ENDPOINT_UNREACHABLE, 0);
      } else flags |= WIRE_WAITING;
    }
    return flags;
  }
}

/**
 * What the NIC keeps per link to another NIC, and the table of attached links its engines
 * share: header-only frames waiting for a link that pushes back (the control queue), SENDs
 * awaiting their SEND_ACK (the send window, with a share per destination endpoint, so that a
 * lost link or a missing ACK completes a SEND with ENDPOINT_UNREACHABLE and one receiver that
 * does not consume cannot stall the others), the PULL jobs this NIC serves for the peer
 * (remote-pull.ts), the peer's liveness, and the MAC table of the Ethernet port. Everything
 * lives in preallocated typed arrays, so the per-frame paths allocate nothing. Attaching,
 * detaching and losing links, frame dispatch and the wire timer's work are links.ts.
 */
import type { NicClock } from "./clock.js";
import { NicCounter } from "./counters.js";
import { type EndpointContext, MAX_ENDPOINTS_LIMIT, STALLED } from "./endpoints.js";
import { FRAME_HEADER_BYTES } from "./frame.js";
import { HOLD_RESERVE, mayHold } from "./hold-share.js";
import type { Link } from "./link.js";
import type { PullPark } from "./pull-park.js";
import { SlotTable } from "./slot-table.js";
import { HOLD_MS, WIRE_TIMEOUT_MS } from "./window.js";

/**
 * Header-only frames (SEND_ACK, CONNECT_*, PULL_REQUEST, error PULL_REPLY) held per link while
 * it pushes back, before this NIC's own requests (CONNECT, PULL_REQUEST) on it stall. The
 * answers it owes the peer go on queueing past it, to CTRL_QUEUE_MAX (the queue grows while
 * the link pushes back, and goes back to this size once it drained).
 */
export const CTRL_QUEUE = 1024;
/**
 * A descriptor that has waited this long on a link that pushed back all along (its main
 * connection took no frame of ours in that time: the peer reads nothing) fails the link as
 * unread (links.ts), even while the peer talks. Twice WIRE_TIMEOUT_MS: a peer that reads at
 * all drains a TCP link's write buffer (TCP_LINK_HIGH_WATER, 2 MiB, plus what the kernel
 * holds) far sooner, even on a loaded machine; one that reads nothing never does.
 */
export const UNREAD_MS = 2 * WIRE_TIMEOUT_MS;
/**
 * Successful SEND_ACKs a link holds back at most (holdAck), so that they ride with the next
 * frame the NIC sends that way, usually the reply, instead of costing the peer's NIC (and its
 * sender) a wake-up of their own. They go out with the next SEND on the link, when the NIC is
 * about to sleep, when ACK_HOLD_MS passed, or when this many wait: the sender's window
 * (DEST_CREDITS) never waits on them for long.
 */
export const ACK_HOLD_MAX = 8;
/** The longest a held SEND_ACK waits for company (ms; within a poll budget). */
export const ACK_HOLD_MS = 0.05;
/**
 * SENDs per link awaiting their SEND_ACK, at least; a full window holds the next SEND in its
 * queue. A link's window is the larger of this and its NIC's maxEndpoints × SRC_CREDITS
 * (sendWindowFor): the shares below protect an endpoint only while every other endpoint of the
 * NIC at its share still leaves room. With a fixed 1024 a host of 64 endpoints (`myrixen host
 * --max-endpoints 64`) let one job's 32 sending endpoints, each within its share, hold the whole window
 * to their accomplices on the far host, who read nothing: another job's 8 B ping-pong across
 * that link fell from 36,000 round trips in 13 s to 106, some waiting 1.5 s.
 */
export const SEND_WINDOW = 1024;
/**
 * SENDs to one destination endpoint awaiting their SEND_ACK, at most (the rest wait in their
 * sender's queue). A receiver that does not consume holds at most this many of a link's window
 * (its NIC holds up to DELIVERY_QUEUE = 32 deliveries for it, endpoints.ts), so it cannot take the
 * window from the other endpoints of that link: SEND_WINDOW / DEST_CREDITS = 32 endpoints,
 * the default number per NIC, can all be at their limit at once. Pipelining to one endpoint
 * is bounded by its sender's staging (32 slots, mx/wire.ts) anyway. The credits are shared
 * among this NIC's domains (LinkState.canSend): one alone takes 31, then as hold-share.ts says.
 */
export const DEST_CREDITS = 32;
/**
 * SENDs from one endpoint of this NIC awaiting their SEND_ACK on one link, at most (the rest
 * wait in its own queue). The destination share alone left the window to whoever filled it:
 * one endpoint posting SENDs to 32 or more endpoints on the far side that do not consume (its
 * own accomplices there) held all 1024 slots, and every other endpoint's SENDs to that host
 * waited behind them (5 s held, then again). With this share every endpoint of the NIC can be
 * at its limit at once (the window is sized for it, sendWindowFor). An honest sender seldom reaches it:
 * its library stages 32 messages at most (mx/nic-records.ts DEFAULT_STAGING_SLOTS), and a
 * NOTIFY (no staging) past the share waits in its queue for an ACK, microseconds on a live link.
 */
export const SRC_CREDITS = 32;

/** The send window of a link of a NIC with `maxEndpoints` contexts (SEND_WINDOW). */
export function sendWindowFor(maxEndpoints: number): number {
  return Math.max(SEND_WINDOW, maxEndpoints * SRC_CREDITS);
}

/** Destination endpoint ids above MX's (256) share one last bucket: they are refused anyway. */
const DEST_BUCKETS = 257;
/** destShareOut's key: charge × CHARGE_KEY + bucket (exact: charges are within ±2^41). */
const CHARGE_KEY = 512;
/** PULL jobs this NIC serves concurrently per link; the requesting side keeps at most as many outstanding. */
export const PULL_JOBS_PER_LINK = 64;

/**
 * A link's control queue at most: this NIC's own requests (CTRL_QUEUE), a SEND_ACK for every
 * SEND the largest peer's window can have out (sendWindowFor(MAX_ENDPOINTS_LIMIT)), an answer
 * to each of its connects (16 per endpoint context, connect.ts CONNECT_CREDITS) and to each of its pull jobs.
 * When a link's window outgrew the queue (a peer of more than 32 endpoints), a receiver whose
 * link back pushed back dropped the ACKs beyond 1024, and its sender failed SENDs that had
 * been delivered (ENDPOINT_UNREACHABLE after WIRE_TIMEOUT_MS). Beyond this, PENDING
 * keepalives (repeated while a delivery is held) are what is dropped: the next one comes.
 */
export const CTRL_QUEUE_MAX =
  CTRL_QUEUE + sendWindowFor(MAX_ENDPOINTS_LIMIT) + MAX_ENDPOINTS_LIMIT * 16 + PULL_JOBS_PER_LINK;
/**
 * How a link's PULL_JOBS_PER_LINK jobs are shared among the requesting domains (their
 * endpoints' QoS share slots, qos.ts), requester side: a domain that holds none of them may
 * take one whenever one is free; a domain that holds `held` may take another only if as many
 * stay free after it as it then holds (free − 1 ≥ held + 1, pullMayGo). Its further pulls wait
 * parked (remote-pull.ts), in turn with everyone else's.
 *
 * Why: with a fixed share of half the jobs per domain (32), any two domains (two ranks of one
 * job) held all 64, and every other guest's pull from that host waited parked until one of
 * theirs ended: with 16 MiB messages all 64 progress and end together, and a 64 KiB receive
 * beside two guests streaming them took up to 0.7–2 s (73 ms beside one; 43–164 ms with this
 * rule, 2 busy cores). A domain holding pulls never leaves fewer jobs free than it holds, nor
 * takes the last two, so those go only to domains holding none. Counted (a simulation of the
 * rule over 64 jobs):
 * - one domain alone holds 32: PULL_LINK_SHARE, as the fixed share did. 32 pulls out keep a
 *   link busy (32 of 64 KiB are 2 MiB, eight times its bulk window, tcp-link.ts): one guest
 *   keeping 64 rendezvous receives posted from one host moved as much with 32 out as with
 *   all 64 (8 s runs, 2 busy cores: 16 MiB 4.4–5.6 GB vs 4.3; 256 KiB median 2.4 GB vs 2.1,
 *   runs 0.7–4.3), while with all 64 another guest's 64 KiB receive waited up to 1.9 s;
 * - k domains that keep pulls parked settle at about 64 / (k + 1) each, the same again free:
 *   21 + 21 + 22 free for two, 16 each and 16 free for three (max-min fair, one share kept for
 *   a newcomer);
 * - domains arriving one after another on an idle link hold 32, 16, 8, 4, 2, 1, 1: it takes
 *   seven flooding domains to take every job (a cap of 64 / (active + 1) counted on domains
 *   gives 32, 21, 11: three), and even then a freed job goes to a domain holding none.
 * It needs nothing but the link's count and the domain's: two compares a pull.
 */
export const PULL_LINK_SHARE = PULL_JOBS_PER_LINK / 2;

/** Whether a domain holding `held` of a link's pulls may ask for another while `free` of its jobs are free (PULL_LINK_SHARE). */
export function pullMayGo(held: number, free: number): boolean {
  // hold-share.ts's rule with no cap on what stays free.
  return mayHold(held, free, Number.POSITIVE_INFINITY);
}

/** Bytes one job may send per visit (jobs of a link take turns; a visit ends early on back-pressure). */
export const JOB_ROUND = 256 * 1024;

export class LinkState {
  /** Set false when the link is removed: callbacks that still hold it do nothing. */
  attached = true;
  /** Index in the NIC's compact list of links. */
  index = -1;

  /** The control queue, a ring of ctrlCap headers (grown by sendHeader, to CTRL_QUEUE_MAX). */
  ctrl = new Uint8Array(CTRL_QUEUE * FRAME_HEADER_BYTES);
  ctrlCap = CTRL_QUEUE;
  ctrlHead = 0;
  ctrlCount = 0;

  /** Successful SEND_ACKs held back (LinkTable.holdAck), and when the first of them was. */
  readonly acks = new Uint8Array(ACK_HOLD_MAX * FRAME_HEADER_BYTES);
  ackCount = 0;
  ackSince = 0;

  // SENDs awaiting their ACK, by slot. A slot is freed by its own ACK, in any order: a
  // delivery that waits for receive space must not hold up the ones behind it (a ring in send
  // order would stay full behind it). Each SEND carries its slot's id (the tag, frame.ts F_TAG:
  // the slot and a generation), which its SEND_ACK echoes.
  readonly sends: SlotTable;
  readonly sCookie: Int32Array;
  readonly sEp: Int32Array;
  readonly sSession: Uint32Array;
  readonly sLen: Uint32Array;
  readonly sDest: Uint16Array;
  /** The sending domain (qos.ts chargeOf) each SEND was charged to (destShareOut). */
  readonly sShare: Float64Array;
  readonly sDeadline: Float64Array;
  /**
   * The latest its deadline may move to: the receiver's keepalives (PENDING SEND_ACKs) stop
   * counting once the SEND has been held longer than any receiver may hold it (HOLD_MS).
   */
  readonly sHoldEnd: Float64Array;
  /** Per destination endpoint (bucket): SENDs to it awaiting their ACK. */
  private readonly destOut = new Uint16Array(DEST_BUCKETS);
  /**
   * Per destination (bucket) and sending domain (qos.ts chargeOf): its SENDs awaiting their
   * ACK, only the nonzero ones (key share × CHARGE_KEY + bucket). Counted as SENDs go and
   * complete, as each was charged (sShare): a scan of the window per stalled queue head took a
   * NIC of 256 endpoints 4 ms a round, and a closed endpoint's SENDs were charged to the next
   * domain given its id.
   */
  private readonly destShareOut = new Map<number, number>();
  /** Per sending endpoint of this NIC (ids < MAX_ENDPOINTS_LIMIT): its SENDs awaiting their ACK. */
  private readonly srcOut = new Uint16Array(MAX_ENDPOINTS_LIMIT);

  // PULL jobs served for the peer (responder side), by slot.
  readonly jobs = new SlotTable(PULL_JOBS_PER_LINK);
  readonly jId = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jReqEp = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jReqSession = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jSrcEp = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jSrcSession = new Uint32Array(PULL_JOBS_PER_LINK);
  /** The pull right (exposure index in the source endpoint's window) the job copies under. */
  readonly jXp = new Int32Array(PULL_JOBS_PER_LINK);
  readonly jRegion = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jOff = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jLen = new Uint32Array(PULL_JOBS_PER_LINK);
  readonly jSent = new Uint32Array(PULL_JOBS_PER_LINK);
  /** The job served first in the next round (jobs of a link take turns). */
  jNext = 0;
  /**
   * Per source endpoint (by id): its deficit in this link's own deficit round robin over the
   * jobs (remote-pull.ts serveJobs), so the bytes a link takes are shared by weight even when
   * the link, not the NIC's round, is what limits them. Made on first use.
   */
  srcDeficit: Float64Array | null = null;

  /** Remote PULLs this NIC has outstanding on this link (requester side). */
  pullsOut = 0;
  /** The peer's address block as a number (delivery.ts senderBlock; -1: not looked up yet, 0: none, in-process). */
  blockId = -1;
  /**
   * Per QoS share slot of this NIC (qos.ts: one per domain): its endpoints' remote PULLs
   * outstanding on this link, as pullMayGo allows (a domain that opened two endpoints held
   * every job of the link when the share was per endpoint).
   */
  readonly pullsOutByShare = new Uint8Array(MAX_ENDPOINTS_LIMIT + 1);
  /** Remote PULLs waiting for one of this link's jobs (remote-pull.ts); made on first use. */
  parked: PullPark | null = null;
  /**
   * The PULL_REPLY this link is handing over in pieces (Link.onPullData, remote-pull.ts
   * rxPullData): the slot of the pull its first piece was let into, or -1 (refused there,
   * none under way, or that pull ended). Its later pieces go there or nowhere.
   */
  pieceSlot = -1;

  // Liveness (links.ts wireTick): when the peer last said anything, when the link last took a
  // frame of ours, since when its main connection has refused every frame offered (0: it took
  // the last one), and until when it counts as silent (requests to it fail at once).
  lastRx = 0;
  lastTx = 0;
  refusedSince = 0;
  silentUntil = 0;
  /**
   * Found unread (links.ts): requests to it fail at once until it takes a frame of ours again
   * or says it can (onWritable). Frames from the peer do not end it: this peer talks.
   */
  unread = false;
  /** wireTick found it silent this round. */
  silenceDue = false;
  /** wireTick found it unread this round. */
  unreadDue = false;

  /** `maxEndpoints`: this NIC's contexts, which size the send window (sendWindowFor). */
  constructor(
    readonly link: Link,
    readonly peerNic: number,
    maxEndpoints: number,
  ) {
    const w = sendWindowFor(maxEndpoints);
    this.sends = new SlotTable(w, 16);
    this.sCookie = new Int32Array(w);
    this.sEp = new Int32Array(w);
    this.sSession = new Uint32Array(w);
    this.sLen = new Uint32Array(w);
    this.sDest = new Uint16Array(w);
    this.sShare = new Float64Array(w);
    this.sDeadline = new Float64Array(w);
    this.sHoldEnd = new Float64Array(w);
  }

  /** The link's main connection took a frame of ours (not pull data: that has a connection of its own). */
  took(now: number): void {
    this.lastTx = now;
    this.refusedSince = 0;
    this.unread = false;
  }

  /** The link's main connection refused a frame (back-pressure). */
  refused(now: number): void {
    if (this.refusedSince === 0) this.refusedSince = now;
  }

  private static bucket(destEp: number): number {
    return destEp >>> 0 < DEST_BUCKETS - 1 ? destEp >>> 0 : DEST_BUCKETS - 1;
  }

  /**
   * Whether endpoint `srcEp`'s SEND to endpoint `destEp` may go now: the window and both
   * endpoints' shares have room, and the destination's credits are shared by domain (`share`:
   * who srcEp's SENDs are charged to, qos.ts chargeOf). A domain alone may take all but one of
   * them (kept for a newcomer); once two hold some, they are shared as a busy receiver's
   * places are (hold-share.ts mayHold). Per destination only, a guest whose SENDs to a receiver that held
   * them (its NIC holds a host's 24 for 5 s) took all 32 credits, and a neighbour's SEND to
   * that receiver waited at the head of its queue, its traffic to every other host behind it
   * (6 ms honest, 812 ms under such a flood: a reviewer's measure).
   */
  canSend(srcEp: number, destEp: number, share: number): boolean {
    if (this.sends.full || this.srcOut[srcEp] >= SRC_CREDITS) return false;
    const b = LinkState.bucket(destEp);
    const out = this.destOut[b];
    if (out < DEST_CREDITS - HOLD_RESERVE) return true;
    if (out >= DEST_CREDITS) return false;
    const held = this.destShareOut.get(share * CHARGE_KEY + b) ?? 0;
    // Alone: all but one.
    if (held === out) return out < DEST_CREDITS - 1;
    return mayHold(held, DEST_CREDITS - out);
  }

  /** Whether endpoint `destEp`'s share of the window is taken (after canSend said no: which counter). */
  destFull(destEp: number): boolean {
    return this.destOut[LinkState.bucket(destEp)] >= DEST_CREDITS - HOLD_RESERVE;
  }

  /** The tag the next pushSend will return (the frame carries it before the slot is taken). */
  nextTag(): number {
    return this.sends.nextId();
  }

  /** Takes a slot for a SEND (canSend said yes); returns its tag for the frame. */
  pushSend(
    ep: number,
    session: number,
    cookie: number,
    len: number,
    destEp: number,
    deadline: number,
    share: number,
  ): number {
    const i = this.sends.take();
    const dest = LinkState.bucket(destEp);
    const key = share * CHARGE_KEY + dest;
    this.destShareOut.set(key, (this.destShareOut.get(key) ?? 0) + 1);
    this.sShare[i] = share;
    this.sEp[i] = ep;
    this.sSession[i] = session;
    this.sCookie[i] = cookie;
    this.sLen[i] = len;
    this.sDest[i] = dest;
    this.sDeadline[i] = deadline;
    this.sHoldEnd[i] = deadline + HOLD_MS;
    this.destOut[dest]++;
    this.srcOut[ep]++;
    return this.sends.id[i];
  }

  /** The slot of the pending SEND an ACK with this tag answers, or -1 (late, or garbage). */
  findSend(tag: number, ep: number, session: number, cookie: number): number {
    const i = this.sends.find(tag);
    if (i >= 0 && this.sEp[i] === ep && this.sSession[i] === session && this.sCookie[i] === cookie) return i;
    return -1;
  }

  /** Frees slot i: its SEND completed (acknowledged, timed out, or its link is gone). */
  completeSend(i: number): void {
    if (this.sends.release(i)) {
      const dest = this.sDest[i];
      this.destOut[dest]--;
      this.srcOut[this.sEp[i]]--;
      const key = this.sShare[i] * CHARGE_KEY + dest;
      const n = (this.destShareOut.get(key) ?? 1) - 1;
      if (n > 0) this.destShareOut.set(key, n);
      else this.destShareOut.delete(key);
    }
  }
}

// ---- the table of attached links ---------------------------------------------------------------

/** How often the wire timer looks for requests past WIRE_TIMEOUT_MS (only while some wait). */
export const WIRE_TICK_MS = 100;
/** An engine's wire-timer pass completed or sent something (the NIC must run a round). */
export const WIRE_ACTED = 1;
/** Something still waits on another NIC after an engine's pass (the timer must run again). */
export const WIRE_WAITING = 2;

function noTick(): void {}

/**
 * The attached links as the NIC's engines see them: by peer NIC and as a compact list (for
 * the poll loop and flooding: no iterator per round), each link's control queue, a
 * descriptor's stall on a link, and the arming of the wire timer, which runs only while
 * something waits on another NIC (links.ts does its work).
 */
export class LinkTable {
  private readonly byPeer = new Map<number, LinkState>();
  /** The attached links, compact; LinkState.index is each one's place. */
  readonly list: LinkState[] = [];
  /** The wire timer's work (links.ts sets it). */
  onWireTick: () => void = noTick;
  private wireTimer: ReturnType<typeof setTimeout> | null = null;
  /** SEND_ACKs held on all links (holdAck). */
  acksHeld = 0;
  /** A queued header on its way out (flushControl). */
  private readonly ctrlOut = new Uint8Array(FRAME_HEADER_BYTES);

  constructor(
    private readonly c: Float64Array,
    private readonly clock: NicClock,
  ) {}

  get(peerNic: number): LinkState | undefined {
    return this.byPeer.get(peerNic);
  }

  has(peerNic: number): boolean {
    return this.byPeer.has(peerNic);
  }

  /** Peer NICs with a link attached, ascending. */
  peers(): number[] {
    return [...this.byPeer.keys()].sort((a, b) => a - b);
  }

  add(ls: LinkState): void {
    ls.index = this.list.length;
    this.list.push(ls);
    this.byPeer.set(ls.peerNic, ls);
  }

  /** Takes `ls` out of the table (the caller fails what waits on it). */
  remove(ls: LinkState): void {
    ls.attached = false;
    // Held SEND_ACKs die with the link (their senders' SENDs fail with it).
    this.acksHeld -= ls.ackCount;
    ls.ackCount = 0;
    this.byPeer.delete(ls.peerNic);
    const last = this.list.pop()!;
    if (last !== ls) {
      this.list[ls.index] = last;
      last.index = ls.index;
    }
  }

  /** Empties the table (the NIC stops; the caller closed the links). */
  clear(): void {
    this.acksHeld = 0;
    this.byPeer.clear();
    this.list.length = 0;
  }

  /** The link to `nic` if requests may go on it: attached, not found silent a moment ago, not found unread. */
  usable(nic: number): LinkState | undefined {
    const ls = this.byPeer.get(nic);
    return ls !== undefined && !ls.unread && this.clock.now >= ls.silentUntil ? ls : undefined;
  }

  /**
   * Sends the header-only frame `hdr` on `ls`, or queues it behind earlier ones while the link
   * pushes back. false: the queue is full and the frame is dropped.
   */
  sendHeader(ls: LinkState, hdr: Uint8Array): boolean {
    if (ls.ctrlCount === 0) {
      if (ls.link.send(hdr)) {
        this.c[NicCounter.frames_tx]++;
        ls.took(this.clock.now);
        return true;
      }
      ls.refused(this.clock.now);
      this.c[NicCounter.link_backpressure]++;
    }
    if (ls.ctrlCount === ls.ctrlCap && !LinkTable.growControl(ls)) return false;
    ls.ctrl.set(hdr, ((ls.ctrlHead + ls.ctrlCount) % ls.ctrlCap) * FRAME_HEADER_BYTES);
    ls.ctrlCount++;
    return true;
  }

  /** Doubles `ls`'s full control queue (its headers kept in order), up to CTRL_QUEUE_MAX; false at the cap. */
  private static growControl(ls: LinkState): boolean {
    if (ls.ctrlCap >= CTRL_QUEUE_MAX) return false;
    const cap = Math.min(2 * ls.ctrlCap, CTRL_QUEUE_MAX);
    const ring = new Uint8Array(cap * FRAME_HEADER_BYTES);
    const firstRun = (ls.ctrlCap - ls.ctrlHead) * FRAME_HEADER_BYTES;
    ring.set(ls.ctrl.subarray(ls.ctrlHead * FRAME_HEADER_BYTES));
    ring.set(ls.ctrl.subarray(0, ls.ctrlHead * FRAME_HEADER_BYTES), firstRun);
    ls.ctrl = ring;
    ls.ctrlCap = cap;
    ls.ctrlHead = 0;
    return true;
  }

  /**
   * Holds a successful SEND_ACK for `ls` (see ACK_HOLD_MAX): it goes out with the next SEND on
   * the link, at the NIC's next sleep, or after ACK_HOLD_MS (flushAcks).
   */
  holdAck(ls: LinkState, hdr: Uint8Array): void {
    if (ls.ackCount === ACK_HOLD_MAX) this.flushAcks(ls);
    if (ls.ackCount === 0) ls.ackSince = this.clock.now;
    ls.acks.set(hdr.subarray(0, FRAME_HEADER_BYTES), ls.ackCount * FRAME_HEADER_BYTES);
    ls.ackCount++;
    this.acksHeld++;
  }

  /** Sends `ls`'s held SEND_ACKs (into its control queue while the link pushes back). */
  flushAcks(ls: LinkState): void {
    const n = ls.ackCount;
    if (n === 0) return;
    ls.ackCount = 0;
    this.acksHeld -= n;
    for (let k = 0; k < n; k++) {
      const hdr = ls.acks.subarray(k * FRAME_HEADER_BYTES, (k + 1) * FRAME_HEADER_BYTES);
      if (!this.sendHeader(ls, hdr)) this.c[NicCounter.acks_dropped]++;
    }
  }

  /** Every link's held SEND_ACKs go out (the NIC is about to sleep, or links close). */
  flushAllAcks(): void {
    if (this.acksHeld === 0) return;
    for (let k = 0; k < this.list.length; k++) this.flushAcks(this.list[k]);
  }

  /** Sends `ls`'s queued headers until it pushes back. Returns whether it sent any. */
  flushControl(ls: LinkState): boolean {
    let did = false;
    const out = this.ctrlOut;
    while (ls.ctrlCount > 0) {
      const base = ls.ctrlHead * FRAME_HEADER_BYTES;
      for (let i = 0; i < FRAME_HEADER_BYTES; i++) out[i] = ls.ctrl[base + i];
      if (!ls.link.send(out)) {
        ls.refused(this.clock.now);
        this.c[NicCounter.link_backpressure]++;
        break;
      }
      ls.took(this.clock.now);
      this.c[NicCounter.frames_tx]++;
      ls.ctrlHead = (ls.ctrlHead + 1) % ls.ctrlCap;
      ls.ctrlCount--;
      did = true;
    }
    // Drained after growing under back-pressure: back to the base size (a host runs for weeks).
    if (ls.ctrlCount === 0 && ls.ctrlCap > CTRL_QUEUE) {
      ls.ctrl = new Uint8Array(CTRL_QUEUE * FRAME_HEADER_BYTES);
      ls.ctrlCap = CTRL_QUEUE;
      ls.ctrlHead = 0;
    }
    return did;
  }

  /**
   * ctx's head descriptor waits on the link to `nic` (window, share, queue or back-pressure):
   * returns STALLED for the descriptor's engine to return. `pushback`: it waits because the
   * link refused a frame or its control queue is full (the wire timer's unread rule).
   */
  stall(ctx: EndpointContext, nic: number, pushback = false): number {
    ctx.linkStalled = true;
    ctx.stallPushback = pushback;
    if (ctx.stallSince === 0 || ctx.stallNic !== nic) {
      ctx.stallSince = this.clock.now;
      ctx.stallNic = nic;
    }
    // The wire timer watches it: a link that neither talks nor takes frames is a silent peer,
    // one that talks but has taken nothing for UNREAD_MS an unread one.
    this.armWireTimer();
    return STALLED;
  }

  /**
   * Something on `ls` went overdue: if the peer has been quiet as long, it is silent, and the
   * wire timer's pass ends by silencing it (links.ts silenceLink).
   */
  checkSilence(ls: LinkState | undefined): void {
    if (ls !== undefined && this.clock.now - ls.lastRx >= WIRE_TIMEOUT_MS) ls.silenceDue = true;
  }

  /** Makes sure the wire timer runs (it stops by itself once nothing waits on another NIC). */
  armWireTimer(): void {
    if (this.wireTimer !== null) return;
    this.wireTimer = setTimeout(this.fireWireTimer, WIRE_TICK_MS);
    // In-thread users (tests) must not be kept alive by it.
    this.wireTimer.unref();
  }

  stopWireTimer(): void {
    if (this.wireTimer) clearTimeout(this.wireTimer);
    this.wireTimer = null;
  }

  private readonly fireWireTimer = (): void => {
    this.wireTimer = null;
    this.onWireTick();
  };
}

// ---- MAC learning -----------------------------------------------------------------------------

export const MAC_SETS = 1024;
export const MAC_WAYS = 4;
/** Learned entries expire after this many seconds without a frame from that address. */
export const MAC_AGE_S = 300;

/**
 * Which link a unicast MAC address was last seen on (its source MAC in an ETHERNET frame from
 * that link). Set-associative: 4 ways per set, a stale or the oldest way is replaced, so the
 * table never grows and a lookup is a few compares.
 */
export class MacTable {
  private readonly hi = new Uint32Array(MAC_SETS * MAC_WAYS);
  private readonly lo = new Uint32Array(MAC_SETS * MAC_WAYS);
  private readonly peer = new Uint32Array(MAC_SETS * MAC_WAYS);
  /** Seconds (the NIC's clock) + 1 of the last sighting; 0 = empty. */
  private readonly seen = new Int32Array(MAC_SETS * MAC_WAYS);

  private static set(hi: number, lo: number): number {
    return ((Math.imul(lo ^ (hi * 0x9e37), 0x9e3779b1) >>> 22) % MAC_SETS) * MAC_WAYS;
  }

  learn(hi: number, lo: number, peer: number, nowS: number): void {
    const base = MacTable.set(hi, lo);
    const stamp = nowS + 1;
    let victim = base;
    for (let w = base; w < base + MAC_WAYS; w++) {
      if (this.seen[w] !== 0 && this.hi[w] === hi && this.lo[w] === lo) {
        this.peer[w] = peer;
        this.seen[w] = stamp;
        return;
      }
      if (this.seen[w] < this.seen[victim]) victim = w;
    }
    this.hi[victim] = hi;
    this.lo[victim] = lo;
    this.peer[victim] = peer;
    this.seen[victim] = stamp;
  }

  /** The peer NIC a unicast address was learned on, or -1 (unknown or aged out). */
  lookup(hi: number, lo: number, nowS: number): number {
    const base = MacTable.set(hi, lo);
    for (let w = base; w < base + MAC_WAYS; w++) {
      if (this.seen[w] !== 0 && this.hi[w] === hi && this.lo[w] === lo) {
        if (nowS + 1 - this.seen[w] > MAC_AGE_S) {
          this.seen[w] = 0;
          return -1;
        }
        return this.peer[w];
      }
    }
    return -1;
  }

  /** Live entries (info and tests). */
  size(nowS: number): number {
    let n = 0;
    for (let w = 0; w < this.seen.length; w++)
      if (this.seen[w] !== 0 && nowS + 1 - this.seen[w] <= MAC_AGE_S) n++;
    return n;
  }
}

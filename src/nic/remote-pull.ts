/**
 * Remote PULLs (Open-MX's driver/linux/omx_pull.c), both sides.
 *
 * Requester: a PULL descriptor with DFLAG_REMOTE names a pull right another NIC's endpoint
 * armed (window.ts). This NIC checks the destination region, takes a RemotePullTable slot
 * and sends a PULL_REQUEST (frame.ts); PULL_REPLY frames bring the bytes in order and are
 * written into the destination (a long one piece by piece as the link reads it, rxPullData,
 * the region looked up again for each piece); the last one, an error reply, a lost link, WIRE_TIMEOUT_MS
 * without progress or its deadline (window.ts pullDeadlineMs: however the replies trickle)
 * ends it with PULL_DONE. An endpoint has at most PULL_CREDITS pulls out across links (a
 * further one waits at the head of its own queue), and the table has room for every
 * endpoint's share at once. A pull that finds its link's PULL_JOBS_PER_LINK jobs taken, or its
 * endpoint's domain (its QoS share slot) holding its share of them (link-state.ts
 * PULL_LINK_SHARE: as many as it leaves free), is parked (pull-park.ts) in its slot and
 * asked for when a job frees, endpoints in turn: it holds no queue, its own endpoint's included. A requester that gives up (its endpoint closed, its
 * destination region went away) tells the peer to stop with a cancelling PULL_REQUEST. With
 * no link to the source's NIC and that NIC being this one, the pull is checked as a peer
 * would check it and copied here by the DMA engine, held and charged to the source as a
 * DFLAG_EXPOSURE PULL is (qos.ts maySelfServe, paidBy). Remote PULLs do not hold the endpoint's queue:
 * their PULL_DONE may come after later descriptors' completions.
 *
 * Responder: a PULL_REQUEST takes the right it names (exposure.ts; a requester whose pulls were
 * refused too often is refused unexamined for a while, pull-throttle.ts) into a job of the link it
 * came on (link-state.ts, PULL_JOBS_PER_LINK per link: a request beyond them is refused
 * NO_RESOURCES without spending its right); the jobs of a link take turns sending PULL_REPLY
 * frames, JOB_ROUND bytes a visit and PULL_CHUNK a round, stopping when the link pushes back;
 * a job whose source endpoint has spent its share (the link's own weighted deficit round
 * robin, serveJobs, and the NIC's round, qos.ts) or is held by its tx cap waits.
 * A right revoked, a region deregistered or an owner closed mid-transfer ends the job with an
 * error reply, never stale bytes.
 */

import { type NicClock, traceNow } from "./clock.js";
import { EndpointCounter, NicCounter } from "./counters.js";
import { type DmaEngine, PULL_CHUNK } from "./dma.js";
import { type EndpointContext, type EndpointTable, MAX_ENDPOINTS_LIMIT, STALLED } from "./endpoints.js";
import type { Events } from "./events.js";
import { ExposureGrant, exposureLive, type PullRights } from "./exposure.js";
import {
  beginFrame,
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_SESSION,
  F_LENGTH,
  F_PULL_KEY,
  F_PULL_LENGTH,
  F_PULL_OFFSET,
  F_PULL_RIGHT,
  F_SRC_ENDPOINT,
  F_SRC_SESSION,
  F_STATUS,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  getWord,
  setFrameDest,
  setFrameSource,
  setWord,
} from "./frame.js";
import {
  CTRL_QUEUE,
  JOB_ROUND,
  type LinkState,
  type LinkTable,
  PULL_JOBS_PER_LINK,
  pullMayGo,
  WIRE_ACTED,
  WIRE_WAITING,
} from "./link-state.js";
import { PullPark } from "./pull-park.js";
import type { QosScheduler } from "./qos.js";
import { SharedSlotTable } from "./slot-table.js";
import { MxStatus } from "./status.js";
import type { Tpt } from "./tpt.js";
import { NicTraceStage, nicStamp } from "./trace-ring.js";
import {
  Access,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  D_TRACE_SEQ,
  DFLAG_TRACE,
  ErrorReason,
  pullDeadlineMs,
  SEND_MAX,
  WIRE_TIMEOUT_MS,
} from "./window.js";

/** Link rounds one serveJobs call may begin at most (PULL_CHUNK bounds it first with real jobs). */
const LINK_DRR_PASSES = 8;

/**
 * Remote PULLs one endpoint may have out, across links; a further one waits at the head of that
 * endpoint's send queue until one of them ends (counted as pull_ep_full). The table holds
 * maxEndpoints × PULL_CREDITS (2048 with the default 32 endpoints, 16384 at
 * MAX_ENDPOINTS_LIMIT), so every endpoint can be at its share at once and none can take
 * another's: before, 256 slots were shared by all, and one endpoint pulling from four slow or
 * hostile hosts (PULL_JOBS_PER_LINK on each link) kept them full, until their deadlines with
 * a byte now and then, so every other endpoint's remote pull, to any host, waited at the head
 * of its queue. The MX library sets no number of its own (mx/nic-queues.ts startPull posts
 * one PULL per matched rendezvous receive, and remote pulls do not hold the queue): a window
 * of rendezvous receives (osu_bw's and osu_bibw's is 64) is pulled at once. 64, one link's
 * PULL_JOBS_PER_LINK, lets an endpoint keep such a window out to one peer, or spread over
 * several, as before; at 77 bytes a slot.
 */
export const PULL_CREDITS = 64;
/** Slot bits of the table's ids: room for MAX_ENDPOINTS_LIMIT × PULL_CREDITS slots. */
export const PULL_SLOT_BITS = 14;

/**
 * The remote PULLs this NIC asked for (requester side), by slot (slot-table.ts: nothing
 * allocated per pull). The request id in the PULL_REQUEST's F_COOKIE, echoed by every reply,
 * is the slot's id.
 */
export class RemotePullTable extends SharedSlotTable {
  /** The pulling endpoint's session (SharedSlotTable.ep: the endpoint). */
  readonly session: Uint32Array;
  /** The descriptor's cookie, for the PULL_DONE. */
  readonly cookie: Int32Array;
  /** The source's NIC (the link replies must come on) and the endpoint that armed the right. */
  readonly nic: Uint32Array;
  readonly srcEp: Uint32Array;
  /** The destination region's id and where the transfer goes in it. */
  readonly dst: Uint32Array;
  readonly dstOff: Uint32Array;
  /** The transfer's length, and the bytes written so far. */
  readonly len: Uint32Array;
  readonly got: Uint32Array;
  /** When the pull last made progress (or started). */
  readonly last: Float64Array;
  /** When it ends TIMEOUT whatever its progress (window.ts pullDeadlineMs). */
  readonly deadline: Float64Array;
  /** Trace-clock time the NIC took a traced descriptor (0: untraced). */
  readonly seenAt: Float64Array;
  /** A traced pull's message: its trace sequence (D_TRACE_SEQ), for this NIC's trace ring. */
  readonly traceSeq: Uint32Array;
  /** 1 while the pull waits parked for a job of its link (pull-park.ts): not asked for yet. */
  readonly parked: Uint8Array;
  /** The pulling endpoint's QoS share slot when the pull was asked for (LinkState.pullsOutByShare). */
  readonly share: Int32Array;
  /** What the PULL_REQUEST names, kept for a parked pull: the right, its key, where in it, and the source's session. */
  readonly right: Uint32Array;
  readonly key: Uint32Array;
  readonly srcOff: Uint32Array;
  readonly srcSession: Uint32Array;
  /** The parks' lists, threaded through the slots (pull-park.ts). */
  readonly parkNext: Int32Array;
  readonly parkPrev: Int32Array;

  constructor(maxEndpoints: number) {
    super(maxEndpoints, PULL_CREDITS, PULL_SLOT_BITS);
    const slots = this.capacity;
    this.session = new Uint32Array(slots);
    this.cookie = new Int32Array(slots);
    this.nic = new Uint32Array(slots);
    this.srcEp = new Uint32Array(slots);
    this.dst = new Uint32Array(slots);
    this.dstOff = new Uint32Array(slots);
    this.len = new Uint32Array(slots);
    this.got = new Uint32Array(slots);
    this.last = new Float64Array(slots);
    this.deadline = new Float64Array(slots);
    this.seenAt = new Float64Array(slots);
    this.traceSeq = new Uint32Array(slots);
    this.parked = new Uint8Array(slots);
    this.share = new Int32Array(slots);
    this.right = new Uint32Array(slots);
    this.key = new Uint32Array(slots);
    this.srcOff = new Uint32Array(slots);
    this.srcSession = new Uint32Array(slots);
    this.parkNext = new Int32Array(slots);
    this.parkPrev = new Int32Array(slots);
  }
}

export class RemotePull {
  readonly table: RemotePullTable;
  /** Where a pull right this engine took points. */
  private readonly grant = new ExposureGrant();
  /** The header-only frame being built. */
  private readonly hdr = new Uint8Array(FRAME_HEADER_BYTES);
  /** The PULL_REPLY being built. */
  private readonly txFrame = new Uint8Array(FRAME_MAX);

  constructor(
    private readonly nicId: number,
    private readonly eps: EndpointTable,
    private readonly tpt: Tpt,
    private readonly rights: PullRights,
    private readonly dma: DmaEngine,
    private readonly events: Events,
    private readonly links: LinkTable,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
    private readonly qos: QosScheduler,
  ) {
    this.table = new RemotePullTable(eps.maxEndpoints);
  }

  // ---- requester side ---------------------------------------------------------------------------

  /** Executes ctx's PULL descriptor `d` with DFLAG_REMOTE. Returns the bytes copied in this round, or STALLED. */
  execPull(ctx: EndpointContext, d: Int32Array): number {
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
      this.events.postError(ctx, d, reason);
      return 0;
    }
    const destNic = d[D_DEST_NIC] >>> 0;
    const srcEp = d[D_DEST_ENDPOINT] >>> 0;
    const srcSession = d[D_DEST_SESSION] >>> 0;
    const srcOff = d[D_SRC_OFFSET] >>> 0;
    const cookie = d[D_COOKIE];
    // Its owner locked out by that NIC for refused pulls, as this one counts (own-refusals.ts).
    if (this.events.own.pullWait(ctx, destNic, srcEp) > 0) {
      this.events.postPullDone(ctx, cookie, 0, MxStatus.REJECTED, 0, destNic, srcEp);
      return 0;
    }
    const ls = this.links.usable(destNic);
    const rp = this.table;
    if (ls !== undefined && !rp.canTake(ctx.id)) {
      // This endpoint's share is taken (the table itself has room for every share): this one
      // waits at the head of its own queue until one of its pulls ends (its replies, the
      // link's loss, WIRE_TIMEOUT_MS without progress or its deadline; the wire timer runs
      // meanwhile), and the backstop retries it. Not a stall on the link: the link's silence
      // is not judged by it.
      this.c[NicCounter.pull_ep_full]++;
      ctx.linkStalled = true;
      return STALLED;
    }
    if (ls !== undefined && ls.ctrlCount >= CTRL_QUEUE) {
      // Back-pressure: the descriptor waits at the head of the queue.
      return this.links.stall(ctx, destNic, true);
    }
    if (ls === undefined && destNic === this.nicId && !this.qos.maySelfServe(ctx.id, srcEp)) {
      // Copied here below: the source pays (qos.ts), so its spent share or tx cap in debt holds
      // the pull at the head of the queue, as it holds a DFLAG_EXPOSURE one.
      this.c[NicCounter.qos_deferred]++;
      return STALLED;
    }
    const seenAt = (d[D_OPCODE] >>> 16) & DFLAG_TRACE ? traceNow() : 0;
    this.c[NicCounter.remote_pulls]++;
    this.c[ctx.base + EndpointCounter.pulls]++;
    if (ls === undefined) {
      let status: number = MxStatus.ENDPOINT_UNREACHABLE;
      if (destNic === this.nicId) {
        // The source is on this NIC and there is no loopback link: check it as a peer would, copy here.
        const index = d[D_SRC_REGION] >>> 0;
        const g = this.grant;
        status = this.rights.takeFor(ctx, srcEp, srcSession, index, d[D_SRC_KEY], srcOff, len, g);
        if (status === MxStatus.SUCCESS) {
          // The source's memory, copied by this NIC with no reply sent: charged to the source,
          // its deficit and tx caps, as for DFLAG_EXPOSURE (a source capped at 1 MB/s streamed
          // 157 MB in 38 ms this way when only the puller paid).
          this.qos.paidBy(srcEp);
          this.c[NicCounter.remote_pull_bytes] += len;
          return this.dma.startCopy(
            ctx,
            d,
            g.slot,
            g.region,
            g.start,
            dst,
            dstOff,
            len,
            seenAt,
            srcEp,
            srcSession,
            index,
          );
        }
      }
      this.c[NicCounter.remote_pull_failures]++;
      this.events.postPullDone(ctx, cookie, 0, status, seenAt, this.nicId, srcEp);
      return 0;
    }
    const s = rp.takeFor(ctx.id);
    rp.session[s] = ctx.session;
    rp.cookie[s] = cookie;
    rp.nic[s] = destNic;
    rp.srcEp[s] = srcEp;
    rp.srcSession[s] = srcSession;
    rp.right[s] = d[D_SRC_REGION];
    rp.key[s] = d[D_SRC_KEY];
    rp.srcOff[s] = srcOff;
    rp.dst[s] = d[D_DST_REGION];
    rp.dstOff[s] = dstOff;
    rp.len[s] = len;
    rp.got[s] = 0;
    rp.seenAt[s] = seenAt;
    rp.traceSeq[s] = seenAt !== 0 ? d[D_TRACE_SEQ] : 0;
    // Older parked pulls go first where they now can (a control queue that was full drained).
    if (ls.parked !== null && ls.parked.count > 0) this.unpark(ls);
    if (
      !pullMayGo(ls.pullsOutByShare[this.qos.slotOf[ctx.id]], PULL_JOBS_PER_LINK - ls.pullsOut) ||
      ls.parked?.has(ctx.id)
    ) {
      // The link's jobs are taken, or this endpoint's domain holds its share of them (link-state.ts
      // PULL_LINK_SHARE: it leaves free what it holds, for domains holding none): the pull waits
      // parked, not at the head of the queue, where it held every descriptor behind it (to any
      // host) until some pull on this link ended, however long the others took.
      rp.parked[s] = 1;
      ls.parked ??= new PullPark(rp.parkNext, rp.parkPrev);
      ls.parked.push(ctx.id, s);
      this.c[NicCounter.pulls_parked]++;
      return 0;
    }
    this.request(ls, s);
    return 0;
  }

  /** Asks the peer on `ls` for pull `s` (taken, filled in, not parked): its job starts. */
  private request(ls: LinkState, s: number): void {
    const rp = this.table;
    const ep = rp.ep[s];
    const now = this.clock.now;
    rp.last[s] = now;
    rp.deadline[s] = now + pullDeadlineMs(rp.len[s]);
    ls.pullsOut++;
    const share = (rp.share[s] = this.qos.slotOf[ep]);
    ls.pullsOutByShare[share]++;
    const f = this.hdr;
    beginFrame(f, FrameType.PullRequest, 0, rp.id[s]);
    setFrameSource(f, this.nicId, ep, rp.session[s]);
    setFrameDest(f, ls.peerNic, rp.srcEp[s], rp.srcSession[s]);
    setWord(f, F_PULL_RIGHT, rp.right[s]);
    setWord(f, F_PULL_KEY, rp.key[s]);
    setWord(f, F_PULL_OFFSET, rp.srcOff[s]);
    setWord(f, F_PULL_LENGTH, rp.len[s]);
    this.links.sendHeader(ls, f);
    if (rp.seenAt[s] !== 0) nicStamp(ls.peerNic, rp.srcEp[s], rp.traceSeq[s], NicTraceStage.PullRequested);
    this.links.armWireTimer();
  }

  /** Jobs of `ls` freed: its parked pulls go, endpoints in turn, while jobs and their shares allow. */
  private unpark(ls: LinkState): void {
    const park = ls.parked;
    if (park === null || !ls.attached) return;
    const rp = this.table;
    while (park.count > 0 && ls.pullsOut < PULL_JOBS_PER_LINK && ls.ctrlCount < CTRL_QUEUE) {
      const s = park.takeNext(ls.pullsOutByShare, this.qos.slotOf, PULL_JOBS_PER_LINK - ls.pullsOut);
      if (s < 0) return;
      rp.parked[s] = 0;
      this.request(ls, s);
    }
  }

  /** A PULL_REPLY for one of our pulls: its bytes, in order, or the error that ends it. */
  rxPullReply(ls: LinkState, frame: Uint8Array): void {
    const s = this.replyFor(ls, frame, true);
    if (s < 0) return;
    const n = getWord(frame, F_LENGTH);
    if (n > 0 && !this.place(ls, s, frame, FRAME_HEADER_BYTES, n, 0)) return;
    this.replied(ls, s, n);
  }

  /**
   * A piece of a PULL_REPLY's payload as it comes off the link (Link.onPullData): `piece` is
   * the payload from `at`, of `total` framed bytes. Each piece is checked as a whole frame
   * would be and placed at once (the region is looked up again for each: it may have gone
   * between two pieces); the reply counts, and the pull moves on, with the last piece.
   */
  rxPullData(ls: LinkState, head: Uint8Array, piece: Uint8Array, at: number, total: number): void {
    const last = at + piece.length === total;
    const s = at === 0 ? this.replyFor(ls, head, true) : this.continued(ls, head);
    ls.pieceSlot = last ? -1 : s;
    if (s < 0) return;
    const n = getWord(head, F_LENGTH);
    const end = Math.min(at + piece.length, n);
    // A failed place() ended the pull, and finish() forgot this reply.
    if (end > at && !this.place(ls, s, piece, 0, end - at, at)) return;
    if (last) this.replied(ls, s, n);
  }

  /**
   * The pull a reply's later piece continues: the one its first piece was let into, while that
   * pull lasts (finish() forgets the reply when it ends), else -1. A reply refused at its first
   * piece stays refused: a pull posted meanwhile under the id it named gets nothing of it.
   */
  private continued(ls: LinkState, head: Uint8Array): number {
    const s = ls.pieceSlot;
    // replyFor finds the pull by the header's id, the one the first piece was let into.
    return s >= 0 && this.replyFor(ls, head, false) === s ? s : -1;
  }

  /**
   * The pull a PULL_REPLY (its header) continues, or -1: not ours, out of order, or an error
   * reply (which ends the pull here). `first`: the reply's first look (it counts, and ends a
   * pull on an error); later pieces of the same reply are only matched again.
   */
  private replyFor(ls: LinkState, frame: Uint8Array, first: boolean): number {
    if (first) this.c[NicCounter.pull_replies_rx]++;
    const rp = this.table;
    const s = rp.find(getWord(frame, F_COOKIE));
    if (
      s < 0 ||
      rp.parked[s] === 1 || // never asked for
      rp.nic[s] !== ls.peerNic ||
      getWord(frame, F_DEST_ENDPOINT) !== rp.ep[s] ||
      getWord(frame, F_DEST_SESSION) !== rp.session[s] ||
      getWord(frame, F_SRC_ENDPOINT) !== rp.srcEp[s] ||
      getWord(frame, F_PULL_LENGTH) !== rp.len[s]
    ) {
      if (first) this.c[NicCounter.pull_replies_bad]++;
      return -1;
    }
    const n = getWord(frame, F_LENGTH);
    const st = getWord(frame, F_STATUS);
    if (st !== MxStatus.SUCCESS) {
      if (!first) return -1;
      if (n !== 0) {
        this.c[NicCounter.pull_replies_bad]++;
        return -1;
      }
      this.finish(s, st > MxStatus.NO_RESOURCES || st === MxStatus.PENDING ? MxStatus.ABORTED : st, null);
      this.unpark(ls);
      return -1;
    }
    const got = rp.got[s];
    const len = rp.len[s];
    // Replies come in order on a link: each must continue exactly where the last one ended.
    if (getWord(frame, F_PULL_OFFSET) !== got || n > len - got || (n === 0 && len !== 0)) {
      if (first) this.c[NicCounter.pull_replies_bad]++;
      return -1;
    }
    if (first && got === 0 && rp.seenAt[s] !== 0)
      nicStamp(rp.nic[s], rp.srcEp[s], rp.traceSeq[s], NicTraceStage.PullData);
    return s;
  }

  /**
   * Copies `n` bytes of pull `s`'s reply (from src at srcOff) to where its offset `at` in the
   * reply goes, if the destination region is still its endpoint's; else the pull ends
   * ABORTED (the peer is told to stop) and false.
   */
  private place(ls: LinkState, s: number, src: Uint8Array, srcOff: number, n: number, at: number): boolean {
    const rp = this.table;
    const t = this.tpt;
    // The destination may have been deregistered (or its endpoint closed) since the descriptor.
    const dst = t.lookup(rp.dst[s]);
    if (dst < 0 || t.owner[dst] !== rp.ep[s]) {
      this.finish(s, MxStatus.ABORTED, ls);
      this.unpark(ls);
      return false;
    }
    t.copyIn(src, srcOff, n, dst, rp.dstOff[s] + rp.got[s] + at);
    this.c[NicCounter.remote_pull_bytes] += n;
    this.c[this.eps.ctxs[rp.ep[s]].base + EndpointCounter.pull_bytes] += n;
    rp.last[s] = this.clock.now;
    return true;
  }

  /** Pull `s`'s reply of `n` bytes is in: the pull moves on, and ends if that was the rest. */
  private replied(ls: LinkState, s: number, n: number): void {
    const rp = this.table;
    rp.got[s] += n;
    rp.last[s] = this.clock.now;
    if (rp.got[s] === rp.len[s]) {
      this.finish(s, MxStatus.SUCCESS, null);
      this.unpark(ls);
    }
  }

  /** Ends remote pull `s` with PULL_DONE(status); `cancel`: tell the peer on that link to stop serving it. */
  private finish(s: number, status: number, cancel: LinkState | null): void {
    const rp = this.table;
    rp.releaseSlot(s);
    const ls = this.links.get(rp.nic[s]);
    // A reply under way in pieces for it goes nowhere now, even to a pull that takes its id again
    // (the id's generation wraps after 2^18 takes of the slot).
    if (ls !== undefined && ls.pieceSlot === s) ls.pieceSlot = -1;
    const ep = rp.ep[s];
    if (rp.parked[s] === 1) {
      // Never asked for: the peer has nothing to stop.
      rp.parked[s] = 0;
      ls?.parked?.remove(ep, s);
      cancel = null;
    } else if (ls !== undefined) {
      if (ls.pullsOut > 0) ls.pullsOut--;
      if (ls.pullsOutByShare[rp.share[s]] > 0) ls.pullsOutByShare[rp.share[s]]--;
    }
    if (cancel?.attached) {
      const f = this.hdr;
      beginFrame(f, FrameType.PullRequest, 0, rp.id[s]);
      setFrameSource(f, this.nicId, rp.ep[s], rp.session[s]);
      setFrameDest(f, cancel.peerNic, rp.srcEp[s], 0);
      setWord(f, F_STATUS, MxStatus.ABORTED);
      this.links.sendHeader(cancel, f);
    }
    if (status !== MxStatus.SUCCESS) this.c[NicCounter.remote_pull_failures]++;
    const ctx = this.eps.ctxs[rp.ep[s]];
    if (ctx.open && ctx.session === rp.session[s])
      this.events.postPullDone(ctx, rp.cookie[s], rp.got[s], status, rp.seenAt[s], rp.nic[s], rp.srcEp[s]);
  }

  /** Endpoint `ep` closed: its pulls end without events, and the peers stop serving them. */
  dropEndpoint(ep: number): void {
    const rp = this.table;
    for (let s = 0; s < rp.capacity; s++)
      if (rp.used[s] === 1 && rp.ep[s] === ep)
        this.finish(s, MxStatus.ENDPOINT_CLOSED, this.links.get(rp.nic[s]) ?? null);
    this.unparkAll();
  }

  /** The link to `ls`'s peer is gone or silent: our pulls on it complete ENDPOINT_UNREACHABLE, its jobs end. */
  failLink(ls: LinkState): void {
    const rp = this.table;
    for (let s = 0; s < rp.capacity; s++)
      if (rp.used[s] === 1 && rp.nic[s] === ls.peerNic) this.finish(s, MxStatus.ENDPOINT_UNREACHABLE, null);
    this.dropJobs(ls);
  }

  /**
   * The wire timer: pulls without progress for WIRE_TIMEOUT_MS complete ENDPOINT_UNREACHABLE,
   * those past their deadline TIMEOUT (the peer is told to stop). Returns WIRE_* flags.
   */
  tick(): number {
    const rp = this.table;
    if (rp.count === 0) return 0;
    const now = this.clock.now;
    let flags = 0;
    for (let s = 0; s < rp.capacity; s++) {
      if (rp.used[s] !== 1) continue;
      if (rp.parked[s] === 1) {
        // Not on the wire yet: nothing to time. It goes when a job of its link frees.
        flags |= WIRE_WAITING;
        continue;
      }
      if (now - rp.last[s] >= WIRE_TIMEOUT_MS) {
        flags |= WIRE_ACTED;
        this.c[NicCounter.pull_timeouts]++;
        const ls = this.links.get(rp.nic[s]);
        this.links.checkSilence(ls);
        this.finish(s, MxStatus.ENDPOINT_UNREACHABLE, ls ?? null);
      } else if (now >= rp.deadline[s]) {
        // Progress resets the wait above, so a peer sending a byte now and then kept the pull,
        // its slot of the link's PULL_JOBS_PER_LINK and (with them full) the head of the
        // requester's queue for ever. It talked all along: not a silent peer.
        flags |= WIRE_ACTED;
        this.c[NicCounter.pulls_overdue]++;
        this.finish(s, MxStatus.TIMEOUT, this.links.get(rp.nic[s]) ?? null);
      } else flags |= WIRE_WAITING;
    }
    this.unparkAll();
    return flags;
  }

  /** Every link with parked pulls lets them go as far as its jobs allow (pulls ended, or its control queue drained). */
  private unparkAll(): void {
    const list = this.links.list;
    for (let i = 0; i < list.length; i++) if (list[i].parked !== null) this.unpark(list[i]);
  }

  // ---- responder side ---------------------------------------------------------------------------

  /** A served pull ends (done, failed, cancelled, its link gone): its right is spent, its job slot freed. */
  private dropJob(ls: LinkState, j: number): void {
    if (ls.jobs.used[j] === 0) return;
    this.rights.end(ls.jSrcEp[j], ls.jSrcSession[j], ls.jXp[j]);
    ls.jobs.release(j);
  }

  /** Ends every job of `ls` (its link failed, or serving them failed). */
  dropJobs(ls: LinkState): void {
    for (let j = 0; j < PULL_JOBS_PER_LINK; j++) this.dropJob(ls, j);
  }

  /** A PULL_REQUEST from the peer on `ls`: take the right it names into a job, or refuse it. */
  rxPullRequest(ls: LinkState, frame: Uint8Array): void {
    this.c[NicCounter.pull_requests_rx]++;
    const id = getWord(frame, F_COOKIE);
    if (getWord(frame, F_STATUS) !== 0) {
      // A cancel: the requester gave up on it.
      for (let j = 0; j < PULL_JOBS_PER_LINK; j++)
        if (ls.jobs.used[j] === 1 && ls.jId[j] === id) this.dropJob(ls, j);
      return;
    }
    const reqEp = getWord(frame, F_SRC_ENDPOINT);
    const reqSession = getWord(frame, F_SRC_SESSION);
    const srcEp = getWord(frame, F_DEST_ENDPOINT);
    const srcSession = getWord(frame, F_DEST_SESSION);
    const len = getWord(frame, F_PULL_LENGTH);
    if (reqEp >= MAX_ENDPOINTS_LIMIT) {
      // No NIC has such an endpoint: refused, the right unexamined. Refused pulls are throttled
      // per requester the frame names; a peer NIC naming a new one per guess would guess freely.
      this.c[NicCounter.frames_bad]++;
      this.replyPullError(ls, id, reqEp, reqSession, srcEp, srcSession, len, MxStatus.BAD_ENDPOINT);
      return;
    }
    // A job slot first: a request refused for want of one must not spend its right.
    const index = getWord(frame, F_PULL_RIGHT);
    const g = this.grant;
    const status = ls.jobs.full
      ? MxStatus.NO_RESOURCES
      : this.rights.take(
          ls.peerNic,
          reqEp,
          reqSession,
          srcEp,
          srcSession,
          index,
          getWord(frame, F_PULL_KEY),
          getWord(frame, F_PULL_OFFSET),
          len,
          g,
        );
    if (status !== MxStatus.SUCCESS) {
      this.replyPullError(ls, id, reqEp, reqSession, srcEp, srcSession, len, status);
      return;
    }
    const j = ls.jobs.take();
    ls.jId[j] = id;
    ls.jReqEp[j] = reqEp;
    ls.jReqSession[j] = reqSession;
    ls.jSrcEp[j] = srcEp;
    ls.jSrcSession[j] = srcSession;
    ls.jXp[j] = index;
    ls.jRegion[j] = g.region;
    ls.jOff[j] = g.start;
    ls.jLen[j] = len;
    ls.jSent[j] = 0;
  }

  /** The header-only PULL_REPLY that ends pull `id` with `status`. */
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
    beginFrame(f, FrameType.PullReply, 0, id);
    setFrameSource(f, this.nicId, srcEp, srcSession);
    setFrameDest(f, ls.peerNic, reqEp, reqSession);
    setWord(f, F_STATUS, status);
    setWord(f, F_PULL_LENGTH, len);
    if (this.links.sendHeader(ls, f)) this.c[NicCounter.pull_replies_tx]++;
    else this.c[NicCounter.acks_dropped]++;
  }

  /**
   * Serves `ls`'s jobs in turn, up to PULL_CHUNK bytes this round. Returns whether it sent anything.
   *
   * The link's own deficit round robin decides whose bytes it takes: each source endpoint
   * earns JOB_ROUND × its weight per link round and its jobs are served while that lasts; a
   * new link round begins only when every job that waits has spent its endpoint's share. A
   * link that pushes back ends the call but not the round, so when the link (not the NIC's
   * poll round) is the bottleneck, it is still shared by weight — the NIC's round deficits
   * refill every poll and would let jobs take turns 1:1. The NIC-wide deficit and the tx cap
   * (mayServe) still hold a job back as well.
   */
  serveJobs(ls: LinkState): boolean {
    // Per share slot (qos.ts): a domain's endpoints share one weight here too.
    const def = (ls.srcDeficit ??= new Float64Array(this.qos.weight.length));
    const weight = this.qos.weight;
    const slotOf = this.qos.slotOf;
    let budget = PULL_CHUNK;
    let did = false;
    let j = ls.jNext;
    // The job served last: a new link round begins after it. Beginning where the scan began
    // gave the first job of a source every round until it ended, and its siblings nothing
    // (a window of large messages: the requester fails a pull that makes no progress for
    // WIRE_TIMEOUT_MS, so those queued behind more than that of their siblings failed).
    let last = -1;
    for (let pass = 0; pass < LINK_DRR_PASSES && budget > 0 && ls.jobs.count > 0; pass++) {
      if (last >= 0) j = (last + 1) % PULL_JOBS_PER_LINK;
      // A job waited only because its endpoint spent its share of this link round.
      let spent = false;
      for (let left = PULL_JOBS_PER_LINK; left > 0 && budget > 0 && ls.jobs.count > 0; ) {
        if (ls.jobs.used[j] === 1) {
          const src = ls.jSrcEp[j];
          // A closed owner's job is served: it ends with an error reply.
          const closed = !this.eps.ctxs[src]?.open;
          const share = slotOf[src];
          let go = closed;
          if (!closed) {
            if (def[share] <= 0) spent = true;
            // Its NIC-wide share of the poll round is spent or its tx cap holds it: the next job.
            else go = this.qos.mayServe(src);
          }
          if (go) {
            const had = ls.jobs.count;
            const r = this.serveJob(ls, j, Math.min(JOB_ROUND, budget, closed ? JOB_ROUND : def[share]));
            const sent = r < 0 ? ~r : r;
            if (sent > 0) {
              this.qos.chargeServed(src, sent);
              def[share] -= sent;
            }
            if (sent > 0 || ls.jobs.count !== had) did = true;
            last = j;
            if (r < 0) {
              // The link pushes back: this job goes first when it can take frames again.
              ls.jNext = j;
              return did;
            }
            budget -= sent;
            // Its share lasts and the job goes on: it stays first (a visit is JOB_ROUND at most).
            if (sent > 0 && budget > 0 && ls.jobs.used[j] === 1 && !closed && def[share] > 0) continue;
          }
        }
        j = (j + 1) % PULL_JOBS_PER_LINK;
        left--;
      }
      // Out of budget: the round goes on in the next call. A full pass in which a job waited
      // for its share: everyone that waits has spent it.
      if (budget <= 0 || !spent) break;
      // Every job that waits has spent its share: a new link round (an idle endpoint banks one quantum at most).
      for (let e = 0; e < def.length; e++) {
        const q = JOB_ROUND * weight[e];
        const d = def[e] + q;
        def[e] = d > q ? q : d;
      }
    }
    ls.jNext = j;
    return did;
  }

  /**
   * Sends up to `budget` bytes of job j as PULL_REPLY frames. Returns the bytes sent, or their
   * bitwise NOT (~sent, negative) when the link pushed back before the job or the budget ran out.
   */
  private serveJob(ls: LinkState, j: number, budget: number): number {
    const t = this.tpt;
    const srcEp = ls.jSrcEp[j];
    const owner = this.eps.ctxs[srcEp];
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
    const len = ls.jLen[j];
    let sent = 0;
    do {
      const off = ls.jSent[j];
      const n = Math.min(SEND_MAX, len - off);
      // A link that pushes back would refuse the frame after its payload was copied: a stream
      // held by the bulk window asks many times a window (link_backpressure), 64 KiB each.
      if (n > 0 && ls.link.takesPullData?.() === false) {
        this.c[NicCounter.link_backpressure]++;
        return ~sent;
      }
      // Built where the link will write it from, when it lends a buffer (no second copy).
      const f = ls.link.lend?.() ?? this.txFrame;
      beginFrame(f, FrameType.PullReply, n, ls.jId[j]);
      setFrameSource(f, this.nicId, srcEp, ls.jSrcSession[j]);
      setFrameDest(f, ls.peerNic, ls.jReqEp[j], ls.jReqSession[j]);
      setWord(f, F_PULL_OFFSET, off);
      setWord(f, F_PULL_LENGTH, len);
      if (n > 0) t.copyOut(slot, ls.jOff[j] + off, n, f, FRAME_HEADER_BYTES);
      if (!ls.link.send(f.subarray(0, FRAME_HEADER_BYTES + n))) {
        this.c[NicCounter.link_backpressure]++;
        return ~sent;
      }
      // Pull data has a connection of its own (tcp-link.ts): it says nothing of the main one.
      if (n === 0) ls.took(this.clock.now);
      else ls.lastTx = this.clock.now;
      ls.jSent[j] = off + n;
      sent += n;
      this.c[NicCounter.frames_tx]++;
      this.c[NicCounter.pull_replies_tx]++;
      this.c[NicCounter.pull_served_bytes] += n;
    } while (ls.jSent[j] < len && sent < budget);
    if (ls.jSent[j] === len) this.dropJob(ls, j);
    return sent;
  }
}

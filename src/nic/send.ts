/**
 * SENDs (Open-MX's driver/linux/omx_send.c): a SEND descriptor's message goes out as a SEND
 * frame on the link to its destination NIC, into the link's send window (link-state.ts: a
 * window per link, a share of it per destination endpoint), or — to an endpoint of this NIC
 * with no loopback link — straight into delivery (delivery.ts), one copy. A SEND frame from a
 * link is delivered the same way, and its SEND_ACK frees the slot in the sender's window and
 * completes the descriptor with a SEND_DONE. A SEND whose link is lost, or whose ACK does not
 * come within WIRE_TIMEOUT_MS (a held delivery's keepalives restart that wait), completes
 * ENDPOINT_UNREACHABLE; one its receiver keeps holding past HOLD_MS completes NO_RESOURCES
 * (HoldExpired), whatever the receiver's keepalives say.
 */
import type { NicClock } from "./clock.js";
import { EndpointCounter, NicCounter } from "./counters.js";
import type { Delivery } from "./delivery.js";
import {
  type EndpointContext,
  type EndpointTable,
  M_AUX0,
  M_AUX1,
  M_COOKIE,
  M_DEST_EP,
  M_DEST_SESSION,
  M_LENGTH,
  M_MATCH_HI,
  M_MATCH_LO,
  M_SRC_EP,
  M_SRC_NIC,
  M_SRC_SESSION,
  M_TAG,
  M_TRACE,
  M_VIA_LINK,
  META_WORDS,
} from "./endpoints.js";
import type { Events } from "./events.js";
import {
  beginFrame,
  F_ACK_REASON,
  F_AUX0,
  F_AUX1,
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_SESSION,
  F_LENGTH,
  F_MATCH_HI,
  F_MATCH_LO,
  F_SRC_ENDPOINT,
  F_SRC_NIC,
  F_SRC_SESSION,
  F_STATUS,
  F_TAG,
  F_TRACE,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  getWord,
  setFrameDest,
  setFrameSource,
  setWord,
} from "./frame.js";
import { type LinkState, type LinkTable, WIRE_ACTED, WIRE_WAITING } from "./link-state.js";
import { MAX_PEER_REASON, MxStatus, reasonOfStatus } from "./status.js";
import type { Tpt } from "./tpt.js";
import { NicTraceStage, nicStamp } from "./trace-ring.js";
import {
  Access,
  D_AUX0,
  D_AUX1,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_LENGTH,
  D_MATCH_HI,
  D_MATCH_LO,
  D_OPCODE,
  D_SRC_OFFSET,
  D_SRC_REGION,
  D_TRACE_SEQ,
  DFLAG_TRACE,
  ErrorReason,
  SEND_MAX,
  WIRE_TIMEOUT_MS,
} from "./window.js";

/** SEND payloads from this size are built in a buffer the link lends (Link.lend): below, copying is cheaper. */
const LEND_MIN_BYTES = 4096;

export class SendEngine {
  /** The delivery in hand (a SEND of this NIC's, or from a SEND frame). */
  private readonly dv = new Int32Array(META_WORDS);
  /** The SEND frame being built. */
  private readonly txFrame = new Uint8Array(FRAME_MAX);

  constructor(
    private readonly nicId: number,
    private readonly eps: EndpointTable,
    private readonly tpt: Tpt,
    private readonly events: Events,
    private readonly delivery: Delivery,
    private readonly links: LinkTable,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
    /** Endpoint → its domain as a link's credits are shared (qos.ts chargeOf). */
    private readonly chargeOf: Float64Array,
  ) {}

  // ---- SEND descriptors out -----------------------------------------------------------------

  /** Executes ctx's SEND descriptor `d`. Returns the payload bytes it moved, or STALLED. */
  execSend(ctx: EndpointContext, d: Int32Array): number {
    const t = this.tpt;
    const len = d[D_LENGTH] >>> 0;
    if (len > SEND_MAX) {
      this.events.postError(ctx, d, ErrorReason.BadLength);
      return 0;
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
        this.events.postError(ctx, d, reason);
        return 0;
      }
    }
    const destNic = d[D_DEST_NIC] >>> 0;
    const cookie = d[D_COOKIE];
    // Its owner locked out by that NIC for wrong sessions, as this one counts (own-refusals.ts).
    if (this.events.own.sendWait(ctx, destNic) > 0) {
      this.events.postSendDone(ctx, cookie, len, MxStatus.REJECTED);
      return 0;
    }
    // A traced message (window.ts DFLAG_TRACE): its sequence travels on; stamped if this thread traces.
    const tseq = (d[D_OPCODE] >>> 16) & DFLAG_TRACE ? d[D_TRACE_SEQ] >>> 0 : 0;
    if (tseq !== 0) nicStamp(this.nicId, ctx.id, tseq, NicTraceStage.NicTaken);
    const ls = this.links.usable(destNic);
    if (ls === undefined) {
      this.countSend(ctx, len);
      if (destNic !== this.nicId) {
        this.events.postSendDone(ctx, cookie, len, MxStatus.ENDPOINT_UNREACHABLE);
        return len;
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
      m[M_TRACE] = tseq;
      const status = this.delivery.deliver(m, src, srcOff, null, 0);
      if (status !== MxStatus.PENDING) this.delivery.complete(m, status);
      // Held: the wire timer ends the hold after HOLD_MS if the receiver never makes room.
      else this.links.armWireTimer();
      return len;
    }
    const share = this.chargeOf[ctx.id];
    if (!ls.canSend(ctx.id, d[D_DEST_ENDPOINT], share)) {
      // The window, this domain's share of the destination endpoint's credits or this
      // endpoint's own is full: this one waits in the queue. Other endpoints' SENDs (their own
      // queues) go on.
      this.c[
        ls.sends.full
          ? NicCounter.send_window_full
          : ls.destFull(d[D_DEST_ENDPOINT])
            ? NicCounter.send_dest_full
            : NicCounter.send_src_full
      ]++;
      return this.links.stall(ctx, destNic);
    }
    // A large payload is built where the link will write it from, when it lends a buffer.
    const f = (len >= LEND_MIN_BYTES ? ls.link.lend?.() : null) ?? this.txFrame;
    beginFrame(f, FrameType.Send, len, cookie);
    setFrameSource(f, this.nicId, ctx.id, ctx.session);
    setFrameDest(f, destNic, d[D_DEST_ENDPOINT], d[D_DEST_SESSION]);
    setWord(f, F_MATCH_HI, d[D_MATCH_HI]);
    setWord(f, F_MATCH_LO, d[D_MATCH_LO]);
    setWord(f, F_AUX0, d[D_AUX0]);
    setWord(f, F_AUX1, d[D_AUX1]);
    setWord(f, F_TAG, ls.nextTag());
    setWord(f, F_TRACE, tseq);
    if (len > 0) t.copyOut(src, srcOff, len, f, FRAME_HEADER_BYTES);
    // Before the write: the peer NIC may read the frame before link.send returns. A frame the
    // link refuses is stamped again when retried (the last stamp stands).
    if (tseq !== 0) nicStamp(this.nicId, ctx.id, tseq, NicTraceStage.OnLink);
    // SEND_ACKs held for this link go first, in the same write when the round corks the link.
    if (ls.ackCount > 0) this.links.flushAcks(ls);
    if (!ls.link.send(f.subarray(0, FRAME_HEADER_BYTES + len))) {
      // The wire pushes back: this descriptor stays at the head of the queue and is retried.
      ls.refused(this.clock.now);
      this.c[NicCounter.link_backpressure]++;
      return this.links.stall(ctx, destNic, true);
    }
    const now = this.clock.now;
    ls.took(now);
    ls.pushSend(ctx.id, ctx.session, cookie, len, d[D_DEST_ENDPOINT], now + WIRE_TIMEOUT_MS, share);
    this.links.armWireTimer();
    this.c[NicCounter.frames_tx]++;
    this.countSend(ctx, len);
    return len;
  }

  private countSend(ctx: EndpointContext, len: number): void {
    this.c[NicCounter.sends]++;
    this.c[NicCounter.send_bytes] += len;
    this.c[ctx.base + EndpointCounter.sends]++;
    this.c[ctx.base + EndpointCounter.send_bytes] += len;
  }

  // ---- SEND and SEND_ACK frames in ------------------------------------------------------------

  /** A SEND frame (checked by links.ts: for this NIC, from the link's peer). */
  rxSend(frame: Uint8Array): void {
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
    const tseq = (m[M_TRACE] = getWord(frame, F_TRACE));
    if (tseq !== 0) nicStamp(m[M_SRC_NIC], m[M_SRC_EP], tseq, NicTraceStage.OffLink);
    const status = this.delivery.deliver(m, -1, 0, frame, FRAME_HEADER_BYTES);
    // Wake the receiver before writing the ACK to the socket: it is what the message waits on.
    this.events.flushRaises();
    if (status !== MxStatus.PENDING) this.delivery.complete(m, status);
    // A held delivery: the wire timer tells its sender to keep waiting, for HOLD_MS at most.
    else this.links.armWireTimer();
  }

  /** A SEND_ACK frame: the SEND it names in `ls`'s window completes (PENDING: keeps waiting). */
  rxSendAck(ls: LinkState, frame: Uint8Array): void {
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
      // Held for receive space: the wait restarts, but never past sHoldEnd. A receiver holds a
      // delivery HOLD_MS at most (delivery.ts expire); a peer that says PENDING for ever held
      // this SEND, its destination's share of the window and every descriptor queued behind it
      // in its sender's queue (to any destination) for ever.
      const next = this.clock.now + WIRE_TIMEOUT_MS;
      const end = ls.sHoldEnd[i];
      ls.sDeadline[i] = next < end ? next : end;
      return;
    }
    const len = ls.sLen[i];
    ls.completeSend(i);
    if (status > MxStatus.NO_RESOURCES) status = MxStatus.ABORTED;
    // The receiving NIC's reason, if it is one we know.
    const r = getWord(frame, F_ACK_REASON);
    this.sendDoneTo(
      ep,
      session,
      cookie,
      len,
      status,
      r > 0 && r <= MAX_PEER_REASON ? r : reasonOfStatus(status),
      ls.peerNic,
    );
  }

  /** SEND_DONE to endpoint `ep` if it is still the one (same session) that sent (to NIC `answeringNic`). */
  private sendDoneTo(
    ep: number,
    session: number,
    cookie: number,
    len: number,
    status: number,
    reason = reasonOfStatus(status),
    answeringNic = this.nicId,
  ): void {
    if (ep >= this.eps.maxEndpoints) return;
    const ctx = this.eps.ctxs[ep];
    if (ctx.open && ctx.session === session)
      this.events.postSendDone(ctx, cookie, len, status, reason, answeringNic);
  }

  // ---- the send window when the link fails or the wire timer ticks ------------------------------

  /** `ls` is gone or silent: every SEND in its window completes ENDPOINT_UNREACHABLE. */
  failWindow(ls: LinkState): void {
    for (let i = 0; i < ls.sends.capacity && ls.sends.count > 0; i++) {
      if (ls.sends.used[i] === 0) continue;
      ls.completeSend(i);
      this.sendDoneTo(ls.sEp[i], ls.sSession[i], ls.sCookie[i], ls.sLen[i], MxStatus.ENDPOINT_UNREACHABLE);
    }
  }

  /**
   * The wire timer: SENDs in `ls`'s window past their deadline complete ENDPOINT_UNREACHABLE
   * (NO_RESOURCES, HoldExpired: held past their sHoldEnd). Returns WIRE_ACTED if it completed any, WIRE_WAITING if others still wait.
   */
  tick(ls: LinkState): number {
    const now = this.clock.now;
    let flags = 0;
    for (let i = 0; i < ls.sends.capacity && ls.sends.count > 0; i++) {
      if (ls.sends.used[i] === 0) continue;
      if (now >= ls.sDeadline[i]) {
        flags |= WIRE_ACTED;
        ls.completeSend(i);
        if (ls.sDeadline[i] >= ls.sHoldEnd[i]) {
          // Held past HOLD_MS by a peer that kept saying so: it fails as an honest receiver
          // would have failed it (the peer talked all along: not a silent one).
          this.c[NicCounter.send_holds_overdue]++;
          this.sendDoneTo(
            ls.sEp[i],
            ls.sSession[i],
            ls.sCookie[i],
            ls.sLen[i],
            MxStatus.NO_RESOURCES,
            ErrorReason.HoldExpired,
          );
          continue;
        }
        this.links.checkSilence(ls);
        this.c[NicCounter.send_timeouts]++;
        this.sendDoneTo(ls.sEp[i], ls.sSession[i], ls.sCookie[i], ls.sLen[i], MxStatus.ENDPOINT_UNREACHABLE);
      } else flags |= WIRE_WAITING;
    }
    return flags;
  }
}

/**
 * Delivery into receive areas (Open-MX's driver/linux/omx_recv.c): a SEND's payload, from an
 * endpoint of this NIC or from a SEND frame, is placed in the receiving endpoint's receive
 * area with a RECV event; while the area has no room, or the event backlog none but what is
 * kept for the completions the endpoint is owed (events.ts roomForUnexpected), it waits in the
 * endpoint's delivery queue (DELIVERY_QUEUE entries, HOLD_MS at most). Every delivery ends by
 * telling its sender: a SEND_DONE for an endpoint of this NIC, a SEND_ACK frame for another
 * NIC's (frame.ts), and while one from a link is held, a PENDING SEND_ACK every KEEPALIVE_MS
 * so that its sender keeps waiting.
 *
 * The queue's places are shared among its senders (hold-share.ts mayHold): a sender holding some may take
 * another only while as many stay free after it as it then holds, up to HOLD_RESERVE, so one
 * alone holds 24 of 32, the next 4, 2, 1, and a newcomer always finds a place. A sender is what
 * it cannot multiply (senderKey): the sending NIC for a delivery from a link (links.ts checked
 * it is the link's peer), the sending domain (its QoS group, qos.ts chargeOf) for one of ours. A
 * key holder claims whatever NIC ids it likes (32 per address, link-bound.ts), so the NICs of
 * one network (an IPv4 /24, an IPv6 /48: senderBlock) also hold their places together: 28 at
 * most, ADDRESS_RESERVE left for other networks; five ids of one machine took all 32 back (a
 * reviewer's PoC: an honest host's messages then took 10–100 times as long, refused and
 * retried). A key holder with five networks still takes them all: shares of 32 places hold
 * against a few identities, not against many.
 * First come, first served, one connected peer that wrote while the receiver computed took all
 * 32 places, and every other sender's message failed NO_RESOURCES at once, which an MX library
 * takes for a hole in its sequence (the pair fails). A sender refused here is told
 * NO_RESOURCES (ErrorReason.NoResources): nothing was placed, and the MX library sends the
 * message again after a while (mx/busy-retries.ts). Half the queue for one alone (a link's
 * pull-job rule, link-state.ts pullMayGo) refused an honest stream's messages often enough to
 * cost it (64 KiB across hosts: ~20% less, its library stages 32 at a time). Keyed by (nic,
 * endpoint, session) instead, a sender multiplied itself for nothing (a reopened endpoint is a
 * new session, a peer NIC writes any endpoint it likes in its frames).
 *
 * A delivery is described by its metadata (endpoints.ts M_*), passed in explicitly: the
 * caller's scratch for a new one, this engine's own scratch for a queued one.
 */
import { copyBytes } from "../xen/copy.js";
import { handshakeBlock } from "./address-block.js";
import type { NicClock } from "./clock.js";
import { EndpointCounter, NicCounter } from "./counters.js";
import {
  DELIVERY_QUEUE,
  type EndpointContext,
  type EndpointTable,
  M_COOKIE,
  M_DEST_EP,
  M_DEST_SESSION,
  M_LENGTH,
  M_SRC_EP,
  M_SRC_NIC,
  M_SRC_SESSION,
  M_TAG,
  M_TRACE,
  M_VIA_LINK,
  MAX_ENDPOINTS_LIMIT,
  META_WORDS,
  ownerTag,
} from "./endpoints.js";
import type { Events } from "./events.js";
import {
  beginFrame,
  F_ACK_LENGTH,
  F_ACK_REASON,
  F_STATUS,
  F_TAG,
  FRAME_HEADER_BYTES,
  FrameType,
  setFrameDest,
  setFrameSource,
  setWord,
} from "./frame.js";
import { ADDRESS_RESERVE, mayHold } from "./hold-share.js";
import type { LinkTable } from "./link-state.js";
import { SessionThrottle } from "./session-throttle.js";
import { MxStatus, reasonOfStatus } from "./status.js";
import type { Tpt } from "./tpt.js";
import { NicTraceStage, nicStamp } from "./trace-ring.js";
import {
  ErrorReason,
  HOLD_MS,
  RECV_ALIGN,
  RECV_BYTES,
  SEND_MAX,
  W_RQ_CONS,
  W_RQ_PROD,
  WIRE_TIMEOUT_MS,
} from "./window.js";

/** A receiver holding a delivery from a link tells its sender so this often (a PENDING SEND_ACK). */
export const KEEPALIVE_MS = WIRE_TIMEOUT_MS / 3;

/** Local senders' keys start here (senderKey): below every charge, apart from NIC ids. */
const LOCAL_KEY = -(2 ** 42);

export class Delivery {
  /** A queued delivery's metadata, in hand. */
  private readonly queued = new Int32Array(META_WORDS);
  /** The SEND_ACK being built. */
  private readonly hdr = new Uint8Array(FRAME_HEADER_BYTES);
  /** SENDs naming a wrong session, per requesting endpoint (session-throttle.ts). */
  private readonly sessions = new SessionThrottle();

  constructor(
    private readonly nicId: number,
    private readonly eps: EndpointTable,
    private readonly tpt: Tpt,
    private readonly events: Events,
    private readonly links: LinkTable,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
    /** Endpoint → its domain, as what it has out is charged (qos.ts chargeOf): a local sender. */
    private readonly chargeOf: Float64Array,
  ) {}

  /**
   * Delivers the message described by `m`, whose payload is region `srcSlot` at `srcOff`
   * (srcSlot ≥ 0) or `srcBytes` at `srcBytesOff`: places it now (SUCCESS), queues it
   * (PENDING), or returns the MX status of the failure. The caller then tells the sender
   * (complete) unless PENDING.
   */
  deliver(
    m: Int32Array,
    srcSlot: number,
    srcOff: number,
    srcBytes: Uint8Array | null,
    srcBytesOff: number,
  ): number {
    const destEp = m[M_DEST_EP] >>> 0;
    if (destEp >= this.eps.maxEndpoints) return MxStatus.ENDPOINT_UNKNOWN;
    const ctx = this.eps.ctxs[destEp];
    if (!ctx.open) return MxStatus.ENDPOINT_CLOSED;
    // The session stands in for the key: wrong ones are throttled per requester (session-throttle.ts).
    const reqNic = m[M_SRC_NIC] >>> 0;
    const reqEp = m[M_SRC_EP] >>> 0;
    const reqSession = m[M_SRC_SESSION] >>> 0;
    if (reqEp >= MAX_ENDPOINTS_LIMIT) {
      // No NIC has such an endpoint (a hostile peer NIC's frame): one requester per guess otherwise.
      this.c[NicCounter.frames_bad]++;
      return MxStatus.BAD_ENDPOINT;
    }
    const now = this.clock.now;
    if (this.sessions.lockedFor(reqNic, reqEp, reqSession, now) > 0) {
      this.c[NicCounter.sends_throttled]++;
      return MxStatus.REJECTED;
    }
    if (m[M_DEST_SESSION] >>> 0 !== ctx.session) {
      this.c[NicCounter.send_bad_sessions]++;
      this.sessions.failed(reqNic, reqEp, reqSession, now);
      return MxStatus.BAD_SESSION;
    }
    if (ctx.dqCount === 0 && this.place(ctx, m, srcSlot, srcOff, srcBytes, srcBytesOff))
      return MxStatus.SUCCESS;
    const key = this.senderKey(m);
    const block = this.senderBlock(m);
    const free = DELIVERY_QUEUE - ctx.dqCount;
    if (
      !mayHold(this.heldAs(ctx, ctx.dqKey, key), free) ||
      (block !== 0 && !mayHold(this.heldAs(ctx, ctx.dqBlock, block), free, ADDRESS_RESERVE))
    ) {
      this.c[NicCounter.delivery_rejected]++;
      this.c[ctx.base + EndpointCounter.delivery_rejected]++;
      return MxStatus.NO_RESOURCES;
    }
    const s = (ctx.dqHead + ctx.dqCount) % DELIVERY_QUEUE;
    ctx.dqMeta.set(m, s * META_WORDS);
    ctx.dqSince[s] = this.clock.now;
    ctx.dqKey[s] = key;
    ctx.dqBlock[s] = block;
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

  /**
   * Who sent `m`, as the queue's places are shared (the header): a sending NIC's id (≥ 0) for
   * a delivery from another NIC; for one from an endpoint of this NIC, its domain (qos.ts
   * chargeOf, within ±2^41) moved below −2^42.
   */
  private senderKey(m: Int32Array): number {
    const nic = m[M_SRC_NIC] >>> 0;
    if (nic !== this.nicId) return nic;
    const ep = m[M_SRC_EP] >>> 0;
    // Ours (directly, or over a loopback link): the sender is executing its SEND, so it is open.
    return LOCAL_KEY + (ep < this.eps.maxEndpoints ? this.chargeOf[ep] : 0);
  }

  /**
   * The address block `m` came from, as a number: its 32-bit FNV-1a hash, kept on the link (two
   * blocks that collide share their places; a table of blocks seen grew with every address ever
   * linked). The block is the one a listener shares its handshakes by (address-block.ts
   * handshakeBlock: an IPv4 /24, an IPv6 /48): per address (an IPv6 /64), four /64s of one /48
   * took 31 places and five all 32. 0, no block rule: one of ours, a link within this process,
   * or this machine's own (loopback: its NICs are its host's, whose key holders share it anyway;
   * counted as one block, three honest hosts of one machine shut the third out).
   */
  private senderBlock(m: Int32Array): number {
    const nic = m[M_SRC_NIC] >>> 0;
    if (nic === this.nicId) return 0;
    const ls = this.links.get(nic);
    if (ls === undefined) return 0;
    if (ls.blockId < 0) {
      const address = ls.link.address ?? "";
      const block = address === "" ? "loopback" : handshakeBlock(address);
      ls.blockId = block === "loopback" ? 0 : ownerTag(block) || 1;
    }
    return ls.blockId;
  }

  /** How many of ctx's queued deliveries have `value` in `words` (dqKey: the sender's, dqBlock: its network's). */
  private heldAs(ctx: EndpointContext, words: Float64Array, value: number): number {
    let held = 0;
    for (let q = 0; q < ctx.dqCount; q++) if (words[(ctx.dqHead + q) % DELIVERY_QUEUE] === value) held++;
    return held;
  }

  /** Places `m`'s payload in ctx's receive area and posts the RECV event, if both have room. */
  private place(
    ctx: EndpointContext,
    m: Int32Array,
    srcSlot: number,
    srcOff: number,
    srcBytes: Uint8Array | null,
    srcBytesOff: number,
  ): boolean {
    const w = ctx.w;
    const len = m[M_LENGTH] >>> 0;
    // A RECV is unexpected: the backlog's room for the completions ctx is owed is not its.
    if (!this.events.roomForUnexpected(ctx)) return false;
    const used = (ctx.rqProd - Atomics.load(w, W_RQ_CONS)) >>> 0;
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
    // Traced: stamped before the event is published (its owner may see it at once).
    if (m[M_TRACE] !== 0) nicStamp(m[M_SRC_NIC], m[M_SRC_EP], m[M_TRACE], NicTraceStage.Delivered);
    // An int32, the word's own bits: a u32 would leave V8's small integers past 2 GiB (mx/channel.ts).
    ctx.rqProd = (ctx.rqProd + span) | 0;
    // The payload is in place before the producer index says so, and both before the event.
    Atomics.store(w, W_RQ_PROD, ctx.rqProd);
    this.events.postRecv(ctx, m, len, offset, span);
    this.c[NicCounter.recvs]++;
    this.c[NicCounter.recv_bytes] += len;
    this.c[ctx.base + EndpointCounter.recvs]++;
    this.c[ctx.base + EndpointCounter.recv_bytes] += len;
    return true;
  }

  /** Queue entry `s` of ctx into this.queued. */
  private load(ctx: EndpointContext, s: number): Int32Array {
    const q = this.queued;
    const base = s * META_WORDS;
    for (let i = 0; i < META_WORDS; i++) q[i] = ctx.dqMeta[base + i];
    return q;
  }

  /** Places ctx's queued deliveries while they fit. Returns whether it placed any. */
  drain(ctx: EndpointContext): boolean {
    let did = false;
    while (ctx.dqCount > 0) {
      const s = ctx.dqHead;
      const m = this.load(ctx, s);
      if (!this.place(ctx, m, -1, 0, ctx.dqBuf[s], 0)) break;
      ctx.dqHead = (ctx.dqHead + 1) % DELIVERY_QUEUE;
      ctx.dqCount--;
      this.complete(m, MxStatus.SUCCESS);
      did = true;
    }
    return did;
  }

  /**
   * ctx closed: its queued deliveries will never be placed, and their senders learn it now.
   * Its staging buffers go too (the context's next opener allocates its own as it needs them):
   * kept, a host kept 2 MiB for every context that had ever held a full queue.
   */
  failQueued(ctx: EndpointContext): void {
    while (ctx.dqCount > 0) {
      const m = this.load(ctx, ctx.dqHead);
      ctx.dqHead = (ctx.dqHead + 1) % DELIVERY_QUEUE;
      ctx.dqCount--;
      this.complete(m, MxStatus.ENDPOINT_CLOSED);
    }
    ctx.dqBuf.fill(null);
  }

  /** Tells the sender of `m`'s message how its delivery ended: SEND_DONE here, or a SEND_ACK frame. */
  complete(m: Int32Array, status: number, reason = reasonOfStatus(status)): void {
    if (m[M_VIA_LINK] !== 0) {
      this.ack(m, 0, status, reason);
      return;
    }
    const ep = m[M_SRC_EP] >>> 0;
    const ctx = ep < this.eps.maxEndpoints ? this.eps.ctxs[ep] : null;
    // The sender may have closed (or closed and reopened) meanwhile: then nobody waits for it.
    if (ctx?.open && ctx.session === m[M_SRC_SESSION] >>> 0)
      this.events.postSendDone(ctx, m[M_COOKIE], m[M_LENGTH] >>> 0, status, reason);
  }

  /**
   * Tells the sending NIC how a delivery from a link ended (PENDING: still held) with a
   * SEND_ACK: its window tag echoed, the ErrorReason of a failure in F_ACK_REASON. The
   * delivery's metadata is `words` from `base`.
   */
  private ack(words: Int32Array, base: number, status: number, reason: number): void {
    const srcNic = words[base + M_SRC_NIC] >>> 0;
    const ls = this.links.get(srcNic);
    if (!ls) {
      this.c[NicCounter.acks_dropped]++;
      return;
    }
    const f = this.hdr;
    beginFrame(f, FrameType.SendAck, 0, words[base + M_COOKIE]);
    setFrameSource(f, this.nicId, words[base + M_DEST_EP], words[base + M_DEST_SESSION]);
    setFrameDest(f, srcNic, words[base + M_SRC_EP], words[base + M_SRC_SESSION]);
    setWord(f, F_STATUS, status);
    setWord(f, F_TAG, words[base + M_TAG]);
    setWord(f, F_ACK_LENGTH, words[base + M_LENGTH]);
    setWord(f, F_ACK_REASON, reason);
    // A success waits a moment for company (link-state.ts ACK_HOLD_MAX); news that changes
    // what the sender does (a hold, a failure) goes at once.
    if (status === MxStatus.SUCCESS) this.links.holdAck(ls, f);
    else if (!this.links.sendHeader(ls, f)) this.c[NicCounter.acks_dropped]++;
  }

  /** A PENDING SEND_ACK for each of ctx's held deliveries that came from a link. */
  sendKeepalives(ctx: EndpointContext): void {
    for (let q = 0; q < ctx.dqCount; q++) {
      const base = ((ctx.dqHead + q) % DELIVERY_QUEUE) * META_WORDS;
      if (ctx.dqMeta[base + M_VIA_LINK] !== 0) this.ack(ctx.dqMeta, base, MxStatus.PENDING, 0);
    }
  }

  /**
   * ctx's oldest held delivery waited HOLD_MS for receive space: it fails NO_RESOURCES
   * (HoldExpired), and so does every later one from the same sender still held — placing
   * those would leave a hole in that sender's sequence — while other senders' keep their
   * place. Repeats while the new oldest one has waited as long.
   */
  expire(ctx: EndpointContext): void {
    const meta = ctx.dqMeta;
    while (ctx.dqCount > 0 && this.clock.now - ctx.dqSince[ctx.dqHead] >= HOLD_MS) {
      const h = ctx.dqHead * META_WORDS;
      const nic = meta[h + M_SRC_NIC];
      const ep = meta[h + M_SRC_EP];
      const session = meta[h + M_SRC_SESSION];
      let kept = 0;
      for (let q = 0; q < ctx.dqCount; q++) {
        const s = (ctx.dqHead + q) % DELIVERY_QUEUE;
        const b = s * META_WORDS;
        if (meta[b + M_SRC_NIC] === nic && meta[b + M_SRC_EP] === ep && meta[b + M_SRC_SESSION] === session) {
          const m = this.load(ctx, s);
          this.c[NicCounter.delivery_expired]++;
          this.c[ctx.base + EndpointCounter.delivery_expired]++;
          this.complete(m, MxStatus.NO_RESOURCES, ErrorReason.HoldExpired);
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
          ctx.dqKey[t] = ctx.dqKey[s];
          ctx.dqBlock[t] = ctx.dqBlock[s];
        }
        kept++;
      }
      ctx.dqCount = kept;
    }
  }
}

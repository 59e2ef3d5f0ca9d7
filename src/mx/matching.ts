/**
 * Matching (the matching half of Open-MX's omx_recv.c): MX matches in the receiving
 * library. Posted receives wait in posting order; messages that arrive before a receive
 * for them wait in arrival order (unexpected); a pair's messages are matched in the order
 * they were sent, whichever way each came — a record ahead of its turn is held on its
 * partner until the ones before it arrive.
 *
 * Every path hands a record over as one InboundRecord (`deliver`); matching consumes it at
 * once, or keeps a copy (the eager payload copied out). A matched eager message is copied
 * into the receive and answered (NOTIFY) if the sender waits; a matched rendezvous is
 * fetched by the record's puller — the NIC, or the sender over Ethernet.
 */
import { MxStatus } from "../nic/status.js";
import { copyBytes } from "../xen/copy.js";
import { formatBytes } from "../xen/units.js";
import type { Completion } from "./completion.js";
import type { PartnerTable } from "./partner.js";
import { FLAG_TRACED, TraceStage, traceId, traceNow } from "./trace.js";
import {
  type EndpointContext,
  type InboundRecord,
  type KeptRecord,
  type MxRequest,
  MxStatusInfo,
  type Partner,
  type PeerAccount,
  type PeerLossListener,
  RequestState,
  seqAfter,
  seqAhead,
  seqLaterEpoch,
} from "./types.js";
import { UnexpectedQueue } from "./unexpected.js";

/** Records held back because an earlier one of the same peer has not arrived yet, at most. */
export const MAX_HELD = 4096;

/**
 * Bytes an endpoint keeps, at most, by default: copies of messages no receive was posted for,
 * and of records held ahead of their turn (each also costs KEPT_RECORD_COST). Past it the peer
 * address that sent the most of them (over all its connections and sessions: PeerAccount) is
 * failed and what it sent dropped, as Cray MPICH aborts past MPICH_UNEX_BUFFER_SIZE:
 * a peer that floods messages nobody asked for (or numbers them out of order) cannot take
 * the receiver's memory (its typed arrays count against its domain's limit, and the domain
 * would be stopped). EndpointOptions.maxUnexpectedBytes changes it.
 */
export const DEFAULT_MAX_UNEXPECTED_BYTES = 64 << 20;
/**
 * What a kept record costs besides its payload (the record object in the receiver's heap): a
 * rendezvous announcement, which keeps no payload, counts this much, so that a flood of them
 * is bounded too.
 */
export const KEPT_RECORD_COST = 512;

const u32 = (n: number) => n >>> 0;

/** Removes element `i`, keeping the order; unlike splice, allocates nothing (a hot path does it per message). */
function removeAt<T>(list: T[], i: number): void {
  if (i === 0) {
    list.shift();
    return;
  }
  for (let k = i + 1; k < list.length; k++) list[k - 1] = list[k];
  list.length--;
}

export class Matching implements PeerLossListener {
  /** Receives not matched yet, in posting order. */
  private readonly posted: MxRequest[] = [];
  /** Messages that arrived before a receive for them, in arrival order (indexed by match value). */
  private readonly unexpected: UnexpectedQueue;
  /**
   * Bytes kept (in `unexpected` and in the peers' `held`, KEPT_RECORD_COST each besides the
   * payload), in all; by sender in each address's PeerAccount, not per Partner: a peer that
   * reconnected (a new Partner) or reopened its endpoint (a new session) is the same sender,
   * and what a gone connection left counts for it until it is received or dropped. (Counted
   * per Partner, a peer flooding in rounds, each on a fresh connection smaller than what an
   * honest peer had waiting, got the honest peer failed once the rounds passed the limit.)
   */
  private keptBytes = 0;
  /**
   * Rendezvous announcements waiting as unexpected, by sender: a lost peer's are removed one
   * by one (UnexpectedQueue.remove), never by walking the queue (a peer keeping 130,000 eager
   * messages and one rendezvous, then reconnecting in a loop, made every loss walk them all).
   */
  private readonly rndvKept = new Map<Partner, Set<KeptRecord>>();

  constructor(
    private readonly ctx: EndpointContext,
    private readonly completion: Completion,
    private readonly partners: PartnerTable,
    private readonly maxUnexpectedBytes = DEFAULT_MAX_UNEXPECTED_BYTES,
  ) {
    this.unexpected = new UnexpectedQueue(ctx.counters);
    partners.onReplaced = (old, p) => this.replaced(old, p);
  }

  /**
   * mx_irecv's matching: the first unexpected message that fits, else the receive is posted.
   * (Messages still in a channel are matched against the posted queue, this receive
   * included, when progress reads them: same result.)
   */
  post(req: MxRequest): void {
    const u = this.unexpected.find(req.matchHi, req.matchLo, req.matchMaskHi, req.matchMaskLo, true);
    if (u !== undefined) {
      this.uncount(u);
      this.deliverUnexpected(req, u);
      return;
    }
    req.state = RequestState.Posted;
    this.posted.push(req);
  }

  /** Match values the unexpected queue indexes now (kept, or emptied lately): for inspection and tests. */
  get unexpectedValues(): number {
    return this.unexpected.matchValues;
  }

  /** An EAGER or RNDV record from `peer`: matched in its pair's sequence order. */
  deliver(peer: Partner, rec: InboundRecord): void {
    if (rec.seq !== peer.recvSeq) {
      this.hold(peer, rec);
      return;
    }
    peer.recvSeq = seqAfter(rec.seq);
    this.match(peer, rec);
    if (peer.held !== undefined && peer.held.length > 0) this.releaseHeld(peer);
  }

  /**
   * The first piece of an eager message that comes in pieces (records.ts FLAG_PIECES): the
   * posted receive it matches, taken now so the pieces are copied straight into it, if it is
   * this pair's turn; else undefined, and the path delivers the message whole once assembled.
   */
  claim(peer: Partner, rec: InboundRecord): MxRequest | undefined {
    if (rec.seq !== peer.recvSeq || (peer.held !== undefined && peer.held.length > 0)) return undefined;
    const r = this.takePosted(peer, rec);
    if (r === undefined) return undefined;
    r.traceId = this.seen(peer, rec);
    peer.recvSeq = seqAfter(rec.seq);
    return r;
  }

  /** mx_iprobe's lookup: the status of the first unexpected message that fits, without taking it. */
  probe(mh: number, ml: number, mmh: number, mml: number): MxStatusInfo | undefined {
    const u = this.unexpected.find(u32(mh), u32(ml), u32(mmh), u32(mml), false);
    if (u === undefined) return undefined;
    const s = new MxStatusInfo();
    s.code = MxStatus.SUCCESS;
    s.source = u.source.address;
    s.matchHi = u.matchHi;
    s.matchLo = u.matchLo;
    s.msgLength = u.length;
    s.xferLength = u.length;
    return s;
  }

  /** mx_cancel of a receive: true if it was still posted (it completes CANCELLED). */
  cancel(req: MxRequest): boolean {
    if (req.state !== RequestState.Posted) return false;
    const i = this.posted.indexOf(req);
    if (i < 0) return false;
    this.posted.splice(i, 1);
    this.completion.complete(req, MxStatus.CANCELLED, 0);
    return true;
  }

  /** The endpoint closes: every posted receive completes with `code`. */
  closePosted(code: number): void {
    for (const r of this.posted.splice(0)) this.completion.complete(r, code, 0);
  }

  /** A failed peer's rendezvous announcements go: their data cannot be pulled any more. */
  peerLost(peer: Partner): void {
    const rndvs = this.rndvKept.get(peer);
    if (rndvs !== undefined)
      for (const k of [...rndvs]) {
        this.unexpected.remove(k);
        this.uncount(k);
      }
    // Held records of the address's own partner wait for its next partner of the same session
    // (PartnerTable.add hands them over): what they wait for may still come another way (the
    // NIC's queue is read after the channels), and matched now they came out of order. A held
    // rendezvous's data cannot be fetched any more: its turn passes with nothing matched.
    if (this.partners.get(peer.nic, peer.endpoint) === peer) {
      // (Still counted, as every held record is, until its turn passes or it is dropped.)
      for (const h of [...(peer.held ?? []), ...(peer.prev?.held ?? [])]) if (h.rndv) h.tomb = true;
      return;
    }
    // A partner of its own (a gone incarnation's closed channel, read once): nothing more comes.
    this.flushHeld(peer);
  }

  /**
   * `old`, a failed partner, is replaced by `p`: of the same session, its held records (and its
   * previous connection's) are `p`'s now, as its sequence numbers are; else they are matched
   * now, in their order (their senders saw them sent).
   */
  replaced(old: Partner, p: Partner): void {
    if (old.session === p.session) {
      p.held = old.held;
      p.prev = old.prev;
      old.held = undefined;
      old.prev = undefined;
    } else this.flushHeld(old);
  }

  private hold(peer: Partner, rec: InboundRecord): void {
    if (rec.seq >>> 16 !== peer.recvSeq >>> 16) {
      if (seqLaterEpoch(rec.seq, peer.recvSeq)) {
        // The peer connected anew: this connection becomes the previous one (its late
        // messages keep their order), one older than that is over, and the new one starts at 0.
        this.flushPrev(peer);
        peer.prev = { seq: peer.recvSeq, held: peer.held ?? [] };
        peer.held = undefined;
        peer.recvSeq = rec.seq & -0x10000;
        this.deliver(peer, rec);
      } else if (peer.prev !== undefined && rec.seq >>> 16 === peer.prev.seq >>> 16) {
        this.holdPrev(peer, peer.prev, rec);
      } else {
        // A message of an earlier connection read after a later one's (it came another way,
        // or was left in a closed channel): its sender saw it sent, so it is matched now.
        this.match(peer, rec);
      }
      return;
    }
    const n = peer.held?.length ?? 0;
    // Behind us: a duplicate, which no path of ours produces. A peer that runs far ahead is broken.
    if (seqAhead(rec.seq, peer.recvSeq) < 0 || n >= MAX_HELD) {
      this.ctx.counters.channelErrors++;
      if (n >= MAX_HELD)
        this.partners.fail(peer, "the peer's sequence numbers ran away", MxStatus.ENDPOINT_UNREACHABLE);
      return;
    }
    this.ctx.counters.held++;
    this.insertHeld((peer.held ??= []), rec.keep(peer, 0));
  }

  /** A late message of the peer's previous connection: matched in that connection's order. */
  private holdPrev(peer: Partner, prev: { seq: number; held: KeptRecord[] }, rec: InboundRecord): void {
    const ahead = seqAhead(rec.seq, prev.seq);
    if (ahead < 0 || (ahead > 0 && prev.held.length >= MAX_HELD)) {
      this.ctx.counters.channelErrors++;
      return;
    }
    if (ahead > 0) {
      this.ctx.counters.held++;
      this.insertHeld(prev.held, rec.keep(peer, 0));
      return;
    }
    prev.seq = seqAfter(rec.seq);
    this.match(peer, rec);
    // Matching it may have failed the peer for keeping too much (overflow: its held dropped).
    if (peer.prev === prev) this.releaseFrom(peer, prev.held, prev);
  }

  private insertHeld(held: KeptRecord[], h: KeptRecord): void {
    let i = held.length;
    while (i > 0 && seqAhead(held[i - 1].seq, h.seq) > 0) i--;
    held.splice(i, 0, h);
    this.count(h, 1);
  }

  private releaseHeld(peer: Partner): void {
    const held = peer.held;
    if (held === undefined) return;
    const at = { seq: peer.recvSeq };
    this.releaseFrom(peer, held, at);
    peer.recvSeq = at.seq;
  }

  /**
   * Matches `held`'s records from `at.seq` on while each is the next (a tomb's turn passes).
   * A match that overflows drops the peer's held records in place (dropHeld): the loop ends.
   */
  private releaseFrom(peer: Partner, held: KeptRecord[], at: { seq: number }): void {
    while (held.length > 0 && held[0].seq === at.seq) {
      const h = held[0];
      held.shift();
      at.seq = seqAfter(h.seq);
      this.count(h, -1);
      if (!h.tomb) this.match(peer, h);
    }
  }

  /** The peer's previous connection is over: what it holds is matched now, in its order (gaps and all). */
  private flushPrev(peer: Partner): void {
    const prev = peer.prev;
    peer.prev = undefined;
    if (prev !== undefined) this.flushList(peer, prev.held);
  }

  /** What `peer` holds, of both connections, is matched now, in order; rendezvous are dropped. */
  private flushHeld(peer: Partner): void {
    this.flushPrev(peer);
    const held = peer.held;
    peer.held = undefined;
    if (held !== undefined) this.flushList(peer, held);
  }

  private flushList(peer: Partner, held: KeptRecord[]): void {
    for (const h of held) {
      this.count(h, -1);
      if (!h.rndv) this.match(peer, h);
    }
  }

  /**
   * The record's turn: the first posted receive that fits takes it, else it waits as
   * unexpected. A path refills its one record per record it reads, and answering the sender
   * may progress (a full lane is waited out): what is needed of `rec` is read first.
   */
  private match(peer: Partner, rec: InboundRecord): void {
    const tid = this.seen(peer, rec);
    const r = this.takePosted(peer, rec);
    if (r === undefined) {
      this.ctx.counters.unexpected++;
      const kept = rec.keep(peer, tid);
      this.unexpected.push(kept);
      this.countRndv(kept, 1);
      this.count(kept, 1);
      return;
    }
    r.traceId = tid;
    if (rec.rndv) {
      this.pull(r, peer, rec);
      return;
    }
    const length = rec.length;
    const syncId = rec.syncId;
    const xfer = Math.min(length, r.buffer.length);
    if (xfer > 0 && rec.bytes !== null) copyBytes(r.buffer, 0, rec.bytes, rec.payload, xfer);
    const tb = this.ctx.trace;
    if (tid !== 0 && tb !== undefined) tb.record(tid, TraceStage.Copied, traceNow());
    if (syncId !== 0) peer.notify(syncId, xfer, MxStatus.SUCCESS);
    this.completion.complete(r, xfer < length ? MxStatus.TRUNCATED : MxStatus.SUCCESS, xfer);
  }

  /** The trace id of `rec` from `peer` if the sender traced it (stamped seen now), else 0. */
  private seen(peer: Partner, rec: InboundRecord): number {
    const tb = this.ctx.trace;
    if (tb === undefined || (rec.flags & FLAG_TRACED) === 0) return 0;
    const tid = traceId(peer.nic, peer.endpoint, rec.traceSeq);
    tb.record(tid, TraceStage.Seen, traceNow());
    return tid;
  }

  /** The first posted receive `rec` fits, taken out and told what matched it; undefined if none. */
  private takePosted(peer: Partner, rec: InboundRecord): MxRequest | undefined {
    const mh = rec.matchHi;
    const ml = rec.matchLo;
    const posted = this.posted;
    for (let i = 0; i < posted.length; i++) {
      const r = posted[i];
      if ((mh & r.matchMaskHi) >>> 0 !== r.matchHi || (ml & r.matchMaskLo) >>> 0 !== r.matchLo) continue;
      removeAt(posted, i);
      r.source = peer.address;
      r.matchHi = mh;
      r.matchLo = ml;
      r.msgLength = rec.length;
      return r;
    }
    return undefined;
  }

  /** A kept record came (`sign` 1) or went (-1): what it holds counts, or no longer. */
  private count(k: KeptRecord, sign: 1 | -1): void {
    const n = sign * ((k.bytes === null ? 0 : k.length) + KEPT_RECORD_COST);
    this.keptBytes += n;
    k.source.account.kept += n;
    if (sign > 0 && this.keptBytes > this.maxUnexpectedBytes) this.overflow();
  }

  /** A rendezvous announcement came into (1) or left (-1) the unexpected queue. */
  private countRndv(k: KeptRecord, sign: 1 | -1): void {
    if (!k.rndv) return;
    let kept = this.rndvKept.get(k.source);
    if (sign > 0) {
      if (kept === undefined) this.rndvKept.set(k.source, (kept = new Set()));
      kept.add(k);
    } else if (kept?.delete(k) && kept.size === 0) this.rndvKept.delete(k.source);
  }

  /** An unexpected record taken or dropped: it counts no longer. */
  private uncount(k: KeptRecord): void {
    this.count(k, -1);
    this.countRndv(k, -1);
  }

  /** Drops what `peer` holds, emptying the arrays in place: a release walking one stops. */
  private dropHeld(peer: Partner): void {
    for (const held of [peer.held, peer.prev?.held]) {
      if (held === undefined) continue;
      for (const h of held) this.count(h, -1);
      held.length = 0;
    }
    peer.held = undefined;
    peer.prev = undefined;
  }

  /**
   * More kept than the endpoint may keep: the peer address that sent the most of it, over all
   * its connections and sessions, is failed (its live partner's sends and this endpoint's
   * receives from it complete ENDPOINT_UNREACHABLE, saying why; its newest session is refused
   * through the NIC) and everything it sent is dropped, what its gone connections left too.
   * Honest peers keep what they sent. Rare (each frees all the biggest sender kept), so it
   * may walk every address known here.
   */
  private overflow(): void {
    let worst: PeerAccount | undefined;
    let most = 0;
    for (const a of this.partners.accounts())
      if (a.kept > most) {
        worst = a;
        most = a.kept;
      }
    if (worst === undefined) return;
    const w = worst;
    this.unexpected.removeWhere(
      (k) => k.source.account === w,
      (k) => this.uncount(k),
    );
    // The newest partner of the address: the live one, if it has one (a gone one's held records went with it).
    const newest = this.partners.get(w.nic, w.endpoint);
    this.ctx.counters.unexpectedOverflows++;
    if (newest === undefined) return;
    newest.refused = true;
    // (A gone one keeps its held records for the address's next partner: they go too.)
    this.dropHeld(newest);
    if (newest.dead !== undefined) return;
    this.partners.fail(
      newest,
      `it sent ${formatBytes(most)} of messages this endpoint had to keep (no receive posted for them, or ahead of their turn; its earlier connections to this endpoint included), over its limit of ${formatBytes(this.maxUnexpectedBytes)} (maxUnexpectedBytes)`,
      MxStatus.ENDPOINT_UNREACHABLE,
    );
  }

  private deliverUnexpected(req: MxRequest, u: KeptRecord): void {
    req.source = u.source.address;
    req.matchHi = u.matchHi;
    req.matchLo = u.matchLo;
    req.msgLength = u.length;
    req.traceId = u.traceId;
    if (u.rndv) {
      this.pull(req, u.source, u);
      return;
    }
    const xfer = Math.min(u.length, req.buffer.length);
    if (xfer > 0 && u.bytes !== null) copyBytes(req.buffer, 0, u.bytes, 0, xfer);
    const tb = this.ctx.trace;
    if (u.traceId !== 0 && tb !== undefined) tb.record(u.traceId, TraceStage.Copied, traceNow());
    if (u.syncId !== 0) u.source.notify(u.syncId, xfer, MxStatus.SUCCESS);
    this.completion.complete(req, xfer < u.length ? MxStatus.TRUNCATED : MxStatus.SUCCESS, xfer);
  }

  /** A matched rendezvous: nothing to move (answered at once), or its puller fetches the data. */
  private pull(req: MxRequest, source: Partner, rec: InboundRecord): void {
    const length = rec.length;
    const xfer = Math.min(length, req.buffer.length);
    if (xfer === 0) {
      source.notify(rec.syncId, 0, MxStatus.SUCCESS);
      this.completion.complete(req, length > 0 ? MxStatus.TRUNCATED : MxStatus.SUCCESS, 0);
      return;
    }
    req.state = RequestState.Pulling;
    rec.puller.startPull(req, source, rec, xfer);
  }
}

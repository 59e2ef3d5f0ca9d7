/**
 * The peer table (Open-MX's omx_partner.c): every peer endpoint this endpoint knows — it
 * connected to it, or the peer reached us first — by (nic, endpoint), which way each is
 * reached (`route`), and what happens when one fails (`fail`).
 *
 * A peer that fails is kept in the index, dead: connecting to the same endpoint again
 * continues the pair's sequence numbers (over the NIC or Ethernet the peer may never learn
 * of an mx_disconnect), unless the pair had a channel: its death is seen by both sides, and
 * both start again from 0 (what the old channel still held cannot leave the new connection
 * waiting for it). A reopened endpoint (another session) is a new partner. Every partner of
 * an address shares its PeerAccount: what the address made this endpoint keep, whichever of
 * its connections sent it (matching.ts fails the address, not a connection). Everything
 * waiting on a failed peer completes with an error status and the reason; the parts that
 * hold something of it (PeerLossListener) let go.
 */
import { MxStatus } from "../nic/status.js";
import type { Completion } from "./completion.js";
import {
  kPartner,
  MxAddress,
  Partner,
  type PeerAccount,
  type PeerLossListener,
  type PeerPath,
  seqNextEpoch,
} from "./types.js";

export class PartnerTable {
  /** Live partners first polled in this order; dead ones are swept out by `compact`. */
  readonly list: Partner[] = [];
  private readonly index = new Map<string, Partner>();
  /** Partners in `list` that died since it was last compacted. */
  private deadCount = 0;
  private readonly listeners: PeerLossListener[] = [];
  /** Told when a failed partner's address gets a new one (matching.ts replaced: its held records). */
  onReplaced: ((old: Partner, p: Partner) => void) | undefined = undefined;
  /** The endpoint is on the split path: every peer whose MAC is known is reached over Ethernet. */
  split = false;
  /** Some peer's fast way is the NIC: its records arrive as events, so the queue is polled on every progress. */
  usesNic = false;

  constructor(private readonly completion: Completion) {}

  /** The partner known for (nic, endpoint), live or dead. */
  get(nic: number, endpoint: number): Partner | undefined {
    return this.index.get(`${nic}:${endpoint}`);
  }

  /** The partner behind an address connected on this endpoint, else undefined. */
  of(addr: unknown): Partner | undefined {
    if (!(addr instanceof MxAddress)) return undefined;
    const p = addr[kPartner];
    return p.owner === this ? p : undefined;
  }

  /**
   * The live partner for (nic, endpoint), or a new one. A dead one of the same session (after
   * mx_disconnect, ours or the peer's) leaves it where the peer's messages were, and our
   * messages start the next connection (types.ts seqNextEpoch).
   */
  add(nic: number, endpoint: number, session: number): Partner {
    const k = `${nic}:${endpoint}`;
    const old = this.index.get(k);
    if (old && old.dead === undefined) return old;
    // One account per address, whatever its connections and sessions (matching.ts's limit).
    const p = new Partner(this, nic, endpoint, session, old?.account);
    if (old && old.session === session) {
      p.sendSeq = seqNextEpoch(old.sendSeq);
      p.recvSeq = old.recvSeq;
    }
    if (old) this.onReplaced?.(old, p);
    p.lastNews = performance.now();
    this.list.push(p);
    this.index.set(k, p);
    return p;
  }

  /**
   * A partner for a gone incarnation of (nic, endpoint) while another one is live: not
   * indexed (the live one stays the address's), sharing the address's account. Only to take
   * what the gone one left in a channel (channel-path.ts Channels.takeClosed), then failed.
   */
  passing(nic: number, endpoint: number, session: number): Partner {
    const p = new Partner(this, nic, endpoint, session, this.index.get(`${nic}:${endpoint}`)?.account);
    p.lastNews = performance.now();
    this.list.push(p);
    return p;
  }

  /**
   * Forgets failed `peer`, whose endpoint is known closed (its incarnation never connects
   * again): its address is no longer indexed, unless what it sent is still kept here (its
   * account). The program's MxAddress still names it, dead.
   */
  forget(peer: Partner): void {
    const k = `${peer.nic}:${peer.endpoint}`;
    if (peer.dead !== undefined && this.index.get(k) === peer && peer.account.kept === 0)
      this.index.delete(k);
  }

  /** One account per address ever known here (the newest partner of each holds it). */
  *accounts(): IterableIterator<PeerAccount> {
    for (const p of this.index.values()) yield p.account;
  }

  /** Live partners. */
  live(): Partner[] {
    return this.list.filter((p) => p.dead === undefined);
  }

  /** Drops dead partners from the poll list (a survivor of many peers stays fast). */
  compact(): void {
    if (this.deadCount === 0) return;
    let n = 0;
    for (const p of this.list) if (p.dead === undefined) this.list[n++] = p;
    this.list.length = n;
    this.deadCount = 0;
  }

  /**
   * Chooses the way sends to `peer` go: Ethernet if either side is on the split path (and the
   * MAC is known), or if the peer has no fast way; else the fast way. (A split-only peer whose
   * PATH frame said "not split" left the pair no way at all: sends waiting in the backlog
   * stayed there for ever while it kept acknowledging.)
   */
  route(peer: Partner): void {
    const ether = peer.ether;
    peer.path =
      ether !== undefined && (this.split || peer.peerSplit || peer.fast === undefined) ? ether : peer.fast;
  }

  /** The fast way to `peer`, if it has none yet (a channel, once attached, stays it). */
  setFast(peer: Partner, path: PeerPath): void {
    peer.fast ??= path;
    this.route(peer);
  }

  /** Sends that waited for room go to the peer's path, in order, while it takes them; true if any went. */
  flush(peer: Partner): boolean {
    const path = peer.path;
    if (path === undefined) return false;
    const backlog = peer.backlog;
    let sent = false;
    while (backlog.length > 0) {
      if (!path.trySend(backlog[0])) return sent;
      backlog.shift();
      sent = true;
    }
    return sent;
  }

  /**
   * A record or connect of `peer`'s next session came (its endpoint was reopened; its
   * DISCONNECT may never have come: myrback writes none to a full queue): what the old
   * incarnation left in its channel is taken first (its sends completed), then it is failed.
   */
  reopened(peer: Partner): void {
    peer.channel?.drain();
    this.fail(peer, "the peer endpoint was reopened", MxStatus.ENDPOINT_CLOSED);
  }

  /** `l` is told of every peer that fails, in the order listeners were added. */
  onPeerLost(l: PeerLossListener): void {
    this.listeners.push(l);
  }

  /** A peer is gone: everything waiting on it completes with `code` and the reason; nothing hangs. */
  fail(peer: Partner, why: string, code: number): void {
    if (peer.dead !== undefined) return;
    peer.dead = why;
    this.deadCount++;
    for (const r of peer.backlog.splice(0)) {
      r.reason ??= why;
      this.completion.complete(r, code, 0);
    }
    for (const l of this.listeners) l.peerLost(peer, why, code);
    // A survivor keeps nothing of a peer that went away: its channel is unmapped.
    peer.channel?.release(code);
  }
}

/**
 * The memory dom0 shares with guests: window slots per domain, channel buffers per domain
 * pair, pooled response pages — and the lifetime rule they keep (below). Its own file because
 * that rule is the security boundary of myrback's memory (the registry decides *who* gets an
 * endpoint or a channel, this file decides *which memory* and when it may be reused). Imports
 * the grant keeper and the stats page only.
 */

import { INTR_BYTES, WINDOW_BYTES } from "../../nic/window.js";
import { type DomId, PAGE_SIZE } from "../../xen/abi.js";
import type { Guest } from "../../xen/guest/guest.js";
import type { PageRun } from "../../xen/memory.js";
import { CHANNEL_BYTES, LANE_POLICY_BYTES, readAttached } from "../channel-abi.js";
import { MyriError } from "../protocol.js";
import type { GrantKeeper } from "./grant-keeper.js";
import { Stat } from "./stats.js";

/**
 * The memory dom0 shares with guests, and the rule it keeps: memory a guest could once reach
 * is never given to another domain while that guest lives (a SharedArrayBuffer handed to a
 * thread can never be taken back; see xen/hypervisor/domain-record.ts, Segment). So:
 *  - an endpoint's window and interrupt page are a *slot* of its owner domain, granted to it
 *    once and reused only for that domain's later endpoints (at most its endpoint quota);
 *    a co-resident peer that connects is granted the interrupt page too (to wake the owner).
 *    When the slot serves the owner's next endpoint, peers that no longer map the page lose
 *    their grant, and if one still maps it (it never let go), the slot gets a fresh
 *    interrupt page and a new id: the next peers are never granted a page a former peer
 *    still reaches (recall);
 *  - a channel's buffer belongs to its pair of domains, granted to both once and reused only
 *    for a later channel of the same pair, once neither maps it any more (at most
 *    CHANNELS_PER_PAIR per pair, CHANNELS_PER_DOMAIN per member domain across its pairs, and
 *    CHANNEL_GRANT_SHARE of dom0's grant table in all: beyond, the pair talks through the
 *    NIC, and endpoints still open); with it, one
 *    lane policy page per member domain, shared with and granted to that member alone (its
 *    peer can never write the limits it is held to: channel-abi.ts);
 *  - all of it is released (the hypervisor forgets its frames) when a member domain goes.
 * Response pages are mapped read-only (copies through the hypervisor, re-checked on every
 * read), so one may serve anyone once its grant has ended.
 */
export interface WindowSlot {
  /** Nonzero, unique in this backend: the frontend may keep its mappings of a slot it knows. */
  id: number;
  window: PageRun;
  intr: PageRun;
  /** Grants to the owner: the window's pages, then the interrupt page's. */
  refs: number[];
  /** Grants of the interrupt page to co-resident peers, by domain. */
  peerRefs: Map<DomId, number[]>;
  /**
   * The id this slot had until this take gave it a fresh interrupt page (0: none): the
   * frontend drops its mappings of that id (protocol.ts, OPEN_ENDPOINT v5).
   */
  replaced: number;
}

export interface ChannelMem {
  run: PageRun;
  /** "a:b", the two member domains (a ≤ b). */
  pair: string;
  /** The member domains (one when both ends are one domain). */
  members: DomId[];
  /** Grants of the buffer to each member domain (one entry when both ends are one domain). */
  refs: Map<DomId, number[]>;
  /** Each member domain's lane policy page (channel-abi.ts), shared with that domain only. */
  policy: Map<DomId, PageRun>;
  /** Grants of each member's policy page, to that member. */
  policyRefs: Map<DomId, number[]>;
  /**
   * The channel's members it was handed to ("domid:side"): its id, and whether that member's
   * endpoint is gone. The memory serves no next channel before each has said it mapped it
   * (channel-abi.ts Attached) or is gone: a member that had the answer but had not mapped yet
   * held no mapping, so the buffer was reused, zeroed, for the pair's next channel, and the
   * member read that one as its own (what it was sent was lost, each send SUCCESS).
   */
  handed: Map<string, { domid: DomId; side: 0 | 1; channelId: number; gone: () => boolean }>;
}

/** How often closed channels whose members have yet to map them are looked at again (ms). */
const AWAIT_MAP_MS = 20;

/** Channel buffers one pair of domains may hold at once (in use or waiting to be unmapped): 16 MiB. */
export const CHANNELS_PER_PAIR = 8;
/**
 * Channel buffers one domain may be a member of at once, across all its pairs (in use, waiting
 * to be unmapped, or free for its pair's next channel): a domain that keeps its old channels
 * mapped and reconnects to many peers held 16 per peer, and a few colluding domains filled
 * dom0's grant table. An honest domain holds about one per co-resident peer. A sixth of what
 * the default host holds (95 buffers of 2 MiB): since lanes grew to a MiB, 32 let two
 * colluding guests take every channel on the host (a reviewer's PoC), and every other pair
 * talked through the NIC while they lived.
 */
export const CHANNELS_PER_DOMAIN = 16;
/**
 * The part of dom0's grant table channel buffers may take in all (each grants its
 * CHANNEL_BYTES / PAGE_SIZE pages, 514, and a policy page to each member): the rest stays for
 * endpoint windows, so guests still open endpoints however many channels others hold.
 */
export const CHANNEL_GRANT_SHARE = 0.75;
/**
 * Interrupt pages a live domain may hold after they were replaced (recall): a peer that keeps
 * the page it was granted, and whose owner reopens, holds one page more each time, for life —
 * a colluding pair reopening and reconnecting in a loop grew dom0's memory by a page each
 * round, without bound. Past this many, the domain's new channels are refused (its connects
 * talk through the NIC, which needs no page of anyone's) until it goes.
 */
export const STALE_INTR_PAGES_PER_DOMAIN = 64;

const WINDOW_PAGES = WINDOW_BYTES / PAGE_SIZE;
const INTR_PAGES = INTR_BYTES / PAGE_SIZE;
const CHANNEL_PAGES = CHANNEL_BYTES / PAGE_SIZE;

export function pairKey(a: DomId, b: DomId): string {
  return a <= b ? `${a}:${b}` : `${b}:${a}`;
}

export class SharedMemory {
  /** Free window slots per domain. */
  private readonly slots = new Map<DomId, WindowSlot[]>();
  /** Per domain pair: free channel buffers, and how many exist. */
  private readonly channels = new Map<string, { free: ChannelMem[]; count: number }>();
  /** Closed channels waiting for a member handed them to map them (putChannel). */
  private readonly awaitingMap = new Set<ChannelMem>();
  private mapTimer: NodeJS.Timeout | undefined;
  /**
   * Per co-resident peer domain, the slots (free or in use) whose interrupt page is granted to
   * it. Those grants end when the peer goes: kept until the slot's owner went, one grant per
   * peer that ever connected piled up in dom0's table, and each held the dead peer's domain id
   * back from reuse (allocDomid) — a long-lived guest many peers connect to used both up.
   */
  private readonly peerSlots = new Map<DomId, Set<WindowSlot>>();
  /** Per live domain, the replaced interrupt pages it was granted and may still hold (pages). */
  private readonly staleIntr = new Map<DomId, number>();
  /** Response pages whose grant has ended. */
  private readonly rspFree: PageRun[] = [];
  /** Channel buffers dom0 holds, in all and per member domain. */
  private channelBuffers = 0;
  private readonly buffersOf = new Map<DomId, number>();
  private nextSlotId = 1;

  constructor(
    private readonly guest: Guest,
    private readonly keeper: GrantKeeper,
    private readonly stats: Int32Array,
  ) {}

  private alloc(pages: number, audience: DomId[]): PageRun {
    try {
      return this.guest.allocShared(pages, { audience });
    } catch (e) {
      throw new MyriError(
        "MX_NO_RESOURCES",
        `the driver domain cannot share more pages (${(e as Error).message}); close endpoints or channels`,
      );
    }
  }

  private release(run: PageRun): void {
    try {
      this.guest.releaseShared(run);
    } catch {
      // already gone with its owner
    }
  }

  /** A window and interrupt page for an endpoint of `domid`: one it had before, or new ones. */
  takeSlot(domid: DomId): WindowSlot {
    const free = this.slots.get(domid);
    const reused = free?.pop();
    if (reused) {
      try {
        this.recall(domid, reused);
      } catch (e) {
        free?.push(reused);
        throw e;
      }
      return reused;
    }
    const window = this.alloc(WINDOW_PAGES, [domid]);
    let intr: PageRun;
    try {
      intr = this.alloc(INTR_PAGES, [domid]);
    } catch (e) {
      this.release(window);
      throw e;
    }
    let refs: number[];
    try {
      refs = [...this.keeper.grantRun(domid, window.pfn, window.count, false)];
      try {
        refs.push(...this.keeper.grantRun(domid, intr.pfn, intr.count, false));
      } catch (e) {
        this.keeper.end(refs);
        throw e;
      }
    } catch (e) {
      this.release(window);
      this.release(intr);
      throw e;
    }
    this.publish();
    return { id: this.newSlotId(), window, intr, refs, peerRefs: new Map(), replaced: 0 };
  }

  private newSlotId(): number {
    const id = this.nextSlotId;
    this.nextSlotId = (this.nextSlotId % 0x7fffffff) + 1;
    return id;
  }

  /**
   * `slot` serves its owner's next endpoint: if its interrupt page was granted to a peer (one
   * still alive), the page is given up (it stays that peer's, and no one else's) and the slot
   * gets a fresh one under a new id; the grants to peers end as each lets go.
   */
  private recall(domid: DomId, slot: WindowSlot): void {
    slot.replaced = 0;
    if (slot.peerRefs.size === 0) return;
    // Unmapped is not let go: a peer that mapped the page holds its buffer for life (a
    // SharedArrayBuffer is never taken back), and the grant's pin bits say only whether it
    // still calls it mapped. Kept on the slot, the page reached the owner's next endpoint and
    // its next peers, written and read by a former peer that had unmapped it as a frontend
    // does. So any live peer's grant means a fresh page (one page per reopen that had peers).
    // The new page first: if dom0 has none to give, the slot is as it was (no grant of it
    // ended, which a retry would end again after dom0 had given the ref to someone else).
    const intr = this.alloc(INTR_PAGES, [domid]);
    let refs: number[];
    try {
      refs = this.keeper.grantRun(domid, intr.pfn, intr.count, false);
    } catch (e) {
      this.release(intr);
      throw e;
    }
    // The owner's grant of the old page ends once its frontend drops that slot id (v5); the
    // peers' as each lets go (end() ends each in one step, or once it is unmapped).
    const ending = [
      ...slot.refs.splice(slot.refs.length - slot.intr.count, slot.intr.count, ...refs),
      ...[...slot.peerRefs.values()].flat(),
    ];
    this.release(slot.intr);
    slot.intr = intr;
    slot.replaced = slot.id;
    slot.id = this.newSlotId();
    Atomics.add(this.stats, Stat.intrPagesReplaced, 1);
    this.keeper.end(ending);
    for (const peer of slot.peerRefs.keys()) {
      this.unindexPeer(peer, slot);
      this.staleIntr.set(peer, (this.staleIntr.get(peer) ?? 0) + slot.intr.count);
    }
    slot.peerRefs.clear();
    this.publish();
  }

  /** The endpoint closed: the slot waits for the same domain's next endpoint. */
  putSlot(domid: DomId, slot: WindowSlot): void {
    let free = this.slots.get(domid);
    if (!free) this.slots.set(domid, (free = []));
    free.push(slot);
  }

  /**
   * Whether a new channel between domains a and b may be made: neither holds
   * STALE_INTR_PAGES_PER_DOMAIN replaced interrupt pages (each member is granted the other's).
   */
  mayShareIntr(a: DomId, b: DomId): boolean {
    return [a, b].every((d) => (this.staleIntr.get(d) ?? 0) < STALE_INTR_PAGES_PER_DOMAIN);
  }

  /** The interrupt page of `slot`, granted to co-resident peer `peer` (once per peer). */
  intrFor(slot: WindowSlot, peer: DomId): number[] {
    let refs = slot.peerRefs.get(peer);
    if (!refs) {
      this.guest.shareWith(slot.intr, peer);
      refs = this.keeper.grantRun(peer, slot.intr.pfn, slot.intr.count, false);
      slot.peerRefs.set(peer, refs);
      let held = this.peerSlots.get(peer);
      if (!held) this.peerSlots.set(peer, (held = new Set()));
      held.add(slot);
    }
    return refs;
  }

  /** A channel buffer for domains a and b, or undefined when the pair holds CHANNELS_PER_PAIR already. */
  takeChannel(a: DomId, b: DomId): ChannelMem | undefined {
    const pair = pairKey(a, b);
    let p = this.channels.get(pair);
    if (!p) this.channels.set(pair, (p = { free: [], count: 0 }));
    const reused = p.free.pop();
    if (reused) {
      reused.run.bytes.fill(0);
      for (const page of reused.policy.values()) page.bytes.fill(0);
      reused.handed.clear();
      return reused;
    }
    if (p.count >= CHANNELS_PER_PAIR) return undefined;
    const members = a === b ? [a] : [a, b];
    // Each member is granted the buffer and its own policy page.
    const perBuffer = 2 * (CHANNEL_PAGES + LANE_POLICY_BYTES / PAGE_SIZE);
    if (
      members.some((d) => (this.buffersOf.get(d) ?? 0) >= CHANNELS_PER_DOMAIN) ||
      (this.channelBuffers + 1) * perBuffer > this.guest.grants.table.size * CHANNEL_GRANT_SHARE
    ) {
      Atomics.add(this.stats, Stat.channelsRefused, 1);
      return undefined;
    }
    const run = this.alloc(CHANNEL_PAGES, members);
    const policy = new Map<DomId, PageRun>();
    try {
      for (const d of members) policy.set(d, this.alloc(LANE_POLICY_BYTES / PAGE_SIZE, [d]));
    } catch (e) {
      this.release(run);
      for (const page of policy.values()) this.release(page);
      throw e;
    }
    p.count++;
    this.channelBuffers++;
    for (const d of members) this.buffersOf.set(d, (this.buffersOf.get(d) ?? 0) + 1);
    this.publish();
    return { run, pair, members, refs: new Map(), policy, policyRefs: new Map(), handed: new Map() };
  }

  /** Member `domid`'s lane policy page, granted to it (once); undefined if it is no member. */
  policyRefsFor(mem: ChannelMem, domid: DomId): number[] | undefined {
    const page = mem.policy.get(domid);
    if (!page) return undefined;
    let refs = mem.policyRefs.get(domid);
    if (!refs) {
      refs = this.keeper.grantRun(domid, page.pfn, page.count, false);
      mem.policyRefs.set(domid, refs);
    }
    return refs;
  }

  /** The buffer granted to member `domid` (once per member). */
  channelRefs(mem: ChannelMem, domid: DomId): number[] {
    let refs = mem.refs.get(domid);
    if (!refs) {
      refs = this.keeper.grantRun(domid, mem.run.pfn, mem.run.count, false);
      mem.refs.set(domid, refs);
    }
    return refs;
  }

  /** Member `domid` was handed the channel as `side` (a connect's or an accept's answer). */
  handTo(mem: ChannelMem, domid: DomId, side: 0 | 1, channelId: number, gone: () => boolean): void {
    mem.handed.set(`${domid}:${side}`, { domid, side, channelId, gone });
  }

  /**
   * The channel closed: once every member handed it has mapped it (or is gone) and neither
   * maps the buffer, it serves the pair's next channel.
   */
  putChannel(mem: ChannelMem): void {
    if (this.notYetMapped(mem)) {
      this.awaitingMap.add(mem);
      this.mapTimer ??= setInterval(() => this.recheckAwaiting(), AWAIT_MAP_MS);
      return;
    }
    this.keeper.whenUnused([...mem.refs.values(), ...mem.policyRefs.values()].flat(), () => {
      const p = this.channels.get(mem.pair);
      if (p) p.free.push(mem);
      else this.dropChannel(mem);
    });
  }

  /** Whether a member handed `mem` has not said it mapped it yet, and is not gone. */
  private notYetMapped(mem: ChannelMem): boolean {
    for (const [k, h] of mem.handed) {
      const page = mem.policy.get(h.domid);
      if (
        h.gone() ||
        page === undefined ||
        readAttached(page.bytes.buffer as SharedArrayBuffer, h.side) === h.channelId
      )
        mem.handed.delete(k);
      else return true;
    }
    return false;
  }

  /** The driver domain stops: nothing waits any more. */
  stop(): void {
    if (this.mapTimer !== undefined) clearInterval(this.mapTimer);
    this.mapTimer = undefined;
    this.awaitingMap.clear();
  }

  private recheckAwaiting(): void {
    for (const mem of [...this.awaitingMap]) {
      if (this.notYetMapped(mem)) continue;
      this.awaitingMap.delete(mem);
      this.putChannel(mem);
    }
    if (this.awaitingMap.size === 0 && this.mapTimer !== undefined) {
      clearInterval(this.mapTimer);
      this.mapTimer = undefined;
    }
  }

  private dropChannel(mem: ChannelMem): void {
    this.keeper.end([...mem.refs.values(), ...mem.policyRefs.values()].flat());
    this.release(mem.run);
    for (const page of mem.policy.values()) this.release(page);
    this.channelBuffers--;
    for (const d of mem.members) {
      const n = (this.buffersOf.get(d) ?? 1) - 1;
      if (n > 0) this.buffersOf.set(d, n);
      else this.buffersOf.delete(d);
    }
    this.publish();
  }

  /**
   * A domain is gone (its mappings went with it): everything it could reach is released —
   * its slots, and every channel buffer of a pair it belonged to. Peers that still map one
   * keep it (their grants end when they unmap); no one else will ever get it.
   */
  forgetDomain(domid: DomId): void {
    for (const slot of this.slots.get(domid) ?? []) {
      this.keeper.end([...slot.refs, ...[...slot.peerRefs.values()].flat()]);
      for (const peer of slot.peerRefs.keys()) this.unindexPeer(peer, slot);
      this.release(slot.window);
      this.release(slot.intr);
    }
    this.slots.delete(domid);
    // The interrupt pages of others' slots granted to it (the grants wait if still mapped).
    for (const slot of this.peerSlots.get(domid) ?? []) {
      const refs = slot.peerRefs.get(domid);
      slot.peerRefs.delete(domid);
      if (refs) this.keeper.end(refs);
    }
    this.peerSlots.delete(domid);
    this.staleIntr.delete(domid);
    for (const [pair, p] of this.channels) {
      const [a, b] = pair.split(":").map(Number);
      if (a !== domid && b !== domid) continue;
      this.channels.delete(pair);
      for (const mem of p.free) this.dropChannel(mem);
    }
    this.publish();
  }

  private unindexPeer(peer: DomId, slot: WindowSlot): void {
    const held = this.peerSlots.get(peer);
    if (!held) return;
    held.delete(slot);
    if (held.size === 0) this.peerSlots.delete(peer);
  }

  takeResponsePage(): PageRun {
    const run = this.rspFree.pop();
    if (run) {
      run.bytes.fill(0);
      return run;
    }
    return this.alloc(1, []);
  }

  putResponsePage(run: PageRun): void {
    this.rspFree.push(run);
  }

  private publish(): void {
    const c = this.guest.counters();
    Atomics.store(this.stats, Stat.sharedPages, c.mem_shared_alloc - c.mem_shared_release);
    Atomics.store(this.stats, Stat.channelBuffers, this.channelBuffers);
  }
}

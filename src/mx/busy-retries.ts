/**
 * Messages a busy receiver refused, waiting to go again (the sender's half of nic/delivery.ts's
 * shared delivery queue). A receiving NIC holds a few of each sending host's (or domain's)
 * messages while its endpoint has no room; past that it answers NO_RESOURCES with
 * ErrorReason.NoResources: nothing was placed. Failing the send would leave a hole in the
 * pair's sequence, and the pair would fail with it; so the NIC path keeps the message's
 * staging slot and sequence number and posts it again (a NOTIFY, its three words).
 *
 * Per peer: one message goes again at a time, after a back-off that doubles from
 * RETRY_FIRST_MS to RETRY_MAX_MS while the receiver keeps refusing; once one is taken, the
 * rest go at once (the receiver's library holds records that come ahead of their turn,
 * matching.ts). A receiver that takes none for HOLD_MS fails the wait, as a delivery its NIC
 * held that long fails (nic/window.ts HOLD_MS): a receiver that does not consume costs its
 * senders an error, never a hang.
 */
import { HOLD_MS } from "../nic/window.js";
import type { Partner } from "./types.js";

/** The first wait before a refused message goes again, ms. */
export const RETRY_FIRST_MS = 0.05;
/** The longest wait between two tries, ms: a receiver busy for seconds is asked ~16 times a second. */
export const RETRY_MAX_MS = 64;
/** A receiver that has taken nothing of ours for this long fails what waits for it. */
export const RETRY_FOR_MS = HOLD_MS;

/** A NOTIFY to send again. */
export interface NotifyWords {
  readonly syncId: number;
  readonly xfer: number;
  readonly status: number;
}

/** What waits for one busy peer. */
export class PeerRetry {
  /** Staging slots of refused messages, in their sequence order. */
  readonly slots: number[] = [];
  /** Their sequence numbers, alongside. */
  readonly seqs: number[] = [];
  readonly notifies: NotifyWords[] = [];
  /** Tries posted whose SEND_DONE has not come yet. */
  out = 0;
  /** When the next try may go. */
  due: number;
  delay = RETRY_FIRST_MS;
  /** Since when the peer has taken nothing of ours (the first refusal, or the last take). */
  since: number;
  /** A try was just taken: everything waiting goes at once. */
  burst = false;

  constructor(now: number) {
    this.since = now;
    this.due = now + RETRY_FIRST_MS;
  }

  get waiting(): number {
    return this.slots.length + this.notifies.length;
  }

  /** Keeps staged message `slot` (sequence `seq`) in its turn. */
  addSlot(slot: number, seq: number): void {
    let i = this.slots.length;
    while (i > 0 && ((this.seqs[i - 1] - seq) | 0) > 0) i--;
    this.slots.splice(i, 0, slot);
    this.seqs.splice(i, 0, seq);
  }

  /** The first waiting message's slot, taken off the list. */
  takeSlot(): number {
    this.seqs.shift();
    return this.slots.shift()!;
  }

  /** The receiver refused again: the next try waits, longer each time it refuses. */
  refused(now: number): void {
    this.burst = false;
    if (now < this.due) return;
    this.due = now + this.delay;
    this.delay = Math.min(this.delay * 2, RETRY_MAX_MS);
  }

  /** The receiver took one: the rest go now. */
  taken(now: number): void {
    this.since = now;
    this.delay = RETRY_FIRST_MS;
    this.due = now;
    this.burst = true;
  }

  /** Whether tries may be posted now. */
  ready(now: number): boolean {
    return this.waiting > 0 && now >= this.due && (this.burst || this.out === 0);
  }

  /** Whether the receiver has refused us for too long. */
  overdue(now: number): boolean {
    return now - this.since >= RETRY_FOR_MS;
  }
}

/** The busy peers of one endpoint. */
export class BusyRetries {
  readonly peers = new Map<Partner, PeerRetry>();

  /** The record of `peer`, made if it has none. */
  of(peer: Partner, now: number): PeerRetry {
    let r = this.peers.get(peer);
    if (r === undefined) this.peers.set(peer, (r = new PeerRetry(now)));
    return r;
  }

  get size(): number {
    return this.peers.size;
  }
}

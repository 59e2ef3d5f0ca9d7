/**
 * An endpoint's unexpected queue: messages that arrived before a receive for them, kept in
 * arrival order, with an index by exact match value.
 *
 * Why the index: MX (and MPI above it) takes the oldest kept message a receive matches. A
 * receive with full masks (every MPI receive naming its source and tag, every collective's)
 * can only match messages with exactly its match value, so it looks at that value's own
 * queue: a peer that keeps thousands of messages nobody asked for waiting here (within the
 * endpoint's maxUnexpectedBytes) no longer makes every honest receive walk past them — 100,000
 * kept records cost each such receive ~0.4 ms when the queue was one list. A receive with a
 * wildcard in its masks (MPI's ANY_SOURCE or ANY_TAG) walks the arrival order, as MX does.
 *
 * Nothing here allocates per message once a match value's queue exists; an emptied queue
 * stays for its value's next message until empties outnumber the live ones (then they go).
 */
import type { EndpointCounters, KeptRecord } from "./types.js";

/** The kept records of one match value, oldest first (linked through `sameNext` and `samePrev`). */
class SameMatch {
  head: KeptRecord | null = null;
  tail: KeptRecord | null = null;
}

export class UnexpectedQueue {
  /** Arrival order, oldest first (linked through `older`/`newer`). */
  private oldest: KeptRecord | null = null;
  private newest: KeptRecord | null = null;
  /** Kept records now. */
  size = 0;
  /** matchHi → matchLo → that value's records. */
  private readonly byMatch = new Map<number, Map<number, SameMatch>>();
  /** Values in byMatch, and how many of them are empty. */
  private values = 0;
  private empties = 0;

  /** Match values indexed now (with records kept, or emptied since the last prune). */
  get matchValues(): number {
    return this.values;
  }

  constructor(private readonly counters: Pick<EndpointCounters, "unexpectedScanned">) {}

  push(k: KeptRecord): void {
    k.newer = null;
    k.older = this.newest;
    if (this.newest === null) this.oldest = k;
    else this.newest.newer = k;
    this.newest = k;
    this.size++;
    this.index(k);
  }

  /** The oldest record that (mh, ml) matches under masks (mmh, mml), or undefined; `take` removes it. */
  find(mh: number, ml: number, mmh: number, mml: number, take: boolean): KeptRecord | undefined {
    if (this.size === 0) return undefined;
    let k: KeptRecord | null;
    // Masks come as u32s or as int32s (a request keeps them so: types.ts); all ones either way.
    if ((mmh | 0) === -1 && (mml | 0) === -1) {
      k = this.sameMatch(mh, ml, false)?.head ?? null;
      if (k !== null) this.counters.unexpectedScanned++;
    } else {
      let looked = 0;
      for (k = this.oldest; k !== null; k = k.newer) {
        looked++;
        if ((k.matchHi & mmh) >>> 0 === mh && (k.matchLo & mml) >>> 0 === ml) break;
      }
      this.counters.unexpectedScanned += looked;
    }
    if (k === null) return undefined;
    // The oldest match is the head of its value's queue: an older record of the same value would match too.
    if (take) this.remove(k);
    return k;
  }

  /** Removes every record `drop` says (a failed peer's): the index is built again, once, if any went. */
  removeWhere(drop: (k: KeptRecord) => boolean, removed: (k: KeptRecord) => void): void {
    let k = this.oldest;
    let any = false;
    while (k !== null) {
      const next = k.newer;
      if (drop(k)) {
        k.sameNext = null;
        k.samePrev = null;
        this.unlink(k);
        removed(k);
        any = true;
      }
      k = next;
    }
    if (!any) return;
    this.byMatch.clear();
    this.values = 0;
    this.empties = 0;
    for (let r = this.oldest; r !== null; r = r.newer) this.index(r);
  }

  /** Appends `k` to its match value's queue. */
  private index(k: KeptRecord): void {
    const q = this.sameMatch(k.matchHi, k.matchLo, true)!;
    if (q.head === null) {
      q.head = k;
      this.empties--;
    } else q.tail!.sameNext = k;
    k.samePrev = q.tail;
    q.tail = k;
    k.sameNext = null;
  }

  /** Every kept record, oldest first. */
  *[Symbol.iterator](): IterableIterator<KeptRecord> {
    for (let k = this.oldest; k !== null; k = k.newer) yield k;
  }

  /**
   * Removes kept record `k`, wherever it is: its value's queue is doubly linked, so a failed
   * peer's rendezvous go one by one (Matching keeps them per peer) without walking the queue —
   * a peer that left one unmatched rendezvous per connection and reconnected made every loss
   * walk and re-index the whole queue (53 ms at 120,000 kept records, per reconnect).
   */
  remove(k: KeptRecord): void {
    const q = this.sameMatch(k.matchHi, k.matchLo, false)!;
    if (k.samePrev === null) q.head = k.sameNext;
    else k.samePrev.sameNext = k.sameNext;
    if (k.sameNext === null) q.tail = k.samePrev;
    else k.sameNext.samePrev = k.samePrev;
    k.sameNext = null;
    k.samePrev = null;
    this.unlink(k);
    if (q.head === null) {
      this.empties++;
      if (this.empties > 64 && this.empties > this.values - this.empties) this.pruneEmpties();
    }
  }

  private unlink(k: KeptRecord): void {
    if (k.older === null) this.oldest = k.newer;
    else k.older.newer = k.newer;
    if (k.newer === null) this.newest = k.older;
    else k.newer.older = k.older;
    k.older = null;
    k.newer = null;
    this.size--;
  }

  private sameMatch(hi: number, lo: number, create: boolean): SameMatch | undefined {
    let his = this.byMatch.get(hi);
    if (his === undefined) {
      if (!create) return undefined;
      his = new Map();
      this.byMatch.set(hi, his);
    }
    let q = his.get(lo);
    if (q === undefined && create) {
      q = new SameMatch();
      his.set(lo, q);
      this.values++;
      this.empties++;
    }
    return q;
  }

  /** Drops the queues of values with nothing kept (values a job used once stay no longer). */
  private pruneEmpties(): void {
    for (const [hi, his] of this.byMatch) {
      for (const [lo, q] of his) if (q.head === null) his.delete(lo);
      if (his.size === 0) this.byMatch.delete(hi);
    }
    this.values -= this.empties;
    this.empties = 0;
  }
}

/**
 * The co-resident channel's lanes (design.md §1: the IVC / XenLoop lineage): the writer and
 * the reader of one single-producer/single-consumer record lane in the channel myrback
 * shares with exactly two endpoints. The layout — lanes, control words, record header — is
 * the ABI in src/myrixen/channel-abi.ts; the meaning of a record's protocol words is the MX
 * library's (records.ts). A message crosses two threads: the sender copies it in, the
 * receiver copies it out.
 *
 * The reader polls the record it expects next, not the lane's tail (Open MPI sm's fast box,
 * Open-MX's shared-memory rings): a record is published by the store of its Size word, made
 * last, so a small message reaches the reader in the cache line it polls (one line crossing
 * the cores per message instead of the tail's and the record's). For that, the writer keeps
 * the word after each record it publishes at zero ("nothing yet"): there is always one free
 * slot (RECORD_SLOT_BYTES) past the lane's content, and a record that wraps is published
 * before the PAD that leads to it. The reader zeroes the Size of what it consumed, so a lane
 * read once never reads as full again. Tail is still published, for the writer's backlog and
 * the host's inspection.
 *
 * The reader treats everything in the lane as hostile: a record whose length or type makes
 * no sense marks the lane `broken` with the reason, and nothing is read past it; no method
 * throws on lane contents. Nothing here allocates per record.
 */
import {
  LANE_BYTES,
  LANE_HEADER_BYTES,
  LaneClosed,
  LaneWord,
  laneOffset,
  RECORD_AUX_WORDS,
  RECORD_HEADER_BYTES,
  RECORD_PAD,
  RecordFlag,
  RecordWord,
} from "../myrixen/channel-abi.js";

const align8 = (n: number) => (n + 7) & ~7;

/** A position's offset in the lane (LANE_BYTES is a power of two; positions may be negative int32s). */
const LANE_MASK = LANE_BYTES - 1;

// Positions (Tail, Head) are kept as int32s, `| 0`: the same 32 bits as the ABI's wrapping u32
// counters, but always a V8 small integer. As u32s (`>>> 0`) they left the small-integer range
// after 2 GiB through a lane: every function touching them deoptimised, the lane objects'
// fields turned into boxed doubles, and a long job ran the rest of its life on slower code
// (a 1 MiB ping-pong crosses 2 GiB within its first warm-up run).

/** The free slot the writer keeps past the lane's content: the zero Size the reader polls. */
const RECORD_SLOT_BYTES = 8;

/** Consumed bytes after which the reader publishes Head unasked (a sixteenth of the lane). */
const HEAD_PUBLISH_BYTES = LANE_BYTES / 16;

/** The writing end of one lane. */
export class LaneWriter {
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  private readonly ctl: Int32Array;
  private tail: number;
  private headSeen: number;
  private pending = 0;
  private pendingStart = 0;
  /** A PAD reserve() placed before the pending record (it wrapped): its position, or −1. */
  private padAt = -1;

  constructor(channel: SharedArrayBuffer, side: 0 | 1) {
    const off = laneOffset(side);
    this.ctl = new Int32Array(channel, off, LANE_HEADER_BYTES / 4);
    this.bytes = new Uint8Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES);
    this.words = new Uint32Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES / 4);
    this.tail = Atomics.load(this.ctl, LaneWord.Tail);
    this.headSeen = Atomics.load(this.ctl, LaneWord.Head);
  }

  /**
   * Reserves a record with `payload` bytes after its header. Returns the byte offset of the
   * record header in `bytes` (payload at +48), or −1 if the lane has no room now.
   * The caller fills words RecordWord.Type up to End and the payload, then calls `commit()`.
   */
  reserve(payload: number): number {
    const need = align8(RECORD_HEADER_BYTES + payload);
    if (need > LANE_BYTES / 2) return -1;
    let pos = this.tail & LANE_MASK;
    const tillEnd = LANE_BYTES - pos;
    // The record, the PAD before it if it wraps, and the free slot after it.
    const total = (need > tillEnd ? tillEnd + need : need) + RECORD_SLOT_BYTES;
    if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) < total) {
      this.headSeen = Atomics.load(this.ctl, LaneWord.Head);
      if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) < total) {
        Atomics.store(this.ctl, LaneWord.SpaceWanted, 1);
        // The reader may have freed space between our look and the flag: look once more.
        this.headSeen = Atomics.load(this.ctl, LaneWord.Head);
        if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) < total) return -1;
      }
    }
    this.padAt = -1;
    if (need > tillEnd) {
      // Published by commit(), after the record at 0 it leads to.
      this.words[(pos >>> 2) + RecordWord.Type] = RECORD_PAD;
      this.padAt = pos;
      this.tail = (this.tail + tillEnd) | 0;
      pos = 0;
    }
    this.pendingStart = pos;
    this.pending = need;
    return pos;
  }

  /**
   * Whether `payloadBytes` fit now as records of up to `pieceBytes` each, one after another
   * (with the padding a wrap costs, as reserve() would place them), so that reserving them
   * in turn cannot fail. If not, the reader is asked to wake us once it frees space.
   */
  hasRoomFor(payloadBytes: number, pieceBytes: number): boolean {
    let pos = this.tail & LANE_MASK;
    let need = RECORD_SLOT_BYTES;
    for (let left = payloadBytes; left > 0; left -= pieceBytes) {
      const size = align8(RECORD_HEADER_BYTES + Math.min(left, pieceBytes));
      if (size > LANE_BYTES / 2) return false;
      if (size > LANE_BYTES - pos) {
        need += LANE_BYTES - pos;
        pos = 0;
      }
      need += size;
      pos += size;
    }
    if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) >= need) return true;
    this.headSeen = Atomics.load(this.ctl, LaneWord.Head);
    if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) >= need) return true;
    // As reserve() does: ask the reader to wake us when it frees space, then look once more.
    Atomics.store(this.ctl, LaneWord.SpaceWanted, 1);
    this.headSeen = Atomics.load(this.ctl, LaneWord.Head);
    return LANE_BYTES - ((this.tail - this.headSeen) >>> 0) >= need;
  }

  /**
   * Publishes the reserved record: the slot after it reads "nothing yet", then its Size (the
   * release: the reader polls it), then the PAD that leads to it, if it wrapped.
   */
  commit(): void {
    const at = this.pendingStart;
    const size = this.pending;
    const next = at + size;
    this.words[(next === LANE_BYTES ? 0 : next >>> 2) + RecordWord.Size] = 0;
    Atomics.store(this.words, (at >>> 2) + RecordWord.Size, size);
    if (this.padAt >= 0) {
      Atomics.store(this.words, (this.padAt >>> 2) + RecordWord.Size, LANE_BYTES - this.padAt);
      this.padAt = -1;
    }
    this.tail = (this.tail + size) | 0;
    this.pending = 0;
    // For the host's inspection only (the reader polls Size): a plain store, not a second fence.
    this.ctl[LaneWord.Tail] = this.tail;
  }

  /**
   * The lane's control words: the reader's ReaderSleeping flag among them, which the writer
   * takes when it kicks (nic/window.ts raiseInterrupt).
   */
  get control(): Int32Array {
    return this.ctl;
  }

  /** Bytes the reader has not consumed yet (0 = the peer has seen everything). */
  backlog(): number {
    return (this.tail - Atomics.load(this.ctl, LaneWord.Head)) >>> 0;
  }

  get lastReserved(): number {
    return this.pendingStart;
  }

  /** Declares the channel dead, saying why unless someone already did. */
  close(why: LaneClosed = LaneClosed.Dead): void {
    Atomics.compareExchange(this.ctl, LaneWord.Closed, 0, why);
  }

  /** Why the lane was closed (a LaneClosed, or what a hostile peer wrote); 0 while open. */
  get closedWhy(): number {
    return Atomics.load(this.ctl, LaneWord.Closed);
  }

  /**
   * The peer (reader of this lane) declared the channel dead. Looked at on every send: a
   * plain load (the flag, once set, stays set); a record committed after a look that saw it
   * open asks readBeforeClose whether it was read.
   */
  get closed(): boolean {
    return this.ctl[LaneWord.Closed] !== 0;
  }

  /**
   * Called after a commit: false if the lane was closed and its reader let go of it before
   * reading the record just committed (its FinalHead short of it). The reader closes, then
   * drains, then says where it stopped; the commit and the close are both atomic, so either
   * the reader's drain saw the record or this look sees the close. The reader says it within
   * its one call; waited for 2 ms at most (a reader stopped for longer, or a close by the
   * driver domain, which the reader drains later, counts as read).
   */
  readBeforeClose(): boolean {
    // A plain look (every eager send makes it; an atomic load is a builtin call in this V8):
    // it comes after commit's atomic store, which orders it.
    if (this.ctl[LaneWord.Closed] === 0) return true;
    const until = performance.now() + 2;
    while (Atomics.load(this.ctl, LaneWord.Drained) === 0) if (performance.now() > until) return true;
    return ((Atomics.load(this.ctl, LaneWord.FinalHead) - this.tail) | 0) >= 0;
  }
}

/** The reading end of one lane. After `next()` returns true, the record's fields are in this object. */
export class LaneReader {
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  private readonly ctl: Int32Array;
  private head: number;
  /** The Head last stored: the writer sees consumed space in steps (HEAD_PUBLISH_BYTES). */
  private published: number;
  /** Why the lane was declared broken (the peer wrote something impossible); undefined while healthy. */
  broken: string | undefined;
  // The current record, copied out of shared memory once (the peer may rewrite the lane).
  type = 0;
  flags = 0;
  matchHi = 0;
  matchLo = 0;
  length = 0;
  /** The protocol words (RecordWord.Aux…; their meaning per type: records.ts). */
  readonly aux = new Uint32Array(RECORD_AUX_WORDS);
  /** Byte offset of the payload in `bytes`. */
  payload = 0;
  private size = 0;
  private messages = 0;

  constructor(
    channel: SharedArrayBuffer,
    side: 0 | 1,
    private readonly maxType: number,
  ) {
    const off = laneOffset(side);
    this.ctl = new Int32Array(channel, off, LANE_HEADER_BYTES / 4);
    this.bytes = new Uint8Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES);
    this.words = new Uint32Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES / 4);
    this.head = Atomics.load(this.ctl, LaneWord.Head);
    this.published = this.head;
    this.messages = Atomics.load(this.ctl, LaneWord.Messages);
  }

  /** True if a record is ready (its fields are loaded); false if the lane is empty or broken. */
  next(): boolean {
    if (this.broken) return false;
    const words = this.words;
    let padded = false;
    for (;;) {
      const pos = this.head & LANE_MASK;
      const w = pos >>> 2;
      // A plain look first (an empty lane is polled all the time; an atomic load is a builtin
      // call in this V8), then the atomic one that orders the record's words after it.
      if (words[w + RecordWord.Size] === 0) return false;
      const size = Atomics.load(words, w + RecordWord.Size);
      const tw = words[w + RecordWord.Type];
      const type = tw & 0xffff;
      if (size < 8 || size % 8 !== 0 || size > LANE_BYTES - pos)
        return this.fail(
          `record at ${pos} claims ${size} bytes (${LANE_BYTES - pos} to the end of the lane)`,
        );
      if (type === RECORD_PAD) {
        // A PAD fills the lane's end and leads to a record at 0, published before it: a
        // second PAD (or one not at the end) is a writer making the reader go round.
        if (padded || size !== LANE_BYTES - pos)
          return this.fail(`record at ${pos}: a PAD of ${size} bytes that does not end the lane`);
        words[w + RecordWord.Size] = 0;
        this.head = (this.head + size) | 0;
        padded = true;
        continue;
      }
      if (size < RECORD_HEADER_BYTES || type > this.maxType)
        return this.fail(`record at ${pos}: type ${type}, ${size} bytes`);
      const length = words[w + RecordWord.Length];
      if (length > size - RECORD_HEADER_BYTES && !(tw & (RecordFlag.NoPayload << 16)))
        return this.fail(`record at ${pos}: payload ${length} bytes does not fit in ${size}`);
      this.type = type;
      this.flags = tw >>> 16;
      this.matchHi = words[w + RecordWord.MatchHi];
      this.matchLo = words[w + RecordWord.MatchLo];
      this.length = length;
      for (let i = RecordWord.Aux; i < RecordWord.End; i++) this.aux[i - RecordWord.Aux] = words[w + i];
      this.payload = pos + RECORD_HEADER_BYTES;
      this.size = size;
      return true;
    }
  }

  /**
   * True (once) if the writer found the lane full and waits for space: wake it (Head is
   * published first). Between sweeps a plain look at the flag: a writer that raised it just
   * now is found on a later poll, or by the sweep (`sweep`: looked at atomically), which every
   * wait runs before it sleeps.
   */
  takeSpaceWanted(sweep: boolean): boolean {
    if (!sweep && this.ctl[LaneWord.SpaceWanted] === 0) return false;
    this.publishHead();
    return (
      Atomics.load(this.ctl, LaneWord.SpaceWanted) !== 0 &&
      Atomics.exchange(this.ctl, LaneWord.SpaceWanted, 0) !== 0
    );
  }

  /** Where the reader is: bytes consumed since the lane began (an int32 that wraps). */
  get position(): number {
    return this.head;
  }

  /** Consumed bytes the writer has not been shown yet (release publishes them in steps). */
  get unpublished(): boolean {
    return this.head !== this.published;
  }

  /** The reader lets go of the lane, closed: where it stopped reading, for the writer (LaneWriter.readBeforeClose). */
  publishFinal(): void {
    this.publishHead();
    if (Atomics.load(this.ctl, LaneWord.Drained) !== 0) return;
    Atomics.store(this.ctl, LaneWord.FinalHead, this.head);
    Atomics.store(this.ctl, LaneWord.Drained, 1);
  }

  /** Shows the writer every byte consumed so far (LaneWord.Head). */
  publishHead(): void {
    if (this.head === this.published) return;
    this.published = this.head;
    Atomics.store(this.ctl, LaneWord.Head, this.head);
  }

  /**
   * The reader is about to sleep (LaneWord.ReaderSleeping): the writer's next record kicks it.
   * Atomic: the reader's last look at the lane comes after it (mx/endpoint.ts sleepUntil).
   */
  announceSleep(): void {
    Atomics.store(this.ctl, LaneWord.ReaderSleeping, 1);
  }

  /** False once the writer took the flag announceSleep raised: it kicked, or is about to. */
  get sleepAnnounced(): boolean {
    return Atomics.load(this.ctl, LaneWord.ReaderSleeping) === 1;
  }

  /** Awake: the writer's records kick no more (a store only if the writer left the flag up). */
  awake(): void {
    if (this.ctl[LaneWord.ReaderSleeping] !== 0) Atomics.store(this.ctl, LaneWord.ReaderSleeping, 0);
  }

  /** Counts one message taken from the lane, for the host's inspection (LaneWord.Messages). */
  countMessage(): void {
    // Read only by the host's inspection: a plain store (an atomic one is a fence per message).
    this.ctl[LaneWord.Messages] = this.messages = (this.messages + 1) | 0;
  }

  /**
   * Consumes the current record: its slot reads empty again, and its space is the writer's
   * once Head is published — every HEAD_PUBLISH_BYTES, when the writer asks (takeSpaceWanted)
   * and on every sweep, not on every record (an atomic store per message, for a writer that
   * looks at Head only when its lane seems full).
   */
  release(): void {
    this.words[(this.head & LANE_MASK) >>> 2] = 0;
    this.head = (this.head + this.size) | 0;
    this.size = 0;
    if ((this.head - this.published) >>> 0 >= HEAD_PUBLISH_BYTES) this.publishHead();
  }

  /** Declares the channel dead, saying why unless someone already did. */
  close(why: LaneClosed = LaneClosed.Dead): void {
    Atomics.compareExchange(this.ctl, LaneWord.Closed, 0, why);
  }

  /** Why the lane was closed (a LaneClosed, or what a hostile peer wrote); 0 while open. */
  get closedWhy(): number {
    return Atomics.load(this.ctl, LaneWord.Closed);
  }

  /** The writer of this lane declared the channel dead. */
  get closed(): boolean {
    return Atomics.load(this.ctl, LaneWord.Closed) !== 0;
  }

  private fail(reason: string): false {
    this.broken = reason;
    return false;
  }
}

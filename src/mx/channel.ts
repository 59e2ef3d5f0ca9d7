/**
 * The co-resident channel's lanes (design.md §1: the IVC / XenLoop lineage): the writer and
 * the reader of one single-producer/single-consumer record lane in the channel myrback
 * shares with exactly two endpoints. The layout — lanes, control words, record header — is
 * the ABI in src/myrixen/channel-abi.ts; the meaning of a record's protocol words is the MX
 * library's (records.ts). A message crosses two threads: the sender copies it in, the
 * receiver copies it out.
 *
 * The reader treats everything in the lane as hostile: a record whose length or type makes
 * no sense marks the lane `broken` with the reason, and nothing is read past it; no method
 * throws on lane contents. Nothing here allocates per record.
 */
import {
  CR_AUX,
  CR_AUX_WORDS,
  CR_FLAG_NO_PAYLOAD,
  CR_LENGTH,
  CR_MATCH_HI,
  CR_MATCH_LO,
  CR_SIZE,
  CR_TYPE,
  LANE_BYTES,
  LANE_CLOSED,
  LANE_HEAD,
  LANE_HEADER_BYTES,
  LANE_SPACE_WANTED,
  LANE_TAIL,
  laneOffset,
  RECORD_HEADER_BYTES,
  RECORD_PAD,
} from "../myrixen/channel-abi.js";

const align8 = (n: number) => (n + 7) & ~7;

/** The writing end of one lane. */
export class LaneWriter {
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  private readonly ctl: Int32Array;
  private tail: number;
  private headSeen: number;
  private pending = 0;
  private pendingStart = 0;

  constructor(channel: SharedArrayBuffer, side: 0 | 1) {
    const off = laneOffset(side);
    this.ctl = new Int32Array(channel, off, LANE_HEADER_BYTES / 4);
    this.bytes = new Uint8Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES);
    this.words = new Uint32Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES / 4);
    this.tail = Atomics.load(this.ctl, LANE_TAIL) >>> 0;
    this.headSeen = Atomics.load(this.ctl, LANE_HEAD) >>> 0;
  }

  /**
   * Reserves a record with `payload` bytes after its header. Returns the byte offset of the
   * record header in `bytes` (payload at +48), or −1 if the lane has no room now.
   * The caller fills words CR_TYPE..CR_AUX+6 and the payload, then calls `commit()`.
   */
  reserve(payload: number): number {
    const need = align8(RECORD_HEADER_BYTES + payload);
    if (need > LANE_BYTES / 2) return -1;
    let pos = this.tail % LANE_BYTES;
    const tillEnd = LANE_BYTES - pos;
    const total = need > tillEnd ? tillEnd + need : need;
    if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) < total) {
      this.headSeen = Atomics.load(this.ctl, LANE_HEAD) >>> 0;
      if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) < total) {
        Atomics.store(this.ctl, LANE_SPACE_WANTED, 1);
        // The reader may have freed space between our look and the flag: look once more.
        this.headSeen = Atomics.load(this.ctl, LANE_HEAD) >>> 0;
        if (LANE_BYTES - ((this.tail - this.headSeen) >>> 0) < total) return -1;
      }
    }
    if (need > tillEnd) {
      this.words[(pos >>> 2) + CR_SIZE] = tillEnd;
      this.words[(pos >>> 2) + CR_TYPE] = RECORD_PAD;
      this.tail = (this.tail + tillEnd) >>> 0;
      pos = 0;
    }
    this.words[(pos >>> 2) + CR_SIZE] = need;
    this.pendingStart = pos;
    this.pending = need;
    return pos;
  }

  /** Publishes the reserved record (the store of the tail is the release barrier). */
  commit(): void {
    this.tail = (this.tail + this.pending) >>> 0;
    this.pending = 0;
    Atomics.store(this.ctl, LANE_TAIL, this.tail | 0);
  }

  /** Bytes the reader has not consumed yet (0 = the peer has seen everything). */
  backlog(): number {
    return (this.tail - (Atomics.load(this.ctl, LANE_HEAD) >>> 0)) >>> 0;
  }

  get lastReserved(): number {
    return this.pendingStart;
  }

  close(): void {
    Atomics.store(this.ctl, LANE_CLOSED, 1);
  }

  /** The peer (reader of this lane) declared the channel dead. */
  get closed(): boolean {
    return Atomics.load(this.ctl, LANE_CLOSED) !== 0;
  }
}

/** The reading end of one lane. After `next()` returns true, the record's fields are in this object. */
export class LaneReader {
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  private readonly ctl: Int32Array;
  private head: number;
  private tailSeen: number;
  /** Why the lane was declared broken (the peer wrote something impossible); undefined while healthy. */
  broken: string | undefined;
  // The current record, copied out of shared memory once (the peer may rewrite the lane).
  type = 0;
  flags = 0;
  matchHi = 0;
  matchLo = 0;
  length = 0;
  /** The protocol words (CR_AUX…; their meaning per type: records.ts). */
  readonly aux = new Uint32Array(CR_AUX_WORDS);
  /** Byte offset of the payload in `bytes`. */
  payload = 0;
  private size = 0;

  constructor(
    channel: SharedArrayBuffer,
    side: 0 | 1,
    private readonly maxType: number,
  ) {
    const off = laneOffset(side);
    this.ctl = new Int32Array(channel, off, LANE_HEADER_BYTES / 4);
    this.bytes = new Uint8Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES);
    this.words = new Uint32Array(channel, off + LANE_HEADER_BYTES, LANE_BYTES / 4);
    this.head = Atomics.load(this.ctl, LANE_HEAD) >>> 0;
    this.tailSeen = this.head;
  }

  /** True if a record is ready (its fields are loaded); false if the lane is empty or broken. */
  next(): boolean {
    if (this.broken) return false;
    for (;;) {
      if (this.head === this.tailSeen) {
        this.tailSeen = Atomics.load(this.ctl, LANE_TAIL) >>> 0;
        if (this.head === this.tailSeen) return false;
      }
      const avail = (this.tailSeen - this.head) >>> 0;
      if (avail > LANE_BYTES)
        return this.fail(`tail ran ${avail} bytes ahead of head (lane holds ${LANE_BYTES})`);
      const pos = this.head % LANE_BYTES;
      const w = pos >>> 2;
      const size = this.words[w + CR_SIZE];
      const tw = this.words[w + CR_TYPE];
      const type = tw & 0xffff;
      if (size < 8 || size % 8 !== 0 || size > LANE_BYTES - pos || size > avail)
        return this.fail(
          `record at ${pos} claims ${size} bytes (${avail} published, ${LANE_BYTES - pos} to the end)`,
        );
      if (type === RECORD_PAD) {
        this.head = (this.head + size) >>> 0;
        continue;
      }
      if (size < RECORD_HEADER_BYTES || type > this.maxType)
        return this.fail(`record at ${pos}: type ${type}, ${size} bytes`);
      const length = this.words[w + CR_LENGTH];
      if (length > size - RECORD_HEADER_BYTES && !(tw & (CR_FLAG_NO_PAYLOAD << 16)))
        return this.fail(`record at ${pos}: payload ${length} bytes does not fit in ${size}`);
      this.type = type;
      this.flags = tw >>> 16;
      this.matchHi = this.words[w + CR_MATCH_HI];
      this.matchLo = this.words[w + CR_MATCH_LO];
      this.length = length;
      for (let i = 0; i < CR_AUX_WORDS; i++) this.aux[i] = this.words[w + CR_AUX + i];
      this.payload = pos + RECORD_HEADER_BYTES;
      this.size = size;
      return true;
    }
  }

  /** True (once) if the writer found the lane full and waits for space: wake it. */
  takeSpaceWanted(): boolean {
    return (
      Atomics.load(this.ctl, LANE_SPACE_WANTED) !== 0 &&
      Atomics.exchange(this.ctl, LANE_SPACE_WANTED, 0) !== 0
    );
  }

  /** Consumes the current record (frees its space for the writer). */
  release(): void {
    this.head = (this.head + this.size) >>> 0;
    this.size = 0;
    Atomics.store(this.ctl, LANE_HEAD, this.head | 0);
  }

  close(): void {
    Atomics.store(this.ctl, LANE_CLOSED, 1);
  }

  /** The writer of this lane declared the channel dead. */
  get closed(): boolean {
    return Atomics.load(this.ctl, LANE_CLOSED) !== 0;
  }

  private fail(reason: string): false {
    this.broken = reason;
    return false;
  }
}

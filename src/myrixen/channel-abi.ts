/**
 * The co-resident channel's layout: the ABI that myrback (which makes a channel, grants it to
 * exactly two endpoints and closes it when one of them goes) and the MX library (which
 * writes and reads records in it: src/mx/channel.ts) share. Like Open-MX's common/, it sits
 * below both, so neither imports the other.
 *
 *   channel = lane 0 + lane 1; endpoint side s writes lane s and reads lane 1−s
 *   lane    = LANE_HEADER_BYTES of control words + LANE_BYTES of records
 *
 *   lane control words (LaneWord: Int32 indices into the lane header; 128 bytes apart, so
 *   the writer's and the reader's words never share a cache line or its prefetched neighbour):
 *     Tail         [writer]  bytes ever published (u32, wraps): for the writer's backlog and
 *                  the host's inspection; the reader polls the next record's Size instead
 *     Head         [reader]  bytes ever consumed (u32, wraps): how far the writer may write
 *     Closed       [either member, or myrback]  nonzero: the channel is dead; the first
 *                  closer's value (LaneClosed, set from 0 only) says why, to word the other
 *                  member's failure (advisory: a member can write any value)
 *     SpaceWanted  [writer sets, reader clears]  the writer found the lane full and waits:
 *                  the reader wakes it after freeing space
 *     Messages     [reader]  messages taken from the lane (u32, wraps): what the host's
 *                  inspection counts for co-resident traffic (rates, latency samples); the
 *                  reader's own word, so it is as true as that endpoint's library
 *     ReaderSleeping  [reader sets to 1, writer takes (CAS 1 → 0), reader clears]  the reader
 *                  is about to sleep on its interrupt page: the writer, having published a
 *                  record, takes the flag down and kicks it (bumps the page's I_SEQ and
 *                  notifies, nic/window.ts). It lives here, not on the interrupt page, because
 *                  the page is granted to every co-resident peer of the reader: a flag there
 *                  was one any peer could clear, and each honest peer, then the NIC, believed
 *                  the reader awake and let it sleep out its slice. Only the lane's two
 *                  members reach this word, so a writer can only silence its own kicks. The
 *                  reader writes it only when it goes to sleep and when it wakes: while it is
 *                  awake the writer's look at it per record is a load of a line that stays
 *                  shared in both caches. Protocol: mx/endpoint.ts sleepUntil.
 *
 *   record (RecordWord: u32 indices from the record's start; 8-byte aligned, never wrapping;
 *   all written by the lane's writer, copied out once by its reader, which treats them as
 *   hostile):
 *     +0   Size     total bytes: header + payload + pad. Stored last: it publishes the record
 *                  (0 = nothing here yet). The writer zeroes the Size word after each record it
 *                  publishes (so the lane always keeps 8 bytes free past its content) and
 *                  publishes a record that wrapped to 0 before the PAD that leads to it; the
 *                  reader zeroes the Size of each record it consumed.
 *     +4   Type     type (bits 0..15; RECORD_PAD = 0 fills the end of the lane) | flags << 16
 *                   (RecordFlag here; the library's own above them)
 *     +8   MatchHi  64-bit match value, high word
 *     +12  MatchLo  … low word
 *     +16  Length   payload bytes in the record, or (RecordFlag.NoPayload) a message length
 *     +20  Aux …    protocol words up to End, meaning per record type (src/mx/records.ts)
 *     +48  payload
 *
 * The word names are const enums: tsc writes each as its number, so naming a word costs the
 * hot path nothing (an imported constant is a load and a check on every use).
 *
 * myrback needs only the size (CHANNEL_BYTES) and `closeChannelLanes`; the record words are
 * named here so that every word of the shared memory is named in one place.
 *
 * Lane policy page (issue 16: co-resident eager messages held to the QoS policy). Both
 * members can write every word of the channel, so a limit kept there would bind no one. So
 * each member gets one more page, granted to it alone (never to its peer), in which myrback
 * writes the limits the member's library holds its *incoming* lane to: the peer's tx caps
 * combined with the member's own rx caps (the smaller of each), and the peer's weight.
 * [myrback writes, the reading member reads; the writer of the lane cannot reach it.]
 *   Int32 word 0  Seq          even: stable; odd: myrback is rewriting (a seqlock)
 *   Float64 at 8  BytesPerSec  0 = no byte cap
 *   Float64 at 16 MsgsPerSec   0 = no message cap
 *   Float64 at 24 Weight       the lane writer's weight (1..1000)
 *   Float64 at 32 ShareBytesPerSec  0 = no share limit. Written by myrback's share loop
 *                 (back/share-loop.ts) only while lanes of different weights contend on the
 *                 host: a weighted share of the host's co-resident traffic, held on every
 *                 message record (a rendezvous the NIC pulls too), apart from the caps,
 *                 which stay a ceiling; also while a capped domain's lanes split its cap.
 *   Float64 at 40 WriterGroup  the lane writer's domain (−1: none): the member's lanes from one
 *                 domain share that domain's weight of its reading (mx/lane-policer.ts)
 * [the reading member writes, myrback reads: what the share loop measures; as true as the
 *  reader's library, and its peer (the lane's writer) cannot reach them]
 *   Int32 word 16 (byte 64) TakenBytes  message bytes taken from the lane (u32, wraps):
 *                 an eager message's payload, a rendezvous's length when it is read
 *   Int32 word 17 (byte 68) ShareHolds  times a message record was left in the lane for the
 *                 share limit (u32, wraps): the lane's writer wanted more than its share
 * [the member writes as its OUTGOING lane's writer, myrback reads]
 *   Int32 word 18 (byte 72) GivenBytes  message bytes the member put into the lane it writes
 *                 (u32, wraps), counted as its reader counts TakenBytes: how the share loop
 *                 splits a limited writer's share among its lanes, so that a reader claiming
 *                 more than it took cannot draw its writer's share away from the writer's
 *                 other receivers (the reader's count still decides who contends: a writer
 *                 that under-counts must not escape its limit)
 * [the member writes once it has mapped the channel, myrback reads]
 *   Int32 words 19, 20 (bytes 76, 80) Attached  the id of the channel the member mapped, as
 *                 side 0 and as side 1 (one domain may be both ends): until each member
 *                 handed the channel has said so, myrback keeps its memory from the pair's
 *                 next channel, whatever the grants' mapping state says (back/shared-memory.ts)
 */
import { PAGE_SIZE } from "../xen/abi.js";

export const LANE_HEADER_BYTES = PAGE_SIZE;
/**
 * A lane holds a MiB of records: twice a core's L2 here. A rendezvous pushed through a lane of
 * 256 KiB kept its writer at most that far ahead of its reader, so every line the reader copied
 * out still sat modified in the writer's cache and every line the writer copied in was still in
 * the reader's: a 1 MiB one-way took 120–150 µs, where two bare threads with a 1 MiB ring take
 * 47–76 (a 512 KiB one 77–88). The price: a channel is 2 MiB of the driver domain's memory and
 * grants: a default host holds 95 (its driver domain's grant table doubled; CHANNEL_GRANT_SHARE
 * and CHANNELS_PER_DOMAIN in back/shared-memory.ts); pairs beyond them talk through the NIC.
 */
export const LANE_BYTES = 1024 * 1024;
export const CHANNEL_BYTES = 2 * (LANE_HEADER_BYTES + LANE_BYTES);

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (see the header); the project builds with tsc, never file by file
export const enum LaneWord {
  Tail = 0,
  Head = 32,
  Closed = 64,
  SpaceWanted = 96,
  Messages = 128,
  ReaderSleeping = 160,
  /**
   * The reader's head when it let go of the lane (after its last drain), then Drained = 1: a
   * writer that finds the lane closed just after committing a record learns from them whether
   * the record was read (mx/channel.ts LaneWriter.readBeforeClose).
   */
  FinalHead = 192,
  Drained = 224,
}

/** Why a lane was closed: its Closed word, set from 0 only (the first closer's word stays). */
// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (see the header)
export const enum LaneClosed {
  /** myrback killed it (an endpoint or domain went), or a member failed its peer. */
  Dead = 1,
  /** A member disconnected from the other (mx_disconnect). */
  Disconnected = 2,
  /** A member's endpoint closed. */
  EndpointClosed = 3,
}

export const RECORD_HEADER_BYTES = 48;
/** Record type 0 fills the end of the lane when the next record does not fit there. */
export const RECORD_PAD = 0;

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (see the header)
export const enum RecordWord {
  Size = 0,
  Type = 1,
  MatchHi = 2,
  MatchLo = 3,
  Length = 4,
  /** The first protocol word. */
  Aux = 5,
  /** Past the last protocol word: the header is End words (RECORD_HEADER_BYTES). */
  End = 12,
}

/** The protocol words of a record (Aux up to End). */
export const RECORD_AUX_WORDS = RecordWord.End - RecordWord.Aux;

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (see the header)
export const enum RecordFlag {
  /**
   * Length is a message length, not a payload carried in the record (a rendezvous announces
   * a message whose data stays in the sender's memory).
   */
  NoPayload = 1,
}

/** The lane policy page (header): one page per member, granted to that member only. */
export const LANE_POLICY_BYTES = PAGE_SIZE;

/** The limits of one incoming lane (0 = no cap). */
export interface LanePolicy {
  bytesPerSec: number;
  msgsPerSec: number;
  weight: number;
  /**
   * The writer's domain: the lanes one reader reads from one domain share that domain's weight
   * of its reading (lane-policer.ts LaneGroups). Absent or negative: the lane counts alone.
   */
  group?: number;
}

/** Int32 index of TakenBytes in the lane policy page (the reader's counters follow the policy). */
export const POLICY_TAKEN_WORD = 16;
/** Int32 index of ShareHolds in the lane policy page. */
export const POLICY_SHARE_HOLDS_WORD = 17;
/** Int32 index of GivenBytes in the lane policy page (the member's count as its outgoing lane's writer). */
export const POLICY_GIVEN_WORD = 18;
/** Int32 index of Attached (side 0; side 1 follows) in the lane policy page. */
export const POLICY_ATTACHED_WORD = 19;
/** Float64 index of ShareBytesPerSec in the lane policy page. */
export const POLICY_SHARE_FLOAT = 4;

/**
 * myrback: (re)writes a member's lane policy page; a reader never sees half of it (Seq).
 * `shareBytesPerSec` is the share loop's (0 = none); absent, the one in force stays.
 */
export function writeLanePolicy(page: SharedArrayBuffer, p: LanePolicy, shareBytesPerSec?: number): void {
  const seq = new Int32Array(page, 0, 2);
  const f = new Float64Array(page, 8, 5);
  Atomics.add(seq, 0, 1);
  f[0] = p.bytesPerSec;
  f[1] = p.msgsPerSec;
  f[2] = p.weight;
  if (shareBytesPerSec !== undefined) f[3] = shareBytesPerSec;
  f[4] = p.group ?? -1;
  Atomics.add(seq, 0, 1);
}

/** The writer group a member's page names (−1: none), as myrback last wrote it. */
export function readLaneGroup(page: SharedArrayBuffer): number {
  return new Float64Array(page, 8, 5)[4];
}

/** myrback's share loop: rewrites only the share limit of a member's page (Seq as above). */
export function writeLaneShare(page: SharedArrayBuffer, shareBytesPerSec: number): void {
  const seq = new Int32Array(page, 0, 2);
  const f = new Float64Array(page, 8, 4);
  Atomics.add(seq, 0, 1);
  f[3] = shareBytesPerSec;
  Atomics.add(seq, 0, 1);
}

/** What the reading member counted in its page: message bytes taken, share holds (u32s). */
export function readLaneCounters(page: SharedArrayBuffer): { taken: number; holds: number } {
  const w = new Int32Array(page, 0, POLICY_SHARE_HOLDS_WORD + 1);
  return {
    taken: Atomics.load(w, POLICY_TAKEN_WORD) >>> 0,
    holds: Atomics.load(w, POLICY_SHARE_HOLDS_WORD) >>> 0,
  };
}

/** The member's library: it has mapped channel `channelId` as `side` (its policy page's Attached). */
export function markAttached(page: SharedArrayBuffer, side: 0 | 1, channelId: number): void {
  Atomics.store(new Int32Array(page, 0, POLICY_ATTACHED_WORD + 2), POLICY_ATTACHED_WORD + side, channelId);
}

/** myrback: the channel id the member said it mapped as `side` (0: none yet). */
export function readAttached(page: SharedArrayBuffer, side: 0 | 1): number {
  return Atomics.load(new Int32Array(page, 0, POLICY_ATTACHED_WORD + 2), POLICY_ATTACHED_WORD + side) >>> 0;
}

/** What a member counted in its page as the writer of its outgoing lane: message bytes given (u32). */
export function readLaneGiven(page: SharedArrayBuffer): number {
  return Atomics.load(new Int32Array(page, 0, POLICY_GIVEN_WORD + 1), POLICY_GIVEN_WORD) >>> 0;
}

/** Byte offset of lane `side` in the channel. */
export function laneOffset(side: 0 | 1): number {
  return side * (LANE_HEADER_BYTES + LANE_BYTES);
}

/** Whether lane `side` holds records its reader has not consumed (its writer's Tail is past its Head). */
export function laneUnread(channel: SharedArrayBuffer, side: 0 | 1): boolean {
  const ctl = new Int32Array(channel, laneOffset(side), LANE_HEADER_BYTES / 4);
  return Atomics.load(ctl, LaneWord.Tail) !== Atomics.load(ctl, LaneWord.Head);
}

/** Kills a channel: both lanes closed, so each member's reader and writer see it. */
export function closeChannelLanes(channel: SharedArrayBuffer): void {
  for (const side of [0, 1] as const)
    Atomics.compareExchange(
      new Int32Array(channel, laneOffset(side), LANE_HEADER_BYTES / 4),
      LaneWord.Closed,
      0,
      LaneClosed.Dead,
    );
}

/**
 * Whether a lane of the channel was declared closed — by myrback, or by a member whose
 * library released it (mx_disconnect, its peer failed): such a channel is never handed out
 * again, nothing written to it would be read.
 */
export function channelLanesClosed(channel: SharedArrayBuffer): boolean {
  for (const side of [0, 1] as const)
    if (Atomics.load(new Int32Array(channel, laneOffset(side), LANE_HEADER_BYTES / 4), LaneWord.Closed) !== 0)
      return true;
  return false;
}

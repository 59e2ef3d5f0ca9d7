/**
 * The co-resident channel's layout: the ABI that myrback (which makes a channel, grants it to
 * exactly two endpoints and closes it when one of them goes) and the MX library (which
 * writes and reads records in it: src/mx/channel.ts) share. Like Open-MX's common/, it sits
 * below both, so neither imports the other.
 *
 *   channel = lane 0 + lane 1; endpoint side s writes lane s and reads lane 1−s
 *   lane    = LANE_HEADER_BYTES of control words + LANE_BYTES of records
 *
 *   lane control words (Int32 indices into the lane header; 128 bytes apart, so the writer's
 *   and the reader's words never share a cache line or its prefetched neighbour):
 *     LANE_TAIL          [writer]  bytes ever published (u32, wraps); the store is the release
 *     LANE_HEAD          [reader]  bytes ever consumed (u32, wraps)
 *     LANE_CLOSED        [either member, or myrback]  nonzero: the channel is dead
 *     LANE_SPACE_WANTED  [writer sets, reader clears]  the writer found the lane full and
 *                        waits: the reader wakes it after freeing space
 *
 *   record (8-byte aligned, never wrapping; all words u32, written by the lane's writer and
 *   copied out once by its reader, which treats them as hostile):
 *     +0   CR_SIZE      total bytes: header + payload + pad
 *     +4   CR_TYPE      type (bits 0..15; RECORD_PAD = 0 fills the end of the lane) |
 *                      flags << 16 (CR_FLAG_NO_PAYLOAD here; the library's own above it)
 *     +8   CR_MATCH_HI  64-bit match value, high word
 *     +12  CR_MATCH_LO  … low word
 *     +16  CR_LENGTH    payload bytes in the record, or (CR_FLAG_NO_PAYLOAD) a message length
 *     +20  CR_AUX …     CR_AUX_WORDS protocol words, meaning per record type (src/mx/records.ts)
 *     +48  payload
 *
 * myrback needs only the size (CHANNEL_BYTES) and `closeChannelLanes`; the record words are
 * named here so that every word of the shared memory is named in one place.
 */
import { PAGE_SIZE } from "../xen/abi.js";

export const LANE_HEADER_BYTES = PAGE_SIZE;
export const LANE_BYTES = 256 * 1024;
export const CHANNEL_BYTES = 2 * (LANE_HEADER_BYTES + LANE_BYTES);

// Lane control words (Int32 indices into a lane's header).
export const LANE_TAIL = 0;
export const LANE_HEAD = 32;
export const LANE_CLOSED = 64;
export const LANE_SPACE_WANTED = 96;

export const RECORD_HEADER_BYTES = 48;
export const RECORD_WORDS = RECORD_HEADER_BYTES / 4;
/** Record type 0 fills the end of the lane when the next record does not fit there. */
export const RECORD_PAD = 0;

// Record header words (u32 indices from the record's start).
export const CR_SIZE = 0;
export const CR_TYPE = 1;
export const CR_MATCH_HI = 2;
export const CR_MATCH_LO = 3;
export const CR_LENGTH = 4;
export const CR_AUX = 5;
export const CR_AUX_WORDS = 7;

/**
 * Record flag: CR_LENGTH is a message length, not a payload carried in the record (a
 * rendezvous announces a message whose data stays in the sender's memory).
 */
export const CR_FLAG_NO_PAYLOAD = 1;

/** Byte offset of lane `side` in the channel. */
export function laneOffset(side: 0 | 1): number {
  return side * (LANE_HEADER_BYTES + LANE_BYTES);
}

/** Kills a channel: both lanes closed, so each member's reader and writer see it. */
export function closeChannelLanes(channel: SharedArrayBuffer): void {
  for (const side of [0, 1] as const)
    Atomics.store(new Int32Array(channel, laneOffset(side), LANE_HEADER_BYTES / 4), LANE_CLOSED, 1);
}

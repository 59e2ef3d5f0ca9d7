/**
 * MX over Ethernet (MXoE), the split path's wire, as Open-MX runs MX over plain Ethernet: the
 * frame header that the guests' MX library writes (src/mx/ether.ts) and that netback's bridge
 * reads to deliver each frame to the owner of the endpoint it names, and no one else
 * (src/netback/mx-steer.ts). It sits beside netif.h because netif carries these frames.
 *
 * Frame = Ethernet II header (dst MAC, src MAC, EtherType 0x86DF) + 64-byte MXoE header of
 * 16 little-endian u32 words (MxoeWord) + payload; every word is written by the frame's
 * sender and checked by its receiver:
 *
 *   0  magic 0x4d45 ("ME") << 16 | version << 8 | type (MxoeType)
 *   1  dst nic     2  dst endpoint   3  dst session (CONNECT: 0, or the session to resolve)
 *   4  src nic     5  src endpoint   6  src session
 *   7  frame sequence (sequenced types; 0 otherwise)
 *   8  cumulative ack: the next frame sequence the sender of this frame expects from us
 *   9  match hi (CONNECT, CONNECT_REPLY: 1 if the sender is on the split path)   10 match lo
 *   11 message length
 *   12 message sequence (EAGER, RNDV) | status (NOTIFY, CONNECT_REPLY) | path (PATH)
 *   13 id: sync id (EAGER, RNDV, NOTIFY, PULL), pull id (DATA), connect id (CONNECT*)
 *   14 fragment offset (EAGER, DATA) | key (CONNECT) | bytes transferred (NOTIFY) | pull id (PULL)
 *   15 payload bytes in this frame
 *
 * Endpoint ids: below SPLIT_ENDPOINT_BASE an id is a NIC context (its owner is whoever opened
 * it through the driver domain); from there up it is a split-path endpoint, and the id names
 * its domain: SPLIT_ENDPOINT_BASE + domid × SPLIT_ENDPOINTS_PER_DOMAIN + n.
 */

export const MXOE_ETHERTYPE = 0x86df;
export const ETH_HEADER_BYTES = 14;
export const MXOE_HEADER_BYTES = 64;
export const MXOE_MAGIC = 0x4d45;
export const MXOE_VERSION = 1;
/** Where a frame's payload starts. */
export const PAYLOAD_AT = ETH_HEADER_BYTES + MXOE_HEADER_BYTES;

/** MXoE frame types (header word 0, bits 0..7). */
export const MxoeType = {
  Connect: 1,
  ConnectReply: 2,
  Eager: 3,
  Rndv: 4,
  Pull: 5,
  Data: 6,
  Notify: 7,
  Ack: 8,
  Path: 9,
  /** "No such endpoint here" (as Open-MX's nack): status in msgSeq; the sender fails the peer. */
  Nack: 10,
} as const;
export const MXOE_MAX_TYPE = MxoeType.Nack;

/** MXoE header words (u32 indices after the Ethernet header; the table above says what each holds). */
export const MxoeWord = {
  magic: 0,
  dstNic: 1,
  dstEp: 2,
  dstSession: 3,
  srcNic: 4,
  srcEp: 5,
  srcSession: 6,
  seq: 7,
  ack: 8,
  matchHi: 9,
  matchLo: 10,
  length: 11,
  msgSeq: 12,
  id: 13,
  offset: 14,
  payload: 15,
} as const;

/** Endpoint ids from here up have no NIC context (split path only). */
export const SPLIT_ENDPOINT_BASE = 0x10000;
export const SPLIT_ENDPOINTS_PER_DOMAIN = 256;

/** The domain a split-path endpoint id belongs to (the id must be ≥ SPLIT_ENDPOINT_BASE). */
export function splitEndpointDomain(endpoint: number): number {
  return Math.floor((endpoint - SPLIT_ENDPOINT_BASE) / SPLIT_ENDPOINTS_PER_DOMAIN);
}

/** Header word `w` of frame `f` (u32, little endian). */
export function frameWord(f: Uint8Array, w: number): number {
  const o = ETH_HEADER_BYTES + w * 4;
  return (f[o] | (f[o + 1] << 8) | (f[o + 2] << 16) | (f[o + 3] << 24)) >>> 0;
}

/** Whether the first `len` bytes of `f` hold an Ethernet II header of EtherType MXoE. */
export function isMxoe(f: Uint8Array, len: number): boolean {
  return len >= ETH_HEADER_BYTES && ((f[12] << 8) | f[13]) === MXOE_ETHERTYPE;
}

/**
 * The netif contract (xen/include/public/io/netif.h) that netfront and netback share, byte
 * for byte: the TX and RX request/response layouts, their flags and statuses, the ring sizes
 * one 4 KiB page gives, the xenbus keys each side publishes, and the frame limits of this
 * network (Ethernet II, jumbo MTU 9000, so a frame spans up to three pages).
 *
 * Offsets are byte offsets inside a ring slot (little endian, as on x86 Xen). The helpers
 * read and write a slot through the ring's DataView without allocating.
 */

import { PAGE_SIZE } from "../abi.js";
import { ringEntries, ringSlotSize } from "../ring.js";

/** Device class in XenStore: device/vif/<devid>, backend/vif/<domid>/<devid>. */
export const VIF_DEVICE_TYPE = "vif";

// ---- netif_tx_request / netif_tx_response -----------------------------------------------------

/** struct netif_tx_request { grant_ref_t gref; uint16_t offset, flags, id, size; } — 12 bytes. */
export const TX_REQ_GREF = 0;
export const TX_REQ_OFFSET = 4;
export const TX_REQ_FLAGS = 6;
export const TX_REQ_ID = 8;
/** First slot of a packet: the whole packet's size; later slots: this fragment's size. */
export const TX_REQ_SIZE = 10;
export const TX_REQ_BYTES = 12;

/** struct netif_tx_response { uint16_t id; int16_t status; } — 4 bytes. */
export const TX_RSP_ID = 0;
export const TX_RSP_STATUS = 2;
export const TX_RSP_BYTES = 4;

/** NETTXF_*: flags of a TX request. */
export const NETTXF_csum_blank = 1 << 0;
export const NETTXF_data_validated = 1 << 1;
/** More slots of this packet follow. */
export const NETTXF_more_data = 1 << 2;
/** The next slot is a netif_extra_info (GSO, multicast); this backend supports none. */
export const NETTXF_extra_info = 1 << 3;
/** Every flag netif.h defines for TX; any other bit is garbage. */
export const NETTXF_KNOWN = NETTXF_csum_blank | NETTXF_data_validated | NETTXF_more_data | NETTXF_extra_info;

// ---- netif_rx_request / netif_rx_response -----------------------------------------------------

/** struct netif_rx_request { uint16_t id; uint16_t pad; grant_ref_t gref; } — 8 bytes. */
export const RX_REQ_ID = 0;
export const RX_REQ_PAD = 2;
export const RX_REQ_GREF = 4;
export const RX_REQ_BYTES = 8;

/** struct netif_rx_response { uint16_t id, offset, flags; int16_t status; } — 8 bytes. */
export const RX_RSP_ID = 0;
export const RX_RSP_OFFSET = 2;
export const RX_RSP_FLAGS = 4;
/** Negative: a NETIF_RSP_* error; otherwise the bytes of data in this slot. */
export const RX_RSP_STATUS = 6;
export const RX_RSP_BYTES = 8;

/** NETRXF_*: flags of an RX response. */
export const NETRXF_data_validated = 1 << 0;
export const NETRXF_csum_blank = 1 << 1;
/** More slots of this packet follow. */
export const NETRXF_more_data = 1 << 2;
export const NETRXF_extra_info = 1 << 3;
export const NETRXF_gso_prefix = 1 << 4;

// ---- statuses ---------------------------------------------------------------------------------

export const NETIF_RSP_DROPPED = -2;
export const NETIF_RSP_ERROR = -1;
export const NETIF_RSP_OKAY = 0;
/** The response of an extra-info slot: no packet status of its own. */
export const NETIF_RSP_NULL = 1;

// ---- netif_extra_info (only its first two bytes matter here: we support no extra type) -------

export const EXTRA_TYPE = 0;
export const EXTRA_FLAGS = 1;
export const XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0;

// ---- rings --------------------------------------------------------------------------------------

/** TX: (4096 − 64) / 12 = 336 slots fit → 256 entries. */
export const TX_RING_SIZE = ringEntries(ringSlotSize(TX_REQ_BYTES, TX_RSP_BYTES));
/** RX: (4096 − 64) / 8 = 504 slots fit → 256 entries. */
export const RX_RING_SIZE = ringEntries(ringSlotSize(RX_REQ_BYTES, RX_RSP_BYTES));

// ---- frames -------------------------------------------------------------------------------------

/** Destination MAC, source MAC, EtherType. */
export const ETH_HLEN = 14;
export const ETH_ALEN = 6;
/** The MTU of this network: jumbo frames. */
export const NETIF_MTU = 9000;
/** Largest Ethernet II frame: MTU + header (no FCS on a virtual wire). */
export const MAX_FRAME = NETIF_MTU + ETH_HLEN;
/** Pages (slots) a largest frame needs when each slot is a whole page. */
export const MAX_FRAME_PAGES = Math.ceil(MAX_FRAME / PAGE_SIZE);
/** XEN_NETIF_NR_SLOTS_MIN: the most slots a packet may use (Linux's max_skb_slots). */
export const XEN_NETIF_NR_SLOTS_MIN = 18;
/** Linux netback's fatal_skb_slots: a chain longer than this is a broken frontend. */
export const FATAL_SKB_SLOTS = 20;

// ---- xenbus keys --------------------------------------------------------------------------------

export const NetifKey = {
  // written by netfront
  txRingRef: "tx-ring-ref",
  rxRingRef: "rx-ring-ref",
  eventChannel: "event-channel",
  requestRxCopy: "request-rx-copy",
  featureRxNotify: "feature-rx-notify",
  featureSg: "feature-sg",
  // written by netback (feature-sg too)
  featureRxCopy: "feature-rx-copy",
  featureRxFlip: "feature-rx-flip",
  mac: "mac",
  mtu: "mtu",
  /** The host's NIC id, so the MX library can address endpoints over Ethernet. */
  mxNicId: "mx-nic-id",
  // written by the toolstack (backend directory only: the guest cannot change it)
  /** The vif's TX rate: "<bytes>,<usec>", credit_bytes per credit_usec (parseVifRate). */
  rate: "rate",
} as const;

// ---- helpers ------------------------------------------------------------------------------------

/** A vif's TX rate: `bytes` may leave every `usec` microseconds (Linux xen-netback's credit). */
export interface VifRate {
  bytes: number;
  usec: number;
}

/** The credit window xl gives a `rate=` without one (`@50ms`). */
export const VIF_RATE_WINDOW_USEC = 50_000;

/**
 * The `rate` key as Linux's xen-netback reads it (xen_net_read_rate: "%lu,%lu"): two positive
 * integers, credit bytes and credit microseconds; undefined for anything else (no limit).
 */
export function parseVifRate(text: string | undefined): VifRate | undefined {
  const m = typeof text === "string" ? /^(\d{1,15}),(\d{1,12})$/.exec(text) : null;
  if (!m) return undefined;
  const bytes = Number(m[1]);
  const usec = Number(m[2]);
  return bytes > 0 && usec > 0 ? { bytes, usec } : undefined;
}

/** The `rate` value for a cap of `bytesPerSec` (xl's `rate=<bytes>/s`, its 50 ms window). */
export function vifRateFor(bytesPerSec: number): string {
  return `${Math.max(1, Math.ceil((bytesPerSec * VIF_RATE_WINDOW_USEC) / 1e6))},${VIF_RATE_WINDOW_USEC}`;
}

/** "00:16:3e:07:00:02" → bytes; undefined if it is not six hex octets. */
export function parseMac(text: string | undefined): Uint8Array | undefined {
  if (typeof text !== "string" || !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(text)) return undefined;
  return Uint8Array.from(text.split(":").map((h) => Number.parseInt(h, 16)));
}

export function formatMac(mac: ArrayLike<number>, offset = 0): string {
  const out: string[] = [];
  for (let i = 0; i < ETH_ALEN; i++) out.push((mac[offset + i] & 0xff).toString(16).padStart(2, "0"));
  return out.join(":");
}

/**
 * The toolstack's MAC for a guest's vif: a locally administered unicast address (the first
 * byte's low bits 10) that holds 30 bits of the NIC id and the 16-bit domain id, so guests of
 * hosts whose NIC ids differ in those bits never share a MAC (launchers refuse hosts that do
 * not: cluster/job.ts). Xen's toolstack draws random MACs under its OUI 00:16:3e instead;
 * under it, three bytes left room for only 8 bits of a NIC id, and two hosts whose NIC ids
 * shared their low byte gave a domain id the same MAC on both.
 */
export function vifMac(nicId: number, domid: number): string {
  // The NIC bits, with 10 (locally administered, unicast) in the first byte's two low bits.
  const n = (vifMacNicBits(nicId) | 0x02000000) >>> 0;
  return formatMac([
    n >>> 24,
    (n >>> 16) & 0xff,
    (n >>> 8) & 0xff,
    n & 0xff,
    (domid >>> 8) & 0xff,
    domid & 0xff,
  ]);
}

/** The bits of a NIC id its guests' MACs carry: two NIC ids equal in these give the same MACs. */
export function vifMacNicBits(nicId: number): number {
  return ((nicId >>> 0) & 0xfcffffff) >>> 0;
}

export interface TxRequest {
  gref: number;
  offset: number;
  flags: number;
  id: number;
  size: number;
}

export function writeTxRequest(v: DataView, off: number, r: TxRequest): void {
  v.setUint32(off + TX_REQ_GREF, r.gref >>> 0, true);
  v.setUint16(off + TX_REQ_OFFSET, r.offset, true);
  v.setUint16(off + TX_REQ_FLAGS, r.flags, true);
  v.setUint16(off + TX_REQ_ID, r.id, true);
  v.setUint16(off + TX_REQ_SIZE, r.size, true);
}

export function readTxRequest(v: DataView, off: number): TxRequest {
  return {
    gref: v.getUint32(off + TX_REQ_GREF, true),
    offset: v.getUint16(off + TX_REQ_OFFSET, true),
    flags: v.getUint16(off + TX_REQ_FLAGS, true),
    id: v.getUint16(off + TX_REQ_ID, true),
    size: v.getUint16(off + TX_REQ_SIZE, true),
  };
}

export function writeTxResponse(v: DataView, off: number, id: number, status: number): void {
  v.setUint16(off + TX_RSP_ID, id, true);
  v.setInt16(off + TX_RSP_STATUS, status, true);
}

export function writeRxRequest(v: DataView, off: number, id: number, gref: number): void {
  v.setUint16(off + RX_REQ_ID, id, true);
  v.setUint16(off + RX_REQ_PAD, 0, true);
  v.setUint32(off + RX_REQ_GREF, gref >>> 0, true);
}

export function writeRxResponse(
  v: DataView,
  off: number,
  id: number,
  offset: number,
  flags: number,
  status: number,
): void {
  v.setUint16(off + RX_RSP_ID, id, true);
  v.setUint16(off + RX_RSP_OFFSET, offset, true);
  v.setUint16(off + RX_RSP_FLAGS, flags, true);
  v.setInt16(off + RX_RSP_STATUS, status, true);
}

/**
 * The myri split-driver protocol: what myrifront (a guest) and myrback (the driver domain)
 * say to each other, like a Xen io/ header (compare io/netif.h, io/blkif.h and Xen2MX's
 * omx_xen.h). Also the request shapes of the native service, which offers the same operations
 * to processes of the driver domain over synchronous calls.
 *
 * XenStore (device type "myri", frontend /local/domain/<d>/device/myri/<devid>,
 * backend /local/domain/0/backend/myri/<d>/<devid>):
 *   backend writes   protocol, nic-id, max-endpoints, max-registered-bytes, max-regions,
 *                    max-indirect-pages, max-region-pages, then InitWait
 *   frontend writes  protocol, ring-ref (a RAM page granted to the backend), event-channel
 *                    (unbound, for the backend), then Initialised
 *   backend maps the ring, binds the channel, goes Connected; teardown Closing → Closed.
 *   The toolstack writes /local/domain/<d>/memory/target (KiB, read-only to the guest);
 *   myrback caps the guest's registered bytes at it.
 *
 * One control ring page (io/ring.h layout), 16 slots of 160 bytes. All fields little-endian.
 *
 *   request (REQ_BYTES = 160)
 *     0  u32 id            echoed in the response
 *     4  u16 op            Op.*
 *     6  u16 nr_indirect   REGISTER: indirect pages used in indirect[]
 *     8  u32 endpoint      the caller's endpoint (OPEN: wanted id or ANY_ENDPOINT)
 *    12  u32 arg[4]        per op, below
 *    28  u32 reserved      0
 *    32  u32 indirect[32]  REGISTER: grant refs of pages holding the region's grant refs
 *
 *   response (RSP_BYTES = 56)
 *     0  u32 id
 *     4  u16 op
 *     6  u16 status        MyriStatus: 0 or an mx_return_t code
 *     8  u32 val[8]        per op, below
 *    40  u32 page_ref      a backend page granted read-only to this frontend, or NO_REF:
 *                          on success it holds nr_refs grant refs (u32), on error msg_len
 *                          bytes of UTF-8 saying what went wrong
 *    44  u32 nr_refs
 *    48  u32 msg_len
 *    52  u32 reserved
 *
 *   op               args                                   val / refs on page_ref
 *   OPEN_ENDPOINT    endpoint=id|ANY, a0=key                v0 id, v1 session, v2 window pages,
 *                                                           v3 intr pages, v4 slot (nonzero),
 *                                                           v5 slot id replaced (0: none);
 *                                                           refs: window, intr. A slot is this
 *                                                           domain's own memory: it comes back
 *                                                           with the same refs, so a frontend
 *                                                           may keep its mappings across closes;
 *                                                           when a former peer still mapped its
 *                                                           interrupt page, it comes back with a
 *                                                           fresh one under a new id, v5 naming
 *                                                           the old id (drop its mappings)
 *   CLOSE_ENDPOINT   endpoint                               -
 *   REGISTER         endpoint, a0=access, a1=offset in the  v0 region id, v1 key, v2 length
 *                    first page, a2=length, a3=nr_pages,
 *                    nr_indirect, indirect[] (each page
 *                    holds up to 1024 u32 refs, in order)
 *   DEREGISTER       endpoint, a0=region id                 -
 *   CONNECT          endpoint, a0=peer nic, a1=peer         v0 peer nic, v1 peer endpoint,
 *                    endpoint, a2=key                       v2 peer session, v3 flags (1 =
 *                                                           channel), v4 channel id, v5 side,
 *                                                           v6 channel pages, v7 peer intr
 *                                                           pages; refs: channel, peer intr
 *   ACCEPT_CHANNEL   endpoint, a0=channel id                as CONNECT
 *   INFO             -                                      v0 nic id, v1 NIC endpoints,
 *                                                           v2 0 (reserved), v3 mine,
 *                                                           v4 endpoint quota, v5 registered
 *                                                           pages, v6 page quota, v7 regions
 */
import { PAGE_SIZE } from "../xen/abi.js";
import { ringEntries, ringSlotSize } from "../xen/ring.js";

export const MYRI_DEVICE_TYPE = "myri";
/**
 * The version both ends write in XenStore; a frontend and a backend that differ refuse each
 * other. It covers what the library's peers must agree on beyond the ring too — the window
 * (nic/window.ts) and the channel (channel-abi.ts) a backend hands out. myrixen-2: a sleeping
 * endpoint says "kick me" in its window (W_OWNER_SLEEPING) and in each lane it reads
 * (ReaderSleeping), no longer on its interrupt page, which its peers hold: a myrixen-1 library
 * would never see its peer asleep, and let it sleep out every slice.
 */
export const MYRI_PROTOCOL = "myrixen-2";

/** XenStore keys of the handshake. */
export const XsKey = {
  protocol: "protocol",
  nicId: "nic-id",
  maxEndpoints: "max-endpoints",
  maxRegisteredBytes: "max-registered-bytes",
  maxIndirectPages: "max-indirect-pages",
  maxRegionPages: "max-region-pages",
  maxRegions: "max-regions",
  ringRef: "ring-ref",
  eventChannel: "event-channel",
} as const;

/** Written by the toolstack under the guest's home: its RAM in KiB (as Xen's memory/target). */
export const MEMORY_TARGET_KEY = "memory/target";

export const Op = {
  OPEN_ENDPOINT: 1,
  CLOSE_ENDPOINT: 2,
  REGISTER: 3,
  DEREGISTER: 4,
  CONNECT: 5,
  ACCEPT_CHANNEL: 6,
  INFO: 7,
} as const;
export type OpName = keyof typeof Op;
export const OP_COUNT = 7;

const opNames: string[] = [];
for (const [k, v] of Object.entries(Op)) opNames[v] = k;
export function opName(op: number): string {
  return opNames[op] ?? `UNKNOWN(${op})`;
}

// ---- request layout -------------------------------------------------------------------------

export const REQ_ID = 0;
export const REQ_OP = 4;
export const REQ_NR_INDIRECT = 6;
export const REQ_ENDPOINT = 8;
export const REQ_ARG = 12;
export const REQ_RESERVED = 28;
export const REQ_INDIRECT = 32;
export const MAX_INDIRECT_PAGES = 32;
export const REQ_BYTES = REQ_INDIRECT + 4 * MAX_INDIRECT_PAGES;

// ---- response layout ------------------------------------------------------------------------

export const RSP_ID = 0;
export const RSP_OP = 4;
export const RSP_STATUS = 6;
export const RSP_VAL = 8;
export const RSP_VALS = 8;
export const RSP_PAGE_REF = 40;
export const RSP_NR_REFS = 44;
export const RSP_MSG_LEN = 48;
export const RSP_BYTES = 56;

/** page_ref when the response carries no page. */
export const NO_REF = 0xffffffff;

export const SLOT_BYTES = ringSlotSize(REQ_BYTES, RSP_BYTES);
export const RING_SLOTS = ringEntries(SLOT_BYTES);

// ---- limits ---------------------------------------------------------------------------------

/** Grant refs per indirect page (u32 each). */
export const REFS_PER_PAGE = PAGE_SIZE / 4;
/** Largest region one REGISTER covers: 32 indirect pages × 1024 refs = 32768 pages = 128 MiB. */
export const MAX_REGION_PAGES = MAX_INDIRECT_PAGES * REFS_PER_PAGE;
export const MAX_REGION_BYTES = MAX_REGION_PAGES * PAGE_SIZE;
/** Default per-domain quotas of myrback (Host.start can change them). */
export const DEFAULT_ENDPOINTS_PER_DOMAIN = 8;
export const DEFAULT_REGISTERED_BYTES_PER_DOMAIN = 256 * 1024 * 1024;
/** Regions one domain may hold (the NIC's TPT is shared by everyone on the host). */
export const DEFAULT_REGIONS_PER_DOMAIN = 1024;
/** CONNECT/ACCEPT flag: the response carries a co-resident channel. */
export const CONNECT_FLAG_CHANNEL = 1;
/** CONNECT/ACCEPT flag: after the channel's and the peer's interrupt page's refs, one ref of this member's lane policy page (channel-abi.ts). */
export const CONNECT_FLAG_LANE_POLICY = 2;
/**
 * ACCEPT flag: the channel's connector closed its endpoint before this member took it (an
 * orphan, registry.ts): take what its lane holds, then fail that incarnation. myrback's word,
 * not the lanes' (the closed connector still holds the buffer and can write them).
 */
export const CONNECT_FLAG_CLOSED = 4;

// ---- status ---------------------------------------------------------------------------------

/** Response status: 0 or one of the mx_return_t codes (myriexpress.h values). */
export const MyriStatus = {
  MX_SUCCESS: 0,
  MX_BAD_BAD_BAD: 1,
  MX_FAILURE: 2,
  MX_NOT_INITIALIZED: 4,
  MX_NO_DEV: 5,
  MX_NO_DRIVER: 6,
  MX_NO_PERM: 7,
  MX_BAD_ENDPOINT: 9,
  MX_BAD_SEG_LIST: 10,
  MX_BAD_SEG_MEM: 11,
  MX_BAD_SEG_CNT: 12,
  MX_BAD_REQUEST: 13,
  MX_NO_RESOURCES: 15,
  MX_BUSY: 20,
  MX_BAD_INFO_KEY: 21,
  MX_BAD_NIC: 23,
  MX_TIMEOUT: 30,
  MX_BAD_ENDPOINT_ID: 32,
  MX_CONNECTION_FAILED: 33,
  MX_BAD_CONNECTION_KEY: 34,
  MX_NIC_NOT_FOUND: 36,
  MX_NIC_DEAD: 39,
} as const;
export type MyriStatusName = keyof typeof MyriStatus;

const statusNames = new Map<number, MyriStatusName>(
  Object.entries(MyriStatus).map(([k, v]) => [v, k as MyriStatusName]),
);
/** The MX return code name of a status; MX_BAD_BAD_BAD for a number the protocol does not define. */
export function statusName(status: number): MyriStatusName {
  return statusNames.get(status) ?? "MX_BAD_BAD_BAD";
}

/** An operation refused by myrback (or the native service); `code` is the MX return code name. */
export class MyriError extends Error {
  /** serveSyncCalls passes `errno` to the caller as is. */
  readonly errno: string;
  constructor(
    readonly code: MyriStatusName,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = "MyriError";
    this.errno = code;
  }
}

/** The message without its "MX_…: " prefix. */
export function stripCode(message: string): string {
  return message.replace(/^MX_[A-Z_]+: /, "");
}

// ---- the native service (synchronous calls from processes of the driver domain) ------------

export type NativeRequest =
  /** First call of a process: hands the service the memory it will register from. */
  | { op: "attach"; memory: SharedArrayBuffer }
  | { op: "open_endpoint"; endpointId: number; key: number }
  | { op: "close_endpoint"; endpointId: number }
  | { op: "register_region"; endpointId: number; offset: number; length: number; access: number }
  | { op: "deregister_region"; endpointId: number; regionId: number }
  | { op: "connect"; endpointId: number; peerNic: number; peerEndpoint: number; key: number }
  | { op: "accept_channel"; endpointId: number; channelId: number }
  | { op: "info" };

export interface MyriInfo {
  nicId: number;
  /** Endpoint contexts of the NIC. */
  maxEndpoints: number;
  /** Endpoints this domain (or process) has open, and its quota. */
  endpoints: number;
  endpointQuota: number;
  registeredBytes: number;
  registeredBytesQuota: number;
  regions: number;
}

export interface NativeAttachReply {
  nicId: number;
  maxEndpoints: number;
}

export interface NativeChannelReply {
  channelId: number;
  channel: SharedArrayBuffer;
  side: 0 | 1;
  peerIntr: SharedArrayBuffer;
  /** An accept's channel whose connector closed before it was taken (CONNECT_FLAG_CLOSED). */
  closed?: boolean;
}

export interface NativeConnectReply {
  peerNic: number;
  peerEndpoint: number;
  peerSession: number;
  channel?: NativeChannelReply;
}

/**
 * A native process's link to the native service: Host.startNative puts it in the domain's
 * `args.myrixen`, and the guest runtime takes it out before the program sees its args (the
 * program calls the service through guest.nativeCall, never holding the port).
 */
export interface NativeServiceEndpoint {
  port: import("node:worker_threads").MessagePort;
  replyWord: SharedArrayBuffer;
}

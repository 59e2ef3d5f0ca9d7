/**
 * The Xen public ABI this hypervisor layer speaks: page size, grant-table entry layout and
 * status codes, event-channel states, xenbus states. Values follow xen/include/public/
 * (grant_table.h, event_channel.h, io/xenbus.h) so that a Xen engineer reads them as-is.
 */

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;

/** A domain id (domid_t, 16 bits). Domain 0 is the privileged driver domain. */
export type DomId = number;
export const DOMID_SELF = 0x7ff0;
export const DOMID_MAX = 0x7fef;

// ---- grant_table.h (v1) ----------------------------------------------------------------

/** grant_entry_v1: uint16 flags, domid_t domid, uint32 frame — 8 bytes. */
export const GRANT_ENTRY_BYTES = 8;

export const GTF_invalid = 0;
export const GTF_permit_access = 1;
export const GTF_accept_transfer = 2;
export const GTF_transitive = 3;
export const GTF_type_mask = 3;
/** Set by the guest: the peer may only read. */
export const GTF_readonly = 1 << 2;
/** Set by the hypervisor while the grant is mapped (or copied from / to). */
export const GTF_reading = 1 << 3;
export const GTF_writing = 1 << 4;

/** GNTMAP_* flags of map_grant_ref. */
export const GNTMAP_host_map = 1 << 1;
export const GNTMAP_readonly = 1 << 2;

/** GNTCOPY_* flags of gnttab_copy. */
export const GNTCOPY_source_gref = 1 << 0;
export const GNTCOPY_dest_gref = 1 << 1;

export const GNTST = {
  okay: 0,
  general_error: -1,
  bad_domain: -2,
  bad_gntref: -3,
  bad_handle: -4,
  bad_virt_addr: -5,
  bad_dev_addr: -6,
  no_device_space: -7,
  permission_denied: -8,
  bad_page: -9,
  bad_copy_arg: -10,
  address_too_big: -11,
  eagain: -12,
} as const;
export type GntStatus = (typeof GNTST)[keyof typeof GNTST];

const gntstNames = new Map<number, string>(Object.entries(GNTST).map(([k, v]) => [v, `GNTST_${k}`]));
export function gntstName(status: number): string {
  return gntstNames.get(status) ?? `GNTST_unknown(${status})`;
}

// ---- event_channel.h --------------------------------------------------------------------

export type EvtchnPort = number;
export const EVTCHNSTAT = {
  closed: 0,
  unbound: 1,
  interdomain: 2,
  pirq: 3,
  virq: 4,
  ipi: 5,
} as const;
export type EvtchnStat = (typeof EVTCHNSTAT)[keyof typeof EVTCHNSTAT];
/** The 2-level ABI on 64-bit: 64 × 64 ports. */
export const EVTCHN_MAX_PORTS = 4096;

// ---- io/xenbus.h ------------------------------------------------------------------------

export const XenbusState = {
  Unknown: 0,
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;
export type XenbusState = (typeof XenbusState)[keyof typeof XenbusState];

const xenbusNames = new Map<number, string>(Object.entries(XenbusState).map(([k, v]) => [v, k]));
export function xenbusStateName(state: number): string {
  return xenbusNames.get(state) ?? `Unknown(${state})`;
}

// ---- errno values used by hypercalls and XenStore (Linux numbering, as Xen returns) -----

export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EIO: 5,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
} as const;
export type ErrnoName = keyof typeof Errno;

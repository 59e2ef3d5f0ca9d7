/**
 * The NIC's control interface: what its driver may ask (the driver domain's myrback, or a
 * native process's in-process driver). Requests travel as synchronous calls (xen/sync-call.ts)
 * on a driver's own port; the data path never comes here.
 *
 * Every request is validated by the NIC; a bad one is answered with an errno and a message
 * that says what to fix (`ENOSPC: all 32 endpoint contexts are in use`).
 */
import type { SyncEndpoint } from "../xen/sync-call.js";
import type { QosSettings } from "./qos.js";

/** A byte range of a memory buffer that a registered region covers. Runs are concatenated in order. */
export interface MemoryRun {
  offset: number;
  length: number;
}

export type NicControlRequest =
  /**
   * Opens an endpoint context for `owner` (a label for counters and errors). endpointId may be
   * ANY_ENDPOINT. `window`/`intr`: memory for them (WINDOW_BYTES / INTR_BYTES), which the NIC
   * clears; the driver domain passes memory of the owner's own, so a window a guest once held
   * is only ever reused for that guest. Without them the NIC makes fresh ones.
   */
  | {
      op: "open_endpoint";
      owner: string;
      endpointId: number;
      key: number;
      /**
       * Its QoS share group (a u32; qos.ts): endpoints opened with the same group share one
       * weight, deficit and set of caps. myrback passes the owner domain's id; absent: a share of its own.
       */
      group?: number;
      window?: SharedArrayBuffer;
      intr?: SharedArrayBuffer;
    }
  /** Closes it: outstanding descriptors complete with MX_STATUS_ENDPOINT_CLOSED, its regions are removed. */
  | { op: "close_endpoint"; endpointId: number }
  /** Installs a TPT entry for `endpointId`'s owner: `runs` of `memory`, with Access bits. */
  | {
      op: "register_region";
      endpointId: number;
      memory: SharedArrayBuffer;
      runs: MemoryRun[];
      access: number;
    }
  | { op: "deregister_region"; endpointId: number; regionId: number }
  /**
   * Connect-time check of a peer endpoint on this NIC: its key, session, and interrupt page.
   * `requester`: the endpoint of this NIC the driver connects for — its wrong keys are
   * throttled as a CONNECT descriptor's are (connect-throttle.ts). Without it, no throttle.
   */
  | { op: "lookup_endpoint"; endpointId: number; key: number; requester?: number }
  /**
   * Writes an event of type Driver with `words` (up to 4, at E_EXTRA) into an endpoint's queue
   * and raises it. EAGAIN: the queue is full and the backlog has no room for it (what is left
   * is kept for the completions the NIC owes the endpoint; events.ts).
   */
  | { op: "deliver_event"; endpointId: number; cookie: number; words: number[] }
  /**
   * The NIC's Ethernet port (ether-port.ts), for the driver domain's bridge: one per NIC,
   * created on the first call; later calls return the same buffer.
   */
  | { op: "open_ether_port" }
  /**
   * An open endpoint's weight and caps (nic/qos.ts): the driver's policy for its owner.
   * Answers the settings now in force.
   */
  | { op: "set_qos"; endpointId: number; settings: QosSettings }
  /**
   * The domain `group` stood for is gone: the cap debt it left when its last endpoint closed
   * (qos.ts) is forgotten, so that a later domain given its id does not start in its debt.
   */
  | { op: "forget_group"; group: number }
  | { op: "info" };

export interface OpenEtherPortReply {
  /** The port's shared memory: hand it to `new EtherPortClient(port)`. */
  port: SharedArrayBuffer;
}

export interface OpenEndpointReply {
  endpointId: number;
  session: number;
  window: SharedArrayBuffer;
  intr: SharedArrayBuffer;
}

export interface RegisterRegionReply {
  regionId: number;
  /** The key a peer must present to PULL from this region (MX's rkey). */
  key: number;
  length: number;
}

export type LookupReply =
  | { status: "ok"; session: number; intr: SharedArrayBuffer; owner: string }
  | { status: "bad_key" }
  /** Too many wrong keys from the requester: try again after `retryAfterMs`. */
  | { status: "throttled"; retryAfterMs: number }
  | { status: "unknown" };

export interface NicInfo {
  nicId: number;
  maxEndpoints: number;
  openEndpoints: number[];
  regions: number;
  /** Peer NICs with a link attached now (up), ascending. */
  links: number[];
  /**
   * Every peer the NIC knows a link for, ascending: "up" (attached) or "down" (lost, and a
   * reconnecting TCP link is retrying it); `reconnects` counts re-attachments after a loss.
   */
  linkStates?: LinkStateInfo[];
  /** Whether the Ethernet port has been opened. */
  etherPort?: boolean;
  /** Open endpoints whose weight or caps are not the default (set_qos), ascending. */
  qos?: { endpointId: number; settings: QosSettings }[];
  /** Open endpoints that share one QoS slot (one weight, deficit and set of caps: one domain's), two or more each. */
  qosShares?: number[][];
  /** Share groups (domains) with no endpoint open whose cap debt is kept until paid (qos.ts `owed`), ascending. */
  qosOwed?: number[];
}

export interface LinkStateInfo {
  peerNic: number;
  state: "up" | "down";
  reconnects: number;
}

/** What a thread needs to drive the NIC: a sync-call endpoint (port + reply word). */
export type NicDriverEndpoint = SyncEndpoint;

/** Whether a control request's field is an integer. */
export function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

/** Whether a control request's field fits a 32-bit word (as u32 or i32). */
export function isWord(v: unknown): v is number {
  return isInt(v) && v >= -0x80000000 && v <= 0xffffffff;
}

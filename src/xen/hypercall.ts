/**
 * The hypercall channel between a domain's thread and the hypervisor thread.
 *
 * A hypercall is synchronous for the guest, as a trap into Xen is: the guest posts the
 * request on its own MessagePort, blocks on a word of a small shared page (spin, then
 * Atomics.wait), and takes the reply with `receiveMessageOnPort`, so a guest never needs
 * its event loop to make a hypercall. XenStore traffic and asynchronous notices (watch
 * events) use a second port that the guest's event loop listens on, as xenstored is a
 * daemon reached through its own ring.
 *
 * Hypercalls are the control path only. Nothing on a data path (event-channel sends,
 * waits, ring traffic, privileged grant copies) comes through here.
 */
import type { MessagePort } from "node:worker_threads";
import type { DomId, EvtchnPort } from "./abi.js";
import type { GrantCopyOp } from "./grant-table.js";
import { answerSyncCall, SyncCallClient, SyncCallFailed } from "./sync-call.js";
import type { XenStoreRequest } from "./xenstore.js";

export type HypercallRequest =
  /**
   * Maps grants of `domid`. Writable: `refs` must grant, in order, every page of one shared
   * segment (or, for the privileged domain, consecutive RAM frames), and the mapping is that
   * segment's buffer. Read-only: any granted frames; no buffer is handed out, the mapping is
   * a standing right to copy (grant_read), re-checked against the grant on every read.
   */
  | { op: "grant_map"; domid: DomId; ref?: number; refs?: number[]; readonly: boolean }
  | { op: "grant_unmap"; handle: number }
  /** A copy of `length` bytes at `offset` of a read-only mapping (the grants must still be in force). */
  | { op: "grant_read"; handle: number; offset: number; length: number }
  | { op: "grant_copy"; ops: GrantCopyOp[] }
  | { op: "evtchn_alloc_unbound"; remoteDom: DomId }
  | { op: "evtchn_bind_interdomain"; remoteDom: DomId; remotePort: EvtchnPort }
  | { op: "evtchn_close"; port: EvtchnPort }
  | { op: "evtchn_status"; port: EvtchnPort }
  /**
   * A fresh shared segment of `pages` pages, made by the hypervisor (never a buffer the
   * domain brings): `audience` lists the domains that may ever map it writable; without
   * one, the first domain to map it becomes its only audience.
   */
  | { op: "mem_alloc_shared"; pages: number; audience?: DomId[] }
  /** Adds `domid` to the audience of the caller's segment that starts at `pfn`. */
  | { op: "mem_share"; pfn: number; domid: DomId }
  /** Gives a segment back: its frames stop resolving for anyone (mappings already made stay). */
  | { op: "mem_release_shared"; pfn: number }
  /** Privileged only: a domain's RAM, grant table and shadow, to check and copy grants in place. */
  | { op: "foreign_domain"; domid: DomId }
  /**
   * Privileged only: frame `pfn` (above RAM) of `domid`: the segment holding it, or the run of
   * frames around it no segment holds, as of segment generation `gen`.
   */
  | { op: "foreign_frame"; domid: DomId; pfn: number };

export type { SyncReply as HypercallReply } from "./sync-call.js";

/** Messages on the asynchronous port. */
export type AsyncToHypervisor = { kind: "xenstore"; id: number; req: XenStoreRequest };
export type AsyncToGuest =
  | { kind: "xenstore-reply"; id: number; ok: true; value: unknown }
  | { kind: "xenstore-reply"; id: number; ok: false; error: { errno: string; message: string; path: string } }
  | { kind: "watch"; path: string; token: string }
  | { kind: "domain-gone"; domid: DomId };

export class HypercallFailed extends SyncCallFailed {
  constructor(errno: string, message: string) {
    super(errno, message);
    this.name = "HypercallFailed";
  }
}

/** The guest's end: issue a hypercall and block until the hypervisor answers. */
export class HypercallClient extends SyncCallClient<HypercallRequest> {
  constructor(port: MessagePort, replyWord: SharedArrayBuffer) {
    super(port, replyWord, (errno, message) => new HypercallFailed(errno, message));
  }
}

export { answerSyncCall as answerHypercall };

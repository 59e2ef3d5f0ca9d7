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
import { wireList, wireRecord, wireScalar } from "./wire-values.js";
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

/**
 * The most entries a hypercall's list carries on the wire: a segment's pages (grant_map's
 * refs) and a grant_copy batch. The hypervisor holds each list to its own limit after.
 */
export const HYPERCALL_LIST_MAX = 4096;

/** Each op's scalar fields, and its list of scalars if it has one: the whole wire contract. */
const SCALARS: Readonly<Record<HypercallRequest["op"], readonly string[]>> = {
  grant_map: ["domid", "ref", "readonly"],
  grant_unmap: ["handle"],
  grant_read: ["handle", "offset", "length"],
  grant_copy: [],
  evtchn_alloc_unbound: ["remoteDom"],
  evtchn_bind_interdomain: ["remoteDom", "remotePort"],
  evtchn_close: ["port"],
  evtchn_status: ["port"],
  mem_alloc_shared: ["pages"],
  mem_share: ["pfn", "domid"],
  mem_release_shared: ["pfn"],
  foreign_domain: ["domid"],
  foreign_frame: ["domid", "pfn"],
};
const SCALAR_LISTS: Readonly<Partial<Record<HypercallRequest["op"], string>>> = {
  grant_map: "refs",
  mem_alloc_shared: "audience",
};
const COPY_SIDE = ["domid", "ref", "gmfn", "offset"] as const;

/**
 * A hypercall as it goes to the hypervisor's thread (wire-values.ts says why): a fresh object
 * of its op's fields, each read once, primitives only; refs and audience lists of at most
 * HYPERCALL_LIST_MAX numbers; grant_copy's ops as many plain copies. An unknown op goes by its
 * name alone (the hypervisor answers ENOSYS). Throws HypercallFailed EINVAL.
 */
export function hypercallOnWire(req: unknown): HypercallRequest {
  const fail = (why: string) => new HypercallFailed("EINVAL", why);
  if (typeof req !== "object" || req === null) throw fail("hypercall must be an object");
  const r = req as Record<string, unknown>;
  const op = wireScalar(r.op, "hypercall op", fail);
  if (typeof op !== "string" || !Object.hasOwn(SCALARS, op)) return { op } as unknown as HypercallRequest;
  const known = op as HypercallRequest["op"];
  const out = wireRecord(r, known, SCALARS[known], fail) as Record<string, unknown>;
  out.op = known;
  const list = SCALAR_LISTS[known];
  if (list !== undefined && r[list] !== undefined)
    out[list] = wireList(r[list], `${known}: ${list}`, HYPERCALL_LIST_MAX, fail, (x, i) =>
      wireScalar(x, `${known}: ${list}[${i}]`, fail),
    );
  if (known === "grant_copy")
    out.ops = wireList(r.ops, "grant_copy: ops", HYPERCALL_LIST_MAX, fail, (x, i) => {
      const c = wireRecord(x, `grant_copy: ops[${i}]`, ["len"], fail);
      if (typeof c !== "object" || c === null) return c;
      const o = x as Record<string, unknown>;
      return {
        ...c,
        source: wireRecord(o.source, `grant_copy: ops[${i}].source`, COPY_SIDE, fail),
        dest: wireRecord(o.dest, `grant_copy: ops[${i}].dest`, COPY_SIDE, fail),
      };
    });
  return out as unknown as HypercallRequest;
}

/**
 * The guest's end: issue a hypercall and block until the hypervisor answers. Every request is
 * rebuilt by hypercallOnWire first, inside SyncCallClient.call, the only code that reaches the
 * port (an override here was a method a guest could step around).
 */
export class HypercallClient extends SyncCallClient<HypercallRequest> {
  constructor(port: MessagePort, replyWord: SharedArrayBuffer) {
    super(port, replyWord, (errno, message) => new HypercallFailed(errno, message), hypercallOnWire);
  }
}

export { answerSyncCall as answerHypercall };

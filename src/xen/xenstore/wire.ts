/**
 * XenStore's wire protocol, kept apart from the daemon as Xen keeps io/xs_wire.h: the
 * primitive operations a client sends (a request small enough to post between threads as
 * is) and the one function that runs a request for the domain whose channel it came on.
 * Requests may come from untrusted guests: a malformed one is an EINVAL, never an exception
 * of another kind.
 */

import type { DomId } from "../abi.js";
import { type WireScalar, wireKind, wireList, wireRecord, wireScalar } from "../wire-values.js";
import { safeJson, XenStoreError } from "./errors.js";
import {
  pathTooLong,
  XENSTORE_ABS_PATH_MAX,
  XENSTORE_PAYLOAD_MAX,
  XENSTORE_VALUE_MAX,
  type XenStorePerm,
} from "./paths.js";
import type { XenStore } from "./store.js";

export type XenStoreOp =
  | "read"
  | "write"
  | "mkdir"
  | "rm"
  | "directory"
  | "getPerms"
  | "setPerms"
  | "txStart"
  | "txEnd"
  | "watch"
  | "unwatch";

/** One request, small enough to post between threads (structured clone) as is. */
export interface XenStoreRequest {
  op: XenStoreOp;
  path?: string;
  value?: string;
  perms?: XenStorePerm[];
  tx?: number;
  token?: string;
  commit?: boolean;
}

const REQUEST_OPS: ReadonlySet<string> = new Set<XenStoreOp>([
  "read",
  "write",
  "mkdir",
  "rm",
  "directory",
  "getPerms",
  "setPerms",
  "txStart",
  "txEnd",
  "watch",
  "unwatch",
]);

function unknownRequest(op: unknown): XenStoreError {
  return new XenStoreError(
    "EINVAL",
    "",
    `unknown XenStore request ${safeJson(op)}; use one of ${[...REQUEST_OPS].join(", ")}`,
  );
}

/**
 * The most entries a perms list carries on the wire: what fits one request's payload in
 * xs_wire.h (XENSTORE_PAYLOAD_MAX bytes, "r32752" and its NUL each). The store then holds an
 * unprivileged domain to its quota (5).
 */
export const XENSTORE_WIRE_PERMS_MAX = 512;

/**
 * A request as it goes to xenstored's thread (../wire-values.ts says why): a fresh object of
 * the request's fields, each read once; path, value and token strings no longer than the
 * store takes (a value's UTF-8 bytes are at least its characters), perms a list of at most
 * XENSTORE_WIRE_PERMS_MAX {dom, access}, the rest primitives. What the fields mean is the
 * store's to check. Throws XenStoreError EINVAL, with the store's words where it has them.
 */
export function xenStoreRequestOnWire(req: unknown): XenStoreRequest {
  if (typeof req !== "object" || req === null) throw unknownRequest(req);
  const r = req as Record<string, unknown>;
  const fail = (why: string) => new XenStoreError("EINVAL", "", why);
  const out: Record<string, WireScalar | WireScalar[] | Record<string, WireScalar>[]> = {
    op: wireScalar(r.op, "XenStore request op", fail),
  };
  const path = r.path;
  if (typeof path === "string" && path.length > XENSTORE_ABS_PATH_MAX) throw pathTooLong(path);
  if (path !== undefined) out.path = wireScalar(path, "path", fail, XENSTORE_ABS_PATH_MAX);
  const named = typeof path === "string" ? path : "the node";
  const value = r.value;
  if (typeof value === "string" && value.length > XENSTORE_VALUE_MAX)
    throw new XenStoreError(
      "EINVAL",
      named,
      `value for ${named} is at least ${value.length} bytes; the limit is ${XENSTORE_VALUE_MAX} (store a grant reference to a page instead)`,
    );
  if (typeof value === "object" && value !== null)
    throw new XenStoreError("EINVAL", named, `value for ${named} must be a string, got ${wireKind(value)}`);
  if (value !== undefined) out.value = wireScalar(value, "value", fail, XENSTORE_VALUE_MAX);
  const token = r.token;
  if (typeof token === "string" && token.length > XENSTORE_PAYLOAD_MAX)
    throw new XenStoreError(
      "EINVAL",
      named,
      `watch token is ${token.length} characters long; a watch's path and token together must fit in ${XENSTORE_PAYLOAD_MAX} bytes (use a short token)`,
    );
  if (token !== undefined) out.token = wireScalar(token, "token", fail, XENSTORE_PAYLOAD_MAX);
  for (const f of ["tx", "commit"] as const) {
    const v = r[f];
    if (v !== undefined) out[f] = wireScalar(v, f, fail);
  }
  const perms = r.perms;
  // A list too long is what the store says of one over a guest's quota: ENOSPC.
  const tooMany = (why: string) =>
    new XenStoreError(
      "ENOSPC",
      named,
      `${why} (an unprivileged domain's node lists at most its quota, 5 by default)`,
    );
  if (Array.isArray(perms))
    out.perms = wireList(perms, `perms for ${named}`, XENSTORE_WIRE_PERMS_MAX, tooMany, (p, i) =>
      wireRecord(p, `perms[${i}] for ${named}`, ["dom", "access"], fail),
    ) as Record<string, WireScalar>[];
  else if (perms !== undefined) out.perms = wireScalar(perms, `perms for ${named}`, fail);
  return out as unknown as XenStoreRequest;
}

/**
 * Runs one request for `caller` (the domain the channel belongs to, never a field of the
 * request: a guest cannot speak for another domain). Results: read → string, directory →
 * string[], getPerms → XenStorePerm[], txStart → number, everything else → undefined. Watch
 * events of a watch set here go to `onWatchEvent(path, token, watchPath)`. Throws XenStoreError, also
 * for malformed requests, which may come from untrusted guests.
 */
export function executeXenStoreRequest(
  store: XenStore,
  caller: DomId,
  req: XenStoreRequest,
  onWatchEvent: (path: string, token: string, watchPath: string) => void,
): unknown {
  if (typeof req !== "object" || req === null || typeof req.op !== "string" || !REQUEST_OPS.has(req.op)) {
    throw unknownRequest(typeof req === "object" && req !== null ? (req as { op?: unknown }).op : req);
  }
  const path = req.path as string; // each store method validates its path and value
  switch (req.op) {
    case "read":
      return store.read(caller, path, req.tx);
    case "write":
      return store.write(caller, path, req.value as string, req.tx);
    case "mkdir":
      return store.mkdir(caller, path, req.tx);
    case "rm":
      return store.rm(caller, path, req.tx);
    case "directory":
      return store.directory(caller, path, req.tx);
    case "getPerms":
      return store.getPerms(caller, path, req.tx);
    case "setPerms":
      return store.setPerms(caller, path, req.perms as XenStorePerm[], req.tx);
    case "txStart":
      return store.transactionStart(caller);
    case "txEnd":
      if (typeof req.commit !== "boolean") {
        throw new XenStoreError("EINVAL", "", "txEnd needs commit: true (apply) or false (abort)");
      }
      return store.transactionEnd(caller, req.tx as number, req.commit);
    case "watch":
      return store.watch(caller, path, req.token as string, onWatchEvent);
    case "unwatch":
      return store.unwatch(caller, path, req.token as string);
  }
}

/**
 * XenStore's wire protocol, kept apart from the daemon as Xen keeps io/xs_wire.h: the
 * primitive operations a client sends (a request small enough to post between threads as
 * is) and the one function that runs a request for the domain whose channel it came on.
 * Requests may come from untrusted guests: a malformed one is an EINVAL, never an exception
 * of another kind.
 */

import type { DomId } from "../abi.js";
import { safeJson, XenStoreError } from "./errors.js";
import type { XenStorePerm } from "./paths.js";
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
    const op = typeof req === "object" && req !== null ? (req as { op?: unknown }).op : req;
    throw new XenStoreError(
      "EINVAL",
      "",
      `unknown XenStore request ${safeJson(op)}; use one of ${[...REQUEST_OPS].join(", ")}`,
    );
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

/**
 * XenStore, cut as xenstored is (and with its wire format apart, as Xen keeps io/xs_wire.h),
 * one concern per file under xenstore/, each importing only the files listed after it:
 *
 *   client.ts   what host code and guests use: RequestXenStoreClient, LocalXenStoreClient
 *   wire.ts     the requests a client sends, and executeXenStoreRequest (the only way in)
 *   store.ts    XenStore, the daemon: domains, node operations, transactions, quotas
 *   watches.ts  who watches what, who may hear of a change, delivery
 *   tree.ts     the live tree and a transaction's copy-on-write view
 *   paths.ts    paths, permissions and limits: xenstored's rules as pure functions
 *   errors.ts   XenStoreError, which crosses threads unchanged
 *
 * This file is only the list of what the rest of MyriXen may use.
 */

export {
  DEFAULT_TRANSACTION_RETRIES,
  LocalXenStoreClient,
  RequestXenStoreClient,
  type XenStoreClient,
  type XenStoreTransactionOptions,
  type XenStoreTx,
} from "./xenstore/client.js";
export { XenStoreError, type XenStoreErrorWire } from "./xenstore/errors.js";
export {
  canonicalizePath,
  DEFAULT_XENSTORE_QUOTAS,
  formatPerms,
  getDomainPath,
  parsePerms,
  SPECIAL_WATCH_PATHS,
  XENSTORE_ABS_PATH_MAX,
  XENSTORE_VALUE_MAX,
  type XenStoreAccess,
  type XenStorePerm,
  type XenStoreQuotas,
} from "./xenstore/paths.js";
export {
  XenStore,
  type XenStoreDomainStats,
  type XenStoreOptions,
  type XenStoreTreeNode,
} from "./xenstore/store.js";
export type { XenStoreWatchCallback } from "./xenstore/watches.js";
export {
  executeXenStoreRequest,
  XENSTORE_WIRE_PERMS_MAX,
  type XenStoreOp,
  type XenStoreRequest,
  xenStoreRequestOnWire,
} from "./xenstore/wire.js";

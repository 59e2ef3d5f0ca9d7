/**
 * XenStore's paths and permissions, as xenstored's rules state them: the limits, path
 * validation and canonical form, the permission list (the first entry names the owner and
 * everyone's default access), what a domain may do with a node, and how a new node inherits
 * its parent's perms. Pure functions: the store (store.ts), the transaction view (tree.ts)
 * and the clients all check the same way.
 */

import { DOMID_MAX, type DomId } from "../abi.js";
import { safeJson, XenStoreError } from "./errors.js";

export const XENSTORE_ABS_PATH_MAX = 3072;
export const XENSTORE_VALUE_MAX = 4096;
/** The most a request's payload may carry (xs_wire.h XENSTORE_PAYLOAD_MAX): a watch's path and token together. */
export const XENSTORE_PAYLOAD_MAX = 4096;
export const SPECIAL_WATCH_PATHS = ["@introduceDomain", "@releaseDomain"] as const;

export interface XenStoreQuotas {
  maxNodesPerDomain: number;
  maxWatchesPerDomain: number;
  maxTransactionsPerDomain: number;
  /** Entries in the perms list an unprivileged domain sets on a node (xenstored's quota-perms). */
  maxPermsPerNode: number;
  /**
   * Paths an unprivileged domain's transaction may look at, and changes it may make
   * (xenstored's quota-trans-nodes): what a transaction keeps until it ends.
   */
  maxTransactionNodes: number;
  /** Bytes of paths and values one such transaction may keep. */
  maxTransactionBytes: number;
}
export const DEFAULT_XENSTORE_QUOTAS: Readonly<XenStoreQuotas> = {
  maxNodesPerDomain: 1000,
  maxWatchesPerDomain: 128,
  maxTransactionsPerDomain: 16,
  maxPermsPerNode: 5,
  maxTransactionNodes: 1024,
  maxTransactionBytes: 256 * 1024,
};

/** 'n' none, 'r' read, 'w' write, 'b' both — xenstored's letters. */
export type XenStoreAccess = "n" | "r" | "w" | "b";
export interface XenStorePerm {
  readonly dom: DomId;
  readonly access: XenStoreAccess;
}

// ---- paths and perms --------------------------------------------------------------------------

export function getDomainPath(domid: DomId): string {
  return `/local/domain/${domid}`;
}

const BAD_PATH_CHAR = /[^A-Za-z0-9_@\-./]/;

/** Absolute, validated form of `path`; relative paths are under the caller's home. */
export function canonicalizePath(caller: DomId, path: unknown, allowSpecial = false): string {
  if (typeof path !== "string") {
    throw new XenStoreError("EINVAL", "", `path must be a string, got ${typeof path}`);
  }
  if (path === "") {
    throw new XenStoreError(
      "EINVAL",
      path,
      "empty path; give an absolute path such as /local/domain/1/device, or one relative to the caller's home",
    );
  }
  if (path.startsWith("@")) {
    if (allowSpecial && (SPECIAL_WATCH_PATHS as readonly string[]).includes(path)) return path;
    throw new XenStoreError(
      "EINVAL",
      path,
      `${JSON.stringify(path)} is not a node path: only watches may name the special paths ${SPECIAL_WATCH_PATHS.join(" and ")}`,
    );
  }
  const abs = path.startsWith("/") ? path : `${getDomainPath(caller)}/${path}`;
  const bad = BAD_PATH_CHAR.exec(abs);
  if (bad) {
    throw new XenStoreError(
      "EINVAL",
      path,
      `path ${JSON.stringify(path)} contains ${JSON.stringify(bad[0])}; allowed characters are A-Z a-z 0-9 _ @ - . /`,
    );
  }
  if (abs.length > XENSTORE_ABS_PATH_MAX) throw pathTooLong(abs);
  if (abs !== "/") {
    if (abs.endsWith("/")) {
      throw new XenStoreError(
        "EINVAL",
        path,
        `path ${JSON.stringify(path)} ends with '/'; drop the trailing slash`,
      );
    }
    if (abs.includes("//")) {
      throw new XenStoreError(
        "EINVAL",
        path,
        `path ${JSON.stringify(path)} has an empty component ('//'); separate names with a single '/'`,
      );
    }
  }
  return abs;
}

/** The refusal of a path longer than XENSTORE_ABS_PATH_MAX (by the store, or a guest's runtime before it posts). */
export function pathTooLong(path: string): XenStoreError {
  return new XenStoreError(
    "EINVAL",
    path.slice(0, 64),
    `path is ${path.length} characters long; the limit is ${XENSTORE_ABS_PATH_MAX}`,
  );
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

export function childPath(parent: string, name: string): string {
  return parent === "/" ? `/${name}` : `${parent}/${name}`;
}

export function isAncestorOrSelf(a: string, b: string): boolean {
  if (a === b) return true;
  if (a === "/") return b.startsWith("/");
  return b.startsWith(`${a}/`);
}

export function validateValue(value: unknown, path: string): string {
  if (typeof value !== "string") {
    throw new XenStoreError("EINVAL", path, `value for ${path} must be a string, got ${typeof value}`);
  }
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes > XENSTORE_VALUE_MAX) {
    throw new XenStoreError(
      "EINVAL",
      path,
      `value for ${path} is ${bytes} bytes; the limit is ${XENSTORE_VALUE_MAX} (store a grant reference to a page instead)`,
    );
  }
  return value;
}

export function validateDomId(dom: unknown, what: string): DomId {
  if (typeof dom !== "number" || !Number.isInteger(dom) || dom < 0 || dom > DOMID_MAX) {
    throw new XenStoreError(
      "EINVAL",
      "",
      `${what} must be a domain id 0..${DOMID_MAX}, got ${safeJson(dom)}`,
    );
  }
  return dom;
}

export function validatePerms(perms: unknown, path: string): XenStorePerm[] {
  if (!Array.isArray(perms) || perms.length === 0) {
    throw new XenStoreError(
      "EINVAL",
      path,
      `perms for ${path} must be a non-empty list; the first entry is the owner and the default access, e.g. [{dom: 1, access: "n"}, {dom: 0, access: "r"}]`,
    );
  }
  const named = new Set<DomId>();
  return perms.map((p: unknown, i) => {
    const o = (typeof p === "object" && p !== null ? p : {}) as Record<string, unknown>;
    const access = o.access;
    if (access !== "n" && access !== "r" && access !== "w" && access !== "b") {
      throw new XenStoreError(
        "EINVAL",
        path,
        `perms[${i}] for ${path} has access ${safeJson(access)}; use "n" (none), "r" (read), "w" (write) or "b" (both)`,
      );
    }
    const dom = validateDomId(o.dom, `perms[${i}].dom for ${path}`);
    // The owner may be listed again (its entry is the default access); anyone else once.
    if (i > 0 && named.has(dom)) {
      throw new XenStoreError(
        "EINVAL",
        path,
        `perms for ${path} name domain ${dom} twice; give each domain one entry`,
      );
    }
    if (i > 0) named.add(dom);
    return { dom, access };
  });
}

/** xenstore-ls style: "n0,r5". */
export function formatPerms(perms: readonly XenStorePerm[]): string {
  return perms.map((p) => `${p.access}${p.dom}`).join(",");
}

/** Parses "n0,r5" (the xenstore-chmod notation) into a perms list. */
export function parsePerms(text: string): XenStorePerm[] {
  const perms = text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s) => {
      const m = /^([nrwb])(\d+)$/.exec(s);
      if (!m) {
        throw new XenStoreError(
          "EINVAL",
          "",
          `bad permission ${JSON.stringify(s)}: write a letter n/r/w/b followed by a domain id, e.g. "n0,r5"`,
        );
      }
      return { dom: Number(m[2]), access: m[1] as XenStoreAccess };
    });
  return validatePerms(perms, "");
}

export function accessFor(caller: DomId, perms: readonly XenStorePerm[]): XenStoreAccess {
  // Owners and the privileged domain get it all (xenstored perm_for_conn).
  if (caller === 0 || perms[0].dom === caller) return "b";
  for (let i = 1; i < perms.length; i++) if (perms[i].dom === caller) return perms[i].access;
  return perms[0].access;
}

export const canRead = (a: XenStoreAccess) => a === "r" || a === "b";
export const canWrite = (a: XenStoreAccess) => a === "w" || a === "b";
const accessWords: Record<XenStoreAccess, string> = { n: "none", r: "read", w: "write", b: "read+write" };

export function describePerms(perms: readonly XenStorePerm[]): string {
  const rest = perms.slice(1).map((p) => `, domain ${p.dom}: ${accessWords[p.access]}`);
  return `owner ${perms[0].dom}, others: ${accessWords[perms[0].access]}${rest.join("")}`;
}

export function inheritPerms(parent: readonly XenStorePerm[], creator: DomId): XenStorePerm[] {
  const perms = parent.map((p) => ({ ...p }));
  if (creator !== 0) perms[0] = { dom: creator, access: perms[0].access };
  return perms;
}

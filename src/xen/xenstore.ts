/**
 * XenStore: the hierarchical store all domains share for configuration and the xenbus
 * handshake, with xenstored's permission model, watches, transactions and per-domain quotas;
 * plus the client interface that host code and guests use to reach it (directly in the main
 * thread through LocalXenStoreClient, or over a message channel with a RequestXenStoreClient).
 *
 * Rules followed (xenstored's, tools/xenstore/xenstored_core.c and docs/misc/xenstore.txt):
 * - perms: the first entry names the owner and the access of everyone not listed; later
 *   entries grant one domain an access. The owner and domain 0 always have full access.
 * - a new node inherits its parent's perms; when the creator is unprivileged it becomes the
 *   owner (so a guest owns what it creates). Creating needs write access to the nearest
 *   existing ancestor.
 * - a missing node whose nearest existing ancestor the caller may not read/write reports
 *   EACCES, not ENOENT, so a guest cannot probe other domains' trees.
 * - quotas bind unprivileged domains only: nodes owned → ENOSPC, watches → E2BIG, open
 *   transactions → ENOSPC (not EAGAIN: EAGAIN means "retry the transaction" to every client).
 * - domain 0 is introduced when the store is built; other domains must be introduced before
 *   they may issue requests, and lose that right when released.
 */

import { DOMID_MAX, type DomId, Errno, type ErrnoName } from "./abi.js";

export const XENSTORE_ABS_PATH_MAX = 3072;
export const XENSTORE_VALUE_MAX = 4096;
export const SPECIAL_WATCH_PATHS = ["@introduceDomain", "@releaseDomain"] as const;

export interface XenStoreQuotas {
  maxNodesPerDomain: number;
  maxWatchesPerDomain: number;
  maxTransactionsPerDomain: number;
}
export const DEFAULT_XENSTORE_QUOTAS: Readonly<XenStoreQuotas> = {
  maxNodesPerDomain: 1000,
  maxWatchesPerDomain: 128,
  maxTransactionsPerDomain: 16,
};

/** 'n' none, 'r' read, 'w' write, 'b' both — xenstored's letters. */
export type XenStoreAccess = "n" | "r" | "w" | "b";
export interface XenStorePerm {
  readonly dom: DomId;
  readonly access: XenStoreAccess;
}

// ---- errors ---------------------------------------------------------------------------------

export interface XenStoreErrorWire {
  name: "XenStoreError";
  errno: ErrnoName;
  path: string;
  message: string;
}

export class XenStoreError extends Error {
  override readonly name = "XenStoreError";
  readonly errno: ErrnoName;
  readonly path: string;

  /** `detail` says what went wrong and what to fix; the message is `ERRNO: detail`. */
  constructor(errno: ErrnoName, path: string, detail: string) {
    super(`${errno}: ${detail}`);
    this.errno = errno;
    this.path = path;
  }

  /** Numeric errno (Linux numbering), as xenstored would put in an XS_ERROR reply. */
  get code(): number {
    return Errno[this.errno];
  }

  toJSON(): XenStoreErrorWire {
    return { name: "XenStoreError", errno: this.errno, path: this.path, message: this.message };
  }

  /** Rebuilds an error that crossed a message boundary (structured clone or JSON). */
  static fromWire(obj: unknown): XenStoreError {
    if (typeof obj === "object" && obj !== null) {
      const o = obj as Record<string, unknown>;
      if (typeof o.errno === "string" && Object.hasOwn(Errno, o.errno) && typeof o.message === "string") {
        const errno = o.errno as ErrnoName;
        const prefix = `${errno}: `;
        const detail = o.message.startsWith(prefix) ? o.message.slice(prefix.length) : o.message;
        return new XenStoreError(errno, typeof o.path === "string" ? o.path : "", detail);
      }
    }
    return new XenStoreError("EIO", "", `malformed error reply from XenStore: ${safeJson(obj)}`);
  }

  static is(err: unknown, errno?: ErrnoName): err is XenStoreError {
    return err instanceof XenStoreError && (errno === undefined || err.errno === errno);
  }
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
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
  if (abs.length > XENSTORE_ABS_PATH_MAX) {
    throw new XenStoreError(
      "EINVAL",
      abs.slice(0, 64),
      `path is ${abs.length} characters long; the limit is ${XENSTORE_ABS_PATH_MAX}`,
    );
  }
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

function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function childPath(parent: string, name: string): string {
  return parent === "/" ? `/${name}` : `${parent}/${name}`;
}

function isAncestorOrSelf(a: string, b: string): boolean {
  if (a === b) return true;
  if (a === "/") return b.startsWith("/");
  return b.startsWith(`${a}/`);
}

function validateValue(value: unknown, path: string): string {
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

function validateDomId(dom: unknown, what: string): DomId {
  if (typeof dom !== "number" || !Number.isInteger(dom) || dom < 0 || dom > DOMID_MAX) {
    throw new XenStoreError(
      "EINVAL",
      "",
      `${what} must be a domain id 0..${DOMID_MAX}, got ${safeJson(dom)}`,
    );
  }
  return dom;
}

function validatePerms(perms: unknown, path: string): XenStorePerm[] {
  if (!Array.isArray(perms) || perms.length === 0) {
    throw new XenStoreError(
      "EINVAL",
      path,
      `perms for ${path} must be a non-empty list; the first entry is the owner and the default access, e.g. [{dom: 1, access: "n"}, {dom: 0, access: "r"}]`,
    );
  }
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
    return { dom: validateDomId(o.dom, `perms[${i}].dom for ${path}`), access };
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

function accessFor(caller: DomId, perms: readonly XenStorePerm[]): XenStoreAccess {
  // Owners and the privileged domain get it all (xenstored perm_for_conn).
  if (caller === 0 || perms[0].dom === caller) return "b";
  for (let i = 1; i < perms.length; i++) if (perms[i].dom === caller) return perms[i].access;
  return perms[0].access;
}

const canRead = (a: XenStoreAccess) => a === "r" || a === "b";
const canWrite = (a: XenStoreAccess) => a === "w" || a === "b";
const accessWords: Record<XenStoreAccess, string> = { n: "none", r: "read", w: "write", b: "read+write" };

function describePerms(perms: readonly XenStorePerm[]): string {
  const rest = perms.slice(1).map((p) => `, domain ${p.dom}: ${accessWords[p.access]}`);
  return `owner ${perms[0].dom}, others: ${accessWords[perms[0].access]}${rest.join("")}`;
}

function inheritPerms(parent: readonly XenStorePerm[], creator: DomId): XenStorePerm[] {
  const perms = parent.map((p) => ({ ...p }));
  if (creator !== 0) perms[0] = { dom: creator, access: perms[0].access };
  return perms;
}

// ---- the tree, and a transaction's private view of it ---------------------------------------

interface NodeInfo {
  readonly value: string;
  readonly perms: readonly XenStorePerm[];
  names(): string[];
}

/** What the operations need from a tree: the live store and a transaction both provide it. */
interface View {
  get(path: string): NodeInfo | undefined;
  /** The parent must exist in this view. */
  create(path: string, value: string, perms: XenStorePerm[]): void;
  setValue(path: string, value: string): void;
  setPerms(path: string, perms: XenStorePerm[]): void;
  /** Removes the node and everything below it. */
  remove(path: string): void;
  ownedCount(dom: DomId): number;
}

class Node implements NodeInfo {
  readonly children = new Map<string, Node>();
  constructor(
    public value: string,
    public perms: XenStorePerm[],
    /** Store generation of the last change to this node's value, perms or child list. */
    public gen: number,
  ) {}
  names(): string[] {
    return [...this.children.keys()].sort();
  }
}

class LiveTree implements View {
  readonly root = new Node("", [{ dom: 0, access: "n" }], 0);
  generation = 0;
  /** Undo steps, recorded while a transaction commit is being applied so it stays atomic. */
  journal: Array<() => void> | null = null;
  private readonly owned = new Map<DomId, number>([[0, 1]]);

  getNode(path: string): Node | undefined {
    if (path === "/") return this.root;
    let node: Node | undefined = this.root;
    let start = 1;
    while (node) {
      const end = path.indexOf("/", start);
      const name = end < 0 ? path.slice(start) : path.slice(start, end);
      node = node.children.get(name);
      if (end < 0) return node;
      start = end + 1;
    }
    return undefined;
  }

  get(path: string): NodeInfo | undefined {
    return this.getNode(path);
  }

  private mustGet(path: string): Node {
    const n = this.getNode(path);
    if (!n) throw new Error(`xenstore internal: ${path} vanished`);
    return n;
  }

  private addOwned(dom: DomId, delta: number): void {
    this.owned.set(dom, (this.owned.get(dom) ?? 0) + delta);
  }

  create(path: string, value: string, perms: XenStorePerm[]): void {
    const parent = this.mustGet(parentOf(path));
    const name = baseName(path);
    const gen = ++this.generation;
    const prevGen = parent.gen;
    parent.children.set(name, new Node(value, perms, gen));
    parent.gen = gen;
    this.addOwned(perms[0].dom, 1);
    this.journal?.push(() => {
      parent.children.delete(name);
      parent.gen = prevGen;
      this.addOwned(perms[0].dom, -1);
    });
  }

  setValue(path: string, value: string): void {
    const node = this.mustGet(path);
    const prev = { value: node.value, gen: node.gen };
    node.value = value;
    node.gen = ++this.generation;
    this.journal?.push(() => {
      node.value = prev.value;
      node.gen = prev.gen;
    });
  }

  setPerms(path: string, perms: XenStorePerm[]): void {
    const node = this.mustGet(path);
    const prev = { perms: node.perms, gen: node.gen };
    this.addOwned(prev.perms[0].dom, -1);
    this.addOwned(perms[0].dom, 1);
    node.perms = perms;
    node.gen = ++this.generation;
    this.journal?.push(() => {
      this.addOwned(perms[0].dom, -1);
      this.addOwned(prev.perms[0].dom, 1);
      node.perms = prev.perms;
      node.gen = prev.gen;
    });
  }

  remove(path: string): void {
    const parent = this.mustGet(parentOf(path));
    const name = baseName(path);
    const node = parent.children.get(name);
    if (!node) return;
    const prevGen = parent.gen;
    parent.children.delete(name);
    parent.gen = ++this.generation;
    const count = (n: Node, sign: number) => {
      this.addOwned(n.perms[0].dom, sign);
      for (const c of n.children.values()) count(c, sign);
    };
    count(node, -1);
    this.journal?.push(() => {
      parent.children.set(name, node);
      parent.gen = prevGen;
      count(node, 1);
    });
  }

  ownedCount(dom: DomId): number {
    return this.owned.get(dom) ?? 0;
  }

  totalNodes(): number {
    let n = 0;
    for (const v of this.owned.values()) n += v;
    return n;
  }
}

class TxNode implements NodeInfo {
  constructor(
    public value: string,
    public perms: XenStorePerm[],
    readonly children: Set<string>,
  ) {}
  names(): string[] {
    return [...this.children].sort();
  }
}

type TxOp =
  | { kind: "write"; path: string; value: string }
  | { kind: "mkdir"; path: string }
  | { kind: "rm"; path: string }
  | { kind: "setPerms"; path: string; perms: XenStorePerm[] };

/**
 * Copy-on-write view: reads fall through to the live tree, writes land in an overlay. Every
 * path the transaction looks at is remembered; at commit, if any of them changed since the
 * start, the transaction conflicts. The logged operations are then replayed on the live tree,
 * which gives the same result as the view because nothing they depend on has changed.
 */
class TxView implements View {
  readonly overlay = new Map<string, TxNode | null>();
  readonly accessed = new Set<string>();
  readonly ops: TxOp[] = [];
  private readonly ownerDelta = new Map<DomId, number>();

  constructor(
    private readonly live: LiveTree,
    readonly id: number,
    readonly owner: DomId,
    readonly startGen: number,
  ) {}

  get(path: string): NodeInfo | undefined {
    this.accessed.add(path);
    const o = this.overlay.get(path);
    if (o !== undefined) return o ?? undefined;
    return this.live.getNode(path);
  }

  private materialize(path: string): TxNode {
    const o = this.overlay.get(path);
    if (o) return o;
    const n = this.live.getNode(path);
    if (!n || o === null) throw new Error(`xenstore internal: ${path} missing in transaction ${this.id}`);
    const copy = new TxNode(
      n.value,
      n.perms.map((p) => ({ ...p })),
      new Set(n.children.keys()),
    );
    this.overlay.set(path, copy);
    return copy;
  }

  private addDelta(dom: DomId, d: number): void {
    this.ownerDelta.set(dom, (this.ownerDelta.get(dom) ?? 0) + d);
  }

  create(path: string, value: string, perms: XenStorePerm[]): void {
    this.materialize(parentOf(path)).children.add(baseName(path));
    this.overlay.set(path, new TxNode(value, perms, new Set()));
    this.accessed.add(path);
    this.addDelta(perms[0].dom, 1);
  }

  setValue(path: string, value: string): void {
    this.materialize(path).value = value;
  }

  setPerms(path: string, perms: XenStorePerm[]): void {
    const n = this.materialize(path);
    this.addDelta(n.perms[0].dom, -1);
    this.addDelta(perms[0].dom, 1);
    n.perms = perms;
  }

  remove(path: string): void {
    // Mark the whole visible subtree deleted, so a later re-creation of `path` in this
    // transaction does not resurrect the old children from the live tree.
    const drop = (p: string) => {
      const n = this.get(p);
      if (!n) return;
      for (const c of n.names()) drop(childPath(p, c));
      this.addDelta(n.perms[0].dom, -1);
      this.overlay.set(p, null);
    };
    drop(path);
    this.materialize(parentOf(path)).children.delete(baseName(path));
  }

  ownedCount(dom: DomId): number {
    return this.live.ownedCount(dom) + (this.ownerDelta.get(dom) ?? 0);
  }
}

// ---- the store -------------------------------------------------------------------------------

/** One node of XenStore.tree(): its name (the full path at the root), value, permissions as `xenstore-ls -p` prints them. */
export interface XenStoreTreeNode {
  name: string;
  value: string;
  perms: string;
  children: XenStoreTreeNode[];
}

export type XenStoreWatchCallback = (path: string, token: string) => void;

interface Watch {
  readonly dom: DomId;
  readonly path: string;
  readonly token: string;
  readonly cb: XenStoreWatchCallback;
  live: boolean;
}

export interface XenStoreDomainStats {
  /** Operations issued by the domain, by name. */
  ops: Record<string, number>;
  totalOps: number;
  /** Nodes the domain owns (counted against its quota). */
  nodes: number;
  watches: number;
  transactions: number;
}

export interface XenStoreOptions extends Partial<XenStoreQuotas> {
  /** Called when a watch callback throws; by default a process warning is emitted. */
  onWatchError?: (err: unknown, path: string, token: string) => void;
}

export class XenStore {
  /** Set by the hypervisor to account store traffic; called once per operation. */
  onOp?: (caller: DomId, op: string) => void;
  readonly quotas: Readonly<XenStoreQuotas>;

  private readonly live = new LiveTree();
  private readonly txs = new Map<number, TxView>();
  private nextTx = 1;
  private readonly watches: Watch[] = [];
  private readonly introduced = new Set<DomId>();
  private readonly opCounts = new Map<DomId, Map<string, number>>();
  private readonly onWatchError: (err: unknown, path: string, token: string) => void;
  /** Events of a commit being applied: delivered only if the whole commit succeeds. */
  private staging: Array<{ w: Watch; path: string }> | null = null;
  private queue: Array<{ w: Watch; path: string }> = [];
  private flushScheduled = false;

  constructor(opts: XenStoreOptions = {}) {
    this.quotas = {
      maxNodesPerDomain: opts.maxNodesPerDomain ?? DEFAULT_XENSTORE_QUOTAS.maxNodesPerDomain,
      maxWatchesPerDomain: opts.maxWatchesPerDomain ?? DEFAULT_XENSTORE_QUOTAS.maxWatchesPerDomain,
      maxTransactionsPerDomain:
        opts.maxTransactionsPerDomain ?? DEFAULT_XENSTORE_QUOTAS.maxTransactionsPerDomain,
    };
    this.onWatchError =
      opts.onWatchError ??
      ((err, path, token) =>
        process.emitWarning(`XenStore watch callback for ${path} (token ${token}) threw: ${String(err)}`));
    // Domain 0 is there from the start, as xenstored introduces it at boot.
    this.applyOp(0, this.live, { kind: "mkdir", path: getDomainPath(0) });
    this.introduced.add(0);
  }

  // -- domains --

  /** Creates /local/domain/<domid>, owned by the domain (others: none), and lets it issue requests. */
  introduceDomain(domid: DomId): void {
    validateDomId(domid, "introduceDomain domid");
    this.begin(0, "introduce");
    if (this.introduced.has(domid)) {
      throw new XenStoreError("EEXIST", getDomainPath(domid), `domain ${domid} is already introduced`);
    }
    const home = getDomainPath(domid);
    this.applyOp(0, this.live, { kind: "mkdir", path: home });
    this.applyOp(0, this.live, { kind: "setPerms", path: home, perms: [{ dom: domid, access: "n" }] });
    this.introduced.add(domid);
    this.fireSpecial("@introduceDomain");
  }

  /**
   * Forgets a domain: drops its watches and open transactions, removes its home subtree
   * (firing the watches others hold there) and fires @releaseDomain.
   */
  releaseDomain(domid: DomId): void {
    validateDomId(domid, "releaseDomain domid");
    if (domid === 0) throw new XenStoreError("EINVAL", getDomainPath(0), "domain 0 cannot be released");
    this.begin(0, "release");
    if (!this.introduced.has(domid)) {
      throw new XenStoreError(
        "ESRCH",
        getDomainPath(domid),
        `domain ${domid} is not introduced; nothing to release`,
      );
    }
    this.introduced.delete(domid);
    for (let i = this.watches.length - 1; i >= 0; i--) {
      if (this.watches[i].dom === domid) {
        this.watches[i].live = false;
        this.watches.splice(i, 1);
      }
    }
    for (const [id, t] of this.txs) if (t.owner === domid) this.txs.delete(id);
    const home = getDomainPath(domid);
    if (this.live.getNode(home)) this.applyOp(0, this.live, { kind: "rm", path: home });
    this.fireSpecial("@releaseDomain");
  }

  isIntroduced(domid: DomId): boolean {
    return this.introduced.has(domid);
  }

  /**
   * Whether any node's permissions name `domid`. The hypervisor gives a domain id to a new
   * domain only when nothing names it any more, so a new domain never inherits access that
   * was meant for an old one with the same id (xenstored guards this with node generations).
   */
  referencesDomain(domid: DomId): boolean {
    const stack: Node[] = [this.live.root];
    while (stack.length > 0) {
      const n = stack.pop()!;
      for (const p of n.perms) if (p.dom === domid) return true;
      for (const c of n.children.values()) stack.push(c);
    }
    return false;
  }

  // -- node operations --

  read(caller: DomId, path: string, tx?: number): string {
    this.begin(caller, "read");
    const p = canonicalizePath(caller, path);
    return this.readable(caller, this.viewFor(caller, tx), p, "read").value;
  }

  /** True if the node exists; EACCES if it exists (or may exist) where the caller may not read. */
  exists(caller: DomId, path: string, tx?: number): boolean {
    this.begin(caller, "exists");
    const p = canonicalizePath(caller, path);
    try {
      this.readable(caller, this.viewFor(caller, tx), p, "read");
      return true;
    } catch (e) {
      if (XenStoreError.is(e, "ENOENT")) return false;
      throw e;
    }
  }

  /** Writes a value, creating missing parents (with empty values) as xenstored does. */
  write(caller: DomId, path: string, value: string, tx?: number): void {
    this.begin(caller, "write");
    const p = canonicalizePath(caller, path);
    this.mutate(caller, tx, { kind: "write", path: p, value: validateValue(value, p) });
  }

  /** Creates an empty node (and missing parents); a node that exists is left alone. */
  mkdir(caller: DomId, path: string, tx?: number): void {
    this.begin(caller, "mkdir");
    this.mutate(caller, tx, { kind: "mkdir", path: canonicalizePath(caller, path) });
  }

  /** Removes a node and everything below it; ENOENT if it is missing. */
  rm(caller: DomId, path: string, tx?: number): void {
    this.begin(caller, "rm");
    this.mutate(caller, tx, { kind: "rm", path: canonicalizePath(caller, path) });
  }

  /** Names of the node's children, sorted. */
  directory(caller: DomId, path: string, tx?: number): string[] {
    this.begin(caller, "directory");
    const p = canonicalizePath(caller, path);
    return this.readable(caller, this.viewFor(caller, tx), p, "list").names();
  }

  getPerms(caller: DomId, path: string, tx?: number): XenStorePerm[] {
    this.begin(caller, "getPerms");
    const p = canonicalizePath(caller, path);
    return this.readable(caller, this.viewFor(caller, tx), p, "read the permissions of").perms.map((x) => ({
      ...x,
    }));
  }

  /** Only the owner or domain 0 may change perms; only domain 0 may change the owner. */
  setPerms(caller: DomId, path: string, perms: readonly XenStorePerm[], tx?: number): void {
    this.begin(caller, "setPerms");
    const p = canonicalizePath(caller, path);
    this.mutate(caller, tx, { kind: "setPerms", path: p, perms: validatePerms(perms, p) });
  }

  // -- watches --

  /**
   * Calls `callback(changedPath, token)` for every change at `path` or below it that the
   * watching domain may read, and once right after registration. Always asynchronous.
   */
  watch(caller: DomId, path: string, token: string, callback: XenStoreWatchCallback): void {
    this.begin(caller, "watch");
    const p = canonicalizePath(caller, path, true);
    if (typeof token !== "string") {
      throw new XenStoreError("EINVAL", p, `watch token must be a string, got ${typeof token}`);
    }
    if (typeof callback !== "function")
      throw new XenStoreError("EINVAL", p, "watch needs a callback function");
    if (this.watches.some((w) => w.dom === caller && w.path === p && w.token === token)) {
      throw new XenStoreError(
        "EEXIST",
        p,
        `domain ${caller} already watches ${p} with token ${JSON.stringify(token)}; use another token`,
      );
    }
    if (caller !== 0) {
      const n = this.watches.filter((w) => w.dom === caller).length;
      if (n >= this.quotas.maxWatchesPerDomain) {
        throw new XenStoreError(
          "E2BIG",
          p,
          `domain ${caller} has ${n} watches, the limit; unwatch some before adding ${p}`,
        );
      }
    }
    const w: Watch = { dom: caller, path: p, token, cb: callback, live: true };
    this.watches.push(w);
    this.enqueue(w, p);
  }

  unwatch(caller: DomId, path: string, token: string): void {
    this.begin(caller, "unwatch");
    const p = canonicalizePath(caller, path, true);
    const i = this.watches.findIndex((w) => w.dom === caller && w.path === p && w.token === token);
    if (i < 0) {
      throw new XenStoreError(
        "ENOENT",
        p,
        `domain ${caller} has no watch on ${p} with token ${JSON.stringify(token)}`,
      );
    }
    this.watches[i].live = false;
    this.watches.splice(i, 1);
  }

  // -- transactions --

  transactionStart(caller: DomId): number {
    this.begin(caller, "txStart");
    if (caller !== 0) {
      let n = 0;
      for (const t of this.txs.values()) if (t.owner === caller) n++;
      if (n >= this.quotas.maxTransactionsPerDomain) {
        throw new XenStoreError(
          "ENOSPC",
          "",
          `domain ${caller} has ${n} open transactions, the limit; end one before starting another`,
        );
      }
    }
    const id = this.nextTx++;
    this.txs.set(id, new TxView(this.live, id, caller, this.live.generation));
    return id;
  }

  /**
   * Ends a transaction. With commit, applies all its changes atomically, or throws EAGAIN
   * and applies nothing if anything it read, wrote or listed changed since it started.
   */
  transactionEnd(caller: DomId, tx: number, commit: boolean): void {
    this.begin(caller, "txEnd");
    if (tx === undefined || tx === 0) {
      throw new XenStoreError("EINVAL", "", "transactionEnd needs the id that transactionStart returned");
    }
    const t = this.viewFor(caller, tx) as TxView;
    this.txs.delete(tx);
    if (!commit) return;
    for (const p of t.accessed) {
      // A missing node counts as changed when its nearest existing ancestor changed: that is
      // where a creation or removal shows.
      let node = this.live.getNode(p);
      for (let q = p; !node; ) node = this.live.getNode((q = parentOf(q)));
      if (node.gen > t.startGen) {
        throw new XenStoreError("EAGAIN", p, `transaction conflict: ${p} changed; retry`);
      }
    }
    // Replay with an undo journal: a late failure (a node quota reached by this domain's
    // other activity) rolls everything back, so a commit is all or nothing.
    this.live.journal = [];
    this.staging = [];
    let events: Array<{ w: Watch; path: string }> = [];
    try {
      for (const op of t.ops) this.applyOp(caller, this.live, op);
      events = this.staging;
    } catch (e) {
      const undo = this.live.journal;
      for (let i = undo.length - 1; i >= 0; i--) undo[i]();
      throw e;
    } finally {
      this.live.journal = null;
      this.staging = null;
    }
    for (const e of events) this.enqueue(e.w, e.path);
  }

  // -- accounting and debugging --

  stats(): Record<DomId, XenStoreDomainStats> {
    const out: Record<DomId, XenStoreDomainStats> = {};
    const entry = (d: DomId) => {
      out[d] ??= { ops: {}, totalOps: 0, nodes: this.live.ownedCount(d), watches: 0, transactions: 0 };
      return out[d];
    };
    for (const d of this.introduced) entry(d);
    for (const [d, m] of this.opCounts) {
      const e = entry(d);
      for (const [op, n] of m) {
        e.ops[op] = n;
        e.totalOps += n;
      }
    }
    for (const w of this.watches) entry(w.dom).watches++;
    for (const t of this.txs.values()) entry(t.owner).transactions++;
    return out;
  }

  /** Total number of nodes in the store, including the root. */
  nodeCount(): number {
    return this.live.totalNodes();
  }

  /** Indented tree, one node a line: `name = "value" (perms)`, like xenstore-ls -p. */
  dump(path = "/"): string {
    const p = canonicalizePath(0, path);
    const node = this.live.getNode(p);
    if (!node) throw new XenStoreError("ENOENT", p, `${p} does not exist`);
    const lines: string[] = [];
    const walk = (n: Node, name: string, depth: number) => {
      lines.push(`${"  ".repeat(depth)}${name} = ${JSON.stringify(n.value)} (${formatPerms(n.perms)})`);
      for (const c of n.names()) walk(n.children.get(c)!, c, depth + 1);
    };
    walk(node, p, 0);
    return lines.join("\n");
  }

  /**
   * The subtree at `path` as data, for inspection (`myrixen xenstore-ls`): like dump(), read
   * as the toolstack and not counted as anyone's operation. At most `maxNodes` nodes, in
   * depth-first order; `truncated` says when more were left out.
   */
  tree(path = "/", maxNodes = 10_000): { root: XenStoreTreeNode; nodes: number; truncated: boolean } {
    const p = canonicalizePath(0, path);
    const node = this.live.getNode(p);
    if (!node) throw new XenStoreError("ENOENT", p, `${p} does not exist`);
    let nodes = 0;
    let truncated = false;
    const walk = (n: Node, name: string): XenStoreTreeNode => {
      nodes++;
      const out: XenStoreTreeNode = { name, value: n.value, perms: formatPerms(n.perms), children: [] };
      for (const c of n.names()) {
        if (nodes >= maxNodes) {
          truncated = true;
          break;
        }
        out.children.push(walk(n.children.get(c)!, c));
      }
      return out;
    };
    const root = walk(node, p);
    return { root, nodes, truncated };
  }

  // -- internals --

  private begin(caller: DomId, op: string): void {
    validateDomId(caller, "caller");
    if (!this.introduced.has(caller)) {
      throw new XenStoreError(
        "ESRCH",
        "",
        `domain ${caller} is not introduced to XenStore (introduceDomain(${caller}) first, or it was released)`,
      );
    }
    let m = this.opCounts.get(caller);
    if (!m) this.opCounts.set(caller, (m = new Map()));
    m.set(op, (m.get(op) ?? 0) + 1);
    this.onOp?.(caller, op);
  }

  private viewFor(caller: DomId, tx: number | undefined): View {
    if (tx === undefined || tx === 0) return this.live;
    if (typeof tx !== "number" || !Number.isInteger(tx) || tx < 0) {
      throw new XenStoreError("EINVAL", "", `transaction id must be a positive integer, got ${safeJson(tx)}`);
    }
    const t = this.txs.get(tx);
    if (!t) {
      throw new XenStoreError(
        "ESRCH",
        "",
        `transaction ${tx} is not open (never started, already ended, or its domain was released)`,
      );
    }
    if (t.owner !== caller) {
      throw new XenStoreError(
        "EACCES",
        "",
        `transaction ${tx} belongs to domain ${t.owner}; domain ${caller} may not use it`,
      );
    }
    return t;
  }

  private mutate(caller: DomId, tx: number | undefined, op: TxOp): void {
    const view = this.viewFor(caller, tx);
    this.applyOp(caller, view, op);
    if (view instanceof TxView) view.ops.push(op);
  }

  /** Checks and applies one mutation to a view; on the live tree it also fires watches. */
  private applyOp(caller: DomId, view: View, op: TxOp): void {
    const live = view === this.live;
    const p = op.path;
    switch (op.kind) {
      case "write": {
        const node = view.get(p);
        if (node) {
          this.requireWrite(caller, p, node.perms, "write");
          view.setValue(p, op.value);
        } else {
          this.createPath(caller, view, p, op.value);
        }
        if (live) this.fireChange(p);
        return;
      }
      case "mkdir": {
        if (view.get(p)) return;
        this.createPath(caller, view, p, "");
        if (live) this.fireChange(p);
        return;
      }
      case "rm": {
        if (p === "/") throw new XenStoreError("EINVAL", p, "the root node cannot be removed");
        const node = view.get(p);
        if (!node) throw this.missing(caller, view, p, "remove");
        this.requireWrite(caller, p, node.perms, "remove");
        if (live) this.fireRemove(p);
        view.remove(p);
        return;
      }
      case "setPerms": {
        const node = view.get(p);
        if (!node) throw this.missing(caller, view, p, "change the permissions of");
        const owner = node.perms[0].dom;
        if (caller !== 0 && caller !== owner) {
          throw new XenStoreError(
            "EACCES",
            p,
            `domain ${caller} may not change the permissions of ${p}: only its owner (domain ${owner}) or domain 0 may`,
          );
        }
        if (caller !== 0 && op.perms[0].dom !== owner) {
          throw new XenStoreError(
            "EPERM",
            p,
            `domain ${caller} may not give ${p} to domain ${op.perms[0].dom}: only domain 0 may change a node's owner; keep perms[0].dom = ${owner}`,
          );
        }
        view.setPerms(p, op.perms);
        if (live) this.fireChange(p);
        return;
      }
    }
  }

  private readable(caller: DomId, view: View, path: string, verb: string): NodeInfo {
    const node = view.get(path);
    if (!node) throw this.missing(caller, view, path, verb);
    if (!canRead(accessFor(caller, node.perms))) {
      throw new XenStoreError(
        "EACCES",
        path,
        `domain ${caller} may not ${verb} ${path} (${describePerms(node.perms)})`,
      );
    }
    return node;
  }

  private requireWrite(caller: DomId, path: string, perms: readonly XenStorePerm[], verb: string): void {
    if (!canWrite(accessFor(caller, perms))) {
      throw new XenStoreError(
        "EACCES",
        path,
        `domain ${caller} may not ${verb} ${path} (${describePerms(perms)})`,
      );
    }
  }

  /** ENOENT, or EACCES when the nearest existing ancestor is hidden from the caller (xenstored's errno_from_parents). */
  private missing(caller: DomId, view: View, path: string, verb: string): XenStoreError {
    let anc = parentOf(path);
    let node = view.get(anc);
    while (!node) node = view.get((anc = parentOf(anc)));
    if (!canRead(accessFor(caller, node.perms))) {
      return new XenStoreError(
        "EACCES",
        path,
        `domain ${caller} may not ${verb} ${path}: it is missing or hidden, and ${anc} is not readable by domain ${caller} (${describePerms(node.perms)})`,
      );
    }
    return new XenStoreError("ENOENT", path, `cannot ${verb} ${path}: no such node`);
  }

  private createPath(caller: DomId, view: View, path: string, value: string): void {
    const toCreate = [path];
    let anc = parentOf(path);
    let ancNode = view.get(anc);
    while (!ancNode) {
      toCreate.push(anc);
      ancNode = view.get((anc = parentOf(anc)));
    }
    if (!canWrite(accessFor(caller, ancNode.perms))) {
      throw new XenStoreError(
        "EACCES",
        path,
        `domain ${caller} may not create ${path}: that needs write access to ${anc} (${describePerms(ancNode.perms)})`,
      );
    }
    if (caller !== 0) {
      const have = view.ownedCount(caller);
      if (have + toCreate.length > this.quotas.maxNodesPerDomain) {
        throw new XenStoreError(
          "ENOSPC",
          path,
          `domain ${caller} owns ${have} nodes; creating ${path} would exceed its quota of ${this.quotas.maxNodesPerDomain}; remove nodes it no longer needs`,
        );
      }
    }
    const perms = inheritPerms(ancNode.perms, caller);
    for (let i = toCreate.length - 1; i >= 0; i--) {
      view.create(toCreate[i], i === 0 ? value : "", i === 0 ? perms : perms.map((x) => ({ ...x })));
    }
  }

  private fireChange(path: string): void {
    const node = this.live.getNode(path);
    if (!node) return;
    for (const w of this.watches) {
      if (isAncestorOrSelf(w.path, path) && canRead(accessFor(w.dom, node.perms))) this.emit(w, path);
    }
  }

  /** Called before the subtree at `path` is removed, while its perms can still be checked. */
  private fireRemove(path: string): void {
    const node = this.live.getNode(path);
    if (!node) return;
    for (const w of this.watches) {
      if (isAncestorOrSelf(w.path, path)) {
        if (canRead(accessFor(w.dom, node.perms))) this.emit(w, path);
      } else if (isAncestorOrSelf(path, w.path)) {
        // A watch inside the removed subtree hears about its own path; the deepest node that
        // exists on the way there decides whether the watcher may know.
        let governing: Node = node;
        let cur = node;
        for (const name of w.path.slice(path.length + 1).split("/")) {
          const next = cur.children.get(name);
          if (!next) break;
          governing = cur = next;
        }
        if (canRead(accessFor(w.dom, governing.perms))) this.emit(w, w.path);
      }
    }
  }

  private fireSpecial(name: string): void {
    for (const w of this.watches) if (w.path === name) this.emit(w, name);
  }

  private emit(w: Watch, path: string): void {
    if (this.staging) this.staging.push({ w, path });
    else this.enqueue(w, path);
  }

  private enqueue(w: Watch, path: string): void {
    this.queue.push({ w, path });
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.queue;
    this.queue = [];
    for (const { w, path } of batch) {
      if (!w.live) continue; // unwatched or released after the event was queued
      try {
        w.cb(path, w.token);
      } catch (err) {
        this.onWatchError(err, path, w.token);
      }
    }
  }
}

// ---- requests: the primitive operations a client sends ----------------------------------------

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
 * events of a watch set here go to `onWatchEvent(path, token)`. Throws XenStoreError, also
 * for malformed requests, which may come from untrusted guests.
 */
export function executeXenStoreRequest(
  store: XenStore,
  caller: DomId,
  req: XenStoreRequest,
  onWatchEvent: (path: string, token: string) => void,
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

// ---- the client interface -------------------------------------------------------------------

/** Operations inside a transaction: they see the transaction's own writes. */
export interface XenStoreTx {
  readonly id: number;
  read(path: string): Promise<string>;
  /** Like read, but undefined when the node does not exist. */
  tryRead(path: string): Promise<string | undefined>;
  exists(path: string): Promise<boolean>;
  write(path: string, value: string): Promise<void>;
  mkdir(path: string): Promise<void>;
  rm(path: string): Promise<void>;
  directory(path: string): Promise<string[]>;
  getPerms(path: string): Promise<XenStorePerm[]>;
  setPerms(path: string, perms: readonly XenStorePerm[]): Promise<void>;
}

export interface XenStoreTransactionOptions {
  /** How many times the body is rerun after a commit conflict (EAGAIN); default 16. */
  maxRetries?: number;
}

/**
 * What guest and host code use. Paths not starting with '/' are relative to the caller's
 * home, /local/domain/<domid>; watch callbacks get absolute paths.
 */
export interface XenStoreClient extends Omit<XenStoreTx, "id"> {
  readonly domid: DomId;
  /** Watches `path` and below; resolves to a function that removes the watch. */
  watch(path: string, callback: (path: string) => void): Promise<() => Promise<void>>;
  /** Runs `body` in a transaction and commits; reruns it on a commit conflict. */
  transaction<T>(body: (tx: XenStoreTx) => Promise<T>, opts?: XenStoreTransactionOptions): Promise<T>;
}

export const DEFAULT_TRANSACTION_RETRIES = 16;

let clientSerial = 0;

/**
 * A client built on one primitive, `send(request)`. A subclass forwards requests somewhere
 * (straight to a store, or over a message channel to the host, which answers with
 * executeXenStoreRequest) and hands incoming watch events to deliverWatch(path, token).
 * Rejections should be XenStoreError (rebuild them with XenStoreError.fromWire).
 */
export abstract class RequestXenStoreClient implements XenStoreClient {
  readonly domid: DomId;
  private readonly watchCallbacks = new Map<string, (path: string) => void>();
  private readonly tokenPrefix: string;
  private nextToken = 1;

  constructor(domid: DomId) {
    this.domid = validateDomId(domid, "client domid");
    this.tokenPrefix = `c${++clientSerial}.${Math.random().toString(36).slice(2, 8)}`;
  }

  protected abstract send(req: XenStoreRequest): Promise<unknown>;

  /** Hands a watch event to the callback registered under `token`; unknown tokens are ignored. */
  protected deliverWatch(path: string, token: string): void {
    this.watchCallbacks.get(token)?.(path);
  }

  read(path: string): Promise<string> {
    return this.txRead(path, undefined);
  }
  tryRead(path: string): Promise<string | undefined> {
    return this.txTryRead(path, undefined);
  }
  async exists(path: string): Promise<boolean> {
    return (await this.txTryRead(path, undefined)) !== undefined;
  }
  async write(path: string, value: string): Promise<void> {
    await this.send({ op: "write", path, value });
  }
  async mkdir(path: string): Promise<void> {
    await this.send({ op: "mkdir", path });
  }
  async rm(path: string): Promise<void> {
    await this.send({ op: "rm", path });
  }
  directory(path: string): Promise<string[]> {
    return this.txDirectory(path, undefined);
  }
  getPerms(path: string): Promise<XenStorePerm[]> {
    return this.txGetPerms(path, undefined);
  }
  async setPerms(path: string, perms: readonly XenStorePerm[]): Promise<void> {
    await this.send({ op: "setPerms", path, perms: perms.map((p) => ({ ...p })) });
  }

  async watch(path: string, callback: (path: string) => void): Promise<() => Promise<void>> {
    const token = `${this.tokenPrefix}.${this.nextToken++}`;
    // Registered before sending: the initial event may arrive before the reply.
    this.watchCallbacks.set(token, callback);
    try {
      await this.send({ op: "watch", path, token });
    } catch (e) {
      this.watchCallbacks.delete(token);
      throw e;
    }
    let removed = false;
    return async () => {
      if (removed) return;
      removed = true;
      this.watchCallbacks.delete(token);
      await this.send({ op: "unwatch", path, token });
    };
  }

  async transaction<T>(
    body: (tx: XenStoreTx) => Promise<T>,
    opts: XenStoreTransactionOptions = {},
  ): Promise<T> {
    const maxRetries = opts.maxRetries ?? DEFAULT_TRANSACTION_RETRIES;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new XenStoreError("EINVAL", "", `maxRetries must be a non-negative integer, got ${maxRetries}`);
    }
    for (let attempt = 0; ; attempt++) {
      const id = (await this.send({ op: "txStart" })) as number;
      let result: T;
      try {
        result = await body(this.txHandle(id));
      } catch (e) {
        await this.send({ op: "txEnd", tx: id, commit: false }).catch(() => undefined);
        throw e;
      }
      try {
        await this.send({ op: "txEnd", tx: id, commit: true });
        return result;
      } catch (e) {
        if (!XenStoreError.is(e, "EAGAIN") || attempt >= maxRetries) throw e;
      }
    }
  }

  private txHandle(id: number): XenStoreTx {
    return {
      id,
      read: (path) => this.txRead(path, id),
      tryRead: (path) => this.txTryRead(path, id),
      exists: async (path) => (await this.txTryRead(path, id)) !== undefined,
      write: async (path, value) => void (await this.send({ op: "write", path, value, tx: id })),
      mkdir: async (path) => void (await this.send({ op: "mkdir", path, tx: id })),
      rm: async (path) => void (await this.send({ op: "rm", path, tx: id })),
      directory: (path) => this.txDirectory(path, id),
      getPerms: (path) => this.txGetPerms(path, id),
      setPerms: async (path, perms) =>
        void (await this.send({ op: "setPerms", path, perms: perms.map((p) => ({ ...p })), tx: id })),
    };
  }

  private async txRead(path: string, tx: number | undefined): Promise<string> {
    const v = await this.send({ op: "read", path, tx });
    if (typeof v !== "string") throw badReply("read", v);
    return v;
  }

  private async txTryRead(path: string, tx: number | undefined): Promise<string | undefined> {
    try {
      return await this.txRead(path, tx);
    } catch (e) {
      if (XenStoreError.is(e, "ENOENT")) return undefined;
      throw e;
    }
  }

  private async txDirectory(path: string, tx: number | undefined): Promise<string[]> {
    const v = await this.send({ op: "directory", path, tx });
    if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) throw badReply("directory", v);
    return v;
  }

  private async txGetPerms(path: string, tx: number | undefined): Promise<XenStorePerm[]> {
    return validatePerms(await this.send({ op: "getPerms", path, tx }), path);
  }
}

function badReply(op: string, v: unknown): XenStoreError {
  return new XenStoreError("EIO", "", `malformed reply to ${op} from XenStore: ${safeJson(v)}`);
}

/** A client that calls a XenStore in the same thread (host code, dom0 services, tests). */
export class LocalXenStoreClient extends RequestXenStoreClient {
  constructor(
    private readonly store: XenStore,
    domid: DomId,
  ) {
    super(domid);
  }

  protected async send(req: XenStoreRequest): Promise<unknown> {
    return executeXenStoreRequest(this.store, this.domid, req, (path, token) =>
      this.deliverWatch(path, token),
    );
  }
}

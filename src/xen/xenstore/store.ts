/**
 * XenStore, the daemon: the hierarchical store all domains share for configuration and the
 * xenbus handshake, with xenstored's permission model, transactions and per-domain quotas
 * (xenstored's core.c, transaction.c and domain.c). Watches are watches.ts, the tree and a
 * transaction's view tree.ts, paths and perms paths.ts; clients reach it through wire.ts.
 *
 * Rules followed (xenstored's, tools/xenstore/xenstored_core.c and docs/misc/xenstore.txt):
 * - perms: the first entry names the owner and the access of everyone not listed; later
 *   entries grant one domain an access. The owner and domain 0 always have full access.
 * - a new node inherits its parent's perms; when the creator is unprivileged it becomes the
 *   owner (so a guest owns what it creates). Creating needs write access to the nearest
 *   existing ancestor.
 * - a missing node whose nearest existing ancestor the caller may not read/write reports
 *   EACCES, not ENOENT, so a guest cannot probe other domains' trees. For the same reason a
 *   transaction conflicts only on nodes the caller may read (or the nearest existing
 *   ancestor of a missing one): its commit tells nothing about a hidden node's changes.
 * - quotas bind unprivileged domains only: nodes owned → ENOSPC, watches → E2BIG, open
 *   transactions → ENOSPC (not EAGAIN: EAGAIN means "retry the transaction" to every client),
 *   paths a transaction looks at and changes it makes, and the bytes it keeps for them →
 *   ENOSPC (xenstored's quota-trans-nodes: a transaction never ended kept them all),
 *   entries of a perms list → ENOSPC. An unprivileged domain's perms may name only domains
 *   that exist (ENOENT), and a released domain's access is revoked from every node (nodes it
 *   owned pass to domain 0, entries naming it go): a later domain given the same id inherits
 *   nothing, with no need to keep ids out of use (xenstored gets there with node generations).
 * - a released domain's nodes go with it: its home, and what it created elsewhere and still
 *   owns (xenstored's XSA-419 fix), so its quota binds beyond its life.
 * - a watch's path and token fit one request payload (XENSTORE_PAYLOAD_MAX), or EINVAL; an
 *   unprivileged domain's directory listing fits one reply payload, or E2BIG.
 * - domain 0 is introduced when the store is built; other domains must be introduced before
 *   they may issue requests, and lose that right when released.
 */

import type { DomId } from "../abi.js";
import { safeJson, XenStoreError } from "./errors.js";
import {
  accessFor,
  canonicalizePath,
  canRead,
  canWrite,
  DEFAULT_XENSTORE_QUOTAS,
  describePerms,
  formatPerms,
  getDomainPath,
  inheritPerms,
  parentOf,
  validateDomId,
  validatePerms,
  validateValue,
  XENSTORE_PAYLOAD_MAX,
  type XenStorePerm,
  type XenStoreQuotas,
} from "./paths.js";
import { LiveTree, type Node, type NodeInfo, type TxOp, TxView, type View } from "./tree.js";
import { type Watch, type WatchEvent, WatchTable, type XenStoreWatchCallback } from "./watches.js";

/** One node of XenStore.tree(): its name (the full path at the root), value, permissions as `xenstore-ls -p` prints them. */
export interface XenStoreTreeNode {
  name: string;
  value: string;
  perms: string;
  children: XenStoreTreeNode[];
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
  private readonly watches: WatchTable;
  private readonly introduced = new Set<DomId>();
  private readonly opCounts = new Map<DomId, Map<string, number>>();

  constructor(opts: XenStoreOptions = {}) {
    this.quotas = {
      maxNodesPerDomain: opts.maxNodesPerDomain ?? DEFAULT_XENSTORE_QUOTAS.maxNodesPerDomain,
      maxWatchesPerDomain: opts.maxWatchesPerDomain ?? DEFAULT_XENSTORE_QUOTAS.maxWatchesPerDomain,
      maxTransactionsPerDomain:
        opts.maxTransactionsPerDomain ?? DEFAULT_XENSTORE_QUOTAS.maxTransactionsPerDomain,
      maxPermsPerNode: opts.maxPermsPerNode ?? DEFAULT_XENSTORE_QUOTAS.maxPermsPerNode,
      maxTransactionNodes: opts.maxTransactionNodes ?? DEFAULT_XENSTORE_QUOTAS.maxTransactionNodes,
      maxTransactionBytes: opts.maxTransactionBytes ?? DEFAULT_XENSTORE_QUOTAS.maxTransactionBytes,
    };
    this.watches = new WatchTable(
      this.live,
      opts.onWatchError ??
        ((err, path, token) =>
          process.emitWarning(`XenStore watch callback for ${path} (token ${token}) threw: ${String(err)}`)),
    );
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
    this.watches.fireSpecial("@introduceDomain");
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
    this.opCounts.delete(domid);
    this.watches.dropDomain(domid);
    for (const [id, t] of this.txs) if (t.owner === domid) this.txs.delete(id);
    const home = getDomainPath(domid);
    if (this.live.getNode(home)) this.applyOp(0, this.live, { kind: "rm", path: home });
    this.removeCreated(domid);
    this.revokeDomain(domid);
    this.watches.fireSpecial("@releaseDomain");
  }

  /**
   * Removes what a released domain created and still owns outside its home (in another
   * domain's home, where that domain let it write), with everything below, firing the watches
   * there, as xenstored does since XSA-419: passed to domain 0, which has no quota, such
   * nodes outlived their writer, and short-lived domains writing into a long-lived one's home
   * piled them up without bound. Nodes domain 0 made stay (its own, and those it gave to the
   * domain pass back to it below). Found through the tree's index, not a walk.
   */
  private removeCreated(domid: DomId): void {
    const doomed = this.live
      .namedBy(domid)
      .filter((n) => n.creator === domid && n.perms[0].dom === domid)
      .sort((a, b) => a.path.length - b.path.length);
    for (const n of doomed) {
      // Gone already below an ancestor removed before it.
      if (this.live.getNode(n.path) === n) this.applyOp(0, this.live, { kind: "rm", path: n.path });
    }
  }

  /**
   * Takes a released domain out of every node's perms: nodes it owned pass to domain 0 (with
   * the same default access), entries naming it go. Found through the tree's index, so the
   * hypervisor may give the id to a new domain at once. No watch fires: nothing anyone could
   * read changed.
   */
  private revokeDomain(domid: DomId): void {
    for (const n of this.live.namedBy(domid)) {
      const [owner, ...rest] = n.perms;
      this.live.setPerms(n.path, [
        owner.dom === domid ? { dom: 0, access: owner.access } : owner,
        ...rest.filter((p) => p.dom !== domid),
      ]);
    }
  }

  isIntroduced(domid: DomId): boolean {
    return this.introduced.has(domid);
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

  /** Creates an empty node (and missing parents); a node that exists is left alone (EACCES if the caller may not write it). */
  mkdir(caller: DomId, path: string, tx?: number): void {
    this.begin(caller, "mkdir");
    this.mutate(caller, tx, { kind: "mkdir", path: canonicalizePath(caller, path) });
  }

  /** Removes a node and everything below it; ENOENT if it is missing. */
  rm(caller: DomId, path: string, tx?: number): void {
    this.begin(caller, "rm");
    this.mutate(caller, tx, { kind: "rm", path: canonicalizePath(caller, path) });
  }

  /**
   * Names of the node's children, sorted. To an unprivileged caller, as xenstored's
   * XS_DIRECTORY: E2BIG when they do not fit one reply payload (XENSTORE_PAYLOAD_MAX). A reply
   * is posted whole and waits in the caller's port in the host's memory, outside the guest's
   * meters: 990 children with names of 3,040 characters made 3 MB replies, 32 in flight, and
   * four such guests held 380 MB of the host's.
   */
  directory(caller: DomId, path: string, tx?: number): string[] {
    this.begin(caller, "directory");
    const p = canonicalizePath(caller, path);
    const names = this.readable(caller, this.viewFor(caller, tx), p, "list").names();
    if (caller !== 0) {
      // As xs_wire.h lists them: each name and its NUL.
      let bytes = 0;
      for (const name of names) bytes += name.length + 1;
      if (bytes > XENSTORE_PAYLOAD_MAX)
        throw new XenStoreError(
          "E2BIG",
          p,
          `the names of the ${names.length} children of ${p} take ${bytes} bytes; one reply carries at most ${XENSTORE_PAYLOAD_MAX} (list a node with fewer or shorter children)`,
        );
    }
    return names;
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
    // Counted before a single entry is read: a long list is refused at its length.
    if (caller !== 0 && Array.isArray(perms)) this.checkPermsCount(caller, p, perms.length);
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
    // Kept for the watch's life and sent with every event: bounded like xenstored's payload.
    const bytes = Buffer.byteLength(p, "utf8") + Buffer.byteLength(token, "utf8") + 2;
    if (bytes > XENSTORE_PAYLOAD_MAX) {
      throw new XenStoreError(
        "EINVAL",
        p,
        `watch path and token take ${bytes} bytes; together they must fit in ${XENSTORE_PAYLOAD_MAX} (use a short token)`,
      );
    }
    if (typeof callback !== "function")
      throw new XenStoreError("EINVAL", p, "watch needs a callback function");
    if (this.watches.indexOf(caller, p, token) >= 0) {
      throw new XenStoreError(
        "EEXIST",
        p,
        `domain ${caller} already watches ${p} with token ${JSON.stringify(token)}; use another token`,
      );
    }
    if (caller !== 0) {
      const n = this.watches.countFor(caller);
      if (n >= this.quotas.maxWatchesPerDomain) {
        throw new XenStoreError(
          "E2BIG",
          p,
          `domain ${caller} has ${n} watches, the limit; unwatch some before adding ${p}`,
        );
      }
    }
    const w: Watch = { dom: caller, path: p, token, cb: callback, live: true };
    this.watches.add(w);
  }

  unwatch(caller: DomId, path: string, token: string): void {
    this.begin(caller, "unwatch");
    const p = canonicalizePath(caller, path, true);
    const i = this.watches.indexOf(caller, p, token);
    if (i < 0) {
      throw new XenStoreError(
        "ENOENT",
        p,
        `domain ${caller} has no watch on ${p} with token ${JSON.stringify(token)}`,
      );
    }
    this.watches.removeAt(i);
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
    const limits =
      caller === 0
        ? undefined
        : { nodes: this.quotas.maxTransactionNodes, bytes: this.quotas.maxTransactionBytes };
    this.txs.set(id, new TxView(this.live, id, caller, this.live.generation, limits));
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
    for (const [p, at] of t.accessed) {
      // `at` is p's node, or a missing p's nearest existing ancestor, where a creation or
      // removal shows; the caller could read it when it looked. Gone means changed.
      const node = this.live.getNode(at);
      if (!node || node.gen > t.startGen) {
        throw new XenStoreError("EAGAIN", p, `transaction conflict: ${p} changed; retry`);
      }
    }
    // Replay with an undo journal: a late failure (a node quota reached by this domain's
    // other activity) rolls everything back, so a commit is all or nothing.
    this.live.journal = [];
    this.watches.beginStaging();
    let events: WatchEvent[] = [];
    try {
      for (const op of t.ops) this.applyOp(caller, this.live, op);
      events = this.watches.takeStaged();
    } catch (e) {
      const undo = this.live.journal;
      for (let i = undo.length - 1; i >= 0; i--) undo[i]();
      throw e;
    } finally {
      this.live.journal = null;
      this.watches.endStaging();
    }
    this.watches.deliver(events);
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
    for (const w of this.watches.list) entry(w.dom).watches++;
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
    if (view instanceof TxView) view.admit(op);
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
          this.looked(caller, view, p, p, node.perms);
          this.requireWrite(caller, p, node.perms, "write");
          view.setValue(p, op.value);
        } else {
          this.createPath(caller, view, p, op.value);
        }
        if (live) this.watches.fireChange(p);
        return;
      }
      case "mkdir": {
        const node = view.get(p);
        if (node) {
          // Left alone, but only for who may write it (xenstored's do_mkdir): else an ok
          // would tell that a hidden node exists where a missing one gives EACCES.
          this.looked(caller, view, p, p, node.perms);
          this.requireWrite(caller, p, node.perms, "mkdir");
          return;
        }
        this.createPath(caller, view, p, "");
        if (live) this.watches.fireChange(p);
        return;
      }
      case "rm": {
        if (p === "/") throw new XenStoreError("EINVAL", p, "the root node cannot be removed");
        const node = view.get(p);
        if (!node) throw this.missing(caller, view, p, "remove");
        this.looked(caller, view, p, p, node.perms);
        this.requireWrite(caller, p, node.perms, "remove");
        if (live) this.watches.fireRemove(p);
        view.remove(p);
        return;
      }
      case "setPerms": {
        const node = view.get(p);
        if (!node) throw this.missing(caller, view, p, "change the permissions of");
        this.looked(caller, view, p, p, node.perms);
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
        if (caller !== 0) this.checkNamedByGuest(caller, p, op.perms);
        view.setPerms(p, op.perms);
        if (live) this.watches.fireChange(p);
        return;
      }
    }
  }

  /**
   * An unprivileged domain's perms list: at most quotas.maxPermsPerNode entries, each naming
   * a domain that exists (a name kept for an id nobody holds would hand the node to whoever
   * gets that id next).
   */
  private checkNamedByGuest(caller: DomId, path: string, perms: readonly XenStorePerm[]): void {
    this.checkPermsCount(caller, path, perms.length);
    for (const q of perms) {
      if (!this.introduced.has(q.dom)) {
        throw new XenStoreError(
          "ENOENT",
          path,
          `perms for ${path} name domain ${q.dom}, which does not exist; a node may name only live domains`,
        );
      }
    }
  }

  private checkPermsCount(caller: DomId, path: string, n: number): void {
    if (n > this.quotas.maxPermsPerNode) {
      throw new XenStoreError(
        "ENOSPC",
        path,
        `domain ${caller} may list at most ${this.quotas.maxPermsPerNode} entries in a node's perms, not ${n}`,
      );
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
    view.note(path, path);
    return node;
  }

  /**
   * Notes for a transaction's commit what the caller looked at (`perms`: those of the node at
   * `at`), only if it may read it: a commit that conflicted on a hidden node would tell the
   * caller that node changed, the probe EACCES is there to prevent.
   */
  private looked(caller: DomId, view: View, path: string, at: string, perms: readonly XenStorePerm[]): void {
    if (canRead(accessFor(caller, perms))) view.note(path, at);
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
    view.note(path, anc);
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
    this.looked(caller, view, path, anc, ancNode.perms);
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
      view.create(toCreate[i], i === 0 ? value : "", i === 0 ? perms : perms.map((x) => ({ ...x })), caller);
    }
  }
}

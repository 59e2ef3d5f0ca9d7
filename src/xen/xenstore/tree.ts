/**
 * The tree XenStore keeps, and a transaction's private view of it: the live tree (nodes with
 * generations, per-owner node counts, an undo journal that makes a commit all or nothing)
 * and the copy-on-write view a transaction reads and writes. Both answer the same View, so
 * the store applies one operation the same way to either. No permission is checked here:
 * the store does that before it calls in (store.ts).
 */

import type { DomId } from "../abi.js";
import { XenStoreError } from "./errors.js";
import { baseName, childPath, parentOf, type XenStorePerm } from "./paths.js";

export interface NodeInfo {
  readonly value: string;
  readonly perms: readonly XenStorePerm[];
  names(): string[];
}

/** What the operations need from a tree: the live store and a transaction both provide it. */
export interface View {
  get(path: string): NodeInfo | undefined;
  /**
   * The caller looked at `path` and may know what it found: the node there, or, when it is
   * missing, its nearest existing ancestor `at` (the store checks that the caller may read
   * it). A transaction's commit conflicts if that node changed; the live tree keeps nothing.
   */
  note(path: string, at: string): void;
  /** The parent must exist in this view; `creator` is the domain whose request makes it. */
  create(path: string, value: string, perms: XenStorePerm[], creator: DomId): void;
  setValue(path: string, value: string): void;
  setPerms(path: string, perms: XenStorePerm[]): void;
  /** Removes the node and everything below it. */
  remove(path: string): void;
  ownedCount(dom: DomId): number;
}

export class Node implements NodeInfo {
  readonly children = new Map<string, Node>();
  constructor(
    public value: string,
    public perms: XenStorePerm[],
    /** Store generation of the last change to this node's value, perms or child list. */
    public gen: number,
    /** Its full path (nodes never move), so a node found in the index can be removed. */
    readonly path: string,
    /** The domain whose request created it (0: domain 0, the toolstack or a backend). */
    readonly creator: DomId,
  ) {}
  names(): string[] {
    return [...this.children.keys()].sort();
  }
}

export class LiveTree implements View {
  readonly root = new Node("", [{ dom: 0, access: "n" }], 0, "/", 0);
  generation = 0;
  /** Undo steps, recorded while a transaction commit is being applied so it stays atomic. */
  journal: Array<() => void> | null = null;
  private readonly owned = new Map<DomId, number>([[0, 1]]);
  /**
   * The nodes whose perms name each domain other than 0 (as owner or in an entry), so a
   * release finds what it must remove or rewrite without walking the whole tree.
   */
  private readonly named = new Map<DomId, Set<Node>>();

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

  note(): void {}

  private mustGet(path: string): Node {
    const n = this.getNode(path);
    if (!n) throw new Error(`xenstore internal: ${path} vanished`);
    return n;
  }

  private addOwned(dom: DomId, delta: number): void {
    const n = (this.owned.get(dom) ?? 0) + delta;
    // No entry kept for an owner of nothing: over weeks every domain id would leave one.
    if (n === 0) this.owned.delete(dom);
    else this.owned.set(dom, n);
  }

  private index(node: Node, perms: readonly XenStorePerm[], add: boolean): void {
    for (const { dom } of perms) {
      if (dom === 0) continue;
      let set = this.named.get(dom);
      if (add) {
        if (!set) this.named.set(dom, (set = new Set()));
        set.add(node);
      } else if (set?.delete(node) && set.size === 0) {
        this.named.delete(dom);
      }
    }
  }

  /** The nodes whose perms name `dom` (never 0), as they stand; a copy. */
  namedBy(dom: DomId): Node[] {
    return [...(this.named.get(dom) ?? [])];
  }

  create(path: string, value: string, perms: XenStorePerm[], creator: DomId): void {
    const parent = this.mustGet(parentOf(path));
    const name = baseName(path);
    const gen = ++this.generation;
    const prevGen = parent.gen;
    const node = new Node(value, perms, gen, path, creator);
    parent.children.set(name, node);
    parent.gen = gen;
    this.addOwned(perms[0].dom, 1);
    this.index(node, perms, true);
    this.journal?.push(() => {
      parent.children.delete(name);
      parent.gen = prevGen;
      this.addOwned(perms[0].dom, -1);
      this.index(node, perms, false);
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
    this.index(node, prev.perms, false);
    this.index(node, perms, true);
    node.perms = perms;
    node.gen = ++this.generation;
    this.journal?.push(() => {
      this.addOwned(perms[0].dom, -1);
      this.addOwned(prev.perms[0].dom, 1);
      this.index(node, perms, false);
      this.index(node, prev.perms, true);
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
      this.index(n, n.perms, sign > 0);
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

export class TxNode implements NodeInfo {
  constructor(
    public value: string,
    public perms: XenStorePerm[],
    readonly children: Set<string>,
    /** Made by this transaction, not copied from the live tree. */
    readonly made: boolean,
  ) {}
  names(): string[] {
    return [...this.children].sort();
  }
}

export type TxOp =
  | { kind: "write"; path: string; value: string }
  | { kind: "mkdir"; path: string }
  | { kind: "rm"; path: string }
  | { kind: "setPerms"; path: string; perms: XenStorePerm[] };

/**
 * Copy-on-write view: reads fall through to the live tree, writes land in an overlay. The
 * store notes each path the transaction looked at whose node the caller may read; at commit,
 * if a noted node changed since the start, the transaction conflicts. The logged operations
 * are then replayed on the live tree, which gives the same result as the view because nothing
 * they depend on has changed. A hidden node is never noted: a conflict on it would tell the
 * caller that it changed.
 */
export class TxView implements View {
  readonly overlay = new Map<string, TxNode | null>();
  /** Each path looked at, with the node its commit checks (see View.note). */
  readonly accessed = new Map<string, string>();
  readonly ops: TxOp[] = [];
  private readonly ownerDelta = new Map<DomId, number>();
  /** Nodes its removals marked deleted in `overlay`: paths looked at, for the quota. */
  private dropped = 0;
  /** Bytes of the paths and values kept in `accessed`, `ops` and for `dropped`. */
  private kept = 0;

  constructor(
    private readonly live: LiveTree,
    readonly id: number,
    readonly owner: DomId,
    readonly startGen: number,
    /** What it may keep (an unprivileged owner's quota); absent: no bound. */
    private readonly limits?: { nodes: number; bytes: number },
  ) {}

  /**
   * Takes `bytes` more of the transaction's quota for one more path looked at or change made
   * (`count`: how many it has of that kind), or fails ENOSPC as xenstored's quota-trans-nodes
   * does: the transaction stays open, and ending it lets go of what it kept.
   */
  private keep(path: string, count: number, bytes: number): void {
    const l = this.limits;
    if (l === undefined) return;
    if (count >= l.nodes || this.kept + bytes > l.bytes)
      throw new XenStoreError(
        "ENOSPC",
        path,
        `transaction ${this.id} of domain ${this.owner} keeps ${count} paths or changes (${this.kept} bytes), its quota (${l.nodes}, ${l.bytes} bytes); end it`,
      );
    this.kept += bytes;
  }

  /** A change the store is about to make in this transaction, counted against its quota (a change then refused still counts: only this transaction pays). */
  admit(op: TxOp): void {
    this.keep(op.path, this.ops.length, op.path.length + (op.kind === "write" ? op.value.length : 0));
  }

  get(path: string): NodeInfo | undefined {
    const o = this.overlay.get(path);
    if (o !== undefined) return o ?? undefined;
    return this.live.getNode(path);
  }

  note(path: string, at: string): void {
    // A node this transaction made is checked where it was made: the parent's entry, noted
    // when the caller could read the parent, and none otherwise.
    if (this.accessed.has(path) || this.overlay.get(at)?.made) return;
    this.keep(path, this.accessed.size + this.dropped, path.length);
    this.accessed.set(path, at);
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
      false,
    );
    this.overlay.set(path, copy);
    return copy;
  }

  private addDelta(dom: DomId, d: number): void {
    this.ownerDelta.set(dom, (this.ownerDelta.get(dom) ?? 0) + d);
  }

  create(path: string, value: string, perms: XenStorePerm[], _creator: DomId): void {
    // The creator matters only on the live tree: the commit replays the request as its caller.
    this.materialize(parentOf(path)).children.add(baseName(path));
    this.overlay.set(path, new TxNode(value, perms, new Set(), true));
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
    // transaction does not resurrect the old children from the live tree. Each mark is kept,
    // so it counts against the quota; none is noted, as the caller may not read them all.
    const drop = (p: string) => {
      const n = this.get(p);
      if (!n) return;
      this.keep(p, this.accessed.size + this.dropped, p.length);
      this.dropped++;
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

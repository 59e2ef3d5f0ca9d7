/**
 * XenStore's watches (xenstored's watch.c): who watches which path, which change each watcher
 * may hear of (only what it may read, decided by the node's perms at the moment of the
 * change), and delivery — always asynchronous, in order, and held back while a transaction
 * commit is being applied so that a commit that fails fires nothing. The store decides when
 * something changed (store.ts); this file decides who hears it.
 */

import type { DomId } from "../abi.js";
import { accessFor, canRead, isAncestorOrSelf } from "./paths.js";
import type { LiveTree, Node } from "./tree.js";

/** A change at `path` for the watch registered with `token` on `watchPath` (canonical). */
export type XenStoreWatchCallback = (path: string, token: string, watchPath: string) => void;

export interface Watch {
  readonly dom: DomId;
  readonly path: string;
  readonly token: string;
  readonly cb: XenStoreWatchCallback;
  live: boolean;
}

/** A watch event waiting for delivery. */
export interface WatchEvent {
  w: Watch;
  path: string;
}

export class WatchTable {
  /** Every registered watch, in registration order (events of one change fire in this order). */
  readonly list: Watch[] = [];
  /** Events of a commit being applied: delivered only if the whole commit succeeds. */
  private staging: WatchEvent[] | null = null;
  private queue: WatchEvent[] = [];
  private flushScheduled = false;

  constructor(
    private readonly live: LiveTree,
    private readonly onWatchError: (err: unknown, path: string, token: string) => void,
  ) {}

  /** Registers `w` and queues its first event (a watch fires once right after registration). */
  add(w: Watch): void {
    this.list.push(w);
    this.enqueue(w, w.path);
  }

  /** Index of `dom`'s watch on `path` with `token`, or -1. */
  indexOf(dom: DomId, path: string, token: string): number {
    return this.list.findIndex((w) => w.dom === dom && w.path === path && w.token === token);
  }

  /** Removes the watch at `i`; an event already queued for it is dropped. */
  removeAt(i: number): void {
    this.list[i].live = false;
    this.list.splice(i, 1);
  }

  /** Removes every watch of `domid` (its domain was released). */
  dropDomain(domid: DomId): void {
    for (let i = this.list.length - 1; i >= 0; i--) {
      if (this.list[i].dom === domid) this.removeAt(i);
    }
  }

  countFor(dom: DomId): number {
    return this.list.filter((w) => w.dom === dom).length;
  }

  /** Holds events from now on (a commit is being applied); see takeStaged and endStaging. */
  beginStaging(): void {
    this.staging = [];
  }

  /** The events held since beginStaging. */
  takeStaged(): WatchEvent[] {
    return this.staging ?? [];
  }

  endStaging(): void {
    this.staging = null;
  }

  /** Queues held events for delivery (the commit succeeded). */
  deliver(events: readonly WatchEvent[]): void {
    for (const e of events) this.enqueue(e.w, e.path);
  }

  fireChange(path: string): void {
    const node = this.live.getNode(path);
    if (!node) return;
    for (const w of this.list) {
      if (isAncestorOrSelf(w.path, path) && canRead(accessFor(w.dom, node.perms))) this.emit(w, path);
    }
  }

  /** Called before the subtree at `path` is removed, while its perms can still be checked. */
  fireRemove(path: string): void {
    const node = this.live.getNode(path);
    if (!node) return;
    for (const w of this.list) {
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

  fireSpecial(name: string): void {
    for (const w of this.list) if (w.path === name) this.emit(w, name);
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
        w.cb(path, w.token, w.path);
      } catch (err) {
        this.onWatchError(err, path, w.token);
      }
    }
  }
}

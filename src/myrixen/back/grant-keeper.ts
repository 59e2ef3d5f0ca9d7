/**
 * dom0's grant keeper: ends dom0's grants to guests, deferring an end while the peer still
 * maps the grant (Linux's deferred list). Its own file, as Xen2MX keeps its grant handling
 * apart from the endpoint registry: the rule it keeps (a mapped grant is never revoked) is
 * security-critical and used by SharedMemory and the xenbus device alike. Imports only the
 * stats page below it.
 */

import type { DomId } from "../../xen/abi.js";
import { GNTTAB_NR_RESERVED_ENTRIES } from "../../xen/grant-table.js";
import type { Guest } from "../../xen/guest/guest.js";
import { MyriError } from "../protocol.js";
import { Stat } from "./stats.js";

/**
 * dom0's grants to guests. A grant still mapped by its peer cannot be revoked (Xen's rule, and
 * the lesson of the CVE-2022-23036 family): such ends are deferred and retried until the
 * peer unmaps (or dies, which unmaps everything it held). `whenUnused` waits the same way
 * without ending the grants: for memory that is reused for the same domains.
 */
export class GrantKeeper {
  private pending: { refs: number[]; end: boolean; done?: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly guest: Guest,
    private readonly stats: Int32Array,
  ) {}

  /** Grants `count` frames from `pfn` to `domid`; all or nothing. */
  grantRun(domid: DomId, pfn: number, count: number, readonly: boolean): number[] {
    const refs: number[] = [];
    try {
      for (let i = 0; i < count; i++) refs.push(this.guest.grants.grantAccess(domid, pfn + i, { readonly }));
    } catch (e) {
      for (const r of refs) this.guest.grants.endAccess(r);
      throw new MyriError(
        "MX_NO_RESOURCES",
        `the driver domain ran out of grant entries (${(e as Error).message}); close endpoints or channels`,
      );
    }
    this.publish();
    return refs;
  }

  /** Ends `refs`; `done` runs once every one of them has ended (now, or after the peer unmapped). */
  end(refs: readonly number[], done?: () => void): void {
    this.track(refs, true, done);
  }

  /** Runs `done` once no peer maps any of `refs` (now, or later); the grants stay. */
  whenUnused(refs: readonly number[], done: () => void): void {
    this.track(refs, false, done);
  }

  private track(refs: readonly number[], end: boolean, done?: () => void): void {
    const left = refs.filter((r) => !this.settle(r, end));
    if (left.length === 0) {
      this.publish();
      done?.();
      return;
    }
    this.pending.push({ refs: left, end, done });
    this.publish();
    this.timer ??= setInterval(() => this.retry(), 100);
  }

  retry(): void {
    const still: { refs: number[]; end: boolean; done?: () => void }[] = [];
    for (const p of this.pending) {
      const left = p.refs.filter((r) => !this.settle(r, p.end));
      if (left.length === 0) p.done?.();
      else still.push({ refs: left, end: p.end, done: p.done });
    }
    this.pending = still;
    this.publish();
    if (still.length === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /**
   * Whether `ref` is free of mappings (and, if `end`, ended now). Ending is one step: looking
   * first and ending after let a peer map in between, and the grant was taken for ended while
   * it stayed in force, mapped, and was never retried.
   */
  private settle(ref: number, end: boolean): boolean {
    return end ? this.guest.grants.tryEndAccess(ref) : !this.guest.grants.isInUse(ref);
  }

  private publish(): void {
    let n = 0;
    for (const p of this.pending) if (p.end) n += p.refs.length;
    Atomics.store(this.stats, Stat.deferredGrants, n);
    const t = this.guest.grants.table;
    Atomics.store(this.stats, Stat.grantsInUse, t.size - GNTTAB_NR_RESERVED_ENTRIES - t.freeCount);
  }
}

/**
 * The memory hypercalls: grant map, unmap and read (GNTTABOP_map_grant_ref and friends) and
 * shared segments (alloc, share, release). Every check on them is here, on the host side of
 * the hypercall — the guest-side wrapper is a convenience a guest can step around — and this
 * is the code the memory-isolation, memory-lifetime, sandbox and grant-table tests attack.
 * Its own file so that the security boundary over memory reads in one place; the dispatch
 * (hypervisor.ts) only routes requests here.
 */

import { type DomId, GNTST, gntstName, PAGE_SIZE } from "../abi.js";
import { copyBytes } from "../copy.js";
import type { CounterName } from "../counters.js";
import { HypercallError } from "../event-channel.js";
import { acquireGrant, type FrameLocation, GRANT_READ_MAX, releaseGrant } from "../grant-table.js";
import {
  type DomainRecord,
  MAX_MAPPED_PAGES_PER_DOMAIN,
  MAX_MAPPINGS_PER_DOMAIN,
  MAX_SEGMENT_PAGES,
  Segment,
} from "./domain-record.js";

export class MemoryHypercalls {
  constructor(
    /** The live domains' records, by id (the hypervisor's own map). */
    private readonly records: ReadonlyMap<DomId, DomainRecord>,
    /** Tells the privileged domain that `domid` released a segment (its view may hold the buffer). */
    private readonly foreignStale: (domid: DomId) => void,
  ) {}

  /**
   * Incarnation `serial` is gone: no segment names it any more. Serials are never reused, so
   * a dead one in an audience or among the holders only took room (~40 B each): a driver
   * domain's interrupt page that every short-lived peer of a long-lived endpoint mapped held
   * one per peer for as long as the endpoint lived. One pass over the live segments and pools.
   */
  forgetSerial(serial: number): void {
    const drop = (sg: Segment) => {
      sg.holders.delete(serial);
      sg.audience.delete(serial);
      sg.mappers.delete(serial);
    };
    for (const r of this.records.values()) {
      for (const sg of r.segments) drop(sg);
      for (const pooled of r.pool.values()) for (const sg of pooled) drop(sg);
    }
  }

  private count(rec: DomainRecord, name: CounterName, n = 1): void {
    rec.hyp.add(name, n);
  }

  // ---- grant mappings ---------------------------------------------------------------------

  private mapFail(rec: DomainRecord, status: number, error: string) {
    this.count(rec, "grant_errors");
    return { status, error: `${gntstName(status)}: ${error}` };
  }

  /**
   * GNTTABOP_map_grant_ref, for a run of refs. Every check is here, on the host side of the
   * hypercall: the guest-side wrapper is a convenience a guest can step around.
   */
  grantMap(rec: DomainRecord, granterId: DomId, refsArg: unknown, readonly: boolean) {
    const refs = Array.isArray(refsArg) ? refsArg : [refsArg];
    if (refs.length < 1 || refs.length > MAX_SEGMENT_PAGES || !refs.every((r) => Number.isInteger(r)))
      return this.mapFail(
        rec,
        GNTST.general_error,
        `grant_map takes 1..${MAX_SEGMENT_PAGES} integer grant refs, got ${refs.length === 1 ? String(refs[0]) : `${refs.length}`}`,
      );
    if (rec.mappings.size >= MAX_MAPPINGS_PER_DOMAIN)
      return this.mapFail(
        rec,
        GNTST.no_device_space,
        `domain ${rec.domid} already holds ${rec.mappings.size} mappings (the limit); unmap some first`,
      );
    if (rec.mappedPages + refs.length > MAX_MAPPED_PAGES_PER_DOMAIN)
      return this.mapFail(
        rec,
        GNTST.no_device_space,
        `domain ${rec.domid} already maps ${rec.mappedPages} pages; ${refs.length} more would pass the limit of ${MAX_MAPPED_PAGES_PER_DOMAIN}; unmap some first`,
      );
    const granter = this.records.get(granterId);
    if (!granter) return this.mapFail(rec, GNTST.bad_domain, `domain ${String(granterId)} does not exist`);
    if (readonly) {
      // A right to copy, not a buffer: checked now, and again (against the grant as it is then) on every read.
      for (const ref of refs) {
        const r = acquireGrant(granter, ref as number, rec.domid, false);
        if (r.status !== GNTST.okay) {
          this.count(rec, "grant_errors");
          return r;
        }
        releaseGrant(granter, ref as number, false);
      }
      const handle = rec.nextHandle++;
      rec.mappings.set(handle, { granter, refs: refs.slice() as number[], write: false });
      rec.mappedPages += refs.length;
      this.count(rec, "grant_map");
      return { status: GNTST.okay, handle };
    }
    const frames: FrameLocation[] = [];
    const unpin = (n: number) => {
      for (let j = 0; j < n; j++) releaseGrant(granter, refs[j] as number, true);
    };
    for (let i = 0; i < refs.length; i++) {
      const r = acquireGrant(granter, refs[i] as number, rec.domid, true);
      if (r.status !== GNTST.okay) {
        unpin(i);
        this.count(rec, "grant_errors");
        return r;
      }
      frames.push(r.frame!);
    }
    const shape = this.mappable(rec, granter, refs as number[], frames);
    if ("error" in shape) {
      unpin(refs.length);
      return this.mapFail(rec, shape.status, shape.error);
    }
    const handle = rec.nextHandle++;
    rec.mappings.set(handle, { granter, refs: refs.slice() as number[], write: true });
    rec.mappedPages += refs.length;
    this.count(rec, "grant_map");
    return { status: GNTST.okay, handle, buffer: shape.buffer, offset: shape.offset };
  }

  /**
   * What a writable mapping of `frames` may hand out, or why not. A guest gets a whole
   * segment (every page granted, in order) if it is in the segment's audience and, the first
   * time it maps another guest's segment, if its charge has room for it (below); the
   * privileged domain may also map consecutive RAM frames, as dom0 maps any guest page.
   */
  private mappable(
    rec: DomainRecord,
    granter: DomainRecord,
    refs: number[],
    frames: FrameLocation[],
  ): { buffer: SharedArrayBuffer; offset: number } | { status: number; error: string } {
    const badPage = (error: string) => ({ status: GNTST.bad_page, error });
    const first = frames[0];
    const sg = first.segment as Segment | undefined;
    if (!sg) {
      if (!rec.privileged)
        return badPage(
          `grant ref ${refs[0]} of domain ${granter.domid} names a RAM frame, which only the privileged ` +
            "domain may map writable; grant a page from guest.allocShared() to share it with another guest " +
            "(or map it read-only, which gives copies)",
        );
      for (let i = 1; i < frames.length; i++)
        if (frames[i].segment || frames[i].offset !== first.offset + i * PAGE_SIZE)
          return badPage(
            `grant refs ${refs.join(",")} of domain ${granter.domid} are not consecutive RAM frames`,
          );
      return { buffer: first.buffer, offset: first.offset };
    }
    if (frames.length !== sg.pages || first.offset !== 0)
      return badPage(
        `grant refs ${refs.join(",")} of domain ${granter.domid} cover ${frames.length} page(s) from page ` +
          `${first.offset / PAGE_SIZE} of a ${sg.pages}-page shared segment; a mapping gives the whole segment, ` +
          "so it takes a grant of every page of it, in order",
      );
    for (let i = 1; i < frames.length; i++)
      if (frames[i].segment !== sg || frames[i].offset !== i * PAGE_SIZE)
        return badPage(
          `grant ref ${refs[i]} of domain ${granter.domid} is not page ${i} of the segment the others name`,
        );
    if (!rec.privileged && rec !== sg.owner) {
      if (!sg.open && !sg.audience.has(rec.serial))
        return {
          status: GNTST.permission_denied,
          error:
            `the shared segment at frame ${sg.firstPfn} of domain ${granter.domid} is not shared with domain ${rec.domid}; ` +
            "its owner must add it (guest.shareWith) before granting it",
        };
      // The charge (see allocShared): a guest that maps another guest's segment holds its
      // buffer for life, after its owner released it or died too. So the first mapping of it
      // is charged to the mapper until the mapper dies, and refused if that passes its quota.
      // The driver domain's segments (windows, channels) are not: myrback bounds what it shares
      // with each guest (myrixen/back/shared-memory.ts) and reuses it only for that guest.
      const charge = !sg.owner.privileged && !sg.holders.has(rec.serial);
      if (charge && rec.chargedPages + sg.bufferPages > rec.maxSharedPages)
        return {
          status: GNTST.no_device_space,
          error:
            `domain ${rec.domid} may hold at most ${rec.maxSharedPages} shared pages (holds ${rec.chargedPages}: ` +
            `${chargeParts(rec)}); mapping the ${sg.bufferPages}-page segment of domain ${granter.domid} would pass it ` +
            "(a mapped segment counts until the mapping domain ends); raise maxSharedPages in createDomain",
        };
      if (sg.open) {
        sg.audience.add(rec.serial);
        sg.open = false;
      }
      if (charge) {
        rec.foreignPages += sg.bufferPages;
        sg.mappers.set(rec.serial, rec.domid);
      }
    }
    sg.holders.add(rec.serial);
    return { buffer: sg.buffer, offset: 0 };
  }

  grantUnmap(rec: DomainRecord, handle: number) {
    const m = rec.mappings.get(handle);
    if (!m)
      return this.mapFail(rec, GNTST.bad_handle, `domain ${rec.domid} has no mapping ${String(handle)}`);
    rec.mappings.delete(handle);
    rec.mappedPages -= m.refs.length;
    if (m.write) for (const r of m.refs) releaseGrant(m.granter, r, true);
    this.count(rec, "grant_unmap");
    return { status: GNTST.okay };
  }

  /**
   * A copy out of a read-only mapping. The grant is checked (and pinned for the copy) as it is
   * now: a granter that ended it, or died, is not read, whatever the mapping once allowed.
   */
  grantRead(rec: DomainRecord, handle: number, offset: number, length: number) {
    const m = rec.mappings.get(handle);
    if (!m || m.write)
      return this.mapFail(
        rec,
        GNTST.bad_handle,
        `domain ${rec.domid} has no read-only mapping ${String(handle)}`,
      );
    const total = m.refs.length * PAGE_SIZE;
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > total
    )
      return this.mapFail(
        rec,
        GNTST.bad_copy_arg,
        `read of ${String(length)} bytes at ${String(offset)} is outside the ${total}-byte mapping`,
      );
    if (length > GRANT_READ_MAX)
      return this.mapFail(
        rec,
        GNTST.bad_copy_arg,
        `read of ${length} bytes: one read copies at most ${GRANT_READ_MAX} (read in parts)`,
      );
    if (this.records.get(m.granter.domid) !== m.granter)
      return this.mapFail(rec, GNTST.bad_domain, `domain ${m.granter.domid} is gone`);
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const page = Math.floor(at / PAGE_SIZE);
      const inPage = at % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - inPage, length - done);
      const r = acquireGrant(m.granter, m.refs[page], rec.domid, false);
      if (r.status !== GNTST.okay) {
        this.count(rec, "grant_errors");
        return r;
      }
      copyBytes(out, done, new Uint8Array(r.frame!.buffer, r.frame!.offset + inPage, n), 0, n);
      releaseGrant(m.granter, m.refs[page], false);
      done += n;
    }
    this.count(rec, "grant_read");
    return { status: GNTST.okay, bytes: out };
  }

  // ---- shared segments ----------------------------------------------------------------------

  /**
   * A new segment of `pages` pages for `rec`.
   *
   * The charge. A segment's buffer, once handed to a guest's thread, stays reachable by it
   * until that thread ends, whatever it releases: the hypervisor cannot take a buffer back,
   * nor learn that a guest dropped one, and the guest's own buffer meter (maxBufferMb) does
   * not see memory the hypervisor's thread allocated. So a guest's maxSharedPages counts every
   * segment buffer it could reach, until it ends: its live segments, the ones it released,
   * and other guests' segments it mapped writable (each once, see mappable). Whatever a guest
   * does, the segment memory the host keeps for it is at most its quota (plus, while it
   * lives, the driver domain's windows and channels, which myrback bounds per guest).
   *
   * A guest's released segment waits in its pool and comes back, zeroed, as its next segment
   * of that many pages, once no other live guest mapped it (memory one domain could reach
   * never goes to another while that one lives): so a guest that allocates and releases in a
   * loop stays within its quota, and one that releases and keeps the buffers hits it. When
   * its quota has no room for a new buffer, the smallest larger one of its pool serves (its
   * pages past the segment zeroed, charged as a whole): a guest whose sizes vary is refused
   * only when no released buffer is large enough and the quota is full. The
   * privileged domain's segments are released as before (it is trusted to drop what it
   * releases, and myrback reuses its own memory per guest).
   */
  allocShared(rec: DomainRecord, pages: unknown, audience: unknown) {
    if (!Number.isInteger(pages) || (pages as number) < 1 || (pages as number) > MAX_SEGMENT_PAGES)
      throw new HypercallError(
        "EINVAL",
        `mem_alloc_shared: pages must be an integer in 1..${MAX_SEGMENT_PAGES}, got ${String(pages)}`,
      );
    const n = pages as number;
    const members = new Set<number>();
    if (audience !== undefined) {
      if (!Array.isArray(audience) || audience.length > 64)
        throw new HypercallError(
          "EINVAL",
          "mem_alloc_shared: audience must be an array of at most 64 domain ids",
        );
      for (const d of audience) {
        const peer = Number.isInteger(d) ? this.records.get(d as DomId) : undefined;
        if (!peer) throw new HypercallError("ESRCH", `mem_alloc_shared: domain ${String(d)} does not exist`);
        if (peer !== rec) members.add(peer.serial);
      }
    }
    let reused = rec.privileged ? undefined : this.reusable(rec, n);
    if (!reused && !rec.privileged && rec.chargedPages + n > rec.maxSharedPages)
      reused = this.reusableLarger(rec, n);
    if (!reused && rec.chargedPages + n > rec.maxSharedPages)
      throw new HypercallError(
        "ENOMEM",
        `domain ${rec.domid} may have at most ${rec.maxSharedPages} shared pages (has ${rec.chargedPages}: ` +
          `${chargeParts(rec)}; asked ${n}); release segments it no longer needs (a released segment ` +
          "still counts, until a later segment of its size or smaller reuses it), or raise maxSharedPages in createDomain",
      );
    const firstPfn = this.sharedFrameRun(rec, n);
    let buffer: SharedArrayBuffer;
    if (reused) {
      // Zeroed by the guest's runtime (Guest.allocShared), not here: the buffer was its own and
      // no other live domain mapped it, so what it held is only ever the guest's own, and 16 MiB
      // zeroed here held the thread that serves every domain (13–97 ms in a loop).
      buffer = reused.buffer;
      rec.pooledPages -= reused.bufferPages;
    } else buffer = new SharedArrayBuffer(n * PAGE_SIZE);
    const sg = new Segment(rec, firstPfn, n, buffer, members, audience === undefined);
    rec.addSegment(sg);
    rec.sharedPages += sg.bufferPages;
    this.count(rec, "mem_shared_alloc", n);
    return { pfn: firstPfn, buffer: sg.buffer, reused: reused !== undefined };
  }

  /**
   * A released segment of `n` pages from `rec`'s pool that only `rec` (and the privileged
   * domain) may still hold, taken out of the pool; or none. Looks at a few entries, so a pool
   * of segments other guests still hold costs each allocation a bounded walk; the ones looked
   * at go to the back.
   */
  private reusable(rec: DomainRecord, n: number): Segment | undefined {
    const list = rec.pool.get(n);
    if (!list) return undefined;
    const looked = Math.min(list.length, POOL_ENTRIES_LOOKED_AT);
    for (let k = 0; k < looked; k++) {
      const sg = list[list.length - 1 - k];
      if (this.heldByOthers(sg)) continue;
      list.splice(list.length - 1 - k, 1);
      if (list.length === 0) rec.pool.delete(n);
      else if (k > 0) list.unshift(...list.splice(list.length - k, k));
      return sg;
    }
    if (looked < list.length) list.unshift(...list.splice(list.length - looked, looked));
    return undefined;
  }

  /** The released buffer of the fewest pages above `n` in `rec`'s pool that only `rec` may still hold, taken out; or none. */
  private reusableLarger(rec: DomainRecord, n: number): Segment | undefined {
    const sizes = [...rec.pool.keys()].filter((size) => size > n).sort((a, b) => a - b);
    for (const size of sizes) {
      const sg = this.reusable(rec, size);
      if (sg) return sg;
    }
    return undefined;
  }

  /** Whether a guest other than its owner that mapped `sg` still lives (dead ones are forgotten). */
  private heldByOthers(sg: Segment): boolean {
    for (const [serial, domid] of sg.mappers) {
      if (this.records.get(domid)?.serial === serial) return true;
      sg.mappers.delete(serial);
    }
    return false;
  }

  /**
   * The first frame number of `n` for a new segment: for the privileged domain, from a
   * released run that no grant in force names (a grant naming a released frame must not come
   * to name new memory); else above the shared range's top. Frame numbers are names only:
   * the memory is always new. Only the privileged domain's are used again: it creates and
   * releases a window per guest and a channel per co-resident pair for as long as the host
   * runs (32-rank jobs every 10 s used up 2^32 in a week). Its own view of its frames
   * (guest.ts ForeignView) keeps what it learned for one segment generation only, so a number
   * used again resolves to the new segment, never the released one.
   */
  private sharedFrameRun(rec: DomainRecord, n: number): number {
    const free = rec.freeFrames;
    // A few runs are looked at, each costing a walk of the grant table: a domain that keeps
    // released frames granted only makes its own top grow.
    for (let i = 0, looked = 0; i < free.length && looked < FREE_RUNS_LOOKED_AT; i++) {
      const run = free[i];
      if (run.pages < n) continue;
      looked++;
      if (rec.grantsFrames(run.first, n)) continue;
      const first = run.first;
      if (run.pages === n) free.splice(i, 1);
      else {
        run.first += n;
        run.pages -= n;
      }
      return first;
    }
    const first = rec.nrPages + rec.sharedFrames;
    if (first + n > 0xffffffff)
      throw new HypercallError("ENOMEM", `domain ${rec.domid} has used up its shared frame numbers`);
    rec.sharedFrames += n;
    return first;
  }

  private ownSegment(rec: DomainRecord, pfn: unknown, op: string): Segment {
    const sg = Number.isInteger(pfn) ? rec.segmentAt(pfn as number) : undefined;
    if (!sg || sg.firstPfn !== pfn)
      throw new HypercallError(
        "EINVAL",
        `${op}: frame ${String(pfn)} does not start a shared segment of domain ${rec.domid}`,
      );
    return sg;
  }

  shareSegment(rec: DomainRecord, pfn: unknown, domid: unknown) {
    const sg = this.ownSegment(rec, pfn, "mem_share");
    const peer = Number.isInteger(domid) ? this.records.get(domid as DomId) : undefined;
    if (!peer) throw new HypercallError("ESRCH", `mem_share: domain ${String(domid)} does not exist`);
    if (peer !== rec) sg.audience.add(peer.serial);
    sg.open = false;
    return null;
  }

  releaseSegment(rec: DomainRecord, pfn: unknown) {
    const sg = this.ownSegment(rec, pfn, "mem_release_shared");
    rec.removeSegment(sg);
    rec.sharedPages -= sg.bufferPages;
    sg.released = true;
    if (rec.privileged) freeRun(rec.freeFrames, sg.firstPfn, sg.pages);
    else {
      // It may keep the buffer: still charged to it, and a later segment of its size (allocShared).
      const size = sg.bufferPages;
      const list = rec.pool.get(size);
      if (list) list.push(sg);
      else rec.pool.set(size, [sg]);
      rec.pooledPages += size;
    }
    this.count(rec, "mem_shared_release", sg.pages);
    // The privileged domain's view already stops resolving it (removeSegment bumped the
    // generation); told, it also lets go of the buffer now, so the memory can be collected.
    this.foreignStale(rec.domid);
    return null;
  }
}

/** Pooled segments looked at for a new segment before a new buffer is made instead. */
const POOL_ENTRIES_LOOKED_AT = 8;

/** What a domain's shared-page charge is made of, for error messages. */
function chargeParts(rec: DomainRecord): string {
  return (
    `${rec.sharedPages} in live segments, ${rec.pooledPages} in released ones it may still hold, ` +
    `${rec.foreignPages} of other guests' segments it mapped`
  );
}

/** Released runs looked at for a new segment before the shared range's top grows instead. */
const FREE_RUNS_LOOKED_AT = 8;

/** Adds [first, first + pages) to `free` (kept in frame order), merged with its neighbours. */
function freeRun(free: { first: number; pages: number }[], first: number, pages: number): void {
  let i = 0;
  while (i < free.length && free[i].first < first) i++;
  const before = i > 0 ? free[i - 1] : undefined;
  const after = i < free.length ? free[i] : undefined;
  if (before !== undefined && before.first + before.pages === first) {
    before.pages += pages;
    if (after !== undefined && first + pages === after.first) {
      before.pages += after.pages;
      free.splice(i, 1);
    }
  } else if (after !== undefined && first + pages === after.first) {
    after.first = first;
    after.pages += pages;
  } else free.splice(i, 0, { first, pages });
}

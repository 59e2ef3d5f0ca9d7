/**
 * What the hypervisor keeps for one domain and never hands out: its grant table's shadow,
 * its shared segments and the rules that make sharing safe (Segment, below), the mappings
 * it holds, and its private counter block. Its own file because every hypercall reads it and
 * because these records are the security boundary's state: no guest ever gets a reference
 * to one (guests hold only what a hypercall copied or mapped for them).
 */

import { type DomId, GTF_permit_access, GTF_type_mask, PAGE_SIZE } from "../abi.js";
import { CounterBlock, CounterWriter } from "../counters.js";
import {
  bumpSegmentGeneration,
  type FrameLocation,
  GNTTAB_NR_RESERVED_ENTRIES,
  type GrantingDomain,
} from "../grant-table.js";
import type { WatchEventSender } from "../xenstore/port-credit.js";

/**
 * A shared segment: a buffer the hypervisor made for one domain (its owner) to grant to
 * others. A JS isolate cannot be handed part of a SharedArrayBuffer, and a buffer once handed
 * to a thread can never be taken back. So the rules that make sharing safe live here, not
 * in any guest-side wrapper:
 *   1. a segment is always fresh memory (the hypervisor allocates it; no domain can register
 *      a buffer it brought, e.g. one it once mapped from someone else);
 *   2. a writable mapping gives the whole segment, so it needs a grant for every page of it;
 *   3. only domains in the segment's audience may map it writable (the owner declares the
 *      audience; undeclared, the first mapper is the whole audience), identified by
 *      incarnation, so a reused domain id is not a member;
 *   4. a released segment's frames never resolve again (frame numbers are not reused).
 * Whoever was in the audience may keep the buffer; no one else can ever get it. That is
 * what "memory a domain could once reach is never given to another domain" means here; the
 * garbage collector frees the memory once every holder has dropped it.
 *
 * And since nothing tells the hypervisor that a holder dropped it, a buffer stays charged,
 * against maxSharedPages, to every guest that could reach it for as long as that guest lives
 * (memory-hypercalls.ts, "The charge"): its owner, released or not (a released buffer waits
 * in the owner's pool and comes back, zeroed, as its next segment of that size once no other
 * live guest holds it), and each other guest that mapped it writable.
 */
export class Segment {
  /** Incarnations (DomainRecord.serial) that ever mapped it writable. */
  readonly holders = new Set<number>();
  /**
   * The guests other than the owner that mapped it writable (serial → domain id): while one of
   * them lives, the buffer is not the owner's alone, so it never comes back as a new segment.
   */
  readonly mappers = new Map<number, DomId>();
  released = false;

  constructor(
    readonly owner: DomainRecord,
    readonly firstPfn: number,
    readonly pages: number,
    readonly buffer: SharedArrayBuffer,
    /** Incarnations allowed to map it writable (the owner and the privileged domain always may). */
    readonly audience: Set<number>,
    /** No audience declared yet: the first domain to map it becomes the audience. */
    public open: boolean,
  ) {}

  /**
   * The pages its buffer holds, what its holders are charged: `pages`, or more when it reuses
   * a larger released buffer of its owner's (memory-hypercalls.ts, allocShared).
   */
  get bufferPages(): number {
    return this.buffer.byteLength / PAGE_SIZE;
  }
}

/** A mapping a domain holds: writable ones pin their grants; read-only ones are a right to copy. */
export interface Mapping {
  granter: DomainRecord;
  refs: number[];
  write: boolean;
}

/** At most this many pages in one segment, and in one mapping (16 MiB). */
export const MAX_SEGMENT_PAGES = 4096;
/** At most this many mappings per domain at once (each costs the hypervisor a record). */
export const MAX_MAPPINGS_PER_DOMAIN = 16384;
/**
 * At most this many pages in all of a domain's mappings at once (4 GiB of others' memory).
 * The mapping count alone let one guest keep 16384 × 4096 refs, half a GiB of the host's heap,
 * and a few such guests took the host down; a real domain maps far fewer (a window is 165
 * pages, a channel 130).
 */
export const MAX_MAPPED_PAGES_PER_DOMAIN = 1 << 20;

/** Everything the hypervisor keeps for one domain. */
export class DomainRecord implements GrantingDomain {
  readonly entries: Uint32Array;
  readonly shadow: Int32Array;
  /** Live shared segments, in frame order. */
  readonly segments: Segment[] = [];
  /** Pages of live segments (the quota counts these, and the two below). */
  sharedPages = 0;
  /**
   * An unprivileged domain's released segments, by page count: it may still hold their
   * buffers (a SharedArrayBuffer is never taken back), so they stay charged to it and its next
   * segment of that size reuses one (zeroed) once no other live guest holds it.
   */
  readonly pool = new Map<number, Segment[]>();
  /** Pages of the segments in `pool`. */
  pooledPages = 0;
  /** Pages of other guests' segments this domain mapped writable (each once): it holds them for life. */
  foreignPages = 0;
  /** Frame numbers above RAM handed out to segments so far (the top of the shared range). */
  sharedFrames = 0;
  /**
   * The privileged domain's runs of frame numbers below that top whose segments were
   * released, in frame order, adjacent runs merged: a new segment takes one (once no grant
   * names it) before the top grows, so a driver domain that creates and releases windows and
   * channels for weeks does not run out of frame numbers (memory-hypercalls.ts).
   */
  readonly freeFrames: { first: number; pages: number }[] = [];
  readonly mappings = new Map<number, Mapping>();
  /** Pages of all its mappings (refs held), against MAX_MAPPED_PAGES_PER_DOMAIN. */
  mappedPages = 0;
  nextHandle = 1;
  readonly hyp: CounterWriter;
  /** Its XenStore watch events on their way (set when its worker starts). */
  xsEvents?: WatchEventSender;

  constructor(
    readonly domid: DomId,
    /** This incarnation of the domain id: unique for the life of the hypervisor. */
    readonly serial: number,
    readonly privileged: boolean,
    readonly ram: SharedArrayBuffer,
    readonly nrPages: number,
    readonly table: SharedArrayBuffer,
    readonly shadowBuffer: SharedArrayBuffer,
    readonly counters: SharedArrayBuffer,
    /** The hypervisor's own block: never leaves this thread, so no guest can write it. */
    readonly hypCounters: ArrayBuffer,
    readonly maxSharedPages: number,
  ) {
    this.entries = new Uint32Array(table);
    this.shadow = new Int32Array(shadowBuffer);
    this.hyp = new CounterWriter(hypCounters, CounterBlock.Hypervisor, counters);
  }

  /** Pages charged against maxSharedPages: its live segments, its released ones, others' it mapped. */
  get chargedPages(): number {
    return this.sharedPages + this.pooledPages + this.foreignPages;
  }

  segmentAt(pfn: number): Segment | undefined {
    const i = this.segmentIndex(pfn);
    return i >= 0 ? this.segments[i] : undefined;
  }

  /** The index of the segment holding `pfn`, or `-1 - i` where `i` is where one would go. */
  private segmentIndex(pfn: number): number {
    const segs = this.segments;
    let lo = 0;
    let hi = segs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const sg = segs[mid];
      if (pfn < sg.firstPfn) hi = mid - 1;
      else if (pfn >= sg.firstPfn + sg.pages) lo = mid + 1;
      else return mid;
    }
    return -1 - lo;
  }

  /**
   * Frame `pfn` (at or above RAM) as the privileged domain's foreign view asks for it: the
   * segment holding it, or else the run [first, end) of frame numbers around it that no live
   * segment holds. O(log segments), whatever the domain did.
   */
  segmentRun(pfn: number): { first: number; end: number; segment?: Segment } {
    const i = this.segmentIndex(pfn);
    const segs = this.segments;
    if (i >= 0) return { first: segs[i].firstPfn, end: segs[i].firstPfn + segs[i].pages, segment: segs[i] };
    const at = -1 - i;
    const before = at > 0 ? segs[at - 1] : undefined;
    return {
      first: before ? before.firstPfn + before.pages : this.nrPages,
      end: at < segs.length ? segs[at].firstPfn : 2 ** 32,
    };
  }

  frame(pfn: number): FrameLocation | undefined {
    if (!Number.isInteger(pfn) || pfn < 0) return undefined;
    if (pfn < this.nrPages) return { buffer: this.ram, offset: pfn * PAGE_SIZE, shareable: false };
    const sg = this.segmentAt(pfn);
    if (!sg) return undefined;
    return { buffer: sg.buffer, offset: (pfn - sg.firstPfn) * PAGE_SIZE, shareable: true, segment: sg };
  }

  /** Inserts a new segment in frame order. */
  addSegment(sg: Segment): void {
    const segs = this.segments;
    let i = segs.length;
    while (i > 0 && segs[i - 1].firstPfn > sg.firstPfn) i--;
    segs.splice(i, 0, sg);
    bumpSegmentGeneration(this.shadow);
  }

  /** Takes a released segment out: its frames stop resolving, for the privileged domain's view too. */
  removeSegment(sg: Segment): void {
    this.segments.splice(this.segments.indexOf(sg), 1);
    bumpSegmentGeneration(this.shadow);
  }

  /** Whether an entry in force in this domain's grant table names a frame in [first, first + pages). */
  grantsFrames(first: number, pages: number): boolean {
    const e = this.entries;
    for (let i = 2 * GNTTAB_NR_RESERVED_ENTRIES; i < e.length; i += 2) {
      if ((Atomics.load(e, i) & GTF_type_mask) !== GTF_permit_access) continue;
      const pfn = Atomics.load(e, i + 1);
      if (pfn >= first && pfn < first + pages) return true;
    }
    return false;
  }

  /**
   * Adds to `into` each of `ids` that an entry in force in this domain's grant table names, in
   * table order, until `into` holds `max`.
   */
  collectNamed(ids: ReadonlySet<DomId>, into: Set<DomId>, max = Number.POSITIVE_INFINITY): void {
    const e = this.entries;
    for (let i = 2 * GNTTAB_NR_RESERVED_ENTRIES; i < e.length && into.size < max; i += 2) {
      const w = Atomics.load(e, i);
      if ((w & GTF_type_mask) === GTF_permit_access && ids.has(w >>> 16)) into.add(w >>> 16);
    }
  }
}

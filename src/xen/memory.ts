/**
 * Guest-physical memory: a domain's RAM is one SharedArrayBuffer cut into 4 KiB frames
 * (pfn 0 … nrPages−1), with a first-fit page allocator the guest uses for rings, buffers and
 * anything it may grant. Frames from pfn nrPages upwards are *shared segments*: separately
 * backed SharedArrayBuffers that a guest allocates for pages another unprivileged domain
 * will map (a JS isolate cannot be handed part of a SharedArrayBuffer, so a page mapped into
 * another guest must live in a buffer of its own; RAM frames can still be granted for copy,
 * and mapped by the privileged driver domain, which may map any guest frame).
 */
import { PAGE_SHIFT, PAGE_SIZE } from "./abi.js";

export class OutOfMemoryError extends Error {
  constructor(
    readonly requestedPages: number,
    readonly freePages: number,
    readonly largestRun: number,
  ) {
    super(
      `out of guest memory: asked for ${requestedPages} contiguous page(s), ${freePages} free, ` +
        `largest free run ${largestRun}; give the domain more pages (createDomain({ pages }))`,
    );
    this.name = "OutOfMemoryError";
  }
}

/** First-fit allocator of contiguous page runs over a bitmap; O(pages) worst case, no per-call garbage. */
export class PageAllocator {
  private readonly used: Uint8Array;
  private free: number;
  private hint = 0;

  constructor(readonly nrPages: number) {
    if (!Number.isInteger(nrPages) || nrPages < 1)
      throw new RangeError(`nrPages must be a positive integer, got ${nrPages}`);
    this.used = new Uint8Array(nrPages);
    this.free = nrPages;
  }

  get freePages(): number {
    return this.free;
  }

  /** Allocates `count` contiguous pages and returns the first pfn. Throws OutOfMemoryError. */
  alloc(count = 1): number {
    if (!Number.isInteger(count) || count < 1)
      throw new RangeError(`page count must be a positive integer, got ${count}`);
    const start = this.findRun(count, this.hint) ?? this.findRun(count, 0);
    if (start === undefined) throw new OutOfMemoryError(count, this.free, this.largestRun());
    this.used.fill(1, start, start + count);
    this.free -= count;
    this.hint = start + count >= this.nrPages ? 0 : start + count;
    return start;
  }

  /** Frees a run returned by alloc. Freeing a page that is not allocated is a caller bug. */
  release(pfn: number, count = 1): void {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn + count > this.nrPages)
      throw new RangeError(`cannot free pages ${pfn}..${pfn + count - 1}: outside 0..${this.nrPages - 1}`);
    for (let p = pfn; p < pfn + count; p++) {
      if (this.used[p] === 0) throw new Error(`double free of page ${p}`);
    }
    this.used.fill(0, pfn, pfn + count);
    this.free += count;
  }

  isAllocated(pfn: number): boolean {
    return this.used[pfn] === 1;
  }

  private findRun(count: number, from: number): number | undefined {
    let runStart = from;
    let runLen = 0;
    for (let p = from; p < this.nrPages; p++) {
      if (this.used[p] === 0) {
        if (runLen === 0) runStart = p;
        if (++runLen === count) return runStart;
      } else {
        runLen = 0;
      }
    }
    return undefined;
  }

  private largestRun(): number {
    let best = 0;
    let run = 0;
    for (let p = 0; p < this.nrPages; p++) {
      run = this.used[p] === 0 ? run + 1 : 0;
      if (run > best) best = run;
    }
    return best;
  }
}

/** A contiguous run of guest pages, with its bytes. */
export interface PageRun {
  readonly pfn: number;
  readonly count: number;
  readonly bytes: Uint8Array;
}

/** A domain's view of its own RAM. */
export class GuestMemory {
  readonly bytes: Uint8Array;
  readonly allocator: PageAllocator;

  constructor(
    readonly ram: SharedArrayBuffer,
    readonly nrPages: number,
  ) {
    if (ram.byteLength !== nrPages * PAGE_SIZE)
      throw new RangeError(`RAM is ${ram.byteLength} bytes, expected ${nrPages} pages of ${PAGE_SIZE}`);
    this.bytes = new Uint8Array(ram);
    this.allocator = new PageAllocator(nrPages);
  }

  /** The bytes of one RAM frame. */
  page(pfn: number): Uint8Array {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.nrPages)
      throw new RangeError(`pfn ${pfn} is outside RAM (0..${this.nrPages - 1})`);
    return new Uint8Array(this.ram, pfn << PAGE_SHIFT, PAGE_SIZE);
  }

  /** Allocates `count` contiguous pages (zeroed) and returns them with their bytes. */
  allocPages(count = 1): PageRun {
    const pfn = this.allocator.alloc(count);
    const bytes = new Uint8Array(this.ram, pfn << PAGE_SHIFT, count << PAGE_SHIFT);
    bytes.fill(0);
    return { pfn, count, bytes };
  }

  /** Allocates enough pages for `length` bytes and returns a view of exactly `length` bytes. */
  allocBytes(length: number): PageRun {
    if (!Number.isInteger(length) || length < 1)
      throw new RangeError(`length must be a positive integer, got ${length}`);
    const run = this.allocPages(Math.ceil(length / PAGE_SIZE));
    return { pfn: run.pfn, count: run.count, bytes: run.bytes.subarray(0, length) };
  }

  freePages(run: Pick<PageRun, "pfn" | "count">): void {
    this.allocator.release(run.pfn, run.count);
  }

  /** The pfn and in-page offset of a view into this RAM, or undefined if it is not in RAM. */
  locate(view: ArrayBufferView): { pfn: number; offset: number } | undefined {
    if (view.buffer !== this.ram) return undefined;
    return { pfn: view.byteOffset >>> PAGE_SHIFT, offset: view.byteOffset & (PAGE_SIZE - 1) };
  }
}

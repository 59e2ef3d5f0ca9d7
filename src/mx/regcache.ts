/**
 * The MX library's memory-registration cache and bounce-buffer pool (as Open-MX's region
 * cache in omx_large.c, or an MPI's rcache). Registration is a control operation — a round
 * trip to the backend, a grant per page, an entry in the NIC's translation table, bytes
 * counted against the domain's quota — so a registration is kept and reused, and both
 * caches are bounded: a host runs for weeks, and a program that sends one buffer with a
 * thousand different lengths must not hold a thousand registrations.
 *
 *   - A registration covers whole pages, and serves any byte range inside them: a lookup is
 *     by (memory, byte range), so a buffer sent with many lengths, or from many offsets,
 *     hits the registration of a larger range. A miss registers the containing pages merged
 *     with every cached registration they overlap, and the ones it covers go.
 *   - An entry in use (an outstanding send or receive holds it) is never evicted; idle ones
 *     are, least recently used first, beyond `limits.regions` entries or `limits.bytes`
 *     registered bytes — and before a registration is given up as failed when the quota, the
 *     grant table or the NIC says no.
 *   - Bounce buffers (for messages from memory outside the domain's RAM, e.g. a typed array
 *     on the JS heap) come in size classes (quarter steps between powers of two, so at most
 *     25% is wasted), are pooled up to `limits.bouncePoolBytes` (a fraction of RAM), and the
 *     pool is emptied before an allocation fails.
 *
 * A failure that remains names what to change (the guest's memory: `myrixen run --pages`).
 */

import { type MxDriver, MxDriverError } from "../myrixen/driver-abi.js";
import { Access } from "../nic/window.js";
import { MxError, MxReturn, type MxReturnName } from "./codes.js";

const PAGE = 4096;
/** What a message buffer needs: local access for DMA, remote reads for a peer's pull. */
const ACCESS = Access.LocalRead | Access.LocalWrite | Access.RemoteRead;

/** What the user can change when the domain's memory runs out. */
export const MEMORY_KNOB = "give the domain more memory (myrixen run --pages; Host.startGuest({ pages }))";

export interface RegLimits {
  /** Idle entries are evicted beyond this many cached registrations. */
  regions: number;
  /** ... or beyond this many registered bytes. */
  bytes: number;
  /** Idle bounce buffers are kept up to this many bytes. */
  bouncePoolBytes: number;
}

/**
 * The bounds for a domain with `ram` bytes of memory. Registered bytes count against the
 * backend's quota, which is the guest's memory: half of it may stay registered while idle.
 * The bounce pool holds memory itself, so it keeps an eighth. 32 entries: a few buffers of
 * each of a program's working sizes, far below the backend's per-domain region quota.
 */
export function regLimits(ram: number): RegLimits {
  return {
    regions: 32,
    bytes: Math.max(PAGE, Math.min(Math.floor(ram / 2 / PAGE) * PAGE, 256 << 20)),
    bouncePoolBytes: Math.min(Math.floor(ram / 8 / PAGE) * PAGE, 32 << 20),
  };
}

/** A cached registration of pages [start, end) of `memory`. */
export class RegEntry {
  /** Holders: requests in flight whose data is in these pages. */
  refs = 0;
  lastUse = 0;
  /** A larger registration replaced it: deregistered when its last holder lets go. */
  superseded = false;
  /** Deregistered (the memory was freed or the endpoint closed); holders still let go of it. */
  gone = false;
  constructor(
    readonly memory: ArrayBufferLike,
    readonly start: number,
    readonly end: number,
    readonly regionId: number,
    readonly key: number,
  ) {}
}

/** The counters the caches keep up to date (EndpointCounters holds them). */
export interface RegCounters {
  registrations: number;
  deregistrations: number;
  regCacheHits: number;
  regCacheEvictions: number;
  /** Gauges: entries and registered bytes in the cache, bytes of idle bounce buffers pooled. */
  regionsCached: number;
  bytesCached: number;
  bouncePooledBytes: number;
}

function driverError(e: unknown, fallback: MxReturnName): { code: MxReturnName; message: string } {
  if (e instanceof MxError) return { code: e.codeName, message: e.message.replace(/^MX_[A-Z_]+: /, "") };
  if (e instanceof MxDriverError)
    return {
      code: (e.code in MxReturn ? e.code : fallback) as MxReturnName,
      message: e.message.replace(/^MX_[A-Z_]+: /, ""),
    };
  return { code: fallback, message: (e as Error)?.message ?? String(e) };
}

export class RegCache {
  private readonly entries: RegEntry[] = [];
  /** The entry of the last hit: consecutive messages mostly reuse one buffer. */
  private last: RegEntry | undefined;
  private tick = 0;

  constructor(
    private readonly driver: MxDriver,
    private readonly endpointId: number,
    readonly limits: RegLimits,
    private readonly counters: RegCounters,
  ) {}

  /**
   * The registration covering `view` (its pages), held until `release`. Throws MxError
   * (MX_NO_RESOURCES with what to change) when it cannot be had even with every idle entry
   * evicted.
   */
  acquire(view: Uint8Array): RegEntry {
    const mem = view.buffer;
    const s = view.byteOffset;
    const e = s + view.length;
    let r = this.last;
    if (r === undefined || r.memory !== mem || r.start > s || e > r.end || r.superseded || r.gone) {
      r = undefined;
      const list = this.entries;
      for (let i = 0; i < list.length; i++) {
        const x = list[i];
        if (x.memory === mem && x.start <= s && e <= x.end && !x.superseded) {
          r = x;
          break;
        }
      }
      if (r === undefined) return this.miss(mem, s, e);
      this.last = r;
    }
    r.refs++;
    r.lastUse = ++this.tick;
    this.counters.regCacheHits++;
    return r;
  }

  release(r: RegEntry): void {
    r.refs--;
    r.lastUse = ++this.tick;
    if (r.refs > 0 || r.gone) return;
    if (r.superseded) this.evict(r);
    else if (this.entries.length > this.limits.regions || this.counters.bytesCached > this.limits.bytes)
      this.trim();
  }

  /** Memory [start, end) of `memory` is being freed: nothing may stay registered there. */
  drop(memory: ArrayBufferLike, start: number, end: number): void {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const x = this.entries[i];
      if (x.memory === memory && x.start < end && start < x.end) this.evict(x);
    }
  }

  /** The endpoint closed (its registrations went with it): forget everything. */
  clear(): void {
    for (const x of this.entries) x.gone = true;
    this.entries.length = 0;
    this.last = undefined;
    this.counters.regionsCached = 0;
    this.counters.bytesCached = 0;
  }

  /** Deregisters the least recently used idle entry; false if every entry is in use. */
  evictIdle(): boolean {
    let victim: RegEntry | undefined;
    for (const x of this.entries)
      if (x.refs === 0 && (victim === undefined || x.lastUse < victim.lastUse)) victim = x;
    if (victim === undefined) return false;
    this.evict(victim);
    this.counters.regCacheEvictions++;
    return true;
  }

  private trim(): void {
    while (
      (this.entries.length > this.limits.regions || this.counters.bytesCached > this.limits.bytes) &&
      this.evictIdle()
    );
  }

  private miss(mem: ArrayBufferLike, s: number, e: number): RegEntry {
    let start = Math.floor(s / PAGE) * PAGE;
    let end = Math.max(start + PAGE, Math.ceil(e / PAGE) * PAGE);
    // Merge with what it overlaps, so the next range of the same buffer hits — unless the
    // union would be more than the cache keeps (then just these pages).
    let ms = start;
    let me = end;
    for (const x of this.entries)
      if (x.memory === mem && !x.superseded && x.start < end && start < x.end) {
        ms = Math.min(ms, x.start);
        me = Math.max(me, x.end);
      }
    if (me - ms <= this.limits.bytes) {
      start = ms;
      end = me;
    }
    // What the new one covers goes: idle ones now (room in the quota), busy ones when done.
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const x = this.entries[i];
      if (x.memory !== mem || x.start < start || x.end > end) continue;
      if (x.refs === 0) this.evict(x);
      else x.superseded = true;
    }
    const view = new Uint8Array(mem as SharedArrayBuffer, start, end - start);
    let reg: { regionId: number; key: number };
    for (;;) {
      try {
        reg = this.driver.registerRegion(this.endpointId, view, ACCESS);
        break;
      } catch (err) {
        const { code, message } = driverError(err, "MX_NO_RESOURCES");
        // Out of quota, grants or NIC table entries: idle registrations give them back.
        if (code === "MX_NO_RESOURCES" && this.evictIdle()) continue;
        let held = 0;
        for (const x of this.entries) held += x.end - x.start;
        throw new MxError(
          code,
          `registering ${end - start} bytes for a message failed: ${message}` +
            (code === "MX_NO_RESOURCES"
              ? ` (${this.entries.length} registrations of ${held} bytes are held by requests in flight); ${MEMORY_KNOB}: the backend caps registered bytes at it (max-registered-bytes); or keep fewer large requests in flight`
              : ""),
        );
      }
    }
    const r = new RegEntry(mem, start, end, reg.regionId, reg.key);
    r.refs = 1;
    r.lastUse = ++this.tick;
    this.entries.push(r);
    this.last = r;
    this.counters.registrations++;
    this.counters.regionsCached = this.entries.length;
    this.counters.bytesCached += end - start;
    this.trim();
    return r;
  }

  private evict(x: RegEntry): void {
    const i = this.entries.indexOf(x);
    if (i < 0) return;
    this.entries.splice(i, 1);
    if (this.last === x) this.last = undefined;
    x.gone = true;
    this.counters.regionsCached = this.entries.length;
    this.counters.bytesCached -= x.end - x.start;
    this.counters.deregistrations++;
    try {
      this.driver.deregisterRegion(this.endpointId, x.regionId);
    } catch {
      // The backend or the endpoint is going away: it releases the region itself.
    }
  }
}

/** Pages of the size class holding `pages`: exact up to 4, then quarter steps between powers of two. */
export function bounceClassPages(pages: number): number {
  if (pages <= 4) return Math.max(1, pages);
  const k = 31 - Math.clz32(pages - 1); // 2^k < pages <= 2^(k+1)
  const q = 1 << (k - 2);
  return Math.ceil(pages / q) * q;
}

/** Idle bounce buffers by size class, least recently returned first out. */
export class BouncePool {
  private readonly idle: Uint8Array[] = [];

  constructor(
    private readonly driver: MxDriver,
    private readonly regs: RegCache,
    private readonly limitBytes: number,
    private readonly counters: RegCounters,
  ) {}

  /**
   * A buffer of at least `length` bytes in this domain's memory: a pooled one, or a new one
   * of `length`'s size class. Throws MxError
   * (MX_NO_RESOURCES naming the knob) if even an empty pool leaves no room for it.
   */
  take(length: number): Uint8Array {
    const bytes = bounceClassPages(Math.ceil(length / PAGE)) * PAGE;
    // The smallest pooled buffer that is large enough (its registration comes with it).
    const idle = this.idle;
    let best = -1;
    for (let i = idle.length - 1; i >= 0; i--)
      if (idle[i].length >= bytes && (best < 0 || idle[i].length < idle[best].length)) best = i;
    if (best >= 0) {
      const b = idle[best];
      idle.splice(best, 1);
      this.counters.bouncePooledBytes -= b.length;
      return b;
    }
    const exact = Math.ceil(length / PAGE) * PAGE;
    for (let size = bytes; ; ) {
      try {
        return this.driver.allocBuffer(size);
      } catch (e) {
        if (this.freeOldest()) continue;
        // Memory is tight: no rounding up to the size class.
        if (size !== exact) {
          size = exact;
          continue;
        }
        const { message } = driverError(e, "MX_NO_RESOURCES");
        throw new MxError(
          "MX_NO_RESOURCES",
          `a message of ${length} bytes from outside this domain's memory needs a bounce buffer in it, and ${message.replace(/; give the domain more pages.*$/, "")}; ${MEMORY_KNOB}, or send from memory of ep.alloc() / comm.allocMem() (no bounce copy)`,
        );
      }
    }
  }

  give(b: Uint8Array): void {
    if (b.length > this.limitBytes) {
      this.release(b);
      return;
    }
    this.idle.push(b);
    this.counters.bouncePooledBytes += b.length;
    while (this.counters.bouncePooledBytes > this.limitBytes && this.freeOldest());
  }

  /** Frees every idle buffer (the endpoint closes). */
  drain(registered: boolean): void {
    for (const b of this.idle.splice(0)) {
      this.counters.bouncePooledBytes -= b.length;
      if (registered) this.regs.drop(b.buffer, b.byteOffset, b.byteOffset + b.length);
      try {
        this.driver.freeBuffer(b);
      } catch {
        // The domain's memory is going away with it.
      }
    }
  }

  /** Frees the oldest idle buffer (memory is short elsewhere); false if none is pooled. */
  shrink(): boolean {
    return this.freeOldest();
  }

  private freeOldest(): boolean {
    const b = this.idle.shift();
    if (b === undefined) return false;
    this.counters.bouncePooledBytes -= b.length;
    this.release(b);
    return true;
  }

  private release(b: Uint8Array): void {
    this.regs.drop(b.buffer, b.byteOffset, b.byteOffset + b.length);
    this.driver.freeBuffer(b);
  }
}

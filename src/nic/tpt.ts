/**
 * The NIC's translation and protection table (TPT): which bytes of which memory an endpoint
 * registered, with which access bits, under which key. Every PULL and SEND the NIC executes
 * is checked against it, and the DMA engine copies only through it (copy and copyOut
 * walk the region's runs), so a descriptor can never reach memory the table does not cover.
 *
 * Region ids carry a 16-bit generation above a 16-bit slot: an id that was deregistered and
 * whose slot was reused no longer resolves, so a stale id cannot reach the new owner's memory.
 * Fields live in parallel typed arrays indexed by slot so that the per-descriptor checks read
 * numbers only and allocate nothing.
 */
import { getRandomValues } from "node:crypto";
import { copyBytes } from "../xen/copy.js";
import { isInt, type MemoryRun, type RegisterRegionReply } from "./control.js";
import { NicError } from "./status.js";
import { Access } from "./window.js";

/** Hard cap on TPT entries per NIC (the slot is 16 bits of the region id). */
export const MAX_REGIONS_LIMIT = 65536;
export const DEFAULT_MAX_REGIONS = 65536;
/** A region covers at most 2 GiB (offsets and lengths travel as u32 words; this keeps them exact). */
export const MAX_REGION_BYTES = 2 ** 31;
/** At most this many runs per region (256 MiB of scattered 4 KiB pages). */
export const MAX_RUNS = 65536;

const ACCESS_ALL = Access.LocalRead | Access.LocalWrite | Access.RemoteRead | Access.RemoteWrite;

/** A random nonzero u32 (keys and sessions: guessing one is a 1 in 2^32 shot). */
export function randomNonzeroU32(scratch: Uint32Array = new Uint32Array(1)): number {
  do getRandomValues(scratch);
  while (scratch[0] === 0);
  return scratch[0];
}

export class Tpt {
  readonly maxRegions: number;
  /** Owning endpoint per slot; -1 when the slot is free. */
  readonly owner: Int32Array;
  readonly key: Uint32Array;
  readonly access: Int32Array;
  readonly length: Float64Array;
  readonly gen: Uint16Array;
  readonly mem: (Uint8Array | null)[];
  /** Per slot: runs as (offset, length, start-within-region) triples, adjacent runs merged. */
  readonly runs: (Float64Array | null)[];
  /** Set while a slot is free because its endpoint closed (until the slot is reused). */
  private readonly closedOwner: Uint8Array;
  /** Free slots, a FIFO: a slot is reused as late as possible, so stale ids stay recognisable longer. */
  private readonly free: Int32Array;
  private freeHead = 0;
  private freeCount: number;
  private readonly rnd = new Uint32Array(1);
  count = 0;

  constructor(maxRegions: number = DEFAULT_MAX_REGIONS) {
    if (!isInt(maxRegions) || maxRegions < 1 || maxRegions > MAX_REGIONS_LIMIT)
      throw new NicError(
        "EINVAL",
        `maxRegions must be an integer in 1..${MAX_REGIONS_LIMIT}, got ${maxRegions}`,
      );
    this.maxRegions = maxRegions;
    this.owner = new Int32Array(maxRegions).fill(-1);
    this.key = new Uint32Array(maxRegions);
    this.access = new Int32Array(maxRegions);
    this.length = new Float64Array(maxRegions);
    this.gen = new Uint16Array(maxRegions);
    this.mem = new Array<Uint8Array | null>(maxRegions).fill(null);
    this.runs = new Array<Float64Array | null>(maxRegions).fill(null);
    this.closedOwner = new Uint8Array(maxRegions);
    this.free = new Int32Array(maxRegions);
    for (let i = 0; i < maxRegions; i++) this.free[i] = i;
    this.freeCount = maxRegions;
  }

  /** The slot of a live region id, or -1. `regionId` may be any number (a descriptor word). */
  lookup(regionId: number): number {
    const id = regionId >>> 0;
    const slot = id & 0xffff;
    const g = id >>> 16;
    if (g === 0 || slot >= this.maxRegions || this.gen[slot] !== g || this.owner[slot] < 0) return -1;
    return slot;
  }

  /**
   * Whether `regionId` (which no longer resolves) was dropped because its endpoint closed and
   * its slot has not been reused since: the NIC then answers ENDPOINT_CLOSED, not BAD_RDMAWIN.
   */
  closedWithEndpoint(regionId: number): boolean {
    const id = regionId >>> 0;
    const slot = id & 0xffff;
    return slot < this.maxRegions && this.closedOwner[slot] === 1 && this.gen[slot] === id >>> 16;
  }

  /** Whether [offset, offset + len) lies inside the region; overflow-safe for any u32 inputs. */
  inBounds(slot: number, offset: number, len: number): boolean {
    const total = this.length[slot];
    return offset <= total && len <= total - offset;
  }

  /** Validates a register request completely and installs the region. Throws NicError. */
  register(owner: number, memory: unknown, runs: unknown, access: unknown): RegisterRegionReply {
    if (!(memory instanceof SharedArrayBuffer))
      throw new NicError("EINVAL", "register_region: `memory` must be a SharedArrayBuffer (guest memory)");
    if (!isInt(access) || access <= 0 || (access & ~ACCESS_ALL) !== 0)
      throw new NicError(
        "EINVAL",
        `register_region: access ${String(access)} is not a nonzero combination of the Access bits (1 LocalRead, 2 LocalWrite, 4 RemoteRead, 8 RemoteWrite)`,
      );
    if (!Array.isArray(runs) || runs.length === 0)
      throw new NicError("EINVAL", "register_region: `runs` must be a non-empty array of {offset, length}");
    if (runs.length > MAX_RUNS)
      throw new NicError(
        "EINVAL",
        `register_region: ${runs.length} runs exceed the limit of ${MAX_RUNS} per region`,
      );
    const size = memory.byteLength;
    const triples = new Float64Array(runs.length * 3);
    let n = 0;
    let total = 0;
    for (let i = 0; i < runs.length; i++) {
      const r = runs[i] as Partial<MemoryRun> | null;
      const offset = r?.offset;
      const length = r?.length;
      if (!isInt(offset) || !isInt(length))
        throw new NicError(
          "EINVAL",
          `register_region: run ${i} must be {offset, length} with integer fields`,
        );
      if (offset < 0 || length <= 0)
        throw new NicError(
          "EINVAL",
          `register_region: run ${i} (offset ${offset}, length ${length}) needs offset ≥ 0 and length > 0`,
        );
      if (offset + length > size)
        throw new NicError(
          "EINVAL",
          `register_region: run ${i} (offset ${offset}, length ${length}) ends past the end of the ${size}-byte memory`,
        );
      total += length;
      if (total > MAX_REGION_BYTES)
        throw new NicError(
          "EINVAL",
          `register_region: the runs add up to more than ${MAX_REGION_BYTES} bytes (2 GiB); register smaller regions`,
        );
      // Merge a run that continues the previous one: fewer, longer copies.
      if (n > 0 && triples[(n - 1) * 3] + triples[(n - 1) * 3 + 1] === offset) {
        triples[(n - 1) * 3 + 1] += length;
      } else {
        triples[n * 3] = offset;
        triples[n * 3 + 1] = length;
        triples[n * 3 + 2] = total - length;
        n++;
      }
    }
    if (this.freeCount === 0)
      throw new NicError(
        "ENOSPC",
        `register_region: the TPT is full (${this.maxRegions} regions); deregister regions no longer in use`,
      );
    const slot = this.free[this.freeHead];
    this.freeHead = (this.freeHead + 1) % this.maxRegions;
    this.freeCount--;
    this.closedOwner[slot] = 0;
    let g = (this.gen[slot] + 1) & 0xffff;
    if (g === 0) g = 1;
    this.gen[slot] = g;
    this.owner[slot] = owner;
    this.key[slot] = randomNonzeroU32(this.rnd);
    this.access[slot] = access;
    this.length[slot] = total;
    this.mem[slot] = new Uint8Array(memory);
    this.runs[slot] = n * 3 === triples.length ? triples : triples.slice(0, n * 3);
    this.count++;
    return { regionId: ((g << 16) | slot) >>> 0, key: this.key[slot], length: total };
  }

  /** Removes `owner`'s region `regionId`. Throws NicError if it is not one of owner's live regions. */
  deregister(owner: number, regionId: unknown): void {
    const slot = isInt(regionId) ? this.lookup(regionId) : -1;
    if (slot < 0 || regionId !== (regionId as number) >>> 0)
      throw new NicError("ENOENT", `deregister_region: region ${String(regionId)} is not registered`);
    if (this.owner[slot] !== owner)
      throw new NicError("EPERM", `deregister_region: region ${regionId} belongs to another endpoint`);
    this.release(slot);
  }

  /** Removes every region of `owner` (endpoint close). Returns how many. */
  dropOwner(owner: number): number {
    let dropped = 0;
    for (let slot = 0; slot < this.maxRegions; slot++) {
      if (this.owner[slot] === owner) {
        this.release(slot);
        this.closedOwner[slot] = 1;
        dropped++;
      }
    }
    return dropped;
  }

  private release(slot: number): void {
    this.owner[slot] = -1;
    this.key[slot] = 0;
    this.access[slot] = 0;
    this.length[slot] = 0;
    this.mem[slot] = null;
    this.runs[slot] = null;
    this.free[(this.freeHead + this.freeCount) % this.maxRegions] = slot;
    this.freeCount++;
    this.count--;
  }

  /** Index of the run holding region byte `off` (0 ≤ off < length). */
  private findRun(runs: Float64Array, off: number): number {
    let lo = 0;
    let hi = runs.length / 3 - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (runs[mid * 3 + 2] <= off) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /**
   * The DMA engine's copy: `len` bytes from region `src` at `srcOff` to region `dst` at
   * `dstOff`, one `set` per pair of overlapping runs, no intermediate buffer. The caller has
   * checked both ranges with inBounds.
   */
  copy(src: number, srcOff: number, dst: number, dstOff: number, len: number): void {
    if (len <= 0) return;
    const sr = this.runs[src]!;
    const dr = this.runs[dst]!;
    const sMem = this.mem[src]!;
    const dMem = this.mem[dst]!;
    let si = this.findRun(sr, srcOff);
    let di = this.findRun(dr, dstOff);
    let sPos = sr[si * 3] + (srcOff - sr[si * 3 + 2]);
    let sLeft = sr[si * 3 + 1] - (srcOff - sr[si * 3 + 2]);
    let dPos = dr[di * 3] + (dstOff - dr[di * 3 + 2]);
    let dLeft = dr[di * 3 + 1] - (dstOff - dr[di * 3 + 2]);
    for (;;) {
      const n = Math.min(sLeft, dLeft, len);
      copyBytes(dMem, dPos, sMem, sPos, n);
      len -= n;
      if (len === 0) return;
      sPos += n;
      sLeft -= n;
      dPos += n;
      dLeft -= n;
      if (sLeft === 0) {
        si++;
        sPos = sr[si * 3];
        sLeft = sr[si * 3 + 1];
      }
      if (dLeft === 0) {
        di++;
        dPos = dr[di * 3];
        dLeft = dr[di * 3 + 1];
      }
    }
  }

  /** Copies `len` bytes of region `src` at `srcOff` into contiguous `dst` at `dstOff` (SEND payloads). */
  copyOut(src: number, srcOff: number, len: number, dst: Uint8Array, dstOff: number): void {
    if (len <= 0) return;
    const sr = this.runs[src]!;
    const sMem = this.mem[src]!;
    let si = this.findRun(sr, srcOff);
    let sPos = sr[si * 3] + (srcOff - sr[si * 3 + 2]);
    let sLeft = sr[si * 3 + 1] - (srcOff - sr[si * 3 + 2]);
    for (;;) {
      const n = Math.min(sLeft, len);
      copyBytes(dst, dstOff, sMem, sPos, n);
      len -= n;
      if (len === 0) return;
      dstOff += n;
      si++;
      sPos = sr[si * 3];
      sLeft = sr[si * 3 + 1];
    }
  }

  /** Copies `len` bytes of contiguous `src` at `srcOff` into region `dst` at `dstOff` (remote PULL replies). */
  copyIn(src: Uint8Array, srcOff: number, len: number, dst: number, dstOff: number): void {
    if (len <= 0) return;
    const dr = this.runs[dst]!;
    const dMem = this.mem[dst]!;
    let di = this.findRun(dr, dstOff);
    let dPos = dr[di * 3] + (dstOff - dr[di * 3 + 2]);
    let dLeft = dr[di * 3 + 1] - (dstOff - dr[di * 3 + 2]);
    for (;;) {
      const n = Math.min(dLeft, len);
      copyBytes(dMem, dPos, src, srcOff, n);
      len -= n;
      if (len === 0) return;
      srcOff += n;
      di++;
      dPos = dr[di * 3];
      dLeft = dr[di * 3 + 1];
    }
  }
}

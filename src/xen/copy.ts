/**
 * Byte copies that touch domains' memory (SharedArrayBuffer pages), at memcpy speed whatever
 * the two sides' alignment: the one copy routine of the NIC's DMA engine, the MX library's
 * lanes, the split path's grant copies and MPI's buffers.
 *
 * Why it exists: V8's `TypedArray.prototype.set` copies to or from shared memory with relaxed
 * atomic accesses — a word at a time when source and destination are equally aligned mod 8
 * (half memcpy's speed: 1 MiB at 26 GB/s against 50 on an EPYC), a byte at a time otherwise
 * (3.3 GB/s). Node's `Buffer.prototype.fill` with a byte array as the value copies it with C++
 * memcpy into the range when the value is at least as long as the range (documented: the range
 * is filled with the value's bytes), whatever buffers lie beneath; `copyWithin` is memmove
 * within one buffer. So large copies that touch shared memory go to one of those two, and the
 * rest (short copies, private to private) stay with `set`, cheaper to call.
 */
import { Buffer } from "node:buffer";

/** Copies up to this long are a plain loop: cheaper than the views `set` needs. */
const SMALL_COPY = 64;
/**
 * From this long, an equally aligned copy touching shared memory goes to memcpy. A loop of
 * copies breaks even near 2 KiB, but the library's own ping-pong measured the call into C++
 * dearer than that where it runs among everything else (`bench pingpong --transports bypass`,
 * alternating builds: 1 KiB 0.70 → 0.95 µs with 1 KiB here, 4 KiB even at 4 KiB, 8 KiB
 * 1.33 → 1.20 at 8 KiB): below 8 KiB V8's word copy is as fast.
 */
export const MEMCPY_MIN = 8192;
/** From this long, an unequally aligned one does (V8 copies those a byte at a time, ~3 GB/s). */
export const MEMCPY_MIN_UNALIGNED = 1024;

/**
 * Node's fill, taken when this module loads: the library is trusted code running outside the
 * guest's compartment, and holding the function itself means nothing a guest reaches later
 * (a Buffer's prototype) changes what runs here.
 */
const fillFrom = Buffer.prototype.fill as (
  this: Uint8Array,
  value: Uint8Array,
  offset: number,
  end: number,
) => Uint8Array;

/** Copies `n` bytes of `src` from `srcOff` into `dst` at `dstOff` (ranges in bounds; overlap only within one buffer). */
export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  if (n <= SMALL_COPY) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i];
    return;
  }
  if (n >= MEMCPY_MIN_UNALIGNED) {
    const from = src.byteOffset + srcOff;
    const to = dst.byteOffset + dstOff;
    if (
      (n >= MEMCPY_MIN || ((to - from) & 7) !== 0) &&
      (src.buffer instanceof SharedArrayBuffer || dst.buffer instanceof SharedArrayBuffer)
    ) {
      if (dst.buffer === src.buffer) {
        // One buffer: the ranges may overlap, which memcpy must not see; memmove may.
        new Uint8Array(dst.buffer).copyWithin(to, from, from + n);
      } else {
        fillFrom.call(dst, src.subarray(srcOff, srcOff + n), dstOff, dstOff + n);
      }
      return;
    }
  }
  dst.set(srcOff === 0 && n === src.length ? src : src.subarray(srcOff, srcOff + n), dstOff);
}

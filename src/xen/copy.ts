/**
 * Byte copies that touch domains' memory (SharedArrayBuffer pages), at memmove speed whatever
 * the two sides' alignment: the one copy routine of the NIC's DMA engine, the MX library's
 * lanes, the split path's grant copies and MPI's buffers.
 *
 * Why it exists: V8 copies to or from shared memory with relaxed atomic accesses, a word at a
 * time only when source and destination are equally aligned mod 8 and a byte at a time
 * otherwise, 4–5× slower (64 KiB on this machine: 3.8 GB/s against 15–19 GB/s aligned).
 * Copies between private buffers go to memmove, which does not care. Unequal alignment is
 * common: an MPI rank sends an Int32Array block at an odd element displacement, a frame lies
 * at any offset of the chunk TCP handed over. So a large copy that touches shared memory at
 * unequal alignments goes through a private scratch buffer, placed so that each shared-side
 * copy is equally aligned, and the shift happens in memmove.
 */

/** Copies up to this long are a plain loop: cheaper than the views `set` needs. */
const SMALL_COPY = 64;
/** Unequally aligned copies from this long go through the scratch buffer (break-even measured near 1 KiB). */
export const STAGED_COPY_MIN = 1024;
/** The scratch buffer's piece: large enough to amortise two `set`s, small enough for L2. */
const PIECE = 64 * 1024;

/** Per thread (each worker has its own module instance); made at the first staged copy. */
let scratch: Uint8Array | null = null;

/** Copies `n` bytes of `src` from `srcOff` into `dst` at `dstOff` (ranges in bounds; overlap only within one buffer). */
export function copyBytes(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  if (n <= SMALL_COPY) {
    for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i];
    return;
  }
  if (
    n >= STAGED_COPY_MIN &&
    ((dst.byteOffset + dstOff - src.byteOffset - srcOff) & 7) !== 0 &&
    dst.buffer !== src.buffer
  ) {
    const srcShared = src.buffer instanceof SharedArrayBuffer;
    const dstShared = dst.buffer instanceof SharedArrayBuffer;
    if (srcShared || dstShared) {
      staged(dst, dstOff, src, srcOff, n, srcShared, dstShared);
      return;
    }
  }
  dst.set(srcOff === 0 && n === src.length ? src : src.subarray(srcOff, srcOff + n), dstOff);
}

/**
 * Piece by piece through the scratch buffer: shared memory is read into it at the source's
 * alignment and written from it at the destination's (word copies both), the shift between
 * them done by memmove (by `set` from or into private memory, or copyWithin when both sides
 * are shared).
 */
function staged(
  dst: Uint8Array,
  dstOff: number,
  src: Uint8Array,
  srcOff: number,
  n: number,
  srcShared: boolean,
  dstShared: boolean,
): void {
  const s = (scratch ??= new Uint8Array(2 * PIECE + 16));
  const sa = (src.byteOffset + srcOff) & 7;
  const da = (dst.byteOffset + dstOff) & 7;
  // Where the bytes wait before going out: at the source's alignment when only the source is
  // shared (memmove writes them out), else at the destination's, past the first piece when the
  // source was read into that.
  const out = !dstShared ? sa : srcShared ? PIECE + 8 + da : da;
  for (let done = 0; done < n; done += PIECE) {
    const k = Math.min(PIECE, n - done);
    const from = src.subarray(srcOff + done, srcOff + done + k);
    if (srcShared && dstShared) {
      s.set(from, sa);
      s.copyWithin(out, sa, sa + k);
    } else {
      s.set(from, out);
    }
    dst.set(s.subarray(out, out + k), dstOff + done);
  }
}

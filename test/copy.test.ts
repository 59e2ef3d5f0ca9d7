/**
 * xen/copy.ts: every byte lands where it should whatever the two sides' alignment, sharing
 * and length — copies touching shared memory take one of three routes (V8's set, Node's fill
 * as memcpy, copyWithin as memmove) by length, alignment and buffer, and each route's offsets
 * are computed differently, which a wrong one would get silently wrong. (Its speed is
 * `node scripts/bench-copy.mjs`'s business.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { copyBytes, MEMCPY_MIN, MEMCPY_MIN_UNALIGNED } from "../src/xen/copy.js";

const PIECE = 64 * 1024;

function filled(n: number, shared: boolean, seed: number): Uint8Array {
  const a = new Uint8Array(shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n));
  for (let i = 0; i < n; i++) a[i] = (i * 131 + seed * 17 + (i >>> 8)) & 0xff;
  return a;
}

/** A view that starts `at` bytes into its buffer, so its own byteOffset adds to the misalignment. */
function view(a: Uint8Array, at: number): Uint8Array {
  return a.subarray(at);
}

const LENGTHS = [
  0,
  1,
  63,
  64,
  65,
  MEMCPY_MIN_UNALIGNED - 1,
  MEMCPY_MIN_UNALIGNED,
  MEMCPY_MIN - 1,
  MEMCPY_MIN,
  MEMCPY_MIN + 3,
  PIECE - 5,
  PIECE,
  PIECE + 7,
  3 * PIECE + 1,
];

test("copyBytes copies exactly n bytes between plain and shared memory at every alignment, touching nothing else", () => {
  for (const srcShared of [false, true])
    for (const dstShared of [false, true])
      for (const n of LENGTHS)
        for (const [viewAt, srcOff, dstOff] of [
          [0, 0, 0],
          [0, 4, 0],
          [0, 1, 6],
          [3, 0, 5],
          [5, 7, 0],
          [8, 2, 2],
        ]) {
          const size = n + 64;
          const src = view(filled(size, srcShared, 1), viewAt);
          const dstBase = filled(size, dstShared, 2);
          const before = dstBase.slice();
          const dst = view(dstBase, 0);
          copyBytes(dst, dstOff, src, srcOff, n);
          const where = `src ${srcShared ? "shared" : "plain"}+${viewAt}+${srcOff} → dst ${dstShared ? "shared" : "plain"}+${dstOff}, ${n} B`;
          for (let i = 0; i < size; i++) {
            const want = i >= dstOff && i < dstOff + n ? src[srcOff + (i - dstOff)] : before[i];
            if (dstBase[i] !== want) assert.fail(`${where}: byte ${i} is ${dstBase[i]}, expected ${want}`);
          }
        }
});

test("copyBytes within one buffer keeps memmove's overlap rules (forward and backward, staged lengths)", () => {
  for (const shared of [false, true])
    for (const [srcOff, dstOff] of [
      [0, 4],
      [4, 0],
      [1, 8],
      [9, 2],
    ]) {
      const n = 2 * PIECE + 3;
      const a = filled(n + 16, shared, 3);
      const want = a.slice();
      want.copyWithin(dstOff, srcOff, srcOff + n);
      copyBytes(a, dstOff, a, srcOff, n);
      assert.deepEqual(a, want, `${shared ? "shared" : "plain"} ${srcOff} → ${dstOff}`);
    }
});

test("copyBytes between two views of one shared buffer (a guest's lane and its own registered memory) is exact", () => {
  const sab = filled(4 * PIECE, true, 4);
  const a = sab.subarray(3, 3 + PIECE + 100);
  const b = sab.subarray(2 * PIECE, 3 * PIECE + 200);
  const want = sab.slice();
  want.set(want.subarray(3 + 5, 3 + 5 + PIECE), 2 * PIECE + 1);
  copyBytes(b, 1, a, 5, PIECE);
  assert.deepEqual(sab, want);
});

test("copyBytes keeps the fill it took at load: replacing Buffer.prototype.fill later changes nothing it copies", () => {
  const real = Buffer.prototype.fill;
  const src = filled(4 * MEMCPY_MIN, true, 5);
  const dst = new Uint8Array(new SharedArrayBuffer(4 * MEMCPY_MIN));
  let called = false;
  Buffer.prototype.fill = function (this: Buffer) {
    called = true;
    return this;
  } as typeof real;
  try {
    copyBytes(dst, 0, src, 0, src.length);
  } finally {
    Buffer.prototype.fill = real;
  }
  assert.equal(called, false);
  assert.deepEqual(dst, src);
});

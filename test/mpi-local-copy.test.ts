/**
 * A collective's copy to itself (CollectiveTransport.ccopy; alltoall and alltoallv's own
 * block): large copies go in pieces with MX progress between them, so an exchange under way
 * keeps moving; the bytes land exactly, overlapping buffers included. The endpoint here only
 * counts its progress calls.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { CollectiveTransport } from "../src/mpi/coll-transport.js";
import type { Runtime } from "../src/mpi/runtime.js";

function transport(): { t: CollectiveTransport; progress: () => number } {
  let calls = 0;
  const ep = {
    progress: () => {
      calls++;
      return false;
    },
  };
  const rt = { ep, addrs: [undefined] } as unknown as Runtime;
  return { t: new CollectiveTransport(rt, 0, [0], 0), progress: () => calls };
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed) & 0xff;
  return b;
}

test("a copy of 1 MiB + 1 byte goes in 5 pieces with progress after each; the bytes land exactly", () => {
  const { t, progress } = transport();
  const src = pattern((1 << 20) + 1, 3);
  const dst = new Uint8Array(src.length);
  t.ccopy(dst, src);
  assert.deepEqual(dst, src);
  assert.equal(progress(), 5);
});

test("a copy of one piece or less is one copy, with no progress", () => {
  const { t, progress } = transport();
  const src = pattern(256 * 1024, 9);
  const dst = new Uint8Array(src.length);
  t.ccopy(dst, src);
  assert.deepEqual(dst, src);
  assert.equal(progress(), 0);
});

test("overlapping views of one buffer are copied at once, as set() copies them", () => {
  const { t, progress } = transport();
  const buf = pattern(2 << 20, 5);
  const want = buf.slice();
  want.set(buf.subarray(0, 1 << 20), 4096);
  t.ccopy(buf.subarray(4096, 4096 + (1 << 20)), buf.subarray(0, 1 << 20));
  assert.deepEqual(buf, want);
  assert.equal(progress(), 0);
});

#!/usr/bin/env node
// How fast bytes move into and out of domains' memory (SharedArrayBuffer) at equal and unequal
// alignments: V8's own TypedArray.set (relaxed atomic copies: a word at a time when equally
// aligned, a byte at a time otherwise) against xen/copy.ts's copyBytes (memcpy through Node's
// Buffer fill for large copies touching shared memory). Medians of 7 runs, the two interleaved
// run by run; GB/s = 10^9 bytes/s.
// Run after a build (`npm ci` builds): node scripts/bench-copy.mjs [--sizes 4K,64K,1M]
import { parseArgs } from "node:util";

const { copyBytes } = await import(new URL("../dist/src/xen/copy.js", import.meta.url).href);
const { values } = parseArgs({ options: { sizes: { type: "string", default: "4K,64K,1M" } } });
const sizes = values.sizes.split(",").map((s) => {
  const m = /^(\d+)([KM]?)$/i.exec(s.trim());
  if (!m) {
    console.error(`bench-copy: bad size "${s}" (a number of bytes, optionally with K or M, e.g. 64K)`);
    process.exit(2);
  }
  return Number(m[1]) * { "": 1, K: 1024, M: 1 << 20 }[m[2].toUpperCase()];
});

const RUNS = 7;
/** Every copy moves `n` bytes between two 16 MiB areas, walking them so the caches see real traffic. */
const AREA = 16 << 20;
const shared = () => new Uint8Array(new SharedArrayBuffer(AREA + 64)).fill(7);
const plain = () => new Uint8Array(AREA + 64).fill(9);
const CASES = [
  ["private → shared", plain, shared],
  ["shared → private", shared, plain],
  ["shared → shared", shared, shared],
];

function gbps(n, copy) {
  const reps = Math.max(64, Math.floor((256 << 20) / n));
  const span = Math.max(1, Math.floor(AREA / n));
  for (let i = 0; i < Math.min(reps, 256); i++) copy((i % span) * n);
  const t = performance.now();
  for (let i = 0; i < reps; i++) copy((i % span) * n);
  return (n * reps) / ((performance.now() - t) * 1e6);
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

console.log(`copies into and out of shared memory, medians of ${RUNS} runs (GB/s)`);
console.log(
  "size      direction             aligned: set   copyBytes   unaligned (4 B off): set   copyBytes",
);
for (const n of sizes) {
  for (const [name, mkSrc, mkDst] of CASES) {
    const src = mkSrc();
    const dst = mkDst();
    const runs = [[], [], [], []];
    for (let r = 0; r < RUNS; r++) {
      runs[0].push(gbps(n, (o) => dst.set(src.subarray(o, o + n), o)));
      runs[1].push(gbps(n, (o) => copyBytes(dst, o, src, o, n)));
      runs[2].push(gbps(n, (o) => dst.set(src.subarray(o + 4, o + 4 + n), o)));
      runs[3].push(gbps(n, (o) => copyBytes(dst, o, src, o + 4, n)));
    }
    const [a, ac, u, uc] = runs.map(median);
    const size = n >= 1 << 20 ? `${n / (1 << 20)} MiB` : n >= 1024 ? `${n / 1024} KiB` : `${n} B`;
    console.log(
      `${size.padEnd(9)} ${name.padEnd(18)} ${a.toFixed(1).padStart(16)} ${ac.toFixed(1).padStart(11)} ${u.toFixed(1).padStart(26)} ${uc.toFixed(1).padStart(11)}`,
    );
  }
}

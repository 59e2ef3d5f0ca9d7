#!/usr/bin/env node
// The floor of copy-in/copy-out between two isolated threads: two bare worker threads
// ping-pong N bytes through a SharedArrayBuffer ring of SLOTS pieces of PIECE bytes each way,
// the sender copying each piece in while the receiver copies the previous one out, both
// spinning (no MX, no matching, no sleeping). One-way latency = round trip / 2, median of 5
// runs. The co-resident channel (mx/channel-path.ts) does this plus MX; Open MPI's
// copy-in/copy-out (`bench --transports openmpi-cico`) does it between processes. The copies
// are the library's own (xen/copy.ts: memcpy where V8 would copy shared memory word by word).
// Run after a build (`npm ci` builds): node scripts/bench-pipe.mjs [--sizes 64K,1M] [--piece 64K] [--slots 2]
import { parseArgs } from "node:util";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

const { copyBytes } = await import(new URL("../dist/src/xen/copy.js", import.meta.url).href);

const RUNS = 5;
const bytes = (s) => {
  const m = /^(\d+)([KM]?)$/i.exec(String(s).trim());
  if (!m) {
    console.error(`bench-pipe: bad size "${s}" (a number of bytes, optionally with K or M, e.g. 64K)`);
    process.exit(2);
  }
  return Number(m[1]) * { "": 1, K: 1024, M: 1 << 20 }[m[2].toUpperCase()];
};

if (isMainThread) {
  const { values } = parseArgs({
    options: {
      sizes: { type: "string", default: "64K,1M" },
      piece: { type: "string", default: "64K" },
      slots: { type: "string", default: "2" },
    },
  });
  const piece = bytes(values.piece);
  const slots = Number(values.slots);
  if (!Number.isInteger(slots) || slots < 1 || slots > 64) {
    console.error(`bench-pipe: --slots must be an integer from 1 to 64, got "${values.slots}"`);
    process.exit(2);
  }
  console.log(
    `two threads, a ring of ${slots} × ${piece} B each way, both spinning: one-way µs, median of ${RUNS}`,
  );
  for (const n of values.sizes.split(",").map(bytes)) {
    const samples = [];
    for (let r = 0; r < RUNS; r++) samples.push(await pair(n, piece, slots));
    samples.sort((a, b) => a - b);
    console.log(
      `${String(n).padStart(9)} B  ${samples[RUNS >> 1].toFixed(2).padStart(9)} µs  (${samples[0].toFixed(2)}–${samples[RUNS - 1].toFixed(2)})`,
    );
  }
} else {
  run(workerData);
}

/** One run: two workers, `iters` round trips after a warm-up; resolves with rank 0's one-way µs. */
async function pair(n, piece, slots) {
  const ring = () => ({ data: new SharedArrayBuffer(piece * slots), ctl: new SharedArrayBuffer(128) });
  const ab = ring();
  const ba = ring();
  const iters = Math.max(50, Math.min(20_000, Math.floor((400 << 20) / n)));
  const workers = [0, 1].map(
    (rank) => new Worker(new URL(import.meta.url), { workerData: { rank, n, piece, slots, ab, ba, iters } }),
  );
  const us = await new Promise((resolve, reject) => {
    workers[0].once("message", resolve);
    for (const w of workers) w.once("error", reject);
  });
  await Promise.all(workers.map((w) => w.terminate()));
  return us;
}

function run({ rank, n, piece, slots, ab, ba, iters }) {
  const src = new Uint8Array(new SharedArrayBuffer(n)).fill(1);
  const dst = new Uint8Array(new SharedArrayBuffer(n));
  const out = rank === 0 ? ab : ba;
  const inn = rank === 0 ? ba : ab;
  const outData = new Uint8Array(out.data);
  const inData = new Uint8Array(inn.data);
  // Word 0: pieces the writer produced; word 16 (its own cache line): pieces the reader took.
  const outCtl = new Int32Array(out.ctl);
  const inCtl = new Int32Array(inn.ctl);
  let sent = 0;
  let received = 0;
  const send = () => {
    for (let off = 0; off < n; off += piece) {
      while (sent - Atomics.load(outCtl, 16) >= slots);
      const k = Math.min(piece, n - off);
      copyBytes(outData, (sent % slots) * piece, src, off, k);
      Atomics.store(outCtl, 0, ++sent);
    }
  };
  const recv = () => {
    for (let off = 0; off < n; off += piece) {
      while (Atomics.load(inCtl, 0) === received);
      const k = Math.min(piece, n - off);
      const at = (received % slots) * piece;
      copyBytes(dst, off, inData, at, k);
      Atomics.store(inCtl, 16, ++received);
    }
  };
  const warm = Math.max(20, iters >> 3);
  let t0 = 0;
  for (let i = 0; i < warm + iters; i++) {
    if (i === warm) t0 = performance.now();
    if (rank === 0) {
      send();
      recv();
    } else {
      recv();
      send();
    }
  }
  if (rank === 0) parentPort.postMessage(((performance.now() - t0) * 1000) / (2 * iters));
}

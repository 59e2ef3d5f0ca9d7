/**
 * Shared-segment memory a guest can pin, as a hoarder tries it. A segment's buffer is a
 * SharedArrayBuffer the hypervisor's thread made, so the guest's own buffer meter
 * (maxBufferMb) never sees it, and once handed over it is never taken back. A guest that
 * allocated segments, released them (its maxSharedPages came back) and kept the buffers held
 * as much host memory as it liked: 256 segments of 4 MiB under a 4 MiB quota grew the host by
 * 1 GiB, metered at 0. And a guest that mapped other guests' segments kept each one after
 * its owner released it. Now every buffer a guest could reach counts against its quota until
 * it ends, and a released one comes back to its owner, zeroed, as its next segment of that
 * size (never to anyone else while another holder lives). Counted (the hypervisor's charge),
 * never timed or measured in RSS.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { GNTST } from "../src/xen/abi.js";
import { Hypervisor } from "../src/xen/hypervisor.js";
import { request } from "./helpers/messages.js";

const dir = mkdtempSync(join(tmpdir(), "segment-hoard-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A guest that does what it is told with shared segments, and keeps every buffer it was handed. */
const GUEST = join(dir, "hoarder.mjs");
writeFileSync(
  GUEST,
  `export default async function main(guest) {
  const kept = [];
  for (;;) {
    const c = await guest.nextMessage();
    if (c.op === "exit") return "bye";
    try {
      guest.send(run(guest, c, kept));
    } catch (e) {
      guest.send({ thrown: String(e && e.message) });
    }
  }
}
function run(guest, c, kept) {
  switch (c.op) {
    case "hoard-sizes": {
      // Segments of 1, 2, 3, ... pages: each filled, released, kept.
      let n = 0;
      for (let p = 1; p <= c.upTo; p++) {
        let r;
        try {
          r = guest.allocShared(p);
        } catch (e) {
          return { kept: n, error: String(e.message) };
        }
        r.bytes.fill(1);
        guest.releaseShared(r);
        kept.push(r.bytes);
        n++;
      }
      return { kept: n };
    }
    case "hoard-same": {
      // n segments of c.pages: each checked for zeros, marked with its round, released, kept.
      const mine = [];
      let dirty = 0;
      for (let i = 1; i <= c.n; i++) {
        const r = guest.allocShared(c.pages);
        if (!r.bytes.every((b) => b === 0)) dirty++;
        r.bytes.fill(0xee);
        new Int32Array(r.bytes.buffer)[0] = i;
        guest.releaseShared(r);
        mine.push(r.bytes);
        kept.push(r.bytes);
      }
      // Buffers that are one memory read the last mark written into it: distinct marks are distinct memory.
      const marks = new Set(mine.map((b) => new Int32Array(b.buffer)[0]));
      return { rounds: c.n, dirty, distinct: marks.size };
    }
    case "honest": {
      // Allocate, use, release, drop: many more times than the quota holds.
      for (let i = 0; i < c.n; i++) {
        const a = guest.allocShared(c.pages);
        const b = guest.allocShared(c.pages / 2);
        a.bytes.fill(7);
        b.bytes.fill(7);
        guest.releaseShared(a);
        guest.releaseShared(b);
      }
      return { rounds: c.n };
    }
    case "vary": {
      // Allocate, check, use, release, drop, in the sizes given (an honest guest's sizes change).
      const out = [];
      for (const p of c.sizes) {
        try {
          const r = guest.allocShared(p);
          const clean = r.bytes.every((b) => b === 0);
          r.bytes.fill(9);
          guest.releaseShared(r);
          out.push({ pages: p, bytes: r.bytes.length, clean });
        } catch (e) {
          out.push({ pages: p, error: String(e.message) });
        }
      }
      return out;
    }
    case "share": {
      const r = guest.allocShared(c.pages, { audience: [c.peer] });
      const refs = [];
      for (let i = 0; i < c.pages; i++) refs.push(guest.grants.grantAccess(c.peer, r.pfn + i));
      return { pfn: r.pfn, refs };
    }
    case "alloc":
      return { pfn: guest.allocShared(c.pages).pfn };
    case "release":
      guest.releaseShared({ pfn: c.pfn });
      return true;
    case "map": {
      const r = guest.grants.map(c.domid, c.refs);
      if (r.status !== 0) return { status: r.status, error: r.error };
      r.mapping.bytes.fill(0x55);
      kept.push(r.mapping.bytes);
      return { status: 0 };
    }
    case "fill-kept":
      for (const b of kept) b.fill(c.value);
      return kept.length;
    case "zero": {
      for (let i = 0; i < c.pages; i++) if (!guest.frameBytes(c.pfn + i).every((b) => b === 0)) return false;
      return true;
    }
  }
  throw new Error("unknown op " + c.op);
}
`,
);

const start = (hv: Hypervisor, maxSharedPages: number) =>
  hv.createDomain({ module: GUEST, pages: 16, maxHeapMb: 64, maxSharedPages });

test("a guest that releases its shared segments and keeps the buffers is refused at its quota; the host holds no more than the quota for it", async () => {
  const hv = new Hypervisor();
  try {
    // Different sizes, each released and kept: 1 + 2 + ... + 10 = 55 pages; 11 more would pass 64.
    const g = await start(hv, 64);
    const r = await request<{ kept: number; error?: string }>(g, { op: "hoard-sizes", upTo: 40 });
    assert.equal(r.kept, 10, `released segments whose buffers it kept did not count: ${JSON.stringify(r)}`);
    assert.match(
      r.error ?? "",
      /ENOMEM: domain \d+ may have at most 64 shared pages \(has 55: 0 in live segments, 55 in released/,
    );
    assert.deepEqual(hv.sharedMemory(g.domid), { live: 0, released: 55, mapped: 0, charged: 55, max: 64 });

    // One size, released and kept 200 times (200 × 4 pages under a 64-page quota): each new
    // segment is a released one, zeroed; the guest never reaches more than its quota's worth.
    const h = await start(hv, 64);
    const same = await request<{ rounds: number; dirty: number; distinct: number }>(h, {
      op: "hoard-same",
      n: 200,
      pages: 4,
    });
    assert.equal(same.rounds, 200);
    assert.equal(same.dirty, 0, "a reused segment comes back zeroed");
    assert.ok(
      same.distinct <= 64 / 4,
      `${same.distinct} distinct buffers kept under a quota of ${64 / 4} such segments`,
    );
    const held = hv.sharedMemory(h.domid)!;
    assert.ok(held.charged <= held.max, JSON.stringify(held));
    await Promise.all([g.destroy(), h.destroy()]);
  } finally {
    await hv.shutdown();
  }
});

test("an honest guest allocates and releases far more than its quota, over and over", async () => {
  const hv = new Hypervisor();
  try {
    const g = await start(hv, 64);
    // 500 rounds of 16 + 8 pages: 12,000 pages through a 64-page quota.
    assert.deepEqual(await request(g, { op: "honest", n: 500, pages: 16 }), { rounds: 500 });
    const held = hv.sharedMemory(g.domid)!;
    assert.ok(held.charged <= 24, JSON.stringify(held));
    // The quota is all there for live segments still: 2 × 16 + 2 × 8 reuse what it released.
    for (const pages of [16, 16, 8, 8])
      assert.ok((await request<{ pfn?: number }>(g, { op: "alloc", pages })).pfn);
    assert.equal(hv.sharedMemory(g.domid)!.charged, 48);
    await g.destroy();
  } finally {
    await hv.shutdown();
  }
});

test("an honest guest whose segment sizes change reuses a larger buffer it released once its quota is full", async () => {
  const hv = new Hypervisor();
  try {
    const g = await start(hv, 64);
    // 40 pages charged after the first; 30 fits only in that buffer (40 + 30 > 64); 20 gets a
    // new one (40 + 20 ≤ 64), and the last 40 its own size back.
    const got = await request<{ pages: number; bytes?: number; clean?: boolean; error?: string }[]>(g, {
      op: "vary",
      sizes: [40, 30, 20, 40],
    });
    assert.deepEqual(
      got,
      [40, 30, 20, 40].map((pages) => ({ pages, bytes: pages * 4096, clean: true })),
      "each size served, its pages alone and zeroed",
    );
    assert.equal(hv.sharedMemory(g.domid)!.charged, 60);
    // Nothing released is large enough and the quota is full: refused, saying why.
    const [big] = await request<{ error?: string }[]>(g, { op: "vary", sizes: [50] });
    assert.match(big.error ?? "", /may have at most 64 shared pages .*60 in released ones/);
    await g.destroy();
  } finally {
    await hv.shutdown();
  }
});

test("a guest that maps others' segments is charged for each until it ends; its owner never gets a buffer back that a live mapper holds", async () => {
  const hv = new Hypervisor();
  try {
    const a = await start(hv, 128);
    const b = await start(hv, 48);
    // A shares a 16-page segment with B, B maps it (and keeps it), A releases it: four times.
    const maps: { status: number; error?: string }[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await request<{ pfn: number; refs: number[] }>(a, { op: "share", pages: 16, peer: b.domid });
      maps.push(await request(b, { op: "map", domid: a.domid, refs: s.refs }));
      assert.equal(await request(a, { op: "release", pfn: s.pfn }), true);
    }
    assert.deepEqual(
      maps.map((m) => m.status),
      [GNTST.okay, GNTST.okay, GNTST.okay, GNTST.no_device_space],
      `the mapper holds every segment it mapped: ${JSON.stringify(maps)}`,
    );
    assert.match(
      maps[3].error!,
      /domain \d+ may hold at most 48 shared pages \(holds 48: .*48 of other guests' segments it mapped\)/,
    );
    assert.deepEqual(hv.sharedMemory(b.domid), { live: 0, released: 0, mapped: 48, charged: 48, max: 48 });
    assert.deepEqual(hv.sharedMemory(a.domid), { live: 0, released: 64, mapped: 0, charged: 64, max: 128 });

    // While B lives, A's new segments are never a buffer B holds: the one B never mapped
    // comes back; the next is new memory.
    const x = await request<{ pfn: number }>(a, { op: "alloc", pages: 16 });
    const y = await request<{ pfn: number }>(a, { op: "alloc", pages: 16 });
    assert.deepEqual(hv.sharedMemory(a.domid), { live: 32, released: 48, mapped: 0, charged: 80, max: 128 });
    assert.equal(await request(b, { op: "fill-kept", value: 0x66 }), 3);
    assert.equal(
      await request(a, { op: "zero", pfn: x.pfn, pages: 16 }),
      true,
      "B wrote into A's new segment",
    );
    assert.equal(
      await request(a, { op: "zero", pfn: y.pfn, pages: 16 }),
      true,
      "B wrote into A's new segment",
    );

    // B gone: what it held is A's alone again, and comes back as A's next segments.
    await b.destroy();
    for (let i = 0; i < 3; i++)
      assert.ok((await request<{ pfn?: number }>(a, { op: "alloc", pages: 16 })).pfn);
    assert.deepEqual(hv.sharedMemory(a.domid), { live: 80, released: 0, mapped: 0, charged: 80, max: 128 });
    await a.destroy();
  } finally {
    await hv.shutdown();
  }
});

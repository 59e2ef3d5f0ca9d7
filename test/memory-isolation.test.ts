/**
 * Memory isolation as a hostile guest tries it: raw hypercalls that step around the guest-side
 * wrapper, mappings asked for more than was granted, read-only grants asked for writable
 * views, memory kept after it was given back, and domain ids that come back.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { DOMID_MAX, GNTST } from "../src/xen/abi.js";
import { Hypervisor, MAX_HELD_RELEASED_IDS } from "../src/xen/hypervisor.js";
import { startAgent } from "./helpers/agent.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

type Raw = Record<string, unknown> & { status?: number; error?: string; thrown?: string; message?: string };

test("raw grant_map: a mapping gives exactly what was granted, and read-only never a writable view", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const A = a.dom.domid;
  const B = b.dom.domid;
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 4 });
  for (let i = 0; i < 4; i++) await a.rpc({ op: "fill", pfn: pfn + i, value: i + 1 });

  // One page granted of a four-page segment: no mapping, no buffer.
  const r0 = await a.rpc<number>({ op: "grant", peer: B, pfn });
  const part = await b.rpc<Raw>({ op: "raw", req: { op: "grant_map", domid: A, ref: r0, readonly: false } });
  assert.equal(part.status, GNTST.bad_page, part.error);
  assert.match(part.error!, /whole segment/);
  assert.equal(part.buffer, undefined);
  // Every page granted, in order: the segment, and nothing beyond it.
  const rest = [];
  for (let i = 1; i < 4; i++) rest.push(await a.rpc<number>({ op: "grant", peer: B, pfn: pfn + i }));
  const whole = await b.rpc<Raw>({
    op: "raw",
    req: { op: "grant_map", domid: A, refs: [r0, ...rest], readonly: false },
  });
  assert.equal(whole.status, GNTST.okay, whole.error);
  assert.deepEqual(whole.buffer, { sharedBytes: 4 * 4096, index: 0 });
  // Out of order is not the segment either.
  const shuffled = await b.rpc<Raw>({
    op: "raw",
    req: { op: "grant_map", domid: A, refs: [rest[0], r0, rest[1], rest[2]], readonly: false },
  });
  assert.equal(shuffled.status, GNTST.bad_page);

  // A read-only grant: a writable map is refused; a read-only one gives copies, no buffer.
  const ro = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  await a.rpc({ op: "fill", pfn: ro.pfn, value: 9 });
  const rref = await a.rpc<number>({ op: "grant", peer: B, pfn: ro.pfn, readonly: true });
  const rw = await b.rpc<Raw>({ op: "raw", req: { op: "grant_map", domid: A, ref: rref, readonly: false } });
  assert.equal(rw.status, GNTST.permission_denied);
  assert.equal(rw.buffer, undefined);
  const rom = await b.rpc<Raw>({ op: "raw", req: { op: "grant_map", domid: A, ref: rref, readonly: true } });
  assert.equal(rom.status, GNTST.okay, rom.error);
  assert.equal(rom.buffer, undefined, "a read-only mapping hands out no memory");
  const read = await b.rpc<Raw>({
    op: "raw",
    req: { op: "grant_read", handle: rom.handle, offset: 0, length: 4096 },
  });
  assert.deepEqual(read.bytes, { copyBytes: 4096, head: [9, 9, 9, 9, 9, 9, 9, 9] });
  // The granter revokes it even though it is mapped (there is no view to pull back): reads stop.
  assert.equal(await a.rpc({ op: "endAccess", ref: rref }), true);
  const after = await b.rpc<Raw>({
    op: "raw",
    req: { op: "grant_read", handle: rom.handle, offset: 0, length: 16 },
  });
  assert.equal(after.status, GNTST.bad_gntref);
  assert.equal(after.bytes, undefined);

  // RAM frames: never a writable view for a guest, even through a writable grant.
  const ram = await a.rpc<{ pfn: number }>({ op: "alloc", pages: 1 });
  const ramRef = await a.rpc<number>({ op: "grant", peer: B, pfn: ram.pfn });
  const ramMap = await b.rpc<Raw>({
    op: "raw",
    req: { op: "grant_map", domid: A, ref: ramRef, readonly: false },
  });
  assert.equal(ramMap.status, GNTST.bad_page);
  assert.equal(ramMap.buffer, undefined);

  // A guest cannot make its own buffers (or ones it mapped) into memory it may grant.
  const reg = await b.rpc<Raw>({
    op: "raw",
    req: { op: "mem_register_shared", buffer: new SharedArrayBuffer(4096), pages: 1 },
  });
  assert.equal(reg.thrown, "HypercallFailed");
  assert.match(reg.message!, /ENOSYS/);
  await a.dom.destroy();
  await b.dom.destroy();
});

test("raw hypercalls with crafted arguments get errors, and the hypervisor keeps serving", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const A = a.dom.domid;
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  const ref = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn });
  const crafted: unknown[] = [
    { op: "grant_map", domid: A, refs: new Array(5000).fill(ref), readonly: false },
    { op: "grant_map", domid: A, refs: [], readonly: false },
    { op: "grant_map", domid: A, refs: ["8"], readonly: false },
    { op: "grant_map", domid: A, ref: Number.NaN, readonly: true },
    { op: "grant_map", domid: A, refs: { length: 3 }, readonly: false },
    { op: "grant_map", domid: -1, ref, readonly: false },
    { op: "grant_read", handle: 12345, offset: 0, length: 10 },
    { op: "grant_read", handle: "x", offset: -5, length: 1e12 },
    { op: "grant_unmap", handle: { valueOf: 1 } },
    { op: "mem_alloc_shared", pages: 1e9 },
    { op: "mem_alloc_shared", pages: -1 },
    { op: "mem_alloc_shared", pages: "3" },
    { op: "mem_alloc_shared", pages: 1, audience: ["a", null] },
    { op: "mem_alloc_shared", pages: 1, audience: new Array(1000).fill(A) },
    { op: "mem_share", pfn: 0, domid: A },
    { op: "mem_share", pfn, domid: 31_000 },
    { op: "mem_release_shared", pfn: pfn + 1 },
    { op: "mem_release_shared", pfn: "1" },
  ];
  for (const req of crafted) {
    const r = await b.rpc<Raw>({ op: "raw", req });
    const refused =
      r.thrown === "HypercallFailed" || (typeof r.status === "number" && r.status !== GNTST.okay);
    assert.ok(refused, `refused: ${JSON.stringify(req).slice(0, 80)} → ${JSON.stringify(r).slice(0, 120)}`);
    assert.equal(r.buffer, undefined);
  }
  // Another domain's segment cannot be released or shared by the caller.
  const rel = await b.rpc<Raw>({ op: "raw", req: { op: "mem_release_shared", pfn } });
  assert.equal(rel.thrown, "HypercallFailed");
  const ok = await b.rpc<Raw>({ op: "map", domid: A, ref });
  assert.equal(ok.status, GNTST.okay, "still serving");
  await a.dom.destroy();
  await b.dom.destroy();
});

test("a segment reaches only its audience: recycling it to a new domain is refused, released frames never resolve again", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const c = await startAgent(hv);
  const [A, B, C] = [a.dom.domid, b.dom.domid, c.dom.domid];
  // Undeclared audience: the first mapper is the whole audience.
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  const toB = await a.rpc<number>({ op: "grant", peer: B, pfn });
  const mb = await b.rpc<Raw>({ op: "map", domid: A, ref: toB });
  assert.equal(mb.status, GNTST.okay);
  assert.deepEqual(await b.rpc({ op: "unmap", handle: mb.handle }), { status: GNTST.okay });
  assert.equal(await a.rpc({ op: "endAccess", ref: toB }), true);
  // B may still hold the buffer: the same memory must never go to C while B lives.
  const toC = await a.rpc<number>({ op: "grant", peer: C, pfn });
  const mc = await c.rpc<Raw>({ op: "raw", req: { op: "grant_map", domid: A, ref: toC, readonly: false } });
  assert.equal(mc.status, GNTST.permission_denied);
  assert.match(mc.error!, /not shared with domain/);
  assert.equal(mc.buffer, undefined);

  // A declared audience: both may map, at once.
  const shared = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1, audience: [B, C] });
  for (const x of [b, c]) {
    const r = await a.rpc<number>({ op: "grant", peer: x.dom.domid, pfn: shared.pfn });
    assert.equal((await x.rpc<Raw>({ op: "map", domid: A, ref: r })).status, GNTST.okay);
  }

  // Released: what was mapped stays with its holder; nothing new reaches it, not even a copy.
  const gone = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1, audience: [B] });
  const g1 = await a.rpc<number>({ op: "grant", peer: B, pfn: gone.pfn });
  assert.equal(await a.rpc({ op: "releaseShared", pfn: gone.pfn }), true);
  const late = await b.rpc<Raw>({ op: "map", domid: A, ref: g1 });
  assert.equal(late.status, GNTST.bad_page);
  const copy = await b.rpc<number[]>({
    op: "copy",
    ops: [{ source: { domid: A, ref: g1, offset: 0 }, dest: { domid: 0x7ff0, gmfn: 0, offset: 0 }, len: 8 }],
  });
  assert.deepEqual(copy, [GNTST.bad_page]);
  await Promise.all([a.dom.destroy(), b.dom.destroy(), c.dom.destroy()]);
});

test("domain ids come back after a wrap, but never one a live domain still names", async () => {
  const local = new Hypervisor();
  const setNext = (d: number) => {
    (local as unknown as { nextDomid: number }).nextDomid = d;
  };
  try {
    const keeper = await startAgent(local);
    // A host that ran for weeks: the id counter is near the top.
    setNext(DOMID_MAX - 1);
    const x = await startAgent(local);
    assert.equal(x.dom.domid, DOMID_MAX - 1);
    // The keeper grants a page to x and does not end the grant: x's id stays named.
    const ram = await keeper.rpc<{ pfn: number }>({ op: "alloc", pages: 1 });
    const ref = await keeper.rpc<number>({ op: "grant", peer: x.dom.domid, pfn: ram.pfn });
    await x.dom.destroy();
    setNext(DOMID_MAX - 1);
    const y = await startAgent(local);
    assert.equal(y.dom.domid, DOMID_MAX, "the id the keeper's grant names is skipped");
    await y.dom.destroy();
    const z = await startAgent(local);
    assert.equal(z.dom.domid, 2, "wrapped past the top, past the keeper's own id");
    await z.dom.destroy();
    assert.equal(await keeper.rpc({ op: "endAccess", ref }), true);
    setNext(DOMID_MAX - 1);
    const w = await startAgent(local);
    assert.equal(w.dom.domid, DOMID_MAX - 1, "named by nothing any more: reused");
    await w.dom.destroy();
  } finally {
    await local.shutdown();
  }
});

test("a guest that grants pages to ids no domain has had holds none of them back from the next domain", async () => {
  // The attack: name ids ahead of the counter in one's own grant table (guest memory, written
  // at will), so that the host skips them, or with enough entries runs out of ids.
  const local = new Hypervisor();
  try {
    const namer = await startAgent(local);
    const next = 20_000;
    (local as unknown as { nextDomid: number }).nextDomid = next;
    const ram = await namer.rpc<{ pfn: number }>({ op: "alloc", pages: 1 });
    for (let d = next; d < next + 64; d++)
      await namer.rpc({ op: "grant", peer: d, pfn: ram.pfn, readonly: true });
    const fresh = await startAgent(local);
    assert.equal(fresh.dom.domid, next, "the next id is handed out although the namer's grants name it");
    // The protection that matters stays: a released domain's id is not reused while named.
    const ref = await namer.rpc<number>({ op: "grant", peer: fresh.dom.domid, pfn: ram.pfn });
    await fresh.dom.destroy();
    (local as unknown as { nextDomid: number }).nextDomid = next;
    const after = await startAgent(local);
    assert.equal(after.dom.domid, next + 1, "the released id the namer still names is skipped");
    await after.dom.destroy();
    assert.equal(await namer.rpc({ op: "endAccess", ref }), true);
  } finally {
    await local.shutdown();
  }
});

test("a guest that names every released id holds back at most MAX_HELD_RELEASED_IDS of them: the host never runs out of ids", async () => {
  // The attack: a grant table larger than the id space names every id, so every domain that
  // dies while the guest lives keeps its id, and after ~32K lifetimes createDomain fails.
  const local = new Hypervisor();
  try {
    const hoarder = await startAgent(local);
    const first = 20_000;
    const count = MAX_HELD_RELEASED_IDS + 8;
    // A host that ran for weeks: these ids belonged to domains that died since.
    const released = (local as unknown as { releasedIds: Set<number> }).releasedIds;
    for (let d = first; d < first + count; d++) released.add(d);
    const ram = await hoarder.rpc<{ pfn: number }>({ op: "alloc", pages: 1 });
    for (let d = first; d < first + count; d++)
      await hoarder.rpc({ op: "grant", peer: d, pfn: ram.pfn, readonly: true });
    (local as unknown as { nextDomid: number }).nextDomid = first;
    const next = await startAgent(local);
    assert.equal(
      next.dom.domid,
      first + MAX_HELD_RELEASED_IDS,
      "the first MAX_HELD_RELEASED_IDS stay held, the rest come back",
    );
    await next.dom.destroy();
  } finally {
    await local.shutdown();
  }
});

test("the driver domain's released frame numbers come back, but never while a grant of it names them", async () => {
  // dom0 creates a window per guest and a channel per co-resident pair for as long as the
  // host runs; its frame numbers used to only grow, and 32-rank jobs every 10 s used up 2^32
  // of them in a week (then every endpoint fell back to the split path).
  const local = new Hypervisor();
  try {
    const d0 = await startAgent(local, { privileged: true });
    const g = await startAgent(local);
    const top = await d0.rpc<{ pfn: number }>({ op: "allocShared", pages: 4 });
    for (let i = 0; i < 50; i++) {
      const s = await d0.rpc<{ pfn: number }>({ op: "allocShared", pages: 4 });
      assert.equal(s.pfn, top.pfn + 4, `round ${i}: the released run is used again`);
      assert.equal(await d0.rpc({ op: "releaseShared", pfn: s.pfn }), true);
    }
    // A run still named by a grant in force is not handed out again while the grant stands.
    const kept = await d0.rpc<{ pfn: number }>({ op: "allocShared", pages: 4 });
    const ref = await d0.rpc<number>({ op: "grant", peer: g.dom.domid, pfn: kept.pfn + 2 });
    assert.equal(await d0.rpc({ op: "releaseShared", pfn: kept.pfn }), true);
    const next = await d0.rpc<{ pfn: number }>({ op: "allocShared", pages: 4 });
    assert.notEqual(next.pfn, kept.pfn, "a granted run came back while granted");
    const late = await g.rpc<Raw>({ op: "map", domid: d0.dom.domid, ref });
    assert.equal(late.status, GNTST.bad_page, "the old grant names no memory");
    assert.equal(await d0.rpc({ op: "endAccess", ref }), true);
    assert.equal((await d0.rpc<{ pfn: number }>({ op: "allocShared", pages: 4 })).pfn, kept.pfn);
    // A guest's own frame numbers still only grow (the driver domain caches them by number).
    const a = await g.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
    assert.equal(await g.rpc({ op: "releaseShared", pfn: a.pfn }), true);
    assert.equal((await g.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 })).pfn, a.pfn + 1);
    await Promise.all([g.dom.destroy(), d0.dom.destroy()]);
  } finally {
    await local.shutdown();
  }
});

/**
 * Grant tables between real domains, Xen v1 semantics: map/unmap with validation, no
 * revoking a mapped grant, read-only grants, grant copy bounds, and every invalid request
 * answered with a GNTST status that leaves memory unchanged.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { GNTST, GTF_permit_access, GTF_reading, GTF_readonly } from "../src/xen/abi.js";
import type { CounterSnapshot } from "../src/xen/counters.js";
import {
  acquireGrant,
  allocGrantTable,
  type FrameLocation,
  GRANT_ENTRY_RETRIES,
  type GrantingDomain,
} from "../src/xen/grant-table.js";
import { Hypervisor } from "../src/xen/hypervisor.js";
import { startAgent } from "./helpers/agent.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

type MapReply = { status: number; handle?: number; error?: string };

test("map, write through the mapping, refuse to end a mapped grant, unmap, end", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  const ref = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn });
  const m = await b.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref });
  assert.equal(m.status, GNTST.okay, m.error);
  await b.rpc({ op: "mapWrite", handle: m.handle, offset: 100, bytes: [1, 2, 3] });
  assert.deepEqual(await a.rpc({ op: "peek", pfn, offset: 99, length: 5 }), [0, 1, 2, 3, 0]);

  const busy = await a.rpc<{ thrown: string; message: string }>({ op: "endAccess", ref });
  assert.equal(busy.thrown, "GrantError");
  assert.match(busy.message, new RegExp(`still mapped by domain ${b.dom.domid}.*GTF_writing`));

  assert.deepEqual(await b.rpc({ op: "unmap", handle: m.handle }), { status: GNTST.okay });
  assert.equal(await a.rpc({ op: "endAccess", ref }), true);
  const gone = await b.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref });
  assert.equal(gone.status, GNTST.bad_gntref);
  assert.match(gone.error!, /not in use/);
  const counters = hv.counters(b.dom.domid);
  assert.equal(counters.grant_map, 1);
  assert.equal(counters.grant_unmap, 1);
  assert.equal(counters.grant_errors, 1);
  await a.dom.destroy();
  await b.dom.destroy();
});

test("read-only grants map read-only and refuse writable maps", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  await a.rpc({ op: "fill", pfn, value: 7 });
  const ref = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn, readonly: true });
  const rw = await b.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref });
  assert.equal(rw.status, GNTST.permission_denied);
  assert.match(rw.error!, /read-only/);
  const ro = await b.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref, readonly: true });
  assert.equal(ro.status, GNTST.okay);
  assert.deepEqual(await b.rpc({ op: "mapRead", handle: ro.handle, offset: 0, length: 3 }), [7, 7, 7]);
  const write = await b.rpc<{ thrown: string; message: string }>({
    op: "mapWrite",
    handle: ro.handle,
    offset: 0,
    bytes: [9],
  });
  assert.match(write.message, /mapped read-only/);
  assert.deepEqual(await a.rpc({ op: "peek", pfn, offset: 0, length: 1 }), [7]);
  await a.dom.destroy();
  await b.dom.destroy();
});

test("invalid maps get Xen's status and change nothing", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const c = await startAgent(hv);
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  const ref = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn });
  const cases: [string, () => Promise<MapReply>, number, RegExp][] = [
    [
      "wrong domain",
      () => c.rpc({ op: "map", domid: a.dom.domid, ref }),
      GNTST.permission_denied,
      /granted to domain/,
    ],
    ["bad ref", () => b.rpc({ op: "map", domid: a.dom.domid, ref: 1 << 20 }), GNTST.bad_gntref, /outside/],
    [
      "unused ref",
      () => b.rpc({ op: "map", domid: a.dom.domid, ref: ref + 1 }),
      GNTST.bad_gntref,
      /not in use/,
    ],
    ["no such domain", () => b.rpc({ op: "map", domid: 3000, ref }), GNTST.bad_domain, /does not exist/],
    ["bad handle", () => b.rpc({ op: "unmap", handle: 12345 }), GNTST.bad_handle, /no mapping/],
  ];
  for (const [what, call, status, message] of cases) {
    const r = await call();
    assert.equal(r.status, status, what);
    assert.match(r.error!, message, what);
  }
  // The good map still works and the grant is not pinned by the failures.
  const ok = await b.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref });
  assert.equal(ok.status, GNTST.okay);
  await b.rpc({ op: "unmap", handle: ok.handle });
  assert.equal(await a.rpc({ op: "endAccess", ref }), true);
  await Promise.all([a, b, c].map((x) => x.dom.destroy()));
});

test("RAM frames map only into the privileged domain; guests share through allocShared pages", async () => {
  const dom0 = await startAgent(hv, { privileged: true });
  assert.equal(dom0.dom.domid, 0);
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const { pfn } = await a.rpc<{ pfn: number }>({ op: "alloc", pages: 1 });
  const toB = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn });
  const refused = await b.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref: toB });
  assert.equal(refused.status, GNTST.bad_page);
  assert.match(refused.error!, /allocShared/);
  const to0 = await a.rpc<number>({ op: "grant", peer: 0, pfn });
  const m = await dom0.rpc<MapReply>({ op: "map", domid: a.dom.domid, ref: to0 });
  assert.equal(m.status, GNTST.okay);
  await dom0.rpc({ op: "mapWrite", handle: m.handle, offset: 0, bytes: [0xab] });
  assert.deepEqual(await a.rpc({ op: "peek", pfn, offset: 0, length: 1 }), [0xab]);
  await Promise.all([dom0, a, b].map((x) => x.dom.destroy()));
});

test("grant copy: within a page, through grants, bounds-checked, nothing written on error", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const src = (await b.rpc<{ pfn: number }>({ op: "alloc", pages: 1 })).pfn;
  await b.rpc({ op: "fill", pfn: src, value: 0x5a });
  const dst = (await a.rpc<{ pfn: number }>({ op: "alloc", pages: 1 })).pfn;
  const rw = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn: dst });
  const ro = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn: dst, readonly: true });
  const before = await a.rpc<number>({ op: "checksum", pfn: dst });
  const me = b.dom.domid;
  const theirs = a.dom.domid;
  const bad = await b.rpc<number[]>({
    op: "copy",
    ops: [
      {
        source: { domid: me, gmfn: src, offset: 0 },
        dest: { domid: theirs, ref: rw, offset: 4000 },
        len: 200,
      },
      { source: { domid: me, gmfn: src, offset: 0 }, dest: { domid: theirs, ref: ro, offset: 0 }, len: 8 },
      { source: { domid: me, gmfn: src, offset: 0 }, dest: { domid: theirs, gmfn: dst, offset: 0 }, len: 8 },
      { source: { domid: me, gmfn: src, offset: 0 }, dest: { domid: theirs, ref: 99999, offset: 0 }, len: 8 },
      { source: { domid: me, gmfn: src, offset: -1 }, dest: { domid: theirs, ref: rw, offset: 0 }, len: 8 },
      {
        source: { domid: me, gmfn: src, ref: 3, offset: 0 },
        dest: { domid: theirs, ref: rw, offset: 0 },
        len: 8,
      },
      {
        source: { domid: me, gmfn: 1 << 20, offset: 0 },
        dest: { domid: theirs, ref: rw, offset: 0 },
        len: 8,
      },
    ],
  });
  assert.deepEqual(bad, [
    GNTST.bad_copy_arg,
    GNTST.permission_denied,
    GNTST.permission_denied,
    GNTST.bad_gntref,
    GNTST.bad_copy_arg,
    GNTST.bad_copy_arg,
    GNTST.bad_page,
  ]);
  assert.equal(await a.rpc({ op: "checksum", pfn: dst }), before, "failed copies wrote nothing");
  const good = await b.rpc<number[]>({
    op: "copy",
    ops: [
      {
        source: { domid: me, gmfn: src, offset: 10 },
        dest: { domid: theirs, ref: rw, offset: 4000 },
        len: 96,
      },
    ],
  });
  assert.deepEqual(good, [GNTST.okay]);
  assert.deepEqual(await a.rpc({ op: "peek", pfn: dst, offset: 3998, length: 4 }), [0, 0, 0x5a, 0x5a]);
  // Copying pinned nothing permanently: the grants can be ended.
  assert.equal(await a.rpc({ op: "endAccess", ref: rw }), true);
  const counters = hv.counters(b.dom.domid);
  assert.equal(counters.grant_copy, 1);
  assert.equal(counters.grant_copy_bytes, 96);
  assert.equal(counters.grant_errors, 7);
  await a.dom.destroy();
  await b.dom.destroy();
});

test("the privileged domain copies in place: no hypercall per copy", async () => {
  const dom0 = await startAgent(hv, { privileged: true });
  const g = await startAgent(hv);
  const page = (await g.rpc<{ pfn: number }>({ op: "alloc", pages: 1 })).pfn;
  const ref = await g.rpc<number>({ op: "grant", peer: 0, pfn: page });
  const own = (await dom0.rpc<{ pfn: number }>({ op: "alloc", pages: 1 })).pfn;
  await dom0.rpc({ op: "fill", pfn: own, value: 0x11 });
  const op = {
    source: { domid: 0, gmfn: own, offset: 0 },
    dest: { domid: g.dom.domid, ref, offset: 0 },
    len: 64,
  };
  await dom0.rpc({ op: "copy", ops: [op] }); // first copy fetches foreign access once
  const before = hv.counters(0);
  const statuses = await dom0.rpc<number[]>({ op: "copy", ops: Array(100).fill(op) });
  assert.ok(statuses.every((s) => s === GNTST.okay));
  const after = hv.counters(0);
  assert.equal(after.hypercalls - before.hypercalls, 0, "in-place copies make no hypercall");
  assert.equal(after.grant_copy - before.grant_copy, 100);
  assert.deepEqual(await g.rpc({ op: "peek", pfn: page, offset: 62, length: 4 }), [0x11, 0x11, 0, 0]);
  const foreignFail = await dom0.rpc<number[]>({
    op: "copy",
    ops: [{ ...op, dest: { domid: g.dom.domid, ref: ref + 1, offset: 0 } }],
  });
  assert.deepEqual(foreignFail, [GNTST.bad_gntref]);
  const c: CounterSnapshot = hv.counters(0);
  assert.equal(c.grant_errors, 1);
  await dom0.dom.destroy();
  await g.dom.destroy();
});

test("a granter that rewrites its entry under every pin is refused after a few tries, never waited for", () => {
  // The hypervisor loads the entry, checks it, then compare-exchanges the pin flags in; a
  // granter on another core may rewrite the word between the two. This granter does it every
  // time (from frame(), which the check calls in between) — for 1000 tries, then it stops.
  const { table, shadow } = allocGrantTable(16);
  const entries = new Uint32Array(table);
  const ref = 9;
  const user = 5;
  const word = (GTF_permit_access | (user << 16)) >>> 0;
  entries[2 * ref] = word;
  entries[2 * ref + 1] = 0;
  let rewrites = 0;
  const granter: GrantingDomain = {
    domid: 3,
    entries,
    shadow: new Int32Array(shadow),
    frame: () => {
      if (rewrites < 1000) {
        rewrites++;
        // The same grant, the readonly bit toggled: still valid for a read, never the same word.
        Atomics.xor(entries, 2 * ref, GTF_readonly);
      }
      return { buffer: new SharedArrayBuffer(4096), byteOffset: 0 } as unknown as FrameLocation;
    },
  };
  const r = acquireGrant(granter, ref, user, false);
  assert.equal(r.status, GNTST.general_error, r.error);
  assert.match(r.error ?? "", /keeps rewriting it/);
  assert.equal(rewrites, GRANT_ENTRY_RETRIES + 1, "refused after the retries, not after the granter tired");
  assert.equal(entries[2 * ref] & GTF_reading, 0, "nothing pinned");
});

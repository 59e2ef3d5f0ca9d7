/**
 * Memory and grant lifetime, as a hostile guest tries it: the privileged domain
 * validates a guest's grants in place (netback's copies, myrback's region pins), and a frame
 * it does not know yet makes it ask the hypervisor (guest.ts ForeignDomains). It used to ask
 * while holding the granter's grant-table lock, which the hypervisor thread also takes to
 * serve any hypercall on that domain's grants: a guest that granted dom0 a frame number far
 * above its memory, and kept its own grant hypercalls going, hung the whole host (the
 * hypervisor thread spun forever on the lock; dom0 waited forever for its answer). And the
 * mappings a guest holds are bounded in pages, not only in number: 16384 read-only maps of
 * 4096 refs each kept half a GiB of refs in the host's heap. And such a lookup costs dom0 one
 * hypercall answering with one segment at most, however many segments the guest holds: it
 * used to fetch all of them, for every check.
 *
 * The programs are written to a temporary folder: a sandboxed guest that writes its own grant
 * entries as it likes, and a driver domain that says (in a shared word) when it traps into
 * the hypervisor, so the test looks at the lock at exactly that moment, whatever the threads'
 * timing.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { GNTST } from "../src/xen/abi.js";
import { acquireGrant, GRANT_READ_MAX, type GrantingDomain, releaseGrant } from "../src/xen/grant-table.js";
import { MAX_MAPPED_PAGES_PER_DOMAIN } from "../src/xen/hypervisor/domain-record.js";
import { GRANT_COPY_SLICE, Hypervisor, MAX_SEGMENT_PAGES } from "../src/xen/hypervisor.js";
import { startAgent } from "./helpers/agent.js";
import { nextMessage, request } from "./helpers/messages.js";

const dir = mkdtempSync(join(tmpdir(), "grant-hostile-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The hostile guest: grants dom0 frames it names itself, by writing its grant table. */
const GUEST = join(dir, "granter.mjs");
writeFileSync(
  GUEST,
  `export default async function main(guest) {
  const e = guest.grants.table.entries;
  let next = 100;
  for (;;) {
    const c = await guest.nextMessage();
    if (c.op === "exit") return "bye";
    if (c.op === "raw-grant") {
      // Any frame number, granted to domain 0: the entry is the guest's own memory.
      const ref = next++;
      Atomics.store(e, 2 * ref + 1, c.frame);
      Atomics.store(e, 2 * ref, (0 << 16) | 1);
      guest.send(ref);
    } else if (c.op === "segment-grant") {
      // An ordinary page of a new shared segment, granted to domain 0 with the wrapper.
      const run = guest.allocShared(1);
      guest.send(guest.grants.grantAccess(0, run.pfn));
    } else if (c.op === "segments") {
      // Many one-page segments: before, every lookup dom0 made for a frame it had not seen
      // fetched all of them.
      for (let i = 0; i < c.n; i++) guest.allocShared(1);
      guest.send(c.n);
    } else if (c.op === "marked-segment") {
      // A new segment whose page holds c.mark, granted to domain 0.
      const run = guest.allocShared(1);
      run.bytes.fill(c.mark);
      guest.send({ ref: guest.grants.grantAccess(0, run.pfn), pfn: run.pfn });
    } else if (c.op === "release") {
      // The grant stays in the table: only the segment goes.
      guest.releaseShared({ pfn: c.pfn });
      guest.send("released");
    } else if (c.op === "churn") {
      // One segment made and given back: the segments changed twice, nothing else did.
      guest.releaseShared(guest.allocShared(1));
      guest.send("churned");
    }
  }
}
`,
);

/** The driver domain: pins a guest's grant in place, as myrback does for a region, and reports every trap. */
const DOM0 = join(dir, "dom0.mjs");
writeFileSync(
  DOM0,
  `export default async function main(guest) {
  const trap = new Int32Array(guest.args.trap);
  const hypercall = guest.hypercall.bind(guest);
  guest.hypercall = (req) => {
    if (req && String(req.op).startsWith("foreign_")) {
      // About to trap: whatever dom0 holds now, it holds until the hypervisor answers.
      Atomics.add(trap, 0, 1);
      Atomics.notify(trap, 0);
    }
    return hypercall(req);
  };
  const page = guest.memory.allocPages(1);
  // n copies of the first 64 bytes of the guest's grant into our page: the statuses seen, the first error, the first byte.
  const copy = (c) => {
    page.bytes.fill(0);
    const op = { source: { domid: c.domid, ref: c.ref, offset: 0 }, dest: { domid: 0, gmfn: page.pfn, offset: 0 }, len: 64 };
    const res = guest.grants.copy(new Array(c.n ?? 1).fill(op));
    return { statuses: [...new Set(res.map((r) => r.status))], error: res.find((r) => r.error)?.error, byte: page.bytes[0] };
  };
  for (;;) {
    const c = await guest.nextMessage();
    if (c.op === "exit") return "bye";
    if (c.op === "copy") {
      guest.send(copy(c));
      continue;
    }
    if (c.op === "copy-hold") {
      // Copy; then, this thread blocked (it reads no message meanwhile), wait for the word; copy again.
      const hold = new Int32Array(c.hold);
      const first = copy(c);
      Atomics.store(hold, 0, 1);
      Atomics.notify(hold, 0);
      Atomics.wait(hold, 1, 0, 60_000);
      guest.send({ first, second: copy(c) });
      continue;
    }
    const r = guest.grants.pinForeign(c.domid, [c.ref], false);
    if (r.status === 0) guest.grants.unpinForeign(c.domid, [c.ref], false);
    guest.send({ status: r.status, error: r.error });
  }
}
`,
);

/** A guest that keeps every mapping it can get: the largest run of refs, one page granted over and over. */
const HOARDER = join(dir, "hoarder.mjs");
writeFileSync(
  HOARDER,
  `export default async function main(guest) {
  const { tries, refsPerMap } = guest.args;
  const page = guest.memory.allocPages(1);
  const ref = guest.grants.grantAccess(guest.domid, page.pfn, { readonly: true });
  const refs = new Array(refsPerMap).fill(ref);
  const map = () => guest.hypercall({ op: "grant_map", domid: guest.domid, refs, readonly: true });
  const handles = [];
  let refused;
  for (let i = 0; i < tries && !refused; i++) {
    const r = map();
    if (r.status === 0) handles.push(r.handle);
    else refused = r;
  }
  // One given back: room for one more.
  const unmap = guest.hypercall({ op: "grant_unmap", handle: handles[0] });
  const again = map();
  return { kept: handles.length, refused, unmap: unmap.status, again: again.status };
}
`,
);

const SHADOW_LOCK = 2;

test("dom0 never traps into the hypervisor holding a guest's grant-table lock: a bogus or new frame cannot hang the host", async () => {
  const hv = new Hypervisor();
  try {
    const g = await hv.createDomain({ module: GUEST, pages: 16, maxHeapMb: 64 });
    const trap = new SharedArrayBuffer(4);
    const d0 = await hv.createDomain({ module: DOM0, privileged: true, pages: 16, args: { trap } });
    const traps = new Int32Array(trap);
    // The hypervisor's own record of the guest: the grant table's shadow, with its lock word.
    const rec = (hv as unknown as { records: Map<number, GrantingDomain> }).records.get(g.domid)!;

    // dom0 learns the guest's memory once (its first trap for it; no lock is held then).
    const first = await request<number>(g, { op: "segment-grant" });
    assert.equal((await request<{ status: number }>(d0, { domid: g.domid, ref: first })).status, GNTST.okay);

    const cases: [string, Record<string, unknown>, number][] = [
      // The attack: a frame number far above the guest's memory, which dom0 must look up.
      ["a bogus frame", { op: "raw-grant", frame: 0x7fffffff }, GNTST.bad_page],
      // The same lookup happens for an honest guest's segment allocated after dom0 looked.
      ["a new segment's frame", { op: "segment-grant" }, GNTST.okay],
    ];
    for (const [what, cmd, status] of cases) {
      const ref = await request<number>(g, cmd);
      const before = Atomics.load(traps, 0);
      const pinned = request<{ status: number; error?: string }>(d0, { domid: g.domid, ref });
      pinned.catch(() => undefined); // awaited below; the assertions' failures are the news
      // Synchronously, so the hypervisor (this thread) cannot answer: dom0 stays in its trap.
      const woke = Atomics.wait(traps, 0, before, 60_000);
      assert.notEqual(woke, "timed-out", `${what}: dom0 never asked the hypervisor about the frame`);
      assert.equal(
        Atomics.load(rec.shadow, SHADOW_LOCK),
        0,
        `${what}: dom0 waits for the hypervisor while holding domain ${g.domid}'s grant-table lock; ` +
          "a hypercall on that domain's grants served meanwhile would spin on it forever",
      );
      // What the hypervisor does for any guest's grant hypercall on this domain: it gets through.
      const r = acquireGrant(rec, first, 0, false);
      assert.equal(r.status, GNTST.okay, r.error);
      releaseGrant(rec, first, false);
      const done = await pinned;
      assert.equal(done.status, status, `${what}: ${done.error}`);
    }
    await Promise.all([d0.destroy(), g.destroy()]);
  } finally {
    await hv.shutdown();
  }
});

interface Copied {
  statuses: number[];
  error?: string;
  byte: number;
}

test("a guest's grants of frames it does not have cost dom0 one bounded lookup, however many segments it holds; new segments resolve, released ones never again", async () => {
  // Before, dom0 fetched the guest's whole segment list for every frame above what it knew,
  // on every grant check: ~80 ms a copy at 16,000 one-page segments, and a guest that filled
  // its vif's TX ring with grants of frame 0xfffffff0 stalled netback for seconds a pass.
  // Counted, never timed: hypercalls dom0 made, and segments the hypervisor handed it.
  const SEGMENTS = 4000;
  const hv = new Hypervisor();
  try {
    const g = await hv.createDomain({ module: GUEST, pages: 16, maxHeapMb: 128, maxSharedPages: 8192 });
    const d0 = await hv.createDomain({
      module: DOM0,
      privileged: true,
      pages: 16,
      args: { trap: new SharedArrayBuffer(4) },
    });
    const copy = (ref: number, n = 1) => request<Copied>(d0, { op: "copy", domid: g.domid, ref, n });
    const cost = async <T>(what: () => Promise<T>) => {
      const before = d0.counters();
      const value = await what();
      const after = d0.counters();
      return {
        value,
        hypercalls: after.hypercalls - before.hypercalls,
        segments: after.foreign_segments - before.foreign_segments,
      };
    };

    assert.equal(await request<number>(g, { op: "segments", n: SEGMENTS }), SEGMENTS);
    const a = await request<{ ref: number; pfn: number }>(g, { op: "marked-segment", mark: 0x5a });
    // dom0 learns the guest (its RAM and table) and that one segment.
    const first = await copy(a.ref);
    assert.deepEqual(first.statuses, [GNTST.okay], first.error);
    assert.equal(first.byte, 0x5a);

    // The attack: grants to dom0 of frames above everything the guest has, 64 copies of each.
    const bogus = [0xfffffff0, 0x7fffffff, a.pfn + 1];
    const refs: number[] = [];
    for (const frame of bogus) refs.push(await request<number>(g, { op: "raw-grant", frame }));
    const attack = await cost(async () => {
      const out: Copied[] = [];
      for (const ref of refs) out.push(await copy(ref, 64));
      return out;
    });
    for (const [i, r] of attack.value.entries()) {
      assert.deepEqual(r.statuses, [GNTST.bad_page], `frame ${bogus[i]}: ${r.error}`);
      assert.match(r.error!, /does not own/);
    }
    assert.ok(
      attack.hypercalls <= bogus.length,
      `${bogus.length * 64} checks of ${bogus.length} bogus frames cost dom0 ${attack.hypercalls} hypercalls (at most one a frame)`,
    );
    assert.equal(attack.segments, 0, "segments handed to dom0 to refuse frames no segment holds");

    // The guest's segments keep changing between checks: each check costs one lookup at most.
    const ROUNDS = 8;
    const churn = await cost(async () => {
      const out: Copied[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        await request(g, { op: "churn" });
        out.push(await copy(refs[0], 16));
      }
      return out;
    });
    for (const r of churn.value) assert.deepEqual(r.statuses, [GNTST.bad_page], r.error);
    assert.ok(
      churn.hypercalls <= ROUNDS,
      `${ROUNDS} rounds of a segment made and released, then 16 bogus checks: ${churn.hypercalls} dom0 hypercalls`,
    );
    assert.equal(churn.segments, 0);

    // A segment made after dom0 looked resolves, for one segment handed over...
    const b = await request<{ ref: number; pfn: number }>(g, { op: "marked-segment", mark: 0xa5 });
    const fresh = await cost(() => copy(b.ref, 16));
    assert.deepEqual(fresh.value.statuses, [GNTST.okay], fresh.value.error);
    assert.equal(fresh.value.byte, 0xa5);
    assert.ok(fresh.hypercalls <= 1, `a new segment's frame: ${fresh.hypercalls} hypercalls`);
    assert.equal(fresh.segments, 1);

    // ...and once released, never again: not even while the hypervisor's message telling dom0
    // so waits unread (dom0's thread is blocked between its two copies).
    const hold = new SharedArrayBuffer(8);
    const word = new Int32Array(hold);
    const held = request<{ first: Copied; second: Copied }>(d0, {
      op: "copy-hold",
      domid: g.domid,
      ref: b.ref,
      hold,
    });
    held.catch(() => undefined); // awaited below
    const waited = Atomics.waitAsync(word, 0, 0, 60_000);
    if (waited.async) assert.equal(await waited.value, "ok", "dom0 never made its first copy");
    assert.equal(await request<string>(g, { op: "release", pfn: b.pfn }), "released");
    Atomics.store(word, 1, 1);
    Atomics.notify(word, 1);
    const { first: before, second: after } = await held;
    assert.deepEqual(before.statuses, [GNTST.okay], before.error);
    assert.equal(before.byte, 0xa5);
    assert.deepEqual(
      after.statuses,
      [GNTST.bad_page],
      `a released segment's frame still resolved for dom0 (byte ${after.byte}): ${after.error}`,
    );
    // The first segment, granted before any of this, still resolves.
    const again = await copy(a.ref);
    assert.deepEqual(again.statuses, [GNTST.okay], again.error);
    assert.equal(again.byte, 0x5a);
    await Promise.all([d0.destroy(), g.destroy()]);
  } finally {
    await hv.shutdown();
  }
});

test("a guest cannot make the hypervisor keep more than MAX_MAPPED_PAGES_PER_DOMAIN refs in its mappings", async () => {
  // Before, only the number of mappings was bounded (16384): each of 4096 refs, a guest made
  // the host's heap keep ~512 MiB (measured: 126 MiB for 4000), and a few such guests took the
  // host and every domain on it down.
  const hv = new Hypervisor();
  try {
    const fit = MAX_MAPPED_PAGES_PER_DOMAIN / MAX_SEGMENT_PAGES;
    const g = await hv.createDomain({
      module: HOARDER,
      pages: 16,
      maxHeapMb: 64,
      args: { tries: fit + 1, refsPerMap: MAX_SEGMENT_PAGES },
    });
    const exit = await g.exited;
    assert.equal(exit.state, "shutdown", exit.error?.message);
    const r = exit.result as {
      kept: number;
      refused?: { status: number; error: string };
      unmap: number;
      again: number;
    };
    assert.equal(r.kept, fit, `mappings of ${MAX_SEGMENT_PAGES} refs kept before a refusal`);
    assert.equal(r.refused?.status, GNTST.no_device_space, r.refused?.error);
    assert.match(r.refused!.error, /already maps \d+ pages.*unmap some first/);
    assert.equal(r.unmap, GNTST.okay);
    assert.equal(r.again, GNTST.okay, "the room an unmap gives back is usable");
  } finally {
    await hv.shutdown();
  }
});

test("a guest's longest grant copy is served in slices: the hypervisor's thread runs other work between them", async () => {
  // Whole, 4,096 page copies held the thread that serves every domain's hypercalls and
  // XenStore requests for 23 ms a call, and a guest could call it in a loop. Work queued on
  // that thread (here: a chain of turns that look at the guest's copy counter) must run while
  // the copy is half done, whatever the threads' timing.
  const hv = new Hypervisor();
  try {
    const dom = await hv.createDomain({
      module: new URL("./fixtures/guests/long-copy.js", import.meta.url),
      pages: 64,
    });
    assert.deepEqual(await nextMessage(dom), ["ready"]);
    const seen = new Set<number>();
    let looking = true;
    const look = () => {
      try {
        seen.add(hv.counters(dom.domid).grant_copy);
      } catch {
        looking = false; // the domain is gone: its copy ended before
      }
      if (looking) setImmediate(look);
    };
    look();
    dom.send("go");
    const exit = await dom.exited;
    looking = false;
    assert.equal(exit.state, "shutdown", exit.error?.stack);
    assert.equal(exit.result, 4096, "every copy succeeded");
    const between = [...seen].filter((n) => n > 0 && n < 4096).sort((a, b) => a - b);
    assert.ok(
      between.length >= 4096 / GRANT_COPY_SLICE - 1,
      `the thread ran other work at ${between.length} points of the copy (${between.join(", ")})`,
    );
    assert.ok(
      between.every((n) => n % GRANT_COPY_SLICE === 0),
      `slices of ${GRANT_COPY_SLICE}: ${between.join(", ")}`,
    );
  } finally {
    await hv.shutdown();
  }
});

test("a read through a read-only mapping copies at most GRANT_READ_MAX a hypercall: the runtime reads in parts, a raw read of more is refused", async () => {
  // The copy runs on the hypervisor's thread: 16 MiB a call, in a loop, held it for tens of ms
  // at a time while every domain waited.
  const hv = new Hypervisor();
  try {
    const [a, b] = [await startAgent(hv, { pages: 1024 }), await startAgent(hv, { pages: 64 })];
    const pages = (3 * GRANT_READ_MAX) / 4096 + 1;
    const { pfn } = await a.rpc<{ pfn: number }>({ op: "alloc", pages });
    const refs: number[] = [];
    for (let i = 0; i < pages; i++) {
      await a.rpc({ op: "fill", pfn: pfn + i, value: (i % 7) + 1 });
      refs.push(await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn: pfn + i, readonly: true }));
    }
    let want = 0;
    for (let i = 0; i < pages; i++) want += 4096 * ((i % 7) + 1);
    const { handle } = await b.rpc<{ handle: number }>({
      op: "map",
      domid: a.dom.domid,
      refs,
      readonly: true,
    });
    const reads = () => hv.counters(b.dom.domid).grant_read;
    const before = reads();
    const whole = await b.rpc<{ length: number; sum: number }>({
      op: "mapReadSum",
      handle,
      offset: 0,
      length: pages * 4096,
    });
    assert.deepEqual(whole, { length: pages * 4096, sum: want }, "the whole mapping, read in parts");
    assert.equal(reads() - before, 4, "four hypercalls for 3 MiB and a page");
    const raw = await b.rpc<{ status: number; error?: string }>({
      op: "raw",
      req: { op: "grant_read", handle, offset: 0, length: 2 * GRANT_READ_MAX },
    });
    assert.notEqual(raw.status, 0, "a raw read of 2 MiB was served whole");
    assert.match(raw.error ?? "", /one read copies at most 1048576/);
  } finally {
    await hv.shutdown();
  }
});

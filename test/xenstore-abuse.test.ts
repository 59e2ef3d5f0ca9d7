/**
 * XenStore as a hostile guest uses it, through real domains: a perms list naming every domain
 * id (which once kept every id out of use, so the host could create no domain), a name kept
 * for a dead domain's id, a watch token of a megabyte kept by the host, and requests and watch
 * events fired faster than the guest takes them in (which once queued without bound in the
 * host's memory). Each bound lives on the hypervisor's side or in the guest's trusted runtime,
 * where guest code cannot reach it.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, test } from "node:test";
import type { DomainRecord } from "../src/xen/hypervisor/domain-record.js";
import { Hypervisor } from "../src/xen/hypervisor.js";
import { XS_EVENT_BACKLOG, XS_EVENT_WINDOW, XS_REQUESTS_IN_FLIGHT } from "../src/xen/xenstore/port-credit.js";
import { startAgent } from "./helpers/agent.js";

const FLOOD = new URL("./fixtures/guests/xenstore-abuser.js", import.meta.url);
const TX_FILLER = new URL("./fixtures/guests/xs-tx-filler.js", import.meta.url);

let hv: Hypervisor;
before(() => {
  hv = new Hypervisor();
});
after(() => hv.shutdown());

type Thrown = { thrown?: string; message?: string };
const errnoOf = (r: unknown) => /^(E[A-Z0-9]+):/.exec((r as Thrown).message ?? "")?.[1] ?? String(r);

test("perms a guest sets: at most 5 entries, live domains only, each once; a dead domain's id is reused at once and inherits nothing", async () => {
  const gone = await startAgent(hv);
  const deadId = gone.dom.domid;
  await gone.dom.destroy();
  const owner = await startAgent(hv);
  const reader = await startAgent(hv);
  const R = reader.dom.domid;
  const node = `/local/domain/${owner.dom.domid}/data/x`;
  await owner.rpc({ op: "xsWrite", path: "data/x", value: "secret" });
  const me = { dom: owner.dom.domid, access: "n" };

  // Every domain id: once this named them all and kept each out of use while the guest lived.
  const everyone = [me];
  for (let d = 1; d <= 0x7fef; d++) if (d !== me.dom) everyone.push({ dom: d, access: "n" });
  assert.equal(errnoOf(await owner.rpc({ op: "xsSetPerms", path: node, perms: everyone })), "ENOSPC");
  const twice = [me, { dom: R, access: "r" }, { dom: R, access: "b" }];
  assert.equal(errnoOf(await owner.rpc({ op: "xsSetPerms", path: node, perms: twice })), "EINVAL");
  const named = (dom: number) => [me, { dom, access: "r" }];
  assert.equal(errnoOf(await owner.rpc({ op: "xsSetPerms", path: node, perms: named(deadId) })), "ENOENT");
  assert.equal(await owner.rpc({ op: "xsSetPerms", path: node, perms: named(R) }), true);
  assert.equal(await reader.rpc({ op: "xsRead", path: node }), "secret");
  // A new domain is created at once after the refused lists (nothing was left naming ids).
  const another = await startAgent(hv);
  await another.dom.destroy();

  // The reader goes; a new domain given its id at once must not read what it could.
  await reader.dom.destroy();
  (hv as unknown as { nextDomid: number }).nextDomid = R;
  const heir = await startAgent(hv);
  assert.equal(heir.dom.domid, R, "the id is free again: the release revoked its name");
  assert.equal(errnoOf(await heir.rpc({ op: "xsRead", path: node })), "EACCES");
  const perms = hv.xenstore.getPerms(0, node);
  assert.deepEqual(perms, [me], "the reader's entry went with it");
  await Promise.all([owner.dom.destroy(), heir.dom.destroy()]);
});

test("a guest cannot make the host keep a megabyte watch token, nor reach past its client's request window", async () => {
  const g = await startAgent(hv);
  const big = await g.rpc({
    op: "xsRequest",
    req: { op: "watch", path: "data", token: "t".repeat(1 << 20) },
  });
  assert.equal(errnoOf(big), "EINVAL");
  assert.match((big as Thrown).message ?? "", /must fit in 4096/);
  assert.equal(await g.rpc({ op: "xsRequest", req: { op: "watch", path: "data", token: "short" } }), true);
  assert.deepEqual(await g.rpc({ op: "xsClientSurface" }), { post: "undefined", handle: "undefined" });
  await g.dom.destroy();
});

test("a guest's directory listing fits one reply payload or is refused E2BIG: long child names cannot make the host hold megabyte replies", async () => {
  // A reply is posted whole and waits in the guest's port, in the host's memory: 990 children
  // named with 3,040 characters each made 3 MB replies, 32 in flight a guest (95 MB).
  const g = await startAgent(hv);
  const ask = (path: string) => g.rpc({ op: "xsRequest", req: { op: "directory", path } });
  const name = (i: number) => `${String(i).padStart(4, "0")}${"n".repeat(1_000)}`;
  for (let i = 0; i < 4; i++) await g.rpc({ op: "xsWrite", path: `data/wide/${name(i)}`, value: "" });
  const four = (await ask("data/wide")) as string[];
  assert.deepEqual(four, [0, 1, 2, 3].map(name), "4,020 bytes of names: one reply");
  await g.rpc({ op: "xsWrite", path: `data/wide/${name(4)}`, value: "" });
  const five = await ask("data/wide");
  assert.equal(errnoOf(five), "E2BIG", `five long names came back: ${String(five).slice(0, 80)}`);
  assert.match((five as Thrown).message ?? "", /take 5025 bytes; one reply carries at most 4096/);
  // The toolstack (domain 0) still lists it whole, and the guest's small listings are untouched.
  assert.equal(hv.xenstore.directory(0, `/local/domain/${g.dom.domid}/data/wide`).length, 5);
  assert.deepEqual(await ask("data"), ["wide"]);
  await g.dom.destroy();
});

test("requests and watch events fired faster than a guest takes them in wait within their windows; all arrive when it does", async () => {
  const watches = 64;
  const dom = await hv.createDomain({
    module: FLOOD,
    name: "flood",
    pages: 64,
    maxHeapMb: 128,
    args: { watches, writes: 2000, spinMs: 1500 },
  });
  const rec = (hv as unknown as { records: Map<number, DomainRecord> }).records.get(dom.domid)!;
  await new Promise((r) => dom.once("message", r));
  // The guest now spins without yielding with 2000 writes issued; for a while, look at what
  // it has in flight. One write (data/x) and the watches came before.
  const setup = 1 + watches;
  let ops = 0;
  let inFlight = 0;
  let waiting = 0;
  for (let i = 0; i < 25 && dom.state === "running"; i++) {
    await new Promise((r) => setTimeout(r, 20));
    ops = Math.max(ops, hv.xenstore.stats()[dom.domid]?.totalOps ?? 0);
    inFlight = Math.max(inFlight, rec.xsEvents!.inFlight);
    waiting = Math.max(waiting, rec.xsEvents!.waiting);
  }
  assert.ok(
    ops <= setup + XS_REQUESTS_IN_FLIGHT,
    `${ops - setup} writes reached xenstored while the guest had not yielded`,
  );
  assert.ok(inFlight <= XS_EVENT_WINDOW, `${inFlight} watch events posted and not taken in`);
  assert.ok(waiting <= XS_EVENT_BACKLOG + watches, `${waiting} watch events waiting in the hypervisor`);
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  const r = exit.result as { value: string; fewest: number };
  assert.equal(r.value, "2000", "every write was applied, in order");
  assert.ok(r.fewest >= 1, "every watch heard of the writes");
  await dom.destroy();
});

test("synchronous requests that give up at once still wait their turn in the window", async () => {
  const done = new SharedArrayBuffer(4);
  const dom = await hv.createDomain({
    module: FLOOD,
    name: "sync-flood",
    pages: 64,
    maxHeapMb: 128,
    args: { watches: 0, writes: 20_000, spinMs: 1500, sync: true, done },
  });
  await new Promise((r) => dom.once("message", r));
  // xenstored (this thread) answers nothing while the guest fires its writes: each gives up at
  // once, and none may be posted past the window meanwhile.
  dom.send("go");
  Atomics.wait(new Int32Array(done), 0, 0, 30_000);
  // Now serve what was posted, while the guest spins and takes nothing in.
  await new Promise((r) => setTimeout(r, 500));
  const ops = hv.xenstore.stats()[dom.domid]?.totalOps ?? 0;
  assert.ok(ops <= 1 + XS_REQUESTS_IN_FLIGHT, `${ops - 1} writes were posted while none was answered`);
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  assert.equal((exit.result as { gaveUp: number }).gaveUp, 20_000);
  await dom.destroy();
});

test("synchronous requests that gave up still go in the order they were made", async () => {
  const done = new SharedArrayBuffer(4);
  const writes = XS_REQUESTS_IN_FLIGHT + 8;
  const dom = await hv.createDomain({
    module: FLOOD,
    name: "sync-order",
    pages: 64,
    maxHeapMb: 128,
    args: { watches: 0, writes, spinMs: 0, sync: true, done, readBack: true },
  });
  await new Promise((r) => dom.once("message", r));
  dom.send("go");
  Atomics.wait(new Int32Array(done), 0, 0, 30_000);
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  // Every write gave up (nothing was answered), and the last one made is the one that stands.
  assert.deepEqual(exit.result, { gaveUp: writes, value: String(writes) });
  await dom.destroy();
});

test("a guest's open transaction keeps no more than its quota in the host: writes and reads beyond it are refused ENOSPC", async () => {
  // 20,000 writes of 4 KiB to one node in one transaction it never ends (or reads of 20,000
  // distinct 2 KiB missing paths): the transaction kept every one, 80 MB of the host's heap a
  // second, for as long as the guest liked.
  for (const reads of [false, true]) {
    const dom = await hv.createDomain({
      module: TX_FILLER,
      pages: 64,
      maxHeapMb: 128,
      args: { writes: 20_000, valueBytes: reads ? 2048 : 4096, txs: 1, reads },
    });
    const [report] = (await once(dom, "message")) as [{ refused: number; errnos: string[] }];
    dom.send("go");
    await dom.exited;
    assert.deepEqual(report.errnos, ["ENOSPC"], reads ? "reads" : "writes");
    // At most 256 KiB kept: 63 writes of 4 KiB, or 126 paths of 2 KiB.
    assert.ok(report.refused >= 20_000 - 128, `${reads ? "reads" : "writes"}: ${report.refused} refused`);
  }
});

test("short-lived guests writing into a long-lived guest's home leave no node behind when they go", async () => {
  // The keeper lets each writer write under its home; each writer fills part of its quota
  // there and is destroyed. Its nodes passed to domain 0 (no quota) and stayed while the
  // keeper lived: 10 writers with 4 KiB values held 9,905 nodes and 43 MiB of the host's heap.
  const keeper = await startAgent(hv);
  const K = keeper.dom.domid;
  assert.equal(await keeper.rpc({ op: "xsWrite", path: "data/pool", value: "" }), true);
  const xs = hv.xenstore;
  const base = xs.nodeCount();
  for (let i = 0; i < 3; i++) {
    const writer = await startAgent(hv);
    const W = writer.dom.domid;
    const grant = [
      { dom: K, access: "n" },
      { dom: W, access: "w" },
    ];
    assert.equal(
      await keeper.rpc({ op: "xsSetPerms", path: `/local/domain/${K}/data/pool`, perms: grant }),
      true,
    );
    for (let n = 0; n < 20; n++) {
      const path = `/local/domain/${K}/data/pool/w${W}-${n}`;
      assert.equal(await writer.rpc({ op: "xsWrite", path, value: "x".repeat(4000) }), true);
    }
    assert.ok(xs.nodeCount() >= base + 20, "the writer's nodes are there while it lives");
    await writer.dom.destroy();
    assert.equal(xs.nodeCount(), base, `writer ${i + 1} is gone and so are its nodes`);
  }
  // The keeper's home works as before.
  assert.equal(await keeper.rpc({ op: "xsWrite", path: "data/pool/mine", value: "1" }), true);
  assert.equal(await keeper.rpc({ op: "xsRead", path: "data/pool/mine" }), "1");
  await keeper.dom.destroy();
});

/**
 * Event-channel bindings are reused, never leaked and never crossed: a closed channel's
 * SharedArrayBuffer goes back to a pool of the domains that held it, so a guest looping
 * alloc_unbound + close pins a bounded number of buffers, and a buffer that domains A and B
 * held is never handed to a channel of A with C.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { CounterSnapshot } from "../src/xen/counters.js";
import { EventChannelTable } from "../src/xen/event-channel.js";
import { Hypervisor } from "../src/xen/hypervisor.js";
import { startAgent } from "./helpers/agent.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

/** Binding words (event-channel.ts): end 0's pending/mask, end 1's, the state (generation × 2 + bound). */
const WORDS = { pend0: 0, mask0: 1, pend1: 32, mask1: 33 };
const STATE = 64;

function table(...doms: number[]): EventChannelTable {
  const live = new Set(doms);
  const t = new EventChannelTable((d) => live.has(d));
  for (const d of doms) t.addDomain(d);
  return t;
}

test("a guest looping alloc_unbound + close 10,000 times, keeping every binding, gets a few buffers, each clean", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const before = await a.rpc<CounterSnapshot>({ op: "counters" });
  let distinct = 0;
  // First for a peer that never binds, then for itself: both churn on A's own pool.
  for (const remote of [b.dom.domid, a.dom.domid]) {
    const r = await a.rpc<{ distinct: number; unclean: number; kept: number; message?: string }>({
      op: "evtchnChurn",
      remote,
      times: 10_000,
    });
    assert.equal(r.message, undefined);
    distinct += r.distinct;
    assert.equal(r.unclean, 0, "each binding came back unbound, nothing pending, unmasked");
  }
  assert.equal(distinct, 1, "the guest saw one buffer, handed again and again");
  const counters = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(counters.evtchn_alloc - before.evtchn_alloc, 20_000);
  assert.equal(counters.evtchn_reuse - before.evtchn_reuse, 19_999);
  await a.dom.destroy();
  await b.dom.destroy();
});

test("a binding domains A and B held goes back only to A and B; C gets a distinct buffer", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const c = await startAgent(hv);
  type Raw = { port: number; binding: { index: number }; end: number; gen: number };
  const tag = 4 * 40; // a word of end 1's block that no one else writes
  const pa = await a.rpc<Raw>({ op: "raw", req: { op: "evtchn_alloc_unbound", remoteDom: b.dom.domid } });
  const pb = await b.rpc<Raw>({
    op: "raw",
    req: { op: "evtchn_bind_interdomain", remoteDom: a.dom.domid, remotePort: pa.port },
  });
  await b.rpc({ op: "rawPoke", index: pb.binding.index, offset: tag, bytes: [0xbb] });
  // B dirties its end too, and keeps the buffer: it can write it for as long as it lives.
  await b.rpc({ op: "rawPoke", index: pb.binding.index, offset: 4 * WORDS.mask1, bytes: [1] });
  await a.rpc({ op: "raw", req: { op: "evtchn_close", port: pa.port } });
  await b.rpc({ op: "raw", req: { op: "evtchn_close", port: pb.port } });

  const pc = await a.rpc<Raw>({ op: "raw", req: { op: "evtchn_alloc_unbound", remoteDom: c.dom.domid } });
  const seen = await a.rpc<number[]>({ op: "rawPeek", index: pc.binding.index, offset: tag, length: 1 });
  assert.deepEqual(seen, [0], "the A–C channel's buffer is not the one B held");
  const self = await a.rpc<Raw>({ op: "raw", req: { op: "evtchn_alloc_unbound", remoteDom: a.dom.domid } });
  const selfSeen = await a.rpc<number[]>({
    op: "rawPeek",
    index: self.binding.index,
    offset: tag,
    length: 1,
  });
  assert.deepEqual(selfSeen, [0], "nor is A's channel with itself");

  // A channel of A with B again gets it back, reset as a fresh one.
  const again = await a.rpc<Raw>({ op: "raw", req: { op: "evtchn_alloc_unbound", remoteDom: b.dom.domid } });
  const bytes = await a.rpc<number[]>({
    op: "rawPeek",
    index: again.binding.index,
    offset: 0,
    length: 4 * 96,
  });
  const words = new Int32Array(Uint8Array.from(bytes).buffer);
  assert.equal(words[40], 0xbb, "the A–B channel reuses the buffer A and B held");
  for (const [name, i] of Object.entries(WORDS))
    assert.equal(words[i], 0, `${name} starts as in a fresh binding`);
  assert.equal(words[STATE] & 1, 0, "it starts unbound");
  assert.equal(again.gen, 1, "on a new generation");
  assert.equal(words[STATE] >>> 1, again.gen);
  await Promise.all([a, b, c].map((x) => x.dom.destroy()));
});

test("the table hands a pair's free binding to that pair only, and forgets it when one of them dies", () => {
  const [A, B, C] = [1, 2, 3];
  const t = table(A, B, C);
  const g = t.allocUnbound(A, B);
  const gb = t.bindInterdomain(B, A, g.port);
  assert.equal(gb.binding, g.binding);
  // One end closed: the other still uses it, so nobody gets it.
  t.close(A, g.port);
  assert.notEqual(t.allocUnbound(B, A).binding, g.binding);
  assert.notEqual(t.allocUnbound(A, B).binding, g.binding);
  t.close(B, gb.port);
  assert.equal(t.pooledBindings(), 1);
  for (const [d, r] of [
    [A, C],
    [C, A],
    [B, C],
    [A, A],
    [B, B],
    [C, C],
  ])
    assert.notEqual(t.allocUnbound(d, r).binding, g.binding, `alloc_unbound(${d}, ${r})`);
  const back = t.allocUnbound(B, A);
  assert.equal(back.binding, g.binding, "the pair gets it back (either end may allocate)");
  assert.equal(t.stats.reused, 1);
  t.close(B, back.port);

  // B dies: the pair's free binding is dropped, and B's id, reused, names a new domain.
  t.closeAll(B);
  t.addDomain(B);
  assert.equal(t.pooledBindings(), 0);
  for (const [d, r] of [
    [A, B],
    [A, A],
    [B, A],
  ])
    assert.notEqual(t.allocUnbound(d, r).binding, g.binding);
});

test("a binding whose other holder died is never pooled, even when the survivor closes it later", () => {
  const [A, B, C] = [1, 2, 3];
  const t = table(A, B, C);
  const g = t.allocUnbound(A, B);
  const gb = t.bindInterdomain(B, A, g.port);
  t.close(B, gb.port); // A's end waits for B again
  t.closeAll(B);
  t.close(A, g.port);
  assert.equal(t.pooledBindings(), 0);
  t.addDomain(B);
  for (const r of [A, B, C]) assert.notEqual(t.allocUnbound(A, r).binding, g.binding);
});

test("pools are bounded by the ports a domain had open at once, however long it churns", () => {
  const [A, B] = [1, 2];
  const t = table(A, B);
  for (let round = 0; round < 50; round++) {
    const own = Array.from({ length: 8 }, () => t.allocUnbound(A, A).port);
    const pair = Array.from({ length: 5 }, () => t.allocUnbound(A, B));
    const bound = pair.map((g) => t.bindInterdomain(B, A, g.port).port);
    for (const p of own) t.close(A, p);
    for (const g of pair) t.close(A, g.port);
    for (const p of bound) t.close(B, p);
  }
  assert.equal(t.stats.made, 13, "8 ports of A alone and 5 channels of A with B at once");
  assert.equal(t.pooledBindings(), 13);
  assert.equal(t.stats.reused, 50 * 13 - 13);
});

test("honest flows on reused bindings: bind, send, close wakes the peer, rebind", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  for (let round = 0; round < 3; round++) {
    const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
    const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
    assert.equal(
      await b.rpc({ op: "wait", port: pb, timeoutMs: 20 }),
      "timeout",
      "a reused binding has nothing pending",
    );
    await a.rpc({ op: "notify", port: pa });
    assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 5000 }), "event");
    const waiting = a.rpc({ op: "wait", port: pa, timeoutMs: 10_000, spinUs: 0 });
    await new Promise((r) => setTimeout(r, 30));
    await b.rpc({ op: "closePort", port: pb });
    assert.equal(await waiting, "unbound", "the closed end's peer wakes");
    const again = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
    await a.rpc({ op: "notify", port: pa });
    assert.equal(await b.rpc({ op: "wait", port: again, timeoutMs: 5000 }), "event");
    await b.rpc({ op: "closePort", port: again });
    await a.rpc({ op: "closePort", port: pa });
  }
  const counters = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(counters.evtchn_reuse, 2, "rounds 2 and 3 ran on the first round's binding");
  await a.dom.destroy();
  await b.dom.destroy();
});

test("a port handle kept after its close never acts on the channel that reuses its binding", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const old = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  const oldB = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: old });
  await a.rpc({ op: "keepPort", port: old });
  await b.rpc({ op: "keepPort", port: oldB });
  await a.rpc({ op: "closePort", port: old });
  await b.rpc({ op: "closePort", port: oldB });
  const before = await a.rpc<CounterSnapshot>({ op: "counters" });
  const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  const mid = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(mid.evtchn_reuse - before.evtchn_reuse, 1, "the new channel is on the old binding");

  await a.rpc({ op: "kept", port: old, action: "notify" });
  const dropped = (await a.rpc<CounterSnapshot>({ op: "counters" })).evtchn_dropped - mid.evtchn_dropped;
  assert.equal(dropped, 1, "a send on a closed port's handle is dropped");
  assert.equal(
    await b.rpc({ op: "wait", port: pb, timeoutMs: 20 }),
    "timeout",
    "the stale send reached no one",
  );
  await b.rpc({ op: "kept", port: oldB, action: "mask" });
  assert.deepEqual(await b.rpc({ op: "kept", port: oldB }), { bound: false, masked: false });
  await a.rpc({ op: "notify", port: pa });
  assert.equal(
    await b.rpc({ op: "kept", port: oldB, action: "wait", timeoutMs: 1000 }),
    "unbound",
    "a stale wait leaves at once, and does not take the new channel's event",
  );
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 5000 }), "event");
  const end = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(end.evtchn_kick - mid.evtchn_kick, 1, "the stale mask did not mask the new channel");
  await a.dom.destroy();
  await b.dom.destroy();
});

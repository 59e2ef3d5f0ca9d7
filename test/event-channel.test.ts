/** Event channels between real domains: binding, send/wait, coalescing, masking, close, and no lost wake-ups. */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { EVTCHNSTAT } from "../src/xen/abi.js";
import type { CounterSnapshot } from "../src/xen/counters.js";
import { Hypervisor } from "../src/xen/hypervisor.js";
import { startAgent } from "./helpers/agent.js";
import { nextMessage } from "./helpers/messages.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

test("alloc_unbound, bind_interdomain, notify and wait; status reports both ends", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  assert.ok(pa >= 1);
  assert.deepEqual(await a.rpc({ op: "status", port: pa }), {
    status: EVTCHNSTAT.unbound,
    remoteDom: b.dom.domid,
  });
  const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  assert.deepEqual(await b.rpc({ op: "status", port: pb }), {
    status: EVTCHNSTAT.interdomain,
    remoteDom: a.dom.domid,
    remotePort: pa,
  });
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 20 }), "timeout");
  await a.rpc({ op: "notify", port: pa });
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 5000 }), "event");
  await b.rpc({ op: "notify", port: pb });
  assert.equal(await a.rpc({ op: "wait", port: pa, timeoutMs: 5000 }), "event");
  await a.dom.destroy();
  await b.dom.destroy();
});

test("binding is refused with a clear error unless the port waits for exactly this domain", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const c = await startAgent(hv);
  const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  const wrong = await c.rpc<{ thrown: string; message: string }>({
    op: "bind",
    remote: a.dom.domid,
    port: pa,
  });
  assert.match(wrong.message, /EINVAL: .*not waiting for domain/);
  const missing = await c.rpc<{ message: string }>({ op: "bind", remote: a.dom.domid, port: 999 });
  assert.match(missing.message, /has no port 999/);
  const nodom = await c.rpc<{ message: string }>({ op: "allocUnbound", remote: 4000 });
  assert.match(nodom.message, /ESRCH/);
  const notMine = await c.rpc<{ message: string }>({ op: "notify", port: 77 });
  assert.match(notMine.message, /no event-channel port 77/);
  // b can still bind: the failed attempts changed nothing.
  const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  assert.ok(pb >= 1);
  await Promise.all([a, b, c].map((x) => x.dom.destroy()));
});

test("sends coalesce while pending, masked ports are not kicked, and unmask reports the pending edge", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  const before = await a.rpc<CounterSnapshot>({ op: "counters" });
  await a.rpc({ op: "notify", port: pa, times: 5 });
  const mid = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(mid.evtchn_send - before.evtchn_send, 5);
  assert.equal(mid.evtchn_kick - before.evtchn_kick, 1);
  assert.equal(mid.evtchn_coalesced - before.evtchn_coalesced, 4);
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 1000 }), "event");
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 20 }), "timeout", "five sends were one edge");

  await b.rpc({ op: "mask", port: pb });
  await a.rpc({ op: "notify", port: pa });
  const masked = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(masked.evtchn_kick - mid.evtchn_kick, 0, "a masked port is not kicked");
  assert.equal(await b.rpc({ op: "unmask", port: pb }), true, "the edge that came while masked is pending");
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 1000 }), "event");
  await a.dom.destroy();
  await b.dom.destroy();
});

test("closing a port wakes the peer, which sees it unbound; the closer may bind again", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  const waiting = a.rpc({ op: "wait", port: pa, timeoutMs: 10_000, spinUs: 0 });
  await new Promise((r) => setTimeout(r, 30));
  await b.rpc({ op: "closePort", port: pb });
  assert.equal(await waiting, "unbound");
  assert.deepEqual(await a.rpc({ op: "status", port: pa }), {
    status: EVTCHNSTAT.unbound,
    remoteDom: b.dom.domid,
  });
  await a.rpc({ op: "notify", port: pa });
  const c = await a.rpc<CounterSnapshot>({ op: "counters" });
  assert.equal(c.evtchn_dropped, 1, "a send on an unbound port is dropped, as in Xen");
  const again = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  await a.rpc({ op: "notify", port: pa });
  assert.equal(await b.rpc({ op: "wait", port: again, timeoutMs: 1000 }), "event");
  await a.dom.destroy();
  await b.dom.destroy();
});

test("many concurrent notifiers against one event-loop waiter: no lost wake-up", async () => {
  const pingers = 6;
  const rounds = 1500;
  const stress = new URL("./fixtures/guests/evtchn-stress.js", import.meta.url);
  const pingerDoms = [];
  for (let i = 0; i < pingers; i++)
    pingerDoms.push(await hv.createDomain({ module: stress, args: { role: "pinger", rounds, spinUs: 0 } }));
  const hubDom = await hv.createDomain({
    module: stress,
    args: { role: "hub", peers: pingerDoms.map((d) => d.domid), rounds },
  });
  const [{ ports }] = (await nextMessage(hubDom)) as [{ ports: number[] }];
  for (const [i, d] of pingerDoms.entries()) {
    const bound = nextMessage(d);
    d.send({ hub: hubDom.domid, port: ports[i] });
    await bound;
  }
  hubDom.send("go");
  for (const d of pingerDoms) d.send("go");
  const exits = await Promise.all([hubDom.exited, ...pingerDoms.map((d) => d.exited)]);
  for (const e of exits) assert.equal(e.state, "shutdown", e.error?.message);
  const hubCounters = exits[0].result as CounterSnapshot;
  assert.equal(hubCounters.evtchn_send, pingers * rounds);
  const pingerSleeps = exits.slice(1).reduce((s, e) => s + (e.result as CounterSnapshot).evtchn_sleep, 0);
  assert.ok(pingerSleeps > 0, "pingers really slept, so wake-ups were exercised");
});

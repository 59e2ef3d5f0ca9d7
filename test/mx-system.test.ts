/**
 * The bypass path as a system: after set-up, ten thousand ping-pongs between two guests
 * involve neither the backend nor the hypervisor (proved with their counters); and a
 * hostile guest writing garbage into everything it was handed hurts no one else.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, test } from "node:test";
import { startLinkedHosts } from "../src/bench/hosts.js";
import { MxPair } from "../src/bench/mx.js";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

const GRANT_OPS = ["grant_map", "grant_unmap", "grant_copy"] as const;

test("10,000 ping-pongs between two guests: 0 backend requests, 0 grant operations, kicks only to sleepers", async () => {
  const pair = await MxPair.start(host, "bypass");
  try {
    await pair.pingpong(8, 200, 20); // set-up done: both ends connected and warm
    const domids = [0, ...pair.domains.map((d) => d.domid)];
    const backendBefore = host.backendStats();
    const hvBefore = domids.map((d) => host.hypervisor.counters(d));
    const [ca0, cb0] = await pair.counters();
    const us = await pair.pingpong(8, 10_000, 0);
    const [ca1, cb1] = await pair.counters();
    const backendAfter = host.backendStats();
    const hvAfter = domids.map((d) => host.hypervisor.counters(d));
    assert.ok(us > 0);
    assert.equal(backendAfter.requests - backendBefore.requests, 0, "myrback served no request");
    for (const [i, d] of domids.entries()) {
      for (const op of GRANT_OPS)
        assert.equal(hvAfter[i][op] - hvBefore[i][op], 0, `domain ${d}: ${op} during the data phase`);
      assert.equal(hvAfter[i].hypercalls - hvBefore[i].hypercalls, 0, `domain ${d}: hypercalls`);
    }
    assert.equal(ca1.sends - ca0.sends, 10_000);
    assert.equal(cb1.recvs - cb0.recvs, 10_000);
    // A rank kicks its peer only when the peer announced it was going to sleep. (The two
    // ranks' counters are read at slightly different moments: one kick at the edge of the
    // window may pair with an announcement just outside it.)
    const aKicks = ca1.kicks - ca0.kicks;
    const bKicks = cb1.kicks - cb0.kicks;
    assert.ok(
      aKicks <= cb1.sleeps - cb0.sleeps + 1,
      `a kicked ${aKicks} times for ${cb1.sleeps - cb0.sleeps} sleeps of b`,
    );
    assert.ok(
      bKicks <= ca1.sleeps - ca0.sleeps + 1,
      `b kicked ${bKicks} times for ${ca1.sleeps - ca0.sleeps} sleeps of a`,
    );
  } finally {
    await pair.stop();
  }
});

test("a hostile guest's garbage in its window and channel: error completions for it, no harm to others", async () => {
  const HOSTILE = new URL("./fixtures/guests/mx-hostile.js", import.meta.url);
  const start = async (role: string, pages = 512) => {
    const d = await host.startGuest({ module: HOSTILE, args: { role }, pages, name: role });
    return { d, first: nextMessage(d) };
  };
  const bystander = await start("bystander");
  const victim = await start("victim");
  const peer = await start("peer");
  const hostile = await start("hostile");
  const nicBefore = host.nic.counters().global;
  const [checksum] = (await bystander.first) as [{ before: number }];
  const addr = async (x: { first: Promise<unknown[]> }) => (await x.first)[0];
  const [va, pa, ha] = [await addr(victim), await addr(peer), await addr(hostile)];
  const connected = (d: Domain) => nextMessage(d);
  const conns = [connected(victim.d), connected(peer.d), connected(hostile.d)];
  victim.d.send([ha, pa]);
  peer.d.send([va]);
  hostile.d.send([va]);
  await Promise.all(conns);
  for (const x of [victim, peer, hostile]) x.d.send("go");
  const [ev, ep, eh] = await Promise.all([victim.d.exited, peer.d.exited, hostile.d.exited]);
  bystander.d.send("done");
  const eb = await bystander.d.exited;
  for (const e of [ev, ep, eh, eb]) assert.equal(e.state, "shutdown", e.error?.stack);
  const h = eh.result as { errors: number };
  const v = ev.result as { ok: number; bad: number; hostileDead: string; channelErrors: number };
  const p = ep.result as { rounds: number; bad: number };
  const b = eb.result as { before: number; after: number };
  assert.ok(h.errors >= 10_000, `the hostile guest got ${h.errors} error completions`);
  assert.ok(v.ok >= 100, `the victim kept communicating (${v.ok} checked messages)`);
  assert.equal(v.bad, 0);
  assert.equal(p.bad, 0);
  assert.match(v.hostileDead, /garbage/);
  assert.equal(v.channelErrors, 1);
  assert.equal(b.after, b.before, "the bystander's memory did not change");
  assert.equal(checksum.before, b.before);
  const nic = host.nic.counters().global;
  assert.ok(nic.errors - nicBefore.errors >= h.errors, "the NIC counted every refusal");
  assert.equal(nic.internal_errors, 0);
});

test("1,000 sends of varying sizes from one 1 MiB buffer (then 300 from the heap): all complete, registrations and bounce buffers stay bounded", async () => {
  const SIZES = new URL("./fixtures/guests/mx-sizes.js", import.meta.url);
  const args = { count: 1000, heapCount: 300, minLen: 1024, maxLen: 1 << 20, bufBytes: 1 << 20 };
  const start = (role: "a" | "b") =>
    host.startGuest({
      module: SIZES,
      args: { role, ...args },
      pages: 4096,
      maxHeapMb: 256,
      name: `sizes-${role}`,
    });
  const a = await start("a");
  const gotA = nextMessage(a);
  const b = await start("b");
  const gotB = nextMessage(b);
  const [addrA] = await gotA;
  const [addrB] = await gotB;
  a.send(addrB);
  b.send(addrA);
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", ea.error?.stack);
  assert.equal(eb.state, "shutdown", eb.error?.stack);
  type Out = {
    sent: number;
    received: number;
    bad: number;
    errors: string[];
    maxLibRegions: number;
    maxLibBytes: number;
    maxBounceBytes: number;
    maxBackendBytes: number;
    maxBackendRegions: number;
    limits: { regions: number; bytes: number; bouncePoolBytes: number };
    counters: Record<string, number>;
  };
  const sa = ea.result as Out;
  const sb = eb.result as Out;
  assert.deepEqual(sa.errors, []);
  assert.deepEqual(sb.errors, []);
  assert.equal(sa.sent, 1300);
  assert.equal(sb.received, 1300);
  assert.equal(sb.bad, 0, "every message arrived intact");
  for (const [who, s] of [
    ["sender", sa],
    ["receiver", sb],
  ] as const) {
    const { limits } = s;
    // The bounds the library promises (endpoint.ts cacheLimits), a fraction of a 16 MiB guest.
    assert.ok(
      limits.bytes <= 8 << 20 && limits.bouncePoolBytes <= 4 << 20,
      `${who}: ${JSON.stringify(limits)}`,
    );
    // Sampled between messages, when nothing is in flight: the idle bounds hold, in the
    // library's gauges and in the backend's own accounting of the domain.
    assert.ok(s.maxLibRegions <= limits.regions, `${who}: ${s.maxLibRegions} regions cached`);
    assert.ok(s.maxLibBytes <= limits.bytes, `${who}: ${s.maxLibBytes} bytes cached`);
    assert.ok(s.maxBounceBytes <= limits.bouncePoolBytes, `${who}: ${s.maxBounceBytes} bounce bytes pooled`);
    assert.ok(s.maxBackendRegions <= limits.regions, `${who}: backend saw ${s.maxBackendRegions} regions`);
    assert.ok(s.maxBackendBytes <= limits.bytes, `${who}: backend saw ${s.maxBackendBytes} bytes registered`);
    // Overlapping ranges of one buffer reuse a registration: far fewer registrations than messages.
    assert.ok(s.counters.registrations < 200, `${who}: ${s.counters.registrations} registrations`);
  }
});

for (const placement of ["co-resident", "across two hosts"] as const)
  test(`a peer flooding messages nobody asked for (${placement}) is cut off at the receiver's limit; the receiver and its other peers carry on`, async () => {
    // Before, each unexpected message was copied into the receiver's heap without limit, and
    // the lane freed for more: the flooder took the receiver to its typed-array limit (the
    // hypervisor stops it) or the host's memory. Through the NIC, a peer failed for it came
    // back with its next record, and the messages dropped for it went missing unsaid.
    const FLOOD = new URL("./fixtures/guests/mx-unexpected-flood.js", import.meta.url);
    const linked = placement === "across two hosts" ? await startLinkedHosts() : undefined;
    try {
      const start = async (role: string, on: Host) => {
        const d = await on.startGuest({ module: FLOOD, args: { role }, pages: 1024, name: role });
        return { d, first: nextMessage(d) };
      };
      const victim = await start("victim", linked?.a ?? host);
      const flooder = await start("flooder", linked?.b ?? host);
      const peer = await start("peer", linked?.a ?? host);
      const addr = async (x: { first: Promise<unknown[]> }) => (await x.first)[0];
      const [va, fa, pa] = [await addr(victim), await addr(flooder), await addr(peer)];
      const connected = [once(victim.d, "message"), once(flooder.d, "message"), once(peer.d, "message")];
      victim.d.send([fa, pa]);
      flooder.d.send([va]);
      peer.d.send([va]);
      await Promise.all(connected);
      const ef = await flooder.d.exited;
      assert.equal(ef.state, "shutdown", ef.error?.stack);
      victim.d.send("stop");
      const [ev, ep] = await Promise.all([victim.d.exited, peer.d.exited]);
      assert.equal(ev.state, "shutdown", ev.error?.stack);
      assert.equal(ep.state, "shutdown", ep.error?.stack);
      const f = ef.result as { sent: number; failed?: string };
      const v = ev.result as { overflows: number; unexpected: number; fromPeer: unknown; waitedFor: string };
      if (placement === "co-resident") {
        // The channel is closed: the flooder's sends fail.
        assert.match(
          f.failed ?? "",
          /^MX_STATUS_ENDPOINT_(CLOSED|UNREACHABLE)$/,
          `the flood went on: ${JSON.stringify(f)}`,
        );
        assert.ok(f.sent < 1024, `the flooder got ${f.sent} of 1024 messages through`);
      }
      // Through the NIC the flooder's sends complete (its NIC delivered them) but are refused.
      assert.equal(v.overflows, 1);
      assert.ok(v.unexpected >= 64, `the victim kept ${v.unexpected} (64 KiB each) before the limit`);
      assert.equal(
        v.waitedFor,
        "still waiting",
        "nothing of the flooder's reached the victim after it was cut off",
      );
      assert.equal(v.fromPeer, 42, "the victim's honest peer still reaches it");
      assert.deepEqual(ep.result, { got: 7, sent: "MX_STATUS_SUCCESS" });
    } finally {
      await linked?.stop();
    }
  });

/**
 * The split-driver slow path: netfront ⇄ netback (grant copies, batching, notification
 * suppression) and the driver domain's MAC-learning bridge, between real guests on one
 * host. Layouts are checked byte for byte; traffic is checked byte for byte too, and the
 * counters netback and the bridge keep in shared memory (Host.netStats) show how it went.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { Bridge, type BridgeFrame, type BridgePort } from "../src/netback/bridge.js";
import type { NetStats } from "../src/netback/stats.js";
import type { Domain } from "../src/xen/hypervisor.js";
import {
  FATAL_SKB_SLOTS,
  MAX_FRAME,
  MAX_FRAME_PAGES,
  NETIF_RSP_DROPPED,
  NETIF_RSP_ERROR,
  NETIF_RSP_NULL,
  NETIF_RSP_OKAY,
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETRXF_extra_info,
  NETRXF_gso_prefix,
  NETRXF_more_data,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_more_data,
  RX_REQ_BYTES,
  RX_RING_SIZE,
  RX_RSP_BYTES,
  TX_REQ_BYTES,
  TX_RING_SIZE,
  TX_RSP_BYTES,
  vifMac,
  vifMacNicBits,
  writeRxRequest,
  writeRxResponse,
  writeTxRequest,
  writeTxResponse,
  XEN_NETIF_NR_SLOTS_MIN,
} from "../src/xen/io/netif.js";
import { ringSlotSize } from "../src/xen/ring.js";
import type { FrameSummary, NetCommand, NetReply } from "./fixtures/net-agent.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { request } from "./helpers/messages.js";
import { freePort } from "./helpers/nic-harness.js";

const AGENT = new URL("./fixtures/net-agent.js", import.meta.url);
const HOSTILE = new URL("./fixtures/net-hostile.js", import.meta.url);
const NIC = 9;

interface Agent {
  dom: Domain;
  call<T = unknown>(cmd: NetCommand): Promise<T>;
  mac: string;
}

function talk(dom: Domain) {
  return (cmd: NetCommand) => request<NetReply>(dom, cmd);
}

let host: Host;

before(async () => {
  host = await Host.start({ nicId: NIC, verbose: !!process.env.NET_VERBOSE });
});
after(async () => {
  await host?.stop();
});

async function agent(
  name: string,
  opts: { fastPath?: boolean; rxBuffers?: number; txBuffers?: number; on?: Host } = {},
): Promise<Agent> {
  const on = opts.on ?? host;
  const dom = await on.startGuest({
    module: AGENT,
    name,
    pages: 1024,
    maxHeapMb: 64,
    fastPath: opts.fastPath,
  });
  const raw = talk(dom);
  const call = async <T>(cmd: NetCommand): Promise<T> => {
    const r = await raw(cmd);
    if (!r.ok) throw Object.assign(new Error(`${cmd.op}: ${r.message}`), { code: r.code });
    return r.value as T;
  };
  const init = await call<{ mac: string; mtu: number; nicId: number }>({
    op: "init",
    rxBuffers: opts.rxBuffers ?? 256,
    txBuffers: opts.txBuffers ?? 64,
  });
  assert.equal(init.mac, vifMac(on.nicId, dom.domid), "the toolstack's MAC");
  const nic = on.nicId >>> 0;
  assert.equal(
    init.mac,
    [((nic >>> 24) & 0xfc) | 2, (nic >>> 16) & 0xff, (nic >>> 8) & 0xff, nic & 0xff, 0, dom.domid]
      .map((b) => b.toString(16).padStart(2, "0"))
      .join(":"),
  );
  assert.equal(init.mtu, 9000);
  assert.equal(init.nicId, on.nicId);
  return { dom, call, mac: init.mac };
}

function vif(s: NetStats, domid: number) {
  const v = s.vifs.find((x) => x.domid === domid);
  assert.ok(v, `netback has stats for domain ${domid}`);
  return v;
}

test("netif.h layouts, byte for byte", () => {
  assert.equal(TX_REQ_BYTES, 12);
  assert.equal(TX_RSP_BYTES, 4);
  assert.equal(RX_REQ_BYTES, 8);
  assert.equal(RX_RSP_BYTES, 8);
  assert.equal(ringSlotSize(TX_REQ_BYTES, TX_RSP_BYTES), 12);
  assert.equal(TX_RING_SIZE, 256, "(4096 − 64) / 12 = 336 → 256");
  assert.equal(RX_RING_SIZE, 256, "(4096 − 64) / 8 = 504 → 256");
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  writeTxRequest(v, 0, { gref: 0x11223344, offset: 0x5566, flags: 0x0004, id: 0x7788, size: 0x99aa });
  assert.deepEqual(
    [...b.subarray(0, 12)],
    [0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x04, 0x00, 0x88, 0x77, 0xaa, 0x99],
  );
  b.fill(0);
  writeTxResponse(v, 0, 0x1234, NETIF_RSP_ERROR);
  assert.deepEqual([...b.subarray(0, 4)], [0x34, 0x12, 0xff, 0xff]);
  b.fill(0);
  writeRxRequest(v, 0, 0xbeef, 0xcafef00d);
  assert.deepEqual([...b.subarray(0, 8)], [0xef, 0xbe, 0, 0, 0x0d, 0xf0, 0xfe, 0xca]);
  b.fill(0);
  writeRxResponse(v, 0, 0x0102, 0x0304, NETRXF_more_data, 4096);
  assert.deepEqual([...b.subarray(0, 8)], [0x02, 0x01, 0x04, 0x03, 0x04, 0x00, 0x00, 0x10]);
  writeRxResponse(v, 0, 1, 0, 0, NETIF_RSP_DROPPED);
  assert.deepEqual([...b.subarray(6, 8)], [0xfe, 0xff]);
  assert.deepEqual(
    [NETTXF_csum_blank, NETTXF_data_validated, NETTXF_more_data, NETTXF_extra_info],
    [1, 2, 4, 8],
  );
  assert.deepEqual(
    [NETRXF_data_validated, NETRXF_csum_blank, NETRXF_more_data, NETRXF_extra_info, NETRXF_gso_prefix],
    [1, 2, 4, 8, 16],
  );
  assert.deepEqual([NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETIF_RSP_NULL], [-2, -1, 0, 1]);
  assert.equal(MAX_FRAME, 9014);
  assert.equal(MAX_FRAME_PAGES, 3);
  assert.equal(XEN_NETIF_NR_SLOTS_MIN, 18);
  assert.equal(FATAL_SKB_SLOTS, 20);
  assert.equal(vifMac(0x1ff, 0x1234), "02:00:01:ff:12:34", "locally administered, unicast");
  assert.equal(vifMac(0xfedcba98, 0x7fef), "fe:dc:ba:98:7f:ef");
  // NIC ids that share their low byte (1 and 257) gave domain 5 the same MAC under 00:16:3e.
  assert.notEqual(vifMac(1, 5), vifMac(257, 5));
  assert.equal(vifMacNicBits(0x01000000), vifMacNicBits(0), "bits 24-25 are not carried");
});

test("bridge: learning, flooding, never back out of the ingress port, ageing with an injected clock", () => {
  let now = 1000;
  const bridge = new Bridge({ ageingMs: 300_000, now: () => now });
  const got: string[][] = [[], [], []];
  const ports: BridgePort[] = [0, 1, 2].map((i) => ({
    name: `p${i}`,
    transmit: (f: BridgeFrame) => {
      got[i].push(`${f.data[5]}>${f.data[14]}`);
      return true;
    },
  }));
  const ids = ports.map((p) => bridge.addPort(p));
  const frame = (dst: number[], src: number, tag: number): BridgeFrame => {
    const data = new Uint8Array(64);
    data.set(dst, 0);
    data.set([2, 0, 0, 0, 0, src], 6);
    data[14] = tag;
    return { data, len: 64, view: () => data.subarray(0, 64) };
  };
  const mac = (n: number) => [2, 0, 0, 0, 0, n];
  const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
  const clear = () => {
    for (const g of got) g.length = 0;
  };

  assert.equal(bridge.forward(ids[0], frame(BCAST, 0xa, 1)), 2, "broadcast floods to the other two");
  assert.deepEqual(got, [[], ["255>1"], ["255>1"]]);
  assert.equal(bridge.counters.floods, 1);
  assert.equal(bridge.counters.learned, 1);
  clear();
  assert.equal(bridge.forward(ids[1], frame(mac(0xa), 0xb, 2)), 1, "a learned MAC: unicast to one port");
  assert.deepEqual(got, [["10>2"], [], []]);
  assert.equal(bridge.counters.hits, 1);
  clear();
  bridge.forward(ids[0], frame(mac(0xc), 0xa, 3));
  assert.deepEqual(got, [[], ["12>3"], ["12>3"]], "an unknown MAC floods");
  clear();
  bridge.forward(ids[1], frame(mac(0xb), 0xa, 4));
  assert.deepEqual(got, [[], [], []], "0xb lives behind port 1, the ingress: dropped, not sent back");
  assert.equal(bridge.counters.drops, 1);
  assert.equal(bridge.portOf(new Uint8Array(mac(0xa))), ids[1], "the station moved to port 1");
  clear();
  bridge.forward(ids[1], frame([0x01, 0, 0x5e, 0, 0, 1], 0xa, 5));
  assert.deepEqual(got, [["1>5"], [], ["1>5"]], "multicast floods to all but the ingress port");
  clear();

  // Ageing: an entry not refreshed for the ageing time is forgotten.
  now += 299_000;
  assert.equal(bridge.forward(ids[2], frame(mac(0xa), 0xc, 6)), 1);
  assert.deepEqual(got, [[], ["10>6"], []], "still fresh at 299 s");
  clear();
  now += 2_000;
  const agedBefore = bridge.counters.aged;
  bridge.forward(ids[2], frame(mac(0xa), 0xc, 7));
  assert.deepEqual(got, [["10>7"], ["10>7"], []], "aged out at 301 s: flooded again");
  assert.ok(bridge.counters.aged > agedBefore);
  assert.equal(bridge.portOf(new Uint8Array(mac(0xa))), undefined);
  now += 400_000;
  assert.ok(bridge.age() >= 1, "a sweep forgets the rest");
  assert.equal(bridge.size, 0);
  // Removing a port forgets what was learned on it.
  bridge.forward(ids[2], frame(BCAST, 0xd, 8));
  assert.equal(bridge.portOf(new Uint8Array(mac(0xd))), ids[2]);
  bridge.removePort(ids[2]);
  assert.equal(bridge.portOf(new Uint8Array(mac(0xd))), undefined);
  assert.throws(() => new Bridge({ ageingMs: 0 }), /ageingMs must be a positive number/);
});

test("bridge storm control: one port flooding at full speed gets its burst, then its rate; the other ports' floods and unicast still go", () => {
  let now = 1000;
  const bridge = new Bridge({ now: () => now, floodRate: 1000, floodBurst: 256 });
  const got = [0, 0, 0];
  const ids = [0, 1, 2].map((i) =>
    bridge.addPort({
      name: `p${i}`,
      transmit: () => {
        got[i]++;
        return true;
      },
    }),
  );
  const frame = (dst: number[], src: number): BridgeFrame => {
    const data = new Uint8Array(64);
    data.set(dst, 0);
    data.set([2, 0, 0, 0, 0, src], 6);
    return { data, len: 64, view: () => data.subarray(0, 64) };
  };
  const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
  // The attacker on port 0 floods 10,000 broadcasts at once: every other guest's rx ring got
  // all of them.
  for (let i = 0; i < 10_000; i++) bridge.forward(ids[0], frame(BCAST, 0xa));
  assert.deepEqual(got, [0, 256, 256], "the burst, no more");
  assert.equal(bridge.counters.floodsLimited, 10_000 - 256);
  // Unknown unicast floods too, and counts against the same bucket.
  assert.equal(
    bridge.forward(ids[0], frame([2, 0, 0, 0, 0, 0x77], 0xa)),
    0,
    "unknown unicast from the flooder",
  );
  // Another port's floods go: each port has its own bucket.
  assert.equal(bridge.forward(ids[1], frame(BCAST, 0xb)), 2, "port 1's broadcast");
  // Unicast to a learned station is not metered.
  assert.equal(bridge.forward(ids[0], frame([2, 0, 0, 0, 0, 0xb], 0xa)), 1, "unicast from the flooder");
  // 200 ms later: 200 more (the rate; the burst caps what a quiet port saves up).
  now += 200;
  got.fill(0);
  for (let i = 0; i < 10_000; i++) bridge.forward(ids[0], frame(BCAST, 0xa));
  assert.deepEqual(got, [0, 200, 200], "the rate");
  // A port made again with the bucket its owner kept (netback: its domain's) gets no fresh burst.
  const bucket = bridge.floodBucket();
  const sink: BridgePort = { name: "reopened", transmit: () => true };
  const first = bridge.addPort(sink, bucket);
  for (let i = 0; i < 1000; i++) bridge.forward(first, frame(BCAST, 0xc));
  bridge.removePort(first);
  const again = bridge.addPort(sink, bucket);
  assert.equal(bridge.forward(again, frame(BCAST, 0xc)), 0, "the bucket it had, still empty");
  now += 10;
  assert.equal(bridge.forward(again, frame(BCAST, 0xc)), 3, "refilled at the rate");
  assert.throws(() => new Bridge({ floodRate: 0 }), /floodRate must be a positive number/);
  assert.throws(() => new Bridge({ floodBurst: 0.5 }), /floodBurst must be a positive integer/);
});

test("bridge: a full table keeps working (deletion keeps probe runs intact)", () => {
  let now = 0;
  const bridge = new Bridge({ maxEntries: 64, ageingMs: 1000, now: () => now });
  const sink: BridgePort = { name: "sink", transmit: () => true };
  const a = bridge.addPort(sink);
  const b = bridge.addPort(sink);
  const data = new Uint8Array(20);
  const f: BridgeFrame = { data, len: 20, view: () => data };
  for (let i = 0; i < 200; i++) {
    data.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, i >> 8, 0, 7, 0, i & 0xff]);
    now = i < 100 ? 0 : 600;
    bridge.forward(i % 2 ? a : b, f);
  }
  assert.equal(bridge.size, 64, "learning stops at maxEntries");
  now = 1100;
  bridge.age();
  assert.equal(bridge.size, 0, "all aged (learned at t=0)");
  for (let i = 0; i < 64; i++) {
    data.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 1, 0, 7, 0, i]);
    bridge.forward(i % 2 ? a : b, f);
  }
  bridge.removePort(a);
  assert.equal(bridge.size, 32);
  for (let i = 0; i < 64; i += 2)
    assert.equal(bridge.portOf(new Uint8Array([2, 1, 0, 7, 0, i])), b, `MAC ${i} is still found`);
});

test("two guests exchange 10,000 frames of random sizes both ways; nothing lost, every byte checked", async () => {
  const [a, b] = await Promise.all([agent("net-a"), agent("net-b")]);
  const before = host.netStats();
  const N = 10_000;
  const [ra, rb] = await Promise.all([
    a.call<Record<string, number>>({ op: "exchange", peer: b.mac, count: N, seed: 11, peerSeed: 22 }),
    b.call<Record<string, number>>({ op: "exchange", peer: a.mac, count: N, seed: 22, peerSeed: 11 }),
  ]);
  for (const [name, r] of [
    ["a", ra],
    ["b", rb],
  ] as const) {
    assert.equal(r.sent, N, `${name} sent all`);
    assert.equal(r.received, N, `${name} received all`);
    assert.equal(r.bad, 0, `${name}: ${r.firstBad}`);
  }
  const after = host.netStats();
  const va = vif(after, a.dom.domid);
  const vb = vif(after, b.dom.domid);
  const vaBefore = before.vifs.find((v) => v.domid === a.dom.domid);
  const framesA = va.txFrames - (vaBefore?.txFrames ?? 0);
  assert.ok(framesA >= N, `netback took ${framesA} frames from a`);
  assert.equal(va.txErrors, 0);
  assert.equal(va.rxDropped + vb.rxDropped, 0, "no frame dropped for want of an rx buffer");
  assert.equal(va.rxErrors + vb.rxErrors, 0);
  const frames = after.totals.txFrames - before.totals.txFrames;
  const copies = after.totals.grantCopies - before.totals.grantCopies;
  const calls = after.totals.grantCopyCalls - before.totals.grantCopyCalls;
  const notesIn = after.totals.notificationsReceived - before.totals.notificationsReceived;
  const notesOut = after.totals.notificationsSent - before.totals.notificationsSent;
  const hits = after.bridge.hits - before.bridge.hits;
  const report = {
    frames,
    bytes: after.totals.txBytes - before.totals.txBytes,
    grantCopiesPerFrame: +(copies / frames).toFixed(3),
    grantCopyBatchesPerFrame: +(calls / frames).toFixed(3),
    netbackNotificationsReceivedPerFrame: +(notesIn / frames).toFixed(3),
    netbackNotificationsSentPerFrame: +(notesOut / frames).toFixed(3),
    frontendNotificationsSentPerFrame: +(
      ((ra.counters as unknown as Record<string, number>).notificationsSent +
        (rb.counters as unknown as Record<string, number>).notificationsSent) /
      frames
    ).toFixed(3),
    bridgeHits: hits,
    ms: Math.max(ra.ms, rb.ms),
  };
  console.log(`# 10,000 frames each way: ${JSON.stringify(report)}`);
  // A frame of n bytes is ⌈n/4096⌉ pieces copied in and the same out: about 2 × 2.6 on average.
  assert.ok(copies / frames >= 2 && copies / frames < 7, `grant copies per frame: ${copies / frames}`);
  assert.ok(calls < frames / 4, `grant-copy batches (${calls}) ≪ frames (${frames})`);
  assert.ok(notesIn < frames / 3, `notifications to netback (${notesIn}) ≪ frames (${frames})`);
  assert.ok(notesOut < frames / 3, `notifications from netback (${notesOut}) ≪ frames (${frames})`);
  assert.ok(hits >= 2 * N - 10, "the bridge forwarded by learned MACs, not by flooding");
  await Promise.all([a.dom.destroy(), b.dom.destroy()]);
});

test("a burst is batched: one flush, few notifications, few grant-copy batches", async () => {
  // 256 TX buffers: the whole burst fits, so it is sent with a single flush.
  const [a, b] = await Promise.all([agent("burst-a", { txBuffers: 256 }), agent("burst-b")]);
  // Teach the bridge b's port, then let b go idle (waiting for the host, not polling).
  await b.call({ op: "send", frames: [{ dst: a.mac, len: 60, tag: 1 }] });
  await a.call({ op: "recv", timeoutMs: 2000, expect: 1 });
  await b.call({ op: "recv", timeoutMs: 200 });
  const before = host.netStats();
  const aBefore = await a.call<Record<string, number>>({ op: "counters" });
  await a.call({ op: "burst", dst: b.mac, count: 200, len: 1000 });
  const got = await b.call<FrameSummary[]>({ op: "recv", timeoutMs: 5000, expect: 200 });
  assert.equal(got.length, 200);
  assert.deepEqual(
    got.map((f) => f.tag),
    Array.from({ length: 200 }, (_, i) => i),
  );
  const after = host.netStats();
  const aAfter = await a.call<Record<string, number>>({ op: "counters" });
  const va = vif(after, a.dom.domid);
  const vb = vif(after, b.dom.domid);
  const vaB = vif(before, a.dom.domid);
  const vbB = vif(before, b.dom.domid);
  assert.equal(va.txFrames - vaB.txFrames, 200);
  assert.equal(vb.rxFrames - vbB.rxFrames, 200);
  const toNetback = aAfter.notificationsSent - aBefore.notificationsSent;
  const toB = vb.notificationsSent - vbB.notificationsSent;
  const batches = after.totals.grantCopyCalls - before.totals.grantCopyCalls;
  console.log(
    `# burst of 200: a notified netback ${toNetback}×, netback notified b ${toB}×, ${batches} grant-copy batches, ${va.grantCopies - vaB.grantCopies} tx copies`,
  );
  assert.ok(toNetback <= 2, `one flush, so at most a couple of notifications (${toNetback})`);
  // One notification per vif per pass at most (b may wake and re-arm between passes: how
  // often depends on scheduling), never one per frame.
  const passes = after.totals.passes - before.totals.passes;
  assert.ok(toB <= passes, `netback notified b at most once a pass (${toB} for ${passes} passes)`);
  assert.ok(toB * 8 <= 200, `b was notified per batch, not per frame (${toB} for 200 frames)`);
  assert.ok(batches <= 30, `copies go in batches (${batches} for 400 copies)`);
  assert.equal(va.grantCopies - vaB.grantCopies, 200, "one copy per single-page frame");
  await Promise.all([a.dom.destroy(), b.dom.destroy()]);
});

test("a guest with no RX buffer free loses frames, counted as rxDropped", async () => {
  const [a, small] = await Promise.all([agent("drop-a"), agent("drop-small", { rxBuffers: 16 })]);
  await small.call({ op: "send", frames: [{ dst: a.mac, len: 60, tag: 1 }] });
  await a.call({ op: "recv", timeoutMs: 2000, expect: 1 });
  const before = vif(host.netStats(), small.dom.domid);
  // small is busy with the host (not polling): only its 16 posted buffers can take frames.
  await a.call({ op: "burst", dst: small.mac, count: 100, len: 1000 });
  const deadline = Date.now() + 5000;
  while (vif(host.netStats(), small.dom.domid).rxDropped - before.rxDropped < 84 && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 20));
  const after = vif(host.netStats(), small.dom.domid);
  assert.equal(after.rxFrames - before.rxFrames, 16);
  assert.equal(after.rxDropped - before.rxDropped, 84);
  const got = await small.call<FrameSummary[]>({ op: "recv", timeoutMs: 300 });
  assert.deepEqual(
    got.map((f) => f.tag),
    Array.from({ length: 16 }, (_, i) => i),
    "the first 16 arrived, in order",
  );
  await Promise.all([a.dom.destroy(), small.dom.destroy()]);
});

test("broadcast floods; learning makes unicast go to one port", async () => {
  const [a, b, c] = await Promise.all([agent("br-a"), agent("br-b"), agent("br-c")]);
  const quiet = async (g: Agent) => g.call<FrameSummary[]>({ op: "recv", timeoutMs: 250 });
  const expectOne = async (g: Agent, tag: number) => {
    const got = await g.call<FrameSummary[]>({ op: "recv", timeoutMs: 3000, expect: 1 });
    assert.deepEqual(
      got.map((f) => f.tag),
      [tag],
      `${g.dom.name} got tag ${tag}`,
    );
  };
  const s0 = host.netStats().bridge;
  await a.call({ op: "send", frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 100, tag: 1 }] });
  await Promise.all([expectOne(b, 1), expectOne(c, 1)]);
  const s1 = host.netStats().bridge;
  assert.equal(s1.floods - s0.floods, 1, "the broadcast was flooded");
  assert.equal(s1.learned - s0.learned, 1, "a's MAC was learned");
  assert.deepEqual(await quiet(a), [], "never back out of the ingress port");

  await b.call({ op: "send", frames: [{ dst: a.mac, len: 100, tag: 2 }] });
  await expectOne(a, 2);
  assert.deepEqual(await quiet(c), [], "unicast to a learned MAC reaches only its port");
  const s2 = host.netStats().bridge;
  assert.equal(s2.hits - s1.hits, 1);
  assert.equal(s2.floods - s1.floods, 0);

  await a.call({ op: "send", frames: [{ dst: c.mac, len: 100, tag: 3 }] });
  await Promise.all([expectOne(b, 3), expectOne(c, 3)]);
  const s3 = host.netStats().bridge;
  assert.equal(s3.floods - s2.floods, 1, "c is not known yet: flooded");

  await c.call({ op: "send", frames: [{ dst: a.mac, len: 100, tag: 4 }] });
  await expectOne(a, 4);
  await a.call({ op: "send", frames: [{ dst: c.mac, len: 100, tag: 5 }] });
  await expectOne(c, 5);
  assert.deepEqual(await quiet(b), [], "once c is learned, b no longer sees a's frames to c");
  const s4 = host.netStats().bridge;
  assert.equal(s4.floods - s3.floods, 0);
  assert.equal(s4.hits - s3.hits, 2);
  assert.equal(s4.learned - s0.learned, 3, "three stations learned");
  assert.equal(s4.lookups - s0.lookups, 4, "four unicast lookups");
  const uplink = host.netStats().uplink;
  if (uplink.present) assert.ok(uplink.txFrames >= 2, "floods also went out of the uplink");
  await Promise.all([a.dom.destroy(), b.dom.destroy(), c.dom.destroy()]);
});

test("hostile netfronts get errors, then are cut off with a logged reason; the others keep exchanging", async () => {
  const [a, b] = await Promise.all([agent("good-a"), agent("good-b")]);
  const hostile = await Promise.all(
    ["hostile-1", "hostile-2", "hostile-3"].map(async (name) => {
      const dom = await host.startGuest({ module: HOSTILE, name, pages: 64, maxHeapMb: 64 });
      const raw = talk(dom);
      const call = async <T>(cmd: NetCommand): Promise<T> => {
        const r = await raw(cmd);
        if (!r.ok) throw new Error(`${cmd.op}: ${r.message}`);
        return r.value as T;
      };
      return { dom, call };
    }),
  );
  await Promise.all(hostile.map((h) => h.call({ op: "init" })));
  const before = host.netStats();
  const N = 2000;
  const exchange = Promise.all([
    a.call<Record<string, number>>({ op: "exchange", peer: b.mac, count: N, seed: 5, peerSeed: 6 }),
    b.call<Record<string, number>>({ op: "exchange", peer: a.mac, count: N, seed: 6, peerSeed: 5 }),
  ]);
  const garbage = await Promise.all(
    hostile.map((h) =>
      h.call<{ byName: Record<string, number[]>; random: number[] }>({ op: "garbage", random: 300 }),
    ),
  );
  for (const g of garbage) {
    const E = NETIF_RSP_ERROR;
    assert.deepEqual(g.byName, {
      "bad grant ref": [E],
      "reserved grant ref": [E],
      "grant for another domain": [E],
      "offset + size past the page": [E],
      "size 0": [E],
      "size below a header": [E],
      "size over the frame limit": [E],
      "extra_info flag": [E, NETIF_RSP_NULL],
      "undefined flag bits": [E],
      "fragments larger than the packet": [E, E],
      "fragment with bad grant": [E, E],
      "19 slots": Array(19).fill(E),
      "a good frame": [NETIF_RSP_OKAY],
      "a frame from another MAC": [E],
    });
    assert.equal(g.random.length, 300);
    assert.ok(
      g.random.every((s) => s === E),
      "every random request got NETIF_RSP_ERROR",
    );
  }
  const [chain, overflow] = await Promise.all([
    hostile[0].call<{ backendState: number; waited: string }>({ op: "break", how: "endless-chain" }),
    hostile[1].call<{ backendState: number; waited: string }>({ op: "break", how: "producer-overflow" }),
  ]);
  assert.equal(chain.waited, "unbound", "netback closed the event channel");
  assert.equal(overflow.waited, "unbound");
  const [ra, rb] = await exchange;
  for (const r of [ra, rb]) {
    assert.equal(r.sent, N);
    assert.equal(r.received, N);
    assert.equal(r.bad, 0, String(r.firstBad));
  }
  // The third breaks its RX ring; netback finds out when a broadcast is for it.
  const h3 = hostile[2].dom.domid;
  const rxErrorsH3 = vif(host.netStats(), h3).rxErrors;
  assert.ok(rxErrorsH3 >= 1, "copies into its bogus RX buffers failed and were counted");
  assert.equal(await hostile[2].call({ op: "break", how: "rx-producer-overflow" }), "broken");
  await a.call({ op: "send", frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 64, tag: 9 }] });
  await host.waitForLog(new RegExp(`vif ${h3}/0 disconnected: the rx ring is broken`));
  await b.call({ op: "recv", timeoutMs: 2000, expect: 1 });
  await host.waitForLog(
    new RegExp(`vif ${hostile[0].dom.domid}/0 disconnected: a more_data chain runs past req_prod`),
  );
  await host.waitForLog(new RegExp(`vif ${hostile[1].dom.domid}/0 disconnected: the tx ring is broken`));
  await host.waitForLog(
    /bad packet answered with NETIF_RSP_ERROR: slot 0: offset 4000 \+ size 200 crosses its page/,
  );
  await host.waitForLog(/more bad packets; only counting them from now on/);
  const after = host.netStats();
  for (const h of hostile.slice(0, 2)) {
    const v = vif(after, h.dom.domid);
    assert.ok(v.rxErrors >= 1, "copies into its bogus RX buffers failed and were counted");
    assert.equal(v.connected, false);
    assert.equal(v.disconnects, 1);
    assert.ok(v.txErrors >= 300 + 12, `vif ${h.dom.domid} errors counted: ${v.txErrors}`);
    assert.equal(v.txFrames, 1, "its one good frame went through");
    assert.ok(v.grantCopyErrors >= 3, "failed grant copies counted");
  }
  assert.ok(after.totals.txErrors - before.totals.txErrors >= 3 * 312);
  assert.equal(vif(after, h3).connected, false);
  assert.equal(vif(after, a.dom.domid).connected, true);
  assert.ok(after.bridge.floods > before.bridge.floods, "the hostile good frames were flooded");
  await Promise.all([...hostile, a, b].map((g) => g.dom.destroy()));
});

test("fastPath: false — no myri device, but a working vif", async () => {
  const slow = await agent("slow-path", { fastPath: false });
  const fast = await agent("fast-path");
  const ts = host.hypervisor.toolstack;
  assert.equal(await ts.exists(`/local/domain/${slow.dom.domid}/device/myri/0`), false);
  assert.equal(await ts.exists(`/local/domain/${fast.dom.domid}/device/myri/0`), true);
  const myri = await slow.call<{ connected: boolean; code: string; message: string }>({
    op: "myri",
    timeoutMs: 300,
  });
  assert.equal(myri.connected, false);
  assert.equal(myri.code, "MX_NO_DEV", myri.message);
  assert.match(myri.message, /no usable myri device/);
  const N = 300;
  const [r1, r2] = await Promise.all([
    slow.call<Record<string, number>>({ op: "exchange", peer: fast.mac, count: N, seed: 1, peerSeed: 2 }),
    fast.call<Record<string, number>>({ op: "exchange", peer: slow.mac, count: N, seed: 2, peerSeed: 1 }),
  ]);
  assert.deepEqual([r1.received, r1.bad, r2.received, r2.bad], [N, 0, N, 0]);
  // The vif can be closed and opened again.
  assert.equal(await slow.call({ op: "close" }), "closed");
  await host.waitForLog(new RegExp(`vif ${slow.dom.domid}/0 disconnected: the frontend went Closing`));
  await slow.call({ op: "init", rxBuffers: 64 });
  await host.waitForLog(new RegExp(`vif ${slow.dom.domid}/0 re-initialises its device`));
  await slow.call({ op: "send", frames: [{ dst: fast.mac, len: 5000, tag: 77 }] });
  const got = await fast.call<FrameSummary[]>({ op: "recv", timeoutMs: 3000, expect: 1 });
  assert.deepEqual(
    got.map((f) => [f.src, f.len, f.tag]),
    [[slow.mac, 5000, 77]],
  );
  await Promise.all([slow.dom.destroy(), fast.dom.destroy()]);
});

test("a guest that dies: its vif is torn down and leaves the bridge", async () => {
  const g = await agent("net-dies");
  const before = host.netStats();
  await g.dom.destroy();
  await host.waitForLog(new RegExp(`vif ${g.dom.domid}/0 disconnected`));
  const after = host.netStats();
  assert.equal(vif(after, g.dom.domid).connected, false);
  assert.equal(after.totals.vifsConnected, before.totals.vifsConnected - 1);
  assert.equal(after.bridge.ports, before.bridge.ports - 1);
});

test("across two hosts: frames leave through one bridge's uplink and arrive through the other's", async () => {
  const remote = await Host.start({ nicId: 10 });
  try {
    const port = await freePort();
    await remote.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: LINK_KEY });
    await host.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000, key: LINK_KEY });
    assert.ok(host.netStats().uplink.present, "this host's bridge has an uplink");
    assert.ok(remote.netStats().uplink.present, "so has the remote's");
    const [a, b] = await Promise.all([agent("x-local"), agent("x-remote", { on: remote })]);
    const before = [host.netStats().uplink, remote.netStats().uplink];
    const N = 500;
    const [ra, rb] = await Promise.all([
      a.call<Record<string, number>>({ op: "exchange", peer: b.mac, count: N, seed: 31, peerSeed: 32 }),
      b.call<Record<string, number>>({ op: "exchange", peer: a.mac, count: N, seed: 32, peerSeed: 31 }),
    ]);
    assert.deepEqual(
      [ra.received, ra.bad, rb.received, rb.bad],
      [N, 0, N, 0],
      String(ra.firstBad || rb.firstBad),
    );
    const after = [host.netStats().uplink, remote.netStats().uplink];
    for (let i = 0; i < 2; i++) {
      assert.ok(
        after[i].txFrames - before[i].txFrames >= N,
        `host ${i} sent its guest's frames out of the uplink`,
      );
      assert.ok(
        after[i].rxFrames - before[i].rxFrames >= N,
        `host ${i} took the peer's frames in from the uplink`,
      );
    }
    await Promise.all([a.dom.destroy(), b.dom.destroy()]);
  } finally {
    await host.nic.detachLink(10).catch(() => undefined);
    await remote.stop();
  }
});

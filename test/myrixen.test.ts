/**
 * MyriXen's control path between real domains: myrifront ⇄ myrback over a xenbus ring, the
 * native service, the NIC behind them. Guests and processes run test/fixtures/myri-agent.ts
 * and drive their MxDriver directly; the tests check what the driver hands out (window,
 * interrupt page, regions, channels) with the data path itself, and the counters prove the
 * backend does no per-message work.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { Inspector } from "../src/host/inspect.js";
import { ORPHANS_PER_ENDPOINT, ORPHANS_PER_OWNER } from "../src/myrixen/back/registry.js";
import { DRIVER_EVENT_CONNECT, DRIVER_EVENT_DISCONNECT } from "../src/myrixen/driver-abi.js";
import { Access, ANY_ENDPOINT, EndpointState, EventType } from "../src/nic/window.js";
import { nextMessage } from "./helpers/messages.js";
import { MYRI_AGENT as AGENT, type MyriAgent as Agent, myriAgent as agent } from "./helpers/myri-agent.js";

const HOSTILE = new URL("./fixtures/myri-hostile.js", import.meta.url);
const NOMAIN = new URL("./fixtures/guests/nomain.js", import.meta.url);
const NATIVE_OVERSIZED = new URL("./fixtures/guests/native-oversized.js", import.meta.url);
const REGISTER_STORM = new URL("./fixtures/myri-register-storm.js", import.meta.url);
const REOPEN_PEER = new URL("./fixtures/guests/mx-reopen-peer.js", import.meta.url);

let host: Host;
const KEY_A = 0x1234;
const KEY_B = 0x5678;

before(async () => {
  host = await Host.start({ nicId: 7, maxEndpoints: 32, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

async function guest(name: string, pages = 512): Promise<Agent> {
  const a = agent(await host.startGuest({ module: AGENT, name, pages, maxHeapMb: 64 }));
  const init = await a.call<{ path: string; nicId: number }>({ op: "init" });
  assert.equal(init.path, "bypass");
  assert.equal(init.nicId, 7);
  return a;
}

async function native(name: string): Promise<Agent> {
  const a = agent(await host.startNative({ module: AGENT, name, pages: 512, maxHeapMb: 64 }));
  const init = await a.call<{ path: string; nicId: number }>({ op: "init" });
  assert.equal(init.path, "native");
  assert.equal(init.nicId, 7);
  return a;
}

interface Opened {
  endpointId: number;
  session: number;
  state: number;
  windowEndpoint: number;
  windowNic: number;
  windowSession: number;
  windowOk: boolean;
}

async function open(a: Agent, key: number): Promise<Opened> {
  const ep = await a.call<Opened>({ op: "open", endpointId: ANY_ENDPOINT, key });
  assert.equal(ep.state, EndpointState.Open, "the window says Open");
  assert.equal(ep.windowEndpoint, ep.endpointId);
  assert.equal(ep.windowNic, 7);
  assert.equal(ep.windowSession, ep.session);
  assert.ok(ep.windowOk, "window and interrupt page have the NIC's sizes");
  return ep;
}

/**
 * Both sides open, register and move data with a PULL through the window; then connect with
 * a wrong key, to a missing endpoint, and for real (a channel both ends see).
 */
async function exercisePair(a: Agent, b: Agent, label: string): Promise<void> {
  const epA = await open(a, KEY_A);
  const epB = await open(b, KEY_B);
  const src = await a.call<{ regionId: number; key: number }>({
    op: "register",
    endpointId: epA.endpointId,
    length: 64 * 1024,
    access: Access.LocalRead | Access.RemoteRead,
    seed: 7,
  });
  const dst = await b.call<{ regionId: number; key: number }>({
    op: "register",
    endpointId: epB.endpointId,
    length: 64 * 1024 + 100,
    access: Access.LocalWrite,
    seed: 0,
  });

  // The data phase: the backend must not see it. A arms a pull right for B (as a rendezvous
  // sender does); B pulls under it.
  const before = host.backendStats();
  const nicBefore = host.nic.counters().global.pull_bytes;
  const right = await a.call<{ index: number; key: number }>({
    op: "expose",
    endpointId: epA.endpointId,
    index: 0,
    regionId: src.regionId,
    offset: 0,
    length: 64 * 1024,
  });
  const pull = await b.call<{ type: number; status: number; length: number }>({
    op: "pull",
    endpointId: epB.endpointId,
    srcEndpoint: epA.endpointId,
    srcSession: epA.session,
    srcRegion: right.index,
    srcKey: right.key,
    srcOffset: 100,
    dstRegion: dst.regionId,
    dstOffset: 200,
    length: 30_000,
  });
  assert.deepEqual(
    pull,
    { type: EventType.PullDone, status: 0, length: 30_000, reason: 0 },
    `${label}: PULL done`,
  );
  const got = await b.call<number[]>({ op: "read", regionId: dst.regionId, offset: 200, length: 30_000 });
  const want = Array.from({ length: 30_000 }, (_, i) => ((i + 100) * 7 + 1) & 0xff);
  assert.deepEqual(got, want, `${label}: the pulled bytes are the source's`);
  const bad = await b.call<{ type: number; status: number }>({
    op: "pull",
    endpointId: epB.endpointId,
    srcEndpoint: epA.endpointId,
    srcSession: epA.session,
    srcRegion: right.index,
    srcKey: right.key ^ 1,
    srcOffset: 0,
    dstRegion: dst.regionId,
    dstOffset: 0,
    length: 16,
  });
  assert.equal(bad.type, EventType.Error, `${label}: a wrong key is refused by the NIC`);
  const regionKey = await b.call<{ type: number; status: number }>({
    op: "pull",
    endpointId: epB.endpointId,
    srcRegion: src.regionId,
    srcKey: src.key,
    srcOffset: 0,
    dstRegion: dst.regionId,
    dstOffset: 0,
    length: 16,
  });
  assert.equal(
    regionKey.type,
    EventType.Error,
    `${label}: the region's own key does not reach it from another endpoint`,
  );
  assert.equal(
    host.backendStats().requests,
    before.requests,
    `${label}: myrback served 0 requests during the data phase`,
  );
  assert.ok(host.nic.counters().global.pull_bytes - nicBefore >= 30_000, "the NIC moved the bytes");

  // Connections.
  const wrongKey = await a.fails({
    op: "connect",
    endpointId: epA.endpointId,
    peerNic: 7,
    peerEndpoint: epB.endpointId,
    key: KEY_B + 1,
  });
  assert.equal(wrongKey.code, "MX_BAD_CONNECTION_KEY", wrongKey.message);
  const missing = await a.fails({
    op: "connect",
    endpointId: epA.endpointId,
    peerNic: 7,
    peerEndpoint: 31,
    key: KEY_B,
  });
  assert.equal(missing.code, "MX_CONNECTION_FAILED", missing.message);
  const conn = await a.call<{ channelId: number; side: number; peerSession: number; peerEndpoint: number }>({
    op: "connect",
    endpointId: epA.endpointId,
    peerNic: 7,
    peerEndpoint: epB.endpointId,
    key: KEY_B,
  });
  assert.equal(conn.peerSession, epB.session);
  assert.equal(typeof conn.channelId, "number", `${label}: co-resident peers get a channel`);
  const ev = await b.call<{ kind: number; words: number[] }>({
    op: "driverEvent",
    endpointId: epB.endpointId,
    kind: DRIVER_EVENT_CONNECT,
  });
  assert.deepEqual(ev.words, [conn.channelId, 7, epA.endpointId, epA.session], `${label}: the peer was told`);
  const acc = await b.call<{ channelId: number; side: number; peerEndpoint: number; peerSession: number }>({
    op: "accept",
    endpointId: epB.endpointId,
    channelId: conn.channelId,
  });
  assert.equal(acc.side, 1 - conn.side);
  assert.equal(acc.peerEndpoint, epA.endpointId);
  assert.equal(acc.peerSession, epA.session);
  await a.call({
    op: "chanWrite",
    endpointId: epA.endpointId,
    channelId: conn.channelId,
    bytes: [42, 1, 2, 3],
  });
  assert.deepEqual(
    await b.call({ op: "chanRead", endpointId: epB.endpointId, channelId: conn.channelId }),
    [42, 1, 2, 3],
  );
  await b.call({ op: "chanWrite", endpointId: epB.endpointId, channelId: conn.channelId, bytes: [9] });
  assert.deepEqual(
    await a.call({ op: "chanRead", endpointId: epA.endpointId, channelId: conn.channelId }),
    [9],
  );
  // One channel per pair, whichever side connects.
  const again = await b.call<{ channelId: number; side: number }>({
    op: "connect",
    endpointId: epB.endpointId,
    peerNic: 7,
    peerEndpoint: epA.endpointId,
    key: KEY_A,
  });
  assert.equal(again.channelId, conn.channelId);
  assert.equal(again.side, acc.side);
  // A stranger cannot accept it.
  const c = await open(b, 0x99);
  const stranger = await b.fails({ op: "accept", endpointId: c.endpointId, channelId: conn.channelId });
  assert.equal(stranger.code, "MX_NO_PERM", stranger.message);
  await b.call({ op: "close", endpointId: c.endpointId });
  await a.call({ op: "close", endpointId: epA.endpointId });
  await b.call({ op: "close", endpointId: epB.endpointId });
}

test("two guests: endpoints, registration, PULL through the window, connect and channels (bypass)", async () => {
  const [a, b] = await Promise.all([guest("myri-a"), guest("myri-b")]);
  await exercisePair(a, b, "bypass");
  const info = await a.call<{ endpoints: number; endpointQuota: number }>({ op: "info" });
  assert.equal(info.endpoints, 0);
  assert.equal(info.endpointQuota, 8);
  await Promise.all([a.dom.destroy(), b.dom.destroy()]);
});

test("a guest learns nothing of other tenants' endpoints from myrback: a busy id's refusal names no owner, INFO counts only its own", async () => {
  // The refusal said "already open (by \"domain 13\")" and INFO gave the NIC's open endpoints
  // of all owners: a guest of another job mapped who held which id, and when jobs came and went.
  const [a, b] = await Promise.all([guest("tenant-a"), guest("tenant-b")]);
  const held = await open(a, KEY_A);
  const busy = await b.fails({ op: "open", endpointId: held.endpointId, key: KEY_B });
  assert.equal(busy.code, "MX_BUSY", busy.message);
  assert.match(busy.message, new RegExp(`endpoint ${held.endpointId} is already open$`));
  assert.doesNotMatch(busy.message, new RegExp(`domain|tenant|\\b${a.dom.domid}\\b`), busy.message);
  const info = await b.call<Record<string, number>>({ op: "info" });
  assert.equal(info.endpoints, 0);
  assert.ok(!("nicOpenEndpoints" in info), `INFO tells the NIC's open endpoints: ${JSON.stringify(info)}`);
  await a.call({ op: "close", endpointId: held.endpointId });
  await Promise.all([a.dom.destroy(), b.dom.destroy()]);
});

/** `a` opens an endpoint, connects to `b`'s `epB`, writes `bytes` into the channel and closes: the channel's id. */
async function sendAndClose(a: Agent, epB: Opened, bytes: number[]): Promise<number> {
  const epA = await open(a, KEY_A);
  const conn = await a.call<{ channelId: number }>({
    op: "connect",
    endpointId: epA.endpointId,
    peerNic: 7,
    peerEndpoint: epB.endpointId,
    key: KEY_B,
  });
  assert.equal(typeof conn.channelId, "number", "co-resident peers get a channel");
  await a.call({ op: "chanWrite", endpointId: epA.endpointId, channelId: conn.channelId, bytes });
  await a.call({ op: "close", endpointId: epA.endpointId });
  return conn.channelId;
}

for (const kind of ["guests", "native processes"] as const)
  test(`${kind}: a connector that writes and closes before its peer took the channel leaves it what it wrote; at most ${ORPHANS_PER_ENDPOINT} such channels wait`, async () => {
    // myrback closed such a channel at once and its peer could not take it: what its connector
    // saw complete was lost (~1% of a rank's 8 B messages, opening, connecting, sending and
    // closing in a loop). Now it waits, closed, for the peer to take and read it.
    const start = kind === "guests" ? guest : native;
    const channelsBefore = host.backendStats().channels;
    const [a, b] = await Promise.all([start(`orphan-a-${kind.length}`), start(`orphan-b-${kind.length}`)]);
    const epB = await open(b, KEY_B);
    const first = await sendAndClose(a, epB, [7, 1, 2]);
    await b.call({ op: "driverEvent", endpointId: epB.endpointId, kind: DRIVER_EVENT_CONNECT });
    const acc = await b.call<{ channelId: number }>({
      op: "accept",
      endpointId: epB.endpointId,
      channelId: first,
    });
    assert.equal(acc.channelId, first);
    assert.deepEqual(
      await b.call({ op: "chanRead", endpointId: epB.endpointId, channelId: first }),
      [7, 1, 2],
    );
    assert.deepEqual(await b.call({ op: "chanState", endpointId: epB.endpointId, channelId: first }), {
      readerClosed: true,
      writerClosed: true,
    });
    // A peer that takes none of them is left the newest ORPHANS_PER_ENDPOINT; the older go.
    // (Guests' channels are bounded before that, by the pair's buffers: CHANNELS_PER_PAIR.)
    if (kind === "native processes") await leftNewest(a, b, epB);
    await b.call({ op: "close", endpointId: epB.endpointId });
    assert.equal(host.backendStats().channels, channelsBefore, "no channel is left once the peer closed");
    await Promise.all([a.dom.destroy(), b.dom.destroy()]);
  });

test(`native processes: one connector leaves at most ${ORPHANS_PER_OWNER} untaken channels in all, across the endpoints it wrote to`, async () => {
  // Bounded per endpoint only, a native connector left 16 at every endpoint of the host, each
  // ~520 KB of the driver domain's memory (natives' channels are not their own memory).
  const before = host.backendStats().channels;
  const [a, b, c] = await Promise.all([
    native("owner-orphans-a"),
    native("owner-orphans-b"),
    native("owner-orphans-c"),
  ]);
  const [epB, epC] = await Promise.all([open(b, KEY_B), open(c, KEY_B)]);
  for (let i = 0; i < 12; i++) {
    await sendAndClose(a, epB, [i]);
    await sendAndClose(a, epC, [i]);
  }
  assert.equal(host.backendStats().channels - before, ORPHANS_PER_OWNER, "the newest kept, the oldest gone");
  await Promise.all([
    b.call({ op: "close", endpointId: epB.endpointId }),
    c.call({ op: "close", endpointId: epC.endpointId }),
  ]);
  assert.equal(host.backendStats().channels, before);
  await Promise.all([a.dom.destroy(), b.dom.destroy(), c.dom.destroy()]);
});

/** `a` leaves `b` more channels than it keeps for it: `b` finds the newest, each with its bytes. */
async function leftNewest(a: Agent, b: Agent, epB: Opened): Promise<void> {
  const ids: number[] = [];
  for (let i = 0; i < ORPHANS_PER_ENDPOINT + 4; i++) ids.push(await sendAndClose(a, epB, [i]));
  const taken: number[] = [];
  for (const [i, id] of ids.entries()) {
    const r = await b
      .call({ op: "accept", endpointId: epB.endpointId, channelId: id })
      .catch((e: Error) => e);
    if (!(r instanceof Error)) {
      assert.deepEqual(await b.call({ op: "chanRead", endpointId: epB.endpointId, channelId: id }), [i]);
      taken.push(i);
    }
  }
  assert.deepEqual(
    taken,
    Array.from({ length: ORPHANS_PER_ENDPOINT }, (_, i) => i + 4),
    "the newest channels wait, each with what was written",
  );
}

test("a closed connector that opens its kept channel's lanes again cannot make the acceptor fail that endpoint id's next owner", async () => {
  // The acceptor's library took a channel for an orphan by its lanes' Closed words, which the
  // closed connector still reaches (a buffer is never taken back): it cleared them, the
  // acceptor took the orphan for a live channel of a stale incarnation and failed the honest
  // domain that had opened the endpoint id since ("the peer endpoint was reopened").
  const v = await host.startGuest({ module: REOPEN_PEER, args: { role: "victim" }, name: "reopen-victim" });
  const [vAddr] = (await nextMessage(v)) as [{ nic: number; endpoint: number }];
  const a = await guest("reopen-hostile");
  const epA = await open(a, KEY_A);
  const conn = await a.call<{ channelId: number }>({
    op: "connect",
    endpointId: epA.endpointId,
    peerNic: vAddr.nic,
    peerEndpoint: vAddr.endpoint,
    key: 0xc1a57,
  });
  await a.call({
    op: "chanWrite",
    endpointId: epA.endpointId,
    channelId: conn.channelId,
    bytes: [1, 2, 3, 4],
  });
  await a.call({ op: "close", endpointId: epA.endpointId });
  await a.call({ op: "chanReopen", channelId: conn.channelId });
  const b = await host.startGuest({
    module: REOPEN_PEER,
    args: { role: "bystander" },
    name: "reopen-bystander",
  });
  const gotB = nextMessage(b);
  b.send(epA.endpointId);
  const [bAddr] = (await gotB) as [{ nic: number; endpoint: number }];
  assert.equal(bAddr.endpoint, epA.endpointId, "the honest domain has the id the hostile one closed");
  b.send(vAddr);
  v.send(bAddr);
  const [ev, eb] = await Promise.all([v.exited, b.exited]);
  assert.deepEqual(ev.result, [
    "send1: MX_STATUS_SUCCESS",
    "recv2: MX_STATUS_SUCCESS",
    "orphan's: MX_STATUS_SUCCESS",
    "send3: MX_STATUS_SUCCESS",
  ]);
  assert.deepEqual(eb.result, [
    "recv1: MX_STATUS_SUCCESS",
    "send2: MX_STATUS_SUCCESS",
    "recv3: MX_STATUS_SUCCESS",
  ]);
  await Promise.all([v.destroy(), b.destroy(), a.dom.destroy()]);
});

test("two native processes do the same through the native service", async () => {
  const before = host.backendStats();
  const [a, b] = await Promise.all([native("native-a"), native("native-b")]);
  await exercisePair(a, b, "native");
  const after = host.backendStats();
  assert.ok(after.nativeRequests - before.nativeRequests >= 10, "the native service served the control path");
  assert.equal(after.ringRequests, before.ringRequests, "no ring requests for native processes");
  await Promise.all([a.dom.destroy(), b.dom.destroy()]);
});

test("quotas: endpoints per domain and registered bytes per domain", async () => {
  const g = await guest("myri-quota", 256);
  const ids: number[] = [];
  for (let i = 0; i < 8; i++) ids.push((await open(g, i)).endpointId);
  const over = await g.fails({ op: "open", endpointId: ANY_ENDPOINT, key: 1 });
  assert.equal(over.code, "MX_NO_RESOURCES");
  assert.match(over.message, /quota/);
  // 1 MiB of RAM: the toolstack's memory/target caps what it may register.
  const r1 = await g.call<{ regionId: number }>({
    op: "register",
    endpointId: ids[0],
    length: 600 * 1024,
    access: Access.LocalRead,
    seed: 1,
  });
  const tooMuch = await g.fails({
    op: "register",
    endpointId: ids[0],
    reuse: r1.regionId,
    access: Access.LocalRead,
  });
  assert.equal(tooMuch.code, "MX_NO_RESOURCES");
  assert.match(tooMuch.message, /quota of 1048576/);
  const notMine = await g.fails({ op: "register", endpointId: 31, length: 10, access: Access.LocalRead });
  assert.equal(notMine.code, "MX_BAD_ENDPOINT");
  for (const id of ids) await g.call({ op: "close", endpointId: id });
  assert.deepEqual((await host.nicInfo()).openEndpoints, []);
  await g.dom.destroy();
});

test("extra endpoints cannot take the NIC's last contexts: every domain with a device still opens its first", async () => {
  // Two guests whose devices are up but who have not opened an endpoint yet, then four that
  // open their whole quota each (4 × 8 = the NIC's 32 contexts).
  const late = [await guest("myri-late-1", 64), await guest("myri-late-2", 64)];
  const greedy: Agent[] = [];
  for (let i = 0; i < 4; i++) greedy.push(await guest(`myri-greedy-${i}`, 64));
  const opened: { a: Agent; id: number }[] = [];
  const refused: string[] = [];
  for (const g of greedy)
    for (let i = 0; i < 8; i++) {
      const r = await g.call<Opened>({ op: "open", endpointId: ANY_ENDPOINT, key: 1 }).catch((e: Error) => e);
      if (r instanceof Error) refused.push(r.message);
      else opened.push({ a: g, id: r.endpointId });
    }
  // The late guests still get theirs: the fast path for everyone.
  for (const g of late) {
    const ep = await open(g, 2);
    await g.call({ op: "close", endpointId: ep.endpointId });
  }
  assert.ok(refused.length > 0, "some extra endpoints were refused");
  for (const m of refused) assert.match(m, /kept for first endpoints \(of the \d+ other domains/);
  // Each greedy guest got its first endpoint.
  for (const g of greedy)
    assert.ok(
      opened.some((o) => o.a === g),
      `${g.dom.domid} has an endpoint`,
    );
  for (const o of opened) await o.a.call({ op: "close", endpointId: o.id });
  for (const g of [...late, ...greedy]) await g.dom.destroy();
});

test("inspection tells an endpoint's openings apart by a serial, never by its session (what a forger needs)", async () => {
  // A session is what a sender must name: whoever reads inspection (myrixen endpoints, top,
  // the dashboard: any holder of the cluster key) could otherwise forge another job's messages.
  const g = await guest("myri-inspected");
  const first = await open(g, KEY_A);
  await g.call({ op: "close", endpointId: first.endpointId });
  const again = await open(g, KEY_A);
  const listed = (await host.backendEndpoints()).find((e) => e.endpointId === again.endpointId);
  const shown = (await new Inspector(host).snapshot()).endpoints.find((e) => e.id === again.endpointId);
  assert.ok(listed && shown, "the endpoint is listed");
  for (const [what, entry] of [
    ["backendEndpoints", listed],
    ["snapshot", shown],
  ] as const) {
    assert.ok(!("session" in entry), `${what} has no session field`);
    const text = JSON.stringify(entry);
    for (const secret of [again.session, again.session | 0, first.session])
      assert.ok(!text.includes(String(secret)), `${what} shows no session: ${text}`);
  }
  assert.ok(listed.serial > 0);
  assert.equal(shown.serial, listed.serial);
  // The reopened id is told apart from the endpoint before it.
  await g.call({ op: "close", endpointId: again.endpointId });
  const third = await open(g, KEY_A);
  const relisted = (await host.backendEndpoints()).find((e) => e.endpointId === third.endpointId);
  assert.ok(relisted && relisted.serial > listed.serial);
  await g.call({ op: "close", endpointId: third.endpointId });
  await g.dom.destroy();
});

test("a guest that dies: its peer sees the channel closed and a DISCONNECT, its endpoints are released", async () => {
  const [d, e] = await Promise.all([guest("myri-dies"), guest("myri-lives")]);
  const epD = await open(d, 1);
  const epE = await open(e, 2);
  await d.call({
    op: "register",
    endpointId: epD.endpointId,
    length: 8192,
    access: Access.RemoteRead,
    seed: 3,
  });
  const conn = await d.call<{ channelId: number }>({
    op: "connect",
    endpointId: epD.endpointId,
    peerNic: 7,
    peerEndpoint: epE.endpointId,
    key: 2,
  });
  await e.call({ op: "driverEvent", endpointId: epE.endpointId, kind: DRIVER_EVENT_CONNECT });
  await e.call({ op: "accept", endpointId: epE.endpointId, channelId: conn.channelId });
  const disconnects = host.backendStats().frontendsDisconnected;
  await d.dom.destroy();
  const ev = await e.call<{ kind: number; words: number[] }>({
    op: "driverEvent",
    endpointId: epE.endpointId,
    kind: DRIVER_EVENT_DISCONNECT,
  });
  assert.deepEqual(ev.words, [conn.channelId, 7, epD.endpointId, epD.session]);
  assert.deepEqual(await e.call({ op: "chanState", endpointId: epE.endpointId, channelId: conn.channelId }), {
    readerClosed: true,
    writerClosed: true,
  });
  const nic = await host.nicInfo();
  assert.ok(!nic.openEndpoints.includes(epD.endpointId), "the dead guest's endpoint is closed on the NIC");
  assert.ok(nic.openEndpoints.includes(epE.endpointId), "the survivor's endpoint is still open");
  const stats = host.backendStats();
  assert.equal(stats.frontendsDisconnected, disconnects + 1);
  assert.equal(stats.channels, 0);
  await host.waitForLog(new RegExp(`domain ${d.dom.domid} myri/0 disconnected`));
  await e.call({ op: "close", endpointId: epE.endpointId });
  await e.dom.destroy();
});

test("a hostile frontend gets errors for garbage, is cut off when it breaks the ring, and dom0 serves the others", async () => {
  const ok = await guest("myri-good");
  const epOk = await open(ok, 5);
  const h = agent(await host.startGuest({ module: HOSTILE, name: "myri-hostile", pages: 64, maxHeapMb: 64 }));
  await h.call({ op: "init" });
  const errorsBefore = host.backendStats().errors;
  const statuses = await h.call<number[]>({ op: "garbage", count: 60, victimEndpoint: epOk.endpointId });
  assert.equal(statuses.length, 60);
  assert.ok(
    statuses.every((s) => s !== 0),
    `every garbage request got an error status: ${statuses}`,
  );
  assert.ok(host.backendStats().errors - errorsBefore >= 60);
  // The victim's endpoint is intact and it is still served.
  const reg = await ok.call<{ regionId: number }>({
    op: "register",
    endpointId: epOk.endpointId,
    length: 4096,
    access: Access.LocalRead,
    seed: 1,
  });
  assert.ok(reg.regionId > 0);
  const broken = host.backendStats().brokenRings;
  const res = await h.call<{ waited: string; backendState: number }>({ op: "break" });
  assert.equal(res.waited, "unbound", "the backend closed the event channel");
  await host.waitForLog(/control ring is broken/);
  assert.equal(host.backendStats().brokenRings, broken + 1);
  const info = await ok.call<{ endpoints: number }>({ op: "info" });
  assert.equal(info.endpoints, 1);
  await ok.call({ op: "close", endpointId: epOk.endpointId });
  await Promise.all([ok.dom.destroy(), h.dom.destroy()]);
});

test("finalize closes the device cleanly (endpoints released, grants ended); a new init re-opens it", async () => {
  const f = await guest("myri-final");
  const ep = await open(f, 11);
  await f.call({
    op: "register",
    endpointId: ep.endpointId,
    length: 3 * 4096 + 5,
    access: Access.LocalWrite,
    seed: 0,
  });
  await f.call({ op: "finalize" });
  await host.waitForLog(new RegExp(`domain ${f.dom.domid} myri/0 disconnected: the frontend went Closing`));
  assert.ok(!(await host.nicInfo()).openEndpoints.includes(ep.endpointId));
  const late = await f.fails({ op: "open", endpointId: ANY_ENDPOINT, key: 1 });
  assert.equal(late.code, "MX_NOT_INITIALIZED");
  assert.equal(
    host.backendStats().deferredGrants,
    0,
    "the guest unmapped everything, so dom0 ended every grant",
  );
  // mx_init again: the device is re-initialised (Closed → Initialising) and served anew.
  assert.deepEqual(await f.call({ op: "init" }), { path: "bypass", nicId: 7 });
  const again = await open(f, 12);
  await f.call({ op: "close", endpointId: again.endpointId });
  await host.waitForLog(new RegExp(`domain ${f.dom.domid} myri/0 re-initialises its device`));
  await f.dom.destroy();
});

test("a guest and a native process connect through the NIC (no channel); the process dying tells the guest", async () => {
  const [g, n] = await Promise.all([guest("myri-mixed"), native("native-mixed")]);
  const epG = await open(g, 21);
  const epN = await open(n, 22);
  const c1 = await g.call<{ channelId?: number; peerSession: number }>({
    op: "connect",
    endpointId: epG.endpointId,
    peerNic: 7,
    peerEndpoint: epN.endpointId,
    key: 22,
  });
  assert.equal(c1.channelId, undefined, "guests and processes share no channel");
  assert.equal(c1.peerSession, epN.session);
  const c2 = await n.call<{ channelId?: number }>({
    op: "connect",
    endpointId: epN.endpointId,
    peerNic: 7,
    peerEndpoint: epG.endpointId,
    key: 21,
  });
  assert.equal(c2.channelId, undefined);
  await n.dom.destroy();
  const ev = await g.call<{ words: number[] }>({
    op: "driverEvent",
    endpointId: epG.endpointId,
    kind: DRIVER_EVENT_DISCONNECT,
  });
  assert.deepEqual(ev.words, [0xffffffff, 7, epN.endpointId, epN.session]);
  await g.call({ op: "close", endpointId: epG.endpointId });
  await g.dom.destroy();
});

test("a native process that fails at load leaves the native service no link of it", async () => {
  // Its boot fails, and it is released, before the host sends dom0 its link: the release's
  // sweep ran without it, and no other domain goes here to sweep again.
  const dom = await host.startNative({ module: NOMAIN, name: "native-nomain", pages: 256 });
  assert.equal((await dom.exited).state, "crashed");
  // Asked on the same link, after the attach: dom0 lists it until it has looked for its home.
  let served = (await host.backendState()).native;
  for (let tries = 0; served.includes(dom.domid) && tries < 100; tries++) {
    await new Promise((r) => setTimeout(r, 20));
    served = (await host.backendState()).native;
  }
  assert.ok(!served.includes(dom.domid), `its link was dropped at once (served: ${served})`);
  assert.equal(host.backendStats().nativeClients, served.length);
});

test("backend stats count the requests it served, per operation", async () => {
  const s = host.backendStats();
  const sum = Object.values(s.byOp).reduce((x, y) => x + y, 0);
  assert.ok(s.requests >= sum, "every counted op is in the total (unknown ops only there)");
  for (const op of [
    "OPEN_ENDPOINT",
    "CLOSE_ENDPOINT",
    "REGISTER",
    "CONNECT",
    "ACCEPT_CHANNEL",
    "INFO",
  ] as const)
    assert.ok(s.byOp[op] > 0, `${op} was counted`);
  assert.equal(s.requests, s.ringRequests + s.nativeRequests);
  assert.ok(s.frontendsConnected >= 6);
});

test("a native process's calls of any size are refused in its own thread: the driver domain serves none of them", async () => {
  // Before, each was posted as built and decoded whole by the driver domain's thread, which
  // serves every guest's set-up (myrback) meanwhile.
  const dom = await host.startNative({
    module: NATIVE_OVERSIZED,
    name: "native-oversized",
    pages: 256,
    maxHeapMb: 128,
  });
  assert.deepEqual(await nextMessage(dom), ["ready"]);
  const before = host.backendStats().nativeRequests;
  dom.send("go");
  const [refused] = (await nextMessage(dom)) as [string[]];
  assert.equal(host.backendStats().nativeRequests, before, "the native service served none of them");
  assert.deepEqual(refused, [
    "typed array: EINVAL: native request.pad must be a number, a boolean or a short string, not a typed array",
    "long string: EINVAL: native request.pad is a string of 1048576 characters; a request carries at most 64 there",
    "many fields: EINVAL: native request has 1001 fields; a request carries at most 16",
    "a list: EINVAL: native request must be an object of fields, not an array",
    "fake buffer: EINVAL: native request.pad must be a number, a boolean or a short string, not an object",
    "patched client: EINVAL: native request.pad must be a number, a boolean or a short string, not a typed array",
  ]);
  dom.send("go");
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  assert.equal(exit.result, 7, "an honest attach and info still go");
  assert.equal(host.backendStats().nativeRequests, before + 1, "info was served (attach is not counted)");
});

test("a guest asking myrback for its costliest work gets one request a turn: another guest's requests are served between", async () => {
  // 16 REGISTERs of 32,768 pages that fail at their last page (each pins and unpins them all,
  // and costs the guest nothing): myrback served them in one turn, and every other guest's
  // set-up waited 230–300 ms a turn for as long as the storm went on.
  const victim = await guest("storm-victim");
  const storm = await host.startGuest({
    module: REGISTER_STORM,
    name: "register-storm",
    pages: 32_768,
    maxHeapMb: 64,
  });
  try {
    assert.deepEqual(await nextMessage(storm), ["ready"]);
    const before = host.backendStats();
    storm.send("go");
    const infos = Array.from({ length: 4 }, () => victim.call({ op: "info" }));
    const exit = await storm.exited;
    assert.equal(exit.state, "shutdown", exit.error?.message);
    const statuses = exit.result as number[];
    assert.equal(statuses.length, 16);
    for (const st of statuses) assert.equal(st, 11, "MX_BAD_SEG_MEM: the last page is no grant");
    await Promise.all(infos);
    const after = host.backendStats();
    assert.equal(after.byOp.REGISTER - before.byOp.REGISTER, 16);
    // Each of those REGISTERs takes longer than a slice (tens of ms of pins), so each ended its
    // turn: other frontends were served between them.
    assert.ok(
      after.ringSlicesCut - before.ringSlicesCut >= 15,
      `${after.ringSlicesCut - before.ringSlicesCut} turns cut for 16 costly requests`,
    );
  } finally {
    await victim.call({ op: "exit" }).catch(() => {});
  }
});

/**
 * The split path as a guest that listens to its bridge would try it. MX over Ethernet finds
 * an endpoint with a broadcast CONNECT that carries the connect key and the asker's session;
 * a flooded frame reached every vif on the bridge and every host behind the uplink, so a
 * listener learned the keys of the jobs around it and could connect to them and inject
 * messages. netback's bridge now gives every MX frame to the owner of the endpoint it names
 * and no one else (src/netback/mx-steer.ts), whatever its destination MAC; a guest sends
 * only as its own endpoints; wrong keys lock a guest out as the NIC does on the bypass path.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { freePort } from "../src/cluster/listen.js";
import { Host } from "../src/host/host.js";
import {
  ASK_TTL_MS,
  MAX_ASKED,
  MAX_ASKS_PER_DOMAIN,
  type MxSteerHost,
  MxSteering,
  STEER_REFUSE,
  STEER_REJECT,
} from "../src/netback/mx-steer.js";
import {
  CONNECT_FREE_FAILS,
  CONNECT_LOCKOUT_MAX_MS,
  CONNECT_LOCKOUT_MS,
} from "../src/nic/connect-throttle.js";
import { MxStatus } from "../src/nic/status.js";
import type { Domain } from "../src/xen/hypervisor.js";
import {
  ETH_HEADER_BYTES,
  MXOE_ETHERTYPE,
  MXOE_HEADER_BYTES,
  MXOE_MAGIC,
  MXOE_VERSION,
  MxoeType,
  MxoeWord,
  SPLIT_ENDPOINT_BASE,
  SPLIT_ENDPOINTS_PER_DOMAIN,
} from "../src/xen/io/mxoe.js";
import type { FrameSummary } from "./fixtures/net-agent.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { nextMessage } from "./helpers/messages.js";
import { type NetAgent, startNetAgent } from "./helpers/net-agent.js";
import { until } from "./helpers/until.js";

const GUESSER = new URL("./fixtures/guests/key-guesser.js", import.meta.url);
const PAIR = new URL("./fixtures/guests/hoarder.js", import.meta.url);
/** The connect key the pair's fixture uses (test/fixtures/guests/hoarder.ts). */
const PAIR_KEY = 0x4b7e;
const NIC = 21;
const REMOTE_NIC = 22;

let host: Host;
let remote: Host;
before(async () => {
  host = await Host.start({ nicId: NIC });
  remote = await Host.start({ nicId: REMOTE_NIC });
  const port = await freePort("127.0.0.1");
  await remote.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: LINK_KEY });
  await host.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000, key: LINK_KEY });
});
after(async () => {
  await host?.nic.detachLink(REMOTE_NIC).catch(() => undefined);
  await remote?.stop();
  await host?.stop();
});

type Agent = NetAgent;

/** A guest that drives its netfront itself and keeps every frame it is given. */
const agent = (name: string, on: Host = host): Promise<Agent> => startNetAgent(on, name);

/** Two split-path guests that connect with PAIR_KEY and exchange 300 messages. */
async function pair(serverOn: Host): Promise<void> {
  const start = (role: string, on: Host) =>
    on.startGuest({ module: PAIR, args: { role }, name: role, pages: 2048, fastPath: false });
  const client = await start("client", host);
  const server = await start("server", serverOn);
  const [[ac], [as]] = await Promise.all([nextMessage(client), nextMessage(server)]);
  client.send(as);
  server.send(ac);
  const exits = await Promise.all([client.exited, server.exited]);
  for (const e of exits) assert.equal(e.state, "shutdown", e.error?.stack);
  assert.deepEqual(exits[0].result, { ok: 300, bad: 0 }, "the pair talked");
}

/** The tag a test frame carries: in its MX header when it has one. */
const tagOf = (f: FrameSummary) => f.mxoe?.[MxoeWord.matchLo] ?? f.tag;

/** Domain `domid`'s first split-path endpoint. */
const splitEp = (domid: number) => SPLIT_ENDPOINT_BASE + domid * SPLIT_ENDPOINTS_PER_DOMAIN;

/** The session of domain `domid`'s first split-path endpoint, in the frames built here. */
const sessionOf = (domid: number) => 1000 + domid;

/**
 * An MXoE frame, headers only, from `from`'s first split-path endpoint to `to`'s on this NIC
 * (naming its session, as netback wants, but for a CONNECT).
 */
function mxoe(type: number, from: number, to: number, id: number, status = 0): Uint8Array {
  const f = new Uint8Array(ETH_HEADER_BYTES + MXOE_HEADER_BYTES);
  const v = new DataView(f.buffer, ETH_HEADER_BYTES);
  const put = (w: number, x: number) => v.setUint32(4 * w, x >>> 0, true);
  put(MxoeWord.magic, (MXOE_MAGIC << 16) | (MXOE_VERSION << 8) | type);
  put(MxoeWord.srcNic, NIC);
  put(MxoeWord.srcEp, splitEp(from));
  put(MxoeWord.srcSession, sessionOf(from));
  put(MxoeWord.dstNic, NIC);
  put(MxoeWord.dstEp, splitEp(to));
  put(MxoeWord.dstSession, type === MxoeType.Connect ? 0 : sessionOf(to));
  put(MxoeWord.id, id);
  put(MxoeWord.msgSeq, status);
  return f;
}

function heard(frames: FrameSummary[]): string {
  const mx = frames.filter((f) => f.mxoe);
  const connects = mx.filter((f) => (f.mxoe![MxoeWord.magic] & 0xff) === MxoeType.Connect);
  const keys = connects.filter((f) => f.mxoe![MxoeWord.offset] === PAIR_KEY);
  return `${mx.length} MX frames, ${connects.length} CONNECTs, ${keys.length} with the pair's key 0x${PAIR_KEY.toString(16)}`;
}

test("a guest listening on its bridge hears none of its neighbours' MX frames: no connect key, no session (one host, and across two)", async () => {
  const here = await agent("listener-here");
  const there = await agent("listener-there", remote);
  const steered = host.netStats().bridge.mxSteered;
  await pair(host); // both on this host
  await pair(remote); // client here, server on the other host
  const got = await Promise.all(
    [here, there].map((a) => a.call<FrameSummary[]>({ op: "recv", timeoutMs: 300 })),
  );
  assert.equal(heard(got[0]), heard([]), "the listener beside the pairs");
  assert.equal(heard(got[1]), heard([]), "the listener on the other host");
  assert.ok(host.netStats().bridge.mxSteered > steered, "the pairs' frames were steered to their owners");
  await Promise.all([here.dom.destroy(), there.dom.destroy()]);
});

test("an MX frame goes to the owner of the endpoint it names, whatever its MAC; one naming no endpoint here reaches no one", async () => {
  const [x, y, z] = await Promise.all([agent("mx-x"), agent("mx-y"), agent("mx-z")]);
  const endpointOf = (d: Domain) => SPLIT_ENDPOINT_BASE + d.domid * SPLIT_ENDPOINTS_PER_DOMAIN;
  const mxFrame = (
    dst: string,
    type: number,
    dstNic: number,
    dstEp: number,
    tag: number,
    srcEp = endpointOf(x.dom),
    dstSession = 0,
  ) => {
    const words = new Array<number>(16).fill(0);
    words[MxoeWord.magic] = ((MXOE_MAGIC << 16) | (MXOE_VERSION << 8) | type) >>> 0;
    words[MxoeWord.dstNic] = dstNic;
    words[MxoeWord.dstEp] = dstEp;
    words[MxoeWord.dstSession] = dstSession;
    words[MxoeWord.srcNic] = NIC;
    words[MxoeWord.srcEp] = srcEp;
    words[MxoeWord.srcSession] = 77;
    words[MxoeWord.offset] = PAIR_KEY;
    // (The payload's first byte is the magic's: the tag rides in a header word.)
    words[MxoeWord.matchLo] = tag;
    return { dst, len: 128, tag, type: MXOE_ETHERTYPE, words };
  };
  const nobody = SPLIT_ENDPOINT_BASE + 4000 * SPLIT_ENDPOINTS_PER_DOMAIN;
  // z's endpoint sends first (a CONNECT no one gets), so netback knows its session (77): only
  // frames naming it reach z (split-endpoint-reuse.test.ts).
  const r0 = host.netStats().bridge.mxRefused;
  await z.call({
    op: "send",
    frames: [mxFrame("ff:ff:ff:ff:ff:ff", MxoeType.Connect, NIC, nobody, 0, endpointOf(z.dom))],
  });
  await until(() => host.netStats().bridge.mxRefused > r0, "z's CONNECT seen");
  const s0 = host.netStats().bridge;
  await x.call({
    op: "send",
    frames: [
      // Addressed to y's MAC, naming z's endpoint: z gets it.
      mxFrame(y.mac, MxoeType.Eager, NIC, endpointOf(z.dom), 1, endpointOf(x.dom), 77),
      // A broadcast CONNECT naming z's endpoint: z only.
      mxFrame("ff:ff:ff:ff:ff:ff", MxoeType.Connect, NIC, endpointOf(z.dom), 2),
      // Naming an endpoint no domain here owns: no one.
      mxFrame("ff:ff:ff:ff:ff:ff", MxoeType.Connect, NIC, nobody, 3),
      // A NIC context no one opened: no one.
      mxFrame("ff:ff:ff:ff:ff:ff", MxoeType.Connect, NIC, 7, 4),
      // Another NIC's endpoint: out of the uplink, not to a neighbour.
      mxFrame("ff:ff:ff:ff:ff:ff", MxoeType.Connect, 99, endpointOf(y.dom), 5),
      // Too short to name anyone.
      { dst: "ff:ff:ff:ff:ff:ff", len: 40, tag: 6, type: MXOE_ETHERTYPE },
      // Sent as y's endpoint (as if y asked to connect): refused, as a spoofed MAC is.
      mxFrame("ff:ff:ff:ff:ff:ff", MxoeType.Connect, NIC, endpointOf(z.dom), 7, endpointOf(y.dom)),
      // Sent as a NIC context no one opened: refused.
      mxFrame(z.mac, MxoeType.Eager, NIC, endpointOf(z.dom), 8, 3),
    ],
  });
  const zGot = await z.call<FrameSummary[]>({ op: "recv", timeoutMs: 3000, expect: 2 });
  assert.deepEqual(zGot.map(tagOf), [1, 2], "z got what named its endpoint, and nothing else");
  const [xGot, yGot] = await Promise.all(
    [x, y].map((a) => a.call<FrameSummary[]>({ op: "recv", timeoutMs: 300 })),
  );
  assert.deepEqual(yGot, [], "y got nothing, not even what was addressed to its MAC");
  assert.deepEqual(xGot, [], "the sender got nothing back");
  const s1 = host.netStats().bridge;
  assert.equal(s1.mxSteered - s0.mxSteered, 3, "two to z, one out of the uplink");
  assert.equal(s1.mxRefused - s0.mxRefused, 3, "no owner (twice), too short");
  assert.equal(s1.mxSpoofed - s0.mxSpoofed, 2, "sent as another domain's endpoint, as no one's");
  // Ordinary Ethernet is bridged as before: a broadcast of another EtherType reaches everyone.
  await x.call({ op: "send", frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 64, tag: 9 }] });
  for (const a of [y, z]) {
    const got = await a.call<FrameSummary[]>({ op: "recv", timeoutMs: 3000, expect: 1 });
    assert.deepEqual(got.map(tagOf), [9]);
  }
  await Promise.all([x.dom.destroy(), y.dom.destroy(), z.dom.destroy()]);
});

test("a guest guessing a split-path endpoint's key is told BAD_KEY a few times, then MX_BUSY: the right key, guessed in the lockout, does not connect", async () => {
  const key = 0x51ee7;
  const guess = (role: string, extra: Record<string, unknown> = {}) =>
    host.startGuest({
      module: GUESSER,
      args: { role, key, path: "split", ...extra },
      name: `split-${role}`,
      pages: 2048,
      fastPath: false,
    });
  const victim = await guess("victim");
  const [addr] = await nextMessage(victim);
  const t0 = host.netStats().bridge;
  const guesser = await guess("guesser", {
    guesses: CONNECT_FREE_FAILS,
    timeoutMs: 400,
    laterMs: CONNECT_LOCKOUT_MS + 500,
  });
  guesser.send(addr);
  const e = await guesser.exited;
  victim.send("done");
  await victim.exited;
  assert.equal(e.state, "shutdown", e.error?.stack);
  const { codes, right, rightMessage, later } = e.result as {
    codes: string[];
    right: string;
    rightMessage: string;
    later: string;
  };
  assert.deepEqual(
    codes,
    new Array(CONNECT_FREE_FAILS).fill("MX_BAD_CONNECTION_KEY"),
    "the first few are told",
  );
  assert.equal(
    right,
    "MX_BUSY",
    "the right key, in the lockout: netback answered it, REJECTED, letting no CONNECT through",
  );
  assert.match(
    rightMessage,
    /refuses this guest's connects over Ethernet for \d+ ms more: too many wrong keys/,
  );
  assert.equal(
    later,
    "connected",
    "after the lockout the right key connects (an honest mistake costs a second)",
  );
  const t1 = host.netStats().bridge;
  assert.ok(t1.mxThrottled > t0.mxThrottled, "the CONNECTs in the lockout were counted");
});

test("a wrong key's answer carries no session: a guest of another job cannot resolve its way in after one guess", async () => {
  const key = 0x5e55;
  const start = (role: string) =>
    host.startGuest({
      module: GUESSER,
      args: { role, key, path: "split" },
      name: `split-${role}`,
      pages: 2048,
      fastPath: false,
    });
  const victim = await start("victim");
  const [addr] = await nextMessage(victim);
  const resolver = await start("session-resolver");
  resolver.send(addr);
  const e = await resolver.exited;
  victim.send("done");
  await victim.exited;
  assert.equal(e.state, "shutdown", e.error?.stack);
  const { wrong, leaked, resolved } = e.result as { wrong: string; leaked: number; resolved: string };
  assert.equal(wrong, "MX_BAD_CONNECTION_KEY");
  assert.equal(leaked, 0, `the BAD_KEY answer told the victim's session (then: ${resolved})`);
});

/**
 * netback's steering alone, on a clock the test moves: domain d's vif is bridge port 10 + d
 * (domains 1..`domains`), guest 1 connects to guest 2's first split-path endpoint.
 */
function steering(domains: number, uplinkPort: number) {
  const clock = { now: 1_000 };
  const steer = new MxSteering(
    {
      nicId: NIC,
      uplinkPort,
      nicContext: () => undefined,
      portOfDomain: (d) => (d >= 1 && d <= domains ? 10 + d : -1),
      domainOfPort: (p) => (p >= 11 && p <= 10 + domains ? p - 10 : undefined),
    },
    () => clock.now,
  );
  const send = (domid: number, f: Uint8Array) => steer.route(10 + domid, f, f.length);
  const connect = (id: number) => send(1, mxoe(MxoeType.Connect, 1, 2, id));
  return { clock, steer, send, connect };
}

test("netback believes only the answer to the CONNECT a guest sent: forged answers neither lock a guest out nor forgive it", () => {
  const { clock, steer, send, connect } = steering(3, 10);
  const answer = (from: number, id: number, status: number) =>
    send(from, mxoe(MxoeType.ConnectReply, from, 1, id, status));

  // Guest 3 answers connects guest 1 never sent, all BAD_KEY: not delivered, nothing counts.
  for (let id = 0; id < 10; id++) assert.equal(answer(3, id, MxStatus.BAD_KEY), STEER_REFUSE);
  assert.equal(connect(100), 12, "guest 1 may still connect");
  // Guest 3 answers the very connect guest 1 sent (its id guessed): not the endpoint asked.
  assert.equal(answer(3, 100, MxStatus.BAD_KEY), STEER_REFUSE);
  // The endpoint asked answers: wrong keys count, a retry's answer once.
  for (let n = 0; n < CONNECT_FREE_FAILS; n++) {
    const id = 100 + n;
    if (n > 0) assert.equal(connect(id), 12);
    answer(2, id, MxStatus.BAD_KEY);
    answer(2, id, MxStatus.BAD_KEY);
  }
  assert.equal(connect(200), STEER_REJECT, `after ${CONNECT_FREE_FAILS} wrong keys guest 1 is locked out`);
  // A forged SUCCESS (from guest 3, for the id guest 1 last sent) forgives nothing.
  answer(3, 103, MxStatus.SUCCESS);
  assert.equal(connect(201), STEER_REJECT);
  clock.now += CONNECT_LOCKOUT_MS + 1;
  assert.equal(connect(202), 12, "the lockout ends");
  assert.equal(steer.counters.throttled, 2);
});

test("a guesser's answers count: its next CONNECTs wait for them, and an answer netback no longer expects does not reach it", () => {
  const { clock, send, connect } = steering(2, -1);
  const badKey = (id: number) => send(2, mxoe(MxoeType.ConnectReply, 2, 1, id, MxStatus.BAD_KEY));

  // A burst of guesses, all out before any answer: answered, counted, and a lockout.
  const burst = (first: number) => {
    const out: number[] = [];
    for (let id = first; id < first + MAX_ASKS_PER_DOMAIN; id++) if (connect(id) === 12) out.push(id);
    for (const id of out) assert.equal(badKey(id), 11, "the owner's answer reaches the asker");
    return out.length;
  };
  assert.equal(
    burst(0),
    MAX_ASKS_PER_DOMAIN,
    "a domain with no wrong key on record has its CONNECTs out at once",
  );
  assert.equal(connect(100), STEER_REJECT, "locked out");
  // After the lockout: one guess out at a time, not another burst.
  clock.now += CONNECT_LOCKOUT_MAX_MS + 1;
  assert.equal(burst(200), 1, "guesses out at once after a lockout");

  // An answer that comes after netback forgot its CONNECT (the victim computed for a while)
  // is not passed on: the guesser would learn from it, and it could no longer count.
  clock.now += CONNECT_LOCKOUT_MAX_MS + 1;
  assert.equal(connect(300), 12);
  clock.now += ASK_TTL_MS + 1;
  assert.equal(connect(301), 12, "a CONNECT elsewhere meanwhile");
  assert.equal(badKey(300), STEER_REFUSE, "the late answer does not reach the guesser");
});

test("a guesser's lockout goes with its domain: the next domain given its id connects at once", () => {
  const { steer, send, connect } = steering(2, -1);
  // Domain 1 guesses guest 2's key until it is locked out (for a minute, with more guesses).
  for (let id = 0; id < 3 * CONNECT_FREE_FAILS; id++) {
    if (connect(id) !== 12) break;
    send(2, mxoe(MxoeType.ConnectReply, 2, 1, id, MxStatus.BAD_KEY));
  }
  assert.equal(connect(100), STEER_REJECT, "the guesser is locked out");
  // Its domain is destroyed (the toolstack removes its vif) and, as domain ids come round, a
  // later guest of another job is given id 1 within the lockout.
  steer.forget(1);
  assert.equal(connect(101), 12, "the newcomer with the guesser's id connects at once");
});

test("split-path guests that sent CONNECTs and died leave netback no record of them", async () => {
  const askers = () => host.netStats().bridge.mxAskers;
  // The earlier tests' guests are gone: so are their records.
  await until(() => askers() === 0, "no domain's CONNECTs remembered", 10_000);
  const victim = await agent("asked");
  const guests = await Promise.all([1, 2, 3, 4].map((i) => agent(`asker-${i}`)));
  await Promise.all(
    guests.map((g) => {
      const v = new DataView(
        mxoe(MxoeType.Connect, g.dom.domid, victim.dom.domid, 1).buffer,
        ETH_HEADER_BYTES,
      );
      const words = Array.from({ length: MXOE_HEADER_BYTES / 4 }, (_, i) => v.getUint32(4 * i, true));
      return g.call({
        op: "send",
        frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 128, tag: 1, type: MXOE_ETHERTYPE, words }],
      });
    }),
  );
  await until(() => askers() === guests.length, "each asker's CONNECT remembered");
  await Promise.all(guests.map((g) => g.dom.destroy()));
  // The toolstack removes their vifs; netback forgets their CONNECTs with them.
  await until(() => askers() === 0, "the dead askers forgotten", 10_000);
  await victim.dom.destroy();
});

test("a live guest's limit of unanswered CONNECTs holds while thousands of others come and go; at the bound a newcomer waits", () => {
  // Every domain has a vif: bridge port 100 + domid.
  const steerHost: MxSteerHost = {
    nicId: NIC,
    uplinkPort: -1,
    nicContext: () => undefined,
    portOfDomain: (d) => 100 + d,
    domainOfPort: (p) => (p >= 100 ? p - 100 : undefined),
  };
  let now = 1_000;
  const steer = new MxSteering(steerHost, () => now);
  const connect = (from: number, id: number) => {
    const f = mxoe(MxoeType.Connect, from, 2, id);
    return steer.route(100 + from, f, f.length);
  };
  const limited = () => connect(1, MAX_ASKS_PER_DOMAIN) === STEER_REFUSE;

  // Others connect once each (and stay) until MAX_ASKED domains are remembered, guest 1 last.
  for (let d = 10; d < 10 + MAX_ASKED - 1; d++) assert.equal(connect(d, 0), 102);
  now += ASK_TTL_MS / 2;
  for (let id = 0; id < MAX_ASKS_PER_DOMAIN; id++) assert.equal(connect(1, id), 102);
  assert.ok(limited(), `guest 1 has ${MAX_ASKS_PER_DOMAIN} unanswered CONNECTs`);
  assert.equal(steer.askers, MAX_ASKED);
  // Full, and every domain connected in the last ASK_TTL_MS: a newcomer waits; no one is wiped.
  assert.equal(connect(9000, 0), STEER_REFUSE, "at the bound a newcomer's CONNECT is refused");
  assert.ok(limited(), "guest 1's CONNECTs were not wiped to make room");
  // The others' CONNECTs age out (guest 1's do not yet): their records go, the newcomer's comes.
  now += ASK_TTL_MS / 2;
  assert.equal(connect(9000, 0), 102);
  assert.equal(steer.askers, 2, "guest 1 and the newcomer");
  assert.ok(limited());
  // Twice the bound of guests that connect and die: each record goes with its domain.
  for (let d = 10_000; d < 10_000 + 2 * MAX_ASKED; d++) {
    assert.equal(connect(d, 0), 102);
    steer.forget(d);
  }
  assert.equal(steer.askers, 2);
  assert.ok(limited(), "guest 1 is still held to its limit");
});

/**
 * MX over Ethernet keys a peer on its source MAC, not on header words a sender chooses: in
 * one thread, two split-path endpoints on an in-memory bridge, and a third station that
 * sends a frame whose header claims to come from one of them (nic, endpoint and session are
 * all visible on the wire) from its own MAC, as netback's anti-spoofing leaves it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MxEndpoint } from "../src/mx/endpoint.js";
import {
  BROADCAST_MAC,
  type EtherDevice,
  EtherHub,
  frameType,
  initEtherFrame,
  setFrameWord,
} from "../src/mx/ether.js";
import {
  type EtherEngine,
  type EtherPath,
  FAILED_STREAM_KEEP_MS,
  MAX_QUEUED_CONTROL,
} from "../src/mx/ether-path.js";
import { kPartner, RequestState } from "../src/mx/types.js";
import type { MxDriver } from "../src/myrixen/driver-abi.js";
import { MxStatus } from "../src/nic/status.js";
import { INTR_BYTES, WINDOW_BYTES } from "../src/nic/window.js";
import { MxoeType, MxoeWord, PAYLOAD_AT, SPLIT_ENDPOINT_BASE } from "../src/xen/io/mxoe.js";

const KEY = 0xe7;
const ALL = 0xffffffff;

function sameMac(f: Uint8Array, mac: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (f[i] !== mac[i]) return false;
  return true;
}

/** A bridge in memory: frames go to the port of their destination MAC, broadcasts to all others. */
class Bridge {
  readonly ports: Port[] = [];
  readonly hubs: EtherHub[] = [];
  /** The station's cable is pulled: frames to it are lost, and it is not polled. */
  unplug(s: { port: Port; hub: EtherHub }): void {
    this.ports.splice(this.ports.indexOf(s.port), 1);
    this.hubs.splice(this.hubs.indexOf(s.hub), 1);
  }
  /** The station is back on the bridge. */
  plug(s: { port: Port; hub: EtherHub }): void {
    this.ports.push(s.port);
    this.hubs.push(s.hub);
  }
  /** Lets every station's MX library run (one thread plays all of them). */
  pollAll(except: EtherHub | undefined): void {
    for (const h of this.hubs) if (h !== except) h.poll();
  }
}

class Port implements EtherDevice {
  readonly mtu = 9000;
  readonly nicId = 0;
  readonly rx: Uint8Array[] = [];
  hub: EtherHub | undefined;
  constructor(
    readonly mac: Uint8Array,
    private readonly bridge: Bridge,
  ) {
    bridge.ports.push(this);
  }
  send(frame: Uint8Array): boolean {
    for (const p of this.bridge.ports)
      if (p !== this && (sameMac(frame, BROADCAST_MAC) || sameMac(frame, p.mac))) p.rx.push(frame.slice());
    return true;
  }
  flush(): void {}
  poll(cb: (frame: Uint8Array) => void): number {
    let n = 0;
    for (let f = this.rx.shift(); f !== undefined; f = this.rx.shift(), n++) cb(f);
    return n;
  }
  wait(): boolean {
    this.bridge.pollAll(this.hub);
    return this.rx.length > 0;
  }
}

/** The split path's driver, without a guest: private windows, nothing to register. */
function driver(n: number): MxDriver {
  return {
    path: "split",
    nicId: 0,
    openEndpoint: () => ({
      endpointId: SPLIT_ENDPOINT_BASE + n,
      session: 1000 + n,
      window: new SharedArrayBuffer(WINDOW_BYTES),
      intr: new SharedArrayBuffer(INTR_BYTES),
    }),
    closeEndpoint: () => {},
    registerRegion: () => ({ regionId: 0, key: 0 }),
    deregisterRegion: () => {},
    connect: () => {
      throw new Error("not on the split path");
    },
    acceptChannel: () => {
      throw new Error("not on the split path");
    },
    allocBuffer: (length: number) => new Uint8Array(new SharedArrayBuffer(length)),
    freeBuffer: () => {},
    finalize: () => {},
  };
}

function station(bridge: Bridge, n: number): { port: Port; hub: EtherHub; ep?: MxEndpoint } {
  const port = new Port(new Uint8Array([0x00, 0x16, 0x3e, 0, 0, n]), bridge);
  const hub = new EtherHub(port);
  port.hub = hub;
  bridge.hubs.push(hub);
  return { port, hub };
}

/** The endpoint's MX over Ethernet (private to it: the test reaches in). */
function engineOf(ep: MxEndpoint): EtherEngine {
  return (ep as unknown as { ether: EtherEngine }).ether;
}

/** Two split-path endpoints on one in-memory bridge, connected both ways. */
function linkedPair() {
  const bridge = new Bridge();
  const a = station(bridge, 1);
  const b = station(bridge, 2);
  const epA = new MxEndpoint(driver(1), { key: KEY, ether: a.hub });
  const epB = new MxEndpoint(driver(2), { key: KEY, ether: b.hub });
  const toB = epA.connect(0, epB.endpointId, KEY, 2000);
  const toA = epB.connect(0, epA.endpointId, KEY, 2000);
  return { bridge, a, b, epA, epB, toB, toA };
}

test("a frame claiming a connected peer's (nic, endpoint, session) from another MAC is dropped and counted", () => {
  const { bridge, a, epA, epB, toB, toA } = linkedPair();
  const evil = station(bridge, 3);

  // The forger's frame: B's identity in the header, the next sequence A expects from B,
  // B's first message; sent from the forger's own MAC to A's.
  const f = new Uint8Array(PAYLOAD_AT + 4);
  initEtherFrame(f, a.port.mac, evil.port.mac, MxoeType.Eager);
  setFrameWord(f, MxoeWord.dstNic, 0);
  setFrameWord(f, MxoeWord.dstEp, epA.endpointId);
  setFrameWord(f, MxoeWord.dstSession, epA.session);
  setFrameWord(f, MxoeWord.srcNic, 0);
  setFrameWord(f, MxoeWord.srcEp, epB.endpointId);
  setFrameWord(f, MxoeWord.srcSession, epB.session);
  setFrameWord(f, MxoeWord.seq, 1);
  setFrameWord(f, MxoeWord.ack, 1);
  setFrameWord(f, MxoeWord.matchHi, 7);
  setFrameWord(f, MxoeWord.length, 4);
  setFrameWord(f, MxoeWord.msgSeq, 0);
  setFrameWord(f, MxoeWord.payload, 4);
  f.set([0xde, 0xad, 0xbe, 0xef], PAYLOAD_AT);
  evil.port.send(f);

  const got = new Uint8Array(4);
  const r = epA.irecv(got, 7, 0, ALL, ALL);
  for (let i = 0; i < 50; i++) epA.progress(true);
  assert.equal(r.done, false, `the forged frame was delivered as B's message: ${[...got]}`);
  assert.equal(a.hub.counters.spoofed, 1);

  // B's own first message still arrives, from B.
  const s = epB.isend(new Uint8Array([1, 2, 3, 4]), toA, 7, 0);
  const st = epA.wait(r, 2000);
  assert.equal(st?.codeName, "MX_STATUS_SUCCESS");
  assert.equal(st?.source, toB);
  assert.deepEqual([...got], [1, 2, 3, 4]);
  assert.ok(epB.wait(s, 2000));
  epA.close();
  epB.close();
});

test("a rendezvous is served only to its receiver: another peer's PULL naming its sync id is refused", () => {
  const bridge = new Bridge();
  const a = station(bridge, 1);
  const b = station(bridge, 2);
  const c = station(bridge, 3);
  const epA = new MxEndpoint(driver(1), { key: KEY, ether: a.hub });
  const epB = new MxEndpoint(driver(2), { key: KEY, ether: b.hub });
  const epC = new MxEndpoint(driver(3), { key: KEY, ether: c.hub });
  const toB = epA.connect(0, epB.endpointId, KEY, 2000);
  const cToA = epC.connect(0, epA.endpointId, KEY, 2000);

  const secret = new Uint8Array(40_000).fill(0x5e); // above the rendezvous threshold
  const s = epA.isend(secret, toB, 0, 1);
  assert.ok(s.syncId !== 0);
  // C, a connected peer of A, asks for B's rendezvous by its sync id, through its own stream to A.
  const engineC = engineOf(epC);
  const pathCA = cToA[kPartner].ether as EtherPath;
  engineC.control(pathCA, MxoeType.Pull, s.syncId, 1234, 0, secret.length);
  for (let i = 0; i < 20; i++) {
    epA.progress(true);
    epC.progress(true);
  }
  assert.equal(epA.counters.channelErrors, 1, "A refused the PULL");
  assert.equal(epC.counters.channelErrors, 0, "no DATA of B's message reached C");

  // B, the receiver, still gets its message.
  const got = new Uint8Array(secret.length);
  const st = epB.wait(epB.irecv(got, 0, 1, ALL, ALL), 2000);
  assert.equal(st?.codeName, "MX_STATUS_SUCCESS");
  assert.ok(got.every((x) => x === 0x5e));
  assert.equal(epA.wait(s, 2000)?.codeName, "MX_STATUS_SUCCESS");
  for (const ep of [epA, epB, epC]) ep.close();
});

test("a rendezvous is served once: its receiver's repeated PULLs are refused and counted", () => {
  // Before, each PULL frame (78 bytes) queued another serve job and sent the whole buffer
  // again: a peer repeating it without reading grew the sender's heap until its guest died.
  const { epA, epB, toB, toA } = linkedPair();
  const data = new Uint8Array(40_000).fill(0x3c); // above the rendezvous threshold
  const s = epA.isend(data, toB, 0, 1);
  const got = new Uint8Array(data.length);
  const r = epB.irecv(got, 0, 1, ALL, ALL);
  // B matches the announcement and sends its PULL; A has not read it yet.
  for (let i = 0; i < 50 && r.state !== RequestState.Pulling; i++) epB.progress(true);
  assert.equal(r.state, RequestState.Pulling);
  const engineB = engineOf(epB);
  const pathBA = toA[kPartner].ether as EtherPath;
  for (let i = 0; i < 5; i++) engineB.control(pathBA, MxoeType.Pull, s.syncId, 4321 + i, 0, data.length);
  const st = epB.wait(r, 2000);
  assert.equal(st?.codeName, "MX_STATUS_SUCCESS");
  assert.ok(got.every((x) => x === 0x3c));
  assert.equal(epA.wait(s, 2000)?.codeName, "MX_STATUS_SUCCESS");
  assert.equal(epA.counters.channelErrors, 5, "A refused the five repeats");
  for (const ep of [epA, epB]) ep.close();
});

test("a peer that stops taking our frames cannot make us queue control frames without end: past the cap it is failed", () => {
  // Each message A matches from B owes B a NOTIFY, queued while A's window to B is shut. B
  // acknowledging just often enough to keep the link alive grew that queue without end.
  const { bridge, b, epA, epB, toB } = linkedPair();
  // B stops reading: A's sends to it fill A's window, which nothing acknowledges.
  bridge.hubs.splice(bridge.hubs.indexOf(b.hub), 1);
  const pathAB = toB[kPartner].ether as EtherPath;
  for (let i = 0; i < 200 && pathAB.link.room > 0; i++) epA.isend(new Uint8Array(8), toB, 0, 1);
  assert.equal(pathAB.link.room, 0, "A's window to B is shut");
  const engineA = engineOf(epA);
  for (let i = 0; i < MAX_QUEUED_CONTROL; i++) engineA.control(pathAB, MxoeType.Notify, i + 1, 0, 0, 0);
  assert.equal(toB[kPartner].dead, undefined, "up to the cap, queued");
  engineA.control(pathAB, MxoeType.Notify, 0, 0, 0, 0);
  assert.match(toB[kPartner].dead ?? "", /stopped taking our control frames \(4096 queued/);
  assert.ok((pathAB.ctlQueue?.length ?? 0) <= 5 * MAX_QUEUED_CONTROL);
  epA.close();
  epB.close();
});

for (const [bound, start] of [
  ["2^32 (a day of streaming)", 2 ** 32 - 20],
  ["2^31", 2 ** 31 - 20],
] as const)
  test(`a pair's frame sequence crosses ${bound} and every message still arrives; the links keep it as an int32`, () => {
    // The frames carry 32-bit sequence and ack words; the links counted on past 2^32, so after
    // the wrap every frame looked like a resend, nothing was acknowledged, and after 10 s the
    // sender failed its healthy peer while the receiver waited forever.
    const { epA, epB, toB, toA } = linkedPair();
    const ab = toB[kPartner].ether as EtherPath;
    const ba = toA[kPartner].ether as EtherPath;
    for (let i = 0; i < 20; i++) {
      epA.progress(true);
      epB.progress(true);
    }
    type Seqs = { acked: number; sent: number; next: number; rxExpect: number };
    const [lab, lba] = [ab.link as unknown as Seqs, ba.link as unknown as Seqs];
    assert.equal(lab.next, lab.acked, "nothing in flight before the jump");
    // As if `start` frames had gone each way already (the links hold the words as int32s).
    for (const l of [lab, lba]) {
      l.acked = start | 0;
      l.sent = start | 0;
      l.next = start | 0;
    }
    lab.rxExpect = start | 0;
    lba.rxExpect = start | 0;
    // The endpoints' progress rounds too (EndpointContext.rounds): a spinning wait runs ~10^7 a second.
    const ctxOf = (ep: MxEndpoint) => (ep as unknown as { ctx: { rounds: number } }).ctx;
    for (const ep of [epA, epB]) ctxOf(ep).rounds = (start - 5) | 0;
    for (let i = 0; i < 100; i++) {
      const got = new Uint8Array(4);
      const r = epB.irecv(got, 0, i, ALL, ALL);
      epA.isend(new Uint8Array([i, 1, 2, 3]), toB, 0, i);
      const st = epB.wait(r, 5000);
      assert.equal(st?.code, MxStatus.SUCCESS, `message ${i} (frame ${start + i}) did not arrive`);
      assert.equal(got[0], i);
    }
    // Delayed acks: B acknowledges the last frames within its ack delay.
    for (const until = performance.now() + 2000; lab.acked !== lab.next && performance.now() < until; ) {
      epA.progress(true);
      epB.progress(true);
    }
    assert.equal(toB[kPartner].dead, undefined);
    assert.equal(toA[kPartner].dead, undefined);
    assert.equal(lab.acked, lab.next, `A's window to B emptied past the bound (${lab.acked}..${lab.next})`);
    assert.ok((lab.next - start) >>> 0 >= 100, "the sequence moved past the bound");
    for (const l of [lab, lba])
      for (const v of [l.acked, l.sent, l.next, l.rxExpect])
        assert.equal(v, v | 0, `a sequence left the int32s: ${v}`);
    for (let i = 0; i < 10; i++) for (const ep of [epA, epB]) ep.progress();
    for (const ep of [epA, epB]) {
      const rounds = ctxOf(ep).rounds;
      assert.equal(rounds, rounds | 0, `progress rounds left the int32s: ${rounds}`);
      assert.ok(((rounds - start) | 0) > 0, "the rounds passed the bound");
      assert.equal(ep.counters.progress, rounds >>> 0, "counters.progress reads the rounds as a u32");
    }
    epA.close();
    epB.close();
  });

test("request ids wrap after 2^24 without handing out one still waiting: a rendezvous received late still completes", () => {
  // Sync ids are 24 bits, about a minute of synchronous sends. A rendezvous whose receiver
  // posts late kept its id while the counter came round; the next send given the same id
  // took its place, so the late receiver's PULL was refused and both sides waited for ever.
  const { bridge, epA, epB, toB } = linkedPair();
  const c = station(bridge, 3);
  const epC = new MxEndpoint(driver(3), { key: KEY, ether: c.hub });
  const toC = epA.connect(0, epC.endpointId, KEY, 2000);
  epC.connect(0, epA.endpointId, KEY, 2000);
  const x = epA.isend(new Uint8Array(40_000).fill(0xbb), toB, 0, 1); // B receives it later
  for (let i = 0; i < 10; i++) {
    epA.progress(true);
    epB.progress(true);
  }
  // As if 2^24 − 1 ids had been handed out since: the next ones are 0xffffff, 1, 2, ...
  (epA as unknown as { ctx: { nextId: number } }).ctx.nextId = 0xffffff;
  const ys = [];
  for (let i = 0; i < x.syncId + 1; i++) {
    epC.irecv(new Uint8Array(40_000), 0, 2 + i, ALL, ALL);
    ys.push(epA.isend(new Uint8Array(40_000).fill(0xcc), toC, 0, 2 + i));
  }
  assert.ok(!ys.some((y) => y.syncId === x.syncId), `a new send took sync id ${x.syncId}, still waiting`);
  const gotX = new Uint8Array(40_000);
  const rx = epB.irecv(gotX, 0, 1, ALL, ALL);
  assert.equal(
    epB.wait(rx, 5000)?.code,
    MxStatus.SUCCESS,
    "the late receive of the first rendezvous completes",
  );
  assert.equal(gotX[39_999], 0xbb);
  assert.equal(epA.wait(x, 5000)?.code, MxStatus.SUCCESS);
  for (const y of ys) assert.equal(epA.wait(y, 5000)?.code, MxStatus.SUCCESS);
  assert.equal(epA.counters.channelErrors, 0);
  for (const ep of [epA, epB, epC]) ep.close();
});

test("mx_disconnect: the stream lets go of its frame copies once acknowledged, and the pair's next connection goes on in it", () => {
  // The peer keeps its side of the stream (it sees no connection close): a new stream from 1
  // had its frames dropped there as resends. Kept per address, a stream held a full window of
  // copies (half a MiB) for every peer ever disconnected.
  const { epA, epB, toB, toA } = linkedPair();
  const ab = toB[kPartner].ether as EtherPath;
  const ring = () => (ab.link as unknown as { ring: unknown[] }).ring;
  const recvs = Array.from({ length: 64 }, () => epB.irecv(new Uint8Array(6000), 0, 1, ALL, ALL));
  for (let i = 0; i < 64; i++) epA.isend(new Uint8Array(6000), toB, 0, 1);
  for (const r of recvs) assert.equal(epB.wait(r, 5000)?.code, MxStatus.SUCCESS);
  assert.equal(ring().length, 64, "a window of frame copies");
  epA.disconnect(toB);
  assert.equal(ab.link.unacked, 0, "the disconnect waited for B's acks");
  assert.equal(ring().length, 0, "and let go of the copies");
  const again = epA.connect(0, epB.endpointId, KEY, 2000);
  assert.equal((again[kPartner].ether as EtherPath).link, ab.link, "the same stream goes on");
  const got = new Uint8Array(4);
  const r = epB.irecv(got, 0, 2, ALL, ALL);
  epA.isend(new Uint8Array([9, 8, 7, 6]), again, 0, 2);
  assert.equal(epB.wait(r, 5000)?.code, MxStatus.SUCCESS, "the next connection's message arrives");
  assert.deepEqual([...got], [9, 8, 7, 6]);
  assert.equal(toA[kPartner].dead, undefined, "B never saw a connection close");
  epA.close();
  epB.close();
});

test("a forged CONNECT for a peer we disconnected, from another MAC, does not displace the pair's kept stream", () => {
  // A reviewer's PoC: the forger's stream replaced the kept one, a NACK from the forger failed
  // it, and A's next connection to the real B started a new stream that B dropped as resends.
  const { bridge, a, epA, epB, toB } = linkedPair();
  const evil = station(bridge, 3);
  for (let i = 0; i < 10; i++) {
    const r = epB.irecv(new Uint8Array(8), 0, 1, ALL, ALL);
    epA.isend(new Uint8Array(8), toB, 0, 1);
    assert.equal(epB.wait(r, 2000)?.code, MxStatus.SUCCESS);
  }
  const kept = (toB[kPartner].ether as EtherPath).link;
  epA.disconnect(toB);
  const forged = (type: number) => {
    const f = new Uint8Array(PAYLOAD_AT);
    initEtherFrame(f, type === MxoeType.Connect ? BROADCAST_MAC : a.port.mac, evil.port.mac, type);
    setFrameWord(f, MxoeWord.dstEp, epA.endpointId);
    setFrameWord(f, MxoeWord.dstSession, type === MxoeType.Connect ? 0 : epA.session);
    setFrameWord(f, MxoeWord.srcEp, epB.endpointId);
    setFrameWord(f, MxoeWord.srcSession, epB.session);
    setFrameWord(f, MxoeWord.id, 77);
    setFrameWord(f, MxoeWord.offset, KEY);
    return f;
  };
  evil.port.send(forged(MxoeType.Connect));
  for (let i = 0; i < 5; i++) epA.progress(true);
  evil.port.send(forged(MxoeType.Nack));
  for (let i = 0; i < 5; i++) epA.progress(true);
  const again = epA.connect(0, epB.endpointId, KEY, 2000);
  assert.equal((again[kPartner].ether as EtherPath).link, kept, "the real B's stream goes on");
  const recvs = Array.from({ length: 5 }, () => epB.irecv(new Uint8Array(8), 0, 2, ALL, ALL));
  for (let i = 0; i < 5; i++) epA.isend(new Uint8Array(8), again, 0, 2);
  for (const r of recvs)
    assert.equal(epB.wait(r, 2000)?.code, MxStatus.SUCCESS, "A's next connection's messages arrive");
  epA.close();
  epB.close();
});

test("a rendezvous a disconnect failed, matched by the peer afterwards, fails that receive instead of holding it for ever", () => {
  // B computes (no MX call) while A sends and disconnects: A's linger gives up after 2 s and
  // fails the rendezvous, whose announcement waits in B's queue all the same. B matched it
  // later and PULLed a send A no longer had: A dropped the PULL, and B's receive waited for
  // ever over a working connection (a reviewer's PoC). A answers such a PULL with a refusal.
  const { bridge, b, epA, epB, toB } = linkedPair();
  bridge.hubs.splice(bridge.hubs.indexOf(b.hub), 1);
  const big = new Uint8Array(100_000).fill(0x22);
  const failed = epA.isend(big, toB, 0, 2);
  epA.disconnect(toB);
  assert.equal(epA.wait(failed, 0)?.code, MxStatus.ENDPOINT_CLOSED);
  bridge.hubs.push(b.hub);
  const again = epA.connect(0, epB.endpointId, KEY, 2000);
  const stale = epB.irecv(new Uint8Array(100_000), 0, 2, ALL, ALL);
  const st = epB.wait(stale, 5000);
  assert.equal(st?.code, MxStatus.ABORTED, "the receive that matched the failed send ends");
  assert.match(stale.reason ?? "", /no longer has this rendezvous/);
  // The program, told its send failed, sends it again: that one arrives whole.
  const got = new Uint8Array(100_000);
  const r = epB.irecv(got, 0, 2, ALL, ALL);
  const s2 = epA.isend(big, again, 0, 2);
  assert.equal(epB.wait(r, 5000)?.code, MxStatus.SUCCESS);
  assert.ok(got.every((x) => x === 0x22));
  assert.equal(epA.wait(s2, 5000)?.code, MxStatus.SUCCESS);
  epA.close();
  epB.close();
});

test("a sync send a disconnect failed, whose frame the wire lost, is not resent into the pair's next connection", () => {
  // The next connection goes on in the same stream, which resends what was never
  // acknowledged: the sync send the program was told had failed arrived after all, then again
  // when the program sent it anew (a reviewer's PoC). Its frame now goes as a PATH frame.
  const { bridge, b, epA, epB, toB } = linkedPair();
  bridge.unplug(b);
  const plain = epA.isend(new Uint8Array([7, 7, 7, 7]), toB, 0, 3);
  const failed = epA.issend(new Uint8Array([1, 1, 1, 1]), toB, 0, 1);
  epA.disconnect(toB);
  assert.equal(epA.wait(plain, 0)?.code, MxStatus.SUCCESS, "an eager send completes as it goes in");
  assert.equal(epA.wait(failed, 0)?.code, MxStatus.ENDPOINT_CLOSED);
  bridge.plug(b);
  const again = epA.connect(0, epB.endpointId, KEY, 2000);
  const got3 = new Uint8Array(4);
  const r3 = epB.irecv(got3, 0, 3, ALL, ALL);
  assert.equal(epB.wait(r3, 5000)?.code, MxStatus.SUCCESS, "the eager send that said SUCCESS arrives");
  const got = [new Uint8Array(4), new Uint8Array(4)];
  const r1 = got.map((g) => epB.irecv(g, 0, 1, ALL, ALL));
  epA.issend(new Uint8Array([2, 2, 2, 2]), again, 0, 1);
  assert.equal(epB.wait(r1[0], 5000)?.code, MxStatus.SUCCESS);
  assert.deepEqual([...got[0]], [2, 2, 2, 2], "only the send made again arrives");
  assert.equal(epB.wait(r1[1], 300), undefined, "once");
  epB.cancel(r1[1]);
  epA.close();
  epB.close();
});

test("a stream kept past its failed partner gives up what it owed after FAILED_STREAM_KEEP_MS: its copies shrink to headers, and the pair's next connection goes on", () => {
  // A failed partner's stream is kept per address for the same incarnation to come back; what
  // it still owed was kept whole, a full window of copies (half a MiB) per address, for ever.
  const { bridge, b, epA, epB, toB } = linkedPair();
  const ab = toB[kPartner].ether as EtherPath;
  const engine = engineOf(epA);
  const ring = () => (ab.link as unknown as { ring: (Uint8Array | undefined)[] }).ring;
  bridge.unplug(b);
  const sent = [
    epA.isend(new Uint8Array(6000).fill(5), toB, 0, 3),
    epA.isend(new Uint8Array(6000).fill(6), toB, 0, 3),
  ];
  epA.disconnect(toB); // its wait for B's acks gives up (2 s): the partner fails owing both
  for (const s of sent)
    assert.equal(epA.wait(s, 0)?.code, MxStatus.SUCCESS, "eager sends complete as they go in");
  assert.equal(ab.link.unacked, 2);
  const bytes = () => ring().reduce((n, f) => n + (f?.length ?? 0), 0);
  assert.ok(bytes() >= 12000, `the copies kept whole (${bytes()} bytes)`);
  engine.expireOwing(performance.now());
  assert.ok(bytes() >= 12000, "kept whole within FAILED_STREAM_KEEP_MS");
  engine.expireOwing(performance.now() + FAILED_STREAM_KEEP_MS + 1);
  assert.equal(ab.link.unacked, 2, "their sequence numbers stay");
  assert.ok(bytes() <= 2 * PAYLOAD_AT, `the copies shrank to their headers (${bytes()} bytes)`);
  // B comes back: the next connection goes on in the stream, without the messages given up.
  bridge.plug(b);
  const again = epA.connect(0, epB.endpointId, KEY, 2000);
  assert.equal((again[kPartner].ether as EtherPath).link, ab.link, "the same stream goes on");
  const old = epB.irecv(new Uint8Array(6000), 0, 3, ALL, ALL);
  const got = new Uint8Array(4);
  const r = epB.irecv(got, 0, 4, ALL, ALL);
  epA.isend(new Uint8Array([4, 3, 2, 1]), again, 0, 4);
  assert.equal(epB.wait(r, 5000)?.code, MxStatus.SUCCESS, "the next connection's message arrives");
  // (In order: go-back-N delivers it only after the two given-up frames before it.)
  assert.deepEqual([...got], [4, 3, 2, 1]);
  assert.equal(epB.wait(old, 300), undefined, "the given-up messages do not arrive");
  epB.cancel(old);
  epA.close();
  epB.close();
});

test("past FAILED_STREAM_KEEP_MS a rendezvous's data still owed goes as the refusal of the peer's pull: its receive fails rather than waits", () => {
  const { bridge, b, epA, epB, toB } = linkedPair();
  const ab = toB[kPartner].ether as EtherPath;
  const engine = engineOf(epA);
  const big = 100_000;
  const r = epB.irecv(new Uint8Array(big), 0, 5, ALL, ALL);
  const s = epA.isend(new Uint8Array(big).fill(3), toB, 0, 5);
  epB.progress(true); // B takes the announcement and asks for the data (its PULL is in A's queue)
  bridge.unplug(b);
  for (let i = 0; i < 10; i++) epA.progress(true); // A streams the data into the cut wire
  const owedBefore = ab.link.unacked;
  assert.ok(owedBefore > 1, `A owes the data frames (${owedBefore})`);
  epA.disconnect(toB); // gives up after 2 s: the partner fails owing them
  assert.equal(epA.wait(s, 10)?.code, MxStatus.ENDPOINT_CLOSED);
  engine.expireOwing(performance.now() + FAILED_STREAM_KEEP_MS + 1);
  bridge.plug(b);
  const again = epA.connect(0, epB.endpointId, KEY, 2000);
  assert.equal((again[kPartner].ether as EtherPath).link, ab.link, "the same stream goes on");
  const done = epB.wait(r, 5000);
  // Kept whole, the data (100 KB of copies, 30 s after the failure) came after the reconnect.
  assert.equal(
    done?.code,
    MxStatus.ABORTED,
    "B's receive fails: the data was given up, and its pull refused",
  );
  assert.match(r.reason ?? "", /no longer has this rendezvous/);
  epA.close();
  epB.close();
});

test("a pull served in part when its puller failed ends refused: the peer taking the stream up again within 30 s does not wait for the rest for ever", () => {
  const { bridge, b, epA, epB, toB } = linkedPair();
  const big = 1_000_000; // more DATA frames than the stream's window
  const r = epB.irecv(new Uint8Array(big), 0, 6, ALL, ALL);
  const s = epA.isend(new Uint8Array(big).fill(2), toB, 0, 6);
  epB.progress(true); // B's PULL is in A's queue
  bridge.unplug(b);
  for (let i = 0; i < 10; i++) epA.progress(true); // a window of DATA into the cut wire
  epA.disconnect(toB); // gives up after 2 s: the partner fails, its pull served in part
  assert.equal(epA.wait(s, 10)?.code, MxStatus.ENDPOINT_CLOSED);
  bridge.plug(b);
  epA.connect(0, epB.endpointId, KEY, 2000); // within 30 s: the stream goes on
  assert.equal(
    epB.wait(r, 5000)?.code,
    MxStatus.ABORTED,
    "B's receive fails (it waited for ever for the rest)",
  );
  epA.close();
  epB.close();
});

/**
 * B pulls two 1 MB rendezvous from A at once; B's cable is pulled while the first pull's DATA
 * fill A's window (the second's none yet), and A's disconnect fails the partner (after 2 s):
 * both pulls cut short, the second's refusal with no room to go.
 */
function twoPullsCutShort() {
  const pair = linkedPair();
  const { bridge, b, epA, epB, toB } = pair;
  const big = 1_000_000;
  const r1 = epB.irecv(new Uint8Array(big), 0, 6, ALL, ALL);
  const r2 = epB.irecv(new Uint8Array(big), 0, 8, ALL, ALL);
  epA.isend(new Uint8Array(big).fill(2), toB, 0, 6);
  epA.isend(new Uint8Array(big).fill(3), toB, 0, 8);
  epB.progress(true); // both PULLs are in A's queue
  bridge.unplug(b);
  for (let i = 0; i < 10; i++) epA.progress(true); // the first pull's DATA fill the window
  assert.equal((toB[kPartner].ether as EtherPath).link.room, 0, "the window is full");
  epA.disconnect(toB);
  bridge.plug(b);
  return { ...pair, r1, r2 };
}

test("a pull its puller failed before any of its data went, the window full of another's, still ends refused when the stream is taken up again", () => {
  // At the failure the first pull's owed DATA frames become refusals, but the second had none
  // and there was no room to write its refusal: the peer taking the stream up again waited
  // for its data for ever (a reviewer's reading).
  const { epA, epB, r1, r2 } = twoPullsCutShort();
  epA.connect(0, epB.endpointId, KEY, 2000); // within 30 s: the stream goes on
  assert.equal(epB.wait(r1, 5000)?.code, MxStatus.ABORTED, "the first pull is refused");
  assert.equal(epB.wait(r2, 5000)?.code, MxStatus.ABORTED, "the second too (it waited for ever)");
  epA.close();
  epB.close();
});

test("a refusal queued at one failure and taken up survives a second failure before the window opened", () => {
  // A reviewer's PoC: the second failure's peerLost replaced the queue with its own (none),
  // and the peer's receive waited for ever.
  const { bridge, b, epA, epB, r1, r2 } = twoPullsCutShort(); // the second pull's refusal queued
  const toB2 = epA.connect(0, epB.endpointId, KEY, 2000); // taken up: the queue rides along
  assert.equal((toB2[kPartner].ether as EtherPath).ctlQueue?.length, 5, "its refusal is queued");
  bridge.unplug(b); // B goes quiet again before the window opened
  epA.disconnect(toB2); // the second failure
  bridge.plug(b);
  epA.connect(0, epB.endpointId, KEY, 2000);
  assert.equal(epB.wait(r1, 5000)?.code, MxStatus.ABORTED, "the first pull is refused");
  assert.equal(epB.wait(r2, 5000)?.code, MxStatus.ABORTED, "the second too (it waited for ever)");
  epA.close();
  epB.close();
});

/** What A keeps of its Ethernet peers: kept streams, and addresses in its peer table. */
function keptBy(ep: MxEndpoint): { streams: number; indexed: number } {
  const streams = (engineOf(ep) as unknown as { streams: Map<string, unknown> }).streams.size;
  const indexed = (ep as unknown as { partners: { index: Map<string, unknown> } }).partners.index.size;
  return { streams, indexed };
}

test("a peer whose endpoint closed is forgotten: its kept stream and its peer-table entry go, whoever had disconnected whom", () => {
  // A long-lived endpoint kept ~3 KB for every peer endpoint it ever had (a soak: a server of
  // 10,753 short-lived split-path clients, 35 MB): a stream and an index entry each, for good.
  for (const first of ["none", "a", "b"] as const) {
    const { epA, epB, toB, toA } = linkedPair();
    const got = new Uint8Array(4);
    const r = epB.irecv(got, 0, 1, ALL, ALL);
    epA.wait(epA.isend(new Uint8Array([1, 2, 3, 4]), toB, 0, 1), 2000);
    assert.equal(epB.wait(r, 2000)?.code, MxStatus.SUCCESS);
    for (let i = 0; i < 5; i++) {
      epA.progress(true);
      epB.progress(true);
    }
    if (first === "a") epA.disconnect(toB); // A keeps the stream for B to take up again
    if (first === "b") epB.disconnect(toA); // A's partner stays live: B may never say
    assert.deepEqual(keptBy(epA), { streams: 1, indexed: 1 }, `${first}: before B closes`);
    epB.close();
    for (let i = 0; i < 5; i++) epA.progress(true);
    assert.deepEqual(keptBy(epA), { streams: 0, indexed: 0 }, `${first}: B closed, A forgot it`);
    const w = epA.isend(new Uint8Array(4), toB, 0, 1);
    assert.notEqual(epA.wait(w, 100)?.code, MxStatus.SUCCESS, `${first}: the program's address stays dead`);
    epA.close();
  }
});

test("past FAILED_STREAM_KEEP_MS every DATA frame still owed is a refusal: the peer may hold the first ones already, its ack lost", () => {
  const { bridge, b, epA, epB, toB } = linkedPair();
  const engine = engineOf(epA);
  const r = epB.irecv(new Uint8Array(100_000), 0, 7, ALL, ALL);
  epA.isend(new Uint8Array(100_000).fill(4), toB, 0, 7);
  epB.progress(true); // B's PULL is in A's queue
  for (let i = 0; i < 10; i++) epA.progress(true); // A streams the DATA; B has not read it
  // B gets only the first three DATA frames, and A hears no ack for them.
  let data = 0;
  const kept = b.port.rx.filter((f) => frameType(f) !== MxoeType.Data || ++data <= 3);
  b.port.rx.length = 0;
  b.port.rx.push(...kept);
  bridge.unplug(b);
  epA.disconnect(toB);
  engine.expireOwing(performance.now() + FAILED_STREAM_KEEP_MS + 1);
  bridge.plug(b);
  epA.connect(0, epB.endpointId, KEY, 2000);
  // The first owed frame (a refusal, had only it been one) is a resend B drops: the fourth must refuse.
  assert.equal(epB.wait(r, 5000)?.code, MxStatus.ABORTED);
  epA.close();
  epB.close();
});

test("a stream kept owing for an incarnation of the peer that a newer one replaced is not kept owing any more", () => {
  // Each incarnation that failed owing frames stayed listed, with its copies, for 30 s: a peer
  // reopening its endpoint in a loop kept that many half-MiB windows alive (a reviewer's PoC: 50).
  const { bridge, b, epA, epB: first, toB } = linkedPair();
  const engine = engineOf(epA);
  const owing = () => (engine as unknown as { owing: unknown[] }).owing.length;
  let epB = first;
  let current = toB;
  for (let k = 0; k < 3; k++) {
    // A owes the current incarnation a frame it never acknowledges (it is cut off meanwhile).
    bridge.unplug(b);
    epA.isend(new Uint8Array(100).fill(k), current, 0, 1);
    bridge.plug(b);
    // A newer incarnation of B (same endpoint id, another session) connects to A: the old one fails.
    epB.close();
    const base = driver(2);
    epB = new MxEndpoint(
      { ...base, openEndpoint: (id, key) => ({ ...base.openEndpoint(id, key), session: 5000 + k }) },
      { key: KEY, ether: b.hub },
    );
    epB.connect(0, epA.endpointId, KEY, 2000);
    assert.equal(owing(), 0, `incarnation ${k}: the replaced stream is not kept owing`);
    current = epA.connect(0, epB.endpointId, KEY, 2000);
  }
  epA.close();
  epB.close();
});

test("mx_disconnect during a rendezvous we pull: the data on its way is waited for; past the linger, the sender hears we dropped it", () => {
  const big = new Uint8Array(100_000).fill(0x33);
  {
    // The sender answers: the pull ends within the disconnect's wait, and both sides complete.
    const { epA, epB, toB, toA } = linkedPair();
    const got = new Uint8Array(100_000);
    const r = epB.irecv(got, 0, 2, ALL, ALL);
    const s = epA.isend(big, toB, 0, 2);
    for (let i = 0; i < 20 && epB.counters.pulls === 0; i++) epB.progress(true);
    assert.equal(epB.counters.pulls, 1, "B pulls A's rendezvous");
    epB.disconnect(toA);
    assert.equal(epB.wait(r, 0)?.code, MxStatus.SUCCESS, "the receive under way completed");
    assert.ok(got.every((x) => x === 0x33));
    assert.equal(epA.wait(s, 2000)?.code, MxStatus.SUCCESS);
    epA.close();
    epB.close();
  }
  {
    // The sender computes through the whole wait: B drops the pull and tells it so. Before, A
    // streamed data B no longer took and its send failed only when its link timed out (10 s),
    // or never, had the pair connected again in the same stream.
    const { bridge, a, epA, epB, toB, toA } = linkedPair();
    bridge.hubs.splice(bridge.hubs.indexOf(a.hub), 1);
    const r = epB.irecv(new Uint8Array(100_000), 0, 2, ALL, ALL);
    const s = epA.isend(big, toB, 0, 2);
    for (let i = 0; i < 20 && epB.counters.pulls === 0; i++) epB.progress(true);
    epB.disconnect(toA);
    assert.equal(epB.wait(r, 0)?.code, MxStatus.ENDPOINT_CLOSED);
    assert.match(r.reason ?? "", /we disconnected from the sender/);
    bridge.hubs.push(a.hub);
    const st = epA.wait(s, 15_000);
    assert.equal(st?.code, MxStatus.ABORTED, `A's send: ${st?.codeName} (${s.reason})`);
    assert.match(s.reason ?? "", /the receiver ended the transfer/);
    epA.close();
    epB.close();
  }
});

test("a receive pulling from a peer whose endpoint then closes fails with the peer's reason", () => {
  // Pulls that a lost peer cut short completed with its status and no reason at all.
  const { a, epA, epB, toB } = linkedPair();
  // A never gets B's PULL (nor its resends, which A's closing linger would serve).
  const rx = a.port.rx;
  const push = rx.push.bind(rx);
  rx.push = (...frames: Uint8Array[]) => push(...frames.filter((f) => frameType(f) !== MxoeType.Pull));
  const r = epB.irecv(new Uint8Array(100_000), 0, 7, ALL, ALL);
  epA.isend(new Uint8Array(100_000), toB, 0, 7);
  epB.progress(true); // B matched A's RNDV and sent its PULL
  epA.close(); // A tells B it closed (NACK)
  const st = epB.wait(r, 2000);
  assert.equal(st?.codeName, "MX_STATUS_ENDPOINT_CLOSED");
  assert.equal(r.reason, "the peer endpoint is closed");
  epB.close();
});

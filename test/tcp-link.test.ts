/**
 * TCP links (src/nic/tcp-link.ts, tcp-handshake.ts, tcp-attach.ts): the handshake, framing
 * faults and back-pressure on bare links in this thread; authentication (a wrong key on either
 * side, a forged or replayed proof, idle sockets over the pending bound); then two NIC workers
 * (NICs 1 and 2) joined by a TCP link over loopback: a SEND crosses it, a garbage client is
 * dropped, and a link closed by the peer makes later SENDs complete with ENDPOINT_UNREACHABLE.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { after, before, test } from "node:test";
import type {
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  RegisterRegionReply,
} from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import {
  F_DEST_NIC,
  F_SRC_NIC,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  initFrame,
  setWord,
} from "../src/nic/frame.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import {
  logEvery,
  RECONNECT_FAST_FOR_MS,
  RECONNECT_GIVE_UP_MS,
  RECONNECT_MAX_MS,
  RECONNECT_SLOW_MS,
} from "../src/nic/tcp-attach.js";
import { TCP_HELLO_BYTES, TCP_LINK_MAGIC, TCP_LINK_VERSION } from "../src/nic/tcp-handshake.js";
import { type TcpLink, tcpLinkStats } from "../src/nic/tcp-link.js";
import { connectTcpLink, listenTcpLinks } from "../src/nic/tcp-link-setup.js";
import {
  Access,
  ANY_ENDPOINT,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_LENGTH,
  D_MATCH_LO,
  D_OPCODE,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DESC_WORDS,
  E_COOKIE,
  E_LENGTH,
  E_MATCH_LO,
  E_RECV_OFFSET,
  E_RECV_SPAN,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  Opcode,
  RECV_BYTES,
  RECV_OFFSET,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_SLEEPING,
  W_RQ_CONS,
  W_SQ_PROD,
} from "../src/nic/window.js";
import type { SyncCallClient } from "../src/xen/sync-call.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const logs: string[] = [];
const log = (m: string) => logs.push(m);

function frame(type: number, payload: number, src = 2, dest = 1): Uint8Array {
  const f = new Uint8Array(FRAME_HEADER_BYTES + payload);
  initFrame(f, type, payload);
  setWord(f, F_SRC_NIC, src);
  setWord(f, F_DEST_NIC, dest);
  for (let i = 0; i < payload; i++) f[FRAME_HEADER_BYTES + i] = i & 0xff;
  return f;
}

function helloBytes(nicId: number, version = TCP_LINK_VERSION, magic = TCP_LINK_MAGIC): Buffer {
  const b = Buffer.alloc(TCP_HELLO_BYTES);
  b.writeUInt32LE(magic, 0);
  b.writeUInt16LE(version, 4);
  b.writeUInt32LE(nicId, 8);
  b.writeUInt32LE(FRAME_MAX, 12);
  randomBytes(32).copy(b, 16);
  return b;
}

/** A raw client that sends `bytes` and resolves when the server drops it. */
function rawClient(port: number, bytes: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port }, () => s.write(bytes));
    s.on("error", () => {});
    s.resume(); // read the server's hello and the end that follows
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error("the server kept a bad client"));
    }, 2000);
    s.on("close", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

test("bare links: handshake, frames both ways, framing faults drop and count, version mismatch refused", async () => {
  const accepted: TcpLink[] = [];
  const server = await listenTcpLinks({
    nicId: 1,
    key: LINK_KEY,
    port: 0,
    host: HOST,
    log,
    onLink: (l) => accepted.push(l),
  });
  try {
    const c = await connectTcpLink({
      nicId: 2,
      host: HOST,
      port: server.port,
      timeoutMs: 2000,
      log,
      key: LINK_KEY,
    });
    assert.equal(c.peerNic, 1);
    await until(() => accepted.length === 1, "the accepted link");
    const s = accepted[0];
    assert.equal(s.peerNic, 2);
    const got: number[][] = [];
    s.onFrame((f) => got.push([f.length, f[FRAME_HEADER_BYTES + 5] ?? -1]));
    // A caller's buffer may be longer than the frame: only header + payload cross.
    const long = new Uint8Array(FRAME_HEADER_BYTES + 1000);
    long.set(frame(FrameType.Send, 10));
    assert.ok(c.send(long));
    assert.ok(c.send(frame(FrameType.SendAck, 0)));
    await until(() => got.length === 2, "two frames");
    assert.deepEqual(got, [
      [FRAME_HEADER_BYTES + 10, 5],
      [FRAME_HEADER_BYTES, -1],
    ]);

    // Back-pressure: a peer that does not read makes send() refuse; 'drain' brings onWritable.
    const tiny = await connectTcpLink({
      nicId: 3,
      key: LINK_KEY,
      host: HOST,
      port: server.port,
      highWaterMark: 64 * 1024,
      log,
    });
    await until(() => accepted.length === 2, "the second link");
    const slow = accepted[1];
    let frames = 0;
    slow.onFrame(() => frames++);
    (slow as unknown as { socket: net.Socket }).socket.pause();
    let writable = 0;
    tiny.onWritable(() => writable++);
    let sent = 0;
    while (tiny.send(frame(FrameType.Send, 32768, 3, 1)) && sent < 10000) sent++;
    assert.ok(sent < 10000, "send() pushed back");
    (slow as unknown as { socket: net.Socket }).socket.resume();
    await until(() => writable === 1 && frames === sent, "drain, onWritable and every frame");

    // Faults after the handshake: each drops that connection and is counted.
    const dropped0 = tcpLinkStats.connectionsDropped;
    const badLen = await connectTcpLink({ nicId: 4, host: HOST, port: server.port, log, key: LINK_KEY });
    const sock = (l: TcpLink) => (l as unknown as { socket: net.Socket }).socket;
    const lenPrefix = Buffer.alloc(4);
    lenPrefix.writeUInt32LE(1 << 30);
    sock(badLen).write(lenPrefix);
    const unknownType = await connectTcpLink({ nicId: 5, host: HOST, port: server.port, log, key: LINK_KEY });
    const u = frame(FrameType.Send, 0, 5, 1);
    u[0] = 99; // type byte
    const wire = Buffer.alloc(4 + u.length);
    wire.writeUInt32LE(u.length);
    wire.set(u, 4);
    sock(unknownType).write(wire);
    const truncated = await connectTcpLink({ nicId: 6, host: HOST, port: server.port, log, key: LINK_KEY });
    const half = Buffer.from(wire.subarray(0, 30));
    half.writeUInt32LE(u.length);
    sock(truncated).end(half);
    await until(() => tcpLinkStats.connectionsDropped - dropped0 === 3, "three dropped connections");
    assert.ok(logs.some((m) => /frame length 1073741824/.test(m)));
    assert.ok(logs.some((m) => /unknown frame type 99/.test(m)));
    assert.ok(logs.some((m) => /truncated frame/.test(m)));

    // A peer speaking another version: the client is told why; the server logs and drops it.
    const rejected0 = tcpLinkStats.handshakesRejected;
    await rawClient(server.port, helloBytes(9, 1));
    await assert.rejects(
      connectTcpLink({ nicId: 1, host: HOST, port: server.port, log, key: LINK_KEY }),
      /handshake failed: peer claims this NIC's own id 1/,
    );
    await until(() => tcpLinkStats.handshakesRejected - rejected0 >= 2, "two refused handshakes");
    assert.ok(
      logs.some((m) =>
        new RegExp(
          `protocol version mismatch: peer speaks version 1, this NIC speaks ${TCP_LINK_VERSION}`,
        ).test(m),
      ),
    );
    assert.equal(accepted.length, 5, "no bad peer was handed over");
    for (const l of [c, tiny, badLen, unknownType, truncated]) l.close();
  } finally {
    await server.close();
  }
  // Refused and timed out connections reject clearly.
  await assert.rejects(
    connectTcpLink({ nicId: 2, host: HOST, port: server.port, timeoutMs: 1000, key: LINK_KEY }),
    /ECONNREFUSED/,
  );
  const mute = net.createServer(() => {});
  await new Promise<void>((r) => mute.listen(0, HOST, r));
  try {
    const port = (mute.address() as net.AddressInfo).port;
    await assert.rejects(
      connectTcpLink({ nicId: 2, host: HOST, port, timeoutMs: 200, key: LINK_KEY }),
      /no handshake within 200 ms/,
    );
  } finally {
    mute.close();
  }
  // A server speaking another version: the client rejects with the reason.
  const v2 = net.createServer((s) => s.write(helloBytes(8, 7)));
  await new Promise<void>((r) => v2.listen(0, HOST, r));
  try {
    const port = (v2.address() as net.AddressInfo).port;
    await assert.rejects(
      connectTcpLink({ nicId: 2, host: HOST, port, timeoutMs: 1000, key: LINK_KEY }),
      /version mismatch: peer speaks version 7/,
    );
  } finally {
    v2.close();
  }
});

test("authentication: a wrong key on either side, a forged or replayed proof are refused and counted; idle sockets over the bound drop the oldest", async () => {
  const accepted: TcpLink[] = [];
  const fields: { reason?: string; remote?: string }[] = [];
  const server = await listenTcpLinks({
    nicId: 1,
    port: 0,
    host: HOST,
    key: LINK_KEY,
    log: (m, f) => {
      logs.push(m);
      if (f) fields.push(f);
    },
    onLink: (l) => accepted.push(l),
    maxPendingHandshakes: 8,
  });
  try {
    const auth0 = tcpLinkStats.authFailures;
    // The client holds another key: the server refuses it; the client is told the server closed.
    await assert.rejects(
      connectTcpLink({ nicId: 2, host: HOST, port: server.port, timeoutMs: 2000, key: randomBytes(32) }),
      /closed the connection instead of proving the cluster key.*different cluster keys/,
    );
    await until(() => tcpLinkStats.authFailures === auth0 + 1, "the refusal counted");
    const refusal = fields.find((f) => /authentication failed/.test(f.reason ?? ""));
    assert.match(refusal?.remote ?? "", /^127\.0\.0\.1:\d+$/);
    // A server with another key: the client refuses it (after proving itself, it gets a wrong proof).
    const other = await listenTcpLinks({
      nicId: 3,
      port: 0,
      host: HOST,
      key: randomBytes(32),
      log: () => {},
      onLink: () => assert.fail("the other cluster's NIC must not accept us"),
    });
    try {
      await assert.rejects(
        connectTcpLink({ nicId: 2, host: HOST, port: other.port, timeoutMs: 2000, key: LINK_KEY, log }),
        /handshake failed: (authentication failed|NIC 3 closed)/,
      );
    } finally {
      await other.close();
    }
    // Keys shorter than 32 bytes are refused before anything is sent.
    assert.throws(
      () => connectTcpLink({ nicId: 2, host: HOST, port: server.port, key: randomBytes(16) }),
      /key must be the cluster key, a Uint8Array of at least 32 bytes/,
    );

    // A forged proof, and a real client's hello and proof recorded by a relay and replayed.
    const replayAs = async (hello: Buffer, proof: Buffer): Promise<void> => {
      const s = net.connect({ host: HOST, port: server.port });
      s.on("error", () => {});
      let got = Buffer.alloc(0);
      await new Promise<void>((resolve) => {
        s.on("data", (d: Buffer) => {
          const first = got.length < TCP_HELLO_BYTES;
          got = Buffer.concat([got, d]);
          if (first && got.length >= TCP_HELLO_BYTES) s.write(proof);
        });
        s.on("close", () => resolve());
        s.write(hello);
      });
      assert.equal(got.length, TCP_HELLO_BYTES, "the server sent its hello and nothing more (no proof)");
    };
    const recorded: Buffer[] = [];
    const relay = net.createServer((c) => {
      const up = net.connect({ host: HOST, port: server.port });
      c.on("data", (d: Buffer) => {
        recorded.push(Buffer.from(d));
        up.write(d);
      });
      up.on("data", (d: Buffer) => c.write(d));
      for (const x of [c, up]) x.on("error", () => {});
      c.on("close", () => up.destroy());
      up.on("close", () => c.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, HOST, r));
    const relayed = await connectTcpLink({
      nicId: 7,
      host: HOST,
      port: (relay.address() as net.AddressInfo).port,
      key: LINK_KEY,
    });
    await until(() => accepted.length === 1, "the relayed (real) link");
    relayed.close();
    relay.close();
    const sent = Buffer.concat(recorded);
    const auth1 = tcpLinkStats.authFailures;
    await replayAs(helloBytes(7), randomBytes(32));
    await replayAs(sent.subarray(0, TCP_HELLO_BYTES), sent.subarray(TCP_HELLO_BYTES, TCP_HELLO_BYTES + 32));
    await until(() => tcpLinkStats.authFailures === auth1 + 2, "the forged and the replayed proof refused");
    assert.equal(accepted.length, 1, "no unauthenticated link was handed over");

    // 20 idle sockets against a bound of 8: the oldest are dropped at once; a real peer still links.
    const evicted0 = tcpLinkStats.evicted;
    const idle: net.Socket[] = [];
    const closed: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) {
      const s = net.connect({ host: HOST, port: server.port });
      s.on("error", () => {});
      s.resume();
      closed.push(new Promise((r) => s.on("close", () => r())));
      idle.push(s);
      await new Promise((r) => s.once("connect", r));
    }
    await until(() => tcpLinkStats.evicted - evicted0 >= 12, "the oldest idle sockets dropped");
    const real = await connectTcpLink({
      nicId: 2,
      host: HOST,
      port: server.port,
      timeoutMs: 2000,
      key: LINK_KEY,
    });
    await until(() => accepted.length === 2, "the real peer's link");
    assert.equal(accepted[1].peerNic, 2);
    // The rest go at the handshake deadline.
    await Promise.all(closed);
    real.close();
  } finally {
    await server.close();
  }
});

// ---- two NIC workers ------------------------------------------------------------------------

class Owner {
  readonly w: Int32Array;
  readonly recv: Uint8Array;
  prod = 0;
  eqCons = 0;
  rqCons = 0;
  constructor(
    readonly ctl: SyncCallClient<NicControlRequest>,
    readonly ep: OpenEndpointReply,
  ) {
    this.w = new Int32Array(ep.window);
    this.recv = new Uint8Array(ep.window, RECV_OFFSET, RECV_BYTES);
  }
  post(d: Record<number, number>): void {
    const base = SQ_OFFSET / 4 + (this.prod % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) this.w[base + i] = d[i] ?? 0;
    this.prod++;
    Atomics.store(this.w, W_SQ_PROD, this.prod);
    this.poke();
  }
  poke(): void {
    if (Atomics.load(this.w, W_NIC_SLEEPING) === 1) Atomics.notify(this.w, W_SQ_PROD);
  }
  async nextEvent(timeoutMs = 2000): Promise<number[]> {
    await until(() => Atomics.load(this.w, W_EQ_PROD) !== this.eqCons, "an event", timeoutMs);
    const base = EQ_OFFSET / 4 + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
    const words = Array.from(this.w.subarray(base, base + EVENT_WORDS), (v) => v >>> 0);
    this.eqCons++;
    Atomics.store(this.w, W_EQ_CONS, this.eqCons);
    this.poke();
    return words;
  }
  release(span: number): void {
    this.rqCons += span;
    Atomics.store(this.w, W_RQ_CONS, this.rqCons);
    this.poke();
  }
}

function expectEvent(ev: number[], type: number, status: number, what: string): void {
  assert.equal(ev[E_TYPE] & 0xffff, type, `${what}: event type`);
  assert.equal(
    ev[E_TYPE] >>> 16,
    status,
    `${what}: ${mxStatusName(ev[E_TYPE] >>> 16)}, expected ${mxStatusName(status)}`,
  );
}

let nic1: NicDevice;
let nic2: NicDevice;
before(async () => {
  [nic1, nic2] = await Promise.all([NicDevice.start({ nicId: 1 }), NicDevice.start({ nicId: 2 })]);
});
after(async () => {
  await Promise.all([nic1?.stop(), nic2?.stop()]);
});

test("two NICs over a TCP link: SEND and ACK cross it, a garbage client is dropped, a closed link makes SENDs UNREACHABLE", async () => {
  const ctl1 = control(nic1);
  const ctl2 = control(nic2);
  const port = await freePort();
  await nic2.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  await assert.rejects(
    nic1.attachLink({ kind: "tcp", host: HOST, port: 1, timeoutMs: 1000, key: LINK_KEY }),
    /ECONNREFUSED/,
  );
  await nic1.attachLink({ kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY });
  const links = (ctl: SyncCallClient<NicControlRequest>) => ctl.call<NicInfo>({ op: "info" }).links;
  assert.deepEqual(links(ctl1), [2]);
  await until(() => links(ctl2).includes(1), "NIC 2 attached the accepted link");

  const a = new Owner(
    ctl1,
    ctl1.call<OpenEndpointReply>({ op: "open_endpoint", owner: "a", endpointId: ANY_ENDPOINT, key: 1 }),
  );
  const b = new Owner(
    ctl2,
    ctl2.call<OpenEndpointReply>({ op: "open_endpoint", owner: "b", endpointId: ANY_ENDPOINT, key: 2 }),
  );
  const mem = new SharedArrayBuffer(64 * 1024);
  const src = new Uint8Array(mem);
  for (let i = 0; i < src.length; i++) src[i] = (i * 7 + 3) & 0xff;
  const region = ctl1.call<RegisterRegionReply>({
    op: "register_region",
    endpointId: a.ep.endpointId,
    memory: mem,
    runs: [{ offset: 0, length: mem.byteLength }],
    access: Access.LocalRead,
  });
  const sendDesc = (cookie: number, length: number, offset = 0) =>
    a.post({
      [D_OPCODE]: Opcode.Send,
      [D_COOKIE]: cookie,
      [D_SRC_REGION]: region.regionId,
      [D_SRC_OFFSET]: offset,
      [D_LENGTH]: length,
      [D_DEST_NIC]: 2,
      [D_DEST_ENDPOINT]: b.ep.endpointId,
      [D_DEST_SESSION]: b.ep.session,
      [D_MATCH_LO]: cookie,
    });
  const roundTrip = async (cookie: number, length: number, offset: number) => {
    sendDesc(cookie, length, offset);
    const r = await b.nextEvent();
    expectEvent(r, EventType.Recv, MxStatus.SUCCESS, `recv ${cookie}`);
    assert.deepEqual(
      [r[E_SRC_NIC], r[E_SRC_ENDPOINT], r[E_MATCH_LO], r[E_LENGTH]],
      [1, a.ep.endpointId, cookie, length],
    );
    assert.deepEqual(
      b.recv.slice(r[E_RECV_OFFSET], r[E_RECV_OFFSET] + length),
      src.slice(offset, offset + length),
    );
    b.release(r[E_RECV_SPAN]);
    const d = await a.nextEvent();
    expectEvent(d, EventType.SendDone, MxStatus.SUCCESS, `send done ${cookie}`);
    assert.deepEqual([d[E_COOKIE], d[E_LENGTH]], [cookie, length]);
  };
  await roundTrip(1, 100, 3);
  await roundTrip(2, 32768, 11);

  // Garbage and a wrong version at NIC 2's listener: dropped; the link and the NIC carry on.
  const garbage = Buffer.alloc(200);
  for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 131 + 17) & 0xff;
  await rawClient(port, garbage);
  await rawClient(port, helloBytes(5, 9));
  assert.deepEqual(links(ctl2), [1]);
  await roundTrip(3, 5000, 0);
  const c2 = nic2.counters().global;
  assert.equal(c2.frames_bad, 0);

  // NIC 2 drops the link: NIC 1 sees the close, detaches, and a later SEND is UNREACHABLE.
  await nic2.detachLink(1);
  const t0 = performance.now();
  await until(() => links(ctl1).length === 0, "NIC 1 notices the close");
  sendDesc(4, 10);
  const u = await a.nextEvent(2000);
  expectEvent(u, EventType.SendDone, MxStatus.ENDPOINT_UNREACHABLE, "after the close");
  assert.equal(u[E_COOKIE], 4);
  assert.ok(performance.now() - t0 < 2000, "within 2 s");

  // The listener still accepts: reconnecting restores the path.
  await nic1.attachLink({ kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY });
  await until(() => links(ctl2).includes(1), "NIC 2 re-attached");
  await roundTrip(5, 64, 1);
  await nic1.detachLink(2);
  await until(() => links(ctl2).length === 0, "NIC 2 notices the local close");
});

test("a peer gone for good costs a few hundred connections and a few log lines in all, then is given up", () => {
  // Reconnection is retried once a second (RECONNECT_MAX_MS) for RECONNECT_FAST_FOR_MS, then
  // once every RECONNECT_SLOW_MS, and given up RECONNECT_GIVE_UP_MS after the drop (before:
  // once a second for as long as the host ran). test/tcp-reconnect-bound.test.ts runs it.
  const logged = (from: number, to: number) => {
    let n = 0;
    for (let a = from; a <= to; a++) if (a <= 3 || a % logEvery(a) === 0) n++;
    return n;
  };
  assert.equal(logged(1, 10), 4, "the first attempts, then the tenth");
  const attempts =
    Math.ceil(RECONNECT_FAST_FOR_MS / RECONNECT_MAX_MS) +
    Math.ceil((RECONNECT_GIVE_UP_MS - RECONNECT_FAST_FOR_MS) / RECONNECT_SLOW_MS);
  assert.ok(attempts <= 400, `${attempts} connections to a dead peer in all`);
  // The failures logged, then the line that says it slows down and the one that gives up.
  const lines = logged(1, attempts) + 2;
  assert.ok(lines <= 20, `${lines} lines in all`);
  assert.ok(RECONNECT_FAST_FOR_MS >= 60_000, "a restart or a blip is retried fast for minutes");
  assert.ok(RECONNECT_GIVE_UP_MS <= 2 * 3_600_000, "a dead peer is forgotten within hours, not weeks");
});

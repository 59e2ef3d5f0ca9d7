/**
 * The two connections of a TCP link (src/nic/tcp-link.ts, tcp-handshake.ts): the bulk
 * connection is authenticated exactly as the main one and names the main connection it
 * belongs to. An impostor on a bulk connection (no key, a forged proof), a key holder's bulk
 * connection that names no waiting main connection, and a main connection whose bulk
 * connection never comes are refused and counted, and no link is handed over; garbage on
 * either connection after the handshake (the wrong kind of frame, a credit or goodbye on
 * the bulk connection) drops the link and is counted, never thrown. Real sockets on
 * 127.0.0.1, bare links in this thread.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { F_LENGTH, FRAME_HEADER_BYTES, FrameType } from "../src/nic/frame.js";
import { Handshake, LANE_BULK, LANE_MAIN } from "../src/nic/tcp-handshake.js";
import { type TcpLink, tcpLinkStats } from "../src/nic/tcp-link.js";
import { connectTcpLink, listenTcpLinks } from "../src/nic/tcp-link-setup.js";
import { SEND_MAX } from "../src/nic/window.js";
import { linkFrame, onWire } from "./helpers/link-frames.js";
import { until } from "./helpers/until.js";

const KEY = randomBytes(32);
const HOST = "127.0.0.1";
const logs: string[] = [];
const log = (m: string) => logs.push(m);

const wire = (type: number, payload: number) => onWire(linkFrame(type, payload));

/** NIC 1's listener, collecting every link it hands over. */
async function listenAccepting(handshakeTimeoutMs?: number) {
  const accepted: TcpLink[] = [];
  const server = await listenTcpLinks({
    nicId: 1,
    key: KEY,
    port: 0,
    host: HOST,
    log,
    onLink: (l) => accepted.push(l),
    handshakeTimeoutMs,
  });
  return { server, accepted };
}

/** Dials the listener by hand: a handshake on `lane` with `key` and `bind`; resolves with the socket once it is done. */
async function dialRaw(port: number, key: Buffer, lane: number, bind?: Buffer) {
  const socket = net.connect({ host: HOST, port });
  socket.on("error", () => {});
  await new Promise((r) => socket.once("connect", r));
  const h = await new Handshake(socket, "dial", 2, key, 2000, 2000, lane, bind).done;
  const closed = new Promise<void>((r) => socket.once("close", () => r()));
  socket.resume();
  return { socket, h, closed };
}

test("the bulk connection: an impostor, a bulk connection for no main one, a main one without its bulk are refused and counted", async () => {
  const { server, accepted } = await listenAccepting(300);
  try {
    // A real link first: both connections up, frames cross.
    const c = await connectTcpLink({ nicId: 2, host: HOST, port: server.port, key: KEY, log });
    await until(() => accepted.length === 1, "the real link");
    const mainOf = (l: TcpLink) => (l as unknown as { socket: net.Socket }).socket;
    const bulkOf = (l: TcpLink) => (l as unknown as { bulk: net.Socket }).bulk;
    assert.notEqual(mainOf(c).localPort, bulkOf(c).localPort, "two connections");

    // An impostor without the key on the bulk lane, naming the real link's main connection.
    const auth0 = tcpLinkStats.authFailures;
    const rejected0 = tcpLinkStats.handshakesRejected;
    await assert.rejects(
      dialRaw(server.port, randomBytes(32), LANE_BULK, randomBytes(32)),
      /closed the connection/,
    );
    await until(() => tcpLinkStats.authFailures === auth0 + 1, "the impostor's proof refused");

    // A key holder's bulk connection that names no main connection waiting for one.
    const stray = await dialRaw(server.port, KEY, LANE_BULK, randomBytes(32));
    await stray.closed;
    await until(() => tcpLinkStats.handshakesRejected === rejected0 + 2, "the stray bulk connection refused");
    assert.ok(
      logs.some((m) => /a bulk connection from NIC 2 for no main connection that waits for one/.test(m)),
    );

    // A main connection whose bulk connection never comes: dropped at the deadline.
    const lone = await dialRaw(server.port, KEY, LANE_MAIN);
    await lone.closed;
    assert.ok(logs.some((m) => /NIC 2 opened no bulk connection within 300 ms/.test(m)));
    assert.equal(tcpLinkStats.handshakesRejected, rejected0 + 3);

    // A bulk connection cannot join a main connection that was already paired.
    const late = await dialRaw(server.port, KEY, LANE_BULK, Buffer.alloc(32));
    await late.closed;
    assert.equal(tcpLinkStats.handshakesRejected, rejected0 + 4);

    assert.equal(accepted.length, 1, "no other link was handed over");
    // The real link still carries frames both ways.
    const got: number[] = [];
    accepted[0].onFrame((f) => got.push(f.length));
    assert.ok(c.send(new Uint8Array(wire(FrameType.Send, 8).subarray(4))));
    await until(() => got.length === 1, "a frame on the real link");
    assert.ok(!c.isClosed && !accepted[0].isClosed);
    c.close();
  } finally {
    await server.close();
  }
});

test("garbage on either connection after the handshake drops the link and is counted", async () => {
  const { server, accepted } = await listenAccepting();
  const cases: [string, (l: TcpLink) => void, RegExp][] = [
    [
      "a SEND on the bulk connection",
      (l) => (l as unknown as { bulk: net.Socket }).bulk.write(wire(FrameType.Send, 8)),
      /a frame of type \d+ on the bulk connection/,
    ],
    [
      "a credit on the bulk connection",
      (l) => (l as unknown as { bulk: net.Socket }).bulk.write(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])),
      /length prefix 1 on the bulk connection/,
    ],
    [
      "a goodbye on the bulk connection",
      (l) => (l as unknown as { bulk: net.Socket }).bulk.write(Buffer.alloc(4)),
      /length prefix 0 on the bulk connection/,
    ],
    [
      "pull data on the main connection",
      (l) => (l as unknown as { socket: net.Socket }).socket.write(wire(FrameType.PullReply, 64)),
      /pull data on the main connection/,
    ],
    [
      "a frame cut off by the bulk connection's end",
      (l) => (l as unknown as { bulk: net.Socket }).bulk.end(wire(FrameType.PullReply, 64).subarray(0, 30)),
      /truncated frame at the close of the bulk connection/,
    ],
    // Frames longer than a read, whose header the link checks before their payload has come
    // (they would go to onPullData in pieces).
    [
      "a SEND longer than a read on the bulk connection",
      (l) => (l as unknown as { bulk: net.Socket }).bulk.write(wire(FrameType.Send, SEND_MAX)),
      /a frame of type \d+ on the bulk connection/,
    ],
    [
      "pull data longer than a read whose header claims more than its frame",
      (l) => {
        const w = wire(FrameType.PullReply, SEND_MAX - 1);
        w.writeUInt32LE(SEND_MAX, 4 + 4 * F_LENGTH);
        (l as unknown as { bulk: net.Socket }).bulk.write(w);
      },
      /checkFrame refuses/,
    ],
    [
      "pull data longer than a read with a bad magic",
      (l) => {
        const w = wire(FrameType.PullReply, SEND_MAX);
        w.writeUInt32LE(0xdeadbeef, 4);
        (l as unknown as { bulk: net.Socket }).bulk.write(w);
      },
      /checkFrame refuses/,
    ],
    [
      "a frame cut off in its header by the bulk connection's end",
      (l) =>
        (l as unknown as { bulk: net.Socket }).bulk.end(wire(FrameType.PullReply, SEND_MAX).subarray(0, 30)),
      /truncated frame at the close of the bulk connection/,
    ],
  ];
  try {
    for (const [what, attack, reason] of cases) {
      const dropped0 = tcpLinkStats.connectionsDropped;
      const n = accepted.length;
      const c = await connectTcpLink({ nicId: 2, host: HOST, port: server.port, key: KEY, log });
      await until(() => accepted.length === n + 1, `the link for ${what}`);
      const s = accepted[n];
      let frames = 0;
      s.onFrame(() => frames++);
      s.onPullData(() => frames++);
      attack(c);
      await until(() => s.isClosed, `${what}: the link dropped`);
      assert.equal(tcpLinkStats.connectionsDropped, dropped0 + 1, `${what}: counted`);
      assert.match(s.closeReason ?? "", reason, what);
      assert.equal(frames, 0, `${what}: nothing was delivered, whole or in pieces`);
      await until(() => c.isClosed, `${what}: the other end sees the link go`);
      assert.equal(c.goodbye, false, `${what}: not a goodbye (the dialer reconnects)`);
    }
  } finally {
    await server.close();
  }
});

test("a goodbye after bulk: the bulk sent before it is delivered, then the link ends as detached", async () => {
  const { server, accepted } = await listenAccepting();
  try {
    const c = await connectTcpLink({ nicId: 2, host: HOST, port: server.port, key: KEY, log });
    await until(() => accepted.length === 1, "the link");
    const s = accepted[0];
    let bulk = 0;
    s.onFrame((f) => {
      if (f.length > FRAME_HEADER_BYTES) bulk++;
    });
    const reply = new Uint8Array(wire(FrameType.PullReply, 4096).subarray(4));
    for (let i = 0; i < 8; i++) assert.ok(c.send(reply));
    c.close();
    await until(() => s.isClosed, "the link closed");
    assert.equal(s.goodbye, true);
    assert.equal(s.closeReason, "detached by the peer");
    assert.equal(bulk, 8, "every bulk frame sent before the goodbye");
  } finally {
    await server.close();
  }
});

test("a goodbye read after the bulk connection's end still counts: the peer left on purpose", async () => {
  // The peer (a thread of its own) writes its last 64 KiB of bulk, then the goodbye on the main
  // connection, then ends the bulk connection and the main one, while this side's thread is
  // busy: all of it is read in one turn, and a full read of bulk goes on to the bulk's end
  // before the main connection is looked at. A goodbye taken for a crash makes a dialer
  // reconnect to a peer that left on purpose.
  const { server, accepted } = await listenAccepting();
  const payload = 32 * 1024 - 4 - FRAME_HEADER_BYTES; // two frames, 64 KiB on the wire: one full read
  const bulk = Buffer.concat([wire(FrameType.PullReply, payload), wire(FrameType.PullReply, payload)]);
  const peer = new Worker(
    `const { workerData, parentPort } = require("node:worker_threads");
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    (async () => {
      const { connectTcpLink } = await import(workerData.setup);
      const c = await connectTcpLink({ nicId: 2, host: "127.0.0.1", port: workerData.port, key: Buffer.from(workerData.key), log: () => {} });
      parentPort.postMessage("ready");
      parentPort.once("message", async () => {
        c.bulk.write(Buffer.from(workerData.bulk));
        await sleep(20);
        c.socket.write(Buffer.alloc(4));
        await sleep(20);
        c.bulk.end();
        await sleep(20);
        c.socket.end();
        await sleep(100);
        parentPort.postMessage("done");
      });
    })();`,
    {
      eval: true,
      workerData: {
        setup: new URL("../src/nic/tcp-link-setup.js", import.meta.url).href,
        port: server.port,
        key: KEY,
        bulk,
      },
    },
  );
  try {
    const next = () => new Promise((r) => peer.once("message", r));
    await next();
    await until(() => accepted.length === 1, "the link");
    const s = accepted[0];
    let frames = 0;
    s.onFrame(() => frames++);
    await new Promise((r) => setTimeout(r, 20));
    const done = next();
    peer.postMessage("go");
    const busyUntil = performance.now() + 150;
    while (performance.now() < busyUntil);
    await until(() => s.isClosed, "the link closed", 10_000);
    assert.equal(frames, 2, "the bulk sent before the goodbye");
    assert.equal(s.closeReason, "detached by the peer");
    assert.equal(s.goodbye, true);
    await done;
  } finally {
    await peer.terminate();
    await server.close();
  }
});

test("pull data begun before the receiver took pieces is finished whole, and checked whole", async () => {
  // A link is read before whoever gets it sets its callbacks (a listener that holds a link, as
  // tcp-attach.ts does, parses what came with the handshake when it lets it go). A frame begun
  // then must not reach onPullData from its middle: its header was never checked there, and
  // the receiver would never see its first piece.
  const { server, accepted } = await listenAccepting();
  try {
    for (const bad of [true, false]) {
      const n = accepted.length;
      const c = await connectTcpLink({ nicId: 2, host: HOST, port: server.port, key: KEY, log });
      await until(() => accepted.length === n + 1, "the link");
      const s = accepted[n];
      const f = linkFrame(FrameType.PullReply, 5000);
      if (bad) Buffer.from(f.buffer).writeUInt32LE(0xdeadbeef, 0);
      const bytes = onWire(f);
      (c as unknown as { bulkInFlight: number }).bulkInFlight += bytes.length;
      const bulk = (c as unknown as { bulk: net.Socket }).bulk;
      const cut = 4 + FRAME_HEADER_BYTES + 100;
      bulk.write(bytes.subarray(0, cut));
      await until(
        () => (s as unknown as { bulkRx: { frameGot: number } }).bulkRx.frameGot === cut - 4,
        "the start read",
      );
      const got: string[] = [];
      s.onFrame((frame) => got.push(`whole ${frame.length}`));
      s.onPullData((_h, p, at) => got.push(`piece at ${at} of ${p.length}`));
      const dropped0 = tcpLinkStats.connectionsDropped;
      bulk.write(bytes.subarray(cut));
      if (bad) {
        await until(() => s.isClosed, "the link dropped");
        assert.match(s.closeReason ?? "", /checkFrame refuses/);
        assert.equal(tcpLinkStats.connectionsDropped, dropped0 + 1);
        assert.deepEqual(got, []);
      } else {
        await until(() => got.length === 1, "the frame");
        assert.deepEqual(got, [`whole ${FRAME_HEADER_BYTES + 5000}`]);
        assert.ok(!s.isClosed);
        c.close();
      }
    }
  } finally {
    await server.close();
  }
});

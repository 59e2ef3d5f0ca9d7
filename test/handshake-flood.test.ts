/**
 * Connections without the key against honest handshakes (src/nic/pending-handshakes.ts): both
 * listeners — the NIC's link port and a host's control port — hold a bounded number of
 * connections in the handshake and drop one when a new one comes. Before, the link port
 * dropped simply the oldest and the control port the oldest of the busiest /32, so idle
 * connections opened fast from 127.0.x.y (review finding F3: ~6,000 a second) dropped an
 * honest peer's handshake between its hello and its proof: with a 10 ms round trip, 76 of 90
 * links and 25 of 90 control handshakes failed.
 *
 * The honest side here goes step by step, and the flood comes while it waits at the proof
 * step; nothing depends on how fast anything runs. Every client is on loopback: the honest
 * one from 127.0.0.1, the flood spread over 127.0.x.y as the finding's PoC did.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { controlProof, randomClusterKey } from "../src/cluster/auth.js";
import { WIRE_VERSION } from "../src/cluster/wire.js";
import { addressBlock, handshakeBlock } from "../src/nic/address-block.js";
import { PendingHandshakes } from "../src/nic/pending-handshakes.js";
import { TCP_HELLO_BYTES } from "../src/nic/tcp-handshake.js";
import { type TcpLink, tcpLinkStats } from "../src/nic/tcp-link.js";
import { connectTcpLink, listenTcpLinks } from "../src/nic/tcp-link-setup.js";
import { startLocalDaemon } from "./helpers/daemon.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { until } from "./helpers/until.js";

const HOST = "127.0.0.1";
/** Far above any step here: the handshake deadline must not be what a test meets. */
const SLOW_MS = 60_000;

/** The i-th flood source, spread over 127.0.x.y (each its own /32). */
const floodAddress = (i: number) => `127.0.${1 + (i % 200)}.${2 + Math.floor(i / 200)}`;

/** An idle connection from `localAddress` that sends nothing; `closed` once the listener drops it. */
class Idle {
  closed = false;
  received = 0;
  readonly socket: net.Socket;
  constructor(port: number, localAddress: string) {
    this.socket = net.connect({ host: HOST, port, localAddress });
    this.socket.on("data", (d: Buffer) => {
      this.received += d.length;
    });
    this.socket.on("close", () => {
      this.closed = true;
    });
    this.socket.on("error", () => {});
  }
}

/**
 * A relay in front of a listener that passes what its clients send at once but holds what the
 * listener answers until the test releases that connection: a client's handshake stops at the
 * step where it waits for the listener, for as long as the test wants.
 */
class StepRelay {
  readonly conns: { sent: number; held: Buffer[]; heldBytes: number; release: () => void }[] = [];
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();

  private constructor(upstreamPort: number) {
    this.server = net.createServer((client) => {
      const up = net.connect({ host: HOST, port: upstreamPort, localAddress: HOST });
      for (const s of [client, up]) {
        this.sockets.add(s);
        s.on("error", () => {});
      }
      let released = false;
      let upEnded = false;
      const conn = {
        sent: 0,
        held: [] as Buffer[],
        heldBytes: 0,
        release: () => {
          released = true;
          for (const b of conn.held) client.write(b);
          if (upEnded) client.end();
        },
      };
      this.conns.push(conn);
      client.on("data", (d: Buffer) => {
        conn.sent += d.length;
        up.write(d);
      });
      up.on("data", (d: Buffer) => {
        if (released) client.write(d);
        else {
          conn.held.push(d);
          conn.heldBytes += d.length;
        }
      });
      up.on("close", () => {
        upEnded = true;
        if (released) client.end();
      });
      client.on("close", () => up.destroy());
    });
  }

  static async open(upstreamPort: number): Promise<StepRelay & { port: number }> {
    const r = new StepRelay(upstreamPort);
    await new Promise<void>((res) => r.server.listen(0, HOST, res));
    return Object.assign(r, { port: (r.server.address() as net.AddressInfo).port });
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

test("handshake blocks: this machine is one block, IPv4 by /24, IPv6 by /48; the per-address unit is unchanged", () => {
  for (const ip of ["127.0.0.1", "127.0.5.9", "127.200.1.1", "::ffff:127.0.0.2", "::1"])
    assert.equal(handshakeBlock(ip), "loopback", ip);
  assert.equal(handshakeBlock("192.0.2.77"), "192.0.2.0/24");
  assert.equal(handshakeBlock("::ffff:192.0.2.1"), "192.0.2.0/24");
  assert.equal(handshakeBlock("2001:db8:1:2::5"), "2001:db8:1::/48");
  assert.equal(handshakeBlock("2001:db8:1:ffff:1:2:3:4"), "2001:db8:1::/48");
  assert.equal(handshakeBlock("2001:DB8:0001::1%eth0"), "2001:db8:1::/48");
  // addressBlock (per-address bounds on key holders) stays one machine / one /64.
  assert.equal(addressBlock("127.0.5.9"), "127.0.5.9");
  assert.equal(addressBlock("2001:db8:1:2::5"), "2001:db8:1:2::/64");
});

/** Lets a listener's pending set judge what came in: one turn of the event loop, then the next. */
const nextTurns = async () => {
  for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
};

type C = { id: string; hello: boolean };
const conn = (id: string, hello = false): C => ({ id, hello });
/** A pending set of `max` over fake connections; `dropped` the ids it drops, in order. */
function pendingOf(max: number) {
  const dropped: string[] = [];
  const p = new PendingHandshakes<C>(
    max,
    (c) => c.hello,
    (c) => dropped.push(c.id),
  );
  return { p, dropped, holds: (c: C) => [...p.values()].includes(c) };
}

test("pending handshakes: a connection that said hello outlives any number of silent ones; a block that says hello drops its own first", async () => {
  const honest = conn("honest", true);
  // Silent connections from this machine, from many addresses, one a turn: they drop each other.
  const a = pendingOf(4);
  a.p.add(honest, "198.51.100.7");
  await nextTurns();
  for (let i = 0; i < 20; i++) {
    a.p.add(conn(`idle ${i}`), floodAddress(i));
    await nextTurns();
  }
  assert.deepEqual(
    a.dropped,
    Array.from({ length: 17 }, (_, i) => `idle ${i}`),
  );
  assert.ok(a.holds(honest));

  // When all said hello: one /24 spread over its addresses drops its own, not another block's.
  const b = pendingOf(4);
  b.p.add(honest, "198.51.100.7");
  for (let i = 0; i < 20; i++) b.p.add(conn(`flood ${i}`, true), `203.0.113.${i + 1}`);
  await nextTurns();
  assert.deepEqual(
    b.dropped,
    Array.from({ length: 17 }, (_, i) => `flood ${i}`),
  );
  assert.ok(b.holds(honest));
  // An IPv6 party over many /64s of its /48 likewise.
  const c = pendingOf(4);
  c.p.add(honest, "2001:db8:aaaa::1");
  for (let i = 0; i < 20; i++) c.p.add(conn(`v6 ${i}`, true), `2001:db8:bbbb:${i.toString(16)}::1`);
  await nextTurns();
  assert.ok(c.holds(honest));
  // Within one block, the busiest address goes first (127.0.0.2 saying hello fast, 127.0.0.1 once).
  const d = pendingOf(4);
  d.p.add(honest, "127.0.0.1");
  for (let i = 0; i < 20; i++) d.p.add(conn(`same machine ${i}`, true), "127.0.0.2");
  await nextTurns();
  assert.ok(d.holds(honest));
  assert.equal(d.p.size, 4);
});

test("pending handshakes: a connection is judged once it could be read from, not in the burst it was accepted in", async () => {
  // A backlog's burst: the honest peer first, then idle ones, all accepted before any is read.
  const e = pendingOf(4);
  const honest = conn("honest");
  e.p.add(honest, "127.0.0.1");
  for (let i = 0; i < 12; i++) e.p.add(conn(`idle ${i}`), floodAddress(i));
  // The next turn reads its hello; then the set is brought down to 4, the idle ones dropped.
  await new Promise((r) => setImmediate(r));
  honest.hello = true;
  await nextTurns();
  assert.ok(e.holds(honest), `dropped: ${e.dropped.join(", ")}`);
  assert.equal(e.p.size, 4);
  assert.equal(e.dropped.length, 9);
});

test("NIC link port: idle connections from 127.0.x.y opened while an honest dialer waits at each proof step do not drop it", async () => {
  const MAX = 8;
  const links: TcpLink[] = [];
  const server = await listenTcpLinks({
    nicId: 1,
    port: 0,
    host: HOST,
    key: LINK_KEY,
    log: () => {},
    onLink: (l) => links.push(l),
    maxPendingHandshakes: MAX,
    handshakeTimeoutMs: SLOW_MS,
  });
  const relay = await StepRelay.open(server.port);
  const flood: Idle[] = [];
  /** Opens `n` idle connections one by one, each once the listener has taken it (it sent its hello). */
  const floodWith = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const s = new Idle(server.port, floodAddress(flood.length));
      flood.push(s);
      await until(
        () => s.received >= TCP_HELLO_BYTES || s.closed,
        "the listener's hello to an idle connection",
      );
    }
  };
  try {
    await floodWith(MAX);
    const evicted0 = tcpLinkStats.evicted;
    const dialing = connectTcpLink({
      nicId: 2,
      host: HOST,
      port: relay.port,
      key: LINK_KEY,
      timeoutMs: SLOW_MS,
    });
    let failed: Error | undefined;
    dialing.catch((e: Error) => {
      failed = e;
    });
    for (const lane of [0, 1]) {
      // The dialer's hello reached the listener, the listener's hello is held: it waits to prove the key.
      await until(
        () =>
          failed !== undefined ||
          ((relay.conns[lane]?.heldBytes ?? 0) >= TCP_HELLO_BYTES &&
            relay.conns[lane].sent >= TCP_HELLO_BYTES),
        `the honest ${lane === 0 ? "main" : "bulk"} connection at its proof step`,
      );
      if (failed) assert.fail(`the honest dialer's handshake was dropped: ${failed.message}`);
      // Three times the bound of new idle connections: each drops one held in the handshake.
      const before = tcpLinkStats.evicted;
      await floodWith(3 * MAX);
      await until(() => tcpLinkStats.evicted - before >= 3 * MAX, "the flood's idle connections dropped");
      relay.conns[lane].release();
    }
    const link = await dialing;
    await until(() => links.length === 1, "the listener's side of the honest link");
    assert.equal(links[0].peerNic, 2);
    assert.ok(tcpLinkStats.evicted - evicted0 >= 6 * MAX);
    link.close();
  } finally {
    for (const s of flood) s.socket.destroy();
    relay.close();
    await server.close();
  }
});

test("control port: idle connections from 127.0.x.y opened while a launcher waits to prove the key do not drop it", async () => {
  const MAX = 4;
  const key = randomClusterKey();
  const d = await startLocalDaemon(key, { maxPendingHandshakes: MAX, handshakeTimeoutMs: SLOW_MS });
  const flood: Idle[] = [];
  const honest = net.connect({ host: HOST, port: d.control.port, localAddress: HOST });
  try {
    const lines: { type: string; nonce?: string; msg?: string }[] = [];
    let buf = "";
    let honestClosed = false;
    honest.setEncoding("utf8");
    honest.on("data", (s: string) => {
      buf += s;
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        lines.push(JSON.parse(buf.slice(0, i)));
        buf = buf.slice(i + 1);
      }
    });
    honest.on("close", () => {
      honestClosed = true;
    });
    honest.on("error", () => {});
    const why = () => lines.find((l) => l.type === "error")?.msg ?? (honestClosed ? "closed" : "open");
    // hello → challenge: the host holds the launcher at its proof step.
    const hello = {
      type: "hello",
      version: WIRE_VERSION,
      role: "launcher",
      name: "honest",
      nonce: randomBytes(32).toString("hex"),
    };
    honest.write(`${JSON.stringify(hello)}\n`);
    await until(() => lines.length > 0 || honestClosed, "the host's challenge");
    const challenge = lines[0];
    assert.equal(challenge.type, "challenge", why());
    // Three times the bound of idle connections, each from its own address: all but MAX - 1 of
    // them are dropped (one slot is the launcher's), whatever order the host takes them in.
    const N = 3 * MAX;
    for (let i = 0; i < N; i++) flood.push(new Idle(d.control.port, floodAddress(i)));
    const dropped = () => flood.filter((s) => s.closed).length + (honestClosed ? 1 : 0);
    await until(() => dropped() >= N + 1 - MAX, "the host dropping connections over its bound");
    assert.ok(!honestClosed, `the launcher's handshake was dropped: ${why()}`);
    // Now the proof: the host answers with its hello, so the launcher is in.
    honest.write(
      `${JSON.stringify({ type: "auth", proof: controlProof(key, "client", hello, challenge.nonce!) })}\n`,
    );
    await until(() => lines.length > 1 || honestClosed, "the host's answer to the proof");
    assert.equal(lines[1]?.type, "hello", `the launcher was not admitted: ${why()}`);
  } finally {
    honest.destroy();
    for (const s of flood) s.socket.destroy();
    await d.stop();
  }
});

/**
 * Run in a worker while the test's thread (the host's) is blocked: opens the launcher's
 * connection and sends its hello, then `n` idle connections, all completed by the kernel and
 * waiting in the host's backlog; then wakes the host, relays the launcher's lines both ways
 * and reports which connections the host closed.
 */
const BURST_WORKER = `
const { workerData, parentPort } = require("node:worker_threads");
const net = require("node:net");
const { port, hello, addresses, flag } = workerData;
const connect = (localAddress) => new Promise((resolve, reject) => {
  const s = net.connect({ host: "127.0.0.1", port, localAddress });
  s.once("error", reject);
  s.once("connect", () => { s.off("error", reject); s.on("error", () => {}); resolve(s); });
});
(async () => {
  const honest = await connect("127.0.0.1");
  await new Promise((r) => honest.write(hello, r));
  honest.on("data", (d) => parentPort.postMessage({ data: d.toString("utf8") }));
  honest.on("close", () => parentPort.postMessage({ closed: "honest" }));
  parentPort.on("message", (line) => honest.write(line));
  for (const [i, a] of addresses.entries()) {
    const s = await connect(a);
    s.resume();
    s.on("close", () => parentPort.postMessage({ closed: i }));
  }
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
})().catch((e) => { parentPort.postMessage({ error: e.message }); Atomics.store(flag, 0, 2); Atomics.notify(flag, 0); });
`;

test("control port: a launcher accepted in one burst with idle connections (a full backlog) is not dropped before its hello is read", async () => {
  const MAX = 4;
  const key = randomClusterKey();
  const d = await startLocalDaemon(key, { maxPendingHandshakes: MAX, handshakeTimeoutMs: SLOW_MS });
  const hello = {
    type: "hello",
    version: WIRE_VERSION,
    role: "launcher",
    name: "honest",
    nonce: randomBytes(32).toString("hex"),
  };
  const N = 3 * MAX;
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(BURST_WORKER, {
    eval: true,
    workerData: {
      port: d.control.port,
      hello: `${JSON.stringify(hello)}\n`,
      addresses: Array.from({ length: N }, (_, i) => floodAddress(i)),
      flag,
    },
  });
  const lines: { type: string; nonce?: string; msg?: string }[] = [];
  const closed = new Set<number | string>();
  let buf = "";
  let error: string | undefined;
  worker.on("message", (m: { data?: string; closed?: number | string; error?: string }) => {
    if (m.error) error = m.error;
    if (m.closed !== undefined) closed.add(m.closed);
    if (m.data === undefined) return;
    buf += m.data;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  try {
    // The host's thread does nothing until every connection waits in its backlog: it then
    // accepts them all in one go, the launcher's first, before it reads from any.
    assert.equal(Atomics.wait(flag, 0, 0, SLOW_MS), "ok", "the worker's connections");
    await until(
      () => error !== undefined || closed.size >= N + 1 - MAX,
      "the host dropping connections over its bound",
    );
    assert.equal(error, undefined);
    const why = () =>
      lines.find((l) => l.type === "error")?.msg ?? (closed.has("honest") ? "closed" : "open");
    assert.ok(!closed.has("honest"), `the launcher's handshake was dropped: ${why()}`);
    await until(() => lines.length > 0, "the host's challenge");
    assert.equal(lines[0].type, "challenge", why());
    worker.postMessage(
      `${JSON.stringify({ type: "auth", proof: controlProof(key, "client", hello, lines[0].nonce!) })}\n`,
    );
    await until(() => lines.length > 1 || closed.has("honest"), "the host's answer to the proof");
    assert.equal(lines[1]?.type, "hello", `the launcher was not admitted: ${why()}`);
  } finally {
    await worker.terminate();
    await d.stop();
  }
});

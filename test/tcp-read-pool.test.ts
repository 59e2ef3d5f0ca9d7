/**
 * A link's bulk connection reads into buffers it uses again (src/nic/tcp-read-pool.ts): at
 * both ends of a real loopback link the socket is adopted; pull data that waits for its turn
 * in several chunks at once is not overwritten by later reads; the buffers come back; a socket
 * that cannot be adopted is left as it was; and the two socket objects of an adopted
 * connection close together, so a server's count of its connections still reaches zero.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import net from "node:net";
import { after, test } from "node:test";
import { F_LENGTH, F_PULL_OFFSET, FRAME_HEADER_BYTES, FrameType, getWord } from "../src/nic/frame.js";
import { TCP_BULK_RX_QUEUE, TcpLink, tcpLinkStats } from "../src/nic/tcp-link.js";
import {
  adoptPooledReads,
  POISON_BYTE,
  READ_BYTES,
  ReadPool,
  SMALL_READ_BYTES,
  SpareReadBuffers,
} from "../src/nic/tcp-read-pool.js";
import { SEND_MAX } from "../src/nic/window.js";
import { linkFrame } from "./helpers/link-frames.js";
import { linkedTcp } from "./helpers/linked-tcp.js";
import { until } from "./helpers/until.js";

const HOST = "127.0.0.1";
const log = () => {};

const internals = (l: TcpLink) =>
  l as unknown as { bulk: net.Socket; readPool: ReadPool; bulkRxQueued: number; readsPooled: boolean };

test("both ends of a link read bulk into pooled buffers; chunks waiting their turn together stay intact; the buffers come back", async () => {
  const { server, c, s } = await linkedTcp(log, { bulkWindow: 4 << 20, bulkQueue: 4 << 20 });
  try {
    assert.ok(c.readsPooled, "the dialer's connections read into its pool");
    assert.ok(s.readsPooled, "the listener's (accepted) connections read into its pool");

    const got: Buffer[] = [];
    let parts: Buffer[] = [];
    let mostWaiting = 0;
    s.onFrame((f) => got.push(Buffer.from(f.subarray(FRAME_HEADER_BYTES))));
    s.onPullData((_head, piece, at, total) => {
      mostWaiting = Math.max(mostWaiting, internals(s).bulkRxQueued);
      parts.push(Buffer.from(piece));
      if (at + piece.length === total) {
        got.push(Buffer.concat(parts));
        parts = [];
      }
    });
    // The receiver reads nothing while 2 MiB arrive: once it reads again, the kernel holds more
    // than one read, so several chunks are read in one turn and wait, each in a buffer of the pool.
    internals(s).bulk.pause();
    const sent: Buffer[] = [];
    for (let i = 0; i < 32; i++) {
      const f = linkFrame(FrameType.PullReply, SEND_MAX, i);
      f.set(randomBytes(SEND_MAX), FRAME_HEADER_BYTES);
      sent.push(Buffer.from(f.subarray(FRAME_HEADER_BYTES)));
      assert.ok(c.send(f), `frame ${i} queued`);
    }
    await new Promise((r) => setTimeout(r, 100));
    internals(s).bulk.resume();
    await until(() => got.length === sent.length, "every frame", 30_000);
    assert.ok(
      mostWaiting > 0,
      "chunks waited for their turn (the case where a buffer used again too soon would show)",
    );
    for (let i = 0; i < sent.length; i++) assert.ok(got[i].equals(sent[i]), `frame ${i} byte for byte`);
    // Every chunk parsed went back: only the buffers of each connection's next read are out.
    await until(() => internals(s).bulkRxQueued === 0, "the queue parsed");
    assert.equal(internals(s).readPool.outstanding, 2, "buffers handed out and not given back");
  } finally {
    c.close();
    await server.close();
  }
});

/** What pair() opened, closed after the file's tests whatever became of them (a failed assertion leaves them open). */
const opened: { server: net.Server; sockets: net.Socket[] }[] = [];
after(() => {
  for (const o of opened) {
    for (const sock of o.sockets) sock.destroy();
    o.server.close();
  }
});

/** A server and a client connected over loopback: the accepted socket, paused. */
async function pair() {
  const server = net.createServer({ pauseOnConnect: true });
  server.listen(0, HOST);
  await once(server, "listening");
  const port = (server.address() as net.AddressInfo).port;
  const client = net.connect({ port, host: HOST });
  const [accepted] = (await once(server, "connection")) as [net.Socket];
  await once(client, "connect");
  opened.push({ server, sockets: [client, accepted] });
  return { server, client, accepted };
}

test("adoptPooledReads: what the old socket had read comes first, the rest into the pool; closing the adopted one closes the old one and the server's count", async () => {
  const { server, client, accepted } = await pair();
  // Read by node:net and left in the old socket's buffer before the handover.
  accepted.resume();
  accepted.pause();
  client.write("early bytes");
  await until(() => accepted.readableLength > 0, "the early bytes in the old socket");
  const pool = new ReadPool(new SpareReadBuffers(2));
  const chunks: string[] = [];
  /** The size of the pool buffer each read lay in. */
  const sizes: number[] = [];
  const adopted = adoptPooledReads(accepted, pool, (chunk) => {
    sizes.push(chunk.buffer.byteLength);
    chunks.push(chunk.toString());
    pool.give(chunk);
  });
  assert.ok(adopted !== null);
  assert.equal(adopted.buffered.toString(), "early bytes");
  let oldClosed = false;
  accepted.once("close", () => {
    oldClosed = true;
  });
  client.write("later bytes");
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(chunks, [], "paused until resumed");
  adopted.socket.resume();
  await until(() => chunks.join("") === "later bytes", "the later bytes");
  assert.deepEqual(sizes, [SMALL_READ_BYTES], "a quiet socket reads small");
  // A burst fills its buffers: the reads after the first go in large ones, until one falls short.
  const burst = Buffer.alloc(300_000, 7);
  client.write(burst);
  await until(() => chunks.join("").length === "later bytes".length + burst.length, "the burst");
  assert.equal(sizes[1], SMALL_READ_BYTES, "the burst's first read, in the quiet socket's buffer");
  assert.equal(sizes[2], READ_BYTES, `then large: ${sizes.join(",")}`);
  // Whatever the burst's last read held, the socket then waits on a small buffer: a quiet link
  // after bulk (a burst of 30 KB ends in a read of 26 KB) holds 4 KiB, not 64.
  for (const more of [Buffer.alloc(30_000, 8), Buffer.from("a")]) {
    const had = chunks.join("").length;
    client.write(more);
    await until(() => chunks.join("").length === had + more.length, `${more.length} bytes`);
    const word = Buffer.from("b");
    const n = sizes.length;
    client.write(word);
    await until(() => sizes.length === n + 1, "the next read");
    assert.equal(
      sizes.at(-1),
      SMALL_READ_BYTES,
      `after ${more.length} bytes, the next read is small: ${sizes.join(",")}`,
    );
  }
  // Written through the adopted socket, read by the client.
  adopted.socket.write("reply");
  const [reply] = (await once(client, "data")) as [Buffer];
  assert.equal(reply.toString(), "reply");
  // The server's close waits for its connections: it completes only if the old socket closes too.
  const closed = new Promise<void>((r) => server.close(() => r()));
  adopted.socket.destroy();
  await until(() => oldClosed, "the old socket's close");
  await closed;
  client.destroy();
});

test("adoptPooledReads: closing the old socket (as a listener closing all it accepted does) closes the adopted one", async () => {
  const { server, client, accepted } = await pair();
  const adopted = adoptPooledReads(accepted, new ReadPool(new SpareReadBuffers(1)), () => {});
  assert.ok(adopted !== null);
  adopted.socket.resume();
  accepted.destroy();
  await once(adopted.socket, "close");
  await once(client, "close");
  await new Promise<void>((r) => server.close(() => r()));
});

test("adoptPooledReads leaves a socket it cannot take as it was: destroyed, with writes still queued, or its peer finished", async () => {
  const { server, client, accepted } = await pair();
  accepted.cork();
  accepted.write("queued, not written");
  assert.equal(
    adoptPooledReads(accepted, new ReadPool(new SpareReadBuffers(1)), () => {}),
    null,
  );
  accepted.uncork();
  const [got] = (await once(client, "data")) as [Buffer];
  assert.equal(got.toString(), "queued, not written", "the socket still works");
  accepted.destroy();
  assert.equal(
    adoptPooledReads(accepted, new ReadPool(new SpareReadBuffers(1)), () => {}),
    null,
  );
  client.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  // A peer that wrote and finished before the handover: the old socket still owes its 'end'.
  const finished = await pair();
  finished.accepted.resume();
  finished.accepted.pause();
  finished.client.end("last words");
  await until(
    () => (finished.accepted as unknown as { _readableState: { ended: boolean } })._readableState.ended,
    "the peer's FIN read",
  );
  assert.equal(
    adoptPooledReads(finished.accepted, new ReadPool(new SpareReadBuffers(1)), () => {}),
    null,
  );
  let said = "";
  finished.accepted.on("data", (b: Buffer) => {
    said += b.toString();
  });
  const ended = once(finished.accepted, "end");
  finished.accepted.resume();
  await ended;
  assert.equal(said, "last words");
  finished.accepted.destroy();
  await new Promise<void>((r) => finished.server.close(() => r()));
});

test("a link whose bulk socket could not be adopted reads it as before ('data' events) and still carries bulk", async () => {
  const main = await pair();
  const bulk = await pair();
  // Flowing already: adoptPooledReads will not take it (what it had read would be gone); main is adopted.
  bulk.accepted.resume();
  const s = new TcpLink(main.accepted, 1, 2, Buffer.alloc(0), { log }, bulk.accepted, Buffer.alloc(0));
  const c = new TcpLink(main.client, 2, 1, Buffer.alloc(0), { log }, bulk.client, Buffer.alloc(0));
  try {
    assert.equal(s.readsPooled, false);
    assert.equal(c.readsPooled, true, "a dialed socket is adopted");
    const offsets: number[] = [];
    s.onFrame((f) => offsets.push(getWord(f, F_PULL_OFFSET)));
    assert.ok(c.send(linkFrame(FrameType.PullReply, 1000, 5)));
    await until(() => offsets.length === 1, "the frame");
    assert.deepEqual(offsets, [5]);
  } finally {
    c.close();
    s.close();
    for (const p of [main, bulk]) {
      p.client.destroy();
      await new Promise<void>((r) => p.server.close(() => r()));
    }
  }
});

test("read buffers kept for reuse are bounded per thread, however many sockets give them back; a pool keeps no stranger's buffer", () => {
  const spares = new SpareReadBuffers(2);
  const pools = [new ReadPool(spares), new ReadPool(spares), new ReadPool(spares)];
  const taken = pools.map((p) => [p.take(), p.take(), p.take()]);
  for (const [i, p] of pools.entries()) for (const b of taken[i]) p.give(b.subarray(0, 10));
  assert.equal(spares.large.length, 2, "kept for reuse");
  assert.deepEqual(
    pools.map((p) => p.outstanding),
    [0, 0, 0],
  );
  // A buffer one pool handed out is not another's to give back, nor a buffer from elsewhere.
  const b = pools[0].take();
  pools[1].give(b);
  pools[1].give(Buffer.alloc(READ_BYTES));
  assert.equal(pools[0].outstanding, 1);
  assert.equal(spares.large.length, 1, "the kept one went out again; nothing came back");
  pools[0].give(b);
  pools[0].give(b);
  assert.equal(spares.large.length, 2, "given back once");
});

test("a peer trickling bulk a few bytes a read cannot queue pooled buffers beyond the bound: the queue counts each chunk's whole buffer", async () => {
  const main = await pair();
  const bulk = await pair();
  const s = new TcpLink(main.accepted, 1, 2, Buffer.alloc(0), { log }, bulk.accepted, Buffer.alloc(0));
  try {
    const link = s as unknown as {
      onBulkChunk(chunk: Buffer): void;
      readPool: ReadPool;
      bulkPaused: boolean;
      bulkRxQueued: number;
    };
    let got: Buffer | null = null;
    const parts: Buffer[] = [];
    s.onPullData((_h, piece, at, total) => {
      parts.push(Buffer.from(piece));
      if (at + piece.length === total) got = Buffer.concat(parts);
    });
    await new Promise((r) => setImmediate(r)); // the link's first turn
    // One full PULL_REPLY on the wire, as reads of 16 bytes, all in one turn: each lies in a
    // 4 KiB buffer of the link's pool (a small read's), as the socket would hand them over.
    const f = linkFrame(FrameType.PullReply, SEND_MAX, 0);
    f.set(randomBytes(SEND_MAX), FRAME_HEADER_BYTES);
    const wire = Buffer.concat([Buffer.from(new Uint32Array([f.length]).buffer), f]);
    let fed = 0;
    let pausedAt = -1;
    for (let at = 0; at < wire.length; at += 16) {
      const buf = link.readPool.take(SMALL_READ_BYTES);
      const n = wire.copy(buf, 0, at, at + 16);
      link.onBulkChunk(buf.subarray(0, n));
      fed++;
      if (link.bulkPaused && pausedAt < 0) pausedAt = fed;
    }
    assert.ok(
      pausedAt > 0,
      `the bulk socket was paused (${fed} chunks of 16 bytes queued, ${link.bulkRxQueued} bytes)`,
    );
    // The first chunk is parsed at once; 256 more hold 1 MiB of buffers (TCP_BULK_RX_QUEUE).
    assert.equal(pausedAt, 1 + TCP_BULK_RX_QUEUE / SMALL_READ_BYTES);
    // Parsed a chunk a turn, the frame arrives whole, and every buffer comes back.
    await until(() => got !== null, "the frame", 30_000);
    assert.ok(got!.equals(Buffer.from(f.subarray(FRAME_HEADER_BYTES))));
    assert.equal(link.readPool.outstanding, 2, "only each socket's next read is out");
  } finally {
    s.close();
  }
});

test("a link whose main socket could not be adopted reads it with 'data' events and still carries frames", async () => {
  const main = await pair();
  const bulk = await pair();
  main.accepted.resume(); // flowing: not adopted
  const s = new TcpLink(main.accepted, 1, 2, Buffer.alloc(0), { log }, bulk.accepted, Buffer.alloc(0));
  const c = new TcpLink(main.client, 2, 1, Buffer.alloc(0), { log }, bulk.client, Buffer.alloc(0));
  try {
    assert.equal(s.readsPooled, false);
    const lengths: number[] = [];
    s.onFrame((fr) => lengths.push(getWord(fr, F_LENGTH)));
    for (const n of [8, SEND_MAX, 100]) assert.ok(c.send(linkFrame(FrameType.Send, n)));
    await until(() => lengths.length === 3, "the frames");
    assert.deepEqual(lengths, [8, SEND_MAX, 100]);
  } finally {
    c.close();
    s.close();
  }
});

test("a peer that finishes or resets its connection before the handover is not counted, nor said, as this Node's sockets failing adoption", async () => {
  const main = await pair();
  const bulk = await pair();
  // The peer's FIN on the bulk connection, read before the link takes it.
  bulk.accepted.resume();
  bulk.accepted.pause();
  bulk.client.end();
  await until(
    () => (bulk.accepted as unknown as { _readableState: { ended: boolean } })._readableState.ended,
    "the peer's FIN read",
  );
  const said: string[] = [];
  const before = tcpLinkStats.unpooledLinks;
  const s = new TcpLink(
    main.accepted,
    1,
    2,
    Buffer.alloc(0),
    { log: (m) => said.push(m) },
    bulk.accepted,
    Buffer.alloc(0),
  );
  try {
    assert.equal(s.readsPooled, false);
    assert.equal(tcpLinkStats.unpooledLinks, before, "a peer's doing is not this Node's");
    assert.deepEqual(
      said.filter((m) => /could not be adopted/.test(m)),
      [],
      "the once-a-thread line stays for a real incompatibility",
    );
  } finally {
    s.close();
  }
});

test("with poisoning on (MYRIXEN_POISON_READS=1), a view kept past its turn reads the poison, not a later read's bytes", () => {
  const pool = new ReadPool(new SpareReadBuffers(2, true));
  const b = pool.take();
  b.fill(7, 0, 100);
  const kept = b.subarray(0, 100);
  pool.give(kept);
  assert.ok(kept.every((x) => x === POISON_BYTE));
  // Off (the default here), a buffer comes back as it was.
  const plain = new ReadPool(new SpareReadBuffers(2, false));
  const c = plain.take();
  c.fill(7, 0, 100);
  plain.give(c);
  assert.equal(c[0], 7);
});

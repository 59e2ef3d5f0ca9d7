/**
 * Small frames ahead of bulk on a TCP link (issue 16; src/nic/tcp-link.ts): PULL_REPLY data
 * travels on the link's bulk connection, with at most a window on the way, so a SEND sent
 * behind a megabyte of it does not wait for any of it; bulk stays in order; back-pressure
 * and onWritable still hold; a credit for more than was sent drops the connection. Bare
 * links in this thread over loopback; the peer's bulk socket is paused, so what is "on the
 * way" is exact, not a matter of timing.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type net from "node:net";
import { test } from "node:test";
import {
  F_DEST_NIC,
  F_PULL_OFFSET,
  F_SRC_NIC,
  FRAME_HEADER_BYTES,
  FrameType,
  getWord,
  initFrame,
  setWord,
} from "../src/nic/frame.js";
import { TCP_BULK_RX_QUEUE, type TcpLink, tcpLinkStats } from "../src/nic/tcp-link.js";
import { SEND_MAX } from "../src/nic/window.js";
import { linkFrame, onWire } from "./helpers/link-frames.js";
import { linkedTcp } from "./helpers/linked-tcp.js";
import { until } from "./helpers/until.js";

const KEY = randomBytes(32);
const logs: string[] = [];
const log = (m: string) => logs.push(m);

const frame = linkFrame;

const sock = (l: TcpLink) => (l as unknown as { socket: net.Socket }).socket;
const bulkSock = (l: TcpLink) => (l as unknown as { bulk: net.Socket }).bulk;

/** A link from NIC 2 (c, with `bulkWindow` and `bulkQueue`) to NIC 1 (s, its write mark `listenerHwm` if given). */
const linked = (bulkWindow: number, bulkQueue?: number, listenerHwm?: number) =>
  linkedTcp(log, { bulkWindow, bulkQueue }, { highWaterMark: listenerHwm }, KEY);

test("a SEND behind a megabyte of PULL_REPLY data does not wait for it; the bulk arrives whole and in order", async () => {
  const { server, c, s } = await linked(128 * 1024, 2 << 20);
  try {
    const got: string[] = [];
    s.onFrame((f) =>
      got.push(getWord(f, 0) % 256 === FrameType.Send ? "send" : `bulk@${getWord(f, F_PULL_OFFSET)}`),
    );
    // Bulk reaches the peer's bulk socket but it takes none: the SEND comes first all the same.
    bulkSock(s).pause();
    const n = 16; // 16 × 64 KiB = 1 MiB
    for (let i = 0; i < n; i++) assert.ok(c.send(frame(FrameType.PullReply, SEND_MAX, i * SEND_MAX)));
    assert.ok(c.send(frame(FrameType.Send, 8)));
    await until(() => got.length === 1, "the SEND");
    assert.deepEqual(got, ["send"]);
    bulkSock(s).resume();
    await until(() => got.length === n + 1, "every frame");
    const bulk = got.filter((g) => g !== "send");
    assert.deepEqual(
      bulk,
      Array.from({ length: n }, (_, i) => `bulk@${i * SEND_MAX}`),
      "bulk in order",
    );
  } finally {
    c.close();
    await server.close();
  }
});

test("bulk far beyond the receiver's window waits in the kernel, not in the receiver; a SEND behind it goes first; every frame arrives in order", async () => {
  // A peer whose window is 64 MiB (another build, other options, or a hostile NIC) against a
  // receiver that parses slowly: the bulk it has read and not yet parsed (one chunk a turn) stays
  // under TCP_BULK_RX_QUEUE, and the rest waits in the kernel under TCP's flow control.
  const { server, c, s } = await linked(64 << 20, 64 << 20);
  try {
    const n = 128; // 8 MiB
    const order: number[] = [];
    let maxQueued = 0;
    let sendAfter = -1;
    s.onFrame((f) => {
      maxQueued = Math.max(maxQueued, s.bulkRxQueued);
      if (getWord(f, 0) % 256 === FrameType.Send) {
        sendAfter = order.length;
        return;
      }
      order.push(getWord(f, F_PULL_OFFSET) / SEND_MAX);
      // A slow parser (a millisecond a frame): the socket has more for it than it takes.
      const end = performance.now() + 1;
      while (performance.now() < end);
    });
    for (let i = 0; i < n; i++) assert.ok(c.send(frame(FrameType.PullReply, SEND_MAX, i * SEND_MAX)));
    // Seen from the parser (each frame looks), so no sample of a moving queue can miss it.
    await until(() => maxQueued >= TCP_BULK_RX_QUEUE - 2 * SEND_MAX, "the receiver's queue near its bound");
    assert.ok(c.send(frame(FrameType.Send, 8)));
    await until(() => order.length === n && sendAfter >= 0, "every frame", 60_000);
    const chunk = 64 * 1024; // what one socket read gives at most
    assert.ok(
      maxQueued <= TCP_BULK_RX_QUEUE + chunk,
      `${maxQueued} bytes queued, bound ${TCP_BULK_RX_QUEUE}`,
    );
    assert.ok(sendAfter < n - 8, `the SEND waited for ${sendAfter} of ${n} bulk frames`);
    assert.deepEqual(
      order,
      Array.from({ length: n }, (_, i) => i),
      "bulk in order",
    );
    assert.equal(s.bulkRxQueued, 0);
  } finally {
    c.close();
    await server.close();
  }
});

test("a peer that sends probes and reads nothing gets no answers past the write mark: nothing piles up for it", async () => {
  const hwm = 64 * 1024;
  const { server, c, s } = await linked(256 * 1024, undefined, hwm);
  try {
    s.onFrame(() => {});
    // The peer reads nothing from here on and sends 3 million probes (length prefix 2, a token).
    sock(c).pause();
    const probes = 3 << 20;
    const wire = Buffer.alloc(8 * probes);
    for (let i = 0; i < probes; i++) wire.writeUInt32LE(2, 8 * i);
    const read0 = sock(s).bytesRead;
    sock(c).write(wire);
    await until(() => sock(s).bytesRead - read0 >= wire.length, "every probe read", 60_000);
    // What the kernel did not take waits in the link's write buffer: the mark and a little, not 24 MB.
    const queued = sock(s).writableLength;
    assert.ok(queued <= 2 * hwm, `${queued} bytes of answers waiting for a peer that reads nothing`);
    assert.ok(!s.isClosed);
  } finally {
    c.close();
    await server.close();
  }
});

test("bulk back-pressure: send() refuses once the queue holds its mark, onWritable comes when credits drain it", async () => {
  const { server, c, s } = await linked(64 * 1024, 256 * 1024);
  try {
    let frames = 0;
    s.onFrame(() => frames++);
    bulkSock(s).pause();
    let writable = 0;
    c.onWritable(() => writable++);
    let sent = 0;
    while (c.send(frame(FrameType.PullReply, SEND_MAX, sent * SEND_MAX)) && sent < 1000) sent++;
    assert.ok(sent < 1000, "send() pushed back");
    // Other frames are not held by the bulk queue.
    assert.ok(c.send(frame(FrameType.Send, 8)));
    await until(() => frames === 1, "the SEND, past the held bulk");
    assert.equal(writable, 0, "no credit came: the peer took no bulk");
    bulkSock(s).resume();
    await until(() => writable >= 1 && frames === sent + 1, "credits, onWritable and every frame");
  } finally {
    c.close();
    await server.close();
  }
});

test("a sender whose window is below twice the receiver's credit threshold still streams: the rest is credited a moment later", async () => {
  // The smallest window there is (one frame) against a peer with the default one, which
  // credits every 256 KiB: without the delayed credit the second frame would wait for ever.
  const { server, c, s } = await linked(0);
  try {
    let frames = 0;
    s.onFrame(() => frames++);
    const n = 32; // 2 MiB, one 64 KiB frame on the way at a time
    let sent = 0;
    const pump = () => {
      while (sent < n && c.send(frame(FrameType.PullReply, SEND_MAX, sent * SEND_MAX))) sent++;
    };
    c.onWritable(pump);
    pump();
    await until(() => frames === n, "every frame");
    assert.equal(sent, n);
  } finally {
    c.close();
    await server.close();
  }
});

test("a credit for more bulk than was sent drops the connection and is counted", async () => {
  const { server, c, s } = await linked(64 * 1024);
  try {
    const dropped0 = tcpLinkStats.connectionsDropped;
    const credit = Buffer.alloc(8);
    credit.writeUInt32LE(1, 0);
    credit.writeUInt32LE(12345, 4);
    sock(c).write(credit);
    await until(() => tcpLinkStats.connectionsDropped === dropped0 + 1, "the drop");
    assert.ok(s.isClosed);
    assert.ok(logs.some((m) => /a credit for 12345 bulk bytes, 0 on the way/.test(m)));
  } finally {
    c.close();
    await server.close();
  }
});

test("lent frames: written where they lie, never lent again before the socket wrote them, every byte intact", async () => {
  // A window of one frame and a deep queue: frames beyond the window wait unwritten in the
  // link, in the buffers they were built in. Lending one of those again would let the next
  // frame overwrite a frame that has not left yet.
  const { server, c, s } = await linked(SEND_MAX + FRAME_HEADER_BYTES + 4, 4 << 20);
  try {
    const got: { offset: number; ok: boolean }[] = [];
    s.onFrame((f) => {
      const seed = getWord(f, F_PULL_OFFSET) / SEND_MAX;
      let ok = f.length === FRAME_HEADER_BYTES + SEND_MAX;
      for (let i = FRAME_HEADER_BYTES; ok && i < f.length; i += 509) ok = f[i] === ((i + seed * 13) & 0xff);
      got.push({ offset: getWord(f, F_PULL_OFFSET), ok });
    });
    bulkSock(s).pause();
    const lent = new Set<ArrayBufferLike>();
    let sent = 0;
    for (;;) {
      const f = c.lend();
      if (f === null) break;
      assert.ok(!lent.has(f.buffer), `frame ${sent}: a buffer still queued was lent again`);
      assert.equal((f.byteOffset + FRAME_HEADER_BYTES) % 8, 0, "the payload is 8-byte aligned");
      assert.equal(c.lend(), f, "until a send() takes it, the same buffer is lent");
      lent.add(f.buffer);
      initFrame(f, FrameType.PullReply, SEND_MAX);
      setWord(f, F_SRC_NIC, 2);
      setWord(f, F_DEST_NIC, 1);
      setWord(f, F_PULL_OFFSET, sent * SEND_MAX);
      for (let i = FRAME_HEADER_BYTES; i < FRAME_HEADER_BYTES + SEND_MAX; i++) f[i] = (i + sent * 13) & 0xff;
      assert.ok(c.send(f.subarray(0, FRAME_HEADER_BYTES + SEND_MAX)));
      sent++;
      assert.ok(sent <= 64, "the pool is bounded: lend() answers null once every buffer is in use");
    }
    assert.ok(sent >= 2, `${sent} frames lent before the pool ran out`);
    // Frames from the caller's own buffers still go (copied) while the pool is empty.
    assert.ok(c.send(frame(FrameType.PullReply, SEND_MAX, sent * SEND_MAX)));
    bulkSock(s).resume();
    await until(() => got.length === sent + 1, "every frame");
    assert.deepEqual(
      got.map((g) => g.offset),
      Array.from({ length: sent + 1 }, (_, i) => i * SEND_MAX),
      "in order",
    );
    assert.deepEqual(
      got.slice(0, sent).filter((g) => !g.ok),
      [],
      "every lent frame arrived as it was built",
    );
    // Written: the buffers come back and are lent again.
    await until(() => c.lend() !== null, "a buffer back in the pool");
  } finally {
    c.close();
    await server.close();
  }
});

for (const [bound, start] of [
  ["2^31", 2 ** 31 - 100_000],
  ["2^32", 2 ** 32 - 100_000],
] as const)
  test(`a link that has carried ${bound} bulk bytes goes on: credits pass the bound as int32s, the window frees, every frame arrives`, async () => {
    const { server, c, s } = await linked(128 * 1024, 2 << 20);
    try {
      // As if both ends had moved `start` bytes of bulk already: the sender credited up to it,
      // the receiver counted and credited it.
      const sender = c as unknown as { bulkCredited: number };
      const receiver = s as unknown as { rxBulk: number; rxCredited: number };
      sender.bulkCredited = start | 0;
      receiver.rxBulk = receiver.rxCredited = start | 0;
      let got = 0;
      s.onFrame(() => got++);
      const n = 64; // 4 MiB through a 128 KiB window: ~30 credits, past the bound
      let sent = 0;
      while (sent < n) {
        if (c.send(frame(FrameType.PullReply, SEND_MAX, sent * SEND_MAX))) sent++;
        else await until(() => got >= sent - 1, "room in the bulk queue");
      }
      await until(() => got === n, "every bulk frame");
      await until(() => (c as unknown as { bulkInFlight: number }).bulkInFlight < 128 * 1024, "credits");
      for (const v of [sender.bulkCredited, receiver.rxBulk, receiver.rxCredited])
        assert.equal(v, v | 0, `a credit count left the int32s: ${v}`);
      assert.ok((receiver.rxBulk - start) >>> 0 >= n * SEND_MAX, "the count moved past the bound");
      assert.ok(!s.isClosed && !c.isClosed, "no credit was taken for garbage");
    } finally {
      c.close();
      await server.close();
    }
  });

/** Collects a receiver's bulk frames as onFrame and onPullData hand them over, in order. */
function pullDataSink(s: TcpLink) {
  const frames: { offset: number; payload: Buffer; pieces: number }[] = [];
  const faults: string[] = [];
  let cur: { head: Buffer; parts: Buffer[]; next: number } | null = null;
  s.onFrame((f) => {
    if (cur !== null) faults.push("a whole frame between the pieces of another");
    frames.push({
      offset: getWord(f, F_PULL_OFFSET),
      payload: Buffer.from(f.subarray(FRAME_HEADER_BYTES)),
      pieces: 0,
    });
  });
  s.onPullData((head, piece, at, total) => {
    if (head.length !== FRAME_HEADER_BYTES) faults.push(`a head of ${head.length} bytes`);
    if (cur === null) {
      if (at !== 0) faults.push(`a frame's first piece at ${at}`);
      cur = { head: Buffer.from(head), parts: [], next: 0 };
    }
    if (at !== cur.next) faults.push(`a piece at ${at}, ${cur.next} expected`);
    if (!cur.head.equals(head)) faults.push("the head changed between pieces");
    if (piece.length === 0) faults.push("an empty piece");
    cur.parts.push(Buffer.from(piece));
    cur.next = at + piece.length;
    if (cur.next > total) faults.push(`pieces past the frame's ${total} bytes`);
    if (cur.next >= total) {
      frames.push({
        offset: getWord(cur.head, F_PULL_OFFSET),
        payload: Buffer.concat(cur.parts),
        pieces: cur.parts.length,
      });
      cur = null;
    }
  });
  return { frames, faults, midFrame: () => cur !== null };
}

test("pull data longer than a read comes to onPullData in pieces where it lies, in order, byte for byte; the credits count it", async () => {
  // A 256 KiB window: 4 MiB cross only if the frames taken in pieces are credited too.
  const { server, c, s } = await linked(256 * 1024, 8 << 20);
  try {
    const sink = pullDataSink(s);
    const sizes = [SEND_MAX, 100, SEND_MAX - 7, 65_000, 3, SEND_MAX - FRAME_HEADER_BYTES - 4, 40_000];
    const sent: Buffer[] = [];
    for (let i = 0, bytes = 0; bytes < 4 << 20; i++) {
      const n = sizes[i % sizes.length];
      const f = frame(FrameType.PullReply, n, i);
      f.set(randomBytes(n), FRAME_HEADER_BYTES);
      sent.push(Buffer.from(f.subarray(FRAME_HEADER_BYTES)));
      assert.ok(c.send(f), `frame ${i} queued`);
      bytes += n;
    }
    await until(() => sink.frames.length === sent.length, "every frame", 30_000);
    assert.deepEqual(sink.faults, []);
    assert.deepEqual(
      sink.frames.map((f) => f.offset),
      sent.map((_, i) => i),
      "in order",
    );
    for (let i = 0; i < sent.length; i++)
      assert.ok(sink.frames[i].payload.equals(sent[i]), `frame ${i} byte for byte`);
    // A read is 64 KiB at most, so a full frame never lies whole in one.
    for (let i = 0; i < sent.length; i++)
      if (sent[i].length === SEND_MAX) assert.ok(sink.frames[i].pieces >= 2, `frame ${i} came in pieces`);
  } finally {
    c.close();
    await server.close();
  }
});

test("a bulk frame's header split across reads: nothing is handed over until it is whole, then each read's payload as it comes", async () => {
  const { server, c, s } = await linked(1 << 20);
  try {
    const sink = pullDataSink(s);
    const pieces: [number, number][] = [];
    const onPiece = (
      s as unknown as { pullDataCb: (h: Uint8Array, p: Uint8Array, at: number, t: number) => void }
    ).pullDataCb;
    s.onPullData((h, p, at, t) => {
      pieces.push([at, p.length]);
      onPiece(h, p, at, t);
    });
    const f = frame(FrameType.PullReply, 5000, 7);
    f.set(randomBytes(5000), FRAME_HEADER_BYTES);
    const bytes = onWire(f);
    // Written by hand, a slice at a time (the sender's link counts them on the way, so the credits match).
    (c as unknown as { bulkInFlight: number }).bulkInFlight += bytes.length;
    const slices = [4 + 30, 4 + FRAME_HEADER_BYTES + 1000, 4 + FRAME_HEADER_BYTES + 3000, bytes.length];
    let from = 0;
    for (const [k, to] of slices.entries()) {
      bulkSock(c).write(bytes.subarray(from, to));
      from = to;
      if (k === 0) {
        // Half a header: nothing to hand over, however long it waits.
        await new Promise((r) => setTimeout(r, 50));
        assert.equal(pieces.length, 0);
      } else {
        await until(() => pieces.length === k, `the piece of slice ${k}`);
      }
    }
    assert.deepEqual(pieces, [
      [0, 1000],
      [1000, 2000],
      [3000, 2000],
    ]);
    assert.deepEqual(sink.faults, []);
    assert.equal(sink.frames.length, 1);
    assert.equal(sink.frames[0].offset, 7);
    assert.ok(sink.frames[0].payload.equals(Buffer.from(f.subarray(FRAME_HEADER_BYTES))));
    assert.ok(!s.isClosed && !c.isClosed, "the link stays up (the credit matched)");
  } finally {
    c.close();
    await server.close();
  }
});

/** The co-resident channel's lanes: records in order, wrap-around, back-pressure, and a hostile writer. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { LaneReader, LaneWriter } from "../src/mx/channel.js";
import {
  CHANNEL_BYTES,
  LANE_BYTES,
  LANE_HEADER_BYTES,
  RECORD_HEADER_BYTES,
  RecordFlag,
} from "../src/myrixen/channel-abi.js";

function write(w: LaneWriter, type: number, payload: Uint8Array, aux0 = 0): boolean {
  const at = w.reserve(payload.length);
  if (at < 0) return false;
  const i = at >>> 2;
  w.words[i + 1] = type;
  w.words[i + 2] = 0xdead;
  w.words[i + 3] = 0xbeef;
  w.words[i + 4] = payload.length;
  w.words[i + 5] = aux0;
  w.bytes.set(payload, at + RECORD_HEADER_BYTES);
  w.commit();
  return true;
}

test("records arrive in order with their words and payload, across many wraps of the lane", () => {
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(ch, 0);
  const r = new LaneReader(ch, 0, 3);
  let sent = 0;
  let got = 0;
  const sizes = [0, 1, 7, 8, 100, 4096, 30000];
  for (let round = 0; round < 2000; round++) {
    const n = sizes[round % sizes.length];
    const p = new Uint8Array(n).fill(round & 0xff);
    while (!write(w, 1 + (round % 3), p, sent)) {
      assert.ok(r.next(), "a full lane must have something to read");
      assert.equal(r.aux[0], got);
      got++;
      r.release();
    }
    sent++;
  }
  while (r.next()) {
    assert.equal(r.aux[0], got);
    assert.equal(r.matchHi, 0xdead);
    assert.equal(r.matchLo, 0xbeef);
    const n = sizes[got % sizes.length];
    assert.equal(r.length, n);
    if (n > 0) assert.equal(r.bytes[r.payload + n - 1], got & 0xff);
    got++;
    r.release();
  }
  assert.equal(got, sent);
  assert.equal(r.broken, undefined);
});

test("a full lane refuses a record (back-pressure) until the reader releases", () => {
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(ch, 1);
  const r = new LaneReader(ch, 1, 3);
  const big = new Uint8Array(60000);
  let n = 0;
  while (write(w, 1, big)) n++;
  assert.ok(n >= 3 && n <= Math.floor(LANE_BYTES / 60000));
  assert.ok(r.next());
  r.release();
  r.publishHead(); // as the reader does when the writer asks (takeSpaceWanted)
  // n records filled n × 60,048 bytes; the next wraps (a PAD to the lane's end) into the
  // 60,048 the reader freed, less the 8-byte slot the lane always keeps empty past its content.
  assert.equal(write(w, 1, big), false, "the free slot past the content is never filled");
  assert.ok(write(w, 1, big.subarray(8)), "space freed by the reader is reused");
  assert.equal(w.reserve(LANE_BYTES), -1, "a record larger than half the lane never fits");
});

test("rendezvous headers carry a message length without a payload", () => {
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(ch, 0);
  const r = new LaneReader(ch, 0, 3);
  const at = w.reserve(0);
  w.words[(at >>> 2) + 1] = 2 | (RecordFlag.NoPayload << 16);
  w.words[(at >>> 2) + 4] = 64 * 1024 * 1024;
  w.commit();
  assert.ok(r.next());
  assert.equal(r.length, 64 * 1024 * 1024);
  assert.equal(r.flags, RecordFlag.NoPayload);
});

test("garbage from a hostile writer marks the lane broken and never throws", () => {
  let broken = 0;
  for (let round = 0; round < 5000; round++) {
    const ch = new SharedArrayBuffer(CHANNEL_BYTES);
    const ctl = new Int32Array(ch, 0, LANE_HEADER_BYTES / 4);
    const words = new Uint32Array(ch, LANE_HEADER_BYTES, 64);
    for (let i = 0; i < words.length; i++) words[i] = (Math.random() * 2 ** 32) >>> 0;
    if (round % 3 === 0) words[0] = 48 + 8 * (round % 5);
    Atomics.store(ctl, 0, (Math.random() * 2 ** 32) | 0);
    const r = new LaneReader(ch, 0, 3);
    let steps = 0;
    while (r.next() && steps++ < 100) r.release();
    if (r.broken) broken++;
  }
  assert.ok(broken > 4000, `${broken} of 5000 random lanes were caught`);
});

test("records start inside old payloads across wraps: the word after each record reads empty until the next is published", () => {
  // Payloads of 0xff bytes, sizes that never repeat in step with the lane: a new record's
  // Size word often lands inside an old payload, which the reader must not take for a record.
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(ch, 0);
  const r = new LaneReader(ch, 0, 3);
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  let sent = 0;
  let got = 0;
  for (let step = 0; step < 20000; step++) {
    if (rand(3) !== 0) {
      const n = [1, 13, 100, 333, 2000, 9001, 40000][rand(7)];
      if (write(w, 1, new Uint8Array(n).fill(0xff), sent)) sent++;
    } else {
      for (let k = rand(5); k >= 0 && r.next(); k--) {
        assert.equal(r.aux[0], got, "records come once each, in order");
        got++;
        r.release();
      }
    }
  }
  while (r.next()) {
    assert.equal(r.aux[0], got);
    got++;
    r.release();
  }
  assert.equal(got, sent);
  assert.ok(sent > 5000, `${sent} records`);
  assert.equal(r.broken, undefined);
});

/** A hostile writer: publishes a record of `size` bytes at `pos` of lane 0 (its Size last). */
function forge(ch: SharedArrayBuffer, pos: number, size: number, type: number): void {
  const words = new Uint32Array(ch, LANE_HEADER_BYTES, LANE_BYTES / 4);
  words[(pos >>> 2) + 1] = type;
  words[(pos >>> 2) + 4] = 0;
  Atomics.store(words, pos >>> 2, size);
}

test("a hostile writer cannot make the reader go round: PADs that do not end the lane, or two in a row, break it", () => {
  for (const [what, lay] of [
    [
      "a lane of 8-byte PADs",
      (ch: SharedArrayBuffer) => {
        for (let pos = 0; pos < LANE_BYTES; pos += 8) forge(ch, pos, 8, 0);
      },
    ],
    [
      "a PAD to the end, then a PAD at 0",
      (ch: SharedArrayBuffer) => {
        // The reader's head at the last 64 bytes (Head is word 32 of the lane's control page).
        Atomics.store(new Int32Array(ch, 0, 64), 32, LANE_BYTES - 64);
        forge(ch, LANE_BYTES - 64, 64, 0);
        forge(ch, 0, LANE_BYTES, 0);
      },
    ],
  ] as const) {
    const ch = new SharedArrayBuffer(CHANNEL_BYTES);
    lay(ch);
    const r = new LaneReader(ch, 0, 3);
    assert.equal(r.next(), false, what);
    assert.match(r.broken ?? "", /PAD/, what);
  }
});

test("records a hostile writer published once are read once: the reader empties each slot it took", () => {
  // 4,096 records of 64 bytes fill the lane exactly, the last ending at its end, so the one
  // after it is at 0 again: a reader that left the slots as they were would take them forever.
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  for (let pos = 0; pos < LANE_BYTES; pos += 64) forge(ch, pos, 64, 1);
  const r = new LaneReader(ch, 0, 3);
  let n = 0;
  while (n < 3 * (LANE_BYTES / 64) && r.next()) {
    r.release();
    n++;
  }
  assert.equal(n, LANE_BYTES / 64);
  assert.equal(r.next(), false);
  assert.equal(r.broken, undefined);
});

test("space the reader took is shown to a writer that finds the lane full when it asks, and on every sweep", () => {
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(ch, 0);
  const r = new LaneReader(ch, 0, 3);
  const small = new Uint8Array(8);
  let n = 0;
  while (write(w, 1, small)) n++;
  // A few small records read: less than the step in which Head is published unasked.
  for (let i = 0; i < 4; i++) {
    assert.ok(r.next());
    r.release();
  }
  assert.ok(r.unpublished);
  assert.equal(write(w, 1, small), false, "the writer does not see that space yet, and asks for it");
  assert.equal(r.takeSpaceWanted(false), true, "the reader sees the writer asking");
  assert.equal(r.unpublished, false);
  assert.ok(write(w, 1, small), "the space read is the writer's now");
  // Unasked, a sweep shows it too.
  assert.ok(r.next());
  r.release();
  assert.ok(r.unpublished);
  assert.equal(r.takeSpaceWanted(true), false, "no one asked");
  assert.equal(r.unpublished, false, "but the sweep published it");
  assert.ok(n > 4000);
});

test("a record committed as its reader closes the lane: the writer learns whether the reader read it before letting go", () => {
  // The reader closes, drains, then says where it stopped (publishFinal); the writer, after a
  // commit, looks at the close (readBeforeClose). Before, a record committed just after the
  // reader's last look said SUCCESS and was never read (two ranks that connected, sent and
  // disconnected to each other at once lost ~1 in 5 such messages; a reviewer's PoC).
  const payload = new Uint8Array([1, 2, 3]);
  for (const readIt of [true, false]) {
    const ch = new SharedArrayBuffer(CHANNEL_BYTES);
    const w = new LaneWriter(ch, 0);
    const r = new LaneReader(ch, 0, 3);
    assert.ok(write(w, 1, payload));
    assert.equal(w.readBeforeClose(), true, "an open lane: nothing to ask");
    const at = w.reserve(payload.length);
    w.words[(at >>> 2) + 1] = 1;
    if (readIt) w.commit();
    // The reader's disconnect: close, drain what is committed, let go.
    r.close();
    let read = 0;
    while (r.next()) {
      read++;
      r.release();
    }
    r.publishFinal();
    if (!readIt) w.commit(); // committed after the reader's last look
    assert.equal(read, readIt ? 2 : 1);
    assert.equal(w.readBeforeClose(), readIt, readIt ? "read before the close" : "not read: the send fails");
  }
});

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
  assert.ok(write(w, 1, big), "space freed by the reader is reused");
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

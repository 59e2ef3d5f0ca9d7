/**
 * An audit of the co-resident lane protocol (src/mx/channel.ts: the reader polls the Size of
 * the record it expects next, publishes its Head lazily) and of its callers in the channel
 * path (src/mx/channel-path.ts), from the side of a hostile peer that can write any word of
 * the channel at any time. Single thread: a write "at any time" is made from a hook the
 * honest side runs mid-call, so each interleaving is exact and every loop here is bounded.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { LaneReader, LaneWriter } from "../src/mx/channel.js";
import { FLAG_PUSH, FragAux, RecordType } from "../src/mx/records.js";
import { RequestState } from "../src/mx/types.js";
import {
  CHANNEL_BYTES,
  LANE_BYTES,
  LANE_HEADER_BYTES,
  LaneWord,
  laneOffset,
  RECORD_HEADER_BYTES,
  RecordFlag,
  RecordWord,
} from "../src/myrixen/channel-abi.js";
import { MxStatus } from "../src/nic/status.js";
import { sleeperSize } from "./fixtures/lane-sleeper.js";
import { channelEnd, postRecv } from "./helpers/mx-parts.js";

/** Side 0's lane as its (hostile) writer sees it: raw words. */
function laneWords(channel: SharedArrayBuffer): Uint32Array {
  return new Uint32Array(channel, laneOffset(0) + LANE_HEADER_BYTES, LANE_BYTES / 4);
}

/** Writes a raw record header at byte `at` of side 0's lane, its Size stored last. */
function rawRecord(
  words: Uint32Array,
  at: number,
  size: number,
  type: number,
  flags: number,
  length: number,
  aux: number[],
): void {
  const i = at >>> 2;
  words[i + RecordWord.Type] = type | (flags << 16);
  words[i + RecordWord.MatchHi] = 0;
  words[i + RecordWord.MatchLo] = 6;
  words[i + RecordWord.Length] = length;
  for (let k = 0; k < aux.length; k++) words[i + RecordWord.Aux + k] = aux[k];
  Atomics.store(words, i + RecordWord.Size, size);
}

/** A pushed rendezvous of `bytes` announced by the hostile side 0 and matched by b: the CTS's transfer id. */
function matchedPush(channel: SharedArrayBuffer, b: ReturnType<typeof channelEnd>, bytes: number) {
  const evil = new LaneWriter(channel, 0);
  const at = evil.reserve(0);
  const i = at >>> 2;
  evil.words[i + RecordWord.Type] = RecordType.Rndv | ((RecordFlag.NoPayload | FLAG_PUSH) << 16);
  evil.words[i + RecordWord.MatchLo] = 6;
  evil.words[i + RecordWord.Length] = bytes;
  evil.words[i + RecordWord.Aux] = 77;
  evil.commit();
  const recv = postRecv(b, new Uint8Array(bytes), 6);
  b.path.receive();
  assert.equal(recv.state, RequestState.Pulling);
  const cts = new Uint32Array(channel, laneOffset(1) + LANE_HEADER_BYTES, 12);
  assert.equal(cts[RecordWord.Type] & 0xffff, RecordType.Cts);
  return { recv, id: cts[RecordWord.Aux + 1], tail: at + RECORD_HEADER_BYTES };
}

test("a FRAG flagged NoPayload at the lane's end, claiming a large length, does not make the reader throw", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const b = channelEnd(channel, 1);
  const { recv, id, tail } = matchedPush(channel, b, 40_000);
  const words = laneWords(channel);
  // A filler FRAG of no transfer (dropped) up to the lane's last 48 bytes, then a header-only
  // FRAG there whose "payload" starts at the lane's very end and claims 40,000 bytes.
  rawRecord(words, LANE_BYTES - 48, 48, RecordType.Frag, RecordFlag.NoPayload, 40_000, [id, 0]);
  rawRecord(words, tail, LANE_BYTES - 48 - tail, RecordType.Frag, 0, 0, [id + 1000, 0]);
  assert.doesNotThrow(() => b.path.receive());
  assert.doesNotThrow(() => b.path.receive(true));
  assert.notEqual(
    recv.code,
    MxStatus.SUCCESS,
    "the receive is not completed with bytes the FRAG never carried",
  );
  assert.match(b.partner.dead ?? "", /garbage/);
});

test("a FRAG flagged NoPayload mid-lane does not pass lane bytes outside it off as the message", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const b = channelEnd(channel, 1);
  const { recv, id, tail } = matchedPush(channel, b, 4000);
  rawRecord(laneWords(channel), tail, 48, RecordType.Frag, RecordFlag.NoPayload, 4000, [id, 0]);
  b.path.receive();
  assert.ok(
    !(recv.state === RequestState.Done && recv.code === MxStatus.SUCCESS),
    "the receive is not completed SUCCESS with 4000 bytes the FRAG never carried",
  );
  assert.match(b.partner.dead ?? "", /garbage/);
});

test("a writer that refills the lane behind the reader cannot keep one receive() going for ever", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const b = channelEnd(channel, 1);
  const words = laneWords(channel);
  // A full lane of 64-byte FRAGs of no transfer: each is dropped and counted, the peer kept.
  const SIZE = 64;
  const PER_LAP = LANE_BYTES / SIZE;
  for (let at = LANE_BYTES - SIZE; at >= 0; at -= SIZE)
    rawRecord(words, at, SIZE, RecordType.Frag, 0, 16, [0x7777, 0]);
  // The hostile thread, modelled exactly: while the reader handles record n it republishes
  // record n−1 (which the reader has just consumed), so the lane never empties. It gives up
  // after 10 laps, so that this test ends whatever the reader does.
  const LIMIT = 10 * PER_LAP;
  const counters = b.p.ctx.counters;
  let errors = counters.channelErrors;
  let handled = 0;
  Object.defineProperty(counters, "channelErrors", {
    configurable: true,
    get: () => errors,
    set: (v: number) => {
      errors = v;
      handled++;
      if (handled >= 2 && handled <= LIMIT) {
        const prev = ((handled - 2) * SIZE) % LANE_BYTES;
        words[(prev >>> 2) + RecordWord.Type] = RecordType.Frag;
        words[(prev >>> 2) + RecordWord.Aux + FragAux.Xfer] = 0x7777;
        Atomics.store(words, prev >>> 2, SIZE);
      }
    },
  });
  b.path.receive();
  const inOneCall = handled;
  assert.ok(
    inOneCall <= LANE_BYTES / 8,
    `one receive() handled ${inOneCall} records (more than a full lane's ${LANE_BYTES / 8}): a peer that keeps writing keeps the reader's API call from returning`,
  );
  // Later calls take the rest: nothing is lost or taken twice.
  for (let k = 0; k < 100 && b.path.receive(); k++);
  assert.equal(handled, LIMIT + PER_LAP - 1);
  assert.equal(b.partner.dead, undefined);
});

test("honest pair: a reader that consumed less than a publishing step and sweeps shows the writer its space (no lost wake-up)", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(channel, 0);
  const r = new LaneReader(channel, 0, 6);
  const ctl = new Int32Array(channel, laneOffset(0), LANE_HEADER_BYTES / 4);
  // Fill the lane with 1 KiB records (all but the last KiB: the free slot must stay).
  let n = 0;
  for (;;) {
    const at = w.reserve(976);
    if (at < 0) break;
    w.words[(at >>> 2) + RecordWord.Type] = 1;
    w.commit();
    n++;
  }
  assert.equal(Atomics.load(ctl, LaneWord.SpaceWanted), 1, "the writer asked for space");
  // The reader takes one record (less than a publishing step): Head is not shown yet.
  assert.ok(r.next());
  r.release();
  assert.equal(r.unpublished, true);
  assert.equal(w.reserve(976), -1);
  // Its before-sleep sweep publishes Head and takes the request: the writer, woken, has room.
  assert.equal(r.takeSpaceWanted(true), true);
  const at = w.reserve(976);
  assert.ok(at >= 0);
  w.words[(at >>> 2) + RecordWord.Type] = 1;
  w.commit();
  // A writer that asks after the sweep took the flag sees the Head the sweep published.
  assert.equal(r.takeSpaceWanted(true), false);
  // Everything arrives once, in order.
  let got = 0;
  for (let k = 0; k < 2 * n && r.next(); k++) {
    r.release();
    got++;
  }
  assert.equal(got, n);
  assert.equal(r.broken, undefined);
});

test("a hostile PAD at 0 spanning the whole lane goes round once per call at most; the reader never loops or reads outside", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const words = laneWords(channel);
  const r = new LaneReader(channel, 0, 6);
  for (let k = 0; k < 1000; k++) {
    words[RecordWord.Type] = 0;
    Atomics.store(words, RecordWord.Size, LANE_BYTES);
    assert.equal(r.next(), false);
    if (r.broken) break;
  }
  // A PAD that ends the lane, then one at 0 that spans it: two PADs in one call break the lane.
  const ctl = new Int32Array(channel, laneOffset(0), LANE_HEADER_BYTES / 4);
  Atomics.store(ctl, LaneWord.Head, LANE_BYTES - 8);
  rawRecord(words, LANE_BYTES - 8, 8, 0, 0, 0, []);
  words[RecordWord.Type] = 0;
  Atomics.store(words, RecordWord.Size, LANE_BYTES);
  const r2 = new LaneReader(channel, 0, 6);
  assert.equal(r2.next(), false);
  assert.match(r2.broken ?? "", /PAD/);
});

test("after a record fails the peer as garbage, the records behind it are not delivered from the dead peer", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const b = channelEnd(channel, 1);
  const evil = new LaneWriter(channel, 0);
  const put = (type: number, payload: number) => {
    const at = evil.reserve(payload);
    const i = at >>> 2;
    evil.words[i + RecordWord.Type] = type;
    evil.words[i + RecordWord.MatchLo] = 6;
    evil.words[i + RecordWord.Length] = payload;
    evil.bytes.fill(0xab, at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + payload);
    evil.commit();
  };
  put(RecordType.Ping, 0);
  put(RecordType.Eager, 100);
  const recv = postRecv(b, new Uint8Array(100), 6);
  b.path.receive();
  assert.match(b.partner.dead ?? "", /garbage/);
  assert.ok(
    !(recv.state === RequestState.Done && recv.code === MxStatus.SUCCESS),
    "a message read after its sender was failed for garbage completes a receive",
  );
});

test("honest pair on two threads, both sleeping as the library does: no wake-up is missed, every record arrives once, in order", async () => {
  const RECORDS = 100_000;
  // Far longer than any wake-up takes: a sleep that reaches it is a missed wake-up, counted.
  const MISS_MS = 5000;
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const readerIntr = new SharedArrayBuffer(8);
  const writerIntr = new SharedArrayBuffer(8);
  const result = new SharedArrayBuffer(12);
  const rIntr = new Int32Array(readerIntr);
  const wIntr = new Int32Array(writerIntr);
  const res = new Int32Array(result);
  const worker = new Worker(new URL("./fixtures/lane-sleeper.js", import.meta.url), {
    workerData: {
      laneSleeper: true,
      channel,
      readerIntr,
      writerIntr,
      result,
      records: RECORDS,
      missTimeoutMs: MISS_MS,
    },
  });
  let workerError: unknown;
  worker.once("error", (e) => {
    workerError = e;
  });
  const r = new LaneReader(channel, 0, 3);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let seq = 0;
  let polls = 0;
  let idle = 0;
  let sleeps = 0;
  let readerMissed = 0;
  let bad = "";
  const wakeWriter = () => {
    Atomics.add(wIntr, 0, 1);
    Atomics.notify(wIntr, 0);
  };
  // One receive() as channel-path.ts does it: read what is there, then the space protocol.
  const round = (sweep: boolean): boolean => {
    let moved = false;
    while (seq < RECORDS && bad === "" && r.next()) {
      const n = sleeperSize(seq);
      if (r.matchHi !== seq || r.length !== n)
        bad = `record ${seq}: got seq ${r.matchHi}, length ${r.length}`;
      else if (
        n > 0 &&
        ((n > 1 && r.bytes[r.payload] !== (seq & 0xff)) ||
          r.bytes[r.payload + n - 1] !== ((seq >>> 8) & 0xff))
      )
        bad = `record ${seq}: payload wrong`;
      r.release();
      seq++;
      moved = true;
      // Now and then busy elsewhere for a moment, so the writer fills the lane and waits.
      if (Math.imul(seq, 0x165667b1) >>> 0 < 0x00800000) Atomics.wait(nap, 0, 0, 0.3);
    }
    if ((moved || sweep || r.unpublished) && r.takeSpaceWanted(sweep)) wakeWriter();
    return moved;
  };
  while (seq < RECORDS && bad === "" && readerMissed < 2 && workerError === undefined) {
    if (round((++polls & 31) === 0)) {
      idle = 0;
      continue;
    }
    if (r.broken) {
      bad = `lane broken: ${r.broken}`;
      break;
    }
    if (++idle < 64) continue;
    // sleepUntil: announce the sleep (in the lane), sweep, then sleep unless the sweep found
    // something or the writer took the flag since.
    idle = 0;
    const seen = Atomics.load(rIntr, 0);
    r.announceSleep();
    if (!round(true) && seq < RECORDS && r.sleepAnnounced) {
      sleeps++;
      if (Atomics.wait(rIntr, 0, seen, MISS_MS) === "timed-out") readerMissed++;
    }
    r.awake();
  }
  // The writer is done once its last record is read (bounded: a missed wake-up costs MISS_MS).
  for (let k = 0; k < 20 && Atomics.load(res, 0) === 0 && bad === "" && workerError === undefined; k++)
    Atomics.wait(nap, 0, 0, 100);
  await worker.terminate();
  assert.equal(workerError, undefined);
  assert.equal(bad, "");
  assert.equal(seq, RECORDS);
  assert.equal(Atomics.load(res, 0), 1, "the writer finished");
  assert.equal(readerMissed, 0, "the reader slept through a record it was not woken for");
  assert.equal(Atomics.load(res, 1), 0, "the writer slept on a full lane and was not woken");
  assert.equal(r.next(), false);
  // Both waits were exercised (else the test shows nothing).
  assert.ok(Atomics.load(res, 2) > 0, "the writer found the lane full at times");
  assert.ok(sleeps > 0, "the reader slept at times");
});

test("fuzz: a reader on a lane of random words, from a random (even unaligned) Head, never throws, loops or points outside", () => {
  let s = 0x12345678;
  const rnd = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
  for (let round = 0; round < 300; round++) {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const words = laneWords(channel);
    const ctl = new Int32Array(channel, laneOffset(0), LANE_HEADER_BYTES / 4);
    // Noise, then a chain of plausible records from Head round the lane (PADs at its end),
    // then a few words of the chain corrupted.
    for (let i = 0; i < words.length; i++) words[i] = rnd() % 4 === 0 ? (rnd() % 64) * 8 : rnd();
    const head = round % 4 === 0 ? rnd() : (rnd() % (LANE_BYTES / 8)) * 8;
    Atomics.store(ctl, LaneWord.Head, head);
    let pos = head % LANE_BYTES;
    for (let left = LANE_BYTES - 64; left > 0; ) {
      const size = Math.min(48 + (rnd() % 256) * 8, left);
      const till = LANE_BYTES - pos;
      if (size > till || rnd() % 50 === 0) {
        words[(pos >>> 2) + RecordWord.Size] = till;
        words[(pos >>> 2) + RecordWord.Type] = 0;
        left -= till;
        pos = 0;
        continue;
      }
      const i = pos >>> 2;
      words[i + RecordWord.Size] = size;
      words[i + RecordWord.Type] = (1 + (rnd() % 6)) | ((rnd() % 16) << 16);
      words[i + RecordWord.Length] = rnd() % 16 === 0 ? rnd() : rnd() % Math.max(1, size - 47);
      pos = (pos + size) % LANE_BYTES;
      left -= size;
    }
    for (let k = 0; k < 3; k++) words[rnd() % words.length] = rnd() % 2 === 0 ? (rnd() % 64) * 8 : rnd();
    const r = new LaneReader(channel, 0, 6);
    let n = 0;
    for (let calls = 0; calls < 50 && !r.broken; calls++) {
      while (n < LANE_BYTES && r.next()) {
        assert.ok(r.payload >= RECORD_HEADER_BYTES && r.payload <= LANE_BYTES);
        if ((r.flags & RecordFlag.NoPayload) === 0) assert.ok(r.payload + r.length <= LANE_BYTES);
        r.release();
        n++;
      }
      // The peer writes a few more words meanwhile.
      for (let k = 0; k < 4; k++) words[rnd() % words.length] = k % 2 === 0 ? (rnd() % 64) * 8 : rnd();
      r.takeSpaceWanted(calls % 2 === 0);
    }
    assert.ok(n < LANE_BYTES, "bounded by the lane's size per lap");
  }
});

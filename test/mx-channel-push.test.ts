/**
 * The co-resident channel's pipelined rendezvous (src/mx/channel-path.ts; records.ts: RNDV,
 * CTS, FRAGs): two endpoints' real library parts joined by a real channel, progressed by
 * turns in one thread — so a slow reader, a reader that dies mid-message and a hostile
 * writer are exact, not a matter of scheduling.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { LaneWriter } from "../src/mx/channel.js";
import { CHANNEL_FRAGMENT, channelFragment, FLAG_PUSH, RecordType } from "../src/mx/records.js";
import { MxRequest, RequestState } from "../src/mx/types.js";
import {
  CHANNEL_BYTES,
  closeChannelLanes,
  LANE_BYTES,
  RECORD_HEADER_BYTES,
  RecordFlag,
  RecordWord,
} from "../src/myrixen/channel-abi.js";
import { MxStatus } from "../src/nic/status.js";
import { channelEnd, postRecv } from "./helpers/mx-parts.js";

const RNDV_THRESHOLD = 32 * 1024;

const end = channelEnd;
type End = ReturnType<typeof end>;

function pair(): { a: End; b: End; channel: SharedArrayBuffer } {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  return { a: end(channel, 0), b: end(channel, 1), channel };
}

/** mx_isend as MxEndpoint.send does it on a channel. */
function isend(e: End, buffer: Uint8Array, matchLo: number): MxRequest {
  const req = new MxRequest("send", buffer, undefined);
  req.peer = e.partner;
  req.matchLo = matchLo;
  req.msgLength = buffer.length;
  req.rndv = buffer.length > RNDV_THRESHOLD;
  if (req.rndv) assert.ok(e.path.pushes(req), "this test's rendezvous are all pushed");
  if (e.partner.backlog.length > 0 || !e.path.trySend(req)) e.partner.backlog.push(req);
  return req;
}

/** More than a lane holds (LANE_BYTES): a pushed message waits for the reader, and a turn falls mid-message. */
const BIG = 4 * LANE_BYTES;
const irecv = postRecv;

/** One progress of an endpoint, as MxEndpoint.progress does it for a channel peer. */
function progress(e: End): boolean {
  if (e.partner.dead !== undefined) return false;
  const moved = e.path.receive();
  if (e.partner.dead === undefined && e.partner.backlog.length > 0) e.p.partners.flush(e.partner);
  return moved;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

test("a rendezvous of four lanes' worth is pushed through the lane to a slow reader: in order, no NIC, nothing registered", () => {
  const { a, b } = pair();
  const data = pattern(BIG, 5);
  const send = isend(a, data, 9);
  const recv = irecv(b, new Uint8Array(BIG), 9);
  let turns = 0;
  let readerTurns = 0;
  while (recv.state !== RequestState.Done) {
    assert.ok(++turns < 10_000, "the transfer must finish");
    progress(a);
    // The reader takes a turn only every fifth time: the writer meets a full lane and waits.
    if (turns % 5 === 0) {
      progress(b);
      readerTurns++;
    }
  }
  progress(a);
  assert.equal(recv.code, MxStatus.SUCCESS);
  assert.equal(recv.xferLength, BIG);
  assert.deepEqual(recv.buffer, data);
  assert.equal(send.state, RequestState.Done);
  assert.equal(send.code, MxStatus.SUCCESS);
  assert.equal(send.xferLength, BIG);
  // More than a lane's worth went through a lane: the writer was held back and resumed.
  assert.ok(readerTurns > BIG / LANE_BYTES);
  for (const e of [a, b]) {
    assert.equal(e.p.driver.registered, 0, "a pushed rendezvous registers nothing");
    assert.equal(e.p.ctx.counters.bounces, 0);
    assert.equal(e.p.ctx.counters.channelErrors, 0);
    assert.equal(e.p.nic.pulling, false);
  }
});

test("both sides push to each other at once through full lanes without a deadlock; a receive posted late still gets its data", () => {
  const { a, b } = pair();
  const da = pattern(3 << 18, 1);
  const db = pattern(3 << 18, 2);
  const sa = isend(a, da, 1);
  const sb = isend(b, db, 1);
  // Eager messages queued behind the rendezvous keep their order and arrive too.
  const ea = isend(a, pattern(4000, 3), 2);
  const ra = irecv(a, new Uint8Array(3 << 18), 1);
  progress(b); // b sees a's RNDV before posting: it waits as unexpected
  const rb = irecv(b, new Uint8Array(3 << 18), 1);
  const rb2 = irecv(b, new Uint8Array(4000), 2);
  for (let turns = 0; [sa, sb, ra, rb, rb2].some((r) => r.state !== RequestState.Done); turns++) {
    assert.ok(turns < 10_000, "the exchange must finish");
    progress(a);
    progress(b);
  }
  assert.deepEqual(ra.buffer, db);
  assert.deepEqual(rb.buffer, da);
  assert.deepEqual(rb2.buffer, pattern(4000, 3));
  assert.equal(ea.code, MxStatus.SUCCESS);
  for (const r of [sa, sb, ra, rb, rb2]) assert.equal(r.code, MxStatus.SUCCESS);
});

test("a receive smaller than the rendezvous gets its first bytes, TRUNCATED; the sender pushes only those", () => {
  const { a, b } = pair();
  const data = pattern(100_000, 7);
  const send = isend(a, data, 4);
  const recv = irecv(b, new Uint8Array(50_000), 4);
  for (let t = 0; send.state !== RequestState.Done || recv.state !== RequestState.Done; t++) {
    assert.ok(t < 1000);
    progress(a);
    progress(b);
  }
  assert.equal(recv.code, MxStatus.TRUNCATED);
  assert.deepEqual([recv.msgLength, recv.xferLength], [100_000, 50_000]);
  assert.deepEqual(recv.buffer, data.subarray(0, 50_000));
  assert.deepEqual([send.code, send.xferLength], [MxStatus.SUCCESS, 50_000]);
});

test("a reader that dies mid-message: the sender's send fails with a reason, nothing hangs", () => {
  const { a, b, channel } = pair();
  const send = isend(a, pattern(BIG, 9), 3);
  const recv = irecv(b, new Uint8Array(BIG), 3);
  for (let i = 0; i < 3; i++) {
    progress(a);
    progress(b);
  }
  assert.ok(recv.state === RequestState.Pulling && send.state === RequestState.Pulling, "mid-message");
  // The reader's domain dies: myrback closes the channel's lanes.
  closeChannelLanes(channel);
  progress(a);
  a.path.checkClosed();
  assert.equal(send.state, RequestState.Done);
  assert.equal(send.code, MxStatus.ENDPOINT_CLOSED);
  assert.match(send.reason ?? "", /went away/);
  progress(a); // nothing left to push, nothing thrown
  // The reader's own receive, had it survived, fails the same way (not left Pulling).
  b.path.checkClosed();
  assert.equal(recv.state, RequestState.Done);
  assert.equal(recv.code, MxStatus.ENDPOINT_CLOSED);
});

/** A hostile writer on side 0 of `channel`: raw records, any words it likes. */
function hostileRecord(
  w: LaneWriter,
  type: number,
  words: { length: number; aux: number[]; flags?: number },
  payload = 0,
): void {
  const at = w.reserve(payload);
  assert.ok(at >= 0);
  const i = at >>> 2;
  w.words[i + RecordWord.Type] = type | ((words.flags ?? 0) << 16);
  w.words[i + RecordWord.MatchHi] = 0;
  w.words[i + RecordWord.MatchLo] = 6;
  w.words[i + RecordWord.Length] = words.length;
  for (let k = 0; k < words.aux.length; k++) w.words[i + RecordWord.Aux + k] = words.aux[k];
  w.bytes.fill(0xee, at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + payload);
  w.commit();
}

test("a hostile writer's FRAGs: wrong offsets and lengths fail that message, never read or write outside it", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const b = end(channel, 1);
  const evil = new LaneWriter(channel, 0);
  // Announce a 40000-byte rendezvous (seq 0, sync id 77); b's receive matches and clears it.
  hostileRecord(evil, RecordType.Rndv, {
    length: 40_000,
    aux: [77, 0, 0, 0, 0, 0],
    flags: RecordFlag.NoPayload | FLAG_PUSH,
  });
  const backing = new Uint8Array(60_000).fill(0x11);
  const recv = irecv(b, backing.subarray(10_000, 50_000), 6);
  progress(b);
  assert.equal(recv.state, RequestState.Pulling);
  // b's CTS names the transfer id the FRAGs must carry.
  const cts = new Uint32Array(channel, CHANNEL_BYTES / 2 + 4096, 12);
  assert.equal(cts[RecordWord.Type] & 0xffff, RecordType.Cts);
  const id = cts[RecordWord.Aux + 1];
  assert.equal(cts[RecordWord.Aux + 2], 40_000);
  // A first FRAG that is right, then one that claims more than the transfer has left.
  hostileRecord(evil, RecordType.Frag, { length: CHANNEL_FRAGMENT, aux: [id, 0] }, CHANNEL_FRAGMENT);
  hostileRecord(evil, RecordType.Frag, { length: 30_000, aux: [id, CHANNEL_FRAGMENT] }, 30_000);
  progress(b);
  assert.equal(recv.state, RequestState.Done);
  assert.equal(recv.code, MxStatus.ABORTED);
  assert.match(recv.reason ?? "", /30000 bytes at offset 16384 of a 40000-byte transfer/);
  // Nothing outside the receive buffer was written; the bad FRAG's bytes were not copied.
  assert.ok(backing.subarray(0, 10_000).every((x) => x === 0x11));
  assert.ok(backing.subarray(50_000).every((x) => x === 0x11));
  assert.ok(backing.subarray(10_000 + CHANNEL_FRAGMENT, 50_000).every((x) => x === 0x11));
  // Later FRAGs for the failed transfer, and for transfers never opened, are dropped and counted.
  const errors = b.p.ctx.counters.channelErrors;
  hostileRecord(evil, RecordType.Frag, { length: 8, aux: [id, CHANNEL_FRAGMENT] }, 8);
  hostileRecord(evil, RecordType.Frag, { length: 8, aux: [id + 1000, 0] }, 8);
  progress(b);
  assert.equal(b.p.ctx.counters.channelErrors, errors + 2);
  assert.equal(b.partner.dead, undefined, "a bad message fails that message, not the peer");

  // A FRAG whose header claims a payload larger than its record: the lane is broken, the peer
  // failed, and a receive still being pushed fails with it.
  hostileRecord(evil, RecordType.Rndv, {
    length: 50_000,
    aux: [78, 1, 0, 0, 0, 0],
    flags: RecordFlag.NoPayload | FLAG_PUSH,
  });
  const recv2 = irecv(b, new Uint8Array(50_000), 6);
  progress(b);
  assert.equal(recv2.state, RequestState.Pulling);
  const at = evil.reserve(8);
  evil.words[(at >>> 2) + RecordWord.Type] = RecordType.Frag;
  evil.words[(at >>> 2) + RecordWord.Length] = LANE_BYTES * 4;
  evil.commit();
  assert.doesNotThrow(() => progress(b));
  assert.match(b.partner.dead ?? "", /garbage/);
  assert.equal(recv2.state, RequestState.Done);
  assert.notEqual(recv2.code, MxStatus.SUCCESS);
});

test("a hostile receiver's CTS for no rendezvous of ours fails that peer with a reason; the sender never throws", () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const a = end(channel, 0);
  const evil = new LaneWriter(channel, 1);
  const send = isend(a, pattern(40_000, 1), 2);
  // A CTS for more than the message, then one naming a sync id never issued.
  hostileRecord(evil, RecordType.Cts, { length: 0, aux: [send.syncId, 1, 1 << 30] });
  assert.doesNotThrow(() => progress(a));
  assert.match(a.partner.dead ?? "", /CTS/);
  assert.equal(send.state, RequestState.Done);
  assert.notEqual(send.code, MxStatus.SUCCESS);
});

test("rendezvous are pushed one at a time: while one is under way, the next is left to the NIC", () => {
  const { a, b } = pair();
  const another = () => {
    const r = new MxRequest("send", new Uint8Array(40_000), undefined);
    r.peer = a.partner;
    r.rndv = true;
    return r;
  };
  const first = isend(a, pattern(300_000, 1), 5);
  assert.equal(first.pushed, true);
  // While it is under way, a second one is not pushed (it is registered and pulled).
  const second = another();
  assert.equal(a.path.pushes(second), false);
  assert.equal(second.pushed, false);
  const recv = irecv(b, new Uint8Array(300_000), 5);
  for (let t = 0; first.state !== RequestState.Done || recv.state !== RequestState.Done; t++) {
    assert.ok(t < 1000);
    progress(a);
    progress(b);
  }
  assert.deepEqual(recv.buffer, pattern(300_000, 1));
  // The first is done: the next one is pushed again.
  assert.equal(a.path.pushes(another()), true);
});

test("a push's FRAGs carry 16 KiB for its first 64 KiB, then 64 KiB (a 64 KiB message keeps the small pieces)", () => {
  const K = 1024;
  assert.deepEqual([0, 16 * K, 48 * K, 64 * K, 128 * K, 8 * K * K].map(channelFragment), [
    16 * K,
    16 * K,
    16 * K,
    64 * K,
    64 * K,
    64 * K,
  ]);
});

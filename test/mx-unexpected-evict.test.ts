/**
 * Which peer the limit on kept messages (matching.ts, maxUnexpectedBytes) fails: the peer
 * address that sent the most, over all its connections and sessions. A hostile peer once
 * flooded in rounds, each on a fresh connection (or a reopened endpoint) and each smaller than
 * what an honest peer had waiting: counted per connection, the honest peer held the most once
 * the rounds passed the limit, and was failed, its messages dropped, while the hostile
 * connected again. Here the hostile plays it with the real parts — channels written by a
 * sender's own library, records through the NIC path's receive — against a victim endpoint.
 * And a peer whose messages are all received, but which never reads the answers its
 * synchronous sends ask for.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { LaneWriter } from "../src/mx/channel.js";
import { Channels, NOTIFY_WAITING_MAX } from "../src/mx/channel-path.js";
import { KEPT_RECORD_COST } from "../src/mx/matching.js";
import { NicRecords } from "../src/mx/nic-path.js";
import { nicRecordAux0 } from "../src/mx/nic-records.js";
import { MsgAux, RecordType } from "../src/mx/records.js";
import { MxRequest, nextSendSeq, type Partner } from "../src/mx/types.js";
import { CHANNEL_BYTES, RecordWord } from "../src/myrixen/channel-abi.js";
import { MxStatus } from "../src/nic/status.js";
import {
  E_AUX0,
  E_AUX1,
  E_LENGTH,
  E_MATCH_HI,
  E_MATCH_LO,
  E_RECV_OFFSET,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_SRC_SESSION,
  E_TRACE_SEQ,
  EQ_OFFSET,
  RECV_OFFSET,
} from "../src/nic/window.js";
import { channelEnd, parts } from "./helpers/mx-parts.js";

const ALL = 0xffffffff;
const MSG = 16 * 1024;
const KEPT = MSG + KEPT_RECORD_COST;
/** The victim's limit: 256 messages. */
const LIMIT = 256 * KEPT;
/** The honest peer's messages, waiting for the victim's receives. */
const HONEST = 48;
/** A hostile round: fewer messages than the honest peer has waiting. */
const ROUND = 40;
const HONEST_TAG = 7;
const HOSTILE_TAG = 999;

/** The victim takes its receives for the honest peer's messages: all of them, in order, intact. */
function receiveHonest(victim: ReturnType<typeof parts>, from: Partner): void {
  for (let i = 0; i < HONEST; i++) {
    const r = new MxRequest("recv", new Uint8Array(MSG), undefined);
    r.matchLo = HONEST_TAG;
    r.matchMaskHi = ALL;
    r.matchMaskLo = ALL;
    victim.matching.post(r);
    assert.equal(r.code, MxStatus.SUCCESS, `the honest peer's message ${i} is still kept`);
    assert.equal(r.source, from.address);
    assert.deepEqual([r.buffer[0], r.buffer[MSG - 1]], [i, i]);
  }
  assert.equal(victim.matching.probe(0, HOSTILE_TAG, ALL, ALL), undefined, "the hostile's messages went");
}

test("a peer flooding in rounds, reconnecting its channel after each, is the one failed past the limit; the honest peer's messages are all received", () => {
  const victim = parts(undefined, LIMIT);
  const channels = new Channels(victim);
  let channelId = 1;
  /** A fresh channel from a sender library at (0, ep, session): what DRIVER_EVENT_CONNECT does on the victim. */
  const connect = (ep: number, session: number) => {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const sender = channelEnd(channel, 1);
    // Each connection of the sender's library is a new epoch of its sequence numbers (types.ts).
    sender.partner.sendSeq = channelId << 16;
    const partner = victim.partners.add(0, ep, session);
    channels.attach(partner, {
      channelId: channelId++,
      channel,
      side: 0,
      peerIntr: new SharedArrayBuffer(4096),
    });
    return { sender, partner };
  };
  /** The victim's progress, its sweep on (endpoint.ts). */
  const progress = () => {
    victim.partners.compact();
    for (const p of victim.partners.list) {
      if (p.dead !== undefined || p.channel === undefined) continue;
      const moved = p.channel.receive(true);
      if (p.dead === undefined && !moved) p.channel.checkClosed();
    }
  };
  /** `n` eager messages of MSG bytes with match (0, tag), each filled with its number. */
  const send = (s: ReturnType<typeof connect>, n: number, tag: number) => {
    const sent: MxRequest[] = [];
    for (let i = 0; i < n; i++) {
      const req = new MxRequest("send", new Uint8Array(MSG).fill(i), undefined);
      req.peer = s.sender.partner;
      req.matchLo = tag;
      req.msgLength = MSG;
      for (let tries = 0; !s.sender.path.trySend(req); tries++) {
        assert.ok(tries < 1000, "the lane drains");
        progress();
        s.sender.path.receive(true);
      }
      sent.push(req);
    }
    progress();
    return sent;
  };

  const honest = connect(2, 102);
  for (const r of send(honest, HONEST, HONEST_TAG)) assert.equal(r.code, MxStatus.SUCCESS);
  let rounds = 0;
  let hostile: ReturnType<typeof connect> | undefined;
  while (victim.ctx.counters.unexpectedOverflows === 0) {
    assert.ok(rounds < 2 * Math.ceil(LIMIT / (ROUND * KEPT)), "the limit was passed");
    hostile = connect(3, 103);
    send(hostile, ROUND, HOSTILE_TAG);
    if (hostile.partner.dead !== undefined) break;
    // mx_disconnect on the hostile side: its library closes the channel; the victim takes
    // what was written and fails that connection, keeping its messages for receives to come.
    hostile.sender.path.release();
    progress();
    assert.match(hostile.partner.dead ?? "", /went away/);
    rounds++;
  }
  assert.ok(hostile !== undefined && rounds > 2, `the hostile sent ${rounds} rounds before the limit`);
  assert.equal(honest.partner.dead, undefined, "the honest peer is not failed");
  assert.equal(victim.ctx.counters.unexpectedOverflows, 1);
  // Failed for everything its address sent, its earlier connections' messages included: far more than a round.
  const said =
    /^it sent ([\d.]+) MiB of messages this endpoint had to keep .*earlier connections.* over its limit/.exec(
      hostile.partner.dead ?? "",
    );
  assert.ok(said, `the hostile's connection: ${hostile.partner.dead}`);
  assert.ok(Number(said[1]) * 2 ** 20 > 3 * ROUND * KEPT, said[0]);
  assert.equal(hostile.partner.account.kept, 0, "nothing of the hostile's is kept");
  receiveHonest(victim, honest.partner);
  assert.equal(honest.partner.account.kept, 0, "received messages count no longer");
  // The honest peer sends on.
  const more = send(honest, 1, HONEST_TAG + 1);
  assert.equal(more[0].code, MxStatus.SUCCESS);
  // A gone connection's messages are released when the victim receives them, too: a peer
  // that disconnects after sending is no flooder.
  const leaver = connect(4, 104);
  send(leaver, 4, 5);
  leaver.sender.path.release();
  progress();
  assert.equal(leaver.partner.account.kept, 4 * KEPT);
  for (let i = 0; i < 4; i++) {
    const r = new MxRequest("recv", new Uint8Array(MSG), undefined);
    r.matchLo = 5;
    r.matchMaskLo = ALL;
    victim.matching.post(r);
    assert.deepEqual([r.code, r.buffer[0]], [MxStatus.SUCCESS, i]);
  }
  assert.equal(victim.partners.get(0, 4)?.account.kept, 0);
});

test("a peer flooding through the NIC in rounds, reopening its endpoint (a new session) after each, is the one failed and refused; the honest peer's messages are all received", () => {
  const victim = parts(undefined, LIMIT);
  const records = new NicRecords(victim);
  const w = victim.nic.window;
  const bytes = victim.nic.windowBytes;
  const base = EQ_OFFSET / 4;
  /** A RECV event: an EAGER record of MSG bytes from (nic 5, ep, session), filled with `fill`. */
  const recv = (ep: number, session: number, seq: number, tag: number, fill: number) => {
    w[base + E_LENGTH] = MSG;
    w[base + E_RECV_OFFSET] = 0;
    w[base + E_SRC_NIC] = 5;
    w[base + E_SRC_ENDPOINT] = ep;
    w[base + E_SRC_SESSION] = session;
    w[base + E_MATCH_HI] = 0;
    w[base + E_MATCH_LO] = tag;
    w[base + E_AUX0] = nicRecordAux0(RecordType.Eager, 0, 0);
    w[base + E_AUX1] = seq;
    w[base + E_TRACE_SEQ] = 0;
    bytes.fill(fill, RECV_OFFSET, RECV_OFFSET + MSG);
    records.onRecv(base);
  };

  for (let i = 0; i < HONEST; i++) recv(2, 77, i, HONEST_TAG, i);
  const honest = victim.partners.get(5, 2);
  assert.ok(honest);
  let session = 1000;
  while (victim.ctx.counters.unexpectedOverflows === 0) {
    assert.ok(session < 1000 + 2 * Math.ceil(LIMIT / (ROUND * KEPT)), "the limit was passed");
    session++;
    // The hostile's first record of a new session fails its partner of the old one ("reopened").
    for (let seq = 0; seq < ROUND; seq++) recv(3, session, seq, HOSTILE_TAG, 0);
  }
  assert.ok(session - 1000 > 2, `the hostile reopened ${session - 1000} times before the limit`);
  assert.equal(honest.dead, undefined, "the honest peer is not failed");
  assert.equal(honest.refused, false);
  const hostile = victim.partners.get(5, 3);
  assert.ok(hostile);
  assert.equal(hostile.session, session);
  assert.match(hostile.dead ?? "", /had to keep .*earlier connections.* over its limit/);
  assert.equal(hostile.refused, true, "the hostile's session is refused");
  // What it sends on in that session is refused, not kept.
  const errors = victim.ctx.counters.channelErrors;
  recv(3, session, ROUND, HOSTILE_TAG, 0);
  assert.equal(victim.ctx.counters.channelErrors, errors + 1);
  assert.equal(hostile.account.kept, 0);
  receiveHonest(victim, honest);
});

test("a peer that writes synchronous messages and never reads the answers is failed once NOTIFY_WAITING_MAX of them wait: the receiver's queue stays bounded", () => {
  // A hostile co-resident peer writes raw synchronous EAGERs (it keeps nothing for them) and
  // never reads its lane: every message the victim matched queued its NOTIFY in the victim's
  // heap, 4 million of them 122 MiB in 3 s, until its heap limit ended it.
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const hostile = channelEnd(channel, 0); // its library is only used for its sequence numbers
  const victim = channelEnd(channel, 1);
  const lane = new LaneWriter(channel, 0);
  const buffer = new Uint8Array(8);
  const waiting = () => (victim.path as unknown as { notifyWaiting: number[] }).notifyWaiting.length / 3;
  let sent = 0;
  let received = 0;
  let most = 0;
  while (victim.partner.dead === undefined && sent < 2 * NOTIFY_WAITING_MAX) {
    let n = 0;
    for (let at = lane.reserve(8); at >= 0; at = lane.reserve(8), n++) {
      const i = at >>> 2;
      lane.words[i + RecordWord.Type] = RecordType.Eager;
      lane.words[i + RecordWord.MatchHi] = 0;
      lane.words[i + RecordWord.MatchLo] = 7;
      lane.words[i + RecordWord.Length] = 8;
      lane.words[i + RecordWord.Aux + MsgAux.SyncId] = (sent++ % 0xfffffe) + 1;
      lane.words[i + RecordWord.Aux + MsgAux.Seq] = nextSendSeq(hostile.partner);
      lane.commit();
    }
    // The victim takes every message, as an ANY_SOURCE server loop does.
    for (let k = 0; k < n; k++) {
      const r = new MxRequest("recv", buffer, undefined);
      r.matchLo = 7;
      r.matchMaskHi = ALL;
      r.matchMaskLo = ALL;
      victim.p.matching.post(r);
    }
    victim.path.receive(true);
    for (let r = victim.p.completion.first(); r !== undefined; r = victim.p.completion.first()) {
      victim.p.completion.reap(r);
      received++;
    }
    most = Math.max(most, waiting());
  }
  assert.ok(
    victim.partner.dead !== undefined,
    `the peer was not failed: ${waiting()} NOTIFYs wait after ${sent} synchronous messages`,
  );
  assert.match(
    victim.partner.dead,
    /does not read the channel: 262144 answers to its synchronous sends wait/,
  );
  assert.ok(most <= NOTIFY_WAITING_MAX, `${most} NOTIFYs waited at once`);
  assert.ok(received >= NOTIFY_WAITING_MAX, `only ${received} of its messages were received before`);
  assert.equal(waiting(), 0, "the failed peer's queue is let go");
});

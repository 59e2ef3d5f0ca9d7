/**
 * Closing lanes and parked driver events (channel-path.ts ChannelPath.end, park; Channels
 * .taken), found by a reviewer's PoCs against the first version of the fix, on the real library parts
 * (Channels, ChannelPath, LanePolicer, LaneGroups) in one thread, on a clock the test holds:
 * a receiving endpoint (0, 1) and a sender endpoint (0, 5) of domain 9 capped at 100
 * messages a second, connecting to it again and again. myrback's acceptChannel is the fake's.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Channels } from "../src/mx/channel-path.js";
import { LaneGroups } from "../src/mx/lane-policer.js";
import { MxRequest, RequestState } from "../src/mx/types.js";
import {
  CHANNEL_BYTES,
  closeChannelLanes,
  LANE_POLICY_BYTES,
  writeLanePolicy,
} from "../src/myrixen/channel-abi.js";
import {
  DRIVER_EVENT_CONNECT,
  DRIVER_EVENT_DISCONNECT,
  type MxDriver,
  MxDriverError,
} from "../src/myrixen/driver-abi.js";
import { channelEnd, parts, postRecv } from "./helpers/mx-parts.js";

const RATE = 100; // messages a second: the bucket is 25 ms deep, at least 1

function receiver() {
  const clock = { t: 1000 };
  const rank = { ...parts(), now: () => clock.t, laneGroups: new LaneGroups() };
  const channels = new Channels(rank);
  const offered = new Map<number, { channel: SharedArrayBuffer; page: SharedArrayBuffer }>();
  (rank.driver as unknown as { acceptChannel: MxDriver["acceptChannel"] }).acceptChannel = (_ep, id) => {
    const o = offered.get(id);
    if (o === undefined) throw new MxDriverError("MX_CONNECTION_FAILED", `channel ${id} is gone`);
    return {
      channelId: id,
      channel: o.channel,
      side: 1,
      peerIntr: new SharedArrayBuffer(4096),
      policy: o.page,
      peerNic: 0,
      peerEndpoint: 5,
      peerSession: 555,
    };
  };
  let seq = 0;
  /** The sender connects (a fresh channel), writes `n` 8-byte eager messages (numbered), and disconnects. */
  const round = (id: number, n: number, readConnectFirst = true) => {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const page = new SharedArrayBuffer(LANE_POLICY_BYTES);
    writeLanePolicy(page, { bytesPerSec: 0, msgsPerSec: RATE, weight: 1, group: 9 });
    offered.set(id, { channel, page });
    if (readConnectFirst) channels.onDriverEvent(DRIVER_EVENT_CONNECT, id, 0, 5, 555);
    const s = channelEnd(channel, 0);
    for (let i = 0; i < n; i++) {
      const buf = new Uint8Array(8);
      new DataView(buf.buffer).setUint32(0, seq++, true);
      const req = new MxRequest("send", buf, undefined);
      req.peer = s.partner;
      req.matchLo = 7;
      req.msgLength = 8;
      assert.ok(s.path.trySend(req), "fits in the lane");
      assert.equal(req.state, RequestState.Done, "an eager send completes once in the lane");
    }
    closeChannelLanes(channel); // mx_disconnect
    if (!readConnectFirst) channels.onDriverEvent(DRIVER_EVENT_CONNECT, id, 0, 5, 555);
    channels.onDriverEvent(DRIVER_EVENT_DISCONNECT, id, 0, 5, 555);
  };
  /** MxEndpoint.progress, a sweep. */
  const progress = () => {
    const { partners } = rank;
    partners.compact();
    const peers = partners.list;
    for (let p = 0; p < peers.length; p++) {
      const peer = peers[p];
      if (peer.dead !== undefined || peer.channel === undefined) continue;
      const ch = peer.channel;
      const moved = ch.receive(true);
      if (peer.dead !== undefined) continue;
      if (!moved) ch.checkClosed();
    }
  };
  const recvs: MxRequest[] = [];
  const post = (n: number) => {
    for (let i = 0; i < n; i++) recvs.push(postRecv({ p: rank } as never, new Uint8Array(8), 7));
  };
  const done = () => recvs.filter((r) => r.state === RequestState.Done);
  return { clock, rank, channels, round, progress, post, done, recvs, offered };
}

test("a capped sender's connect/send/disconnect loop: each parked channel is read in turn, none attached over another, every one released", () => {
  const r = receiver();
  const PER = 10;
  const ROUNDS = 3;
  r.post(PER * ROUNDS);
  // Three rounds, back to back (eager sends complete once in the lane: nothing to wait for).
  for (let k = 1; k <= ROUNDS; k++) r.round(k, PER);
  // The receiver goes on progressing while time passes: 100/s, 30 messages, 2 s is plenty.
  for (let ms = 0; ms < 5000; ms += 5) {
    r.clock.t += 5;
    r.progress();
  }
  const got = r.done().map((q) => new DataView(q.buffer.buffer).getUint32(0, true));
  const released = (r.rank.driver as unknown as { released: number[] }).released;
  assert.deepEqual(
    { got: got.length, released: [...released].sort() },
    { got: PER * ROUNDS, released: [1, 2, 3] },
    `every message arrives and every channel is released (got messages ${JSON.stringify(got)})`,
  );
  assert.deepEqual(
    got,
    Array.from({ length: PER * ROUNDS }, (_, i) => i),
    "in order: each connection's after the one before",
  );
});

test("a flood of reconnects while a lane closes is refused past what a closing peer parks: the lane is never read whole past a message cap", () => {
  const r = receiver();
  const PER = 200; // messages per channel (a real lane holds ~4,000 such)
  const ROUNDS = 200;
  r.post(PER * ROUNDS);
  // The clock never moves: a cap of 100/s with a 25 ms bucket allows 1 message (the overdraw).
  for (let k = 1; k <= ROUNDS; k++) {
    r.round(k, PER);
    r.progress();
  }
  const got = r.done().length;
  assert.ok(got <= 2, `${got} messages read in 0 ms from a sender capped at ${RATE}/s`);
});

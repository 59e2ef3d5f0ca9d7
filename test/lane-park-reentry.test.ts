/**
 * Closing lanes and a peer that reopens, or the receiver's own connect (Channels.taken,
 * batch; found by a reviewer's PoCs against 3524641): the lane-park harness,
 * with the sender's endpoint reopened (a new session) between rounds, and the receiving
 * endpoint's own mx_connect (Connections.connect). Real Channels, ChannelPath, LanePolicer,
 * LaneGroups, PartnerTable, Connections; a fake driver and a clock the test holds.
 *
 * What went wrong before (each test fails on 3524641):
 *  1. A parked channel of another session replayed behind a parked channel that became a
 *     closing partner goes to Channels.connected, which takes that closing lane whole
 *     (lost(stale, …, now = true)): a capped sender that reopens its endpoint between
 *     connect/fill/close rounds has every lane but the first and last read at once.
 *  2. Inside that lost(), the closing partner's release replays its own parked channel, which
 *     makes a new live partner; connected() then partners.add()s that one and attaches the
 *     new session's channel over it: the replayed channel is never read nor released.
 *  3. The endpoint's own mx_connect: checkClosed(true) fails the closing partner, whose
 *     release replays a parked (closed) channel into a new closing partner; connect goes on
 *     with its stale `known`, and attaches the channel myrback just made over that partner's
 *     closing one: its messages lost, its mapping kept.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Channels } from "../src/mx/channel-path.js";
import { Connections } from "../src/mx/connections.js";
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
  const offered = new Map<number, { channel: SharedArrayBuffer; page: SharedArrayBuffer; session: number }>();
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
      peerSession: o.session,
    };
  };
  let seq = 0;
  const offer = (id: number, session: number) => {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const page = new SharedArrayBuffer(LANE_POLICY_BYTES);
    writeLanePolicy(page, { bytesPerSec: 0, msgsPerSec: RATE, weight: 1, group: 9 });
    offered.set(id, { channel, page, session });
    return { channel, page };
  };
  const fill = (channel: SharedArrayBuffer, side: 0 | 1, n: number) => {
    const s = channelEnd(channel, side);
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
  };
  /** Sender endpoint (0, 5) of `session` connects (channel `id`), writes `n` messages, disconnects. */
  const round = (id: number, n: number, session: number) => {
    const { channel } = offer(id, session);
    channels.onDriverEvent(DRIVER_EVENT_CONNECT, id, 0, 5, session);
    fill(channel, 0, n);
    closeChannelLanes(channel); // mx_disconnect (or its endpoint closed)
    channels.onDriverEvent(DRIVER_EVENT_DISCONNECT, id, 0, 5, session);
  };
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
  const got = () => done().map((q) => new DataView(q.buffer.buffer).getUint32(0, true));
  const released = () =>
    [...(rank.driver as unknown as { released: number[] }).released].sort((a, b) => a - b);
  return { clock, rank, channels, round, progress, post, done, got, released, offer, fill };
}

test("a capped sender that reopens its endpoint between rounds has each lane read at its cap: another session's channel waits behind the closing lane", () => {
  const r = receiver();
  const PER = 200;
  const ROUNDS = 10;
  r.post(2 + PER * ROUNDS);
  // Round 1: 2 messages, the second held by the cap: the lane closes at the cap's rate.
  r.round(1, 2, 1);
  r.progress();
  // Rounds 2..: the sender's endpoint reopened each time (a new session), a lane's worth each.
  for (let k = 2; k <= ROUNDS; k++) r.round(k, PER, k);
  const t0 = r.clock.t;
  for (let ms = 0; ms < 50; ms += 5) {
    r.clock.t += 5;
    r.progress();
  }
  const elapsed = (r.clock.t - t0) / 1000;
  const got = r.done().length;
  const allowed = 2 + Math.ceil(elapsed * RATE) + 1;
  assert.ok(
    got <= allowed,
    `${got} messages read in ${elapsed * 1000} ms from a sender capped at ${RATE}/s (at most ~${allowed})`,
  );
});

test("a reopened sender's channels are each read and released, none attached over a replayed one: every message arrives", () => {
  const r = receiver();
  r.post(2 + 10 * 3);
  r.round(1, 2, 1); // session 1: its lane closes at the cap's rate
  r.progress();
  r.round(2, 10, 2); // session 2: connect, send, disconnect
  r.round(3, 10, 2); // session 2 again
  r.round(4, 10, 3); // the endpoint reopened: session 3
  for (let ms = 0; ms < 5000; ms += 5) {
    r.clock.t += 5;
    r.progress();
  }
  assert.deepEqual(
    { got: r.got().length, released: r.released() },
    { got: 32, released: [1, 2, 3, 4] },
    `every message the sender saw complete arrives, every channel is released (got ${JSON.stringify(r.got())})`,
  );
});

test("the receiver's own mx_connect while a closing lane has a parked channel: the parked one is read and released, the new one attached beside it", () => {
  const r = receiver();
  const { rank, channels } = r;
  // myrback's connect from our side: a fresh channel (the pair's last one was released).
  const mine = r.offer(9, 555);
  (rank.driver as unknown as { connect: MxDriver["connect"] }).connect = () => ({
    peerNic: 0,
    peerEndpoint: 5,
    peerSession: 555,
    channel: {
      channelId: 9,
      channel: mine.channel,
      side: 1,
      peerIntr: new SharedArrayBuffer(4096),
      policy: mine.page,
    },
  });
  const conns = new Connections(
    rank.ctx,
    rank.driver,
    rank.partners,
    channels,
    {} as never,
    undefined,
    () => true,
  );
  r.post(2 + 10);
  r.round(1, 2, 555); // its lane closes at the cap's rate
  r.progress();
  r.round(2, 10, 555); // connect, send 10, disconnect: parked behind lane 1
  const peer = conns.connect(0, 5, 0x5eed, 1000);
  for (let ms = 0; ms < 5000; ms += 5) {
    r.clock.t += 5;
    r.progress();
  }
  assert.deepEqual(
    { got: r.got().length, released: r.released(), channel: peer.channel?.channelId },
    { got: 12, released: [1, 2], channel: 9 },
    `every message the sender saw complete arrives, lanes 1 and 2 released (got ${JSON.stringify(r.got())})`,
  );
});

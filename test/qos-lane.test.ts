/**
 * Co-resident eager messages held to the QoS policy (issue 16; src/mx/lane-policer.ts): the
 * receiving library reads a lane no faster than the limits myrback wrote into the lane
 * policy page it granted the receiver alone.
 *
 * The first tests run two endpoints' real library parts over a real channel in one thread on
 * a clock the test moves, so every count is exact. The last runs real guests on a real host:
 * a capped sender floods a co-resident receiver, scribbling over its channel first; the
 * receiver notes when each message arrives on its own clock and the test checks that in
 * every stretch of the receiver's progress no more arrived than the cap allows (a loaded
 * machine only makes fewer arrive: no assertion depends on speed).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { ChannelPath } from "../src/mx/channel-path.js";
import { LANE_QUANTUM, LaneGroups } from "../src/mx/lane-policer.js";
import { MxRequest, RequestState } from "../src/mx/types.js";
import {
  CHANNEL_BYTES,
  LANE_BYTES,
  LANE_POLICY_BYTES,
  type LanePolicy,
  readLaneCounters,
  writeLanePolicy,
} from "../src/myrixen/channel-abi.js";
import { lanePolicy, qosSettings } from "../src/myrixen/qos-policy.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";
import { channelEnd, parts, postRecv } from "./helpers/mx-parts.js";

const end = channelEnd;

function pair(limits: LanePolicy) {
  const clock = { t: 1000 };
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const page = new SharedArrayBuffer(LANE_POLICY_BYTES);
  writeLanePolicy(page, limits);
  // a sends, b receives: b's page holds the limits of the lane a writes.
  return { clock, page, channel, a: end(channel, 0, clock), b: end(channel, 1, clock, page) };
}

function isend(e: ReturnType<typeof end>, bytes: number, seq: number): MxRequest {
  const buffer = new Uint8Array(bytes);
  if (bytes >= 4) new DataView(buffer.buffer).setUint32(0, seq, true);
  const req = new MxRequest("send", buffer, undefined);
  req.peer = e.partner;
  req.matchLo = 7;
  req.msgLength = bytes;
  if (e.partner.backlog.length > 0 || !e.path.trySend(req)) e.partner.backlog.push(req);
  return req;
}

function irecv(e: ReturnType<typeof end>, bytes: number): MxRequest {
  return postRecv(e, new Uint8Array(bytes), 7);
}

const done = (reqs: MxRequest[]) => reqs.filter((r) => r.state === RequestState.Done).length;

test("a message cap: one message, then one per 1/rate of the receiver's clock; the rest waits in the lane", () => {
  const rate = 2000; // messages/s: a bucket 25 ms deep holds 50; it starts empty, as at the NIC
  const { clock, a, b } = pair({ bytesPerSec: 0, msgsPerSec: rate, weight: 1 });
  const N = 400;
  const sends = Array.from({ length: N }, (_, i) => isend(a, 8, i));
  assert.equal(done(sends), N, "8-byte messages all fit in the lane: every send completed");
  const recvs = Array.from({ length: N }, () => irecv(b, 8));
  b.path.receive();
  // No tokens yet, but a record may start while the bucket is not in debt: one.
  assert.equal(done(recvs), 1);
  assert.equal(b.p.ctx.counters.laneHolds, 1);
  assert.ok(b.p.ctx.lookAgainAt > clock.t, "the endpoint knows when to look again");
  b.path.receive();
  assert.equal(done(recvs), 1, "no time passed: nothing more");
  assert.equal(b.p.ctx.counters.laneHolds, 1, "the same hold");
  let steps = 0;
  while (done(recvs) < N) {
    clock.t += 1; // 1 ms: two messages' worth
    b.p.ctx.lookAgainAt = 0;
    b.path.receive();
    steps++;
    // In every stretch of the receiver's clock, at most the bucket plus the rate got through.
    assert.ok(done(recvs) <= 1 + (rate * steps) / 1000, `${done(recvs)} after ${steps} ms`);
  }
  assert.ok(steps >= (N - 1) / 2, `${steps} ms for ${N - 1} messages at ${rate}/s`);
  assert.ok(b.p.ctx.counters.laneHolds >= (N - 1) / 2, "each ms of debt was a hold");
  recvs.forEach((r, i) => {
    assert.equal(r.code, 0);
    assert.equal(new DataView(r.buffer.buffer).getUint32(0, true), i, "in order, intact");
  });
});

test("a byte cap, a full lane and a sender that waits: slowed, never lost; the cap changed at run time takes hold at once", () => {
  const { clock, page, a, b } = pair({ bytesPerSec: 1e6, msgsPerSec: 0, weight: 1 });
  // 1 MB/s (a bucket of at most 25,000 bytes); 8 KiB messages, twice what the lane holds.
  const N = (2 * LANE_BYTES) / 8192;
  const sends = Array.from({ length: N }, (_, i) => isend(a, 8192, i));
  assert.ok(done(sends) < N, "the lane filled: the rest wait in the sender's backlog");
  const recvs = Array.from({ length: N }, () => irecv(b, 8192));
  const progress = () => {
    b.path.receive();
    if (a.partner.backlog.length > 0) a.p.partners.flush(a.partner);
  };
  progress();
  assert.equal(done(recvs), 1, "an empty bucket: one message, which overdraws");
  let ms = 0;
  while (done(recvs) < 40) {
    clock.t += 1;
    ms++;
    progress();
    assert.ok(done(recvs) * 8192 <= 8192 + ms * 1000, `${done(recvs)} messages after ${ms} ms`);
  }
  // The toolstack lifts the cap (myrback rewrites the receiver's page): the rest goes at once.
  writeLanePolicy(page, { bytesPerSec: 0, msgsPerSec: 0, weight: 1 });
  for (let i = 0; i < 200 && done(recvs) < N; i++) progress();
  assert.equal(done(recvs), N);
  assert.equal(done(sends), N);
  for (const [i, r] of recvs.entries()) assert.equal(new DataView(r.buffer.buffer).getUint32(0, true), i);
});

test("weights share one receiver's reading: a lane is read for weight × 64 KiB per round", () => {
  for (const weight of [1, 3]) {
    const { a, b } = pair({ bytesPerSec: 0, msgsPerSec: 0, weight });
    const N = 30; // 30 × 8 KiB = 240 KiB in the lane
    for (let i = 0; i < N; i++) isend(a, 8192, i);
    const recvs = Array.from({ length: N }, () => irecv(b, 8192));
    b.path.receive();
    const first = done(recvs);
    assert.equal(first, Math.min(N, (weight * LANE_QUANTUM) / 8192), `weight ${weight}: one round`);
    while (done(recvs) < N) b.path.receive();
  }
});

test("one domain's lanes into one receiver share its weight: two endpoints of a domain are read for one quantum a round, not two", () => {
  // Each lane was read for weight × 64 KiB per round: a guest that connected two endpoints to
  // a receiver got twice its weight of that receiver's reading.
  const rp = { ...parts(), laneGroups: new LaneGroups() };
  const lanes = [5, 5, 6].map((group, i) => {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const page = new SharedArrayBuffer(LANE_POLICY_BYTES);
    writeLanePolicy(page, { bytesPerSec: 0, msgsPerSec: 0, weight: 1, group });
    const sender = end(channel, 0);
    const partner = rp.partners.add(0, 10 + i, 200 + i);
    const path = new ChannelPath(
      partner,
      { channelId: i + 1, channel, side: 1, peerIntr: new SharedArrayBuffer(4096), policy: page },
      rp,
    );
    partner.channel = path;
    partner.fast = path;
    rp.partners.route(partner);
    for (let k = 0; k < 30; k++) isend(sender, 8192, k); // 240 KiB waiting in each lane
    return { page, path };
  });
  for (let k = 0; k < 90; k++)
    postRecv({ p: rp } as unknown as ReturnType<typeof end>, new Uint8Array(8192), 7);
  const taken = () => lanes.map((l) => readLaneCounters(l.page).taken);
  // One progress round: the endpoint counts it, then reads each lane once.
  const round = () => {
    rp.ctx.rounds++;
    for (const l of lanes) l.path.receive();
  };
  round();
  const [a, b, c] = taken();
  assert.equal(a + b, LANE_QUANTUM, `domain 5's two lanes together: ${a} + ${b}`);
  assert.equal(c, LANE_QUANTUM, "domain 6's one lane");
  round();
  const [a2, b2, c2] = taken();
  assert.equal(a2 + b2, 2 * LANE_QUANTUM);
  assert.equal(c2, 2 * LANE_QUANTUM);
  // One of domain 5's lanes goes: the other is read for the whole quantum again.
  lanes[1].path.release();
  round();
  const [a3, , c3] = taken();
  assert.equal(a3 - a2, LANE_QUANTUM);
  assert.equal(c3 - c2, LANE_QUANTUM);
  assert.equal(rp.laneGroups.size, 2);
});

test("the lane policy myrback writes: the sender's tx caps with the receiver's rx caps, the smaller of each, the sender's weight", () => {
  const writer = qosSettings({ weight: 3, tx: { msgsPerSec: 5000, bytesPerSec: 1e9 } });
  const reader = qosSettings({ rx: { bytesPerSec: 1e8 } });
  assert.deepEqual(lanePolicy(writer, reader), { bytesPerSec: 1e8, msgsPerSec: 5000, weight: 3 });
  assert.deepEqual(lanePolicy(writer, reader, 7), {
    bytesPerSec: 1e8,
    msgsPerSec: 5000,
    weight: 3,
    group: 7,
  });
  assert.deepEqual(lanePolicy(qosSettings(undefined), qosSettings(undefined)), {
    bytesPerSec: 0,
    msgsPerSec: 0,
    weight: 1,
  });
});

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 11, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

const LANE_GUEST = new URL("./fixtures/guests/qos-lane.js", import.meta.url);

test("real guests: a capped sender that floods a co-resident peer and scribbles over the channel is held to its cap, set at run time", async () => {
  const count = 600;
  const rate = 2000;
  const start = async (role: string, scribble?: boolean): Promise<[Domain, unknown]> => {
    const dom = await host.startGuest({
      module: LANE_GUEST,
      name: `lane-${role}`,
      pages: 512,
      args: { role, count, scribble },
    });
    const [addr] = (await nextMessage(dom)) as [unknown];
    return [dom, addr];
  };
  const [recv, recvAddr] = await start("receiver");
  const [send, sendAddr] = await start("sender", true);
  const connected = nextMessage(send);
  send.send(recvAddr);
  await connected;
  // The channel exists: the cap set now must reach it.
  await host.setQos(send.domid, { tx: { msgsPerSec: rate } });
  const sendEp = (sendAddr as { endpoint: number }).endpoint;
  for (const until = Date.now() + 20_000; ; ) {
    const info = await host.nicInfo();
    if (info.qos?.some((q) => q.endpointId === sendEp && q.settings.txMsgsPerSec === rate)) break;
    assert.ok(Date.now() < until, "myrback never applied the policy");
    await new Promise((r) => setTimeout(r, 20));
  }
  const report = nextMessage(send);
  send.send("go");
  const [s] = (await report) as [{ codes: string[]; scribbled: number }];
  assert.deepEqual(s.codes, ["MX_STATUS_SUCCESS"], "every send completed: nothing lost or failed");
  assert.ok(s.scribbled > 1000);
  // Every record now waits in the lane; the receiver starts reading.
  recv.send("go");
  const got = await recv.exited;
  send.send("done");
  assert.equal(got.state, "shutdown", got.error?.stack);
  assert.equal((await send.exited).state, "shutdown");
  const r = got.result as { times: number[]; order: number[]; holds: number };
  assert.deepEqual(
    r.order,
    Array.from({ length: count }, (_, i) => i),
    "all arrived, in order",
  );
  const depth = (rate * 25) / 1000;
  // By the (k+1)-th message, at most the bucket (+1: a record may overdraw) and the rate over
  // the receiver's time since it began reading.
  for (const [k, t] of r.times.entries())
    assert.ok(k + 1 <= depth + 1 + (rate * t) / 1000 + 1e-6, `${k + 1} messages by ${t} ms`);
  assert.ok(r.holds >= 1, "the receiver's bucket held the lane");
});

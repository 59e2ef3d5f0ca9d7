/**
 * What a blocking wait reads to decide between spinning on and sleeping while a large message
 * crosses a co-resident channel (ChannelPath.transferring; endpoint.ts TRANSFER_SPIN_MS): a
 * pushed rendezvous is under way from its announcement until its last FRAG, on both sides,
 * and only while the peer has not said it sleeps. Two endpoints' real library parts joined by
 * a real channel, progressed by turns in one thread, so every state is exact.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ChannelPath } from "../src/mx/channel-path.js";
import { MxRequest, RequestState } from "../src/mx/types.js";
import { CHANNEL_BYTES } from "../src/myrixen/channel-abi.js";
import { MxStatus } from "../src/nic/status.js";
import { I_SLEEPING } from "../src/nic/window.js";
import { parts } from "./helpers/mx-parts.js";

const ALL = 0xffffffff;
const RNDV_THRESHOLD = 32 * 1024;

/** One side of a channel; `peerIntr` is the other side's interrupt page (its sleeping flag). */
function end(channel: SharedArrayBuffer, side: 0 | 1, peerIntr: SharedArrayBuffer) {
  const p = parts();
  const partner = p.partners.add(0, 2 - side, 100 + side);
  const path = new ChannelPath(partner, { channelId: 1, channel, side, peerIntr }, p);
  partner.channel = path;
  partner.fast = path;
  p.partners.route(partner);
  return { p, partner, path };
}
type End = ReturnType<typeof end>;

function pair() {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const intrA = new SharedArrayBuffer(4096);
  const intrB = new SharedArrayBuffer(4096);
  return { a: end(channel, 0, intrB), b: end(channel, 1, intrA), intrA: new Int32Array(intrA) };
}

function isend(e: End, buffer: Uint8Array, matchLo: number): MxRequest {
  const req = new MxRequest("send", buffer, undefined);
  req.peer = e.partner;
  req.matchLo = matchLo;
  req.msgLength = buffer.length;
  req.rndv = buffer.length > RNDV_THRESHOLD;
  if (req.rndv) assert.ok(e.path.pushes(req), "a lone rendezvous is pushed");
  if (e.partner.backlog.length > 0 || !e.path.trySend(req)) e.partner.backlog.push(req);
  return req;
}

function irecv(e: End, buffer: Uint8Array, matchLo: number): MxRequest {
  const req = new MxRequest("recv", buffer, undefined);
  req.matchLo = matchLo;
  req.matchMaskHi = ALL;
  req.matchMaskLo = ALL;
  e.p.matching.post(req);
  return req;
}

function progress(e: End): boolean {
  const moved = e.path.receive();
  if (e.partner.backlog.length > 0) e.p.partners.flush(e.partner);
  return moved;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

test("a pushed rendezvous is under way on both sides from its announcement to its last piece, not before or after", () => {
  const { a, b } = pair();
  assert.equal(a.path.transferring(), false);
  assert.equal(b.path.transferring(), false);
  const data = pattern(1 << 20, 7);
  const send = isend(a, data, 3);
  // Announced, no CTS yet: the sender waits for a peer that is awake.
  assert.equal(a.path.transferring(), true);
  assert.equal(b.path.transferring(), false, "the receiver has not seen the announcement");
  const recv = irecv(b, new Uint8Array(1 << 20), 3);
  progress(b); // matches the RNDV and writes its CTS
  assert.equal(b.path.transferring(), true);
  let sawBothMidway = false;
  for (let turns = 0; recv.state !== RequestState.Done; turns++) {
    assert.ok(turns < 10_000, "the transfer must finish");
    progress(a);
    if ((recv.state as RequestState) !== RequestState.Done && a.path.transferring() && b.path.transferring())
      sawBothMidway = true;
    progress(b);
  }
  progress(a);
  assert.ok(sawBothMidway, "while pieces travel, both sides are transferring");
  assert.equal(send.code, MxStatus.SUCCESS);
  assert.equal(recv.code, MxStatus.SUCCESS);
  assert.deepEqual(recv.buffer, data);
  assert.equal(a.path.transferring(), false, "the sender is done once its last piece is in");
  assert.equal(b.path.transferring(), false, "the receiver is done once its last piece is out");
});

test("eager messages never count as a transfer; a peer that said it sleeps is not waited on by spinning", () => {
  const { a, b, intrA } = pair();
  const small = isend(a, pattern(4000, 1), 1);
  const mid = isend(a, pattern(RNDV_THRESHOLD, 2), 2);
  assert.equal(a.path.transferring(), false);
  const r1 = irecv(b, new Uint8Array(4000), 1);
  const r2 = irecv(b, new Uint8Array(RNDV_THRESHOLD), 2);
  progress(b);
  assert.equal(b.path.transferring(), false);
  for (const r of [small, mid, r1, r2]) assert.equal(r.code, MxStatus.SUCCESS);

  isend(b, pattern(1 << 19, 3), 4);
  assert.equal(b.path.transferring(), true);
  // a announces that it sleeps (endpoint.ts blockFor): b's wait should sleep too, a kick will come.
  Atomics.store(intrA, I_SLEEPING, 1);
  assert.equal(b.path.transferring(), false);
  Atomics.store(intrA, I_SLEEPING, 0);
  assert.equal(b.path.transferring(), true);
});

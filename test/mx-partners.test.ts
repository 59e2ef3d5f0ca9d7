/**
 * The peer table (src/mx/partner.ts): partners by (nic, endpoint), the opaque address and
 * the partner behind it, the way chosen per peer, backlogs flushed in order, and failing a
 * peer — everything waiting on it completes with the reason, the parts that hold something
 * of it let go, its channel is released. Real objects; RecordingPath stands in for a way.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { kPartner, MxAddress, MxRequest, type Partner, RequestState } from "../src/mx/types.js";
import { CHANNEL_BYTES } from "../src/myrixen/channel-abi.js";
import { MxStatus } from "../src/nic/status.js";
import { channelEnd, parts, peer, RecordingPath } from "./helpers/mx-parts.js";

function send(to: Partner, size = 8): MxRequest {
  const r = new MxRequest("send", new Uint8Array(size), undefined);
  r.peer = to;
  return r;
}

test("one live partner per (nic, endpoint); a failed one is replaced: our messages start the next connection, the peer's go on", () => {
  const p = parts();
  const a = p.partners.add(2, 5, 77);
  assert.equal(p.partners.add(2, 5, 77), a);
  assert.equal(p.partners.get(2, 5), a);
  a.sendSeq = 10;
  a.recvSeq = 4;
  p.partners.fail(a, "disconnected", MxStatus.ENDPOINT_CLOSED);
  const again = p.partners.add(2, 5, 77);
  assert.notEqual(again, a);
  assert.deepEqual(
    [again.sendSeq, again.recvSeq],
    [1 << 16, 4],
    "mx_disconnect then mx_connect: epoch 1, n = 0; the peer's numbering is its own",
  );
  // Epochs wrap as 16-bit counts.
  again.sendSeq = (0xffff << 16) | 7;
  p.partners.fail(again, "disconnected", MxStatus.ENDPOINT_CLOSED);
  assert.equal(p.partners.add(2, 5, 77).sendSeq, 0);
  p.partners.fail(p.partners.get(2, 5)!, "reopened", MxStatus.ENDPOINT_CLOSED);
  const reopened = p.partners.add(2, 5, 78);
  assert.deepEqual([reopened.sendSeq, reopened.recvSeq], [0, 0], "another session is another pair");
  assert.deepEqual(p.partners.live(), [reopened]);
});

test("an address is opaque: it names the peer, and only its own table finds the partner behind it", () => {
  const p = parts();
  const q = parts();
  const a = p.partners.add(1, 2, 3);
  const addr = a.address;
  assert.ok(addr instanceof MxAddress);
  assert.deepEqual([addr.nic, addr.endpoint, addr.session, String(addr)], [1, 2, 3, "nic 1 endpoint 2"]);
  assert.deepEqual(Object.keys(addr), ["nic", "endpoint", "session", "context"], "no peer state in sight");
  assert.equal(addr[kPartner], a);
  assert.equal(p.partners.of(addr), a);
  assert.equal(q.partners.of(addr), undefined, "an address of another endpoint");
  assert.equal(p.partners.of({ nic: 1, endpoint: 2, session: 3 }), undefined, "a look-alike");
});

test("the way to a peer: its fast way, or Ethernet when either side is on the split path", () => {
  const p = parts();
  const a = p.partners.add(0, 1, 1);
  const fast = new RecordingPath();
  const other = new RecordingPath();
  const ether = new RecordingPath();
  p.partners.setFast(a, fast);
  p.partners.setFast(a, other);
  assert.equal(a.path, fast, "the first fast way stays");
  a.ether = ether;
  p.partners.route(a);
  assert.equal(a.path, fast);
  a.peerSplit = true;
  p.partners.route(a);
  assert.equal(a.path, ether, "the peer is on the split path");
  a.peerSplit = false;
  p.partners.split = true;
  p.partners.route(a);
  assert.equal(a.path, ether, "we are");
  a.ether = undefined;
  p.partners.route(a);
  assert.equal(a.path, fast, "no MAC known: the fast way");
});

test("a backlog goes out in order while the path takes it", () => {
  const p = parts();
  const { partner, path } = peer(p);
  const reqs = [send(partner), send(partner), send(partner)];
  partner.backlog.push(...reqs);
  path.full = true;
  p.partners.flush(partner);
  assert.equal(path.sent.length, 0);
  path.full = false;
  p.partners.flush(partner);
  assert.deepEqual(path.sent, reqs);
  assert.equal(partner.backlog.length, 0);
});

test("a failed peer: its backlog and waiting sends complete with the reason, its channel is released", () => {
  const p = parts();
  const { partner } = peer(p);
  const other = peer(p, 8).partner;
  const queued = send(partner);
  partner.backlog.push(queued);
  const waiting = send(partner);
  p.sends.add(waiting);
  const elsewhere = send(other);
  p.sends.add(elsewhere);
  let released = 0;
  partner.channel = {
    channelId: 4,
    receive: () => false,
    checkClosed: () => {},
    drain: () => {},
    release: () => {
      released++;
    },
    announceSleep: () => {},
    sleepAnnounced: () => true,
    awake: () => {},
  };
  p.partners.fail(partner, "the peer endpoint went away", MxStatus.ENDPOINT_CLOSED);
  for (const r of [queued, waiting]) {
    assert.deepEqual(
      [r.state, r.code, r.reason],
      [RequestState.Done, MxStatus.ENDPOINT_CLOSED, "the peer endpoint went away"],
    );
  }
  assert.equal(elsewhere.state, RequestState.Queued, "another peer's send keeps waiting");
  assert.equal(p.sends.size, 1);
  assert.equal(released, 1);
  assert.equal(partner.dead, "the peer endpoint went away");
  p.partners.fail(partner, "again", MxStatus.ABORTED);
  assert.equal(queued.code, MxStatus.ENDPOINT_CLOSED, "failing twice is once");
  assert.equal(p.partners.list.length, 2);
  p.partners.compact();
  assert.deepEqual(p.partners.list, [other], "the poll list keeps the living");
});

test("a NOTIFY answers the send it names (a truncated receive is the sender's success); an unknown one is counted", () => {
  const p = parts();
  const { partner } = peer(p);
  const s = send(partner, 100);
  p.sends.add(s);
  assert.ok(s.syncId > 0);
  assert.equal(p.sends.get(s.syncId), s);
  p.sends.answer(partner, s.syncId, 60, MxStatus.TRUNCATED);
  assert.deepEqual([s.code, s.xferLength], [MxStatus.SUCCESS, 60]);
  p.sends.answer(partner, s.syncId, 60, MxStatus.SUCCESS);
  assert.equal(p.ctx.counters.channelErrors, 1);
  assert.equal(partner.address.toString(), "nic 0 endpoint 7");
});

test("a NOTIFY to a failed peer is not sent", () => {
  const p = parts();
  const { partner, path } = peer(p);
  partner.notify(1, 2, MxStatus.SUCCESS);
  p.partners.fail(partner, "gone", MxStatus.ENDPOINT_CLOSED);
  partner.notify(3, 4, MxStatus.SUCCESS);
  assert.deepEqual(path.notified, [[1, 2, MxStatus.SUCCESS]]);
});

test("a NOTIFY from a peer the send did not go to is counted and ignored: the send keeps waiting", () => {
  // Sync ids are sequential: any connected peer could guess one and, before, complete another
  // pair's rendezvous as if its receiver had pulled it (that receiver then never got the data).
  const p = parts();
  const to = peer(p, 7).partner;
  const forger = peer(p, 8).partner;
  const s = send(to, 100);
  p.sends.add(s);
  p.sends.answer(forger, s.syncId, 100, MxStatus.SUCCESS);
  assert.equal(s.state, RequestState.Queued, "not completed by the forger");
  assert.equal(p.sends.get(s.syncId), s);
  assert.equal(p.ctx.counters.channelErrors, 1);
  p.sends.answer(to, s.syncId, 100, MxStatus.SUCCESS);
  assert.deepEqual([s.code, s.xferLength], [MxStatus.SUCCESS, 100]);
});

test("a failed peer keeps no way to its channel: what still names the partner holds none of the channel's memory", () => {
  const e = channelEnd(new SharedArrayBuffer(CHANNEL_BYTES), 0);
  const req = send(e.partner);
  assert.equal(e.partner.fast, e.path);
  e.p.partners.fail(e.partner, "the peer endpoint went away", MxStatus.ENDPOINT_CLOSED);
  // A reaped request waits in the completion queue until its next sweep, and the program may
  // keep it for ever: its partner must not reach the lanes (half a MiB a peer).
  assert.equal(req.peer, e.partner);
  assert.equal(e.partner.channel, undefined);
  assert.equal(e.partner.fast, undefined);
  assert.equal(e.partner.path, undefined);
});

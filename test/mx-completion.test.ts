/**
 * Completion (src/mx/completion.ts) and what a request gives back as it completes: the
 * completion queue and reaping, a rendezvous send whose pull right the NIC still holds, a
 * bounce buffer copied back into a receive, and a pull through the NIC queues (nic-queues.ts)
 * answered by a fake NIC writing a PULL_DONE event into the window. Real objects otherwise.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MxRequest, RequestState } from "../src/mx/types.js";
import { MxStatus } from "../src/nic/status.js";
import {
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_REGION,
  DESC_WORDS,
  DFLAG_EXPOSURE,
  DFLAG_REMOTE,
  E_COOKIE,
  E_TYPE,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  Opcode,
  SQ_OFFSET,
  W_EQ_PROD,
  W_SQ_PROD,
  X_KEY,
  X_LENGTH,
  X_STATE,
} from "../src/nic/window.js";
import { parts, peer, RecordingPath, rndv } from "./helpers/mx-parts.js";

const ALL = 0xffffffff;

function req(kind: "send" | "recv", size: number, matchLo = 0, memory?: SharedArrayBuffer): MxRequest {
  const buf = memory ? new Uint8Array(memory, 0, size) : new Uint8Array(size);
  const r = new MxRequest(kind, buf, undefined);
  r.matchLo = matchLo;
  return r;
}

test("a completed request waits in the queue until reaped; completing twice is once", () => {
  const p = parts();
  const a = req("recv", 1, 1);
  const b = req("recv", 1, 2);
  p.completion.complete(a, MxStatus.SUCCESS, 1);
  p.completion.complete(b, MxStatus.TRUNCATED, 0);
  p.completion.complete(a, MxStatus.ABORTED, 0);
  assert.deepEqual([a.code, a.xferLength, a.state], [MxStatus.SUCCESS, 1, RequestState.Done]);
  assert.equal(p.completion.first(), a);
  assert.equal(p.completion.find(0, 2, ALL, ALL), b);
  assert.equal(p.completion.reap(a), a);
  assert.equal(a.state, RequestState.Reaped);
  assert.equal(p.completion.first(), b, "a reaped request is skipped");
  assert.equal(p.completion.find(0, 1, ALL, ALL), undefined);
});

test("many reaped requests are swept out of the queue without losing the unreaped ones", () => {
  const p = parts();
  const keep = req("recv", 0, 9);
  p.completion.complete(keep, MxStatus.SUCCESS, 0);
  for (let i = 0; i < 1000; i++) {
    const r = req("recv", 0, 1);
    p.completion.complete(r, MxStatus.SUCCESS, 0);
    p.completion.reap(r);
  }
  assert.equal(p.completion.first(), keep);
  assert.equal(p.completion.find(0, 1, ALL, ALL), undefined);
});

test("a rendezvous send completes only once the NIC lets go of its pull right", () => {
  const memory = new SharedArrayBuffer(1 << 20);
  const p = parts(memory);
  const { partner } = peer(p);
  const s = req("send", 50_000, 0, memory);
  s.rndv = true;
  s.peer = partner;
  assert.ok(p.regions.prepareSend(s), "registered in place");
  assert.ok(p.rights.expose(s));
  const x = new Int32Array(p.window, EXPOSURE_OFFSET);
  const at = s.xp * EXPOSURE_WORDS;
  assert.equal(x[at + X_STATE], ExposureState.Armed);
  assert.equal(x[at + X_LENGTH], 50_000);
  assert.notEqual(x[at + X_KEY], 0);
  // The receiver's NIC is copying under the right when the send ends.
  Atomics.store(x, at + X_STATE, ExposureState.Busy);
  p.completion.complete(s, MxStatus.SUCCESS, 50_000);
  assert.equal(s.state, RequestState.Revoking);
  assert.equal(x[at + X_STATE], ExposureState.Revoking);
  p.completion.finishRevokes();
  assert.equal(s.done, false, "the buffer is still being read");
  // The NIC ends the transfer.
  Atomics.store(x, at + X_STATE, ExposureState.Used);
  p.completion.finishRevokes();
  assert.deepEqual([s.state, s.code, s.xferLength], [RequestState.Done, MxStatus.SUCCESS, 50_000]);
  assert.equal(x[at + X_STATE], ExposureState.Free);
  assert.equal(x[at + X_KEY], 0, "the key is gone with the right");
  assert.equal(s.xp, -1);
  assert.equal(s.reg, undefined, "the registration went back to the cache");
});

test("a right nobody took is revoked at once", () => {
  const memory = new SharedArrayBuffer(1 << 20);
  const p = parts(memory);
  const s = req("send", 40_000, 0, memory);
  s.rndv = true;
  assert.ok(p.regions.prepareSend(s));
  assert.ok(p.rights.expose(s));
  p.completion.complete(s, MxStatus.ENDPOINT_CLOSED, 0);
  assert.equal(s.state, RequestState.Done);
});

test("a receive from outside the domain's memory is pulled into a bounce buffer and copied back as it completes", () => {
  const memory = new SharedArrayBuffer(4 << 20);
  const p = parts(memory);
  const r = req("recv", 10_000);
  const target = p.regions.pullTarget(r, 10_000);
  assert.ok(target !== undefined && r.bounce !== undefined);
  assert.equal(p.ctx.counters.bounces, 1);
  r.bounce.fill(7, 0, 10_000);
  p.completion.complete(r, MxStatus.SUCCESS, 10_000);
  assert.equal(r.buffer[9_999], 7);
  assert.equal(r.bounce, undefined);
  assert.ok(p.ctx.counters.bouncePooledBytes > 0, "the bounce buffer is pooled for the next one");
});

test("a rendezvous is pulled by the NIC: one PULL descriptor, then PULL_DONE completes the receive and answers the sender", () => {
  const memory = new SharedArrayBuffer(4 << 20);
  const p = parts(memory);
  const { partner, path } = peer(p);
  const r = req("recv", 8192, 4, memory);
  p.matching.post(r);
  p.matching.deliver(partner, rndv(p.nic, 4, 8192, 0, 55));
  assert.equal(r.state, RequestState.Pulling);
  assert.ok(p.nic.pulling);
  assert.ok(p.nic.pullingLocally, "a sender on our NIC: the NIC copies it, a sleeper may look for itself");
  // A pull that has not moved for a while (held behind a stalled descriptor, or for ever under a
  // closed endpoint) is slept on as anything else: kicked, not looked at every 0.1 ms.
  const t0 = performance.now();
  while (performance.now() - t0 < 3);
  assert.equal(p.nic.pullingLocally, false, "2 ms without a local pull posted or done");
  assert.ok(p.nic.pulling);
  // What the library posted: a PULL from the sender's right into the registered receive buffer.
  const w = new Int32Array(p.window);
  assert.equal(w[W_SQ_PROD], 1);
  const d = SQ_OFFSET / 4;
  assert.equal(w[d + D_OPCODE] & 0xffff, Opcode.Pull);
  assert.equal((w[d + D_OPCODE] >>> 16) & DFLAG_EXPOSURE, DFLAG_EXPOSURE);
  assert.deepEqual([w[d + D_SRC_REGION], w[d + D_SRC_KEY], w[d + D_LENGTH]], [3, 0xabc, 8192]);
  assert.equal(w[d + D_DEST_ENDPOINT], partner.endpoint);
  assert.ok(DESC_WORDS > D_DEST_ENDPOINT);
  // The fake NIC's answer.
  const e = EQ_OFFSET / 4;
  w[e + E_TYPE] = EventType.PullDone | (MxStatus.SUCCESS << 16);
  w[e + E_COOKIE] = w[d + D_COOKIE];
  Atomics.store(w, W_EQ_PROD, 1);
  p.nic.poll();
  assert.deepEqual([r.state, r.code, r.xferLength], [RequestState.Done, MxStatus.SUCCESS, 8192]);
  assert.deepEqual(path.notified, [[55, 8192, MxStatus.SUCCESS]]);
  assert.equal(p.nic.pulling, false);
  assert.equal(p.nic.pullingLocally, false);
  assert.ok(EVENT_WORDS > E_COOKIE);
});

test("a rendezvous from another NIC is pulled across the wire: DFLAG_REMOTE, and no quiet sleeping while it lasts", () => {
  const memory = new SharedArrayBuffer(4 << 20);
  const p = parts(memory);
  const partner = p.partners.add(5, 7, 107);
  p.partners.setFast(partner, new RecordingPath());
  const r = req("recv", 8192, 4, memory);
  p.matching.post(r);
  p.matching.deliver(partner, rndv(p.nic, 4, 8192, 0, 55));
  assert.deepEqual([r.state, p.nic.pulling, p.nic.pullingLocally], [RequestState.Pulling, true, false]);
  const w = new Int32Array(p.window);
  const d = SQ_OFFSET / 4;
  assert.equal((w[d + D_OPCODE] >>> 16) & DFLAG_REMOTE, DFLAG_REMOTE);
  const e = EQ_OFFSET / 4;
  w[e + E_TYPE] = EventType.PullDone | (MxStatus.SUCCESS << 16);
  w[e + E_COOKIE] = w[d + D_COOKIE];
  Atomics.store(w, W_EQ_PROD, 1);
  p.nic.poll();
  assert.deepEqual([r.code, p.nic.pulling, p.nic.pullingLocally], [MxStatus.SUCCESS, false, false]);
});

test("a pull whose source fails meanwhile completes only when the NIC reports it done", () => {
  const memory = new SharedArrayBuffer(4 << 20);
  const p = parts(memory);
  const { partner, path } = peer(p);
  const r = req("recv", 4096, 4, memory);
  p.matching.post(r);
  p.matching.deliver(partner, rndv(p.nic, 4, 4096, 0, 9));
  p.partners.fail(partner, "its host vanished", MxStatus.ENDPOINT_UNREACHABLE);
  assert.equal(r.state, RequestState.Pulling, "the NIC may still write into the buffer");
  const w = new Int32Array(p.window);
  const e = EQ_OFFSET / 4;
  w[e + E_TYPE] = EventType.PullDone | (MxStatus.SUCCESS << 16);
  w[e + E_COOKIE] = w[SQ_OFFSET / 4 + D_COOKIE];
  Atomics.store(w, W_EQ_PROD, 1);
  p.nic.poll();
  assert.deepEqual([r.code, r.reason], [MxStatus.ENDPOINT_UNREACHABLE, "its host vanished"]);
  assert.equal(path.notified.length, 0, "nothing is sent to a failed peer");
});

test("mx_forget: a request forgotten in flight completes as it would, and the queue keeps nothing of it; a done one is reaped", () => {
  const p = parts();
  const inFlight = req("send", 1, 1);
  p.completion.forget(inFlight);
  assert.equal(inFlight.forgotten, true);
  p.completion.complete(inFlight, MxStatus.SUCCESS, 1);
  assert.deepEqual([inFlight.code, inFlight.state], [MxStatus.SUCCESS, RequestState.Reaped]);
  assert.equal(p.completion.first(), undefined, "never reported");
  const done = req("recv", 1, 2);
  p.completion.complete(done, MxStatus.SUCCESS, 1);
  assert.equal(p.completion.first(), done);
  p.completion.forget(done);
  assert.equal(done.state, RequestState.Reaped);
  assert.equal(p.completion.first(), undefined);
  p.completion.forget(done);
  assert.equal(done.state, RequestState.Reaped, "forgetting twice is once");
});

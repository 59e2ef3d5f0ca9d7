/**
 * Buffers a hostile program hands the MX library (src/mx/codes.ts checkBuffer): objects that
 * lie about their length, Proxies, buffers resized or detached while their message is in
 * flight, and lengths MX cannot carry. The program may lose its own message; its peer gets a
 * whole message or a clear status, never a hang or a broken channel, and the pair keeps
 * working. Two endpoints' real library parts joined by a real channel, progressed by turns
 * in one thread, as mx-channel-push.test.ts does.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { BufferCheck, checkBuffer, MAX_MESSAGE_BYTES, MxError } from "../src/mx/codes.js";
import { MxRequest, RequestState } from "../src/mx/types.js";
import { CHANNEL_BYTES, LANE_BYTES } from "../src/myrixen/channel-abi.js";
import { MxStatus } from "../src/nic/status.js";
import { channelEnd } from "./helpers/mx-parts.js";

type End = ReturnType<typeof channelEnd>;

/**
 * A resizable ArrayBuffer (ES2024; Node 20 has it, this project's TypeScript lib does not).
 * A sandboxed guest can neither make one nor resize one its host sent it (the hypervisor could
 * not meter it: guest/fixed-length-buffers.ts), but the library also runs for trusted callers
 * that can (a privileged domain, a trusted program), and a guest still detaches buffers; the
 * library keeps coping with both, so these stay.
 */
type Resizable = ArrayBuffer & { resize(byteLength: number): void };
function resizable(n: number): Resizable {
  const Ctor = ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => Resizable;
  return new Ctor(n, { maxByteLength: n });
}

function pair(): { a: End; b: End } {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  return { a: channelEnd(channel, 0), b: channelEnd(channel, 1) };
}

/** mx_isend as MxEndpoint.send does it on a channel: the buffer checked, the library's view kept. */
function isend(e: End, buffer: unknown, matchLo: number): MxRequest {
  const view = checkBuffer(buffer, "isend");
  const req = new MxRequest("send", view, undefined);
  req.peer = e.partner;
  req.matchLo = matchLo;
  req.msgLength = view.length;
  req.rndv = view.length > 32 * 1024;
  if (req.rndv) assert.ok(e.path.pushes(req));
  if (e.partner.backlog.length > 0 || !e.path.trySend(req)) e.partner.backlog.push(req);
  return req;
}

/** mx_irecv of `buffer` for match value (0, matchLo), exact. */
function irecv(e: End, buffer: unknown, matchLo: number): MxRequest {
  const req = new MxRequest("recv", checkBuffer(buffer, "irecv"), undefined);
  req.matchLo = matchLo;
  e.p.matching.post(req);
  return req;
}

function progress(e: End): void {
  if (e.partner.dead !== undefined) return;
  e.path.receive();
  if (e.partner.dead === undefined && e.partner.backlog.length > 0) e.p.partners.flush(e.partner);
}

/** Larger than a lane (LANE_BYTES): a pushed message takes many turns, so a turn can fall mid-message. */
const BIG = 4 * LANE_BYTES;
/** Turns until `done`; `each(turn)` runs first in every turn. */
function run(a: End, b: End, done: () => boolean, each: (turn: number) => void = () => {}): void {
  for (let turn = 0; !done(); turn++) {
    assert.ok(turn < 20_000, "the exchange must end");
    each(turn);
    progress(a);
    progress(b);
  }
}

/** The pair still exchanges a message both ways, whole. */
function stillWorks(a: End, b: End, tag: number): void {
  for (const [from, to] of [
    [a, b],
    [b, a],
  ]) {
    const data = new Uint8Array(100_000).map((_, i) => i * 7);
    const r = irecv(to, new Uint8Array(100_000), tag);
    const s = isend(from, data, tag);
    run(a, b, () => r.done && s.done);
    assert.equal(r.code, MxStatus.SUCCESS);
    assert.deepEqual(r.buffer, data);
  }
  assert.equal(a.partner.dead, undefined);
  assert.equal(b.partner.dead, undefined);
}

test("a receive whose buffer is detached or shrunk while the message is pushed is aborted; the sender's send completes and the pair goes on", () => {
  for (const how of ["shrink", "detach"]) {
    const { a, b } = pair();
    const ab = resizable(BIG);
    const r = irecv(b, new Uint8Array(ab), 1);
    const s = isend(a, new Uint8Array(BIG).fill(9), 1);
    run(
      a,
      b,
      () => r.done && s.done,
      (turn) => {
        if (turn !== 3) return;
        if (how === "shrink") ab.resize(8);
        else structuredClone(ab, { transfer: [ab] });
      },
    );
    assert.equal(r.code, MxStatus.ABORTED, how);
    assert.match(r.reason ?? "", /irecv: its buffer was resized or detached while the message arrived/);
    assert.equal(s.code, MxStatus.SUCCESS, `${how}: the honest sender's send completes`);
    stillWorks(a, b, 2);
  }
});

test("a send whose buffer is detached or shrunk before or while it is pushed sends zeros in its place and is aborted; the receiver is not blamed", () => {
  for (const when of [0, 3]) {
    const { a, b } = pair();
    const ab = resizable(BIG);
    new Uint8Array(ab).fill(7);
    const s = isend(a, new Uint8Array(ab), 1);
    if (when === 0) ab.resize(8); // before the receiver's CTS
    const got = new Uint8Array(BIG).fill(1);
    const r = irecv(b, got, 1);
    run(
      a,
      b,
      () => r.done && s.done,
      (turn) => {
        if (when !== 0 && turn === when) structuredClone(ab, { transfer: [ab] });
      },
    );
    assert.equal(s.code, MxStatus.ABORTED);
    assert.match(s.reason ?? "", /isend: its buffer was resized or detached while the message was sent/);
    assert.equal(r.code, MxStatus.SUCCESS, "the receiver gets a whole message");
    assert.equal(r.xferLength, BIG);
    assert.equal(got[got.length - 1], 0, "zeros where the sender's bytes were gone");
    assert.equal(a.p.ctx.counters.channelErrors + b.p.ctx.counters.channelErrors, 0);
    stillWorks(a, b, 2);
  }
});

test("a buffer that lies about its length is read for what it is; a Proxy or a look-alike is refused", () => {
  const { a, b } = pair();
  const liar = new Uint8Array(64).fill(3);
  Object.defineProperty(liar, "length", { value: 1 << 20 });
  const into = new Uint8Array(64);
  Object.defineProperty(into, "length", { value: 1 << 20 });
  const r = irecv(b, into, 1);
  const s = isend(a, liar, 1);
  run(a, b, () => r.done && s.done);
  assert.deepEqual([s.code, r.code, r.xferLength, into[63]], [MxStatus.SUCCESS, MxStatus.SUCCESS, 64, 3]);
  for (const fake of [
    new Proxy(new Uint8Array(8), {}),
    Object.create(Uint8Array.prototype),
    new Int32Array(2),
    { length: 8, buffer: new ArrayBuffer(8), byteOffset: 0 },
  ]) {
    assert.throws(
      () => isend(a, fake, 1),
      (e: unknown) => e instanceof MxError && /isend: the buffer must be a Uint8Array/.test(e.message),
    );
  }
  const gone = new Uint8Array(8);
  structuredClone(gone.buffer, { transfer: [gone.buffer] });
  assert.throws(
    () => isend(a, gone, 1),
    (e: unknown) => e instanceof MxError && /isend: the buffer's memory was detached/.test(e.message),
  );
  stillWorks(a, b, 2);
  assert.equal(r.state, RequestState.Done);
});

test("a message longer than MX's 32-bit lengths is refused, not sent as an empty one", () => {
  // 4 GiB of address space, never touched: no memory is used.
  const huge = new Uint8Array(new ArrayBuffer(MAX_MESSAGE_BYTES + 1));
  assert.throws(
    () => checkBuffer(huge, "isend"),
    (e: unknown) =>
      e instanceof MxError && /at most 4294967295 bytes \(MX lengths are 32-bit\)/.test(e.message),
  );
  assert.equal(checkBuffer(huge.subarray(0, 16), "isend").length, 16);
});

test("the buffer a loop passes again keeps its view until it is resized or detached", () => {
  const check = new BufferCheck();
  const ab = resizable(64);
  const user = new Uint8Array(ab, 8, 32);
  const v = check.check(user, "isend");
  assert.notEqual(v, user, "the library's own view");
  assert.equal(check.check(user, "isend"), v, "the same buffer again: the same view");
  assert.notEqual(check.check(new Uint8Array(ab, 8, 32), "isend"), v, "another object: its own view");
  check.check(user, "isend");
  ab.resize(16);
  const after = check.check(user, "isend");
  assert.deepEqual(
    [after.length, v.length],
    [0, 0],
    "resized below it: an empty view, as the old one now reads",
  );
  const tracking = new Uint8Array(ab);
  assert.equal(check.check(tracking, "isend").length, 16);
  ab.resize(48);
  assert.equal(check.check(tracking, "isend").length, 48, "a length-tracking view is looked at again");
  assert.throws(() => check.check(new Proxy(user, {}), "isend"), /the buffer must be a Uint8Array/);
});

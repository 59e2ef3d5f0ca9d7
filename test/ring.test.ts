import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { PAGE_SIZE } from "../src/xen/abi.js";
import {
  BackRing,
  FrontRing,
  initSharedRing,
  RING_HEADER_BYTES,
  RingOffsets,
  ringEntries,
  ringSlotSize,
} from "../src/xen/ring.js";
import { adaptiveWait, DEFAULT_SPIN_US } from "../src/xen/wait.js";
import type { RingWorkerData, RingWorkerResult } from "./fixtures/ring-worker.js";

/** One ring page inside a larger SharedArrayBuffer (the second of three pages). */
function makePage(startIndex?: number): Uint8Array {
  const page = new Uint8Array(new SharedArrayBuffer(3 * PAGE_SIZE), PAGE_SIZE, PAGE_SIZE);
  initSharedRing(page, startIndex);
  return page;
}

function u32(page: Uint8Array, offset: number): number {
  return new DataView(page.buffer, page.byteOffset, PAGE_SIZE).getUint32(offset, true);
}

function setU32(page: Uint8Array, offset: number, value: number): void {
  new DataView(page.buffer, page.byteOffset, PAGE_SIZE).setUint32(offset, value >>> 0, true);
}

/** xorshift32: reproducible garbage. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** Front produces `n` 8-byte requests (seq, seq * 3) and pushes them; returns pushRequests(). */
function produce(front: FrontRing, firstSeq: number, n: number): boolean {
  for (let i = 0; i < n; i++) {
    const off = front.nextRequest();
    front.view.setUint32(off, firstSeq + i, true);
    front.view.setUint32(off + 4, (firstSeq + i) * 3, true);
  }
  return front.pushRequests();
}

/** Back answers every request it can with (seq, payload + 1); returns how many. */
function serve(back: BackRing): number {
  const req = new Uint8Array(8);
  const rv = new DataView(req.buffer);
  let n = 0;
  while (back.copyRequest(req)) {
    const off = back.nextResponse();
    back.view.setUint32(off, rv.getUint32(0, true), true);
    back.view.setUint32(off + 4, (rv.getUint32(4, true) + 1) >>> 0, true);
    n++;
  }
  return n;
}

test("layout: header offsets, SHARED_RING_INIT, slot sizes and entries", () => {
  assert.deepEqual(RingOffsets, { reqProd: 0, reqEvent: 4, rspProd: 8, rspEvent: 12, pvt: 16, ring: 64 });
  assert.equal(RING_HEADER_BYTES, 64);

  const page = new Uint8Array(new SharedArrayBuffer(PAGE_SIZE)).fill(0xa5);
  initSharedRing(page);
  assert.deepEqual(
    [0, 4, 8, 12, 16].map((o) => u32(page, o)),
    [0, 1, 0, 1, 0],
  );
  for (let i = 20; i < 64; i++) assert.equal(page[i], 0, `pad byte ${i} zeroed`);
  assert.equal(page[64], 0xa5, "init leaves the slots alone");

  initSharedRing(page, 2 ** 32 - 1);
  assert.deepEqual(
    [0, 4, 8, 12].map((o) => u32(page, o)),
    [2 ** 32 - 1, 0, 2 ** 32 - 1, 0],
  );

  // netif tx request 12 B / response 4 B → 256 entries; 8 B → 256; 112 B → 32.
  assert.equal(ringSlotSize(12, 4), 12);
  assert.equal(ringEntries(12), 256);
  assert.equal(ringEntries(ringSlotSize(8, 8)), 256);
  assert.equal(ringEntries(112), 32);
  assert.equal(ringSlotSize(10, 6), 12, "rounded up to 4 bytes");
  assert.equal(ringEntries(64), 32); // 4032 / 64 = 63 → 32
  assert.equal(ringEntries(4032), 1);
  assert.throws(() => ringEntries(4033), RangeError);
  assert.throws(() => ringEntries(0), RangeError);

  const front = new FrontRing(makePage(), 12, 4);
  assert.equal(front.size, 256);
  assert.equal(front.slotSize, 12);
  assert.equal(front.nextRequest(), 64);
  assert.equal(front.nextRequest(), 76);
  assert.equal(front.slotOffset(255), 64 + 255 * 12);
  assert.equal(front.slotOffset(256), 64, "slots are indexed modulo the ring size");

  const sab = new SharedArrayBuffer(2 * PAGE_SIZE);
  assert.throws(() => new FrontRing(new Uint8Array(sab, 4, PAGE_SIZE), 8, 8), /multiple of 8/);
  assert.throws(() => new BackRing(new Uint8Array(sab, 0, 100), 8, 8), /4096 bytes/);
  assert.throws(() => new FrontRing(new Uint8Array(sab, 0, PAGE_SIZE), 5000, 8), RangeError);
});

test("notify predicate: (new - event) < (new - old), both directions, batching and wrap", () => {
  const page = makePage();
  const front = new FrontRing(page, 8, 8);
  const back = new BackRing(page, 8, 8);

  assert.equal(front.pushRequests(), false, "nothing new: no notification");
  assert.equal(produce(front, 0, 1), true, "req_event = 1 lies in (0, 1]");
  assert.equal(produce(front, 1, 1), false, "req_event = 1 is not in (1, 2]: backend is awake");
  assert.equal(serve(back), 2);
  assert.equal(back.finalCheckForRequests(), false);
  assert.equal(u32(page, RingOffsets.reqEvent), 3, "req_event = req_cons + 1");
  assert.equal(produce(front, 2, 3), true, "event 3 lies in (2, 5]");
  assert.equal(produce(front, 5, 1), false);

  // Batching: the backend wants a notification only at the 4th next request.
  assert.equal(serve(back), 4);
  back.setRequestEvent(4); // req_event = 6 + 4 = 10
  assert.equal(produce(front, 6, 1), false);
  assert.equal(produce(front, 7, 2), false);
  assert.equal(produce(front, 9, 1), true, "the 4th request crosses the event");
  assert.throws(() => back.setRequestEvent(0), RangeError);
  assert.throws(() => back.setRequestEvent(back.size + 1), RangeError);

  // Responses: the frontend armed rsp_event = 1 at init.
  assert.equal(serve(back), 4);
  assert.equal(back.pushResponses(), true, "10 responses cross rsp_event = 1");
  assert.equal(front.unconsumedResponses(), 10);
  for (let i = 0; i < 10; i++) front.nextResponse();
  assert.equal(serve(back), 0);
  assert.equal(back.pushResponses(), false, "nothing new");
  produce(front, 10, 2);
  serve(back);
  assert.equal(back.pushResponses(), false, "rsp_event = 1 is stale: frontend did not ask");
  assert.equal(front.finalCheckForResponses(), true, "the responses are already there");
  front.nextResponse();
  front.nextResponse();
  assert.equal(front.finalCheckForResponses(), false);
  assert.equal(u32(page, RingOffsets.rspEvent), 13);
  produce(front, 12, 1);
  serve(back);
  assert.equal(back.pushResponses(), true, "rsp_event = 13 lies in (12, 13]");

  // Across 2^32: old = 2^32 - 2, new = 2, event = 2^32 - 1 → notify.
  const wpage = makePage(2 ** 32 - 2);
  const wfront = new FrontRing(wpage, 8, 8);
  assert.equal(u32(wpage, RingOffsets.reqEvent), 2 ** 32 - 1);
  assert.equal(produce(wfront, 0, 4), true);
  assert.equal(u32(wpage, RingOffsets.reqProd), 2);
  setU32(wpage, RingOffsets.reqEvent, 3); // event after new
  assert.equal(produce(wfront, 4, 1), true, "event 3 lies in (2, 3]");
  setU32(wpage, RingOffsets.reqEvent, 3); // event == old
  assert.equal(produce(wfront, 5, 1), false, "event 3 is not in (3, 4]");
});

test("final check closes the lost-wake-up race", () => {
  const page = makePage();
  const front = new FrontRing(page, 8, 8);
  const back = new BackRing(page, 8, 8);
  produce(front, 0, 1);
  assert.equal(serve(back), 1);
  back.pushResponses();

  // The backend sees no work ...
  assert.equal(back.unconsumedRequests(), 0);
  // ... the frontend pushes before the backend has re-armed req_event: no notification ...
  assert.equal(produce(front, 1, 1), false);
  // ... so a backend that slept now would never wake. The final check re-arms and re-checks.
  assert.equal(back.finalCheckForRequests(), true);
  assert.equal(serve(back), 1);

  // Armed first, then pushed: the push notifies.
  assert.equal(back.finalCheckForRequests(), false);
  assert.equal(produce(front, 2, 1), true);

  // Same on the response side.
  for (let n = front.unconsumedResponses(); n > 0; n--) front.nextResponse();
  assert.equal(front.unconsumedResponses(), 0);
  serve(back);
  assert.equal(back.pushResponses(), false, "rsp_event not re-armed yet");
  assert.equal(front.finalCheckForResponses(), true);
});

test("full ring: free count, RangeError on overfill, slots come back with responses", () => {
  const page = makePage();
  const front = new FrontRing(page, 112, 16);
  const back = new BackRing(page, 112, 16);
  assert.equal(front.size, 32);
  assert.equal(front.freeRequests(), 32);
  for (let i = 0; i < 32; i++) front.nextRequest();
  assert.equal(front.isFull(), true);
  assert.equal(front.freeRequests(), 0);
  assert.throws(() => front.nextRequest(), { name: "RangeError", message: /ring full/ });
  front.pushRequests();

  // The backend may consume at most `size` requests without answering.
  const buf = new Uint8Array(112);
  let consumed = 0;
  while (back.copyRequest(buf)) consumed++;
  assert.equal(consumed, 32);
  assert.equal(back.unconsumedRequests(), 0);
  assert.throws(() => new FrontRing(page, 112, 16).nextResponse(), RangeError);

  back.nextResponse();
  back.pushResponses();
  assert.equal(front.isFull(), true, "a response frees a slot only once consumed");
  assert.equal(front.unconsumedResponses(), 1);
  front.nextResponse();
  assert.equal(front.freeRequests(), 1);
  assert.throws(() => front.nextResponse(), RangeError, "no response beyond what was counted");
  for (let i = 0; i < 31; i++) back.nextResponse();
  assert.throws(() => back.nextResponse(), { name: "RangeError", message: /no consumed request/ });
  assert.throws(() => back.copyRequest(new Uint8Array(111)), RangeError);
});

for (const [bound, start] of [
  ["2^32", 2 ** 32 - 5],
  ["2^31", 2 ** 31 - 5],
] as const)
  test(`free-running indices wrap across ${bound}, kept as int32s (the same bits: a u32 past 2^31 is no V8 small integer, and the code holding it is deoptimised)`, () => {
    const page = makePage(start);
    const front = new FrontRing(page, 8, 8);
    const back = new BackRing(page, 8, 8);
    let sent = 0;
    let received = 0;
    for (let batch = 1; received < 100; batch = (batch % 9) + 1) {
      const n = Math.min(batch, 100 - sent, front.freeRequests());
      produce(front, sent, n);
      sent += n;
      assert.equal(front.freeRequests(), front.size - (sent - received));
      assert.equal(serve(back), n);
      back.pushResponses();
      const avail = front.unconsumedResponses();
      assert.equal(avail, n);
      for (let i = 0; i < avail; i++) {
        const off = front.nextResponse();
        assert.equal(front.view.getUint32(off, true), received);
        assert.equal(front.view.getUint32(off + 4, true), received * 3 + 1);
        received++;
      }
      assert.equal(front.finalCheckForResponses(), false);
      assert.equal(back.finalCheckForRequests(), false);
      for (const [ring, names] of [
        [front, ["reqProdPvt", "reqPushed", "rspCons", "rspSeen"]],
        [back, ["rspProdPvt", "rspPushed", "reqCons"]],
      ] as const)
        for (const name of names) {
          const v = (ring as unknown as Record<string, number>)[name];
          assert.equal(v, v | 0, `${name} left the int32s: ${v}`);
        }
    }
    assert.equal(u32(page, RingOffsets.reqProd), (start + 100) % 2 ** 32, "req_prod wrapped");
    assert.equal(u32(page, RingOffsets.rspProd), (start + 100) % 2 ** 32);
    assert.equal(front.broken, undefined);
    assert.equal(back.broken, undefined);
    // The first request sat in slot (start) mod 256 = 251.
    assert.equal(front.slotOffset(start), 64 + 251 * 8);
  });

test("copy before validate: rewriting the shared slot after copyRequest does not touch the copy", () => {
  const page = makePage();
  const front = new FrontRing(page, 16, 16);
  const back = new BackRing(page, 16, 16);
  const off = front.nextRequest();
  front.bytes.fill(7, off, off + 16);
  front.pushRequests();
  const copy = new Uint8Array(32).fill(9);
  assert.equal(back.copyRequest(copy), true);
  front.bytes.fill(0xff, off, off + 16); // the frontend changes its mind after the check
  assert.deepEqual([...copy.subarray(0, 16)], new Array(16).fill(7));
  assert.deepEqual([...copy.subarray(16)], new Array(16).fill(9), "copies exactly requestSize bytes");
  assert.equal(back.copyRequest(copy), false);
});

test("req_prod moved back after the backend counted its requests: what was counted is still consumed, one response each", () => {
  // netback counts the RX requests a frame needs, then takes them one by one. A frontend that
  // moved req_prod back in between made copyRequest read it again and fail, and the response
  // that followed threw in netback's pass ("no consumed request awaits a response"), which
  // left other guests' vifs unanswered. The backend now consumes up to the req_prod it
  // validated (netback reads it once per batch); what the frontend published stays published.
  const page = makePage();
  const front = new FrontRing(page, 16, 16);
  const back = new BackRing(page, 16, 16);
  for (let i = 0; i < 5; i++) {
    const off = front.nextRequest();
    front.bytes.fill(i + 1, off, off + 16);
  }
  front.pushRequests();
  assert.equal(back.unconsumedRequests(), 5);
  const reqProd = u32(page, RingOffsets.reqProd);
  setU32(page, RingOffsets.reqProd, reqProd - 3); // the hostile frontend takes three back
  const copy = new Uint8Array(16);
  for (let i = 0; i < 5; i++) {
    assert.equal(back.copyRequest(copy), true, `request ${i} of the five counted`);
    assert.equal(copy[0], i + 1);
    back.nextResponse();
  }
  // Then the shared word is read again: two behind req_cons is a broken frontend.
  assert.equal(back.copyRequest(copy), false);
  assert.match(back.broken ?? "", /req_prod/);
});

test("hostile frontend: 10,000 rounds of garbage never throw from BackRing; overflow sets broken", () => {
  const next = rng(0xc0ffee);
  const page = makePage();
  const words = new Uint32Array(page.buffer, page.byteOffset, PAGE_SIZE / 4);
  const buf = new Uint8Array(12);
  for (let i = 0; i < words.length; i++) words[i] = next();
  const longLived = new BackRing(page, 12, 4); // sees every round's garbage
  const size = longLived.size;
  let brokenRounds = 0;
  let cleanServed = 0;

  for (let round = 0; round < 10_000; round++) {
    for (let i = 0; i < words.length; i++) words[i] = next();
    const back = new BackRing(page, 12, 4); // attaches at a garbage rsp_prod
    const base = words[2];
    const mode = round % 4;
    if (mode === 0) words[0] = base + size + 1 + (next() % (2 ** 32 - size - 1)); // prod runs ahead
    if (mode === 1 || mode === 3) words[0] = base + (next() % (size + 1)); // plausible prod
    const reqProd = words[0];
    const overflow = (reqProd - base) >>> 0 > size;

    let served = 0;
    try {
      for (let pass = 0; pass < 3; pass++) {
        while (back.copyRequest(buf)) {
          const off = back.nextResponse();
          back.view.setUint32(off, next(), true);
          served++;
          if (served > 4 * size) assert.fail(`round ${round}: backend kept consuming (${served})`);
          // mode 3: the frontend rewrites indexes and slots while the backend works.
          if (mode === 3 && (next() & 7) === 0) words[next() % 4] = next();
          if (mode === 3 && (next() & 3) === 0) words[16 + (next() % (words.length - 16))] = next();
        }
        back.pushResponses();
        back.finalCheckForRequests();
        back.setRequestEvent(1 + (next() % size));
        back.unconsumedRequests();
      }
      while (longLived.copyRequest(buf)) longLived.nextResponse();
      longLived.pushResponses();
      longLived.finalCheckForRequests();
      longLived.unconsumedRequests();
    } catch (e) {
      assert.fail(`round ${round} (mode ${mode}): BackRing threw ${String(e)}`);
    }

    if (mode !== 3) {
      assert.equal(back.broken !== undefined, overflow, `round ${round}: broken iff prod ran ahead`);
      if (overflow) {
        assert.match(back.broken!, new RegExp(`req_prod ${reqProd} .*ring size ${size}`));
        assert.equal(served, 0);
        assert.equal(back.unconsumedRequests(), 0, "a broken ring reports no work");
        assert.equal(back.finalCheckForRequests(), false);
      } else {
        assert.equal(served, (reqProd - base) >>> 0, `round ${round}: served every plausible request`);
        cleanServed += served;
      }
    }
    if (back.broken !== undefined) brokenRounds++;
  }
  assert.ok(brokenRounds >= 5000, `prod overflow detected in ${brokenRounds} rounds`);
  assert.ok(cleanServed > 100_000, "plausible rounds really consumed requests");
  assert.notEqual(longLived.broken, undefined);
  assert.equal(longLived.unconsumedRequests(), 0);
});

test("hostile backend: garbage rsp_prod marks the FrontRing broken instead of throwing", () => {
  const next = rng(0xbadbeef);
  for (let round = 0; round < 1000; round++) {
    const page = makePage(next());
    const front = new FrontRing(page, 8, 8);
    const outstanding = next() % 20;
    produce(front, 0, outstanding);
    const base = u32(page, RingOffsets.rspProd);
    const claim = round % 2 === 0 ? next() % (outstanding + 1) : next();
    setU32(page, RingOffsets.rspProd, base + claim);
    setU32(page, RingOffsets.rspEvent, next());
    const avail = front.unconsumedResponses();
    const bad = claim > outstanding;
    assert.equal(front.broken !== undefined, bad, `round ${round}`);
    assert.equal(avail, bad ? 0 : claim);
    for (let i = 0; i < avail; i++) front.nextResponse();
    setU32(page, RingOffsets.rspProd, next()); // moving rsp_prod afterwards changes nothing
    const more = front.finalCheckForResponses();
    if (front.broken !== undefined) assert.equal(more, false, "a broken ring reports no work");
  }
});

test("two threads: 1,000,000 requests through a worker backend, few notifications", async (t) => {
  const TOTAL = 1_000_000;
  const TO_BACK = 0;
  const TO_FRONT = 1;
  const ringSab = new SharedArrayBuffer(2 * PAGE_SIZE);
  const page = new Uint8Array(ringSab, PAGE_SIZE, PAGE_SIZE);
  const evtSab = new SharedArrayBuffer(8);
  const evt = new Int32Array(evtSab);
  initSharedRing(page);
  const front = new FrontRing(page, 8, 8);
  const view = front.view;

  const workerData: RingWorkerData = {
    ringSab,
    ringOffset: PAGE_SIZE,
    evtSab,
    toBack: TO_BACK,
    toFront: TO_FRONT,
    total: TOTAL,
  };
  const worker = new Worker(new URL("./fixtures/ring-worker.js", import.meta.url), { workerData });
  const resultP = once(worker, "message");
  const exitP = once(worker, "exit");

  const payloadOf = (seq: number): number => Math.imul(seq, 0x9e3779b1) >>> 0;
  let sent = 0;
  let received = 0;
  let waits = 0;
  while (received < TOTAL) {
    // Fill every free slot, then publish once: one push per batch.
    let produced = 0;
    while (sent < TOTAL && !front.isFull()) {
      const off = front.nextRequest();
      view.setUint32(off, sent, true);
      view.setUint32(off + 4, payloadOf(sent), true);
      sent++;
      produced++;
    }
    if (produced > 0 && front.pushRequests()) {
      Atomics.add(evt, TO_BACK, 1);
      Atomics.notify(evt, TO_BACK, 1);
    }
    let got = 0;
    for (let n = front.unconsumedResponses(); n > 0; n--) {
      const off = front.nextResponse();
      const seq = view.getUint32(off, true);
      if (seq !== received)
        assert.fail(`response ${received}: got seq ${seq} (lost, duplicated or reordered)`);
      const payload = view.getUint32(off + 4, true);
      if (payload !== (payloadOf(seq) + 1) >>> 0) assert.fail(`seq ${seq}: payload ${payload}`);
      received++;
      got++;
    }
    if (front.broken !== undefined) assert.fail(`backend broke the ring: ${front.broken}`);
    if (produced > 0 || got > 0) continue;
    // Idle: read the event word, then re-arm rsp_event and re-check, then wait on the word.
    const seen = Atomics.load(evt, TO_FRONT);
    if (front.finalCheckForResponses()) continue;
    waits++;
    if (adaptiveWait(evt, TO_FRONT, seen, DEFAULT_SPIN_US, 10_000) === "timed-out") {
      assert.fail(`frontend waited 10 s for responses after ${received} (is the worker alive?)`);
    }
  }

  const [result] = (await resultP) as [RingWorkerResult];
  await exitP;
  assert.equal(result.error, undefined);
  assert.equal(result.answered, TOTAL);
  assert.equal(front.unconsumedResponses(), 0, "nothing answered twice");
  assert.equal(received, TOTAL);

  // Every notification incremented its event word once.
  const notifications = Atomics.load(evt, TO_BACK) + Atomics.load(evt, TO_FRONT);
  assert.equal(Atomics.load(evt, TO_FRONT), result.notified);
  t.diagnostic(
    `notifications: to backend ${Atomics.load(evt, TO_BACK)}, to frontend ${result.notified}; ` +
      `frontend waits ${waits}`,
  );
  // Why few: a side is notified only when its event index lies in the range a push publishes,
  // and it moves its event index (to cons + 1) only when it runs out of work and is about to
  // wait. Under load each side finds a batch of up to a ring's worth (256) of work every time
  // it looks, and each push publishes a whole batch, so there is at most about one
  // notification per direction per batch, not one per request.
  assert.ok(notifications < TOTAL / 10, `${notifications} notifications for ${TOTAL} requests`);
});

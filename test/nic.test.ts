/**
 * The emulated NIC (src/nic/): endpoint contexts and limits, TPT validation, PULL (DMA),
 * SEND into receive areas (wrap, release, back-pressure, bad destinations), the event backlog,
 * DRIVER events, frames over a loopback link, sleeping when idle, and a hostile owner.
 *
 * A real NIC worker serves; this thread is its driver (sync calls over driverEndpoint()) and
 * the owner of most endpoints (it writes descriptors into their windows and reads events).
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Worker } from "node:worker_threads";
import type {
  LookupReply,
  MemoryRun,
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  RegisterRegionReply,
} from "../src/nic/control.js";
import type { NicCounterSnapshot } from "../src/nic/counters.js";
import { NicDevice } from "../src/nic/device.js";
import { DELIVERY_QUEUE, EVENT_BACKLOG } from "../src/nic/endpoints.js";
import { HOLD_RESERVE, mayHold } from "../src/nic/hold-share.js";
import { Nic } from "../src/nic/nic.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import {
  Access,
  ANY_ENDPOINT,
  D_AUX0,
  D_AUX1,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_MATCH_HI,
  D_MATCH_LO,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DESC_WORDS,
  DFLAG_EXPOSURE,
  E_AUX0,
  E_AUX1,
  E_COOKIE,
  E_EXTRA,
  E_LENGTH,
  E_MATCH_HI,
  E_MATCH_LO,
  E_REASON,
  E_RECV_OFFSET,
  E_RECV_SPAN,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_SRC_SESSION,
  E_TYPE,
  EndpointState,
  EQ_ENTRIES,
  EQ_OFFSET,
  ErrorReason,
  EVENT_WORDS,
  EventType,
  EXPOSURE_ENTRIES,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  I_SEQ,
  INTR_BYTES,
  Opcode,
  OWNER_SLEEPING,
  OWNER_SLEEPING_QUIET,
  RECV_BYTES,
  RECV_OFFSET,
  SEND_MAX,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_ENDPOINT_ID,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_ID,
  W_NIC_SLEEPING,
  W_OWNER_SLEEPING,
  W_RQ_CONS,
  W_RQ_PROD,
  W_SESSION,
  W_SQ_CONS,
  W_SQ_PROD,
  W_STATE,
  WINDOW_BYTES,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../src/nic/window.js";
import { SyncCallClient, SyncCallFailed } from "../src/xen/sync-call.js";
import type { HostileOwnerData, HostileOwnerResult } from "./fixtures/nic-owner.js";

const NIC_ID = 7;
let nic: NicDevice;
let ctl: SyncCallClient<NicControlRequest>;

before(async () => {
  nic = await NicDevice.start({ nicId: NIC_ID });
  const ep = nic.driverEndpoint();
  ctl = new SyncCallClient<NicControlRequest>(ep.port, ep.replyWord);
});
after(() => nic.stop());

// ---- helpers -------------------------------------------------------------------------------

function call<T>(req: NicControlRequest, client = ctl): T {
  return client.call<T>(req);
}

function expectErrno(fn: () => unknown, errno: string, message?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SyncCallFailed, `expected SyncCallFailed, got ${String(e)}`);
    assert.equal(e.errno, errno, e.message);
    if (message) assert.match(e.message, message);
    return true;
  });
}

/** Blocks this thread until pred() holds (the NIC is another thread). */
function waitUntil(pred: () => boolean, what: string, timeoutMs = 5000): void {
  const word = new Int32Array(new SharedArrayBuffer(4));
  const start = performance.now();
  while (!pred()) {
    if (performance.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    Atomics.wait(word, 0, 0, 0.2);
  }
}

interface Ev {
  type: number;
  status: number;
  cookie: number;
  length: number;
  srcNic: number;
  srcEndpoint: number;
  srcSession: number;
  matchHi: number;
  matchLo: number;
  recvOffset: number;
  recvSpan: number;
  aux0: number;
  aux1: number;
  reason: number;
  words: number[];
}

interface Desc {
  op: number;
  cookie?: number;
  srcRegion?: number;
  srcKey?: number;
  srcOffset?: number;
  dstRegion?: number;
  dstOffset?: number;
  length?: number;
  destNic?: number;
  destEndpoint?: number;
  destSession?: number;
  matchHi?: number;
  matchLo?: number;
  aux0?: number;
  aux1?: number;
}

function descWords(d: Desc): number[] {
  const w = new Array<number>(DESC_WORDS).fill(0);
  w[D_OPCODE] = d.op;
  w[D_COOKIE] = d.cookie ?? 0;
  w[D_SRC_REGION] = d.srcRegion ?? 0;
  w[D_SRC_KEY] = d.srcKey ?? 0;
  w[D_SRC_OFFSET] = d.srcOffset ?? 0;
  w[D_DST_REGION] = d.dstRegion ?? 0;
  w[D_DST_OFFSET] = d.dstOffset ?? 0;
  w[D_LENGTH] = d.length ?? 0;
  w[D_DEST_NIC] = d.destNic ?? NIC_ID;
  w[D_DEST_ENDPOINT] = d.destEndpoint ?? 0;
  w[D_DEST_SESSION] = d.destSession ?? 0;
  w[D_MATCH_HI] = d.matchHi ?? 0;
  w[D_MATCH_LO] = d.matchLo ?? 0;
  w[D_AUX0] = d.aux0 ?? 0;
  w[D_AUX1] = d.aux1 ?? 0;
  return w;
}

/** This thread as an endpoint's owner: writes descriptors, reads events, releases receive space. */
class Owner {
  readonly w: Int32Array;
  readonly intr: Int32Array;
  readonly recv: Uint8Array;
  prod = 0;
  eqCons = 0;
  rqCons = 0;

  constructor(
    readonly ep: OpenEndpointReply,
    readonly client = ctl,
  ) {
    this.w = new Int32Array(ep.window);
    this.intr = new Int32Array(ep.intr);
    this.recv = new Uint8Array(ep.window, RECV_OFFSET, RECV_BYTES);
  }
  get id(): number {
    return this.ep.endpointId;
  }
  get session(): number {
    return this.ep.session;
  }

  register(memory: SharedArrayBuffer, runs: MemoryRun[], access: number): RegisterRegionReply {
    return call({ op: "register_region", endpointId: this.id, memory, runs, access }, this.client);
  }

  /** Writes descriptors (waiting for queue room) and rings the doorbell once per batch. */
  post(...descs: Desc[]): void {
    for (const d of descs) {
      waitUntil(() => this.prod - Atomics.load(this.w, W_SQ_CONS) < SQ_ENTRIES, "send-queue room");
      const base = SQ_OFFSET / 4 + (this.prod % SQ_ENTRIES) * DESC_WORDS;
      descWords(d).forEach((v, i) => {
        this.w[base + i] = v;
      });
      this.prod++;
      if (this.prod % 64 === 0) this.ring();
    }
    this.ring();
  }

  ring(): void {
    Atomics.store(this.w, W_SQ_PROD, this.prod);
    this.poke();
  }

  /** The doorbell's notify, which also tells a sleeping NIC that space was freed. */
  poke(): void {
    if (Atomics.load(this.w, W_NIC_SLEEPING) === 1) Atomics.notify(this.w, W_SQ_PROD);
  }

  tryEvent(): Ev | null {
    if (Atomics.load(this.w, W_EQ_PROD) === this.eqCons) return null;
    const base = EQ_OFFSET / 4 + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
    const words = Array.from(this.w.subarray(base, base + EVENT_WORDS));
    this.eqCons++;
    Atomics.store(this.w, W_EQ_CONS, this.eqCons);
    this.poke();
    const u = (i: number) => words[i] >>> 0;
    return {
      type: u(E_TYPE) & 0xffff,
      status: u(E_TYPE) >>> 16,
      cookie: u(E_COOKIE),
      length: u(E_LENGTH),
      srcNic: u(E_SRC_NIC),
      srcEndpoint: u(E_SRC_ENDPOINT),
      srcSession: u(E_SRC_SESSION),
      matchHi: u(E_MATCH_HI),
      matchLo: u(E_MATCH_LO),
      recvOffset: u(E_RECV_OFFSET),
      recvSpan: u(E_RECV_SPAN),
      aux0: u(E_AUX0),
      aux1: u(E_AUX1),
      reason: u(E_REASON),
      words,
    };
  }

  /** The next event: spin briefly, then sleep on the interrupt page as an MX library would. */
  nextEvent(timeoutMs = 5000): Ev {
    const start = performance.now();
    for (;;) {
      for (let i = 0; i < 2000; i++) {
        const ev = this.tryEvent();
        if (ev) return ev;
      }
      const seq = Atomics.load(this.intr, I_SEQ);
      Atomics.store(this.w, W_OWNER_SLEEPING, 1);
      if (Atomics.load(this.w, W_EQ_PROD) === this.eqCons) Atomics.wait(this.intr, I_SEQ, seq, 20);
      Atomics.store(this.w, W_OWNER_SLEEPING, 0);
      if (performance.now() - start > timeoutMs)
        throw new Error(`endpoint ${this.id}: no event within ${timeoutMs} ms`);
    }
  }

  events(n: number): Ev[] {
    const out: Ev[] = [];
    for (let i = 0; i < n; i++) out.push(this.nextEvent());
    return out;
  }

  release(span: number): void {
    this.rqCons += span;
    Atomics.store(this.w, W_RQ_CONS, this.rqCons);
    this.poke();
  }

  payload(ev: Ev): Uint8Array {
    return this.recv.slice(ev.recvOffset, ev.recvOffset + ev.length);
  }

  close(): void {
    call({ op: "close_endpoint", endpointId: this.id }, this.client);
  }

  /**
   * Arms pull right `index` of this window for [offset, offset + length) of `region`, in
   * window.ts's order (range, a fresh key, then the state), as an MX library does before it
   * publishes a rendezvous. Returns the key.
   */
  expose(index: number, region: { regionId: number }, offset: number, length: number): number {
    const b = EXPOSURE_OFFSET / 4 + index * EXPOSURE_WORDS;
    const key = (nextKey = (Math.imul(nextKey, 1103515245) + 12345) >>> 0) || 1;
    Atomics.store(this.w, b + X_STATE, ExposureState.Free);
    Atomics.store(this.w, b + X_REGION, region.regionId);
    Atomics.store(this.w, b + X_OFFSET, offset);
    Atomics.store(this.w, b + X_LENGTH, length);
    Atomics.store(this.w, b + X_KEY, key);
    Atomics.store(this.w, b + X_STATE, ExposureState.Armed);
    return key;
  }

  exposureState(index: number): number {
    return Atomics.load(this.w, EXPOSURE_OFFSET / 4 + index * EXPOSURE_WORDS + X_STATE);
  }

  /** A PULL descriptor under pull right (index, key) that this endpoint armed. */
  rightOf(index: number, key: number): Desc & Partial<Desc> {
    return {
      op: Opcode.Pull | (DFLAG_EXPOSURE << 16),
      destEndpoint: this.id,
      destSession: this.session,
      srcRegion: index,
      srcKey: key,
    };
  }
}

let nextKey = 0x9e3779b9;

function open(owner = "test", endpointId = ANY_ENDPOINT, key = 0x1234, client = ctl): Owner {
  return new Owner(call<OpenEndpointReply>({ op: "open_endpoint", owner, endpointId, key }, client), client);
}

/** Guest memory with a recognisable pattern. */
function memory(bytes: number, seed = 1): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(bytes);
  const u8 = new Uint8Array(sab);
  let x = seed * 2654435761;
  for (let i = 0; i < bytes; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    u8[i] = x >>> 24;
  }
  return sab;
}

/** A region's bytes in order (its runs concatenated). */
function regionBytes(sab: SharedArrayBuffer, runs: MemoryRun[]): Uint8Array {
  const parts = runs.map((r) => new Uint8Array(sab, r.offset, r.length));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function digest(sab: SharedArrayBuffer): string {
  return createHash("sha256").update(new Uint8Array(sab)).digest("hex");
}

function counters(): NicCounterSnapshot {
  return nic.counters();
}

function assertEvent(ev: Ev, type: number, status: number, what: string): void {
  assert.equal(ev.type, type, `${what}: event type ${ev.type}, expected ${type} (${JSON.stringify(ev)})`);
  assert.equal(
    ev.status,
    status,
    `${what}: status ${mxStatusName(ev.status)}, expected ${mxStatusName(status)}`,
  );
}

function assertError(ev: Ev, reason: number, status: number, cookie: number, what: string): void {
  assertEvent(ev, EventType.Error, status, what);
  assert.equal(ev.reason, reason, `${what}: reason`);
  assert.equal(ev.cookie, cookie, `${what}: cookie`);
}

// ---- endpoints -----------------------------------------------------------------------------

test("32 endpoint contexts: windows, sessions, EBUSY, ENOSPC, bad arguments, close and reopen", () => {
  const owners: Owner[] = [];
  for (let i = 0; i < 32; i++) owners.push(open(`owner-${i}`));
  assert.deepEqual(
    owners.map((o) => o.id).sort((a, b) => a - b),
    Array.from({ length: 32 }, (_, i) => i),
  );
  for (const o of owners) {
    assert.equal(o.ep.window.byteLength, WINDOW_BYTES);
    assert.equal(o.ep.intr.byteLength, INTR_BYTES);
    assert.equal(o.w[W_STATE], EndpointState.Open);
    assert.equal(o.w[W_ENDPOINT_ID], o.id);
    assert.equal(o.w[W_NIC_ID], NIC_ID);
    assert.equal(o.w[W_SESSION] >>> 0, o.session);
    assert.notEqual(o.session, 0);
  }
  assert.equal(new Set(owners.map((o) => o.session)).size, 32, "sessions are random per open");
  expectErrno(() => open("one-too-many"), "ENOSPC", /all 32 endpoint contexts are in use/);
  expectErrno(() => open("dup", 5), "EBUSY", /^EBUSY: open_endpoint: endpoint 5 is already open$/);
  expectErrno(() => open("x", 32), "EINVAL", /endpointId must be an integer in 0\.\.31/);
  expectErrno(() => open("x", -1), "EINVAL");
  expectErrno(() => open("x", 1.5), "EINVAL");
  expectErrno(() => open("x", ANY_ENDPOINT, -1), "EINVAL", /key must be a u32/);
  expectErrno(
    () => call({ op: "open_endpoint", owner: 5, endpointId: 1, key: 0 } as never),
    "EINVAL",
    /owner/,
  );
  expectErrno(() => call({ op: "frobnicate" } as never), "EINVAL", /unknown control op "frobnicate"/);
  expectErrno(() => call(42 as never), "EINVAL", /object with a string `op`/);

  const five = owners[5];
  const lookup = call<LookupReply>({ op: "lookup_endpoint", endpointId: 5, key: 0x1234 });
  assert.equal(lookup.status, "ok");
  if (lookup.status === "ok") {
    assert.equal(lookup.session, five.session);
    assert.equal(lookup.owner, "owner-5");
    assert.equal(lookup.intr.byteLength, INTR_BYTES);
  }
  assert.deepEqual(call({ op: "lookup_endpoint", endpointId: 5, key: 99 }), { status: "bad_key" });
  // For a requester (the driver connecting its endpoint 7), wrong keys are throttled as
  // CONNECTs are: four answered, then refused for a while, the right key included.
  const asFrom = (requester: number, key: number) =>
    call<LookupReply>({ op: "lookup_endpoint", endpointId: 5, key, requester });
  for (let i = 0; i < 4; i++) assert.deepEqual(asFrom(7, 100 + i), { status: "bad_key" });
  for (const key of [104, 0x1234]) {
    const r = asFrom(7, key);
    assert.equal(r.status, "throttled", `key ${key}`);
    if (r.status === "throttled") assert.ok(r.retryAfterMs > 0 && r.retryAfterMs <= 1000);
  }
  assert.equal(asFrom(8, 0x1234).status, "ok", "another requester is not held back");
  expectErrno(() => asFrom(99, 0x1234), "EINVAL", /requester/);

  five.close();
  assert.equal(five.w[W_STATE], EndpointState.Closed);
  assert.deepEqual(call({ op: "lookup_endpoint", endpointId: 5, key: 0x1234 }), { status: "unknown" });
  expectErrno(() => five.close(), "ENOENT", /endpoint 5 is not open/);
  expectErrno(() => call({ op: "close_endpoint", endpointId: 99 }), "EINVAL");
  assert.ok(!call<NicInfo>({ op: "info" }).openEndpoints.includes(5));
  const again = open("again", 5);
  assert.equal(again.id, 5);
  assert.notEqual(again.session, five.session, "a reopened endpoint has a new session");
  owners[5] = again;
  // Several drivers at once: a second channel sees the same NIC.
  const second = nic.driverEndpoint();
  const ctl2 = new SyncCallClient<NicControlRequest>(second.port, second.replyWord);
  assert.equal(call<NicInfo>({ op: "info" }, ctl2).openEndpoints.length, 32);
  expectErrno(() => call({ op: "open_endpoint", owner: "2nd", endpointId: 3, key: 0 }, ctl2), "EBUSY");
  second.port.close();
  for (const o of owners) o.close();
  assert.deepEqual(call<NicInfo>({ op: "info" }).openEndpoints, []);
});

test("more contexts and a small TPT on a second NIC; bad device options are refused clearly", async () => {
  await assert.rejects(
    NicDevice.start({ nicId: 1, maxEndpoints: 0 }),
    /maxEndpoints must be an integer in 1\.\.256/,
  );
  await assert.rejects(NicDevice.start({ nicId: -3 }), /nicId must be an integer/);
  const small = await NicDevice.start({ nicId: 9, maxEndpoints: 40, maxRegions: 4 });
  try {
    const ep = small.driverEndpoint();
    const client = new SyncCallClient<NicControlRequest>(ep.port, ep.replyWord);
    const owners = Array.from({ length: 40 }, () => open("many", ANY_ENDPOINT, 1, client));
    assert.equal(new Set(owners.map((o) => o.id)).size, 40);
    expectErrno(() => open("41st", ANY_ENDPOINT, 1, client), "ENOSPC", /all 40 endpoint contexts/);
    const mem = memory(4096);
    const regions = [0, 1, 2, 3].map(() =>
      owners[0].register(mem, [{ offset: 0, length: 4096 }], Access.LocalRead),
    );
    expectErrno(
      () => owners[1].register(mem, [{ offset: 0, length: 64 }], Access.LocalRead),
      "ENOSPC",
      /TPT is full/,
    );
    call({ op: "deregister_region", endpointId: 0, regionId: regions[0].regionId }, client);
    const reused = owners[1].register(mem, [{ offset: 0, length: 64 }], Access.LocalRead);
    assert.notEqual(reused.regionId, regions[0].regionId, "a reused slot gets a new generation");
    assert.equal(call<NicInfo>({ op: "info" }, client).regions, 4);
    owners[0].close();
    assert.equal(call<NicInfo>({ op: "info" }, client).regions, 1, "closing drops the endpoint's regions");
    assert.equal(small.counters().endpoints.length, 40);
  } finally {
    await small.stop();
  }
});

test("register_region validates memory, runs, lengths and access bits; deregister checks the owner", () => {
  const a = open("a");
  const b = open("b");
  const mem = memory(65536);
  const ok = a.register(
    mem,
    [
      { offset: 0, length: 4096 },
      { offset: 8192, length: 4096 },
    ],
    Access.LocalRead,
  );
  assert.equal(ok.length, 8192);
  assert.notEqual(ok.key, 0);
  assert.notEqual(ok.regionId, 0);
  const reg =
    (memory: unknown, runs: unknown, access: unknown, endpointId = a.id) =>
    () =>
      call({ op: "register_region", endpointId, memory, runs, access } as never);
  expectErrno(
    reg(new ArrayBuffer(64), [{ offset: 0, length: 64 }], 1),
    "EINVAL",
    /must be a SharedArrayBuffer/,
  );
  expectErrno(reg(undefined, [{ offset: 0, length: 64 }], 1), "EINVAL", /SharedArrayBuffer/);
  expectErrno(reg(mem, [], 1), "EINVAL", /non-empty array/);
  expectErrno(reg(mem, "all", 1), "EINVAL", /non-empty array/);
  expectErrno(reg(mem, [{ offset: -1, length: 64 }], 1), "EINVAL", /run 0 .*offset ≥ 0 and length > 0/);
  expectErrno(reg(mem, [{ offset: 0, length: 0 }], 1), "EINVAL", /length > 0/);
  expectErrno(reg(mem, [{ offset: 0, length: 1.5 }], 1), "EINVAL", /integer fields/);
  expectErrno(
    reg(
      mem,
      [
        { offset: 0, length: 64 },
        { offset: 65530, length: 20 },
      ],
      1,
    ),
    "EINVAL",
    /run 1 \(offset 65530, length 20\) ends past the end of the 65536-byte memory/,
  );
  const big = new SharedArrayBuffer(1 << 20);
  const tooMany = Array.from({ length: 2049 }, () => ({ offset: 0, length: 1 << 20 }));
  expectErrno(reg(big, tooMany, 1), "EINVAL", /more than 2147483648 bytes/);
  expectErrno(reg(mem, [{ offset: 0, length: 64 }], 0), "EINVAL", /Access bits/);
  expectErrno(reg(mem, [{ offset: 0, length: 64 }], 16), "EINVAL", /Access bits/);
  expectErrno(reg(mem, [{ offset: 0, length: 64 }], "rw"), "EINVAL", /Access bits/);
  expectErrno(reg(mem, [{ offset: 0, length: 64 }], 1, 31), "ENOENT", /endpoint 31 is not open/);

  expectErrno(() => call({ op: "deregister_region", endpointId: b.id, regionId: ok.regionId }), "EPERM");
  expectErrno(() => call({ op: "deregister_region", endpointId: a.id, regionId: 12345 }), "ENOENT");
  call({ op: "deregister_region", endpointId: a.id, regionId: ok.regionId });
  expectErrno(() => call({ op: "deregister_region", endpointId: a.id, regionId: ok.regionId }), "ENOENT");
  a.close();
  b.close();
});

// ---- PULL ----------------------------------------------------------------------------------

test("PULL copies across the runs of both regions under a pull right; every refusal is an ERROR event", () => {
  const a = open("puller");
  const b = open("source");
  const bMem = memory(256 * 1024, 2);
  const bRuns = [
    { offset: 4096, length: 10000 },
    { offset: 50000, length: 3000 },
    { offset: 100000, length: 20000 },
  ];
  const src = b.register(bMem, bRuns, Access.RemoteRead | Access.LocalRead);
  const aMem = new SharedArrayBuffer(256 * 1024);
  const aRuns = [
    { offset: 0, length: 7000 },
    { offset: 20000, length: 30000 },
  ];
  const dst = a.register(aMem, aRuns, Access.LocalWrite);
  const before = counters();

  // b exposes bytes 50..33000 of its region; a pulls 32000 of them, from offset 50 of that range.
  const key = b.expose(0, src, 50, 32950);
  a.post({
    ...b.rightOf(0, key),
    cookie: 11,
    srcOffset: 50,
    dstRegion: dst.regionId,
    dstOffset: 500,
    length: 32000,
  });
  const done = a.nextEvent();
  assertEvent(done, EventType.PullDone, MxStatus.SUCCESS, "pull");
  assert.equal(done.cookie, 11);
  assert.equal(done.length, 32000);
  assert.deepEqual(
    regionBytes(aMem, aRuns).subarray(500, 32500),
    regionBytes(bMem, bRuns).subarray(100, 32100),
  );
  const aAll = new Uint8Array(aMem);
  assert.ok(
    aAll.subarray(7000, 20000).every((x) => x === 0),
    "nothing lands between the runs",
  );
  assert.ok(
    aAll.subarray(50000).every((x) => x === 0),
    "nothing lands past the region",
  );
  assert.equal(b.exposureState(0), ExposureState.Used, "the right is spent");
  // The same right again: refused, whatever b has put in that memory since.
  a.post({ ...b.rightOf(0, key), cookie: 12, dstRegion: dst.regionId, length: 64 });
  assertError(a.nextEvent(), ErrorReason.NoRight, MxStatus.BAD_RDMAWIN, 12, "a spent right");

  const bOnlyLocal = b.register(bMem, [{ offset: 0, length: 4096 }], Access.LocalRead);
  const bWritableMem = new SharedArrayBuffer(4096);
  const bWritable = b.register(
    bWritableMem,
    [{ offset: 0, length: 4096 }],
    Access.LocalWrite | Access.RemoteRead,
  );
  const aReadOnly = a.register(aMem, [{ offset: 0, length: 4096 }], Access.LocalRead);
  const gone = b.register(bMem, [{ offset: 0, length: 4096 }], Access.RemoteRead);
  const k1 = b.expose(1, src, 0, src.length);
  const k2 = b.expose(2, bOnlyLocal, 0, 4096);
  const k3 = b.expose(3, gone, 0, 4096);
  const k4 = b.expose(4, dst, 0, 4096); // names a region that is not b's
  call({ op: "deregister_region", endpointId: b.id, regionId: gone.regionId });
  const pull = (cookie: number, d: Partial<Desc>) =>
    a.post({ ...b.rightOf(1, k1), cookie, dstRegion: dst.regionId, length: 64, ...d });
  const cases: [number, Partial<Desc>, number, number][] = [
    [1, { srcKey: k1 ^ 1 }, ErrorReason.BadKey, MxStatus.BAD_KEY],
    [2, { srcOffset: src.length - 10, length: 20 }, ErrorReason.OutOfBounds, MxStatus.BAD_RDMAWIN],
    [3, { srcOffset: 0xffffffff, length: 2 }, ErrorReason.OutOfBounds, MxStatus.BAD_RDMAWIN],
    [4, { length: 0xffffffff }, ErrorReason.OutOfBounds, MxStatus.BAD_RDMAWIN],
    [5, { dstOffset: dst.length - 63 }, ErrorReason.OutOfBounds, MxStatus.BAD_RDMAWIN],
    [6, { dstRegion: bWritable.regionId }, ErrorReason.Permission, MxStatus.BAD_RDMAWIN],
    [7, { dstRegion: aReadOnly.regionId }, ErrorReason.Permission, MxStatus.BAD_RDMAWIN],
    [8, b.rightOf(2, k2), ErrorReason.Permission, MxStatus.BAD_RDMAWIN],
    [9, b.rightOf(EXPOSURE_ENTRIES + 5, k1), ErrorReason.NoRight, MxStatus.BAD_RDMAWIN],
    [10, b.rightOf(77, k1), ErrorReason.NoRight, MxStatus.BAD_RDMAWIN],
    [11, b.rightOf(3, k3), ErrorReason.BadRegion, MxStatus.BAD_RDMAWIN],
    [12, { dstRegion: 0xdeadbeef }, ErrorReason.BadRegion, MxStatus.BAD_RDMAWIN],
    [13, { op: 77 }, ErrorReason.UnknownOpcode, MxStatus.ABORTED],
    [14, { destSession: b.session ^ 1 }, ErrorReason.BadSession, MxStatus.BAD_SESSION],
    [15, b.rightOf(4, k4), ErrorReason.Permission, MxStatus.BAD_RDMAWIN],
    // The region's own id and key, without a right: they no longer reach another endpoint's memory.
    [
      16,
      { op: Opcode.Pull, srcRegion: src.regionId, srcKey: src.key },
      ErrorReason.Permission,
      MxStatus.BAD_RDMAWIN,
    ],
  ];
  for (const [cookie, d] of cases) pull(cookie, d);
  for (const [cookie, , reason, status] of cases)
    assertError(a.nextEvent(), reason, status, cookie, `case ${cookie}`);
  assert.ok(aAll.subarray(7000, 20000).every((x) => x === 0));
  assert.ok(
    new Uint8Array(bWritableMem).every((x) => x === 0),
    "the other endpoint's writable region is untouched",
  );
  assert.equal(b.exposureState(1), ExposureState.Armed, "refusals do not spend a right");

  // A pull larger than the DMA chunk goes a chunk at a time and arrives whole.
  const bigSrc = memory(8 << 20, 3);
  const bigDst = new SharedArrayBuffer(8 << 20);
  const s = b.register(bigSrc, [{ offset: 0, length: 8 << 20 }], Access.RemoteRead);
  const t = a.register(bigDst, [{ offset: 0, length: 8 << 20 }], Access.LocalWrite);
  a.post({ ...b.rightOf(5, b.expose(5, s, 0, 8 << 20)), cookie: 99, dstRegion: t.regionId, length: 8 << 20 });
  const bigDone = a.nextEvent();
  assertEvent(bigDone, EventType.PullDone, MxStatus.SUCCESS, "8 MiB pull");
  assert.equal(bigDone.length, 8 << 20);
  assert.equal(digest(bigDst), digest(bigSrc));
  assert.equal(b.exposureState(5), ExposureState.Used);

  // Its own regions an endpoint copies between with their key (no right needed).
  const own = a.register(aMem, [{ offset: 200000, length: 4096 }], Access.LocalRead | Access.LocalWrite);
  a.post({
    op: Opcode.Pull,
    cookie: 50,
    srcRegion: own.regionId,
    srcKey: own.key,
    dstRegion: own.regionId,
    dstOffset: 2048,
    length: 1024,
  });
  assertEvent(a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "a copy within its own memory");

  const after = counters();
  assert.equal(after.global.error_bad_key - before.global.error_bad_key, 1);
  assert.equal(after.global.error_out_of_bounds - before.global.error_out_of_bounds, 4);
  assert.equal(after.global.error_permission - before.global.error_permission, 5);
  assert.equal(after.global.error_bad_region - before.global.error_bad_region, 2);
  assert.equal(after.global.error_no_right - before.global.error_no_right, 3);
  assert.equal(after.global.pulls - before.global.pulls, 3);
  assert.equal(after.global.pull_bytes - before.global.pull_bytes, 32000 + (8 << 20) + 1024);
  assert.equal(after.global.pull_rights_taken - before.global.pull_rights_taken, 2);
  // Every refusal above counts, the wrong session included (else raw PULLs are a session oracle).
  assert.equal(after.global.pull_rights_refused - before.global.pull_rights_refused, 10);
  assert.ok(after.global.pull_chunks - before.global.pull_chunks >= 9, "the big pull went in chunks");
  assert.equal(after.endpoints[a.id].errors - before.endpoints[a.id].errors, cases.length + 1);

  // b revokes a right while a pulls under it: the NIC stops at the next chunk and lets go.
  const huge = memory(64 << 20, 4);
  const hs = b.register(huge, [{ offset: 0, length: 64 << 20 }], Access.RemoteRead);
  const hd = a.register(
    new SharedArrayBuffer(64 << 20),
    [{ offset: 0, length: 64 << 20 }],
    Access.LocalWrite,
  );
  a.post({
    ...b.rightOf(6, b.expose(6, hs, 0, 64 << 20)),
    cookie: 60,
    dstRegion: hd.regionId,
    length: 64 << 20,
  });
  const at = EXPOSURE_OFFSET / 4 + 6 * EXPOSURE_WORDS + X_STATE;
  waitUntil(() => b.exposureState(6) !== ExposureState.Armed, "the NIC took the right");
  const was = Atomics.compareExchange(b.w, at, ExposureState.Busy, ExposureState.Revoking);
  const revoked = a.nextEvent();
  if (was === ExposureState.Busy) {
    assertEvent(revoked, EventType.PullDone, MxStatus.ABORTED, "a revoked right");
    assert.ok(revoked.length < 64 << 20, "stopped part way");
    assert.equal(counters().global.pull_rights_revoked - after.global.pull_rights_revoked, 1);
  } else assertEvent(revoked, EventType.PullDone, MxStatus.SUCCESS, "done before the revocation");
  assert.equal(b.exposureState(6), ExposureState.Used, "the NIC let go of it");

  // The source's endpoint closes: its rights go with it, and the puller hears that it closed.
  const k7 = b.expose(7, src, 0, 64);
  const bRight = b.rightOf(7, k7);
  b.close();
  a.post({ ...bRight, cookie: 20, dstRegion: dst.regionId, length: 64 });
  assertError(a.nextEvent(), ErrorReason.UnknownEndpoint, MxStatus.ENDPOINT_CLOSED, 20, "source closed");
  a.close();
});

// ---- SEND ----------------------------------------------------------------------------------

/** A sender with a readable region of pattern bytes. */
function sender(
  name: string,
  group?: number,
): { o: Owner; mem: SharedArrayBuffer; region: RegisterRegionReply } {
  const o =
    group === undefined
      ? open(name)
      : new Owner(
          call<OpenEndpointReply>(
            { op: "open_endpoint", owner: name, endpointId: ANY_ENDPOINT, key: 0x1234, group },
            ctl,
          ),
          ctl,
        );
  const mem = memory(2 * SEND_MAX, 5);
  const region = o.register(mem, [{ offset: 0, length: 2 * SEND_MAX }], Access.LocalRead);
  return { o, mem, region };
}

function send(from: { o: Owner; region: RegisterRegionReply }, to: Owner, d: Partial<Desc>): void {
  from.o.post({
    op: Opcode.Send,
    srcRegion: from.region.regionId,
    destNic: NIC_ID,
    destEndpoint: to.id,
    destSession: to.session,
    ...d,
  });
}

test("SEND places the payload in the receiver's area: RECV fields, alignment, wrap, release", () => {
  const a = sender("a");
  const b = open("b");
  const src = new Uint8Array(a.mem);
  const before = counters();

  send(a, b, {
    cookie: 1,
    srcOffset: 3,
    length: 100,
    matchHi: 0xfeedface,
    matchLo: 42,
    aux0: 0x80000001,
    aux1: 7,
  });
  const r = b.nextEvent();
  assertEvent(r, EventType.Recv, MxStatus.SUCCESS, "recv");
  assert.deepEqual(
    [
      r.srcNic,
      r.srcEndpoint,
      r.srcSession,
      r.matchHi,
      r.matchLo,
      r.aux0,
      r.aux1,
      r.length,
      r.recvOffset,
      r.recvSpan,
    ],
    [NIC_ID, a.o.id, a.o.session, 0xfeedface, 42, 0x80000001, 7, 100, 0, 128],
  );
  assert.deepEqual(b.payload(r), src.slice(3, 103));
  const sd = a.o.nextEvent();
  assertEvent(sd, EventType.SendDone, MxStatus.SUCCESS, "send done");
  assert.equal(sd.cookie, 1);
  assert.equal(sd.length, 100);
  b.release(r.recvSpan);

  // Zero bytes need no region.
  a.o.post({ op: Opcode.Send, cookie: 2, destEndpoint: b.id, destSession: b.session, matchLo: 9 });
  const z = b.nextEvent();
  assertEvent(z, EventType.Recv, MxStatus.SUCCESS, "empty recv");
  assert.deepEqual([z.length, z.recvOffset, z.recvSpan, z.matchLo], [0, 128, 0, 9]);
  assertEvent(a.o.nextEvent(), EventType.SendDone, MxStatus.SUCCESS, "empty send");

  // Fill to near the end, then a record that does not fit before it starts at 0 and its span covers the skip.
  let pos = 128;
  const sizes = [
    SEND_MAX,
    SEND_MAX,
    SEND_MAX,
    SEND_MAX,
    SEND_MAX,
    SEND_MAX,
    SEND_MAX,
    SEND_MAX - 768 - 128 - 64,
  ];
  for (const [i, len] of sizes.entries()) {
    send(a, b, { cookie: 10 + i, srcOffset: i, length: len, matchLo: i });
    const e = b.nextEvent();
    assertEvent(e, EventType.Recv, MxStatus.SUCCESS, `fill ${i}`);
    assert.equal(e.recvOffset, pos, `record ${i} is placed where the last one ended`);
    assert.equal(e.recvSpan, Math.ceil(len / 64) * 64);
    assert.deepEqual(b.payload(e), src.slice(i, i + len));
    pos += e.recvSpan;
    b.release(e.recvSpan);
    assertEvent(a.o.nextEvent(), EventType.SendDone, MxStatus.SUCCESS, `fill ${i} done`);
  }
  const tail = RECV_BYTES - pos;
  assert.ok(tail > 0 && tail < 2048, `a tail of ${tail} bytes is left`);
  send(a, b, { cookie: 30, srcOffset: 777, length: 2000, matchLo: 30 });
  const wrapped = b.nextEvent();
  assertEvent(wrapped, EventType.Recv, MxStatus.SUCCESS, "wrapped");
  assert.equal(wrapped.recvOffset, 0, "a record never wraps: it starts over at 0");
  assert.equal(wrapped.recvSpan, tail + 2048, "the skipped tail is part of the span");
  assert.deepEqual(b.payload(wrapped), src.slice(777, 2777));
  b.release(wrapped.recvSpan);
  assertEvent(a.o.nextEvent(), EventType.SendDone, MxStatus.SUCCESS, "wrapped done");
  assert.equal(Atomics.load(b.w, W_RQ_PROD) >>> 0, b.rqCons, "every byte produced was released");

  const after = counters();
  assert.equal(after.global.recvs - before.global.recvs, 11);
  assert.equal(after.endpoints[b.id].recvs - before.endpoints[b.id].recvs, 11);
  assert.equal(after.endpoints[a.o.id].sends - before.endpoints[a.o.id].sends, 11);
  a.o.close();
  b.close();
});

test("SEND back-pressure: a receiver that does not release gets deliveries queued, then refused; release delivers them in order", () => {
  const a = sender("a");
  const b = open("b");
  const before = counters();
  // 8 records of SEND_MAX fill the receive area exactly; one sender's share of the delivery
  // queue (delivery.ts mayHold) more are queued; then NO_RESOURCES.
  const Q = DELIVERY_QUEUE - HOLD_RESERVE;
  for (let i = 0; i < 8 + Q + 3; i++)
    send(a, b, { cookie: i, length: SEND_MAX, srcOffset: i * 8, matchLo: i });
  const first = a.o.events(11);
  first.slice(0, 8).forEach((e, i) => {
    assertEvent(e, EventType.SendDone, MxStatus.SUCCESS, `placed ${i}`);
    assert.equal(e.cookie, i);
  });
  first.slice(8).forEach((e, i) => {
    assertEvent(e, EventType.SendDone, MxStatus.NO_RESOURCES, `refused ${i}`);
    assert.equal(e.cookie, 8 + Q + i);
    assert.equal(e.reason, ErrorReason.NoResources);
  });
  waitUntil(() => Atomics.load(a.o.w, W_SQ_CONS) === 8 + Q + 3, "all descriptors taken");
  assert.equal(a.o.tryEvent(), null, "queued deliveries are not complete yet");
  const mid = counters();
  assert.equal(mid.endpoints[b.id].delivery_queued - before.endpoints[b.id].delivery_queued, Q);
  assert.equal(mid.endpoints[b.id].delivery_rejected - before.endpoints[b.id].delivery_rejected, 3);

  const src = new Uint8Array(a.mem);
  for (let i = 0; i < 8 + Q; i++) {
    const r = b.nextEvent();
    assertEvent(r, EventType.Recv, MxStatus.SUCCESS, `recv ${i}`);
    assert.equal(r.matchLo, i, "deliveries keep their order");
    assert.deepEqual(b.payload(r), src.slice(i * 8, i * 8 + SEND_MAX));
    b.release(r.recvSpan);
  }
  a.o.events(Q).forEach((e, i) => {
    assertEvent(e, EventType.SendDone, MxStatus.SUCCESS, `late ${i}`);
    assert.equal(e.cookie, 8 + i);
  });

  // Deliveries still queued when the receiver closes fail with ENDPOINT_CLOSED.
  for (let i = 0; i < 10; i++) send(a, b, { cookie: 100 + i, length: SEND_MAX });
  for (const e of a.o.events(8)) assertEvent(e, EventType.SendDone, MxStatus.SUCCESS, "fill again");
  waitUntil(() => Atomics.load(a.o.w, W_SQ_CONS) === 8 + Q + 3 + 10, "the two extra queued");
  b.close();
  a.o.events(2).forEach((e, i) => {
    assertEvent(e, EventType.SendDone, MxStatus.ENDPOINT_CLOSED, `closed under ${i}`);
    assert.equal(e.cookie, 108 + i);
  });
  a.o.close();
});

test("mayHold: senders arriving one after another at a full receiver hold 24, 4, 2, 1, 1 of its 32 places; a newcomer always finds one", () => {
  const held: number[] = [];
  let free = DELIVERY_QUEUE;
  for (let s = 0; s < 5; s++) {
    let h = 0;
    while (mayHold(h, free)) {
      h++;
      free--;
    }
    held.push(h);
  }
  assert.deepEqual(held, [24, 4, 2, 1, 1]);
  assert.equal(free, 0);
  // A place freed goes to a sender holding none before one holding some.
  assert.ok(mayHold(0, 1));
  assert.ok(!mayHold(1, 1));
});

test("a busy receiver's held places are shared by domain: one that fills them first (from any number of endpoints) leaves room for another's messages", () => {
  const victim = open("victim");
  // The attacker: one domain (QoS group 71), two endpoints; an honest domain (group 72).
  const a1 = sender("attacker", 71);
  const a2 = sender("attacker", 71);
  const honest = sender("honest", 72);
  const before = counters();
  // The victim computes: 8 of the attacker's messages fill its receive area, then it writes as
  // many again as the whole queue holds, from both its endpoints.
  for (let i = 0; i < 8 + DELIVERY_QUEUE; i++)
    send(i % 2 ? a2 : a1, victim, { cookie: i, length: SEND_MAX, matchLo: i });
  waitUntil(
    () => Atomics.load(a1.o.w, W_SQ_CONS) + Atomics.load(a2.o.w, W_SQ_CONS) === 8 + DELIVERY_QUEUE,
    "the attacker's SENDs taken",
  );
  // Then the honest domain's four (a second sender's share beside a full first one: mayHold).
  const HONEST = 4;
  for (let i = 0; i < HONEST; i++) send(honest, victim, { cookie: 500 + i, length: 1000, matchLo: 500 + i });
  waitUntil(() => Atomics.load(honest.o.w, W_SQ_CONS) === HONEST, "the honest SENDs taken");
  const mid = counters().endpoints[victim.id];
  assert.equal(
    mid.delivery_queued - before.endpoints[victim.id].delivery_queued,
    DELIVERY_QUEUE - HOLD_RESERVE + HONEST,
    "the attacker's domain holds its share of the queue, the honest one the places it needs",
  );
  assert.equal(honest.o.tryEvent(), null, "no honest message refused (all held)");
  // The victim makes room: the honest messages arrive, in order, and their senders hear so.
  const got: number[] = [];
  waitUntil(() => {
    for (let e = victim.tryEvent(); e !== null; e = victim.tryEvent()) {
      if (e.type !== EventType.Recv) continue;
      got.push(e.matchLo);
      victim.release(e.recvSpan);
    }
    return got.filter((m) => m >= 500).length === HONEST;
  }, "the honest messages delivered");
  assert.deepEqual(
    got.filter((m) => m >= 500),
    [500, 501, 502, 503],
  );
  honest.o.events(HONEST).forEach((e, i) => {
    assertEvent(e, EventType.SendDone, MxStatus.SUCCESS, `honest ${i}`);
    assert.equal(e.cookie, 500 + i);
  });
  // The attacker's refused ones were told NoResources: nothing placed, theirs to send again.
  const done: Ev[] = [];
  waitUntil(() => {
    for (const o of [a1.o, a2.o]) for (let e = o.tryEvent(); e !== null; e = o.tryEvent()) done.push(e);
    return done.length === 8 + DELIVERY_QUEUE;
  }, "every attacker SEND done");
  const refused = done.filter((e) => e.status === MxStatus.NO_RESOURCES);
  assert.equal(refused.length, HOLD_RESERVE);
  for (const e of refused) assert.equal(e.reason, ErrorReason.NoResources);
  for (const o of [a1.o, a2.o, honest.o, victim]) o.close();
});

test("SEND to a closed, reopened, unknown or unreachable endpoint, and SENDs the NIC refuses", () => {
  const a = sender("a");
  const other = open("other");
  const otherRegion = other.register(memory(4096), [{ offset: 0, length: 4096 }], Access.LocalRead);
  const writeOnly = a.o.register(memory(4096), [{ offset: 0, length: 4096 }], Access.LocalWrite);
  let b = open("b");
  const id = b.id;
  const oldSession = b.session;
  b.close();
  send(a, b, { cookie: 1, length: 10 });
  waitUntil(() => Atomics.load(a.o.w, W_EQ_PROD) === 1, "the send to the closed endpoint to complete");
  b = open("b again", id);
  send(a, b, { cookie: 2, length: 10, destSession: oldSession });
  send(a, b, { cookie: 3, length: 10 });
  send(a, b, { cookie: 4, length: 10, destEndpoint: 200 });
  send(a, b, { cookie: 5, length: 10, destNic: 99 });
  send(a, b, { cookie: 6, length: SEND_MAX + 1 });
  send(a, b, { cookie: 7, length: 10, srcRegion: otherRegion.regionId });
  send(a, b, { cookie: 8, length: 10, srcRegion: writeOnly.regionId });
  send(a, b, { cookie: 9, length: 10, srcOffset: 2 * SEND_MAX - 5 });
  const ev = a.o.events(9);
  const expect: [number, number, number][] = [
    [EventType.SendDone, MxStatus.ENDPOINT_CLOSED, 0],
    [EventType.SendDone, MxStatus.BAD_SESSION, 0],
    [EventType.SendDone, MxStatus.SUCCESS, 0],
    [EventType.SendDone, MxStatus.ENDPOINT_UNKNOWN, 0],
    [EventType.SendDone, MxStatus.ENDPOINT_UNREACHABLE, 0],
    [EventType.Error, MxStatus.ABORTED, ErrorReason.BadLength],
    [EventType.Error, MxStatus.BAD_RDMAWIN, ErrorReason.Permission],
    [EventType.Error, MxStatus.BAD_RDMAWIN, ErrorReason.Permission],
    [EventType.Error, MxStatus.BAD_RDMAWIN, ErrorReason.OutOfBounds],
  ];
  expect.forEach(([type, status, reason], i) => {
    assertEvent(ev[i], type, status, `cookie ${i + 1}`);
    assert.equal(ev[i].cookie, i + 1);
    if (type === EventType.Error) assert.equal(ev[i].reason, reason);
  });
  const r = b.nextEvent();
  assertEvent(r, EventType.Recv, MxStatus.SUCCESS, "the one good send");
  assert.equal(b.tryEvent(), null, "nothing else reached the receiver");
  a.o.close();
  b.close();
  other.close();
});

// ---- events --------------------------------------------------------------------------------

test("a full event queue: completions wait in the backlog, the queue stalls past it, nothing is lost", () => {
  const a = open("slow reader");
  const mem = memory(4096);
  const src = a.register(mem, [{ offset: 0, length: 4096 }], Access.RemoteRead);
  const dst = a.register(new SharedArrayBuffer(4096), [{ offset: 0, length: 4096 }], Access.LocalWrite);
  const pull = (cookie: number): Desc => ({
    op: Opcode.Pull,
    cookie,
    srcRegion: src.regionId,
    srcKey: src.key,
    dstRegion: dst.regionId,
    length: 8,
  });
  const before = counters();
  const total = EQ_ENTRIES + EVENT_BACKLOG + SQ_ENTRIES + 100;
  // Post without reading events until the NIC stops taking descriptors. Stuck = the queue is
  // full and the NIC went to sleep twice since (its second look came after our last doorbell).
  let posted = 0;
  for (;;) {
    const roomNow = () => SQ_ENTRIES - (a.prod - Atomics.load(a.w, W_SQ_CONS));
    const room = roomNow();
    if (room === 0) {
      const sleeps = counters().global.sleeps;
      waitUntil(() => roomNow() > 0 || counters().global.sleeps >= sleeps + 2, "room, or the NIC stuck");
      if (roomNow() === 0) break;
      continue;
    }
    for (let i = 0; i < room && posted < total; i++) a.post(pull(posted++));
    assert.ok(posted < total, "the NIC should have stopped taking descriptors");
  }
  const taken = Atomics.load(a.w, W_SQ_CONS);
  assert.equal(Atomics.load(a.w, W_EQ_PROD), EQ_ENTRIES, "the event queue is exactly full");
  assert.ok(taken > EQ_ENTRIES + EVENT_BACKLOG - 16 && taken <= EQ_ENTRIES + EVENT_BACKLOG, `took ${taken}`);
  assert.ok(taken < a.prod, "past the backlog the send queue waits");
  const mid = counters();
  assert.equal(mid.endpoints[a.id].event_backlog - before.endpoints[a.id].event_backlog, taken - EQ_ENTRIES);

  // Driver events find no room past the backlog's line (its reserve is for completions): they
  // are refused (EAGAIN, counted), and nothing is dropped.
  let driverOk = 0;
  for (;;) {
    try {
      call({ op: "deliver_event", endpointId: a.id, cookie: 5000 + driverOk, words: [driverOk] });
      driverOk++;
    } catch (e) {
      assert.equal((e as SyncCallFailed).errno, "EAGAIN");
      assert.match((e as Error).message, /event queue is full and its backlog has no room/);
      break;
    }
    assert.ok(driverOk < 64, "the backlog is bounded");
  }
  const refused = counters().endpoints[a.id];
  assert.ok(refused.driver_refused > before.endpoints[a.id].driver_refused, "the refusal is counted");
  assert.equal(refused.event_drops, before.endpoints[a.id].event_drops, "no event was dropped");

  // The reader wakes up: every completion arrives, in order, the driver events where they were queued.
  const seen: number[] = [];
  const driver: number[] = [];
  while (seen.length < total) {
    while (posted < total && a.prod - Atomics.load(a.w, W_SQ_CONS) < SQ_ENTRIES) a.post(pull(posted++));
    const e = a.nextEvent();
    if (e.type === EventType.Driver) {
      driver.push(e.cookie);
      assert.equal(seen.length, taken, "driver events come right after the backlog they joined");
      continue;
    }
    assertEvent(e, EventType.PullDone, MxStatus.SUCCESS, `pull ${seen.length}`);
    seen.push(e.cookie);
  }
  assert.deepEqual(
    seen,
    Array.from({ length: total }, (_, i) => i),
  );
  assert.deepEqual(
    driver,
    Array.from({ length: driverOk }, (_, i) => 5000 + i),
  );
  a.close();
});

test("an owner sleeping OWNER_SLEEPING_QUIET is not kicked for a pull done well while more of its work waits; news, and a pull with nothing after it, kick it", () => {
  const a = open("quiet");
  const mem = memory(1 << 20, 9);
  const r = a.register(mem, [{ offset: 0, length: 1 << 20 }], Access.LocalRead | Access.LocalWrite);
  const copy = (cookie: number): Desc => ({
    op: Opcode.Pull,
    cookie,
    srcRegion: r.regionId,
    srcKey: r.key,
    dstRegion: r.regionId,
    dstOffset: 1 << 19,
    length: 64 * 1024,
  });
  // The second copy waits its turn for a minute: a tx cap of 1 KB/s (the first goes now).
  const cap = (txBytesPerSec: number) =>
    call({
      op: "set_qos",
      endpointId: a.id,
      settings: { weight: 1, txBytesPerSec, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 },
    });
  cap(1000);
  const before = counters();
  const seq = Atomics.load(a.intr, I_SEQ);
  Atomics.store(a.w, W_OWNER_SLEEPING, OWNER_SLEEPING_QUIET);
  a.post(copy(1), copy(2));
  waitUntil(
    () => counters().global.interrupts_quiet > before.global.interrupts_quiet,
    "the first pull's interrupt, let go",
  );
  assert.equal(Atomics.load(a.intr, I_SEQ), seq, "no kick for a pull done well while the next one waits");
  assert.equal(Atomics.load(a.w, W_OWNER_SLEEPING), OWNER_SLEEPING_QUIET, "the owner's flag is left up");
  const first = a.tryEvent();
  assert.ok(first !== null, "the completion is in the queue for the owner to find");
  assertEvent(first, EventType.PullDone, MxStatus.SUCCESS, "first copy");
  assert.equal(first.cookie, 1);

  // News kicks at once, quiet or not.
  call({ op: "deliver_event", endpointId: a.id, cookie: 5, words: [] });
  assert.equal(Atomics.load(a.intr, I_SEQ), seq + 1, "a DRIVER event kicks the quiet sleeper");
  assert.equal(Atomics.load(a.w, W_OWNER_SLEEPING), 0);
  assertEvent(a.nextEvent(), EventType.Driver, 0, "driver");

  // The last pull: nothing of the owner's is at hand after it, so it kicks.
  Atomics.store(a.w, W_OWNER_SLEEPING, OWNER_SLEEPING_QUIET);
  cap(0);
  waitUntil(() => Atomics.load(a.intr, I_SEQ) === seq + 2, "the last pull's kick");
  assert.equal(Atomics.load(a.w, W_OWNER_SLEEPING), 0, "the NIC took the flag down as it kicked");
  const last = a.nextEvent();
  assertEvent(last, EventType.PullDone, MxStatus.SUCCESS, "second copy");
  assert.equal(last.cookie, 2);
  assert.deepEqual(
    new Uint8Array(mem, 1 << 19, 64 * 1024),
    new Uint8Array(mem, 0, 64 * 1024),
    "both copies were made",
  );

  // A plain sleeper is kicked for a pull done well even while more of its work waits.
  cap(1000);
  const plain = counters().global.interrupts_quiet;
  const seq3 = Atomics.load(a.intr, I_SEQ);
  Atomics.store(a.w, W_OWNER_SLEEPING, OWNER_SLEEPING);
  a.post(copy(3), copy(4));
  waitUntil(() => Atomics.load(a.intr, I_SEQ) === seq3 + 1, "the plain sleeper's kick");
  assertEvent(a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "third copy");
  assert.equal(counters().global.interrupts_quiet, plain);

  // The endpoint closed under a quiet sleeper (the fourth copy still held back): kicked.
  const seq4 = Atomics.load(a.intr, I_SEQ);
  Atomics.store(a.w, W_OWNER_SLEEPING, OWNER_SLEEPING_QUIET);
  a.close();
  assert.equal(Atomics.load(a.intr, I_SEQ), seq4 + 1, "closing the endpoint kicks its quiet sleeper");
  assert.equal(Atomics.load(a.w, W_OWNER_SLEEPING), 0);
});

test("deliver_event writes a DRIVER event and raises the owner's interrupt", () => {
  const a = open("driven");
  const before = counters();
  const seq = Atomics.load(a.intr, I_SEQ);
  Atomics.store(a.w, W_OWNER_SLEEPING, 1);
  call({ op: "deliver_event", endpointId: a.id, cookie: 0xdeadbeef, words: [1, 2, 3, 0xffffffff] });
  assert.ok(Atomics.load(a.intr, I_SEQ) > seq, "the sleeping owner was kicked");
  assert.equal(Atomics.load(a.w, W_OWNER_SLEEPING), 0, "the NIC took the owner's flag down as it kicked");
  const e = a.nextEvent();
  assertEvent(e, EventType.Driver, 0, "driver");
  assert.equal(e.cookie, 0xdeadbeef);
  assert.deepEqual(
    e.words.slice(E_EXTRA).map((x) => x >>> 0),
    [1, 2, 3, 0xffffffff],
  );
  const after = counters();
  assert.ok(after.global.interrupt_kicks > before.global.interrupt_kicks);
  assert.ok(after.endpoints[a.id].interrupts > before.endpoints[a.id].interrupts);
  expectErrno(
    () => call({ op: "deliver_event", endpointId: a.id, cookie: 1, words: [1, 2, 3, 4, 5] }),
    "EINVAL",
    /at most 4 32-bit integers/,
  );
  expectErrno(() => call({ op: "deliver_event", endpointId: a.id, cookie: 1, words: [0.5] }), "EINVAL");
  a.close();
  expectErrno(() => call({ op: "deliver_event", endpointId: a.id, cookie: 1, words: [] }), "ENOENT");
});

test("a producer index too far ahead or backwards gets one BadIndex ERROR, and the NIC resynchronises", () => {
  const a = open("confused");
  const mem = memory(4096);
  const src = a.register(mem, [{ offset: 0, length: 4096 }], Access.RemoteRead | Access.LocalWrite);
  a.prod = 1000;
  a.ring();
  const e = a.nextEvent();
  assertEvent(e, EventType.Error, MxStatus.ABORTED, "ahead");
  assert.equal(e.reason, ErrorReason.BadIndex);
  assert.equal(e.words[E_REASON + 1], 1000);
  waitUntil(() => Atomics.load(a.w, W_SQ_CONS) === 1000, "resync to the producer");
  const good: Desc = {
    op: Opcode.Pull,
    cookie: 1,
    srcRegion: src.regionId,
    srcKey: src.key,
    dstRegion: src.regionId,
    dstOffset: 100,
    length: 8,
  };
  a.post(good);
  assertEvent(a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "after resync");
  a.prod -= 5;
  a.ring();
  assert.equal(a.nextEvent().reason, ErrorReason.BadIndex, "backwards");
  a.post(good);
  assertEvent(a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "after the second resync");
  assert.equal(counters().endpoints[a.id].bad_index, 2);
  a.close();
});

// ---- frames --------------------------------------------------------------------------------

test("with a loopback link SENDs travel as frames, SEND_DONE comes back in a SEND_ACK, and the link pushes back", async () => {
  await nic.attachLink({ kind: "loopback", slots: 2 });
  await assert.rejects(nic.attachLink({ kind: "loopback" }), /already attached/);
  await assert.rejects(nic.attachLink({ kind: "carrier-pigeon" } as never), /unknown link kind/);
  assert.deepEqual(call<NicInfo>({ op: "info" }).links, [NIC_ID]);
  const a = sender("a");
  const b = open("b");
  const before = counters();
  const src = new Uint8Array(a.mem);
  for (let i = 0; i < 50; i++)
    send(a, b, {
      cookie: i,
      srcOffset: i,
      length: 1000 + i,
      matchHi: i,
      matchLo: ~i >>> 0,
      aux0: i * 3,
      aux1: 5,
    });
  for (let i = 0; i < 50; i++) {
    const r = b.nextEvent();
    assertEvent(r, EventType.Recv, MxStatus.SUCCESS, `framed recv ${i}`);
    assert.deepEqual(
      [r.srcNic, r.srcEndpoint, r.srcSession, r.matchHi, r.matchLo, r.aux0, r.aux1, r.length],
      [NIC_ID, a.o.id, a.o.session, i, ~i >>> 0, i * 3, 5, 1000 + i],
    );
    assert.deepEqual(b.payload(r), src.slice(i, i + 1000 + i));
    b.release(r.recvSpan);
  }
  a.o.events(50).forEach((e, i) => {
    assertEvent(e, EventType.SendDone, MxStatus.SUCCESS, `acked ${i}`);
    assert.equal(e.cookie, i);
    assert.equal(e.length, 1000 + i);
  });
  const id = b.id;
  b.close();
  send(a, b, { cookie: 77, length: 10 });
  const closed = a.o.nextEvent();
  assertEvent(closed, EventType.SendDone, MxStatus.ENDPOINT_CLOSED, "closed, over the link");
  assert.equal(closed.cookie, 77);
  const after = counters();
  assert.ok(after.global.frames_tx - before.global.frames_tx >= 102, "50 sends + 50 acks + 1 + 1");
  assert.ok(after.global.frames_rx - before.global.frames_rx >= 102);
  assert.ok(after.global.link_backpressure > before.global.link_backpressure, "a 2-slot link pushes back");
  assert.equal(after.global.frames_bad, 0);

  await nic.detachLink(NIC_ID);
  await assert.rejects(nic.detachLink(NIC_ID), /no link to NIC 7/);
  const b2 = open("b2", id);
  send(a, b2, { cookie: 78, length: 10 });
  assertEvent(a.o.nextEvent(), EventType.SendDone, MxStatus.SUCCESS, "direct again");
  assert.equal(counters().global.frames_tx, after.global.frames_tx, "without the link no frames");
  a.o.close();
  b2.close();
});

// ---- idle ----------------------------------------------------------------------------------

test("the NIC sleeps when idle (no wakeups, an idle event loop) and a doorbell wakes it", async () => {
  const a = open("sleeper");
  const r = a.register(memory(4096), [{ offset: 0, length: 4096 }], Access.RemoteRead | Access.LocalWrite);
  const pull = (cookie: number): Desc => ({
    op: Opcode.Pull,
    cookie,
    srcRegion: r.regionId,
    srcKey: r.key,
    dstRegion: r.regionId,
    dstOffset: 2048,
    length: 64,
  });
  a.post(pull(1));
  assertEvent(a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "first");
  // Reading that event may itself have woken the NIC (the owner pokes after consuming): let it settle.
  waitUntil(() => Atomics.load(a.w, W_NIC_SLEEPING) === 1, "the NIC to fall asleep");
  await sleep(20);
  waitUntil(() => Atomics.load(a.w, W_NIC_SLEEPING) === 1, "the NIC to fall asleep");
  const c0 = counters();
  const elu0 = nic.eventLoopUtilization();
  await sleep(300);
  const elu = nic.eventLoopUtilization(elu0);
  const c1 = counters();
  assert.equal(c1.global.wakeups, c0.global.wakeups, "nothing woke the idle NIC");
  assert.equal(Atomics.load(a.w, W_NIC_SLEEPING), 1);
  assert.ok(
    elu.utilization < 0.25,
    `the NIC thread idled (event-loop utilization ${elu.utilization.toFixed(3)})`,
  );

  a.post(pull(2));
  assertEvent(a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "after the doorbell");
  const c2 = counters();
  assert.ok(c2.global.wakeups > c1.global.wakeups, "the doorbell woke it");
  waitUntil(() => Atomics.load(a.w, W_NIC_SLEEPING) === 1, "asleep again");
  a.close();
});

// ---- hostile owner -------------------------------------------------------------------------

test("a hostile owner's 100,000 garbage descriptors never hurt the other endpoints or their memory", async (t) => {
  const hostile = open("hostile");
  const good = open("good");
  const peer = open("peer");
  const bystander = open("bystander");
  const all = Access.LocalRead | Access.LocalWrite | Access.RemoteRead | Access.RemoteWrite;

  const hMem = memory(128 * 1024, 10);
  const hOriginal = new Uint8Array(hMem).slice();
  const hRuns1 = [{ offset: 4096, length: 32768 }];
  const hRuns2 = [
    { offset: 40960, length: 8192 },
    { offset: 65536, length: 4096 },
  ];
  const h1 = hostile.register(hMem, hRuns1, all);
  const h2 = hostile.register(hMem, hRuns2, all);

  const gSrcMem = memory(64 * 1024, 11);
  const gSrcRuns = [
    { offset: 0, length: 32768 },
    { offset: 36864, length: 28672 },
  ];
  const gSrc = good.register(gSrcMem, gSrcRuns, Access.LocalRead | Access.RemoteRead);
  const gSrcBytes = regionBytes(gSrcMem, gSrcRuns);
  const gDstMem = new SharedArrayBuffer(64 * 1024);
  const gDst = good.register(gDstMem, [{ offset: 0, length: 64 * 1024 }], Access.LocalWrite);
  const expected = new Uint8Array(64 * 1024);
  const pSrcMem = memory(64 * 1024, 12);
  const pSrc = peer.register(
    pSrcMem,
    [{ offset: 0, length: 64 * 1024 }],
    Access.RemoteRead | Access.LocalRead,
  );
  const pSrcBytes = new Uint8Array(pSrcMem);
  const bMem = memory(64 * 1024, 13);
  const bReg = bystander.register(bMem, [{ offset: 0, length: 64 * 1024 }], all);
  const digests = { gSrc: digest(gSrcMem), pSrc: digest(pSrcMem), bystander: digest(bMem) };
  const before = counters();

  const done = new SharedArrayBuffer(4);
  const ref = (r: RegisterRegionReply) => ({ regionId: r.regionId, key: r.key, length: r.length });
  const workerData: HostileOwnerData = {
    window: hostile.ep.window,
    intr: hostile.ep.intr,
    done,
    count: 100_000,
    seed: 0x5eed,
    nicId: NIC_ID,
    endpointId: hostile.id,
    session: hostile.session,
    own: [ref(h1), ref(h2)],
    foreign: [ref(gSrc), ref(gDst), ref(pSrc), ref(bReg)],
    victims: [
      { endpointId: good.id, session: good.session },
      { endpointId: peer.id, session: peer.session },
    ],
  };
  const worker = new Worker(new URL("./fixtures/nic-owner.js", import.meta.url), { workerData });
  const result = new Promise<HostileOwnerResult>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });

  // Meanwhile the good endpoints PULL and SEND; every one must succeed, exactly as asked.
  let res: HostileOwnerResult;
  let ops = 0;
  try {
    let rng = 12345;
    const next = (n: number) => {
      rng = (rng * 1103515245 + 12345) >>> 0;
      return (rng >>> 8) % n;
    };
    const doneWord = new Int32Array(done);
    const start = performance.now();
    while (ops < 300 || Atomics.load(doneWord, 0) === 0) {
      assert.ok(performance.now() - start < 15000, "the hostile owner finishes in time");
      const cookie = 0x10000 + ops;
      if (ops % 2 === 0) {
        const len = 1 + next(16384);
        const so = next(64 * 1024 - len);
        const dOff = next(64 * 1024 - len);
        // The peer arms a pull right for the good endpoint, as a rendezvous sender would.
        const index = (ops >> 1) % 64;
        good.post({
          ...peer.rightOf(index, peer.expose(index, pSrc, 0, 64 * 1024)),
          cookie,
          srcOffset: so,
          dstRegion: gDst.regionId,
          dstOffset: dOff,
          length: len,
        });
        const e = good.nextEvent();
        assertEvent(e, EventType.PullDone, MxStatus.SUCCESS, `good pull ${ops}`);
        assert.equal(e.cookie, cookie);
        expected.set(pSrcBytes.subarray(so, so + len), dOff);
        assert.deepEqual(new Uint8Array(gDstMem, dOff, len), expected.subarray(dOff, dOff + len));
      } else {
        const len = next(8192);
        const so = next(gSrcBytes.length - len);
        good.post({
          op: Opcode.Send,
          cookie,
          srcRegion: gSrc.regionId,
          srcOffset: so,
          length: len,
          destNic: NIC_ID,
          destEndpoint: peer.id,
          destSession: peer.session,
          matchHi: ops,
          matchLo: ~ops >>> 0,
        });
        const r = peer.nextEvent();
        assertEvent(r, EventType.Recv, MxStatus.SUCCESS, `good recv ${ops}`);
        assert.deepEqual(
          [r.srcEndpoint, r.srcSession, r.matchHi, r.matchLo, r.length],
          [good.id, good.session, ops, ~ops >>> 0, len],
        );
        assert.deepEqual(peer.payload(r), gSrcBytes.slice(so, so + len));
        peer.release(r.recvSpan);
        const sd = good.nextEvent();
        assertEvent(sd, EventType.SendDone, MxStatus.SUCCESS, `good send ${ops}`);
        assert.equal(sd.cookie, cookie);
      }
      ops++;
    }
    res = await result;
  } finally {
    // A failure must not leave the hostile thread running (it would keep the process alive).
    await worker.terminate();
  }
  assert.equal(res.posted, 100_000);

  assert.equal(good.tryEvent(), null, "no stray event reached the good endpoint");
  assert.equal(peer.tryEvent(), null, "no stray event reached its peer");
  assert.equal(bystander.tryEvent(), null, "nor the bystander");
  assert.deepEqual({ gSrc: digest(gSrcMem), pSrc: digest(pSrcMem), bystander: digest(bMem) }, digests);
  assert.deepEqual(new Uint8Array(gDstMem), expected, "the good destination holds exactly what was pulled");
  const hNow = new Uint8Array(hMem);
  const inHostileRegions = (i: number) =>
    [...hRuns1, ...hRuns2].some((r) => i >= r.offset && i < r.offset + r.length);
  for (let i = 0; i < hNow.length; i++)
    if (!inHostileRegions(i) && hNow[i] !== hOriginal[i])
      assert.fail(`byte ${i} outside the hostile's regions changed`);

  const after = counters();
  const d = (k: keyof NicCounterSnapshot["global"]) => after.global[k] - before.global[k];
  assert.equal(after.global.internal_errors, 0, "no garbage ever threw inside the NIC");
  assert.equal(after.global.frames_bad, 0);
  const h = after.endpoints[hostile.id];
  const executed = h.descriptors - before.endpoints[hostile.id].descriptors;
  t.diagnostic(
    `hostile: ${res.posted} posted, ${executed} executed, ${d("errors")} refused, ` +
      `${res.indexGames} index games, ${res.forcedPosts} overruns; good ops: ${ops}`,
  );
  // The storm really reached the NIC. How many of the 100,000 an index game or an overrun
  // throws away depends on how full the queue was just then (up to SQ_ENTRIES each), that is
  // on scheduling: 61,000–91,000 executed in runs beside two busy processes, one clean-clone
  // run under 50,000. The bound is the storm's, not the machine's.
  assert.ok(executed > 30_000, `${executed} of the hostile's descriptors executed`);
  for (const k of [
    "error_unknown_opcode",
    "error_bad_region",
    "error_bad_key",
    "error_out_of_bounds",
    "error_permission",
    "error_bad_length",
    "error_bad_index",
    "error_no_right",
  ] as const)
    assert.ok(d(k) > 0, `${k} was counted`);
  assert.ok(d("send_failures") > 0, "sends to wrong sessions and nowhere failed");
  assert.equal(after.endpoints[good.id].errors - before.endpoints[good.id].errors, 0);
  assert.equal(after.endpoints[peer.id].errors - before.endpoints[peer.id].errors, 0);

  for (const o of [hostile, good, peer, bystander]) o.close();
  // And it still serves.
  const again = open("after the storm");
  assert.equal(again.w[W_STATE], EndpointState.Open);
  again.close();
});

// ---- in-thread -----------------------------------------------------------------------------

test("a closed endpoint's delivery staging buffers go with it", () => {
  // They were kept for the context's next opener: a host kept 2 MiB for every endpoint
  // context that had ever held a full queue of deliveries.
  const n = new Nic({ nicId: 3, maxEndpoints: 4 });
  const opened = (owner: string) =>
    new Owner(
      n.control({ op: "open_endpoint", owner, endpointId: ANY_ENDPOINT, key: 0 }) as OpenEndpointReply,
    );
  const a = opened("a");
  const b = opened("b");
  const mem = memory(SEND_MAX, 5);
  const r = n.control({
    op: "register_region",
    endpointId: a.id,
    memory: mem,
    runs: [{ offset: 0, length: SEND_MAX }],
    access: Access.LocalRead,
  }) as RegisterRegionReply;
  // 8 fill b's receive area; 5 more are held, each in a staging buffer.
  for (let i = 0; i < 13; i++)
    a.post({
      op: Opcode.Send,
      cookie: i,
      srcRegion: r.regionId,
      destNic: 3,
      destEndpoint: b.id,
      destSession: b.session,
      length: SEND_MAX,
    });
  while (n.poll());
  const staged = () =>
    (n as unknown as { eps: { ctxs: { dqBuf: (Uint8Array | null)[] }[] } }).eps.ctxs[b.id].dqBuf.filter(
      (x) => x !== null,
    ).length;
  assert.equal(staged(), 5, "five deliveries held");
  n.control({ op: "close_endpoint", endpointId: b.id });
  assert.equal(staged(), 0, "the closed endpoint keeps no staging buffer");
});

test("the engine runs in-thread for unit tests: control() and poll() without a worker", () => {
  const n = new Nic({ nicId: 3, maxEndpoints: 4 });
  const ep = n.control({
    op: "open_endpoint",
    owner: "x",
    endpointId: ANY_ENDPOINT,
    key: 0,
  }) as OpenEndpointReply;
  const o = new Owner(ep);
  const mem = memory(1024);
  const r = n.control({
    op: "register_region",
    endpointId: ep.endpointId,
    memory: mem,
    runs: [{ offset: 0, length: 1024 }],
    access: Access.RemoteRead | Access.LocalWrite,
  }) as RegisterRegionReply;
  o.post({
    op: Opcode.Pull,
    cookie: 5,
    srcRegion: r.regionId,
    srcKey: r.key,
    dstRegion: r.regionId,
    dstOffset: 512,
    length: 512,
  });
  assert.equal(o.tryEvent(), null, "nothing happens until the NIC polls");
  assert.equal(n.poll(), true);
  const e = o.tryEvent();
  assert.ok(e);
  assertEvent(e, EventType.PullDone, MxStatus.SUCCESS, "in-thread pull");
  assert.deepEqual(new Uint8Array(mem, 512, 512), new Uint8Array(mem, 0, 512));
  assert.equal(n.poll(), false);
  assert.throws(() => n.control({ op: "open_endpoint", owner: "y", endpointId: 9, key: 0 }), {
    errno: "EINVAL",
  });
  assert.throws(
    () => new Nic({ nicId: 1, maxEndpoints: 1000 }),
    /maxEndpoints must be an integer in 1\.\.256/,
  );
});

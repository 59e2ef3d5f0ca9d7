/**
 * The NIC's QoS scheduler (src/nic/qos.ts), counted, never timed: deficit round robin as a
 * unit (weights → shares of bytes served), and the NIC in-thread (control() and poll()): a
 * hostile owner that keeps its queue full gets its share and no more, and a capped
 * endpoint's messages all arrive, slowed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { OpenEndpointReply, RegisterRegionReply } from "../src/nic/control.js";
import { readNicCounters } from "../src/nic/counters.js";
import { Nic } from "../src/nic/nic.js";
import { DESCRIPTOR_COST, QOS_QUANTUM, QosScheduler } from "../src/nic/qos.js";
import { MxStatus } from "../src/nic/status.js";
import {
  Access,
  ANY_ENDPOINT,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DESC_WORDS,
  E_COOKIE,
  E_LENGTH,
  E_RECV_OFFSET,
  E_RECV_SPAN,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  Opcode,
  RECV_OFFSET,
  SEND_MAX,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_RQ_CONS,
  W_SQ_CONS,
  W_SQ_PROD,
} from "../src/nic/window.js";

/** Runs `rounds` DRR rounds over always-backlogged senders of `size`-byte SENDs; bytes served each. */
function drr(weights: number[], size: number, rounds: number): number[] {
  const q = new QosScheduler(weights.length);
  const ids = Int32Array.from(weights.keys());
  weights.forEach((w, id) => {
    q.opened(id, undefined, 0);
    q.set(id, { weight: w, txBytesPerSec: 0, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 }, 0);
  });
  const d = new Int32Array(DESC_WORDS);
  d[D_OPCODE] = Opcode.Send;
  d[D_LENGTH] = size;
  const served = weights.map(() => 0);
  for (let r = 0; r < rounds; r++) {
    q.beginRound(ids, ids.length, 0);
    for (const id of ids)
      while (q.admit(id, d)) {
        q.charge(id);
        served[id] += size;
      }
  }
  return served;
}

test("DRR: backlogged endpoints' bytes served follow their weights", () => {
  // Weights 3:1 with messages both smaller and larger than a quantum.
  for (const size of [4096, 100_000, 1 << 20]) {
    const [a, b] = drr([3, 1], size, 2000);
    assert.ok(Math.abs(a / b / 3 - 1) < 0.01, `size ${size}: ${a} : ${b}`);
  }
  const [x, y, z] = drr([1, 1, 1], 65536, 500);
  assert.equal(x, y);
  assert.equal(y, z);
  // A round serves a weight's quantum (plus at most one message of overdraft), repaid later.
  const [one] = drr([1], 1000, 1);
  assert.ok(one >= QOS_QUANTUM && one < QOS_QUANTUM + 1000, `one round: ${one}`);
});

test("DRR: deficits — an idle endpoint banks at most one quantum, an overdraft is repaid", () => {
  const q = new QosScheduler(2);
  q.opened(0, undefined, 0);
  q.opened(1, undefined, 0);
  const ids = Int32Array.of(0, 1);
  for (let r = 0; r < 10; r++) q.beginRound(ids, 2, 0);
  assert.equal(q.deficit[0], QOS_QUANTUM, "ten idle rounds are worth one");
  const big = new Int32Array(DESC_WORDS);
  big[D_OPCODE] = Opcode.Send;
  big[D_LENGTH] = 4 * QOS_QUANTUM;
  assert.ok(q.admit(0, big));
  q.charge(0);
  assert.equal(q.deficit[0], -3 * QOS_QUANTUM);
  let waited = 0;
  while (!q.admit(0, big)) {
    q.beginRound(ids, 2, 0);
    waited++;
  }
  assert.equal(waited, 4, "four rounds repay a 4-quantum message");
  // A NOP costs DESCRIPTOR_COST; a refused descriptor too, whatever length it claims.
  const nop = new Int32Array(DESC_WORDS);
  nop[D_OPCODE] = Opcode.Nop;
  const before = q.deficit[1];
  assert.ok(q.admit(1, nop));
  q.charge(1);
  assert.equal(q.deficit[1], before - DESCRIPTOR_COST);
  big[D_LENGTH] = 0xffffffff;
  assert.ok(q.admit(1, big));
  q.charge(1, true);
  assert.equal(q.deficit[1], before - 2 * DESCRIPTOR_COST);
});

test("a share group is one payer: four endpoints of one domain get one weight's bytes and one cap", () => {
  const q = new QosScheduler(5);
  for (let id = 0; id < 4; id++) q.opened(id, 7, 0);
  q.opened(4, 8, 0);
  const ids = Int32Array.of(0, 1, 2, 3, 4);
  const d = new Int32Array(DESC_WORDS);
  d[D_OPCODE] = Opcode.Send;
  d[D_LENGTH] = 65536;
  const served = [0, 0, 0, 0, 0];
  const run = (rounds: number, clock: (r: number) => number, who: number[]) => {
    for (let r = 0; r < rounds; r++) {
      q.beginRound(ids, ids.length, clock(r));
      for (const id of who)
        while (q.admit(id, d)) {
          q.charge(id);
          served[id] += 65536;
        }
    }
  };
  run(1000, () => 0, [0, 1, 2, 3, 4]);
  const group = served[0] + served[1] + served[2] + served[3];
  assert.ok(Math.abs(group / served[4] - 1) < 0.01, `four endpoints ${group} : one ${served[4]}`);
  // The domain's cap, set through one endpoint, is the four endpoints' together: 10^6 B/s.
  q.set(2, { weight: 1, txBytesPerSec: 1e6, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 }, 0);
  assert.equal(q.settings(0).txBytesPerSec, 1e6);
  assert.deepEqual(q.shares([0, 1, 2, 3, 4]), [[0, 1, 2, 3]]);
  served.fill(0);
  run(2000, (r) => r + 1, [0, 1, 2, 3]);
  const capped = served[0] + served[1] + served[2] + served[3];
  // Two seconds of 1 MB/s (the bucket starts empty), give or take one 64 KiB message.
  assert.ok(capped >= 2e6 - 65536 && capped <= 2e6 + 65536, `capped ${capped} B in 2 s`);
  // The group outlives any one endpoint; its last close frees the slot for a newcomer.
  for (let id = 0; id < 3; id++) q.closed(id);
  assert.equal(q.settings(3).txBytesPerSec, 1e6);
  q.closed(3);
  // A host that runs for weeks: endpoints come and go in and out of groups; no slot leaks.
  let seed = 1;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  const open = new Set<number>();
  for (let i = 0; i < 20_000; i++) {
    const id = rnd(5);
    if (open.has(id)) {
      q.closed(id);
      open.delete(id);
    } else {
      q.opened(id, rnd(3) === 0 ? undefined : rnd(4), i);
      open.add(id);
    }
  }
  for (const id of open) q.closed(id);
  // Five endpoints of five domains need all five slots: a leaked one would make two share.
  for (let id = 0; id < 5; id++) q.opened(id, 100 + id, 0);
  assert.deepEqual(q.shares([0, 1, 2, 3, 4]), [], "every slot came back");
  for (let id = 0; id < 5; id++) q.closed(id);
  q.opened(0, 9, 0);
  assert.deepEqual(q.settings(0), {
    weight: 1,
    txBytesPerSec: 0,
    txMsgsPerSec: 0,
    rxBytesPerSec: 0,
    rxMsgsPerSec: 0,
  });
});

// ---- the NIC in-thread ------------------------------------------------------------------------

const NIC_ID = 5;

class Owner {
  readonly w: Int32Array;
  prod = 0;
  eqCons = 0;
  rqCons = 0;
  constructor(
    readonly nic: Nic,
    readonly ep: OpenEndpointReply,
  ) {
    this.w = new Int32Array(ep.window);
  }
  static open(nic: Nic, owner: string): Owner {
    return new Owner(
      nic,
      nic.control({ op: "open_endpoint", owner, endpointId: ANY_ENDPOINT, key: 1 }) as OpenEndpointReply,
    );
  }
  get id(): number {
    return this.ep.endpointId;
  }
  register(bytes: number): RegisterRegionReply {
    const memory = new SharedArrayBuffer(bytes);
    new Uint8Array(memory).forEach((_, i, a) => {
      a[i] = (i * 7 + this.id) & 0xff;
    });
    return this.nic.control({
      op: "register_region",
      endpointId: this.id,
      memory,
      runs: [{ offset: 0, length: bytes }],
      access: Access.LocalRead | Access.LocalWrite,
    }) as RegisterRegionReply;
  }
  room(): number {
    return SQ_ENTRIES - (this.prod - Atomics.load(this.w, W_SQ_CONS));
  }
  /** Writes one descriptor (words by index) and rings. */
  post(words: Record<number, number>): void {
    const base = SQ_OFFSET / 4 + (this.prod % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) this.w[base + i] = words[i] ?? 0;
    this.prod++;
    Atomics.store(this.w, W_SQ_PROD, this.prod);
  }
  /** Every new event, consumed. */
  events(): { type: number; status: number; cookie: number; length: number; offset: number; span: number }[] {
    const out = [];
    while (Atomics.load(this.w, W_EQ_PROD) !== this.eqCons) {
      const b = EQ_OFFSET / 4 + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
      const t = this.w[b + E_TYPE] >>> 0;
      out.push({
        type: t & 0xffff,
        status: t >>> 16,
        cookie: this.w[b + E_COOKIE],
        length: this.w[b + E_LENGTH],
        offset: this.w[b + E_RECV_OFFSET],
        span: this.w[b + E_RECV_SPAN],
      });
      this.eqCons++;
    }
    Atomics.store(this.w, W_EQ_CONS, this.eqCons);
    return out;
  }
}

const send = (region: number, len: number, destNic: number, dest: Owner | null, cookie: number) => ({
  [D_OPCODE]: Opcode.Send,
  [D_SRC_REGION]: region,
  [D_SRC_OFFSET]: 0,
  [D_LENGTH]: len,
  [D_DEST_NIC]: destNic,
  [D_DEST_ENDPOINT]: dest?.id ?? 0,
  [D_DEST_SESSION]: dest?.ep.session ?? 0,
  [D_COOKIE]: cookie,
});

test("a hostile owner that keeps its queue full gets its share and no more", () => {
  const nic = new Nic({ nicId: NIC_ID, maxEndpoints: 4 });
  const hostile = Owner.open(nic, "hostile");
  const bystander = Owner.open(nic, "bystander");
  const hReg = hostile.register(SEND_MAX);
  const bReg = bystander.register(SEND_MAX);
  // Both send SEND_MAX messages to a NIC nobody can reach (each completes at once: no receiver
  // to wait on); the hostile one refills its whole queue before every round, the bystander
  // keeps 8 in flight.
  const UNREACHABLE = 999;
  let cookie = 0;
  const rounds = 400;
  for (let r = 0; r < rounds; r++) {
    while (hostile.room() > 0) hostile.post(send(hReg.regionId, SEND_MAX, UNREACHABLE, null, cookie++));
    while (bystander.room() > SQ_ENTRIES - 8)
      bystander.post(send(bReg.regionId, SEND_MAX, UNREACHABLE, null, cookie++));
    nic.poll();
    hostile.events();
    bystander.events();
  }
  const c = readNicCounters(nic.countersBuffer).endpoints;
  const h = c[hostile.id].qos_bytes;
  const b = c[bystander.id].qos_bytes;
  // Equal weights: equal bytes, to within one round's quantum and one message.
  assert.ok(Math.abs(h - b) <= QOS_QUANTUM + SEND_MAX, `hostile ${h}, bystander ${b}`);
  assert.ok(b >= rounds * QOS_QUANTUM * 0.99, `the bystander got its quantum every round: ${b}`);
  assert.ok(c[hostile.id].qos_deferred > 0, "the hostile queue waited for its turn");

  // Weighted 3:1 for the bystander: it gets three times the hostile one's bytes.
  nic.control({
    op: "set_qos",
    endpointId: bystander.id,
    settings: { weight: 3, txBytesPerSec: 0, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 },
  });
  const h0 = h;
  const b0 = b;
  for (let r = 0; r < rounds; r++) {
    while (hostile.room() > 0) hostile.post(send(hReg.regionId, SEND_MAX, UNREACHABLE, null, cookie++));
    while (bystander.room() > SQ_ENTRIES - 64)
      bystander.post(send(bReg.regionId, SEND_MAX, UNREACHABLE, null, cookie++));
    nic.poll();
    hostile.events();
    bystander.events();
  }
  const c2 = readNicCounters(nic.countersBuffer).endpoints;
  const ratio = (c2[bystander.id].qos_bytes - b0) / (c2[hostile.id].qos_bytes - h0);
  assert.ok(Math.abs(ratio / 3 - 1) < 0.02, `3:1 measured ${ratio}`);
});

test("a hostile domain that opens four endpoints gets one share of the NIC, not four", () => {
  // The NIC gave every endpoint its own weight: a guest that opened four (myrback allows
  // eight) and kept them all full took four shares to its one-endpoint neighbour's one.
  const nic = new Nic({ nicId: NIC_ID, maxEndpoints: 8 });
  const open = (owner: string, group: number) =>
    new Owner(
      nic,
      nic.control({
        op: "open_endpoint",
        owner,
        endpointId: ANY_ENDPOINT,
        key: 1,
        group,
      }) as OpenEndpointReply,
    );
  const hostile = [0, 1, 2, 3].map(() => open("domain 5", 5));
  const bystander = open("domain 6", 6);
  const regs = new Map([...hostile, bystander].map((o) => [o, o.register(SEND_MAX).regionId]));
  const UNREACHABLE = 999;
  let cookie = 0;
  for (let r = 0; r < 400; r++) {
    for (const [o, region] of regs) {
      while (o.room() > 0) o.post(send(region, SEND_MAX, UNREACHABLE, null, cookie++));
    }
    nic.poll();
    for (const o of regs.keys()) o.events();
  }
  const c = readNicCounters(nic.countersBuffer).endpoints;
  const h = hostile.reduce((sum, o) => sum + c[o.id].qos_bytes, 0);
  const b = c[bystander.id].qos_bytes;
  assert.ok(Math.abs(h - b) <= QOS_QUANTUM + SEND_MAX, `the four endpoints ${h}, the bystander ${b}`);
  const info = nic.info();
  assert.deepEqual(info.qosShares, [hostile.map((o) => o.id)]);
  assert.throws(
    () => nic.control({ op: "open_endpoint", owner: "x", endpointId: ANY_ENDPOINT, key: 1, group: -1 }),
    /group must be a u32/,
  );
});

test("a capped endpoint's messages are slowed, never lost: all arrive, in order, intact", () => {
  const nic = new Nic({ nicId: NIC_ID, maxEndpoints: 4 });
  const a = Owner.open(nic, "capped sender");
  const b = Owner.open(nic, "receiver");
  const reg = a.register(16384);
  const settings = { weight: 1, txBytesPerSec: 1e6, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 };
  assert.deepEqual(nic.control({ op: "set_qos", endpointId: a.id, settings }), settings);
  assert.throws(
    () => nic.control({ op: "set_qos", endpointId: a.id, settings: { ...settings, weight: 0 } }),
    /set_qos: weight must be an integer in 1\.\.1000/,
  );
  // 48 × 16 KiB = 768 KiB under a 1 MB/s cap whose bucket holds 25 KB: some must wait.
  const N = 48;
  for (let i = 0; i < N; i++) a.post(send(reg.regionId, 16384, NIC_ID, b, i));
  const got: number[] = [];
  const done: number[] = [];
  const recv = new Uint8Array(b.ep.window, RECV_OFFSET);
  const expected = new Uint8Array(16384).map((_, i) => (i * 7 + a.id) & 0xff);
  while (done.length < N) {
    nic.poll();
    for (const e of b.events()) {
      assert.equal(e.type, EventType.Recv);
      assert.deepEqual(recv.subarray(e.offset, e.offset + e.length), expected, `message ${e.cookie} intact`);
      got.push(got.length);
      b.rqCons += e.span;
      Atomics.store(b.w, W_RQ_CONS, b.rqCons);
    }
    for (const e of a.events()) {
      assert.equal(e.type, EventType.SendDone);
      assert.equal(e.status, MxStatus.SUCCESS);
      done.push(e.cookie);
    }
  }
  assert.equal(got.length, N);
  assert.deepEqual(
    done,
    Array.from({ length: N }, (_, i) => i),
  );
  assert.ok(readNicCounters(nic.countersBuffer).endpoints[a.id].qos_deferred > 0, "the cap held some back");
});

test("a domain whose last endpoint closes in debt finds the debt on its next endpoint: a cap is not reset by reopening", () => {
  // A guest capped at 1 MB/s sent 4 MB at once (the first message may overdraw), closed its
  // endpoint and opened another: the fresh slot started with an empty bucket not in debt, so
  // every reopen bought another free message of any size (a reviewer's lead).
  const q = new QosScheduler(2);
  const caps = { weight: 1, txBytesPerSec: 1e6, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 };
  const ids = Int32Array.of(0, 1);
  const d = new Int32Array(DESC_WORDS);
  d[D_OPCODE] = Opcode.Send;
  d[D_LENGTH] = 4_000_000;
  q.opened(0, 7, 0);
  q.set(0, caps, 0);
  q.beginRound(ids, 1, 0);
  assert.ok(q.admit(0, d), "the first message may overdraw");
  q.charge(0);
  q.closed(0);
  // 1 s later it opens again (as myrback does: the default policy, then the domain's).
  q.opened(1, 7, 1000);
  q.set(1, caps, 1000);
  q.beginRound(ids, 2, 1000);
  d[D_LENGTH] = 8;
  assert.equal(q.admit(1, d), false, "3 MB still owed at 1 MB/s");
  assert.ok(Math.abs(q.waitMs(ids, 2) - 3000) < 1, `owes 3 s more: ${q.waitMs(ids, 2)} ms`);
  q.beginRound(ids, 2, 4000);
  assert.ok(q.admit(1, d), "paid by 4 s");
  // Another domain, and this one once it has paid, start afresh.
  q.closed(1);
  q.opened(0, 8, 5000);
  q.set(0, caps, 5000);
  q.beginRound(ids, 1, 5000);
  assert.ok(q.admit(0, d));
  q.closed(0);
  q.opened(1, 7, 6000);
  q.set(1, caps, 6000);
  q.beginRound(ids, 2, 6000);
  assert.ok(q.admit(1, d), "a paid debt is forgotten");
});

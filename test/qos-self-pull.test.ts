/**
 * A capped sender's memory pulled by a colluding receiver on the same NIC, as an attacker
 * would post it (the NIC in-thread, control() and poll(), windows written from this thread).
 *
 * A rendezvous receiver pulls the sender's pull right with DFLAG_EXPOSURE, and the sender pays
 * (qos.ts): its deficit, its tx cap. The receiver may instead set DFLAG_REMOTE naming its own
 * NIC: with no loopback link the NIC checks the right as a peer would and copies it here
 * (remote-pull.ts). That path charged the puller only, so the source's tx cap bound nothing: a
 * domain capped at 1 MB/s streamed 157 MB in 38 ms to the receiver. Whichever flags the puller
 * sets, the source's bytes are held to its cap and counted as its own.
 *
 * Not timed tightly: the bytes moved are bounded by what the cap allowed over the time the test
 * measured (its bucket, the rate × the elapsed time, and the one descriptor that may overdraw),
 * however slow the machine; the rest waits, never fails, and goes when the cap is lifted.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { OpenEndpointReply, RegisterRegionReply } from "../src/nic/control.js";
import { readNicCounters } from "../src/nic/counters.js";
import { Nic } from "../src/nic/nic.js";
import { BURST_MS } from "../src/nic/qos.js";
import { MxStatus } from "../src/nic/status.js";
import {
  Access,
  ANY_ENDPOINT,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_REGION,
  DESC_WORDS,
  DFLAG_EXPOSURE,
  DFLAG_REMOTE,
  E_COOKIE,
  E_LENGTH,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  Opcode,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_SQ_PROD,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../src/nic/window.js";

const NIC_ID = 7;
/** The source's tx cap, bytes per second. */
const CAP = 1e6;
/** Each pull: a rendezvous message's whole payload, copied at once (under PULL_CHUNK). */
const LEN = 256 * 1024;
/** Pulls posted: 16 MiB, sixteen seconds of the cap. */
const N = 64;
/** How long the capped phase polls (ms of wall time; the bound below uses the time measured). */
const CAPPED_MS = 150;

class Owner {
  readonly w: Int32Array;
  prod = 0;
  eqCons = 0;
  constructor(
    readonly nic: Nic,
    readonly ep: OpenEndpointReply,
  ) {
    this.w = new Int32Array(ep.window);
  }
  static open(nic: Nic, owner: string, group: number): Owner {
    return new Owner(
      nic,
      nic.control({
        op: "open_endpoint",
        owner,
        endpointId: ANY_ENDPOINT,
        key: 1,
        group,
      }) as OpenEndpointReply,
    );
  }
  get id(): number {
    return this.ep.endpointId;
  }
  register(memory: SharedArrayBuffer, access: number): RegisterRegionReply {
    return this.nic.control({
      op: "register_region",
      endpointId: this.id,
      memory,
      runs: [{ offset: 0, length: memory.byteLength }],
      access,
    }) as RegisterRegionReply;
  }
  /** Arms pull right `index` over [0, len) of `region` with `key`, as a rendezvous sender does. */
  arm(index: number, region: RegisterRegionReply, len: number, key: number): void {
    const b = EXPOSURE_OFFSET / 4 + index * EXPOSURE_WORDS;
    Atomics.store(this.w, b + X_REGION, region.regionId);
    Atomics.store(this.w, b + X_OFFSET, 0);
    Atomics.store(this.w, b + X_LENGTH, len);
    Atomics.store(this.w, b + X_KEY, key);
    Atomics.store(this.w, b + X_STATE, ExposureState.Armed);
  }
  post(words: Record<number, number>): void {
    const base = SQ_OFFSET / 4 + (this.prod % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) this.w[base + i] = words[i] ?? 0;
    this.prod++;
    Atomics.store(this.w, W_SQ_PROD, this.prod);
  }
  /** Every new event, consumed. */
  events(): { type: number; status: number; cookie: number; length: number }[] {
    const out = [];
    while (Atomics.load(this.w, W_EQ_PROD) !== this.eqCons) {
      const b = EQ_OFFSET / 4 + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
      const t = this.w[b + E_TYPE] >>> 0;
      out.push({
        type: t & 0xffff,
        status: t >>> 16,
        cookie: this.w[b + E_COOKIE],
        length: this.w[b + E_LENGTH],
      });
      this.eqCons++;
    }
    Atomics.store(this.w, W_EQ_CONS, this.eqCons);
    return out;
  }
}

const VARIANTS = [
  { name: "DFLAG_EXPOSURE", flags: DFLAG_EXPOSURE },
  { name: "DFLAG_REMOTE naming its own NIC", flags: DFLAG_REMOTE },
  { name: "DFLAG_REMOTE | DFLAG_EXPOSURE naming its own NIC", flags: DFLAG_REMOTE | DFLAG_EXPOSURE },
];

for (const { name, flags } of VARIANTS) {
  test(`a receiver pulling a capped sender's rights on the same NIC with ${name} moves no more than the sender's tx cap allows, charged to the sender`, () => {
    const nic = new Nic({ nicId: NIC_ID, maxEndpoints: 4 });
    const sender = Owner.open(nic, "capped sender", 1);
    const receiver = Owner.open(nic, "colluding receiver", 2);
    const t0 = performance.now();
    nic.control({
      op: "set_qos",
      endpointId: sender.id,
      settings: { weight: 1, txBytesPerSec: CAP, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 },
    });
    const srcMem = new SharedArrayBuffer(LEN);
    new Uint8Array(srcMem).forEach((_, i, a) => {
      a[i] = (i * 13 + 5) & 0xff;
    });
    const src = sender.register(srcMem, Access.LocalRead | Access.RemoteRead);
    const dstMem = new SharedArrayBuffer(LEN);
    const dst = receiver.register(dstMem, Access.LocalWrite);
    // The sender arms a right per message; the receiver pulls each (D_DEST_NIC: this NIC, no
    // loopback link attached).
    for (let i = 0; i < N; i++) {
      sender.arm(i, src, LEN, 1000 + i);
      receiver.post({
        [D_OPCODE]: Opcode.Pull | (flags << 16),
        [D_COOKIE]: i,
        [D_SRC_REGION]: i,
        [D_SRC_KEY]: 1000 + i,
        [D_DST_REGION]: dst.regionId,
        [D_LENGTH]: LEN,
        [D_DEST_NIC]: NIC_ID,
        [D_DEST_ENDPOINT]: sender.id,
        [D_DEST_SESSION]: sender.ep.session,
      });
    }
    let moved = 0;
    let done = 0;
    const take = () => {
      for (const e of receiver.events()) {
        assert.equal(e.type, EventType.PullDone, `pull ${e.cookie}: a PULL_DONE, not type ${e.type}`);
        assert.equal(e.status, MxStatus.SUCCESS, `pull ${e.cookie} completes, never fails`);
        moved += e.length;
        done++;
      }
    };
    while (performance.now() - t0 < CAPPED_MS) {
      nic.poll();
      take();
    }
    const elapsedMs = performance.now() - t0;
    const c = readNicCounters(nic.countersBuffer).endpoints;
    // From set_qos on: the bucket (BURST_MS of the rate), its refill over the time measured,
    // and the one descriptor that may start while the bucket is not in debt.
    const allowed = (CAP / 1000) * (BURST_MS + elapsedMs) + LEN;
    assert.ok(moved >= LEN, `the first pull goes at once (${moved} bytes)`);
    assert.ok(
      moved <= allowed,
      `${moved} bytes of the sender's memory moved in ${elapsedMs.toFixed(0)} ms; its cap allows ${allowed.toFixed(0)}`,
    );
    assert.ok(done < N, "the cap holds the rest back");
    assert.equal(c[sender.id].qos_bytes, moved, "the sender is charged the bytes read from its memory");
    assert.equal(c[receiver.id].qos_bytes, 0, "the receiver is not charged the sender's bytes");
    assert.ok(c[receiver.id].qos_deferred > 0, "the receiver's pulls waited for the sender's cap");

    // The cap lifted: every pull held goes, intact.
    nic.control({
      op: "set_qos",
      endpointId: sender.id,
      settings: { weight: 1, txBytesPerSec: 0, txMsgsPerSec: 0, rxBytesPerSec: 0, rxMsgsPerSec: 0 },
    });
    for (let r = 0; r < 100 * N && done < N; r++) {
      nic.poll();
      take();
    }
    assert.equal(done, N, "every held pull completed once the cap was lifted");
    assert.deepEqual(new Uint8Array(dstMem), new Uint8Array(srcMem), "the bytes arrived intact");
    assert.equal(readNicCounters(nic.countersBuffer).endpoints[sender.id].qos_bytes, N * LEN);
  });
}

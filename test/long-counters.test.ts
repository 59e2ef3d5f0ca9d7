/**
 * A host that runs for weeks: a lane that has carried 2^31 bytes, a pair that has sent 2^31
 * messages, an endpoint whose NIC queues have turned 2^31 times and an Ethernet port that has
 * carried 2^31 bytes go on as on the first day (the Xen rings: test/ring.test.ts). Their positions and sequence numbers are u32s in
 * shared memory and on the wire; the library keeps them as int32s, the same bits, because a
 * JavaScript number past 2^31 is no longer a V8 small integer: the code that touched it was
 * deoptimised and the objects holding it switched to boxed doubles, so a 1 MiB ping-pong
 * (2 GiB within its first warm-up) ran at half speed for the rest of its life. The records
 * must also still arrive, in order, through the sign bit and the 2^32 wrap.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { LaneReader, LaneWriter } from "../src/mx/channel.js";
import { NicQueues } from "../src/mx/nic-queues.js";
import { MxRequest, nextSendSeq, RequestState } from "../src/mx/types.js";
import { laneProgress } from "../src/myrixen/back/inspect.js";
import {
  CHANNEL_BYTES,
  LANE_HEADER_BYTES,
  LaneWord,
  laneOffset,
  RECORD_HEADER_BYTES,
} from "../src/myrixen/channel-abi.js";
import {
  allocEtherPort,
  ETHER_MAX_FRAME,
  EtherPortClient,
  P_RX_HEAD,
  P_RX_TAIL,
  P_TX_HEAD,
  P_TX_TAIL,
  PORT_RX_OFFSET,
  ringPut,
} from "../src/nic/ether-port.js";
import { MxStatus } from "../src/nic/status.js";
import {
  DESC_WORDS,
  E_COOKIE,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  EVENT_WORDS,
  EventType,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_SQ_CONS,
  W_SQ_PROD,
  WINDOW_BYTES,
} from "../src/nic/window.js";
import { channelEnd, parts, postRecv } from "./helpers/mx-parts.js";

const isInt32 = (x: number) => x === (x | 0);

/** A fresh channel whose side-0 lane says it has carried `carried` bytes (Tail = Head). */
function laneThatCarried(carried: number): SharedArrayBuffer {
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const ctl = new Int32Array(ch, laneOffset(0), LANE_HEADER_BYTES / 4);
  ctl[LaneWord.Tail] = carried | 0;
  ctl[LaneWord.Head] = carried | 0;
  return ch;
}

for (const [name, start] of [
  ["the sign bit (2^31)", 0x8000_0000 - 300_000],
  ["the u32 wrap (2^32)", 0x1_0000_0000 - 300_000],
] as const) {
  test(`a lane's positions pass ${name} as int32s; every record arrives whole and in order`, () => {
    const ch = laneThatCarried(start);
    const w = new LaneWriter(ch, 0);
    const r = new LaneReader(ch, 0, 3);
    const pos = () => [(w as unknown as { tail: number }).tail, (r as unknown as { head: number }).head];
    let written = 0;
    let sent = 0;
    let got = 0;
    const sizes = [0, 13, 4096, 30_000, 65_536];
    const take = () => {
      assert.ok(r.next(), `record ${got} is there`);
      const n = sizes[got % sizes.length];
      assert.equal(r.aux[0], got);
      assert.equal(r.length, n);
      if (n > 0) assert.equal(r.bytes[r.payload + n - 1], got & 0xff);
      got++;
      r.release();
    };
    // 600 KB: more than twice the distance to the boundary, round a 256 KiB lane a few times.
    while (written < 600_000) {
      const n = sizes[sent % sizes.length];
      const at = w.reserve(n);
      if (at < 0) {
        take();
        continue;
      }
      w.words[(at >>> 2) + 1] = 1;
      w.words[(at >>> 2) + 4] = n;
      w.words[(at >>> 2) + 5] = sent;
      w.bytes.fill(sent & 0xff, at + RECORD_HEADER_BYTES, at + RECORD_HEADER_BYTES + n);
      w.commit();
      written += (RECORD_HEADER_BYTES + n + 7) & ~7;
      sent++;
      for (const p of pos()) assert.ok(isInt32(p), `a position left the int32s: ${p}`);
    }
    while (r.next()) {
      r.release();
      got++;
    }
    assert.equal(got, sent);
    assert.equal(r.broken, undefined);
    r.publishHead();
    for (const p of pos()) assert.ok(isInt32(p), `a position left the int32s: ${p}`);
    // The words keep the ABI's meaning: u32 bytes ever published (records and the PADs that
    // skip a lane's end: fewer than one largest record per time round), wrapping.
    const progress = laneProgress(ch, 0);
    assert.equal(progress.backlog, 0);
    assert.equal(progress.written, pos()[0] >>> 0);
    const advanced = (progress.written - start) >>> 0;
    assert.ok(advanced >= written && advanced < written + 4 * (RECORD_HEADER_BYTES + 65_536), `${advanced}`);
  });
}

test("a connection's sequence numbers wrap within its epoch as int32s, past 2^31 and 2^32; messages match in order across the wrap", () => {
  for (const start of [0x7fff_fffe, 0xffff_fffe]) {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const a = channelEnd(channel, 0);
    const b = channelEnd(channel, 1);
    a.partner.sendSeq = start | 0;
    b.partner.recvSeq = start | 0;
    const recvs = [0, 1, 2, 3, 4].map((i) => postRecv(b, new Uint8Array(4), 10 + i));
    for (let i = 0; i < 5; i++) {
      const req = new MxRequest("send", new Uint8Array([i, i, i, i]), undefined);
      req.peer = a.partner;
      req.matchLo = 10 + i;
      req.msgLength = 4;
      assert.ok(a.path.trySend(req));
      assert.ok(isInt32(a.partner.sendSeq), `sendSeq left the int32s: ${a.partner.sendSeq}`);
    }
    b.path.receive(true);
    for (const [i, r] of recvs.entries()) {
      assert.equal(r.state, RequestState.Done, `message ${i} matched`);
      assert.equal(r.code, MxStatus.SUCCESS);
      assert.deepEqual([...r.buffer], [i, i, i, i]);
    }
    // n wraps; the epoch (the connection) stays.
    assert.equal(b.partner.recvSeq, (start & -0x10000) | ((start + 5) & 0xffff));
    assert.ok(isInt32(b.partner.recvSeq));
    assert.equal(b.p.ctx.counters.channelErrors, 0);
  }
  const p = channelEnd(new SharedArrayBuffer(CHANNEL_BYTES), 0).partner;
  p.sendSeq = -1;
  assert.equal(nextSendSeq(p), -1);
  assert.equal(p.sendSeq >>> 0, 0xffff_0000, "0xffffffff is followed by 0xffff0000 (epoch 0xffff, n = 0)");
});

test("an endpoint's send and event queue indices pass 2^31 and 2^32 as int32s; every descriptor and event is taken in turn", () => {
  for (const start of [0x7fff_fff0, 0xffff_fff0]) {
    const p = parts();
    const window = new SharedArrayBuffer(WINDOW_BYTES);
    const w = new Int32Array(window);
    for (const word of [W_SQ_PROD, W_SQ_CONS, W_EQ_PROD, W_EQ_CONS]) w[word] = start | 0;
    const q = new NicQueues(window, p.ctx, p.completion, p.regions);
    const inner = q as unknown as { sqProd: number; eqCons: number };
    // 40 descriptors, taken by "the NIC" as they come: each in the slot its index names.
    for (let i = 0; i < 40; i++) {
      const base = q.slot(false);
      assert.equal(base, SQ_OFFSET / 4 + ((start + i) % SQ_ENTRIES) * DESC_WORDS);
      w[base] = i + 1;
      q.post();
      assert.ok(isInt32(inner.sqProd), `the send queue's index left the int32s: ${inner.sqProd}`);
      assert.equal(q.sqPending(), 1);
      Atomics.store(w, W_SQ_CONS, Atomics.load(w, W_SQ_PROD));
    }
    assert.equal(Atomics.load(w, W_SQ_PROD) >>> 0, (start + 40) % 2 ** 32);
    // 40 events (errors for no request: each is counted), written by "the NIC" past both bounds.
    for (let i = 0; i < 40; i++) {
      const base = EQ_OFFSET / 4 + ((start + i) % EQ_ENTRIES) * EVENT_WORDS;
      w[base + E_TYPE] = EventType.Error | (MxStatus.ABORTED << 16);
      w[base + E_COOKIE] = 0;
    }
    Atomics.store(w, W_EQ_PROD, (start + 40) | 0);
    q.poll();
    assert.equal(p.ctx.counters.nicErrors, 40);
    assert.ok(isInt32(inner.eqCons), `the event queue's index left the int32s: ${inner.eqCons}`);
    assert.equal(Atomics.load(w, W_EQ_CONS), (start + 40) | 0);
  }
});

test("an Ethernet port's rings pass 2^31 and 2^32 bytes as int32s; every frame goes out and comes in, in order", () => {
  for (const start of [0x8000_0000 - 3 * 9000, 0x1_0000_0000 - 3 * 9000]) {
    const port = allocEtherPort();
    const w = new Int32Array(port);
    for (const word of [P_TX_HEAD, P_TX_TAIL, P_RX_HEAD, P_RX_TAIL]) w[word] = start | 0;
    const client = new EtherPortClient(port);
    const inner = client as unknown as { txHead: number; rxTail: number };
    const u32 = new Uint32Array(port);
    const bytes = new Uint8Array(port);
    let rxHead = start | 0;
    const got: number[] = [];
    for (let i = 0; i < 600; i++) {
      // TX: the driver queues a frame; "the NIC" takes it at once.
      const frame = new Uint8Array(ETHER_MAX_FRAME - (i % 7)).fill(i & 0xff);
      assert.ok(client.send(frame), `frame ${i} queued`);
      Atomics.store(w, P_TX_TAIL, Atomics.load(w, P_TX_HEAD));
      assert.ok(isInt32(inner.txHead), `the TX head left the int32s: ${inner.txHead}`);
      // RX: "the NIC" puts a frame into the receive ring; the driver takes it.
      const moved = ringPut(
        bytes,
        u32,
        PORT_RX_OFFSET,
        rxHead,
        Atomics.load(w, P_RX_TAIL),
        frame,
        0,
        frame.length,
      );
      assert.ok(moved > 0, `room for frame ${i}`);
      rxHead = (rxHead + moved) | 0;
      Atomics.store(w, P_RX_HEAD, rxHead);
      assert.equal(
        client.poll((f) => got.push(f[0] === f[f.length - 1] ? f[0] : -1)),
        1,
      );
      assert.ok(isInt32(inner.rxTail), `the RX tail left the int32s: ${inner.rxTail}`);
    }
    assert.deepEqual(
      got,
      Array.from({ length: 600 }, (_, i) => i & 0xff),
    );
    // 600 frames of ~9 KB: more than 5 MB, past the bound and round the 1 MiB rings a few times.
    assert.ok((Atomics.load(w, P_TX_HEAD) - start) >>> 0 > 5_000_000);
  }
});

test("counters objects keep their shape when a count passes 2^31 (V8's own map check, in a child node)", () => {
  // An endpoint's counters, an Ethernet port's and a guest's Ethernet hub's: a per-message or per-byte count that passed
  // 2^31 as a small integer gave its object a new map (V8 reshapes it), deoptimising every
  // function that counted — once per counter, mid-job. %HaveSameMap is V8's own test of that.
  const dist = (p: string) => new URL(`../src/${p}`, import.meta.url).href;
  const script = `
    import { EndpointContext } from ${JSON.stringify(dist("mx/types.js"))};
    import { allocEtherPort, EtherPortClient } from ${JSON.stringify(dist("nic/ether-port.js"))};
    import { EtherHub } from ${JSON.stringify(dist("mx/ether.js"))};
    const a = new EndpointContext(0, 1, 1, 0).counters;
    const b = new EndpointContext(0, 2, 1, 0).counters;
    b.sends = 2 ** 31 + 5;
    b.bytesCached += 2 ** 32;
    const p = new EtherPortClient(allocEtherPort()).counters;
    const q = new EtherPortClient(allocEtherPort()).counters;
    q.txBytes += 2 ** 32;
    const device = { mtu: 9000, mac: new Uint8Array(6) };
    const h = new EtherHub(device).counters;
    const k = new EtherHub(device).counters;
    k.framesTx = 2 ** 31 + 1;
    console.log(JSON.stringify({ endpoint: %HaveSameMap(a, b), port: %HaveSameMap(p, q), hub: %HaveSameMap(h, k), zero: a.sends + p.txBytes + h.framesTx }));
  `;
  const out = execFileSync(
    process.execPath,
    ["--allow-natives-syntax", "--input-type=module", "-e", script],
    {
      encoding: "utf8",
    },
  );
  assert.deepEqual(JSON.parse(out), { endpoint: true, port: true, hub: true, zero: 0 });
});

/**
 * The wire between NICs (src/nic/): CONNECT descriptors, remote PULLs over TCP links, SENDs
 * that wait for their ACK when a link dies, reconnecting TCP links, the Ethernet port of the
 * split path, and garbage frames from a fake peer. Real NIC threads, real TCP sockets on
 * 127.0.0.1; this thread drives the NICs and owns their endpoints. A fake peer NIC (a TCP link
 * in this thread) plays a peer that goes silent or talks nonsense.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type net from "node:net";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type {
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  OpenEtherPortReply,
  RegisterRegionReply,
} from "../src/nic/control.js";
import { NicCounter } from "../src/nic/counters.js";
import { NicDevice } from "../src/nic/device.js";
import { DELIVERY_QUEUE } from "../src/nic/endpoints.js";
import {
  ETHER_MAX_FRAME,
  EtherPortClient,
  P_TX_HEAD,
  P_TX_TAIL,
  PORT_TX_OFFSET,
  ringPut,
} from "../src/nic/ether-port.js";
import {
  F_AUX0,
  F_AUX1,
  F_CONNECT_KEY,
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_NIC,
  F_DEST_SESSION,
  F_LENGTH,
  F_PULL_KEY,
  F_PULL_LENGTH,
  F_PULL_OFFSET,
  F_PULL_RIGHT,
  F_SRC_ENDPOINT,
  F_SRC_NIC,
  F_SRC_SESSION,
  F_STATUS,
  F_TAG,
  FRAME_HEADER_BYTES,
  FrameType,
  getWord,
  initFrame,
  setWord,
} from "../src/nic/frame.js";
import { ADDRESS_RESERVE } from "../src/nic/hold-share.js";
import type { Link } from "../src/nic/link.js";
import {
  DEST_CREDITS,
  PULL_JOBS_PER_LINK,
  PULL_LINK_SHARE,
  SEND_WINDOW,
  SRC_CREDITS,
  UNREAD_MS,
} from "../src/nic/link-state.js";
import { Nic } from "../src/nic/nic.js";
import { PULL_FREE_REFUSALS } from "../src/nic/pull-throttle.js";
import { PULL_SLOT_BITS } from "../src/nic/remote-pull.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import type { TcpLink } from "../src/nic/tcp-link.js";
import { connectTcpLink, type TcpLinkServer } from "../src/nic/tcp-link-setup.js";
import {
  Access,
  ANY_ENDPOINT,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DESC_WORDS,
  DFLAG_EXPOSURE,
  DFLAG_REMOTE,
  DFLAG_TRACE,
  E_AUX0,
  E_COOKIE,
  E_LENGTH,
  E_REASON,
  E_RECV_SPAN,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_SRC_SESSION,
  E_TRACE_DMA_DONE,
  E_TRACE_NIC_SEEN,
  E_TYPE,
  EQ_ENTRIES,
  EQ_OFFSET,
  ErrorReason,
  EVENT_WORDS,
  EventType,
  EXPOSURE_ENTRIES,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  HOLD_MS,
  Opcode,
  pullDeadlineMs,
  SEND_MAX,
  SQ_ENTRIES,
  SQ_OFFSET,
  W_EQ_CONS,
  W_EQ_PROD,
  W_NIC_SLEEPING,
  W_RQ_CONS,
  W_SQ_CONS,
  W_SQ_PROD,
  WIRE_TIMEOUT_MS,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../src/nic/window.js";
import { ETH_HEADER_BYTES, MXOE_ETHERTYPE, MXOE_HEADER_BYTES, MxoeWord } from "../src/xen/io/mxoe.js";
import type { SyncCallClient } from "../src/xen/sync-call.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST, listenAsPeer } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const quiet = () => {};

function info(ctl: SyncCallClient<NicControlRequest>): NicInfo {
  return ctl.call<NicInfo>({ op: "info" });
}

function sha(buf: SharedArrayBuffer | Uint8Array, offset = 0, length?: number): string {
  const b = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  return createHash("sha256")
    .update(b.subarray(offset, length === undefined ? undefined : offset + length))
    .digest("hex");
}

function fill(mem: SharedArrayBuffer, seed: number): void {
  const b = new Uint8Array(mem);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < b.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x;
    b[i + 1] = x >>> 8;
    b[i + 2] = x >>> 16;
    b[i + 3] = x >>> 24;
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
  reason: number;
  span: number;
  aux0: number;
  seenAt: number;
  dmaDone: number;
}

/** This thread as an endpoint's owner. */
class Owner {
  readonly w: Int32Array;
  readonly f64: Float64Array;
  prod = 0;
  eqCons = 0;
  rqCons = 0;
  constructor(
    readonly ctl: SyncCallClient<NicControlRequest>,
    readonly ep: OpenEndpointReply,
  ) {
    this.w = new Int32Array(ep.window);
    this.f64 = new Float64Array(ep.window);
  }
  /** `group`: the domain (QoS share group) it belongs to; without, a share of its own. */
  static open(ctl: SyncCallClient<NicControlRequest>, owner: string, key = 0, group?: number): Owner {
    return new Owner(
      ctl,
      ctl.call<OpenEndpointReply>({ op: "open_endpoint", owner, endpointId: ANY_ENDPOINT, key, group }),
    );
  }
  get id(): number {
    return this.ep.endpointId;
  }
  get session(): number {
    return this.ep.session;
  }
  register(memory: SharedArrayBuffer, access: number): RegisterRegionReply {
    return this.ctl.call<RegisterRegionReply>({
      op: "register_region",
      endpointId: this.id,
      memory,
      runs: [{ offset: 0, length: memory.byteLength }],
      access,
    });
  }
  deregister(regionId: number): void {
    this.ctl.call({ op: "deregister_region", endpointId: this.id, regionId });
  }
  close(): void {
    this.ctl.call({ op: "close_endpoint", endpointId: this.id });
  }
  post(d: Record<number, number>): void {
    assert.ok(this.prod - Atomics.load(this.w, W_SQ_CONS) < SQ_ENTRIES, "send-queue room");
    const base = SQ_OFFSET / 4 + (this.prod % SQ_ENTRIES) * DESC_WORDS;
    for (let i = 0; i < DESC_WORDS; i++) this.w[base + i] = d[i] ?? 0;
    this.prod++;
    Atomics.store(this.w, W_SQ_PROD, this.prod);
    this.poke();
  }
  poke(): void {
    if (Atomics.load(this.w, W_NIC_SLEEPING) === 1) Atomics.notify(this.w, W_SQ_PROD);
  }
  tryEvent(): Ev | null {
    if (Atomics.load(this.w, W_EQ_PROD) === this.eqCons) return null;
    const base = EQ_OFFSET / 4 + (this.eqCons % EQ_ENTRIES) * EVENT_WORDS;
    const u = (i: number) => this.w[base + i] >>> 0;
    const ev: Ev = {
      type: u(E_TYPE) & 0xffff,
      status: u(E_TYPE) >>> 16,
      cookie: u(E_COOKIE),
      length: u(E_LENGTH),
      srcNic: u(E_SRC_NIC),
      srcEndpoint: u(E_SRC_ENDPOINT),
      srcSession: u(E_SRC_SESSION),
      reason: u(E_REASON),
      span: u(E_RECV_SPAN),
      aux0: u(E_AUX0),
      seenAt: this.f64[(base + E_TRACE_NIC_SEEN) / 2],
      dmaDone: this.f64[(base + E_TRACE_DMA_DONE) / 2],
    };
    this.eqCons++;
    Atomics.store(this.w, W_EQ_CONS, this.eqCons);
    this.poke();
    return ev;
  }
  async nextEvent(timeoutMs = 5000, what = "an event"): Promise<Ev> {
    let ev: Ev | null = null;
    await until(() => (ev = this.tryEvent()) !== null, `${what} on endpoint ${this.id}`, timeoutMs);
    return ev!;
  }
  release(span: number): void {
    this.rqCons += span;
    Atomics.store(this.w, W_RQ_CONS, this.rqCons);
    this.poke();
  }
  private nextRight = 0;
  private nextKey = 0x2545f491;
  /**
   * Arms a pull right over [offset, offset + length) of `region` (window.ts, the exposure
   * table), as a rendezvous sender does: returns what its record carries, (index, key).
   */
  right(region: RegisterRegionReply, offset = 0, length = region.length): { regionId: number; key: number } {
    const index = this.nextRight++ % EXPOSURE_ENTRIES;
    const b = EXPOSURE_OFFSET / 4 + index * EXPOSURE_WORDS;
    const key = (this.nextKey = (Math.imul(this.nextKey, 1103515245) + 12345) >>> 0) || 1;
    Atomics.store(this.w, b + X_STATE, ExposureState.Free);
    Atomics.store(this.w, b + X_REGION, region.regionId);
    Atomics.store(this.w, b + X_OFFSET, offset);
    Atomics.store(this.w, b + X_LENGTH, length);
    Atomics.store(this.w, b + X_KEY, key);
    Atomics.store(this.w, b + X_STATE, ExposureState.Armed);
    return { regionId: index, key };
  }
}

function expectEvent(ev: Ev, type: number, status: number, what: string): void {
  assert.equal(ev.type, type, `${what}: event type ${ev.type}, expected ${type}`);
  assert.equal(ev.status, status, `${what}: ${mxStatusName(ev.status)}, expected ${mxStatusName(status)}`);
}

const connectDesc = (cookie: number, nic: number, ep: number, key: number) => ({
  [D_OPCODE]: Opcode.Connect,
  [D_COOKIE]: cookie,
  [D_DEST_NIC]: nic,
  [D_DEST_ENDPOINT]: ep,
  [D_SRC_KEY]: key,
});

interface PullArgs {
  cookie: number;
  nic: number;
  src: Owner | { id: number; session: number };
  /** The pull right: its index (in `regionId`) and key, as Owner.right returns them. */
  region: { regionId: number; key: number };
  srcOffset?: number;
  dst: RegisterRegionReply;
  dstOffset?: number;
  length: number;
  flags?: number;
}

const pullDesc = (a: PullArgs) => ({
  [D_OPCODE]: Opcode.Pull | ((DFLAG_REMOTE | (a.flags ?? 0)) << 16),
  [D_COOKIE]: a.cookie,
  [D_SRC_REGION]: a.region.regionId,
  [D_SRC_KEY]: a.region.key,
  [D_SRC_OFFSET]: a.srcOffset ?? 0,
  [D_DST_REGION]: a.dst.regionId,
  [D_DST_OFFSET]: a.dstOffset ?? 0,
  [D_LENGTH]: a.length,
  [D_DEST_NIC]: a.nic,
  [D_DEST_ENDPOINT]: a.src.id,
  [D_DEST_SESSION]: a.src.session,
});

const sendDesc = (
  cookie: number,
  region: RegisterRegionReply,
  length: number,
  nic: number,
  to: { id: number; session: number },
) => ({
  [D_OPCODE]: Opcode.Send,
  [D_COOKIE]: cookie,
  [D_SRC_REGION]: region.regionId,
  [D_LENGTH]: length,
  [D_DEST_NIC]: nic,
  [D_DEST_ENDPOINT]: to.id,
  [D_DEST_SESSION]: to.session,
});

/** A fake peer NIC in this thread: a TCP listener whose links record what they get. */
class FakePeer {
  links: TcpLink[] = [];
  frames: Buffer[] = [];
  private constructor(
    readonly nicId: number,
    readonly server: TcpLinkServer,
  ) {}
  static async start(nicId: number): Promise<FakePeer> {
    let self: FakePeer | null = null;
    const { server, links } = await listenAsPeer(nicId, (f) => self!.frames.push(Buffer.from(f)));
    self = new FakePeer(nicId, server);
    self.links = links;
    return self;
  }
  get link(): TcpLink {
    return this.links[this.links.length - 1];
  }
  /** `nic` links to this fake (it dials, with the real key handshake). */
  async attach(nic: NicDevice): Promise<void> {
    await nic.attachLink({ kind: "tcp", host: HOST, port: this.server.port, timeoutMs: 2000, key: LINK_KEY });
  }
  /** `nic` drops its link to this fake (if it still has one), and the fake stops listening. */
  async detach(nic: NicDevice): Promise<void> {
    await nic.detachLink(this.nicId).catch(() => {});
    await this.server.close();
  }
  framesOf(type: number): Buffer[] {
    return this.frames.filter((f) => (getWord(f, 0) & 0xff) === type);
  }
  /** A frame from this fake to NIC `dest`, header words as given. */
  send(type: number, dest: number, words: Record<number, number>, payload?: Uint8Array): boolean {
    const n = payload?.length ?? 0;
    const f = new Uint8Array(FRAME_HEADER_BYTES + n);
    initFrame(f, type, n);
    setWord(f, F_SRC_NIC, this.nicId);
    setWord(f, F_DEST_NIC, dest);
    for (const [w, v] of Object.entries(words)) setWord(f, Number(w), v);
    if (payload) f.set(payload, FRAME_HEADER_BYTES);
    return this.link.send(f);
  }
}

/** The header words of a PULL_REPLY from endpoint 3 (session 33) for `owner`'s pull `id` of `length` bytes, `over` replacing some. */
function pullReplyWords(owner: Owner, id: number, length: number, over: Record<number, number> = {}) {
  return {
    [F_SRC_ENDPOINT]: 3,
    [F_SRC_SESSION]: 33,
    [F_DEST_ENDPOINT]: owner.id,
    [F_DEST_SESSION]: owner.session,
    [F_COOKIE]: id,
    [F_PULL_OFFSET]: 0,
    [F_PULL_LENGTH]: length,
    ...over,
  } as Record<number, number>;
}

/** A PULL_REPLY frame from NIC `from` to NIC `to`: these header words, `payload` bytes of `fill`. */
function pullReplyFrame(from: number, to: number, words: Record<number, number>, payload: number, fill = 0) {
  const f = new Uint8Array(FRAME_HEADER_BYTES + payload);
  initFrame(f, FrameType.PullReply, payload);
  setWord(f, F_SRC_NIC, from);
  setWord(f, F_DEST_NIC, to);
  for (const [w, v] of Object.entries(words)) setWord(f, Number(w), v);
  f.fill(fill, FRAME_HEADER_BYTES);
  return f;
}

/**
 * `frame` as the fake's bulk connection carries it (length prefix first), and that connection,
 * to write it by hand: the bytes are counted on the way as the fake's link counts what it
 * sends, so the credits the NIC returns for them match.
 */
function byHand(fake: FakePeer, frame: Uint8Array): { bytes: Buffer; bulk: net.Socket } {
  const bytes = Buffer.alloc(4 + frame.length);
  bytes.writeUInt32LE(frame.length, 0);
  bytes.set(frame, 4);
  const link = fake.link as unknown as { bulk: net.Socket; bulkInFlight: number };
  link.bulkInFlight += bytes.length;
  return { bytes, bulk: link.bulk };
}

/** A PULL descriptor: `length` bytes into `dst` (at `dstOffset`) from endpoint 3 (session 33, pull right 5, key 6) on NIC `nic`. */
const pullFrom3 = (cookie: number, nic: number, dst: RegisterRegionReply, length: number, dstOffset = 0) =>
  pullDesc({
    cookie,
    nic,
    src: { id: 3, session: 33 },
    region: { regionId: 5, key: 6 },
    dst,
    dstOffset,
    length,
  });

/**
 * `owner` pulls `length` bytes into `dst` from endpoint 3 (session 33, region 5, key 6) behind
 * the fake, which must have no other PULL_REQUEST yet. Resolves with the request the fake got
 * and a way to answer it: a PULL_REPLY with those words, `over` replacing some, and `payload`.
 */
async function pullFromFake(fake: FakePeer, owner: Owner, dst: RegisterRegionReply, length: number) {
  owner.post(pullFrom3(1, fake.nicId, dst, length));
  await until(() => fake.framesOf(FrameType.PullRequest).length === 1, "the PULL_REQUEST");
  const req = fake.framesOf(FrameType.PullRequest)[0];
  const id = getWord(req, F_COOKIE);
  const reply = (over: Record<number, number>, payload?: Uint8Array) =>
    fake.send(FrameType.PullReply, 1, replyWords(over), payload);
  const replyWords = (over: Record<number, number>) => pullReplyWords(owner, id, length, over);
  return { req, id, reply, replyWords };
}

/**
 * `b` sends one SEND to the fake peer; resolves once it reached the peer or ended without
 * going out: its place among the SENDs the peer got, or -1.
 */
/** The fake says PENDING (held for receive space) for every SEND it got: a keepalive round. */
function holdEverySend(fake: FakePeer): void {
  for (const f of fake.framesOf(FrameType.Send))
    fake.send(FrameType.SendAck, 1, {
      [F_SRC_ENDPOINT]: getWord(f, F_DEST_ENDPOINT),
      [F_SRC_SESSION]: getWord(f, F_DEST_SESSION),
      [F_DEST_ENDPOINT]: getWord(f, F_SRC_ENDPOINT),
      [F_DEST_SESSION]: getWord(f, F_SRC_SESSION),
      [F_COOKIE]: getWord(f, F_COOKIE),
      [F_TAG]: getWord(f, F_TAG),
      [F_STATUS]: MxStatus.PENDING,
    });
}

async function bystanderSend(fake: FakePeer, b: Owner, reg: RegisterRegionReply): Promise<number> {
  b.post(sendDesc(7, reg, 10, fake.nicId, { id: 200, session: 0 }));
  const fromB = (f: Uint8Array) => getWord(f, F_SRC_ENDPOINT) === b.id;
  await until(
    () => fake.framesOf(FrameType.Send).some(fromB) || b.tryEvent() !== null,
    "the bystander's SEND on the wire, or its end",
    3 * WIRE_TIMEOUT_MS,
  );
  return fake.framesOf(FrameType.Send).findIndex(fromB);
}

let nic1: NicDevice;
let nic2: NicDevice;
let ctl1: SyncCallClient<NicControlRequest>;
let ctl2: SyncCallClient<NicControlRequest>;
const extra: NicDevice[] = [];

before(async () => {
  [nic1, nic2] = await Promise.all([NicDevice.start({ nicId: 1 }), NicDevice.start({ nicId: 2 })]);
  ctl1 = control(nic1);
  ctl2 = control(nic2);
  const port = await freePort();
  await nic2.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  await nic1.attachLink({ kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY });
  await until(() => info(ctl2).links.includes(1), "NIC 2 attached NIC 1's link");
});

after(async () => {
  await Promise.all([nic1?.stop(), nic2?.stop(), ...extra.map((n) => n.stop())]);
});

// ---- CONNECT ---------------------------------------------------------------------------------

test("CONNECT: on this NIC and across a TCP link (ok, bad key, unknown endpoint), no link", async () => {
  const a = Owner.open(ctl1, "a", 11);
  const local = Owner.open(ctl1, "local", 0x1234);
  const b = Owner.open(ctl2, "b", 0xfeedf00d);
  const c0 = nic1.counters().global;

  // This NIC: checked directly.
  a.post(connectDesc(1, 1, local.id, 0x1234));
  let e = await a.nextEvent();
  expectEvent(e, EventType.ConnectDone, MxStatus.SUCCESS, "local ok");
  assert.deepEqual([e.cookie, e.srcNic, e.srcEndpoint, e.srcSession], [1, 1, local.id, local.session]);
  a.post(connectDesc(2, 1, local.id, 0x1235));
  expectEvent(await a.nextEvent(), EventType.ConnectDone, MxStatus.BAD_KEY, "local bad key");
  a.post(connectDesc(3, 1, 30, 0));
  expectEvent(await a.nextEvent(), EventType.ConnectDone, MxStatus.ENDPOINT_UNKNOWN, "local not open");
  a.post(connectDesc(4, 1, 100000, 0));
  expectEvent(await a.nextEvent(), EventType.ConnectDone, MxStatus.ENDPOINT_UNKNOWN, "local out of range");

  // NIC 2, over the wire.
  a.post(connectDesc(5, 2, b.id, 0xfeedf00d));
  e = await a.nextEvent();
  expectEvent(e, EventType.ConnectDone, MxStatus.SUCCESS, "remote ok");
  assert.deepEqual([e.cookie, e.srcNic, e.srcEndpoint, e.srcSession], [5, 2, b.id, b.session]);
  a.post(connectDesc(6, 2, b.id, 1));
  e = await a.nextEvent();
  expectEvent(e, EventType.ConnectDone, MxStatus.BAD_KEY, "remote bad key");
  assert.deepEqual([e.cookie, e.srcSession], [6, 0]);
  a.post(connectDesc(7, 2, 31, 0));
  expectEvent(await a.nextEvent(), EventType.ConnectDone, MxStatus.ENDPOINT_UNKNOWN, "remote not open");
  // Many at once: each answered, in any order. (Wrong keys are throttled: see the test below.)
  for (let i = 0; i < 50; i++) a.post(connectDesc(100 + i, 2, b.id, 0xfeedf00d));
  const got = new Map<number, number>();
  for (let i = 0; i < 50; i++) {
    const ev = await a.nextEvent();
    got.set(ev.cookie, ev.status);
  }
  for (let i = 0; i < 50; i++) assert.equal(got.get(100 + i), MxStatus.SUCCESS);

  // No link to NIC 77: at once.
  const t0 = performance.now();
  a.post(connectDesc(8, 77, 0, 0));
  e = await a.nextEvent();
  expectEvent(e, EventType.ConnectDone, MxStatus.ENDPOINT_UNREACHABLE, "no link");
  assert.ok(performance.now() - t0 < 500, "no link fails fast");

  const c1 = nic1.counters().global;
  assert.equal(c1.connects - c0.connects, 58);
  assert.equal(c1.connect_failures - c0.connect_failures, 5 + 1);
  assert.ok(nic2.counters().global.connects_served >= 53);
  for (const o of [a, local, b]) o.close();
});

// ---- remote PULL ---------------------------------------------------------------------------------

test("remote PULL: 0 B, 1 B, 100 KiB, 5 MiB and 64 MiB arrive intact; traced stamps; per-endpoint counters", async (t) => {
  const a = Owner.open(ctl1, "puller");
  const b = Owner.open(ctl2, "source");
  const SRC = 64 * 1024 * 1024;
  const srcMem = new SharedArrayBuffer(SRC + 4096);
  fill(srcMem, 99);
  const dstMem = new SharedArrayBuffer(SRC + 4096);
  const src = b.register(srcMem, Access.RemoteRead);
  const dst = a.register(dstMem, Access.LocalWrite);
  const c0 = nic1.counters();
  const s0 = nic2.counters().global;
  let total = 0;
  for (const [i, len] of [0, 1, 100 * 1024, 5 * 1024 * 1024 + 3, SRC].entries()) {
    const so = len === SRC ? 4096 : 4096 - i * 7;
    const dOff = len === SRC ? 0 : 5 + i;
    new Uint8Array(dstMem).fill(0);
    const t0 = performance.now();
    a.post(
      pullDesc({
        cookie: 10 + i,
        nic: 2,
        src: b,
        region: b.right(src),
        srcOffset: so,
        dst,
        dstOffset: dOff,
        length: len,
        flags: i === 3 ? DFLAG_TRACE : 0,
      }),
    );
    const e = await a.nextEvent(30000, `the ${len}-byte pull`);
    expectEvent(e, EventType.PullDone, MxStatus.SUCCESS, `pull ${len}`);
    assert.deepEqual([e.cookie, e.length], [10 + i, len]);
    assert.equal(sha(dstMem, dOff, len), sha(srcMem, so, len), `${len} bytes arrived intact`);
    // Nothing before or after the destination range was touched.
    const d = new Uint8Array(dstMem);
    if (dOff > 0) assert.equal(d[dOff - 1], 0);
    if (dOff + len < d.length) assert.equal(d[dOff + len], 0);
    if (i === 3) {
      assert.ok(e.seenAt > 0 && e.dmaDone >= e.seenAt, "traced: nic-seen ≤ dma-done");
    } else assert.equal(e.seenAt, 0, "untraced: no stamps");
    total += len;
    if (len === SRC) t.diagnostic(`64 MiB in ${(performance.now() - t0).toFixed(0)} ms`);
  }
  const c1 = nic1.counters();
  const g = (k: keyof typeof c1.global) => c1.global[k] - c0.global[k];
  assert.equal(g("remote_pulls"), 5);
  assert.equal(g("remote_pull_bytes"), total);
  assert.equal(g("remote_pull_failures"), 0);
  assert.equal(g("pull_replies_bad"), 0);
  assert.equal(g("pulls"), 0, "no local DMA pulls");
  assert.equal(c1.endpoints[a.id].pull_bytes - c0.endpoints[a.id].pull_bytes, total);
  const s1 = nic2.counters().global;
  assert.equal(s1.pull_served_bytes - s0.pull_served_bytes, total);
  assert.equal(s1.pull_requests_rx - s0.pull_requests_rx, 5);
  // One frame per SEND_MAX bytes (and one for the empty pull).
  const frames =
    1 + [1, 100 * 1024, 5 * 1024 * 1024 + 3, SRC].reduce((n, l) => n + Math.ceil(l / SEND_MAX), 0);
  assert.equal(s1.pull_replies_tx - s0.pull_replies_tx, frames);
  assert.equal(g("pull_replies_rx"), frames);

  // Several at once, interleaved with SENDs both ways: every one completes.
  const sendMem = new SharedArrayBuffer(SEND_MAX);
  const sreg = a.register(sendMem, Access.LocalRead);
  for (let i = 0; i < 8; i++) {
    a.post(
      pullDesc({
        cookie: 100 + i,
        nic: 2,
        src: b,
        region: b.right(src),
        srcOffset: i * 1000,
        dst,
        dstOffset: i * 2 * 1024 * 1024,
        length: 2 * 1024 * 1024 - i,
      }),
    );
    a.post(sendDesc(200 + i, sreg, 1000, 2, b));
  }
  const done = new Map<number, Ev>();
  let recvs = 0;
  while (done.size < 16 || recvs < 8) {
    const e = a.tryEvent();
    if (e) done.set(e.cookie, e);
    const r = b.tryEvent();
    if (r) {
      expectEvent(r, EventType.Recv, MxStatus.SUCCESS, "recv");
      b.release(r.span);
      recvs++;
    }
    if (!e && !r) await sleep(2);
  }
  for (let i = 0; i < 8; i++) {
    expectEvent(done.get(100 + i)!, EventType.PullDone, MxStatus.SUCCESS, `concurrent pull ${i}`);
    assert.equal(
      sha(dstMem, i * 2 * 1024 * 1024, 2 * 1024 * 1024 - i),
      sha(srcMem, i * 1000, 2 * 1024 * 1024 - i),
    );
    expectEvent(done.get(200 + i)!, EventType.SendDone, MxStatus.SUCCESS, `send ${i}`);
  }
  a.close();
  b.close();
  assert.equal(nic1.counters().global.internal_errors, 0);
  assert.equal(nic2.counters().global.internal_errors, 0);
});

test("remote PULL refusals: bad key, bad region, out of bounds, no REMOTE_READ, wrong session, closed source, bad destination, no link", async () => {
  const a = Owner.open(ctl1, "puller");
  const b = Owner.open(ctl2, "source");
  const other = Owner.open(ctl2, "other");
  const srcMem = new SharedArrayBuffer(8192);
  const src = b.register(srcMem, Access.RemoteRead);
  const noRead = b.register(new SharedArrayBuffer(4096), Access.LocalRead);
  const foreign = other.register(new SharedArrayBuffer(4096), Access.RemoteRead);
  const dst = a.register(new SharedArrayBuffer(8192), Access.LocalWrite);
  const ro = a.register(new SharedArrayBuffer(8192), Access.LocalRead);
  const right = b.right(src);
  const base = { nic: 2, src: b, region: right, dst, length: 100 };
  const cases: [string, PullArgs, number][] = [
    [
      "bad key",
      { ...base, cookie: 1, region: { regionId: right.regionId, key: right.key ^ 1 } },
      MxStatus.BAD_KEY,
    ],
    ["no such right", { ...base, cookie: 2, region: { regionId: 0x7777, key: 1 } }, MxStatus.BAD_RDMAWIN],
    [
      "an unarmed entry",
      { ...base, cookie: 11, region: { regionId: 1000, key: right.key } },
      MxStatus.BAD_RDMAWIN,
    ],
    ["the region's own id and key", { ...base, cookie: 12, region: src }, MxStatus.BAD_RDMAWIN],
    ["out of bounds", { ...base, cookie: 3, srcOffset: 8100 }, MxStatus.BAD_RDMAWIN],
    ["offset wraps", { ...base, cookie: 4, srcOffset: 0xffffff00, length: 0x200 }, MxStatus.BAD_RDMAWIN],
    ["no REMOTE_READ", { ...base, cookie: 5, region: b.right(noRead) }, MxStatus.BAD_RDMAWIN],
    ["another endpoint's region", { ...base, cookie: 6, region: b.right(foreign) }, MxStatus.BAD_RDMAWIN],
    [
      "wrong session",
      { ...base, cookie: 7, src: { id: b.id, session: b.session ^ 5 } },
      MxStatus.BAD_SESSION,
    ],
    ["endpoint not open", { ...base, cookie: 8, src: { id: 30, session: 1 } }, MxStatus.ENDPOINT_CLOSED],
    [
      "endpoint out of range",
      { ...base, cookie: 9, src: { id: 5000, session: 1 } },
      MxStatus.ENDPOINT_UNKNOWN,
    ],
    ["no link", { ...base, cookie: 10, nic: 77 }, MxStatus.ENDPOINT_UNREACHABLE],
  ];
  for (const [what, args, status] of cases) {
    a.post(pullDesc(args));
    const e = await a.nextEvent(3000, what);
    expectEvent(e, EventType.PullDone, status, what);
    assert.equal(e.cookie, args.cookie, what);
  }
  // Refusals left the right armed; it serves once, then never again.
  a.post(pullDesc({ ...base, cookie: 13 }));
  expectEvent(await a.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "the right, once");
  a.post(pullDesc({ ...base, cookie: 14 }));
  expectEvent(await a.nextEvent(), EventType.PullDone, MxStatus.BAD_RDMAWIN, "the same right again");
  // The destination is checked here, before anything goes on the wire: an ERROR event.
  const bad: [string, PullArgs, number][] = [
    ["read-only destination", { ...base, cookie: 20, dst: ro }, ErrorReason.Permission],
    ["destination out of bounds", { ...base, cookie: 21, dstOffset: 8150 }, ErrorReason.OutOfBounds],
    [
      "no destination",
      { ...base, cookie: 22, dst: { regionId: 3, key: 0, length: 0 } },
      ErrorReason.BadRegion,
    ],
  ];
  for (const [what, args, reason] of bad) {
    a.post(pullDesc(args));
    const e = await a.nextEvent(3000, what);
    assert.equal(e.type, EventType.Error, what);
    assert.equal(e.reason, reason, what);
  }
  // A closed source endpoint: its regions went with it.
  const srcId = b.id;
  const srcSession = b.session;
  b.close();
  a.post(pullDesc({ ...base, cookie: 30, src: { id: srcId, session: srcSession } }));
  expectEvent(await a.nextEvent(), EventType.PullDone, MxStatus.ENDPOINT_CLOSED, "closed source");
  a.close();
  other.close();
});

test("remote PULL: a region deregistered or an endpoint closed mid-transfer, on either side, ends it with an error", async () => {
  const SIZE = 64 * 1024 * 1024;
  const srcMem = new SharedArrayBuffer(SIZE);
  const dstMem = new SharedArrayBuffer(SIZE);
  const before1 = nic1.counters().global;
  const midway = () => nic1.counters().global.remote_pull_bytes > before1.remote_pull_bytes;
  const run = async (
    what: string,
    act: (a: Owner, b: Owner, src: RegisterRegionReply, dst: RegisterRegionReply) => void,
  ) => {
    const a = Owner.open(ctl1, "puller");
    const b = Owner.open(ctl2, "source");
    const src = b.register(srcMem, Access.RemoteRead);
    const dst = a.register(dstMem, Access.LocalWrite);
    const start = nic1.counters().global.remote_pull_bytes;
    a.post(pullDesc({ cookie: 1, nic: 2, src: b, region: b.right(src), dst, length: SIZE }));
    await until(() => nic1.counters().global.remote_pull_bytes > start, `${what}: the first bytes`);
    act(a, b, src, dst);
    return { a, b };
  };
  // Source region deregistered: the responder stops and says ABORTED.
  let { a, b } = await run("source deregistered", (_a, b2, src) => b2.deregister(src.regionId));
  let e = await a.nextEvent(5000, "the aborted pull");
  expectEvent(e, EventType.PullDone, MxStatus.ABORTED, "source deregistered");
  assert.ok(e.length < SIZE);
  a.close();
  b.close();
  // Source endpoint closed: ENDPOINT_CLOSED.
  ({ a, b } = await run("source closed", (_a, b2) => b2.close()));
  expectEvent(await a.nextEvent(), EventType.PullDone, MxStatus.ENDPOINT_CLOSED, "source closed");
  a.close();
  // Destination deregistered: ABORTED here, and the peer is told to stop.
  const served0 = nic2.counters().global.pull_served_bytes;
  ({ a, b } = await run("destination deregistered", (a2, _b, _s, dst) => a2.deregister(dst.regionId)));
  expectEvent(await a.nextEvent(), EventType.PullDone, MxStatus.ABORTED, "destination deregistered");
  await sleep(200);
  const served = nic2.counters().global.pull_served_bytes - served0;
  assert.ok(served < SIZE, `the responder stopped early (${served} of ${SIZE} bytes)`);
  a.close();
  b.close();
  // Destination endpoint closed: no event (nobody reads it), no crash; the NIC carries on.
  ({ a, b } = await run("destination closed", (a2) => a2.close()));
  await sleep(100);
  b.close();
  assert.ok(midway());
  assert.equal(nic1.counters().global.internal_errors, 0);
  assert.equal(nic2.counters().global.internal_errors, 0);
  // And a pull right after still works.
  const a2 = Owner.open(ctl1, "again");
  const b2 = Owner.open(ctl2, "again");
  fill(srcMem, 5);
  const src = b2.register(srcMem, Access.RemoteRead);
  const dst = a2.register(dstMem, Access.LocalWrite);
  a2.post(pullDesc({ cookie: 2, nic: 2, src: b2, region: b2.right(src), dst, length: 1 << 20 }));
  e = await a2.nextEvent();
  expectEvent(e, EventType.PullDone, MxStatus.SUCCESS, "after the aborts");
  assert.equal(sha(dstMem, 0, 1 << 20), sha(srcMem, 0, 1 << 20));
  a2.close();
  b2.close();
});

// ---- a NIC that goes away -----------------------------------------------------------------------

/** Starts NIC `id` listening on `port` and links NIC 1 to it. */
async function peerOf1(
  id: number,
  port?: number,
): Promise<{ nic: NicDevice; ctl: SyncCallClient<NicControlRequest>; port: number }> {
  const nic = await NicDevice.start({ nicId: id });
  extra.push(nic);
  const p = port ?? (await freePort());
  await nic.attachLink({ kind: "tcp-listen", host: HOST, port: p, key: LINK_KEY });
  const ctl = control(nic);
  if (!info(ctl1).links.includes(id))
    await nic1.attachLink({ kind: "tcp", host: HOST, port: p, timeoutMs: 2000, key: LINK_KEY });
  await until(() => info(ctl).links.includes(1), `NIC ${id} attached NIC 1`);
  return { nic, ctl, port: p };
}

test("a peer NIC killed mid-pull: the pull and the SENDs awaiting their ACK complete ENDPOINT_UNREACHABLE at once", async () => {
  const { nic: nic3, ctl: ctl3 } = await peerOf1(3);
  const a = Owner.open(ctl1, "a");
  const b = Owner.open(ctl3, "b");
  const SIZE = 64 * 1024 * 1024;
  const srcMem = new SharedArrayBuffer(SIZE);
  const src = b.register(srcMem, Access.RemoteRead);
  const dst = a.register(new SharedArrayBuffer(SIZE), Access.LocalWrite);
  const sendMem = new SharedArrayBuffer(SEND_MAX);
  const sreg = a.register(sendMem, Access.LocalRead);

  // b never frees its receive area: 8 × SEND_MAX fill it, the next 4 are held by NIC 3 (no ACK).
  for (let i = 0; i < 12; i++) a.post(sendDesc(i, sreg, SEND_MAX, 3, b));
  for (let i = 0; i < 8; i++) {
    const e = await a.nextEvent();
    expectEvent(e, EventType.SendDone, MxStatus.SUCCESS, `send ${i}`);
  }
  await until(() => nic3.counters().global.delivery_queued >= 4, "four held deliveries");
  // Held longer than WIRE_TIMEOUT_MS: NIC 3's keepalives keep them from timing out.
  await sleep(WIRE_TIMEOUT_MS + 700);
  assert.equal(a.tryEvent(), null, "held SENDs do not time out while their receiver says it holds them");
  assert.equal(nic1.counters().global.send_timeouts, 0);

  const start = nic1.counters().global.remote_pull_bytes;
  a.post(pullDesc({ cookie: 100, nic: 3, src: b, region: b.right(src), dst, length: SIZE }));
  await until(() => nic1.counters().global.remote_pull_bytes > start, "the pull under way");
  const losses = nic1.counters().global.link_losses;
  const t0 = performance.now();
  await nic3.kill();
  const evs: Ev[] = [];
  for (let i = 0; i < 5; i++) evs.push(await a.nextEvent(3000, "a failure"));
  const took = performance.now() - t0;
  const pull = evs.find((e) => e.cookie === 100)!;
  expectEvent(pull, EventType.PullDone, MxStatus.ENDPOINT_UNREACHABLE, "the pull");
  assert.ok(pull.length < SIZE);
  for (const e of evs.filter((x) => x !== pull)) {
    expectEvent(e, EventType.SendDone, MxStatus.ENDPOINT_UNREACHABLE, `held send ${e.cookie}`);
    assert.ok(e.cookie >= 8 && e.cookie < 12);
  }
  assert.ok(took < 3000, `failed within ${took.toFixed(0)} ms`);
  assert.equal(nic1.counters().global.link_losses, losses + 1);
  // NIC 1 keeps trying to reconnect; meanwhile everything to NIC 3 fails fast.
  await until(
    () => info(ctl1).linkStates?.some((l) => l.peerNic === 3 && l.state === "down") === true,
    "NIC 3 down",
  );
  for (const d of [
    sendDesc(200, sreg, 10, 3, b),
    connectDesc(201, 3, b.id, 0),
    pullDesc({ cookie: 202, nic: 3, src: b, region: src, dst, length: 10 }),
  ]) {
    const t = performance.now();
    a.post(d);
    const e = await a.nextEvent();
    assert.equal(e.status, MxStatus.ENDPOINT_UNREACHABLE, `cookie ${e.cookie}`);
    assert.ok(performance.now() - t < 1000, "fails fast while the link is down");
  }
  await nic1.detachLink(3); // stops the retries
  assert.ok(!info(ctl1).linkStates?.some((l) => l.peerNic === 3), "forgotten after the detach");
  a.close();
  assert.equal(nic1.counters().global.internal_errors, 0);
});

test("a peer NIC restarted on the same port: the connecting NIC reconnects; a NIC that connects again replaces its link once the old one is dead, never while it answers", async () => {
  const { nic: first, port } = await peerOf1(4);
  const a = Owner.open(ctl1, "a");
  const reconnects0 = nic1.counters().global.link_reconnects;
  await first.kill();
  await until(
    () => info(ctl1).linkStates?.some((l) => l.peerNic === 4 && l.state === "down") === true,
    "down",
  );
  a.post(connectDesc(1, 4, 0, 0));
  expectEvent(await a.nextEvent(), EventType.ConnectDone, MxStatus.ENDPOINT_UNREACHABLE, "while down");
  await sleep(300); // a few failed attempts (backoff)
  const second = await NicDevice.start({ nicId: 4 });
  extra.push(second);
  await second.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  const ctl4 = control(second);
  await until(() => info(ctl1).links.includes(4), "NIC 1 reconnected", 5000);
  const st = info(ctl1).linkStates!.find((l) => l.peerNic === 4)!;
  assert.deepEqual([st.state, st.reconnects], ["up", 1]);
  assert.equal(nic1.counters().global.link_reconnects, reconnects0 + 1);
  const b = Owner.open(ctl4, "b", 42);
  a.post(connectDesc(2, 4, b.id, 42));
  const e = await a.nextEvent();
  expectEvent(e, EventType.ConnectDone, MxStatus.SUCCESS, "after the reconnect");
  assert.equal(e.srcSession, b.session);
  await nic1.detachLink(4);
  await until(() => !info(ctl4).links.includes(1), "NIC 4 saw the detach");
  await sleep(200);
  assert.ok(!info(ctl1).links.includes(4), "no reconnection after an explicit detach");

  // The listening side: a second connection claiming a linked NIC's id is refused while the
  // first answers (any key holder can claim any id: a live link is never handed over)...
  const { nic: nic5, ctl: ctl5, port: p5 } = await peerOf1(5);
  const x1 = await connectTcpLink({ nicId: 8, host: HOST, port: p5, log: quiet, key: LINK_KEY });
  await until(() => info(ctl5).links.includes(8), "the first connection");
  let closed1 = false;
  x1.onClose(() => {
    closed1 = true;
  });
  const impostor = await connectTcpLink({ nicId: 8, host: HOST, port: p5, log: quiet, key: LINK_KEY });
  let impostorClosed = false;
  impostor.onClose(() => {
    impostorClosed = true;
  });
  await until(() => impostorClosed, "the second connection refused", 5000);
  assert.equal(closed1, false, "the live first connection was replaced");
  assert.equal(impostor.goodbye, false, "a refused connection gets no goodbye: its dialer may try again");
  // ...and replaces it once the first stops answering (its NIC died, the connection did not
  // close): here the first's socket is no longer read, so its probe goes unanswered.
  (x1 as unknown as { socket: { pause(): void } }).socket.pause();
  const x2 = await connectTcpLink({ nicId: 8, host: HOST, port: p5, log: quiet, key: LINK_KEY });
  await until(() => closed1, "the dead first connection replaced", 5000);
  assert.equal(x1.goodbye, false, "a replaced link gets no goodbye");
  const s8 = info(ctl5).linkStates!.find((l) => l.peerNic === 8)!;
  assert.deepEqual([s8.state, s8.reconnects], ["up", 1]);
  x2.close();
  await until(() => !info(ctl5).links.includes(8), "the second closed");
  await nic1.detachLink(5);
  await nic5.stop();
  a.close();
  b.close();
});

// ---- throttled CONNECTs ------------------------------------------------------------------------

test("bad-key CONNECTs are throttled per requesting endpoint: prompt BAD_KEY first, then refused for a while; others unaffected", async () => {
  const cases = [
    ["on this NIC", 1, nic1, ctl1],
    ["across the link", 2, nic2, ctl2],
  ] as const;
  for (const [where, targetNic, nic, ctlT] of cases) {
    const target = Owner.open(ctlT, "target", 0x600d);
    // A high endpoint id of its own (its owner's lockouts stay with the id it had).
    const attacker = new Owner(
      ctl1,
      ctl1.call<OpenEndpointReply>({ op: "open_endpoint", owner: "guesser", endpointId: 30, key: 0 }),
    );
    const honest = Owner.open(ctl1, "honest");
    const c0 = nic.counters().global as Record<string, number>;
    const home0 = nic1.counters().global.own_requests_throttled;
    // An honest mistake (or two) gets its answer at once.
    for (let i = 0; i < 4; i++) {
      attacker.post(connectDesc(10 + i, targetNic, target.id, 0xbad0 + i));
      const e = await attacker.nextEvent(3000, `${where}: wrong key ${i}`);
      expectEvent(e, EventType.ConnectDone, MxStatus.BAD_KEY, `${where}: wrong key ${i}`);
    }
    // Guessing on: refused without the key being looked at, the right key included.
    const statuses = new Map<number, number>();
    for (let i = 0; i < 50; i++) attacker.post(connectDesc(100 + i, targetNic, target.id, 0xbad100 + i));
    attacker.post(connectDesc(200, targetNic, target.id, 0x600d));
    let retryAfter = 0;
    for (let i = 0; i < 51; i++) {
      const e = await attacker.nextEvent(3000, `${where}: a guess`);
      assert.equal(e.type, EventType.ConnectDone);
      statuses.set(e.cookie, e.status);
      if (e.cookie === 200) retryAfter = e.aux0;
    }
    for (const [cookie, st] of statuses)
      assert.equal(st, MxStatus.REJECTED, `${where}: guess ${cookie} answered ${mxStatusName(st)}`);
    assert.ok(retryAfter > 0, `${where}: the refusal says when to retry (${retryAfter} ms)`);
    // Another endpoint is not touched by the guesser's penalty.
    honest.post(connectDesc(300, targetNic, target.id, 0x600d));
    expectEvent(await honest.nextEvent(), EventType.ConnectDone, MxStatus.SUCCESS, `${where}: honest`);
    // The guesser's own NIC counts its refusals too and refuses the rest before sending them.
    const c1 = nic.counters().global as Record<string, number>;
    assert.equal(nic1.counters().global.own_requests_throttled - home0, 51, `${where}: counted`);
    assert.equal(c1.connects_throttled - c0.connects_throttled, 0, `${where}: none sent`);
    // Once the guesser closed, a newcomer that asks for any id does not get id 30 (and
    // connects); the guesser asking again does, and its own NIC's record of it with it.
    attacker.close();
    // Ids below 30 taken, so that the lowest free one is the guesser's.
    const fillers: Owner[] = [];
    const taken = info(ctl1).openEndpoints;
    for (let i = 0; i < 30; i++) if (!taken.includes(i)) fillers.push(Owner.open(ctl1, "filler"));
    const newcomer = Owner.open(ctl1, "newcomer");
    assert.notEqual(newcomer.id, 30, `${where}: the newcomer got the locked-out id`);
    newcomer.post(connectDesc(400, targetNic, target.id, 0x600d));
    expectEvent(await newcomer.nextEvent(), EventType.ConnectDone, MxStatus.SUCCESS, `${where}: newcomer`);
    const again = Owner.open(ctl1, "guesser");
    assert.equal(again.id, 30, `${where}: the guesser gets its own id back`);
    for (const o of [target, honest, newcomer, again, ...fillers]) o.close();
  }
});

test("a peer NIC naming a new requesting endpoint for every guess gets no more guesses: ids no NIC can have are refused", async () => {
  // The throttle keys on the requester the frame names; a hostile NIC (it holds the cluster
  // key) names endpoint ids no NIC can open (≥ MAX_ENDPOINTS_LIMIT), a new one per guess, each
  // with CONNECT_FREE_FAILS prompt answers of its own: an oracle at wire speed.
  const fake = await FakePeer.start(13);
  try {
    await fake.attach(nic1);
    const target = Owner.open(ctl1, "target", 0x600d);
    const c0 = nic1.counters().global;
    const GUESSES = 40;
    const ask = (cookie: number, requester: number, key: number) =>
      fake.send(FrameType.ConnectRequest, 1, {
        [F_SRC_ENDPOINT]: requester,
        [F_SRC_SESSION]: 5,
        [F_DEST_ENDPOINT]: target.id,
        [F_COOKIE]: cookie,
        [F_CONNECT_KEY]: key,
      });
    for (let i = 0; i < GUESSES; i++) ask(100 + i, 1000 + i * 7919, 0xbad000 + i);
    // The right key from yet another such id: no answer may tell it apart from a wrong one.
    ask(500, 0xfffffff0, 0x600d);
    // An endpoint id a NIC can have, with the right key: answered as before.
    ask(600, 3, 0x600d);
    const replies = () => fake.framesOf(FrameType.ConnectReply);
    await until(() => replies().length === GUESSES + 2, "every CONNECT answered");
    const byCookie = new Map(replies().map((f) => [getWord(f, F_COOKIE), getWord(f, F_STATUS)]));
    for (let i = 0; i <= GUESSES; i++) {
      const cookie = i < GUESSES ? 100 + i : 500;
      const st = byCookie.get(cookie);
      assert.ok(
        st !== MxStatus.BAD_KEY && st !== MxStatus.SUCCESS,
        `guess ${cookie}: answered ${mxStatusName(st ?? -1)}, which says whether the key was right`,
      );
    }
    assert.equal(byCookie.get(600), MxStatus.SUCCESS, "an endpoint id a NIC can have is served");
    const c1 = nic1.counters().global;
    assert.equal(c1.connect_bad_keys, c0.connect_bad_keys, "no key of theirs was looked at");
    assert.equal(c1.frames_bad - c0.frames_bad, GUESSES + 1, "counted");
    assert.equal(c1.internal_errors, 0);
    target.close();
  } finally {
    await fake.detach(nic1);
  }
});

// ---- a frozen peer ---------------------------------------------------------------------------------

/** A peer that froze (a stopped host): its link took a few frames, then takes none and says nothing. */
class FrozenLink implements Link {
  accepted = 0;
  constructor(
    readonly peerNic: number,
    private room: number,
  ) {}
  send(_frame: Uint8Array): boolean {
    if (this.room === 0) return false;
    this.room--;
    this.accepted++;
    return true;
  }
  onFrame(): void {}
  onWritable(): void {}
  close(): void {}
}

test("a frozen peer: SENDs waiting for their ACK, SENDs the link will not take, CONNECT and PULL all fail ENDPOINT_UNREACHABLE", async () => {
  const n = new Nic({ nicId: 40, maxEndpoints: 4 });
  n.start();
  try {
    const link = new FrozenLink(41, 8);
    n.attachLink(link);
    const ctl = {
      call: (req: NicControlRequest) => n.control(req),
    } as unknown as SyncCallClient<NicControlRequest>;
    const a = new Owner(
      ctl,
      n.control({ op: "open_endpoint", owner: "a", endpointId: ANY_ENDPOINT, key: 0 }) as OpenEndpointReply,
    );
    const mem = a.register(new SharedArrayBuffer(1 << 20), Access.LocalRead | Access.LocalWrite);
    const far = { id: 0, session: 1 };
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) a.post(sendDesc(i, mem, SEND_MAX, 41, far));
    a.post(connectDesc(100, 41, 0, 0));
    a.post(
      pullDesc({ cookie: 101, nic: 41, src: far, region: { regionId: 1, key: 1 }, dst: mem, length: 100 }),
    );
    const cookies = new Set<number>();
    while (cookies.size < 22) {
      const e = await a.nextEvent(10_000 - (performance.now() - t0), "a failure from the frozen peer");
      assert.equal(e.status, MxStatus.ENDPOINT_UNREACHABLE, `cookie ${e.cookie}: ${mxStatusName(e.status)}`);
      cookies.add(e.cookie);
    }
    assert.equal(link.accepted, 8, "the link took what it could before it froze");
    // A link that takes nothing at all: nothing of ours is on the wire to time out, yet the
    // SEND that waits for it fails, and so does what queued behind it.
    n.attachLink(new FrozenLink(42, 0));
    const t1 = performance.now();
    for (let i = 0; i < 3; i++) a.post(sendDesc(200 + i, mem, 100, 42, far));
    for (let i = 0; i < 3; i++) {
      const e = await a.nextEvent(10_000 - (performance.now() - t1), "a failure from the mute link");
      expectEvent(e, EventType.SendDone, MxStatus.ENDPOINT_UNREACHABLE, `cookie ${e.cookie}`);
    }
    a.close();
  } finally {
    n.stop();
  }
});

// ---- a fake peer ----------------------------------------------------------------------------------

test("a silent peer: CONNECT, remote PULL and SEND complete ENDPOINT_UNREACHABLE after WIRE_TIMEOUT_MS", async () => {
  const fake = await FakePeer.start(9);
  try {
    await fake.attach(nic1);
    const a = Owner.open(ctl1, "a");
    const dst = a.register(new SharedArrayBuffer(4096), Access.LocalWrite | Access.LocalRead);
    const c0 = nic1.counters().global;
    const t0 = performance.now();
    a.post(connectDesc(1, 9, 0, 0));
    a.post(
      pullDesc({
        cookie: 2,
        nic: 9,
        src: { id: 0, session: 0 },
        region: { regionId: 1, key: 2 },
        dst,
        length: 100,
      }),
    );
    a.post(sendDesc(3, dst, 100, 9, { id: 0, session: 0 }));
    const evs = [await a.nextEvent(4000), await a.nextEvent(4000), await a.nextEvent(4000)];
    const took = performance.now() - t0;
    evs.sort((x, y) => x.cookie - y.cookie);
    expectEvent(evs[0], EventType.ConnectDone, MxStatus.ENDPOINT_UNREACHABLE, "connect");
    expectEvent(evs[1], EventType.PullDone, MxStatus.ENDPOINT_UNREACHABLE, "pull");
    expectEvent(evs[2], EventType.SendDone, MxStatus.ENDPOINT_UNREACHABLE, "send");
    assert.ok(
      took >= WIRE_TIMEOUT_MS - 50 && took < WIRE_TIMEOUT_MS + 1500,
      `timed out after ${took.toFixed(0)} ms`,
    );
    const c1 = nic1.counters().global;
    assert.equal(c1.pull_timeouts - c0.pull_timeouts, 1);
    assert.equal(c1.send_timeouts - c0.send_timeouts, 1);
    // The fake saw the requests (and the cancel of the timed-out pull).
    assert.equal(fake.framesOf(FrameType.ConnectRequest).length, 1);
    await until(() => fake.framesOf(FrameType.PullRequest).length === 2, "the request and its cancel");
    const preqs = fake.framesOf(FrameType.PullRequest);
    assert.equal(getWord(preqs[1], F_STATUS), MxStatus.ABORTED, "a cancel follows the timeout");

    assert.equal(c1.links_silent - c0.links_silent, 1, "the peer was found silent");
    // For WIRE_TIMEOUT_MS after that, requests to it fail at once.
    a.post(sendDesc(999, dst, 10, 9, { id: 0, session: 0 }));
    expectEvent(
      await a.nextEvent(3000, "a failure"),
      EventType.SendDone,
      MxStatus.ENDPOINT_UNREACHABLE,
      "silent",
    );
    assert.equal(fake.framesOf(FrameType.Send).length, 1, "nothing more went to the silent peer");
    await sleep(WIRE_TIMEOUT_MS);

    // More SENDs to one endpoint than its share of the window: the rest wait in the queue
    // (nothing is dropped). When the ones on the wire time out, the peer is still silent: the
    // rest fail with them, in one round, instead of going out and timing out share by share.
    const N = DEST_CREDITS + 40;
    // What one domain alone has out to one destination (LinkState.canSend keeps one credit).
    const ALONE = DEST_CREDITS - 1;
    for (let i = 0; i < N; i++) {
      await until(() => a.prod - Atomics.load(a.w, W_SQ_CONS) < SQ_ENTRIES, "queue room");
      a.post(sendDesc(1000 + i, dst, 10, 9, { id: 0, session: 0 }));
    }
    await until(() => fake.framesOf(FrameType.Send).length === 1 + ALONE, "a full share on the wire");
    await sleep(100);
    assert.equal(fake.framesOf(FrameType.Send).length, 1 + ALONE, "no more than the share");
    const c2 = nic1.counters().global;
    assert.ok(c2.send_dest_full > c1.send_dest_full, "the share pushed back");
    const cookies = new Set<number>();
    while (cookies.size < N) {
      const e = await a.nextEvent(3 * WIRE_TIMEOUT_MS, "a failed send");
      expectEvent(e, EventType.SendDone, MxStatus.ENDPOINT_UNREACHABLE, `send ${e.cookie}`);
      cookies.add(e.cookie);
    }
    assert.equal(fake.framesOf(FrameType.Send).length, 1 + ALONE, "the queued ones never went out");
    const c3 = nic1.counters().global;
    // The share's deadlines are as far apart as its SENDs went out: the wire tick that finds
    // the first overdue may find the others not yet due, and the silence it notes fails them
    // in the same round (not counted as timeouts). So at least one timed out, at most the
    // share; the rest failed with them (all N above), and the peer was found silent once.
    // (A loaded 2-core CI runner spread the share over two ticks: 1 timeout, 31 failed.)
    const timedOut = c3.send_timeouts - c2.send_timeouts;
    assert.ok(timedOut >= 1 && timedOut <= DEST_CREDITS, `${timedOut} timeouts`);
    assert.equal(c3.links_silent - c2.links_silent, 1);
    a.close();
  } finally {
    await fake.detach(nic1);
  }
});

test("a hostile peer that says PENDING for ever: its SENDs fail HoldExpired after HOLD_MS, the sender's queue goes on", async () => {
  // A peer NIC that holds our SENDs for receive space and sends keepalives (PENDING SEND_ACKs)
  // past HOLD_MS, as no honest receiver does (delivery.ts expire): a full share of SENDs to it,
  // then one more (it waits at the head of the endpoint's queue for that share), then a SEND
  // to an endpoint of this very NIC behind it.
  const fake = await FakePeer.start(12);
  let keepalives: NodeJS.Timeout | undefined;
  try {
    await fake.attach(nic1);
    const a = Owner.open(ctl1, "a");
    const local = Owner.open(ctl1, "local");
    const sreg = a.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const c0 = nic1.counters().global;
    keepalives = setInterval(() => holdEverySend(fake), WIRE_TIMEOUT_MS / 4);
    // What one domain alone may have out to one destination (one credit kept for a newcomer).
    const SHARE = DEST_CREDITS - 1;
    const t0 = performance.now();
    for (let i = 0; i <= SHARE; i++) a.post(sendDesc(i, sreg, 10, 12, { id: 0, session: 0 }));
    a.post(sendDesc(1000, sreg, 10, 1, local));
    await until(() => fake.framesOf(FrameType.Send).length === SHARE, "a full share on the wire");

    // The share fails as an honest receiver would have failed it; then the queue moves on.
    const failed = new Set<number>();
    let delivered = false;
    while (failed.size < SHARE || !delivered) {
      const e = await a.nextEvent(
        HOLD_MS + 2 * WIRE_TIMEOUT_MS + 1000,
        "a held SEND's end, or the local SEND",
      );
      if (e.cookie === 1000) {
        expectEvent(e, EventType.SendDone, MxStatus.SUCCESS, "the SEND behind the held ones");
        delivered = true;
        continue;
      }
      expectEvent(e, EventType.SendDone, MxStatus.NO_RESOURCES, `held send ${e.cookie}`);
      assert.equal(e.reason, ErrorReason.HoldExpired, `held send ${e.cookie}: reason`);
      assert.ok(e.cookie < SHARE, `send ${e.cookie} was one of the share`);
      failed.add(e.cookie);
    }
    const took = performance.now() - t0;
    assert.ok(took < HOLD_MS + 2 * WIRE_TIMEOUT_MS + 1000, `the queue moved after ${took.toFixed(0)} ms`);
    expectEvent(await local.nextEvent(), EventType.Recv, MxStatus.SUCCESS, "the local endpoint got its SEND");
    const c1 = nic1.counters().global;
    assert.ok(c1.send_holds_overdue - c0.send_holds_overdue >= SHARE, "counted");
    assert.equal(c1.send_timeouts, c0.send_timeouts, "not timeouts: the peer talked all along");
    assert.equal(c1.internal_errors, 0);
    a.close();
    local.close();
  } finally {
    clearInterval(keepalives);
    await fake.detach(nic1);
  }
});

test("a hostile peer that talks but reads nothing: the SEND stuck on its link fails ENDPOINT_UNREACHABLE after UNREAD_MS, the local SEND behind it is delivered", async () => {
  // A fake peer NIC on a real TCP link (real handshake) stops reading its sockets and sends a
  // frame every 150 ms, so it is never silent. Endpoints of NIC 1 fill the link until TCP
  // pushes back; then an endpoint posts a SEND to the fake (it waits at the head of its queue
  // for the link) and, behind it, a SEND to an endpoint of NIC 1 itself.
  const fake = await FakePeer.start(13);
  let chatter: NodeJS.Timeout | undefined;
  const owners: Owner[] = [];
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake has its link");
    // After the link's own resume (a turn after it is made): the fake reads nothing more.
    await sleep(50);
    const sockets = fake.link as unknown as { socket: net.Socket; bulk: net.Socket };
    sockets.socket.pause();
    sockets.bulk.pause();
    // It keeps talking: SEND_ACKs for nothing (NIC 1 drops them), never a frame NIC 1 answers.
    let said = 0;
    chatter = setInterval(() => {
      said++;
      fake.send(FrameType.SendAck, 1, { [F_TAG]: 0xfffff000 + said, [F_STATUS]: MxStatus.SUCCESS });
    }, 150);
    const c0 = nic1.counters().global;

    // 8 endpoints × SRC_CREDITS full SENDs = 16 MiB: more than the link's write buffer (2 MiB)
    // and the kernel's on both ends take from a peer that reads nothing.
    const FILLERS = 8;
    for (let k = 0; k < FILLERS; k++) {
      const o = Owner.open(ctl1, `filler${k}`);
      owners.push(o);
      const reg = o.register(new SharedArrayBuffer(SEND_MAX), Access.LocalRead);
      for (let i = 0; i < SRC_CREDITS; i++) o.post(sendDesc(i, reg, SEND_MAX, 13, { id: k, session: 0 }));
    }
    await until(
      () => nic1.counters().global.link_backpressure > c0.link_backpressure,
      "the link pushes back",
      10_000,
    );

    const a = Owner.open(ctl1, "a");
    const local = Owner.open(ctl1, "local");
    owners.push(a, local);
    const sreg = a.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const t0 = performance.now();
    a.post(sendDesc(1, sreg, 100, 13, { id: 0, session: 0 }));
    a.post(sendDesc(2, sreg, 10, 1, local));
    const bound = UNREAD_MS + 4000;
    const evs = [
      await a.nextEvent(bound, "the stuck SEND's end"),
      await a.nextEvent(bound, "the local SEND"),
    ];
    const took = performance.now() - t0;
    evs.sort((x, y) => x.cookie - y.cookie);
    expectEvent(
      evs[0],
      EventType.SendDone,
      MxStatus.ENDPOINT_UNREACHABLE,
      "the SEND to the peer that reads nothing",
    );
    assert.equal(evs[0].reason, ErrorReason.Unreachable, "it says why");
    expectEvent(evs[1], EventType.SendDone, MxStatus.SUCCESS, "the local SEND behind it");
    expectEvent(await local.nextEvent(), EventType.Recv, MxStatus.SUCCESS, "the local endpoint got its SEND");
    // Only once the link had pushed back UNREAD_MS: a slow reader is given that long.
    assert.ok(took >= UNREAD_MS - 50 && took < bound, `the queue moved after ${took.toFixed(0)} ms`);

    // Every filler's SENDs ended too: on the wire (timed out), or refused by the link (failed with it).
    for (const o of owners.slice(0, FILLERS)) {
      for (let i = 0; i < SRC_CREDITS; i++) {
        const e = await o.nextEvent(bound, `filler ${o.id}'s SEND ${i}`);
        expectEvent(
          e,
          EventType.SendDone,
          MxStatus.ENDPOINT_UNREACHABLE,
          `filler ${o.id}'s SEND ${e.cookie}`,
        );
      }
    }
    const c1 = nic1.counters().global;
    assert.equal(c1.links_unread - c0.links_unread, 1, "the link was found unread, once");
    assert.equal(c1.links_silent, c0.links_silent, "not silent: the peer talked all along");
    assert.ok(c1.acks_dropped > c0.acks_dropped, "its chatter arrived");

    // Its frames do not end that: a while later, requests to it still fail at once.
    await sleep(WIRE_TIMEOUT_MS);
    const t1 = performance.now();
    a.post(sendDesc(3, sreg, 100, 13, { id: 0, session: 0 }));
    expectEvent(
      await a.nextEvent(UNREAD_MS, "a failure"),
      EventType.SendDone,
      MxStatus.ENDPOINT_UNREACHABLE,
      "a SEND to the unread peer",
    );
    assert.ok(performance.now() - t1 < UNREAD_MS - 500, "at once, not after another UNREAD_MS");
    assert.equal(nic1.counters().global.internal_errors, 0);
  } finally {
    clearInterval(chatter);
    for (const o of owners) o.close();
    await fake.detach(nic1);
  }
});

test("one endpoint's SENDs hold at most its share of a link's window: another endpoint's SEND to that host goes out at once", async () => {
  // The attacker posts SENDs to many endpoints of a peer that never acknowledges one (as
  // accomplices there that never consume would): more destinations than the window has
  // shares for, so only its own share can stop it. Before, it held all SEND_WINDOW slots and
  // the bystander's SEND waited until the link was found silent, then failed without going out.
  const fake = await FakePeer.start(13);
  try {
    await fake.attach(nic1);
    const a = Owner.open(ctl1, "attacker");
    const b = Owner.open(ctl1, "bystander");
    const areg = a.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const breg = b.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const c0 = nic1.counters().global;
    const dests = Math.ceil((SEND_WINDOW + 100) / DEST_CREDITS);
    // As many as its queue takes while the NIC drains it (all of them went out, before).
    let posted = 0;
    for (let i = 0; i < SEND_WINDOW + 100; i++) {
      let waited = 0;
      while (a.prod - Atomics.load(a.w, W_SQ_CONS) >= SQ_ENTRIES && waited < 300) {
        await sleep(5);
        waited += 5;
      }
      if (waited >= 300) break;
      a.post(sendDesc(i, areg, 10, 13, { id: 1 + (i % dests), session: 0 }));
      posted++;
    }
    await until(
      () => fake.framesOf(FrameType.Send).length >= SRC_CREDITS,
      "the attacker's share on the wire",
    );
    const at = await bystanderSend(fake, b, breg);
    assert.ok(at >= 0, `the bystander's SEND went out (the attacker had posted ${posted})`);
    assert.ok(at <= SRC_CREDITS, `${at} of the attacker's SENDs went before it`);
    assert.ok(nic1.counters().global.send_src_full > c0.send_src_full, "the share pushed back");
    a.close();
    b.close();
  } finally {
    await fake.detach(nic1);
  }
});

test("a domain's SENDs to one receiver take at most its share of that receiver's credits on the link: another domain's SEND to it goes out at once, and its traffic behind", async () => {
  // The receiver (a fake peer NIC) holds every SEND it gets (PENDING, as a busy receiver's NIC
  // holds a host's 24 for 5 s). The attacker's domain posts more SENDs to it than the
  // destination has credits, from two endpoints; then the bystander, another domain, posts a
  // SEND to the same receiver and, behind it in its queue, one to another endpoint there.
  // Before, the attacker held all 32 credits and the bystander's queue waited behind its first
  // SEND until the attacker's were given up (HOLD_MS after their deadline).
  const fake = await FakePeer.start(23);
  let keepalives: NodeJS.Timeout | undefined;
  try {
    await fake.attach(nic1);
    const a1 = Owner.open(ctl1, "attacker", 0, 91);
    const a2 = Owner.open(ctl1, "attacker", 0, 91);
    const b = Owner.open(ctl1, "bystander", 0, 92);
    const reg1 = a1.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const reg2 = a2.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const breg = b.register(new SharedArrayBuffer(4096), Access.LocalRead);
    keepalives = setInterval(() => holdEverySend(fake), WIRE_TIMEOUT_MS / 4);
    for (let i = 0; i < DEST_CREDITS + 8; i++)
      i % 2
        ? a2.post(sendDesc(i, reg2, 10, 23, { id: 5, session: 0 }))
        : a1.post(sendDesc(i, reg1, 10, 23, { id: 5, session: 0 }));
    await until(
      () => fake.framesOf(FrameType.Send).length === DEST_CREDITS - 1,
      "the attacker's domain has all the destination's credits but one",
    );
    b.post(sendDesc(2000, breg, 10, 23, { id: 5, session: 0 }));
    b.post(sendDesc(2001, breg, 10, 23, { id: 6, session: 0 }));
    const fromB = (f: Uint8Array) => getWord(f, F_SRC_ENDPOINT) === b.id;
    await until(
      () => fake.framesOf(FrameType.Send).filter(fromB).length === 2,
      "the bystander's two SENDs on the wire",
      3 * WIRE_TIMEOUT_MS,
    );
    // While every one of the attacker's is still held.
    assert.equal(a1.tryEvent(), null, "no attacker SEND ended");
    assert.equal(a2.tryEvent(), null, "no attacker SEND ended");
    const attackers = fake.framesOf(FrameType.Send).filter((f) => !fromB(f)).length;
    assert.ok(attackers <= DEST_CREDITS - 1, `${attackers} of the attacker's on the wire`);
    for (const o of [a1, a2, b]) o.close();
  } finally {
    clearInterval(keepalives);
    await fake.detach(nic1);
  }
});

test("a hostile peer that trickles its pull replies: the pulls end TIMEOUT by their deadline; a pull parked behind them holds no queue", async () => {
  // A peer NIC serving our pulls a byte at a time, often enough that none ever waits
  // WIRE_TIMEOUT_MS for progress: endpoint a takes its domain's share of the link's jobs
  // (alone on it: PULL_LINK_SHARE), then b, another domain, as many as leave free what it
  // holds (half the rest), then one more pull of a's is parked, and behind that in the same
  // queue a SEND to an endpoint of this very NIC.
  const LEN = 32 * 1024;
  const OUT_A = PULL_LINK_SHARE;
  const OUT_B = (PULL_JOBS_PER_LINK - OUT_A) / 2;
  const fake = await FakePeer.start(14);
  let trickle: NodeJS.Timeout | undefined;
  try {
    await fake.attach(nic1);
    const a = Owner.open(ctl1, "a");
    const b = Owner.open(ctl1, "b");
    const local = Owner.open(ctl1, "local");
    const mem = a.register(new SharedArrayBuffer(LEN + 4096), Access.LocalWrite | Access.LocalRead);
    const memB = b.register(new SharedArrayBuffer(LEN), Access.LocalWrite);
    const c0 = nic1.counters().global;
    const served = new Map<number, number>();
    const cancelled = new Set<number>();
    const dribble = () => {
      for (const r of fake.framesOf(FrameType.PullRequest)) {
        const id = getWord(r, F_COOKIE);
        if (getWord(r, F_STATUS) !== 0) cancelled.add(id);
        if (cancelled.has(id)) continue;
        const off = served.get(id) ?? 0;
        fake.send(
          FrameType.PullReply,
          1,
          {
            [F_SRC_ENDPOINT]: getWord(r, F_DEST_ENDPOINT),
            [F_SRC_SESSION]: getWord(r, F_DEST_SESSION),
            [F_DEST_ENDPOINT]: getWord(r, F_SRC_ENDPOINT),
            [F_DEST_SESSION]: getWord(r, F_SRC_SESSION),
            [F_COOKIE]: id,
            [F_PULL_OFFSET]: off,
            [F_PULL_LENGTH]: LEN,
          },
          new Uint8Array([off & 0xff]),
        );
        served.set(id, off + 1);
      }
    };
    trickle = setInterval(dribble, WIRE_TIMEOUT_MS / 6);
    const pull = (cookie: number, dst: RegisterRegionReply) =>
      pullDesc({
        cookie,
        nic: 14,
        src: { id: 0, session: 0 },
        region: { regionId: 1, key: 2 },
        dst,
        length: LEN,
      });
    const t0 = performance.now();
    for (let i = 0; i < OUT_A; i++) a.post(pull(i, mem));
    await until(() => fake.framesOf(FrameType.PullRequest).length === OUT_A, "a's share on the wire");
    for (let i = 0; i < OUT_B; i++) b.post(pull(100 + i, memB));
    await until(() => fake.framesOf(FrameType.PullRequest).length === OUT_A + OUT_B, "b's share on the wire");
    a.post(pull(1000, mem));
    a.post(sendDesc(2000, mem, 10, 1, local));

    // The SEND goes before any held pull ends: the pull ahead of it waits parked, not at the
    // head of the queue (where it held the SEND until the first pulls' deadlines).
    const first = await a.nextEvent(5000, "the SEND behind the parked pull");
    expectEvent(first, EventType.SendDone, MxStatus.SUCCESS, "the SEND behind the parked pull");
    assert.equal(first.cookie, 2000);
    expectEvent(await local.nextEvent(), EventType.Recv, MxStatus.SUCCESS, "the local endpoint got its SEND");
    assert.equal(fake.framesOf(FrameType.PullRequest).length, OUT_A + OUT_B, "the parked pull waits");

    const bound = pullDeadlineMs(LEN) + 3 * WIRE_TIMEOUT_MS;
    for (const [owner, base, out] of [
      [a, 0, OUT_A],
      [b, 100, OUT_B],
    ] as const) {
      const overdue = new Set<number>();
      while (overdue.size < out) {
        const e = await owner.nextEvent(bound - (performance.now() - t0), "a trickled pull's end");
        expectEvent(e, EventType.PullDone, MxStatus.TIMEOUT, `trickled pull ${e.cookie}`);
        assert.ok(e.cookie >= base && e.cookie < base + out, `pull ${e.cookie} was one of the first`);
        assert.ok(e.length > 0 && e.length < LEN, `pull ${e.cookie} made progress (${e.length} B)`);
        overdue.add(e.cookie);
      }
    }
    const took = performance.now() - t0;
    assert.ok(took >= pullDeadlineMs(LEN) - 100, `not before the deadline (${took.toFixed(0)} ms)`);
    // The parked pull went out once jobs freed, and ends the same way.
    const last = await a.nextEvent(pullDeadlineMs(LEN) + 2 * WIRE_TIMEOUT_MS, "the last pull's end");
    expectEvent(last, EventType.PullDone, MxStatus.TIMEOUT, "the pull that waited");
    assert.equal(last.cookie, 1000);
    const c1 = nic1.counters().global;
    assert.equal(c1.pulls_overdue - c0.pulls_overdue, OUT_A + OUT_B + 1, "counted");
    assert.equal(c1.pulls_parked - c0.pulls_parked, 1, "one parked");
    assert.equal(c1.pull_timeouts, c0.pull_timeouts, "not timeouts: the peer made progress all along");
    assert.equal(c1.links_silent, c0.links_silent);
    assert.equal(c1.internal_errors, 0);
    // Each was cancelled at the peer.
    await until(() => cancelled.size === OUT_A + OUT_B + 1, "a cancel for every overdue pull");
    a.close();
    b.close();
    local.close();
  } finally {
    clearInterval(trickle);
    await fake.detach(nic1);
  }
});

/** An endpoint named `name` opened on NIC `n`, which runs in this thread (control() answers at once). */
function inThreadOwner(n: Nic, name: string): Owner {
  const ctl = {
    call: (req: NicControlRequest) => n.control(req),
  } as unknown as SyncCallClient<NicControlRequest>;
  return new Owner(
    ctl,
    n.control({ op: "open_endpoint", owner: name, endpointId: ANY_ENDPOINT, key: 0 }) as OpenEndpointReply,
  );
}

/**
 * A peer in this thread that takes every frame and serves none of our pulls: it keeps who
 * asked and each request's id (PULL_REQUESTs, not cancels); a test hands the NIC frames and
 * pieces of pull data through the callbacks the NIC set.
 */
class HoldingLink implements Link {
  /** The requesting endpoint of each PULL_REQUEST, in order, and its id. */
  readonly requests: number[] = [];
  readonly ids: number[] = [];
  frameCb: ((frame: Uint8Array) => void) | null = null;
  pieceCb: ((head: Uint8Array, piece: Uint8Array, at: number, total: number) => void) | null = null;
  constructor(readonly peerNic: number) {}
  send(frame: Uint8Array): boolean {
    if ((getWord(frame, 0) & 0xff) === FrameType.PullRequest && getWord(frame, F_STATUS) === 0) {
      this.requests.push(getWord(frame, F_SRC_ENDPOINT));
      this.ids.push(getWord(frame, F_COOKIE));
    }
    return true;
  }
  asked(o: Owner): number {
    return this.requests.filter((ep) => ep === o.id).length;
  }
  onFrame(cb: (frame: Uint8Array) => void): void {
    this.frameCb = cb;
  }
  onPullData(cb: (head: Uint8Array, piece: Uint8Array, at: number, total: number) => void): void {
    this.pieceCb = cb;
  }
  onWritable(): void {}
  close(): void {}
}

/** A NIC in this thread (control() and poll() by hand) whose one link is a HoldingLink to `peer`. */
function nicBesideHoldingPeer(
  nicId: number,
  peer: number,
  maxEndpoints: number,
): { n: Nic; link: HoldingLink } {
  const n = new Nic({ nicId, maxEndpoints });
  const link = new HoldingLink(peer);
  n.attachLink(link);
  return { n, link };
}

test("domains flooding one host with remote PULLs leave a job free: another domain's pull from that host is asked for at once, not parked behind theirs", () => {
  // The share was half a link's PULL_JOBS_PER_LINK per domain whatever the others held: two
  // domains (two ranks of one job) held them all, and every other domain's pull from that
  // host waited parked until one of theirs ended (16 MiB messages: a second). The NIC runs in
  // this thread (control() and poll(): counts, no timing); the peer answers no pull, so none
  // ends. Each endpoint is a domain of its own (no QoS group).
  const PEER = 61;
  const { n, link } = nicBesideHoldingPeer(60, PEER, 8);
  try {
    const open = (name: string) => inThreadOwner(n, name);
    // Small pulls (the peer serves none anyway): the NIC's round admits many at once (qos.ts).
    const LEN = 4096;
    const far = { id: 0, session: 1 };
    /** `o` posts `count` pulls of LEN from the peer, and the NIC takes all of them. */
    const pulls = (o: Owner, count: number, base: number) => {
      const dst = o.register(new SharedArrayBuffer(LEN), Access.LocalWrite);
      for (let i = 0; i < count; i++)
        o.post(
          pullDesc({
            cookie: base + i,
            nic: PEER,
            src: far,
            region: { regionId: 0, key: 1 },
            dst,
            length: LEN,
          }),
        );
      for (let k = 0; k < 1000 && Atomics.load(o.w, W_SQ_CONS) !== o.prod; k++) n.poll();
      n.poll();
      assert.equal(Atomics.load(o.w, W_SQ_CONS), o.prod, `the NIC took endpoint ${o.id}'s pulls`);
    };
    const parked = () => new Float64Array(n.countersBuffer)[NicCounter.pulls_parked];

    // Two hostile domains, one after the other, each posting more pulls than the link has jobs.
    const h1 = open("hostile 1");
    const h2 = open("hostile 2");
    pulls(h1, PULL_JOBS_PER_LINK, 1000);
    assert.equal(link.asked(h1), PULL_LINK_SHARE, "a domain alone on the link holds PULL_LINK_SHARE");
    pulls(h2, PULL_JOBS_PER_LINK, 2000);
    assert.ok(link.asked(h2) > 0, "the second domain got jobs too");
    const held = link.requests.length;

    // Another domain's pull from the same host is asked for at once.
    const v = open("victim");
    const p0 = parked();
    pulls(v, 1, 1);
    assert.equal(
      link.asked(v),
      1,
      `the victim's pull was asked for (${held} hostile pulls out, ${parked() - p0} parked)`,
    );
    assert.equal(parked(), p0, "and not parked");
    assert.equal(link.requests.length, held + 1);
    assert.ok(held < PULL_JOBS_PER_LINK, `the two held ${held} of the link's ${PULL_JOBS_PER_LINK} jobs`);

    // Two more flooding domains in turn (a cap of PULL_JOBS_PER_LINK / (domains + 1) counted on
    // domains let the third fill the link), and yet another domain's pull still goes at once.
    const h3 = open("hostile 3");
    const h4 = open("hostile 4");
    pulls(h3, PULL_JOBS_PER_LINK, 3000);
    pulls(h4, PULL_JOBS_PER_LINK, 4000);
    assert.ok(link.asked(h3) > 0 && link.asked(h4) > 0, "the later domains got jobs too");
    const v2 = open("victim 2");
    pulls(v2, 1, 1);
    assert.equal(
      link.asked(v2),
      1,
      `the second victim's pull was asked for (${link.requests.length - 1} others out)`,
    );
    assert.ok(link.requests.length <= PULL_JOBS_PER_LINK);
    for (const o of [h1, h2, h3, h4, v, v2]) assert.equal(o.tryEvent(), null, "no pull ended");

    // A hostile domain goes: its pulls end, and the jobs they free go to the parked pulls.
    const before2 = link.asked(h2);
    h1.close();
    n.poll();
    assert.ok(link.asked(h2) > before2, "the parked pulls were asked for once jobs freed");
  } finally {
    n.stop();
  }
});

test("pull-right guessing is throttled per requester and right owner: after PULL_FREE_REFUSALS refusals its pulls of that owner's rights are refused unexamined, from a peer NIC or a local endpoint; others are served", async () => {
  const owner = Owner.open(ctl1, "owner");
  const src = owner.register(new SharedArrayBuffer(4096), Access.RemoteRead);
  const EXTRA = 8;
  // A peer NIC (it holds the cluster key) asking at wire speed, as endpoint 3 of its NIC.
  const fake = await FakePeer.start(15);
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake's link");
    const right = owner.right(src);
    const c0 = nic1.counters().global;
    const ask = (cookie: number, requester: number, key: number) =>
      fake.send(FrameType.PullRequest, 1, {
        [F_SRC_ENDPOINT]: requester,
        [F_SRC_SESSION]: 5,
        [F_DEST_ENDPOINT]: owner.id,
        [F_DEST_SESSION]: owner.session,
        [F_COOKIE]: cookie,
        [F_PULL_RIGHT]: right.regionId,
        [F_PULL_KEY]: key,
        [F_PULL_OFFSET]: 0,
        [F_PULL_LENGTH]: 100,
      });
    const GUESSES = PULL_FREE_REFUSALS + EXTRA;
    for (let i = 0; i < GUESSES; i++) ask(i, 3, (right.key ^ (i + 1)) >>> 0 || 1);
    // The right key, from the guesser: no answer may tell it apart from a wrong one.
    ask(5000, 3, right.key);
    // An endpoint id no NIC can have: refused, unexamined.
    ask(6000, 1000, right.key);
    // Another requester of that NIC, with the right key: served (the right is still armed).
    ask(7000, 4, right.key);
    // The locked-out requester, for another endpoint's right: served (records are per
    // requester and right owner, pull-throttle.ts pullRecordId).
    const other = Owner.open(ctl1, "other");
    const oRight = other.right(other.register(new SharedArrayBuffer(4096), Access.RemoteRead));
    fake.send(FrameType.PullRequest, 1, {
      [F_SRC_ENDPOINT]: 3,
      [F_SRC_SESSION]: 5,
      [F_DEST_ENDPOINT]: other.id,
      [F_DEST_SESSION]: other.session,
      [F_COOKIE]: 8000,
      [F_PULL_RIGHT]: oRight.regionId,
      [F_PULL_KEY]: oRight.key,
      [F_PULL_OFFSET]: 0,
      [F_PULL_LENGTH]: 100,
    });
    const replies = () => fake.framesOf(FrameType.PullReply);
    await until(() => replies().length === GUESSES + 4, "every PULL_REQUEST answered");
    const byCookie = new Map(replies().map((f) => [getWord(f, F_COOKIE), f]));
    for (let i = 0; i < GUESSES; i++) {
      const st = getWord(byCookie.get(i)!, F_STATUS);
      const want = i < PULL_FREE_REFUSALS ? MxStatus.BAD_KEY : MxStatus.REJECTED;
      assert.equal(st, want, `guess ${i}: ${mxStatusName(st)}, expected ${mxStatusName(want)}`);
    }
    assert.equal(getWord(byCookie.get(5000)!, F_STATUS), MxStatus.REJECTED, "the guesser's right key");
    assert.equal(getWord(byCookie.get(6000)!, F_STATUS), MxStatus.BAD_ENDPOINT, "an impossible requester");
    const served = byCookie.get(7000)!;
    assert.deepEqual([getWord(served, F_STATUS), getWord(served, F_LENGTH)], [MxStatus.SUCCESS, 100]);
    const otherServed = byCookie.get(8000)!;
    assert.deepEqual(
      [getWord(otherServed, F_STATUS), getWord(otherServed, F_LENGTH)],
      [MxStatus.SUCCESS, 100],
      "the locked-out requester, for another owner's right",
    );
    other.close();
    const c1 = nic1.counters().global;
    assert.equal(c1.pull_rights_refused - c0.pull_rights_refused, PULL_FREE_REFUSALS, "examined");
    assert.equal(c1.pulls_throttled - c0.pulls_throttled, EXTRA + 1, "counted");
    assert.equal(c1.frames_bad - c0.frames_bad, 1);
    assert.equal(c1.internal_errors, 0);
  } finally {
    await fake.detach(nic1);
  }

  // A local endpoint guessing through its own PULL descriptors (a high id of its own: a lockout
  // outlives its owner, and later tests open endpoints from the lowest id up).
  const guesser = new Owner(
    ctl1,
    ctl1.call<OpenEndpointReply>({ op: "open_endpoint", owner: "guesser", endpointId: 29, key: 0 }),
  );
  const honest = Owner.open(ctl1, "honest");
  const gDst = guesser.register(new SharedArrayBuffer(4096), Access.LocalWrite);
  const hDst = honest.register(new SharedArrayBuffer(4096), Access.LocalWrite);
  const right = owner.right(src);
  const local = (cookie: number, dst: RegisterRegionReply, key: number) => ({
    [D_OPCODE]: Opcode.Pull | (DFLAG_EXPOSURE << 16),
    [D_COOKIE]: cookie,
    [D_SRC_REGION]: right.regionId,
    [D_SRC_KEY]: key,
    [D_DST_REGION]: dst.regionId,
    [D_LENGTH]: 100,
    [D_DEST_ENDPOINT]: owner.id,
    [D_DEST_SESSION]: owner.session,
  });
  const c2 = nic1.counters().global;
  const events = async (n: number): Promise<Ev[]> => {
    const out: Ev[] = [];
    while (out.length < n) out.push(await guesser.nextEvent(3000, "a guess's answer"));
    return out;
  };
  const FIRST = PULL_FREE_REFUSALS - 16;
  for (let i = 0; i < FIRST; i++) guesser.post(local(i, gDst, (right.key ^ (i + 1)) >>> 0 || 1));
  const answers = await events(FIRST);
  for (let i = FIRST; i < PULL_FREE_REFUSALS + EXTRA; i++)
    guesser.post(local(i, gDst, (right.key ^ (i + 1)) >>> 0 || 1));
  guesser.post(local(5000, gDst, right.key));
  answers.push(...(await events(PULL_FREE_REFUSALS + EXTRA - FIRST + 1)));
  for (const [i, e] of answers.entries()) {
    const throttled = i >= PULL_FREE_REFUSALS;
    assert.equal(e.type, EventType.Error, `local guess ${i}`);
    assert.equal(e.cookie, i < PULL_FREE_REFUSALS + EXTRA ? i : 5000);
    assert.equal(e.status, throttled ? MxStatus.REJECTED : MxStatus.BAD_KEY, `local guess ${i}`);
    assert.equal(e.reason, throttled ? ErrorReason.Throttled : ErrorReason.BadKey, `local guess ${i}`);
  }
  // Another endpoint of this NIC is served under the very right the guesser held the key of.
  honest.post(local(1, hDst, right.key));
  expectEvent(await honest.nextEvent(), EventType.PullDone, MxStatus.SUCCESS, "the honest local puller");
  const c3 = nic1.counters().global;
  assert.equal(c3.pull_rights_refused - c2.pull_rights_refused, PULL_FREE_REFUSALS);
  // Stopped by the guesser's own NIC, which counts what it was refused (own-refusals.ts).
  assert.equal(c3.own_requests_throttled - c2.own_requests_throttled, EXTRA + 1);
  // Locked out of that owner's rights only. A sender decides which rights its receiver pulls
  // (its rendezvous names them): with one record per requester, a hostile sender that sent
  // bogus rights got its receiver locked out of every endpoint's rights on the NIC, honest
  // senders' included. A third endpoint's right, with its key, is served.
  const third = Owner.open(ctl1, "third");
  const tRight = third.right(third.register(new SharedArrayBuffer(4096), Access.RemoteRead));
  guesser.post({
    ...local(6000, gDst, tRight.key),
    [D_SRC_REGION]: tRight.regionId,
    [D_DEST_ENDPOINT]: third.id,
    [D_DEST_SESSION]: third.session,
  });
  expectEvent(
    await guesser.nextEvent(3000, "the third endpoint's right"),
    EventType.PullDone,
    MxStatus.SUCCESS,
    "a requester locked out of one owner's rights, pulling another's",
  );
  for (const o of [owner, guesser, honest, third]) o.close();
});

test("guessing an endpoint's session with raw PULLs is throttled like guessing a key: the right session is then refused too", async () => {
  const owner = Owner.open(ctl1, "owner");
  const src = owner.register(new SharedArrayBuffer(4096), Access.RemoteRead);
  const EXTRA = 8;
  const fake = await FakePeer.start(16);
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake's link");
    const right = owner.right(src);
    const c0 = nic1.counters().global;
    const ask = (cookie: number, requester: number, session: number) =>
      fake.send(FrameType.PullRequest, 1, {
        [F_SRC_ENDPOINT]: requester,
        [F_SRC_SESSION]: 5,
        [F_DEST_ENDPOINT]: owner.id,
        [F_DEST_SESSION]: session,
        [F_COOKIE]: cookie,
        [F_PULL_RIGHT]: right.regionId,
        [F_PULL_KEY]: right.key,
        [F_PULL_OFFSET]: 0,
        [F_PULL_LENGTH]: 100,
      });
    const GUESSES = PULL_FREE_REFUSALS + EXTRA;
    for (let i = 0; i < GUESSES; i++) ask(i, 3, (owner.session ^ (i + 1)) >>> 0 || 1);
    // The right session (and the right key), from the guesser: refused like a wrong one.
    ask(5000, 3, owner.session);
    // Another requester of that NIC naming it: served.
    ask(7000, 4, owner.session);
    const replies = () => fake.framesOf(FrameType.PullReply);
    await until(() => replies().length === GUESSES + 2, "every PULL_REQUEST answered");
    const byCookie = new Map(replies().map((f) => [getWord(f, F_COOKIE), f]));
    for (let i = 0; i < GUESSES; i++) {
      const st = getWord(byCookie.get(i)!, F_STATUS);
      const want = i < PULL_FREE_REFUSALS ? MxStatus.BAD_SESSION : MxStatus.REJECTED;
      assert.equal(st, want, `guess ${i}: ${mxStatusName(st)}, expected ${mxStatusName(want)}`);
    }
    assert.equal(getWord(byCookie.get(5000)!, F_STATUS), MxStatus.REJECTED, "the guesser's right session");
    const served = byCookie.get(7000)!;
    assert.deepEqual([getWord(served, F_STATUS), getWord(served, F_LENGTH)], [MxStatus.SUCCESS, 100]);
    const c1 = nic1.counters().global;
    assert.equal(c1.pulls_throttled - c0.pulls_throttled, EXTRA + 1, "counted");
    assert.equal(c1.internal_errors, 0);
  } finally {
    await fake.detach(nic1);
    owner.close();
  }
});

test("garbage from a peer (unknown ids, bad offsets, wrong lengths, bad Ethernet frames) is counted; a well-formed peer is served", async () => {
  // Served in three replies: two full ones and a rest.
  const PULL_LEN = 2 * SEND_MAX + 4464;
  const fake = await FakePeer.start(10);
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake's link");
    const a = Owner.open(ctl1, "a", 7);
    const mem = new SharedArrayBuffer(1 << 20);
    const dst = a.register(mem, Access.LocalWrite | Access.RemoteRead);
    const c0 = nic1.counters().global;

    // A pull the fake will serve: learn its request id.
    const { req, id, reply } = await pullFromFake(fake, a, dst, 40000);
    assert.deepEqual(
      [
        getWord(req, F_SRC_ENDPOINT),
        getWord(req, F_SRC_SESSION),
        getWord(req, F_DEST_ENDPOINT),
        getWord(req, F_DEST_SESSION),
      ],
      [a.id, a.session, 3, 33],
    );
    assert.deepEqual(
      [getWord(req, 8), getWord(req, 9), getWord(req, F_AUX0), getWord(req, F_AUX1)],
      [5, 6, 0, 40000],
    );
    const data = new Uint8Array(40000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
    const garbage: [string, () => void][] = [
      ["unknown id", () => reply({ [F_COOKIE]: id ^ 0x100 }, data.subarray(0, 100))],
      ["wrong endpoint", () => reply({ [F_DEST_ENDPOINT]: a.id + 1 }, data.subarray(0, 100))],
      ["wrong session", () => reply({ [F_DEST_SESSION]: a.session ^ 1 }, data.subarray(0, 100))],
      ["wrong total", () => reply({ [F_AUX1]: 40001 }, data.subarray(0, 100))],
      ["offset ahead", () => reply({ [F_AUX0]: 100 }, data.subarray(100, 200))],
      ["offset huge", () => reply({ [F_AUX0]: 0xfffffff0 }, data.subarray(0, 100))],
      ["empty reply for a non-empty pull", () => reply({})],
      ["error reply with a payload", () => reply({ [F_STATUS]: MxStatus.BAD_KEY }, data.subarray(0, 10))],
    ];
    for (const [, g] of garbage) g();
    // Connect replies and acks nobody asked for, Ethernet frames of impossible lengths.
    fake.send(FrameType.ConnectReply, 1, {
      [F_COOKIE]: 12345,
      [F_DEST_ENDPOINT]: a.id,
      [F_DEST_SESSION]: a.session,
    });
    fake.send(FrameType.SendAck, 1, { [F_COOKIE]: 1, [F_DEST_ENDPOINT]: a.id, [F_DEST_SESSION]: a.session });
    fake.send(FrameType.Ethernet, 1, {}, new Uint8Array(5));
    // Frames for another NIC, or claiming another source.
    fake.send(FrameType.PullReply, 2, { [F_COOKIE]: id });
    const spoof = new Uint8Array(FRAME_HEADER_BYTES);
    initFrame(spoof, FrameType.Send, 0);
    setWord(spoof, F_SRC_NIC, 2);
    setWord(spoof, F_DEST_NIC, 1);
    fake.link.send(spoof);
    await until(
      () => nic1.counters().global.pull_replies_bad - c0.pull_replies_bad === garbage.length,
      "the garbage counted",
    );
    // Now the real thing, in two replies; then the PULL_DONE.
    reply({ [F_AUX0]: 0 }, data.subarray(0, 32768));
    reply({ [F_AUX0]: 32768 }, data.subarray(32768));
    const e = await a.nextEvent();
    expectEvent(e, EventType.PullDone, MxStatus.SUCCESS, "served by the fake");
    assert.deepEqual(new Uint8Array(mem, 0, 40000), data);
    // A late duplicate is just counted.
    reply({ [F_AUX0]: 0 }, data.subarray(0, 100));
    const c1 = await (async () => {
      await until(
        () => nic1.counters().global.pull_replies_bad - c0.pull_replies_bad === garbage.length + 1,
        "late reply",
      );
      return nic1.counters().global;
    })();
    assert.equal(c1.connect_replies_unknown - c0.connect_replies_unknown, 1);
    assert.equal(c1.acks_dropped - c0.acks_dropped, 1);
    assert.equal(c1.frames_bad - c0.frames_bad, 3, "bad Ethernet length, wrong destination, spoofed source");

    // A CONNECT and a PULL request from the fake: NIC 1 answers as a peer.
    fake.send(FrameType.ConnectRequest, 1, {
      [F_SRC_ENDPOINT]: 4,
      [F_SRC_SESSION]: 44,
      [F_DEST_ENDPOINT]: a.id,
      [F_COOKIE]: 77,
      [F_AUX0]: 7,
    });
    fake.send(FrameType.ConnectRequest, 1, {
      [F_SRC_ENDPOINT]: 4,
      [F_DEST_ENDPOINT]: a.id,
      [F_COOKIE]: 78,
      [F_AUX0]: 8,
    });
    // a armed a pull right for the fake (as it would for a rendezvous to it): index and key.
    const right = a.right(dst);
    const other = a.right(dst);
    fake.send(FrameType.PullRequest, 1, {
      [F_SRC_ENDPOINT]: 4,
      [F_SRC_SESSION]: 44,
      [F_DEST_ENDPOINT]: a.id,
      [F_DEST_SESSION]: a.session,
      [F_COOKIE]: 79,
      8: right.regionId,
      9: right.key,
      [F_AUX0]: 10,
      [F_AUX1]: PULL_LEN,
    });
    fake.send(FrameType.PullRequest, 1, {
      [F_DEST_ENDPOINT]: a.id,
      [F_DEST_SESSION]: a.session,
      [F_COOKIE]: 80,
      8: other.regionId,
      9: other.key ^ 1,
      [F_AUX1]: 1,
    });
    await until(() => fake.framesOf(FrameType.ConnectReply).length === 2, "two connect replies");
    const [r1, r2] = fake.framesOf(FrameType.ConnectReply);
    assert.deepEqual(
      [
        getWord(r1, F_COOKIE),
        getWord(r1, F_STATUS),
        getWord(r1, F_SRC_ENDPOINT),
        getWord(r1, F_SRC_SESSION),
        getWord(r1, F_DEST_ENDPOINT),
        getWord(r1, F_DEST_SESSION),
      ],
      [77, MxStatus.SUCCESS, a.id, a.session, 4, 44],
    );
    assert.deepEqual(
      [getWord(r2, F_COOKIE), getWord(r2, F_STATUS), getWord(r2, F_SRC_SESSION)],
      [78, MxStatus.BAD_KEY, 0],
    );
    await until(() => fake.framesOf(FrameType.PullReply).length === 4, "three data replies and a refusal");
    const replies = fake.framesOf(FrameType.PullReply);
    const of79 = replies.filter((f) => getWord(f, F_COOKIE) === 79);
    assert.deepEqual(
      of79.map((f) => [getWord(f, F_AUX0), getWord(f, F_LENGTH), getWord(f, F_AUX1), getWord(f, F_STATUS)]),
      [
        [0, SEND_MAX, PULL_LEN, 0],
        [SEND_MAX, SEND_MAX, PULL_LEN, 0],
        [2 * SEND_MAX, PULL_LEN - 2 * SEND_MAX, PULL_LEN, 0],
      ],
    );
    const got = Buffer.concat(of79.map((f) => f.subarray(FRAME_HEADER_BYTES)));
    assert.ok(got.equals(Buffer.from(new Uint8Array(mem, 10, PULL_LEN))));
    const refused = replies.find((f) => getWord(f, F_COOKIE) === 80)!;
    assert.deepEqual([getWord(refused, F_STATUS), getWord(refused, F_LENGTH)], [MxStatus.BAD_KEY, 0]);
    assert.equal(nic1.counters().global.internal_errors, 0);
    assert.equal(nic1.counters().global.frames_unknown, 0);
    a.close();
  } finally {
    await fake.detach(nic1);
  }
});

// ---- the Ethernet port ----------------------------------------------------------------------------

function etherFrame(dst: number[], src: number[], type: number, payload: number, tag: number): Uint8Array {
  const f = new Uint8Array(14 + payload);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  for (let i = 0; i < payload; i++) f[14 + i] = (i + tag) & 0xff;
  if (payload >= 4) new DataView(f.buffer).setUint32(14, tag);
  return f;
}

const tagOf = (f: Uint8Array) => new DataView(f.buffer, f.byteOffset, f.byteLength).getUint32(14);
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const mac = (n: number) => [0x02, 0, 0, 0, 0, n];

function port(ctl: SyncCallClient<NicControlRequest>): EtherPortClient {
  return new EtherPortClient(ctl.call<OpenEtherPortReply>({ op: "open_ether_port" }).port);
}

function drain(p: EtherPortClient): number[] {
  const tags: number[] = [];
  p.poll((f) => tags.push(tagOf(f)));
  return tags;
}

test("Ethernet ports: frames between two NICs over TCP, flooding to two links, learning, drops and bad frames counted", async () => {
  // NIC 6 listens; NICs 1 and 7 connect to it (NIC 1 also keeps its link to NIC 2, which has no port).
  const nic6 = await NicDevice.start({ nicId: 6 });
  const nic7 = await NicDevice.start({ nicId: 7 });
  extra.push(nic6, nic7);
  const ctl6 = control(nic6);
  const ctl7 = control(nic7);
  const p6 = await freePort();
  await nic6.attachLink({ kind: "tcp-listen", host: HOST, port: p6, key: LINK_KEY });
  await nic1.attachLink({ kind: "tcp", host: HOST, port: p6, key: LINK_KEY });
  await nic7.attachLink({ kind: "tcp", host: HOST, port: p6, key: LINK_KEY });
  await until(() => info(ctl6).links.length === 2, "NIC 6 has two links");
  const e1 = port(ctl1);
  const e6 = port(ctl6);
  const e7 = port(ctl7);
  const again = ctl6.call<OpenEtherPortReply>({ op: "open_ether_port" }).port;
  // One port per NIC: the second open maps the same memory (a new SharedArrayBuffer object).
  const probe = 127; // an unused word of the control block
  new Int32Array(again)[probe] = 0x5a5a;
  assert.equal(new Int32Array(e6.buffer)[probe], 0x5a5a, "one port per NIC");
  new Int32Array(again)[probe] = 0;
  assert.equal(info(ctl6).etherPort, true);
  const c6 = nic6.counters().global;

  // A broadcast from NIC 6 floods both links.
  assert.ok(e6.send(etherFrame(BCAST, mac(6), 0x0806, 46, 1)));
  await until(() => e1.rxPending && e7.rxPending, "the broadcast on both");
  assert.deepEqual(drain(e1), [1]);
  assert.deepEqual(drain(e7), [1]);
  // NIC 1 answers (it learned mac(6) from the broadcast): NIC 6 learns mac(1) is behind NIC 1.
  assert.ok(e1.send(etherFrame(mac(6), mac(1), 0x0800, 100, 2)));
  await until(() => e6.rxPending, "NIC 1's frame");
  assert.deepEqual(drain(e6), [2]);
  // Unicast to the learned address: NIC 1 only. To an unknown one: both.
  assert.ok(e6.send(etherFrame(mac(1), mac(6), 0x0800, 1500, 3)));
  assert.ok(e6.send(etherFrame(mac(99), mac(6), 0x0800, 60, 4)));
  await until(
    () => nic7.counters().global.ether_rx === 2 && nic1.counters().global.ether_rx >= 3,
    "delivery",
  );
  assert.deepEqual(drain(e1), [3, 4]);
  assert.deepEqual(drain(e7), [4], "NIC 7 did not get the frame for mac(1)");
  const c6b = nic6.counters().global;
  assert.equal(c6b.ether_tx - c6.ether_tx, 3);
  assert.equal(c6b.ether_flooded - c6.ether_flooded, 2);

  // A waiting driver is woken by the interrupt.
  const waiting = e7.waitAsync(3000);
  const t0 = performance.now();
  const seen1 = nic1.counters().global.ether_rx + nic1.counters().global.ether_dropped;
  assert.ok(e6.send(etherFrame(BCAST, mac(6), 0x0806, ETHER_MAX_FRAME - 14, 5)), "a jumbo frame");
  await waiting;
  // The broadcast reaches NIC 1 too: let it land before NIC 1's counts are taken below.
  await until(
    () => nic1.counters().global.ether_rx + nic1.counters().global.ether_dropped > seen1,
    "the jumbo broadcast at NIC 1",
  );
  assert.ok(performance.now() - t0 < 2500, "woken before the timeout");
  let jumbo = 0;
  e7.poll((f) => {
    jumbo = f.length;
  });
  assert.equal(jumbo, ETHER_MAX_FRAME);
  drain(e1);

  // NIC 1's driver does not poll: its RX ring fills and the rest is dropped, counted.
  const d1 = nic1.counters().global.ether_dropped;
  const rx0 = nic1.counters().global.ether_rx;
  const N = 200;
  let sent = 0;
  while (sent < N) {
    if (e6.send(etherFrame(mac(1), mac(6), 0x0800, 9000, 1000 + sent))) sent++;
    else await e6.waitAsync(100);
  }
  await until(
    () => nic1.counters().global.ether_rx - rx0 + nic1.counters().global.ether_dropped - d1 === N,
    "all accounted",
    // 1.8 MB through two NIC threads and a socket: generous on a loaded 2-core machine.
    20_000,
  );
  const dropped = nic1.counters().global.ether_dropped - d1;
  assert.ok(dropped > 0, "a full ring drops");
  assert.equal(e1.nicStats.rxDropped, dropped);
  const tags = drain(e1);
  assert.equal(tags.length, N - dropped);
  assert.deepEqual(
    tags,
    tags.slice().sort((x, y) => x - y),
    "in order",
  );

  // Bad records from the driver: too short, too long, then garbage indices.
  const raw = new Int32Array(e6.buffer);
  const u32 = new Uint32Array(e6.buffer);
  const bytes = new Uint8Array(e6.buffer);
  const bad0 = nic6.counters().global.ether_bad;
  let head = Atomics.load(raw, P_TX_HEAD);
  for (const len of [5, 13, 9019, 20000]) {
    const moved = ringPut(
      bytes,
      u32,
      PORT_TX_OFFSET,
      head,
      Atomics.load(raw, P_TX_TAIL),
      new Uint8Array(len),
      0,
      len,
    );
    assert.ok(moved > 0);
    head = (head + moved) | 0;
  }
  Atomics.store(raw, P_TX_HEAD, head);
  Atomics.notify(raw, P_TX_HEAD);
  await until(() => nic6.counters().global.ether_bad - bad0 === 4, "four bad lengths");
  // A head more than a ring ahead: nothing to parse, resynchronise.
  Atomics.store(raw, P_TX_HEAD, (head + (1 << 20) + 5) | 0);
  Atomics.notify(raw, P_TX_HEAD);
  await until(() => nic6.counters().global.ether_bad - bad0 === 5, "garbage indices");
  assert.equal(e6.nicStats.txBad, 5);
  // The client's view is stale now: a new one carries on from the resynchronised ring.
  const e6b = new EtherPortClient(e6.buffer);
  assert.ok(e6b.send(etherFrame(BCAST, mac(6), 0x0806, 46, 6)));
  await until(() => e7.rxPending, "after the resync");
  assert.deepEqual(drain(e7), [6]);
  assert.equal(e6b.send(new Uint8Array(3)), true);
  assert.equal(e6b.counters.txBad, 1, "the client drops a bad length itself");
  for (const n of [nic1, nic6, nic7]) assert.equal(n.counters().global.internal_errors, 0);

  // A frame from a link to a NIC whose port is not open is dropped (NIC 2), counted.
  const nd2 = nic2.counters().global.ether_dropped;
  assert.ok(e1.send(etherFrame(BCAST, mac(1), 0x0806, 46, 7)));
  await until(
    () => nic2.counters().global.ether_dropped === nd2 + 1 && e6.rxPending,
    "flooded to NICs 2 and 6",
  );
  assert.deepEqual(drain(e6), [7]);
  // A port with no link drops what its driver sends, counted.
  await nic7.detachLink(6);
  await until(() => info(ctl6).links.length === 1, "NIC 6 saw the detach");
  const nd = nic7.counters().global.ether_dropped;
  assert.ok(e7.send(etherFrame(BCAST, mac(7), 0x0806, 46, 8)));
  await until(() => nic7.counters().global.ether_dropped === nd + 1, "no link: dropped");
  assert.equal(e7.nicStats.txDropped, 1);
  await nic1.detachLink(6);
  await nic7.stop();
  await nic6.stop();
});

test("MX over Ethernet goes to the link of the NIC its header names, whatever its MAC; never flooded", async () => {
  // A split-path guest gave frames for one host a broadcast MAC: netback sends such a frame to
  // the uplink (its header names another NIC) and the NIC flooded it to every linked host,
  // past the bridge's storm control, ~4.5× a guest's flood budget.
  const [a, b, c] = await Promise.all([16, 17, 18].map((nicId) => NicDevice.start({ nicId })));
  extra.push(a, b, c);
  const [ctlA, ctlB, ctlC] = [a, b, c].map(control);
  const pa = await freePort();
  await a.attachLink({ kind: "tcp-listen", host: HOST, port: pa, key: LINK_KEY });
  await b.attachLink({ kind: "tcp", host: HOST, port: pa, key: LINK_KEY });
  await c.attachLink({ kind: "tcp", host: HOST, port: pa, key: LINK_KEY });
  await until(() => info(ctlA).links.length === 2, "NIC 16 has two links");
  const [ea, eb, ec] = [ctlA, ctlB, ctlC].map(port);
  const mxFor = (nic: number, tag: number) => {
    const f = etherFrame(BCAST, mac(16), MXOE_ETHERTYPE, MXOE_HEADER_BYTES + 16, tag);
    new DataView(f.buffer).setUint32(ETH_HEADER_BYTES + 4 * MxoeWord.dstNic, nic, true);
    return f;
  };
  const a0 = a.counters().global;
  assert.ok(ea.send(mxFor(17, 1)), "for NIC 17");
  assert.ok(ea.send(mxFor(99, 2)), "for a NIC it has no link to");
  // An ordinary broadcast after them: NIC 18 gets it, and with it all it was going to get.
  assert.ok(ea.send(etherFrame(BCAST, mac(16), 0x0806, 46, 3)));
  await until(() => eb.rxPending && ec.rxPending, "the broadcast on both links");
  await until(() => b.counters().global.ether_rx >= 2, "NIC 17's frames");
  assert.deepEqual(drain(eb), [1, 3]);
  assert.deepEqual(drain(ec), [3], "NIC 18 got none of the MX frames");
  const a1 = a.counters().global;
  assert.equal(a1.ether_flooded - a0.ether_flooded, 1, "only the ordinary broadcast was flooded");
  assert.equal(a1.ether_dropped - a0.ether_dropped, 1, "the frame for NIC 99 was dropped");
});

// ---- one NIC -------------------------------------------------------------------------------------

test("remote PULL and CONNECT aimed at this NIC: directly without a loopback link, as frames with one", async () => {
  const nic = await NicDevice.start({ nicId: 11 });
  extra.push(nic);
  const ctl = control(nic);
  const a = Owner.open(ctl, "a");
  const b = Owner.open(ctl, "b", 5);
  const srcMem = new SharedArrayBuffer(3 << 20);
  fill(srcMem, 3);
  const src = b.register(srcMem, Access.RemoteRead);
  const dstMem = new SharedArrayBuffer(3 << 20);
  const dst = a.register(dstMem, Access.LocalWrite);
  const run = async (what: string, frames: boolean) => {
    const c0 = nic.counters().global;
    new Uint8Array(dstMem).fill(0);
    a.post(
      pullDesc({
        cookie: 1,
        nic: 11,
        src: b,
        region: b.right(src),
        srcOffset: 7,
        dst,
        length: (3 << 20) - 7,
        flags: DFLAG_TRACE,
      }),
    );
    const e = await a.nextEvent();
    expectEvent(e, EventType.PullDone, MxStatus.SUCCESS, what);
    assert.ok(e.seenAt > 0 && e.dmaDone >= e.seenAt, `${what}: traced`);
    assert.equal(sha(dstMem, 0, (3 << 20) - 7), sha(srcMem, 7, (3 << 20) - 7), what);
    a.post(
      pullDesc({
        cookie: 2,
        nic: 11,
        src: { id: b.id, session: b.session + 1 },
        region: src,
        dst,
        length: 1,
      }),
    );
    expectEvent(await a.nextEvent(), EventType.PullDone, MxStatus.BAD_SESSION, `${what}: wrong session`);
    a.post(connectDesc(3, 11, b.id, 5));
    const c = await a.nextEvent();
    expectEvent(c, EventType.ConnectDone, MxStatus.SUCCESS, `${what}: connect`);
    assert.equal(c.srcSession, b.session);
    const c1 = nic.counters().global;
    assert.equal(c1.remote_pulls - c0.remote_pulls, 2);
    assert.equal(
      c1.pull_replies_rx - c0.pull_replies_rx,
      frames ? Math.ceil(((3 << 20) - 7) / SEND_MAX) + 1 : 0,
      `${what}: replies`,
    );
  };
  await run("directly", false);
  await nic.attachLink({ kind: "loopback", slots: 8 });
  await run("through the loopback link", true);
  assert.equal(nic.counters().global.internal_errors, 0);
  await nic.stop();
});

// ---- the engine in-thread ------------------------------------------------------------------------

test("NicInfo keeps its old fields and adds link states", () => {
  const i = info(ctl1);
  assert.ok(Array.isArray(i.links));
  assert.ok(i.links.includes(2));
  assert.deepEqual(
    i.linkStates?.find((l) => l.peerNic === 2),
    { peerNic: 2, state: "up", reconnects: 0 },
  );
  assert.equal(nic1.counters().global.internal_errors, 0);
  assert.equal(nic2.counters().global.internal_errors, 0);
});

test("on a NIC of 64 endpoints, 40 endpoints each at their share of a link's window to accomplices that never acknowledge leave room: another endpoint's SEND goes out at once", async () => {
  // The window was 1024 SENDs whatever the NIC's size: 32 endpoints at SRC_CREDITS filled it,
  // and on a host configured with 64 endpoints (`myrixen host --max-endpoints 64`) one job's senders, each
  // within its share, held every slot of the link to their accomplices on the far host; the
  // bystander's SEND then waited until the link was found silent and failed without going out.
  const nic = await NicDevice.start({ nicId: 21, maxEndpoints: 64 });
  extra.push(nic);
  const ctl = control(nic);
  const fake = await FakePeer.start(22);
  try {
    await fake.attach(nic);
    const ATTACKERS = 40;
    assert.ok(ATTACKERS * SRC_CREDITS > SEND_WINDOW, "the attackers together would fill the old window");
    const attackers = Array.from({ length: ATTACKERS }, (_, i) => Owner.open(ctl, `attacker-${i}`));
    const b = Owner.open(ctl, "bystander");
    const breg = b.register(new SharedArrayBuffer(4096), Access.LocalRead);
    const c0 = nic.counters().global;
    // Each attacker sends to an accomplice of its own (at most DEST_CREDITS each way).
    for (const [i, a] of attackers.entries()) {
      const reg = a.register(new SharedArrayBuffer(4096), Access.LocalRead);
      for (let k = 0; k < SRC_CREDITS; k++) a.post(sendDesc(k, reg, 10, 22, { id: 1 + i, session: 0 }));
    }
    await until(
      () => fake.framesOf(FrameType.Send).length >= SEND_WINDOW,
      "the attackers' SENDs on the wire, as many as the old window held",
    );
    const at = await bystanderSend(fake, b, breg);
    assert.ok(
      at >= 0,
      `the bystander's SEND went out (${fake.framesOf(FrameType.Send).length} of the attackers' went before it; window full ` +
        `${nic.counters().global.send_window_full - c0.send_window_full} times)`,
    );
    assert.equal(nic.counters().global.send_window_full, c0.send_window_full, "the window never filled");
    for (const a of attackers) a.close();
    b.close();
  } finally {
    await fake.detach(nic);
  }
});

/** One direction of a link between two in-thread NICs: frames wait in `queue` until delivered; `blocked` pushes back. */
class QueuedLink implements Link {
  readonly queue: Uint8Array[] = [];
  blocked = false;
  private deliver: ((f: Uint8Array) => void) | undefined;
  private writable: (() => void) | undefined;
  /** `address`: the peer's IP, as a TCP link reports it (the NIC bounds and shares by its block). */
  constructor(
    readonly peerNic: number,
    readonly address?: string,
  ) {}
  send(frame: Uint8Array): boolean {
    if (this.blocked) return false;
    this.queue.push(Uint8Array.from(frame));
    return true;
  }
  onFrame(cb: (f: Uint8Array) => void): void {
    this.deliver = cb;
  }
  onWritable(cb: () => void): void {
    this.writable = cb;
  }
  close(): void {}
  /** The other direction's receiver takes what was sent. */
  flushTo(other: QueuedLink): void {
    for (const f of this.queue.splice(0)) other.deliver?.(f);
  }
  unblock(): void {
    this.blocked = false;
    this.writable?.();
  }
}

/**
 * Hostile NICs at `hostile` addresses, one after another, each write 40 SEND_MAX messages to a
 * receiver that computes (8 fill its receive area); then an honest NIC at `honest` sends two.
 * What the hostile ones hold, and whether the honest two were held (not refused).
 */
function placesAgainst(
  hostileAt: string[],
  honestAt: string,
): { held: number; honestHeld: number; refused: boolean } {
  const r = new Nic({ nicId: 100 });
  const hostile = hostileAt.map((address, k) => ({ nic: new Nic({ nicId: 101 + k }), address }));
  const honest = { nic: new Nic({ nicId: 150 }), address: honestAt };
  const pairs: [QueuedLink, QueuedLink][] = [];
  try {
    for (const s of [...hostile, honest]) {
      const toR = new QueuedLink(100);
      const fromS = new QueuedLink(s.nic.nicId, s.address);
      s.nic.attachLink(toR);
      r.attachLink(fromS);
      pairs.push([toR, fromS]);
    }
    const victim = inThreadOwner(r, "victim");
    const step = () => {
      for (const s of [...hostile, honest]) s.nic.poll();
      for (const [toR, fromS] of pairs) toR.flushTo(fromS);
      r.poll();
      for (const [toR, fromS] of pairs) fromS.flushTo(toR);
    };
    // Each in turn, once the one before holds its share: 24, 4, 2, 1, 1 by NIC id alone.
    for (const s of hostile) {
      const a = inThreadOwner(s.nic, "attacker");
      const reg = a.register(new SharedArrayBuffer(SEND_MAX), Access.LocalRead);
      for (let i = 0; i < 40; i++) a.post(sendDesc(i, reg, SEND_MAX, 100, victim));
      for (let round = 0; round < 20; round++) step();
    }
    const queued = () => new Float64Array(r.countersBuffer)[NicCounter.delivery_queued];
    const held = queued();
    const h = inThreadOwner(honest.nic, "honest");
    const hreg = h.register(new SharedArrayBuffer(4096), Access.LocalRead);
    for (let i = 0; i < 2; i++) h.post(sendDesc(500 + i, hreg, 100, 100, victim));
    for (let round = 0; round < 20; round++) step();
    return { held, honestHeld: queued() - held, refused: h.tryEvent() !== null };
  } finally {
    r.stop();
    for (const s of [...hostile, honest]) s.nic.stop();
  }
}

test("the NICs of one network hold a busy receiver's places together: five NIC ids of one address, or of five /64s of one /48, leave another network's messages their places", () => {
  // A key holder claims whatever NIC ids it likes (32 per address, link-bound.ts): five ids of
  // one machine took 24 + 4 + 2 + 1 + 1, every place, and an honest machine's messages were
  // refused (and retried while the flood re-posted at once); counted per address, five IPv6
  // /64s of one /48 did the same. One IPv4 /24 or IPv6 /48 holds 28 at most.
  for (const hostile of [
    Array(5).fill("198.51.100.7"),
    ["2001:db8:1:1::7", "2001:db8:1:2::7", "2001:db8:1:3::7", "2001:db8:1:4::7", "2001:db8:1:5::7"],
  ]) {
    const got = placesAgainst(hostile, "203.0.113.9");
    assert.ok(got.held <= DELIVERY_QUEUE - ADDRESS_RESERVE, `${hostile[1]}: the network holds ${got.held}`);
    assert.equal(got.refused, false, `${hostile[1]}: no honest message refused`);
    assert.equal(got.honestHeld, 2, `${hostile[1]}: both honest messages held`);
  }
});

test("hosts of this machine (loopback) are not one network: a third busy host's messages find places beside two", () => {
  // Counted as one block, two honest hosts on 127.0.0.1 holding 24 and 4 shut a third out.
  const got = placesAgainst(["127.0.0.1", "127.0.0.1"], "127.0.0.1");
  assert.equal(got.refused, false, "no message of the third host refused");
  assert.equal(got.honestHeld, 2);
});

test("a closed endpoint's SENDs still out stay charged to its domain, not to the next domain given its id", () => {
  // The link's credits for one destination were counted by the sending endpoint's share slot as
  // found at each look: an attacker's endpoint with 25 SENDs held closed, a victim domain opened
  // and got its id (and slot), and those 25 counted as the victim's: none of its SENDs went,
  // while the attacker's new endpoint sent as a newcomer.
  const s = new Nic({ nicId: 300 });
  const toR = new QueuedLink(301, "192.0.2.1");
  s.attachLink(toR);
  const open = (name: string, group: number): Owner => {
    const ctl = {
      call: (req: NicControlRequest) => s.control(req),
    } as unknown as SyncCallClient<NicControlRequest>;
    return new Owner(
      ctl,
      s.control({
        op: "open_endpoint",
        owner: name,
        endpointId: ANY_ENDPOINT,
        key: 0,
        group,
      }) as OpenEndpointReply,
    );
  };
  try {
    const dest = { id: 5, session: 0 };
    const sends = () => toR.queue.filter((f) => (getWord(f, 0) & 0xff) === FrameType.Send);
    const a1 = open("attacker", 91);
    const r1 = a1.register(new SharedArrayBuffer(4096), Access.LocalRead);
    for (let k = 0; k < 40; k++) a1.post(sendDesc(k, r1, 10, 301, dest));
    for (let r = 0; r < 5; r++) s.poll();
    assert.equal(sends().length, DEST_CREDITS - 1, "the attacker's domain alone: all credits but one");
    a1.close(); // its SENDs stay out until answered or timed out
    const v = open("victim", 93);
    assert.equal(v.id, a1.ep.endpointId, "the victim got the attacker's endpoint id");
    const vr = v.register(new SharedArrayBuffer(4096), Access.LocalRead);
    for (let k = 0; k < 4; k++) v.post(sendDesc(1000 + k, vr, 10, 301, dest));
    const a2 = open("attacker", 91);
    const r2 = a2.register(new SharedArrayBuffer(4096), Access.LocalRead);
    for (let k = 0; k < 40; k++) a2.post(sendDesc(2000 + k, r2, 10, 301, dest));
    for (let r = 0; r < 20; r++) s.poll();
    const cookies = sends().map((f) => getWord(f, F_COOKIE));
    assert.equal(
      cookies.filter((c) => c >= 1000 && c < 2000).length,
      1,
      "the victim's SEND took the credit kept for a newcomer",
    );
    assert.equal(cookies.filter((c) => c >= 2000).length, 0, "the attacker's domain took no more");
  } finally {
    s.stop();
  }
});

test("a window larger than 1024 SENDs, acknowledged while the link back pushes back: every SEND_ACK waits for the link, none is dropped, every delivered SEND succeeds", async () => {
  // With 64 endpoints a link's window is 2048 SENDs; the receiver's control queue held 1024
  // headers and dropped the ACKs beyond while its link back pushed back (bulk the other way),
  // so the sender failed 1024 delivered SENDs ENDPOINT_UNREACHABLE after WIRE_TIMEOUT_MS.
  const EPS = 64;
  const a = new Nic({ nicId: 70, maxEndpoints: EPS });
  const b = new Nic({ nicId: 71, maxEndpoints: EPS });
  try {
    const ab = new QueuedLink(71);
    const ba = new QueuedLink(70);
    a.attachLink(ab);
    b.attachLink(ba);
    const senders = Array.from({ length: EPS }, (_, i) => inThreadOwner(a, `sender ${i}`));
    const receivers = Array.from({ length: EPS }, (_, i) => inThreadOwner(b, `receiver ${i}`));
    ba.blocked = true;
    // As many as one domain alone has out to one destination (LinkState.canSend keeps one for a newcomer).
    const PER = DEST_CREDITS - 1;
    for (const [i, s] of senders.entries()) {
      const reg = s.register(new SharedArrayBuffer(4096), Access.LocalRead);
      for (let k = 0; k < PER; k++) s.post(sendDesc(k, reg, 8, 71, receivers[i]));
    }
    const total = EPS * PER;
    assert.ok(total > SEND_WINDOW, "more SENDs out at once than the old window and control queue held");
    const step = () => {
      a.poll();
      ab.flushTo(ba);
      b.poll();
      ba.flushTo(ab);
      // The receivers consume what they get, as live guests would.
      for (const r of receivers) while (r.tryEvent() !== null);
    };
    // One round delivers them all; a few more, still far within WIRE_TIMEOUT_MS on a loaded machine.
    for (let round = 0; round < 20; round++) step();
    assert.equal(new Float64Array(b.countersBuffer)[NicCounter.recvs], total, "every SEND delivered");
    ba.unblock();
    const statuses = new Map<number, number>();
    const deadline = performance.now() + 3 * WIRE_TIMEOUT_MS + 1000;
    while ([...statuses.values()].reduce((x, y) => x + y, 0) < total && performance.now() < deadline) {
      step();
      for (const s of senders)
        for (let e = s.tryEvent(); e !== null; e = s.tryEvent())
          statuses.set(e.status, (statuses.get(e.status) ?? 0) + 1);
      await sleep(1);
    }
    assert.deepEqual([...statuses], [[MxStatus.SUCCESS, total]], "every SEND completed SUCCESS");
    assert.equal(new Float64Array(b.countersBuffer)[NicCounter.acks_dropped], 0, "no SEND_ACK dropped");
  } finally {
    a.stop();
    b.stop();
  }
});

test("pull data taken in pieces: each frame is checked and counted once, and once its region is deregistered nothing more lands there", async () => {
  // A PULL_REPLY longer than a socket read reaches the NIC in pieces (Link.onPullData), each
  // placed as it comes. The region may go between two of them: what comes after must not
  // land in memory the owner took back (which it may have handed on).
  const LEN = 3 * SEND_MAX;
  const fake = await FakePeer.start(17);
  const a = Owner.open(ctl1, "a");
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake's link");
    const mem = new SharedArrayBuffer(LEN);
    const dst = a.register(mem, Access.LocalWrite);
    const c0 = nic1.counters().global;
    const { id, reply: replyWith, replyWords: words } = await pullFromFake(fake, a, dst, LEN);
    const data = new Uint8Array(LEN);
    for (let i = 0; i < LEN; i++) data[i] = ((i * 7) % 251) + 1;
    const reply = (over: Record<number, number>, from: number) =>
      replyWith(over, data.subarray(from, from + SEND_MAX));

    // Garbage as long as a full reply (so it too comes in pieces): each counted once, none placed.
    const garbage: Record<number, number>[] = [
      { [F_COOKIE]: id ^ 0x100 },
      { [F_DEST_ENDPOINT]: a.id + 1 },
      { [F_DEST_SESSION]: a.session ^ 1 },
      { [F_PULL_LENGTH]: LEN + 1 },
      { [F_PULL_OFFSET]: SEND_MAX },
      { [F_STATUS]: MxStatus.BAD_KEY },
    ];
    for (const g of garbage) reply(g, 0);
    await until(
      () => nic1.counters().global.pull_replies_bad - c0.pull_replies_bad === garbage.length,
      "the garbage counted",
    );
    assert.ok(
      new Uint8Array(mem).every((b) => b === 0),
      "nothing placed",
    );

    // The first third, sent whole: placed.
    reply({}, 0);
    await until(() => new Uint8Array(mem)[SEND_MAX - 1] !== 0, "the first third placed");

    // The second third written by hand: its header and 1,000 bytes, then the rest later.
    const f = pullReplyFrame(17, 1, words({ [F_PULL_OFFSET]: SEND_MAX }), SEND_MAX);
    f.set(data.subarray(SEND_MAX, 2 * SEND_MAX), FRAME_HEADER_BYTES);
    const { bytes, bulk } = byHand(fake, f);
    const head = 4 + FRAME_HEADER_BYTES + 1000;
    bulk.write(bytes.subarray(0, head));
    const placed = new Uint8Array(mem, SEND_MAX, 1000);
    await until(() => placed[999] !== 0, "the first piece placed before its frame is whole");
    assert.deepEqual(placed, data.subarray(SEND_MAX, SEND_MAX + 1000));

    // The owner takes its memory back; then the rest of the frame comes.
    a.deregister(dst.regionId);
    bulk.write(bytes.subarray(head));
    const e = await a.nextEvent(5000, "the pull's end");
    expectEvent(e, EventType.PullDone, MxStatus.ABORTED, "its region went");
    await until(
      () => fake.framesOf(FrameType.PullRequest).some((r) => getWord(r, F_STATUS) !== 0),
      "the peer told to stop",
    );
    // Give the link time to hand over every byte it read, then look.
    await sleep(50);
    assert.ok(
      new Uint8Array(mem, SEND_MAX + 1000).every((b) => b === 0),
      "nothing placed after the deregistration",
    );
    const c1 = nic1.counters().global;
    assert.equal(
      c1.pull_replies_rx - c0.pull_replies_rx,
      garbage.length + 2,
      "each frame counted once, not per piece",
    );
    assert.equal(c1.pull_replies_bad - c0.pull_replies_bad, garbage.length);
    assert.equal(c1.remote_pull_bytes - c0.remote_pull_bytes, SEND_MAX + 1000);
    assert.equal(c1.internal_errors, 0);
    assert.ok(!bulk.destroyed, "the link stays up");
  } finally {
    await fake.detach(nic1);
    a.close();
  }
});

/**
 * The id `fake` sees for `owner`'s next pull once the pull behind `id` has ended: the slot
 * table is a stack (the slot just freed is taken next) and its generation moves by one. A
 * peer can predict it as well as this test can.
 */
const nextIdOfSlot = (id: number) => (id + (1 << PULL_SLOT_BITS)) >>> 0;

test("a pull reply refused at its first piece stays refused: a pull posted meanwhile under the id it named gets none of it", async () => {
  // A peer sends a reply's header and first piece for the id the owner's next pull will get,
  // waits for the pull, then sends the rest: each piece alone would match the new pull.
  const fake = await FakePeer.start(18);
  const a = Owner.open(ctl1, "a");
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake's link");
    const mem = new SharedArrayBuffer(SEND_MAX);
    new Uint8Array(mem).fill(0xaa); // what the owner had there
    const dst = a.register(mem, Access.LocalWrite);
    const first = await pullFromFake(fake, a, dst, SEND_MAX);
    first.reply({ [F_STATUS]: MxStatus.ABORTED });
    expectEvent(await a.nextEvent(5000, "pull 1 ends"), EventType.PullDone, MxStatus.ABORTED, "pull 1");
    const predicted = nextIdOfSlot(first.id);

    const f = pullReplyFrame(18, 1, first.replyWords({ [F_COOKIE]: predicted }), SEND_MAX, 0x55);
    const { bytes, bulk } = byHand(fake, f);
    const c0 = nic1.counters().global;
    const head = 4 + FRAME_HEADER_BYTES + 1000;
    bulk.write(bytes.subarray(0, head));
    await until(
      () => nic1.counters().global.pull_replies_bad === c0.pull_replies_bad + 1,
      "the first piece refused",
    );

    a.post(pullFrom3(2, 18, dst, SEND_MAX));
    await until(() => fake.framesOf(FrameType.PullRequest).length === 2, "pull 2's request");
    const id2 = getWord(fake.framesOf(FrameType.PullRequest)[1], F_COOKIE);
    assert.equal(id2, predicted, "the id the peer predicted (the test's premise)");
    bulk.write(bytes.subarray(head));
    await sleep(100);
    assert.equal(a.tryEvent(), null, "pull 2 not ended by the rest of the refused reply");
    assert.ok(
      new Uint8Array(mem).every((b) => b === 0xaa),
      "nothing of it placed",
    );
    // The real reply still completes pull 2.
    const data = new Uint8Array(SEND_MAX).fill(0x33);
    first.reply({ [F_COOKIE]: id2 }, data);
    expectEvent(await a.nextEvent(5000, "pull 2 ends"), EventType.PullDone, MxStatus.SUCCESS, "pull 2");
    assert.deepEqual(new Uint8Array(mem), data);
    const c1 = nic1.counters().global;
    assert.equal(c1.pull_replies_rx - c0.pull_replies_rx, 2, "the refused reply and the real one");
    assert.equal(c1.pull_replies_bad - c0.pull_replies_bad, 1);
    assert.equal(c1.remote_pull_bytes - c0.remote_pull_bytes, SEND_MAX, "only the real reply's bytes");
  } finally {
    await fake.detach(nic1);
    a.close();
  }
});

test("a reply for a pull still parked (never asked for) is refused: it places nothing and ends nothing", async () => {
  const fake = await FakePeer.start(19);
  const a = Owner.open(ctl1, "a");
  const b = Owner.open(ctl1, "b");
  try {
    await fake.attach(nic1);
    await until(() => fake.links.length === 1, "the fake's link");
    const LEN = 100;
    const mem = new SharedArrayBuffer(LEN * (PULL_LINK_SHARE + 1));
    const dst = a.register(mem, Access.LocalWrite);
    const desc = (i: number) => pullFrom3(i, 19, dst, LEN, i * LEN);
    for (let i = 0; i < PULL_LINK_SHARE; i++) a.post(desc(i));
    await until(() => fake.framesOf(FrameType.PullRequest).length === PULL_LINK_SHARE, "a's share asked for");
    // b's pull frees a slot whose next id is known; a's next pull takes it, parked (a holds its share).
    const memB = new SharedArrayBuffer(LEN);
    const bp = await (async () => {
      b.post(pullFrom3(1, 19, b.register(memB, Access.LocalWrite), LEN));
      await until(() => fake.framesOf(FrameType.PullRequest).length === PULL_LINK_SHARE + 1, "b's request");
      return getWord(fake.framesOf(FrameType.PullRequest)[PULL_LINK_SHARE], F_COOKIE);
    })();
    fake.send(FrameType.PullReply, 1, pullReplyWords(b, bp, LEN, { [F_STATUS]: MxStatus.ABORTED }));
    expectEvent(await b.nextEvent(5000, "b's pull ends"), EventType.PullDone, MxStatus.ABORTED, "b's pull");
    const parked0 = nic1.counters().global.pulls_parked;
    a.post(desc(PULL_LINK_SHARE));
    await until(() => nic1.counters().global.pulls_parked === parked0 + 1, "a's pull parked");
    const c0 = nic1.counters().global;
    fake.send(
      FrameType.PullReply,
      1,
      pullReplyWords(a, nextIdOfSlot(bp), LEN),
      new Uint8Array(LEN).fill(0x77),
    );
    await until(
      () => nic1.counters().global.pull_replies_bad === c0.pull_replies_bad + 1,
      "the reply refused",
    );
    await sleep(50);
    assert.equal(a.tryEvent(), null, "the parked pull did not end");
    assert.ok(
      new Uint8Array(mem).every((x) => x === 0),
      "nothing placed",
    );
    assert.equal(nic1.counters().global.remote_pull_bytes, c0.remote_pull_bytes);
  } finally {
    await fake.detach(nic1);
    a.close();
    b.close();
  }
});

test("the rest of a reply whose pull ended goes nowhere, even once a pull takes the same id again (its generation wrapped)", () => {
  // A peer gets a reply's first piece placed, ends the pull with an error reply, and holds
  // the rest until the slot's 18-bit generation has wrapped (2^18 takes of the slot): the
  // pull that then has the old id must get none of it. The NIC runs in this thread.
  const PEER = 73;
  const { n, link } = nicBesideHoldingPeer(72, PEER, 4);
  try {
    const o = inThreadOwner(n, "o");
    const mem1 = new SharedArrayBuffer(SEND_MAX);
    const mem2 = new SharedArrayBuffer(SEND_MAX);
    const dst1 = o.register(mem1, Access.LocalWrite);
    const dst2 = o.register(mem2, Access.LocalWrite);
    const frameFor = (id: number, status: number, payload: number) =>
      pullReplyFrame(PEER, 72, pullReplyWords(o, id, SEND_MAX, { [F_STATUS]: status }), payload);
    /** Posts a pull into `dst` and polls until the peer has its request: its id. */
    const pull = (cookie: number, dst: RegisterRegionReply): number => {
      const asked = link.ids.length;
      o.post(
        pullDesc({
          cookie,
          nic: PEER,
          src: { id: 3, session: 33 },
          region: { regionId: 0, key: 1 },
          dst,
          length: SEND_MAX,
        }),
      );
      for (let k = 0; k < 100 && link.ids.length === asked; k++) n.poll();
      assert.equal(link.ids.length, asked + 1, `pull ${cookie} asked for`);
      return link.ids[asked];
    };
    const abort = (id: number) => {
      link.frameCb!(frameFor(id, MxStatus.ABORTED, 0));
      n.poll();
      const e = o.tryEvent();
      assert.ok(
        e !== null && e.type === EventType.PullDone && e.status === MxStatus.ABORTED,
        `pull ${id} ended`,
      );
    };

    const id1 = pull(1, dst1);
    const reply = frameFor(id1, MxStatus.SUCCESS, SEND_MAX);
    reply.fill(0x55, FRAME_HEADER_BYTES);
    const head = reply.subarray(0, FRAME_HEADER_BYTES);
    link.pieceCb!(head, reply.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 1000), 0, SEND_MAX);
    assert.equal(new Uint8Array(mem1)[999], 0x55, "the first piece placed");
    abort(id1);

    // Pull after pull through the same slot (the table is a stack) until one has id1 again.
    let victim = -1;
    for (let i = 0; i <= 1 << (32 - PULL_SLOT_BITS); i++) {
      const id = pull(100 + i, dst2);
      if (id === id1) {
        victim = id;
        break;
      }
      abort(id);
    }
    assert.equal(victim, id1, "a pull took the old id again");
    const c0 = new Float64Array(n.countersBuffer).slice();
    link.pieceCb!(head, reply.subarray(FRAME_HEADER_BYTES + 1000), 1000, SEND_MAX);
    n.poll();
    assert.equal(o.tryEvent(), null, "the pull with the old id did not end");
    assert.ok(
      new Uint8Array(mem2).every((b) => b === 0),
      "nothing placed in its memory",
    );
    const c1 = new Float64Array(n.countersBuffer);
    assert.equal(c1[NicCounter.remote_pull_bytes], c0[NicCounter.remote_pull_bytes]);
    assert.equal(c1[NicCounter.internal_errors], 0);
  } finally {
    n.stop();
  }
});

/**
 * The NIC's connect table shared fairly (src/nic/connect.ts CONNECT_CREDITS): a hostile endpoint
 * that floods CONNECTs at a peer NIC which never answers them holds at most its own share of
 * the table, its further CONNECTs wait in its own queue, and another endpoint's connect across
 * hosts still succeeds — also when the attacker opens many endpoints. Real NIC threads, a real
 * TCP link between them, and a fake peer NIC (a TCP link in this thread) that keeps its link
 * alive but answers no CONNECT_REQUEST, as a colluding or broken host would.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CONNECT_CREDITS } from "../src/nic/connect.js";
import type { NicControlRequest, NicInfo } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import {
  F_COOKIE,
  F_DEST_NIC,
  F_SRC_ENDPOINT,
  F_SRC_NIC,
  FRAME_HEADER_BYTES,
  FrameType,
  getWord,
  initFrame,
  setWord,
} from "../src/nic/frame.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import type { TcpLink } from "../src/nic/tcp-link.js";
import type { TcpLinkServer } from "../src/nic/tcp-link-setup.js";
import {
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_OPCODE,
  D_SRC_KEY,
  E_COOKIE,
  EventType,
  Opcode,
  SQ_ENTRIES,
  WIRE_TIMEOUT_MS,
} from "../src/nic/window.js";
import type { SyncCallClient } from "../src/xen/sync-call.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST, listenAsPeer, openEndpoint, WindowOwner } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const FAKE_NIC = 9;
const _quiet = () => {};

/** An endpoint's owner that posts CONNECTs and counts their CONNECT_DONEs. */
class Owner extends WindowOwner {
  /** CONNECT_DONEs seen, by status. */
  readonly done = new Map<number, number>();
  static open(ctl: SyncCallClient<NicControlRequest>, owner: string, key = 0): Owner {
    return new Owner(ctl, openEndpoint(ctl, owner, key));
  }
  /** Posts a CONNECT to (nic, ep) with `key`. */
  connect(cookie: number, nic: number, ep: number, key: number): void {
    this.postDesc({
      [D_OPCODE]: Opcode.Connect,
      [D_COOKIE]: cookie,
      [D_DEST_NIC]: nic,
      [D_DEST_ENDPOINT]: ep,
      [D_SRC_KEY]: key,
    });
  }
  protected onEvent(type: number, base: number): boolean {
    if ((type & 0xffff) !== EventType.ConnectDone) return false;
    const status = type >>> 16;
    this.done.set(status, (this.done.get(status) ?? 0) + 1);
    this.byCookie.set(this.w[base + E_COOKIE], status);
    return true;
  }
  get connectsDone(): number {
    let n = 0;
    for (const v of this.done.values()) n += v;
    return n;
  }
}

/**
 * A peer NIC that takes every CONNECT_REQUEST and answers none, and says something meaningless
 * every 100 ms so its link is never found silent: the attacker's requests to it each hold a
 * connect slot for the whole WIRE_TIMEOUT_MS, again and again.
 */
class MutePeer {
  links: TcpLink[] = [];
  /** CONNECT_REQUESTs received, per requesting endpoint. */
  readonly requests = new Map<number, number>();
  private chatter: ReturnType<typeof setInterval> | null = null;
  private constructor(readonly server: TcpLinkServer) {}
  static async start(): Promise<MutePeer> {
    let self: MutePeer | null = null;
    const { server, links } = await listenAsPeer(FAKE_NIC, (f) => {
      if ((getWord(f, 0) & 0xff) !== FrameType.ConnectRequest) return;
      const ep = getWord(f, F_SRC_ENDPOINT);
      self!.requests.set(ep, (self!.requests.get(ep) ?? 0) + 1);
    });
    self = new MutePeer(server);
    self.links = links;
    self.chatter = setInterval(() => self!.babble(), 100);
    return self;
  }
  /** A CONNECT_REPLY for no request (the NIC counts it and drops it): the peer is alive. */
  private babble(): void {
    const l = this.links[this.links.length - 1];
    if (l === undefined) return;
    const f = new Uint8Array(FRAME_HEADER_BYTES);
    initFrame(f, FrameType.ConnectReply, 0);
    setWord(f, F_SRC_NIC, FAKE_NIC);
    setWord(f, F_DEST_NIC, 1);
    setWord(f, F_COOKIE, 0xffffffff);
    l.send(f);
  }
  seen(ep: number): number {
    return this.requests.get(ep) ?? 0;
  }
  async stop(): Promise<void> {
    if (this.chatter) clearInterval(this.chatter);
    await this.server.close();
  }
}

let nic1: NicDevice;
let nic2: NicDevice;
let ctl1: SyncCallClient<NicControlRequest>;
let ctl2: SyncCallClient<NicControlRequest>;
let mute: MutePeer;

before(async () => {
  [nic1, nic2] = await Promise.all([NicDevice.start({ nicId: 1 }), NicDevice.start({ nicId: 2 })]);
  ctl1 = control(nic1);
  ctl2 = control(nic2);
  const port = await freePort();
  await nic2.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  await nic1.attachLink({ kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY });
  mute = await MutePeer.start();
  await nic1.attachLink({ kind: "tcp", host: HOST, port: mute.server.port, timeoutMs: 2000, key: LINK_KEY });
  await until(
    () =>
      ctl2.call<NicInfo>({ op: "info" }).links.includes(1) &&
      ctl1.call<NicInfo>({ op: "info" }).links.includes(FAKE_NIC),
    "the links",
  );
});

after(async () => {
  await nic1?.detachLink(FAKE_NIC).catch(() => {});
  await mute?.stop();
  await Promise.all([nic1?.stop(), nic2?.stop()]);
});

/** What `h` has outstanding at the mute peer: requests it saw minus the CONNECT_DONEs `h` got. */
function outstanding(h: Owner): number {
  h.drain();
  return mute.seen(h.id) - h.connectsDone;
}

test("a guest flooding CONNECTs at a peer that never answers holds its own share of the connect table; another guest's connect succeeds", async () => {
  const b = Owner.open(ctl2, "domain 7 (the honest peer)", 0xb0b);
  const a = Owner.open(ctl1, "domain 5 (honest)");
  const h = Owner.open(ctl1, "domain 6 (hostile)");
  const c0 = nic1.counters().global;
  let cookie = 1;

  // One hostile endpoint: a full send queue of CONNECTs at the mute peer (the whole connect
  // table before the fix: its 256 slots were shared by every endpoint of the NIC).
  for (let i = 0; i < SQ_ENTRIES; i++) h.connect(10_000 + i, FAKE_NIC, 0, 0);
  await until(() => mute.seen(h.id) >= CONNECT_CREDITS, "the hostile CONNECTs at the mute peer");
  await sleep(50);

  // The honest guest's connect to a real peer, while the flood holds its slots.
  a.connect(cookie, 2, b.id, 0xb0b);
  let st = await a.answer(cookie++, "the honest connect's answer");
  assert.equal(st, MxStatus.SUCCESS, `the honest connect: ${mxStatusName(st)}, expected SUCCESS`);

  // The hostile endpoint holds at most its share; the rest wait in its own queue.
  const held = outstanding(h);
  assert.ok(
    held <= CONNECT_CREDITS,
    `the hostile endpoint has ${held} CONNECTs outstanding (share ${CONNECT_CREDITS})`,
  );
  assert.ok(h.queued > 0, "the hostile endpoint's further CONNECTs wait in its own queue");
  assert.equal(h.done.get(MxStatus.NO_RESOURCES) ?? 0, 0, "nobody got NO_RESOURCES");
  assert.ok(nic1.counters().global.connect_ep_full > c0.connect_ep_full, "counted connect_ep_full");

  // Its queue moves on as its own connects time out: the next share goes out (liveness bound,
  // generous), and meanwhile the honest guest keeps connecting.
  const firstShare = mute.seen(h.id);
  const t0 = performance.now();
  while (mute.seen(h.id) <= firstShare) {
    a.connect(cookie, 2, b.id, 0xb0b);
    st = await a.answer(cookie++, "an honest connect during the flood");
    assert.equal(st, MxStatus.SUCCESS, `an honest connect during the flood: ${mxStatusName(st)}`);
    assert.ok(outstanding(h) <= CONNECT_CREDITS, "never more than the share");
    assert.ok(performance.now() - t0 < 3 * WIRE_TIMEOUT_MS + 2000, "the hostile queue moved on");
    await sleep(100);
  }
  h.drain();
  assert.ok((h.done.get(MxStatus.ENDPOINT_UNREACHABLE) ?? 0) >= 1, "its own CONNECTs time out, for it alone");

  // The attacker opens every endpoint context left and floods from each: together they hold
  // more than the old table, but each only its share, and the table has room for every share.
  const many: Owner[] = [];
  for (let i = 0; i < 29; i++) many.push(Owner.open(ctl1, "domain 6 (hostile)"));
  for (const m of many) for (let i = 0; i < CONNECT_CREDITS + 4; i++) m.connect(20_000 + i, FAKE_NIC, 0, 0);
  await until(
    () => many.every((m) => mute.seen(m.id) >= CONNECT_CREDITS),
    "every hostile endpoint's share at the mute peer",
  );
  a.connect(cookie, 2, b.id, 0xb0b);
  let total = outstanding(h);
  for (const m of many) total += outstanding(m);
  assert.ok(total > 256, `the attacker holds ${total} connects, more than the old table's 256`);
  st = await a.answer(cookie++, "the honest connect beside 30 flooding endpoints");
  assert.equal(st, MxStatus.SUCCESS, `the honest connect beside 30 flooding endpoints: ${mxStatusName(st)}`);
  for (const m of [h, ...many]) {
    const n = outstanding(m);
    assert.ok(n <= CONNECT_CREDITS, `endpoint ${m.id} has ${n} CONNECTs outstanding`);
    assert.equal(m.done.get(MxStatus.NO_RESOURCES) ?? 0, 0, `endpoint ${m.id} got NO_RESOURCES`);
  }

  // Closing the hostile endpoints ends their connects (no events) and frees their shares.
  for (const m of [h, ...many]) m.close();
  a.connect(cookie, 2, b.id, 0xb0b);
  st = await a.answer(cookie++, "the honest connect after the flood");
  assert.equal(st, MxStatus.SUCCESS);
  a.close();
  b.close();
});

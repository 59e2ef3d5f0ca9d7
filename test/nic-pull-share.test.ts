/**
 * The NIC's remote-pull table shared fairly (src/nic/remote-pull.ts PULL_CREDITS): a hostile
 * endpoint that floods remote PULLs at slow peer NICs holds at most its own share of the table,
 * its further pulls wait in its own queue, and another endpoint's pull from a real NIC still
 * completes — also when the attacker opens several endpoints. Real NIC threads, a real TCP link
 * between them, and fake peer NICs (TCP links in this thread) that take every PULL_REQUEST and
 * trickle one byte of each now and then, as a slow or hostile host would: each pull they hold
 * keeps its slot until its deadline (half a minute for the 1 MiB asked for here).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { NicControlRequest, NicInfo, RegisterRegionReply } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import {
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_NIC,
  F_DEST_SESSION,
  F_PULL_LENGTH,
  F_PULL_OFFSET,
  F_SRC_ENDPOINT,
  F_SRC_NIC,
  F_SRC_SESSION,
  F_STATUS,
  FRAME_HEADER_BYTES,
  FrameType,
  getWord,
  initFrame,
  setWord,
} from "../src/nic/frame.js";
import { PULL_JOBS_PER_LINK, PULL_LINK_SHARE } from "../src/nic/link-state.js";
import { PULL_CREDITS } from "../src/nic/remote-pull.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import type { TcpLink } from "../src/nic/tcp-link.js";
import type { TcpLinkServer } from "../src/nic/tcp-link-setup.js";
import {
  Access,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_REGION,
  DFLAG_REMOTE,
  E_COOKIE,
  EventType,
  EXPOSURE_OFFSET,
  ExposureState,
  Opcode,
  SQ_ENTRIES,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../src/nic/window.js";
import type { SyncCallClient } from "../src/xen/sync-call.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST, listenAsPeer, openEndpoint, WindowOwner } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

/** The slow peers' NIC ids: eight links, room for 8 × PULL_JOBS_PER_LINK pulls (the old table had 256). */
const SLOW_NICS = [9, 10, 11, 12, 13, 14, 15, 16];
/** What the hostile pulls ask for: its deadline is half a minute away however it trickles. */
const HOSTILE_LEN = 1 << 20;
const _quiet = () => {};

/** An endpoint's owner that posts PULLs and reads their PULL_DONEs (and ERRORs). */
class Owner extends WindowOwner {
  static open(ctl: SyncCallClient<NicControlRequest>, owner: string, group?: number): Owner {
    return new Owner(ctl, openEndpoint(ctl, owner, 0, group));
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
  /** Arms pull right 0 over all of `region` with `key`, as a rendezvous sender does. */
  arm(region: RegisterRegionReply, key: number): void {
    const b = EXPOSURE_OFFSET / 4;
    Atomics.store(this.w, b + X_STATE, ExposureState.Free);
    Atomics.store(this.w, b + X_REGION, region.regionId);
    Atomics.store(this.w, b + X_OFFSET, 0);
    Atomics.store(this.w, b + X_LENGTH, region.length);
    Atomics.store(this.w, b + X_KEY, key);
    Atomics.store(this.w, b + X_STATE, ExposureState.Armed);
  }
  /** Posts a remote PULL of `len` bytes from right (index, key) of endpoint `src` on NIC `nic` into `dst`. */
  pull(
    cookie: number,
    nic: number,
    src: { id: number; session: number },
    index: number,
    key: number,
    dst: RegisterRegionReply,
    len: number,
  ): void {
    this.postDesc({
      [D_OPCODE]: Opcode.Pull | (DFLAG_REMOTE << 16),
      [D_COOKIE]: cookie,
      [D_SRC_REGION]: index,
      [D_SRC_KEY]: key,
      [D_DST_REGION]: dst.regionId,
      [D_LENGTH]: len,
      [D_DEST_NIC]: nic,
      [D_DEST_ENDPOINT]: src.id,
      [D_DEST_SESSION]: src.session,
    });
  }
  /** PULL_DONE: its status; ERROR: -1. */
  protected onEvent(type: number, base: number): boolean {
    const t = type & 0xffff;
    if (t !== EventType.PullDone && t !== EventType.Error) return false;
    this.byCookie.set(this.w[base + E_COOKIE], t === EventType.Error ? -1 : type >>> 16);
    return true;
  }
}

/** Each of `owners` asks `slowNic` for PULL_LINK_SHARE + 8 pulls of HOSTILE_LEN (cookies from `base`): more than a share. */
function flood(owners: Owner[], slowNic: number, base: number): void {
  for (const h of owners) {
    const dst = h.register(new SharedArrayBuffer(HOSTILE_LEN), Access.LocalWrite);
    for (let i = 0; i < PULL_LINK_SHARE + 8; i++)
      h.pull(base + i, slowNic, { id: 0, session: 0 }, 0, 1, dst, HOSTILE_LEN);
  }
}

interface Held {
  id: number;
  reqEp: number;
  reqSession: number;
  srcEp: number;
  srcSession: number;
  len: number;
  sent: number;
}

/**
 * A peer NIC that takes every PULL_REQUEST and serves it one byte every 400 ms (less than
 * WIRE_TIMEOUT_MS apart: the pull makes progress, and the link is never found silent), so each
 * pull holds its slot in the requester's table until its deadline.
 */
class SlowPeer {
  links: TcpLink[] = [];
  /** PULL_REQUESTs received, per requesting endpoint. */
  readonly requests = new Map<number, number>();
  /** The pulls it holds, by request id. */
  readonly held = new Map<number, Held>();
  private trickle: ReturnType<typeof setInterval> | null = null;
  private constructor(
    readonly nicId: number,
    readonly server: TcpLinkServer,
  ) {}
  static async start(nicId: number): Promise<SlowPeer> {
    let self: SlowPeer | null = null;
    const { server, links } = await listenAsPeer(nicId, (f) => {
      if ((getWord(f, 0) & 0xff) !== FrameType.PullRequest) return;
      const id = getWord(f, F_COOKIE);
      if (getWord(f, F_STATUS) !== 0) {
        self!.held.delete(id);
        return;
      }
      const reqEp = getWord(f, F_SRC_ENDPOINT);
      self!.requests.set(reqEp, (self!.requests.get(reqEp) ?? 0) + 1);
      self!.held.set(id, {
        id,
        reqEp,
        reqSession: getWord(f, F_SRC_SESSION),
        srcEp: getWord(f, F_DEST_ENDPOINT),
        srcSession: getWord(f, F_DEST_SESSION),
        len: getWord(f, F_PULL_LENGTH),
        sent: 0,
      });
    });
    self = new SlowPeer(nicId, server);
    self.links = links;
    self.trickle = setInterval(() => self!.serveAByte(), 400);
    return self;
  }
  /** One byte of every pull it holds. */
  private serveAByte(): void {
    const l = this.links[this.links.length - 1];
    if (l === undefined) return;
    for (const h of this.held.values()) {
      if (h.sent + 1 >= h.len) continue;
      const f = new Uint8Array(FRAME_HEADER_BYTES + 1);
      initFrame(f, FrameType.PullReply, 1);
      setWord(f, F_COOKIE, h.id);
      setWord(f, F_SRC_NIC, this.nicId);
      setWord(f, F_SRC_ENDPOINT, h.srcEp);
      setWord(f, F_SRC_SESSION, h.srcSession);
      setWord(f, F_DEST_NIC, 1);
      setWord(f, F_DEST_ENDPOINT, h.reqEp);
      setWord(f, F_DEST_SESSION, h.reqSession);
      setWord(f, F_PULL_OFFSET, h.sent);
      setWord(f, F_PULL_LENGTH, h.len);
      f[FRAME_HEADER_BYTES] = 0x5a;
      if (l.send(f)) h.sent++;
    }
  }
  seen(ep: number): number {
    return this.requests.get(ep) ?? 0;
  }
  async stop(): Promise<void> {
    if (this.trickle) clearInterval(this.trickle);
    await this.server.close();
  }
}

let nic1: NicDevice;
let nic2: NicDevice;
let ctl1: SyncCallClient<NicControlRequest>;
let ctl2: SyncCallClient<NicControlRequest>;
const slow: SlowPeer[] = [];

before(async () => {
  [nic1, nic2] = await Promise.all([NicDevice.start({ nicId: 1 }), NicDevice.start({ nicId: 2 })]);
  ctl1 = control(nic1);
  ctl2 = control(nic2);
  const port = await freePort();
  await nic2.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  await nic1.attachLink({ kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY });
  for (const id of SLOW_NICS) {
    const p = await SlowPeer.start(id);
    slow.push(p);
    await nic1.attachLink({ kind: "tcp", host: HOST, port: p.server.port, timeoutMs: 2000, key: LINK_KEY });
  }
  await until(() => {
    const links = ctl1.call<NicInfo>({ op: "info" }).links;
    return ctl2.call<NicInfo>({ op: "info" }).links.includes(1) && SLOW_NICS.every((n) => links.includes(n));
  }, "the links");
});

after(async () => {
  for (const p of slow) {
    await nic1?.detachLink(p.nicId).catch(() => {});
    await p.stop();
  }
  await Promise.all([nic1?.stop(), nic2?.stop()]);
});

/** Pulls `h` asked the slow peers for. */
function seen(h: Owner): number {
  let n = 0;
  for (const p of slow) n += p.seen(h.id);
  return n;
}

/** What `h` has outstanding at the slow peers: requests they saw minus the PULL_DONEs `h` got. */
function outstanding(h: Owner): number {
  h.drain();
  return seen(h) - h.byCookie.size;
}

/**
 * An honest pair: endpoint b on the real peer NIC exposing 4 KiB of 0x42, and endpoint a here
 * with 4 KiB to pull them into.
 */
function honestPair() {
  const b = Owner.open(ctl2, "domain 7 (the honest peer)");
  const srcMem = new SharedArrayBuffer(4096);
  new Uint8Array(srcMem).fill(0x42);
  const src = b.register(srcMem, Access.RemoteRead);
  const a = Owner.open(ctl1, "domain 5 (honest)");
  const aMem = new SharedArrayBuffer(4096);
  const aDst = a.register(aMem, Access.LocalWrite);
  return { a, aMem, aDst, b, src };
}

test("a guest flooding remote PULLs at slow peers holds its own share of the remote-pull table; another guest's pull completes", async () => {
  assert.ok(SLOW_NICS.length * PULL_JOBS_PER_LINK > 256, "the slow links can hold more than the old table");
  const { a, aMem, aDst, b, src } = honestPair();
  const h = Owner.open(ctl1, "domain 6 (hostile)");
  const hDst = h.register(new SharedArrayBuffer(HOSTILE_LEN), Access.LocalWrite);
  const c0 = nic1.counters().global;
  let key = 0x1234;
  let cookie = 1;
  /** The honest guest's pull of b's 4 KiB: armed afresh (a right serves once), then asked for. */
  const honestPull = async (what: string): Promise<void> => {
    new Uint8Array(aMem).fill(0);
    b.arm(src, ++key);
    a.pull(cookie, 2, b, 0, key, aDst, 4096);
    const st = await a.answer(cookie++, what);
    assert.equal(
      st,
      MxStatus.SUCCESS,
      `${what}: ${st < 0 ? "an ERROR event" : mxStatusName(st)}, expected SUCCESS`,
    );
    assert.ok(
      new Uint8Array(aMem).every((x) => x === 0x42),
      `${what}: the bytes arrived`,
    );
  };

  // One hostile endpoint: a full send queue of pulls spread over the slow peers (the whole
  // remote-pull table before the fix: its 256 slots were shared by every endpoint of the NIC).
  for (let i = 0; i < SQ_ENTRIES; i++)
    h.pull(10_000 + i, SLOW_NICS[i % SLOW_NICS.length], { id: 0, session: 0 }, 0, 1, hDst, HOSTILE_LEN);
  await until(() => seen(h) >= PULL_CREDITS, "the hostile pulls at the slow peers");
  await sleep(100);

  // The honest guest's pull from a real peer, while the flood holds its slots.
  await honestPull("the honest pull");

  // The hostile endpoint holds at most its share; the rest wait in its own queue, not failing.
  const held = outstanding(h);
  assert.ok(
    held <= PULL_CREDITS,
    `the hostile endpoint has ${held} pulls outstanding (share ${PULL_CREDITS})`,
  );
  assert.ok(h.queued > 0, "the hostile endpoint's further pulls wait in its own queue");
  assert.equal(h.byCookie.size, 0, "none of the hostile pulls ended (they wait, they do not fail)");
  assert.ok(nic1.counters().global.pull_ep_full > c0.pull_ep_full, "counted pull_ep_full");

  // The attacker opens more endpoints and floods from each: together they hold more than the
  // old table, but each only its share, and the table has room for every share.
  const many: Owner[] = [];
  for (let i = 0; i < 4; i++) many.push(Owner.open(ctl1, "domain 6 (hostile)"));
  for (const m of many) {
    const dst = m.register(new SharedArrayBuffer(HOSTILE_LEN), Access.LocalWrite);
    for (let i = 0; i < PULL_CREDITS + 8; i++)
      m.pull(20_000 + i, SLOW_NICS[i % SLOW_NICS.length], { id: 0, session: 0 }, 0, 1, dst, HOSTILE_LEN);
  }
  await until(
    () => many.every((m) => seen(m) >= PULL_CREDITS),
    "every hostile endpoint's share at the slow peers",
  );
  let total = 0;
  for (const m of [h, ...many]) total += outstanding(m);
  assert.ok(total > 256, `the attacker holds ${total} pulls, more than the old table's 256`);
  await honestPull("the honest pull beside 5 flooding endpoints");
  for (const m of [h, ...many]) {
    const n = outstanding(m);
    assert.ok(n <= PULL_CREDITS, `endpoint ${m.id} has ${n} pulls outstanding (share ${PULL_CREDITS})`);
    assert.ok(m.queued > 0, `endpoint ${m.id}'s further pulls wait in its own queue`);
    assert.equal(m.byCookie.size, 0, `endpoint ${m.id}'s pulls ended early`);
  }

  // Closing the hostile endpoints ends their pulls (no events), and the peers are told to stop.
  for (const m of [h, ...many]) m.close();
  await until(() => slow.every((p) => p.held.size === 0), "the slow peers told to stop every hostile pull");
  await honestPull("the honest pull after the flood");
  a.close();
  b.close();
});

test("two guests flooding one host leave a third its own share of the link: its pulls beyond it wait parked and hold no queue, its pull from another host completes", async () => {
  const slowNic = SLOW_NICS[0];
  const peer = slow[0];
  // Endpoint ids come back: count this test's requests only.
  peer.requests.clear();
  const { a, aMem, aDst, b, src } = honestPair();
  const aSlow = a.register(new SharedArrayBuffer(HOSTILE_LEN), Access.LocalWrite);
  const c0 = nic1.counters().global;

  // Two hostile domains flood one slow host, one after the other: the first, alone on the
  // link, takes its share (PULL_LINK_SHARE); the second as many as leave free what it holds
  // (half the rest, link-state.ts pullMayGo). Before, each took PULL_LINK_SHARE: all the jobs.
  const hostile = [Owner.open(ctl1, "domain 6 (hostile)"), Owner.open(ctl1, "domain 6 (hostile)")];
  const first = PULL_LINK_SHARE;
  const second = (PULL_JOBS_PER_LINK - first) / 2;
  flood([hostile[0]], slowNic, 30_000);
  await until(() => peer.seen(hostile[0].id) === first, "the first domain's share at the slow host");
  flood([hostile[1]], slowNic, 30_000);
  await until(() => peer.seen(hostile[1].id) === second, "the second domain's share at the slow host");

  // The honest guest pulls from the slow host too: it gets a share of what is left, the rest
  // of its pulls there wait parked; then it pulls from the real peer: that pull must not wait
  // behind the parked ones.
  const third = (PULL_JOBS_PER_LINK - first - second) / 2;
  const PARKED = 4;
  for (let i = 0; i < third + PARKED; i++)
    a.pull(100 + i, slowNic, { id: 0, session: 0 }, 0, 1, aSlow, HOSTILE_LEN);
  await until(() => peer.seen(a.id) === third, "the honest guest's share at the slow host");
  b.arm(src, 0x777);
  a.pull(2, 2, b, 0, 0x777, aDst, 4096);
  const st = await a.answer(2, "the honest pull from the real peer");
  assert.equal(st, MxStatus.SUCCESS, `${st < 0 ? "an ERROR event" : mxStatusName(st)}, expected SUCCESS`);
  assert.ok(
    new Uint8Array(aMem).every((x) => x === 0x42),
    "the bytes arrived",
  );
  await sleep(100);
  assert.equal(peer.seen(a.id), third, "the honest guest's pulls beyond its share wait parked");
  for (let i = 0; i < third + PARKED; i++) assert.equal(a.byCookie.has(100 + i), false, "and do not fail");
  assert.equal(peer.seen(hostile[0].id), first, "the first domain holds its share, no more");
  assert.equal(peer.seen(hostile[1].id), second, "the second domain holds its share, no more");
  assert.ok(
    nic1.counters().global.pulls_parked - c0.pulls_parked >=
      2 * (PULL_LINK_SHARE + 8) - first - second + PARKED,
    "counted pulls_parked",
  );

  // One hostile domain goes: its pulls end, and the jobs they free go to the parked pulls in
  // turn: the honest guest's are asked for.
  hostile[0].close();
  await until(() => peer.seen(a.id) === third + PARKED, "the honest pulls asked for once jobs freed");
  hostile[1].close();
  a.close();
  await until(() => peer.held.size === 0, "the slow host told to stop every pull");
  b.close();
});

test("a domain's endpoints hold half a link's pulls together: a second endpoint buys no more, and another domain's pull is asked for at once", async () => {
  // The share was per endpoint: a guest that opened two endpoints held all of a link's jobs,
  // and every other guest's pull from that host waited parked until one of its pulls ended.
  const slowNic = SLOW_NICS[1];
  const peer = slow[1];
  peer.requests.clear();
  const hostile = [Owner.open(ctl1, "domain 7", 7), Owner.open(ctl1, "domain 7", 7)];
  flood(hostile, slowNic, 40_000);
  await until(
    () => peer.seen(hostile[0].id) + peer.seen(hostile[1].id) === PULL_LINK_SHARE,
    "the domain's share of the link taken at the slow host",
  );
  await sleep(100);
  assert.equal(
    peer.seen(hostile[0].id) + peer.seen(hostile[1].id),
    PULL_LINK_SHARE,
    "no more than its share",
  );
  const honest = Owner.open(ctl1, "domain 8", 8);
  const dst = honest.register(new SharedArrayBuffer(HOSTILE_LEN), Access.LocalWrite);
  honest.pull(1, slowNic, { id: 0, session: 0 }, 0, 1, dst, HOSTILE_LEN);
  await until(() => peer.seen(honest.id) === 1, "the other domain's pull asked for at once");
  for (const o of [...hostile, honest]) o.close();
  await until(() => peer.held.size === 0, "the slow host told to stop every pull");
});

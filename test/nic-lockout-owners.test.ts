/**
 * A lockout for guessing belongs to the guesser, not to the endpoint id it guessed from.
 *
 * A NIC that refuses wrong keys, sessions or pull rights locks the requester out; it used to
 * key that on the requester's NIC and endpoint id alone, so the lockout outlived the guesser's
 * endpoint and the next guest given that id (another job's rank, opening it by number or
 * getting it as the last free one) had its connects and sends refused for up to a minute.
 * Now the refusing NIC keys on the requester's incarnation (its session) and the requester's
 * own NIC, which sees every answer and knows the owner, keeps counting across a reopen by the
 * same owner (src/nic/refusal-throttle.ts, src/nic/own-refusals.ts). A peer NIC that names a
 * new session for every guess meets the id's own record. Real NIC threads, a real TCP link
 * between them, and a fake peer NIC in this thread.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { CONNECT_FREE_FAILS, CONNECT_ID_FREE_FAILS } from "../src/nic/connect-throttle.js";
import type { NicControlRequest, NicInfo, OpenEndpointReply } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import {
  F_CONNECT_KEY,
  F_COOKIE,
  F_DEST_ENDPOINT,
  F_DEST_NIC,
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
import { SESSION_FREE_REFUSALS } from "../src/nic/session-throttle.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import {
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_OPCODE,
  D_SRC_KEY,
  E_COOKIE,
  EventType,
  Opcode,
} from "../src/nic/window.js";
import type { SyncCallClient } from "../src/xen/sync-call.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST, listenAsPeer, openEndpoint, WindowOwner } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

/** An endpoint's owner that posts CONNECTs and zero-length SENDs and records how each ended. */
class Owner extends WindowOwner {
  static open(ctl: SyncCallClient<NicControlRequest>, owner: string, key = 0): Owner {
    return new Owner(ctl, openEndpoint(ctl, owner, key));
  }
  /** Opens endpoint id `id` by number, as a guest may. */
  static openId(ctl: SyncCallClient<NicControlRequest>, owner: string, id: number): Owner {
    return new Owner(
      ctl,
      ctl.call<OpenEndpointReply>({ op: "open_endpoint", owner, endpointId: id, key: 0 }),
    );
  }
  connect(cookie: number, nic: number, ep: number, key: number): void {
    this.postDesc({
      [D_OPCODE]: Opcode.Connect,
      [D_COOKIE]: cookie,
      [D_DEST_NIC]: nic,
      [D_DEST_ENDPOINT]: ep,
      [D_SRC_KEY]: key,
    });
  }
  send(cookie: number, nic: number, to: { id: number; session: number }): void {
    this.postDesc({
      [D_OPCODE]: Opcode.Send,
      [D_COOKIE]: cookie,
      [D_DEST_NIC]: nic,
      [D_DEST_ENDPOINT]: to.id,
      [D_DEST_SESSION]: to.session,
    });
  }
  protected onEvent(type: number, base: number): boolean {
    const t = type & 0xffff;
    if (t !== EventType.ConnectDone && t !== EventType.SendDone) return false;
    this.byCookie.set(this.w[base + E_COOKIE], type >>> 16);
    return true;
  }
  /** Posts `what` and waits for its answer, one at a time (a queue never runs full). */
  async ask(cookie: number, post: () => void, what: string): Promise<number> {
    post();
    return this.answer(cookie, what);
  }
}

/** The receiving side of the sends: it only has to consume what it gets. */
class Receiver extends WindowOwner {
  protected onEvent(): boolean {
    return false;
  }
}

let nic1: NicDevice;
let nic2: NicDevice;
let ctl1: SyncCallClient<NicControlRequest>;
let ctl2: SyncCallClient<NicControlRequest>;

before(async () => {
  [nic1, nic2] = await Promise.all([NicDevice.start({ nicId: 1 }), NicDevice.start({ nicId: 2 })]);
  ctl1 = control(nic1);
  ctl2 = control(nic2);
  const port = await freePort();
  await nic2.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
  await nic1.attachLink({ kind: "tcp", host: HOST, port, timeoutMs: 2000, key: LINK_KEY });
  await until(() => ctl2.call<NicInfo>({ op: "info" }).links.includes(1), "NIC 2 attached NIC 1's link");
});

after(async () => {
  await Promise.all([nic1?.stop(), nic2?.stop()]);
});

const CASES = [
  { where: "on this NIC", nic: 1 },
  { where: "across the link", nic: 2 },
] as const;

test("a guesser locked out for wrong keys leaves no lockout to the next owner of its endpoint id; reopening it, the guesser is still locked out", async () => {
  for (const [n, { where, nic }] of CASES.entries()) {
    const ctlT = nic === 1 ? ctl1 : ctl2;
    const target = Owner.open(ctlT, "target", 0x600d);
    const id = 20 + n;
    let cookie = 1;
    const guesser = Owner.openId(ctl1, "guesser", id);
    for (let i = 0; i < CONNECT_FREE_FAILS; i++) {
      const c = cookie++;
      const st = await guesser.ask(
        c,
        () => guesser.connect(c, nic, target.id, 0xbad0 + i),
        `${where}: guess ${i}`,
      );
      assert.equal(st, MxStatus.BAD_KEY, `${where}: guess ${i}: ${mxStatusName(st)}`);
    }
    const locked = cookie++;
    const st = await guesser.ask(
      locked,
      () => guesser.connect(locked, nic, target.id, 0x600d),
      `${where}: locked`,
    );
    assert.equal(
      st,
      MxStatus.REJECTED,
      `${where}: the guesser's right key in its lockout: ${mxStatusName(st)}`,
    );
    guesser.close();

    // Another guest opens that very id (by number, as any guest may): its right key connects.
    const next = Owner.openId(ctl1, "next-job-rank", id);
    const c1 = cookie++;
    const got = await next.ask(c1, () => next.connect(c1, nic, target.id, 0x600d), `${where}: newcomer`);
    assert.equal(got, MxStatus.SUCCESS, `${where}: the newcomer on id ${id}: ${mxStatusName(got)}`);
    next.close();

    // The guesser opening it again got a new session, and a clean record where it asks; its
    // own NIC has kept counting for it and refuses before anything is sent.
    const before = nic1.counters().global.own_requests_throttled;
    const again = Owner.openId(ctl1, "guesser", id);
    const c2 = cookie++;
    const back = await again.ask(c2, () => again.connect(c2, nic, target.id, 0x600d), `${where}: reopened`);
    assert.equal(back, MxStatus.REJECTED, `${where}: the guesser, reopened: ${mxStatusName(back)}`);
    assert.equal(nic1.counters().global.own_requests_throttled - before, 1, `${where}: refused at home`);
    again.close();
    target.close();
  }
});

test("a guesser locked out for wrong sessions leaves no lockout to the next owner of its endpoint id; reopening it, the guesser is still locked out", async () => {
  for (const [n, { where, nic }] of CASES.entries()) {
    const ctlT = nic === 1 ? ctl1 : ctl2;
    const target = new Receiver(ctlT, openEndpoint(ctlT, "target", 0x600d));
    const wrong = { id: target.id, session: (target.session + 1) >>> 0 || 1 };
    const id = 24 + n;
    let cookie = 1;
    const guesser = Owner.openId(ctl1, "session-guesser", id);
    for (let i = 0; i < SESSION_FREE_REFUSALS; i++) {
      const c = cookie++;
      const st = await guesser.ask(c, () => guesser.send(c, nic, wrong), `${where}: guess ${i}`);
      assert.equal(st, MxStatus.BAD_SESSION, `${where}: guess ${i}: ${mxStatusName(st)}`);
    }
    const locked = cookie++;
    const st = await guesser.ask(locked, () => guesser.send(locked, nic, target), `${where}: locked`);
    assert.equal(st, MxStatus.REJECTED, `${where}: the right session in the lockout: ${mxStatusName(st)}`);
    guesser.close();

    const next = Owner.openId(ctl1, "next-job-rank", id);
    const c1 = cookie++;
    const got = await next.ask(c1, () => next.send(c1, nic, target), `${where}: newcomer`);
    assert.equal(got, MxStatus.SUCCESS, `${where}: the newcomer's send from id ${id}: ${mxStatusName(got)}`);
    next.close();

    const again = Owner.openId(ctl1, "session-guesser", id);
    const c2 = cookie++;
    const back = await again.ask(c2, () => again.send(c2, nic, target), `${where}: reopened`);
    assert.equal(back, MxStatus.REJECTED, `${where}: the guesser, reopened: ${mxStatusName(back)}`);
    again.close();
    target.drain();
    target.close();
  }
});

test("a peer NIC naming a new session for every guess meets the endpoint id's own lockout", async () => {
  const FAKE = 17;
  const replies: Uint8Array[] = [];
  const { server, links } = await listenAsPeer(FAKE, (f) => {
    if ((getWord(f, 0) & 0xff) === FrameType.ConnectReply) replies.push(Uint8Array.from(f));
  });
  try {
    await nic1.attachLink({ kind: "tcp", host: HOST, port: server.port, timeoutMs: 2000, key: LINK_KEY });
    await until(() => links.length === 1, "the fake's link");
    const target = Owner.open(ctl1, "target", 0x600d);
    const ask = (cookie: number, requester: number, session: number, key: number) => {
      const f = new Uint8Array(FRAME_HEADER_BYTES);
      initFrame(f, FrameType.ConnectRequest, 0);
      setWord(f, F_SRC_NIC, FAKE);
      setWord(f, F_DEST_NIC, 1);
      setWord(f, F_SRC_ENDPOINT, requester);
      setWord(f, F_SRC_SESSION, session);
      setWord(f, F_DEST_ENDPOINT, target.id);
      setWord(f, F_COOKIE, cookie);
      setWord(f, F_CONNECT_KEY, key);
      links[0].send(f);
    };
    const GUESSES = CONNECT_ID_FREE_FAILS + 8;
    // Endpoint 3 of the fake NIC, "reopened" before every guess.
    for (let i = 0; i < GUESSES; i++) ask(100 + i, 3, 1000 + i, 0xbad000 + i);
    ask(500, 3, 5000, 0x600d);
    // Another endpoint of that NIC, with the right key: served.
    ask(600, 4, 7, 0x600d);
    await until(() => replies.length === GUESSES + 2, "every CONNECT answered");
    const byCookie = new Map(replies.map((f) => [getWord(f, F_COOKIE), getWord(f, F_STATUS)]));
    for (let i = 0; i < GUESSES; i++) {
      const want = i < CONNECT_ID_FREE_FAILS ? MxStatus.BAD_KEY : MxStatus.REJECTED;
      const st = byCookie.get(100 + i) ?? -1;
      assert.equal(st, want, `guess ${i}: ${mxStatusName(st)}, expected ${mxStatusName(want)}`);
    }
    assert.equal(byCookie.get(500), MxStatus.REJECTED, "the right key from yet another session");
    assert.equal(byCookie.get(600), MxStatus.SUCCESS, "another endpoint id of that NIC");
    target.close();
  } finally {
    await nic1.detachLink(FAKE).catch(() => {});
    await server.close();
  }
});

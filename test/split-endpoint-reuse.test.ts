/**
 * An endpoint id outlives its endpoint (the reviewer's PoC): a NIC context is free again when
 * its domain dies and any guest may open it by number; a split-path id comes back with its
 * domain id. netback steered MX frames by id alone, so the id's next owner — a guest of another
 * job — got what the dead rank's peers still sent it (their sessions in the headers), heard a
 * late CONNECT's job key, and with a heard session connected to a peer with no key and
 * injected messages. netback now delivers only frames naming the current opening's session,
 * NACKs the others, and checks a CONNECT's key to a NIC context itself (src/netback/mx-steer.ts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Host } from "../src/host/host.js";
import {
  type MxSteerHost,
  MxSteering,
  type NicContext,
  STEER_ANSWER,
  STEER_REFUSE,
  STEER_REJECT,
} from "../src/netback/mx-steer.js";
import { CONNECT_FREE_FAILS } from "../src/nic/connect-throttle.js";
import { MxStatus } from "../src/nic/status.js";
import {
  ETH_HEADER_BYTES,
  frameWord,
  MXOE_HEADER_BYTES,
  MXOE_MAGIC,
  MXOE_VERSION,
  MxoeType,
  MxoeWord,
  SPLIT_ENDPOINT_BASE,
  SPLIT_ENDPOINTS_PER_DOMAIN,
} from "../src/xen/io/mxoe.js";
import { parseMac, vifMac } from "../src/xen/io/netif.js";
import { nextMessage } from "./helpers/messages.js";

const FIXTURE = new URL("./fixtures/guests/endpoint-reuse.js", import.meta.url);
type Addr = { nic: number; endpoint: number; session: number; path: string };

test("a guest of another job that opens a dead rank's NIC context id hears none of its frames, no key, and cannot connect to its peer; the peer learns the rank is gone", async () => {
  const host = await Host.start({});
  try {
    const start = (role: string, fastPath: boolean, extra: Record<string, unknown> = {}) =>
      host.startGuest({
        module: FIXTURE,
        args: { role, ...extra },
        name: role,
        pages: 2048,
        maxHeapMb: 128,
        fastPath,
      });
    const victim = await start("victim", false);
    const [va] = (await nextMessage(victim)) as [Addr];
    const w = await start("w", true);
    const [wa] = (await nextMessage(w)) as [Addr];
    assert.equal(va.path, "split");
    assert.ok(wa.endpoint < SPLIT_ENDPOINT_BASE, "rank w has a NIC context");
    victim.send({ nic: wa.nic, endpoint: wa.endpoint });
    w.send({ nic: va.nic, endpoint: va.endpoint });
    await nextMessage(victim); // paired: they talked over Ethernet
    await w.destroy(); // rank w dies; its NIC context is free
    const attacker = await start("attacker", true, { target: wa.endpoint });
    const [aa] = (await nextMessage(attacker)) as [Addr];
    assert.equal(aa.endpoint, wa.endpoint, "the attacker holds rank w's id");
    const s0 = host.netStats().bridge;
    victim.send("go");
    await nextMessage(victim); // sent to rank w, and a late rank connected to it
    attacker.send("connect");
    const ae = await attacker.exited;
    victim.send("stop");
    const ve = await victim.exited;
    assert.equal(ae.state, "shutdown", ae.error?.stack);
    assert.equal(ve.state, "shutdown", ve.error?.stack);
    assert.deepEqual(
      ae.result,
      { seen: [], keysHeard: [], connect: "no session heard", send: undefined },
      "the attacker heard nothing meant for rank w",
    );
    assert.deepEqual(
      ve.result,
      { wDead: true, lateConnect: "MX_BAD_CONNECTION_KEY", injected: null },
      "the victim learned rank w is gone (a NACK), the late connect was refused, nothing injected",
    );
    const s1 = host.netStats().bridge;
    assert.ok(s1.mxStale > s0.mxStale, "the frames for rank w were refused (stale) and counted");
    assert.ok(s1.mxBadConnects > s0.mxBadConnects, "the late CONNECT was answered by netback");
  } finally {
    await host.stop();
  }
});

const NIC = 5;
/** Domain d's vif is bridge port 10 + d, while d is in `live` (steering()). */
const port = (d: number) => 10 + d;
/** Domain d's vif MAC on this host (the toolstack's): what its peers address it by. */
const macOf = (d: number) => [...(parseMac(vifMac(NIC, d)) as Uint8Array)];
const splitEp = (domid: number) => SPLIT_ENDPOINT_BASE + domid * SPLIT_ENDPOINTS_PER_DOMAIN;

interface Hdr {
  type: number;
  dstEp: number;
  dstSession: number;
  srcEp: number;
  srcSession: number;
  key?: number;
  id?: number;
}
function frame(h: Hdr, dstMac = macOf(2)): Uint8Array {
  const f = new Uint8Array(ETH_HEADER_BYTES + MXOE_HEADER_BYTES);
  f.set(dstMac, 0);
  f.set([0x02, 0, 0, 0, 0, 0x11], 6);
  const v = new DataView(f.buffer, ETH_HEADER_BYTES);
  const put = (w: number, x: number) => v.setUint32(4 * w, x >>> 0, true);
  put(MxoeWord.magic, (MXOE_MAGIC << 16) | (MXOE_VERSION << 8) | h.type);
  put(MxoeWord.dstNic, NIC);
  put(MxoeWord.dstEp, h.dstEp);
  put(MxoeWord.dstSession, h.dstSession);
  put(MxoeWord.srcNic, NIC);
  put(MxoeWord.srcEp, h.srcEp);
  put(MxoeWord.srcSession, h.srcSession);
  put(MxoeWord.offset, h.key ?? 0);
  put(MxoeWord.id, h.id ?? 0);
  return f;
}

function steering() {
  const contexts = new Map<number, NicContext>();
  const live = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const sh: MxSteerHost = {
    nicId: NIC,
    uplinkPort: -1,
    nicContext: (ep) => contexts.get(ep),
    portOfDomain: (d) => (live.has(d) ? port(d) : -1),
    domainOfPort: (p) => (live.has(p - 10) ? p - 10 : undefined),
  };
  const steer = new MxSteering(sh, () => 1_000);
  const send = (from: number, f: Uint8Array) => steer.route(port(from), f, f.length);
  return { contexts, steer, send, live };
}

test("netback gives a NIC context's frames only to the opening they name: the old one's get a NACK, a CONNECT's key is checked before it reaches the owner", () => {
  const { contexts, steer, send, live } = steering();
  const VICTIM = splitEp(1);
  const CTX = 3;
  // Rank w (domain 2) opened context 3 with the job key; the victim (domain 1) talked to it.
  contexts.set(CTX, { domid: 2, session: 0x5001, key: 0x1111 });
  const data = (to: number) =>
    frame({ type: MxoeType.Eager, dstEp: CTX, dstSession: to, srcEp: VICTIM, srcSession: 0x7001 });
  assert.equal(send(1, data(0x5001)), port(2), "rank w gets what names it");
  // w dies (its vif goes); domain 3 (another job) opens context 3.
  live.delete(2);
  contexts.set(CTX, { domid: 3, session: 0x6001, key: 0x2222 });
  const stale = data(0x5001);
  assert.equal(send(1, stale), STEER_ANSWER, "what names rank w's opening does not reach the newcomer");
  steer.answerInPlace(stale);
  // The answer: the NACK rank w's endpoint would send, from the MAC the victim knows it by.
  const w = (i: number) => frameWord(stale, i);
  assert.deepEqual(
    [
      w(MxoeWord.magic) & 0xff,
      w(MxoeWord.dstEp),
      w(MxoeWord.dstSession),
      w(MxoeWord.srcEp),
      w(MxoeWord.srcSession),
      w(MxoeWord.msgSeq),
    ],
    [MxoeType.Nack, VICTIM, 0x7001, CTX, 0x5001, MxStatus.ENDPOINT_CLOSED],
  );
  assert.deepEqual([...stale.subarray(0, 12)], [2, 0, 0, 0, 0, 0x11, ...macOf(2)]);
  // Nor answered: a stale frame sent to a live neighbour's MAC (domain 4) or another host's
  // vif address. A NACK from either taught the bridges on its way that address behind this
  // host: a guest moved its neighbour's unicast traffic onto the wire.
  assert.equal(
    send(
      1,
      frame(
        { type: MxoeType.Eager, dstEp: CTX, dstSession: 0x5001, srcEp: VICTIM, srcSession: 0x7001 },
        macOf(4),
      ),
    ),
    STEER_REFUSE,
  );
  assert.equal(
    send(
      1,
      frame({ type: MxoeType.Eager, dstEp: CTX, dstSession: 0x5001, srcEp: VICTIM, srcSession: 0x7001 }, [
        ...(parseMac(vifMac(NIC + 1, 2)) as Uint8Array),
      ]),
    ),
    STEER_REFUSE,
  );
  // Not answered: a broadcast, a NACK, a CONNECT_REPLY naming the old opening (no loops).
  assert.equal(send(1, data(0x5001).fill(0xff, 0, 6)), STEER_REFUSE);
  for (const type of [MxoeType.Nack, MxoeType.ConnectReply])
    assert.equal(
      send(1, frame({ type, dstEp: CTX, dstSession: 0x5001, srcEp: VICTIM, srcSession: 0x7001 })),
      STEER_REFUSE,
    );
  assert.equal(send(1, data(0x6001)), port(3), "the newcomer gets what names its own opening");
  assert.equal(steer.counters.stale, 6);

  // A late CONNECT for rank w carries the job key: it is not the newcomer's, so netback answers.
  const connect = (key: number, session = 0, id = 1) =>
    frame({
      type: MxoeType.Connect,
      dstEp: CTX,
      dstSession: session,
      srcEp: VICTIM,
      srcSession: 0x7001,
      key,
      id,
    });
  const late = connect(0x1111);
  assert.equal(send(1, late), STEER_ANSWER, "the job key does not reach the newcomer");
  steer.answerInPlace(late);
  const r = (i: number) => frameWord(late, i);
  assert.deepEqual(
    [
      r(MxoeWord.magic) & 0xff,
      r(MxoeWord.dstEp),
      r(MxoeWord.dstSession),
      r(MxoeWord.srcEp),
      r(MxoeWord.srcSession),
      r(MxoeWord.id),
      r(MxoeWord.msgSeq),
    ],
    [MxoeType.ConnectReply, VICTIM, 0x7001, CTX, 0, 1, MxStatus.BAD_KEY],
    "BAD_KEY to the asker, from the endpoint asked, no session",
  );
  assert.equal(send(1, connect(0x2222, 0, 2)), port(3), "the owner's own key reaches it");
  assert.equal(send(1, connect(0, 0x5001, 3)), STEER_ANSWER, "resolving rank w's session: BAD_SESSION");
  assert.equal(send(1, connect(0, 0x6001, 4)), port(3), "resolving the owner's session reaches it");
  assert.equal(steer.counters.badConnects, 2);
  // netback's answers count as the owner's would: a guesser (domain 4) is locked out.
  const guess = (key: number, id: number) =>
    send(
      4,
      frame({
        type: MxoeType.Connect,
        dstEp: CTX,
        dstSession: 0,
        srcEp: splitEp(4),
        srcSession: 0x8004,
        key,
        id,
      }),
    );
  for (let id = 0; id < CONNECT_FREE_FAILS; id++) assert.equal(guess(0x9000 + id, id), STEER_ANSWER);
  assert.equal(guess(0x2222, 99), STEER_REJECT, "the right key, in the lockout, does not reach the owner");
});

test("a split-path endpoint's frames reach only the opening its domain last sent as; the next domain given its id gets none of the old one's", () => {
  const { steer, send } = steering();
  const A = splitEp(1);
  const B = splitEp(2);
  const toB = (session: number, type: number = MxoeType.Eager) =>
    frame({ type, dstEp: B, dstSession: session, srcEp: A, srcSession: 0x7001 });
  // Before B's domain sent as B, no session is its: only a CONNECT (naming none) reaches it.
  assert.equal(send(1, toB(0x5002)), STEER_ANSWER);
  assert.equal(send(1, toB(0, MxoeType.Connect)), port(2));
  // B answers (SUCCESS: its session); the peer's frames naming it reach B.
  const reply = frame({
    type: MxoeType.ConnectReply,
    dstEp: A,
    dstSession: 0x7001,
    srcEp: B,
    srcSession: 0x5002,
  });
  assert.equal(send(2, reply), port(1));
  assert.equal(send(1, toB(0x5002)), port(2));
  // A refusal (session 0) or a NACK for an old opening does not change B's session.
  send(2, frame({ type: MxoeType.ConnectReply, dstEp: A, dstSession: 0x7001, srcEp: B, srcSession: 0 }));
  send(2, frame({ type: MxoeType.Nack, dstEp: A, dstSession: 0x7001, srcEp: B, srcSession: 0x4444 }));
  assert.equal(send(1, toB(0x5002)), port(2));
  // Domain 2 dies (its vifs go) and a later domain is given id 2 and opens B again.
  steer.forget(2);
  assert.equal(
    send(1, toB(0x5002)),
    STEER_ANSWER,
    "the old opening's frames reach the newcomer before it sent",
  );
  send(2, frame({ type: MxoeType.Connect, dstEp: A, dstSession: 0, srcEp: B, srcSession: 0x6002 }));
  assert.equal(send(1, toB(0x5002)), STEER_ANSWER, "nor after");
  assert.equal(send(1, toB(0x6002)), port(2), "its own opening's do");
  assert.equal(send(1, toB(0, MxoeType.Connect)), port(2), "a CONNECT naming no session still finds it");
  assert.equal(steer.counters.stale, 3);
});

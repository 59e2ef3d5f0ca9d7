/**
 * A completion the NIC owes an endpoint is never dropped (src/nic/events.ts; Open-MX's rule: the
 * library reserves an event slot for each expected event before it submits the request). Each
 * descriptor the NIC takes reserves room for its completion in the endpoint's event backlog
 * (EndpointContext.owed, shown as the endpoint counter completions_owed), and unexpected events
 * — RECVs, myrback's DRIVER events, DRIVER_BACKLOG of those at most — go into the backlog only
 * while the held events and the owed completions stay below its line.
 *
 * Before, nothing kept room back for completions: the NIC dropped an event once an endpoint's
 * queue (EQ_ENTRIES) and backlog (EVENT_BACKLOG) were full, and counted it, nothing else.
 *   - A co-resident guest of the same job (it knows the victim's key) that opened an endpoint,
 *     connected it to the victim and closed it, in a loop, filled the victim's queue and
 *     backlog with DRIVER events (CONNECT, DISCONNECT) in ~770 cycles while the victim
 *     computed; the SEND_DONE of a send the victim had outstanding was then dropped, and its
 *     request never ended, neither SUCCESS nor error. Meanwhile every other domain's connect
 *     to the victim failed MX_CONNECTION_FAILED. Now the hostile's DRIVER events are refused
 *     past DRIVER_BACKLOG, myrback connects such a pair through the NIC instead, and the
 *     victim's completion arrives.
 *   - An honest rank that computes while messages arrive for it had RECVs fill the backlog to
 *     its reserve (8 entries) and lost every completion of its own outstanding sends and pulls
 *     past eight. Now RECVs stop where the owed completions begin (the deliveries wait in the
 *     NIC's delivery queue, as they did at the reserve), and every completion arrives.
 *
 * Both check that nothing is dropped (event_drops) and that, once the traffic is over, the NIC
 * owes the endpoint nothing (completions_owed 0): a reservation that leaked would stall the
 * endpoint's queue for good once enough had leaked.
 *
 * A DRIVER event an endpoint has no room for is not written: a CONNECT's pair talks through the
 * NIC, and a DISCONNECT is learnt later. The last test is the library's side of that: a peer
 * that closed and reopened meanwhile is not mistaken for its former incarnation.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Host } from "../src/host/host.js";
import { Channels } from "../src/mx/channel-path.js";
import { CHANNEL_BYTES, closeChannelLanes } from "../src/myrixen/channel-abi.js";
import {
  DRIVER_EVENT_CONNECT,
  DRIVER_EVENT_DISCONNECT,
  type MxDriver,
  MxDriverError,
} from "../src/myrixen/driver-abi.js";
import type { NicInfo, RegisterRegionReply } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
// A namespace: the test also runs against the code before the fix (which had no DRIVER_BACKLOG).
import * as endpoints from "../src/nic/endpoints.js";
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
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import {
  Access,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_REGION,
  DFLAG_REMOTE,
  E_COOKIE,
  EQ_ENTRIES,
  EventType,
  Opcode,
  SEND_MAX,
  SQ_ENTRIES,
  W_RQ_CONS,
  W_SQ_PROD,
} from "../src/nic/window.js";
import type { Domain } from "../src/xen/hypervisor.js";
import type { EvqAddress, FloodReport, ThirdResult, VictimResult } from "./fixtures/guests/evq-flood.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { nextMessage } from "./helpers/messages.js";
import { parts } from "./helpers/mx-parts.js";
import { control, HOST, listenAsPeer, openEndpoint, WindowOwner } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const FLOODER = new URL("./fixtures/guests/evq-flood.js", import.meta.url);

async function next<T>(d: Domain): Promise<T> {
  const [m] = await nextMessage(d);
  return m as T;
}

test("a co-resident guest that connects to a computing victim and closes, in a loop, costs it no completion; a third domain still connects", async (t) => {
  const host = await Host.start({});
  try {
    const start = (role: string) =>
      host.startGuest({ module: FLOODER, args: { role }, name: `evq-${role}`, pages: 1024 });
    const victim = await start("victim");
    const v = await next<EvqAddress>(victim);
    const hostile = await start("hostile");
    const r = await next<EvqAddress>(hostile);
    const third = await start("third");
    await next(third);
    const before = host.nic.counters();

    // Most of the victim's queue is DRIVER events (1400 before: no connect failed yet).
    hostile.send({ flood: 700, victim: v });
    const phase1 = await next<FloodReport>(hostile);

    // The victim's one outstanding request: a SEND to R, held by the NIC (R has no room).
    victim.send(r);
    assert.equal(await next(victim), "posted");
    await until(
      () => host.nic.counters().endpoints[r.endpoint].delivery_queued > 0,
      "the victim's SEND held for R",
    );
    const owedWhileHeld = host.nic.counters().endpoints[v.endpoint].completions_owed;

    // More cycles: before, the victim's backlog was full after ~70 more (a connect failed then).
    hostile.send({ flood: 100, victim: v });
    const phase2 = await next<FloodReport>(hostile);

    // A third domain connects to the victim while its queue is full.
    third.send(v);
    const thirdEnd = await third.exited;
    const thirdResult = thirdEnd.result as ThirdResult;

    // R makes room: the held SEND is delivered, and its SEND_DONE goes to the victim.
    hostile.send({ release: true });
    assert.equal(await next(hostile), "released");
    await until(
      () => host.nic.counters().endpoints[r.endpoint].recvs > 0,
      "the victim's SEND delivered to R",
    );
    victim.send("drain");
    const got = await next<VictimResult>(victim);
    const after = host.nic.counters();
    const vc = after.endpoints[v.endpoint];
    const refusedByBackend = host.backendStats().driverEventsRefused;
    victim.send("stop");
    hostile.send({ stop: true });
    await Promise.all([victim.exited, hostile.exited]);

    const story =
      `hostile: ${phase1.cycles} + ${phase2.cycles} cycles (${phase1.channels + phase2.channels} with a channel)` +
      `${phase1.failed || phase2.failed ? `, then: ${phase1.failed || phase2.failed}` : ""}; ` +
      `victim read ${JSON.stringify(got.counts)}; its counters: event_backlog ${vc.event_backlog}, ` +
      `event_drops ${vc.event_drops}, driver_refused ${vc.driver_refused}`;
    t.diagnostic(story);
    assert.equal(
      got.sendStatus,
      MxStatus.SUCCESS,
      `the victim's SEND_DONE: ${got.sendStatus < 0 ? "never came" : mxStatusName(got.sendStatus)} (${story})`,
    );
    assert.equal(after.global.event_drops - before.global.event_drops, 0, `no event dropped (${story})`);
    assert.equal(vc.event_drops, 0, `none of the victim's dropped (${story})`);
    assert.ok(
      thirdResult?.ok === true,
      `the third domain's connect to the victim: ${thirdResult?.error || thirdEnd.state} (${story})`,
    );
    assert.equal(thirdResult.channel, false, "with the victim's queue full, the pair talks through the NIC");
    // The flood did reach the victim's bound: its connects went on, through the NIC.
    assert.equal(phase1.failed + phase2.failed, "", `every hostile connect succeeded (${story})`);
    assert.ok(vc.driver_refused > 0, `the hostile's DRIVER events were refused past the bound (${story})`);
    assert.ok(refusedByBackend > 0, "myrback counted the DRIVER events the victim had no room for");
    assert.ok(
      (got.counts.Driver ?? 0) <= EQ_ENTRIES + endpoints.DRIVER_BACKLOG,
      `DRIVER events held for the victim: ${got.counts.Driver} (at most a full queue and ${endpoints.DRIVER_BACKLOG})`,
    );
    // Owed while the send was held, and nothing once it completed.
    assert.equal(owedWhileHeld, 1, "the held SEND's completion was owed");
    assert.equal(vc.completions_owed, 0, "nothing owed once the traffic is over");
  } finally {
    await host.stop();
  }
});

// ---- an honest rank (a NIC driven from this thread, and a fake peer NIC for its remote pulls) ----

const NIC_ID = 1;
const PEER_NIC = 9;
const SENDS = 16;
const PULLS = 8;
/** Each remote pull's length: its deadline (window.ts pullDeadlineMs) is seconds away. */
const PULL_LEN = 256 * 1024;
const PULL_COOKIE = 1000;

/** An owner that records completions by cookie (ERROR: -1) and counts RECVs. */
class Owner extends WindowOwner {
  recvs = 0;
  protected onEvent(type: number, base: number): boolean {
    const t = type & 0xffff;
    if (t === EventType.Recv) {
      this.recvs++;
      return false;
    }
    if (t !== EventType.SendDone && t !== EventType.PullDone && t !== EventType.Error) return false;
    this.byCookie.set(this.w[base + E_COOKIE], t === EventType.Error ? -1 : type >>> 16);
    return true;
  }
  /** Posts a descriptor: its words by index. */
  post(words: Record<number, number>): void {
    this.postDesc(words);
  }
  send(cookie: number, dest: { id: number; session: number }): void {
    this.postDesc({
      [D_OPCODE]: Opcode.Send,
      [D_COOKIE]: cookie,
      [D_DEST_NIC]: NIC_ID,
      [D_DEST_ENDPOINT]: dest.id,
      [D_DEST_SESSION]: dest.session,
    });
  }
}

/** A pull request the fake peer holds. */
interface Held {
  id: number;
  reqEp: number;
  reqSession: number;
  srcEp: number;
  srcSession: number;
  len: number;
  sent: number;
}

test("an honest rank that computes while messages pour in gets the completion of every send and pull it had outstanding", async (t) => {
  const nic = await NicDevice.start({ nicId: NIC_ID });
  const held = new Map<number, Held>();
  /** The PULL_REPLY carrying `n` bytes of `h` from where it is. */
  const reply = (h: Held, n: number): boolean => {
    const f = new Uint8Array(FRAME_HEADER_BYTES + n);
    initFrame(f, FrameType.PullReply, n);
    setWord(f, F_COOKIE, h.id);
    setWord(f, F_SRC_NIC, PEER_NIC);
    setWord(f, F_SRC_ENDPOINT, h.srcEp);
    setWord(f, F_SRC_SESSION, h.srcSession);
    setWord(f, F_DEST_NIC, NIC_ID);
    setWord(f, F_DEST_ENDPOINT, h.reqEp);
    setWord(f, F_DEST_SESSION, h.reqSession);
    setWord(f, F_PULL_OFFSET, h.sent);
    setWord(f, F_PULL_LENGTH, h.len);
    f.fill(0x5a, FRAME_HEADER_BYTES);
    if (!peer.links.at(-1)?.send(f)) return false;
    h.sent += n;
    return true;
  };
  // A peer NIC that takes the pulls and keeps each alive with a byte now and then (less than
  // WIRE_TIMEOUT_MS apart) until the test lets it serve them.
  const peer = await listenAsPeer(PEER_NIC, (f) => {
    if ((getWord(f, 0) & 0xff) !== FrameType.PullRequest || getWord(f, F_STATUS) !== 0) return;
    const id = getWord(f, F_COOKIE);
    held.set(id, {
      id,
      reqEp: getWord(f, F_SRC_ENDPOINT),
      reqSession: getWord(f, F_SRC_SESSION),
      srcEp: getWord(f, F_DEST_ENDPOINT),
      srcSession: getWord(f, F_DEST_SESSION),
      len: getWord(f, F_PULL_LENGTH),
      sent: 0,
    });
  });
  const trickle = setInterval(() => {
    for (const h of held.values()) if (h.sent + 1 < h.len) reply(h, 1);
  }, 400);
  const ctl = control(nic);
  try {
    await nic.attachLink({ kind: "tcp", host: HOST, port: peer.server.port, timeoutMs: 2000, key: LINK_KEY });
    await until(() => ctl.call<NicInfo>({ op: "info" }).links.includes(PEER_NIC), "the link to the peer NIC");

    const a = new Owner(ctl, openEndpoint(ctl, "domain 5 (the honest rank)"));
    const r = new Owner(ctl, openEndpoint(ctl, "domain 6 (a receiver that makes no room)"));
    const b = new Owner(ctl, openEndpoint(ctl, "domain 7 (sends to the rank)"));
    // R's receive consumer ahead of the NIC's producer: nothing fits, every delivery is held.
    Atomics.store(r.w, W_RQ_CONS, 1);
    const dst = ctl.call<RegisterRegionReply>({
      op: "register_region",
      endpointId: a.id,
      memory: new SharedArrayBuffer(PULLS * PULL_LEN),
      runs: [{ offset: 0, length: PULLS * PULL_LEN }],
      access: Access.LocalWrite,
    });
    const before = nic.counters();

    // The rank's outstanding requests: sends R holds, pulls the peer holds.
    for (let i = 0; i < SENDS; i++) a.send(i + 1, r);
    for (let i = 0; i < PULLS; i++)
      a.post({
        [D_OPCODE]: Opcode.Pull | (DFLAG_REMOTE << 16),
        [D_COOKIE]: PULL_COOKIE + i,
        [D_SRC_REGION]: 0,
        [D_SRC_KEY]: 1,
        [D_DST_REGION]: dst.regionId,
        [D_DST_OFFSET]: i * PULL_LEN,
        [D_LENGTH]: PULL_LEN,
        [D_DEST_NIC]: PEER_NIC,
        [D_DEST_ENDPOINT]: 0,
        [D_DEST_SESSION]: 0,
      });
    await until(
      () => a.queued === 0 && held.size === PULLS && nic.counters().endpoints[r.id].delivery_queued >= SENDS,
      "the rank's sends held for R and its pulls at the peer",
    );
    const owedWhileOut = nic.counters().endpoints[a.id].completions_owed;

    // The rank computes (reads no event) while B's messages pour in: more than its queue, its
    // backlog and its delivery queue hold.
    const total = EQ_ENTRIES + endpoints.EVENT_BACKLOG + endpoints.DELIVERY_QUEUE + 64;
    let posted = 0;
    await until(
      () => {
        b.drain();
        while (posted < total && b.queued < SQ_ENTRIES) b.send(100_000 + posted++, a);
        return posted === total && b.queued === 0;
      },
      "B's messages taken",
      10_000,
      1,
    );
    await until(
      () => nic.counters().endpoints[a.id].delivery_rejected > before.endpoints[a.id].delivery_rejected,
      "the rank's receive path full (B's messages refused)",
    );
    const flooded = nic.counters().endpoints[a.id];

    // R makes room and the peer serves the pulls: every completion is due now, into the backlog.
    Atomics.store(r.w, W_RQ_CONS, 0);
    Atomics.notify(r.w, W_SQ_PROD);
    clearInterval(trickle);
    for (const h of held.values())
      while (h.sent < h.len) if (!reply(h, Math.min(SEND_MAX, h.len - h.sent))) await sleep(2); // the link pushes back
    await until(
      () =>
        nic.counters().endpoints[r.id].recvs - before.endpoints[r.id].recvs >= SENDS &&
        nic.counters().endpoints[a.id].pull_bytes - before.endpoints[a.id].pull_bytes >= PULLS * PULL_LEN,
      "R's deliveries and the pull replies",
    );
    await sleep(100);

    // The rank reads its events: each of its requests ended.
    const want = [
      ...Array.from({ length: SENDS }, (_, i) => i + 1),
      ...Array.from({ length: PULLS }, (_, i) => PULL_COOKIE + i),
    ];
    const missing = () => want.filter((c) => !a.byCookie.has(c));
    let lastNews = performance.now();
    while (missing().length > 0 && performance.now() - lastNews < 2000) {
      if (a.drain() > 0 || a.recvs > 0) lastNews = performance.now();
      a.recvs = 0;
      await sleep(5);
    }
    const end = nic.counters().endpoints[a.id];
    const story =
      `the rank had ${flooded.recvs - before.endpoints[a.id].recvs} RECVs placed while it computed; ` +
      `event_backlog ${end.event_backlog - before.endpoints[a.id].event_backlog}, event_drops ${end.event_drops}`;
    t.diagnostic(story);
    // The messages did fill the rank's backlog to its line, less the room kept for what it was owed.
    assert.ok(
      flooded.event_backlog - before.endpoints[a.id].event_backlog >=
        endpoints.EVENT_BACKLOG - endpoints.BACKLOG_RESERVE - (SENDS + PULLS),
      `the rank's backlog filled (${story})`,
    );
    assert.deepEqual(missing(), [], `completions that never came (${story})`);
    for (const c of want)
      assert.equal(
        a.byCookie.get(c),
        MxStatus.SUCCESS,
        `request ${c}: ${a.byCookie.get(c) === -1 ? "an ERROR event" : mxStatusName(a.byCookie.get(c)!)}`,
      );
    assert.equal(end.event_drops, 0, `nothing dropped (${story})`);
    assert.equal(owedWhileOut, SENDS + PULLS, "each outstanding request's completion was owed");
    // B's messages held for the rank end too (placed as it reads); then nothing is owed anyone.
    await until(() => {
      a.drain();
      b.drain();
      const c = nic.counters().endpoints;
      return c[a.id].completions_owed === 0 && c[b.id].completions_owed === 0;
    }, "nothing owed once the traffic is over");
    assert.equal(nic.counters().global.event_drops, before.global.event_drops, "no event dropped anywhere");
  } finally {
    clearInterval(trickle);
    await nic.detachLink(PEER_NIC).catch(() => {});
    await peer.server.close();
    await nic.stop();
  }
});

// ---- the library when a DISCONNECT could not be written --------------------------------------

test("a peer that closed and reopened while the rank's queue was full (no DISCONNECT came): its new channel's CONNECT fails the stale partner first", () => {
  const rank = parts();
  const channels = new Channels(rank);
  /** What myrback's acceptChannel hands over for channel `id` of (0, 5) in `session`; closed: refused. */
  const offer = (id: number, session: number, channel = new SharedArrayBuffer(CHANNEL_BYTES)) => {
    (rank.driver as unknown as { acceptChannel: MxDriver["acceptChannel"] }).acceptChannel = (
      _ep,
      channelId,
    ) => {
      if (channelId !== id)
        throw new MxDriverError(
          "MX_CONNECTION_FAILED",
          `channel ${channelId} does not exist (or was closed)`,
        );
      return {
        channelId,
        channel,
        side: 0,
        peerIntr: new SharedArrayBuffer(4096),
        peerNic: 0,
        peerEndpoint: 5,
        peerSession: session,
      };
    };
    return channel;
  };

  // The rank knew endpoint (0, 5) in session 111, through the NIC, some messages in. It closed
  // (the DISCONNECT was refused: the rank's queue was full), opened again in session 222 and
  // connected: a channel.
  const stale = rank.partners.add(0, 5, 111);
  stale.sendSeq = 2;
  stale.recvSeq = 3;
  const first = offer(9, 222);
  channels.onDriverEvent(DRIVER_EVENT_CONNECT, 9, 0, 5, 222);
  assert.equal(stale.dead, "the peer endpoint was reopened", "the former incarnation is failed");
  const fresh = rank.partners.get(0, 5)!;
  assert.notEqual(fresh, stale, "a fresh partner for the new session");
  assert.deepEqual(
    [fresh.session, fresh.channel?.channelId, fresh.sendSeq, fresh.recvSeq],
    [222, 9, 0, 0],
    "the new channel, its sequences from 0",
  );

  // An older incarnation's CONNECT, read late (its channel is gone): nothing changes.
  channels.onDriverEvent(DRIVER_EVENT_CONNECT, 8, 0, 5, 111);
  assert.equal(fresh.dead, undefined, "a stale CONNECT fails no one");

  // The same session: its channel released (myrback closed its lanes; the DISCONNECT refused
  // again), then connected anew: the closed channel is not kept over the new one.
  closeChannelLanes(first);
  offer(10, 222);
  channels.onDriverEvent(DRIVER_EVENT_CONNECT, 10, 0, 5, 222);
  assert.notEqual(fresh.dead, undefined, "the partner on the closed channel is failed");
  assert.equal(rank.partners.get(0, 5)?.channel?.channelId, 10, "the new channel is taken");

  // And a live channel is kept: a CONNECT for it again changes nothing.
  const now = rank.partners.get(0, 5)!;
  channels.onDriverEvent(DRIVER_EVENT_CONNECT, 10, 0, 5, 222);
  assert.equal(rank.partners.get(0, 5), now);
  assert.equal(now.dead, undefined);
});

test("a DISCONNECT for a peer through the NIC fails only the incarnation it names: one read after a reconnect to the reopened endpoint leaves the new one be", () => {
  const rank = parts();
  const channels = new Channels(rank);
  // The rank talked to (0, 5) in session 111 through the NIC (no channel); it closed, opened
  // again in session 222, and the rank connected to it anew before reading its queue, where
  // the DISCONNECT for session 111 waited.
  const old = rank.partners.add(0, 5, 111);
  rank.partners.fail(old, "the peer endpoint was reopened", MxStatus.ENDPOINT_CLOSED);
  const fresh = rank.partners.add(0, 5, 222);
  channels.onDriverEvent(DRIVER_EVENT_DISCONNECT, 0xffffffff, 0, 5, 111);
  assert.equal(fresh.dead, undefined, "the stale DISCONNECT fails no live peer");
  channels.onDriverEvent(DRIVER_EVENT_DISCONNECT, 0xffffffff, 0, 5, 222);
  assert.notEqual(fresh.dead, undefined, "its own incarnation's DISCONNECT fails it");
});

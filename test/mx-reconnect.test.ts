/**
 * mx_disconnect, then mx_connect to the same co-resident peer again, with two real guests.
 * The disconnecting side closes the channel's lanes as it releases it; myrback used to hand
 * the same, closed, channel back on the reconnect: one message got through, the honest
 * peer's next eager send said SUCCESS and never arrived, then both sides were failed ("the
 * peer endpoint went away"). Now a released channel is dead for both (myrback tells them) and
 * the reconnect gets a fresh one: messages of every size arrive both ways, the honest peer's
 * send to the address that was dropped fails clearly, and the old channels' memory is let go.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { CHANNEL_BYTES } from "../src/myrixen/channel-abi.js";
import { PAGE_SIZE } from "../src/xen/abi.js";
import type { Domain } from "../src/xen/hypervisor.js";
import type { Outcome } from "./fixtures/guests/mx-reconnect.js";
import { nextMessage } from "./helpers/messages.js";

const RECONNECT = new URL("./fixtures/guests/mx-reconnect.js", import.meta.url);
const CYCLES = 4;
const CHANNEL_PAGES = CHANNEL_BYTES / PAGE_SIZE;

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

const OK: Outcome = { code: "MX_STATUS_SUCCESS", reason: undefined };
const GOT: Outcome = { ...OK, intact: true };

/** The next message from `d`. */
async function next<T>(d: Domain): Promise<T> {
  const [m] = await nextMessage(d);
  return m as T;
}

/** Grant mappings `domid` holds now (what it mapped minus what it unmapped). */
function mappings(domid: number): number {
  const c = host.hypervisor.counters(domid);
  return (c.grant_map ?? 0) - (c.grant_unmap ?? 0);
}

function dom0SharedPages(): number {
  const c = host.hypervisor.counters(0);
  return c.mem_shared_alloc - (c.mem_shared_release ?? 0);
}

test("disconnect, then connect to the same peer again: messages of every size arrive both ways, and no lost message is reported sent", async () => {
  const idle = dom0SharedPages();
  const start = (role: string) =>
    host.startGuest({ module: RECONNECT, args: { role }, name: `reconnect-${role}`, pages: 1024 });
  const leaver = await start("leaver");
  const leaverAddr = next(leaver);
  const honest = await start("honest");
  const honestAddr = next(honest);
  const [la, ha] = await Promise.all([leaverAddr, honestAddr]);
  const warm = [next<{ warmed: Outcome }>(leaver), next<{ warmed: Outcome }>(honest)];
  leaver.send(ha);
  honest.send(la);
  for (const w of await Promise.all(warm)) assert.deepEqual(w.warmed, GOT, "the pair works at first");

  const held: number[][] = [];
  for (let c = 0; c < CYCLES; c++) {
    // The honest guest sends a message the leaver will not have received when it leaves.
    const pre = next<{ pre: Outcome }>(honest);
    honest.send("pre");
    const h0 = await pre;
    const left = next<{ first: Outcome }>(leaver);
    leaver.send("leave");
    assert.deepEqual((await left).first, OK, `cycle ${c}: the leaver's first send after reconnecting`);

    // The honest guest has not looked at its endpoint since the leaver left and came back.
    const went = next<{ toOld: Outcome; first: Outcome }>(honest);
    honest.send("go");
    const h1 = await went;
    const honestDone = next<{ sent: Outcome[]; got: Outcome[] }>(honest);
    const collected = next<{ got: Outcome[]; preGot?: Outcome; oldGot?: Outcome; sent: Outcome[] }>(leaver);
    leaver.send("collect");
    const l2 = await collected;
    const h2 = await honestDone;

    // Every send the honest guest saw succeed arrived, intact: the one from before the leaver
    // left (in the channel when it disconnected: taken then), and the one to the dropped
    // address, which fails with a reason (or, had it said SUCCESS, must have arrived).
    assert.deepEqual(h0.pre, OK, `cycle ${c}: the send before the leaver left`);
    assert.deepEqual(l2.preGot, GOT, `cycle ${c}: ... said SUCCESS, so it arrived`);
    if (h1.toOld.code === "MX_STATUS_SUCCESS")
      assert.deepEqual(
        l2.oldGot,
        GOT,
        `cycle ${c}: a send to the old address said SUCCESS, so it must arrive`,
      );
    else {
      assert.equal(l2.oldGot, undefined, `cycle ${c}: a failed send delivered nothing`);
      assert.match(h1.toOld.reason ?? "", /disconnected/, `cycle ${c}: the failure says why`);
    }
    // A send either side saw succeed arrived, intact, whatever else went wrong.
    for (const [j, st] of h2.sent.entries())
      if (st.code === "MX_STATUS_SUCCESS")
        assert.deepEqual(
          l2.got[j],
          GOT,
          `cycle ${c}: the honest guest's send ${j} said SUCCESS: it must arrive`,
        );
    for (const [j, st] of l2.sent.entries())
      if (st.code === "MX_STATUS_SUCCESS")
        assert.deepEqual(h2.got[j], GOT, `cycle ${c}: the leaver's send ${j} said SUCCESS: it must arrive`);
    // And the new connection works: every size, both ways.
    assert.deepEqual(h1.first, GOT, `cycle ${c}: the leaver's message after reconnecting arrived`);
    assert.deepEqual(h2.sent, [OK, OK, OK], `cycle ${c}: the honest guest's sends after reconnecting`);
    assert.deepEqual(l2.got, [GOT, GOT, GOT], `cycle ${c}: ... all arrived, 8 B to 200,000 B`);
    assert.deepEqual(l2.sent, [OK, OK, OK], `cycle ${c}: the leaver's sends`);
    assert.deepEqual(h2.got, [GOT, GOT, GOT], `cycle ${c}: ... all arrived`);

    // The old channel is gone from myrback; neither guest keeps a mapping of it.
    assert.equal(host.backendStats().channels, 1, `cycle ${c}: one channel for the pair`);
    held.push([mappings(leaver.domid), mappings(honest.domid)]);
  }
  for (const h of held) assert.deepEqual(h, held[0], "each guest's mappings stay flat over the cycles");

  leaver.send("stop");
  honest.send("stop");
  const [el, eh] = await Promise.all([leaver.exited, honest.exited]);
  assert.equal(el.state, "shutdown", el.error?.stack);
  assert.equal(eh.state, "shutdown", eh.error?.stack);
  assert.deepEqual(el.result, { channelErrors: 0 });
  assert.deepEqual(eh.result, { channelErrors: 0 });
  // Every channel the pair had (the released ones too) goes back with the guests: what dom0
  // still shares is less than one channel (its pooled response pages).
  const gone = () => dom0SharedPages() < idle + CHANNEL_PAGES;
  await waitFor(() => host.backendStats().deferredGrants === 0 && gone());
  assert.equal(host.backendStats().deferredGrants, 0);
  assert.ok(gone(), `dom0 shares ${dom0SharedPages()} pages (before the pair: ${idle})`);
});

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("a member that disconnects and connects again in a loop does not fill an idle peer's event queue: a third still connects", async () => {
  // Each replaced channel costs the peer a DISCONNECT and a CONNECT event; 900 cycles against
  // a peer that did not look at its endpoint filled its event queue and backlog, and every
  // other domain's connect to it failed (EAGAIN) until it caught up.
  const CHURN = new URL("./fixtures/guests/mx-churn.js", import.meta.url);
  const start = async (role: string) => {
    const d = await host.startGuest({ module: CHURN, args: { role, n: 900 }, pages: 1024, name: role });
    return { d, addr: await next<{ nic: number; endpoint: number }>(d) };
  };
  const idle = await start("idle");
  const churn = await start("churn");
  const third = await start("third");
  for (const g of [idle, churn, third]) g.d.send(idle.addr);
  churn.d.send("go");
  const churned = await next<{ errors: number; first?: string }>(churn.d);
  third.d.send("go");
  const sent = await next<{ connect: string; sent?: string[] }>(third.d);
  idle.d.send("go");
  const got = await next<{ got: string[] }>(idle.d);
  assert.equal(churned.errors, 0, `the churner's own connects failed: ${churned.first}`);
  assert.deepEqual(sent, { connect: "ok", sent: ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"] });
  assert.deepEqual(got.got, ["MX_STATUS_SUCCESS 7,0", "MX_STATUS_SUCCESS 7,1"]);
  for (const g of [idle, churn, third]) g.d.send("stop");
  for (const g of [idle, churn, third]) assert.equal((await g.d.exited).state, "shutdown");
});

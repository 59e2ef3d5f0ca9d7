/**
 * Mid-size messages to a co-resident peer go eager through the channel (records.ts
 * CHANNEL_EAGER_BYTES): one hand-off instead of a rendezvous's three, from heap buffers, also
 * when the receive is posted late and for issend; larger ones stay rendezvous; and a threshold
 * the user set holds on the channel too. Two real guests on one host.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { ETHER_EAGER_MAX } from "../src/mx/ether-path.js";
import { CHANNEL_EAGER_BYTES } from "../src/mx/records.js";
import { LANE_BYTES } from "../src/myrixen/channel-abi.js";
import { SEND_MAX } from "../src/nic/window.js";
import { nextMessage } from "./helpers/messages.js";

const MID = new URL("./fixtures/guests/mx-mid.js", import.meta.url);
/** The fixture's window of 60,000-byte messages sent at once (mx-mid.ts WINDOW). */
const WINDOW = 24;

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 1 });
});
after(async () => {
  await host.stop();
});

type Obs = {
  path: string;
  codes: string[];
  intact: boolean[];
  probedFirst?: boolean;
  counters: Record<string, number>;
  /** a's window sends still waiting for lane room when it had made them all. */
  queued?: number;
};

async function pair(threshold?: number): Promise<[Obs, Obs]> {
  const start = (role: string) =>
    host.startGuest({ module: MID, args: { role, threshold }, pages: 1024, name: `mid-${role}` });
  const a = await start("a");
  const gotA = nextMessage(a);
  const b = await start("b");
  const gotB = nextMessage(b);
  const [addrA] = await gotA;
  const [addrB] = await gotB;
  // a says how many of its window still wait for lane room; only then does b read them.
  const window = nextMessage(a);
  a.send(addrB);
  b.send(addrA);
  const [{ queued }] = (await window) as [{ queued: number }];
  b.send("go");
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", ea.error?.stack);
  assert.equal(eb.state, "shutdown", eb.error?.stack);
  await Promise.all([a.destroy(), b.destroy()]);
  return [{ ...(ea.result as Obs), queued }, eb.result as Obs];
}

test("mid-size messages to a co-resident peer go eager; one above CHANNEL_EAGER_BYTES stays rendezvous", async () => {
  const [a, b] = await pair();
  assert.equal(a.path, "bypass");
  const ok = Array(3 + WINDOW).fill("MX_STATUS_SUCCESS");
  assert.deepEqual(a.codes, ok);
  assert.deepEqual(b.codes, ok);
  assert.deepEqual(b.intact, Array(3 + WINDOW).fill(true));
  assert.equal(b.probedFirst, true, "the first message waited unexpected, then matched");
  // The lane holds LANE_BYTES / 60,048 of the window's 60,000-byte records; the rest waited for room.
  const fit = Math.floor(LANE_BYTES / 60_048);
  assert.ok(
    WINDOW > fit && (a.queued ?? 0) >= WINDOW - fit,
    `${a.queued} of the window waited for lane room`,
  );
  assert.equal(a.counters.rndv, 1, "only the message above the channel's eager limit was a rendezvous");
  assert.equal(
    a.counters.eager,
    2 + WINDOW + 1,
    "the mid-size messages, the window (queued for room, still eager) and the closing one",
  );
  assert.equal(b.counters.pulls, 1, "only the rendezvous was fetched; the window came eager");
  assert.equal(a.counters.bounces, 0, "nothing was bounce-copied");
  assert.equal(a.counters.registrations, 0, "nothing was registered");
});

test("a rendezvous threshold the user set holds on the channel too", async () => {
  const [a, b] = await pair(32 * 1024);
  assert.deepEqual(b.intact, Array(3 + WINDOW).fill(true));
  assert.equal(a.counters.rndv, 3 + WINDOW);
  assert.equal(a.counters.eager, 1);
});

test("every path carries an eager message of the channel's size: one queued for lane room survives a path change", () => {
  // A send queued as eager may leave by another path (the endpoint moved to the split path,
  // a peer's PATH frame): the NIC's SEND and MX over Ethernet take eager messages this long.
  assert.ok(CHANNEL_EAGER_BYTES <= SEND_MAX);
  assert.ok(CHANNEL_EAGER_BYTES <= ETHER_EAGER_MAX);
});

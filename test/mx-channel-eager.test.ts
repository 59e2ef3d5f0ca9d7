/**
 * Mid-size messages to a co-resident peer go eager through the channel (records.ts
 * CHANNEL_EAGER_BYTES): one hand-off instead of a rendezvous's three, from heap buffers, also
 * when the receive is posted late and for issend; larger ones stay rendezvous; and a threshold
 * the user set holds on the channel too. Two real guests on one host.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";

const MID = new URL("./fixtures/guests/mx-mid.js", import.meta.url);

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
};

async function pair(threshold?: number): Promise<[Obs, Obs]> {
  const start = (role: string) =>
    host.startGuest({ module: MID, args: { role, threshold }, pages: 1024, name: `mid-${role}` });
  const a = await start("a");
  const gotA = once(a, "message");
  const b = await start("b");
  const gotB = once(b, "message");
  const [addrA] = await gotA;
  const [addrB] = await gotB;
  a.send(addrB);
  b.send(addrA);
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", ea.error?.stack);
  assert.equal(eb.state, "shutdown", eb.error?.stack);
  await Promise.all([a.destroy(), b.destroy()]);
  return [ea.result as Obs, eb.result as Obs];
}

test("mid-size messages to a co-resident peer go eager; one above CHANNEL_EAGER_BYTES stays rendezvous", async () => {
  const [a, b] = await pair();
  assert.equal(a.path, "bypass");
  assert.deepEqual(a.codes, ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"]);
  assert.deepEqual(b.codes, ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"]);
  assert.deepEqual(b.intact, [true, true, true]);
  assert.equal(b.probedFirst, true, "the first message waited unexpected, then matched");
  assert.equal(a.counters.rndv, 1, "only the message above the channel's eager limit was a rendezvous");
  assert.equal(a.counters.eager, 3, "two mid-size messages and the closing one-byte message");
  assert.equal(a.counters.bounces, 0, "nothing was bounce-copied");
  assert.equal(a.counters.registrations, 0, "nothing was registered");
});

test("a rendezvous threshold the user set holds on the channel too", async () => {
  const [a, b] = await pair(32 * 1024);
  assert.deepEqual(b.intact, [true, true, true]);
  assert.equal(a.counters.rndv, 3);
  assert.equal(a.counters.eager, 1);
});

/**
 * A connector that connects, sends and disconnects (mx_disconnect) before its receiver's
 * library has taken the CONNECT: myrback refused that channel at accept ("closed by a member
 * before endpoint N accepted it") and what was in it was lost, each send MX_STATUS_SUCCESS to
 * its sender. Now the receiver is handed it closed, as from a connector that closed its
 * endpoint (an orphan): it reads what is there, then fails that connection. A connector that
 * connects again at once goes through the NIC until the receiver catches up; its later
 * rounds arrive after the first, in order.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const GUEST = new URL("./fixtures/guests/mx-released-unaccepted.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 13, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

async function run(n: number, rounds: number, connectBack = false) {
  const start = (role: string) =>
    host.startGuest({ module: GUEST, name: role, pages: 512, args: { role, n, rounds, connectBack } });
  const receiver = await start("receiver");
  const connector = await start("connector");
  const [ra] = await nextMessage(receiver);
  const [ca] = await nextMessage(connector);
  const report = nextMessage(connector);
  receiver.send(ca);
  connector.send(ra);
  const [{ codes }] = (await report) as [{ codes: string[] }];
  receiver.send("go");
  const got = await receiver.exited;
  connector.send("done");
  const back = await connector.exited;
  const r = got.result as { order: number[]; backSent: string[]; backFailed: string | null };
  return { codes, ...r, backGot: (back.result as { got: number[] }).got };
}

test("what a connector sent before it disconnected arrives, though the receiver had not taken its CONNECT", async () => {
  const { codes, order } = await run(10, 1);
  assert.deepEqual(codes, ["MX_STATUS_SUCCESS"]);
  assert.deepEqual(order, [...Array(10).keys()], "all ten, in order");
  assert.equal(host.backendStats().channels, 0, "the released channel is not counted as a live one");
});

test("... and when it connects again at once, every round arrives, in order", async () => {
  const { codes, order } = await run(5, 4);
  assert.deepEqual(codes, ["MX_STATUS_SUCCESS"]);
  assert.deepEqual(order, [...Array(20).keys()], "four rounds of five, in order");
});

test("... and the receiver's own connection to the connector, made before it looked, is left alone", async () => {
  // (A reviewer's PoC: the orphan was read into the receiver's live partner for the same
  // session, which was then failed; a send on it said ENDPOINT_UNREACHABLE, and after a
  // reconnect a send that said SUCCESS was dropped by the connector as a duplicate.)
  const r = await run(3, 1, true);
  assert.deepEqual(r.codes, ["MX_STATUS_SUCCESS"]);
  assert.deepEqual(r.order, [0, 1, 2], "the orphan's three, in order");
  assert.deepEqual(
    r.backSent,
    ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"],
    "the receiver's sends on its own connection",
  );
  assert.equal(r.backFailed, null, "its connection to the live connector is not failed");
  assert.deepEqual(r.backGot, [100, 101], "and both arrived");
});

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

async function run(n: number, rounds: number) {
  const start = (role: string) =>
    host.startGuest({ module: GUEST, name: role, pages: 512, args: { role, n, rounds } });
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
  await connector.exited;
  return { codes, order: (got.result as { order: number[] }).order };
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

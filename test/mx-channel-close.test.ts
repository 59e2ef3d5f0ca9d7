/**
 * A co-resident peer that closes right after its last sends: what it saw complete still
 * arrives. The receiver takes the records left in the lane when it finds the channel closed
 * (channel-path.ts checkClosed), also those the lane's policy was holding, instead of failing
 * the peer over them (an MPI rank whose finalize barrier message was written just before its
 * peer's receive() looked and closed just after: its peer waited forever). Two real guests.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const LAST = new URL("./fixtures/guests/mx-close-last.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(async () => {
  await host.stop();
});

type Got = { code: string; intact: boolean };

async function closeAfterSending(qos?: { tx: { msgsPerSec: number } }, garbage = false, late = false) {
  const s = await host.startGuest({
    module: LAST,
    args: { role: "sender", garbage, late },
    name: "last-sender",
    qos,
  });
  const gotS = nextMessage(s);
  const r = await host.startGuest({
    module: LAST,
    args: { role: "receiver", garbage, late },
    name: "last-receiver",
  });
  const gotR = nextMessage(r);
  const [[as], [ar]] = await Promise.all([gotS, gotR]);
  s.send(ar);
  r.send(as);
  // The receiver reads nothing of the three until the sender has closed and gone.
  const es = await s.exited;
  r.send("go");
  const er = await r.exited;
  await Promise.all([s.destroy(), r.destroy()]);
  assert.equal(es.state, "shutdown", es.error?.stack);
  assert.equal(er.state, "shutdown", er.error?.stack);
  return [es.result, er.result] as [{ hello: string; codes: string[] }, { got: Got[]; path: string }];
}

const OK = { code: "MX_STATUS_SUCCESS", intact: true };

test("a peer's last messages arrive after it closed: 8 B, 8 B and 40,000 B in pieces", async () => {
  const [sent, received] = await closeAfterSending();
  assert.equal(received.path, "bypass");
  assert.deepEqual(sent, { hello: "MX_STATUS_SUCCESS", codes: Array(3).fill("MX_STATUS_SUCCESS") });
  assert.deepEqual(received.got, [OK, OK, OK]);
});

test("a peer that connects, sends and closes before the receiver took the channel's CONNECT: what it saw complete arrives", async () => {
  // The receiver found the channel closed when it took the CONNECT and released it unread:
  // ~1% of the messages of a rank that opened, connected, sent 8 B and closed in a loop were
  // lost, each reported MX_STATUS_SUCCESS to its sender.
  const [sent, received] = await closeAfterSending(undefined, false, true);
  assert.deepEqual(sent.codes, Array(3).fill("MX_STATUS_SUCCESS"));
  assert.deepEqual(received.got, [OK, OK, OK]);
});

test("a peer's last messages arrive after it closed, also those the lane's policy still held when the receiver found the channel closed", async () => {
  // Five messages a second: the first message puts the sender's bucket in debt, so the other two
  // wait in the lane for 200 ms by the receiver's clock; the channel is closed long before.
  const [sent, received] = await closeAfterSending({ tx: { msgsPerSec: 5 } });
  assert.deepEqual(sent.codes, Array(3).fill("MX_STATUS_SUCCESS"));
  assert.deepEqual(received.got, [OK, OK, OK]);
});

test("a peer that wrote garbage into its lane and closed is failed for the garbage, not as gone", async () => {
  // The receiver finds the channel closed and its lane broken at the same look: the reason
  // it gives is the garbage (before, "the peer endpoint went away", and the garbage unsaid).
  // With a message cap, the lane's policy keeps the receiver from reading the lane at all
  // until it finds the channel closed: then what it drains is what tells it the lane is broken.
  const [, received] = await closeAfterSending({ tx: { msgsPerSec: 5 } }, true);
  const r = received as unknown as { sent: string; reason?: string };
  assert.equal(r.sent, "MX_STATUS_ENDPOINT_UNREACHABLE");
  assert.match(
    r.reason ?? "",
    /this peer is disconnected: peer wrote garbage into the channel: record at \d+ claims 4 bytes/,
  );
});

/**
 * Rendezvous racing the sender's mx_disconnect, on one host and across two: each either
 * arrives or fails, none arrives twice, and a receive that fails says why in the sender's
 * terms. Before, a receive whose pull the sender's NIC refused (the sender had revoked the
 * right as its send failed) ended MX_STATUS_BAD_RDMAWIN or BAD_KEY with no reason at all, one
 * whose right was revoked mid-pull (across hosts) MX_STATUS_ABORTED with none, and one that
 * took the disconnect's driver event before its sweep read the lanes said "the peer endpoint
 * went away", as for a rank that died (each in 1–20% of these receives).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { WE_DISCONNECTED } from "../src/mx/connections.js";
import { PULL_ABORTED, PULL_REFUSED, pullFailureText } from "../src/mx/nic-records.js";
import { MxStatus } from "../src/nic/status.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { nextMessage } from "./helpers/messages.js";
import { freePort } from "./helpers/nic-harness.js";

const GUEST = new URL("./fixtures/guests/mx-disconnect-race.js", import.meta.url);
/** Every way a receive may fail here, each with the reason it must give. */
const EXPLAINED = new Set([
  "MX_STATUS_ENDPOINT_CLOSED: the peer disconnected from us (mx_disconnect)",
  `MX_STATUS_BAD_RDMAWIN: ${PULL_REFUSED}`,
  `MX_STATUS_BAD_KEY: ${PULL_REFUSED}`,
  `MX_STATUS_ABORTED: ${PULL_ABORTED}`,
  // The sender closes its endpoint after its last round: a pull still under way then fails so.
  `MX_STATUS_ENDPOINT_CLOSED: ${pullFailureText(MxStatus.ENDPOINT_CLOSED)}`,
  "MX_STATUS_ENDPOINT_CLOSED: the peer endpoint was closed",
  "MX_STATUS_ENDPOINT_CLOSED: the peer endpoint is closed",
]);
const N = 4;
const ROUNDS = 60;

let one: Host;
let other: Host;
before(async () => {
  one = await Host.start({ nicId: 21, verbose: !!process.env.MYRI_VERBOSE });
  other = await Host.start({ nicId: 22, verbose: !!process.env.MYRI_VERBOSE });
  const port = await freePort();
  await one.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: LINK_KEY });
  await other.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000, key: LINK_KEY });
});
after(async () => {
  await Promise.all([one?.stop(), other?.stop()]);
});

async function race(senderHost: Host, receiverHost: Host, seed: number, split = false) {
  const common = { n: N, rounds: ROUNDS, bytes: 100_000, raceMs: 0.5, seed, split };
  // The receiver's pulls in flight each hold a bounce buffer of 25 pages (its receives are
  // plain arrays), and across hosts dozens may be under way at once.
  const start = (h: Host, role: string) =>
    h.startGuest({
      module: GUEST,
      name: role,
      pages: role === "sender" ? 512 : 8192,
      args: { ...common, role },
    });
  const sender = await start(senderHost, "sender");
  const receiver = await start(receiverHost, "receiver");
  const [sa] = await nextMessage(sender);
  const [ra] = await nextMessage(receiver);
  const posted = nextMessage(receiver);
  receiver.send(sa);
  await posted;
  sender.send(ra);
  sender.send("go");
  const { ok, sendFailures } = (await sender.exited).result as { ok: number[]; sendFailures: string[] };
  assert.deepEqual(
    sendFailures.filter((f) => f !== `MX_STATUS_ENDPOINT_CLOSED: ${WE_DISCONNECTED}`),
    [],
    "a send the disconnect failed says so",
  );
  receiver.send("sender done");
  const { got, failed, unsent } = (await receiver.exited).result as {
    got: number[];
    failed: string[];
    unsent: number;
  };
  assert.equal(got.length + failed.length + unsent, N * ROUNDS);
  assert.deepEqual(
    ok.filter((v) => !got.includes(v)),
    [],
    "every send that said SUCCESS arrived",
  );
  assert.ok(unsent <= N * ROUNDS - ok.length, "a message that never came was not said to be sent");
  assert.equal(new Set(got).size, got.length, "none twice");
  assert.deepEqual(
    failed.filter((f) => !EXPLAINED.has(f)),
    [],
    "a failed receive says the sender disconnected or withdrew the message",
  );
}

test("rendezvous racing the sender's disconnect on one host: each arrives or fails, and a failed receive says it was the sender's doing", async () => {
  for (const seed of [11, 12]) await race(one, one, seed);
});

test("the same across two hosts, where the receiver's NIC pulls over the link", async () => {
  await race(one, other, 13);
});

test("the same on the split path, where a disconnect waits for the stream's acks", async () => {
  await race(one, one, 14, true);
});

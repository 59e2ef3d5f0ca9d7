/**
 * Rendezvous racing the sender's mx_disconnect on one host: each either arrives or fails,
 * and a receive that fails says why in the sender's terms. Before, a receive whose pull the
 * sender's NIC refused (the sender had revoked the right as its send failed) ended
 * MX_STATUS_BAD_RDMAWIN with no reason at all, and one that took the disconnect's driver
 * event before its sweep read the lanes said "the peer endpoint went away", as for a rank
 * that died (both seen in ~1 in 20 of these receives).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { PULL_REFUSED } from "../src/mx/nic-queues.js";
import { nextMessage } from "./helpers/messages.js";

const GUEST = new URL("./fixtures/guests/mx-disconnect-race.js", import.meta.url);
const DISCONNECTED = "MX_STATUS_ENDPOINT_CLOSED: the peer disconnected from us (mx_disconnect)";

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 21, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

async function race(seed: number) {
  const common = { n: 4, rounds: 60, bytes: 100_000, raceMs: 0.5, seed };
  const sender = await host.startGuest({
    module: GUEST,
    name: "sender",
    pages: 512,
    args: { ...common, role: "sender" },
  });
  const receiver = await host.startGuest({
    module: GUEST,
    name: "receiver",
    pages: 512,
    args: { ...common, role: "receiver" },
  });
  const [sa] = await nextMessage(sender);
  const [ra] = await nextMessage(receiver);
  const posted = nextMessage(receiver);
  receiver.send(sa);
  await posted;
  sender.send(ra);
  sender.send("go");
  const { ok } = (await sender.exited).result as { ok: number[] };
  receiver.send("sender done");
  const { got, failed, unsent } = (await receiver.exited).result as {
    got: number[];
    failed: string[];
    unsent: number;
  };
  return { ok, got, failed, unsent };
}

test("rendezvous racing the sender's disconnect: each arrives or fails, and a failed receive says it was the sender's doing", async () => {
  for (const seed of [11, 12]) {
    const { ok, got, failed, unsent } = await race(seed);
    assert.equal(got.length + failed.length + unsent, 240);
    assert.ok(unsent <= 240 - ok.length, "a message that never came was not said to be sent");
    assert.deepEqual(
      ok.filter((v) => !got.includes(v)),
      [],
      "every send that said SUCCESS arrived",
    );
    assert.equal(new Set(got).size, got.length, "none twice");
    const unclear = failed.filter(
      (f) =>
        f !== DISCONNECTED &&
        !f.startsWith("MX_STATUS_BAD_RDMAWIN: ") &&
        !f.startsWith("MX_STATUS_BAD_KEY: "),
    );
    assert.deepEqual(unclear, [], "a failed receive names the disconnect");
    const refused = failed.filter((f) => !f.startsWith("MX_STATUS_ENDPOINT_CLOSED"));
    assert.deepEqual(
      refused.filter((f) => !f.endsWith(PULL_REFUSED)),
      [],
      "a refused pull says the sender withdrew the message",
    );
  }
});

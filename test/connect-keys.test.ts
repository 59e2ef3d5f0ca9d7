/**
 * Endpoint keys as a guesser sees them, end to end through myrifront, myrback and the NIC: a
 * guest that tries key after key against a co-resident endpoint gets a prompt
 * MX_BAD_CONNECTION_KEY for the first few, then nothing but MX_BUSY — even for the right key
 * — so 2^32 guesses are out of reach.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { CONNECT_FREE_FAILS } from "../src/nic/connect-throttle.js";
import { nextMessage } from "./helpers/messages.js";

const GUESSER = new URL("./fixtures/guests/key-guesser.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

test("a guest guessing a co-resident endpoint's key is locked out after a few", async () => {
  const key = 0x5ec2e7;
  const victim = await host.startGuest({ module: GUESSER, args: { role: "victim", key } });
  const [addr] = await nextMessage(victim);
  const guesser = await host.startGuest({ module: GUESSER, args: { role: "guesser", key, guesses: 40 } });
  guesser.send(addr);
  const e = await guesser.exited;
  victim.send("done");
  await victim.exited;
  assert.equal(e.state, "shutdown", e.error?.stack);
  const { codes, right } = e.result as { codes: string[]; right: string };
  const bad = codes.filter((c) => c === "MX_BAD_CONNECTION_KEY").length;
  const busy = codes.filter((c) => c === "MX_BUSY").length;
  assert.equal(bad, CONNECT_FREE_FAILS, `${bad} prompt refusals`);
  assert.equal(bad + busy, 40, codes.join(","));
  assert.equal(right, "MX_BUSY", "the right key, guessed in the cool-down, does not connect either");
  assert.ok(host.backendStats().badKeys >= bad);
});

/** Shared rings between two real domains, set up by the xenbus handshake: 1,000,000 requests, none lost. */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { runRingPair } from "../src/programs/ring-pair-host.js";
import { Hypervisor } from "../src/xen/hypervisor.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

test("1,000,000 requests between two domains: all answered, in order, with few notifications", async () => {
  const requests = 1_000_000;
  const run = await runRingPair(hv, { requests });
  assert.equal(run.front.verified, requests, "every response carried the right id and result");
  assert.equal(run.back.requests, requests, "the backend served each request once");
  // Watches report the state current when each event is delivered, so a fast peer may skip
  // one; what must hold is that each side saw the other walk forward to Connected.
  const order = ["Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed"];
  for (const seen of [run.front.peerStates, run.back.peerStates]) {
    const idx = seen.map((s) => order.indexOf(s));
    assert.ok(
      idx.every((v, i) => v >= 0 && (i === 0 || v >= idx[i - 1])),
      `states went backwards: ${seen}`,
    );
    // A side busy serving may first look once its peer is already Closing: reaching Connected
    // or later is what the handshake must show.
    assert.ok(
      idx.some((v) => v >= order.indexOf("Connected")),
      `never saw Connected or later: ${seen}`,
    );
  }
  const notifications = run.front.notifications + run.back.notifications;
  assert.ok(notifications < requests / 20, `${notifications} notifications for ${requests} requests`);
  // The ring page was granted once and mapped once: nothing per request went through the hypervisor.
  assert.equal(run.back.counters.grant_map, 1);
  assert.equal(run.back.broken, undefined);
});

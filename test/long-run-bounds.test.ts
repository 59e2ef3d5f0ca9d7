/**
 * What a host that runs for weeks must not pile up under churn the other lifetime tests do not
 * make: many short-lived peers of one long-lived guest.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const CHURN = new URL("./fixtures/guests/churn.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

/** Polls until `cond` holds or `ms` passed (a liveness bound: the caller asserts what it found). */
async function waitFor(cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

test("peers that connect to a long-lived guest and go leave dom0 no grant of theirs (nor their domain ids held back)", async () => {
  const PEERS = 8;
  const survivor = await host.startGuest({ module: CHURN, args: { survivor: true }, name: "survivor" });
  const [addr] = (await nextMessage(survivor)) as [unknown];
  // The survivor's endpoint is open: its window and interrupt page are granted to it.
  const base = host.backendStats().grantsInUse;
  const peerIds: number[] = [];
  for (let i = 0; i < PEERS; i++) {
    // Half close cleanly, half die without closing anything.
    const crash = i % 2 === 1;
    const peer = await host.startGuest({ module: CHURN, args: { peer: addr, crash }, name: `peer-${i}` });
    peerIds.push(peer.domid);
    const e = await peer.exited;
    assert.equal(e.state, crash ? "crashed" : "shutdown", e.error?.stack);
  }
  // Each peer got a channel with the survivor and a grant of the survivor's interrupt page; the
  // backend notices each death a little after its exit. A grant that outlives its peer names a
  // dead domain id, which the hypervisor then never hands out again while the survivor lives.
  await waitFor(() => host.backendStats().grantsInUse <= base && host.backendStats().deferredGrants === 0);
  const s = host.backendStats();
  assert.equal(s.deferredGrants, 0);
  assert.ok(
    s.grantsInUse <= base,
    `dom0 holds ${s.grantsInUse} grants after ${PEERS} peers came and went (${base} with the survivor alone)`,
  );
  // No public inspection says which dead domains' ids are held back from reuse: ask the
  // hypervisor's own (private) answer, the one allocDomid goes by.
  const held = (host.hypervisor as unknown as { namedReleasedIds(): Set<number> }).namedReleasedIds();
  assert.deepEqual(
    peerIds.filter((d) => held.has(d)),
    [],
    "no dead peer's domain id is kept from reuse",
  );
  survivor.send("stop");
  assert.equal((await survivor.exited).state, "shutdown");
});

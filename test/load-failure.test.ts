/**
 * A guest whose program fails while it loads (a top-level throw: an ordinary mistake, which the
 * launcher's compile check does not catch) leaves nothing in XenStore. The domain stopped, and
 * the hypervisor removed its home, before Host.startGuest wrote its memory target and made its
 * devices — which made the home again, for no one: 6 nodes per failed guest, 12 per failed
 * 2-rank job, owned by dom0 (no quota), until the domain id came round again.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { settled } from "./helpers/address-space.js";

const PROGRAM = new URL("./fixtures/guests/load-throw.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

test("guests that fail while they load leave no XenStore node behind", async () => {
  const xs = host.hypervisor.xenstore;
  const nodes = xs.nodeCount();
  for (let i = 0; i < 8; i++) {
    const d = await host.startGuest({ module: PROGRAM, name: `load-throw-${i}`, pages: 256 });
    const e = await d.exited;
    assert.equal(e.state, "crashed");
    assert.match(String(e.error?.message), /fails while it loads/);
    assert.equal(xs.exists(0, `/local/domain/${d.domid}`), false, `domain ${d.domid}'s home is back`);
  }
  assert.ok(
    await settled(() => xs.nodeCount() <= nodes, 5_000),
    `${xs.nodeCount() - nodes} XenStore nodes more than before 8 guests that failed to load`,
  );
});

/**
 * A domain that stopped asks for nothing more. Its thread runs on for a moment after it
 * returns (the host's grace for its last output), and a guest owns its kernel: in that moment
 * it could map its granters' pages again or write its XenStore home, after the hypervisor had
 * released everything it held — a mapping no one would ever undo (dom0's window grants stayed
 * pinned for good, and the dead id was never given out again), a node no one would remove.
 * The hypervisor now answers such requests ESRCH (hypervisor.ts serves).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { settled } from "./helpers/address-space.js";

const PROGRAM = new URL("./fixtures/guests/zombie.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

test("a guest that keeps mapping dom0's grants and writing XenStore after it returned leaves nothing behind", async () => {
  const before = host.backendStats().grantsInUse;
  const ids: number[] = [];
  for (let i = 0; i < 2; i++) {
    const d = await host.startGuest({ module: PROGRAM, name: `zombie-${i}`, pages: 256 });
    ids.push(d.domid);
    const r = await d.exited;
    assert.equal(r.state, "shutdown", r.error?.stack);
    assert.ok((r.result as number) > 1, "the guest mapped dom0's window pages");
  }
  // dom0 ends its grants once no one maps them (the grant keeper retries every 100 ms).
  const back = await settled(() => host.backendStats().grantsInUse <= before, 5_000);
  assert.ok(
    back,
    `dom0 still grants ${host.backendStats().grantsInUse - before} pages to domains that are gone: they mapped them after they stopped`,
  );
  for (const id of ids)
    assert.equal(
      host.hypervisor.xenstore.exists(0, `/local/domain/${id}`),
      false,
      `domain ${id}'s XenStore home is back after it stopped`,
    );
});

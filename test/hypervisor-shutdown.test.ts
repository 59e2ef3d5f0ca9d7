/**
 * A hypervisor that has run more guests than it keeps stopped ones for (KEEP_STOPPED_DOMAINS)
 * still shuts down, running guests and all. Shutdown went by domain id over a list taken
 * first; destroying a running domain put it on the kept list, which forgot its oldest, and
 * the next id of the list was gone: after 257 guests, Host.stop rejected "destroyDomain: no
 * domain 2" and never stopped the NIC thread, so the process did not exit (a reviewer's PoC).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Hypervisor, KEEP_STOPPED_DOMAINS } from "../src/xen/hypervisor.js";

const fixture = (name: string) => new URL(`./fixtures/guests/${name}.js`, import.meta.url);

test("after more guests than it keeps, the hypervisor shuts down with guests running: every domain is destroyed", async () => {
  const hv = new Hypervisor();
  // Running domains made first (as a host's driver domain is) are destroyed first, each
  // going on the kept list, which is full of stopped domains: its oldest are forgotten.
  const running = [];
  for (let i = 0; i < 3; i++) {
    const d = await hv.createDomain({ module: fixture("agent"), pages: 16, name: `running-${i}` });
    running.push(d);
  }
  for (let i = 0; i < KEEP_STOPPED_DOMAINS + 1; i++) {
    const d = await hv.createDomain({ module: fixture("says-bye"), pages: 16, name: `done-${i}` });
    assert.equal((await d.exited).state, "shutdown");
  }
  await hv.shutdown();
  for (const d of running) assert.equal(d.state, "destroyed");
  assert.equal(hv.domains().length, 0, "no domain is left");
});

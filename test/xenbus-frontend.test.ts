/**
 * The frontend handshake written once (xen/xenbus-sync.ts, SyncXenbusFrontend), through both
 * synchronous frontends in a real guest: netfront connects, refuses a second frontend on its
 * Connected vif, walks to Closed on close; a device whose directory names no backend is
 * refused with the same sentence by netfront and by myrifront (MX_NO_DEV).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Host } from "../src/host/host.js";
import { XenbusState } from "../src/xen/abi.js";

const STEPS = fileURLToPath(new URL("../../test/fixtures/guests/frontend-steps.ts", import.meta.url));

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 11 });
});
after(async () => {
  await host?.stop();
});

test("myrifront and netfront walk one handshake: in use, closed, no backend", async () => {
  const dom = await host.startGuest({ module: STEPS, name: "steps", pages: 512, maxHeapMb: 64 });
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.stack);
  const r = exit.result as Record<string, string>;
  assert.equal(r.first, `connected to domain 0 at /local/domain/0/backend/vif/${dom.domid}/0`);
  assert.equal(
    r.second,
    `NetfrontError: /local/domain/${dom.domid}/device/vif/0 is already Connected: one Netfront per device; close() the other first`,
  );
  assert.equal(r.closedState, String(XenbusState.Closed), "close() walked the vif to Closed");
  const noBackend = (type: string) =>
    `/local/domain/${dom.domid}/device/${type}/0 names no backend (backend, backend-id); the toolstack must create the device`;
  assert.equal(r.vifNoBackend, `NetfrontError: ${noBackend("vif")}`);
  assert.equal(r.myriNoBackend, `MX_NO_DEV: MX_NO_DEV: ${noBackend("myri")}`);
});

/**
 * The NIC's TPT is one table for every domain of a host: the per-domain region quotas must fit
 * in it together, whatever maxEndpoints says, or one job's guests could register every entry
 * and another job's registrations would fail.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Host } from "../src/host/host.js";
import { DEFAULT_MAX_REGIONS } from "../src/nic/tpt.js";
import { Access, ANY_ENDPOINT } from "../src/nic/window.js";
import { MYRI_AGENT, myriAgent } from "./helpers/myri-agent.js";

test("on a host of 256 endpoints a domain registers at most 65536 / 256 regions: the quotas of every domain fit the TPT together", async () => {
  const MAX_ENDPOINTS = 256;
  const fit = DEFAULT_MAX_REGIONS / MAX_ENDPOINTS;
  const host = await Host.start({ nicId: 31, maxEndpoints: MAX_ENDPOINTS });
  try {
    const a = myriAgent(
      await host.startGuest({ module: MYRI_AGENT, name: "registrar", pages: 512, maxHeapMb: 64 }),
    );
    await a.call({ op: "init" });
    const { endpointId } = await a.call<{ endpointId: number }>({
      op: "open",
      endpointId: ANY_ENDPOINT,
      key: 1,
    });
    // One page, registered again and again (each registration is a TPT entry of its own).
    const first = await a.call<{ regionId: number }>({
      op: "register",
      endpointId,
      length: 4096,
      access: Access.LocalRead,
    });
    for (let i = 1; i < fit; i++)
      await a.call({ op: "register", endpointId, reuse: first.regionId, access: Access.LocalRead });
    // Before, the quota was 1024 whatever the NIC's size: 64 such guests filled the table.
    const refused = await a.fails({
      op: "register",
      endpointId,
      reuse: first.regionId,
      access: Access.LocalRead,
    });
    assert.equal(refused.code, "MX_NO_RESOURCES", refused.message);
    assert.match(refused.message, new RegExp(`already has ${fit} regions registered, its quota`));
  } finally {
    await host.stop();
  }
  // A quota that cannot fit is refused before anything starts, saying why.
  await assert.rejects(
    Host.start({ nicId: 32, maxEndpoints: 128, regionsPerDomain: 1024 }),
    /regionsPerDomain 1024 × maxEndpoints 128 is more than the NIC's 65536 TPT entries .*at most 512 here/,
  );
});

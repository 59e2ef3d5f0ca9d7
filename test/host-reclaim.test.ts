/**
 * A host that runs for weeks, one job after another: every domain's RAM goes back to the OS
 * once the domain is gone, although the hypervisor, the driver domain and the NIC each held
 * it (domain record, foreign view, registered regions). Before reclaim.ts, a host kept the RAM
 * of nearly every domain it had run: V8 collects those dead handles only at a major GC, which
 * these quiet threads hardly ever run.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { PAGE_SIZE } from "../src/xen/abi.js";
import { RECLAIM_DELAY_MS, RECLAIM_MIN_INTERVAL_MS } from "../src/xen/reclaim.js";
import { settled, vmSize } from "./helpers/address-space.js";
import { nextMessage } from "./helpers/messages.js";

const HOARDER = new URL("./fixtures/guests/hoarder.js", import.meta.url);
/** An MPI rank's RAM (cluster/ranks.ts DEFAULT_RANK_PAGES): 64 MiB. */
const PAGES = 16384;
const RAM = PAGES * PAGE_SIZE;
const PAIRS = 4;

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

async function start(role: string) {
  const d = await host.startGuest({ module: HOARDER, args: { role }, name: role, pages: PAGES });
  return { d, first: nextMessage(d) as Promise<unknown[]> };
}

/** A client and a server exchange 300 MX messages over the bypass path, then both exit. */
async function pair(): Promise<void> {
  const client = await start("client");
  const server = await start("server");
  const [ac] = await client.first;
  const [as] = await server.first;
  client.d.send(as);
  server.d.send(ac);
  const exits = await Promise.all([client.d.exited, server.d.exited]);
  for (const e of exits) assert.equal(e.state, "shutdown", e.error?.stack);
  assert.deepEqual(exits[0].result, { ok: 300, bad: 0 });
}

test(`${PAIRS} pairs of 64 MiB domains, one after another: the host's address space comes back to where it was`, async () => {
  await pair(); // the first pair's code and caches stay; its RAM must not
  const quiet = RECLAIM_DELAY_MS + 2 * RECLAIM_MIN_INTERVAL_MS;
  await new Promise((r) => setTimeout(r, quiet));
  const base = vmSize();
  for (let i = 0; i < PAIRS; i++) await pair();
  // Each of 2 × PAIRS domains had RAM of its own; at most a couple may still be on their way out.
  const bound = base + 3 * RAM;
  const back = await settled(() => vmSize() <= bound, quiet + 8_000);
  const grown = Math.round((vmSize() - base) / 2 ** 20);
  assert.ok(
    back,
    `after ${2 * PAIRS} domains of ${RAM / 2 ** 20} MiB the address space grew ${grown} MiB: their RAM is still held`,
  );
});

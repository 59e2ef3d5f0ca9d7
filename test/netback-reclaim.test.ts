/**
 * The driver domain keeps no dead guest's RAM: split-path jobs one after another (netfront →
 * netback → the bridge) leave the host's address space where it was once their domains are
 * gone. netback's staging slots used to keep the vif their last frame came from, and a torn-
 * down vif its rings, which are views of the guest's pages: each held its guest's whole RAM
 * for as long as no later frame took the slot (up to 64 dead guests per host).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";
import { PAGE_SIZE } from "../src/xen/abi.js";
import { RECLAIM_DELAY_MS, RECLAIM_MIN_INTERVAL_MS } from "../src/xen/reclaim.js";
import { settled, vmSize } from "./helpers/address-space.js";

const NEIGHBOUR = new URL("./fixtures/guests/mpi-neighbour.js", import.meta.url);
/** 256 MiB per rank: one guest held is well past the bound below. */
const PAGES = 65536;
const RAM = PAGES * PAGE_SIZE;

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

async function splitJob(): Promise<void> {
  const res = await new Job(host, {
    n: 2,
    path: "split",
    program: NEIGHBOUR,
    argv: ["1"],
    pages: PAGES,
  }).run();
  assert.equal(res.exitCode, 0, res.failed?.error?.message);
}

test("split-path jobs one after another: their guests' RAM goes back once they are gone", async () => {
  await splitJob(); // code and caches stay; its RAM must not
  const quiet = RECLAIM_DELAY_MS + 2 * RECLAIM_MIN_INTERVAL_MS;
  await new Promise((r) => setTimeout(r, quiet));
  const base = vmSize();
  for (let i = 0; i < 3; i++) await splitJob();
  const back = await settled(() => vmSize() < base + RAM / 2, quiet + 8_000);
  const grown = Math.round((vmSize() - base) / 2 ** 20);
  assert.ok(back, `after 6 split-path guests of ${RAM / 2 ** 20} MiB the address space grew ${grown} MiB`);
});

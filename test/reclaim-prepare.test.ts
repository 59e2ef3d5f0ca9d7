/**
 * Fetching a thread's collector (src/xen/reclaim.ts) turns a process-wide V8 flag on and off.
 * Trusted code does it once, at a thread's start (the hypervisor, the NIC, the privileged
 * domain's runtime); a collection asked for later uses what was fetched. It used to fetch on
 * demand, and a guest could get there from its own thread: it can construct a Guest that says
 * it is privileged (TypeScript's `private` is not private) and call its `dropForeign`, which
 * asks for a collection — flipping the flag for every thread of the host while it ran.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { Worker } from "node:worker_threads";

const THREAD = new URL("./fixtures/reclaim-thread.js", import.meta.url);

async function runs(prepare: boolean): Promise<number> {
  const w = new Worker(THREAD, { workerData: { prepare } });
  const [n] = await once(w, "message");
  await w.terminate();
  return n as number;
}

test("a thread that fetched no collector at start runs no collection (and turns no V8 flag); one that did, runs it", async () => {
  assert.equal(
    await runs(false),
    0,
    "a collection ran in a thread that did not prepare one: it fetched the collector on demand",
  );
  assert.equal(await runs(true), 1);
});

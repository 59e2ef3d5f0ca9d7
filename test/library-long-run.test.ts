/**
 * The MX library in an honest guest that runs for weeks and opens and closes endpoints all
 * along: nothing it set up for an endpoint outlives the endpoint's close (design §3). Real
 * guests through the real Host (fixtures/guests/library-long-run.ts).
 *
 * Before: the NIC staging area an endpoint allocated in the guest's memory on its first send
 * through the NIC (up to 2 MiB, an eighth of the guest) was never freed, so a 2 MiB guest
 * could open a few endpoints that talked through the NIC, and then every send failed
 * MX_NO_RESOURCES; and Mx kept every endpoint ever opened until mx_finalize, each with its
 * queues, requests and (on the split path) its own window, 660 KiB of a fresh buffer.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";

const GUEST = new URL("./fixtures/guests/library-long-run.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

type Result = {
  path: string;
  cycles: number;
  ok: number;
  freeFirst: number;
  freeLast: number;
  heldFirst: number;
  heldLast: number;
};

async function run(args: Record<string, unknown>): Promise<Result> {
  const d = await host.startGuest({ module: GUEST, args, name: "long-run", pages: 512 });
  const e = await d.exited;
  assert.equal(e.state, "shutdown", e.error?.stack);
  return e.result as Result;
}

test("200 endpoints that each send through the NIC, opened and closed in turn, leave the guest's memory as the first one left it", async () => {
  const r = await run({ cycles: 200 });
  assert.equal(r.path, "bypass");
  assert.equal(r.cycles, 200);
  assert.equal(r.ok, 200, "every message to itself arrived");
  assert.equal(
    r.freeLast,
    r.freeFirst,
    `free pages of the guest's 512: ${r.freeFirst} after the first endpoint, ${r.freeLast} after the last`,
  );
  assert.ok(r.heldLast <= 1, `Mx holds ${r.heldLast} closed endpoints`);
});

test("200 split-path endpoints opened and closed in turn: Mx keeps none of the closed ones (nor their windows)", async () => {
  const r = await run({ cycles: 200, path: "split" });
  assert.equal(r.path, "split");
  assert.equal(r.ok, 200, "every message to itself arrived");
  assert.ok(
    r.heldFirst <= 1 && r.heldLast <= 1,
    `Mx holds ${r.heldFirst}, then ${r.heldLast} closed endpoints`,
  );
  assert.equal(r.freeLast, r.freeFirst);
});

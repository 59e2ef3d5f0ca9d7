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
import { nextMessage } from "./helpers/messages.js";

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

const SWITCH_IDLE = new URL("./fixtures/guests/mx-switch-idle.js", import.meta.url);

test("after a move to the split path and back, an idle endpoint sleeps as before, and still hears a peer that moves again", async () => {
  // Before: the endpoint kept polling netfront on every progress round and slept in 1 ms
  // slices for the rest of its life (its partner still had an Ethernet stream): a 600 ms
  // idle wait counted ~500 sleeps against ~6 before the switch.
  const idleMs = 600;
  const start = (role: "a" | "b") =>
    host.startGuest({ module: SWITCH_IDLE, args: { role, idleMs }, name: `idle-${role}`, pages: 1024 });
  const a = await start("a");
  const b = await start("b");
  const [addrA, addrB] = await Promise.all([nextMessage(a), nextMessage(b)]);
  a.send(addrB[0]);
  b.send(addrA[0]);
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", ea.error?.stack);
  assert.equal(eb.state, "shutdown", eb.error?.stack);
  const ra = ea.result as { sleepsBefore: number; sleepsAfter: number; late: string; paths: string[] };
  const rb = eb.result as typeof ra;
  assert.ok(ra.paths.includes("split") && rb.paths.includes("split"), `${ra.paths} / ${rb.paths}`);
  // 100 ms slices: a handful of sleeps in 600 ms (fewer on a loaded machine, never more).
  for (const [who, r] of [
    ["a", ra],
    ["b", rb],
  ] as const) {
    assert.ok(r.sleepsBefore <= 20, `${who} before: ${r.sleepsBefore} sleeps`);
    assert.ok(
      r.sleepsAfter <= 20,
      `${who} after the round trip: ${r.sleepsAfter} sleeps (before it ${r.sleepsBefore})`,
    );
  }
  assert.equal(ra.late, "MX_STATUS_SUCCESS");
  assert.equal(rb.late, "MX_STATUS_SUCCESS");
});

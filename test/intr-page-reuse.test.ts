/**
 * A window slot's interrupt page and the peers it was granted to (src/myrixen/back/
 * shared-memory.ts, recall). A co-resident peer is granted its peer's interrupt page (to wake
 * it); a guest owns its kernel, so a hostile one keeps it mapped after the channel is gone.
 * The slot then served its owner's next endpoint with that same page, granted to the next
 * peers too: a former peer kept writing the wake counter and the sleeping flag the owner and
 * its new peers rely on — memory a domain could reach was handed on while it lived. Now the
 * slot comes back with a fresh interrupt page (and a new id, so the owner's frontend drops the
 * old mappings) whenever a live peer was granted the old one: one that unmapped it as a
 * frontend does still holds the buffer it was handed (a SharedArrayBuffer is never taken back).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { STALE_INTR_PAGES_PER_DOMAIN } from "../src/myrixen/back/shared-memory.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";
import { until } from "./helpers/until.js";

const PROGRAM = new URL("./fixtures/guests/intr-keeper.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

async function next<T>(d: Domain): Promise<T> {
  const [m] = await nextMessage(d);
  return m as T;
}

function start(role: "owner" | "keeper" | "peer", i: number) {
  return host.startGuest({ module: PROGRAM, args: { role }, name: `intr-${role}-${i}`, pages: 1024 });
}

test("a former peer that keeps the owner's interrupt page mapped cannot write the page of the owner's next endpoint", async () => {
  const replacedBefore = host.backendStats().intrPagesReplaced;
  const owner = await start("owner", 1);
  const addr = await next(owner);
  const keeper = await start("keeper", 1);
  keeper.send(addr);
  assert.equal(await next(keeper), "connected");
  // The owner's endpoint closes (its channel with it) and the same id opens again.
  owner.send("reopen");
  assert.equal(await next(owner), "reopened");
  keeper.send("write");
  assert.equal(await next(keeper), "written");
  owner.send("check");
  const { marked } = await next<{ marked: boolean }>(owner);
  assert.equal(marked, false, "the former peer's write reached the reopened endpoint's interrupt page");
  assert.equal(host.backendStats().intrPagesReplaced, replacedBefore + 1);
  // Nothing of the old page is left once the keeper is gone, while the owner still runs: its
  // frontend dropped the old slot id at the reopen, so the owner's grant of it ended too.
  keeper.send("stop");
  await keeper.exited;
  await until(() => host.backendStats().deferredGrants === 0, "dom0's deferred grants back to 0", 10_000);
  owner.send("stop");
  await owner.exited;
});

test("a former peer that unmapped the page as a frontend does, keeping its view, cannot write the page of the owner's next endpoint", async () => {
  const replacedBefore = host.backendStats().intrPagesReplaced;
  const grantsBefore = host.backendStats().grantsInUse;
  const owner = await start("owner", 2);
  const addr = await next(owner);
  const peer = await start("peer", 2);
  peer.send(addr);
  assert.equal(await next(peer), "connected");
  peer.send("release");
  assert.equal(await next(peer), "released");
  owner.send("reopen");
  assert.equal(await next(owner), "reopened");
  // Its grant unmapped, the peer still holds the buffer it was handed.
  peer.send("write");
  assert.equal(await next(peer), "written");
  owner.send("check");
  const { marked } = await next<{ marked: boolean }>(owner);
  assert.equal(marked, false, "the former peer's write reached the reopened endpoint's interrupt page");
  assert.equal(host.backendStats().intrPagesReplaced, replacedBefore + 1);
  for (const d of [owner, peer]) d.send("stop");
  await Promise.all([owner.exited, peer.exited]);
  await until(
    () => host.backendStats().grantsInUse <= grantsBefore,
    "dom0's grants back to where they were",
    10_000,
  );
});

test("a peer that keeps every interrupt page while its owner reopens in a loop holds at most its share; then it talks through the NIC", async () => {
  // It releases each dead channel as a frontend does (so the pair's channel buffers come back)
  // and keeps its views: one interrupt page more per round, for as long as it lives.
  const replacedBefore = host.backendStats().intrPagesReplaced;
  const owner = await start("owner", 3);
  const addr = await next(owner);
  const keeper = await start("peer", 3);
  keeper.send(addr);
  assert.equal(await next(keeper), "connected");
  const replaced = () => host.backendStats().intrPagesReplaced - replacedBefore;
  const round = async () => {
    owner.send("reopen");
    assert.equal(await next(owner), "reopened");
    keeper.send("reconnect");
    return (await next<{ channel: boolean }>(keeper)).channel;
  };
  // Until it holds its share (a round whose channel waits for dom0 to get a buffer back
  // replaces nothing: how many rounds that takes is the scheduler's business).
  for (let i = 0; i < 8 * STALE_INTR_PAGES_PER_DOMAIN && replaced() < STALE_INTR_PAGES_PER_DOMAIN; i++)
    await round();
  assert.equal(replaced(), STALE_INTR_PAGES_PER_DOMAIN);
  // Past it: no channel, so no page of the owner's, and dom0 makes no more.
  const after: boolean[] = [];
  for (let i = 0; i < 16; i++) after.push(await round());
  assert.equal(
    replaced(),
    STALE_INTR_PAGES_PER_DOMAIN,
    `dom0 made a fresh interrupt page for every reopen the keeper held the old one through (channels after its share: ${after.map(Number).join("")})`,
  );
  assert.deepEqual(after, Array(16).fill(false));
  keeper.send("stop");
  await keeper.exited;
  owner.send("stop");
  await owner.exited;
  await until(() => host.backendStats().deferredGrants === 0, "dom0's deferred grants back to 0", 10_000);
});

/**
 * dom0's grant keeper (src/myrixen/back/grant-keeper.ts) ends its grants to guests only when no
 * one maps them, and defers the rest. Ending used to be two steps — look whether the grant was
 * mapped, then end it — and a peer that mapped in between (a guest maps whenever it likes)
 * made the end fail, which the keeper took for "already ended": the grant stayed in force and
 * mapped, and was never retried (and a recalled interrupt page stayed on its slot, mapped by a
 * former peer). The window is a few instructions wide; the test holds it open by answering the
 * keeper's look before the map, as a peer that maps just after it would.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { GrantKeeper } from "../src/myrixen/back/grant-keeper.js";
import { STATS_BYTES, Stat } from "../src/myrixen/back/stats.js";
import type { DomId } from "../src/xen/abi.js";
import {
  acquireGrant,
  allocGrantTable,
  type GrantingDomain,
  GuestGrantTable,
  releaseGrant,
} from "../src/xen/grant-table.js";
import type { Guest } from "../src/xen/guest/guest.js";

const PEER: DomId = 7;
const PAGE = new SharedArrayBuffer(4096);

/** dom0's grant table, the hypervisor's view of it (to map as the peer does) and a keeper over it. */
function setup() {
  const { table: tableBuf, shadow } = allocGrantTable(64);
  const table = new GuestGrantTable(tableBuf, 0, () => true);
  const granter: GrantingDomain = {
    domid: 0,
    entries: table.entries,
    shadow: new Int32Array(shadow),
    frame: () => ({ buffer: PAGE, offset: 0, shareable: true }),
  };
  /** Set: the peer maps that grant at the keeper's first step on it. */
  let mapAfterLook: number | undefined;
  const grants = {
    table,
    grantAccess: (peer: DomId, pfn: number, o: { readonly?: boolean } = {}) =>
      table.grantAccess(peer, pfn, o.readonly === true),
    endAccess: (ref: number) => table.endAccess(ref),
    // The peer maps at the keeper's first step on that grant, whichever it is: after a look
    // (answered as before the map), or just before the end itself.
    tryEndAccess: (ref: number) => {
      mapNow(ref);
      return table.tryEndAccess(ref);
    },
    isInUse: (ref: number) => {
      const before = table.isInUse(ref);
      mapNow(ref);
      return before;
    },
  };
  const mapNow = (ref: number) => {
    if (mapAfterLook !== ref) return;
    mapAfterLook = undefined;
    assert.equal(acquireGrant(granter, ref, PEER, true).status, 0, "the peer maps the grant");
  };
  const stats = new Int32Array(new SharedArrayBuffer(STATS_BYTES));
  const keeper = new GrantKeeper({ grants } as unknown as Guest, stats);
  return {
    table,
    keeper,
    stats,
    granter,
    raceOn: (ref: number) => {
      mapAfterLook = ref;
    },
  };
}

test("a grant the peer maps just as dom0 ends it stays deferred, and ends once the peer unmaps", () => {
  const { table, keeper, stats, granter, raceOn } = setup();
  const [ref] = keeper.grantRun(PEER, 1, 1, false);
  raceOn(ref);
  keeper.end([ref]);
  // Mapped now: the grant must still be dom0's to end, and the keeper must know it waits.
  assert.ok(table.isInUse(ref), "the peer maps it");
  assert.equal(
    Atomics.load(stats, Stat.deferredGrants),
    1,
    "the end was taken for done while the peer maps the grant",
  );
  releaseGrant(granter, ref, true);
  keeper.retry();
  assert.equal(Atomics.load(stats, Stat.deferredGrants), 0);
  assert.equal(table.entries[2 * ref], 0, "the grant ended once unmapped");
  assert.notEqual(acquireGrant(granter, ref, PEER, true).status, 0, "nothing maps it again");
  keeper.stop();
});

/**
 * The NIC's endpoint table and the lockouts its ids carry (nic/endpoints.ts): an owner that left
 * TAINTED_IDS_PER_OWNER ids locked out opens no other id by number, but may always open its own
 * locked ids again; others' opens are not held back by its records.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { allocNicCounters } from "../src/nic/counters.js";
import { EndpointTable, TAINTED_IDS_PER_OWNER } from "../src/nic/endpoints.js";
import { Tpt } from "../src/nic/tpt.js";
import { ANY_ENDPOINT } from "../src/nic/window.js";

function table(): EndpointTable {
  return new EndpointTable(1, 8, new Tpt(), new Float64Array(allocNicCounters(8)));
}

/** Opens `ids` for `owner` at once, has each told it is locked out for a minute, and closes them. */
function lockOut(t: EndpointTable, owner: string, ids: number[]): void {
  for (const id of ids) t.open({ op: "open_endpoint", owner, endpointId: id, key: 1 });
  for (const id of ids) {
    t.ctxs[id].noteLockout(60_000, 600_000);
    t.markClosed(t.ctxs[id]);
  }
}

test("an owner with locked-out ids opens only those by number; its own come back to it, others get clean ids", () => {
  const t = table();
  assert.equal(TAINTED_IDS_PER_OWNER, 2);
  // Three held open at once (as its quota allows), then locked out and closed.
  lockOut(t, "guesser", [0, 1, 2]);
  // Another id by number: refused, naming the ids it may open.
  assert.throws(
    () => t.open({ op: "open_endpoint", owner: "guesser", endpointId: 5, key: 1 }),
    /left endpoint ids 0, 1, 2 locked out/,
  );
  assert.equal(t.ctxs[5].open, false);
  // Its own locked ids, by number: allowed, every one of them.
  for (const id of [2, 0]) {
    const r = t.open({ op: "open_endpoint", owner: "guesser", endpointId: id, key: 1 });
    assert.equal(r.endpointId, id);
    t.markClosed(t.ctxs[id]);
  }
  // ANY_ENDPOINT gives it one of its own; a newcomer gets a clean id, by number or not.
  const any = t.open({ op: "open_endpoint", owner: "guesser", endpointId: ANY_ENDPOINT, key: 1 });
  assert.ok([0, 1, 2].includes(any.endpointId), `got ${any.endpointId}`);
  const newcomer = t.open({ op: "open_endpoint", owner: "newcomer", endpointId: ANY_ENDPOINT, key: 1 });
  assert.ok(![0, 1, 2].includes(newcomer.endpointId), `got ${newcomer.endpointId}`);
  assert.equal(t.open({ op: "open_endpoint", owner: "newcomer", endpointId: 5, key: 1 }).endpointId, 5);
});

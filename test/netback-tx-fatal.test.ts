/**
 * netback's TX gather (src/netback/tx.ts) on rings whose packet is fatal: a more_data chain
 * that runs past req_prod, which ends the vif. TxPath keeps, for the pass, the ring offset of
 * each data slot's response (rspOff, sized for a full staging area of legal packets). A fatal
 * packet's offsets stayed counted: about eleven such vifs in one pass, beside a staging area
 * filled by honest packets, ran the count past the array, and the honest frames' OKAY
 * statuses were written at offset NaN, that is into their own ring's header. A packet that
 * stages nothing now leaves no offsets. The real TxPath and rings; only what gather never
 * touches (the guest's grant copies, the staging frames) is left out.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { NetbackCounters } from "../src/netback/counters.js";
import type { Staging } from "../src/netback/staging.js";
import { TxPath } from "../src/netback/tx.js";
import type { Vif } from "../src/netback/vif.js";
import { PAGE_SIZE } from "../src/xen/abi.js";
import type { Guest } from "../src/xen/guest/guest.js";
import { NETTXF_more_data, TX_REQ_BYTES, TX_RSP_BYTES, writeTxRequest } from "../src/xen/io/netif.js";
import { BackRing, FrontRing, initSharedRing } from "../src/xen/ring.js";

/** A vif whose TX ring holds one packet: a first slot and `more` more_data slots, the last one still saying more_data. */
function vifWithRunawayChain(domid: number, more: number): Vif {
  const page = new Uint8Array(new SharedArrayBuffer(PAGE_SIZE));
  initSharedRing(page);
  const front = new FrontRing(page, TX_REQ_BYTES, TX_RSP_BYTES);
  for (let i = 0; i <= more; i++)
    writeTxRequest(front.view, front.nextRequest(), {
      gref: 8,
      offset: 0,
      flags: NETTXF_more_data,
      id: i,
      size: i === 0 ? 1000 : 10,
    });
  front.pushRequests();
  return {
    key: `${domid}/0`,
    domid,
    devid: 0,
    state: "connected",
    stat: -1,
    errorsLogged: 0,
    tx: new BackRing(page, TX_REQ_BYTES, TX_RSP_BYTES),
  } as unknown as Vif;
}

test("a fatal packet leaves no response offsets in the pass (they ran past the array beside a full staging area)", () => {
  const logs: string[] = [];
  const tx = new TxPath(
    undefined as unknown as Guest,
    { frames: [], count: 0 } as unknown as Staging,
    new NetbackCounters(new SharedArrayBuffer(1 << 16)),
    (m) => logs.push(m),
  );
  tx.begin();
  for (let d = 1; d <= 12; d++) {
    const v = vifWithRunawayChain(d, 15);
    assert.equal(tx.gather(v), false);
    assert.match(v.fatal ?? "", /more_data chain runs past req_prod/);
  }
  // Twelve fatal vifs, sixteen slots each: none of them is kept for the pass's responses.
  assert.equal((tx as unknown as { nRsp: number }).nRsp, 0);
});

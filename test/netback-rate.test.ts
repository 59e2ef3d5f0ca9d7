/**
 * A vif's TX rate (Xen's `rate=`: the toolstack's `rate` key, "<bytes>,<usec>", which netback
 * reads when the vif connects and holds its TX to, as Linux's xen-netback credit does). A
 * guest's QoS tx cap becomes its vif's rate: before, its cap held its NIC traffic only, and on
 * the split path it filled a neighbour's RX ring with unicast as fast as netback could copy
 * (a reviewer's measure: 60–70k frames a second, the neighbour's round trips 2.5× slower).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { MAX_FRAME, parseVifRate, VIF_RATE_WINDOW_USEC, vifRateFor } from "../src/xen/io/netif.js";
import { nextMessage } from "./helpers/messages.js";
import { startNetAgent } from "./helpers/net-agent.js";

const FLOOD = new URL("./fixtures/guests/net-flood.js", import.meta.url);
/** The flooder's cap: 2 MB/s, 100,000 bytes per 50 ms window. */
const CAP = 2_000_000;

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host?.stop());

test("the rate key reads as Linux's netback reads it; anything else is no limit", () => {
  assert.deepEqual(parseVifRate("100000,50000"), { bytes: 100_000, usec: 50_000 });
  for (const bad of [
    undefined,
    "",
    "0,50000",
    "100,0",
    "-1,5",
    "1.5,5",
    "100000",
    "100000,50000,1",
    " 1,2",
    "9".repeat(16) + ",1",
  ])
    assert.equal(parseVifRate(bad), undefined, JSON.stringify(bad));
  assert.equal(vifRateFor(CAP), `${CAP / 20},${VIF_RATE_WINDOW_USEC}`);
});

test("a guest with a tx cap floods a neighbour's vif with unicast no faster than its vif's rate", async () => {
  const victim = await startNetAgent(host, "victim");
  // The bridge learns the victim's MAC (else its frames would be floods, under storm control).
  await victim.call({ op: "send", frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 60, tag: 1 }] });
  const flooder = await host.startGuest({
    module: FLOOD,
    name: "capped-flooder",
    args: { dst: victim.mac, len: 1500 },
    pages: 1024,
    qos: { tx: { bytesPerSec: CAP } },
  });
  try {
    await nextMessage(flooder);
    const vifOf = () => host.netStats().vifs.find((v) => v.domid === flooder.domid && v.connected);
    const first = vifOf();
    assert.ok(first, "the flooder's vif");
    const t0 = performance.now();
    const b0 = first.txBytes;
    await new Promise((r) => setTimeout(r, 1000));
    const last = vifOf()!;
    const elapsed = (performance.now() - t0) / 1000;
    const moved = last.txBytes - b0;
    // An upper bound whatever the scheduling: a window's credit per window elapsed, one window
    // more (the one under way at t0), and one frame of overdraft.
    const bound = CAP * elapsed + CAP * (VIF_RATE_WINDOW_USEC / 1e6) * 2 + MAX_FRAME;
    assert.ok(
      moved <= bound,
      `${moved} bytes in ${elapsed.toFixed(2)} s, over the rate's ${bound.toFixed(0)}`,
    );
    assert.ok(last.txRateHeld > first.txRateHeld, "netback held its TX for the next window");
    assert.ok(host.netStats().totals.txRateHeld >= last.txRateHeld, "counted in the totals too");
  } finally {
    await flooder.destroy();
    await victim.dom.destroy();
  }
});

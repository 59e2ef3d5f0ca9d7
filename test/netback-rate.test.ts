/**
 * A vif's TX rate (Xen's `rate=`: the toolstack's `rate` key, "<bytes>,<usec>", which netback
 * follows and holds the vif's TX to, as Linux's xen-netback credit does). A
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
const RECONNECT = new URL("./fixtures/guests/rate-reconnect.js", import.meta.url);
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

/**
 * What a vif capped at CAP may move in `seconds`, whatever the scheduling: a window's credit per
 * window elapsed, one window more (the one under way at the start), one frame of overdraft.
 */
function bound(seconds: number): number {
  return Math.ceil(CAP * seconds + CAP * (VIF_RATE_WINDOW_USEC / 1e6) * 2 + MAX_FRAME);
}

/** That `moved` bytes in `seconds` kept to the rate (bound). */
function withinRate(moved: number, seconds: number, what = ""): void {
  assert.ok(
    moved <= bound(seconds),
    `${moved} bytes in ${seconds.toFixed(2)} s${what}, over the rate's ${bound(seconds)}`,
  );
}

/** The victim: a guest whose MAC the bridge has learned (else frames to it are floods, under storm control). */
async function victim() {
  const v = await startNetAgent(host, "victim");
  await v.call({ op: "send", frames: [{ dst: "ff:ff:ff:ff:ff:ff", len: 60, tag: 1 }] });
  return v;
}

/** Bytes the vifs of `domid` (every incarnation) took from its TX ring. */
function txOf(domid: number): number {
  return host
    .netStats()
    .vifs.filter((v) => v.domid === domid)
    .reduce((n, v) => n + v.txBytes, 0);
}

test("a guest with a tx cap floods a neighbour's vif with unicast no faster than its vif's rate", async () => {
  const target = await victim();
  const flooder = await host.startGuest({
    module: FLOOD,
    name: "capped-flooder",
    args: { dst: target.mac, len: 1500 },
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
    withinRate(moved, elapsed);
    assert.ok(last.txRateHeld > first.txRateHeld, "netback held its TX for the next window");
    assert.ok(host.netStats().totals.txRateHeld >= last.txRateHeld, "counted in the totals too");
  } finally {
    await flooder.destroy();
    await target.dom.destroy();
  }
});

test("a cap set on a running guest (Host.setQos) reaches its connected vif at once", async () => {
  const v = await victim();
  const flooder = await host.startGuest({
    module: FLOOD,
    name: "recapped-flooder",
    args: { dst: v.mac, len: 1500 },
    pages: 1024,
    qos: { tx: { bytesPerSec: 1e9 } },
  });
  try {
    await nextMessage(flooder);
    await host.setQos(flooder.domid, { tx: { bytesPerSec: CAP } });
    // netback applies it when its watch fires: give it that, then measure.
    const b0 = await settle(() => txOf(flooder.domid));
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 1000));
    const moved = txOf(flooder.domid) - b0;
    const elapsed = (performance.now() - t0) / 1000;
    withinRate(moved, elapsed);
  } finally {
    await flooder.destroy();
    await v.dom.destroy();
  }
});

test("a capped guest that re-opens its vif after every burst gets no fresh credit for it", async () => {
  const v = await victim();
  const g = await host.startGuest({
    module: RECONNECT,
    name: "reopener",
    args: { dst: v.mac, len: 1500, ms: 2000, perConnect: 200, drainMs: 3 },
    pages: 1024,
    qos: { tx: { bytesPerSec: CAP } },
  });
  try {
    await nextMessage(g);
    const b0 = txOf(g.domid);
    const t0 = performance.now();
    const exit = await g.exited;
    const elapsed = (performance.now() - t0) / 1000;
    assert.equal(exit.state, "shutdown", exit.error?.message);
    const { reconnects } = exit.result as { reconnects: number };
    assert.ok(reconnects > 5, `it re-opened its vif (${reconnects} times)`);
    const moved = txOf(g.domid) - b0;
    withinRate(moved, elapsed, ` over ${reconnects} reopens`);
  } finally {
    await g.destroy().catch(() => undefined);
    await v.dom.destroy();
  }
});

/** `read()` once it has stopped moving fast enough to show the cap took (a few windows), or after 3 s. */
async function settle(read: () => number): Promise<number> {
  const end = performance.now() + 3000;
  let last = read();
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    const now = read();
    if (now - last <= CAP / 10 + MAX_FRAME * 2) return now;
    last = now;
  }
  return read();
}

/**
 * The bridge's storm control against a guest that re-opens its vif: every reconnect makes a
 * new bridge port, and each new port came with a full flood bucket, so a guest broadcasting a
 * burst, closing its netfront and connecting again flooded every other guest's rx ring at
 * about 8× the rate (a burst per reopen). The bucket is now its domain's, for as long as the
 * domain has a vif (src/netback/vif.ts).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { DEFAULT_FLOOD_BURST, DEFAULT_FLOOD_RATE } from "../src/netback/bridge.js";
import { startNetAgent } from "./helpers/net-agent.js";

/** Reopens; each one bought a fresh burst before. */
const ROUNDS = 40;

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host?.stop());

/** The bridge's floods, passed and dropped by storm control. */
function floods(): { floods: number; limited: number } {
  const b = host.netStats().bridge;
  return { floods: b.floods, limited: b.floodsLimited };
}

test("a guest re-opening its vif between bursts of broadcasts floods no more than its rate allows", async () => {
  const attacker = await startNetAgent(host, "storm-reopener");
  const domid = attacker.dom.domid;
  try {
    const s0 = floods();
    const t0 = performance.now();
    let sent = 0;
    for (let r = 0; r < ROUNDS; r++) {
      sent += await attacker.call<number>({
        op: "burst",
        count: DEFAULT_FLOOD_BURST,
        dst: "ff:ff:ff:ff:ff:ff",
        len: 60,
      });
      // netback has taken the whole burst (passed or dropped) before the vif goes: no frame
      // is lost to the close, whatever the scheduling.
      const deadline = performance.now() + 10_000;
      for (;;) {
        const s = floods();
        if (s.floods - s0.floods + s.limited - s0.limited >= sent) break;
        assert.ok(performance.now() < deadline, `netback took the burst of round ${r}`);
        await new Promise((res) => setTimeout(res, 1));
      }
      await attacker.call({ op: "close" });
      await attacker.call({ op: "init", rxBuffers: 16, txBuffers: 64 });
    }
    const elapsed = performance.now() - t0;
    const s1 = floods();
    const passed = s1.floods - s0.floods;
    const v = host.netStats().vifs.find((x) => x.domid === domid);
    assert.ok(v && v.disconnects >= ROUNDS, `the guest really re-opened its vif (${v?.disconnects})`);
    assert.equal(passed + s1.limited - s0.limited, sent, "every broadcast was metered");
    // The domain's one bucket: its burst, then the rate over the time it took (slack for
    // clocks and scheduling; a fresh bucket per reopen gave a burst per round, ~ROUNDS × 256).
    const allowed = DEFAULT_FLOOD_BURST + ((DEFAULT_FLOOD_RATE * elapsed) / 1000) * 1.5 + 256;
    assert.ok(
      passed <= allowed,
      `floods ${passed} of ${sent} over ${Math.round(elapsed)} ms in ${ROUNDS} reopens: at most ${Math.round(allowed)} allowed`,
    );
  } finally {
    attacker.dom.send({ op: "exit" });
    await attacker.dom.exited;
  }
});

/**
 * The split path as the fast path's fallback (Solarflare's accelerator model): endpoints move
 * between the paths with traffic flowing both ways and lose, duplicate or reorder nothing; a
 * guest whose fast path the host disables, or whose endpoint the NIC cannot give, works on the
 * split path and says why; the driver domain's counters show what the slow path costs.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const SWITCH = new URL("./fixtures/guests/mx-switch.js", import.meta.url);

interface Outcome {
  path: string;
  fallbackReason?: string;
  sent: number;
  received: number;
  problems: string[];
  switches: number;
  paths: string[];
  switchErrors: string[];
  finished: boolean;
  counters: Record<string, number>;
  ether?: Record<string, number>;
}

async function run(
  host: Host,
  args: { messages: number; switchEvery: number; sizes: number[] },
  fastPath: [boolean, boolean] = [true, true],
): Promise<[Outcome, Outcome]> {
  const start = (role: "a" | "b", fp: boolean) =>
    host.startGuest({
      module: SWITCH,
      args: { role, ...args },
      pages: 8192,
      maxHeapMb: 256,
      name: `switch-${role}`,
      fastPath: fp,
    });
  const a = await start("a", fastPath[0]);
  const gotA = nextMessage(a);
  const b = await start("b", fastPath[1]);
  const gotB = nextMessage(b);
  const [addrA] = await gotA;
  const [addrB] = await gotB;
  a.send(addrB);
  b.send(addrA);
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", `a: ${ea.error?.stack}`);
  assert.equal(eb.state, "shutdown", `b: ${eb.error?.stack}`);
  return [ea.result as Outcome, eb.result as Outcome];
}

function assertClean(o: Outcome, messages: number, who: string): void {
  assert.deepEqual(o.problems, [], `${who}: ${o.problems.join("; ")}`);
  assert.equal(o.sent, messages, `${who} sent`);
  assert.equal(o.received, messages, `${who} received`);
  assert.equal(o.finished, true, `${who} finished: ${JSON.stringify((o as { fin?: unknown }).fin)}`);
}

describe("the split path as fallback", () => {
  test("endpoints switch paths repeatedly with traffic both ways: nothing lost, duplicated or reordered", async () => {
    const host = await Host.start({});
    try {
      const messages = 2400;
      // Eager in one frame, several frames, and rendezvous (pulled over the NIC or over Ethernet);
      // on the channel, 40,000 and 60,000 bytes go eager in pieces and may wait in the backlog
      // for lane room when a switch moves them to another path.
      const sizes = [8, 1000, 9000, 20_000, 40_000, 60_000, 100_000, 0, 64];
      const [a, b] = await run(host, { messages, switchEvery: 150, sizes });
      assertClean(a, messages, "a");
      assertClean(b, messages, "b");
      assert.deepEqual(a.switchErrors, []);
      assert.deepEqual(b.switchErrors, []);
      assert.ok(a.switches >= 10 && b.switches >= 10, `switches: a ${a.switches}, b ${b.switches}`);
      assert.ok(a.paths.includes("split") && a.paths.includes("bypass"));
      // Both ways in: NIC/channel traffic and Ethernet traffic, merged by sequence number.
      assert.ok(a.counters.eager > 0 && a.counters.rndv > 0);
      assert.ok((a.ether?.framesRx ?? 0) > 0 && (b.ether?.framesRx ?? 0) > 0);
      const net = host.netStats();
      assert.ok(net.totals.grantCopies > 0, "netback grant-copied the split path's frames");
    } finally {
      await host.stop();
    }
  });

  test("a guest whose fast path the host disables runs on the split path, says why, and talks to a bypass guest", async () => {
    const host = await Host.start({});
    try {
      const messages = 300;
      const sizes = [8, 5000, 50_000];
      const [a, b] = await run(host, { messages, switchEvery: 1e9, sizes }, [false, true]);
      assert.equal(a.path, "split");
      assert.match(a.fallbackReason ?? "", /disabled by policy/);
      assert.equal(b.path, "bypass");
      assert.equal(b.fallbackReason, undefined);
      assertClean(a, messages, "a");
      assertClean(b, messages, "b");
    } finally {
      await host.stop();
    }
  });

  test("an endpoint the NIC cannot give opens on the split path and says why", async () => {
    // One endpoint context on the NIC: the first guest takes it, the second falls back.
    const host = await Host.start({ maxEndpoints: 1 });
    try {
      const messages = 200;
      const [a, b] = await run(host, { messages, switchEvery: 1e9, sizes: [16, 60_000] });
      assert.equal(a.path, "bypass");
      assert.equal(b.path, "split");
      assert.match(b.fallbackReason ?? "", /fast path refused the endpoint/);
      assertClean(a, messages, "a");
      assertClean(b, messages, "b");
    } finally {
      await host.stop();
    }
  });
});

describe("an endpoint talking to itself and to its own guest's other endpoint", () => {
  const SELF = new URL("./fixtures/guests/mx-self.js", import.meta.url);
  for (const path of ["bypass", "split"] as const) {
    test(`on the ${path} path: self-connect and messages to self deliver, eager and rendezvous`, async () => {
      const host = await Host.start({});
      try {
        const d = await host.startGuest({
          module: SELF,
          args: path === "split" ? { mxPath: "split" } : {},
          pages: 2048,
          name: `self-${path}`,
        });
        const e = await d.exited;
        assert.equal(e.state, "shutdown", e.error?.stack);
        const r = e.result as { path: string; self: unknown; sibling: unknown };
        assert.equal(r.path, path);
        assert.equal(r.self, true, `self: ${String(r.self)}`);
        assert.equal(r.sibling, true, `sibling: ${String(r.sibling)}`);
      } finally {
        await host.stop();
      }
    });
  }
});

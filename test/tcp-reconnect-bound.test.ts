/**
 * How long a NIC redials a peer whose link dropped without a goodbye (src/nic/tcp-attach.ts:
 * RECONNECT_FAST_FOR_MS of fast retries, then one every RECONNECT_SLOW_MS, then the peer is
 * given up after RECONNECT_GIVE_UP_MS and forgotten). Before, a peer killed, crashed, removed
 * from the cluster or back under another NIC id was redialled every second for as long as the
 * host ran: a timer, a "down" entry in the NIC's link table and a connection plus handshake a
 * second per dead peer, for weeks. The bounds are shortened here through the spec's `reconnect`.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { NicInfo } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { control, freePort, HOST } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const nics: NicDevice[] = [];
after(async () => {
  await Promise.all(nics.map((n) => n.stop()));
});

/** Fast retries for 600 ms, then one every 300 ms, given up 2.5 s after the link dropped. */
const RECONNECT = { fastForMs: 600, slowEveryMs: 300, giveUpAfterMs: 2500 };

test("a peer NIC killed without a goodbye is retried, relinked if it comes back within the bound, else given up and forgotten: no more dials", {
  timeout: 60_000,
}, async () => {
  const n1 = await NicDevice.start({ nicId: 21 });
  nics.push(n1);
  const logs: string[] = [];
  n1.onLog((m) => logs.push(m));
  const ctl1 = control(n1);
  const state = () => (ctl1.call<NicInfo>({ op: "info" }).linkStates ?? []).find((l) => l.peerNic === 22);
  const port = await freePort();
  const peer = async () => {
    const n = await NicDevice.start({ nicId: 22 });
    nics.push(n);
    await n.attachLink({ kind: "tcp-listen", host: HOST, port, key: LINK_KEY });
    return n;
  };
  const spec = { kind: "tcp", host: HOST, port, peerNic: 22, timeoutMs: 500, key: LINK_KEY } as const;
  let n2 = await peer();
  await n1.attachLink({ ...spec, reconnect: RECONNECT });
  assert.equal(state()?.state, "up");

  // Killed, and back after the fast retries but within the bound: the slow retries relink it.
  await n2.kill();
  await until(() => state()?.state === "down", "the link down");
  await sleep(RECONNECT.fastForMs + 200);
  n2 = await peer();
  await until(() => state()?.state === "up", "relinked by a slow retry", 5000);
  assert.equal(state()?.reconnects, 1);

  // Killed for good: its old port takes connections (and drops them) so the dials can be counted.
  await n2.kill();
  let dials = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    dials++;
    sockets.add(s);
    s.on("error", () => {});
    s.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, HOST, () => resolve());
  });
  try {
    await until(() => state()?.state !== "up", "the link down again");
    // The bound is 2.5 s from the drop; the old code never gave up.
    await until(() => state() === undefined, "NIC 22 given up and forgotten", 15_000);
    assert.ok(dials >= 2, `retried at its old port first (${dials} dials)`);
    assert.equal(n1.counters().global.links_given_up, 1, "counted");
    const givenUp = () => logs.filter((l) => /nic 21 -> nic 22 .*giving up and forgetting/.test(l));
    // Link events cross from the NIC's thread as messages: the line may follow the state.
    await until(() => givenUp().length > 0, "the give-up logged");
    const seen = dials;
    await sleep(4 * RECONNECT.slowEveryMs);
    const said = givenUp();
    assert.equal(said.length, 1, `logged once: ${said.join(" | ")}`);
    assert.match(said[0], /no link for 2500 ms \(\d+ attempts\); giving up and forgetting NIC 22/);
    assert.equal(dials, seen, "no dial after the peer was given up");
    assert.equal(state(), undefined);
    await assert.rejects(n1.detachLink(22), /ENOENT/, "nothing is left of the link to detach");
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  }

  // A later attach (a job that needs the peer again) links it afresh through the usual path.
  await peer();
  await n1.attachLink({ ...spec, reconnect: RECONNECT });
  assert.deepEqual([state()?.state, state()?.reconnects], ["up", 0]);
});

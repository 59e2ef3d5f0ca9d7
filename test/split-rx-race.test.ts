/**
 * A guest that moves its own RX ring's req_prod back and forth under netback (fixture
 * rx-racer.ts; every value one a correct frontend could publish, so the ring is never
 * "broken"). netback counted a frame's RX requests, then took them one by one, reading
 * req_prod again each time: when it had moved back, a copy failed and the response after it
 * threw in netback's pass ("no consumed request awaits a response"). The pass stopped midway,
 * and the vifs it had touched were never put on its list again: an honest guest that shared
 * that pass had its TX and RX responses never pushed again, cut off for good. The ring now
 * consumes up to the req_prod it validated (test/ring.test.ts has the exact interleaving);
 * here the real thing, 2,000 times (the old code failed within 229–550): the pass never fails and the honest guest keeps talking.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { startNetAgent } from "./helpers/net-agent.js";

const RACER = new URL("./fixtures/guests/rx-racer.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 21 });
});
after(() => host?.stop());

test("a netfront moving its RX req_prod under netback's feet neither makes netback's pass throw nor cuts off another guest", {
  timeout: 60_000,
}, async (t) => {
  const sender = await startNetAgent(host, "sender");
  const victim = await startNetAgent(host, "victim");
  const stop = new SharedArrayBuffer(4);
  const racer = await host.startGuest({
    module: RACER,
    name: "racer",
    pages: 256,
    maxHeapMb: 64,
    args: { stop },
  });
  const { mac } = await new Promise<{ mac: string }>((resolve, reject) => {
    racer.once("message", (m) => resolve(m as { mac: string }));
    racer.once("exit", () => reject(new Error(`racer stopped: ${racer.error?.message}`)));
  });
  const failed = () => host.log.find((l) => /netback pass failed/.test(l.message))?.message;
  // The honest victim first works: it sends to the sender and has its frames answered.
  assert.equal(await victim.call({ op: "burst", dst: sender.mac, len: 60, count: 200 }), 200);

  // The sender's traffic: one small frame to the victim, then a 3-page frame to the racer, in
  // one flush (so one netback pass), until netback's pass fails (or 2,000 tries).
  let tries = 0;
  while (tries < 2000 && failed() === undefined) {
    await sender.call({
      op: "send",
      frames: [
        { dst: victim.mac, len: 60, tag: 1 },
        { dst: mac, len: 9014, tag: 2 },
      ],
    });
    tries++;
    // The victim takes what it got and posts its RX buffers again, as an honest guest does.
    if (tries % 32 === 0) await victim.call({ op: "recv", timeoutMs: 0 });
  }
  Atomics.store(new Int32Array(stop), 0, 1);
  const line = failed();
  t.diagnostic(`tries: ${tries}; ${line?.split("\n")[0] ?? "netback's pass never failed"}`);

  // The victim, which did nothing wrong, sends 200 frames again (64 TX buffers: it needs
  // netback's TX responses to reuse them).
  const before = host.netStats().vifs.find((x) => x.domid === victim.dom.domid)!;
  let outcome: string;
  try {
    outcome = `sent ${await victim.call({ op: "burst", dst: sender.mac, len: 60, count: 200 })}`;
  } catch (e) {
    outcome = (e as Error).message;
  }
  const after = host.netStats().vifs.find((x) => x.domid === victim.dom.domid)!;
  t.diagnostic(
    `victim afterwards: ${outcome}; netback counted ${after.txFrames - before.txFrames} of its frames sent and ${after.notificationsSent - before.notificationsSent} notifications to it`,
  );
  await Promise.all([racer.destroy(), sender.dom.destroy(), victim.dom.destroy()]);
  assert.equal(line, undefined, "netback's pass threw on values the racer wrote into its own ring");
  assert.equal(outcome, "sent 200", "an honest guest that shared the failed pass is cut off");
});

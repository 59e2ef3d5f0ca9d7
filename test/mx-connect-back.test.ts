/**
 * Both members of a co-resident pair connect at once: A connects (a channel, its CONNECT
 * queued for B), and B connects to A before reading its events, so it has the channel from
 * its own connect and its CONNECT is stale (never accepted). myrback counted such a channel
 * as not taken by B, so once A disconnected, every later connect of the pair found the pair's
 * channel closed and "not taken" and went through the NIC, for as long as both endpoints
 * lived, the dead channel still counted (a reviewer's PoC). Now the pair gets a fresh channel.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { connectTo, scriptedGuest } from "./helpers/mx-script.js";

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 14, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

test("a pair whose member connected back before reading the CONNECT gets channels again after a disconnect", async () => {
  const a = await scriptedGuest(host, "a");
  const b = await scriptedGuest(host, "b");
  await connectTo(a, b, "b");
  await connectTo(b, a, "a");
  await b.do({ op: "progress", n: 5 }); // reads the CONNECT: stale, its own channel
  await a.do({ op: "disconnect", as: "b" });
  await b.do({ op: "progress", n: 5 });
  const channels: number[] = [];
  for (let r = 0; r < 3; r++) {
    await connectTo(a, b, "b");
    const sent = await a.do({ op: "send", to: "b", vals: [r], tag: 7, wait: true });
    assert.deepEqual(
      sent.codes.map((c: { code: string }) => c.code),
      ["MX_STATUS_SUCCESS"],
    );
    assert.deepEqual(
      (await b.do({ op: "recv", n: 1, tag: 7, timeoutMs: 20_000 })).vals,
      [r],
      `round ${r} arrives`,
    );
    channels.push(host.backendStats().channels);
    await a.do({ op: "disconnect", as: "b" });
    await b.do({ op: "progress", n: 5 });
  }
  const counters = await a.do({ op: "counters" });
  assert.equal(counters.wireSends, 0, "none of A's later connections went through the NIC");
  assert.deepEqual(channels, [1, 1, 1], "one live channel for the pair each round");
  for (const g of [a, b]) {
    g.d.send({ op: "exit" });
    assert.equal((await g.d.exited).state, "shutdown");
  }
});

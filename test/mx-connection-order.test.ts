/**
 * One connection whose messages take two ways: it starts on the NIC (the pair's last channel
 * not taken yet) and gets a channel midway. The receiver's progress reads its channels before
 * the NIC's queue, so the channel's messages wait (held) for the first one; when the channel
 * then closed (either side disconnecting) they were matched at once, before the first one
 * came out of the NIC's queue: out of order within one connection (a reviewer's PoC), where
 * before the sequence epochs they were lost. Now a failed connection's held messages wait for
 * the address's next partner of the same session, which takes them over in order.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { connectTo, scriptedGuest } from "./helpers/mx-script.js";

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 17, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

for (const who of ["the receiver", "the sender", "neither"])
  test(`one connection's messages arrive in order across a change of way, ${who} disconnecting after them`, async () => {
    const a = await scriptedGuest(host, "sender");
    const b = await scriptedGuest(host, "receiver");
    await connectTo(b, a, "a");
    await b.do({ op: "disconnect", as: "a" });
    // A connects: the pair's channel is not taken yet, so through the NIC; m0 waits in B's queue.
    await connectTo(a, b, "b");
    const m0 = await a.do({ op: "send", to: "b", vals: [100], tag: 7, wait: true });
    await a.do({ op: "progress", n: 3 });
    // B connects: a channel, which A's connection takes up (it is still the same one).
    await connectTo(b, a, "a");
    await a.do({ op: "progress", n: 3 });
    const m12 = await a.do({ op: "send", to: "b", vals: [101, 102], tag: 7, wait: true });
    for (const s of [...m0.codes, ...m12.codes]) assert.equal(s.code, "MX_STATUS_SUCCESS");
    if (who === "the receiver") await b.do({ op: "disconnect", as: "a" });
    if (who === "the sender") await a.do({ op: "disconnect", as: "b" });
    assert.deepEqual((await b.do({ op: "recv", n: 3, tag: 7, timeoutMs: 20_000 })).vals, [100, 101, 102]);
    for (const g of [a, b]) {
      g.d.send({ op: "exit" });
      assert.equal((await g.d.exited).state, "shutdown");
    }
  });

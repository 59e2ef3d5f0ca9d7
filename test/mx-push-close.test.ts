/**
 * A 100,000-byte send to a co-resident peer, pushed through the channel after the receiver's
 * CTS, whose receiver disconnects while it is pushed (a reviewer's PoC, 3 in 300 rounds each
 * run): the sender went on copying the rest into the closed lane and said MX_STATUS_SUCCESS,
 * while the receive failed ("disconnected") and the data never reached the program. Now the
 * push stops at a closed lane, and after the last FRAG asks whether the reader read it
 * (LaneWriter.readBeforeClose), as an eager send does.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const GUEST = new URL("./fixtures/guests/mx-push-close.js", import.meta.url);

type Row = { round: number; code: string; reason?: string; intact?: boolean };

test("a pushed rendezvous whose receiver disconnects mid-push says SUCCESS only if the receive got it", async () => {
  const host = await Host.start({ nicId: 18 });
  try {
    const args = (role: string, seed: number) => ({ role, rounds: 300, seed, maxUs: 400 });
    const s = await host.startGuest({ module: GUEST, name: "sender", pages: 1024, args: args("sender", 1) });
    const r = await host.startGuest({
      module: GUEST,
      name: "receiver",
      pages: 1024,
      args: args("receiver", 99),
    });
    const [sa] = await nextMessage(s);
    const [ra] = await nextMessage(r);
    s.send(ra);
    r.send(sa);
    const [es, er] = await Promise.all([s.exited, r.exited]);
    assert.equal(es.state, "shutdown", es.error?.stack);
    assert.equal(er.state, "shutdown", er.error?.stack);
    const got = new Map((er.result as Row[]).map((x) => [x.round, x]));
    const bad = (es.result as Row[]).filter(
      (x) =>
        x.code === "MX_STATUS_SUCCESS" &&
        (got.get(x.round)?.code !== "MX_STATUS_SUCCESS" || !got.get(x.round)?.intact),
    );
    assert.deepEqual(
      bad.map((b) => ({ round: b.round, receiver: got.get(b.round) })),
      [],
      "every send that said SUCCESS was received whole",
    );
  } finally {
    await host.stop();
  }
});

/**
 * Two honest ranks on one host: one connects, sends and disconnects in a loop (busy between
 * rounds, so that its peer's library looks at its events late), the other connects back and
 * sends without disconnecting. Every message the looping rank was told was sent arrives, once
 * (a reviewer's PoC, with both ranks looping, lost a third of them: channels dropped unread at
 * connect, sequence numbers the two sides disagreed on after one had a channel and the other
 * the NIC, held messages dropped with their connection, a channel's memory given to the pair's
 * next channel before its member had mapped it). The peer's own sends may fail as the looping
 * rank disconnects from it (its mx_disconnect), never arrive twice.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage } from "./helpers/messages.js";

const GUEST = new URL("./fixtures/guests/mx-connect-loop.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 16, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

test("a rank that connects, sends and disconnects in a loop to a peer that connects back: every send it was told succeeded arrives, once", async () => {
  const start = (name: string, seed: number, stay: boolean) =>
    host.startGuest({ module: GUEST, name, pages: 512, args: { n: 4, rounds: 60, busyMs: 3, seed, stay } });
  const looping = await start("looping", 7, false);
  const staying = await start("staying", 1234, true);
  const [la] = await nextMessage(looping);
  const [sa] = await nextMessage(staying);
  const lr = nextMessage(looping);
  const sr = nextMessage(staying);
  looping.send(sa);
  staying.send(la);
  const [{ ok: loopOk }] = (await lr) as [{ ok: number[] }];
  const [{ ok: stayOk }] = (await sr) as [{ ok: number[] }];
  looping.send(stayOk);
  staying.send(loopOk);
  const atStaying = (await staying.exited).result as { got: number[]; extra: number[] };
  const atLooping = (await looping.exited).result as { got: number[]; extra: number[] };
  assert.equal(loopOk.length, 240, "the looping rank's sends all said SUCCESS");
  assert.deepEqual(
    loopOk.filter((v) => !atStaying.got.includes(v)),
    [],
    "every send the looping rank was told succeeded arrived",
  );
  assert.deepEqual(atStaying.extra, [], "none twice");
  assert.deepEqual(atLooping.extra, [], "nor any of the peer's");
});

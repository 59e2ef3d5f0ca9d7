/**
 * Found by a reviewer's PoC against the first version of the lane-cap fix (3518226), on a
 * real host and guests: an honest sender capped at 100 messages
 * a second that connects, sends 40 eager messages (each MX_STATUS_SUCCESS to it), pauses and
 * disconnects, three times. The second channel, parked behind the first while that one was
 * read at the cap's rate, is replaced on replay by the third (Channels.replay -> connected ->
 * attach over a live partner's closing channel): its messages never arrived. Now each parked
 * channel is read in its turn (Channels.taken).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

const GUEST = new URL("./fixtures/guests/lane-reconnect-async.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 14, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

test("an honest capped sender's connect/send/disconnect loop, eager sends only: every message it saw complete arrives, in order", async () => {
  const rounds = 3;
  const perRound = 40;
  const args = { rounds, perRound, size: 8, pauseMs: 100, waitMs: 10_000 };
  const start = async (role: string): Promise<[Domain, { nic: number; endpoint: number }]> => {
    const dom = await host.startGuest({
      module: GUEST,
      name: `poc-${role}`,
      pages: 8192,
      args: { role, ...args },
    });
    const [addr] = (await nextMessage(dom)) as [{ nic: number; endpoint: number }];
    return [dom, addr];
  };
  const [recv, recvAddr] = await start("receiver");
  const ready = nextMessage(recv);
  const [send, sendAddr] = await start("sender");
  await host.setQos(send.domid, { tx: { msgsPerSec: 100 } });
  for (const until = Date.now() + 20_000; ; ) {
    const info = await host.nicInfo();
    if (info.qos?.some((q) => q.endpointId === sendAddr.endpoint && q.settings.txMsgsPerSec === 100)) break;
    assert.ok(Date.now() < until, "myrback never applied the policy");
    await new Promise((r) => setTimeout(r, 20));
  }
  await ready;
  const report = nextMessage(send);
  send.send(recvAddr);
  send.send("go");
  const [s] = (await report) as [{ codes: string[] }];
  const got = await recv.exited;
  send.send("done");
  await send.exited;
  assert.equal(got.state, "shutdown", got.error?.stack);
  const r = got.result as { arrived: number; codes: string[]; outOfOrder: number; elapsedMs: number };
  assert.deepEqual(s.codes, ["MX_STATUS_SUCCESS"], "every send completed");
  assert.deepEqual(
    { arrived: r.arrived, outOfOrder: r.outOfOrder },
    { arrived: rounds * perRound, outOfOrder: 0 },
    `every message the sender saw complete arrives, in order (${JSON.stringify(r)})`,
  );
});

/**
 * A capped co-resident sender that reconnects, against the lane's caps (issue 16's lane
 * policer; found by a reviewer's PoCs, 2026-12-07): what holds, and what is still open.
 *
 *  1. The caps' buckets were the channel's: a new channel started with an empty bucket not
 *     in debt, so its first record was read whatever it cost, and the debt died with the
 *     channel. A sender that connected again before each 4 MiB rendezvous had 24 MiB read in
 *     235 ms under an 8 MiB/s cap. Now they are the writer domain's at the receiving endpoint,
 *     kept while in debt (lane-policer.ts WriterBuckets).
 *  2. What a closed lane held is read all at once, past the caps: a sender capped at 200
 *     messages a second filled its lane with eager sends (complete once written), disconnected,
 *     and had 4,000 read in 157 ms. Now what is read so is charged (LanePolicer.force), so the
 *     writer's next lane waits for the debt; a lane's worth per connection still goes past the
 *     caps (the second test, todo: reading a closing lane at the caps' rate, with the peer's
 *     reconnects parked behind it, was tried and taken back after three reviews found honest
 *     messages lost or reordered on its edges).
 *
 * Each test asserts what the cap promises (no more than one overdraw and the bucket's depth
 * beyond rate × elapsed), and that every message arrives: a loaded machine only makes the
 * receiver slower, so only a bypass fails them.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

const GUEST = new URL("./fixtures/guests/lane-reconnect.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 13, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

interface RecvResult {
  elapsedMs: number;
  codes: string[];
  bytes: number;
  holds: number;
  outOfOrder: number;
}

async function run(
  mode: "reconnect" | "eager" | "one",
  tx: { bytesPerSec?: number; msgsPerSec?: number },
  rounds: number,
  perRound: number,
  size: number,
  timing: { pauseMs?: number; waitMs?: number } = {},
): Promise<{ r: RecvResult; sendCodes: string[] }> {
  const start = async (role: string): Promise<[Domain, { nic: number; endpoint: number }]> => {
    const dom = await host.startGuest({
      module: GUEST,
      name: `lane-${role}-${mode}`,
      pages: 8192,
      args: { role, mode, rounds, perRound, size, ...timing },
    });
    const [addr] = (await nextMessage(dom)) as [{ nic: number; endpoint: number }];
    return [dom, addr];
  };
  const [recv, recvAddr] = await start("receiver");
  const ready = nextMessage(recv);
  const [send, sendAddr] = await start("sender");
  await host.setQos(send.domid, { tx });
  for (const until = Date.now() + 20_000; ; ) {
    const info = await host.nicInfo();
    if (
      info.qos?.some(
        (q) =>
          q.endpointId === sendAddr.endpoint &&
          (tx.bytesPerSec === undefined || q.settings.txBytesPerSec === tx.bytesPerSec) &&
          (tx.msgsPerSec === undefined || q.settings.txMsgsPerSec === tx.msgsPerSec),
      )
    )
      break;
    assert.ok(Date.now() < until, "myrback never applied the policy");
    await new Promise((r) => setTimeout(r, 20));
  }
  await ready; // the receiver's receives are posted; its clock runs
  const report = nextMessage(send);
  send.send(recvAddr);
  send.send("go");
  const [s] = (await report) as [{ codes: string[] }];
  const got = await recv.exited;
  send.send("done");
  assert.equal(got.state, "shutdown", got.error?.stack);
  await send.exited;
  return { r: got.result as RecvResult, sendCodes: s.codes };
}

const MiB = 1 << 20;

test("a capped sender that connects again before each rendezvous is held to its byte cap: its debt is its own, not its channel's", async () => {
  const rate = 8 * MiB;
  const n = 4;
  const size = 2 * MiB;
  const { r, sendCodes } = await run("reconnect", { bytesPerSec: rate }, n, 1, size);
  assert.deepEqual(sendCodes, ["MX_STATUS_SUCCESS"]);
  assert.deepEqual(r.codes, ["MX_STATUS_SUCCESS"]);
  assert.equal(r.bytes, n * size, "every message arrived");
  assert.equal(r.outOfOrder, 0, "in order");
  // The first record may overdraw by its whole size; the bucket holds 25 ms of the rate.
  const minMs = ((n * size - size - rate * 0.025) / rate) * 1000;
  assert.ok(
    r.elapsedMs >= minMs,
    `the receiver took ${(n * size) / MiB} MiB from a sender capped at 8 MiB/s in ${r.elapsedMs.toFixed(0)} ms (the cap allows no less than ${minMs.toFixed(0)} ms)`,
  );
  assert.ok(r.holds > 0, "the lanes were held");
});

test("a capped sender that fills its lane and disconnects, twice, has it read at its message cap, and every message arrives in order", {
  todo: "open: what a closed lane holds is still read at once (charged, so the writer's next lane waits for the debt); reading it at the caps' rate was tried and taken back, see docs/performance-isolation.md",
}, async () => {
  const rate = 500;
  const rounds = 2;
  const perRound = 400;
  const { r, sendCodes } = await run("reconnect", { msgsPerSec: rate }, rounds, perRound, 8);
  assert.deepEqual(sendCodes, ["MX_STATUS_SUCCESS"]);
  assert.deepEqual(r.codes, ["MX_STATUS_SUCCESS"], "every message arrived");
  assert.equal(r.bytes, rounds * perRound * 8);
  assert.equal(r.outOfOrder, 0, "in order: the second connection's after the first's");
  const total = rounds * perRound;
  const depth = Math.max(1, (rate * 25) / 1000);
  const minMs = ((total - depth - 1) / rate) * 1000;
  assert.ok(
    r.elapsedMs >= minMs,
    `the receiver took ${total} messages from a sender capped at ${rate}/s in ${r.elapsedMs.toFixed(0)} ms (the cap allows no less than ${minMs.toFixed(0)} ms)`,
  );
});

test("an honest capped sender's connect/send/disconnect loop, eager sends only: every message it saw complete arrives, in order", async () => {
  // Three channels while the first is still read at the cap: the second and third wait their
  // turn. A replayed channel was once attached over the second while that one closed: its
  // messages, each MX_STATUS_SUCCESS to the sender, never arrived (a reviewer's PoC).
  const rounds = 3;
  const perRound = 40;
  const { r, sendCodes } = await run("eager", { msgsPerSec: 100 }, rounds, perRound, 8, {
    pauseMs: 100,
    waitMs: 10_000,
  });
  assert.deepEqual(sendCodes, ["MX_STATUS_SUCCESS"], "every send completed");
  assert.deepEqual(r.codes, ["MX_STATUS_SUCCESS"], `every message arrived (${JSON.stringify(r)})`);
  assert.equal(r.bytes, rounds * perRound * 8);
  assert.equal(r.outOfOrder, 0, "in order");
});

/**
 * Endpoint keys as a guesser sees them, end to end through myrifront, myrback and the NIC: a
 * guest that tries key after key against a co-resident endpoint gets a prompt
 * MX_BAD_CONNECTION_KEY for the first few, then nothing but MX_BUSY — even for the right key
 * — so 2^32 guesses are out of reach; nor can a guest slip past that with several endpoints
 * taking turns, nor by guessing the session the key would have told it instead.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { CONNECT_FREE_FAILS, CONNECT_LOCKOUT_MS } from "../src/nic/connect-throttle.js";
import { SESSION_FREE_REFUSALS } from "../src/nic/session-throttle.js";
import { MxStatus } from "../src/nic/status.js";
import { nextMessage } from "./helpers/messages.js";

const GUESSER = new URL("./fixtures/guests/key-guesser.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

/** A victim guest opened with `key`, and a guesser guest connecting to it as `args` say: what the guesser got. */
async function guess(
  on: Host,
  key: number,
  args: { guesses: number; endpointIds?: number[]; alibiEvery?: number },
) {
  const victim = await on.startGuest({ module: GUESSER, args: { role: "victim", key } });
  const [addr] = await nextMessage(victim);
  const guesser = await on.startGuest({ module: GUESSER, args: { role: "guesser", key, ...args } });
  guesser.send(addr);
  const e = await guesser.exited;
  victim.send("done");
  await victim.exited;
  assert.equal(e.state, "shutdown", e.error?.stack);
  const { codes, right, endpointId } = e.result as { codes: string[]; right: string; endpointId: number };
  return {
    codes,
    right,
    endpointId,
    bad: codes.filter((c) => c === "MX_BAD_CONNECTION_KEY").length,
    busy: codes.filter((c) => c === "MX_BUSY").length,
  };
}

test("a guest guessing a co-resident endpoint's key is locked out after a few", async () => {
  const { codes, bad, busy, right } = await guess(host, 0x5ec2e7, { guesses: 40 });
  assert.equal(bad, CONNECT_FREE_FAILS, `${bad} prompt refusals`);
  assert.equal(bad + busy, 40, codes.join(","));
  assert.equal(right, "MX_BUSY", "the right key, guessed in the cool-down, does not connect either");
  assert.ok(host.backendStats().badKeys >= bad);
});

test("a right key to an endpoint of its own between guesses forgives a guesser nothing", async () => {
  // The right key used to clear the requester's record: three wrong keys, then a connect to
  // its own second endpoint, and again — guessing at three keys in four, never locked out.
  const { codes, bad, busy } = await guess(host, 0x5ec2e8, {
    guesses: 12,
    alibiEvery: CONNECT_FREE_FAILS - 1,
  });
  assert.equal(bad, CONNECT_FREE_FAILS, codes.join(","));
  assert.equal(busy, 12 - CONNECT_FREE_FAILS, codes.join(","));
});

test("a newcomer does not inherit the record of a guesser whose lockout ended: its own wrong keys are answered promptly", async () => {
  // A record of wrong keys outlives its lockout (CONNECT_FORGET_MS) and belongs to the
  // requester's endpoint id: a newcomer given a guesser's id started one wrong key away from a
  // lockout. (A right key used to clear it; it forgives nothing now, as it must.)
  const own = await Host.start({ nicId: 1204 });
  try {
    const first = await guess(own, 0x1e7a, { guesses: CONNECT_FREE_FAILS });
    assert.equal(first.bad, CONNECT_FREE_FAILS, first.codes.join(","));
    await new Promise((r) => setTimeout(r, CONNECT_LOCKOUT_MS + 200));
    const next = await guess(own, 0x1e7b, { guesses: CONNECT_FREE_FAILS });
    assert.equal(next.bad, CONNECT_FREE_FAILS, next.codes.join(","));
    assert.notEqual(
      next.endpointId,
      first.endpointId,
      "the newcomer got an endpoint id no NIC holds a record of",
    );
  } finally {
    await own.stop();
  }
});

test("a guest guessing from five endpoints in turn is locked out on each: none loses its record to another", async () => {
  // Endpoints 3, 11, 12, 27 and 29 of NIC 1203 fell in one set of the throttle's old table
  // (256 sets of 4 records): each wrong key of one took the record of the one before it, so
  // every guess was answered BAD_KEY at once and the right key connected at the end.
  const endpointIds = [3, 11, 12, 27, 29];
  const own = await Host.start({ nicId: 1203 });
  try {
    const guesses = 40;
    const { codes, bad, busy, right } = await guess(own, 0x7e11a, { guesses, endpointIds });
    assert.equal(bad, endpointIds.length * CONNECT_FREE_FAILS, codes.join(","));
    assert.equal(bad + busy, guesses, codes.join(","));
    assert.equal(right, "MX_BUSY", "the right key, guessed in the lockout, does not connect");
  } finally {
    await own.stop();
  }
});

test("a guest guessing an endpoint's session instead of its key is refused unexamined after a few hundred: the right one too", async () => {
  // The session is what a right key tells a connector, and every SEND names it; wrong ones were
  // answered BAD_SESSION at once, so 2^32 raw SENDs found it and the guest sent into the
  // endpoint of another job as a peer, without its key.
  const key = 0x5e5510;
  const victim = await host.startGuest({ module: GUESSER, args: { role: "victim", key } });
  const [addr] = await nextMessage(victim);
  const guesses = SESSION_FREE_REFUSALS + 100;
  const guesser = await host.startGuest({ module: GUESSER, args: { role: "session-guesser", key, guesses } });
  guesser.send(addr);
  const e = await guesser.exited;
  victim.send("done");
  await victim.exited;
  assert.equal(e.state, "shutdown", e.error?.stack);
  const { statuses } = e.result as { statuses: number[] };
  assert.equal(statuses.length, guesses + 1);
  const count = (s: number) => statuses.filter((x) => x === s).length;
  assert.equal(count(MxStatus.BAD_SESSION), SESSION_FREE_REFUSALS, `statuses ${statuses.join(",")}`);
  assert.equal(count(MxStatus.REJECTED), guesses + 1 - SESSION_FREE_REFUSALS);
  assert.equal(statuses.at(-1), MxStatus.REJECTED, "the right session, in the lockout, is not delivered");
  const nic = host.nic.counters().global;
  // The guesser's own NIC (here the victim's too) refuses it first: own-refusals.ts.
  assert.ok(nic.send_bad_sessions >= SESSION_FREE_REFUSALS && nic.own_requests_throttled > 0, "counted");
});

test("a locked-out guesser's endpoint id goes back to it, not to the next guest: the newcomer's right key connects", async () => {
  // A lockout was keyed on the requester's NIC and endpoint id alone, and the NIC gave a new
  // endpoint the lowest free id — the guesser's, once it closed — and the lockout with it: the
  // next guest's connects were refused (MX_BUSY) for up to a minute. Lockouts are the
  // requester's incarnation's now (test/nic-lockout-owners.test.ts); the id still goes back to
  // its owner first, whose own NIC keeps its record, and a newcomer gets a clean one.
  const key = 0x1d1e;
  const own = await Host.start({});
  try {
    const victim = await own.startGuest({ module: GUESSER, args: { role: "victim", key } });
    const [addr] = await nextMessage(victim);
    type Result = {
      right: string;
      rightMessage: string;
      endpointId: number;
      afterReopen?: string;
      reopenedId?: number;
    };
    const run = async (args: Record<string, unknown>): Promise<Result> => {
      const g = await own.startGuest({ module: GUESSER, args: { role: "guesser", key, ...args } });
      g.send(addr);
      const e = await g.exited;
      assert.equal(e.state, "shutdown", e.error?.stack);
      return e.result as Result;
    };
    const guesser = await run({ guesses: 12, reopen: true });
    assert.equal(guesser.right, "MX_BUSY", "locked out");
    // Nor does reopening shed the lockout: the guesser's own id comes back to it.
    assert.equal(guesser.reopenedId, guesser.endpointId);
    assert.equal(guesser.afterReopen, "MX_BUSY");
    const newcomer = await run({ guesses: 0 });
    assert.notEqual(newcomer.endpointId, guesser.endpointId, "the newcomer got the guesser's endpoint id");
    assert.equal(newcomer.right, "connected", `endpoint ${newcomer.endpointId}: ${newcomer.rightMessage}`);
    victim.send("done");
    await victim.exited;
  } finally {
    await own.stop();
  }
});

/**
 * Hostile guests against what the NIC enforces, on one host and across two hosts whose NICs
 * are linked over TCP: a receiver that pulls an old rendezvous again (a pull right is per
 * message: 0 bytes leak), and a receive-area hog beside an honest pair on the same two hosts
 * (the pair completes; the hog's sender gets error completions, never a hang). The guests are
 * test/fixtures/guests/mx-rights.ts; this file relays their addresses and commands.
 */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { LINK_KEY } from "./helpers/link-key.js";

const RIGHTS = new URL("./fixtures/guests/mx-rights.js", import.meta.url);
const PAGES = 2048;

let h1: Host;
let h2: Host;
before(async () => {
  h1 = await Host.start({ nicId: 1 });
  h2 = await Host.start({ nicId: 2 });
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  await h2.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: LINK_KEY });
  await h1.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000, key: LINK_KEY });
});
after(async () => {
  await h1.stop();
  await h2.stop();
});

interface Guest {
  d: Domain;
  addr: { nic: number; endpoint: number };
  next(): Promise<unknown>;
}

/** Starts a role; resolves with its MX address. Messages are queued so that none is missed. */
async function start(on: Host, role: string): Promise<Guest> {
  const d = await on.startGuest({ module: RIGHTS, args: { role }, pages: PAGES, name: role });
  const queue: unknown[] = [];
  const waiters: { resolve: (m: unknown) => void; reject: (e: Error) => void }[] = [];
  let gone: Error | undefined;
  d.on("message", (m: unknown) => {
    const w = waiters.shift();
    if (w) w.resolve(m);
    else queue.push(m);
  });
  // A guest that stops (it threw) fails the test now, not at the runner's timeout.
  void d.exited.then((e) => {
    gone = new Error(`${role} stopped (${e.state}) before its next message: ${e.error?.stack ?? ""}`);
    for (const w of waiters.splice(0)) w.reject(gone);
  });
  const next = () =>
    queue.length > 0
      ? Promise.resolve(queue.shift())
      : gone !== undefined
        ? Promise.reject(gone)
        : new Promise<unknown>((resolve, reject) => waiters.push({ resolve, reject }));
  const addr = (await next()) as { nic: number; endpoint: number };
  return { d, addr, next };
}

async function result(g: Guest): Promise<Record<string, unknown>> {
  const e = await g.d.exited;
  assert.equal(e.state, "shutdown", `${g.d.name}: ${e.error?.stack}`);
  return e.result as Record<string, unknown>;
}

type Attempt = { code: string; leaked: number };

// On one host the channel pushes a single rendezvous (no pull right is armed: the record says
// region 0, key 0) and the attack pulls with what it saw; across hosts the NIC pulls.
for (const scope of ["one host", "across two hosts"] as const) {
  test(`a receiver pulling an old rendezvous again gets 0 bytes of what the sender sends next (${scope})`, async () => {
    const far = scope === "one host" ? h1 : h2;
    const sender = await start(h1, "sender");
    const hostile = await start(far, "hostile");
    const other = await start(far, "other");
    const refused0 = h1.nic.counters().global.pull_rights_refused;
    const connected = [sender.next(), hostile.next(), other.next()];
    sender.d.send([hostile.addr, other.addr]);
    hostile.d.send([sender.addr]);
    other.d.send([sender.addr]);
    await Promise.all(connected);

    assert.equal(await sender.next(), "sent-first");
    assert.deepEqual(await hostile.next(), { code: "MX_STATUS_SUCCESS", intact: true });
    assert.equal(await sender.next(), "secret-posted");
    // The secret is announced to `other` (not yet pulled) and sits in the buffer the hostile
    // receiver once had a right to.
    hostile.d.send("attack");
    const during = (await hostile.next()) as Attempt[];
    other.d.send("receive");
    sender.d.send("finish");
    assert.equal(await sender.next(), "sent-second");
    // And once that message is complete too.
    hostile.d.send("attack");
    const afterwards = (await hostile.next()) as Attempt[];
    hostile.d.send("end");
    sender.d.send("end");
    const [rs, ro] = [await result(sender), await result(other)];
    await result(hostile);

    for (const [when, round] of [
      ["while the secret waited for its receiver", during],
      ["after the secret was delivered", afterwards],
    ] as const) {
      for (const a of round) {
        assert.equal(a.leaked, 0, `${when}: ${a.leaked} secret bytes reached the hostile receiver`);
        assert.notEqual(a.code, "MX_STATUS_SUCCESS", `${when}: the old pull right still worked`);
        assert.match(a.code, /MX_STATUS_(BAD_KEY|BAD_RDMAWIN)/, when);
      }
    }
    assert.deepEqual(rs, { first: "MX_STATUS_SUCCESS", second: "MX_STATUS_SUCCESS" });
    assert.deepEqual(
      ro,
      { code: "MX_STATUS_SUCCESS", intact: true },
      "the rightful receiver got the secret intact",
    );
    const refused = h1.nic.counters().global.pull_rights_refused - refused0;
    assert.ok(refused >= 6, `the sender's NIC counted ${refused} refused pulls`);
    await Promise.all([sender.d.destroy(), hostile.d.destroy(), other.d.destroy()]);
  });
}

test("a receive-area hog beside an honest pair across two hosts: the pair completes, the hog's sender gets errors", async () => {
  const hog = await start(h2, "hog");
  const flooder = await start(h1, "flooder");
  const ping = await start(h1, "ping");
  const pong = await start(h2, "pong");
  const connected = [flooder.next(), ping.next(), pong.next()];
  flooder.d.send([hog.addr]);
  ping.d.send([pong.addr]);
  pong.d.send([ping.addr]);
  await Promise.all(connected);
  assert.equal(await flooder.next(), "flooding");
  const hogEp = hog.addr.endpoint;
  for (let t = 0; (h2.nic.counters().endpoints[hogEp]?.delivery_queued ?? 0) === 0; t++) {
    assert.ok(t < 500, "the hog's NIC never held a delivery");
    await sleep(10);
  }
  ping.d.send("go");
  const [rp, rq] = [await result(ping), await result(pong)];
  flooder.d.send("stop");
  const rf = (await result(flooder)) as {
    codes: Record<string, number>;
    reasons: string[];
    unfinished: number;
    rounds: number;
  };
  hog.d.send("end");
  await result(hog);

  assert.deepEqual(rp, { ok: 1000, bad: 0 }, "every message of the honest pair arrived and came back intact");
  assert.deepEqual(rq, { echoed: 1000, bad: 0 });
  assert.equal(rf.unfinished, 0, `the hog's sender waited forever on ${rf.unfinished} sends`);
  const failed = Object.entries(rf.codes).filter(([c]) => c !== "MX_STATUS_SUCCESS");
  assert.ok(failed.length > 0, `the hog's sender got no error: ${JSON.stringify(rf.codes)}`);
  assert.ok(
    rf.reasons.some((r) => /receive space|not consuming/.test(r)),
    `the errors say why: ${JSON.stringify(rf.reasons)}`,
  );
  const c2 = h2.nic.counters();
  assert.ok(c2.global.delivery_expired > 0, "the hog's NIC counted the deliveries it gave up holding");
  assert.equal(c2.global.internal_errors, 0);
  assert.equal(h1.nic.counters().global.internal_errors, 0);
  await Promise.all([hog.d.destroy(), flooder.d.destroy(), ping.d.destroy(), pong.d.destroy()]);
});

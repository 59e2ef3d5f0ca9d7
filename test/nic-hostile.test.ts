/**
 * Hostile guests against what the NIC enforces, on one host and across two hosts whose NICs
 * are linked over TCP: a receiver that pulls an old rendezvous again (a pull right is per
 * message: 0 bytes leak). The guests are
 * test/fixtures/guests/mx-rights.ts; this file relays their addresses and commands.
 */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";

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
  await h2.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port });
  await h1.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000 });
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
  const waiters: ((m: unknown) => void)[] = [];
  d.on("message", (m: unknown) => {
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  const next = () =>
    queue.length > 0 ? Promise.resolve(queue.shift()) : new Promise<unknown>((r) => waiters.push(r));
  const addr = (await next()) as { nic: number; endpoint: number };
  return { d, addr, next };
}

async function result(g: Guest): Promise<Record<string, unknown>> {
  const e = await g.d.exited;
  assert.equal(e.state, "shutdown", `${g.d.name}: ${e.error?.stack}`);
  return e.result as Record<string, unknown>;
}

type Attempt = { code: string; leaked: number };

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

/**
 * A peer whose channel we find closed is failed with the reason its closer wrote into the
 * lane (channel-abi.ts LaneClosed): it disconnected from us, its endpoint closed, or it went
 * away (myrback). Before, every case read "the peer endpoint went away", and users looked
 * for a dead rank that had only disconnected.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { connectTo, type ScriptedGuest, scriptedGuest } from "./helpers/mx-script.js";

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 21, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

/** `b` and `a` connected both ways over their channel, one message from b to a taken. */
async function pair(): Promise<[ScriptedGuest, ScriptedGuest]> {
  const [a, b] = await Promise.all([scriptedGuest(host, "a"), scriptedGuest(host, "b")]);
  await connectTo(a, b, "b");
  await connectTo(b, a, "a");
  await b.do({ op: "send", to: "a", vals: [1], tag: 1, wait: true });
  assert.deepEqual((await a.do({ op: "recv", n: 1, tag: 1 })).vals, [1]);
  const chans = (await host.backendEndpoints()).flatMap((e) => e.channels);
  assert.ok(chans.length > 0, "the pair talks through a channel");
  return [a, b];
}

async function reasonAtB(b: ScriptedGuest): Promise<string> {
  const r = await b.do({ op: "send", to: "a", vals: [2], tag: 1, wait: true });
  assert.equal(r.codes[0].code, "MX_STATUS_ENDPOINT_UNREACHABLE");
  return r.codes[0].reason;
}

async function exit(...gs: ScriptedGuest[]): Promise<void> {
  for (const g of gs) {
    g.d.send({ op: "exit" });
    await g.d.exited;
  }
}

test("a peer that disconnected from us: the send fails saying so", async () => {
  const [a, b] = await pair();
  await a.do({ op: "disconnect", as: "b" });
  assert.match(await reasonAtB(b), /the peer disconnected from us \(mx_disconnect\)/);
  assert.match((await b.do({ op: "dead", as: "a" })).dead, /disconnected from us/);
  await exit(a, b);
});

test("a peer whose endpoint closed: the send fails saying so", async () => {
  const [a, b] = await pair();
  await a.do({ op: "close" });
  assert.match(await reasonAtB(b), /the peer endpoint was closed/);
  await exit(a, b);
});

test("a peer whose domain was destroyed: it went away", async () => {
  const [a, b] = await pair();
  await host.hypervisor.destroyDomain(a.d.domid);
  // myrback closes the channel when it sees the domain gone.
  const end = Date.now() + 20_000;
  let reason = "";
  while (Date.now() < end) {
    const r = await b.do({ op: "send", to: "a", vals: [2], tag: 1, wait: true, timeoutMs: 200 });
    if (r.codes[0].code !== "MX_STATUS_SUCCESS" && r.codes[0].code !== "no completion") {
      reason = r.codes[0].reason;
      break;
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  assert.match(reason, /the peer endpoint went away/);
  await exit(b);
});

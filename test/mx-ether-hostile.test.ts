/**
 * MX over Ethernet against a hostile peer guest on the same bridge, through netfront,
 * netback's steering and the bridge: the attacker writes the frames it likes from its own
 * endpoint (test/fixtures/guests/mxoe-hostile.ts), as netback lets any guest do, and the
 * victim's library must neither hand it memory it never exposed to it, nor report bytes it
 * never got, nor take another endpoint's word for its answer.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { DATA_BYTES, PATH_MESSAGES } from "./fixtures/guests/mxoe-hostile.js";
import { nextMessage } from "./helpers/messages.js";

const FIXTURE = new URL("./fixtures/guests/mxoe-hostile.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(async () => {
  await host?.stop();
});

/** Split-path guests in `roles` (prefix-role), each with its address; then every one is told all addresses. */
async function start(
  prefix: string,
  roles: string[],
  fastPath: string[] = [],
): Promise<Record<string, Domain>> {
  const doms: Record<string, Domain> = {};
  const addrs: Record<string, unknown> = {};
  for (const r of roles) {
    const d = await host.startGuest({
      module: FIXTURE,
      args: { role: `${prefix}-${r}` },
      name: `${prefix}-${r}`,
      pages: 2048,
      maxHeapMb: 128,
      fastPath: fastPath.includes(r),
    });
    doms[r] = d;
    [addrs[r]] = await nextMessage(d);
  }
  for (const d of Object.values(doms)) d.send(addrs);
  return doms;
}

async function result<T>(d: Domain): Promise<T> {
  const e = await d.exited;
  assert.equal(e.state, "shutdown", `${d.name}: ${e.error?.stack}`);
  return e.result as T;
}

test("a receiver that NOTIFYs a rendezvous done before pulling its data gets nothing the sender wrote into the buffer after the send completed", async () => {
  // Before, the sender streamed the rest of the pull from the buffer after the NOTIFY
  // completed the send: whatever the program put there next went to that peer.
  const { victim, attacker } = await start("serve", ["victim", "attacker"]);
  const [notified] = await nextMessage(attacker);
  assert.equal(notified, "notified");
  const [v] = (await nextMessage(victim)) as [{ send: string }];
  assert.equal(v.send, "MX_STATUS_SUCCESS", "the receiver's NOTIFY completes the send");
  attacker.send("go");
  const a = await result<{ recv: string; secret: number }>(attacker);
  await result(victim);
  assert.equal(a.secret, 0, `the attacker read ${a.secret} bytes written after the send completed`);
});

test("DATA frames that repeat an offset do not complete a pull: the receive fails instead of reporting bytes never carried", async () => {
  // Before, a pull counted bytes, not where they went: half the message twice at offset 0
  // completed the receive SUCCESS with its second half never written.
  const { victim, attacker } = await start("data", ["victim", "attacker"]);
  const v = await result<{ recv: string; xfer: number; untouched: number; channelErrors: number }>(victim);
  await result(attacker);
  assert.notEqual(v.recv, "MX_STATUS_SUCCESS", `${v.untouched} of ${DATA_BYTES} bytes were never carried`);
  assert.equal(v.recv, "MX_STATUS_ABORTED");
  assert.ok(v.channelErrors >= 1, "counted");
});

test("a CONNECT_REPLY from another endpoint than the one asked is not the answer: the connect still reaches its endpoint", async () => {
  // Before, any endpoint that knew the asker's session and guessed its connect id answered
  // for the one asked: here with BAD_KEY (the right key failed), or with SUCCESS, its own
  // MAC and session, so the asker's messages to the endpoint it named went nowhere.
  const { victim, attacker, x } = await start("connect", ["victim", "attacker", "x"]);
  const [connecting] = await nextMessage(victim);
  assert.equal(connecting, "connecting");
  attacker.send("spray");
  const a = await result<{ sent: number }>(attacker);
  assert.ok(a.sent > 0);
  x.send("go");
  const xr = await result<{ recv: string }>(x);
  victim.send("done");
  const v = await result<{ connect: string; send?: string; message?: string }>(victim);
  assert.equal(v.connect, "connected", v.message);
  assert.equal(v.send, "MX_STATUS_SUCCESS");
  assert.equal(xr.recv, "MX_STATUS_SUCCESS");
});

test("a split-only peer saying it is not on the split path leaves Ethernet its way: sends waiting for window room still go", async () => {
  // Before, its PATH frame routed the pair to its fast way, which it has none of: sends
  // waiting in the backlog for window room stayed there for ever (the peer kept acknowledging,
  // so it never timed out), and every later send failed ENDPOINT_UNREACHABLE.
  const { victim, attacker } = await start("path", ["victim", "attacker"], ["victim"]);
  const [queued] = await nextMessage(victim);
  assert.equal(queued, "queued");
  attacker.send("path");
  const a = await result<{ got: number }>(attacker);
  victim.send("bye");
  const v = await result<{ done: number; dead?: string }>(victim);
  assert.equal(v.dead, undefined);
  assert.equal(v.done, PATH_MESSAGES, `${PATH_MESSAGES - v.done} sends never went`);
  assert.equal(a.got, PATH_MESSAGES);
});

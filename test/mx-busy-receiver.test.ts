/**
 * A receiver that computes while peers on other hosts write to it: its NIC holds a share of
 * each sending host's messages (nic/delivery.ts), and the MX library sends a refused one again
 * (mx/busy-retries.ts). Played as the attack a reviewer found: a peer (the flooder) that writes
 * while the receiver computes took all of its NIC's held places, and every message of another
 * host's honest sender then failed NO_RESOURCES at once, a hole in its sequence: the honest
 * pair failed. Three hosts, each NIC linked to the receiver's over TCP.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { DELIVERY_QUEUE } from "../src/nic/endpoints.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { nextMessage } from "./helpers/messages.js";
import { freePort } from "./helpers/nic-harness.js";

// Every link read buffer given back is poisoned in the NIC threads started below (tcp-read-pool.ts):
// a frame kept past its turn would show here as garbage.
process.env.MYRIXEN_POISON_READS = "1";

const BUSY = new URL("./fixtures/guests/mx-busy-receiver.js", import.meta.url);

let receiverHost: Host;
let flooderHost: Host;
let honestHost: Host;
before(async () => {
  receiverHost = await Host.start({ nicId: 1 });
  flooderHost = await Host.start({ nicId: 2 });
  honestHost = await Host.start({ nicId: 3 });
  for (const h of [flooderHost, honestHost]) {
    const port = await freePort();
    await receiverHost.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: LINK_KEY });
    await h.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000, key: LINK_KEY });
  }
});
after(async () => {
  await Promise.all([receiverHost.stop(), flooderHost.stop(), honestHost.stop()]);
});

test("a peer that writes while its receiver computes holds only its host's share of the receiver's NIC: another host's messages wait their turn, nothing fails, every message arrives in order", async () => {
  // 8 messages fill the receive area, the flooder's share of held places is the queue but
  // HOLD_RESERVE (nic/delivery.ts): more than its library stages at a time are refused and go again.
  const FLOOD = 8 + 2 * DELIVERY_QUEUE;
  // What a second host holds beside a full first one (mayHold).
  const HONEST = 4;
  const receiver = await receiverHost.startGuest({
    module: BUSY,
    name: "receiver",
    args: { role: "receiver", expect: FLOOD + HONEST },
    pages: 2048,
  });
  const [at] = (await nextMessage(receiver)) as [unknown];
  // 16 MiB: the library stages 32 messages (an eighth of the domain's memory), enough to fill its share.
  const start = async (h: Host, name: string, args: Record<string, unknown>): Promise<Domain> => {
    const d = await h.startGuest({ module: BUSY, name, args, pages: 4096 });
    await nextMessage(d);
    d.send(at);
    return d;
  };

  const flooder = await start(flooderHost, "flooder", { role: "flooder", count: FLOOD, bytes: 60_000 });
  const [flooded] = (await nextMessage(flooder)) as [{ refusals: number; endedEarly: [number, string][] }];
  assert.ok(
    flooded.refusals > 0,
    `the receiver's NIC refused some of the flooder's messages: ${JSON.stringify(flooded)}`,
  );
  assert.deepEqual(
    flooded.endedEarly.filter(([, s]) => s !== "ok"),
    [],
    "a refused message is not a failed one",
  );

  // The honest sender's messages are held for the receiver (none ends while it computes).
  const honest = await start(honestHost, "honest", { role: "honest", count: HONEST, watchMs: 300 });
  const [watched] = (await nextMessage(honest)) as [{ refusals: number; endedEarly: [number, string][] }];
  assert.deepEqual(watched.endedEarly, [], "no honest message ended (failed) while the receiver computed");
  assert.equal(watched.refusals, 0, "the honest host's messages were held in its share, none refused");

  receiver.send("go");
  flooder.send("finish");
  honest.send("finish");
  const [r, f, h] = await Promise.all([receiver.exited, flooder.exited, honest.exited]);
  for (const e of [r, f, h]) assert.equal(e.state, "shutdown", e.error?.stack);
  const got = r.result as {
    from: Record<string, number[]>;
    lengths: Record<string, number[]>;
    errors: string[];
  };
  assert.deepEqual(got.errors, []);
  assert.deepEqual(got.lengths, { 1: [60_000], 2: [1000] }, "every message whole, those sent again too");
  const inOrder = (n: number) => Array.from({ length: n }, (_, i) => i);
  assert.deepEqual(got.from["1"], inOrder(FLOOD), "the flooder's messages, each once, in order");
  assert.deepEqual(got.from["2"], inOrder(HONEST), "the honest sender's, each once, in order");
  const fs = f.result as { statuses: string[]; refusals: number };
  const hs = h.result as { statuses: string[] };
  // Its staged messages' buffers were detached after they were staged: they went whole (the
  // lengths above), and so they completed (they were reported ABORTED, "the receiver got zeros").
  assert.deepEqual(fs.statuses, Array(FLOOD).fill("ok"), "every flooder send succeeded (sent again)");
  assert.deepEqual(hs.statuses, Array(HONEST).fill("ok"));
  await Promise.all([receiver.destroy(), flooder.destroy(), honest.destroy()]);
});

/**
 * mx_disconnect on the split path: an eager send completes as its frames enter the peer's
 * reliable stream (ether-path.ts), so the stream must deliver them after the disconnect too.
 * The bridge drops a frame when its receiver has no buffer posted (netback, as Xen's), and a
 * path failed at once left the poll list with those frames never resent: sends that had said
 * MX_STATUS_SUCCESS were lost (2–11 in 60 connect/send/disconnect rounds on one host).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { connectTo, type ScriptedGuest, scriptedGuest } from "./helpers/mx-script.js";

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 12, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

const vif = (g: ScriptedGuest) => {
  const v = host.netStats().vifs.find((s) => s.domid === g.d.domid && s.connected);
  assert.ok(v, `domain ${g.d.domid} has a connected vif`);
  return v;
};

async function until(what: string, ok: () => boolean): Promise<void> {
  const end = Date.now() + 20_000;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("eager sends that said SUCCESS before mx_disconnect arrive although the bridge dropped their frames", async () => {
  const [a, b, c, d] = await Promise.all(["a", "b", "c", "d"].map((n) => scriptedGuest(host, n)));
  for (const g of [a, c, d]) await connectTo(g, b, "b");
  // All four on the split path; b answers the others' resolves while it polls (a receive).
  await b.do({ op: "switch", to: "split" });
  await Promise.all([
    ...[a, c, d].map((g) => g.do({ op: "switch", to: "split" })),
    b.do({ op: "recv", n: 1, tag: 99, timeoutMs: 1500 }),
  ]);
  // c and d fill every buffer b posted while b computes (no MX call: nothing reposted).
  const before = vif(b).rxDropped;
  for (const g of [c, d])
    await g.do({ op: "send", to: "b", vals: Array.from({ length: 64 }, (_, i) => i), tag: 2, size: 6000 });
  await until("b's receive buffers to run out", () => vif(b).rxDropped > before);
  // a's two eager sends complete at once; the bridge has at most one buffer left for them.
  const sent = vif(a).txFrames;
  const codes = await a.do({ op: "send", to: "b", vals: [1, 2], tag: 1, wait: true });
  assert.deepEqual(
    codes.codes.map((x: { code: string }) => x.code),
    ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"],
  );
  await until("netback to take a's frames", () => vif(a).txFrames >= sent + 2);
  // a disconnects while b starts receiving again: what a's stream owes b must still come.
  const [, got] = await Promise.all([
    a.do({ op: "disconnect", as: "b" }),
    b.do({ op: "recv", n: 2, tag: 1, timeoutMs: 5000 }),
  ]);
  assert.deepEqual(got.vals, [1, 2], "both sends a was told had succeeded arrive");
  for (const g of [a, b, c, d]) {
    g.d.send({ op: "exit" });
    await g.d.exited;
  }
});

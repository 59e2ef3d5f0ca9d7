/**
 * A guest's program runs only once the toolstack has made its devices (Host.startGuest creates
 * the domain paused, makes the myri and vif devices, then unpauses it, as `xl create` does).
 * Before, main ran while the host was still making them: a program whose first act was to
 * write into its own device directory (device/vif/0/mac) beat the toolstack to it and made its
 * own start fail with the toolstack's `EEXIST: vif device 0 ... already exists` (and a program
 * that looked for its devices at once found none).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import type { Worker } from "node:worker_threads";
import { Host } from "../src/host/host.js";
import { NicDevice } from "../src/nic/device.js";

const PROGRAM = `export default async function main(guest) {
  const dev = \`/local/domain/\${guest.domid}/device\`;
  // The first thing it does: what exists of its devices, then a write into the vif's directory.
  const seen = { devices: (await guest.xenstore.directory(dev)).sort() };
  seen.vifMac = await guest.xenstore.read(\`\${dev}/vif/0/mac\`).catch((e) => "none: " + e.message);
  seen.myriBackend = await guest.xenstore.read(\`\${dev}/myri/0/backend\`).catch((e) => "none: " + e.message);
  await guest.xenstore.write(\`\${dev}/vif/0/mac\`, "<written by the guest>");
  return seen;
}
`;

let host: Host;
let dir: string;
before(async () => {
  host = await Host.start({});
  dir = mkdtempSync(join(tmpdir(), "myrixen-boot-"));
  writeFileSync(join(dir, "first-look.mjs"), PROGRAM);
});
after(async () => {
  await host.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("a guest's main runs once its devices exist: its first look finds both, and its first write cannot fail its start", async () => {
  const module = pathToFileURL(join(dir, "first-look.mjs"));
  for (let i = 0; i < 20; i++) {
    const dom = await host.startGuest({ module, name: `first-look-${i}`, pages: 256 });
    const e = await dom.exited;
    assert.equal(e.state, "shutdown", e.error?.message);
    const seen = e.result as { devices: string[]; vifMac: string; myriBackend: string };
    assert.deepEqual(seen.devices, ["myri", "vif"], `boot ${i}: ${JSON.stringify(seen)}`);
    assert.match(seen.vifMac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, `boot ${i}: the toolstack's MAC`);
    assert.match(seen.myriBackend, /^\/local\/domain\/0\/backend\/myri\//, `boot ${i}`);
  }
});

test("a NIC thread that dies once the host takes it for ready fails Host.start, naming it, instead of waiting for ever", {
  timeout: 30_000,
}, async () => {
  const launch = NicDevice.launch;
  // The thread ends at once, yet the host is told it is ready: the driver domain's first calls
  // to it are never answered, so the driver domain never says ready either.
  NicDevice.launch = (o) => {
    const r = launch.call(NicDevice, o);
    r.ready.catch(() => undefined);
    void (r.nic as unknown as { worker: Worker }).worker.terminate();
    return { nic: r.nic, ready: Promise.resolve() };
  };
  try {
    await assert.rejects(Host.start({}), /the NIC thread of NIC \d+ stopped while the host was starting/);
  } finally {
    NicDevice.launch = launch;
  }
});

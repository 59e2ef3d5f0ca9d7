/**
 * The worker entry of every domain: boots the guest's kernel side (memory, grant table,
 * event channels, XenStore, hypercall channel), loads the guest program (TypeScript through
 * tsx's loader, or JavaScript), runs its `main(guest)` and reports how it ended.
 */
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { parentPort, workerData } from "node:worker_threads";
import type { GuestBootData, GuestControlMessage } from "../hypervisor.js";
import { Guest } from "./guest.js";

export type GuestMain = (guest: Guest) => unknown;

const TS_MODULE = /\.(c|m)?tsx?$/;

async function loadGuestProgram(url: string): Promise<Record<string, unknown>> {
  if (url.startsWith("file:") && TS_MODULE.test(url)) {
    // Node 20 cannot install ESM loader hooks inside a worker; tsx's CommonJS hook works there.
    const { register } = await import("tsx/cjs/api");
    register();
    const require = createRequire(import.meta.url);
    return require(fileURLToPath(url)) as Record<string, unknown>;
  }
  return (await import(url)) as Record<string, unknown>;
}

/** The host stops the worker on "exit": let what the guest printed reach the host first. */
async function flushOutput(): Promise<void> {
  const flush = (s: NodeJS.WriteStream) =>
    new Promise<void>((r) => (s.writableLength === 0 ? r() : s.write("", () => r())));
  await Promise.race([
    Promise.all([flush(process.stdout), flush(process.stderr)]),
    new Promise((r) => setTimeout(r, 1000)),
  ]);
}

function describe(e: unknown): { name: string; message: string; stack?: string } {
  if (e instanceof Error) return { name: e.name, message: e.message, stack: e.stack };
  return { name: "Error", message: `guest threw a non-Error value: ${String(e)}` };
}

const port = parentPort!;
const boot = workerData as GuestBootData;
const post = (m: GuestControlMessage) => port.postMessage(m);
const guest = new Guest(boot, (m) => port.postMessage(m));
port.on("message", (m: { type: string; data?: unknown; domid?: number }) => {
  if (m?.type === "host") guest.deliverHostMessage(m.data);
  // A domain died or gave back a segment: the privileged domain's cached view of it is stale.
  else if ((m?.type === "domain-gone" || m?.type === "foreign-stale") && typeof m.domid === "number")
    guest.dropForeign(m.domid);
});

try {
  const mod = await loadGuestProgram(boot.moduleUrl);
  const main = (mod.default ?? mod.main) as GuestMain | undefined;
  if (typeof main !== "function")
    throw new TypeError(
      `guest program ${boot.moduleUrl} must export a function \`main(guest)\` (as default export or named \`main\`)`,
    );
  post({ type: "running" });
  guest.holdEventLoop(true);
  const result = await main(guest);
  await flushOutput();
  guest.holdEventLoop(false);
  try {
    post({ type: "exit", result });
  } catch (e) {
    throw new TypeError(`main() returned a value the host cannot receive (${(e as Error).message})`);
  }
} catch (e) {
  await flushOutput();
  post({ type: "crash", error: describe(e) });
}

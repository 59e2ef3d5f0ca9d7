/**
 * Test helper: guests that run MX calls one at a time as the test says (fixture mx-script),
 * so that a test can interleave two guests' connects, sends, disconnects and progress exactly.
 */
import type { Host } from "../../src/host/host.js";
import type { Domain } from "../../src/xen/hypervisor/domain.js";
import { request } from "./messages.js";

const SCRIPT = new URL("../fixtures/guests/mx-script.js", import.meta.url);
export const SCRIPT_KEY = 0x4242;

export interface ScriptedGuest {
  d: Domain;
  addr: { nic: number; endpoint: number };
  /** Runs one command in the guest (see fixtures/guests/mx-script.ts) and answers its result. */
  // biome-ignore lint/suspicious/noExplicitAny: each command answers its own shape
  do(cmd: Record<string, unknown>): Promise<any>;
}

/** A guest with an endpoint open (key SCRIPT_KEY), waiting for commands. */
export async function scriptedGuest(host: Host, name: string): Promise<ScriptedGuest> {
  const d = await host.startGuest({ module: SCRIPT, name, pages: 512 });
  const g: ScriptedGuest = { d, addr: { nic: 0, endpoint: 0 }, do: (cmd) => request(d, cmd) };
  g.addr = await g.do({ op: "open", key: SCRIPT_KEY });
  return g;
}

/** `a` connects to `b`'s endpoint; the address is known in `a` as `as`. */
export function connectTo(a: ScriptedGuest, b: ScriptedGuest, as: string): Promise<unknown> {
  return a.do({ op: "connect", nic: b.addr.nic, endpoint: b.addr.endpoint, key: SCRIPT_KEY, as });
}

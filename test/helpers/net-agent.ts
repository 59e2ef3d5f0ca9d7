// Test helper: a guest that drives its own netfront (fixtures/net-agent.ts) and answers each
// command the test sends it; what split-path tests play a guest with, hostile or not.
import type { Host } from "../../src/host/host.js";
import type { Domain } from "../../src/xen/hypervisor.js";
import type { NetCommand, NetReply } from "../fixtures/net-agent.js";
import { nextMessage } from "./messages.js";

const AGENT = new URL("../fixtures/net-agent.js", import.meta.url);

export interface NetAgent {
  dom: Domain;
  mac: string;
  /** Runs one command in the guest; rejects with the guest's reason, or if it stopped. */
  call<T = unknown>(cmd: NetCommand): Promise<T>;
}

/** Starts a net-agent guest on `host` and opens its netfront (256 rx buffers, 64 tx). */
export async function startNetAgent(host: Host, name: string): Promise<NetAgent> {
  const dom = await host.startGuest({ module: AGENT, name, pages: 1024, maxHeapMb: 64 });
  const call = async <T>(cmd: NetCommand): Promise<T> => {
    const got = Promise.race([
      nextMessage(dom),
      dom.exited.then((e) => {
        throw new Error(`${name} stopped (${e.state}): ${e.error?.message ?? ""}`);
      }),
    ]);
    dom.send(cmd);
    const [r] = (await got) as [NetReply];
    if (!r.ok) throw new Error(`${name} ${cmd.op}: ${r.message}`);
    return r.value as T;
  };
  const { mac } = await call<{ mac: string }>({ op: "init", rxBuffers: 256, txBuffers: 64 });
  return { dom, mac, call };
}

/** Test helper: start agent guests (test/fixtures/guests/agent.ts) and talk to them one command at a time. */
import type { Domain, DomainConfig, Hypervisor } from "../../src/xen/hypervisor.js";
import { request } from "./messages.js";

export const AGENT = new URL("../fixtures/guests/agent.js", import.meta.url);

export interface Agent {
  dom: Domain;
  rpc<T = unknown>(cmd: { op: string; [k: string]: unknown }): Promise<T>;
}

export async function startAgent(hv: Hypervisor, config: Partial<DomainConfig> = {}): Promise<Agent> {
  const dom = await hv.createDomain({ module: AGENT, pages: 64, maxHeapMb: 64, ...config });
  const rpc = <T>(cmd: { op: string; [k: string]: unknown }) => request<T>(dom, cmd);
  return { dom, rpc };
}

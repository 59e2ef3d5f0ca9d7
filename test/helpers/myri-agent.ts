/** Test helper: talk to a test/fixtures/myri-agent.ts guest or native process, one command at a time. */
import assert from "node:assert/strict";
import type { Domain } from "../../src/xen/hypervisor.js";
import type { AgentCommand, AgentReply } from "../fixtures/myri-agent.js";
import { request } from "./messages.js";

export const MYRI_AGENT = new URL("../fixtures/myri-agent.js", import.meta.url);

export interface MyriAgent {
  dom: Domain;
  /** Runs a command; resolves with its value, or rejects with an Error carrying the MX code. */
  call<T = Record<string, unknown>>(cmd: AgentCommand): Promise<T>;
  /** Runs a command that must fail; resolves with its code and message. */
  fails(cmd: AgentCommand): Promise<{ code: string; message: string }>;
}

export function myriAgent(dom: Domain): MyriAgent {
  const raw = (cmd: AgentCommand) => request<AgentReply>(dom, cmd);
  return {
    dom,
    async call<T>(cmd: AgentCommand): Promise<T> {
      const r = await raw(cmd);
      if (!r.ok) throw Object.assign(new Error(`${cmd.op}: ${r.message}`), { code: r.code });
      return r.value as T;
    },
    async fails(cmd: AgentCommand) {
      const r = await raw(cmd);
      assert.equal(r.ok, false, `${cmd.op} should have failed`);
      return r as { code: string; message: string };
    },
  };
}

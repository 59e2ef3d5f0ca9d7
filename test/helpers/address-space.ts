/**
 * The test process's address space, for tests that check a host gives dead domains' RAM back:
 * a domain's RAM stays in it while any thread holds the buffer.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

/** VmSize, bytes. */
export function vmSize(): number {
  const m = /^VmSize:\s+(\d+) kB/m.exec(readFileSync("/proc/self/status", "utf8"));
  assert.ok(m, "/proc/self/status has VmSize (Linux)");
  return Number(m[1]) * 1024;
}

/** Polls `cond` every 50 ms for up to `ms`; whether it came true. */
export async function settled(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

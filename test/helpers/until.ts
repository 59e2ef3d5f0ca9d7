// Test helper: resolves once a condition holds, polling; rejects naming what it waited for.
// A liveness bound, not a timing assertion: the default is far above what the awaited event takes.
import { setTimeout as sleep } from "node:timers/promises";

export async function until(pred: () => boolean, what: string, timeoutMs = 5000, pollMs = 5): Promise<void> {
  const start = performance.now();
  while (!pred()) {
    if (performance.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(pollMs);
  }
}

/**
 * A job run to its end with a guard against hangs: tests of failure paths (a dead peer, a
 * collective left with an error) must end in an error, never a wait. Past `guardMs` the
 * guard stops the job and the test fails with where each rank waited, and with everything
 * the ranks printed.
 */
import assert from "node:assert/strict";
import { Job, type JobSpec } from "../../src/cluster/job.js";
import type { Host } from "../../src/host/host.js";

/** Far past what such a job needs (a few seconds); only a hang reaches it. */
export const HANG_GUARD_MS = 60_000;

/** Runs the job; asserts it neither hung nor failed; returns each rank's result. */
export async function runGuarded<T>(
  host: Host,
  opts: Omit<JobSpec, "output">,
  guardMs = HANG_GUARD_MS,
): Promise<T[]> {
  const lines: string[] = [];
  const job = new Job(host, {
    ...opts,
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  });
  let hung: string | undefined;
  const guard = setTimeout(async () => {
    const states = await job.rankStates();
    hung = states.map((s) => `rank ${s.rank}: ${s.state}`).join("; ");
    await job.stop();
  }, guardMs);
  const res = await job.run().finally(() => clearTimeout(guard));
  assert.equal(hung, undefined, `the job hung: ${hung}\n${lines.join("\n")}`);
  const bad = res.failed;
  assert.equal(res.exitCode, 0, `rank ${bad?.rank} failed: ${bad?.error?.stack}\n${lines.join("\n")}`);
  return res.ranks.map((r) => r.result as T);
}

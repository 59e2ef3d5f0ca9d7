/**
 * One four-rank job holding its ranks' quota of endpoints, idle (4 × 8 = the NIC's 32), does
 * not push the next job off the fast path, nor keep a native-path job from starting.
 *
 * myrback kept the NIC's last contexts only for the first endpoint of domains that had a myri
 * device already (MyriCore.checkOpen); a job that started later had none yet when its
 * neighbour took them, so its ranks' endpoints were refused by the NIC and opened on the
 * split path (~100× the small-message latency), and a native rank (no other path) failed.
 * Now extras also leave a quarter of the NIC (registry.ts firstEndpointReserve) to domains
 * yet to start.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";

const HOG = new URL("./fixtures/guests/context-hog.js", import.meta.url);
const VICTIM = new URL("./fixtures/guests/mpi-neighbour.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

/** Runs a four-rank job whose ranks each hold their quota of endpoints, then `victim` beside it. */
async function besideHog<T>(
  victim: (lines: string[]) => Promise<T>,
): Promise<{ res: T; lines: string[]; held: number }> {
  const lines: string[] = [];
  let holding = 0;
  let allHolding!: () => void;
  const ready = new Promise<void>((r) => (allHolding = r));
  const hog = new Job(host, {
    n: 4,
    path: "bypass",
    program: HOG,
    argv: ["30000"],
    output: (rank, stream, line) => {
      lines.push(`[hog ${rank} ${stream}] ${line}`);
      if (line.startsWith("holding") && ++holding === 4) allHolding();
    },
  });
  const hogDone = hog.run();
  await ready;
  const held = (await host.nicInfo()).openEndpoints.length;
  try {
    return { res: await victim(lines), lines, held };
  } finally {
    await hog.stop();
    await hogDone;
  }
}

const victimJob = (path: "bypass" | "native") => (lines: string[]) =>
  new Job(host, {
    n: 2,
    path,
    program: VICTIM,
    argv: ["1"],
    output: (rank, stream, line) => lines.push(`[victim ${rank} ${stream}] ${line}`),
  }).run();

test("a job holding idle extra endpoints does not push the next job off the fast path", {
  timeout: 120_000,
}, async () => {
  const { res, lines, held } = await besideHog(victimJob("bypass"));
  assert.equal(res.exitCode, 0, `${res.failed?.error?.message}\n${lines.join("\n")}`);
  const reasons = res.ranks.map((r) => (r.result as { fallbackReason?: string }).fallbackReason);
  assert.deepEqual(
    reasons,
    [undefined, undefined],
    `the honest job's ranks lost the fast path while the hog held ${held} of the NIC's ${host.limits.maxEndpoints} contexts:\n${lines.join("\n")}`,
  );
});

test("a job holding idle extra endpoints does not keep the next native-path job from starting", {
  timeout: 120_000,
}, async () => {
  // A native process has no split path to fall back to.
  const { res, lines, held } = await besideHog(victimJob("native"));
  assert.equal(
    res.exitCode,
    0,
    `the honest native job failed while the hog held ${held} of the NIC's ${host.limits.maxEndpoints} contexts: ${res.failed?.error?.message}\n${lines.join("\n")}`,
  );
});

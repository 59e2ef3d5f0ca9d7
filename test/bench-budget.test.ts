/**
 * The quick profile's time budget for ping-pong batches (bench substrate --quick): a batch
 * asked for far more round trips than its budget allows ends at the budget, its sample is the
 * mean over the round trips it made, and both sides of the pair go on working afterwards.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { rawSabPingPong } from "../src/bench/baselines.js";
import { startEvtchnPingPong } from "../src/bench/substrate.js";
import { Hypervisor } from "../src/xen/hypervisor.js";

// Far more than any machine makes within a test's minutes (a round trip takes ≥ 0.1 µs).
const ENDLESS = 2_000_000_000;

/** `p`, or a failure naming `what` after a minute (a batch that ignores its budget). */
async function withinAMinute<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still running after 60 s`)), 60_000);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

test("raw-sab: a run asked for two billion round trips ends at its budget; the echo stops with it", async () => {
  const r = await rawSabPingPong({
    bytes: 8,
    iters: ENDLESS,
    warmup: 10,
    runs: 2,
    warmupRuns: 1,
    budgetMs: 40,
    // Without the budget this run would still be going: the baseline fails after this long.
    timeoutMs: 60_000,
  });
  assert.equal(r.samples.length, 2);
  for (const us of r.samples) assert.ok(Number.isFinite(us) && us > 0, `sample ${us}`);
  // Bad budgets are refused before any worker starts.
  await assert.rejects(
    rawSabPingPong({ bytes: 8, iters: 10, runs: 1, budgetMs: 0 }),
    /budgetMs must be positive/,
  );
  // Without a budget the count is kept (the echo stops on its own count, not on a signal).
  const full = await rawSabPingPong({ bytes: 0, iters: 300, warmup: 0, runs: 1, timeoutMs: 60_000 });
  assert.equal(full.samples.length, 1);
});

test("evtchn: a batch asked for two billion round trips ends at its budget, and the pair serves the next batch", async () => {
  const hv = new Hypervisor();
  const pp = await startEvtchnPingPong(hv);
  try {
    for (let i = 0; i < 2; i++) {
      const us = await withinAMinute(`batch ${i}`, pp.batch(ENDLESS, 10, 40));
      assert.ok(Number.isFinite(us) && us > 0, `batch ${i}: ${us}`);
    }
    // A batch without a budget runs its count.
    assert.ok((await pp.batch(200, 0)) > 0);
  } finally {
    // A ping still in an endless batch never reads "stop": its domains are destroyed instead.
    await withinAMinute("stop", pp.stop()).catch(() => Promise.all(hv.domains().map((d) => d.destroy())));
  }
});

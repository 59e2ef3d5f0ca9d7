/**
 * `myrixen bench substrate`: the hypervisor layer against the machine's limit.
 *   - pingpong / evtchn: an event-channel notification bounced between two domains
 *     (one-way latency), next to raw-sab: two plain workers doing the same with a bare
 *     SharedArrayBuffer and Atomics, spin-then-block (the limit). Target: ≤ 1.5× raw-sab.
 *   - ring-throughput / ring: requests per second through a granted Xen ring between two
 *     domains, request and response both 16 bytes, set up by the xenbus handshake.
 */
import { once } from "node:events";
import { runRingPair } from "../programs/ring-pair-host.js";
import type { Hypervisor } from "../xen/hypervisor.js";
import { rawSabPingPong } from "./baselines.js";
import { type BenchProfile, type BenchRow, makeRow } from "./harness.js";
import { SUBSTRATE_TRANSPORTS } from "./transports.js";

export { SUBSTRATE_TRANSPORTS };

const PINGPONG = new URL("../programs/evtchn-pingpong.js", import.meta.url);

export type Progress = (label: string) => void;

/** The longest timed batch of the quick profile's ping-pongs (a quiet machine needs 20–80 ms). */
export const QUICK_BATCH_BUDGET_MS = 150;

/** Two domains set up for event-channel ping-pong; `batch` runs one timed batch and returns µs one-way. */
export async function startEvtchnPingPong(hv: Hypervisor, spinUs?: number) {
  const pong = await hv.createDomain({ module: PINGPONG, name: "evtchn-pong", pages: 4 });
  const ping = await hv.createDomain({
    module: PINGPONG,
    name: "evtchn-ping",
    pages: 4,
    args: { role: "ping", peer: pong.domid, spinUs },
  });
  const [{ port }] = (await once(ping, "message")) as [{ port: number }];
  const bound = once(pong, "message");
  pong.send({ role: "pong", peer: ping.domid, port, spinUs });
  await bound;
  const failed = Promise.race([ping.exited, pong.exited]).then((e) => {
    throw new Error(`evtchn ping-pong domain ${e.state}: ${e.error?.message ?? "ended early"}`);
  });
  failed.catch(() => {});
  return {
    async batch(iters: number, warmup: number, budgetMs?: number): Promise<number> {
      const answer = once(ping, "message") as Promise<[number]>;
      ping.send({ iters, warmup, budgetMs });
      const [us] = await Promise.race([answer, failed]);
      return us;
    },
    async stop(): Promise<void> {
      ping.send("stop");
      await Promise.all([ping.exited, pong.exited]);
      await Promise.all([ping.destroy(), pong.destroy()]);
    },
  };
}

export async function benchSubstrate(hv: Hypervisor, profile: BenchProfile, progress: Progress = () => {}) {
  // A round trip is ~0.2 µs, so batches are long (tens of ms) to ride over scheduler hiccups.
  // A quick look also bounds each batch in time: on a loaded machine a round trip can cost
  // two scheduler wake-ups (tens of µs), and 100,000 of them took ~7 s a batch.
  const iters = profile.name === "quick" ? 100_000 : 400_000;
  const budgetMs = profile.name === "quick" ? QUICK_BATCH_BUDGET_MS : undefined;
  const warmup = profile.warmupIters;
  const total = profile.runs + profile.warmupRuns;

  // Two rounds of (evtchn runs, raw-sab runs), so a drift of the machine hits both alike.
  // Each side keeps its threads for a whole round and discards a warm-up run (JIT tier-up).
  const evt: number[] = [];
  const raw: number[] = [];
  const pp = await startEvtchnPingPong(hv);
  try {
    const runs = profile.runs + 2;
    const perRound = [Math.ceil(runs / 2), Math.floor(runs / 2)];
    for (const [round, n] of perRound.entries()) {
      if (n === 0) continue;
      progress(`ping-pong round ${round + 1} of 2: evtchn between two domains (${n} runs)`);
      for (let r = 0; r < n + profile.warmupRuns; r++) {
        const us = await pp.batch(iters, warmup, budgetMs);
        if (r >= profile.warmupRuns) evt.push(us);
      }
      progress(`ping-pong round ${round + 1} of 2: raw-sab between two plain workers (${n} runs)`);
      const b = await rawSabPingPong({
        bytes: 0,
        iters,
        warmup,
        runs: n,
        warmupRuns: profile.warmupRuns,
        budgetMs,
      });
      raw.push(...b.samples);
    }
  } finally {
    await pp.stop();
  }
  const rows: BenchRow[] = [
    makeRow({ bench: "evtchn-pingpong", transport: "evtchn", bytes: 0, metric: "latency_us" }, evt),
    makeRow({ bench: "evtchn-pingpong", transport: "raw-sab", bytes: 0, metric: "latency_us" }, raw),
  ];

  const requests = profile.name === "quick" ? 200_000 : 1_000_000;
  const ring: number[] = [];
  for (let r = 0; r < total; r++) {
    progress(`ring throughput run ${r + 1} of ${total} (${requests.toLocaleString("en-US")} requests)`);
    const run = await runRingPair(hv, { requests });
    if (r >= profile.warmupRuns) ring.push(run.front.requestsPerSecond);
  }
  rows.push(makeRow({ bench: "ring-throughput", transport: "ring", bytes: 16, metric: "ops_per_s" }, ring));
  return rows;
}

/** What an event channel adds to the machine's own wake-up, from the medians of one run. */
export function substrateVerdict(rows: readonly BenchRow[]): string {
  const evt = rows.find((r) => r.transport === "evtchn");
  const raw = rows.find((r) => r.transport === "raw-sab" && r.bench === "evtchn-pingpong");
  if (!evt || !raw) return "";
  const ratio = evt.median / raw.median;
  return (
    `evtchn / raw-sab one-way latency: ${ratio.toFixed(2)}× (${evt.median.toFixed(2)} vs ${raw.median.toFixed(2)} µs: ` +
    "an event channel between two domains against a bare shared-memory wake-up between two plain workers)"
  );
}

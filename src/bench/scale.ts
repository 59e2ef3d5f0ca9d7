/**
 * `myrixen bench scale` (issue 16): 1, 2, 4, 8, 16 guests (bypass) streaming to as many
 * peers at once, co-resident (intra-host: all 2N on one host) and across two linked hosts
 * (cross-host: senders on host 1, receivers on host 2), against the same number of native
 * processes. Per run, every pair streams SCALE_BYTES messages (osu_bw, window 64) for the
 * same number of iterations, started together; the run's aggregate is the sum of the pairs'
 * rates, its fairness Jain's index over them ((Σx)² / (n·Σx²), 1 = all equal). Rows:
 * `bench: "scale"`, a `guests` field, metrics bandwidth_MBps (aggregate) and jain_index.
 * The quick profile stops at 8 guests. On a 2-core machine every extra pair adds threads to
 * the same two cores, so the aggregate cannot grow with N: the figures say how evenly it is
 * shared and what a guest costs against a process.
 */
import type { Host } from "../host/host.js";
import { type BenchProfile, type BenchRow, makeRow, type Scope } from "./harness.js";
import { startLinkedHosts } from "./hosts.js";
import { MxPair, type MxPath, OSU_WINDOW, type Placement, type Progress } from "./mx.js";

export const SCALE_BYTES = 64 * 1024;
export const SCALE_SCOPES: readonly Scope[] = ["intra-host", "cross-host"];

export interface ScaleRow extends BenchRow {
  guests: number;
}

/** Jain's fairness index of `xs`: 1 when all are equal, 1/n when one has everything. */
export function jainIndex(xs: readonly number[]): number {
  const sum = xs.reduce((s, x) => s + x, 0);
  const sq = xs.reduce((s, x) => s + x * x, 0);
  return sq === 0 ? 1 : (sum * sum) / (xs.length * sq);
}

async function measureN(
  placement: Placement,
  scope: Scope,
  path: MxPath,
  n: number,
  profile: BenchProfile,
  progress: Progress,
): Promise<ScaleRow[]> {
  const iters = profile.name === "quick" ? 4 : 20;
  progress(`scale ${scope} ${path}: starting ${n} pair${n > 1 ? "s" : ""}`);
  const pairs: MxPair[] = [];
  try {
    for (let i = 0; i < n; i++) pairs.push(await MxPair.start(placement, path, { pages: 2048 }));
    const agg: number[] = [];
    const jain: number[] = [];
    for (let run = -profile.warmupRuns; run < profile.runs; run++) {
      progress(`scale ${scope} ${path} ×${n}: run ${run + 1}/${profile.runs}`);
      const rates = await Promise.all(pairs.map((p) => p.stream(SCALE_BYTES, iters, 1, OSU_WINDOW)));
      if (run < 0) continue;
      agg.push(rates.reduce((s, x) => s + x, 0));
      jain.push(jainIndex(rates));
    }
    const key = { bench: "scale", transport: path, scope, bytes: SCALE_BYTES };
    return [
      { ...makeRow({ ...key, metric: "bandwidth_MBps" }, agg), guests: n },
      { ...makeRow({ ...key, metric: "jain_index" }, jain), guests: n },
    ];
  } finally {
    await Promise.all(pairs.map((p) => p.stop()));
  }
}

export async function benchScale(
  host: Host,
  profile: BenchProfile,
  progress: Progress,
  scopes: readonly Scope[] = SCALE_SCOPES,
  counts: readonly number[] = profile.name === "quick" ? [1, 2, 4, 8] : [1, 2, 4, 8, 16],
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const run = async (placement: Placement, scope: Scope) => {
    for (const n of counts)
      for (const path of ["native", "bypass"] as const)
        rows.push(...(await measureN(placement, scope, path, n, profile, progress)));
  };
  if (scopes.includes("intra-host")) await run(host, "intra-host");
  if (scopes.includes("cross-host")) {
    progress("scale cross-host: starting two hosts linked over loopback TCP");
    const linked = await startLinkedHosts();
    try {
      await run([linked.a, linked.b], "cross-host");
    } finally {
      await linked.stop();
    }
  }
  return rows;
}

export function describeScale(rows: readonly BenchRow[]): string[] {
  const sc = rows.filter((r) => r.bench === "scale") as ScaleRow[];
  if (sc.length === 0) return [];
  const out = [`scale (${SCALE_BYTES / 1024} KiB streams, medians over runs; noisy on a loaded machine):`];
  const keys = [...new Set(sc.map((r) => `${r.scope}\u0000${r.transport}`))];
  for (const k of keys) {
    const [scope, transport] = k.split("\u0000");
    const of = sc.filter((r) => r.scope === scope && r.transport === transport);
    const cells = [...new Set(of.map((r) => r.guests))].map((g) => {
      const bw = of.find((r) => r.guests === g && r.metric === "bandwidth_MBps");
      const j = of.find((r) => r.guests === g && r.metric === "jain_index");
      return `${g}: ${bw?.median.toFixed(0)} MB/s J=${j?.median.toFixed(3)}`;
    });
    out.push(`  ${scope.padEnd(10)} ${transport.padEnd(6)} ${cells.join("  ")}`);
  }
  return out;
}

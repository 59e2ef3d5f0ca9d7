/**
 * `myrixen bench isolation` (issue 16): a noisy neighbour against a bystander, on one host
 * (intra-host: every guest on it) and across two linked hosts (cross-host: A and B on host 1,
 * D and C on host 2). All guests are bypass guests with equal weights unless said.
 *
 *   B ↔ C    8 B ping-pong (one-way latency, µs), measured three ways in each run: solo;
 *            beside a CPU-only neighbour that burns the same CPU time as A's stream (the
 *            cores A's stream keeps busy alone, measured first with process.cpuUsage, as every
 *            thread is in this process; burnt by ⌈cores⌉ guests that spin for their share of
 *            each slice: spin-guest.ts); beside A
 *            streaming 1 MiB messages to D as fast as it can. Rows: latency_slowdown =
 *            beside A ÷ beside the spinners (what the NIC and channels let A cost B beyond the
 *            CPU it burns), latency_vs_solo = beside A ÷ solo.
 *   A → D    streams alone, then capped at half that rate (its tx bytesPerSec, set at run
 *            time with Host.setQos): cap_accuracy = measured rate ÷ cap (3× longer runs,
 *            after 3 warm-up windows that spend the bucket's saved burst).
 *   A → D, E → F  stream together with weights 3 and 1 (iterations in the same ratio, so
 *            both run the whole time if the shares hold): share_ratio = A's share of the two
 *            rates ÷ 3/4. Both streams are started in the same tick (Promise.all: each pair's
 *            receiver, then its sender, is told at once) and each rate is timed by its own
 *            sender over its own measured windows, after one warm-up window each. On one
 *            host these runs are 4× the stream runs (E 4 × streamIters windows, A 12 ×):
 *            co-resident weights are held by myrback's share loop (myrixen/back/share-loop.ts),
 *            a controller that looks every 5 ms and settles in some 20–40 ms, which at the
 *            stream runs' length (≈ 80 ms for A) was most of the run. Across hosts the NIC's
 *            deficit round robin needs no settling; those runs are as before.
 * Each row: the median over the profile's runs of the per-run ratio; extra fields carry the
 * medians it came from. On a loaded 2-core machine these figures are noisy.
 */
import { availableParallelism } from "node:os";
import type { Host } from "../host/host.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import type { Domain } from "../xen/hypervisor.js";
import { type BenchProfile, type BenchRow, makeRow, type Scope, summarize } from "./harness.js";
import { startLinkedHosts } from "./hosts.js";
import { MxPair, type Placement, type Progress } from "./mx.js";

const SPIN = new URL("./spin-guest.js", import.meta.url);
const MIB = 1 << 20;
const PING_BYTES = 8;
/** Sends per stream window (1 MiB each), as osu_bw's 64 would hold 64 MiB per rank. */
const STREAM_WINDOW = 8;
export const ISOLATION_SCOPES: readonly Scope[] = ["intra-host", "cross-host"];

/** An isolation row: the ratio, and the medians it came from. */
export interface IsolationRow extends BenchRow {
  /** latency rows: B's median one-way latency (µs) solo, beside the spinners, beside A. */
  solo_us?: number;
  beside_cpu_us?: number;
  beside_stream_us?: number;
  /** latency rows: the cores A's stream kept busy alone (CPU time ÷ wall time), and the spinners that burnt as much. */
  stream_cores?: number;
  spinners?: number;
  /** cap_accuracy: A's cap and its measured rate (MB/s); share_ratio: the two rates. */
  cap_MBps?: number;
  rate_MBps?: number;
  rates_MBps?: [number, number];
  weights?: [number, number];
}

async function setQos(
  host: Host,
  dom: Domain,
  qos: QosPolicy,
  weight: number,
  capBps: number,
): Promise<void> {
  await host.setQos(dom.domid, qos);
  // Wait until the NIC enforces it (myrback follows the node asynchronously).
  const until = Date.now() + 10_000;
  for (;;) {
    const info = await host.nicInfo();
    const hit = (info.qos ?? []).some(
      (q) => q.settings.weight === weight && q.settings.txBytesPerSec === capBps,
    );
    const cleared = weight === 1 && capBps === 0 && !(info.qos ?? []).some(() => true);
    if (hit || cleared) return;
    if (Date.now() > until) throw new Error("bench isolation: the NIC did not take the policy within 10 s");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Runs `fn` while `pair` streams 1 MiB messages back to back; returns fn's value. */
async function besideStream<T>(pair: MxPair, fn: () => Promise<T>): Promise<T> {
  let running = true;
  const streaming = (async () => {
    while (running) await pair.stream(MIB, 4, 0, STREAM_WINDOW);
  })();
  try {
    return await fn();
  } finally {
    running = false;
    await streaming;
  }
}

/**
 * Runs `fn` beside guests that burn `cores` cores of CPU time and touch neither NIC nor
 * channel: ⌈cores⌉ spinners, each spinning for cores ÷ ⌈cores⌉ of every slice (spin-guest.ts).
 */
async function besideSpinners<T>(host: Host, cores: number, fn: () => Promise<T>): Promise<T> {
  const count = spinnerCount(cores);
  const duty = Math.max(cores, 0.05) / count;
  const spinners: Domain[] = [];
  try {
    for (let i = 0; i < count; i++)
      spinners.push(
        await host.startGuest({
          module: SPIN,
          name: `spinner${i}`,
          args: { duty },
          pages: 64,
          maxHeapMb: 32,
        }),
      );
    return await fn();
  } finally {
    for (const d of spinners) d.send("stop");
    for (const d of spinners) {
      await d.exited;
      await d.destroy();
    }
  }
}

/** Cores this process keeps busy while `fn` runs: CPU time (all threads, user and system) ÷ wall time. */
async function coresBusy(fn: () => Promise<unknown>): Promise<number> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const cpu = process.cpuUsage(cpu0);
  return (cpu.user + cpu.system) / 1000 / Math.max(performance.now() - t0, 1e-3);
}

/** Spinners for `cores` cores of CPU time: at least 1, at most the machine's cores. */
function spinnerCount(cores: number): number {
  return Math.min(Math.max(1, Math.ceil(cores - 0.01)), availableParallelism());
}

/**
 * The CPU time A's stream burns, in cores: what the process keeps busy while A streams
 * alone, less what it keeps busy idle (the NICs' and dom0's polling); at most the machine's.
 */
async function streamCores(pair: MxPair, iters: number): Promise<number> {
  const idle = await coresBusy(() => new Promise((r) => setTimeout(r, 100)));
  const busy = await coresBusy(() => pair.stream(MIB, iters, 1, STREAM_WINDOW));
  return Math.min(Math.max(0, busy - idle), availableParallelism());
}

async function scopeRows(
  placement: Placement,
  scope: Scope,
  profile: BenchProfile,
  progress: Progress,
): Promise<IsolationRow[]> {
  const [h1] = Array.isArray(placement) ? placement : [placement as Host];
  const quick = profile.name === "quick";
  const ppIters = quick ? 500 : 3000;
  const ppWarm = quick ? 50 : 200;
  const streamIters = quick ? 4 : 12;
  const shareIters = scope === "intra-host" ? 4 * streamIters : streamIters;
  const pages = 8192;
  progress(`isolation ${scope}: starting B↔C, A→D, E→F`);
  const bc = await MxPair.start(placement, "bypass", { pages: 1024 });
  const ad = await MxPair.start(placement, "bypass", { pages });
  const ef = await MxPair.start(placement, "bypass", { pages });
  const a = ad.domains[0];
  const solo: number[] = [];
  const cpu: number[] = [];
  const beside: number[] = [];
  const slowdown: number[] = [];
  const vsSolo: number[] = [];
  const uncapped: number[] = [];
  const capAcc: number[] = [];
  const shares: number[] = [];
  const rates: [number, number][] = [];
  let cap = 0;
  let cores = 0;
  try {
    await bc.pingpong(PING_BYTES, ppIters, ppWarm);
    progress(`isolation ${scope}: the CPU time A's stream burns`);
    cores = await streamCores(ad, streamIters);
    for (let run = 0; run < profile.runs; run++) {
      progress(`isolation ${scope}: B's latency, run ${run + 1}/${profile.runs}`);
      const s = await bc.pingpong(PING_BYTES, ppIters, ppWarm);
      const c = await besideSpinners(h1, cores, () => bc.pingpong(PING_BYTES, ppIters, ppWarm));
      const b = await besideStream(ad, () => bc.pingpong(PING_BYTES, ppIters, ppWarm));
      solo.push(s);
      cpu.push(c);
      beside.push(b);
      slowdown.push(b / c);
      vsSolo.push(b / s);
    }
    for (let run = 0; run < profile.runs; run++) {
      progress(`isolation ${scope}: A's stream uncapped, run ${run + 1}/${profile.runs}`);
      uncapped.push(await ad.stream(MIB, streamIters, 1, STREAM_WINDOW));
    }
    // The cap binds: half of what A reached alone, in bytes per second.
    cap = Math.max(1, Math.round(summarize(uncapped).median / 2));
    await setQos(h1, a, { tx: { bytesPerSec: cap * 1e6 } }, 1, cap * 1e6);
    for (let run = 0; run < profile.runs; run++) {
      progress(`isolation ${scope}: A capped at ${cap} MB/s, run ${run + 1}/${profile.runs}`);
      // Long runs, after warm-up windows that spend what the bucket saved while A was idle
      // (BURST_MS of the rate): the measured part runs at the cap, not at the burst.
      capAcc.push((await ad.stream(MIB, 3 * streamIters, 3, STREAM_WINDOW)) / cap);
    }
    await setQos(h1, a, {}, 1, 0);
    await setQos(h1, a, { weight: 3 }, 3, 0);
    for (let run = 0; run < profile.runs; run++) {
      progress(`isolation ${scope}: A (weight 3) and E (weight 1) together, run ${run + 1}/${profile.runs}`);
      const [ra, re] = await Promise.all([
        ad.stream(MIB, 3 * shareIters, 1, STREAM_WINDOW),
        ef.stream(MIB, shareIters, 1, STREAM_WINDOW),
      ]);
      rates.push([ra, re]);
      shares.push(ra / (ra + re) / 0.75);
    }
    await setQos(h1, a, {}, 1, 0);
  } finally {
    await Promise.all([bc.stop(), ad.stop(), ef.stop()]);
  }
  const med = (xs: number[]) => summarize(xs).median;
  const key = { bench: "isolation", transport: "bypass", scope };
  const lat = {
    solo_us: med(solo),
    beside_cpu_us: med(cpu),
    beside_stream_us: med(beside),
    stream_cores: Math.round(cores * 100) / 100,
    spinners: spinnerCount(cores),
  };
  return [
    { ...makeRow({ ...key, bytes: PING_BYTES, metric: "latency_slowdown" }, slowdown), ...lat },
    { ...makeRow({ ...key, bytes: PING_BYTES, metric: "latency_vs_solo" }, vsSolo), ...lat },
    {
      ...makeRow({ ...key, bytes: MIB, metric: "cap_accuracy" }, capAcc),
      cap_MBps: cap,
      rate_MBps: med(capAcc) * cap,
    },
    {
      ...makeRow({ ...key, bytes: MIB, metric: "share_ratio" }, shares),
      weights: [3, 1],
      rates_MBps: [med(rates.map((r) => r[0])), med(rates.map((r) => r[1]))],
    },
  ];
}

/** Both scopes (or the ones asked): intra-host on `host`, cross-host on two hosts it starts. */
export async function benchIsolation(
  host: Host,
  profile: BenchProfile,
  progress: Progress,
  scopes: readonly Scope[] = ISOLATION_SCOPES,
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  if (scopes.includes("intra-host")) rows.push(...(await scopeRows(host, "intra-host", profile, progress)));
  if (scopes.includes("cross-host")) {
    progress("isolation cross-host: starting two hosts linked over loopback TCP");
    const linked = await startLinkedHosts();
    try {
      rows.push(...(await scopeRows([linked.a, linked.b], "cross-host", profile, progress)));
    } finally {
      await linked.stop();
    }
  }
  return rows;
}

/** The figures as text, with the targets. */
export function describeIsolation(rows: readonly BenchRow[]): string[] {
  const iso = rows.filter((r) => r.bench === "isolation") as IsolationRow[];
  if (iso.length === 0) return [];
  const out = ["isolation (medians over runs; a loaded machine makes these noisy):"];
  for (const r of iso) {
    const v = r.median.toFixed(3);
    if (r.metric === "latency_slowdown")
      out.push(
        `  ${r.scope.padEnd(10)} B's 8 B latency: solo ${r.solo_us?.toFixed(2)} µs, beside ${spinnersText(r)} ${r.beside_cpu_us?.toFixed(2)} µs, ` +
          `beside A's 1 MiB stream ${r.beside_stream_us?.toFixed(2)} µs → latency_slowdown ${v}× (isolated: ≤ 1.5)`,
      );
    else if (r.metric === "latency_vs_solo") out.push(`  ${r.scope.padEnd(10)} latency_vs_solo ${v}×`);
    else if (r.metric === "cap_accuracy")
      out.push(
        `  ${r.scope.padEnd(10)} A capped at ${r.cap_MBps} MB/s streams ${r.rate_MBps?.toFixed(0)} MB/s → cap_accuracy ${v} (accurate: 1 ± 0.05)`,
      );
    else if (r.metric === "share_ratio")
      out.push(
        `  ${r.scope.padEnd(10)} weights 3:1 → ${r.rates_MBps?.map((x) => x.toFixed(0)).join(" : ")} MB/s → share_ratio ${v} (fair: 1 ± 0.1)`,
      );
  }
  return out;
}

/** The CPU-only neighbour, as the row recorded it. */
function spinnersText(r: IsolationRow): string {
  const n = r.spinners ?? 1;
  const what = n === 1 ? "a spinner" : `${n} spinners`;
  return r.stream_cores === undefined
    ? what
    : `${what} burning ${r.stream_cores.toFixed(2)} cores (A's stream alone)`;
}

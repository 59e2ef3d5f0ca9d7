/**
 * Benchmark harness: the project's benchmark row/report format (`--json FILE`), machine
 * description with a noise verdict, sample statistics, size parsing and sweeps, quick/full
 * profiles, and the text table that compares every transport against the raw baselines
 * measured in the same run.
 */

import { existsSync, mkdirSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import Table from "cli-table3";
import pc from "picocolors";
import { loadavg, machineFacts } from "../host/machine.js";
import {
  type BenchReport,
  type BenchRow,
  endMachineInfo,
  formatBytes,
  type MachineInfo,
  type Metric,
  parseSize,
  type Scope,
  startMachineInfo,
  validateReport,
} from "../programs/rows.js";

// The row format, statistics and sizes live in rows.ts (pure, shared with guest programs).
export * from "../programs/rows.js";

// ---- format -----------------------------------------------------------------------------

/** Transport names used across the project (rows may carry others; validation does not restrict). */
export const TRANSPORTS = [
  "native",
  "bypass",
  "split",
  "openmpi",
  "openmpi-cico",
  "raw-sab",
  "raw-relay",
  "postmessage",
  "postmessage-transfer",
  "raw-tcp",
  "memcpy",
  "evtchn",
  "ring",
] as const;

// ---- machine ----------------------------------------------------------------------------

/** Describe the machine at the start of a run; call finishMachineInfo at the end. */
export function machineInfo(): MachineInfo {
  return startMachineInfo(machineFacts());
}

/**
 * Complete a MachineInfo at the end of a run: load average at end, and the noise verdict
 * extended with the spread of repeated runs in `rows` (rows with at least 2 runs).
 */
export function finishMachineInfo(info: MachineInfo, rows: readonly BenchRow[] = []): MachineInfo {
  return endMachineInfo(info, rows, loadavg());
}

/** One or two lines describing the machine; says so when the machine was noisy. */
export function describeMachine(info: MachineInfo, opts: { color?: boolean } = {}): string {
  const c = pc.createColors(opts.color ?? pc.isColorSupported);
  const gib = (info.totalMemBytes / 2 ** 30).toFixed(1);
  const load = `load ${info.loadavgStart.join(" ")}${info.loadavgEnd ? ` → ${info.loadavgEnd.join(" ")}` : ""}`;
  let s =
    `${info.hostname}: ${info.cpus.count} × ${info.cpus.model}, ${gib} GiB, ${info.platform}/${info.arch} ` +
    `${info.release}, Node ${info.node} (V8 ${info.v8}), ${load}, ${info.date}`;
  if (info.noisy)
    s += `\n${c.yellow(`NOISY MACHINE: ${info.noiseReason ?? "unknown reason"}; compare ratios only`)}`;
  return s;
}

// ---- statistics -------------------------------------------------------------------------

/**
 * Run `fn` `warmup` times (results discarded), then `runs` times, returning the samples.
 * Each sample is typically itself a mean over many iterations measured inside a worker.
 */
export async function measure(
  runs: number,
  warmup: number,
  fn: (run: number) => number | Promise<number>,
): Promise<number[]> {
  if (!Number.isInteger(runs) || runs < 1)
    throw new Error(`measure: runs must be a positive integer, got ${runs}`);
  if (!Number.isInteger(warmup) || warmup < 0) {
    throw new Error(`measure: warmup must be a non-negative integer, got ${warmup}`);
  }
  for (let i = 0; i < warmup; i++) await fn(-1 - i);
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    const s = await fn(i);
    if (typeof s !== "number" || !Number.isFinite(s)) throw new Error(`measure: run ${i} returned ${s}`);
    samples.push(s);
  }
  return samples;
}

// ---- validation -------------------------------------------------------------------------

/**
 * Creates `dir` and its missing parents one level at a time. (Node 20's recursive mkdirSync
 * can spin forever under a read-only pseudo-filesystem such as /proc; this fails at once.)
 */
export function makeDirs(dir: string): void {
  const missing = missingDirs(dir);
  const d = missing.length > 0 ? dirname(missing[0]) : resolve(dir);
  if (existsSync(d) && !statSync(d).isDirectory()) throw new Error(`${d} is not a directory`);
  for (const m of missing) mkdirSync(m);
}

/** The directories (outermost first) that making `dir` would create: none if it exists. */
export function missingDirs(dir: string): string[] {
  const missing: string[] = [];
  let d = resolve(dir);
  while (!existsSync(d)) {
    missing.unshift(d);
    const up = dirname(d);
    if (up === d) break;
    d = up;
  }
  return missing;
}

/**
 * Checks, before any benchmark runs, that `file` can be written: creates its directory and
 * writes and removes a probe file there. Throws `cannot write <what> to <file>: <reason>`.
 */
export function prepareOutputFile(file: string, what = "benchmark JSON"): string {
  const path = resolve(file);
  try {
    if (existsSync(path) && statSync(path).isDirectory()) throw new Error("it is a directory");
    makeDirs(dirname(path));
    const probe = join(dirname(path), `.myrixen-probe-${process.pid}`);
    writeFileSync(probe, "");
    unlinkSync(probe);
  } catch (e) {
    // The probe's own name is ours, not the user's: say what failed in the directory they named.
    const err = e as NodeJS.ErrnoException;
    const reason =
      typeof err.code === "string" && typeof err.syscall === "string"
        ? `${err.code}: cannot ${err.syscall === "open" ? "create a file" : err.syscall} in ${dirname(path)}`
        : e instanceof Error
          ? e.message
          : String(e);
    throw new Error(`cannot write ${what} to ${file}: ${reason}`);
  }
  return path;
}

/** Write the report as pretty JSON, creating the parent directory. */
export function writeReport(file: string, report: BenchReport): void {
  validateReport(report);
  try {
    makeDirs(dirname(file));
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new Error(`cannot write benchmark JSON to ${file}: ${reason}`, { cause: e });
  }
}

// ---- sizes ------------------------------------------------------------------------------

/** Parse a comma-separated size list ("0,8,1K,64K,1M,4M") into sorted, distinct byte counts. */
export function parseSizes(text: string): number[] {
  const parts = text.split(",").map((s) => s.trim());
  if (text.trim() === "" || parts.some((s) => s === "")) {
    throw new Error(`invalid size list "${text}": expected comma-separated sizes such as 0,8,1K,64K,1M`);
  }
  return [...new Set(parts.map(parseSize))].sort((a, b) => a - b);
}

/** OSU-style sweep of powers of two in [min, max]: 0 (if min is 0), then 1, 2, 4, … */
export function sizeSweep(min: number, max: number): number[] {
  for (const [name, v] of [
    ["min", min],
    ["max", max],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new Error(`sizeSweep: ${name} must be a non-negative integer, got ${v}`);
  }
  if (min > max) throw new Error(`sizeSweep: min (${min}) is larger than max (${max})`);
  const out: number[] = min === 0 ? [0] : [];
  for (let s = 1; s <= max; s *= 2) if (s >= min) out.push(s);
  if (out.length === 0) throw new Error(`sizeSweep: no power of two between ${min} and ${max}`);
  return out;
}

// ---- profiles ---------------------------------------------------------------------------

export interface BenchProfile {
  name: "quick" | "full";
  /** Measured runs per (bench, transport, size); each run yields one sample. */
  runs: number;
  /** Runs discarded before measuring. */
  warmupRuns: number;
  /** More warm-up runs allowed while a pair has not settled (see EXTRA_WARMUP_RUNS). */
  extraWarmupRuns: number;
  /** Iterations per run for messages below `largeBytes`. */
  itersSmall: number;
  /** Iterations per run for messages of `largeBytes` or more. */
  itersLarge: number;
  /** Warm-up iterations inside each run (before the timed ones). */
  warmupIters: number;
  /** Threshold between small and large messages. */
  largeBytes: number;
  /** Default message sizes. */
  sizes: number[];
}

export function profileFor(quick: boolean): BenchProfile {
  return quick
    ? {
        name: "quick",
        runs: 3,
        warmupRuns: 1,
        // A quick look: one more warm-up run at most (a noisy VM rarely settles within 10%,
        // and would pay the full three on every cell).
        extraWarmupRuns: 1,
        itersSmall: 2_000,
        itersLarge: 100,
        warmupIters: 200,
        largeBytes: 64 * 1024,
        sizes: [0, 8, 4096, 64 * 1024, 1024 * 1024],
      }
    : {
        name: "full",
        runs: 7,
        warmupRuns: 1,
        extraWarmupRuns: EXTRA_WARMUP_RUNS,
        itersSmall: 20_000,
        itersLarge: 1_000,
        warmupIters: 2_000,
        largeBytes: 64 * 1024,
        sizes: [0, 8, 64, 512, 4096, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024],
      };
}

/**
 * Warm-up runs of the MX pairs go on past the profile's warmupRuns, up to this many more
 * (the full profile's extraWarmupRuns; the quick profile allows one),
 * while some pair's last warm-up run differs from its previous one by more than
 * SETTLED_WITHIN. V8 compiles the path a size takes (eager, pieces, push) over its first
 * thousands of messages, on background threads that take the pair's cores; after a single
 * warm-up run the first measured run came out 2–3× the others (8 B: 1.3–1.6 against
 * 0.6–0.9 µs; 64 KiB: 23–32 against 9–12 µs). A machine too noisy to settle costs only these
 * runs: the samples are taken after them all the same.
 */
export const EXTRA_WARMUP_RUNS = 3;
export const SETTLED_WITHIN = 0.1;

/** Two successive warm-up samples agree within SETTLED_WITHIN of the first. */
export function settled(previous: number, latest: number): boolean {
  return Math.abs(latest - previous) <= SETTLED_WITHIN * Math.abs(previous);
}

/** Iterations per run for a message size under a profile. */
export function itersFor(profile: BenchProfile, bytes: number): number {
  return bytes >= profile.largeBytes ? profile.itersLarge : profile.itersSmall;
}

/** Warm-up iterations per run for a message size (never more than the timed ones). */
export function warmupFor(profile: BenchProfile, bytes: number): number {
  return Math.min(profile.warmupIters, itersFor(profile, bytes));
}

// ---- table ------------------------------------------------------------------------------

/** A value in human units: "0.18 µs", "13500 MB/s", "1.25 Mops/s". */
export function formatValue(metric: Metric, v: number, withUnit = true): string {
  let text: string;
  let unit: string;
  if (metric === "latency_us") {
    text = v.toFixed(2);
    unit = "µs";
  } else if (metric === "bandwidth_MBps") {
    text = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
    unit = "MB/s";
  } else if (metric !== "ops_per_s") {
    // A ratio (bench isolation and scale).
    text = v.toFixed(v >= 100 ? 0 : 3);
    unit = "×";
  } else {
    const m = v / 1e6;
    text = m >= 100 ? m.toFixed(0) : m >= 1 ? m.toFixed(2) : m.toFixed(3);
    unit = "Mops/s";
  }
  return withUnit ? `${text} ${unit}` : text;
}

export interface RenderOptions {
  /** Ratio columns [a, b] → "a/b" = median(a) / median(b) on the same line. */
  ratios?: readonly (readonly [string, string])[];
  /** Column order for transports (others follow in order of first appearance). */
  transports?: readonly string[];
  /** Show min–max under each median (default true). */
  showRange?: boolean;
  /** ANSI colours (default: when the terminal supports them). */
  color?: boolean;
  title?: string;
}

/** One line per (bench, scope, metric, bytes), one column per transport, plus ratio columns. */
export function renderTable(rows: readonly BenchRow[], opts: RenderOptions = {}): string {
  const color = opts.color ?? pc.isColorSupported;
  const c = pc.createColors(color);
  const showRange = opts.showRange ?? true;
  const ratios = opts.ratios ?? [];

  const transports: string[] = [...(opts.transports ?? [])].filter((t) =>
    rows.some((r) => r.transport === t),
  );
  for (const r of rows) if (!transports.includes(r.transport)) transports.push(r.transport);
  const multiScope = new Set(rows.map((r) => r.scope)).size > 1;

  // Group into lines, keeping groups in order of first appearance and sizes ascending.
  const groups = new Map<string, Map<number, Map<string, BenchRow>>>();
  const groupInfo = new Map<string, { bench: string; scope: Scope; metric: Metric }>();
  for (const r of rows) {
    const g = `${r.bench}\u0000${r.scope}\u0000${r.metric}`;
    let sizes = groups.get(g);
    if (!sizes) {
      sizes = new Map();
      groups.set(g, sizes);
      groupInfo.set(g, { bench: r.bench, scope: r.scope, metric: r.metric });
    }
    let cells = sizes.get(r.bytes);
    if (!cells) {
      cells = new Map();
      sizes.set(r.bytes, cells);
    }
    cells.set(r.transport, r);
  }

  const head = [
    "bench",
    ...(multiScope ? ["scope"] : []),
    "size",
    ...transports,
    ...ratios.map(([a, b]) => `${a}/${b}`),
  ];
  const table = new Table({
    head: head.map((h) => c.bold(h)),
    style: { head: [], border: [] },
    colAligns: head.map((_, i) => (i < (multiScope ? 3 : 2) ? "left" : "right")),
  });
  for (const [g, sizes] of groups) {
    const info = groupInfo.get(g)!;
    for (const bytes of [...sizes.keys()].sort((a, b) => a - b)) {
      const cells = sizes.get(bytes)!;
      const line: string[] = [info.bench, ...(multiScope ? [info.scope] : []), formatBytes(bytes)];
      for (const t of transports) {
        const r = cells.get(t);
        if (!r) {
          line.push(c.dim("—"));
          continue;
        }
        let cell = formatValue(r.metric, r.median);
        if (showRange && r.runs > 1) {
          cell += `\n${c.dim(`${formatValue(r.metric, r.min, false)}–${formatValue(r.metric, r.max, false)}`)}`;
        }
        line.push(cell);
      }
      for (const [a, b] of ratios) {
        const ra = cells.get(a);
        const rb = cells.get(b);
        line.push(ra && rb && rb.median !== 0 ? `${(ra.median / rb.median).toFixed(2)}×` : c.dim("—"));
      }
      table.push(line);
    }
  }
  const text = table.toString();
  return opts.title ? `${c.bold(opts.title)}\n${text}` : text;
}

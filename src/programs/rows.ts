/**
 * The project's benchmark row and report format (`--json FILE`), sample statistics, sizes and
 * the noise verdict: pure functions, with no Node module, so guest programs (OSU) build their
 * rows with the same code as the harness (harness.ts re-exports all of it).
 */
import type { MachineFacts } from "../host/machine.js";
import { formatBytes } from "../xen/units.js";

export type { MachineFacts };
export { formatBytes };

// ---- format -----------------------------------------------------------------------------

export type Metric =
  | "latency_us"
  | "bandwidth_MBps"
  | "ops_per_s"
  // bench isolation and scale (issue 16): ratios, unitless.
  | "latency_slowdown"
  | "latency_vs_solo"
  | "cap_accuracy"
  | "share_ratio"
  | "jain_index";
export type Scope = "intra-host" | "cross-host";

export const METRICS: readonly Metric[] = [
  "latency_us",
  "bandwidth_MBps",
  "ops_per_s",
  "latency_slowdown",
  "latency_vs_solo",
  "cap_accuracy",
  "share_ratio",
  "jain_index",
];
export const SCOPES: readonly Scope[] = ["intra-host", "cross-host"];
/** One line of `--json` output. Field names are a public interface: do not rename. */
export interface BenchRow {
  bench: string;
  transport: string;
  scope: Scope;
  bytes: number;
  metric: Metric;
  median: number;
  min: number;
  max: number;
  runs: number;
}

/** A machine as a benchmark report describes it: its facts, and whether it was too noisy to trust. */
export interface MachineInfo extends MachineFacts {
  /** Same as loadavgStart, when the run ended (set by finishMachineInfo). */
  loadavgEnd?: number[];
  /** Largest max/min spread over the rows (set by finishMachineInfo). */
  maxSpread?: number;
  noisy: boolean;
  noiseReason?: string;
}

export interface BenchReport {
  machine: MachineInfo;
  rows: BenchRow[];
  /**
   * How the run's peers ran, or why one was not measured (Open MPI's version, transport and
   * single-copy mechanism; "not found, install …"): the lines the terminal printed about them.
   */
  notes?: string[];
}

// ---- machine ----------------------------------------------------------------------------

/** A machine is noisy when its 1-minute load average at start exceeds this × cores. */
export const NOISY_LOAD_PER_CORE = 0.5;
/** …or when a row's max/min over repeated runs exceeds this. */
export const NOISY_SPREAD = 3;

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

/** A machine's facts at the start of a run, with the verdict of its load average. */
export function startMachineInfo(facts: MachineFacts): MachineInfo {
  const info: MachineInfo = { ...facts, loadavgStart: facts.loadavgStart.map(round2), noisy: false };
  const limit = NOISY_LOAD_PER_CORE * facts.cpus.count;
  if (info.loadavgStart[0] > limit) {
    info.noisy = true;
    info.noiseReason = `1-minute load average at start was ${info.loadavgStart[0]} (> ${limit} for ${facts.cpus.count} cores)`;
  }
  return info;
}

/** Spread of one row: max/min (Infinity when min is 0 and max is not). */
export function rowSpread(row: BenchRow): number {
  if (row.min > 0) return row.max / row.min;
  return row.max > 0 ? Number.POSITIVE_INFINITY : 1;
}

/**
 * Complete a MachineInfo at the end of a run: load average at end (when known), and the noise
 * verdict extended with the spread of repeated runs in `rows` (rows with at least 2 runs).
 */
export function endMachineInfo(
  info: MachineInfo,
  rows: readonly BenchRow[],
  loadavgEnd?: number[],
): MachineInfo {
  const out: MachineInfo = { ...info };
  if (loadavgEnd) out.loadavgEnd = loadavgEnd.map(round2);
  const reasons = info.noiseReason ? [info.noiseReason] : [];
  let worst: BenchRow | undefined;
  let worstSpread = 1;
  for (const row of rows) {
    if (row.runs < 2) continue;
    const s = rowSpread(row);
    if (s > worstSpread) {
      worstSpread = s;
      worst = row;
    }
  }
  if (rows.length > 0) out.maxSpread = Number.isFinite(worstSpread) ? round2(worstSpread) : worstSpread;
  if (worst && worstSpread > NOISY_SPREAD) {
    const s = Number.isFinite(worstSpread) ? `${round2(worstSpread)}×` : "unbounded";
    reasons.push(
      `runs spread ${s} (max/min > ${NOISY_SPREAD}) in ${worst.bench} ${worst.transport} ${formatBytes(worst.bytes)}`,
    );
  }
  out.noisy = reasons.length > 0;
  if (out.noisy) out.noiseReason = reasons.join("; ");
  else delete out.noiseReason;
  return out;
}

// ---- statistics -------------------------------------------------------------------------

export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number;
}

/** Median (mean of the middle two for even counts), min, max and count of samples. */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error("summarize: no samples");
  for (const s of samples) {
    if (typeof s !== "number" || !Number.isFinite(s)) throw new Error(`summarize: non-finite sample ${s}`);
  }
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const mid = n >> 1;
  const median = n % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { median, min: sorted[0], max: sorted[n - 1], runs: n };
}

export interface RowKey {
  bench: string;
  transport: string;
  bytes: number;
  metric: Metric;
  /** Defaults to "intra-host". */
  scope?: Scope;
}

/** Build a row from raw samples or an existing summary. */
export function makeRow(key: RowKey, samples: readonly number[] | Summary): BenchRow {
  const s = Array.isArray(samples) ? summarize(samples as readonly number[]) : (samples as Summary);
  const row: BenchRow = {
    bench: key.bench,
    transport: key.transport,
    scope: key.scope ?? "intra-host",
    bytes: key.bytes,
    metric: key.metric,
    median: s.median,
    min: s.min,
    max: s.max,
    runs: s.runs,
  };
  const problems = rowProblems(row, "row");
  if (problems.length > 0) throw new Error(`makeRow: ${problems.join("; ")}`);
  return row;
}

// ---- validation -------------------------------------------------------------------------

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function rowProblems(row: unknown, where: string): string[] {
  if (!isObject(row)) return [`${where}: not an object`];
  const p: string[] = [];
  for (const f of ["bench", "transport"]) {
    if (typeof row[f] !== "string" || row[f] === "") p.push(`${where}.${f}: expected a non-empty string`);
  }
  if (!SCOPES.includes(row.scope as Scope)) p.push(`${where}.scope: expected one of ${SCOPES.join(", ")}`);
  if (!METRICS.includes(row.metric as Metric))
    p.push(`${where}.metric: expected one of ${METRICS.join(", ")}`);
  if (!Number.isSafeInteger(row.bytes) || (row.bytes as number) < 0) {
    p.push(`${where}.bytes: expected a non-negative integer`);
  }
  if (!Number.isSafeInteger(row.runs) || (row.runs as number) < 1)
    p.push(`${where}.runs: expected a positive integer`);
  let numbersOk = true;
  for (const f of ["median", "min", "max"]) {
    if (typeof row[f] !== "number" || !Number.isFinite(row[f])) {
      p.push(`${where}.${f}: expected a finite number`);
      numbersOk = false;
    }
  }
  if (numbersOk) {
    const { min, median, max } = row as unknown as BenchRow;
    if (!(min <= median && median <= max)) p.push(`${where}: expected min <= median <= max`);
  }
  return p;
}

/** Every problem found in a would-be BenchReport (empty when valid). */
export function reportProblems(obj: unknown): string[] {
  if (!isObject(obj)) return ["report: not an object"];
  const p: string[] = [];
  if (!isObject(obj.machine)) p.push("machine: expected an object");
  else if (typeof obj.machine.noisy !== "boolean") p.push("machine.noisy: expected a boolean");
  if (obj.notes !== undefined && (!Array.isArray(obj.notes) || obj.notes.some((n) => typeof n !== "string")))
    p.push("notes: expected an array of strings");
  if (!Array.isArray(obj.rows)) p.push("rows: expected an array");
  else {
    obj.rows.forEach((r, i) => {
      p.push(...rowProblems(r, `rows[${i}]`));
    });
  }
  return p;
}

/** Check a parsed `--json` file against the row format; returns it typed, or throws listing the problems. */
export function validateReport(obj: unknown): BenchReport {
  const problems = reportProblems(obj);
  if (problems.length > 0) {
    const shown = problems.slice(0, 10).join("; ");
    const more = problems.length > 10 ? ` (and ${problems.length - 10} more)` : "";
    throw new Error(`invalid benchmark report: ${shown}${more}`);
  }
  return obj as BenchReport;
}

// ---- sizes ------------------------------------------------------------------------------

const SIZE_UNITS: Record<string, number> = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

/** Parse one size: a non-negative integer with an optional K, M or G suffix (powers of 1024). */
export function parseSize(text: string): number {
  const t = text.trim();
  const m = /^(\d+)\s*([KMG])?(?:i?B)?$/i.exec(t);
  if (!m) {
    throw new Error(
      `invalid size "${text}": expected a non-negative integer with an optional K, M or G suffix (e.g. 0, 8, 1K, 64K, 1M)`,
    );
  }
  const n = Number(m[1]) * SIZE_UNITS[(m[2] ?? "").toUpperCase()];
  if (!Number.isSafeInteger(n)) throw new Error(`invalid size "${text}": too large`);
  return n;
}

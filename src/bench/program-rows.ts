/**
 * Benchmark rows from what the built-in programs write with `--json FILE` (OSU: the row
 * format already; NAS: `{ kernel, class, ranks, path, verified, time_s, mops }`), and the
 * merging of repeated runs into rows of medians: what `myrixen start` and
 * `myrixen run osu-*|nas-* --out DIR` put in the report.
 */
import { readFileSync } from "node:fs";
import { type BenchRow, makeRow, type RowKey, type Scope, validateReport } from "./harness.js";

/** A NAS kernel's result file, as `nas-* --json FILE` writes it. */
export interface NasResult {
  kernel: string;
  class: string;
  ranks: number;
  path: string;
  verified: boolean;
  time_s: number;
  mops: number;
  /** The kernel's own values (IS and CG: warmup_iterations, warmup_s among them). */
  values?: Record<string, unknown>;
}

/** What a NAS result says about its untimed warm-up, as a report note (none when it has no warm-up values). */
export function nasWarmupNote(r: NasResult): string | undefined {
  const n = r.values?.warmup_iterations;
  const s = r.values?.warmup_s;
  if (typeof n !== "number" || typeof s !== "number") return undefined;
  const asked = r.values?.warmup;
  const how =
    asked === 1
      ? "--warmup 1: NPB's rule"
      : `--warmup ${typeof asked === "number" ? asked : "auto"}; --warmup 1 is NPB's rule`;
  return `${nasBench(r.kernel, r.class)}: MyriXen's timed loop followed ${n} untimed iteration${n === 1 ? "" : "s"} (${s.toFixed(2)} s, ${how}): V8 compiles the MPI runtime over its first thousands of calls`;
}

/** NPB names a run kernel.CLASS (ep.S): the bench of a NAS row is `nas-ep.S`. */
export function nasBench(kernel: string, cls: string): string {
  return `nas-${kernel.toLowerCase().replace(/^nas-/, "")}.${cls}`;
}

/** A NAS result as a row: its Mop/s total as ops_per_s at 0 bytes (one run). */
export function nasRow(r: NasResult, scope: Scope, transport = r.path): BenchRow {
  const rate = r.mops * 1e6;
  return makeRow({ bench: nasBench(r.kernel, r.class), transport, scope, bytes: 0, metric: "ops_per_s" }, [
    rate,
  ]);
}

function readJson(file: string): unknown {
  return JSON.parse(readFileSync(file, "utf8"));
}

/** Reads a NAS result file, checking the fields a row needs. */
export function readNasResult(file: string): NasResult {
  const r = readJson(file) as Partial<NasResult>;
  if (
    typeof r.kernel !== "string" ||
    typeof r.class !== "string" ||
    typeof r.verified !== "boolean" ||
    typeof r.mops !== "number" ||
    typeof r.time_s !== "number"
  )
    throw new Error(`${file}: not a NAS result (kernel, class, verified, time_s, mops)`);
  return r as NasResult;
}

/** Reads an OSU `--json` file's rows, giving them `scope` (a rank knows not where its peer runs). */
export function readOsuRows(file: string, scope: Scope): BenchRow[] {
  return validateReport(readJson(file)).rows.map((r) => ({ ...r, scope }));
}

/**
 * Collects one sample per run for each (bench, transport, scope, bytes, metric) and gives the
 * rows of their medians (min and max over the runs; `runs` = how many runs measured it).
 */
export class RunSamples {
  private readonly cells = new Map<string, { key: RowKey; values: number[] }>();

  /** Adds each row's median as one sample of its cell. */
  add(rows: readonly BenchRow[]): void {
    for (const r of rows) {
      const k = `${r.bench}\u0000${r.transport}\u0000${r.scope}\u0000${r.bytes}\u0000${r.metric}`;
      let cell = this.cells.get(k);
      if (!cell) {
        cell = {
          key: { bench: r.bench, transport: r.transport, scope: r.scope, bytes: r.bytes, metric: r.metric },
          values: [],
        };
        this.cells.set(k, cell);
      }
      cell.values.push(r.median);
    }
  }

  rows(): BenchRow[] {
    return [...this.cells.values()].map((c) => makeRow(c.key, c.values));
  }
}

/**
 * `myrixen run --out DIR` for the benchmark programs (osu-*, nas-*): the program writes its
 * rows with its own `--json FILE` (added here when the user gave none), and after the job
 * DIR/bench.json and DIR/bench.html (the same HTML report as `myrixen bench` and `myrixen
 * start`) are written, the rows' scope taken from where ranks 0 and 1 ran.
 */
import { randomUUID } from "node:crypto";
import { existsSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import {
  type BenchRow,
  finishMachineInfo,
  machineInfo,
  prepareOutputFile,
  type Scope,
  writeReport,
} from "../bench/harness.js";
import { type NasResult, nasRow, nasWarmupNote, readNasResult, readOsuRows } from "../bench/program-rows.js";
import { writeHtmlReport } from "../bench/report.js";
import type { JobResult } from "../cluster/job.js";
import { missingDirs, removeEmptyDirs, writeResultFiles } from "./report-files.js";

/** Raised for a --out the program cannot serve or a directory that cannot be written. */
export class RunReportUsageError extends Error {}

/** What `run --openmpi` measured beside the job: Open MPI's result, and the lines said about it. */
export interface OpenMpiPeerRun {
  result?: NasResult;
  notes: string[];
}

export interface RunReport {
  /** The program's arguments, with `--json FILE` added when the user gave none. */
  argv: string[];
  /** Writes the report from the job's result (and Open MPI's beside it); returns the lines to tell the user. */
  finish(result: JobResult, path: string, peer?: OpenMpiPeerRun): string[];
  /** Removes the temporary file (always call it). */
  cleanup(): void;
}

/**
 * Prepares `--out DIR` for `program`: refuses a program that writes no rows, checks DIR can be
 * written, and points the program's `--json` at a file this process reads afterwards.
 */
export function prepareRunReport(program: string, argv: readonly string[], outDir: string): RunReport {
  const kind = program.startsWith("osu-") ? "osu" : program.startsWith("nas-") ? "nas" : undefined;
  if (!kind)
    throw new RunReportUsageError(
      `--out writes the benchmark report of the osu-* and nas-* programs; ${program} writes no benchmark rows`,
    );
  // The directories made for it go again if the job ends without a report (cleanup).
  const created = missingDirs(outDir);
  try {
    prepareOutputFile(join(outDir, "bench.json"), "the benchmark report");
  } catch (e) {
    removeEmptyDirs(created);
    throw new RunReportUsageError((e as Error).message);
  }
  const machine = machineInfo();
  /** Rows in a --json file older than this are not this job's. */
  const preparedAt = Date.now();
  const given = argv.indexOf("--json");
  let tmp: string | undefined;
  let file: string;
  let args = [...argv];
  if (given >= 0 && argv[given + 1] !== undefined) file = resolve(argv[given + 1]);
  else {
    // Only a name until rank 0 writes it: nothing to clean up if the job never starts.
    tmp = join(tmpdir(), `myrixen-run-${process.pid}-${randomUUID()}.json`);
    file = tmp;
    args = [...argv, "--json", file];
  }
  return {
    argv: args,
    finish(result, path, peer) {
      // A failed job's rows (if any) are not a measurement; and a --json file the user named
      // may be an older run's: the report from either would replace a good one with them.
      if (result.exitCode !== 0)
        return [`--out: no report (the job failed); ${join(outDir, "bench.json")} is left as it was`];
      if (!existsSync(file) || statSync(file).mtimeMs < preparedAt - 2000)
        return [`--out: no rows came from rank 0 for ${file}: its program wrote no --json file`];
      // Where ranks 0 and 1 ran decides the scope (for NAS: any rank on another host).
      const hosts = new Set(result.ranks.map((r) => r.host));
      const rank0 = result.ranks.find((r) => r.rank === 0)?.host;
      const rank1 = result.ranks.find((r) => r.rank === 1)?.host;
      const scope: Scope = (kind === "osu" ? rank0 !== rank1 && rank1 !== undefined : hosts.size > 1)
        ? "cross-host"
        : "intra-host";
      const nas = kind === "nas" ? readNasResult(file) : undefined;
      const rows: BenchRow[] = nas ? [nasRow(nas, scope, path)] : readOsuRows(file, scope);
      if (peer?.result) rows.push(nasRow(peer.result, scope, "openmpi"));
      const warm = nas && nasWarmupNote(nas);
      const notes = [...(warm ? [warm] : []), ...(peer?.notes ?? [])];
      const report = {
        machine: finishMachineInfo(machine, rows),
        rows,
        ...(notes.length > 0 ? { notes } : {}),
      };
      // A report that cannot be written (a full disk) is a runtime failure saying where the rows are.
      const lines: string[] = [];
      writeResultFiles(
        "run",
        [
          (saved) => {
            writeReport(join(outDir, "bench.json"), report);
            saved(join(outDir, "bench.json"));
            writeHtmlReport(join(outDir, "bench.html"), report, { title: `MyriXen: ${program}` });
            lines.push(`report written to ${join(outDir, "bench.json")} and ${join(outDir, "bench.html")}`);
          },
        ],
        report,
      );
      return lines;
    },
    cleanup() {
      if (tmp) rmSync(tmp, { force: true });
      removeEmptyDirs(created);
    },
  };
}

/**
 * The files a benchmark command writes when it is done (`--json FILE`, `--out DIR`): the flags
 * checked before anything starts, the directories they made removed again when the command
 * ends without writing there, and at the end a file that cannot be written (a full disk,
 * /dev/full, a read-only mount) is an environment failure (RuntimeFailure: one line, exit
 * code 1) that says where the rows of the run are, so that minutes of measurement are not lost.
 */
import { rmdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BenchReport, missingDirs, writeReport } from "../bench/harness.js";
import { RuntimeFailure } from "./usage.js";

export { missingDirs };

/**
 * What is wrong with a file or directory flag's value (an empty `--json ""` would name the
 * working directory or nothing at all), or undefined.
 */
export function emptyPathProblem(
  flag: string,
  value: string | undefined,
  what: "FILE" | "DIR",
): string | undefined {
  if (value === undefined || value.trim() !== "") return undefined;
  return `${flag} needs a ${what === "FILE" ? "file name" : "directory"}, got an empty one: write ${flag} ${what}`;
}

/** Removes those of `dirs` (as missingDirs listed them) that are still empty, innermost first. */
export function removeEmptyDirs(dirs: readonly string[]): void {
  for (const d of [...dirs].reverse()) {
    try {
      rmdirSync(d);
    } catch {
      // Not empty (something was written there) or already gone: left as it is.
    }
  }
}

/**
 * Runs `work`; if Ctrl-C (SIGINT) or SIGTERM ends the command meanwhile, `cleanup` runs first
 * (the directories the command made and wrote nothing in go, and its scratch files), one line
 * says so, and the process ends as a shell expects of a signal (exit 130 or 143). Without
 * this, an interrupted benchmark left an empty reports/bench-<time>/ behind.
 */
export async function interruptible<T>(
  command: string,
  err: (line: string) => void,
  cleanup: () => void,
  work: () => Promise<T>,
): Promise<T> {
  const onSignal = (signal: NodeJS.Signals) => {
    try {
      cleanup();
    } finally {
      err(`myrixen ${command}: interrupted (${signal}); nothing written`);
      process.exit(signal === "SIGINT" ? 130 : 143);
    }
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    return await work();
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** A failure to write a result file (its message starts "cannot write ..."), not a bug. */
function isWriteFailure(e: unknown): e is Error {
  return e instanceof Error && /^cannot write /.test(e.message);
}

/**
 * Writes one file (or a report's files) at a command's end, and says so; calls `saved` with
 * the file that holds the rows once it is written.
 */
export type ResultFile = (saved: (rowsAt: string) => void) => void;

/**
 * A benchmark command's result files: `--json FILE` (the rows; `json.shown` is the name as the
 * user gave it) and `--out DIR` (bench.json, and the HTML report `writeHtml` makes, if it makes
 * one: it returns the file it wrote). Each says where it went through `say`.
 */
export function benchResultFiles(
  report: BenchReport,
  json: { path: string; shown: string } | undefined,
  outDir: string | undefined,
  writeHtml: (file: string) => string | undefined,
  say: (line: string) => void,
): ResultFile[] {
  const files: ResultFile[] = [];
  if (json)
    files.push((saved) => {
      writeReport(json.path, report);
      saved(json.shown);
      say(`rows written to ${json.shown}`);
    });
  if (outDir)
    files.push((saved) => {
      const rows = join(outDir, "bench.json");
      writeReport(rows, report);
      saved(rows);
      const html = writeHtml(join(outDir, "bench.html"));
      say(`report written to ${rows}${html ? ` and ${html}` : ""}`);
    });
  return files;
}

/**
 * Writes every file in order, each whatever became of the others; throws RuntimeFailure
 * naming each that could not be written and where the rows are: in a file that was written,
 * else in a copy saved in the temporary directory.
 */
export function writeResultFiles(command: string, files: readonly ResultFile[], report: unknown): void {
  const failed: string[] = [];
  let rowsAt: string | undefined;
  for (const f of files) {
    try {
      f((at) => {
        rowsAt ??= at;
      });
    } catch (e) {
      if (!isWriteFailure(e)) throw e;
      failed.push(e.message.replace(/\s+/g, " "));
    }
  }
  if (failed.length === 0) return;
  let where: string;
  if (rowsAt !== undefined) where = `the rows are in ${rowsAt}`;
  else {
    const copy = join(tmpdir(), `myrixen-${command}-rows-${process.pid}-${Date.now()}.json`);
    try {
      writeFileSync(copy, `${JSON.stringify(report, null, 2)}\n`);
      where = `the rows are saved in ${copy} instead`;
    } catch (e) {
      where = `the rows could not be saved in ${copy} either (${(e as Error).message})`;
    }
  }
  throw new RuntimeFailure(`${failed.join("; ")}; ${where}`, command);
}

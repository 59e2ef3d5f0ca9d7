/**
 * What PROGRAM on a `myrixen run` command line means: a built-in program's name, or a path
 * (or file: URL) to a TypeScript/JavaScript module whose default export is main(guest). The
 * launcher and every host resolve it the same way (a remote host resolves it on its own
 * file system, as MPI launchers expect the program to be at the same path on every node).
 */
import { existsSync, readdirSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** Built-in programs, by the name `myrixen run` takes (paths relative to this file). */
export const BUILTIN_PROGRAMS: Record<string, string> = {
  "nas-ep": "../programs/nas/ep.js",
  "nas-is": "../programs/nas/is.js",
  "nas-cg": "../programs/nas/cg.js",
  "osu-latency": "../programs/osu/latency.js",
  "osu-bw": "../programs/osu/bw.js",
  "osu-bibw": "../programs/osu/bibw.js",
  "osu-allreduce": "../programs/osu/allreduce.js",
};

export class ProgramError extends Error {}

/** What a guest program's file may be: TypeScript or JavaScript, as the guest runtime loads them. */
export const PROGRAM_EXTENSIONS = /\.(ts|mts|cts|tsx|js|mjs|cjs)$/;

/** Edit distance (insertions, deletions, substitutions) between two short strings. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length];
}

/** The candidate nearest to `name` if it is near enough to be a typo of it. */
export function closest(name: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = distance(name.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/** Program files in a directory (for "did you mean"). */
function siblings(dir: string): string[] {
  try {
    return readdirSync(dir).filter((f) => PROGRAM_EXTENSIONS.test(f));
  } catch {
    return [];
  }
}

function checkModule(path: string, program: string): void {
  if (!PROGRAM_EXTENSIONS.test(path))
    throw new ProgramError(
      `"${program}" is not a program: give a built-in name (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) ` +
        "or a TypeScript or JavaScript module (.ts, .mts, .js, .mjs) whose default export is main(guest)",
    );
}

/** PROGRAM as a module URL on this machine: a built-in name, a path, or a file: URL. */
export function resolveProgram(program: string | URL): URL {
  if (program instanceof URL) {
    if (program.protocol === "file:" && !existsSync(program))
      throw new ProgramError(`no program ${fileURLToPath(program)}`);
    if (program.protocol === "file:") checkModule(program.pathname, fileURLToPath(program));
    return program;
  }
  const builtin = BUILTIN_PROGRAMS[program];
  if (builtin) {
    const url = new URL(builtin, import.meta.url);
    if (!existsSync(url))
      throw new ProgramError(`built-in program ${program} is not available in this build`);
    return url;
  }
  if (program.startsWith("file:")) return resolveProgram(new URL(program));
  const path = resolve(program);
  if (!existsSync(path)) {
    const names = Object.keys(BUILTIN_PROGRAMS);
    const looksLikeFile = /[/\\]/.test(program) || PROGRAM_EXTENSIONS.test(program);
    if (looksLikeFile) {
      const near = closest(basename(program), siblings(dirname(path)));
      throw new ProgramError(
        `no such file ${program}${near ? ` (did you mean ${join(dirname(program), near)}?)` : ""}`,
      );
    }
    const near = closest(program, names);
    throw new ProgramError(
      `no program "${program}"${near ? ` (did you mean ${near}?)` : ""}: give a built-in name (${names.join(", ")}) or a path to a module`,
    );
  }
  checkModule(path, program);
  return pathToFileURL(path);
}

/**
 * PROGRAM as the launcher sends it to remote hosts: a built-in name as is, a path made
 * absolute against the launcher's working directory (each host resolves it on its side).
 */
export function programForHosts(program: string | URL): string {
  if (program instanceof URL) return program.href;
  if (BUILTIN_PROGRAMS[program] || program.startsWith("file:")) return program;
  return isAbsolute(program) ? program : resolve(program);
}

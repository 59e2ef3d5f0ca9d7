/**
 * `myrixen run -n N [--path native|bypass] PROGRAM [ARGS...]`: starts a host on this machine
 * (the embedded default), runs N ranks of PROGRAM on it, forwards their output with rank
 * prefixes, and returns the first non-zero exit code. Ctrl-C stops the whole job cleanly.
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Job } from "../cluster/job.js";
import { Host } from "../host/host.js";

/** Built-in programs, by the name `myrixen run` takes. */
export const BUILTIN_PROGRAMS: Record<string, string> = {
  "nas-ep": "../programs/nas/ep.js",
  "nas-is": "../programs/nas/is.js",
  "nas-cg": "../programs/nas/cg.js",
  "osu-latency": "../programs/osu/latency.js",
  "osu-bw": "../programs/osu/bw.js",
  "osu-bibw": "../programs/osu/bibw.js",
  "osu-allreduce": "../programs/osu/allreduce.js",
};

export const RUN_PATHS = ["native", "bypass"] as const;

export class RunUsageError extends Error {}

/** PROGRAM as a module URL: a built-in name, or a path to a .js/.mjs/.ts module. */
export function resolveProgram(program: string): URL {
  const builtin = BUILTIN_PROGRAMS[program];
  if (builtin) {
    const url = new URL(builtin, import.meta.url);
    if (!existsSync(url))
      throw new RunUsageError(`built-in program ${program} is not available in this build`);
    return url;
  }
  const path = resolve(program);
  if (!existsSync(path))
    throw new RunUsageError(
      `no program "${program}": give a built-in name (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or a path to a module`,
    );
  return pathToFileURL(path);
}

export interface RunOptions {
  n: number;
  path: string;
  pages?: number;
}

export async function runCommand(program: string, argv: string[], o: RunOptions): Promise<number> {
  if (!RUN_PATHS.includes(o.path as (typeof RUN_PATHS)[number]))
    throw new RunUsageError(
      o.path === "split"
        ? "--path split is not available yet (the split-driver path is being built); use native or bypass"
        : `--path must be one of ${RUN_PATHS.join(", ")}, got "${o.path}"`,
    );
  const url = resolveProgram(program);
  const host = await Host.start({});
  const job = new Job(host, {
    n: o.n,
    path: o.path as "native" | "bypass",
    program: url,
    argv,
    pages: o.pages,
  });
  const onSignal = () => {
    process.stderr.write("\nmyrixen run: stopping the job\n");
    void job.stop();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const r = await job.run();
    if (r.failed) {
      const f = r.failed;
      process.stderr.write(
        `myrixen run: rank ${f.rank} ${f.state === "shutdown" ? `exited with code ${f.exitCode}` : f.state}` +
          `${f.error ? `: ${f.error.message}` : ""}; the other ranks were stopped\n`,
      );
    }
    return r.exitCode;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await host.stop();
  }
}

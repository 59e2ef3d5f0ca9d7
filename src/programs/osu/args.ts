/**
 * The OSU programs' arguments (`-m [MIN:]MAX`, `-i ITERS`, `-x SKIP`, `--jit-warmup N`, `--json FILE`) and their
 * default sizes: a module without MPI, so the launcher (cli/run.ts) checks a job's arguments
 * with the very parser its ranks use without loading the MX and MPI runtime.
 */
import { parseSize } from "../rows.js";

/** Each built-in OSU benchmark's default message sizes (OSU's own), by the name `myrixen run` takes. */
export const OSU_SIZES = {
  "osu-latency": { min: 0, max: 1 << 22 },
  "osu-bw": { min: 1, max: 1 << 22 },
  "osu-bibw": { min: 1, max: 1 << 22 },
  "osu-allreduce": { min: 1, max: 1 << 20 },
} as const;
export interface OsuOptions {
  min: number;
  max: number;
  iters?: number;
  skip?: number;
  /** Untimed iterations before the sweep, at its first size (V8's JIT warm-up; 0: none). */
  jitWarmup?: number;
  json?: string;
}

/** The OSU program `bench`'s usage line (its errors and `myrixen run … --help` say it). */
export function osuUsage(bench: string): string {
  return `usage: ${bench} [-m [MIN:]MAX] [-i ITERS] [-x SKIP] [--jit-warmup N] [--json FILE]`;
}

/** Parses the OSU-style arguments; throws a clear Error on anything it does not know. */
export function parseOsuArgs(
  bench: string,
  argv: readonly string[],
  defaults: { min: number; max: number },
): OsuOptions {
  const o: OsuOptions = { ...defaults };
  const usage = osuUsage(bench);
  const count = (flag: string, v: string, least: number): number => {
    if (!/^\d+$/.test(v) || Number(v) < least)
      throw new Error(`${bench}: ${flag} expects an integer >= ${least}, got "${v}"`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (["-m", "-i", "-x", "--jit-warmup", "--json"].includes(a) && v === undefined)
      throw new Error(`${bench}: ${a} needs a value (${usage})`);
    if (a === "-m" || a === "--message-size") {
      i++;
      try {
        const parts = v.split(":");
        if (parts.length > 2) throw new Error("too many ':'");
        if (parts.length === 2) {
          if (parts[0] !== "") o.min = parseSize(parts[0]);
          if (parts[1] !== "") o.max = parseSize(parts[1]);
        } else o.max = parseSize(parts[0]);
      } catch (e) {
        throw new Error(`${bench}: bad -m "${v}": ${e instanceof Error ? e.message : String(e)}`);
      }
      if (o.min > o.max) throw new Error(`${bench}: -m: minimum ${o.min} is larger than maximum ${o.max}`);
    } else if (a === "-i" || a === "--iterations") {
      o.iters = count(a, argv[++i], 1);
    } else if (a === "-x" || a === "--warmup") {
      o.skip = count(a, argv[++i], 0);
    } else if (a === "--jit-warmup") {
      o.jitWarmup = count(a, argv[++i], 0);
    } else if (a === "--json") {
      o.json = argv[++i];
    } else {
      throw new Error(`${bench}: unknown argument "${a}" (${usage})`);
    }
  }
  return o;
}

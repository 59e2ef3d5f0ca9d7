/**
 * The NAS kernels' arguments (`--class S|W|A`, `--warmup auto|N`, `--json FILE`): a module
 * without MPI, so the launcher (cli/run.ts) checks a job's arguments with the very parser its
 * ranks use without loading the MX and MPI runtime.
 */

export const CLASSES = ["S", "W", "A"] as const;
export type NasClass = (typeof CLASSES)[number];

/** The most untimed iterations `--warmup N` takes. */
export const MAX_WARMUP = 1000;
/** `--warmup`: a number of untimed iterations (1 is NPB's rule), or "auto" (warmUp). */
export type Warmup = number | "auto";

/** The kernels with an iteration loop to warm up (EP times one pass over its pairs). */
const WARMS_UP: readonly string[] = ["is", "cg"];

/** Whether `kernel` ("is", "cg", "ep") takes `--warmup`. */
export function nasWarmsUp(kernel: string): boolean {
  return WARMS_UP.includes(kernel);
}

/** The NAS kernel's usage (its errors and `myrixen run … --help` say it). */
export function nasUsage(kernel: string): string {
  return `${kernel} [--class S|W|A]${nasWarmsUp(kernel) ? " [--warmup auto|N]" : ""} [--json FILE]`;
}

/**
 * Parses `--class S|W|A` (default S), `--warmup auto|N` (IS and CG; default auto) and
 * `--json FILE`; throws a clear Error on anything else.
 */
export function parseNasArgs(
  kernel: string,
  argv: readonly string[],
): { cls: NasClass; json?: string; warmup?: Warmup } {
  let cls: NasClass = "S";
  let json: string | undefined;
  const warms = nasWarmsUp(kernel);
  let warmup: Warmup | undefined = warms ? "auto" : undefined;
  const usage = nasUsage(kernel);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${kernel}: ${a} needs a value`);
      return v;
    };
    if (a === "--class" || a === "-c") {
      const v = value().toUpperCase();
      if (!(CLASSES as readonly string[]).includes(v))
        throw new Error(`${kernel}: unknown class "${argv[i]}" (expected one of ${CLASSES.join(", ")})`);
      cls = v as NasClass;
    } else if (a === "--json") {
      json = value();
    } else if (a === "--warmup" && warms) {
      const v = value();
      const n = Number(v);
      if (v === "auto") warmup = "auto";
      else if (/^[0-9]+$/.test(v) && n >= 1 && n <= MAX_WARMUP) warmup = n;
      else
        throw new Error(
          `${kernel}: --warmup takes "auto" or a whole number of untimed iterations from 1 to ${MAX_WARMUP} (1 is NPB's rule), got "${v}"`,
        );
    } else if (a === "--warmup") {
      throw new Error(`${kernel}: --warmup does not apply: ${kernel} has no iteration loop to warm up`);
    } else {
      throw new Error(`${kernel}: unknown argument "${a}" (usage: ${usage})`);
    }
  }
  return warms ? { cls, json, warmup } : { cls, json };
}

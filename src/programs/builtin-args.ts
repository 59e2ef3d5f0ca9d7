/**
 * The built-in programs' arguments, checked where a job is launched (cli/run.ts) with the very
 * parsers their ranks use: a mistake (`nas-ep --class Z`) is one line before any rank starts,
 * not rank 0's complaint after the job did.
 */
import { MAX_WARMUP, nasUsage, nasWarmsUp, parseNasArgs } from "./nas/args.js";
import { OSU_SIZES, osuUsage, parseOsuArgs } from "./osu/args.js";

/** What is wrong with `argv` for the built-in `program` (a name BUILTIN_PROGRAMS knows), or undefined. */
export function builtinArgsProblem(program: string, argv: readonly string[]): string | undefined {
  try {
    if (program.startsWith("nas-")) parseNasArgs(program.slice("nas-".length), argv);
    else if (Object.hasOwn(OSU_SIZES, program))
      parseOsuArgs(program, argv, OSU_SIZES[program as keyof typeof OSU_SIZES]);
    return undefined;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/** `-h`/`--help` among a built-in's arguments: `myrixen run` prints builtinHelp and starts nothing. */
export function asksForHelp(argv: readonly string[]): boolean {
  return argv.includes("-h") || argv.includes("--help");
}

/** What the built-in `program` takes, for `myrixen run -n N PROGRAM --help`. */
export function builtinHelp(program: string): string {
  if (program.startsWith("nas-")) {
    const kernel = program.slice("nas-".length);
    const warms = nasWarmsUp(kernel);
    return [
      `usage: nas-${nasUsage(kernel)}`,
      "  --class S|W|A     NPB's problem class (default S); the report checks NPB 3.4's values",
      ...(warms
        ? [
            `  --warmup auto|N   untimed iterations before the timed loop: auto (default: 2 s or four`,
            `                    passes, V8's JIT), or 1..${MAX_WARMUP} (1 is NPB's rule)`,
          ]
        : []),
      "  --json FILE       also write { kernel, class, ranks, path, verified, time_s, mops, values }",
      "",
    ].join("\n");
  }
  const { min, max } = OSU_SIZES[program as keyof typeof OSU_SIZES];
  return [
    osuUsage(program),
    `  -m [MIN:]MAX      message sizes, doubling from MIN (default ${min}:${max}; K, M suffixes)`,
    "  -i ITERS          timed iterations per size (OSU's defaults: more for small sizes)",
    "  -x SKIP           untimed iterations before each size (--warmup too, as in OSU)",
    "  --jit-warmup N    untimed iterations at the first size before the sweep, for V8's JIT",
    "                    (default 20,000, or 300 windows, at most 0.5 s; 0: OSU's method exactly)",
    "  --json FILE       also write every row as JSON ({ machine, rows })",
    "",
  ].join("\n");
}

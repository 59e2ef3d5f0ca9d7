/**
 * The built-in programs' arguments, checked where a job is launched (cli/run.ts) with the very
 * parsers their ranks use: a mistake (`nas-ep --class Z`) is one line before any rank starts,
 * not rank 0's complaint after the job did.
 */
import { parseNasArgs } from "./nas/args.js";
import { OSU_SIZES, parseOsuArgs } from "./osu/args.js";

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

/**
 * What main.ts needs to define the commands and report their misuse without loading them:
 * each command's usage error (main prints it as one line, exit code 2) and the constants its
 * help names. A leaf module: `myrixen --help`, `--version` and a bad flag load nothing else
 * of the project (each command's modules load when it runs).
 */

/** Bad usage of `myrixen bench` (a suite, size, transport or scope it does not know). */
export class BenchUsageError extends Error {}

/** Bad usage of `myrixen run` (found after parsing: the program, the hosts, the mapping). */
export class RunUsageError extends Error {}

/** Bad usage of `myrixen start`. */
export class StartUsageError extends Error {}

/** Bad usage of the toolstack commands (list, info, xenstore-ls, endpoints, top, dashboard). */
export class ToolstackUsageError extends Error {
  constructor(
    message: string,
    /** The command ("top"), when named at the start of the line. */
    readonly command?: string,
  ) {
    super(message);
  }
}

/**
 * A failure of the environment, not of myrixen (a port in use, a name that does not resolve):
 * main prints its one line, naming `command`, and exits 1 — never "a bug in myrixen".
 */
export class RuntimeFailure extends Error {
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message);
  }
}

/** The exit code of a job --timeout ended (as timeout(1) and Slurm's TIMEOUT tell it apart from a crash). */
export const TIMEOUT_EXIT_CODE = 124;

/** `myrixen start`'s runs per cell by default: the median of 3 survives one disturbed run. */
export const DEFAULT_RUNS = 3;
/** The most runs per cell `myrixen start --runs` takes. */
export const MAX_RUNS = 25;

/**
 * `myrixen exec SCRIPT [ARGS...]`: runs a host script — a TypeScript or JavaScript module that
 * uses the library's host API (Host, Hypervisor, Job) — in this process, so a user needs no
 * TypeScript tool of their own. TypeScript goes through tsx (a dependency of the package),
 * scoped to the script's own import graph; `import ... from "myrixen"` resolves to the
 * package the script's folder sees (node_modules/myrixen, or this repository for its examples).
 * The script sees `process.argv` as `node SCRIPT ARGS...`; its exit code is process.exitCode.
 */
import { existsSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { Command } from "commander";

const SCRIPT = /\.(ts|mts|cts|js|mjs|cjs)$/;
const TYPESCRIPT = /\.(ts|mts|cts)$/;

/** Why `script` cannot run (one line), or undefined when it is a module file. */
export function execScriptProblem(script: string): string | undefined {
  const path = resolve(script);
  if (!existsSync(path)) return `no script ${script}`;
  if (!statSync(path).isFile()) return `${script} is not a file`;
  if (!SCRIPT.test(path))
    return `${script} is not a script: give a TypeScript or JavaScript module (.ts, .mts, .js, .mjs)`;
  return undefined;
}

/** Registers `myrixen exec` on `cmd` (from main.ts: `configureExecCommand(program.command("exec"))`). */
export function configureExecCommand(cmd: Command): Command {
  return cmd
    .description("run a host script (TypeScript or JavaScript) that starts guests with the myrixen API")
    .argument("<script>", "a .ts, .mts, .js or .mjs module; it runs in this process")
    .argument("[args...]", "the script's own arguments (process.argv.slice(2))")
    .passThroughOptions()
    .action(async (script: string, args: string[]) => {
      const problem = execScriptProblem(script);
      if (problem) {
        process.stderr.write(`myrixen exec: ${problem}\n`);
        process.exitCode = 2;
        return;
      }
      const path = resolve(script);
      const url = pathToFileURL(path).href;
      process.argv = [process.argv[0], path, ...args];
      try {
        if (TYPESCRIPT.test(path)) {
          const { tsImport } = await import("tsx/esm/api");
          await tsImport(url, import.meta.url);
        } else {
          await import(url);
        }
      } catch (e) {
        // The script's own error, with its stack (tsx maps TypeScript lines): what `node` prints.
        process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
        process.exitCode = 1;
      }
    });
}

/**
 * `myrixen exec SCRIPT [ARGS...]`: runs a host script — a TypeScript or JavaScript module that
 * uses the library's host API (Host, Hypervisor, Job) — in this process, so a user needs no
 * TypeScript tool of their own. TypeScript goes through tsx (a dependency of the package),
 * scoped to the script's own import graph; `import ... from "myrixen"` resolves to the
 * package the script's folder sees (node_modules/myrixen, or this repository for its examples).
 * The script sees `process.argv` as `node SCRIPT ARGS...`; its exit code is process.exitCode.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
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

/** esbuild's words when a .ts file that Node's rules make CommonJS uses top-level await. */
const CJS_TOP_LEVEL_AWAIT = /Top-level await is currently not supported with the "cjs" output format/;

/**
 * Why a TypeScript script with top-level await cannot run, in one line: Node's rules (and so
 * tsx's) make a .ts file CommonJS unless the nearest package.json says "type": "module" — and
 * `npm init` writes "type": "commonjs". The host scripts of the README use top-level await.
 */
export function topLevelAwaitProblem(script: string): string {
  const path = resolve(script);
  const name = basename(path);
  const mts = name.replace(/\.ts$/, ".mts");
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      let type: unknown;
      try {
        type = (JSON.parse(readFileSync(pkg, "utf8")) as { type?: unknown }).type;
      } catch {
        type = undefined;
      }
      const says = typeof type === "string" ? `"type": ${JSON.stringify(type)}` : 'no "type"';
      return `${script} uses top-level await, which needs an ES module, but ${pkg} (${says}) makes .ts files CommonJS: set "type": "module" there (npm pkg set type=module) or rename the script ${mts}`;
    }
    if (dirname(dir) === dir)
      return `${script} uses top-level await, which needs an ES module, but no package.json above it says "type": "module", so .ts files are CommonJS: add one that does (npm init -y && npm pkg set type=module) or rename the script ${mts}`;
  }
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
        if (e instanceof Error && TYPESCRIPT.test(path) && CJS_TOP_LEVEL_AWAIT.test(e.message)) {
          process.stderr.write(`myrixen exec: ${topLevelAwaitProblem(script)}\n`);
          process.exitCode = 1;
          return;
        }
        // The script's own error, with its stack (tsx maps TypeScript lines): what `node` prints.
        process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
        process.exitCode = 1;
      }
    });
}

/**
 * `myrixen exec SCRIPT [ARGS...]`: runs a host script — a TypeScript or JavaScript module that
 * uses the library's host API (Host, Hypervisor, Job) — in this process, so a user needs no
 * TypeScript tool of their own. TypeScript goes through tsx (a dependency of the package),
 * scoped to the script's own import graph: an ES module through tsx's import, a CommonJS one
 * (a .cts, or a .ts where Node's rules say CommonJS) through tsx's require, whose stack frames
 * are the file's own lines (tsx's import of it would run it as a data: URL of compiled code).
 * `import ... from "myrixen"` resolves to the package the script's folder sees
 * (node_modules/myrixen, or this repository for its examples). The script sees `process.argv`
 * as `node SCRIPT ARGS...`; its exit code is process.exitCode.
 *
 * A script that does not compile is one line, `file:line:col: message`; an error it throws
 * (or leaves uncaught, or a promise it leaves rejected) is its message and the frames of the
 * user's own files, as paths — not those of node:, node_modules (tsx, esbuild, commander) or
 * myrixen's own dist/ (MYRIXEN_DEBUG=1 prints the whole stack). Exit code 1 either way.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { inspect } from "node:util";
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

/** Whether Node (and so tsx) takes the TypeScript file at `path` for CommonJS: .cts, or a .ts whose package scope is not "type": "module". */
function commonJsTypeScript(path: string): boolean {
  if (path.endsWith(".cts")) return true;
  if (!path.endsWith(".ts")) return false;
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        return (JSON.parse(readFileSync(pkg, "utf8")) as { type?: unknown }).type !== "module";
      } catch {
        return true;
      }
    }
    if (dirname(dir) === dir) return true;
  }
}

/** This package's root: frames in its dist/ are myrixen's own, not the user's. */
const PACKAGE_DIST = join(fileURLToPath(new URL("../../../", import.meta.url)), "dist") + sep;

/** A path as the user reads it: relative to the working directory when under it. */
function readablePath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path;
}

/** file: URLs (and tsx's data: URLs of compiled CommonJS, `...?filePath=F`) in `text` as paths. */
function withPaths(text: string): string {
  return text
    .replace(/data:text\/javascript,\S*?\?filePath=([^:\s)]+)/g, (_, f: string) => {
      const file = decodeURIComponent(f).replace(/\?.*$/, "");
      return readablePath(file);
    })
    .replace(/file:\/\/[^\s):]+/g, (u) => {
      try {
        return readablePath(fileURLToPath(u));
      } catch {
        return u;
      }
    });
}

/** The file of a stack frame's location, or undefined for node:, native and <anonymous> frames. */
function frameFile(frame: string): string | undefined {
  const loc = /\(([^()]*)\)$/.exec(frame)?.[1] ?? /^\s*at (?:async )?(\S+)$/.exec(frame)?.[1];
  if (!loc) return undefined;
  const file = loc.replace(/:\d+:\d+$/, "");
  if (file.startsWith("file://"))
    try {
      return fileURLToPath(file);
    } catch {
      return undefined;
    }
  return isAbsolute(file) ? file : undefined;
}

/** Whether a stack frame is the user's own code (not Node's, a package's or myrixen's). */
function userFrame(frame: string): boolean {
  const file = frameFile(frame);
  return (
    file !== undefined && !file.split(/[\\/]/).includes("node_modules") && !file.startsWith(PACKAGE_DIST)
  );
}

/** A user's frame with its file as a readable path (relative to the working directory when under it). */
function readableFrame(frame: string): string {
  const file = frameFile(frame);
  if (file === undefined) return frame;
  return frame.replace(
    /(\(|at (?:async )?)((?:file:\/\/)?[^()\s]+?)(:\d+:\d+\)?)$/,
    (_, pre: string, _f, pos: string) => `${pre}${readablePath(file)}${pos}`,
  );
}

/** Whether frame `a` is at the same file and line as `b`. */
function sameLine(a: string | undefined, b: string): boolean {
  const at = (f: string) => /\(([^()]*):\d+\)$/.exec(f)?.[1];
  return a !== undefined && at(a) !== undefined && at(a) === at(b);
}

/** `file:line:col: message` of a syntax error, from esbuild (tsx's transform) or V8; undefined if `e` is none. */
async function syntaxErrorLine(e: unknown, path: string): Promise<string | undefined> {
  if (!(e instanceof Error)) return undefined;
  // esbuild's, through tsx: "Transform failed with N error(s):\nFILE:LINE:COL: ERROR: TEXT" (COL from 0).
  const esb = /^Transform failed with (\d+) errors?:\n(.+?):(\d+):(\d+): ERROR: (.*)$/m.exec(e.message);
  if (esb) {
    const more = Number(esb[1]) - 1;
    return `${readablePath(esb[2])}:${esb[3]}:${Number(esb[4]) + 1}: ${esb[5]}${more > 0 ? ` (and ${more} more error${more === 1 ? "" : "s"})` : ""}`;
  }
  if (e.name !== "SyntaxError") return undefined;
  // V8's, where Node marked the place: "FILE:LINE\nSOURCE LINE\n   ^^^\n...SyntaxError: ...".
  const marked = /^(.+):(\d+)\n.*\n( *)\^+\n/.exec(e.stack ?? "");
  if (marked)
    return `${readablePath(marked[1].startsWith("file:") ? fileURLToPath(marked[1]) : marked[1])}:${marked[2]}:${marked[3].length + 1}: ${e.message}`;
  // Thrown while the script ran (JSON.parse of bad text): its frames say where; not a compile error.
  if ((e.stack ?? "").split("\n").some((l) => /^\s+at /.test(l) && userFrame(l))) return undefined;
  // An ES module V8 would not parse says not where: esbuild finds the place in the script's files.
  try {
    const { build } = await import("esbuild");
    await build({
      entryPoints: [path],
      bundle: true,
      write: false,
      packages: "external",
      platform: "node",
      format: "esm",
      logLevel: "silent",
    });
  } catch (b) {
    const first = (
      b as { errors?: { text: string; location?: { file: string; line: number; column: number } | null }[] }
    ).errors?.[0];
    if (first?.location)
      return `${readablePath(resolve(first.location.file))}:${first.location.line}:${first.location.column + 1}: ${first.text}`;
    return `${readablePath(path)}: ${e.message}`;
  }
  // The script's files compile: the error came while it ran.
  return undefined;
}

/**
 * What a host script's uncaught error prints: its name and message, then the user's frames,
 * then its `cause` (and the cause's), each indented under `[cause]:` as Node prints them.
 */
function scriptErrorText(e: unknown): string {
  if (!(e instanceof Error)) return `Uncaught ${typeof e === "string" ? JSON.stringify(e) : String(e)}`;
  try {
    if (process.env.MYRIXEN_DEBUG) return inspect(e);
    return errorText(e, new Set());
  } catch {
    // Its stack or name a getter that throws, or a proxy: say what can be said.
    return "Uncaught error (it cannot be shown: a getter or a proxy of it throws)";
  }
}

/** Causes shown at most (a chain longer than this ends in "…"). */
const MAX_CAUSES = 8;

function errorText(e: Error, seen: Set<unknown>): string {
  seen.add(e);
  const stack = typeof e.stack === "string" ? e.stack : `${e.name}: ${e.message}`;
  const lines = stack.split("\n");
  const firstFrame = lines.findIndex((l) => /^\s+at /.test(l));
  const head = firstFrame < 0 ? lines : lines.slice(0, firstFrame);
  const frames = (firstFrame < 0 ? [] : lines.slice(firstFrame))
    .filter((l) => /^\s+at /.test(l) && userFrame(l))
    .map(readableFrame)
    // tsx's CommonJS wrapper: `at <anonymous> (F:L:C)` then `at Object.<anonymous> (F:L:C')`, one place.
    .filter((l, i, all) => !(/^\s+at Object\.<anonymous> \(/.test(l) && sameLine(all[i - 1], l)));
  return [...head.map(withPaths), ...frames].join("\n") + causeText(e, seen);
}

/** `e`'s cause, indented under `[cause]:` (nothing if it has none). */
function causeText(e: Error, seen: Set<unknown>): string {
  let body: string;
  try {
    if (!("cause" in e) || e.cause === undefined) return "";
    const c = e.cause;
    if (seen.has(c)) body = "[Circular]";
    else if (seen.size >= MAX_CAUSES) body = "…";
    else if (c instanceof Error) body = errorText(c, seen);
    else body = inspect(c, { depth: 2, breakLength: Number.POSITIVE_INFINITY, customInspect: false });
  } catch {
    // A getter or a proxy that throws: the error above is still what the script threw.
    body = "(cannot be shown)";
  }
  return `\n  [cause]: ${body.split("\n").join("\n  ")}`;
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
      // What the script leaves uncaught after its top level ran (a callback's throw, a promise
      // it did not await) reads as what its top level throws; a script with handlers of its
      // own keeps them to itself.
      const uncaught = (kind: "uncaughtException" | "unhandledRejection") => (e: unknown) => {
        if (process.listenerCount(kind) > 1) return;
        process.stderr.write(`${scriptErrorText(e)}\n`);
        process.exit(1);
      };
      process.on("uncaughtException", uncaught("uncaughtException"));
      process.on("unhandledRejection", uncaught("unhandledRejection"));
      try {
        if (TYPESCRIPT.test(path) && commonJsTypeScript(path)) {
          const { require: tsxRequire } = await import("tsx/cjs/api");
          tsxRequire(path, import.meta.url);
        } else if (TYPESCRIPT.test(path)) {
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
        const syntax = await syntaxErrorLine(e, path);
        // The script's own error: its message and its frames (tsx maps TypeScript lines).
        process.stderr.write(`${syntax ?? scriptErrorText(e)}\n`);
        process.exitCode = 1;
      }
    });
}

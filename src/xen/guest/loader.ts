/**
 * The domain builder's loader of guest programs (host side, as Xen's toolstack loads a
 * kernel image): reads a program and the files it imports, turns each TypeScript or
 * JavaScript module into a CommonJS-style function body with esbuild (with a source map back
 * to the file the user wrote), and says for every import what it is:
 *   - a file of the program (loaded in the guest's sandbox): a module of the program's own
 *     project, nothing outside it (see projectRoot),
 *   - the MyriXen library ("myrixen", or a guest-side library module by path): the one copy
 *     the guest runtime loads outside the sandbox,
 *   - or something a guest may not have (Node built-ins, other packages, the library's
 *     host-side code), with the error the guest gets if it asks.
 * The guest runtime (sandbox.ts) evaluates the image; nothing here runs guest code.
 */
import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  lstatSync,
  openSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  type Stats,
  statSync,
} from "node:fs";
import { dirname, extname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build, stop as stopEsbuild, transform } from "esbuild";
import { builtinName, guestMayImport, NOT_IN_GUEST } from "./reach.js";

/** What one import of a program module resolves to. */
export type GuestImport =
  | { kind: "program"; url: string }
  | { kind: "library"; url: string; index: boolean }
  | { kind: "refused"; message: string };

export interface GuestModuleImage {
  url: string;
  /** The module as the body of `function (exports, require, module)`; absent when it failed to load. */
  code?: string;
  /** esbuild's source map of `code` (JSON), back to the file the user wrote. */
  map?: string;
  /** Why it cannot load (a syntax error, a missing file): thrown when the guest imports it. */
  error?: string;
  imports: Record<string, GuestImport>;
}

/** A guest program, ready for the guest runtime: plain data (it travels in workerData). */
export interface GuestImage {
  entry: string;
  modules: Record<string, GuestModuleImage>;
}

/** The library's own folders: dist/src when running from a build, and src beside it (TypeScript sources). */
const DIST_SRC = fileURLToPath(new URL("../../", import.meta.url));
const REPO = resolve(DIST_SRC, "../..");
const SRC = resolve(REPO, "src");
const LIBRARY_ROOTS = [DIST_SRC, `${SRC}${sep}`];

const TS = /\.(ts|mts|cts|tsx)$/;
const LOADERS: Record<string, "ts" | "tsx" | "js" | "jsx"> = {
  ".ts": "ts",
  ".mts": "ts",
  ".cts": "ts",
  ".tsx": "tsx",
  ".js": "js",
  ".mjs": "js",
  ".cjs": "js",
  ".jsx": "jsx",
};

/** The library module `path` (a file under src/ or dist/src/) stands for, or undefined if it is not the library's. */
function libraryModule(path: string): string | undefined {
  const root = LIBRARY_ROOTS.find((r) => path.startsWith(r));
  if (!root) return undefined;
  const rel = relative(root, path).split(sep).join("/");
  const name = rel.replace(/\.(d\.ts|ts|mts|js|mjs)$/, "");
  // Built-in programs are programs: they run in the sandbox like a user's.
  if (name.startsWith("programs/")) return undefined;
  return name;
}

/** Whether `path` names a TypeScript or JavaScript file (what the loader compiles). */
const isModuleFile = (path: string): boolean => Object.hasOwn(LOADERS, extname(path));

/**
 * A program file for `path` as Node and tsx find it: as written, or `.js` standing for `.ts`,
 * or an index (the entry; a program's imports are found by findProjectFile).
 */
function findProgramFile(path: string): string | undefined {
  return programCandidates(path).find((p) => existsSync(p) && statSync(p).isFile());
}

/** The files `path` may stand for, in the order Node and tsx try them. */
function programCandidates(path: string): string[] {
  const candidates = [path];
  const ext = extname(path);
  if (/^\.(m|c)?js$/.test(ext)) candidates.push(path.slice(0, -ext.length) + ext.replace("js", "ts"));
  if (!ext) candidates.push(`${path}.ts`, `${path}.js`, `${path}/index.ts`, `${path}/index.js`);
  return candidates;
}

/** The package's index as a guest gets it: guest-api.ts, host-side names refused by name (sandbox.ts guestView). */
function guestApi(): GuestImport {
  return { kind: "library", url: pathToFileURL(`${DIST_SRC}guest-api.js`).href, index: true };
}

/**
 * The project of the program whose entry file is at `entry` (a real path): the nearest folder
 * above it that holds a package.json, as Node finds a program's package, or the entry's own
 * folder if none does. A program imports the modules of its project and nothing else of the
 * host's files: the host reads what a program imports with its own rights, and a module of
 * another user's project (mode 0600, say) would otherwise come back to the guest, exports
 * and functions' source (fn.toString()) included.
 */
export function projectRoot(entry: string): string {
  for (let dir = dirname(entry); ; dir = dirname(dir)) {
    try {
      if (statSync(join(dir, "package.json")).isFile()) return dir;
    } catch {}
    if (dirname(dir) === dir) return dirname(entry);
  }
}

/** Whether `path` is `root` or under it (both absolute; no symbolic links followed). */
function inside(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : `${root}${sep}`);
}

/** As Linux counts them (ELOOP). */
const MAX_LINKS = 40;

/**
 * Where `path` (absolute, under `root`, a real path) leads: its real path, "missing", or
 * "outside" when a symbolic link on the way leads out of `root`. Walked one name at a time
 * from `root`, following links as the kernel would, and never looking at anything outside
 * `root`: a link that leads out is refused found or not, so the answer does not say whether
 * its target exists either.
 */
function confine(path: string, root: string): { real: string } | "missing" | "outside" {
  const parts = relative(root, path).split(sep);
  let cur = root;
  let links = 0;
  while (parts.length > 0) {
    const part = parts.shift() as string;
    if (part === "" || part === ".") continue;
    if (part === "..") {
      // `cur` holds no link, so its parent is the real one.
      if (cur === root) return "outside";
      cur = dirname(cur);
      continue;
    }
    const next = join(cur, part);
    let st: Stats;
    try {
      st = lstatSync(next);
    } catch {
      return "missing";
    }
    if (!st.isSymbolicLink()) {
      cur = next;
      continue;
    }
    if (++links > MAX_LINKS) return "missing";
    let target: string;
    try {
      target = readlinkSync(next);
    } catch {
      return "missing";
    }
    if (isAbsolute(target)) {
      if (!inside(target, root)) return "outside";
      parts.unshift(...target.slice(root.length).split(sep));
      cur = root;
    } else parts.unshift(...target.split(sep));
  }
  return { real: cur };
}

/** Why an import outside the program's project is refused, and what to do: one line. */
function outsideProject(spec: string, fromPath: string, root: string, how: string): string {
  return `cannot import "${spec}" from ${pathToFileURL(fromPath).href}: ${how} outside the program's project (${root}); a guest program imports "myrixen" and the modules of its own project (the folder of its nearest package.json, or its own folder if there is none), not other files of the host: move or copy the module into the project`;
}

/**
 * What `spec`, imported by the module at `fromPath` (its real path), is for a guest whose
 * program's project is `root` (projectRoot of its entry; by default, the importer's own).
 */
export function resolveGuestImport(
  spec: string,
  fromPath: string,
  root: string = projectRoot(fromPath),
): GuestImport {
  if (spec === "myrixen") return guestApi();
  const builtin = builtinName(spec);
  if (builtin) return { kind: "refused", message: `${builtin} ${NOT_IN_GUEST}` };
  let path: string;
  if (spec.startsWith("file:")) path = fileURLToPath(spec);
  else if (spec.startsWith("./") || spec.startsWith("../") || isAbsolute(spec))
    path = resolve(dirname(fromPath), spec);
  else
    return {
      kind: "refused",
      message: `package "${spec}" ${NOT_IN_GUEST}; a guest program imports "myrixen" and its own files`,
    };
  const lib = libraryModule(path);
  if (lib !== undefined) {
    if (!guestMayImport(lib))
      return {
        kind: "refused",
        message: `"${spec}" (src/${lib}.ts) is host-side code of MyriXen and ${NOT_IN_GUEST}`,
      };
    if (lib === "index") return guestApi();
    return { kind: "library", url: pathToFileURL(`${DIST_SRC}${lib}.js`).href, index: false };
  }
  // A program imports modules, nothing else: any other file (a key, an .env, /etc/passwd,
  // /proc/self/environ) compiled as JavaScript would show the guest pieces of itself in
  // esbuild's errors (the token where parsing stopped), a read of the host's files. Refused
  // by name, found or not, so the answer does not say whether the file exists either.
  if (extname(path) && !isModuleFile(path))
    return {
      kind: "refused",
      message: `cannot import "${spec}": a guest program imports only TypeScript or JavaScript modules (${Object.keys(LOADERS).join(", ")}) and "myrixen"`,
    };
  // Outside the program's project: refused by name, found or not (as above).
  if (!inside(path, root)) return { kind: "refused", message: outsideProject(spec, fromPath, root, "it is") };
  const file = findProjectFile(path, root);
  if (file === "outside")
    return {
      kind: "refused",
      message: outsideProject(spec, fromPath, root, "a symbolic link leads it"),
    };
  if (!file)
    return {
      kind: "refused",
      message: `cannot find module "${spec}" imported from ${pathToFileURL(fromPath).href}`,
    };
  return { kind: "program", url: pathToFileURL(file).href };
}

/**
 * findProgramFile for a program's import, inside its project `root`: the real path of the
 * first module file found, undefined if none is, or "outside" if a symbolic link leads a
 * candidate out of the project.
 */
function findProjectFile(path: string, root: string): string | "outside" | undefined {
  for (const candidate of programCandidates(path)) {
    if (!isModuleFile(candidate)) continue;
    const found = confine(candidate, root);
    if (found === "outside") return "outside";
    if (found === "missing") continue;
    try {
      if (statSync(found.real).isFile()) return found.real;
    } catch {}
  }
  return undefined;
}

/** `require("...")` calls in esbuild's CommonJS output: a program's static and dynamic imports. */
const REQUIRE = /\brequire\((?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\)/g;

/** A source map larger than this is left out (the stacks then name the compiled file). */
const SOURCE_MAP_MAX_BYTES = 64 << 20;

/**
 * A compiled JavaScript file's own source map (tsc's `.js.map`), inlined so esbuild chains it;
 * `path` is the file's real path, `root` its program's project.
 */
function inlineSourceMap(code: string, path: string, root: string): string {
  const m = /\n\/\/# sourceMappingURL=([^\s]+)\s*$/.exec(code);
  if (!m || m[1].startsWith("data:")) return code;
  const mapPath = resolve(dirname(path), decodeURIComponent(m[1]));
  // The comment is the program's to write, and the host reads what it names: only a regular
  // `.map` file of a source map's size, in the program's project (as its imports). A FIFO or
  // /dev/stdin would block the host's thread in open/read, /dev/zero would fill its memory
  // until it died.
  if (!mapPath.endsWith(".map") || !inside(mapPath, root)) return code;
  const found = confine(mapPath, root);
  if (typeof found === "string") return code;
  const file = openInProject(found.real, root);
  if (typeof file === "string") return code;
  try {
    if (file.st.size > SOURCE_MAP_MAX_BYTES) return code;
    const data = readFileSync(file.fd).toString("base64");
    return `${code.slice(0, m.index)}\n//# sourceMappingURL=data:application/json;base64,${data}\n`;
  } finally {
    closeSync(file.fd);
  }
}

/**
 * The regular file at `path`, opened for the loader to read, if its real path (the open
 * file's, so a symbolic link swapped in after the checks above cannot lead the read
 * elsewhere) is in the program's project `root`; else why not. The caller closes `fd`.
 */
function openInProject(path: string, root: string): { fd: number; st: Stats; real: string } | string {
  const url = pathToFileURL(path).href;
  let fd: number;
  try {
    // Checked before it is opened: opening a FIFO or a device may block or do something.
    if (!statSync(path).isFile()) return `cannot load ${url}: not a file`;
    // Non-blocking: should a FIFO have been swapped in meanwhile, the open does not wait for a writer.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    return `cannot load ${url}: ${(e as Error).message}`;
  }
  let why: string;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) why = "not a file";
    else {
      let real: string;
      try {
        real = readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        real = realpathSync(path); // no /proc: as near as the path can tell
      }
      if (inside(real, root)) return { fd, st, real };
      why = `it is outside the program's project (${root}); a guest program imports "myrixen" and the modules of its own project: move or copy the module into the project`;
    }
  } catch (e) {
    why = (e as Error).message;
  }
  closeSync(fd);
  return `cannot load ${url}: ${why}`;
}

interface Compiled {
  mtimeMs: number;
  size: number;
  real: string;
  module: GuestModuleImage;
}

/**
 * Compiled modules by program project and path (how a module's imports resolve depends on the
 * project of the program that imports it: a module two programs share is compiled for each);
 * a file that changes is compiled again. Bounded: a host runs for weeks.
 */
const cache = new Map<string, Compiled>();
const CACHE_MAX = 512;

/** The module at `path`, compiled for a program whose project is `root`. */
async function compile(path: string, root: string): Promise<GuestModuleImage> {
  const url = pathToFileURL(path).href;
  const file = openInProject(path, root);
  // Not cached: it says nothing of the file once it is there.
  if (typeof file === "string") return { url, error: file, imports: {} };
  const key = `${root}\0${path}`;
  const { st, real } = file;
  let source: string;
  try {
    const hit = cache.get(key);
    if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size && hit.real === real) return hit.module;
    source = readFileSync(file.fd, "utf8");
  } catch (e) {
    return { url, error: `cannot load ${url}: ${(e as Error).message}`, imports: {} };
  } finally {
    closeSync(file.fd);
  }
  let module: GuestModuleImage;
  try {
    const out = await transform(TS.test(path) ? source : inlineSourceMap(source, real, root), {
      loader: LOADERS[extname(path)] ?? "js",
      format: "cjs",
      target: "node20",
      platform: "neutral",
      sourcemap: "external",
      sourcefile: path,
      // import() becomes require(), so dynamic imports go through the same checks as static ones.
      supported: { "dynamic-import": false },
      define: { "import.meta.url": JSON.stringify(url) },
      logLevel: "silent",
    });
    const imports: Record<string, GuestImport> = {};
    for (const m of out.code.matchAll(REQUIRE)) {
      const spec = JSON.parse(`"${m[1] ?? m[2]}"`) as string;
      imports[spec] ??= resolveGuestImport(spec, real, root);
    }
    module = { url, code: out.code, map: out.map, imports };
  } catch (e) {
    const errors = (e as { errors?: { text: string; location?: { line: number; column: number } }[] }).errors;
    const first = errors?.[0];
    const where = first?.location ? `:${first.location.line}:${first.location.column + 1}` : "";
    module = {
      url,
      error: first ? `${url}${where}: ${first.text}` : `cannot load ${url}: ${(e as Error).message}`,
      imports: {},
    };
  }
  if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value as string);
  cache.set(key, { mtimeMs: st.mtimeMs, size: st.size, real, module });
  return module;
}

/**
 * The image of the program at `moduleUrl`: its modules, compiled, and how each import
 * resolves. Never throws for a bad program: what cannot load says so in the image, and the
 * guest (not the host) fails with that error when it boots.
 */
export async function loadGuestImage(moduleUrl: string): Promise<GuestImage> {
  loading++;
  try {
    return await loadImage(moduleUrl);
  } finally {
    if (--loading === 0) stopCompilerSoon();
  }
}

/**
 * The names the program file at `path` exports, as esbuild reads them without running it (a
 * CommonJS file exports "default"); undefined when it cannot tell (the file does not parse —
 * loadGuestImage says why — or re-exports another module's names with `export *`). What a
 * launcher checks before any rank starts.
 */
export async function guestProgramExports(path: string): Promise<string[] | undefined> {
  // `export * from` names exports only the module it names knows: no answer then.
  try {
    if (/\bexport\s*\*/.test(readFileSync(path, "utf8"))) return undefined;
  } catch {
    return undefined;
  }
  loading++;
  try {
    const r = await build({
      entryPoints: [path],
      bundle: false,
      write: false,
      metafile: true,
      format: "esm",
      platform: "neutral",
      outdir: "out",
      logLevel: "silent",
    });
    return Object.values(r.metafile.outputs).find((o) => o.entryPoint !== undefined)?.exports;
  } catch {
    return undefined;
  } finally {
    if (--loading === 0) stopCompilerSoon();
  }
}

/**
 * Images being built now, and the timer that stops esbuild once none has been for a while.
 * esbuild's `transform` runs in a service process that otherwise lives as long as the host:
 * idle, its Go runtime still wakes ~60 times a second, and on a machine whose cores the
 * guests are busy-polling each wake-up takes a core from a guest for a time slice (measured
 * with `perf record -e sched:sched_switch` during a 1 MiB ping-pong: a third of the switches
 * away from the two guests went to esbuild). The next image starts it again (~20 ms).
 */
let loading = 0;
let idleTimer: NodeJS.Timeout | undefined;
const COMPILER_IDLE_MS = 500;

function stopCompilerSoon(): void {
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => {
    idleTimer = undefined;
    if (loading !== 0) return;
    // Best effort: a service that already died is as good as stopped, and this runs in a
    // timer of the host, which must not fall over for it.
    try {
      stopEsbuild().catch(() => {});
    } catch {}
  }, COMPILER_IDLE_MS);
  idleTimer.unref();
}

async function loadImage(moduleUrl: string): Promise<GuestImage> {
  const modules: Record<string, GuestModuleImage> = {};
  if (!moduleUrl.startsWith("file:")) {
    modules[moduleUrl] = {
      url: moduleUrl,
      error: `a guest program must be a file (a path or file: URL), got ${moduleUrl}`,
      imports: {},
    };
    return { entry: moduleUrl, modules };
  }
  const entryPath = fileURLToPath(moduleUrl);
  const entry = findProgramFile(entryPath);
  if (!entry) {
    modules[moduleUrl] = { url: moduleUrl, error: `no guest program ${entryPath}`, imports: {} };
    return { entry: moduleUrl, modules };
  }
  // The program's project, where its imports must stay: found from the entry's real path
  // (the entry may be a symbolic link; its imports are resolved from where it really is).
  let root: string;
  try {
    root = projectRoot(realpathSync(entry));
  } catch (e) {
    modules[moduleUrl] = {
      url: moduleUrl,
      error: `no guest program ${entryPath}: ${(e as Error).message}`,
      imports: {},
    };
    return { entry: moduleUrl, modules };
  }
  const queue = [entry];
  const entryUrl = pathToFileURL(entry).href;
  while (queue.length > 0) {
    const path = queue.shift()!;
    const url = pathToFileURL(path).href;
    if (modules[url]) continue;
    const m = await compile(path, root);
    modules[url] = m;
    for (const dep of Object.values(m.imports))
      if (dep.kind === "program" && !modules[dep.url]) queue.push(fileURLToPath(dep.url));
  }
  return { entry: entryUrl, modules };
}

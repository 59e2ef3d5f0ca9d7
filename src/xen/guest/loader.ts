/**
 * The domain builder's loader of guest programs (host side, as Xen's toolstack loads a
 * kernel image): reads a program and the files it imports, turns each TypeScript or
 * JavaScript module into a CommonJS-style function body with esbuild (with a source map back
 * to the file the user wrote), and says for every import what it is:
 *   - a file of the program (loaded in the guest's sandbox): a module owned by the user who
 *     owns the program's entry file, no other user's (see resolveGuestImport),
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
  openSync,
  readFileSync,
  readlinkSync,
  readSync,
  realpathSync,
  type Stats,
  statSync,
} from "node:fs";
import { dirname, extname, isAbsolute, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
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

/**
 * Whether `path` (a real path) is the host's own code: a file under the package's src/ or
 * dist/src/ (library modules, built-in programs, their source maps), which any program may
 * load whoever owns it.
 */
const hostCode = (path: string): boolean => LIBRARY_ROOTS.some((r) => path.startsWith(r));

/** Whether `path` names a TypeScript or JavaScript file (what the loader compiles). */
const isModuleFile = (path: string): boolean => Object.hasOwn(LOADERS, extname(path));

/**
 * A program file for `path` as Node and tsx find it: as written, or `.js` standing for `.ts`,
 * or an index (the entry; a program's imports are found by findModuleFile).
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
 * Why a module owned by `owner` is not for a program of user `uid`, and what to do: the end of
 * a one-line refusal. The host reads what a program imports with its own rights, and another
 * user's module (mode 0600, say) would otherwise come back to the guest, exports and
 * functions' source (fn.toString()) included.
 */
function otherUsers(owner: number, uid: number): string {
  return `it belongs to another user (uid ${owner}, the program's is ${uid}); a guest program imports "myrixen" and modules of its own user (the owner of its entry file): copy the module into a file of yours`;
}

/**
 * What `spec`, imported by the module at `fromPath` (its real path), is for a guest whose
 * program's entry file is owned by `uid` (by default, the importer's owner). A program imports
 * only modules of that user, besides the library and built-in programs (the host's own code):
 * said here by the file's owner, and checked again on the file the loader opens and reads
 * (compile), so a symbolic link or a file swapped in meanwhile cannot lead it elsewhere.
 */
export function resolveGuestImport(spec: string, fromPath: string, uid?: number): GuestImport {
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
  const file = findModuleFile(path);
  if (!file)
    return {
      kind: "refused",
      message: `cannot find module "${spec}" imported from ${pathToFileURL(fromPath).href}: ${noModuleThere(spec)}`,
    };
  let owner: number;
  try {
    owner = uid ?? statSync(fromPath).uid;
  } catch (e) {
    return { kind: "refused", message: `cannot import "${spec}": ${(e as Error).message}` };
  }
  if (file.uid !== owner && !hostCode(file.real))
    return {
      kind: "refused",
      message: `cannot import "${spec}" from ${pathToFileURL(fromPath).href}: ${otherUsers(file.uid, owner)}`,
    };
  return { kind: "program", url: pathToFileURL(file.real).href };
}

/**
 * Why an import `spec` found nothing, in the import's own words: the module files it was
 * looked for as (what it names is never read as it is unless it is a module file, so the
 * answer is the same whether a file of another kind is there or not).
 */
export function noModuleThere(spec: string): string {
  const tried = programCandidates(spec).filter(isModuleFile);
  const list = tried.length > 1 ? `${tried.slice(0, -1).join(", ")} or ${tried.at(-1)}` : tried[0];
  return `there is no module ${list} (a guest program imports only TypeScript or JavaScript modules, ${Object.keys(LOADERS).join(", ")}: a file of any other kind is refused by its name, whether it exists or not)`;
}

/**
 * findProgramFile for a program's import: the real path and owner of the first module file
 * found (symbolic links followed), or undefined if none is.
 */
function findModuleFile(path: string): { real: string; uid: number } | undefined {
  for (const candidate of programCandidates(path)) {
    if (!isModuleFile(candidate)) continue;
    try {
      const st = statSync(candidate);
      if (st.isFile()) return { real: realpathSync(candidate), uid: st.uid };
    } catch {}
  }
  return undefined;
}

/** `require("...")` calls in esbuild's CommonJS output: a program's static and dynamic imports. */
const REQUIRE = /\brequire\((?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\)/g;

/** A source map larger than this is left out (the stacks then name the compiled file). */
const SOURCE_MAP_MAX_BYTES = 64 << 20;

/**
 * What one program's image may hold: its modules and their source, all of it. The image is
 * built in the host's own memory before the guest (and its meters) exist, from files the
 * program's user chose: a program of a 1 GiB file, or of 30,000 modules (56 s of compiles),
 * would spend the host's memory or its compiler's time for every tenant. Far beyond a real
 * program (this project's guest library is 0.5 MiB).
 */
export const IMAGE_MODULES_MAX = 4096;
export const IMAGE_SOURCE_MAX_BYTES = 64 << 20;

function tooLarge(url: string): string {
  return `${url}: the program's source passes ${IMAGE_SOURCE_MAX_BYTES >> 20} MiB with this module (IMAGE_SOURCE_MAX_BYTES, all its modules together)`;
}

/** The whole of an open regular file as UTF-8, or undefined when it is longer than `max` bytes (read no further). */
function readBounded(fd: number, max: number): string | undefined {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(Math.min(1 << 20, max + 1 - total));
    const n = readSync(fd, chunk, 0, chunk.length, null);
    if (n === 0) break;
    chunks.push(chunk.subarray(0, n));
    total += n;
    if (total > max) return undefined;
  }
  return Buffer.concat(chunks, total).toString("utf8");
}

/**
 * A compiled JavaScript file's own source map (tsc's `.js.map`), inlined so esbuild chains it;
 * `path` is the file's real path, `uid` the owner of its program's entry.
 */
function inlineSourceMap(code: string, path: string, uid: number): string {
  const m = /\n\/\/# sourceMappingURL=([^\s]+)\s*$/.exec(code);
  if (!m || m[1].startsWith("data:")) return code;
  const mapPath = resolve(dirname(path), decodeURIComponent(m[1]));
  // The comment is the program's to write, and the host reads what it names: only a regular
  // `.map` file of a source map's size, of the program's user (as its imports). A FIFO or
  // /dev/stdin would block the host's thread in open/read, /dev/zero would fill its memory
  // until it died.
  if (!mapPath.endsWith(".map")) return code;
  const file = openModule(mapPath, uid);
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
 * The regular file at `path`, opened for the loader to read, if the open file (so a symbolic
 * link or a file swapped in after resolveGuestImport's checks cannot lead the read elsewhere)
 * is owned by `uid` or is the host's own code; else why not. With no `uid` (the program's
 * entry), the file's owner is the program's user: `uid` in the answer. The caller closes `fd`.
 */
function openModule(
  path: string,
  uid: number | undefined,
): { fd: number; st: Stats; real: string; uid: number } | string {
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
      const owner = uid ?? st.uid;
      if (st.uid === owner || hostCode(real)) return { fd, st, real, uid: owner };
      why = otherUsers(st.uid, owner);
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
 * Compiled modules by program user (the owner of its entry: which of a module's imports it may
 * have depends on it, so a module two users' programs share is compiled for each) and path; a
 * file that changes is compiled again. Bounded, as a host runs for weeks: at most CACHE_MAX
 * modules and COMPILE_CACHE_BYTES of code and source maps (their length), least recently used
 * first out. It was bounded by count alone: 13 large programs (25 MiB of source) kept 81 MiB
 * of the host's heap. A source map keeps no copy of the source (sourcesContent): a stack is
 * mapped to a line and column (sandbox.ts), never shown with the source.
 */
const cache = new Map<string, Compiled>();
/** Compiles under way, by file and version: callers that come meanwhile share the result. */
const compiling = new Map<string, Promise<GuestModuleImage>>();
// As many as one program may have (IMAGE_MODULES_MAX): the largest program allowed is compiled
// once, not again for every job; the bytes bound below stays what holds memory.
const CACHE_MAX = IMAGE_MODULES_MAX;
/** What the compile cache holds at most: code and source maps, by length. */
export const COMPILE_CACHE_BYTES = 64 << 20;
let cacheBytes = 0;

function entryBytes(m: GuestModuleImage): number {
  return (m.code?.length ?? 0) + (m.map?.length ?? 0) + (m.error?.length ?? 0);
}

/** Modules compiled (esbuild transforms run) since this process started. */
let compiles = 0;

/** What the compile cache holds now, and the compiles run so far (for tests and inspection). */
export function compileCacheStats(): { modules: number; bytes: number; compiles: number } {
  return { modules: cache.size, bytes: cacheBytes, compiles };
}

function forget(key: string): void {
  const old = cache.get(key);
  if (!old) return;
  cache.delete(key);
  cacheBytes -= entryBytes(old.module);
}

function remember(key: string, entry: Compiled): void {
  forget(key);
  const bytes = entryBytes(entry.module);
  if (bytes > COMPILE_CACHE_BYTES) return;
  while (cache.size > 0 && (cache.size >= CACHE_MAX || cacheBytes + bytes > COMPILE_CACHE_BYTES))
    forget(cache.keys().next().value as string);
  cache.set(key, entry);
  cacheBytes += bytes;
}

/**
 * The module at `path`, compiled for a program of user `uid`, and that user: with no `uid`,
 * `path` is the program's entry, and its owner (as opened) is the program's user.
 */
async function compile(
  path: string,
  uid: number | undefined,
  budget: number,
): Promise<[GuestModuleImage, number?]> {
  const url = pathToFileURL(path).href;
  const file = openModule(path, uid);
  // Not cached: it says nothing of the file once it is there.
  if (typeof file === "string") return [{ url, error: file, imports: {} }, uid];
  const key = `${file.uid}\0${path}`;
  const { st, real } = file;
  // The same file being compiled for another domain (a job's ranks start at once): one compile.
  const sig = `${key}\0${real}\0${st.mtimeMs}\0${st.size}`;
  const flight = compiling.get(sig);
  if (flight !== undefined) {
    closeSync(file.fd);
    return [await flight, file.uid];
  }
  let source: string;
  try {
    const hit = cache.get(key);
    if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size && hit.real === real) {
      // Most recently used: last out.
      cache.delete(key);
      cache.set(key, hit);
      return [hit.module, file.uid];
    }
    if (budget < 0 || file.st.size > budget) return [{ url, error: tooLarge(url), imports: {} }, file.uid];
    const read = readBounded(file.fd, budget);
    if (read === undefined) return [{ url, error: tooLarge(url), imports: {} }, file.uid];
    source = read;
  } catch (e) {
    return [{ url, error: `cannot load ${url}: ${(e as Error).message}`, imports: {} }, file.uid];
  } finally {
    closeSync(file.fd);
  }
  const done = transformModule(url, path, real, source, file.uid, key, st);
  compiling.set(sig, done);
  try {
    return [await done, file.uid];
  } finally {
    compiling.delete(sig);
  }
}

/** Compiles one module's source (esbuild) and remembers it; never throws (an error image instead). */
async function transformModule(
  url: string,
  path: string,
  real: string,
  source: string,
  uid: number,
  key: string,
  st: { mtimeMs: number; size: number },
): Promise<GuestModuleImage> {
  let module: GuestModuleImage;
  compiles++;
  try {
    const { transform } = await compiler();
    const out = await transform(TS.test(path) ? source : inlineSourceMap(source, real, uid), {
      loader: LOADERS[extname(path)] ?? "js",
      format: "cjs",
      target: "node20",
      platform: "neutral",
      sourcemap: "external",
      sourcesContent: false,
      sourcefile: path,
      // import() becomes require(), so dynamic imports go through the same checks as static ones.
      supported: { "dynamic-import": false },
      define: { "import.meta.url": JSON.stringify(url) },
      logLevel: "silent",
    });
    const imports: Record<string, GuestImport> = {};
    for (const m of out.code.matchAll(REQUIRE)) {
      const spec = JSON.parse(`"${m[1] ?? m[2]}"`) as string;
      imports[spec] ??= resolveGuestImport(spec, real, uid);
    }
    module = { url, code: out.code, map: out.map, imports };
  } catch (e) {
    const errors = (e as { errors?: { text: string; location?: { line: number; column: number } }[] }).errors;
    const first = errors?.[0];
    const where = first?.location ? `:${first.location.line}:${first.location.column + 1}` : "";
    module = {
      url,
      error: first
        ? `${url}${where}: ${compileError(first.text)}`
        : `cannot load ${url}: ${(e as Error).message}`,
      imports: {},
    };
  }
  remember(key, { mtimeMs: st.mtimeMs, size: st.size, real, module });
  return module;
}

/**
 * esbuild's words for what cannot compile, where they name its own workings: a guest's
 * modules are CommonJS-style function bodies, evaluated in order as they are imported
 * (sandbox.ts), so a module cannot wait at its top level.
 */
function compileError(text: string): string {
  if (/^Top-level await is currently not supported/.test(text))
    return "a guest program cannot use top-level await (its modules load synchronously): move the await into main(guest), which may be async";
  return text;
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
    const { build } = await compiler();
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
/** esbuild, loaded with the first image: a host that runs no program never parses it (~30 ms). */
let esbuild: Promise<typeof import("esbuild")> | undefined;
const compiler = (): Promise<typeof import("esbuild")> => (esbuild ??= import("esbuild"));
let idleTimer: NodeJS.Timeout | undefined;
const COMPILER_IDLE_MS = 500;

function stopCompilerSoon(): void {
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => {
    idleTimer = undefined;
    if (loading !== 0) return;
    // Best effort: a service that already died is as good as stopped, and this runs in a
    // timer of the host, which must not fall over for it.
    esbuild?.then((e) => e.stop()).catch(() => {});
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
  let uid: number | undefined;
  const queue = [entry];
  const entryUrl = pathToFileURL(entry).href;
  // Every module the program reaches, counted before any is compiled beyond the bound.
  const reached = new Set([entryUrl]);
  let bytes = 0;
  while (queue.length > 0) {
    const path = queue.shift()!;
    const url = pathToFileURL(path).href;
    if (modules[url]) continue;
    // The entry comes first: its owner, as opened, is the user whose modules the program imports.
    const [m, owner] = await compile(path, uid, IMAGE_SOURCE_MAX_BYTES - bytes);
    uid = owner;
    modules[url] = m;
    bytes += m.code?.length ?? 0;
    if (bytes > IMAGE_SOURCE_MAX_BYTES)
      return {
        entry: entryUrl,
        modules: { [entryUrl]: { url: entryUrl, error: tooLarge(url), imports: {} } },
      };
    for (const dep of Object.values(m.imports))
      if (dep.kind === "program" && !reached.has(dep.url)) {
        reached.add(dep.url);
        queue.push(fileURLToPath(dep.url));
      }
    if (reached.size > IMAGE_MODULES_MAX) {
      const error = `${entryUrl}: the program imports more than ${IMAGE_MODULES_MAX} modules (IMAGE_MODULES_MAX); bundle it, or split it into several programs`;
      return { entry: entryUrl, modules: { [entryUrl]: { url: entryUrl, error, imports: {} } } };
    }
  }
  return { entry: entryUrl, modules };
}

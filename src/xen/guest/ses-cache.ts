/**
 * V8's code cache of SES's script, handed to every sandboxed guest in its boot data
 * (ses-script.ts): a guest's realm lockdown then starts from compiled code (on a 2-core VM a
 * small guest starts in ~135 ms instead of ~160 without it and ~190 with `import("ses")`).
 *
 * Made in a worker of its own (ses-cache-worker.ts) that runs SES and nothing else: a cache is
 * compiled code, so it never comes from a guest's worker, and each guest gets a copy of it (a
 * SharedArrayBuffer would let one guest rewrite another's while V8 reads it). It is kept in the
 * user's cache directory (`$XDG_CACHE_HOME/myrixen` or `~/.cache/myrixen`, made 0700, used only
 * if it is this user's and nobody else may write it), one file per SES and V8 version and
 * process flags, so a process after the first has it from its first guest; the directory keeps
 * the newest KEEP_FILES of them (a process that writes one removes our older ones: a machine
 * whose processes run with many sets of flags, a test suite's, would otherwise gather dozens,
 * and an upgrade of Node or SES leaves the old version's). Where there is no
 * such directory, a process makes it for itself once it has started a few guests (a one-shot
 * `myrixen run -n 2` would only pay for it). A cache V8 does not accept is ignored, and a
 * worker that fails leaves guests to compile SES themselves: nothing depends on it.
 */
import { createHash } from "node:crypto";
import {
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  type Stats,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";
import { Worker } from "node:worker_threads";

/** Guests a process starts before it makes a cache it cannot keep on disk. */
const MAKE_AFTER_GUESTS = 4;

/** Cache files (of any SES, V8 and flags) the directory keeps: the newest, by modification time. */
export const KEEP_FILES = 8;

/** Our cache files' names (cacheFile), and what writeCache leaves of one if it dies before its rename. */
const CACHE_NAME = /^ses-.+-v8-.+\.v8cache$/;
const TEMP_NAME = /^ses-.+-v8-.+\.v8cache\.\d+\.tmp$/;
/** A temporary file this old is a dead writer's, not one being written. */
const TEMP_STALE_MS = 10 * 60_000;

let asked = 0;
let started = false;
let made: Uint8Array | undefined;
/** Where the cache file is (undefined: no usable directory), found on first use. */
let file: string | null | undefined = null;

/** The cache if there is one; else undefined (and it may be being made for later guests). */
export function sesCodeCache(): Uint8Array | undefined {
  if (made !== undefined) return made;
  if (file === null) {
    file = cacheFile();
    if (file !== undefined) made = readCache(file);
    if (made !== undefined) return made;
  }
  asked++;
  if (!started && (file !== undefined || asked > MAKE_AFTER_GUESTS)) {
    started = true;
    const keep = file;
    make().then(
      (cache) => {
        made = cache;
        if (keep !== undefined) writeCache(keep, cache);
      },
      () => undefined,
    );
  }
  return made;
}

/** The cache file for this SES, V8 and set of flags, in a directory only this user can write; undefined if none. */
function cacheFile(): string | undefined {
  try {
    const base = process.env.XDG_CACHE_HOME || join(homedir(), ".cache");
    const dir = join(base, "myrixen");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = statSync(dir);
    if (!st.isDirectory() || !onlyMine(st)) return undefined;
    const require = createRequire(import.meta.url);
    const ses = (require("ses/package.json") as { version: string }).version;
    const flags = createHash("sha256").update(process.execArgv.join("\0")).digest("hex").slice(0, 12);
    return join(dir, `ses-${ses}-v8-${process.versions.v8}-${process.arch}-${flags}.v8cache`);
  } catch {
    return undefined;
  }
}

/** This user's, and nobody else may write it (no group or other write bit). */
function onlyMine(st: Stats): boolean {
  const uid = process.getuid?.();
  return (uid === undefined || st.uid === uid) && (st.mode & 0o022) === 0;
}

function readCache(path: string): Uint8Array | undefined {
  try {
    const st = statSync(path);
    if (!st.isFile() || !onlyMine(st)) return undefined;
    return readFileSync(path);
  } catch {
    return undefined;
  }
}

/** Written whole or not at all (another process may be writing the same file). */
function writeCache(path: string, cache: Uint8Array): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, cache, { mode: 0o600 });
    renameSync(tmp, path);
  } catch {
    // A cache is an optimisation: a read-only or full disk changes nothing else.
    return;
  }
  prune(dirname(path), basename(path));
}

/**
 * Removes our cache files but the newest KEEP_FILES (`written`, just made, among them), and
 * temporary files of writers that died. Only in a directory that is itself no symlink and
 * that only this user can write (cacheFile makes it 0700), only regular files of this user
 * named as ours (a symlink is neither followed nor removed), nothing else that lives there.
 */
function prune(dir: string, written: string): void {
  try {
    const d = lstatSync(dir);
    if (!d.isDirectory() || !onlyMine(d)) return;
    const now = Date.now();
    const caches: { name: string; mtimeMs: number }[] = [];
    for (const name of readdirSync(dir)) {
      const cache = CACHE_NAME.test(name);
      if (!cache && !TEMP_NAME.test(name)) continue;
      let st: Stats;
      try {
        st = lstatSync(join(dir, name));
      } catch {
        continue;
      }
      if (!st.isFile() || !onlyMine(st)) continue;
      if (cache) caches.push({ name, mtimeMs: name === written ? Number.POSITIVE_INFINITY : st.mtimeMs });
      else if (now - st.mtimeMs > TEMP_STALE_MS) remove(join(dir, name));
    }
    caches.sort((a, b) => b.mtimeMs - a.mtimeMs);
    for (const { name } of caches.slice(KEEP_FILES)) remove(join(dir, name));
  } catch {
    // As with writing: nothing depends on it.
  }
}

function remove(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Gone already (another process pruned it), or not ours to remove.
  }
}

function make(): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./ses-cache-worker.js", import.meta.url), { name: "ses-code-cache" });
    // Never what keeps a process alive.
    worker.unref();
    worker.once("message", (cache: Uint8Array) => {
      resolve(cache);
      void worker.terminate();
    });
    worker.once("error", reject);
    worker.once("exit", () => reject(new Error("the SES code-cache worker exited without a cache")));
  });
}

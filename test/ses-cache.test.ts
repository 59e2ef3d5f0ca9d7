/**
 * SES's code cache (src/xen/guest/ses-cache.ts): made by a worker of its own, kept where only
 * this user can write, never read from where others could have written it, and nothing but an
 * optimisation — a garbage cache changes nothing a guest does — and bounded: the directory keeps
 * the newest few. Real host processes, each with its own $XDG_CACHE_HOME.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const HOST = fileURLToPath(new URL("./fixtures/ses-cache-host.js", import.meta.url));
const TMP = mkdtempSync(join(tmpdir(), "myrixen-ses-cache-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

/** Runs a host process with its own cache home; returns what its guests returned. */
async function runHost(xdg: string, guests: number, wait: boolean): Promise<unknown[]> {
  const { stdout } = await promisify(execFile)(process.execPath, [HOST, String(guests), wait ? "1" : "0"], {
    env: { ...process.env, XDG_CACHE_HOME: xdg },
    timeout: 60_000,
  });
  return JSON.parse(stdout) as unknown[];
}

/** The cache files the directory keeps (src/xen/guest/ses-cache.ts KEEP_FILES). */
const KEEP_FILES = 8;

const cacheFiles = (dir: string) => readdirSync(dir).filter((f) => f.endsWith(".v8cache"));

function assertGuestsRan(results: unknown[], n: number): void {
  assert.equal(results.length, n);
  for (const r of results) assert.deepEqual(Object.keys(r as object).sort(), ["from", "pages"], String(r));
}

test("the code cache is made once and kept where only this user can write; the next process takes it as it is", async () => {
  const xdg = join(TMP, "fresh");
  assertGuestsRan(await runHost(xdg, 2, true), 2);
  const dir = join(xdg, "myrixen");
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  const [file] = cacheFiles(dir);
  assert.ok(file, "a cache file");
  const st = statSync(join(dir, file));
  assert.equal(st.mode & 0o777, 0o600);
  assert.ok(st.size > 10_000, `${st.size} bytes`);
  assertGuestsRan(await runHost(xdg, 6, false), 6);
  assert.deepEqual(cacheFiles(dir), [file], "one file per SES, V8 and flags");
  const again = statSync(join(dir, file));
  assert.deepEqual([again.ino, again.mtimeMs], [st.ino, st.mtimeMs], "taken as it is, not made again");
});

test("a cache directory others may write is neither read nor written", async () => {
  const xdg = join(TMP, "shared");
  const dir = join(xdg, "myrixen");
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o777);
  assertGuestsRan(await runHost(xdg, 2, false), 2);
  assert.deepEqual(cacheFiles(dir), []);
});

test("a cache file others may write is replaced, not read; a garbage one changes nothing guests do", async () => {
  const xdg = join(TMP, "garbage");
  assertGuestsRan(await runHost(xdg, 1, true), 1);
  const dir = join(xdg, "myrixen");
  const path = join(dir, cacheFiles(dir)[0]);
  const garbage = Buffer.alloc(4096, 0x5a);
  writeFileSync(path, garbage);
  chmodSync(path, 0o666);
  assertGuestsRan(await runHost(xdg, 2, true), 2);
  // Made again and put in its place (the old file was not trusted).
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.ok(!readFileSync(path).equals(garbage));
  // Garbage that only this user could have written: V8 refuses it, the guests compile SES.
  writeFileSync(path, garbage);
  chmodSync(path, 0o600);
  assertGuestsRan(await runHost(xdg, 3, false), 3);
});

test("the directory keeps the newest few cache files: writing one removes our older ones, nothing else, never through a symlink", async () => {
  const xdg = join(TMP, "bounded");
  const dir = join(xdg, "myrixen");
  mkdirSync(join(dir, "openmpi"), { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  // What older processes with other flags, and an older V8, left: a day old and older.
  const old = Array.from(
    { length: 12 },
    (_, i) =>
      `ses-2.3.0-v8-${i < 3 ? "10.2.154.26-node.26" : "11.3.244.8-node.38"}-x64-${String(i).padStart(12, "0")}.v8cache`,
  );
  const day = Date.now() / 1000 - 86_400;
  old.forEach((f, i) => {
    writeFileSync(join(dir, f), "old", { mode: 0o600 });
    utimesSync(join(dir, f), day - i * 60, day - i * 60);
  });
  // A dead writer's temporary file; and what is not ours to remove: other files, a symlink
  // named like a cache (to a file outside), a directory.
  const deadTmp = `${old[0]}.4242.tmp`;
  writeFileSync(join(dir, deadTmp), "half", { mode: 0o600 });
  utimesSync(join(dir, deadTmp), day, day);
  writeFileSync(join(dir, "notes.txt"), "mine");
  utimesSync(join(dir, "notes.txt"), day - 9_999, day - 9_999);
  const outside = join(TMP, "outside.v8cache");
  writeFileSync(outside, "outside");
  const link = "ses-2.3.0-v8-11.3.244.8-node.38-x64-symlinksymli.v8cache";
  symlinkSync(outside, join(dir, link));
  writeFileSync(join(dir, "openmpi", "openmpi-bench-abc"), "binary");

  assertGuestsRan(await runHost(xdg, 2, true), 2);
  const left = cacheFiles(dir).filter((f) => f !== link);
  assert.equal(left.length, KEEP_FILES, left.join("\n"));
  const made = left.filter((f) => !old.includes(f));
  assert.equal(made.length, 1, "the new cache is kept");
  assert.ok(statSync(join(dir, made[0])).size > 10_000);
  assert.deepEqual(
    left.filter((f) => old.includes(f)).sort(),
    old.slice(0, KEEP_FILES - 1).sort(),
    "the newest of the older ones are kept",
  );
  const all = readdirSync(dir);
  assert.ok(!all.includes(deadTmp), "a dead writer's temporary file goes");
  for (const f of ["notes.txt", link, "openmpi"]) assert.ok(all.includes(f), `${f} is left alone`);
  assert.equal(readFileSync(outside, "utf8"), "outside", "a symlink's target is never touched");
  assert.ok(lstatSync(join(dir, link)).isSymbolicLink());
  assert.equal(readFileSync(join(dir, "openmpi", "openmpi-bench-abc"), "utf8"), "binary");
});

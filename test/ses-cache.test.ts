/**
 * SES's code cache (src/xen/guest/ses-cache.ts): made by a worker of its own, kept where only
 * this user can write, never read from where others could have written it, and nothing but an
 * optimisation — a garbage cache changes nothing a guest does. Real host processes, each with
 * its own $XDG_CACHE_HOME.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
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

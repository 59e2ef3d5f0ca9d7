/**
 * Which script a thread starts from: its bundle, or its modules one by one.
 *
 * The CLI, the NIC's thread and the driver domain start at every `myrixen` command and every
 * host start, and load ~350, ~40 and ~100 ES modules each time (resolve, read, compile: most
 * of their start, 60–300 ms of CPU each on a 2-core machine). `scripts/bundle.mjs`, part of
 * every build, writes them as bundles in dist/src/bundles/ with a manifest naming each module
 * they hold and its size. The bundles are used only while they are at least as new as every
 * one of those modules and the sizes agree: a `tsc` since the last bundling makes them stale,
 * and then the modules load as they are (the same code, slower) — a bundle never runs older
 * code than the modules beside it. MYRIXEN_BUNDLES=0 turns them off (to profile or step
 * through the modules themselves).
 */
import { readFileSync, statSync } from "node:fs";

const DIST_SRC = new URL("../", import.meta.url);
const BUNDLES = new URL("bundles/", DIST_SRC);

interface Manifest {
  version: 1;
  /** Bundle name → its file in the bundle directory. */
  bundles: Record<string, string>;
  /** Every module of this package the bundles hold (relative to dist/src) → its size. */
  inputs: Record<string, number>;
}

/**
 * The bundles in `dir` if they match the modules under `srcDir` (see above), else undefined.
 * Exported for the tests; everything else asks bundledScript.
 */
export function freshBundles(dir: URL, srcDir: URL): Map<string, URL> | undefined {
  try {
    const manifestUrl = new URL("manifest.json", dir);
    const made = statSync(manifestUrl).mtimeMs;
    const m = JSON.parse(readFileSync(manifestUrl, "utf8")) as Manifest;
    if (m?.version !== 1 || typeof m.bundles !== "object" || typeof m.inputs !== "object") return undefined;
    for (const [path, size] of Object.entries(m.inputs)) {
      const st = statSync(new URL(path, srcDir));
      if (st.size !== size || st.mtimeMs > made) return undefined;
    }
    const out = new Map<string, URL>();
    for (const [name, file] of Object.entries(m.bundles)) {
      const url = new URL(file, dir);
      if (!url.href.startsWith(dir.href) || statSync(url).mtimeMs > made) return undefined;
      out.set(name, url);
    }
    return out;
  } catch {
    return undefined;
  }
}

let checked: Map<string, URL> | undefined | null = null;

/**
 * The script for `name` ("cli", "nic-worker", "driver-domain"): its bundle when the bundles
 * are fresh, else `modules` (the same program's entry module). Checked once per process.
 */
export function bundledScript(name: string, modules: URL): URL {
  if (process.env.MYRIXEN_BUNDLES === "0") return modules;
  if (checked === null) checked = freshBundles(BUNDLES, DIST_SRC);
  return checked?.get(name) ?? modules;
}

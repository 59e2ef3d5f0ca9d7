/**
 * Which script a thread starts from: its bundle, or its modules one by one.
 *
 * The CLI, the NIC's thread, the driver domain and each guest start at every `myrixen`
 * command, host start and rank, and load ~230, ~40, ~100 and ~130 ES modules each time
 * (resolve, read, compile: most of their start, 60–300 ms of CPU each on a 2-core machine).
 * `scripts/bundle.mjs`, part of every build, writes them as bundles in dist/src/bundles/ with
 * a manifest naming each module they hold and its size. The bundles are used only while they
 * are at least as new as every one of those modules and the sizes agree: a `tsc` since the
 * last bundling makes them stale, and then the modules load as they are (the same code,
 * slower) — a bundle never runs older code than the modules beside it. MYRIXEN_BUNDLES=0
 * turns them off (to profile or step through the modules themselves), as MYRIXEN_DEBUG does.
 */
import { readFileSync, statSync } from "node:fs";
import type { GuestImage } from "./guest/loader.js";

const DIST_SRC = new URL("../", import.meta.url);
const BUNDLES = new URL("bundles/", DIST_SRC);

interface Manifest {
  version: 1;
  /** Bundle name → its file in the bundle directory. */
  bundles: Record<string, string>;
  /** Every module of this package the bundles hold (relative to dist/src) → its size. */
  inputs: Record<string, number>;
  /** The library modules the guest bundle holds for a guest's program (relative to dist/src, no `.js`). */
  guestLibrary: string[];
}

/** Fresh bundles: each one's script, and the library modules the guest bundle holds. */
export interface Bundles {
  scripts: Map<string, URL>;
  guestLibrary: ReadonlySet<string>;
}

/**
 * The bundles in `dir` if they match the modules under `srcDir` (see above), else undefined.
 * Exported for the tests; everything else asks bundledScript and bundledGuestScript.
 */
export function freshBundles(dir: URL, srcDir: URL): Bundles | undefined {
  try {
    const manifestUrl = new URL("manifest.json", dir);
    const made = statSync(manifestUrl).mtimeMs;
    const m = JSON.parse(readFileSync(manifestUrl, "utf8")) as Manifest;
    if (
      m?.version !== 1 ||
      typeof m.bundles !== "object" ||
      typeof m.inputs !== "object" ||
      !Array.isArray(m.guestLibrary)
    )
      return undefined;
    for (const [path, size] of Object.entries(m.inputs)) {
      const st = statSync(new URL(path, srcDir));
      if (st.size !== size || st.mtimeMs > made) return undefined;
    }
    const scripts = new Map<string, URL>();
    for (const [name, file] of Object.entries(m.bundles)) {
      const url = new URL(file, dir);
      if (!url.href.startsWith(dir.href) || statSync(url).mtimeMs > made) return undefined;
      scripts.set(name, url);
    }
    return { scripts, guestLibrary: new Set(m.guestLibrary.map(String)) };
  } catch {
    return undefined;
  }
}

let checked: Bundles | undefined | null = null;

function bundles(): Bundles | undefined {
  // MYRIXEN_DEBUG: a stack that shows where it happened names the modules, not bundle chunks.
  if (process.env.MYRIXEN_BUNDLES === "0" || process.env.MYRIXEN_DEBUG) return undefined;
  if (checked === null) checked = freshBundles(BUNDLES, DIST_SRC);
  return checked;
}

/**
 * The script for `name` ("cli", "nic-worker", "driver-domain"): its bundle when the bundles
 * are fresh, else `modules` (the same program's entry module). Checked once per process.
 */
export function bundledScript(name: string, modules: URL): URL {
  return bundles()?.scripts.get(name) ?? modules;
}

/**
 * The guest bundle (the domain thread and the library a guest's program may import, one copy
 * of each module) for a guest whose program imports only library modules it holds; else
 * undefined, and the guest starts from guest/runtime.ts and imports its library from dist/src.
 * Never both: two copies of a class would not know each other's objects.
 */
export function bundledGuestScript(image: GuestImage): URL | undefined {
  const b = bundles();
  const script = b?.scripts.get("guest");
  if (!b || !script) return undefined;
  for (const m of Object.values(image.modules))
    for (const dep of Object.values(m.imports)) {
      if (dep.kind !== "library") continue;
      if (!dep.url.startsWith(DIST_SRC.href) || !dep.url.endsWith(".js")) return undefined;
      if (!b.guestLibrary.has(dep.url.slice(DIST_SRC.href.length, -".js".length))) return undefined;
    }
  return script;
}

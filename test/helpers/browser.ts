// Headless Chromium for the browser tests: Debian's chromium (scripts/ensure-chromium.mjs
// installs it before the suite) driven by playwright-core. A test that needs it calls
// `chromiumOrSkip(t)` and skips, saying why, on a machine that has neither.
import { existsSync } from "node:fs";
import type { TestContext } from "node:test";

export const CHROMIUM = "/usr/bin/chromium";

/** Flags for a headless chromium that runs as root in a container and reaches no network. */
export const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The launch options every browser test shares. */
export const LAUNCH = { executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, timeout: 60_000 };

/** playwright-core, or undefined after `t.skip(...)` when chromium or playwright-core is missing. */
export async function chromiumOrSkip(t: TestContext): Promise<typeof import("playwright-core") | undefined> {
  if (!existsSync(CHROMIUM)) {
    t.skip("chromium not installed: run node scripts/ensure-chromium.mjs");
    return undefined;
  }
  try {
    return await import("playwright-core");
  } catch {
    t.skip("playwright-core not installed: npm ci");
    return undefined;
  }
}

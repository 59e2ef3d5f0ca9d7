/**
 * The host's compile cache (guest/loader.ts) keeps compiled modules for the next program that
 * imports them. It was bounded by count alone (512 modules): 13 large programs, 25 MiB of
 * source, kept 81 MiB of the host's heap. Now it holds at most COMPILE_CACHE_BYTES of code and
 * source maps, least recently used first out, and a map keeps no copy of the source.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { COMPILE_CACHE_BYTES, compileCacheStats, loadGuestImage } from "../src/xen/guest/loader.js";

test("programs whose code passes the compile cache's budget leave it holding at most the budget; the latest is still cached", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-cache-"));
  try {
    // 24 programs of 4 MiB each: 96 MiB of code, more than the 64 MiB budget.
    const each = 4 << 20;
    const n = Math.ceil((1.5 * COMPILE_CACHE_BYTES) / each);
    for (let i = 0; i < n; i++) {
      const file = join(dir, `big-${i}.mjs`);
      writeFileSync(
        file,
        `export const data = "${String(i % 10).repeat(each)}";\nexport default () => data.length;\n`,
      );
      const image = await loadGuestImage(pathToFileURL(file).href);
      assert.ok(image, `program ${i} loaded`);
      const { bytes } = compileCacheStats();
      assert.ok(
        bytes <= COMPILE_CACHE_BYTES,
        `after ${i + 1} programs the cache holds ${bytes} bytes (budget ${COMPILE_CACHE_BYTES})`,
      );
    }
    const { modules, bytes } = compileCacheStats();
    assert.ok(modules < n, `${modules} of ${n} programs still cached`);
    assert.ok(bytes > COMPILE_CACHE_BYTES / 2, `the cache is used (${bytes} bytes)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

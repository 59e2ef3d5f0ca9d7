#!/usr/bin/env node
// The `myrixen` command: runs the compiled CLI (built by `npm ci` via the prepare script), as
// one bundle when the build made a fresh one (src/xen/bundles.ts), else module by module.
import { existsSync } from "node:fs";

const modules = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(modules)) {
  process.stderr.write("myrixen: the build is missing (dist/). Run `npm ci` or `npm run build` first.\n");
  process.exit(2);
}
// A build from before the bundles has no bundles.js: its modules run as they are.
const script = await import(new URL("../dist/src/xen/bundles.js", import.meta.url).href).then(
  ({ bundledScript }) => bundledScript("cli", modules),
  () => modules,
);
await import(script.href);

#!/usr/bin/env node
// The `myrixen` command: runs the compiled CLI (built by `npm ci` via the prepare script).
import { existsSync } from "node:fs";

const entry = new URL("../dist/src/cli/main.js", import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write("myrixen: the build is missing (dist/). Run `npm ci` or `npm run build` first.\n");
  process.exit(2);
}
await import(entry.href);

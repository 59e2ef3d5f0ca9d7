#!/usr/bin/env node
// npm's `prepare` step: the full build (library and tests) after `npm ci` or `npm install`.
// `npm pack` and `npm publish` run prepare too, beside prepack's clean build of the library
// (build-package.mjs), which is all a tarball holds: building the tests there as well only
// doubled the wait (a 32 s pack, 14 s of it this build).
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";

if (process.env.npm_command === "pack" || process.env.npm_command === "publish") process.exit(0);
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const r = spawnSync(process.execPath, [tsc, "-p", "."], {
  cwd: new URL("../", import.meta.url),
  stdio: "inherit",
});
process.exit(r.status ?? 1);

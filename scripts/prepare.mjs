#!/usr/bin/env node
// npm's `prepare` step: the full build (library, tests and bundles) after `npm ci` or
// `npm install`.
// `npm pack` and `npm publish` run prepare too, beside prepack's clean build of the library
// (build-package.mjs), which is all a tarball holds: building the tests there as well only
// doubled the wait (a 32 s pack, 14 s of it this build).
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";

if (process.env.npm_command === "pack" || process.env.npm_command === "publish") process.exit(0);
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const cwd = new URL("../", import.meta.url);
let r = spawnSync(process.execPath, [tsc, "-p", "."], { cwd, stdio: "inherit" });
// The bundles of the CLI and the host's threads (scripts/bundle.mjs), from what tsc just wrote.
if (r.status === 0) r = spawnSync(process.execPath, ["scripts/bundle.mjs"], { cwd, stdio: "inherit" });
process.exit(r.status ?? 1);

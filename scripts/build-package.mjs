#!/usr/bin/env node
// `npm pack`'s prepack step: a clean build of the library (dist/src only, no tests) and its
// bundles (scripts/bundle.mjs), so the tarball holds exactly what src/ compiles to now, never
// a stale file of a removed module.
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { createRequire } from "node:module";

const root = new URL("../", import.meta.url);
rmSync(new URL("dist/src/", root), { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
let r = spawnSync(process.execPath, [tsc, "-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });
if (r.status === 0) r = spawnSync(process.execPath, ["scripts/bundle.mjs"], { cwd: root, stdio: "inherit" });
process.exit(r.status ?? 1);

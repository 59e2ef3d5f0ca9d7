#!/usr/bin/env node
// Makes Debian's chromium available for the browser test of the HTML benchmark report
// (test/bench-report-browser.test.ts). Installs it with apt-get when running as root; otherwise
// says the browser test will be skipped. Always exits 0, and never waits forever.

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { findApt, run } from "./apt.mjs";

const CHROMIUM = "/usr/bin/chromium";
const SKIP = "the browser test (test/bench-report-browser.test.ts) will be skipped";

function log(msg) {
  console.log(`ensure-chromium: ${msg}`);
}

function version() {
  const r = spawnSync(CHROMIUM, ["--version"], { encoding: "utf8", timeout: 30_000, killSignal: "SIGKILL" });
  return (r.stdout ?? "").trim() || `(no version printed${r.error ? `: ${r.error.message}` : ""})`;
}

function main() {
  if (existsSync(CHROMIUM)) {
    log(`${CHROMIUM} present: ${version()}`);
    return;
  }
  const apt = findApt();
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (!apt || !isRoot) {
    const why = !apt ? "apt-get is not available" : "not running as root";
    log(`${CHROMIUM} is missing and cannot be installed here (${why}); ${SKIP}.`);
    return;
  }
  log(`${CHROMIUM} is missing: installing Debian's chromium with apt-get (may take a few minutes)…`);
  const upd = run(apt, ["-q", "update"], { quiet: true });
  if (upd) log(`apt-get update failed (${upd}); trying the install anyway`);
  const inst = run(apt, ["install", "-y", "-q", "--no-install-recommends", "chromium"], { quiet: true });
  if (inst || !existsSync(CHROMIUM)) {
    log(`installing chromium failed (${inst ?? `${CHROMIUM} still missing`}); ${SKIP}.`);
    return;
  }
  log(`installed ${CHROMIUM}: ${version()}`);
}

try {
  main();
} catch (e) {
  log(`unexpected error (${e instanceof Error ? e.message : String(e)}); ${SKIP}.`);
}
process.exit(0);

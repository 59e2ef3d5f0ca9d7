#!/usr/bin/env node
// Makes Debian's Open MPI (mpicc, mpirun) available for the openmpi peer of `myrixen bench`
// and its test (test/bench-openmpi.test.ts). Installs openmpi-bin and libopenmpi-dev with
// apt-get when running as root; otherwise says the Open MPI test will be skipped. Always exits
// 0, and never waits forever.

import { spawnSync } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import { findApt, run } from "./apt.mjs";

// gcc: Debian's mpicc runs `gcc`, which libopenmpi-dev does not pull in by itself.
const PACKAGES = ["openmpi-bin", "libopenmpi-dev", "gcc"];
const SKIP = "the Open MPI test (test/bench-openmpi.test.ts) will be skipped";

function log(msg) {
  console.log(`ensure-openmpi: ${msg}`);
}

function onPath(name) {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {}
  }
  return undefined;
}

function version(mpirun) {
  const r = spawnSync(mpirun, ["--version"], { encoding: "utf8", timeout: 30_000, killSignal: "SIGKILL" });
  return (r.stdout ?? "").split("\n")[0].trim() || "(no version printed)";
}

function main() {
  const present = () => onPath("mpicc") && onPath("mpirun") && onPath("gcc");
  if (present()) {
    log(`mpicc, mpirun and gcc present: ${version(onPath("mpirun"))}`);
    return;
  }
  const apt = findApt();
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (!apt || !isRoot) {
    const why = !apt ? "apt-get is not available" : "not running as root";
    log(`mpicc, mpirun or gcc is missing and cannot be installed here (${why}); ${SKIP}.`);
    return;
  }
  log(
    `mpicc, mpirun or gcc is missing: installing ${PACKAGES.join(" ")} with apt-get (may take a few minutes)…`,
  );
  let inst = run(apt, ["install", "-y", "-q", "--no-install-recommends", ...PACKAGES], { quiet: true });
  if (inst) {
    // The package lists may be stale or absent: refresh them once and try again.
    const upd = run(apt, ["-q", "update"], { quiet: true });
    if (upd) log(`apt-get update failed (${upd}); trying the install anyway`);
    inst = run(apt, ["install", "-y", "-q", "--no-install-recommends", ...PACKAGES], { quiet: true });
  }
  if (inst || !present()) {
    log(`installing Open MPI failed (${inst ?? "mpicc, mpirun or gcc still missing"}); ${SKIP}.`);
    return;
  }
  log(`installed Open MPI: ${version(onPath("mpirun"))}`);
}

try {
  main();
} catch (e) {
  log(`unexpected error (${e instanceof Error ? e.message : String(e)}); ${SKIP}.`);
}
process.exit(0);

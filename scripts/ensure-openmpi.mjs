#!/usr/bin/env node
// Makes Debian's Open MPI (mpicc, mpirun) available for the openmpi peer of `myrixen bench`
// and its test (test/bench-openmpi.test.ts). Installs openmpi-bin and libopenmpi-dev with
// apt-get when running as root; otherwise says the Open MPI test will be skipped. Always exits
// 0, and never waits forever.

import { spawnSync } from "node:child_process";
import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, join } from "node:path";

const TIMEOUT_MS = 10 * 60 * 1000;
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

/** Run a command with a timeout; returns an error message, or undefined on success. */
function run(cmd, args) {
  const r = spawnSync(cmd, args, {
    stdio: ["ignore", "ignore", "pipe"],
    timeout: TIMEOUT_MS,
    killSignal: "SIGKILL",
    encoding: "utf8",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  if (r.error)
    return r.error.code === "ETIMEDOUT" ? `timed out after ${TIMEOUT_MS / 1000} s` : r.error.message;
  if (r.signal) return `killed by ${r.signal}`;
  if (r.status !== 0) {
    const tail = (r.stderr ?? "").trim().split("\n").slice(-3).join(" | ");
    return `exit code ${r.status}${tail ? `: ${tail}` : ""}`;
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
  const apt = ["/usr/bin/apt-get", "/bin/apt-get"].find((p) => existsSync(p));
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (!apt || !isRoot) {
    const why = !apt ? "apt-get is not available" : "not running as root";
    log(`mpicc, mpirun or gcc is missing and cannot be installed here (${why}); ${SKIP}.`);
    return;
  }
  log(
    `mpicc, mpirun or gcc is missing: installing ${PACKAGES.join(" ")} with apt-get (may take a few minutes)…`,
  );
  let inst = run(apt, ["install", "-y", "-q", "--no-install-recommends", ...PACKAGES]);
  if (inst) {
    // The package lists may be stale or absent: refresh them once and try again.
    const upd = run(apt, ["-q", "update"]);
    if (upd) log(`apt-get update failed (${upd}); trying the install anyway`);
    inst = run(apt, ["install", "-y", "-q", "--no-install-recommends", ...PACKAGES]);
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

// What the suite's installers (ensure-chromium.mjs, ensure-openmpi.mjs) share: Debian's
// apt-get, and running a command with a deadline that reports failure in one line.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

export const TIMEOUT_MS = 10 * 60 * 1000;

/** Run a command with a timeout; returns an error message, or undefined on success. */
export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, {
    stdio: opts.quiet ? ["ignore", "ignore", "pipe"] : ["ignore", "inherit", "pipe"],
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

/** apt-get's path, or undefined where there is none (not Debian or Ubuntu). */
export function findApt() {
  for (const p of ["/usr/bin/apt-get", "/bin/apt-get"]) if (existsSync(p)) return p;
  return undefined;
}

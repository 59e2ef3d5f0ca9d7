/**
 * Mistakes of the environment and of a program, as a user meets them (an audit's findings):
 * a dashboard port in use (`myrixen run -H ... --dashboard` waited for ever with the hosts'
 * connections open; without hosts it said "this is a bug in myrixen"), a hostfile or config
 * file that is /dev/zero or a FIFO (read until memory ran out), and a rank whose main returned
 * -1 or 300 (the job exited 0), and `run --out` after a failed job (it replaced the last
 * report with an older run's rows). Each now ends with one line and the exit code it should.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { exitCodeOf } from "../src/cluster/ranks.js";
import { cliHost } from "./helpers/cli-host.js";
import { myrixen } from "./helpers/hosts.js";

const CLI = cliHost("myrixen-runtime-");
const TMP = CLI.tmp;
const ENV = CLI.env;
const NO_BUG_LINE = /this is a bug in myrixen/;

test("--dashboard on a port in use: one line and exit 1, with hosts (it waited for ever) and without", async () => {
  for (const hosts of [["-H", `${CLI.host.label}:1`], []]) {
    const r = await myrixen(
      ["run", "-n", "1", ...hosts, `--dashboard=127.0.0.1:${CLI.busyPort}`, "nas-ep", "--class", "S"],
      { env: ENV, killAfterMs: 30_000 },
    );
    assert.equal(r.code, 1, `${hosts.join(" ") || "no hosts"}: exit ${r.code}\n${r.stderr}`);
    assert.match(
      r.stderr,
      new RegExp(
        `^myrixen run: the dashboard cannot listen on 127\\.0\\.0\\.1:${CLI.busyPort}: already in use`,
        "m",
      ),
    );
    assert.doesNotMatch(r.stderr, NO_BUG_LINE);
  }
});

test("a hostfile or config file that is /dev/zero or a FIFO: one line, exit 2, at once", async () => {
  const fifo = join(TMP, "fifo");
  execFileSync("mkfifo", [fifo]);
  for (const [args, what] of [
    [["run", "-n", "1", "--hostfile", "/dev/zero", "nas-ep"], "the hostfile /dev/zero"],
    [["run", "-n", "1", "--hostfile", fifo, "nas-ep"], `the hostfile ${fifo}`],
    [["host", "--config", "/dev/zero"], "the config file /dev/zero"],
  ] as const) {
    const r = await myrixen([...args], { env: ENV, killAfterMs: 15_000 });
    assert.equal(r.code, 2, `${args.join(" ")}: exit ${r.code}\n${r.stderr}`);
    assert.match(r.stderr, new RegExp(`${what.replace(/[/.]/g, "\\$&")} is not a regular file`));
  }
});

test("what main returns is the rank's exit status as process.exit takes one; a nonzero number is never success", async () => {
  const code = (result: unknown) =>
    exitCodeOf({ state: "shutdown", result } as Parameters<typeof exitCodeOf>[0]);
  assert.deepEqual(
    [0, 7, 255, -1, 300, 256, 1.5, Number.NaN, Number.POSITIVE_INFINITY].map(code),
    [0, 7, 255, 255, 44, 1, 1, 1, 1],
  );
  // Anything else a program returns (nothing, a report, a word) is success, as before.
  assert.deepEqual([undefined, null, { ok: 1 }, "done"].map(code), [0, 0, 0, 0]);
  const prog = join(TMP, "minus-one.ts");
  writeFileSync(prog, "export default function main() { return -1; }\n");
  const r = await myrixen(["run", "-n", "1", prog], { env: ENV, killAfterMs: 30_000 });
  assert.equal(r.code, 255, r.stderr);
  assert.match(r.stderr, /rank 0 exited with code 255/);
});

test("run --out after a failed job leaves the previous report as it was (it wrote one from an older run's --json rows)", async () => {
  const outDir = join(TMP, "report");
  const rows = join(TMP, "rows.json");
  const first = await myrixen(
    ["run", "-n", "2", "--out", outDir, "osu-latency", "-m", "8", "-i", "10", "-x", "1", "--json", rows],
    { env: ENV, killAfterMs: 60_000 },
  );
  assert.equal(first.code, 0, first.stderr);
  const before = readFileSync(join(outDir, "bench.json"), "utf8");
  // A 32 MiB message in a rank's 64 MiB: the job fails at once, and rank 0 writes no rows.
  const second = await myrixen(
    ["run", "-n", "2", "--out", outDir, "osu-latency", "-m", "32M:32M", "--json", rows],
    { env: ENV, killAfterMs: 60_000 },
  );
  assert.notEqual(second.code, 0);
  assert.doesNotMatch(second.stderr + second.stdout, /report written to/);
  assert.match(second.stderr, /--out: no report \(the job failed\); .*bench\.json is left as it was/);
  assert.equal(readFileSync(join(outDir, "bench.json"), "utf8"), before);
});

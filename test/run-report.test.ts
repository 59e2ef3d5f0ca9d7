/**
 * `myrixen run --out DIR` as a user runs it: an OSU program and a NAS kernel write the same
 * report as `myrixen bench` and `myrixen start` (bench.json in the row format, bench.html),
 * and a program that writes no rows, or a directory that cannot be written, is a usage error.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { validateReport } from "../src/bench/harness.js";
import { runCli } from "./helpers/cli.js";

const run = (...args: string[]) => runCli(args);

test("run osu-latency --out writes the rows and the HTML report", { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-run-out-"));
  try {
    const out = join(dir, "osu");
    const r = await run(
      "run",
      "-n",
      "2",
      "--path",
      "native",
      "--out",
      out,
      "osu-latency",
      "-m",
      "0:64",
      "-i",
      "200",
      "-x",
      "20",
    );
    assert.equal(r.code, 0, r.stderr);
    // OSU's own output is unchanged.
    assert.match(r.stdout, /# OSU MPI Latency Test v7\.4/);
    assert.match(r.stderr, new RegExp(`report written to ${out}/bench\\.json and ${out}/bench\\.html`));
    const rep = validateReport(JSON.parse(readFileSync(join(out, "bench.json"), "utf8")));
    assert.deepEqual(
      rep.rows.map((x) => [x.bench, x.transport, x.scope, x.bytes, x.metric]),
      [0, 1, 2, 4, 8, 16, 32, 64].map((b) => ["osu-latency", "native", "intra-host", b, "latency_us"]),
    );
    const html = readFileSync(join(out, "bench.html"), "utf8");
    assert.match(html, /<title>MyriXen: osu-latency<\/title>/);
    assert.match(html, /<figure class="plot"[^>]*data-bench="osu-latency"/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("run nas-ep --out gives the kernel's Mop/s as a row, drawn as a bar", { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-run-out-"));
  try {
    const r = await run("run", "-n", "2", "--out", dir, "nas-ep", "--class", "S");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Verification += +SUCCESSFUL/);
    const rep = validateReport(JSON.parse(readFileSync(join(dir, "bench.json"), "utf8")));
    assert.equal(rep.rows.length, 1);
    const [row] = rep.rows;
    assert.deepEqual(
      [row.bench, row.transport, row.scope, row.bytes, row.metric],
      ["nas-ep.S", "bypass", "intra-host", 0, "ops_per_s"],
    );
    const mops = Number(/Mop\/s total\s+=\s+([\d.]+)/.exec(r.stdout)?.[1]);
    assert.ok(Math.abs(row.median / 1e6 - mops) < 0.01, `${row.median} vs ${mops} Mop/s`);
    assert.match(readFileSync(join(dir, "bench.html"), "utf8"), /<figure class="bars"/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("run --out: a program without rows or an unwritable directory is refused before anything runs", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-run-out-"));
  try {
    const none = await run("run", "-n", "2", "--out", dir, "./my-program.ts");
    assert.equal(none.code, 2);
    assert.match(none.stderr, /--out writes the benchmark report of the osu-\* and nas-\* programs/);
    const bad = await run("run", "-n", "2", "--out", "/proc/no/dir", "osu-latency");
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /cannot write the benchmark report to \/proc\/no\/dir/);
    assert.ok(!existsSync(join(dir, "bench.json")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

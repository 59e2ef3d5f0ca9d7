/** Rows from the built-in programs' result files, and repeated runs merged into medians (src/bench/program-rows.ts). */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { BenchRow } from "../src/bench/harness.js";
import { nasBench, nasRow, RunSamples, readNasResult, readOsuRows } from "../src/bench/program-rows.js";

const row = (transport: string, bytes: number, median: number): BenchRow => ({
  bench: "osu-latency",
  transport,
  scope: "intra-host",
  bytes,
  metric: "latency_us",
  median,
  min: median,
  max: median,
  runs: 1,
});

test("repeated runs become one row per cell: the median of the runs, their min and max, and their count", () => {
  const s = new RunSamples();
  s.add([row("bypass", 8, 0.4), row("native", 8, 0.5)]);
  s.add([row("bypass", 8, 36.8), row("native", 8, 0.45)]);
  s.add([row("bypass", 8, 0.38), row("native", 8, 0.47)]);
  s.add([{ ...row("bypass", 8, 200), scope: "cross-host" }]);
  const rows = s.rows();
  assert.deepEqual(
    rows.map((r) => [r.transport, r.scope, r.median, r.min, r.max, r.runs]),
    [
      ["bypass", "intra-host", 0.4, 0.38, 36.8, 3],
      ["native", "intra-host", 0.47, 0.45, 0.5, 3],
      ["bypass", "cross-host", 200, 200, 200, 1],
    ],
  );
});

test("a NAS result is a row of its Mop/s at 0 bytes; an OSU file's rows take the scope given", () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-program-rows-"));
  try {
    const nasFile = join(dir, "ep.json");
    writeFileSync(
      nasFile,
      JSON.stringify({
        kernel: "ep",
        class: "S",
        ranks: 4,
        path: "split",
        verified: true,
        time_s: 0.7,
        mops: 45.5,
      }),
    );
    const r = readNasResult(nasFile);
    assert.equal(nasBench("ep", "S"), "nas-ep.S");
    assert.deepEqual(nasRow(r, "cross-host"), {
      bench: "nas-ep.S",
      transport: "split",
      scope: "cross-host",
      bytes: 0,
      metric: "ops_per_s",
      median: 45.5e6,
      min: 45.5e6,
      max: 45.5e6,
      runs: 1,
    });
    writeFileSync(nasFile, JSON.stringify({ kernel: "ep" }));
    assert.throws(() => readNasResult(nasFile), /not a NAS result/);
    const osuFile = join(dir, "osu.json");
    writeFileSync(
      osuFile,
      JSON.stringify({ machine: { noisy: false }, rows: [row("native", 0, 1), row("native", 8, 2)] }),
    );
    assert.deepEqual(
      readOsuRows(osuFile, "cross-host").map((x) => [x.bytes, x.scope]),
      [
        [0, "cross-host"],
        [8, "cross-host"],
      ],
    );
    writeFileSync(osuFile, JSON.stringify({ rows: [{ bench: "x" }] }));
    assert.throws(() => readOsuRows(osuFile, "intra-host"), /invalid benchmark report/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

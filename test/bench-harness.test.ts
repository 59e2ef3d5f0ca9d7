// Tests for the benchmark harness (statistics, sizes, table, JSON report) and a tiny real run
// of each raw baseline. Shapes only: speed is measured by benchmarks, never asserted here.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { BASELINE_JOB } from "../src/bench/baseline-worker.js";
import {
  type BaselineResult,
  baselineRow,
  memcpyBandwidth,
  postMessagePingPong,
  rawRelayPingPong,
  rawSabPingPong,
  rawSabStream,
  runBaselineWorkers,
} from "../src/bench/baselines.js";
import {
  type BenchReport,
  type BenchRow,
  EXTRA_WARMUP_RUNS,
  finishMachineInfo,
  formatBytes,
  machineInfo,
  makeRow,
  measure,
  parseSizes,
  prepareOutputFile,
  profileFor,
  renderTable,
  reportProblems,
  settled,
  sizeSweep,
  summarize,
  validateReport,
  writeReport,
} from "../src/bench/harness.js";
import { samplePairs } from "../src/bench/mx.js";

const row = (transport: string, median: number, bytes = 8): BenchRow =>
  makeRow({ bench: "pingpong", transport, bytes, metric: "latency_us" }, [
    median * 0.9,
    median,
    median * 1.2,
  ]);

test("summarize: odd and even counts, min and max", () => {
  assert.deepEqual(summarize([5, 1, 3]), { median: 3, min: 1, max: 5, runs: 3 });
  assert.deepEqual(summarize([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4, runs: 4 });
  assert.deepEqual(summarize([7]), { median: 7, min: 7, max: 7, runs: 1 });
  assert.throws(() => summarize([]), /no samples/);
  assert.throws(() => summarize([1, Number.NaN]), /non-finite/);
});

test("measure discards warm-up runs", async () => {
  let calls = 0;
  const samples = await measure(3, 2, () => ++calls);
  assert.equal(calls, 5);
  assert.deepEqual(samples, [3, 4, 5]);
});

test("parseSizes: plain numbers, K/M suffixes, errors", () => {
  assert.deepEqual(parseSizes("0,8,1K,64K,1M,4M"), [0, 8, 1024, 65536, 1048576, 4194304]);
  assert.deepEqual(parseSizes(" 4k , 2 ,2"), [2, 4096]);
  assert.deepEqual(parseSizes("1G"), [1024 ** 3]);
  for (const bad of ["abc", "-1", "3M5", "", "1,,2", "1.5K"]) {
    assert.throws(() => parseSizes(bad), /invalid size/, bad);
  }
});

test("sizeSweep: OSU-style powers of two", () => {
  const full = sizeSweep(0, 4 * 1024 * 1024);
  assert.equal(full.length, 24);
  assert.equal(full[0], 0);
  assert.equal(full[1], 1);
  assert.equal(full[23], 4 * 1024 * 1024);
  assert.equal(sizeSweep(1, 4 * 1024 * 1024).length, 23);
  assert.deepEqual(sizeSweep(3, 20), [4, 8, 16]);
  assert.throws(() => sizeSweep(-1, 8), /non-negative/);
  assert.throws(() => sizeSweep(16, 8), /larger than max/);
  assert.throws(() => sizeSweep(5, 7), /no power of two/);
});

test("formatBytes", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(8), "8 B");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(4 * 1024 * 1024), "4 MiB");
});

test("renderTable: a column per transport, ratio columns, human units", () => {
  const rows = [row("evtchn", 0.5), row("raw-sab", 0.25), row("raw-sab", 1, 4096)];
  rows.push(
    makeRow({ bench: "stream", transport: "memcpy", bytes: 65536, metric: "bandwidth_MBps" }, [15000]),
    makeRow({ bench: "ops", transport: "ring", bytes: 0, metric: "ops_per_s" }, [2_500_000]),
  );
  const text = renderTable(rows, { ratios: [["evtchn", "raw-sab"]], color: false });
  for (const s of ["evtchn", "raw-sab", "memcpy", "evtchn/raw-sab", "2.00×", "0.50 µs", "4 KiB"]) {
    assert.ok(text.includes(s), `missing ${s} in\n${text}`);
  }
  assert.ok(text.includes("15000 MB/s"));
  assert.ok(text.includes("2.50 Mops/s"));
  assert.ok(text.includes("0.45–0.60"), "min–max range shown");
  assert.equal(
    text.split("\n").filter((l) => l.includes("pingpong")).length,
    2,
    "one line per (bench, size)",
  );
});

test("writeReport writes valid JSON and fails clearly on an unwritable path", () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-bench-"));
  try {
    const rows = [row("raw-sab", 0.2)];
    const report: BenchReport = { machine: finishMachineInfo(machineInfo(), rows), rows };
    const file = join(dir, "sub", "dir", "out.json");
    writeReport(file, report);
    const back = validateReport(JSON.parse(readFileSync(file, "utf8")));
    assert.deepEqual(back.rows, rows);
    assert.equal(typeof back.machine.noisy, "boolean");
    assert.ok(back.machine.cpus.count >= 1);
    assert.ok(Array.isArray(back.machine.loadavgEnd));

    const blocker = join(dir, "not-a-dir");
    writeFileSync(blocker, "x");
    const bad = join(blocker, "out.json");
    assert.throws(
      () => writeReport(bad, report),
      (e: Error) => e.message.startsWith(`cannot write benchmark JSON to ${bad}: `),
    );
    // Checked before a run: the reason names the user's directory, not the probe file's name.
    assert.throws(
      () => prepareOutputFile("/proc/no-such-file.json"),
      (e: Error) =>
        /^cannot write benchmark JSON to \/proc\/no-such-file\.json: E[A-Z]+: cannot create a file in \/proc$/.test(
          e.message,
        ),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("validateReport rejects malformed rows", () => {
  const machine = machineInfo();
  const good = row("bypass", 1);
  assert.doesNotThrow(() => validateReport({ machine, rows: [good] }));
  assert.throws(
    () => validateReport({ machine, rows: [{ ...good, metric: "latency_ms" }] }),
    /rows\[0\]\.metric/,
  );
  assert.throws(() => validateReport({ machine, rows: [{ ...good, scope: "local" }] }), /rows\[0\]\.scope/);
  assert.throws(() => validateReport({ machine, rows: [{ ...good, median: "1" }] }), /rows\[0\]\.median/);
  assert.throws(() => validateReport({ machine, rows: [{ ...good, min: 5 }] }), /min <= median <= max/);
  const { runs: _runs, ...noRuns } = good;
  assert.throws(() => validateReport({ machine, rows: [noRuns] }), /rows\[0\]\.runs/);
  assert.throws(() => validateReport({ rows: [] }), /machine/);
  assert.ok(reportProblems(null).length > 0);
});

test("finishMachineInfo flags a large spread as noisy", () => {
  const spread = makeRow({ bench: "b", transport: "split", bytes: 8, metric: "latency_us" }, [1, 2, 10]);
  const info = finishMachineInfo({ ...machineInfo(), noisy: false, noiseReason: undefined }, [spread]);
  assert.equal(info.noisy, true);
  assert.match(info.noiseReason ?? "", /spread/);
  assert.equal(info.maxSpread, 10);
});

test("profiles", () => {
  const q = profileFor(true);
  const f = profileFor(false);
  assert.equal(q.name, "quick");
  assert.ok(q.runs <= f.runs && q.itersSmall < f.itersSmall);
});

function checkShape(r: BaselineResult, transport: string, metric: string, runs: number): void {
  assert.equal(r.transport, transport);
  assert.equal(r.metric, metric);
  assert.equal(r.samples.length, runs);
  for (const s of r.samples) assert.ok(Number.isFinite(s) && s > 0, `sample ${s}`);
  const br = baselineRow("t", r);
  assert.equal(br.runs, runs);
  assert.deepEqual(reportProblems({ machine: machineInfo(), rows: [br] }), []);
}

test("raw-sab ping-pong: tiny real run", async () => {
  checkShape(await rawSabPingPong({ bytes: 8, iters: 200, warmup: 20, runs: 2 }), "raw-sab", "latency_us", 2);
  checkShape(await rawSabPingPong({ bytes: 0, iters: 200, warmup: 0, runs: 1 }), "raw-sab", "latency_us", 1);
});

test("raw-relay ping-pong: tiny real run", async () => {
  checkShape(
    await rawRelayPingPong({ bytes: 64, iters: 50, warmup: 5, runs: 2 }),
    "raw-relay",
    "latency_us",
    2,
  );
});

test("postMessage ping-pong: clone and transfer", async () => {
  const clone = await postMessagePingPong({ bytes: 4096, iters: 50, warmup: 5, runs: 2, transfer: false });
  checkShape(clone, "postmessage", "latency_us", 2);
  assert.equal(clone.mode, "clone");
  const xfer = await postMessagePingPong({ bytes: 4096, iters: 50, warmup: 0, runs: 2, transfer: true });
  checkShape(xfer, "postmessage", "latency_us", 2);
  assert.equal(xfer.mode, "transfer");
});

test("memcpy bandwidth and SAB stream: tiny real run", async () => {
  checkShape(await memcpyBandwidth({ bytes: 65536, iters: 50, runs: 2 }), "memcpy", "bandwidth_MBps", 2);
  const st = await rawSabStream({ bytes: 4096, iters: 5, warmup: 1, runs: 2 });
  checkShape(st, "raw-sab", "bandwidth_MBps", 2);
  assert.equal(st.window, 64);
  await assert.rejects(memcpyBandwidth({ bytes: 0, iters: 1, runs: 1 }), /bytes must be an integer >= 1/);
});

test("baseline workers: a stuck worker times out and is terminated; bad options reject", async () => {
  // A ping with no echo blocks forever in Atomics.wait; the timeout must reject and terminate it.
  const ctrl = new SharedArrayBuffer(2 * 64);
  const buf = new SharedArrayBuffer(8);
  await assert.rejects(
    runBaselineWorkers(
      "lonely ping",
      [
        {
          job: {
            job: BASELINE_JOB,
            kind: "sab-pingpong",
            role: "ping",
            ctrl,
            ab: buf,
            ba: buf,
            spinUs: 1,
            bytes: 8,
            iters: 1,
            warmup: 0,
            runs: 1,
            warmupRuns: 0,
          },
        },
      ],
      0,
      300,
    ),
    /lonely ping: no result after 300 ms/,
  );
  await assert.rejects(
    rawSabPingPong({ bytes: -1, iters: 10, runs: 1 }),
    /raw-sab ping-pong: bytes must be an integer >= 0/,
  );
});

test("baseline workers: a worker error rejects with a clear message", async () => {
  await assert.rejects(
    runBaselineWorkers("broken", [{ job: { job: BASELINE_JOB, kind: "nonsense" } as never }], 0, 10_000),
    /broken: worker nonsense\/undefined failed: baseline-worker: unknown job nonsense/,
  );
});

test("MX pairs take turns in an order that rotates every round: none is always measured right after the same other one", async () => {
  const profile = { ...profileFor(true), runs: 3, warmupRuns: 1, extraWarmupRuns: 0 };
  const labels: string[] = [];
  await samplePairs(
    new Map(["a", "b", "c"].map((t) => [t, t])),
    profile,
    "pingpong",
    "intra-host",
    8,
    "latency_us",
    (l) => labels.push(l),
    async () => 1,
  );
  const runs = labels.filter((l) => / run \d/.test(l)).map((l) => l.split(", ")[1]);
  assert.deepEqual(runs, ["a", "b", "c", "b", "c", "a", "c", "a", "b"]);
});

test("MX pairs warm up until two warm-up runs agree (at most the profile's extraWarmupRuns more), then take the profile's runs", async () => {
  assert.equal(profileFor(false).extraWarmupRuns, EXTRA_WARMUP_RUNS);
  assert.equal(profileFor(true).extraWarmupRuns, 1, "a quick look allows one more");
  const profile = { ...profileFor(true), runs: 3, warmupRuns: 1, extraWarmupRuns: EXTRA_WARMUP_RUNS };
  // Pair "a" settles on its third warm-up run (100 → 40 → 38); "b" never settles (noise).
  const scripts: Record<string, number[]> = {
    a: [100, 40, 38, 37, 5, 6, 7, 8, 9],
    b: [1, 2, 4, 8, 16, 11, 12, 13, 14],
  };
  const pairs = new Map(Object.keys(scripts).map((t) => [t, t]));
  const taken: Record<string, number> = { a: 0, b: 0 };
  const labels: string[] = [];
  const rows = await samplePairs(
    pairs,
    profile,
    "pingpong",
    "intra-host",
    8,
    "latency_us",
    (l) => labels.push(l),
    async (t) => scripts[t][taken[t]++],
  );
  // b keeps everyone warming up to warmupRuns + EXTRA_WARMUP_RUNS runs; then 3 measured runs each.
  assert.equal(taken.a, profile.warmupRuns + EXTRA_WARMUP_RUNS + 3);
  const byT = new Map(rows.map((r) => [r.transport, r]));
  assert.equal(byT.get("a")?.runs, 3);
  assert.equal(byT.get("a")?.median, 6);
  assert.equal(byT.get("b")?.median, 12);
  assert.ok(labels.includes("pingpong 8 B, a, warm-up 4") && labels.includes("pingpong 8 B, b, run 3"));
  // Both settled after their second warm-up: two warm-up runs, no more.
  const calm: Record<string, number[]> = { a: [10, 10.5, 3, 3, 3], b: [20, 19, 4, 4, 4] };
  const n: Record<string, number> = { a: 0, b: 0 };
  const quiet = await samplePairs(
    new Map([
      ["a", "a"],
      ["b", "b"],
    ]),
    profile,
    "stream",
    "intra-host",
    8,
    "bandwidth_MBps",
    () => {},
    async (t) => calm[t][n[t]++],
  );
  assert.deepEqual(n, { a: 5, b: 5 });
  assert.deepEqual(
    quiet.map((r) => r.median),
    [3, 4],
  );
  assert.ok(settled(100, 109) && !settled(100, 111) && !settled(100, 89));
});

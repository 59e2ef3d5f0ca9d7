/**
 * OSU micro-benchmark programs (osu-latency, osu-bw, osu-bibw on 2 ranks, osu-allreduce on 3)
 * with small `-m` ranges: OSU's header and one `%-10d%20.2f` row per size, and `--json` rows in
 * the project's benchmark format. No timing assertions. Also the pure helpers (sweeps,
 * iteration counts, argument parsing).
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { validateReport } from "../src/bench/harness.js";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";
import { BW_LOOPS, LAT_LOOPS, loopsFor, osuRow, osuSizes, parseOsuArgs } from "../src/programs/osu/common.js";

let host: Host;
let dir: string;
before(async () => {
  host = await Host.start({});
  dir = mkdtempSync(join(tmpdir(), "myrixen-osu-"));
});
after(async () => {
  await host.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function runOsu(program: string, n: number, path: "native" | "bypass", argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const res = await new Job(host, {
    n,
    path,
    program: new URL(`../src/programs/osu/${program}.js`, import.meta.url),
    argv,
    pages: 8192,
    output: (rank, stream, line) => (stream === "stdout" ? out : err).push(`${rank}|${line}`),
  }).run();
  const rank0 = out.filter((l) => l.startsWith("0|")).map((l) => l.slice(2));
  return { res, lines: rank0, err: err.join("\n") };
}

test("sweeps, iteration counts and rows follow OSU", () => {
  assert.equal(osuSizes(0, 1 << 22).length, 24);
  assert.equal(osuSizes(1, 1 << 22).length, 23);
  assert.equal(osuSizes(1, 1 << 20).length, 21);
  assert.deepEqual(osuSizes(0, 8), [0, 1, 2, 4, 8]);
  assert.deepEqual(loopsFor(8192, LAT_LOOPS, { min: 0, max: 0 }), { iters: 10000, skip: 100 });
  assert.deepEqual(loopsFor(16384, LAT_LOOPS, { min: 0, max: 0 }), { iters: 1000, skip: 10 });
  assert.deepEqual(loopsFor(16384, BW_LOOPS, { min: 0, max: 0 }), { iters: 20, skip: 2 });
  assert.deepEqual(loopsFor(16384, BW_LOOPS, { min: 0, max: 0, iters: 7, skip: 1 }), { iters: 7, skip: 1 });
  assert.equal(osuRow(8, 1.234), "8                         1.23");
  const d = { min: 0, max: 4194304 };
  assert.deepEqual(parseOsuArgs("osu-latency", ["-m", "4:1K"], d), { min: 4, max: 1024 });
  assert.deepEqual(parseOsuArgs("osu-latency", ["-m", "64", "-i", "5", "-x", "0"], d), {
    min: 0,
    max: 64,
    iters: 5,
    skip: 0,
  });
  assert.throws(() => parseOsuArgs("osu-bw", ["-m", "8:4"], d), /minimum 8 is larger than maximum 4/);
  assert.throws(() => parseOsuArgs("osu-bw", ["-i", "0"], d), /-i expects an integer >= 1/);
  assert.throws(() => parseOsuArgs("osu-bw", ["--nope"], d), /unknown argument "--nope"/);
  assert.equal(parseOsuArgs("osu-bw", ["--jit-warmup", "0"], d).jitWarmup, 0);
  assert.throws(
    () => parseOsuArgs("osu-bw", ["--jit-warmup", "-1"], d),
    /--jit-warmup expects an integer >= 0/,
  );
  assert.throws(() => parseOsuArgs("osu-bw", ["--jit-warmup"], d), /--jit-warmup needs a value/);
});

const ROW = /^(\d+) +(\d+\.\d\d)$/;

const cases = [
  {
    program: "latency",
    bench: "osu-latency",
    n: 2,
    path: "native" as const,
    argv: ["-m", "0:64", "-i", "200", "-x", "20"],
    sizes: [0, 1, 2, 4, 8, 16, 32, 64],
    title: "# OSU MPI Latency Test v7.4",
    columns: "# Size          Latency (us)",
    metric: "latency_us",
  },
  {
    program: "bw",
    bench: "osu-bw",
    n: 2,
    path: "bypass" as const,
    argv: ["-m", "1:16K", "-i", "4", "-x", "1"],
    sizes: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    title: "# OSU MPI Bandwidth Test v7.4",
    columns: "# Size      Bandwidth (MB/s)",
    metric: "bandwidth_MBps",
  },
  {
    program: "bibw",
    bench: "osu-bibw",
    n: 2,
    path: "native" as const,
    argv: ["-m", "512:4K", "-i", "4", "-x", "1"],
    sizes: [512, 1024, 2048, 4096],
    title: "# OSU MPI Bi-Directional Bandwidth Test v7.4",
    columns: "# Size      Bandwidth (MB/s)",
    metric: "bandwidth_MBps",
  },
  {
    program: "allreduce",
    bench: "osu-allreduce",
    n: 3,
    path: "native" as const,
    argv: ["-m", "1:256", "-i", "20", "-x", "2"],
    sizes: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    title: "# OSU MPI Allreduce Latency Test v7.4",
    columns: "# Size       Avg Latency(us)",
    metric: "latency_us",
  },
];

for (const c of cases) {
  test(`${c.bench} on ${c.n} ranks (${c.path}): OSU header, one row per size, JSON rows`, async () => {
    const file = join(dir, `${c.bench}.json`);
    const { res, lines, err } = await runOsu(c.program, c.n, c.path, [...c.argv, "--json", file]);
    assert.equal(res.exitCode, 0, `exit ${res.exitCode}: ${res.failed?.error?.message ?? ""}\n${err}`);
    assert.equal(lines[0], c.title);
    assert.equal(lines[1], "# Datatype: MPI_CHAR.");
    assert.match(
      lines[2],
      new RegExp(
        `^# Warm-up: \\d+ untimed iterations at ${c.sizes[0] === 0 ? "0 and 1" : c.sizes[0]} B before the sweep, for V8's JIT \\(--jit-warmup 0: none\\)$`,
      ),
    );
    assert.equal(lines[3], c.columns);
    const rows = lines.slice(4);
    assert.equal(rows.length, c.sizes.length, lines.join("\n"));
    rows.forEach((line, i) => {
      const m = ROW.exec(line);
      assert.ok(m, `row "${line}"`);
      assert.equal(Number(m[1]), c.sizes[i]);
      assert.equal(line.length, 30);
    });
    const report = validateReport(JSON.parse(readFileSync(file, "utf8")));
    assert.equal(report.rows.length, c.sizes.length);
    report.rows.forEach((r, i) => {
      assert.equal(r.bench, c.bench);
      assert.equal(r.transport, c.path);
      assert.equal(r.scope, "intra-host");
      assert.equal(r.bytes, c.sizes[i]);
      assert.equal(r.metric, c.metric);
      assert.equal(r.runs, 1);
      assert.ok(r.median > 0 && r.min <= r.median && r.median <= r.max);
    });
  });
}

// Both ranks post 64 receives and 64 sends of 512 KiB: per peer one rendezvous is pushed
// through the channel (its lane fills), the rest pulled by the NIC, whose completions answer
// the senders with NOTIFYs into that full lane. Waiting there (polling the NIC from inside its
// own event handler) hung both ranks in MPI_Waitall every time; the NOTIFY now waits its turn.
test("osu-bibw with windows of large messages both ways completes on the bypass path", {
  timeout: 120_000,
}, async () => {
  for (const size of ["524288", "1048576"]) {
    const { res, lines, err } = await runOsu("bibw", 2, "bypass", [
      "-m",
      `${size}:${size}`,
      "-i",
      "3",
      "-x",
      "1",
    ]);
    assert.equal(res.exitCode, 0, `exit ${res.exitCode}: ${res.failed?.error?.message ?? ""}\n${err}`);
    const m = ROW.exec(lines[4] ?? "");
    assert.ok(m, lines.join("\n"));
    assert.equal(Number(m[1]), Number(size));
    assert.ok(Number(m[2]) > 0);
  }
});

test("--jit-warmup 0: OSU's own method, no warm-up before the sweep and no line for it", async () => {
  const { res, lines, err } = await runOsu("latency", 2, "native", [
    "-m",
    "0:8",
    "-i",
    "50",
    "-x",
    "5",
    "--jit-warmup",
    "0",
  ]);
  assert.equal(res.exitCode, 0, err);
  assert.deepEqual(lines.slice(0, 3), [
    "# OSU MPI Latency Test v7.4",
    "# Datatype: MPI_CHAR.",
    "# Size          Latency (us)",
  ]);
  assert.equal(lines.length, 3 + 5);
});

test("the point-to-point tests need exactly two ranks; bad arguments fail with exit code 2", async () => {
  const three = await runOsu("latency", 3, "native", ["-m", "8"]);
  assert.equal(three.res.exitCode, 2);
  assert.match(three.err, /osu-latency: this test requires exactly two processes, got 3/);
  // Rank 0 says why and fails the job; the others end quietly, so none can end the job first
  // (the ranks start at once) and stop rank 0 before its line.
  assert.equal(three.res.failed?.rank, 0);
  assert.deepEqual(
    three.res.ranks.map((r) => r.exitCode),
    [2, 0, 0],
  );
  const bad = await runOsu("bw", 2, "native", ["-m", "x:y"]);
  assert.equal(bad.res.exitCode, 2);
  assert.match(bad.err, /osu-bw: bad -m "x:y"/);
});

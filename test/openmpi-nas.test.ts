// `myrixen run -n N --openmpi nas-is`: after the job, MyriXen's IS in C (src/bench/openmpi/is.c)
// runs over Open MPI with the same ranks and class and says its time and verification; with
// --out its row joins the report. Where Open MPI is missing the run says how to get it and
// succeeds. Shapes only: the times are the benchmarks' business.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { validateReport } from "../src/bench/harness.js";
import { findOpenMpi, OPENMPI_INSTALL } from "../src/bench/openmpi.js";
import { nasMpirunArgs, parseNasReport, runOpenMpiNas } from "../src/bench/openmpi-nas.js";
import { runCli } from "./helpers/cli.js";

const found = await findOpenMpi();
const skip = "missing" in found ? `Open MPI is not installed (${OPENMPI_INSTALL})` : false;

test("the C IS verifies on 1, 2 and 4 ranks over Open MPI, and a wrong class or rank count is refused", {
  skip,
}, async () => {
  for (const ranks of [1, 2, 4]) {
    const r = await runOpenMpiNas("nas-is", "S", ranks);
    assert.ok("result" in r, JSON.stringify(r));
    assert.equal(r.result.verified, true, `class S on ${ranks} ranks verifies`);
    assert.equal(r.result.ranks, ranks);
    assert.equal(r.result.path, "openmpi");
    assert.ok(r.result.time_s >= 0 && r.result.mops > 0);
    assert.match(r.how, /Open MPI \d+\.\d+\.\d+, mpirun -np \d, shared memory .*not NPB's own code/);
  }
  const three = await runOpenMpiNas("nas-is", "S", 3);
  assert.ok("missing" in three);
  assert.match(three.missing, /mpirun -np 3 of IS class S failed .*power-of-two/);
  const cls = await runOpenMpiNas("nas-is", "Q", 2);
  assert.ok("missing" in cls);
  assert.match(cls.missing, /usage: openmpi-is S\|W\|A/);
});

test("the C CG verifies on 1, 2 and 3 ranks over Open MPI (rows split unevenly too)", { skip }, async () => {
  for (const ranks of [1, 2, 3]) {
    const r = await runOpenMpiNas("nas-cg", "S", ranks);
    assert.ok("result" in r, JSON.stringify(r));
    assert.equal(r.result.verified, true, `class S on ${ranks} ranks verifies`);
    assert.equal(r.result.kernel, "cg");
    assert.match(r.how, /src\/bench\/openmpi\/cg\.c/);
  }
});

test("no Open MPI on the path: one line says how to get it; a kernel without a counterpart says so", async () => {
  const none = await runOpenMpiNas("nas-is", "S", 2, "/nonexistent");
  assert.ok("missing" in none);
  assert.match(
    none.missing,
    /^openmpi: mpicc and mpirun not found.*apt-get install openmpi-bin libopenmpi-dev/,
  );
  const ep = await runOpenMpiNas("nas-ep", "S", 2);
  assert.ok("missing" in ep);
  assert.match(ep.missing, /nas-ep has no Open MPI counterpart here \(nas-is, nas-cg have\)/);
});

test("the report lines are read as NPB prints them; a report without them is no result", () => {
  const out = [
    " IS Benchmark Completed",
    " Time in seconds =                     0.37",
    " Time exact      =                     0.371234",
    " Mop/s total     =                   226.12",
    " Verification    =               UNSUCCESSFUL",
  ].join("\n");
  assert.deepEqual(parseNasReport(out, "A", 2), {
    kernel: "is",
    class: "A",
    ranks: 2,
    path: "openmpi",
    verified: false,
    time_s: 0.371234,
    mops: 226.12,
  });
  assert.equal(parseNasReport(" Time exact = 1.0\n", "A", 2), undefined);
  const tools = { mpicc: "/usr/bin/mpicc", mpirun: "/usr/bin/mpirun", version: "4.1.4" };
  const args = nasMpirunArgs(tools, 4, "/cache/openmpi-is-x", "W");
  assert.deepEqual(args.slice(0, 2), ["-np", "4"]);
  assert.deepEqual(args.slice(-2), ["/cache/openmpi-is-x", "W"]);
  assert.ok(args.join(" ").includes("--mca btl self,vader"));
  assert.ok(
    nasMpirunArgs({ ...tools, version: "5.0.3" }, 2, "b", "S")
      .join(" ")
      .includes("--mca btl self,sm"),
  );
});

test("myrixen run --openmpi: Open MPI's IS after the job, its row beside bypass in the report; wrong uses refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-ompi-nas-"));
  try {
    // With the kernel's own options too (--warmup): the class is read from the same arguments.
    const r = await runCli([
      "run",
      "-n",
      "2",
      "--openmpi",
      "--out",
      dir,
      "nas-is",
      "--class",
      "S",
      "--warmup",
      "2",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const report = validateReport(JSON.parse(readFileSync(join(dir, "bench.json"), "utf8")));
    const transports = report.rows.map((row) => `${row.bench}/${row.transport}`).sort();
    // How MyriXen's kernel warmed up comes first: its time is not NPB's first pass.
    assert.match(
      report.notes?.[0] ?? "",
      /^nas-is\.S: MyriXen's timed loop followed 2 untimed iterations \([\d.]+ s, --warmup 2; --warmup 1 is NPB's rule\)/,
    );
    if (skip) {
      assert.deepEqual(transports, ["nas-is.S/bypass"]);
      assert.match(report.notes?.join("\n") ?? "", /apt-get install openmpi-bin/);
    } else {
      assert.deepEqual(transports, ["nas-is.S/bypass", "nas-is.S/openmpi"]);
      assert.match(
        r.stderr,
        /openmpi: IS class S on 2 ranks: [\d.]+ s, [\d.]+ Mop\/s, verification SUCCESSFUL/,
      );
      assert.match(
        report.notes?.[1] ?? "",
        /^openmpi: IS class S on 2 ranks.*one untimed iteration, NPB's rule/,
      );
      assert.match(readFileSync(join(dir, "bench.html"), "utf8"), /data-pair="bypass\/openmpi"/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // A job that fails (here: IS on a rank count that is no power of two) is not followed by Open MPI.
  const bad = await runCli(["run", "-n", "3", "--oversubscribe", "--openmpi", "nas-is"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /the number of ranks must be a power of two, got 3/);
  assert.match(bad.stderr, /openmpi: not run \(the job failed/);
  // A class the kernel does not know is refused before anything runs, Open MPI included.
  const usage = await runCli(["run", "-n", "2", "--openmpi", "nas-is", "--class", "Z"]);
  assert.equal(usage.code, 2);
  assert.equal(usage.stderr, 'myrixen run: is: unknown class "Z" (expected one of S, W, A)\n');
  const osu = await runCli(["run", "-n", "2", "--openmpi", "osu-latency"]);
  assert.equal(osu.code, 2);
  assert.match(
    osu.stderr,
    /--openmpi runs the Open MPI counterparts of nas-is and nas-cg; osu-latency has none/,
  );
  const hosts = await runCli(["run", "-n", "2", "--openmpi", "--hosts", "127.0.0.1:1*2", "nas-is"]);
  assert.equal(hosts.code, 2);
  assert.match(hosts.stderr, /--openmpi runs Open MPI on this host only/);
});

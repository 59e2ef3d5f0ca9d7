// Tests for the openmpi peer of `myrixen bench`: where Open MPI is missing it is left out with
// one line that says how to get it; where it is installed (scripts/ensure-openmpi.mjs installs
// it before `npm test`), the C bench is built once into a cache, answers bad commands with an
// error and carries on, and pingpong and stream produce openmpi rows in both scopes, with
// bypass/openmpi in the table; openmpi-cico (Open MPI with its single copy off, one host only)
// produces its own rows. Shapes only: speed is measured by `myrixen bench`.

import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type BenchRow, profileFor, renderTable } from "../src/bench/harness.js";
import { type LinkedHosts, startLinkedHosts } from "../src/bench/hosts.js";
import { benchPingpong, benchStream, suiteTransports } from "../src/bench/mx.js";
import {
  buildOpenMpiBench,
  findOpenMpi,
  mpirunArgs,
  OPENMPI_CICO,
  OPENMPI_INSTALL,
  OpenMpiPair,
  openMpiVerdicts,
  startOpenMpiPeer,
  takeOpenMpiNotes,
} from "../src/bench/openmpi.js";
import { computeRatios } from "../src/bench/report.js";
import { Host } from "../src/host/host.js";

const found = await findOpenMpi();
const skip = "missing" in found ? `Open MPI is not installed (${OPENMPI_INSTALL})` : false;

/** The quick profile with two measured runs and none dropped: enough for shapes. */
const tiny = { ...profileFor(true), runs: 2, warmupRuns: 0 };

let host: Host | undefined;
let linked: LinkedHosts | undefined;
before(async () => {
  host = await Host.start({});
});
after(async () => {
  await host?.stop();
  await linked?.stop();
});

function assertRows(
  rows: readonly BenchRow[],
  bench: string,
  scope: string,
  sizes: number[],
  transport = "openmpi",
): void {
  const mine = rows.filter((r) => r.transport === transport);
  assert.deepEqual(
    mine.map((r) => r.bytes),
    sizes,
    `one ${transport} row per size`,
  );
  for (const r of mine) {
    assert.equal(r.bench, bench);
    assert.equal(r.scope, scope);
    assert.equal(r.metric, bench === "pingpong" ? "latency_us" : "bandwidth_MBps");
    assert.equal(r.runs, tiny.runs);
    assert.ok(Number.isFinite(r.median) && r.median > 0, `median ${r.median}`);
    assert.ok(r.min <= r.median && r.median <= r.max);
  }
}

test("openmpi is a transport of both suites in both scopes", () => {
  for (const bench of ["pingpong", "stream"] as const)
    for (const scope of ["intra-host", "cross-host"] as const)
      assert.ok(suiteTransports(bench, scope).includes("openmpi"), `${bench} ${scope}`);
});

test("openmpi-cico is a transport of both suites on one host only", () => {
  for (const bench of ["pingpong", "stream"] as const) {
    assert.ok(suiteTransports(bench, "intra-host").includes(OPENMPI_CICO), bench);
    assert.ok(!suiteTransports(bench, "cross-host").includes(OPENMPI_CICO), bench);
  }
});

test("openmpi-cico starts Open MPI with the shared-memory btl's single copy off; openmpi leaves it as it is", () => {
  const tools = (version: string) => ({ mpicc: "/usr/bin/mpicc", mpirun: "/usr/bin/mpirun", version });
  const cico = mpirunArgs(tools("4.1.4"), "intra-host", "/bench", "cico");
  const at = cico.indexOf("btl_vader_single_copy_mechanism");
  assert.ok(at > 0 && cico[at - 1] === "--mca" && cico[at + 1] === "none", cico.join(" "));
  assert.equal(cico.at(-1), "/bench", "the binary comes last");
  // Open MPI 5 names its shared-memory btl sm.
  assert.ok(
    mpirunArgs(tools("5.0.3"), "intra-host", "/bench", "cico").includes("btl_sm_single_copy_mechanism"),
  );
  const plain = mpirunArgs(tools("4.1.4"), "intra-host", "/bench");
  assert.ok(!plain.some((a) => a.includes("single_copy")), plain.join(" "));
  assert.throws(() => mpirunArgs(tools("4.1.4"), "cross-host", "/bench", "cico"), /one host only/);
});

test("an Open MPI without the knob to turn its single copy off gets no openmpi-cico column, and one line says why", async () => {
  // A stand-in Open MPI 5 (single copy moved into its smsc framework): ompi_info lists no
  // btl_sm_single_copy_mechanism, so a column claiming copy-in/copy-out would measure the default.
  const dir = mkdtempSync(join(tmpdir(), "myrixen-fake-ompi-"));
  const script = (name: string, body: string) => {
    writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(dir, name), 0o755);
  };
  script("mpicc", "exit 1");
  script("mpirun", 'echo "mpirun (Open MPI) 5.0.3"');
  script("ompi_info", 'echo "mca:btl:sm:param:btl_sm_eager_limit:value:4096"');
  try {
    takeOpenMpiNotes();
    assert.equal(await startOpenMpiPeer("intra-host", undefined, dir, "cico"), undefined);
    assert.deepEqual(takeOpenMpiNotes(), [
      "openmpi-cico: Open MPI 5.0.3 has no btl_sm_single_copy_mechanism (ompi_info does not list it), so its single copy cannot be turned off here; not measured",
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("without mpicc and mpirun, openmpi is left out with one line saying how to get them, and nothing fails", async () => {
  const missing = await findOpenMpi("/nonexistent-bin");
  assert.ok("missing" in missing);
  assert.match(missing.missing, /mpicc and mpirun not found/);
  takeOpenMpiNotes();
  assert.equal(await startOpenMpiPeer("intra-host", undefined, "/nonexistent-bin"), undefined);
  assert.deepEqual(takeOpenMpiNotes(), [missing.missing]);
  assert.ok(missing.missing.endsWith("apt-get install openmpi-bin libopenmpi-dev"));

  // Through the suite: the other transports are measured, openmpi has no row.
  const saved = process.env.PATH;
  process.env.PATH = "/nonexistent-bin";
  let rows: BenchRow[];
  try {
    rows = await benchPingpong(host!, tiny, { transports: ["bypass", "openmpi"], sizes: [8] });
  } finally {
    process.env.PATH = saved;
  }
  assert.deepEqual(
    rows.map((r) => r.transport),
    ["bypass"],
  );
  assert.equal(takeOpenMpiNotes().length, 1);
});

test("the C bench is compiled once into the cache and reused while its source is unchanged", {
  skip,
}, async () => {
  if ("missing" in found) return;
  const dir = mkdtempSync(join(tmpdir(), "myrixen-openmpi-"));
  try {
    const first = await buildOpenMpiBench(found.tools, dir);
    const built = statSync(first).mtimeMs;
    const again = await buildOpenMpiBench(found.tools, dir);
    assert.equal(again, first);
    assert.equal(statSync(again).mtimeMs, built, "not rebuilt");
    assert.match(first, /openmpi-bench-[0-9a-f]{16}$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an Open MPI pair answers a bad batch with an error and keeps measuring", { skip }, async () => {
  if ("missing" in found) return;
  const pair = await OpenMpiPair.start(found.tools, "intra-host", await buildOpenMpiBench(found.tools));
  try {
    await assert.rejects(pair.pingpong(-1, 10, 0), /out of range/);
    await assert.rejects(pair.stream(8, 10, 0, 100_000), /out of range/);
    const us = await pair.pingpong(8, 100, 10);
    assert.ok(Number.isFinite(us) && us > 0);
    const mbps = await pair.stream(4096, 2, 1, 8);
    assert.ok(Number.isFinite(mbps) && mbps > 0);
  } finally {
    await pair.stop();
  }
});

test("on one host, pingpong and stream measure openmpi beside bypass, and the table and the report show bypass/openmpi", {
  skip,
}, async () => {
  takeOpenMpiNotes();
  const pp = await benchPingpong(host!, tiny, { transports: ["bypass", "openmpi"], sizes: [8, 65536] });
  assertRows(pp, "pingpong", "intra-host", [8, 65536]);
  const st = await benchStream(host!, tiny, { transports: ["openmpi"], sizes: [65536] });
  assertRows(st, "stream", "intra-host", [65536]);
  const notes = takeOpenMpiNotes();
  assert.ok(
    notes.some((n) =>
      /openmpi, intra-host: Open MPI .*btl self,(vader|sm).*busy-polling.*--bind-to none/.test(n),
    ),
    notes.join("\n"),
  );

  const table = renderTable(pp, { ratios: [["bypass", "openmpi"]], color: false });
  assert.match(table, /bypass\/openmpi/);
  const ratios = computeRatios(pp).filter((r) => r.pair === "bypass/openmpi");
  assert.deepEqual(
    ratios.map((r) => r.bytes),
    [8, 65536],
  );
  assert.deepEqual(
    openMpiVerdicts(pp).map((v) => v.replace(/: .*/, "")),
    ["bypass / openmpi, 8 B latency", "bypass / openmpi, 64 KiB latency"],
  );
});

test("on one host, openmpi-cico measures Open MPI's copy-in/copy-out beside openmpi, each note saying how it copied", {
  skip,
}, async () => {
  takeOpenMpiNotes();
  const pp = await benchPingpong(host!, tiny, {
    transports: ["bypass", "openmpi", OPENMPI_CICO],
    sizes: [65536],
  });
  assertRows(pp, "pingpong", "intra-host", [65536]);
  assertRows(pp, "pingpong", "intra-host", [65536], OPENMPI_CICO);
  const st = await benchStream(host!, tiny, { transports: [OPENMPI_CICO], sizes: [65536] });
  assertRows(st, "stream", "intra-host", [65536], OPENMPI_CICO);
  const notes = takeOpenMpiNotes();
  assert.ok(
    notes.some((n) => /^openmpi, intra-host: .*single copy: [a-z]+/.test(n)),
    `the default's note names its single-copy mechanism:\n${notes.join("\n")}`,
  );
  assert.ok(
    notes.some((n) => /^openmpi-cico, intra-host: .*single_copy_mechanism none: copy-in\/copy-out/.test(n)),
    notes.join("\n"),
  );
  assert.deepEqual(
    computeRatios(pp)
      .filter((r) => r.pair.startsWith("bypass/openmpi"))
      .map((r) => r.pair)
      .sort(),
    ["bypass/openmpi", "bypass/openmpi-cico"],
  );
  assert.ok(openMpiVerdicts(pp).some((v) => v.startsWith("bypass / openmpi-cico, 64 KiB latency: ")));
});

test("across hosts, openmpi runs over TCP and produces cross-host rows", { skip }, async () => {
  linked = await startLinkedHosts();
  takeOpenMpiNotes();
  const hosts = [linked.a, linked.b] as const;
  const pp = await benchPingpong(hosts, tiny, { transports: ["openmpi"], sizes: [8] });
  assertRows(pp, "pingpong", "cross-host", [8]);
  const st = await benchStream(hosts, tiny, { transports: ["openmpi"], sizes: [65536] });
  assertRows(st, "stream", "cross-host", [65536]);
  assert.ok(takeOpenMpiNotes().some((n) => /openmpi, cross-host: .*btl self,tcp/.test(n)));

  // openmpi-cico asked for across hosts: no rows, one line saying it runs on one host only.
  const none = await benchPingpong(hosts, tiny, { transports: [OPENMPI_CICO], sizes: [8] });
  assert.deepEqual(none, []);
  assert.deepEqual(
    takeOpenMpiNotes().filter((n) => n.startsWith(OPENMPI_CICO)),
    [
      `${OPENMPI_CICO}: one host only (over TCP there is no single copy to turn off); not measured cross-host`,
    ],
  );
});

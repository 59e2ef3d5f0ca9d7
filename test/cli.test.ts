/** The `myrixen` command as a user runs it: help, bad usage, the demo, and a benchmark writing JSON. */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { validateReport } from "../src/bench/harness.js";
import { BIN, runCli } from "./helpers/cli.js";

const run = (...args: string[]) => runCli(args);

test("--help lists the commands", async () => {
  const r = await run("--help");
  assert.equal(r.code, 0);
  for (const c of ["demo", "bench"]) assert.match(r.stdout, new RegExp(`^  ${c}`, "m"));
  const b = await run("bench", "--help");
  assert.match(b.stdout, /substrate/);
  assert.match(b.stdout, /--json <file>/);
  assert.match(b.stdout, /--scope <scope>/);
  assert.match(b.stdout, /against raw-tcp \(the wire\) and raw-chain/);
});

test("--version, --help and a mistyped flag load no command's code (the hypervisor, the NIC, zod)", async () => {
  // A loader hook that names every module the command resolves, on stderr.
  const dir = mkdtempSync(join(tmpdir(), "myrixen-loads-"));
  try {
    const hooks = join(dir, "hooks.mjs");
    writeFileSync(
      hooks,
      [
        'import { writeSync } from "node:fs";',
        "export async function resolve(s, c, next) {",
        "  const r = await next(s, c);",
        '  writeSync(2, "loaded " + r.url + "\\n");',
        "  return r;",
        "}",
      ].join("\n"),
    );
    const register = join(dir, "register.mjs");
    writeFileSync(
      register,
      `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`,
    );
    // Module by module (MYRIXEN_BUNDLES=0): the modules the hook sees. From the bundles (the
    // default): the modules each bundle file it sees holds (esbuild heads each with its path).
    const modulesIn = (url: string): string[] =>
      url.includes("/dist/src/bundles/")
        ? [
            ...readFileSync(fileURLToPath(url), "utf8").matchAll(
              /^\/\/ ((?:dist\/src|node_modules)\/\S+)$/gm,
            ),
          ].map((m) => `/${m[1]}`)
        : [url];
    for (const bundles of ["0", "1"])
      for (const args of [
        ["--version"],
        ["--help"],
        ["run", "--np"],
        ["list", "--bogus"],
        ["bench", "--help"],
      ]) {
        const r = await promisify(execFile)(process.execPath, ["--import", register, BIN, ...args], {
          env: { ...process.env, NO_COLOR: "1", MYRIXEN_BUNDLES: bundles },
        }).catch((e: { stdout: string; stderr: string }) => e);
        const files = [...r.stderr.matchAll(/^loaded (.*)$/gm)].map((m) => m[1]);
        const what = `MYRIXEN_BUNDLES=${bundles} myrixen ${args.join(" ")}`;
        assert.equal(
          files.some((u) => u.endsWith("/dist/src/bundles/cli.js")),
          bundles === "1",
          `${what}: the CLI's bundle used iff bundles are on`,
        );
        const loaded = files.flatMap(modulesIn);
        assert.ok(
          loaded.some((u) => u.endsWith("/cli/main.js")),
          `${what}: main.js, as a module or in the bundle`,
        );
        const heavy = loaded.filter((u) =>
          /\/node_modules\/zod\/|\/src\/(nic|mx|mpi|netback|netfront|dashboard)\/|\/src\/xen\/(hypervisor|xenstore)\.js|\/src\/bench\/(mx|harness)\.js|\/src\/cluster\/(job|host-daemon)\.js/.test(
            u,
          ),
        );
        assert.deepEqual(heavy, [], `${what} loaded command code`);
      }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bad usage fails before anything runs, with a message saying what to fix", async () => {
  const suite = await run("bench", "nope");
  assert.equal(suite.code, 2);
  assert.match(suite.stderr, /unknown benchmark suite "nope"; available: substrate/);
  const json = await run("bench", "substrate", "--json", "/proc/no/such/dir/out.json");
  assert.equal(json.code, 2);
  assert.match(json.stderr, /cannot write benchmark JSON to \/proc\/no\/such\/dir\/out.json/);
  const requests = await run("demo", "--requests", "-5");
  assert.equal(requests.code, 2);
  assert.match(requests.stderr, /--requests must be a positive integer/);
  const transports = await run("bench", "pingpong", "--transports", "bypass,carrier-pigeon");
  assert.equal(transports.code, 2);
  assert.match(transports.stderr, /--transports: unknown "carrier-pigeon"/);
  const sizes = await run("bench", "stream", "--sizes", "8,lots");
  assert.equal(sizes.code, 2);
  assert.match(sizes.stderr, /lots/);
  const outDir = await run("bench", "--quick", "--out", "/proc/no/report");
  assert.equal(outDir.code, 2);
  assert.match(outDir.stderr, /cannot write the benchmark report to \/proc\/no\/report/);
  const scope = await run("bench", "pingpong", "--scope", "moon");
  assert.equal(scope.code, 2);
  assert.match(scope.stderr, /--scope: unknown "moon"; expected one of intra-host, cross-host, all/);
  const substrateCross = await run("bench", "substrate", "--scope", "cross-host");
  assert.equal(substrateCross.code, 2);
  assert.match(
    substrateCross.stderr,
    /--scope cross-host: the substrate suite measures one host only; cross-host applies to pingpong, stream, breakdown/,
  );
  const pigeon = await run("bench", "stream", "--scope", "cross-host", "--transports", "pigeon");
  assert.equal(pigeon.code, 2);
  assert.match(pigeon.stderr, /--transports: unknown "pigeon"/);
  // Known transports the run has no place for: said, with where they are measured, not
  // skipped in silence (before: exit 0 and no rows).
  const cico = await run("bench", "pingpong", "--scope", "cross-host", "--transports", "openmpi-cico");
  assert.equal(cico.code, 2);
  assert.match(
    cico.stderr,
    /--transports: openmpi-cico is not measured by pingpong \(cross-host\); it is measured by: pingpong --scope intra-host; stream --scope intra-host/,
  );
  const memcpy = await run("bench", "pingpong", "--transports", "memcpy,evtchn");
  assert.equal(memcpy.code, 2);
  assert.match(
    memcpy.stderr,
    /memcpy is not measured by pingpong \(intra-host\); it is measured by: stream --scope intra-host/,
  );
  assert.match(
    memcpy.stderr,
    /evtchn is not measured by pingpong \(intra-host\); it is measured by: substrate --scope intra-host/,
  );
  const cmd = await run("frobnicate");
  assert.equal(cmd.code, 2);
  assert.match(cmd.stderr.trim(), /^myrixen: unknown command frobnicate; see myrixen --help$/);
  // A file that is not a module is named as such, not evaluated ("vm is not defined").
  const notModule = await run("run", "-n", "1", "/etc/hostname");
  assert.equal(notModule.code, 2);
  assert.match(
    notModule.stderr,
    /"\/etc\/hostname" is not a program: give a built-in name .* or a TypeScript or JavaScript module/,
  );
  assert.doesNotMatch(notModule.stderr, /is not defined/);
});

test("the demo exchanges requests between two domains and verifies them", async () => {
  const r = await run("demo", "--requests", "20000");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /20,000 requests in/);
  assert.match(r.stdout, /saw the backend: .*Connected/);
  assert.match(r.stdout, /Verification = SUCCESSFUL/);
});

test("bench --quick --out DIR runs every suite and writes the JSON rows and the HTML report", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-report-"));
  try {
    // Every suite and both scopes, at the two sizes the comparisons name (the sweeps are the
    // suites' own tests' business; this one is about the whole run and its report). --json
    // into a directory that does not exist yet: it is made.
    const rowsFile = join(dir, "nested", "rows.json");
    const r = await run(
      "bench",
      "--quick",
      "--out",
      dir,
      "--json",
      rowsFile,
      "--sizes",
      "8,1M",
      "--transports",
      "bypass,raw-tcp,raw-sab,evtchn,ring",
    );
    assert.equal(r.code, 0, r.stderr);
    const report = validateReport(JSON.parse(readFileSync(join(dir, "bench.json"), "utf8")));
    assert.deepEqual(validateReport(JSON.parse(readFileSync(rowsFile, "utf8"))), report);
    const benches = new Set(report.rows.map((row) => row.bench));
    for (const b of ["evtchn-pingpong", "ring-throughput", "pingpong", "stream", "breakdown"])
      assert.ok(benches.has(b), b);
    for (const row of report.rows)
      assert.ok(row.min <= row.median && row.median <= row.max, `${row.bench} ${row.transport}`);
    assert.equal(report.machine.cpus.count > 0, true);
    // The substrate: an event channel against the bare wake-up, and the ring.
    const substrate = report.rows.filter(
      (row) => row.bench === "evtchn-pingpong" || row.bench === "ring-throughput",
    );
    assert.deepEqual(substrate.map((row) => `${row.bench}/${row.transport}/${row.scope}`).sort(), [
      "evtchn-pingpong/evtchn/intra-host",
      "evtchn-pingpong/raw-sab/intra-host",
      "ring-throughput/ring/intra-host",
    ]);
    for (const row of substrate) assert.ok(row.runs >= 3, `${row.bench} ${row.transport}: ${row.runs} runs`);
    assert.match(r.stdout, /evtchn\/raw-sab/);
    // The full report has both scopes of pingpong and stream, and the targets in words.
    for (const b of ["pingpong", "stream"])
      for (const t of ["bypass", "raw-tcp"])
        assert.ok(
          report.rows.some((row) => row.bench === b && row.transport === t && row.scope === "cross-host"),
          `${b} ${t} cross-host`,
        );
    assert.ok(report.rows.some((row) => row.bench === "pingpong" && row.scope === "intra-host"));
    assert.match(r.stdout, /across hosts, bypass \/ raw-tcp, 8 B latency: \d/);
    assert.match(r.stdout, /across hosts, bypass \/ raw-tcp, 1 MiB bandwidth: \d/);
    assert.doesNotMatch(r.stdout, /NOT met|target/, "no internal targets in what a user reads");
    const html = readFileSync(join(dir, "bench.html"), "utf8");
    assert.match(html, /<svg/);
    assert.match(html, /latency breakdown/i);
    assert.match(r.stdout, /latency breakdown/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bench pingpong --transports bypass,split: the split column, split/bypass, and the split path's cost per message", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-split-"));
  try {
    const file = join(dir, "rows.json");
    const r = await run(
      "bench",
      "pingpong",
      "--quick",
      "--sizes",
      "8",
      "--transports",
      "bypass,split,memcpy",
      "--json",
      file,
    );
    assert.equal(r.code, 0, r.stderr);
    // memcpy is a stream row: named in one line, and the rest is measured.
    assert.match(r.stderr, /--transports: memcpy is not measured by pingpong \(intra-host\)/);
    assert.match(r.stdout, /split\/bypass/);
    assert.match(
      r.stdout,
      /split path, pingpong, intra-host: per message [\d.]+ netback requests, [\d.]+ grant copies, [\d.]+ notifications, [\d.]+ bridge lookups/,
    );
    const rows = (
      JSON.parse(readFileSync(file, "utf8")) as {
        rows: { transport: string; bytes: number; median: number }[];
      }
    ).rows;
    // (larger messages on the split path: test/bench-cross-host.test.ts and split-path.test.ts)
    const split = rows.find((x) => x.transport === "split" && x.bytes === 8);
    assert.ok(split && split.median > 0, "a split row for 8 B");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bench pingpong --scope cross-host: rows between two linked hosts, raw-tcp, bypass / raw-tcp in words", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-cross-"));
  try {
    const cases = [
      // (stream across hosts, with every suite: "bench --quick --out DIR" above)
      { suite: "pingpong", sizes: "8", metric: "latency_us", target: /8 B latency/ },
    ];
    for (const c of cases) {
      const file = join(dir, `${c.suite}.json`);
      // The CLI's part: --scope, the table, the words and the report's notes. Each transport's
      // cross-host rows are test/bench-cross-host.test.ts's and bench-openmpi.test.ts's, and
      // the default set is suiteTransports' (bench-cross-host.test.ts).
      const r = await run(
        "bench",
        c.suite,
        "--scope",
        "cross-host",
        "--quick",
        "--sizes",
        c.sizes,
        "--transports",
        "bypass,raw-tcp",
        "--json",
        file,
      );
      assert.equal(r.code, 0, r.stderr);
      // What it prints on stderr besides its progress (the hosts' link coming and going) is
      // in the README.
      const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
      const other = r.stderr.split("\n").filter((l) => l !== "" && !/^\[\d+\] /.test(l));
      assert.ok(other.includes("tcp-link nic 2 <- nic 1: link up"), r.stderr);
      // (which end closes first depends on how the two hosts' threads ran)
      assert.ok(
        other.some((l) =>
          /^tcp-link nic 2 <- nic 1: link down \((closed locally|detached by the peer)\)$/.test(l),
        ),
        r.stderr,
      );
      for (const l of other)
        assert.ok(
          readme.includes(l.replace(/127\.0\.0\.1:\d+/g, "127.0.0.1:PORT")),
          `the README does not explain: ${l}`,
        );
      const report = validateReport(JSON.parse(readFileSync(file, "utf8")));
      // (openmpi's cross-host rows and the note on how it ran: test/bench-openmpi.test.ts)
      assert.deepEqual(report.rows.map((row) => row.transport).sort(), ["bypass", "raw-tcp"]);
      for (const row of report.rows) {
        assert.equal(row.bench, c.suite);
        assert.equal(row.scope, "cross-host");
        assert.equal(row.metric, c.metric);
        assert.ok(row.median > 0 && row.min <= row.median && row.median <= row.max);
        assert.ok(row.runs >= 3);
      }
      assert.match(r.stdout, new RegExp(`${c.suite}, cross-host \\(quick\\)`));
      assert.match(r.stdout, /bypass\/raw-tcp/);
      // The ratio is whatever the medians say, in words.
      assert.match(
        r.stdout,
        new RegExp(`across hosts, bypass / raw-tcp, ${c.target.source}: \\d+\\.\\d\\d× `),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("run -n 3 --oversubscribe starts three ranks of a TypeScript program; their output comes as printed", async () => {
  const prog = fileURLToPath(new URL("../../test/fixtures/guests/hello-rank.ts", import.meta.url));
  const r = await run("run", "-n", "3", "--oversubscribe", prog, "--class", "S");
  assert.equal(r.code, 0, r.stderr);
  for (const rank of [0, 1, 2])
    assert.match(r.stdout, new RegExp(`^hello from rank ${rank} of 3 on bypass --class S$`, "m"));
});

test("run: a failing rank ends the job with its error and a non-zero code; the others are stopped", async () => {
  const prog = fileURLToPath(new URL("./fixtures/guests/hello-rank.js", import.meta.url));
  const fail = await run("run", "-n", "3", "--oversubscribe", "--path", "native", prog, "--fail");
  assert.equal(fail.code, 1);
  assert.match(
    fail.stderr,
    /rank 1 failed: rank 1 fails on purpose \(at \S*hello-rank\.ts:\d+:\d+\); the other ranks were stopped/,
  );
  // Ranks 0 and 2 would never end by themselves: rank 1's exit code 3 stops them.
  const hang = await run("run", "-n", "3", "--oversubscribe", prog, "--hang");
  assert.equal(hang.code, 3);
  assert.match(hang.stderr, /rank 1 exited with code 3/);
});

test("run: bad usage is refused before anything starts", async () => {
  const none = await run("run", "-n", "2", "no-such-program");
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no program "no-such-program": give a built-in name/);
  const typo = await run("run", "-n", "2", "nas-eq");
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /no program "nas-eq" \(did you mean nas-ep\?\)/);
  const path = await run("run", "-n", "2", "--path", "pigeon", "nas-ep");
  assert.equal(path.code, 2);
  assert.match(path.stderr, /--path must be one of native, bypass, split/);
  const n = await run("run", "-n", "0", "nas-ep");
  assert.equal(n.code, 2);
  assert.match(n.stderr, /-n must be a positive integer/);
});

test("run PROGRAM --help: a built-in's own arguments, exit 0, nothing started", async () => {
  const osu = await run("run", "-n", "2", "osu-allreduce", "--help");
  assert.equal(osu.code, 0, osu.stderr);
  assert.match(osu.stdout, /^usage: osu-allreduce \[-m \[MIN:\]MAX\] .*--jit-warmup N/);
  assert.match(osu.stdout, /default 1:1048576/);
  assert.doesNotMatch(osu.stdout, /# OSU/, "no job ran");
  const nas = await run("run", "-n", "2", "nas-cg", "-h");
  assert.equal(nas.code, 0, nas.stderr);
  assert.match(nas.stdout, /^usage: nas-cg \[--class S\|W\|A\] \[--warmup auto\|N\]/);
  const ep = await run("run", "-n", "2", "nas-ep", "--help");
  assert.doesNotMatch(ep.stdout, /--warmup/, "EP has no loop to warm up");
});

test("run --path split: NAS EP over netfront/netback verifies", async () => {
  const r = await run("run", "-n", "2", "--path", "split", "nas-ep", "--class", "S");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Verification += +SUCCESSFUL/);
});

test("start (npm start) runs NAS EP and OSU on two hosts and three paths, prints the comparison, the noise verdict and the verification, and writes the rows and the report", {
  timeout: 600_000,
}, async () => {
  // Bad options are refused before anything starts.
  for (const [args, msg] of [
    [["--runs", "0"], /--runs must be a positive integer/],
    [["--quick", "--runs", "2"], /give --quick or --runs, not both/],
    [["--out", "/proc/no/report"], /cannot write the benchmark report to \/proc\/no\/report/],
  ] as const) {
    const bad = await run("start", ...args);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, msg);
  }
  const dir = mkdtempSync(join(tmpdir(), "myrixen-start-"));
  try {
    const json = join(dir, "rows.json");
    const out = join(dir, "report");
    // --quick: one run per cell, the same steps as the default's three runs.
    const r = await run("start", "--quick", "--json", json, "--out", out);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /two hosts .* linked over TCP, two guests each/);
    assert.match(r.stdout, /one run per cell \(no medians\)/);
    assert.match(r.stdout, /NAS EP class S, 4 ranks: time/);
    for (const scope of ["one host", "two hosts"]) {
      assert.match(
        r.stdout,
        new RegExp(`OSU latency 8 B, ${scope} +│ +[\\d.]+ µs │ +[\\d.]+ µs │ +[\\d.]+ µs │`),
      );
      assert.match(
        r.stdout,
        new RegExp(`OSU bandwidth 1 MiB, ${scope} +│ +\\d+ MB/s │ +\\d+ MB/s │ +\\d+ MB/s │`),
      );
    }
    assert.match(r.stdout, /bypass vs native/);
    assert.match(r.stdout, /split vs bypass/);
    assert.match(r.stdout, /split path, per frame through the driver domain .*: [\d.]+ grant copies/);
    // The verdict: noisy (load or spread), or no spread to judge by with one run.
    assert.match(r.stdout, /NOISY MACHINE: .*rerun|one run per cell: no spread to judge the noise by/);
    assert.match(
      r.stdout,
      /Verification = SUCCESSFUL on native, bypass, split +\(1 run each; whole job \d+ s\)/,
    );
    assert.match(r.stderr, /\[15\/15\] osu-bw on 2 ranks, across the hosts, split path/);
    // A clean stop: the hosts' links say goodbye, nobody is left reconnecting.
    assert.doesNotMatch(r.stderr, /; reconnecting/);
    // The rows: the benchmark row format, both scopes, all three paths, NAS at one size.
    const rep = validateReport(JSON.parse(readFileSync(json, "utf8")));
    assert.deepEqual(rep, validateReport(JSON.parse(readFileSync(join(out, "bench.json"), "utf8"))));
    for (const path of ["native", "bypass", "split"]) {
      for (const scope of ["intra-host", "cross-host"]) {
        const lat = rep.rows.filter(
          (x) => x.bench === "osu-latency" && x.transport === path && x.scope === scope,
        );
        assert.deepEqual(
          lat.map((x) => x.bytes),
          [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536],
        );
        assert.ok(
          rep.rows.some(
            (x) => x.bench === "osu-bw" && x.transport === path && x.scope === scope && x.bytes === 1 << 20,
          ),
        );
      }
      const ep = rep.rows.find((x) => x.bench === "nas-ep.S" && x.transport === path);
      assert.ok(ep && ep.metric === "ops_per_s" && ep.median > 0 && ep.runs === 1);
    }
    assert.ok(rep.rows.every((x) => x.runs === 1));
    const html = readFileSync(join(out, "bench.html"), "utf8");
    assert.match(html, /<figure class="bars"[^>]*data-bench="nas-ep\.S"/);
    assert.match(html, /Against the papers and peers/);
    assert.match(r.stdout, new RegExp(`report written to ${out}/bench\\.json and ${out}/bench\\.html`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * `myrixen start` — the main job (`npm start`): boots a virtual cluster on this machine — two
 * hosts (each a hypervisor, an emulated MX NIC and a driver domain), NICs linked over TCP, two
 * guests per host — and runs NAS EP class S on the 4 ranks and OSU latency and bandwidth
 * between 2 ranks on one host and across the hosts, on the native, bypass and split paths,
 * `--runs` times (default 3; the paths interleaved, so a burst of load hits them alike).
 * It prints one screen: medians with the ratios that matter (bypass against native, split
 * against bypass; a ratio whose cells' runs disagree is marked), what the split path cost the
 * driver domain, NAS's verification, and whether the machine was too noisy for the ratios to
 * mean much. `--json FILE` writes the rows in the benchmark row format; `--out DIR` writes
 * DIR/bench.json and the HTML report DIR/bench.html.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import Table from "cli-table3";
import pc from "picocolors";
import {
  type BenchReport,
  type BenchRow,
  describeMachine,
  finishMachineInfo,
  machineInfo,
  NOISY_SPREAD,
  prepareOutputFile,
  rowSpread,
  type Scope,
} from "../bench/harness.js";
import { nasBench, nasRow, RunSamples, readNasResult, readOsuRows } from "../bench/program-rows.js";
import { writeHtmlReport } from "../bench/report.js";
import type { HostAddress } from "../cluster/hostfile.js";
import { Job, type JobTarget } from "../cluster/job.js";
import { startLocalCluster } from "../cluster/local-cluster.js";
import type { NetStats } from "../netback/stats.js";
import { type EmbeddedObservation, observeEmbedded } from "./embedded.js";
import {
  benchResultFiles,
  emptyPathProblem,
  interruptible,
  missingDirs,
  removeEmptyDirs,
  writeResultFiles,
} from "./report-files.js";
import { resolveProgram } from "./run.js";
import { DEFAULT_RUNS, MAX_RUNS, StartUsageError } from "./usage.js";

const PATHS = ["native", "bypass", "split"] as const;
type Path = (typeof PATHS)[number];
const SCOPES: readonly Scope[] = ["intra-host", "cross-host"];
const SCOPE_WORDS: Record<Scope, string> = { "intra-host": "one host", "cross-host": "two hosts" };
/** A step of the main job that takes longer than this is stopped and reported. */
const STEP_LIMIT_MS = 120_000;

export { DEFAULT_RUNS, MAX_RUNS, StartUsageError };

const NAS = nasBench("ep", "S");

export interface StartOptions {
  dashboard?: HostAddress;
  /** Samples per cell (default DEFAULT_RUNS). */
  runs?: number;
  /** Write the rows here ({ machine, rows }, the benchmark row format). */
  json?: string;
  /** Write bench.json and bench.html (the HTML report) in this directory. */
  out?: string;
}

/**
 * OSU's loop counts are sized for sub-microsecond paths; a main job that must finish in a few
 * minutes runs fewer iterations (same method: warm-up skipped, then timed) where a message
 * takes tens of microseconds or more — across hosts and on the split path.
 */
function osuArgs(path: Path, scope: Scope, bench: "osu-latency" | "osu-bw", oneRun: boolean): string[] {
  const slow = path === "split" || scope === "cross-host";
  // On the fast paths OSU's own counts: V8 needs ~10,000 round trips before the MX code is
  // optimised, and a run that stops short measures the interpreter, not the path. Across
  // hosts a round trip is ~100 µs of wire: one run per cell (--quick, a smoke test that shows
  // every cell works, not figures to quote) takes a tenth (each size's loop still runs
  // ~25 ms), and on the split path half. On one host --quick runs 2,000 a size (the sizes
  // before 8 B are the warm-up): OSU's 10,000 cost 0.2 s on a quiet machine but 7–8 s beside
  // one busy process, where every hand-off of the spinning pair can wait for a core.
  // (Where the wire or the driver domain sets the pace, the JIT's warm-up before the sweep is
  // left out: it would add up to half a second a run for nothing a figure shows.)
  const noJit = ["--jit-warmup", "0"];
  if (bench === "osu-latency") {
    if (path === "split")
      return ["-m", "0:65536", ...(oneRun ? ["-i", "100", "-x", "10"] : ["-i", "200", "-x", "20"]), ...noJit];
    if (scope === "cross-host")
      return [
        "-m",
        "0:65536",
        ...(oneRun ? ["-i", "200", "-x", "50"] : ["-i", "2000", "-x", "500"]),
        ...noJit,
      ];
    return ["-m", "0:65536", ...(oneRun ? ["-i", "2000", "-x", "200"] : [])];
  }
  // Windows of 64 messages: on the slow paths eight windows a size (two, and one warm-up, in
  // --quick's smoke run: the split path across hosts moves ~190 MB/s).
  if (slow)
    return ["-m", "65536:1048576", ...(oneRun ? ["-i", "2", "-x", "1"] : ["-i", "8", "-x", "2"]), ...noJit];
  return ["-m", "65536:1048576", "-i", "20", "-x", "4"];
}

/** Checks the options before anything starts; throws StartUsageError saying what to fix. */
function checkOptions(opts: StartOptions): {
  runs: number;
  json?: string;
  out?: string;
  /** The directories made for --json and --out (removed again if the job ends without writing there). */
  created: string[];
} {
  const runs = opts.runs ?? DEFAULT_RUNS;
  if (!Number.isSafeInteger(runs) || runs < 1 || runs > MAX_RUNS)
    throw new StartUsageError(`--runs must be an integer from 1 to ${MAX_RUNS}, got ${opts.runs}`);
  for (const problem of [
    emptyPathProblem("--json", opts.json, "FILE"),
    emptyPathProblem("--out", opts.out, "DIR"),
  ])
    if (problem) throw new StartUsageError(problem);
  const created: string[] = [];
  try {
    let json: string | undefined;
    if (opts.json !== undefined) {
      created.push(...missingDirs(dirname(resolve(opts.json))));
      json = prepareOutputFile(opts.json);
    }
    if (opts.out !== undefined) {
      created.push(...missingDirs(opts.out));
      prepareOutputFile(join(opts.out, "bench.json"), "the benchmark report");
    }
    return { runs, json, out: opts.out, created };
  } catch (e) {
    removeEmptyDirs(created);
    throw new StartUsageError((e as Error).message);
  }
}

export async function runMainJob(
  out: (line: string) => void,
  err: (line: string) => void,
  opts: StartOptions = {},
): Promise<boolean> {
  const checked = checkOptions(opts);
  const scratch = mkdtempSync(join(tmpdir(), "myrixen-start-"));
  try {
    return await interruptible(
      "start",
      err,
      () => {
        rmSync(scratch, { recursive: true, force: true });
        removeEmptyDirs(checked.created);
      },
      () => mainJob(out, err, opts, checked, scratch),
    );
  } catch (e) {
    // Directories made for --json and --out that nothing was written in go again.
    removeEmptyDirs(checked.created);
    throw e;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

async function mainJob(
  out: (line: string) => void,
  err: (line: string) => void,
  opts: StartOptions,
  { runs, json, out: outDir }: ReturnType<typeof checkOptions>,
  /** Where the ranks' rows files go (removed by the caller). */
  dir: string,
): Promise<boolean> {
  const machine = machineInfo();
  const t0 = performance.now();
  const steps = runs * PATHS.length * 5;
  let step = 0;
  const progress = (run: number, what: string) =>
    err(pc.dim(`[${++step}/${steps}]${runs > 1 ? ` run ${run}/${runs}:` : ""} ${what}`));
  out(pc.bold("MyriXen: MPI over a cluster of VMs on this machine"));
  out(
    pc.dim(
      "  two hosts (hypervisor, emulated MX NIC, driver domain) linked over TCP, two guests each, as worker threads",
    ),
  );
  const cluster = await startLocalCluster(2, 2);
  // While it runs, `myrixen list`/`top`/`dashboard` see its hosts (and --dashboard serves the page).
  let observed: EmbeddedObservation | undefined;
  try {
    observed = await observeEmbedded(
      cluster.hosts.map((host, i) => ({
        host,
        name: `host${i + 1}`,
        linkAddress: cluster.targets[i].linkAddress,
      })),
      cluster.key,
      "myrixen start",
      opts,
      (l) => err(pc.dim(l)),
    );
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  const samples = new RunSamples();
  const nasTimes = new Map<Path, number[]>();
  const nasVerified = new Map<Path, boolean>();
  const logs: string[] = [];
  const keep = (rank: number, _s: string, line: string) => logs.push(`[${rank}] ${line}`);
  const splitCost = { frames: 0, copies: 0, notifications: 0, lookups: 0 };
  const run = async (targets: JobTarget[], n: number, path: Path, program: string, argv: string[]) => {
    const job = new Job(targets, {
      n,
      path,
      program: resolveProgram(program),
      argv,
      pages: 4096,
      output: keep,
    });
    // Each step takes seconds; one that runs for minutes is stuck, and says so rather than hang.
    let stuck = false;
    const timer = setTimeout(() => {
      stuck = true;
      void job.stop();
    }, STEP_LIMIT_MS);
    const r = await job.run().finally(() => clearTimeout(timer));
    if (stuck)
      throw new Error(
        `${program} on the ${path} path did not finish within ${STEP_LIMIT_MS / 1000} s and was stopped:\n${logs.slice(-20).join("\n")}`,
      );
    if (r.exitCode !== 0)
      throw new Error(
        `${program} on the ${path} path failed (exit ${r.exitCode}):\n${logs.slice(-20).join("\n")}`,
      );
  };
  try {
    const [h1] = cluster.targets;
    for (let r = 1; r <= runs; r++) {
      for (const path of PATHS) {
        progress(r, `NAS EP class S on 4 ranks (2 hosts × 2 guests), ${path} path`);
        const file = join(dir, `ep-${path}-${r}.json`);
        await run(cluster.targets, 4, path, "nas-ep", ["--class", "S", "--json", file]);
        const nas = readNasResult(file);
        samples.add([nasRow(nas, "cross-host", path)]);
        nasTimes.set(path, [...(nasTimes.get(path) ?? []), nas.time_s]);
        nasVerified.set(path, (nasVerified.get(path) ?? true) && nas.verified);
        for (const scope of SCOPES) {
          for (const bench of ["osu-latency", "osu-bw"] as const) {
            progress(
              r,
              `${bench} on 2 ranks, ${scope === "intra-host" ? "same host" : "across the hosts"}, ${path} path`,
            );
            const f = join(dir, `${bench}-${path}-${scope}-${r}.json`);
            const measureCost = path === "split" && scope === "intra-host" && bench === "osu-latency";
            const before = measureCost ? cluster.hosts[0].netStats() : undefined;
            await run(scope === "intra-host" ? [h1] : cluster.targets, 2, path, bench, [
              ...osuArgs(path, scope, bench, runs === 1),
              "--json",
              f,
            ]);
            if (before) addCost(splitCost, before, cluster.hosts[0].netStats());
            samples.add(readOsuRows(f, scope));
          }
        }
      }
    }
  } finally {
    await observed.stop();
    await cluster.stop();
  }

  const rows = sortRows(samples.rows());
  const report: BenchReport = { machine: finishMachineInfo(machine, rows), rows };
  const seconds = (performance.now() - t0) / 1000;
  printTable(rows, nasTimes, runs, out);
  if (splitCost.frames > 0) {
    const per = (v: number, d: number) => (v / splitCost.frames).toFixed(d);
    out(
      pc.dim(
        `  split path, per frame through the driver domain (OSU latency, one host): ${per(splitCost.copies, 1)} grant copies, ` +
          `${per(splitCost.notifications, 2)} notifications, ${per(splitCost.lookups, 1)} bridge lookups (${splitCost.frames} frames)`,
      ),
    );
  }
  out("");
  for (const line of noiseVerdict(report, runs)) out(line);
  const ok = PATHS.every((p) => nasVerified.get(p) === true);
  out("");
  out(
    `  NAS EP class S: Verification = ${ok ? pc.green("SUCCESSFUL") : pc.red("UNSUCCESSFUL")} on ${PATHS.join(", ")}` +
      pc.dim(`   (${runs} run${runs === 1 ? "" : "s"} each; whole job ${seconds.toFixed(0)} s)`),
  );
  // Each file is written whatever became of the others; one that cannot be (a full disk) is
  // a runtime failure that says where the rows are.
  const files = benchResultFiles(
    report,
    json === undefined ? undefined : { path: json, shown: opts.json! },
    outDir,
    (file) => {
      writeHtmlReport(file, report, { title: "MyriXen: npm start" });
      return file;
    },
    (line) => out(pc.dim(`  ${line}`)),
  );
  writeResultFiles("start", files, report);
  return ok;
}

/** OSU latency, then bandwidth, one host then two, then NAS; native, bypass, split; sizes up. */
function sortRows(rows: BenchRow[]): BenchRow[] {
  const benchRank = (b: string) => (b === "osu-latency" ? 0 : b === "osu-bw" ? 1 : 2);
  const pathRank = (t: string) => PATHS.indexOf(t as Path);
  return rows.sort(
    (a, b) =>
      benchRank(a.bench) - benchRank(b.bench) ||
      SCOPES.indexOf(a.scope) - SCOPES.indexOf(b.scope) ||
      pathRank(a.transport) - pathRank(b.transport) ||
      a.bytes - b.bytes,
  );
}

/** The one-screen comparison: a line per figure, medians per path, and the two ratios. */
function printTable(
  rows: readonly BenchRow[],
  nasTimes: Map<Path, number[]>,
  runs: number,
  out: (line: string) => void,
): void {
  const table = new Table({
    head: ["", "native", "bypass", "split", "bypass vs native", "split vs bypass"],
    style: pc.isColorSupported ? {} : { head: [], border: [] },
    chars: { mid: "", "left-mid": "", "mid-mid": "", "right-mid": "" },
    colAligns: ["left", "right", "right", "right", "right", "right"],
  });
  type Cell = { median: number; shaky: boolean };
  const shaky = (r: BenchRow | undefined) => r !== undefined && r.runs > 1 && rowSpread(r) > NOISY_SPREAD;
  let anyShaky = false;
  // Every ratio is a slowdown (> 1: slower): times divide as they are, rates the other way.
  const slow = (v: Cell, base: Cell, rate: boolean) => {
    if (!(base.median > 0 && v.median > 0 && Number.isFinite(v.median) && Number.isFinite(base.median)))
      return "—";
    const text = `${(rate ? base.median / v.median : v.median / base.median).toFixed(2)}×`;
    if (!v.shaky && !base.shaky) return text;
    anyShaky = true;
    return pc.yellow(`${text}?`);
  };
  const line = (label: string, cells: Record<Path, Cell>, fmt: (v: number) => string, rate: boolean) =>
    table.push([
      label,
      fmt(cells.native.median),
      fmt(cells.bypass.median),
      fmt(cells.split.median),
      slow(cells.bypass, cells.native, rate),
      slow(cells.split, cells.bypass, rate),
    ]);
  const per = (f: (p: Path) => Cell) => ({ native: f("native"), bypass: f("bypass"), split: f("split") });
  const find = (bench: string, path: Path, scope: Scope, bytes: number) =>
    rows.find((r) => r.bench === bench && r.transport === path && r.scope === scope && r.bytes === bytes);
  const cell = (r: BenchRow | undefined): Cell => ({ median: r?.median ?? Number.NaN, shaky: shaky(r) });
  const median = (xs: number[] | undefined) => {
    if (!xs || xs.length === 0) return Number.NaN;
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  line(
    "NAS EP class S, 4 ranks: time",
    per((p) => ({ median: median(nasTimes.get(p)), shaky: shaky(find(NAS, p, "cross-host", 0)) })),
    (v) => `${v.toFixed(2)} s`,
    false,
  );
  line(
    "NAS EP class S, 4 ranks: Mop/s",
    per((p) => {
      const c = cell(find(NAS, p, "cross-host", 0));
      return { ...c, median: c.median / 1e6 };
    }),
    (v) => v.toFixed(1),
    true,
  );
  for (const scope of SCOPES) {
    for (const bytes of [8, 65536])
      line(
        `OSU latency ${size(bytes)}, ${SCOPE_WORDS[scope]}`,
        per((p) => cell(find("osu-latency", p, scope, bytes))),
        (v) => `${v.toFixed(2)} µs`,
        false,
      );
    line(
      `OSU bandwidth 1 MiB, ${SCOPE_WORDS[scope]}`,
      per((p) => cell(find("osu-bw", p, scope, 1 << 20))),
      (v) => `${v.toFixed(0)} MB/s`,
      true,
    );
  }
  out("");
  out(runs > 1 ? pc.bold(`  medians of ${runs} runs per cell`) : pc.bold("  one run per cell (no medians)"));
  out(table.toString());
  out(
    pc.dim(
      "  native: a process of the driver domain on the NIC; bypass: a guest after myrifront/myrback set-up, straight to",
    ),
  );
  out(
    pc.dim(
      "  the NIC and its co-resident peers; split: the same MX over Ethernet through netfront, netback and the bridge.",
    ),
  );
  out(pc.dim("  Ratios are slowdowns (> 1 = slower): times as they are, rates inverted."));
  if (anyShaky)
    out(
      pc.yellow(
        `  ? the runs of a cell in this ratio spread more than ${NOISY_SPREAD}× (max/min): on this machine, that ratio is noise.`,
      ),
    );
}

/** Whether the ratios can be trusted: the harness's verdict (load average, spread of the runs). */
function noiseVerdict(report: BenchReport, runs: number): string[] {
  const m = report.machine;
  const out = [pc.dim(`  ${describeMachine({ ...m, noisy: false }, { color: false })}`)];
  if (m.noisy)
    out.push(
      pc.yellow(
        `  NOISY MACHINE: ${m.noiseReason}. The times above are unreliable and so may be the ratios: ` +
          "rerun on a quieter machine (or with more --runs) before quoting them.",
      ),
    );
  else if (runs === 1)
    out.push(
      pc.dim(
        "  one run per cell: no spread to judge the noise by (the load average was low); use --runs 3 or more",
      ),
    );
  else
    out.push(
      pc.dim(`  quiet enough: every cell's runs within ${NOISY_SPREAD}× of each other, load average low`),
    );
  return out;
}

/** Adds what the driver domain did between two readings of its counters. */
function addCost(
  sum: { frames: number; copies: number; notifications: number; lookups: number },
  a: NetStats,
  b: NetStats,
): void {
  sum.frames += b.totals.txFrames - a.totals.txFrames;
  sum.copies += b.totals.grantCopies - a.totals.grantCopies;
  sum.notifications +=
    b.totals.notificationsSent +
    b.totals.notificationsReceived -
    a.totals.notificationsSent -
    a.totals.notificationsReceived;
  // By MAC, or by endpoint for MX frames (netback/mx-steer.ts): one decision per frame either way.
  sum.lookups += b.bridge.lookups + b.bridge.mxSteered - a.bridge.lookups - a.bridge.mxSteered;
}

function size(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20} MiB` : bytes >= 1024 ? `${bytes >> 10} KiB` : `${bytes} B`;
}

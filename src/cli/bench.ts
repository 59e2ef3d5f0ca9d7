/**
 * `myrixen bench [SUITE]`: runs benchmark suites with their baselines in the same run, shows
 * progress, and prints a table with the ratios; `--json FILE` writes the rows, `--out DIR`
 * writes DIR/bench.json and a self-contained DIR/bench.html with plots. With no suite it runs
 * them all and writes the report to reports/bench-<time>/ unless --out says otherwise.
 * `--scope` places pingpong's and stream's two ranks on one host (intra-host), on two hosts
 * whose NICs are linked over loopback TCP (cross-host, measured with raw-tcp and raw-chain),
 * or both (all).
 * Every argument is checked before any benchmark starts.
 */
import { dirname, join, resolve } from "node:path";
import cliProgress from "cli-progress";
import pc from "picocolors";
import {
  type BenchProfile,
  type BenchReport,
  type BenchRow,
  describeMachine,
  finishMachineInfo,
  machineInfo,
  parseSizes,
  prepareOutputFile,
  profileFor,
  renderTable,
  type Scope,
} from "../bench/harness.js";
import { type LinkedHosts, startLinkedHosts } from "../bench/hosts.js";
import {
  benchPingpong,
  benchStream,
  chainVerdicts,
  crossHostVerdicts,
  mxVerdicts,
  splitCosts,
  suiteTransports,
} from "../bench/mx.js";
import { openMpiVerdicts, takeOpenMpiNotes } from "../bench/openmpi.js";
import { writeHtmlReport } from "../bench/report.js";
import { comparisonLines } from "../bench/report-ratios.js";
import { benchSubstrate, substrateVerdict } from "../bench/substrate.js";
import {
  ALL_TRANSPORTS,
  CROSS_HOST_SUITES,
  DEFAULT_SUITES,
  SCOPE_CHOICES,
  SUBSTRATE_TRANSPORTS,
  SUITES,
} from "../bench/transports.js";
import { Host } from "../host/host.js";
import { Hypervisor } from "../xen/hypervisor.js";
import { BenchExtras, setHtmlWriter } from "./bench-extras.js";
import {
  benchResultFiles,
  emptyPathProblem,
  interruptible,
  missingDirs,
  removeEmptyDirs,
  writeResultFiles,
} from "./report-files.js";
import { BenchUsageError } from "./usage.js";

setHtmlWriter((file, report) => writeHtmlReport(file, report));

export type Suite = string;

export { ALL_TRANSPORTS, BenchUsageError, CROSS_HOST_SUITES, DEFAULT_SUITES, SCOPE_CHOICES, SUITES };

export interface BenchCliOptions {
  quick?: boolean;
  json?: string;
  out?: string;
  sizes?: string;
  transports?: string;
  scope?: string;
}

/** Default sizes: OSU's sweeps (0 B / 1 B to 4 MiB), thinned out with --quick. */
function defaultSizes(suite: string, quick: boolean, scope: Scope = "intra-host"): number[] {
  if (scope === "cross-host" && quick)
    // Each cross-host point costs more than on one host (hundreds of µs per round trip,
    // ~1 GB/s), so --quick keeps the sizes the issue's targets need and one for rendezvous.
    return suite === "stream" ? [65536, 1 << 20] : [8, 65536];
  if (quick) return suite === "stream" ? [4096, 65536, 1 << 20, 4 << 20] : [0, 8, 4096, 65536, 1 << 20];
  const sweep: number[] = suite === "stream" ? [] : [0];
  for (let s = 1; s <= 4 << 20; s *= 4) sweep.push(s);
  if (!sweep.includes(4 << 20)) sweep.push(4 << 20);
  return sweep;
}

/**
 * The scopes `suite` runs in under `--scope` (or its default: intra-host for one suite, all
 * for the full report); throws a usage error for a scope the suite cannot run in.
 */
function scopesFor(suite: string, scope: (typeof SCOPE_CHOICES)[number], explicit: boolean): Scope[] {
  const canCross = CROSS_HOST_SUITES.includes(suite);
  if (scope === "intra-host") return ["intra-host"];
  if (scope === "all") return canCross ? ["intra-host", "cross-host"] : ["intra-host"];
  if (canCross) return ["cross-host"];
  if (explicit)
    throw new BenchUsageError(
      `--scope cross-host: the ${suite} suite measures one host only; cross-host applies to ${CROSS_HOST_SUITES.slice(0, -1).join(", ")} and ${CROSS_HOST_SUITES.at(-1)}`,
    );
  return [];
}

/** The transports a suite measures in a scope. */
function transportsOf(suite: string, scope: Scope): readonly string[] {
  if (suite === "pingpong" || suite === "stream") return suiteTransports(suite, scope);
  if (suite === "substrate") return scope === "intra-host" ? SUBSTRATE_TRANSPORTS : [];
  if (scope === "cross-host" && !CROSS_HOST_SUITES.includes(suite)) return [];
  return BenchExtras.transports(suite);
}

/**
 * Why `transport` gets no row in this run (no suite of the plan measures it in a scope the
 * plan runs), naming where it is measured; undefined if some suite of the plan measures it.
 */
function unmeasuredTransport(
  transport: string,
  plan: readonly { suite: string; scopes: readonly Scope[] }[],
): string | undefined {
  if (plan.some((p) => p.scopes.some((sc) => transportsOf(p.suite, sc).includes(transport))))
    return undefined;
  const where = SUITES.flatMap((s) =>
    (["intra-host", "cross-host"] as const)
      .filter((sc) => transportsOf(s, sc).includes(transport))
      .map((sc) => `${s} --scope ${sc}`),
  );
  const here = plan.map((p) => `${p.suite} (${p.scopes.join(", ")})`).join(", ");
  return `--transports: ${transport} is not measured by ${here || "this run"}; ${
    where.length > 0 ? `it is measured by: ${where.join("; ")}` : "no suite measures it"
  }`;
}

function timestamp(): string {
  return new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

/** A progress bar on a terminal; plain numbered lines elsewhere (CI logs). */
function makeProgress(err: (line: string) => void) {
  let step = 0;
  const tty = process.stderr.isTTY === true;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: " {bar} {value}/{total}  {label}",
          hideCursor: true,
          clearOnComplete: true,
          stream: process.stderr,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  return {
    start(total: number) {
      bar?.start(total, 0, { label: "starting" });
    },
    tick(label: string) {
      step++;
      if (bar) {
        if (step > bar.getTotal()) bar.setTotal(step);
        bar.update(step, { label });
      } else err(pc.dim(`[${step}] ${label}`));
    },
    stop() {
      bar?.stop();
    },
  };
}

export async function benchCommand(
  suite: string | undefined,
  opts: BenchCliOptions,
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<void> {
  if (suite !== undefined && !(SUITES as readonly string[]).includes(suite))
    throw new BenchUsageError(`unknown benchmark suite "${suite}"; available: ${SUITES.join(", ")}`);
  if (opts.scope !== undefined && !(SCOPE_CHOICES as readonly string[]).includes(opts.scope))
    throw new BenchUsageError(
      `--scope: unknown "${opts.scope}"; expected one of ${SCOPE_CHOICES.join(", ")}`,
    );
  const scope = (opts.scope ??
    (suite === undefined || BenchExtras.crossHostSuites.includes(suite)
      ? "all"
      : "intra-host")) as (typeof SCOPE_CHOICES)[number];
  // Each suite with the scopes it runs in (the full report with --scope cross-host: only
  // the suites that have that scope).
  const plan = (suite ? [suite] : [...DEFAULT_SUITES])
    .map((s) => ({ suite: s, scopes: scopesFor(s, scope, suite !== undefined) }))
    .filter((p) => p.scopes.length > 0);
  // Everything that can be wrong with the arguments is said before any file or directory is
  // made: a rejected command leaves nothing behind (no empty reports/bench-<time>/).
  for (const problem of [
    emptyPathProblem("--json", opts.json, "FILE"),
    emptyPathProblem("--out", opts.out, "DIR"),
  ])
    if (problem) throw new BenchUsageError(problem);
  let sizes: number[] | undefined;
  let transports: string[] | undefined;
  if (opts.sizes !== undefined) {
    try {
      sizes = parseSizes(opts.sizes);
    } catch (e) {
      throw new BenchUsageError((e as Error).message);
    }
    const big = sizes.find((n) => n > 64 << 20);
    if (big !== undefined)
      throw new BenchUsageError(`--sizes: ${big} bytes is more than the 64 MiB a benchmark rank holds`);
  }
  if (opts.transports !== undefined) {
    transports = transportList(opts.transports);
    // A transport this run has no place for is said, not silently skipped: every one of
    // them is an error, some of them a warning (the others are measured).
    const lines = transports.flatMap((t) => {
      const why = unmeasuredTransport(t, plan);
      return why ? [why] : [];
    });
    if (lines.length === transports.length) throw new BenchUsageError(lines.join("\n"));
    for (const line of lines) err(pc.yellow(line));
  }
  const outDir = opts.out ?? (suite === undefined ? join("reports", `bench-${timestamp()}`) : undefined);
  const created: string[] = [];
  let jsonPath: string | undefined;
  try {
    if (opts.json !== undefined) {
      created.push(...missingDirs(dirname(resolve(opts.json))));
      jsonPath = prepareOutputFile(opts.json);
    }
    if (outDir) {
      created.push(...missingDirs(outDir));
      prepareOutputFile(join(outDir, "bench.json"), "the benchmark report");
    }
  } catch (e) {
    removeEmptyDirs(created);
    throw new BenchUsageError((e as Error).message);
  }
  try {
    await interruptible(
      "bench",
      err,
      () => removeEmptyDirs(created),
      () => runBenches(opts, plan, { sizes, transports, jsonPath, outDir }, out, err),
    );
  } catch (e) {
    // Directories this command made and wrote nothing in go again.
    removeEmptyDirs(created);
    throw e;
  }
}

/** `--transports`' names, each known; a usage error naming what is wrong otherwise. */
function transportList(text: string): string[] {
  const items = text.split(",").map((t) => t.trim());
  if (items.every((t) => t === ""))
    throw new BenchUsageError(
      `--transports names no transport (got "${text}"); write some of: ${ALL_TRANSPORTS.join(",")}`,
    );
  const empty = items.indexOf("");
  if (empty >= 0)
    throw new BenchUsageError(
      `--transports "${text}": item ${empty + 1} is empty; write names separated by commas, e.g. bypass,native`,
    );
  const bad = items.filter((t) => !ALL_TRANSPORTS.includes(t));
  if (bad.length > 0)
    throw new BenchUsageError(
      `--transports: unknown "${bad.join(",")}"; known: ${ALL_TRANSPORTS.join(", ")}`,
    );
  return items;
}

/** Runs the plan's suites with the checked arguments, prints the tables and writes the files. */
async function runBenches(
  opts: BenchCliOptions,
  plan: readonly { suite: string; scopes: Scope[] }[],
  checked: { sizes?: number[]; transports?: string[]; jsonPath?: string; outDir?: string },
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<void> {
  const { sizes, transports, jsonPath, outDir } = checked;
  const quick = opts.quick === true;
  const profile = profileFor(quick);
  const machine = machineInfo();
  const rows: BenchRow[] = [];
  const progress = makeProgress(err);
  // A rough count of steps for the bar (each suite reports one step per measurement).
  const perSize = (profile.runs + profile.warmupRuns + 1) * 3 + 3; // + 1: a second warm-up run (mx.ts samplePairs)
  progress.start(
    plan.reduce(
      (n, { suite: s, scopes }) =>
        n +
        (s === "substrate"
          ? 4 + profile.runs + 1
          : scopes.reduce((m, sc) => m + (sizes ?? defaultSizes(s, quick, sc)).length * perSize, 0)),
      0,
    ),
  );
  const tick = (label: string) => progress.tick(label);
  const hv = new Hypervisor();
  let host: Host | undefined;
  let linked: LinkedHosts | undefined;
  try {
    for (const { suite: s, scopes } of plan) {
      if (s === "substrate") {
        rows.push(...(await benchSubstrate(hv, profile, tick)));
        continue;
      }
      if (s !== "pingpong" && s !== "stream") {
        const known = BenchExtras.transports(s);
        if (BenchExtras.crossHostSuites.includes(s)) {
          // isolation and scale: fixed sizes and paths, every scope in one call.
          const o = { sizes: [], transports: known, scopes };
          rows.push(...(await BenchExtras.run(s, (host ??= await Host.start({})), profile, o, tick)));
          continue;
        }
        for (const sc of scopes) {
          const o = {
            sizes: sizes ?? BenchExtras.defaultSizes(s, sc, quick) ?? defaultSizes(s, quick),
            transports: (transports ?? known).filter((t) => known.includes(t)),
          };
          if (sc === "cross-host") {
            if (!linked) {
              tick("starting two hosts linked over loopback TCP");
              linked = await startLinkedHosts();
            }
            rows.push(...(await BenchExtras.run(s, [linked.a, linked.b], profile, o, tick)));
          } else rows.push(...(await BenchExtras.run(s, (host ??= await Host.start({})), profile, o, tick)));
        }
        continue;
      }
      for (const sc of scopes) {
        let known = suiteTransports(s, sc);
        // raw-tcp is a cross-host row: when this run measures the cross-host scope too, it is
        // measured there (interleaved with cross-host MX, same iteration counts), not twice.
        if (sc === "intra-host" && scopes.includes("cross-host"))
          known = known.filter((t) => t !== "raw-tcp");
        const o = {
          sizes: sizes ?? defaultSizes(s, quick, sc),
          transports: (transports ?? known).filter((t) => known.includes(t)),
        };
        if (o.transports.length === 0) continue;
        if (sc === "cross-host" && !linked) {
          tick("starting two hosts linked over loopback TCP");
          linked = await startLinkedHosts();
        } else if (sc === "intra-host") host ??= await Host.start({});
        const placement = sc === "cross-host" ? ([linked!.a, linked!.b] as const) : host!;
        rows.push(...(await (s === "pingpong" ? benchPingpong : benchStream)(placement, profile, o, tick)));
      }
    }
  } finally {
    progress.stop();
    await hv.shutdown();
    await host?.stop();
    await linked?.stop();
  }
  const notes = takeOpenMpiNotes();
  const report: BenchReport = {
    machine: finishMachineInfo(machine, rows),
    rows,
    ...(notes.length > 0 ? { notes } : {}),
  };
  printTables(rows, profile, out);
  for (const line of BenchExtras.describe(rows)) out(line);
  for (const line of BenchExtras.describeQos(rows)) out(line);
  for (const v of [
    substrateVerdict(rows),
    ...mxVerdicts(rows),
    ...crossHostVerdicts(rows),
    ...chainVerdicts(rows),
    ...openMpiVerdicts(rows),
    ...comparisonLines(rows),
  ])
    if (v) out(v);
  for (const line of notes) out(line);
  for (const line of splitCostLines(rows)) out(line);
  out(describeMachine(report.machine));
  // Each file is written whatever became of the others; one that cannot be (a full disk) is
  // a runtime failure that says where the rows are.
  const files = benchResultFiles(
    report,
    jsonPath === undefined ? undefined : { path: jsonPath, shown: opts.json! },
    outDir,
    (file) => BenchExtras.writeHtml(file, report),
    (line) => out(pc.dim(line)),
  );
  writeResultFiles("bench", files, report);
}

/** What the split path's messages cost the driver domain, per message, from its counters. */
function splitCostLines(rows: readonly BenchRow[]): string[] {
  return Object.entries(splitCosts).flatMap(([key, c]) => {
    // Only benches this run reports (a pair's warm-up runs the other kind too).
    const [bench, scope] = key.split("/");
    if (
      c.messages === 0 ||
      !rows.some((r) => r.bench === bench && r.scope === scope && r.transport === "split")
    )
      return [];
    const per = (v: number) => (v / c.messages).toFixed(2);
    return [
      `split path, ${key.replace("/", ", ")}: per message ${per(c.netbackRequests)} netback requests, ` +
        `${per(c.grantCopies)} grant copies, ${per(c.notifications)} notifications, ` +
        `${per(c.bridgeLookups)} bridge lookups (${per(c.frames)} frames; ${c.messages} messages)`,
    ];
  });
}

/**
 * One table per (bench, scope), each with only its own transports and the ratios it can
 * show: on one host against native and the raw limits, across hosts bypass/raw-tcp and
 * bypass/raw-chain (latency in the pingpong table, bandwidth in the stream table).
 */
function printTables(rows: readonly BenchRow[], profile: BenchProfile, out: (line: string) => void): void {
  const tableRows = rows.filter((r) => !BenchExtras.suites.includes(r.bench));
  const keys = [...new Set(tableRows.map((r) => `${r.bench}\u0000${r.scope}`))];
  const scopesOf = (bench: string) => new Set(tableRows.filter((r) => r.bench === bench).map((r) => r.scope));
  for (const key of keys) {
    const [bench, scope] = key.split("\u0000");
    const group = tableRows.filter((r) => r.bench === bench && r.scope === scope);
    const has = (t: string) => group.some((r) => r.transport === t);
    out(
      renderTable(group, {
        ratios: (
          [
            ["evtchn", "raw-sab"],
            ["bypass", "native"],
            ["split", "bypass"],
            ["bypass", "openmpi"],
            ["bypass", "openmpi-cico"],
            ["bypass", "raw-sab"],
            ["postmessage", "bypass"],
            ["bypass", "raw-tcp"],
            ["bypass", "raw-chain"],
          ] as const
        ).filter(([x, y]) => has(x) && has(y)),
        transports: [
          "native",
          "bypass",
          "split",
          "openmpi",
          "openmpi-cico",
          "raw-tcp",
          "raw-chain",
          "raw-sab",
          "raw-relay",
          "postmessage",
          "memcpy",
          "evtchn",
          "ring",
        ],
        // Name the scope when the bench has rows in both, or when it is not the usual one.
        title:
          scopesOf(bench).size > 1 || scope === "cross-host"
            ? `${bench}, ${scope} (${profile.name})`
            : `${bench} (${profile.name})`,
      }),
    );
  }
}

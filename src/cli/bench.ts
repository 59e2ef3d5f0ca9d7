/**
 * `myrixen bench [SUITE]`: runs benchmark suites with their baselines in the same run, shows
 * progress, and prints a table with the ratios; `--json FILE` writes the rows, `--out DIR`
 * writes DIR/bench.json and a self-contained DIR/bench.html with plots. With no suite it runs
 * them all and writes the report to reports/bench-<time>/ unless --out says otherwise.
 * Every argument is checked before any benchmark starts.
 */
import { join } from "node:path";
import cliProgress from "cli-progress";
import pc from "picocolors";
import {
  type BenchReport,
  type BenchRow,
  describeMachine,
  finishMachineInfo,
  machineInfo,
  parseSizes,
  prepareOutputFile,
  profileFor,
  renderTable,
  writeReport,
} from "../bench/harness.js";
import {
  benchPingpong,
  benchStream,
  mxVerdicts,
  PINGPONG_TRANSPORTS,
  STREAM_TRANSPORTS,
} from "../bench/mx.js";
import { writeHtmlReport } from "../bench/report.js";
import { benchSubstrate, substrateVerdict } from "../bench/substrate.js";
import { Host } from "../host/host.js";
import { Hypervisor } from "../xen/hypervisor.js";
import { BenchExtras, setHtmlWriter } from "./bench-extras.js";

setHtmlWriter((file, report) => writeHtmlReport(file, report));

export const SUITES = ["substrate", "pingpong", "stream", ...BenchExtras.suites] as const;
export type Suite = string;

export class BenchUsageError extends Error {}

export interface BenchCliOptions {
  quick?: boolean;
  json?: string;
  out?: string;
  sizes?: string;
  transports?: string;
}

export const ALL_TRANSPORTS = [...new Set([...PINGPONG_TRANSPORTS, ...STREAM_TRANSPORTS, "evtchn", "ring"])];

/** Default sizes: OSU's sweeps (0 B / 1 B to 4 MiB), thinned out with --quick. */
function defaultSizes(suite: string, quick: boolean): number[] {
  if (quick) return suite === "stream" ? [4096, 65536, 1 << 20, 4 << 20] : [0, 8, 4096, 65536, 1 << 20];
  const sweep: number[] = suite === "stream" ? [] : [0];
  for (let s = 1; s <= 4 << 20; s *= 4) sweep.push(s);
  if (!sweep.includes(4 << 20)) sweep.push(4 << 20);
  return sweep;
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
  const suites = suite ? [suite] : [...SUITES];
  let jsonPath: string | undefined;
  let outDir: string | undefined;
  let sizes: number[] | undefined;
  let transports: string[] | undefined;
  try {
    jsonPath = opts.json ? prepareOutputFile(opts.json) : undefined;
    outDir = opts.out ?? (suite === undefined ? join("reports", `bench-${timestamp()}`) : undefined);
    if (outDir) {
      prepareOutputFile(join(outDir, "bench.json"), "the benchmark report");
    }
    if (opts.sizes !== undefined) {
      sizes = parseSizes(opts.sizes);
      const big = sizes.find((n) => n > 64 << 20);
      if (big !== undefined)
        throw new Error(`--sizes: ${big} bytes is more than the 64 MiB a benchmark rank holds`);
    }
  } catch (e) {
    throw new BenchUsageError((e as Error).message);
  }
  if (opts.transports !== undefined) {
    transports = opts.transports.split(",").map((t) => t.trim());
    const bad = transports.filter((t) => !ALL_TRANSPORTS.includes(t));
    if (bad.length > 0 || transports.length === 0)
      throw new BenchUsageError(
        `--transports: unknown "${bad.join(",")}"; known: ${ALL_TRANSPORTS.join(", ")}`,
      );
  }
  const quick = opts.quick === true;
  const profile = profileFor(quick);
  const machine = machineInfo();
  const rows: BenchRow[] = [];
  const progress = makeProgress(err);
  // A rough count of steps for the bar (each suite reports one step per measurement).
  const perSize = (profile.runs + profile.warmupRuns) * 2 + 3;
  progress.start(
    suites.reduce(
      (n, s) =>
        n + (s === "substrate" ? 4 + profile.runs + 1 : (sizes ?? defaultSizes(s, quick)).length * perSize),
      0,
    ),
  );
  const tick = (label: string) => progress.tick(label);
  const hv = new Hypervisor();
  let host: Host | undefined;
  try {
    for (const s of suites) {
      if (s === "substrate") {
        rows.push(...(await benchSubstrate(hv, profile, tick)));
        continue;
      }
      host ??= await Host.start({});
      const known =
        s === "pingpong"
          ? PINGPONG_TRANSPORTS
          : s === "stream"
            ? STREAM_TRANSPORTS
            : BenchExtras.transports(s);
      const o = {
        sizes: sizes ?? BenchExtras.defaultSizes(s) ?? defaultSizes(s, quick),
        transports: (transports ?? known).filter((t) => known.includes(t)),
      };
      if (s === "pingpong") rows.push(...(await benchPingpong(host, profile, o, tick)));
      else if (s === "stream") rows.push(...(await benchStream(host, profile, o, tick)));
      else rows.push(...(await BenchExtras.run(s, host, profile, o, tick)));
    }
  } finally {
    progress.stop();
    await hv.shutdown();
    await host?.stop();
  }
  const report: BenchReport = { machine: finishMachineInfo(machine, rows), rows };
  // One table per bench, each with only its own transports and the ratios it can show.
  const tableRows = rows.filter((r) => r.bench !== "breakdown");
  for (const bench of [...new Set(tableRows.map((r) => r.bench))]) {
    const group = tableRows.filter((r) => r.bench === bench);
    const has = (t: string) => group.some((r) => r.transport === t);
    out(
      renderTable(group, {
        ratios: (
          [
            ["evtchn", "raw-sab"],
            ["bypass", "native"],
            ["bypass", "raw-sab"],
            ["postmessage", "bypass"],
          ] as const
        ).filter(([x, y]) => has(x) && has(y)),
        transports: ["native", "bypass", "raw-sab", "raw-relay", "postmessage", "memcpy", "evtchn", "ring"],
        title: `${bench} (${profile.name})`,
      }),
    );
  }
  for (const line of BenchExtras.describe(rows)) out(line);
  for (const v of [substrateVerdict(rows), ...mxVerdicts(rows)]) if (v) out(v);
  out(describeMachine(report.machine));
  if (jsonPath) {
    writeReport(jsonPath, report);
    out(pc.dim(`rows written to ${jsonPath}`));
  }
  if (outDir) {
    writeReport(join(outDir, "bench.json"), report);
    const html = BenchExtras.writeHtml(join(outDir, "bench.html"), report);
    out(pc.dim(`report written to ${join(outDir, "bench.json")}${html ? ` and ${html}` : ""}`));
  }
}

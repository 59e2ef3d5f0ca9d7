/**
 * The `myrixen` command line: parses arguments (commander), validates them before anything
 * starts, and dispatches to the demo and the benchmarks. Exit codes: 0 success, 1 a run
 * failed, 2 bad usage.
 */
import { Command, CommanderError, InvalidArgumentError } from "commander";
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
import { benchSubstrate, substrateVerdict } from "../bench/substrate.js";
import { Host } from "../host/host.js";
import { Hypervisor } from "../xen/hypervisor.js";
import { runDemo } from "./demo.js";
import { BUILTIN_PROGRAMS, RunUsageError, runCommand } from "./run.js";
import { runMainJob } from "./start.js";

class UsageError extends Error {}

const SUITES = ["substrate", "pingpong", "stream"] as const;
type Suite = (typeof SUITES)[number];

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1)
      throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);
    return n;
  };
}

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);

interface BenchCliOptions {
  quick?: boolean;
  json?: string;
  sizes?: string;
  transports?: string;
}

const ALL_TRANSPORTS = [...new Set([...PINGPONG_TRANSPORTS, ...STREAM_TRANSPORTS])];

/** Default sizes: OSU's sweeps (0 B / 1 B to 4 MiB), thinned out with --quick. */
function defaultSizes(suite: "pingpong" | "stream", quick: boolean): number[] {
  if (quick) return suite === "pingpong" ? [0, 8, 4096, 65536, 1 << 20] : [8, 4096, 65536, 1 << 20, 4 << 20];
  const sweep: number[] = suite === "pingpong" ? [0] : [];
  for (let s = 1; s <= 4 << 20; s *= 4) sweep.push(s);
  if (!sweep.includes(4 << 20)) sweep.push(4 << 20);
  return sweep;
}

async function bench(suites: Suite[], opts: BenchCliOptions) {
  // Everything the user typed is checked before any benchmark starts.
  let jsonPath: string | undefined;
  let sizes: number[] | undefined;
  let transports: string[] | undefined;
  try {
    jsonPath = opts.json ? prepareOutputFile(opts.json) : undefined;
    if (opts.sizes !== undefined) {
      sizes = parseSizes(opts.sizes);
      const big = sizes.find((n) => n > 64 << 20);
      if (big !== undefined)
        throw new Error(`--sizes: ${big} bytes is more than the 64 MiB a benchmark rank holds`);
    }
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (opts.transports !== undefined) {
    transports = opts.transports.split(",").map((t) => t.trim());
    const bad = transports.filter((t) => !ALL_TRANSPORTS.includes(t));
    if (bad.length > 0 || transports.length === 0)
      throw new UsageError(`--transports: unknown "${bad.join(",")}"; known: ${ALL_TRANSPORTS.join(", ")}`);
  }
  const profile = profileFor(opts.quick === true);
  const machine = machineInfo();
  const rows: BenchRow[] = [];
  let step = 0;
  const progress = (label: string) => {
    step++;
    if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${pc.dim(`[${step}] ${label}`)}`);
    else err(pc.dim(`[${step}] ${label}`));
  };
  const hv = new Hypervisor();
  let host: Host | undefined;
  try {
    for (const suite of suites) {
      if (suite === "substrate") rows.push(...(await benchSubstrate(hv, profile, progress)));
      else {
        host ??= await Host.start({});
        const known = suite === "pingpong" ? PINGPONG_TRANSPORTS : STREAM_TRANSPORTS;
        const o = {
          sizes: sizes ?? defaultSizes(suite, opts.quick === true),
          transports: (transports ?? known).filter((t) => known.includes(t)),
        };
        rows.push(
          ...(await (suite === "pingpong" ? benchPingpong : benchStream)(host, profile, o, progress)),
        );
      }
    }
  } finally {
    if (process.stderr.isTTY) process.stderr.write("\r\x1b[2K");
    await hv.shutdown();
    await host?.stop();
  }
  const report: BenchReport = { machine: finishMachineInfo(machine, rows), rows };
  out(
    renderTable(rows, {
      // Only the ratios whose two transports were both measured.
      ratios: (
        [
          ["evtchn", "raw-sab"],
          ["bypass", "native"],
          ["bypass", "raw-sab"],
          ["postmessage", "bypass"],
        ] as const
      ).filter(([x, y]) => rows.some((r) => r.transport === x) && rows.some((r) => r.transport === y)),
      transports: ["native", "bypass", "raw-sab", "raw-relay", "postmessage", "memcpy", "evtchn", "ring"],
      title: `myrixen bench (${profile.name})`,
    }),
  );
  for (const v of [substrateVerdict(rows), ...mxVerdicts(rows)]) if (v) out(v);
  out(describeMachine(report.machine));
  if (jsonPath) {
    writeReport(jsonPath, report);
    out(pc.dim(`rows written to ${jsonPath}`));
  }
}

export function buildProgram(): Command {
  const program = new Command("myrixen")
    .description(
      "VMM-bypass message passing for virtual machines: Xen-style domains on worker threads,\n" +
        "grant tables, event channels, XenStore and shared rings; MX over bypass and split paths.",
    )
    .version("0.1.0")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .enablePositionalOptions();

  program
    .command("start")
    .description(
      "the main job (npm start): NAS EP and OSU latency/bandwidth on a virtual cluster, native vs bypass",
    )
    .action(async () => {
      const ok = await runMainJob(out, err);
      if (!ok) process.exitCode = 1;
    });

  program
    .command("demo")
    .description("the substrate demo: two guest domains exchange requests over a granted ring")
    .option("--requests <n>", "requests the frontend sends", positiveInt("--requests"), 1_000_000)
    .action(async (o: { requests: number }) => {
      const r = await runDemo({ requests: o.requests, out });
      if (!r.ok) process.exitCode = 1;
    });

  program
    .command("bench")
    .description("benchmarks with baselines measured in the same run; no suite = all suites")
    .argument("[suite]", `one of: ${SUITES.join(", ")}`)
    .option("--quick", "fewer runs and iterations (well under a minute)")
    .option("--json <file>", "also write every row as JSON ({ machine, rows })")
    .option("--sizes <list>", "message sizes, e.g. 0,8,4K,1M (default: OSU's sweep to 4 MiB)")
    .option("--transports <list>", `subset of: ${ALL_TRANSPORTS.join(",")}`)
    .addHelpText(
      "after",
      "\nSuites:\n  substrate   event-channel ping-pong vs raw SharedArrayBuffer ping-pong; ring requests/s\n" +
        "  pingpong    MX one-way latency, native and bypass, with raw-sab, raw-relay, postmessage\n" +
        "  stream      MX bandwidth (osu_bw: window 64), native and bypass, with raw-sab and memcpy\n" +
        "\nRows: { bench, transport, scope, bytes, metric, median, min, max, runs }; medians over runs,\n" +
        "warm-up runs excluded, machine load recorded.",
    )
    .action(async (suite: string | undefined, o: BenchCliOptions) => {
      if (suite !== undefined && !SUITES.includes(suite as Suite))
        throw new UsageError(`unknown benchmark suite "${suite}"; available: ${SUITES.join(", ")}`);
      await bench(suite ? [suite as Suite] : [...SUITES], o);
    });
  program
    .command("run")
    .description("run N ranks of a program (built-in or a module) on this machine")
    .requiredOption("-n, --np <n>", "number of ranks", positiveInt("-n"))
    .option("--path <path>", "native | bypass", "bypass")
    .option(
      "--pages <n>",
      "guest memory per rank in 4 KiB pages (default 16384 = 64 MiB)",
      positiveInt("--pages"),
    )
    .argument("<program>", `a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or a module path`)
    .argument("[args...]", "the program's own arguments")
    .passThroughOptions()
    .action(async (prog: string, args: string[], o: { np: number; path: string; pages?: number }) => {
      try {
        process.exitCode = await runCommand(prog, args, { n: o.np, path: o.path, pages: o.pages });
      } catch (e) {
        if (e instanceof RunUsageError || e instanceof RangeError) throw new UsageError(e.message);
        throw e;
      }
    });

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof UsageError) {
      err(`myrixen: ${e.message}`);
      return 2;
    }
    err(`myrixen: ${(e as Error)?.stack ?? String(e)}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));

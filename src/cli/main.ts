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
  prepareOutputFile,
  profileFor,
  renderTable,
  writeReport,
} from "../bench/harness.js";
import { benchSubstrate, substrateVerdict } from "../bench/substrate.js";
import { Hypervisor } from "../xen/hypervisor.js";
import { runDemo } from "./demo.js";

class UsageError extends Error {}

const SUITES = ["substrate"] as const;
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

async function bench(suites: Suite[], opts: { quick?: boolean; json?: string }) {
  let jsonPath: string | undefined;
  try {
    jsonPath = opts.json ? prepareOutputFile(opts.json) : undefined;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const profile = profileFor(opts.quick === true);
  const machine = machineInfo();
  const rows: BenchRow[] = [];
  const hv = new Hypervisor();
  let step = 0;
  const progress = (label: string) => err(pc.dim(`[${++step}] ${label}`));
  try {
    for (const suite of suites) {
      if (suite === "substrate") rows.push(...(await benchSubstrate(hv, profile, progress)));
    }
  } finally {
    await hv.shutdown();
  }
  const report: BenchReport = { machine: finishMachineInfo(machine, rows), rows };
  out(renderTable(rows, { ratios: [["evtchn", "raw-sab"]], title: `myrixen bench (${profile.name})` }));
  const verdict = substrateVerdict(rows);
  if (verdict) out(verdict);
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
    .exitOverride();

  program
    .command("demo")
    .description("two guest domains exchange requests over a granted ring (what `npm start` shows)")
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
    .addHelpText(
      "after",
      "\nSuites:\n  substrate   event-channel ping-pong vs raw SharedArrayBuffer ping-pong; ring requests/s\n" +
        "\nRows: { bench, transport, scope, bytes, metric, median, min, max, runs }; medians over runs,\n" +
        "warm-up runs excluded, machine load recorded.",
    )
    .action(async (suite: string | undefined, o: { quick?: boolean; json?: string }) => {
      if (suite !== undefined && !SUITES.includes(suite as Suite))
        throw new UsageError(`unknown benchmark suite "${suite}"; available: ${SUITES.join(", ")}`);
      await bench(suite ? [suite as Suite] : [...SUITES], o);
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

/**
 * The `myrixen` command line: parses arguments (commander), validates them before anything
 * starts, and dispatches to the demo, the benchmarks, jobs (run) and hosts (host). Exit
 * codes: 0 success, 1 a run failed, 2 bad usage, 130 a job stopped by Ctrl-C.
 */
import { Command, CommanderError, InvalidArgumentError } from "commander";
import { MYRIXEN_VERSION } from "../host/snapshot.js";
import { parseQosFlag, type QosPolicy } from "../myrixen/qos-policy.js";
import { ALL_TRANSPORTS, type BenchCliOptions, BenchUsageError, benchCommand, SUITES } from "./bench.js";
import { runDemo } from "./demo.js";
import { ConfigError, configureHostCommand, parseDashboardFlag } from "./host.js";
import { BUILTIN_PROGRAMS, RunUsageError, runCommand } from "./run.js";
import { runMainJob } from "./start.js";
import { configureToolstack, ToolstackUsageError } from "./toolstack.js";

class UsageError extends Error {}

interface RunCliOptions {
  np?: number;
  path: string;
  pages?: number;
  qos?: QosPolicy;
  hosts?: string;
  hostfile?: string;
  mapBy?: string;
  oversubscribe?: boolean;
  tagOutput?: boolean;
  linkTimeout?: number;
  keyFile?: string;
  dashboard?: { host: string; port: number };
}

/** `--qos`: a policy, or commander's usage error naming the bad part. */
function qosFlag(v: string): QosPolicy {
  try {
    return parseQosFlag(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1)
      throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);
    return n;
  };
}

/** `--dashboard` alone (true) means the default address. */
function dashboardAt(
  v: { host: string; port: number } | true | undefined,
): { host: string; port: number } | undefined {
  return v === true ? { host: "127.0.0.1", port: 7480 } : v;
}

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);

export function buildProgram(): Command {
  const program = new Command("myrixen")
    .description(
      "VMM-bypass message passing for virtual machines: Xen-style domains on worker threads,\n" +
        "grant tables, event channels, XenStore and shared rings; MX over bypass and split paths.",
    )
    .version(MYRIXEN_VERSION)
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .enablePositionalOptions();

  program
    .command("start")
    .description(
      "the main job (npm start): NAS EP and OSU latency/bandwidth on a virtual cluster, native vs bypass",
    )
    .option(
      "--dashboard [addr:port]",
      "serve the live dashboard while it runs (default 127.0.0.1:7480; a port alone binds 127.0.0.1)",
      parseDashboardFlag,
    )
    .action(async (o: { dashboard?: { host: string; port: number } | true }) => {
      const ok = await runMainJob(out, err, { dashboard: dashboardAt(o.dashboard) });
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
    .option(
      "--out <dir>",
      "write bench.json and bench.html (plots) there (default with no suite: reports/bench-<time>)",
    )
    .option("--sizes <list>", "message sizes, e.g. 0,8,4K,1M (default: OSU's sweep to 4 MiB)")
    .option("--transports <list>", `subset of: ${ALL_TRANSPORTS.join(",")}`)
    .option(
      "--scope <scope>",
      "pingpong/stream ranks on one host (intra-host), on two linked hosts with raw-tcp (cross-host), or all " +
        "(default: intra-host with a suite, all without)",
    )
    .addHelpText(
      "after",
      "\nSuites:\n  substrate   event-channel ping-pong vs raw SharedArrayBuffer ping-pong; ring requests/s\n" +
        "  pingpong    MX one-way latency, native and bypass, with raw-sab, raw-relay, postmessage\n" +
        "  stream      MX bandwidth (osu_bw: window 64), native and bypass, with raw-sab and memcpy\n" +
        "  (--scope cross-host: pingpong and stream between two hosts whose NICs are linked over\n" +
        "   loopback TCP, against raw-tcp, with the issue's targets checked: bypass 8 B latency\n" +
        "   ≤ 1.3× raw-tcp, bypass 1 MiB bandwidth ≥ 0.8× raw-tcp)\n" +
        "  isolation   a 1 MiB streamer beside an 8 B ping-pong, caps and 3:1 weights (both scopes)\n" +
        "  scale       1..16 guest pairs streaming at once vs native processes: MB/s, Jain's index\n" +
        "\nRows: { bench, transport, scope, bytes, metric, median, min, max, runs }; medians over runs,\n" +
        "warm-up runs excluded, machine load recorded.",
    )
    .action(async (suite: string | undefined, o: BenchCliOptions) => {
      try {
        await benchCommand(suite, o, out, err);
      } catch (e) {
        if (e instanceof BenchUsageError) throw new UsageError(e.message);
        throw e;
      }
    });
  program
    .command("run")
    .description("run N ranks of a program (built-in or a module) on this machine, or across myrixen hosts")
    .option(
      "-n, --np <n>",
      "number of ranks (default inside Slurm: SLURM_NTASKS; with hosts: their total slots)",
      positiveInt("-n"),
    )
    .option("--hosts <list>", "run on these myrixen hosts: host[:port][*slots],... (port default 7470)")
    .option(
      "--hostfile <file>",
      "run on the hosts of an Open MPI hostfile (hostname[:port] slots=N [max_slots=M])",
    )
    .option(
      "--map-by <how>",
      "node: ranks round-robin across hosts; slot: fill each host's slots in order",
      "node",
    )
    .option("--oversubscribe", "allow more ranks than slots")
    .option("--path <path>", "native | bypass | split", "bypass")
    .option(
      "--pages <n>",
      "guest memory per rank in 4 KiB pages (default 16384 = 64 MiB)",
      positiveInt("--pages"),
    )
    .option(
      "--qos <policy>",
      "each rank's weight and caps on the NIC: weight=N,tx-bytes=N,tx-msgs=N,rx-bytes=N,rx-msgs=N (per second; k, M, G)",
      qosFlag,
    )
    .option("--tag-output", "prefix output lines with [rank@host] instead of [rank]")
    .option(
      "--link-timeout <ms>",
      "how long the hosts may take to link their NICs before the job gives up (default 10000)",
      positiveInt("--link-timeout"),
    )
    .option(
      "--key-file <file>",
      "the cluster key file the hosts hold (default: $MYRIXEN_KEY_FILE, then ~/.config/myrixen/cluster.key)",
    )
    .option(
      "--dashboard [addr:port]",
      "serve the live dashboard of the job's hosts while it runs (default 127.0.0.1:7480)",
      parseDashboardFlag,
    )
    .argument("<program>", `a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or a module path`)
    .argument("[args...]", "the program's own arguments")
    .addHelpText(
      "after",
      "\nWith no --hosts or --hostfile and outside Slurm, a host starts in this process. Inside a\n" +
        "Slurm allocation (SLURM_JOB_NODELIST set), the nodes and their task counts come from\n" +
        "Slurm (each node runs `myrixen host` on port 7470). Ctrl-C stops every rank on every host.",
    )
    .passThroughOptions()
    .action(async (prog: string, args: string[], o: RunCliOptions) => {
      try {
        process.exitCode = await runCommand(prog, args, {
          n: o.np,
          path: o.path,
          pages: o.pages,
          qos: o.qos,
          hosts: o.hosts,
          hostfile: o.hostfile,
          mapBy: o.mapBy,
          oversubscribe: o.oversubscribe,
          tagOutput: o.tagOutput,
          linkTimeoutMs: o.linkTimeout,
          keyFile: o.keyFile,
          dashboard: dashboardAt(o.dashboard as RunCliOptions["dashboard"] | true),
        });
      } catch (e) {
        if (e instanceof RunUsageError || e instanceof RangeError) throw new UsageError(e.message);
        throw e;
      }
    });

  configureHostCommand(program.command("host"));

  configureToolstack(
    program,
    async (f) => {
      try {
        process.exitCode = await f();
      } catch (e) {
        if (e instanceof ToolstackUsageError) throw new UsageError(e.message);
        throw e;
      }
    },
    (v) => {
      const a = parseDashboardFlag(v);
      return a;
    },
  );

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
    if (e instanceof ConfigError) {
      for (const p of e.problems) err(`myrixen host: ${p}`);
      return 2;
    }
    err(`myrixen: ${(e as Error)?.stack ?? String(e)}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));

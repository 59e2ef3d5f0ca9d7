/**
 * The `myrixen` command line: parses arguments (commander), validates them before anything
 * starts, and dispatches to the demo, the benchmarks, jobs (run) and hosts (host). Exit
 * codes: 0 success, 1 a run failed, 2 bad usage, 130 a job stopped by Ctrl-C.
 *
 * Only light modules are imported here: a command's own code (the hypervisor, the NIC, the
 * benchmarks, zod) loads when that command runs, so `--help`, `--version` and a mistyped flag
 * load 28 modules instead of 300.
 */
import { Command, CommanderError, InvalidArgumentError } from "commander";
import { ALL_TRANSPORTS, SUITES } from "../bench/transports.js";
import { ConfigError, LINK_TIMEOUT_MAX_MS, RANK_PAGES_MAX } from "../cluster/config-limits.js";
import { BUILTIN_PROGRAMS } from "../cluster/programs.js";
import { MYRIXEN_VERSION } from "../host/version.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import { DEFAULT_MAX_BUFFER_MB } from "../xen/hypervisor/domain.js";
import type { BenchCliOptions } from "./bench.js";
import { configureExecCommand } from "./exec.js";
import { configureHostCommand, dashboardAddressFlag, parseDashboardFlag } from "./host.js";
import { configureToolstack } from "./toolstack-commands.js";
import {
  BenchUsageError,
  DEFAULT_RUNS,
  RuntimeFailure,
  RunUsageError,
  StartUsageError,
  TIMEOUT_EXIT_CODE,
  ToolstackUsageError,
} from "./usage.js";

class UsageError extends Error {
  constructor(
    message: string,
    /** The subcommand whose usage it was ("run"): named at the start of the line. */
    readonly command?: string,
  ) {
    super(message);
  }
}

interface RunCliOptions {
  np?: string;
  path: string;
  pages?: number;
  maxHeap?: number;
  maxBuffers?: number;
  host?: string;
  /** --qos as given: parsed (with zod) when the job runs. */
  qos?: string;
  hosts?: string;
  hostfile?: string;
  mapBy?: string;
  npernode?: string;
  oversubscribe?: boolean;
  tagOutput?: boolean;
  x?: string[];
  timeout?: string;
  displayMap?: boolean;
  linkTimeout?: number;
  keyFile?: string;
  dashboard?: { host: string; port: number };
  out?: string;
  openmpi?: boolean;
}

/** -n's value: a rank count. */
function rankCount(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v)))
    throw new RunUsageError(`-n must be a positive integer (the number of ranks), got "${v}"`);
  return Number(v);
}

function positiveCount(name: string, v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v)))
    throw new RunUsageError(`${name} must be a positive integer, got "${v}"`);
  return Number(v);
}

function seconds(v: string): number {
  const s = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(s > 0) || s > 2_000_000)
    throw new RunUsageError(`--timeout must be a number of seconds greater than 0, got "${v}"`);
  return s;
}

/** -x VAR[=VALUE] as Open MPI reads it: VAR alone takes its value from this environment. */
function exportedEnv(items: string[]): Record<string, string> | undefined {
  if (items.length === 0) return undefined;
  const env: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf("=");
    const name = eq < 0 ? item : item.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(name))
      throw new RunUsageError(
        `-x ${item}: "${name}" is not a variable name (letters, digits and _; write -x VAR or -x VAR=value)`,
      );
    if (eq >= 0) env[name] = item.slice(eq + 1);
    else {
      const v = process.env[name];
      if (v === undefined)
        throw new RunUsageError(`-x ${name}: ${name} is not set here; set it or write -x ${name}=value`);
      env[name] = v;
    }
  }
  return env;
}

/** Commander's error text for command `path` ("myrixen run") as one line that says what to fix. */
function usageErrorLine(text: string, path: string): string {
  const t = text.trim().replace(/^error: /, "");
  const missing = /^option '([^']+)' argument missing/.exec(t);
  if (missing) {
    const flag = missing[1].split(/[, ]+/)[0];
    const value = /<([^>]+)>/.exec(missing[1])?.[1] ?? "value";
    const hint = flag === "-n" && path === "myrixen run" ? " (the number of ranks, e.g. -n 4)" : "";
    return `${flag} needs a value: write ${flag} <${value}>${hint}`;
  }
  if (path === "myrixen run" && /^missing required argument 'program'/.test(t))
    return `no program given: write myrixen run [-n N] PROGRAM [ARGS...], PROGRAM a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or a .ts/.js/.mjs file`;
  const invalid = /^option '([^']+)' argument '(.*?)' is invalid\. (.*)$/s.exec(t);
  if (invalid) {
    // A value outside an option's .choices(): commander names neither the option nor the value.
    const choices = /^Allowed choices are (.*?)\.?$/s.exec(invalid[3].trim());
    if (choices) {
      const flag = invalid[1].split(/[, ]+/).find((f) => f.startsWith("--")) ?? invalid[1].split(/[, ]+/)[0];
      return `${flag}: ${JSON.stringify(invalid[2])} is not one of ${choices[1]}`;
    }
    return invalid[3].trim();
  }
  const unknown = /^unknown (option|command) '([^']+)'(?:\s*\(Did you mean ([^)?]+)\?\))?/s.exec(t);
  if (unknown)
    return `unknown ${unknown[1]} ${unknown[2]}${unknown[3] ? ` (did you mean ${unknown[3]}?)` : ""}; see ${path} --help`;
  return `${t.split("\n").join("; ").replace(/\.$/, "")}; see ${path} --help`;
}

/** Every command's mistakes on one line, prefixed with the command (commander's own words, reworded). */
function oneLineErrors(cmd: Command, path: string): void {
  cmd.showHelpAfterError(false).configureOutput({
    outputError: (text, write) => write(`${path}: ${usageErrorLine(text, path)}\n`),
  });
  for (const sub of cmd.commands) oneLineErrors(sub, `${path} ${sub.name()}`);
}

/**
 * mpirun's single-dash long options (-np 4, -host a,b, -oversubscribe, ...) as commander reads
 * them (--np 4, ...): only before the program, whose own arguments are left as they are.
 */
function openMpiSpellings(argv: string[], run: Command): string[] {
  if (argv[0] !== "run") return argv;
  const out = [argv[0]];
  const byLong = new Map(run.options.filter((o) => o.long).map((o) => [o.long!.slice(2), o]));
  const takesValue = (arg: string) => {
    const o = run.options.find((x) => x.long === arg || x.short === arg);
    return o ? o.required : false;
  };
  let i = 1;
  for (; i < argv.length; i++) {
    let a = argv[i];
    if (a === "--") break;
    if (/^-[a-z][a-z-]+$/.test(a) && byLong.has(a.slice(1))) a = `-${a}`;
    if (a === "-np") a = "--np";
    // -np=4, -host=a,b: Open MPI's single dash with `=` (commander would read -np=4 as -n "p=4").
    const withValue = /^-([a-z][a-z-]*)=/.exec(a);
    if (withValue && (withValue[1] === "n" || withValue[1] === "np" || byLong.has(withValue[1])))
      a = `--${withValue[1] === "n" ? "np" : withValue[1]}${a.slice(withValue[0].length - 1)}`;
    // -x before the program with no VAR: the program would be taken for the variable.
    if (a === "-x" && i + 1 < argv.length) {
      const v = argv[i + 1];
      const name = v.split("=")[0];
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) && (looksLikeProgram(v) || i + 2 >= argv.length))
        throw new UsageError(
          `-x needs a variable before the program: write -x VAR or -x VAR=VALUE, then the program (got -x ${v}, and "${v}" is not a variable name)`,
          "run",
        );
    }
    out.push(a);
    if (!a.startsWith("-")) {
      i++;
      break;
    }
    if (!a.includes("=") && takesValue(a) && i + 1 < argv.length) out.push(argv[++i]);
    // `--dashboard PROGRAM`: the flag's value is optional (`--dashboard[=PORT]`) and commander
    // would take the program for it; "--" ends the options there, so the program stays one.
    if (a === "--dashboard" && i + 1 < argv.length && looksLikeProgram(argv[i + 1])) out.push("--");
  }
  return [...out, ...argv.slice(i)];
}

/** A built-in program's name or a module file's: never a dashboard address. */
function looksLikeProgram(arg: string): boolean {
  return arg in BUILTIN_PROGRAMS || /\.(ts|mts|cts|js|mjs|cjs)$/.test(arg);
}

/** `--qos`: a policy, or a usage error naming the bad part. */
async function qosFlag(v: string | undefined): Promise<QosPolicy | undefined> {
  if (v === undefined) return undefined;
  const { parseQosFlag } = await import("../myrixen/qos-schema.js");
  try {
    return parseQosFlag(v);
  } catch (e) {
    throw new UsageError((e as Error).message, "run");
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

/** --max-heap: MiB, within what a domain's heap may be (xen/hypervisor/domain.ts). */
function heapMb(v: string): number {
  const n = positiveInt("--max-heap")(v);
  if (n < 16 || n > 16384) throw new InvalidArgumentError(`--max-heap must be 16..16384 (MiB), got ${n}`);
  return n;
}

/** --max-buffers: MiB, within what a domain may be given (xen/hypervisor/domain.ts). */
function buffersMb(v: string): number {
  const n = positiveInt("--max-buffers")(v);
  if (n < 16 || n > 1 << 20)
    throw new InvalidArgumentError(`--max-buffers must be 16..${1 << 20} (MiB), got ${n}`);
  return n;
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
      "VMM-bypass message passing for virtual machines: Xen-style domains on worker threads, " +
        "grant tables, event channels, XenStore and shared rings; MX over bypass and split paths.",
    )
    .version(MYRIXEN_VERSION)
    .exitOverride()
    .enablePositionalOptions();

  program
    .command("start")
    .description(
      "the main job (npm start): NAS EP and OSU latency/bandwidth on a virtual cluster, native vs bypass vs split (medians of --runs)",
    )
    .option(
      "--dashboard [addr:port]",
      "serve the live dashboard while it runs (default 127.0.0.1:7480; a port alone binds 127.0.0.1)",
      parseDashboardFlag,
    )
    .option(
      "--runs <n>",
      `samples per cell; the table shows their medians (default ${DEFAULT_RUNS}, about half a minute each)`,
      positiveInt("--runs"),
    )
    .option("--quick", "one run per cell (no medians): a smoke test in about half a minute")
    .option("--json <file>", "also write every row as JSON ({ machine, rows }, as myrixen bench --json)")
    .option("--out <dir>", "write bench.json and bench.html (the HTML report with plots) there")
    .action(
      async (o: {
        dashboard?: { host: string; port: number } | true;
        runs?: number;
        quick?: boolean;
        json?: string;
        out?: string;
      }) => {
        if (o.quick && o.runs !== undefined)
          throw new UsageError("give --quick or --runs, not both", "start");
        try {
          const { runMainJob } = await import("./start.js");
          const ok = await runMainJob(out, err, {
            dashboard: dashboardAt(o.dashboard),
            runs: o.quick ? 1 : o.runs,
            json: o.json,
            out: o.out,
          });
          if (!ok) process.exitCode = 1;
        } catch (e) {
          if (e instanceof StartUsageError) throw new UsageError(e.message, "start");
          throw e;
        }
      },
    );

  program
    .command("demo")
    .description("the substrate demo: two guest domains exchange requests over a granted ring")
    .option("--requests <n>", "requests the frontend sends", positiveInt("--requests"), 1_000_000)
    .action(async (o: { requests: number }) => {
      const { runDemo } = await import("./demo.js");
      const r = await runDemo({ requests: o.requests, out });
      if (!r.ok) process.exitCode = 1;
    });

  program
    .command("bench")
    .description(
      "benchmarks with baselines measured in the same run; no suite = substrate, pingpong, stream, breakdown",
    )
    .argument("[suite]", `one of: ${SUITES.join(", ")}`)
    .option("--quick", "fewer runs and iterations: a suite in under a minute, all of them in a few minutes")
    .option("--json <file>", "also write every row as JSON ({ machine, rows })")
    .option(
      "--out <dir>",
      "write bench.json and bench.html (plots) there (default with no suite: reports/bench-<time>)",
    )
    .option("--sizes <list>", "message sizes, e.g. 0,8,4K,1M (default: OSU's sweep to 4 MiB)")
    .option("--transports <list>", `subset of: ${ALL_TRANSPORTS.join(",")}`)
    .option(
      "--scope <scope>",
      "pingpong/stream/breakdown ranks on one host (intra-host), on two linked hosts with raw-tcp (cross-host), or all " +
        "(default: intra-host with a suite, all without)",
    )
    .addHelpText(
      "after",
      "\nSuites:\n  substrate   event-channel ping-pong vs raw SharedArrayBuffer ping-pong; ring requests/s\n" +
        "  pingpong    MX one-way latency, native and bypass, with raw-sab, raw-relay, postmessage\n" +
        "  stream      MX bandwidth (osu_bw: window 64), native and bypass, with raw-sab and memcpy\n" +
        "  (--scope cross-host: pingpong and stream between two hosts whose NICs are linked over\n" +
        "   loopback TCP, against raw-tcp (the wire) and raw-chain (the bare four threads))\n" +
        "  breakdown   where a traced one-way message spends its time, stage by stage, with its thread\n" +
        "              hand-offs and wake-ups: native, bypass, split; one host or (--scope) across hosts\n" +
        "  isolation   a 1 MiB streamer beside an 8 B ping-pong, caps and 3:1 weights (both scopes; only when named)\n" +
        "  scale       1..16 guest pairs streaming at once vs native processes: MB/s, Jain's index (only when named)\n" +
        "\nRows: { bench, transport, scope, bytes, metric, median, min, max, runs }; medians over runs,\n" +
        "warm-up runs excluded, machine load recorded.",
    )
    .action(async (suite: string | undefined, o: BenchCliOptions) => {
      try {
        const { benchCommand } = await import("./bench.js");
        await benchCommand(suite, o, out, err);
      } catch (e) {
        if (e instanceof BenchUsageError) throw new UsageError(e.message, "bench");
        throw e;
      }
    });
  program
    .command("run")
    .description(
      "run N ranks of a program (built-in or a module) on this machine, or across myrixen hosts (mpirun's options)",
    )
    .option(
      "-n, --np <n>",
      "number of ranks (default: one per slot; inside Slurm: SLURM_NTASKS). -np also works",
    )
    .option(
      "-H, --host <list>",
      "run on these myrixen hosts, Open MPI's way: host[:slots],... (a host named again adds a slot; " +
        "host:port:slots for a port other than 7470; IPv6 in brackets: [::1]:2, [::1]:7471:2)",
    )
    .option("--hosts <list>", "run on these myrixen hosts: host[:port][*slots],... (port default 7470)")
    .option(
      "--hostfile <file>",
      "run on the hosts of an Open MPI hostfile (hostname[:port] slots=N [max_slots=M])",
    )
    .option(
      "--map-by <how>",
      "node: ranks round-robin across hosts (default); slot: fill each host's slots in order " +
        "(Open MPI's core, socket, ppr:N:node and :OVERSUBSCRIBE are understood)",
    )
    .option("-N, --npernode <n>", "N ranks on each host (Open MPI's --map-by ppr:N:node)")
    .option(
      "--oversubscribe",
      "allow more ranks than slots (alone on this machine: one slot per core, as Open MPI counts them)",
    )
    .option(
      "-x <VAR[=VALUE]>",
      "give the ranks VAR in process.env (its value here, or VALUE); repeat for more",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option(
      "--timeout <seconds>",
      `end the job after this long, saying which MPI call each rank waits in (exit code ${TIMEOUT_EXIT_CODE})`,
    )
    .option("--display-map", "print which host each rank runs on before the job starts (on stderr)")
    .option(
      "--tag-output",
      "prefix each output line with [rank@host] (default: lines as the ranks print them)",
    )
    .option("--path <path>", "native | bypass | split", "bypass")
    .option(
      "--pages <n>",
      `guest memory per rank in 4 KiB pages (default 16384 = 64 MiB; at most ${RANK_PAGES_MAX})`,
      (v: string) => {
        const n = positiveInt("--pages")(v);
        if (n > RANK_PAGES_MAX)
          throw new InvalidArgumentError(
            `--pages must be at most ${RANK_PAGES_MAX} (4 KiB pages: ${RANK_PAGES_MAX / 262144} GiB per rank), got ${n}`,
          );
        return n;
      },
    )
    .option(
      "--max-heap <MiB>",
      "each rank's JavaScript heap limit (default 512; 16..16384); typed arrays and guest memory do not count against it",
      heapMb,
    )
    .option(
      "--max-buffers <MiB>",
      `ArrayBuffers and typed arrays each rank may hold outside its heap (default ${DEFAULT_MAX_BUFFER_MB}); a rank that holds more is stopped`,
      buffersMb,
    )
    .option(
      "--qos <policy>",
      "each rank's weight and caps on the NIC: weight=N,tx-bytes=N,tx-msgs=N,rx-bytes=N,rx-msgs=N (per second; k, M, G)",
    )
    .option(
      "--link-timeout <ms>",
      `how long the hosts may take to link their NICs before the job gives up (default 10000, at most ${LINK_TIMEOUT_MAX_MS})`,
      (v: string) => {
        const ms = positiveInt("--link-timeout")(v);
        if (ms > LINK_TIMEOUT_MAX_MS)
          throw new InvalidArgumentError(
            `--link-timeout must be at most ${LINK_TIMEOUT_MAX_MS} (ms), got ${ms}`,
          );
        return ms;
      },
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
    .option("--out <dir>", "osu-*, nas-*: write bench.json and bench.html (the HTML report) there")
    .option(
      "--openmpi",
      "nas-is, nas-cg: then run the kernel's C port over Open MPI (mpirun, same ranks and class) on this host and print its time (with --out: its row in the report)",
    )
    .argument("<program>", `a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or a module path`)
    .argument("[args...]", "the program's own arguments")
    .addHelpText(
      "after",
      "\nWith no -H, --hosts or --hostfile and outside Slurm, a host starts in this process with one\n" +
        "slot per core. Inside a Slurm allocation (SLURM_JOB_NODELIST set), the nodes and their task\n" +
        "counts come from Slurm (each node runs `myrixen host` on port 7470). Ctrl-C stops every rank\n" +
        "on every host. Exit code: the first failing rank's (1 if it threw), 2 for bad usage,\n" +
        `${TIMEOUT_EXIT_CODE} after --timeout, 130 after Ctrl-C.`,
    )
    .passThroughOptions()
    .action(async (prog: string, args: string[], o: RunCliOptions) => {
      try {
        const qos = await qosFlag(o.qos);
        const { runCommand } = await import("./run.js");
        process.exitCode = await runCommand(prog, args, {
          n: o.np === undefined ? undefined : rankCount(o.np),
          path: o.path,
          pages: o.pages,
          maxHeapMb: o.maxHeap,
          maxBufferMb: o.maxBuffers,
          host: o.host,
          qos,
          hosts: o.hosts,
          hostfile: o.hostfile,
          mapBy: o.mapBy,
          npernode: o.npernode === undefined ? undefined : positiveCount("--npernode", o.npernode),
          oversubscribe: o.oversubscribe,
          tagOutput: o.tagOutput,
          exportEnv: exportedEnv(o.x ?? []),
          timeoutS: o.timeout === undefined ? undefined : seconds(o.timeout),
          displayMap: o.displayMap,
          linkTimeoutMs: o.linkTimeout,
          keyFile: o.keyFile,
          dashboard: dashboardAt(o.dashboard as RunCliOptions["dashboard"] | true),
          out: o.out,
          openmpi: o.openmpi,
        });
      } catch (e) {
        if (e instanceof RunUsageError || e instanceof RangeError) throw new UsageError(e.message, "run");
        throw e;
      }
    });

  configureHostCommand(program.command("host"));
  configureExecCommand(program.command("exec"));

  configureToolstack(
    program,
    async (f) => {
      try {
        process.exitCode = await f();
      } catch (e) {
        if (e instanceof ToolstackUsageError) throw new UsageError(e.message, e.command);
        throw e;
      }
    },
    dashboardAddressFlag("--listen"),
  );

  // Each mistake on one line, named for what to fix.
  oneLineErrors(program, "myrixen");
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  // A reader that goes away (| head) ends the command quietly, as with any Unix tool.
  for (const s of [process.stdout, process.stderr])
    s.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EPIPE") process.exit(141);
    });
  try {
    const run = program.commands.find((c) => c.name() === "run");
    await program.parseAsync(run ? openMpiSpellings(argv, run) : argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof UsageError) {
      err(`myrixen${e.command ? ` ${e.command}` : ""}: ${e.message}`);
      return 2;
    }
    if (e instanceof RuntimeFailure) {
      err(`myrixen${e.command ? ` ${e.command}` : ""}: ${e.message}`);
      return 1;
    }
    if (e instanceof ConfigError) {
      for (const p of e.problems) err(`myrixen host: ${p}`);
      return 2;
    }
    // Never a stack trace of the tool itself: the message, and where to get the rest.
    err(`myrixen: ${(e as Error)?.message ?? String(e)}`);
    if (process.env.MYRIXEN_DEBUG) err(String((e as Error)?.stack));
    else err("myrixen: (this is a bug in myrixen; MYRIXEN_DEBUG=1 shows where it happened)");
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));

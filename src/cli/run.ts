/**
 * `myrixen run -n N [-H LIST | --hosts LIST | --hostfile FILE] [--map-by node|slot] [--path P]
 * PROGRAM [ARGS...]`, with Open MPI's mpirun habits: runs N ranks of PROGRAM on a host started
 * in this process (the embedded default, one slot per core as Open MPI counts them), or across
 * running `myrixen host`s (an Open MPI host list, a list with ports, an Open MPI hostfile, or
 * the Slurm allocation this runs in). More ranks than slots is refused without
 * --oversubscribe. Rank output is passed through as is (byte for byte what the program
 * printed); --tag-output prefixes `[rank@host]`. The exit code is the first non-zero exit code
 * of a rank (a rank that throws: 1, with its stack); --timeout S ends a stuck job with exit code
 * 124 and where each rank waits (rank-state.ts); Ctrl-C stops every rank on every host (exit
 * code 130); a host that vanishes ends the job with a message naming it. Hosts are reached
 * with the cluster key (auth.ts: --key-file, MYRIXEN_KEY_FILE, or the default file); a host
 * that refuses it is named with the key file to use (exit code 1), an unusable key file is
 * exit code 2. Usage errors are one line and exit code 2.
 */
import { basename, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { OPENMPI_NAS_KERNELS, runOpenMpiNas } from "../bench/openmpi-nas.js";
import {
  type ClusterKey,
  KEY_FILE_ENV,
  KeyFileError,
  loadClusterKey,
  randomClusterKey,
} from "../cluster/auth.js";
import {
  type HostAddress,
  type HostEntry,
  HostListError,
  hostsFromSlurm,
  parseHostfile,
  parseHostList,
} from "../cluster/hostfile.js";
import { Job, JobSetupError, type JobTarget, LocalTarget, type RankOutcome } from "../cluster/job.js";
import { createLogger } from "../cluster/log.js";
import { coreSlots, type MapBy } from "../cluster/placement.js";
import { BUILTIN_PROGRAMS, ProgramError, resolveProgram } from "../cluster/programs.js";
import { NOT_FINALIZED } from "../cluster/rank-state.js";
import { DEFAULT_RANK_HEAP_MB, DEFAULT_RANK_PAGES } from "../cluster/ranks.js";
import { AuthError, RemoteHost } from "../cluster/remote.js";
import { readSmallTextFile } from "../cluster/small-file.js";
import { RANK_PATHS, type RankPath } from "../cluster/wire.js";
import type { Dashboard } from "../dashboard/server.js";
import { Host } from "../host/host.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import { asksForHelp, builtinArgsProblem, builtinHelp } from "../programs/builtin-args.js";
import { parseNasArgs } from "../programs/nas/args.js";
import { OSU_SIZES, parseOsuArgs } from "../programs/osu/args.js";
import { guestProgramExports, loadGuestImage, noModuleThere } from "../xen/guest/loader.js";
import { frameLocation, NO_MAIN } from "../xen/guest/reach.js";
import { type EmbeddedObservation, observeEmbedded } from "./embedded.js";
import { type OpenMpiPeerRun, prepareRunReport, type RunReport, RunReportUsageError } from "./run-report.js";
import { RuntimeFailure, RunUsageError, TIMEOUT_EXIT_CODE } from "./usage.js";

export { BUILTIN_PROGRAMS, RunUsageError, resolveProgram, TIMEOUT_EXIT_CODE };

export interface RunOptions {
  /** Ranks (default: SLURM_NTASKS inside Slurm, else the hosts' total slots; required with no hosts). */
  n?: number;
  path: string;
  pages?: number;
  /** Each rank's JavaScript heap limit, MiB (--max-heap; default DEFAULT_RANK_HEAP_MB). */
  maxHeapMb?: number;
  /** Each rank's ArrayBuffers and typed arrays outside its heap, MiB (--max-buffers; default DEFAULT_MAX_BUFFER_MB). */
  maxBufferMb?: number;
  /** Each rank's weight and caps (--qos; bypass ranks: their myri device's policy). */
  qos?: QosPolicy;
  /** `host[:port][*slots],...` */
  hosts?: string;
  hostfile?: string;
  mapBy?: string;
  oversubscribe?: boolean;
  /** Open MPI's host list (-H): host[:slots],... (a host named again adds a slot; host:port:slots names a port). */
  host?: string;
  /** Ranks per host (Open MPI's --npernode / -N). */
  npernode?: number;
  /** Prefix lines with `[rank@host]` (default: no prefix, as Open MPI). */
  tagOutput?: boolean;
  /** Variables the ranks see as process.env (-x). */
  exportEnv?: Record<string, string>;
  /** End the job after this many seconds, with a report of where each rank waits (exit code 124). */
  timeoutS?: number;
  /** Print which host each rank runs on before the job starts. */
  displayMap?: boolean;
  /** How long the hosts may take to link their NICs (ms, default 10 000). */
  linkTimeoutMs?: number;
  /** The cluster key file (default: MYRIXEN_KEY_FILE, then ~/.config/myrixen/cluster.key). */
  keyFile?: string;
  /** Where Slurm's variables and MYRIXEN_KEY_FILE come from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Serve the live dashboard of the job's hosts here while it runs. */
  dashboard?: HostAddress;
  /** osu-*, nas-*: write DIR/bench.json and DIR/bench.html (run-report.ts). */
  out?: string;
  /** nas-is, nas-cg: then run its Open MPI counterpart with the same ranks and class (bench/openmpi-nas.ts). */
  openmpi?: boolean;
}

const err = (line: string) => process.stderr.write(`myrixen run: ${line}\n`);
const note = (line: string) => process.stderr.write(`${line}\n`);

/**
 * Open MPI's `-H host[:slots],...` as host entries: a host without a count has one slot and a
 * host named again adds its slots; `host:port:slots` names a control port other than 7470.
 * An IPv6 address goes in brackets, as in a URL: `[::1]:2` (2 slots), `[::1]:7471:2`. Items in
 * the --hosts form are read as --hosts reads them: `host*slots`, `[v6]:port*slots`, and a
 * bracketed address alone or with a port (`[::1]`, `[::1]:7471`: the slots its host reports).
 */
export function parseOpenMpiHostList(text: string): HostEntry[] {
  const items = text.split(",").map((s) => s.trim());
  const converted = items.map((item, i) => {
    const where = `-H item ${i + 1}`;
    if (item === "")
      throw new RunUsageError(`${where} is empty (write host[:slots],..., e.g. -H node1:2,node2:2)`);
    if (item.includes("*")) return item;
    let parts: string[];
    const v6 = /^(\[[^\]]*\])(.*)$/.exec(item);
    if (v6) {
      if (v6[2] !== "" && !v6[2].startsWith(":"))
        throw new RunUsageError(`${where} "${item}": write [addr], [addr]:slots or [addr]:port:slots`);
      parts = [v6[1], ...(v6[2] === "" ? [] : v6[2].slice(1).split(":"))];
    } else {
      // Colons and no brackets: an IPv6 address the parts below would cut at its colons.
      if (item.includes("::") || item.split(":").length > 3)
        throw new RunUsageError(
          `${where} "${item}": write an IPv6 address in brackets: [addr], [addr]:slots or [addr]:port:slots`,
        );
      parts = item.split(":");
    }
    const count = (v: string) => {
      if (!/^\d+$/.test(v) || Number(v) < 1)
        throw new RunUsageError(`${where} "${item}": the slot count must be a positive integer, got "${v}"`);
      return Number(v);
    };
    if (parts.length === 1) return v6 ? item : `${item}*1`;
    if (parts.length === 2) {
      const n = count(parts[1]);
      if (n >= 1024) {
        // [v6]:port, the --hosts form, was always read so.
        if (v6) return item;
        throw new RunUsageError(
          `${where} "${item}": -H host:N gives N slots (Open MPI's meaning), and ${n} looks like a port; write host:port:slots or --hosts host:port*slots`,
        );
      }
      return `${parts[0]}*${n}`;
    }
    if (parts.length === 3) return `${parts[0]}:${parts[1]}*${count(parts[2])}`;
    throw new RunUsageError(
      `${where} "${item}": write host[:slots] or host:port:slots (IPv6 in brackets: [addr]:port:slots)`,
    );
  });
  try {
    return parseHostList(converted.join(","));
  } catch (e) {
    if (e instanceof HostListError) throw new RunUsageError(e.message.replace(/--hosts item/g, "-H item"));
    throw e;
  }
}

/** --map-by in Open MPI's spellings: node, slot (core, socket, ... place like slot), ppr:N:node, with :OVERSUBSCRIBE. */
export function parseMapBy(text: string): { mapBy: MapBy; npernode?: number; oversubscribe?: boolean } {
  const [how, ...mods] = text.split(":");
  let mapBy: MapBy;
  let npernode: number | undefined;
  let oversubscribe: boolean | undefined;
  const rest = [...mods];
  const h = how.toLowerCase();
  if (h === "node") mapBy = "node";
  else if (
    [
      "slot",
      "core",
      "hwthread",
      "socket",
      "package",
      "numa",
      "l3cache",
      "l2cache",
      "l1cache",
      "board",
    ].includes(h)
  )
    mapBy = "slot";
  else if (h === "ppr") {
    const [count, unit] = rest.splice(0, 2);
    if (!/^\d+$/.test(count ?? "") || Number(count) < 1 || unit?.toLowerCase() !== "node")
      throw new RunUsageError(`--map-by ${text}: write ppr:N:node (N ranks on each host)`);
    mapBy = "slot";
    npernode = Number(count);
  } else
    throw new RunUsageError(
      `--map-by must be node or slot (or Open MPI's core, socket, ppr:N:node), got "${text}"`,
    );
  for (const m of rest) {
    if (/^oversubscribe$/i.test(m)) oversubscribe = true;
    else if (/^nooversubscribe$/i.test(m)) oversubscribe = false;
    else
      throw new RunUsageError(`--map-by ${text}: the modifier "${m}" is not supported (only :OVERSUBSCRIBE)`);
  }
  return { mapBy, npernode, oversubscribe };
}

/** A file: URL (or a path) as the user would name it: relative to the working directory when under it. */
function shortPath(urlOrPath: string): string {
  let path = urlOrPath;
  try {
    if (urlOrPath.startsWith("file:")) path = fileURLToPath(urlOrPath);
  } catch {
    return urlOrPath;
  }
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith("..") ? rel : path;
}

/** file: URLs in a message or stack as paths. */
function withPaths(text: string): string {
  // A URL before ":line:col" runs to it (its path may hold parentheses: "p%20(copy)/a.ts").
  return text.replace(/file:\/\/(?:\S+?(?=:\d+:\d+)|[^\s):]+)/g, (u) => shortPath(u));
}

/**
 * Frames of MyriXen's own guest runtime and bundles and of Node's internals say nothing about
 * the user's program (a guest's runtime leaves them out already: this is for a host of an
 * older version).
 */
const RUNTIME_FRAME =
  /[/\\]xen[/\\]guest[/\\](runtime|sandbox|domain-thread)\.(js|ts)|[/\\]bundles[/\\](chunk-\w+|guest)\.js|\(node:|at node:/;

/**
 * A rank's error as the user reads it: its name and message, then the frames of its stack
 * (paths, not URLs), then its causes (`[cause]: ` lines and their frames, indented as the
 * rank's runtime wrote them: xen/guest/domain-thread.ts).
 */
export function describeRankError(e: Error): { head: string; frames: string[] } {
  const head = withPaths(`${e.name && e.name !== "Error" ? `${e.name}: ` : ""}${e.message}`);
  const frames = (e.stack ?? "")
    .split("\n")
    .filter((l) => (/^\s+at /.test(l) && !RUNTIME_FRAME.test(l)) || /^\s+\[cause\]: /.test(l))
    .map((l) => {
      // Frames at four spaces at least, a cause two deeper than the runtime wrote it (under the frames above).
      const indent = /^\s*/.exec(l)![0].length;
      return `${" ".repeat(/^\s+at /.test(l) ? Math.max(indent, 4) : indent + 2)}${withPaths(l.trim())}`;
    });
  return { head, frames };
}

/**
 * The program's files compiled before anything starts: a syntax error (or a file it imports
 * that is missing) is reported once, with file:line, instead of by every rank.
 */
async function compileProblem(program: URL): Promise<string | undefined> {
  if (program.protocol !== "file:") return undefined;
  const image = await loadGuestImage(program.href);
  for (const m of Object.values(image.modules)) {
    if (m.error !== undefined) return withPaths(m.error);
    for (const [spec, dep] of Object.entries(m.imports))
      if (dep.kind === "refused" && dep.message.startsWith("cannot find module"))
        return `${shortPath(m.url)} imports "${spec}": ${noModuleThere(spec)}`;
  }
  return undefined;
}

/** How a program's exports need to change for it to run: the end of a usage line. */
const EXPORT_MAIN =
  "export the function each rank runs as the default export or as main (export default async function main(guest) { ... })";

/**
 * A usage mistake if the job's ranks failed because the program's main is not a function (what
 * the names it exports cannot tell: `export default 42`), else undefined. The words are the
 * rank's, which a program could throw itself: they count only if they name the program run
 * (by its file name: a remote host has its own path to it), never another file.
 */
function mainNotAFunction(f: RankOutcome | undefined, program: string): string | undefined {
  if (f?.state !== "crashed" || !f.error) return undefined;
  const m = NO_MAIN.exec(f.error.message);
  if (!m || basename(shortPath(m[1])) !== basename(program)) return undefined;
  return `${shortPath(m[1])} exports no function main(guest) (${m[2]}): ${EXPORT_MAIN}`;
}

/** A usage mistake if the program exports no main(guest) (read without running it), else undefined. */
async function noMainProblem(program: URL): Promise<string | undefined> {
  if (program.protocol !== "file:") return undefined;
  const names = await guestProgramExports(fileURLToPath(program));
  if (names === undefined || names.includes("default") || names.includes("main")) return undefined;
  return `${shortPath(program.href)} exports no main(guest): ${EXPORT_MAIN}`;
}

/** Which hosts the job runs on: -H, --hosts, --hostfile, Slurm's allocation, or none (embedded). */
function chooseHosts(o: RunOptions): { hosts?: HostEntry[]; ntasks?: number; source: string } {
  try {
    const given = [
      o.host !== undefined && "-H",
      o.hosts !== undefined && "--hosts",
      o.hostfile !== undefined && "--hostfile",
    ].filter(Boolean);
    if (given.length > 1)
      throw new RunUsageError(`give one of -H, --hosts and --hostfile, not ${given.join(" and ")}`);
    if (o.host !== undefined) return { hosts: parseOpenMpiHostList(o.host), source: "-H" };
    if (o.hosts !== undefined) return { hosts: parseHostList(o.hosts), source: "--hosts" };
    if (o.hostfile !== undefined) {
      let text: string;
      try {
        text = readSmallTextFile(o.hostfile, "the hostfile");
      } catch (e) {
        const m = (e as Error).message;
        throw new RunUsageError(
          m.startsWith("the hostfile") ? m : `cannot read the hostfile ${o.hostfile}: ${m}`,
        );
      }
      return { hosts: parseHostfile(text, o.hostfile), source: o.hostfile };
    }
    const slurm = hostsFromSlurm(o.env ?? process.env);
    if (slurm) return { hosts: slurm.hosts, ntasks: slurm.ntasks, source: "the Slurm allocation" };
    return { source: "embedded" };
  } catch (e) {
    if (e instanceof HostListError) throw new RunUsageError(e.message);
    throw e;
  }
}

/**
 * A host's own text, printed inside the launcher's lines: its control characters shown, not
 * obeyed (a host could otherwise move the cursor or erase lines and forge what the launcher
 * says; what ranks print passes through byte for byte, as under mpirun).
 */
function visible(text: string): string {
  let out = "";
  for (const ch of text) {
    const c = ch.charCodeAt(0);
    out +=
      (c < 0x20 && c !== 0x09 && c !== 0x0a) || (c >= 0x7f && c <= 0x9f)
        ? `\\x${c.toString(16).padStart(2, "0")}`
        : ch;
  }
  return out;
}

async function connectAll(hosts: HostEntry[], key: ClusterKey): Promise<RemoteHost[]> {
  const results = await Promise.allSettled(
    hosts.map((h) =>
      RemoteHost.connect(h, {
        key,
        onLog: (level, msg) => {
          if (level === "error" || level === "warn") err(`host ${h.label}: ${visible(msg)}`);
        },
      }),
    ),
  );
  const ok = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const bad = results.flatMap((r) =>
    r.status === "fulfilled"
      ? []
      : r.reason instanceof AuthError
        ? [`${r.reason.message}; use the cluster's key file: --key-file FILE or ${KEY_FILE_ENV}=FILE`]
        : [(r.reason as Error).message],
  );
  if (bad.length > 0) {
    for (const h of ok) h.close();
    throw new Error(bad.join("\n"));
  }
  return ok;
}

/** Why the job failed, as lines for stderr: one line saying what happened, then a thrown error's stack. */
function describeFailure(
  f: RankOutcome,
  lost: { label: string; nicId: number; reason: string }[],
  heapMb: number,
): string[] {
  if (f.state === "lost") {
    const l = lost.find((x) => x.label === f.host);
    if (l)
      return [
        `host ${l.label} (NIC ${l.nicId}) was lost mid-job: ${l.reason}; its ranks are gone and the other ranks were stopped`,
      ];
    return [`${f.error?.message ?? `rank ${f.rank} was lost`}; the other ranks were stopped`];
  }
  // Node's words for a worker ended at its heap limit (ERR_WORKER_OUT_OF_MEMORY); only the
  // message crosses the wire from a remote host.
  if (f.error && /reaching memory limit: JS heap out of memory/.test(f.error.message))
    return [
      `rank ${f.rank} ran out of memory: its JavaScript heap reached the ${heapMb} MiB limit (raise it with --max-heap <MiB>; typed arrays and guest memory do not count against it); the other ranks were stopped`,
    ];
  // The hypervisor's words for a guest it stopped at its buffer limit (buffer-watch.ts).
  const buffers = f.error?.message.match(
    /held (\d+) MiB of ArrayBuffers and typed arrays, over its limit of (\d+) MiB/,
  );
  if (buffers)
    return [
      `rank ${f.rank} ran out of memory: it held ${buffers[1]} MiB of ArrayBuffers and typed arrays, over the ${buffers[2]} MiB limit (raise it with --max-buffers <MiB>; its JavaScript heap and guest memory do not count against it); the other ranks were stopped`,
    ];
  if (f.state === "crashed" && f.error && !/exited with code \d+/.test(f.error.message)) {
    const { head, frames } = describeRankError(f.error);
    const at = frames[0] === undefined ? undefined : frameLocation(frames[0])?.at;
    return [
      `rank ${f.rank} failed: ${head}${at ? ` (at ${at})` : ""}; the other ranks were stopped`,
      ...frames,
    ];
  }
  if (f.error?.name === NOT_FINALIZED)
    return [`rank ${f.rank} ${f.error.message}; the other ranks were stopped`];
  const how = f.state === "shutdown" ? `exited with code ${f.exitCode}` : f.state;
  return [
    `rank ${f.rank} ${how}${f.error ? `: ${withPaths(f.error.message)}` : ""}; the other ranks were stopped`,
  ];
}

/** --display-map: which ranks run on which host. */
function printMap(placement: string[], path: string, slotsOf: (label: string) => number | undefined): void {
  const byHost = new Map<string, number[]>();
  placement.forEach((label, rank) => {
    const list = byHost.get(label);
    if (list) list.push(rank);
    else byHost.set(label, [rank]);
  });
  err(
    `job map: ${placement.length} rank${placement.length === 1 ? "" : "s"} on ${byHost.size} host${byHost.size === 1 ? "" : "s"}, ${path} path`,
  );
  for (const [label, ranks] of byHost) {
    const slots = slotsOf(label);
    note(
      `  ${label}${slots !== undefined && Number.isFinite(slots) ? ` (${slots} slot${slots === 1 ? "" : "s"})` : ""}: rank${ranks.length === 1 ? "" : "s"} ${ranks.join(" ")}`,
    );
  }
}

/** Guest memory in a page. */
const PAGE_BYTES = 4096;

/**
 * What a built-in needs that the job's ranks cannot have, known before anything starts: an OSU
 * benchmark holds a send and a receive buffer of its largest message in each rank's guest
 * memory (--pages), so a `-m` whose two buffers alone do not fit could only fail after the
 * smaller sizes ran. Also a `--json` with no file name (the program would write no rows).
 */
export function builtinLimitsProblem(
  program: string,
  argv: readonly string[],
  pages = DEFAULT_RANK_PAGES,
): string | undefined {
  if (argv.some((a, i) => a === "--json" && argv[i + 1]?.trim() === ""))
    return `${program}: --json needs a file name, got an empty one: write --json FILE`;
  if (!Object.hasOwn(OSU_SIZES, program)) return undefined;
  const { max } = parseOsuArgs(program, argv, OSU_SIZES[program as keyof typeof OSU_SIZES]);
  if (max < 2) return undefined;
  const need = 2 * Math.ceil(max / PAGE_BYTES);
  if (need <= pages) return undefined;
  const mib = (p: number) => `${Number(((p * PAGE_BYTES) / (1 << 20)).toFixed(2))} MiB`;
  return (
    `${program} -m: the largest message, ${max} bytes, needs a send and a receive buffer of that size in each rank's ` +
    `guest memory (${need} pages, ${mib(need)}), more than its ${pages} pages (${mib(pages)}, --pages); ` +
    `give a smaller -m MAX or more --pages`
  );
}

export async function runCommand(program: string, argv: string[], o: RunOptions): Promise<number> {
  // The --out report's directory, once made: removed again if the job ends without writing it.
  const made: { report?: RunReport } = {};
  try {
    return await runJob(program, argv, o, made);
  } finally {
    made.report?.cleanup();
  }
}

async function runJob(
  program: string,
  argv: string[],
  o: RunOptions,
  made: { report?: RunReport },
): Promise<number> {
  // `myrixen run -n 2 osu-latency --help`: what the built-in takes; nothing starts.
  if (Object.hasOwn(BUILTIN_PROGRAMS, program) && asksForHelp(argv)) {
    process.stdout.write(builtinHelp(program));
    return 0;
  }
  if (o.keyFile !== undefined && o.keyFile.trim() === "")
    throw new RunUsageError(
      `--key-file needs a file name, got an empty one: write --key-file FILE, or leave it out for $${KEY_FILE_ENV} or ~/.config/myrixen/cluster.key`,
    );
  if (o.out !== undefined && o.out.trim() === "")
    throw new RunUsageError("--out needs a directory, got an empty one: write --out DIR");
  if (!RANK_PATHS.includes(o.path as RankPath))
    throw new RunUsageError(`--path must be one of ${RANK_PATHS.join(", ")}, got "${o.path}"`);
  const mapped = o.mapBy !== undefined ? parseMapBy(o.mapBy) : { mapBy: "node" as MapBy };
  if (mapped.npernode !== undefined && o.npernode !== undefined && mapped.npernode !== o.npernode)
    throw new RunUsageError(`--npernode ${o.npernode} and --map-by ${o.mapBy} disagree; give one`);
  const npernode = o.npernode ?? mapped.npernode;
  const oversubscribe = o.oversubscribe || mapped.oversubscribe === true;
  const mapBy: MapBy = npernode !== undefined ? "slot" : mapped.mapBy;
  const chosen = chooseHosts(o);
  if (o.openmpi) {
    if (!OPENMPI_NAS_KERNELS.includes(program))
      throw new RunUsageError(
        `--openmpi runs the Open MPI counterparts of ${OPENMPI_NAS_KERNELS.join(" and ")}; ${program} has none`,
      );
    if (chosen.hosts)
      throw new RunUsageError(
        "--openmpi runs Open MPI on this host only; leave out the hosts (-H, --hosts, --hostfile)",
      );
  }
  // A built-in's own arguments, checked as its ranks will check them, before anything starts
  // (and before --out makes its directory).
  if (Object.hasOwn(BUILTIN_PROGRAMS, program)) {
    const problem = builtinArgsProblem(program, argv) ?? builtinLimitsProblem(program, argv, o.pages);
    if (problem !== undefined) throw new RunUsageError(problem);
  }
  let report: RunReport | undefined;
  try {
    report = o.out === undefined ? undefined : prepareRunReport(program, argv, o.out);
    made.report = report;
  } catch (e) {
    throw e instanceof RunReportUsageError ? new RunUsageError(e.message) : e;
  }
  let programRef: string | URL = program;
  let localProgram: URL | undefined;
  try {
    localProgram = resolveProgram(program);
  } catch (e) {
    // A remote host resolves the program on its own file system: it need not exist here.
    if (!(e instanceof ProgramError)) throw e;
    if (!chosen.hosts) throw new RunUsageError(e.message);
  }
  if (localProgram) {
    const problem = await compileProblem(localProgram);
    if (problem) {
      err(`${problem} (the program does not compile; no rank was started)`);
      return 1;
    }
    const noMain = await noMainProblem(localProgram);
    if (noMain) throw new RunUsageError(noMain);
  }

  let targets: JobTarget[];
  let cleanup: () => Promise<void>;
  let n = o.n;
  /** Slots of each target, in order (what placement counts and --display-map shows). */
  let slots: { slots?: number; maxSlots?: number }[];
  if (!chosen.hosts) {
    // Alone on this machine: one slot per core, as Open MPI counts them.
    const cores = coreSlots();
    if (npernode !== undefined) {
      if (npernode > cores && !oversubscribe)
        throw new RunUsageError(
          `--npernode ${npernode}: this machine has ${cores} slot${cores === 1 ? "" : "s"} (one per core, as Open MPI counts them); pass --oversubscribe to run more ranks than cores`,
        );
      if (n !== undefined && n > npernode)
        throw new RunUsageError(`-n ${n} is more than --npernode ${npernode} on 1 host`);
      n ??= npernode;
    }
    n ??= cores;
    if (n > cores && !oversubscribe)
      throw new RunUsageError(
        `${n} ranks but this machine has ${cores} slot${cores === 1 ? "" : "s"} (one per core, as Open MPI counts them); pass --oversubscribe to run more ranks than cores, or use -n ${cores}`,
      );
    programRef = localProgram!;
    slots = [{ slots: oversubscribe ? Number.POSITIVE_INFINITY : cores }];
    const host = await Host.start({});
    // While it runs, `myrixen list`/`top`/`dashboard` see its host (and --dashboard serves the page).
    let observed: EmbeddedObservation;
    try {
      observed = await observeEmbedded([{ host, name: "local" }], randomClusterKey(), "myrixen run", o, note);
    } catch (e) {
      await host.stop();
      throw e;
    }
    targets = [new LocalTarget(host)];
    cleanup = async () => {
      await observed.stop();
      await host.stop();
    };
  } else {
    let key: ClusterKey;
    try {
      key = loadClusterKey({ flag: o.keyFile, env: o.env });
    } catch (e) {
      if (e instanceof KeyFileError) throw new RunUsageError(e.message);
      throw e;
    }
    if (key.created)
      err(`generated a new cluster key in ${key.file} (the hosts must hold the same key file)`);
    let remotes: RemoteHost[];
    try {
      remotes = await connectAll(chosen.hosts, key);
    } catch (e) {
      err((e as Error).message);
      return 1;
    }
    targets = remotes;
    let dashboard: Dashboard | undefined;
    const stopRemotes = async () => {
      await dashboard?.stop();
      for (const r of remotes) r.close();
    };
    cleanup = stopRemotes;
    const hosts = chosen.hosts;
    slots = hosts.map((h, i) => ({ slots: h.slots ?? remotes[i].slots, maxSlots: h.maxSlots }));
    if (npernode !== undefined) {
      const short = hosts.findIndex((_, i) => npernode > (slots[i].slots ?? 0));
      if (short >= 0 && !oversubscribe) {
        await stopRemotes();
        throw new RunUsageError(
          `--npernode ${npernode} needs ${npernode} slots on each host, and ${hosts[short].label} has ${slots[short].slots}; pass --oversubscribe or give it more slots`,
        );
      }
      if (n !== undefined && n > npernode * hosts.length) {
        await stopRemotes();
        throw new RunUsageError(`-n ${n} is more than --npernode ${npernode} × ${hosts.length} hosts`);
      }
      slots = hosts.map(() => ({ slots: npernode, maxSlots: npernode }));
      n ??= npernode * hosts.length;
    }
    if (o.dashboard) {
      const { Dashboard } = await import("../dashboard/server.js");
      const { remoteSource } = await import("../dashboard/sources.js");
      try {
        dashboard = await Dashboard.start({
          host: o.dashboard.host,
          port: o.dashboard.port,
          sources: hosts.map((h) => remoteSource(h, key)),
          key,
          log: createLogger({ level: "warn", format: "text" }),
        });
      } catch (e) {
        // The hosts' connections would keep the launcher alive: closed before it says why.
        await stopRemotes();
        throw new RuntimeFailure((e as Error).message, "run");
      }
      err(`dashboard at ${dashboard.url}`);
    }
    n ??= chosen.ntasks ?? slots.reduce((s, x) => s + (x.slots ?? 0), 0);
  }

  const hosts = chosen.hosts;
  const job = new Job(targets, {
    n,
    path: o.path as RankPath,
    program: programRef,
    argv: report?.argv ?? argv,
    pages: o.pages,
    maxHeapMb: o.maxHeapMb,
    maxBufferMb: o.maxBufferMb,
    qos: o.qos,
    mapBy,
    oversubscribe,
    slots,
    linkTimeoutMs: o.linkTimeoutMs,
    env: o.exportEnv,
    onPlacement: o.displayMap
      ? (placement) =>
          printMap(placement, o.path, (label) => slots[targets.findIndex((t) => t.label === label)]?.slots)
      : undefined,
    // As Open MPI: each line as the rank printed it, unless --tag-output.
    output: o.tagOutput
      ? (rank, stream, line, host) =>
          (stream === "stdout" ? process.stdout : process.stderr).write(`[${rank}@${host}] ${line}\n`)
      : (_rank, stream, line) => (stream === "stdout" ? process.stdout : process.stderr).write(`${line}\n`),
  });
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\nmyrixen run: stopping the job${hosts ? " on every host" : ""}\n`);
    void job.stop();
  };
  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  if (o.timeoutS !== undefined) {
    const s = o.timeoutS;
    timer = setTimeout(() => {
      timedOut = true;
      void job.rankStates().then(
        (states) => {
          err(`the job ran past --timeout ${s} s; stopping it. Where each rank was:`);
          for (const r of states) note(`  rank ${r.rank}${hosts ? ` on ${r.host}` : ""}: ${r.state}`);
          return job.stop();
        },
        () => job.stop(),
      );
    }, s * 1000);
  }
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const r = await job.run();
    if (timedOut) return TIMEOUT_EXIT_CODE;
    const usage = interrupted ? undefined : mainNotAFunction(r.failed, program);
    if (usage !== undefined) throw new RunUsageError(usage);
    if (r.failed)
      for (const line of describeFailure(r.failed, r.lostHosts, o.maxHeapMb ?? DEFAULT_RANK_HEAP_MB)) {
        // With one rank there are no others to stop.
        const said = n === 1 ? line.replace(/; the other ranks were stopped$/, "") : line;
        (said.startsWith("    ") ? note : err)(said);
      }
    if (interrupted) return 130;
    // Open MPI beside a job that failed would measure nothing to compare with.
    let peer: OpenMpiPeerRun | undefined;
    if (o.openmpi && r.exitCode === 0) peer = await openMpiBeside(program, argv, n);
    else if (o.openmpi) note("openmpi: not run (the job failed; there is nothing to set it beside)");
    if (report) {
      const [line] = report.finish(r, o.path, peer);
      if (line.startsWith("--out:")) {
        err(line);
        return r.exitCode || 1;
      }
      note(line);
    }
    return r.exitCode;
  } catch (e) {
    if (e instanceof JobSetupError) {
      if (e.usage) throw new RunUsageError(e.message);
      err(e.message);
      return 1;
    }
    throw e;
  } finally {
    clearTimeout(timer);
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await cleanup();
  }
}

/**
 * --openmpi: the Open MPI counterpart of the NAS kernel, with the job's ranks and class, after
 * the job; its lines printed here, its row (if any) for the report.
 */
async function openMpiBeside(
  program: string,
  argv: readonly string[],
  ranks: number,
): Promise<OpenMpiPeerRun> {
  // Only after a job that succeeded: its kernel took these arguments (under its own name:
  // "cg", not "nas-cg", which is what decides the options it has).
  const { cls } = parseNasArgs(program.replace(/^nas-/, ""), argv);
  note(`openmpi: running ${program} class ${cls} on ${ranks} ranks over Open MPI (mpirun) on this host`);
  const outcome = await runOpenMpiNas(program, cls, ranks);
  if ("missing" in outcome) {
    note(outcome.missing);
    return { notes: [outcome.missing] };
  }
  const r = outcome.result;
  const line =
    `openmpi: ${r.kernel.toUpperCase()} class ${cls} on ${ranks} ranks: ${r.time_s.toFixed(2)} s, ${r.mops.toFixed(2)} Mop/s, ` +
    `verification ${r.verified ? "SUCCESSFUL" : "UNSUCCESSFUL"} (${outcome.how})`;
  note(line);
  return { result: r, notes: [line] };
}

/**
 * The `openmpi` transport of `myrixen bench pingpong|stream`: Open MPI measured as a peer in
 * the same run, with the same sizes, iterations, runs and medians as the MX paths. A small C
 * program (openmpi/pingpong.c, shipped as source) is compiled with the machine's `mpicc` into
 * ~/.cache/myrixen/openmpi/ (rebuilt when the source or Open MPI changes) and started once per
 * suite with `mpirun -np 2`; it then takes one batch per command on its stdin, like the other
 * pairs, so its runs interleave with theirs.
 *   intra-host: shared memory (`--mca btl self,vader`, `sm` on Open MPI 5), pml ob1, with its
 *               default single-copy mechanism (CMA where the kernel allows it: the receiver
 *               reads the sender's memory with process_vm_readv, one copy)
 *   cross-host: TCP over loopback (`--mca btl self,tcp`, btl_tcp_if_include lo), the wire the
 *               cross-host MX pairs and raw-tcp use
 * The `openmpi-cico` transport (one host only) is the same pair with the single-copy mechanism
 * off (`--mca btl_vader_single_copy_mechanism none`): Open MPI's copy-in/copy-out through
 * shared memory, the only way left to two processes that cannot read each other's memory —
 * as two isolated guests cannot. The gap between the two columns is what one copy buys.
 * Both ranks busy-poll during a batch (mpi_yield_when_idle 0) and are not bound to cores
 * (`--bind-to none`), as the worker threads of the other transports are not.
 * Where mpicc or mpirun is missing, or Open MPI cannot start, the bench leaves the transport out
 * and says so in one line (see takeOpenMpiNotes); nothing fails.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  constants,
  existsSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
} from "node:fs";
import { availableParallelism, homedir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { type BenchRow, formatBytes, makeDirs, type Scope } from "./harness.js";
import { OPENMPI_CICO } from "./transports.js";

const run = promisify(execFile);

/** What to install where Open MPI is missing (Debian/Ubuntu). */
export const OPENMPI_INSTALL = "apt-get install openmpi-bin libopenmpi-dev";

export { OPENMPI_CICO };

/** Open MPI as it comes ("default"), or with its single-copy mechanism off ("cico"). */
export type OpenMpiFlavour = "default" | "cico";

/** The transport (row) name of a flavour. */
const transportOf = (flavour: OpenMpiFlavour): string => (flavour === "cico" ? OPENMPI_CICO : "openmpi");

/** Guard against a wedged batch or start (a rank that never answers). */
export const OPENMPI_BATCH_TIMEOUT_MS = 120_000;
const START_TIMEOUT_MS = 60_000;

// ---- finding and building ---------------------------------------------------------------

export interface OpenMpiTools {
  mpicc: string;
  mpirun: string;
  /** "4.1.4" (from `mpirun --version`). */
  version: string;
}

function onPath(name: string, path: string): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {}
  }
  return undefined;
}

/**
 * mpicc and mpirun on `path` with Open MPI's version, or the one line that says what is
 * missing and how to get it.
 */
export async function findOpenMpi(
  path = process.env.PATH ?? "",
): Promise<{ tools: OpenMpiTools } | { missing: string }> {
  const mpicc = onPath("mpicc", path);
  const mpirun = onPath("mpirun", path);
  if (!mpicc || !mpirun) {
    const names = [!mpicc && "mpicc", !mpirun && "mpirun"].filter(Boolean).join(" and ");
    return {
      missing: `openmpi: ${names} not found, so Open MPI is not measured; to measure it beside MyriXen: ${OPENMPI_INSTALL}`,
    };
  }
  try {
    const { stdout } = await run(mpirun, ["--version"], { timeout: 30_000 });
    const m = /Open MPI\)?\s+(\d+\.\d+(?:\.\d+)?)/i.exec(stdout);
    if (!m) return { missing: `openmpi: ${mpirun} is not Open MPI's (it says "${stdout.split("\n")[0]}")` };
    return { tools: { mpicc, mpirun, version: m[1] } };
  } catch (e) {
    return { missing: `openmpi: ${mpirun} --version failed (${(e as Error).message.split("\n")[0]})` };
  }
}

/** A C source of openmpi/: beside this file under src/, or under src/ from dist/src/bench/. */
export function openMpiSource(file = "pingpong.c"): string {
  const candidates = [
    new URL(`./openmpi/${file}`, import.meta.url),
    new URL(`../../../src/bench/openmpi/${file}`, import.meta.url),
  ].map((u) => fileURLToPath(u));
  const found = candidates.find((f) => existsSync(f));
  if (!found) throw new Error(`the Open MPI bench source is missing (looked for ${candidates.join(", ")})`);
  return found;
}

/** ~/.cache/myrixen/openmpi (or under $XDG_CACHE_HOME). */
export function openMpiCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "myrixen", "openmpi");
}

/** The compiled ping-pong and stream bench (openmpi/pingpong.c) for these tools. */
export function buildOpenMpiBench(tools: OpenMpiTools, cacheDir = openMpiCacheDir()): Promise<string> {
  return buildOpenMpiProgram(tools, "pingpong.c", "openmpi-bench", cacheDir);
}

/**
 * openmpi/`file` compiled for these tools as `name`-HASH: reused from `cacheDir` when its
 * source, the headers beside it and Open MPI's version are unchanged (the hash covers them),
 * else compiled with mpicc -O2 (and -lm).
 */
export async function buildOpenMpiProgram(
  tools: OpenMpiTools,
  file: string,
  name: string,
  cacheDir = openMpiCacheDir(),
): Promise<string> {
  const source = openMpiSource(file);
  const hash = createHash("sha256").update(readFileSync(source));
  const dir = dirname(source);
  for (const h of readdirSync(dir)
    .filter((f) => f.endsWith(".h"))
    .sort())
    hash.update(`\0${h}\0`).update(readFileSync(join(dir, h)));
  const digest = hash.update(`\0${tools.version}\0${tools.mpicc}`).digest("hex").slice(0, 16);
  const binary = join(cacheDir, `${name}-${digest}`);
  if (existsSync(binary)) return binary;
  makeDirs(cacheDir);
  // Compile to a private name, then rename: two runs building at once never see half a file.
  const tmp = `${binary}.${process.pid}.tmp`;
  try {
    await run(tools.mpicc, ["-O2", "-o", tmp, source, "-lm"], { timeout: 120_000 });
    renameSync(tmp, binary);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {}
    const err = e as Error & { stderr?: string };
    const why = (err.stderr?.trim() || err.message).split("\n").slice(-3).join(" | ");
    throw new Error(`mpicc could not build ${source}: ${why}`);
  }
  // Earlier builds of older sources are of no further use.
  for (const f of readdirSync(cacheDir))
    if (f.startsWith(`${name}-`) && join(cacheDir, f) !== binary && !f.endsWith(".tmp"))
      try {
        unlinkSync(join(cacheDir, f));
      } catch {}
  return binary;
}

// ---- running ----------------------------------------------------------------------------

/** The btl for shared memory: vader up to Open MPI 4, sm from 5. */
export function sharedMemoryBtl(version: string): string {
  return Number.parseInt(version, 10) >= 5 ? "sm" : "vader";
}

/** The MCA parameter that picks the shared-memory btl's single-copy mechanism. */
function singleCopyParam(version: string): string {
  return `btl_${sharedMemoryBtl(version)}_single_copy_mechanism`;
}

/**
 * What every mpirun here starts with: `ranks` ranks over the btls `btl` with pml ob1 (the pml
 * that uses the btls; a UCX-enabled build would otherwise pick ucx), not bound to cores (like
 * the worker threads), as root when we are, and oversubscribed when the ranks outnumber the
 * cores (they still start, slower, as MyriXen's would).
 */
export function mpirunBase(ranks: number, btl: string): string[] {
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  return [
    "-np",
    String(ranks),
    ...(isRoot ? ["--allow-run-as-root"] : []),
    ...(ranks > availableParallelism() ? ["--oversubscribe"] : []),
    "--bind-to",
    "none",
    "--mca",
    "pml",
    "ob1",
    "--mca",
    "btl",
    btl,
  ];
}

/** How mpirun starts the two ranks for a scope (see the top of this file). */
export function mpirunArgs(
  tools: OpenMpiTools,
  scope: Scope,
  binary: string,
  flavour: OpenMpiFlavour = "default",
): string[] {
  if (flavour === "cico" && scope !== "intra-host")
    throw new Error(`${OPENMPI_CICO} runs on one host only (over TCP there is no single copy to turn off)`);
  const btl = scope === "cross-host" ? "self,tcp" : `self,${sharedMemoryBtl(tools.version)}`;
  return [
    ...mpirunBase(2, btl),
    ...(scope === "cross-host" ? ["--mca", "btl_tcp_if_include", "lo"] : []),
    ...(flavour === "cico" ? ["--mca", singleCopyParam(tools.version), "none"] : []),
    "--mca",
    "mpi_yield_when_idle",
    "0",
    binary,
  ];
}

/**
 * The single-copy mechanism Open MPI's shared-memory btl uses by default here ("cma", "xpmem",
 * "knem", "none"), as `ompi_info` beside mpirun reports it; undefined where it cannot tell.
 */
export async function singleCopyMechanism(tools: OpenMpiTools): Promise<string | undefined> {
  const btl = sharedMemoryBtl(tools.version);
  const ompiInfo = join(dirname(tools.mpirun), "ompi_info");
  try {
    const { stdout } = await run(ompiInfo, ["--parsable", "--param", "btl", btl, "--level", "9"], {
      timeout: 30_000,
    });
    return new RegExp(`:${singleCopyParam(tools.version)}:value:([A-Za-z0-9_-]+)`).exec(stdout)?.[1];
  } catch {
    return undefined;
  }
}

/** How the pair for `scope` runs, in words (printed once per run). */
export function openMpiDescription(
  tools: OpenMpiTools,
  scope: Scope,
  flavour: OpenMpiFlavour = "default",
  singleCopy?: string,
): string {
  const btl = sharedMemoryBtl(tools.version);
  const how =
    scope === "cross-host"
      ? "TCP over loopback (--mca btl self,tcp)"
      : flavour === "cico"
        ? `shared memory (--mca btl self,${btl}) with --mca ${singleCopyParam(tools.version)} none: ` +
          "copy-in/copy-out, as between isolated VMs"
        : `shared memory (--mca btl self,${btl}; single copy: ${singleCopy ?? "its default"})`;
  const name = transportOf(flavour);
  return (
    `${name}, ${scope}: Open MPI ${tools.version}, mpirun -np 2, ${how}, pml ob1, ` +
    "both ranks busy-polling, not bound to cores (--bind-to none, like the worker threads)"
  );
}

/**
 * Open MPI's two ranks under one mpirun, waiting for batches: the same methods as MyriXen's
 * pairs (one sample per call), so the bench interleaves their runs.
 */
export class OpenMpiPair {
  private buffered = "";
  private readonly lines: string[] = [];
  private wake: (() => void) | undefined;
  private stderrTail: string[] = [];
  private exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly tools: OpenMpiTools,
    readonly scope: Scope,
    private readonly timeoutMs: number,
  ) {
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (chunk: string) => {
      this.buffered += chunk;
      const parts = this.buffered.split("\n");
      this.buffered = parts.pop() ?? "";
      for (const p of parts) if (p.trim()) this.lines.push(p.trim());
      this.wake?.();
    });
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      const kept = [...this.stderrTail, ...chunk.split("\n").filter((l) => l.trim())];
      this.stderrTail = kept.slice(-5);
    });
    child.on("exit", (code, signal) => {
      this.exit = { code, signal };
      this.wake?.();
    });
    child.on("error", () => {
      this.exit ??= { code: null, signal: null };
      this.wake?.();
    });
    child.stdin!.on("error", () => {});
  }

  /** Starts mpirun with the bench built for `tools`; resolves once rank 0 says `ready`. */
  static async start(
    tools: OpenMpiTools,
    scope: Scope,
    binary: string,
    timeoutMs = OPENMPI_BATCH_TIMEOUT_MS,
    flavour: OpenMpiFlavour = "default",
  ): Promise<OpenMpiPair> {
    const child = spawn(tools.mpirun, mpirunArgs(tools, scope, binary, flavour), {
      stdio: ["pipe", "pipe", "pipe"],
      env: {
        ...process.env,
        OMPI_ALLOW_RUN_AS_ROOT: "1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1",
        OMPI_MCA_btl_base_warn_component_unused: "0",
      },
    });
    const pair = new OpenMpiPair(child, tools, scope, timeoutMs);
    try {
      const first = await pair.nextLine(START_TIMEOUT_MS);
      if (first !== "ready") throw new Error(`mpirun's rank 0 said "${first}" instead of ready`);
      return pair;
    } catch (e) {
      pair.kill();
      throw e;
    }
  }

  private async nextLine(timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.exit) {
        const how = this.exit.signal ?? `code ${this.exit.code}`;
        const tail = this.stderrTail.join(" | ");
        throw new Error(`mpirun exited (${how})${tail ? `: ${tail}` : ""}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`mpirun: no answer within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
    return this.lines.shift()!;
  }

  private async batch(command: string): Promise<number> {
    if (this.exit) throw new Error("openmpi: mpirun has exited");
    this.child.stdin!.write(`${command}\n`);
    const line = await this.nextLine(this.timeoutMs);
    const m = /^row\s+(\S+)$/.exec(line);
    const v = m ? Number(m[1]) : Number.NaN;
    if (!(Number.isFinite(v) && v > 0))
      throw new Error(
        `openmpi ${command}: ${line.startsWith("error ") ? line.slice(6) : `bad answer "${line}"`}`,
      );
    return v;
  }

  /** One-way latency (µs) of one batch: `warmup` untimed, then `iters` timed round trips. */
  pingpong(bytes: number, iters: number, warmup: number): Promise<number> {
    return this.batch(`pingpong ${bytes} ${iters} ${warmup}`);
  }

  /** Bandwidth (MB/s) of one batch of osu_bw windows. */
  stream(bytes: number, iters: number, warmup: number, window = 64): Promise<number> {
    return this.batch(`stream ${bytes} ${iters} ${warmup} ${window}`);
  }

  private kill(): void {
    if (!this.exit) this.child.kill("SIGKILL");
  }

  /** Asks both ranks to finish; kills mpirun if it does not exit within 10 s. */
  async stop(): Promise<void> {
    if (this.exit) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin!.end("stop\n");
    const timer = setTimeout(() => this.kill(), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

// ---- the optional peer ------------------------------------------------------------------

const notes = new Set<string>();

/** The lines the bench should print about Open MPI (how it ran, or why it did not); clears them. */
export function takeOpenMpiNotes(): string[] {
  const out = [...notes];
  notes.clear();
  return out;
}

/**
 * An Open MPI pair for `scope`, warmed up like the MX pairs; or undefined, with a note saying
 * why, where Open MPI is missing or will not start. Never throws.
 */
export async function startOpenMpiPeer(
  scope: Scope,
  progress: (label: string) => void = () => {},
  path?: string,
  flavour: OpenMpiFlavour = "default",
): Promise<OpenMpiPair | undefined> {
  const name = transportOf(flavour);
  if (flavour === "cico" && scope !== "intra-host") {
    notes.add(`${name}: one host only (over TCP there is no single copy to turn off); not measured ${scope}`);
    return undefined;
  }
  const found = await findOpenMpi(path);
  if ("missing" in found) {
    notes.add(found.missing);
    return undefined;
  }
  // Turned off only where this Open MPI has the knob (Open MPI 5 moved single copy into its
  // smsc framework): never a column that claims copy-in/copy-out and measured the default.
  const singleCopy = scope === "intra-host" ? await singleCopyMechanism(found.tools) : undefined;
  if (flavour === "cico" && singleCopy === undefined) {
    notes.add(
      `${name}: Open MPI ${found.tools.version} has no ${singleCopyParam(found.tools.version)} (ompi_info does not list it), so its single copy cannot be turned off here; not measured`,
    );
    return undefined;
  }
  let pair: OpenMpiPair | undefined;
  try {
    progress(`${name} ${scope}: building and starting mpirun`);
    const binary = await buildOpenMpiBench(found.tools);
    pair = await OpenMpiPair.start(found.tools, scope, binary, OPENMPI_BATCH_TIMEOUT_MS, flavour);
    // The same warm-up the MX pairs get (eager and large-message protocols).
    await pair.pingpong(8, scope === "cross-host" ? 2_000 : 20_000, 0);
    await pair.pingpong(64 * 1024, scope === "cross-host" ? 50 : 200, 0);
    await pair.stream(4096, scope === "cross-host" ? 5 : 10, 0);
    notes.add(openMpiDescription(found.tools, scope, flavour, singleCopy));
    return pair;
  } catch (e) {
    await pair?.stop().catch(() => {});
    notes.add(
      `${name}, ${scope}: not measured (${(e as Error).message}); the other transports are unaffected`,
    );
    return undefined;
  }
}

// ---- bypass against Open MPI, in words ------------------------------------------------------

/** The points the terminal states bypass / openmpi at (one host; the tables have every size). */
const POINTS = [
  { bench: "pingpong", bytes: 8 },
  { bench: "pingpong", bytes: 64 * 1024 },
  { bench: "pingpong", bytes: 1024 * 1024 },
  { bench: "stream", bytes: 1024 * 1024 },
] as const;

/** bypass / openmpi (and / openmpi-cico) at POINTS that this run measured, one sentence each. */
export function openMpiVerdicts(rows: readonly BenchRow[]): string[] {
  const out: string[] = [];
  for (const peer of ["openmpi", OPENMPI_CICO]) {
    for (const t of POINTS) {
      const at = (transport: string) =>
        rows.find(
          (r) =>
            r.bench === t.bench &&
            r.scope === "intra-host" &&
            r.bytes === t.bytes &&
            r.transport === transport,
        )?.median;
      const b = at("bypass");
      const o = at(peer);
      if (b === undefined || o === undefined || o === 0) continue;
      const ratio = b / o;
      const noun = t.bench === "pingpong" ? "latency" : "stream bandwidth";
      const better = (t.bench === "pingpong" ? ratio < 1 : ratio > 1) ? "bypass ahead" : "Open MPI ahead";
      const unit = t.bench === "pingpong" ? "µs" : "MB/s";
      out.push(
        `bypass / ${peer}, ${formatBytes(t.bytes)} ${noun}: ${ratio.toFixed(2)}× (${b.toFixed(2)} vs ${o.toFixed(2)} ${unit}; ${better})`,
      );
    }
  }
  return out;
}

/**
 * The ranks of one job on one host: starts them (guests for the bypass path, native
 * processes for the native path), turns their output, MPI addresses and exits into events,
 * hands them the job's peer list, and stops them. The same code serves the embedded host of
 * `myrixen run` (events go straight to the launcher) and `myrixen host` (events go over the
 * control connection), so a job behaves the same on one machine and across many.
 *
 * Each job's ranks open their endpoints with the job's key (protocol.ts). A host does not
 * look at whether another job holds the same key: it refused such a job once, and that
 * refusal told any launcher, at thousands of start requests a second, which key a running
 * job held — the wrong-key lockout of the NIC bypassed. Two honest jobs draw the same 32-bit
 * key about once in 2^32 / n, and even then neither connects to the other: ranks connect
 * only to the addresses their own launcher gives them.
 */

import { mkdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { Readable } from "node:stream";
import type { Host } from "../host/host.js";
import { machineFacts } from "../host/machine.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import type { Domain, DomainExit } from "../xen/hypervisor.js";
import { ProgramError, resolveProgram } from "./programs.js";
import { isJobKey, type LauncherToRank, type RankArgs, type RankToLauncher } from "./protocol.js";
import { NOT_FINALIZED, RANK_STATE_BYTES, StateWatch } from "./rank-state.js";
import type { RankPath } from "./wire.js";

export interface RankExit {
  rank: number;
  state: DomainExit["state"];
  exitCode: number;
  error?: Error;
  result?: unknown;
}

export interface RankEvents {
  output(rank: number, stream: "stdout" | "stderr", line: string): void;
  /** A rank's MX address (its mpi-addr message). */
  addr(rank: number, nic: number, endpoint: number): void;
  /**
   * A rank asks for a result file (protocol.ts writeRankFile): the launcher writes it, where
   * the user launched the job (writeOutputFile), not the host that runs the rank. Before the
   * rank's exit.
   */
  file(rank: number, file: string, text: string, error?: string): void;
  /** A rank ended; sent after its last output line. */
  exit(e: RankExit): void;
}

export interface RankStartSpec {
  job: string;
  size: number;
  path: RankPath;
  /** The program: a built-in name, a path or a URL, resolved on this host (programs.ts). */
  program: string | URL;
  argv: string[];
  /** Which ranks of the job run here. */
  ranks: number[];
  /** The job's MX endpoint key (isJobKey), drawn by its launcher. */
  key: number;
  pages?: number;
  /** Each guest rank's weight and caps (native ranks have no myri device to hold one). */
  qos?: QosPolicy;
  maxHeapMb?: number;
  maxBufferMb?: number;
  /** Environment variables the ranks see as process.env (`myrixen run -x`). */
  env?: Record<string, string>;
}

/** The host cannot run ranks as asked (a path it lacks, a bad program): nothing was started. */
export class RankRefusal extends Error {}

export const DEFAULT_RANK_PAGES = 16384;
export const DEFAULT_RANK_HEAP_MB = 512;
/** How often a host looks at its ranks' call-state words (the resolution of "waiting ... for N s"). */
const STATE_SAMPLE_MS = 100;
/** How long an ended rank's output may take to drain before its exit is reported anyway. */
const OUTPUT_DRAIN_MS = 1500;

export function exitCodeOf(e: DomainExit): number {
  if (e.state === "shutdown") {
    const r = e.result;
    // A number is an exit status, as process.exit takes one: its low byte (-1 → 255, 300 →
    // 44), but a nonzero number never reads as success (256 → 1), nor does one that is no
    // integer (1.5, NaN). Anything else main returns (nothing, an object, a string) is 0.
    if (typeof r !== "number") return 0;
    return Number.isInteger(r) ? r & 255 || (r === 0 ? 0 : 1) : 1;
  }
  const m = /exited with code (\d+)/.exec(e.error?.message ?? "");
  return m ? Number(m[1]) % 256 || 1 : 1;
}

/** A rank's output line is cut after this many characters (the host holds no more of one line). */
export const OUTPUT_LINE_MAX = 1 << 20;
/** What ends a cut line; the rest of it, up to its line break, is dropped. */
export const OUTPUT_CUT_MARK = `…[line cut at ${OUTPUT_LINE_MAX} characters]`;

/**
 * A rank's output stream as lines, split as readline splits them (\n, \r\n, a lone \r; a
 * \r\n across two chunks is one break), but never holding more than `max` characters of
 * one line: a rank printing a 500 MB line must not make its host (a daemon shared by other
 * jobs) hold it. A longer line goes out at once, cut, with OUTPUT_CUT_MARK.
 */
export function lines(
  stream: Readable | null | undefined,
  line: (s: string) => void,
  max = OUTPUT_LINE_MAX,
): Promise<void> {
  if (!stream) return Promise.resolve();
  stream.setEncoding("utf8");
  const breaks = /\r\n|\n|\r/g;
  let partial = "";
  let dropping = false;
  let sawReturn = false;
  const take = (text: string): void => {
    if (dropping || text.length === 0) return;
    const room = max - partial.length;
    if (text.length <= room) {
      partial += text;
      return;
    }
    // Not between the halves of a surrogate pair.
    const c = text.charCodeAt(room - 1);
    const cut = room > 0 && c >= 0xd800 && c <= 0xdbff ? room - 1 : room;
    line(partial + text.slice(0, cut) + OUTPUT_CUT_MARK);
    partial = "";
    dropping = true;
  };
  return new Promise((resolve) => {
    const end = (): void => {
      if (partial.length > 0 && !dropping) line(partial);
      resolve();
    };
    stream.on("data", (chunk: string) => {
      let at = sawReturn && chunk.charCodeAt(0) === 10 ? 1 : 0;
      breaks.lastIndex = at;
      for (let m = breaks.exec(chunk); m !== null; m = breaks.exec(chunk)) {
        take(chunk.slice(at, m.index));
        if (!dropping) line(partial);
        partial = "";
        dropping = false;
        at = breaks.lastIndex;
      }
      take(chunk.slice(at));
      sawReturn = chunk.charCodeAt(chunk.length - 1) === 13;
    });
    stream.on("end", end);
  });
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes a rank's result file (a guest cannot), for its launcher: only a file the user named
 * in the program's arguments, resolved against the launcher's working directory. Returns what
 * went wrong, or undefined.
 */
export function writeOutputFile(argv: readonly string[], file: string, text: string): string | undefined {
  if (file === "" || !argv.includes(file))
    return `refused to write ${JSON.stringify(file)}: a rank writes only files named in its program's arguments`;
  const path = resolve(file);
  try {
    // One level at a time: Node 20's recursive mkdirSync can spin under /proc.
    const missing: string[] = [];
    for (let d = dirname(path); !exists(d); d = dirname(d)) missing.unshift(d);
    for (const d of missing) mkdirSync(d);
    writeFileSync(path, text);
    return undefined;
  } catch (e) {
    return `cannot write ${file}: ${e instanceof Error ? e.message : String(e)}`;
  }
}

function notFinalized(): Error {
  const e = new Error(
    "returned from main after MPI.init without calling comm.finalize() (a failure under MPI, as with mpirun: the other ranks could wait for it forever)",
  );
  e.name = NOT_FINALIZED;
  return e;
}

/** Per Host: the rank sets started on it whose ranks have not all ended (for inspection). */
const setsOn = new WeakMap<Host, Set<RankSet>>();

/** The jobs with ranks on `host` now, and each rank's domain (what `myrixen list` and the dashboard show). */
export function jobsOn(
  host: Host,
): { job: string; ranks: { rank: number; domid: number; state: string }[] }[] {
  return [...(setsOn.get(host) ?? [])].map((s) => ({ job: s.spec.job, ranks: s.status() }));
}

export class RankSet {
  private readonly domains = new Map<number, Domain>();
  /** Each rank's call-state words (rank-state.ts), for a --timeout report. */
  private readonly callStates = new Map<number, StateWatch>();
  /** Notes when each rank began its current wait (a few loads per rank, a few times a second). */
  private watchTimer: NodeJS.Timeout | undefined;
  private readonly exits: Promise<void>[] = [];
  private stopping = false;
  private lastPeers: LauncherToRank | undefined;
  private program: URL | undefined;
  /** Inside start(): ranks may be on their way without one live yet. */
  private starting = false;

  /** Nothing runs until start(); peers() and stop() may come before start() is done. */
  constructor(
    private readonly host: Host,
    readonly spec: RankStartSpec,
    private readonly events: RankEvents,
  ) {}

  /**
   * Starts the ranks. Rejects with RankRefusal (nothing left running) when this host cannot
   * run them or the set was stopped meanwhile; if a rank fails to start, the ones already
   * started are destroyed (their exits are still reported).
   */
  async start(): Promise<void> {
    this.starting = true;
    try {
      await this.launch();
    } finally {
      this.starting = false;
    }
  }

  /** Whether ranks run here or are still to start (stop() ends both). */
  get active(): boolean {
    return this.starting || this.live > 0;
  }

  private async launch(): Promise<void> {
    const { spec } = this;
    if (!isJobKey(spec.key))
      throw new RankRefusal("the job has no valid endpoint key (a random u32 other than 0 and 0x4d504921)");
    try {
      this.program = resolveProgram(spec.program);
    } catch (e) {
      if (e instanceof ProgramError) throw new RankRefusal(e.message);
      throw e;
    }
    let sets = setsOn.get(this.host);
    if (!sets) setsOn.set(this.host, (sets = new Set()));
    sets.add(this);
    void this.settled().then(() => sets.delete(this));
    try {
      if (this.stopping) throw new RankRefusal("the job was stopped while its ranks were starting");
      // Every rank at once, as mpirun starts them: one guest's boot (its worker, its program's
      // load, its devices) overlaps the others' on the host's cores and waits (`run -n 2`: the
      // second guest began ~0.3 s after the first, one after another). Each start is awaited
      // before a failure or a stop ends the set, so none is left half made (a rank whose start
      // ends after a stop is destroyed by startRank). The hypervisor gives domain ids in the
      // order the ranks asked (rank order).
      const started = await Promise.allSettled(spec.ranks.map((rank) => this.startRank(rank, this.program!)));
      const failed = started.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
      if (this.stopping) throw new RankRefusal("the job was stopped while its ranks were starting");
    } catch (e) {
      await this.stop();
      this.endStart();
      throw e;
    }
    this.endStart();
  }

  /** Resolves once start() has finished (or failed) and every rank it started has ended. */
  private async settled(): Promise<void> {
    await this.startEnded;
    await this.done;
  }

  private endStart!: () => void;
  private readonly startEnded = new Promise<void>((r) => {
    this.endStart = r;
  });

  /**
   * Resolves when every started rank has reported its exit (or failed to: it never rejects, so
   * the set leaves the host's list and the daemon never meets an unhandled rejection).
   */
  get done(): Promise<void> {
    return Promise.allSettled(this.exits).then(() => undefined);
  }

  private async startRank(rank: number, program: URL): Promise<void> {
    const { spec } = this;
    const state = new SharedArrayBuffer(RANK_STATE_BYTES);
    const watch = new StateWatch(state);
    this.callStates.set(rank, watch);
    if (!this.watchTimer) {
      this.watchTimer = setInterval(() => {
        const now = Date.now();
        for (const w of this.callStates.values()) w.sample(now);
      }, STATE_SAMPLE_MS);
      this.watchTimer.unref();
      void this.settled().then(() => clearInterval(this.watchTimer));
    }
    const job: RankArgs = {
      rank,
      size: spec.size,
      path: spec.path,
      argv: spec.argv,
      key: spec.key,
      machine: machineFacts(),
      state,
    };
    const domSpec = {
      module: program,
      args: { job },
      pages: spec.pages ?? DEFAULT_RANK_PAGES,
      maxHeapMb: spec.maxHeapMb ?? DEFAULT_RANK_HEAP_MB,
      maxBufferMb: spec.maxBufferMb,
      name: `rank${rank}`,
      output: "pipe" as const,
      // Open MPI's variables, then what the user exported with -x.
      env: {
        OMPI_COMM_WORLD_RANK: String(rank),
        OMPI_COMM_WORLD_SIZE: String(spec.size),
        OMPI_COMM_WORLD_LOCAL_RANK: String(spec.ranks.indexOf(rank)),
        OMPI_COMM_WORLD_LOCAL_SIZE: String(spec.ranks.length),
        ...spec.env,
      },
    };
    // A split rank is a guest without the fast path: its MX runs over its vif (MPI.init reads path).
    const dom =
      spec.path === "native"
        ? await this.host.startNative(domSpec)
        : await this.host.startGuest({ ...domSpec, fastPath: spec.path === "bypass", qos: spec.qos });
    this.domains.set(rank, dom);
    if (this.stopping) void dom.destroy().catch(() => undefined);
    if (this.lastPeers) dom.send(this.lastPeers);
    const drained = Promise.all([
      lines(dom.worker.stdout, (l) => this.events.output(rank, "stdout", l)),
      lines(dom.worker.stderr, (l) => this.events.output(rank, "stderr", l)),
    ]);
    let announced = false;
    dom.on("message", (m: RankToLauncher) => {
      if (m?.type === "output-file" && m.rank === rank) {
        // Checked by the launcher that writes it (writeOutputFile): a host never writes a file
        // a rank names (a remote launcher's job could name any path on this host's disk).
        this.events.file(
          rank,
          typeof m.file === "string" ? m.file : "",
          typeof m.text === "string" ? m.text : "",
        );
        return;
      }
      if (m?.type !== "mpi-addr" || m.rank !== rank || announced) return;
      if (!Number.isInteger(m.nic) || !Number.isInteger(m.endpoint)) return;
      announced = true;
      this.events.addr(rank, m.nic >>> 0, m.endpoint >>> 0);
    });
    const exited = dom.exited.then(async (e) => {
      // The exit goes after the rank's last line, so a launcher never ends before it prints it.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, OUTPUT_DRAIN_MS)))]);
      clearTimeout(timer);
      const code = exitCodeOf(e);
      // A rank that called MPI.init (it announced its address) and returned without
      // MPI_Finalize fails the job, as under mpirun: its peers could wait for it forever.
      const unfinalized = code === 0 && e.state === "shutdown" && announced && !watch.finalized;
      this.events.exit({
        rank,
        state: e.state,
        // (A result file the rank asked for and did not get fails it too: the launcher's part.)
        exitCode: code === 0 && unfinalized ? 1 : code,
        error: unfinalized ? notFinalized() : e.error,
        result: e.result,
      });
      // A long-lived host must not keep ended domains (their memory) around.
      await dom.destroy().catch(() => undefined);
    });
    // Seen by `done` (allSettled); a failure here must not end a long-lived host as an unhandled rejection.
    exited.catch(() => undefined);
    this.exits.push(exited);
  }

  /** The job's MX addresses, one per rank (the mpi-peers relay). */
  peers(peers: { nic: number; endpoint: number }[]): void {
    // Ranks still starting get the list when they are up.
    this.lastPeers = { type: "mpi-peers", peers };
    for (const d of this.domains.values()) d.send(this.lastPeers);
  }

  /** Ranks here and their domains' states. */
  status(): { rank: number; domid: number; state: string }[] {
    // In rank order (the ranks start at once: the map holds them as they came up).
    return [...this.domains]
      .sort((a, b) => a[0] - b[0])
      .map(([rank, d]) => ({ rank, domid: d.domid, state: d.state }));
  }

  /**
   * Where each rank here is (for a --timeout report): the call it blocks in, read from its
   * call-state words, or how it ended.
   */
  states(): { rank: number; state: string }[] {
    const now = Date.now();
    return this.spec.ranks.map((rank) => {
      const d = this.domains.get(rank);
      const words = this.callStates.get(rank);
      if (!d || !words) return { rank, state: "not started" };
      if (d.state === "booting") return { rank, state: "starting" };
      if (d.state !== "running") return { rank, state: d.state === "shutdown" ? "finished" : d.state };
      return { rank, state: words.describe(now) };
    });
  }

  /** Ranks still running. */
  get live(): number {
    let n = 0;
    for (const d of this.domains.values()) if (d.state === "running" || d.state === "booting") n++;
    return n;
  }

  /** Destroys every rank still running; their exits (state "destroyed") follow as events. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.domains.values()].map((d) => d.destroy().catch(() => undefined)));
  }
}

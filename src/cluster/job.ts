/**
 * A job: N ranks of one program on a host, as `myrixen run -n N` starts them. The launcher
 * starts the ranks (guests for the bypass path, native processes for the native path),
 * spreads their MX addresses (cluster/protocol.ts), forwards their output with rank
 * prefixes, and ends the job cleanly: the first rank that fails stops all the others.
 */
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import type { Host } from "../host/host.js";
import type { Domain, DomainExit } from "../xen/hypervisor.js";
import type { LauncherToRank, RankArgs, RankToLauncher } from "./protocol.js";

export interface JobSpec {
  /** Number of ranks. */
  n: number;
  path: "native" | "bypass";
  /** The program: a module path or URL whose default export is main(guest). */
  program: string | URL;
  argv?: string[];
  /** Guest-physical memory per rank, pages (default 16384 = 64 MiB). */
  pages?: number;
  maxHeapMb?: number;
  /** Where rank output goes (default: process stdout/stderr with "[rank] " prefixes). */
  output?: (rank: number, stream: "stdout" | "stderr", line: string) => void;
}

export interface RankOutcome {
  rank: number;
  state: DomainExit["state"];
  result?: unknown;
  error?: Error;
  exitCode: number;
}

export interface JobResult {
  /** The first non-zero exit code of a rank (0 if all succeeded). */
  exitCode: number;
  ranks: RankOutcome[];
  /** The rank that failed first, if any. */
  failed?: RankOutcome;
}

function defaultOutput(rank: number, stream: "stdout" | "stderr", line: string): void {
  (stream === "stdout" ? process.stdout : process.stderr).write(`[${rank}] ${line}\n`);
}

function exitCodeOf(e: DomainExit): number {
  if (e.state === "shutdown")
    return typeof e.result === "number" && Number.isInteger(e.result) ? e.result : 0;
  const m = /exited with code (\d+)/.exec(e.error?.message ?? "");
  return m ? Number(m[1]) || 1 : 1;
}

export class Job {
  readonly ranks: Domain[] = [];
  private stopping = false;

  constructor(
    private readonly host: Host,
    private readonly spec: JobSpec,
  ) {}

  /** Starts every rank and waits for the job to end. */
  async run(): Promise<JobResult> {
    const { n, path } = this.spec;
    if (!Number.isInteger(n) || n < 1 || n > 64)
      throw new RangeError(`-n must be an integer in 1..64, got ${String(n)}`);
    const out = this.spec.output ?? defaultOutput;
    const addrs: (RankToLauncher | undefined)[] = new Array(n);
    let announced = 0;
    const outcomes: RankOutcome[] = [];
    let failed: RankOutcome | undefined;
    const done: Promise<void>[] = [];
    for (let rank = 0; rank < n; rank++) {
      const job: RankArgs = { rank, size: n, path, argv: this.spec.argv ?? [] };
      const spec = {
        module: this.spec.program,
        args: { job },
        pages: this.spec.pages ?? 16384,
        maxHeapMb: this.spec.maxHeapMb ?? 512,
        name: `rank${rank}`,
        output: "pipe" as const,
      };
      const dom = path === "bypass" ? await this.host.startGuest(spec) : await this.host.startNative(spec);
      this.ranks.push(dom);
      forward(dom.worker.stdout, (line) => out(rank, "stdout", line));
      forward(dom.worker.stderr, (line) => out(rank, "stderr", line));
      dom.on("message", (m: RankToLauncher) => {
        if (m?.type !== "mpi-addr" || m.rank !== rank || addrs[rank]) return;
        addrs[rank] = m;
        if (++announced === n) {
          const peers = addrs.map((a) => ({ nic: a!.nic, endpoint: a!.endpoint }));
          for (const d of this.ranks) d.send({ type: "mpi-peers", peers } satisfies LauncherToRank);
        }
      });
      done.push(
        dom.exited.then(async (e) => {
          const o: RankOutcome = {
            rank,
            state: e.state,
            result: e.result,
            error: e.error,
            exitCode: exitCodeOf(e),
          };
          outcomes.push(o);
          if (o.exitCode !== 0 && !failed && !this.stopping) {
            failed = o;
            await this.stop();
          }
        }),
      );
    }
    await Promise.all(done);
    outcomes.sort((a, b) => a.rank - b.rank);
    return { exitCode: failed?.exitCode ?? 0, ranks: outcomes, failed };
  }

  /** Stops every rank still running (Ctrl-C, or a rank failed). */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.ranks.map((d) => d.destroy().catch(() => undefined)));
  }
}

function forward(stream: Readable | null | undefined, line: (s: string) => void): void {
  if (!stream) return;
  createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY }).on("line", line);
}

/**
 * A job: N ranks of one program across one or more hosts, as `myrixen run -n N` starts them.
 * The launcher places the ranks on hosts (placement.ts), links the hosts' NICs to each other,
 * starts each host's share of ranks, relays their MX addresses (the mpi-addr → mpi-peers
 * bootstrap of cluster/protocol.ts), forwards their output, and ends the job cleanly: the
 * first rank that fails, or a host that vanishes, stops all the others.
 *
 * A host is a JobTarget: the Host in this process (LocalTarget, the embedded default) or a
 * `myrixen host` reached over the control protocol (RemoteHost in remote.ts). Both run their
 * ranks with the same RankSet (ranks.ts); this file is the one launcher for both.
 *
 * Each job draws its own MX endpoint key here (newJobKey: node:crypto, never 0 or the old
 * shared constant, never one this process drew before), which the hosts hand to its ranks:
 * ranks of another job hold another key and cannot connect to this job's endpoints.
 */

import { randomInt } from "node:crypto";
import { hostname as osHostname } from "node:os";
import type { Host } from "../host/host.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import type { DomainExit } from "../xen/hypervisor.js";
import { vifMacNicBits } from "../xen/io/netif.js";
import type { ClusterKey } from "./auth.js";
import type { HostAddress } from "./hostfile.js";
import { type MapBy, PlacementError, placeRanks } from "./placement.js";
import { isJobKey } from "./protocol.js";
import {
  type RankEvents,
  type RankExit,
  RankRefusal,
  RankSet,
  type RankStartSpec,
  writeOutputFile,
} from "./ranks.js";
import { type LinkPeer, MAX_RANKS, RANK_PATHS, type RankPath } from "./wire.js";

/** One host's share of a job, as the launcher drives it. */
export interface TargetJob {
  /** Resolves when the host's ranks all started; rejects (RankRefusal for a refusal) otherwise. */
  readonly started: Promise<void>;
  /** The job's MX addresses, for the host's ranks (also those still starting). */
  peers(peers: { nic: number; endpoint: number }[]): void;
  /** Stops the host's ranks; their exits follow as events. */
  stop(): Promise<void>;
  /** Where the host's ranks are: the call each blocks in (rank-state.ts), or how it ended. */
  states?(): Promise<{ rank: number; state: string }[]>;
  /**
   * The job is over for its launcher (every rank's end recorded): the target forgets its
   * events. A connection that runs job after job must not keep every finished one.
   */
  release?(): void;
}

/** A host a job can run ranks on. */
export interface JobTarget {
  /** How messages name it (`host:port`, or "local"). */
  readonly label: string;
  readonly hostname: string;
  readonly nicId: number;
  /** Ranks it takes before it counts as full (Infinity: no limit). */
  readonly slots: number;
  /** Where other hosts' NICs reach its NIC (undefined: it cannot be linked to). */
  readonly linkAddress?: HostAddress;
  /** Makes sure its NIC is linked to these peers' NICs (bounded by timeoutMs). */
  link(peers: LinkPeer[], timeoutMs: number): Promise<void>;
  /**
   * Starts the host's ranks. `answerWithinMs`: how long a remote host may take to say they
   * started (default: its own bound, RemoteHost.start) before `started` rejects.
   */
  start(spec: RankStartSpec, events: RankEvents, answerWithinMs?: number): TargetJob;
  /** Called once if the host goes away; returns an unsubscribe function. */
  onLost(cb: (why: string) => void): () => void;
}

/**
 * The Host in this process as a JobTarget. With a `linkAddress` (its NIC listens there, with
 * `clusterKey`) it can be one of several hosts of a job: several Hosts in one process, NICs
 * joined over TCP and authenticated with the key, as `myrixen start` runs its two-host cluster.
 */
export class LocalTarget implements JobTarget {
  readonly label: string;
  readonly hostname = osHostname();

  constructor(
    readonly host: Host,
    readonly slots = Number.POSITIVE_INFINITY,
    label = "local",
    readonly linkAddress?: HostAddress,
    private readonly clusterKey?: ClusterKey,
  ) {
    this.label = label;
  }

  get nicId(): number {
    return this.host.nicId;
  }

  /** Links this NIC to the peers' (the lower NIC id connects, as between host processes) and waits until both ends see each link. */
  async link(peers: LinkPeer[], timeoutMs: number): Promise<void> {
    if (peers.length === 0) return;
    if (!this.linkAddress || !this.clusterKey)
      throw new Error("this embedded host has no link address and cluster key: it links to no other host");
    const key = this.clusterKey.bytes;
    const deadline = Date.now() + timeoutMs;
    const have = new Set((await this.host.nicInfo()).links);
    for (const p of peers)
      if (!have.has(p.nicId) && this.nicId < p.nicId)
        await this.host.nic
          .attachLink({ kind: "tcp", host: p.host, port: p.port, timeoutMs, key, peerNic: p.nicId })
          .catch((e: Error) => {
            // Another job linked them meanwhile (jobs starting at once): the link is there.
            if (!e.message.startsWith("EBUSY:")) throw e;
          });
    for (;;) {
      const links = new Set((await this.host.nicInfo()).links);
      const missing = peers.filter((p) => !links.has(p.nicId));
      if (missing.length === 0) return;
      if (Date.now() > deadline)
        throw new Error(
          `NIC ${this.nicId} has no link to ${missing.map((p) => `${p.label} (NIC ${p.nicId})`).join(", ")}`,
        );
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  start(spec: RankStartSpec, events: RankEvents): TargetJob {
    const set = new RankSet(this.host, spec, events);
    return {
      started: set.start(),
      peers: (p) => set.peers(p),
      stop: () => set.stop(),
      states: async () => set.states(),
    };
  }

  onLost(): () => void {
    return () => {};
  }
}

export interface JobSpec {
  /** Number of ranks. */
  n: number;
  path: RankPath;
  /** The program: a built-in name, a module path or URL whose default export is main(guest). */
  program: string | URL;
  argv?: string[];
  /** Guest-physical memory per rank, pages (default 16384 = 64 MiB). */
  pages?: number;
  /** Each guest rank's weight and caps (Host.startGuest's qos). */
  qos?: QosPolicy;
  maxHeapMb?: number;
  /** Each rank's ArrayBuffers and typed arrays outside its heap, MiB (default: the domain's). */
  maxBufferMb?: number;
  /** Where rank output goes (default: process stdout/stderr with "[rank] " prefixes). */
  output?: (rank: number, stream: "stdout" | "stderr", line: string, host: string) => void;
  /** Placement (default "node": round-robin over hosts). */
  mapBy?: MapBy;
  /** Allow more ranks than slots. */
  oversubscribe?: boolean;
  /** Per target, in order: slots and max_slots the user gave (override what the host reports). */
  slots?: ({ slots?: number; maxSlots?: number } | undefined)[];
  /** How long linking the hosts' NICs may take (default 10 s). */
  linkTimeoutMs?: number;
  /** How long a host may take to answer that its ranks started (default: RemoteHost's, by rank count). */
  startTimeoutMs?: number;
  /** After a host is lost, how long the other ranks run on before they are stopped (default 0). */
  lostHostGraceMs?: number;
  /** How long stopped ranks may take to report their end before they count as lost (default 5 s). */
  stopTimeoutMs?: number;
  /** Job id on the hosts (default: launcher hostname, pid and a counter). */
  id?: string;
  /** Environment variables the ranks see as process.env (`myrixen run -x`). */
  env?: Record<string, string>;
  /** Called once the ranks are placed, before any starts: each rank's host label (--display-map). */
  onPlacement?: (placement: string[]) => void;
}

export interface RankOutcome {
  rank: number;
  /** Which host it ran on (its label). */
  host: string;
  /** "lost": its host vanished; "not-started": the job ended before it started. */
  state: DomainExit["state"] | "lost" | "not-started";
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
  /** Hosts whose control connection was lost during the job. */
  lostHosts: { label: string; nicId: number; reason: string }[];
  /** The host label of each rank. */
  placement: string[];
  /** stop() was called (Ctrl-C) before the job ended by itself. */
  stopped: boolean;
}

/** The job could not start as asked; `usage` means the request itself was wrong (exit code 2). */
export class JobSetupError extends Error {
  constructor(
    message: string,
    readonly usage: boolean,
  ) {
    super(message);
  }
}

function defaultOutput(rank: number, stream: "stdout" | "stderr", line: string): void {
  (stream === "stdout" ? process.stdout : process.stderr).write(`[${rank}] ${line}\n`);
}

let jobCounter = 0;

/** Keys this process drew (so it never draws one twice); bounded, oldest forgotten first. */
const drawnKeys = new Set<number>();
const MAX_REMEMBERED_KEYS = 1 << 16;

/** A job's endpoint key: random (node:crypto), a u32 other than 0 and the old shared constant, new to this process. */
export function newJobKey(): number {
  for (;;) {
    const k = randomInt(1, 0x1_0000_0000);
    if (!isJobKey(k) || drawnKeys.has(k)) continue;
    drawnKeys.add(k);
    if (drawnKeys.size > MAX_REMEMBERED_KEYS) drawnKeys.delete(drawnKeys.values().next().value as number);
    return k;
  }
}

/** Unique enough across launchers: hosts also keep each launcher's jobs apart. */
function newJobId(): string {
  const host = osHostname()
    .replace(/[^A-Za-z0-9_.-]/g, "_")
    .slice(0, 64);
  return `${host}-${process.pid}-${++jobCounter}`;
}

/** How long the other ranks run on after a rank failed, before they are stopped. */
export const RANK_FAILURE_GRACE_MS = 250;

export class Job {
  private readonly targets: JobTarget[];
  private readonly handles: (TargetJob | undefined)[] = [];
  private stopping = false;
  private stopTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private readonly outcomes = new Map<number, RankOutcome>();
  private failed: RankOutcome | undefined;
  private rankHost: number[] = [];
  private settle: (() => void) | undefined;
  private readonly lostHosts: JobResult["lostHosts"] = [];
  /**
   * stop() was called / its stopTimeoutMs ran out. A host that keeps answering pings but never
   * answers its link or start request must not keep a stopped job (Ctrl-C, --timeout) from ending.
   */
  private markStopped: () => void = () => {};
  private readonly stopRequested = new Promise<void>((r) => (this.markStopped = r));
  private markStopExpired: () => void = () => {};
  private readonly stopExpired = new Promise<void>((r) => (this.markStopExpired = r));
  readonly id: string;
  /** The job's MX endpoint key, handed to its ranks only (not logged, not in any status). */
  private readonly key = newJobKey();

  constructor(
    hosts: Host | JobTarget | JobTarget[],
    private readonly spec: JobSpec,
  ) {
    this.targets = Array.isArray(hosts)
      ? hosts
      : "start" in hosts && typeof hosts.start === "function"
        ? [hosts as JobTarget]
        : [new LocalTarget(hosts as Host)];
    this.id = spec.id ?? newJobId();
  }

  /** Starts every rank and waits for the job to end. Throws JobSetupError if it cannot start. */
  async run(): Promise<JobResult> {
    const { n, path } = this.spec;
    if (!Number.isInteger(n) || n < 1 || n > MAX_RANKS)
      throw new RangeError(`-n must be an integer in 1..${MAX_RANKS}, got ${String(n)}`);
    if (!RANK_PATHS.includes(path))
      throw new JobSetupError(`--path must be one of ${RANK_PATHS.join(", ")}, got "${String(path)}"`, true);
    const targets = this.targets;
    if (targets.length === 0) throw new JobSetupError("a job needs at least one host", true);
    this.checkNicIds();
    try {
      this.rankHost = placeRanks(
        n,
        targets.map((t, i) => ({
          label: t.label,
          slots: this.spec.slots?.[i]?.slots ?? t.slots,
          maxSlots: this.spec.slots?.[i]?.maxSlots,
        })),
        this.spec.mapBy ?? "node",
        this.spec.oversubscribe ?? false,
      );
    } catch (e) {
      if (e instanceof PlacementError) throw new JobSetupError(e.message, true);
      throw e;
    }
    const used = [...new Set(this.rankHost)].sort((a, b) => a - b);
    const placement = this.rankHost.map((h) => targets[h].label);
    this.spec.onPlacement?.(placement);
    const finished = new Promise<void>((r) => (this.settle = r));
    const unsubscribe = used.map((h) => targets[h].onLost((why) => this.hostLost(h, why)));
    try {
      if (used.length > 1) {
        const linking = this.linkHosts(used);
        linking.catch(() => undefined);
        // A stop while linking ends the job now: no rank started (a silent host must not hold it).
        await Promise.race([linking, this.stopRequested]);
      }
      if (this.stopping) return this.result(placement);
      await this.startRanks(used);
      await finished;
    } finally {
      for (const u of unsubscribe) u();
      for (const hd of this.handles) hd?.release?.();
      clearTimeout(this.stopTimer);
      clearTimeout(this.graceTimer);
    }
    return this.result(placement);
  }

  /** Stops every rank still running, on every host (Ctrl-C, or a rank failed). */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.markStopped();
    clearTimeout(this.graceTimer);
    const limit = this.spec.stopTimeoutMs ?? 5000;
    // A host that never reports its ranks' ends must not hold the launcher forever.
    this.stopTimer = setTimeout(() => {
      for (let rank = 0; rank < this.rankHost.length; rank++)
        this.record({
          rank,
          host: this.targets[this.rankHost[rank]].label,
          state: "lost",
          exitCode: 1,
          error: new Error(`rank ${rank} did not report its end within ${limit} ms of the stop`),
        });
      this.markStopExpired();
    }, limit);
    this.stopTimer.unref();
    await Promise.all(this.handles.map((h) => h?.stop().catch(() => undefined)));
  }

  /**
   * Where every rank is now, for `myrixen run --timeout`: "finished", how it ended, or the
   * MPI call it waits in (read by its host from the rank's call-state words). A host that does
   * not answer within `waitMs` leaves its ranks "unknown".
   */
  async rankStates(waitMs = 3000): Promise<{ rank: number; host: string; state: string }[]> {
    const out = this.rankHost.map((h, rank) => ({ rank, host: this.targets[h].label, state: "unknown" }));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((r) => {
      timer = setTimeout(r, waitMs);
    });
    await Promise.race([
      late,
      Promise.all(
        this.handles.map(async (hd) => {
          const got = await hd?.states?.().catch(() => []);
          for (const s of got ?? []) if (out[s.rank]) out[s.rank].state = s.state;
        }),
      ),
    ]);
    clearTimeout(timer);
    for (const o of this.outcomes.values()) {
      const s = out[o.rank];
      if (!s) continue;
      if (o.state === "shutdown") s.state = o.exitCode === 0 ? "finished" : `exited with code ${o.exitCode}`;
      else if (o.state === "not-started") s.state = "not started";
      else s.state = `${o.state}${o.error ? `: ${o.error.message}` : ""}`;
    }
    return out;
  }

  private result(placement: string[]): JobResult {
    const ranks = [...this.outcomes.values()].sort((a, b) => a.rank - b.rank);
    return {
      exitCode: this.failed?.exitCode ?? 0,
      ranks,
      failed: this.failed,
      lostHosts: this.lostHosts,
      placement,
      stopped: this.stopping && !this.failed,
    };
  }

  private checkNicIds(): void {
    if (this.targets.length < 2) return;
    const seen = new Map<number, JobTarget>();
    for (const t of this.targets) {
      const other = seen.get(vifMacNicBits(t.nicId));
      if (other?.nicId === t.nicId)
        throw new JobSetupError(
          `hosts ${other.label} (${other.hostname}) and ${t.label} (${t.hostname}) both have NIC id ${t.nicId}; ` +
            "start one of them with a different --nic-id",
          true,
        );
      // Guests' MACs carry 30 of the NIC id's 32 bits (xen/io/netif.ts vifMac).
      if (other)
        throw new JobSetupError(
          `hosts ${other.label} (${other.hostname}) and ${t.label} (${t.hostname}) have NIC ids ${other.nicId} and ${t.nicId}, ` +
            "which give their guests the same MACs (they differ only in bits 24-25); start one of them with a different --nic-id",
          true,
        );
      seen.set(vifMacNicBits(t.nicId), t);
    }
  }

  private async linkHosts(used: number[]): Promise<void> {
    const timeout = this.spec.linkTimeoutMs ?? 10_000;
    const peerOf = (h: number): LinkPeer => {
      const t = this.targets[h];
      if (!t.linkAddress) throw new JobSetupError(`host ${t.label} cannot be linked to other hosts`, true);
      return { nicId: t.nicId, host: t.linkAddress.host, port: t.linkAddress.port, label: t.label };
    };
    const peers = used.map(peerOf);
    const results = await Promise.allSettled(
      used.map((h, i) =>
        this.targets[h].link(
          peers.filter((_, j) => j !== i),
          timeout,
        ),
      ),
    );
    const problems = results.flatMap((r, i) =>
      r.status === "rejected" ? [`host ${this.targets[used[i]].label}: ${(r.reason as Error).message}`] : [],
    );
    if (problems.length > 0)
      throw new JobSetupError(`cannot link the hosts' NICs:\n  ${problems.join("\n  ")}`, false);
  }

  private async startRanks(used: number[]): Promise<void> {
    const { spec } = this;
    const n = spec.n;
    const addrs: ({ nic: number; endpoint: number } | undefined)[] = new Array(n);
    let announced = 0;
    const out = spec.output ?? defaultOutput;
    const fileFailed = new Set<number>();
    const starts = used.map((h) => {
      const t = this.targets[h];
      const ranks = this.rankHost.flatMap((x, rank) => (x === h ? [rank] : []));
      const mine = new Set(ranks);
      const events: RankEvents = {
        output: (rank, stream, line) => {
          if (mine.has(rank)) out(rank, stream, line, t.label);
        },
        addr: (rank, nic, endpoint) => {
          if (!mine.has(rank) || addrs[rank]) return;
          addrs[rank] = { nic, endpoint };
          if (++announced === n) {
            const peers = addrs as { nic: number; endpoint: number }[];
            for (const hd of this.handles) hd?.peers(peers);
          }
        },
        file: (rank, file, text, error) => {
          if (!mine.has(rank)) return;
          // Written here, where the user launched the job, whichever host ran the rank.
          const problem = error ?? writeOutputFile(spec.argv ?? [], file, text);
          if (problem === undefined) return;
          fileFailed.add(rank);
          out(rank, "stderr", problem, t.label);
        },
        exit: (e: RankExit) => {
          if (!mine.has(e.rank)) return;
          // A result file the rank asked for and did not get fails the rank.
          const failed = e.exitCode === 0 && fileFailed.has(e.rank);
          this.record({ ...e, exitCode: failed ? 1 : e.exitCode, host: t.label });
        },
      };
      const handle = t.start(
        {
          job: this.id,
          size: n,
          path: spec.path,
          program: spec.program,
          argv: spec.argv ?? [],
          ranks,
          key: this.key,
          pages: spec.pages,
          qos: spec.qos,
          maxHeapMb: spec.maxHeapMb,
          maxBufferMb: spec.maxBufferMb,
          env: spec.env,
        },
        events,
        spec.startTimeoutMs,
      );
      this.handles[h] = handle;
      return { h, ranks, started: handle.started };
    });
    // A stop() that came while the starts were being sent reaches every host.
    if (this.stopping) for (const hd of this.handles) void hd?.stop().catch(() => undefined);
    const results = await Promise.race([
      Promise.allSettled(starts.map((s) => s.started)),
      // Every rank was recorded lost after a stop: a start never answered no longer matters.
      this.stopExpired.then(() => undefined),
    ]);
    if (!results) return;
    const refusals: string[] = [];
    let usage = true;
    results.forEach((r, i) => {
      if (r.status === "fulfilled") return;
      const { h, ranks } = starts[i];
      const e = r.reason as Error;
      if (!(e instanceof RankRefusal)) usage = false;
      if (!this.stopping || !/stopped while/.test(e.message))
        refusals.push(
          this.targets.length > 1 || this.targets[h].label !== "local"
            ? `host ${this.targets[h].label}: ${e.message}`
            : e.message,
        );
      // Those ranks will never report: they did not start (or were destroyed on the way).
      for (const rank of ranks)
        this.record({ rank, host: this.targets[h].label, state: "not-started", exitCode: 0 });
    });
    if (refusals.length > 0) {
      await this.stop();
      await new Promise<void>((resolve) => {
        const prev = this.settle;
        this.settle = () => {
          prev?.();
          resolve();
        };
        if (this.outcomes.size === n) resolve();
      });
      throw new JobSetupError(refusals.join("\n"), usage);
    }
  }

  private record(o: RankOutcome): void {
    if (this.outcomes.has(o.rank) || o.rank < 0 || o.rank >= this.rankHost.length) return;
    this.outcomes.set(o.rank, o);
    const bad = o.state === "lost" || (o.exitCode !== 0 && o.state !== "not-started");
    if (bad && !this.failed && !this.stopping) {
      this.failed = o.exitCode === 0 ? { ...o, exitCode: 1 } : o;
      // The other ranks get a moment: after a lost host, to notice the loss themselves (their
      // MX errors); after a rank's failure, to finish what they print (the ranks start at once,
      // so a rank failing for a reason rank 0 reports may end before rank 0 has printed it).
      const grace = o.state === "lost" ? (this.spec.lostHostGraceMs ?? 0) : RANK_FAILURE_GRACE_MS;
      if (grace > 0) {
        this.graceTimer = setTimeout(() => void this.stop(), grace);
        this.graceTimer.unref();
      } else void this.stop();
    }
    if (this.outcomes.size === this.rankHost.length) this.settle?.();
  }

  private hostLost(h: number, why: string): void {
    const t = this.targets[h];
    if (this.lostHosts.some((l) => l.label === t.label)) return;
    this.lostHosts.push({ label: t.label, nicId: t.nicId, reason: why });
    for (let rank = 0; rank < this.rankHost.length; rank++)
      if (this.rankHost[rank] === h)
        this.record({
          rank,
          host: t.label,
          state: "lost",
          exitCode: 1,
          error: new Error(`host ${t.label} (NIC ${t.nicId}) was lost: ${why}`),
        });
  }
}

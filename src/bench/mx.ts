/**
 * `myrixen bench pingpong` and `myrixen bench stream`: MX between two ranks on the native and
 * bypass and split paths, in two scopes.
 * intra-host: both ranks on one host, with the machine's limits measured in the same run:
 *   raw-sab     two plain workers over a SharedArrayBuffer (spin, then block): the floor
 *   raw-relay   three plain workers in a relay: what a message crossing a third thread costs
 *   postmessage MessageChannel between two workers (structured clone): Node's own way
 *   memcpy      Uint8Array.set between SharedArrayBuffers: the copy ceiling
 * cross-host: rank a on host A, rank b on host B, their NICs linked over loopback TCP, with
 *   raw-tcp     two plain processes over loopback TCP (tcp-baseline.ts): the wire's own cost
 *   raw-chain   four plain threads, guest → NIC → TCP → NIC → guest (chain-baseline.ts): the
 *               thread hand-offs a cross-host message makes, with no MX
 * In both scopes, where mpicc and mpirun exist, openmpi: Open MPI's two ranks measured the same
 * way (shared memory on one host, TCP over loopback across hosts; openmpi.ts).
 * pingpong is one-way latency (round trip / 2, OSU's osu_latency); stream is osu_bw: windows
 * of 64 sends, then a 1-byte ack, MB = 10^6 bytes, timed at the sender.
 */
import { once } from "node:events";
import { availableParallelism } from "node:os";
import type { DomainSpec, Host } from "../host/host.js";
import { BUSY_POLL_MAX_US } from "../mx/spin-budget.js";
import type { MxBenchCommand } from "../programs/mx-bench.js";
import type { Domain } from "../xen/hypervisor.js";
import {
  memcpyBandwidth,
  postMessagePingPong,
  rawRelayPingPong,
  rawSabPingPong,
  rawSabStream,
} from "./baselines.js";
import { ChainPair } from "./chain-baseline.js";
import { type BenchProfile, type BenchRow, makeRow, type Scope, settled } from "./harness.js";
import { startOpenMpiPeer } from "./openmpi.js";
import { rawTcpPingPong, TcpPair } from "./tcp-baseline.js";
import { MX_PATHS, type MxPath, OPENMPI_CICO } from "./transports.js";

export { CROSS_HOST_TARGETS, type CrossHostTarget, chainVerdicts, crossHostVerdicts } from "./targets.js";
export {
  type MxPath,
  PINGPONG_TRANSPORTS,
  STREAM_TRANSPORTS,
  suiteTransports,
} from "./transports.js";

const PROGRAM = new URL("../programs/mx-bench.js", import.meta.url);
export const OSU_WINDOW = 64;

export type Progress = (label: string) => void;

/**
 * The MX paths a pair of ranks can take, and how a rank of each starts on a host (mx-bench
 * reads `mxPath` and asks Mx.init for exactly that path; MxPair checks the path the rank
 * reports). The split path (MX over netfront, netback and the bridge) runs in guests that
 * ask Mx.init for it.
 */
export type RankStarter = (host: Host, spec: DomainSpec) => Promise<Domain>;
const withPath = (spec: DomainSpec, mxPath: "bypass" | "split"): DomainSpec => ({
  ...spec,
  args: { ...(spec.args as object), mxPath },
});
export const SPLIT_STARTER: RankStarter = (host, spec) => host.startGuest(withPath(spec, "split"));
const RANK_STARTERS: Record<MxPath, RankStarter> = {
  native: (host, spec) => host.startNative(spec),
  bypass: (host, spec) => host.startGuest(withPath(spec, "bypass")),
  split: SPLIT_STARTER,
};

/**
 * What the split path cost the driver domain per MX message, summed over every split run of
 * a bench (pingpong counts both directions; stream counts the window's sends and its ack):
 * netback requests (tx + rx), grant copies, event-channel notifications (to and from
 * netback), bridge lookups, frames through netback.
 */
export interface SplitCost {
  messages: number;
  netbackRequests: number;
  grantCopies: number;
  notifications: number;
  bridgeLookups: number;
  frames: number;
}

export const splitCosts: Record<string, SplitCost> = {};

function netSnapshot(hosts: readonly Host[]): Omit<SplitCost, "messages"> {
  const r = { netbackRequests: 0, grantCopies: 0, notifications: 0, bridgeLookups: 0, frames: 0 };
  for (const h of new Set(hosts)) {
    const n = h.netStats();
    r.netbackRequests += n.totals.txRequests + n.totals.rxRequests;
    r.grantCopies += n.totals.grantCopies;
    r.notifications += n.totals.notificationsSent + n.totals.notificationsReceived;
    // A lookup by MAC, or by endpoint for MX frames (netback/mx-steer.ts): one decision per frame either way.
    r.bridgeLookups += n.bridge.lookups + n.bridge.mxSteered;
    r.frames += n.totals.txFrames;
  }
  return r;
}

/** The MX paths a rank can take, in column order. */
export function mxPaths(): MxPath[] {
  return [...MX_PATHS];
}

/**
 * Where a pair's two ranks run: one host (both ranks on it: intra-host), or two hosts whose
 * NICs are linked (rank a on the first, rank b on the second: cross-host).
 */
export type Placement = Host | readonly [Host, Host];

export function scopeOf(placement: Placement): Scope {
  return Array.isArray(placement) && placement[0] !== placement[1] ? "cross-host" : "intra-host";
}

function hostsOf(placement: Placement): readonly [Host, Host] {
  return Array.isArray(placement)
    ? (placement as readonly [Host, Host])
    : [placement as Host, placement as Host];
}

/** What the sampling loop needs of a pair: an MX pair, the raw-tcp processes, the raw-chain threads. */
export interface BenchPair {
  pingpong(bytes: number, iters: number, warmup: number): Promise<number>;
  stream(bytes: number, iters: number, warmup: number, window?: number): Promise<number>;
  stop(): Promise<void>;
}

/** Two ranks of mx-bench, on one host or on two, connected, waiting for commands. */
export class MxPair implements BenchPair {
  private constructor(
    readonly path: MxPath,
    readonly scope: Scope,
    private readonly a: Domain,
    private readonly b: Domain,
    private readonly hosts: readonly Host[],
  ) {}

  /** The two ranks' domains (or native processes). */
  get domains(): [Domain, Domain] {
    return [this.a, this.b];
  }

  /** Rank a on the first host, rank b on the second (or both on the one host). */
  static async start(
    placement: Placement,
    path: MxPath,
    /**
     * busyPoll: the pair is the only thing measured, on one host: its guests wait as MPI
     * ranks with a core each do (spin up to BUSY_POLL_MAX_US), as Open MPI's busy-polling
     * ranks, the peer they are compared with. Benches running many pairs at once leave it off.
     */
    opts: { pages?: number; rndvThreshold?: number; busyPoll?: boolean } = {},
  ): Promise<MxPair> {
    const starter = RANK_STARTERS[path];
    const [hostA, hostB] = hostsOf(placement);
    const scope = scopeOf(placement);
    const pages = opts.pages ?? 4096;
    // Across hosts the NIC threads need the cores: the guests spin briefly, then sleep.
    const busy = opts.busyPoll === true && scope === "intra-host" && availableParallelism() >= 2;
    const spinMaxUs = busy ? BUSY_POLL_MAX_US : undefined;
    const args = { rndvThreshold: opts.rndvThreshold, spinMaxUs };
    // Both ranks at once; each is listened to as soon as it exists (a domain's messages are
    // events, not queued), and one that started is destroyed if the other could not.
    const start = (host: Host, name: string) =>
      starter(host, { module: PROGRAM, pages, name, maxHeapMb: 128, args }).then((dom) => ({
        dom,
        said: once(dom, "message"),
      }));
    const tag = scope === "cross-host" ? `${path}-x` : path;
    const [sa, sb] = await Promise.allSettled([start(hostA, `${tag}-a`), start(hostB, `${tag}-b`)]);
    if (sa.status === "rejected" || sb.status === "rejected") {
      await Promise.all([sa, sb].map((r) => (r.status === "fulfilled" ? r.value.dom.destroy() : undefined)));
      throw sa.status === "rejected" ? sa.reason : (sb as PromiseRejectedResult).reason;
    }
    const { dom: a, said: gotA } = sa.value;
    const { dom: b, said: gotB } = sb.value;
    const failed = Promise.race([a.exited, b.exited]).then((e) => {
      throw new Error(`mx-bench rank ${e.state} while connecting: ${e.error?.message ?? "ended early"}`);
    });
    failed.catch(() => {});
    try {
      const [[addrA], [addrB]] = (await Promise.race([Promise.all([gotA, gotB]), failed])) as [
        [{ path?: string }],
        [{ path?: string }],
      ];
      // A row must be measured on the path it names (a guest could end up on another path).
      for (const addr of [addrA, addrB])
        if (addr.path !== path) throw new Error(`an mx-bench rank asked for ${path} runs on ${addr.path}`);
      const connected = Promise.all([once(a, "message"), once(b, "message")]);
      a.send(addrB);
      b.send(addrA);
      await Promise.race([connected, failed]);
    } catch (e) {
      await Promise.all([a.destroy(), b.destroy()]);
      throw e;
    }
    return new MxPair(path, scope, a, b, [hostA, hostB]);
  }

  private async run(cmdA: MxBenchCommand, cmdB: MxBenchCommand): Promise<number> {
    const ra = once(this.a, "message");
    const rb = once(this.b, "message");
    const failed = Promise.race([this.a.exited, this.b.exited]).then((e) => {
      throw new Error(`mx-bench rank ${e.state}: ${e.error?.message ?? "ended early"}`);
    });
    this.b.send(cmdB);
    this.a.send(cmdA);
    const [[va]] = (await Promise.race([Promise.all([ra, rb]), failed])) as [[number], [number]];
    return va;
  }

  pingpong(bytes: number, iters: number, warmup: number): Promise<number> {
    return this.costed("pingpong", 2 * (iters + warmup), () =>
      this.run(
        { kind: "pingpong", role: "a", bytes, iters, warmup },
        { kind: "pingpong", role: "b", bytes, iters, warmup },
      ),
    );
  }

  stream(bytes: number, iters: number, warmup: number, window = OSU_WINDOW): Promise<number> {
    return this.costed("stream", (iters + warmup) * (window + 1), () =>
      this.run(
        { kind: "stream", role: "a", bytes, iters, warmup, window },
        { kind: "stream", role: "b", bytes, iters, warmup, window },
      ),
    );
  }

  /** On the split path, adds what the run cost the driver domain to splitCosts[bench/scope]. */
  private async costed(bench: string, messages: number, run: () => Promise<number>): Promise<number> {
    if (this.path !== "split") return run();
    const before = netSnapshot(this.hosts);
    const v = await run();
    const after = netSnapshot(this.hosts);
    const c = (splitCosts[`${bench}/${this.scope}`] ??= {
      messages: 0,
      netbackRequests: 0,
      grantCopies: 0,
      notifications: 0,
      bridgeLookups: 0,
      frames: 0,
    });
    c.messages += messages;
    for (const k of ["netbackRequests", "grantCopies", "notifications", "bridgeLookups", "frames"] as const)
      c[k] += after[k] - before[k];
    return v;
  }

  async counters(): Promise<[Record<string, number>, Record<string, number>]> {
    const ra = once(this.a, "message");
    const rb = once(this.b, "message");
    this.a.send("counters");
    this.b.send("counters");
    const [[ca], [cb]] = await Promise.all([ra, rb]);
    return [ca as Record<string, number>, cb as Record<string, number>];
  }

  async stop(): Promise<void> {
    this.a.send("stop");
    this.b.send("stop");
    await Promise.all([this.a.exited, this.b.exited]);
    await Promise.all([this.a.destroy(), this.b.destroy()]);
  }
}

/** OSU's iteration counts, scaled by the profile: large counts above 8 KiB. */
function osuIters(
  profile: BenchProfile,
  bytes: number,
  kind: "latency" | "bw",
): { iters: number; warmup: number } {
  const quick = profile.name === "quick";
  if (kind === "latency") {
    if (bytes <= 8192) return quick ? { iters: 2000, warmup: 100 } : { iters: 10000, warmup: 100 };
    if (bytes <= 256 * 1024) return quick ? { iters: 200, warmup: 10 } : { iters: 1000, warmup: 10 };
    return quick ? { iters: 20, warmup: 2 } : { iters: 100, warmup: 5 };
  }
  if (bytes <= 8192) return quick ? { iters: 20, warmup: 2 } : { iters: 100, warmup: 10 };
  return quick ? { iters: 5, warmup: 1 } : { iters: 20, warmup: 2 };
}

/**
 * Cross-host iteration counts. A round trip across hosts is a few hundred µs here, not the
 * ~1 µs OSU's counts were made for, so latency runs take fewer iterations (about 0.5 s per
 * run in the full profile); bandwidth above 8 KiB takes enough windows to move about 128 MiB
 * (quick) or 512 MiB (full) per run, between 2 and OSU's count — a window of 64 × 4 MiB is
 * 256 MiB, most of a second over loopback TCP, where OSU's 20 windows would take a minute.
 * Every transport of a size runs the same counts, raw-tcp and raw-chain included.
 */
function crossHostIters(
  profile: BenchProfile,
  bytes: number,
  kind: "latency" | "bw",
): { iters: number; warmup: number } {
  const quick = profile.name === "quick";
  if (kind === "latency") {
    if (bytes <= 8192) return quick ? { iters: 1000, warmup: 50 } : { iters: 2000, warmup: 100 };
    if (bytes <= 256 * 1024) return quick ? { iters: 100, warmup: 5 } : { iters: 500, warmup: 10 };
    return quick ? { iters: 10, warmup: 2 } : { iters: 50, warmup: 5 };
  }
  const osu = osuIters(profile, bytes, kind);
  if (bytes <= 8192) return osu;
  const volume = (quick ? 128 : 512) * 1024 * 1024;
  const iters = Math.max(2, Math.min(osu.iters, Math.round(volume / (bytes * OSU_WINDOW))));
  return { iters, warmup: 1 };
}

export interface MxBenchOptions {
  transports: string[];
  sizes: number[];
}

/**
 * osu_latency for the MX paths in `opts.transports`: on one host (`placement` a Host) with
 * the raw baselines, or across two linked hosts (`placement` [a, b]) with raw-tcp, all runs
 * interleaved. Rows carry the placement's scope.
 */
export async function benchPingpong(
  placement: Placement,
  profile: BenchProfile,
  opts: MxBenchOptions,
  progress: Progress = () => {},
): Promise<BenchRow[]> {
  if (scopeOf(placement) === "cross-host")
    return benchCrossHost("pingpong", placement, profile, opts, progress);
  const host = hostsOf(placement)[0];
  const rows: BenchRow[] = [];
  const pairs = await startPairs(host, opts.transports, progress);
  try {
    for (const bytes of opts.sizes) {
      const { iters, warmup } = osuIters(profile, bytes, "latency");
      rows.push(
        ...(await samplePairs(pairs, profile, "pingpong", "intra-host", bytes, "latency_us", progress, (p) =>
          p.pingpong(bytes, iters, warmup),
        )),
      );
      const base = { bytes, iters, warmup, runs: profile.runs, warmupRuns: profile.warmupRuns };
      if (opts.transports.includes("raw-sab")) {
        progress(`pingpong ${bytes} B, raw-sab`);
        rows.push(row("pingpong", "raw-sab", bytes, "latency_us", (await rawSabPingPong(base)).samples));
      }
      if (opts.transports.includes("raw-relay")) {
        progress(`pingpong ${bytes} B, raw-relay`);
        const relay = { ...base, iters: Math.max(10, Math.floor(iters / 10)) };
        rows.push(row("pingpong", "raw-relay", bytes, "latency_us", (await rawRelayPingPong(relay)).samples));
      }
      if (opts.transports.includes("postmessage")) {
        progress(`pingpong ${bytes} B, postmessage`);
        const pm = { ...base, iters: Math.max(10, Math.floor(iters / 10)), transfer: false };
        rows.push(
          row("pingpong", "postmessage", bytes, "latency_us", (await postMessagePingPong(pm)).samples),
        );
      }
      if (opts.transports.includes("postmessage-transfer") && bytes > 0) {
        // The buffer is moved, not cloned: what postMessage costs at its best for large messages.
        progress(`pingpong ${bytes} B, postmessage-transfer`);
        const pm = { ...base, iters: Math.max(10, Math.floor(iters / 10)), transfer: true };
        rows.push(
          row(
            "pingpong",
            "postmessage-transfer",
            bytes,
            "latency_us",
            (await postMessagePingPong(pm)).samples,
          ),
        );
      }
      if (opts.transports.includes("raw-tcp")) {
        // Two plain processes over loopback TCP: the wire a cross-host message takes. (With
        // the cross-host scope in the same run, the CLI leaves this out: that scope measures
        // raw-tcp interleaved with cross-host MX, with the same iteration counts.)
        progress(`pingpong ${bytes} B, raw-tcp`);
        const tcp = await rawTcpPingPong({
          bytes,
          iters: Math.max(10, Math.floor(iters / 10)),
          warmup: Math.max(2, Math.floor(warmup / 10)),
          runs: profile.runs,
        });
        rows.push(
          makeRow(
            { bench: "pingpong", transport: "raw-tcp", scope: "cross-host", bytes, metric: "latency_us" },
            tcp,
          ),
        );
      }
    }
  } finally {
    for (const p of pairs.values()) await p.stop();
  }
  return rows;
}

/** osu_bw for the MX paths, on one host with raw-sab and memcpy, or across hosts with raw-tcp. */
export async function benchStream(
  placement: Placement,
  profile: BenchProfile,
  opts: MxBenchOptions,
  progress: Progress = () => {},
): Promise<BenchRow[]> {
  if (scopeOf(placement) === "cross-host")
    return benchCrossHost("stream", placement, profile, opts, progress);
  const host = hostsOf(placement)[0];
  const rows: BenchRow[] = [];
  const pairs = await startPairs(host, opts.transports, progress);
  try {
    for (const bytes of opts.sizes) {
      const { iters, warmup } = osuIters(profile, bytes, "bw");
      rows.push(
        ...(await samplePairs(
          pairs,
          profile,
          "stream",
          "intra-host",
          bytes,
          "bandwidth_MBps",
          progress,
          (p) => p.stream(bytes, iters, warmup),
        )),
      );
      const base = { bytes, runs: profile.runs, warmupRuns: profile.warmupRuns };
      if (opts.transports.includes("raw-sab")) {
        progress(`stream ${bytes} B, raw-sab`);
        const s = await rawSabStream({ ...base, iters, warmup, window: OSU_WINDOW });
        rows.push(row("stream", "raw-sab", bytes, "bandwidth_MBps", s.samples));
      }
      if (opts.transports.includes("memcpy")) {
        progress(`stream ${bytes} B, memcpy`);
        const m = await memcpyBandwidth({
          ...base,
          iters: Math.max(20, Math.floor((64 * 1024 * 1024) / Math.max(bytes, 64))),
        });
        rows.push(row("stream", "memcpy", bytes, "bandwidth_MBps", m.samples));
      }
    }
  } finally {
    for (const p of pairs.values()) await p.stop();
  }
  return rows;
}

/**
 * One suite across two linked hosts: an MX pair per path with rank a on host A and rank b on
 * host B, raw-tcp's two processes and raw-chain's four threads, kept for the whole suite; every size runs each of them
 * in turn with the same iteration counts, so the ratios compare like with like.
 */
async function benchCrossHost(
  bench: "pingpong" | "stream",
  hosts: Placement,
  profile: BenchProfile,
  opts: MxBenchOptions,
  progress: Progress,
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const pairs = new Map<string, BenchPair>();
  try {
    for (const path of mxPaths()) {
      if (!opts.transports.includes(path)) continue;
      progress(`${bench} cross-host: starting ${path} pair`);
      const pair = await MxPair.start(hosts, path);
      pairs.set(path, pair);
      // Warm the JIT on both protocols (eager, and rendezvous with its remote PULL) the way the
      // suite will use them: round trips, or windows (startPairs says why). The other suite's
      // warm-up only cost time here (the split path streams at ~190 MB/s across hosts).
      if (bench === "pingpong") {
        await pair.pingpong(8, 2_000, 0);
        await pair.pingpong(64 * 1024, 50, 0);
      } else {
        await pair.stream(4096, 5, 0);
        await pair.stream(64 * 1024, 20, 0);
        // A cross-host stream of 1 MiB messages climbs for its first ~20 windows while V8
        // optimises both NICs' pull paths and the guests' (a fresh pair's windows of 1 MiB
        // went 0.2, 0.5, 0.7 … 1.0–1.3 GB/s): the full profile measures where it settles.
        await pair.stream(1 << 20, profile.name === "quick" ? 2 : 16, 0);
      }
    }
    const openmpi = opts.transports.includes("openmpi") && (await startOpenMpiPeer("cross-host", progress));
    if (openmpi) pairs.set("openmpi", openmpi);
    // Asked for by name across hosts: one line says it runs on one host only.
    if (opts.transports.includes(OPENMPI_CICO))
      await startOpenMpiPeer("cross-host", progress, undefined, "cico");
    if (opts.transports.includes("raw-tcp")) {
      progress(`${bench} cross-host: starting raw-tcp processes`);
      const tcp = await TcpPair.start();
      pairs.set("raw-tcp", tcp);
      if (bench === "pingpong") await tcp.pingpong(8, 2_000, 0);
      else await tcp.stream(4096, 5, 0);
    }
    if (opts.transports.includes("raw-chain")) {
      progress(`${bench} cross-host: starting raw-chain threads`);
      const chain = await ChainPair.start();
      pairs.set("raw-chain", chain);
      if (bench === "pingpong") {
        await chain.pingpong(8, 2_000, 0);
        await chain.pingpong(64 * 1024, 50, 0);
      } else await chain.stream(4096, 5, 0);
    }
    for (const bytes of opts.sizes) {
      if (bench === "pingpong") {
        const { iters, warmup } = crossHostIters(profile, bytes, "latency");
        rows.push(
          ...(await samplePairs(pairs, profile, bench, "cross-host", bytes, "latency_us", progress, (p) =>
            p.pingpong(bytes, iters, warmup),
          )),
        );
      } else {
        const { iters, warmup } = crossHostIters(profile, bytes, "bw");
        rows.push(
          ...(await samplePairs(pairs, profile, bench, "cross-host", bytes, "bandwidth_MBps", progress, (p) =>
            p.stream(bytes, iters, warmup, OSU_WINDOW),
          )),
        );
      }
    }
  } finally {
    for (const p of pairs.values()) await p.stop();
  }
  return rows;
}

/**
 * One row per pair for one size: runs of the pairs interleave, so all see the same
 * machine, in an order that rotates every round (roundOrder); warm-up runs are dropped, and
 * go on while the pairs have not settled (the profile's extraWarmupRuns, harness.ts).
 */
export async function samplePairs<P>(
  pairs: ReadonlyMap<string, P>,
  profile: BenchProfile,
  bench: string,
  scope: Scope,
  bytes: number,
  metric: BenchRow["metric"],
  progress: Progress,
  measureOnce: (pair: P) => Promise<number>,
): Promise<BenchRow[]> {
  const samples = new Map<string, number[]>();
  for (const t of pairs.keys()) samples.set(t, []);
  const what = `${bench} ${scope === "cross-host" ? "cross-host " : ""}${bytes} B`;
  const last = new Map<string, number>();
  const order = [...pairs];
  let unsettled = true;
  for (
    let w = 0;
    w < profile.warmupRuns || (unsettled && w < profile.warmupRuns + profile.extraWarmupRuns);
    w++
  ) {
    unsettled = false;
    for (const [t, pair] of roundOrder(order, w)) {
      progress(`${what}, ${t}, warm-up ${w + 1}`);
      const v = await measureOnce(pair);
      const before = last.get(t);
      if (before === undefined || !settled(before, v)) unsettled = true;
      last.set(t, v);
    }
  }
  for (let r = 0; r < profile.runs; r++) {
    for (const [t, pair] of roundOrder(order, r)) {
      progress(`${what}, ${t}, run ${r + 1}`);
      samples.get(t)!.push(await measureOnce(pair));
    }
  }
  return [...samples].map(([t, s]) => makeRow({ bench, transport: t, scope, bytes, metric }, s));
}

/**
 * The pairs in the order of round `r`: each round starts one further along, so that no pair is
 * always measured right after the same other one. A pair measured right after the split pair's
 * batch (its threads still winding down) read 8 B at 1.94 µs against 0.69 µs alone, in the same
 * minute; rotated, that happens in one round of n, and the median leaves it out.
 */
function roundOrder<T>(entries: readonly T[], r: number): T[] {
  const k = r % entries.length;
  return [...entries.slice(k), ...entries.slice(0, k)];
}

function row(
  bench: string,
  transport: string,
  bytes: number,
  metric: BenchRow["metric"],
  samples: number[],
): BenchRow {
  return makeRow({ bench, transport, bytes, metric }, samples);
}

async function startPairs(
  host: Host,
  transports: string[],
  progress: Progress = () => {},
): Promise<Map<string, BenchPair>> {
  const pairs = new Map<string, BenchPair>();
  for (const t of mxPaths()) {
    if (!transports.includes(t)) continue;
    const pair = await MxPair.start(host, t, { busyPoll: true });
    pairs.set(t, pair);
    // Warm the JIT on every code path before anything is measured (eager, eager in pieces,
    // rendezvous, a window's backlog): V8 compiles on background threads, which take the
    // cores from the pair while it runs (a 64 KiB stream ran at 4–6 GB/s in its first
    // hundred windows, 10–11 GB/s after). The split path takes a tenth: each of its messages
    // runs the same code ten times and more slower (a round trip of ~175 µs, ~200 MB/s), so a
    // tenth warms it as well, in seconds rather than half a minute.
    const n = t === "split" ? 10 : 1;
    await pair.pingpong(8, 20_000 / n, 0);
    await pair.pingpong(64 * 1024, 200 / n, 0);
    await pair.stream(4096, 10, 0);
    await pair.stream(64 * 1024, 200 / n, 0);
    await pair.stream(1 << 20, 10 / n, 0);
  }
  const openmpi = transports.includes("openmpi") && (await startOpenMpiPeer("intra-host", progress));
  if (openmpi) pairs.set("openmpi", openmpi);
  const cico =
    transports.includes(OPENMPI_CICO) && (await startOpenMpiPeer("intra-host", progress, undefined, "cico"));
  if (cico) pairs.set(OPENMPI_CICO, cico);
  return pairs;
}

/** Where the bypass path stands against this machine's own limits (one host), from the medians of one run. */
export function mxVerdicts(rows: readonly BenchRow[]): string[] {
  const get = (bench: string, t: string, bytes: number) =>
    rows.find((r) => r.bench === bench && r.transport === t && r.bytes === bytes && r.scope === "intra-host")
      ?.median;
  const out: string[] = [];
  const line = (what: string, v: number | undefined, why: string) => {
    if (v !== undefined && Number.isFinite(v)) out.push(`${what}: ${v.toFixed(2)}× (${why})`);
  };
  const b8 = get("pingpong", "bypass", 8);
  const n8 = get("pingpong", "native", 8);
  const s8 = get("pingpong", "raw-sab", 8);
  const p8 = get("pingpong", "postmessage", 8);
  if (b8 !== undefined && n8 !== undefined)
    line("bypass / native, 8 B latency", b8 / n8, "what being a VM costs once set up");
  if (b8 !== undefined && s8 !== undefined)
    line("bypass / raw-sab, 8 B latency", b8 / s8, "two plain workers over bare shared memory: the floor");
  if (b8 !== undefined && p8 !== undefined)
    line("postmessage / bypass, 8 B latency", p8 / b8, "Node's own way between threads, against the bypass");
  const bw = get("stream", "bypass", 1024 * 1024);
  const copy = get("stream", "memcpy", 1024 * 1024);
  if (bw !== undefined)
    out.push(
      `bypass stream at 1 MiB: ${(bw / 1000).toFixed(2)} GB/s` +
        (copy !== undefined
          ? ` (one thread copying 1 MiB with memcpy: ${(copy / 1000).toFixed(2)} GB/s)`
          : ""),
    );
  return out;
}

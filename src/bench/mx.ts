/**
 * `myrixen bench pingpong` and `myrixen bench stream`: MX between two ranks on one host, on
 * the native and bypass paths, with the machine's limits measured in the same run:
 *   raw-sab     two plain workers over a SharedArrayBuffer (spin, then block): the floor
 *   raw-relay   three plain workers in a relay: what a message crossing a third thread costs
 *   postmessage MessageChannel between two workers (structured clone): Node's own way
 *   memcpy      Uint8Array.set between SharedArrayBuffers: the copy ceiling
 * pingpong is one-way latency (round trip / 2, OSU's osu_latency); stream is osu_bw: windows
 * of 64 sends, then a 1-byte ack, MB = 10^6 bytes, timed at the sender.
 */
import { once } from "node:events";
import type { Host } from "../host/host.js";
import type { MxBenchCommand } from "../programs/mx-bench.js";
import type { Domain } from "../xen/hypervisor.js";
import {
  memcpyBandwidth,
  postMessagePingPong,
  rawRelayPingPong,
  rawSabPingPong,
  rawSabStream,
} from "./baselines.js";
import { type BenchProfile, type BenchRow, makeRow } from "./harness.js";
import { rawTcpPingPong } from "./tcp-baseline.js";

const PROGRAM = new URL("../programs/mx-bench.js", import.meta.url);
export const OSU_WINDOW = 64;

export type MxPath = "native" | "bypass";
export type Progress = (label: string) => void;

/** Two ranks of mx-bench on one host, connected, waiting for commands. */
export class MxPair {
  private constructor(
    readonly path: MxPath,
    private readonly a: Domain,
    private readonly b: Domain,
  ) {}

  /** The two ranks' domains (or native processes). */
  get domains(): [Domain, Domain] {
    return [this.a, this.b];
  }

  static async start(
    host: Host,
    path: MxPath,
    opts: { pages?: number; rndvThreshold?: number } = {},
  ): Promise<MxPair> {
    const pages = opts.pages ?? 4096;
    const args = { rndvThreshold: opts.rndvThreshold };
    const start = (name: string) =>
      path === "bypass"
        ? host.startGuest({ module: PROGRAM, pages, name, maxHeapMb: 128, args })
        : host.startNative({ module: PROGRAM, pages, name, maxHeapMb: 128, args });
    // Listen before the next await: a domain's messages are events, not queued.
    const a = await start(`${path}-a`);
    const gotA = once(a, "message");
    const b = await start(`${path}-b`);
    const gotB = once(b, "message");
    const [addrA] = await gotA;
    const [addrB] = await gotB;
    const connected = Promise.all([once(a, "message"), once(b, "message")]);
    a.send(addrB);
    b.send(addrA);
    await connected;
    return new MxPair(path, a, b);
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
    return this.run(
      { kind: "pingpong", role: "a", bytes, iters, warmup },
      { kind: "pingpong", role: "b", bytes, iters, warmup },
    );
  }

  stream(bytes: number, iters: number, warmup: number, window = OSU_WINDOW): Promise<number> {
    return this.run(
      { kind: "stream", role: "a", bytes, iters, warmup, window },
      { kind: "stream", role: "b", bytes, iters, warmup, window },
    );
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

export interface MxBenchOptions {
  transports: string[];
  sizes: number[];
}

export const PINGPONG_TRANSPORTS = [
  "native",
  "bypass",
  "raw-sab",
  "raw-relay",
  "postmessage",
  "postmessage-transfer",
  "raw-tcp",
];
export const STREAM_TRANSPORTS = ["native", "bypass", "raw-sab", "memcpy"];

export async function benchPingpong(
  host: Host,
  profile: BenchProfile,
  opts: MxBenchOptions,
  progress: Progress = () => {},
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const pairs = await startPairs(host, opts.transports);
  try {
    for (const bytes of opts.sizes) {
      const { iters, warmup } = osuIters(profile, bytes, "latency");
      rows.push(
        ...(await samplePairs(pairs, profile, "pingpong", bytes, "latency_us", progress, (p) =>
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
        // Two plain processes over loopback TCP: the wire a cross-host message takes.
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

export async function benchStream(
  host: Host,
  profile: BenchProfile,
  opts: MxBenchOptions,
  progress: Progress = () => {},
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const pairs = await startPairs(host, opts.transports);
  try {
    for (const bytes of opts.sizes) {
      const { iters, warmup } = osuIters(profile, bytes, "bw");
      rows.push(
        ...(await samplePairs(pairs, profile, "stream", bytes, "bandwidth_MBps", progress, (p) =>
          p.stream(bytes, iters, warmup),
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
 * One row per MX path for one size: runs of the paths interleave, so both see the same
 * machine; warm-up runs are dropped.
 */
async function samplePairs(
  pairs: Map<string, MxPair>,
  profile: BenchProfile,
  bench: string,
  bytes: number,
  metric: BenchRow["metric"],
  progress: Progress,
  measureOnce: (pair: MxPair) => Promise<number>,
): Promise<BenchRow[]> {
  const samples = new Map<string, number[]>();
  for (const t of pairs.keys()) samples.set(t, []);
  for (let r = 0; r < profile.runs + profile.warmupRuns; r++) {
    for (const [t, pair] of pairs) {
      progress(`${bench} ${bytes} B, ${t}, run ${r + 1}`);
      const v = await measureOnce(pair);
      if (r >= profile.warmupRuns) samples.get(t)!.push(v);
    }
  }
  return [...samples].map(([t, s]) => makeRow({ bench, transport: t, bytes, metric }, s));
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

async function startPairs(host: Host, transports: string[]): Promise<Map<string, MxPair>> {
  const pairs = new Map<string, MxPair>();
  for (const t of ["native", "bypass"] as const) {
    if (!transports.includes(t)) continue;
    const pair = await MxPair.start(host, t);
    // Warm the JIT on every code path before anything is measured (eager and rendezvous).
    await pair.pingpong(8, 20_000, 0);
    await pair.pingpong(64 * 1024, 200, 0);
    await pair.stream(4096, 10, 0);
    pairs.set(t, pair);
  }
  return pairs;
}

/** The targets, checked on the medians of one run. */
export function mxVerdicts(rows: readonly BenchRow[]): string[] {
  const get = (bench: string, t: string, bytes: number) =>
    rows.find((r) => r.bench === bench && r.transport === t && r.bytes === bytes)?.median;
  const out: string[] = [];
  const line = (what: string, v: number | undefined, target: string, ok: (v: number) => boolean) => {
    if (v !== undefined && Number.isFinite(v))
      out.push(`${what}: ${v.toFixed(2)}× (target ${target}) ${ok(v) ? "met" : "NOT met"}`);
  };
  const b8 = get("pingpong", "bypass", 8);
  const n8 = get("pingpong", "native", 8);
  const s8 = get("pingpong", "raw-sab", 8);
  const p8 = get("pingpong", "postmessage", 8);
  if (b8 !== undefined && n8 !== undefined)
    line("bypass / native, 8 B latency", b8 / n8, "≤ 1.05", (v) => v <= 1.05);
  if (b8 !== undefined && s8 !== undefined)
    line("bypass / raw-sab, 8 B latency", b8 / s8, "≤ 2", (v) => v <= 2);
  if (b8 !== undefined && p8 !== undefined)
    line("postmessage / bypass, 8 B latency", p8 / b8, "≥ 100", (v) => v >= 100);
  const bw = get("stream", "bypass", 1024 * 1024);
  if (bw !== undefined)
    out.push(
      `bypass stream at 1 MiB: ${(bw / 1000).toFixed(2)} GB/s (target ≥ 8 GB/s) ${bw >= 8000 ? "met" : "NOT met"}`,
    );
  return out;
}

/**
 * raw-tcp: the cross-host reference — two plain Node processes (no MyriXen) over node:net on
 * loopback with Nagle off (tcp-peer.ts), measured in the same run as the MX paths:
 *   pingpong  one-way latency (osu_latency: round trip / 2), µs
 *   stream    bandwidth (osu_bw: windows of 64 sends then a 1-byte ack, MB = 10^6 bytes,
 *             timed at the sender), MB/s
 * What a message costs when it crosses the kernel's network stack between processes.
 * A TcpPair keeps its two processes for many batches, with the same methods as an MX pair,
 * so the cross-host benchmarks interleave its runs with the MX paths' runs.
 */
import { type ChildProcess, fork } from "node:child_process";
import { once } from "node:events";
import type { TcpBatch, TcpCommand, TcpSetup } from "./tcp-peer.js";

const PEER = new URL("./tcp-peer.js", import.meta.url);

/** Default guard against a wedged batch (a peer that never answers). */
export const TCP_BATCH_TIMEOUT_MS = 120_000;

export class TcpPair {
  private constructor(
    private readonly server: ChildProcess,
    private readonly client: ChildProcess,
    private readonly timeoutMs: number,
  ) {}

  static async start(timeoutMs = TCP_BATCH_TIMEOUT_MS): Promise<TcpPair> {
    const server = fork(PEER, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const client = fork(PEER, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const pair = new TcpPair(server, client, timeoutMs);
    try {
      const [{ port }] = (await pair.ask(server, { role: "server" })) as [{ port: number }];
      const [ok] = (await pair.ask(client, { role: "client", port })) as [unknown];
      if (ok !== "connected") throw new Error(`raw-tcp: the client could not connect: ${JSON.stringify(ok)}`);
      return pair;
    } catch (e) {
      pair.kill();
      throw e;
    }
  }

  /** Sends `msg` to one peer and resolves with its answer; rejects if it exits or stalls. */
  private async ask(peer: ChildProcess, msg: TcpSetup | TcpCommand): Promise<unknown[]> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), this.timeoutMs);
    try {
      const answer = once(peer, "message", { signal: ac.signal });
      const exited = once(peer, "exit", { signal: ac.signal }).then(([code, signal]) => {
        throw new Error(`a raw-tcp peer exited (${signal ?? `code ${code}`}) during a batch`);
      });
      peer.send(msg);
      return (await Promise.race([answer, exited])) as unknown[];
    } catch (e) {
      if (ac.signal.aborted) throw new Error(`raw-tcp: no answer within ${this.timeoutMs} ms`);
      throw e;
    } finally {
      clearTimeout(timer);
      ac.abort();
    }
  }

  private async batch(b: TcpBatch): Promise<number> {
    await this.ask(this.server, b);
    const [v] = await this.ask(this.client, b);
    if (typeof v !== "number" || !Number.isFinite(v))
      throw new Error(`raw-tcp ${b.kind}: ${(v as { error?: string })?.error ?? `bad sample ${String(v)}`}`);
    return v;
  }

  /** One-way latency (µs) of one batch: `warmup` untimed, then `iters` timed round trips. */
  pingpong(bytes: number, iters: number, warmup: number): Promise<number> {
    return this.batch({ kind: "pingpong", bytes, iters, warmup });
  }

  /** Bandwidth (MB/s) of one batch of osu_bw windows. */
  stream(bytes: number, iters: number, warmup: number, window = 64): Promise<number> {
    return this.batch({ kind: "stream", bytes, iters, warmup, window });
  }

  private kill(): void {
    this.server.kill();
    this.client.kill();
  }

  async stop(): Promise<void> {
    const gone = Promise.all(
      [this.server, this.client].map((p) =>
        p.exitCode !== null || p.signalCode !== null ? undefined : once(p, "exit"),
      ),
    );
    for (const p of [this.client, this.server]) if (p.connected) p.send("stop");
    const timer = setTimeout(() => this.kill(), 5000);
    await gone;
    clearTimeout(timer);
  }
}

export interface TcpBaselineOptions {
  bytes: number;
  iters: number;
  warmup: number;
  runs: number;
  /** Runs whose samples are dropped (default 0). */
  warmupRuns?: number;
  timeoutMs?: number;
}

async function samples(o: TcpBaselineOptions, one: (p: TcpPair) => Promise<number>): Promise<number[]> {
  const pair = await TcpPair.start(o.timeoutMs);
  try {
    const out: number[] = [];
    for (let r = 0; r < o.runs + (o.warmupRuns ?? 0); r++) {
      const v = await one(pair);
      if (r >= (o.warmupRuns ?? 0)) out.push(v);
    }
    return out;
  } finally {
    await pair.stop();
  }
}

/** One-way latency samples in µs (round trip / 2), one per run, from a fresh pair. */
export function rawTcpPingPong(o: TcpBaselineOptions): Promise<number[]> {
  return samples(o, (p) => p.pingpong(o.bytes, o.iters, o.warmup));
}

/** osu_bw samples in MB/s (10^6 bytes/s), one per run, from a fresh pair. */
export function rawTcpStream(o: TcpBaselineOptions & { window?: number }): Promise<number[]> {
  return samples(o, (p) => p.stream(o.bytes, o.iters, o.warmup, o.window));
}

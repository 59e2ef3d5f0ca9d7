/**
 * raw-tcp: the cross-host reference — two plain Node processes (no MyriXen) ping-ponging
 * over node:net on loopback with Nagle off. What a message costs when it crosses the kernel's
 * network stack between processes, measured in the same run as the MX paths.
 */
import { fork } from "node:child_process";
import { once } from "node:events";

const PEER = new URL("./tcp-peer.js", import.meta.url);

export interface TcpBaselineOptions {
  bytes: number;
  iters: number;
  warmup: number;
  runs: number;
  timeoutMs?: number;
}

/** One-way latency samples in µs (round trip / 2), one per run. */
export async function rawTcpPingPong(o: TcpBaselineOptions): Promise<number[]> {
  const server = fork(PEER, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const client = fork(PEER, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const timer = setTimeout(() => {
    server.kill();
    client.kill();
  }, o.timeoutMs ?? 120_000);
  try {
    server.send({ role: "server", bytes: o.bytes, iters: o.iters, warmup: o.warmup, runs: o.runs });
    const [{ port }] = (await once(server, "message")) as [{ port: number }];
    client.send({ role: "client", port, bytes: o.bytes, iters: o.iters, warmup: o.warmup, runs: o.runs });
    const [reply] = (await Promise.race([
      once(client, "message"),
      once(client, "exit").then(() => [{ error: "the raw-tcp client exited without a result" }]),
    ])) as [{ samples?: number[]; error?: string }];
    if (!reply.samples) throw new Error(`raw-tcp: ${reply.error ?? "no samples"}`);
    return reply.samples;
  } finally {
    clearTimeout(timer);
    server.kill();
    client.kill();
  }
}

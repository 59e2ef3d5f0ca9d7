/**
 * One end of the raw-tcp baseline: a plain Node process (no MyriXen at all) ping-ponging
 * fixed-size messages over node:net on loopback, Nagle off. Started by tcp-baseline.ts with
 * fork(); the server reports its port, the client reports one-way latency samples (µs).
 */
import { createConnection, createServer, type Socket } from "node:net";

interface Job {
  role: "server" | "client";
  port?: number;
  bytes: number;
  iters: number;
  warmup: number;
  runs: number;
}

const send = (m: unknown) => process.send?.(m);

/** Reads exactly `n` bytes at a time from a socket and calls `onMessage` for each. */
function framer(sock: Socket, n: number, onMessage: () => void): void {
  let have = 0;
  sock.on("data", (chunk: Buffer) => {
    have += chunk.length;
    while (have >= n) {
      have -= n;
      onMessage();
    }
  });
}

process.once("message", (job: Job) => {
  const size = Math.max(job.bytes, 1);
  const payload = Buffer.alloc(size, 0x5a);
  if (job.role === "server") {
    const server = createServer((sock) => {
      sock.setNoDelay(true);
      framer(sock, size, () => sock.write(payload));
      sock.on("close", () => server.close(() => process.exit(0)));
    });
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      send({ port: typeof addr === "object" && addr ? addr.port : 0 });
    });
    return;
  }
  const sock = createConnection({ port: job.port!, host: "127.0.0.1" }, () => {
    sock.setNoDelay(true);
    const samples: number[] = [];
    const perRun = job.warmup + job.iters;
    let i = 0;
    let t0 = 0;
    framer(sock, size, () => {
      i++;
      const inRun = i % perRun;
      if (inRun === job.warmup) t0 = performance.now();
      if (inRun === 0) {
        samples.push(((performance.now() - t0) * 1000) / (2 * job.iters));
        if (samples.length === job.runs) {
          send({ samples });
          sock.end();
          return;
        }
      }
      sock.write(payload);
    });
    sock.write(payload);
  });
  sock.on("error", (e) => {
    send({ error: e.message });
    process.exit(1);
  });
});

/**
 * One end of the raw-tcp baseline: a plain Node process (no MyriXen at all) exchanging
 * fixed-size messages with its twin over node:net on loopback, Nagle off, reading into one
 * buffer used again as the NICs' links read (nic/tcp-read-pool.ts). Started by
 * tcp-baseline.ts with fork() and kept for many batches, like an MX pair, so its runs can
 * interleave with the MX paths' runs.
 *
 * Set-up: the parent sends { role: "server" } (it answers { port }) and then
 * { role: "client", port } (it answers "connected"). Then each batch is one command, given
 * first to the server (which answers "ready") and then to the client (which answers with
 * its sample):
 *   { kind: "pingpong", bytes, iters, warmup }          the client sends a message, the
 *        server echoes it: one-way latency in µs (round trip / 2, osu_latency)
 *   { kind: "stream", bytes, iters, warmup, window }    the client writes windows of
 *        `window` messages back to back, the server answers each window with a 1-byte ack:
 *        MB/s (10^6 bytes) timed at the client (osu_bw) — what mx-bench's stream does over MX
 * `warmup` iterations (round trips or windows) run untimed before the `iters` timed ones.
 * "stop" ends the process.
 */
import { createConnection, createServer, type Socket } from "node:net";
import { adoptPooledReads, ReadPool, SpareReadBuffers } from "../nic/tcp-read-pool.js";

export type TcpSetup = { role: "server" } | { role: "client"; port: number };
export interface TcpBatch {
  kind: "pingpong" | "stream";
  bytes: number;
  iters: number;
  warmup: number;
  /** stream: messages per window (osu_bw: 64). */
  window?: number;
}
export type TcpCommand = TcpBatch | "stop";

const send = (m: unknown) => process.send?.(m);

/** The batch's unit on the wire: a message travels as at least 1 byte (TCP has no empty write). */
const sizeOf = (b: TcpBatch) => Math.max(b.bytes, 1);

/**
 * Calls `onUnit()` once per `unit` bytes received (a message's bytes may span chunks, and a
 * chunk may hold several). `unit` changes between batches, at a quiet point of the stream.
 */
class Counter {
  unit = 1;
  have = 0;
  onUnit: () => void = () => {};
  /**
   * Counts what `sock` reads, into one buffer used again (nic/tcp-read-pool.ts), as the NICs'
   * links read bulk: the socket to use from now on (node:net's 'data' where it cannot be adopted).
   */
  attach(sock: Socket): Socket {
    const count = (chunk: Buffer) => {
      this.have += chunk.length;
      while (this.have >= this.unit) {
        this.have -= this.unit;
        this.onUnit();
      }
    };
    const pool = new ReadPool(new SpareReadBuffers(1));
    const pooled = adoptPooledReads(sock, pool, (chunk) => {
      count(chunk);
      pool.give(chunk);
    });
    if (pooled === null) {
      sock.on("data", count);
      return sock;
    }
    if (pooled.buffered.length > 0) count(pooled.buffered);
    pooled.socket.resume();
    return pooled.socket;
  }
}

function server(): void {
  const counter = new Counter();
  let conn: Socket | undefined;
  const srv = createServer((sock) => {
    sock.setNoDelay(true);
    conn = counter.attach(sock);
    conn.on("error", () => process.exit(1));
  });
  srv.listen(0, "127.0.0.1", () => {
    const addr = srv.address();
    send({ port: typeof addr === "object" && addr ? addr.port : 0 });
  });
  process.on("message", (cmd: TcpCommand) => {
    if (cmd === "stop") process.exit(0);
    const size = sizeOf(cmd);
    const echo = Buffer.alloc(size, 0x5a);
    const ack = Buffer.alloc(1, 1);
    counter.have = 0;
    if (cmd.kind === "pingpong") {
      counter.unit = size;
      counter.onUnit = () => conn?.write(echo);
    } else {
      counter.unit = size * (cmd.window ?? 64);
      counter.onUnit = () => conn?.write(ack);
    }
    send("ready");
  });
}

function client(port: number): void {
  const counter = new Counter();
  const failed = (e: Error) => {
    send({ error: e.message });
    process.exit(1);
  };
  const dialed = createConnection({ port, host: "127.0.0.1" }, () => {
    dialed.setNoDelay(true);
    // Adopted once connected (a connecting socket is not); nothing comes before the first batch.
    sock = counter.attach(dialed);
    sock.on("error", failed);
    send("connected");
  });
  dialed.on("error", failed);
  let sock = dialed;
  process.on("message", (cmd: TcpCommand) => {
    if (cmd === "stop") {
      sock.end();
      process.exit(0);
    }
    const size = sizeOf(cmd);
    const payload = Buffer.alloc(size, 0x5a);
    const window = cmd.window ?? 64;
    const total = cmd.warmup + cmd.iters;
    // One iteration: a message (pingpong) or a window of messages written back to back (as
    // MX posts 64 isends before waiting; Node may gather queued writes into one writev).
    const iterate =
      cmd.kind === "pingpong"
        ? () => sock.write(payload)
        : () => {
            for (let k = 0; k < window; k++) sock.write(payload);
          };
    let done = 0;
    let t0 = performance.now();
    counter.have = 0;
    counter.unit = cmd.kind === "pingpong" ? size : 1; // the echo, or the window's ack
    counter.onUnit = () => {
      done++;
      if (done === cmd.warmup) t0 = performance.now();
      if (done < total) {
        iterate();
        return;
      }
      const sec = (performance.now() - t0) / 1000;
      send(
        cmd.kind === "pingpong"
          ? (sec * 1e6) / (2 * cmd.iters)
          : (cmd.bytes * window * cmd.iters) / 1e6 / sec,
      );
    };
    iterate();
  });
}

process.once("message", (setup: TcpSetup) => {
  if (setup.role === "server") server();
  else client(setup.port);
});

// The bench that forked us is gone (killed, crashed): so are we — an orphan would hold its
// socket and its parent's output pipes open.
process.on("disconnect", () => process.exit(0));

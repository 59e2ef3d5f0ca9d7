/**
 * raw-chain: the floor of the cross-host architecture, measured in the same run as cross-host
 * MX — four plain worker threads in this process (chain-worker.ts), guest A → "NIC" A →
 * loopback TCP → "NIC" B → guest B, with the MX library's and NIC's waiting discipline and
 * nothing else: no MX protocol, no descriptors, no Xen. What the thread hand-offs alone cost.
 *   pingpong  one-way latency (osu_latency: round trip / 2), µs
 *   stream    bandwidth (osu_bw: windows of 64 sends then a 1-byte ack, MB = 10^6 bytes,
 *             timed at the sender), MB/s
 * A ChainPair keeps its threads and its socket for many batches, with the same methods as an
 * MX pair (BenchPair), so benchCrossHost interleaves its runs with the MX paths' runs.
 */
import { Worker } from "node:worker_threads";
import {
  CHAIN_JOB,
  type ChainBatch,
  type ChainCommand,
  type ChainJob,
  type ChainReport,
  type ChainRole,
  type Checked,
  CTRL_WORDS,
  type HostRings,
  MAX_SLOTS,
} from "./chain-worker.js";
import type { BenchPair } from "./mx.js";

const WORKER_URL = new URL("./chain-worker.js", import.meta.url);

/** Default guard against a wedged batch (a thread that never answers). */
export const CHAIN_BATCH_TIMEOUT_MS = 120_000;

/** Ring memory per direction per host, about (slots shrink for large messages, 2 at least). */
const RING_BYTES = 16 * 1024 * 1024;

export interface ChainOptions {
  timeoutMs?: number;
  /** For tests: NIC B flips a payload byte of every frame, so the guests' checks must fail. */
  corrupt?: boolean;
}

/** Slots and slot size for messages of `bytes`: a window of small ones fits whole. */
function geometry(bytes: number): { slots: number; stride: number } {
  const stride = Math.max(8, Math.ceil(Math.max(bytes, 1) / 8) * 8);
  return { slots: Math.max(2, Math.min(MAX_SLOTS, Math.floor(RING_BYTES / stride))), stride };
}

/** A worker's reports in order of arrival, each taken by the first ask for its type. */
class Inbox {
  private readonly queue: ChainReport[] = [];
  private readonly waiting: { type: ChainReport["type"]; resolve: (m: ChainReport) => void }[] = [];

  put(m: ChainReport): void {
    const i = this.waiting.findIndex((x) => x.type === m.type);
    if (i >= 0) this.waiting.splice(i, 1)[0].resolve(m);
    else this.queue.push(m);
  }

  take(type: ChainReport["type"]): Promise<ChainReport> {
    const i = this.queue.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(this.queue.splice(i, 1)[0]);
    return new Promise((resolve) => this.waiting.push({ type, resolve }));
  }
}

export class ChainPair implements BenchPair {
  private gen = 0;
  private rings: [HostRings, HostRings] | undefined;
  private failure: Error | undefined;
  private stopping = false;
  private readonly failed: Promise<never>;
  private fail: (e: Error) => void = () => {};
  /** What the guests verified, summed over every batch: stamped messages, full checksums. */
  readonly checked: Checked = { messages: 0, checksums: 0 };
  /** Every worker's messages, queued: one that comes before anyone asks is not lost. */
  private readonly inbox = new Map<Worker, Inbox>();

  private constructor(
    private readonly workers: Record<ChainRole, Worker>,
    private readonly timeoutMs: number,
  ) {
    this.failed = new Promise<never>((_, reject) => {
      this.fail = (e) => {
        this.failure ??= e;
        reject(this.failure);
      };
    });
    this.failed.catch(() => {});
    for (const [role, w] of Object.entries(workers)) {
      const box = new Inbox();
      this.inbox.set(w, box);
      w.on("message", (m: ChainReport) => box.put(m));
      w.on("error", (e) => {
        if (!this.stopping) this.fail(new Error(`raw-chain: ${role} failed: ${e.message}`, { cause: e }));
      });
      w.on("exit", (code) => {
        if (!this.stopping) this.fail(new Error(`raw-chain: ${role} exited (code ${code})`));
      });
    }
  }

  /** Starts the four threads and connects the two "NICs" over loopback TCP. */
  static async start(opts: ChainOptions = {}): Promise<ChainPair> {
    const mk = (role: ChainRole) => {
      const job: ChainJob = { job: CHAIN_JOB, role, corrupt: role === "nic-b" && opts.corrupt === true };
      return new Worker(WORKER_URL, { workerData: job });
    };
    const pair = new ChainPair(
      { "guest-a": mk("guest-a"), "nic-a": mk("nic-a"), "nic-b": mk("nic-b"), "guest-b": mk("guest-b") },
      opts.timeoutMs ?? CHAIN_BATCH_TIMEOUT_MS,
    );
    try {
      const w = pair.workers;
      const { port } = (await pair.expect(w["nic-b"], "listening")) as { port: number };
      const accepted = pair.expect(w["nic-b"], "connected");
      const connected = pair.expect(w["nic-a"], "connected");
      w["nic-a"].postMessage({ type: "connect", port } satisfies ChainCommand);
      await Promise.all([accepted, connected]);
      return pair;
    } catch (e) {
      await pair.stop();
      throw e;
    }
  }

  /** The next message of `type` from `w`; rejects if a thread fails or the batch stalls. */
  private async expect(w: Worker, type: ChainReport["type"]): Promise<ChainReport> {
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`raw-chain: no "${type}" within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
    });
    try {
      return await Promise.race([this.inbox.get(w)!.take(type), this.failed, stalled]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Both hosts' rings for messages of `bytes`: kept while the geometry stays the same. */
  private ringsFor(bytes: number): [HostRings, HostRings] {
    const { slots, stride } = geometry(bytes);
    if (this.rings && this.rings[0].slots === slots && this.rings[0].stride === stride) return this.rings;
    const gen = ++this.gen;
    const host = (): HostRings => ({
      gen,
      slots,
      stride,
      ctrl: new SharedArrayBuffer(CTRL_WORDS * 4),
      tx: new SharedArrayBuffer(slots * stride),
      rx: new SharedArrayBuffer(slots * stride),
    });
    this.rings = [host(), host()];
    return this.rings;
  }

  private async batch(b: Omit<ChainBatch, "rings">): Promise<number> {
    if (this.failure) throw this.failure;
    const [ra, rb] = this.ringsFor(b.bytes);
    const w = this.workers;
    const send = (role: ChainRole, rings: HostRings) =>
      w[role].postMessage({ type: "batch", batch: { ...b, rings } } satisfies ChainCommand);
    // Everything but guest A first: it starts sending as soon as it has the command.
    const ready = ["nic-a", "nic-b", "guest-b"].map((r) => this.expect(w[r as ChainRole], "ready"));
    send("nic-a", ra);
    send("nic-b", rb);
    send("guest-b", rb);
    await Promise.all(ready);
    const gotA = this.expect(w["guest-a"], "sample");
    const gotB = this.expect(w["guest-b"], "done");
    send("guest-a", ra);
    const [a, bDone] = (await Promise.all([gotA, gotB])) as [
      Extract<ChainReport, { type: "sample" }>,
      Extract<ChainReport, { type: "done" }>,
    ];
    for (const c of [a.checked, bDone.checked]) {
      this.checked.messages += c.messages;
      this.checked.checksums += c.checksums;
    }
    const error = a.error ?? bDone.error;
    if (error) throw new Error(`raw-chain ${b.kind}: ${error}`);
    if (!Number.isFinite(a.value) || a.value < 0)
      throw new Error(`raw-chain ${b.kind}: bad sample ${a.value}`);
    return a.value;
  }

  /** One-way latency (µs) of one batch: `warmup` untimed, then `iters` timed round trips. */
  pingpong(bytes: number, iters: number, warmup: number): Promise<number> {
    return this.batch({ kind: "pingpong", bytes, iters, warmup, window: 1 });
  }

  /** Bandwidth (MB/s) of one batch of osu_bw windows. */
  stream(bytes: number, iters: number, warmup: number, window = 64): Promise<number> {
    return this.batch({ kind: "stream", bytes, iters, warmup, window });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const w of Object.values(this.workers)) w.postMessage({ type: "stop" } satisfies ChainCommand);
    // Terminating also ends a thread stuck in a batch (a failed run): nothing is left behind.
    await Promise.all(Object.values(this.workers).map((w) => w.terminate().catch(() => 0)));
  }
}

/**
 * Worker entry for the raw-chain baseline (chain-baseline.ts): the bare four-thread chain a
 * cross-host MX message crosses, with no MX in it — guest A → "NIC" A → loopback TCP →
 * "NIC" B → guest B, and back. Each host has a control SharedArrayBuffer and two rings (tx:
 * guest → NIC, rx: NIC → guest); payload bytes are copied into the tx ring, written to the
 * socket from where they lie (the kernel's copy; the slot is freed when the write completes),
 * copied out of the socket's chunks into the rx ring, and out of that. The NIC's TCP link
 * (nic/tcp-link.ts) sends pull data from lent frames the same way.
 *
 * The waiting discipline is the MX library's and the NIC's:
 *   guest  spins DEFAULT_SPIN_US, then says it sleeps (C_GUEST_SLEEPING) and Atomics.waits
 *   NIC    polls after its last work (looking at the socket between rounds) for the MX NIC's
 *          longest budget of the kind (nic/poll-budget.ts: POLL_AFTER_EVENTS_MS after it gave
 *          its guest a message, POLL_AFTER_FRAMES_MS after it only sent frames), not adapted:
 *          adapting measured slower for the bare chain (8 B 82–93 µs against 69–74 with the
 *          one 40 µs budget then), and the chain is the floor at its best;
 *          then it says it sleeps (C_NIC_SLEEPING) and waits in its event loop with
 *          Atomics.waitAsync on C_TX_PROD (so socket data still wakes it); a guest notifies
 *          only when the flag says it sleeps
 *
 * Every message carries its sequence number in its first and last 4 bytes (checked on every
 * receive), and the last message a guest receives in each batch is checked in full against a
 * checksum of the bytes its sender meant to send: the bytes really went through the chain.
 *
 * Every copy goes through xen/copy.ts, as the NIC's and the MX library's do.
 *
 * Commands come from the main thread per batch (ChainCommand); guest A answers with its
 * sample, guest B with "done", each with the first corruption it saw, if any.
 */
import { createConnection, createServer, type Socket } from "node:net";
import { parentPort, workerData } from "node:worker_threads";
import { LINKED_SLICE_MS } from "../nic/nic.js";
import { POLL_AFTER_EVENTS_MS, POLL_AFTER_FRAMES_MS } from "../nic/poll-budget.js";
import { adoptPooledReads, ReadPool, SpareReadBuffers } from "../nic/tcp-read-pool.js";
import { copyBytes } from "../xen/copy.js";
import { adaptiveWait, DEFAULT_SPIN_US } from "../xen/wait.js";

/** Marker on every job, so that importing this module from some other worker does nothing. */
export const CHAIN_JOB = "myrixen-raw-chain";

export type ChainRole = "guest-a" | "nic-a" | "nic-b" | "guest-b";

export interface ChainJob {
  job: typeof CHAIN_JOB;
  role: ChainRole;
  /** nic-b, for tests: flip one payload byte of every frame it delivers to guest B. */
  corrupt?: boolean;
}

// Control words, one cache line (16 Int32) apart so the two sides do not share a line.
export const C_TX_PROD = 0; // messages the guest put in the tx ring
export const C_TX_CONS = 16; // messages the NIC took out of it
export const C_RX_PROD = 32; // messages the NIC put in the rx ring
export const C_RX_CONS = 48; // messages the guest took out of it
export const C_NIC_SLEEPING = 64;
export const C_GUEST_SLEEPING = 80;
/** Ring slots at most (osu_bw's window: a whole window fits when the slots are small). */
export const MAX_SLOTS = 64;
export const C_TX_LENS = 96;
export const C_RX_LENS = C_TX_LENS + MAX_SLOTS;
export const CTRL_WORDS = C_RX_LENS + MAX_SLOTS;

/** One host's shared memory for a ring geometry: its generation, control words, rings. */
export interface HostRings {
  gen: number;
  slots: number;
  /** Bytes per slot (≥ the batch's message size). */
  stride: number;
  ctrl: SharedArrayBuffer;
  tx: SharedArrayBuffer;
  rx: SharedArrayBuffer;
}

export interface ChainBatch {
  kind: "pingpong" | "stream";
  bytes: number;
  iters: number;
  warmup: number;
  window: number;
  /** This worker's host's rings (new generation = fresh counters). */
  rings: HostRings;
}

export type ChainCommand =
  | { type: "batch"; batch: ChainBatch }
  | { type: "connect"; port: number }
  | { type: "stop" };

export type ChainReport =
  | { type: "listening"; port: number }
  | { type: "connected" }
  | { type: "ready" }
  | { type: "sample"; value: number; error?: string; checked: Checked }
  | { type: "done"; error?: string; checked: Checked };

/** What a guest verified in one batch: messages whose stamps it checked, full checksums. */
export interface Checked {
  messages: number;
  checksums: number;
}

// ---- payloads ---------------------------------------------------------------------------

/** Seeds of the two directions' payload patterns (and the stream's). */
const SEED_AB = 1;
const SEED_BA = 2;
const SEED_STREAM = 3;

export function pattern(bytes: number, seed: number): Uint8Array {
  const a = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) a[i] = (i * 31 + seed * 7) & 0xff;
  return a;
}

/** FNV-1a over `n` bytes. */
export function checksum(a: Uint8Array, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ a[i], 0x01000193);
  return h >>> 0;
}

/** Writes `seq` into the message's first and last 4 bytes (its first byte when shorter than 8). */
function stamp(a: Uint8Array, off: number, len: number, seq: number): void {
  if (len === 0) return;
  if (len < 8) {
    a[off] = seq & 0xff;
    return;
  }
  for (const at of [off, off + len - 4]) {
    a[at] = seq & 0xff;
    a[at + 1] = (seq >>> 8) & 0xff;
    a[at + 2] = (seq >>> 16) & 0xff;
    a[at + 3] = (seq >>> 24) & 0xff;
  }
}

function stampOk(a: Uint8Array, len: number, seq: number): boolean {
  if (len === 0) return true;
  if (len < 8) return a[0] === (seq & 0xff);
  const u = (at: number) => (a[at] | (a[at + 1] << 8) | (a[at + 2] << 16) | (a[at + 3] << 24)) >>> 0;
  return u(0) === seq >>> 0 && u(len - 4) === seq >>> 0;
}

// ---- guests -----------------------------------------------------------------------------

/** A guest's end of its host's rings: synchronous sends and receives, spin then block. */
class GuestPort {
  private gen = -1;
  private ctrl!: Int32Array;
  private tx!: Uint8Array;
  private rx!: Uint8Array;
  private slots = 0;
  private stride = 0;
  private txProd = 0;
  private rxCons = 0;
  private sleepingOn = -1;
  private expected = 0;
  dst = new Uint8Array(0);
  /** The first corruption seen in this batch. */
  error: string | undefined;
  checked: Checked = { messages: 0, checksums: 0 };

  /** Says it sleeps, then looks once more: the NIC notifies only a guest that said so. */
  private readonly arm = (): boolean => {
    Atomics.store(this.ctrl, C_GUEST_SLEEPING, 1);
    return Atomics.load(this.ctrl, this.sleepingOn) === this.expected;
  };

  use(r: HostRings, bytes: number): void {
    if (r.gen !== this.gen) {
      this.gen = r.gen;
      this.ctrl = new Int32Array(r.ctrl);
      this.tx = new Uint8Array(r.tx);
      this.rx = new Uint8Array(r.rx);
      this.slots = r.slots;
      this.stride = r.stride;
      this.txProd = 0;
      this.rxCons = 0;
    }
    if (this.dst.length < Math.max(bytes, 1)) this.dst = new Uint8Array(Math.max(bytes, 1));
    this.error = undefined;
    this.checked = { messages: 0, checksums: 0 };
  }

  private wait(index: number, expected: number): void {
    this.sleepingOn = index;
    this.expected = expected;
    adaptiveWait(this.ctrl, index, expected, DEFAULT_SPIN_US, Number.POSITIVE_INFINITY, this.arm);
    Atomics.store(this.ctrl, C_GUEST_SLEEPING, 0);
  }

  /** Copies `src[0, len)` into the next tx slot, stamped with `seq`, and rings the doorbell. */
  send(src: Uint8Array, len: number, seq: number): void {
    for (;;) {
      const cons = Atomics.load(this.ctrl, C_TX_CONS);
      if (this.txProd - cons < this.slots) break;
      this.wait(C_TX_CONS, cons);
    }
    const slot = this.txProd % this.slots;
    const off = slot * this.stride;
    copyBytes(this.tx, off, src, 0, len);
    stamp(this.tx, off, len, seq);
    Atomics.store(this.ctrl, C_TX_LENS + slot, len);
    this.txProd++;
    Atomics.store(this.ctrl, C_TX_PROD, this.txProd);
    if (Atomics.load(this.ctrl, C_NIC_SLEEPING) !== 0) Atomics.notify(this.ctrl, C_TX_PROD);
  }

  /** Copies the next rx message into `dst`, checks its length and stamp; returns its length. */
  recv(wantLen: number, seq: number): number {
    for (;;) {
      const prod = Atomics.load(this.ctrl, C_RX_PROD);
      if (prod !== this.rxCons) break;
      this.wait(C_RX_PROD, prod);
    }
    const slot = this.rxCons % this.slots;
    const len = Atomics.load(this.ctrl, C_RX_LENS + slot);
    const off = slot * this.stride;
    if (len <= this.dst.length) copyBytes(this.dst, 0, this.rx, off, len);
    this.rxCons++;
    Atomics.store(this.ctrl, C_RX_CONS, this.rxCons);
    // Room in the rx ring: a NIC holding frames for it sleeps until told (as MX's owners do).
    if (Atomics.load(this.ctrl, C_NIC_SLEEPING) !== 0) Atomics.notify(this.ctrl, C_TX_PROD);
    if (len !== wantLen) this.error ??= `message ${seq}: ${len} bytes, expected ${wantLen}`;
    else if (!stampOk(this.dst, len, seq)) this.error ??= `message ${seq}: sequence stamp corrupted`;
    this.checked.messages++;
    return len;
  }

  /** Checks the last received message in full against what its sender meant to send. */
  verify(base: Uint8Array, len: number, seq: number, what: string): void {
    const want = base.slice(0, len);
    stamp(want, 0, len, seq);
    if (checksum(this.dst, len) !== checksum(want, len))
      this.error ??= `${what}: checksum mismatch on message ${seq} (payload corrupted in the chain)`;
    this.checked.checksums++;
  }
}

function guest(role: "guest-a" | "guest-b"): void {
  const port = new GuestPort();
  const post = (m: ChainReport) => parentPort!.postMessage(m);
  parentPort!.on("message", (cmd: ChainCommand) => {
    if (cmd.type === "stop") {
      parentPort!.close();
      return;
    }
    if (cmd.type !== "batch") return;
    const { kind, bytes, iters, warmup, window, rings } = cmd.batch;
    port.use(rings, bytes);
    const total = warmup + iters;
    if (role === "guest-b") post({ type: "ready" }); // before blocking: guest A may start now
    if (kind === "pingpong") {
      const mine = pattern(bytes, role === "guest-a" ? SEED_AB : SEED_BA);
      const theirs = pattern(bytes, role === "guest-a" ? SEED_BA : SEED_AB);
      if (role === "guest-a") {
        let t0 = performance.now();
        for (let i = 1; i <= total; i++) {
          if (i === warmup + 1) t0 = performance.now();
          port.send(mine, bytes, i);
          port.recv(bytes, i);
        }
        const us = Math.max((performance.now() - t0) * 1000, 1e-3);
        port.verify(theirs, bytes, total, "guest A");
        post({ type: "sample", value: us / iters / 2, error: port.error, checked: port.checked });
      } else {
        for (let i = 1; i <= total; i++) {
          port.recv(bytes, i);
          port.send(mine, bytes, i);
        }
        port.verify(theirs, bytes, total, "guest B");
        post({ type: "done", error: port.error, checked: port.checked });
      }
      return;
    }
    // stream (osu_bw): windows of `window` sends, then a 1-byte ack carrying the window's number.
    const data = pattern(bytes, SEED_STREAM);
    const ack = new Uint8Array(1);
    if (role === "guest-a") {
      let seq = 0;
      let t0 = performance.now();
      for (let w = 1; w <= total; w++) {
        if (w === warmup + 1) t0 = performance.now();
        for (let k = 0; k < window; k++) port.send(data, bytes, ++seq);
        port.recv(1, w);
      }
      const us = Math.max((performance.now() - t0) * 1000, 1e-3);
      post({
        type: "sample",
        value: (bytes * window * iters) / us,
        error: port.error,
        checked: port.checked,
      });
    } else {
      let seq = 0;
      for (let w = 1; w <= total; w++) {
        for (let k = 0; k < window; k++) port.recv(bytes, ++seq);
        port.send(ack, 1, w);
      }
      port.verify(data, bytes, seq, "guest B");
      post({ type: "done", error: port.error, checked: port.checked });
    }
  });
}

// ---- NICs -------------------------------------------------------------------------------

/** A frame read off the socket: its length and the chunk pieces that hold its payload. */
interface Frame {
  len: number;
  parts: Buffer[];
}

/** Read buffers a chain NIC keeps for reuse, as many as a MX NIC's links (nic/tcp-link.ts TCP_READ_SPARES). */
const CHAIN_READ_SPARES = 16;

/** Frames held back (rx ring full) beyond which the socket is paused: bounded memory. */
const MAX_HELD_BYTES = 16 * 1024 * 1024;

function nic(role: "nic-a" | "nic-b", corrupt: boolean): void {
  const post = (m: ChainReport) => parentPort!.postMessage(m);
  let sock: Socket | undefined;
  let gen = -1;
  // Placeholders until the first batch brings the host's shared memory.
  let ctrl = new Int32Array(new SharedArrayBuffer(CTRL_WORDS * 4));
  let tx = new Uint8Array(new SharedArrayBuffer(0));
  let rx = new Uint8Array(new SharedArrayBuffer(0));
  let slots = 1;
  let stride = 0;
  let rxProd = 0;
  /** Messages given to the guest so far (the idle poll's budget depends on it, as the MX NIC's). */
  let delivered = 0;
  let running = true;
  let scheduled = false;
  let asleep = false;
  /** A waitAsync on this generation's C_TX_PROD that has not fired yet (it still listens). */
  let waiterPending = false;

  // Socket → frames.
  const held: Frame[] = [];
  let heldBytes = 0;
  let cur: Frame | null = null;
  let curHave = 0;
  const hdr = Buffer.alloc(4);
  let hdrHave = 0;
  // Reads go into buffers used again, as the MX NIC's bulk connection reads (nic/tcp-read-pool.ts);
  // a buffer goes back when no frame part in it waits for the ring any more.
  const pool = new ReadPool(new SpareReadBuffers(CHAIN_READ_SPARES));
  const uses = new Map<ArrayBufferLike, number>();

  const onData = (chunk: Buffer): void => {
    let i = 0;
    while (i < chunk.length) {
      if (cur === null) {
        const n = Math.min(4 - hdrHave, chunk.length - i);
        chunk.copy(hdr, hdrHave, i, i + n);
        hdrHave += n;
        i += n;
        if (hdrHave < 4) break;
        hdrHave = 0;
        cur = { len: hdr.readUInt32LE(0), parts: [] };
        curHave = 0;
      }
      const n = Math.min(cur.len - curHave, chunk.length - i);
      if (n > 0) {
        cur.parts.push(chunk.subarray(i, i + n));
        uses.set(chunk.buffer, (uses.get(chunk.buffer) ?? 0) + 1);
      }
      curHave += n;
      i += n;
      if (curHave === cur.len) {
        held.push(cur);
        heldBytes += cur.len;
        cur = null;
      }
    }
    deliver();
    // A read that left no part waiting (its frames went to the ring, or it held only a prefix) goes back now.
    if (!uses.has(chunk.buffer)) pool.give(chunk);
    if (heldBytes > MAX_HELD_BYTES) sock?.pause();
    kick();
  };

  /** Held frames → the rx ring, while it has room; the guest is woken only if it sleeps. */
  function deliver(): boolean {
    let did = false;
    while (held.length > 0 && rxProd - Atomics.load(ctrl, C_RX_CONS) < slots) {
      const f = held.shift()!;
      heldBytes -= f.len;
      const slot = rxProd % slots;
      let off = slot * stride;
      for (const p of f.parts) {
        copyBytes(rx, off, p, 0, p.length);
        off += p.length;
        const left = (uses.get(p.buffer) ?? 1) - 1;
        if (left > 0) uses.set(p.buffer, left);
        else {
          uses.delete(p.buffer);
          pool.give(p);
        }
      }
      if (corrupt && f.len > 0) rx[slot * stride + (f.len >> 1)] ^= 0xff;
      Atomics.store(ctrl, C_RX_LENS + slot, f.len);
      rxProd++;
      Atomics.store(ctrl, C_RX_PROD, rxProd);
      if (Atomics.load(ctrl, C_GUEST_SLEEPING) !== 0) Atomics.notify(ctrl, C_RX_PROD);
      delivered++;
      did = true;
    }
    if (sock?.isPaused() && heldBytes <= MAX_HELD_BYTES / 2) sock.resume();
    return did;
  }

  /**
   * The guest's tx ring → length-prefixed frames on the socket, without a copy: the socket
   * writes the slot where it lies (a 4-byte prefix beside it), and the slot goes back to the
   * guest (C_TX_CONS) only when the write's callback says the kernel has the bytes, as a NIC
   * frees a tx descriptor on its completion.
   */
  let txSent = 0;
  let txDone = 0;
  /** A write of generation `g` completed (one of an older geometry frees nothing now). */
  const onTxDone = (g: number): void => {
    if (g !== gen) return;
    txDone++;
    Atomics.store(ctrl, C_TX_CONS, txDone);
    if (Atomics.load(ctrl, C_GUEST_SLEEPING) !== 0) Atomics.notify(ctrl, C_TX_CONS);
  };
  function transmit(): boolean {
    if (!sock) return false;
    let did = false;
    const prod = Atomics.load(ctrl, C_TX_PROD);
    if (txSent === prod || sock.writableNeedDrain) return false;
    sock.cork();
    while (txSent !== prod && !sock.writableNeedDrain) {
      const slot = txSent % slots;
      const len = Atomics.load(ctrl, C_TX_LENS + slot);
      const prefix = Buffer.allocUnsafe(4);
      prefix.writeUInt32LE(len, 0);
      sock.write(prefix);
      const g = gen;
      sock.write(Buffer.from(tx.buffer, tx.byteOffset + slot * stride, len), () => onTxDone(g));
      txSent++;
      did = true;
    }
    sock.uncork();
    return did;
  }

  const poll = (): boolean => {
    const a = transmit();
    const b = deliver();
    return a || b;
  };

  /**
   * As the MX NIC (nic.ts runSlice): poll until idle for its budget, then sleep; yield to
   * the event loop every LINKED_SLICE_MS while busy and after every idle round, so that the
   * socket is read while the thread polls. The budget is the MX NIC's longest of each kind: a
   * quiet spell after it gave its guest a message polls POLL_AFTER_EVENTS_MS (the guest's
   * answer comes soon), one after it only sent frames POLL_AFTER_FRAMES_MS.
   */
  let idleSince = -1;
  let budgetMs = POLL_AFTER_EVENTS_MS;
  let deliveredAtQuiet = 0;
  const runSlice = (): void => {
    scheduled = false;
    if (!running) return;
    const start = performance.now();
    for (;;) {
      const did = poll();
      const now = performance.now();
      if (did) idleSince = -1;
      else if (idleSince < 0) {
        idleSince = now;
        budgetMs = delivered !== deliveredAtQuiet ? POLL_AFTER_EVENTS_MS : POLL_AFTER_FRAMES_MS;
        deliveredAtQuiet = delivered;
      } else if (now - idleSince >= budgetMs) break;
      if (now - start >= LINKED_SLICE_MS || !did) {
        scheduled = true;
        setImmediate(runSlice);
        return;
      }
    }
    idleSince = -1;
    sleep();
  };

  function sleep(): void {
    Atomics.store(ctrl, C_NIC_SLEEPING, 1);
    // Listen before the last look: a guest that frees rx room notifies without changing
    // C_TX_PROD, and only a waiter already registered hears that. The waiter compares with
    // the word as it is now, so a socket waiting for 'drain' does not make it fire at once.
    if (!waiterPending) {
      const r = Atomics.waitAsync(ctrl, C_TX_PROD, Atomics.load(ctrl, C_TX_PROD));
      if (r.async) {
        waiterPending = true;
        const g = gen;
        r.value.then(() => {
          if (g === gen) waiterPending = false;
          kick();
        });
      }
    }
    if (!waiterPending || poll()) {
      Atomics.store(ctrl, C_NIC_SLEEPING, 0);
      scheduled = true;
      setImmediate(runSlice);
      return;
    }
    asleep = true;
  }

  function kick(): void {
    if (!running) return;
    idleSince = -1;
    if (asleep) {
      asleep = false;
      Atomics.store(ctrl, C_NIC_SLEEPING, 0);
    }
    if (!scheduled) {
      scheduled = true;
      setImmediate(runSlice);
    }
  }

  const attach = (given: Socket): void => {
    const pooled = adoptPooledReads(given, pool, onData);
    const s = pooled?.socket ?? given;
    sock = s;
    s.setNoDelay(true);
    if (pooled === null) s.on("data", onData);
    else {
      if (pooled.buffered.length > 0) onData(pooled.buffered);
      s.resume();
    }
    s.on("drain", kick);
    s.on("error", (e) => {
      if (running) throw e;
    });
  };

  if (role === "nic-b") {
    const srv = createServer((s) => {
      srv.close();
      attach(s);
      post({ type: "connected" });
    });
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      post({ type: "listening", port: typeof addr === "object" && addr ? addr.port : 0 });
    });
  }

  parentPort!.on("message", (cmd: ChainCommand) => {
    if (cmd.type === "stop") {
      running = false;
      sock?.destroy();
      parentPort!.close();
      return;
    }
    if (cmd.type === "connect") {
      const s = createConnection({ port: cmd.port, host: "127.0.0.1" }, () => {
        attach(s);
        post({ type: "connected" });
      });
      return;
    }
    const r = cmd.batch.rings;
    if (r.gen !== gen) {
      // A new geometry between batches (the chain is quiet): fresh memory, fresh counters.
      gen = r.gen;
      ctrl = new Int32Array(r.ctrl);
      tx = new Uint8Array(r.tx);
      rx = new Uint8Array(r.rx);
      slots = r.slots;
      stride = r.stride;
      txSent = 0;
      txDone = 0;
      rxProd = 0;
      waiterPending = false;
      asleep = false;
    }
    post({ type: "ready" });
    kick();
  });
}

if (parentPort && (workerData as { job?: unknown } | null)?.job === CHAIN_JOB) {
  const job = workerData as ChainJob;
  if (job.role === "guest-a" || job.role === "guest-b") guest(job.role);
  else nic(job.role, job.corrupt === true);
}

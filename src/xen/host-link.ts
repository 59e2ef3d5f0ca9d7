/**
 * The credit window on what a domain sends its host: `guest.send` messages and its stdout and
 * stderr text. They travel as worker messages, and Node queues a worker's messages without
 * bound: a guest printing or sending in a loop grew the host by gigabytes a second until the
 * whole host (every other domain with it) died out of memory. Like a Xen console or XenStore
 * ring, the way to the host now holds a bounded amount: the guest's runtime may have at most
 * WINDOW_UNITS in flight — sent and not yet taken in by the host — and keeps the rest queued in
 * its own memory (bounded by its own heap limit: a flood ends that domain, not the host).
 *
 * One word of a SharedArrayBuffer the hypervisor makes per domain, written by the host only:
 *   TAKEN  units the host has taken in so far (mod 2^32): a `guest.send` message when the
 *          host's listener got it, output text once the domain's stream holds at most
 *          OUTPUT_HELD_MAX bytes unread.
 * A message's cost is MESSAGE_BASE_UNITS plus its size (cloneBytes of what is sent, or its
 * text's length), counted by the guest's runtime (trusted code outside the sandbox) and
 * carried with the message, so both sides count the same.
 */

import type { Readable } from "node:stream";

/** Bytes of a domain's host-link buffer. */
export const HOST_LINK_BYTES = 4;
/** Int32 word: units the host has taken in. */
export const TAKEN = 0;
/** Units a guest may have in flight to its host. */
export const WINDOW_UNITS = 4 << 20;
/** What a message costs besides its bytes (so a flood of empty messages is bounded too). */
export const MESSAGE_BASE_UNITS = 1024;
/** Unread output a domain's stdout or stderr stream may hold before its text stops being taken in. */
export const OUTPUT_HELD_MAX = 1 << 20;
/** How often held output is looked at again (ms). */
const OUTPUT_RECHECK_MS = 10;

/**
 * About how many bytes a worker message carrying `data` copies: strings (2 bytes a unit) and
 * bigints, ArrayBuffers in full, a view its whole buffer (the clone carries it, whatever the
 * view's length; once per buffer), a SharedArrayBuffer 0 (it is shared, not copied), what a
 * clone keeps of an Error (name, message, stack, cause), a RegExp (source, flags) and a boxed
 * primitive; each value and object 8 more. A kind counted by its own length alone let a guest
 * send a 1-byte view of a 1 MiB buffer, or a 1 MiB error message, as 1 KiB past its window.
 * Walk a structured clone (plain data), not the guest's object: a getter could answer the
 * count one size and the message another.
 */
export function cloneBytes(data: unknown): number {
  return cloneCost(data).bytes;
}

/**
 * The values one `guest.send` message may carry at most (each object, string, number … of its
 * clone once). The host's thread decodes a message whole before anyone looks at it, about a
 * quarter of a µs a value, and it serves every domain's hypercalls: a guest sending one array
 * of a million small objects held it a second each time (the window counts bytes, and small
 * values are few bytes). Bytes in bulk — a typed array, a long string — decode at memcpy's speed.
 */
export const MESSAGE_VALUES_MAX = 64 * 1024;

/** cloneBytes' bytes, and how many values the clone holds (what its decoding costs the host). */
export function cloneCost(data: unknown): { bytes: number; values: number } {
  let total = 0;
  let values = 0;
  const seen = new Set<object>();
  const stack: unknown[] = [data];
  while (stack.length > 0) {
    const v = stack.pop();
    total += 8;
    values++;
    if (typeof v === "string") total += v.length * 2;
    else if (typeof v === "bigint") total += (v < 0n ? -v : v).toString(16).length >>> 1;
    else if (typeof v !== "object" || v === null || seen.has(v)) continue;
    else {
      seen.add(v);
      if (v instanceof SharedArrayBuffer) continue;
      if (v instanceof ArrayBuffer) total += v.byteLength;
      else if (ArrayBuffer.isView(v)) stack.push(v.buffer);
      else if (v instanceof Map) for (const [k, x] of v) stack.push(k, x);
      else if (v instanceof Set) for (const x of v) stack.push(x);
      else if (v instanceof Error) stack.push(v.name, v.message, v.stack, (v as { cause?: unknown }).cause);
      else if (v instanceof RegExp) stack.push(v.source, v.flags);
      else if (v instanceof String || v instanceof BigInt || v instanceof Number || v instanceof Boolean)
        stack.push(v.valueOf());
      else for (const k of Object.keys(v)) stack.push(k, (v as Record<string, unknown>)[k]);
    }
  }
  return { bytes: total, values };
}

/** A cost as the host accepts it: the runtime's number when it is one, else the base cost. */
export function validCost(cost: unknown): number {
  return typeof cost === "number" && Number.isInteger(cost) && cost >= 0 && cost <= 0x7fffffff
    ? cost
    : MESSAGE_BASE_UNITS;
}

/** The host's half: takes units in and wakes a guest waiting for room. */
export class HostLinkCredit {
  private readonly words: Int32Array;

  constructor(buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer, 0, 1);
  }

  take(units: number): void {
    if (units <= 0) return;
    Atomics.add(this.words, TAKEN, units | 0);
    Atomics.notify(this.words, TAKEN);
  }
}

/**
 * Gives a domain's output back to its window once its stream holds little unread: a reader
 * that keeps up (a terminal, a launcher's line reader) takes it in at once; one that does not
 * (a slow pipe, a "pipe" stream nobody reads) holds the guest's printing in the guest.
 */
export class OutputCredit {
  private held = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly streams = new Set<Readable>();

  constructor(private readonly credit: HostLinkCredit) {}

  pushed(s: Readable, cost: number): void {
    this.held += cost;
    this.streams.add(s);
    this.check();
  }

  /** The domain's worker is gone: nobody waits for this credit any more. */
  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.streams.clear();
  }

  private check(): void {
    for (const s of this.streams)
      if (!s.readableEnded && !s.destroyed && s.readableLength > OUTPUT_HELD_MAX) {
        this.timer ??= setInterval(() => this.check(), OUTPUT_RECHECK_MS).unref();
        return;
      }
    this.streams.clear();
    clearInterval(this.timer);
    this.timer = undefined;
    this.credit.take(this.held);
    this.held = 0;
  }
}

/**
 * The guest runtime's half: posts while the window has room, queues in order otherwise, and
 * posts the queue as the host takes units in (waiting asynchronously: the guest never blocks
 * in a send or a print). One message larger than the window goes alone, when nothing else is
 * in flight.
 */
export class HostLinkSender {
  private readonly words: Int32Array;
  private sent = 0;
  private readonly queue: { msg: unknown; cost: number }[] = [];
  private waiting = false;
  private readonly idle: (() => void)[] = [];

  constructor(
    buffer: SharedArrayBuffer,
    private readonly post: (msg: unknown) => void,
  ) {
    this.words = new Int32Array(buffer, 0, 1);
  }

  /** Units sent and not yet taken in. */
  get inFlight(): number {
    return (this.sent - Atomics.load(this.words, TAKEN)) | 0;
  }

  send(msg: unknown, cost: number): void {
    this.queue.push({ msg, cost });
    this.pump();
  }

  /** Resolves once every queued message was posted, or after `timeoutMs`. */
  drained(timeoutMs: number): Promise<void> {
    if (this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.idle.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Posts everything still queued, room or not (the domain is ending: a last burst, then nothing). */
  flushAll(): void {
    for (const { msg, cost } of this.queue.splice(0)) {
      this.sent = (this.sent + cost) | 0;
      this.post(msg);
    }
    for (const f of this.idle.splice(0)) f();
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const { msg, cost } = this.queue[0];
      const inFlight = this.inFlight;
      if (inFlight > 0 && inFlight + cost > WINDOW_UNITS) break;
      this.queue.shift();
      this.sent = (this.sent + cost) | 0;
      this.post(msg);
    }
    if (this.queue.length === 0) {
      for (const f of this.idle.splice(0)) f();
      return;
    }
    if (this.waiting) return;
    this.waiting = true;
    const seen = Atomics.load(this.words, TAKEN);
    const w = Atomics.waitAsync(this.words, TAKEN, seen);
    const again = () => {
      this.waiting = false;
      this.pump();
    };
    if (w.async) void w.value.then(again);
    else queueMicrotask(again);
  }
}

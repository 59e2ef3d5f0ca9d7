/**
 * Per-domain counters of hypervisor work, in shared memory so the host can read them at any
 * time without asking the domain. Later parts prove their data path with these numbers
 * (for example: zero grant operations and zero backend requests while messages flow).
 *
 * Each domain has two blocks of float64 counters: one written only by the domain's own
 * thread (operations it executes in place: event-channel sends, privileged grant copies,
 * waits) and one written only by the hypervisor thread (hypercalls it serves on the
 * domain's behalf). One writer per block means plain stores suffice; the host sums both.
 *
 * The hypervisor's block is the proof of what a domain made it do, so a guest must not be
 * able to write it: the hypervisor keeps its own copy in memory no guest ever gets (plain
 * memory of the host's thread) and mirrors each count into the block it shares with the
 * domain, which is only there so that `guest.counters()` reads its own numbers without a
 * hypercall. The host reads the private copy; a guest that forged its mirror fools itself.
 */

export const COUNTER_NAMES = [
  "hypercalls",
  "grant_map",
  "grant_unmap",
  "grant_copy",
  "grant_copy_bytes",
  "grant_errors",
  "evtchn_alloc",
  "evtchn_bind",
  "evtchn_close",
  "evtchn_send",
  "evtchn_kick",
  "evtchn_coalesced",
  "evtchn_dropped",
  "evtchn_wait",
  "evtchn_sleep",
  "xenstore_ops",
  "xenstore_errors",
  "mem_shared_alloc",
  "mem_shared_release",
  "grant_read",
  "xenstore_events_merged",
  /** Another domain's segments handed to the privileged domain for its foreign view (one per foreign_frame that finds one). */
  "foreign_segments",
  /** alloc_unbound calls served with a free binding of the same domains instead of a new one (event-channel.ts). */
  "evtchn_reuse",
] as const;

export type CounterName = (typeof COUNTER_NAMES)[number];
export type CounterSnapshot = Record<CounterName, number>;

export const COUNTER_SLOTS = 32;
const index = new Map<string, number>(COUNTER_NAMES.map((n, i) => [n, i]));

export function counterIndex(name: CounterName): number {
  return index.get(name)!;
}

/** Which block a writer owns. */
export const CounterBlock = { Domain: 0, Hypervisor: 1 } as const;
export type CounterBlock = (typeof CounterBlock)[keyof typeof CounterBlock];

/** Allocates the shared backing for one domain's counters (both blocks). */
export function allocCounterBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(2 * COUNTER_SLOTS * 8);
}

/** A writer's handle on its block. Fields are plain numbers indexed by constant: cheap on hot paths. */
export class CounterWriter {
  readonly slots: Float64Array;
  readonly #mirror: Float64Array | undefined;
  /** With `mirror`, every count also goes to that buffer's block (the copy a domain may read). */
  constructor(buffer: ArrayBufferLike, block: CounterBlock, mirror?: SharedArrayBuffer) {
    this.slots = new Float64Array(buffer, block * COUNTER_SLOTS * 8, COUNTER_SLOTS);
    this.#mirror = mirror && new Float64Array(mirror, block * COUNTER_SLOTS * 8, COUNTER_SLOTS);
  }
  add(name: CounterName, n = 1): void {
    const i = index.get(name)!;
    this.slots[i] += n;
    if (this.#mirror) this.#mirror[i] = this.slots[i];
  }
}

/** The hypervisor's private block (same layout as the shared one, so block offsets agree). */
export function allocPrivateCounterBlock(): ArrayBuffer {
  return new ArrayBuffer(2 * COUNTER_SLOTS * 8);
}

/**
 * Sum of both blocks: what the domain's own block says, plus the hypervisor's block — read
 * from `hypervisorBlock` (the host's private copy) when given, else from the shared buffer
 * (a domain reading its own numbers).
 */
export function readCounters(buffer: SharedArrayBuffer, hypervisorBlock?: ArrayBuffer): CounterSnapshot {
  const own = new Float64Array(buffer, 0, COUNTER_SLOTS);
  const hyp = new Float64Array(hypervisorBlock ?? buffer, COUNTER_SLOTS * 8, COUNTER_SLOTS);
  const out = {} as CounterSnapshot;
  COUNTER_NAMES.forEach((name, i) => {
    out[name] = own[i] + hyp[i];
  });
  return out;
}

/** `after − before`, per counter. */
export function diffCounters(after: CounterSnapshot, before: CounterSnapshot): CounterSnapshot {
  const out = {} as CounterSnapshot;
  for (const name of COUNTER_NAMES) out[name] = after[name] - before[name];
  return out;
}

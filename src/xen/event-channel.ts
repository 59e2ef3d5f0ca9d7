/**
 * Event channels (xen/include/public/event_channel.h): alloc_unbound, bind_interdomain,
 * send, close, mask/unmask, with pending bits and edge coalescing.
 *
 * Each interdomain binding owns a tiny SharedArrayBuffer shared by exactly its two ends:
 * per end a pending word and a mask word, plus the binding's state. A send sets the peer's
 * pending word; only a 0→1 edge on an unmasked port *kicks* (Atomics.notify), so repeated
 * sends coalesce and a masked port costs the sender one atomic exchange. A waiter spins on
 * its own pending word, then unmasks and sleeps on it. Because the words belong to the pair,
 * a domain can disturb only channels it is an end of, never another domain's channels.
 *
 * The hypervisor's port table (`EventChannelTable`) lives in the hypervisor thread; the
 * guest's side (`GuestEventChannels`) executes send and wait in place, as Xen's guests do
 * with the shared_info bitmaps.
 */
import {
  type DomId,
  type Errno,
  EVTCHN_MAX_PORTS,
  EVTCHNSTAT,
  type EvtchnPort,
  type EvtchnStat,
} from "./abi.js";
import { type CounterWriter, counterIndex } from "./counters.js";
import { adaptiveWait, DEFAULT_SPIN_US } from "./wait.js";

/**
 * Binding layout (Int32Array indices). Each end's pending and mask words sit on their own
 * 128-byte block (two cache lines, beyond the adjacent-line prefetcher), and the state word
 * on a third: a spinning waiter then reads a line only its peer's send writes, and the
 * read-mostly state line stays shared by both cores.
 */
const END_STRIDE = 32;
const STATE = 2 * END_STRIDE;
const BINDING_WORDS = 3 * END_STRIDE;
const PEND = (end: number) => end * END_STRIDE;
const MASK = (end: number) => end * END_STRIDE + 1;
const BOUND = 1;
const UNBOUND = 0;
/** Pending value a close leaves on an idle end: wakes its waiter without posing as an event. */
const CLOSE_WAKE = 2;

const SEND = counterIndex("evtchn_send");
const KICK = counterIndex("evtchn_kick");
const COALESCED = counterIndex("evtchn_coalesced");
const DROPPED = counterIndex("evtchn_dropped");
const WAIT = counterIndex("evtchn_wait");
const SLEEP = counterIndex("evtchn_sleep");

export type WaitResult = "event" | "timeout" | "unbound";

export class HypercallError extends Error {
  constructor(
    readonly errno: keyof typeof Errno,
    message: string,
  ) {
    super(`${errno}: ${message}`);
    this.name = "HypercallError";
  }
}

// ---- hypervisor side ----------------------------------------------------------------------

interface PortEntry {
  state: "unbound" | "interdomain";
  /** For unbound: the only domain allowed to bind. For interdomain: the peer. */
  remoteDom: DomId;
  remotePort: EvtchnPort;
  binding: SharedArrayBuffer;
  end: 0 | 1;
}

export interface PortGrant {
  port: EvtchnPort;
  binding: SharedArrayBuffer;
  end: 0 | 1;
}

/** The hypervisor's port table for all domains. */
export class EventChannelTable {
  private readonly domains = new Map<DomId, Map<EvtchnPort, PortEntry>>();

  constructor(private readonly domainExists: (d: DomId) => boolean) {}

  addDomain(d: DomId): void {
    this.domains.set(d, new Map());
  }

  /**
   * Adds to `into` each of `ids` that a port of domain `d` names (unbound and waiting for it,
   * or bound to it), until `into` holds `max`.
   */
  collectNamed(d: DomId, ids: ReadonlySet<DomId>, into: Set<DomId>, max = Number.POSITIVE_INFINITY): void {
    const ports = this.domains.get(d);
    if (!ports) return;
    for (const e of ports.values()) {
      if (into.size >= max) return;
      if (ids.has(e.remoteDom)) into.add(e.remoteDom);
    }
  }

  private portsOf(d: DomId): Map<EvtchnPort, PortEntry> {
    const ports = this.domains.get(d);
    if (!ports) throw new HypercallError("ESRCH", `domain ${d} does not exist`);
    return ports;
  }

  private freePort(ports: Map<EvtchnPort, PortEntry>): EvtchnPort {
    // Port 0 is never used, as in Xen.
    for (let p = 1; p < EVTCHN_MAX_PORTS; p++) if (!ports.has(p)) return p;
    throw new HypercallError(
      "ENOSPC",
      `all ${EVTCHN_MAX_PORTS - 1} event-channel ports are in use; close some`,
    );
  }

  allocUnbound(d: DomId, remoteDom: DomId): PortGrant {
    const ports = this.portsOf(d);
    if (!Number.isInteger(remoteDom) || !this.domainExists(remoteDom))
      throw new HypercallError("ESRCH", `alloc_unbound: remote domain ${String(remoteDom)} does not exist`);
    const port = this.freePort(ports);
    // A new binding each time, never taken back: a guest that closes its ports and keeps the
    // bindings pins ~0.75 KiB of host memory each (384 bytes and the store's bookkeeping), which
    // its buffer meter does not see. It is bounded only through its heap limit: each binding
    // it keeps is an object on its own heap (a guest with maxHeapMb 32 kept ~220,000, +180 MiB
    // of host RSS, before it was stopped). Reusing a closed binding for later channels of the
    // same pair of domains would bound it by ports instead; not done yet.
    const binding = new SharedArrayBuffer(BINDING_WORDS * 4);
    ports.set(port, { state: "unbound", remoteDom, remotePort: 0, binding, end: 0 });
    return { port, binding, end: 0 };
  }

  bindInterdomain(d: DomId, remoteDom: DomId, remotePort: EvtchnPort): PortGrant {
    const ports = this.portsOf(d);
    if (!Number.isInteger(remoteDom) || !this.domainExists(remoteDom))
      throw new HypercallError(
        "ESRCH",
        `bind_interdomain: remote domain ${String(remoteDom)} does not exist`,
      );
    const remote = this.domains.get(remoteDom)?.get(remotePort);
    if (!remote)
      throw new HypercallError(
        "EINVAL",
        `bind_interdomain: domain ${remoteDom} has no port ${String(remotePort)}`,
      );
    if (remote.state !== "unbound" || remote.remoteDom !== d)
      throw new HypercallError(
        "EINVAL",
        `bind_interdomain: port ${remotePort} of domain ${remoteDom} is not waiting for domain ${d}` +
          (remote.state === "interdomain"
            ? " (it is already bound)"
            : ` (it waits for domain ${remote.remoteDom})`),
      );
    const port = this.freePort(ports);
    const end = (1 - remote.end) as 0 | 1;
    const w = new Int32Array(remote.binding);
    Atomics.store(w, PEND(end), 0);
    Atomics.store(w, MASK(end), 0);
    ports.set(port, { state: "interdomain", remoteDom, remotePort, binding: remote.binding, end });
    remote.state = "interdomain";
    remote.remotePort = port;
    Atomics.store(w, STATE, BOUND);
    return { port, binding: remote.binding, end };
  }

  /** Closes a port. The peer's end goes back to unbound (waiting for this domain) and is woken. */
  close(d: DomId, port: EvtchnPort): void {
    const ports = this.portsOf(d);
    const entry = ports.get(port);
    if (!entry) throw new HypercallError("EINVAL", `close: domain ${d} has no port ${String(port)}`);
    ports.delete(port);
    const w = new Int32Array(entry.binding);
    if (entry.state === "interdomain") {
      const remote = this.domains.get(entry.remoteDom)?.get(entry.remotePort);
      if (remote) {
        remote.state = "unbound";
        remote.remoteDom = d;
        remote.remotePort = 0;
      }
    }
    Atomics.store(w, STATE, UNBOUND);
    // Wake both ends so nobody sleeps on a channel that no longer connects anywhere.
    for (const end of [0, 1]) {
      // A pending event stays an event (1); an idle end gets the close wake (CLOSE_WAKE).
      Atomics.compareExchange(w, PEND(end), 0, CLOSE_WAKE);
      Atomics.notify(w, PEND(end));
    }
  }

  /** Closes every port of a domain (domain destruction). Returns how many were closed. */
  closeAll(d: DomId): number {
    const ports = this.domains.get(d);
    if (!ports) return 0;
    const list = [...ports.keys()];
    for (const p of list) this.close(d, p);
    this.domains.delete(d);
    return list.length;
  }

  status(d: DomId, port: EvtchnPort): { status: EvtchnStat; remoteDom?: DomId; remotePort?: EvtchnPort } {
    const entry = this.portsOf(d).get(port);
    if (!entry) return { status: EVTCHNSTAT.closed };
    if (entry.state === "unbound") return { status: EVTCHNSTAT.unbound, remoteDom: entry.remoteDom };
    return { status: EVTCHNSTAT.interdomain, remoteDom: entry.remoteDom, remotePort: entry.remotePort };
  }

  portCount(d: DomId): number {
    return this.domains.get(d)?.size ?? 0;
  }
}

// ---- guest side ---------------------------------------------------------------------------

/**
 * One local port: the binding words and this end's indices, resolved once so that notify
 * and wait allocate nothing and look nothing up.
 */
export class EventChannelPort {
  readonly words: Int32Array;
  private readonly myPend: number;
  private readonly myMask: number;
  private readonly peerPend: number;
  private readonly peerMask: number;
  /** The domain's own counter block: #private, so guest code holding a port cannot reach it. */
  readonly #slots: Float64Array;

  constructor(
    readonly port: EvtchnPort,
    binding: SharedArrayBuffer,
    end: 0 | 1,
    counters: CounterWriter,
  ) {
    this.#slots = counters.slots;
    this.words = new Int32Array(binding);
    this.myPend = PEND(end);
    this.myMask = MASK(end);
    this.peerPend = PEND(1 - end);
    this.peerMask = MASK(1 - end);
  }

  /** Runs just before a wait blocks: unmask so the peer kicks us; refuse to sleep if an event slipped in. */
  private readonly armForSleep = (): boolean => {
    this.armed = true;
    if (this.unmask()) return false;
    this.#slots[SLEEP]++;
    return true;
  };
  private armed = false;

  get bound(): boolean {
    return Atomics.load(this.words, STATE) === BOUND;
  }

  /** evtchn_send: set the peer's pending bit; kick it only on a 0→1 edge of an unmasked port. */
  notify(): void {
    const w = this.words;
    const c = this.#slots;
    c[SEND]++;
    if (Atomics.load(w, STATE) !== BOUND) {
      c[DROPPED]++;
      return;
    }
    if (Atomics.exchange(w, this.peerPend, 1) !== 0) {
      c[COALESCED]++;
      return;
    }
    if (Atomics.load(w, this.peerMask) !== 0) return;
    c[KICK]++;
    Atomics.notify(w, this.peerPend, 1);
  }

  isPending(): boolean {
    return Atomics.load(this.words, this.myPend) !== 0;
  }

  /** Clears this end's pending bit; returns whether it was set. */
  consume(): boolean {
    return Atomics.exchange(this.words, this.myPend, 0) !== 0;
  }

  /** Consumes and classifies: an event sent before a close is still delivered as an event. */
  private take(): WaitResult | undefined {
    const v = Atomics.exchange(this.words, this.myPend, 0);
    if (v === 1) return "event";
    if (v !== 0 || !this.bound) return this.bound ? "event" : "unbound";
    return undefined;
  }

  mask(): void {
    Atomics.store(this.words, this.myMask, 1);
  }

  /** Unmasks; returns whether an event is pending (an edge that came while masked was not kicked). */
  unmask(): boolean {
    Atomics.store(this.words, this.myMask, 0);
    return Atomics.load(this.words, this.myPend) !== 0;
  }

  get masked(): boolean {
    return Atomics.load(this.words, this.myMask) !== 0;
  }

  /**
   * Blocks until an event arrives (and consumes it), spinning `spinUs` first. A masked port
   * is unmasked only for the sleep and masked again after, so a peer kicks only when this
   * side really sleeps.
   */
  wait(timeoutMs = Number.POSITIVE_INFINITY, spinUs = DEFAULT_SPIN_US): WaitResult {
    const c = this.#slots;
    c[WAIT]++;
    if (!this.bound && !this.isPending()) return "unbound";
    const wasMasked = this.masked;
    this.armed = false;
    const outcome = adaptiveWait(this.words, this.myPend, 0, spinUs, timeoutMs, this.armForSleep);
    // Re-mask only if the wait unmasked: a wait satisfied while spinning writes nothing.
    if (wasMasked && this.armed) this.mask();
    if (outcome === "timed-out") return "timeout";
    return this.take() ?? "event";
  }

  /** Event-loop variant: resolves when an event arrives (consumed), without blocking the thread. */
  async waitAsync(timeoutMs = Number.POSITIVE_INFINITY): Promise<WaitResult> {
    const c = this.#slots;
    c[WAIT]++;
    for (;;) {
      const got = this.take();
      if (got) return got;
      const wasMasked = this.masked;
      if (this.unmask()) {
        if (wasMasked) this.mask();
        continue;
      }
      c[SLEEP]++;
      const r = Atomics.waitAsync(this.words, this.myPend, 0, timeoutMs);
      const res = r.async ? await r.value : r.value;
      if (wasMasked) this.mask();
      if (res === "timed-out" && !this.isPending()) return "timeout";
    }
  }
}

/** What the guest side needs from its hypercall channel. */
export interface EvtchnHypercalls {
  allocUnbound(remoteDom: DomId): PortGrant;
  bindInterdomain(remoteDom: DomId, remotePort: EvtchnPort): PortGrant;
  close(port: EvtchnPort): void;
  status(port: EvtchnPort): { status: EvtchnStat; remoteDom?: DomId; remotePort?: EvtchnPort };
}

/** A domain's event channels. */
export class GuestEventChannels {
  private readonly ports = new Map<EvtchnPort, EventChannelPort>();
  readonly #counters: CounterWriter;

  constructor(
    private readonly hc: EvtchnHypercalls,
    counters: CounterWriter,
  ) {
    this.#counters = counters;
  }

  /** Allocates a port that `remoteDom` may bind to (advertise it through XenStore). */
  allocUnbound(remoteDom: DomId): EvtchnPort {
    const g = this.hc.allocUnbound(remoteDom);
    this.ports.set(g.port, new EventChannelPort(g.port, g.binding, g.end, this.#counters));
    return g.port;
  }

  /** Binds to a port `remoteDom` allocated for us. */
  bindInterdomain(remoteDom: DomId, remotePort: EvtchnPort): EvtchnPort {
    const g = this.hc.bindInterdomain(remoteDom, remotePort);
    this.ports.set(g.port, new EventChannelPort(g.port, g.binding, g.end, this.#counters));
    return g.port;
  }

  /** The port's handle, for hot paths (notify/wait with no lookup). */
  port(port: EvtchnPort): EventChannelPort {
    const p = this.ports.get(port);
    if (!p) throw new HypercallError("EINVAL", `this domain has no event-channel port ${String(port)}`);
    return p;
  }

  notify(port: EvtchnPort): void {
    this.port(port).notify();
  }

  wait(port: EvtchnPort, timeoutMs?: number, spinUs?: number): WaitResult {
    return this.port(port).wait(timeoutMs, spinUs);
  }

  waitAsync(port: EvtchnPort, timeoutMs?: number): Promise<WaitResult> {
    return this.port(port).waitAsync(timeoutMs);
  }

  mask(port: EvtchnPort): void {
    this.port(port).mask();
  }

  unmask(port: EvtchnPort): boolean {
    return this.port(port).unmask();
  }

  close(port: EvtchnPort): void {
    this.port(port);
    this.hc.close(port);
    this.ports.delete(port);
  }

  status(port: EvtchnPort): { status: EvtchnStat; remoteDom?: DomId; remotePort?: EvtchnPort } {
    return this.hc.status(port);
  }
}

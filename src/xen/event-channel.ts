/**
 * Event channels (xen/include/public/event_channel.h): alloc_unbound, bind_interdomain,
 * send, close, mask/unmask, with pending bits and edge coalescing.
 *
 * Each interdomain binding owns a tiny SharedArrayBuffer shared by exactly its two ends:
 * per end a pending word and a mask word, plus the binding's state. A send sets the peer's
 * pending word; only a 0→1 edge on an unmasked port *kicks* (Atomics.notify), so repeated
 * sends coalesce and a masked port costs the sender one atomic exchange. A waiter spins on
 * its own pending word, then unmasks and sleeps on it. Because the words belong to the pair,
 * a domain can disturb only channels it is an end of, never another domain's channels. A
 * closed channel's binding is reused only for channels of the same domains (see `pools`).
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
/**
 * The state word: the binding's generation (bumped each time a free binding is handed to a
 * new channel) times two, plus 1 while both ends are bound. A port remembers the generation it
 * was handed, so a port object its domain kept after closing it never acts on the channel
 * that reuses its binding: its sends are dropped, its waits return "unbound".
 */
const BOUND = 1;
const UNBOUND = 0;
const GEN_MASK = 0x3fff_ffff;
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
  binding: Binding;
  end: 0 | 1;
}

/** A binding's buffer and who has had it. */
interface Binding {
  readonly buffer: SharedArrayBuffer;
  readonly words: Int32Array;
  /**
   * Incarnations (`EventChannelTable.incarnation`, never reused, unlike domain ids) of every
   * domain ever handed this buffer: the allocating domain, and the domain that bound it.
   * Sorted; one or two (only the port's `remoteDom` may bind, and a close leaves the other
   * end waiting for the closer, so nobody else ever gets it).
   */
  holders: number[];
  /** Ports (of any domain) that refer to it; at 0 it is free. */
  refs: number;
  /** Its generation: which channel it is on (the state word's upper bits). */
  gen: number;
}

export interface PortGrant {
  port: EvtchnPort;
  binding: SharedArrayBuffer;
  end: 0 | 1;
  /** The binding's generation (see BOUND). */
  gen: number;
}

/** The hypervisor's port table for all domains. */
export class EventChannelTable {
  private readonly domains = new Map<DomId, Map<EvtchnPort, PortEntry>>();
  /** Each live domain's incarnation: a number never given to another domain, even one that reuses its id. */
  private readonly incarnation = new Map<DomId, number>();
  private readonly liveIncarnations = new Set<number>();
  private nextIncarnation = 1;
  /**
   * Free bindings, by holder set (`poolKey`). The rule: a free binding (no port of any domain
   * refers to it) is handed again only to a channel whose two domains include every domain
   * that ever held it, so no domain ever gets a buffer another domain could reach, exactly as
   * with a fresh one. allocUnbound(d, r) takes from pool {d, r}, then pool {d} (one pool when
   * r = d), and makes a new binding only when both are empty.
   *
   * Bound: a binding is made with holders {d} only when pool {d} is empty, so pool {d} never
   * holds more than the most ports d had open at once; a binding gets holders {d, r} only if it
   * was taken while pool {d, r} was empty, so pool {d, r} never holds more than the most
   * channels (bound or waiting) d and r had open with each other at once. Both are at most
   * EVTCHN_MAX_PORTS - 1 (4,095 bindings, ~3 MiB of host memory): however long a domain
   * loops alloc_unbound + close, it pins at most that many per pool it is in.
   *
   * Death: a binding one of whose holders was destroyed is never pooled again, and the pools
   * naming that domain are dropped with it (only the survivor's references keep them; a
   * survivor that keeps them pins at most the bound above per partner that died, and partners
   * are created by the host, not by guests). They are not handed to the survivor's channels
   * with third domains: the dead domain's thread runs on for a moment after destruction
   * (stopDomain terminates it ~50 ms later) and can write any word of them, state and masks as
   * well as pending bits, so it could silence the third domain's channel.
   */
  private readonly pools = new Map<string, Binding[]>();
  /** Bindings ever made, and free ones handed again (both for the whole table; tests read them). */
  readonly stats = { made: 0, reused: 0 };

  constructor(private readonly domainExists: (d: DomId) => boolean) {}

  addDomain(d: DomId): void {
    this.domains.set(d, new Map());
    const inc = this.nextIncarnation++;
    this.incarnation.set(d, inc);
    this.liveIncarnations.add(inc);
  }

  /** How many free bindings the pools hold (all holder sets together). */
  pooledBindings(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.length;
    return n;
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
    const binding = this.takeBinding(d, remoteDom);
    ports.set(port, { state: "unbound", remoteDom, remotePort: 0, binding, end: 0 });
    return { port, binding: binding.buffer, end: 0, gen: binding.gen };
  }

  /** A free binding whose holders are all among {d, r} (see `pools`), reset as a fresh one; or a new one. */
  private takeBinding(d: DomId, r: DomId): Binding {
    const di = this.incarnation.get(d)!;
    const ri = this.incarnation.get(r);
    if (ri === undefined)
      throw new HypercallError("ESRCH", `alloc_unbound: remote domain ${r} is being destroyed`);
    const pairKey = poolKey([di, ri]);
    const ownKey = poolKey([di]);
    let key = pairKey;
    let b = this.pools.get(pairKey)?.pop();
    if (!b && pairKey !== ownKey) b = this.pools.get((key = ownKey))?.pop();
    if (!b) {
      this.stats.made++;
      const buffer = new SharedArrayBuffer(BINDING_WORDS * 4);
      return { buffer, words: new Int32Array(buffer), holders: [di], refs: 1, gen: 0 };
    }
    if (this.pools.get(key)?.length === 0) this.pools.delete(key);
    this.stats.reused++;
    // As a fresh binding: unbound, nothing pending, both ends unmasked, on a new generation.
    // (Its other words were only ever written by its holders, who are ends of the new channel.)
    // A waiter still asleep on a closed port of it is woken: it sees the new generation and leaves.
    const w = b.words;
    b.gen = (b.gen + 1) & GEN_MASK;
    Atomics.store(w, STATE, (b.gen << 1) | UNBOUND);
    for (const end of [0, 1]) {
      Atomics.store(w, PEND(end), 0);
      Atomics.store(w, MASK(end), 0);
      Atomics.notify(w, PEND(end));
    }
    b.refs = 1;
    return b;
  }

  /** A port let go of `b`: when none refers to it any more it is free, pooled by its holders if they all live. */
  private releaseBinding(b: Binding): void {
    if (--b.refs > 0) return;
    if (!b.holders.every((h) => this.liveIncarnations.has(h))) return;
    const key = poolKey(b.holders);
    let pool = this.pools.get(key);
    if (!pool) this.pools.set(key, (pool = []));
    // Never reached (see `pools` for the bound); a guard, so the bound holds whatever happens.
    if (pool.length < EVTCHN_MAX_PORTS) pool.push(b);
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
    const b = remote.binding;
    const w = b.words;
    Atomics.store(w, PEND(end), 0);
    Atomics.store(w, MASK(end), 0);
    ports.set(port, { state: "interdomain", remoteDom, remotePort, binding: b, end });
    b.refs++;
    const inc = this.incarnation.get(d)!;
    if (!b.holders.includes(inc)) b.holders = [...b.holders, inc].sort((x, y) => x - y);
    remote.state = "interdomain";
    remote.remotePort = port;
    Atomics.store(w, STATE, (b.gen << 1) | BOUND);
    return { port, binding: b.buffer, end, gen: b.gen };
  }

  /** Closes a port. The peer's end goes back to unbound (waiting for this domain) and is woken. */
  close(d: DomId, port: EvtchnPort): void {
    const ports = this.portsOf(d);
    const entry = ports.get(port);
    if (!entry) throw new HypercallError("EINVAL", `close: domain ${d} has no port ${String(port)}`);
    ports.delete(port);
    const w = entry.binding.words;
    if (entry.state === "interdomain") {
      const remote = this.domains.get(entry.remoteDom)?.get(entry.remotePort);
      if (remote) {
        remote.state = "unbound";
        remote.remoteDom = d;
        remote.remotePort = 0;
      }
    }
    Atomics.store(w, STATE, (entry.binding.gen << 1) | UNBOUND);
    // Wake both ends so nobody sleeps on a channel that no longer connects anywhere.
    for (const end of [0, 1]) {
      // A pending event stays an event (1); an idle end gets the close wake (CLOSE_WAKE).
      Atomics.compareExchange(w, PEND(end), 0, CLOSE_WAKE);
      Atomics.notify(w, PEND(end));
    }
    this.releaseBinding(entry.binding);
  }

  /** Closes every port of a domain (domain destruction). Returns how many were closed. */
  closeAll(d: DomId): number {
    const ports = this.domains.get(d);
    if (!ports) return 0;
    // It is no longer live first, so the bindings its ports free are dropped, not pooled.
    const inc = this.incarnation.get(d)!;
    this.liveIncarnations.delete(inc);
    this.incarnation.delete(d);
    for (const key of [...this.pools.keys()]) if (poolKey.names(key, inc)) this.pools.delete(key);
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

/** A pool's key: its holder incarnations, sorted (one, or two different ones). */
function poolKey(holders: readonly number[]): string {
  const [a, b] = holders;
  return b === undefined || a === b ? `${a}` : a < b ? `${a}:${b}` : `${b}:${a}`;
}
/** Whether pool `key` names incarnation `inc`. */
poolKey.names = (key: string, inc: number): boolean => key.split(":").includes(String(inc));

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
  /** The binding's generation this port was handed, and the state word while it is bound. */
  private readonly gen: number;
  private readonly boundState: number;
  /** The domain's own counter block: #private, so guest code holding a port cannot reach it. */
  readonly #slots: Float64Array;

  constructor(
    readonly port: EvtchnPort,
    binding: SharedArrayBuffer,
    end: 0 | 1,
    counters: CounterWriter,
    gen = 0,
  ) {
    this.#slots = counters.slots;
    this.gen = gen & GEN_MASK;
    this.boundState = (this.gen << 1) | BOUND;
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
    return Atomics.load(this.words, STATE) === this.boundState;
  }

  /** Whether the binding has gone to a new channel since this port was closed: nothing here is ours. */
  private get stale(): boolean {
    return Atomics.load(this.words, STATE) >>> 1 !== this.gen;
  }

  /** evtchn_send: set the peer's pending bit; kick it only on a 0→1 edge of an unmasked port. */
  notify(): void {
    const w = this.words;
    const c = this.#slots;
    c[SEND]++;
    if (Atomics.load(w, STATE) !== this.boundState) {
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
    return !this.stale && this.giveBack(Atomics.exchange(this.words, this.myPend, 0)) !== 0;
  }

  /**
   * `v`, just taken from this end's pending word, if the port is still on its channel; if the
   * binding went to a new channel meanwhile, `v` was that channel's: it is put back and its
   * wake passed on, and 0 is returned.
   */
  private giveBack(v: number): number {
    if (v === 0 || !this.stale) return v;
    Atomics.compareExchange(this.words, this.myPend, 0, 1);
    Atomics.notify(this.words, this.myPend, 1);
    return 0;
  }

  /** Consumes and classifies: an event sent before a close is still delivered as an event. */
  private take(): WaitResult | undefined {
    if (this.stale) return "unbound";
    const v = this.giveBack(Atomics.exchange(this.words, this.myPend, 0));
    if (v === 1) return "event";
    if (v !== 0 || !this.bound) return this.bound ? "event" : "unbound";
    return undefined;
  }

  mask(): void {
    if (!this.stale) Atomics.store(this.words, this.myMask, 1);
  }

  /**
   * Unmasks; returns whether an event is pending (an edge that came while masked was not
   * kicked), or the port is stale (so a waiter looks again and sees it unbound).
   */
  unmask(): boolean {
    if (this.stale) return true;
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
    if (!this.bound && (this.stale || !this.isPending())) return "unbound";
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
    this.ports.set(g.port, new EventChannelPort(g.port, g.binding, g.end, this.#counters, g.gen));
    return g.port;
  }

  /** Binds to a port `remoteDom` allocated for us. */
  bindInterdomain(remoteDom: DomId, remotePort: EvtchnPort): EvtchnPort {
    const g = this.hc.bindInterdomain(remoteDom, remotePort);
    this.ports.set(g.port, new EventChannelPort(g.port, g.binding, g.end, this.#counters, g.gen));
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

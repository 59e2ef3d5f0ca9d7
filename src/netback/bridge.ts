/**
 * The driver domain's software bridge (what xenbr0 is in a Xen host): ports are the guests'
 * vifs and the uplink to the NIC's Ethernet port. It learns which port a MAC lives behind
 * from source addresses, forgets entries not refreshed within the ageing time (300 s by
 * default, as Linux's bridge), sends unicast to the learned port only and floods broadcast,
 * multicast and unknown unicast to every port but the one the frame came in on. A frame never
 * goes back out of its ingress port. netback may steer a frame to one port itself (sendTo:
 * MX over Ethernet goes to the owner of the endpoint it names, mx-steer.ts).
 *
 * Storm control (as a switch's per-port broadcast limit): what one port floods is metered by
 * a token bucket (floodRate frames a second, floodBurst at once); beyond it the flood is
 * dropped and counted. Every copy of a flood lands in every other guest's rx ring, so one
 * guest flooding at full speed filled them all; MX over Ethernet is steered, not flooded, and
 * nothing else a guest here says needs more. A port has a bucket of its own unless its owner
 * hands addPort one that outlives the port: netback gives all of a domain's vifs one, kept
 * while the domain has a vif (vif.ts), so a guest re-opening its vif gets no fresh burst.
 *
 * The MAC table is an open-addressing hash table over typed arrays (MAC = 16 + 32 bits), so
 * forwarding a frame allocates nothing. The clock is injectable so ageing can be tested.
 */

/** A frame as the bridge sees it: `data` holds at least `len` bytes; valid only during the call. */
export interface BridgeFrame {
  readonly data: Uint8Array;
  readonly len: number;
  /** A view of exactly the frame's bytes (cached by its owner, so no allocation per frame). */
  view(): Uint8Array;
}

/** One port of the bridge (a vif, the uplink, or a test double). */
export interface BridgePort {
  readonly name: string;
  /** Sends `frame` out of this port (copies it); false = dropped (no room, port gone). */
  transmit(frame: BridgeFrame): boolean;
}

export interface BridgeCounters {
  /** Destination lookups (one per unicast frame). */
  lookups: number;
  /** Lookups that found a live entry. */
  hits: number;
  /** Frames flooded (broadcast, multicast, or unknown / aged-out unicast). */
  floods: number;
  /** Entries created or moved to another port. */
  learned: number;
  /** Entries removed because they were not refreshed within the ageing time. */
  aged: number;
  /** Frames (or copies of a flood) not delivered: back to the ingress port, or refused by a port. */
  drops: number;
  /** Floods dropped whole because their ingress port was over its flood rate (storm control). */
  floodsLimited: number;
}

export interface BridgeOptions {
  /** Entries not refreshed for this long are forgotten (ms; default 300 000). */
  ageingMs?: number;
  /** Most MAC entries kept; new MACs beyond it are not learned (their frames flood). Default 4096. */
  maxEntries?: number;
  /** Frames a second one port may flood (broadcast, multicast, unknown unicast). Default 1000. */
  floodRate?: number;
  /** Frames one port may flood at once, before its rate applies. Default 256. */
  floodBurst?: number;
  /** Milliseconds now; injectable for tests. Default performance.now. */
  now?: () => number;
}

/** A flood token bucket: the floods its port(s) may still send, as worked out at `at` (ms). */
export interface FloodBucket {
  tokens: number;
  at: number;
}

export const DEFAULT_AGEING_MS = 300_000;
export const DEFAULT_FLOOD_RATE = 1000;
export const DEFAULT_FLOOD_BURST = 256;
const EMPTY = -1;

function hash(hi: number, lo: number): number {
  let h = Math.imul(lo ^ (hi << 16) ^ hi, 0x9e3779b1);
  h ^= h >>> 15;
  return Math.imul(h, 0x85ebca6b) ^ (h >>> 13);
}

export class Bridge {
  readonly ageingMs: number;
  readonly maxEntries: number;
  readonly floodRate: number;
  readonly floodBurst: number;
  readonly counters: BridgeCounters = {
    lookups: 0,
    hits: 0,
    floods: 0,
    learned: 0,
    aged: 0,
    drops: 0,
    floodsLimited: 0,
  };
  private readonly now: () => number;
  private readonly ports: (BridgePort | undefined)[] = [];
  /** Per port: its flood bucket (shared by ports given the same one). */
  private readonly floodOf: (FloodBucket | undefined)[] = [];
  private portCount = 0;
  // The MAC table: parallel arrays, linear probing, backward-shift deletion (no tombstones).
  private readonly mask: number;
  private readonly keyHi: Int32Array;
  private readonly keyLo: Int32Array;
  private readonly entryPort: Int32Array;
  private readonly seen: Float64Array;
  private entries = 0;
  private lastSweep: number;

  constructor(opts: BridgeOptions = {}) {
    const ageing = opts.ageingMs ?? DEFAULT_AGEING_MS;
    if (!(typeof ageing === "number" && ageing > 0 && Number.isFinite(ageing)))
      throw new RangeError(
        `bridge ageingMs must be a positive number of milliseconds, got ${String(ageing)}`,
      );
    const max = opts.maxEntries ?? 4096;
    if (!Number.isInteger(max) || max < 1 || max > 1 << 20)
      throw new RangeError(`bridge maxEntries must be an integer in 1..${1 << 20}, got ${String(max)}`);
    const rate = opts.floodRate ?? DEFAULT_FLOOD_RATE;
    const burst = opts.floodBurst ?? DEFAULT_FLOOD_BURST;
    if (!(typeof rate === "number" && rate > 0 && Number.isFinite(rate)))
      throw new RangeError(
        `bridge floodRate must be a positive number of frames a second, got ${String(rate)}`,
      );
    if (!Number.isInteger(burst) || burst < 1)
      throw new RangeError(`bridge floodBurst must be a positive integer, got ${String(burst)}`);
    this.ageingMs = ageing;
    this.maxEntries = max;
    this.floodRate = rate;
    this.floodBurst = burst;
    this.now = opts.now ?? (() => performance.now());
    // Load factor ≤ 1/2 keeps probe sequences short.
    let cap = 16;
    while (cap < 2 * max) cap <<= 1;
    this.mask = cap - 1;
    this.keyHi = new Int32Array(cap).fill(EMPTY);
    this.keyLo = new Int32Array(cap);
    this.entryPort = new Int32Array(cap);
    this.seen = new Float64Array(cap);
    this.lastSweep = this.now();
  }

  /** A full flood bucket, for addPort. */
  floodBucket(): FloodBucket {
    return { tokens: this.floodBurst, at: this.now() };
  }

  /**
   * Adds a port; returns its number. Its floods are metered by `flood` (a full bucket of its
   * own by default); the caller keeps a bucket it passes for as long as it means to meter.
   */
  addPort(port: BridgePort, flood: FloodBucket = this.floodBucket()): number {
    let id = this.ports.indexOf(undefined);
    if (id < 0) id = this.ports.push(undefined) - 1;
    this.ports[id] = port;
    this.portCount++;
    this.floodOf[id] = flood;
    return id;
  }

  /** Removes a port and forgets every MAC learned on it. */
  removePort(id: number): void {
    if (this.ports[id] === undefined) return;
    this.ports[id] = undefined;
    this.floodOf[id] = undefined;
    this.portCount--;
    for (let i = 0; i <= this.mask; i++) {
      while (this.keyHi[i] !== EMPTY && this.entryPort[i] === id) this.deleteAt(i);
    }
  }

  get portsInUse(): number {
    return this.portCount;
  }

  get size(): number {
    return this.entries;
  }

  /** The port `mac` (6 bytes at `offset`) was learned on, if its entry is live. */
  portOf(mac: Uint8Array, offset = 0): number | undefined {
    const i = this.find((mac[offset] << 8) | mac[offset + 1], this.lo(mac, offset + 2));
    if (i < 0 || this.now() - this.seen[i] > this.ageingMs) return undefined;
    return this.entryPort[i];
  }

  /**
   * Forwards a frame that came in on port `ingress`. Returns how many ports it went out of.
   * Frames shorter than a header are the caller's bug (netback validates sizes first).
   */
  forward(ingress: number, frame: BridgeFrame): number {
    const d = frame.data;
    const now = this.learnSource(ingress, d);
    if ((d[0] & 1) !== 0) return this.flood(ingress, frame);
    this.counters.lookups++;
    const i = this.find((d[0] << 8) | d[1], this.lo(d, 2));
    if (i >= 0 && now - this.seen[i] > this.ageingMs) {
      this.counters.aged++;
      this.deleteAt(i);
    } else if (i >= 0) {
      this.counters.hits++;
      const out = this.entryPort[i];
      if (out === ingress) {
        // The destination sits behind the port the frame came from: the segment already has it.
        this.counters.drops++;
        return 0;
      }
      const port = this.ports[out];
      if (port?.transmit(frame)) return 1;
      this.counters.drops++;
      return 0;
    }
    return this.flood(ingress, frame);
  }

  /**
   * Sends a frame that came in on `ingress` out of port `out` only, whatever its destination
   * MAC (a frame netback steered: mx-steer.ts); its source is learned as forward() learns it.
   * Returns how many ports it went out of (0: back to its ingress, or refused by the port).
   */
  sendTo(ingress: number, out: number, frame: BridgeFrame): number {
    this.learnSource(ingress, frame.data);
    const port = out === ingress ? undefined : this.ports[out];
    if (port?.transmit(frame)) return 1;
    this.counters.drops++;
    return 0;
  }

  /**
   * Sends a frame the bridge itself answers with (netback built it from one that came in) out
   * of port `out`, the port it came from included; nothing is learned from it.
   */
  answer(out: number, frame: BridgeFrame): number {
    if (this.ports[out]?.transmit(frame)) return 1;
    this.counters.drops++;
    return 0;
  }

  /** Learns the frame's source on `ingress` (unless a group address: never a station's own); returns now. */
  private learnSource(ingress: number, d: Uint8Array): number {
    const now = this.now();
    if (now - this.lastSweep >= this.ageingMs / 2) this.age(now);
    if ((d[6] & 1) === 0) this.learn((d[6] << 8) | d[7], this.lo(d, 8), ingress, now);
    return now;
  }

  /** Forgets every entry older than the ageing time; returns how many went. */
  age(now = this.now()): number {
    this.lastSweep = now;
    let n = 0;
    for (let i = 0; i <= this.mask; i++) {
      while (this.keyHi[i] !== EMPTY && now - this.seen[i] > this.ageingMs) {
        this.deleteAt(i);
        n++;
      }
    }
    this.counters.aged += n;
    return n;
  }

  private flood(ingress: number, frame: BridgeFrame): number {
    if (!this.mayFlood(ingress)) {
      this.counters.floodsLimited++;
      return 0;
    }
    this.counters.floods++;
    let sent = 0;
    const ports = this.ports;
    for (let p = 0; p < ports.length; p++) {
      if (p === ingress) continue;
      const port = ports[p];
      if (port === undefined) continue;
      if (port.transmit(frame)) sent++;
      else this.counters.drops++;
    }
    return sent;
  }

  /**
   * Takes a token of port `ingress`'s flood bucket, refilled at floodRate; false: none left
   * (or no such port: a port not on the bridge floods nothing).
   */
  private mayFlood(ingress: number): boolean {
    const b = this.floodOf[ingress];
    if (b === undefined) return false;
    const now = this.now();
    const tokens = Math.min(this.floodBurst, b.tokens + ((now - b.at) * this.floodRate) / 1000);
    b.at = now;
    if (tokens < 1) {
      b.tokens = tokens;
      return false;
    }
    b.tokens = tokens - 1;
    return true;
  }

  private lo(d: Uint8Array, o: number): number {
    return (d[o] << 24) | (d[o + 1] << 16) | (d[o + 2] << 8) | d[o + 3] | 0;
  }

  private find(hi: number, lo: number): number {
    const kh = this.keyHi;
    let i = hash(hi, lo) & this.mask;
    while (kh[i] !== EMPTY) {
      if (kh[i] === hi && this.keyLo[i] === lo) return i;
      i = (i + 1) & this.mask;
    }
    return -1;
  }

  private learn(hi: number, lo: number, port: number, now: number): void {
    const kh = this.keyHi;
    let i = hash(hi, lo) & this.mask;
    while (kh[i] !== EMPTY) {
      if (kh[i] === hi && this.keyLo[i] === lo) {
        if (this.entryPort[i] !== port) {
          // The station moved (or an aged entry is revived on another port).
          this.entryPort[i] = port;
          this.counters.learned++;
        }
        this.seen[i] = now;
        return;
      }
      i = (i + 1) & this.mask;
    }
    if (this.entries >= this.maxEntries) return;
    kh[i] = hi;
    this.keyLo[i] = lo;
    this.entryPort[i] = port;
    this.seen[i] = now;
    this.entries++;
    this.counters.learned++;
  }

  /** Removes slot `i`, shifting later members of its probe run back so lookups still find them. */
  private deleteAt(i: number): void {
    const kh = this.keyHi;
    const mask = this.mask;
    let hole = i;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (kh[j] === EMPTY) break;
      const home = hash(kh[j], this.keyLo[j]) & mask;
      // Entry j may move into the hole only if its home is not cyclically in (hole, j].
      const stays = hole <= j ? hole < home && home <= j : hole < home || home <= j;
      if (stays) continue;
      kh[hole] = kh[j];
      this.keyLo[hole] = this.keyLo[j];
      this.entryPort[hole] = this.entryPort[j];
      this.seen[hole] = this.seen[j];
      hole = j;
    }
    kh[hole] = EMPTY;
    this.entries--;
  }
}

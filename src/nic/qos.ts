/**
 * The NIC's share of performance isolation (issue 16): a deficit round robin over its
 * endpoints' work, weighted per endpoint, and token-bucket caps per endpoint and direction.
 * The driver (myrback) sets each endpoint's policy with the `set_qos` control request (from
 * the owner domain's XenStore node, myrixen/qos-policy.ts); the data path reads only the
 * arrays below.
 *
 * Who pays for what (the bytes a descriptor names are counted when it is executed, a
 * refused one costs DESCRIPTOR_COST; nic.ts asks admit() before and charge() after):
 *   SEND           its endpoint: deficit, tx bytes, tx messages
 *   local PULL     the endpoint whose memory it reads (the pull right's owner, or the puller
 *                  itself): deficit and tx bytes; the puller: rx bytes and rx messages
 *   remote PULL    the puller here: deficit, rx bytes, rx messages; the serving NIC charges
 *                  the source endpoint's deficit and tx bytes as it sends the replies
 *                  (remote-pull.ts serveJobs asks mayServe() and charge())
 *   anything else  its endpoint: DESCRIPTOR_COST of deficit (so a flood of NOPs or empty
 *                  SENDs is counted too)
 * So a message's bytes count against its sender's weight and tx cap whichever NIC path
 * carries them, and against its receiver's rx cap when the receiver pulls them.
 *
 * Deficits: every poll round (beginRound) each open endpoint gains QOS_QUANTUM × weight,
 * holding at most one round's worth (an idle endpoint banks nothing); an endpoint is served
 * while its payer's deficit is positive, and may overdraw by one descriptor, which later
 * rounds repay — so backlogged endpoints' bytes served converge to their weights' ratio.
 *
 * Caps: a bucket per endpoint and direction for bytes and for messages, refilled at its
 * rate up to BURST_MS of it; a descriptor may start while its buckets are not in debt and
 * then takes its whole size (a 1 MiB pull under a 100 MB/s cap leaves ~10 ms of debt).
 * Bucket times are the NIC's round clock (ms); the unit tests pass their own.
 * Nothing is dropped: the descriptor waits at the head of its queue, and the NIC's backstop
 * timer wakes it when the debt is paid (waitMs()).
 */
import { EndpointCounter, endpointCounterBase } from "./counters.js";
import { D_DEST_ENDPOINT, D_LENGTH, D_OPCODE, DFLAG_EXPOSURE, DFLAG_REMOTE, Opcode } from "./window.js";

/** Bytes of deficit a weight of 1 earns per round. */
export const QOS_QUANTUM = 256 * 1024;
/** What a descriptor costs at least (a NOP, an empty SEND, a CONNECT), in deficit bytes. */
export const DESCRIPTOR_COST = 64;
export const MAX_WEIGHT = 1000;
/**
 * A bucket holds this much of its rate, up to BURST_MAX bytes: bursts above the cap last at
 * most this long, and a NIC whose timer wakes it this late (a loaded 2-core machine runs it
 * ms late) loses no rate. (A descriptor may start whenever its bucket is not in debt, so even
 * a message far larger than the bucket goes.)
 */
export const BURST_MS = 25;
export const BURST_MAX = 16 << 20;

/** An endpoint's policy as the driver sets it. Caps: 0 = none; per second. */
export interface QosSettings {
  weight: number;
  txBytesPerSec: number;
  txMsgsPerSec: number;
  rxBytesPerSec: number;
  rxMsgsPerSec: number;
}

export const DEFAULT_QOS: Readonly<QosSettings> = {
  weight: 1,
  txBytesPerSec: 0,
  txMsgsPerSec: 0,
  rxBytesPerSec: 0,
  rxMsgsPerSec: 0,
};

export function isDefaultQos(s: QosSettings): boolean {
  return (
    s.weight === 1 &&
    s.txBytesPerSec === 0 &&
    s.txMsgsPerSec === 0 &&
    s.rxBytesPerSec === 0 &&
    s.rxMsgsPerSec === 0
  );
}

/** The buckets of an endpoint, in this order. */
const TX_BYTES = 0;
const TX_MSGS = 1;
const RX_BYTES = 2;
const RX_MSGS = 3;
const BUCKETS = 4;

/** Checks a set_qos request's settings; returns a message naming the bad field, or null. */
export function qosSettingsError(s: unknown): string | null {
  if (typeof s !== "object" || s === null) return "settings must be an object";
  const o = s as Record<string, unknown>;
  const w = o.weight;
  if (typeof w !== "number" || !Number.isInteger(w) || w < 1 || w > MAX_WEIGHT)
    return `weight must be an integer in 1..${MAX_WEIGHT}, got ${String(w)}`;
  for (const k of ["txBytesPerSec", "txMsgsPerSec", "rxBytesPerSec", "rxMsgsPerSec"] as const) {
    const v = o[k];
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0)
      return `${k} must be a finite number ≥ 0 (0: no cap), got ${String(v)}`;
  }
  return null;
}

export class QosScheduler {
  readonly weight: Float64Array;
  readonly deficit: Float64Array;
  /** Per endpoint × BUCKETS: rate per ms (0: no cap), tokens, capacity. */
  private readonly rate: Float64Array;
  private readonly tokens: Float64Array;
  private readonly burst: Float64Array;
  /** Whether the endpoint has any cap (its buckets are refilled only then). */
  private readonly capped: Uint8Array;
  private readonly lastRefill: Float64Array;
  /**
   * Work waited this round only for its payer's deficit (not a cap): later rounds serve it,
   * so the NIC keeps polling instead of sleeping (work-conserving: a lone backlogged endpoint
   * is never idled by its weight). nic.ts reads and clears it each round.
   */
  deficitHeld = false;
  /** Set by admit(): who pays for the descriptor in hand, and its size. */
  private payTx = 0;
  private payRx = -1;
  private payBytes = 0;

  /** `c`: the NIC's counters (qos_bytes and qos_deferred per endpoint); a unit test may omit them. */
  constructor(
    readonly maxEndpoints: number,
    private readonly c: Float64Array = new Float64Array(endpointCounterBase(maxEndpoints)),
  ) {
    this.weight = new Float64Array(maxEndpoints).fill(1);
    // A context never opened (or closed) pays nothing: its engines refuse what names it.
    this.deficit = new Float64Array(maxEndpoints).fill(Number.POSITIVE_INFINITY);
    this.rate = new Float64Array(maxEndpoints * BUCKETS);
    this.tokens = new Float64Array(maxEndpoints * BUCKETS);
    this.burst = new Float64Array(maxEndpoints * BUCKETS);
    this.capped = new Uint8Array(maxEndpoints);
    this.lastRefill = new Float64Array(maxEndpoints);
  }

  /** Endpoint `id` gets policy `s` (checked by the caller with qosSettingsError). */
  set(id: number, s: QosSettings, now: number): void {
    this.weight[id] = s.weight;
    const rates = [s.txBytesPerSec, s.txMsgsPerSec, s.rxBytesPerSec, s.rxMsgsPerSec];
    let capped = 0;
    for (let b = 0; b < BUCKETS; b++) {
      const perMs = rates[b] / 1000;
      const i = id * BUCKETS + b;
      this.rate[i] = perMs;
      // Messages: at least one (a cap below 200/s still gets its message when due).
      const isMsgs = b === TX_MSGS || b === RX_MSGS;
      this.burst[i] =
        perMs === 0 ? 0 : isMsgs ? Math.max(perMs * BURST_MS, 1) : Math.min(perMs * BURST_MS, BURST_MAX);
      this.tokens[i] = Math.min(this.tokens[i], this.burst[i]);
      if (perMs > 0) capped = 1;
      else this.tokens[i] = 0;
    }
    this.capped[id] = capped;
    this.lastRefill[id] = now;
  }

  /** A newly opened endpoint starts with the default policy until its driver says otherwise. */
  reset(id: number, now: number): void {
    this.deficit[id] = 0;
    this.tokens.fill(0, id * BUCKETS, (id + 1) * BUCKETS);
    this.set(id, DEFAULT_QOS, now);
  }

  /** A closed endpoint: pulls that name it are refused by their engine, never held here. */
  closed(id: number): void {
    this.capped[id] = 0;
    this.deficit[id] = Number.POSITIVE_INFINITY;
  }

  settings(id: number): QosSettings {
    const r = (b: number) => this.rate[id * BUCKETS + b] * 1000;
    return {
      weight: this.weight[id],
      txBytesPerSec: r(TX_BYTES),
      txMsgsPerSec: r(TX_MSGS),
      rxBytesPerSec: r(RX_BYTES),
      rxMsgsPerSec: r(RX_MSGS),
    };
  }

  /** A new round: each of the `count` endpoints in `ids` earns its quantum; buckets refill to `now` (ms). */
  beginRound(ids: Int32Array, count: number, now: number): void {
    for (let k = 0; k < count; k++) {
      const id = ids[k];
      const full = QOS_QUANTUM * this.weight[id];
      const d = this.deficit[id] + full;
      this.deficit[id] = d > full ? full : d;
      if (this.capped[id] === 1) this.refill(id, now);
    }
  }

  private refill(id: number, now: number): void {
    const dt = now - this.lastRefill[id];
    if (dt <= 0) return;
    this.lastRefill[id] = now;
    for (let i = id * BUCKETS; i < (id + 1) * BUCKETS; i++) {
      if (this.rate[i] === 0) continue;
      const t = this.tokens[i] + this.rate[i] * dt;
      this.tokens[i] = t > this.burst[i] ? this.burst[i] : t;
    }
  }

  private inDebt(id: number, first: number, second: number): boolean {
    if (id < 0 || this.capped[id] === 0) return false;
    const base = id * BUCKETS;
    return this.tokens[base + first] < 0 || this.tokens[base + second] < 0;
  }

  /**
   * May endpoint `ep`'s descriptor `d` be executed now? Remembers who pays for it, for
   * charge(). A descriptor naming an endpoint out of range is charged to its own endpoint
   * (its engine refuses it anyway).
   */
  admit(ep: number, d: Int32Array): boolean {
    const op = d[D_OPCODE] & 0xffff;
    const flags = d[D_OPCODE] >>> 16;
    let tx = ep;
    let rx = -1;
    let bytes = 0;
    if (op === Opcode.Send) bytes = d[D_LENGTH] >>> 0;
    else if (op === Opcode.Pull) {
      bytes = d[D_LENGTH] >>> 0;
      rx = ep;
      if (flags & DFLAG_REMOTE) tx = -1;
      else if (flags & DFLAG_EXPOSURE) {
        const src = d[D_DEST_ENDPOINT] >>> 0;
        if (src < this.maxEndpoints) tx = src;
      }
    }
    this.payTx = tx;
    this.payRx = rx;
    this.payBytes = bytes < DESCRIPTOR_COST ? DESCRIPTOR_COST : bytes;
    // The deficit is the payer's: the sender's for local bytes, the puller's for a remote pull.
    if (this.inDebt(tx, TX_BYTES, TX_MSGS) || this.inDebt(rx, RX_BYTES, RX_MSGS)) {
      this.c[endpointCounterBase(ep) + EndpointCounter.qos_deferred]++;
      return false;
    }
    if (this.deficit[tx < 0 ? ep : tx] > 0) return true;
    this.deficitHeld = true;
    this.c[endpointCounterBase(ep) + EndpointCounter.qos_deferred]++;
    return false;
  }

  /** The descriptor admit() last passed was executed (not stalled): its payers pay. */
  charge(ep: number, refused = false): void {
    const bytes = refused ? DESCRIPTOR_COST : this.payBytes;
    const tx = this.payTx;
    const payer = tx < 0 ? ep : tx;
    this.deficit[payer] -= bytes;
    this.c[endpointCounterBase(payer) + EndpointCounter.qos_bytes] += bytes;
    if (tx >= 0 && this.capped[tx] === 1) {
      this.tokens[tx * BUCKETS + TX_BYTES] -= this.rate[tx * BUCKETS + TX_BYTES] > 0 ? bytes : 0;
      this.tokens[tx * BUCKETS + TX_MSGS] -= this.rate[tx * BUCKETS + TX_MSGS] > 0 ? 1 : 0;
    }
    const rx = this.payRx;
    if (rx >= 0 && this.capped[rx] === 1) {
      this.tokens[rx * BUCKETS + RX_BYTES] -= this.rate[rx * BUCKETS + RX_BYTES] > 0 ? bytes : 0;
      this.tokens[rx * BUCKETS + RX_MSGS] -= this.rate[rx * BUCKETS + RX_MSGS] > 0 ? 1 : 0;
    }
  }

  /** May the serving side of a remote pull send more of endpoint `src`'s memory now? */
  mayServe(src: number): boolean {
    const capped = this.inDebt(src, TX_BYTES, TX_BYTES);
    if (this.deficit[src] > 0 && !capped) return true;
    if (!capped) this.deficitHeld = true;
    this.c[endpointCounterBase(src) + EndpointCounter.qos_deferred]++;
    return false;
  }

  /** `bytes` of endpoint `src`'s memory went out in pull replies. */
  chargeServed(src: number, bytes: number): void {
    this.deficit[src] -= bytes;
    this.c[endpointCounterBase(src) + EndpointCounter.qos_bytes] += bytes;
    if (this.capped[src] === 1 && this.rate[src * BUCKETS + TX_BYTES] > 0)
      this.tokens[src * BUCKETS + TX_BYTES] -= bytes;
  }

  /**
   * How long until the first of these endpoints' buckets in debt is paid (ms), or -1 if
   * none is: the NIC sleeps no longer than this when capped work waits.
   */
  waitMs(ids: Int32Array, count: number): number {
    let wait = -1;
    for (let k = 0; k < count; k++) {
      const id = ids[k];
      if (this.capped[id] === 0) continue;
      for (let i = id * BUCKETS; i < (id + 1) * BUCKETS; i++) {
        if (this.tokens[i] >= 0 || this.rate[i] === 0) continue;
        const ms = -this.tokens[i] / this.rate[i];
        if (wait < 0 || ms < wait) wait = ms;
      }
    }
    return wait;
  }
}

/**
 * The NIC's share of performance isolation (issue 16): a deficit round robin over its
 * endpoints' work, weighted per endpoint, and token-bucket caps per endpoint and direction.
 * The driver (myrback) sets each endpoint's policy with the `set_qos` control request (from
 * the owner domain's XenStore node, myrixen/qos-policy.ts); the data path reads only the
 * arrays below.
 *
 * Who pays for what (the bytes a descriptor names are counted when it is executed, a
 * refused one costs its own endpoint DESCRIPTOR_COST; nic.ts asks admit() before and charge()
 * after):
 *   SEND           its endpoint: deficit, tx bytes, tx messages
 *   local PULL     the endpoint whose memory it reads (the pull right's owner, or the puller
 *                  itself): deficit and tx bytes; the puller: rx bytes and rx messages
 *   remote PULL    the puller here: deficit, rx bytes, rx messages; the serving NIC charges
 *                  the source endpoint's deficit and tx bytes as it sends the replies
 *                  (remote-pull.ts serveJobs asks mayServe() and chargeServed()). One whose
 *                  source is on this NIC with no loopback link is copied here by the DMA
 *                  engine, no replies sent: it is held and charged as a local PULL under a
 *                  pull right (remote-pull.ts execPull asks maySelfServe(), then paidBy()).
 *                  Charged to the puller only, a source capped at 1 MB/s of tx streamed
 *                  157 MB in 38 ms to a co-resident receiver that set DFLAG_REMOTE naming its
 *                  own NIC instead of DFLAG_EXPOSURE.
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
 * Share groups: a weight, a deficit and caps belong to a *share slot*, not to an endpoint. An
 * endpoint opened with a `group` (open_endpoint; myrback passes the owner domain's id) shares
 * the slot of that group's other open endpoints; one opened without has a slot of its own. A
 * domain's policy is the domain's: with a slot per endpoint, a guest that opened four endpoints
 * had four weights and four caps (a domain capped at 100 MB/s streamed 400 from four), and its
 * backlogged endpoints took four shares of a contended NIC to a one-endpoint neighbour's one.
 * The counters (qos_bytes, qos_deferred) stay per endpoint.
 *
 * Caps: a bucket per share slot and direction for bytes and for messages, refilled at its
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

/** What an owed entry still owes per bucket at `now` (≥ 0: paid), each at the rate it had. */
function owedAt(o: { tokens: Float64Array; rate: Float64Array; at: number }, now: number): number[] {
  const dt = Math.max(0, now - o.at);
  return Array.from(o.tokens, (t, b) => (o.rate[b] > 0 ? Math.min(0, t + o.rate[b] * dt) : 0));
}

export class QosScheduler {
  /** Per share slot (maxEndpoints + 1: the last is CLOSED's): its weight and deficit. */
  readonly weight: Float64Array;
  readonly deficit: Float64Array;
  /** Endpoint → its share slot; CLOSED for a context not open. */
  readonly slotOf: Int32Array;
  /**
   * Endpoint → who is charged for what it has out (a link's credits, a receiver's held places:
   * link-state.ts, delivery.ts): its group (the domain) if it has one, else a number of its
   * own opening (< 0). Not the slot: slots are reused as domains come and go, and a closed
   * endpoint's SENDs still out were charged to the next domain given its slot.
   */
  readonly chargeOf: Float64Array;
  private openings = 0;
  /** Per slot: its group (−1: none, a slot of one endpoint), and how many open endpoints share it. */
  private readonly slotGroup: Float64Array;
  private readonly slotRefs: Int32Array;
  /** Per slot: the round it last earned its quantum (beginRound pays a shared slot once). */
  private readonly earnedIn: Float64Array;
  private round = 0;
  /** The slot of closed contexts: pays nothing, never capped (engines refuse what names them). */
  private readonly CLOSED: number;
  /** Per slot × BUCKETS: rate per ms (0: no cap), tokens, capacity. */
  private readonly rate: Float64Array;
  private readonly tokens: Float64Array;
  private readonly burst: Float64Array;
  /** Whether the slot has any cap (its buckets are refilled only then). */
  private readonly capped: Uint8Array;
  private readonly lastRefill: Float64Array;
  /**
   * Work waited this round only for its payer's deficit (not a cap): later rounds serve it,
   * so the NIC keeps polling instead of sleeping (work-conserving: a lone backlogged endpoint
   * is never idled by its weight). nic.ts reads and clears it each round.
   */
  deficitHeld = false;
  /**
   * Groups (domains) whose last endpoint closed with its caps in debt: what each bucket owed
   * and its rate (per ms), as of `at`. The domain's next endpoint takes a fresh slot, and the
   * debt with it once its caps are set (set). Before, the slot went with its debt: a capped
   * guest that closed its endpoint after a large message and opened another had the next one
   * free. Forgotten once paid (looked at when an endpoint opens).
   */
  private readonly owed = new Map<number, { tokens: Float64Array; rate: Float64Array; at: number }>();
  /** Set by admit(): who pays for the descriptor in hand (endpoints), and its size. */
  private payTx = 0;
  private payRx = -1;
  private payBytes = 0;

  /** `c`: the NIC's counters (qos_bytes and qos_deferred per endpoint); a unit test may omit them. */
  constructor(
    readonly maxEndpoints: number,
    private readonly c: Float64Array = new Float64Array(endpointCounterBase(maxEndpoints)),
  ) {
    const slots = maxEndpoints + 1;
    this.CLOSED = maxEndpoints;
    this.weight = new Float64Array(slots).fill(1);
    // A context never opened (or closed) pays nothing: its engines refuse what names it.
    this.deficit = new Float64Array(slots).fill(Number.POSITIVE_INFINITY);
    this.slotOf = new Int32Array(maxEndpoints).fill(this.CLOSED);
    this.chargeOf = new Float64Array(maxEndpoints);
    this.slotGroup = new Float64Array(slots).fill(-1);
    this.slotRefs = new Int32Array(slots);
    this.earnedIn = new Float64Array(slots).fill(-1);
    this.rate = new Float64Array(slots * BUCKETS);
    this.tokens = new Float64Array(slots * BUCKETS);
    this.burst = new Float64Array(slots * BUCKETS);
    this.capped = new Uint8Array(slots);
    this.lastRefill = new Float64Array(slots);
  }

  /**
   * A newly opened endpoint: it joins the slot of `group`'s open endpoints, policy and all, or
   * (no group, or the group's first) takes a free slot with the default policy until its
   * driver says otherwise.
   */
  opened(id: number, group: number | undefined, now: number): void {
    this.closed(id);
    for (const [g, o] of this.owed) if (owedAt(o, now).every((t) => t >= 0)) this.owed.delete(g);
    this.chargeOf[id] = group ?? -++this.openings;
    if (group !== undefined) {
      for (let slot = 0; slot < this.CLOSED; slot++) {
        if (this.slotRefs[slot] > 0 && this.slotGroup[slot] === group) {
          this.slotOf[id] = slot;
          this.slotRefs[slot]++;
          return;
        }
      }
    }
    // A free slot exists: every open endpoint holds at most one, and `id` holds none now.
    let slot = 0;
    while (slot < this.CLOSED - 1 && this.slotRefs[slot] > 0) slot++;
    this.slotOf[id] = slot;
    this.slotRefs[slot] = 1;
    this.slotGroup[slot] = group ?? -1;
    this.deficit[slot] = 0;
    this.earnedIn[slot] = -1;
    this.tokens.fill(0, slot * BUCKETS, (slot + 1) * BUCKETS);
    this.set(id, DEFAULT_QOS, now);
  }

  /** Endpoint `id` closed (or is about to reopen): it leaves its slot, freed with its last endpoint. */
  closed(id: number): void {
    const slot = this.slotOf[id];
    this.slotOf[id] = this.CLOSED;
    if (slot === this.CLOSED || --this.slotRefs[slot] > 0) return;
    const group = this.slotGroup[slot];
    if (group >= 0 && this.capped[slot] === 1) {
      const base = slot * BUCKETS;
      const tokens = this.tokens.slice(base, base + BUCKETS);
      if (tokens.some((t) => t < 0))
        this.owed.set(group, {
          tokens,
          rate: this.rate.slice(base, base + BUCKETS),
          at: this.lastRefill[slot],
        });
    }
    this.slotGroup[slot] = -1;
    this.capped[slot] = 0;
    this.deficit[slot] = Number.POSITIVE_INFINITY;
  }

  /**
   * The domain `group` stood for is gone (forget_group): its kept debt goes with it. Kept, a
   * later domain given the same id (they come back after the round robin wraps) would start
   * in a stranger's debt, and the map would hold every indebted dead domain until paid.
   */
  forgetGroup(group: number): void {
    this.owed.delete(group);
  }

  /** The groups whose debt is kept now (no endpoint open, not yet paid at `now`), ascending. */
  owedGroups(now: number): number[] {
    return [...this.owed]
      .filter(([, o]) => owedAt(o, now).some((t) => t < 0))
      .map(([g]) => g)
      .sort((a, b) => a - b);
  }

  /** Endpoint `id` gets policy `s` (checked by the caller with qosSettingsError): its whole share group does. */
  set(id: number, s: QosSettings, now: number): void {
    const slot = this.slotOf[id];
    if (slot === this.CLOSED) return;
    this.weight[slot] = s.weight;
    const rates = [s.txBytesPerSec, s.txMsgsPerSec, s.rxBytesPerSec, s.rxMsgsPerSec];
    let capped = 0;
    for (let b = 0; b < BUCKETS; b++) {
      const perMs = rates[b] / 1000;
      const i = slot * BUCKETS + b;
      this.rate[i] = perMs;
      // Messages: at least one (a cap below 200/s still gets its message when due).
      const isMsgs = b === TX_MSGS || b === RX_MSGS;
      this.burst[i] =
        perMs === 0 ? 0 : isMsgs ? Math.max(perMs * BURST_MS, 1) : Math.min(perMs * BURST_MS, BURST_MAX);
      this.tokens[i] = Math.min(this.tokens[i], this.burst[i]);
      if (perMs > 0) capped = 1;
      else this.tokens[i] = 0;
    }
    this.capped[slot] = capped;
    this.lastRefill[slot] = now;
    // What the domain's endpoint closed before left owing, as of now.
    const o = this.owed.get(this.slotGroup[slot]);
    if (o !== undefined) {
      const left = owedAt(o, now);
      for (let b = 0; b < BUCKETS; b++) {
        const i = slot * BUCKETS + b;
        if (this.rate[i] > 0 && left[b] < this.tokens[i]) this.tokens[i] = left[b];
      }
    }
  }

  settings(id: number): QosSettings {
    const slot = this.slotOf[id];
    const r = (b: number) => this.rate[slot * BUCKETS + b] * 1000;
    return {
      weight: this.weight[slot],
      txBytesPerSec: r(TX_BYTES),
      txMsgsPerSec: r(TX_MSGS),
      rxBytesPerSec: r(RX_BYTES),
      rxMsgsPerSec: r(RX_MSGS),
    };
  }

  /** The endpoints of `ids` that share a slot with another, grouped (groups of one left out). */
  shares(ids: readonly number[]): number[][] {
    const bySlot = new Map<number, number[]>();
    for (const id of ids) {
      const slot = this.slotOf[id];
      if (slot === this.CLOSED) continue;
      const g = bySlot.get(slot);
      if (g) g.push(id);
      else bySlot.set(slot, [id]);
    }
    return [...bySlot.values()].filter((g) => g.length > 1);
  }

  /**
   * A new round: the slots of the `count` endpoints in `ids` earn their quantum (once each,
   * however many of their endpoints are open); buckets refill to `now` (ms).
   */
  beginRound(ids: Int32Array, count: number, now: number): void {
    const round = ++this.round;
    for (let k = 0; k < count; k++) {
      const slot = this.slotOf[ids[k]];
      if (this.earnedIn[slot] === round) continue;
      this.earnedIn[slot] = round;
      const full = QOS_QUANTUM * this.weight[slot];
      const d = this.deficit[slot] + full;
      this.deficit[slot] = d > full ? full : d;
      if (this.capped[slot] === 1) this.refill(slot, now);
    }
  }

  private refill(slot: number, now: number): void {
    const dt = now - this.lastRefill[slot];
    if (dt <= 0) return;
    this.lastRefill[slot] = now;
    for (let i = slot * BUCKETS; i < (slot + 1) * BUCKETS; i++) {
      if (this.rate[i] === 0) continue;
      const t = this.tokens[i] + this.rate[i] * dt;
      this.tokens[i] = t > this.burst[i] ? this.burst[i] : t;
    }
  }

  private inDebt(id: number, first: number, second: number): boolean {
    if (id < 0) return false;
    const slot = this.slotOf[id];
    if (this.capped[slot] === 0) return false;
    const base = slot * BUCKETS;
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
    if (this.deficit[this.slotOf[tx < 0 ? ep : tx]] > 0) return true;
    this.deficitHeld = true;
    this.c[endpointCounterBase(ep) + EndpointCounter.qos_deferred]++;
    return false;
  }

  /** The descriptor admit() last passed was executed (not stalled): its payers pay. */
  charge(ep: number, refused = false): void {
    const bytes = refused ? DESCRIPTOR_COST : this.payBytes;
    // A refused descriptor read no one's memory: its own endpoint pays, never the pull right's
    // owner it named (garbage exposure PULLs naming a neighbour spent that neighbour's caps).
    const tx = refused && this.payTx >= 0 ? ep : this.payTx;
    const payer = tx < 0 ? ep : tx;
    this.deficit[this.slotOf[payer]] -= bytes;
    this.c[endpointCounterBase(payer) + EndpointCounter.qos_bytes] += bytes;
    if (tx >= 0) this.take(this.slotOf[tx], TX_BYTES, TX_MSGS, bytes);
    const rx = this.payRx;
    if (rx >= 0) this.take(this.slotOf[rx], RX_BYTES, RX_MSGS, bytes);
  }

  /** A capped slot's byte and message buckets (of one direction) pay for one message of `bytes`. */
  private take(slot: number, bytesBucket: number, msgsBucket: number, bytes: number): void {
    if (this.capped[slot] !== 1) return;
    const base = slot * BUCKETS;
    if (this.rate[base + bytesBucket] > 0) this.tokens[base + bytesBucket] -= bytes;
    if (this.rate[base + msgsBucket] > 0) this.tokens[base + msgsBucket] -= 1;
  }

  /**
   * Endpoint `ep`'s remote PULL (admitted: it pays as a remote puller) turns out to read
   * endpoint `src` of this NIC, copied here (remote-pull.ts, no loopback link): may it, now?
   * Held as admit() holds a PULL under `src`'s pull right: while `src`'s tx buckets are in
   * debt or its deficit is spent. An `src` out of range is not looked at (its pull is refused).
   */
  maySelfServe(ep: number, src: number): boolean {
    if (src >= this.maxEndpoints) return true;
    if (!this.inDebt(src, TX_BYTES, TX_MSGS)) {
      if (this.deficit[this.slotOf[src]] > 0) return true;
      this.deficitHeld = true;
    }
    this.c[endpointCounterBase(ep) + EndpointCounter.qos_deferred]++;
    return false;
  }

  /**
   * That pull took `src`'s right (maySelfServe passed): charge() makes `src` pay for the
   * descriptor in hand (deficit, qos_bytes, tx caps) and the puller only its rx caps, as for
   * a DFLAG_EXPOSURE PULL.
   */
  paidBy(src: number): void {
    this.payTx = src;
  }

  /** May the serving side of a remote pull send more of endpoint `src`'s memory now? */
  mayServe(src: number): boolean {
    const capped = this.inDebt(src, TX_BYTES, TX_BYTES);
    if (this.deficit[this.slotOf[src]] > 0 && !capped) return true;
    if (!capped) this.deficitHeld = true;
    this.c[endpointCounterBase(src) + EndpointCounter.qos_deferred]++;
    return false;
  }

  /** `bytes` of endpoint `src`'s memory went out in pull replies. */
  chargeServed(src: number, bytes: number): void {
    const slot = this.slotOf[src];
    this.deficit[slot] -= bytes;
    this.c[endpointCounterBase(src) + EndpointCounter.qos_bytes] += bytes;
    if (this.capped[slot] === 1 && this.rate[slot * BUCKETS + TX_BYTES] > 0)
      this.tokens[slot * BUCKETS + TX_BYTES] -= bytes;
  }

  /**
   * How long until the first of these endpoints' buckets in debt is paid (ms), or -1 if
   * none is: the NIC sleeps no longer than this when capped work waits.
   */
  waitMs(ids: Int32Array, count: number): number {
    let wait = -1;
    for (let k = 0; k < count; k++) {
      const slot = this.slotOf[ids[k]];
      if (this.capped[slot] === 0) continue;
      for (let i = slot * BUCKETS; i < (slot + 1) * BUCKETS; i++) {
        if (this.tokens[i] >= 0 || this.rate[i] === 0) continue;
        const ms = -this.tokens[i] / this.rate[i];
        if (wait < 0 || ms < wait) wait = ms;
      }
    }
    return wait;
  }
}

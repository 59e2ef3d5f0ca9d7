/**
 * A requester's refusals, counted by the party that refuses them, and past a free allowance
 * answered with a lockout that doubles: the rule for wrong endpoint keys (connect-throttle.ts:
 * the NIC, and netback on the split path) and for refused pulls (pull-throttle.ts). A
 * requester is a (NIC, endpoint id) pair. Its first `freeFails` refusals are answered plainly;
 * the last of them starts a lockout of `lockoutMs`, doubling with every refusal after it up
 * to `lockoutMaxMs`. During a lockout the owner answers without looking at what was presented
 * — the right key included, or the answer would still be an oracle. A record with no refusal
 * for `forgetMs` starts over; `forgive` clears one (a right key, where that proves anything).
 *
 * The table is set-associative and fixed (SETS × WAYS records, typed arrays): it never grows,
 * and a full set gives up the record that matters least (empty, then forgotten, then the one
 * whose lockout ends first).
 */

/** How a throttle counts: see the module comment. */
export interface RefusalRule {
  freeFails: number;
  lockoutMs: number;
  lockoutMaxMs: number;
  forgetMs: number;
}

const SETS = 256;
const WAYS = 4;

export class RefusalThrottle {
  private readonly nic = new Uint32Array(SETS * WAYS);
  private readonly ep = new Uint32Array(SETS * WAYS);
  private readonly fails = new Uint32Array(SETS * WAYS);
  /** When the lockout ends (ms, the owner's clock). */
  private readonly until = new Float64Array(SETS * WAYS);
  /** When the last refusal came; 0: the record is empty. */
  private readonly last = new Float64Array(SETS * WAYS);

  constructor(private readonly rule: RefusalRule) {}

  private static set(nic: number, ep: number): number {
    return ((Math.imul(nic ^ Math.imul(ep, 0x9e3779b1), 0x85ebca6b) >>> 24) % SETS) * WAYS;
  }

  private find(nic: number, ep: number): number {
    const base = RefusalThrottle.set(nic, ep);
    for (let w = base; w < base + WAYS; w++)
      if (this.last[w] !== 0 && this.nic[w] === nic && this.ep[w] === ep) return w;
    return -1;
  }

  /** How long requester (nic, ep) must still wait, in whole ms (0: what it presents may be looked at). */
  lockedFor(nic: number, ep: number, now: number): number {
    const w = this.find(nic >>> 0, ep >>> 0);
    return w >= 0 && this.until[w] > now ? Math.ceil(this.until[w] - now) : 0;
  }

  /** Requester (nic, ep) was refused: returns the lockout it now has (ms, 0 = none). */
  failed(nic: number, ep: number, now: number): number {
    const r = this.rule;
    nic >>>= 0;
    ep >>>= 0;
    let w = this.find(nic, ep);
    if (w >= 0 && now - this.last[w] >= r.forgetMs) this.fails[w] = 0;
    if (w < 0) {
      const base = RefusalThrottle.set(nic, ep);
      w = base;
      for (let v = base; v < base + WAYS; v++) if (this.worth(v, now) < this.worth(w, now)) w = v;
      this.nic[w] = nic;
      this.ep[w] = ep;
      this.fails[w] = 0;
      this.until[w] = 0;
    }
    // Never 0 (the empty mark), even on a clock that starts at 0.
    this.last[w] = now || Number.MIN_VALUE;
    const n = ++this.fails[w];
    if (n < r.freeFails) return 0;
    const ms = Math.min(r.lockoutMs * 2 ** Math.min(n - r.freeFails, 16), r.lockoutMaxMs);
    this.until[w] = now + ms;
    return ms;
  }

  /** Requester (nic, ep)'s refusals are forgiven. */
  forgive(nic: number, ep: number): void {
    const w = this.find(nic >>> 0, ep >>> 0);
    if (w >= 0) this.last[w] = 0;
  }

  /** How much a record is worth keeping: an empty or forgotten one nothing, else its lockout's end. */
  private worth(w: number, now: number): number {
    if (this.last[w] === 0 || now - this.last[w] >= this.rule.forgetMs) return -1;
    return Math.max(this.until[w], this.last[w]);
  }
}

/**
 * Throttling of wrong endpoint keys, per requesting endpoint, by the NIC that owns the
 * endpoint asked for (nic.ts: CONNECT descriptors, CONNECT_REQUEST frames, the driver's
 * lookup_endpoint). Endpoint keys are 32 bits: answered at full speed, a guesser would find
 * one in days. Here a requester's first CONNECT_FREE_FAILS wrong keys get their BAD_KEY at
 * once (an honest mistake, or two, is told so plainly); the last of them starts a lockout of
 * CONNECT_LOCKOUT_MS, doubling with every wrong key after it up to CONNECT_LOCKOUT_MAX_MS.
 * During a lockout the NIC answers REJECTED with the time left and does not look at the key —
 * the right one included, or the answer would still be an oracle. The right key clears the
 * requester's record; a record with no failure for CONNECT_FORGET_MS starts over.
 *
 * So a requester tries at most a key a minute in the long run: 2^32 keys take one requester
 * about 8,000 years, and all 256 endpoints of a NIC together about 32. A requester is an
 * endpoint id on its NIC, whoever opens it: closing and reopening does not clear a lockout
 * (a new owner of that id may wait up to CONNECT_LOCKOUT_MAX_MS).
 *
 * The table is set-associative and fixed (CONNECT_SETS × CONNECT_WAYS records, typed arrays):
 * it never grows, and a full set gives up the record that matters least (empty, then
 * forgotten, then the one whose lockout ends first).
 */

export const CONNECT_FREE_FAILS = 4;
export const CONNECT_LOCKOUT_MS = 1000;
export const CONNECT_LOCKOUT_MAX_MS = 60_000;
export const CONNECT_FORGET_MS = 10 * 60_000;
const CONNECT_SETS = 256;
const CONNECT_WAYS = 4;

export class ConnectThrottle {
  private readonly nic = new Uint32Array(CONNECT_SETS * CONNECT_WAYS);
  private readonly ep = new Uint32Array(CONNECT_SETS * CONNECT_WAYS);
  private readonly fails = new Uint32Array(CONNECT_SETS * CONNECT_WAYS);
  /** When the lockout ends (ms, the NIC's clock). */
  private readonly until = new Float64Array(CONNECT_SETS * CONNECT_WAYS);
  /** When the last wrong key came; 0: the record is empty. */
  private readonly last = new Float64Array(CONNECT_SETS * CONNECT_WAYS);

  private static set(nic: number, ep: number): number {
    return ((Math.imul(nic ^ Math.imul(ep, 0x9e3779b1), 0x85ebca6b) >>> 24) % CONNECT_SETS) * CONNECT_WAYS;
  }

  private find(nic: number, ep: number): number {
    const base = ConnectThrottle.set(nic, ep);
    for (let w = base; w < base + CONNECT_WAYS; w++)
      if (this.last[w] !== 0 && this.nic[w] === nic && this.ep[w] === ep) return w;
    return -1;
  }

  /** How long requester (nic, ep) must still wait, in whole ms (0: its key may be checked). */
  lockedFor(nic: number, ep: number, now: number): number {
    const w = this.find(nic >>> 0, ep >>> 0);
    return w >= 0 && this.until[w] > now ? Math.ceil(this.until[w] - now) : 0;
  }

  /** Requester (nic, ep) presented a wrong key: returns the lockout it now has (ms, 0 = none). */
  failed(nic: number, ep: number, now: number): number {
    nic >>>= 0;
    ep >>>= 0;
    let w = this.find(nic, ep);
    if (w >= 0 && now - this.last[w] >= CONNECT_FORGET_MS) this.fails[w] = 0;
    if (w < 0) {
      const base = ConnectThrottle.set(nic, ep);
      w = base;
      for (let v = base; v < base + CONNECT_WAYS; v++) if (this.worth(v, now) < this.worth(w, now)) w = v;
      this.nic[w] = nic;
      this.ep[w] = ep;
      this.fails[w] = 0;
      this.until[w] = 0;
    }
    this.last[w] = now;
    const n = ++this.fails[w];
    if (n < CONNECT_FREE_FAILS) return 0;
    const ms = Math.min(
      CONNECT_LOCKOUT_MS * 2 ** Math.min(n - CONNECT_FREE_FAILS, 16),
      CONNECT_LOCKOUT_MAX_MS,
    );
    this.until[w] = now + ms;
    return ms;
  }

  /** Requester (nic, ep) presented the right key: its wrong ones are forgiven. */
  succeeded(nic: number, ep: number): void {
    const w = this.find(nic >>> 0, ep >>> 0);
    if (w >= 0) this.last[w] = 0;
  }

  /** How much a record is worth keeping: an empty or forgotten one nothing, else its lockout's end. */
  private worth(w: number, now: number): number {
    if (this.last[w] === 0 || now - this.last[w] >= CONNECT_FORGET_MS) return -1;
    return Math.max(this.until[w], this.last[w]);
  }
}

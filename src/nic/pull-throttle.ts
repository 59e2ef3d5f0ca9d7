/**
 * Throttling of refused pulls, per requesting endpoint, by the NIC that owns the pull rights
 * (exposure.ts PullRights.take: a local PULL through a right, a PULL_REQUEST from a peer NIC,
 * a remote PULL aimed at this NIC). A right's key is 32 bits and lives for one message, so
 * guessing is slow, but every refusal was answered at once: a peer NIC asking at wire speed
 * went through 2^32 keys in hours. Here a requester's first PULL_FREE_REFUSALS refused pulls
 * are answered as before; the last of them starts a lockout of PULL_LOCKOUT_MS, doubling with
 * every refusal after it up to PULL_LOCKOUT_MAX_MS (the rule of connect-throttle.ts). During a
 * lockout the NIC refuses the requester's pulls REJECTED without looking at the right — the
 * right key included, or the answer would still be an oracle. A record with no refusal for
 * PULL_FORGET_MS starts over. Unlike a CONNECT's right key, a pull taken forgives nothing: a
 * requester can always arm a right of its own (or a colluding guest's) and take it.
 *
 * A requester is an endpoint id on its NIC: one of this NIC's, or one a peer NIC names in its
 * PULL_REQUEST (below MAX_ENDPOINTS_LIMIT, or the frame is refused unexamined), so a guest that
 * guesses costs the other endpoints of its NIC nothing, and a hostile peer NIC has 256 records.
 *
 * An honest requester pulls each rendezvous once, with the key its record carried: it is
 * refused only for a rendezvous whose send its sender had already failed (sends are not
 * cancelled; one ends on its receiver's NOTIFY), e.g. one whose SEND_ACK a lost link took
 * with it — at most DEST_CREDITS (32) per receiving endpoint per loss — or every rendezvous
 * of a sender that gave it up as a lost peer. 256 from one NIC within 10 minutes is far beyond
 * that. A guesser gets at most 256 answers per 10 minutes per requester id (about one a minute
 * if it keeps on guessing), about 6,600 a minute for all 256 ids of a hostile NIC: 2^32
 * guesses take it over a year, against about an hour at a million PULL_REQUESTs a second.
 *
 * The table is set-associative and fixed (PULL_SETS × PULL_WAYS records, typed arrays): it
 * never grows, and a full set gives up the record that matters least (empty, then forgotten,
 * then the one whose lockout ends first).
 */

export const PULL_FREE_REFUSALS = 256;
export const PULL_LOCKOUT_MS = 1000;
export const PULL_LOCKOUT_MAX_MS = 60_000;
export const PULL_FORGET_MS = 10 * 60_000;
const PULL_SETS = 256;
const PULL_WAYS = 4;

export class PullThrottle {
  private readonly nic = new Uint32Array(PULL_SETS * PULL_WAYS);
  private readonly ep = new Uint32Array(PULL_SETS * PULL_WAYS);
  private readonly refusals = new Uint32Array(PULL_SETS * PULL_WAYS);
  /** When the lockout ends (ms, the NIC's clock). */
  private readonly until = new Float64Array(PULL_SETS * PULL_WAYS);
  /** When the last refusal came; 0: the record is empty. */
  private readonly last = new Float64Array(PULL_SETS * PULL_WAYS);

  private static set(nic: number, ep: number): number {
    return ((Math.imul(nic ^ Math.imul(ep, 0x9e3779b1), 0x85ebca6b) >>> 24) % PULL_SETS) * PULL_WAYS;
  }

  private find(nic: number, ep: number): number {
    const base = PullThrottle.set(nic, ep);
    for (let w = base; w < base + PULL_WAYS; w++)
      if (this.last[w] !== 0 && this.nic[w] === nic && this.ep[w] === ep) return w;
    return -1;
  }

  /** How long requester (nic, ep) must still wait, in whole ms (0: its pulls may be looked at). */
  lockedFor(nic: number, ep: number, now: number): number {
    const w = this.find(nic >>> 0, ep >>> 0);
    return w >= 0 && this.until[w] > now ? Math.ceil(this.until[w] - now) : 0;
  }

  /** Requester (nic, ep) had a pull refused: returns the lockout it now has (ms, 0 = none). */
  refused(nic: number, ep: number, now: number): number {
    nic >>>= 0;
    ep >>>= 0;
    let w = this.find(nic, ep);
    if (w >= 0 && now - this.last[w] >= PULL_FORGET_MS) this.refusals[w] = 0;
    if (w < 0) {
      const base = PullThrottle.set(nic, ep);
      w = base;
      for (let v = base; v < base + PULL_WAYS; v++) if (this.worth(v, now) < this.worth(w, now)) w = v;
      this.nic[w] = nic;
      this.ep[w] = ep;
      this.refusals[w] = 0;
      this.until[w] = 0;
    }
    // Never 0 (the empty mark), even on a clock that starts at 0.
    this.last[w] = now || Number.MIN_VALUE;
    const n = ++this.refusals[w];
    if (n < PULL_FREE_REFUSALS) return 0;
    const ms = Math.min(PULL_LOCKOUT_MS * 2 ** Math.min(n - PULL_FREE_REFUSALS, 16), PULL_LOCKOUT_MAX_MS);
    this.until[w] = now + ms;
    return ms;
  }

  /** How much a record is worth keeping: an empty or forgotten one nothing, else its lockout's end. */
  private worth(w: number, now: number): number {
    if (this.last[w] === 0 || now - this.last[w] >= PULL_FORGET_MS) return -1;
    return Math.max(this.until[w], this.last[w]);
  }
}

/**
 * A requester's refusals, counted by the party that refuses them, and past a free allowance
 * answered with a lockout that doubles: the rule for wrong endpoint keys (connect-throttle.ts:
 * the NIC, and netback on the split path), wrong sessions (session-throttle.ts) and refused
 * pulls (pull-throttle.ts). A requester's first `freeFails` refusals are answered plainly; the
 * last of them starts a lockout of `lockoutMs`, doubling with every refusal after it up to
 * `lockoutMaxMs`. During a lockout the owner answers without looking at what was presented —
 * the right key included, or the answer would still be an oracle. A record with no refusal for
 * `forgetMs` starts over. Nothing else clears one: a right key proves only that the requester
 * knew that endpoint's key (its own endpoint's, say), and a guesser that cleared its record so
 * between guesses was never locked out.
 *
 * **A requester is one incarnation of an endpoint id**: (NIC, endpoint id, incarnation), the
 * incarnation being the session its frames carry (every open of an endpoint draws a new one).
 * The lockout was the id's alone, so it outlived the guesser's endpoint: the next guest given
 * that id (another job's rank) had its connects refused for up to a minute, and a guest that
 * got ids locked one after another could leave a later job none but locked ones. Now a new
 * incarnation starts with a clean record. Two things keep that from being a way out for a
 * guesser: its own NIC, which sees every answer, keeps its endpoints' records across a reopen
 * by the same owner and refuses before sending (own-refusals.ts); and every id also has a
 * record of all its incarnations together, with `idFreeFails` free refusals, so a hostile peer
 * NIC that names a new session for every guess meets the same doubling lockout per id, only
 * after a larger allowance. An honest NIC's guests reach that id record only if several
 * owners in turn use their whole allowance on one id within `forgetMs`.
 *
 * Every requester id has a record of its own, never given up for another's: the records come
 * in blocks of 256 ids (one per NIC and high bits of the endpoint id), made on a first refusal
 * and dropped once none of theirs was refused for `forgetMs`. Requesters are few by
 * construction: a NIC's are its own endpoints and those of the peers on its authenticated
 * links (ids below 256, or the frame is refused unexamined), and a NIC keeps at most
 * MAX_LINKS_PER_ADDRESS (32) peer NIC ids per remote address and MAX_LINKS (1024) in all,
 * counting every id linked within the throttles' forget time (link-bound.ts): a key holder,
 * which may claim any NIC id, gets no records beyond those by claiming more, on more links or on
 * links it closed (nothing bounded them before). netback's are domain ids. (The
 * table was set-associative once, and a full set gave up a record for the newcomer: five
 * requesters in one set took turns and none ever reached a lockout.) An id keeps one
 * incarnation record, its latest: an older incarnation that comes back (a hostile NIC
 * alternating two sessions) starts over at the incarnation level and meets the id's record.
 */

/** How a throttle counts: see the module comment. */
export interface RefusalRule {
  /** Free refusals of one incarnation of a requester id. */
  freeFails: number;
  /** Free refusals of a requester id, all its incarnations together (≥ freeFails). */
  idFreeFails: number;
  lockoutMs: number;
  lockoutMaxMs: number;
  forgetMs: number;
}

/** Requesters per block: one NIC's endpoint ids, or 256 domain ids. */
const BLOCK = 256;
/**
 * Endpoint ids the blocks tell apart (every caller's are below it: a NIC's below 256, domain
 * ids below 2^15); higher ones share their record with the id 2^16 below (stricter, never looser).
 */
const EP_SPACE = 1 << 16;
/** Blocks kept before stale ones are looked for. */
const SWEEP_AT = 64;

/** One count of refusals: 256 requester ids' worth, the low 8 bits of the id indexing them. */
class Records {
  readonly fails = new Uint32Array(BLOCK);
  /** When the lockout ends (ms, the owner's clock). */
  readonly until = new Float64Array(BLOCK);
  /** When the last refusal came; 0: the record is empty. */
  readonly last = new Float64Array(BLOCK);

  /** Counts a refusal of record i under `freeFails`: returns the lockout it now has (ms, 0 = none). */
  count(i: number, freeFails: number, rule: RefusalRule, now: number): number {
    if (this.last[i] !== 0 && now - this.last[i] >= rule.forgetMs) this.last[i] = 0;
    if (this.last[i] === 0) {
      this.fails[i] = 0;
      this.until[i] = 0;
    }
    // Never 0 (the empty mark), even on a clock that starts at 0.
    this.last[i] = now || Number.MIN_VALUE;
    const n = ++this.fails[i];
    if (n < freeFails) return 0;
    const ms = Math.min(rule.lockoutMs * 2 ** Math.min(n - freeFails, 16), rule.lockoutMaxMs);
    this.until[i] = now + ms;
    return ms;
  }
}

/** The records of 256 requester ids: each id's latest incarnation's, and the id's own. */
class Block {
  readonly incarnation = new Records();
  /** Which incarnation each incarnation record counts. */
  readonly which = new Uint32Array(BLOCK);
  readonly id = new Records();
  /** The latest refusal of any of them (the block is dropped `forgetMs` after it). */
  lastRefusal = 0;
}

export class RefusalThrottle {
  private readonly blocks = new Map<number, Block>();
  /**
   * When the last lockout of any record ends (0: none yet): until then lockedFor looks records
   * up, after it answers at once. It is asked on every delivery (delivery.ts) and every request
   * a NIC's own endpoints make (own-refusals.ts), and a table that ever refused anything keeps
   * blocks for forgetMs.
   */
  private latestUntil = 0;

  constructor(private readonly rule: RefusalRule) {}

  private static blockKey(nic: number, ep: number): number {
    return (nic >>> 0) * (EP_SPACE / BLOCK) + (((ep >>> 0) % EP_SPACE) >>> 8);
  }

  /**
   * How long incarnation `inc` of requester (nic, ep) must still wait, in whole ms (0: what it
   * presents may be looked at).
   */
  lockedFor(nic: number, ep: number, inc: number, now: number): number {
    if (now >= this.latestUntil) return 0;
    const b = this.blocks.get(RefusalThrottle.blockKey(nic, ep));
    if (b === undefined) return 0;
    const i = ep & (BLOCK - 1);
    let until = b.id.until[i];
    if (b.which[i] === inc >>> 0 && b.incarnation.until[i] > until) until = b.incarnation.until[i];
    return until > now ? Math.ceil(until - now) : 0;
  }

  /** Refusals on record for incarnation `inc` of requester (nic, ep) (0 once forgotten). */
  refusals(nic: number, ep: number, inc: number, now: number): number {
    const b = this.blocks.get(RefusalThrottle.blockKey(nic, ep));
    if (b === undefined) return 0;
    const i = ep & (BLOCK - 1);
    const r = b.incarnation;
    if (b.which[i] !== inc >>> 0 || r.last[i] === 0 || now - r.last[i] >= this.rule.forgetMs) return 0;
    return r.fails[i];
  }

  /** Incarnation `inc` of requester (nic, ep) was refused: returns the lockout it now has (ms, 0 = none). */
  failed(nic: number, ep: number, inc: number, now: number): number {
    const r = this.rule;
    const key = RefusalThrottle.blockKey(nic, ep);
    let b = this.blocks.get(key);
    if (b === undefined) {
      if (this.blocks.size >= SWEEP_AT) this.sweep(now);
      b = new Block();
      this.blocks.set(key, b);
    }
    const i = ep & (BLOCK - 1);
    // Another incarnation of the id: the new one starts clean (the id's record still counts it).
    if (b.which[i] !== inc >>> 0) {
      b.which[i] = inc >>> 0;
      b.incarnation.last[i] = 0;
    }
    const own = b.incarnation.count(i, r.freeFails, r, now);
    const all = b.id.count(i, r.idFreeFails, r, now);
    b.lastRefusal = b.id.last[i];
    const ms = Math.max(own, all);
    if (ms > 0 && now + ms > this.latestUntil) this.latestUntil = now + ms;
    return ms;
  }

  /**
   * Requester id (nic, ep) is no one's any more, and whoever gets it next is not its last
   * holder: both its records start over. Only for ids the owner hands out itself and never
   * to the same requester twice (netback: a domain id, once its domain is gone); a NIC's
   * requesters name their own sessions, so their ids keep their records.
   */
  forgetRequester(nic: number, ep: number): void {
    const b = this.blocks.get(RefusalThrottle.blockKey(nic, ep));
    if (b === undefined) return;
    const i = ep & (BLOCK - 1);
    for (const r of [b.incarnation, b.id]) {
      r.fails[i] = 0;
      r.until[i] = 0;
      r.last[i] = 0;
    }
  }

  /** Drops the blocks none of whose requesters was refused for forgetMs (their lockouts are over). */
  private sweep(now: number): void {
    for (const [key, b] of this.blocks)
      if (now - b.lastRefusal >= this.rule.forgetMs) this.blocks.delete(key);
  }
}

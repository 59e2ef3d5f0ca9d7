/**
 * A requester's refusals, counted by the party that refuses them, and past a free allowance
 * answered with a lockout that doubles: the rule for wrong endpoint keys (connect-throttle.ts:
 * the NIC, and netback on the split path) and for refused pulls (pull-throttle.ts). A
 * requester is a (NIC, endpoint id) pair. Its first `freeFails` refusals are answered plainly;
 * the last of them starts a lockout of `lockoutMs`, doubling with every refusal after it up
 * to `lockoutMaxMs`. During a lockout the owner answers without looking at what was presented
 * — the right key included, or the answer would still be an oracle. A record with no refusal
 * for `forgetMs` starts over. Nothing else clears one: a right key proves only that the
 * requester knew that endpoint's key (its own endpoint's, say), and a guesser that cleared its
 * record so between guesses was never locked out.
 *
 * Every requester has a record of its own, never given up for another's: the records come in
 * blocks of 256 requesters (one per NIC and high bits of the endpoint id), made on a first
 * refusal and dropped once none of theirs was refused for `forgetMs`. Requesters are few by
 * construction: a NIC's are its own endpoints and those of the peers on its authenticated
 * links (ids below 256, or the frame is refused unexamined), netback's are domain ids. The
 * table was set-associative (256 sets of 4 records), and a full set gave up a record for the
 * newcomer: five requesters of one guest in one set (endpoint ids 3, 11, 12, 27 and 29 of NIC
 * 1203, say) took turns and each found its record gone, so none ever reached a lockout and
 * keys were answered at full speed.
 */

/** How a throttle counts: see the module comment. */
export interface RefusalRule {
  freeFails: number;
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

/** The records of 256 requesters: 256 endpoint ids of one NIC, the low 8 bits indexing them. */
class Block {
  readonly fails = new Uint32Array(BLOCK);
  /** When the lockout ends (ms, the owner's clock). */
  readonly until = new Float64Array(BLOCK);
  /** When the last refusal came; 0: the record is empty. */
  readonly last = new Float64Array(BLOCK);
  /** The latest refusal of any of them (the block is dropped `forgetMs` after it). */
  lastRefusal = 0;
}

export class RefusalThrottle {
  private readonly blocks = new Map<number, Block>();

  constructor(private readonly rule: RefusalRule) {}

  private static blockKey(nic: number, ep: number): number {
    return (nic >>> 0) * (EP_SPACE / BLOCK) + (((ep >>> 0) % EP_SPACE) >>> 8);
  }

  /** How long requester (nic, ep) must still wait, in whole ms (0: what it presents may be looked at). */
  lockedFor(nic: number, ep: number, now: number): number {
    if (this.blocks.size === 0) return 0;
    const b = this.blocks.get(RefusalThrottle.blockKey(nic, ep));
    if (b === undefined) return 0;
    const until = b.until[ep & (BLOCK - 1)];
    return until > now ? Math.ceil(until - now) : 0;
  }

  /** Requester (nic, ep) was refused: returns the lockout it now has (ms, 0 = none). */
  failed(nic: number, ep: number, now: number): number {
    const r = this.rule;
    const key = RefusalThrottle.blockKey(nic, ep);
    let b = this.blocks.get(key);
    if (b === undefined) {
      if (this.blocks.size >= SWEEP_AT) this.sweep(now);
      b = new Block();
      this.blocks.set(key, b);
    }
    const i = ep & (BLOCK - 1);
    if (b.last[i] !== 0 && now - b.last[i] >= r.forgetMs) b.fails[i] = 0;
    if (b.last[i] === 0) {
      b.fails[i] = 0;
      b.until[i] = 0;
    }
    // Never 0 (the empty mark), even on a clock that starts at 0.
    b.last[i] = now || Number.MIN_VALUE;
    b.lastRefusal = b.last[i];
    const n = ++b.fails[i];
    if (n < r.freeFails) return 0;
    const ms = Math.min(r.lockoutMs * 2 ** Math.min(n - r.freeFails, 16), r.lockoutMaxMs);
    b.until[i] = now + ms;
    return ms;
  }

  /** Drops the blocks none of whose requesters was refused for forgetMs (their lockouts are over). */
  private sweep(now: number): void {
    for (const [key, b] of this.blocks)
      if (now - b.lastRefusal >= this.rule.forgetMs) this.blocks.delete(key);
  }
}

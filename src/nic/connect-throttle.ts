/**
 * Throttling of wrong endpoint keys, per requester, by the NIC that owns the
 * endpoint asked for (nic.ts: CONNECT descriptors, CONNECT_REQUEST frames, the driver's
 * lookup_endpoint). Endpoint keys are 32 bits: answered at full speed, a guesser would find
 * one in days. Here a requester's first CONNECT_FREE_FAILS wrong keys get their BAD_KEY at
 * once (an honest mistake, or two, is told so plainly); the last of them starts a lockout of
 * CONNECT_LOCKOUT_MS, doubling with every wrong key after it up to CONNECT_LOCKOUT_MAX_MS.
 * During a lockout the NIC answers REJECTED with the time left and does not look at the key —
 * the right one included, or the answer would still be an oracle. A right key forgives
 * nothing (a requester that knew another endpoint's key, its own, proves nothing about this
 * one's); a record with no failure for CONNECT_FORGET_MS starts over.
 *
 * So a requester tries at most a key a minute in the long run: 2^32 keys take one requester
 * about 8,000 years, and all 256 endpoints of a NIC together about 32. The cluster key lets
 * its holder claim any NIC id, so its requesters are the endpoint ids of every id it links
 * under; a NIC keeps at most 32 peer ids per remote address and 1,024 in all, counting those
 * linked within CONNECT_FORGET_MS (link-bound.ts; before, any number, so any rate): one
 * address's 32 × 256 requesters take about a year for 2^32 keys, 1,024 ids (from 32
 * addresses) about 11 days.
 *
 * A requester is one incarnation of an endpoint id (the session it has): the next owner of the
 * id starts clean, and the guesser's own NIC keeps its record across a reopen
 * (own-refusals.ts). A peer NIC that names a new session for every guess meets the id's record
 * instead: CONNECT_ID_FREE_FAILS free, then the same lockouts, so at most 8 keys every 11
 * minutes per id (about 6,400 years for 2^32 keys, 25 for all 256 ids of that NIC).
 *
 * The rule and its table are refusal-throttle.ts's, with these numbers.
 */

import { type RefusalRule, RefusalThrottle } from "./refusal-throttle.js";

export const CONNECT_FREE_FAILS = 4;
/** Free refusals of one requester id over all its incarnations (refusal-throttle.ts; a hostile peer NIC naming a new session per request meets this one). */
export const CONNECT_ID_FREE_FAILS = 2 * CONNECT_FREE_FAILS;
export const CONNECT_LOCKOUT_MS = 1000;
export const CONNECT_LOCKOUT_MAX_MS = 60_000;
export const CONNECT_FORGET_MS = 10 * 60_000;

/** The rule (refusal-throttle.ts): per incarnation of a requester, and per requester id. */
export const CONNECT_RULE: RefusalRule = {
  freeFails: CONNECT_FREE_FAILS,
  idFreeFails: CONNECT_ID_FREE_FAILS,
  lockoutMs: CONNECT_LOCKOUT_MS,
  lockoutMaxMs: CONNECT_LOCKOUT_MAX_MS,
  forgetMs: CONNECT_FORGET_MS,
};

/** Wrong endpoint keys, per requesting endpoint (the NIC's connect.ts, netback's mx-steer.ts). */
export class ConnectThrottle extends RefusalThrottle {
  constructor() {
    super(CONNECT_RULE);
  }
}

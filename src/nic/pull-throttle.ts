/**
 * Throttling of refused pulls, per requester, by the NIC that owns the pull rights
 * (exposure.ts PullRights.take: a local PULL through a right, a PULL_REQUEST from a peer NIC,
 * a remote PULL aimed at this NIC). A right's key is 32 bits and lives for one message, so
 * guessing is slow, but every refusal was answered at once: a peer NIC asking at wire speed
 * went through 2^32 keys in hours. Here a requester's first PULL_FREE_REFUSALS refused pulls
 * are answered as before; the last of them starts a lockout of PULL_LOCKOUT_MS, doubling with
 * every refusal after it up to PULL_LOCKOUT_MAX_MS (the rule of connect-throttle.ts). During a
 * lockout the NIC refuses the requester's pulls REJECTED without looking at the right — the
 * right key included, or the answer would still be an oracle. A record with no refusal for
 * PULL_FORGET_MS starts over. As with a CONNECT's right key, a pull taken forgives nothing: a
 * requester can always arm a right of its own (or a colluding guest's) and take it.
 *
 * A requester is one incarnation (the session it has) of an endpoint id on its NIC: one of this
 * NIC's, or one a peer NIC names in its PULL_REQUEST (below MAX_ENDPOINTS_LIMIT, or the frame
 * is refused unexamined), so a guest that guesses costs the other endpoints of its NIC nothing,
 * and the next owner of its id starts clean (refusal-throttle.ts; its own NIC keeps the
 * guesser's record across a reopen, own-refusals.ts). A hostile peer NIC naming a new session
 * per request meets the records of its 256 ids, PULL_ID_FREE_REFUSALS free each. Records are
 * per requester AND the endpoint whose rights it pulls (pullRecordId): a receiver pulls the
 * rights its senders name, so a hostile sender could otherwise spend its receiver's allowance
 * with bogus rights and lock it out of every honest sender's on that NIC.
 *
 * An honest requester pulls each rendezvous once, with the key its record carried: it is
 * refused only for a rendezvous whose send its sender had already failed (sends are not
 * cancelled; one ends on its receiver's NOTIFY), e.g. one whose SEND_ACK a lost link took
 * with it — at most DEST_CREDITS (32) per receiving endpoint per loss — or every rendezvous
 * of a sender that gave it up as a lost peer. 256 from one NIC within 10 minutes is far beyond
 * that. A guesser gets at most 256 answers per 10 minutes per requester (about one a minute if
 * it keeps on guessing); a hostile NIC about 30 a minute per id (320 free and 6 more in the
 * first minute of lockouts, then 10 minutes' wait for its record to be forgotten), about
 * 7,600 a minute for all 256: 2^32 guesses take it over a year, against about an hour at a
 * million PULL_REQUESTs a second.
 *
 * The rule and its table are refusal-throttle.ts's, with these numbers.
 */

import { type RefusalRule, RefusalThrottle } from "./refusal-throttle.js";

export const PULL_FREE_REFUSALS = 256;
/** Free refusals of one requester id over all its incarnations (refusal-throttle.ts; a hostile peer NIC naming a new session per request meets this one). */
export const PULL_ID_FREE_REFUSALS = PULL_FREE_REFUSALS + PULL_FREE_REFUSALS / 4;
export const PULL_LOCKOUT_MS = 1000;
export const PULL_LOCKOUT_MAX_MS = 60_000;
export const PULL_FORGET_MS = 10 * 60_000;

/** The rule (refusal-throttle.ts): per incarnation of a requester, and per requester id. */
export const PULL_RULE: RefusalRule = {
  freeFails: PULL_FREE_REFUSALS,
  idFreeFails: PULL_ID_FREE_REFUSALS,
  lockoutMs: PULL_LOCKOUT_MS,
  lockoutMaxMs: PULL_LOCKOUT_MAX_MS,
  forgetMs: PULL_FORGET_MS,
};

/**
 * The record id of requester endpoint `reqEp` (below MAX_ENDPOINTS_LIMIT) pulling rights of
 * owner endpoint `ownerEp`: one record per pair. A sender decides which rights its receiver
 * pulls (its rendezvous names them), so with one record per requester a hostile sender that
 * sent bogus rights got its receiver locked out of every endpoint's rights on that NIC, honest
 * senders' included. Per pair, it locks the receiver out of its own rights only; a guesser
 * still meets PULL_FREE_REFUSALS per endpoint whose rights it guesses.
 */
export function pullRecordId(reqEp: number, ownerEp: number): number {
  return (reqEp & 0xff) | ((ownerEp & 0xff) << 8);
}

/** Refused pulls, per requester and owner (exposure.ts PullRights.take). */
export class PullThrottle extends RefusalThrottle {
  constructor() {
    super(PULL_RULE);
  }
}

/**
 * Throttling of SENDs that name a wrong session, per requester (refusal-throttle.ts: one
 * incarnation of an endpoint id), by the NIC that owns the destination (delivery.ts). An
 * endpoint's session is a random 32-bit word that only a CONNECT with the right key reveals,
 * and a SEND must name it: it stands in for the key on every message. But a wrong one was answered BAD_SESSION at once, so a guest that never knew
 * the key could guess the session at the NIC's speed (2^32 SENDs, hours at most), and then send
 * into the endpoint as any connected peer: the receiving library learns a partner from its
 * first message. Here a requester's first SESSION_FREE_REFUSALS wrong sessions are answered as
 * before; the last of them starts a lockout of SESSION_LOCKOUT_MS, doubling with every one
 * after it up to SESSION_LOCKOUT_MAX_MS, during which its SENDs are refused REJECTED
 * (ErrorReason.Throttled) without looking at the session — the right one included.
 *
 * An honest sender names a stale session only after its peer reopened its endpoint: the SENDs
 * it had staged or in flight, a few dozen, before its library fails the peer. 256 within ten
 * minutes is far beyond that (the numbers of pull-throttle.ts, for the same reason).
 */

import { type RefusalRule, RefusalThrottle } from "./refusal-throttle.js";

export const SESSION_FREE_REFUSALS = 256;
/** Free refusals of one requester id over all its incarnations (refusal-throttle.ts; a hostile peer NIC naming a new session per request meets this one). */
export const SESSION_ID_FREE_REFUSALS = SESSION_FREE_REFUSALS + SESSION_FREE_REFUSALS / 4;
export const SESSION_LOCKOUT_MS = 1000;
export const SESSION_LOCKOUT_MAX_MS = 60_000;
export const SESSION_FORGET_MS = 10 * 60_000;

/** The rule (refusal-throttle.ts): per incarnation of a requester, and per requester id. */
export const SESSION_RULE: RefusalRule = {
  freeFails: SESSION_FREE_REFUSALS,
  idFreeFails: SESSION_ID_FREE_REFUSALS,
  lockoutMs: SESSION_LOCKOUT_MS,
  lockoutMaxMs: SESSION_LOCKOUT_MAX_MS,
  forgetMs: SESSION_FORGET_MS,
};

/** SENDs refused for a wrong session, per requester (delivery.ts Delivery.deliver). */
export class SessionThrottle extends RefusalThrottle {
  constructor() {
    super(SESSION_RULE);
  }
}

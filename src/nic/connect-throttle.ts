/**
 * Throttling of wrong endpoint keys, per requesting endpoint, by the NIC that owns the
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
 * about 8,000 years, and all 256 endpoints of a NIC together about 32. A requester is an
 * endpoint id on its NIC, whoever opens it: closing and reopening does not clear a lockout
 * (a new owner of that id may wait up to CONNECT_LOCKOUT_MAX_MS).
 *
 * The rule and its table are refusal-throttle.ts's, with these numbers.
 */

import { RefusalThrottle } from "./refusal-throttle.js";

export const CONNECT_FREE_FAILS = 4;
export const CONNECT_LOCKOUT_MS = 1000;
export const CONNECT_LOCKOUT_MAX_MS = 60_000;
export const CONNECT_FORGET_MS = 10 * 60_000;

/** Wrong endpoint keys, per requesting endpoint (the NIC's connect.ts, netback's mx-steer.ts). */
export class ConnectThrottle extends RefusalThrottle {
  constructor() {
    super({
      freeFails: CONNECT_FREE_FAILS,
      lockoutMs: CONNECT_LOCKOUT_MS,
      lockoutMaxMs: CONNECT_LOCKOUT_MAX_MS,
      forgetMs: CONNECT_FORGET_MS,
    });
  }
}

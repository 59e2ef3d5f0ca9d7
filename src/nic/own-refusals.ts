/**
 * What this NIC's own endpoints were refused by the NICs they asked, counted here per endpoint
 * id and owner, and enforced before a request leaves.
 *
 * A NIC that refuses counts per incarnation of the requester (refusal-throttle.ts), so that the
 * next owner of an endpoint id does not inherit a guesser's lockout. But then a guesser that
 * closes and reopens its endpoint draws a new session, and there a clean record. Its own NIC
 * sees every answer and knows who owns the endpoint, so it keeps counting across the reopen:
 * an owner that opens the id again picks up its record where it left it, and the same rules
 * (connect-throttle.ts, session-throttle.ts, pull-throttle.ts) refuse its CONNECTs, SENDs and
 * PULLs here — REJECTED, ErrorReason.Throttled, counted `own_requests_throttled` — without
 * sending them. Another owner given the id starts clean, here and at every NIC it asks.
 *
 * A record is per (answering NIC, endpoint id, owner), as the answering NIC's own is per
 * (requester NIC, endpoint id, incarnation): a lockout here stops what that NIC would refuse,
 * no more. What counts is what a refusing NIC counts and a guesser learns from: wrong keys
 * (BAD_KEY to a CONNECT), wrong sessions (BAD_SESSION to a SEND or a PULL) and refused pull
 * rights (BAD_KEY, BAD_RDMAWIN). An honest endpoint meets those only when a peer reopened under
 * it, a few dozen at a time, far below the allowances.
 *
 * Cost on the hot path: one comparison per request while none of this NIC's endpoints is
 * locked out (the latest end of any lockout here, against the round clock).
 */
import type { NicClock } from "./clock.js";
import { CONNECT_RULE } from "./connect-throttle.js";
import { NicCounter } from "./counters.js";
import { PULL_RULE } from "./pull-throttle.js";
import { type RefusalRule, RefusalThrottle } from "./refusal-throttle.js";
import { SESSION_RULE } from "./session-throttle.js";
import { MxStatus } from "./status.js";

/** This NIC never locks one of its own ids for what its owners did: only the owner. */
const perOwner = (rule: RefusalRule): RefusalRule => ({ ...rule, idFreeFails: Number.POSITIVE_INFINITY });

/** An endpoint of this NIC, as its records know it (endpoints.ts EndpointContext). */
export interface Requester {
  readonly id: number;
  /** Its owner label's hash (endpoints.ts ownerTag): the records' incarnation. */
  readonly ownerTag: number;
}

export class OwnRefusals {
  private readonly connects = new RefusalThrottle(perOwner(CONNECT_RULE));
  private readonly sessions = new RefusalThrottle(perOwner(SESSION_RULE));
  private readonly pulls = new RefusalThrottle(perOwner(PULL_RULE));
  /** When the last lockout of each kind ends (ms, the round clock; 0: none yet). */
  private connectsUntil = 0;
  private sessionsUntil = 0;
  private pullsUntil = 0;

  constructor(
    /** The NIC's round clock. */
    private readonly clock: NicClock,
    private readonly c: Float64Array,
  ) {}

  /** A wait of `ms` (> 0: the request is refused unsent, and counted). */
  private refused(ms: number): number {
    if (ms > 0) this.c[NicCounter.own_requests_throttled]++;
    return ms;
  }

  /** ms the owner of `r` must wait before a CONNECT of `r` to NIC `nic` is sent (0: none). */
  connectWait(r: Requester, nic: number): number {
    const now = this.clock.now;
    return now >= this.connectsUntil ? 0 : this.refused(this.connects.lockedFor(nic, r.id, r.ownerTag, now));
  }

  /** ms the owner of `r` must wait before a SEND of `r` to NIC `nic` is sent (0: none). */
  sendWait(r: Requester, nic: number): number {
    const now = this.clock.now;
    return now >= this.sessionsUntil ? 0 : this.refused(this.sessions.lockedFor(nic, r.id, r.ownerTag, now));
  }

  /** ms the owner of `r` must wait before a PULL of `r` through a right on NIC `nic` is sent (0: none). */
  pullWait(r: Requester, nic: number): number {
    const now = this.clock.now;
    return now >= this.pullsUntil ? 0 : this.refused(this.pulls.lockedFor(nic, r.id, r.ownerTag, now));
  }

  /** NIC `nic` answered a CONNECT of `r` with `status`. */
  connectAnswered(r: Requester, nic: number, status: number): void {
    if (status === MxStatus.BAD_KEY)
      this.connectsUntil = this.count(this.connects, this.connectsUntil, r, nic);
  }

  /** NIC `nic` ended a SEND of `r` with `status`. */
  sendAnswered(r: Requester, nic: number, status: number): void {
    if (status === MxStatus.BAD_SESSION)
      this.sessionsUntil = this.count(this.sessions, this.sessionsUntil, r, nic);
  }

  /** NIC `nic` ended a PULL of `r` through a right with `status`. */
  pullAnswered(r: Requester, nic: number, status: number): void {
    if (status === MxStatus.BAD_SESSION || status === MxStatus.BAD_KEY || status === MxStatus.BAD_RDMAWIN)
      this.pullsUntil = this.count(this.pulls, this.pullsUntil, r, nic);
  }

  /** Counts a refusal of `r` by `nic` in `records`; returns when the latest lockout of that kind ends. */
  private count(records: RefusalThrottle, until: number, r: Requester, nic: number): number {
    const now = this.clock.now;
    const ms = records.failed(nic, r.id, r.ownerTag, now);
    return ms > 0 && now + ms > until ? now + ms : until;
  }
}

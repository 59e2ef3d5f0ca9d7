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
 * (requester NIC, endpoint id, incarnation) — a pull's, per right owner too (pull-throttle.ts
 * pullRecordId) —: a lockout here stops what that NIC would refuse, no more. What counts is what a refusing NIC counts and a guesser learns from: wrong keys
 * (BAD_KEY to a CONNECT), wrong sessions (BAD_SESSION to a SEND or a PULL) and refused pull
 * rights (BAD_KEY, BAD_RDMAWIN). An honest endpoint meets those only when a peer reopened under
 * it, a few dozen at a time, far below the allowances.
 *
 * Cost on the hot path: one comparison per request while none of this NIC's endpoints is
 * locked out (refusal-throttle.ts keeps the latest end of any lockout).
 */
import type { NicClock } from "./clock.js";
import { CONNECT_RULE } from "./connect-throttle.js";
import { NicCounter } from "./counters.js";
import { PULL_RULE, pullRecordId } from "./pull-throttle.js";
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

  constructor(
    /** The NIC's round clock. */
    private readonly clock: NicClock,
    private readonly c: Float64Array,
  ) {}

  /** ms the owner of `r` must wait before a CONNECT of `r` to NIC `nic` is sent (0: none). */
  connectWait(r: Requester, nic: number): number {
    return this.wait(this.connects, r, nic);
  }

  /** ms the owner of `r` must wait before a SEND of `r` to NIC `nic` is sent (0: none). */
  sendWait(r: Requester, nic: number): number {
    return this.wait(this.sessions, r, nic);
  }

  /** ms the owner of `r` must wait before a PULL of `r` through a right of endpoint `ownerEp` on NIC `nic` is sent (0: none). */
  pullWait(r: Requester, nic: number, ownerEp: number): number {
    const ms = this.pulls.lockedFor(nic, pullRecordId(r.id, ownerEp), r.ownerTag, this.clock.now);
    if (ms > 0) this.c[NicCounter.own_requests_throttled]++;
    return ms;
  }

  /** NIC `nic` answered a CONNECT of `r` with `status`. */
  connectAnswered(r: Requester, nic: number, status: number): void {
    if (status === MxStatus.BAD_KEY) this.connects.failed(nic, r.id, r.ownerTag, this.clock.now);
  }

  /** NIC `nic` ended a SEND of `r` with `status`. */
  sendAnswered(r: Requester, nic: number, status: number): void {
    if (status === MxStatus.BAD_SESSION) this.sessions.failed(nic, r.id, r.ownerTag, this.clock.now);
  }

  /** NIC `nic` ended a PULL of `r` through a right of endpoint `ownerEp` with `status`. */
  pullAnswered(r: Requester, nic: number, ownerEp: number, status: number): void {
    if (status === MxStatus.BAD_SESSION || status === MxStatus.BAD_KEY || status === MxStatus.BAD_RDMAWIN)
      this.pulls.failed(nic, pullRecordId(r.id, ownerEp), r.ownerTag, this.clock.now);
  }

  /** The wait `records` give `r` towards `nic` (> 0: the request is refused unsent, and counted). */
  private wait(records: RefusalThrottle, r: Requester, nic: number): number {
    const ms = records.lockedFor(nic, r.id, r.ownerTag, this.clock.now);
    if (ms > 0) this.c[NicCounter.own_requests_throttled]++;
    return ms;
  }
}

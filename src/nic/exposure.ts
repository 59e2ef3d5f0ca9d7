/**
 * The NIC's side of the exposure table (window.ts): taking a pull right for one PULL, checking
 * it before each chunk of the copy, and ending it. The table lives in the owner's window, so
 * every word is read once with Atomics and checked here; the transitions follow the order
 * window.ts documents. PullRights puts the owner endpoint's checks (open, session) in front,
 * for the local DMA engine (dma.ts) and the serving side of remote pulls (remote-pull.ts), and
 * the requester's refused pulls (pull-throttle.ts) before those.
 * Numbers only: the per-pull paths allocate nothing.
 */
import type { NicClock } from "./clock.js";
import { NicCounter } from "./counters.js";
import type { EndpointContext, EndpointTable } from "./endpoints.js";
import { PullThrottle, pullRecordId } from "./pull-throttle.js";
import { MxStatus, REASON_STATUS } from "./status.js";
import type { Tpt } from "./tpt.js";
import {
  Access,
  ErrorReason,
  EXPOSURE_ENTRIES,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "./window.js";

const XW = EXPOSURE_OFFSET / 4;

/** Where a taken right points: set by takeExposure when it answers SUCCESS. */
export class ExposureGrant {
  /** The exposed region's id and TPT slot. */
  region = 0;
  slot = -1;
  /** Where the pull starts in that region (the exposed range's offset plus the pull's). */
  start = 0;
  /** PullRights.take's refusal as an ErrorReason (for a local PULL's ERROR event); 0 when taken. */
  refusal = 0;
}

/**
 * Takes exposure `index` of endpoint `owner` (its window `w`) for one pull of [off, off + len)
 * of the exposed range, presenting `key`: 0 (taken: the entry is Busy and `out` says where to
 * copy from) or the ErrorReason of the refusal — NoRight (nothing armed there, or re-armed
 * meanwhile), BadKey, OutOfBounds (outside the exposed range or the region), BadRegion (the
 * region is gone), UnknownEndpoint (it went with its endpoint), Permission (a region that is
 * not the owner's, or without REMOTE_READ). The caller checked the owner endpoint and session.
 */
export function takeExposure(
  w: Int32Array,
  owner: number,
  index: number,
  key: number,
  off: number,
  len: number,
  tpt: Tpt,
  out: ExposureGrant,
): number {
  if (index >= EXPOSURE_ENTRIES) return ErrorReason.NoRight;
  const b = XW + index * EXPOSURE_WORDS;
  if (Atomics.load(w, b + X_STATE) !== ExposureState.Armed) return ErrorReason.NoRight;
  if (key === 0 || Atomics.load(w, b + X_KEY) >>> 0 !== key) return ErrorReason.BadKey;
  // Copied out once: the owner may rewrite them at any time.
  const region = Atomics.load(w, b + X_REGION) >>> 0;
  const xOff = Atomics.load(w, b + X_OFFSET) >>> 0;
  const xLen = Atomics.load(w, b + X_LENGTH) >>> 0;
  // Overflow-safe: off and len are u32, so neither sum below leaves the exact doubles.
  if (off > xLen || len > xLen - off) return ErrorReason.OutOfBounds;
  const slot = tpt.lookup(region);
  if (slot < 0) return tpt.closedWithEndpoint(region) ? ErrorReason.UnknownEndpoint : ErrorReason.BadRegion;
  if (tpt.owner[slot] !== owner || (tpt.access[slot] & Access.RemoteRead) === 0)
    return ErrorReason.Permission;
  if (!tpt.inBounds(slot, xOff + off, len)) return ErrorReason.OutOfBounds;
  if (
    Atomics.compareExchange(w, b + X_STATE, ExposureState.Armed, ExposureState.Busy) !== ExposureState.Armed
  )
    return ErrorReason.NoRight;
  if (Atomics.load(w, b + X_KEY) >>> 0 !== key) {
    // Re-armed between our reads and the CAS: what we read is not this arming's. Give it back.
    if (
      Atomics.compareExchange(w, b + X_STATE, ExposureState.Busy, ExposureState.Armed) !== ExposureState.Busy
    )
      endExposure(w, index);
    return ErrorReason.NoRight;
  }
  out.region = region;
  out.slot = slot;
  out.start = xOff + off;
  return 0;
}

/** Whether a transfer may go on copying from exposure `index`: it is still Busy (not revoked). */
export function exposureLive(w: Int32Array, index: number): boolean {
  return Atomics.load(w, XW + index * EXPOSURE_WORDS + X_STATE) === ExposureState.Busy;
}

/** The transfer on exposure `index` ended (done, failed or revoked): the right is spent. */
export function endExposure(w: Int32Array, index: number): void {
  const at = XW + index * EXPOSURE_WORDS + X_STATE;
  if (Atomics.compareExchange(w, at, ExposureState.Busy, ExposureState.Used) !== ExposureState.Busy)
    Atomics.compareExchange(w, at, ExposureState.Revoking, ExposureState.Used);
}

/** Pull rights of this NIC's endpoints, by (owner endpoint, session, entry). */
export class PullRights {
  /** Refused pulls, per requesting endpoint (pull-throttle.ts). */
  private readonly throttle = new PullThrottle();

  constructor(
    private readonly eps: EndpointTable,
    private readonly tpt: Tpt,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
  ) {}

  /** This NIC's id: the requester NIC of its own endpoints' pulls. */
  get nicId(): number {
    return this.eps.nicId;
  }

  /** take() for a pull of this NIC's own endpoint `ctx` (the requester is it, as it is now). */
  takeFor(
    ctx: EndpointContext,
    ep: number,
    session: number,
    index: number,
    key: number,
    off: number,
    len: number,
    out: ExposureGrant,
  ): number {
    return this.take(this.eps.nicId, ctx.id, ctx.session, ep, session, index, key, off, len, out);
  }

  /**
   * Takes the pull right `index` (presenting `key`) that endpoint `ep` with session `session`
   * armed, for [off, off + len) of what it exposes: SUCCESS (`out` says where to copy from; the
   * right is Busy until end()) or the MX status of the refusal, with its ErrorReason in
   * out.refusal. The region's own key plays no part: a peer reaches another endpoint's memory
   * only through a right armed for that one message. The requester is endpoint `reqEp` of NIC
   * `reqNic` in its incarnation `reqSession`: while it is locked out for its refused pulls,
   * REJECTED (Throttled), unexamined.
   */
  take(
    reqNic: number,
    reqEp: number,
    reqSession: number,
    ep: number,
    session: number,
    index: number,
    key: number,
    off: number,
    len: number,
    out: ExposureGrant,
  ): number {
    const now = this.clock.now;
    const rec = pullRecordId(reqEp, ep);
    if (this.throttle.lockedFor(reqNic, rec, reqSession, now) > 0) {
      this.c[NicCounter.pulls_throttled]++;
      out.refusal = ErrorReason.Throttled;
      return MxStatus.REJECTED;
    }
    out.refusal = ErrorReason.UnknownEndpoint;
    if (ep >= this.eps.maxEndpoints) return MxStatus.ENDPOINT_UNKNOWN;
    const owner = this.eps.ctxs[ep];
    if (!owner.open) return MxStatus.ENDPOINT_CLOSED;
    out.refusal = ErrorReason.BadSession;
    if (owner.session !== session >>> 0) {
      // A refusal like a wrong key: the session stands in for the endpoint's key on every SEND
      // (session-throttle.ts), so answering wrong ones at once made raw PULLs a session oracle.
      this.c[NicCounter.pull_rights_refused]++;
      this.throttle.failed(reqNic, rec, reqSession, now);
      return MxStatus.BAD_SESSION;
    }
    const reason = takeExposure(owner.w, ep, index >>> 0, key >>> 0, off >>> 0, len >>> 0, this.tpt, out);
    out.refusal = reason;
    if (reason === 0) {
      this.c[NicCounter.pull_rights_taken]++;
      return MxStatus.SUCCESS;
    }
    this.c[NicCounter.pull_rights_refused]++;
    // Every refusal is answered at once, so nothing slowed a guesser of 32-bit keys down: past
    // PULL_FREE_REFUSALS, its pulls are refused unexamined for a while (pull-throttle.ts).
    this.throttle.failed(reqNic, rec, reqSession, now);
    // The region went with its endpoint: the puller hears that the peer closed, as MX would say.
    return reason === ErrorReason.UnknownEndpoint ? MxStatus.ENDPOINT_CLOSED : REASON_STATUS[reason];
  }

  /** The transfer under right `index` of endpoint `ep` (session `session`) ended: it is spent. -1: no right. */
  end(ep: number, session: number, index: number): void {
    if (index < 0 || ep >= this.eps.maxEndpoints) return;
    const owner = this.eps.ctxs[ep];
    if (owner.open && owner.session === session) endExposure(owner.w, index);
  }

  /** Whether a transfer may copy on under that right: its owner has not revoked it. */
  live(ep: number, session: number, index: number): boolean {
    const owner = this.eps.ctxs[ep];
    return owner.open && owner.session === session && exposureLive(owner.w, index);
  }
}

/**
 * The DMA engine for local PULLs (Open-MX's driver/linux/omx_dma.c): a copy into a region of
 * the pulling endpoint, from another of its regions (its own key), from a pull right another
 * endpoint of this NIC armed (DFLAG_EXPOSURE), or from a remote pull's source found on this
 * NIC (remote-pull.ts, without a loopback link). Both ranges are checked against the TPT
 * first, the destination before the source, so a descriptor refused for its destination does
 * not spend a pull right. A copy up to PULL_CHUNK is done at once; a longer one a chunk per
 * round (other endpoints are served in between), while the endpoint's later descriptors wait,
 * so its completions stay in order.
 */
import { traceNow } from "./clock.js";
import { EndpointCounter, NicCounter } from "./counters.js";
import type { EndpointContext } from "./endpoints.js";
import type { Events } from "./events.js";
import { ExposureGrant, type PullRights } from "./exposure.js";
import { MxStatus } from "./status.js";
import type { Tpt } from "./tpt.js";
import {
  Access,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_SESSION,
  D_DST_OFFSET,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_OFFSET,
  D_SRC_REGION,
  DFLAG_EXPOSURE,
  DFLAG_TRACE,
  ErrorReason,
} from "./window.js";

/** A PULL longer than this is copied a chunk per round (other endpoints are served in between). */
export const PULL_CHUNK = 1 << 20;

export class DmaEngine {
  /** Where a pull right this engine took points. */
  private readonly grant = new ExposureGrant();

  constructor(
    private readonly tpt: Tpt,
    private readonly rights: PullRights,
    private readonly events: Events,
    private readonly c: Float64Array,
  ) {}

  /** Executes ctx's local PULL descriptor `d`. Returns the bytes copied in this round. */
  execPull(ctx: EndpointContext, d: Int32Array): number {
    // nic-seen: a traced descriptor is stamped as the NIC takes it (window.ts, DFLAG_TRACE).
    const seenAt = (d[D_OPCODE] >>> 16) & DFLAG_TRACE ? traceNow() : 0;
    const t = this.tpt;
    const len = d[D_LENGTH] >>> 0;
    const srcOff = d[D_SRC_OFFSET] >>> 0;
    const dstOff = d[D_DST_OFFSET] >>> 0;
    const dst = t.lookup(d[D_DST_REGION]);
    // The destination first: a descriptor refused for it must not spend a pull right.
    let reason = 0;
    if (dst < 0) reason = ErrorReason.BadRegion;
    else if (t.owner[dst] !== ctx.id || (t.access[dst] & Access.LocalWrite) === 0)
      reason = ErrorReason.Permission;
    else if (!t.inBounds(dst, dstOff, len)) reason = ErrorReason.OutOfBounds;
    if (reason !== 0) {
      this.events.postError(ctx, d, reason);
      return 0;
    }
    if ((d[D_OPCODE] >>> 16) & DFLAG_EXPOSURE) {
      // Another endpoint's memory: only through the pull right it armed for this message.
      const srcEp = d[D_DEST_ENDPOINT] >>> 0;
      const srcSession = d[D_DEST_SESSION] >>> 0;
      const index = d[D_SRC_REGION] >>> 0;
      const g = this.grant;
      // Its owner locked out here for refused pulls, as own-refusals.ts counts: not looked at.
      if (this.events.own.pullWait(ctx, this.rights.nicId, srcEp) > 0) {
        this.events.postError(ctx, d, ErrorReason.Throttled);
        return 0;
      }
      const status = this.rights.takeFor(ctx, srcEp, srcSession, index, d[D_SRC_KEY], srcOff, len, g);
      if (status !== MxStatus.SUCCESS) {
        this.events.own.pullAnswered(ctx, this.rights.nicId, srcEp, status);
        this.events.postError(ctx, d, g.refusal, status);
        return 0;
      }
      this.c[NicCounter.pulls]++;
      this.c[ctx.base + EndpointCounter.pulls]++;
      return this.startCopy(
        ctx,
        d,
        g.slot,
        g.region,
        g.start,
        dst,
        dstOff,
        len,
        seenAt,
        srcEp,
        srcSession,
        index,
      );
    }
    // A copy between two regions of this endpoint: its own key is enough.
    const src = t.lookup(d[D_SRC_REGION]);
    if (src < 0) reason = ErrorReason.BadRegion;
    else if (t.owner[src] !== ctx.id || (t.access[src] & (Access.LocalRead | Access.RemoteRead)) === 0)
      reason = ErrorReason.Permission;
    else if (t.key[src] !== d[D_SRC_KEY] >>> 0) reason = ErrorReason.BadKey;
    else if (!t.inBounds(src, srcOff, len)) reason = ErrorReason.OutOfBounds;
    if (reason !== 0) {
      this.events.postError(ctx, d, reason);
      return 0;
    }
    this.c[NicCounter.pulls]++;
    this.c[ctx.base + EndpointCounter.pulls]++;
    return this.startCopy(ctx, d, src, d[D_SRC_REGION] >>> 0, srcOff, dst, dstOff, len, seenAt, 0, 0, -1);
  }

  /**
   * Copies ctx's PULL descriptor `d` (both ranges checked) from region `src` (slot; id
   * `srcId`) into region slot `dst` (d's D_DST_REGION): now, or a chunk per round. `xp` ≥ 0:
   * the pull right of endpoint (`xpEp`, `xpSession`) it copies under, spent when the copy
   * ends. Returns the bytes copied now (0 for a chunked copy: each chunk is a round's work).
   */
  startCopy(
    ctx: EndpointContext,
    d: Int32Array,
    src: number,
    srcId: number,
    srcOff: number,
    dst: number,
    dstOff: number,
    len: number,
    seenAt: number,
    xpEp: number,
    xpSession: number,
    xp: number,
  ): number {
    if (len <= PULL_CHUNK) {
      this.tpt.copy(src, srcOff, dst, dstOff, len);
      this.rights.end(xpEp, xpSession, xp);
      this.countPulled(ctx, len);
      this.events.postPullDone(ctx, d[D_COOKIE], len, MxStatus.SUCCESS, seenAt, this.rights.nicId, ctx.id);
      return len;
    }
    // Large: a chunk per round, this endpoint's later descriptors waiting (completions stay in order).
    ctx.pulling = true;
    ctx.pullXp = xp;
    ctx.pullXpEp = xpEp;
    ctx.pullXpSession = xpSession;
    ctx.pullSrcId = srcId;
    ctx.pullDstId = d[D_DST_REGION] >>> 0;
    ctx.pullSrcOff = srcOff;
    ctx.pullDstOff = dstOff;
    ctx.pullLeft = len;
    ctx.pullLen = len;
    ctx.pullCookie = d[D_COOKIE];
    ctx.pullSeenAt = seenAt;
    return 0;
  }

  /** Copies the next chunk of ctx's pull (ctx.pulling). */
  copyChunk(ctx: EndpointContext): void {
    const t = this.tpt;
    // Regions are immutable while their id resolves; one that went away ends the pull, and so
    // does a right its owner revoked (looked at before every chunk). Both regions must still be
    // the owners' the copy began for (the source: the right's owner, or this endpoint), not
    // only resolve: a 16-bit generation that wrapped must not hand it another's memory.
    const src = t.lookup(ctx.pullSrcId);
    const dst = t.lookup(ctx.pullDstId);
    const revoked = ctx.pullXp >= 0 && !this.rights.live(ctx.pullXpEp, ctx.pullXpSession, ctx.pullXp);
    if (
      src < 0 ||
      dst < 0 ||
      t.owner[dst] !== ctx.id ||
      t.owner[src] !== (ctx.pullXp >= 0 ? ctx.pullXpEp : ctx.id) ||
      revoked
    ) {
      if (revoked) this.c[NicCounter.pull_rights_revoked]++;
      this.stop(ctx);
      this.events.postPullDone(
        ctx,
        ctx.pullCookie,
        ctx.pullLen - ctx.pullLeft,
        MxStatus.ABORTED,
        0,
        this.rights.nicId,
        ctx.pullXpEp,
      );
      return;
    }
    const n = Math.min(PULL_CHUNK, ctx.pullLeft);
    t.copy(src, ctx.pullSrcOff, dst, ctx.pullDstOff, n);
    ctx.pullSrcOff += n;
    ctx.pullDstOff += n;
    ctx.pullLeft -= n;
    this.countPulled(ctx, n);
    if (ctx.pullLeft === 0) {
      this.stop(ctx);
      this.events.postPullDone(
        ctx,
        ctx.pullCookie,
        ctx.pullLen,
        MxStatus.SUCCESS,
        ctx.pullSeenAt,
        this.rights.nicId,
        ctx.pullXpEp,
      );
    }
  }

  /** Ends ctx's chunked pull, if any: its pull right is spent. */
  stop(ctx: EndpointContext): void {
    if (!ctx.pulling) return;
    ctx.pulling = false;
    this.rights.end(ctx.pullXpEp, ctx.pullXpSession, ctx.pullXp);
    ctx.pullXp = -1;
  }

  private countPulled(ctx: EndpointContext, n: number): void {
    this.c[NicCounter.pull_bytes] += n;
    this.c[NicCounter.pull_chunks]++;
    this.c[ctx.base + EndpointCounter.pull_bytes] += n;
  }
}

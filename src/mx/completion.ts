/**
 * Completion (the completion side of Open-MX's omx_test.c): a request's status becomes final,
 * what it held goes back (its pull right, registration and bounce buffer), and it waits in
 * the completion queue until the program reaps it with test/wait — or finds it with
 * test_any/ipeek.
 *
 * The queue is cleaned lazily: a reaped request is skipped there and swept out in batches,
 * so reaping costs no search. A rendezvous send's data stays readable by the receiver's NIC
 * until its pull right is revoked: if the NIC is still copying, the send is Revoking and
 * completes once the NIC lets go (`finishRevokes`, on the progress loop's sweeps).
 */

import { MxStatus } from "../nic/status.js";
import type { PullRights } from "./pull-rights.js";
import type { Regions } from "./regions.js";
import { TraceStage, traceNow } from "./trace.js";
import { type EndpointContext, type MxRequest, type MxStatusInfo, RequestState } from "./types.js";

/** Reaped requests swept out of the completion queue at once. */
const COMPACT_AFTER = 256;

const u32 = (n: number) => n >>> 0;

export class Completion {
  /** Completed requests in completion order (reaped ones linger until the next sweep). */
  private readonly completed: MxRequest[] = [];
  private reapedInQueue = 0;
  /** Sends whose completion waits for the NIC to stop copying under their revoked right. */
  private readonly revoking: MxRequest[] = [];

  constructor(
    private readonly ctx: EndpointContext,
    private readonly regions: Regions,
    private readonly rights: PullRights,
  ) {}

  /** Completes `req` with (code, xfer): at once, or once the NIC lets go of its pull right. Twice is once. */
  complete(req: MxRequest, code: number, xfer: number): void {
    if (req.state >= RequestState.Revoking) return;
    // A rendezvous send's pull right ends with it; its buffer is ours again only once it has.
    if (req.xp >= 0 && !this.rights.revoke(req)) {
      req.state = RequestState.Revoking;
      req.revokedCode = code;
      req.revokedXfer = xfer;
      this.revoking.push(req);
      return;
    }
    this.finish(req, code, xfer);
  }

  private finish(req: MxRequest, code: number, xfer: number): void {
    // A view of checkBuffer's reads as empty once its buffer was resized or detached: a send
    // that lost it while in flight, or a receive whose bounce copy-out would find it gone.
    if (
      req.kind === "send"
        ? !req.staged && req.buffer.length < req.msgLength
        : req.bounce !== undefined && xfer > req.buffer.length
    )
      req.lostBuffer = true;
    if (req.lostBuffer && (code === MxStatus.SUCCESS || code === MxStatus.TRUNCATED)) {
      code = MxStatus.ABORTED;
      req.reason ??=
        req.kind === "send"
          ? "isend: its buffer was resized or detached while the message was sent; the receiver got zeros for what it no longer held"
          : "irecv: its buffer was resized or detached while the message arrived; what did not fit was dropped";
    }
    req.code = code;
    req.xferLength = xfer;
    req.state = RequestState.Done;
    this.regions.release(req, xfer);
    // Forgotten: nobody will test or wait for it, so the queue does not keep it (nor its buffer).
    if (req.forgotten) req.state = RequestState.Reaped;
    else this.completed.push(req);
  }

  /**
   * mx_forget: `req` completes as it would (what it holds goes back then), but is never
   * reported: one already done is reaped now, one in flight leaves no trace in the queue.
   */
  forget(req: MxRequest): void {
    if (req.state === RequestState.Reaped) return;
    if (req.state === RequestState.Done) this.reap(req);
    else req.forgotten = true;
  }

  /** Sends whose revoked rights the NIC has let go of complete now. */
  finishRevokes(): void {
    const list = this.revoking;
    for (let i = list.length - 1; i >= 0; i--) {
      const req = list[i];
      if (!this.rights.released(req)) continue;
      list.splice(i, 1);
      this.finish(req, req.revokedCode, req.revokedXfer);
    }
  }

  /** The endpoint closed: its window, and every right in it, is gone; no copy can be under way. */
  abandonRevokes(): void {
    for (const req of this.revoking.splice(0)) {
      req.xp = -1;
      this.finish(req, req.revokedCode, req.revokedXfer);
    }
  }

  /** Hands a completed request to the user. */
  reap(req: MxRequest): MxStatusInfo {
    if (req.state !== RequestState.Reaped) {
      req.state = RequestState.Reaped;
      const tb = this.ctx.trace;
      if (tb !== undefined && req.traceId !== 0 && req.kind === "recv")
        tb.record(req.traceId, TraceStage.Completed, traceNow());
      if (++this.reapedInQueue >= COMPACT_AFTER) this.compact();
    }
    return req;
  }

  private compact(): void {
    let k = 0;
    for (const r of this.completed) if (r.state !== RequestState.Reaped) this.completed[k++] = r;
    this.completed.length = k;
    this.reapedInQueue = 0;
  }

  /** mx_test_any's lookup: the first completed, unreaped request whose match value fits (mh, ml) under (mmh, mml). */
  find(mh: number, ml: number, mmh: number, mml: number): MxRequest | undefined {
    for (const r of this.completed) {
      if (
        r.state !== RequestState.Reaped &&
        (r.matchHi & mmh) >>> 0 === u32(mh) &&
        (r.matchLo & mml) >>> 0 === u32(ml)
      )
        return r;
    }
    return undefined;
  }

  /** mx_ipeek's lookup: the first completed, unreaped request. */
  first(): MxRequest | undefined {
    for (const r of this.completed) if (r.state !== RequestState.Reaped) return r;
    return undefined;
  }
}

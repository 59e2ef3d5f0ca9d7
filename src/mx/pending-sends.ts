/**
 * Sends that wait for their receiver's answer, by sync id: synchronous sends (issend: the
 * receiver matched) and every rendezvous (the receiver pulled the data). The id travels in
 * the record (records.ts AUX_SYNC_ID); the receiver's NOTIFY names it, whichever way it
 * comes back; over Ethernet the receiver's PULL names it too.
 */
import { MxStatus } from "../nic/status.js";
import type { Completion } from "./completion.js";
import type { EndpointContext, MxRequest, Partner, PeerLossListener } from "./types.js";

export class PendingSends implements PeerLossListener {
  private readonly bySyncId = new Map<number, MxRequest>();

  constructor(
    private readonly ctx: EndpointContext,
    private readonly completion: Completion,
  ) {}

  /** Sends waiting now. */
  get size(): number {
    return this.bySyncId.size;
  }

  /** The send gets a sync id its receiver will answer to. */
  add(req: MxRequest): void {
    req.syncId = this.ctx.newId(this.bySyncId);
    this.bySyncId.set(req.syncId, req);
  }

  /** The send waiting on `syncId`, if any (it keeps waiting). */
  get(syncId: number): MxRequest | undefined {
    return this.bySyncId.get(syncId);
  }

  /** The send failed on its own: it waits for no answer. */
  forget(req: MxRequest): void {
    this.bySyncId.delete(req.syncId);
  }

  /**
   * A NOTIFY from `from`: the receiver matched our synchronous send, or pulled our rendezvous.
   * Only the peer the send went to may answer it: sync ids are sequential, and a NOTIFY any
   * connected peer could forge would complete another pair's send (its receiver then never
   * gets the data).
   */
  answer(from: Partner, syncId: number, xfer: number, status: number): void {
    const req = this.bySyncId.get(syncId);
    if (req === undefined || req.peer !== from) {
      this.ctx.counters.channelErrors++;
      return;
    }
    this.bySyncId.delete(syncId);
    if (status !== MxStatus.SUCCESS && status !== MxStatus.TRUNCATED)
      req.reason ??=
        "the receiver ended the transfer without taking it (it disconnected from us, or its receive failed)";
    this.completion.complete(
      req,
      status === MxStatus.TRUNCATED ? MxStatus.SUCCESS : status,
      Math.min(xfer, req.buffer.length),
    );
  }

  /** The sends waiting, for the liveness probes (nic-path.ts). */
  values(): IterableIterator<MxRequest> {
    return this.bySyncId.values();
  }

  peerLost(peer: Partner, why: string, code: number): void {
    for (const [id, r] of this.bySyncId) {
      if (r.peer === peer) {
        this.bySyncId.delete(id);
        r.reason ??= why;
        this.completion.complete(r, code, 0);
      }
    }
  }
}

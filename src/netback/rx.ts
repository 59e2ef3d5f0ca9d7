/**
 * netback's RX path, bridge → guest (Linux's xen-netback rx.c): the bridge hands a staged
 * frame to a vif's port; the vif must have posted RX buffers for every page of it (else the
 * frame is dropped and counted, as netback does), each buffer gets one grant-copy op from
 * dom0's staging page and its response in its request's slot; one GNTTABOP_copy batch per
 * pass copies every RX piece. A buffer the guest posted but may not have us write fails its
 * slot (NETIF_RSP_ERROR), never the pass.
 */

import { PAGE_SHIFT, PAGE_SIZE } from "../xen/abi.js";
import type { GrantCopyOp } from "../xen/grant-table.js";
import type { Guest } from "../xen/guest/guest.js";
import {
  NETIF_RSP_ERROR,
  NETRXF_more_data,
  RX_REQ_BYTES,
  RX_REQ_GREF,
  RX_REQ_ID,
  RX_RSP_STATUS,
  writeRxResponse,
} from "../xen/io/netif.js";
import type { NetbackCounters } from "./counters.js";
import { copyBatch, grow, STAGING_FRAMES, type StagedFrame } from "./staging.js";
import { VifCounter } from "./stats.js";
import { reportBadPacket, type Vif } from "./vif.js";

export class RxPath {
  // Scratch, allocated once: the request in hand and the pass's copy ops.
  private readonly req = new Uint8Array(RX_REQ_BYTES);
  private readonly reqView = new DataView(this.req.buffer);
  private readonly pool: GrantCopyOp[] = [];
  private readonly batch: GrantCopyOp[] = [];
  /** Per op: the offset of the response its slot fails if the copy does. */
  private opRsp = new Int32Array(STAGING_FRAMES * 4);
  private readonly opVif: Vif[] = [];
  private nOps = 0;

  constructor(
    private readonly guest: Guest,
    private readonly counters: NetbackCounters,
    /** Marks a vif as having responses to push at the end of the pass. */
    private readonly touch: (v: Vif) => Vif,
    private readonly log: (message: string) => void,
  ) {}

  /** A new pass: no copy ops yet. */
  begin(): void {
    this.nOps = 0;
  }

  /** The bridge's egress to a vif: claim RX buffers, queue the copies and the responses. */
  deliver(w: Vif, fr: StagedFrame): boolean {
    if (w.state !== "connected" || w.fatal) return false;
    const rx = w.rx!;
    const len = fr.len;
    const slots = (len + PAGE_SIZE - 1) >>> PAGE_SHIFT;
    if (rx.unconsumedRequests() < slots) {
      if (rx.broken) {
        w.fatal = `the rx ring is broken: ${rx.broken}`;
        this.touch(w);
      }
      this.counters.add(w, VifCounter.rxDropped);
      return false;
    }
    const view = rx.view;
    const q = this.reqView;
    for (let k = 0; k < slots; k++) {
      rx.copyRequest(this.req);
      const off = rx.nextResponse();
      const chunk = Math.min(PAGE_SIZE, len - k * PAGE_SIZE);
      // An RX response sits in its request's slot (netif.h): the ring keeps them in step.
      writeRxResponse(
        view,
        off,
        q.getUint16(RX_REQ_ID, true),
        0,
        (k < slots - 1 ? NETRXF_more_data : 0) | fr.rxFlags,
        chunk,
      );
      const i = this.nOps++;
      const op = this.op(i);
      this.opRsp[i] = off;
      this.opVif[i] = w;
      op.source.gmfn = fr.pfn + k;
      op.source.offset = 0;
      op.dest.domid = w.domid;
      op.dest.ref = q.getUint32(RX_REQ_GREF, true);
      op.dest.offset = 0;
      op.len = chunk;
    }
    const c = this.counters;
    c.add(w, VifCounter.rxRequests, slots);
    c.add(w, VifCounter.rxFrames);
    c.add(w, VifCounter.rxBytes, len);
    this.touch(w).touchedRx = true;
    return true;
  }

  /** One grant-copy batch for every RX piece of the pass (dom0 → the guests' posted buffers). */
  copyOut(): void {
    if (this.nOps === 0) return;
    const res = copyBatch(this.guest, this.pool, this.nOps, this.batch, this.counters);
    const c = this.counters;
    for (let i = 0; i < res.length; i++) {
      const w = this.opVif[i];
      if (res[i].status === 0) {
        c.add(w, VifCounter.grantCopies);
        c.add(w, VifCounter.grantCopyBytes, this.pool[i].len);
      } else {
        // The guest posted a buffer we may not write: that slot (and so its frame) fails.
        w.rx?.view.setInt16(this.opRsp[i] + RX_RSP_STATUS, NETIF_RSP_ERROR, true);
        c.add(w, VifCounter.grantCopyErrors);
        c.add(w, VifCounter.rxErrors);
        reportBadPacket(w, `an rx buffer cannot be written: ${res[i].error ?? res[i].status}`, this.log);
      }
      this.opVif[i] = undefined as unknown as Vif;
    }
  }

  private op(i: number): GrantCopyOp {
    let op = this.pool[i];
    if (op === undefined) {
      op = {
        source: { domid: this.guest.domid, gmfn: 0, offset: 0 },
        dest: { domid: 0, ref: 0, offset: 0 },
        len: 0,
      };
      this.pool.push(op);
    }
    this.opRsp = grow(this.opRsp, i + 1);
    return op;
  }
}

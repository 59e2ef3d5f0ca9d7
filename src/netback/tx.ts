/**
 * netback's TX path, guest → bridge (Linux's xen-netback netback.c, its tx half): copy each
 * request out of the vif's TX ring before looking at it, check the packet (NETIF_RSP_ERROR
 * for a bad grant, offset/size past a page, size 0 or over the frame limit, undefined flags,
 * extra_info which we never offered, more than 18 slots), build one grant-copy op per
 * (slot × page) piece into a dom0 staging frame, copy every piece of the pass in one
 * GNTTABOP_copy batch, then answer the requests and check the frame's source MAC
 * (anti-spoofing) before the bridge may have it.
 *
 * A broken ring (producer running ahead, a more_data chain with no end, more than 20 slots —
 * Linux's fatal cases) sets the vif's `fatal` reason; netback disconnects it after the pass.
 * Budgets per vif and pass keep one busy or hostile guest from starving the others.
 */

import { PAGE_SHIFT, PAGE_SIZE } from "../xen/abi.js";
import type { GrantCopyOp } from "../xen/grant-table.js";
import type { Guest } from "../xen/guest/guest.js";
import {
  ETH_HLEN,
  EXTRA_FLAGS,
  FATAL_SKB_SLOTS,
  formatMac,
  MAX_FRAME,
  NETIF_MTU,
  NETIF_RSP_ERROR,
  NETIF_RSP_NULL,
  NETIF_RSP_OKAY,
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_KNOWN,
  NETTXF_more_data,
  TX_REQ_BYTES,
  TX_REQ_FLAGS,
  TX_REQ_GREF,
  TX_REQ_ID,
  TX_REQ_OFFSET,
  TX_REQ_SIZE,
  TX_RSP_STATUS,
  writeTxResponse,
  XEN_NETIF_EXTRA_FLAG_MORE,
  XEN_NETIF_NR_SLOTS_MIN,
} from "../xen/io/netif.js";
import type { NetbackCounters } from "./counters.js";
import { copyBatch, grow, STAGING_FRAMES, type StagedFrame, type Staging } from "./staging.js";
import { VifCounter } from "./stats.js";
import { reportBadPacket, type Vif } from "./vif.js";

/** Frames one vif may send per pass, and TX slots it may make us consume (errors included). */
const VIF_FRAME_BUDGET = 32;
const VIF_SLOT_BUDGET = 256;

/**
 * Whether `v` may send in this window of its rate, a new window's credit added first (Linux's
 * tx_credit_exceeded and tx_add_credit): at most one window's bytes, or one frame if a window
 * holds less, so an idle vif banks nothing; a packet may overdraw it, repaid from the next.
 */
export function hasCredit(v: Vif, now = performance.now()): boolean {
  if (now >= v.creditNext) {
    const cap = Math.max(v.creditBytes, MAX_FRAME);
    v.credit = Math.min(cap, v.credit + v.creditBytes);
    v.creditNext = now + v.creditMs;
  }
  return v.credit > 0;
}

export class TxPath {
  // Scratch, allocated once: the request in hand, the packet's slots, the pass's responses and ops.
  private readonly req = new Uint8Array(TX_REQ_BYTES);
  private readonly reqView = new DataView(this.req.buffer);
  private readonly slotGref = new Uint32Array(FATAL_SKB_SLOTS + 1);
  private readonly slotOff = new Int32Array(FATAL_SKB_SLOTS + 1);
  private readonly slotSize = new Int32Array(FATAL_SKB_SLOTS + 1);
  /** Offsets (in their vif's TX ring) of the data slots' responses of the pass's staged frames. */
  private readonly rspOff = new Int32Array((STAGING_FRAMES + 1) * (FATAL_SKB_SLOTS + 1));
  private nRsp = 0;
  private readonly pool: GrantCopyOp[] = [];
  private readonly batch: GrantCopyOp[] = [];
  /** Per op: the staged frame it fills. */
  private opFrame = new Int32Array(STAGING_FRAMES * 4);
  private nOps = 0;

  constructor(
    private readonly guest: Guest,
    private readonly staging: Staging,
    private readonly counters: NetbackCounters,
    private readonly log: (message: string) => void,
  ) {}

  /** A new pass: no responses or copy ops yet. */
  begin(): void {
    this.nRsp = 0;
    this.nOps = 0;
  }

  /**
   * Consumes and validates `v`'s TX requests into staging frames and copy ops. Returns true
   * when it stopped for a budget (more may be waiting). Sets `v.fatal` for a broken ring.
   */
  gather(v: Vif): boolean {
    const ring = v.tx!;
    const view = ring.view;
    const q = this.reqView;
    const c = this.counters;
    const staging = this.staging;
    let frames = 0;
    let slots = 0;
    v.rateHeld = false;
    while (frames < VIF_FRAME_BUDGET && slots < VIF_SLOT_BUDGET && staging.count < STAGING_FRAMES) {
      // Its rate's window spent (and requests waiting): they wait for the next (netback.ts).
      if (v.creditBytes > 0 && !hasCredit(v) && ring.unconsumedRequests() > 0) {
        v.rateHeld = true;
        return false;
      }
      if (!ring.copyRequest(this.req)) {
        if (ring.broken) v.fatal = `the tx ring is broken: ${ring.broken}`;
        return false;
      }
      // The first slot: the packet's size, its flags.
      const rspBase = this.nRsp;
      let err: string | undefined;
      let flags = q.getUint16(TX_REQ_FLAGS, true);
      const total = q.getUint16(TX_REQ_SIZE, true);
      this.slotGref[0] = q.getUint32(TX_REQ_GREF, true);
      this.slotOff[0] = q.getUint16(TX_REQ_OFFSET, true);
      let off = ring.nextResponse();
      writeTxResponse(view, off, q.getUint16(TX_REQ_ID, true), NETIF_RSP_ERROR);
      this.rspOff[this.nRsp++] = off;
      let nSlots = 1;
      c.add(v, VifCounter.txRequests);
      // Charged as taken, whatever becomes of it (a bad packet costs the ring as a good one).
      v.credit -= total;
      const firstFlags = flags;
      if (flags & ~NETTXF_KNOWN) err = `flags 0x${flags.toString(16)} include bits netif.h does not define`;
      else if (total < ETH_HLEN || total > MAX_FRAME)
        err = `packet size ${total} is outside ${ETH_HLEN}..${MAX_FRAME} (MTU ${NETIF_MTU})`;
      // Extra-info segments follow the first slot; we offered no extra type, so none is valid.
      let extra = (flags & NETTXF_extra_info) !== 0;
      if (extra)
        err ??= "NETTXF_extra_info set, but this backend offers no extra-info types (no GSO, no multicast)";
      while (extra) {
        if (!ring.copyRequest(this.req)) {
          v.fatal = ring.broken
            ? `the tx ring is broken: ${ring.broken}`
            : `an extra-info slot is missing: req_prod ends after ${nSlots} slots of a packet`;
          this.nRsp = rspBase; // the packet stages nothing: its slots (answered ERROR) leave no offsets
          return false;
        }
        off = ring.nextResponse();
        writeTxResponse(view, off, 0, NETIF_RSP_NULL);
        c.add(v, VifCounter.txRequests);
        if (++nSlots > FATAL_SKB_SLOTS) {
          v.fatal = `a packet of more than ${FATAL_SKB_SLOTS} slots (extra-info chain)`;
          this.nRsp = rspBase; // the packet stages nothing: its slots (answered ERROR) leave no offsets
          return false;
        }
        extra = (this.req[EXTRA_FLAGS] & XEN_NETIF_EXTRA_FLAG_MORE) !== 0;
      }
      // Fragments: each slot's own size; the first slot holds what they leave of the total.
      let dataSlots = 1;
      let fragSum = 0;
      while (flags & NETTXF_more_data) {
        if (!ring.copyRequest(this.req)) {
          v.fatal = ring.broken
            ? `the tx ring is broken: ${ring.broken}`
            : `a more_data chain runs past req_prod (${nSlots} slots and no last one)`;
          this.nRsp = rspBase; // the packet stages nothing: its slots (answered ERROR) leave no offsets
          return false;
        }
        flags = q.getUint16(TX_REQ_FLAGS, true);
        off = ring.nextResponse();
        writeTxResponse(view, off, q.getUint16(TX_REQ_ID, true), NETIF_RSP_ERROR);
        c.add(v, VifCounter.txRequests);
        if (++nSlots > FATAL_SKB_SLOTS) {
          v.fatal = `a more_data chain longer than ${FATAL_SKB_SLOTS} slots`;
          this.nRsp = rspBase; // the packet stages nothing: its slots (answered ERROR) leave no offsets
          return false;
        }
        this.rspOff[this.nRsp++] = off;
        if (flags & ~NETTXF_more_data)
          err ??= `slot ${dataSlots} has flags 0x${flags.toString(16)}; after the first slot only more_data is allowed`;
        this.slotGref[dataSlots] = q.getUint32(TX_REQ_GREF, true);
        this.slotOff[dataSlots] = q.getUint16(TX_REQ_OFFSET, true);
        const size = q.getUint16(TX_REQ_SIZE, true);
        this.slotSize[dataSlots] = size;
        fragSum += size;
        dataSlots++;
      }
      slots += nSlots;
      if (err === undefined && dataSlots > XEN_NETIF_NR_SLOTS_MIN)
        err = `${dataSlots} slots, more than the ${XEN_NETIF_NR_SLOTS_MIN} a packet may use`;
      if (err === undefined) {
        if (fragSum >= total)
          err = `the fragments (${fragSum} B) leave nothing for the first slot of a ${total}-byte packet (size 0)`;
        else {
          this.slotSize[0] = total - fragSum;
          for (let k = 0; k < dataSlots && err === undefined; k++) {
            if (this.slotSize[k] === 0) err = `slot ${k} has size 0`;
            else if (this.slotOff[k] + this.slotSize[k] > PAGE_SIZE)
              err = `slot ${k}: offset ${this.slotOff[k]} + size ${this.slotSize[k]} crosses its page (${PAGE_SIZE} B)`;
          }
        }
      }
      if (err !== undefined) {
        // Its responses already say NETIF_RSP_ERROR; they are pushed with the pass.
        this.nRsp = rspBase;
        c.add(v, VifCounter.txErrors);
        reportBadPacket(v, err, this.log);
        continue;
      }
      const si = staging.count++;
      const fr = staging.frames[si];
      fr.from = v;
      fr.len = total;
      fr.ok = true;
      fr.error = "";
      fr.rspStart = rspBase;
      fr.rspCount = this.nRsp - rspBase;
      fr.rxFlags =
        firstFlags & NETTXF_csum_blank
          ? NETRXF_csum_blank | NETRXF_data_validated
          : firstFlags & NETTXF_data_validated
            ? NETRXF_data_validated
            : 0;
      // One copy op per piece that lies in one guest page and one dom0 page.
      let pos = 0;
      for (let k = 0; k < dataSlots; k++) {
        let src = this.slotOff[k];
        let left = this.slotSize[k];
        while (left > 0) {
          const inPage = pos & (PAGE_SIZE - 1);
          const len = Math.min(left, PAGE_SIZE - inPage);
          const i = this.nOps++;
          const op = this.op(i);
          this.opFrame[i] = si;
          op.source.domid = v.domid;
          op.source.ref = this.slotGref[k];
          op.source.offset = src;
          op.dest.gmfn = fr.pfn + (pos >>> PAGE_SHIFT);
          op.dest.offset = inPage;
          op.len = len;
          src += len;
          left -= len;
          pos += len;
        }
      }
      frames++;
    }
    return true;
  }

  /** One grant-copy batch for every TX piece of the pass (guest pages → dom0's staging). */
  copyIn(): void {
    if (this.nOps === 0) return;
    const res = copyBatch(this.guest, this.pool, this.nOps, this.batch, this.counters);
    const c = this.counters;
    for (let i = 0; i < res.length; i++) {
      const fr = this.staging.frames[this.opFrame[i]];
      const v = fr.from!;
      if (res[i].status === 0) {
        c.add(v, VifCounter.grantCopies);
        c.add(v, VifCounter.grantCopyBytes, this.pool[i].len);
      } else {
        c.add(v, VifCounter.grantCopyErrors);
        if (fr.ok) {
          fr.ok = false;
          fr.error = res[i].error ?? `grant copy failed with status ${res[i].status}`;
        }
      }
    }
  }

  /**
   * Answers a staged frame of vif `v` (its copy in done): OKAY and true when it may go to
   * the bridge; its requests keep their NETIF_RSP_ERROR when the copy failed or the frame's
   * source MAC is not the vif's, and it is counted and reported.
   */
  finish(v: Vif, fr: StagedFrame): boolean {
    const c = this.counters;
    if (!fr.ok) {
      c.add(v, VifCounter.txErrors);
      reportBadPacket(v, fr.error, this.log);
      return false;
    }
    // Anti-spoofing (what Xen's vif scripts do with ebtables): a guest sends only as its own
    // MAC, so a peer can trust the source address of what reaches it through the bridge.
    const d = fr.data;
    const m = v.macBytes;
    if (
      d[6] !== m[0] ||
      d[7] !== m[1] ||
      d[8] !== m[2] ||
      d[9] !== m[3] ||
      d[10] !== m[4] ||
      d[11] !== m[5]
    ) {
      c.add(v, VifCounter.txErrors);
      reportBadPacket(
        v,
        `a frame with source MAC ${formatMac(d, 6)} is not from this vif's MAC ${v.mac}`,
        this.log,
      );
      return false;
    }
    const view = v.tx!.view;
    for (let r = fr.rspStart; r < fr.rspStart + fr.rspCount; r++)
      view.setInt16(this.rspOff[r] + TX_RSP_STATUS, NETIF_RSP_OKAY, true);
    c.add(v, VifCounter.txFrames);
    c.add(v, VifCounter.txBytes, fr.len);
    return true;
  }

  private op(i: number): GrantCopyOp {
    let op = this.pool[i];
    if (op === undefined) {
      op = {
        source: { domid: 0, ref: 0, offset: 0 },
        dest: { domid: this.guest.domid, gmfn: 0, offset: 0 },
        len: 0,
      };
      this.pool.push(op);
    }
    this.opFrame = grow(this.opFrame, i + 1);
    return op;
  }
}

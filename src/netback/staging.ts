/**
 * dom0's staging area for one netback pass: the frames gathered from the vifs' TX rings and
 * from the uplink wait here, in dom0 pages, between the copy in (tx.ts) and the bridge, which
 * hands them to the vifs' RX rings (rx.ts) or the uplink. Allocated once; a pass reuses it.
 */

import { PAGE_SIZE } from "../xen/abi.js";
import type { GrantCopyOp, GrantResult } from "../xen/grant-table.js";
import type { Guest } from "../xen/guest/guest.js";
import { MAX_FRAME_PAGES } from "../xen/io/netif.js";
import type { BridgeFrame } from "./bridge.js";
import type { NetbackCounters } from "./counters.js";
import { BridgeCounter } from "./stats.js";
import type { Vif } from "./vif.js";

/** Frames staged per pass (each in 3 dom0 pages: a jumbo frame never needs more). */
export const STAGING_FRAMES = 64;

/** A staging slot: one frame in dom0 memory for the length of a pass. */
export class StagedFrame implements BridgeFrame {
  len = 0;
  /** The vif it came from; undefined for the uplink. */
  from: Vif | undefined;
  ok = true;
  error = "";
  /** Its TX responses: rspStart..rspStart + rspCount in the pass's response offsets (tx.ts). */
  rspStart = 0;
  rspCount = 0;
  /** The NETRXF_* checksum flags its copies into the vifs' RX buffers carry. */
  rxFlags = 0;
  private cached: Uint8Array;

  constructor(
    readonly data: Uint8Array,
    /** dom0 frame of the slot's first page. */
    readonly pfn: number,
  ) {
    this.cached = data.subarray(0, 0);
  }

  view(): Uint8Array {
    if (this.cached.length !== this.len) this.cached = this.data.subarray(0, this.len);
    return this.cached;
  }
}

export class Staging {
  readonly frames: StagedFrame[] = [];
  /** Frames staged in this pass (frames[0..count)). */
  count = 0;

  /**
   * Ends the pass: no slot keeps the vif its frame came from. A slot that did kept that vif's
   * rings, and so the whole RAM of its guest long after the guest died (64 slots: up to 64
   * dead guests' RAM held by the driver domain).
   */
  release(): void {
    const frames = this.frames;
    for (let i = 0; i < this.count; i++) frames[i].from = undefined;
    this.count = 0;
  }

  constructor(guest: Guest) {
    const run = guest.memory.allocPages(STAGING_FRAMES * MAX_FRAME_PAGES);
    const slotBytes = MAX_FRAME_PAGES * PAGE_SIZE;
    for (let i = 0; i < STAGING_FRAMES; i++) {
      this.frames.push(
        new StagedFrame(
          run.bytes.subarray(i * slotBytes, (i + 1) * slotBytes),
          run.pfn + i * MAX_FRAME_PAGES,
        ),
      );
    }
  }
}

/** `a`, or a copy at least twice as long when it holds fewer than `need` entries. */
export function grow(a: Int32Array<ArrayBuffer>, need: number): Int32Array<ArrayBuffer> {
  if (need <= a.length) return a;
  const b = new Int32Array(Math.max(need, a.length * 2));
  b.set(a);
  return b;
}

/**
 * One GNTTABOP_copy batch of a pass's first `n` ops in `pool` (tx.ts copies in, rx.ts out),
 * counted as one grant-copy call; `batch` is the caller's reused array.
 */
export function copyBatch(
  guest: Guest,
  pool: readonly GrantCopyOp[],
  n: number,
  batch: GrantCopyOp[],
  counters: NetbackCounters,
): GrantResult[] {
  batch.length = 0;
  for (let i = 0; i < n; i++) batch.push(pool[i]);
  counters.words[BridgeCounter.grantCopyCalls]++;
  return guest.grants.copy(batch);
}

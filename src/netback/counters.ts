/**
 * netback's side of the split path's counters page (stats.ts holds the layout and the host's
 * reader): a block per vif claimed when it connects, adds that count in a vif's block and in
 * the totals at once, and the bridge's counters copied in after each pass. One writer: dom0's
 * thread, plain stores.
 */

import type { DomId } from "../xen/abi.js";
import type { Bridge } from "./bridge.js";
import type { MxSteering } from "./mx-steer.js";
import { BridgeCounter, MAX_VIF_STATS, STAT_BLOCK_WORDS, VifCounter, vifBlockBase } from "./stats.js";
import type { UplinkPort } from "./uplink.js";

/** What a counter add needs of a vif: the base word of its block, or -1 (no block: totals only). */
export interface CountedVif {
  stat: number;
}

export class NetbackCounters {
  /** The page's words, totals block first; BridgeCounter words are written through it directly. */
  readonly words: Float64Array;

  constructor(stats: SharedArrayBuffer) {
    this.words = new Float64Array(stats);
  }

  /** Adds to a vif's counter and to the totals (same index in both blocks). */
  add(v: CountedVif, idx: number, n = 1): void {
    if (v.stat >= 0) this.words[v.stat + idx] += n;
    this.words[idx] += n;
  }

  /** A pass left `v`'s TX for its next credit window (its block's word, and the bridge block's total). */
  addRateHeld(v: CountedVif): void {
    if (v.stat >= 0) this.words[v.stat + VifCounter.txRateHeld]++;
    this.words[BridgeCounter.txRateHeld]++;
  }

  /**
   * The block of vif (domid, devid): the one it had, else a free one, else one of a vif no
   * longer connected (zeroed). -1 when every block belongs to a connected vif.
   */
  claimBlock(domid: DomId, devid: number): number {
    const s = this.words;
    let free = -1;
    let reuse = -1;
    for (let i = 0; i < MAX_VIF_STATS; i++) {
      const base = vifBlockBase(i);
      if (s[base + VifCounter.used] === 1) {
        if (s[base + VifCounter.domid] === domid && s[base + VifCounter.devid] === devid) return base;
        if (reuse < 0 && s[base + VifCounter.connected] === 0) reuse = base;
      } else if (free < 0) free = base;
    }
    const base = free >= 0 ? free : reuse;
    if (base < 0) return -1;
    s.fill(0, base, base + STAT_BLOCK_WORDS);
    s[base + VifCounter.domid] = domid;
    s[base + VifCounter.devid] = devid;
    s[base + VifCounter.used] = 1;
    return base;
  }

  /** Marks a vif connected or not, in its block and in the totals' count of connected vifs. */
  setConnected(v: CountedVif, connected: boolean): void {
    this.words[BridgeCounter.vifsConnected] += connected ? 1 : -1;
    if (v.stat >= 0) this.words[v.stat + VifCounter.connected] = connected ? 1 : 0;
  }

  /** Copies the bridge's, the uplink's and MX steering's counters into the page. */
  publishBridge(bridge: Bridge, uplink: UplinkPort | undefined, steering: MxSteering): void {
    const mx = steering.counters;
    const s = this.words;
    const c = bridge.counters;
    s[BridgeCounter.lookups] = c.lookups;
    s[BridgeCounter.hits] = c.hits;
    s[BridgeCounter.floods] = c.floods;
    s[BridgeCounter.floodsLimited] = c.floodsLimited;
    s[BridgeCounter.learned] = c.learned;
    s[BridgeCounter.aged] = c.aged;
    s[BridgeCounter.bridgeDrops] = c.drops;
    s[BridgeCounter.macEntries] = bridge.size;
    s[BridgeCounter.bridgePorts] = bridge.portsInUse;
    s[BridgeCounter.mxSteered] = mx.steered;
    s[BridgeCounter.mxRefused] = mx.refused;
    s[BridgeCounter.mxSpoofed] = mx.spoofed;
    s[BridgeCounter.mxThrottled] = mx.throttled;
    s[BridgeCounter.mxAskers] = steering.askers;
    s[BridgeCounter.mxStale] = mx.stale;
    s[BridgeCounter.mxBadConnects] = mx.badConnects;
    if (uplink) {
      s[BridgeCounter.uplinkTx] = uplink.txFrames;
      s[BridgeCounter.uplinkDrops] = uplink.txDrops;
    }
  }
}

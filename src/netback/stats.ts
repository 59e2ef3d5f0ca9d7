/**
 * The split path's counters page: netback and the bridge write it in the driver domain, the
 * host reads it straight from shared memory (Host.netStats) without asking dom0 — how tests
 * prove batching (notifications ≪ frames), grant copies per frame, and who refused what.
 *
 * Float64 words (byte counts outgrow 32 bits), one writer (dom0's thread), plain stores. The
 * first HEADER_BLOCKS blocks hold totals and the bridge's counters; then one block per vif. Per-vif counter
 * indexes are the same in a vif block and in the totals block, so one add updates both.
 */

import { TraceBuffer, traceRingBytes } from "../nic/trace-ring.js";

export const STAT_BLOCK_WORDS = 32;
export const MAX_VIF_STATS = 128;
/** Blocks before the first vif's: totals, the bridge, MX steering. */
export const HEADER_BLOCKS = 2;
/** The first word of vif block `i`. */
export function vifBlockBase(i: number): number {
  return (HEADER_BLOCKS + i) * STAT_BLOCK_WORDS;
}
/**
 * After the counters, the split path's trace ring (nic/trace-ring.ts): netback stamps traced
 * frames into it only while its reader (the bench, through Host.netTrace) has switched it on.
 */
export const NET_TRACE_OFFSET = (HEADER_BLOCKS + MAX_VIF_STATS) * STAT_BLOCK_WORDS * 8;
export const NET_TRACE_RECORDS = 1 << 14;
export const NET_STATS_BYTES = NET_TRACE_OFFSET + traceRingBytes(NET_TRACE_RECORDS);

/** The trace ring in a stats page (a view: the writer's and every reader's see the same records). */
export function netTraceRing(buffer: SharedArrayBuffer): TraceBuffer {
  return new TraceBuffer(NET_TRACE_RECORDS, buffer, NET_TRACE_OFFSET);
}

/** Word indexes in the totals block only. */
export const BridgeCounter = {
  passes: 0,
  /** Grant-copy batches (one GNTTABOP_copy call each). */
  grantCopyCalls: 1,
  vifsConnected: 2,
  uplinkPresent: 3,
  uplinkTx: 20,
  uplinkRx: 21,
  uplinkDrops: 22,
  uplinkBad: 23,
  lookups: 24,
  hits: 25,
  floods: 26,
  learned: 27,
  aged: 28,
  bridgeDrops: 29,
  macEntries: 30,
  bridgePorts: 31,
  /** MX over Ethernet sent to its endpoint's owner only (netback/mx-steer.ts). */
  mxSteered: 32,
  /** MX over Ethernet refused: for no endpoint here, or another NIC's from the uplink. */
  mxRefused: 33,
  /** MX over Ethernet from a vif naming as its source an endpoint not of its domain: refused. */
  mxSpoofed: 34,
  /** CONNECTs refused while their domain is locked out for wrong keys. */
  mxThrottled: 35,
  /** Floods dropped whole: their ingress port was over its flood rate (bridge.ts storm control). */
  floodsLimited: 36,
  /** Domains whose MX CONNECTs netback remembers now (mx-steer.ts: the dead ones' go). */
  mxAskers: 37,
  /** MX over Ethernet refused for naming an opening of its endpoint that is closed (mx-steer.ts). */
  mxStale: 38,
  /** CONNECTs netback answered itself: a NIC context's wrong key, or a session not the opening's. */
  mxBadConnects: 39,
  /** Passes that left a vif's TX requests for its next credit window (the total of VifCounter.txRateHeld). */
  txRateHeld: 40,
} as const;

/** Word indexes in a vif block; 4..19 are also the totals' indexes. */
export const VifCounter = {
  used: 0,
  domid: 1,
  devid: 2,
  connected: 3,
  txRequests: 4,
  rxRequests: 5,
  txFrames: 6,
  rxFrames: 7,
  txBytes: 8,
  rxBytes: 9,
  txErrors: 10,
  rxErrors: 11,
  /** Frames for this vif dropped because it had no rx buffer posted. */
  rxDropped: 12,
  grantCopies: 13,
  grantCopyBytes: 14,
  notificationsSent: 15,
  notificationsReceived: 16,
  /** Frames from this vif the bridge sent out of at least one port. */
  framesBridged: 17,
  disconnects: 18,
  grantCopyErrors: 19,
  /** Passes that left this vif's TX requests for its next credit window (its `rate`). Vif blocks only: the total is BridgeCounter.txRateHeld. */
  txRateHeld: 20,
} as const;

export interface VifCounters {
  txRequests: number;
  rxRequests: number;
  txFrames: number;
  rxFrames: number;
  txBytes: number;
  rxBytes: number;
  txErrors: number;
  rxErrors: number;
  rxDropped: number;
  grantCopies: number;
  grantCopyBytes: number;
  grantCopyErrors: number;
  notificationsSent: number;
  notificationsReceived: number;
  framesBridged: number;
  disconnects: number;
  /** Passes that left its TX for the next credit window of its `rate` (Xen's vif rate limit). */
  txRateHeld: number;
}

export interface VifStats extends VifCounters {
  domid: number;
  devid: number;
  connected: boolean;
}

export interface BridgeStats {
  lookups: number;
  hits: number;
  floods: number;
  /** Floods dropped whole by storm control (a port over its flood rate). */
  floodsLimited: number;
  learned: number;
  aged: number;
  drops: number;
  /** MAC table entries now. */
  entries: number;
  /** Ports now (vifs + uplink). */
  ports: number;
  /** MX over Ethernet frames sent to the owner of the endpoint they name, and no one else. */
  mxSteered: number;
  /** MX over Ethernet frames refused: no owner of their endpoint here, or another NIC's from the uplink. */
  mxRefused: number;
  /** MX over Ethernet frames refused for naming another domain's endpoint as their source. */
  mxSpoofed: number;
  /** CONNECTs refused while their guest was locked out for wrong keys. */
  mxThrottled: number;
  /** Domains whose MX CONNECTs netback remembers now (until they age out or the domain's vifs go). */
  mxAskers: number;
  /** MX over Ethernet frames refused for naming a closed opening of their endpoint (the sequenced ones NACKed). */
  mxStale: number;
  /** CONNECTs netback answered BAD_KEY (a NIC context's wrong key) or BAD_SESSION itself: the key went no further. */
  mxBadConnects: number;
}

export interface NetStats {
  /** Every vif netback has served (connected now or not). */
  vifs: VifStats[];
  totals: VifCounters & { passes: number; grantCopyCalls: number; vifsConnected: number };
  bridge: BridgeStats;
  uplink: { present: boolean; txFrames: number; rxFrames: number; drops: number; bad: number };
}

function vifCounters(w: Float64Array, base: number, rateHeldAt: number): VifCounters {
  return {
    txRequests: w[base + VifCounter.txRequests],
    rxRequests: w[base + VifCounter.rxRequests],
    txFrames: w[base + VifCounter.txFrames],
    rxFrames: w[base + VifCounter.rxFrames],
    txBytes: w[base + VifCounter.txBytes],
    rxBytes: w[base + VifCounter.rxBytes],
    txErrors: w[base + VifCounter.txErrors],
    rxErrors: w[base + VifCounter.rxErrors],
    rxDropped: w[base + VifCounter.rxDropped],
    grantCopies: w[base + VifCounter.grantCopies],
    grantCopyBytes: w[base + VifCounter.grantCopyBytes],
    grantCopyErrors: w[base + VifCounter.grantCopyErrors],
    notificationsSent: w[base + VifCounter.notificationsSent],
    notificationsReceived: w[base + VifCounter.notificationsReceived],
    framesBridged: w[base + VifCounter.framesBridged],
    disconnects: w[base + VifCounter.disconnects],
    txRateHeld: w[rateHeldAt],
  };
}

/** A snapshot of the page (the host's side). */
export function readNetStats(buffer: SharedArrayBuffer): NetStats {
  const w = new Float64Array(buffer);
  const vifs: VifStats[] = [];
  for (let i = 0; i < MAX_VIF_STATS; i++) {
    const base = vifBlockBase(i);
    if (w[base + VifCounter.used] !== 1) continue;
    vifs.push({
      domid: w[base + VifCounter.domid],
      devid: w[base + VifCounter.devid],
      connected: w[base + VifCounter.connected] === 1,
      ...vifCounters(w, base, base + VifCounter.txRateHeld),
    });
  }
  vifs.sort((a, b) => a.domid - b.domid || a.devid - b.devid);
  return {
    vifs,
    totals: {
      ...vifCounters(w, 0, BridgeCounter.txRateHeld),
      passes: w[BridgeCounter.passes],
      grantCopyCalls: w[BridgeCounter.grantCopyCalls],
      vifsConnected: w[BridgeCounter.vifsConnected],
    },
    bridge: {
      lookups: w[BridgeCounter.lookups],
      hits: w[BridgeCounter.hits],
      floods: w[BridgeCounter.floods],
      floodsLimited: w[BridgeCounter.floodsLimited],
      learned: w[BridgeCounter.learned],
      aged: w[BridgeCounter.aged],
      drops: w[BridgeCounter.bridgeDrops],
      entries: w[BridgeCounter.macEntries],
      ports: w[BridgeCounter.bridgePorts],
      mxSteered: w[BridgeCounter.mxSteered],
      mxRefused: w[BridgeCounter.mxRefused],
      mxSpoofed: w[BridgeCounter.mxSpoofed],
      mxThrottled: w[BridgeCounter.mxThrottled],
      mxAskers: w[BridgeCounter.mxAskers],
      mxStale: w[BridgeCounter.mxStale],
      mxBadConnects: w[BridgeCounter.mxBadConnects],
    },
    uplink: {
      present: w[BridgeCounter.uplinkPresent] === 1,
      txFrames: w[BridgeCounter.uplinkTx],
      rxFrames: w[BridgeCounter.uplinkRx],
      drops: w[BridgeCounter.uplinkDrops],
      bad: w[BridgeCounter.uplinkBad],
    },
  };
}

/**
 * myrback's stats page: the Int32 words the driver domain writes and the host reads straight
 * from shared memory (host.backendStats()), like netback/stats.ts for the split path. Its own
 * file because both sides import it — the host (reading) and every part of myrback (counting)
 * — and it imports nothing of myrback's: the bottom of back/.
 */

import { Op } from "../protocol.js";

/** Int32 word indexes of the stats page the host hands the driver domain (host.backendStats()). */
export const Stat = {
  /** Requests served, ring and native; words 1..7 are per op (index = Op code). */
  requests: 0,
  errors: 8,
  ringRequests: 9,
  nativeRequests: 10,
  frontendsConnected: 11,
  frontendsDisconnected: 12,
  brokenRings: 13,
  endpoints: 14,
  channels: 15,
  regions: 16,
  deferredGrants: 17,
  nativeClients: 18,
  /** dom0's grant entries in use (granted and not yet ended). */
  grantsInUse: 19,
  /** dom0's shared pages (windows, interrupt pages, channels, response pages). */
  sharedPages: 20,
  /** Connects refused for a bad endpoint key. */
  badKeys: 21,
  /** The co-resident share loop (share-loop.ts): 1 while it runs, its ticks, share limits written. */
  shareLoopRunning: 22,
  shareTicks: 23,
  shareLimits: 24,
  /** Channel buffers dom0 holds (in use, waiting to be unmapped, or free for their pair's next channel). */
  channelBuffers: 25,
  /** Channels not made for a quota (shared-memory.ts): the pair talks through the NIC instead. */
  channelsRefused: 26,
  /** Interrupt pages given up at a slot's reuse because a former peer still mapped them (shared-memory.ts recall). */
  intrPagesReplaced: 27,
  /**
   * DRIVER events (CONNECT, DISCONNECT) an endpoint's event queue had no room for (the NIC's
   * EAGAIN; registry.ts deliverEvent): a connect then talks through the NIC, a DISCONNECT is
   * learnt later by the library.
   */
  driverEventsRefused: 28,
  /** Turns of a frontend's ring service that ended at its time slice (device.ts RING_SLICE_MS). */
  ringSlicesCut: 29,
} as const;
export const STATS_BYTES = 32 * 4;

export interface BackendStats {
  requests: number;
  byOp: Record<keyof typeof Op, number>;
  errors: number;
  ringRequests: number;
  nativeRequests: number;
  frontendsConnected: number;
  frontendsDisconnected: number;
  brokenRings: number;
  /** Open now. */
  endpoints: number;
  channels: number;
  regions: number;
  /** dom0 grants whose end waits for the peer to unmap them. */
  deferredGrants: number;
  nativeClients: number;
  grantsInUse: number;
  sharedPages: number;
  badKeys: number;
  /** 1 while the share loop runs (a weight other than 1 meets a co-resident channel), else 0. */
  shareLoopRunning: number;
  /** Its looks at the lanes, and the share limits it wrote (not counting lifts). */
  shareTicks: number;
  shareLimits: number;
  channelBuffers: number;
  channelsRefused: number;
  intrPagesReplaced: number;
  driverEventsRefused: number;
  ringSlicesCut: number;
}

export function readBackendStats(buffer: SharedArrayBuffer): BackendStats {
  const w = new Int32Array(buffer);
  const get = (i: number) => Atomics.load(w, i) >>> 0;
  const byOp = {} as Record<keyof typeof Op, number>;
  for (const [name, code] of Object.entries(Op)) byOp[name as keyof typeof Op] = get(code);
  return {
    requests: get(Stat.requests),
    byOp,
    errors: get(Stat.errors),
    ringRequests: get(Stat.ringRequests),
    nativeRequests: get(Stat.nativeRequests),
    frontendsConnected: get(Stat.frontendsConnected),
    frontendsDisconnected: get(Stat.frontendsDisconnected),
    brokenRings: get(Stat.brokenRings),
    endpoints: get(Stat.endpoints),
    channels: get(Stat.channels),
    regions: get(Stat.regions),
    deferredGrants: get(Stat.deferredGrants),
    nativeClients: get(Stat.nativeClients),
    grantsInUse: get(Stat.grantsInUse),
    sharedPages: get(Stat.sharedPages),
    badKeys: get(Stat.badKeys),
    shareLoopRunning: get(Stat.shareLoopRunning),
    shareTicks: get(Stat.shareTicks),
    shareLimits: get(Stat.shareLimits),
    channelBuffers: get(Stat.channelBuffers),
    channelsRefused: get(Stat.channelsRefused),
    intrPagesReplaced: get(Stat.intrPagesReplaced),
    driverEventsRefused: get(Stat.driverEventsRefused),
    ringSlicesCut: get(Stat.ringSlicesCut),
  };
}

/**
 * Message tracing: where each microsecond of a message goes.
 *
 * An endpoint opened with `trace: true` (or after `enableTrace()`) stamps each message at
 * each stage of its path into its own TraceBuffer; the stamps of both ends, the NIC's (carried
 * back in the PULL_DONE event, or kept in each NIC thread's ring) and netback's (its stats
 * page's ring) are joined by message id afterwards (`collate`). Per path:
 *
 *   channel  eager  posted → written → seen → copied → completed
 *            rndv   posted → rndv-sent → seen → pull-posted → nic-seen → dma-done → event-seen → completed
 *   NIC      eager  posted → written → nic-taken → on-link → off-link → delivered → seen → copied → completed
 *            rndv   posted → rndv-sent → nic-taken → on-link → off-link → delivered → seen → pull-posted
 *                   → nic-seen → pull-requested → pull-data → dma-done → event-seen → completed
 *   split    eager  posted → written → netback-tx → bridged → seen → copied → completed
 *            rndv   posted → rndv-sent → netback-tx → bridged → seen → pull-posted → completed
 *
 * The message id travels in words that exist: the channel record's aux5, a NIC SEND's
 * D_TRACE_SEQ → frame F_TRACE → RECV event E_TRACE_SEQ (nic/window.ts), a traced Ethernet
 * frame's trailer (nic/trace-ring.ts). With tracing off nothing is stamped or carried: each
 * stage costs one test of a field already at hand.
 *
 * The clock (`traceNow`) is `performance.timeOrigin + performance.now()` in ms, shifted by a
 * fixed epoch (TRACE_EPOCH_MS) so the double keeps its precision: the plain sum is ~1.8e12 ms,
 * where one ulp is 0.244 µs — as large as a whole small-message stage. Shifted, one ulp is
 * ~15 ns. In Node 20 every worker of a process has the same timeOrigin and performance.now()
 * reads one monotonic clock, so stamps from different threads compare directly (measured:
 * the two threads' clocks agree within the ~0.1 µs a cross-thread handshake can resolve).
 *
 * A buffer is a ring of RECORD_WORDS float64 (message id, stage, time) over a
 * SharedArrayBuffer, written by its endpoint's thread only; header word 0 counts records
 * ever written. When full it overwrites the oldest records.
 */

import { NicTraceStage, type TraceRecord } from "../nic/trace-ring.js";

export const TraceStage = {
  Posted: 1,
  Written: 2,
  Seen: 3,
  Copied: 4,
  Completed: 5,
  RndvSent: 6,
  PullPosted: 7,
  NicSeen: 8,
  DmaDone: 9,
  EventSeen: 10,
  ...NicTraceStage,
  /** A co-resident rendezvous: the sender read the receiver's CTS and starts pushing it. */
  PushStarted: 20,
} as const;
export type TraceStageId = (typeof TraceStage)[keyof typeof TraceStage];

export const STAGE_NAMES: Record<number, string> = {
  [TraceStage.Posted]: "posted",
  [TraceStage.Written]: "written",
  [TraceStage.Seen]: "seen",
  [TraceStage.Copied]: "copied",
  [TraceStage.Completed]: "completed",
  [TraceStage.RndvSent]: "rndv-sent",
  [TraceStage.PullPosted]: "pull-posted",
  [TraceStage.NicSeen]: "nic-seen",
  [TraceStage.DmaDone]: "dma-done",
  [TraceStage.EventSeen]: "event-seen",
  [TraceStage.NicTaken]: "nic-taken",
  [TraceStage.OnLink]: "on-link",
  [TraceStage.OffLink]: "off-link",
  [TraceStage.Delivered]: "delivered",
  [TraceStage.PullRequested]: "pull-requested",
  [TraceStage.PullData]: "pull-data",
  [TraceStage.NetbackTx]: "netback-tx",
  [TraceStage.Bridged]: "bridged",
  [TraceStage.BridgedIn]: "bridged-in",
  [TraceStage.PushStarted]: "push-started",
};

/** The stages of an eager message, in order. */
export const EAGER_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.Written,
  TraceStage.Seen,
  TraceStage.Copied,
  TraceStage.Completed,
];
/** The stages of a rendezvous (pulled) message, in order. */
export const RNDV_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.RndvSent,
  TraceStage.Seen,
  TraceStage.PullPosted,
  TraceStage.NicSeen,
  TraceStage.DmaDone,
  TraceStage.EventSeen,
  TraceStage.Completed,
];

/** The stages of a rendezvous pushed through a co-resident channel (channel-path.ts), in order. */
export const PUSH_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.RndvSent,
  TraceStage.Seen,
  TraceStage.PushStarted,
  TraceStage.Copied,
  TraceStage.Completed,
];

/**
 * Through the NIC to another host (nic-path.ts; both NICs stamp into their threads' rings):
 * the SEND descriptor posted (written), NIC A takes it, puts the frame on the link, NIC B takes
 * it off and delivers it, then the receiving library as on the channel.
 */
export const NIC_EAGER_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.Written,
  TraceStage.NicTaken,
  TraceStage.OnLink,
  TraceStage.OffLink,
  TraceStage.Delivered,
  TraceStage.Seen,
  TraceStage.Copied,
  TraceStage.Completed,
];
/** A rendezvous through the NIC: its announcement as an eager SEND, then the remote pull. */
export const NIC_RNDV_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.RndvSent,
  TraceStage.NicTaken,
  TraceStage.OnLink,
  TraceStage.OffLink,
  TraceStage.Delivered,
  TraceStage.Seen,
  TraceStage.PullPosted,
  TraceStage.NicSeen,
  TraceStage.PullRequested,
  TraceStage.PullData,
  TraceStage.DmaDone,
  TraceStage.EventSeen,
  TraceStage.Completed,
];

/**
 * The split path (ether-path.ts; netback stamps into its host's stats page ring): the frames
 * built and handed to netfront (written), netback took them off the tx ring (netback-tx), the
 * bridge forwarded them (bridged), across hosts the receiving host's bridge forwarded them
 * from its uplink (bridged-in: that stage holds both NICs and the link), then the receiving
 * library; a rendezvous's announcement the same way, then its PULL frame and DATA frames in
 * one stage (pull-posted → completed).
 */
export const SPLIT_EAGER_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.Written,
  TraceStage.NetbackTx,
  TraceStage.Bridged,
  TraceStage.Seen,
  TraceStage.Copied,
  TraceStage.Completed,
];
/** SPLIT_*_STAGES with bridged-in after bridged (across hosts). */
export function crossHostSplit(order: readonly number[]): number[] {
  const k = order.indexOf(TraceStage.Bridged);
  return [...order.slice(0, k + 1), TraceStage.BridgedIn, ...order.slice(k + 1)];
}
export const SPLIT_RNDV_STAGES: readonly number[] = [
  TraceStage.Posted,
  TraceStage.RndvSent,
  TraceStage.NetbackTx,
  TraceStage.Bridged,
  TraceStage.Seen,
  TraceStage.PullPosted,
  TraceStage.Completed,
];

/**
 * Which thread stamps each stage: "s" the sender's, "r" the receiver's, "ns" the sender's
 * NIC, "nr" the receiver's NIC, "d" the sending host's driver domain (netback and the
 * bridge), "dr" the receiving host's (across hosts). A message's thread hand-offs are the changes along its stages.
 */
export const STAGE_THREAD: Record<number, string> = {
  [TraceStage.Posted]: "s",
  [TraceStage.Written]: "s",
  [TraceStage.RndvSent]: "s",
  [TraceStage.Seen]: "r",
  [TraceStage.Copied]: "r",
  [TraceStage.Completed]: "r",
  [TraceStage.PullPosted]: "r",
  [TraceStage.NicSeen]: "nr",
  [TraceStage.DmaDone]: "nr",
  [TraceStage.EventSeen]: "r",
  [TraceStage.NicTaken]: "ns",
  [TraceStage.OnLink]: "ns",
  [TraceStage.OffLink]: "nr",
  [TraceStage.Delivered]: "nr",
  [TraceStage.PullRequested]: "nr",
  [TraceStage.PullData]: "nr",
  [TraceStage.NetbackTx]: "d",
  [TraceStage.Bridged]: "d",
  [TraceStage.BridgedIn]: "dr",
  [TraceStage.PushStarted]: "s",
};

/**
 * Channel record flag (type word, bits 16..31, next to channel.ts's FLAG_NO_PAYLOAD = 1):
 * the sender traced this message and protocol word aux5 holds its trace sequence number.
 */
export const FLAG_TRACED = 2;

// The trace clock lives below MX, in the NIC that stamps events with it (nic/clock.ts).
export { TRACE_EPOCH_MS, traceNow } from "../nic/clock.js";

// The id, the ring and the NIC's stages live below MX, in the NIC that writes a ring too.
export {
  DEFAULT_TRACE_RECORDS,
  HEADER_WORDS,
  RECORD_WORDS,
  TraceBuffer,
  type TraceRecord,
  traceId,
  unpack,
} from "../nic/trace-ring.js";

/**
 * Joins records (from any number of buffers) by message id: id → stage → time. A stage
 * stamped more than once (a descriptor retried, a frame resent) keeps its first time: what
 * follows it happened after that, whichever copy made it through.
 */
export function collate(...sets: Iterable<TraceRecord>[]): Map<number, Map<number, number>> {
  const byId = new Map<number, Map<number, number>>();
  for (const set of sets)
    for (const r of set) {
      let m = byId.get(r.id);
      if (!m) byId.set(r.id, (m = new Map()));
      const t = m.get(r.stage);
      if (t === undefined || r.t < t) m.set(r.stage, r.t);
    }
  return byId;
}

/**
 * A message's stage durations in ms (each stage: its time minus the previous stage's), in
 * the order of `stages` minus the first; undefined unless the message has every stage.
 */
export function stageDurations(stamps: Map<number, number>, stages: readonly number[]): number[] | undefined {
  const out: number[] = [];
  let prev = stamps.get(stages[0]);
  if (prev === undefined) return undefined;
  for (let k = 1; k < stages.length; k++) {
    const t = stamps.get(stages[k]);
    if (t === undefined) return undefined;
    out.push(t - prev);
    prev = t;
  }
  return out;
}

/**
 * The NIC's counters, in a SharedArrayBuffer that the host reads at any time without asking
 * the NIC (device.counters()): tests and benchmarks prove the data path with them.
 *
 * Layout: float64 slots, GLOBAL_SLOTS for the NIC as a whole, then EP_SLOTS per endpoint
 * context. The NIC thread is the only writer, so plain stores suffice; the hot path indexes
 * the Float64Array with the slots of `NicCounter` and `EndpointCounter` (no lookups by string).
 */

export const NIC_COUNTER_NAMES = [
  "descriptors",
  "nops",
  "pulls",
  "pull_bytes",
  "pull_chunks",
  "sends",
  "send_bytes",
  "send_failures",
  "recvs",
  "recv_bytes",
  "events",
  "event_backlog",
  "event_drops",
  "delivery_queued",
  "delivery_rejected",
  "errors",
  "error_unknown_opcode",
  "error_bad_region",
  "error_bad_key",
  "error_out_of_bounds",
  "error_permission",
  "error_bad_length",
  "error_unknown_endpoint",
  "error_bad_session",
  "error_bad_index",
  "error_no_resources",
  "error_unreachable",
  "sleeps",
  "wakeups",
  "timer_wakeups",
  "interrupts",
  "interrupt_kicks",
  "control_requests",
  "control_errors",
  "frames_tx",
  "frames_rx",
  "frames_bad",
  "link_backpressure",
  "acks_dropped",
  "internal_errors",
  // The wire between NICs (window.ts DFLAG_REMOTE, Opcode.Connect; frame.ts frame layouts).
  "connects",
  "connect_failures",
  "connects_served",
  "connect_replies_unknown",
  "remote_pulls",
  "remote_pull_bytes",
  "remote_pull_failures",
  "pull_requests_rx",
  "pull_served_bytes",
  "pull_replies_tx",
  "pull_replies_rx",
  "pull_replies_bad",
  "pull_timeouts",
  "send_window_full",
  "send_timeouts",
  "link_losses",
  "link_reconnects",
  "frames_unknown",
  // The Ethernet port (ether-port.ts).
  "ether_tx",
  "ether_rx",
  "ether_flooded",
  "ether_dropped",
  "ether_bad",
  // Pull rights (window.ts, the exposure table): taken by a PULL, refused, ended by a revocation.
  "pull_rights_taken",
  "pull_rights_refused",
  "pull_rights_revoked",
  "error_no_right",
  // A receiver that does not consume (delivery.ts, link-state.ts DEST_CREDITS, window.ts HOLD_MS).
  "delivery_expired",
  "send_dest_full",
  // A peer that says nothing while we wait on it (links.ts wireTick: frozen or stopped host).
  "links_silent",
  // Wrong endpoint keys (connect-throttle.ts): answered BAD_KEY, and refused during a lockout.
  "connect_bad_keys",
  "connects_throttled",
  // Weights and caps (qos.ts): a descriptor or a served pull that waited for its payer's turn or cap.
  "qos_deferred",
  // A peer NIC that kept saying it holds our SEND (PENDING SEND_ACKs) past HOLD_MS (send.ts).
  "send_holds_overdue",
  // A CONNECT that waited in its endpoint's queue for that endpoint's share of the connect table (connect.ts CONNECT_CREDITS).
  "connect_ep_full",
  // A SEND that waited because its endpoint had SRC_CREDITS on the link already (link-state.ts).
  "send_src_full",
  // A remote pull not done by its deadline however its replies trickle (remote-pull.ts, window.ts pullDeadlineMs).
  "pulls_overdue",
  // Pulls refused unexamined: their requester is locked out for its refused ones (pull-throttle.ts).
  "pulls_throttled",
  // A peer that talks but reads nothing while we wait on it (links.ts: its link pushed back UNREAD_MS).
  "links_unread",
  // A remote PULL that waited in its endpoint's queue for that endpoint's share of the remote-pull table (remote-pull.ts PULL_CREDITS).
  "pull_ep_full",
  // A remote PULL parked until a job of its link freed (the link's PULL_JOBS_PER_LINK taken, or its domain's share of them, PULL_LINK_SHARE): it held no queue (remote-pull.ts).
  "pulls_parked",
  // SENDs naming a wrong session (BAD_SESSION), and SENDs refused unexamined while their requester is locked out for them (session-throttle.ts).
  "send_bad_sessions",
  "sends_throttled",
  // CONNECTs, SENDs and PULLs of this NIC's own endpoints refused before they left: their owner is locked out for what it was refused (own-refusals.ts).
  "own_requests_throttled",
  // Peers whose dropped TCP link was redialled until the bound, then given up and forgotten (tcp-attach.ts RECONNECT_GIVE_UP_MS).
  "links_given_up",
  // Links refused for the NIC's bounds: too many peer NIC ids from one address, or in all (link-bound.ts).
  "links_refused",
  // DRIVER events refused (EAGAIN): the endpoint's queue is full and its backlog's room is kept for its completions, or holds DRIVER_BACKLOG of them (endpoints.ts).
  "driver_refused",
  // Interrupts an owner sleeping OWNER_SLEEPING_QUIET let go unkicked: only pulls done well, more of its work in hand (window.ts).
  "interrupts_quiet",
] as const;

export const NIC_EP_COUNTER_NAMES = [
  "opens",
  "descriptors",
  "pulls",
  "pull_bytes",
  "sends",
  "send_bytes",
  "recvs",
  "recv_bytes",
  "events",
  "errors",
  "event_backlog",
  "event_drops",
  "delivery_queued",
  "delivery_rejected",
  "interrupts",
  "bad_index",
  "delivery_expired",
  // Bytes charged to this endpoint as payer (qos.ts: its deficit), and its waits for turn or cap.
  "qos_bytes",
  "qos_deferred",
  // DRIVER events refused for this endpoint (EAGAIN: its queue full, its backlog's room kept for its completions).
  "driver_refused",
  // Not a counter: the completions the NIC owes the endpoint now (EndpointContext.owed), 0 when its traffic is quiet.
  "completions_owed",
] as const;

export type NicCounterName = (typeof NIC_COUNTER_NAMES)[number];
export type NicEpCounterName = (typeof NIC_EP_COUNTER_NAMES)[number];

export interface NicCounterSnapshot {
  global: Record<NicCounterName, number>;
  /** Indexed by endpoint id (every context, open or not). */
  endpoints: Record<NicEpCounterName, number>[];
}

/** Global slots (more than there are names: room to add counters). */
export const GLOBAL_SLOTS = 96;
if (NIC_COUNTER_NAMES.length > GLOBAL_SLOTS)
  throw new Error("counters.ts: more global counter names than GLOBAL_SLOTS");
export const EP_SLOTS = 32;

function indexOf<T extends string>(names: readonly T[]): Record<T, number> {
  const out = {} as Record<T, number>;
  names.forEach((n, i) => {
    out[n] = i;
  });
  return out;
}

/** Slot of each global counter: `c[NicCounter.sends]++`. */
export const NicCounter = indexOf(NIC_COUNTER_NAMES);
/** Slot of each per-endpoint counter, relative to the endpoint's block: `c[ctx.base + EndpointCounter.sends]++`. */
export const EndpointCounter = indexOf(NIC_EP_COUNTER_NAMES);

/** Per-reason global error counter slots, indexed by ErrorReason (window.ts). */
export const ERROR_REASON_SLOT: readonly number[] = [
  -1,
  NicCounter.error_unknown_opcode,
  NicCounter.error_bad_region,
  NicCounter.error_bad_key,
  NicCounter.error_out_of_bounds,
  NicCounter.error_permission,
  NicCounter.error_bad_length,
  NicCounter.error_unknown_endpoint,
  NicCounter.error_bad_session,
  NicCounter.error_bad_index,
  NicCounter.error_no_resources,
  NicCounter.error_unreachable,
  NicCounter.error_no_right,
  NicCounter.error_no_resources, // HoldExpired travels in SEND_DONE only
  NicCounter.error_no_right, // Throttled: a pull refused its right unexamined
];

export function allocNicCounters(maxEndpoints: number): SharedArrayBuffer {
  return new SharedArrayBuffer((GLOBAL_SLOTS + maxEndpoints * EP_SLOTS) * 8);
}

/** The base slot of endpoint `id`'s block. */
export function endpointCounterBase(id: number): number {
  return GLOBAL_SLOTS + id * EP_SLOTS;
}

/** Reads every counter (the endpoint count is implied by the buffer's size). */
export function readNicCounters(buffer: SharedArrayBuffer): NicCounterSnapshot {
  const all = new Float64Array(buffer);
  const global = {} as Record<NicCounterName, number>;
  NIC_COUNTER_NAMES.forEach((n, i) => {
    global[n] = all[i];
  });
  const endpoints: Record<NicEpCounterName, number>[] = [];
  const count = (all.length - GLOBAL_SLOTS) / EP_SLOTS;
  for (let id = 0; id < count; id++) {
    const ep = {} as Record<NicEpCounterName, number>;
    const base = endpointCounterBase(id);
    NIC_EP_COUNTER_NAMES.forEach((n, i) => {
      ep[n] = all[base + i];
    });
    endpoints.push(ep);
  }
  return { global, endpoints };
}

/** `after − before` of the global counters. */
export function diffNicCounters(
  after: NicCounterSnapshot,
  before: NicCounterSnapshot,
): Record<NicCounterName, number> {
  const out = {} as Record<NicCounterName, number>;
  for (const n of NIC_COUNTER_NAMES) out[n] = after.global[n] - before.global[n];
  return out;
}

/**
 * The endpoint window: the contract between an MX endpoint's owner (a guest's MX library, or
 * a native process) and the emulated NIC, like a Myri-10G endpoint's mapped queues. One
 * SharedArrayBuffer per endpoint, allocated by the NIC and handed to the owner only:
 *
 *   page 0          control block: producer/consumer indices, each on its own cache line
 *   send queue      SQ_ENTRIES descriptors of 64 bytes (owner writes, NIC reads)
 *   event queue     EQ_ENTRIES events of 64 bytes (NIC writes, owner reads)
 *   receive area    RECV_BYTES of eager payloads delivered by the NIC (SEND from a peer)
 *   exposure table  EXPOSURE_ENTRIES pull rights of 32 bytes (owner arms, NIC takes; see below)
 *
 * Every index and every descriptor is hostile input to the NIC: it validates each one and
 * answers garbage with an ERROR event and a counter, never an exception.
 *
 * A second, smaller SharedArrayBuffer per endpoint is its *interrupt page*: the word the
 * owner sleeps on (I_SEQ). The NIC raises it after writing an event, and so may a co-resident
 * peer the backend connected to the endpoint (it is the only part of an endpoint a peer gets).
 * A raiser kicks (Atomics.notify) only when the owner has said it sleeps, and the owner says
 * so to each raiser in memory it shares with that raiser alone: to the NIC in this window
 * (W_OWNER_SLEEPING), to a co-resident peer in the lane that peer writes to it
 * (myrixen/channel-abi.ts ReaderSleeping). Never on the interrupt page: every peer of the
 * owner writes there, and a flag there was one a hostile peer cleared to make the NIC and the
 * honest peers believe the owner awake, so that none of them woke it.
 */
import { PAGE_SIZE } from "../xen/abi.js";

// ---- control block (Int32Array word indices; 16 words = one 64-byte cache line) ----------

/** Owner: descriptors produced (free-running u32). Writing it is the doorbell. */
export const W_SQ_PROD = 0;
/** NIC: descriptors consumed. */
export const W_SQ_CONS = 16;
/** NIC: events produced. */
export const W_EQ_PROD = 32;
/** Owner: events consumed. */
export const W_EQ_CONS = 48;
/**
 * NIC: nonzero while it sleeps waiting for this endpoint's doorbell (the owner then notifies
 * W_SQ_PROD); NIC_SLEEPING_HOLDING when it also holds deliveries for this endpoint that wait
 * for receive space: the owner notifies after releasing space too.
 */
export const W_NIC_SLEEPING = 64;
/** W_NIC_SLEEPING's value when the sleeping NIC holds deliveries for the endpoint. */
export const NIC_SLEEPING_HOLDING = 2;
/**
 * Owner: OWNER_SLEEPING (1) while it sleeps (or is about to) on its interrupt page; the NIC,
 * after writing its events, takes it (CAS 1 → 0) and kicks (raiseInterrupt); the owner clears
 * it when it wakes. OWNER_SLEEPING_QUIET (2): the same, but a PULL_DONE that succeeded while
 * more of the owner's work is at the NIC's hand kicks no one — the owner sleeps in short
 * slices and looks for itself (interrupt moderation, below). The owner writes it only around
 * a sleep, so while it is awake the NIC's look at it is a load of a line that stays shared.
 * The ordering that loses no kick: mx/endpoint.ts sleepUntil.
 */
export const W_OWNER_SLEEPING = 128;
/** W_OWNER_SLEEPING: kick me for every event. */
export const OWNER_SLEEPING = 1;
/**
 * W_OWNER_SLEEPING: kick me, but not for a pull done well while more of my work is at your
 * hand (a pull you are copying, descriptors of mine not yet taken); I wake every
 * QUIET_SLICE_MS to look. The MX library sleeps so while the NIC copies pulls for it from this
 * host's memory (mx/endpoint.ts sleepUntil): an owner waiting on a window of them was woken at
 * every completion, and on a 2-core host the woken owner took the core of the NIC copying the
 * next one (several thousand preemptions a second), each kick costing the NIC a futex call
 * and the other core an interprocessor interrupt. Any other event, a failed pull, the
 * endpoint's close, and a pull after which nothing of the owner's is at hand (its last, or one
 * whose successors wait for the wire) still kick at once; descriptors the NIC holds back (for
 * the owner's caps, behind a stalled one) count as at hand, and the owner's slice bounds what
 * that delays. The library sleeps so only while its local pulls move (mx/nic-queues.ts
 * pullingLocally). A value the owner writes is its own business: whatever it is, the NIC
 * kicks or not, and nothing else.
 */
export const OWNER_SLEEPING_QUIET = 2;
/**
 * The longest an owner sleeping OWNER_SLEEPING_QUIET sleeps before it looks, ms: the latest a
 * pull done while the NIC had more of its work is seen. A stream of 1 MiB messages between
 * co-resident guests (three rounds alternating, 6 runs each): 25.6–26.3 GB/s median against
 * 21–23 woken at every pull.
 */
export const QUIET_SLICE_MS = 0.1;
/** NIC: endpoint state, one of EndpointState. */
export const W_STATE = 80;
export const W_ENDPOINT_ID = 81;
export const W_NIC_ID = 82;
export const W_SESSION = 83;
/** NIC: bytes written into the receive area (free-running u32). */
export const W_RQ_PROD = 96;
/** Owner: bytes of the receive area released (free-running u32). */
export const W_RQ_CONS = 112;

export const EndpointState = { Closed: 0, Open: 1 } as const;

// ---- geometry ------------------------------------------------------------------------------

export const SQ_ENTRIES = 256;
export const DESC_BYTES = 64;
export const DESC_WORDS = DESC_BYTES / 4;
export const EQ_ENTRIES = 1024;
export const EVENT_BYTES = 64;
export const EVENT_WORDS = EVENT_BYTES / 4;
/** The receive area: eight records of SEND_MAX. */
export const RECV_BYTES = 512 * 1024;
/**
 * Largest payload a SEND descriptor may carry (the eager limit through the NIC; larger
 * messages are pulled). 64 KiB: across hosts a rendezvous costs two more crossings of the
 * wire and of the NIC threads (RTS, then PULL, then the data) than an eager message, which
 * costs far more than the extra copies of an eager 64 KiB (issue 17).
 */
export const SEND_MAX = 64 * 1024;
/** Receive-area records start on this alignment. */
export const RECV_ALIGN = 64;

/** Pull rights an endpoint can have armed at once (its rendezvous sends in flight). */
export const EXPOSURE_ENTRIES = 2048;
export const EXPOSURE_BYTES = 32;
export const EXPOSURE_WORDS = EXPOSURE_BYTES / 4;

export const SQ_OFFSET = PAGE_SIZE;
export const EQ_OFFSET = SQ_OFFSET + SQ_ENTRIES * DESC_BYTES;
export const RECV_OFFSET = EQ_OFFSET + EQ_ENTRIES * EVENT_BYTES;
export const EXPOSURE_OFFSET = RECV_OFFSET + RECV_BYTES;
export const WINDOW_BYTES = EXPOSURE_OFFSET + EXPOSURE_ENTRIES * EXPOSURE_BYTES;
export const INTR_BYTES = PAGE_SIZE;

// ---- the exposure table: pull rights, one per message ---------------------------------------
//
// A region's key lets its owner's own descriptors use it; it never lets another endpoint read
// it. To let a peer pull part of a region (the receiver-driven rendezvous), the owner arms an
// *exposure*, as an InfiniBand memory window: a range of one of its regions, under a key that
// is fresh and random for that one message. The rendezvous record carries (entry index, key)
// instead of the region's id and key. The NIC that owns the region serves exactly one PULL
// against an armed exposure (local, or a remote PULL_REQUEST), for a range inside it, and the
// right is spent: pulling again with the same record fails (BAD_KEY, BAD_RDMAWIN), whatever
// the sender has since put in that memory. The owner revokes the entry when the message
// completes, fails or the endpoint closes; the NIC stops a transfer whose entry is revoked.
// One pull is all an honest receiver needs: a truncated receive pulls a prefix of the range,
// and a pull that fails (its link lost mid-way) fails its message — MX reports it, nothing
// retries — so a second pull under the same right is never honest.
//
// Entry words (u32; [OWN] written by the owner, [NIC] by the NIC, both with Atomics):
//   X_STATE   [OWN, NIC]  ExposureState, changed only as the steps below say
//   X_KEY     [OWN]  the key a puller must present: nonzero, fresh for every arming
//   X_REGION  [OWN]  a region of this endpoint with REMOTE_READ
//   X_OFFSET  [OWN]  where the exposed range starts in the region
//   X_LENGTH  [OWN]  bytes exposed
//   words 5..7 reserved (0)
//
// Arming an entry (owner): 1. the entry is Free  2. store X_REGION, X_OFFSET, X_LENGTH
// 3. store a new X_KEY  4. store X_STATE = Armed  5. only now publish (index, key) in a record.
// Taking it (NIC): 1. X_STATE is Armed and X_KEY equals the key presented  2. read the range
// and check it against the TPT  3. CAS X_STATE Armed → Busy  4. read X_KEY again: if it changed,
// the owner re-armed the entry between 1 and 3 (the range read in 2 is not this arming's), so
// the NIC puts the state back and refuses. The owner never re-arms with the same key.
// Ending a transfer (NIC): CAS Busy → Used, or Revoking → Used.
// Revoking (owner): CAS Armed → Free or Used → Free; an entry that is Busy is CAS'd to Revoking
// and the owner waits (its buffer is still being read) until the NIC sets Used, then frees it.
// The NIC looks at X_STATE before every chunk it copies and ends a transfer whose entry is no
// longer Busy. Anything else in an entry (garbage, a state no rule names) is refused.

/** X_STATE values. */
export const ExposureState = {
  /** Not armed: no pull right. */
  Free: 0,
  /** One pull may take it. */
  Armed: 1,
  /** A pull is copying from it. */
  Busy: 2,
  /** Its pull ended: spent. */
  Used: 3,
  /** The owner revoked it while Busy: the NIC ends the transfer and sets Used. */
  Revoking: 4,
} as const;

export const X_STATE = 0;
export const X_KEY = 1;
export const X_REGION = 2;
export const X_OFFSET = 3;
export const X_LENGTH = 4;

// ---- descriptors (u32 word offsets within a 64-byte descriptor) ---------------------------
//
// The owner writes every word of a descriptor ([OWNER]) into the send-queue slot it is about
// to count, then stores W_SQ_PROD (the doorbell). The NIC copies the 16 words out of the slot
// before it looks at any of them (the owner may rewrite the slot meanwhile) and checks each.
// Per opcode, the words the NIC reads (others are ignored):
//   NOP      D_OPCODE
//   PULL     D_OPCODE (flags DFLAG_TRACE, DFLAG_REMOTE, DFLAG_EXPOSURE), D_COOKIE, D_LENGTH,
//            D_DST_REGION, D_DST_OFFSET (the destination, a region of this endpoint);
//            D_SRC_REGION, D_SRC_KEY, D_SRC_OFFSET (the source: a region of this endpoint, or
//            with DFLAG_EXPOSURE / DFLAG_REMOTE a pull right's index, its key and an offset in
//            it); D_DEST_ENDPOINT, D_DEST_SESSION (DFLAG_EXPOSURE / DFLAG_REMOTE: the right's
//            owner) and D_DEST_NIC (DFLAG_REMOTE: that owner's NIC)
//   SEND     D_OPCODE, D_COOKIE, D_LENGTH, D_SRC_REGION, D_SRC_OFFSET, D_DEST_NIC,
//            D_DEST_ENDPOINT, D_DEST_SESSION, D_MATCH_HI, D_MATCH_LO, D_AUX0, D_AUX1; with
//            DFLAG_TRACE also D_DST_KEY (the message's trace sequence, carried to the RECV event)
//   CONNECT  D_OPCODE, D_COOKIE, D_DEST_NIC, D_DEST_ENDPOINT, D_SRC_KEY (the key presented)

/** Low 16 bits: opcode; high 16 bits: flags. */
export const D_OPCODE = 0;
/** Returned unchanged in the completion event. */
export const D_COOKIE = 1;
export const D_SRC_REGION = 2;
export const D_SRC_KEY = 3;
export const D_SRC_OFFSET = 4;
export const D_DST_REGION = 5;
export const D_DST_KEY = 6;
export const D_DST_OFFSET = 7;
export const D_LENGTH = 8;
export const D_DEST_NIC = 9;
export const D_DEST_ENDPOINT = 10;
/** The destination endpoint's session (learned at connect): a closed and reopened endpoint has a new one. */
export const D_DEST_SESSION = 11;
export const D_MATCH_HI = 12;
export const D_MATCH_LO = 13;
/** Protocol words carried to the receiver's RECV event unchanged. */
export const D_AUX0 = 14;
export const D_AUX1 = 15;

/**
 * Descriptor flag (D_OPCODE bits 16..31): trace this PULL. The NIC then stamps when it took
 * the descriptor and when its copy finished, and returns both in the PULL_DONE event at
 * E_TRACE_NIC_SEEN and E_TRACE_DMA_DONE. Untraced descriptors cost the NIC nothing.
 */
export const DFLAG_TRACE = 1;
/**
 * DFLAG_TRACE on a SEND or PULL: this word holds the message's trace sequence (nonzero; the
 * sender's, mx/trace.ts). A SEND carries it in its frame (frame.ts F_TRACE) into the RECV event
 * (E_TRACE_SEQ); the NICs stamp the message into their trace rings (nic/trace-ring.ts) when they
 * have one. A PULL names its message's sender in D_DEST_NIC/D_DEST_ENDPOINT.
 */
export const D_TRACE_SEQ = D_DST_KEY;

/**
 * Descriptor flag: a PULL whose source region lives on another NIC. D_DEST_NIC,
 * D_DEST_ENDPOINT and D_DEST_SESSION name the endpoint that owns the source region (the
 * sender of the rendezvous); D_SRC_REGION, D_SRC_KEY and D_SRC_OFFSET name its pull right (as
 * for DFLAG_EXPOSURE). The NIC asks the peer NIC with PULL_REQUEST frames; the peer takes the
 * right (owner endpoint and session, entry, key, range, the region behind it) and answers with PULL_REPLY frames of at most SEND_MAX bytes each,
 * which this NIC writes into the destination region. PULL_DONE's status: SUCCESS; the peer's
 * refusal (BAD_KEY, BAD_RDMAWIN, ENDPOINT_CLOSED, BAD_SESSION; ENDPOINT_UNKNOWN for an
 * endpoint id the peer does not have; NO_RESOURCES if it serves too many pulls); ABORTED when
 * the source or the destination region is deregistered, or the pull right revoked, mid-transfer
 * (ENDPOINT_CLOSED when the source endpoint closes); ENDPOINT_UNREACHABLE when there is no link to D_DEST_NIC, the link
 * goes away, or no reply makes progress for WIRE_TIMEOUT_MS; TIMEOUT when it is not done by its
 * deadline, however its replies trickle (pullDeadlineMs); REJECTED while the peer refuses this
 * endpoint's pulls for its refused ones (nic/pull-throttle.ts). Never a hang. The destination is
 * checked before anything is sent: a bad one is an ERROR event, as for a local PULL. Unlike a
 * local PULL, a remote one does not hold the endpoint's later descriptors: its PULL_DONE may
 * come after theirs; but an endpoint has at most 64 out (nic/remote-pull.ts PULL_CREDITS),
 * and the next waits at the head of its queue until one of them ends. D_DEST_NIC = this NIC works too (as frames over a loopback link if one is
 * attached, else copied directly after the same checks).
 */
export const DFLAG_REMOTE = 2;

/**
 * Descriptor flag: the PULL's source is a pull right another endpoint armed (the exposure
 * table above), not a region of this endpoint: D_DEST_ENDPOINT and D_DEST_SESSION name the
 * endpoint that armed it, D_SRC_REGION is the entry's index, D_SRC_KEY its key, D_SRC_OFFSET
 * an offset within the exposed range. Implied by DFLAG_REMOTE (a remote PULL always names an
 * exposure). The destination is checked first, so a bad one does not spend the right.
 */
export const DFLAG_EXPOSURE = 4;

/**
 * How long a request that waits on another NIC (CONNECT, a remote PULL without progress, a
 * SEND's acknowledgement) may wait before it completes with ENDPOINT_UNREACHABLE. A receiving
 * NIC that holds a SEND for receive space says so every WIRE_TIMEOUT_MS / 3 (a PENDING
 * SEND_ACK), which restarts the sender's wait: a slow receiver is not an unreachable one. A
 * peer NIC that has said nothing for this long while such a request is overdue is silent:
 * everything waiting on its link fails at once, descriptors still queued for it included.
 */
export const WIRE_TIMEOUT_MS = 1500;

/**
 * How long a NIC holds a delivery (SEND) for an endpoint whose receive area is full, at most.
 * Then it gives up: the delivery, and every later one from the same sender still held with it,
 * complete NO_RESOURCES with E_REASON HoldExpired (the sender's keepalives stop). A receiver
 * that does not consume costs its senders an error, never a hang, and never holds its link.
 */
export const HOLD_MS = 5000;

/**
 * The slowest a remote PULL may be served (bytes per second): whatever its progress, it ends
 * TIMEOUT at pullDeadlineMs(length) after it was asked for. A peer that kept a pull alive with
 * a byte every WIRE_TIMEOUT_MS held it, and its share of the requester's pulls on that link
 * (PULL_JOBS_PER_LINK), for ever; with them full, the requester's next pull to it waited at the
 * head of its endpoint's queue, and every descriptor behind it, to any destination, with it.
 * 32 KiB/s is far below any honest link (1 Gb/s is 3,800 times it) and below the slowest
 * serving WIRE_TIMEOUT_MS lets live: an honest NIC sends full SEND_MAX frames, so one frame per
 * WIRE_TIMEOUT_MS is already 43 KB/s, and a pull served that slowly still ends in time.
 */
export const PULL_MIN_BYTES_PER_S = 32 * 1024;

/** A remote PULL of `length` bytes ends by this long after it was asked for (ms; see PULL_MIN_BYTES_PER_S). */
export function pullDeadlineMs(length: number): number {
  return WIRE_TIMEOUT_MS + (length * 1000) / PULL_MIN_BYTES_PER_S;
}

export const Opcode = {
  Nop: 0,
  /**
   * PULL: copy D_LENGTH bytes into (D_DST_REGION, D_DST_OFFSET), a region of this endpoint
   * with LOCAL_WRITE, from a pull right another endpoint armed (DFLAG_EXPOSURE, DFLAG_REMOTE:
   * the receiver-driven rendezvous) or, without those flags, from (D_SRC_REGION, D_SRC_KEY,
   * D_SRC_OFFSET), a region of this same endpoint with LOCAL_READ or REMOTE_READ whose key
   * matches (a local copy). Completes with PULL_DONE.
   */
  Pull: 1,
  /**
   * SEND: D_LENGTH ≤ SEND_MAX bytes from (D_SRC_REGION, D_SRC_OFFSET), a region of this
   * endpoint with LOCAL_READ, to endpoint (D_DEST_NIC, D_DEST_ENDPOINT, D_DEST_SESSION)
   * over the NIC's link to that NIC (loopback for its own id). The receiver gets a RECV
   * event with the match words and D_AUX0/1; the sender a SEND_DONE.
   */
  Send: 2,
  /**
   * CONNECT: resolve endpoint (D_DEST_NIC, D_DEST_ENDPOINT) presenting key D_SRC_KEY, as
   * mx_connect does, without the driver: the NIC that owns the endpoint checks the key (a
   * CONNECT_REQUEST frame when D_DEST_NIC is another NIC, directly when it is this one).
   * Completes with a CONNECT_DONE event: status SUCCESS and E_SRC_NIC/E_SRC_ENDPOINT/
   * E_SRC_SESSION = the peer and its session; BAD_KEY; ENDPOINT_UNKNOWN (no such endpoint
   * open); ENDPOINT_UNREACHABLE (no link, link lost, or no reply within WIRE_TIMEOUT_MS).
   * An endpoint has at most 16 waiting on other NICs (nic/connect.ts CONNECT_CREDITS); the
   * next waits at the head of its queue until one of them ends.
   */
  Connect: 3,
} as const;

// ---- events (u32 word offsets within a 64-byte event) ---------------------------------------
//
// The NIC writes every word of an event ([NIC]); the owner only reads them. The NIC stores an
// event's words first and W_EQ_PROD after them (Atomics.store), so an owner that loads
// W_EQ_PROD and sees the event counted reads it whole; it releases the slot by storing W_EQ_CONS.
// Words a type does not list are 0. Per type (nic/events.ts builds each one):
//
//   PULL_DONE     a PULL descriptor ended
//     0  E_TYPE            [NIC] EventType.PullDone | status << 16: SUCCESS, ABORTED (a region
//                          went away, or the pull right was revoked, mid-pull), or a refusal or
//                          failure of a remote pull (DFLAG_REMOTE says which)
//     1  E_COOKIE          [NIC] the descriptor's D_COOKIE
//     2  E_LENGTH          [NIC] bytes copied (all of D_LENGTH on SUCCESS)
//    12  E_TRACE_NIC_SEEN  [NIC] DFLAG_TRACE only: float64 over words 12..13, when the NIC took it
//    14  E_TRACE_DMA_DONE  [NIC] DFLAG_TRACE only: float64 over words 14..15, when its copy ended
//
//   SEND_DONE     a SEND descriptor ended
//     0  E_TYPE            [NIC] EventType.SendDone | status << 16: SUCCESS once the payload is
//                          placed, else ENDPOINT_UNKNOWN, ENDPOINT_CLOSED, BAD_SESSION,
//                          ENDPOINT_UNREACHABLE or NO_RESOURCES
//     1  E_COOKIE          [NIC] the descriptor's D_COOKIE
//     2  E_LENGTH          [NIC] the descriptor's D_LENGTH
//    12  E_REASON          [NIC] a failure's ErrorReason (the receiving NIC's, when it sent one:
//                          NoResources, HoldExpired), 0 on SUCCESS. NoResources: the receiver's
//                          NIC holds as many of this sender's messages as it may (nic/delivery.ts);
//                          nothing was placed, and the same SEND may be posted again later
//
//   RECV          a SEND from a peer endpoint was placed in the receive area
//     0  E_TYPE            [NIC] EventType.Recv (status SUCCESS)
//     2  E_LENGTH          [NIC] payload bytes
//     3  E_SRC_NIC         [NIC] the sending NIC (the link it came on, or this NIC)
//     4  E_SRC_ENDPOINT    [NIC] the sending endpoint, as its NIC stamped it
//     5  E_SRC_SESSION     [NIC] that endpoint's session, as its NIC stamped it
//     6  E_MATCH_HI        [NIC] the sender's D_MATCH_HI, unchanged
//     7  E_MATCH_LO        [NIC] the sender's D_MATCH_LO, unchanged
//     8  E_RECV_OFFSET     [NIC] where the payload starts in the receive area
//     9  E_RECV_SPAN       [NIC] bytes to release (W_RQ_CONS += span) once consumed, in order
//    10  E_AUX0            [NIC] the sender's D_AUX0, unchanged
//    11  E_AUX1            [NIC] the sender's D_AUX1, unchanged
//    12  E_TRACE_SEQ       [NIC] the sender's trace sequence (D_TRACE_SEQ of a SEND with
//                          DFLAG_TRACE, via the frame's F_TRACE), else 0
//
//   ERROR         a descriptor the NIC refused (it had no effect)
//     0  E_TYPE            [NIC] EventType.Error | status << 16 (REASON_STATUS in status.ts, or
//                          the MX status of a refused pull right)
//     1  E_COOKIE          [NIC] the descriptor's D_COOKIE
//     2  E_LENGTH          [NIC] the descriptor's D_LENGTH
//    12  E_REASON          [NIC] why: an ErrorReason
//    13  E_ERROR_OPCODE    [NIC] the descriptor's D_OPCODE word
//   ERROR with E_REASON = BadIndex: no descriptor, the send queue's indices are garbage
//     0  E_TYPE            [NIC] EventType.Error | ABORTED << 16
//    12  E_REASON          [NIC] ErrorReason.BadIndex
//    13  E_BAD_INDEX_PRODUCER  [NIC] the W_SQ_PROD the NIC read
//    14  E_BAD_INDEX_CONSUMER  [NIC] the NIC's own consumer index; it then resynchronises to
//                          the producer's
//
//   DRIVER        written on the driver's request (control op deliver_event)
//     0  E_TYPE            [NIC] EventType.Driver (status SUCCESS)
//     1  E_COOKIE          [NIC] the driver's cookie
//    12..15  E_DRIVER_WORDS  [NIC] up to 4 words the driver gave
//
//   CONNECT_DONE  a CONNECT descriptor ended
//     0  E_TYPE            [NIC] EventType.ConnectDone | status << 16: SUCCESS, BAD_KEY,
//                          REJECTED (too many wrong keys from this endpoint), ENDPOINT_UNKNOWN,
//                          ENDPOINT_UNREACHABLE or NO_RESOURCES
//     1  E_COOKIE          [NIC] the descriptor's D_COOKIE
//     3  E_SRC_NIC         [NIC] the endpoint asked for: its NIC (D_DEST_NIC)
//     4  E_SRC_ENDPOINT    [NIC] and its id (D_DEST_ENDPOINT)
//     5  E_SRC_SESSION     [NIC] its session (SUCCESS only)
//    10  E_CONNECT_RETRY_MS [NIC] REJECTED: ms to wait before the next try (nic/connect-throttle.ts)

/** Low 16 bits: event type; high 16 bits: MX status code (mx_status_code_t). */
export const E_TYPE = 0;
export const E_COOKIE = 1;
export const E_LENGTH = 2;
export const E_SRC_NIC = 3;
export const E_SRC_ENDPOINT = 4;
export const E_SRC_SESSION = 5;
export const E_MATCH_HI = 6;
export const E_MATCH_LO = 7;
/** RECV: where the payload starts in the receive area (byte offset from RECV_OFFSET). */
export const E_RECV_OFFSET = 8;
/** RECV: bytes of receive area to release (W_RQ_CONS += span) once the payload is consumed, in order. */
export const E_RECV_SPAN = 9;
export const E_AUX0 = 10;
export const E_AUX1 = 11;
/** ERROR and SEND_DONE: a reason code (ErrorReason). */
export const E_REASON = 12;
/** ERROR: the refused descriptor's D_OPCODE word. */
export const E_ERROR_OPCODE = 13;
/** ERROR (BadIndex): the W_SQ_PROD the NIC read. */
export const E_BAD_INDEX_PRODUCER = 13;
/** ERROR (BadIndex): the NIC's consumer index when it read it. */
export const E_BAD_INDEX_CONSUMER = 14;
/** CONNECT_DONE (REJECTED): ms the requester must wait. */
export const E_CONNECT_RETRY_MS = E_AUX0;
/** DRIVER: the driver's words 12..15. */
export const E_DRIVER_WORDS = 12;
/** The first word past the common ones (E_DRIVER_WORDS, E_TRACE_NIC_SEEN start here). */
export const E_EXTRA = 12;
/**
 * PULL_DONE of a descriptor with DFLAG_TRACE: words 12..13 and 14..15 hold two float64
 * (little-endian, 8-byte aligned in the window: a Float64Array over the window reads them at
 * word index / 2), the NIC's trace-clock stamps (nic/clock.ts traceNow(), ms) of taking the
 * descriptor (nic-seen) and of finishing its copy (dma-done). Full doubles rather than
 * offsets: no base has to travel, and a microsecond offset in a float32 would lose precision
 * for long copies. Untraced PULL_DONE events leave them 0.
 */
export const E_TRACE_NIC_SEEN = 12;
export const E_TRACE_DMA_DONE = 14;
/** RECV: the sender's trace sequence, 0 when untraced (see D_TRACE_SEQ). */
export const E_TRACE_SEQ = 12;

export const EventType = {
  PullDone: 1,
  SendDone: 2,
  Recv: 3,
  /** A descriptor the NIC refused: E_COOKIE is the descriptor's cookie, E_REASON says why. */
  Error: 4,
  /** Written on a driver's request (control op deliver_event), e.g. "peer connected". */
  Driver: 5,
  /** The answer to a CONNECT descriptor (see Opcode.Connect). */
  ConnectDone: 6,
} as const;

export const ErrorReason = {
  UnknownOpcode: 1,
  BadRegion: 2,
  BadKey: 3,
  OutOfBounds: 4,
  Permission: 5,
  BadLength: 6,
  UnknownEndpoint: 7,
  BadSession: 8,
  BadIndex: 9,
  /** SEND_DONE: the receiving NIC holds as many of this sender's (host's, domain's) deliveries as it may; nothing placed. */
  NoResources: 10,
  Unreachable: 11,
  /** PULL: the exposure is not armed (spent, revoked or never armed), or was re-armed meanwhile. */
  NoRight: 12,
  /** SEND_DONE: the receiving endpoint did not free receive space within HOLD_MS. */
  HoldExpired: 13,
  /** PULL: the requester is locked out for its refused pulls (nic/pull-throttle.ts); the right was not looked at. */
  Throttled: 14,
} as const;

/** TPT access bits of a registered region. */
export const Access = {
  LocalRead: 1,
  LocalWrite: 2,
  RemoteRead: 4,
  RemoteWrite: 8,
} as const;

/** MX_ANY_ENDPOINT: let the NIC choose the endpoint id. */
export const ANY_ENDPOINT = 0xffffffff;

// ---- interrupt page -------------------------------------------------------------------------

//
// One word: I_SEQ, the futex word. The rest of the page is unused and no one reads it (word 16
// was I_SLEEPING, the owner's "kick me" flag, until any peer holding the page could clear it:
// the flags are now W_OWNER_SLEEPING and each lane's ReaderSleeping, see the header).
// Everyone the page is granted to can write I_SEQ, so a hostile holder can make its owner
// wake for nothing (CPU, not latency: the owner re-checks and sleeps again); and, by setting
// the word back to the value the owner read in a tight loop, it could hide a kick that lands
// in the instant between the owner's last look at its flags and its Atomics.wait (see
// mx/endpoint.ts sleepUntil), a rare lost kick that costs the owner one sleep slice.

/** Incremented by every kick; the owner sleeps with Atomics.wait(intr, I_SEQ, seenValue). */
export const I_SEQ = 0;

/**
 * Raise an interrupt: kick the owner of `intr` only if it said it sleeps in `flags[flag]` (a
 * word only it and this raiser reach), taking the flag down as it does, so that the events
 * or records that follow while it wakes cost no more kicks. `quietOk`: what is raised may wait
 * for an owner that sleeps OWNER_SLEEPING_QUIET (it looks by itself). Returns whether it
 * kicked. A load first: while the owner is awake the flag's line stays shared in both caches,
 * where a compare-exchange every time would pull it across the cores.
 */
export function raiseInterrupt(flags: Int32Array, flag: number, intr: Int32Array, quietOk = false): boolean {
  const v = Atomics.load(flags, flag);
  if (v !== OWNER_SLEEPING && (v !== OWNER_SLEEPING_QUIET || quietOk)) return false;
  if (Atomics.compareExchange(flags, flag, v, 0) !== v) return false;
  Atomics.add(intr, I_SEQ, 1);
  Atomics.notify(intr, I_SEQ);
  return true;
}

/**
 * The wire format between NICs: the frame header and, per frame type, what every word holds
 * (as Xen's io/xs_wire.h stands apart from xenstored, this file stands apart from the engines
 * that build and parse frames: send.ts, delivery.ts, connect.ts, remote-pull.ts,
 * ether-service.ts). A frame is a 64-byte header of 16 little-endian u32 words, then the
 * payload; a link (link.ts) carries frames whole.
 *
 *   octet  +0              +4              +8              +12
 *      0   | type word     | length        | src nic       | src endpoint  |
 *     16   | src session   | dest nic      | dest endpoint | dest session  |
 *     32   | match hi      | match lo      | aux0          | aux1          |
 *     48   | cookie        | status        | tag           | reserved (0)  |
 *     64   payload (F_LENGTH bytes, ≤ SEND_MAX)
 *
 *   word 0   F_MAGIC    FRAME_MAGIC << 16 | FRAME_VERSION << 8 | FrameType
 *   word 1   F_LENGTH   payload bytes after the header (≤ SEND_MAX; 0 for header-only types)
 *   words 2..14         per type, below; word 15 and every word a type does not list are 0
 *
 * Who writes a word. The NIC that sends a frame writes all of it, and to the NIC that receives
 * it every word is hostile input (checkFrame, then each engine's checks). The marks say where
 * the sending NIC took a word from:
 *   [NIC]       its own value: its id, one of its endpoints and that endpoint's session, a
 *               status, a request id or window tag it made
 *   [OWNER]     copied unchanged from the descriptor the sending endpoint's owner wrote
 *               (window.ts D_*); for ETHERNET, from the frame the bridge queued in the port
 *   [PEER NIC]  echoed from the peer NIC's frame this one answers
 * Every received frame must name this NIC in F_DEST_NIC and the link's peer in F_SRC_NIC
 * (links.ts checks both before any engine looks at it).
 *
 * ---- SEND (sender's NIC → receiver's NIC; payload: the message) ----------------------------
 *    1  F_LENGTH         [OWNER]    D_LENGTH (the sending NIC checked ≤ SEND_MAX)
 *    2  F_SRC_NIC        [NIC]      the sending NIC
 *    3  F_SRC_ENDPOINT   [NIC]      the sending endpoint
 *    4  F_SRC_SESSION    [NIC]      its session
 *    5  F_DEST_NIC       [OWNER]    D_DEST_NIC
 *    6  F_DEST_ENDPOINT  [OWNER]    D_DEST_ENDPOINT
 *    7  F_DEST_SESSION   [OWNER]    D_DEST_SESSION: a closed and reopened endpoint refuses it
 *    8  F_MATCH_HI       [OWNER]    D_MATCH_HI  \
 *    9  F_MATCH_LO       [OWNER]    D_MATCH_LO   | carried into the receiver's RECV event
 *   10  F_AUX0           [OWNER]    D_AUX0       |
 *   11  F_AUX1           [OWNER]    D_AUX1      /
 *   12  F_COOKIE         [OWNER]    D_COOKIE, echoed by the SEND_ACK
 *   14  F_TAG            [NIC]      the SEND's slot in the sender's window (bits 0..15) and that
 *                                   slot's generation (bits 16..31), echoed by the SEND_ACK
 *   15  F_TRACE          [OWNER]    D_TRACE_SEQ with DFLAG_TRACE (the message's trace sequence,
 *                                   into the RECV event's E_TRACE_SEQ), else 0
 *
 * ---- SEND_ACK (receiver's NIC → sender's NIC; header only) ----------------------------------
 *    2  F_SRC_NIC        [NIC]      the receiving NIC
 *    3  F_SRC_ENDPOINT   [PEER NIC] the SEND's F_DEST_ENDPOINT
 *    4  F_SRC_SESSION    [PEER NIC] the SEND's F_DEST_SESSION
 *    5  F_DEST_NIC       [PEER NIC] the SEND's F_SRC_NIC
 *    6  F_DEST_ENDPOINT  [PEER NIC] the SEND's F_SRC_ENDPOINT  \
 *    7  F_DEST_SESSION   [PEER NIC] the SEND's F_SRC_SESSION    | with F_TAG, what the sender
 *   12  F_COOKIE         [PEER NIC] the SEND's F_COOKIE         | matches against its window
 *   14  F_TAG            [PEER NIC] the SEND's F_TAG           /
 *   13  F_STATUS         [NIC]      the delivery's MX status: SUCCESS once placed; PENDING (1) is a
 *                                   keepalive (held for receive space: the sender restarts its
 *                                   timeout); else ENDPOINT_UNKNOWN, ENDPOINT_CLOSED, BAD_SESSION,
 *                                   NO_RESOURCES. Anything above NO_RESOURCES reads as ABORTED
 *   10  F_ACK_LENGTH     [PEER NIC] the SEND's F_LENGTH
 *   11  F_ACK_REASON     [NIC]      a failure's ErrorReason (NoResources: the receiver's queue holds
 *                                   as many of this NIC's as it may, nothing placed, send it again
 *                                   later; HoldExpired: held HOLD_MS); one above MAX_PEER_REASON
 *                                   (status.ts) is replaced by the status's own
 *
 * ---- CONNECT_REQUEST (requester's NIC → the NIC of the endpoint asked for; header only) ------
 *    2  F_SRC_NIC        [NIC]      the requester's NIC (the answering NIC uses its link's peer)
 *    3  F_SRC_ENDPOINT   [NIC]      the requesting endpoint (its wrong keys are throttled)
 *    4  F_SRC_SESSION    [NIC]      its session
 *    5  F_DEST_NIC       [OWNER]    D_DEST_NIC
 *    6  F_DEST_ENDPOINT  [OWNER]    D_DEST_ENDPOINT: the endpoint asked for
 *   12  F_COOKIE         [NIC]      the request id: the connect slot's id (generation << 8 | slot)
 *   10  F_CONNECT_KEY    [OWNER]    D_SRC_KEY: the key presented
 *
 * ---- CONNECT_REPLY (the asked NIC → requester's NIC; header only) ----------------------------
 *    2  F_SRC_NIC        [NIC]      the answering NIC
 *    3  F_SRC_ENDPOINT   [PEER NIC] the request's F_DEST_ENDPOINT (checked against the slot)
 *    4  F_SRC_SESSION    [NIC]      the session of the endpoint asked for (SUCCESS only, else 0)
 *    5  F_DEST_NIC       [PEER NIC] the request's F_SRC_NIC
 *    6  F_DEST_ENDPOINT  [PEER NIC] the request's F_SRC_ENDPOINT  \ checked against the slot
 *    7  F_DEST_SESSION   [PEER NIC] the request's F_SRC_SESSION   |
 *   12  F_COOKIE         [PEER NIC] the request id               /
 *   13  F_STATUS         [NIC]      SUCCESS, BAD_KEY, REJECTED (locked out) or ENDPOINT_UNKNOWN;
 *                                   PENDING or anything above NO_RESOURCES reads as ABORTED
 *   10  F_CONNECT_RETRY_MS [NIC]    REJECTED: ms the requester must wait (connect-throttle.ts);
 *                                   more than CONNECT_LOCKOUT_MAX_MS reads as 0
 *
 * ---- PULL_REQUEST (puller's NIC → the NIC of the source's owner; header only) ---------------
 *    2  F_SRC_NIC        [NIC]      the puller's NIC
 *    3  F_SRC_ENDPOINT   [NIC]      the pulling endpoint (its refused pulls are throttled)
 *    4  F_SRC_SESSION    [NIC]      its session
 *    5  F_DEST_NIC       [OWNER]    D_DEST_NIC
 *    6  F_DEST_ENDPOINT  [OWNER]    D_DEST_ENDPOINT: the endpoint that armed the pull right
 *    7  F_DEST_SESSION   [OWNER]    D_DEST_SESSION: its session (0 in a cancel)
 *   12  F_COOKIE         [NIC]      the request id: the remote-pull slot's id (generation << 8 | slot)
 *   13  F_STATUS         [NIC]      0; nonzero (ABORTED) cancels the request with this id on this
 *                                   link (the puller gave up: its region or endpoint went away)
 *    8  F_PULL_RIGHT     [OWNER]    D_SRC_REGION: the right's index in the exposure table
 *    9  F_PULL_KEY       [OWNER]    D_SRC_KEY: the right's key
 *   10  F_PULL_OFFSET    [OWNER]    D_SRC_OFFSET: where to start within the exposed range
 *   11  F_PULL_LENGTH    [OWNER]    D_LENGTH: bytes to pull
 *
 * ---- PULL_REPLY (source owner's NIC → puller's NIC; payload: bytes of the transfer) ----------
 *    1  F_LENGTH         [NIC]      ≤ SEND_MAX bytes; SUCCESS replies come in order, each
 *                                   continuing where the last ended (a zero-length pull gets one
 *                                   empty reply); an error reply is header-only and ends the pull
 *    2  F_SRC_NIC        [NIC]      the serving NIC
 *    3  F_SRC_ENDPOINT   [PEER NIC] the request's F_DEST_ENDPOINT: the right's owner
 *    4  F_SRC_SESSION    [PEER NIC] the request's F_DEST_SESSION
 *    5  F_DEST_NIC       [PEER NIC] the request's F_SRC_NIC
 *    6  F_DEST_ENDPOINT  [PEER NIC] the request's F_SRC_ENDPOINT
 *    7  F_DEST_SESSION   [PEER NIC] the request's F_SRC_SESSION
 *   12  F_COOKIE         [PEER NIC] the request id
 *   13  F_STATUS         [NIC]      SUCCESS, or the error that ends the pull: BAD_KEY, BAD_RDMAWIN,
 *                                   ENDPOINT_UNKNOWN, ENDPOINT_CLOSED, BAD_SESSION, NO_RESOURCES,
 *                                   REJECTED (the requester is locked out for its refused pulls:
 *                                   pull-throttle.ts), BAD_ENDPOINT (a requester no NIC can have),
 *                                   ABORTED (PENDING or anything above NO_RESOURCES reads as ABORTED)
 *   10  F_PULL_OFFSET    [NIC]      SUCCESS: where this payload sits in the transfer (0 in an error)
 *   11  F_PULL_LENGTH    [PEER NIC] the request's F_PULL_LENGTH: the whole transfer
 *
 * ---- ETHERNET (an Ethernet port's uplink frame, NIC → NIC; payload: one Ethernet frame) ------
 *    1  F_LENGTH         [OWNER]    the Ethernet frame's length (ETHER_MIN_FRAME..ETHER_MAX_FRAME)
 *    2  F_SRC_NIC        [NIC]      the sending NIC
 *    5  F_DEST_NIC       [NIC]      the link's peer (the link its destination MAC was learned on,
 *                                   or each link in turn when flooding)
 *   payload              [OWNER]    the frame the bridge queued in the port (ether-port.ts)
 */
import { SEND_MAX } from "./window.js";

export const FRAME_MAGIC = 0x4d58;
/**
 * 2: a PULL_REQUEST names a pull right (an exposure: window.ts) instead of a region
 * and its key; a SEND carries its window tag, which the SEND_ACK echoes with the failure's
 * reason. A peer speaking another version has its frames refused (checkFrame).
 */
export const FRAME_VERSION = 2;
export const FRAME_HEADER_BYTES = 64;
export const FRAME_MAX = FRAME_HEADER_BYTES + SEND_MAX;

/**
 * Frame types. SEND/SEND_ACK carry a SEND descriptor's message and its outcome;
 * PULL_REQUEST/PULL_REPLY a remote PULL (window.ts DFLAG_REMOTE); CONNECT_REQUEST/CONNECT_REPLY
 * a CONNECT descriptor; ETHERNET a raw Ethernet frame between NIC Ethernet ports (the split
 * path's uplink to other hosts). The words each type uses are in the header above.
 */
export const FrameType = {
  Send: 1,
  SendAck: 2,
  PullRequest: 3,
  PullReply: 4,
  ConnectRequest: 5,
  ConnectReply: 6,
  Ethernet: 7,
} as const;

export const F_MAGIC = 0;
export const F_LENGTH = 1;
export const F_SRC_NIC = 2;
export const F_SRC_ENDPOINT = 3;
export const F_SRC_SESSION = 4;
export const F_DEST_NIC = 5;
export const F_DEST_ENDPOINT = 6;
export const F_DEST_SESSION = 7;
export const F_MATCH_HI = 8;
export const F_MATCH_LO = 9;
export const F_AUX0 = 10;
export const F_AUX1 = 11;
export const F_COOKIE = 12;
export const F_STATUS = 13;
export const F_TAG = 14;
/** SEND: the message's trace sequence (0: untraced). */
export const F_TRACE = 15;

// Per-type names of the words above (the tables in the header).
/** SEND_ACK: the acknowledged SEND's payload length. */
export const F_ACK_LENGTH = F_AUX0;
/** SEND_ACK: a failure's ErrorReason. */
export const F_ACK_REASON = F_AUX1;
/** CONNECT_REQUEST: the endpoint key presented. */
export const F_CONNECT_KEY = F_AUX0;
/** CONNECT_REPLY (REJECTED): how long the requester is locked out, ms. */
export const F_CONNECT_RETRY_MS = F_AUX0;
/** PULL_REQUEST: the pull right's index in the source endpoint's exposure table. */
export const F_PULL_RIGHT = F_MATCH_HI;
/** PULL_REQUEST: the pull right's key. */
export const F_PULL_KEY = F_MATCH_LO;
/** PULL_REQUEST: offset within the exposed range; PULL_REPLY: this payload's offset in the transfer. */
export const F_PULL_OFFSET = F_AUX0;
/** PULL_REQUEST and PULL_REPLY: the transfer's length. */
export const F_PULL_LENGTH = F_AUX1;

/** Reads header word `w` as a u32 (byte-wise: frames need not be 4-aligned in their buffer). */
export function getWord(frame: Uint8Array, w: number): number {
  const o = w * 4;
  return (frame[o] | (frame[o + 1] << 8) | (frame[o + 2] << 16) | (frame[o + 3] << 24)) >>> 0;
}

export function setWord(frame: Uint8Array, w: number, v: number): void {
  const o = w * 4;
  frame[o] = v;
  frame[o + 1] = v >>> 8;
  frame[o + 2] = v >>> 16;
  frame[o + 3] = v >>> 24;
}

/** Starts a header: magic, version, type, payload length; zeroes every other word. */
export function initFrame(frame: Uint8Array, type: number, payloadLength: number): void {
  frame.fill(0, 0, FRAME_HEADER_BYTES);
  setWord(frame, F_MAGIC, ((FRAME_MAGIC << 16) | (FRAME_VERSION << 8) | type) >>> 0);
  setWord(frame, F_LENGTH, payloadLength);
}

// The header's writer: every engine begins a frame with beginFrame, then names its ends with
// setFrameSource and setFrameDest (a type that leaves a word of theirs unset passes 0), then
// writes its own type's words (the tables above) with setWord.

/** Starts a header: initFrame (magic, version, type, payload length; the rest 0) and its cookie. */
export function beginFrame(frame: Uint8Array, type: number, payloadLength: number, cookie: number): void {
  initFrame(frame, type, payloadLength);
  setWord(frame, F_COOKIE, cookie);
}

/** Who sends the frame: words 2..4, NIC, endpoint, session. */
export function setFrameSource(frame: Uint8Array, nic: number, endpoint: number, session: number): void {
  setWord(frame, F_SRC_NIC, nic);
  setWord(frame, F_SRC_ENDPOINT, endpoint);
  setWord(frame, F_SRC_SESSION, session);
}

/** Whom the frame is for: words 5..7, NIC, endpoint, session. */
export function setFrameDest(frame: Uint8Array, nic: number, endpoint: number, session: number): void {
  setWord(frame, F_DEST_NIC, nic);
  setWord(frame, F_DEST_ENDPOINT, endpoint);
  setWord(frame, F_DEST_SESSION, session);
}

/**
 * The frame's type if its header is well formed (magic, version, a payload that fits both
 * SEND_MAX and the bytes present), else -1. `frameLength`: the whole frame's length where
 * `frame` holds only its start (a link checking a header before the payload has come).
 */
export function checkFrame(frame: Uint8Array, frameLength = frame.length): number {
  if (frame.length < FRAME_HEADER_BYTES) return -1;
  const m = getWord(frame, F_MAGIC);
  if (m >>> 16 !== FRAME_MAGIC || ((m >>> 8) & 0xff) !== FRAME_VERSION) return -1;
  const len = getWord(frame, F_LENGTH);
  if (len > SEND_MAX || FRAME_HEADER_BYTES + len > frameLength) return -1;
  return m & 0xff;
}

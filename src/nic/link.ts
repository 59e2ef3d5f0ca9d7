/**
 * Links between NICs (the Myrinet / 10GbE wire) and the frames they carry. A link is an
 * abstract frame pipe to one peer NIC; the loopback link here delivers to the NIC itself,
 * which exercises the whole frame path (encode, back-pressure, decode, acknowledgement) in
 * one process. A TCP link for multi-host clusters goes next to it, behind the same interface.
 *
 * Frame = 64-byte header of 16 little-endian u32 words, then the payload:
 *
 *   0  magic 0x4d58 ("MX") << 16 | version << 8 | type (FrameType)
 *   1  payload length (bytes after the header; ≤ SEND_MAX)
 *   2  source nic          3  source endpoint       4  source session
 *   5  destination nic     6  destination endpoint  7  destination session
 *   8  match hi            9  match lo              10 aux0     11 aux1
 *   12 cookie (the sender's descriptor cookie, echoed by the SEND_ACK)
 *   13 status (SEND_ACK: the MX status of the delivery)
 *   14 tag (SEND: the sending NIC's window slot and generation, echoed by the SEND_ACK)
 *   15 reserved (0)
 *
 * SEND carries a payload to (destination endpoint, session); the receiving NIC answers with a
 * header-only SEND_ACK whose destination is the original sender and whose status says
 * whether the payload was placed (SUCCESS) or why not, with the ErrorReason in aux1 (or,
 * PENDING, that it is still held for receive space: a keepalive). The sending NIC keeps each
 * unacknowledged SEND in a bounded window per link, with a share per destination endpoint
 * (wire.ts), so that a lost link or a missing ACK completes it with ENDPOINT_UNREACHABLE and
 * one receiver that does not consume cannot stall the others. Every field of a received frame
 * is hostile input.
 */
import { SEND_MAX } from "./window.js";

export const FRAME_MAGIC = 0x4d58;
/**
 * 2: a PULL_REQUEST names a pull right (an exposure: nic.ts, window.ts) instead of a region
 * and its key; a SEND carries its window tag, which the SEND_ACK echoes with the failure's
 * reason. A peer speaking another version has its frames refused (checkFrame).
 */
export const FRAME_VERSION = 2;
export const FRAME_HEADER_BYTES = 64;
export const FRAME_MAX = FRAME_HEADER_BYTES + SEND_MAX;

/**
 * Frame types. SEND/SEND_ACK as above; PULL_REQUEST/PULL_REPLY carry a remote PULL
 * (window.ts DFLAG_REMOTE); CONNECT_REQUEST/CONNECT_REPLY a CONNECT descriptor; ETHERNET a raw
 * Ethernet frame between NIC Ethernet ports (the split path's uplink to other hosts). The
 * words each type uses are documented where nic.ts builds and parses it.
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

/**
 * The frame's type if its header is well formed (magic, version, a payload that fits both
 * SEND_MAX and the bytes present), else -1.
 */
export function checkFrame(frame: Uint8Array): number {
  if (frame.length < FRAME_HEADER_BYTES) return -1;
  const m = getWord(frame, F_MAGIC);
  if (m >>> 16 !== FRAME_MAGIC || ((m >>> 8) & 0xff) !== FRAME_VERSION) return -1;
  const len = getWord(frame, F_LENGTH);
  if (len > SEND_MAX || FRAME_HEADER_BYTES + len > frame.length) return -1;
  return m & 0xff;
}

export interface Link {
  /** The NIC at the other end. */
  readonly peerNic: number;
  /**
   * Queues one frame (header + payload) for the peer. The link is done with the bytes when it
   * returns (it copies or writes them out): the caller reuses its buffer. false = back-pressure:
   * nothing was queued, try again later (onWritable says when).
   */
  send(frame: Uint8Array): boolean;
  /**
   * Frames from the peer. A frame is valid only during the callback (the link reuses its
   * buffer), and may be longer than its header says: the receiver takes the length from it.
   */
  onFrame(cb: (frame: Uint8Array) => void): void;
  /** Called when a link that refused a frame can take frames again. */
  onWritable?(cb: () => void): void;
  close(): void;
}

/**
 * What the host may ask the NIC to attach (device.attachLink). The TCP kinds (tcp-link.ts) are
 * carried out asynchronously on the NIC's thread by nic-worker.ts, not by createLink: "tcp"
 * connects to a peer NIC's listener (and reconnects, with backoff, whenever the connection
 * drops until the host detaches that peer), "tcp-listen" accepts peers and attaches each one.
 * Both prove the cluster `key` (at least 32 bytes) to the peer, which never sees it.
 */
export type LinkSpec =
  | { kind: "loopback"; slots?: number }
  | { kind: "tcp"; host?: string; port: number; timeoutMs?: number; key: Uint8Array }
  | { kind: "tcp-listen"; host?: string; port: number; key: Uint8Array };

export const LOOPBACK_DEFAULT_SLOTS = 64;

/**
 * Delivers frames back to the NIC that sent them, asynchronously (from the event loop, as a
 * wire would) through a bounded ring of preallocated slots: send() copies into a slot, and
 * refuses (back-pressure) when all are in flight.
 */
export class LoopbackLink implements Link {
  private readonly slotViews: Uint8Array[];
  private head = 0;
  private count = 0;
  private scheduled = false;
  private closed = false;
  private refused = false;
  private frameCb: ((frame: Uint8Array) => void) | null = null;
  private writableCb: (() => void) | null = null;

  constructor(
    readonly peerNic: number,
    readonly slots: number = LOOPBACK_DEFAULT_SLOTS,
  ) {
    if (!Number.isInteger(slots) || slots < 1 || slots > 4096)
      throw new RangeError(`loopback link: slots must be an integer in 1..4096, got ${slots}`);
    const backing = new ArrayBuffer(slots * FRAME_MAX);
    this.slotViews = [];
    for (let i = 0; i < slots; i++) this.slotViews.push(new Uint8Array(backing, i * FRAME_MAX, FRAME_MAX));
  }

  send(frame: Uint8Array): boolean {
    if (this.closed || frame.length > FRAME_MAX) return false;
    if (this.count === this.slots) {
      this.refused = true;
      return false;
    }
    this.slotViews[(this.head + this.count) % this.slots].set(frame);
    this.count++;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.drain);
    }
    return true;
  }

  onFrame(cb: (frame: Uint8Array) => void): void {
    this.frameCb = cb;
  }

  onWritable(cb: () => void): void {
    this.writableCb = cb;
  }

  close(): void {
    this.closed = true;
    this.count = 0;
    this.frameCb = null;
    this.writableCb = null;
  }

  private readonly drain = (): void => {
    this.scheduled = false;
    // Only the frames present now: frames sent from inside the callback wait for the next turn.
    let n = this.count;
    while (n-- > 0 && !this.closed) {
      // The slot stays taken during the callback: a frame sent from inside it goes elsewhere.
      this.frameCb?.(this.slotViews[this.head]);
      if (this.closed) break;
      this.head = (this.head + 1) % this.slots;
      this.count--;
    }
    if (this.refused && !this.closed && this.count < this.slots) {
      this.refused = false;
      this.writableCb?.();
    }
    if (this.count > 0 && !this.scheduled && !this.closed) {
      this.scheduled = true;
      setImmediate(this.drain);
    }
  };
}

/** Builds the link a spec describes, for NIC `nicId` (validated: specs come from the host's callers). */
export function createLink(spec: unknown, nicId: number): Link {
  const s = spec as Partial<LinkSpec> | null;
  if (s?.kind === "loopback") {
    if (s.slots !== undefined && (!Number.isInteger(s.slots) || s.slots < 1 || s.slots > 4096))
      throw new RangeError(`loopback link: slots must be an integer in 1..4096, got ${String(s.slots)}`);
    return new LoopbackLink(nicId, s.slots ?? LOOPBACK_DEFAULT_SLOTS);
  }
  if (s?.kind === "tcp" || s?.kind === "tcp-listen")
    throw new RangeError(
      `a ${s.kind} link is attached asynchronously on the NIC's thread (tcp-link.ts attachTcpSpec)`,
    );
  throw new RangeError(
    `unknown link kind ${JSON.stringify(s?.kind)}: expected "loopback", "tcp" or "tcp-listen"`,
  );
}

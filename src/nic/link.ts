/**
 * Links between NICs (the Myrinet / 10GbE wire). A link is an abstract frame pipe to one peer
 * NIC: it carries frames (frame.ts) whole and in order, and pushes back when it cannot take
 * more. The loopback link here delivers to the NIC itself, which exercises the whole frame
 * path (encode, back-pressure, decode, acknowledgement) in one process; the TCP link for
 * clusters of hosts (tcp-link.ts) sits behind the same interface. What the NIC keeps per
 * attached link is in link-state.ts; attaching, detaching and losing links in links.ts.
 */
import { FRAME_MAX } from "./frame.js";
import type { TcpLinkSpec } from "./tcp-attach.js";

export interface Link {
  /** The NIC at the other end. */
  readonly peerNic: number;
  /**
   * The peer's network address (a TCP link's: the peer's IP), by which the NIC bounds the
   * links it keeps (link-bound.ts); absent for a link within this process.
   */
  readonly address?: string;
  /**
   * Queues one frame (header + payload) for the peer. The link is done with the bytes when it
   * returns (it copies or writes them out): the caller reuses its buffer. false = back-pressure:
   * nothing was queued, try again later (onWritable says when).
   */
  send(frame: Uint8Array): boolean;
  /**
   * Optional zero-copy send: a FRAME_MAX buffer the link lends for one send(). A caller that
   * builds its frame in it and passes it (or a prefix of it) to send() hands the bytes over
   * instead of having them copied; the link keeps the buffer until the wire has taken them.
   * Until a send() takes it, the same buffer is lent again; null when none is free (the
   * caller then sends from its own buffer, copied as usual). Its payload (offset
   * FRAME_HEADER_BYTES) is 8-byte aligned, so a copy from aligned shared memory into it is
   * one word copy.
   */
  lend?(): Uint8Array | null;
  /**
   * Optional: false while send() would refuse a frame that carries pull data (a PULL_REPLY
   * with a payload), so a caller looks before it copies a payload out of a region instead of
   * copying it for nothing. A false answer counts as a refusal: onWritable says when to go on.
   */
  takesPullData?(): boolean;
  /**
   * Frames from the peer. A frame is valid only during the callback (the link reuses its
   * buffer), and may be longer than its header says: the receiver takes the length from it.
   */
  onFrame(cb: (frame: Uint8Array) => void): void;
  /**
   * Optional: pull data as it comes off the wire. A link that offers it hands a PULL_REPLY
   * with a payload that does not lie whole in one read here, piece by piece, instead of to
   * onFrame, which would have it wait for its last bytes and copy it together first (a
   * receiving NIC places each piece where it goes). `head`: the frame's header
   * (FRAME_HEADER_BYTES, checkFrame passed with the frame's length); `piece`: the payload's
   * next bytes, from offset `at`; `total`: the payload's length as framed (the last piece
   * ends there; the header's F_LENGTH may be less). Pieces come in order, without another
   * frame of the same connection between them; both views are valid only during the call.
   */
  onPullData?(cb: (head: Uint8Array, piece: Uint8Array, at: number, total: number) => void): void;
  /**
   * Optional write batching: frames sent between cork() and uncork() may leave in one write
   * (the NIC corks its links for each poll round). Calls come in pairs.
   */
  cork?(): void;
  uncork?(): void;
  /** Called when a link that refused a frame can take frames again. */
  onWritable?(cb: () => void): void;
  /**
   * Optional: true if the peer NIC still answers on this link within `timeoutMs` (tcp-link.ts).
   * A link that can say so is never replaced by a newer one claiming the same peer while it does.
   */
  probe?(timeoutMs: number): Promise<boolean>;
  /** Optional: ends the link without a goodbye (the peer takes it for lost, not detached). */
  abort?(reason: string): void;
  close(): void;
}

/**
 * What the host may ask the NIC to attach (device.attachLink). The TCP kinds (tcp-link.ts) are
 * carried out asynchronously on the NIC's thread by nic-worker.ts, not by createLink: "tcp"
 * connects to a peer NIC's listener (and reconnects, with backoff, whenever the connection
 * drops, until the host detaches that peer or, after an hour without a link by default,
 * gives it up: `reconnect`, tcp-attach.ts ReconnectPolicy), "tcp-listen" accepts peers and
 * attaches each one. Both prove the cluster `key` (at least 32 bytes) to the peer, which
 * never sees it.
 */
export type LinkSpec = { kind: "loopback"; slots?: number } | TcpLinkSpec;

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
      `a ${s.kind} link is attached asynchronously on the NIC's thread (tcp-attach.ts attachTcpSpec)`,
    );
  throw new RangeError(
    `unknown link kind ${JSON.stringify(s?.kind)}: expected "loopback", "tcp" or "tcp-listen"`,
  );
}

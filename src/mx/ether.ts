/**
 * MX over Ethernet (the split path's wire, as Open-MX runs MX over plain Ethernet): the frame
 * format, a per-guest hub that owns the guest's network device (netfront) and hands frames
 * to endpoints, and the per-peer reliable, ordered frame stream MX needs on top of a lossy
 * medium — netback drops a frame when the receiver has no buffer posted, as Xen's does.
 *
 * The frame format is src/xen/io/mxoe.ts (netback's bridge reads it too, to steer frames).
 *
 * Reliability is go-back-N per peer: sequenced frames wait in a ring of copies until the
 * peer acknowledges them (piggybacked on any frame, or an ACK after a receive burst); a gap
 * is dropped and re-acked; after RTO the sender resends from the oldest unacknowledged frame.
 * Every field of a received frame is hostile input: a bad frame is counted and dropped.
 */

import { zeroed } from "../xen/double-counts.js";
import {
  ETH_HEADER_BYTES,
  frameWord,
  MXOE_ETHERTYPE,
  MXOE_HEADER_BYTES,
  MXOE_MAGIC,
  MXOE_MAX_TYPE,
  MXOE_VERSION,
  MxoeType,
  MxoeWord,
  PAYLOAD_AT,
} from "../xen/io/mxoe.js";

export const BROADCAST_MAC = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
/** MX status of a NACK (src/nic/status.ts ENDPOINT_CLOSED; kept local: ether.ts stands alone). */
const STATUS_ENDPOINT_CLOSED = 8;

/** Types that travel in the reliable stream. */
export function isSequenced(type: number): boolean {
  return type >= MxoeType.Eager && type <= MxoeType.Path && type !== MxoeType.Ack;
}

/**
 * Frames a peer may have unacknowledged; then its sends wait (back-pressure). Kept below
 * what a receiver has posted (netfront posts up to 256 pages; a frame takes two), so a
 * stream does not outrun the receiver's buffers and fall back on resends.
 */
export const TX_WINDOW = 64;
/** Frames are kept within two pages of a receive buffer (jumbo MTUs would take three). */
export const MAX_FRAME_BYTES = 8192;
/** An explicit ACK waits this long for a frame of ours to carry it, or this many frames. */
export const ACK_DELAY_MS = 1;
export const ACK_EVERY = 16;
/** First resend after this long without an ack, doubling up to RTO_MAX_MS. */
export const RTO_MS = 4;
export const RTO_MAX_MS = 200;
/**
 * A peer that acknowledges nothing while we resend to it for this long is unreachable. Long,
 * because the MX library progresses only inside API calls: a peer busy computing does not
 * acknowledge until its next call (Open-MX's driver would; there is no progression thread
 * here). A closed endpoint answers with a NACK at once instead.
 */
export const PEER_TIMEOUT_MS = 10_000;
/** A gap this long between our own ticks means we were not polling: it is not the peer's silence. */
const IDLE_GAP_MS = 50;

/** The device the hub sends and receives through: the guest's netfront (src/netfront/). */
export interface EtherDevice {
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly nicId: number;
  send(frame: Uint8Array): boolean;
  flush(): void;
  poll(cb: (frame: Uint8Array) => void, max?: number): number;
  wait(timeoutMs: number): boolean;
}

export function setFrameWord(f: Uint8Array, w: number, v: number): void {
  const o = ETH_HEADER_BYTES + w * 4;
  f[o] = v;
  f[o + 1] = v >>> 8;
  f[o + 2] = v >>> 16;
  f[o + 3] = v >>> 24;
}

export function frameType(f: Uint8Array): number {
  return frameWord(f, MxoeWord.magic) & 0xff;
}

/** Starts a frame: Ethernet header, magic/type, every other header word 0. */
export function initEtherFrame(f: Uint8Array, dst: Uint8Array, src: Uint8Array, type: number): void {
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = MXOE_ETHERTYPE >>> 8;
  f[13] = MXOE_ETHERTYPE & 0xff;
  f.fill(0, ETH_HEADER_BYTES, PAYLOAD_AT);
  setFrameType(f, type);
}

/** Sets the frame's MXoE type (with the magic and version it shares a word with). */
export function setFrameType(f: Uint8Array, type: number): void {
  setFrameWord(f, MxoeWord.magic, ((MXOE_MAGIC << 16) | (MXOE_VERSION << 8) | type) >>> 0);
}

/** The frame's MXoE type if its headers are well formed, else -1. */
export function checkEtherFrame(f: Uint8Array): number {
  if (f.length < PAYLOAD_AT) return -1;
  if (((f[12] << 8) | f[13]) !== MXOE_ETHERTYPE) return -1;
  const m = frameWord(f, MxoeWord.magic);
  if (m >>> 16 !== MXOE_MAGIC || ((m >>> 8) & 0xff) !== MXOE_VERSION) return -1;
  const type = m & 0xff;
  if (type < 1 || type > MXOE_MAX_TYPE) return -1;
  if (PAYLOAD_AT + frameWord(f, MxoeWord.payload) > f.length) return -1;
  return type;
}

/** Whether the frame's destination MAC is `mac`. */
function sameMac(f: Uint8Array, mac: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (f[i] !== mac[i]) return false;
  return true;
}

export function macString(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}

export interface EtherHubCounters {
  framesTx: number;
  framesRx: number;
  /** Frames not for MX (other EtherTypes), malformed, or for no endpoint of ours. */
  dropped: number;
  /** Sends the device refused (its ring or buffers full): retried. */
  deviceFull: number;
  retransmits: number;
  acksTx: number;
  /** Frames that arrived out of order and were dropped for a resend. */
  gaps: number;
  /** Frames between endpoints of this guest (itself included), handed over without the device. */
  loopback: number;
  /** Frames whose source MAC is not the one their claimed sender was connected at: dropped. */
  spoofed: number;
}

/** Frames in flight between this guest's own endpoints, at most (then sends wait, as on a full device). */
const LOOPBACK_FRAMES = 2 * TX_WINDOW;

/** What an endpoint gives the hub: its frames, and its share of the hub's work. */
export interface EtherEndpointHandler {
  onFrame(frame: Uint8Array, type: number): void;
  /** The hub's poll is over: send acks owed, pump windows. */
  afterPoll(): void;
}

/**
 * One per guest: the netfront, shared by every endpoint of the guest's MX library. poll()
 * drains the device and hands each frame to the endpoint it names. CONNECT frames are sent
 * broadcast (the asker does not know the owner's MAC); netback's bridge gives them, as every
 * MX frame, to the owner of the endpoint they name only (src/netback/mx-steer.ts).
 */
export class EtherHub {
  /** Doubles from the start: a frame count past 2^31 changes no shape (xen/double-counts.ts). */
  readonly counters: EtherHubCounters = zeroed({
    framesTx: 0.5,
    framesRx: 0.5,
    dropped: 0.5,
    deviceFull: 0.5,
    retransmits: 0.5,
    acksTx: 0.5,
    gaps: 0.5,
    loopback: 0.5,
    spoofed: 0.5,
  });
  private readonly handlers = new Map<number, EtherEndpointHandler>();
  /**
   * Frames for this guest's own MAC: a bridge never sends a frame back out of the port it
   * came in by, so an endpoint talking to itself or to a sibling endpoint of the guest is
   * served here (a ring of copies, delivered by the next poll).
   */
  private readonly loop: Uint8Array[] = [];
  private readonly loopLen = new Int32Array(LOOPBACK_FRAMES);
  private loopHead = 0;
  private loopCount = 0;
  private readonly nack = new Uint8Array(PAYLOAD_AT);
  private dirty = false;
  private polling = false;
  readonly maxPayload: number;

  constructor(readonly device: EtherDevice) {
    this.maxPayload = Math.min(device.mtu + ETH_HEADER_BYTES, MAX_FRAME_BYTES) - PAYLOAD_AT;
    if (this.maxPayload < 1024)
      throw new RangeError(
        `MX over Ethernet needs an MTU of at least ${1024 + MXOE_HEADER_BYTES}, got ${device.mtu}`,
      );
  }

  get mac(): Uint8Array {
    return this.device.mac;
  }

  get nicId(): number {
    return this.device.nicId;
  }

  attach(endpointId: number, h: EtherEndpointHandler): void {
    this.handlers.set(endpointId, h);
  }

  detach(endpointId: number): void {
    this.handlers.delete(endpointId);
  }

  /** Sends one frame now; false if the device is full (the caller keeps it and retries). */
  send(frame: Uint8Array): boolean {
    if (this.isLocal(frame)) return this.loopSend(frame);
    if (!this.device.send(frame)) {
      this.counters.deviceFull++;
      return false;
    }
    this.counters.framesTx++;
    this.dirty = true;
    return true;
  }

  /** Pushes what was sent to netback: one notification per batch. */
  flush(): void {
    if (this.dirty) {
      this.dirty = false;
      this.device.flush();
    }
  }

  /** Receives what arrived, lets every endpoint answer, and flushes. Re-entrant calls do nothing. */
  poll(): void {
    if (this.polling) return;
    this.polling = true;
    try {
      // Only what is queued now: answers to these frames wait for the next poll.
      for (let n = this.loopCount; n > 0; n--) {
        const i = this.loopHead;
        this.loopHead = (i + 1) % LOOPBACK_FRAMES;
        this.loopCount--;
        this.onFrame(this.loop[i].subarray(0, this.loopLen[i]));
      }
      this.device.poll(this.onFrame);
      for (const h of this.handlers.values()) h.afterPoll();
      this.flush();
    } finally {
      this.polling = false;
    }
  }

  private readonly onFrame = (f: Uint8Array): void => {
    this.counters.framesRx++;
    const type = checkEtherFrame(f);
    if (type < 0 || frameWord(f, MxoeWord.dstNic) !== this.device.nicId) {
      this.counters.dropped++;
      return;
    }
    const h = this.handlers.get(frameWord(f, MxoeWord.dstEp));
    if (h === undefined) {
      this.counters.dropped++;
      // A broadcast CONNECT for an endpoint of another guest is not ours to answer; a frame
      // sent to us for an endpoint that is gone gets a NACK, so its sender does not wait.
      // Only frames sent to our own MAC: a bridge floods unicast to an address it has not
      // learned (or has aged out) to every guest, and those are not ours to refuse.
      if (
        type !== MxoeType.Connect &&
        type !== MxoeType.Nack &&
        type !== MxoeType.ConnectReply &&
        sameMac(f, this.device.mac)
      )
        this.sendNack(f);
      return;
    }
    h.onFrame(f, type);
  };

  /** Tells a peer that endpoint (nic, ep, session) of ours is gone (best effort: it may be lost, then the peer times out). */
  sendClosed(
    to: Uint8Array,
    peer: { nic: number; ep: number; session: number },
    self: { nic: number; ep: number; session: number },
  ): void {
    const n = this.nack;
    initEtherFrame(n, to, this.device.mac, MxoeType.Nack);
    setFrameWord(n, MxoeWord.dstNic, peer.nic);
    setFrameWord(n, MxoeWord.dstEp, peer.ep);
    setFrameWord(n, MxoeWord.dstSession, peer.session);
    setFrameWord(n, MxoeWord.srcNic, self.nic);
    setFrameWord(n, MxoeWord.srcEp, self.ep);
    setFrameWord(n, MxoeWord.srcSession, self.session);
    setFrameWord(n, MxoeWord.msgSeq, STATUS_ENDPOINT_CLOSED);
    this.send(n);
    this.flush();
  }

  private sendNack(f: Uint8Array): void {
    const n = this.nack;
    initEtherFrame(n, f.subarray(6, 12), this.device.mac, MxoeType.Nack);
    setFrameWord(n, MxoeWord.dstNic, frameWord(f, MxoeWord.srcNic));
    setFrameWord(n, MxoeWord.dstEp, frameWord(f, MxoeWord.srcEp));
    setFrameWord(n, MxoeWord.dstSession, frameWord(f, MxoeWord.srcSession));
    setFrameWord(n, MxoeWord.srcNic, frameWord(f, MxoeWord.dstNic));
    setFrameWord(n, MxoeWord.srcEp, frameWord(f, MxoeWord.dstEp));
    setFrameWord(n, MxoeWord.srcSession, frameWord(f, MxoeWord.dstSession));
    setFrameWord(n, MxoeWord.msgSeq, STATUS_ENDPOINT_CLOSED);
    this.send(n);
  }

  /** Sleeps until the device has something (or the timeout). */
  wait(timeoutMs: number): boolean {
    this.flush();
    if (this.loopCount > 0) return true;
    return this.device.wait(timeoutMs);
  }

  /**
   * A frame that stays in this guest: sent to its own MAC, or a CONNECT broadcast for one of
   * its own endpoints (endpoint ids are unique per NIC, so nobody else could answer it).
   */
  private isLocal(f: Uint8Array): boolean {
    const own = this.device.mac;
    if (f[0] === own[0] && sameMac(f, own)) return true;
    return (
      f[0] === 0xff &&
      sameMac(f, BROADCAST_MAC) &&
      frameType(f) === MxoeType.Connect &&
      frameWord(f, MxoeWord.dstNic) === this.device.nicId &&
      this.handlers.has(frameWord(f, MxoeWord.dstEp))
    );
  }

  private loopSend(f: Uint8Array): boolean {
    if (this.loopCount === LOOPBACK_FRAMES) {
      this.counters.deviceFull++;
      return false;
    }
    const i = (this.loopHead + this.loopCount) % LOOPBACK_FRAMES;
    let slot = this.loop[i];
    if (slot === undefined || slot.length < f.length) {
      slot = new Uint8Array(Math.max(f.length, PAYLOAD_AT + this.maxPayload));
      this.loop[i] = slot;
    }
    slot.set(f);
    this.loopLen[i] = f.length;
    this.loopCount++;
    this.counters.framesTx++;
    this.counters.loopback++;
    return true;
  }
}

/**
 * The reliable frame stream to one peer: a ring of TX_WINDOW frame copies, go-back-N resends,
 * cumulative acks. The endpoint builds frames in `reserve()`d slots and `commit()`s them;
 * `pump()` puts committed frames on the device as it takes them.
 */
export class EtherLink {
  /** The peer's MAC. */
  readonly mac = new Uint8Array(6);
  private readonly ring: Uint8Array[] = [];
  private readonly lengths = new Int32Array(TX_WINDOW);
  /**
   * Frame sequences: [acked, sent) on the wire, [sent, next) waiting for the device. All four
   * are the frame's 32-bit words, kept as int32s (the same bits: a u32 past 2^31 is no V8
   * small integer, mx/channel.ts) and compared modulo 2^32: a pair that streams for a day
   * crosses 2^32 frames (TX_WINDOW divides 2^32, so ring slots run on across the wrap).
   */
  private acked = 1;
  private sent = 1;
  private next = 1;
  /** The next sequence we accept from the peer. */
  rxExpect = 1;
  ackOwed = false;
  /** Frames accepted since our last ack went out, and when the first of them came. */
  private rxSinceAck = 0;
  private ackOwedSince = 0;
  private rto = RTO_MS;
  private lastAckProgress = 0;
  private lastSend = 0;
  private lastTick = 0;
  private readonly ackFrame: Uint8Array;

  constructor(
    private readonly hub: EtherHub,
    mac: Uint8Array,
    /** Our address and the peer's, stamped into every frame. */
    private readonly src: { nic: number; ep: number; session: number },
    readonly peerNic: number,
    readonly peerEp: number,
    public peerSession: number,
  ) {
    this.mac.set(mac);
    this.ackFrame = new Uint8Array(PAYLOAD_AT);
    this.lastAckProgress = performance.now();
  }

  /** Sequenced frames the window still has room for. */
  get room(): number {
    return TX_WINDOW - ((this.next - this.acked) >>> 0);
  }

  get unacked(): number {
    return (this.next - this.acked) >>> 0;
  }

  /**
   * A frame slot of `payload` bytes with its headers started (type, addresses, sequence);
   * the caller fills the rest and commits. Only when room > 0. `trailer`: bytes after the
   * payload that the header does not count (a trace trailer: nic/trace-ring.ts).
   */
  reserve(type: number, payload: number, trailer = 0): Uint8Array {
    const i = this.next & (TX_WINDOW - 1);
    let f = this.ring[i];
    const size = PAYLOAD_AT + payload + trailer;
    if (f === undefined || f.length < size) {
      f = new Uint8Array(Math.max(size, PAYLOAD_AT + this.hub.maxPayload));
      this.ring[i] = f;
    }
    this.stamp(f, type);
    setFrameWord(f, MxoeWord.seq, this.next);
    setFrameWord(f, MxoeWord.payload, payload);
    this.lengths[i] = size;
    return f;
  }

  commit(): void {
    this.next = (this.next + 1) | 0;
  }

  /**
   * Gives up what the unacknowledged frames carry, keeping their sequence numbers: `strip`
   * rewrites each frame's header (its type, its words) and says how many payload bytes it
   * keeps, and the copy shrinks to that; every other slot's copy is let go (a stream taken up
   * again allocates them anew as it sends). A stream is kept per peer address past its failed
   * partner (ether-path.ts `open`, `peerLost`, `expireOwing`), and a full window of copies is
   * half a MiB.
   */
  stripUnacked(strip: (f: Uint8Array, type: number) => number): void {
    const kept: Uint8Array[] = [];
    for (let s = this.acked; s !== this.next; s = (s + 1) | 0) {
      const i = s & (TX_WINDOW - 1);
      const f = this.ring[i];
      const payload = strip(f, frameType(f));
      setFrameWord(f, MxoeWord.payload, payload);
      this.lengths[i] = PAYLOAD_AT + payload;
      kept.push(f.slice(0, this.lengths[i]));
    }
    this.ring.length = 0;
    let k = 0;
    for (let s = this.acked; s !== this.next; s = (s + 1) | 0) this.ring[s & (TX_WINDOW - 1)] = kept[k++];
  }

  private stamp(f: Uint8Array, type: number): void {
    initEtherFrame(f, this.mac, this.hub.mac, type);
    setFrameWord(f, MxoeWord.dstNic, this.peerNic);
    setFrameWord(f, MxoeWord.dstEp, this.peerEp);
    setFrameWord(f, MxoeWord.dstSession, this.peerSession);
    setFrameWord(f, MxoeWord.srcNic, this.src.nic);
    setFrameWord(f, MxoeWord.srcEp, this.src.ep);
    setFrameWord(f, MxoeWord.srcSession, this.src.session);
  }

  /** Puts committed frames on the device (acks piggybacked), as far as it takes them. */
  pump(now: number): void {
    while (this.sent !== this.next) {
      const i = this.sent & (TX_WINDOW - 1);
      const f = this.ring[i];
      setFrameWord(f, MxoeWord.ack, this.rxExpect);
      if (!this.hub.send(f.subarray(0, this.lengths[i]))) return;
      this.sent = (this.sent + 1) | 0;
      this.ackOwed = false;
      this.rxSinceAck = 0;
      this.lastSend = now;
    }
  }

  /**
   * An incoming sequenced frame: true if it is the next one (the caller processes it), false
   * if it is a duplicate or ahead of a gap (dropped; the peer resends).
   */
  accept(seq: number): boolean {
    if (!this.ackOwed) this.ackOwedSince = performance.now();
    this.ackOwed = true;
    if (seq === this.rxExpect) {
      this.rxExpect = (this.rxExpect + 1) | 0;
      this.rxSinceAck++;
      return true;
    }
    // A resend or a gap: answer at once, the sender is waiting on it.
    this.rxSinceAck = ACK_EVERY;
    if (((seq - this.rxExpect) | 0) > 0) this.hub.counters.gaps++;
    return false;
  }

  /** The peer's cumulative ack: frames before `ack` are delivered. */
  onAck(ack: number, now: number): void {
    const gained = (ack - this.acked) >>> 0;
    if (gained > 0 && gained <= (this.sent - this.acked) >>> 0) {
      this.acked = ack;
      this.rto = RTO_MS;
      this.lastAckProgress = now;
    }
  }

  /**
   * Timers, driven by the endpoint's progress: resend from the oldest unacknowledged frame
   * after RTO; an explicit ACK if we owe one and sent nothing that carried it. Returns false
   * when the peer has acknowledged nothing for PEER_TIMEOUT_MS (it is unreachable).
   */
  tick(now: number): boolean {
    if (now - this.lastTick > IDLE_GAP_MS) {
      // We were away (the application computed, or waited for its host): the peer's silence
      // meanwhile says nothing, and what it owes us is resent now.
      this.lastAckProgress = now;
      this.lastSend = Math.min(this.lastSend, now - this.rto);
    }
    this.lastTick = now;
    if (this.acked !== this.sent) {
      if (now - this.lastAckProgress > PEER_TIMEOUT_MS) return false;
      if (now - this.lastSend > this.rto) {
        this.hub.counters.retransmits += (this.sent - this.acked) >>> 0;
        this.sent = this.acked;
        this.rto = Math.min(this.rto * 2, RTO_MAX_MS);
        this.lastSend = now;
      }
    } else {
      this.lastAckProgress = now;
    }
    this.pump(now);
    // Delayed ack: an answer of ours usually carries it within the delay.
    if (this.ackOwed && (this.rxSinceAck >= ACK_EVERY || now - this.ackOwedSince >= ACK_DELAY_MS))
      this.sendAck();
    return true;
  }

  sendAck(): void {
    const f = this.ackFrame;
    this.stamp(f, MxoeType.Ack);
    setFrameWord(f, MxoeWord.ack, this.rxExpect);
    if (this.hub.send(f)) {
      this.ackOwed = false;
      this.rxSinceAck = 0;
      this.hub.counters.acksTx++;
    }
  }
}

/**
 * The NIC's Ethernet port: how the driver domain's software bridge (the split path) puts raw
 * Ethernet frames on the wire between hosts and takes them off. One SharedArrayBuffer per
 * NIC (control op `open_ether_port`) holding two single-producer/single-consumer rings:
 *
 *   "to NIC"   (TX) the driver produces frames, the NIC sends each as an ETHERNET link frame
 *   "from NIC" (RX) the NIC produces the ETHERNET frames that arrived on its links
 *
 * Layout (byte offsets; every index word on its own 64-byte line):
 *
 *   0     P_MAGIC, P_VERSION, P_RING_BYTES, P_MAX_FRAME   (written once by the NIC)
 *   64    TX head  (driver: bytes produced, free-running u32; writing it is the doorbell)
 *   128   TX tail  (NIC: bytes consumed)
 *   192   RX head  (NIC: bytes produced)
 *   256   RX tail  (driver: bytes consumed)
 *   320   NIC sleeping (NIC: 1 while it sleeps; the driver then notifies the TX head word)
 *   384   TX waiting (driver: 1 after send() found the ring full; the NIC raises the
 *         interrupt once it has consumed frames, and clears it)
 *   448   NIC statistics: frames dropped because the RX ring was full, bad frames from the
 *         driver, frames from the driver that no link took
 *   512   interrupt: I_SEQ (window.ts) and PORT_I_SLEEPING at words 0 and 16 of a view here;
 *         the driver sleeps on I_SEQ after setting PORT_I_SLEEPING, the NIC raises it after
 *         writing RX records (or freeing TX room) as it raises an endpoint (raiseInterrupt).
 *         The flag may sit next to the futex word here, unlike an endpoint's (window.ts): the
 *         port is shared by the NIC and the driver domain only, no third party writes it.
 *   4096  TX data area, PORT_RING_BYTES
 *   4096 + PORT_RING_BYTES  RX data area, PORT_RING_BYTES
 *
 * A record is a u32 length then the frame, padded to 4 bytes; a record never wraps: when it
 * does not fit before the end of the area, the producer writes RECORD_SKIP there and starts
 * the record at 0 (the consumer skips to the start). Frames are Ethernet II (dst MAC 6, src
 * MAC 6, EtherType 2, payload), ETHER_MIN_FRAME..ETHER_MAX_FRAME bytes.
 *
 * Trust: the NIC keeps its own copies of the indices it owns and treats every word the
 * driver writes (lengths, its head and tail) as hostile: a bad length is dropped and counted,
 * garbage indices resynchronise. The client trusts the NIC (it is the NIC's own memory).
 */
import { copyBytes } from "../xen/copy.js";
import { zeroed } from "../xen/double-counts.js";
import { I_SEQ } from "./window.js";

export const PORT_MAGIC = 0x45544850; // "PHTE": a NIC Ethernet port
export const PORT_VERSION = 1;

// Int32Array word indices.
export const P_MAGIC = 0;
export const P_VERSION = 1;
export const P_RING_BYTES = 2;
export const P_MAX_FRAME = 3;
export const P_TX_HEAD = 16;
export const P_TX_TAIL = 32;
export const P_RX_HEAD = 48;
export const P_RX_TAIL = 64;
export const P_NIC_SLEEPING = 80;
export const P_TX_WAITING = 96;
export const P_STAT_RX_DROPPED = 112;
export const P_STAT_TX_BAD = 113;
export const P_STAT_TX_DROPPED = 114;
/** Byte offset of the interrupt words (a 32-word Int32Array view here: I_SEQ, PORT_I_SLEEPING). */
export const PORT_INTR_OFFSET = 512;
export const PORT_INTR_WORDS = 32;
/** Driver: 1 while it sleeps (or is about to) on the port's I_SEQ; the NIC takes it when it raises. */
export const PORT_I_SLEEPING = 16;

export const PORT_RING_BYTES = 1 << 20;
export const PORT_TX_OFFSET = 4096;
export const PORT_RX_OFFSET = PORT_TX_OFFSET + PORT_RING_BYTES;
export const PORT_BYTES = PORT_RX_OFFSET + PORT_RING_BYTES;

/** Dst MAC, src MAC, EtherType. */
export const ETHER_HEADER_BYTES = 14;
export const ETHER_MIN_FRAME = ETHER_HEADER_BYTES;
/** Jumbo MTU 9000 + header + 4 spare (a VLAN tag or an FCS). */
export const ETHER_MAX_FRAME = 9018;
/** A length word that means "the rest of the area is unused: continue at its start". */
export const RECORD_SKIP = 0xffffffff;

/** Bytes a record of an n-byte frame takes. */
export function recordBytes(n: number): number {
  return 4 + ((n + 3) & ~3);
}

/** Makes a port's shared memory (the NIC does, on the first open_ether_port). */
export function allocEtherPort(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(PORT_BYTES);
  const w = new Int32Array(sab);
  w[P_MAGIC] = PORT_MAGIC;
  w[P_VERSION] = PORT_VERSION;
  w[P_RING_BYTES] = PORT_RING_BYTES;
  w[P_MAX_FRAME] = ETHER_MAX_FRAME;
  return sab;
}

/**
 * Writes one record into a ring (TX for the driver, RX for the NIC): `len` bytes of `src`
 * from `srcOff`. `head` is the producer's own index, `tail` the consumer's as just loaded.
 * Returns how far the head moves (publish `(head + n) | 0` with Atomics.store), or 0 when the
 * record does not fit. Indexes are int32s, the words' own bits: as u32s they would leave V8's
 * small integers past 2^31 bytes (mx/channel.ts).
 */
export function ringPut(
  bytes: Uint8Array,
  words: Uint32Array,
  area: number,
  head: number,
  tail: number,
  src: Uint8Array,
  srcOff: number,
  len: number,
): number {
  const used = (head - tail) >>> 0;
  // A consumer index ahead of ours is garbage: nothing fits until it is sane.
  if (used > PORT_RING_BYTES) return 0;
  const rec = recordBytes(len);
  const pos = head & (PORT_RING_BYTES - 1);
  const room = PORT_RING_BYTES - pos;
  const need = rec > room ? room + rec : rec;
  if (need > PORT_RING_BYTES - used) return 0;
  let at = pos;
  if (rec > room) {
    words[(area + pos) >> 2] = RECORD_SKIP;
    at = 0;
  }
  words[(area + at) >> 2] = len;
  const o = area + at + 4;
  copyBytes(bytes, o, src, srcOff, len);
  return need;
}

export interface EtherPortCounters {
  /** Frames and bytes put into the TX ring. */
  txFrames: number;
  txBytes: number;
  /** send() calls refused because the ring was full. */
  txFull: number;
  /** Frames send() dropped because their length is outside ETHER_MIN_FRAME..ETHER_MAX_FRAME. */
  txBad: number;
  rxFrames: number;
  rxBytes: number;
  /** Times the client notified a sleeping NIC. */
  doorbells: number;
  /** waitAsync calls that really slept. */
  sleeps: number;
}

/**
 * The driver's side of a port: the bridge in the driver domain sends frames to the wire and
 * polls frames from it. Single producer and single consumer: one client per port.
 */
export class EtherPortClient {
  readonly buffer: SharedArrayBuffer;
  private readonly w: Int32Array;
  private readonly u32: Uint32Array;
  private readonly bytes: Uint8Array;
  private readonly intr: Int32Array;
  private txHead: number;
  private rxTail: number;
  /** Doubles from the start: a byte count past 2^31 changes no shape (xen/double-counts.ts). */
  readonly counters: EtherPortCounters = zeroed({
    txFrames: 0.5,
    txBytes: 0.5,
    txFull: 0.5,
    txBad: 0.5,
    rxFrames: 0.5,
    rxBytes: 0.5,
    doorbells: 0.5,
    sleeps: 0.5,
  });

  constructor(port: SharedArrayBuffer) {
    if (!(port instanceof SharedArrayBuffer) || port.byteLength !== PORT_BYTES)
      throw new RangeError(
        `EtherPortClient: expected the ${PORT_BYTES}-byte SharedArrayBuffer that open_ether_port returns`,
      );
    this.buffer = port;
    this.w = new Int32Array(port);
    this.u32 = new Uint32Array(port);
    this.bytes = new Uint8Array(port);
    this.intr = new Int32Array(port, PORT_INTR_OFFSET, PORT_INTR_WORDS);
    if (this.w[P_MAGIC] !== PORT_MAGIC || this.w[P_VERSION] !== PORT_VERSION)
      throw new RangeError(
        "EtherPortClient: not an Ethernet port of this NIC version (bad magic or version)",
      );
    this.txHead = Atomics.load(this.w, P_TX_HEAD);
    this.rxTail = Atomics.load(this.w, P_RX_TAIL);
  }

  /**
   * Queues one Ethernet frame for the wire (copied: the caller keeps its buffer). false = the
   * ring is full: try again after waitAsync (the NIC raises the interrupt when it frees room).
   * A frame of a bad length is dropped and counted (counters.txBad), as a NIC would: true.
   */
  send(frame: Uint8Array): boolean {
    const len = frame.length;
    if (len < ETHER_MIN_FRAME || len > ETHER_MAX_FRAME) {
      this.counters.txBad++;
      return true;
    }
    const tail = Atomics.load(this.w, P_TX_TAIL);
    const moved = ringPut(this.bytes, this.u32, PORT_TX_OFFSET, this.txHead, tail, frame, 0, len);
    if (moved === 0) {
      this.counters.txFull++;
      Atomics.store(this.w, P_TX_WAITING, 1);
      // The NIC may have freed room between our look and the flag: look once more.
      const again = ringPut(
        this.bytes,
        this.u32,
        PORT_TX_OFFSET,
        this.txHead,
        Atomics.load(this.w, P_TX_TAIL),
        frame,
        0,
        len,
      );
      if (again === 0) return false;
      return this.publish((this.txHead + again) | 0, len);
    }
    return this.publish((this.txHead + moved) | 0, len);
  }

  private publish(head: number, len: number): boolean {
    this.txHead = head;
    Atomics.store(this.w, P_TX_HEAD, head);
    this.counters.txFrames++;
    this.counters.txBytes += len;
    if (Atomics.load(this.w, P_NIC_SLEEPING) === 1) {
      this.counters.doorbells++;
      Atomics.notify(this.w, P_TX_HEAD);
    }
    return true;
  }

  /** Whether frames wait in the RX ring. */
  get rxPending(): boolean {
    return Atomics.load(this.w, P_RX_HEAD) !== this.rxTail;
  }

  /**
   * Hands up to `max` frames from the wire to `cb` and returns how many. A frame is a view of
   * the ring, valid only during the callback (copy what you keep).
   */
  poll(cb: (frame: Uint8Array) => void, max = Number.POSITIVE_INFINITY): number {
    const head = Atomics.load(this.w, P_RX_HEAD);
    let tail = this.rxTail;
    let n = 0;
    while (tail !== head && n < max) {
      const pos = tail & (PORT_RING_BYTES - 1);
      const len = this.u32[(PORT_RX_OFFSET + pos) >> 2];
      if (len === RECORD_SKIP) {
        tail = (tail + PORT_RING_BYTES - pos) | 0;
        continue;
      }
      const o = PORT_RX_OFFSET + pos + 4;
      tail = (tail + recordBytes(len)) | 0;
      n++;
      this.counters.rxFrames++;
      this.counters.rxBytes += len;
      try {
        cb(this.bytes.subarray(o, o + len));
      } finally {
        // Released even if the callback throws: the frame was handed over.
        this.rxTail = tail;
        Atomics.store(this.w, P_RX_TAIL, tail);
      }
    }
    // No kick: the NIC never waits for RX room (it drops frames while the ring is full).
    return n;
  }

  /**
   * Resolves when the NIC raised the port's interrupt (frames arrived, or TX room freed after a
   * refused send), or after timeoutMs. Announces the sleep, then re-checks, so no raise is lost.
   */
  async waitAsync(timeoutMs: number): Promise<void> {
    const seq = Atomics.load(this.intr, I_SEQ);
    Atomics.store(this.intr, PORT_I_SLEEPING, 1);
    try {
      if (this.rxPending) return;
      if (Atomics.load(this.w, P_TX_WAITING) === 1 && this.txRoom()) return;
      const r = Atomics.waitAsync(this.intr, I_SEQ, seq, timeoutMs);
      if (r.async) {
        this.counters.sleeps++;
        await r.value;
      }
    } finally {
      Atomics.store(this.intr, PORT_I_SLEEPING, 0);
    }
  }

  /** Whether a largest frame would fit in the TX ring now. */
  private txRoom(): boolean {
    const used = (this.txHead - Atomics.load(this.w, P_TX_TAIL)) >>> 0;
    return PORT_RING_BYTES - used >= 2 * recordBytes(ETHER_MAX_FRAME);
  }

  /** What the NIC counted on this port: RX frames dropped (ring full), bad TX frames, TX frames no link took. */
  get nicStats(): { rxDropped: number; txBad: number; txDropped: number } {
    return {
      rxDropped: Atomics.load(this.w, P_STAT_RX_DROPPED) >>> 0,
      txBad: Atomics.load(this.w, P_STAT_TX_BAD) >>> 0,
      txDropped: Atomics.load(this.w, P_STAT_TX_DROPPED) >>> 0,
    };
  }
}

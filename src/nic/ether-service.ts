/**
 * The NIC's side of its Ethernet port (ether-port.ts has the port's layout and the driver's
 * client): frames the driver domain's bridge queues in the TX ring go out as ETHERNET link
 * frames (frame.ts) — to the link the destination MAC was learned on, else flooded to every
 * link — and ETHERNET frames from links go into the RX ring, their source MAC learned
 * (link-state.ts MacTable). The port is the NIC's own memory, but every word the driver writes
 * into it (its head and tail, record lengths) is hostile: a bad record is dropped and counted,
 * garbage indices resynchronise. A frame no link takes is dropped, as a switch drops it.
 */
import { copyBytes } from "../xen/copy.js";
import { ETH_HEADER_BYTES, MXOE_ETHERTYPE, MXOE_HEADER_BYTES, MxoeWord } from "../xen/io/mxoe.js";
import type { NicClock } from "./clock.js";
import type { OpenEtherPortReply } from "./control.js";
import { NicCounter } from "./counters.js";
import {
  allocEtherPort,
  ETHER_MAX_FRAME,
  ETHER_MIN_FRAME,
  P_NIC_SLEEPING,
  P_RX_HEAD,
  P_RX_TAIL,
  P_STAT_RX_DROPPED,
  P_STAT_TX_BAD,
  P_STAT_TX_DROPPED,
  P_TX_HEAD,
  P_TX_TAIL,
  P_TX_WAITING,
  PORT_INTR_OFFSET,
  PORT_INTR_WORDS,
  PORT_RING_BYTES,
  PORT_RX_OFFSET,
  PORT_TX_OFFSET,
  RECORD_SKIP,
  recordBytes,
  ringPut,
} from "./ether-port.js";
import type { Events } from "./events.js";
import {
  beginFrame,
  F_DEST_NIC,
  F_LENGTH,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  getWord,
  setFrameSource,
  setWord,
} from "./frame.js";
import { type LinkState, type LinkTable, MacTable } from "./link-state.js";

/** Frames taken from the Ethernet port's TX ring per round. */
const ETHER_BATCH = 64;
/**
 * How long one link may refuse every frame before the port stops waiting for it (ms). A unicast
 * frame whose link pushes back waits at the head of the TX ring (lossless while a busy peer
 * catches up, which takes milliseconds); a peer that stopped reading (hung host, dead path)
 * would hold it there for good, and with it this host's Ethernet to every other host. Past
 * this, that link's frames are dropped and counted until it takes one again, as a switch's
 * pause watchdog does; MX over Ethernet resends what it needs.
 */
export const ETHER_STALL_MS = 500;

/** The low 32 bits of a MAC address whose bytes 2..5 start at b[o]. */
function macLo(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

export class EtherService {
  /** The port's memory, once opened. */
  private port: SharedArrayBuffer | null = null;
  private portW: Int32Array = new Int32Array(0);
  private portU32: Uint32Array = new Uint32Array(0);
  private portBytes: Uint8Array = new Uint8Array(0);
  /** The NIC's own copies of the indices it owns, and the last TX head it saw. */
  private txTail = 0;
  private txSeen = 0;
  private rxHead = 0;
  /** A unicast frame waits for its link to take frames again. */
  txStalled = false;
  private waiterPending = false;
  private waiterGen = 0;
  private readonly macs = new MacTable();
  /** Links that refused a unicast frame and have taken none since: since when (clock ms). */
  private readonly refusingSince = new Map<LinkState, number>();
  /** The ETHERNET frame being built. */
  private readonly txFrame = new Uint8Array(FRAME_MAX);

  constructor(
    private readonly nicId: number,
    private readonly links: LinkTable,
    private readonly events: Events,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
  ) {}

  get isOpen(): boolean {
    return this.port !== null;
  }

  /** The port, created on the first call (control op open_ether_port). */
  open(): OpenEtherPortReply {
    if (this.port === null) {
      const p = allocEtherPort();
      this.portW = new Int32Array(p);
      this.portU32 = new Uint32Array(p);
      this.portBytes = new Uint8Array(p);
      this.events.portIntr = new Int32Array(p, PORT_INTR_OFFSET, PORT_INTR_WORDS);
      this.txTail = this.txSeen = this.rxHead = 0;
      this.port = p;
    }
    return { port: this.port };
  }

  /** One round's TX work, if the port is open. Returns whether it took any frame. */
  poll(): boolean {
    if (this.port === null) return false;
    try {
      return this.serviceTx();
    } catch {
      // A bug, never the driver's garbage: count it, resynchronise.
      this.c[NicCounter.internal_errors]++;
      this.txTail = Atomics.load(this.portW, P_TX_HEAD);
      Atomics.store(this.portW, P_TX_TAIL, this.txTail);
      return false;
    }
  }

  /** Takes frames the driver queued and puts them on the wire. Returns whether it took any. */
  private serviceTx(): boolean {
    const w = this.portW;
    // int32s, the words' own bits (u32s leave V8's small integers past 2^31: mx/channel.ts).
    const head = Atomics.load(w, P_TX_HEAD);
    this.txSeen = head;
    let tail = this.txTail;
    if (head === tail) return false;
    this.txStalled = false;
    let n = 0;
    let bad = false;
    while (tail !== head && n < ETHER_BATCH) {
      const avail = (head - tail) >>> 0;
      if (avail > PORT_RING_BYTES) {
        bad = true;
        break;
      }
      const pos = tail & (PORT_RING_BYTES - 1);
      const len = this.portU32[(PORT_TX_OFFSET + pos) >> 2];
      if (len === RECORD_SKIP) {
        if (PORT_RING_BYTES - pos > avail) {
          bad = true;
          break;
        }
        tail = (tail + PORT_RING_BYTES - pos) | 0;
        continue;
      }
      const rec = len <= PORT_RING_BYTES ? recordBytes(len) : 0;
      if (rec === 0 || rec > avail || pos + rec > PORT_RING_BYTES) {
        bad = true;
        break;
      }
      if (len < ETHER_MIN_FRAME || len > ETHER_MAX_FRAME) {
        // A whole record with a length no Ethernet frame has: drop it, keep the ring.
        this.c[NicCounter.ether_bad]++;
        Atomics.add(w, P_STAT_TX_BAD, 1);
      } else if (!this.sendOut(PORT_TX_OFFSET + pos + 4, len)) {
        this.txStalled = true;
        break;
      }
      tail = (tail + rec) | 0;
      n++;
    }
    if (bad) {
      // Indices or a length word that describe no record: drop everything queued, resynchronise.
      this.c[NicCounter.ether_bad]++;
      Atomics.add(w, P_STAT_TX_BAD, 1);
      tail = head;
    }
    if (tail === this.txTail) return false;
    this.txTail = tail;
    Atomics.store(w, P_TX_TAIL, tail);
    if (Atomics.load(w, P_TX_WAITING) !== 0) {
      // The driver found the ring full: it may be waiting for room.
      Atomics.store(w, P_TX_WAITING, 0);
      this.events.raisePort();
    }
    return true;
  }

  /**
   * Sends the driver's frame at port byte `off` as an ETHERNET link frame: to the link its
   * destination MAC was learned on, else (broadcast, multicast, unknown) to every link; an MX
   * over Ethernet frame to the link of the NIC its header names, whatever its MAC.
   * false: that one link pushes back (the frame stays in the ring), unless it has refused
   * everything for ETHER_STALL_MS: then the frame is dropped (true).
   */
  private sendOut(off: number, len: number): boolean {
    const b = this.portBytes;
    const list = this.links.list;
    if (list.length === 0) {
      this.c[NicCounter.ether_dropped]++;
      Atomics.add(this.portW, P_STAT_TX_DROPPED, 1);
      return true;
    }
    const f = this.txFrame;
    // ETHERNET names only the NICs (frame.ts): the destination per link, below.
    beginFrame(f, FrameType.Ethernet, len, 0);
    setFrameSource(f, this.nicId, 0, 0);
    copyBytes(f, FRAME_HEADER_BYTES, b, off, len);
    const out = f.subarray(0, FRAME_HEADER_BYTES + len);
    const mx =
      len >= ETH_HEADER_BYTES + MXOE_HEADER_BYTES && ((b[off + 12] << 8) | b[off + 13]) === MXOE_ETHERTYPE;
    if (mx || (b[off] & 1) === 0) {
      // MX over Ethernet is for the NIC its header names (netback sends it to the uplink only
      // for that reason): never flooded. A guest that gave such frames a broadcast MAC had
      // every linked host carry them, past the bridge's storm control, ~4.5× its flood budget.
      const at = off + ETH_HEADER_BYTES + 4 * MxoeWord.dstNic;
      const peer = mx
        ? (b[at] | (b[at + 1] << 8) | (b[at + 2] << 16) | (b[at + 3] << 24)) >>> 0
        : this.macs.lookup((b[off] << 8) | b[off + 1], macLo(b, off + 2), (this.clock.now / 1000) | 0);
      const ls = peer >= 0 ? this.links.get(peer) : undefined;
      if (ls === undefined && mx) {
        // Not a NIC this one is linked to: no one to give it to.
        this.c[NicCounter.ether_dropped]++;
        Atomics.add(this.portW, P_STAT_TX_DROPPED, 1);
        return true;
      }
      if (ls !== undefined) {
        setWord(f, F_DEST_NIC, ls.peerNic);
        if (!ls.link.send(out)) {
          this.c[NicCounter.link_backpressure]++;
          return this.stalledFor(ls);
        }
        if (this.refusingSince.size !== 0) this.refusingSince.delete(ls);
        this.c[NicCounter.frames_tx]++;
        this.c[NicCounter.ether_tx]++;
        return true;
      }
    }
    // Flood. A link that pushes back loses its copy (a switch drops too): the others go on.
    this.c[NicCounter.ether_flooded]++;
    this.c[NicCounter.ether_tx]++;
    for (let k = 0; k < list.length; k++) {
      const ls = list[k];
      setWord(f, F_DEST_NIC, ls.peerNic);
      if (ls.link.send(out)) {
        this.c[NicCounter.frames_tx]++;
        if (this.refusingSince.size !== 0) this.refusingSince.delete(ls);
      } else {
        this.c[NicCounter.link_backpressure]++;
        this.c[NicCounter.ether_dropped]++;
        Atomics.add(this.portW, P_STAT_TX_DROPPED, 1);
      }
    }
    return true;
  }

  /**
   * `ls` refused the head frame: true (the frame is dropped and counted) once it has refused
   * everything for ETHER_STALL_MS, false (the frame waits) before.
   */
  private stalledFor(ls: LinkState): boolean {
    const now = this.clock.now;
    const since = this.refusingSince.get(ls);
    if (since === undefined) {
      // Entries of links detached meanwhile go here, on this rare path.
      for (const k of this.refusingSince.keys()) if (!k.attached) this.refusingSince.delete(k);
      this.refusingSince.set(ls, now);
      return false;
    }
    if (now - since < ETHER_STALL_MS) return false;
    this.c[NicCounter.ether_dropped]++;
    Atomics.add(this.portW, P_STAT_TX_DROPPED, 1);
    return true;
  }

  /** An ETHERNET frame from a link: learn its source MAC, put it in the port's RX ring. */
  rxEthernet(ls: LinkState, frame: Uint8Array): void {
    const len = getWord(frame, F_LENGTH);
    if (len < ETHER_MIN_FRAME || len > ETHER_MAX_FRAME) {
      this.c[NicCounter.frames_bad]++;
      return;
    }
    const src = FRAME_HEADER_BYTES + 6;
    // A group address is never a sender's: do not learn it.
    if ((frame[src] & 1) === 0)
      this.macs.learn(
        (frame[src] << 8) | frame[src + 1],
        macLo(frame, src + 2),
        ls.peerNic,
        (this.clock.now / 1000) | 0,
      );
    if (this.port === null) {
      this.c[NicCounter.ether_dropped]++;
      return;
    }
    const w = this.portW;
    const moved = ringPut(
      this.portBytes,
      this.portU32,
      PORT_RX_OFFSET,
      this.rxHead,
      Atomics.load(w, P_RX_TAIL),
      frame,
      FRAME_HEADER_BYTES,
      len,
    );
    if (moved === 0) {
      // The driver does not keep up: drop, as a NIC whose receive ring is full does.
      this.c[NicCounter.ether_dropped]++;
      Atomics.add(w, P_STAT_RX_DROPPED, 1);
      return;
    }
    this.rxHead = (this.rxHead + moved) | 0;
    // The record is in the ring before the head says so.
    Atomics.store(w, P_RX_HEAD, this.rxHead);
    this.c[NicCounter.ether_rx]++;
    this.events.raisePort();
  }

  // ---- the run loop's sleep ---------------------------------------------------------------------

  /** P_NIC_SLEEPING, if the port is open: 1 tells the driver to notify its doorbell. */
  setSleeping(sleeping: number): void {
    if (this.port !== null) Atomics.store(this.portW, P_NIC_SLEEPING, sleeping);
  }

  /**
   * Before the NIC sleeps: wait for the driver's doorbell (it notifies the TX head word when it
   * sees P_NIC_SLEEPING), then `kick`. Returns true if the head already moved (no sleep).
   */
  armDoorbell(kick: () => void): boolean {
    if (this.port === null || this.waiterPending) return false;
    const r = Atomics.waitAsync(this.portW, P_TX_HEAD, this.txSeen | 0);
    if (!r.async) return true;
    this.waiterPending = true;
    const gen = ++this.waiterGen;
    r.value.then(() => {
      if (this.waiterGen === gen) this.waiterPending = false;
      kick();
    });
    return false;
  }
}

/**
 * netfront: a guest's half of the classic Xen split network driver — the slow path the MX
 * library falls back to when no fast path is available (or policy disables it).
 *
 * Synchronous, like MyriFront, because mx_init is: `Netfront.connect` walks the xenbus
 * handshake with synchronous XenStore requests, and `wait` blocks on the event channel (spin
 * briefly, then sleep). Set-up grants the backend two ring pages and a pool of buffer pages
 * once (persistent grants: no grant operation per frame); after that:
 *
 *   send   copies a frame into free TX buffer page(s) and queues one request per page
 *          (NETTXF_more_data on all but the last; the first slot's size is the whole frame);
 *   flush  publishes the queued requests and notifies netback only if its req_event asks
 *          (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY): send many, flush once, one notification;
 *   poll   reclaims TX buffers, hands received frames to the callback (reassembled when they
 *          span several RX buffers), reposts RX buffers in batches; never blocks;
 *   wait   sets the response event index with a final check (no lost wake-up) and sleeps.
 *
 * Responses come from another domain: ids, offsets and sizes are checked before use.
 * Set-up and release (options, pages, grants, the handshake) are setup.ts.
 */

import { PAGE_SIZE } from "../xen/abi.js";
import { zeroed } from "../xen/double-counts.js";
import type { EventChannelPort } from "../xen/event-channel.js";
import type { Guest } from "../xen/guest/guest.js";
import {
  ETH_HLEN,
  MAX_FRAME,
  NETIF_RSP_NULL,
  NETRXF_more_data,
  NETTXF_more_data,
  RX_REQ_BYTES,
  RX_RSP_BYTES,
  RX_RSP_FLAGS,
  RX_RSP_ID,
  RX_RSP_OFFSET,
  RX_RSP_STATUS,
  TX_REQ_BYTES,
  TX_REQ_FLAGS,
  TX_REQ_GREF,
  TX_REQ_ID,
  TX_REQ_OFFSET,
  TX_REQ_SIZE,
  TX_RSP_BYTES,
  TX_RSP_ID,
  TX_RSP_STATUS,
  writeRxRequest,
} from "../xen/io/netif.js";
import { FrontRing } from "../xen/ring.js";
import type { SyncXenbusFrontend } from "../xen/xenbus-sync.js";
import {
  NetfrontError,
  type NetfrontOptions,
  releaseVif,
  setUpVif,
  type VifPages,
  type VifSetup,
} from "./setup.js";

export { NetfrontError, type NetfrontOptions } from "./setup.js";

export interface NetfrontCounters {
  txFrames: number;
  txBytes: number;
  rxFrames: number;
  rxBytes: number;
  /** send() calls refused for want of ring slots or TX buffers. */
  txFull: number;
  /** TX slots netback answered with an error (or dropped). */
  txErrors: number;
  /** Received frames thrown away: an error slot, or a response that makes no sense. */
  rxErrors: number;
  /** Event-channel notifications sent to netback (flushes and refills that it asked for). */
  notificationsSent: number;
  /** Waits that ended with an event from netback. */
  eventsReceived: number;
  /** RX refill batches pushed. */
  rxRefills: number;
  /** RX buffers posted in all. */
  rxBuffersPosted: number;
  /** Waits (wait + waitAsync). */
  waits: number;
}

const PAGES_PER_FRAME = Math.ceil(MAX_FRAME / PAGE_SIZE);

export class Netfront {
  /** The vif's MAC (from the backend's `mac` key). */
  readonly mac: Uint8Array;
  /** The largest payload after the Ethernet header this vif carries. */
  readonly mtu: number;
  /** The host's NIC id (`mx-nic-id`), so the MX library can address endpoints. */
  readonly nicId: number;
  /** What the backend advertised. */
  readonly features: Readonly<Record<string, string>>;
  /** Doubles from the start: a byte count past 2^31 changes no shape (xen/double-counts.ts). */
  readonly counters: NetfrontCounters = zeroed({
    txFrames: 0.5,
    txBytes: 0.5,
    rxFrames: 0.5,
    rxBytes: 0.5,
    txFull: 0.5,
    txErrors: 0.5,
    rxErrors: 0.5,
    notificationsSent: 0.5,
    eventsReceived: 0.5,
    rxRefills: 0.5,
    rxBuffersPosted: 0.5,
    waits: 0.5,
  });

  private readonly maxFrame: number;
  private readonly tx: FrontRing;
  private readonly rx: FrontRing;
  private readonly port: EventChannelPort;
  // TX buffers: page i of txRun, grant txGref[i]; its index is the request id.
  private readonly txPage: Uint8Array;
  private readonly txFree: Uint16Array;
  private txFreeCount: number;
  private readonly txBusy: Uint8Array;
  /** A send was refused: ask for a TX completion event when waiting. */
  private txBlocked = false;
  // RX buffers: page i of rxRun, grant rxGref[i]; its index is the request id.
  private readonly rxPage: Uint8Array;
  private readonly rxFree: Uint16Array;
  private rxFreeCount: number;
  private readonly rxPosted: Uint8Array;
  private readonly rxBatch: number;
  /** One cached view per RX buffer, reused while frame lengths repeat. */
  private readonly rxViews: Uint8Array[] = [];
  // Reassembly of a frame over several RX buffers (may continue across polls).
  private readonly reasm: Uint8Array;
  private reasmView: Uint8Array;
  private reasmLen = 0;
  private inFrame = false;
  private frameBad = false;
  private dead: string | undefined;
  private closed = false;

  private readonly guest: Guest;
  private readonly device: SyncXenbusFrontend;
  private readonly pages: VifPages;
  private readonly txGref: Uint32Array;
  private readonly rxGref: Uint32Array;
  private readonly portNo: number;
  private readonly spinUs: number | undefined;
  /** device/vif/<devid> and the backend's directory. */
  readonly frontPath: string;
  readonly backPath: string;
  /** The backend's domain. */
  readonly backendId: number;

  private constructor(guest: Guest, setup: VifSetup) {
    this.guest = guest;
    this.device = setup.device;
    this.frontPath = setup.device.path;
    this.backPath = setup.device.backPath;
    this.backendId = setup.backendId;
    this.pages = setup.pages;
    const txGref = (this.txGref = setup.txGref);
    const rxGref = (this.rxGref = setup.rxGref);
    this.portNo = setup.portNo;
    this.spinUs = setup.spinUs;
    this.features = setup.features;
    this.mac = setup.mac;
    this.mtu = setup.mtu;
    this.nicId = setup.nicId;
    this.maxFrame = setup.mtu + ETH_HLEN;
    const pages = setup.pages;
    const ringBytes = pages.rings.bytes;
    this.tx = new FrontRing(ringBytes.subarray(0, PAGE_SIZE), TX_REQ_BYTES, TX_RSP_BYTES);
    this.rx = new FrontRing(ringBytes.subarray(PAGE_SIZE, 2 * PAGE_SIZE), RX_REQ_BYTES, RX_RSP_BYTES);
    this.txPage = pages.tx.bytes;
    const nTx = txGref.length;
    this.txFree = new Uint16Array(nTx);
    for (let i = 0; i < nTx; i++) this.txFree[i] = nTx - 1 - i;
    this.txFreeCount = nTx;
    this.txBusy = new Uint8Array(nTx);
    this.rxPage = pages.rx.bytes;
    const nRx = rxGref.length;
    this.rxFree = new Uint16Array(nRx);
    this.rxFreeCount = 0;
    this.rxPosted = new Uint8Array(nRx);
    for (let i = 0; i < nRx; i++) {
      this.rxViews.push(this.rxPage.subarray(i * PAGE_SIZE, i * PAGE_SIZE));
      this.rxPosted[i] = 1;
    }
    this.rxBatch = setup.rxBatch;
    this.reasm = new Uint8Array(PAGES_PER_FRAME * PAGE_SIZE);
    this.reasmView = this.reasm.subarray(0, 0);
    this.port = guest.evtchn.port(setup.portNo);
    // Masked between waits: netback's notifications kick only while we really sleep.
    this.port.mask();
    // The set-up posted every RX buffer in one batch.
    this.counters.rxBuffersPosted = nRx;
    this.counters.rxRefills = 1;
  }

  /**
   * Connects to the vif the toolstack gave this guest (Host.startGuest creates device/vif/0).
   * Synchronous: the xenbus steps use synchronous XenStore requests and poll the peer's state.
   */
  static connect(guest: Guest, opts: NetfrontOptions = {}): Netfront {
    return new Netfront(guest, setUpVif(guest, opts));
  }

  /** Why the vif is unusable, if it is (the backend disconnected or broke a ring). */
  get disconnected(): string | undefined {
    return this.dead;
  }

  private check(what: string): void {
    if (this.closed) throw new NetfrontError(`${what}: this vif was closed`);
    if (this.dead) throw new NetfrontError(`${what}: the vif backend disconnected (${this.dead})`);
  }

  // ---- TX -----------------------------------------------------------------------------------------

  /**
   * Copies one Ethernet frame (header included, ETH_HLEN..mtu + ETH_HLEN bytes) into TX
   * buffers and queues its request(s). false = no ring slot or buffer free: poll (which
   * reclaims completed ones) and retry. Nothing reaches netback before `flush`.
   */
  send(frame: Uint8Array): boolean {
    this.check("send");
    const len = frame.length;
    if (len < ETH_HLEN || len > this.maxFrame)
      throw new NetfrontError(
        `send: a frame must be ${ETH_HLEN}..${this.maxFrame} bytes (Ethernet header + MTU ${this.mtu}), got ${len}`,
      );
    const slots = len <= PAGE_SIZE ? 1 : Math.ceil(len / PAGE_SIZE);
    const ring = this.tx;
    if (this.txFreeCount < slots || ring.freeRequests() < slots) {
      this.reclaimTx();
      if (this.txFreeCount < slots || ring.freeRequests() < slots) {
        this.counters.txFull++;
        this.txBlocked = true;
        return false;
      }
    }
    const v = ring.view;
    for (let s = 0; s < slots; s++) {
      const id = this.txFree[--this.txFreeCount];
      this.txBusy[id] = 1;
      const start = s * PAGE_SIZE;
      const chunk = Math.min(PAGE_SIZE, len - start);
      if (slots === 1) this.txPage.set(frame, id * PAGE_SIZE);
      else this.txPage.set(frame.subarray(start, start + chunk), id * PAGE_SIZE);
      const off = ring.nextRequest();
      v.setUint32(off + TX_REQ_GREF, this.txGref[id], true);
      v.setUint16(off + TX_REQ_OFFSET, 0, true);
      v.setUint16(off + TX_REQ_FLAGS, s < slots - 1 ? NETTXF_more_data : 0, true);
      v.setUint16(off + TX_REQ_ID, id, true);
      // netif.h: the first slot carries the whole packet's size, later ones their own.
      v.setUint16(off + TX_REQ_SIZE, s === 0 ? len : chunk, true);
    }
    this.counters.txFrames++;
    this.counters.txBytes += len;
    return true;
  }

  /** Publishes queued requests; notifies netback only if it asked (its req_event). */
  flush(): void {
    if (this.closed || this.dead) return;
    if (this.tx.pushRequests()) {
      this.port.notify();
      this.counters.notificationsSent++;
    }
  }

  private reclaimTx(): void {
    const ring = this.tx;
    const v = ring.view;
    const nTx = this.txBusy.length;
    while (ring.unconsumedResponses() > 0) {
      const off = ring.nextResponse();
      const status = v.getInt16(off + TX_RSP_STATUS, true);
      if (status === NETIF_RSP_NULL) continue;
      const id = v.getUint16(off + TX_RSP_ID, true);
      if (status < 0) this.counters.txErrors++;
      if (id < nTx && this.txBusy[id] === 1) {
        this.txBusy[id] = 0;
        this.txFree[this.txFreeCount++] = id;
      } else this.counters.txErrors++;
    }
    if (ring.broken) this.dead ??= `netback broke the tx ring: ${ring.broken}`;
    if (this.txFreeCount >= PAGES_PER_FRAME) this.txBlocked = false;
  }

  // ---- RX -----------------------------------------------------------------------------------------

  /**
   * Reclaims TX buffers, hands up to `max` received frames to `cb` (each valid only during
   * the call), reposts RX buffers in batches. Returns how many frames it delivered. Never
   * blocks.
   */
  poll(cb: (frame: Uint8Array) => void, max = Number.POSITIVE_INFINITY): number {
    if (this.closed) throw new NetfrontError("poll: this vif was closed");
    this.reclaimTx();
    const ring = this.rx;
    const v = ring.view;
    const nRx = this.rxPosted.length;
    let delivered = 0;
    while ((this.inFrame || delivered < max) && ring.unconsumedResponses() > 0) {
      const off = ring.nextResponse();
      const id = v.getUint16(off + RX_RSP_ID, true);
      const offset = v.getUint16(off + RX_RSP_OFFSET, true);
      const flags = v.getUint16(off + RX_RSP_FLAGS, true);
      const status = v.getInt16(off + RX_RSP_STATUS, true);
      const more = (flags & NETRXF_more_data) !== 0;
      if (id >= nRx || this.rxPosted[id] !== 1) {
        // Not a buffer we posted: nothing to recycle, and the frame it belongs to is lost.
        this.frameBad = true;
      } else {
        this.rxPosted[id] = 0;
        this.rxFree[this.rxFreeCount++] = id;
        if (status < 0 || offset + status > PAGE_SIZE) this.frameBad = true;
      }
      const first = !this.inFrame;
      if (!this.frameBad) {
        const src = id * PAGE_SIZE + offset;
        if (first && !more && status >= ETH_HLEN) {
          // The common case: the frame is in one buffer; hand out a view, no copy.
          let view = this.rxViews[id];
          if (view.byteOffset !== this.rxPage.byteOffset + src || view.length !== status)
            this.rxViews[id] = view = this.rxPage.subarray(src, src + status);
          this.counters.rxFrames++;
          this.counters.rxBytes += status;
          delivered++;
          cb(view);
          continue;
        }
        if (first) this.reasmLen = 0;
        if (this.reasmLen + status > this.maxFrame) this.frameBad = true;
        else {
          this.reasm.set(this.rxPage.subarray(src, src + status), this.reasmLen);
          this.reasmLen += status;
        }
      }
      this.inFrame = more;
      if (more) continue;
      // The last slot of a frame.
      if (this.frameBad || this.reasmLen < ETH_HLEN) {
        this.counters.rxErrors++;
        this.frameBad = false;
        continue;
      }
      if (this.reasmView.length !== this.reasmLen) this.reasmView = this.reasm.subarray(0, this.reasmLen);
      this.counters.rxFrames++;
      this.counters.rxBytes += this.reasmLen;
      delivered++;
      cb(this.reasmView);
    }
    if (ring.broken) this.dead ??= `netback broke the rx ring: ${ring.broken}`;
    if (this.rxFreeCount >= this.rxBatch) this.refill();
    return delivered;
  }

  /** Posts every free RX buffer; one push and at most one notification per batch. */
  private refill(): void {
    if (this.dead) return;
    const ring = this.rx;
    const v = ring.view;
    let n = 0;
    while (this.rxFreeCount > 0 && ring.freeRequests() > 0) {
      const id = this.rxFree[--this.rxFreeCount];
      writeRxRequest(v, ring.nextRequest(), id, this.rxGref[id]);
      this.rxPosted[id] = 1;
      n++;
    }
    if (n === 0) return;
    this.counters.rxRefills++;
    this.counters.rxBuffersPosted += n;
    if (ring.pushRequests()) {
      this.port.notify();
      this.counters.notificationsSent++;
    }
  }

  // ---- waiting ------------------------------------------------------------------------------------

  /** Whether a TX completion should wake us: only when a sender is short of buffers. */
  private get wantTxEvent(): boolean {
    return this.txBlocked || this.txFreeCount < PAGES_PER_FRAME;
  }

  /** true if there is something to poll; otherwise arms the event indexes (final checks). */
  private ready(): boolean {
    if (this.rx.unconsumedResponses() > 0) return true;
    if (this.wantTxEvent && this.tx.unconsumedResponses() > 0) return true;
    if (this.rx.finalCheckForResponses()) return true;
    if (this.wantTxEvent && this.tx.finalCheckForResponses()) return true;
    if (this.rx.broken || this.tx.broken) {
      this.dead ??= `netback broke a ring: ${this.rx.broken ?? this.tx.broken}`;
      return true;
    }
    return false;
  }

  /**
   * Sleeps until netback delivers a frame (or completes TX when sends were refused), at most
   * `timeoutMs`. Spins briefly first. true = something arrived (poll now).
   */
  wait(timeoutMs: number): boolean {
    this.check("wait");
    this.counters.waits++;
    if (this.ready()) return true;
    const w = this.port.wait(timeoutMs, this.spinUs);
    if (w === "event") {
      this.counters.eventsReceived++;
      return true;
    }
    if (w === "unbound") {
      this.dead ??= "netback closed the event channel";
      return this.rx.unconsumedResponses() > 0;
    }
    return false;
  }

  /** `wait` for code with an event loop: resolves without blocking the thread. */
  async waitAsync(timeoutMs: number): Promise<boolean> {
    this.check("waitAsync");
    this.counters.waits++;
    if (this.ready()) return true;
    const w = await this.port.waitAsync(timeoutMs);
    if (w === "event") {
      this.counters.eventsReceived++;
      return true;
    }
    if (w === "unbound") {
      this.dead ??= "netback closed the event channel";
      return this.rx.unconsumedResponses() > 0;
    }
    return false;
  }

  // ---- teardown -----------------------------------------------------------------------------------

  /** Walks the device to Closed, closes the channel and ends the grants (pages freed once ended). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.device.close();
    try {
      this.guest.evtchn.close(this.portNo);
    } catch {
      // closed by the backend's teardown already
    }
    releaseVif(this.guest, this.pages);
  }
}

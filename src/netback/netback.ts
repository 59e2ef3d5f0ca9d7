/**
 * netback: the driver domain's half of the classic Xen split network driver (the slow path).
 *
 * One vif per guest device under backend/vif/<domid>/<devid>. The xenbus side follows
 * MyriBack's: advertise features (InitWait) as soon as the toolstack has created the device,
 * so a guest's lazy Netfront.connect finds the backend ready; map the two rings and bind the
 * event channel when the frontend is Initialised; Closing/Closed on teardown.
 *
 * The data path runs in *passes* on dom0's event loop (never blocking it: vifs sleep with
 * Atomics.waitAsync on their event channel, the uplink on its interrupt word):
 *
 *   1. gather: copy and validate TX requests of every runnable vif (a budget each, so one
 *      busy or hostile guest cannot starve the others) and the uplink's frames into a dom0
 *      staging area; build one grant-copy op per (slot × page) piece;
 *   2. one GNTTABOP_copy batch for every TX piece of the pass (guest pages → dom0);
 *   3. TX responses (OKAY, or ERROR when validation or the copy failed), and the bridge:
 *      each frame goes to the port(s) it is for; a vif port claims RX requests and queues
 *      copy ops, the uplink copies into the NIC's port;
 *   4. one GNTTABOP_copy batch for every RX piece (dom0 → the guests' posted buffers);
 *   5. push responses on each touched ring and notify each vif at most once
 *      (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: only if its event index asks);
 *   6. vifs out of work do RING_FINAL_CHECK_FOR_REQUESTS and sleep; the others run again
 *      in the next pass, after the event loop had a turn.
 *
 * Every request is hostile: a bad packet gets NETIF_RSP_ERROR (bad grant, offset/size past a
 * page, size 0 or over the frame limit, undefined flags, extra_info which we never offered,
 * more than 18 slots); a broken ring (producer running ahead, a more_data chain with no end,
 * more than 20 slots — Linux's fatal cases) disconnects the vif with the reason logged. A
 * guest with no RX buffer posted loses the frame, counted (rxDropped), as netback does.
 */

import { traceNow } from "../nic/clock.js";
import { etherTraceId, NicTraceStage, type TraceBuffer } from "../nic/trace-ring.js";
import { type DomId, PAGE_SHIFT, PAGE_SIZE, XenbusState } from "../xen/abi.js";
import type { EventChannelPort } from "../xen/event-channel.js";
import type { GrantCopyOp } from "../xen/grant-table.js";
import type { GrantMapping, Guest } from "../xen/guest/guest.js";
import {
  ETH_HLEN,
  EXTRA_FLAGS,
  FATAL_SKB_SLOTS,
  formatMac,
  MAX_FRAME,
  MAX_FRAME_PAGES,
  NETIF_MTU,
  NETIF_RSP_ERROR,
  NETIF_RSP_NULL,
  NETIF_RSP_OKAY,
  NETRXF_csum_blank,
  NETRXF_data_validated,
  NETRXF_more_data,
  NETTXF_csum_blank,
  NETTXF_data_validated,
  NETTXF_extra_info,
  NETTXF_KNOWN,
  NETTXF_more_data,
  NetifKey,
  parseMac,
  RX_REQ_BYTES,
  RX_REQ_GREF,
  RX_REQ_ID,
  RX_RSP_BYTES,
  RX_RSP_STATUS,
  TX_REQ_BYTES,
  TX_REQ_FLAGS,
  TX_REQ_GREF,
  TX_REQ_ID,
  TX_REQ_OFFSET,
  TX_REQ_SIZE,
  TX_RSP_BYTES,
  TX_RSP_STATUS,
  VIF_DEVICE_TYPE,
  writeRxResponse,
  writeTxResponse,
  XEN_NETIF_EXTRA_FLAG_MORE,
  XEN_NETIF_NR_SLOTS_MIN,
} from "../xen/io/netif.js";
import { BackRing } from "../xen/ring.js";
import { BackendDeviceWatcher, XenbusBackend } from "../xen/xenbus.js";
import { Bridge, type BridgeFrame, type BridgePort } from "./bridge.js";
import {
  BridgeCounter,
  MAX_VIF_STATS,
  NET_STATS_BYTES,
  netTraceRing,
  STAT_BLOCK_WORDS,
  VifCounter,
} from "./stats.js";
import { type EtherPortLike, UplinkPort } from "./uplink.js";

export interface NetbackConfig {
  guest: Guest;
  /** NET_STATS_BYTES, read by the host (stats.ts). */
  stats: SharedArrayBuffer;
  /** Advertised as mx-nic-id so the MX library can address endpoints over Ethernet. */
  nicId: number;
  log: (message: string) => void;
  /** The NIC's Ethernet port; without it the bridge is host-local. */
  uplink?: EtherPortLike;
  /** Bridge MAC ageing (ms). */
  ageingMs?: number;
}

/** Frames staged per pass (each in 3 dom0 pages: a jumbo frame never needs more). */
const STAGING_FRAMES = 64;
/** Frames one vif may send per pass, and TX slots it may make us consume (errors included). */
const VIF_FRAME_BUDGET = 32;
const VIF_SLOT_BUDGET = 256;
/** Hostile packets logged in full per vif; the rest are only counted. */
const ERROR_LOG_LIMIT = 5;
/** How long the uplink sleeps before re-checking its ring (ms). */
const UPLINK_WAIT_MS = 1000;

type VifState = "advertised" | "connecting" | "connected" | "closed";

interface Vif {
  key: string;
  domid: DomId;
  devid: number;
  mac: string;
  /** The MAC the toolstack gave the vif: the only source address its frames may carry. */
  macBytes: Uint8Array;
  xb: XenbusBackend;
  state: VifState;
  txMap?: GrantMapping;
  rxMap?: GrantMapping;
  tx?: BackRing;
  rx?: BackRing;
  port?: EventChannelPort;
  portNo?: number;
  bridgeId: number;
  /** Base word of this vif's stats block, or -1 (no slot left: totals only). */
  stat: number;
  /** In the run queue. */
  queued: boolean;
  /** Sleeping on its event channel. */
  waiting: boolean;
  /** Stopped by the TX budget this pass: run again without sleeping. */
  moreWork: boolean;
  /** Why it must be disconnected at the end of this pass. */
  fatal?: string;
  touched: boolean;
  touchedTx: boolean;
  touchedRx: boolean;
  errorsLogged: number;
  unwatch?: () => Promise<void>;
  reopenable?: boolean;
  closing?: Promise<void>;
}

/** A staging slot: one frame in dom0 memory for the length of a pass. */
class StagedFrame implements BridgeFrame {
  len = 0;
  /** The vif it came from; undefined for the uplink. */
  from: Vif | undefined;
  ok = true;
  error = "";
  rspStart = 0;
  rspCount = 0;
  rxFlags = 0;
  private cached: Uint8Array;

  constructor(
    readonly data: Uint8Array,
    /** dom0 frame of the slot's first page. */
    readonly pfn: number,
  ) {
    this.cached = data.subarray(0, 0);
  }

  view(): Uint8Array {
    if (this.cached.length !== this.len) this.cached = this.data.subarray(0, this.len);
    return this.cached;
  }
}

function grow(a: Int32Array<ArrayBuffer>, need: number): Int32Array<ArrayBuffer> {
  if (need <= a.length) return a;
  const b = new Int32Array(Math.max(need, a.length * 2));
  b.set(a);
  return b;
}

export class Netback {
  readonly bridge: Bridge;
  private readonly guest: Guest;
  private readonly cfg: NetbackConfig;
  private readonly s: Float64Array;
  /** Traced frames' stamps, while the ring is on (stats.ts). */
  private readonly trace: TraceBuffer;
  private readonly vifs = new Map<string, Vif>();
  private readonly runq: Vif[] = [];
  private readonly processed: Vif[] = [];
  private readonly touchedList: Vif[] = [];
  private passScheduled = false;
  private stopped = false;

  // staging and per-pass scratch, allocated once
  private readonly staging: StagedFrame[] = [];
  private nStaged = 0;
  private readonly req = new Uint8Array(TX_REQ_BYTES);
  private readonly reqView = new DataView(this.req.buffer);
  private readonly rxReq = new Uint8Array(RX_REQ_BYTES);
  private readonly rxReqView = new DataView(this.rxReq.buffer);
  private readonly slotGref = new Uint32Array(FATAL_SKB_SLOTS + 1);
  private readonly slotOff = new Int32Array(FATAL_SKB_SLOTS + 1);
  private readonly slotSize = new Int32Array(FATAL_SKB_SLOTS + 1);
  private readonly rspOff = new Int32Array((STAGING_FRAMES + 1) * (FATAL_SKB_SLOTS + 1));
  private nRsp = 0;
  private readonly txPool: GrantCopyOp[] = [];
  private readonly txBatch: GrantCopyOp[] = [];
  private txOpFrame = new Int32Array(STAGING_FRAMES * 4);
  private nTxOps = 0;
  private readonly rxPool: GrantCopyOp[] = [];
  private readonly rxBatch: GrantCopyOp[] = [];
  private rxOpRsp = new Int32Array(STAGING_FRAMES * 4);
  private readonly rxOpVif: Vif[] = [];
  private nRxOps = 0;

  private readonly uplink?: {
    port: EtherPortLike;
    bp: UplinkPort;
    id: number;
    ready: boolean;
    waiting: boolean;
  };

  // xenbus bookkeeping
  private readonly watcher: BackendDeviceWatcher<Vif>;

  constructor(cfg: NetbackConfig) {
    if (!(cfg.stats instanceof SharedArrayBuffer) || cfg.stats.byteLength < NET_STATS_BYTES)
      throw new TypeError(`netback: stats must be a SharedArrayBuffer of ${NET_STATS_BYTES} bytes`);
    this.cfg = cfg;
    this.guest = cfg.guest;
    this.watcher = new BackendDeviceWatcher<Vif>(cfg.guest.xenstore, VIF_DEVICE_TYPE, {
      devices: () => this.vifs.values(),
      add: (domid, devid, key) => this.startDevice(domid, devid, key),
      removed: async (v, why) => {
        await this.teardown(v, why);
        await this.forget(v);
      },
      domainGone: (v, why) => this.teardown(v, why),
      log: (m) => this.log(m),
    });
    this.s = new Float64Array(cfg.stats);
    this.trace = netTraceRing(cfg.stats);
    this.bridge = new Bridge({ ageingMs: cfg.ageingMs });
    const run = this.guest.memory.allocPages(STAGING_FRAMES * MAX_FRAME_PAGES);
    const slotBytes = MAX_FRAME_PAGES * PAGE_SIZE;
    for (let i = 0; i < STAGING_FRAMES; i++) {
      this.staging.push(
        new StagedFrame(
          run.bytes.subarray(i * slotBytes, (i + 1) * slotBytes),
          run.pfn + i * MAX_FRAME_PAGES,
        ),
      );
    }
    if (cfg.uplink) {
      const bp = new UplinkPort(cfg.uplink);
      this.uplink = { port: cfg.uplink, bp, id: this.bridge.addPort(bp), ready: true, waiting: false };
      this.s[BridgeCounter.uplinkPresent] = 1;
    }
    this.publishBridge();
  }

  private log(message: string): void {
    this.cfg.log(message);
  }

  /** Watches for the toolstack's vif devices and starts the uplink. */
  async start(): Promise<void> {
    await this.watcher.start();
    if (this.uplink) this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher.stop();
    for (const v of [...this.vifs.values()]) {
      await this.teardown(v, "the driver domain is stopping");
      await this.forget(v);
    }
  }

  /** Vifs and their states (diagnostics). */
  vifStates(): { domid: DomId; devid: number; state: string; mac: string }[] {
    return [...this.vifs.values()].map((v) => ({
      domid: v.domid,
      devid: v.devid,
      state: v.state,
      mac: v.mac,
    }));
  }

  // ---- counters ---------------------------------------------------------------------------------

  /** Adds to a vif's counter and to the totals (same index in both blocks). */
  private add(v: Vif, idx: number, n = 1): void {
    if (v.stat >= 0) this.s[v.stat + idx] += n;
    this.s[idx] += n;
  }

  private statSlot(domid: DomId, devid: number): number {
    const s = this.s;
    let free = -1;
    let reuse = -1;
    for (let i = 0; i < MAX_VIF_STATS; i++) {
      const base = (1 + i) * STAT_BLOCK_WORDS;
      if (s[base + VifCounter.used] === 1) {
        if (s[base + VifCounter.domid] === domid && s[base + VifCounter.devid] === devid) return base;
        if (reuse < 0 && s[base + VifCounter.connected] === 0) reuse = base;
      } else if (free < 0) free = base;
    }
    const base = free >= 0 ? free : reuse;
    if (base < 0) return -1;
    s.fill(0, base, base + STAT_BLOCK_WORDS);
    s[base + VifCounter.domid] = domid;
    s[base + VifCounter.devid] = devid;
    s[base + VifCounter.used] = 1;
    return base;
  }

  private publishBridge(): void {
    const s = this.s;
    const c = this.bridge.counters;
    s[BridgeCounter.lookups] = c.lookups;
    s[BridgeCounter.hits] = c.hits;
    s[BridgeCounter.floods] = c.floods;
    s[BridgeCounter.learned] = c.learned;
    s[BridgeCounter.aged] = c.aged;
    s[BridgeCounter.bridgeDrops] = c.drops;
    s[BridgeCounter.macEntries] = this.bridge.size;
    s[BridgeCounter.bridgePorts] = this.bridge.portsInUse;
    if (this.uplink) {
      s[BridgeCounter.uplinkTx] = this.uplink.bp.txFrames;
      s[BridgeCounter.uplinkDrops] = this.uplink.bp.txDrops;
    }
  }

  // ---- scheduling -------------------------------------------------------------------------------

  private schedule(): void {
    if (this.passScheduled || this.stopped) return;
    this.passScheduled = true;
    setImmediate(this.runPass);
  }

  private enqueue(v: Vif): void {
    if (v.queued) return;
    v.queued = true;
    this.runq.push(v);
    this.schedule();
  }

  /** Sleeps on the vif's event channel (in the event loop) until the frontend notifies. */
  private arm(v: Vif): void {
    if (v.waiting || v.state !== "connected" || this.stopped) return;
    const port = v.port!;
    v.waiting = true;
    port.waitAsync().then(
      (w) => {
        v.waiting = false;
        if (v.state !== "connected" || v.port !== port) return;
        if (w === "unbound") {
          void this.teardown(v, "the frontend closed its event channel (domain gone)");
          return;
        }
        if (w === "event") this.add(v, VifCounter.notificationsReceived);
        this.enqueue(v);
      },
      (e: unknown) => {
        v.waiting = false;
        void this.teardown(v, `waiting on the event channel failed: ${(e as Error).message}`);
      },
    );
  }

  private armUplink(): void {
    const u = this.uplink;
    if (!u || u.waiting || this.stopped) return;
    u.waiting = true;
    u.port.waitAsync(UPLINK_WAIT_MS).then(
      () => {
        u.waiting = false;
        if (this.stopped) return;
        if (u.port.rxPending === false) this.armUplink();
        else {
          u.ready = true;
          this.schedule();
        }
      },
      (e: unknown) => {
        u.waiting = false;
        this.log(`the uplink's wait failed: ${(e as Error).message}; retrying`);
        setTimeout(() => this.armUplink(), UPLINK_WAIT_MS).unref();
      },
    );
  }

  private readonly runPass = (): void => {
    this.passScheduled = false;
    if (this.stopped) return;
    try {
      this.pass();
    } catch (e) {
      // A netback bug must not take dom0 down: log it and start the next pass clean.
      this.log(`netback pass failed (a bug): ${(e as Error)?.stack ?? String(e)}`);
      for (const v of this.processed) if (v.state === "connected") this.enqueue(v);
    }
    this.processed.length = 0;
    this.touchedList.length = 0;
    if (this.uplink && !this.uplink.ready) this.armUplink();
    if (this.runq.length > 0 || this.uplink?.ready) this.schedule();
  };

  /** A traced frame's stage at `t` (its trailer: nic/trace-ring.ts), into the stats page's ring. */
  private stamp(fr: StagedFrame, stage: number, t: number): void {
    const id = etherTraceId(fr.data, fr.len);
    if (id !== 0) this.trace.record(id, stage, t);
  }

  // ---- the pass ---------------------------------------------------------------------------------

  private pass(): void {
    const s = this.s;
    s[BridgeCounter.passes]++;
    this.nStaged = 0;
    this.nRsp = 0;
    this.nTxOps = 0;
    this.nRxOps = 0;

    // 1. gather TX from the runnable vifs, round-robin, then from the uplink.
    const n = this.runq.length;
    for (let k = 0; k < n && this.nStaged < STAGING_FRAMES; k++) {
      const v = this.runq.shift()!;
      v.queued = false;
      if (v.state !== "connected") continue;
      v.moreWork = this.gatherTx(v);
      this.processed.push(v);
    }
    const u = this.uplink;
    if (u?.ready && this.nStaged < STAGING_FRAMES) {
      u.ready = false;
      const budget = STAGING_FRAMES - this.nStaged;
      const got = u.port.poll(this.onUplinkFrame, budget);
      u.ready = u.port.rxPending ?? got >= budget;
    }

    // Tracing: every frame of this pass has been taken off its ring (a traced frame's
    // netback-tx, stamped once its trailer is copied in; stats.ts).
    const passStart = this.trace.on ? traceNow() : 0;

    // 2. one grant-copy batch for every TX piece.
    if (this.nTxOps > 0) {
      const batch = this.txBatch;
      batch.length = 0;
      for (let i = 0; i < this.nTxOps; i++) batch.push(this.txPool[i]);
      const res = this.guest.grants.copy(batch);
      s[BridgeCounter.grantCopyCalls]++;
      for (let i = 0; i < res.length; i++) {
        const fr = this.staging[this.txOpFrame[i]];
        const v = fr.from!;
        if (res[i].status === 0) {
          this.add(v, VifCounter.grantCopies);
          this.add(v, VifCounter.grantCopyBytes, batch[i].len);
        } else {
          this.add(v, VifCounter.grantCopyErrors);
          if (fr.ok) {
            fr.ok = false;
            fr.error = res[i].error ?? `grant copy failed with status ${res[i].status}`;
          }
        }
      }
    }

    // 3. TX responses and the bridge.
    const tracing = passStart !== 0;
    for (let f = 0; f < this.nStaged; f++) {
      const fr = this.staging[f];
      const v = fr.from;
      if (v === undefined) {
        s[BridgeCounter.uplinkRx]++;
        // Stamped before the frame moves on: once forwarded, another thread may stamp it next.
        if (tracing) this.stamp(fr, NicTraceStage.BridgedIn, traceNow());
        this.bridge.forward(u!.id, fr);
        continue;
      }
      if (!fr.ok) {
        this.add(v, VifCounter.txErrors);
        this.reportError(v, fr.error);
        continue;
      }
      // Anti-spoofing (what Xen's vif scripts do with ebtables): a guest sends only as its own
      // MAC, so a peer can trust the source address of what reaches it through the bridge.
      const d = fr.data;
      const m = v.macBytes;
      if (
        d[6] !== m[0] ||
        d[7] !== m[1] ||
        d[8] !== m[2] ||
        d[9] !== m[3] ||
        d[10] !== m[4] ||
        d[11] !== m[5]
      ) {
        this.add(v, VifCounter.txErrors);
        this.reportError(v, `a frame with source MAC ${formatMac(d, 6)} is not from this vif's MAC ${v.mac}`);
        continue;
      }
      const view = v.tx!.view;
      for (let r = fr.rspStart; r < fr.rspStart + fr.rspCount; r++)
        view.setInt16(this.rspOff[r] + TX_RSP_STATUS, NETIF_RSP_OKAY, true);
      this.add(v, VifCounter.txFrames);
      this.add(v, VifCounter.txBytes, fr.len);
      if (tracing) {
        this.stamp(fr, NicTraceStage.NetbackTx, passStart);
        this.stamp(fr, NicTraceStage.Bridged, traceNow());
      }
      if (this.bridge.forward(v.bridgeId, fr) > 0) this.add(v, VifCounter.framesBridged);
    }
    // Vifs whose requests all failed validation still need their ERROR responses pushed.
    for (const v of this.processed) if (v.state === "connected") this.touch(v).touchedTx = true;

    // 4. one grant-copy batch for every RX piece.
    if (this.nRxOps > 0) {
      const batch = this.rxBatch;
      batch.length = 0;
      for (let i = 0; i < this.nRxOps; i++) batch.push(this.rxPool[i]);
      const res = this.guest.grants.copy(batch);
      s[BridgeCounter.grantCopyCalls]++;
      for (let i = 0; i < res.length; i++) {
        const w = this.rxOpVif[i];
        if (res[i].status === 0) {
          this.add(w, VifCounter.grantCopies);
          this.add(w, VifCounter.grantCopyBytes, batch[i].len);
        } else {
          // The guest posted a buffer we may not write: that slot (and so its frame) fails.
          w.rx!.view.setInt16(this.rxOpRsp[i] + RX_RSP_STATUS, NETIF_RSP_ERROR, true);
          this.add(w, VifCounter.grantCopyErrors);
          this.add(w, VifCounter.rxErrors);
          this.reportError(w, `an rx buffer cannot be written: ${res[i].error ?? res[i].status}`);
        }
        this.rxOpVif[i] = undefined as unknown as Vif;
      }
    }

    // 5. publish responses; one notification per vif per pass, only if its event index asks.
    for (const v of this.touchedList) {
      v.touched = false;
      if (v.state !== "connected") continue;
      let notify = false;
      if (v.touchedTx && v.tx!.pushResponses()) notify = true;
      if (v.touchedRx && v.rx!.pushResponses()) notify = true;
      v.touchedTx = false;
      v.touchedRx = false;
      if (notify) {
        v.port!.notify();
        this.add(v, VifCounter.notificationsSent);
      }
      if (v.fatal) void this.teardown(v, v.fatal);
    }

    // 6. more work now, or final check and sleep.
    for (const v of this.processed) {
      if (v.state !== "connected") continue;
      const tx = v.tx!;
      if (v.fatal) void this.teardown(v, v.fatal);
      else if (v.moreWork || tx.finalCheckForRequests()) this.enqueue(v);
      else if (tx.broken) void this.teardown(v, `the tx ring is broken: ${tx.broken}`);
      else this.arm(v);
    }
    this.publishBridge();
  }

  private touch(v: Vif): Vif {
    if (!v.touched) {
      v.touched = true;
      this.touchedList.push(v);
    }
    return v;
  }

  private reportError(v: Vif, error: string): void {
    if (v.errorsLogged > ERROR_LOG_LIMIT) return;
    v.errorsLogged++;
    this.log(
      v.errorsLogged > ERROR_LOG_LIMIT
        ? `vif ${v.domid}/${v.devid}: more bad packets; only counting them from now on`
        : `vif ${v.domid}/${v.devid}: bad packet answered with NETIF_RSP_ERROR: ${error}`,
    );
  }

  private txOp(i: number): GrantCopyOp {
    let op = this.txPool[i];
    if (op === undefined) {
      op = {
        source: { domid: 0, ref: 0, offset: 0 },
        dest: { domid: this.guest.domid, gmfn: 0, offset: 0 },
        len: 0,
      };
      this.txPool.push(op);
    }
    this.txOpFrame = grow(this.txOpFrame, i + 1);
    return op;
  }

  private rxOp(i: number): GrantCopyOp {
    let op = this.rxPool[i];
    if (op === undefined) {
      op = {
        source: { domid: this.guest.domid, gmfn: 0, offset: 0 },
        dest: { domid: 0, ref: 0, offset: 0 },
        len: 0,
      };
      this.rxPool.push(op);
    }
    this.rxOpRsp = grow(this.rxOpRsp, i + 1);
    return op;
  }

  /**
   * Consumes and validates `v`'s TX requests into staging frames and copy ops. Returns true
   * when it stopped for a budget (more may be waiting). Sets `v.fatal` for a broken ring.
   */
  private gatherTx(v: Vif): boolean {
    const ring = v.tx!;
    const view = ring.view;
    const q = this.reqView;
    let frames = 0;
    let slots = 0;
    while (frames < VIF_FRAME_BUDGET && slots < VIF_SLOT_BUDGET && this.nStaged < STAGING_FRAMES) {
      if (!ring.copyRequest(this.req)) {
        if (ring.broken) v.fatal = `the tx ring is broken: ${ring.broken}`;
        return false;
      }
      // The first slot: the packet's size, its flags.
      const rspBase = this.nRsp;
      let err: string | undefined;
      let flags = q.getUint16(TX_REQ_FLAGS, true);
      const total = q.getUint16(TX_REQ_SIZE, true);
      this.slotGref[0] = q.getUint32(TX_REQ_GREF, true);
      this.slotOff[0] = q.getUint16(TX_REQ_OFFSET, true);
      let off = ring.nextResponse();
      writeTxResponse(view, off, q.getUint16(TX_REQ_ID, true), NETIF_RSP_ERROR);
      this.rspOff[this.nRsp++] = off;
      let nSlots = 1;
      this.add(v, VifCounter.txRequests);
      const firstFlags = flags;
      if (flags & ~NETTXF_KNOWN) err = `flags 0x${flags.toString(16)} include bits netif.h does not define`;
      else if (total < ETH_HLEN || total > MAX_FRAME)
        err = `packet size ${total} is outside ${ETH_HLEN}..${MAX_FRAME} (MTU ${NETIF_MTU})`;
      // Extra-info segments follow the first slot; we offered no extra type, so none is valid.
      let extra = (flags & NETTXF_extra_info) !== 0;
      if (extra)
        err ??= "NETTXF_extra_info set, but this backend offers no extra-info types (no GSO, no multicast)";
      while (extra) {
        if (!ring.copyRequest(this.req)) {
          v.fatal = ring.broken
            ? `the tx ring is broken: ${ring.broken}`
            : `an extra-info slot is missing: req_prod ends after ${nSlots} slots of a packet`;
          return false;
        }
        off = ring.nextResponse();
        writeTxResponse(view, off, 0, NETIF_RSP_NULL);
        this.add(v, VifCounter.txRequests);
        if (++nSlots > FATAL_SKB_SLOTS) {
          v.fatal = `a packet of more than ${FATAL_SKB_SLOTS} slots (extra-info chain)`;
          return false;
        }
        extra = (this.req[EXTRA_FLAGS] & XEN_NETIF_EXTRA_FLAG_MORE) !== 0;
      }
      // Fragments: each slot's own size; the first slot holds what they leave of the total.
      let dataSlots = 1;
      let fragSum = 0;
      while (flags & NETTXF_more_data) {
        if (!ring.copyRequest(this.req)) {
          v.fatal = ring.broken
            ? `the tx ring is broken: ${ring.broken}`
            : `a more_data chain runs past req_prod (${nSlots} slots and no last one)`;
          return false;
        }
        flags = q.getUint16(TX_REQ_FLAGS, true);
        off = ring.nextResponse();
        writeTxResponse(view, off, q.getUint16(TX_REQ_ID, true), NETIF_RSP_ERROR);
        this.add(v, VifCounter.txRequests);
        if (++nSlots > FATAL_SKB_SLOTS) {
          v.fatal = `a more_data chain longer than ${FATAL_SKB_SLOTS} slots`;
          return false;
        }
        this.rspOff[this.nRsp++] = off;
        if (flags & ~NETTXF_more_data)
          err ??= `slot ${dataSlots} has flags 0x${flags.toString(16)}; after the first slot only more_data is allowed`;
        this.slotGref[dataSlots] = q.getUint32(TX_REQ_GREF, true);
        this.slotOff[dataSlots] = q.getUint16(TX_REQ_OFFSET, true);
        const size = q.getUint16(TX_REQ_SIZE, true);
        this.slotSize[dataSlots] = size;
        fragSum += size;
        dataSlots++;
      }
      slots += nSlots;
      if (err === undefined && dataSlots > XEN_NETIF_NR_SLOTS_MIN)
        err = `${dataSlots} slots, more than the ${XEN_NETIF_NR_SLOTS_MIN} a packet may use`;
      if (err === undefined) {
        if (fragSum >= total)
          err = `the fragments (${fragSum} B) leave nothing for the first slot of a ${total}-byte packet (size 0)`;
        else {
          this.slotSize[0] = total - fragSum;
          for (let k = 0; k < dataSlots && err === undefined; k++) {
            if (this.slotSize[k] === 0) err = `slot ${k} has size 0`;
            else if (this.slotOff[k] + this.slotSize[k] > PAGE_SIZE)
              err = `slot ${k}: offset ${this.slotOff[k]} + size ${this.slotSize[k]} crosses its page (${PAGE_SIZE} B)`;
          }
        }
      }
      if (err !== undefined) {
        // Its responses already say NETIF_RSP_ERROR; they are pushed with the pass.
        this.nRsp = rspBase;
        this.add(v, VifCounter.txErrors);
        this.reportError(v, err);
        continue;
      }
      const si = this.nStaged++;
      const fr = this.staging[si];
      fr.from = v;
      fr.len = total;
      fr.ok = true;
      fr.error = "";
      fr.rspStart = rspBase;
      fr.rspCount = this.nRsp - rspBase;
      fr.rxFlags =
        firstFlags & NETTXF_csum_blank
          ? NETRXF_csum_blank | NETRXF_data_validated
          : firstFlags & NETTXF_data_validated
            ? NETRXF_data_validated
            : 0;
      // One copy op per piece that lies in one guest page and one dom0 page.
      let pos = 0;
      for (let k = 0; k < dataSlots; k++) {
        let src = this.slotOff[k];
        let left = this.slotSize[k];
        while (left > 0) {
          const inPage = pos & (PAGE_SIZE - 1);
          const len = Math.min(left, PAGE_SIZE - inPage);
          const i = this.nTxOps++;
          const op = this.txOp(i);
          this.txOpFrame[i] = si;
          op.source.domid = v.domid;
          op.source.ref = this.slotGref[k];
          op.source.offset = src;
          op.dest.gmfn = fr.pfn + (pos >>> PAGE_SHIFT);
          op.dest.offset = inPage;
          op.len = len;
          src += len;
          left -= len;
          pos += len;
        }
      }
      frames++;
    }
    return true;
  }

  private readonly onUplinkFrame = (frame: Uint8Array): void => {
    const len = frame.length;
    if (len < ETH_HLEN || len > MAX_FRAME) {
      this.s[BridgeCounter.uplinkBad]++;
      return;
    }
    const fr = this.staging[this.nStaged++];
    fr.data.set(frame);
    fr.len = len;
    fr.from = undefined;
    fr.ok = true;
    fr.rxFlags = 0;
  };

  /** The bridge's egress to a vif: claim RX buffers, queue the copies and the responses. */
  private deliver(w: Vif, fr: StagedFrame): boolean {
    if (w.state !== "connected" || w.fatal) return false;
    const rx = w.rx!;
    const len = fr.len;
    const slots = (len + PAGE_SIZE - 1) >>> PAGE_SHIFT;
    if (rx.unconsumedRequests() < slots) {
      if (rx.broken) {
        w.fatal = `the rx ring is broken: ${rx.broken}`;
        this.touch(w);
      }
      this.add(w, VifCounter.rxDropped);
      return false;
    }
    const view = rx.view;
    const q = this.rxReqView;
    for (let k = 0; k < slots; k++) {
      rx.copyRequest(this.rxReq);
      const off = rx.nextResponse();
      const chunk = Math.min(PAGE_SIZE, len - k * PAGE_SIZE);
      // An RX response sits in its request's slot (netif.h): the ring keeps them in step.
      writeRxResponse(
        view,
        off,
        q.getUint16(RX_REQ_ID, true),
        0,
        (k < slots - 1 ? NETRXF_more_data : 0) | fr.rxFlags,
        chunk,
      );
      const i = this.nRxOps++;
      const op = this.rxOp(i);
      this.rxOpRsp[i] = off;
      this.rxOpVif[i] = w;
      op.source.gmfn = fr.pfn + k;
      op.source.offset = 0;
      op.dest.domid = w.domid;
      op.dest.ref = q.getUint32(RX_REQ_GREF, true);
      op.dest.offset = 0;
      op.len = chunk;
    }
    this.add(w, VifCounter.rxRequests, slots);
    this.add(w, VifCounter.rxFrames);
    this.add(w, VifCounter.rxBytes, len);
    this.touch(w).touchedRx = true;
    return true;
  }

  // ---- xenbus -----------------------------------------------------------------------------------

  private async startDevice(domid: DomId, devid: number, key: string): Promise<void> {
    const xb = new XenbusBackend(this.guest.xenstore, VIF_DEVICE_TYPE, domid, devid);
    // The toolstack writes the MAC after creating the device: until then it is not ours to serve.
    const mac = await this.guest.xenstore.tryRead(`${xb.path}/${NetifKey.mac}`).catch(() => undefined);
    if (mac === undefined || this.vifs.has(key) || this.stopped) return;
    const v: Vif = {
      key,
      domid,
      devid,
      mac,
      macBytes: parseMac(mac) ?? new Uint8Array(6),
      xb,
      state: "advertised",
      bridgeId: -1,
      stat: -1,
      queued: false,
      waiting: false,
      moreWork: false,
      touched: false,
      touchedTx: false,
      touchedRx: false,
      errorsLogged: 0,
    };
    this.vifs.set(key, v);
    if (!parseMac(mac)) {
      await this.teardown(v, `the toolstack wrote an invalid mac ${JSON.stringify(mac)}`);
      return;
    }
    try {
      await xb.advertise({
        [NetifKey.featureRxCopy]: 1,
        [NetifKey.featureRxFlip]: 0,
        [NetifKey.featureSg]: 1,
        [NetifKey.mtu]: NETIF_MTU,
        [NetifKey.mxNicId]: this.cfg.nicId,
      });
      let seen = false;
      v.unwatch = await xb.onFrontendState((st) => {
        if (v.state === "closed") {
          // Like Xen's backends: a frontend that closed cleanly may start over.
          if (st === XenbusState.Initialising && v.reopenable) void this.reopen(v);
          return;
        }
        if (st === XenbusState.Initialised || st === XenbusState.Connected) {
          seen = true;
          if (v.state === "advertised") void this.connectVif(v);
        } else if (st === XenbusState.Closing || st === XenbusState.Closed) {
          v.reopenable = true;
          void this.teardown(v, `the frontend went ${st === XenbusState.Closing ? "Closing" : "Closed"}`);
        } else if (st === XenbusState.Unknown && (seen || v.state !== "advertised")) {
          void this.teardown(v, "the frontend directory vanished (its domain is gone)");
        } else if (st !== XenbusState.Unknown) seen = true;
      });
    } catch (e) {
      await this.teardown(v, `handshake failed: ${(e as Error).message}`);
    }
  }

  private async reopen(v: Vif): Promise<void> {
    if (this.stopped || this.vifs.get(v.key) !== v || !v.reopenable) return;
    v.reopenable = false;
    await v.closing;
    await this.forget(v);
    this.log(`vif ${v.domid}/${v.devid} re-initialises its device`);
    await this.startDevice(v.domid, v.devid, v.key);
  }

  private async forget(v: Vif): Promise<void> {
    if (this.vifs.get(v.key) === v) this.vifs.delete(v.key);
    const unwatch = v.unwatch;
    v.unwatch = undefined;
    if (unwatch) await unwatch().catch(() => undefined);
  }

  private async connectVif(v: Vif): Promise<void> {
    v.state = "connecting";
    const xs = this.guest.xenstore;
    try {
      const keys = await v.xb.gather([NetifKey.txRingRef, NetifKey.rxRingRef, NetifKey.eventChannel]);
      const front = (await v.xb.readFrontend()).path;
      const rxCopy = await xs.tryRead(`${front}/${NetifKey.requestRxCopy}`);
      if (rxCopy !== "1")
        throw new Error(
          `the frontend must set ${NetifKey.requestRxCopy}=1 (got ${JSON.stringify(rxCopy)}): this backend copies, it never flips pages`,
        );
      const txRef = keys[NetifKey.txRingRef];
      const rxRef = keys[NetifKey.rxRingRef];
      const evt = keys[NetifKey.eventChannel];
      for (const [k, val] of [
        [NetifKey.txRingRef, txRef],
        [NetifKey.rxRingRef, rxRef],
        [NetifKey.eventChannel, evt],
      ])
        if (!/^\d{1,10}$/.test(val)) throw new Error(`${k} ${JSON.stringify(val)} is not a number`);
      if (v.state !== "connecting") return;
      const grants = this.guest.grants;
      const tm = grants.map(v.domid, Number(txRef));
      if (tm.status !== 0)
        throw new Error(`cannot map tx-ring-ref ${txRef}: ${(tm as { error: string }).error}`);
      v.txMap = (tm as { mapping: GrantMapping }).mapping;
      const rm = grants.map(v.domid, Number(rxRef));
      if (rm.status !== 0)
        throw new Error(`cannot map rx-ring-ref ${rxRef}: ${(rm as { error: string }).error}`);
      v.rxMap = (rm as { mapping: GrantMapping }).mapping;
      v.tx = new BackRing(v.txMap.bytes, TX_REQ_BYTES, TX_RSP_BYTES);
      v.rx = new BackRing(v.rxMap.bytes, RX_REQ_BYTES, RX_RSP_BYTES);
      v.portNo = this.guest.evtchn.bindInterdomain(v.domid, Number(evt));
      v.port = this.guest.evtchn.port(v.portNo);
      // Masked while we work: the frontend's sends only kick us when we really sleep.
      v.port.mask();
      v.stat = this.statSlot(v.domid, v.devid);
      const bp: BridgePort = {
        name: `vif${v.domid}.${v.devid}`,
        transmit: (f) => this.deliver(v, f as StagedFrame),
      };
      v.bridgeId = this.bridge.addPort(bp);
      await v.xb.switchState(XenbusState.Connected);
      if (v.state !== "connecting") return;
      v.state = "connected";
      this.s[BridgeCounter.vifsConnected]++;
      if (v.stat >= 0) this.s[v.stat + VifCounter.connected] = 1;
      this.publishBridge();
      this.log(
        `vif ${v.domid}/${v.devid} connected (mac ${v.mac}, tx-ring-ref ${txRef}, rx-ring-ref ${rxRef}, event channel ${evt})`,
      );
      // Requests queued before we attached are served now; then the final check arms the wait.
      this.enqueue(v);
    } catch (e) {
      await this.teardown(v, `connecting failed: ${(e as Error).message}`);
    }
  }

  /** Disconnects a vif: off the bridge, rings unmapped, channel closed, Closing → Closed. Idempotent. */
  teardown(v: Vif, reason: string): Promise<void> {
    if (v.state === "closed") return v.closing ?? Promise.resolve();
    const wasConnected = v.state === "connected";
    v.state = "closed";
    this.log(`vif ${v.domid}/${v.devid} disconnected: ${reason}`);
    if (v.bridgeId >= 0) {
      this.bridge.removePort(v.bridgeId);
      v.bridgeId = -1;
      this.publishBridge();
    }
    if (wasConnected) {
      this.s[BridgeCounter.vifsConnected]--;
      this.add(v, VifCounter.disconnects);
      if (v.stat >= 0) this.s[v.stat + VifCounter.connected] = 0;
    }
    const grants = this.guest.grants;
    if (v.txMap) grants.unmap(v.txMap);
    if (v.rxMap) grants.unmap(v.rxMap);
    v.txMap = undefined;
    v.rxMap = undefined;
    if (v.portNo !== undefined) {
      try {
        this.guest.evtchn.close(v.portNo);
      } catch {
        // already closed by the hypervisor when the domain died
      }
    }
    v.closing = (async () => {
      if (!v.reopenable) {
        const unwatch = v.unwatch;
        v.unwatch = undefined;
        if (unwatch) await unwatch().catch(() => undefined);
      }
      try {
        await v.xb.switchState(XenbusState.Closing);
        await v.xb.switchState(XenbusState.Closed);
      } catch {
        // the directory may be gone already
      }
    })();
    return v.closing;
  }
}

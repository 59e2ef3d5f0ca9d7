/**
 * netback: the driver domain's half of the classic Xen split network driver (the slow path).
 * This file is netback itself — construction, scheduling and the pass that moves frames —
 * cut along Linux's xen-netback:
 *
 *   netback.ts   Netback: config, start/stop, the run queue, the pass (below)
 *   vif.ts       the vif (struct xenvif) and its lifecycle over xenbus (interface.c, xenbus.c)
 *   tx.ts        TX, guest → bridge: copy in, checks, anti-spoofing, TX responses
 *   rx.ts        RX, bridge → guest: claim RX buffers, copy out, RX responses (rx.c)
 *   staging.ts   dom0's staging frames for one pass
 *   counters.ts  the writer of the counters page (stats.ts: its layout and the host's reader)
 *   bridge.ts, uplink.ts  the software bridge and its port to the NIC's Ethernet port
 *
 * One vif per guest device under backend/vif/<domid>/<devid>. The data path runs in *passes*
 * on dom0's event loop (never blocking it: vifs sleep with Atomics.waitAsync on their event
 * channel, the uplink on its interrupt word):
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
 * Every request is hostile: a bad packet gets NETIF_RSP_ERROR, a broken ring disconnects the
 * vif with the reason logged (tx.ts lists both). A guest with no RX buffer posted loses the
 * frame, counted (rxDropped), as netback does.
 */

import { traceNow } from "../nic/clock.js";
import { etherTraceId, NicTraceStage, type TraceBuffer } from "../nic/trace-ring.js";
import type { DomId } from "../xen/abi.js";
import type { Guest } from "../xen/guest/guest.js";
import { isMxoe } from "../xen/io/mxoe.js";
import { ETH_HLEN, MAX_FRAME } from "../xen/io/netif.js";
import { Bridge, type BridgeFrame } from "./bridge.js";
import { NetbackCounters } from "./counters.js";
import { MxSteering, type NicContext, STEER_ANSWER, STEER_REFUSE, STEER_REJECT } from "./mx-steer.js";
import { RxPath } from "./rx.js";
import { STAGING_FRAMES, type StagedFrame, Staging } from "./staging.js";
import { BridgeCounter, NET_STATS_BYTES, netTraceRing, VifCounter } from "./stats.js";
import { TxPath } from "./tx.js";
import { type EtherPortLike, UplinkPort } from "./uplink.js";
import { type Vif, VifDevices } from "./vif.js";

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
  /**
   * NIC context `endpoint` here while open (myrback's registry): who opened it, its session and
   * key, so MX frames for it reach that opening only (mx-steer.ts). Without it only split-path
   * endpoints (their ids name the domain) resolve.
   */
  nicContext?: (endpoint: number) => NicContext | undefined;
}

/** How long the uplink sleeps before re-checking its ring (ms). */
const UPLINK_WAIT_MS = 1000;

export class Netback {
  readonly bridge: Bridge;
  private readonly guest: Guest;
  private readonly cfg: NetbackConfig;
  private readonly counters: NetbackCounters;
  /** Traced frames' stamps, while the ring is on (stats.ts). */
  private readonly trace: TraceBuffer;
  private readonly devices: VifDevices;
  private readonly runq: Vif[] = [];
  private readonly processed: Vif[] = [];
  private readonly touchedList: Vif[] = [];
  private passScheduled = false;
  private stopped = false;

  private readonly steering: MxSteering;
  private readonly staging: Staging;
  private readonly tx: TxPath;
  private readonly rx: RxPath;

  private readonly uplink?: {
    port: EtherPortLike;
    bp: UplinkPort;
    id: number;
    ready: boolean;
    waiting: boolean;
  };

  constructor(cfg: NetbackConfig) {
    if (!(cfg.stats instanceof SharedArrayBuffer) || cfg.stats.byteLength < NET_STATS_BYTES)
      throw new TypeError(`netback: stats must be a SharedArrayBuffer of ${NET_STATS_BYTES} bytes`);
    this.cfg = cfg;
    this.guest = cfg.guest;
    this.counters = new NetbackCounters(cfg.stats);
    this.trace = netTraceRing(cfg.stats);
    this.bridge = new Bridge({ ageingMs: cfg.ageingMs });
    const log = (m: string) => this.log(m);
    this.staging = new Staging(cfg.guest);
    this.tx = new TxPath(cfg.guest, this.staging, this.counters, log);
    this.rx = new RxPath(cfg.guest, this.counters, (v) => this.touch(v), log);
    this.devices = new VifDevices({
      guest: cfg.guest,
      nicId: cfg.nicId,
      bridge: this.bridge,
      counters: this.counters,
      enqueue: (v) => this.enqueue(v),
      deliver: (v, f) => this.rx.deliver(v, f as StagedFrame),
      publishBridge: () => this.publishBridge(),
      vifsGone: (domid) => {
        this.steering.forget(domid);
        this.publishBridge();
      },
      log,
    });
    if (cfg.uplink) {
      const bp = new UplinkPort(cfg.uplink);
      this.uplink = { port: cfg.uplink, bp, id: this.bridge.addPort(bp), ready: true, waiting: false };
      this.counters.words[BridgeCounter.uplinkPresent] = 1;
    }
    const devices = this.devices;
    const uplinkPort = this.uplink?.id ?? -1;
    this.steering = new MxSteering({
      nicId: cfg.nicId,
      nicContext: cfg.nicContext ?? (() => undefined),
      portOfDomain: (domid) => devices.portOfDomain(domid),
      domainOfPort: (port) => devices.domainOfPort(port),
      uplinkPort,
    });
    this.publishBridge();
  }

  private log(message: string): void {
    this.cfg.log(message);
  }

  /** Watches for the toolstack's vif devices and starts the uplink. */
  async start(): Promise<void> {
    await this.devices.start();
    if (this.uplink) this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.devices.stop();
  }

  /** Vifs and their states (diagnostics). */
  vifStates(): { domid: DomId; devid: number; state: string; mac: string }[] {
    return this.devices.states();
  }

  /** Disconnects a vif: off the bridge, rings unmapped, channel closed, Closing → Closed. Idempotent. */
  teardown(v: Vif, reason: string): Promise<void> {
    return this.devices.teardown(v, reason);
  }

  private publishBridge(): void {
    this.counters.publishBridge(this.bridge, this.uplink?.bp, this.steering);
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

  /**
   * `v` spent its rate's window with requests waiting (tx.ts hasCredit): it runs again when the
   * next window starts. Its frontend's notifies do not wake it meanwhile (it is not armed),
   * as Linux's credit timer holds a vif (tx_credit_callback).
   */
  private holdForCredit(v: Vif): void {
    this.counters.addRateHeld(v);
    if (v.creditTimer !== undefined) return;
    const wait = Math.max(0, v.creditNext - performance.now());
    v.creditTimer = setTimeout(() => {
      v.creditTimer = undefined;
      if (v.state === "connected") this.enqueue(v);
    }, wait);
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
        if (w === "event") this.counters.add(v, VifCounter.notificationsReceived);
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
      // The vifs it touched go again: still marked touched, touch() would never list them
      // again and their responses would never be pushed (the vif cut off for good). Their
      // claimed responses go out with the next pass, which processes them.
      for (const v of this.touchedList) {
        v.touched = false;
        if (v.state === "connected") this.enqueue(v);
      }
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
    const s = this.counters.words;
    s[BridgeCounter.passes]++;
    const staging = this.staging;
    // (A pass that threw midway left its slots as they were.)
    staging.release();
    this.tx.begin();
    this.rx.begin();

    // 1. gather TX from the runnable vifs, round-robin, then from the uplink.
    const n = this.runq.length;
    for (let k = 0; k < n && staging.count < STAGING_FRAMES; k++) {
      const v = this.runq.shift()!;
      v.queued = false;
      if (v.state !== "connected") continue;
      v.moreWork = this.tx.gather(v);
      this.processed.push(v);
    }
    const u = this.uplink;
    if (u?.ready && staging.count < STAGING_FRAMES) {
      u.ready = false;
      const budget = STAGING_FRAMES - staging.count;
      const got = u.port.poll(this.onUplinkFrame, budget);
      u.ready = u.port.rxPending ?? got >= budget;
    }

    // Tracing: every frame of this pass has been taken off its ring (a traced frame's
    // netback-tx, stamped once its trailer is copied in; stats.ts).
    const passStart = this.trace.on ? traceNow() : 0;

    // 2. one grant-copy batch for every TX piece.
    this.tx.copyIn();

    // 3. TX responses and the bridge.
    const tracing = passStart !== 0;
    for (let f = 0; f < staging.count; f++) {
      const fr = staging.frames[f];
      const v = fr.from;
      if (v === undefined) {
        s[BridgeCounter.uplinkRx]++;
        // Stamped before the frame moves on: once forwarded, another thread may stamp it next.
        if (tracing) this.stamp(fr, NicTraceStage.BridgedIn, traceNow());
        this.forward(u!.id, fr);
        continue;
      }
      if (!this.tx.finish(v, fr)) continue;
      if (tracing) {
        this.stamp(fr, NicTraceStage.NetbackTx, passStart);
        this.stamp(fr, NicTraceStage.Bridged, traceNow());
      }
      if (this.forward(v.bridgeId, fr) > 0) this.counters.add(v, VifCounter.framesBridged);
    }
    // Vifs whose requests all failed validation still need their ERROR responses pushed.
    for (const v of this.processed) if (v.state === "connected") this.touch(v).touchedTx = true;
    // The bridge's counters are in the page before any receiver is told of the frames they
    // count (step 5): whoever reads them after a frame arrived sees that frame counted.
    this.publishBridge();

    // 4. one grant-copy batch for every RX piece.
    this.rx.copyOut();

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
        this.counters.add(v, VifCounter.notificationsSent);
      }
      if (v.fatal) void this.teardown(v, v.fatal);
    }

    // 6. more work now, or final check and sleep.
    for (const v of this.processed) {
      if (v.state !== "connected") continue;
      const tx = v.tx!;
      if (v.fatal) void this.teardown(v, v.fatal);
      else if (v.rateHeld) this.holdForCredit(v);
      else if (v.moreWork || tx.finalCheckForRequests()) this.enqueue(v);
      else if (tx.broken) void this.teardown(v, `the tx ring is broken: ${tx.broken}`);
      else this.arm(v);
    }
    staging.release();
  }

  /** Out of the bridge: MX over Ethernet to its endpoint's owner only (mx-steer.ts), the rest by MAC. */
  private forward(ingress: number, fr: BridgeFrame): number {
    if (!isMxoe(fr.data, fr.len)) return this.bridge.forward(ingress, fr);
    const out = this.steering.route(ingress, fr.data, fr.len);
    if (out === STEER_REFUSE) return 0;
    if (out !== STEER_REJECT && out !== STEER_ANSWER) return this.bridge.sendTo(ingress, out, fr);
    // The sender hears from the bridge itself: REJECTED (a wrong-key lockout), BAD_KEY or
    // BAD_SESSION (a CONNECT to a NIC context), or a NACK (the endpoint it names is closed).
    this.steering.answerInPlace(fr.data);
    this.bridge.answer(ingress, fr);
    return 0;
  }

  /** Marks `v` as having responses to push at the end of the pass. */
  private touch(v: Vif): Vif {
    if (!v.touched) {
      v.touched = true;
      this.touchedList.push(v);
    }
    return v;
  }

  /** Stages a frame from the uplink (the NIC's Ethernet port) for the bridge. */
  private readonly onUplinkFrame = (frame: Uint8Array): void => {
    const len = frame.length;
    if (len < ETH_HLEN || len > MAX_FRAME) {
      this.counters.words[BridgeCounter.uplinkBad]++;
      return;
    }
    const fr = this.staging.frames[this.staging.count++];
    fr.data.set(frame);
    fr.len = len;
    fr.from = undefined;
    fr.ok = true;
    fr.rxFlags = 0;
  };
}

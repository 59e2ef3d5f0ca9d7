/**
 * The vif: one guest network device as netback serves it (Linux's struct xenvif), and its
 * lifecycle over xenbus (Linux's interface.c and xenbus.c). The xenbus side follows
 * MyriBack's: advertise features (InitWait) as soon as the toolstack has created the device,
 * so a guest's lazy Netfront.connect finds the backend ready; map the two rings, bind the
 * event channel and join the bridge when the frontend is Initialised; Closing/Closed on
 * teardown; a frontend that closed cleanly may start over. A domain's vifs share one flood
 * bucket on the bridge (storm control), kept for as long as the domain has a vif here: a
 * reopen makes a new bridge port, and a fresh bucket with it gave a guest a full burst per
 * reopen. The data path is tx.ts and rx.ts.
 */

import { type DomId, XenbusState } from "../xen/abi.js";
import type { EventChannelPort } from "../xen/event-channel.js";
import type { GrantMapping, Guest } from "../xen/guest/guest.js";
import {
  NETIF_MTU,
  NetifKey,
  parseMac,
  parseVifRate,
  RX_REQ_BYTES,
  RX_RSP_BYTES,
  TX_REQ_BYTES,
  TX_RSP_BYTES,
  VIF_DEVICE_TYPE,
} from "../xen/io/netif.js";
import { BackRing } from "../xen/ring.js";
import { BackendDeviceWatcher, XenbusBackend } from "../xen/xenbus.js";
import type { Bridge, BridgeFrame, BridgePort, FloodBucket } from "./bridge.js";
import type { NetbackCounters } from "./counters.js";
import { VifCounter } from "./stats.js";

/** Hostile packets logged in full per vif; the rest are only counted. */
const ERROR_LOG_LIMIT = 5;

export type VifState = "advertised" | "connecting" | "connected" | "closed";

export interface Vif {
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
  /**
   * Its TX rate (the toolstack's `rate` key, followed as Linux's xen-netback does): bytes
   * per window of `creditMs`; 0 for none. `credit` is what is left of the window (it may go
   * below 0 by one packet, repaid from the next), `creditNext` when the next window starts.
   */
  creditBytes: number;
  creditMs: number;
  credit: number;
  creditNext: number;
  /** Stopped by its rate this pass: run again when the next window starts, not on a notify. */
  rateHeld: boolean;
  creditTimer?: NodeJS.Timeout;
  /** Stops following its `rate` key (VifDevices.followRate). */
  unwatchRate?: () => Promise<void>;
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

/** Logs a hostile packet of `v` (the first few in full, then that it only counts them). */
export function reportBadPacket(v: Vif, error: string, log: (message: string) => void): void {
  if (v.errorsLogged > ERROR_LOG_LIMIT) return;
  v.errorsLogged++;
  log(
    v.errorsLogged > ERROR_LOG_LIMIT
      ? `vif ${v.domid}/${v.devid}: more bad packets; only counting them from now on`
      : `vif ${v.domid}/${v.devid}: bad packet answered with NETIF_RSP_ERROR: ${error}`,
  );
}

/** What the vifs' lifecycle needs of netback (netback.ts). */
export interface VifHost {
  readonly guest: Guest;
  /** Advertised as mx-nic-id. */
  readonly nicId: number;
  readonly bridge: Bridge;
  readonly counters: NetbackCounters;
  /** Runs the vif in the next pass (requests queued before we attached; then its final check). */
  enqueue(v: Vif): void;
  /** The bridge's egress to the vif: its RX path (rx.ts). */
  deliver(v: Vif, frame: BridgeFrame): boolean;
  /** The bridge's ports changed: copy its counters into the page. */
  publishBridge(): void;
  /**
   * netback serves no vif of `domid` any more: the toolstack removed them, or the domain is
   * gone. (Not when a frontend closes: its domain may open the vif again, and the answers to
   * what it sent before must still count.)
   */
  vifsGone(domid: DomId): void;
  log(message: string): void;
}

/** netback's vif devices: found by watching backend/vif, connected, torn down. */
export class VifDevices {
  private readonly vifs = new Map<string, Vif>();
  private readonly portByDomain = new Map<DomId, number>();
  private readonly domainByPort = new Map<number, DomId>();
  /** Per domain with a vif here: the flood bucket of its vifs' bridge ports (see above). */
  private readonly floodOfDomain = new Map<DomId, FloodBucket>();
  /**
   * Per vif (its key) that re-opened: the credit its rate's window had left (debt included) and
   * when the next window starts, for its next incarnation (followRate). A fresh window per
   * reopen let a guest capped at 2 MB/s send 3.5–5.8 MB/s, reconnecting after each burst.
   */
  private readonly creditOfReopened = new Map<string, { credit: number; next: number }>();
  private readonly watcher: BackendDeviceWatcher<Vif>;
  private stopped = false;

  constructor(private readonly host: VifHost) {
    this.watcher = new BackendDeviceWatcher<Vif>(host.guest.xenstore, VIF_DEVICE_TYPE, {
      devices: () => this.vifs.values(),
      add: (domid, devid, key) => this.startDevice(domid, devid, key),
      removed: async (v, why) => {
        await this.teardown(v, why);
        await this.forget(v);
        this.creditOfReopened.delete(v.key);
        if (!this.hasVif(v.domid)) {
          this.floodOfDomain.delete(v.domid);
          host.vifsGone(v.domid);
        }
      },
      domainGone: async (v, why) => {
        await this.teardown(v, why);
        this.creditOfReopened.delete(v.key);
        this.floodOfDomain.delete(v.domid);
        host.vifsGone(v.domid);
      },
      log: (m) => host.log(m),
    });
  }

  /** Watches for the toolstack's vif devices. */
  start(): Promise<void> {
    return this.watcher.start();
  }

  /** Stops watching and disconnects every vif. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher.stop();
    for (const v of [...this.vifs.values()]) {
      await this.teardown(v, "the driver domain is stopping");
      await this.forget(v);
    }
    this.floodOfDomain.clear();
    this.creditOfReopened.clear();
  }

  private hasVif(domid: DomId): boolean {
    for (const v of this.vifs.values()) if (v.domid === domid) return true;
    return false;
  }

  /**
   * The bridge port of `domid`'s vif (its lowest devid on the bridge), or -1: where MX frames
   * for its endpoints go (mx-steer.ts). Kept per domain as vifs join and leave the bridge.
   */
  portOfDomain(domid: DomId): number {
    return this.portByDomain.get(domid) ?? -1;
  }

  /** The domain whose vif is bridge port `port`, if it is a vif's. */
  domainOfPort(port: number): DomId | undefined {
    return this.domainByPort.get(port);
  }

  private refreshPort(domid: DomId): void {
    let best: Vif | undefined;
    for (const v of this.vifs.values())
      if (v.domid === domid && v.bridgeId >= 0 && (best === undefined || v.devid < best.devid)) best = v;
    if (best) this.portByDomain.set(domid, best.bridgeId);
    else this.portByDomain.delete(domid);
  }

  /** Vifs and their states (diagnostics). */
  states(): { domid: DomId; devid: number; state: string; mac: string }[] {
    return [...this.vifs.values()].map((v) => ({
      domid: v.domid,
      devid: v.devid,
      state: v.state,
      mac: v.mac,
    }));
  }

  private async startDevice(domid: DomId, devid: number, key: string): Promise<void> {
    const guest = this.host.guest;
    const xb = new XenbusBackend(guest.xenstore, VIF_DEVICE_TYPE, domid, devid);
    // The toolstack writes the MAC after creating the device: until then it is not ours to serve.
    const mac = await guest.xenstore.tryRead(`${xb.path}/${NetifKey.mac}`).catch(() => undefined);
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
      creditBytes: 0,
      creditMs: 0,
      credit: 0,
      creditNext: 0,
      rateHeld: false,
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
        [NetifKey.mxNicId]: this.host.nicId,
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
      // Forgotten while the watch was being set (the device removed, a reopen, netback
      // stopping): forget found no watch to remove, so remove it here.
      if (this.vifs.get(key) !== v) await this.forget(v);
    } catch (e) {
      await this.teardown(v, `handshake failed: ${(e as Error).message}`);
    }
  }

  private async reopen(v: Vif): Promise<void> {
    if (this.stopped || this.vifs.get(v.key) !== v || !v.reopenable) return;
    v.reopenable = false;
    await v.closing;
    if (v.creditBytes > 0) this.creditOfReopened.set(v.key, { credit: v.credit, next: v.creditNext });
    await this.forget(v);
    this.host.log(`vif ${v.domid}/${v.devid} re-initialises its device`);
    await this.startDevice(v.domid, v.devid, v.key);
    // Not started again (the toolstack took its mac away, netback stopping): no bucket kept for it.
    if (!this.hasVif(v.domid)) this.floodOfDomain.delete(v.domid);
  }

  private async forget(v: Vif): Promise<void> {
    if (this.vifs.get(v.key) === v) this.vifs.delete(v.key);
    const unwatch = v.unwatch;
    v.unwatch = undefined;
    if (unwatch) await unwatch().catch(() => undefined);
    const unwatchRate = v.unwatchRate;
    v.unwatchRate = undefined;
    if (unwatchRate) await unwatchRate().catch(() => undefined);
  }

  /**
   * Applies the vif's `rate` key now and whenever the toolstack changes it. A value that is not
   * "<bytes>,<usec>" (or none) is no limit, said in the log. A new rate keeps what the window
   * under way has left (at most the new window's) and its debt, and so does a vif re-opened
   * (creditOfReopened); a first one starts full.
   */
  private async followRate(v: Vif): Promise<() => Promise<void>> {
    const xs = this.host.guest.xenstore;
    const path = `${v.xb.path}/${NetifKey.rate}`;
    const load = async (): Promise<void> => {
      const text = await xs.tryRead(path).catch(() => undefined);
      const rate = parseVifRate(text);
      if (text !== undefined && rate === undefined)
        this.host.log(
          `vif ${v.domid}/${v.devid}: rate ${JSON.stringify(text)} is not "<bytes>,<usec>": no limit`,
        );
      const now = performance.now();
      const bytes = rate?.bytes ?? 0;
      const ms = (rate?.usec ?? 0) / 1000;
      const kept = this.creditOfReopened.get(v.key);
      this.creditOfReopened.delete(v.key);
      if (kept !== undefined) {
        v.credit = Math.min(kept.credit, bytes);
        v.creditNext = kept.next;
      } else if (v.creditBytes === 0) {
        v.credit = bytes;
        v.creditNext = now + ms;
      } else {
        v.credit = Math.min(v.credit, bytes);
        v.creditNext = Math.min(v.creditNext, now + ms);
      }
      v.creditBytes = bytes;
      v.creditMs = ms;
    };
    await load();
    return xs.watch(path, () => void load());
  }

  private async connectVif(v: Vif): Promise<void> {
    v.state = "connecting";
    const host = this.host;
    const guest = host.guest;
    const xs = guest.xenstore;
    try {
      const keys = await v.xb.gather([NetifKey.txRingRef, NetifKey.rxRingRef, NetifKey.eventChannel]);
      const front = (await v.xb.readFrontend()).path;
      const rxCopy = await xs.tryRead(`${front}/${NetifKey.requestRxCopy}`);
      if (rxCopy !== "1")
        throw new Error(
          `the frontend must set ${NetifKey.requestRxCopy}=1 (got ${JSON.stringify(rxCopy)}): this backend copies, it never flips pages`,
        );
      // Its TX rate, followed while the vif lives (Linux's xen-netback watches it too:
      // xen_net_rate_changed); a reconnect keeps the window and the debt it had.
      if (v.unwatchRate === undefined) {
        const unwatch = await this.followRate(v);
        // Forgotten meanwhile (a reopen, the device removed): forget found no watch to remove.
        if (this.vifs.get(v.key) !== v || v.unwatchRate !== undefined) await unwatch();
        else v.unwatchRate = unwatch;
      }
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
      const grants = guest.grants;
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
      v.portNo = guest.evtchn.bindInterdomain(v.domid, Number(evt));
      v.port = guest.evtchn.port(v.portNo);
      // Masked while we work: the frontend's sends only kick us when we really sleep.
      v.port.mask();
      v.stat = host.counters.claimBlock(v.domid, v.devid);
      const bp: BridgePort = {
        name: `vif${v.domid}.${v.devid}`,
        transmit: (f) => host.deliver(v, f),
      };
      let flood = this.floodOfDomain.get(v.domid);
      if (flood === undefined) {
        flood = host.bridge.floodBucket();
        this.floodOfDomain.set(v.domid, flood);
      }
      v.bridgeId = host.bridge.addPort(bp, flood);
      this.domainByPort.set(v.bridgeId, v.domid);
      this.refreshPort(v.domid);
      await v.xb.switchState(XenbusState.Connected);
      if (v.state !== "connecting") return;
      v.state = "connected";
      host.counters.setConnected(v, true);
      host.publishBridge();
      host.log(
        `vif ${v.domid}/${v.devid} connected (mac ${v.mac}, tx-ring-ref ${txRef}, rx-ring-ref ${rxRef}, event channel ${evt})`,
      );
      // Requests queued before we attached are served now; then the final check arms the wait.
      host.enqueue(v);
    } catch (e) {
      await this.teardown(v, `connecting failed: ${(e as Error).message}`);
    }
  }

  /** Disconnects a vif: off the bridge, rings unmapped, channel closed, Closing → Closed. Idempotent. */
  teardown(v: Vif, reason: string): Promise<void> {
    if (v.state === "closed") return v.closing ?? Promise.resolve();
    const host = this.host;
    const wasConnected = v.state === "connected";
    clearTimeout(v.creditTimer);
    v.creditTimer = undefined;
    v.state = "closed";
    if (v.bridgeId >= 0) {
      host.bridge.removePort(v.bridgeId);
      this.domainByPort.delete(v.bridgeId);
      v.bridgeId = -1;
      this.refreshPort(v.domid);
      host.publishBridge();
    }
    if (wasConnected) {
      host.counters.add(v, VifCounter.disconnects);
      host.counters.setConnected(v, false);
    }
    // Logged once the counters say so: a reader woken by the line reads them at once.
    host.log(`vif ${v.domid}/${v.devid} disconnected: ${reason}`);
    const grants = host.guest.grants;
    if (v.txMap) grants.unmap(v.txMap);
    if (v.rxMap) grants.unmap(v.rxMap);
    v.txMap = undefined;
    v.rxMap = undefined;
    // The rings are views of the guest's pages: a vif kept anywhere must not keep its RAM.
    v.tx = undefined;
    v.rx = undefined;
    if (v.portNo !== undefined) {
      try {
        host.guest.evtchn.close(v.portNo);
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

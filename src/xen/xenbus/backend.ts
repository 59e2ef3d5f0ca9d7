/**
 * The backend side of the xenbus handshake, written once for every split driver's backend
 * (myrback, netback): XenbusBackend walks one device's states (advertise features and go
 * InitWait, gather the frontend's keys, Connected, close), and BackendDeviceWatcher follows
 * the toolstack's device directories and the domains behind them.
 */

import { type DomId, XenbusState } from "../abi.js";
import { type XenStoreClient, XenStoreError } from "../xenstore.js";
import {
  backendPath,
  checkKeys,
  DEFAULT_XENBUS_TIMEOUT_MS,
  onXenbusState,
  readPeer,
  readXenbusState,
  switchXenbusState,
  waitForXenbusState,
  XenbusError,
} from "./state.js";

export class XenbusBackend {
  /** This device's directory, /local/domain/<back>/backend/<type>/<front>/<devid>. */
  readonly path: string;

  constructor(
    readonly client: XenStoreClient,
    readonly type: string,
    readonly frontDom: DomId,
    readonly devid: number,
  ) {
    this.path = backendPath(client.domid, type, frontDom, devid);
  }

  /** The frontend directory and domain, from the `frontend` and `frontend-id` keys. */
  readFrontend(): Promise<{ path: string; id: DomId }> {
    return readPeer(this.client, this.path, "frontend", "frontend-id");
  }

  state(): Promise<XenbusState> {
    return readXenbusState(this.client, `${this.path}/state`);
  }

  /** Publishes the features and goes InitWait, in one transaction. */
  async advertise(features: Record<string, string | number>): Promise<void> {
    const entries = checkKeys(features, this.path);
    await this.client.transaction(async (tx) => {
      if (!(await tx.exists(`${this.path}/state`))) {
        throw new XenbusError("ENOENT", this.path, `${this.path} is gone; the toolstack removed the device`);
      }
      for (const [k, v] of entries) await tx.write(`${this.path}/${k}`, v);
      await tx.write(`${this.path}/state`, String(XenbusState.InitWait));
    });
  }

  async waitForFrontendState(
    states: readonly XenbusState[],
    timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS,
    failOn: readonly XenbusState[] = [],
  ): Promise<XenbusState> {
    const { path } = await this.readFrontend();
    return waitForXenbusState(this.client, `${path}/state`, states, timeoutMs, { who: "frontend", failOn });
  }

  /** Waits for the frontend to be Initialised (or Connected), then reads `keys` from its directory. */
  async gather(
    keys: readonly string[],
    timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS,
  ): Promise<Record<string, string>> {
    // Unknown: the frontend's state node is gone (the toolstack wrote it before starting the
    // backend), so its domain is: fail now rather than hold a watch on it until the timeout.
    await this.waitForFrontendState([XenbusState.Initialised, XenbusState.Connected], timeoutMs, [
      XenbusState.Closing,
      XenbusState.Closed,
      XenbusState.Unknown,
    ]);
    const { path } = await this.readFrontend();
    return this.client.transaction(async (tx) => {
      const out: Record<string, string> = {};
      for (const k of keys) {
        const v = await tx.tryRead(`${path}/${k}`);
        if (v === undefined) {
          throw new XenbusError(
            "ENOENT",
            `${path}/${k}`,
            `frontend ${path} did not publish ${JSON.stringify(k)}, which the ${this.type} backend needs; the frontend must write it before switching to Initialised`,
          );
        }
        out[k] = v;
      }
      return out;
    });
  }

  switchState(state: XenbusState): Promise<boolean> {
    return switchXenbusState(this.client, this.path, state);
  }

  /** advertise, gather, Connected; returns the gathered keys. */
  async connect(
    features: Record<string, string | number>,
    keys: readonly string[],
    timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS,
  ): Promise<Record<string, string>> {
    await this.advertise(features);
    const gathered = await this.gather(keys, timeoutMs);
    await this.switchState(XenbusState.Connected);
    return gathered;
  }

  /** Follows the frontend's state (Closing/Closed, or Unknown when its directory vanished). */
  async onFrontendState(cb: (state: XenbusState) => void): Promise<() => Promise<void>> {
    const { path } = await this.readFrontend();
    return onXenbusState(this.client, `${path}/state`, cb);
  }

  /** Closing, wait for the frontend to close (or vanish), Closed. */
  async close(timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS): Promise<void> {
    await this.switchState(XenbusState.Closing);
    await this.waitForFrontendState(
      [XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown],
      timeoutMs,
    );
    await this.switchState(XenbusState.Closed);
  }
}

/** A device a backend serves, as BackendDeviceWatcher sees it. */
export interface WatchedDevice {
  readonly key: string;
  readonly domid: DomId;
  readonly state: string;
}

export interface BackendDeviceHooks<D extends WatchedDevice> {
  /** The devices being served now. */
  devices(): Iterable<D>;
  /** A device directory appeared (`key` = "domid/devid"): start serving it. */
  add(domid: DomId, devid: number, key: string): Promise<void>;
  /** The toolstack removed the device: tear it down and forget it. */
  removed(device: D, why: string): Promise<void>;
  /** Its domain is gone while its directory remains: tear it down. */
  domainGone(device: D, why: string): Promise<void>;
  log(message: string): void;
}

/**
 * A backend's view of the toolstack: watches backend/<type> and @releaseDomain, and on every
 * change walks the device directories (one walk at a time; a change during a walk asks for
 * one more) to start new devices and tear down those whose directory or domain vanished —
 * what every split driver's backend (myrback, netback) needs, written once.
 */
export class BackendDeviceWatcher<D extends WatchedDevice> {
  readonly root: string;
  private readonly unwatchers: (() => Promise<void>)[] = [];
  private walking: Promise<void> = Promise.resolve();
  private queued = false;
  private again = false;
  private stopped = false;

  constructor(
    private readonly client: XenStoreClient,
    deviceType: string,
    private readonly hooks: BackendDeviceHooks<D>,
    backDom: DomId = 0,
  ) {
    this.root = `/local/domain/${backDom}/backend/${deviceType}`;
  }

  async start(): Promise<void> {
    this.unwatchers.push(await this.client.watch(this.root, () => this.schedule()));
    this.unwatchers.push(await this.client.watch("@releaseDomain", () => this.schedule()));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const u of this.unwatchers.splice(0)) await u().catch(() => undefined);
  }

  private schedule(): void {
    if (this.stopped) return;
    if (this.queued) {
      this.again = true;
      return;
    }
    this.queued = true;
    this.walking = this.walking.then(async () => {
      do {
        this.again = false;
        await this.walk().catch((e: unknown) =>
          this.hooks.log(`scanning ${this.root} failed: ${(e as Error).message}`),
        );
      } while (this.again && !this.stopped);
      this.queued = false;
    });
  }

  private async list(path: string): Promise<string[]> {
    try {
      return await this.client.directory(path);
    } catch (e) {
      if (XenStoreError.is(e, "ENOENT")) return [];
      throw e;
    }
  }

  /** Finds new device directories, and devices whose directory or domain vanished. */
  private async walk(): Promise<void> {
    const present = new Set<string>();
    const known = new Set([...this.hooks.devices()].map((d) => d.key));
    for (const d of await this.list(this.root)) {
      if (!/^\d+$/.test(d)) continue;
      for (const devid of await this.list(`${this.root}/${d}`)) {
        if (!/^\d+$/.test(devid)) continue;
        const key = `${d}/${devid}`;
        present.add(key);
        if (!known.has(key)) await this.hooks.add(Number(d), Number(devid), key);
      }
    }
    for (const dev of [...this.hooks.devices()]) {
      if (!present.has(dev.key)) await this.hooks.removed(dev, "the toolstack removed the device");
      else if (dev.state !== "closed" && !(await this.client.exists(`/local/domain/${dev.domid}`)))
        await this.hooks.domainGone(dev, `domain ${dev.domid} is gone`);
    }
  }
}

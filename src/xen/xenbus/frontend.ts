/**
 * The frontend side of the xenbus handshake, for frontends that run on the event loop
 * (watches): wait for the backend's InitWait, read its features, publish the transport keys
 * and go Initialised, wait for Connected; and the closing walk. The synchronous frontends
 * (myrifront, netfront) walk the same states in xenbus-sync.ts.
 */

import { type DomId, XenbusState } from "../abi.js";
import type { XenStoreClient } from "../xenstore.js";
import {
  BACKEND_BOOKKEEPING,
  checkKeys,
  DEFAULT_XENBUS_TIMEOUT_MS,
  frontendPath,
  onXenbusState,
  readPeer,
  readXenbusState,
  switchXenbusState,
  waitForXenbusState,
  XenbusError,
} from "./state.js";

export type FrontendKeys = Record<string, string | number>;

export class XenbusFrontend {
  /** This device's directory, /local/domain/<front>/device/<type>/<devid>. */
  readonly path: string;

  constructor(
    readonly client: XenStoreClient,
    readonly type: string,
    readonly devid: number,
  ) {
    this.path = frontendPath(client.domid, type, devid);
  }

  /** The backend directory and domain, from the `backend` and `backend-id` keys. */
  readBackend(): Promise<{ path: string; id: DomId }> {
    return readPeer(this.client, this.path, "backend", "backend-id");
  }

  /** Everything the backend published in its directory except the bookkeeping keys. */
  async backendFeatures(): Promise<Record<string, string>> {
    const { path } = await this.readBackend();
    return this.client.transaction(async (tx) => {
      const out: Record<string, string> = {};
      for (const name of await tx.directory(path)) {
        if (BACKEND_BOOKKEEPING.has(name)) continue;
        out[name] = await tx.read(`${path}/${name}`);
      }
      return out;
    });
  }

  state(): Promise<XenbusState> {
    return readXenbusState(this.client, `${this.path}/state`);
  }

  async waitForBackendState(
    states: readonly XenbusState[],
    timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS,
    failOn: readonly XenbusState[] = [],
  ): Promise<XenbusState> {
    const { path } = await this.readBackend();
    return waitForXenbusState(this.client, `${path}/state`, states, timeoutMs, { who: "backend", failOn });
  }

  /** Follows the backend's state (e.g. to start teardown when it goes Closing). */
  async onBackendState(cb: (state: XenbusState) => void): Promise<() => Promise<void>> {
    const { path } = await this.readBackend();
    return onXenbusState(this.client, `${path}/state`, cb);
  }

  /** Writes the transport keys and the next state in one transaction, retried on conflict. */
  async publish(keys: FrontendKeys, nextState: XenbusState = XenbusState.Initialised): Promise<void> {
    const entries = checkKeys(keys, this.path);
    await this.client.transaction(async (tx) => {
      if (!(await tx.exists(`${this.path}/state`))) {
        throw new XenbusError("ENOENT", this.path, `${this.path} is gone; the toolstack removed the device`);
      }
      for (const [k, v] of entries) await tx.write(`${this.path}/${k}`, v);
      await tx.write(`${this.path}/state`, String(nextState));
    });
  }

  switchState(state: XenbusState): Promise<boolean> {
    return switchXenbusState(this.client, this.path, state);
  }

  /**
   * The whole startup: wait for the backend's InitWait, read its features, publish the keys
   * (given, or computed from the features, e.g. after allocating the ring), go Initialised,
   * wait for the backend's Connected, go Connected. Returns the backend's features.
   */
  async connect(
    keys: FrontendKeys | ((features: Record<string, string>) => FrontendKeys | Promise<FrontendKeys>),
    timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS,
  ): Promise<Record<string, string>> {
    const closing = [XenbusState.Closing, XenbusState.Closed];
    await this.waitForBackendState([XenbusState.InitWait], timeoutMs, closing);
    const features = await this.backendFeatures();
    await this.publish(typeof keys === "function" ? await keys(features) : keys, XenbusState.Initialised);
    await this.waitForBackendState([XenbusState.Connected], timeoutMs, closing);
    await this.switchState(XenbusState.Connected);
    return features;
  }

  /** Closing, wait for the backend to close (or vanish), Closed. */
  async close(timeoutMs = DEFAULT_XENBUS_TIMEOUT_MS): Promise<void> {
    await this.switchState(XenbusState.Closing);
    await this.waitForBackendState([XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown], timeoutMs);
    await this.switchState(XenbusState.Closed);
  }
}

/**
 * xenbus: the frontend/backend handshake of Xen split drivers, over XenStore. The toolstack
 * creates both device directories (createDevice); then each side walks the io/xenbus.h states
 * by writing its `state` key (the number as a string, as Linux xenbus_switch_state does) and
 * follows the other side's with a watch:
 *
 *   backend:  Initialising → InitWait (features published) ........ → Connected
 *   frontend: Initialising ........ → Initialised (ring-ref, event-channel ...) ... → Connected
 *   teardown: Closing → Closed, on both sides.
 */

import { type DomId, type ErrnoName, XenbusState, xenbusStateName } from "./abi.js";
import { getDomainPath, type XenStoreClient, XenStoreError, type XenStorePerm } from "./xenstore.js";

export const DEFAULT_XENBUS_TIMEOUT_MS = 10_000;

export class XenbusError extends Error {
  override readonly name = "XenbusError";
  constructor(
    readonly errno: ErrnoName,
    readonly path: string,
    detail: string,
  ) {
    super(`${errno}: ${detail}`);
  }
}

export interface XenbusDeviceSpec {
  /** Device class, e.g. "vif", "myri". */
  type: string;
  frontDom: DomId;
  backDom: DomId;
  devid: number;
}

function checkType(type: unknown): string {
  if (typeof type !== "string" || !/^[A-Za-z0-9_-]+$/.test(type)) {
    throw new XenbusError(
      "EINVAL",
      "",
      `device type must be a name like "vif" (letters, digits, _ and -), got ${JSON.stringify(type)}`,
    );
  }
  return type;
}

function checkId(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
    throw new XenbusError("EINVAL", "", `${what} must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** /local/domain/<front>/device/<type>/<devid> */
export function frontendPath(frontDom: DomId, type: string, devid: number): string {
  return `${getDomainPath(checkId(frontDom, "frontend domid"))}/device/${checkType(type)}/${checkId(devid, "devid")}`;
}

/** /local/domain/<back>/backend/<type>/<front>/<devid> */
export function backendPath(backDom: DomId, type: string, frontDom: DomId, devid: number): string {
  return `${getDomainPath(checkId(backDom, "backend domid"))}/backend/${checkType(type)}/${checkId(frontDom, "frontend domid")}/${checkId(devid, "devid")}`;
}

/** Parses a `state` value as Linux xenbus_read_driver_state does: missing or garbage is Unknown. */
export function parseXenbusState(value: string | undefined): XenbusState {
  if (value === undefined || !/^\d+$/.test(value)) return XenbusState.Unknown;
  const n = Number(value);
  return n >= XenbusState.Initialising && n <= XenbusState.Reconfigured
    ? (n as XenbusState)
    : XenbusState.Unknown;
}

function stateLabel(s: XenbusState): string {
  return `${xenbusStateName(s)}(${s})`;
}

interface StateReading {
  state: XenbusState;
  /** For error messages: what was actually there. */
  seen: string;
}

async function readStateDetailed(client: XenStoreClient, statePath: string): Promise<StateReading> {
  try {
    const v = await client.tryRead(statePath);
    if (v === undefined) return { state: XenbusState.Unknown, seen: "no state node" };
    const state = parseXenbusState(v);
    return {
      state,
      seen: state === XenbusState.Unknown ? `invalid value ${JSON.stringify(v)}` : stateLabel(state),
    };
  } catch (e) {
    // A backend directory that does not exist yet usually sits under a parent the frontend
    // may not read, which XenStore reports as EACCES, not ENOENT.
    if (XenStoreError.is(e, "EACCES")) {
      return {
        state: XenbusState.Unknown,
        seen: `not readable by domain ${client.domid} (missing, or permission denied)`,
      };
    }
    throw e;
  }
}

/** The state at `statePath`; Unknown when it is missing or unreadable. */
export async function readXenbusState(client: XenStoreClient, statePath: string): Promise<XenbusState> {
  return (await readStateDetailed(client, statePath)).state;
}

export interface WaitForStateOptions {
  /** States that end the wait with an error (the peer is going away). */
  failOn?: readonly XenbusState[];
  /** Whose state this is, for messages ("backend", "frontend"). */
  who?: string;
}

/** Resolves with the state at `statePath` once it is one of `want`; watches, never polls. */
export function waitForXenbusState(
  client: XenStoreClient,
  statePath: string,
  want: readonly XenbusState[],
  timeoutMs: number,
  opts: WaitForStateOptions = {},
): Promise<XenbusState> {
  const who = opts.who ?? "peer";
  const wanted = want.map(stateLabel).join(" or ");
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
    return Promise.reject(
      new XenbusError("EINVAL", statePath, `timeout must be a non-negative number of ms, got ${timeoutMs}`),
    );
  }
  return new Promise<XenbusState>((resolve, reject) => {
    let done = false;
    let lastSeen = "nothing (no watch event yet)";
    let chain = Promise.resolve();
    const finish = (err: Error | undefined, state?: XenbusState) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      void unwatch.then((u) => u()).catch(() => undefined);
      if (err) reject(err);
      else resolve(state as XenbusState);
    };
    const timer = setTimeout(
      () =>
        finish(
          new XenbusError(
            "ETIMEDOUT",
            statePath,
            `timed out after ${timeoutMs} ms waiting for the ${who} state ${statePath} to become ${wanted}; last seen: ${lastSeen}`,
          ),
        ),
      timeoutMs,
    );
    const check = async () => {
      if (done) return;
      const r = await readStateDetailed(client, statePath);
      lastSeen = r.seen;
      if (want.includes(r.state)) finish(undefined, r.state);
      else if (opts.failOn?.includes(r.state)) {
        finish(
          new XenbusError(
            "ECONNRESET",
            statePath,
            `the ${who} went to ${stateLabel(r.state)} (${statePath}) while waiting for ${wanted}`,
          ),
        );
      }
    };
    // Reads are chained so that states are examined in the order the events arrived.
    const unwatch = client.watch(statePath, () => {
      chain = chain.then(check).catch((e: unknown) => finish(e instanceof Error ? e : new Error(String(e))));
    });
    unwatch.catch((e: unknown) => finish(e instanceof Error ? e : new Error(String(e))));
  });
}

/**
 * Calls `cb` with each new state at `statePath` (Unknown when it disappears), starting with
 * the current one. Resolves to an unwatch function.
 */
export async function onXenbusState(
  client: XenStoreClient,
  statePath: string,
  cb: (state: XenbusState) => void,
): Promise<() => Promise<void>> {
  let last: XenbusState | undefined;
  let chain = Promise.resolve();
  return client.watch(statePath, () => {
    chain = chain
      .then(async () => {
        const s = await readXenbusState(client, statePath);
        if (s === last) return;
        last = s;
        cb(s);
      })
      .catch(() => undefined);
  });
}

/**
 * Writes `<dir>/state` unless it already holds `state`, or the directory is gone (like Linux
 * xenbus_switch_state: a torn-down device is not resurrected). Returns whether it wrote.
 */
export async function switchXenbusState(
  client: XenStoreClient,
  dir: string,
  state: XenbusState,
): Promise<boolean> {
  if (!Number.isInteger(state) || state < XenbusState.Unknown || state > XenbusState.Reconfigured) {
    throw new XenbusError("EINVAL", `${dir}/state`, `${state} is not a xenbus state (0..8, see io/xenbus.h)`);
  }
  return client.transaction(async (tx) => {
    const cur = await tx.tryRead(`${dir}/state`);
    if (cur === undefined || cur === String(state)) return false;
    await tx.write(`${dir}/state`, String(state));
    return true;
  });
}

// ---- the toolstack's part -------------------------------------------------------------------

/**
 * What the toolstack (dom0) does to give `frontDom` a device served by `backDom`: both
 * directories in state Initialising, the cross references, `online` = 1, and perms so that
 * each side owns its own directory and may read the other's.
 */
export async function createDevice(
  toolstack: XenStoreClient,
  spec: XenbusDeviceSpec,
): Promise<{ frontPath: string; backPath: string }> {
  const frontPath = frontendPath(spec.frontDom, spec.type, spec.devid);
  const backPath = backendPath(spec.backDom, spec.type, spec.frontDom, spec.devid);
  const frontPerms: XenStorePerm[] = [
    { dom: spec.frontDom, access: "n" },
    { dom: spec.backDom, access: "r" },
  ];
  const backPerms: XenStorePerm[] = [
    { dom: spec.backDom, access: "n" },
    { dom: spec.frontDom, access: "r" },
  ];
  await toolstack.transaction(async (tx) => {
    for (const p of [frontPath, backPath]) {
      if (await tx.exists(p)) {
        throw new XenbusError(
          "EEXIST",
          p,
          `${spec.type} device ${spec.devid} of domain ${spec.frontDom} already exists at ${p}; destroy it first`,
        );
      }
    }
    // Perms go on the directory first: keys written below it by the toolstack inherit them.
    await tx.mkdir(frontPath);
    await tx.setPerms(frontPath, frontPerms);
    await tx.write(`${frontPath}/backend`, backPath);
    await tx.write(`${frontPath}/backend-id`, String(spec.backDom));
    await tx.write(`${frontPath}/state`, String(XenbusState.Initialising));
    await tx.mkdir(backPath);
    await tx.setPerms(backPath, backPerms);
    await tx.write(`${backPath}/frontend`, frontPath);
    await tx.write(`${backPath}/frontend-id`, String(spec.frontDom));
    await tx.write(`${backPath}/online`, "1");
    await tx.write(`${backPath}/state`, String(XenbusState.Initialising));
  });
  return { frontPath, backPath };
}

/** Removes both directories of a device (the toolstack's last step after Closed). */
export async function destroyDevice(toolstack: XenStoreClient, spec: XenbusDeviceSpec): Promise<void> {
  const frontPath = frontendPath(spec.frontDom, spec.type, spec.devid);
  const backPath = backendPath(spec.backDom, spec.type, spec.frontDom, spec.devid);
  // The backend's per-domain directory goes too once empty: a host that runs for weeks must
  // not keep a node for every domain it ever ran.
  const perDomain = backPath.slice(0, backPath.lastIndexOf("/"));
  await toolstack.transaction(async (tx) => {
    for (const p of [frontPath, backPath]) if (await tx.exists(p)) await tx.rm(p);
    if ((await tx.exists(perDomain)) && (await tx.directory(perDomain)).length === 0) await tx.rm(perDomain);
  });
}

function checkKeys(keys: Record<string, string | number>, dir: string): Array<[string, string]> {
  return Object.entries(keys).map(([k, v]) => {
    if (k === "" || k.startsWith("/") || k === "state") {
      throw new XenbusError(
        "EINVAL",
        dir,
        `key ${JSON.stringify(k)} cannot be published: keys are relative names under ${dir}, and state is written by the state machine`,
      );
    }
    if (typeof v !== "string" && !(typeof v === "number" && Number.isFinite(v))) {
      throw new XenbusError("EINVAL", `${dir}/${k}`, `value of ${k} must be a string or a finite number`);
    }
    return [k, String(v)];
  });
}

async function readPeer(client: XenStoreClient, dir: string, key: string, idKey: string) {
  const path = await client.tryRead(`${dir}/${key}`);
  const id = await client.tryRead(`${dir}/${idKey}`);
  if (path === undefined || id === undefined || !/^\d+$/.test(id) || !path.startsWith("/")) {
    throw new XenbusError(
      "ENOENT",
      dir,
      `${dir} has no valid ${key}/${idKey} keys (got ${JSON.stringify(path)}, ${JSON.stringify(id)}); the toolstack must create the device first (createDevice)`,
    );
  }
  return { path, id: Number(id) };
}

// ---- frontend ---------------------------------------------------------------------------------

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

const BACKEND_BOOKKEEPING = new Set(["state", "frontend", "frontend-id", "online"]);

// ---- backend ----------------------------------------------------------------------------------

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
    await this.waitForFrontendState([XenbusState.Initialised, XenbusState.Connected], timeoutMs, [
      XenbusState.Closing,
      XenbusState.Closed,
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

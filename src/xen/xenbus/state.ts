/**
 * xenbus's common ground, what both sides and the toolstack use: device paths, the `state`
 * key read as Linux xenbus_read_driver_state reads it, waiting for and following a peer's
 * state (by watch, never by polling), switching one's own, and the checks on published keys.
 * The state machine itself is walked by frontend.ts and backend.ts.
 */

import { type DomId, type ErrnoName, XenbusState, xenbusStateName } from "../abi.js";
import { getDomainPath, type XenStoreClient, XenStoreError } from "../xenstore.js";

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

export function checkKeys(keys: Record<string, string | number>, dir: string): Array<[string, string]> {
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

export async function readPeer(client: XenStoreClient, dir: string, key: string, idKey: string) {
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

/** Keys of a backend directory that are bookkeeping, not features the backend offers. */
export const BACKEND_BOOKKEEPING = new Set(["state", "frontend", "frontend-id", "online"]);

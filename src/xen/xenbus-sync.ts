/**
 * The xenbus frontend of the synchronous frontends (myrifront, netfront), written once:
 * SyncXenbusFrontend walks the handshake — find the device and its backend, wait for the
 * backend's InitWait and read its features, let the driver grant its ring(s), allocate the
 * event channel, write the nodes and go Initialised, wait for Connected — and the closing
 * walk. SyncXenbus below it does the XenStore steps through Guest.xenstoreSync. Peer states
 * are polled with short, growing naps instead of watched: a watch needs the event loop,
 * which a synchronous mx_init does not give back.
 */
import { DOMID_MAX, type DomId, XenbusState, xenbusStateName } from "./abi.js";
import type { Guest } from "./guest/guest.js";
import { BACKEND_BOOKKEEPING, frontendPath, parseXenbusState } from "./xenbus/state.js";
import { XenStoreError, type XenStoreRequest } from "./xenstore.js";

export class SyncXenbus {
  private readonly nap = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    private readonly guest: Guest,
    private readonly timeoutMs: number,
  ) {}

  private call(req: XenStoreRequest): unknown {
    return this.guest.xenstoreSync(req, this.timeoutMs);
  }

  tryRead(path: string, tx?: number): string | undefined {
    try {
      return this.call({ op: "read", path, tx }) as string;
    } catch (e) {
      // A directory that does not exist yet may sit under one we cannot read: EACCES.
      if (XenStoreError.is(e, "ENOENT") || XenStoreError.is(e, "EACCES")) return undefined;
      throw e;
    }
  }

  write(path: string, value: string, tx?: number): void {
    this.call({ op: "write", path, value, tx });
  }

  directory(path: string): string[] {
    return this.call({ op: "directory", path }) as string[];
  }

  transaction(body: (tx: number) => void): void {
    for (let attempt = 0; ; attempt++) {
      const tx = this.call({ op: "txStart" }) as number;
      try {
        body(tx);
      } catch (e) {
        try {
          this.call({ op: "txEnd", tx, commit: false });
        } catch {
          // the transaction is gone either way
        }
        throw e;
      }
      try {
        this.call({ op: "txEnd", tx, commit: true });
        return;
      } catch (e) {
        if (!XenStoreError.is(e, "EAGAIN") || attempt >= 16) throw e;
      }
    }
  }

  /** Writes `<dir>/state` unless the directory is gone (a torn-down device is not resurrected). */
  switchState(dir: string, state: XenbusState): void {
    this.transaction((tx) => {
      const cur = this.tryRead(`${dir}/state`, tx);
      if (cur !== undefined && cur !== String(state)) this.write(`${dir}/state`, String(state), tx);
    });
  }

  /** Polls `<dir>/state` until it is one of `want`; throws if it becomes one of `failOn` or time runs out. */
  waitState(
    dir: string,
    want: readonly XenbusState[],
    failOn: readonly XenbusState[],
    who: string,
  ): XenbusState {
    const deadline = performance.now() + this.timeoutMs;
    let napMs = 0.1;
    for (;;) {
      const raw = this.tryRead(`${dir}/state`);
      const s = parseXenbusState(raw);
      if (want.includes(s)) return s;
      if (failOn.includes(s)) throw new Error(`the ${who} at ${dir} went ${xenbusStateName(s)}`);
      if (performance.now() > deadline)
        throw new Error(
          `timed out after ${this.timeoutMs} ms waiting for the ${who} state ${dir}/state to become ` +
            `${want.map(xenbusStateName).join(" or ")}; last seen: ${raw === undefined ? "nothing" : xenbusStateName(s)}`,
        );
      Atomics.wait(this.nap, 0, 0, napMs);
      napMs = Math.min(napMs * 2, 5);
    }
  }
}

/** States of a device that is there to be used (not on its way out). */
const LIVE_STATES: readonly XenbusState[] = [
  XenbusState.Initialising,
  XenbusState.InitWait,
  XenbusState.Initialised,
  XenbusState.Connected,
];
const CLOSED_STATES: readonly XenbusState[] = [XenbusState.Closing, XenbusState.Closed];

/**
 * The step of the handshake that failed, so that each driver words it for its users:
 * "in-use" (another frontend has the device), "device" (no usable device directory),
 * "backend" (the device names no backend), "connect" (the walk with the backend failed).
 */
export type FrontendHandshakeStep = "in-use" | "device" | "backend" | "connect";

export class FrontendHandshakeError extends Error {
  override readonly name = "FrontendHandshakeError";
  constructor(
    readonly step: FrontendHandshakeStep,
    message: string,
  ) {
    super(message);
  }
}

export interface SyncFrontendOptions {
  /** Refuse a device another frontend has Initialised or Connected (netfront: one per vif). */
  exclusive?: boolean;
}

/**
 * One device of a synchronous frontend, from finding it to Closed:
 *
 *   open()     the device directory (re-initialised if this guest closed it before, as Xen
 *              frontends do: the backend starts over from InitWait), and the backend it names;
 *   connect()  the backend's InitWait and features; the driver's set-up (checks the features,
 *              grants its ring(s), returns the keys to publish); the event channel; the keys,
 *              `event-channel` and Initialised in one transaction; the backend's Connected;
 *              Connected;
 *   close()    Closing, the backend's Closing or Closed (or its directory gone), Closed.
 */
export class SyncXenbusFrontend {
  private constructor(
    private readonly guest: Guest,
    readonly xs: SyncXenbus,
    /** device/<type>/<devid> */
    readonly path: string,
    /** The backend's directory and domain. */
    readonly backPath: string,
    readonly backId: DomId,
    /** What the device is, for messages ("myri", "vif"). */
    readonly type: string,
    /** This guest closed the device before and re-initialised it. */
    private readonly reopening: boolean,
  ) {}

  /** Finds device/<type>/<devid> and its backend; throws FrontendHandshakeError (in-use, device, backend). */
  static open(
    guest: Guest,
    type: string,
    devid: number,
    timeoutMs: number,
    opts: SyncFrontendOptions = {},
  ): SyncXenbusFrontend {
    const xs = new SyncXenbus(guest, timeoutMs);
    const path = frontendPath(guest.domid, type, devid);
    const current = parseXenbusState(xs.tryRead(`${path}/state`));
    if (opts.exclusive && (current === XenbusState.Initialised || current === XenbusState.Connected))
      throw new FrontendHandshakeError("in-use", `${path} is already ${xenbusStateName(current)}`);
    const reopening = current === XenbusState.Closed;
    try {
      if (reopening) xs.switchState(path, XenbusState.Initialising);
      xs.waitState(path, LIVE_STATES, CLOSED_STATES, `${type} device`);
    } catch (e) {
      throw new FrontendHandshakeError("device", (e as Error).message);
    }
    const backPath = xs.tryRead(`${path}/backend`);
    const backIdText = xs.tryRead(`${path}/backend-id`);
    if (backPath === undefined || backIdText === undefined || !/^\d+$/.test(backIdText))
      throw new FrontendHandshakeError(
        "backend",
        `${path} names no backend (backend, backend-id); the toolstack must create the device`,
      );
    const backId = Number(backIdText);
    if (backId > DOMID_MAX)
      throw new FrontendHandshakeError("backend", `${path}/backend-id ${backId} is not a domain id`);
    return new SyncXenbusFrontend(guest, xs, path, backPath, backId, type, reopening);
  }

  /**
   * Walks the device to Connected. `setUp` gets the backend's features: it checks them,
   * grants what the backend must map and returns the keys to publish (the event channel's
   * is added here). Returns the features and the event channel's port; on failure the port
   * is closed again (the driver ends its own grants) and the error says why.
   */
  connect(setUp: (features: Record<string, string>) => Record<string, string>): {
    features: Record<string, string>;
    port: number;
  } {
    const { xs, path, backPath, type } = this;
    let portNo: number | undefined;
    try {
      // While re-initialising, the backend may still be finishing its own Closed.
      xs.waitState(backPath, [XenbusState.InitWait], this.reopening ? [] : CLOSED_STATES, `${type} backend`);
      const features: Record<string, string> = {};
      for (const name of xs.directory(backPath)) {
        if (BACKEND_BOOKKEEPING.has(name)) continue;
        const v = xs.tryRead(`${backPath}/${name}`);
        if (v !== undefined) features[name] = v;
      }
      const keys = setUp(features);
      const port = this.guest.evtchn.allocUnbound(this.backId);
      portNo = port;
      xs.transaction((tx) => {
        if (xs.tryRead(`${path}/state`, tx) === undefined) throw new Error(`${path} is gone`);
        for (const [k, v] of Object.entries(keys)) xs.write(`${path}/${k}`, v, tx);
        xs.write(`${path}/event-channel`, String(port), tx);
        xs.write(`${path}/state`, String(XenbusState.Initialised), tx);
      });
      xs.waitState(backPath, [XenbusState.Connected], CLOSED_STATES, `${type} backend`);
      xs.switchState(path, XenbusState.Connected);
      return { features, port };
    } catch (e) {
      if (portNo !== undefined) {
        try {
          this.guest.evtchn.close(portNo);
        } catch {
          // already closed
        }
      }
      throw new FrontendHandshakeError("connect", (e as Error).message);
    }
  }

  /** Walks the device to Closed; a backend or device that is gone already leaves nothing to walk. */
  close(): void {
    const xs = this.xs;
    try {
      xs.switchState(this.path, XenbusState.Closing);
      xs.waitState(
        this.backPath,
        [XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown],
        [],
        `${this.type} backend`,
      );
      xs.switchState(this.path, XenbusState.Closed);
    } catch {
      // The backend or the device is gone already: nothing left to walk.
    }
  }
}

/**
 * The MX API's entry: `Mx.init(guest)` picks the driver for where the program runs (a guest
 * VM: myrifront, the bypass path; a native process: the driver domain's MX driver) and opens
 * endpoints on it. Everything after that is MxEndpoint, the same code on every path.
 *
 * In a guest this is Solarflare's accelerator model: the guest's netfront (the split path,
 * MX over Ethernet) is always there, and myrifront is a plug-in that accelerates it. When the
 * fast path cannot be had — the host's policy gives the guest no myri device, the backend
 * refuses, the NIC is out of endpoint contexts — the library says why (`fallbackReason`) and
 * the endpoint runs on the split path; `MxEndpoint.switchPath` moves a live endpoint between
 * the two.
 *
 * The 64-bit match value is passed as two 32-bit words (hi, lo) on every hot call, as the
 * wire carries it; `splitMatch`/`joinMatch` convert from and to bigint.
 */

import type { MxDriver } from "../myrixen/driver-abi.js";
import { Netfront } from "../netfront/netfront.js";
import type { Guest } from "../xen/guest/guest.js";
import { MX_ANY_ENDPOINT, MxError } from "./codes.js";
import { type EndpointOptions, MxEndpoint } from "./endpoint.js";
import { EtherHub } from "./ether.js";
import { openDriver } from "./open-driver.js";
import { SplitDriver } from "./split-driver.js";

export interface MxInitOptions {
  /**
   * "auto" (default): the fast path when the host offers it, else the split path.
   * "split": the split path only (MX over Ethernet through netfront and the driver domain).
   * "bypass": the fast path or an error (no fallback).
   */
  path?: "auto" | "split" | "bypass";
  /** Open the guest's netfront (default true): the split path, the fallback and switchPath need it. */
  ether?: boolean;
}

export class Mx {
  private readonly endpoints: MxEndpoint[] = [];
  private finalized = false;
  private split: SplitDriver | undefined;

  private constructor(
    readonly guest: Guest,
    readonly driver: MxDriver,
    /** The guest's MX-over-Ethernet hub (its netfront), if it has one. */
    readonly ether: EtherHub | undefined,
    /** Why this library is on the split path although it asked for "auto", if it is. */
    readonly fallbackReason: string | undefined,
  ) {}

  /**
   * mx_init: binds the MX library to this domain's NIC access — myrifront (with netfront
   * beside it) in a guest, the native driver in a process of the driver domain — or to the
   * driver given.
   */
  static init(guest: Guest, arg?: MxDriver | MxInitOptions): Mx {
    if (arg !== undefined && "openEndpoint" in arg) return new Mx(guest, arg, undefined, undefined);
    // mx_init's MX_ALREADY_INITIALIZED, at once: a second connect of the domain's vif and myri
    // device waited 10 s on XenStore for a device already connected, then failed naming neither.
    const live = initialised.get(guest);
    if (live !== undefined && !live.finalized)
      throw new MxError(
        "MX_ALREADY_INITIALIZED",
        "MX is already initialised in this domain (by Mx.init, or by MPI.init, which calls it): use that instance, or finalize() it before calling Mx.init again",
      );
    const mx = Mx.open(guest, arg);
    initialised.set(guest, mx);
    return mx;
  }

  private static open(guest: Guest, arg?: MxInitOptions): Mx {
    const opts = (arg ?? {}) as MxInitOptions;
    const want = opts.path ?? "auto";
    if (!["auto", "split", "bypass"].includes(want))
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        `path must be "auto", "split" or "bypass", got ${JSON.stringify(want)}`,
      );
    if (guest.native) {
      if (want === "split")
        throw new MxError(
          "MX_NO_DEV",
          "the split path runs in guests (netfront); a native process has no vif",
        );
      return new Mx(guest, openDriver(guest), undefined, undefined);
    }
    let hub: EtherHub | undefined;
    let etherError = "";
    if (opts.ether !== false || want === "split") {
      try {
        hub = new EtherHub(Netfront.connect(guest));
      } catch (e) {
        etherError = (e as Error).message;
      }
    }
    if (want === "split") {
      if (!hub) throw new MxError("MX_NO_DEV", `the split path needs the guest's vif: ${etherError}`);
      return new Mx(guest, new SplitDriver(guest, hub.nicId, "asked for"), hub, undefined);
    }
    // The toolstack creates the myri device before the vif: with the vif up and no myri
    // device, the host's policy gives this guest no fast path.
    if (hub && want === "auto" && !hasMyriDevice(guest)) {
      const why = "the host gives this guest no fast path (no myri device: disabled by policy)";
      return new Mx(guest, new SplitDriver(guest, hub.nicId, why), hub, why);
    }
    try {
      return new Mx(guest, openDriver(guest), hub, undefined);
    } catch (e) {
      if (!hub || want === "bypass") throw e;
      const why = `the fast path failed: ${(e as Error).message}`;
      return new Mx(guest, new SplitDriver(guest, hub.nicId, why), hub, why);
    }
  }

  /** Which path this library's endpoints start on: "bypass", "native" or "split". */
  get path(): string {
    return this.driver.path;
  }

  /**
   * mx_open_endpoint (board 0). On the fast path, an endpoint the NIC or the backend cannot
   * give (out of contexts, over quota) opens on the split path instead, when the guest has
   * netfront and any endpoint id will do; `endpoint.fallbackReason` says why.
   */
  openEndpoint(opts: Partial<EndpointOptions> & { key: number }): MxEndpoint {
    if (this.finalized) throw new MxError("MX_NOT_INITIALIZED", "mx_finalize was called");
    const o: EndpointOptions = {
      endpointId: MX_ANY_ENDPOINT,
      memory: this.guest.memory.ram,
      ether: this.ether,
      ...opts,
    };
    let ep: MxEndpoint;
    try {
      ep = new MxEndpoint(this.driver, o);
      ep.fallbackReason = this.fallbackReason;
    } catch (e) {
      const fallback =
        this.ether !== undefined &&
        this.driver.path === "bypass" &&
        o.endpointId === MX_ANY_ENDPOINT &&
        e instanceof MxError &&
        (e.codeName === "MX_NO_RESOURCES" || e.codeName === "MX_BAD_ENDPOINT");
      if (!fallback) throw e;
      this.split ??= new SplitDriver(this.guest, this.ether!.nicId, "endpoint fallback");
      ep = new MxEndpoint(this.split, o);
      ep.fallbackReason = `the fast path refused the endpoint: ${(e as Error).message}`;
    }
    // Endpoints the program closed itself are let go of here: mx_finalize has nothing left
    // to close in them, and kept until then, a guest that opens and closes endpoints for
    // weeks held every one (its queues, its requests, on the split path its own window).
    let n = 0;
    for (const e of this.endpoints) if (!e.closed) this.endpoints[n++] = e;
    this.endpoints.length = n;
    this.endpoints.push(ep);
    return ep;
  }

  /** mx_finalize: closes every endpoint (their pending requests complete with an error status). */
  finalize(): void {
    if (this.finalized) return;
    for (const ep of this.endpoints) ep.close();
    this.driver.finalize();
    this.split?.finalize();
    (this.ether?.device as Netfront | undefined)?.close();
    this.finalized = true;
    if (initialised.get(this.guest) === this) initialised.delete(this.guest);
  }
}

/** Each domain's Mx from Mx.init, until finalize (mx_init once per process, as MX has it). */
const initialised = new WeakMap<Guest, Mx>();

function hasMyriDevice(guest: Guest): boolean {
  try {
    guest.xenstoreSync({ op: "read", path: `/local/domain/${guest.domid}/device/myri/0/state` }, 2000);
    return true;
  } catch {
    return false;
  }
}

/** A 64-bit match value as the (hi, lo) pair the API takes. */
export function splitMatch(match: bigint): [number, number] {
  if (match < 0n || match > 0xffffffffffffffffn)
    throw new RangeError(`match value ${match} is not a 64-bit unsigned value`);
  return [Number(match >> 32n), Number(match & 0xffffffffn)];
}

export function joinMatch(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** MX_MATCH_MASK_NONE: exact match on all 64 bits. */
export const MATCH_MASK_NONE = [0xffffffff, 0xffffffff] as const;

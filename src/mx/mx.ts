/**
 * The MX API's entry: `Mx.init(guest)` picks the driver for where the program runs (a guest
 * VM: myrifront, the bypass path; a native process: the driver domain's MX driver) and opens
 * endpoints on it. Everything after that is MxEndpoint, the same code on every path.
 *
 * The 64-bit match value is passed as two 32-bit words (hi, lo) on every hot call, as the
 * wire carries it; `splitMatch`/`joinMatch` convert from and to bigint.
 */

import type { Guest } from "../xen/guest/guest.js";
import { MX_ANY_ENDPOINT, MxError } from "./codes.js";
import type { MxDriver } from "./driver.js";
import { type EndpointOptions, MxEndpoint } from "./endpoint.js";
import { openDriver } from "./open-driver.js";

export class Mx {
  private readonly endpoints: MxEndpoint[] = [];
  private finalized = false;

  private constructor(
    readonly guest: Guest,
    readonly driver: MxDriver,
  ) {}

  /** mx_init: binds the MX library to this domain's NIC access (myrifront in a guest, the native driver in a process). */
  static init(guest: Guest, driver?: MxDriver): Mx {
    return new Mx(guest, driver ?? openDriver(guest));
  }

  /** Which path this process's endpoints use: "bypass" or "native". */
  get path(): string {
    return this.driver.path;
  }

  /** mx_open_endpoint (board 0). */
  openEndpoint(opts: Partial<EndpointOptions> & { key: number }): MxEndpoint {
    if (this.finalized) throw new MxError("MX_NOT_INITIALIZED", "mx_finalize was called");
    const ep = new MxEndpoint(this.driver, {
      endpointId: MX_ANY_ENDPOINT,
      memory: this.guest.memory.ram,
      ...opts,
    });
    this.endpoints.push(ep);
    return ep;
  }

  /** mx_finalize: closes every endpoint (their pending requests complete with an error status). */
  finalize(): void {
    if (this.finalized) return;
    for (const ep of this.endpoints) ep.close();
    this.driver.finalize();
    this.finalized = true;
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

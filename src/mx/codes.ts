/**
 * MX return codes (mx_return_t) with their names, and the error the MX API raises. Values
 * are those of myriexpress.h (MX_API 0x301), so an MX programmer reads them as-is. Status
 * codes (mx_status_code_t) are the NIC's and live in src/nic/status.ts.
 */
import { MxDriverError } from "../myrixen/driver-abi.js";

export const MxReturn = {
  MX_SUCCESS: 0,
  MX_BAD_BAD_BAD: 1,
  MX_FAILURE: 2,
  MX_ALREADY_INITIALIZED: 3,
  MX_NOT_INITIALIZED: 4,
  MX_NO_DEV: 5,
  MX_NO_DRIVER: 6,
  MX_NO_PERM: 7,
  MX_BOARD_UNKNOWN: 8,
  MX_BAD_ENDPOINT: 9,
  MX_BAD_SEG_LIST: 10,
  MX_BAD_SEG_MEM: 11,
  MX_BAD_SEG_CNT: 12,
  MX_BAD_REQUEST: 13,
  MX_BAD_MATCH_MASK: 14,
  MX_NO_RESOURCES: 15,
  MX_BAD_ADDR_LIST: 16,
  MX_BAD_ADDR_COUNT: 17,
  MX_BAD_ROOT: 18,
  MX_NOT_COMPLETED: 19,
  MX_BUSY: 20,
  MX_BAD_INFO_KEY: 21,
  MX_BAD_INFO_VAL: 22,
  MX_BAD_NIC: 23,
  MX_BAD_PARAM_LIST: 24,
  MX_BAD_PARAM_NAME: 25,
  MX_BAD_PARAM_VAL: 26,
  MX_BAD_HOSTNAME_ARGS: 27,
  MX_HOST_NOT_FOUND: 28,
  MX_REQUEST_PENDING: 29,
  MX_TIMEOUT: 30,
  MX_NO_MATCH: 31,
  MX_BAD_ENDPOINT_ID: 32,
  MX_CONNECTION_FAILED: 33,
  MX_BAD_CONNECTION_KEY: 34,
  MX_BAD_INFO_LENGTH: 35,
  MX_NIC_NOT_FOUND: 36,
  MX_BAD_KERNEL_VERSION: 37,
  MX_BAD_LIB_VERSION: 38,
  MX_NIC_DEAD: 39,
  MX_CANCEL_NOT_SUPPORTED: 40,
  MX_CLOSE_IN_HANDLER: 41,
  MX_BAD_MATCHING_FOR_CONTEXT_ID_MASK: 42,
  MX_NOT_SUPPORTED_WITH_CONTEXT_ID: 43,
} as const;

export type MxReturnName = keyof typeof MxReturn;

const names = new Map<number, string>(Object.entries(MxReturn).map(([k, v]) => [v, k]));

/** mx_strerror: the name of a return code. */
export function mxStrerror(code: number): string {
  return names.get(code) ?? `MX_UNKNOWN_RETURN(${code})`;
}

/** An MX call that failed: carries the MX return code (number and name) and what to fix. */
export class MxError extends Error {
  readonly code: number;
  constructor(
    readonly codeName: MxReturnName,
    message: string,
  ) {
    super(`${codeName}: ${message}`);
    this.name = "MxError";
    this.code = MxReturn[codeName];
  }
}

/** The MxError for what a driver (or anything else) threw: its MX code if it names one, else `fallback`. */
export function asMxError(e: unknown, fallback: MxReturnName): MxError {
  if (e instanceof MxError) return e;
  if (e instanceof MxDriverError) {
    const name = (e.code in MxReturn ? e.code : fallback) as MxReturnName;
    return new MxError(name, e.message.replace(/^MX_[A-Z_]+: /, ""));
  }
  return new MxError(fallback, (e as Error)?.message ?? String(e));
}

/** MX_BAD_MATCH_MASK unless the match value (hi, lo) has no bits outside the mask (mhi, mlo). */
export function checkMatch(hi: number, lo: number, mhi: number, mlo: number): void {
  if (((hi >>> 0) & ~(mhi >>> 0)) !== 0 || ((lo >>> 0) & ~(mlo >>> 0)) !== 0)
    throw new MxError("MX_BAD_MATCH_MASK", "match info has bits outside the match mask");
}

/** The most bytes one message may have: MX lengths are 32-bit words on every path. */
export const MAX_MESSAGE_BYTES = 0xffffffff;

// The typed arrays' own accessors, taken when this module loads: they read a view's internal
// slots, whatever the object says of itself (an own `length`, a swapped prototype, a Proxy).
const typedArrayProto = Object.getPrototypeOf(Uint8Array.prototype) as object;
const accessor = (name: PropertyKey) =>
  Object.getOwnPropertyDescriptor(typedArrayProto, name)!.get! as (this: unknown) => unknown;
const kindOf = accessor(Symbol.toStringTag);
const bufferOf = accessor("buffer") as (this: unknown) => ArrayBufferLike;
const offsetOf = accessor("byteOffset") as (this: unknown) => number;
const lengthOf = accessor("length") as (this: unknown) => number;

/**
 * MX_BAD_SEG_LIST unless `buf` is a Uint8Array of at most MAX_MESSAGE_BYTES (what `what` was
 * given). Returns the library's own view of the same bytes, which is all the library reads
 * and copies through from then on: nothing the caller's object does (a `length` of its own, a
 * Proxy, methods or a species that run the caller's code in the middle of a record) reaches
 * the library, and the view's length is fixed. A buffer resized or detached later reads as
 * empty through it, which the paths check before every copy (a message arriving for such a
 * receive is consumed and the receive aborted; a send pushes zeros for what it no longer has).
 */
export function checkBuffer(buf: unknown, what: string): Uint8Array {
  if (kindOf.call(buf) !== "Uint8Array")
    throw new MxError("MX_BAD_SEG_LIST", `${what}: the buffer must be a Uint8Array`);
  const length = lengthOf.call(buf);
  if (length > MAX_MESSAGE_BYTES)
    throw new MxError(
      "MX_BAD_SEG_LIST",
      `${what}: a message is at most ${MAX_MESSAGE_BYTES} bytes (MX lengths are 32-bit), the buffer has ${length}`,
    );
  try {
    return new Uint8Array(bufferOf.call(buf), offsetOf.call(buf), length);
  } catch {
    // Its memory was detached (transferred away): no view of it can be made.
    throw new MxError("MX_BAD_SEG_LIST", `${what}: the buffer's memory was detached (transferred)`);
  }
}

/**
 * checkBuffer with a memory of one: the buffer a loop passes again gets the same view, its
 * length and offset read again but the view not built again (a view costs ~30 ns and
 * garbage: a tenth of an 8-byte ping-pong's time here). A typed array's type and underlying
 * buffer never change; its length and offset change only if that buffer is resized or
 * detached, and then the view is built again from what they are now.
 */
export class BufferCheck {
  private user: unknown = undefined;
  private offset = 0;
  private length = 0;
  private view: Uint8Array | undefined = undefined;

  check(buf: unknown, what: string): Uint8Array {
    if (buf === this.user && offsetOf.call(buf) === this.offset && lengthOf.call(buf) === this.length)
      return this.view!;
    const v = checkBuffer(buf, what);
    this.user = buf;
    this.offset = v.byteOffset;
    this.length = v.length;
    this.view = v;
    return v;
  }
}

/** MX_ANY_ENDPOINT / MX_ANY_NIC. */
export const MX_ANY_ENDPOINT = 0xffffffff;
export const MX_ANY_NIC = 0xffffffff;
/** MX_INFINITE timeout. */
export const MX_INFINITE = 0;
/** Default rendezvous threshold: eager up to 32 KiB (Open-MX's inter-node default). */
export const DEFAULT_RNDV_THRESHOLD = 32 * 1024;

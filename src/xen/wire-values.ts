/**
 * What a domain's runtime may post to another thread on a guest's behalf: primitives and
 * bounded lists, rebuilt into fresh objects before postMessage (hypercall.ts hypercallOnWire,
 * xenstore/wire.ts xenStoreRequestOnWire, the native service's requests).
 *
 * Whatever is posted is copied whole by the sender and decoded whole by the receiving thread
 * before any check of its can look at a field. A guest that posted what it liked (a 100 MiB
 * typed array as a XenStore value, a perms list of a million entries, 32 of them in flight)
 * held the hypervisor's thread in that decoding for seconds, and every domain's hypercalls and
 * XenStore requests (the driver domain's among them) waited. The runtime's own port code is the
 * gate a request must pass (the guest never holds the port), so the bound is kept there, as
 * Xen keeps a request to one ring slot; what the fields mean is still checked by the receiver.
 */

import { isSharedArrayBuffer } from "node:util/types";

/** What a request's field may be on the wire. */
export type WireScalar = number | boolean | string | null | undefined;

/** The longest string a field carries unless its contract says more (ops, names, garbage). */
export const WIRE_SCALAR_CHARS = 64;

/** How a value is described in an error, without calling anything of the guest's on it. */
export function wireKind(v: unknown): string {
  if (v === null) return "null";
  if (typeof v !== "object") return typeof v;
  if (Array.isArray(v)) return "an array";
  if (ArrayBuffer.isView(v)) return "a typed array";
  return "an object";
}

/**
 * `v` itself if it is a primitive a request may carry (a string of at most `maxChars`);
 * otherwise throws `fail(why)`. Read once by the caller: what is checked is what goes.
 */
export function wireScalar(
  v: unknown,
  what: string,
  fail: (why: string) => Error,
  maxChars = WIRE_SCALAR_CHARS,
): WireScalar {
  switch (typeof v) {
    case "number":
    case "boolean":
    case "undefined":
      return v;
    case "string":
      if (v.length <= maxChars) return v;
      throw fail(
        `${what} is a string of ${v.length} characters; a request carries at most ${maxChars} there`,
      );
    default:
      if (v === null) return null;
      throw fail(`${what} must be a number, a boolean or a short string, not ${wireKind(v)}`);
  }
}

/**
 * A fresh array of `v`'s entries, each made by `entry`, if `v` is an array of at most `max`
 * entries; a primitive goes as is (the receiver says what is wrong with it); anything else,
 * or a longer list, throws `fail(why)`. The length is read once, each entry once.
 */
export function wireList<T>(
  v: unknown,
  what: string,
  max: number,
  fail: (why: string) => Error,
  entry: (x: unknown, i: number) => T,
): T[] | WireScalar {
  if (!Array.isArray(v)) return wireScalar(v, what, fail);
  const n: unknown = v.length;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > max)
    throw fail(`${what} has ${String(n)} entries; a request carries at most ${max}`);
  const out = new Array<T>(n);
  for (let i = 0; i < n; i++) out[i] = entry(v[i], i);
  return out;
}

/**
 * A fresh object of `v`'s fields named in `fields`, each through wireScalar; `v` itself if it
 * is a primitive (the receiver says what is wrong with it). Other fields are left behind; a
 * list or a typed array throws `fail(why)`.
 */
export function wireRecord(
  v: unknown,
  what: string,
  fields: readonly string[],
  fail: (why: string) => Error,
): Record<string, WireScalar> | WireScalar {
  if (typeof v !== "object" || v === null) return wireScalar(v, what, fail);
  if (Array.isArray(v) || ArrayBuffer.isView(v))
    throw fail(`${what} must be an object of fields, not ${wireKind(v)}`);
  const o = v as Record<string, unknown>;
  const out: Record<string, WireScalar> = {};
  for (const f of fields) {
    const x = o[f];
    if (x !== undefined) out[f] = wireScalar(x, `${what}.${f}`, fail);
  }
  return out;
}

/** The most fields a flat request (wireFlat) carries. */
export const WIRE_FLAT_FIELDS = 16;

/**
 * A fresh copy of a flat request (a service's own contract, e.g. the native service's): at most
 * WIRE_FLAT_FIELDS own fields, each a primitive as wireScalar takes it or a SharedArrayBuffer
 * (which goes by reference, not copied). Throws `fail(why)` for anything else.
 */
export function wireFlat(v: unknown, what: string, fail: (why: string) => Error): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw fail(`${what} must be an object of fields, not ${wireKind(v)}`);
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length > WIRE_FLAT_FIELDS)
    throw fail(`${what} has ${keys.length} fields; a request carries at most ${WIRE_FLAT_FIELDS}`);
  const out: Record<string, unknown> = {};
  for (const k of keys) {
    if (k.length > WIRE_SCALAR_CHARS) throw fail(`${what} has a field name of ${k.length} characters`);
    const x = o[k];
    // The buffer's own internal slot, not `instanceof`: a plain object given SharedArrayBuffer's
    // prototype passed that, and was posted with whatever it carried (2 million objects held the
    // driver domain's thread 2 s a call).
    out[k] = isSharedArrayBuffer(x) ? x : wireScalar(x, `${what}.${k}`, fail);
  }
  return out;
}

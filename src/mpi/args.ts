/**
 * The argument checks of MPI calls: each accepts what the call may take and otherwise throws
 * an MpiError that names the call, the argument and what to fix. Pure functions of their
 * arguments (and the communicator's size), shared by the point-to-point and collective layers.
 */

import { isMpiBuffer, type MpiBuffer, typeName } from "./buffers.js";
import { ANY_SOURCE, ANY_TAG, MAX_TAG } from "./constants.js";
import { MpiOp } from "./ops.js";
import { MpiError } from "./status.js";

/** A numeric TypedArray. */
export function bufferArg(call: string, name: string, b: unknown): MpiBuffer {
  if (!isMpiBuffer(b))
    throw new MpiError(
      `MPI ${call}: ${name} must be a numeric TypedArray (Float64Array, Int32Array, ...), got ${typeName(b)}`,
    );
  return b;
}

/** A numeric TypedArray of the same element type as `like`. */
export function sameTypeArg(
  call: string,
  name: string,
  b: unknown,
  like: MpiBuffer,
  likeName: string,
): MpiBuffer {
  const x = bufferArg(call, name, b);
  if (x.constructor !== like.constructor)
    throw new MpiError(
      `MPI ${call}: ${name} is a ${typeName(x)} but ${likeName} is a ${typeName(like)}; both must have the same element type`,
    );
  return x;
}

/** `b` has room for `n` elements (`why` says where n comes from). */
export function atLeast(call: string, name: string, b: MpiBuffer, n: number, why: string): void {
  if (b.length < n)
    throw new MpiError(`MPI ${call}: ${name} has ${b.length} elements but needs at least ${n} (${why})`);
}

/** A rank of a communicator of `size` ranks (or ANY_SOURCE when `anyOk`). */
export function rankArg(call: string, name: string, r: unknown, size: number, anyOk = false): number {
  if (anyOk && r === ANY_SOURCE) return ANY_SOURCE;
  if (typeof r !== "number" || !Number.isInteger(r) || r < 0 || r >= size)
    throw new MpiError(
      `MPI ${call}: ${name} ${String(r)} is out of range: ranks of this communicator are 0..${size - 1}${anyOk ? " (or MPI.ANY_SOURCE)" : ""}`,
    );
  return r;
}

/** A tag 0..MAX_TAG (or ANY_TAG when `anyOk`). */
export function tagArg(call: string, t: unknown, anyOk = false): number {
  if (anyOk && t === ANY_TAG) return ANY_TAG;
  if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > MAX_TAG)
    throw new MpiError(
      `MPI ${call}: tag ${String(t)} is invalid: tags are integers 0..${MAX_TAG}${anyOk ? " (or MPI.ANY_TAG)" : ""}`,
    );
  return t;
}

/** One of the predefined reduction operations. */
export function opArg(call: string, op: unknown): MpiOp {
  if (!(op instanceof MpiOp))
    throw new MpiError(
      `MPI ${call}: op ${String(op)} is not an MPI operation (use MPI.SUM, MPI.MIN, MPI.MAX, MPI.PROD)`,
    );
  return op;
}

/** An array (or TypedArray) of at least `size` non-negative integers: one per rank. */
export function perRankArg(call: string, name: string, v: unknown, size: number): ArrayLike<number> {
  const ok =
    (Array.isArray(v) || (ArrayBuffer.isView(v) && !(v instanceof DataView))) &&
    (v as ArrayLike<unknown>).length >= size;
  if (!ok) throw new MpiError(`MPI ${call}: ${name} must be an array of ${size} integers (one per rank)`);
  const a = v as ArrayLike<number>;
  for (let i = 0; i < size; i++)
    if (!Number.isInteger(a[i]) || a[i] < 0)
      throw new MpiError(`MPI ${call}: ${name}[${i}] = ${String(a[i])} must be a non-negative integer`);
  return a;
}

/** counts/displs describe `size` blocks inside `b`: each must fit. */
export function blocksArg(
  call: string,
  bname: string,
  b: MpiBuffer,
  cname: string,
  counts: unknown,
  dname: string,
  displs: unknown,
  size: number,
): [ArrayLike<number>, ArrayLike<number>] {
  const c = perRankArg(call, cname, counts, size);
  const d = perRankArg(call, dname, displs, size);
  for (let i = 0; i < size; i++)
    if (d[i] + c[i] > b.length)
      throw new MpiError(
        `MPI ${call}: block ${i} (${dname}[${i}] = ${d[i]}, ${cname}[${i}] = ${c[i]}) ends past the end of ${bname} (${b.length} elements)`,
      );
  return [c, d];
}

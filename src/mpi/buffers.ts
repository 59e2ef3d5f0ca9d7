/**
 * MPI's buffers: which typed arrays MPI calls accept (a numeric TypedArray; counts are in its
 * elements), byte views on a range of elements (no copy), element copies between buffers,
 * and the scratch buffers collectives reduce into, reused across calls.
 */
import { copyBytes } from "../xen/copy.js";

export type NumberArray =
  | Float64Array
  | Float32Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray;
export type BigIntArray = BigInt64Array | BigUint64Array;
/** Any buffer MPI calls accept: a numeric TypedArray; counts are in its elements. */
export type MpiBuffer = NumberArray | BigIntArray;

type TypedCtor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => MpiBuffer;

/** True for the numeric typed arrays MPI accepts (not DataView, not plain arrays). */
export function isMpiBuffer(b: unknown): b is MpiBuffer {
  return ArrayBuffer.isView(b) && !(b instanceof DataView) && !isFloat16(b);
}

function isFloat16(b: unknown): boolean {
  const F16 = (globalThis as { Float16Array?: new () => unknown }).Float16Array;
  return F16 !== undefined && b instanceof F16;
}

export function typeName(b: unknown): string {
  if (b === null) return "null";
  if (b === undefined) return "undefined";
  if (typeof b === "object") return (b as object).constructor?.name ?? "object";
  return typeof b;
}

/** A Uint8Array over elements [off, off + n) of `a` (same memory, no copy). */
export function bytesOf(a: MpiBuffer, off = 0, n = a.length - off): Uint8Array {
  const bpe = a.BYTES_PER_ELEMENT;
  return new Uint8Array(a.buffer, a.byteOffset + off * bpe, n * bpe);
}

/** Scratch buffers reused across calls: grown on demand, never shrunk. */
export class Scratch {
  private readonly slots: ArrayBuffer[] = [];

  /** A view of `n` elements of the same type as `like`, in slot `slot` (contents undefined). */
  get(slot: number, like: MpiBuffer, n: number): MpiBuffer {
    const bytes = n * like.BYTES_PER_ELEMENT;
    let buf = this.slots[slot];
    if (!buf || buf.byteLength < bytes) {
      buf = new ArrayBuffer(Math.max(bytes, (buf?.byteLength ?? 0) * 2, 64));
      this.slots[slot] = buf;
    }
    return new (like.constructor as TypedCtor)(buf, 0, n);
  }
}

/** Copies n elements of src (from sOff) into dst (at dOff), byte for byte. */
export function copyElems(dst: MpiBuffer, dOff: number, src: MpiBuffer, sOff: number, n: number): void {
  if (n > 0) copyBytes(bytesOf(dst, dOff, n), 0, bytesOf(src, sOff, n), 0, n * src.BYTES_PER_ELEMENT);
}

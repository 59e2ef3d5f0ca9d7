/**
 * Reduction operations (MPI_SUM, MPI_MIN, MPI_MAX, MPI_PROD) and the typed-array plumbing the
 * MPI library shares: which buffers are acceptable, byte views on them, reusable scratch.
 * Ops work in place on sub-ranges (`a[ao + i] = a[ao + i] op b[bo + i]`), so collectives reduce
 * segments of one scratch buffer without allocating per element or per step.
 */

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

interface NumVec {
  [i: number]: number;
}
interface BigVec {
  [i: number]: bigint;
}

type Kernel = (a: MpiBuffer, ao: number, b: MpiBuffer, bo: number, n: number) => void;

/** A reduction operation (commutative and associative, as all predefined MPI ops are). */
export class MpiOp {
  /** @internal */
  constructor(
    readonly name: string,
    /** @internal */ readonly apply: Kernel,
  ) {}

  toString(): string {
    return this.name;
  }
}

function isBig(a: MpiBuffer): a is BigIntArray {
  return a instanceof BigInt64Array || a instanceof BigUint64Array;
}

function is32(a: MpiBuffer): boolean {
  return a instanceof Int32Array || a instanceof Uint32Array;
}

export const SUM = new MpiOp("MPI.SUM", (a, ao, b, bo, n) => {
  if (isBig(a)) {
    const x = a as BigVec;
    const y = b as unknown as BigVec;
    for (let i = 0; i < n; i++) x[ao + i] += y[bo + i];
  } else {
    const x = a as NumVec;
    const y = b as NumVec;
    for (let i = 0; i < n; i++) x[ao + i] += y[bo + i];
  }
});

export const PROD = new MpiOp("MPI.PROD", (a, ao, b, bo, n) => {
  if (isBig(a)) {
    const x = a as BigVec;
    const y = b as unknown as BigVec;
    for (let i = 0; i < n; i++) x[ao + i] *= y[bo + i];
  } else if (is32(a)) {
    // A double product of two 32-bit integers can lose low bits; imul wraps exactly as C does.
    const x = a as NumVec;
    const y = b as NumVec;
    for (let i = 0; i < n; i++) x[ao + i] = Math.imul(x[ao + i], y[bo + i]);
  } else {
    const x = a as NumVec;
    const y = b as NumVec;
    for (let i = 0; i < n; i++) x[ao + i] *= y[bo + i];
  }
});

export const MIN = new MpiOp("MPI.MIN", (a, ao, b, bo, n) => {
  if (isBig(a)) {
    const x = a as BigVec;
    const y = b as unknown as BigVec;
    for (let i = 0; i < n; i++) if (y[bo + i] < x[ao + i]) x[ao + i] = y[bo + i];
  } else {
    const x = a as NumVec;
    const y = b as NumVec;
    for (let i = 0; i < n; i++) if (y[bo + i] < x[ao + i]) x[ao + i] = y[bo + i];
  }
});

export const MAX = new MpiOp("MPI.MAX", (a, ao, b, bo, n) => {
  if (isBig(a)) {
    const x = a as BigVec;
    const y = b as unknown as BigVec;
    for (let i = 0; i < n; i++) if (y[bo + i] > x[ao + i]) x[ao + i] = y[bo + i];
  } else {
    const x = a as NumVec;
    const y = b as NumVec;
    for (let i = 0; i < n; i++) if (y[bo + i] > x[ao + i]) x[ao + i] = y[bo + i];
  }
});

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
  if (n > 0) bytesOf(dst, dOff, n).set(bytesOf(src, sOff, n));
}

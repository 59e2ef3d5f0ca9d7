/**
 * Reduction operations (MPI_SUM, MPI_MIN, MPI_MAX, MPI_PROD). Ops work in place on sub-ranges
 * (`a[ao + i] = a[ao + i] op b[bo + i]`), so collectives reduce segments of one scratch buffer
 * without allocating per element or per step. The typed-array plumbing is buffers.ts (its
 * names are exported from here too, as before).
 */

import type { BigIntArray, MpiBuffer } from "./buffers.js";

export {
  type BigIntArray,
  bytesOf,
  copyElems,
  isMpiBuffer,
  type MpiBuffer,
  type NumberArray,
  Scratch,
  typeName,
} from "./buffers.js";

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

/**
 * @internal Bitwise OR of Int32Arrays (MPI_BOR's kernel): the union of the members' context-id
 * bitmaps (comm.ts). Not offered to programs: the public ops check no element type for it.
 */
export const BOR = new MpiOp("MPI.BOR", (a, ao, b, bo, n) => {
  const x = a as NumVec;
  const y = b as NumVec;
  for (let i = 0; i < n; i++) x[ao + i] |= y[bo + i];
});

/**
 * Non-rooted collectives — every rank contributes and every rank gets a result: barrier
 * (dissemination), allreduce (recursive doubling, or Rabenseifner for large vectors),
 * allgather and allgatherv (a ring), alltoall and alltoallv (pairwise exchange). Each runs on
 * a communicator's collective context (coll-transport.ts); Comm (comm.ts) calls them.
 */

import { atLeast, blocksArg, bufferArg, opArg, sameTypeArg } from "./args.js";
import { bytesOf, copyElems, type MpiBuffer } from "./buffers.js";
import {
  type CollectiveTransport,
  TAG_ALLGATHER,
  TAG_ALLREDUCE,
  TAG_ALLTOALL,
  TAG_BARRIER,
} from "./coll-transport.js";
import { IN_PLACE, type InPlace } from "./constants.js";
import type { MpiOp } from "./ops.js";
import { MpiError } from "./status.js";

/** Above this many bytes allreduce switches from recursive doubling to Rabenseifner. */
const ALLREDUCE_LARGE = 8192;

const EMPTY = new Uint8Array(0);

function isPow2(n: number): boolean {
  return (n & (n - 1)) === 0;
}

/** Dissemination barrier: ceil(log2 size) rounds. */
export function barrier(comm: CollectiveTransport): void {
  comm.clive("barrier");
  const { size, rank } = comm;
  for (let k = 1; k < size; k <<= 1)
    comm.csendrecv("barrier", EMPTY, (rank + k) % size, EMPTY, (rank - k + size) % size, TAG_BARRIER);
}

/**
 * Allreduce: recursive doubling for small vectors, Rabenseifner (reduce-scatter by recursive
 * halving, allgather by recursive doubling) for large ones; a non-power-of-two size first
 * folds the extra ranks into their neighbours and hands them the result at the end.
 */
export function allreduce(
  comm: CollectiveTransport,
  sbuf: MpiBuffer | InPlace,
  rbuf: MpiBuffer,
  op: MpiOp,
): void {
  comm.clive("allreduce");
  const o = opArg("allreduce", op);
  let acc: MpiBuffer;
  let n: number;
  if (sbuf === IN_PLACE) {
    acc = bufferArg("allreduce", "rbuf", rbuf);
    n = acc.length;
  } else {
    const s = bufferArg("allreduce", "sbuf", sbuf);
    acc = sameTypeArg("allreduce", "rbuf", rbuf, s, "sbuf");
    n = s.length;
    atLeast("allreduce", "rbuf", acc, n, "the count of sbuf");
    copyElems(acc, 0, s, 0, n);
  }
  const { size, rank } = comm;
  if (size === 1) return;
  const tmp = comm.rt.scratch.get(1, acc, n);
  const all = bytesOf(acc, 0, n);
  let pof2 = 1;
  while (pof2 * 2 <= size) pof2 *= 2;
  const rem = size - pof2;
  let newrank: number;
  if (rank < 2 * rem) {
    if (rank % 2 === 0) {
      comm.csend("allreduce", all, rank + 1, TAG_ALLREDUCE);
      newrank = -1;
    } else {
      comm.crecv("allreduce", bytesOf(tmp, 0, n), rank - 1, TAG_ALLREDUCE);
      o.apply(acc, 0, tmp, 0, n);
      newrank = rank >> 1;
    }
  } else newrank = rank - rem;
  const real = (nr: number) => (nr < rem ? nr * 2 + 1 : nr + rem);
  if (newrank >= 0) {
    if (n * acc.BYTES_PER_ELEMENT <= ALLREDUCE_LARGE || n < pof2) {
      for (let mask = 1; mask < pof2; mask <<= 1) {
        const dst = real(newrank ^ mask);
        comm.csendrecv("allreduce", all, dst, bytesOf(tmp, 0, n), dst, TAG_ALLREDUCE);
        o.apply(acc, 0, tmp, 0, n);
      }
    } else rabenseifner(comm, acc, tmp, n, o, pof2, newrank, real);
  }
  if (rank < 2 * rem) {
    if (rank % 2 === 1) comm.csend("allreduce", all, rank - 1, TAG_ALLREDUCE);
    else comm.crecv("allreduce", all, rank + 1, TAG_ALLREDUCE);
  }
}

function rabenseifner(
  comm: CollectiveTransport,
  acc: MpiBuffer,
  tmp: MpiBuffer,
  n: number,
  o: MpiOp,
  pof2: number,
  newrank: number,
  real: (nr: number) => number,
): void {
  const cnts = new Int32Array(pof2);
  const disps = new Int32Array(pof2);
  const base = Math.floor(n / pof2);
  for (let i = 0, d = 0; i < pof2; i++) {
    cnts[i] = base + (i < n % pof2 ? 1 : 0);
    disps[i] = d;
    d += cnts[i];
  }
  const sum = (from: number, to: number) => {
    let s = 0;
    for (let i = from; i < to; i++) s += cnts[i];
    return s;
  };
  let sendIdx = 0;
  let recvIdx = 0;
  let lastIdx = pof2;
  let mask = 1;
  // Reduce-scatter by recursive halving: each step keeps half of the remaining segment.
  while (mask < pof2) {
    const newdst = newrank ^ mask;
    const dst = real(newdst);
    const half = pof2 / (mask * 2);
    let sendCnt: number;
    let recvCnt: number;
    if (newrank < newdst) {
      sendIdx = recvIdx + half;
      sendCnt = sum(sendIdx, lastIdx);
      recvCnt = sum(recvIdx, sendIdx);
    } else {
      recvIdx = sendIdx + half;
      sendCnt = sum(sendIdx, recvIdx);
      recvCnt = sum(recvIdx, lastIdx);
    }
    comm.csendrecv(
      "allreduce",
      bytesOf(acc, disps[sendIdx], sendCnt),
      dst,
      bytesOf(tmp, disps[recvIdx], recvCnt),
      dst,
      TAG_ALLREDUCE,
    );
    o.apply(acc, disps[recvIdx], tmp, disps[recvIdx], recvCnt);
    sendIdx = recvIdx;
    mask <<= 1;
    if (mask < pof2) lastIdx = recvIdx + pof2 / mask;
  }
  // Allgather by recursive doubling: the segments come back in reverse order of halving.
  mask >>= 1;
  while (mask > 0) {
    const newdst = newrank ^ mask;
    const dst = real(newdst);
    const half = pof2 / (mask * 2);
    let sendCnt: number;
    let recvCnt: number;
    if (newrank < newdst) {
      if (mask !== pof2 / 2) lastIdx = lastIdx + half;
      recvIdx = sendIdx + half;
      sendCnt = sum(sendIdx, recvIdx);
      recvCnt = sum(recvIdx, lastIdx);
    } else {
      recvIdx = sendIdx - half;
      sendCnt = sum(sendIdx, lastIdx);
      recvCnt = sum(recvIdx, sendIdx);
    }
    comm.csendrecv(
      "allreduce",
      bytesOf(acc, disps[sendIdx], sendCnt),
      dst,
      bytesOf(acc, disps[recvIdx], recvCnt),
      dst,
      TAG_ALLREDUCE,
    );
    if (newrank > newdst) sendIdx = recvIdx;
    mask >>= 1;
  }
}

/** Ring allgather: size − 1 steps, each passing one block to the right. */
export function allgather(comm: CollectiveTransport, sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer): void {
  comm.clive("allgather");
  const { size, rank } = comm;
  let out: MpiBuffer;
  let n: number;
  if (sbuf === IN_PLACE) {
    out = bufferArg("allgather", "rbuf", rbuf);
    if (out.length % size !== 0)
      throw new MpiError(
        `MPI allgather: with MPI.IN_PLACE rbuf's length (${out.length}) must be a multiple of size ${size}`,
      );
    n = out.length / size;
  } else {
    const s = bufferArg("allgather", "sbuf", sbuf);
    out = sameTypeArg("allgather", "rbuf", rbuf, s, "sbuf");
    n = s.length;
    atLeast("allgather", "rbuf", out, size * n, `size ${size} × count ${n}`);
    copyElems(out, rank * n, s, 0, n);
  }
  const counts = comm.rt.scratch.get(2, new Int32Array(0), 2 * size) as Int32Array;
  for (let i = 0; i < size; i++) {
    counts[i] = n;
    counts[size + i] = i * n;
  }
  ring(comm, "allgather", out, counts, size);
}

/** Ring allgatherv: block i (counts[i] elements at displs[i] of rbuf) comes from rank i. */
export function allgatherv(
  comm: CollectiveTransport,
  sbuf: MpiBuffer | InPlace,
  rbuf: MpiBuffer,
  counts: ArrayLike<number>,
  displs: ArrayLike<number>,
): void {
  comm.clive("allgatherv");
  const { size, rank } = comm;
  const out = sbuf === IN_PLACE ? bufferArg("allgatherv", "rbuf", rbuf) : undefined;
  const s = sbuf === IN_PLACE ? undefined : bufferArg("allgatherv", "sbuf", sbuf);
  const o = out ?? sameTypeArg("allgatherv", "rbuf", rbuf, s!, "sbuf");
  const [c, d] = blocksArg("allgatherv", "rbuf", o, "counts", counts, "displs", displs, comm.size);
  if (s) {
    if (c[rank] !== s.length)
      throw new MpiError(`MPI allgatherv: counts[${rank}] = ${c[rank]} but sbuf has ${s.length} elements`);
    copyElems(o, d[rank], s, 0, c[rank]);
  }
  const cd = comm.rt.scratch.get(2, new Int32Array(0), 2 * size) as Int32Array;
  for (let i = 0; i < size; i++) {
    cd[i] = c[i];
    cd[size + i] = d[i];
  }
  ring(comm, "allgatherv", o, cd, size);
}

function ring(comm: CollectiveTransport, call: string, out: MpiBuffer, cd: Int32Array, size: number): void {
  const rank = comm.rank;
  const right = (rank + 1) % size;
  const left = (rank - 1 + size) % size;
  for (let i = 0; i < size - 1; i++) {
    const sb = (rank - i + size) % size;
    const rb = (rank - i - 1 + size) % size;
    comm.csendrecv(
      call,
      bytesOf(out, cd[size + sb], cd[sb]),
      right,
      bytesOf(out, cd[size + rb], cd[rb]),
      left,
      TAG_ALLGATHER,
    );
  }
}

/** Pairwise-exchange alltoall: block j of sbuf goes to rank j, block i of rbuf comes from rank i. */
export function alltoall(comm: CollectiveTransport, sbuf: MpiBuffer, rbuf: MpiBuffer): void {
  comm.clive("alltoall");
  const s = bufferArg("alltoall", "sbuf", sbuf);
  const out = sameTypeArg("alltoall", "rbuf", rbuf, s, "sbuf");
  const size = comm.size;
  if (s.length % size !== 0)
    throw new MpiError(
      `MPI alltoall: sbuf's length (${s.length}) must be a multiple of size ${size} (one block per rank)`,
    );
  const n = s.length / size;
  atLeast("alltoall", "rbuf", out, s.length, `size ${size} × count ${n}`);
  pairwise(
    comm,
    "alltoall",
    s,
    out,
    () => n,
    (i) => i * n,
    () => n,
    (i) => i * n,
  );
}

export function alltoallv(
  comm: CollectiveTransport,
  sbuf: MpiBuffer,
  scounts: ArrayLike<number>,
  sdispls: ArrayLike<number>,
  rbuf: MpiBuffer,
  rcounts: ArrayLike<number>,
  rdispls: ArrayLike<number>,
): void {
  comm.clive("alltoallv");
  const s = bufferArg("alltoallv", "sbuf", sbuf);
  const out = sameTypeArg("alltoallv", "rbuf", rbuf, s, "sbuf");
  const [sc, sd] = blocksArg("alltoallv", "sbuf", s, "scounts", scounts, "sdispls", sdispls, comm.size);
  const [rc, rd] = blocksArg("alltoallv", "rbuf", out, "rcounts", rcounts, "rdispls", rdispls, comm.size);
  if (sc[comm.rank] !== rc[comm.rank])
    throw new MpiError(
      `MPI alltoallv: scounts[${comm.rank}] = ${sc[comm.rank]} differs from rcounts[${comm.rank}] = ${rc[comm.rank]} (this rank's block to itself)`,
    );
  pairwise(
    comm,
    "alltoallv",
    s,
    out,
    (i) => sc[i],
    (i) => sd[i],
    (i) => rc[i],
    (i) => rd[i],
  );
}

function pairwise(
  comm: CollectiveTransport,
  call: string,
  s: MpiBuffer,
  out: MpiBuffer,
  sc: (i: number) => number,
  sd: (i: number) => number,
  rc: (i: number) => number,
  rd: (i: number) => number,
): void {
  const { size, rank } = comm;
  if (size === 1) copyElems(out, rd(rank), s, sd(rank), sc(rank));
  const pow2 = isPow2(size);
  for (let i = 1; i < size; i++) {
    const dst = pow2 ? rank ^ i : (rank + i) % size;
    const src = pow2 ? rank ^ i : (rank - i + size) % size;
    const r = comm.cirecv(bytesOf(out, rd(src), rc(src)), src, TAG_ALLTOALL);
    const sr = comm.cisend(bytesOf(s, sd(dst), sc(dst)), dst, TAG_ALLTOALL);
    // The block to itself is copied while the first exchange is under way, in pieces that
    // let that exchange move between them (CollectiveTransport.ccopy).
    if (i === 1) comm.ccopy(bytesOf(out, rd(rank), sc(rank)), bytesOf(s, sd(rank), sc(rank)));
    comm.cwaitPair(call, r, src, sr, dst);
  }
}

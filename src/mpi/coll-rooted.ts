/**
 * Rooted collectives — one rank is the source or the destination of the data: bcast,
 * reduce, gather, scatter (binomial trees, O(log size) rounds) and gatherv, scatterv (linear:
 * the root posts one exchange per rank). Each runs on a communicator's collective context
 * (coll-transport.ts); Comm (comm.ts) calls them. All block, like C MPI.
 */

import { atLeast, blocksArg, bufferArg, opArg, rankArg, sameTypeArg } from "./args.js";
import { bytesOf, copyElems, type MpiBuffer } from "./buffers.js";
import {
  type CollectiveTransport,
  TAG_BCAST,
  TAG_GATHER,
  TAG_REDUCE,
  TAG_SCATTER,
} from "./coll-transport.js";
import { IN_PLACE, type InPlace } from "./constants.js";
import type { MpiOp } from "./ops.js";
import { MpiError } from "./status.js";

/** Binomial-tree broadcast of buf (its whole length) from root. */
export function bcast(comm: CollectiveTransport, buf: MpiBuffer, root: number): void {
  comm.clive("bcast");
  const b = bytesOf(bufferArg("bcast", "buf", buf));
  const r = rankArg("bcast", "root", root, comm.size);
  const { size, rank } = comm;
  const vr = (rank - r + size) % size;
  let mask = 1;
  while (mask < size) {
    if (vr & mask) {
      comm.crecv("bcast", b, (rank - mask + size) % size, TAG_BCAST);
      break;
    }
    mask <<= 1;
  }
  const peers: number[] = [];
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (vr + mask < size) {
      const d = (rank + mask) % size;
      comm.pending.push(comm.cisend(b, d, TAG_BCAST));
      peers.push(d);
    }
  }
  comm.cwaitPending("bcast", peers);
}

/** Binomial-tree reduction to root (count = sbuf.length, or rbuf.length with IN_PLACE at root). */
export function reduce(
  comm: CollectiveTransport,
  sbuf: MpiBuffer | InPlace,
  rbuf: MpiBuffer | null | undefined,
  op: MpiOp,
  root: number,
): void {
  comm.clive("reduce");
  const o = opArg("reduce", op);
  const r = rankArg("reduce", "root", root, comm.size);
  const { size, rank } = comm;
  const isRoot = rank === r;
  let src: MpiBuffer;
  let out: MpiBuffer | undefined;
  if (sbuf === IN_PLACE) {
    if (!isRoot) throw new MpiError("MPI reduce: MPI.IN_PLACE is only allowed as sbuf at the root");
    out = bufferArg("reduce", "rbuf", rbuf);
    src = out;
  } else {
    src = bufferArg("reduce", "sbuf", sbuf);
    if (isRoot) {
      out = sameTypeArg("reduce", "rbuf", rbuf, src, "sbuf");
      atLeast("reduce", "rbuf", out, src.length, "the count of sbuf");
    }
  }
  const n = src.length;
  const acc = out ?? comm.rt.scratch.get(0, src, n);
  if (acc !== src) copyElems(acc, 0, src, 0, n);
  if (size === 1) return;
  const tmp = comm.rt.scratch.get(1, src, n);
  const vr = (rank - r + size) % size;
  for (let mask = 1; mask < size; mask <<= 1) {
    if ((vr & mask) === 0) {
      const c = vr | mask;
      if (c < size) {
        comm.crecv("reduce", bytesOf(tmp, 0, n), (c + r) % size, TAG_REDUCE);
        o.apply(acc, 0, tmp, 0, n);
      }
    } else {
      comm.csend("reduce", bytesOf(acc, 0, n), ((vr & ~mask) + r) % size, TAG_REDUCE);
      break;
    }
  }
}

/** Binomial-tree gather: rbuf (at root) gets size blocks of sbuf.length elements, in rank order. */
export function gather(
  comm: CollectiveTransport,
  sbuf: MpiBuffer,
  rbuf: MpiBuffer | null | undefined,
  root: number,
): void {
  comm.clive("gather");
  const s = bufferArg("gather", "sbuf", sbuf);
  const r = rankArg("gather", "root", root, comm.size);
  const { size, rank } = comm;
  const n = s.length;
  let out: MpiBuffer | undefined;
  if (rank === r) {
    out = sameTypeArg("gather", "rbuf", rbuf, s, "sbuf");
    atLeast("gather", "rbuf", out, size * n, `size ${size} × count ${n}`);
  }
  const vr = (rank - r + size) % size;
  // Relative order: block i belongs to rank (i + root) % size; root 0 can gather in place.
  const tmp = out && r === 0 ? out : comm.rt.scratch.get(0, s, size * n);
  copyElems(tmp, 0, s, 0, n);
  let have = 1;
  for (let mask = 1; mask < size; mask <<= 1) {
    if (vr & mask) {
      comm.csend("gather", bytesOf(tmp, 0, have * n), (vr - mask + r) % size, TAG_GATHER);
      break;
    }
    const c = vr + mask;
    if (c < size) {
      const k = Math.min(mask, size - c);
      comm.crecv("gather", bytesOf(tmp, mask * n, k * n), (c + r) % size, TAG_GATHER);
      have += k;
    }
  }
  if (out && tmp !== out) {
    copyElems(out, r * n, tmp, 0, (size - r) * n);
    copyElems(out, 0, tmp, (size - r) * n, r * n);
  }
}

/** Binomial-tree scatter: each rank gets rbuf.length elements, block `rank` of sbuf (at root). */
export function scatter(
  comm: CollectiveTransport,
  sbuf: MpiBuffer | null | undefined,
  rbuf: MpiBuffer,
  root: number,
): void {
  comm.clive("scatter");
  const out = bufferArg("scatter", "rbuf", rbuf);
  const r = rankArg("scatter", "root", root, comm.size);
  const { size, rank } = comm;
  const n = out.length;
  const vr = (rank - r + size) % size;
  let tmp: MpiBuffer;
  let mask = 1;
  if (rank === r) {
    const s = sameTypeArg("scatter", "sbuf", sbuf, out, "rbuf");
    atLeast("scatter", "sbuf", s, size * n, `size ${size} × count ${n}`);
    if (r === 0) tmp = s;
    else {
      tmp = comm.rt.scratch.get(0, s, size * n);
      copyElems(tmp, 0, s, r * n, (size - r) * n);
      copyElems(tmp, (size - r) * n, s, 0, r * n);
    }
    while (mask < size) mask <<= 1;
  } else {
    tmp = out;
    while (mask < size) {
      if (vr & mask) {
        const k = Math.min(mask, size - vr);
        tmp = comm.rt.scratch.get(0, out, k * n);
        comm.crecv("scatter", bytesOf(tmp, 0, k * n), (vr - mask + r) % size, TAG_SCATTER);
        break;
      }
      mask <<= 1;
    }
  }
  const peers: number[] = [];
  for (mask >>= 1; mask > 0; mask >>= 1) {
    const c = vr + mask;
    if (c < size) {
      const k = Math.min(mask, size - c);
      comm.pending.push(comm.cisend(bytesOf(tmp, mask * n, k * n), (c + r) % size, TAG_SCATTER));
      peers.push((c + r) % size);
    }
  }
  comm.cwaitPending("scatter", peers);
  if (tmp !== out) copyElems(out, 0, tmp, 0, n);
}

/** Linear gather of counts[i] elements from rank i into rbuf at displs[i] (root). */
export function gatherv(
  comm: CollectiveTransport,
  sbuf: MpiBuffer,
  rbuf: MpiBuffer | null | undefined,
  counts: ArrayLike<number> | null | undefined,
  displs: ArrayLike<number> | null | undefined,
  root: number,
): void {
  comm.clive("gatherv");
  const s = bufferArg("gatherv", "sbuf", sbuf);
  const r = rankArg("gatherv", "root", root, comm.size);
  if (comm.rank !== r) {
    comm.csend("gatherv", bytesOf(s), r, TAG_GATHER);
    return;
  }
  const out = sameTypeArg("gatherv", "rbuf", rbuf, s, "sbuf");
  const [c, d] = blocksArg("gatherv", "rbuf", out, "counts", counts, "displs", displs, comm.size);
  if (c[r] !== s.length)
    throw new MpiError(`MPI gatherv: counts[${r}] = ${c[r]} but the root's sbuf has ${s.length} elements`);
  const peers: number[] = [];
  for (let i = 0; i < comm.size; i++) {
    if (i === r) continue;
    comm.pending.push(comm.cirecv(bytesOf(out, d[i], c[i]), i, TAG_GATHER));
    peers.push(i);
  }
  copyElems(out, d[r], s, 0, c[r]);
  comm.cwaitPending("gatherv", peers);
}

/** Linear scatter of counts[i] elements at displs[i] of sbuf (root) to rank i's rbuf (exactly that long). */
export function scatterv(
  comm: CollectiveTransport,
  sbuf: MpiBuffer | null | undefined,
  counts: ArrayLike<number> | null | undefined,
  displs: ArrayLike<number> | null | undefined,
  rbuf: MpiBuffer,
  root: number,
): void {
  comm.clive("scatterv");
  const out = bufferArg("scatterv", "rbuf", rbuf);
  const r = rankArg("scatterv", "root", root, comm.size);
  if (comm.rank !== r) {
    comm.crecv("scatterv", bytesOf(out), r, TAG_SCATTER);
    return;
  }
  const s = sameTypeArg("scatterv", "sbuf", sbuf, out, "rbuf");
  const [c, d] = blocksArg("scatterv", "sbuf", s, "counts", counts, "displs", displs, comm.size);
  if (c[r] !== out.length)
    throw new MpiError(`MPI scatterv: counts[${r}] = ${c[r]} but the root's rbuf has ${out.length} elements`);
  const peers: number[] = [];
  for (let i = 0; i < comm.size; i++) {
    if (i === r) continue;
    comm.pending.push(comm.cisend(bytesOf(s, d[i], c[i]), i, TAG_SCATTER));
    peers.push(i);
  }
  copyElems(out, 0, s, d[r], c[r]);
  comm.cwaitPending("scatterv", peers);
}

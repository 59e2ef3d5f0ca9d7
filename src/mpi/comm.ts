/**
 * Comm, the MPI communicator: the API a program calls, built in layers, one per file, each
 * importing only those below it —
 *
 *   comm.ts            Comm: the collectives' entry points, dup/split, alloc_mem, finalize
 *   coll-rooted.ts     bcast, reduce, gather, scatter, gatherv, scatterv
 *   coll-nonrooted.ts  barrier, allreduce, allgather(v), alltoall(v)
 *   coll-transport.ts  the collective context's exchanges (Comm extends it)
 *   p2p.ts             members, match bits, verified sources, send/recv/wait/probe
 *   request.ts, status.ts, args.ts, constants.ts, call-state.ts, runtime.ts, ops.ts, buffers.ts
 *
 * Comm extends the point-to-point layer rather than wrapping it, so a send or receive costs
 * no extra hop; a collective is one call into its algorithm's function. Every name this file
 * exported before the cut is exported from here still.
 */

import type { MpiBuffer } from "./buffers.js";
import * as nonRooted from "./coll-nonrooted.js";
import * as rooted from "./coll-rooted.js";
import { CollectiveTransport } from "./coll-transport.js";
import { IN_PLACE, type InPlace, MAX_CONTEXT } from "./constants.js";
import { MAX, MpiOp } from "./ops.js";
import { MpiError } from "./status.js";

export { ANY_SOURCE, ANY_TAG, IN_PLACE, type InPlace } from "./constants.js";
export { MpiRequest } from "./request.js";
export { Runtime } from "./runtime.js";
export { MpiError, type MpiStatus } from "./status.js";

export class Comm extends CollectiveTransport {
  /**
   * MPI_Alloc_mem: `bytes` of message memory in this rank's guest memory, so that large
   * messages go from it by the NIC's DMA with no bounce copy. Free with freeMem.
   */
  allocMem(bytes: number): Uint8Array {
    this.live("allocMem");
    return this.ep.alloc(bytes);
  }

  freeMem(buffer: Uint8Array): void {
    this.ep.free(buffer);
  }

  // ---- collectives (algorithms in coll-rooted.ts and coll-nonrooted.ts) ---------------------------

  /** Dissemination barrier: ceil(log2 size) rounds. */
  barrier(): void {
    nonRooted.barrier(this);
  }

  /** Binomial-tree broadcast of buf (its whole length) from root. */
  bcast(buf: MpiBuffer, root: number): void {
    rooted.bcast(this, buf, root);
  }

  /** Binomial-tree reduction to root (count = sbuf.length, or rbuf.length with IN_PLACE at root). */
  reduce(sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer | null | undefined, op: MpiOp, root: number): void {
    rooted.reduce(this, sbuf, rbuf, op, root);
  }

  /**
   * Allreduce: recursive doubling for small vectors, Rabenseifner (reduce-scatter by recursive
   * halving, allgather by recursive doubling) for large ones; a non-power-of-two size first
   * folds the extra ranks into their neighbours and hands them the result at the end.
   */
  allreduce(sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer, op: MpiOp): void {
    nonRooted.allreduce(this, sbuf, rbuf, op);
  }

  /** Binomial-tree gather: rbuf (at root) gets size blocks of sbuf.length elements, in rank order. */
  gather(sbuf: MpiBuffer, rbuf: MpiBuffer | null | undefined, root: number): void {
    rooted.gather(this, sbuf, rbuf, root);
  }

  /** Binomial-tree scatter: each rank gets rbuf.length elements, block `rank` of sbuf (at root). */
  scatter(sbuf: MpiBuffer | null | undefined, rbuf: MpiBuffer, root: number): void {
    rooted.scatter(this, sbuf, rbuf, root);
  }

  /** Linear gather of counts[i] elements from rank i into rbuf at displs[i] (root). */
  gatherv(
    sbuf: MpiBuffer,
    rbuf: MpiBuffer | null | undefined,
    counts: ArrayLike<number> | null | undefined,
    displs: ArrayLike<number> | null | undefined,
    root: number,
  ): void {
    rooted.gatherv(this, sbuf, rbuf, counts, displs, root);
  }

  /** Linear scatter of counts[i] elements at displs[i] of sbuf (root) to rank i's rbuf (exactly that long). */
  scatterv(
    sbuf: MpiBuffer | null | undefined,
    counts: ArrayLike<number> | null | undefined,
    displs: ArrayLike<number> | null | undefined,
    rbuf: MpiBuffer,
    root: number,
  ): void {
    rooted.scatterv(this, sbuf, counts, displs, rbuf, root);
  }

  /** Ring allgather: size − 1 steps, each passing one block to the right. */
  allgather(sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer): void {
    nonRooted.allgather(this, sbuf, rbuf);
  }

  /** Ring allgatherv: block i (counts[i] elements at displs[i] of rbuf) comes from rank i. */
  allgatherv(
    sbuf: MpiBuffer | InPlace,
    rbuf: MpiBuffer,
    counts: ArrayLike<number>,
    displs: ArrayLike<number>,
  ): void {
    nonRooted.allgatherv(this, sbuf, rbuf, counts, displs);
  }

  /** Pairwise-exchange alltoall: block j of sbuf goes to rank j, block i of rbuf comes from rank i. */
  alltoall(sbuf: MpiBuffer, rbuf: MpiBuffer): void {
    nonRooted.alltoall(this, sbuf, rbuf);
  }

  /** Pairwise-exchange alltoallv: scounts[j] elements at sdispls[j] go to rank j; rank i's land at rdispls[i]. */
  alltoallv(
    sbuf: MpiBuffer,
    scounts: ArrayLike<number>,
    sdispls: ArrayLike<number>,
    rbuf: MpiBuffer,
    rcounts: ArrayLike<number>,
    rdispls: ArrayLike<number>,
  ): void {
    nonRooted.alltoallv(this, sbuf, scounts, sdispls, rbuf, rcounts, rdispls);
  }

  // ---- communicators ----------------------------------------------------------------------------

  /** A fresh context id, agreed by all members: the largest next-free id any of them has. */
  private agreeContext(call: string): number {
    const v = new Int32Array([this.rt.nextContext]);
    this.allreduce(IN_PLACE, v, MAX);
    if (v[0] > MAX_CONTEXT)
      throw new MpiError(`MPI ${call}: out of context ids (${MAX_CONTEXT} communicators)`);
    this.rt.nextContext = v[0] + 1;
    return v[0];
  }

  /** Collective: the same group with a new context (its traffic never matches this one's). */
  dup(): Comm {
    this.live("dup");
    const ctx = this.agreeContext("dup");
    return new Comm(this.rt, ctx, this.worldRanks, this.rank);
  }

  /** Collective: ranks with the same color form a communicator, ordered by (key, old rank). */
  split(color: number, key: number): Comm {
    this.live("split");
    if (!Number.isInteger(color) || color < 0 || color > 0x7fffffff)
      throw new MpiError(`MPI split: color ${String(color)} must be a non-negative 32-bit integer`);
    if (!Number.isInteger(key) || key < -0x80000000 || key > 0x7fffffff)
      throw new MpiError(`MPI split: key ${String(key)} must be a 32-bit integer`);
    const all = new Int32Array(2 * this.size);
    this.allgather(new Int32Array([color, key]), all);
    const ctx = this.agreeContext("split");
    const members: number[] = [];
    for (let i = 0; i < this.size; i++) if (all[2 * i] === color) members.push(i);
    members.sort((a, b) => all[2 * a + 1] - all[2 * b + 1] || a - b);
    return new Comm(
      this.rt,
      ctx,
      members.map((i) => this.worldRanks[i]),
      members.indexOf(this.rank),
    );
  }

  /**
   * MPI_Finalize: a barrier of all ranks, then MX closes. Later calls throw. If the barrier
   * fails (a rank is gone), MX closes all the same and its error is thrown: finalize never
   * leaves the rank's endpoint open, nor its peers waiting on it.
   */
  finalize(): void {
    if (this.rt.finalized) return;
    try {
      this.rt.world.barrier();
    } catch (e) {
      if (!(e instanceof MpiError)) throw e;
      throw new MpiError(`MPI finalize: its barrier failed (MX is closed all the same): ${e.message}`);
    } finally {
      this.rt.finalized = true;
      this.rt.callState?.finalized();
      this.rt.mx.finalize();
    }
  }
}
export { MpiOp };

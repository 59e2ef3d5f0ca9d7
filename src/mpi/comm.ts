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
import { BOR, MpiOp } from "./ops.js";
import { MpiError } from "./status.js";

export { ANY_SOURCE, ANY_TAG, IN_PLACE, type InPlace } from "./constants.js";
export { MpiRequest } from "./request.js";
export { Runtime } from "./runtime.js";
export { MpiError, type MpiStatus } from "./status.js";

/** The most time free() spends discarding a communicator's leftovers (honest ones are a few messages). */
export const FREE_DISCARD_MS = 1000;

export class Comm extends CollectiveTransport {
  /** Messages sent on this communicator that no receive took, discarded by free(). */
  discarded = 0;

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

  /**
   * A fresh context id, agreed by all members: the lowest that none of them holds (the union
   * of their Runtime.contexts bitmaps, one 4 KiB allreduce). Two live communicators that share
   * a member never share an id, whichever of them freed what before.
   */
  private agreeContext(call: string): number {
    const held = this.rt.contexts;
    const union = held.slice();
    this.allreduce(IN_PLACE, union, BOR);
    for (let w = 0; w < union.length; w++) {
      const free = ~union[w];
      if (free === 0) continue;
      const id = w * 32 + (31 - Math.clz32(free & -free));
      held[w] |= 1 << (id & 31);
      return id;
    }
    throw new MpiError(
      `MPI ${call}: out of context ids: these ranks hold ${MAX_CONTEXT + 1} communicators between them; free() the ones you are done with`,
    );
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
   * MPI_Comm_free, collective over this communicator's members: a barrier, then its context id
   * goes back (a later dup or split may take it again) and every call on it fails from then on.
   * Its requests must be complete first (wait/test): a receive left posted could take a later
   * communicator's message, so free() refuses while one is. Messages sent on it that no
   * receive took are discarded (counted in `discarded`), rather than held in MX for ever: once
   * every member is in the barrier, what each sent before has reached this rank's channels
   * (read here); one still on a wire between hosts when free() returns is not (MPI calls a
   * program that frees a communicator with messages nobody receives erroneous).
   * A broken communicator (a member failed) is freed without the barrier. The world
   * communicator is not freed (MPI.finalize ends it).
   */
  free(): void {
    this.live("free");
    if (this === this.rt.world)
      throw new MpiError("MPI free: the world communicator cannot be freed (MPI.finalize ends it)");
    if (this.activeRequests > 0)
      throw new MpiError(
        `MPI free: ${this.activeRequests} request(s) of this communicator are not complete; wait for them first`,
      );
    try {
      if (this.broken === undefined) this.barrier();
    } catch (e) {
      if (!(e instanceof MpiError)) throw e;
      throw new MpiError(
        `MPI free: its barrier failed (the communicator is freed all the same): ${e.message}`,
      );
    } finally {
      this.freed = true;
      this.discardLeftovers();
      const id = this.ctxP2P >>> 1;
      this.rt.contexts[id >>> 5] &= ~(1 << (id & 31));
    }
  }

  private discardLeftovers(): void {
    const q = this.rt.selfQueue;
    for (let i = q.length - 1; i >= 0; i--)
      if (q[i].ctx === this.ctxP2P) {
        q.splice(i, 1);
        this.discarded++;
      }
    if (this.ep.closed) return;
    const none = new Uint8Array(0);
    // What is there now, within a budget: a job-mate that kept sending on the freed context
    // kept free() discarding for as long as it liked (15,000 messages, 7 s, at 100 % CPU). What
    // comes later stays in MX, as for any context no one receives on.
    const until = performance.now() + FREE_DISCARD_MS;
    for (const ctx of [this.ctxP2P, this.ctxColl]) {
      const hi = (ctx << 16) >>> 0;
      while (performance.now() < until && this.ep.iprobe(hi, 0, 0xffff0000, 0) !== undefined) {
        // A zero-byte receive takes it whole (truncated: a rendezvous moves no data).
        const req = this.ep.irecv(none, hi, 0, 0xffff0000, 0);
        if (this.ep.wait(req, 1000) === undefined) {
          this.drop(req);
          break;
        }
        this.discarded++;
      }
    }
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

/**
 * The collectives' transport: exchanges on a communicator's collective context (its second
 * context id), so user tags never meet collective traffic. Collectives name their peers
 * exactly (never ANY_SOURCE) and every rank passes matching counts, so a receive expects an
 * exact size and a mismatch fails the call; they rely on MX's per-peer FIFO matching, so
 * consecutive collectives need no sequence numbers. The c-prefixed methods are the
 * collective context's isend, irecv, wait, send, recv and sendrecv.
 *
 * The algorithms that use it are coll-rooted.ts and coll-nonrooted.ts; Comm (comm.ts)
 * extends this class.
 */

import { callCode, NONE, RECEIVING, SENDING } from "../cluster/rank-state.js";
import type { MxRequest, MxStatusInfo } from "../mx/endpoint.js";
import { MxStatus } from "../nic/status.js";
import { copyBytes } from "../xen/copy.js";
import { PointToPoint } from "./p2p.js";
import type { Runtime } from "./runtime.js";
import { failureHint, MpiError } from "./status.js";

/** The collective context's tags, one per kind of collective (a v-variant shares its kind's). */
export const TAG_BARRIER = 1;
export const TAG_BCAST = 2;
export const TAG_REDUCE = 3;
export const TAG_ALLREDUCE = 4;
export const TAG_GATHER = 5;
export const TAG_SCATTER = 6;
export const TAG_ALLGATHER = 7;
export const TAG_ALLTOALL = 8;

/**
 * A collective's copy to itself goes in pieces this large, with MX progress between them: the
 * exchange under way meanwhile (a peer's rendezvous to answer, pieces to read, room in our
 * lane to fill) is not held up by a copy of megabytes (IS class A copies 8 MB to itself).
 */
const LOCAL_COPY_PIECE = 256 * 1024;

/** A communicator's point-to-point layer plus the exchanges its collectives make. */
export class CollectiveTransport extends PointToPoint {
  private readonly sendHiColl: number;
  /** @internal Requests a collective has in flight at once (waited by cwaitPending). */
  readonly pending: MxRequest[] = [];

  /** @internal */
  constructor(rt: Runtime, context: number, worldRanks: readonly number[], rank: number) {
    super(rt, context, worldRanks, rank);
    this.sendHiColl = ((this.ctxColl << 16) | rank) >>> 0;
  }

  /** @internal */
  cisend(b: Uint8Array, dest: number, tag: number): MxRequest {
    return this.ep.isend(b, this.peers[dest]!, this.sendHiColl, tag);
  }

  /** @internal */
  cirecv(b: Uint8Array, src: number, tag: number): MxRequest {
    return this.ep.irecv(b, ((this.ctxColl << 16) | src) >>> 0, tag, 0xffffffff, 0xffffffff);
  }

  /** @internal */
  cwait(call: string, req: MxRequest, peer: number): void {
    const cs = this.rt.callState;
    let s: MxStatusInfo | undefined;
    if (cs === undefined || req.done) s = this.ep.wait(req);
    else {
      cs.block(callCode(call), req.kind === "send" ? SENDING : RECEIVING, this.worldRanks[peer], NONE);
      try {
        s = this.ep.wait(req);
      } finally {
        cs.unblock();
      }
    }
    if (!s) throw new MpiError(`MPI ${call}: interrupted`);
    // Matched on (context, peer) bits: the address must be that peer's too.
    if (req.kind === "recv" && s.source !== undefined) this.sourceOf(call, s);
    if (s.code === MxStatus.SUCCESS && (req.kind === "send" || s.msgLength === req.buffer.length)) return;
    if (s.code === MxStatus.SUCCESS || s.code === MxStatus.TRUNCATED)
      throw new MpiError(
        `MPI ${call}: rank ${peer} sent ${s.msgLength} bytes where ${req.buffer.length} were expected; every rank must pass matching counts and element types`,
      );
    throw new MpiError(`MPI ${call}: exchange with rank ${peer} failed: ${s.codeName} (${failureHint(s)})`);
  }

  /** @internal */
  csend(call: string, b: Uint8Array, dest: number, tag: number): void {
    this.cwait(call, this.cisend(b, dest, tag), dest);
  }

  /** @internal */
  crecv(call: string, b: Uint8Array, src: number, tag: number): void {
    this.cwait(call, this.cirecv(b, src, tag), src);
  }

  /** @internal */
  csendrecv(call: string, sb: Uint8Array, dest: number, rb: Uint8Array, src: number, tag: number): void {
    const r = this.cirecv(rb, src, tag);
    const s = this.cisend(sb, dest, tag);
    this.cwait(call, r, src);
    this.cwait(call, s, dest);
  }

  /**
   * @internal Copies `src` into `dst` (same length), moving this rank's messages between
   * pieces (LOCAL_COPY_PIECE). Buffers sharing memory are copied at once (set's overlap rules).
   */
  ccopy(dst: Uint8Array, src: Uint8Array): void {
    const n = src.length;
    if (n <= LOCAL_COPY_PIECE || dst.buffer === src.buffer) {
      copyBytes(dst, 0, src, 0, n);
      return;
    }
    for (let off = 0; off < n; off += LOCAL_COPY_PIECE) {
      const end = Math.min(n, off + LOCAL_COPY_PIECE);
      copyBytes(dst, off, src, off, end - off);
      this.ep.progress();
    }
  }

  /** @internal Waits for every request in this.pending (peers given alongside), then empties it. */
  cwaitPending(call: string, peers: number[]): void {
    const p = this.pending;
    try {
      for (let i = 0; i < p.length; i++) this.cwait(call, p[i], peers[i]);
    } finally {
      p.length = 0;
      peers.length = 0;
    }
  }
}

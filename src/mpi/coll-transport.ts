/**
 * The collectives' transport: exchanges on a communicator's collective context (its second
 * context id), so user tags never meet collective traffic. Collectives name their peers
 * exactly (never ANY_SOURCE) and every rank passes matching counts, so a receive expects an
 * exact size and a mismatch fails the call; they rely on MX's per-peer FIFO matching, so
 * consecutive collectives need no sequence numbers. The c-prefixed methods are the
 * collective context's isend, irecv, wait, send, recv and sendrecv.
 *
 * A failed member (design §3: never a hang). Every collective needs every member, so one with
 * a member whose MX peer is gone cannot complete: it fails at its start (clive) if this rank
 * knows, and an exchange that waits on such a member fails once it is seen gone (cwait waits
 * in slices of DEAD_CHECK_MS, as p2p.ts's receives do). A rank that leaves a collective with
 * an error leaves the others waiting on it, which may know nothing of the failure (the dead
 * rank is not their partner in this step, or their MX has not seen it go). So it tells them:
 * a notice (TAG_FAILED, the error's text) to every other member it can still reach, which a
 * waiting exchange looks for between its slices and fails with, naming that rank and its
 * error; a rank that finds a member gone also fails with a notice already here, the cause,
 * rather than with "unreachable". Either way the communicator is then broken (`broken`): the members are out of step,
 * and every later collective on it fails at its start with the first error (as ULFM's
 * MPI_Comm_revoke leaves a communicator; there is no MPI_Comm_shrink to go on with).
 * What the collective still had in flight goes on without a waiter (drop: p2p.ts), so MX's
 * queue keeps nothing of it. A bad argument throws before this rank posts anything: that
 * error is local, as in MPI, and leaves the communicator usable.
 * Point-to-point calls on it go on between live ranks.
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
/** A member left a collective with an error (the payload is its text): the others cannot complete theirs. */
export const TAG_FAILED = 9;

/** A notice's text is cut to this many bytes (it stays one small eager message). */
const NOTICE_MAX = 1024;

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
  /** @internal The error a collective on this communicator failed with; every later one fails with it. */
  broken: string | undefined = undefined;

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

  /**
   * @internal A collective's start (after its own checks): throws, and tells the others, if
   * this communicator is broken or a member is known gone — no collective can then complete.
   */
  clive(call: string): void {
    this.live(call);
    if (this.broken !== undefined)
      throw new MpiError(
        `MPI ${call}: an earlier collective on this communicator failed, so no other can complete: ${this.broken}`,
      );
    for (let r = 0; r < this.size; r++) {
      const why = this.peerGone(r);
      if (why === undefined) continue;
      this.failOnNotice(call);
      this.cfail(`MPI ${call}: ${this.unreachable(r, why)}; no collective on this communicator can complete`);
    }
  }

  /**
   * Fails with a member's notice if one came. A rank that left a collective with an error
   * told the others before its endpoint closed, so when this rank sees a member gone the
   * notice is often here too: it names the first error (the cause), "unreachable" only the
   * member that went after it. Which of the two a rank would see otherwise depends on how
   * soon it got here.
   */
  private failOnNotice(call: string): void {
    const notice = this.takeNotice(call);
    if (notice !== undefined) this.cfail(notice, false);
  }

  /** @internal */
  cwait(call: string, req: MxRequest, peer: number): void {
    const s = req.done ? this.ep.wait(req) : this.cblock(call, req, peer);
    if (!s) {
      this.drop(req);
      this.cfail(`MPI ${call}: interrupted (mx_wakeup) while it waited on rank ${peer}`);
    }
    // Matched on (context, peer) bits: the address must be that peer's too.
    if (req.kind === "recv" && s.source !== undefined) {
      try {
        this.sourceOf(call, s);
      } catch (e) {
        this.cfail((e as Error).message);
      }
    }
    if (s.code === MxStatus.SUCCESS && (req.kind === "send" || s.msgLength === req.buffer.length)) return;
    if (s.code === MxStatus.SUCCESS || s.code === MxStatus.TRUNCATED)
      this.cfail(
        `MPI ${call}: rank ${peer} sent ${s.msgLength} bytes where ${req.buffer.length} were expected; every rank must pass matching counts and element types`,
      );
    // A member that left this collective with an error told us so before it went: its notice
    // names the cause (a send to a member that left after it fails with "endpoint closed").
    this.failOnNotice(call);
    this.cfail(`MPI ${call}: exchange with rank ${peer} failed: ${s.codeName} (${failureHint(s)})`);
  }

  /**
   * Waits for an exchange with `peer`, in slices of DEAD_CHECK_MS: between them, fails if
   * `peer` is gone (a receive still unmatched is withdrawn; MX fails a send itself) or a
   * member sent a notice that it left this collective. Undefined on mx_wakeup.
   */
  private cblock(call: string, req: MxRequest, peer: number): MxStatusInfo | undefined {
    const cs = this.rt.callState;
    cs?.block(callCode(call), req.kind === "send" ? SENDING : RECEIVING, this.worldRanks[peer], NONE);
    try {
      return this.sliced(
        (ms) => this.ep.wait(req, ms),
        (first) => {
          if (!first) {
            const notice = this.takeNotice(call);
            if (notice !== undefined) {
              this.drop(req);
              this.cfail(notice, false);
            }
          }
          if (req.kind === "recv" && !req.done) {
            const why = this.peerGone(peer);
            if (why !== undefined && this.withdraw(req)) {
              this.failOnNotice(call);
              this.cfail(`MPI ${call}: exchange with rank ${peer} failed: ${this.unreachable(peer, why)}`);
            }
          }
          return undefined;
        },
      );
    } finally {
      cs?.unblock();
    }
  }

  /**
   * Fails the collective under way with `message`: the communicator is broken from now on,
   * and (`tell`) every other member this rank can reach gets a notice, so that none waits
   * for ever on a rank that left.
   */
  private cfail(message: string, tell = true): never {
    if (this.broken === undefined) {
      this.broken = message;
      if (tell) {
        // Forgotten (mx_forget): delivered as any send, never reported, so nothing to reap.
        const text = new TextEncoder().encode(message).subarray(0, NOTICE_MAX);
        for (let r = 0; r < this.size; r++)
          if (r !== this.rank && this.peerGone(r) === undefined)
            this.ep.forget(this.ep.isend(text, this.peers[r]!, this.sendHiColl, TAG_FAILED));
      }
    }
    throw new MpiError(message);
  }

  /** A member's notice that it left a collective, as this rank's error; undefined if none came. */
  private takeNotice(call: string): string | undefined {
    const hi = (this.ctxColl << 16) >>> 0;
    const p = this.ep.iprobe(hi, TAG_FAILED, 0xffff0000, 0xffffffff);
    if (p === undefined) return undefined;
    const b = new Uint8Array(Math.min(p.msgLength, NOTICE_MAX));
    const req = this.ep.irecv(b, p.matchHi, TAG_FAILED, 0xffffffff, 0xffffffff);
    // Eager and already here: the wait is bounded only against the unforeseen.
    const s = this.ep.wait(req, 1000);
    if (s === undefined) {
      this.drop(req);
      return undefined;
    }
    let from: string;
    try {
      from = `rank ${this.sourceOf(call, s)}`;
    } catch (e) {
      return (e as Error).message;
    }
    const text = new TextDecoder().decode(b.subarray(0, s.xferLength));
    return `MPI ${call}: ${from} left a collective on this communicator with an error, so this one cannot complete: ${text}`;
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
    this.cwaitPair(call, r, src, this.cisend(sb, dest, tag), dest);
  }

  /**
   * @internal Waits for an exchange's receive `r` (from `src`) and send `s` (to `dest`). A
   * send already done is looked at first: if it failed (its peer is gone), waiting on the
   * receive first could wait for ever. Whichever of the two is left when the first fails goes
   * on without a waiter (drop: withdrawn if unmatched, else forgotten).
   */
  cwaitPair(call: string, r: MxRequest, src: number, s: MxRequest, dest: number): void {
    const sendFirst = s.done;
    const first = sendFirst ? s : r;
    const second = sendFirst ? r : s;
    try {
      this.cwait(call, first, sendFirst ? dest : src);
    } catch (e) {
      this.drop(second);
      throw e;
    }
    this.cwait(call, second, sendFirst ? src : dest);
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
    let i = 0;
    try {
      for (; i < p.length; i++) this.cwait(call, p[i], peers[i]);
    } catch (e) {
      // The rest go on without a waiter: unmatched receives withdrawn, the others forgotten.
      for (let j = i + 1; j < p.length; j++) this.drop(p[j]);
      throw e;
    } finally {
      p.length = 0;
      peers.length = 0;
    }
  }
}

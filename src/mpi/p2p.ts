/**
 * The communicator's core and its point-to-point layer: members and context ids, the match
 * bits, the verified source of a message, send/recv, their non-blocking forms and completion
 * (wait, test, waitall, waitany), sendrecv, probe, and messages a rank sends to itself.
 *
 * Match bits: hi = (context id << 16) | source rank, lo = tag. Every communicator owns two
 * context ids (point-to-point, collectives), so user tags never meet collective traffic. The
 * source rank in the bits is only for matching: a receive's source is the rank whose MX
 * address delivered the message (verified below MPI: the channel the backend granted to
 * exactly the pair, the NIC's stamp, or the anti-spoofed source MAC), and a message whose
 * bits claim another rank is rejected. Messages a rank sends to itself never reach MX: they
 * are matched here. All calls block, like C MPI.
 *
 * A failed peer ends the calls that wait on it with an MpiError naming the rank and MX's
 * reason (design §3: never a hang). MX fails sends to a peer it has failed, but it matches
 * receives on bits, not peers: a posted receive from a rank whose MX peer is dead would wait
 * for ever. So a receive with an explicit source waits in slices of DEAD_CHECK_MS and looks
 * between them whether that rank's peer is gone (MxEndpoint.peerDead); if it is and the
 * receive is still unmatched, the receive is withdrawn (mx_cancel) and fails. A message the
 * peer sent before it failed is still delivered: only an unmatched receive is withdrawn.
 *
 * This is the hot path. The layers above (coll-transport.ts, then comm.ts) extend this class
 * rather than wrap it, so a send or receive reaches these methods with no extra hop.
 */

import { RECEIVING, SENDING } from "../cluster/rank-state.js";
import type { MxAddress, MxEndpoint, MxRequest, MxStatusInfo } from "../mx/endpoint.js";
import { MxStatus } from "../nic/status.js";
import { copyBytes } from "../xen/copy.js";
import { bufferArg, rankArg, tagArg } from "./args.js";
import { bytesOf, type MpiBuffer, typeName } from "./buffers.js";
import {
  CALL_PROBE,
  CALL_RECV,
  CALL_SEND,
  CALL_SENDRECV,
  CALL_WAIT,
  CALL_WAITALL,
  CALL_WAITANY,
} from "./call-state.js";
import { ANY_SOURCE, ANY_TAG } from "./constants.js";
import { MpiRequest } from "./request.js";
import type { Runtime } from "./runtime.js";
import { failureHint, MpiError, type MpiStatus, truncated } from "./status.js";

/**
 * How long a blocked receive (or probe) sleeps in MX before it looks again whether the rank
 * it waits on has failed, ms: the most a death noticed during a wait adds to its error.
 */
export const DEAD_CHECK_MS = 100;

/** A communicator's members and point-to-point calls (Comm, comm.ts, adds collectives). */
export class PointToPoint {
  /** @internal */ readonly ctxP2P: number;
  /** @internal */ readonly ctxColl: number;
  /** @internal MX address of each member (undefined for this rank). */
  protected readonly peers: (MxAddress | undefined)[];
  /** @internal */ protected readonly ep: MxEndpoint;
  private readonly sendHiP2P: number;
  /** This communicator's rank of each world rank, -1 for non-members. */
  private readonly commRankOf: Int32Array;
  /** @internal Point-to-point requests of this communicator not completed yet (free() refuses while any is). */
  activeRequests = 0;
  /** @internal free() was called: every later call fails. */
  freed = false;

  /** @internal */
  constructor(
    /** @internal */ readonly rt: Runtime,
    context: number,
    /** @internal World rank of each member, in this communicator's rank order. */
    readonly worldRanks: readonly number[],
    readonly rank: number,
  ) {
    this.ctxP2P = context * 2;
    this.ctxColl = context * 2 + 1;
    this.ep = rt.ep;
    this.peers = worldRanks.map((w) => rt.addrs[w]);
    this.sendHiP2P = ((this.ctxP2P << 16) | rank) >>> 0;
    this.commRankOf = new Int32Array(rt.addrs.length).fill(-1);
    for (let i = 0; i < worldRanks.length; i++) this.commRankOf[worldRanks[i]] = i;
  }

  /**
   * The rank a received message came from, by the MX address that delivered it — never by
   * the match bits, which the sender chose. A message whose bits claim another rank, or from
   * an address that is no member of this communicator, is counted and its receive fails with
   * this error: MX already matched it to the receive (reposting would let later messages
   * overtake it), and a job whose ranks forge their identity must not carry on unnoticed.
   */
  protected sourceOf(call: string, s: MxStatusInfo): number {
    const claimed = s.matchHi & 0xffff;
    const addr = s.source;
    const world = addr === undefined ? undefined : this.rt.rankOf.get(addr);
    const r = world === undefined ? -1 : this.commRankOf[world];
    if (r === claimed) return r;
    this.rt.rejected++;
    const who =
      world === undefined
        ? `${addr === undefined ? "no known address" : `MX address ${addr}`}, which is not a rank of this job`
        : r < 0
          ? `world rank ${world}, which is not a member of this communicator`
          : `rank ${r}`;
    throw new MpiError(
      `MPI ${call}: rejected a message (tag ${s.matchLo}, ${s.msgLength} bytes) whose match bits claim it comes from rank ${claimed}: it came from ${who}. A rank is known by its verified MX address, not by the bits it sends`,
    );
  }

  get size(): number {
    return this.worldRanks.length;
  }

  /** @internal Why member `r`'s MX peer is gone (MX's reason), or undefined while it lives (and for this rank). */
  peerGone(r: number): string | undefined {
    const a = this.peers[r];
    return a === undefined ? undefined : this.ep.peerDead(a);
  }

  /** @internal The sentence for a member whose MX peer is gone. */
  protected unreachable(r: number, why: string): string {
    return `rank ${r} is unreachable (this peer is disconnected: ${why})`;
  }

  /**
   * Why a receive from `source` can never be matched, or undefined: an exact source whose MX
   * peer is gone. MPI.ANY_SOURCE (only when `anySource`, for calls that block): when every
   * other member is gone. ULFM (MPI 4's fault-tolerance proposal) fails a wildcard receive
   * as soon as any potential sender fails, until the program acknowledges the failure with
   * MPI_Comm_failure_ack; this library has no acknowledgement, so that rule would fail every
   * later ANY_SOURCE receive on the communicator, even those the survivors go on sending to.
   * It fails one only when no member is left that could send it, and keeps waiting while one
   * is (as a receive from a live rank that never sends waits).
   */
  private unmatchable(source: number, anySource: boolean): string | undefined {
    if (source >= 0) {
      const why = this.peerGone(source);
      return why === undefined ? undefined : this.unreachable(source, why);
    }
    if (source !== ANY_SOURCE || !anySource) return undefined;
    const gone: string[] = [];
    for (let r = 0; r < this.size; r++) {
      if (r === this.rank) continue;
      const why = this.peerGone(r);
      if (why === undefined) return undefined;
      if (gone.length < 3) gone.push(`rank ${r}: ${why}`);
    }
    if (gone.length === 0) return undefined;
    const more = this.size - 1 > gone.length ? `; and ${this.size - 1 - gone.length} more` : "";
    return `every other rank of this communicator is unreachable, none can send it (${gone.join("; ")}${more})`;
  }

  /**
   * Ends an MX request nobody will wait for (an error abandoned the call midway): a receive
   * still unmatched is withdrawn; anything else is forgotten (mx_forget), so that it completes
   * as it would but the endpoint keeps nothing of it — a program that goes on after such
   * errors does not pile up completed requests, and the buffers they hold, for ever.
   */
  protected drop(mx: MxRequest): void {
    if (mx.kind === "recv" && !mx.done && this.ep.cancel(mx)) this.ep.test(mx);
    else this.ep.forget(mx);
  }

  /** @internal Withdraws an unmatched MX receive (mx_cancel, then reaped): false if it already matched. */
  protected withdraw(mx: MxRequest): boolean {
    if (mx.done) {
      this.ep.test(mx);
      return false;
    }
    if (!this.ep.cancel(mx)) return false;
    this.ep.test(mx);
    return true;
  }

  /**
   * If `req` (a receive) waits on a rank that is gone and is still unmatched, withdraws it
   * and throws its MpiError; else returns (a matched one completes: MX fails it if its
   * peer dies).
   */
  private failIfUnmatchable(req: MpiRequest, anySource: boolean): void {
    const mx = req.mx;
    if (req.kind !== "recv" || mx === undefined || mx.done) return;
    const why = this.unmatchable(req.peer, anySource);
    if (why === undefined || !this.withdraw(mx)) return;
    req.mx = undefined;
    this.retire(req);
    this.unpost(req);
    const from = req.peer >= 0 ? `from rank ${req.peer}` : "from MPI.ANY_SOURCE";
    const error = `recv ${from} (tag ${req.tag}) failed: ${why}`;
    throw new MpiError(`MPI: ${error}`, { source: req.peer, tag: req.tag, count: 0, bytes: 0, error });
  }

  /**
   * mx_wait for a request of this communicator. A send waits as MX waits (MX fails it if
   * its peer fails). A receive waits in slices of DEAD_CHECK_MS, failing (failIfUnmatchable)
   * once the rank it waits on is gone. Undefined on mx_wakeup, as mx_wait.
   */
  private mxWait(req: MpiRequest): MxStatusInfo | undefined {
    const mx = req.mx!;
    if (req.kind === "send" || mx.done) return this.ep.wait(mx);
    return this.sliced(
      (ms) => this.ep.wait(mx, ms),
      () => {
        this.failIfUnmatchable(req, true);
        return undefined;
      },
    );
  }

  /**
   * @internal A blocking MX call (`wait(ms)`: mx_wait, mx_probe) made in slices of
   * DEAD_CHECK_MS, so that a rank's failure is seen while we wait on it: `look(first)` runs
   * before each slice (first: before the first) and throws to end the wait, or returns what
   * to return instead of waiting. Undefined on mx_wakeup, as the MX call.
   */
  protected sliced<T>(
    wait: (ms: number) => T | undefined,
    look: (first: boolean) => T | undefined,
  ): T | undefined {
    for (let first = true; ; first = false) {
      const early = look(first);
      if (early !== undefined) return early;
      const start = performance.now();
      const r = wait(DEAD_CHECK_MS);
      // Returned before its timeout with nothing: mx_wakeup.
      if (r !== undefined || performance.now() - start < DEAD_CHECK_MS) return r;
    }
  }

  /** @internal Throws once MPI.finalize was called, or once this rank's MX endpoint was closed under MPI. */
  live(call: string): void {
    if (this.rt.finalized)
      throw new MpiError(`MPI ${call}: MPI.finalize was called; no MPI call may follow it`);
    if (this.freed) throw new MpiError(`MPI ${call}: this communicator was freed (comm.free())`);
    if (this.ep.closed)
      throw new MpiError(
        `MPI ${call}: this rank's MX endpoint ${this.ep.endpointId} was closed (mx_close_endpoint or mx_finalize called outside MPI); MPI needs it until MPI.finalize`,
      );
  }

  // ---- point-to-point ------------------------------------------------------------------------

  /** Blocking send (returns once `buf` may be reused). */
  send(buf: MpiBuffer, dest: number, tag: number): void {
    this.waitIn(CALL_SEND, this.startSend("send", buf, dest, tag));
  }

  /** Blocking receive; source may be MPI.ANY_SOURCE, tag MPI.ANY_TAG. */
  recv(buf: MpiBuffer, source: number, tag: number): MpiStatus {
    return this.waitIn(CALL_RECV, this.startRecv("recv", buf, source, tag));
  }

  isend(buf: MpiBuffer, dest: number, tag: number): MpiRequest {
    return this.startSend("isend", buf, dest, tag);
  }

  /** isend for the call the program made (`call` names it in errors: a bad dest of send is send's). */
  private startSend(call: string, buf: MpiBuffer, dest: number, tag: number): MpiRequest {
    this.live(call);
    const b = bufferArg(call, "buf", buf);
    const d = rankArg(call, "dest", dest, this.size);
    const t = tagArg(call, tag);
    const bytes = bytesOf(b);
    const req = new MpiRequest("send", this, b.BYTES_PER_ELEMENT, d, t, bytes.length);
    if (d === this.rank) {
      this.sendToSelf(bytes, t);
      req.local = { source: d, tag: t, count: b.length, bytes: bytes.length };
    } else {
      req.mx = this.ep.isend(bytes, this.peers[d]!, this.sendHiP2P, t);
    }
    this.activeRequests++;
    return req;
  }

  irecv(buf: MpiBuffer, source: number, tag: number): MpiRequest {
    return this.startRecv("irecv", buf, source, tag);
  }

  private startRecv(call: string, buf: MpiBuffer, source: number, tag: number): MpiRequest {
    const req = this.postRecv(call, buf, source, tag);
    this.activeRequests++;
    return req;
  }

  private postRecv(call: string, buf: MpiBuffer, source: number, tag: number): MpiRequest {
    this.live(call);
    const b = bufferArg(call, "buf", buf);
    const s = rankArg(call, "source", source, this.size, true);
    const t = tagArg(call, tag, true);
    const bytes = bytesOf(b);
    const req = new MpiRequest("recv", this, b.BYTES_PER_ELEMENT, s, t, bytes.length);
    if (s === this.rank || s === ANY_SOURCE) {
      const q = this.rt.selfQueue;
      for (let i = 0; i < q.length; i++) {
        const m = q[i];
        if (m.ctx === this.ctxP2P && (t === ANY_TAG || m.tag === t)) {
          q.splice(i, 1);
          this.deliverSelf(req, bytes, m.data, m.tag);
          return req;
        }
      }
      if (s === this.rank) {
        this.rt.selfPosted.push({ req, ctx: this.ctxP2P, tag: t, buf: bytes });
        req.selfPosted = true;
        return req;
      }
    }
    const hi = s === ANY_SOURCE ? (this.ctxP2P << 16) >>> 0 : ((this.ctxP2P << 16) | s) >>> 0;
    req.mx = this.ep.irecv(
      bytes,
      hi,
      t === ANY_TAG ? 0 : t,
      s === ANY_SOURCE ? 0xffff0000 : 0xffffffff,
      t === ANY_TAG ? 0 : 0xffffffff,
    );
    if (s === ANY_SOURCE) {
      // A later send to self may still satisfy it (MX then gives the receive back: cancel).
      this.rt.selfPosted.push({ req, ctx: this.ctxP2P, tag: t, buf: bytes });
      req.selfPosted = true;
    }
    return req;
  }

  private sendToSelf(bytes: Uint8Array, tag: number): void {
    const posted = this.rt.selfPosted;
    for (let i = 0; i < posted.length; i++) {
      const p = posted[i];
      if (p.ctx !== this.ctxP2P || (p.tag !== ANY_TAG && p.tag !== tag)) continue;
      if (p.req.mx) {
        // An ANY_SOURCE receive: ours only if MX has not matched it yet.
        if (!this.ep.cancel(p.req.mx)) continue;
        this.ep.test(p.req.mx);
        p.req.mx = undefined;
      }
      posted.splice(i, 1);
      p.req.selfPosted = false;
      this.deliverSelf(p.req, p.buf, bytes, tag);
      return;
    }
    this.rt.selfQueue.push({ ctx: this.ctxP2P, tag, data: bytes.slice() });
  }

  private deliverSelf(req: MpiRequest, into: Uint8Array, data: Uint8Array, tag: number): void {
    const n = Math.min(into.length, data.length);
    copyBytes(into, 0, data, 0, n);
    const st: MpiStatus = { source: this.rank, tag, count: Math.floor(n / req.bpe), bytes: n };
    if (n < data.length) st.error = truncated(data.length, this.rank, tag, into.length);
    req.local = st;
  }

  /** The request is complete (or abandoned): no longer active, nor counted against its communicator. */
  private retire(req: MpiRequest): void {
    if (!req.active) return;
    req.active = false;
    (req.comm as PointToPoint).activeRequests--;
  }

  private unpost(req: MpiRequest): void {
    if (!req.selfPosted) return;
    const posted = this.rt.selfPosted;
    for (let i = 0; i < posted.length; i++)
      if (posted[i].req === req) {
        posted.splice(i, 1);
        break;
      }
    req.selfPosted = false;
  }

  private finish(req: MpiRequest, s: MxStatusInfo | undefined): MpiStatus {
    this.retire(req);
    this.unpost(req);
    if (!s) throw new MpiError(`MPI wait: the ${req.kind} was interrupted (mx_wakeup) before it completed`);
    let st: MpiStatus;
    if (req.kind === "send") {
      st = { source: req.peer, tag: req.tag, count: s.msgLength / req.bpe, bytes: s.msgLength };
    } else {
      // A receive that matched nothing (closed, cancelled) has no source to check.
      const src = s.source === undefined ? req.peer : this.sourceOf("wait", s);
      st = { source: src, tag: s.matchLo, count: Math.floor(s.xferLength / req.bpe), bytes: s.xferLength };
      if (s.code === MxStatus.TRUNCATED) st.error = truncated(s.msgLength, src, s.matchLo, req.capacity);
    }
    if (s.code !== MxStatus.SUCCESS && !st.error)
      st.error = `${req.kind} ${req.kind === "send" ? "to" : "from"} rank ${req.kind === "send" ? req.peer : st.source} failed: ${s.codeName} (${failureHint(s)})`;
    return this.result(st);
  }

  private result(st: MpiStatus): MpiStatus {
    if (st.error) throw new MpiError(`MPI: ${st.error}`, st);
    return st;
  }

  private checkReq(call: string, req: unknown): MpiRequest {
    this.live(call);
    if (!(req instanceof MpiRequest))
      throw new MpiError(`MPI ${call}: ${typeName(req)} is not an MpiRequest`);
    if (!req.active)
      throw new MpiError(
        `MPI ${call}: this request was already completed (by wait, test, waitall or waitany)`,
      );
    return req;
  }

  /** Blocks until the request completes; throws MpiError on truncation or a failed peer. */
  wait(req: MpiRequest): MpiStatus {
    return this.waitIn(CALL_WAIT, req);
  }

  /** wait() on behalf of `call` (the name the --timeout report gives while it blocks). */
  private waitIn(call: number, req: MpiRequest): MpiStatus {
    this.checkReq("wait", req);
    if (req.local) {
      this.retire(req);
      return this.result(req.local);
    }
    if (!req.mx)
      throw new MpiError(
        `MPI wait: a receive from this rank itself (tag ${req.tag}) has no matching send to self; waiting would block forever`,
      );
    const cs = this.rt.callState;
    if (cs === undefined || req.mx.done) return this.finish(req, this.mxWait(req));
    const peer = req.peer >= 0 ? this.worldRanks[req.peer] : req.peer;
    cs.block(call, req.kind === "send" ? SENDING : RECEIVING, peer, req.tag);
    try {
      return this.finish(req, this.mxWait(req));
    } finally {
      cs.unblock();
    }
  }

  /** The status if the request has completed, else undefined (non-blocking). */
  test(req: MpiRequest): MpiStatus | undefined {
    this.checkReq("test", req);
    if (req.local) {
      this.retire(req);
      return this.result(req.local);
    }
    if (!req.mx) return undefined;
    const s = this.ep.test(req.mx);
    if (s) return this.finish(req, s);
    // An ANY_SOURCE receive is not failed here: a send to self may still match it.
    this.failIfUnmatchable(req, false);
    return undefined;
  }

  waitall(reqs: MpiRequest[]): MpiStatus[] {
    if (!Array.isArray(reqs)) throw new MpiError("MPI waitall: reqs must be an array of MpiRequest");
    for (const r of reqs) this.checkReq("waitall", r);
    return reqs.map((r) => this.waitIn(CALL_WAITALL, r));
  }

  /** Completes one of the requests (skipping completed ones); which one and its status. */
  waitany(reqs: MpiRequest[]): { index: number; status: MpiStatus } {
    this.live("waitany");
    if (!Array.isArray(reqs)) throw new MpiError("MPI waitany: reqs must be an array of MpiRequest");
    let first = -1;
    for (let i = 0; i < reqs.length; i++) {
      const r = reqs[i];
      if (!(r instanceof MpiRequest)) throw new MpiError(`MPI waitany: reqs[${i}] is not an MpiRequest`);
      if (r.active && first < 0) first = i;
    }
    if (first < 0) throw new MpiError("MPI waitany: no active request in reqs (all were already completed)");
    for (;;) {
      let blockOn = -1;
      for (let i = first; i < reqs.length; i++) {
        const r = reqs[i];
        if (!r.active) continue;
        if (r.local || r.mx?.done) return { index: i, status: this.wait(r) };
        this.failIfUnmatchable(r, true);
        if (r.mx && blockOn < 0) blockOn = i;
      }
      if (blockOn < 0)
        throw new MpiError("MPI waitany: only receives from this rank itself remain, with no send to self");
      // Sleep on one request for at most 1 ms, then look at all of them again.
      const b = reqs[blockOn];
      this.rt.callState?.block(
        CALL_WAITANY,
        b.kind === "send" ? SENDING : RECEIVING,
        b.peer >= 0 ? this.worldRanks[b.peer] : b.peer,
        b.tag,
      );
      const s = this.ep.wait(b.mx!, 1);
      this.rt.callState?.unblock();
      if (s) return { index: blockOn, status: this.finish(reqs[blockOn], s) };
    }
  }

  sendrecv(
    sbuf: MpiBuffer,
    dest: number,
    stag: number,
    rbuf: MpiBuffer,
    source: number,
    rtag: number,
  ): MpiStatus {
    const r = this.startRecv("sendrecv", rbuf, source, rtag);
    let s: MpiRequest;
    try {
      s = this.startSend("sendrecv", sbuf, dest, stag);
    } catch (e) {
      // A bad send argument is the caller's error: the receive posted for it goes again.
      this.abandon(r);
      throw e;
    }
    if (s.mx?.done) {
      // Done at once: perhaps failed (its peer is gone). Its error comes first, and the
      // receive is withdrawn rather than left to take a later message.
      try {
        this.waitIn(CALL_SENDRECV, s);
      } catch (e) {
        this.abandon(r);
        throw e;
      }
      return this.waitIn(CALL_SENDRECV, r);
    }
    let st: MpiStatus;
    try {
      st = this.waitIn(CALL_SENDRECV, r);
    } catch (e) {
      // The send stays with MX, which completes or fails it, unreported.
      if (s.mx) this.drop(s.mx);
      s.mx = undefined;
      this.retire(s);
      throw e;
    }
    this.waitIn(CALL_SENDRECV, s);
    return st;
  }

  /** Ends a receive nobody will wait for: withdrawn from MX if still unmatched (a matched one completes into its buffer). */
  private abandon(req: MpiRequest): void {
    if (req.mx) this.drop(req.mx);
    req.mx = undefined;
    this.retire(req);
    this.unpost(req);
  }

  /** Waits for a matching message without receiving it. Pass a TypedArray class to get count in its elements. */
  probe(source: number, tag: number, type?: { BYTES_PER_ELEMENT: number }): MpiStatus {
    const st = this.iprobe(source, tag, type);
    if (st) return st;
    const s = rankArg("probe", "source", source, this.size, true);
    const t = tagArg("probe", tag, true);
    if (s === this.rank)
      throw new MpiError(
        `MPI probe: no message from this rank itself (tag ${tag}) is queued; probing would block forever`,
      );
    const [hi, lo, mhi, mlo] = this.matchOf(s, t);
    const cs = this.rt.callState;
    cs?.block(CALL_PROBE, RECEIVING, s >= 0 ? this.worldRanks[s] : s, t);
    try {
      // In slices, as a receive waits: no message can come from a rank that is gone.
      const st = this.sliced(
        (ms) => this.ep.probe(ms, hi, lo, mhi, mlo),
        () => {
          const why = this.unmatchable(s, true);
          if (why === undefined) return undefined;
          // It may have come in the progress that noticed the failure.
          const last = this.ep.iprobe(hi, lo, mhi, mlo);
          if (last !== undefined) return last;
          throw new MpiError(
            `MPI probe: no message ${s >= 0 ? `from rank ${s}` : "from MPI.ANY_SOURCE"} (tag ${tag}) can come: ${why}`,
          );
        },
      );
      return this.probeStatus(st, type);
    } finally {
      cs?.unblock();
    }
  }

  iprobe(source: number, tag: number, type?: { BYTES_PER_ELEMENT: number }): MpiStatus | undefined {
    this.live("iprobe");
    const s = rankArg("iprobe", "source", source, this.size, true);
    const t = tagArg("iprobe", tag, true);
    const bpe = type?.BYTES_PER_ELEMENT ?? 1;
    if (s === this.rank || s === ANY_SOURCE) {
      for (const m of this.rt.selfQueue)
        if (m.ctx === this.ctxP2P && (t === ANY_TAG || m.tag === t))
          return {
            source: this.rank,
            tag: m.tag,
            count: Math.floor(m.data.length / bpe),
            bytes: m.data.length,
          };
      if (s === this.rank) return undefined;
    }
    const [hi, lo, mhi, mlo] = this.matchOf(s, t);
    const st = this.ep.iprobe(hi, lo, mhi, mlo);
    return st ? this.probeStatus(st, type) : undefined;
  }

  private matchOf(s: number, t: number): [number, number, number, number] {
    return [
      s === ANY_SOURCE ? (this.ctxP2P << 16) >>> 0 : ((this.ctxP2P << 16) | s) >>> 0,
      t === ANY_TAG ? 0 : t,
      s === ANY_SOURCE ? 0xffff0000 : 0xffffffff,
      t === ANY_TAG ? 0 : 0xffffffff,
    ];
  }

  private probeStatus(s: MxStatusInfo | undefined, type?: { BYTES_PER_ELEMENT: number }): MpiStatus {
    if (!s) throw new MpiError("MPI probe: interrupted before a message arrived");
    const bpe = type?.BYTES_PER_ELEMENT ?? 1;
    return {
      source: this.sourceOf("probe", s),
      tag: s.matchLo,
      count: Math.floor(s.msgLength / bpe),
      bytes: s.msgLength,
    };
  }
}

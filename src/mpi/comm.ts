/**
 * A communicator: point-to-point messaging and collectives over one MX endpoint per rank.
 *
 * Match bits: hi = (context id << 16) | source rank, lo = tag. Every communicator owns two
 * context ids (point-to-point, collectives), so user tags never meet collective traffic. The
 * source rank in the bits is only for matching: a receive's source is the rank whose MX
 * address delivered the message (verified below MPI: the channel the backend granted to
 * exactly the pair, the NIC's stamp, or the anti-spoofed source MAC), and a message whose
 * bits claim another rank is rejected. Messages a rank sends to itself never reach MX: they
 * are matched here.
 *
 * Collectives name their peers exactly (never ANY_SOURCE) and rely on MX's per-peer FIFO
 * matching, so consecutive collectives need no sequence numbers. All calls block, like C MPI.
 */

import { callCode, NONE, type RankStateWriter, RECEIVING, SENDING } from "../cluster/rank-state.js";
import type { MxAddress, MxEndpoint, MxRequest, MxStatusInfo } from "../mx/endpoint.js";
import type { Mx } from "../mx/mx.js";
import { MxStatus } from "../nic/status.js";
import { bytesOf, isMpiBuffer, MAX, type MpiBuffer, MpiOp, Scratch, typeName } from "./ops.js";

export const ANY_SOURCE = -1;
export const ANY_TAG = -1;
/** Pass as sbuf of reduce/allreduce/allgather(v): the data is already in rbuf. */
export const IN_PLACE: unique symbol = Symbol("MPI.IN_PLACE");
export type InPlace = typeof IN_PLACE;

/** Context ids are 16 bits; each communicator takes two (2k, 2k + 1). */
const MAX_CONTEXT = 0x7fff;
const MAX_TAG = 0x7fffffff;

const TAG_BARRIER = 1;
const TAG_BCAST = 2;
const TAG_REDUCE = 3;
const TAG_ALLREDUCE = 4;
const TAG_GATHER = 5;
const TAG_SCATTER = 6;
const TAG_ALLGATHER = 7;
const TAG_ALLTOALL = 8;
/** Above this many bytes allreduce switches from recursive doubling to Rabenseifner. */
const ALLREDUCE_LARGE = 8192;

export interface MpiStatus {
  source: number;
  tag: number;
  /** Elements received (bytes / element size; for probe, of the type passed, else bytes). */
  count: number;
  bytes: number;
  error?: string;
}

/** An MPI call that failed: says which call, which argument and what to fix. */
export class MpiError extends Error {
  constructor(
    message: string,
    readonly status?: MpiStatus,
  ) {
    super(message);
    this.name = "MpiError";
  }
}

interface SelfMessage {
  ctx: number;
  tag: number;
  data: Uint8Array;
}

interface SelfPost {
  req: MpiRequest;
  ctx: number;
  tag: number;
  buf: Uint8Array;
}

/** What every communicator of one rank shares: the endpoint, addresses, context counter. */
/** Codes of the calls the --timeout report names (cluster/rank-state.ts CALL_NAMES). */
const C_SEND = callCode("MPI_Send");
const C_RECV = callCode("MPI_Recv");
const C_WAIT = callCode("MPI_Wait");
const C_WAITALL = callCode("MPI_Waitall");
const C_WAITANY = callCode("MPI_Waitany");
const C_SENDRECV = callCode("MPI_Sendrecv");
const C_PROBE = callCode("MPI_Probe");

export class Runtime {
  finalized = false;
  /** The next free context id (base; 0 is the world's). */
  nextContext = 1;
  readonly scratch = new Scratch();
  readonly selfQueue: SelfMessage[] = [];
  readonly selfPosted: SelfPost[] = [];
  world!: Comm;
  /** World rank of each peer's MX address (the addresses MPI.init connected). */
  readonly rankOf = new Map<MxAddress, number>();
  /** Messages rejected because their match bits claimed a rank their sender's address is not. */
  rejected = 0;
  /** Where `myrixen run --timeout` reads which call this rank blocks in (cluster/rank-state.ts). */
  callState: RankStateWriter | undefined = undefined;

  constructor(
    readonly mx: Mx,
    readonly ep: MxEndpoint,
    /** MX address of each world rank (undefined for this rank). */
    readonly addrs: (MxAddress | undefined)[],
  ) {
    for (let r = 0; r < addrs.length; r++) if (addrs[r] !== undefined) this.rankOf.set(addrs[r]!, r);
  }
}

/** A non-blocking send or receive; complete it with wait/test/waitall/waitany. */
export class MpiRequest {
  /** @internal */ mx: MxRequest | undefined;
  /** @internal The status, when the request completed without MX (a message to self). */
  local: MpiStatus | undefined;
  /** @internal */ active = true;
  /** @internal */ selfPosted = false;

  /** @internal */
  constructor(
    readonly kind: "send" | "recv",
    /** @internal */ readonly comm: Comm,
    /** @internal */ readonly bpe: number,
    /** @internal The destination (send) or requested source (receive). */
    readonly peer: number,
    readonly tag: number,
    /** @internal Bytes of the buffer. */
    readonly capacity: number,
  ) {}
}

const EMPTY = new Uint8Array(0);

function isPow2(n: number): boolean {
  return (n & (n - 1)) === 0;
}

function copyElems(dst: MpiBuffer, dOff: number, src: MpiBuffer, sOff: number, n: number): void {
  if (n > 0) bytesOf(dst, dOff, n).set(bytesOf(src, sOff, n));
}

export class Comm {
  /** @internal */ readonly ctxP2P: number;
  /** @internal */ readonly ctxColl: number;
  private readonly peers: (MxAddress | undefined)[];
  private readonly ep: MxEndpoint;
  private readonly sendHiP2P: number;
  private readonly sendHiColl: number;
  private readonly pending: MxRequest[] = [];
  /** This communicator's rank of each world rank, -1 for non-members. */
  private readonly commRankOf: Int32Array;

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
    this.sendHiColl = ((this.ctxColl << 16) | rank) >>> 0;
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
  private sourceOf(call: string, s: MxStatusInfo): number {
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

  // ---- argument checks -------------------------------------------------------------------

  private live(call: string): void {
    if (this.rt.finalized)
      throw new MpiError(`MPI ${call}: MPI.finalize was called; no MPI call may follow it`);
  }

  private buf(call: string, name: string, b: unknown): MpiBuffer {
    if (!isMpiBuffer(b))
      throw new MpiError(
        `MPI ${call}: ${name} must be a numeric TypedArray (Float64Array, Int32Array, ...), got ${typeName(b)}`,
      );
    return b;
  }

  private sameType(call: string, name: string, b: unknown, like: MpiBuffer, likeName: string): MpiBuffer {
    const x = this.buf(call, name, b);
    if (x.constructor !== like.constructor)
      throw new MpiError(
        `MPI ${call}: ${name} is a ${typeName(x)} but ${likeName} is a ${typeName(like)}; both must have the same element type`,
      );
    return x;
  }

  private atLeast(call: string, name: string, b: MpiBuffer, n: number, why: string): void {
    if (b.length < n)
      throw new MpiError(`MPI ${call}: ${name} has ${b.length} elements but needs at least ${n} (${why})`);
  }

  private rankArg(call: string, name: string, r: unknown, anyOk = false): number {
    if (anyOk && r === ANY_SOURCE) return ANY_SOURCE;
    if (typeof r !== "number" || !Number.isInteger(r) || r < 0 || r >= this.size)
      throw new MpiError(
        `MPI ${call}: ${name} ${String(r)} is out of range: ranks of this communicator are 0..${this.size - 1}${anyOk ? " (or MPI.ANY_SOURCE)" : ""}`,
      );
    return r;
  }

  private tagArg(call: string, t: unknown, anyOk = false): number {
    if (anyOk && t === ANY_TAG) return ANY_TAG;
    if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > MAX_TAG)
      throw new MpiError(
        `MPI ${call}: tag ${String(t)} is invalid: tags are integers 0..${MAX_TAG}${anyOk ? " (or MPI.ANY_TAG)" : ""}`,
      );
    return t;
  }

  private opArg(call: string, op: unknown): MpiOp {
    if (!(op instanceof MpiOp))
      throw new MpiError(
        `MPI ${call}: op ${String(op)} is not an MPI operation (use MPI.SUM, MPI.MIN, MPI.MAX, MPI.PROD)`,
      );
    return op;
  }

  private vecArg(call: string, name: string, v: unknown): ArrayLike<number> {
    const ok =
      (Array.isArray(v) || (ArrayBuffer.isView(v) && !(v instanceof DataView))) &&
      (v as ArrayLike<unknown>).length >= this.size;
    if (!ok)
      throw new MpiError(`MPI ${call}: ${name} must be an array of ${this.size} integers (one per rank)`);
    const a = v as ArrayLike<number>;
    for (let i = 0; i < this.size; i++)
      if (!Number.isInteger(a[i]) || a[i] < 0)
        throw new MpiError(`MPI ${call}: ${name}[${i}] = ${String(a[i])} must be a non-negative integer`);
    return a;
  }

  /** counts/displs describe blocks inside `b`: each must fit. */
  private blocks(
    call: string,
    bname: string,
    b: MpiBuffer,
    cname: string,
    counts: unknown,
    dname: string,
    displs: unknown,
  ): [ArrayLike<number>, ArrayLike<number>] {
    const c = this.vecArg(call, cname, counts);
    const d = this.vecArg(call, dname, displs);
    for (let i = 0; i < this.size; i++)
      if (d[i] + c[i] > b.length)
        throw new MpiError(
          `MPI ${call}: block ${i} (${dname}[${i}] = ${d[i]}, ${cname}[${i}] = ${c[i]}) ends past the end of ${bname} (${b.length} elements)`,
        );
    return [c, d];
  }

  // ---- point-to-point ------------------------------------------------------------------------

  /** Blocking send (returns once `buf` may be reused). */
  send(buf: MpiBuffer, dest: number, tag: number): void {
    this.waitIn(C_SEND, this.isend(buf, dest, tag));
  }

  /** Blocking receive; source may be MPI.ANY_SOURCE, tag MPI.ANY_TAG. */
  recv(buf: MpiBuffer, source: number, tag: number): MpiStatus {
    return this.waitIn(C_RECV, this.irecv(buf, source, tag));
  }

  isend(buf: MpiBuffer, dest: number, tag: number): MpiRequest {
    this.live("isend");
    const b = this.buf("isend", "buf", buf);
    const d = this.rankArg("isend", "dest", dest);
    const t = this.tagArg("isend", tag);
    const bytes = bytesOf(b);
    const req = new MpiRequest("send", this, b.BYTES_PER_ELEMENT, d, t, bytes.length);
    if (d === this.rank) {
      this.sendToSelf(bytes, t);
      req.local = { source: d, tag: t, count: b.length, bytes: bytes.length };
    } else {
      req.mx = this.ep.isend(bytes, this.peers[d]!, this.sendHiP2P, t);
    }
    return req;
  }

  irecv(buf: MpiBuffer, source: number, tag: number): MpiRequest {
    this.live("irecv");
    const b = this.buf("irecv", "buf", buf);
    const s = this.rankArg("irecv", "source", source, true);
    const t = this.tagArg("irecv", tag, true);
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
    into.set(n === data.length ? data : data.subarray(0, n));
    const st: MpiStatus = { source: this.rank, tag, count: Math.floor(n / req.bpe), bytes: n };
    if (n < data.length) st.error = truncated(data.length, this.rank, tag, into.length);
    req.local = st;
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
    req.active = false;
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
    return this.waitIn(C_WAIT, req);
  }

  /** wait() on behalf of `call` (the name the --timeout report gives while it blocks). */
  private waitIn(call: number, req: MpiRequest): MpiStatus {
    this.checkReq("wait", req);
    if (req.local) {
      req.active = false;
      return this.result(req.local);
    }
    if (!req.mx)
      throw new MpiError(
        `MPI wait: a receive from this rank itself (tag ${req.tag}) has no matching send to self; waiting would block forever`,
      );
    const cs = this.rt.callState;
    if (cs === undefined || req.mx.done) return this.finish(req, this.ep.wait(req.mx));
    const peer = req.peer >= 0 ? this.worldRanks[req.peer] : req.peer;
    cs.block(call, req.kind === "send" ? SENDING : RECEIVING, peer, req.tag);
    try {
      return this.finish(req, this.ep.wait(req.mx));
    } finally {
      cs.unblock();
    }
  }

  /** The status if the request has completed, else undefined (non-blocking). */
  test(req: MpiRequest): MpiStatus | undefined {
    this.checkReq("test", req);
    if (req.local) {
      req.active = false;
      return this.result(req.local);
    }
    if (!req.mx) return undefined;
    const s = this.ep.test(req.mx);
    return s ? this.finish(req, s) : undefined;
  }

  waitall(reqs: MpiRequest[]): MpiStatus[] {
    if (!Array.isArray(reqs)) throw new MpiError("MPI waitall: reqs must be an array of MpiRequest");
    for (const r of reqs) this.checkReq("waitall", r);
    return reqs.map((r) => this.waitIn(C_WAITALL, r));
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
        if (r.mx && blockOn < 0) blockOn = i;
      }
      if (blockOn < 0)
        throw new MpiError("MPI waitany: only receives from this rank itself remain, with no send to self");
      // Sleep on one request for at most 1 ms, then look at all of them again.
      const b = reqs[blockOn];
      this.rt.callState?.block(
        C_WAITANY,
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
    const r = this.irecv(rbuf, source, rtag);
    const s = this.isend(sbuf, dest, stag);
    const st = this.waitIn(C_SENDRECV, r);
    this.waitIn(C_SENDRECV, s);
    return st;
  }

  /** Waits for a matching message without receiving it. Pass a TypedArray class to get count in its elements. */
  probe(source: number, tag: number, type?: { BYTES_PER_ELEMENT: number }): MpiStatus {
    const st = this.iprobe(source, tag, type);
    if (st) return st;
    const s = this.rankArg("probe", "source", source, true);
    const t = this.tagArg("probe", tag, true);
    if (s === this.rank)
      throw new MpiError(
        `MPI probe: no message from this rank itself (tag ${tag}) is queued; probing would block forever`,
      );
    const [hi, lo, mhi, mlo] = this.matchOf(s, t);
    const cs = this.rt.callState;
    cs?.block(C_PROBE, RECEIVING, s >= 0 ? this.worldRanks[s] : s, t);
    try {
      return this.probeStatus(this.ep.probe(0, hi, lo, mhi, mlo), type);
    } finally {
      cs?.unblock();
    }
  }

  iprobe(source: number, tag: number, type?: { BYTES_PER_ELEMENT: number }): MpiStatus | undefined {
    this.live("iprobe");
    const s = this.rankArg("iprobe", "source", source, true);
    const t = this.tagArg("iprobe", tag, true);
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

  // ---- collective transport (context ctxColl, exact sources, exact sizes) --------------------------

  private cisend(b: Uint8Array, dest: number, tag: number): MxRequest {
    return this.ep.isend(b, this.peers[dest]!, this.sendHiColl, tag);
  }

  private cirecv(b: Uint8Array, src: number, tag: number): MxRequest {
    return this.ep.irecv(b, ((this.ctxColl << 16) | src) >>> 0, tag, 0xffffffff, 0xffffffff);
  }

  private cwait(call: string, req: MxRequest, peer: number): void {
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

  private csend(call: string, b: Uint8Array, dest: number, tag: number): void {
    this.cwait(call, this.cisend(b, dest, tag), dest);
  }

  private crecv(call: string, b: Uint8Array, src: number, tag: number): void {
    this.cwait(call, this.cirecv(b, src, tag), src);
  }

  private csendrecv(
    call: string,
    sb: Uint8Array,
    dest: number,
    rb: Uint8Array,
    src: number,
    tag: number,
  ): void {
    const r = this.cirecv(rb, src, tag);
    const s = this.cisend(sb, dest, tag);
    this.cwait(call, r, src);
    this.cwait(call, s, dest);
  }

  /** Waits for every request in this.pending (peers given alongside), then empties it. */
  private cwaitPending(call: string, peers: number[]): void {
    const p = this.pending;
    try {
      for (let i = 0; i < p.length; i++) this.cwait(call, p[i], peers[i]);
    } finally {
      p.length = 0;
      peers.length = 0;
    }
  }

  // ---- collectives ------------------------------------------------------------------------------

  /** Dissemination barrier: ceil(log2 size) rounds. */
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

  barrier(): void {
    this.live("barrier");
    const { size, rank } = this;
    for (let k = 1; k < size; k <<= 1)
      this.csendrecv("barrier", EMPTY, (rank + k) % size, EMPTY, (rank - k + size) % size, TAG_BARRIER);
  }

  /** Binomial-tree broadcast of buf (its whole length) from root. */
  bcast(buf: MpiBuffer, root: number): void {
    this.live("bcast");
    const b = bytesOf(this.buf("bcast", "buf", buf));
    const r = this.rankArg("bcast", "root", root);
    const { size, rank } = this;
    const vr = (rank - r + size) % size;
    let mask = 1;
    while (mask < size) {
      if (vr & mask) {
        this.crecv("bcast", b, (rank - mask + size) % size, TAG_BCAST);
        break;
      }
      mask <<= 1;
    }
    const peers: number[] = [];
    for (mask >>= 1; mask > 0; mask >>= 1) {
      if (vr + mask < size) {
        const d = (rank + mask) % size;
        this.pending.push(this.cisend(b, d, TAG_BCAST));
        peers.push(d);
      }
    }
    this.cwaitPending("bcast", peers);
  }

  /** Binomial-tree reduction to root (count = sbuf.length, or rbuf.length with IN_PLACE at root). */
  reduce(sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer | null | undefined, op: MpiOp, root: number): void {
    this.live("reduce");
    const o = this.opArg("reduce", op);
    const r = this.rankArg("reduce", "root", root);
    const { size, rank } = this;
    const isRoot = rank === r;
    let src: MpiBuffer;
    let out: MpiBuffer | undefined;
    if (sbuf === IN_PLACE) {
      if (!isRoot) throw new MpiError("MPI reduce: MPI.IN_PLACE is only allowed as sbuf at the root");
      out = this.buf("reduce", "rbuf", rbuf);
      src = out;
    } else {
      src = this.buf("reduce", "sbuf", sbuf);
      if (isRoot) {
        out = this.sameType("reduce", "rbuf", rbuf, src, "sbuf");
        this.atLeast("reduce", "rbuf", out, src.length, "the count of sbuf");
      }
    }
    const n = src.length;
    const acc = out ?? this.rt.scratch.get(0, src, n);
    if (acc !== src) copyElems(acc, 0, src, 0, n);
    if (size === 1) return;
    const tmp = this.rt.scratch.get(1, src, n);
    const vr = (rank - r + size) % size;
    for (let mask = 1; mask < size; mask <<= 1) {
      if ((vr & mask) === 0) {
        const c = vr | mask;
        if (c < size) {
          this.crecv("reduce", bytesOf(tmp, 0, n), (c + r) % size, TAG_REDUCE);
          o.apply(acc, 0, tmp, 0, n);
        }
      } else {
        this.csend("reduce", bytesOf(acc, 0, n), ((vr & ~mask) + r) % size, TAG_REDUCE);
        break;
      }
    }
  }

  /**
   * Allreduce: recursive doubling for small vectors, Rabenseifner (reduce-scatter by recursive
   * halving, allgather by recursive doubling) for large ones; a non-power-of-two size first
   * folds the extra ranks into their neighbours and hands them the result at the end.
   */
  allreduce(sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer, op: MpiOp): void {
    this.live("allreduce");
    const o = this.opArg("allreduce", op);
    let acc: MpiBuffer;
    let n: number;
    if (sbuf === IN_PLACE) {
      acc = this.buf("allreduce", "rbuf", rbuf);
      n = acc.length;
    } else {
      const s = this.buf("allreduce", "sbuf", sbuf);
      acc = this.sameType("allreduce", "rbuf", rbuf, s, "sbuf");
      n = s.length;
      this.atLeast("allreduce", "rbuf", acc, n, "the count of sbuf");
      copyElems(acc, 0, s, 0, n);
    }
    const { size, rank } = this;
    if (size === 1) return;
    const tmp = this.rt.scratch.get(1, acc, n);
    const all = bytesOf(acc, 0, n);
    let pof2 = 1;
    while (pof2 * 2 <= size) pof2 *= 2;
    const rem = size - pof2;
    let newrank: number;
    if (rank < 2 * rem) {
      if (rank % 2 === 0) {
        this.csend("allreduce", all, rank + 1, TAG_ALLREDUCE);
        newrank = -1;
      } else {
        this.crecv("allreduce", bytesOf(tmp, 0, n), rank - 1, TAG_ALLREDUCE);
        o.apply(acc, 0, tmp, 0, n);
        newrank = rank >> 1;
      }
    } else newrank = rank - rem;
    const real = (nr: number) => (nr < rem ? nr * 2 + 1 : nr + rem);
    if (newrank >= 0) {
      if (n * acc.BYTES_PER_ELEMENT <= ALLREDUCE_LARGE || n < pof2) {
        for (let mask = 1; mask < pof2; mask <<= 1) {
          const dst = real(newrank ^ mask);
          this.csendrecv("allreduce", all, dst, bytesOf(tmp, 0, n), dst, TAG_ALLREDUCE);
          o.apply(acc, 0, tmp, 0, n);
        }
      } else this.rabenseifner(acc, tmp, n, o, pof2, newrank, real);
    }
    if (rank < 2 * rem) {
      if (rank % 2 === 1) this.csend("allreduce", all, rank - 1, TAG_ALLREDUCE);
      else this.crecv("allreduce", all, rank + 1, TAG_ALLREDUCE);
    }
  }

  private rabenseifner(
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
      this.csendrecv(
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
      this.csendrecv(
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

  /** Binomial-tree gather: rbuf (at root) gets size blocks of sbuf.length elements, in rank order. */
  gather(sbuf: MpiBuffer, rbuf: MpiBuffer | null | undefined, root: number): void {
    this.live("gather");
    const s = this.buf("gather", "sbuf", sbuf);
    const r = this.rankArg("gather", "root", root);
    const { size, rank } = this;
    const n = s.length;
    let out: MpiBuffer | undefined;
    if (rank === r) {
      out = this.sameType("gather", "rbuf", rbuf, s, "sbuf");
      this.atLeast("gather", "rbuf", out, size * n, `size ${size} × count ${n}`);
    }
    const vr = (rank - r + size) % size;
    // Relative order: block i belongs to rank (i + root) % size; root 0 can gather in place.
    const tmp = out && r === 0 ? out : this.rt.scratch.get(0, s, size * n);
    copyElems(tmp, 0, s, 0, n);
    let have = 1;
    for (let mask = 1; mask < size; mask <<= 1) {
      if (vr & mask) {
        this.csend("gather", bytesOf(tmp, 0, have * n), (vr - mask + r) % size, TAG_GATHER);
        break;
      }
      const c = vr + mask;
      if (c < size) {
        const k = Math.min(mask, size - c);
        this.crecv("gather", bytesOf(tmp, mask * n, k * n), (c + r) % size, TAG_GATHER);
        have += k;
      }
    }
    if (out && tmp !== out) {
      copyElems(out, r * n, tmp, 0, (size - r) * n);
      copyElems(out, 0, tmp, (size - r) * n, r * n);
    }
  }

  /** Binomial-tree scatter: each rank gets rbuf.length elements, block `rank` of sbuf (at root). */
  scatter(sbuf: MpiBuffer | null | undefined, rbuf: MpiBuffer, root: number): void {
    this.live("scatter");
    const out = this.buf("scatter", "rbuf", rbuf);
    const r = this.rankArg("scatter", "root", root);
    const { size, rank } = this;
    const n = out.length;
    const vr = (rank - r + size) % size;
    let tmp: MpiBuffer;
    let mask = 1;
    if (rank === r) {
      const s = this.sameType("scatter", "sbuf", sbuf, out, "rbuf");
      this.atLeast("scatter", "sbuf", s, size * n, `size ${size} × count ${n}`);
      if (r === 0) tmp = s;
      else {
        tmp = this.rt.scratch.get(0, s, size * n);
        copyElems(tmp, 0, s, r * n, (size - r) * n);
        copyElems(tmp, (size - r) * n, s, 0, r * n);
      }
      while (mask < size) mask <<= 1;
    } else {
      tmp = out;
      while (mask < size) {
        if (vr & mask) {
          const k = Math.min(mask, size - vr);
          tmp = this.rt.scratch.get(0, out, k * n);
          this.crecv("scatter", bytesOf(tmp, 0, k * n), (vr - mask + r) % size, TAG_SCATTER);
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
        this.pending.push(this.cisend(bytesOf(tmp, mask * n, k * n), (c + r) % size, TAG_SCATTER));
        peers.push((c + r) % size);
      }
    }
    this.cwaitPending("scatter", peers);
    if (tmp !== out) copyElems(out, 0, tmp, 0, n);
  }

  /** Linear gather of counts[i] elements from rank i into rbuf at displs[i] (root). */
  gatherv(
    sbuf: MpiBuffer,
    rbuf: MpiBuffer | null | undefined,
    counts: ArrayLike<number> | null | undefined,
    displs: ArrayLike<number> | null | undefined,
    root: number,
  ): void {
    this.live("gatherv");
    const s = this.buf("gatherv", "sbuf", sbuf);
    const r = this.rankArg("gatherv", "root", root);
    if (this.rank !== r) {
      this.csend("gatherv", bytesOf(s), r, TAG_GATHER);
      return;
    }
    const out = this.sameType("gatherv", "rbuf", rbuf, s, "sbuf");
    const [c, d] = this.blocks("gatherv", "rbuf", out, "counts", counts, "displs", displs);
    if (c[r] !== s.length)
      throw new MpiError(`MPI gatherv: counts[${r}] = ${c[r]} but the root's sbuf has ${s.length} elements`);
    const peers: number[] = [];
    for (let i = 0; i < this.size; i++) {
      if (i === r) continue;
      this.pending.push(this.cirecv(bytesOf(out, d[i], c[i]), i, TAG_GATHER));
      peers.push(i);
    }
    copyElems(out, d[r], s, 0, c[r]);
    this.cwaitPending("gatherv", peers);
  }

  /** Linear scatter of counts[i] elements at displs[i] of sbuf (root) to rank i's rbuf (exactly that long). */
  scatterv(
    sbuf: MpiBuffer | null | undefined,
    counts: ArrayLike<number> | null | undefined,
    displs: ArrayLike<number> | null | undefined,
    rbuf: MpiBuffer,
    root: number,
  ): void {
    this.live("scatterv");
    const out = this.buf("scatterv", "rbuf", rbuf);
    const r = this.rankArg("scatterv", "root", root);
    if (this.rank !== r) {
      this.crecv("scatterv", bytesOf(out), r, TAG_SCATTER);
      return;
    }
    const s = this.sameType("scatterv", "sbuf", sbuf, out, "rbuf");
    const [c, d] = this.blocks("scatterv", "sbuf", s, "counts", counts, "displs", displs);
    if (c[r] !== out.length)
      throw new MpiError(
        `MPI scatterv: counts[${r}] = ${c[r]} but the root's rbuf has ${out.length} elements`,
      );
    const peers: number[] = [];
    for (let i = 0; i < this.size; i++) {
      if (i === r) continue;
      this.pending.push(this.cisend(bytesOf(s, d[i], c[i]), i, TAG_SCATTER));
      peers.push(i);
    }
    copyElems(out, 0, s, d[r], c[r]);
    this.cwaitPending("scatterv", peers);
  }

  /** Ring allgather: size − 1 steps, each passing one block to the right. */
  allgather(sbuf: MpiBuffer | InPlace, rbuf: MpiBuffer): void {
    this.live("allgather");
    const { size, rank } = this;
    let out: MpiBuffer;
    let n: number;
    if (sbuf === IN_PLACE) {
      out = this.buf("allgather", "rbuf", rbuf);
      if (out.length % size !== 0)
        throw new MpiError(
          `MPI allgather: with MPI.IN_PLACE rbuf's length (${out.length}) must be a multiple of size ${size}`,
        );
      n = out.length / size;
    } else {
      const s = this.buf("allgather", "sbuf", sbuf);
      out = this.sameType("allgather", "rbuf", rbuf, s, "sbuf");
      n = s.length;
      this.atLeast("allgather", "rbuf", out, size * n, `size ${size} × count ${n}`);
      copyElems(out, rank * n, s, 0, n);
    }
    const counts = this.rt.scratch.get(2, new Int32Array(0), 2 * size) as Int32Array;
    for (let i = 0; i < size; i++) {
      counts[i] = n;
      counts[size + i] = i * n;
    }
    this.ring("allgather", out, counts, size);
  }

  /** Ring allgatherv: block i (counts[i] elements at displs[i] of rbuf) comes from rank i. */
  allgatherv(
    sbuf: MpiBuffer | InPlace,
    rbuf: MpiBuffer,
    counts: ArrayLike<number>,
    displs: ArrayLike<number>,
  ): void {
    this.live("allgatherv");
    const { size, rank } = this;
    const out = sbuf === IN_PLACE ? this.buf("allgatherv", "rbuf", rbuf) : undefined;
    const s = sbuf === IN_PLACE ? undefined : this.buf("allgatherv", "sbuf", sbuf);
    const o = out ?? this.sameType("allgatherv", "rbuf", rbuf, s!, "sbuf");
    const [c, d] = this.blocks("allgatherv", "rbuf", o, "counts", counts, "displs", displs);
    if (s) {
      if (c[rank] !== s.length)
        throw new MpiError(`MPI allgatherv: counts[${rank}] = ${c[rank]} but sbuf has ${s.length} elements`);
      copyElems(o, d[rank], s, 0, c[rank]);
    }
    const cd = this.rt.scratch.get(2, new Int32Array(0), 2 * size) as Int32Array;
    for (let i = 0; i < size; i++) {
      cd[i] = c[i];
      cd[size + i] = d[i];
    }
    this.ring("allgatherv", o, cd, size);
  }

  private ring(call: string, out: MpiBuffer, cd: Int32Array, size: number): void {
    const rank = this.rank;
    const right = (rank + 1) % size;
    const left = (rank - 1 + size) % size;
    for (let i = 0; i < size - 1; i++) {
      const sb = (rank - i + size) % size;
      const rb = (rank - i - 1 + size) % size;
      this.csendrecv(
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
  alltoall(sbuf: MpiBuffer, rbuf: MpiBuffer): void {
    this.live("alltoall");
    const s = this.buf("alltoall", "sbuf", sbuf);
    const out = this.sameType("alltoall", "rbuf", rbuf, s, "sbuf");
    const size = this.size;
    if (s.length % size !== 0)
      throw new MpiError(
        `MPI alltoall: sbuf's length (${s.length}) must be a multiple of size ${size} (one block per rank)`,
      );
    const n = s.length / size;
    this.atLeast("alltoall", "rbuf", out, s.length, `size ${size} × count ${n}`);
    this.pairwise(
      "alltoall",
      s,
      out,
      () => n,
      (i) => i * n,
      () => n,
      (i) => i * n,
    );
  }

  alltoallv(
    sbuf: MpiBuffer,
    scounts: ArrayLike<number>,
    sdispls: ArrayLike<number>,
    rbuf: MpiBuffer,
    rcounts: ArrayLike<number>,
    rdispls: ArrayLike<number>,
  ): void {
    this.live("alltoallv");
    const s = this.buf("alltoallv", "sbuf", sbuf);
    const out = this.sameType("alltoallv", "rbuf", rbuf, s, "sbuf");
    const [sc, sd] = this.blocks("alltoallv", "sbuf", s, "scounts", scounts, "sdispls", sdispls);
    const [rc, rd] = this.blocks("alltoallv", "rbuf", out, "rcounts", rcounts, "rdispls", rdispls);
    if (sc[this.rank] !== rc[this.rank])
      throw new MpiError(
        `MPI alltoallv: scounts[${this.rank}] = ${sc[this.rank]} differs from rcounts[${this.rank}] = ${rc[this.rank]} (this rank's block to itself)`,
      );
    this.pairwise(
      "alltoallv",
      s,
      out,
      (i) => sc[i],
      (i) => sd[i],
      (i) => rc[i],
      (i) => rd[i],
    );
  }

  private pairwise(
    call: string,
    s: MpiBuffer,
    out: MpiBuffer,
    sc: (i: number) => number,
    sd: (i: number) => number,
    rc: (i: number) => number,
    rd: (i: number) => number,
  ): void {
    const { size, rank } = this;
    copyElems(out, rd(rank), s, sd(rank), sc(rank));
    const pow2 = isPow2(size);
    for (let i = 1; i < size; i++) {
      const dst = pow2 ? rank ^ i : (rank + i) % size;
      const src = pow2 ? rank ^ i : (rank - i + size) % size;
      this.csendrecv(
        call,
        bytesOf(s, sd(dst), sc(dst)),
        dst,
        bytesOf(out, rd(src), rc(src)),
        src,
        TAG_ALLTOALL,
      );
    }
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

  /** MPI_Finalize: a barrier of all ranks, then MX closes. Later calls throw. */
  finalize(): void {
    if (this.rt.finalized) return;
    this.rt.world.barrier();
    this.rt.finalized = true;
    this.rt.callState?.finalized();
    this.rt.mx.finalize();
  }
}

/** What the library knows about a failed request, or the likely cause. */
function failureHint(s: MxStatusInfo): string {
  if (s.reason !== undefined) return s.reason;
  if (s.code === MxStatus.NO_RESOURCES)
    return "no room for it on the other side or its NIC; if the ranks are short of memory, give them more with myrixen run --pages";
  return "the peer's endpoint closed or the rank died?";
}

function truncated(msgBytes: number, source: number, tag: number, capacity: number): string {
  return `message truncated: ${msgBytes} bytes from rank ${source} (tag ${tag}) do not fit the receive buffer of ${capacity} bytes (MPI_ERR_TRUNCATE)`;
}

export { MpiOp };

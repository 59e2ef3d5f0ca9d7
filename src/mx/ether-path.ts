/**
 * The way to a peer over Ethernet — MX over Ethernet through the guest's netfront, netback
 * and the driver domain's bridge: the split path, and the fallback (ether.ts has the frames,
 * the hub and each peer's reliable stream; ether-connect.ts finds the peers). As Open-MX
 * without its kernel driver, the library does everything itself:
 *
 *   eager       the message in consecutive frames of the peer's stream (all or none)
 *   rendezvous  an announcement; the receiver asks with PULL and the sender streams DATA
 *               frames straight into the receive buffer (`serve`), then the receiver NOTIFYs
 *   path        a PATH frame tells a peer which path we are on; each pair's sequence numbers
 *               put messages that raced along two ways back in order (matching.ts)
 *   NACK        "no such endpoint here": the peer is failed at once, not timed out
 *
 * Every frame names its sender in its header, and its source MAC (anti-spoofed by netback)
 * must be the one the peer was learned at: anything else is dropped and counted.
 */
import { MxStatus } from "../nic/status.js";
import { ETHER_TRACE_BYTES, etherTraceId, putEtherTrace } from "../nic/trace-ring.js";
import { copyBytes } from "../xen/copy.js";
import { frameWord, MxoeType, MxoeWord, PAYLOAD_AT } from "../xen/io/mxoe.js";
import { macAt } from "./bytes.js";
import type { Completion } from "./completion.js";
import {
  type EtherHub,
  EtherLink,
  macString,
  PEER_TIMEOUT_MS,
  setFrameType,
  setFrameWord,
  TX_WINDOW,
} from "./ether.js";
import type { Matching } from "./matching.js";
import type { PartnerTable } from "./partner.js";
import type { PendingSends } from "./pending-sends.js";
import { FLAG_TRACED, TraceStage, traceNow } from "./trace.js";
import {
  type EndpointContext,
  InboundRecord,
  type MxRequest,
  nextSendSeq,
  type Partner,
  type PeerLossListener,
  type PeerPath,
  type Puller,
  RequestState,
} from "./types.js";

/** A closing endpoint resends its unacknowledged Ethernet frames for at most this long (ms). */
const LINGER_MS = 2000;
/** An eager message over Ethernet is at most this long (its frames are gathered in memory). */
export const ETHER_EAGER_MAX = 64 * 1024;

/** What the Ethernet path uses of its endpoint. */
export interface EtherPathParts {
  readonly ctx: EndpointContext;
  readonly partners: PartnerTable;
  readonly sends: PendingSends;
  readonly completion: Completion;
  readonly matching: Matching;
}

/** Rendezvous data a peer pulls from us, streamed as the window allows. */
interface ServeJob {
  req: MxRequest;
  pullId: number;
  off: number;
  end: number;
}

/** A rendezvous we pull over Ethernet: DATA frames land straight in the receive buffer. */
interface EtherPull {
  recv: MxRequest;
  source: Partner;
  syncId: number;
  xfer: number;
  got: number;
}

/** A DATA frame's offset when the sender has no send for the PULL it answers (no payload). */
const PULL_REFUSED = 0xffffffff;

/**
 * How long a stream whose partner failed keeps what it still owed (unacknowledged frames)
 * for the same incarnation of the peer to connect again and get it (EtherEngine.open), ms.
 * Past it, the frames go as payload-less ones (expireOwing): a full window of copies is half
 * a MiB, and one was kept per peer address that ever failed owing frames.
 */
export const FAILED_STREAM_KEEP_MS = 30_000;

/** Control frames (PATH, PULL, NOTIFY) queued for one peer while its window is shut, at most. */
export const MAX_QUEUED_CONTROL = 4096;
/** Numbers a queued control frame takes in EtherPath.ctlQueue. */
const CONTROL_WORDS = 5;

/** One partner over Ethernet: its reliable frame stream and what waits on it. */
export class EtherPath implements PeerPath {
  /** Control frames waiting for window room: (type, id, offset, msgSeq, length) fives. */
  ctlQueue: number[] | undefined = undefined;
  /** Rendezvous data the peer pulls from us, in order. */
  serving: ServeJob[] | undefined = undefined;
  /** An eager message arriving in several frames. */
  rxEager: { seq: number; buf: Uint8Array; got: number } | undefined = undefined;

  constructor(
    readonly peer: Partner,
    readonly link: EtherLink,
    private readonly engine: EtherEngine,
  ) {}

  trySend(req: MxRequest): boolean {
    return this.engine.trySend(this, req);
  }

  notify(syncId: number, xfer: number, status: number): void {
    this.engine.control(this, MxoeType.Notify, syncId, xfer, status, 0);
  }

  /**
   * Something still goes this way: the pair is routed over Ethernet, or frames, acks, data or
   * out-of-order messages are owed either way. A partner that only was on the split path once
   * is not: its Ethernet stream is kept (a later switch needs no new connect), idle.
   */
  get busy(): boolean {
    const peer = this.peer;
    if (peer.dead !== undefined) return false;
    const link = this.link;
    return (
      peer.path === this ||
      link.unacked > 0 ||
      link.ackOwed ||
      (this.ctlQueue !== undefined && this.ctlQueue.length > 0) ||
      (this.serving !== undefined && this.serving.length > 0) ||
      this.rxEager !== undefined ||
      (peer.held !== undefined && peer.held.length > 0)
    );
  }

  /** Control frames are waiting for window room (data must not overtake them). */
  get controlQueued(): boolean {
    return this.ctlQueue !== undefined && this.ctlQueue.length > 0;
  }
}

/** The Ethernet path of a partner, if it has one. */
export function etherOf(peer: Partner): EtherPath | undefined {
  const e = peer.ether;
  return e instanceof EtherPath ? e : undefined;
}

/** The endpoint's MX over Ethernet: its frames from the hub, its peers' streams, connects and pulls. */
export class EtherEngine implements Puller, PeerLossListener {
  /** Partners reached over Ethernet (their timers and queues run after every hub poll). */
  private readonly peers: EtherPath[] = [];
  /** Each address's newest stream, kept past its partner (`open`): one per address, as the partner index. */
  private readonly streams = new Map<string, EtherPath>();
  /** Some partner's Ethernet stream is in use (EtherPath.busy) or a pull over it is, as of the last hub poll. */
  private busy = false;
  private readonly pulls = new Map<number, EtherPull>();
  /** Streams whose partner failed while they owed frames, and since when (performance.now()). */
  private readonly owing: { link: EtherLink; since: number }[] = [];
  /** When the first of `owing` is due to give up what it owes (expireOwing). */
  private owingDue = Number.POSITIVE_INFINITY;
  /** Rendezvous sends a PULL was taken for: one each (a receiver pulls once). */
  private readonly served = new WeakSet<MxRequest>();
  /** The record matching gets (refilled per frame). */
  private readonly rec = new InboundRecord(this);
  private readonly ctx: EndpointContext;
  private readonly partners: PartnerTable;

  constructor(
    readonly hub: EtherHub,
    private readonly parts: EtherPathParts,
  ) {
    this.ctx = parts.ctx;
    this.partners = parts.partners;
  }

  /**
   * `peer`'s way over Ethernet from now on, to `mac` (ether-connect.ts learned it): the
   * address's previous stream if that was to the same incarnation of the peer (its session)
   * at the same MAC, else a new one. Ethernet has no connection for the peer to see close: it
   * keeps its side of the stream across our mx_disconnect and connect, so ours goes on where
   * it stopped, with what it still owes. A new stream from 1 had every frame of the next
   * connection dropped as a resend by a peer that kept its own (a rank connecting, sending
   * and disconnecting in a loop over the split path lost 236 of its 240 sends).
   */
  open(peer: Partner, mac: Uint8Array): EtherPath {
    const key = `${peer.nic}:${peer.endpoint}`;
    const last = this.streams.get(key);
    const sameIncarnation = last !== undefined && last.link.peerSession === peer.session;
    const atItsMac = sameIncarnation && macAt(mac, 0, last.link.mac);
    let path: EtherPath;
    if (atItsMac && last.peer.dead !== undefined) {
      path = new EtherPath(peer, last.link, this);
      path.rxEager = last.rxEager;
      // Refusals its failure could not write yet (peerLost) go first.
      path.ctlQueue = last.ctlQueue;
      this.dropOwing(last.link);
    } else {
      const ctx = this.ctx;
      const self = { nic: ctx.nicId, ep: ctx.endpointId, session: ctx.session };
      const link = new EtherLink(this.hub, mac, self, peer.nic, peer.endpoint, peer.session);
      path = new EtherPath(peer, link, this);
    }
    // A claim at another MAC never displaces the kept stream of the same incarnation: only a
    // forger makes one (netback anti-spoofs MACs), and a forged CONNECT from its own MAC for a
    // peer we had disconnected cut the real peer's stream (a reviewer's PoC: all of the next
    // connection's sends lost, each said SUCCESS).
    if (!sameIncarnation || atItsMac) {
      // A new incarnation's stream replaces the kept one, which nothing takes up any more.
      if (last !== undefined && !sameIncarnation) this.dropOwing(last.link);
      this.streams.set(key, path);
    }
    peer.ether = path;
    this.peers.push(path);
    this.busy = true;
    return path;
  }

  /** Tells the peer which path we are on (a sequenced PATH frame). */
  sendPath(path: EtherPath): void {
    this.control(path, MxoeType.Path, 0, 0, this.partners.split ? 1 : 0, 0);
  }

  /** Our MAC, as text. */
  get mac(): string {
    return macString(this.hub.mac);
  }

  /**
   * Some partner's traffic goes over Ethernet: poll the hub on every progress, sleep in short
   * slices. Not merely because a partner once did: after a switch to the split path and back,
   * an endpoint that polled the hub every round and slept 1 ms at a time for the rest of its
   * life (a peer that moves to the split path later is heard at the endpoint's next sweep or
   * sleep slice, as a first connect over Ethernet is).
   */
  get active(): boolean {
    return this.busy;
  }

  poll(): void {
    this.hub.poll();
  }

  /** Sleeps until the device has something, or `ms`. */
  wait(ms: number): void {
    this.hub.wait(ms);
  }

  // ---- sends ------------------------------------------------------------------------------

  /** A send over Ethernet: eager in consecutive frames (all or none), or a rendezvous announcement. */
  trySend(path: EtherPath, req: MxRequest): boolean {
    const dest = path.peer;
    const link = path.link;
    const n = req.buffer.length;
    // Traced: every frame of the message ends with its trace id (nic/trace-ring.ts), for netback.
    const tb = this.ctx.trace;
    const tid = tb !== undefined ? req.traceId : 0;
    const trailer = tid !== 0 ? ETHER_TRACE_BYTES : 0;
    const max = this.hub.maxPayload - trailer;
    // An eager message the window could never hold at once (one that waited for a channel's
    // lane, whose eager limit is higher, when the endpoint moved here; a small MTU) goes as a
    // rendezvous, whose data this side serves from the send buffer (MxoeType.Pull).
    if (!req.rndv && Math.ceil(n / max) > TX_WINDOW) req.rndv = true;
    const frames = req.rndv ? 1 : Math.max(1, Math.ceil(n / max));
    if (link.room < frames || path.controlQueued) return false;
    if (req.sync || req.rndv) this.parts.sends.add(req);
    const seq = nextSendSeq(dest);
    if (req.rndv) {
      const f = link.reserve(MxoeType.Rndv, 0, trailer);
      stampMessage(f, req, seq);
      if (tid !== 0) putEtherTrace(f, PAYLOAD_AT, tid);
      link.commit();
      this.ctx.counters.rndv++;
    } else {
      for (let off = 0, k = 0; k < frames; k++, off += max) {
        const len = Math.min(max, n - off);
        const f = link.reserve(MxoeType.Eager, len, trailer);
        stampMessage(f, req, seq);
        setFrameWord(f, MxoeWord.offset, off);
        if (len > 0) copyBytes(f, PAYLOAD_AT, req.buffer, off, len);
        if (tid !== 0) putEtherTrace(f, PAYLOAD_AT + len, tid);
        link.commit();
      }
      this.ctx.counters.eager++;
    }
    // Before the frames leave: netback, another thread, may stamp them at once.
    if (tid !== 0) tb!.record(tid, req.rndv ? TraceStage.RndvSent : TraceStage.Written, traceNow());
    link.pump(performance.now());
    this.hub.flush();
    if (!req.sync && !req.rndv) this.parts.completion.complete(req, MxStatus.SUCCESS, n);
    else req.state = RequestState.Sent;
    return true;
  }

  /**
   * A payload-less sequenced frame (PATH, PULL, NOTIFY) to `path`'s peer: now if the window
   * has room, else queued and sent first when acks open it. Never waits: it may be called
   * from inside the hub's poll, which cannot poll again.
   */
  control(path: EtherPath, type: number, id: number, offset: number, msgSeq: number, length: number): void {
    const link = path.link;
    if (link.room === 0 || path.controlQueued) {
      const q = (path.ctlQueue ??= []);
      if (q.length >= MAX_QUEUED_CONTROL * CONTROL_WORDS) {
        // Each message we match from the peer owes it a NOTIFY; a peer that acknowledges just
        // often enough to keep the link alive made this queue grow without end (1 M frames:
        // 362 MiB). Past the cap it is failed, as one that stops acknowledging is.
        this.ctx.counters.channelErrors++;
        this.partners.fail(
          path.peer,
          `the peer stopped taking our control frames (${MAX_QUEUED_CONTROL} queued for it)`,
          MxStatus.ENDPOINT_UNREACHABLE,
        );
        return;
      }
      q.push(type, id, offset, msgSeq, length);
      return;
    }
    writeControl(link, type, id, offset, msgSeq, length);
    link.pump(performance.now());
    this.hub.flush();
  }

  /** Queued control frames go out first (CONTROL_WORDS numbers each), as the window allows. */
  private flushControl(path: EtherPath, q: number[]): void {
    const link = path.link;
    let i = 0;
    while (i < q.length && link.room > 0) {
      writeControl(link, q[i], q[i + 1], q[i + 2], q[i + 3], q[i + 4]);
      i += 5;
    }
    q.splice(0, i);
    link.pump(performance.now());
  }

  /** Streams pulled rendezvous data to the peer as the window allows. */
  private serve(path: EtherPath, jobs: ServeJob[]): void {
    const link = path.link;
    const max = this.hub.maxPayload;
    while (jobs.length > 0 && link.room > 0) {
      const j = jobs[0];
      // The send completed (its receiver NOTIFYed it before taking the data): its buffer is
      // the program's again, and whatever the program put there next is not this peer's.
      if (j.req.state >= RequestState.Revoking) {
        jobs.shift();
        this.ctx.counters.channelErrors++;
        continue;
      }
      const n = Math.min(max, j.end - j.off);
      const f = link.reserve(MxoeType.Data, n);
      setFrameWord(f, MxoeWord.id, j.pullId);
      setFrameWord(f, MxoeWord.offset, j.off);
      const src = j.req.bounce ?? j.req.buffer;
      if (j.off + n <= src.length) copyBytes(f, PAYLOAD_AT, src, j.off, n);
      else {
        // Resized or detached since isend (codes.ts checkBuffer): zeros go, the send ABORTED.
        f.fill(0, PAYLOAD_AT, PAYLOAD_AT + n);
        j.req.lostBuffer = true;
      }
      link.commit();
      j.off += n;
      if (j.off >= j.end) jobs.shift();
    }
    link.pump(performance.now());
  }

  /** The receiver's side of a rendezvous over Ethernet: ask the sender for the bytes. */
  startPull(req: MxRequest, source: Partner, rec: InboundRecord, xfer: number): void {
    const path = etherOf(source);
    if (path === undefined) {
      this.parts.completion.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      return;
    }
    const pullId = this.ctx.newId(this.pulls);
    this.pulls.set(pullId, { recv: req, source, syncId: rec.syncId, xfer, got: 0 });
    this.busy = true;
    this.ctx.counters.pulls++;
    const tb = this.ctx.trace;
    if (tb !== undefined && req.traceId !== 0) tb.record(req.traceId, TraceStage.PullPosted, traceNow());
    this.control(path, MxoeType.Pull, rec.syncId, pullId, 0, xfer);
  }

  // ---- frames in -----------------------------------------------------------------------------

  /**
   * A frame for this endpoint from a peer (the hub checked its headers and destination;
   * ether-connect.ts took the CONNECT and CONNECT_REPLY frames).
   */
  onFrame(f: Uint8Array, type: number, srcNic: number, srcEp: number, srcSession: number): void {
    const peer = this.partners.get(srcNic, srcEp);
    const path = peer === undefined ? undefined : etherOf(peer);
    if (type === MxoeType.Nack) {
      if (
        peer !== undefined &&
        path !== undefined &&
        peer.session === srcSession &&
        frameWord(f, MxoeWord.dstSession) === this.ctx.session &&
        macAt(f, 6, path.link.mac)
      ) {
        if (peer.dead === undefined)
          this.partners.fail(peer, "the peer endpoint is closed", MxStatus.ENDPOINT_CLOSED);
        this.forgetClosed(peer, path);
      }
      return;
    }
    if (frameWord(f, MxoeWord.dstSession) !== this.ctx.session) {
      this.hub.counters.dropped++;
      return;
    }
    if (peer === undefined || path === undefined || peer.dead !== undefined || peer.session !== srcSession) {
      this.hub.counters.dropped++;
      return;
    }
    // The header names the sender; the source MAC (anti-spoofed by netback) must agree.
    const link = path.link;
    if (!macAt(f, 6, link.mac)) {
      this.hub.counters.spoofed++;
      return;
    }
    const now = performance.now();
    // Sequence numbers are u32s on the wire, int32s in the link (the same bits: ether.ts).
    link.onAck(frameWord(f, MxoeWord.ack) | 0, now);
    if (type === MxoeType.Ack || !link.accept(frameWord(f, MxoeWord.seq) | 0)) return;
    peer.lastNews = now;
    const n = frameWord(f, MxoeWord.payload);
    switch (type) {
      case MxoeType.Eager:
        this.onEager(path, f, n);
        return;
      case MxoeType.Rndv: {
        const r = this.rec;
        r.rndv = true;
        r.length = frameWord(f, MxoeWord.length);
        r.bytes = null;
        r.payload = 0;
        this.deliver(peer, f, r);
        return;
      }
      case MxoeType.Pull: {
        // The receiver matched our rendezvous and asks for its bytes (only its receiver may).
        const req = this.parts.sends.get(frameWord(f, MxoeWord.id));
        const len = frameWord(f, MxoeWord.length);
        // One PULL per rendezvous: a peer repeating it (78 bytes a frame) made us send the
        // whole buffer again each time, and queued a job per frame while our window was full.
        if (!req?.rndv || req.peer !== peer || len > req.msgLength || this.served.has(req)) {
          this.ctx.counters.channelErrors++;
          // No such send (any more): it failed — we disconnected from the peer, which had
          // matched the announcement already — or completed. Its receive would wait for ever.
          if (req === undefined)
            this.control(path, MxoeType.Data, frameWord(f, MxoeWord.offset), PULL_REFUSED, 0, 0);
          return;
        }
        this.served.add(req);
        const jobs = (path.serving ??= []);
        jobs.push({ req, pullId: frameWord(f, MxoeWord.offset), off: 0, end: len });
        this.serve(path, jobs);
        return;
      }
      case MxoeType.Data: {
        const id = frameWord(f, MxoeWord.id);
        const p = this.pulls.get(id);
        const off = frameWord(f, MxoeWord.offset);
        if (!p || p.source !== peer) {
          // A refusal for a pull already ended (a sender refuses with every DATA frame it still
          // owed: expireOwing) changes nothing; anything else is counted.
          if (!(off === PULL_REFUSED && n === 0)) this.ctx.counters.channelErrors++;
          return;
        }
        if (off === PULL_REFUSED && n === 0) {
          this.pulls.delete(id);
          p.recv.reason ??=
            "the sender no longer has this rendezvous: its send failed (it disconnected from us) or was cancelled";
          this.parts.completion.complete(p.recv, MxStatus.ABORTED, 0);
          return;
        }
        // The sender streams a pull in order (the stream is reliable): each frame starts where
        // the last ended. A peer that repeated an offset completed the receive SUCCESS with
        // bytes it never carried; the pull fails instead, and the sender hears so.
        if (off !== p.got || off + n > p.xfer) {
          this.ctx.counters.channelErrors++;
          this.pulls.delete(id);
          peer.notify(p.syncId, 0, MxStatus.ABORTED);
          p.recv.reason ??= `the sender's DATA for bytes ${off}..${off + n} broke its pull (expected bytes from ${p.got} of ${p.xfer})`;
          this.parts.completion.complete(p.recv, MxStatus.ABORTED, 0);
          return;
        }
        if (off + n <= p.recv.buffer.length) copyBytes(p.recv.buffer, off, f, PAYLOAD_AT, n);
        else p.recv.lostBuffer = true;
        p.got += n;
        if (p.got >= p.xfer) {
          this.pulls.delete(id);
          peer.notify(p.syncId, p.xfer, MxStatus.SUCCESS);
          this.parts.completion.complete(
            p.recv,
            p.xfer < p.recv.msgLength ? MxStatus.TRUNCATED : MxStatus.SUCCESS,
            p.xfer,
          );
        }
        return;
      }
      case MxoeType.Notify:
        this.parts.sends.answer(
          peer,
          frameWord(f, MxoeWord.id),
          frameWord(f, MxoeWord.offset),
          frameWord(f, MxoeWord.msgSeq),
        );
        return;
      case MxoeType.Path:
        peer.peerSplit = frameWord(f, MxoeWord.msgSeq) === 1;
        this.partners.route(peer);
        return;
      default:
        this.ctx.counters.channelErrors++;
    }
  }

  /** Hands an EAGER or RNDV frame's message to matching (`r`'s payload and kind already set). */
  private deliver(peer: Partner, f: Uint8Array, r: InboundRecord): void {
    // A traced message's frame ends with its id (trySend); read only while we trace too.
    const tid = this.ctx.trace !== undefined ? etherTraceId(f) : 0;
    r.flags = tid !== 0 ? FLAG_TRACED : 0;
    r.matchHi = frameWord(f, MxoeWord.matchHi);
    r.matchLo = frameWord(f, MxoeWord.matchLo);
    r.syncId = frameWord(f, MxoeWord.id);
    r.seq = frameWord(f, MxoeWord.msgSeq) | 0;
    r.region = 0;
    r.key = 0;
    r.offset = 0;
    r.traceSeq = tid % 0x100000000;
    this.parts.matching.deliver(peer, r);
  }

  /** An eager fragment: delivered at once if whole, else gathered (a message's frames are consecutive). */
  private onEager(path: EtherPath, f: Uint8Array, n: number): void {
    const length = frameWord(f, MxoeWord.length);
    const off = frameWord(f, MxoeWord.offset);
    const seq = frameWord(f, MxoeWord.msgSeq);
    const r = this.rec;
    r.rndv = false;
    r.length = length;
    if (off === 0 && n === length) {
      r.bytes = f;
      r.payload = PAYLOAD_AT;
      this.deliver(path.peer, f, r);
      return;
    }
    if (length > ETHER_EAGER_MAX || off + n > length) {
      this.ctx.counters.channelErrors++;
      return;
    }
    let rx = path.rxEager;
    if (off === 0) rx = path.rxEager = { seq, buf: new Uint8Array(length), got: 0 };
    if (rx === undefined || rx.seq !== seq || rx.buf.length !== length || rx.got !== off) {
      this.ctx.counters.channelErrors++;
      path.rxEager = undefined;
      return;
    }
    copyBytes(rx.buf, off, f, PAYLOAD_AT, n);
    rx.got += n;
    if (rx.got === length) {
      path.rxEager = undefined;
      r.bytes = rx.buf;
      r.payload = 0;
      this.deliver(path.peer, f, r);
    }
  }

  /** After the hub's poll: timers, acks, rendezvous data and backlogs of Ethernet peers. */
  afterPoll(): void {
    let busy = this.pulls.size > 0;
    if (this.owing.length > 0) {
      const now = performance.now();
      if (now >= this.owingDue) this.expireOwing(now);
    }
    if (this.peers.length === 0) {
      this.busy = busy;
      return;
    }
    const now = performance.now();
    for (let i = this.peers.length - 1; i >= 0; i--) {
      const p = this.peers[i];
      const peer = p.peer;
      if (peer.dead !== undefined) continue;
      if (!p.link.tick(now)) {
        this.partners.fail(
          peer,
          // A peer that disconnected from us looks the same from here: over Ethernet it keeps
          // the pair's stream for its next connection and takes nothing meanwhile.
          `the peer acknowledged nothing over Ethernet for ${PEER_TIMEOUT_MS / 1000} s (it stopped or its link is gone, or it disconnected from us and did not connect again)`,
          MxStatus.ENDPOINT_UNREACHABLE,
        );
        continue;
      }
      if (p.ctlQueue !== undefined && p.ctlQueue.length > 0) this.flushControl(p, p.ctlQueue);
      if (p.serving !== undefined && p.serving.length > 0) this.serve(p, p.serving);
      if (peer.backlog.length > 0 && peer.path === p) this.partners.flush(peer);
      if (p.busy) busy = true;
    }
    this.busy = busy;
  }

  /** `link` is kept owing frames past its failed partner from `now` (again: its time starts again). */
  private keepOwing(link: EtherLink, now: number): void {
    const kept = this.owing.find((o) => o.link === link);
    if (kept !== undefined) kept.since = now;
    else this.owing.push({ link, since: now });
    this.owingDue = Math.min(this.owingDue, now + FAILED_STREAM_KEEP_MS);
  }

  /** `link` is no longer kept owing: a partner took it up again, or a new incarnation replaced it. */
  private dropOwing(link: EtherLink): void {
    const i = this.owing.findIndex((o) => o.link === link);
    if (i >= 0) this.owing.splice(i, 1);
  }

  /**
   * Streams kept owing frames past their failed partner for FAILED_STREAM_KEEP_MS (`now` the
   * time to judge by) give them up: an eager message goes as a PATH frame (it said SUCCESS,
   * but its peer failed and did not come back in time), a rendezvous's data as the refusal
   * of the peer's pull (its receive fails rather than waits: every DATA frame still owed is
   * one, as the peer may hold the first ones already), and the copies shrink to the headers —
   * the sequence stays whole for the peer's incarnation if it connects later. A stream taken up
   * again, or replaced by a new incarnation's, left the list then (open).
   */
  expireOwing(now: number): void {
    const split = this.partners.split ? 1 : 0;
    let due = Number.POSITIVE_INFINITY;
    for (let i = this.owing.length - 1; i >= 0; i--) {
      const { link, since } = this.owing[i];
      if (now - since < FAILED_STREAM_KEEP_MS) {
        due = Math.min(due, since + FAILED_STREAM_KEEP_MS);
        continue;
      }
      this.owing.splice(i, 1);
      link.stripUnacked((f, type) =>
        type === MxoeType.Data
          ? refusal(f)
          : type === MxoeType.Eager
            ? asPath(f, split)
            : frameWord(f, MxoeWord.payload),
      );
    }
    this.owingDue = due;
  }

  /** A failed peer's pulls fail, and nothing more is streamed to it. */
  peerLost(peer: Partner, why: string, code: number): void {
    for (const [id, p] of this.pulls) {
      if (p.source === peer) {
        this.pulls.delete(id);
        p.recv.reason ??= why;
        this.parts.completion.complete(p.recv, code, 0);
      }
    }
    const path = etherOf(peer);
    if (path === undefined) return;
    // Pulls of ours served only in part: they end refused.
    const cut = new Set<number>();
    for (const j of path.serving ?? []) cut.add(j.pullId);
    path.serving = undefined;
    // What its failure completed with an error must not arrive after all when the stream goes
    // on in a next connection (open): sync and rendezvous sends, our own pulls. Those become
    // PATH frames; eager sends, which said SUCCESS, still go. (A reviewer's PoC: an issend
    // failed by a disconnect whose wait gave up, then sent again after the reconnect, arrived
    // twice.) A pull served in part ends refused: its DATA frames still owed become refusals,
    // or one is written — else the peer, taking the stream up again, got part of the data and
    // waited for the rest for ever (a reviewer's PoC: a 1 MB pull). The copies shrink to what
    // is still owed (none at all once everything was acknowledged: a full window is half a MiB).
    const link = path.link;
    const split = this.partners.split ? 1 : 0;
    const refused = new Set<number>();
    link.stripUnacked((f, type) => {
      if (type === MxoeType.Data && cut.has(frameWord(f, MxoeWord.id))) {
        refused.add(frameWord(f, MxoeWord.id));
        return refusal(f);
      }
      return staleAfterFailure(f, type) ? asPath(f, split) : frameWord(f, MxoeWord.payload);
    });
    // A pull none of whose data is owed gets its refusal written now, or, the window full (of
    // another pull's data), queued for the partner taking the stream up again (open): dropped,
    // that peer's receive waited for the data for ever.
    let refusals: number[] | undefined;
    // Refusals an earlier failure queued and the take-up has not written yet (the window still
    // full) stay queued: a second failure dropped them, and that receive waited for ever.
    const q = path.ctlQueue;
    if (q !== undefined)
      for (let k = 0; k < q.length; k += CONTROL_WORDS)
        if (q[k] === MxoeType.Data && q[k + 2] === PULL_REFUSED)
          (refusals ??= []).push(...q.slice(k, k + CONTROL_WORDS));
    for (const id of cut) {
      if (refused.has(id)) continue;
      if (link.room > 0) writeControl(link, MxoeType.Data, id, PULL_REFUSED, 0, 0);
      else (refusals ??= []).push(MxoeType.Data, id, PULL_REFUSED, 0, 0);
    }
    path.ctlQueue = refusals;
    if (link.unacked > 0) this.keepOwing(link, performance.now());
    const i = this.peers.indexOf(path);
    if (i >= 0) this.peers.splice(i, 1);
  }

  // ---- closing ---------------------------------------------------------------------------------

  /**
   * Before closing: frames already handed to the reliable stream (eager sends complete as
   * they enter it) are resent until acknowledged, for at most LINGER_MS — a closing
   * endpoint must not take its last messages with it.
   */
  linger(): void {
    if (this.peers.length > 0) this.lingerWhile(() => this.peers.some(owes));
  }

  /**
   * Before mx_disconnect fails `peer`: the same, for its stream alone. Failed at once, its
   * path left the poll list with frames the bridge had dropped (a receiver out of posted
   * buffers) never resent, and eager sends that had said SUCCESS were lost (2–11 in 60
   * connect/send/disconnect rounds). Waiting here, not in the background: the stream is the
   * pair's, and its next connection goes on in it (`open`).
   */
  lingerFor(peer: Partner): void {
    const path = etherOf(peer);
    if (path === undefined || !this.peers.includes(path)) return;
    // Sends still in its backlog are not waited for: mx_disconnect fails them. Rendezvous we
    // pull from it are: their data is on its way.
    const pulling = () => {
      for (const p of this.pulls.values()) if (p.source === peer) return true;
      return false;
    };
    this.lingerWhile(
      () =>
        peer.dead === undefined && (path.link.unacked > 0 || (path.ctlQueue?.length ?? 0) > 0 || pulling()),
    );
    if (peer.dead !== undefined) return;
    // A pull the wait did not see end: its sender hears that we dropped it (NOTIFY ABORTED),
    // instead of streaming data no one takes and waiting for a NOTIFY that never comes (for
    // ever, if the pair connects again in the same stream before its link times out).
    for (const [id, p] of this.pulls) {
      if (p.source !== peer) continue;
      this.pulls.delete(id);
      path.notify(p.syncId, 0, MxStatus.ABORTED);
      p.recv.reason ??= "we disconnected from the sender before its data had all come";
      this.parts.completion.complete(p.recv, MxStatus.ENDPOINT_CLOSED, 0);
    }
    // The NOTIFYs go out now, before the partner is failed (once, unacknowledged: a next
    // connection in the same stream resends them).
    this.hub.flush();
  }

  private lingerWhile(owed: () => boolean): void {
    const hub = this.hub;
    const until = performance.now() + LINGER_MS;
    while (owed() && performance.now() < until) {
      hub.poll();
      if (owed()) hub.wait(1);
    }
  }

  /**
   * The endpoint closes: its peers over Ethernet hear of it now (on the fast path the backend
   * tells them) — every one whose stream is kept, a partner we had disconnected included: it
   * may have kept the stream for us to take up again, and forgets it once told (forgetClosed).
   */
  close(): void {
    const ctx = this.ctx;
    const told = new Set<EtherPath>(this.streams.values());
    for (const p of this.peers) if (p.peer.dead === undefined) told.add(p);
    for (const p of told)
      this.hub.sendClosed(
        p.link.mac,
        { nic: p.peer.nic, ep: p.peer.endpoint, session: p.peer.session },
        { nic: ctx.nicId, ep: ctx.endpointId, session: ctx.session },
      );
  }

  /**
   * `peer`'s endpoint is closed (its NACK said so, or netback's for it): that incarnation never
   * comes back, so its stream, kept for it to take up again, goes, and so does its entry in the
   * peer table unless what it sent is still kept here. A long-lived endpoint kept ~3 KB for
   * every peer endpoint it ever had (a soak: a server of 10,753 short-lived split-path clients,
   * 35 MB), live or disconnected.
   */
  private forgetClosed(peer: Partner, path: EtherPath): void {
    const key = `${peer.nic}:${peer.endpoint}`;
    // Only the kept stream's own peer is believed (its MAC was checked against that stream's):
    // a forger's claim of the address, from its own MAC, has a path of its own, and its NACK
    // made us forget the real peer's sequence numbers (its next connection's messages lost).
    if (this.streams.get(key) !== path) return;
    this.streams.delete(key);
    this.dropOwing(path.link);
    this.partners.forget(peer);
  }
}

/** A frame of a request a peer's failure completed with an error (EtherEngine.peerLost). */
function staleAfterFailure(f: Uint8Array, type: number): boolean {
  // DATA still goes: the peer's receive completes rather than wait for bytes that never come.
  if (type === MxoeType.Rndv || type === MxoeType.Pull) return true;
  // A sync eager send carries its sync id; a plain one (0) completed SUCCESS as it went in.
  return type === MxoeType.Eager && frameWord(f, MxoeWord.id) !== 0;
}

/** An owed DATA frame becomes the refusal of its pull (EtherLink.stripUnacked: no payload kept). */
function refusal(f: Uint8Array): number {
  setFrameWord(f, MxoeWord.offset, PULL_REFUSED);
  return 0;
}

/** An owed frame that must not arrive becomes a PATH frame saying our path (`split`), no payload. */
function asPath(f: Uint8Array, split: number): number {
  setFrameType(f, MxoeType.Path);
  setFrameWord(f, MxoeWord.msgSeq, split);
  return 0;
}

/** Something of ours still waits to reach a live peer: unacknowledged frames, sends or control frames. */
function owes(p: EtherPath): boolean {
  return (
    p.peer.dead === undefined &&
    (p.link.unacked > 0 || p.peer.backlog.length > 0 || (p.ctlQueue?.length ?? 0) > 0)
  );
}

function writeControl(
  link: EtherLink,
  type: number,
  id: number,
  offset: number,
  msgSeq: number,
  length: number,
): void {
  const f = link.reserve(type, 0);
  setFrameWord(f, MxoeWord.id, id);
  setFrameWord(f, MxoeWord.offset, offset);
  setFrameWord(f, MxoeWord.msgSeq, msgSeq);
  setFrameWord(f, MxoeWord.length, length);
  link.commit();
}

function stampMessage(f: Uint8Array, req: MxRequest, seq: number): void {
  setFrameWord(f, MxoeWord.matchHi, req.matchHi);
  setFrameWord(f, MxoeWord.matchLo, req.matchLo);
  setFrameWord(f, MxoeWord.length, req.buffer.length);
  setFrameWord(f, MxoeWord.msgSeq, seq);
  setFrameWord(f, MxoeWord.id, req.syncId);
}

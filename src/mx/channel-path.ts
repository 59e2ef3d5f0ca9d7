/**
 * The way to a co-resident peer: the channel myrback granted to exactly the two endpoints
 * (channel-abi.ts), one lane each way. A message crosses two threads and nothing else: the
 * sender writes a record (records.ts) into its lane and kicks the receiver only if it said
 * it sleeps; the receiver's progress reads it. A rendezvous announced here is pushed through
 * the channel once the receiver matched it (records.ts: RNDV, CTS, then FRAGs — Open MPI sm's
 * pipelined copy-in/copy-out): both copies run at once, the NIC thread is not woken, nothing
 * is registered, and the data crosses only the lane the pair was granted. A rendezvous sent
 * while another push to the peer is under way (a stream: records.ts CHANNEL_PUSHES_IN_FLIGHT)
 * is pulled by the NIC instead, from registered memory: one copy by a third thread.
 *
 * Channels come and go with driver events (driver-abi.ts): a peer that connected to us
 * (DRIVER_EVENT_CONNECT: map the channel its connect made), a peer that went away
 * (DRIVER_EVENT_DISCONNECT: read what it managed to send, then fail it).
 */

import {
  channelLanesClosed,
  LANE_BYTES,
  LaneClosed,
  LaneWord,
  RECORD_HEADER_BYTES,
  RecordFlag,
  RecordWord,
} from "../myrixen/channel-abi.js";
import type { DriverChannel, MxDriver } from "../myrixen/driver-abi.js";
import { DRIVER_EVENT_CONNECT, DRIVER_EVENT_DISCONNECT } from "../myrixen/driver-abi.js";
import { MxStatus } from "../nic/status.js";
import { I_SEQ, raiseInterrupt } from "../nic/window.js";
import { copyBytes } from "../xen/copy.js";
import { LaneReader, LaneWriter } from "./channel.js";
import { PieceReader, writePieces } from "./channel-pieces.js";
import type { Completion } from "./completion.js";
import { CONTROL_RECORD_COST, type LaneGroups, LanePolicer } from "./lane-policer.js";
import type { Matching } from "./matching.js";
import type { DriverEventSink, NicQueues } from "./nic-queues.js";
import type { PartnerTable } from "./partner.js";
import type { PendingSends } from "./pending-sends.js";
import type { PullRights } from "./pull-rights.js";
import {
  CHANNEL_EAGER_BYTES,
  CHANNEL_EAGER_PIECE,
  CHANNEL_PUSHES_IN_FLIGHT,
  CtsAux,
  channelFragment,
  FLAG_PIECES,
  FLAG_PUSH,
  FragAux,
  MAX_CHANNEL_RECORD,
  MsgAux,
  NotifyAux,
  PIECES_XFER,
  RecordType,
} from "./records.js";
import { FLAG_TRACED, TraceStage, traceNow } from "./trace.js";
import {
  type ChannelEnd,
  type EndpointContext,
  InboundRecord,
  type MxRequest,
  nextSendSeq,
  type Partner,
  type PeerPath,
  type Puller,
  RequestState,
} from "./types.js";

/**
 * The most records a full lane holds (each takes a header at least; a PAD, 8 bytes, only once
 * a wrap): what one receive() reads at most. drain() also stops after a lane's bytes.
 */
const MAX_DRAIN_RECORDS = Math.floor(LANE_BYTES / RECORD_HEADER_BYTES);

/**
 * NOTIFYs that may wait for room in our lane at most. They wait only while the peer does not
 * read that lane, and an honest peer that does not read it has a synchronous send of its own
 * pending for each (a request in its memory, far more than our 24 bytes), so it never gets near;
 * a hostile one writes raw synchronous records for nothing, and 4 million of them grew a
 * receiver's heap by 122 MiB in 3 s. Beyond, the peer is failed: it does not read its answers.
 */
export const NOTIFY_WAITING_MAX = 1 << 18;

/**
 * Kicks the peer if it said it sleeps — in the header of the lane we write it, the one word of
 * its sleep that only the two of us reach (channel-abi.ts ReaderSleeping) — and takes its flag
 * down as it does (the peer sets it again before it next sleeps): the FRAGs a pusher writes
 * while its reader is waking cost one wake-up, not one system call each. No kick is lost: the
 * record was published before the look (mx/endpoint.ts sleepUntil says why that suffices).
 */
function kickPeer(lane: Int32Array, intr: Int32Array): boolean {
  return raiseInterrupt(lane, LaneWord.ReaderSleeping, intr);
}

/** A rendezvous being pushed through the channel: the sender's side, or the receiver's. */
class Transfer {
  /** Bytes pushed (sender) or received (receiver) so far. */
  done = 0;
  constructor(
    readonly req: MxRequest,
    /** The receiver's transfer id (its CTS named it; every FRAG carries it). */
    readonly id: number,
    /** Bytes the receiver wants (≤ the message and its buffer). */
    readonly xfer: number,
    /** Sender: the rendezvous's sync id (answered when the last FRAG is in); receiver: the CTS's. */
    readonly syncId: number,
  ) {}
}

/** What a channel path uses of its endpoint. */
export interface ChannelPathParts {
  readonly ctx: EndpointContext;
  readonly driver: MxDriver;
  readonly nic: NicQueues;
  readonly partners: PartnerTable;
  readonly sends: PendingSends;
  readonly completion: Completion;
  readonly matching: Matching;
  readonly rights: PullRights;
  /** The clock the lane's caps run on (ms; default performance.now: tests give their own). */
  readonly now?: () => number;
  /** The endpoint's writer groups: its incoming lanes from one domain share one weight. */
  readonly laneGroups?: LaneGroups;
}

/**
 * Why a peer whose channel we found closed is failed, by what its closer wrote (LaneClosed).
 * "went away" alone sent users looking for a dead rank that had only disconnected.
 */
function laneClosedReason(why: number): string {
  if (why === LaneClosed.Disconnected) return "the peer disconnected from us (mx_disconnect)";
  if (why === LaneClosed.EndpointClosed) return "the peer endpoint was closed";
  return "the peer endpoint went away";
}

/** One co-resident peer's channel: our lane out (its path) and its lane in. */
export class ChannelPath implements PeerPath, ChannelEnd, Puller {
  readonly channelId: number;
  /** PeerPath.eagerMax: mid-size messages go eager, waiting for lane room in order if need be (records.ts). */
  readonly eagerMax = CHANNEL_EAGER_BYTES;
  private readonly writer: LaneWriter;
  private readonly reader: LaneReader;
  private readonly peerIntr: Int32Array;
  /** Our lane's control words: the peer's ReaderSleeping flag is there (kickPeer). */
  private readonly laneCtl: Int32Array;
  /** announceSleep raised our reader's flag and it is not cleared yet (sleepAnnounced). */
  private announced = false;
  private readonly ctx: EndpointContext;
  private readonly completion: Completion;
  private readonly sends: PendingSends;
  private readonly matching: Matching;
  /** The record matching gets (refilled per record read). */
  private readonly rec: InboundRecord;
  private released = false;
  /** Rendezvous the peer cleared us to push, in the order its CTSs came (pushed in that order). */
  private readonly pushing: Transfer[] = [];
  /** Rendezvous we receive: CTS not written yet (the lane was full), then being pushed to us. */
  private readonly ctsWaiting: Transfer[] = [];
  private readonly receiving: Transfer[] = [];
  /** NOTIFYs the lane had no room for: (sync id, bytes, status) triples, written first by push(). */
  private readonly notifyWaiting: number[] = [];
  /** NOTIFY_WAITING_MAX NOTIFYs waited and another came: the peer does not read our lane. */
  private unread = false;
  /** Eager messages in pieces coming in (nothing else may come between a message's pieces). */
  private readonly pieces: PieceReader;
  private lastXferId = 0;
  /** Pushed rendezvous sent and not done yet (`pushes` bounds them). */
  private readonly inFlight: MxRequest[] = [];
  private readonly rights: PullRights;
  /** Holds the lane we read to the QoS policy myrback wrote for us (absent: no limits), and counts what we give ours. */
  private readonly policer: LanePolicer | undefined;

  constructor(
    private readonly peer: Partner,
    ch: DriverChannel,
    private readonly parts: ChannelPathParts,
  ) {
    this.channelId = ch.channelId;
    this.writer = new LaneWriter(ch.channel, ch.side);
    this.reader = new LaneReader(ch.channel, (1 - ch.side) as 0 | 1, MAX_CHANNEL_RECORD);
    this.peerIntr = new Int32Array(ch.peerIntr);
    this.laneCtl = this.writer.control;
    this.ctx = parts.ctx;
    this.completion = parts.completion;
    this.sends = parts.sends;
    this.rights = parts.rights;
    this.matching = parts.matching;
    this.rec = new InboundRecord(this);
    this.pieces = new PieceReader(peer, {
      ctx: parts.ctx,
      matching: parts.matching,
      completion: parts.completion,
      garbage: (what) => this.garbage(what),
    });
    this.policer =
      ch.policy === undefined
        ? undefined
        : new LanePolicer(ch.policy, parts.ctx, parts.now, parts.laneGroups);
  }

  /** PeerPath.pushes: yes while fewer than CHANNEL_PUSHES_IN_FLIGHT pushed rendezvous are under way. */
  pushes(req: MxRequest): boolean {
    const l = this.inFlight;
    let n = 0;
    for (let i = 0; i < l.length; i++) if (l[i].state < RequestState.Revoking) l[n++] = l[i];
    l.length = n;
    if (n >= CHANNEL_PUSHES_IN_FLIGHT) return false;
    l.push(req);
    req.pushed = true;
    return true;
  }

  /** Writes the send's record into our lane; false if the lane is full right now. */
  trySend(req: MxRequest): boolean {
    const w = this.writer;
    // The peer (mx_disconnect) or myrback closed the channel: no one will read what we write,
    // so the send fails now rather than complete with SUCCESS and be lost.
    if (w.closed) return this.refuse(req);
    const rndv = req.rndv;
    const pushed = rndv && req.pushed;
    if (rndv && !pushed && !this.rights.expose(req)) return false;
    if (!rndv && req.buffer.length > CHANNEL_EAGER_PIECE) return this.trySendPieces(req);
    const payload = rndv ? 0 : req.buffer.length;
    const at = w.reserve(payload);
    if (at < 0) return false;
    const words = w.words;
    const i = at >>> 2;
    const aux = i + RecordWord.Aux;
    if (req.sync || rndv) this.sends.add(req);
    words[i + RecordWord.Type] = rndv
      ? RecordType.Rndv | ((RecordFlag.NoPayload | (pushed ? FLAG_PUSH : 0)) << 16)
      : RecordType.Eager;
    words[i + RecordWord.MatchHi] = req.matchHi;
    words[i + RecordWord.MatchLo] = req.matchLo;
    words[i + RecordWord.Length] = req.buffer.length;
    words[aux + MsgAux.SyncId] = req.syncId;
    words[aux + MsgAux.Seq] = nextSendSeq(this.peer);
    if (rndv) {
      // Pushed once the receiver clears it (CTS): no pull right is armed. Else the NIC pulls it.
      words[aux + MsgAux.XpIndex] = pushed ? 0 : req.xp;
      words[aux + MsgAux.XpKey] = pushed ? 0 : this.rights.keyOf(req);
      words[aux + MsgAux.XpOffset] = 0;
      this.ctx.counters.rndv++;
    } else {
      if (payload > 0) copyBytes(w.bytes, at + RECORD_HEADER_BYTES, req.buffer, 0, payload);
      this.ctx.counters.eager++;
    }
    const tb = this.ctx.trace;
    if (tb !== undefined && req.traceId !== 0) {
      // Stamped before the commit: the receiver may see the record the moment it is published.
      words[i + RecordWord.Type] |= FLAG_TRACED << 16;
      words[aux + MsgAux.TraceSeq] = req.traceId % 0x100000000;
      tb.record(req.traceId, rndv ? TraceStage.RndvSent : TraceStage.Written, traceNow());
    }
    w.commit();
    this.policer?.gave(req.buffer.length);
    if (kickPeer(this.laneCtl, this.peerIntr)) this.ctx.counters.kicks++;
    // An eager send is complete once its data is in the channel (MX may complete eager sends
    // locally), unless the peer closed it and let go before reading it.
    if (!req.sync && !rndv) this.completeEager(req);
    else req.state = RequestState.Sent;
    return true;
  }

  /** An eager send whose record is committed: SUCCESS, or failed if the peer closed the channel before reading it. */
  private completeEager(req: MxRequest): void {
    if (this.writer.readBeforeClose()) this.completion.complete(req, MxStatus.SUCCESS, req.buffer.length);
    else this.refuse(req);
  }

  /**
   * A send the closed channel cannot take: the peer is failed (what it wrote before closing
   * is taken first: checkClosed) and the send completes with the reason. True: taken.
   */
  private refuse(req: MxRequest): boolean {
    this.checkClosed();
    this.failRequest(
      req,
      `this peer is disconnected: ${this.peer.dead ?? this.closedReason()}`,
      MxStatus.ENDPOINT_UNREACHABLE,
    );
    return true;
  }

  /**
   * An eager message in pieces (records.ts FLAG_PIECES), written only if the lane has room
   * for all of them now: one EAGER record with the first piece, FRAGs (id 0) with the rest,
   * each published as soon as it is copied in, so the receiver copies it out meanwhile.
   */
  private trySendPieces(req: MxRequest): boolean {
    if (!this.writer.hasRoomFor(req.buffer.length, CHANNEL_EAGER_PIECE)) return false;
    if (req.sync) this.sends.add(req);
    const whole = writePieces(this.writer, req, nextSendSeq(this.peer), this.ctx, () => {
      if (kickPeer(this.laneCtl, this.peerIntr)) this.ctx.counters.kicks++;
    });
    if (!whole) {
      // Closed between its pieces: the peer dropped the part it had (it disconnected from us).
      if (req.sync) this.sends.forget(req);
      return this.refuse(req);
    }
    this.policer?.gave(req.buffer.length);
    this.ctx.counters.eager++;
    if (!req.sync) this.completeEager(req);
    else req.state = RequestState.Sent;
    return true;
  }

  /**
   * A NOTIFY record: tiny, and never lost — into a full lane it waits in `notifyWaiting` and
   * is written on a later progress, ahead of CTSs and FRAGs. Never waited for here: this runs
   * inside event handlers (a pull done), and the peer may be waiting on a full lane of ours
   * just as we would wait on its (an osu_bibw window of pushed and pulled rendezvous).
   */
  notify(syncId: number, xfer: number, status: number): void {
    if (this.released || this.peer.dead !== undefined) return;
    const nq = this.notifyWaiting;
    if (nq.length === 0 && this.writeNotify(syncId, xfer, status)) return;
    // Failed by the next receive(), outside the record being read (as a broken lane is).
    if (nq.length >= 3 * NOTIFY_WAITING_MAX) this.unread = true;
    else nq.push(syncId, xfer, status);
  }

  /** Writes one NOTIFY record; false if the lane is full right now. */
  private writeNotify(syncId: number, xfer: number, status: number): boolean {
    const w = this.writer;
    const at = w.reserve(0);
    if (at < 0) return false;
    const words = w.words;
    const i = at >>> 2;
    const aux = i + RecordWord.Aux;
    words[i + RecordWord.Type] = RecordType.Notify;
    words[i + RecordWord.MatchHi] = 0;
    words[i + RecordWord.MatchLo] = 0;
    words[i + RecordWord.Length] = 0;
    words[aux + NotifyAux.SyncId] = syncId;
    words[aux + NotifyAux.Xfer] = xfer;
    words[aux + NotifyAux.Status] = status;
    w.commit();
    if (kickPeer(this.laneCtl, this.peerIntr)) this.ctx.counters.kicks++;
    return true;
  }

  /**
   * Reads and matches what the peer wrote, then pushes what waits; true if either moved
   * anything. `sweep` (progress's every-32nd and before-sleep rounds): also shows the writer
   * all the space read so far, and looks atomically whether it waits for some.
   */
  receive(sweep = false): boolean {
    const rd = this.reader;
    const pol = this.policer;
    let moved = false;
    if (pol === undefined || pol.begin()) {
      // At most a full lane's worth per call (as drain()), and nothing once a record failed
      // the peer: a writer that refills the lane behind us cannot keep this call from
      // returning, and a peer failed for garbage delivers nothing more.
      for (let n = 0; n < MAX_DRAIN_RECORDS && !this.released && rd.next(); n++) {
        // A record the caps or this round's share do not allow stays in the lane (lane-policer.ts).
        if (pol !== undefined && !this.admit(pol, rd)) break;
        this.onRecord(rd);
        rd.release();
        moved = true;
      }
    }
    if (pol !== undefined && pol.heldUntil !== 0) {
      const ctx = this.ctx;
      if (ctx.lookAgainAt === 0 || pol.heldUntil < ctx.lookAgainAt) ctx.lookAgainAt = pol.heldUntil;
    }
    if (
      (this.notifyWaiting.length > 0 || this.ctsWaiting.length > 0 || this.pushing.length > 0) &&
      this.push()
    )
      moved = true;
    // Space freed: a writer that found the lane full and went to sleep wakes.
    if ((moved || sweep || rd.unpublished) && rd.takeSpaceWanted(sweep)) {
      Atomics.add(this.peerIntr, I_SEQ, 1);
      Atomics.notify(this.peerIntr, I_SEQ);
    }
    if (rd.broken) {
      this.ctx.counters.channelErrors++;
      this.parts.partners.fail(
        this.peer,
        `peer wrote garbage into the channel: ${rd.broken}`,
        MxStatus.ENDPOINT_UNREACHABLE,
      );
    } else if (this.unread) {
      this.ctx.counters.channelErrors++;
      this.parts.partners.fail(
        this.peer,
        `peer does not read the channel: ${NOTIFY_WAITING_MAX} answers to its synchronous sends wait for room`,
        MxStatus.ENDPOINT_UNREACHABLE,
      );
    }
    return moved;
  }

  /**
   * Charges the record `rd` holds to the lane's policy. A rendezvous is charged its whole
   * length when it is announced, however its bytes then travel, so a sender cannot pick the
   * way that is not counted: one to push through the lane waits for the bucket like an eager
   * message; one the NIC pulls is charged but not held (the NIC holds its bytes to the same
   * caps), so the lane's own traffic leaves it room.
   */
  private admit(pol: LanePolicer, rd: LaneReader): boolean {
    const type = rd.type;
    if (type === RecordType.Eager)
      return pol.admit(rd.flags & FLAG_PIECES ? rd.aux[MsgAux.Total] : rd.length, 1, rd.length);
    if (type === RecordType.Frag) return pol.share(rd.length);
    if (type === RecordType.Rndv)
      return rd.flags & FLAG_PUSH ? pol.admit(rd.length, 1, 0) : pol.charge(rd.length, 1);
    return pol.admit(CONTROL_RECORD_COST, 0, CONTROL_RECORD_COST);
  }

  /**
   * Takes what the peer managed to send before it went away: at most a full lane's worth of
   * records, so a peer that goes on writing after it said it closed cannot keep us here.
   * Each is charged to the lane's caps all the same (LanePolicer.force): the writer's next
   * lanes to this endpoint pay for what these took past them. (They are taken at once, not at
   * the caps' rate: a writer that fills its lane and disconnects gets a lane's worth past its
   * caps per connection — see the performance-isolation notes.)
   */
  drain(): void {
    const rd = this.reader;
    const pol = this.policer;
    // A lane's worth from where the drain began, not a lane's worth of records: the writer
    // refills behind us as we read (a reviewer's PoC took 131,072 records in one drain).
    const from = rd.position;
    for (
      let n = 0;
      n < MAX_DRAIN_RECORDS && ((rd.position - from) | 0) < LANE_BYTES && !this.released && rd.next();
      n++
    ) {
      if (pol !== undefined) this.forceAdmit(pol, rd);
      this.onRecord(rd);
      rd.release();
    }
  }

  /** Both lanes closed (release() closes them too): the peer writes no more. */
  closeLanes(why: LaneClosed = LaneClosed.Dead): void {
    this.writer.close(why);
    this.reader.close(why);
  }

  /** What admit() would charge `rd`, charged whatever the caps say. */
  private forceAdmit(pol: LanePolicer, rd: LaneReader): void {
    const type = rd.type;
    if (type === RecordType.Eager) pol.force(rd.flags & FLAG_PIECES ? rd.aux[MsgAux.Total] : rd.length, 1);
    else if (type === RecordType.Rndv) pol.force(rd.length, 1);
    else if (type !== RecordType.Frag) pol.force(CONTROL_RECORD_COST, 0);
  }

  /**
   * Fails the peer if either side declared the channel dead, after taking what the peer
   * wrote before it did: the peer may have committed its last records and closed since this
   * round's receive() looked (or the lane's policy held them), and a send it saw complete
   * must still arrive (an MPI rank's last barrier message, written just before finalize).
   */
  checkClosed(): void {
    if (!this.reader.closed && !this.writer.closed) return;
    this.end();
  }

  /** Takes what the peer wrote (a lane's worth at most), then fails it: for garbage if that is what it wrote. */
  end(): void {
    this.drain();
    const broken = this.reader.broken;
    if (broken) {
      // What it wrote before it closed was garbage: that is the reason to give.
      this.ctx.counters.channelErrors++;
      this.parts.partners.fail(
        this.peer,
        `peer wrote garbage into the channel: ${broken}`,
        MxStatus.ENDPOINT_UNREACHABLE,
      );
      return;
    }
    this.parts.partners.fail(this.peer, this.closedReason(), MxStatus.ENDPOINT_CLOSED);
  }

  /** Why the channel was closed, as its closer said (either lane: the closer closes both). */
  closedReason(): string {
    return laneClosedReason(this.reader.closedWhy || this.writer.closedWhy);
  }

  /** ChannelEnd.announceSleep: the peer's next record kicks us (channel-abi.ts ReaderSleeping). */
  announceSleep(): void {
    this.announced = true;
    this.reader.announceSleep();
  }

  /**
   * ChannelEnd.sleepAnnounced: our flag is still up — false once the peer took it (it kicked,
   * or is about to), and for a channel mapped since announceSleep, which the peer does not kick.
   */
  sleepAnnounced(): boolean {
    return this.announced && this.reader.sleepAnnounced;
  }

  /** ChannelEnd.awake: we are up, the peer's records kick no more. */
  awake(): void {
    if (!this.announced) return;
    this.announced = false;
    this.reader.awake();
  }

  /**
   * A dead peer's channel is dropped here and unmapped by the driver, so the backend can give
   * the memory back: a survivor keeps nothing of a peer that went away.
   */
  release(code: number = MxStatus.ENDPOINT_CLOSED): void {
    if (this.released) return;
    this.released = true;
    this.policer?.dispose();
    // Receives being pushed to us end with the peer; our pushes' sends end with it (PendingSends).
    const why = this.peer.dead ?? "the peer endpoint went away";
    for (const t of this.receiving.splice(0)) this.failTransfer(t, why, code);
    for (const t of this.ctsWaiting.splice(0)) this.failTransfer(t, why, code);
    this.pieces.abandon(why, code);
    this.pushing.length = 0;
    this.notifyWaiting.length = 0;
    // Say so in the channel, so that a peer we failed (garbage, a flood of unexpected
    // messages) stops writing to a lane nobody reads, instead of waiting on it for ever.
    this.writer.close();
    this.reader.close();
    // Where we stopped reading: a record the peer committed as we closed was read, or its
    // sender learns it was not (LaneWriter.readBeforeClose).
    this.reader.publishFinal();
    // The dead partner keeps no way to this channel: a request reaped but still queued (or the
    // program's own) names its partner, and through `fast` it held the channel's memory — the
    // whole channel for each peer gone, 52 MB on an endpoint that outlived 100 (a reviewer's
    // probe, with channels of half a MiB).
    if (this.peer.channel === this) this.peer.channel = undefined;
    if (this.peer.fast === this) this.peer.fast = undefined;
    if (this.peer.path === this) this.peer.path = undefined;
    try {
      this.parts.driver.releaseChannel?.(this.ctx.endpointId, this.channelId);
    } catch {
      this.ctx.counters.channelErrors++;
    }
  }

  /**
   * Puller: a rendezvous from this channel matched `req`: ask the sender to push `xfer`
   * bytes (CTS). Written now if the lane has room, else on a later progress — never waited
   * for here, as both sides may be writing into full lanes.
   */
  startPull(req: MxRequest, source: Partner, rec: InboundRecord, xfer: number): void {
    if ((rec.flags & FLAG_PUSH) === 0) {
      // A large rendezvous the sender left to our NIC to pull (CHANNEL_PUSH_ALWAYS).
      this.parts.nic.startPull(req, source, rec, xfer);
      return;
    }
    this.lastXferId = (this.lastXferId + 1) >>> 0 || 1;
    const t = new Transfer(req, this.lastXferId, xfer, rec.syncId);
    if (this.released || this.peer.dead !== undefined) {
      this.failTransfer(t, this.peer.dead ?? "the peer endpoint went away", MxStatus.ENDPOINT_CLOSED);
      return;
    }
    this.ctx.counters.pulls++;
    this.ctsWaiting.push(t);
    this.push();
  }

  /** Writes what waits outside the backlog: NOTIFYs and CTSs first (they unblock the peer), then FRAGs. True if it wrote any. */
  private push(): boolean {
    const w = this.writer;
    // A closed channel: nothing more goes in (a push would complete a send whose bytes no one
    // reads); progress's sweep finds it closed and fails the peer and what waits on it.
    if (w.closed) return false;
    let wrote = false;
    const nq = this.notifyWaiting;
    if (nq.length > 0) {
      let i = 0;
      while (i < nq.length && this.writeNotify(nq[i], nq[i + 1], nq[i + 2])) i += 3;
      if (i > 0) {
        nq.splice(0, i);
        wrote = true;
      }
      if (nq.length > 0) return wrote;
    }
    const cts = this.ctsWaiting;
    while (cts.length > 0) {
      const t = cts[0];
      const at = w.reserve(0);
      if (at < 0) return wrote;
      const words = w.words;
      const i = at >>> 2;
      const aux = i + RecordWord.Aux;
      words[i + RecordWord.Type] = RecordType.Cts;
      words[i + RecordWord.MatchHi] = 0;
      words[i + RecordWord.MatchLo] = 0;
      words[i + RecordWord.Length] = 0;
      words[aux + CtsAux.SyncId] = t.syncId;
      words[aux + CtsAux.Xfer] = t.id;
      words[aux + CtsAux.Length] = t.xfer;
      w.commit();
      cts.shift();
      wrote = true;
      this.receiving.push(t);
      if (kickPeer(this.laneCtl, this.peerIntr)) this.ctx.counters.kicks++;
    }
    const out = this.pushing;
    while (out.length > 0) {
      const t = out[0];
      const req = t.req;
      // Failed meanwhile (the peer was lost, the endpoint closed): nothing more to push.
      if (req.state >= RequestState.Revoking) {
        out.shift();
        continue;
      }
      while (t.done < t.xfer) {
        // The reader closed the channel meanwhile (it disconnected): the rest would go into a
        // lane no one reads. The send fails with the peer (checkClosed, on the next sweep).
        if (w.closed) return wrote;
        const n = Math.min(channelFragment(t.done), t.xfer - t.done);
        const at = w.reserve(n);
        if (at < 0) return wrote;
        const words = w.words;
        const i = at >>> 2;
        const aux = i + RecordWord.Aux;
        words[i + RecordWord.Type] = RecordType.Frag;
        words[i + RecordWord.MatchHi] = 0;
        words[i + RecordWord.MatchLo] = 0;
        words[i + RecordWord.Length] = n;
        words[aux + FragAux.Xfer] = t.id;
        words[aux + FragAux.Offset] = t.done;
        const to = at + RECORD_HEADER_BYTES;
        if (t.done + n <= req.buffer.length) copyBytes(w.bytes, to, req.buffer, t.done, n);
        else {
          // Resized or detached since isend: the receiver gets zeros in its place, the send ABORTED.
          w.bytes.fill(0, to, to + n);
          req.lostBuffer = true;
        }
        w.commit();
        wrote = true;
        t.done += n;
        if (kickPeer(this.laneCtl, this.peerIntr)) this.ctx.counters.kicks++;
      }
      out.shift();
      // Every byte is in the lane: the send is over (as an eager send is once copied in),
      // unless the reader closed the channel and let go before reading the last FRAG.
      if (!w.readBeforeClose()) {
        req.reason ??= `this peer is disconnected: ${this.peer.dead ?? "it closed the channel during the transfer"}`;
        this.sends.answer(this.peer, t.syncId, 0, MxStatus.ENDPOINT_UNREACHABLE);
        continue;
      }
      this.sends.answer(this.peer, t.syncId, t.xfer, MxStatus.SUCCESS);
    }
    return wrote;
  }

  /** A CTS: the receiver matched our rendezvous `syncId` and wants `xfer` bytes of it pushed. */
  private onCts(syncId: number, id: number, xfer: number): void {
    const req = this.sends.get(syncId);
    if (
      req === undefined ||
      req.peer !== this.peer ||
      !req.pushed ||
      req.state !== RequestState.Sent ||
      xfer < 1 ||
      xfer > req.msgLength
    ) {
      this.garbage(`a CTS for ${xfer} bytes of no rendezvous of ours (sync id ${syncId})`);
      return;
    }
    req.state = RequestState.Pulling;
    const tb = this.ctx.trace;
    if (tb !== undefined && req.traceId !== 0) tb.record(req.traceId, TraceStage.PushStarted, traceNow());
    this.pushing.push(new Transfer(req, id, xfer, syncId));
  }

  /** A FRAG: checked against the transfer it names, then copied out of the lane into the receive. */
  private onFrag(rd: LaneReader): void {
    const id = rd.aux[FragAux.Xfer];
    const offset = rd.aux[FragAux.Offset];
    const n = rd.length;
    const list = this.receiving;
    let k = 0;
    while (k < list.length && list[k].id !== id) k++;
    if (k === list.length) {
      // Not ours, or a transfer already failed for a bad FRAG: its remaining FRAGs are dropped.
      this.ctx.counters.channelErrors++;
      return;
    }
    const t = list[k];
    if (offset !== t.done || n < 1 || n > t.xfer - t.done) {
      list.splice(k, 1);
      this.ctx.counters.channelErrors++;
      this.failTransfer(
        t,
        `the peer pushed ${n} bytes at offset ${offset} of a ${t.xfer}-byte transfer (expected offset ${t.done})`,
        MxStatus.ABORTED,
      );
      return;
    }
    const req = t.req;
    if (offset + n <= req.buffer.length) copyBytes(req.buffer, offset, rd.bytes, rd.payload, n);
    else req.lostBuffer = true;
    t.done += n;
    if (t.done < t.xfer) return;
    list.splice(k, 1);
    const tb = this.ctx.trace;
    if (tb !== undefined && req.traceId !== 0) tb.record(req.traceId, TraceStage.Copied, traceNow());
    this.completion.complete(req, t.xfer < req.msgLength ? MxStatus.TRUNCATED : MxStatus.SUCCESS, t.xfer);
  }

  private failTransfer(t: Transfer, why: string, code: number): void {
    this.failRequest(t.req, why, code);
  }

  private failRequest(req: MxRequest, why: string, code: number): void {
    req.reason ??= why;
    this.completion.complete(req, code, 0);
  }

  /** The peer wrote something no sender of ours would: it is failed (as for a broken lane). */
  private garbage(what: string): void {
    this.ctx.counters.channelErrors++;
    this.parts.partners.fail(
      this.peer,
      `peer wrote garbage into the channel: ${what}`,
      MxStatus.ENDPOINT_UNREACHABLE,
    );
  }

  private onRecord(rd: LaneReader): void {
    const a = rd.aux;
    const type = rd.type;
    const piece = type === RecordType.Frag && a[FragAux.Xfer] === PIECES_XFER;
    if (this.pieces.active && !piece) {
      this.pieces.fail("a record came between the pieces of an eager message");
      return;
    }
    if (type === RecordType.Frag) {
      // A FRAG carries its bytes: one flagged as carrying none (a rendezvous's flag, which
      // exempts Length from the reader's fit check) would have us copy bytes past its record.
      if ((rd.flags & RecordFlag.NoPayload) !== 0) {
        this.garbage(`a FRAG record of ${rd.length} bytes flagged as carrying none`);
        return;
      }
      if (piece) this.pieces.piece(rd);
      else this.onFrag(rd);
      return;
    }
    if (type === RecordType.Notify) {
      this.sends.answer(this.peer, a[NotifyAux.SyncId], a[NotifyAux.Xfer], a[NotifyAux.Status]);
      return;
    }
    if (type === RecordType.Cts) {
      this.onCts(a[CtsAux.SyncId], a[CtsAux.Xfer], a[CtsAux.Length]);
      return;
    }
    if (type === RecordType.Ping) {
      this.garbage("a PING record (the NIC's, never a channel's)");
      return;
    }

    if (type === RecordType.Eager) {
      // An EAGER carries its bytes: one claiming a length without them (the lane's NoPayload
      // flag, a rendezvous's) would have the receive read whatever else the lane holds.
      if ((rd.flags & RecordFlag.NoPayload) !== 0) {
        this.garbage(`an EAGER record of ${rd.length} bytes flagged as carrying none`);
        return;
      }
      if ((rd.flags & FLAG_PIECES) !== 0) {
        this.pieces.first(rd, this.rec);
        return;
      }
    }
    rd.countMessage();
    const r = this.rec;
    r.rndv = type === RecordType.Rndv;
    r.flags = rd.flags;
    r.matchHi = rd.matchHi;
    r.matchLo = rd.matchLo;
    r.length = rd.length;
    r.syncId = a[MsgAux.SyncId];
    r.seq = a[MsgAux.Seq] | 0;
    r.region = a[MsgAux.XpIndex];
    r.key = a[MsgAux.XpKey];
    r.offset = a[MsgAux.XpOffset];
    r.traceSeq = a[MsgAux.TraceSeq];
    r.bytes = rd.bytes;
    r.payload = rd.payload;
    this.matching.deliver(this.peer, r);
  }
}

/** Attaches channels to partners, and takes the driver events that bring and end them. */
export class Channels implements DriverEventSink {
  constructor(private readonly parts: ChannelPathParts) {}

  /**
   * A channel our connect got whose lanes a member closed already: the peer released it
   * (mx_disconnect) between myrback's look and ours. What the peer wrote into it is read (its
   * sender saw those sends complete), then that connection is failed and the driver unmaps
   * the channel; true is returned. Dropped unread, those sends were lost: a rank that
   * connected, sent and disconnected in a loop to a peer that connected back lost a tenth of
   * them (a reviewer's PoC).
   */
  takeIfClosed(ch: DriverChannel, peerNic: number, peerEndpoint: number, peerSession: number): boolean {
    if (!channelLanesClosed(ch.channel)) return false;
    this.takeClosed({ ...ch, peerNic, peerEndpoint, peerSession });
    return true;
  }

  /**
   * `peer` is gone for us (its channel died, or mx_disconnect): what it wrote into the
   * channel before is taken — its sender saw those sends complete — then it is failed.
   * `closing`: what the closed lanes tell the peer (mx_disconnect: Disconnected).
   */
  lost(peer: Partner, why = "the peer endpoint went away", closing = LaneClosed.Dead): void {
    if (peer.dead !== undefined) return;
    const ch = peer.channel;
    if (ch instanceof ChannelPath) {
      // Closed first, then read: a writer that looked at the flag before it was set has
      // committed by the time the drain ends, nearly always. Read first, the peer's sends in
      // the time between the drain and the close (failing listeners, transfers) were lost,
      // each MX_STATUS_SUCCESS to it.
      ch.closeLanes(closing);
      ch.drain();
    }
    this.parts.partners.fail(peer, why, MxStatus.ENDPOINT_CLOSED);
  }

  /** The endpoint closes: each channel tells its peer so (LaneClosed.EndpointClosed) before the peer is failed. */
  closing(peers: readonly Partner[]): void {
    for (const p of peers)
      if (p.dead === undefined && p.channel instanceof ChannelPath)
        p.channel.closeLanes(LaneClosed.EndpointClosed);
  }

  /**
   * A channel its connector closed (or released: mx_disconnect) before we took its CONNECT
   * (myrback keeps such a channel for us when it holds records): what the connector wrote is
   * taken — it saw those sends complete — and then that connection is failed, as for a
   * channel that dies later. Released unread, they were lost: a rank that opened, connected,
   * sent 8 B and closed in a loop lost ~1% of its messages, each MX_STATUS_SUCCESS to it. The
   * connector is not the endpoint as it is now: a live partner (its next incarnation, or the
   * same one connected again through the NIC, which we reached meanwhile) is left alone, and
   * the records come from a partner of their own, read before that one's later messages.
   * It is myrback's word that the channel is such (DriverChannel.closed), and it is failed
   * after one lane's worth whatever its lanes say: the closed connector still holds the buffer,
   * and one that opened the lanes again had the channel taken for a live one, failing the
   * endpoint id's next owner as a stale incarnation (a reviewer's PoC).
   */
  private takeClosed(ch: ReturnType<MxDriver["acceptChannel"]>): void {
    const { partners } = this.parts;
    const live = partners.get(ch.peerNic, ch.peerEndpoint);
    const peer =
      live !== undefined && live.dead === undefined
        ? partners.passing(ch.peerNic, ch.peerEndpoint, ch.peerSession)
        : partners.add(ch.peerNic, ch.peerEndpoint, ch.peerSession);
    this.attach(peer, ch);
    if (peer.channel instanceof ChannelPath) peer.channel.end();
    else partners.fail(peer, "the peer endpoint went away", MxStatus.ENDPOINT_CLOSED);
  }

  /** `ch` becomes `peer`'s channel and its fast way (unless it already is). */
  attach(peer: Partner, ch: DriverChannel): void {
    if (peer.channel !== undefined && peer.channel.channelId === ch.channelId) return;
    const path = new ChannelPath(peer, ch, this.parts);
    peer.channel = path;
    peer.fast = path;
    this.parts.partners.route(peer);
  }

  onDriverEvent(kind: number, channelId: number, nic: number, endpoint: number, session: number): void {
    const { partners, driver, ctx } = this.parts;
    if (kind === DRIVER_EVENT_CONNECT) {
      const known = partners.get(nic, endpoint);
      // The DISCONNECT that comes before a channel is replaced may be missing: myrback writes
      // none when our queue has no room for it (driver-abi.ts). So a live peer of this session
      // keeps the channel it has — this one is it, or an older one myrback closed since (we
      // connected on our side meanwhile) — only while that channel's lanes are open.
      if (known && known.dead === undefined && known.session === session) {
        known.channel?.checkClosed();
        if (known.dead === undefined && known.channel !== undefined) return;
      }
      try {
        const ch = driver.acceptChannel(ctx.endpointId, channelId);
        if (ch.closed === true) {
          this.takeClosed(ch);
          return;
        }
        // Closed by its connector since myrback handed it over (mx_disconnect right after its
        // sends): what it wrote is read, then it is failed, as any peer that went away. Dropped
        // unread, those sends were lost, each MX_STATUS_SUCCESS to their sender.
        const closedSince = channelLanesClosed(ch.channel);
        // A live channel: its connector is that endpoint as it is now. A partner of another
        // session is an incarnation closed since, whose DISCONNECT never came: failed now, as
        // that event would have. (Given the stale partner, the channel went on from its
        // sequence numbers, and the new peer's messages waited for their turn for ever.)
        const stale = partners.get(ch.peerNic, ch.peerEndpoint);
        if (stale && stale.dead === undefined && stale.session !== ch.peerSession)
          this.lost(stale, "the peer endpoint was reopened");
        const peer = partners.add(ch.peerNic, ch.peerEndpoint, ch.peerSession);
        this.attach(peer, ch);
        if (closedSince && peer.channel instanceof ChannelPath) peer.channel.end();
      } catch (e) {
        // MX_CONNECTION_FAILED: the channel was closed before we looked (its connector
        // disconnected, or connected again on a fresh one): a stale event, not an error.
        if ((e as { code?: unknown }).code !== "MX_CONNECTION_FAILED") ctx.counters.channelErrors++;
      }
    } else if (kind === DRIVER_EVENT_DISCONNECT) {
      const peer = partners.get(nic, endpoint);
      const ch = peer?.channel;
      // A peer through the NIC (no channel) is named by its session: a DISCONNECT read after
      // the rank connected to the endpoint's next incarnation is not about that one.
      // The closer's own word, when its lanes carry one: the DISCONNECT may come before the
      // sweep that reads them, and "went away" sent users looking for a rank that had died.
      if (peer && (ch?.channelId === channelId || (channelId === 0xffffffff && peer.session === session)))
        this.lost(peer, ch instanceof ChannelPath ? ch.closedReason() : undefined);
    }
  }
}

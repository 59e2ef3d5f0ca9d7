/**
 * The MX library's types, as Open-MX's omx_types.h: requests and their states, statuses,
 * the opaque address and the partner behind it, the record every path hands to matching,
 * the interfaces the parts of an endpoint meet at, and its counters.
 *
 * Life of a request (RequestState; one state at a time, and the queue it sits in follows
 * from it):
 *
 *   send:  Queued ──(its path took it)──► Sent ──► Done ──(test/wait)──► Reaped
 *            │ (waits in its partner's backlog while the path is full)   ▲
 *            └──── an eager send a path completes at once ───────────────┤
 *          a rendezvous send whose receiver's NIC may still be copying: Sent ─► Revoking ─► Done
 *   recv:  Queued ─► Posted ──(matched)──► Pulling (rendezvous) ──► Done ──► Reaped
 *                      └──────(matched: an eager copy)────────────► Done
 *
 * Failure takes any state before Done to Done (with an error status and, when the library
 * knows more, `reason`); mx_cancel takes only Posted. A request the user reaped is over:
 * using it again is MX_BAD_REQUEST.
 */

import { MxStatus, mxStatusName } from "../nic/status.js";
import { zeroed } from "../xen/double-counts.js";
import { MxError } from "./codes.js";
import { NR_ID_MASK } from "./nic-records.js";
import type { RegCounters, RegEntry } from "./regcache.js";
import type { TraceBuffer } from "./trace.js";

// A const enum: tsc writes each state as its number (see myrixen/channel-abi.ts on why the hot
// path wants that), and the order matters: Revoking and later are past the path's hands.
// biome-ignore lint/suspicious/noConstEnum: inlined by tsc; the project builds with tsc, never file by file
export const enum RequestState {
  /** Made; a send not yet taken by its path (it waits in its partner's backlog, in order). */
  Queued = 0,
  /** A receive in the posted queue, not matched yet: the only state mx_cancel takes. */
  Posted = 1,
  /** A send its path took: eager data staged in the NIC until SEND_DONE, or a record whose answer (NOTIFY) it waits for. */
  Sent = 2,
  /** A matched rendezvous receive whose data is being pulled (by the NIC, or over Ethernet). */
  Pulling = 3,
  /** Finished, but the NIC may still be copying under its pull right: done once the NIC lets go (its status is kept meanwhile). */
  Revoking = 4,
  /** Completed: status final, in the completion queue until test/wait/testAny reaps it. */
  Done = 5,
  /** Handed to the user: the request is over. */
  Reaped = 6,
}

/** mx_status_t. */
export class MxStatusInfo {
  code: number = MxStatus.PENDING;
  source: MxAddress | undefined;
  matchHi = 0;
  matchLo = 0;
  /** The sender's original length. */
  msgLength = 0;
  /** Bytes actually moved (min of message and receive buffer). */
  xferLength = 0;
  context: unknown;
  /** Why the request failed, when the library knows more than the status code says. */
  reason: string | undefined = undefined;

  /** The 64-bit match value. */
  get matchInfo(): bigint {
    return (BigInt(this.matchHi) << 32n) | BigInt(this.matchLo);
  }

  /** The status code as MX spells it: MX_STATUS_SUCCESS, MX_STATUS_TRUNCATED, ... */
  get codeName(): string {
    return `MX_STATUS_${mxStatusName(this.code)}`;
  }
}

type RequestKind = "send" | "recv";

/**
 * mx_request_t: a send or a receive in flight. It is its own status (`req.status === req`),
 * so a message costs one object, not two. It repeats MxStatusInfo's fields rather than extend
 * it: made on every message, a derived class was built through V8's generic construct stub
 * and a super call (with the channel's atomics, a tenth of an 8-byte message's library work).
 */
export class MxRequest implements MxStatusInfo {
  code: number = MxStatus.PENDING;
  source: MxAddress | undefined = undefined;
  matchHi = 0;
  matchLo = 0;
  msgLength = 0;
  xferLength = 0;
  context: unknown;
  reason: string | undefined = undefined;
  /** @internal Where the request is in its life (RequestState). */
  state: RequestState = RequestState.Queued;
  /** @internal A send's partner. */
  peer: Partner | undefined = undefined;
  /** @internal */ buffer: Uint8Array;
  /**
   * @internal A receive's mask, as an int32 (the same 32 bits; −1 = every bit): 0xffffffff is
   * no V8 small integer, and a double field boxes a number in every request made.
   */
  matchMaskHi = -1;
  /** @internal As matchMaskHi. */ matchMaskLo = -1;
  /** @internal An issend: completes once the receiver matched. */ sync = false;
  /** @internal The id the receiver's NOTIFY names (pending-sends.ts), or 0. */ syncId = 0;
  /** @internal */ rndv = false;
  /** @internal A rendezvous its co-resident channel pushes (no registration, no pull right; PeerPath.pushes). */
  pushed = false;
  /** @internal A whole bounce buffer (its size class) standing in for `buffer` in this domain's memory. */
  bounce: Uint8Array | undefined = undefined;
  /** @internal The registration this request holds while in flight (regcache.ts). */
  reg: RegEntry | undefined = undefined;
  /** @internal Message id while traced (trace.ts), else 0. */
  traceId = 0;
  /** @internal The pull right armed for this rendezvous send (exposure index), or -1. */
  xp = -1;
  /** @internal Its buffer was resized or detached while in flight (codes.ts checkBuffer): it completes ABORTED. */
  lostBuffer = false;
  /** @internal A send whose whole payload was copied when it left (a NIC staging slot): its buffer lost after that cost the receiver nothing. */
  staged = false;
  /** @internal mx_forget: completes as it would, but is never reported (nor kept for test/wait). */
  forgotten = false;
  /** @internal Revoking: the status and length it completes with once the NIC lets go. */
  revokedCode = 0;
  revokedXfer = 0;
  /**
   * The endpoint that made the request (its context), once it claimed it. The field exists
   * only on objects this constructor made, so an object made with the prototype
   * (Object.create) and no constructor is no request (MxRequest.of).
   */
  #owner: object | undefined = undefined;

  constructor(
    readonly kind: RequestKind,
    buffer: Uint8Array,
    context: unknown,
  ) {
    this.buffer = buffer;
    this.context = context;
  }

  /** The 64-bit match value. */
  get matchInfo(): bigint {
    return (BigInt(this.matchHi) << 32n) | BigInt(this.matchLo);
  }

  /** The status code as MX spells it: MX_STATUS_SUCCESS, MX_STATUS_TRUNCATED, ... */
  get codeName(): string {
    return `MX_STATUS_${mxStatusName(this.code)}`;
  }

  /** @internal The endpoint that posts `req` takes it for its own (once: a request never changes hands). */
  static claim(req: MxRequest, owner: object): void {
    req.#owner ??= owner;
  }

  /**
   * Whether `x` is a request this library made and the endpoint whose context is `owner`
   * posted (a brand check: a look-alike with MxRequest's prototype is not one).
   */
  static of(x: unknown, owner: object): "yes" | "foreign" | "not a request" {
    if (typeof x !== "object" || x === null || !(#owner in x)) return "not a request";
    const o = (x as MxRequest).#owner;
    return o === owner ? "yes" : o === undefined ? "not a request" : "foreign";
  }

  /** Whether the request completed (its status is final). */
  get done(): boolean {
    return this.state >= RequestState.Done;
  }

  /** mx_status_t of this request (the request itself). */
  get status(): MxStatusInfo {
    return this;
  }
}

/** The key of an address's partner: library-internal, like Open-MX's omx__partner_from_addr. */
export const kPartner: unique symbol = Symbol("mx partner");

/**
 * The address of a connected peer endpoint (mx_endpoint_addr_t): opaque to the program —
 * what it names, and a context the program may attach. Everything the library keeps about
 * the peer is in its Partner.
 */
export class MxAddress {
  readonly nic: number;
  readonly endpoint: number;
  readonly session: number;
  /** A value the application may attach (mx_set_endpoint_addr_context). */
  context: unknown = undefined;
  /** @internal */
  readonly [kPartner]: Partner;

  /** @internal Addresses are made by the library, one per partner. */
  constructor(partner: Partner) {
    this.nic = partner.nic;
    this.endpoint = partner.endpoint;
    this.session = partner.session;
    this[kPartner] = partner;
  }

  toString(): string {
    return `nic ${this.nic} endpoint ${this.endpoint}`;
  }
}

/**
 * One way of reaching a peer — the co-resident channel, the NIC, or MX over Ethernet — as
 * undici's connectH1 object is one protocol: the endpoint never branches on which it is.
 * One is chosen per partner (Partner.path) when its way changes.
 */
export interface PeerPath {
  /**
   * Hands the send to this path: false if the path is full right now (the send then waits
   * in its partner's backlog, in order). The path completes the request, or marks it Sent.
   */
  trySend(req: MxRequest): boolean;
  /** Answers a synchronous send or a finished pull with a NOTIFY; it is never dropped. */
  notify(syncId: number, xfer: number, status: number): void;
  /**
   * Whether the path moves this rendezvous's data itself, from the send buffer as it is (the
   * channel's pipelined push: no registration, bounce copy or pull right). Asked once, as
   * the send is made; true marks the request `pushed`.
   */
  pushes?(req: MxRequest): boolean;
  /** Largest message this path takes eager above the endpoint's threshold (it may wait in the backlog for room, in order). */
  readonly eagerMax?: number;
  /**
   * Eager up to this many bytes on this path unless the endpoint was given a rendezvous
   * threshold (the NIC path across hosts: a rendezvous costs two more crossings of the wire).
   */
  readonly eagerLimit?: number;
}

/** A co-resident channel's reading side: read on every progress, whichever way sends go. */
export interface ChannelEnd {
  readonly channelId: number;
  /**
   * Reads and matches what the peer wrote, pushes what waits (true if anything moved); fails
   * the peer on garbage. `sweep`: the lane's rarer duties too (LaneReader.takeSpaceWanted).
   */
  receive(sweep?: boolean): boolean;
  /** On a sweep that read nothing: fails the peer if its channel was closed. */
  checkClosed(): void;
  /**
   * Takes what the peer wrote before it went away (its sender saw those eager sends complete),
   * whatever the caps say (charged to them), up to a lane's worth: call before failing it.
   */
  drain(): void;
  /** The peer is gone (`code`): transfers under way fail, the lanes are dropped and the driver unmaps the channel. */
  release(code?: number): void;
  /**
   * The endpoint is about to sleep: the peer's next record kicks it. Said in the lane the peer
   * writes to us (channel-abi.ts ReaderSleeping), which no one else reaches.
   */
  announceSleep(): void;
  /** Whether the flag announceSleep raised is still up (the peer has not kicked since). */
  sleepAnnounced(): boolean;
  /** The endpoint is awake: its flag comes down (if the peer left it up). */
  awake(): void;
}

/** Who fetches a matched rendezvous: the NIC (a PULL descriptor) or the sender over Ethernet. */
export interface Puller {
  /** Moves `xfer` (≥ 1) bytes of the rendezvous `rec` from `source` into the receive `req`. */
  startPull(req: MxRequest, source: Partner, rec: InboundRecord, xfer: number): void;
}

/** A part of the endpoint that holds something of a peer and lets go of it when the peer fails. */
export interface PeerLossListener {
  peerLost(peer: Partner, why: string, code: number): void;
}

/** The endpoint's blocking loop, for the rare calls that wait (connects): true once `ready()`. */
export type Block = (ready: () => boolean, timeoutMs: number) => boolean;

/**
 * A peer endpoint's address, (nic, endpoint), as this endpoint's limit on kept messages sees
 * it (matching.ts): one for every connection and session of the address, gone ones included.
 * A peer that disconnects and connects again, or reopens its endpoint, gets a new Partner but
 * keeps its account, so it cannot shed what it made this endpoint keep by coming back.
 */
export class PeerAccount {
  /** Bytes this endpoint keeps of what the address sent (KEPT_RECORD_COST each besides the payload). */
  kept = 0;

  constructor(
    readonly nic: number,
    readonly endpoint: number,
  ) {}
}

/**
 * A peer endpoint and everything this endpoint keeps about it (Open-MX's omx__partner):
 * its ways in and out, its pair's sequence numbers, what waits on it, its health.
 */
export class Partner {
  /** What the program holds. */
  readonly address: MxAddress;
  /** How sends go now: `ether` when either side is on the split path and the MAC is known, else `fast`. */
  path: PeerPath | undefined = undefined;
  /** The fast way: the co-resident channel, or the NIC. */
  fast: PeerPath | undefined = undefined;
  /** MX over Ethernet, once the peer's MAC is known. */
  ether: PeerPath | undefined = undefined;
  /** The co-resident channel, read on every progress. */
  channel: ChannelEnd | undefined = undefined;
  /** The peer said it is on the split path: reach it over Ethernet. */
  peerSplit = false;
  /** Sends waiting, in order, for room on the path. */
  readonly backlog: MxRequest[] = [];
  /**
   * The sequence number of our next message to the peer (seqAfter: epoch and n). Sequence
   * numbers are u32s on every path, kept here as int32s (the same bits): as u32s they left
   * V8's small integers past 2^31, and every Partner's fields turned into boxed doubles.
   */
  sendSeq = 0;
  /** The sequence number the next message from the peer must carry (MX keeps a connection's order); an int32. */
  recvSeq = 0;
  /** Messages that arrived ahead of an earlier one (only when the peer's path changed), by sequence. */
  held: KeptRecord[] | undefined = undefined;
  /**
   * The peer's previous connection, once a newer one's first message came: the sequence number
   * its next message must carry and what it holds, so that its late messages (still in the
   * NIC's queue, or another way) keep their order (matching.ts).
   */
  prev: { seq: number; held: KeptRecord[] } | undefined = undefined;
  /** Whether a connect checked this peer's key (a peer that only sent to us is not). */
  verified = false;
  /** When we last heard from the peer or last probed it (ms, performance.now()). */
  lastNews = 0;
  /** A liveness probe is in flight. */
  probing = false;
  /** Why a message to this peer failed (a hole in its sequence), once one has. */
  holed: string | undefined = undefined;
  /** Why the peer is gone, once it is: nothing more goes to it or comes from it. */
  dead: string | undefined = undefined;
  /**
   * Failed for what it made this endpoint keep (matching.ts): records from this session of it
   * are refused, not taken as a new start (a NIC peer's next record used to bring it back,
   * its sequence numbers kept, and the messages dropped for it silently missing).
   */
  refused = false;

  constructor(
    /** The table this partner belongs to (an address is valid only on its own endpoint). */
    readonly owner: unknown,
    readonly nic: number,
    readonly endpoint: number,
    readonly session: number,
    /** What its address holds here, shared with the address's earlier and later partners. */
    readonly account = new PeerAccount(nic, endpoint),
  ) {
    this.address = new MxAddress(this);
  }

  /** Sends a NOTIFY the way sends to this peer go now (nothing, once it is gone). */
  notify(syncId: number, xfer: number, status: number): void {
    if (this.dead === undefined) this.path?.notify(syncId, xfer, status);
  }
}

/**
 * Sequence numbers, the same u32 on every path (kept as int32s): (epoch << 16) | n. The epoch
 * counts the sender's connections to the peer (PartnerTable.add gives each new partner of
 * the same session the next), n its messages on the connection, wrapping within it. The
 * receiver matches a connection's messages in n's order, and a newer epoch tells it that the
 * peer connected anew, so that connection starts at n = 0 whatever became of the last one.
 * Without epochs each side guessed: a pair that had a channel started again from 0, one that
 * talked through the NIC (where mx_disconnect is seen by its caller only) went on counting,
 * and when the two sides' histories differed (one had the channel, the other connected
 * through the NIC meanwhile) a connection's messages were dropped as duplicates or held for
 * ever: two ranks that connected, sent and disconnected to each other in a loop lost a third
 * of the messages each was told had been sent (a reviewer's PoC).
 */
export function seqAfter(seq: number): number {
  return (seq & -0x10000) | ((seq + 1) & 0xffff);
}

/** The first sequence number of the connection after `seq`'s (its epoch's next, n = 0). */
export function seqNextEpoch(seq: number): number {
  return ((seq >>> 16) + 1) << 16;
}

/** How far `a` is past `b` in their connection (n's difference, −32768..32767). */
export function seqAhead(a: number, b: number): number {
  return ((a - b) << 16) >> 16;
}

/** Whether `a` is of a later connection than `b` (epochs compared as 16-bit wrapping counts). */
export function seqLaterEpoch(a: number, b: number): boolean {
  return (((a >>> 16) - (b >>> 16)) << 16) >> 16 > 0;
}

/** Takes `peer`'s next send sequence number. */
export function nextSendSeq(peer: Partner): number {
  const seq = peer.sendSeq;
  peer.sendSeq = seqAfter(seq);
  return seq;
}

/**
 * An EAGER or RNDV record as matching sees it, whichever path brought it: the one object a
 * path fills (it keeps one and refills it per record) and matching consumes at once — or
 * copies with `keep()` when it must wait (held ahead of its turn, or unexpected). Its
 * fields hold until the consumer makes a call that may progress the endpoint (a NOTIFY to
 * a full lane, a PULL to a full send queue): read what is needed first.
 */
export class InboundRecord {
  rndv = false;
  /** Record flags (FLAG_TRACED: `traceSeq` is the sender's trace sequence). */
  flags = 0;
  matchHi = 0;
  matchLo = 0;
  /** EAGER: payload bytes; RNDV: the message length. */
  length = 0;
  syncId = 0;
  seq = 0;
  /** RNDV: the pull right the sender armed (exposure index, key, offset within it). */
  region = 0;
  key = 0;
  offset = 0;
  traceSeq = 0;
  /** EAGER: the payload is `bytes` from `payload`, valid until the path releases the record. */
  bytes: Uint8Array | null = null;
  payload = 0;
  /** Kept records: who sent it, and its trace id (0: not traced). */
  source: Partner | null = null;
  traceId = 0;
  /** `bytes` is this record's own copy of the whole message (assembled from pieces): kept as is. */
  owned = false;
  /** A held rendezvous of a failed connection: its turn passes with nothing matched (its data cannot be fetched). */
  tomb = false;
  /** Kept unexpected: its neighbours in arrival order, and in its match value's queue (unexpected.ts). */
  older: KeptRecord | null = null;
  newer: KeptRecord | null = null;
  sameNext: KeptRecord | null = null;
  samePrev: KeptRecord | null = null;

  constructor(
    /** RNDV: who fetches the data, by the way the record came. */
    readonly puller: Puller,
  ) {}

  /** A copy that outlives the path's buffer: the eager payload copied out. */
  keep(source: Partner, traceId: number): KeptRecord {
    const k = new InboundRecord(this.puller);
    k.rndv = this.rndv;
    k.flags = this.flags;
    k.matchHi = this.matchHi;
    k.matchLo = this.matchLo;
    k.length = this.length;
    k.syncId = this.syncId;
    k.seq = this.seq;
    k.region = this.region;
    k.key = this.key;
    k.offset = this.offset;
    k.traceSeq = this.traceSeq;
    const b = this.bytes;
    // An empty message keeps no buffer of its own (a flood of them costs the records only).
    k.bytes =
      this.rndv || b === null
        ? null
        : this.owned
          ? b
          : this.length === 0
            ? NO_BYTES
            : b.slice(this.payload, this.payload + this.length);
    k.source = source;
    k.traceId = traceId;
    return k as KeptRecord;
  }
}

/** The payload of every kept empty message: never written (its length is 0). */
const NO_BYTES = new Uint8Array(0);

/** A record kept for later (held ahead of its turn, or unexpected): it knows its sender. */
export interface KeptRecord extends InboundRecord {
  source: Partner;
}

export interface EndpointCounters extends RegCounters {
  sends: number;
  recvs: number;
  eager: number;
  rndv: number;
  pulls: number;
  unexpected: number;
  /** Peers failed for keeping more unexpected bytes than the endpoint may keep (matching.ts). */
  unexpectedOverflows: number;
  /** Kept unexpected messages receives and probes looked at to find theirs (unexpected.ts: one per exact match). */
  unexpectedScanned: number;
  /** Interrupts this endpoint raised on a peer that had announced it would sleep. */
  kicks: number;
  /** Times this endpoint announced it would sleep (a peer may kick only after one). */
  sleeps: number;
  /**
   * Sleeps that lasted their whole slice (no kick, no other wake-up came): nothing arrived
   * meanwhile, or something did and its sender (a peer, the NIC) did not kick.
   */
  sleepTimeouts: number;
  progress: number;
  channelErrors: number;
  nicErrors: number;
  bounces: number;
  /** Records sent and received through the NIC (peers on other NICs). */
  wireSends: number;
  wireRecvs: number;
  /** Messages that arrived ahead of their turn and waited (a peer changing paths). */
  held: number;
  /** Liveness probes sent to peers we were waiting on. */
  probes: number;
  /** Messages a busy receiver's NIC refused (held as many of ours as it may), sent again later (busy-retries.ts). */
  busyRefusals: number;
  /** Times a co-resident lane was left unread because its QoS caps were in debt (lane-policer.ts). */
  laneHolds: number;
}

/**
 * What every part of an endpoint shares: who it is, its counters, the trace buffer while
 * tracing, and the ids that name its waiting sends, pulls and connects.
 */
export class EndpointContext {
  /**
   * Progress rounds, as an int32 that wraps (`counters.progress` shows it as a u32): a spinning
   * wait runs ~10^7 rounds a second, so a number counted on would leave V8's small integers
   * within minutes, and the counters object's new shape would deoptimise every function
   * reading it in the middle of a job (mx/channel.ts says why).
   */
  rounds = 0;
  readonly counters: EndpointCounters = newCounters();
  /**
   * Set by a progress round: the earliest time (performance.now()) a lane held by its caps
   * may be read again, or a message a busy receiver refused may go again (busy-retries.ts),
   * so a blocking wait sleeps no longer than that; 0 when nothing waits so.
   */
  lookAgainAt = 0;
  /** The trace buffer while tracing, else undefined: with tracing off each stage costs one check. */
  trace: TraceBuffer | undefined = undefined;
  private nextId = 1;

  constructor(
    readonly nicId: number,
    readonly endpointId: number,
    readonly session: number,
    readonly key: number,
  ) {}

  /**
   * A nonzero id for a waiting send, a pull or a connect (0 means "none" in a record), not in
   * `taken` (the caller's ids still waiting). 24 bits: ids travel in a NIC record's aux0
   * (nic-records.ts NR_ID_MASK), so the counter wraps after 2^24 ids (a minute of
   * synchronous sends), and a send still waiting from before the wrap keeps its id: a second
   * one would take its answer, and the first would wait for ever.
   */
  newId(taken: { has(id: number): boolean }): number {
    for (let tries = 0; tries < NR_ID_MASK; tries++) {
      const id = this.nextId;
      this.nextId = (id + 1) & NR_ID_MASK || 1;
      if (!taken.has(id)) return id;
    }
    throw new MxError("MX_NO_RESOURCES", `all ${NR_ID_MASK} request ids of this endpoint are waiting`);
  }
}

/**
 * An endpoint's counters, every one a double from the start (xen/double-counts.ts: a
 * per-message count passes 2^31 after ~25 minutes of 8 B ping-pong). `progress`
 * is refreshed from EndpointContext.rounds (as a u32) when the owner reads them
 * (MxEndpoint.counters), never on the polling path (a getter instead measured 4–7% slower per
 * 8 B message).
 */
function newCounters(): EndpointCounters {
  const c: EndpointCounters = {
    sends: 0.5,
    recvs: 0.5,
    eager: 0.5,
    rndv: 0.5,
    pulls: 0.5,
    unexpected: 0.5,
    unexpectedOverflows: 0.5,
    unexpectedScanned: 0.5,
    kicks: 0.5,
    sleeps: 0.5,
    sleepTimeouts: 0.5,
    progress: 0.5,
    channelErrors: 0.5,
    nicErrors: 0.5,
    bounces: 0.5,
    registrations: 0.5,
    deregistrations: 0.5,
    regCacheHits: 0.5,
    regCacheEvictions: 0.5,
    regionsCached: 0.5,
    bytesCached: 0.5,
    bouncePooledBytes: 0.5,
    wireSends: 0.5,
    wireRecvs: 0.5,
    held: 0.5,
    probes: 0.5,
    busyRefusals: 0.5,
    laneHolds: 0.5,
  };
  return zeroed(c);
}

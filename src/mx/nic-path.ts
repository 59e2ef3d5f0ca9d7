/**
 * The way to a peer through the NIC — a peer on another NIC across a link, or one on ours
 * without a channel — as Open-MX's omx_send.c and the NIC half of omx_recv.c. Records are
 * NIC SENDs (nic-records.ts packs them): an eager message leaves from a staging slot (one
 * copy), a rendezvous as its 16-byte announcement, NOTIFY and PING without payload. They
 * arrive as RECV events in the receive area of the window.
 *
 * A peer that owes us an answer and says nothing is probed (PING): its SEND_DONE fails if
 * the peer endpoint or its host is gone, and then everything waiting on it fails instead of
 * hanging. A message that did not arrive leaves a hole in its pair's sequence, so its peer
 * is failed at once.
 */
import type { MxDriver } from "../myrixen/driver-abi.js";
import { MxStatus, mxStatusName } from "../nic/status.js";
import {
  D_AUX0,
  D_AUX1,
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_LENGTH,
  D_MATCH_HI,
  D_MATCH_LO,
  D_OPCODE,
  D_SRC_OFFSET,
  D_SRC_REGION,
  D_TRACE_SEQ,
  DFLAG_TRACE,
  E_AUX0,
  E_AUX1,
  E_LENGTH,
  E_MATCH_HI,
  E_MATCH_LO,
  E_RECV_OFFSET,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_SRC_SESSION,
  E_TRACE_SEQ,
  ErrorReason,
  Opcode,
  RECV_BYTES,
  RECV_OFFSET,
  SEND_MAX,
} from "../nic/window.js";
import { copyBytes } from "../xen/copy.js";
import { BusyRetries, type NotifyWords, type PeerRetry } from "./busy-retries.js";
import { getWord, putWord } from "./bytes.js";
import { MxError } from "./codes.js";
import type { Completion } from "./completion.js";
import type { Matching } from "./matching.js";
import type { NicQueues, NicRecordSink } from "./nic-queues.js";
import {
  COOKIE_SEND,
  DEFAULT_STAGING_SLOTS,
  NR_ID_SHIFT,
  NR_RNDV_BYTES,
  NR_RNDV_LENGTH,
  NR_RNDV_XP_INDEX,
  NR_RNDV_XP_KEY,
  NR_RNDV_XP_OFFSET,
  NR_TYPE_MASK,
  nicRecordAux0,
  SendStaging,
  sendFailureText,
} from "./nic-records.js";
import type { PartnerTable } from "./partner.js";
import type { PendingSends } from "./pending-sends.js";
import type { PullRights } from "./pull-rights.js";
import { RecordType } from "./records.js";
import { MEMORY_KNOB } from "./regcache.js";
import type { Regions } from "./regions.js";
import { FLAG_TRACED, TraceStage, traceNow } from "./trace.js";
import {
  type Block,
  type EndpointContext,
  InboundRecord,
  MxRequest,
  nextSendSeq,
  Partner,
  type PeerPath,
  RequestState,
} from "./types.js";

/** A SEND without a completion to report (a NOTIFY the ring had no room to keep). */
const NO_SLOT = 0xffff;
/** Cookie slots from here name a NOTIFY kept in the notify ring (staging slots are fewer). */
const NOTIFY_BASE = 0x8000;
/** NOTIFYs kept until their SEND_DONE (a power of two). */
const NOTIFY_RING = 1024;
/** A peer we wait on (a rendezvous or synchronous send) is probed after this long without news. */
const PROBE_AFTER_MS = 250;

/** What the NIC path uses of its endpoint. */
export interface NicPathParts {
  readonly ctx: EndpointContext;
  readonly driver: MxDriver;
  readonly nic: NicQueues;
  readonly partners: PartnerTable;
  readonly sends: PendingSends;
  readonly completion: Completion;
  readonly matching: Matching;
  readonly rights: PullRights;
  readonly regions: Regions;
}

/** The NIC as one partner's path. */
export class NicPath implements PeerPath {
  /** Eager up to what one SEND carries: across hosts a rendezvous's extra round trip through both NIC threads costs more than copying 64 KiB. */
  readonly eagerLimit = SEND_MAX;

  constructor(
    private readonly peer: Partner,
    private readonly records: NicRecords,
  ) {}

  trySend(req: MxRequest): boolean {
    return this.records.trySend(this.peer, req);
  }

  notify(syncId: number, xfer: number, status: number): void {
    this.records.notify(this.peer, syncId, xfer, status);
  }
}

/** The endpoint's records through the NIC: staging, sends, receives, their completions, probes. */
export class NicRecords implements NicRecordSink {
  private readonly ctx: EndpointContext;
  private readonly nic: NicQueues;
  private readonly partners: PartnerTable;
  private readonly sends: PendingSends;
  private readonly completion: Completion;
  /** Eager payloads leaving through the NIC (opened with the first send). */
  private staging: SendStaging | undefined;
  /** Why the staging area could not be opened (the last attempt), for the sends that fail. */
  private stagingError: string | undefined;
  /** The peer of the last record received: consecutive records mostly come from one peer. */
  private lastPeer: Partner | undefined;
  /** The record matching gets (refilled per RECV). */
  private readonly rec: InboundRecord;
  /** Messages busy receivers refused, per peer, to go again. */
  private readonly busy = new BusyRetries();
  /** NOTIFYs in flight: their peer (undefined: a free entry), words, and whether each is a try again. */
  private readonly notifyPeer: (Partner | undefined)[] = new Array(NOTIFY_RING).fill(undefined);
  private readonly notifyWords: (NotifyWords | undefined)[] = new Array(NOTIFY_RING).fill(undefined);
  private readonly notifyRetry = new Uint8Array(NOTIFY_RING);
  private notifyNext = 0;

  constructor(private readonly parts: NicPathParts) {
    this.ctx = parts.ctx;
    this.nic = parts.nic;
    this.partners = parts.partners;
    this.sends = parts.sends;
    this.completion = parts.completion;
    this.rec = new InboundRecord(parts.nic);
  }

  /** The NIC becomes `peer`'s fast way, if it has none. */
  install(peer: Partner): void {
    if (peer.fast === undefined) {
      peer.fast = new NicPath(peer, this);
      this.partners.usesNic = true;
    }
    this.partners.route(peer);
  }

  /**
   * mx_connect to an endpoint on another NIC: the NICs check the key between themselves
   * (CONNECT descriptor, window.ts); neither backend is asked. Blocks, progressing, until
   * the answer or `timeoutMs`.
   */
  connect(nic: number, endpoint: number, key: number, timeoutMs: number, block: Block): Partner {
    const c = this.nic.connect(nic, endpoint, key);
    try {
      block(() => c.done, timeoutMs);
    } finally {
      this.nic.endConnect(c);
    }
    const where = `nic ${nic} endpoint ${endpoint}`;
    switch (c.done ? c.status : MxStatus.TIMEOUT) {
      case MxStatus.SUCCESS: {
        const old = this.partners.get(nic, endpoint);
        if (old && old.dead === undefined && old.session !== c.session) this.partners.reopened(old);
        const peer = this.partners.add(nic, endpoint, c.session);
        peer.verified = true;
        this.install(peer);
        return peer;
      }
      case MxStatus.BAD_KEY:
        throw new MxError("MX_BAD_CONNECTION_KEY", `${where} refused the key 0x${key.toString(16)}`);
      case MxStatus.REJECTED:
        throw new MxError(
          "MX_BUSY",
          `${where} refuses connections from this endpoint for ${c.retryAfter} ms more: too many wrong keys (retry then, with the key its owner opened it with)`,
        );
      case MxStatus.ENDPOINT_UNKNOWN:
      case MxStatus.ENDPOINT_CLOSED:
        throw new MxError("MX_CONNECTION_FAILED", `${where}: no such endpoint is open`);
      case MxStatus.TIMEOUT:
        throw new MxError("MX_TIMEOUT", `${where} did not answer within ${timeoutMs} ms`);
      default:
        throw new MxError(
          "MX_CONNECTION_FAILED",
          `${where} is unreachable (MX_STATUS_${mxStatusName(c.status)}): no live link from NIC ${this.ctx.nicId} to NIC ${nic}`,
        );
    }
  }

  // ---- sends -------------------------------------------------------------------------------------

  /**
   * Posts the send's record as a NIC SEND: eager data through a staging slot, a rendezvous
   * as its announcement. false if the send queue or the staging slots are full right now.
   */
  trySend(dest: Partner, req: MxRequest): boolean {
    if (this.nic.sqFree() === 0) return false;
    let st = this.staging;
    if (st === undefined) {
      st = this.staging = this.openStaging();
      if (st === undefined) {
        // No memory or registration left for the staging area: this send cannot leave.
        req.reason = this.stagingError;
        this.completion.complete(req, MxStatus.NO_RESOURCES, 0);
        this.ctx.counters.nicErrors++;
        return true;
      }
    }
    const rights = this.parts.rights;
    if (req.rndv && !rights.expose(req)) return false;
    const slot = st.take(req);
    if (slot < 0) return false;
    const at = st.offsetOf(slot);
    let len: number;
    if (req.rndv) {
      const b = st.bytes;
      putWord(b, at + NR_RNDV_LENGTH, req.buffer.length);
      putWord(b, at + NR_RNDV_XP_INDEX, req.xp);
      putWord(b, at + NR_RNDV_XP_KEY, rights.keyOf(req));
      putWord(b, at + NR_RNDV_XP_OFFSET, 0);
      len = NR_RNDV_BYTES;
      this.ctx.counters.rndv++;
    } else {
      len = req.buffer.length;
      if (len > 0) copyBytes(st.bytes, at, req.buffer, 0, len);
      // What goes (and goes again, busy-retries.ts) is this copy.
      req.staged = true;
      this.ctx.counters.eager++;
    }
    if (req.sync || req.rndv) this.sends.add(req);
    const seq = (st.seq[slot] = nextSendSeq(dest));
    st.len[slot] = len;
    req.state = RequestState.Sent;
    this.postSlot(dest, req, st, slot, len, seq, true);
    return true;
  }

  /** A SEND descriptor for the record staged in `slot` (`len` bytes, sequence `seq`), posted (again, unless `first`). */
  private postSlot(
    dest: Partner,
    req: MxRequest,
    st: SendStaging,
    slot: number,
    len: number,
    seq: number,
    first: boolean,
  ): void {
    const w = this.nic.window;
    const b = this.sendTo(dest, COOKIE_SEND | slot, false);
    w[b + D_SRC_REGION] = st.regionId;
    w[b + D_SRC_OFFSET] = st.offsetOf(slot);
    w[b + D_LENGTH] = len;
    w[b + D_MATCH_HI] = req.matchHi;
    w[b + D_MATCH_LO] = req.matchLo;
    w[b + D_AUX0] = nicRecordAux0(req.rndv ? RecordType.Rndv : RecordType.Eager, 0, req.syncId);
    w[b + D_AUX1] = seq;
    const tb = this.ctx.trace;
    if (tb !== undefined && req.traceId !== 0) {
      // Traced: the NICs carry its sequence to the receiver's RECV event, stamping it on the way.
      w[b + D_OPCODE] |= DFLAG_TRACE << 16;
      w[b + D_TRACE_SEQ] = req.traceId % 0x100000000;
      if (first) tb.record(req.traceId, req.rndv ? TraceStage.RndvSent : TraceStage.Written, traceNow());
    }
    this.nic.post();
    this.ctx.counters.wireSends++;
  }

  /**
   * A NOTIFY to `peer` (a payload-less SEND), kept in the notify ring until its SEND_DONE says
   * it was placed: a busy receiver's refusal sends it again (busy-retries.ts). With the ring
   * full (NOTIFY_RING answers in flight) it goes untracked.
   */
  notify(peer: Partner, syncId: number, xfer: number, status: number, retry = false): boolean {
    let slot = NO_SLOT;
    const ring = this.notifyPeer;
    for (let k = 0; k < NOTIFY_RING; k++) {
      const i = (this.notifyNext + k) & (NOTIFY_RING - 1);
      if (ring[i] !== undefined) continue;
      ring[i] = peer;
      this.notifyWords[i] = { syncId, xfer, status };
      this.notifyRetry[i] = retry ? 1 : 0;
      this.notifyNext = (i + 1) & (NOTIFY_RING - 1);
      slot = NOTIFY_BASE + i;
      break;
    }
    const w = this.nic.window;
    const b = this.sendTo(peer, COOKIE_SEND | slot, true);
    w[b + D_MATCH_HI] = xfer;
    w[b + D_AUX0] = nicRecordAux0(RecordType.Notify, 0, syncId);
    w[b + D_AUX1] = status;
    this.nic.post();
    this.ctx.counters.wireSends++;
    return slot !== NO_SLOT;
  }

  /** A SEND descriptor to `peer` in the next send-queue slot, its other words zero: the caller fills them and posts. */
  private sendTo(peer: Partner, cookie: number, wait: boolean): number {
    const w = this.nic.window;
    const b = this.nic.slot(wait);
    w[b + D_OPCODE] = Opcode.Send;
    w[b + D_COOKIE] = cookie;
    w[b + D_DEST_NIC] = peer.nic;
    w[b + D_DEST_ENDPOINT] = peer.endpoint;
    w[b + D_DEST_SESSION] = peer.session;
    return b;
  }

  /**
   * The staging area, sized to the domain (a 1 MiB guest cannot give 32 slots of 32 KiB):
   * an eighth of its memory at most, fewer slots if that fails (idle registrations and
   * pooled bounce buffers are given back first), at least one.
   */
  private openStaging(): SendStaging | undefined {
    const { driver, regions } = this.parts;
    let slots = Math.max(1, Math.min(DEFAULT_STAGING_SLOTS, Math.floor(regions.ramBytes / 8 / SEND_MAX)));
    for (;;) {
      try {
        return new SendStaging(driver, this.ctx.endpointId, slots);
      } catch (e) {
        if (slots > 1) slots >>= 1;
        else if (!regions.shrink()) {
          this.stagingError = `the staging area for messages through the NIC (${SEND_MAX} bytes) could not be set up: ${(e as Error).message}; ${MEMORY_KNOB}`;
          return undefined;
        }
      }
    }
  }

  /**
   * The endpoint closed (the backend released the staging area's registration with it): its
   * memory goes back to the domain. Kept, each endpoint that ever sent through the NIC cost
   * its domain up to 2 MiB for good, and a guest that opened endpoints one after another ran
   * out of memory, every later send failing MX_NO_RESOURCES.
   */
  close(): void {
    // What waits to go again never will: its sends end as the rest of the endpoint's.
    for (const [peer, r] of this.busy.peers) this.dropRetries(peer, r, MxStatus.ENDPOINT_CLOSED);
    this.notifyPeer.fill(undefined);
    this.notifyWords.fill(undefined);
    const st = this.staging;
    this.staging = undefined;
    if (st === undefined) return;
    try {
      this.parts.driver.freeBuffer(st.bytes);
    } catch {
      // The domain's memory is going away with it.
    }
  }

  // ---- receives and completions ---------------------------------------------------------------------

  /** A record that came through the NIC (a RECV event at word `base`). */
  onRecv(base: number): void {
    const w = this.nic.window;
    const len = w[base + E_LENGTH] >>> 0;
    const off = w[base + E_RECV_OFFSET] >>> 0;
    this.ctx.counters.wireRecvs++;
    if (off + len > RECV_BYTES) {
      this.ctx.counters.nicErrors++;
      return;
    }
    const peer = this.learn(
      w[base + E_SRC_NIC] >>> 0,
      w[base + E_SRC_ENDPOINT] >>> 0,
      w[base + E_SRC_SESSION] >>> 0,
    );
    if (peer === undefined) {
      this.ctx.counters.channelErrors++;
      return;
    }
    peer.lastNews = performance.now();
    const aux0 = w[base + E_AUX0] >>> 0;
    const aux1 = w[base + E_AUX1] >>> 0;
    const type = aux0 & NR_TYPE_MASK;
    const id = aux0 >>> NR_ID_SHIFT;
    const pay = RECV_OFFSET + off;
    const b = this.nic.windowBytes;
    const r = this.rec;
    if (type === RecordType.Eager || (type === RecordType.Rndv && len === NR_RNDV_BYTES)) {
      const tseq = w[base + E_TRACE_SEQ] >>> 0;
      r.flags = tseq !== 0 ? FLAG_TRACED : 0;
      r.matchHi = w[base + E_MATCH_HI] >>> 0;
      r.matchLo = w[base + E_MATCH_LO] >>> 0;
      r.syncId = id;
      r.seq = aux1 | 0;
      r.traceSeq = tseq;
      if (type === RecordType.Eager) {
        r.rndv = false;
        r.length = len;
        r.region = 0;
        r.key = 0;
        r.offset = 0;
        r.bytes = b;
        r.payload = pay;
      } else {
        r.rndv = true;
        r.length = getWord(b, pay + NR_RNDV_LENGTH);
        r.region = getWord(b, pay + NR_RNDV_XP_INDEX);
        r.key = getWord(b, pay + NR_RNDV_XP_KEY);
        r.offset = getWord(b, pay + NR_RNDV_XP_OFFSET);
        r.bytes = null;
        r.payload = 0;
      }
      this.parts.matching.deliver(peer, r);
    } else if (type === RecordType.Notify) {
      this.sends.answer(peer, id, w[base + E_MATCH_HI] >>> 0, aux1);
    } else if (type !== RecordType.Ping) {
      this.ctx.counters.channelErrors++;
    }
  }

  /**
   * The partner (nic, ep, session) a record came from: known, or learned from its first
   * message; undefined if this session of it was refused (Partner.refused).
   */
  private learn(nic: number, ep: number, session: number): Partner | undefined {
    const last = this.lastPeer;
    if (
      last !== undefined &&
      last.nic === nic &&
      last.endpoint === ep &&
      last.session === session &&
      last.dead === undefined
    )
      return last;
    let peer = this.partners.get(nic, ep);
    if (peer && peer.dead === undefined && peer.session !== session) {
      this.partners.reopened(peer);
      peer = undefined;
    }
    if (peer?.refused && peer.session === session) return undefined;
    if (!peer || peer.dead !== undefined) {
      peer = this.partners.add(nic, ep, session);
      this.install(peer);
    }
    this.lastPeer = peer;
    return peer;
  }

  onSendDone(cookie: number, status: number, reason: number): void {
    const slot = cookie & 0xffff;
    // Refused by a busy receiver (nic/delivery.ts): nothing was placed; it goes again.
    const busy = status === MxStatus.NO_RESOURCES && reason === ErrorReason.NoResources;
    if (slot >= NOTIFY_BASE) {
      if (slot !== NO_SLOT) this.notifyDone(slot - NOTIFY_BASE, status, busy);
      else if (status !== MxStatus.SUCCESS) this.ctx.counters.nicErrors++;
      return;
    }
    const st = this.staging;
    if (st === undefined || slot >= st.slots) {
      this.ctx.counters.nicErrors++;
      return;
    }
    const held = st.owner[slot];
    if (st.retrying[slot] !== 0 && held instanceof MxRequest && held.peer !== undefined) {
      const r = this.busy.peers.get(held.peer);
      if (r !== undefined) {
        r.out--;
        if (status === MxStatus.SUCCESS) r.taken(performance.now());
      }
    }
    if (busy && held instanceof MxRequest && held.peer !== undefined && held.peer.dead === undefined) {
      const now = performance.now();
      const r = this.busy.of(held.peer, now);
      r.addSlot(slot, st.seq[slot]);
      r.refused(now);
      st.retrying[slot] = 0;
      this.ctx.counters.busyRefusals++;
      return;
    }
    const owner = st.release(slot);
    if (owner instanceof Partner) {
      // A probe: the peer answered (placed, or refused by a busy receiver), or is gone.
      owner.probing = false;
      if (status === MxStatus.SUCCESS || busy) owner.lastNews = performance.now();
      else
        this.partners.fail(
          owner,
          sendFailureText(status, reason) ??
            `the peer did not answer our probe (MX_STATUS_${mxStatusName(status)})`,
          status,
        );
      return;
    }
    if (!(owner instanceof MxRequest)) return;
    const req = owner;
    const dest = req.peer;
    if (status === MxStatus.SUCCESS) {
      // Placed after a sequence hole (an earlier send to this peer failed): its receiver will
      // never match it, so it did not arrive either.
      if (dest?.holed !== undefined) {
        req.reason = `an earlier message to this peer failed (${dest.holed}); nothing after it is matched`;
        this.completion.complete(req, MxStatus.ENDPOINT_UNREACHABLE, 0);
      } else if (!req.sync && !req.rndv) this.completion.complete(req, MxStatus.SUCCESS, req.buffer.length);
      return;
    }
    if (req.syncId !== 0) this.sends.forget(req);
    req.reason = sendFailureText(status, reason);
    this.completion.complete(req, status, 0);
    if (!dest) return;
    // A message that did not arrive leaves a hole in this peer's sequence: the receiver would
    // hold everything after it forever. So the peer is done for; what waits on it fails now.
    dest.holed ??= `MX_STATUS_${mxStatusName(status)}${req.reason ? `: ${req.reason}` : ""}`;
    this.partners.fail(
      dest,
      status === MxStatus.ENDPOINT_CLOSED ||
        status === MxStatus.BAD_SESSION ||
        status === MxStatus.ENDPOINT_UNKNOWN
        ? `the peer endpoint went away (MX_STATUS_${mxStatusName(status)})`
        : `a message to it failed (${dest.holed})`,
      status,
    );
  }

  /** NOTIFY `i` of the ring ended with `status`: refused by a busy receiver, it goes again. */
  private notifyDone(i: number, status: number, busy: boolean): void {
    const peer = this.notifyPeer[i];
    const words = this.notifyWords[i];
    if (peer === undefined || words === undefined) {
      this.ctx.counters.nicErrors++;
      return;
    }
    this.notifyPeer[i] = undefined;
    this.notifyWords[i] = undefined;
    const now = performance.now();
    const r = this.notifyRetry[i] !== 0 ? this.busy.peers.get(peer) : undefined;
    if (r !== undefined) {
      r.out--;
      if (status === MxStatus.SUCCESS) r.taken(now);
    }
    if (busy && peer.dead === undefined) {
      const q = this.busy.of(peer, now);
      q.notifies.push(words);
      q.refused(now);
      this.ctx.counters.busyRefusals++;
    } else if (status !== MxStatus.SUCCESS) this.ctx.counters.nicErrors++;
  }

  /**
   * Messages busy receivers refused go again when their back-off allows (busy-retries.ts);
   * a receiver that took none for RETRY_FOR_MS, or a peer that failed meanwhile, fails them.
   */
  retryBusy(now: number): void {
    const st = this.staging;
    for (const [peer, r] of this.busy.peers) {
      if (peer.dead === undefined && r.overdue(now) && r.waiting > 0) {
        this.partners.fail(
          peer,
          `a message to it failed (MX_STATUS_NO_RESOURCES: ${sendFailureText(MxStatus.NO_RESOURCES, ErrorReason.NoResources)})`,
          MxStatus.NO_RESOURCES,
        );
        this.dropRetries(peer, r, MxStatus.NO_RESOURCES);
        continue;
      }
      if (peer.dead !== undefined) {
        this.dropRetries(peer, r, MxStatus.ENDPOINT_UNREACHABLE);
        continue;
      }
      if (!r.ready(now) || st === undefined) {
        if (r.waiting === 0 && r.out === 0) this.busy.peers.delete(peer);
        continue;
      }
      // One try while the receiver refuses; everything once it took one.
      const all = r.burst;
      r.burst = false;
      while (r.waiting > 0 && this.nic.sqFree() > 0) {
        if (r.notifies.length > 0) {
          const n = r.notifies.shift()!;
          // Untracked (the ring full), nothing will say how it ended: no try to wait for.
          if (this.notify(peer, n.syncId, n.xfer, n.status, true)) r.out++;
        } else {
          r.out++;
          const slot = r.takeSlot();
          const req = st.owner[slot] as MxRequest;
          st.retrying[slot] = 1;
          this.postSlot(peer, req, st, slot, st.len[slot], st.seq[slot], false);
        }
        if (!all) break;
      }
    }
    // A blocking wait wakes for the next try (endpoint.ts sleepSlice).
    for (const r of this.busy.peers.values()) {
      const at = r.out === 0 && r.waiting > 0 ? r.due : 0;
      if (at !== 0 && (this.ctx.lookAgainAt === 0 || at < this.ctx.lookAgainAt)) this.ctx.lookAgainAt = at;
    }
  }

  /** `peer` failed: the messages it refused never go; their requests fail with it. */
  private dropRetries(peer: Partner, r: PeerRetry, code: number): void {
    this.busy.peers.delete(peer);
    const st = this.staging;
    const why = peer.dead ?? "the peer failed";
    for (const slot of r.slots) {
      const req = st?.release(slot);
      if (!(req instanceof MxRequest)) continue;
      if (req.syncId !== 0) this.sends.forget(req);
      req.reason ??= why;
      this.completion.complete(req, code, 0);
    }
    r.slots.length = 0;
    r.seqs.length = 0;
    r.notifies.length = 0;
  }

  /** Whether messages wait to go again (the endpoint's progress then calls retryBusy). */
  get retrying(): boolean {
    return this.busy.size > 0;
  }

  /**
   * Peers on other NICs that owe us an answer (a NOTIFY for a rendezvous or synchronous send)
   * and have been silent a while get a PING.
   */
  probeSilentPeers(now: number): void {
    if (this.sends.size === 0) return;
    for (const r of this.sends.values()) {
      const p = r.peer;
      if (
        p === undefined ||
        !(p.path instanceof NicPath) ||
        p.dead !== undefined ||
        p.probing ||
        now - p.lastNews < PROBE_AFTER_MS
      )
        continue;
      const st = this.staging;
      if (st === undefined || this.nic.sqFree() === 0) return;
      const slot = st.take(p);
      if (slot < 0) return;
      p.probing = true;
      p.lastNews = now;
      const w = this.nic.window;
      const b = this.sendTo(p, COOKIE_SEND | slot, false);
      w[b + D_AUX0] = nicRecordAux0(RecordType.Ping, 0, 0);
      this.nic.post();
      this.ctx.counters.probes++;
    }
  }
}

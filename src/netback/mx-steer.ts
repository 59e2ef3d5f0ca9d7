/**
 * The bridge's rules for MX over Ethernet (src/xen/io/mxoe.ts): an MXoE frame goes to the
 * owner of the endpoint its header names, and to no one else — not by its destination MAC,
 * and never flooded; a guest sends only as its own endpoints; and a guest that keeps
 * presenting wrong keys is slowed down as the NIC slows a bypass guest.
 *
 * Why: a connect on the split path is a broadcast CONNECT that carries the connect key (MX
 * over Ethernet has no other way to find an endpoint), and a flooded frame reaches every vif
 * on the bridge and every host behind the uplink. A guest that only listened learned the keys
 * of the jobs around it and the sessions of their endpoints, and could then connect to them
 * and inject messages. The driver domain is the trusted party that knows who owns what: a
 * split-path endpoint id names its domain, and myrback knows who opened each NIC context.
 *
 *   - From a vif, the source (src nic, src endpoint) must be this NIC and an endpoint of the
 *     vif's own domain (a NACK may also name an endpoint no one owns: its owner just closed
 *     it); otherwise the frame is refused, as netback refuses a spoofed source MAC.
 *   - dst nic is this host's NIC: the frame goes to the vif of the endpoint's owner (its
 *     lowest devid), never back where it came from; an endpoint no one here owns, or whose
 *     owner has no vif, gets nothing (refused).
 *   - dst nic is another: from a vif, out of the uplink only; from the uplink, refused.
 *   - Too short to name a source and a destination: refused.
 *   - Wrong keys: a CONNECT_REPLY that says BAD_KEY or BAD_SESSION, on its way to a guest of
 *     this host, counts against that guest's domain — only if it answers a CONNECT that guest
 *     sent (same id, from the endpoint it asked) and not yet answered, so no third guest can
 *     lock a guest out with forged answers; after CONNECT_FREE_FAILS of them its CONNECTs are
 *     refused for a lockout that doubles with each further one (nic/connect-throttle.ts, the
 *     NIC's numbers). Keyed by domain, so opening more endpoints buys no more guesses.
 *     Every CONNECT a guest sends is remembered until answered (a retry — the same frame
 *     again — is the same CONNECT): when only the last one was, a guest that sent each guess
 *     under one connect id with another key (only the first answer counted), or followed each
 *     guess with a decoy CONNECT (its answer no longer matched), guessed at full speed. A
 *     domain has at most MAX_ASKS_PER_DOMAIN unanswered CONNECTs younger than ASK_TTL_MS;
 *     beyond them its new ones are refused (throttled) until one is answered or ages out.
 *     Once it has wrong keys on record, only as many as it has free ones left (at least one),
 *     and beyond them netback answers REJECTED: a lockout starts only when answers come, and
 *     a guesser that had 16 guesses out after every lockout guessed 16 times a minute. An
 *     answer reaches a guest only if netback still remembers the CONNECT it answers: one that
 *     came after its CONNECT aged out counted for nothing, and still told the guesser.
 *     A SUCCESS forgives nothing: it proved only that the guest knew *that* endpoint's key,
 *     and a guest that answered its own other domain's CONNECTs with SUCCESS between guesses
 *     was forgiven its wrong keys as fast as it made them (a record with no wrong key for
 *     CONNECT_FORGET_MS still starts over).
 *     A domain's CONNECTs are forgotten when netback serves no vif of it any more (the
 *     toolstack removed them, or the domain is gone), and once every one of them aged out;
 *     a live domain's are never dropped to make room: with MAX_ASKED domains that each sent
 *     a CONNECT in the last ASK_TTL_MS, another domain's first CONNECT is refused (throttled)
 *     until one of theirs ages out.
 *     A CONNECT refused in a lockout is answered by the bridge itself: its frame turned into
 *     a CONNECT_REPLY with status REJECTED and the time left (rejectInPlace), so the asker
 *     hears why (MX_BUSY, as from the NIC on the bypass path) instead of timing out.
 *   - Only the opening of an endpoint that a frame names gets it. An endpoint id outlives its
 *     endpoint: a NIC context is free again when its domain dies, and any guest (of any job)
 *     may open it by number; a split-path id comes back with its domain id. Its new owner got
 *     what the old one's peers still sent it — their sessions in the headers, and in a late
 *     CONNECT their job's key — and with a session it resolved its way into their endpoints
 *     without a key (a hostile guest's library checks no dstSession). So a frame for an
 *     endpoint here must name (dstSession) the session of its current opening: a NIC
 *     context's is myrback's (nicContext); a split-path endpoint's is the one its domain's
 *     frames from it last carried (its peers learn it from those frames only: its CONNECTs and
 *     its answers), forgotten with the domain's vifs. Any other frame is refused (stale), and
 *     a sequenced one answered with a NACK, ENDPOINT_CLOSED, as from the closed endpoint, so
 *     its sender fails the dead peer now instead of resending to the newcomer. A CONNECT
 *     naming no session (0) carries a key: for a NIC context netback checks it against
 *     myrback's and answers a wrong one BAD_KEY itself (counted as the owner's answer is), so
 *     the key reaches only the endpoint that already has it; a CONNECT naming another session
 *     is answered BAD_SESSION. (A split-path endpoint's key is its guest's alone: a CONNECT
 *     with no session goes to the owner of its id, and a domain id comes back only after
 *     DOMID_MAX others.)
 *
 * The key still crosses the NICs and the links between hosts (trusted, as every frame does).
 */
import { CONNECT_FREE_FAILS, ConnectThrottle } from "../nic/connect-throttle.js";
import { MxStatus } from "../nic/status.js";
import type { DomId } from "../xen/abi.js";
import {
  ETH_HEADER_BYTES,
  frameWord,
  MXOE_HEADER_BYTES,
  MXOE_MAGIC,
  MXOE_VERSION,
  MxoeType,
  MxoeWord,
  SPLIT_ENDPOINT_BASE,
  splitEndpointDomain,
} from "../xen/io/mxoe.js";
import { vifMacNicBits } from "../xen/io/netif.js";

/** An MXoE frame that no port may have. */
export const STEER_REFUSE = -1;
/** A CONNECT from a guest locked out for wrong keys: answer it with answerInPlace (REJECTED). */
export const STEER_REJECT = -2;
/** A frame netback answers itself (BAD_KEY, BAD_SESSION, or a NACK): answerInPlace. */
export const STEER_ANSWER = -3;

export interface MxSteerCounters {
  /** MXoE frames sent to the owner of their destination endpoint (or out of the uplink). */
  steered: number;
  /** Refused: no owner here, owner without a vif, another NIC's from the uplink, too short. */
  refused: number;
  /** Refused: from a vif, naming as its source an endpoint that is not its domain's. */
  spoofed: number;
  /** CONNECTs refused because their domain is locked out for wrong keys. */
  throttled: number;
  /** Refused: naming an opening of their endpoint that is not the current one (or none yet). */
  stale: number;
  /** CONNECTs netback answered itself: a NIC context's wrong key, or a session not the opening's. */
  badConnects: number;
}

/** An open NIC context (myrback's registry). */
export interface NicContext {
  readonly domid: DomId;
  /** Its session: what a frame for this opening names (dstSession). */
  readonly session: number;
  readonly key: number;
}

export interface MxSteerHost {
  /** This host's NIC id (the dst nic of frames for endpoints here). */
  readonly nicId: number;
  /** NIC context `endpoint` here, if it is open: who opened it, its session and key (myrback knows). */
  nicContext(endpoint: number): NicContext | undefined;
  /** The bridge port of `domid`'s vif, or -1. */
  portOfDomain(domid: DomId): number;
  /** The domain whose vif is bridge port `port`, if it is one. */
  domainOfPort(port: number): DomId | undefined;
  /** The uplink's bridge port, or -1 when the bridge is host-local. */
  readonly uplinkPort: number;
}

/** The source MAC of what the bridge answers itself (locally administered, never a vif's). */
const BRIDGE_MAC = new Uint8Array([0x02, 0x00, 0x5e, 0x4d, 0x58, 0x00]);

/** Domains whose CONNECTs are remembered, at most (then a new one's first CONNECT is refused). */
export const MAX_ASKED = 4096;
/** CONNECTs of one domain remembered at once (answered ones make room for new ones). */
export const MAX_ASKS_PER_DOMAIN = 16;
/** An unanswered CONNECT is forgotten after this long (ms): its endpoint never answered. */
export const ASK_TTL_MS = 10_000;

/** A CONNECT a domain sent: what it asked (a retry repeats every word), when, and whether answered. */
interface Ask {
  id: number;
  nic: number;
  ep: number;
  session: number;
  key: number;
  at: number;
  answered: boolean;
}

export class MxSteering {
  readonly counters: MxSteerCounters = {
    steered: 0,
    refused: 0,
    spoofed: 0,
    throttled: 0,
    stale: 0,
    badConnects: 0,
  };
  /** Wrong keys per domain (as requester (0, domid)). */
  private readonly throttle = new ConnectThrottle();
  /** Per domain, the CONNECTs it sent that were steered somewhere (oldest first; never empty). */
  private readonly asked = new Map<DomId, Ask[]>();
  /** No list in `asked` has aged out wholly before this (sweep's lower bound). */
  private sweepAt = Number.POSITIVE_INFINITY;
  /** Per domain, its split-path endpoints' sessions, as its frames from them last said. */
  private readonly splitSessions = new Map<DomId, Map<number, number>>();
  /** What answerInPlace makes of the frame route last answered STEER_REJECT or STEER_ANSWER for. */
  private answerType: number = MxoeType.ConnectReply;
  private answerStatus: number = MxStatus.REJECTED;
  /** The lockout left (ms) when route last answered STEER_REJECT. */
  private lockLeft = 0;

  constructor(
    private readonly host: MxSteerHost,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Domains whose CONNECTs are remembered now (netback's stats: mxAskers). */
  get askers(): number {
    return this.asked.size;
  }

  /**
   * netback serves no vif of `domid` any more (the toolstack removed them: the domain is
   * gone): its CONNECTs are no one's to limit or answer, and its wrong keys are not held
   * against the next domain given its id (a guest cannot get here and start over: re-opening
   * its vif keeps the device).
   */
  forget(domid: DomId): void {
    this.asked.delete(domid);
    // Its endpoints' sessions: the next domain given its id has its own.
    this.splitSessions.delete(domid);
    this.throttle.forgetRequester(0, domid);
  }

  /** The domain that owns endpoint `ep` of this NIC, if any. */
  private ownerOf(ep: number): DomId | undefined {
    return ep >= SPLIT_ENDPOINT_BASE ? splitEndpointDomain(ep) : this.host.nicContext(ep)?.domid;
  }

  /** `domid` sent as its split-path endpoint `ep` with `session`: that is its current opening. */
  private noteSession(domid: DomId, ep: number, session: number): void {
    let m = this.splitSessions.get(domid);
    if (m === undefined) {
      m = new Map();
      this.splitSessions.set(domid, m);
    }
    // At most SPLIT_ENDPOINTS_PER_DOMAIN ids (its own, checked by the caller) per domain with a vif.
    if (m.get(ep) !== session) m.set(ep, session);
  }

  /**
   * A frame for the wrong opening of an endpoint `owner` now holds: refused, and a NACK for
   * one its sender would resend.
   */
  private stale(type: number, f: Uint8Array, owner: DomId): number {
    this.counters.stale++;
    // Not a CONNECT (answered apart), a CONNECT_REPLY or a NACK (answering it could loop).
    if (type === MxoeType.ConnectReply || type === MxoeType.Nack) return STEER_REFUSE;
    // The NACK comes from the address the frame was sent to, the one its sender knows the
    // endpoint by (ether-path.ts checks it), as the closed endpoint's would: so only a vif
    // address of this host (the toolstack's, netif.ts vifMac) of the owner or of a domain with
    // no vif here (the closed one's). Any other is the sender's choice: a NACK from it taught
    // the bridges on its way that address behind this host, and a guest addressing a stale
    // frame to a neighbour's MAC moved the neighbour's unicast traffic onto the wire.
    const prefix = (vifMacNicBits(this.host.nicId) | 0x02000000) >>> 0;
    if (((f[0] << 24) | (f[1] << 16) | (f[2] << 8) | f[3]) >>> 0 !== prefix) return STEER_REFUSE;
    const named = (f[4] << 8) | f[5];
    if (named !== owner && this.host.portOfDomain(named) >= 0) return STEER_REFUSE;
    this.answerType = MxoeType.Nack;
    return STEER_ANSWER;
  }

  /**
   * Where the MXoE frame `f` (its first `len` bytes; the caller checked the EtherType) that
   * came in on port `ingress` may go: a port, STEER_REFUSE, or STEER_REJECT (a CONNECT in a
   * wrong-key lockout: answer it with rejectInPlace).
   */
  route(ingress: number, f: Uint8Array, len: number): number {
    const h = this.host;
    const c = this.counters;
    if (len < ETH_HEADER_BYTES + MXOE_HEADER_BYTES) return this.refuse();
    const type = frameWord(f, MxoeWord.magic) & 0xff;
    const fromUplink = ingress === h.uplinkPort;
    const from = fromUplink ? undefined : h.domainOfPort(ingress);
    if (!fromUplink) {
      const srcEp = frameWord(f, MxoeWord.srcEp);
      const srcOwner = this.ownerOf(srcEp);
      const ownSource =
        from !== undefined &&
        frameWord(f, MxoeWord.srcNic) === h.nicId &&
        (srcOwner === from || (srcOwner === undefined && type === MxoeType.Nack));
      if (!ownSource) {
        c.spoofed++;
        return STEER_REFUSE;
      }
      // Its peers learn a split-path endpoint's session from these frames only. Not from a NACK
      // (it names the closed opening it answers for), nor 0 (a refusal hides the session).
      const srcSession = frameWord(f, MxoeWord.srcSession);
      if (srcEp >= SPLIT_ENDPOINT_BASE && type !== MxoeType.Nack && srcSession !== 0)
        this.noteSession(from, srcEp, srcSession);
      if (type === MxoeType.Connect) {
        const left = this.throttle.lockedFor(0, from, 0, this.now());
        if (left > 0) {
          c.throttled++;
          this.lockLeft = left;
          this.answerType = MxoeType.ConnectReply;
          this.answerStatus = MxStatus.REJECTED;
          return STEER_REJECT;
        }
      }
    }
    const dstNic = frameWord(f, MxoeWord.dstNic);
    let port: number;
    let owner: DomId | undefined;
    /** A CONNECT netback answers itself (BAD_KEY, BAD_SESSION), or 0. */
    let verdict = 0;
    if (dstNic !== h.nicId) {
      if (fromUplink || h.uplinkPort < 0) return this.refuse();
      port = h.uplinkPort;
    } else {
      const dstEp = frameWord(f, MxoeWord.dstEp);
      const named = frameWord(f, MxoeWord.dstSession);
      let session: number | undefined;
      let key: number | undefined;
      if (dstEp >= SPLIT_ENDPOINT_BASE) {
        owner = splitEndpointDomain(dstEp);
        session = this.splitSessions.get(owner)?.get(dstEp);
      } else {
        const ctx = h.nicContext(dstEp);
        owner = ctx?.domid;
        session = ctx?.session;
        key = ctx?.key;
      }
      port = owner === undefined ? -1 : h.portOfDomain(owner);
      if (port < 0) return this.refuse();
      if (type === MxoeType.Connect) {
        if (named !== 0) {
          if (named !== session) verdict = MxStatus.BAD_SESSION;
        } else if (key !== undefined && frameWord(f, MxoeWord.offset) !== key) {
          verdict = MxStatus.BAD_KEY;
        }
      } else if (named !== session) {
        return this.stale(type, f, owner as DomId);
      }
    }
    // The answers that may count against this guest are those to the CONNECTs it sent.
    if (from !== undefined && type === MxoeType.Connect) {
      const wait = this.remember(from, f);
      if (wait !== 0) {
        c.throttled++;
        if (wait < 0) return STEER_REFUSE;
        // It has wrong keys on record and as many guesses out as it has free ones left.
        this.lockLeft = wait;
        this.answerType = MxoeType.ConnectReply;
        this.answerStatus = MxStatus.REJECTED;
        return STEER_REJECT;
      }
    }
    if (verdict !== 0) {
      // Answered here, so the key (or the guess) never reaches the owner: it counts as the
      // owner's answer would (a guest's own; another host's netback counts its guest's).
      c.badConnects++;
      if (from !== undefined)
        this.settle(from, frameWord(f, MxoeWord.id), dstNic, frameWord(f, MxoeWord.dstEp), verdict);
      this.answerType = MxoeType.ConnectReply;
      this.answerStatus = verdict;
      return STEER_ANSWER;
    }
    // An answer reaches a guest only if it answers a CONNECT the guest sent and netback still
    // remembers: an answer that came after its CONNECT was forgotten (ASK_TTL_MS) counted for
    // nothing, so a guesser whose victim answered late (a rank computing for 12 s) had every
    // guess's answer and none counted.
    if (owner !== undefined && type === MxoeType.ConnectReply && !this.answered(owner, f))
      return this.refuse();
    c.steered++;
    return port;
  }

  /**
   * Remembers `from`'s CONNECT `f` (a retry is the CONNECT it repeats): 0. Not remembered:
   * -1 when MAX_ASKED other domains are (above) or `from` has MAX_ASKS_PER_DOMAIN unanswered
   * CONNECTs younger than ASK_TTL_MS; once it has wrong keys on record it may have only as
   * many out as it has free ones left (at least one), and beyond that the answer is how long
   * until its oldest ages out (ms). A lockout starts when answers come, so a guest with
   * MAX_ASKS_PER_DOMAIN guesses out at once had them all answered before the first counted:
   * 16 guesses for the NIC's 4.
   */
  private remember(from: DomId, f: Uint8Array): number {
    const now = this.now();
    const id = frameWord(f, MxoeWord.id);
    const nic = frameWord(f, MxoeWord.dstNic);
    const ep = frameWord(f, MxoeWord.dstEp);
    const session = frameWord(f, MxoeWord.dstSession);
    const key = frameWord(f, MxoeWord.offset);
    let list = this.asked.get(from);
    if (list === undefined) {
      if (now >= this.sweepAt) this.sweep(now);
      // Each of them sent a CONNECT in the last ASK_TTL_MS: dropping one would lift its limit.
      if (this.asked.size >= MAX_ASKED) return -1;
      list = [];
      this.asked.set(from, list);
      this.sweepAt = Math.min(this.sweepAt, now + ASK_TTL_MS);
    }
    let oldestAnswered = -1;
    let open = 0;
    let oldestOpen = now;
    for (let i = 0; i < list.length; i++) {
      const a = list[i];
      if (now - a.at >= ASK_TTL_MS) {
        list.splice(i--, 1);
        continue;
      }
      if (a.id === id && a.nic === nic && a.ep === ep && a.session === session && a.key === key) return 0;
      if (a.answered) {
        if (oldestAnswered < 0) oldestAnswered = i;
      } else if (open++ === 0) oldestOpen = a.at;
    }
    const fails = this.throttle.refusals(0, from, 0, now);
    if (fails === 0 ? open >= MAX_ASKS_PER_DOMAIN : open >= Math.max(1, CONNECT_FREE_FAILS - fails))
      return fails === 0 ? -1 : Math.max(1, Math.ceil(oldestOpen + ASK_TTL_MS - now));
    // open < MAX_ASKS_PER_DOMAIN: a full list has an answered CONNECT to make room.
    if (list.length >= MAX_ASKS_PER_DOMAIN) list.splice(oldestAnswered, 1);
    list.push({ id, nic, ep, session, key, at: now, answered: false });
    return 0;
  }

  /** Forgets the domains whose every CONNECT aged out (a domain that stopped connecting). */
  private sweep(now: number): void {
    this.sweepAt = Number.POSITIVE_INFINITY;
    for (const [domid, list] of this.asked) {
      const last = list[list.length - 1].at + ASK_TTL_MS;
      if (now >= last) this.asked.delete(domid);
      else this.sweepAt = Math.min(this.sweepAt, last);
    }
  }

  /**
   * An owner's answer to a CONNECT from `asker`, on its way to it: it answers the oldest
   * unanswered CONNECT of `asker` with its id to that endpoint, and a wrong key or session
   * counts. false: it answers no CONNECT `asker` sent that is remembered (forged, or late);
   * an answer to a retry already answered goes through, counted once.
   */
  private answered(asker: DomId, f: Uint8Array): boolean {
    return this.settle(
      asker,
      frameWord(f, MxoeWord.id),
      frameWord(f, MxoeWord.srcNic),
      frameWord(f, MxoeWord.srcEp),
      frameWord(f, MxoeWord.msgSeq),
    );
  }

  /** `asker`'s CONNECT `id` to (nic, ep) is answered `status` (answered's rules). */
  private settle(asker: DomId, id: number, nic: number, ep: number, status: number): boolean {
    const list = this.asked.get(asker);
    if (list === undefined) return false;
    const asks = (a: Ask) => a.id === id && a.nic === nic && a.ep === ep;
    const q = list.find((a) => !a.answered && asks(a));
    if (q === undefined) return list.some(asks);
    q.answered = true;
    if (status === MxStatus.BAD_KEY || status === MxStatus.BAD_SESSION)
      this.throttle.failed(0, asker, 0, this.now());
    return true;
  }

  /**
   * Turns the frame route() answered STEER_REJECT or STEER_ANSWER for into its answer, in
   * place: a CONNECT_REPLY (rejectInPlace, with the status route chose), or a NACK.
   */
  answerInPlace(f: Uint8Array): void {
    if (this.answerType === MxoeType.Nack) this.nackInPlace(f);
    else this.rejectInPlace(f, this.answerStatus);
  }

  /**
   * Turns a frame for a closed opening of an endpoint into the NACK its endpoint would send
   * (ether.ts sendNack): back to its sender, from the opening it named, ENDPOINT_CLOSED. Its
   * source MAC is the one the frame was sent to: the sender knows the endpoint by it.
   */
  private nackInPlace(f: Uint8Array): void {
    const w = (i: number) => frameWord(f, i);
    const closed = [w(MxoeWord.dstNic), w(MxoeWord.dstEp), w(MxoeWord.dstSession)];
    const to = f.slice(6, 12);
    f.copyWithin(6, 0, 6);
    f.set(to, 0);
    answerHeader(f, MxoeType.Nack, closed, MxStatus.ENDPOINT_CLOSED);
  }

  /**
   * Turns a CONNECT into its CONNECT_REPLY, in place: addressed back to the asker, with
   * `status` (no session); REJECTED carries the lockout's time left in the offset word (as the
   * NIC tells a bypass asker). Its source MAC is the bridge's own, locally administered.
   */
  private rejectInPlace(f: Uint8Array, status: number): void {
    const w = (i: number) => frameWord(f, i);
    const owner = [w(MxoeWord.dstNic), w(MxoeWord.dstEp), 0];
    const id = w(MxoeWord.id);
    f.copyWithin(0, 6, 12);
    f.set(BRIDGE_MAC, 6);
    const v = answerHeader(f, MxoeType.ConnectReply, owner, status);
    v.setUint32(4 * MxoeWord.id, id >>> 0, true);
    if (status === MxStatus.REJECTED) v.setUint32(4 * MxoeWord.offset, this.lockLeft >>> 0, true);
  }

  private refuse(): number {
    this.counters.refused++;
    return STEER_REFUSE;
  }
}

/**
 * Rewrites the MXoE header of `f` (its Ethernet addresses already turned around) as an answer
 * of `type` to the frame's sender: addressed to its (nic, endpoint, session), from `from`
 * (nic, endpoint, session), status `status`, every other word 0. Returns the header's view.
 */
function answerHeader(f: Uint8Array, type: number, from: readonly number[], status: number): DataView {
  const sender = [
    frameWord(f, MxoeWord.srcNic),
    frameWord(f, MxoeWord.srcEp),
    frameWord(f, MxoeWord.srcSession),
  ];
  f.fill(0, ETH_HEADER_BYTES, ETH_HEADER_BYTES + MXOE_HEADER_BYTES);
  const v = new DataView(f.buffer, f.byteOffset + ETH_HEADER_BYTES, MXOE_HEADER_BYTES);
  const set = (i: number, x: number) => v.setUint32(4 * i, x >>> 0, true);
  set(MxoeWord.magic, (MXOE_MAGIC << 16) | (MXOE_VERSION << 8) | type);
  set(MxoeWord.dstNic, sender[0]);
  set(MxoeWord.dstEp, sender[1]);
  set(MxoeWord.dstSession, sender[2]);
  set(MxoeWord.srcNic, from[0]);
  set(MxoeWord.srcEp, from[1]);
  set(MxoeWord.srcSession, from[2]);
  set(MxoeWord.msgSeq, status);
  return v;
}

/**
 * Connections over Ethernet (the connect half of Open-MX's omx_partner.c, for the split
 * path): a connect is a broadcast CONNECT (repeated until answered) that netback's bridge
 * hands to the owner of (nic, endpoint) only (src/netback/mx-steer.ts: the key crosses no
 * other guest), and the owner answers itself with its MAC and session — after checking the
 * key, or, to resolve a peer already connected another way, its session. This object is the endpoint's handler on the hub: it takes CONNECT and
 * CONNECT_REPLY frames and hands every other frame to the Ethernet path (ether-path.ts).
 *
 * A peer is keyed on its MAC as well as its header (netback lets no guest send from another
 * guest's MAC): an answer or a CONNECT that claims to be a known peer from another MAC is
 * refused and counted, never followed.
 */
import { MxStatus, mxStatusName } from "../nic/status.js";
import { frameWord, MxoeType, MxoeWord, PAYLOAD_AT } from "../xen/io/mxoe.js";
import { macAt } from "./bytes.js";
import { MxError } from "./codes.js";
import {
  BROADCAST_MAC,
  type EtherEndpointHandler,
  initEtherFrame,
  macString,
  setFrameWord,
} from "./ether.js";
import { type EtherEngine, type EtherPathParts, etherOf } from "./ether-path.js";
import type { Block, Partner } from "./types.js";

/** A connect over Ethernet repeats its broadcast this often until answered. */
const CONNECT_RETRY_MS = 100;

/** A connect's answer, once it came. */
interface EtherConnect {
  /** The endpoint asked: only it answers. */
  nic: number;
  ep: number;
  done: boolean;
  status: number;
  /** REJECTED: how long netback still refuses this guest's connects (ms). */
  retryAfter: number;
  session: number;
  mac: Uint8Array;
  peerSplit: boolean;
}

export class EtherConnector implements EtherEndpointHandler {
  private readonly connects = new Map<number, EtherConnect>();
  private readonly scratch = new Uint8Array(PAYLOAD_AT);

  constructor(
    private readonly engine: EtherEngine,
    private readonly parts: EtherPathParts,
  ) {
    engine.hub.attach(parts.ctx.endpointId, this);
  }

  /** A frame for this endpoint (the hub checked its headers and destination). */
  onFrame(f: Uint8Array, type: number): void {
    const srcNic = frameWord(f, MxoeWord.srcNic);
    const srcEp = frameWord(f, MxoeWord.srcEp);
    const srcSession = frameWord(f, MxoeWord.srcSession);
    if (type === MxoeType.Connect) {
      this.answer(f, srcNic, srcEp, srcSession);
    } else if (type === MxoeType.ConnectReply) {
      const c = this.connects.get(frameWord(f, MxoeWord.id));
      if (c === undefined || c.done || frameWord(f, MxoeWord.dstSession) !== this.parts.ctx.session) return;
      // Only the endpoint asked answers (netback lets a guest send as its own endpoints only):
      // any peer that knew our session and guessed the connect id answered for it, refusing
      // our key or binding the endpoint asked to its own MAC and session.
      if (srcNic !== c.nic || srcEp !== c.ep) {
        this.engine.hub.counters.spoofed++;
        return;
      }
      c.done = true;
      c.status = frameWord(f, MxoeWord.msgSeq);
      c.retryAfter = frameWord(f, MxoeWord.offset);
      c.session = srcSession;
      c.mac = f.slice(6, 12);
      c.peerSplit = frameWord(f, MxoeWord.matchHi) === 1;
    } else {
      this.engine.onFrame(f, type, srcNic, srcEp, srcSession);
    }
  }

  afterPoll(): void {
    this.engine.afterPoll();
  }

  /**
   * mx_connect over Ethernet: a broadcast CONNECT (repeated until answered) that the owner of
   * (nic, endpoint) answers with its MAC and session — after checking `key`, or, to resolve
   * an already connected peer, `session`.
   */
  connect(
    nic: number,
    endpoint: number,
    key: number,
    session: number,
    timeoutMs: number,
    block: Block,
  ): Partner {
    const hub = this.engine.hub;
    const ctx = this.parts.ctx;
    const where = `nic ${nic} endpoint ${endpoint}`;
    const id = ctx.newId(this.connects);
    const pending: EtherConnect = {
      nic,
      ep: endpoint,
      done: false,
      status: MxStatus.PENDING,
      retryAfter: 0,
      session: 0,
      mac: BROADCAST_MAC,
      peerSplit: false,
    };
    this.connects.set(id, pending);
    const f = this.scratch;
    const send = () => {
      initEtherFrame(f, BROADCAST_MAC, hub.mac, MxoeType.Connect);
      setFrameWord(f, MxoeWord.dstNic, nic);
      setFrameWord(f, MxoeWord.dstEp, endpoint);
      setFrameWord(f, MxoeWord.dstSession, session);
      setFrameWord(f, MxoeWord.srcNic, ctx.nicId);
      setFrameWord(f, MxoeWord.srcEp, ctx.endpointId);
      setFrameWord(f, MxoeWord.srcSession, ctx.session);
      setFrameWord(f, MxoeWord.id, id);
      setFrameWord(f, MxoeWord.offset, key);
      setFrameWord(f, MxoeWord.matchHi, this.parts.partners.split ? 1 : 0);
      hub.send(f);
      hub.flush();
    };
    let last = performance.now();
    send();
    try {
      block(() => {
        if (pending.done) return true;
        const now = performance.now();
        if (now - last >= CONNECT_RETRY_MS) {
          last = now;
          send();
        }
        return false;
      }, timeoutMs);
    } finally {
      this.connects.delete(id);
    }
    if (!pending.done)
      throw new MxError("MX_TIMEOUT", `${where} did not answer over Ethernet within ${timeoutMs} ms`);
    if (pending.status === MxStatus.BAD_KEY)
      throw new MxError("MX_BAD_CONNECTION_KEY", `${where} refused the key 0x${key.toString(16)}`);
    if (pending.status === MxStatus.REJECTED)
      throw new MxError(
        "MX_BUSY",
        `the driver domain refuses this guest's connects over Ethernet for ${pending.retryAfter} ms more: too many wrong keys (retry then, with the key ${where} was opened with)`,
      );
    if (pending.status !== MxStatus.SUCCESS)
      throw new MxError("MX_CONNECTION_FAILED", `${where}: MX_STATUS_${mxStatusName(pending.status)}`);
    const peer = this.learn(nic, endpoint, pending.session, pending.mac, pending.peerSplit);
    if (peer === undefined)
      throw new MxError(
        "MX_CONNECTION_FAILED",
        `${where} answered from MAC ${macString(pending.mac)}, but that endpoint is known at another MAC: refused as a spoofed answer`,
      );
    if (session === 0) peer.verified = true;
    return peer;
  }

  /** The peer's MAC, asked for over Ethernet by its session (proof of an earlier connect). */
  resolve(peer: Partner, timeoutMs: number, block: Block): void {
    this.connect(peer.nic, peer.endpoint, 0, peer.session, timeoutMs, block);
  }

  /**
   * Moves the endpoint to the split path (every peer over Ethernet) or back to its fast way:
   * every live peer is resolved first, then each is routed anew and told with a PATH frame.
   */
  switchTo(split: boolean, timeoutMs: number, block: Block): void {
    const partners = this.parts.partners;
    // Every peer must be reachable over Ethernet before anything goes that way.
    for (const p of partners.list)
      if (p.dead === undefined && p.ether === undefined) this.resolve(p, timeoutMs, block);
    partners.split = split;
    for (const p of partners.list) {
      if (p.dead !== undefined) continue;
      partners.route(p);
      const path = etherOf(p);
      if (path !== undefined) this.engine.sendPath(path);
    }
    this.engine.hub.flush();
  }

  /** The endpoint is closed: the hub stops handing it frames. */
  detach(): void {
    this.engine.hub.detach(this.parts.ctx.endpointId);
  }

  /**
   * The partner (nic, ep, session) reachable at `mac`: known, or new. A claim to be a known
   * peer from another MAC is refused (undefined) and counted, never followed.
   */
  private learn(
    nic: number,
    ep: number,
    session: number,
    mac: Uint8Array,
    peerSplit: boolean,
  ): Partner | undefined {
    const { partners } = this.parts;
    const hub = this.engine.hub;
    let peer = partners.get(nic, ep);
    const known = peer === undefined ? undefined : etherOf(peer);
    if (
      peer !== undefined &&
      known !== undefined &&
      peer.dead === undefined &&
      peer.session === session &&
      !macAt(mac, 0, known.link.mac)
    ) {
      hub.counters.spoofed++;
      return undefined;
    }
    if (peer && peer.dead === undefined && peer.session !== session) {
      partners.reopened(peer);
      peer = undefined;
    }
    if (!peer || peer.dead !== undefined) peer = partners.add(nic, ep, session);
    if (peer.ether === undefined) this.engine.open(peer, mac);
    peer.peerSplit = peerSplit;
    partners.route(peer);
    return peer;
  }

  /** The owner of (nic, ep) answers a CONNECT: key (or session) checked, and learns who asked. */
  private answer(f: Uint8Array, srcNic: number, srcEp: number, srcSession: number): void {
    const ctx = this.parts.ctx;
    const resolveSession = frameWord(f, MxoeWord.dstSession);
    const status =
      resolveSession !== 0
        ? resolveSession === ctx.session
          ? MxStatus.SUCCESS
          : MxStatus.BAD_SESSION
        : frameWord(f, MxoeWord.offset) === ctx.key
          ? MxStatus.SUCCESS
          : MxStatus.BAD_KEY;
    const mac = f.slice(6, 12);
    const peerSplit = frameWord(f, MxoeWord.matchHi) === 1;
    const id = frameWord(f, MxoeWord.id);
    // A claim to be a peer we know at another MAC gets no answer.
    if (status === MxStatus.SUCCESS && !this.learn(srcNic, srcEp, srcSession, mac, peerSplit)) return;
    const hub = this.engine.hub;
    const r = this.scratch;
    initEtherFrame(r, mac, hub.mac, MxoeType.ConnectReply);
    setFrameWord(r, MxoeWord.dstNic, srcNic);
    setFrameWord(r, MxoeWord.dstEp, srcEp);
    setFrameWord(r, MxoeWord.dstSession, srcSession);
    setFrameWord(r, MxoeWord.srcNic, ctx.nicId);
    setFrameWord(r, MxoeWord.srcEp, ctx.endpointId);
    // The session only to an asker that proved the key (or knew the session already): a
    // session resolves this endpoint with no key (above), so a BAD_KEY that carried it let a
    // guest of another job connect after one wrong guess (as the NIC answers: nic/connect.ts).
    setFrameWord(r, MxoeWord.srcSession, status === MxStatus.SUCCESS ? ctx.session : 0);
    setFrameWord(r, MxoeWord.id, id);
    setFrameWord(r, MxoeWord.msgSeq, status);
    setFrameWord(r, MxoeWord.matchHi, this.parts.partners.split ? 1 : 0);
    hub.send(r);
  }
}

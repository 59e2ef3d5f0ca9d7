/**
 * The NIC's links to other NICs (Open-MX's driver/linux/omx_iface.c): attaching, detaching
 * and losing them, each frame's dispatch to its engine, each round's link work (control
 * queues, served pulls), and the wire timer with the liveness it judges.
 *
 * A link that goes away completes everything that waits on it with ENDPOINT_UNREACHABLE at
 * once. The wire timer (link-state.ts arms it; it runs only while something waits on another
 * NIC) does so request by request after WIRE_TIMEOUT_MS without progress, sends keepalives
 * for held deliveries and expires those held HOLD_MS, and finds silent peers: nothing heard
 * for WIRE_TIMEOUT_MS while a request of ours on the link is overdue, or a descriptor has
 * waited that long on a link that takes no frames. A silent link fails like a lost one, and
 * for another WIRE_TIMEOUT_MS requests to it fail at once; any frame from the peer ends that.
 * A peer that talks but reads nothing is never silent: a descriptor that has waited UNREAD_MS
 * for a link that pushed back all along (it took no frame of ours in that time) finds it
 * unread, which fails like silence, and requests to it fail at once until the link takes a
 * frame again or says it can (its frames do not end that).
 */
import type { NicClock } from "./clock.js";
import type { Connector } from "./connect.js";
import type { LinkStateInfo } from "./control.js";
import { NicCounter } from "./counters.js";
import { type Delivery, KEEPALIVE_MS } from "./delivery.js";
import type { EndpointTable } from "./endpoints.js";
import type { EtherService } from "./ether-service.js";
import type { Events } from "./events.js";
import { checkFrame, F_DEST_NIC, F_SRC_NIC, FRAME_HEADER_BYTES, FrameType, getWord } from "./frame.js";
import type { Link } from "./link.js";
import { type LinkBound, LinkBoundError } from "./link-bound.js";
import { ACK_HOLD_MS, LinkState, type LinkTable, UNREAD_MS, WIRE_ACTED, WIRE_WAITING } from "./link-state.js";
import type { RemotePull } from "./remote-pull.js";
import type { SendEngine } from "./send.js";
import { NicError } from "./status.js";
import { HOLD_MS, WIRE_TIMEOUT_MS } from "./window.js";

export class Links {
  /** Every peer a link is known for: up, or down while a reconnecting link retries. */
  private readonly known = new Map<number, { state: "up" | "down"; reconnects: number }>();
  private lastKeepalive = 0;

  constructor(
    private readonly nicId: number,
    private readonly table: LinkTable,
    private readonly eps: EndpointTable,
    private readonly events: Events,
    private readonly delivery: Delivery,
    private readonly send: SendEngine,
    private readonly connect: Connector,
    private readonly remotePull: RemotePull,
    private readonly ether: EtherService,
    private readonly clock: NicClock,
    private readonly c: Float64Array,
    /** Makes sure the NIC's loop runs (nic.ts). */
    private readonly kick: () => void,
    /** How many links, from where (link-bound.ts). */
    private readonly bound: LinkBound,
  ) {
    table.onWireTick = this.onWireTick;
  }

  // ---- attaching and losing links -----------------------------------------------------------

  /**
   * Attaches a link to `link.peerNic`. A link whose peer is this NIC itself (loopback) takes
   * over this NIC's own SENDs, which otherwise are placed directly without frames. `replace`:
   * a link already attached to that peer is taken out first, as lost (the peer reconnected).
   * A link past the NIC's bounds is refused (LinkBoundError, EMLINK; link-bound.ts), and an
   * old one then stays.
   */
  /**
   * Throws the LinkBoundError (counted links_refused) attach() would throw for a link from
   * `peerNic` at `address`, without attaching anything (a listener asks in the handshake).
   */
  checkBound(peerNic: number, address: string): void {
    try {
      this.bound.check(peerNic, address, performance.now());
    } catch (e) {
      if (e instanceof LinkBoundError) this.c[NicCounter.links_refused]++;
      throw e;
    }
  }

  attach(link: Link, replace: boolean): void {
    const old = this.table.get(link.peerNic);
    let reconnected = false;
    if (old && !replace)
      throw new NicError("EBUSY", `a link to NIC ${link.peerNic} is already attached; detach it first`);
    const address = link.address ?? "";
    const now = performance.now();
    try {
      this.bound.admit(link.peerNic, address, now);
    } catch (e) {
      if (e instanceof LinkBoundError) this.c[NicCounter.links_refused]++;
      throw e;
    }
    if (old) {
      this.c[NicCounter.link_losses]++;
      this.remove(old);
      // The old link's going kept its place: the new one holds it again.
      this.bound.admit(link.peerNic, address, now);
      // Replaced because it stopped answering (tcp-attach.ts): no goodbye, which would tell
      // the peer not to come back, if it still can.
      if (old.link.abort) old.link.abort("replaced by a new connection from the same NIC");
      else old.link.close();
      reconnected = true;
    }
    const ls = new LinkState(link, link.peerNic, this.eps.maxEndpoints);
    ls.lastRx = ls.lastTx = performance.now();
    this.table.add(ls);
    const info = this.known.get(link.peerNic);
    if (info === undefined) {
      this.known.set(link.peerNic, { state: "up", reconnects: 0 });
    } else {
      if (info.state === "down" || reconnected) {
        info.reconnects++;
        this.c[NicCounter.link_reconnects]++;
      }
      info.state = "up";
    }
    link.onFrame((frame) => this.onFrame(ls, frame));
    link.onPullData?.((head, piece, at, total) => this.onPullData(ls, head, piece, at, total));
    link.onWritable?.(() => {
      // It can take frames again: an unread link is tried again.
      ls.unread = false;
      this.kick();
    });
    this.kick();
  }

  /** Detaches the link to `peerNic` on request: what waits on it completes ENDPOINT_UNREACHABLE. */
  detach(peerNic: number): void {
    const ls = this.table.get(peerNic);
    if (!ls) throw new NicError("ENOENT", `no link to NIC ${peerNic} is attached`);
    // What this NIC acknowledged was delivered: its senders hear so before the goodbye.
    this.table.flushAcks(ls);
    this.remove(ls);
    this.known.delete(peerNic);
    ls.link.close();
  }

  /**
   * The link went down by itself (the peer went away, a stream fault). `retrying`: a
   * reconnecting link tries again, and the peer shows as "down" meanwhile.
   */
  lost(link: Link, retrying: boolean): void {
    const ls = this.table.get(link.peerNic);
    // A link that was already replaced or detached: nothing waits on it any more.
    if (ls === undefined || ls.link !== link) return;
    this.c[NicCounter.link_losses]++;
    this.remove(ls);
    const info = this.known.get(link.peerNic);
    if (retrying && info) info.state = "down";
    else this.known.delete(link.peerNic);
  }

  /**
   * A reconnecting link was cancelled, or gave up (`gaveUp`: counted): forget the peer unless
   * a link to it is attached.
   */
  forget(peerNic: number, gaveUp = false): void {
    if (gaveUp) this.c[NicCounter.links_given_up]++;
    if (!this.table.has(peerNic)) this.known.delete(peerNic);
  }

  /** Every peer the NIC knows a link for, ascending (control op info). */
  states(): LinkStateInfo[] {
    return [...this.known.entries()]
      .map(([peerNic, i]): LinkStateInfo => ({ peerNic, state: i.state, reconnects: i.reconnects }))
      .sort((a, b) => a.peerNic - b.peerNic);
  }

  /** The NIC stops: every link is closed and forgotten. */
  closeAll(): void {
    this.table.flushAllAcks();
    for (const ls of this.table.list) {
      ls.attached = false;
      ls.link.close();
    }
    this.table.clear();
    this.known.clear();
    this.bound.clear();
  }

  /** Takes a link out of service; whatever waits on it completes ENDPOINT_UNREACHABLE now. */
  private remove(ls: LinkState): void {
    this.table.remove(ls);
    // Its peer id keeps its place while its refusals may be on record (link-bound.ts).
    this.bound.gone(ls.peerNic, ls.link.address ?? "", performance.now());
    try {
      this.fail(ls);
    } catch {
      this.c[NicCounter.internal_errors]++;
    }
    this.events.flushRaises();
    this.kick();
  }

  /** Everything that waits on `ls` completes ENDPOINT_UNREACHABLE; its queue and jobs are dropped. */
  private fail(ls: LinkState): void {
    this.send.failWindow(ls);
    // Requests on a removed link: the link was the current one for its peer until now.
    this.connect.failLink(ls.peerNic);
    this.remotePull.failLink(ls);
    ls.ctrlCount = 0;
    ls.pullsOut = 0;
  }

  // ---- frames in --------------------------------------------------------------------------------

  private onFrame(ls: LinkState, frame: Uint8Array): void {
    if (!ls.attached) return;
    this.c[NicCounter.frames_rx]++;
    const now = this.clock.tick();
    // Whatever it says, the peer is alive.
    ls.lastRx = now;
    ls.silentUntil = 0;
    try {
      const type = checkFrame(frame);
      if (type < 0 || getWord(frame, F_DEST_NIC) !== this.nicId || getWord(frame, F_SRC_NIC) !== ls.peerNic) {
        this.c[NicCounter.frames_bad]++;
      } else {
        switch (type) {
          case FrameType.Send:
            this.send.rxSend(frame);
            break;
          case FrameType.SendAck:
            this.send.rxSendAck(ls, frame);
            break;
          case FrameType.ConnectRequest:
            this.connect.rxConnectRequest(ls, frame);
            break;
          case FrameType.ConnectReply:
            this.connect.rxConnectReply(ls, frame);
            break;
          case FrameType.PullRequest:
            this.remotePull.rxPullRequest(ls, frame);
            break;
          case FrameType.PullReply:
            this.remotePull.rxPullReply(ls, frame);
            break;
          case FrameType.Ethernet:
            this.ether.rxEthernet(ls, frame);
            break;
          default:
            this.c[NicCounter.frames_unknown]++;
        }
      }
    } catch {
      this.c[NicCounter.internal_errors]++;
    }
    this.events.flushRaises();
    this.kick();
  }

  /**
   * A piece of a PULL_REPLY's payload (Link.onPullData), placed as it comes: the link checked
   * the header's form, the addressing is checked here with every piece, the pull's own
   * checks in remotePull. The frame counts once, with its first piece.
   */
  private onPullData(ls: LinkState, head: Uint8Array, piece: Uint8Array, at: number, total: number): void {
    if (!ls.attached) return;
    const now = this.clock.tick();
    ls.lastRx = now;
    ls.silentUntil = 0;
    try {
      if (
        checkFrame(head, FRAME_HEADER_BYTES + total) !== FrameType.PullReply ||
        getWord(head, F_DEST_NIC) !== this.nicId ||
        getWord(head, F_SRC_NIC) !== ls.peerNic
      ) {
        if (at === 0) {
          this.c[NicCounter.frames_rx]++;
          this.c[NicCounter.frames_bad]++;
        }
      } else {
        if (at === 0) this.c[NicCounter.frames_rx]++;
        this.remotePull.rxPullData(ls, head, piece, at, total);
      }
    } catch {
      this.c[NicCounter.internal_errors]++;
    }
    this.events.flushRaises();
    this.kick();
  }

  // ---- each round -------------------------------------------------------------------------------

  /**
   * Sends each link's queued headers (and SEND_ACKs held ACK_HOLD_MS) and serves its pull jobs.
   * Returns whether anything went out.
   */
  poll(): boolean {
    let did = false;
    const list = this.table.list;
    const now = this.clock.now;
    for (let k = 0; k < list.length; k++) {
      const ls = list[k];
      try {
        if (ls.ackCount > 0 && now - ls.ackSince >= ACK_HOLD_MS) this.table.flushAcks(ls);
        if (ls.ctrlCount > 0 && this.table.flushControl(ls)) did = true;
        if (ls.jobs.count > 0 && this.remotePull.serveJobs(ls)) did = true;
      } catch {
        // A bug, never a peer's garbage: count it, drop that link's jobs (their requesters time out).
        this.c[NicCounter.internal_errors]++;
        this.remotePull.dropJobs(ls);
      }
    }
    return did;
  }

  /** A poll round begins: links that batch writes (TCP) collect the round's frames into one write. */
  cork(): void {
    const list = this.table.list;
    for (let k = 0; k < list.length; k++) list[k].link.cork?.();
  }

  /** The round ends: what the links collected goes out. */
  uncork(): void {
    const list = this.table.list;
    for (let k = 0; k < list.length; k++) list[k].link.uncork?.();
  }

  /** Whether a link has work that waits for it to take frames (no doorbell announces it). */
  hasDeferredWork(): boolean {
    const list = this.table.list;
    for (let k = 0; k < list.length; k++) {
      const ls = list[k];
      if (ls.ctrlCount > 0 || ls.jobs.count > 0) return true;
    }
    return false;
  }

  // ---- the wire timer ---------------------------------------------------------------------------

  private readonly onWireTick = (): void => {
    this.clock.tick();
    const flags = this.wireTick();
    this.events.flushRaises();
    if ((flags & WIRE_WAITING) !== 0) this.table.armWireTimer();
    // Only when it completed or sent something: an idle NIC must stay asleep.
    if ((flags & WIRE_ACTED) !== 0) this.kick();
  };

  /**
   * Completes what waited WIRE_TIMEOUT_MS; sends keepalives for held deliveries and expires
   * those held HOLD_MS; silences silent links. Returns WIRE_ACTED if it completed or sent
   * anything, WIRE_WAITING if anything still waits.
   */
  private wireTick(): number {
    try {
      return this.wirePass();
    } catch {
      // A bug, never a peer's garbage: count it, and let the loop run a round (whatever the
      // pass completed before it threw may need one); the timer is armed again by the next wait.
      this.c[NicCounter.internal_errors]++;
      return WIRE_ACTED;
    }
  }

  private wirePass(): number {
    const now = this.clock.now;
    let flags = this.connect.tick() | this.remotePull.tick();
    const list = this.table.list;
    for (let k = 0; k < list.length; k++) flags |= this.send.tick(list[k]);
    const keepalive = now - this.lastKeepalive >= KEEPALIVE_MS;
    let held = false;
    const ctxs = this.eps.ctxs;
    const openIds = this.eps.openIds;
    for (let i = 0; i < this.eps.openCount; i++) {
      const ctx = ctxs[openIds[i]];
      if (ctx.dqCount > 0 && now - ctx.dqSince[ctx.dqHead] >= HOLD_MS) {
        flags |= WIRE_ACTED;
        this.delivery.expire(ctx);
      }
      // Held deliveries keep the timer running (they expire); those from links get keepalives.
      if (ctx.dqCount > 0) held = true;
      if (keepalive) this.delivery.sendKeepalives(ctx);
    }
    if (held && keepalive) {
      this.lastKeepalive = now;
      flags |= WIRE_ACTED;
    }
    // A descriptor that has waited WIRE_TIMEOUT_MS on a link that neither said anything nor
    // took a frame in that time waits on a silent peer; one that has waited UNREAD_MS for a link
    // that refused every frame in that time, on an unread one (whether or not the peer talks).
    for (let i = 0; i < this.eps.openCount; i++) {
      const ctx = ctxs[openIds[i]];
      if (ctx.stallSince === 0) continue;
      flags |= WIRE_WAITING;
      const ls = this.table.get(ctx.stallNic);
      if (ls === undefined) continue;
      const waited = now - ctx.stallSince;
      if (waited >= WIRE_TIMEOUT_MS && now - ls.lastTx >= WIRE_TIMEOUT_MS) this.table.checkSilence(ls);
      if (
        ctx.stallPushback &&
        waited >= UNREAD_MS &&
        ls.refusedSince !== 0 &&
        now - ls.refusedSince >= UNREAD_MS
      )
        ls.unreadDue = true;
    }
    for (let k = list.length - 1; k >= 0; k--) {
      const ls = list[k];
      if (ls.silenceDue) this.silence(ls);
      else if (ls.unreadDue) this.unreadLink(ls);
      else continue;
      ls.silenceDue = ls.unreadDue = false;
      flags |= WIRE_ACTED;
    }
    return held ? flags | WIRE_WAITING : flags;
  }

  /**
   * The peer on `ls` has said nothing for WIRE_TIMEOUT_MS while something of ours on it went
   * overdue: its host stopped or froze, or the network between us did. Everything waiting on
   * the link fails ENDPOINT_UNREACHABLE now, not one request per timeout (queued SENDs would
   * otherwise go out and time out one round after another, or wait forever on a link that no
   * longer takes frames), and for another WIRE_TIMEOUT_MS requests to it fail at once. Any
   * frame from the peer ends that. The link itself stays: the peer may come back.
   */
  private silence(ls: LinkState): void {
    this.c[NicCounter.links_silent]++;
    ls.silentUntil = this.clock.now + WIRE_TIMEOUT_MS;
    this.fail(ls);
  }

  /**
   * The peer on `ls` talks but has read nothing of ours for UNREAD_MS (TCP pushed back all
   * along) while a descriptor waited for the link: the silence check never fires for it, and
   * the descriptor held everything queued behind it in its endpoint's queue, to any
   * destination. Everything waiting on the link fails ENDPOINT_UNREACHABLE now, as for a silent
   * peer, and requests to it fail at once until the link takes a frame again or says it can
   * (onWritable): the peer's own frames do not end it.
   */
  private unreadLink(ls: LinkState): void {
    this.c[NicCounter.links_unread]++;
    ls.unread = true;
    this.fail(ls);
  }
}

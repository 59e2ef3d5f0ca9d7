/**
 * myrback's registry (MyriCore): who owns which endpoint, region and channel on this host,
 * and the rules every request goes through whoever asks — ownership, quotas, endpoint keys,
 * one channel per endpoint pair, clean-up when an owner dies. Xen2MX keeps the same part in
 * omx_xenback_endpoint.c and _reg.c. Both transports use it: the xenbus device (device.ts)
 * for guests and the native service (host/driver-domain.ts) for processes. It asks the NIC
 * over synchronous control calls and takes memory from SharedMemory; it never sees a ring.
 */

import type {
  LookupReply,
  MemoryRun,
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  RegisterRegionReply,
} from "../../nic/control.js";
import { ANY_ENDPOINT } from "../../nic/window.js";
import type { DomId } from "../../xen/abi.js";
import type { Guest } from "../../xen/guest/guest.js";
import type { SyncCallClient } from "../../xen/sync-call.js";
import {
  CHANNEL_BYTES,
  channelLanesClosed,
  closeChannelLanes,
  laneUnread,
  writeLanePolicy,
} from "../channel-abi.js";
import { DRIVER_EVENT_CONNECT, DRIVER_EVENT_DISCONNECT } from "../driver-abi.js";
import { MyriError, type MyriInfo, type MyriStatusName, OP_COUNT, XsKey } from "../protocol.js";
import { lanePolicy, QosPolicies } from "../qos-policy.js";
import { GrantKeeper } from "./grant-keeper.js";
import { type BackendEndpointInfo, describeEndpoints } from "./inspect.js";
import { type ChannelRec, Client, type ClientKind, type EndpointRec } from "./records.js";
import { capsOf, type ShareLane, ShareLoop } from "./share-loop.js";
import { type ChannelMem, SharedMemory, type WindowSlot } from "./shared-memory.js";
import { Stat } from "./stats.js";

export interface ConnectResult {
  peerNic: number;
  peerEndpoint: number;
  peerSession: number;
  channel?: { rec: ChannelRec; side: 0 | 1; peer: EndpointRec };
}

export interface CoreConfig {
  guest: Guest;
  nic: SyncCallClient<NicControlRequest>;
  stats: Int32Array;
  endpointsPerDomain: number;
  registeredBytesPerDomain: number;
  regionsPerDomain: number;
  log: (message: string) => void;
}

/** Channels a closed connector may leave one endpoint at most, untaken (registry orphan). */
export const ORPHANS_PER_ENDPOINT = 16;
/**
 * Such channels one client (a domain, a native process) may leave in all, across every
 * endpoint it wrote to: per endpoint only, a native connector (whose channels are the driver
 * domain's memory, ~520 KB each, not its own) left 16 at every endpoint of the host.
 */
export const ORPHANS_PER_OWNER = 16;

const U32 = (v: unknown): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

/** NIC errnos as MX return codes, per operation. */
function nicCode(errno: string, fallback: MyriStatusName): MyriStatusName {
  switch (errno) {
    case "ENOSPC":
    case "ENOMEM":
      return "MX_NO_RESOURCES";
    case "EBUSY":
    case "EEXIST":
      return "MX_BUSY";
    case "EIO":
      return "MX_NIC_DEAD";
    default:
      return fallback;
  }
}

export class MyriCore {
  readonly nicId: number;
  readonly maxEndpoints: number;
  readonly keeper: GrantKeeper;
  readonly memory: SharedMemory;
  private readonly clients = new Map<DomId, Client>();
  private readonly endpoints = new Map<number, EndpointRec>();
  /**
   * Domains with a myri device (advertised, connected or not): the NIC's contexts are kept for
   * the first endpoint of each, so extra endpoints of others cannot take them (checkOpen).
   */
  private readonly devices = new Set<DomId>();
  private readonly channels = new Map<number, ChannelRec>();
  private readonly pairs = new Map<string, ChannelRec>();
  private nextChannelId = 1;
  /** Each domain's lane writer group (laneGroup), and the next to give. */
  private readonly laneGroups = new Map<DomId, number>();
  private nextLaneGroup = 1;
  /** Endpoints opened so far (EndpointRec.serial). */
  private openSerial = 0;
  /** Each domain's weight and caps, from its device's `qos` node (qos-policy.ts). */
  readonly qos = new QosPolicies({
    endpointsOf: (domid) => this.clients.get(domid)?.endpoints.keys() ?? [],
    setQos: (endpointId, settings) => this.nic({ op: "set_qos", endpointId, settings }, "MX_BAD_REQUEST"),
    changed: (domid) => {
      for (const ch of this.channels.values())
        if (ch.members[0].owner.domid === domid || ch.members[1].owner.domid === domid)
          this.writeLanePolicies(ch);
      this.refreshShares();
    },
    log: (m) => this.cfg.log(m),
  });
  /**
   * The host-wide weighted share of co-resident lanes (share-loop.ts): runs only while a
   * domain with a co-resident channel has a weight other than 1 (refreshShares).
   */
  readonly shares = new ShareLoop({
    lanes: () => this.shareLanes(),
    now: () => performance.now(),
    setTimer: (fn, ms) => {
      const t = setTimeout(fn, ms);
      t.unref?.();
      return t;
    },
    clearTimer: (t) => clearTimeout(t as ReturnType<typeof setTimeout>),
    counted: (what) => Atomics.add(this.cfg.stats, what === "tick" ? Stat.shareTicks : Stat.shareLimits, 1),
    log: (m) => this.cfg.log(m),
  });

  constructor(readonly cfg: CoreConfig) {
    const info = this.nic<NicInfo>({ op: "info" }, "MX_NIC_DEAD");
    this.nicId = info.nicId;
    this.maxEndpoints = info.maxEndpoints;
    this.keeper = new GrantKeeper(cfg.guest, cfg.stats);
    this.memory = new SharedMemory(cfg.guest, this.keeper, cfg.stats);
  }

  /** Counts one served request (both transports). */
  count(op: number, ok: boolean, transport: "ring" | "native"): void {
    const s = this.cfg.stats;
    Atomics.add(s, Stat.requests, 1);
    if (op >= 1 && op <= OP_COUNT) Atomics.add(s, op, 1);
    if (!ok) Atomics.add(s, Stat.errors, 1);
    Atomics.add(s, transport === "ring" ? Stat.ringRequests : Stat.nativeRequests, 1);
  }

  nic<T>(req: NicControlRequest, fallback: MyriStatusName): T {
    try {
      return this.cfg.nic.call<T>(req);
    } catch (e) {
      const errno = (e as { errno?: unknown }).errno;
      const msg = (e as Error).message ?? String(e);
      throw new MyriError(
        nicCode(typeof errno === "string" ? errno : "", fallback),
        `the NIC refused: ${msg}`,
      );
    }
  }

  client(domid: DomId, kind: ClientKind, label: string, quotaBytes?: number): Client {
    let c = this.clients.get(domid);
    if (c && !c.dead) return c;
    c = new Client(domid, kind, label, quotaBytes ?? this.cfg.registeredBytesPerDomain);
    this.clients.set(domid, c);
    return c;
  }

  liveClients(): Client[] {
    return [...this.clients.values()].filter((c) => !c.dead);
  }

  private own(client: Client, endpointId: unknown): EndpointRec {
    const ep = U32(endpointId) ? client.endpoints.get(endpointId) : undefined;
    if (!ep)
      throw new MyriError(
        "MX_BAD_ENDPOINT",
        `${client.label} has no open endpoint ${String(endpointId)}; open it first (its endpoints: ${[...client.endpoints.keys()].join(", ") || "none"})`,
      );
    return ep;
  }

  private publishCounts(): void {
    const s = this.cfg.stats;
    Atomics.store(s, Stat.endpoints, this.endpoints.size);
    // Orphans taken are dead: kept only until their member's library has let go of them.
    let channels = 0;
    for (const c of this.channels.values()) if (!(c.orphan && c.accepted)) channels++;
    Atomics.store(s, Stat.channels, channels);
    let regions = 0;
    for (const c of this.clients.values()) regions += c.regions.size;
    Atomics.store(s, Stat.regions, regions);
  }

  // -- endpoints --

  /**
   * NIC context `endpointId` while it is open: who opened it, its session and key. netback
   * steers MX frames by it, and delivers only those naming this opening (netback/mx-steer.ts).
   */
  endpointContext(endpointId: number): { domid: DomId; session: number; key: number } | undefined {
    const ep = this.endpoints.get(endpointId);
    return ep === undefined || ep.closed
      ? undefined
      : { domid: ep.owner.domid, session: ep.session, key: ep.key };
  }

  openEndpoint(client: Client, endpointId: unknown, key: unknown): EndpointRec {
    return this.openEndpointWith(client, endpointId, key, undefined);
  }

  /** Opens an endpoint; a guest's gets a window slot of its own domain (`slot`), natives a fresh window. */
  /** Throws what opening would refuse (ids, key, quota) before anything is spent on it. */
  checkOpen(client: Client, endpointId: unknown, key: unknown): void {
    if (!U32(endpointId) || (endpointId !== ANY_ENDPOINT && endpointId >= this.maxEndpoints))
      throw new MyriError(
        "MX_BAD_ENDPOINT_ID",
        `endpoint id ${String(endpointId)} is not 0..${this.maxEndpoints - 1} or MX_ANY_ENDPOINT (0xffffffff)`,
      );
    if (!U32(key)) throw new MyriError("MX_BAD_REQUEST", `key ${String(key)} is not a 32-bit unsigned value`);
    if (client.endpoints.size >= this.cfg.endpointsPerDomain)
      throw new MyriError(
        "MX_NO_RESOURCES",
        `${client.label} already has ${client.endpoints.size} endpoints open, its quota (${XsKey.maxEndpoints}=${this.cfg.endpointsPerDomain}); close one first`,
      );
    if (client.endpoints.size > 0) {
      // An extra endpoint may not take the NIC's last contexts: four guests opening their
      // quota of 8 took all 32, and every later guest on the host lost the fast path (and a
      // later native process, which has no other path, failed to start). Kept: one for each
      // domain with a device and none open, and a quarter of the NIC for domains not here yet.
      const free = this.maxEndpoints - this.endpoints.size;
      const waiting = this.domainsWithoutEndpoint(client.domid);
      const kept = Math.max(waiting, firstEndpointReserve(this.maxEndpoints));
      if (free <= kept)
        throw new MyriError(
          "MX_NO_RESOURCES",
          `${client.label} has ${client.endpoints.size} endpoints open and may not open another: the NIC's last ${free} endpoint contexts are kept for first endpoints (of the ${waiting} other domains with a myri device and none open, and of domains yet to start)`,
        );
    }
  }

  /** A domain got a myri device: the NIC keeps a context for its first endpoint. */
  deviceAdded(domid: DomId): void {
    this.devices.add(domid);
  }

  /** Its device went away: nothing is kept for it any more. */
  deviceRemoved(domid: DomId): void {
    this.devices.delete(domid);
  }

  /** Domains other than `except` with a myri device and no endpoint open. */
  private domainsWithoutEndpoint(except: DomId): number {
    let n = 0;
    for (const d of this.devices) {
      if (d === except) continue;
      const c = this.clients.get(d);
      if (c === undefined || c.dead || c.endpoints.size === 0) n++;
    }
    return n;
  }

  openEndpointWith(
    client: Client,
    endpointId: unknown,
    key: unknown,
    slot: WindowSlot | undefined,
  ): EndpointRec {
    this.checkOpen(client, endpointId, key);
    const r = this.nic<OpenEndpointReply>(
      {
        op: "open_endpoint",
        owner: client.label,
        endpointId: endpointId as number,
        key: key as number,
        // The domain's policy is the domain's: its endpoints share one weight and one set of caps.
        group: client.domid,
        window: slot?.window.bytes.buffer as SharedArrayBuffer | undefined,
        intr: slot?.intr.bytes.buffer as SharedArrayBuffer | undefined,
      },
      "MX_BAD_ENDPOINT_ID",
    );
    const ep: EndpointRec = {
      id: r.endpointId,
      session: r.session,
      key: key as number,
      serial: ++this.openSerial,
      owner: client,
      window: r.window,
      intr: r.intr,
      shared: slot,
      channels: new Set(),
      peers: new Set(),
      closed: false,
    };
    client.endpoints.set(ep.id, ep);
    this.endpoints.set(ep.id, ep);
    this.qos.applyToEndpoint(client.domid, ep.id);
    this.publishCounts();
    return ep;
  }

  /**
   * Closes an endpoint: its channels die (both lanes closed, peers told with a DISCONNECT
   * event), the NIC closes it (which drops its regions), then its registrations are released
   * and dom0's grants of its window ended.
   */
  closeEndpoint(client: Client, endpointId: unknown): void {
    this.closeRec(this.own(client, endpointId));
  }

  private closeRec(ep: EndpointRec): void {
    if (ep.closed) return;
    ep.closed = true;
    const told = new Set<EndpointRec>();
    for (const ch of [...ep.channels]) {
      told.add(ch.members[0] === ep ? ch.members[1] : ch.members[0]);
      // What a connector wrote to a member that has not taken the channel yet waits for it.
      if (
        ch.members[0] === ep &&
        !ch.accepted &&
        !ch.memberConnected &&
        !ch.members[1].closed &&
        laneUnread(ch.buffer, 0)
      )
        this.orphan(ch);
      else this.closeChannel(ch);
    }
    for (const p of ep.peers) {
      p.peers.delete(ep);
      // Peers with a channel were told by closeChannel; the others hear it here (channel 0xffffffff).
      if (!p.closed && !told.has(p)) this.tellDisconnect(p, ep, 0xffffffff);
    }
    ep.peers.clear();
    try {
      this.nic<void>({ op: "close_endpoint", endpointId: ep.id }, "MX_BAD_ENDPOINT");
    } catch (e) {
      this.cfg.log(
        `closing endpoint ${ep.id} of ${ep.owner.label} on the NIC failed: ${(e as Error).message}`,
      );
    }
    const owner = ep.owner;
    for (const [id, reg] of owner.regions) {
      if (reg.endpointId !== ep.id) continue;
      owner.regions.delete(id);
      owner.registeredBytes -= reg.bytes;
      reg.release();
    }
    if (ep.shared) this.memory.putSlot(owner.domid, ep.shared);
    owner.endpoints.delete(ep.id);
    if (this.endpoints.get(ep.id) === ep) this.endpoints.delete(ep.id);
    this.publishCounts();
  }

  // -- regions --

  /** Ownership and quota check before the caller pins anything. */
  checkRegister(client: Client, endpointId: unknown, bytes: number): EndpointRec {
    const ep = this.own(client, endpointId);
    if (client.regions.size >= this.cfg.regionsPerDomain)
      throw new MyriError(
        "MX_NO_RESOURCES",
        `${client.label} already has ${client.regions.size} regions registered, its quota (${XsKey.maxRegions}=${this.cfg.regionsPerDomain}); deregister some first`,
      );
    if (client.registeredBytes + bytes > client.quotaBytes)
      throw new MyriError(
        "MX_NO_RESOURCES",
        `${client.label} would have ${client.registeredBytes + bytes} bytes registered, over its quota of ${client.quotaBytes} (${XsKey.maxRegisteredBytes}); deregister regions first`,
      );
    return ep;
  }

  registerRegion(
    client: Client,
    endpointId: number,
    memory: SharedArrayBuffer,
    runs: MemoryRun[],
    access: number,
    bytes: number,
    release: () => void,
  ): RegisterRegionReply {
    this.checkRegister(client, endpointId, bytes);
    const r = this.nic<RegisterRegionReply>(
      { op: "register_region", endpointId, memory, runs, access },
      "MX_BAD_SEG_LIST",
    );
    client.regions.set(r.regionId, { id: r.regionId, endpointId, bytes, release });
    client.registeredBytes += bytes;
    this.publishCounts();
    return r;
  }

  deregisterRegion(client: Client, endpointId: unknown, regionId: unknown): void {
    const ep = this.own(client, endpointId);
    const reg = U32(regionId) ? client.regions.get(regionId) : undefined;
    if (!reg || reg.endpointId !== ep.id)
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `endpoint ${ep.id} of ${client.label} has no region ${String(regionId)}`,
      );
    this.nic<void>({ op: "deregister_region", endpointId: ep.id, regionId: reg.id }, "MX_BAD_SEG_LIST");
    client.regions.delete(reg.id);
    client.registeredBytes -= reg.bytes;
    reg.release();
    this.publishCounts();
  }

  // -- connections and channels --

  connect(
    client: Client,
    endpointId: unknown,
    peerNic: unknown,
    peerEndpoint: unknown,
    key: unknown,
  ): ConnectResult {
    const ep = this.own(client, endpointId);
    if (!U32(peerNic) || !U32(peerEndpoint) || !U32(key))
      throw new MyriError(
        "MX_BAD_REQUEST",
        "connect: peer nic, peer endpoint and key must be 32-bit unsigned values",
      );
    if (peerNic !== this.nicId)
      throw new MyriError(
        "MX_CONNECTION_FAILED",
        `peer NIC ${peerNic} is not this host's NIC (${this.nicId}); the driver connects co-resident endpoints only`,
      );
    const look = this.nic<LookupReply>(
      // `requester`: the NIC throttles this endpoint's wrong keys (nic/connect-throttle.ts).
      { op: "lookup_endpoint", endpointId: peerEndpoint, key, requester: ep.id },
      "MX_CONNECTION_FAILED",
    );
    if (look.status === "bad_key") Atomics.add(this.cfg.stats, Stat.badKeys, 1);
    if (look.status === "throttled")
      throw new MyriError(
        "MX_BUSY",
        `NIC ${peerNic} refuses connections from endpoint ${ep.id} for ${look.retryAfterMs} ms more: too many wrong keys (retry then, with the key the peer's owner opened it with)`,
      );
    if (look.status === "bad_key")
      throw new MyriError(
        "MX_BAD_CONNECTION_KEY",
        `endpoint ${peerEndpoint} of NIC ${peerNic} was opened with another key than ${key}; use the key its owner passed to mx_open_endpoint`,
      );
    if (look.status !== "ok")
      throw new MyriError("MX_CONNECTION_FAILED", `no open endpoint ${peerEndpoint} on NIC ${peerNic}`);
    const peer = this.endpoints.get(peerEndpoint);
    const result: ConnectResult = { peerNic, peerEndpoint, peerSession: look.session };
    if (!peer || peer.closed) return result;
    if (peer !== ep) {
      ep.peers.add(peer);
      peer.peers.add(ep);
    }
    // A channel only between two distinct endpoints of the same kind (guests share granted
    // frames, processes share buffers); anything else goes through the NIC's loopback.
    if (peer === ep || peer.owner.kind !== client.kind) return result;
    const pair = pairKey(ep, peer);
    let ch = this.pairs.get(pair);
    // A member released the pair's channel (mx_disconnect, or its library failed the peer) and
    // closed its lanes: it is dead for both (both told), and this connect gets a fresh one.
    // Its memory serves the pair again only once neither member maps it (putChannel).
    if (ch && channelLanesClosed(ch.buffer)) {
      // Not before the peer took the channel it was told of: each replacement costs it a
      // DISCONNECT and a CONNECT event, and a member that disconnected and connected in a
      // loop filled an idle peer's event queue, so that no third domain could connect to it.
      // Until the peer catches up, the pair talks through the NIC. A peer that has it from a
      // connect of its own took it too (its CONNECT is stale, never accepted): counted as
      // not taken, such a pair talked through the NIC for as long as both lived (a reviewer's
      // PoC). The replacement is a channel neither took, so a loop still costs it one.
      if (!ch.accepted && !ch.memberConnected) return result;
      this.closeChannel(ch);
      ch = undefined;
    }
    if (!ch) {
      let mem: ChannelMem | undefined;
      let buffer: SharedArrayBuffer;
      if (client.kind === "guest") {
        // A member holding its share of replaced interrupt pages gets no other's page: the NIC.
        if (!this.memory.mayShareIntr(client.domid, peer.owner.domid)) return result;
        mem = this.memory.takeChannel(client.domid, peer.owner.domid);
        // The pair already holds its share of channel buffers: it talks through the NIC.
        if (!mem) return result;
        buffer = mem.run.bytes.buffer as SharedArrayBuffer;
      } else buffer = new SharedArrayBuffer(CHANNEL_BYTES);
      ch = { id: this.channelId(), members: [ep, peer], buffer, mem, closed: false, accepted: false };
      this.writeLanePolicies(ch);
      this.pairs.set(pair, ch);
      this.channels.set(ch.id, ch);
      ep.channels.add(ch);
      peer.channels.add(ch);
      this.publishCounts();
      this.refreshShares();
      let told: boolean;
      try {
        told = this.deliverEvent(peer, DRIVER_EVENT_CONNECT, [ch.id, this.nicId, ep.id, ep.session]);
      } catch (e) {
        this.closeChannel(ch);
        throw e;
      }
      if (!told) {
        // The peer is not consuming events and its queue has no room for ours (the NIC keeps
        // the rest for the completions it owes the peer): the channel is undone before anyone
        // knew of it — no one is told — and the pair talks through the NIC, as an MX user
        // expects of a connect to a busy peer. Before, this connect failed
        // MX_CONNECTION_FAILED: a peer that connected and closed in a loop kept every other
        // domain from connecting to its victim.
        this.closeChannel(ch, false);
        return result;
      }
    }
    const side: 0 | 1 = ch.members[0] === ep ? 0 : 1;
    if (side === 1) ch.memberConnected = true;
    result.channel = { rec: ch, side, peer };
    return result;
  }

  /** A channel id no live channel has: they wrap at 2^31, and a host runs for weeks. */
  private channelId(): number {
    for (;;) {
      const id = this.nextChannelId;
      this.nextChannelId = id >= 0x7fffffff ? 1 : id + 1;
      if (!this.channels.has(id)) return id;
    }
  }

  acceptChannel(
    client: Client,
    endpointId: unknown,
    channelId: unknown,
  ): { rec: ChannelRec; side: 0 | 1; peer: EndpointRec; intrOf?: EndpointRec } {
    const ep = this.own(client, endpointId);
    // Orphans it took before are mapped and released by now (its library drains one and lets
    // it go in the same call that took it): their memory may serve the pair again.
    for (const c of [...ep.channels]) if (c.orphan && c.accepted) this.finishOrphan(c);
    const ch = U32(channelId) ? this.channels.get(channelId) : undefined;
    if (!ch || (ch.closed && !(ch.orphan && ch.members[1] === ep)))
      throw new MyriError(
        "MX_CONNECTION_FAILED",
        `channel ${String(channelId)} does not exist (or was closed)`,
      );
    const side = ch.members[0] === ep ? 0 : ch.members[1] === ep ? 1 : -1;
    if (side < 0)
      throw new MyriError(
        "MX_NO_PERM",
        `channel ${ch.id} joins endpoints ${ch.members[0].id} and ${ch.members[1].id}, not endpoint ${ep.id}`,
      );
    if (ch.orphan) {
      // Closed lanes: its library takes what is in them and fails the peer. It gets its own
      // interrupt page as the peer's (the closed connector's slot may serve a new endpoint).
      ch.accepted = true;
      return { rec: ch, side: 1, peer: ch.members[0], intrOf: ep };
    }
    // members[1] is the one the connect named (members[0] connected, and has it already).
    if (side === 1) ch.accepted = true;
    if (channelLanesClosed(ch.buffer)) {
      // Its connector released it (mx_disconnect) after writing to it, before this member
      // took it: the member takes what is there, as from a connector that closed its endpoint
      // (orphan). Refused, those sends were lost, each MX_STATUS_SUCCESS to their sender. Not
      // for a member that has it through its own connect: its library read it as its own (this
      // is a stale CONNECT), and a second reading failed the connection it has made since.
      if (side === 1 && !ch.memberConnected && laneUnread(ch.buffer, 0)) return this.takeReleased(ch, ep);
      // Nothing in it: dead for both, both told.
      this.closeChannel(ch);
      throw new MyriError(
        "MX_CONNECTION_FAILED",
        `channel ${ch.id} was closed by a member before endpoint ${ep.id} accepted it; connect again for a new one`,
      );
    }
    return { rec: ch, side: side as 0 | 1, peer: ch.members[1 - side] };
  }

  /**
   * Writes each member's lane policy page (channel-abi.ts): the limits its library holds
   * the lane it reads to — the writer's tx caps with the reader's rx caps, and the writer's
   * weight. At channel creation and whenever either domain's policy changes.
   */
  private writeLanePolicies(ch: ChannelRec): void {
    if (!ch.mem) return;
    for (const side of [0, 1] as const) {
      const reader = ch.members[side].owner.domid;
      const writer = ch.members[1 - side].owner.domid;
      const page = ch.mem.policy.get(reader);
      if (!page) continue;
      writeLanePolicy(
        page.bytes.buffer as SharedArrayBuffer,
        lanePolicy(this.qos.settingsFor(writer), this.qos.settingsFor(reader), this.laneGroup(writer)),
      );
    }
  }

  /**
   * The writer group a domain's lanes carry (lane-policer.ts LaneGroups: its buckets at each
   * reader, kept there while in debt): one per domain incarnation, not its id, so that a later
   * domain given a dead debtor's id (ids come back once the round robin wraps) does not start in
   * its debt at every reader it had. Forgotten with the domain (forgetDomain).
   */
  private laneGroup(domid: DomId): number {
    let g = this.laneGroups.get(domid);
    if (g === undefined) this.laneGroups.set(domid, (g = this.nextLaneGroup++));
    return g;
  }

  /**
   * Kills a channel: both lanes closed (readers and writers see it), both members told
   * (`tell`; not for a channel neither member was handed yet).
   */
  private closeChannel(ch: ChannelRec, tell = true): void {
    if (ch.closed) {
      // An orphan's member closes: it will never take it.
      if (ch.orphan) this.finishOrphan(ch);
      return;
    }
    ch.closed = true;
    closeChannelLanes(ch.buffer);
    const [a, b] = ch.members;
    for (const [me, other] of [
      [a, b],
      [b, a],
    ] as const) {
      me.channels.delete(ch);
      if (tell && !me.closed) this.tellDisconnect(me, other, ch.id);
    }
    this.unpair(ch);
    this.channels.delete(ch.id);
    if (ch.mem) this.memory.putChannel(ch.mem);
    this.publishCounts();
    this.refreshShares();
  }

  /**
   * A channel whose connector closed its endpoint before the member it named accepted it,
   * with records in its lane: closed (nothing more is written) and that member told
   * (DISCONNECT, after the CONNECT it has yet to take), but kept, so that its acceptChannel
   * still gets it and its library reads what is there. Released, the sends its connector saw
   * complete were lost: a rank that opened, connected, sent 8 B and closed in a loop lost ~1%
   * of them. An endpoint is left ORPHANS_PER_ENDPOINT at most, and a client leaves
   * ORPHANS_PER_OWNER at most in all (the oldest goes, unread).
   */
  private orphan(ch: ChannelRec): void {
    const [connector, member] = ch.members;
    this.detachOrphan(ch);
    closeChannelLanes(ch.buffer);
    this.tellDisconnect(member, connector, ch.id);
    const waiting = [...member.channels].filter((c) => c.orphan && !c.accepted);
    if (waiting.length > ORPHANS_PER_ENDPOINT) this.finishOrphan(waiting[0]);
    // Channels are kept in the order they were made: the oldest of this owner's goes.
    let left = 0;
    let oldest: ChannelRec | undefined;
    for (const c of this.channels.values())
      if (c.orphan && !c.accepted && c.members[0].owner === connector.owner) {
        oldest ??= c;
        left++;
      }
    if (left > ORPHANS_PER_OWNER && oldest !== undefined) this.finishOrphan(oldest);
    this.publishCounts();
    this.refreshShares();
  }

  /**
   * A channel its connector released with records in it, taken now by the member it named:
   * an orphan, handed over closed (its library reads it and fails that connection) and
   * finished at the member's next accept or close, once its library has let go of it.
   */
  private takeReleased(ch: ChannelRec, member: EndpointRec) {
    const connector = ch.members[0];
    this.detachOrphan(ch);
    ch.accepted = true;
    this.publishCounts();
    this.refreshShares();
    return { rec: ch, side: 1 as const, peer: connector, intrOf: member };
  }

  /** `ch` becomes an orphan: closed, no longer its connector's nor the pair's channel, kept for its member. */
  private detachOrphan(ch: ChannelRec): void {
    ch.closed = true;
    ch.orphan = true;
    ch.members[0].channels.delete(ch);
    this.unpair(ch);
  }

  /** `ch` is no longer its pair's channel (the pair's next connect makes another). */
  private unpair(ch: ChannelRec): void {
    const key = pairKey(ch.members[0], ch.members[1]);
    if (this.pairs.get(key) === ch) this.pairs.delete(key);
  }

  /** An orphan is done with (taken and released, or its member closed): its memory serves the pair again once unmapped. */
  private finishOrphan(ch: ChannelRec): void {
    ch.orphan = false;
    for (const m of ch.members) m.channels.delete(ch);
    this.channels.delete(ch.id);
    if (ch.mem) this.memory.putChannel(ch.mem);
    this.publishCounts();
  }

  /** The lanes the share loop weighs: those of guest channels between two domains. */
  private shareLanes(): ShareLane[] {
    const out: ShareLane[] = [];
    for (const ch of this.channels.values()) {
      if (ch.closed || !ch.mem) continue;
      const [a, b] = ch.members;
      if (a.owner.domid === b.owner.domid) continue; // one domain's own lanes: one weight
      for (const side of [0, 1] as const) {
        const reader = ch.members[side].owner.domid;
        const writer = ch.members[1 - side].owner.domid;
        const page = ch.mem.policy.get(reader);
        if (!page) continue;
        const writerPage = ch.mem.policy.get(writer);
        const w = this.qos.settingsFor(writer);
        out.push({
          key: `${ch.id}:${side}`, // the reader's side (inspect.ts looks it up so)
          page: page.bytes.buffer as SharedArrayBuffer,
          writerPage: writerPage?.bytes.buffer as SharedArrayBuffer | undefined,
          weight: w.weight,
          writer,
          reader,
          writerTx: w.txBytesPerSec,
          readerRx: this.qos.settingsFor(reader).rxBytesPerSec,
        });
      }
    }
    return out;
  }

  /**
   * Starts the share loop while a weight other than 1 meets a co-resident channel, or a
   * domain with a byte cap writes (tx) or reads (rx) two lanes or more; else stops it.
   */
  private refreshShares(): void {
    let weighted = false;
    const cappedLanes = new Map<string, number>();
    for (const lane of this.shareLanes()) {
      if (lane.weight !== 1) weighted = true;
      for (const [key] of capsOf(lane)) {
        const n = (cappedLanes.get(key) ?? 0) + 1;
        cappedLanes.set(key, n);
        if (n >= 2) weighted = true;
      }
      if (weighted) break;
    }
    if (weighted) this.shares.start();
    else this.shares.stop();
    Atomics.store(this.cfg.stats, Stat.shareLoopRunning, this.shares.running ? 1 : 0);
  }

  /**
   * Puts a DRIVER event (driver-abi.ts) in `to`'s event queue. false: it has no room (the
   * NIC's EAGAIN, counted driverEventsRefused): its owner is not consuming events, and the
   * NIC keeps the rest of its backlog for the completions it owes it. Throws otherwise.
   */
  private deliverEvent(to: EndpointRec, cookie: number, words: number[]): boolean {
    try {
      this.cfg.nic.call<void>({ op: "deliver_event", endpointId: to.id, cookie, words });
      return true;
    } catch (e) {
      const errno = (e as { errno?: unknown }).errno;
      if (errno === "EAGAIN") {
        Atomics.add(this.cfg.stats, Stat.driverEventsRefused, 1);
        return false;
      }
      throw new MyriError(
        nicCode(typeof errno === "string" ? errno : "", "MX_CONNECTION_FAILED"),
        `the NIC refused: ${(e as Error).message ?? String(e)}`,
      );
    }
  }

  /**
   * Tells `to` that `gone` went away (its channel `channelId`, or 0xffffffff: a peer through
   * the NIC). Not told when `to`'s event queue has no room (deliverEvent): that costs its
   * library only how soon it knows, never a wrong answer. A channel's lanes are closed before
   * this (closeChannel), so a library that accepted the channel finds it dead by itself (its
   * sweep of closed lanes, or its next send on it), and one that never accepted it is refused
   * it when it reads the CONNECT event (acceptChannel: closed); a peer through the NIC is
   * failed at its next use (the NIC answers sends to a closed endpoint ENDPOINT_CLOSED, and the
   * library probes a silent peer it waits on).
   */
  private tellDisconnect(to: EndpointRec, gone: EndpointRec, channelId: number): void {
    try {
      this.deliverEvent(to, DRIVER_EVENT_DISCONNECT, [channelId >>> 0, this.nicId, gone.id, gone.session]);
    } catch (e) {
      this.cfg.log(
        `telling endpoint ${to.id} that endpoint ${gone.id} went away failed: ${(e as Error).message}`,
      );
    }
  }

  /**
   * What the registry knows, for the host's inspection (src/host/inspect.ts): every open
   * endpoint with its owner, registrations, co-resident peers and channels, and the depths
   * of its queues read from its window and its channels' lanes now. Reads shared words only
   * (no request to the NIC, nothing counted): the data path does not notice.
   */
  inspect(): BackendEndpointInfo[] {
    return describeEndpoints(this.endpoints.values(), this.shares.info());
  }

  info(client: Client): MyriInfo {
    const nic = this.nic<NicInfo>({ op: "info" }, "MX_NIC_DEAD");
    return {
      nicId: nic.nicId,
      maxEndpoints: nic.maxEndpoints,
      endpoints: client.endpoints.size,
      endpointQuota: this.cfg.endpointsPerDomain,
      registeredBytes: client.registeredBytes,
      registeredBytesQuota: client.quotaBytes,
      regions: client.regions.size,
    };
  }

  /** Everything a client held, released (its domain died or it disconnected). */
  releaseClient(client: Client): void {
    if (client.dead) return;
    client.dead = true;
    for (const ep of [...client.endpoints.values()]) this.closeRec(ep);
    for (const reg of client.regions.values()) reg.release();
    client.regions.clear();
    client.registeredBytes = 0;
    if (this.clients.get(client.domid) === client) this.clients.delete(client.domid);
    this.publishCounts();
  }

  /**
   * The domain itself is gone (not just its device): what it could reach is released. A
   * frontend that merely reconnects keeps its slots and channels, which are its own.
   */
  forgetDomain(domid: DomId): void {
    this.devices.delete(domid);
    this.memory.forgetDomain(domid);
    this.qos.forget(domid);
    this.laneGroups.delete(domid);
    // The NIC keeps a domain's cap debt past its last endpoint (nic/qos.ts); not past the domain.
    try {
      this.cfg.nic.call({ op: "forget_group", group: domid });
    } catch {
      // A NIC that stopped keeps nothing.
    }
  }
}

/** The key of a pair of endpoints in `pairs` (the lower id first). */
function pairKey(a: EndpointRec, b: EndpointRec): string {
  return a.id < b.id ? `${a.id}:${b.id}` : `${b.id}:${a.id}`;
}

/**
 * The NIC contexts extra endpoints (a domain's second and later) leave for first endpoints of
 * domains yet to start: a quarter of the NIC, 8 of the default 32.
 */
export function firstEndpointReserve(maxEndpoints: number): number {
  return Math.max(1, Math.floor(maxEndpoints / 4));
}

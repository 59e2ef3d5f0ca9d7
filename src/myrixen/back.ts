/**
 * myrback: the driver domain's half of the myri split driver. It owns the NIC's control path
 * for everyone on this host: guests reach it over a xenbus control ring (MyriBack, below);
 * native processes over synchronous calls (driver-domain.ts). Both go through one registry
 * (MyriCore) so the rules — ownership, quotas, keys, one channel per endpoint pair, clean-up
 * when an owner dies — are the same whoever asks.
 *
 * It never sees a message: after OPEN/REGISTER/CONNECT, guests talk to their NIC window and
 * their co-resident channels directly. Every request it serves is counted in a stats page
 * the host reads (Stat), which is how tests prove the data path bypasses it.
 */

import type {
  LookupReply,
  MemoryRun,
  NicControlRequest,
  NicInfo,
  OpenEndpointReply,
  RegisterRegionReply,
} from "../nic/control.js";
import {
  Access,
  ANY_ENDPOINT,
  EQ_ENTRIES,
  INTR_BYTES,
  RECV_BYTES,
  SQ_ENTRIES,
  W_EQ_CONS,
  W_EQ_PROD,
  W_RQ_CONS,
  W_RQ_PROD,
  W_SQ_CONS,
  W_SQ_PROD,
  WINDOW_BYTES,
} from "../nic/window.js";
import { type DomId, PAGE_SIZE, XenbusState } from "../xen/abi.js";
import type { EventChannelPort } from "../xen/event-channel.js";
import { GNTTAB_NR_RESERVED_ENTRIES } from "../xen/grant-table.js";
import type { GrantMapping, Guest } from "../xen/guest/guest.js";
import type { PageRun } from "../xen/memory.js";
import { BackRing } from "../xen/ring.js";
import type { SyncCallClient } from "../xen/sync-call.js";
import { BackendDeviceWatcher, XenbusBackend } from "../xen/xenbus.js";
import { CHANNEL_BYTES, closeChannelLanes, LANE_BYTES, LANE_HEADER_BYTES } from "./channel-abi.js";
import { DRIVER_EVENT_CONNECT, DRIVER_EVENT_DISCONNECT } from "./driver-abi.js";
import {
  CONNECT_FLAG_CHANNEL,
  MAX_INDIRECT_PAGES,
  MAX_REGION_PAGES,
  MEMORY_TARGET_KEY,
  MYRI_DEVICE_TYPE,
  MYRI_PROTOCOL,
  MyriError,
  type MyriInfo,
  MyriStatus,
  type MyriStatusName,
  OP_COUNT,
  Op,
  REFS_PER_PAGE,
  REQ_ARG,
  REQ_BYTES,
  REQ_ENDPOINT,
  REQ_ID,
  REQ_INDIRECT,
  REQ_NR_INDIRECT,
  REQ_OP,
  RSP_BYTES,
  RSP_ID,
  RSP_MSG_LEN,
  RSP_NR_REFS,
  RSP_OP,
  RSP_PAGE_REF,
  RSP_STATUS,
  RSP_VAL,
  stripCode,
  XsKey,
} from "./protocol.js";
import { QosPolicies } from "./qos-policy.js";

// ---- stats page -------------------------------------------------------------------------------

/** Int32 word indexes of the stats page the host hands the driver domain (host.backendStats()). */
export const Stat = {
  /** Requests served, ring and native; words 1..7 are per op (index = Op code). */
  requests: 0,
  errors: 8,
  ringRequests: 9,
  nativeRequests: 10,
  frontendsConnected: 11,
  frontendsDisconnected: 12,
  brokenRings: 13,
  endpoints: 14,
  channels: 15,
  regions: 16,
  deferredGrants: 17,
  nativeClients: 18,
  /** dom0's grant entries in use (granted and not yet ended). */
  grantsInUse: 19,
  /** dom0's shared pages (windows, interrupt pages, channels, response pages). */
  sharedPages: 20,
  /** Connects refused for a bad endpoint key. */
  badKeys: 21,
} as const;
export const STATS_BYTES = 32 * 4;

export interface BackendStats {
  requests: number;
  byOp: Record<keyof typeof Op, number>;
  errors: number;
  ringRequests: number;
  nativeRequests: number;
  frontendsConnected: number;
  frontendsDisconnected: number;
  brokenRings: number;
  /** Open now. */
  endpoints: number;
  channels: number;
  regions: number;
  /** dom0 grants whose end waits for the peer to unmap them. */
  deferredGrants: number;
  nativeClients: number;
  grantsInUse: number;
  sharedPages: number;
  badKeys: number;
}

export function readBackendStats(buffer: SharedArrayBuffer): BackendStats {
  const w = new Int32Array(buffer);
  const get = (i: number) => Atomics.load(w, i) >>> 0;
  const byOp = {} as Record<keyof typeof Op, number>;
  for (const [name, code] of Object.entries(Op)) byOp[name as keyof typeof Op] = get(code);
  return {
    requests: get(Stat.requests),
    byOp,
    errors: get(Stat.errors),
    ringRequests: get(Stat.ringRequests),
    nativeRequests: get(Stat.nativeRequests),
    frontendsConnected: get(Stat.frontendsConnected),
    frontendsDisconnected: get(Stat.frontendsDisconnected),
    brokenRings: get(Stat.brokenRings),
    endpoints: get(Stat.endpoints),
    channels: get(Stat.channels),
    regions: get(Stat.regions),
    deferredGrants: get(Stat.deferredGrants),
    nativeClients: get(Stat.nativeClients),
    grantsInUse: get(Stat.grantsInUse),
    sharedPages: get(Stat.sharedPages),
    badKeys: get(Stat.badKeys),
  };
}

// ---- dom0 grants and shared memory ------------------------------------------------------------

/**
 * dom0's grants to guests. A grant still mapped by its peer cannot be revoked (Xen's rule, and
 * the lesson of the CVE-2022-23036 family): such ends are deferred and retried until the
 * peer unmaps (or dies, which unmaps everything it held). `whenUnused` waits the same way
 * without ending the grants: for memory that is reused for the same domains.
 */
export class GrantKeeper {
  private pending: { refs: number[]; end: boolean; done?: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly guest: Guest,
    private readonly stats: Int32Array,
  ) {}

  /** Grants `count` frames from `pfn` to `domid`; all or nothing. */
  grantRun(domid: DomId, pfn: number, count: number, readonly: boolean): number[] {
    const refs: number[] = [];
    try {
      for (let i = 0; i < count; i++) refs.push(this.guest.grants.grantAccess(domid, pfn + i, { readonly }));
    } catch (e) {
      for (const r of refs) this.guest.grants.endAccess(r);
      throw new MyriError(
        "MX_NO_RESOURCES",
        `the driver domain ran out of grant entries (${(e as Error).message}); close endpoints or channels`,
      );
    }
    this.publish();
    return refs;
  }

  /** Ends `refs`; `done` runs once every one of them has ended (now, or after the peer unmapped). */
  end(refs: readonly number[], done?: () => void): void {
    this.track(refs, true, done);
  }

  /** Runs `done` once no peer maps any of `refs` (now, or later); the grants stay. */
  whenUnused(refs: readonly number[], done: () => void): void {
    this.track(refs, false, done);
  }

  private track(refs: readonly number[], end: boolean, done?: () => void): void {
    const left = refs.filter((r) => !this.settle(r, end));
    if (left.length === 0) {
      this.publish();
      done?.();
      return;
    }
    this.pending.push({ refs: left, end, done });
    this.publish();
    this.timer ??= setInterval(() => this.retry(), 100);
  }

  retry(): void {
    const still: { refs: number[]; end: boolean; done?: () => void }[] = [];
    for (const p of this.pending) {
      const left = p.refs.filter((r) => !this.settle(r, p.end));
      if (left.length === 0) p.done?.();
      else still.push({ refs: left, end: p.end, done: p.done });
    }
    this.pending = still;
    this.publish();
    if (still.length === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Whether `ref` is free of mappings (and, if `end`, ended now). */
  private settle(ref: number, end: boolean): boolean {
    if (this.guest.grants.isInUse(ref)) return false;
    if (!end) return true;
    try {
      this.guest.grants.endAccess(ref);
    } catch {
      // Not in use any more (already ended): nothing left to revoke.
    }
    return true;
  }

  private publish(): void {
    let n = 0;
    for (const p of this.pending) if (p.end) n += p.refs.length;
    Atomics.store(this.stats, Stat.deferredGrants, n);
    const t = this.guest.grants.table;
    Atomics.store(this.stats, Stat.grantsInUse, t.size - GNTTAB_NR_RESERVED_ENTRIES - t.freeCount);
  }
}

/**
 * The memory dom0 shares with guests, and the rule it keeps: memory a guest could once reach
 * is never given to another domain while that guest lives (a SharedArrayBuffer handed to a
 * thread can never be taken back; see xen/hypervisor.ts, Segment). So:
 *  - an endpoint's window and interrupt page are a *slot* of its owner domain, granted to it
 *    once and reused only for that domain's later endpoints (at most its endpoint quota);
 *    a co-resident peer that connects is granted the interrupt page too (to wake the owner),
 *    and keeps that grant while the slot lives — an interrupt page holds no data, only a
 *    wake counter and a sleeping flag;
 *  - a channel's buffer belongs to its pair of domains, granted to both once and reused only
 *    for a later channel of the same pair, once neither maps it any more (at most
 *    CHANNELS_PER_PAIR per pair: beyond that the pair talks through the NIC);
 *  - all of it is released (the hypervisor forgets its frames) when a member domain goes.
 * Response pages are mapped read-only (copies through the hypervisor, re-checked on every
 * read), so one may serve anyone once its grant has ended.
 */
export interface WindowSlot {
  /** Nonzero, unique in this backend: the frontend may keep its mappings of a slot it knows. */
  id: number;
  window: PageRun;
  intr: PageRun;
  /** Grants to the owner: the window's pages, then the interrupt page's. */
  refs: number[];
  /** Grants of the interrupt page to co-resident peers, by domain. */
  peerRefs: Map<DomId, number[]>;
}

export interface ChannelMem {
  run: PageRun;
  /** "a:b", the two member domains (a ≤ b). */
  pair: string;
  /** Grants of the buffer to each member domain (one entry when both ends are one domain). */
  refs: Map<DomId, number[]>;
}

/** Channel buffers one pair of domains may hold at once (in use or waiting to be unmapped). */
export const CHANNELS_PER_PAIR = 16;

const WINDOW_PAGES = WINDOW_BYTES / PAGE_SIZE;
const INTR_PAGES = INTR_BYTES / PAGE_SIZE;
const CHANNEL_PAGES = CHANNEL_BYTES / PAGE_SIZE;

export function pairKey(a: DomId, b: DomId): string {
  return a <= b ? `${a}:${b}` : `${b}:${a}`;
}

export class SharedMemory {
  /** Free window slots per domain. */
  private readonly slots = new Map<DomId, WindowSlot[]>();
  /** Per domain pair: free channel buffers, and how many exist. */
  private readonly channels = new Map<string, { free: ChannelMem[]; count: number }>();
  /** Response pages whose grant has ended. */
  private readonly rspFree: PageRun[] = [];
  private nextSlotId = 1;

  constructor(
    private readonly guest: Guest,
    private readonly keeper: GrantKeeper,
    private readonly stats: Int32Array,
  ) {}

  private alloc(pages: number, audience: DomId[]): PageRun {
    try {
      return this.guest.allocShared(pages, { audience });
    } catch (e) {
      throw new MyriError(
        "MX_NO_RESOURCES",
        `the driver domain cannot share more pages (${(e as Error).message}); close endpoints or channels`,
      );
    }
  }

  private release(run: PageRun): void {
    try {
      this.guest.releaseShared(run);
    } catch {
      // already gone with its owner
    }
  }

  /** A window and interrupt page for an endpoint of `domid`: one it had before, or new ones. */
  takeSlot(domid: DomId): WindowSlot {
    const free = this.slots.get(domid);
    const reused = free?.pop();
    if (reused) return reused;
    const window = this.alloc(WINDOW_PAGES, [domid]);
    let intr: PageRun;
    try {
      intr = this.alloc(INTR_PAGES, [domid]);
    } catch (e) {
      this.release(window);
      throw e;
    }
    let refs: number[];
    try {
      refs = [...this.keeper.grantRun(domid, window.pfn, window.count, false)];
      try {
        refs.push(...this.keeper.grantRun(domid, intr.pfn, intr.count, false));
      } catch (e) {
        this.keeper.end(refs);
        throw e;
      }
    } catch (e) {
      this.release(window);
      this.release(intr);
      throw e;
    }
    this.publish();
    const id = this.nextSlotId;
    this.nextSlotId = (this.nextSlotId % 0x7fffffff) + 1;
    return { id, window, intr, refs, peerRefs: new Map() };
  }

  /** The endpoint closed: the slot waits for the same domain's next endpoint. */
  putSlot(domid: DomId, slot: WindowSlot): void {
    let free = this.slots.get(domid);
    if (!free) this.slots.set(domid, (free = []));
    free.push(slot);
  }

  /** The interrupt page of `slot`, granted to co-resident peer `peer` (once per peer). */
  intrFor(slot: WindowSlot, peer: DomId): number[] {
    let refs = slot.peerRefs.get(peer);
    if (!refs) {
      this.guest.shareWith(slot.intr, peer);
      refs = this.keeper.grantRun(peer, slot.intr.pfn, slot.intr.count, false);
      slot.peerRefs.set(peer, refs);
    }
    return refs;
  }

  /** A channel buffer for domains a and b, or undefined when the pair holds CHANNELS_PER_PAIR already. */
  takeChannel(a: DomId, b: DomId): ChannelMem | undefined {
    const pair = pairKey(a, b);
    let p = this.channels.get(pair);
    if (!p) this.channels.set(pair, (p = { free: [], count: 0 }));
    const reused = p.free.pop();
    if (reused) {
      reused.run.bytes.fill(0);
      return reused;
    }
    if (p.count >= CHANNELS_PER_PAIR) return undefined;
    const run = this.alloc(CHANNEL_PAGES, a === b ? [a] : [a, b]);
    p.count++;
    this.publish();
    return { run, pair, refs: new Map() };
  }

  /** The buffer granted to member `domid` (once per member). */
  channelRefs(mem: ChannelMem, domid: DomId): number[] {
    let refs = mem.refs.get(domid);
    if (!refs) {
      refs = this.keeper.grantRun(domid, mem.run.pfn, mem.run.count, false);
      mem.refs.set(domid, refs);
    }
    return refs;
  }

  /** The channel closed: once neither member maps the buffer, it serves the pair's next channel. */
  putChannel(mem: ChannelMem): void {
    this.keeper.whenUnused([...mem.refs.values()].flat(), () => {
      const p = this.channels.get(mem.pair);
      if (p) p.free.push(mem);
      else this.dropChannel(mem);
    });
  }

  private dropChannel(mem: ChannelMem): void {
    this.keeper.end([...mem.refs.values()].flat());
    this.release(mem.run);
    this.publish();
  }

  /**
   * A domain is gone (its mappings went with it): everything it could reach is released —
   * its slots, and every channel buffer of a pair it belonged to. Peers that still map one
   * keep it (their grants end when they unmap); no one else will ever get it.
   */
  forgetDomain(domid: DomId): void {
    for (const slot of this.slots.get(domid) ?? []) {
      this.keeper.end([...slot.refs, ...[...slot.peerRefs.values()].flat()]);
      this.release(slot.window);
      this.release(slot.intr);
    }
    this.slots.delete(domid);
    for (const [pair, p] of this.channels) {
      const [a, b] = pair.split(":").map(Number);
      if (a !== domid && b !== domid) continue;
      this.channels.delete(pair);
      for (const mem of p.free) this.dropChannel(mem);
    }
    this.publish();
  }

  takeResponsePage(): PageRun {
    const run = this.rspFree.pop();
    if (run) {
      run.bytes.fill(0);
      return run;
    }
    return this.alloc(1, []);
  }

  putResponsePage(run: PageRun): void {
    this.rspFree.push(run);
  }

  private publish(): void {
    const c = this.guest.counters();
    Atomics.store(this.stats, Stat.sharedPages, c.mem_shared_alloc - c.mem_shared_release);
  }
}

// ---- inspection ---------------------------------------------------------------------------------

/** A co-resident channel as one of its members sees it (bytes are the lanes' free-running u32 positions). */
export interface BackendChannelInfo {
  id: number;
  peerEndpoint: number;
  peerDomid: DomId;
  /** Bytes of records this endpoint wrote into its lane (u32, wraps): headers of 48 bytes included. */
  bytesOut: number;
  /** Bytes of records the peer wrote towards this endpoint (u32, wraps). */
  bytesIn: number;
  /** Bytes this endpoint wrote that the peer has not consumed yet. */
  backlogOut: number;
  /** Bytes the peer wrote that this endpoint has not consumed yet. */
  backlogIn: number;
}

export interface BackendEndpointInfo {
  endpointId: number;
  session: number;
  domid: DomId;
  kind: ClientKind;
  owner: string;
  regions: number;
  registeredBytes: number;
  /** Co-resident endpoints connected through myrback (peers on other hosts connect through the NICs). */
  peers: { endpointId: number; domid: DomId }[];
  channels: BackendChannelInfo[];
  /** Read from the endpoint's window: descriptors the NIC has not taken, events the owner has not read, receive-area bytes in use. */
  queues: {
    sendQueue: number;
    sendQueueSize: number;
    eventQueue: number;
    eventQueueSize: number;
    recvBytes: number;
    recvBytesSize: number;
  };
}

/**
 * A lane's progress, read from its header as channel.ts lays it out (lane s at
 * s × (LANE_HEADER_BYTES + LANE_BYTES); its tail, the bytes written, in word 0; its head, the
 * bytes consumed, in word 32). test/inspect.test.ts checks this against LaneWriter/LaneReader.
 */
export function laneProgress(channel: SharedArrayBuffer, side: 0 | 1): { written: number; backlog: number } {
  const ctl = new Int32Array(channel, side * (LANE_HEADER_BYTES + LANE_BYTES), 64);
  const tail = Atomics.load(ctl, 0) >>> 0;
  const head = Atomics.load(ctl, 32) >>> 0;
  return { written: tail, backlog: (tail - head) >>> 0 };
}

// ---- the registry -------------------------------------------------------------------------------

export type ClientKind = "guest" | "native";

/** A domain (guest) or process (native) that owns endpoints. */
export class Client {
  readonly endpoints = new Map<number, EndpointRec>();
  readonly regions = new Map<number, RegionRec>();
  registeredBytes = 0;
  dead = false;

  constructor(
    readonly domid: DomId,
    readonly kind: ClientKind,
    readonly label: string,
    public quotaBytes: number,
  ) {}
}

export interface EndpointRec {
  id: number;
  session: number;
  owner: Client;
  window: SharedArrayBuffer;
  intr: SharedArrayBuffer;
  /** Guest-owned endpoints: the window and interrupt page, a slot of the owner domain's (SharedMemory). */
  shared?: WindowSlot;
  channels: Set<ChannelRec>;
  /** Endpoints this one connected to or that connected to it (told when it goes away). */
  peers: Set<EndpointRec>;
  closed: boolean;
}

export interface RegionRec {
  id: number;
  endpointId: number;
  bytes: number;
  /** Gives back what the registration holds (unpins the guest's pages). */
  release: () => void;
}

export interface ChannelRec {
  id: number;
  /** members[s] writes lane s. */
  members: [EndpointRec, EndpointRec];
  buffer: SharedArrayBuffer;
  /** Guest channels: the buffer as dom0 frames of the members' pair (SharedMemory). */
  mem?: ChannelMem;
  closed: boolean;
}

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
  private readonly channels = new Map<number, ChannelRec>();
  private readonly pairs = new Map<string, ChannelRec>();
  private nextChannelId = 1;
  /** Each domain's weight and caps, from its device's `qos` node (qos-policy.ts). */
  readonly qos = new QosPolicies({
    endpointsOf: (domid) => this.clients.get(domid)?.endpoints.keys() ?? [],
    setQos: (endpointId, settings) => this.nic({ op: "set_qos", endpointId, settings }, "MX_BAD_REQUEST"),
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
    Atomics.store(s, Stat.channels, this.channels.size);
    let regions = 0;
    for (const c of this.clients.values()) regions += c.regions.size;
    Atomics.store(s, Stat.regions, regions);
  }

  // -- endpoints --

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
        window: slot?.window.bytes.buffer as SharedArrayBuffer | undefined,
        intr: slot?.intr.bytes.buffer as SharedArrayBuffer | undefined,
      },
      "MX_BAD_ENDPOINT_ID",
    );
    const ep: EndpointRec = {
      id: r.endpointId,
      session: r.session,
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
      this.closeChannel(ch);
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
    const pair = ep.id < peer.id ? `${ep.id}:${peer.id}` : `${peer.id}:${ep.id}`;
    let ch = this.pairs.get(pair);
    if (!ch) {
      let mem: ChannelMem | undefined;
      let buffer: SharedArrayBuffer;
      if (client.kind === "guest") {
        mem = this.memory.takeChannel(client.domid, peer.owner.domid);
        // The pair already holds its share of channel buffers: it talks through the NIC.
        if (!mem) return result;
        buffer = mem.run.bytes.buffer as SharedArrayBuffer;
      } else buffer = new SharedArrayBuffer(CHANNEL_BYTES);
      ch = { id: this.nextChannelId++, members: [ep, peer], buffer, mem, closed: false };
      if (this.nextChannelId > 0x7fffffff) this.nextChannelId = 1;
      this.pairs.set(pair, ch);
      this.channels.set(ch.id, ch);
      ep.channels.add(ch);
      peer.channels.add(ch);
      this.publishCounts();
      try {
        this.nic<void>(
          {
            op: "deliver_event",
            endpointId: peer.id,
            cookie: DRIVER_EVENT_CONNECT,
            words: [ch.id, this.nicId, ep.id, ep.session],
          },
          "MX_CONNECTION_FAILED",
        );
      } catch (e) {
        this.closeChannel(ch);
        throw e;
      }
    }
    const side: 0 | 1 = ch.members[0] === ep ? 0 : 1;
    result.channel = { rec: ch, side, peer };
    return result;
  }

  acceptChannel(
    client: Client,
    endpointId: unknown,
    channelId: unknown,
  ): { rec: ChannelRec; side: 0 | 1; peer: EndpointRec } {
    const ep = this.own(client, endpointId);
    const ch = U32(channelId) ? this.channels.get(channelId) : undefined;
    if (!ch || ch.closed)
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
    return { rec: ch, side: side as 0 | 1, peer: ch.members[1 - side] };
  }

  /** Kills a channel: both lanes closed (readers and writers see it), both members told. */
  private closeChannel(ch: ChannelRec): void {
    if (ch.closed) return;
    ch.closed = true;
    closeChannelLanes(ch.buffer);
    const [a, b] = ch.members;
    for (const [me, other] of [
      [a, b],
      [b, a],
    ] as const) {
      me.channels.delete(ch);
      if (!me.closed) this.tellDisconnect(me, other, ch.id);
    }
    const key = a.id < b.id ? `${a.id}:${b.id}` : `${b.id}:${a.id}`;
    if (this.pairs.get(key) === ch) this.pairs.delete(key);
    this.channels.delete(ch.id);
    if (ch.mem) this.memory.putChannel(ch.mem);
    this.publishCounts();
  }

  private tellDisconnect(to: EndpointRec, gone: EndpointRec, channelId: number): void {
    try {
      this.nic<void>(
        {
          op: "deliver_event",
          endpointId: to.id,
          cookie: DRIVER_EVENT_DISCONNECT,
          words: [channelId >>> 0, this.nicId, gone.id, gone.session],
        },
        "MX_FAILURE",
      );
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
    const out: BackendEndpointInfo[] = [];
    for (const ep of this.endpoints.values()) {
      if (ep.closed) continue;
      let regions = 0;
      let registeredBytes = 0;
      for (const r of ep.owner.regions.values())
        if (r.endpointId === ep.id) {
          regions++;
          registeredBytes += r.bytes;
        }
      const w = new Int32Array(ep.window, 0, 128);
      const depth = (prod: number, cons: number) =>
        ((Atomics.load(w, prod) >>> 0) - (Atomics.load(w, cons) >>> 0)) >>> 0;
      const channels: BackendChannelInfo[] = [];
      for (const ch of ep.channels) {
        if (ch.closed) continue;
        const side = ch.members[0] === ep ? 0 : 1;
        const peer = ch.members[1 - side];
        const mine = laneProgress(ch.buffer, side);
        const theirs = laneProgress(ch.buffer, side === 0 ? 1 : 0);
        channels.push({
          id: ch.id,
          peerEndpoint: peer.id,
          peerDomid: peer.owner.domid,
          bytesOut: mine.written,
          bytesIn: theirs.written,
          backlogOut: mine.backlog,
          backlogIn: theirs.backlog,
        });
      }
      out.push({
        endpointId: ep.id,
        session: ep.session,
        domid: ep.owner.domid,
        kind: ep.owner.kind,
        owner: ep.owner.label,
        regions,
        registeredBytes,
        peers: [...ep.peers]
          .filter((p) => !p.closed)
          .map((p) => ({ endpointId: p.id, domid: p.owner.domid })),
        channels,
        queues: {
          sendQueue: depth(W_SQ_PROD, W_SQ_CONS),
          sendQueueSize: SQ_ENTRIES,
          eventQueue: depth(W_EQ_PROD, W_EQ_CONS),
          eventQueueSize: EQ_ENTRIES,
          recvBytes: depth(W_RQ_PROD, W_RQ_CONS),
          recvBytesSize: RECV_BYTES,
        },
      });
    }
    return out.sort((a, b) => a.endpointId - b.endpointId);
  }

  info(client: Client): MyriInfo {
    const nic = this.nic<NicInfo>({ op: "info" }, "MX_NIC_DEAD");
    return {
      nicId: nic.nicId,
      maxEndpoints: nic.maxEndpoints,
      nicOpenEndpoints: nic.openEndpoints.length,
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
    this.memory.forgetDomain(domid);
    this.qos.forget(domid);
  }
}

// ---- the guest transport: xenbus + control ring -------------------------------------------------

type FrontState = "advertised" | "connecting" | "connected" | "closed";

interface Frontend {
  key: string;
  domid: DomId;
  devid: number;
  xb: XenbusBackend;
  state: FrontState;
  client?: Client;
  /** Stops following the device's `qos` node (qos-policy.ts). */
  unwatchQos?: () => Promise<void>;
  mapping?: GrantMapping;
  ring?: BackRing;
  port?: EventChannelPort;
  portNo?: number;
  rspRun?: PageRun;
  rspRef?: number;
  rspView?: DataView;
  unwatch?: () => Promise<void>;
  /** The frontend closed cleanly: it may re-initialise the device (Closed → Initialising). */
  reopenable?: boolean;
  /** The teardown in progress or done. */
  closing?: Promise<void>;
}

const encoder = new TextEncoder();

/** Serves every guest's myri device: the xenbus backend handshake, then its control ring. */
export class MyriBack {
  private readonly fronts = new Map<string, Frontend>();
  private stopped = false;
  private readonly watcher: BackendDeviceWatcher<Frontend>;

  constructor(
    private readonly guest: Guest,
    private readonly core: MyriCore,
  ) {
    this.watcher = new BackendDeviceWatcher<Frontend>(guest.xenstore, MYRI_DEVICE_TYPE, {
      devices: () => this.fronts.values(),
      add: (domid, devid, key) => this.startDevice(domid, devid, key),
      removed: async (f, why) => {
        await this.teardown(f, why);
        await this.forget(f);
        this.core.forgetDomain(f.domid);
      },
      domainGone: async (f, why) => {
        await this.teardown(f, why);
        this.core.forgetDomain(f.domid);
      },
      log: (m) => this.log(m),
    });
  }

  private get stats(): Int32Array {
    return this.core.cfg.stats;
  }

  private log(msg: string): void {
    this.core.cfg.log(msg);
  }

  /** Starts watching for frontends (the toolstack's device directories). */
  async start(): Promise<void> {
    await this.watcher.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher.stop();
    for (const f of [...this.fronts.values()]) {
      await this.teardown(f, "the driver domain is stopping");
      await this.forget(f);
    }
  }

  /** Frontends currently connected (for diagnostics). */
  connected(): { domid: DomId; devid: number; state: string }[] {
    return [...this.fronts.values()].map((f) => ({ domid: f.domid, devid: f.devid, state: f.state }));
  }

  private async startDevice(domid: DomId, devid: number, key: string): Promise<void> {
    const xb = new XenbusBackend(this.guest.xenstore, MYRI_DEVICE_TYPE, domid, devid);
    const f: Frontend = { key, domid, devid, xb, state: "advertised" };
    this.fronts.set(key, f);
    try {
      const target = await this.guest.xenstore.tryRead(`/local/domain/${domid}/${MEMORY_TARGET_KEY}`);
      const quota =
        target !== undefined && /^\d+$/.test(target)
          ? Math.min(Number(target) * 1024, this.core.cfg.registeredBytesPerDomain)
          : this.core.cfg.registeredBytesPerDomain;
      await xb.advertise({
        [XsKey.protocol]: MYRI_PROTOCOL,
        [XsKey.nicId]: this.core.nicId,
        [XsKey.maxEndpoints]: this.core.cfg.endpointsPerDomain,
        [XsKey.maxRegisteredBytes]: quota,
        [XsKey.maxRegions]: this.core.cfg.regionsPerDomain,
        [XsKey.maxIndirectPages]: MAX_INDIRECT_PAGES,
        [XsKey.maxRegionPages]: MAX_REGION_PAGES,
      });
      let seen = false;
      f.unwatch = await xb.onFrontendState((s) => {
        if (f.state === "closed") {
          // Like Xen's backends: a frontend that closed cleanly may start over.
          if (s === XenbusState.Initialising && f.reopenable) void this.reopen(f);
          return;
        }
        if (s === XenbusState.Initialised || s === XenbusState.Connected) {
          seen = true;
          if (f.state === "advertised") void this.connectFrontend(f, quota);
        } else if (s === XenbusState.Closing || s === XenbusState.Closed) {
          f.reopenable = true;
          void this.teardown(f, `the frontend went ${s === XenbusState.Closing ? "Closing" : "Closed"}`);
        } else if (s === XenbusState.Unknown && (seen || f.state !== "advertised")) {
          void this.teardown(f, "the frontend directory vanished (its domain is gone)");
        } else if (s !== XenbusState.Unknown) seen = true;
      });
    } catch (e) {
      await this.teardown(f, `handshake failed: ${(e as Error).message}`);
    }
  }

  /** The frontend re-initialised its device after a clean close: serve it as a new one. */
  private async reopen(f: Frontend): Promise<void> {
    if (this.stopped || this.fronts.get(f.key) !== f || !f.reopenable) return;
    f.reopenable = false;
    await f.closing;
    await this.forget(f);
    this.log(`domain ${f.domid} myri/${f.devid} re-initialises its device`);
    await this.startDevice(f.domid, f.devid, f.key);
  }

  /** Stops following a frontend whose session is over. */
  private async forget(f: Frontend): Promise<void> {
    if (this.fronts.get(f.key) === f) this.fronts.delete(f.key);
    const unwatch = f.unwatch;
    f.unwatch = undefined;
    await f.unwatchQos?.().catch(() => undefined);
    f.unwatchQos = undefined;
    if (unwatch) await unwatch().catch(() => undefined);
  }

  private async connectFrontend(f: Frontend, quota: number): Promise<void> {
    f.state = "connecting";
    try {
      const keys = await f.xb.gather([XsKey.ringRef, XsKey.eventChannel]);
      const ref = keys[XsKey.ringRef];
      const evt = keys[XsKey.eventChannel];
      if (!/^\d+$/.test(ref) || !/^\d+$/.test(evt))
        throw new Error(
          `ring-ref ${JSON.stringify(ref)} and event-channel ${JSON.stringify(evt)} must be numbers`,
        );
      const proto = await this.guest.xenstore.tryRead(
        `${(await f.xb.readFrontend()).path}/${XsKey.protocol}`,
      );
      if (proto !== undefined && proto !== MYRI_PROTOCOL)
        throw new Error(`the frontend speaks ${JSON.stringify(proto)}, this backend ${MYRI_PROTOCOL}`);
      if (f.state !== "connecting") return;
      const m = this.guest.grants.map(f.domid, Number(ref));
      if (m.status !== 0) throw new Error(`cannot map ring-ref ${ref}: ${(m as { error: string }).error}`);
      f.mapping = (m as { mapping: GrantMapping }).mapping;
      f.ring = new BackRing(f.mapping.bytes, REQ_BYTES, RSP_BYTES);
      f.portNo = this.guest.evtchn.bindInterdomain(f.domid, Number(evt));
      f.port = this.guest.evtchn.port(f.portNo);
      f.port.mask();
      const rsp = this.core.memory.takeResponsePage();
      f.rspRun = rsp;
      // Read-only: the guest gets copies through the hypervisor, never this page itself.
      f.rspRef = this.guest.grants.grantAccess(f.domid, rsp.pfn, { readonly: true });
      f.rspView = new DataView(rsp.bytes.buffer, rsp.bytes.byteOffset, PAGE_SIZE);
      f.client = this.core.client(f.domid, "guest", `domain ${f.domid}`, quota);
      f.unwatchQos ??= await this.core.qos.watch(this.guest.xenstore, f.domid, f.xb.path);
      if (f.state !== "connecting") return;
      await f.xb.switchState(XenbusState.Connected);
      f.state = "connected";
      Atomics.add(this.stats, Stat.frontendsConnected, 1);
      this.log(`domain ${f.domid} myri/${f.devid} connected (ring-ref ${ref}, event channel ${evt})`);
      void this.serve(f);
    } catch (e) {
      await this.teardown(f, `connecting failed: ${(e as Error).message}`);
    }
  }

  /** The control ring's loop: copy, validate, answer; sleep on the event channel in the event loop. */
  private async serve(f: Frontend): Promise<void> {
    const ring = f.ring!;
    const port = f.port!;
    const req = new Uint8Array(REQ_BYTES);
    const r = new DataView(req.buffer);
    while (f.state === "connected") {
      let n = 0;
      while (f.state === "connected" && n < ring.size && ring.copyRequest(req)) {
        this.answer(f, r);
        n++;
      }
      if (f.state !== "connected") return;
      if (ring.pushResponses()) port.notify();
      if (ring.broken) {
        Atomics.add(this.stats, Stat.brokenRings, 1);
        await this.teardown(f, `the control ring is broken: ${ring.broken}`);
        return;
      }
      // A frontend that keeps the ring full must not starve the others: yield between batches.
      if (n === ring.size) {
        await new Promise((res) => setImmediate(res));
        continue;
      }
      if (ring.finalCheckForRequests()) continue;
      if (ring.broken) continue;
      const w = await port.waitAsync();
      if (w === "unbound" && f.state === "connected") {
        await this.teardown(f, "the frontend closed its event channel (domain gone)");
        return;
      }
    }
  }

  /** Serves one copied request and writes its response. */
  private answer(f: Frontend, r: DataView): void {
    const ring = f.ring!;
    const id = r.getUint32(REQ_ID, true);
    const op = r.getUint16(REQ_OP, true);
    const off = ring.nextResponse();
    const v = ring.view;
    ring.bytes.fill(0, off, off + RSP_BYTES);
    v.setUint32(off + RSP_ID, id, true);
    v.setUint16(off + RSP_OP, op, true);
    v.setUint32(off + RSP_PAGE_REF, f.rspRef!, true);
    const vals = new Uint32Array(8);
    let ok = true;
    try {
      const nrRefs = this.execute(f, op, r, vals);
      v.setUint32(off + RSP_NR_REFS, nrRefs, true);
      for (let i = 0; i < 8; i++) v.setUint32(off + RSP_VAL + 4 * i, vals[i], true);
    } catch (e) {
      ok = false;
      const code: MyriStatusName = e instanceof MyriError ? e.code : "MX_FAILURE";
      if (!(e instanceof MyriError))
        this.log(`request ${op} of domain ${f.domid} hit a backend bug: ${(e as Error).stack}`);
      const msg = stripCode(String((e as Error)?.message ?? e));
      const bytes = encoder.encode(msg).subarray(0, PAGE_SIZE);
      f.rspRun!.bytes.set(bytes, 0);
      v.setUint16(off + RSP_STATUS, MyriStatus[code], true);
      v.setUint32(off + RSP_MSG_LEN, bytes.length, true);
      v.setUint32(off + RSP_NR_REFS, 0, true);
    }
    this.core.count(op, ok, "ring");
  }

  /** Writes refs onto the response page; returns how many. */
  private putRefs(f: Frontend, lists: readonly (readonly number[])[]): number {
    let n = 0;
    for (const list of lists) for (const ref of list) f.rspView!.setUint32(4 * n++, ref, true);
    return n;
  }

  private execute(f: Frontend, op: number, r: DataView, vals: Uint32Array): number {
    const core = this.core;
    const client = f.client!;
    const endpoint = r.getUint32(REQ_ENDPOINT, true);
    const arg = (i: number) => r.getUint32(REQ_ARG + 4 * i, true);
    switch (op) {
      case Op.OPEN_ENDPOINT: {
        // Quota and id checks first, so a refused open costs no memory.
        core.checkOpen(client, endpoint, arg(0));
        const slot = core.memory.takeSlot(f.domid);
        let ep: EndpointRec;
        try {
          ep = core.openEndpointWith(client, endpoint, arg(0), slot);
        } catch (e) {
          core.memory.putSlot(f.domid, slot);
          throw e;
        }
        vals[0] = ep.id;
        vals[1] = ep.session;
        vals[2] = slot.window.count;
        vals[3] = slot.intr.count;
        vals[4] = slot.id;
        return this.putRefs(f, [slot.refs]);
      }
      case Op.CLOSE_ENDPOINT:
        core.closeEndpoint(client, endpoint);
        return 0;
      case Op.REGISTER:
        return this.register(f, r, vals);
      case Op.DEREGISTER:
        core.deregisterRegion(client, endpoint, arg(0));
        return 0;
      case Op.CONNECT: {
        const c = core.connect(client, endpoint, arg(0), arg(1), arg(2));
        vals[0] = c.peerNic;
        vals[1] = c.peerEndpoint;
        vals[2] = c.peerSession;
        if (!c.channel) return 0;
        return this.channelReply(f, c.channel, vals);
      }
      case Op.ACCEPT_CHANNEL: {
        const a = core.acceptChannel(client, endpoint, arg(0));
        vals[0] = core.nicId;
        vals[1] = a.peer.id;
        vals[2] = a.peer.session;
        return this.channelReply(f, a, vals);
      }
      case Op.INFO: {
        const i = core.info(client);
        vals.set([
          i.nicId,
          i.maxEndpoints,
          i.nicOpenEndpoints,
          i.endpoints,
          i.endpointQuota,
          Math.ceil(i.registeredBytes / PAGE_SIZE),
          Math.floor(i.registeredBytesQuota / PAGE_SIZE),
          i.regions,
        ]);
        return 0;
      }
      default:
        throw new MyriError(
          "MX_BAD_REQUEST",
          `unknown operation ${op} (this backend speaks ${MYRI_PROTOCOL}, ops 1..${OP_COUNT})`,
        );
    }
  }

  /** The channel's pages and the peer's interrupt page, granted to this member once. */
  private channelReply(
    f: Frontend,
    c: { rec: ChannelRec; side: 0 | 1; peer: EndpointRec },
    vals: Uint32Array,
  ): number {
    const { rec, side, peer } = c;
    if (!rec.mem || !peer.shared)
      throw new MyriError("MX_CONNECTION_FAILED", "the peer's endpoint cannot be shared");
    const memory = this.core.memory;
    // Granted once per domain and kept: a later channel of the same pair reuses the grants.
    const ch = memory.channelRefs(rec.mem, f.domid);
    const pi =
      peer.owner.domid === f.domid
        ? peer.shared.refs.slice(-peer.shared.intr.count)
        : memory.intrFor(peer.shared, f.domid);
    vals[3] = CONNECT_FLAG_CHANNEL;
    vals[4] = rec.id;
    vals[5] = side;
    vals[6] = rec.mem.run.count;
    vals[7] = peer.shared.intr.count;
    return this.putRefs(f, [ch, pi]);
  }

  /** REGISTER: read the refs through the indirect pages, pin the pages in place, hand the NIC their runs. */
  private register(f: Frontend, r: DataView, vals: Uint32Array): number {
    const core = this.core;
    const client = f.client!;
    const endpoint = r.getUint32(REQ_ENDPOINT, true);
    const access = r.getUint32(REQ_ARG, true);
    const first = r.getUint32(REQ_ARG + 4, true);
    const length = r.getUint32(REQ_ARG + 8, true);
    const pages = r.getUint32(REQ_ARG + 12, true);
    const nInd = r.getUint16(REQ_NR_INDIRECT, true);
    if (pages < 1 || pages > MAX_REGION_PAGES)
      throw new MyriError(
        "MX_BAD_SEG_CNT",
        `a region covers 1..${MAX_REGION_PAGES} pages, not ${pages}; split it`,
      );
    if (nInd !== Math.ceil(pages / REFS_PER_PAGE))
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `${pages} pages need ${Math.ceil(pages / REFS_PER_PAGE)} indirect pages of ${REFS_PER_PAGE} refs, the request has ${nInd}`,
      );
    if (
      first >= PAGE_SIZE ||
      length < 1 ||
      first + length > pages * PAGE_SIZE ||
      first + length <= (pages - 1) * PAGE_SIZE
    )
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `offset ${first} and length ${length} do not fill ${pages} pages (offset < ${PAGE_SIZE}, last page used)`,
      );
    const known = Access.LocalRead | Access.LocalWrite | Access.RemoteRead | Access.RemoteWrite;
    if (access === 0 || (access & ~known) !== 0)
      throw new MyriError(
        "MX_BAD_REQUEST",
        `access ${access} must be a non-empty set of the Access bits (1|2|4|8)`,
      );
    core.checkRegister(client, endpoint, length);
    const indRefs: number[] = [];
    for (let i = 0; i < nInd; i++) indRefs.push(r.getUint32(REQ_INDIRECT + 4 * i, true));
    const grants = this.guest.grants;
    const ind = grants.pinForeign(f.domid, indRefs, false);
    if (ind.status !== 0)
      throw new MyriError(
        "MX_BAD_SEG_LIST",
        `cannot map the indirect pages: ${ind.error ?? `status ${ind.status}`}`,
      );
    // Copied out before use: the frontend may rewrite its pages at any time.
    const refs: number[] = new Array(pages);
    for (let i = 0; i < pages; i++) {
      const fr = ind.frames[Math.floor(i / REFS_PER_PAGE)];
      refs[i] = new DataView(fr.buffer, fr.offset, PAGE_SIZE).getUint32(4 * (i % REFS_PER_PAGE), true);
    }
    grants.unpinForeign(f.domid, indRefs, false);
    const write = (access & (Access.LocalWrite | Access.RemoteWrite)) !== 0;
    const pin = grants.pinForeign(f.domid, refs, write);
    if (pin.status !== 0)
      throw new MyriError(
        "MX_BAD_SEG_MEM",
        `cannot pin the region's pages${write ? " for writing" : ""}: ${pin.error ?? `status ${pin.status}`}`,
      );
    const release = () => grants.unpinForeign(f.domid, refs, write);
    const memory = pin.frames[0].buffer;
    const runs: MemoryRun[] = [];
    let left = length;
    for (let i = 0; i < pages; i++) {
      const fr = pin.frames[i];
      if (fr.buffer !== memory || fr.shareable) {
        release();
        throw new MyriError(
          "MX_BAD_SEG_MEM",
          `page ${i} of the region is not guest RAM; register memory from guest.memory (allocBuffer)`,
        );
      }
      const start = i === 0 ? first : 0;
      const len = Math.min(PAGE_SIZE - start, left);
      left -= len;
      const last = runs[runs.length - 1];
      if (last && last.offset + last.length === fr.offset + start) last.length += len;
      else runs.push({ offset: fr.offset + start, length: len });
    }
    let reply: RegisterRegionReply;
    try {
      reply = core.registerRegion(client, endpoint, memory, runs, access, length, release);
    } catch (e) {
      release();
      throw e;
    }
    vals[0] = reply.regionId;
    vals[1] = reply.key;
    vals[2] = reply.length;
    return 0;
  }

  /**
   * Disconnects a frontend and releases everything its domain held. Idempotent. The watch on
   * the frontend stays while it may re-initialise (it closed cleanly); otherwise it goes.
   */
  teardown(f: Frontend, reason: string): Promise<void> {
    if (f.state === "closed") return f.closing ?? Promise.resolve();
    const wasConnected = f.state === "connected";
    f.state = "closed";
    this.log(`domain ${f.domid} myri/${f.devid} disconnected: ${reason}`);
    if (wasConnected) Atomics.add(this.stats, Stat.frontendsDisconnected, 1);
    if (f.client) this.core.releaseClient(f.client);
    if (f.rspRef !== undefined) {
      const run = f.rspRun!;
      this.core.keeper.end([f.rspRef], () => this.core.memory.putResponsePage(run));
    }
    if (f.mapping) this.guest.grants.unmap(f.mapping);
    if (f.portNo !== undefined) {
      try {
        this.guest.evtchn.close(f.portNo);
      } catch {
        // already closed by the hypervisor when the domain died
      }
    }
    f.closing = (async () => {
      if (!f.reopenable) {
        const unwatch = f.unwatch;
        f.unwatch = undefined;
        if (unwatch) await unwatch().catch(() => undefined);
      }
      try {
        await f.xb.switchState(XenbusState.Closing);
        await f.xb.switchState(XenbusState.Closed);
      } catch {
        // the directory may be gone already
      }
    })();
    return f.closing;
  }
}

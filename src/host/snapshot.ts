/**
 * The snapshot: what one host looks like from its toolstack at one moment — its domains (with
 * their devices' xenbus states and the hypervisor's counters), its MX endpoints (owner, path,
 * co-resident peers, queue depths, registrations, the NIC's per-endpoint counters, the lanes
 * of their channels), its NIC (links, counters), myrback's and netback's counters, and the
 * jobs running on it. One format, produced on the host side (inspect.ts) and consumed by the
 * toolstack commands (`myrixen list`, `info`, `endpoints`, `top`) and the dashboard.
 *
 * Everything in it is read from counters and registries the components already keep; rates
 * are differences of two snapshots (`rates` below), never per-message hooks.
 *
 * This file has no Node imports (the dashboard's page reads the same JSON) except zod, which
 * checks a snapshot that arrived over the wire from an untrusted host.
 */
import * as z from "zod";

export const SNAPSHOT_VERSION = 1;
export { MYRIXEN_VERSION } from "./version.js";

export type EndpointPath = "bypass" | "native";
export type TrafficPath = "bypass" | "native" | "split";

export interface DeviceSnapshot {
  /** "myri" (the fast path's device) or "vif" (the split path's network interface). */
  type: string;
  devid: number;
  backend: number;
  /** xenbus state names as the front and back directories say now ("Connected", ...; "Unknown" if absent). */
  frontState: string;
  backState: string;
  mac?: string;
}

export interface VifSnapshot {
  connected: boolean;
  txFrames: number;
  rxFrames: number;
  txBytes: number;
  rxBytes: number;
  txRequests: number;
  rxRequests: number;
  grantCopies: number;
  notificationsSent: number;
  notificationsReceived: number;
  rxDropped: number;
  txErrors: number;
  rxErrors: number;
}

export interface DomainSnapshot {
  domid: number;
  name: string;
  kind: "driver" | "guest" | "native";
  /** booting, running, shutdown, crashed, destroyed. */
  state: string;
  memoryKiB: number;
  /** ArrayBuffers and typed arrays its isolate holds outside its heap, as the hypervisor last metered them (guests only). */
  buffersKiB?: number;
  /** Its JavaScript heap in use (garbage included), read with the buffers (guests only). */
  heapKiB?: number;
  /** The worker thread that is this domain's vCPU. */
  thread: number;
  /** Seconds since the host started it (undefined for a domain it did not start). */
  uptimeS?: number;
  /** When it stopped (ms since the epoch), for domains that are gone. */
  endedAt?: number;
  devices: DeviceSnapshot[];
  /** The hypervisor's counters for it (xen/counters.ts). */
  counters: Record<string, number>;
  /** netback's counters for its vif (the split path), if netback has served one. */
  vif?: VifSnapshot;
  job?: { job: string; rank: number };
}

export interface ChannelSnapshot {
  id: number;
  peerEndpoint: number;
  peerDomid: number;
  bytesOut: number;
  bytesIn: number;
  backlogOut: number;
  backlogIn: number;
  /** Messages the peer took from this endpoint's lane, and this endpoint from the peer's (u32, wrap). */
  msgsOut: number;
  msgsIn: number;
}

export interface EndpointSnapshot {
  id: number;
  /** Which opening of the driver domain's this endpoint is (never its secret session). */
  serial: number;
  domid: number;
  owner: string;
  /** bypass: a guest's endpoint (myrifront → myrback → the NIC); native: a process of the driver domain's. */
  path: EndpointPath;
  regions: number;
  registeredBytes: number;
  /** Co-resident peers (connected through myrback); peers on other hosts are not known to this host. */
  peers: { endpoint: number; domid: number; via: "channel" | "nic" }[];
  channels: ChannelSnapshot[];
  queues: {
    sendQueue: number;
    sendQueueSize: number;
    eventQueue: number;
    eventQueueSize: number;
    recvBytes: number;
    recvBytesSize: number;
  };
  /** The NIC's per-endpoint counters (nic/counters.ts NIC_EP_COUNTER_NAMES). */
  nic: Record<string, number>;
}

export interface HostSnapshot {
  version: number;
  /** When it was taken (ms since the epoch). */
  time: number;
  host: {
    name: string;
    hostname: string;
    nicId: number;
    pid: number;
    uptimeS: number;
    control?: string;
    link?: string;
    slots?: number;
    /** The embedded host of `myrixen start` or `myrixen run` (serves inspection only). */
    embedded?: string;
    versions: { myrixen: string; wire: number; node: string; snapshot: number };
  };
  limits: {
    maxEndpoints: number;
    endpointsPerDomain: number;
    registeredBytesPerDomain: number;
    regionsPerDomain: number;
  };
  nic: {
    maxEndpoints: number;
    openEndpoints: number[];
    regions: number;
    etherPort: boolean;
    links: { peerNic: number; state: string; reconnects: number }[];
    counters: Record<string, number>;
  };
  domains: DomainSnapshot[];
  endpoints: EndpointSnapshot[];
  /** myrback's counters (back.ts BackendStats, byOp flattened as op_NAME). */
  backend: Record<string, number>;
  /** netback's totals and the bridge's counters. */
  net: { totals: Record<string, number>; bridge: Record<string, number>; uplink: Record<string, number> };
  jobs: { job: string; ranks: { rank: number; domid: number; state: string }[] }[];
  xenstore: { nodes: number };
}

// ---- the wire check (a snapshot from another host is untrusted) ----------------------------

const int = z.number().int();
const num = z.number();
const str = (n = 256) => z.string().max(n);
const counters = z.record(str(64), num);
const MAX = 4096;
/** A domain's devices in a snapshot, at most: what a guest writes in its own device directory is cut to these. */
export const MAX_DEVICES = 64;
/** Characters of a device's type or MAC in a snapshot, at most. */
export const DEVICE_TEXT_MAX = 32;

export const HostSnapshotSchema = z.object({
  version: int,
  time: num,
  host: z.object({
    name: str(),
    hostname: str(),
    nicId: int,
    pid: int,
    uptimeS: num,
    control: str().optional(),
    link: str().optional(),
    slots: int.optional(),
    embedded: str().optional(),
    versions: z.object({ myrixen: str(64), wire: int, node: str(64), snapshot: int }),
  }),
  limits: z.object({
    maxEndpoints: int,
    endpointsPerDomain: int,
    registeredBytesPerDomain: num,
    regionsPerDomain: int,
  }),
  nic: z.object({
    maxEndpoints: int,
    openEndpoints: z.array(int).max(MAX),
    regions: int,
    etherPort: z.boolean(),
    links: z.array(z.object({ peerNic: int, state: str(16), reconnects: int })).max(MAX),
    counters,
  }),
  domains: z
    .array(
      z.object({
        domid: int,
        name: str(),
        kind: z.enum(["driver", "guest", "native"]),
        state: str(32),
        memoryKiB: num,
        buffersKiB: num.optional(),
        heapKiB: num.optional(),
        thread: int,
        uptimeS: num.optional(),
        endedAt: num.optional(),
        devices: z
          .array(
            z.object({
              type: str(DEVICE_TEXT_MAX),
              devid: int,
              backend: int,
              frontState: str(32),
              backState: str(32),
              mac: str(DEVICE_TEXT_MAX).optional(),
            }),
          )
          .max(MAX_DEVICES),
        counters,
        vif: z
          .object({
            connected: z.boolean(),
            txFrames: num,
            rxFrames: num,
            txBytes: num,
            rxBytes: num,
            txRequests: num,
            rxRequests: num,
            grantCopies: num,
            notificationsSent: num,
            notificationsReceived: num,
            rxDropped: num,
            txErrors: num,
            rxErrors: num,
          })
          .optional(),
        job: z.object({ job: str(128), rank: int }).optional(),
      }),
    )
    .max(MAX),
  endpoints: z
    .array(
      z.object({
        id: int,
        serial: int,
        domid: int,
        owner: str(),
        path: z.enum(["bypass", "native"]),
        regions: int,
        registeredBytes: num,
        peers: z.array(z.object({ endpoint: int, domid: int, via: z.enum(["channel", "nic"]) })).max(MAX),
        channels: z
          .array(
            z.object({
              id: int,
              peerEndpoint: int,
              peerDomid: int,
              bytesOut: num,
              bytesIn: num,
              backlogOut: num,
              backlogIn: num,
              msgsOut: num.default(0),
              msgsIn: num.default(0),
            }),
          )
          .max(MAX),
        queues: z.object({
          sendQueue: num,
          sendQueueSize: num,
          eventQueue: num,
          eventQueueSize: num,
          recvBytes: num,
          recvBytesSize: num,
        }),
        nic: counters,
      }),
    )
    .max(MAX),
  backend: counters,
  net: z.object({ totals: counters, bridge: counters, uplink: counters }),
  jobs: z
    .array(
      z.object({
        job: str(128),
        ranks: z.array(z.object({ rank: int, domid: int, state: str(32) })).max(MAX),
      }),
    )
    .max(1024),
  xenstore: z.object({ nodes: int }),
});

// ---- rates: the difference of two snapshots ---------------------------------------------------

export interface EndpointRates {
  /** Messages the NIC carried for it: eager SENDs out; eager receives and rendezvous pulls in. */
  msgsOut: number;
  msgsIn: number;
  /** Bytes the NIC carried (sends; receives and pulls). */
  bytesOut: number;
  bytesIn: number;
  /** Bytes of records through its co-resident channels (headers included; no message count exists). */
  channelBytesOut: number;
  channelBytesIn: number;
}

export interface DomainRates {
  /** Where its traffic went in the interval (idle: none seen). */
  path: TrafficPath | "both" | "idle";
  bypassBytes: number;
  splitBytes: number;
  nicMsgs: number;
  hypercalls: number;
  grantOps: number;
  evtchnSends: number;
  xenstoreOps: number;
  vifFrames: number;
}

export interface PathRates {
  /** Domains whose traffic went this way in the interval. */
  domains: number;
  /** Messages the host can count: NIC messages (bypass, native), frames through netback (split). */
  msgs: number;
  bytes: number;
  /** The bypass proof, summed over those domains: what the hypervisor did for them. */
  hypercalls: number;
  grantOps: number;
  evtchnSends: number;
}

export interface HostRates {
  /** Seconds between the two snapshots. */
  dt: number;
  time: number;
  domains: Record<number, DomainRates>;
  /** Keyed by endpoint id. */
  endpoints: Record<number, EndpointRates>;
  paths: Record<TrafficPath, PathRates>;
  /** Per second: myrback requests served, netback's grant copies and notifications, the bridge's frames. */
  backendRequests: number;
  netbackGrantCopies: number;
  netbackNotifications: number;
  netbackFrames: number;
  nicSends: number;
  nicRecvs: number;
  nicPulls: number;
  nicFramesTx: number;
  nicFramesRx: number;
  /**
   * Latency samples per path, in µs: for each endpoint (bypass, native) or vif (split) that
   * received something in the interval, the interval divided by what it received (NIC
   * messages: eager receives and pulls; frames for a vif). In a ping-pong that is the round
   * trip; in a stream, the time between arrivals. Co-resident channel messages count too:
   * the receiving library counts what it takes from each lane (LaneWord.Messages).
   */
  latencyUs: Record<TrafficPath, number[]>;
}

const d = (a: number | undefined, b: number | undefined) => Math.max(0, (a ?? 0) - (b ?? 0));
const du32 = (a: number, b: number) => (a - b) >>> 0;

function emptyPath(): PathRates {
  return { domains: 0, msgs: 0, bytes: 0, hypercalls: 0, grantOps: 0, evtchnSends: 0 };
}

/** Rates per second between two snapshots of the same host (prev older than cur). */
export function rates(prev: HostSnapshot, cur: HostSnapshot): HostRates {
  const dt = Math.max(1e-3, (cur.time - prev.time) / 1000);
  const per = (n: number) => n / dt;
  const prevEps = new Map(prev.endpoints.map((e) => [e.id, e]));
  const endpoints: Record<number, EndpointRates> = {};
  const byDomain = new Map<number, { bypass: number; native: number; msgs: number }>();
  const latencyUs: Record<TrafficPath, number[]> = { bypass: [], native: [], split: [] };
  for (const e of cur.endpoints) {
    const p = prevEps.get(e.id);
    const n = e.nic;
    const o = p?.nic ?? {};
    const msgsOut = d(n.sends, o.sends);
    const msgsIn = d(n.recvs, o.recvs) + d(n.pulls, o.pulls);
    const bytesOut = d(n.send_bytes, o.send_bytes);
    const bytesIn = d(n.recv_bytes, o.recv_bytes) + d(n.pull_bytes, o.pull_bytes);
    let chOut = 0;
    let chIn = 0;
    let chMsgsOut = 0;
    let chMsgsIn = 0;
    const prevCh = new Map((p?.serial === e.serial ? p.channels : []).map((c) => [c.id, c]));
    for (const c of e.channels) {
      const pc = prevCh.get(c.id);
      if (!pc) continue;
      chOut += du32(c.bytesOut, pc.bytesOut);
      chIn += du32(c.bytesIn, pc.bytesIn);
      chMsgsOut += du32(c.msgsOut, pc.msgsOut);
      chMsgsIn += du32(c.msgsIn, pc.msgsIn);
    }
    endpoints[e.id] = {
      msgsOut: per(msgsOut),
      msgsIn: per(msgsIn),
      bytesOut: per(bytesOut),
      bytesIn: per(bytesIn),
      channelBytesOut: per(chOut),
      channelBytesIn: per(chIn),
    };
    if (msgsIn + chMsgsIn > 0) latencyUs[e.path].push((dt * 1e6) / (msgsIn + chMsgsIn));
    const agg = byDomain.get(e.domid) ?? { bypass: 0, native: 0, msgs: 0 };
    agg[e.path] += bytesOut + bytesIn + chOut + chIn;
    agg.msgs += msgsOut + msgsIn + chMsgsOut + chMsgsIn;
    byDomain.set(e.domid, agg);
  }
  const prevDoms = new Map(prev.domains.map((x) => [x.domid, x]));
  const domains: Record<number, DomainRates> = {};
  const paths: Record<TrafficPath, PathRates> = {
    bypass: emptyPath(),
    native: emptyPath(),
    split: emptyPath(),
  };
  for (const x of cur.domains) {
    const p = prevDoms.get(x.domid);
    if (!p || p.name !== x.name) continue;
    const c = x.counters;
    const o = p.counters;
    const agg = byDomain.get(x.domid) ?? { bypass: 0, native: 0, msgs: 0 };
    const fast = agg.bypass + agg.native;
    const splitBytes = x.vif && p.vif ? d(x.vif.txBytes, p.vif.txBytes) + d(x.vif.rxBytes, p.vif.rxBytes) : 0;
    const vifFrames =
      x.vif && p.vif ? d(x.vif.txFrames, p.vif.txFrames) + d(x.vif.rxFrames, p.vif.rxFrames) : 0;
    const rxFrames = x.vif && p.vif ? d(x.vif.rxFrames, p.vif.rxFrames) : 0;
    const fastPath: TrafficPath = x.kind === "native" ? "native" : "bypass";
    const path: DomainRates["path"] =
      fast > 0 && splitBytes > 0 ? "both" : fast > 0 ? fastPath : splitBytes > 0 ? "split" : "idle";
    const r: DomainRates = {
      path,
      bypassBytes: per(fast),
      splitBytes: per(splitBytes),
      nicMsgs: per(agg.msgs),
      hypercalls: per(d(c.hypercalls, o.hypercalls)),
      grantOps: per(
        d(c.grant_map, o.grant_map) + d(c.grant_unmap, o.grant_unmap) + d(c.grant_copy, o.grant_copy),
      ),
      evtchnSends: per(d(c.evtchn_send, o.evtchn_send)),
      xenstoreOps: per(d(c.xenstore_ops, o.xenstore_ops)),
      vifFrames: per(vifFrames),
    };
    domains[x.domid] = r;
    if (x.kind === "driver") continue;
    const add = (pr: PathRates, msgs: number, bytes: number) => {
      pr.domains++;
      pr.msgs += msgs;
      pr.bytes += bytes;
      pr.hypercalls += r.hypercalls;
      pr.grantOps += r.grantOps;
      pr.evtchnSends += r.evtchnSends;
    };
    if (path === fastPath || path === "both") add(paths[fastPath], r.nicMsgs, r.bypassBytes);
    if (path === "split" || path === "both") {
      add(paths.split, r.vifFrames, r.splitBytes);
      if (rxFrames > 0) latencyUs.split.push((dt * 1e6) / rxFrames);
    }
  }
  const nb = cur.net.totals;
  const nbo = prev.net.totals;
  const g = cur.nic.counters;
  const go = prev.nic.counters;
  return {
    dt,
    time: cur.time,
    domains,
    endpoints,
    paths,
    backendRequests: per(d(cur.backend.requests, prev.backend.requests)),
    netbackGrantCopies: per(d(nb.grantCopies, nbo.grantCopies)),
    netbackNotifications: per(
      d(nb.notificationsSent, nbo.notificationsSent) + d(nb.notificationsReceived, nbo.notificationsReceived),
    ),
    netbackFrames: per(d(nb.txFrames, nbo.txFrames) + d(nb.rxFrames, nbo.rxFrames)),
    nicSends: per(d(g.sends, go.sends)),
    nicRecvs: per(d(g.recvs, go.recvs)),
    nicPulls: per(d(g.pulls, go.pulls)),
    nicFramesTx: per(d(g.frames_tx, go.frames_tx)),
    nicFramesRx: per(d(g.frames_rx, go.frames_rx)),
    latencyUs,
  };
}

// ---- formatting shared by the toolstack commands ---------------------------------------------

/** 1234567 → "1.2 M", for rates. */
export function withSiPrefix(n: number, unit = ""): string {
  const a = Math.abs(n);
  const [v, p] =
    a >= 1e9
      ? [n / 1e9, " G"]
      : a >= 1e6
        ? [n / 1e6, " M"]
        : a >= 1e3
          ? [n / 1e3, " k"]
          : [n, unit ? " " : ""];
  const s =
    a === 0 ? "0" : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
  return `${s}${p}${unit}`.trimEnd();
}

/** Bytes as KiB/MiB/GiB. */
export function bytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Seconds as h:mm:ss (or d-h:mm:ss). */
export function duration(s: number | undefined): string {
  if (s === undefined || !Number.isFinite(s)) return "-";
  const t = Math.max(0, Math.floor(s));
  const days = Math.floor(t / 86400);
  const h = Math.floor((t % 86400) / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  const hms = `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
  return days > 0 ? `${days}-${hms}` : hms;
}

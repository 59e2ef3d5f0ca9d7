/**
 * The host's side of inspection: takes snapshots (snapshot.ts) of one Host from what its
 * components already keep, at the moment someone asks:
 *
 *   - domains: the hypervisor's list, states and per-domain counters (shared memory), the
 *     start times the Host recorded, the device directories in XenStore (read as the
 *     toolstack, without counting an operation);
 *   - endpoints: myrback's registry, asked through the driver domain's host link (owner,
 *     registrations, co-resident peers and channels, queue depths read from the windows and
 *     the channels' lanes), joined with the NIC's per-endpoint counters (shared memory);
 *   - the NIC: its info (through the driver domain) and its global counters (shared memory);
 *   - myrback's and netback's stats pages (shared memory).
 *
 * Nothing here runs unless a snapshot is asked for; a snapshot costs the driver domain one
 * message on its host link and the NIC one `info` control call. No per-message hook exists.
 */
import { hostname as osHostname } from "node:os";
import type { NicInfo } from "../nic/control.js";
import { xenbusStateName } from "../xen/abi.js";
import type { Domain } from "../xen/hypervisor.js";
import { parseXenbusState } from "../xen/xenbus.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import type { Host } from "./host.js";
import {
  DEVICE_TEXT_MAX,
  type DeviceSnapshot,
  type DomainSnapshot,
  type EndpointSnapshot,
  type HostSnapshot,
  MAX_DEVICES,
  MYRIXEN_VERSION,
  SNAPSHOT_VERSION,
} from "./snapshot.js";

export interface InspectorOptions {
  /** How the host is named (default: the hostname). */
  name?: string;
  control?: string;
  link?: string;
  slots?: number;
  /** Set for the embedded host of `myrixen start` / `myrixen run`: which. */
  embedded?: string;
  /** The control protocol's version (wire.ts), for `myrixen info`. */
  wireVersion?: number;
  /** The jobs with ranks on the host now. */
  jobs?: () => { job: string; ranks: { rank: number; domid: number; state: string }[] }[];
}

/** Domains that ended are shown this long after they are gone (a guest's death must be seen). */
const GONE_KEEP_MS = 60_000;
const GONE_MAX = 32;

/** A subtree's child by name. */
function child(n: XenStoreTreeNode | undefined, name: string): XenStoreTreeNode | undefined {
  return n?.children.find((c) => c.name === name);
}

export class Inspector {
  /**
   * What an earlier snapshot showed of each domain still listed, by the inspector's own serial
   * for it (a domain id comes round again), to report it once it has gone. Plain data only:
   * it held each Domain, and so what a rank returned, until the next snapshot, which for a
   * host observed once was never (`test/host-inspect-bound.test.ts`). An entry goes when its
   * domain leaves the hypervisor's lists (onForget), and at each snapshot if it is not listed.
   */
  private readonly seen = new Map<number, DomainSnapshot>();
  /** Each domain's serial, without keeping the domain. */
  private readonly serials = new WeakMap<Domain, number>();
  private nextSerial = 1;
  private gone: DomainSnapshot[] = [];

  constructor(
    readonly host: Host,
    private readonly opts: InspectorOptions = {},
  ) {
    // Held weakly: an inspector made for one look (a test's) does not stay with the host.
    const me = new WeakRef(this);
    const off = host.hypervisor.onForget((dom) => {
      const inspector = me.deref();
      if (!inspector) return void off();
      const serial = inspector.serials.get(dom);
      if (serial !== undefined) inspector.left(serial, dom, Date.now());
    });
  }

  /** How many domains this inspector keeps a last view of (the ones listed at its last snapshot, at most). */
  get seenCount(): number {
    return this.seen.size;
  }

  private serialOf(dom: Domain): number {
    let serial = this.serials.get(dom);
    if (serial === undefined) {
      serial = this.nextSerial++;
      this.serials.set(dom, serial);
    }
    return serial;
  }

  /** A domain shown before has left the hypervisor's lists: shown as gone for a while. */
  private left(serial: number, dom: Domain | undefined, now: number): void {
    const last = this.seen.get(serial);
    if (!last) return;
    this.seen.delete(serial);
    const running = last.state === "running" || last.state === "booting";
    this.gone.push({
      ...last,
      // How it ended, if it was still running when last shown: known when the hypervisor says
      // it is forgetting it; one found gone at a snapshot (never so, today) was destroyed.
      state: running ? (dom ? (dom.error ? "crashed" : dom.state) : "destroyed") : last.state,
      endedAt: last.endedAt ?? now,
      devices: [],
    });
    if (this.gone.length > GONE_MAX) this.gone.splice(0, this.gone.length - GONE_MAX);
  }

  /** The subtree at `path` (xenstore-ls). Throws XenStoreError ENOENT for a path that does not exist. */
  xenstore(path: string, maxNodes = 10_000) {
    return this.host.hypervisor.xenstore.tree(path, maxNodes);
  }

  async snapshot(): Promise<HostSnapshot> {
    const host = this.host;
    const hv = host.hypervisor;
    const [info, backend] = await Promise.all([
      host.nicInfo().catch((): NicInfo | undefined => undefined),
      host.backendEndpoints().catch(() => []),
    ]);
    const now = Date.now();
    const nicCounters = host.nic.counters();
    const jobs = this.opts.jobs?.() ?? [];
    const rankOf = new Map<number, { job: string; rank: number }>();
    for (const j of jobs) for (const r of j.ranks) rankOf.set(r.domid, { job: j.job, rank: r.rank });
    const net = host.netStats();
    const vifOf = new Map(net.vifs.filter((v) => v.devid === 0).map((v) => [v.domid, v]));

    const domains: DomainSnapshot[] = [];
    const live = new Set<number>();
    for (const dom of hv.domains()) {
      const serial = this.serialOf(dom);
      live.add(serial);
      const born = host.bornAt(dom);
      const v = vifOf.get(dom.domid);
      // The driver domain is the host's own code: not metered.
      const mem = dom.privileged ? undefined : hv.guestMemory(dom.domid);
      const snap: DomainSnapshot = {
        domid: dom.domid,
        name: dom.name,
        kind: dom.privileged ? "driver" : dom.native ? "native" : "guest",
        state: dom.state,
        memoryKiB: dom.pages * 4,
        buffersKiB: mem && Math.round(mem.buffers / 1024),
        heapKiB: mem && Math.round(mem.heap / 1024),
        thread: dom.worker.threadId,
        uptimeS: born === undefined ? undefined : (now - born) / 1000,
        devices: this.devices(dom.domid),
        counters: { ...dom.counters() },
        vif: v && {
          connected: v.connected,
          txFrames: v.txFrames,
          rxFrames: v.rxFrames,
          txBytes: v.txBytes,
          rxBytes: v.rxBytes,
          txRequests: v.txRequests,
          rxRequests: v.rxRequests,
          grantCopies: v.grantCopies,
          notificationsSent: v.notificationsSent,
          notificationsReceived: v.notificationsReceived,
          rxDropped: v.rxDropped,
          txErrors: v.txErrors,
          rxErrors: v.rxErrors,
        },
        job: rankOf.get(dom.domid),
      };
      if (snap.state !== "running" && snap.state !== "booting")
        snap.endedAt = this.seen.get(serial)?.endedAt ?? now;
      domains.push(snap);
      this.seen.set(serial, snap);
    }
    // A domain the hypervisor no longer lists (destroyed) stays visible for a while.
    for (const serial of this.seen.keys()) if (!live.has(serial)) this.left(serial, undefined, now);
    this.gone = this.gone.filter((g) => now - (g.endedAt ?? now) < GONE_KEEP_MS).slice(-GONE_MAX);
    const liveIds = new Set(domains.map((x) => x.domid));
    for (const g of this.gone) if (!liveIds.has(g.domid)) domains.push(g);
    domains.sort((a, b) => a.domid - b.domid || (a.endedAt ?? 0) - (b.endedAt ?? 0));

    const endpoints: EndpointSnapshot[] = backend.map((e) => {
      const chanPeers = new Set(e.channels.map((c) => c.peerEndpoint));
      return {
        id: e.endpointId,
        serial: e.serial,
        domid: e.domid,
        owner: e.owner,
        path: e.kind === "native" ? "native" : "bypass",
        regions: e.regions,
        registeredBytes: e.registeredBytes,
        peers: e.peers.map((p) => ({
          endpoint: p.endpointId,
          domid: p.domid,
          via: chanPeers.has(p.endpointId) ? ("channel" as const) : ("nic" as const),
        })),
        channels: e.channels,
        queues: e.queues,
        nic: { ...(nicCounters.endpoints[e.endpointId] ?? {}) },
      };
    });

    const b = host.backendStats();
    const { byOp, ...backendRest } = b;
    const backendFlat: Record<string, number> = { ...backendRest };
    for (const [op, n] of Object.entries(byOp)) backendFlat[`op_${op}`] = n;
    const { vifs: _vifs, ...netRest } = net;
    return {
      version: SNAPSHOT_VERSION,
      time: now,
      host: {
        name: this.opts.name ?? osHostname(),
        hostname: osHostname(),
        nicId: host.nicId,
        pid: process.pid,
        uptimeS: (now - host.startedAt) / 1000,
        control: this.opts.control,
        link: this.opts.link,
        slots: this.opts.slots,
        embedded: this.opts.embedded,
        versions: {
          myrixen: MYRIXEN_VERSION,
          wire: this.opts.wireVersion ?? 0,
          node: process.versions.node,
          snapshot: SNAPSHOT_VERSION,
        },
      },
      limits: { ...host.limits },
      nic: {
        maxEndpoints: info?.maxEndpoints ?? host.nic.maxEndpoints,
        openEndpoints: info?.openEndpoints ?? [],
        regions: info?.regions ?? 0,
        etherPort: info?.etherPort ?? false,
        links: (
          info?.linkStates ??
          info?.links.map((peerNic) => ({ peerNic, state: "up", reconnects: 0 })) ??
          []
        ).map((l) => ({ peerNic: l.peerNic, state: l.state, reconnects: l.reconnects })),
        counters: { ...nicCounters.global },
      },
      domains,
      endpoints,
      backend: backendFlat,
      net: {
        totals: { ...netRest.totals },
        bridge: { ...netRest.bridge },
        uplink: { ...netRest.uplink, present: netRest.uplink.present ? 1 : 0 },
      },
      jobs,
      xenstore: { nodes: host.hypervisor.xenstore.nodeCount() },
    };
  }

  /**
   * A domain's devices: type, devid, backend, and the xenbus state of both ends as XenStore
   * says now. The guest writes its own device directory: what it wrote is cut to what a
   * snapshot may hold (MAX_DEVICES, DEVICE_TEXT_MAX), or every remote observer of this host
   * (list, top, the dashboard) refused the whole snapshot and lost the host.
   */
  private devices(domid: number): DeviceSnapshot[] {
    const xs = this.host.hypervisor.xenstore;
    let dir: XenStoreTreeNode;
    try {
      dir = xs.tree(`/local/domain/${domid}/device`, 256).root;
    } catch {
      return [];
    }
    const out: DeviceSnapshot[] = [];
    for (const type of dir.children)
      for (const dev of type.children) {
        if (out.length >= MAX_DEVICES) return out;
        const devid = Number(dev.name);
        const backendId = Number(child(dev, "backend-id")?.value ?? 0);
        let backState: string | undefined;
        try {
          const back = xs.tree(
            `/local/domain/${backendId}/backend/${type.name}/${domid}/${dev.name}`,
            64,
          ).root;
          backState = child(back, "state")?.value;
        } catch {
          backState = undefined;
        }
        const mac = child(dev, "mac")?.value;
        out.push({
          type: cut(type.name),
          devid: Number.isInteger(devid) ? devid : -1,
          backend: Number.isInteger(backendId) ? backendId : -1,
          frontState: xenbusStateName(parseXenbusState(child(dev, "state")?.value)),
          backState: xenbusStateName(parseXenbusState(backState)),
          ...(mac ? { mac: cut(mac) } : {}),
        });
      }
    return out;
  }
}

/** Guest-written text cut to DEVICE_TEXT_MAX characters (the last one an ellipsis when cut). */
function cut(s: string): string {
  return s.length <= DEVICE_TEXT_MAX ? s : `${s.slice(0, DEVICE_TEXT_MAX - 1)}…`;
}

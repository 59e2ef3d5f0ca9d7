/**
 * One machine: the hypervisor, the NIC, and domain 0 running the driver domain (myrback, the
 * native service, netback and its bridge). The host is also the toolstack: it creates each
 * guest's devices in XenStore — a myri device (the fast path, unless policy disables it) and
 * a vif with its MAC (the split path) — and removes them when the guest goes, writes the
 * guest's memory/target, and hands each native process its link to the native service.
 *
 * What the host can see of the driver domain without asking it: the request counters in the
 * stats pages (backendStats for myrback, netStats for netback and the bridge), read straight
 * from shared memory — how tests prove which path the data took.
 */
import { MessageChannel, type MessagePort, type TransferListItem } from "node:worker_threads";
import {
  type BackendEndpointInfo,
  type BackendStats,
  readBackendStats,
  STATS_BYTES,
} from "../myrixen/back.js";
import {
  DEFAULT_ENDPOINTS_PER_DOMAIN,
  DEFAULT_REGIONS_PER_DOMAIN,
  DEFAULT_REGISTERED_BYTES_PER_DOMAIN,
  MEMORY_TARGET_KEY,
  MYRI_DEVICE_TYPE,
} from "../myrixen/protocol.js";
import { QOS_KEY, type QosPolicy } from "../myrixen/qos-policy.js";
import { encodeQosPolicy, parseQosPolicy } from "../myrixen/qos-schema.js";
import { NET_STATS_BYTES, type NetStats, netTraceRing, readNetStats } from "../netback/stats.js";
import type { NicInfo } from "../nic/control.js";
import { NicDevice } from "../nic/device.js";
import { DEFAULT_MAX_REGIONS } from "../nic/tpt.js";
import type { TraceBuffer } from "../nic/trace-ring.js";
import type { DomId } from "../xen/abi.js";
import { bundledScript } from "../xen/bundles.js";
import type { Domain } from "../xen/hypervisor.js";
import { Hypervisor } from "../xen/hypervisor.js";
import { NetifKey, VIF_DEVICE_TYPE, vifMac, vifRateFor } from "../xen/io/netif.js";
import { backendPath, createDevice, destroyDevice } from "../xen/xenbus.js";
import type { DriverDomainArgs, DriverToHost, HostToDriver } from "./driver-domain.js";

export const DRIVER_DOMAIN_PROGRAM = new URL("./driver-domain.js", import.meta.url);
/** Its worker script, the program compiled in (a bundle when fresh: xen/bundles.ts). */
const DRIVER_DOMAIN_THREAD = new URL("./driver-domain-thread.js", import.meta.url);

export interface HostOptions {
  nicId?: number;
  /** NIC endpoint contexts (default 32). */
  maxEndpoints?: number;
  /** Peer NIC ids the NIC keeps linked (or kept after their link went), in all and per remote address (src/nic/link-bound.ts; defaults 1024 and 32). */
  maxLinks?: number;
  maxLinksPerAddress?: number;
  /** myrback quota: endpoints one domain or process may have open (default 8). */
  endpointsPerDomain?: number;
  /** myrback quota: bytes one domain may have registered (default 256 MiB, and at most its RAM). */
  registeredBytesPerDomain?: number;
  /**
   * myrback quota: regions one domain may have registered (default 1024, or fewer on a NIC of
   * more than 64 endpoints: at most 65536 / maxEndpoints, so that the quotas together fit the TPT).
   */
  regionsPerDomain?: number;
  /** Print the driver domain's log lines to stderr (also when MYRIXEN_LOG=1 is set). */
  verbose?: boolean;
  /** The bridge forgets a MAC not seen for this long (ms; default 300 000, as Linux's bridge). */
  bridgeAgeingMs?: number;
  /** The weight and caps of guests started without their own `qos` (default: weight 1, no caps). */
  guestQos?: QosPolicy;
  /**
   * Entries in the driver domain's grant table (default 131,072): every endpoint window and
   * co-resident channel it shares is granted from it, channels three quarters of it at most
   * (95 channels of 2 MiB by default).
   */
  dom0GrantEntries?: number;
}

export interface DomainSpec {
  /** The program: path or URL of a module whose default export is main(guest). */
  module: string | URL;
  /** guest.args; for a native process, an object (the host adds `myrixen` to it). */
  args?: unknown;
  /** Guest-physical memory in 4 KiB pages (default 256). */
  pages?: number;
  name?: string;
  maxHeapMb?: number;
  /** ArrayBuffers and typed arrays it may hold outside its heap, MiB (DomainConfig.maxBufferMb). */
  maxBufferMb?: number;
  transfer?: TransferListItem[];
  /** "pipe": stdout/stderr arrive as `domain.worker.stdout`/`.stderr` (a launcher prefixes them). */
  output?: "inherit" | "pipe";
  /** The program's `process.env` (default: empty). */
  env?: Record<string, string>;
  /**
   * Whether the guest gets the fast path (a myri device; default true). false = disabled by
   * policy: no myri device, so MyriFront.connect fails with its usual MX_NO_DEV error and the
   * guest talks over its vif only. Guests always get a vif.
   */
  fastPath?: boolean;
  /**
   * The guest's weight and caps on the NIC and its channels (myrixen/qos-policy.ts): written
   * into its myri device's backend directory, which the guest may read but not write;
   * Host.setQos changes it at run time. Invalid values are refused (QosPolicyError naming the field).
   */
  qos?: QosPolicy;
}

/** The limits a Host was started with (for inspection). */
export interface HostLimits {
  maxEndpoints: number;
  endpointsPerDomain: number;
  registeredBytesPerDomain: number;
  regionsPerDomain: number;
}

export interface LogLine {
  time: number;
  message: string;
}

const LOG_MAX = 1000;

function int(name: string, v: unknown, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
    throw new RangeError(`Host.start: ${name} must be an integer in ${min}..${max}, got ${String(v)}`);
  return v;
}

export class Host {
  /** The driver domain's log (newest last, at most 1000 lines). */
  readonly log: LogLine[] = [];
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly logWaiters = new Set<() => void>();
  private nextRequest = 1;
  private stopped = false;
  /** When each domain this host started was created (ms since the epoch), for uptimes. */
  private readonly born = new WeakMap<Domain, number>();
  /** When the host started (ms since the epoch). */
  readonly startedAt = Date.now();
  /** The limits it was started with. */
  limits!: HostLimits;
  /** The policy of guests started without their own (HostOptions.guestQos). */
  private guestQos: QosPolicy | undefined;

  private constructor(
    readonly hypervisor: Hypervisor,
    readonly nic: NicDevice,
    readonly dom0: Domain,
    private readonly link: MessagePort,
    private readonly stats: SharedArrayBuffer,
    private readonly netStatsBuffer: SharedArrayBuffer,
    readonly nicId: number,
  ) {
    link.on("message", (m: DriverToHost) => this.onDriverMessage(m));
    // The link must not keep the host process alive on its own.
    link.unref();
  }

  static async start(opts: HostOptions = {}): Promise<Host> {
    const nicId = int("nicId", opts.nicId, 0, 0, 0xfffffffe);
    const maxEndpoints = int("maxEndpoints", opts.maxEndpoints, 32, 1, 256);
    const dom0GrantEntries = int("dom0GrantEntries", opts.dom0GrantEntries, 1 << 17, 1024, 1 << 20);
    const endpointsPerDomain = int(
      "endpointsPerDomain",
      opts.endpointsPerDomain,
      DEFAULT_ENDPOINTS_PER_DOMAIN,
      1,
      256,
    );
    const registeredBytesPerDomain = int(
      "registeredBytesPerDomain",
      opts.registeredBytesPerDomain,
      DEFAULT_REGISTERED_BYTES_PER_DOMAIN,
      4096,
      2 ** 40,
    );
    // Every domain with an endpoint may fill its region quota, and the NIC's TPT is one table
    // for them all (DEFAULT_MAX_REGIONS entries): the quotas together must fit in it, or the
    // guests of one job could take every entry and another job's registrations fail. So the
    // default shrinks on a NIC of more than 64 endpoints (256 → 256 regions a domain), and a
    // quota that does not fit is refused.
    const regionsFit = Math.floor(DEFAULT_MAX_REGIONS / maxEndpoints);
    const regionsPerDomain = int(
      "regionsPerDomain",
      opts.regionsPerDomain,
      Math.min(DEFAULT_REGIONS_PER_DOMAIN, regionsFit),
      1,
      65536,
    );
    if (regionsPerDomain > regionsFit)
      throw new RangeError(
        `Host.start: regionsPerDomain ${regionsPerDomain} × maxEndpoints ${maxEndpoints} is more than the NIC's ` +
          `${DEFAULT_MAX_REGIONS} TPT entries (the guests of one job could take them all): at most ${regionsFit} here`,
      );
    const bridgeAgeingMs = int("bridgeAgeingMs", opts.bridgeAgeingMs, 300_000, 1, 2 ** 31);
    const guestQos =
      opts.guestQos === undefined ? undefined : parseQosPolicy(opts.guestQos, "Host.start: guestQos");
    const hv = new Hypervisor();
    const { nic, ready: nicReady } = NicDevice.launch({
      nicId,
      maxEndpoints,
      maxLinks: opts.maxLinks,
      maxLinksPerAddress: opts.maxLinksPerAddress,
    });
    // Awaited below with the driver domain; handled here too, for a failure before that.
    nicReady.catch(() => undefined);
    // A NIC thread that dies once it said ready ends the start too, whatever the driver domain
    // is waiting for (its calls to that NIC would wait for ever).
    const nicLost = nicReady.then(() =>
      nic.gone.then(() => {
        throw new Error(`the NIC thread of NIC ${nicId} stopped while the host was starting`);
      }),
    );
    nicLost.catch(() => undefined);
    let booted: Promise<unknown> | undefined;
    try {
      const ep = nic.driverEndpoint();
      const { port1: link, port2 } = new MessageChannel();
      const stats = new SharedArrayBuffer(STATS_BYTES);
      const netStats = new SharedArrayBuffer(NET_STATS_BYTES);
      const early: LogLine[] = [];
      const ready = new Promise<void>((resolve) => {
        const onMsg = (m: DriverToHost) => {
          if (m?.type === "log") early.push({ time: m.time, message: m.message });
          if (m?.type === "ready") {
            link.off("message", onMsg);
            resolve();
          }
        };
        link.on("message", onMsg);
      });
      const args: DriverDomainArgs = {
        nic: ep,
        hostLink: port2,
        stats,
        netStats,
        bridgeAgeingMs,
        endpointsPerDomain,
        registeredBytesPerDomain,
        regionsPerDomain,
      };
      // The driver domain boots while the NIC thread does (each loads its modules, ~0.15 s on
      // a 2-core machine): what it asks of the NIC meanwhile waits in the NIC's queue.
      const dom0Made = hv.createDomain({
        module: DRIVER_DOMAIN_PROGRAM,
        script: bundledScript("driver-domain", DRIVER_DOMAIN_THREAD),
        name: "Domain-0",
        privileged: true,
        // 256 pages for the driver domain itself, 192 for netback's staging area (64 jumbo frames).
        pages: 512,
        // Every endpoint window and channel becomes dom0 frames granted to guests.
        maxSharedPages: 1 << 20,
        grantEntries: dom0GrantEntries,
        args,
        transfer: [ep.port, port2],
      });
      booted = Promise.all([nicReady, dom0Made]);
      const [, dom0] = (await Promise.race([booted, nicLost])) as [undefined, Domain];
      const exit = dom0.exited.then((e) => {
        throw new Error(`the driver domain ${e.state} while starting: ${e.error?.message ?? "no error"}`);
      });
      await Promise.race([ready, exit, nicLost]);
      void exit.catch(() => undefined);
      const host = new Host(hv, nic, dom0, link, stats, netStats, nicId);
      host.limits = { maxEndpoints, endpointsPerDomain, registeredBytesPerDomain, regionsPerDomain };
      host.born.set(dom0, host.startedAt);
      host.guestQos = guestQos;
      host.log.push(...early);
      host.verbose = opts.verbose ?? process.env.MYRIXEN_LOG === "1";
      if (host.verbose) for (const l of early) process.stderr.write(`[dom0] ${l.message}\n`);
      return host;
    } catch (e) {
      // The other half may still be booting: stopped with the rest (a driver domain waiting
      // on a NIC that never came is terminated by the shutdown).
      await hv.shutdown().catch(() => undefined);
      await booted?.catch(() => undefined);
      await nic.stop();
      throw e;
    }
  }

  private verbose = false;

  private onDriverMessage(m: DriverToHost): void {
    if (m?.type === "log") {
      this.log.push({ time: m.time, message: m.message });
      if (this.log.length > LOG_MAX) this.log.splice(0, this.log.length - LOG_MAX);
      if (this.verbose) process.stderr.write(`[dom0] ${m.message}\n`);
      for (const w of [...this.logWaiters]) w();
    } else if (m?.type === "reply") {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(m.error));
    }
  }

  private request<T>(what: "nic-info" | "frontends" | "endpoints"): Promise<T> {
    if (this.stopped) return Promise.reject(new Error("the host is stopped"));
    const id = this.nextRequest++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.link.ref();
      this.send({ type: "request", id, what });
    }).finally(() => {
      if (this.pending.size === 0) this.link.unref();
    });
  }

  private send(m: HostToDriver, transfer?: TransferListItem[]): void {
    this.link.postMessage(m, transfer);
  }

  /**
   * Starts a guest VM and, as the toolstack, gives it devices served by domain 0: a myri
   * device (unless spec.fastPath is false; its program connects with openDriver /
   * MyriFront.connect) and a vif, devid 0, its MAC from the NIC id and the domain id (vifMac)
   * (Netfront.connect). Both backends are ready before the guest connects; the guest-side
   * handshakes run only when its program asks.
   */
  async startGuest(spec: DomainSpec): Promise<Domain> {
    if (spec?.fastPath !== undefined && typeof spec.fastPath !== "boolean")
      throw new TypeError(`startGuest: fastPath must be true or false, got ${JSON.stringify(spec.fastPath)}`);
    const fastPath = spec.fastPath !== false;
    const qos = spec.qos === undefined ? this.guestQos : parseQosPolicy(spec.qos, "startGuest: qos");
    const dom = await this.hypervisor.createDomain({
      module: spec.module,
      name: spec.name,
      pages: spec.pages,
      maxHeapMb: spec.maxHeapMb,
      maxBufferMb: spec.maxBufferMb,
      args: spec.args,
      transfer: spec.transfer,
      output: spec.output,
      env: spec.env,
      // Its main runs once its devices exist (below), as xl unpauses a domain after making them.
      paused: true,
    });
    this.born.set(dom, Date.now());
    const ts = this.hypervisor.toolstack;
    const d = dom.domid;
    const device = { type: MYRI_DEVICE_TYPE, frontDom: d, backDom: 0, devid: 0 };
    const vif = { type: VIF_DEVICE_TYPE, frontDom: d, backDom: 0, devid: 0 };
    // A program that fails while it loads (a top-level throw) stops the domain before any of
    // this: the hypervisor has released it and removed its XenStore home, which the writes
    // below would make again, for no one — 6 nodes a failed guest, 12 a failed 2-rank job,
    // until the id came round again (the store has no quota for dom0's nodes).
    const alive = () => dom.state === "running" || dom.state === "booting";
    /** Removes what the writes below left of a domain that stopped meanwhile. */
    const forgetHome = async () => {
      if (fastPath) await destroyDevice(ts, device).catch(() => undefined);
      await destroyDevice(ts, vif).catch(() => undefined);
      if (!this.hypervisor.xenstore.isIntroduced(d)) await ts.rm(`/local/domain/${d}`).catch(() => undefined);
    };
    if (!alive()) return dom;
    try {
      // Like xl's memory/target: the guest may read it, not change it; myrback caps its
      // registrations at it.
      const mem = `/local/domain/${d}/memory`;
      await ts.write(`/local/domain/${d}/${MEMORY_TARGET_KEY}`, String(dom.pages * 4));
      if (!alive()) throw new Error("stopped while its devices were made");
      for (const p of [mem, `/local/domain/${d}/${MEMORY_TARGET_KEY}`])
        await ts.setPerms(p, [
          { dom: 0, access: "n" },
          { dom: d, access: "r" },
        ]);
      // The myri device first: the MX library reads "a vif and no myri device" as the policy
      // having disabled the fast path, so the vif must never appear before it.
      if (fastPath) {
        const { backPath } = await createDevice(ts, device);
        // Before the guest can connect: its first endpoint opens under this policy.
        if (qos) await ts.write(`${backPath}/${QOS_KEY}`, encodeQosPolicy(qos));
      }
      if (!alive()) throw new Error("stopped while its devices were made");
      const { frontPath, backPath } = await createDevice(ts, vif);
      // Like xl: the MAC goes into both directories; netback serves the vif once it is there.
      // The policy's tx cap is the vif's rate too (xl's `rate=`): the domain's bytes are capped
      // whichever path carries them, its neighbours' RX rings with them.
      const mac = vifMac(this.nicId, d);
      const txCap = qos?.tx?.bytesPerSec;
      await ts.transaction(async (tx) => {
        if (txCap !== undefined) await tx.write(`${backPath}/${NetifKey.rate}`, vifRateFor(txCap));
        await tx.write(`${frontPath}/${NetifKey.mac}`, mac);
        await tx.write(`${backPath}/${NetifKey.mac}`, mac);
      });
    } catch (e) {
      // The caller gets no handle to a domain whose devices could not be made: it goes now,
      // not with the host (a host runs for weeks).
      if (alive()) {
        await dom.destroy().catch(() => undefined);
        await forgetHome();
        throw e;
      }
    }
    // Stopped meanwhile: nothing of it is left (the caller gets the stopped domain, with why).
    if (!alive()) {
      await forgetHome();
      return dom;
    }
    // The toolstack removes the devices when the domain goes; the backends see them vanish.
    void dom.exited.then(forgetHome);
    dom.unpause();
    return dom;
  }

  /**
   * Changes a running guest's weight and caps (as `xl` would rewrite netback's rate): the
   * toolstack rewrites the node, myrback sees it and tells the NIC; the tx cap becomes its
   * vif's `rate` too, which netback takes when the vif next connects. Throws QosPolicyError for
   * an invalid policy, and an Error if the guest has no myri device.
   */
  async setQos(domid: DomId, policy: QosPolicy): Promise<void> {
    const qos = parseQosPolicy(policy, "setQos: qos");
    const path = `${backendPath(0, MYRI_DEVICE_TYPE, domid, 0)}/${QOS_KEY}`;
    const ts = this.hypervisor.toolstack;
    if (!(await ts.exists(backendPath(0, MYRI_DEVICE_TYPE, domid, 0))))
      throw new Error(`setQos: domain ${domid} has no myri device (not a running guest with the fast path)`);
    await ts.write(path, encodeQosPolicy(qos));
    // Its vif's rate, which netback reads when the vif connects (as Linux's does).
    const ratePath = `${backendPath(0, VIF_DEVICE_TYPE, domid, 0)}/${NetifKey.rate}`;
    const txCap = qos.tx?.bytesPerSec;
    if (txCap !== undefined) await ts.write(ratePath, vifRateFor(txCap));
    else await ts.rm(ratePath).catch(() => undefined);
  }

  /** Starts a native process of the driver domain's OS; its runtime takes its service link out of args.myrixen. */
  async startNative(spec: DomainSpec): Promise<Domain> {
    const user = spec.args;
    if (user !== undefined && (typeof user !== "object" || user === null || Array.isArray(user)))
      throw new TypeError("startNative: args must be an object (the host adds `myrixen` to it) or undefined");
    const { port1, port2 } = new MessageChannel();
    const replyWord = new SharedArrayBuffer(8);
    const dom = await this.hypervisor.createDomain({
      module: spec.module,
      name: spec.name,
      pages: spec.pages,
      maxHeapMb: spec.maxHeapMb,
      maxBufferMb: spec.maxBufferMb,
      native: true,
      args: { ...(user as object | undefined), myrixen: { port: port2, replyWord } },
      transfer: [port2, ...(spec.transfer ?? [])],
      output: spec.output,
      env: spec.env,
    });
    this.born.set(dom, Date.now());
    this.send({ type: "attach-native", domid: dom.domid, endpoint: { port: port1, replyWord } }, [port1]);
    return dom;
  }

  /** myrback's and the native service's counters, read from shared memory now. */
  backendStats(): BackendStats {
    return readBackendStats(this.stats);
  }

  /**
   * netback's and the bridge's counters, read from shared memory now: per vif and in total
   * (TX/RX requests, frames, bytes, grant copies and their bytes, notifications sent and
   * received, frames bridged, errors, drops) and the bridge's (lookups, hits, floods,
   * learned, aged, drops), plus the uplink's.
   */
  netStats(): NetStats {
    return readNetStats(this.netStatsBuffer);
  }

  /** The split path's trace ring (netback's stamps; netback/stats.ts): switch it on to trace. */
  netTrace(): TraceBuffer {
    return netTraceRing(this.netStatsBuffer);
  }

  /** The NIC's view (open endpoints, regions, links), asked through the driver domain. */
  nicInfo(): Promise<NicInfo> {
    return this.request<NicInfo>("nic-info");
  }

  /** myrback's registry: every open endpoint, its owner, registrations, co-resident peers and queue depths. */
  backendEndpoints(): Promise<BackendEndpointInfo[]> {
    return this.request<BackendEndpointInfo[]>("endpoints");
  }

  /** When this host started `dom` (ms since the epoch); undefined for a domain it did not start. */
  bornAt(dom: Domain): number | undefined {
    return this.born.get(dom);
  }

  /** Which frontends and native processes the driver domain serves. */
  backendState(): Promise<{ frontends: { domid: DomId; devid: number; state: string }[]; native: DomId[] }> {
    return this.request("frontends");
  }

  /** Resolves with the first driver-domain log line matching `pattern` (past or future). */
  waitForLog(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    const found = () => this.log.find((l) => pattern.test(l.message))?.message;
    const now = found();
    if (now !== undefined) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = found();
        if (m === undefined) return;
        clearTimeout(timer);
        this.logWaiters.delete(check);
        resolve(m);
      };
      const timer = setTimeout(() => {
        this.logWaiters.delete(check);
        reject(new Error(`no driver-domain log line matched ${pattern} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.logWaiters.add(check);
    });
  }

  /** Destroys every domain and stops the NIC. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const p of this.pending.values()) p.reject(new Error("the host stopped"));
    this.pending.clear();
    try {
      await this.hypervisor.shutdown();
    } finally {
      // The NIC's thread goes whatever happened to the domains: left running, it kept the
      // process alive after a failed shutdown.
      await this.nic.stop();
      this.link.close();
    }
  }
}

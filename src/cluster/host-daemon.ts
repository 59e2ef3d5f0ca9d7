/**
 * `myrixen host`: one machine of a cluster. Starts a Host (hypervisor, driver domain, NIC),
 * makes the NIC accept links from other hosts' NICs, links to its `--peers`, and serves
 * launchers on a control port (wire.ts): link requests, jobs' ranks (through RankSet, the
 * same code as the embedded host), status. Every client is untrusted: garbage, a port scan,
 * an oversized line, a wrong version or an unknown message is logged and that connection
 * dropped; the host keeps serving. A launcher that goes away takes its jobs' ranks with it.
 *
 * Authentication: a client must prove the cluster key (auth.ts, wire.ts) before any request;
 * its NIC accepts only links from NICs that prove it too (tcp-link.ts). A connection has
 * handshakeTimeoutMs (2 s) from accept to finish the handshake; at most maxPendingHandshakes
 * (64) connections are in the handshake at once, and a new one beyond that drops one that has
 * not said hello if there is one, the oldest of the busiest address block
 * (src/nic/pending-handshakes.ts): a launcher says hello at once and proves the key a round
 * trip later, so neither a static flood of idle sockets nor a fast stream of them drops it,
 * nor can one address's or block's stream of connections that say hello.
 * Authenticated connections: at most maxConnections (256) in all, maxConnectionsPerAddress
 * (a quarter) from one address, maxObservers (half) observers, so that one key holder's
 * address, or observers however many, cannot take every slot and refuse launchers their jobs.
 * Connections that come while the host is still starting (the port listens first) are held,
 * as many at most, and a reset among them only closes it (listen.ts EarlyConnections).
 * Jobs: every start is admitted against the host's capacity (capacity.ts), counted over all
 * connections, before any rank starts: at most maxRanks ranks at once (default 4 per slot) and
 * maxGuestMb of guest RAM committed to them (default half of the machine's RAM).
 * Refusals of unauthenticated clients are logged with their address and reason, at most 20
 * lines per 10 s (then a count). The NIC's link events come through the same logger.
 *
 * This file is the host's lifecycle — start (or serve an existing Host for inspection),
 * accept and admit connections, stop — and the hub its parts hang on:
 * control-connection.ts (one client's session: handshake, idle limit, requests),
 * client-jobs.ts (the jobs a client runs here), host-inspection.ts (status, snapshot and
 * XenStore answers), peer-links.ts (NIC links to other hosts), listen.ts (sockets, addresses).
 */

import net from "node:net";
import { hostname as osHostname } from "node:os";
import { Host } from "../host/host.js";
import { Inspector } from "../host/inspect.js";
import type { HostSnapshot } from "../host/snapshot.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import { addressBlock } from "../nic/address-block.js";
import { MAX_LINKS } from "../nic/link-bound.js";
import { PendingHandshakes } from "../nic/pending-handshakes.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import type { ClusterKey } from "./auth.js";
import { defaultMaxGuestMb, defaultMaxRanks, HostCapacity } from "./capacity.js";
import { ControlConnection } from "./control-connection.js";
import { HostInspection } from "./host-inspection.js";
import { formatAddress, type HostAddress, type HostEntry } from "./hostfile.js";
import { EarlyConnections, freePort, isWildcard, listen, plainAddress } from "./listen.js";
import { type LogFields, type Logger, rateLimitedWarn } from "./log.js";
import { PeerLinks } from "./peer-links.js";
import { jobsOn } from "./ranks.js";
import { type HostMessage, type LinkPeer, WIRE_VERSION } from "./wire.js";

export interface HostDaemonOptions {
  /** Control address; port 0 picks a free port (logged). */
  listen: HostAddress;
  /** Where the NIC accepts links (default: control port + 1; 0 or a control port of 0: a free port). */
  linkPort?: number;
  /** NIC id (default: derived from the hostname and the control port). */
  nicId?: number;
  slots: number;
  /** Ranks running at once over all jobs and clients (default DEFAULT_RANKS_PER_SLOT per slot); a start beyond is refused. */
  maxRanks?: number;
  /** Guest RAM committed to running ranks, MiB (default half of os.totalmem()); a start beyond is refused. */
  maxGuestMb?: number;
  /** Other hosts' control addresses: link to their NICs on start, and again whenever a link drops. */
  peers?: HostEntry[];
  maxEndpoints?: number;
  /** Peer NIC ids its NIC keeps, in all and per address (src/nic/link-bound.ts; defaults 1024 and 32). */
  maxLinks?: number;
  maxLinksPerAddress?: number;
  /** The weight and caps of the guests (ranks) it starts when a job names none (config `qos`). */
  qos?: QosPolicy;
  log: Logger;
  /** The cluster key: clients and NICs must prove it; the host proves it to its peers. */
  key: ClusterKey;
  /** A client must finish the handshake (hello, proof) within this time from accept (default 2 s). */
  handshakeTimeoutMs?: number;
  /** Connections in the handshake at once (default 64); beyond, one is dropped (src/nic/pending-handshakes.ts). */
  maxPendingHandshakes?: number;
  /** A client silent for this long after its hello is dropped (default 30 s; launchers ping every second). */
  idleTimeoutMs?: number;
  /** At most this many authenticated control connections at once (default 256). */
  maxConnections?: number;
  /** At most this many of them from one client address (default a quarter of maxConnections). */
  maxConnectionsPerAddress?: number;
  /** At most this many of them observers (default half of maxConnections): the rest stay for launchers. */
  maxObservers?: number;
}

/** Serving an existing Host (the embedded host of `myrixen start`/`run`): inspection only. */
export interface ServeHostOptions {
  listen: HostAddress;
  key: ClusterKey;
  log: Logger;
  /** What the host is, for clients ("the embedded host of myrixen run, pid 123"). */
  observeOnly: string;
  /** How it is named in snapshots (default: the hostname). */
  name?: string;
  /** Where its NIC accepts links, if it does (shown by `myrixen info`). */
  linkAddress?: HostAddress;
  handshakeTimeoutMs?: number;
  maxPendingHandshakes?: number;
  idleTimeoutMs?: number;
  maxConnections?: number;
  maxConnectionsPerAddress?: number;
  maxObservers?: number;
}

type DaemonSettings = Pick<
  HostDaemonOptions,
  | "key"
  | "handshakeTimeoutMs"
  | "maxPendingHandshakes"
  | "idleTimeoutMs"
  | "maxConnections"
  | "maxConnectionsPerAddress"
  | "maxObservers"
  | "peers"
  | "maxRanks"
  | "maxGuestMb"
  | "maxLinks"
> & { observeOnly?: string; name?: string };

/** FNV-1a of `hostname:port`, in 0..0xfffffffe (the NIC ids a Host accepts). */
export function deriveNicId(hostname: string, port: number): number {
  let h = 0x811c9dc5;
  for (const c of Buffer.from(`${hostname}:${port}`, "utf8")) {
    h ^= c;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % 0xffffffff;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
/** Connections in the handshake at once by default (HostDaemonOptions.maxPendingHandshakes). */
const MAX_PENDING_HANDSHAKES = 64;
/**
 * Authenticated control connections by default (HostDaemonOptions). An honest cluster holds
 * one per running job per host (its launcher's), one per dashboard or `myrixen top` per host,
 * and short-lived ones (`myrixen list`, a peer host linking): 64 jobs at once on one host from
 * one machine, or 128 observers of one host, is far past that. The caps are for a key holder
 * that opens connections to hold them: one address gets a quarter, observers half, so that
 * launchers from other machines always find a slot.
 */
const MAX_CONNECTIONS = 256;
const perAddressDefault = (max: number) => Math.max(1, Math.floor(max / 4));
const observersDefault = (max: number) => Math.max(1, Math.floor(max / 2));

export class HostDaemon {
  /** Authenticated control connections. */
  private readonly conns = new Set<ControlConnection>();
  /** Connections still in the handshake. */
  private readonly pending: PendingHandshakes<ControlConnection>;
  private readonly refuse: (msg: string, fields?: LogFields) => void;
  private stopped = false;
  readonly hostname = osHostname();
  /** Snapshots of the host (inspect.ts), taken when a client asks. */
  readonly inspector: Inspector;
  /** Status, snapshot and XenStore answers. */
  private readonly inspection: HostInspection;
  /** This NIC's links to other hosts' NICs. */
  private readonly peerLinks: PeerLinks;
  /** What all clients' jobs together may take: ranks at once, guest RAM. */
  readonly capacity: HostCapacity;

  private constructor(
    private readonly server: net.Server,
    readonly host: Host,
    readonly control: HostAddress,
    readonly linkAddress: HostAddress | undefined,
    readonly slots: number,
    private readonly log: Logger,
    private readonly opts: DaemonSettings,
    /** Whether stop() stops the host too (false for an embedded host its process owns). */
    private readonly ownsHost = true,
  ) {
    const maxPending = opts.maxPendingHandshakes ?? MAX_PENDING_HANDSHAKES;
    this.pending = new PendingHandshakes(
      maxPending,
      (c) => c.saidHello,
      (c) => c.drop(`dropped unauthenticated: more than ${maxPending} connections in the handshake at once`),
    );
    this.capacity = new HostCapacity(
      opts.maxRanks ?? defaultMaxRanks(slots),
      opts.maxGuestMb ?? defaultMaxGuestMb(),
    );
    this.refuse = rateLimitedWarn(
      log,
      "more unauthenticated control connections dropped (not logged one by one)",
    );
    this.inspector = new Inspector(host, {
      name: opts.name ?? this.hostname,
      control: formatAddress(control),
      link: linkAddress ? formatAddress(linkAddress) : undefined,
      slots: opts.observeOnly ? undefined : slots,
      embedded: opts.observeOnly,
      wireVersion: WIRE_VERSION,
      jobs: () => jobsOn(host),
    });
    this.inspection = new HostInspection(host, this.inspector);
    this.peerLinks = new PeerLinks({
      host,
      key: opts.key,
      log,
      hostname: this.hostname,
      control,
      linkAddress,
      maxPeers: this.maxLinkPeers,
      stopped: () => this.stopped,
    });
  }

  /**
   * The most peer NICs a link request, or one client's link requests together, may name: as
   * many as the NIC links to (maxLinks), past which they could never all be linked.
   */
  get maxLinkPeers(): number {
    return this.opts.maxLinks ?? MAX_LINKS;
  }

  /** Peer NICs being linked now for launchers' requests (each once); none once their clients went. */
  get activeLinkWaits(): number {
    return this.peerLinks.activeWaits;
  }

  /** Set when this host serves inspection only: what it is. */
  get observeOnly(): string | undefined {
    return this.opts.observeOnly;
  }

  /** A snapshot of the host; clients asking together share one (host-inspection.ts). */
  snapshot(): Promise<HostSnapshot> {
    return this.inspection.snapshot();
  }

  /** A XenStore subtree, cut to what one control line can carry. */
  xenstore(
    path: string,
    maxNodes?: number,
  ): { ok: true; tree: XenStoreTreeNode; nodes: number; truncated: boolean } | { ok: false; error: string } {
    return this.inspection.xenstore(path, maxNodes);
  }

  /**
   * Serves an existing Host on a control port, for inspection only (status, snapshot,
   * xenstore): the embedded host of `myrixen start`/`run`, so that `myrixen list` and the
   * dashboard see it. Clients prove `key` as with any host. stop() closes the port, not the host.
   */
  static async serve(host: Host, opts: ServeHostOptions): Promise<HostDaemon> {
    let daemon: HostDaemon | undefined;
    const early = new EarlyConnections(opts.maxPendingHandshakes ?? MAX_PENDING_HANDSHAKES);
    const server = net.createServer((socket) => {
      if (daemon) daemon.accept(socket);
      else early.hold(socket);
    });
    const port = await listen(server, opts.listen);
    daemon = new HostDaemon(
      server,
      host,
      { host: opts.listen.host, port },
      opts.linkAddress,
      1,
      opts.log,
      {
        key: opts.key,
        handshakeTimeoutMs: opts.handshakeTimeoutMs,
        maxPendingHandshakes: opts.maxPendingHandshakes,
        idleTimeoutMs: opts.idleTimeoutMs,
        maxConnections: opts.maxConnections,
        maxConnectionsPerAddress: opts.maxConnectionsPerAddress,
        maxObservers: opts.maxObservers,
        observeOnly: opts.observeOnly,
        name: opts.name,
      },
      false,
    );
    server.on("error", (e) => opts.log.error("control listener error", { error: e.message }));
    early.release((s) => daemon.accept(s));
    return daemon;
  }

  get nicId(): number {
    return this.host.nicId;
  }

  static async start(opts: HostDaemonOptions): Promise<HostDaemon> {
    const log = opts.log;
    let daemon: HostDaemon | undefined;
    const early = new EarlyConnections(opts.maxPendingHandshakes ?? MAX_PENDING_HANDSHAKES);
    const server = net.createServer((socket) => {
      if (daemon) daemon.accept(socket);
      else early.hold(socket);
    });
    const controlPort = await listen(server, opts.listen);
    const control = { host: opts.listen.host, port: controlPort };
    let host: Host | undefined;
    try {
      const nicId = opts.nicId ?? deriveNicId(osHostname(), controlPort);
      if (opts.nicId === undefined)
        log.info("NIC id derived from the hostname and control port", {
          nicId,
          hostname: osHostname(),
          port: controlPort,
        });
      host = await Host.start({
        nicId,
        maxEndpoints: opts.maxEndpoints,
        maxLinks: opts.maxLinks,
        maxLinksPerAddress: opts.maxLinksPerAddress,
        guestQos: opts.qos,
      });
      // The NIC thread's link events (connections refused, links up and down) in our format.
      const nicWarn = rateLimitedWarn(log, "more NIC link events (not logged one by one)", 40);
      host.nic.onLog((message, fields) => {
        const { level, ...rest } = fields;
        if (level === "info") log.info(message, { source: "nic", ...rest });
        else nicWarn(message, { source: "nic", ...rest });
      });
      let linkPort = opts.linkPort ?? (opts.listen.port === 0 ? 0 : controlPort + 1);
      if (linkPort === 0) linkPort = await freePort(control.host);
      try {
        await host.nic.attachLink({
          kind: "tcp-listen",
          host: control.host,
          port: linkPort,
          key: opts.key.bytes,
        });
      } catch (e) {
        throw new Error(
          `the NIC cannot accept links on ${formatAddress({ host: control.host, port: linkPort })}: ${(e as Error).message}`,
        );
      }
      daemon = new HostDaemon(
        server,
        host,
        control,
        { host: control.host, port: linkPort },
        opts.slots,
        log,
        opts,
      );
    } catch (e) {
      await new Promise<void>((r) => server.close(() => r()));
      early.destroyAll();
      await host?.stop().catch(() => undefined);
      throw e;
    }
    server.on("error", (e) => log.error("control listener error", { error: e.message }));
    early.release((s) => daemon.accept(s));
    log.info("host ready", {
      hostname: daemon.hostname,
      control: formatAddress(control),
      controlPort,
      link: formatAddress(daemon.linkAddress!),
      linkPort: daemon.linkAddress!.port,
      nicId: daemon.nicId,
      slots: opts.slots,
      maxRanks: daemon.capacity.maxRanks,
      maxGuestMb: daemon.capacity.maxGuestMb,
      pid: process.pid,
      version: WIRE_VERSION,
      clusterKey: opts.key.file ?? "in memory",
    });
    for (const p of opts.peers ?? []) void daemon.peerLinks.peerLoop(p);
    return daemon;
  }

  private accept(socket: net.Socket): void {
    if (this.stopped) {
      socket.destroy();
      return;
    }
    const c = new ControlConnection(this, socket, this.log, {
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 2000,
      idleTimeoutMs: this.opts.idleTimeoutMs ?? 30_000,
      key: this.opts.key,
      refuse: this.refuse,
    });
    this.pending.add(c, c.address);
  }

  /**
   * @internal A client proved the key: it becomes a client, or the reason it cannot. Its role
   * is its hello's, which its proof covers (auth.ts controlProof).
   */
  admit(c: ControlConnection): string | undefined {
    this.pending.delete(c);
    const max = this.opts.maxConnections ?? MAX_CONNECTIONS;
    const perAddress = this.opts.maxConnectionsPerAddress ?? perAddressDefault(max);
    const observers = this.opts.maxObservers ?? observersDefault(max);
    if (this.conns.size >= max) return `the host serves ${max} clients already; try again later`;
    // Per address, an IPv6 client's being its /64 (address-block.ts).
    const block = addressBlock(c.address);
    let fromAddress = 0;
    let observing = 0;
    for (const o of this.conns) {
      if (addressBlock(o.address) === block) fromAddress++;
      if (o.role === "observer") observing++;
    }
    if (fromAddress >= perAddress)
      return `the host serves ${perAddress} clients from ${block} already (its limit per address); try again later`;
    if (c.role === "observer" && observing >= observers)
      return `the host serves ${observers} observers already (its limit for observers; the other slots are kept for launchers); try again later`;
    this.conns.add(c);
    return undefined;
  }

  /** @internal */
  forget(c: ControlConnection): void {
    this.conns.delete(c);
    this.pending.delete(c);
  }

  /** Our hello for an authenticated client: the link address as it can reach it, and our proof. */
  helloFor(socket: net.Socket, proof: string): HostMessage {
    return {
      type: "hello",
      version: WIRE_VERSION,
      hostname: this.hostname.slice(0, 255),
      nicId: this.nicId,
      link:
        this.linkAddress && !this.observeOnly
          ? { host: this.advertisedLinkHost(this.linkAddress, socket), port: this.linkAddress.port }
          : undefined,
      slots: this.slots,
      pid: process.pid,
      paths: ["native", "bypass", "split"],
      proof,
      observeOnly: this.observeOnly?.slice(0, 256),
    };
  }

  /** A wildcard listener is reached at whatever address the client used for the control port. */
  private advertisedLinkHost(link: HostAddress, socket: net.Socket | undefined): string {
    if (!isWildcard(link.host)) return link.host;
    return plainAddress(socket?.localAddress) || "127.0.0.1";
  }

  /** What runs here: live guests and native processes, NIC links, jobs and their ranks. */
  async status(id: number): Promise<HostMessage> {
    const links = await this.peerLinks.links().catch(() => this.peerLinks.linkedNics);
    const jobs = [...this.conns].flatMap((c) => c.jobs.status());
    return this.inspection.status(id, links, jobs);
  }

  /**
   * Makes sure this NIC is linked to every peer's NIC (peer-links.ts). Rejects naming every
   * peer not linked within timeoutMs; stops waiting when `signal` aborts (the client went).
   */
  ensureLinks(peers: LinkPeer[], timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return this.peerLinks.ensureLinks(peers, timeoutMs, signal);
  }

  /** Stops every job's ranks, closes the control port and connections, stops the NIC and the hypervisor. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.log.info("host stopping");
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const c of this.conns)
      c.send({ type: "log", level: "warn", msg: "the host is shutting down: its ranks are stopped" });
    const jobs = [...this.conns].flatMap((c) => c.jobs.all());
    await Promise.all(jobs.map((s) => s.stop()));
    for (const c of this.conns) c.close("the host is stopping");
    for (const c of [...this.pending.values()]) c.close("the host is stopping");
    if (this.ownsHost) await this.host.stop();
    await Promise.race([closed, sleep(1500)]);
    this.log.info("host stopped", { jobsStopped: jobs.length });
  }
}

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
 * (64) connections are in the handshake at once, and a new one beyond that drops the OLDEST
 * (a launcher takes a few round trips; a static flood of idle sockets cannot keep it out).
 * Refusals of unauthenticated clients are logged with their address and reason, at most 20
 * lines per 10 s (then a count). The NIC's link events come through the same logger.
 */

import net from "node:net";
import { hostname as osHostname } from "node:os";
import { Host } from "../host/host.js";
import { Inspector } from "../host/inspect.js";
import type { HostSnapshot } from "../host/snapshot.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import { type ClusterKey, checkControlProof, controlProof, newNonce } from "./auth.js";
import { formatAddress, type HostAddress, type HostEntry } from "./hostfile.js";
import { type LogFields, type Logger, rateLimitedWarn } from "./log.js";
import { jobsOn, RankRefusal, RankSet } from "./ranks.js";
import { RemoteHost } from "./remote.js";
import {
  CLIENT_TYPES,
  type ClientMessage,
  ClientMessageSchema,
  type HostMessage,
  LineChannel,
  type LinkPeer,
  MAX_HANDSHAKE_LINE_BYTES,
  MAX_LINE_BYTES,
  MAX_OUTPUT_LINE,
  MAX_XENSTORE_NODES,
  type StartMessage,
  validateMessage,
  WIRE_VERSION,
} from "./wire.js";

export interface HostDaemonOptions {
  /** Control address; port 0 picks a free port (logged). */
  listen: HostAddress;
  /** Where the NIC accepts links (default: control port + 1; 0 or a control port of 0: a free port). */
  linkPort?: number;
  /** NIC id (default: derived from the hostname and the control port). */
  nicId?: number;
  slots: number;
  /** Other hosts' control addresses: link to their NICs on start, and again whenever a link drops. */
  peers?: HostEntry[];
  maxEndpoints?: number;
  /** The weight and caps of the guests (ranks) it starts when a job names none (config `qos`). */
  qos?: QosPolicy;
  log: Logger;
  /** The cluster key: clients and NICs must prove it; the host proves it to its peers. */
  key: ClusterKey;
  /** A client must finish the handshake (hello, proof) within this time from accept (default 2 s). */
  handshakeTimeoutMs?: number;
  /** Connections in the handshake at once (default 64); beyond, the oldest is dropped. */
  maxPendingHandshakes?: number;
  /** A client silent for this long after its hello is dropped (default 30 s; launchers ping every second). */
  idleTimeoutMs?: number;
  /** At most this many authenticated control connections at once (default 256). */
  maxConnections?: number;
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
}

type DaemonSettings = Pick<
  HostDaemonOptions,
  "key" | "handshakeTimeoutMs" | "maxPendingHandshakes" | "idleTimeoutMs" | "maxConnections" | "peers"
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

const WILDCARD = new Set(["0.0.0.0", "::", ""]);

function plainAddress(a: string | undefined): string {
  return (a ?? "").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
}

function listen(server: net.Server, a: HostAddress): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) =>
      reject(
        new Error(
          e.code === "EADDRINUSE"
            ? `${formatAddress(a)} is already in use (another myrixen host? choose another port)`
            : `cannot listen on ${formatAddress(a)}: ${e.message}`,
        ),
      );
    server.once("error", onError);
    server.listen(a.port, a.host, () => {
      server.off("error", onError);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** A port that was free a moment ago (the NIC's listener cannot report the port it bound). */
async function freePort(host: string): Promise<number> {
  const s = net.createServer();
  const port = await listen(s, { host, port: 0 });
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

let connectionIds = 0;

class ControlConnection {
  readonly id = ++connectionIds;
  readonly remote: string;
  private hello: Extract<ClientMessage, { type: "hello" }> | undefined;
  /** Our nonce, once the client said hello. */
  private hostNonce: string | undefined;
  /** The client proved the cluster key. */
  authenticated = false;
  readonly jobs = new Map<string, RankSet>();
  private handshakeTimer: NodeJS.Timeout;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly channel: LineChannel;
  private droppedLines = 0;

  constructor(
    private readonly daemon: HostDaemon,
    private readonly socket: net.Socket,
    private readonly log: Logger,
    private readonly opts: {
      handshakeTimeoutMs: number;
      idleTimeoutMs: number;
      key: ClusterKey;
      refuse: (msg: string, fields: LogFields) => void;
    },
  ) {
    this.remote = `${plainAddress(socket.remoteAddress)}:${socket.remotePort}`;
    this.channel = new LineChannel(socket, {
      line: (v) => this.onLine(v),
      garbage: (why) => this.drop(`it sent ${why}`),
      close: (why) => this.onClose(why),
    });
    // An unauthenticated client cannot make the host buffer more than a handshake line.
    this.channel.maxLineBytes = MAX_HANDSHAKE_LINE_BYTES;
    this.handshakeTimer = setTimeout(
      () =>
        this.drop(
          this.hello
            ? `no proof of the cluster key within ${opts.handshakeTimeoutMs} ms`
            : `no hello within ${opts.handshakeTimeoutMs} ms`,
        ),
      opts.handshakeTimeoutMs,
    );
    this.handshakeTimer.unref();
  }

  private get who(): string {
    return this.hello ? `${this.hello.role} ${this.hello.name} (${this.remote})` : this.remote;
  }

  send(m: HostMessage, droppable = false): boolean {
    return this.channel.send(m, droppable);
  }

  /** Refuses the client: says why (if it can still hear), logs, closes. */
  drop(why: string): void {
    if (this.channel.isClosed) return;
    // Anyone can make an unauthenticated connection fail: those lines are rate-limited.
    if (this.authenticated) this.log.warn("dropping a control connection", { client: this.who, reason: why });
    else
      this.opts.refuse("dropping a control connection", {
        client: this.who,
        reason: why,
        authenticated: false,
      });
    this.channel.send({ type: "error", msg: why } satisfies HostMessage);
    this.channel.end(why);
  }

  close(why: string): void {
    this.channel.end(why);
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () => this.drop(`silent for ${this.opts.idleTimeoutMs} ms`),
      this.opts.idleTimeoutMs,
    );
    this.idleTimer.unref();
  }

  private onClose(why: string): void {
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.idleTimer);
    if (this.authenticated) this.log.info("client disconnected", { client: this.who, reason: why });
    else this.log.debug("connection closed before it authenticated", { client: this.remote, reason: why });
    for (const [job, set] of this.jobs) {
      if (set.live === 0) continue;
      this.log.info("the job's launcher is gone: stopping its ranks here", { job, ranks: set.spec.ranks });
      void set.stop();
    }
    this.daemon.forget(this);
  }

  /** The handshake: hello → challenge, then auth → our hello with our proof. */
  private onHandshake(m: Extract<ClientMessage, { type: "hello" | "auth" }>): void {
    if (m.type === "hello") {
      this.hello = m;
      this.hostNonce = newNonce();
      this.send({ type: "challenge", nonce: this.hostNonce });
      return;
    }
    const hello = this.hello!;
    const nonce = this.hostNonce!;
    if (!checkControlProof(this.opts.key, "client", hello.nonce, nonce, m.proof)) {
      this.drop(
        "authentication failed: the client's proof does not match this host's cluster key (it holds another key)",
      );
      return;
    }
    const refusal = this.daemon.admit(this);
    if (refusal) {
      this.drop(refusal);
      return;
    }
    clearTimeout(this.handshakeTimer);
    this.authenticated = true;
    this.channel.maxLineBytes = MAX_LINE_BYTES;
    this.log.info("client connected", { client: this.who });
    this.send(this.daemon.helloFor(this.socket, controlProof(this.opts.key, "host", hello.nonce, nonce)));
  }

  private onLine(value: unknown): void {
    const expect = this.authenticated ? null : this.hello === undefined ? "hello" : "auth";
    const m = validateMessage(value, ClientMessageSchema, CLIENT_TYPES, expect);
    if (typeof m === "string") {
      this.drop(m);
      return;
    }
    if (m.type === "hello" || m.type === "auth") {
      this.onHandshake(m);
      return;
    }
    this.touch();
    if (
      m.type === "link" ||
      m.type === "start" ||
      m.type === "peers" ||
      m.type === "stop" ||
      m.type === "states"
    ) {
      const why = this.daemon.observeOnly
        ? `this host serves inspection only (${this.daemon.observeOnly}): it takes no jobs`
        : this.hello?.role === "observer"
          ? `an observer may only ask status, snapshot and xenstore, not "${m.type}"`
          : undefined;
      if (why !== undefined) {
        this.log.warn("refused a request", { client: this.who, type: m.type, reason: why });
        if (m.type === "link" || m.type === "start")
          this.send({ type: "reply", id: m.id, ok: false, code: "refused", error: why });
        if (m.type === "states") this.send({ type: "states", id: m.id, ranks: [] });
        return;
      }
    }
    switch (m.type) {
      case "ping":
        this.send({ type: "pong" });
        return;
      case "status":
        void this.daemon.status(m.id).then((s) => this.send(s));
        return;
      case "snapshot":
        this.daemon.snapshot().then(
          (snapshot) => this.send({ type: "snapshot", id: m.id, ok: true, snapshot }),
          (e: Error) => this.send({ type: "snapshot", id: m.id, ok: false, error: e.message }),
        );
        return;
      case "xenstore":
        this.send({ type: "xenstore", id: m.id, ...this.daemon.xenstore(m.path, m.maxNodes) });
        return;
      case "link":
        this.daemon.ensureLinks(m.peers, m.timeoutMs).then(
          () => this.send({ type: "reply", id: m.id, ok: true }),
          (e: Error) => {
            this.log.warn("cannot link to the job's other hosts", { client: this.who, error: e.message });
            this.send({ type: "reply", id: m.id, ok: false, code: "failed", error: e.message });
          },
        );
        return;
      case "start":
        void this.start(m);
        return;
      case "peers": {
        const set = this.jobs.get(m.job);
        if (!set)
          this.log.warn("peers for a job this client has not started here", { client: this.who, job: m.job });
        else if (m.peers.length !== set.spec.size)
          this.log.warn("peers list of the wrong length ignored", {
            job: m.job,
            got: m.peers.length,
            size: set.spec.size,
          });
        else set.peers(m.peers);
        return;
      }
      case "states":
        this.send({ type: "states", id: m.id, ranks: this.jobs.get(m.job)?.states() ?? [] });
        return;
      case "stop": {
        const set = this.jobs.get(m.job);
        if (set) {
          this.log.info("stopping a job's ranks", { job: m.job, client: this.who });
          void set.stop();
        }
        return;
      }
    }
  }

  private async start(m: StartMessage): Promise<void> {
    const job = m.job;
    const reply = (ok: boolean, error?: string, code?: "refused" | "failed") =>
      this.send({ type: "reply", id: m.id, ok, error, code });
    if (this.jobs.has(job)) {
      reply(false, `job ${job} already has ranks on this host`, "refused");
      return;
    }
    const bad = m.ranks.find((r) => r >= m.size);
    if (bad !== undefined || new Set(m.ranks).size !== m.ranks.length) {
      reply(false, `ranks ${JSON.stringify(m.ranks)} do not fit a job of size ${m.size}`, "refused");
      return;
    }
    const set = new RankSet(
      this.daemon.host,
      {
        job,
        size: m.size,
        path: m.path,
        program: m.program,
        argv: m.argv,
        ranks: m.ranks,
        key: m.key,
        pages: m.pages,
        qos: m.qos,
        maxHeapMb: m.maxHeapMb,
        env: m.env,
      },
      {
        output: (rank, stream, line) => {
          const l = line.length > MAX_OUTPUT_LINE ? `${line.slice(0, MAX_OUTPUT_LINE)}…[cut]` : line;
          if (!this.send({ type: "output", job, rank, stream, line: l }, true) && !this.channel.isClosed) {
            if (this.droppedLines++ === 0)
              this.log.warn("the launcher reads too slowly: dropping rank output", { client: this.who, job });
          }
        },
        addr: (rank, nic, endpoint) => this.send({ type: "addr", job, rank, nic, endpoint }),
        exit: (e) => {
          this.log.info("rank ended", {
            job,
            rank: e.rank,
            state: e.state,
            exitCode: e.exitCode,
            error: e.error?.message,
          });
          this.send({
            type: "exit",
            job,
            rank: e.rank,
            state: e.state,
            exitCode: e.exitCode,
            error: e.error
              ? {
                  name: String(e.error.name).slice(0, 256),
                  message: String(e.error.message).slice(0, 65536),
                  stack: e.error.stack?.slice(0, 65536),
                }
              : undefined,
            result: wireResult(e.result),
          });
        },
      },
    );
    this.jobs.set(job, set);
    this.log.info("starting ranks", {
      job,
      client: this.who,
      ranks: m.ranks,
      size: m.size,
      path: m.path,
      program: m.program,
    });
    try {
      await set.start();
      reply(true);
      void set.done.then(() => {
        if (this.jobs.get(job) === set) this.jobs.delete(job);
        this.log.info("the job's ranks here have ended", { job });
      });
    } catch (e) {
      const refused = e instanceof RankRefusal;
      this.log.warn(refused ? "refused a job" : "could not start a job's ranks", {
        job,
        error: (e as Error).message,
      });
      reply(false, (e as Error).message, refused ? "refused" : "failed");
      void set.done.then(() => {
        if (this.jobs.get(job) === set) this.jobs.delete(job);
      });
    }
  }
}

/** A rank's return value, if it can travel as JSON (and is not huge). */
function wireResult(v: unknown): unknown {
  if (v === undefined) return undefined;
  try {
    const s = JSON.stringify(v);
    return s !== undefined && s.length <= 256 * 1024 ? (JSON.parse(s) as unknown) : undefined;
  } catch {
    return undefined;
  }
}

export class HostDaemon {
  /** Authenticated control connections. */
  private readonly conns = new Set<ControlConnection>();
  /** Connections still in the handshake, oldest first (a Set keeps insertion order). */
  private readonly pending = new Set<ControlConnection>();
  private readonly refuse: (msg: string, fields?: LogFields) => void;
  private readonly linking = new Map<number, Promise<void>>();
  private stopped = false;
  readonly hostname = osHostname();
  /** Snapshots of the host (inspect.ts), taken when a client asks. */
  readonly inspector: Inspector;
  private inflight: Promise<HostSnapshot> | undefined;
  private last: { at: number; snapshot: HostSnapshot } | undefined;

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
  }

  /** Set when this host serves inspection only: what it is. */
  get observeOnly(): string | undefined {
    return this.opts.observeOnly;
  }

  /**
   * A snapshot of the host. Requests that arrive together share one, and one younger than
   * 100 ms is served again: many clients asking often cost the host a few snapshots a second.
   */
  snapshot(): Promise<HostSnapshot> {
    if (this.last && Date.now() - this.last.at < 100) return Promise.resolve(this.last.snapshot);
    this.inflight ??= this.inspector
      .snapshot()
      .then((snapshot) => {
        this.last = { at: Date.now(), snapshot };
        return snapshot;
      })
      .finally(() => {
        this.inflight = undefined;
      });
    return this.inflight;
  }

  /** A XenStore subtree, cut to what one control line can carry. */
  xenstore(
    path: string,
    maxNodes = 2000,
  ): { ok: true; tree: XenStoreTreeNode; nodes: number; truncated: boolean } | { ok: false; error: string } {
    let limit = Math.min(maxNodes, MAX_XENSTORE_NODES);
    for (;;) {
      let t: ReturnType<Inspector["xenstore"]>;
      try {
        t = this.inspector.xenstore(path, limit);
      } catch (e) {
        return { ok: false, error: (e as Error).message };
      }
      // A line carries at most MAX_LINE_BYTES: cut a listing of long values further.
      if (limit <= 16 || JSON.stringify(t.root).length < MAX_LINE_BYTES - 4096)
        return { ok: true, tree: t.root, nodes: t.nodes, truncated: t.truncated };
      limit = Math.floor(limit / 2);
    }
  }

  /**
   * Serves an existing Host on a control port, for inspection only (status, snapshot,
   * xenstore): the embedded host of `myrixen start`/`run`, so that `myrixen list` and the
   * dashboard see it. Clients prove `key` as with any host. stop() closes the port, not the host.
   */
  static async serve(host: Host, opts: ServeHostOptions): Promise<HostDaemon> {
    let daemon: HostDaemon | undefined;
    const early: net.Socket[] = [];
    const server = net.createServer((socket) => {
      if (daemon) daemon.accept(socket);
      else early.push(socket);
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
        observeOnly: opts.observeOnly,
        name: opts.name,
      },
      false,
    );
    server.on("error", (e) => opts.log.error("control listener error", { error: e.message }));
    for (const s of early) daemon.accept(s);
    return daemon;
  }

  get nicId(): number {
    return this.host.nicId;
  }

  static async start(opts: HostDaemonOptions): Promise<HostDaemon> {
    const log = opts.log;
    let daemon: HostDaemon | undefined;
    const early: net.Socket[] = [];
    const server = net.createServer((socket) => {
      if (daemon) daemon.accept(socket);
      else early.push(socket);
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
      host = await Host.start({ nicId, maxEndpoints: opts.maxEndpoints, guestQos: opts.qos });
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
      for (const s of early) s.destroy();
      await host?.stop().catch(() => undefined);
      throw e;
    }
    server.on("error", (e) => log.error("control listener error", { error: e.message }));
    for (const s of early) daemon.accept(s);
    log.info("host ready", {
      hostname: daemon.hostname,
      control: formatAddress(control),
      controlPort,
      link: formatAddress(daemon.linkAddress!),
      linkPort: daemon.linkAddress!.port,
      nicId: daemon.nicId,
      slots: opts.slots,
      pid: process.pid,
      version: WIRE_VERSION,
      clusterKey: opts.key.file ?? "in memory",
    });
    for (const p of opts.peers ?? []) void daemon.peerLoop(p);
    return daemon;
  }

  private accept(socket: net.Socket): void {
    if (this.stopped) {
      socket.destroy();
      return;
    }
    const maxPending = this.opts.maxPendingHandshakes ?? 64;
    if (this.pending.size >= maxPending) {
      // The oldest has had the longest to prove itself; a launcher takes a few round trips.
      const oldest = this.pending.values().next().value as ControlConnection;
      this.pending.delete(oldest);
      oldest.drop(`dropped unauthenticated: more than ${maxPending} connections in the handshake at once`);
    }
    this.pending.add(
      new ControlConnection(this, socket, this.log, {
        handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 2000,
        idleTimeoutMs: this.opts.idleTimeoutMs ?? 30_000,
        key: this.opts.key,
        refuse: this.refuse,
      }),
    );
  }

  /** @internal A client proved the key: it becomes a client, or the reason it cannot. */
  admit(c: ControlConnection): string | undefined {
    this.pending.delete(c);
    const max = this.opts.maxConnections ?? 256;
    if (this.conns.size >= max) return `the host serves ${max} clients already; try again later`;
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
    if (!WILDCARD.has(link.host)) return link.host;
    return plainAddress(socket?.localAddress) || "127.0.0.1";
  }

  /** What runs here: live guests and native processes, NIC links, jobs and their ranks. */
  async status(id: number): Promise<HostMessage> {
    const links = await this.links().catch(() => this.linkedNics);
    const guests = this.host.hypervisor
      .domains()
      .filter((d) => !d.privileged && (d.state === "running" || d.state === "booting")).length;
    const jobs = [...this.conns].flatMap((c) =>
      [...c.jobs].map(([job, set]) => ({ job, ranks: set.status() })),
    );
    return { type: "status", id, nicId: this.nicId, guests, links, jobs };
  }

  private linkedNics: number[] = [];

  private async links(): Promise<number[]> {
    this.linkedNics = (await this.host.nicInfo()).links;
    return this.linkedNics;
  }

  /**
   * Makes sure this NIC is linked to every peer's NIC. Only one side of a pair connects (the
   * lower NIC id, to the higher), so two hosts asked at once never make two links; the other
   * side waits for the link to appear. Rejects naming every peer not linked within timeoutMs.
   */
  async ensureLinks(peers: LinkPeer[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const results = await Promise.allSettled(peers.map((p) => this.linkTo(p, deadline, timeoutMs)));
    const problems = results.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
    if (problems.length > 0) throw new Error(problems.join("; "));
  }

  private linkTo(p: LinkPeer, deadline: number, timeoutMs: number): Promise<void> {
    if (p.nicId === this.nicId)
      return Promise.reject(
        new Error(`host ${p.label} has this host's own NIC id ${p.nicId}; give one of them another --nic-id`),
      );
    const busy = this.linking.get(p.nicId);
    if (busy) return busy;
    const run = (async () => {
      const where = `host ${p.label} (NIC ${p.nicId}, link ${formatAddress(p)})`;
      let last = "";
      while (Date.now() < deadline && !this.stopped) {
        if ((await this.links()).includes(p.nicId)) return;
        if (this.nicId < p.nicId) {
          const left = Math.max(1, Math.min(3000, deadline - Date.now()));
          try {
            await this.host.nic.attachLink({
              kind: "tcp",
              host: p.host,
              port: p.port,
              timeoutMs: left,
              key: this.opts.key.bytes,
            });
            this.log.info("NIC linked", { peer: p.label, peerNic: p.nicId });
            return;
          } catch (e) {
            last = (e as Error).message;
            this.log.debug("NIC link attempt failed", { peer: p.label, error: last });
          }
        }
        await sleep(this.nicId < p.nicId ? 200 : 50);
      }
      if ((await this.links().catch((): number[] => [])).includes(p.nicId)) return;
      throw new Error(
        this.nicId < p.nicId
          ? `no NIC link to ${where} within ${timeoutMs} ms: ${last || "unreachable"}`
          : `${where} did not link to this host's NIC within ${timeoutMs} ms (the lower NIC id connects)`,
      );
    })().finally(() => this.linking.delete(p.nicId));
    this.linking.set(p.nicId, run);
    return run;
  }

  /** Links to one `--peers` host, keeps retrying until it works, and relinks when the link drops. */
  private async peerLoop(peer: HostEntry): Promise<void> {
    let delay = 500;
    let failures = 0;
    while (!this.stopped) {
      let rh: RemoteHost | undefined;
      try {
        rh = await RemoteHost.connect(peer, {
          role: "peer",
          name: `${this.hostname}:${this.control.port}`,
          key: this.opts.key,
        });
        if (rh.nicId === this.nicId)
          throw new Error(`it has this host's NIC id ${this.nicId}; give one of them another --nic-id`);
        const link = this.linkAddress!;
        const me: LinkPeer = {
          nicId: this.nicId,
          host: WILDCARD.has(link.host) ? plainAddress(rh.localAddress) : link.host,
          port: link.port,
          label: formatAddress({ host: this.hostname, port: this.control.port }),
        };
        if (!rh.linkAddress)
          throw new Error(
            `it takes no links: it serves inspection only (${rh.observeOnly ?? "no link address"})`,
          );
        const them: LinkPeer = { nicId: rh.nicId, ...rh.linkAddress, label: peer.label };
        await Promise.all([rh.link([me], 10_000), this.ensureLinks([them], 10_000)]);
        rh.close();
        this.log.info("linked to peer", { peer: peer.label, peerNic: them.nicId });
        delay = 500;
        failures = 0;
        while (!this.stopped && (await this.links()).includes(them.nicId)) await sleep(2000);
        if (!this.stopped) this.log.warn("the link to a peer dropped: relinking", { peer: peer.label });
      } catch (e) {
        rh?.close();
        if (this.stopped) return;
        const fields = { peer: peer.label, error: (e as Error).message, retryMs: delay };
        if (failures++ === 0) this.log.warn("cannot link to peer yet: retrying", fields);
        else this.log.debug("cannot link to peer yet: retrying", fields);
        await sleep(delay);
        delay = Math.min(delay * 2, 10_000);
      }
    }
  }

  /** Stops every job's ranks, closes the control port and connections, stops the NIC and the hypervisor. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.log.info("host stopping");
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const c of this.conns)
      c.send({ type: "log", level: "warn", msg: "the host is shutting down: its ranks are stopped" });
    const jobs = [...this.conns].flatMap((c) => [...c.jobs.values()]);
    await Promise.all(jobs.map((s) => s.stop()));
    for (const c of this.conns) c.close("the host is stopping");
    for (const c of this.pending) c.close("the host is stopping");
    if (this.ownsHost) await this.host.stop();
    await Promise.race([closed, sleep(1500)]);
    this.log.info("host stopped", { jobsStopped: jobs.length });
  }
}

/**
 * A control connection to a host: one client (a launcher, an observer, a peer host) on the
 * control port (wire.ts). Every client is untrusted: until it proves the cluster key
 * (hello → challenge → auth → our hello with our proof, auth.ts) it may send only the
 * handshake, in lines of at most MAX_HANDSHAKE_LINE_BYTES, within handshakeTimeoutMs; after,
 * a client silent for idleTimeoutMs is dropped. Garbage, an oversized line, a wrong version or
 * an unknown message is logged and the connection dropped. An observer, or any client of a
 * host that serves inspection only, may ask status, snapshot and xenstore but not run jobs.
 * The jobs a client starts are its ClientJobs (client-jobs.ts), and the link requests it
 * makes wait under its abort signal (peer-links.ts): both end when it goes.
 */

import { setMaxListeners } from "node:events";
import type net from "node:net";
import type { Host } from "../host/host.js";
import type { HostSnapshot } from "../host/snapshot.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import { type ClusterKey, checkControlProof, controlProof, newNonce } from "./auth.js";
import type { HostCapacity } from "./capacity.js";
import { ClientJobs, type JobClient } from "./client-jobs.js";
import { formatAddress } from "./hostfile.js";
import { plainAddress } from "./listen.js";
import type { LogFields, Logger } from "./log.js";
import {
  ANSWERS_QUEUED_MAX,
  CLIENT_TYPES,
  type ClientMessage,
  ClientMessageSchema,
  type HostMessage,
  LineChannel,
  type LinkPeer,
  MAX_HANDSHAKE_LINE_BYTES,
  MAX_LINE_BYTES,
  validateMessage,
} from "./wire.js";

/** What a connection asks of the host that accepted it (HostDaemon). */
export interface ControlService {
  readonly host: Host;
  /** What all clients' jobs together may take (capacity.ts). */
  readonly capacity: HostCapacity;
  /** Set when the host serves inspection only: what it is. */
  readonly observeOnly: string | undefined;
  /** The client proved the key: it becomes a client, or the reason it cannot. */
  admit(c: ControlConnection): string | undefined;
  /** The connection closed. */
  forget(c: ControlConnection): void;
  /** The host's hello to an authenticated client, with the host's proof. */
  helloFor(socket: net.Socket, proof: string): HostMessage;
  status(id: number): Promise<HostMessage>;
  snapshot(): Promise<HostSnapshot>;
  xenstore(
    path: string,
    maxNodes?: number,
  ): { ok: true; tree: XenStoreTreeNode; nodes: number; truncated: boolean } | { ok: false; error: string };
  /** Stops waiting for the peers when `signal` aborts (the client went). */
  ensureLinks(peers: LinkPeer[], timeoutMs: number, signal?: AbortSignal): Promise<void>;
  /** The most peer NICs one client's open link requests may name together (the NIC's maxLinks). */
  readonly maxLinkPeers: number;
}

export interface ControlConnectionOptions {
  handshakeTimeoutMs: number;
  idleTimeoutMs: number;
  key: ClusterKey;
  /** Logs a refusal of an unauthenticated client (rate-limited: anyone can cause one). */
  refuse: (msg: string, fields: LogFields) => void;
}

let connectionIds = 0;

/** Status and snapshot requests one client may have under way before its next ones wait unread. */
export const INSPECTIONS_IN_FLIGHT = 4;
/**
 * Link requests one client may have open (each may wait up to 600 s): beyond, refused. Each
 * request's peers are bounded too (maxLinkPeers, each pair once), and every peer a request
 * names is a wait with its own timer in the host's memory: unbounded, 800 requests naming one
 * dead peer 1,024 times each filled a 768 MiB heap.
 */
export const LINK_REQUESTS_OPEN = 16;

export class ControlConnection implements JobClient {
  readonly id = ++connectionIds;
  /** The client's address (an IPv4-mapped IPv6 address as plain IPv4): the host's limits per address. */
  readonly address: string;
  /** Address and port, for the log. */
  readonly remote: string;
  private hello: Extract<ClientMessage, { type: "hello" }> | undefined;
  /** Our nonce, once the client said hello. */
  private hostNonce: string | undefined;
  /** The client proved the cluster key. */
  authenticated = false;
  /** The jobs this client runs on this host. */
  readonly jobs: ClientJobs;
  private handshakeTimer: NodeJS.Timeout;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly channel: LineChannel;
  /** Aborted when the connection closes: its link requests stop waiting. */
  private readonly gone = new AbortController();
  /**
   * The peers its open link requests name (NIC id and address: each pair may be a wait of
   * its own, peer-links.ts), with how many requests name each.
   */
  private readonly linkPeers = new Map<string, number>();
  /** Inspections (status, snapshot) being answered (inspect). */
  private inspecting = 0;
  /** Link requests not answered yet (at most LINK_REQUESTS_OPEN). */
  private linkRequests = 0;

  constructor(
    private readonly daemon: ControlService,
    private readonly socket: net.Socket,
    private readonly log: Logger,
    private readonly opts: ControlConnectionOptions,
  ) {
    this.jobs = new ClientJobs(daemon.host, this, log, daemon.capacity);
    // One abort listener per open link request (bounded by the peers they name, not by 10).
    setMaxListeners(0, this.gone.signal);
    this.address = plainAddress(socket.remoteAddress);
    this.remote = `${this.address}:${socket.remotePort}`;
    this.channel = new LineChannel(
      socket,
      {
        line: (v) => this.onLine(v),
        garbage: (why) => this.drop(`it sent ${why}`),
        close: (why) => this.onClose(why),
      },
      ANSWERS_QUEUED_MAX,
    );
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

  get who(): string {
    return this.hello ? `${this.hello.role} ${this.hello.name} (${this.remote})` : this.remote;
  }

  /** The role its hello named (known, and covered by its proof, when the host admits it). */
  get role(): "launcher" | "peer" | "observer" | undefined {
    return this.hello?.role;
  }

  /** It has sent a well-formed hello (the host drops those in the handshake that have not first). */
  get saidHello(): boolean {
    return this.hello !== undefined;
  }

  get isClosed(): boolean {
    return this.channel.isClosed;
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
    this.gone.abort();
    this.jobs.launcherGone();
    this.daemon.forget(this);
  }

  /**
   * The handshake: hello → challenge, then auth → our hello with our proof. Both proofs cover
   * the hello as we got it (auth.ts controlProof): its role is what the session may do, so a
   * proof made under another hello (an observer's, relayed as a launcher's) fails here.
   */
  private onHandshake(m: Extract<ClientMessage, { type: "hello" | "auth" }>): void {
    if (m.type === "hello") {
      this.hello = m;
      this.hostNonce = newNonce();
      this.send({ type: "challenge", nonce: this.hostNonce });
      return;
    }
    const hello = this.hello!;
    const nonce = this.hostNonce!;
    if (!checkControlProof(this.opts.key, "client", hello, nonce, m.proof)) {
      this.drop(
        "authentication failed: the client's proof does not match this host's cluster key and the hello it got (the client holds another key, or its hello was altered on the way)",
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
    // The idle limit starts now, not at the first request: a client that proves the key and
    // then says nothing (its machine gone) must not hold a maxConnections slot for ever.
    this.touch();
    this.log.info("client connected", { client: this.who });
    this.send(this.daemon.helloFor(this.socket, controlProof(this.opts.key, "host", hello, nonce)));
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
        this.inspect(this.daemon.status(m.id));
        return;
      case "snapshot":
        this.inspect(
          this.daemon.snapshot().then(
            (snapshot): HostMessage => ({ type: "snapshot", id: m.id, ok: true, snapshot }),
            (e: Error): HostMessage => ({ type: "snapshot", id: m.id, ok: false, error: e.message }),
          ),
        );
        return;
      case "xenstore":
        this.send({ type: "xenstore", id: m.id, ...this.daemon.xenstore(m.path, m.maxNodes) });
        return;
      case "link":
        this.link(m);
        return;
      case "start":
        void this.jobs.start(m);
        return;
      case "peers":
        this.jobs.peers(m.job, m.peers);
        return;
      case "states":
        this.send({ type: "states", id: m.id, ranks: this.jobs.states(m.job) });
        return;
      case "stop":
        this.jobs.stop(m.job);
        return;
    }
  }

  /**
   * Answers an inspection (status, snapshot) when it is ready. At most INSPECTIONS_IN_FLIGHT
   * are under way: then the client's next requests wait unread until one is answered (a
   * client could start a socket read's worth, ~1,800, and have their answers queued at once).
   */
  private inspect(answer: Promise<HostMessage>): void {
    if (++this.inspecting === INSPECTIONS_IN_FLIGHT) this.channel.holdReading(true);
    void answer
      .then((m) => this.send(m))
      .finally(() => {
        if (this.inspecting-- === INSPECTIONS_IN_FLIGHT) this.channel.holdReading(false);
      });
  }

  /**
   * Links the NIC to the peers a link request names, waiting at most as long as it asks and
   * no longer than the client stays. Its open requests together name at most maxLinkPeers
   * peers (each NIC id at each address counted once): beyond, the request is refused.
   */
  private link(m: Extract<ClientMessage, { type: "link" }>): void {
    // Each peer once: a request naming one peer 1,024 times made as many waits.
    const byPair = new Map(m.peers.map((p) => [`${p.nicId} at ${formatAddress(p)}`, p]));
    const ids = [...byPair.keys()];
    const added = ids.filter((id) => !this.linkPeers.has(id)).length;
    const bound = this.daemon.maxLinkPeers;
    if (this.linkPeers.size + added > bound) {
      const why =
        ids.length > bound
          ? `the link request names ${ids.length} peer NICs; this host's NIC links to at most ${bound} (myrixen host --max-links N)`
          : `the link request names ${added} peer NICs more than this client's open link requests (${this.linkPeers.size}); one client may have at most ${bound} being linked at once, as many as this host's NIC links to (myrixen host --max-links N)`;
      this.log.warn("refused a request", { client: this.who, type: m.type, reason: why });
      this.send({ type: "reply", id: m.id, ok: false, code: "refused", error: why });
      return;
    }
    if (this.linkRequests >= LINK_REQUESTS_OPEN) {
      const why = `this client has ${this.linkRequests} link requests open; one client may have at most ${LINK_REQUESTS_OPEN} (wait for one to be answered)`;
      this.log.warn("refused a request", { client: this.who, type: m.type, reason: why });
      this.send({ type: "reply", id: m.id, ok: false, code: "refused", error: why });
      return;
    }
    for (const id of ids) this.linkPeers.set(id, (this.linkPeers.get(id) ?? 0) + 1);
    this.linkRequests++;
    const done = () => {
      this.linkRequests--;
      for (const id of ids) {
        const n = (this.linkPeers.get(id) ?? 1) - 1;
        if (n === 0) this.linkPeers.delete(id);
        else this.linkPeers.set(id, n);
      }
    };
    this.daemon.ensureLinks([...byPair.values()], m.timeoutMs, this.gone.signal).then(
      () => {
        done();
        this.send({ type: "reply", id: m.id, ok: true });
      },
      (e: Error) => {
        done();
        if (this.gone.signal.aborted) return;
        this.log.warn("cannot link to the job's other hosts", { client: this.who, error: e.message });
        this.send({ type: "reply", id: m.id, ok: false, code: "failed", error: e.message });
      },
    );
  }
}

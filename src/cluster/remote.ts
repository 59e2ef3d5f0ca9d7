/**
 * The launcher's side of a control connection to a `myrixen host` (and a host's side when it
 * links to its `--peers`): connects, proves the cluster key and checks the host's proof
 * (wire.ts, auth.ts), and is that host as a JobTarget —
 * link requests, a job's ranks (their output, addresses and exits come back as events),
 * status. A connection that closes, sends garbage or stops answering pings makes the host
 * "lost": every job on it learns at once, with the reason.
 */
import net from "node:net";
import { hostname as osHostname } from "node:os";
import type { HostSnapshot } from "../host/snapshot.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import { type ClusterKey, checkControlProof, controlProof, newNonce } from "./auth.js";
import type { HostAddress } from "./hostfile.js";
import { formatAddress } from "./hostfile.js";
import type { JobTarget, TargetJob } from "./job.js";
import { programForHosts } from "./programs.js";
import { type RankEvents, RankRefusal, type RankStartSpec } from "./ranks.js";
import {
  type ClientMessage,
  HOST_TYPES,
  type HostHello,
  type HostMessage,
  HostMessageSchema,
  LineChannel,
  type LinkPeer,
  type SnapshotMessage,
  type StatusMessage,
  validateMessage,
  WIRE_VERSION,
  type XenStoreMessage,
} from "./wire.js";

export interface ConnectOptions {
  /** The cluster key (auth.ts): proved to the host, which proves it back. */
  key: ClusterKey;
  /** Connect plus handshake (default 5 s). */
  timeoutMs?: number;
  role?: "launcher" | "peer" | "observer";
  /** Who we are, for the host's log. */
  name?: string;
  /** Ping period (default 1 s); the host is lost after deadAfterMs (default 5 s) without a word. */
  pingMs?: number;
  deadAfterMs?: number;
  /** The host's log and warning messages. */
  onLog?: (level: string, msg: string) => void;
}

/** The host refused this side's proof of the cluster key, or could not prove its own. */
export class AuthError extends Error {}

/** A request waiting for its answer; `type`: what it asked (for the error if it never comes). */
type Pending = { type: string; resolve: (m: HostMessage) => void; reject: (e: Error) => void };

/** Why a RemoteHost that this side closed is gone (its jobs' failure and its requests' errors say so). */
const CLOSED_HERE = "its connection was closed on this side (RemoteHost.close())";

/** How long an inspection request (snapshot, xenstore) waits for its answer, ms. */
export const INSPECT_TIMEOUT_MS = 10_000;
/**
 * A link request is answered within its own timeout (the host gives up linking then and says
 * so) and this much more, or the host is taken for stuck: a host that answered pings and never
 * the link kept `myrixen run` waiting for ever when no --timeout was given.
 */
export const LINK_ANSWER_GRACE_MS = 5_000;
/**
 * A start request is answered once the host has made its ranks' domains (a program compiled,
 * a guest booted per rank: well under a second each); past this much, and START_ANSWER_PER_RANK_MS
 * per rank it was asked for, the host is taken for stuck and the job fails naming it, instead
 * of `myrixen run` waiting for ever (a host whose hypervisor thread hangs still answers pings).
 */
export const START_ANSWER_BASE_MS = 60_000;
export const START_ANSWER_PER_RANK_MS = 2_000;

export class RemoteHost implements JobTarget {
  readonly label: string;
  private readonly pending = new Map<number, Pending>();
  private readonly jobs = new Map<string, RankEvents>();
  private readonly lostCbs = new Set<(why: string) => void>();
  private nextId = 1;
  private lastHeard = Date.now();
  private pinger: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  /** Why the connection went down (undefined while up). */
  lostReason: string | undefined;

  private constructor(
    private readonly channel: LineChannel,
    readonly hello: HostHello,
    readonly address: HostAddress,
    label: string,
    private readonly opts: ConnectOptions,
  ) {
    this.label = label;
    const ping = opts.pingMs ?? 1000;
    const dead = opts.deadAfterMs ?? 5000;
    this.pinger = setInterval(() => {
      if (Date.now() - this.lastHeard > dead) this.lose(`no answer for ${dead} ms`);
      else this.channel.send({ type: "ping" } satisfies ClientMessage);
    }, ping);
    this.pinger.unref();
  }

  /**
   * Connects to a host's control port and runs the handshake (wire.ts): both sides prove the
   * cluster key. Rejects with a message naming the host and what to check; an AuthError when
   * the host refused our proof or could not prove its own.
   */
  static connect(address: HostAddress & { label?: string }, opts: ConnectOptions): Promise<RemoteHost> {
    const label = address.label ?? formatAddress(address);
    const timeoutMs = opts.timeoutMs ?? 5000;
    const key = opts.key;
    return new Promise((resolve, reject) => {
      let host: RemoteHost | undefined;
      let settled = false;
      // Both proofs cover this hello (auth.ts controlProof), so our role cannot be rewritten on the way.
      const hello = {
        type: "hello",
        version: WIRE_VERSION,
        role: opts.role ?? "launcher",
        name: opts.name ?? `${osHostname()}:${process.pid}`,
        nonce: newNonce(),
      } as const;
      let hostNonce: string | undefined;
      const fail = (why: string, auth = false) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(
          auth ? new AuthError(`host ${label} ${why}`) : new Error(`cannot reach host ${label}: ${why}`),
        );
      };
      const timer = setTimeout(() => fail(`no hello within ${timeoutMs} ms`), timeoutMs);
      const socket = net.connect({ host: address.host, port: address.port });
      socket.once("error", (e: NodeJS.ErrnoException) =>
        fail(
          e.code === "ECONNREFUSED"
            ? `connection refused (is \`myrixen host\` running there, on port ${address.port}?)`
            : e.code === "ENOTFOUND" || e.code === "EAI_AGAIN"
              ? `no such host name ${JSON.stringify(address.host)} (${e.code})`
              : e.message,
        ),
      );
      socket.once("connect", () => {
        const channel = new LineChannel(socket, {
          line: (value) => {
            if (host) {
              host.onLine(value);
              return;
            }
            const m = validateMessage(
              value,
              HostMessageSchema,
              HOST_TYPES,
              hostNonce === undefined ? "challenge" : "hello",
            );
            if (typeof m === "string") {
              const err = (value as { type?: unknown } | null)?.type === "error";
              const said = err ? String((value as { msg?: unknown }).msg).slice(0, 1000) : "";
              if (err && /^authentication failed/.test(said))
                fail(
                  `refused authentication: this side's cluster key (${key.source}) is not the host's`,
                  true,
                );
              else fail(err ? `the host refused: ${said}` : `not a MyriXen host (${m})`);
              return;
            }
            if (m.type === "challenge") {
              hostNonce = m.nonce;
              channel.send({
                type: "auth",
                proof: controlProof(key, "client", hello, m.nonce),
              } satisfies ClientMessage);
              return;
            }
            if (m.type !== "hello" || hostNonce === undefined) return;
            if (!checkControlProof(key, "host", hello, hostNonce, m.proof)) {
              fail(
                `did not prove the cluster key: it is not a host of this cluster, or it holds another key than ${key.source}`,
                true,
              );
              return;
            }
            settled = true;
            clearTimeout(timer);
            host = new RemoteHost(channel, m, address, label, opts);
            resolve(host);
          },
          garbage: (why) => {
            if (host) host.lose(`sent garbage: ${why}`);
            else fail(`not a MyriXen host (it sent ${why})`);
          },
          close: (why) => {
            if (host) host.lose(host.lastError ? `${host.lastError} (${why})` : why);
            else fail(why);
          },
        });
        channel.send(hello satisfies ClientMessage);
      });
    });
  }

  get hostname(): string {
    return this.hello.hostname;
  }

  get nicId(): number {
    return this.hello.nicId;
  }

  get slots(): number {
    return this.hello.slots;
  }

  /** Where its NIC accepts links; undefined for a host that takes no jobs (it serves inspection only). */
  get linkAddress(): HostAddress | undefined {
    return this.hello.link;
  }

  /** Why the host takes no jobs (the embedded host of `myrixen start`/`run`), or undefined. */
  get observeOnly(): string | undefined {
    return this.hello.observeOnly;
  }

  /**
   * What the host is now (src/host/snapshot.ts). Rejects with the host's reason if it cannot
   * say, or if it does not answer within `timeoutMs`.
   */
  async snapshot(timeoutMs = INSPECT_TIMEOUT_MS): Promise<HostSnapshot> {
    const m = (await this.request({ type: "snapshot", id: 0 }, timeoutMs)) as SnapshotMessage;
    if (!m.ok || !m.snapshot) throw new Error(`host ${this.label}: ${m.error ?? "no snapshot"}`);
    return m.snapshot as HostSnapshot;
  }

  /** A XenStore subtree of the host (xenstore-ls). */
  async xenstore(
    path: string,
    maxNodes?: number,
    timeoutMs = INSPECT_TIMEOUT_MS,
  ): Promise<{ tree: XenStoreTreeNode; nodes: number; truncated: boolean }> {
    const m = (await this.request({ type: "xenstore", id: 0, path, maxNodes }, timeoutMs)) as XenStoreMessage;
    if (!m.ok || !m.tree) throw new Error(m.error ?? `host ${this.label} sent no tree`);
    return { tree: m.tree, nodes: m.nodes ?? 0, truncated: m.truncated ?? false };
  }

  /** Our end of the control connection (the address the host sees us at). */
  get localAddress(): string | undefined {
    return this.channel.socket.localAddress;
  }

  get isLost(): boolean {
    return this.lostReason !== undefined;
  }

  link(peers: LinkPeer[], timeoutMs: number): Promise<void> {
    return this.request({ type: "link", id: 0, peers, timeoutMs }, timeoutMs + LINK_ANSWER_GRACE_MS).then(
      () => undefined,
    );
  }

  status(): Promise<StatusMessage> {
    return this.request({ type: "status", id: 0 }) as Promise<StatusMessage>;
  }

  start(spec: RankStartSpec, events: RankEvents, answerWithinMs?: number): TargetJob {
    const job = spec.job;
    this.jobs.set(job, events);
    const within = answerWithinMs ?? START_ANSWER_BASE_MS + START_ANSWER_PER_RANK_MS * spec.ranks.length;
    const started = this.request(
      {
        type: "start",
        id: 0,
        job,
        size: spec.size,
        path: spec.path,
        program: programForHosts(spec.program),
        argv: spec.argv,
        ranks: spec.ranks,
        key: spec.key,
        pages: spec.pages,
        qos: spec.qos,
        maxHeapMb: spec.maxHeapMb,
        maxBufferMb: spec.maxBufferMb,
        env: spec.env,
      },
      within,
    ).then(() => undefined);
    return {
      started,
      peers: (peers) => {
        this.channel.send({ type: "peers", job, peers } satisfies ClientMessage);
      },
      stop: async () => {
        this.channel.send({ type: "stop", job } satisfies ClientMessage);
      },
      states: async () => {
        const m = await this.request({ type: "states", id: 0, job });
        return m.type === "states" ? m.ranks : [];
      },
      release: () => {
        if (this.jobs.get(job) === events) this.jobs.delete(job);
      },
    };
  }

  onLost(cb: (why: string) => void): () => void {
    if (this.lostReason !== undefined) {
      const why = this.lostReason;
      queueMicrotask(() => cb(why));
      return () => {};
    }
    this.lostCbs.add(cb);
    return () => this.lostCbs.delete(cb);
  }

  /**
   * Ends the connection (a host stops the jobs this connection started). Whatever still waits
   * on it hears so now, as when the host is lost: every request waiting for its answer rejects
   * naming the host, and every job on it (onLost) learns the host is gone — a Job.run whose
   * host is closed mid-job ends, failed, instead of waiting for ever.
   */
  close(): void {
    this.lose(CLOSED_HERE, true);
  }

  /**
   * Sends a request; its answer resolves the promise. With `timeoutMs`, a host that does not
   * answer in time rejects it and its entry goes (a host that answers pings but not requests
   * left one entry per poll of a long-running dashboard, and `myrixen list` waiting for ever).
   */
  private request(msg: ClientMessage & { id: number }, timeoutMs?: number): Promise<HostMessage> {
    if (this.lostReason !== undefined)
      return Promise.reject(new Error(`host ${this.label} is gone: ${this.lostReason}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (timeoutMs === undefined) {
        this.pending.set(id, { type: msg.type, resolve, reject });
      } else {
        const timer = setTimeout(() => {
          if (!this.pending.delete(id)) return;
          reject(new Error(`host ${this.label} did not answer its ${msg.type} request in ${timeoutMs} ms`));
        }, timeoutMs);
        timer.unref();
        const done = () => clearTimeout(timer);
        this.pending.set(id, {
          type: msg.type,
          resolve: (m) => {
            done();
            resolve(m);
          },
          reject: (e) => {
            done();
            reject(e);
          },
        });
      }
      this.channel.send({ ...msg, id });
    });
  }

  private onLine(value: unknown): void {
    const m = validateMessage(value, HostMessageSchema, HOST_TYPES, null);
    if (typeof m === "string") {
      this.lose(`sent a bad message: ${m}`);
      return;
    }
    this.lastHeard = Date.now();
    switch (m.type) {
      case "reply": {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.ok) p.resolve(m);
        else {
          const e =
            m.code === "refused" ? new RankRefusal(m.error ?? "refused") : new Error(m.error ?? "failed");
          p.reject(e);
        }
        return;
      }
      case "status":
      case "states":
      case "snapshot":
      case "xenstore": {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        p.resolve(m);
        return;
      }
      case "output":
        this.jobs.get(m.job)?.output(m.rank, m.stream, m.line);
        return;
      case "output-file":
        this.jobs.get(m.job)?.file(m.rank, m.file, m.text, m.error);
        return;
      case "addr":
        this.jobs.get(m.job)?.addr(m.rank, m.nic, m.endpoint);
        return;
      case "exit": {
        let error: Error | undefined;
        if (m.error) {
          error = new Error(m.error.message);
          error.name = m.error.name;
          if (m.error.stack) error.stack = m.error.stack;
        }
        this.jobs
          .get(m.job)
          ?.exit({ rank: m.rank, state: m.state, exitCode: m.exitCode, error, result: m.result });
        return;
      }
      case "log":
        this.opts.onLog?.(m.level, m.msg);
        return;
      case "error":
        this.lastError = `the host said: ${m.msg}`;
        return;
      default:
        return;
    }
  }

  /**
   * The connection is down (`closing`: this side closed it, and what it sent still leaves):
   * every request still waiting rejects, every job on this host hears why, once.
   */
  private lose(why: string, closing = false): void {
    if (this.lostReason !== undefined) return;
    this.lostReason = why;
    clearInterval(this.pinger);
    if (closing) this.channel.end();
    else this.channel.destroy(why);
    for (const p of this.pending.values())
      p.reject(
        new Error(
          closing
            ? `host ${this.label}: ${why} before it answered the ${p.type} request`
            : `host ${this.label} is gone: ${why}`,
        ),
      );
    this.pending.clear();
    for (const cb of [...this.lostCbs]) cb(why);
    this.lostCbs.clear();
  }
}

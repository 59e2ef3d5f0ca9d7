/**
 * The live dashboard: a web page (static/, no build step) fed over a WebSocket with what the
 * hosts look like now — their snapshots (src/host/snapshot.ts) and the rates between the
 * last two — every `intervalMs` (500 ms), so that a path switch or a guest's death shows
 * within a second.
 *
 * Costs: nothing while nobody watches (no snapshot is taken without a client); with clients,
 * one snapshot per host per interval, shared by all of them. Snapshots read counters the
 * components keep anyway: there is no per-message hook.
 *
 * Security: it binds 127.0.0.1 by default. On any other address it asks for the cluster key:
 * the page gets a nonce (GET /auth/challenge) and posts HMAC-SHA256(key, label ‖ nonce),
 * computed in the browser (static/sha256.js); the key never crosses the network, and a good
 * proof gets a random session cookie (HttpOnly, SameSite=Strict) that the API and the
 * WebSocket require. A WebSocket from another origin is refused (a web page the user visits
 * cannot read the dashboard), and so is a Host header that is not the dashboard's own when
 * it binds the loopback (DNS rebinding). Challenges are signed, not stored (see Challenges),
 * so asking for any number of them crowds out nobody's. Clients are bounded (maxClients
 * WebSockets, 64 sessions, MAX_HTTP_CONNECTIONS other connections, the oldest going);
 * a client that sends garbage is dropped with a logged reason; one that reads too slowly
 * misses updates and, after 30 s behind, is dropped.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type net from "node:net";
import { fileURLToPath } from "node:url";
import websocket from "@fastify/websocket";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { WebSocket } from "ws";
import type { ClusterKey } from "../cluster/auth.js";
import { type Logger, rateLimitedWarn } from "../cluster/log.js";
import { type HostRates, type HostSnapshot, rates, type TrafficPath } from "../host/snapshot.js";

export const DEFAULT_DASHBOARD_PORT = 7480;
const AUTH_LABEL = "MyriXen dashboard v1\0";
const COOKIE = "myrixen_session";
const MAX_SESSIONS = 64;
const CHALLENGE_MS = 60_000;
/** Challenges remembered as used (within their lifetime): see Challenges. */
export const MAX_USED_CHALLENGES = 1024;
const SESSION_MS = 12 * 3600_000;
/** Latency samples kept per path (a window of the last minute or so). */
const LATENCY_WINDOW = 240;
/** A client this far behind (bytes queued) misses updates; behind for longer than SLOW_MS, it is dropped. */
const MAX_BUFFERED = 2 << 20;
const SLOW_MS = 30_000;
/**
 * HTTP connections at once, WebSockets aside (maxClients bounds those). Anyone who reaches the
 * port can open them (Node sets no bound), so beyond this the OLDEST is closed, as the control
 * and link ports drop their oldest unauthenticated connection: a browser's few come back.
 */
export const MAX_HTTP_CONNECTIONS = 128;

/** Where snapshots of one host come from: the Host in this process, or a host's control port. */
export interface DashboardSource {
  label: string;
  snapshot(): Promise<HostSnapshot>;
  close?(): void;
}

export interface DashboardOptions {
  host?: string;
  port?: number;
  sources: DashboardSource[];
  /** The cluster key a browser must prove when the dashboard does not bind the loopback. */
  key?: ClusterKey;
  log: Logger;
  intervalMs?: number;
  maxClients?: number;
  /** How long a sign-in challenge stays good (default 60 s). */
  challengeMs?: number;
}

export interface HostState {
  label: string;
  snapshot?: HostSnapshot;
  rates?: HostRates;
  error?: string;
}

export interface DashboardUpdate {
  type: "update";
  time: number;
  intervalMs: number;
  hosts: HostState[];
  /** Per path: the window of latency samples (µs) the histograms are drawn from. */
  latency: Record<TrafficPath, number[]>;
}

/** The proof a browser sends for `nonce` (hex): HMAC-SHA256 over the label and the nonce's bytes. */
export function dashboardProof(key: Buffer, nonce: string): string {
  return createHmac("sha256", key)
    .update(AUTH_LABEL, "latin1")
    .update(Buffer.from(nonce, "hex"))
    .digest("hex");
}

/**
 * Sign-in challenges, stateless so that nobody can crowd out another's. A nonce (32 bytes, 64
 * hex as before) is when it was issued (6 bytes, ms of this process's monotonic clock) ‖ 10
 * random bytes ‖ the first 16 bytes of HMAC-SHA256 of both under a random secret of this
 * server. The server keeps no pending challenge: it checks a returned nonce's tag and age.
 * (It used to keep the last 64 given out, the oldest going: anyone who reached the port could
 * ask for 64 between a user's GET and POST and so refuse every sign-in.) One-time use needs
 * only the challenges already used within their lifetime, and only a proof of the key adds
 * one, so strangers cannot grow that set; key holders can, up to MAX_USED_CHALLENGES, past
 * which the first used is forgotten and every challenge issued no later than it counts as
 * expired (never replayable).
 */
class Challenges {
  private readonly secret = randomBytes(32);
  /** nonce → when it was issued, in the order they were used. */
  private readonly used = new Map<string, number>();
  /** Challenges issued at or before this are refused (their used entry may be forgotten). */
  private floor = -1;

  constructor(readonly lifetimeMs: number) {}

  private tag(head: Buffer): Buffer {
    return createHmac("sha256", this.secret)
      .update("MyriXen dashboard challenge\0", "latin1")
      .update(head)
      .digest()
      .subarray(0, 16);
  }

  issue(): string {
    const head = Buffer.alloc(16);
    head.writeUIntBE(Math.floor(performance.now()), 0, 6);
    randomBytes(10).copy(head, 6);
    return Buffer.concat([head, this.tag(head)]).toString("hex");
  }

  /** Why `nonce` (64 hex) cannot sign in, or undefined if it can. */
  refusal(nonce: string): "unknown" | "expired" | "used" | undefined {
    const b = Buffer.from(nonce, "hex");
    if (!timingSafeEqual(this.tag(b.subarray(0, 16)), b.subarray(16))) return "unknown";
    const issued = b.readUIntBE(0, 6);
    if (performance.now() - issued > this.lifetimeMs || issued <= this.floor) return "expired";
    if (this.used.has(nonce)) return "used";
    return undefined;
  }

  /** Marks a good challenge used (after refusal() said it can sign in and its proof matched). */
  use(nonce: string): void {
    const now = performance.now();
    for (const [n, issued] of this.used) if (now - issued > this.lifetimeMs) this.used.delete(n);
    while (this.used.size >= MAX_USED_CHALLENGES) {
      const [n, issued] = this.used.entries().next().value!;
      this.used.delete(n);
      this.floor = Math.max(this.floor, issued);
    }
    this.used.set(nonce, Buffer.from(nonce, "hex").readUIntBE(0, 6));
  }
}

function isLoopbackBind(host: string): boolean {
  return host === "127.0.0.1" || host === "::1" || host === "localhost";
}

function staticDir(): string {
  for (const rel of ["./static/", "../../../src/dashboard/static/"]) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${p}index.html`)) return p;
  }
  throw new Error("the dashboard's page (src/dashboard/static/) is missing");
}

const STATIC: Record<string, string> = {
  "/": "index.html",
  "/app.js": "app.js",
  "/sha256.js": "sha256.js",
  "/style.css": "style.css",
};
const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
};

function cookieOf(req: FastifyRequest): string | undefined {
  const h = req.headers.cookie;
  if (typeof h !== "string") return undefined;
  for (const part of h.split(";")) {
    const [k, v] = part.trim().split("=", 2);
    if (k === COOKIE && v && /^[0-9a-f]{64}$/.test(v)) return v;
  }
  return undefined;
}

export class Dashboard {
  private readonly clients = new Map<WebSocket, { slowSince?: number }>();
  private readonly challenges: Challenges;
  private readonly sessions = new Map<string, number>();
  private readonly prev = new Map<string, HostSnapshot>();
  private readonly latency: Record<TrafficPath, number[]> = { bypass: [], native: [], split: [] };
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private last: DashboardUpdate | undefined;
  private readonly warn: (msg: string, fields?: Record<string, unknown>) => void;
  readonly authRequired: boolean;
  private stopped = false;

  private constructor(
    private readonly app: FastifyInstance,
    readonly host: string,
    readonly port: number,
    private readonly opts: DashboardOptions,
    /** The HTTP connections bounded by MAX_HTTP_CONNECTIONS. */
    private readonly httpConns: Set<net.Socket> = new Set(),
  ) {
    this.authRequired = !isLoopbackBind(host);
    this.challenges = new Challenges(opts.challengeMs ?? CHALLENGE_MS);
    this.warn = rateLimitedWarn(opts.log, "more dashboard clients refused (not logged one by one)");
  }

  get url(): string {
    const h = this.host.includes(":") ? `[${this.host}]` : this.host === "0.0.0.0" ? "127.0.0.1" : this.host;
    return `http://${h}:${this.port}/`;
  }

  static async start(opts: DashboardOptions): Promise<Dashboard> {
    const host = opts.host ?? "127.0.0.1";
    if (!isLoopbackBind(host) && !opts.key)
      throw new Error(`the dashboard on ${host} needs the cluster key (it binds beyond the loopback)`);
    const app = Fastify({ logger: false, bodyLimit: 4096, connectionTimeout: 30_000 });
    // Set once the server listens (routes close over it).
    const holder: { d?: Dashboard } = {};
    // Every HTTP connection but the WebSockets (onSocket takes those out), oldest first.
    const conns = new Set<net.Socket>();
    app.server.on("connection", (s: net.Socket) => {
      conns.add(s);
      s.once("close", () => conns.delete(s));
      if (conns.size > MAX_HTTP_CONNECTIONS) {
        const oldest = conns.values().next().value as net.Socket;
        conns.delete(oldest);
        oldest.destroy();
        holder.d?.warn("dashboard connection dropped", {
          reason: `more than ${MAX_HTTP_CONNECTIONS} HTTP connections at once: the oldest goes`,
        });
      }
    });
    await app.register(websocket, { options: { maxPayload: 1024 } });
    const dir = staticDir();
    const files = new Map<string, { body: Buffer; type: string }>();
    for (const [route, file] of Object.entries(STATIC))
      files.set(route, { body: readFileSync(`${dir}${file}`), type: TYPES[file.split(".").pop()!] });
    const require = createRequire(import.meta.url);
    files.set("/vendor/uPlot.iife.min.js", {
      body: readFileSync(require.resolve("uplot/dist/uPlot.iife.min.js")),
      type: TYPES.js,
    });
    files.set("/vendor/uPlot.min.css", {
      body: readFileSync(require.resolve("uplot/dist/uPlot.min.css")),
      type: TYPES.css,
    });

    app.addHook("onRequest", async (req, reply) => {
      const d = holder.d!;
      if (!d.hostHeaderOk(req)) {
        d.warn("dashboard request refused", { from: req.ip, reason: "a Host header not this dashboard's" });
        return reply.code(421).send({ error: "wrong Host header" });
      }
    });
    for (const [route, f] of files)
      app.get(route, (_req, reply) =>
        reply.header("content-type", f.type).header("cache-control", "no-store").send(f.body),
      );
    app.get("/favicon.ico", (_req, reply) => reply.code(204).send());
    app.get("/auth/state", (req) => ({ required: holder.d!.authRequired, ok: holder.d!.authorized(req) }));
    app.get("/auth/challenge", (_req, reply) => holder.d!.challenge(reply));
    app.post("/auth", (req, reply) => holder.d!.login(req, reply));
    app.get("/api/state", async (req, reply) => {
      const d = holder.d!;
      if (!d.authorized(req)) return reply.code(401).send({ error: "prove the cluster key first (/auth)" });
      return await d.current();
    });
    app.get("/api/domain/:host/:domid", async (req, reply) => {
      const d = holder.d!;
      if (!d.authorized(req)) return reply.code(401).send({ error: "prove the cluster key first (/auth)" });
      const { host: h, domid } = req.params as { host: string; domid: string };
      const state = await d.current();
      const hs = state.hosts.find((x) => x.label === h);
      if (!hs)
        return reply.code(404).send({
          error: `no host ${JSON.stringify(h)}: hosts are ${state.hosts.map((x) => x.label).join(", ")}`,
        });
      const dom = /^\d+$/.test(domid)
        ? hs.snapshot?.domains.find((x) => x.domid === Number(domid))
        : undefined;
      if (!dom)
        return reply.code(404).send({
          error: `no domain ${JSON.stringify(domid)} on host ${h}: domains are ${hs.snapshot?.domains.map((x) => `${x.domid} (${x.name})`).join(", ") ?? "unknown"}`,
        });
      return {
        domain: dom,
        endpoints: hs.snapshot?.endpoints.filter((e) => e.domid === dom.domid) ?? [],
        rates: hs.rates?.domains[dom.domid],
      };
    });
    app.register(async (scoped) => {
      scoped.get(
        "/ws",
        {
          websocket: true,
          preValidation: async (req, reply) => {
            const d = holder.d!;
            const why = d.wsRefusal(req);
            if (why) {
              d.warn("dashboard WebSocket refused", { from: req.ip, reason: why });
              return reply.code(why.startsWith("prove") ? 401 : 403).send({ error: why });
            }
          },
        },
        (socket, req) => holder.d!.onSocket(socket, req.raw.socket),
      );
    });
    app.setNotFoundHandler((req, reply) =>
      reply.code(404).send({ error: `no such page: ${req.url.slice(0, 200)}` }),
    );
    app.setErrorHandler((e: Error & { statusCode?: number }, req, reply) => {
      holder.d?.warn("bad dashboard request", { from: req.ip, reason: e.message.slice(0, 200) });
      reply.code(e.statusCode && e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 400).send({
        error: e.message.slice(0, 200),
      });
    });
    try {
      await app.listen({ host, port: opts.port ?? DEFAULT_DASHBOARD_PORT });
    } catch (e) {
      await app.close().catch(() => undefined);
      const code = (e as NodeJS.ErrnoException).code;
      const at = `${host}:${opts.port ?? DEFAULT_DASHBOARD_PORT}`;
      throw new Error(
        code === "EADDRINUSE"
          ? `the dashboard cannot listen on ${at}: already in use (another dashboard? give another port)`
          : `the dashboard cannot listen on ${at}: ${(e as Error).message}`,
      );
    }
    const addr = app.server.address();
    const port = typeof addr === "object" && addr ? addr.port : (opts.port ?? DEFAULT_DASHBOARD_PORT);
    const d = new Dashboard(app, host, port, opts, conns);
    holder.d = d;
    // Clients that vanish without a close (a browser killed mid-stream) are found by pings.
    d.timer = setInterval(() => d.sweep(), 10_000);
    d.timer.unref();
    return d;
  }

  /** On the loopback, only Host headers naming the loopback (no DNS rebinding). */
  private hostHeaderOk(req: FastifyRequest): boolean {
    if (this.authRequired) return true;
    const h = (req.headers.host ?? "").toLowerCase();
    const name = h.startsWith("[") ? h.slice(0, h.indexOf("]") + 1) : h.split(":")[0];
    return name === "127.0.0.1" || name === "localhost" || name === "[::1]";
  }

  private authorized(req: FastifyRequest): boolean {
    if (!this.authRequired) return true;
    const c = cookieOf(req);
    if (!c) return false;
    const exp = this.sessions.get(c);
    if (exp === undefined || exp < Date.now()) {
      this.sessions.delete(c);
      return false;
    }
    return true;
  }

  private wsRefusal(req: FastifyRequest): string | undefined {
    const origin = req.headers.origin;
    if (origin !== undefined) {
      let o: URL;
      try {
        o = new URL(origin);
      } catch {
        return "a WebSocket with a malformed Origin";
      }
      if (o.host !== req.headers.host) return `a WebSocket from another origin (${origin.slice(0, 100)})`;
    }
    if (!this.authorized(req)) return "prove the cluster key first (/auth)";
    if (this.clients.size >= (this.opts.maxClients ?? 16))
      return `the dashboard serves ${this.opts.maxClients ?? 16} clients already`;
    return undefined;
  }

  private challenge(reply: FastifyReply) {
    const nonce = this.challenges.issue();
    return reply.header("cache-control", "no-store").send({ nonce, label: AUTH_LABEL.slice(0, -1) });
  }

  private login(req: FastifyRequest, reply: FastifyReply) {
    const body = req.body as { nonce?: unknown; proof?: unknown } | undefined;
    const nonce =
      typeof body?.nonce === "string" && /^[0-9a-f]{64}$/.test(body.nonce) ? body.nonce : undefined;
    const proof =
      typeof body?.proof === "string" && /^[0-9a-f]{64}$/.test(body.proof) ? body.proof : undefined;
    if (!nonce || !proof) {
      this.warn("dashboard login refused", { from: req.ip, reason: "a body without a nonce and a proof" });
      return reply.code(400).send({ error: 'send {"nonce": <from /auth/challenge>, "proof": <64 hex>}' });
    }
    if (!this.authRequired) return reply.send({ ok: true });
    const bad = this.challenges.refusal(nonce);
    if (bad) {
      const what =
        bad === "unknown"
          ? "the challenge is not one this dashboard gave out (or it has restarted since)"
          : bad === "expired"
            ? `the challenge expired (each lasts ${Math.round(this.challenges.lifetimeMs / 1000)} s)`
            : "the challenge was used already (each signs in once)";
      this.warn("dashboard login refused", { from: req.ip, reason: what });
      return reply.code(403).send({
        error: `${what}: get a new one and prove the key again (the page does when you sign in again)`,
      });
    }
    const want = Buffer.from(dashboardProof(this.opts.key!.bytes, nonce), "hex");
    const got = Buffer.from(proof, "hex");
    if (!timingSafeEqual(want, got)) {
      this.warn("dashboard login refused", {
        from: req.ip,
        reason: "a proof that does not match the cluster key",
      });
      return reply
        .code(403)
        .send({ error: "that is not the cluster key: the proof does not match it (the challenge was good)" });
    }
    this.challenges.use(nonce);
    const now = Date.now();
    for (const [s, e] of this.sessions) if (e < now) this.sessions.delete(s);
    while (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    const session = randomBytes(32).toString("hex");
    this.sessions.set(session, now + SESSION_MS);
    this.opts.log.info("dashboard login", { from: req.ip });
    return reply
      .header(
        "set-cookie",
        `${COOKIE}=${session}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${SESSION_MS / 1000}`,
      )
      .send({ ok: true });
  }

  private onSocket(socket: WebSocket, raw: net.Socket): void {
    // An authorised WebSocket counts against maxClients, not the HTTP bound.
    this.httpConns.delete(raw);
    this.clients.set(socket, {});
    socket.on("message", (data, isBinary) => {
      let ok = false;
      if (!isBinary) {
        try {
          const m = JSON.parse(data.toString()) as { type?: unknown };
          ok = m?.type === "ping";
        } catch {
          ok = false;
        }
      }
      if (!ok) {
        this.warn("dashboard client dropped", { reason: "it sent something other than a ping" });
        socket.close(1008, "the dashboard accepts only pings");
      }
    });
    socket.on("error", () => socket.terminate());
    socket.on("close", () => {
      this.clients.delete(socket);
      if (this.clients.size === 0) this.idle();
    });
    (socket as WebSocket & { alive?: boolean }).alive = true;
    socket.on("pong", () => {
      (socket as WebSocket & { alive?: boolean }).alive = true;
    });
    if (this.last) this.sendTo(socket, JSON.stringify(this.last));
    this.schedule();
  }

  private sweep(): void {
    for (const s of this.clients.keys()) {
      const x = s as WebSocket & { alive?: boolean };
      if (x.alive === false) {
        s.terminate();
        continue;
      }
      x.alive = false;
      try {
        s.ping();
      } catch {
        s.terminate();
      }
    }
  }

  /** Starts the update loop (it runs only while clients are connected). */
  private schedule(): void {
    if (this.timerTick || this.stopped) return;
    const every = this.opts.intervalMs ?? 500;
    this.timerTick = setInterval(() => {
      if (!this.ticking) void this.tick(true);
    }, every);
    void this.tick(true);
  }

  private timerTick: NodeJS.Timeout | undefined;

  private idle(): void {
    clearInterval(this.timerTick);
    this.timerTick = undefined;
    // Rates restart from the next snapshot when someone watches again.
    this.prev.clear();
  }

  /** The last update if it is younger than an interval, else a new one (API callers cannot make it poll faster). */
  async current(): Promise<DashboardUpdate> {
    const every = this.opts.intervalMs ?? 500;
    if (this.last && Date.now() - this.last.time < every) return this.last;
    this.pending ??= this.tick(false).finally(() => {
      this.pending = undefined;
    });
    return this.pending;
  }

  private pending: Promise<DashboardUpdate> | undefined;

  /** One round: a snapshot of every host, rates against the last, sent to every client. */
  async tick(broadcast: boolean): Promise<DashboardUpdate> {
    this.ticking = true;
    try {
      const hosts = await Promise.all(
        this.opts.sources.map(async (src): Promise<HostState> => {
          try {
            const snap = await withTimeout(src.snapshot(), 3000, `host ${src.label} did not answer in 3 s`);
            const before = this.prev.get(src.label);
            this.prev.set(src.label, snap);
            const r = before && before.time < snap.time ? rates(before, snap) : undefined;
            if (r)
              for (const p of ["bypass", "native", "split"] as const) {
                const w = this.latency[p];
                w.push(...r.latencyUs[p]);
                if (w.length > LATENCY_WINDOW) w.splice(0, w.length - LATENCY_WINDOW);
              }
            return { label: src.label, snapshot: snap, rates: r };
          } catch (e) {
            this.prev.delete(src.label);
            return { label: src.label, error: (e as Error).message };
          }
        }),
      );
      const update: DashboardUpdate = {
        type: "update",
        time: Date.now(),
        intervalMs: this.opts.intervalMs ?? 500,
        hosts,
        latency: this.latency,
      };
      this.last = update;
      if (broadcast && this.clients.size > 0) {
        const text = JSON.stringify(update);
        for (const s of this.clients.keys()) this.sendTo(s, text);
      }
      return update;
    } finally {
      this.ticking = false;
    }
  }

  private sendTo(s: WebSocket, text: string): void {
    const c = this.clients.get(s);
    if (!c || s.readyState !== s.OPEN) return;
    if (s.bufferedAmount > MAX_BUFFERED) {
      c.slowSince ??= Date.now();
      if (Date.now() - c.slowSince > SLOW_MS) {
        this.warn("dashboard client dropped", {
          reason: `it has not read its updates for ${SLOW_MS / 1000} s`,
        });
        s.terminate();
      }
      return;
    }
    c.slowSince = undefined;
    s.send(text);
  }

  /** Number of WebSocket clients now. */
  get clientCount(): number {
    return this.clients.size;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    this.idle();
    for (const s of this.clients.keys()) s.terminate();
    await this.app.close();
    for (const src of this.opts.sources) src.close?.();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, why: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, reject) => {
      t = setTimeout(() => reject(new Error(why)), ms);
    }),
  ]);
}

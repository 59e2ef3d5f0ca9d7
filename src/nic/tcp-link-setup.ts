/**
 * Setting up TCP links (tcp-link.ts): the listener that accepts peers and pairs each main
 * connection with its bulk one, and the dialer that opens both; each connection proves the
 * cluster key in the handshake (tcp-handshake.ts) before it carries a frame.
 *
 * Accepted sockets get TCP_ACCEPT_DEADLINE_MS (2 s) from accept for the whole handshake, and
 * a listener keeps at most TCP_MAX_PENDING_HANDSHAKES sockets in the handshake: a new one
 * beyond that drops one that has not said hello if there is one, the oldest of the busiest
 * address block (pending-handshakes.ts), so neither a static flood of idle connections nor a
 * fast stream of them drops a real peer (which says hello at once and finishes in a round
 * trip). Refusals are logged at most
 * REFUSALS_LOGGED_PER_WINDOW per 10 s per listener, then counted in one summary line.
 */
import net from "node:net";
import { PendingHandshakes } from "./pending-handshakes.js";
import { DetailedError, NicError } from "./status.js";
import {
  checkKey,
  checkNicId,
  checkPort,
  Handshake,
  type HandshakeError,
  type HandshakeRefusal,
  type HandshakeResult,
  LANE_BULK,
  LANE_MAIN,
  REFUSED_LINKS,
  REFUSED_LINKS_PER_ADDRESS,
} from "./tcp-handshake.js";
import {
  addressOf,
  defaultLog,
  TCP_ACCEPT_DEADLINE_MS,
  TCP_HANDSHAKE_TIMEOUT_MS,
  TCP_MAX_PENDING_HANDSHAKES,
  TcpLink,
  type TcpLinkLog,
  type TcpLinkLogFields,
  type TcpLinkOptions,
  tcpLinkStats,
} from "./tcp-link.js";

const REFUSALS_LOGGED_PER_WINDOW = 20;
const REFUSAL_WINDOW_MS = 10_000;

function remoteOf(socket: net.Socket): string {
  const a = (socket.remoteAddress ?? "?").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
  return `${a.includes(":") ? `[${a}]` : a}:${socket.remotePort ?? "?"}`;
}

/**
 * Logs refusals, at most REFUSALS_LOGGED_PER_WINDOW per window; the rest are counted and
 * summed up in one line when the window ends (a flood must not flood the log too).
 */
class RefusalLog {
  private windowStart = 0;
  private logged = 0;
  private suppressed = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly log: TcpLinkLog,
    private readonly nicId: number,
  ) {}

  refuse(message: string, fields: TcpLinkLogFields): void {
    const now = Date.now();
    if (now - this.windowStart >= REFUSAL_WINDOW_MS) {
      this.flush();
      this.windowStart = now;
      this.logged = 0;
    }
    if (this.logged++ < REFUSALS_LOGGED_PER_WINDOW) {
      this.log(message, { level: "warn", ...fields });
      return;
    }
    this.suppressed++;
    this.timer ??= setTimeout(() => this.flush(), REFUSAL_WINDOW_MS - (now - this.windowStart));
    this.timer.unref?.();
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.suppressed === 0) return;
    this.log(
      `tcp-link nic ${this.nicId}: ${this.suppressed} more refused connections were not logged one by one`,
      { level: "warn", reason: "log rate limit" },
    );
    this.suppressed = 0;
  }
}

export interface TcpLinkServer {
  readonly port: number;
  close(): Promise<void>;
}

export interface ListenTcpLinksOptions extends TcpLinkOptions {
  nicId: number;
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** The cluster key (at least TCP_LINK_MIN_KEY_BYTES bytes). */
  key: Uint8Array;
  /** Each authenticated link. A throw closes that link. */
  onLink: (link: TcpLink) => void;
  /**
   * Asked in the handshake of each main connection whose dialer proved the key, claiming NIC
   * `peerNic` from `address` (its IP; `remote` with the port): a refusal is sent to the dialer
   * instead of this side's proof (tcp-handshake.ts step 3), and the connection closed. The
   * caller logs and counts its refusals; onLink may still refuse a link that got through.
   */
  admit?: (peerNic: number, address: string, remote: string) => HandshakeRefusal | null;
  /** From accept to the end of the handshake (default TCP_ACCEPT_DEADLINE_MS). */
  handshakeTimeoutMs?: number;
  /** Sockets in the handshake at once (default TCP_MAX_PENDING_HANDSHAKES); beyond, one is dropped (pending-handshakes.ts). */
  maxPendingHandshakes?: number;
}

/** A server that accepts peers and hands each link that passed the handshake to onLink. */
export function listenTcpLinks(options: ListenTcpLinksOptions): Promise<TcpLinkServer> {
  const nicId = checkNicId(options.nicId, "listenTcpLinks");
  const port = checkPort(options.port, "listenTcpLinks", true);
  const key = checkKey(options.key, "listenTcpLinks");
  const host = options.host ?? "127.0.0.1";
  const log = options.log ?? defaultLog;
  const timeoutMs = options.handshakeTimeoutMs ?? TCP_ACCEPT_DEADLINE_MS;
  const maxPending = options.maxPendingHandshakes ?? TCP_MAX_PENDING_HANDSHAKES;
  const refusals = new RefusalLog(log, nicId);
  const sockets = new Set<net.Socket>();
  /** Sockets still in the handshake. */
  const pending = new PendingHandshakes<Handshake>(
    maxPending,
    (h) => h.saidHello,
    (h) => {
      tcpLinkStats.evicted++;
      h.abort(`dropped unauthenticated: more than ${maxPending} connections in the handshake at once`);
    },
  );
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {}); // reported through the handshake or the link
    const from = remoteOf(socket);
    const admit = options.admit;
    const hs = new Handshake(
      socket,
      "accept",
      nicId,
      key,
      timeoutMs,
      timeoutMs,
      LANE_MAIN,
      undefined,
      admit && ((peer) => admit(peer, addressOf(socket), from)),
    );
    pending.add(hs, addressOf(socket));
    hs.done.then(
      (h) => {
        pending.delete(hs);
        if (h.lane === LANE_MAIN) waitForBulk(socket, h, from);
        else pairBulk(socket, h, from);
      },
      (e: HandshakeError) => {
        pending.delete(hs);
        // Refused by admit, which said so.
        if (e.refusal !== undefined) return;
        tcpLinkStats.handshakesRejected++;
        if (e.auth) tcpLinkStats.authFailures++;
        refusals.refuse(`tcp-link nic ${nicId}: refused a connection from ${from}: ${e.message}`, {
          remote: from,
          reason: e.message,
        });
      },
    );
  });
  /**
   * Main connections that passed the handshake and wait for their bulk connection, by the
   * nonce this side sent on them (which the bulk connection's bind names), oldest first.
   */
  const waiting = new Map<string, { socket: net.Socket; h: HandshakeResult; timer: NodeJS.Timeout }>();
  const refuse = (socket: net.Socket, from: string, why: string) => {
    socket.destroy();
    tcpLinkStats.handshakesRejected++;
    refusals.refuse(`tcp-link nic ${nicId}: refused a connection from ${from}: ${why}`, {
      remote: from,
      reason: why,
    });
  };
  const waitForBulk = (socket: net.Socket, h: HandshakeResult, from: string) => {
    if (waiting.size >= maxPending) {
      const [oldId, old] = waiting.entries().next().value as [
        string,
        { socket: net.Socket; timer: NodeJS.Timeout },
      ];
      waiting.delete(oldId);
      clearTimeout(old.timer);
      tcpLinkStats.evicted++;
      old.socket.destroy();
    }
    const id = h.myNonce.toString("hex");
    const timer = setTimeout(() => {
      waiting.delete(id);
      refuse(socket, from, `NIC ${h.peer} opened no bulk connection within ${timeoutMs} ms`);
    }, timeoutMs);
    timer.unref?.();
    waiting.set(id, { socket, h, timer });
    socket.once("close", () => {
      if (waiting.get(id)?.socket !== socket) return;
      waiting.delete(id);
      clearTimeout(timer);
    });
  };
  const pairBulk = (bulk: net.Socket, h: HandshakeResult, from: string) => {
    const id = h.bind.toString("hex");
    const main = waiting.get(id);
    if (main === undefined || main.h.peer !== h.peer) {
      refuse(bulk, from, `a bulk connection from NIC ${h.peer} for no main connection that waits for one`);
      return;
    }
    waiting.delete(id);
    clearTimeout(main.timer);
    const peer = h.peer;
    const link = new TcpLink(main.socket, nicId, peer, main.h.rest, options, bulk, h.rest);
    try {
      options.onLink(link);
    } catch (e) {
      log(`tcp-link nic ${nicId}: link from nic ${peer} (${from}) refused: ${(e as Error).message}`, {
        remote: from,
        peerNic: peer,
        reason: (e as Error).message,
      });
      link.close();
    }
  };
  return new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(new Error(`tcp-link nic ${nicId}: cannot listen on ${host}:${port}: ${e.message}`)),
    );
    server.listen(port, host, () => {
      server.on("error", (e) => log(`tcp-link nic ${nicId}: listener error: ${e.message}`));
      const addr = server.address() as net.AddressInfo;
      resolve({
        port: addr.port,
        close: () =>
          new Promise<void>((res) => {
            for (const w of waiting.values()) clearTimeout(w.timer);
            waiting.clear();
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}

/**
 * The error a dial refused by the listener (it proved the key) rejects with: EMLINK for its
 * bounds on links (link-bound.ts), naming the option that sets them on that host.
 */
function refused(where: string, r: HandshakeRefusal): NicError {
  const fix =
    r.code === REFUSED_LINKS_PER_ADDRESS
      ? "`myrixen host --max-links-per-address` on that host raises its bound per address"
      : r.code === REFUSED_LINKS
        ? "`myrixen host --max-links` on that host raises its bound"
        : null;
  return new NicError(
    fix === null ? "EPROTO" : "EMLINK",
    `${where}: the listener refused the link: ${r.reason}${fix === null ? ` (refusal code ${r.code})` : `; ${fix}`}`,
  );
}

export interface ConnectTcpLinkOptions extends TcpLinkOptions {
  nicId: number;
  host?: string;
  port: number;
  /** The cluster key (at least TCP_LINK_MIN_KEY_BYTES bytes). */
  key: Uint8Array;
  /** Connect plus handshake (default TCP_HANDSHAKE_TIMEOUT_MS). */
  timeoutMs?: number;
}

/**
 * Connects to a peer NIC's listener; resolves with the link once both connections (main, then
 * bulk, naming the main one) proved the key. A listener that never sends the MyriXen magic
 * rejects it with a DetailedError: the message says only that, the detail what it sent.
 */
export function connectTcpLink(options: ConnectTcpLinkOptions): Promise<TcpLink> {
  const nicId = checkNicId(options.nicId, "connectTcpLink");
  const port = checkPort(options.port, "connectTcpLink", false);
  const key = checkKey(options.key, "connectTcpLink");
  const host = options.host ?? "127.0.0.1";
  const timeoutMs = options.timeoutMs ?? TCP_HANDSHAKE_TIMEOUT_MS;
  const where = `tcp-link nic ${nicId} -> ${host}:${port}`;
  const deadline = Date.now() + timeoutMs;
  const dial = (lane: number, bind?: Buffer) =>
    new Promise<{ socket: net.Socket; h: HandshakeResult }>((resolve, reject) => {
      const socket = net.connect({ host, port });
      const onError = (e: Error) => {
        clearTimeout(timer);
        socket.destroy();
        reject(new Error(`${where}: ${e.message}`));
      };
      const timer = setTimeout(
        () => {
          socket.off("error", onError);
          socket.destroy();
          reject(new Error(`${where}: no connection within ${timeoutMs} ms`));
        },
        Math.max(1, deadline - Date.now()),
      );
      socket.once("error", onError);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        socket.setNoDelay(true);
        const left = Math.max(1, deadline - Date.now());
        new Handshake(socket, "dial", nicId, key, left, timeoutMs, lane, bind).done.then(
          (h) => {
            socket.on("error", () => {}); // until the link takes over
            resolve({ socket, h });
          },
          (e: HandshakeError) =>
            reject(
              e.refusal !== undefined
                ? refused(where, e.refusal)
                : e.foreign
                  ? // Not a MyriXen NIC: whatever it sent stays in the detail (this host's log).
                    new DetailedError(
                      `${where}: not a MyriXen link: the handshake failed`,
                      `${where}: handshake failed: ${e.message}`,
                    )
                  : new Error(`${where}: handshake failed: ${e.message}`),
            ),
        );
      });
    });
  // Bad options throw at once (above); the connections are asynchronous.
  const both = async (): Promise<TcpLink> => {
    const main = await dial(LANE_MAIN);
    let bulk: { socket: net.Socket; h: HandshakeResult };
    try {
      // The bulk connection names the main one by the nonce the listener sent on it.
      bulk = await dial(LANE_BULK, main.h.peerNonce);
      if (bulk.h.peer !== main.h.peer) {
        bulk.socket.destroy();
        throw new Error(
          `${where}: the bulk connection reached NIC ${bulk.h.peer}, the main one NIC ${main.h.peer}`,
        );
      }
    } catch (e) {
      main.socket.destroy();
      const message = `${(e as Error).message} (bulk connection)`;
      throw e instanceof DetailedError
        ? new DetailedError(message, `${e.detail} (bulk connection)`)
        : new Error(message);
    }
    return new TcpLink(main.socket, nicId, main.h.peer, main.h.rest, options, bulk.socket, bulk.h.rest);
  };
  return both();
}

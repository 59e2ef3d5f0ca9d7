/**
 * The sockets a host listens on and the addresses it gives out: listening with a clear
 * error (a port in use names itself), a port that was free a moment ago (for the NIC's
 * listener, which cannot report the port it bound), and how a wildcard listener or an
 * IPv4-mapped peer address is written for a client to use.
 */

import net from "node:net";
import { formatAddress, type HostAddress } from "./hostfile.js";

const WILDCARD = new Set(["0.0.0.0", "::", ""]);

/** A listener bound to every interface: reached at whatever address the client used. */
export function isWildcard(host: string): boolean {
  return WILDCARD.has(host);
}

/** An address as a client can dial it ("::ffff:1.2.3.4" → "1.2.3.4"; undefined → ""). */
export function plainAddress(a: string | undefined): string {
  return (a ?? "").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, "$1");
}

/** Listens on `a`; resolves with the bound port, rejects with one line saying what to change. */
export function listen(server: net.Server, a: HostAddress): Promise<number> {
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
export async function freePort(host: string): Promise<number> {
  const s = net.createServer();
  const port = await listen(s, { host, port: 0 });
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Swallows a held socket's error (it is only closed): an unhandled 'error' would end the process. */
const IGNORE = (): void => {};

/**
 * Connections a listener accepted before anything could serve them (a host's control port
 * listens first, since its NIC id may come from the port, then starts its machinery): held
 * until `release` hands them over. Anyone may connect then, so nothing here trusts them: an
 * error on one (a reset) only closes it, one that closes leaves, and at most `max` are held
 * (beyond, the oldest is dropped, as the handshake's own bound does).
 */
export class EarlyConnections {
  private readonly held = new Set<net.Socket>();

  constructor(private readonly max: number) {}

  get size(): number {
    return this.held.size;
  }

  hold(socket: net.Socket): void {
    socket.on("error", IGNORE);
    socket.once("close", () => this.held.delete(socket));
    if (this.held.size >= this.max) {
      const oldest = this.held.values().next().value as net.Socket;
      this.held.delete(oldest);
      oldest.destroy();
    }
    this.held.add(socket);
  }

  /** Hands every connection still open to `accept` (which takes over its errors). */
  release(accept: (socket: net.Socket) => void): void {
    const sockets = [...this.held];
    this.held.clear();
    for (const s of sockets) {
      s.off("error", IGNORE);
      accept(s);
    }
  }

  /** Closes every connection held (the listener failed to start). */
  destroyAll(): void {
    for (const s of this.held) s.destroy();
    this.held.clear();
  }
}

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
  return (a ?? "").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
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

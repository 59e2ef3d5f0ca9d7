// Test helper: a real TCP link over loopback between NIC 2 (the dialer) and NIC 1 (the listener),
// as the TCP link tests use it: both ends, and the listener to close after.
import { randomBytes } from "node:crypto";
import type { TcpLink, TcpLinkOptions } from "../../src/nic/tcp-link.js";
import { connectTcpLink, listenTcpLinks } from "../../src/nic/tcp-link-setup.js";
import { until } from "./until.js";

export interface LinkedTcp {
  server: { port: number; close(): Promise<void> };
  /** The dialer's end (NIC 2). */
  c: TcpLink;
  /** The listener's end (NIC 1). */
  s: TcpLink;
}

/** A link from NIC 2 (its `dialer` options) to NIC 1 (its `listener` options), once both ends have it. */
export async function linkedTcp(
  log: (m: string) => void,
  dialer: Pick<TcpLinkOptions, "bulkWindow" | "bulkQueue"> = {},
  listener: Pick<TcpLinkOptions, "highWaterMark"> = {},
  key: Buffer = randomBytes(32),
): Promise<LinkedTcp> {
  const accepted: TcpLink[] = [];
  const server = await listenTcpLinks({
    nicId: 1,
    key,
    port: 0,
    host: "127.0.0.1",
    log,
    ...listener,
    onLink: (l) => accepted.push(l),
  });
  const c = await connectTcpLink({ nicId: 2, host: "127.0.0.1", port: server.port, key, log, ...dialer });
  await until(() => accepted.length === 1, "the accepted link");
  return { server, c, s: accepted[0] };
}

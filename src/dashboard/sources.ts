/**
 * Where the dashboard's snapshots come from: a host daemon in this process (`myrixen host
 * --dashboard`, the embedded hosts of `start`/`run`), or a host's control port (`myrixen
 * dashboard --host ...`), reached as an observer with the cluster key and reconnected when
 * the connection drops.
 */
import type { ClusterKey } from "../cluster/auth.js";
import type { HostDaemon } from "../cluster/host-daemon.js";
import { formatAddress, type HostAddress } from "../cluster/hostfile.js";
import { RemoteHost } from "../cluster/remote.js";
import type { HostSnapshot } from "../host/snapshot.js";
import type { DashboardSource } from "./server.js";

export function daemonSource(label: string, daemon: HostDaemon): DashboardSource {
  return { label, snapshot: () => daemon.snapshot() };
}

/** A remote host as a source; it connects on first use and again after a loss (at most every 2 s). */
export function remoteSource(address: HostAddress & { label?: string }, key: ClusterKey): DashboardSource {
  const label = address.label ?? formatAddress(address);
  let conn: Promise<RemoteHost> | undefined;
  let lastTry = 0;
  let lastError = "";
  let closed = false;
  const get = (): Promise<RemoteHost> => {
    if (conn) return conn;
    if (Date.now() - lastTry < 2000)
      return Promise.reject(new Error(lastError || `host ${label} unreachable`));
    lastTry = Date.now();
    const c = RemoteHost.connect(address, { key, role: "observer", name: "myrixen dashboard" });
    conn = c;
    c.then(
      (rh) =>
        rh.onLost((why) => {
          lastError = `host ${label} was lost: ${why}`;
          if (conn === c) conn = undefined;
        }),
      (e: Error) => {
        lastError = e.message;
        if (conn === c) conn = undefined;
      },
    );
    return c;
  };
  return {
    label,
    async snapshot(): Promise<HostSnapshot> {
      if (closed) throw new Error("closed");
      const rh = await get();
      return rh.snapshot();
    },
    close() {
      closed = true;
      void conn?.then((rh) => rh.close()).catch(() => undefined);
    },
  };
}

/**
 * A `myrixen host` daemon in the test's own process, on loopback ports the OS picks, with a
 * silent log: the host that control-port, capacity, link and lifetime tests talk to.
 */
import type { ClusterKey } from "../../src/cluster/auth.js";
import { HostDaemon, type HostDaemonOptions } from "../../src/cluster/host-daemon.js";
import { silentLogger } from "../../src/cluster/log.js";

/** Starts a daemon with `key` (2 slots unless `opts` says otherwise). */
export function startLocalDaemon(
  key: ClusterKey,
  opts: Partial<HostDaemonOptions> = {},
): Promise<HostDaemon> {
  return HostDaemon.start({
    listen: { host: "127.0.0.1", port: 0 },
    linkPort: 0,
    slots: 2,
    key,
    log: silentLogger,
    ...opts,
  });
}

/** Where a launcher reaches daemon `d`'s control port. */
export const controlAddress = (d: HostDaemon) => ({ host: "127.0.0.1", port: d.control.port });

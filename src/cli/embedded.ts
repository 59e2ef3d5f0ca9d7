/**
 * Makes the embedded cluster of `myrixen start` / `myrixen run` observable while it runs:
 * each of its hosts is served on an ephemeral control port on 127.0.0.1 (inspection only,
 * authenticated with the cluster's in-memory key), the addresses and the key go to this
 * user's runtime file (src/cluster/runtime.ts) where `myrixen list`, `top` and `dashboard`
 * find them, and with --dashboard the live dashboard is served from this process too.
 */
import type { ClusterKey } from "../cluster/auth.js";
import { HostDaemon } from "../cluster/host-daemon.js";
import { formatAddress, type HostAddress } from "../cluster/hostfile.js";
import { createLogger } from "../cluster/log.js";
import { publishEmbedded } from "../cluster/runtime.js";
import type { Dashboard } from "../dashboard/server.js";
import type { Host } from "../host/host.js";
import { RuntimeFailure } from "./usage.js";

export interface EmbeddedObservation {
  daemons: HostDaemon[];
  dashboard?: Dashboard;
  stop(): Promise<void>;
}

export async function observeEmbedded(
  hosts: { host: Host; name: string; linkAddress?: HostAddress }[],
  key: ClusterKey,
  command: "myrixen start" | "myrixen run",
  opts: { dashboard?: HostAddress },
  err: (line: string) => void,
): Promise<EmbeddedObservation> {
  const log = createLogger({ level: "warn", format: "text" });
  const what = `the embedded host of ${command} (pid ${process.pid})`;
  const daemons: HostDaemon[] = [];
  let dashboard: Dashboard | undefined;
  let remove = () => {};
  const stop = async () => {
    remove();
    await dashboard?.stop().catch(() => undefined);
    await Promise.all(daemons.map((d) => d.stop().catch(() => undefined)));
  };
  try {
    for (const h of hosts)
      daemons.push(
        await HostDaemon.serve(h.host, {
          listen: { host: "127.0.0.1", port: 0 },
          key,
          log,
          observeOnly: what,
          name: h.name,
          linkAddress: h.linkAddress,
        }),
      );
    const pub = publishEmbedded({
      command,
      hosts: daemons.map((d, i) => ({ name: hosts[i].name, nicId: d.nicId, control: d.control })),
      key,
    });
    if ("error" in pub) err(`${command}: not observable by \`myrixen list\`: ${pub.error}`);
    else remove = pub.remove;
    err(
      `${command}: inspect it with \`myrixen list\`, \`myrixen top\` or \`myrixen dashboard\` (control ${daemons.map((d) => formatAddress(d.control)).join(", ")})`,
    );
    if (opts.dashboard) {
      const { Dashboard } = await import("../dashboard/server.js");
      const { daemonSource } = await import("../dashboard/sources.js");
      const at = opts.dashboard;
      dashboard = await Dashboard.start({
        host: at.host,
        port: at.port,
        sources: daemons.map((d, i) => daemonSource(hosts[i].name, d)),
        key,
        log,
      }).catch((e: Error) => {
        // Its message names the address and what to do ("already in use ...: give another port").
        throw new RuntimeFailure(e.message, command.replace(/^myrixen /, ""));
      });
      err(`${command}: dashboard at ${dashboard.url}`);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { daemons, dashboard, stop };
}

/**
 * Several hosts in this process, each with its NIC listening for links on a loopback port:
 * a cluster on one machine with no set-up (what `myrixen start` runs). Each host is a full
 * Host (hypervisor, NIC thread, driver domain); a job across them links their NICs over real
 * TCP sockets exactly as between `myrixen host` processes (LocalTarget.link), authenticated
 * with a cluster key as they are: here a fresh random key held in memory, one per cluster.
 */
import { createServer } from "node:net";
import { Host, type HostOptions } from "../host/host.js";
import { type ClusterKey, randomClusterKey } from "./auth.js";
import { LocalTarget } from "./job.js";

export interface LocalCluster {
  hosts: Host[];
  /** One job target per host, each offering `slotsPerHost` ranks. */
  targets: LocalTarget[];
  /** The cluster's key (in memory only): what a NIC must prove to link to these hosts. */
  key: ClusterKey;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => {
    s.once("error", reject);
    s.listen(0, "127.0.0.1", resolve);
  });
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Starts `n` hosts with NIC ids 1..n, each listening for NIC links on 127.0.0.1. */
export async function startLocalCluster(
  n: number,
  slotsPerHost: number,
  opts: Omit<HostOptions, "nicId"> = {},
): Promise<LocalCluster> {
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new RangeError(`hosts must be 1..16, got ${n}`);
  const hosts: Host[] = new Array(n);
  const targets: LocalTarget[] = new Array(n);
  const key = randomClusterKey();
  const startOne = async (i: number): Promise<void> => {
    const host = await Host.start({ ...opts, nicId: i + 1 });
    hosts[i] = host;
    // A port free a moment ago may be taken in between: try another once.
    let port = 0;
    for (let attempt = 0; ; attempt++) {
      port = await freePort();
      try {
        await host.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: key.bytes });
        break;
      } catch (e) {
        if (attempt >= 1) throw e;
      }
    }
    targets[i] = new LocalTarget(host, slotsPerHost, `host${i + 1}`, { host: "127.0.0.1", port }, key);
  };
  // The hosts boot at once; if one cannot, the others are stopped once they are up.
  const started = await Promise.allSettled(Array.from({ length: n }, (_, i) => startOne(i)));
  const failed = started.find((r) => r.status === "rejected");
  if (failed) {
    await Promise.all(hosts.filter((h) => h !== undefined).map((h) => h.stop().catch(() => undefined)));
    throw failed.reason;
  }
  return {
    hosts,
    targets,
    key,
    async stop() {
      await Promise.all(hosts.map((h) => h.stop().catch(() => undefined)));
    },
  };
}

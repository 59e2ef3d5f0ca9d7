/**
 * Two hosts in this process whose NICs are joined by a TCP link over loopback: the set-up of
 * the cross-host benchmarks. Each NIC is its own thread and the link is a real socket, so a
 * message between them takes the same wire as between two host processes (framing, kernel
 * TCP stack, the peer NIC's thread), without a second process to start and tear down.
 */
import { startLocalCluster } from "../cluster/local-cluster.js";
import type { Host } from "../host/host.js";

/** NIC ids of the two benchmark hosts (any two distinct ids would do). */
export const HOST_A_NIC = 1;
export const HOST_B_NIC = 2;

export interface LinkedHosts {
  a: Host;
  b: Host;
  stop(): Promise<void>;
}

/** Starts host A (NIC 1) and host B (NIC 2) and links them; resolves once both NICs see the link. */
export async function startLinkedHosts(timeoutMs = 10_000): Promise<LinkedHosts> {
  const cluster = await startLocalCluster(2, 1);
  try {
    const [ta, tb] = cluster.targets;
    const peer = (t: typeof ta) => ({ nicId: t.nicId, ...t.linkAddress!, label: t.label });
    // The same linking a job across these hosts does: the lower NIC id connects, both ends wait.
    await Promise.all([ta.link([peer(tb)], timeoutMs), tb.link([peer(ta)], timeoutMs)]);
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  const [a, b] = cluster.hosts;
  return { a, b, stop: () => cluster.stop() };
}

/**
 * This host's NIC links to other hosts' NICs: links a job's hosts on a launcher's request
 * (only the lower NIC id of a pair connects, so two hosts asked at once never make two
 * links), and keeps a link to each `--peers` host, retrying until it works and relinking
 * when it drops, however long that takes (the NIC itself gives a dropped link up an hour
 * after the drop, tcp-attach.ts RECONNECT_GIVE_UP_MS: a peer that is not kept here is linked
 * again by the next job that needs it). Both sides prove the cluster key (tcp-link.ts on the
 * NIC, auth.ts here).
 */

import type { Host } from "../host/host.js";
import type { ClusterKey } from "./auth.js";
import { formatAddress, type HostAddress, type HostEntry } from "./hostfile.js";
import { isWildcard, plainAddress } from "./listen.js";
import type { Logger } from "./log.js";
import { RemoteHost } from "./remote.js";
import type { LinkPeer } from "./wire.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

export interface PeerLinksOptions {
  host: Host;
  key: ClusterKey;
  log: Logger;
  /** How this host names itself to its peers. */
  hostname: string;
  control: HostAddress;
  /** Where this host's NIC accepts links (none: it links nowhere by itself). */
  linkAddress: HostAddress | undefined;
  /** True once the host stops: loops end, attempts give up. */
  stopped: () => boolean;
}

export class PeerLinks {
  private readonly linking = new Map<number, Promise<void>>();
  /** The NICs linked at the last look (the answer when the NIC cannot be asked). */
  linkedNics: number[] = [];

  constructor(private readonly opts: PeerLinksOptions) {}

  private get nicId(): number {
    return this.opts.host.nicId;
  }

  /** The NIC ids this NIC is linked to now. */
  async links(): Promise<number[]> {
    this.linkedNics = (await this.opts.host.nicInfo()).links;
    return this.linkedNics;
  }

  /**
   * Makes sure this NIC is linked to every peer's NIC. Only one side of a pair connects (the
   * lower NIC id, to the higher), so two hosts asked at once never make two links; the other
   * side waits for the link to appear. Rejects naming every peer not linked within timeoutMs.
   */
  async ensureLinks(peers: LinkPeer[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const results = await Promise.allSettled(peers.map((p) => this.linkTo(p, deadline, timeoutMs)));
    const problems = results.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
    if (problems.length > 0) throw new Error(problems.join("; "));
  }

  private linkTo(p: LinkPeer, deadline: number, timeoutMs: number): Promise<void> {
    if (p.nicId === this.nicId)
      return Promise.reject(
        new Error(`host ${p.label} has this host's own NIC id ${p.nicId}; give one of them another --nic-id`),
      );
    const busy = this.linking.get(p.nicId);
    if (busy) return busy;
    const run = (async () => {
      const where = `host ${p.label} (NIC ${p.nicId}, link ${formatAddress(p)})`;
      let last = "";
      while (Date.now() < deadline && !this.opts.stopped()) {
        if ((await this.links()).includes(p.nicId)) return;
        if (this.nicId < p.nicId) {
          const left = Math.max(1, Math.min(3000, deadline - Date.now()));
          try {
            await this.opts.host.nic.attachLink({
              kind: "tcp",
              host: p.host,
              port: p.port,
              peerNic: p.nicId,
              timeoutMs: left,
              key: this.opts.key.bytes,
            });
            this.opts.log.info("NIC linked", { peer: p.label, peerNic: p.nicId });
            return;
          } catch (e) {
            last = (e as Error).message;
            this.opts.log.debug("NIC link attempt failed", { peer: p.label, error: last });
          }
        }
        await sleep(this.nicId < p.nicId ? 200 : 50);
      }
      if ((await this.links().catch((): number[] => [])).includes(p.nicId)) return;
      throw new Error(
        this.nicId < p.nicId
          ? `no NIC link to ${where} within ${timeoutMs} ms: ${last || "unreachable"}`
          : `${where} did not link to this host's NIC within ${timeoutMs} ms (the lower NIC id connects)`,
      );
    })().finally(() => this.linking.delete(p.nicId));
    this.linking.set(p.nicId, run);
    return run;
  }

  /** Links to one `--peers` host, keeps retrying until it works, and relinks when the link drops. */
  async peerLoop(peer: HostEntry): Promise<void> {
    let delay = 500;
    let failures = 0;
    while (!this.opts.stopped()) {
      let rh: RemoteHost | undefined;
      try {
        rh = await RemoteHost.connect(peer, {
          role: "peer",
          name: `${this.opts.hostname}:${this.opts.control.port}`,
          key: this.opts.key,
        });
        if (rh.nicId === this.nicId)
          throw new Error(`it has this host's NIC id ${this.nicId}; give one of them another --nic-id`);
        const link = this.opts.linkAddress!;
        const me: LinkPeer = {
          nicId: this.nicId,
          host: isWildcard(link.host) ? plainAddress(rh.localAddress) : link.host,
          port: link.port,
          label: formatAddress({ host: this.opts.hostname, port: this.opts.control.port }),
        };
        if (!rh.linkAddress)
          throw new Error(
            `it takes no links: it serves inspection only (${rh.observeOnly ?? "no link address"})`,
          );
        const them: LinkPeer = { nicId: rh.nicId, ...rh.linkAddress, label: peer.label };
        await Promise.all([rh.link([me], 10_000), this.ensureLinks([them], 10_000)]);
        rh.close();
        this.opts.log.info("linked to peer", { peer: peer.label, peerNic: them.nicId });
        delay = 500;
        failures = 0;
        while (!this.opts.stopped() && (await this.links()).includes(them.nicId)) await sleep(2000);
        if (!this.opts.stopped())
          this.opts.log.warn("the link to a peer dropped: relinking", { peer: peer.label });
      } catch (e) {
        rh?.close();
        if (this.opts.stopped()) return;
        const fields = { peer: peer.label, error: (e as Error).message, retryMs: delay };
        if (failures++ === 0) this.opts.log.warn("cannot link to peer yet: retrying", fields);
        else this.opts.log.debug("cannot link to peer yet: retrying", fields);
        await sleep(delay);
        delay = Math.min(delay * 2, 10_000);
      }
    }
  }
}

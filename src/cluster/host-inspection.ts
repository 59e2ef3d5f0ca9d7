/**
 * What a host answers a client who asks what it is doing (`myrixen list`, `info`, `top`, the
 * dashboard): its status (live guests, NIC links, jobs and their ranks), a snapshot of the
 * whole host (host/inspect.ts) that clients asking together share, and a XenStore subtree cut
 * to what one control line can carry.
 */

import type { Host } from "../host/host.js";
import type { Inspector } from "../host/inspect.js";
import type { HostSnapshot } from "../host/snapshot.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import { type HostMessage, MAX_LINE_BYTES, MAX_XENSTORE_NODES } from "./wire.js";

type StatusMessage = Extract<HostMessage, { type: "status" }>;

export class HostInspection {
  private inflight: Promise<HostSnapshot> | undefined;
  private last: { at: number; snapshot: HostSnapshot } | undefined;

  constructor(
    private readonly host: Host,
    private readonly inspector: Inspector,
  ) {}

  /** What runs here: live guests, the NIC's links, the jobs' ranks (given by the caller). */
  status(id: number, links: number[], jobs: StatusMessage["jobs"]): StatusMessage {
    const guests = this.host.hypervisor
      .domains()
      .filter((d) => !d.privileged && (d.state === "running" || d.state === "booting")).length;
    return { type: "status", id, nicId: this.host.nicId, guests, links, jobs };
  }

  /**
   * A snapshot of the host. Requests that arrive together share one, and one younger than
   * 100 ms is served again: many clients asking often cost the host a few snapshots a second.
   */
  snapshot(): Promise<HostSnapshot> {
    if (this.last && Date.now() - this.last.at < 100) return Promise.resolve(this.last.snapshot);
    this.inflight ??= this.inspector
      .snapshot()
      .then((snapshot) => {
        this.last = { at: Date.now(), snapshot };
        return snapshot;
      })
      .finally(() => {
        this.inflight = undefined;
      });
    return this.inflight;
  }

  /** A XenStore subtree, cut to what one control line can carry. */
  xenstore(
    path: string,
    maxNodes = 2000,
  ): { ok: true; tree: XenStoreTreeNode; nodes: number; truncated: boolean } | { ok: false; error: string } {
    let limit = Math.min(maxNodes, MAX_XENSTORE_NODES);
    for (;;) {
      let t: ReturnType<Inspector["xenstore"]>;
      try {
        t = this.inspector.xenstore(path, limit);
      } catch (e) {
        return { ok: false, error: (e as Error).message };
      }
      // A line carries at most MAX_LINE_BYTES: cut a listing of long values further. Bytes, not
      // characters: a guest's values may be multi-byte text (3 bytes a character), and a line
      // over the client's limit loses it the host instead of giving it a cut tree.
      if (limit <= 16 || Buffer.byteLength(JSON.stringify(t.root)) < MAX_LINE_BYTES - 4096)
        return { ok: true, tree: t.root, nodes: t.nodes, truncated: t.truncated };
      limit = Math.floor(limit / 2);
    }
  }
}

/**
 * Which host each rank of a job runs on. `--map-by node` (the default) deals ranks round-robin
 * across hosts that still have a free slot; `--map-by slot` fills each host's slots in order.
 * More ranks than slots is an error unless oversubscribing, which then deals the rest
 * round-robin over hosts below their max_slots.
 */
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";

export type MapBy = "node" | "slot";
export const MAP_BY = ["node", "slot"] as const;

export interface SlotInfo {
  /** How the error messages name the host. */
  label: string;
  /** Ranks it takes before it is full (Infinity: no limit, the embedded host). */
  slots: number;
  /** With oversubscription, at most this many (undefined: no limit). */
  maxSlots?: number;
}

export class PlacementError extends Error {}

/** The host index of each rank 0..n-1. */
export function placeRanks(
  n: number,
  hosts: SlotInfo[],
  mapBy: MapBy = "node",
  oversubscribe = false,
): number[] {
  if (hosts.length === 0) throw new PlacementError("no hosts to place ranks on");
  const total = hosts.reduce((s, h) => s + h.slots, 0);
  if (n > total && !oversubscribe) {
    const each = hosts.map((h) => `${h.label} ${h.slots}`).join(", ");
    throw new PlacementError(
      `${n} ranks need ${n} slots but the hosts have ${total} (${each}); add hosts or slots ` +
        "(hostfile slots=N, -H host:N, --hosts host*N, myrixen host --slots N), or pass --oversubscribe",
    );
  }
  const used = hosts.map(() => 0);
  const out: number[] = [];
  const take = (h: number) => {
    used[h]++;
    out.push(h);
  };
  if (mapBy === "slot") {
    for (let h = 0; h < hosts.length && out.length < n; h++)
      while (used[h] < hosts[h].slots && out.length < n) take(h);
  } else {
    let h = 0;
    while (out.length < n && out.length < total) {
      if (used[h] < hosts[h].slots) take(h);
      h = (h + 1) % hosts.length;
    }
  }
  // Oversubscribed: the rest round-robin over hosts still under their max_slots.
  let h = 0;
  let idle = 0;
  while (out.length < n) {
    const max = hosts[h].maxSlots ?? Number.POSITIVE_INFINITY;
    if (used[h] < max) {
      take(h);
      idle = 0;
    } else if (++idle >= hosts.length) {
      const caps = hosts.map((x) => `${x.label} ${x.maxSlots ?? "unlimited"}`).join(", ");
      throw new PlacementError(`${n} ranks exceed the hosts' max_slots (${caps}), even with --oversubscribe`);
    }
    h = (h + 1) % hosts.length;
  }
  return out;
}

/**
 * The slots of this machine when a job runs on it alone, as Open MPI counts them: one per
 * physical core (hardware threads of one core share it), at most the CPUs this process may
 * use. Read from Linux's CPU topology; elsewhere, the CPUs this process may use.
 */
export function coreSlots(): number {
  const usable = availableParallelism();
  try {
    const base = "/sys/devices/system/cpu";
    const cores = new Set<string>();
    for (const name of readdirSync(base)) {
      if (!/^cpu\d+$/.test(name)) continue;
      const topo = `${base}/${name}/topology`;
      try {
        const pkg = readFileSync(`${topo}/physical_package_id`, "utf8").trim();
        const core = readFileSync(`${topo}/core_id`, "utf8").trim();
        cores.add(`${pkg}:${core}`);
      } catch {
        // an offline CPU has no topology
      }
    }
    return cores.size > 0 ? Math.max(1, Math.min(cores.size, usable)) : usable;
  } catch {
    return usable;
  }
}

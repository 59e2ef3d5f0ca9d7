/**
 * Giving a dead domain's memory back to the OS on time, in the threads that outlive domains
 * (the hypervisor's, the driver domain's, the NIC's).
 *
 * A domain's RAM is a SharedArrayBuffer of tens of MiB, and its pages go back to the OS only
 * when every thread that ever held a handle to it has collected that handle. The trusted
 * threads hold such handles as a matter of course (the hypervisor's domain record, dom0's
 * foreign view, the NIC's registered regions) and drop them when the domain dies; but V8
 * collects an old object only at a major GC, which an idle isolate with a small heap may not
 * run for hundreds of jobs. Measured before this file (`scripts/soak-hosts.sh`): a host kept
 * the RAM of every domain it had run, 4–6 MB resident and 64 MiB of address space per job,
 * with no plateau. So a teardown asks for a collection: `reclaimSoon()` runs a full GC in
 * this thread a moment later (teardowns in a burst share one), at most once a second.
 *
 * The collector is V8's own `gc`, fetched once per thread the way jest's leak detector does
 * it (turn `--expose-gc` on, read `gc` from a new context, turn it off again): nothing the
 * host process's own code sees changes, and no guest can reach it (a sandboxed program's
 * globals are an allowlist). Where V8 refuses, reclaiming falls back to V8's own schedule.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** A collection runs this long after the first teardown that asked (the rest of a burst joins it). */
export const RECLAIM_DELAY_MS = 250;
/** At most one collection per this interval: a host churning endpoints pays ~1% of a thread. */
export const RECLAIM_MIN_INTERVAL_MS = 1000;

let gc: (() => void) | null | undefined;
let timer: NodeJS.Timeout | undefined;
let lastRun = -Infinity;
let runs = 0;

function collector(): (() => void) | null {
  if (gc !== undefined) return gc;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === "function") return (gc = exposed as () => void);
  gc = null;
  // Another thread may turn the flag off between our two steps: try again a few times.
  for (let attempt = 0; attempt < 5 && gc === null; attempt++) {
    try {
      setFlagsFromString("--expose-gc");
      const f: unknown = runInNewContext("typeof gc === 'function' ? gc : undefined");
      if (typeof f === "function") gc = f as () => void;
    } catch {
      // No collector: V8 collects on its own schedule.
    } finally {
      setFlagsFromString("--no-expose-gc");
    }
  }
  return gc;
}

/** Fetches this thread's collector now (at thread start, before any guest program runs); reclaimSoon does nothing in a thread that did not. */
export function prepareReclaim(): boolean {
  return collector() !== null;
}

/** Asks for a full collection in this thread soon: a domain, an endpoint or a mapping just went. */
export function reclaimSoon(): void {
  if (timer !== undefined) return;
  const wait = Math.max(RECLAIM_DELAY_MS, lastRun + RECLAIM_MIN_INTERVAL_MS - performance.now());
  timer = setTimeout(runReclaim, wait);
  timer.unref();
}

function runReclaim(): void {
  timer = undefined;
  // Only a collector fetched at thread start (prepareReclaim, trusted code): fetching one
  // turns a process-wide V8 flag on and off, which a guest could otherwise set off from its
  // own thread through code it can reach (a privileged-looking Guest it made itself).
  const f = gc;
  if (!f) return;
  lastRun = performance.now();
  runs++;
  f();
}

/** Collections this thread has run for reclaiming (observability; tests). */
export function reclaimRuns(): number {
  return runs;
}

/**
 * A guest that burns CPU and touches neither the NIC nor a channel (bench isolation's
 * CPU-only neighbour): in slices of SLICE_MS it spins for `duty` of the slice and sleeps the
 * rest (Atomics.wait: sub-millisecond, so the CPU time comes in small pieces as a streaming
 * guest's does, not in scheduler-tick lumps), yielding to its message loop between slices,
 * until told "stop". What it costs a bystander is the CPU scheduler's, which the NIC cannot
 * control.
 */
import type { Guest } from "../xen/guest/guest.js";

/** One spin-and-sleep period (ms). */
const SLICE_MS = 1;

export default async function main(guest: Guest): Promise<number> {
  const duty = Math.min(1, Math.max(0.01, Number((guest.args as { duty?: number } | undefined)?.duty ?? 1)));
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let stop = false;
  void guest.nextMessage().then(() => {
    stop = true;
  });
  let spins = 0;
  while (!stop) {
    const start = performance.now();
    const until = start + duty * SLICE_MS;
    while (performance.now() < until) spins++;
    const rest = start + SLICE_MS - performance.now();
    if (rest > 0.01) Atomics.wait(nap, 0, 0, rest);
    await new Promise((r) => setImmediate(r));
  }
  return spins;
}

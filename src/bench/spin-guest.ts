/**
 * A guest that burns CPU and touches neither the NIC nor a channel (bench isolation's
 * CPU-only neighbour): it spins in slices of a few ms, yielding to its message loop between
 * slices, until told "stop". What it costs a bystander is the CPU scheduler's, which the NIC
 * cannot control.
 */
import type { Guest } from "../xen/guest/guest.js";

export default async function main(guest: Guest): Promise<number> {
  let stop = false;
  void guest.nextMessage().then(() => {
    stop = true;
  });
  let spins = 0;
  while (!stop) {
    const until = performance.now() + 5;
    while (performance.now() < until) spins++;
    await new Promise((r) => setImmediate(r));
  }
  return spins;
}

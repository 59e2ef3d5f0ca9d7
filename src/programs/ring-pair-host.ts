/**
 * Host side of ring-pair: starts the two guest domains, plays the toolstack (creates the
 * vring device in XenStore), lets them run and collects what each measured.
 */
import type { Domain, Hypervisor } from "../xen/hypervisor.js";
import { createDevice } from "../xen/xenbus.js";
import type { RingPairResult } from "./ring-pair.js";
import { VRING_TYPE } from "./ring-pair.js";

export const RING_PAIR_PROGRAM = new URL("./ring-pair.js", import.meta.url);

export interface RingPairRun {
  front: RingPairResult;
  back: RingPairResult;
  frontDomain: Domain;
  backDomain: Domain;
}

export async function runRingPair(
  hv: Hypervisor,
  opts: { requests: number; spinUs?: number },
): Promise<RingPairRun> {
  // Domain ids are known only once each exists, so each learns its peer by message.
  const backDomain = await hv.createDomain({ module: RING_PAIR_PROGRAM, name: "ring-back", pages: 16 });
  const frontDomain = await hv.createDomain({
    module: RING_PAIR_PROGRAM,
    name: "ring-front",
    pages: 16,
    args: { role: "front", peer: backDomain.domid, requests: opts.requests, spinUs: opts.spinUs },
  });
  try {
    await createDevice(hv.toolstack, {
      type: VRING_TYPE,
      frontDom: frontDomain.domid,
      backDom: backDomain.domid,
      devid: 0,
    });
    backDomain.send({ role: "back", peer: frontDomain.domid, requests: opts.requests, spinUs: opts.spinUs });
    frontDomain.send("go");
    const [f, b] = await Promise.all([frontDomain.exited, backDomain.exited]);
    for (const [who, e] of [
      ["frontend", f],
      ["backend", b],
    ] as const) {
      if (e.state !== "shutdown")
        throw new Error(`ring-pair ${who} ${e.state}: ${e.error?.message ?? "no error"}`);
    }
    return { front: f.result as RingPairResult, back: b.result as RingPairResult, frontDomain, backDomain };
  } finally {
    await Promise.all([frontDomain.destroy(), backDomain.destroy()]);
  }
}

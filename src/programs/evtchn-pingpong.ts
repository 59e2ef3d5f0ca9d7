/**
 * evtchn-pingpong: two domains bounce an event-channel notification back and forth; the
 * "ping" side measures one-way latency (round trip / 2). Both ports are kept masked, so a
 * send costs one atomic exchange unless the peer has really gone to sleep (the wait unmasks
 * only for the sleep): notification suppression as MX and the rings use it.
 *
 * Protocol with the host: ping gets `{ role: "ping", peer }` at boot, allocates a port and
 * sends it to the host; pong gets `{ role: "pong", peer, port }` by message and binds it.
 * Then each host message `{ iters, warmup, budgetMs? }` to ping runs one timed batch and
 * answers with its sample (µs); `"stop"` closes the port, which ends pong too. Keeping the domains up
 * between batches lets the host interleave them with baseline runs.
 */
import type { Guest } from "../xen/guest/guest.js";

export interface PingPongArgs {
  role: "ping" | "pong";
  peer: number;
  port?: number;
  spinUs?: number;
}

export interface PingPongBatch {
  iters: number;
  warmup: number;
  /** The timed loop ends after this long even short of `iters` (the sample is its mean). */
  budgetMs?: number;
}

/** Round trips between two clock reads of a loop with a time budget. */
const BUDGET_CHECK_ROUNDS = 256;

const TIMEOUT_MS = 30_000;

export default async function main(guest: Guest): Promise<string> {
  let args = guest.args as PingPongArgs | undefined;
  if (!args) args = (await guest.nextMessage()) as PingPongArgs;
  const spin = args.spinUs;
  if (args.role === "ping") {
    const port = guest.evtchn.port(guest.evtchn.allocUnbound(args.peer));
    port.mask();
    guest.send({ port: port.port });
    for (;;) {
      const batch = (await guest.nextMessage()) as PingPongBatch | "stop";
      if (batch === "stop") break;
      const round = (i: number) => {
        port.notify();
        if (port.wait(TIMEOUT_MS, spin) !== "event") throw new Error(`ping: no answer in round ${i}`);
      };
      for (let i = 0; i < batch.warmup; i++) round(i);
      const t0 = performance.now();
      const end = t0 + (batch.budgetMs ?? Number.POSITIVE_INFINITY);
      let done = 0;
      while (done < batch.iters) {
        const n = Math.min(BUDGET_CHECK_ROUNDS, batch.iters - done);
        for (let i = 0; i < n; i++) round(batch.warmup + done + i);
        done += n;
        if (performance.now() >= end) break;
      }
      guest.send(((performance.now() - t0) * 1000) / (2 * done));
    }
    guest.evtchn.close(port.port);
    return "done";
  }
  const port = guest.evtchn.port(guest.evtchn.bindInterdomain(args.peer, args.port!));
  port.mask();
  guest.send("bound");
  for (;;) {
    const r = port.wait(Number.POSITIVE_INFINITY, spin);
    if (r === "unbound") return "done";
    port.notify();
  }
}

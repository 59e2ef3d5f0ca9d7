/**
 * osu-latency (OSU osu_latency): ping-pong between ranks 0 and 1 with blocking send/recv
 * (tag 1); one-way latency = total round-trip time / (2 · iterations), in microseconds.
 */
import type { Guest } from "../../xen/guest/guest.js";
import { LAT_LOOPS, MPI, OSU_SIZES, runOsu, sweepBuffers } from "./common.js";

const TAG = 1;

export default function main(guest: Guest): Promise<number> {
  const bufs = sweepBuffers(0x61, 0x62);
  return runOsu(guest, {
    bench: "osu-latency",
    title: "OSU MPI Latency Test",
    column: "Latency (us)",
    metric: "latency_us",
    ranks: "pair",
    defaults: OSU_SIZES["osu-latency"],
    loops: LAT_LOOPS,
    measure(comm, size, iters, skip) {
      const [s, r] = bufs.views(comm, size);
      let t0 = 0;
      if (comm.rank === 0) {
        for (let i = 0; i < iters + skip; i++) {
          if (i === skip) t0 = MPI.wtime();
          comm.send(s, 1, TAG);
          comm.recv(r, 1, TAG);
        }
        return { value: ((MPI.wtime() - t0) * 1e6) / (2 * iters) };
      }
      for (let i = 0; i < iters + skip; i++) {
        comm.recv(r, 0, TAG);
        comm.send(s, 0, TAG);
      }
      return { value: 0 };
    },
  });
}

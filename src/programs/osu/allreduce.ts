/**
 * osu-allreduce (OSU osu_allreduce): each iteration times one MPI_Allreduce (SUM over bytes,
 * MPI_CHAR) and then synchronizes with an untimed barrier. Per-rank latency = time · 10^6 /
 * iterations; the reported average is the SUM over ranks (MPI_Reduce) / ranks, with the
 * minimum and maximum over ranks kept for the JSON row.
 */
import type { Guest } from "../../xen/guest/guest.js";
import { COLL_LOOPS, MPI, OSU_SIZES, runOsu, sweepBuffers } from "./common.js";

export default function main(guest: Guest): Promise<number> {
  const bufs = sweepBuffers(1, 0);
  return runOsu(guest, {
    bench: "osu-allreduce",
    title: "OSU MPI Allreduce Latency Test",
    column: "Avg Latency(us)",
    metric: "latency_us",
    ranks: "many",
    defaults: OSU_SIZES["osu-allreduce"],
    loops: COLL_LOOPS,
    measure(comm, size, iters, skip) {
      const [s, r] = bufs.views(comm, size);
      let timer = 0;
      for (let i = 0; i < iters + skip; i++) {
        const t0 = MPI.wtime();
        comm.allreduce(s, r, MPI.SUM);
        const t1 = MPI.wtime();
        if (i >= skip) timer += t1 - t0;
        comm.barrier();
      }
      const lat = new Float64Array([(timer * 1e6) / iters]);
      const sum = new Float64Array(1);
      const min = new Float64Array(1);
      const max = new Float64Array(1);
      comm.reduce(lat, sum, MPI.SUM, 0);
      comm.reduce(lat, min, MPI.MIN, 0);
      comm.reduce(lat, max, MPI.MAX, 0);
      return { value: sum[0] / comm.size, min: min[0], max: max[0] };
    },
  });
}

/**
 * osu-bibw (OSU osu_bibw): both ranks post a window of 64 non-blocking receives, then 64
 * non-blocking sends (rank 0 receives tag 10 and sends tag 100, rank 1 the reverse), then wait
 * for all. Bandwidth in MB/s (10^6 bytes) = 2 · bytes · iterations · window / time (rank 0).
 */
import type { Guest } from "../../xen/guest/guest.js";
import { BW_LOOPS, MPI, OSU_SIZES, runOsu, sweepBuffers, WINDOW_SIZE } from "./common.js";

export default function main(guest: Guest): Promise<number> {
  const bufs = sweepBuffers(0x61, 0x62);
  return runOsu(guest, {
    bench: "osu-bibw",
    title: "OSU MPI Bi-Directional Bandwidth Test",
    column: "Bandwidth (MB/s)",
    metric: "bandwidth_MBps",
    ranks: "pair",
    defaults: OSU_SIZES["osu-bibw"],
    loops: BW_LOOPS,
    measure(comm, size, iters, skip) {
      const [s, r] = bufs.views(comm, size);
      const peer = comm.rank === 0 ? 1 : 0;
      const rtag = comm.rank === 0 ? 10 : 100;
      const stag = comm.rank === 0 ? 100 : 10;
      const rreqs = new Array(WINDOW_SIZE);
      const sreqs = new Array(WINDOW_SIZE);
      let t0 = 0;
      for (let i = 0; i < iters + skip; i++) {
        if (i === skip) t0 = MPI.wtime();
        for (let j = 0; j < WINDOW_SIZE; j++) rreqs[j] = comm.irecv(r, peer, rtag);
        for (let j = 0; j < WINDOW_SIZE; j++) sreqs[j] = comm.isend(s, peer, stag);
        comm.waitall(sreqs);
        comm.waitall(rreqs);
      }
      const t = MPI.wtime() - t0;
      return { value: comm.rank === 0 ? ((size / 1e6) * iters * WINDOW_SIZE * 2) / t : 0 };
    },
  });
}

/**
 * osu-bw (OSU osu_bw): rank 0 posts a window of 64 non-blocking sends (tag 100) and waits for
 * them, rank 1 receives them and answers with a 1-byte ack (tag 101). Bandwidth in MB/s
 * (10^6 bytes) = bytes · iterations · window / time, timed at the sender.
 */
import type { Guest } from "../../xen/guest/guest.js";
import { BW_LOOPS, buffer, MPI, OSU_SIZES, runOsu, sweepBuffers, WINDOW_SIZE } from "./common.js";

const TAG_DATA = 100;
const TAG_ACK = 101;

export default function main(guest: Guest): Promise<number> {
  const bufs = sweepBuffers(0x61, 0x62);
  const ack = buffer(1, 0x61);
  return runOsu(guest, {
    bench: "osu-bw",
    title: "OSU MPI Bandwidth Test",
    column: "Bandwidth (MB/s)",
    metric: "bandwidth_MBps",
    ranks: "pair",
    defaults: OSU_SIZES["osu-bw"],
    loops: BW_LOOPS,
    measure(comm, size, iters, skip) {
      const [s, r] = bufs.views(comm, size);
      const reqs = new Array(WINDOW_SIZE);
      let t0 = 0;
      for (let i = 0; i < iters + skip; i++) {
        if (comm.rank === 0) {
          if (i === skip) t0 = MPI.wtime();
          for (let j = 0; j < WINDOW_SIZE; j++) reqs[j] = comm.isend(s, 1, TAG_DATA);
          comm.waitall(reqs);
          comm.recv(ack, 1, TAG_ACK);
        } else {
          for (let j = 0; j < WINDOW_SIZE; j++) reqs[j] = comm.irecv(r, 0, TAG_DATA);
          comm.waitall(reqs);
          comm.send(ack, 0, TAG_ACK);
        }
      }
      if (comm.rank !== 0) return { value: 0 };
      const t = MPI.wtime() - t0;
      return { value: ((size / 1e6) * iters * WINDOW_SIZE) / t };
    },
  });
}

/**
 * NAS EP (NPB 3.4): the embarrassingly parallel kernel. 2^(M+1) uniform numbers in batches of
 * 2^16 pairs, Gaussian pairs by the acceptance-rejection Box-Muller (Marsaglia polar) method,
 * their sums and counts in the annuli [l, l+1). Batches are split over the ranks; the sums and
 * counts are combined with one allreduce. Verification: relative error of both sums <= 1e-8.
 */
import { MPI } from "../../mpi/mpi.js";
import type { Guest } from "../../xen/guest/guest.js";
import {
  A_MULT,
  EP_CLASSES,
  fortranE,
  nasOptions,
  powTwo,
  report,
  type Seed,
  skipAhead,
  usageExit,
  vranlc,
} from "./common.js";

const MK = 16;
const NK = 1 << MK;
const NQ = 10;
const SEED = 271828183;
const EPSILON = 1e-8;

export interface EpPartial {
  sx: number;
  sy: number;
  q: Float64Array;
}

/** Batches [first, first+count) of an EP run: the pure computation of one rank. */
export function epBatches(first: number, count: number): EpPartial {
  const x = new Float64Array(2 * NK);
  const q = new Float64Array(NQ);
  const an = powTwo(A_MULT, MK + 1);
  let sx = 0;
  let sy = 0;
  const seed: Seed = { x: 0 };
  for (let k = 0; k < count; k++) {
    seed.x = skipAhead(SEED, an, first + k);
    vranlc(2 * NK, seed, A_MULT, x);
    for (let i = 0; i < NK; i++) {
      const x1 = 2 * x[2 * i] - 1;
      const x2 = 2 * x[2 * i + 1] - 1;
      const t1 = x1 * x1 + x2 * x2;
      if (t1 <= 1) {
        const t2 = Math.sqrt((-2 * Math.log(t1)) / t1);
        const t3 = x1 * t2;
        const t4 = x2 * t2;
        const l = Math.trunc(Math.max(Math.abs(t3), Math.abs(t4)));
        q[l] += 1;
        sx += t3;
        sy += t4;
      }
    }
  }
  return { sx, sy, q };
}

/** The batches of rank `rank` of `size` (NPB's split: the first nn mod size ranks get one more). */
export function epShare(nn: number, rank: number, size: number): { first: number; count: number } {
  const base = Math.floor(nn / size);
  const large = nn % size;
  if (rank < large) return { first: rank * (base + 1), count: base + 1 };
  return { first: large * (base + 1) + (rank - large) * base, count: base };
}

async function run(guest: Guest): Promise<number> {
  const opts = nasOptions(guest, "ep");
  if (!opts) return usageExit(guest);
  const p = EP_CLASSES[opts.cls];
  const comm = await MPI.init(guest);
  const { rank, size } = comm;
  const nn = 2 ** (p.m - MK);
  if (rank === 0) {
    console.log("\n\n NAS Parallel Benchmarks 3.4 -- EP Benchmark\n");
    console.log(` Number of random numbers generated: ${fortranE(2 ** (p.m + 1), 15)}`);
    console.log(` Number of active processes:         ${size}\n`);
  }
  comm.barrier();
  const t0 = MPI.wtime();
  const share = epShare(nn, rank, size);
  const part = epBatches(share.first, share.count);
  const sums = new Float64Array(2 + NQ);
  sums[0] = part.sx;
  sums[1] = part.sy;
  sums.set(part.q, 2);
  const total = new Float64Array(2 + NQ);
  comm.allreduce(sums, total, MPI.SUM);
  const local = new Float64Array([MPI.wtime() - t0]);
  const tmax = new Float64Array(1);
  comm.allreduce(local, tmax, MPI.MAX);
  const tm = tmax[0];

  const sx = total[0];
  const sy = total[1];
  const q = Array.from(total.subarray(2));
  const gc = q.reduce((a, b) => a + b, 0);
  const sxErr = Math.abs((sx - p.sx) / p.sx);
  const syErr = Math.abs((sy - p.sy) / p.sy);
  const verified = sxErr <= EPSILON && syErr <= EPSILON;
  const mops = 2 ** (p.m + 1) / tm / 1e6;
  if (rank === 0) {
    console.log(" EP Benchmark Results:\n");
    console.log(` CPU Time =${tm.toFixed(4).padStart(10)}`);
    console.log(` N = 2^${String(p.m).padStart(5)}`);
    console.log(` No. Gaussian Pairs = ${gc.toFixed(0).padStart(15)}.`);
    console.log(` Sums = ${fortranE(sx, 15).padStart(25)} ${fortranE(sy, 15).padStart(25)}`);
    console.log(" Counts: ");
    for (let i = 0; i < NQ; i++) console.log(`${String(i).padStart(4)}${q[i].toFixed(0).padStart(15)}.`);
  }
  report(guest, opts, {
    kernel: "ep",
    cls: opts.cls,
    ranks: size,
    path: opts.path,
    verified,
    time_s: tm,
    mops,
    size: `2^${p.m + 1}`,
    iterations: 0,
    opType: "Random numbers generated",
    values: { sx, sy, sx_ref: p.sx, sy_ref: p.sy, sx_err: sxErr, sy_err: syErr, gaussian_pairs: gc, q },
  });
  comm.finalize();
  return verified ? 0 : 1;
}

/** (The guest runtime hands on what the program printed before its domain ends.) */
export default function main(guest: Guest): Promise<number> {
  return run(guest);
}

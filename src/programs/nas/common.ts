/**
 * Shared pieces of the NAS kernels (EP, IS, CG after NPB 3.4): the randlc/vranlc linear
 * congruential generator (exact in doubles), the per-class parameter tables, argument parsing
 * (`--class S|W|A`, `--warmup auto|N`, `--json FILE` from guest.args.job.argv), the untimed
 * warm-up, NPB-style result printing and the `--json` result file.
 */
import { rankArgs, writeRankFile } from "../../cluster/protocol.js";
import { type Comm, MPI } from "../../mpi/mpi.js";
import type { Guest } from "../../xen/guest/guest.js";
import { type NasClass, parseNasArgs, type Warmup } from "./args.js";

// The arguments live in args.ts (the launcher checks them without loading MPI).
export { CLASSES, MAX_WARMUP, type NasClass, parseNasArgs, type Warmup } from "./args.js";

// ---- RNG ----------------------------------------------------------------------------------

/** The multiplier a = 5^13 of every NPB generator. */
export const A_MULT = 1220703125;
export const R23 = 2 ** -23;
export const R46 = R23 * R23;
export const T23 = 2 ** 23;
export const T46 = T23 * T23;

/** A generator state: x, an odd integer in (1, 2^46) held in a double. */
export interface Seed {
  x: number;
}

/**
 * x ← a·x mod 2^46; returns x / 2^46 in (0, 1). Exact in IEEE doubles: a and x are split into
 * 23-bit halves so that no product exceeds 2^53.
 */
export function randlc(seed: Seed, a: number): number {
  let t1 = R23 * a;
  const a1 = Math.trunc(t1);
  const a2 = a - T23 * a1;
  t1 = R23 * seed.x;
  const x1 = Math.trunc(t1);
  const x2 = seed.x - T23 * x1;
  t1 = a1 * x2 + a2 * x1;
  const t2 = Math.trunc(R23 * t1);
  const z = t1 - T23 * t2;
  const t3 = T23 * z + a2 * x2;
  const t4 = Math.trunc(R46 * t3);
  seed.x = t3 - T46 * t4;
  return R46 * seed.x;
}

/** n successive randlc values into y[off .. off+n-1]; seed.x advances by n steps. */
export function vranlc(n: number, seed: Seed, a: number, y: Float64Array, off = 0): void {
  let t1 = R23 * a;
  const a1 = Math.trunc(t1);
  const a2 = a - T23 * a1;
  let x = seed.x;
  for (let i = 0; i < n; i++) {
    t1 = R23 * x;
    const x1 = Math.trunc(t1);
    const x2 = x - T23 * x1;
    t1 = a1 * x2 + a2 * x1;
    const t2 = Math.trunc(R23 * t1);
    const z = t1 - T23 * t2;
    const t3 = T23 * z + a2 * x2;
    const t4 = Math.trunc(R46 * t3);
    x = t3 - T46 * t4;
    y[off + i] = R46 * x;
  }
  seed.x = x;
}

/** a^(2^k) mod 2^46 (as NPB computes it: k squarings with randlc). */
export function powTwo(a: number, k: number): number {
  const t = { x: a };
  for (let i = 0; i < k; i++) randlc(t, t.x);
  return t.x;
}

/** s · an^kk mod 2^46: the seed kk "strides" of the generator whose stride multiplier is an. */
export function skipAhead(s: number, an: number, kk: number): number {
  const t1 = { x: s };
  const t2 = { x: an };
  let k = kk;
  for (let i = 0; i < 100; i++) {
    const ik = Math.floor(k / 2);
    if (2 * ik !== k) randlc(t1, t2.x);
    if (ik === 0) break;
    randlc(t2, t2.x);
    k = ik;
  }
  return t1.x;
}

// ---- classes ------------------------------------------------------------------------------

export interface EpParams {
  m: number;
  sx: number;
  sy: number;
}
export const EP_CLASSES: Record<NasClass, EpParams> = {
  S: { m: 24, sx: -3.24783465203474e3, sy: -6.958407078382297e3 },
  W: { m: 25, sx: -2.863319731645753e3, sy: -6.320053679109499e3 },
  A: { m: 28, sx: -4.295875165629892e3, sy: -1.580732573678431e4 },
};

export interface IsParams {
  totalKeysLog2: number;
  maxKeyLog2: number;
  numBucketsLog2: number;
  testIndex: number[];
  testRank: number[];
  /** The expected rank of test key i at iteration it. */
  expected: (i: number, it: number, base: number) => number;
}
export const IS_CLASSES: Record<NasClass, IsParams> = {
  S: {
    totalKeysLog2: 16,
    maxKeyLog2: 11,
    numBucketsLog2: 9,
    testIndex: [48427, 17148, 23627, 62548, 4431],
    testRank: [0, 18, 346, 64917, 65463],
    expected: (i, it, base) => (i <= 2 ? base + it : base - it),
  },
  W: {
    totalKeysLog2: 20,
    maxKeyLog2: 16,
    numBucketsLog2: 10,
    testIndex: [357773, 934767, 875723, 898999, 404505],
    testRank: [1249, 11698, 1039987, 1043896, 1048018],
    expected: (i, it, base) => (i < 2 ? base + (it - 2) : base - it),
  },
  A: {
    totalKeysLog2: 23,
    maxKeyLog2: 19,
    numBucketsLog2: 10,
    testIndex: [2112377, 662041, 5336171, 3642833, 4250760],
    testRank: [104, 17523, 123928, 8288932, 8388264],
    expected: (i, it, base) => (i <= 2 ? base + (it - 1) : base - (it - 1)),
  },
};

export interface CgParams {
  na: number;
  nonzer: number;
  niter: number;
  shift: number;
  rcond: number;
  zeta: number;
}
export const CG_CLASSES: Record<NasClass, CgParams> = {
  S: { na: 1400, nonzer: 7, niter: 15, shift: 10.0, rcond: 0.1, zeta: 8.5971775078648 },
  W: { na: 7000, nonzer: 8, niter: 15, shift: 12.0, rcond: 0.1, zeta: 10.362595087124 },
  A: { na: 14000, nonzer: 11, niter: 15, shift: 20.0, rcond: 0.1, zeta: 17.130235054029 },
};

// ---- arguments ----------------------------------------------------------------------------

export interface NasOptions {
  kernel: string;
  cls: NasClass;
  json?: string;
  /** Untimed iterations before the timed loop (warmUp); undefined for EP, which has none. */
  warmup?: Warmup;
  rank: number;
  size: number;
  path: string;
}

/**
 * The options of this rank: its place in the job and its parsed arguments. On a bad argument
 * rank 0 prints the message to stderr; every rank returns undefined (the caller returns
 * usageExit).
 */
export function nasOptions(guest: Guest, kernel: string): NasOptions | undefined {
  const job = rankArgs(guest.args);
  const rank = job?.rank ?? 0;
  try {
    const { cls, json, warmup } = parseNasArgs(kernel, job?.argv ?? []);
    return { kernel, cls, json, warmup, rank, size: job?.size ?? 1, path: job?.path ?? "native" };
  } catch (e) {
    if (rank === 0) console.error(e instanceof Error ? e.message : String(e));
    return undefined;
  }
}

/**
 * A rank's exit code after a bad argument: 2 on rank 0, which said why; 0 on the others, so the
 * job fails with rank 0's exit after its message (ranks start at once: another rank failing
 * first would end the job before rank 0 had printed it).
 */
export function usageExit(guest: Guest): number {
  return (rankArgs(guest.args)?.rank ?? 0) === 0 ? 2 : 0;
}

// ---- warm-up ------------------------------------------------------------------------------

/** "auto" warms up for this long (all ranks agree on the clock of the slowest)... */
export const AUTO_WARMUP_S = 2;
/** ...but for no more than this many passes of the timed loop (small classes stop here). */
export const AUTO_WARMUP_PASSES = 4;

export interface WarmupDone {
  iterations: number;
  seconds: number;
}

/**
 * The untimed iterations before the timed loop. NPB runs one, "to touch all code and data".
 * In JavaScript that leaves most of the MPI and MX runtime in V8's lower tiers: they reach
 * the optimizing compiler after thousands of calls, and it compiles them on background
 * threads that, when the ranks hold every core, take a core from a rank while its peers wait
 * for it. CG class A on two ranks took 0.63–0.72 s for its first pass of 15 iterations and
 * 0.54 s once the compiles stopped, four passes later; IS 0.50–0.57 against 0.43–0.46 s
 * (one rank: the same from the first pass). "auto" repeats the kernel's iterations until
 * AUTO_WARMUP_S have gone or AUTO_WARMUP_PASSES passes are done, so the timed loop measures
 * the kernel and its messages rather than the compiler; a number runs exactly that many
 * (`--warmup 1` is NPB's rule). `iterate(it)` runs iteration `it` (1..passIterations, cycling).
 * The count and the time are reported beside the timed result.
 */
export function warmUp(
  comm: Comm,
  warmup: Warmup,
  passIterations: number,
  iterate: (it: number) => void,
): WarmupDone {
  const t0 = MPI.wtime();
  let done = 0;
  if (warmup !== "auto") {
    for (; done < warmup; done++) iterate(1 + (done % passIterations));
  } else {
    const mine = new Float64Array(1);
    const slowest = new Float64Array(1);
    const most = AUTO_WARMUP_PASSES * passIterations;
    do {
      iterate(1 + (done % passIterations));
      done++;
      // Every rank takes the same decision: on the slowest rank's clock.
      mine[0] = MPI.wtime() - t0;
      comm.allreduce(mine, slowest, MPI.MAX);
    } while (slowest[0] < AUTO_WARMUP_S && done < most);
  }
  return { iterations: done, seconds: MPI.wtime() - t0 };
}

/** The line that says how the kernel warmed up (printed before the timed loop). */
export function warmupLine(w: WarmupDone): string {
  return ` Warm-up: ${w.iterations} untimed iteration${w.iterations === 1 ? "" : "s"} (${w.seconds.toFixed(2)} s)`;
}

// ---- output -------------------------------------------------------------------------------

/** `x.toExponential(d)` in Fortran style: mantissa, "E", sign, two-digit exponent. */
export function fortranE(x: number, digits: number): string {
  const s = x.toExponential(digits);
  const [m, e] = s.split("e");
  const n = Number(e);
  return `${m}E${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
}

export interface NasResult {
  kernel: string;
  cls: NasClass;
  ranks: number;
  path: string;
  verified: boolean;
  time_s: number;
  mops: number;
  /** Printed as " Size" (a string so that it can be "1400" or "2^24"). */
  size: string;
  iterations: number;
  opType: string;
  values: Record<string, unknown>;
}

const field = (label: string, value: string, width = 25): string =>
  ` ${label.padEnd(16)}=${value.padStart(width)}`;

/** The closing block NPB prints (print_results), ending with the Verification line. */
export function printResults(r: NasResult): void {
  const lines = [
    "",
    ` ${r.kernel.toUpperCase()} Benchmark Completed.`,
    field("Class", r.cls, 26),
    field("Size", r.size),
    field("Iterations", String(r.iterations)),
    field("Time in seconds", r.time_s.toFixed(2)),
    field("Total processes", String(r.ranks)),
    field("Mop/s total", r.mops.toFixed(2)),
    field("Mop/s/process", (r.mops / r.ranks).toFixed(2)),
    ` Operation type  = ${r.opType.padStart(24)}`,
    ` Verification    =               ${r.verified ? "SUCCESSFUL" : "UNSUCCESSFUL"}`,
    ` Path            =${r.path.padStart(26)}`,
    "",
  ];
  console.log(lines.join("\n"));
}

/** The `--json` result file (rank 0), written by the host that runs the rank (a guest cannot write files). */
export function writeNasJson(guest: Guest, file: string, r: NasResult): void {
  const out = {
    kernel: r.kernel,
    class: r.cls,
    ranks: r.ranks,
    path: r.path,
    verified: r.verified,
    time_s: r.time_s,
    mops: r.mops,
    values: r.values,
  };
  writeRankFile(guest, 0, file, `${JSON.stringify(out, null, 2)}\n`);
}

/** Prints the results and writes the JSON file when asked (rank 0 only). */
export function report(guest: Guest, opts: NasOptions, r: NasResult): void {
  if (opts.rank !== 0) return;
  printResults(r);
  if (opts.json) writeNasJson(guest, opts.json, r);
}

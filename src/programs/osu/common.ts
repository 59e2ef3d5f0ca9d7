/**
 * Shared driver of the OSU micro-benchmark programs (OMB 7.x methodology): argument parsing
 * (`-m [MIN:]MAX`, `-i ITERS`, `-x SKIP`, `--jit-warmup N`, `--json FILE`), the message-size
 * sweep, the iteration/skip counts (small vs large above LARGE_MESSAGE_SIZE), OSU's header and
 * `%-10d%20.2f` rows, and the `--json` report in the project's benchmark row format.
 *
 * One thing OSU's C does not need: before the sweep, untimed iterations at its first size
 * (`Loops.jit`, at most JIT_WARMUP_MS), said in a `# Warm-up:` line. OSU's per-size skip (100
 * at small sizes) is over long before V8 has compiled the MPI path: a 2-rank osu-allreduce
 * printed 5–100 µs at small sizes where the same calls take 1.4–2.7 µs once warm.
 */

import { rankArgs, writeRankFile } from "../../cluster/protocol.js";
import { type Comm, MPI } from "../../mpi/mpi.js";
import type { Guest } from "../../xen/guest/guest.js";
import {
  type BenchRow,
  endMachineInfo,
  type Metric,
  makeRow,
  startMachineInfo,
  validateReport,
} from "../rows.js";
import { type OsuOptions, parseOsuArgs } from "./args.js";

// The arguments live in args.ts (the launcher checks them without loading MPI).
export { OSU_SIZES, type OsuOptions, parseOsuArgs } from "./args.js";

export const LARGE_MESSAGE_SIZE = 8192;
export const WINDOW_SIZE = 64;
export const OSU_VERSION = "7.4";

export interface Loops {
  small: number;
  skipSmall: number;
  large: number;
  skipLarge: number;
  /** Untimed iterations before the sweep, at its first size (JIT warm-up; --jit-warmup). */
  jit: number;
}
export const LAT_LOOPS: Loops = { small: 10000, skipSmall: 100, large: 1000, skipLarge: 10, jit: 20000 };
export const BW_LOOPS: Loops = { small: 100, skipSmall: 10, large: 20, skipLarge: 2, jit: 300 };
export const COLL_LOOPS: Loops = { small: 1000, skipSmall: 100, large: 100, skipLarge: 10, jit: 20000 };
/** The JIT warm-up ends after this long whatever its count (a large first size). */
export const JIT_WARMUP_MS = 500;

/** OSU's sweep: `for (size = min; size <= max; size = size ? size * 2 : 1)`. */
export function osuSizes(min: number, max: number): number[] {
  const out: number[] = [];
  for (let s = min; s <= max; s = s ? s * 2 : 1) out.push(s);
  return out;
}

/** Iterations and warm-up for one size: the large counts apply above LARGE_MESSAGE_SIZE. */
export function loopsFor(size: number, loops: Loops, o: OsuOptions): { iters: number; skip: number } {
  const large = size > LARGE_MESSAGE_SIZE;
  return {
    iters: o.iters ?? (large ? loops.large : loops.small),
    skip: o.skip ?? (large ? loops.skipLarge : loops.skipSmall),
  };
}

/** `%-10d%20.2f` */
export function osuRow(size: number, value: number): string {
  return `${String(size).padEnd(10)}${value.toFixed(2).padStart(20)}`;
}

/** OSU prints its column header 28 wide: `%-10s%18s`. */
export function osuColumns(column: string): string {
  return `${"# Size".padEnd(10)}${column.padStart(18)}`;
}

/** One size's result at rank 0: the value, and the spread over ranks when there is one. */
export interface Sample {
  value: number;
  min?: number;
  max?: number;
}

export interface OsuSpec {
  /** Project benchmark name, e.g. "osu-latency". */
  bench: string;
  /** The header title after "# ", e.g. "OSU MPI Latency Test". */
  title: string;
  column: string;
  metric: Metric;
  /** "pair": exactly 2 ranks; "many": at least 2. */
  ranks: "pair" | "many";
  defaults: { min: number; max: number };
  loops: Loops;
  /** Runs one size on every rank; rank 0's return value is the result. */
  measure(comm: Comm, size: number, iters: number, skip: number): Sample;
}

/**
 * Runs an OSU benchmark program; returns the exit code (0, or 2 for bad arguments). (The
 * guest runtime hands on what the program printed before its domain ends.)
 */
export async function runOsu(guest: Guest, spec: OsuSpec): Promise<number> {
  const job = rankArgs(guest.args);
  const rank = job?.rank ?? 0;
  const size = job?.size ?? 1;
  const path = job?.path ?? "native";
  let o: OsuOptions;
  try {
    o = parseOsuArgs(spec.bench, job?.argv ?? [], spec.defaults);
    if (spec.ranks === "pair" && size !== 2)
      throw new Error(`${spec.bench}: this test requires exactly two processes, got ${size}`);
    if (spec.ranks === "many" && size < 2)
      throw new Error(`${spec.bench}: this test requires at least two processes, got ${size}`);
  } catch (e) {
    if (rank === 0) console.error(e instanceof Error ? e.message : String(e));
    // The job fails with rank 0's exit, after its message: ranks start at once, and another
    // rank's failing first would end the job before rank 0 had said why.
    return rank === 0 ? 2 : 0;
  }
  // The host's facts, as the launcher handed them (a guest has no node:os).
  const machine = rank === 0 && job?.machine ? startMachineInfo(job.machine) : undefined;
  const comm = await MPI.init(guest);
  if (rank === 0) {
    console.log(`# ${spec.title} v${OSU_VERSION}`);
    console.log("# Datatype: MPI_CHAR.");
  }
  const sizes = osuSizes(o.min, o.max);
  // An empty message takes other paths than a full one: a sweep from 0 B warms up at 1 B too
  // (warmed at 0 B alone, osu-latency's 1 B read 1.2–2.4 µs against 0.7–1.1 for 2–64 B).
  const warmSizes = sizes[0] === 0 && sizes.length > 1 ? sizes.slice(0, 2) : sizes.slice(0, 1);
  const count = o.jitWarmup ?? spec.loops.jit;
  let warmed = 0;
  for (const w of warmSizes) warmed += jitWarmup(comm, spec, w, Math.ceil(count / warmSizes.length));
  if (rank === 0) {
    if (warmed > 0)
      console.log(
        `# Warm-up: ${warmed} untimed iterations at ${warmSizes.join(" and ")} B before the sweep, for V8's JIT (--jit-warmup 0: none)`,
      );
    console.log(osuColumns(spec.column));
  }
  const rows: BenchRow[] = [];
  for (const bytes of sizes) {
    const { iters, skip } = loopsFor(bytes, spec.loops, o);
    comm.barrier();
    const s = spec.measure(comm, bytes, iters, skip);
    if (rank === 0) {
      console.log(osuRow(bytes, s.value));
      const min = Math.min(s.min ?? s.value, s.value);
      const max = Math.max(s.max ?? s.value, s.value);
      const summary = { median: s.value, min, max, runs: 1 };
      rows.push(makeRow({ bench: spec.bench, transport: path, bytes, metric: spec.metric }, summary));
    }
  }
  // The host running rank 0 writes the report (a guest cannot write files).
  if (rank === 0 && o.json && machine) {
    const report = validateReport({ machine: endMachineInfo(machine, rows), rows });
    writeRankFile(guest, rank, o.json, `${JSON.stringify(report, null, 2)}\n`);
  }
  comm.barrier();
  comm.finalize();
  return 0;
}

/**
 * Runs `spec`'s measurement untimed at `size`, `count` iterations in all, in chunks, until
 * JIT_WARMUP_MS has passed on rank 0 (which tells the others after each chunk, so every rank
 * runs as many). Returns the iterations run.
 */
function jitWarmup(comm: Comm, spec: OsuSpec, size: number, count: number): number {
  if (count === 0) return 0;
  // Large messages one at a time, so that the time limit holds (200 of 1 MiB on the split
  // path took seconds in one chunk).
  const chunk = size > LARGE_MESSAGE_SIZE ? 1 : Math.max(1, Math.min(count, Math.ceil(count / 100)));
  const more = new Int32Array(1);
  const t0 = MPI.wtime();
  let done = 0;
  comm.barrier();
  while (done < count) {
    const n = Math.min(chunk, count - done);
    spec.measure(comm, size, n, 0);
    done += n;
    more[0] = (MPI.wtime() - t0) * 1000 < JIT_WARMUP_MS ? 1 : 0;
    comm.bcast(more, 0);
    if (more[0] === 0) break;
  }
  return done;
}

/**
 * A message buffer of `n` bytes filled with `fill` (OSU fills 'a' for sends, 'b' for
 * receives). With a communicator it lives in the rank's guest memory (MPI_Alloc_mem), as
 * OSU's buffers are page-aligned and pinned, so large messages need no bounce copy.
 */
export function buffer(n: number, fill: number, comm?: Comm): Uint8Array {
  return (comm ? comm.allocMem(Math.max(n, 1)) : new Uint8Array(Math.max(n, 1))).fill(fill);
}

/**
 * The send and receive buffers of a sweep, grown (in guest memory) as the sizes grow:
 * `views(comm, size)` returns [send, receive] views of exactly `size` bytes.
 */
export function sweepBuffers(sendFill: number, recvFill: number) {
  let sbuf = buffer(1, sendFill);
  let rbuf = buffer(1, recvFill);
  return {
    views(comm: Comm, size: number): [Uint8Array, Uint8Array] {
      if (sbuf.length < size) {
        sbuf = buffer(size, sendFill, comm);
        rbuf = buffer(size, recvFill, comm);
      }
      return [sbuf.subarray(0, size), rbuf.subarray(0, size)];
    },
  };
}

export { MPI };

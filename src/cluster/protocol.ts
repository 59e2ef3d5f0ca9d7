/**
 * How a job's launcher and its ranks find each other (the PMI of this project). A rank is a
 * guest (bypass path) or a native process; its `guest.args.job` says who it is, including the
 * job's MX endpoint key. At MPI init the rank opens an MX endpoint with that key, tells the
 * launcher its address, and gets everyone's back.
 *
 * Job keys: each job's launcher draws its own random key (job.ts newJobKey, node:crypto), so a
 * rank of another job cannot connect to this job's endpoints; a host refuses a job whose key
 * is one a job still running there has (ranks.ts). This file is imported by guest code (the
 * MPI library), so it uses no Node module.
 */

/**
 * The MX endpoint key every job used to share (before per-job keys). Never a job's key: a
 * launcher does not draw it, hosts and MPI.init refuse it.
 */
export const OLD_SHARED_JOB_KEY = 0x4d504921;

/** A usable job key: a u32 other than 0 and OLD_SHARED_JOB_KEY. */
export function isJobKey(k: unknown): k is number {
  return Number.isInteger(k) && (k as number) >= 1 && (k as number) <= 0xffffffff && k !== OLD_SHARED_JOB_KEY;
}

import type { MachineFacts } from "../host/machine.js";

export interface RankArgs {
  rank: number;
  size: number;
  /** "native", "bypass" or "split". */
  path: string;
  /** The program's own arguments (after PROGRAM on the command line). */
  argv: string[];
  /** The job's MX endpoint key (isJobKey). */
  key: number;
  /** The facts of the machine the rank runs on (a guest has no node:os), for reports. */
  machine?: MachineFacts;
  /** Where MPI writes the call it blocks in, for `myrixen run --timeout` (rank-state.ts). */
  state?: SharedArrayBuffer;
}

export type RankToLauncher =
  | { type: "mpi-addr"; rank: number; nic: number; endpoint: number }
  /** A result file for the job's launcher to write (a guest cannot write files). */
  | { type: "output-file"; rank: number; file: string; text: string };

/**
 * Asks the job's launcher to write `text` to `file` (relative to the directory the job was
 * launched from): the host that runs the rank relays the request and writes nothing itself
 * (cluster/wire.ts). The launcher writes only a file the user named in the program's
 * arguments, and a failed write fails the rank, saying why on its stderr.
 */
export function writeRankFile(
  guest: { send(m: unknown): void },
  rank: number,
  file: string,
  text: string,
): void {
  guest.send({ type: "output-file", rank, file, text } satisfies RankToLauncher);
}
export type LauncherToRank = { type: "mpi-peers"; peers: { nic: number; endpoint: number }[] };

/** The rank's view of its job, from guest.args (undefined when the program was not started by a launcher). */
export function rankArgs(args: unknown): RankArgs | undefined {
  const job = (args as { job?: RankArgs } | undefined)?.job;
  if (!job || !Number.isInteger(job.rank) || !Number.isInteger(job.size)) return undefined;
  return job;
}

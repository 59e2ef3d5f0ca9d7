/**
 * How a job's launcher and its ranks find each other (the PMI of this project). A rank is a
 * guest (bypass path) or a native process; its `guest.args.job` says who it is. At MPI init
 * the rank opens an MX endpoint, tells the launcher its address, and gets everyone's back.
 */

/** The MX endpoint key every rank of a job opens with. */
export const JOB_KEY = 0x4d504921;

export interface RankArgs {
  rank: number;
  size: number;
  /** "native", "bypass" or "split". */
  path: string;
  /** The program's own arguments (after PROGRAM on the command line). */
  argv: string[];
}

export type RankToLauncher = { type: "mpi-addr"; rank: number; nic: number; endpoint: number };
export type LauncherToRank = { type: "mpi-peers"; peers: { nic: number; endpoint: number }[] };

/** The rank's view of its job, from guest.args (undefined when the program was not started by a launcher). */
export function rankArgs(args: unknown): RankArgs | undefined {
  const job = (args as { job?: RankArgs } | undefined)?.job;
  if (!job || !Number.isInteger(job.rank) || !Number.isInteger(job.size)) return undefined;
  return job;
}

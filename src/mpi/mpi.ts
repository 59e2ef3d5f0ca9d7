/**
 * The MPI library's entry: `MPI.init(guest)` bootstraps a rank of a job started by the
 * launcher (cluster/job.ts): it opens an MX endpoint with the job's own key (drawn by the
 * launcher, in guest.args.job.key; ranks of other jobs hold other keys and cannot connect),
 * tells the launcher its address, receives everyone's, connects to every other rank and
 * synchronizes. It returns the world communicator; everything else is on Comm (comm.ts).
 */
import { isJobKey, type LauncherToRank, type RankToLauncher, rankArgs } from "../cluster/protocol.js";
import { callCode, NONE, RECEIVING, rankStateWriter } from "../cluster/rank-state.js";
import { Mx } from "../mx/mx.js";
import { BUSY_POLL_MAX_US } from "../mx/spin-budget.js";
import type { Guest } from "../xen/guest/guest.js";
import {
  ANY_SOURCE,
  ANY_TAG,
  Comm,
  IN_PLACE,
  MpiError,
  MpiRequest,
  type MpiStatus,
  Runtime,
} from "./comm.js";
import { MAX, MIN, type MpiBuffer, MpiOp, PROD, SUM } from "./ops.js";

export type { InPlace } from "./comm.js";
export { Comm, type MpiBuffer, MpiError, MpiOp, MpiRequest, type MpiStatus };

async function init(guest: Guest): Promise<Comm> {
  const job = rankArgs(guest?.args);
  if (!job)
    throw new MpiError(
      "MPI.init: this program was not started as a rank of a job (guest.args.job is missing); run this program with myrixen run",
    );
  const { rank, size } = job;
  if (size < 1 || size > 0x10000 || rank < 0 || rank >= size)
    throw new MpiError(`MPI.init: rank ${rank} of size ${size} is not a valid job position`);
  const key = job.key;
  if (!isJobKey(key))
    throw new MpiError(
      "MPI.init: this rank has no valid job key (guest.args.job.key); start the job with myrixen run, whose launcher draws one per job",
    );
  // "split": MX over Ethernet through the driver domain. Otherwise the fast path, and if the
  // host cannot give it, the split path (the accelerator model) — said on stderr, since it
  // changes what the job measures.
  const mx = Mx.init(guest, { path: job.path === "split" ? "split" : "auto" });
  try {
    const cores = job.machine?.cpus?.count ?? 0;
    const ep = mx.openEndpoint({ key });
    if (ep.fallbackReason !== undefined && job.path !== "split")
      console.error(`MPI rank ${rank}: running on the split path: ${ep.fallbackReason}`);
    guest.send({ type: "mpi-addr", rank, nic: ep.nicId, endpoint: ep.endpointId } satisfies RankToLauncher);
    const callState = rankStateWriter(job.state);
    callState?.block(callCode("MPI_Init"), RECEIVING, NONE, NONE);
    let peers: LauncherToRank["peers"];
    for (;;) {
      const m = (await guest.nextMessage()) as Partial<LauncherToRank> | undefined;
      if (m?.type === "mpi-peers" && Array.isArray(m.peers)) {
        peers = m.peers;
        break;
      }
    }
    if (peers.length !== size)
      throw new MpiError(`MPI.init: the launcher sent ${peers.length} addresses for a job of ${size} ranks`);
    // With a core per rank a blocked rank may busy-poll (as Open MPI's do): its spin grows to
    // BUSY_POLL_MAX_US while peers answer within it and nothing preempts it (mx/spin-budget.ts).
    // Only when every peer shares this host's NIC, on the fast path: messages to a peer behind
    // the NIC (another host, or the split path's driver domain) need those threads to run, and
    // ranks busy-polling on their cores kept them waiting (two hosts on a 2-core machine: 8 B
    // one way 244 µs busy-polling, 92 µs not, in one `myrixen start --quick` each).
    const coResident = peers.every((p) => p.nic === ep.nicId);
    if (coResident && size <= cores && ep.fallbackReason === undefined && job.path !== "split")
      ep.setSpinMax(BUSY_POLL_MAX_US);
    const addrs = peers.map((p, i) => (i === rank ? undefined : ep.connect(p.nic, p.endpoint, key)));
    const rt = new Runtime(mx, ep, addrs);
    const world = new Comm(
      rt,
      0,
      peers.map((_, i) => i),
      rank,
    );
    rt.world = world;
    // Init's own barrier counts as MPI_Init in the --timeout report.
    world.barrier();
    rt.callState = callState;
    callState?.unblock();
    return world;
  } catch (e) {
    mx.finalize();
    throw e;
  }
}

export const MPI = {
  init,
  /** MPI_Finalize for the rank that owns `comm` (same as comm.finalize()). */
  finalize(comm: Comm): void {
    comm.finalize();
  },
  /** Seconds since an arbitrary origin (performance.now based), like MPI_Wtime. */
  wtime(): number {
    return performance.now() / 1000;
  },
  ANY_SOURCE,
  ANY_TAG,
  IN_PLACE,
  SUM,
  MIN,
  MAX,
  PROD,
} as const;

/**
 * The MPI library's side of `myrixen run --timeout`: the codes of the point-to-point calls a
 * rank can block in (cluster/rank-state.ts CALL_NAMES; a collective's code comes from its
 * name, coll-transport.ts). Before a wait that will block, the point-to-point and collective
 * layers write the call, its direction, peer and tag into the rank's state words
 * (Runtime.callState) and clear them after; a call that does not block writes nothing.
 */

import { callCode } from "../cluster/rank-state.js";

export const CALL_SEND = callCode("MPI_Send");
export const CALL_RECV = callCode("MPI_Recv");
export const CALL_WAIT = callCode("MPI_Wait");
export const CALL_WAITALL = callCode("MPI_Waitall");
export const CALL_WAITANY = callCode("MPI_Waitany");
export const CALL_SENDRECV = callCode("MPI_Sendrecv");
export const CALL_PROBE = callCode("MPI_Probe");

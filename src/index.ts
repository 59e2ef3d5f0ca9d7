/**
 * The public API of the `myrixen` package: the hypervisor layer (domains, grant tables, event
 * channels, XenStore, shared rings) and the types a guest program needs.
 */

export { Job, type JobResult, type JobSpec } from "./cluster/job.js";
// The machine and the MX library.
export { Host, type HostOptions } from "./host/host.js";
export { Comm, MPI, MpiError, type MpiStatus } from "./mpi/mpi.js";
export { MX_ANY_ENDPOINT, MX_INFINITE, MxError, MxReturn, mxStrerror } from "./mx/codes.js";
export { MxAddress, MxEndpoint, MxRequest, MxStatusInfo } from "./mx/endpoint.js";
export { joinMatch, MATCH_MASK_NONE, Mx, splitMatch } from "./mx/mx.js";
export { MxStatus } from "./nic/status.js";
export * from "./xen/abi.js";
export { type CounterName, type CounterSnapshot, diffCounters } from "./xen/counters.js";
export { EventChannelPort, HypercallError, type WaitResult } from "./xen/event-channel.js";
export { type GrantCopyOp, type GrantCopySide, GrantError } from "./xen/grant-table.js";
export { GrantMapping, type Guest, type GuestGrants, type MapResult } from "./xen/guest/guest.js";
export { HypercallFailed } from "./xen/hypercall.js";
export {
  Domain,
  type DomainConfig,
  type DomainExit,
  type DomainState,
  Hypervisor,
} from "./xen/hypervisor.js";
export { GuestMemory, OutOfMemoryError, PageAllocator, type PageRun } from "./xen/memory.js";
export { BackRing, FrontRing, initSharedRing, ringEntries, ringSlotSize } from "./xen/ring.js";
export { adaptiveWait, DEFAULT_SPIN_US } from "./xen/wait.js";
export * from "./xen/xenbus.js";
export {
  LocalXenStoreClient,
  type XenStoreClient,
  XenStoreError,
  type XenStorePerm,
  type XenStoreTx,
} from "./xen/xenstore.js";

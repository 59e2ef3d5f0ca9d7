/**
 * The guest-side face of the `myrixen` package: everything index.ts exports but the host-side
 * classes (reach.ts HOST_SIDE_EXPORTS). A guest program's `import … from "myrixen"` loads this
 * module, not index.ts: the host side (the hypervisor, the TypeScript compiler it uses for
 * guest images, the launcher and its config validation) is 54 more modules a guest can never
 * use, and loading them cost every rank ~0.35 s of CPU at start (`myrixen run -n 2` of a hello
 * world: 2.9 → 2.2 CPU-s). index.ts re-exports all of this, so a host-side program sees one API.
 */

// A rank of a job: who it is (rank, size, path, its program's arguments) and the result
// files its launcher writes for it.
export { type RankArgs, rankArgs, writeRankFile } from "./cluster/protocol.js";
// The MPI and MX libraries.
export { Comm, MPI, MpiError, type MpiStatus } from "./mpi/mpi.js";
export { MX_ANY_ENDPOINT, MX_INFINITE, MxError, MxReturn, mxStrerror } from "./mx/codes.js";
export { MxAddress, MxEndpoint, MxRequest, MxStatusInfo } from "./mx/endpoint.js";
export { joinMatch, MATCH_MASK_NONE, Mx, splitMatch } from "./mx/mx.js";
export { MxStatus } from "./nic/status.js";
// The hypervisor's guest interface: grants, event channels, XenStore, shared rings.
export * from "./xen/abi.js";
export { type CounterName, type CounterSnapshot, diffCounters } from "./xen/counters.js";
export { EventChannelPort, HypercallError, type WaitResult } from "./xen/event-channel.js";
export { type GrantCopyOp, type GrantCopySide, GrantError } from "./xen/grant-table.js";
export { GrantMapping, type Guest, type GuestGrants, type MapResult } from "./xen/guest/guest.js";
export { HypercallFailed } from "./xen/hypercall.js";
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

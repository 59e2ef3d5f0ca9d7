/**
 * The public API of the `myrixen` package: the host side (a Host with its hypervisor, NIC and
 * driver domain; a Job across hosts) and, from guest-api.ts, everything a guest program uses
 * (MPI, MX, grant tables, event channels, XenStore, shared rings). A guest's
 * `import "myrixen"` gets guest-api.ts alone (xen/guest/loader.ts).
 */

export { Job, type JobResult, type JobSpec } from "./cluster/job.js";
export * from "./guest-api.js";
export { Host, type HostOptions } from "./host/host.js";
export {
  Domain,
  type DomainConfig,
  type DomainExit,
  type DomainState,
  Hypervisor,
} from "./xen/hypervisor.js";

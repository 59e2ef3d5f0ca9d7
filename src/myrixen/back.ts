/**
 * myrback: the driver domain's half of the myri split driver. It owns the NIC's control path
 * for everyone on this host: guests reach it over a xenbus control ring, native processes
 * over synchronous calls (host/driver-domain.ts). Both go through one registry, so the rules
 * — ownership, quotas, keys, one channel per endpoint pair, clean-up when an owner dies — are
 * the same whoever asks.
 *
 * It never sees a message: after OPEN/REGISTER/CONNECT, guests talk to their NIC window and
 * their co-resident channels directly. Every request it serves is counted in a stats page
 * the host reads, which is how tests prove the data path bypasses it.
 *
 * Cut as Xen2MX cuts its backend, one concern per file under back/, each importing only the
 * files listed after it:
 *
 *   device.ts         MyriBack: the xenbus device per frontend, its control ring and ops (omx_xenback.c)
 *   registry.ts       MyriCore: endpoints, regions, keys, connect and channels (omx_xenback_endpoint.c, _reg.c)
 *   inspect.ts        what the registry holds, read for the host's inspection (laneProgress)
 *   share-loop.ts     dom0's weighted share between co-resident lanes of different receivers (issue 16)
 *   records.ts        the registry's records: Client, EndpointRec, RegionRec, ChannelRec
 *   shared-memory.ts  window slots, channel buffers per pair, response pages, and their lifetime rule
 *   grant-keeper.ts   dom0's grants, ended only once no peer maps them
 *   stats.ts          the stats page (Stat words) the host reads
 *
 * This file is only the list of what the rest of MyriXen may use.
 */

export { MyriBack } from "./back/device.js";
export { GrantKeeper } from "./back/grant-keeper.js";
export { type BackendChannelInfo, type BackendEndpointInfo, laneProgress } from "./back/inspect.js";
export {
  type ChannelRec,
  Client,
  type ClientKind,
  type EndpointRec,
  type RegionRec,
} from "./back/records.js";
export { type ConnectResult, type CoreConfig, MyriCore } from "./back/registry.js";
export { type LaneShareInfo, ShareLoop } from "./back/share-loop.js";
export {
  CHANNELS_PER_PAIR,
  type ChannelMem,
  pairKey,
  SharedMemory,
  type WindowSlot,
} from "./back/shared-memory.js";
export { type BackendStats, readBackendStats, STATS_BYTES, Stat } from "./back/stats.js";

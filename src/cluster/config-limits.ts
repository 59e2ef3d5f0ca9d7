/**
 * What `myrixen host`'s config fields and flags accept, and the error that names every
 * problem with them: a leaf module, so that the CLI checks a flag without loading the config
 * file's validator (config.ts).
 */

/** Bad settings: one line per problem, each naming the field or flag (exit code 2). */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join("\n"));
  }
}

/** What each field of the file and its flag accept (one source for both messages). */
export const LIMITS = {
  linkPort: [0, 65535],
  nicId: [0, 0xfffffffe],
  slots: [1, 4096],
  maxEndpoints: [1, 256],
  /** Ranks a host runs at once (capacity.ts). */
  maxRanks: [1, 65536],
  /** Guest RAM a host commits to running ranks, MiB (1 PiB at most). */
  maxGuestMb: [1, 2 ** 30],
  /** Peer NIC ids the NIC keeps, in all and per address (src/nic/link-bound.ts; its MAX_LINKS_LIMIT). */
  maxLinks: [1, 1 << 20],
  maxLinksPerAddress: [1, 1 << 20],
} as const;

/** The longest link timeout a host takes in a link request (ms; wire.ts), so `run --link-timeout`'s too. */
export const LINK_TIMEOUT_MAX_MS = 600_000;

/** The most guest memory a rank may have, in 4 KiB pages (4 GiB: what the hypervisor gives a domain), so `run --pages`' too. */
export const RANK_PAGES_MAX = 1 << 20;

/** `myrixen top --interval`: seconds between refreshes (a tenth of a second to an hour). */
export const TOP_INTERVAL_S = [0.1, 3600] as const;
/** `myrixen dashboard --interval`: milliseconds between updates (100 ms to an hour). */
export const DASHBOARD_INTERVAL_MS = [100, 3_600_000] as const;

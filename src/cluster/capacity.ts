/**
 * What a `myrixen host` lets all its jobs together take: ranks running at once and the guest
 * RAM committed to them (each rank's `pages` × 4 KiB, a SharedArrayBuffer made when its domain
 * is). A start request is admitted whole or not at all, before any of its ranks starts, counted
 * across every connection, and each rank's share goes back when it exits (what a start never
 * got to run, when its rank set has settled).
 *
 * A launcher places ranks by the slots a host offers, but the host cannot trust that: any key
 * holder (or a buggy script) may ask, in one start, for up to 4096 ranks of 4 GiB each, and did
 * get them, taking the machine's memory from every other tenant (or the daemon and every
 * tenant's jobs with it). The limits are the host's own (`myrixen host --max-ranks`,
 * `--max-guest-mb`); a refusal says which one, what runs, what the job asked and how to raise it.
 */

import { totalmem } from "node:os";

/** Ranks per slot a host runs at once by default: room for honest `myrixen run --oversubscribe`. */
export const DEFAULT_RANKS_PER_SLOT = 4;
/** The share of the machine's RAM a host commits to its ranks' guest RAM by default. */
export const DEFAULT_GUEST_RAM_SHARE = 0.5;

const PAGES_PER_MIB = 256;

/** `--max-ranks`' default for a host of `slots` slots. */
export function defaultMaxRanks(slots: number): number {
  return slots * DEFAULT_RANKS_PER_SLOT;
}

/** `--max-guest-mb`' default: half of this machine's RAM, in MiB. */
export function defaultMaxGuestMb(totalBytes = totalmem()): number {
  return Math.max(1, Math.floor((totalBytes * DEFAULT_GUEST_RAM_SHARE) / 2 ** 20));
}

/** One admitted start: its ranks' shares, given back one by one as they exit. */
export interface CapacityReservation {
  /** A rank of the job exited (idempotent). */
  releaseRank(rank: number): void;
  /** The job's rank set settled: whatever it still holds goes back (idempotent). */
  releaseAll(): void;
}

export class HostCapacity {
  private ranks = 0;
  private pages = 0;

  constructor(
    /** Ranks running (or starting) at once, over every job and connection. */
    readonly maxRanks: number,
    /** Guest RAM committed to those ranks, MiB. */
    readonly maxGuestMb: number,
  ) {}

  /** What is taken now. */
  get used(): { ranks: number; guestMb: number } {
    return { ranks: this.ranks, guestMb: this.pages / PAGES_PER_MIB };
  }

  /**
   * Admits `ranks` ranks of `pagesEach` pages each, or says why not (one line: the limit, what
   * runs, what was asked, the flag that raises it). Synchronous: two starts arriving together
   * on two connections cannot both take the last room.
   */
  reserve(ranks: readonly number[], pagesEach: number): CapacityReservation | string {
    const n = ranks.length;
    if (this.ranks + n > this.maxRanks) {
      const never = n > this.maxRanks;
      return (
        `refused by the host's limit on ranks running at once: ${this.maxRanks} ` +
        `(myrixen host --max-ranks N; default ${DEFAULT_RANKS_PER_SLOT} per slot); ` +
        `${this.ranks} run here now and this job asks ${n} more` +
        (never
          ? ": it can never fit; place fewer of its ranks on this host, or raise --max-ranks"
          : ": wait for jobs to end, or raise --max-ranks")
      );
    }
    const ask = n * pagesEach;
    const maxPages = this.maxGuestMb * PAGES_PER_MIB;
    if (this.pages + ask > maxPages) {
      const never = ask > maxPages;
      return (
        `refused by the host's limit on guest memory committed to running ranks: ${this.maxGuestMb} MiB ` +
        `(myrixen host --max-guest-mb N; default half of its RAM); ${mib(this.pages)} MiB is committed now ` +
        `and this job asks ${mib(ask)} MiB more (${n} rank${n === 1 ? "" : "s"} × ${mib(pagesEach)} MiB, --pages ${pagesEach})` +
        (never
          ? ": it can never fit; ask fewer --pages or fewer ranks on this host, or raise --max-guest-mb"
          : ": wait for jobs to end, ask fewer --pages, or raise --max-guest-mb")
      );
    }
    this.ranks += n;
    this.pages += ask;
    const held = new Set(ranks);
    const give = (rank: number) => {
      if (!held.delete(rank)) return;
      this.ranks--;
      this.pages -= pagesEach;
    };
    return {
      releaseRank: give,
      releaseAll: () => {
        for (const r of [...held]) give(r);
      },
    };
  }
}

function mib(pages: number): string {
  const m = pages / PAGES_PER_MIB;
  return Number.isInteger(m) ? String(m) : m.toFixed(2);
}

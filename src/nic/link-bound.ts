/**
 * How many links a NIC keeps, and from where (links.ts asks before it attaches one, whichever
 * side dialed). Every link costs its NIC memory — two connections' frame buffers, its lent
 * frames, its send window and pull jobs: about 170 KiB — and every peer NIC id on a link is a
 * requester of its own to the refusal throttles (refusal-throttle.ts: free wrong keys, sessions
 * and pull rights for each of its endpoint ids, and a block of records). The cluster key proves
 * membership, not identity: a key holder claims whatever NIC id it likes. Nothing bounded the
 * links, so one that opened links under ever new ids multiplied its guesses against other
 * jobs' endpoints, and the NIC's memory, as far as it cared to (500 links from one process: 84
 * MiB, and 2,000 looked-at wrong keys for one endpoint where one requester gets 4), and closing
 * its links to come back under new ids did the same with a handful at a time.
 *
 * So a NIC keeps at most `perAddress` peer NIC ids per remote address (the peer's IP; an IPv6
 * peer's /64, address-block.ts), and `total` in all, counting every id that is linked and
 * every one that was within `keptMs` (the throttles' forget time): an id whose link went keeps its place until its refusals can be
 * forgotten, so ids given up buy a key holder nothing; it has at most `perAddress` requester
 * NIC ids on record per address. The same id from the same address may come back at any time (a
 * peer that reconnects, a dropped link redialled). Beyond, a link is refused: counted
 * (links_refused), and said once per address (once for the total) until that address (the NIC)
 * admits a link again, not per attempt.
 *
 * An honest cluster never meets the bounds: a host links once per peer host (one link per pair
 * of NICs, whichever dialed), and an address is one machine, whose NICs are the `myrixen host`
 * processes on it (an in-process cluster has at most 16, local-cluster.ts): MAX_LINKS_PER_ADDRESS
 * is twice that. MAX_LINKS is the most peers a launcher's link request names (wire.ts) — a
 * cluster of 1,025 hosts, about 170 MiB of links per NIC. Both are options (NicOptions
 * `maxLinks`, `maxLinksPerAddress`; `myrixen host --max-links`, `--max-links-per-address`).
 *
 * A key holder that fills its address's share leaves every other address room: the cluster's
 * hosts still link. It fills the total only from total / perAddress addresses (32); then new
 * ids wait until places are forgotten, while linked peers, and peers that come back under their
 * id and address within `keptMs`, keep theirs. A key holder on a machine of the cluster shares
 * that machine's address with its host: NIC ids of that machine linked before keep their places.
 * Links within this process (no address: loopback) count towards the total only.
 */
import { addressBlock } from "./address-block.js";
import { CONNECT_FORGET_MS } from "./connect-throttle.js";
import { PULL_FORGET_MS } from "./pull-throttle.js";
import { SESSION_FORGET_MS } from "./session-throttle.js";
import { NicError } from "./status.js";

/** Peer NIC ids a NIC keeps in all, linked or kept (see the module comment; NicOptions maxLinks). */
export const MAX_LINKS = 1024;
/** The address a link is counted under: its peer's IP block (an IPv6 /64, address-block.ts), "" within this process. */
const blockOf = (ip: string): string => (ip === "" ? "" : addressBlock(ip));

/** Peer NIC ids a NIC keeps per remote address, linked or kept (NicOptions maxLinksPerAddress). */
export const MAX_LINKS_PER_ADDRESS = 32;
/** How long an id whose link went keeps its place: the longest any throttle keeps a refusal on record. */
export const LINK_ID_KEPT_MS = Math.max(CONNECT_FORGET_MS, SESSION_FORGET_MS, PULL_FORGET_MS);
/** The most either option takes (a u32 id space is no bound). */
export const MAX_LINKS_LIMIT = 1 << 20;

/**
 * A link refused for a bound; `say`: the first since that address (or the total) last admitted
 * one; `bound`: which (the address's share or the total).
 */
export class LinkBoundError extends NicError {
  constructor(
    message: string,
    readonly say: boolean,
    readonly bound: "address" | "total",
  ) {
    super("EMLINK", message);
  }
}

/** One remote address's peer ids: each one's time of forgetting (Infinity while linked). */
interface AddressIds {
  ids: Map<number, number>;
  /** Refused since it last admitted a link (its refusals are said once). */
  refusing: boolean;
}

export class LinkBound {
  private readonly byAddress = new Map<string, AddressIds>();
  /** Ids on record over all addresses (some may have expired, until a sweep). */
  private count = 0;
  private refusingTotal = false;

  constructor(
    readonly total = MAX_LINKS,
    readonly perAddress = MAX_LINKS_PER_ADDRESS,
    readonly keptMs = LINK_ID_KEPT_MS,
  ) {}

  /**
   * Takes a place for `peerNic` from `address` ("": a link within this process), or throws a
   * LinkBoundError. An id with a place there, linked or kept, keeps it.
   */
  admit(peerNic: number, ip: string, now: number): void {
    const address = blockOf(ip);
    if (this.check(peerNic, address, now)) {
      this.byAddress.get(address)?.ids.set(peerNic, Infinity);
      return;
    }
    let b = this.byAddress.get(address);
    if (b === undefined) {
      b = { ids: new Map(), refusing: false };
      this.byAddress.set(address, b);
    }
    b.ids.set(peerNic, Infinity);
    b.refusing = false;
    this.refusingTotal = false;
    this.count++;
  }

  /**
   * Throws the LinkBoundError admit() would, without taking a place (a listener asks in the
   * handshake, so a dialer is refused before its link is up: tcp-handshake.ts). Returns whether
   * `peerNic` holds a place at `address` (linked or kept).
   */
  check(peerNic: number, ip: string, now: number): boolean {
    const address = blockOf(ip);
    const a = this.byAddress.get(address);
    const until = a?.ids.get(peerNic);
    if (a !== undefined && until !== undefined) {
      if (until > now) return true;
      a.ids.delete(peerNic);
      this.count--;
    }
    if (a !== undefined && address !== "") {
      this.sweep(address, a, now);
      if (a.ids.size >= this.perAddress) {
        const say = !a.refusing;
        a.refusing = true;
        throw new LinkBoundError(
          `${address} has ${a.ids.size} NIC ids linked, or linked within the last ${minutes(this.keptMs)}: at most ${this.perAddress} per address (maxLinksPerAddress)`,
          say,
          "address",
        );
      }
    }
    if (this.count >= this.total) {
      for (const [k, x] of this.byAddress) this.sweep(k, x, now);
      if (this.count >= this.total) {
        const say = !this.refusingTotal;
        this.refusingTotal = true;
        throw new LinkBoundError(
          `this NIC has ${this.count} NIC ids linked, or linked within the last ${minutes(this.keptMs)}: at most ${this.total} (maxLinks)`,
          say,
          "total",
        );
      }
    }
    return false;
  }

  /** `peerNic`'s link from `address` went: its place is kept for keptMs. */
  gone(peerNic: number, ip: string, now: number): void {
    const a = this.byAddress.get(blockOf(ip));
    if (a?.ids.has(peerNic)) a.ids.set(peerNic, now + this.keptMs);
  }

  /** The NIC stopped: every place goes. */
  clear(): void {
    this.byAddress.clear();
    this.count = 0;
  }

  private sweep(address: string, a: AddressIds, now: number): void {
    for (const [id, until] of a.ids)
      if (until <= now) {
        a.ids.delete(id);
        this.count--;
      }
    if (a.ids.size === 0) this.byAddress.delete(address);
  }
}

function minutes(ms: number): string {
  return ms >= 60_000 ? `${Math.round(ms / 60_000)} min` : `${ms} ms`;
}

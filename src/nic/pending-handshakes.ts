/**
 * The connections a listener holds in the handshake — the NIC's link port (tcp-link-setup.ts)
 * and a host's control port (cluster/host-daemon.ts) — at most `max`, and which one a new
 * connection beyond that drops. Anyone may connect without the key, so this choice is what
 * keeps an honest peer's handshake alive under a flood:
 *  - a connection that has not sent a well-formed hello goes before one that has: an honest
 *    peer says hello as soon as it connects and then waits one round trip for the step that
 *    proves the key, so no number of idle connections, however fast they come, drops it;
 *  - among those, the oldest of the busiest block (handshakeBlock: this machine's loopback,
 *    an IPv4 /24, an IPv6 /48), and within it of the busiest address (addressBlock), so that
 *    a party opening connections fast, even ones that say hello, drops its own first.
 * The cap, and each listener's deadline from accept, stay: a static flood cannot hold slots.
 * What it cannot stop: a party that says hello from the honest peer's own address (or from as
 * many addresses of its block) on more than `max` connections per round trip of that peer.
 */
import { addressBlock, handshakeBlock } from "./address-block.js";

interface Held {
  /** handshakeBlock of its address. */
  block: string;
  /** addressBlock of its address. */
  address: string;
}

export class PendingHandshakes<T> {
  /** Oldest first (a Map keeps insertion order). */
  private readonly held = new Map<T, Held>();

  /** `saidHello`: whether a held connection has sent a well-formed hello yet. */
  constructor(
    private readonly max: number,
    private readonly saidHello: (item: T) => boolean,
  ) {}

  get size(): number {
    return this.held.size;
  }

  values(): IterableIterator<T> {
    return this.held.keys();
  }

  delete(item: T): boolean {
    return this.held.delete(item);
  }

  /**
   * Holds `item`, a connection from `address` (as its socket reports it). When `max` were held
   * already, returns the one it displaces, no longer held, for the caller to drop.
   */
  add(item: T, address: string): T | undefined {
    let displaced: T | undefined;
    if (this.held.size >= this.max) {
      displaced = this.choose();
      if (displaced !== undefined) this.held.delete(displaced);
    }
    this.held.set(item, { block: handshakeBlock(address), address: addressBlock(address) });
    return displaced;
  }

  private choose(): T | undefined {
    const all = [...this.held];
    const silent = all.filter(([item]) => !this.saidHello(item));
    const inBlock = busiest(silent.length > 0 ? silent : all, (h) => h.block);
    return busiest(inBlock, (h) => h.address)[0]?.[0];
  }
}

/** The entries (oldest first) whose `key` the most entries share. */
function busiest<T>(list: [T, Held][], key: (h: Held) => string): [T, Held][] {
  const count = new Map<string, number>();
  let most = 0;
  for (const [, h] of list) {
    const n = (count.get(key(h)) ?? 0) + 1;
    count.set(key(h), n);
    most = Math.max(most, n);
  }
  return list.filter(([, h]) => count.get(key(h)) === most);
}

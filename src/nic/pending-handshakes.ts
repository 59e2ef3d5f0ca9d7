/**
 * The connections a listener holds in the handshake — the NIC's link port (tcp-link-setup.ts)
 * and a host's control port (cluster/host-daemon.ts) — at most `max`, and which ones it drops
 * beyond that. Anyone may connect without the key, so this choice is what keeps an honest
 * peer's handshake alive under a flood:
 *  - a connection that has not sent a well-formed hello goes before one that has: an honest
 *    peer says hello as soon as it connects and then waits one round trip for the step that
 *    proves the key, so no number of idle connections, however fast they come, drops it;
 *  - among those, the oldest of the busiest block (handshakeBlock: this machine's loopback,
 *    an IPv4 /24, an IPv6 /48), and within it of the busiest address (addressBlock), so that
 *    a party opening connections fast, even ones that say hello, drops its own first.
 * A connection is judged only once the listener has had a turn of the event loop to read its
 * hello: Node accepts every connection waiting in the backlog in one go, before it reads from
 * any, so judged at accept an honest peer in a burst of idle ones counted as idle. Until then
 * it is held besides the `max` (at most FRESH_PER_MAX × max of them; beyond, a newcomer is
 * dropped at once). The cap, and each listener's deadline from accept, stay.
 * What it cannot stop: a party that says hello from the honest peer's own address (or from as
 * many addresses of its block) on more than `max` connections per round trip of that peer.
 */
import { addressBlock, handshakeBlock } from "./address-block.js";

/** Connections not judged yet, at most, per connection of `max`: a backstop, far above a backlog's burst. */
const FRESH_PER_MAX = 16;

interface Held {
  /** handshakeBlock of its address. */
  block: string;
  /** addressBlock of its address. */
  address: string;
  /** The turn it came in (judged from the next one on). */
  turn: number;
}

export class PendingHandshakes<T> {
  /** Oldest first (a Map keeps insertion order). */
  private readonly held = new Map<T, Held>();
  private turn = 0;
  private fresh = 0;
  private scheduled = false;

  /**
   * `saidHello`: whether a held connection has sent a well-formed hello yet; `drop`: drops one
   * (no longer held) for being over the bound.
   */
  constructor(
    private readonly max: number,
    private readonly saidHello: (item: T) => boolean,
    private readonly drop: (item: T) => void,
  ) {}

  get size(): number {
    return this.held.size;
  }

  values(): IterableIterator<T> {
    return this.held.keys();
  }

  delete(item: T): boolean {
    const h = this.held.get(item);
    if (h?.turn === this.turn) this.fresh--;
    return this.held.delete(item);
  }

  /** Holds `item`, a connection from `address` (as its socket reports it), or drops it at once. */
  add(item: T, address: string): void {
    if (this.fresh >= FRESH_PER_MAX * this.max) {
      this.drop(item);
      return;
    }
    this.held.set(item, { block: handshakeBlock(address), address: addressBlock(address), turn: this.turn });
    this.fresh++;
    this.schedule();
  }

  /**
   * After the poll phase that accepted this turn's connections: those of earlier turns, which
   * the listener has had a chance to read from, are brought down to `max`; this turn's wait
   * for the next check.
   */
  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const judged = [...this.held].filter(([, h]) => h.turn < this.turn);
      for (let over = judged.length - this.max; over > 0; over--) {
        const i = this.choose(judged);
        const [item] = judged.splice(i, 1)[0];
        this.held.delete(item);
        this.drop(item);
      }
      this.turn++;
      if (this.fresh > 0) this.schedule();
      this.fresh = 0;
    });
  }

  /** The index in `judged` (oldest first) of the one to drop. */
  private choose(judged: [T, Held][]): number {
    let candidates = judged.map((_, i) => i);
    const silent = candidates.filter((i) => !this.saidHello(judged[i][0]));
    if (silent.length > 0) candidates = silent;
    candidates = busiest(candidates, (i) => judged[i][1].block);
    return busiest(candidates, (i) => judged[i][1].address)[0];
  }
}

/** The indices (oldest first) whose `key` the most of them share. */
function busiest(list: number[], key: (i: number) => string): number[] {
  const count = new Map<string, number>();
  let most = 0;
  for (const i of list) {
    const n = (count.get(key(i)) ?? 0) + 1;
    count.set(key(i), n);
    most = Math.max(most, n);
  }
  return list.filter((i) => count.get(key(i)) === most);
}

/**
 * The remote PULLs parked on one link (requester side, remote-pull.ts): pulls that found the
 * link's PULL_JOBS_PER_LINK jobs taken, or their endpoint's domain at its share of them
 * (link-state.ts PULL_LINK_SHARE), wait here instead of at the head of their endpoint's send
 * queue, so one endpoint's pulls from a busy (or slow, or hostile) host hold none of its
 * other traffic, and nobody else's. A FIFO per endpoint keeps each endpoint's pulls in the
 * order it posted them; a job that frees goes to the endpoints in turn (round robin), each to
 * its oldest pull.
 *
 * The lists are threaded through the remote-pull table's own slots (`next`, `prev`: one pair
 * per slot, shared by every link's park), so parking allocates nothing and is bounded by the
 * table: an endpoint parks at most its PULL_CREDITS.
 */
import { MAX_ENDPOINTS_LIMIT } from "./endpoints.js";
import { pullMayGo } from "./link-state.js";

export class PullPark {
  /** Pulls parked on this link. */
  count = 0;
  /** Per endpoint: its oldest and newest parked slot (−1: none). */
  private readonly head = new Int32Array(MAX_ENDPOINTS_LIMIT).fill(-1);
  private readonly tail = new Int32Array(MAX_ENDPOINTS_LIMIT).fill(-1);
  /** The endpoint whose turn comes next. */
  private turn = 0;

  constructor(
    /** Per slot of the remote-pull table: the next and previous slot in its endpoint's list. */
    private readonly next: Int32Array,
    private readonly prev: Int32Array,
  ) {}

  /** Whether endpoint `ep` has pulls parked here (a new one of its own goes behind them). */
  has(ep: number): boolean {
    return this.head[ep] >= 0;
  }

  /** Parks slot `s` of endpoint `ep` behind its others. */
  push(ep: number, s: number): void {
    const t = this.tail[ep];
    this.prev[s] = t;
    this.next[s] = -1;
    if (t < 0) this.head[ep] = s;
    else this.next[t] = s;
    this.tail[ep] = s;
    this.count++;
  }

  /** Takes slot `s` of endpoint `ep` out (it was parked here). */
  remove(ep: number, s: number): void {
    const p = this.prev[s];
    const n = this.next[s];
    if (p < 0) this.head[ep] = n;
    else this.next[p] = n;
    if (n < 0) this.tail[ep] = p;
    else this.prev[n] = p;
    this.count--;
  }

  /**
   * The oldest pull of the next endpoint in turn whose share group (`shareOf[ep]`), holding
   * `outByShare[group]` of this link's pulls, may take one of its `free` jobs
   * (link-state.ts pullMayGo), taken out of the park; −1 if no parked endpoint's group may.
   * A group holding none always may while a job is free: the caller asks again after each
   * take, so every such group parked here goes before the link fills.
   */
  takeNext(outByShare: Uint8Array, shareOf: Int32Array, free: number): number {
    for (let k = 0; k < MAX_ENDPOINTS_LIMIT; k++) {
      const ep = (this.turn + k) % MAX_ENDPOINTS_LIMIT;
      const s = this.head[ep];
      if (s < 0 || !pullMayGo(outByShare[shareOf[ep]], free)) continue;
      this.remove(ep, s);
      this.turn = (ep + 1) % MAX_ENDPOINTS_LIMIT;
      return s;
    }
    return -1;
  }
}

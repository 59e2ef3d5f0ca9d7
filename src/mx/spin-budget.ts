/**
 * How long a blocking MX call spins before it sleeps, adapted to the waits it sees: a rank
 * whose peers answer within a few hundred µs (an MPI job's collectives, one rank per core)
 * spins through them instead of paying a sleep and a wake-up per message, as Open MPI's
 * busy-polling does; a rank that gets preempted while it spins (more runnable threads than
 * cores: its spin would take the CPU from the peer it waits for) goes back to the short spin
 * and stays there for a while. Pure arithmetic on the times the endpoint measured, so a unit
 * test can drive it.
 */

/**
 * The longest spin for callers whose threads have a core each (MPI ranks, the bench's pairs
 * on one host): Open MPI's ranks busy-poll outright; ours spin up to this, then sleep.
 */
export const BUSY_POLL_MAX_US = 1000;

/** A gap this long between two clock reads of a spin means the spinning thread was preempted. */
export const PREEMPTED_GAP_US = 200;
/** Blocking calls that keep the short spin after a preemption was seen. */
export const CALM_BLOCKS = 256;

export class SpinBudget {
  /** The spin of the next blocking call, µs. */
  budgetUs: number;
  private calm = 0;

  constructor(
    /** The short spin (EndpointOptions.spinUs): the floor, and the whole spin when not adaptive. */
    readonly baseUs: number,
    /** The longest spin it grows to (EndpointOptions.spinMaxUs); ≤ baseUs: never adapts. */
    readonly maxUs: number,
  ) {
    this.budgetUs = baseUs;
  }

  get adaptive(): boolean {
    return this.maxUs > this.baseUs;
  }

  /**
   * One blocking call ended after `waitedUs`; it slept (the spin ran out) or not; its spin
   * saw a preemption or not. A wait a longer spin would have caught (≤ maxUs) doubles the
   * spin past it; a longer one halves it; a preemption drops it to the base for CALM_BLOCKS.
   */
  after(waitedUs: number, slept: boolean, preempted: boolean): void {
    if (!this.adaptive) return;
    if (preempted) {
      this.budgetUs = this.baseUs;
      this.calm = CALM_BLOCKS;
      return;
    }
    if (this.calm > 0) {
      this.calm--;
      return;
    }
    if (!slept) return;
    if (waitedUs <= this.maxUs)
      this.budgetUs = Math.min(this.maxUs, Math.max(2 * this.budgetUs, 2 * waitedUs));
    else this.budgetUs = Math.max(this.baseUs, this.budgetUs / 2);
  }
}

/**
 * How long an idle NIC thread keeps polling before it sleeps, adapted to the gaps it sees, as
 * KVM adapts halt-polling: a sleep whose wake-up came within the longest budget (a guest that
 * answers the event just delivered, the next step of a transfer) means a longer poll would
 * have caught it without a wake-up, so the budget grows past that gap; a wake-up later than the
 * longest budget (the reply to a frame sent across the wire, a guest that went quiet) means
 * the poll only took a core from the threads the NIC waits for, so the budget halves. Wake-ups
 * by the NIC's own timer say nothing about what it waits for and are not counted. The NIC
 * keeps one for quiet spells after it gave an owner events and one for those after it only
 * moved frames (nic.ts runSlice): the two wait for different threads, and each has its own
 * longest poll (POLL_AFTER_EVENTS_MS, POLL_AFTER_FRAMES_MS). Pure arithmetic on times the
 * caller measured, so a unit test can drive it. (The raw chain baseline,
 * bench/chain-worker.ts, polls those two longest budgets, fixed: faster for it.)
 */

/** The longest idle poll by default (a sleeping thread takes ~30 µs to wake: docs/design-notes.md). */
export const POLL_BUDGET_MS = 0.04;
/** The shortest: a few rounds over the endpoints and sockets. */
export const POLL_MIN_MS = 0.005;
/**
 * The NIC's two budgets' longest polls. After it gave a guest events, the next work is that
 * guest's answer: a woken guest on a loaded 2-core host answers within 40–80 µs, so polling
 * up to 80 µs saves the NIC's own wake-up. After it only moved frames, what comes next comes
 * from the wire, later: polling then only takes a core from the threads the message must
 * still cross, so at most 20 µs. (Across hosts, 8 B one way: 47 µs with 40 and 40, 33–35 with
 * 80 and 20; docs/design-notes.md.)
 */
export const POLL_AFTER_EVENTS_MS = 0.08;
export const POLL_AFTER_FRAMES_MS = 0.02;

export class PollBudget {
  /** The idle poll of the next quiet spell, ms. */
  ms: number;
  /** When the quiet spell that ended in the current sleep began; −1 while awake. */
  private quietSince = -1;

  /** `max`: the longest idle poll, ms (where it starts, and the gap beyond which it halves). */
  constructor(readonly max = POLL_BUDGET_MS) {
    this.ms = max;
  }

  /** The thread sleeps after polling since `quietSince` with nothing to do. */
  slept(quietSince: number): void {
    this.quietSince = quietSince;
  }

  /** Something woke the thread at `now` (not its own timer): adapt to the gap since it went quiet. */
  woke(now: number): void {
    if (this.quietSince < 0) return;
    const gap = now - this.quietSince;
    this.quietSince = -1;
    if (gap <= this.max) this.ms = Math.min(this.max, Math.max(2 * this.ms, 1.5 * gap));
    else this.ms = Math.max(POLL_MIN_MS, this.ms / 2);
  }

  /** A wake-up by the thread's own timer: the spell's gap says nothing of the traffic. */
  wokeByTimer(): void {
    this.quietSince = -1;
  }
}

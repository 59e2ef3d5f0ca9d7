/**
 * The NIC's two clocks.
 *
 * The trace clock (`traceNow`) stamps a traced message at each stage of its path, in every
 * thread: the MX library's stamps and the NIC's (window.ts E_TRACE_NIC_SEEN, E_TRACE_DMA_DONE)
 * are compared directly. It lives here, below the MX library, because the NIC writes it into
 * events; mx/trace.ts re-exports it and explains the stamps. It is
 * `performance.timeOrigin + performance.now()` in ms, shifted by a fixed epoch
 * (TRACE_EPOCH_MS) so the double keeps its precision: the plain sum is ~1.8e12 ms, where one
 * ulp is 0.244 µs; shifted, one ulp is ~15 ns. In Node 20 every worker of a process has the
 * same timeOrigin and performance.now() reads one monotonic clock, so stamps from different
 * threads compare.
 *
 * The round clock (`NicClock.now`) is performance.now() as the NIC last read it: once per
 * poll round, per link frame, per wire-timer tick and per throttled control request. Wire
 * deadlines, delivery holds, link liveness, the connect throttle and MAC ageing all read it,
 * so everything done in one round sees one time and no per-descriptor path reads the clock.
 */

/** Stamps are ms since this epoch (2023-11-14T22:13:20Z), on the performance.timeOrigin time line. */
export const TRACE_EPOCH_MS = 1.7e12;
/** This thread's performance.now() → trace time. Exact: both operands are large doubles of close magnitude. */
const SHIFT_MS = performance.timeOrigin - TRACE_EPOCH_MS;

/** The trace clock: performance.timeOrigin + performance.now() − TRACE_EPOCH_MS, ms (~15 ns resolution). */
export function traceNow(): number {
  return performance.now() + SHIFT_MS;
}

/** The NIC's round clock (one per NIC, shared by its engines). */
export class NicClock {
  /** performance.now() as of the current round, frame or tick (ms). */
  now = 0;

  /** Reads performance.now() into `now`. */
  tick(): number {
    this.now = performance.now();
    return this.now;
  }
}

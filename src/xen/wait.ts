/**
 * Adaptive waiting on a shared 32-bit word: spin briefly, then block.
 *
 * Why: on this kind of machine a thread blocked in `Atomics.wait` on the other core takes
 * ~30 µs to wake, while a spinning peer sees a store in ~0.2 µs (shared/references/
 * machine-limits.md). Spinning forever is worse: three spinners on two cores cost a
 * scheduler tick (~4 ms) per hop. So every wait in the project spins for a bounded time
 * and then sleeps. The spin budget is counted in loop iterations checked against the
 * clock only every few hundred iterations, so the spin loop itself stays cheap.
 */

/** Default spin budget before sleeping, in microseconds (machine-limits.md: ~20 µs). */
export const DEFAULT_SPIN_US = 20;

const CLOCK_CHECK_EVERY = 256;

/** Monotonic clock in microseconds, as a double. */
export function nowUs(): number {
  return performance.now() * 1000;
}

/**
 * Spin until `word[index] !== expected` or `spinUs` elapses. Returns the value seen, which
 * equals `expected` if the spin timed out.
 */
export function spinWhileEqual(word: Int32Array, index: number, expected: number, spinUs: number): number {
  let v = Atomics.load(word, index);
  if (v !== expected || spinUs <= 0) return v;
  // The clock is read only after a first burst of loads: a reply that comes within a few
  // hundred loads (the common case of a spinning peer) never pays for performance.now().
  let deadline = 0;
  for (let i = 1; ; i++) {
    v = Atomics.load(word, index);
    if (v !== expected) return v;
    if (i % CLOCK_CHECK_EVERY === 0) {
      const now = nowUs();
      if (deadline === 0) deadline = now + spinUs;
      else if (now >= deadline) return v;
    }
  }
}

export type WaitOutcome = "changed" | "slept" | "timed-out";

/**
 * Wait until `word[index] !== expected`: spin for `spinUs`, then block in `Atomics.wait`
 * (up to `timeoutMs` in total; Infinity waits forever). Returns how the wait ended:
 * "changed" without sleeping, "slept" if it had to block, "timed-out".
 *
 * `beforeSleep` runs once just before blocking and may re-arm a notification (unmask an
 * event channel); if it returns false the wait re-checks instead of sleeping, which is how
 * callers close the lost-wake-up window.
 */
export function adaptiveWait(
  word: Int32Array,
  index: number,
  expected: number,
  spinUs: number = DEFAULT_SPIN_US,
  timeoutMs: number = Number.POSITIVE_INFINITY,
  beforeSleep?: () => boolean,
): WaitOutcome {
  if (spinWhileEqual(word, index, expected, spinUs) !== expected) return "changed";
  if (beforeSleep && !beforeSleep()) return "changed";
  const start = performance.now();
  for (;;) {
    if (Atomics.load(word, index) !== expected) return "slept";
    const left = timeoutMs - (performance.now() - start);
    if (left <= 0) return "timed-out";
    Atomics.wait(word, index, expected, left);
  }
}

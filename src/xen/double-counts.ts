/**
 * Counters kept in plain objects (an endpoint's, a port's, a netfront's), made so that no count
 * ever changes the object's shape. V8 keeps a property that holds small integers as one; a
 * count past 2^31 is not, and storing it turns the property into a double, which deoptimises
 * every function that touched the object — in the middle of a job, once per counter, after
 * 2^31 messages or bytes. A property that held a double from the start stays one (stored in
 * place, not reallocated). So a counters object is written as a literal of 0.5s and passed
 * through `zeroed`, which sets every count to 0 without changing what V8 made of the literal.
 */

/** Sets every own property of `counts` to 0 and returns it (see above: write the literal with 0.5s). */
export function zeroed<T extends object>(counts: T): T {
  for (const k of Object.keys(counts)) (counts as Record<string, number>)[k] = 0;
  return counts;
}

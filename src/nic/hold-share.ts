/**
 * How a few places that many senders want are shared when they run short: a busy receiver's
 * held deliveries (delivery.ts), a link's credits for one destination endpoint (link-state.ts).
 * The places are counted per sender that cannot multiply itself (a sending NIC, a domain).
 */

/** Places a sender that holds some leaves free for others, at most. */
export const HOLD_RESERVE = 8;

/**
 * Whether a sender holding `held` of the places may take another while `free` are free: one
 * holding none, whenever one is free; one holding some, while as many stay free after it as it
 * then holds, up to HOLD_RESERVE. Of 32, senders arriving one after another hold 24, 4, 2, 1, 1,
 * and a newcomer always finds a place.
 */
export function mayHold(held: number, free: number, reserve = HOLD_RESERVE): boolean {
  return held === 0 ? free > 0 : free - 1 >= Math.min(held + 1, reserve);
}

/**
 * Places the senders of one remote address block (delivery.ts: the NIC ids linked from one
 * machine) leave free for other addresses, at most: one machine's NICs hold 28 of 32 together,
 * whatever ids it claims, and the first of them 24 of those.
 */
export const ADDRESS_RESERVE = HOLD_RESERVE / 2;

/**
 * MPI's named constants (the wildcards ANY_SOURCE and ANY_TAG, IN_PLACE) and the limits the
 * match bits put on tags and context ids (see p2p.ts for how a message's bits are laid out).
 */

export const ANY_SOURCE = -1;
export const ANY_TAG = -1;
/** Pass as sbuf of reduce/allreduce/allgather(v): the data is already in rbuf. */
export const IN_PLACE: unique symbol = Symbol("MPI.IN_PLACE");
export type InPlace = typeof IN_PLACE;

/** Context ids are 16 bits; each communicator takes two (2k, 2k + 1). */
export const MAX_CONTEXT = 0x7fff;
/** A tag fills the low 32 match bits; MPI tags are non-negative, so 31 bits. */
export const MAX_TAG = 0x7fffffff;

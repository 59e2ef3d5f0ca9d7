/**
 * Runtime: what every communicator of one rank shares — the MX endpoint, the peers' addresses
 * and the world rank behind each, the context ids its communicators hold, the scratch buffers collectives
 * reduce into, the messages this rank sent to itself and receives waiting for them, and the
 * rank-state words `myrixen run --timeout` reads.
 */

import type { RankStateWriter } from "../cluster/rank-state.js";
import type { MxAddress, MxEndpoint } from "../mx/endpoint.js";
import type { Mx } from "../mx/mx.js";
import { Scratch } from "./buffers.js";
import type { Comm } from "./comm.js";
import { MAX_CONTEXT } from "./constants.js";
import type { MpiRequest } from "./request.js";

/** A message a rank sent to itself that no receive has taken yet. */
export interface SelfMessage {
  ctx: number;
  tag: number;
  data: Uint8Array;
}

/** A receive that a send to self may still satisfy (from this rank, or ANY_SOURCE). */
export interface SelfPost {
  req: MpiRequest;
  ctx: number;
  tag: number;
  buf: Uint8Array;
}

export class Runtime {
  finalized = false;
  /**
   * The context ids this rank's communicators hold, a bit each (0, the world's, always). A new
   * communicator takes the lowest id none of its parent's members holds (comm.ts), and free()
   * gives its id back, so a program that makes and frees communicators for ever never runs out.
   */
  readonly contexts = new Int32Array((MAX_CONTEXT + 1) / 32);
  readonly scratch = new Scratch();
  readonly selfQueue: SelfMessage[] = [];
  readonly selfPosted: SelfPost[] = [];
  world!: Comm;
  /** World rank of each peer's MX address (the addresses MPI.init connected). */
  readonly rankOf = new Map<MxAddress, number>();
  /** Messages rejected because their match bits claimed a rank their sender's address is not. */
  rejected = 0;
  /** Where `myrixen run --timeout` reads which call this rank blocks in (cluster/rank-state.ts). */
  callState: RankStateWriter | undefined = undefined;

  constructor(
    readonly mx: Mx,
    readonly ep: MxEndpoint,
    /** MX address of each world rank (undefined for this rank). */
    readonly addrs: (MxAddress | undefined)[],
  ) {
    this.contexts[0] = 1;
    for (let r = 0; r < addrs.length; r++) if (addrs[r] !== undefined) this.rankOf.set(addrs[r]!, r);
  }
}

/**
 * MpiRequest: a non-blocking send or receive in flight. It holds the MX request (or, for a
 * message a rank sends to itself, the status it completed with) and what its completion
 * needs to build the MPI status; the point-to-point layer (p2p.ts) completes it.
 */

import type { MxRequest } from "../mx/endpoint.js";
import type { PointToPoint } from "./p2p.js";
import type { MpiStatus } from "./status.js";

/** A non-blocking send or receive; complete it with wait/test/waitall/waitany. */
export class MpiRequest {
  /** @internal */ mx: MxRequest | undefined;
  /** @internal The status, when the request completed without MX (a message to self). */
  local: MpiStatus | undefined;
  /** @internal */ active = true;
  /** @internal */ selfPosted = false;

  /** @internal */
  constructor(
    readonly kind: "send" | "recv",
    /** @internal */ readonly comm: PointToPoint,
    /** @internal */ readonly bpe: number,
    /** @internal The destination (send) or requested source (receive). */
    readonly peer: number,
    readonly tag: number,
    /** @internal Bytes of the buffer. */
    readonly capacity: number,
  ) {}
}

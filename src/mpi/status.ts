/**
 * What an MPI call returns or throws: the status of a completed send or receive, MpiError,
 * and the sentences both use for a truncated message or a failed peer.
 */

import type { MxStatusInfo } from "../mx/endpoint.js";
import { MxStatus } from "../nic/status.js";

export interface MpiStatus {
  source: number;
  tag: number;
  /** Elements received (bytes / element size; for probe, of the type passed, else bytes). */
  count: number;
  bytes: number;
  error?: string;
}

/** An MPI call that failed: says which call, which argument and what to fix. */
export class MpiError extends Error {
  constructor(
    message: string,
    readonly status?: MpiStatus,
  ) {
    super(message);
    this.name = "MpiError";
  }
}

/** What the library knows about a failed request, or the likely cause. */
export function failureHint(s: MxStatusInfo): string {
  if (s.reason !== undefined) return s.reason;
  if (s.code === MxStatus.NO_RESOURCES)
    return "no room for it on the other side or its NIC; if the ranks are short of memory, give them more with myrixen run --pages";
  return "the peer's endpoint closed or the rank died?";
}

export function truncated(msgBytes: number, source: number, tag: number, capacity: number): string {
  return `message truncated: ${msgBytes} bytes from rank ${source} (tag ${tag}) do not fit the receive buffer of ${capacity} bytes (MPI_ERR_TRUNCATE)`;
}

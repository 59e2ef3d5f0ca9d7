/**
 * MX status codes (mx_status_code_t, as Myricom's myriexpress.h numbers them) as the NIC
 * writes them into completion events (high 16 bits of E_TYPE), the mapping between them and
 * the NIC's ErrorReasons (window.ts), and the errno-carrying error the NIC answers bad control
 * requests with. The MX library imports the codes from here so that both sides of the window
 * read the same numbers; `mxStatusName` is the one place a code becomes its name. Also the
 * error whose message may reach a remote client while its detail stays in this host's log.
 */
import { ErrorReason } from "./window.js";

export const MxStatus = {
  SUCCESS: 0,
  PENDING: 1,
  BUFFERED: 2,
  REJECTED: 3,
  TIMEOUT: 4,
  TRUNCATED: 5,
  CANCELLED: 6,
  ENDPOINT_UNKNOWN: 7,
  ENDPOINT_CLOSED: 8,
  ENDPOINT_UNREACHABLE: 9,
  BAD_SESSION: 10,
  BAD_KEY: 11,
  BAD_ENDPOINT: 12,
  BAD_RDMAWIN: 13,
  ABORTED: 14,
  EVENTQ_FULL: 15,
  NO_RESOURCES: 16,
} as const;

export type MxStatusName = keyof typeof MxStatus;
export type MxStatusCode = (typeof MxStatus)[MxStatusName];

const names: string[] = [];
for (const [name, code] of Object.entries(MxStatus)) names[code] = name;

/** "BAD_KEY" for 11; `UNKNOWN(99)` for a code MX does not define (an event from a hostile writer). */
export function mxStatusName(code: number): string {
  return names[code] ?? `UNKNOWN(${code})`;
}

/** The MX status of an ERROR event (and of a refused pull right), by ErrorReason. */
export const REASON_STATUS: readonly number[] = [
  MxStatus.ABORTED,
  MxStatus.ABORTED, // UnknownOpcode
  MxStatus.BAD_RDMAWIN, // BadRegion
  MxStatus.BAD_KEY, // BadKey
  MxStatus.BAD_RDMAWIN, // OutOfBounds
  MxStatus.BAD_RDMAWIN, // Permission
  MxStatus.ABORTED, // BadLength
  MxStatus.ENDPOINT_UNKNOWN, // UnknownEndpoint
  MxStatus.BAD_SESSION, // BadSession
  MxStatus.ABORTED, // BadIndex
  MxStatus.NO_RESOURCES, // NoResources
  MxStatus.ENDPOINT_UNREACHABLE, // Unreachable
  MxStatus.BAD_RDMAWIN, // NoRight
  MxStatus.NO_RESOURCES, // HoldExpired
  MxStatus.REJECTED, // Throttled
];

/** The largest ErrorReason a peer NIC's SEND_ACK may carry (frame.ts); anything else is replaced by reasonOfStatus. */
export const MAX_PEER_REASON = ErrorReason.HoldExpired;

/** The ErrorReason a failed delivery's SEND_DONE carries in E_REASON, by MX status (0: none). */
export function reasonOfStatus(status: number): number {
  switch (status) {
    case MxStatus.ENDPOINT_UNKNOWN:
    case MxStatus.ENDPOINT_CLOSED:
      return ErrorReason.UnknownEndpoint;
    case MxStatus.BAD_SESSION:
      return ErrorReason.BadSession;
    case MxStatus.ENDPOINT_UNREACHABLE:
      return ErrorReason.Unreachable;
    case MxStatus.NO_RESOURCES:
      return ErrorReason.NoResources;
    case MxStatus.REJECTED:
      return ErrorReason.Throttled;
    default:
      return 0;
  }
}

/** A control request the NIC refuses; `errno` travels back to the caller (xen/sync-call.ts). */
export class NicError extends Error {
  constructor(
    readonly errno: string,
    message: string,
  ) {
    super(`${errno}: ${message}`);
    this.name = "NicError";
  }
}

/**
 * An error whose message may reach a remote client (a launcher's link request is answered
 * with it) and whose `detail` says more, for this host's log only: what a peer sent, which a
 * client must not read back through this host (it would make the host a banner reader).
 */
export class DetailedError extends Error {
  constructor(
    message: string,
    readonly detail: string,
  ) {
    super(message);
  }
}

/** What this host logs of `e`: its detail if it has one, else its message. */
export function detailOf(e: unknown): string {
  return e instanceof DetailedError ? e.detail : e instanceof Error ? e.message : String(e);
}

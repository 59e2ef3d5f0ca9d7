/**
 * MX status codes (mx_status_code_t, shared/references/specs-and-papers.md B4) as the NIC
 * writes them into completion events (high 16 bits of E_TYPE), and the errno-carrying error
 * the NIC answers bad control requests with. The MX library imports the codes from here so
 * that both sides of the window read the same numbers.
 */

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

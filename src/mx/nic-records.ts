/**
 * MX records carried by the NIC (SEND descriptors and RECV events, nic/window.ts) — the path
 * to a peer endpoint on another NIC, across a NIC link. The library speaks the same records
 * here as on a co-resident channel (records.ts); only their packing differs, because a SEND
 * has two protocol words (aux0, aux1) next to the 64-bit match value:
 *
 *   aux0 = record type (bits 0..3) | flags (bits 4..7) | id << 8 (a 24-bit sync/pull id)
 *   EAGER   aux1 = sender sequence, payload = the message
 *   RNDV    aux1 = sender sequence, payload = NR_RNDV_BYTES: the words at NR_RNDV_* below
 *           (the pull right the sender armed for this message: nic/window.ts)
 *   NOTIFY  aux1 = MX status, match hi = bytes transferred, no payload
 *   PING    no payload, nothing to do: its SEND_DONE says whether the peer is still there
 *
 * Every word is written by the sending library and read by the receiving one; the NIC
 * carries them without looking. Eager payloads leave from a staging area the endpoint
 * registers once (one copy, as MX's eager path); a slot is the sender's until the NIC
 * reports the SEND done.
 */
import { type MxDriver, MxDriverError } from "../myrixen/driver-abi.js";
import { MxStatus } from "../nic/status.js";
import {
  Access,
  ErrorReason,
  HOLD_MS,
  PULL_MIN_BYTES_PER_S,
  SEND_MAX,
  WIRE_TIMEOUT_MS,
} from "../nic/window.js";

export const NR_TYPE_MASK = 0xf;
export const NR_ID_SHIFT = 8;
/** Sync and pull ids fit 24 bits in aux0 (the endpoint hands out ids in 1..2^24-1). */
export const NR_ID_MASK = 0xffffff;

// A RNDV record's payload: little-endian u32 words at these byte offsets.
/** The message's length. */
export const NR_RNDV_LENGTH = 0;
/** The sender's exposure-table index (its pull right for this message). */
export const NR_RNDV_XP_INDEX = 4;
/** That right's key. */
export const NR_RNDV_XP_KEY = 8;
/** Offset within the right (0: a right covers exactly one message). */
export const NR_RNDV_XP_OFFSET = 12;
export const NR_RNDV_BYTES = 16;

/** Cookies of SEND descriptors carry this bit (pull cookies are ids below 2^24). */
export const COOKIE_SEND = 0x80000000;
/** CONNECT descriptors' cookies. */
export const COOKIE_CONNECT = 0x40000000;

/** Staging slots an endpoint asks for first (fewer when its domain's memory is small). */
export const DEFAULT_STAGING_SLOTS = 32;

/** What a failed SEND_DONE's status and E_REASON (nic/window.ts) mean for the sender, in words. */
export function sendFailureText(status: number, reason: number): string | undefined {
  switch (reason) {
    case ErrorReason.HoldExpired:
      return `the receiving endpoint did not free receive space for ${HOLD_MS / 1000} s (it is not consuming what it is sent)`;
    case ErrorReason.NoResources:
      return `the receiving endpoint's NIC held as many of our messages as it may and took none of them for ${HOLD_MS / 1000} s (it is not consuming what it is sent)`;
    case ErrorReason.Unreachable:
      return `no answer from the peer's NIC within ${WIRE_TIMEOUT_MS} ms (its host stopped, or the link between the hosts is gone)`;
    case ErrorReason.UnknownEndpoint:
    case ErrorReason.BadSession:
      return status === MxStatus.BAD_SESSION
        ? "the peer endpoint was closed and reopened since we connected"
        : "the peer endpoint is not open";
    default:
      return undefined;
  }
}

/**
 * Why a pull the sender's NIC refused the right for (BAD_RDMAWIN, BAD_KEY) failed: an honest
 * sender revokes a rendezvous's right when its send fails before we pull — most often it
 * disconnected from us just then — and the bare code sent users hunting a bad window.
 */
export const PULL_REFUSED =
  "the sender no longer offers this message: its send failed before we pulled it (it disconnected from us, or its request ended), or it announced memory it never offered";
/** The same when the right was revoked (or the sender's memory deregistered) mid-pull: ABORTED. */
export const PULL_ABORTED =
  "the sender stopped offering this message while we pulled it: its send failed meanwhile (it disconnected from us, or its request ended)";

/** What a failed PULL_DONE's status means for the receive, in words (nic/window.ts lists them). */
export function pullFailureText(status: number): string | undefined {
  switch (status) {
    case MxStatus.BAD_RDMAWIN:
    case MxStatus.BAD_KEY:
      return PULL_REFUSED;
    case MxStatus.ABORTED:
      return PULL_ABORTED;
    case MxStatus.TIMEOUT:
      return `the sender's NIC served it slower than ${PULL_MIN_BYTES_PER_S / 1024} KiB/s`;
    case MxStatus.ENDPOINT_CLOSED:
    case MxStatus.ENDPOINT_UNKNOWN:
      return "the sender's endpoint was closed before we pulled this message";
    case MxStatus.BAD_SESSION:
      return "the sender's endpoint was closed and reopened before we pulled this message";
    case MxStatus.ENDPOINT_UNREACHABLE:
      return `no answer from the sender's NIC within ${WIRE_TIMEOUT_MS} ms (its host stopped, or the link between the hosts is gone)`;
    case MxStatus.NO_RESOURCES:
      return "the sender's NIC serves as many pulls as it may; it took none more";
    case MxStatus.REJECTED:
      return "the sender's NIC refuses this endpoint's pulls for a while: too many of its pulls were refused";
    default:
      return undefined;
  }
}

/** The aux0 word of a record sent through the NIC. */
export function nicRecordAux0(type: number, flags: number, id: number): number {
  return ((type & NR_TYPE_MASK) | ((flags & 0xf) << 4) | ((id & NR_ID_MASK) << NR_ID_SHIFT)) >>> 0;
}

/**
 * Fixed slots of SEND_MAX bytes in one registered buffer. Slots are released out of order
 * (a local delivery may complete before an earlier one over a link), so they are kept on a
 * free stack rather than as a ring.
 */
export class SendStaging {
  readonly bytes: Uint8Array;
  readonly regionId: number;
  private readonly free: number[] = [];
  /** The request (or other owner) of each slot in flight. */
  readonly owner: unknown[];
  /** The sequence number each slot's message was sent with (a refused one goes again with it). */
  readonly seq: Int32Array;
  /** The bytes staged in each slot (a refused one goes again as it was staged, whatever its buffer became). */
  readonly len: Int32Array;
  /** 1 while a slot's SEND is a try again (busy-retries.ts). */
  readonly retrying: Uint8Array;

  constructor(
    driver: MxDriver,
    endpointId: number,
    readonly slots: number = DEFAULT_STAGING_SLOTS,
    access: number = Access.LocalRead,
  ) {
    this.bytes = driver.allocBuffer(slots * SEND_MAX);
    try {
      this.regionId = driver.registerRegion(endpointId, this.bytes, access).regionId;
    } catch (e) {
      driver.freeBuffer(this.bytes);
      throw e instanceof MxDriverError ? e : new MxDriverError("MX_NO_RESOURCES", (e as Error).message);
    }
    this.owner = new Array(slots).fill(undefined);
    this.seq = new Int32Array(slots);
    this.len = new Int32Array(slots);
    this.retrying = new Uint8Array(slots);
    for (let i = slots - 1; i >= 0; i--) this.free.push(i);
  }

  /** A free slot, or -1 when all are in flight. */
  take(owner: unknown): number {
    const s = this.free.pop();
    if (s === undefined) return -1;
    this.owner[s] = owner;
    return s;
  }

  release(slot: number): unknown {
    const o = this.owner[slot];
    this.owner[slot] = undefined;
    this.retrying[slot] = 0;
    this.free.push(slot);
    return o;
  }

  get inFlight(): number {
    return this.slots - this.free.length;
  }

  offsetOf(slot: number): number {
    return slot * SEND_MAX;
  }
}

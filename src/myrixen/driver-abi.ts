/**
 * The MX driver interface: what the MX library needs from below — the control path of one
 * NIC, whoever provides it — and the words the backend leaves in an endpoint's event queue.
 * Like Open-MX's common/omx_io.h it is the ABI between the library (src/mx/) and its
 * drivers, and sits below both: myrifront (front.ts) implements it, myrback (back.ts) sends
 * the driver events, and the library's own drivers (src/mx/native-driver.ts,
 * src/mx/split-driver.ts) implement it too.
 *
 *   bypass (a guest):  myrifront → control ring + event channel → myrback in the driver domain → NIC
 *   native (a process of the driver domain): its MX driver calls straight into the driver domain's service → NIC
 *   split (no NIC context): src/mx/split-driver.ts, every peer over Ethernet
 *
 * Every driver hands the library the same things — an endpoint window and interrupt page
 * from the NIC, registered regions, and co-resident channels (channel-abi.ts) — after which
 * the data path is the same code on all: the library talks to the window and the channels
 * directly, and the driver is not involved again until the next control operation.
 *
 * Errors: a driver method throws `MxDriverError` with an MX return code name
 * (`MX_BAD_CONNECTION_KEY`, `MX_NO_RESOURCES`, ...) and a message that says what to fix.
 *
 * Driver events: myrback asks the NIC to put an event of type EventType.Driver in the
 * endpoint's queue (nic/window.ts), cookie = the kind below, E_EXTRA words = (channelId,
 * peer nic, peer endpoint, peer session). [myrback writes, the library reads.]
 *   DRIVER_EVENT_CONNECT     a co-resident peer connected: map its channel (acceptChannel)
 *   DRIVER_EVENT_DISCONNECT  the peer's endpoint went away (closed, domain died): the channel
 *                            is dead (channelId 0xffffffff: every channel with that peer)
 * An endpoint that does not consume its events may have no room for one (the NIC keeps its
 * backlog's room for the completions it owes it, nic/events.ts): then myrback makes no
 * channel for a CONNECT (the pair talks through the NIC), and a DISCONNECT is not written —
 * the library learns it later, from the channel's closed lanes or from the NIC's answers
 * (myrixen/back/registry.ts tellDisconnect).
 */

import type { GuestMemory } from "../xen/memory.js";

export class MxDriverError extends Error {
  constructor(
    /** An MX return code name, e.g. "MX_BAD_CONNECTION_KEY". */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "MxDriverError";
  }
}

export interface DriverEndpoint {
  endpointId: number;
  session: number;
  /** The NIC window (src/nic/window.ts layout). */
  window: SharedArrayBuffer;
  /** This endpoint's interrupt page: the library sleeps on it. */
  intr: SharedArrayBuffer;
}

export interface DriverRegion {
  regionId: number;
  /** What a peer presents to PULL from the region. */
  key: number;
}

/**
 * A co-resident channel between two endpoints: one SharedArrayBuffer (channel-abi.ts
 * layout) shared by exactly those two, plus the peer's interrupt page so a sender can wake
 * a sleeping receiver. `side` says which lane this endpoint writes (0 or 1).
 */
export interface DriverChannel {
  channelId: number;
  channel: SharedArrayBuffer;
  side: 0 | 1;
  peerIntr: SharedArrayBuffer;
  /**
   * This member's lane policy page (channel-abi.ts): the limits the library holds the lane it
   * reads to. Only this member can reach it. Absent: no limits (a native process's channel).
   */
  policy?: SharedArrayBuffer;
  /**
   * acceptChannel only: myrback says its connector closed its endpoint before we took it
   * (protocol.ts CONNECT_FLAG_CLOSED): what its lane holds is taken, then that incarnation is
   * failed, whatever the lanes' own words say.
   */
  closed?: boolean;
}

export interface DriverConnection {
  peerNic: number;
  peerEndpoint: number;
  peerSession: number;
  /** Present when the peer is co-resident (same NIC): messages go through it. */
  channel?: DriverChannel;
}

/** Driver event: a co-resident peer connected to this endpoint (see the header). */
export const DRIVER_EVENT_CONNECT = 1;
/** Driver event: a peer's endpoint went away (closed, domain died); its channel is dead. */
export const DRIVER_EVENT_DISCONNECT = 2;

export interface MxDriver {
  /** "native" or "bypass" (and later "split"): which path this endpoint's control goes through. */
  readonly path: string;
  readonly nicId: number;

  openEndpoint(endpointId: number, key: number): DriverEndpoint;
  closeEndpoint(endpointId: number): void;

  /**
   * Registers `bytes` (a view into this domain's memory: RAM from guest.memory, or a
   * process's own memory for native) for the NIC with `access` bits (window.ts Access).
   */
  registerRegion(endpointId: number, bytes: Uint8Array, access: number): DriverRegion;
  deregisterRegion(endpointId: number, regionId: number): void;

  /**
   * Connects `endpointId` to (peerNic, peerEndpoint) presenting `key`. Throws
   * MxDriverError("MX_BAD_CONNECTION_KEY") on a key mismatch and ("MX_CONNECTION_FAILED")
   * if there is no such endpoint. Co-resident peers get a channel; the peer finds a
   * DRIVER_EVENT_CONNECT event (words: channelId, nic, endpoint, session) in its queue and
   * calls `acceptChannel`. At most one channel exists per pair of endpoints: connecting
   * again, from either side, returns the same one — until a member releases it (its lanes
   * closed: mx_disconnect, a failed peer). Then it is dead for both (each gets a
   * DRIVER_EVENT_DISCONNECT for it), and the next connect creates a fresh channel.
   */
  connect(endpointId: number, peerNic: number, peerEndpoint: number, key: number): DriverConnection;

  /** The passive side of a connect: map the channel the peer's connect created. */
  acceptChannel(
    endpointId: number,
    channelId: number,
  ): DriverChannel & { peerNic: number; peerEndpoint: number; peerSession: number };

  /**
   * The channel is dead (its peer went away, or mx_disconnect): the driver drops what it
   * mapped for it. The library has dropped its own references to the channel and closed its
   * lanes first, which is how myrback knows never to hand it out again.
   */
  releaseChannel?(endpointId: number, channelId: number): void;

  /** Memory the library may use for message buffers (registrable by this driver). */
  allocBuffer(length: number): Uint8Array;
  freeBuffer(buffer: Uint8Array): void;

  /** Tears down: closes what is still open. */
  finalize(): void;
}

/** Message buffers in a domain's own RAM (page-aligned), as every driver hands them out. */
export function allocGuestBuffer(memory: GuestMemory, length: number): Uint8Array {
  try {
    return memory.allocBytes(length).bytes;
  } catch (e) {
    throw new MxDriverError("MX_NO_RESOURCES", `allocBuffer(${length}): ${(e as Error).message}`);
  }
}

export function freeGuestBuffer(memory: GuestMemory, buffer: Uint8Array): void {
  const loc = memory.locate(buffer);
  if (loc?.offset !== 0 || buffer.byteLength < 1)
    throw new MxDriverError("MX_BAD_SEG_MEM", "freeBuffer: not a buffer from allocBuffer");
  const count = Math.ceil(buffer.byteLength / 4096);
  for (let p = loc.pfn; p < loc.pfn + count; p++)
    if (!memory.allocator.isAllocated(p))
      throw new MxDriverError(
        "MX_BAD_SEG_MEM",
        `freeBuffer: page ${p} of this buffer is not allocated (freed already?); nothing was freed`,
      );
  memory.freePages({ pfn: loc.pfn, count });
}

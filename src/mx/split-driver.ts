/**
 * The MX driver of an endpoint that has no NIC context: the split path only. Nothing is
 * registered with a NIC and nothing is connected through a backend — every peer is reached
 * over Ethernet through the guest's netfront (ether.ts), netback and the driver domain's
 * bridge. The endpoint still gets a window and an interrupt page of its own (private memory
 * no NIC reads) so the library runs the same code; its event queue simply stays empty.
 *
 * Endpoint ids are SPLIT_ENDPOINT_BASE + domid × 256 + n: unique on the host without asking
 * anyone, and never a NIC context id, so a peer knows to connect over Ethernet.
 */
import { randomInt } from "node:crypto";
import {
  allocGuestBuffer,
  type DriverChannel,
  type DriverConnection,
  type DriverEndpoint,
  type DriverRegion,
  freeGuestBuffer,
  type MxDriver,
  MxDriverError,
} from "../myrixen/driver-abi.js";
import { ANY_ENDPOINT, INTR_BYTES, WINDOW_BYTES } from "../nic/window.js";
import type { Guest } from "../xen/guest/guest.js";
import { SPLIT_ENDPOINT_BASE, SPLIT_ENDPOINTS_PER_DOMAIN } from "../xen/io/mxoe.js";

export class SplitDriver implements MxDriver {
  readonly path = "split";
  private readonly open = new Set<number>();

  constructor(
    private readonly guest: Guest,
    readonly nicId: number,
    /** Why the fast path is not in use (a refusal, or policy), for the user. */
    readonly reason: string,
  ) {}

  openEndpoint(endpointId: number): DriverEndpoint {
    const base = SPLIT_ENDPOINT_BASE + this.guest.domid * SPLIT_ENDPOINTS_PER_DOMAIN;
    let id = endpointId;
    if (id === ANY_ENDPOINT) {
      id = -1;
      for (let n = 0; n < SPLIT_ENDPOINTS_PER_DOMAIN; n++)
        if (!this.open.has(base + n)) {
          id = base + n;
          break;
        }
      if (id < 0)
        throw new MxDriverError(
          "MX_NO_RESOURCES",
          `domain ${this.guest.domid} has all ${SPLIT_ENDPOINTS_PER_DOMAIN} split-path endpoints open`,
        );
    } else if (id < base || id >= base + SPLIT_ENDPOINTS_PER_DOMAIN || this.open.has(id)) {
      throw new MxDriverError(
        "MX_BAD_ENDPOINT",
        `on the split path this domain's endpoint ids are ${base}..${base + SPLIT_ENDPOINTS_PER_DOMAIN - 1} (free ones); got ${id}`,
      );
    }
    this.open.add(id);
    return {
      endpointId: id,
      session: randomInt(1, 0x7fffffff),
      window: new SharedArrayBuffer(WINDOW_BYTES),
      intr: new SharedArrayBuffer(INTR_BYTES),
    };
  }

  closeEndpoint(endpointId: number): void {
    this.open.delete(endpointId);
  }

  /** Nothing to register: rendezvous data is pulled over Ethernet from the sender's buffer. */
  registerRegion(): DriverRegion {
    return { regionId: 0, key: 0 };
  }

  deregisterRegion(): void {}

  connect(): DriverConnection {
    throw new MxDriverError(
      "MX_CONNECTION_FAILED",
      "on the split path the MX library connects over Ethernet",
    );
  }

  acceptChannel(): DriverChannel & { peerNic: number; peerEndpoint: number; peerSession: number } {
    throw new MxDriverError("MX_CONNECTION_FAILED", "the split path has no co-resident channels");
  }

  allocBuffer(length: number): Uint8Array {
    return allocGuestBuffer(this.guest.memory, length);
  }

  freeBuffer(buffer: Uint8Array): void {
    freeGuestBuffer(this.guest.memory, buffer);
  }

  finalize(): void {
    this.open.clear();
  }
}

/**
 * What the registry keeps per owner, endpoint, region and channel. Its own file so that the
 * registry (which changes them) and the inspection (which only reads them) share one
 * definition without importing each other.
 */

import type { DomId } from "../../xen/abi.js";
import type { ChannelMem, WindowSlot } from "./shared-memory.js";

export type ClientKind = "guest" | "native";

/** A domain (guest) or process (native) that owns endpoints. */
export class Client {
  readonly endpoints = new Map<number, EndpointRec>();
  readonly regions = new Map<number, RegionRec>();
  registeredBytes = 0;
  dead = false;

  constructor(
    readonly domid: DomId,
    readonly kind: ClientKind,
    readonly label: string,
    public quotaBytes: number,
  ) {}
}

export interface EndpointRec {
  id: number;
  /** The NIC's session: a secret between the endpoint and its peers (never in inspection). */
  session: number;
  /** Its connect key (never in inspection): netback checks CONNECTs over Ethernet against it. */
  key: number;
  /** Which opening of this backend this is (1, 2, ...): what inspection shows instead of the session. */
  serial: number;
  owner: Client;
  window: SharedArrayBuffer;
  intr: SharedArrayBuffer;
  /** Guest-owned endpoints: the window and interrupt page, a slot of the owner domain's (SharedMemory). */
  shared?: WindowSlot;
  channels: Set<ChannelRec>;
  /** Endpoints this one connected to or that connected to it (told when it goes away). */
  peers: Set<EndpointRec>;
  closed: boolean;
}

export interface RegionRec {
  id: number;
  endpointId: number;
  bytes: number;
  /** Gives back what the registration holds (unpins the guest's pages). */
  release: () => void;
}

export interface ChannelRec {
  id: number;
  /** members[s] writes lane s. */
  members: [EndpointRec, EndpointRec];
  buffer: SharedArrayBuffer;
  /** Guest channels: the buffer as dom0 frames of the members' pair (SharedMemory). */
  mem?: ChannelMem;
  closed: boolean;
  /**
   * The member the connect named has taken the channel (acceptChannel after its CONNECT
   * event); the connector has it from its connect. Until then a closed channel is not
   * replaced (registry.ts connect).
   */
  accepted: boolean;
  /** The member the connect named has it from a connect of its own (its CONNECT event is then stale). */
  memberConnected?: boolean;
  /**
   * Its connector closed its endpoint, or released the channel (mx_disconnect), before the
   * member it named took it, leaving records in its lane: the channel is closed but kept
   * (registry.ts orphan, takeReleased) for that member to accept and read, since its
   * connector saw those sends complete.
   */
  orphan?: boolean;
}

/**
 * The bridge's uplink: a bridge port over the NIC's Ethernet port (src/nic/ether-port.ts),
 * so frames for MACs that are not on this host go to the wire and frames from other hosts
 * come in. netback opens it with the NIC control op `open_ether_port`; a NIC without one
 * leaves the bridge host-local (logged, not an error).
 */

import type { NicControlRequest, OpenEtherPortReply } from "../nic/control.js";
import { EtherPortClient } from "../nic/ether-port.js";
import type { SyncCallClient } from "../xen/sync-call.js";
import type { BridgeFrame, BridgePort } from "./bridge.js";

/** What the uplink needs of the NIC's port (EtherPortClient's driver side). */
export interface EtherPortLike {
  send(frame: Uint8Array): boolean;
  poll(cb: (frame: Uint8Array) => void, max?: number): number;
  waitAsync(timeoutMs: number): Promise<void>;
  readonly rxPending?: boolean;
}

export class UplinkPort implements BridgePort {
  readonly name = "uplink";
  txFrames = 0;
  txDrops = 0;

  constructor(readonly port: EtherPortLike) {}

  transmit(frame: BridgeFrame): boolean {
    // The port copies the frame into its ring; a full ring drops it, as a busy wire would.
    if (this.port.send(frame.view())) {
      this.txFrames++;
      return true;
    }
    this.txDrops++;
    return false;
  }
}

/**
 * Opens the NIC's Ethernet port. Returns undefined (with the reason) when the NIC has none,
 * so the caller can run the bridge without an uplink.
 */
export function openUplink(
  nic: SyncCallClient<NicControlRequest>,
): { port: EtherPortLike; error?: undefined } | { port?: undefined; error: string } {
  try {
    const reply = nic.call<OpenEtherPortReply>({ op: "open_ether_port" });
    if (!(reply?.port instanceof SharedArrayBuffer))
      return { error: "open_ether_port answered without a port buffer" };
    return { port: new EtherPortClient(reply.port) };
  } catch (e) {
    return { error: (e as Error)?.message ?? String(e) };
  }
}

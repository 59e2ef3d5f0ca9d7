/**
 * mx_connect on every way (the connect half of Open-MX's omx_partner.c), and moving an
 * endpoint between its fast path and the split path:
 *
 *   a peer on our NIC      the driver connects (myrback checks the key and grants a channel
 *                          to exactly the two endpoints: channel-path.ts), or — no channel
 *                          to be had — the NIC delivers locally (nic-path.ts)
 *   a peer on another NIC  the NICs check the key between themselves (a CONNECT descriptor)
 *   a split-path peer      a broadcast over Ethernet that the peer's owner answers itself
 *                          (ether-connect.ts)
 *
 * While the endpoint is on the split path, every peer it connects is also resolved over
 * Ethernet, so that its sends can go that way.
 */
import { LaneClosed } from "../myrixen/channel-abi.js";
import type { MxDriver } from "../myrixen/driver-abi.js";
import { SPLIT_ENDPOINT_BASE } from "../xen/io/mxoe.js";
import type { Channels } from "./channel-path.js";
import { asMxError, MxError } from "./codes.js";
import type { EtherConnector } from "./ether-connect.js";
import type { NicRecords } from "./nic-path.js";
import type { PartnerTable } from "./partner.js";
import type { Block, EndpointContext, Partner } from "./types.js";

/** Why our own requests to a peer we disconnected from fail ("disconnected" alone read as the peer's doing). */
export const WE_DISCONNECTED = "we disconnected from this peer (mx_disconnect)";

export class Connections {
  constructor(
    private readonly ctx: EndpointContext,
    private readonly driver: MxDriver,
    private readonly partners: PartnerTable,
    private readonly channels: Channels,
    private readonly nicRecords: NicRecords,
    /** Connects over Ethernet, if the domain has a network device. */
    private readonly ether: EtherConnector | undefined,
    private readonly block: Block,
  ) {}

  /** mx_connect: resolves a peer endpoint, checking its key. Connecting twice returns the same partner. */
  connect(nic: number, endpoint: number, key: number, timeoutMs: number): Partner {
    for (const [v, what] of [
      [nic, "nic"],
      [endpoint, "endpoint"],
      [key, "key"],
    ] as const)
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff)
        throw new MxError(
          "MX_BAD_PARAM_VAL",
          `connect: ${what} must be a 32-bit unsigned integer, got ${String(v)}`,
        );
    const known = this.partners.get(nic, endpoint);
    // Connected already; unless the peer closed our channel (mx_disconnect) and we had not
    // looked yet: then the peer is failed here and this connect gets a fresh channel.
    known?.channel?.checkClosed();
    if (known && known.dead === undefined && known.verified) return known;
    // A split-only endpoint (ours or the peer's) is reached over Ethernet, key checked by its owner.
    if (this.driver.path === "split" || endpoint >= SPLIT_ENDPOINT_BASE) {
      if (this.ether === undefined)
        throw new MxError(
          "MX_CONNECTION_FAILED",
          `nic ${nic} endpoint ${endpoint} is on the split path and this domain has no network device`,
        );
      return this.ether.connect(nic, endpoint, key >>> 0, 0, timeoutMs, this.block);
    }
    let peer: Partner;
    if (nic !== this.ctx.nicId) {
      peer = this.nicRecords.connect(nic, endpoint, key >>> 0, timeoutMs, this.block);
    } else {
      let conn: ReturnType<MxDriver["connect"]>;
      try {
        conn = this.driver.connect(this.ctx.endpointId, nic, endpoint, key >>> 0);
      } catch (e) {
        throw asMxError(e, "MX_CONNECTION_FAILED");
      }
      if (
        conn.channel &&
        this.channels.takeIfClosed(conn.channel, conn.peerNic, conn.peerEndpoint, conn.peerSession)
      )
        throw new MxError(
          "MX_CONNECTION_FAILED",
          `nic ${nic} endpoint ${endpoint} closed the channel of this connect at once (it disconnected us); connect again for a new one`,
        );
      // myrback made a new channel: the one the peer had is dead (closed before it was replaced).
      if (known?.channel !== undefined && known.channel.channelId !== conn.channel?.channelId)
        this.channels.lost(known);
      peer = this.partners.add(conn.peerNic, conn.peerEndpoint, conn.peerSession);
      peer.verified = true;
      if (conn.channel) this.channels.attach(peer, conn.channel);
      // A same-NIC peer without a channel is still reachable: the NIC delivers locally.
      else this.nicRecords.install(peer);
    }
    if (this.partners.split) this.ether?.resolve(peer, timeoutMs, this.block);
    return peer;
  }

  /**
   * mx_disconnect: `peer` is failed, after what it already wrote into our channel is taken
   * (its sender saw those eager sends complete). The channel closes for both sides, so
   * myrback gives the pair's next connect a fresh one.
   */
  disconnect(peer: Partner): void {
    this.channels.lost(peer, WE_DISCONNECTED, LaneClosed.Disconnected);
  }

  /** The endpoint closes: its co-resident peers are told so through their channels. */
  closing(): void {
    this.channels.closing(this.partners.list);
  }

  /**
   * Moves the endpoint to the split path ("split": every peer over Ethernet, through netback
   * and the bridge) or back to its fast path ("bypass"/"native"), with traffic flowing.
   */
  switchPath(to: string, timeoutMs: number): void {
    const fast = this.driver.path;
    if (to !== "split" && to !== fast)
      throw new MxError(
        "MX_BAD_PARAM_VAL",
        fast === "split"
          ? "this endpoint has no fast path (it fell back to the split path when it opened)"
          : `switchPath: expected "split" or "${fast}", got ${JSON.stringify(to)}`,
      );
    if (this.ether === undefined)
      throw new MxError(
        "MX_NO_DEV",
        "switchPath: this domain has no network device (netfront) for the split path",
      );
    const split = to === "split";
    if (split === this.partners.split) return;
    this.ether.switchTo(split, timeoutMs, this.block);
  }
}

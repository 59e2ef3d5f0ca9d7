/**
 * The NIC's side of its control interface (control.ts holds the requests and replies): what
 * each request does, validated here, in the NIC — open, close (and what ends with an
 * endpoint), register and deregister regions, look up an endpoint for a connect (wrong keys
 * throttled), post a driver event, open the Ethernet port, set an endpoint's QoS, info. As
 * Open-MX's driver/linux/omx_dev.c dispatches its ioctls to the engines. Nic.control
 * (nic.ts) counts each request, and wakes the loop after it; the data path never comes here.
 */
import { reclaimSoon } from "../xen/reclaim.js";
import type { NicClock } from "./clock.js";
import type { ConnectLockout, Connector } from "./connect.js";
import {
  isInt,
  isWord,
  type LookupReply,
  type NicControlRequest,
  type NicInfo,
  type RegisterRegionReply,
} from "./control.js";
import type { Delivery } from "./delivery.js";
import type { DmaEngine } from "./dma.js";
import type { EndpointContext, EndpointTable } from "./endpoints.js";
import type { EtherService } from "./ether-service.js";
import { type Events, noteRefusal } from "./events.js";
import type { LinkTable } from "./link-state.js";
import type { Links } from "./links.js";
import { isDefaultQos, type QosScheduler, type QosSettings, qosSettingsError } from "./qos.js";
import type { RemotePull } from "./remote-pull.js";
import { MxStatus, NicError } from "./status.js";
import type { Tpt } from "./tpt.js";
import { E_DRIVER_WORDS, EVENT_WORDS, W_SQ_PROD } from "./window.js";

/** The NIC's parts a control request reaches (built by the Nic). */
export interface NicParts {
  readonly nicId: number;
  readonly maxEndpoints: number;
  readonly clock: NicClock;
  readonly eps: EndpointTable;
  readonly tpt: Tpt;
  readonly events: Events;
  readonly qos: QosScheduler;
  readonly dma: DmaEngine;
  readonly delivery: Delivery;
  readonly connector: Connector;
  readonly remotePull: RemotePull;
  readonly ether: EtherService;
  readonly linkTable: LinkTable;
  readonly links: Links;
  /** lookup_endpoint's lockout, when it answers throttled. */
  readonly lockout: ConnectLockout;
}

export class ControlService {
  private readonly nicId: number;
  private readonly maxEndpoints: number;
  private readonly clock: NicClock;
  private readonly eps: EndpointTable;
  private readonly tpt: Tpt;
  private readonly events: Events;
  private readonly qos: QosScheduler;
  private readonly dma: DmaEngine;
  private readonly delivery: Delivery;
  private readonly connector: Connector;
  private readonly remotePull: RemotePull;
  private readonly ether: EtherService;
  private readonly linkTable: LinkTable;
  private readonly links: Links;
  private readonly lockout: ConnectLockout;

  constructor(parts: NicParts) {
    this.nicId = parts.nicId;
    this.maxEndpoints = parts.maxEndpoints;
    this.clock = parts.clock;
    this.eps = parts.eps;
    this.tpt = parts.tpt;
    this.events = parts.events;
    this.qos = parts.qos;
    this.dma = parts.dma;
    this.delivery = parts.delivery;
    this.connector = parts.connector;
    this.remotePull = parts.remotePull;
    this.ether = parts.ether;
    this.linkTable = parts.linkTable;
    this.links = parts.links;
    this.lockout = parts.lockout;
  }

  /** Executes one control request; throws NicError for a bad one. */
  dispatch(req: unknown): unknown {
    if (typeof req !== "object" || req === null || typeof (req as { op?: unknown }).op !== "string")
      throw new NicError("EINVAL", "a control request must be an object with a string `op`");
    const r = req as NicControlRequest;
    switch (r.op) {
      case "open_endpoint": {
        const reply = this.eps.open(r);
        this.qos.opened(reply.endpointId, r.group, this.clock.tick());
        return reply;
      }
      case "set_qos":
        return this.setQos(r);
      case "forget_group":
        if (!isInt(r.group) || r.group < 0 || r.group > 0xffffffff)
          throw new NicError("EINVAL", `forget_group: group must be a u32, got ${String(r.group)}`);
        this.qos.forgetGroup(r.group);
        return null;
      case "close_endpoint":
        this.closeEndpoint(this.eps.openCtx(r.endpointId, "close_endpoint"));
        return null;
      case "register_region":
        return this.registerRegion(r);
      case "deregister_region":
        this.tpt.deregister(this.eps.openCtx(r.endpointId, "deregister_region").id, r.regionId);
        return null;
      case "lookup_endpoint":
        return this.lookupEndpoint(r);
      case "deliver_event":
        this.deliverEvent(r);
        return null;
      case "open_ether_port":
        return this.ether.open();
      case "info":
        return this.info();
      default:
        throw new NicError(
          "EINVAL",
          `unknown control op ${JSON.stringify((r as { op: string }).op)}: expected open_endpoint, close_endpoint, register_region, deregister_region, lookup_endpoint, deliver_event, open_ether_port, set_qos, forget_group or info`,
        );
    }
  }

  /** Closes ctx: what waits on it ends, in this order, and its owner is woken to read Closed. */
  private closeEndpoint(ctx: EndpointContext): void {
    this.eps.markClosed(ctx);
    this.qos.closed(ctx.id);
    // Its wire requests end with it: nobody reads their completions, and the peers stop serving them.
    this.connector.dropEndpoint(ctx.id);
    this.remotePull.dropEndpoint(ctx.id);
    // Payloads queued for it will never be placed: their senders learn it now.
    this.delivery.failQueued(ctx);
    this.dma.stop(ctx);
    ctx.linkStalled = false;
    ctx.stallSince = 0;
    // What was held for it goes with it, and it is owed nothing: its requests ended without events.
    this.events.reset(ctx);
    // Release our own waiter on the dead window, and wake an owner blocked on it: it reads Closed.
    Atomics.notify(ctx.w, W_SQ_PROD);
    this.events.raise(ctx);
    // Its regions viewed its guest's RAM: collect soon, so that RAM goes back to the OS on time.
    reclaimSoon();
  }

  /** An endpoint's weight and caps (its driver's policy for the owner; qos.ts). */
  private setQos(r: Extract<NicControlRequest, { op: "set_qos" }>): QosSettings {
    const ctx = this.eps.openCtx(r.endpointId, "set_qos");
    const problem = qosSettingsError(r.settings);
    if (problem !== null) throw new NicError("EINVAL", `set_qos: ${problem}`);
    this.qos.set(ctx.id, r.settings, this.clock.tick());
    return this.qos.settings(ctx.id);
  }

  private registerRegion(r: Extract<NicControlRequest, { op: "register_region" }>): RegisterRegionReply {
    const ctx = this.eps.openCtx(r.endpointId, "register_region");
    return this.tpt.register(ctx.id, r.memory, r.runs, r.access);
  }

  private lookupEndpoint(r: Extract<NicControlRequest, { op: "lookup_endpoint" }>): LookupReply {
    const id = this.eps.checkId(r.endpointId, "lookup_endpoint");
    if (!isInt(r.key) || r.key < 0 || r.key > 0xffffffff)
      throw new NicError("EINVAL", `lookup_endpoint: key must be a u32, got ${String(r.key)}`);
    const ctx = this.eps.ctxs[id];
    if (r.requester === undefined) {
      if (!ctx.open) return { status: "unknown" };
      if (ctx.key !== r.key) return { status: "bad_key" };
    } else {
      // The driver connects on behalf of its endpoint `requester`: wrong keys are throttled.
      const from = this.eps.checkId(r.requester, "lookup_endpoint requester");
      const asker = this.eps.ctxs[from];
      this.clock.tick();
      // Its owner locked out for wrong keys, as this NIC counts its own (own-refusals.ts).
      const wait = this.events.own.connectWait(asker, this.nicId);
      if (wait > 0) {
        return { status: "throttled", retryAfterMs: wait };
      }
      const status = this.connector.check(this.nicId, from, asker.session, id, r.key, this.lockout);
      noteRefusal(asker, status, this.lockout.retryAfterMs);
      this.events.own.connectAnswered(asker, this.nicId, status);
      if (status === MxStatus.REJECTED)
        return { status: "throttled", retryAfterMs: this.lockout.retryAfterMs };
      if (status === MxStatus.ENDPOINT_UNKNOWN) return { status: "unknown" };
      if (status === MxStatus.BAD_KEY) return { status: "bad_key" };
    }
    return { status: "ok", session: ctx.session, intr: ctx.intrBuffer!, owner: ctx.owner };
  }

  private deliverEvent(r: Extract<NicControlRequest, { op: "deliver_event" }>): void {
    const ctx = this.eps.openCtx(r.endpointId, "deliver_event");
    if (!isWord(r.cookie)) throw new NicError("EINVAL", `deliver_event: cookie must be a 32-bit integer`);
    const words = r.words;
    if (!Array.isArray(words) || words.length > EVENT_WORDS - E_DRIVER_WORDS || !words.every(isWord))
      throw new NicError(
        "EINVAL",
        `deliver_event: words must be an array of at most ${EVENT_WORDS - E_DRIVER_WORDS} 32-bit integers`,
      );
    if (!this.events.postDriver(ctx, r.cookie, words))
      throw new NicError(
        "EAGAIN",
        `deliver_event: endpoint ${ctx.id}'s event queue is full and its backlog has no room for driver events (the rest is kept for the completions it is owed); its owner is not consuming events`,
      );
  }

  /** What the NIC has open and attached (the info request). */
  info(): NicInfo {
    return {
      nicId: this.nicId,
      maxEndpoints: this.maxEndpoints,
      openEndpoints: this.eps.openList(),
      regions: this.tpt.count,
      links: this.linkTable.peers(),
      linkStates: this.links.states(),
      etherPort: this.ether.isOpen,
      qos: this.eps
        .openList()
        .map((endpointId) => ({ endpointId, settings: this.qos.settings(endpointId) }))
        .filter(({ settings }) => !isDefaultQos(settings)),
      qosShares: this.qos.shares(this.eps.openList()),
      qosOwed: this.qos.owedGroups(this.clock.tick()),
    };
  }
}

/**
 * A domain's QoS policy (issue 16): its weight and caps, as the toolstack writes them and
 * myrback enforces them through the NIC.
 *
 * Where it lives: the `qos` key of the domain's myri device backend directory,
 * /local/domain/<backend>/backend/myri/<domid>/<devid>/qos, as Xen's netback takes its
 * `rate` from the vif's backend directory. The toolstack (the host, dom0) writes it before the
 * guest connects and may rewrite it at any time; the directory is dom0's and the guest may
 * only read it (xenbus.ts createDevice sets those permissions), so a guest cannot raise its
 * own weight or cap. The value is JSON: {"weight":3,"tx":{"bytesPerSec":5e8}}.
 *
 * What myrback does (QosPolicies, a few calls from back.ts): it watches the key while the
 * device is connected, validates each value (a bad one is logged and the previous policy
 * stays), and sends every endpoint the domain has open a `set_qos` control request; an
 * endpoint opened later gets it at open time. The NIC enforces it (nic/qos.ts). Co-resident
 * traffic never reaches the NIC: myrback writes each channel member's lane policy page
 * (channel-abi.ts; `lanePolicy` below) when the channel is made and whenever either member's
 * policy changes, and the receiving library holds its lane to it (mx/lane-policer.ts).
 * Weights between pairs with different receivers, and a domain's byte caps across its several
 * lanes, are held by myrback's share loop (back/share-loop.ts), which runs only while some
 * weight is not 1 or a capped domain has two lanes or more.
 */
import { DEFAULT_QOS, type QosSettings } from "../nic/qos.js";
import type { DomId } from "../xen/abi.js";
import type { XenStoreClient } from "../xen/xenstore.js";
import type { LanePolicy } from "./channel-abi.js";

/** The key under the device's backend directory. */
export const QOS_KEY = "qos";

/** Caps in one direction, per second (absent: no cap). */
export interface QosDirection {
  bytesPerSec?: number;
  msgsPerSec?: number;
}

/**
 * A domain's policy: weight (default 1) and caps per direction (absent: none). Validated by
 * qos-schema.ts (parseQosPolicy), which myrback loads only when a domain has a policy: zod
 * is most of the driver domain's code, and most hosts never set one.
 */
export interface QosPolicy {
  weight?: number;
  tx?: QosDirection;
  rx?: QosDirection;
}

/** An invalid policy; the message names the field (`qos.tx.bytesPerSec: expected …`). */
export class QosPolicyError extends Error {
  override name = "QosPolicyError";
}

/** What the NIC is told for a policy. */
export function qosSettings(p: QosPolicy | undefined): QosSettings {
  if (!p) return { ...DEFAULT_QOS };
  return {
    weight: p.weight ?? 1,
    txBytesPerSec: p.tx?.bytesPerSec ?? 0,
    txMsgsPerSec: p.tx?.msgsPerSec ?? 0,
    rxBytesPerSec: p.rx?.bytesPerSec ?? 0,
    rxMsgsPerSec: p.rx?.msgsPerSec ?? 0,
  };
}

/** What myrback needs to tell the NIC about a domain's endpoints. */
export interface QosTarget {
  /** Endpoint ids the domain has open on the NIC now. */
  endpointsOf(domid: DomId): Iterable<number>;
  /** Sends `set_qos` for one endpoint (throws if the NIC refuses). */
  setQos(endpointId: number, settings: QosSettings): void;
  /** The domain's policy changed: its co-resident channels' lane policies are rewritten. */
  changed?(domid: DomId): void;
  log(message: string): void;
}

/**
 * The limits a member's library holds its incoming co-resident lane to (channel-abi.ts lane
 * policy page): the writer's tx caps and the reader's rx caps, the smaller of each (0 = no
 * cap), the writer's weight, and the writer's domain (its lanes into one reader share that weight).
 */
export function lanePolicy(writer: QosSettings, reader: QosSettings, writerDomain?: DomId): LanePolicy {
  const min = (a: number, b: number) => (a === 0 ? b : b === 0 ? a : Math.min(a, b));
  const p: LanePolicy = {
    bytesPerSec: min(writer.txBytesPerSec, reader.rxBytesPerSec),
    msgsPerSec: min(writer.txMsgsPerSec, reader.rxMsgsPerSec),
    weight: writer.weight,
  };
  if (writerDomain !== undefined) p.group = writerDomain;
  return p;
}

/** myrback's policies: one per domain with a myri device, from its XenStore node. */
export class QosPolicies {
  private readonly byDomain = new Map<DomId, QosSettings>();

  constructor(private readonly target: QosTarget) {}

  /** The settings a domain's endpoint gets at open time (default: weight 1, no caps). */
  settingsFor(domid: DomId): QosSettings {
    return this.byDomain.get(domid) ?? { ...DEFAULT_QOS };
  }

  /** Tells the NIC about a freshly opened endpoint of `domid`, if its policy is not the default. */
  applyToEndpoint(domid: DomId, endpointId: number): void {
    const s = this.byDomain.get(domid);
    if (s) this.target.setQos(endpointId, s);
  }

  /** A new policy for `domid` (validated): every endpoint it has open is told now. */
  set(domid: DomId, policy: QosPolicy): void {
    const s = qosSettings(policy);
    this.byDomain.set(domid, s);
    for (const id of this.target.endpointsOf(domid)) {
      try {
        this.target.setQos(id, s);
      } catch (e) {
        this.target.log(`domain ${domid}: endpoint ${id}: set_qos failed: ${(e as Error).message}`);
      }
    }
    this.target.changed?.(domid);
  }

  forget(domid: DomId): void {
    this.byDomain.delete(domid);
  }

  /**
   * Follows the `qos` key of a device's backend directory `backPath` for domain `domid`
   * until the returned function is called. A missing key is the default policy; an invalid
   * one is logged and ignored (the policy in force stays).
   */
  async watch(xs: XenStoreClient, domid: DomId, backPath: string): Promise<() => Promise<void>> {
    const path = `${backPath}/${QOS_KEY}`;
    const load = async (): Promise<void> => {
      const text = await xs.tryRead(path).catch(() => undefined);
      if (text === undefined || text === "") {
        if (this.byDomain.has(domid)) this.set(domid, {});
        return;
      }
      try {
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch {
          throw new QosPolicyError(`${path}: not JSON: ${JSON.stringify(text.slice(0, 80))}`);
        }
        const { parseQosPolicy } = await import("./qos-schema.js");
        this.set(domid, parseQosPolicy(value, path));
        this.target.log(`domain ${domid}: qos ${text}`);
      } catch (e) {
        this.target.log(
          `domain ${domid}: qos policy refused, keeping the one in force: ${(e as Error).message}`,
        );
      }
    };
    await load();
    return xs.watch(path, () => void load());
  }
}

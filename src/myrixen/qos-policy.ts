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
import { z } from "zod";
import { DEFAULT_QOS, MAX_WEIGHT, type QosSettings } from "../nic/qos.js";
import type { DomId } from "../xen/abi.js";
import type { XenStoreClient } from "../xen/xenstore.js";
import type { LanePolicy } from "./channel-abi.js";

/** The key under the device's backend directory. */
export const QOS_KEY = "qos";

const rate = (what: string) =>
  z
    .number({ error: `expected a number of ${what} per second` })
    .positive({ error: `expected a number of ${what} per second > 0 (omit the field for no cap)` })
    .refine(Number.isFinite, { error: `expected a finite number of ${what} per second` });

const DirectionSchema = z.strictObject({
  bytesPerSec: rate("bytes").optional(),
  msgsPerSec: rate("messages").optional(),
});

export const QosPolicySchema = z.strictObject({
  weight: z
    .int({ error: `expected a whole number in 1..${MAX_WEIGHT}` })
    .min(1, { error: `expected a whole number in 1..${MAX_WEIGHT}` })
    .max(MAX_WEIGHT, { error: `expected a whole number in 1..${MAX_WEIGHT}` })
    .optional(),
  tx: DirectionSchema.optional(),
  rx: DirectionSchema.optional(),
});

/** A domain's policy: weight (default 1) and caps per direction (absent: none). */
export type QosPolicy = z.infer<typeof QosPolicySchema>;

/** An invalid policy; the message names the field (`qos.tx.bytesPerSec: expected …`). */
export class QosPolicyError extends Error {
  override name = "QosPolicyError";
}

/** Validates a policy from an API, a config file or the XenStore node. Throws QosPolicyError. */
export function parseQosPolicy(value: unknown, where = "qos"): QosPolicy {
  const r = QosPolicySchema.safeParse(value);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => {
    const field = [where, ...i.path.map(String)].join(".");
    const got = i.code === "unrecognized_keys" ? `unknown field(s) ${i.keys.join(", ")}` : i.message;
    return `${field}: ${got}`;
  });
  throw new QosPolicyError(lines.join("; "));
}

const SI: Record<string, number> = { "": 1, k: 1e3, K: 1e3, M: 1e6, G: 1e9 };
const FLAG_FIELDS: Record<string, [keyof QosPolicy, "bytesPerSec" | "msgsPerSec" | null]> = {
  weight: ["weight", null],
  "tx-bytes": ["tx", "bytesPerSec"],
  "tx-msgs": ["tx", "msgsPerSec"],
  "rx-bytes": ["rx", "bytesPerSec"],
  "rx-msgs": ["rx", "msgsPerSec"],
};

/**
 * The command line's form, `weight=3,tx-bytes=500M,rx-msgs=1e5` (k, M, G: powers of 1000),
 * into a policy. Throws QosPolicyError naming the bad part.
 */
export function parseQosFlag(text: string, where = "--qos"): QosPolicy {
  const out: Record<string, unknown> = {};
  for (const part of text.split(",")) {
    if (part.trim() === "") continue;
    const m = /^\s*([a-z-]+)\s*=\s*([0-9.eE+-]+)([kKMG]?)\s*$/.exec(part);
    const field = m ? FLAG_FIELDS[m[1]] : undefined;
    if (!m || !field)
      throw new QosPolicyError(
        `${where}: ${JSON.stringify(part)} is not one of weight=N, tx-bytes=N, tx-msgs=N, rx-bytes=N, rx-msgs=N (N may end in k, M or G)`,
      );
    const n = Number(m[2]) * SI[m[3]];
    if (Number.isNaN(n))
      throw new QosPolicyError(`${where}: ${m[1]}: ${JSON.stringify(m[2])} is not a number`);
    const [key, sub] = field;
    if (sub === null) out[key] = n;
    else out[key] = { ...(out[key] as object | undefined), [sub]: n };
  }
  return parseQosPolicy(out, where);
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

/** The node's value for a policy (what the toolstack writes). */
export function encodeQosPolicy(p: QosPolicy): string {
  return JSON.stringify(parseQosPolicy(p));
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

/**
 * Validation of a QoS policy (qos-policy.ts): the zod schema the cluster config and wire
 * messages embed, parseQosPolicy for an API, a config file or the XenStore node, and the
 * command line's `--qos` form. Its own module so the driver domain loads zod only once a
 * domain has a policy to check.
 */
import * as z from "zod";
import { MAX_WEIGHT } from "../nic/qos.js";
import { type QosPolicy, QosPolicyError } from "./qos-policy.js";

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
}) satisfies z.ZodType<QosPolicy>;

// The hand-written type and the schema say the same (a compile error if one gains a field).
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;
const _sameShape: Same<z.infer<typeof QosPolicySchema>, QosPolicy> = true;
void _sameShape;

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

/** The node's value for a policy (what the toolstack writes). */
export function encodeQosPolicy(p: QosPolicy): string {
  return JSON.stringify(parseQosPolicy(p));
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

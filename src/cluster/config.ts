/**
 * `myrixen host`'s settings: the JSON config file (validated with zod; every wrong or unknown
 * field gets a line naming it, what is expected and what was found) merged with the command
 * line's flags, which override the file. `keyFile` (the cluster key, auth.ts) is a path
 * relative to the config file's directory.
 */
import { availableParallelism } from "node:os";
import path from "node:path";
import * as z from "zod";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import { QosPolicySchema } from "../myrixen/qos-schema.js";
import { ConfigError, LIMITS } from "./config-limits.js";
import {
  DEFAULT_CONTROL_PORT,
  type HostAddress,
  type HostEntry,
  parseAddress,
  parseHostList,
} from "./hostfile.js";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "./log.js";
import { readSmallTextFile } from "./small-file.js";
import { describeIssues } from "./wire.js";

export { ConfigError, LIMITS };

export interface HostSettings {
  listen: HostAddress;
  linkPort?: number;
  nicId?: number;
  slots: number;
  peers: HostEntry[];
  maxEndpoints?: number;
  /** Ranks running at once (undefined: the daemon's default, 4 per slot). */
  maxRanks?: number;
  /** Guest RAM committed to running ranks, MiB (undefined: half of the machine's RAM). */
  maxGuestMb?: number;
  maxLinks?: number;
  maxLinksPerAddress?: number;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** Default policy of the guests it starts (the file's `qos`). */
  qos?: QosPolicy;
  /** `--key-file`, else the file's `keyFile` (resolved against the file's directory). */
  keyFile?: { flag?: string; config?: { file: string; configPath: string } };
}

const intIn = (min: number, max: number) => {
  const error = `expected a whole number in ${min}..${max}`;
  return z.int({ error }).min(min, { error }).max(max, { error });
};

const address = (allowZero: boolean) =>
  z.string({ error: "expected a string host:port" }).superRefine((s, ctx) => {
    const a = parseAddress(s, DEFAULT_CONTROL_PORT, allowZero);
    if (typeof a === "string") ctx.addIssue({ code: "custom", message: `expected host:port; ${a}` });
  });

export const HostConfigSchema = z.strictObject({
  listen: address(true).optional(),
  linkPort: intIn(...LIMITS.linkPort).optional(),
  nicId: intIn(...LIMITS.nicId).optional(),
  slots: intIn(...LIMITS.slots).optional(),
  peers: z.array(address(false), { error: 'expected a list of "host[:port]" strings' }).max(1024).optional(),
  maxEndpoints: intIn(...LIMITS.maxEndpoints).optional(),
  /** Ranks this host runs at once, over every job (default 4 per slot). */
  maxRanks: intIn(...LIMITS.maxRanks).optional(),
  /** Guest RAM it commits to running ranks, MiB (default half of the machine's RAM). */
  maxGuestMb: intIn(...LIMITS.maxGuestMb).optional(),
  maxLinks: intIn(...LIMITS.maxLinks).optional(),
  maxLinksPerAddress: intIn(...LIMITS.maxLinksPerAddress).optional(),
  logLevel: z.enum(LOG_LEVELS, { error: `expected one of ${LOG_LEVELS.join(", ")}` }).optional(),
  logFormat: z.enum(LOG_FORMATS, { error: `expected one of ${LOG_FORMATS.join(", ")}` }).optional(),
  keyFile: z
    .string({ error: "expected a file path (the cluster key file)" })
    .min(1, { error: "expected a file path (the cluster key file)" })
    .max(4096, { error: "expected a file path of at most 4096 characters" })
    .optional(),
  /** The weight and caps of the guests this host starts when a job gives none (qos-policy.ts). */
  qos: QosPolicySchema.optional(),
});
export type HostConfigFile = z.infer<typeof HostConfigSchema>;
const KNOWN = Object.keys(HostConfigSchema.shape);

function at(value: unknown, path: PropertyKey[]): unknown {
  let v = value;
  for (const k of path) v = (v as Record<PropertyKey, unknown> | undefined)?.[k];
  return v;
}

/** Reads and validates a config file; throws ConfigError listing every problem. */
export function loadHostConfig(file: string): HostConfigFile {
  let text: string;
  try {
    text = readSmallTextFile(file, "the config file");
  } catch (e) {
    const m = (e as Error).message;
    throw new ConfigError([
      m.startsWith("the config file") ? m : `cannot read the config file ${file}: ${m}`,
    ]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError([`the config file ${file} is not valid JSON: ${(e as Error).message}`]);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw))
    throw new ConfigError([`the config file ${file} must hold a JSON object like {"slots": 4}`]);
  const r = HostConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const problems: string[] = [];
  for (const issue of r.error.issues) {
    if (issue.code === "unrecognized_keys") {
      for (const k of issue.keys)
        problems.push(`${file}: unknown field "${k}" (known fields: ${KNOWN.join(", ")})`);
      continue;
    }
    const [line] = describeIssues(new z.ZodError([issue]));
    problems.push(`${file}: ${line}, got ${JSON.stringify(at(raw, issue.path)) ?? "nothing"}`);
  }
  throw new ConfigError(problems);
}

/** Flag values, already checked by the command line (undefined: not given). */
export interface HostFlags {
  listen?: HostAddress;
  linkPort?: number;
  nicId?: number;
  slots?: number;
  peers?: HostEntry[];
  maxEndpoints?: number;
  maxRanks?: number;
  maxGuestMb?: number;
  maxLinks?: number;
  maxLinksPerAddress?: number;
  logLevel?: LogLevel;
  logFormat?: LogFormat;
  keyFile?: string;
}

/**
 * The file's values under the flags', then the defaults. `configPath`: where the file was
 * read from (its `keyFile` is relative to it).
 */
export function resolveHostSettings(
  file: HostConfigFile | undefined,
  flags: HostFlags,
  configPath?: string,
): HostSettings {
  const listen =
    flags.listen ??
    (file?.listen !== undefined
      ? (parseAddress(file.listen, DEFAULT_CONTROL_PORT, true) as HostAddress)
      : { host: "127.0.0.1", port: DEFAULT_CONTROL_PORT });
  const peers = flags.peers ?? (file?.peers?.length ? parseHostList(file.peers.join(",")) : []);
  return {
    listen,
    linkPort: flags.linkPort ?? file?.linkPort,
    nicId: flags.nicId ?? file?.nicId,
    slots: flags.slots ?? file?.slots ?? availableParallelism(),
    peers,
    maxEndpoints: flags.maxEndpoints ?? file?.maxEndpoints,
    maxRanks: flags.maxRanks ?? file?.maxRanks,
    maxGuestMb: flags.maxGuestMb ?? file?.maxGuestMb,
    maxLinks: flags.maxLinks ?? file?.maxLinks,
    maxLinksPerAddress: flags.maxLinksPerAddress ?? file?.maxLinksPerAddress,
    logLevel: flags.logLevel ?? file?.logLevel ?? "info",
    logFormat: flags.logFormat ?? file?.logFormat ?? "json",
    qos: file?.qos,
    keyFile: {
      flag: flags.keyFile,
      config:
        file?.keyFile !== undefined
          ? {
              file: path.resolve(path.dirname(configPath ?? "."), file.keyFile),
              configPath: configPath ?? "the config file",
            }
          : undefined,
    },
  };
}

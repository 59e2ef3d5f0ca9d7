/**
 * The names `myrixen bench` measures: suites, scopes and transports (the row format's
 * `bench`, `scope` and `transport`). A leaf module with no imports, so that the CLI can
 * define and check its flags without loading a benchmark; the suites import their names
 * from here.
 */
import type { Scope } from "../programs/rows.js";

/** The MX paths, in column order: no virtualization, the bypass fast path, the split path. */
export type MxPath = "native" | "bypass" | "split";
export const MX_PATHS: readonly MxPath[] = ["native", "bypass", "split"];

/** The transport name of Open MPI with its single-copy mechanism off (one host only). */
export const OPENMPI_CICO = "openmpi-cico";

/** The transports of the substrate suite's rows (evtchn-pingpong: evtchn, raw-sab; ring-throughput: ring). */
export const SUBSTRATE_TRANSPORTS: readonly string[] = ["evtchn", "raw-sab", "ring"];

/** The paths the latency breakdown traces. */
export const BREAKDOWN_TRANSPORTS: readonly MxPath[] = ["native", "bypass", "split"];

/**
 * What each suite measures in each scope. On one host: the MX paths with the machine's
 * limits (raw-tcp too, as the cross-host reference it always was). Across hosts: the MX
 * paths, raw-tcp, and raw-chain (the four threads MX's cross-host path crosses, bare).
 */
export function suiteTransports(bench: "pingpong" | "stream", scope: Scope): string[] {
  // openmpi: Open MPI as a peer where mpicc and mpirun exist (openmpi.ts); on one host also
  // openmpi-cico, the same with its single copy off (copy-in/copy-out, as between VMs).
  const paths: string[] = [...MX_PATHS, "openmpi"];
  if (scope === "cross-host") return [...paths, "raw-tcp", "raw-chain"];
  return bench === "pingpong"
    ? [...paths, OPENMPI_CICO, "raw-sab", "raw-relay", "postmessage", "postmessage-transfer", "raw-tcp"]
    : [...paths, OPENMPI_CICO, "raw-sab", "memcpy"];
}

/** Every transport each suite knows, over both scopes. */
export const PINGPONG_TRANSPORTS = [
  ...new Set([...suiteTransports("pingpong", "intra-host"), ...suiteTransports("pingpong", "cross-host")]),
];
export const STREAM_TRANSPORTS = [
  ...new Set([...suiteTransports("stream", "intra-host"), ...suiteTransports("stream", "cross-host")]),
];

/** Every transport `--transports` accepts. */
export const ALL_TRANSPORTS = [
  ...new Set([...PINGPONG_TRANSPORTS, ...STREAM_TRANSPORTS, ...SUBSTRATE_TRANSPORTS]),
];

/** The suites beyond substrate, pingpong and stream (cli/bench-extras.ts runs them). */
export const EXTRA_SUITES: readonly string[] = ["breakdown", "isolation", "scale"];
/** Extra suites that take minutes of their own and run only when named; both scopes by default. */
export const NAMED_ONLY_SUITES: readonly string[] = ["isolation", "scale"];

export const SUITES = ["substrate", "pingpong", "stream", ...EXTRA_SUITES] as const;
/**
 * What `myrixen bench` with no suite runs: the figures of the papers. The isolation and scale
 * experiments take minutes of their own and run when named (`myrixen bench isolation`).
 */
export const DEFAULT_SUITES: readonly string[] = SUITES.filter((s) => !NAMED_ONLY_SUITES.includes(s));

/** --scope values: one scope, or all (every scope each suite has). */
export const SCOPE_CHOICES = ["intra-host", "cross-host", "all"] as const;
/** Suites that can place their ranks on two hosts; the others measure one host only. */
export const CROSS_HOST_SUITES: readonly string[] = ["pingpong", "stream", "breakdown", ...NAMED_ONLY_SUITES];

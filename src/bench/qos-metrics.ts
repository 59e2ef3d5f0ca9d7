/**
 * How the HTML report names the ratio metrics of `myrixen bench isolation` and `bench scale`
 * (issue 16), kept apart from the benchmarks so the report imports no hosts.
 */
type RatioMetric = "latency_slowdown" | "latency_vs_solo" | "cap_accuracy" | "share_ratio" | "jain_index";

export const ISOLATION_NOUNS: Record<RatioMetric, string> = {
  latency_slowdown: "latency beside a stream ÷ beside a CPU-only neighbour",
  latency_vs_solo: "latency beside a stream ÷ solo",
  cap_accuracy: "measured rate ÷ cap",
  share_ratio: "measured share ÷ weighted share",
  jain_index: "Jain's fairness index",
};
export const ISOLATION_AXES: Record<RatioMetric, string> = {
  latency_slowdown: "slowdown (×, log scale)",
  latency_vs_solo: "slowdown (×, log scale)",
  cap_accuracy: "rate ÷ cap (log scale)",
  share_ratio: "share ÷ weighted share (log scale)",
  jain_index: "Jain's index (1 = fair; log scale)",
};
export const ISOLATION_BETTER: Record<RatioMetric, string> = {
  latency_slowdown: "1 is best (≤ 1.5 is the target)",
  latency_vs_solo: "1 is best",
  cap_accuracy: "1 is best (±5% is the target)",
  share_ratio: "1 is best (±10% is the target)",
  jain_index: "1 is best (≥ 0.95 is the target)",
};

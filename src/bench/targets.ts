/**
 * Across hosts, in words: bypass against raw-tcp (the wire) and against the bare four-thread
 * chain it is built on, as ratios of medians measured in the same run. The sizes and factors
 * are the project's goals (issues 5 and 17), kept for tools that check them (`met`); the
 * terminal states the ratios and what they mean, not pass/fail. Kept apart from mx.ts so
 * the report can use them without loading the benchmark machinery.
 */
import { type BenchRow, formatBytes, formatValue } from "./harness.js";

/** One target: bypass against raw-tcp at one size of one bench. */
export interface CrossHostTarget {
  bench: "pingpong" | "stream";
  bytes: number;
  /** "at most" for latency (lower is better), "at least" for bandwidth. */
  bound: "at most" | "at least";
  factor: number;
}

/** Issue 5: bypass 8 B latency ≤ 1.3× raw-tcp; bypass 1 MiB bandwidth ≥ 0.8× raw-tcp. */
export const CROSS_HOST_TARGETS: readonly CrossHostTarget[] = [
  { bench: "pingpong", bytes: 8, bound: "at most", factor: 1.3 },
  { bench: "stream", bytes: 1024 * 1024, bound: "at least", factor: 0.8 },
];

export interface TargetCheck {
  target: CrossHostTarget;
  /** The target in words: "bypass 8 B latency ≤ 1.3× raw-tcp". */
  text: string;
  /** bypass / raw-tcp (undefined when a row is missing). */
  ratio?: number;
  met?: boolean;
  bypass?: BenchRow;
  rawTcp?: BenchRow;
  /** The whole verdict as one sentence. */
  sentence: string;
}

/**
 * Every target whose bench has cross-host rows: the measured ratio and whether it is met, or
 * why it could not be checked (a size or a transport left out of the run).
 */
export function checkCrossHostTargets(rows: readonly BenchRow[]): TargetCheck[] {
  const out: TargetCheck[] = [];
  for (const t of CROSS_HOST_TARGETS) {
    const mine = rows.filter((r) => r.bench === t.bench && r.scope === "cross-host");
    if (mine.length === 0) continue;
    const noun = t.bench === "pingpong" ? "latency" : "bandwidth";
    const text = `bypass ${formatBytes(t.bytes)} ${noun} ${t.bound === "at most" ? "≤" : "≥"} ${t.factor}× raw-tcp`;
    const b = mine.find((r) => r.transport === "bypass" && r.bytes === t.bytes);
    const raw = mine.find((r) => r.transport === "raw-tcp" && r.bytes === t.bytes);
    if (!b || !raw || raw.median === 0) {
      const missing = [!b && "bypass", !raw && "raw-tcp"].filter(Boolean).join(" and ");
      out.push({
        target: t,
        text,
        sentence: `across hosts, bypass / raw-tcp, ${formatBytes(t.bytes)} ${noun}: not measured (no ${missing} row at ${formatBytes(t.bytes)}; include it in --sizes and --transports)`,
      });
      continue;
    }
    const ratio = b.median / raw.median;
    const met = t.bound === "at most" ? ratio <= t.factor : ratio >= t.factor;
    out.push({
      target: t,
      text,
      ratio,
      met,
      bypass: b,
      rawTcp: raw,
      sentence:
        `across hosts, bypass / raw-tcp, ${formatBytes(t.bytes)} ${noun}: ${ratio.toFixed(2)}× ` +
        `(bypass ${formatValue(b.metric, b.median)}, raw-tcp ${formatValue(raw.metric, raw.median)}; ` +
        `${b.runs === 1 ? "1 run" : `medians of ${b.runs} runs`}): what MX and its NIC threads add to the wire`,
    });
  }
  return out;
}

/** bypass against raw-tcp in words, one line per point (none when the run has no cross-host rows). */
export function crossHostVerdicts(rows: readonly BenchRow[]): string[] {
  return checkCrossHostTargets(rows).map((c) => c.sentence);
}

/** The sizes at which the chain sentence splits the cross-host gap: the targets' sizes. */
const CHAIN_SIZES = [8, 1024 * 1024];

/**
 * Where the cross-host cost comes from, in words, from the medians of one run: at 8 B and
 * 1 MiB (each bench that has bypass, raw-chain and raw-tcp rows there), how far bypass is
 * from the bare four-thread chain it is built on, how far the chain is from raw-tcp, and
 * which of the two factors is the larger.
 */
export function chainVerdicts(rows: readonly BenchRow[]): string[] {
  const out: string[] = [];
  for (const bench of ["pingpong", "stream"] as const) {
    for (const bytes of CHAIN_SIZES) {
      const at = (t: string) =>
        rows.find(
          (r) => r.bench === bench && r.scope === "cross-host" && r.bytes === bytes && r.transport === t,
        );
      const b = at("bypass");
      const chain = at("raw-chain");
      const raw = at("raw-tcp");
      if (!b || !chain || !raw || chain.median === 0 || raw.median === 0 || b.median === 0) continue;
      const latency = b.metric === "latency_us";
      const noun = latency ? "latency" : "bandwidth";
      const mx = b.median / chain.median;
      const hops = chain.median / raw.median;
      // How much worse each step makes it (latency: higher is worse; bandwidth: lower is).
      const mxCost = latency ? mx : 1 / mx;
      const hopCost = latency ? hops : 1 / hops;
      const who =
        hopCost >= mxCost
          ? `the thread hand-offs, not MX, set the cross-host ${noun} on this machine`
          : `MX's own work on top of the chain, more than the thread hand-offs, sets the cross-host ${noun} on this machine`;
      const v = (r: BenchRow) => formatValue(r.metric, r.median);
      // A latency under the floor needs saying why: the chain polls a fixed budget, the NIC
      // adapts. (A bandwidth above it would have other reasons, not measured: no claim made.)
      const beats =
        latency && mx < 1
          ? " (bypass beats the chain: the NIC's idle poll adapts, the chain's is fixed)"
          : "";
      out.push(
        `${formatBytes(bytes)} ${noun}: bypass is ${mx.toFixed(2)}× the bare chain ` +
          `(guest→NIC→TCP→NIC→guest; ${v(b)} vs ${v(chain)})${beats}; the chain is ${hops.toFixed(2)}× raw-tcp ` +
          `(${v(raw)}): ${who}`,
      );
    }
  }
  return out;
}

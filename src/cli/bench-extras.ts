/**
 * The parts of `myrixen bench` beyond the ping-pong and stream suites: the latency
 * breakdown suite, the isolation and scale suites (issue 16) and the HTML report, kept in one place so the bench command stays short.
 */
import {
  BREAKDOWN_SIZES,
  BREAKDOWN_TRANSPORTS,
  type BreakdownRow,
  benchBreakdown,
} from "../bench/breakdown.js";
import type { BenchProfile, BenchReport, BenchRow, Scope } from "../bench/harness.js";
import { benchIsolation, describeIsolation } from "../bench/isolation.js";
import type { Placement } from "../bench/mx.js";
import { benchScale, describeScale, SCALE_BYTES } from "../bench/scale.js";
import { EXTRA_SUITES, NAMED_ONLY_SUITES } from "../bench/transports.js";

type HtmlWriter = (file: string, report: BenchReport) => void;
let htmlWriter: HtmlWriter | undefined;

/** Set by the report module when this build has it (see cli/bench.ts). */
export function setHtmlWriter(w: HtmlWriter): void {
  htmlWriter = w;
}

export const BenchExtras = {
  suites: EXTRA_SUITES,
  /** Suites that measure across two hosts too (by default both scopes). */
  crossHostSuites: NAMED_ONLY_SUITES,
  transports(suite: string): string[] {
    if (suite === "isolation") return ["bypass"];
    if (suite === "scale") return ["native", "bypass"];
    return suite === "breakdown" ? [...BREAKDOWN_TRANSPORTS] : [];
  },
  /** Sizes a suite uses when the user gives none (breakdown across hosts with --quick: one eager, one rendezvous). */
  defaultSizes(suite: string, scope = "intra-host", quick = false): number[] | undefined {
    if (suite === "isolation") return [1 << 20];
    if (suite === "scale") return [SCALE_BYTES];
    if (suite !== "breakdown") return undefined;
    return scope === "cross-host" && quick ? [8, 65536] : [...BREAKDOWN_SIZES];
  },
  async run(
    suite: string,
    placement: Placement,
    profile: BenchProfile,
    o: { sizes: number[]; transports: string[]; scopes?: Scope[] },
    progress: (label: string) => void,
  ): Promise<BenchRow[]> {
    // Issue 16's suites have fixed sizes and paths (their rows say which) and start the
    // second host of their cross-host scope themselves.
    const host = "length" in placement ? placement[0] : placement;
    if (suite === "isolation") return benchIsolation(host, profile, progress, o.scopes);
    if (suite === "scale") return benchScale(host, profile, progress, o.scopes);
    if (suite !== "breakdown") throw new Error(`suite ${suite} is not available in this build`);
    return benchBreakdown(
      placement,
      profile,
      { sizes: o.sizes, transports: o.transports as never },
      progress,
    );
  },
  /** The breakdown as text: per path and size, each stage's share of the one-way time. */
  describe(rows: readonly BenchRow[]): string[] {
    const b = rows.filter(
      (r): r is BreakdownRow => r.bench === "breakdown" && typeof (r as BreakdownRow).stage === "string",
    );
    if (b.length === 0) return [];
    const out = [
      "latency breakdown (median µs per stage of a traced one-way message; hand-offs and wake-ups per message):",
    ];
    const keys = [...new Set(b.map((r) => `${r.scope}\u0000${r.transport}\u0000${r.bytes}`))];
    for (const k of keys) {
      const [scope, t, bytes] = k.split("\u0000");
      const stages = b.filter((r) => r.scope === scope && r.transport === t && String(r.bytes) === bytes);
      const total = stages.reduce((s, r) => s + r.median, 0);
      const counts =
        stages[0].handoffs !== undefined
          ? `  [${stages[0].handoffs} hand-offs, ${stages[0].wakeups ?? "?"} wake-ups per message]`
          : "";
      out.push(
        `  ${scope.padEnd(10)} ${t.padEnd(7)} ${String(bytes).padStart(8)} B  ${total.toFixed(2).padStart(8)} µs = ` +
          stages.map((r) => `${r.stage} ${r.median.toFixed(2)}`).join(" + ") +
          counts,
      );
    }
    return out;
  },
  /** The isolation and scale figures as text, with the targets. */
  describeQos(rows: readonly BenchRow[]): string[] {
    return [...describeIsolation(rows), ...describeScale(rows)];
  },
  /** Writes the HTML report; returns its path, or undefined if this build has none. */
  writeHtml(file: string, report: BenchReport): string | undefined {
    if (!htmlWriter) return undefined;
    htmlWriter(file, report);
    return file;
  },
};

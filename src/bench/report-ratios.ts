/**
 * The numbers the HTML report puts beside its figures: the ratios of medians between
 * transports measured in the same run (a compact table per plot), and the comparison with the
 * papers' and peers' figures (Xen2MX's split/bypass and bypass/native, Open MPI where the
 * run has `openmpi` rows). Only pairs present in the rows are shown: unknown transports simply
 * have no ratio.
 */
import {
  type BenchRow,
  formatBytes,
  formatValue,
  type Metric,
  NOISY_SPREAD,
  rowSpread,
  type Scope,
} from "./harness.js";
import { escapeHtml as esc } from "./report-style.js";
import type { BreakdownRow } from "./report-svg.js";

export interface RatioPair {
  a: string;
  b: string;
  /** Only rows of this scope (else any scope, compared within the same scope). */
  scope?: Scope;
  what: string;
}

/** The ratios the report states, each a/b of medians on the same (bench, scope, metric, size). */
export const RATIO_PAIRS: readonly RatioPair[] = [
  { a: "bypass", b: "native", what: "the cost of being a VM: a guest's bypass path against the native path" },
  { a: "split", b: "bypass", what: "the split-driver slow path against the bypass path" },
  { a: "bypass", b: "openmpi", what: "the bypass path against Open MPI on the same machine" },
  {
    a: "bypass",
    b: "openmpi-cico",
    scope: "intra-host",
    what: "the bypass path against Open MPI's copy-in/copy-out (its single copy off: as between isolated VMs)",
  },
  { a: "bypass", b: "raw-sab", what: "the bypass path against raw shared memory (the floor)" },
  { a: "postmessage", b: "bypass", what: "Node's postMessage against the bypass path" },
  { a: "bypass", b: "raw-tcp", scope: "cross-host", what: "across hosts: the bypass path against raw TCP" },
  {
    a: "bypass",
    b: "raw-chain",
    scope: "cross-host",
    what: "across hosts: the bypass path against the bare four-thread chain it is built on",
  },
  { a: "evtchn", b: "raw-sab", what: "event-channel notification against a raw shared-memory wake-up" },
];

export interface Ratio {
  pair: string;
  bench: string;
  scope: Scope;
  metric: Metric;
  bytes: number;
  a: BenchRow;
  b: BenchRow;
  value: number;
  /** A cell's runs spread more than NOISY_SPREAD: the ratio says little. */
  shaky: boolean;
}

/**
 * Every ratio of RATIO_PAIRS present in the rows (of one group or many), in a stable order.
 * A breakdown's rows are stages of a message: a stage is compared only with the same stage.
 */
export function computeRatios(rows: readonly BenchRow[]): Ratio[] {
  const key = (r: BenchRow, t: string) =>
    `${r.bench}\u0000${r.scope}\u0000${r.metric}\u0000${r.bytes}\u0000${(r as BreakdownRow).stage ?? ""}\u0000${t}`;
  const cells = new Map<string, BenchRow>();
  for (const r of rows) cells.set(key(r, r.transport), r);
  const out: Ratio[] = [];
  for (const p of RATIO_PAIRS) {
    const seen = new Set<string>();
    for (const a of rows) {
      if (a.transport !== p.a || (p.scope && a.scope !== p.scope)) continue;
      const b = cells.get(key(a, p.b));
      const k = key(a, "");
      if (!b || b.median === 0 || seen.has(k)) continue;
      seen.add(k);
      const shaky = [a, b].some((r) => r.runs > 1 && rowSpread(r) > NOISY_SPREAD);
      out.push({
        pair: `${p.a}/${p.b}`,
        bench: a.bench,
        scope: a.scope,
        metric: a.metric,
        bytes: a.bytes,
        a,
        b,
        value: a.median / b.median,
        shaky,
      });
    }
  }
  return out;
}

/** What a ratio above 1 means for a metric. */
function direction(metric: Metric): string {
  return metric === "latency_us" ? "> 1: first is slower" : "< 1: first is slower";
}

/**
 * The ratios of one plot's rows as a compact table (a row per size, a column per pair), or ""
 * when no pair was measured there.
 */
export function ratioTable(rows: readonly BenchRow[]): string {
  const ratios = computeRatios(rows);
  if (ratios.length === 0) return "";
  const pairs = [...new Set(ratios.map((r) => r.pair))];
  const sizes = [...new Set(ratios.map((r) => r.bytes))].sort((x, y) => x - y);
  const single = new Set(rows.map((r) => r.bytes)).size === 1;
  const out = [
    `<table class="ratio-table"><caption>a / b of medians; ${esc(direction(rows[0].metric))}</caption><thead><tr>`,
    single ? "" : '<th class="size">size</th>',
    ...pairs.map((p) => `<th>${p.split("/").map(esc).join("<br>/ ")}</th>`),
    "</tr></thead><tbody>",
  ];
  let anyShaky = false;
  for (const bytes of sizes) {
    out.push(`<tr>${single ? "" : `<td>${esc(formatBytes(bytes))}</td>`}`);
    for (const p of pairs) {
      const r = ratios.find((x) => x.pair === p && x.bytes === bytes);
      if (!r) {
        out.push(`<td class="n none">—</td>`);
        continue;
      }
      anyShaky ||= r.shaky;
      const tip = `${r.a.transport} ${formatValue(r.metric, r.a.median)} vs ${r.b.transport} ${formatValue(r.metric, r.b.median)}`;
      out.push(
        `<td class="n ratio${r.shaky ? " shaky" : ""}" data-pair="${esc(p)}" data-bench="${esc(r.bench)}" ` +
          `data-scope="${esc(r.scope)}" data-metric="${esc(r.metric)}" data-bytes="${bytes}" data-value="${r.value}" ` +
          `title="${esc(tip)}">${fmtRatio(r.value)}${r.shaky ? "?" : ""}</td>`,
      );
    }
    out.push("</tr>");
  }
  out.push("</tbody></table>");
  if (anyShaky)
    out.push(
      `<p class="shaky-note">? a cell whose runs spread more than ${NOISY_SPREAD}× (max/min): that ratio is noise on this machine.</p>`,
    );
  return `<div class="ratios-aside">${out.join("")}</div>`;
}

function fmtRatio(v: number): string {
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)}×`;
}

// ---- the papers and peers ---------------------------------------------------------------

/** A figure from the literature (or a peer measured on this kind of machine) to hold a ratio against. */
export interface Comparison {
  a: string;
  b: string;
  metric: Metric;
  /**
   * Which size of this run to compare: its smallest message of 1 B to SMALL_MAX_BYTES (8 B if
   * there is one), or its largest of LARGE_MIN_BYTES or more; none, no comparison.
   */
  at: "small" | "large";
  what: string;
  theirs: string;
  /** Their ratio a/b, when it is one number. */
  theirRatio?: number;
}

/** shared/references/specs-and-papers.md (Xen2MX) and machine-limits.md (Open MPI on 2 cores). */
export const COMPARISONS: readonly Comparison[] = [
  {
    a: "split",
    b: "bypass",
    metric: "latency_us",
    at: "small",
    what: "split / bypass, small-message latency",
    theirs:
      "Xen2MX (Nanos & Koziris, 2012): 44 µs round trip through the software bridge vs 14 µs with Xen2MX",
    theirRatio: 44 / 14,
  },
  {
    a: "bypass",
    b: "native",
    metric: "latency_us",
    at: "small",
    what: "bypass / native, small-message latency",
    theirs: "Xen2MX: 14 µs round trip vs 13 µs with the device attached directly",
    theirRatio: 14 / 13,
  },
  {
    a: "bypass",
    b: "native",
    metric: "bandwidth_MBps",
    at: "large",
    what: "bypass / native, bandwidth",
    theirs: "Xen2MX: 1159 MB/s vs 1192 MB/s direct on 10GbE",
    theirRatio: 1159 / 1192,
  },
  {
    a: "bypass",
    b: "openmpi",
    metric: "latency_us",
    at: "small",
    what: "bypass / Open MPI, small-message latency",
    theirs:
      "Open MPI 4.1 on this kind of 2-core machine: 0.135 µs one way over shared memory (busy-polling), 5.5 µs over TCP",
  },
  {
    a: "bypass",
    b: "openmpi",
    metric: "bandwidth_MBps",
    at: "large",
    what: "bypass / Open MPI, bandwidth",
    theirs: "Open MPI 4.1 on this kind of machine: 7.5 GB/s at 1 MiB over shared memory, 4.8 GB/s over TCP",
  },
];

/**
 * The sizes a small-message or a bandwidth figure may be held against: a run of `--sizes 64K,1M`
 * set its 64 KiB latency beside Open MPI's 0.135 µs "small-message latency".
 */
export const SMALL_MAX_BYTES = 1024;
export const LARGE_MIN_BYTES = 64 * 1024;

/** One comparison with this run's ratios for it, one per (bench, scope) that has the pair. */
interface ComparisonFinding {
  c: Comparison;
  ours: Ratio[];
}

/**
 * The comparisons this run's rows allow, each with the ratio it picks per (bench, scope). The
 * papers' figures are whole messages: a breakdown's stages are not compared with them.
 */
function comparisonFindings(rows: readonly BenchRow[]): ComparisonFinding[] {
  const ratios = computeRatios(rows.filter((r) => (r as BreakdownRow).stage === undefined));
  const out: ComparisonFinding[] = [];
  for (const c of COMPARISONS) {
    const mine = ratios.filter((r) => r.pair === `${c.a}/${c.b}` && r.metric === c.metric);
    const fits = mine.filter((r) =>
      c.at === "small" ? r.bytes > 0 && r.bytes <= SMALL_MAX_BYTES : r.bytes >= LARGE_MIN_BYTES,
    );
    const groups = [...new Set(fits.map((r) => `${r.bench}\u0000${r.scope}`))];
    if (groups.length === 0) continue;
    const ours = groups.map((g) => {
      const inGroup = fits.filter((r) => `${r.bench}\u0000${r.scope}` === g);
      return c.at === "small"
        ? (inGroup.find((x) => x.bytes === 8) ?? inGroup.sort((x, y) => x.bytes - y.bytes)[0])
        : inGroup.sort((x, y) => y.bytes - x.bytes)[0];
    });
    out.push({ c, ours });
  }
  return out;
}

function ratioText(r: Ratio): string {
  return (
    `${fmtRatio(r.value)}${r.shaky ? "?" : ""} (${r.bench}, ${r.scope}, ${formatBytes(r.bytes)}: ` +
    `${formatValue(r.metric, r.a.median)} vs ${formatValue(r.metric, r.b.median)})`
  );
}

/**
 * The same comparisons for the terminal, one line each: this run's ratio beside the paper's or
 * the peer's figure (no line when the run has neither pair).
 */
export function comparisonLines(rows: readonly BenchRow[]): string[] {
  const found = comparisonFindings(rows);
  if (found.length === 0) return [];
  return [
    "against the papers and peers (ratios of medians; compare ratios, not times: they measured hardware):",
    ...found.map(
      ({ c, ours }) =>
        `  ${c.what}: ${ours.map(ratioText).join("; ")}  [${c.theirRatio === undefined ? "" : `${fmtRatio(c.theirRatio)}: `}${c.theirs}]`,
    ),
  ];
}

/**
 * The comparisons this run's rows allow, one table row per (comparison, bench, scope), or ""
 * when none apply (no split, native or openmpi rows).
 */
export function comparisonSection(rows: readonly BenchRow[]): string {
  const lines: string[] = [];
  for (const { c, ours: picked } of comparisonFindings(rows)) {
    const ours = picked.map(
      (r) =>
        `<div class="comparison" data-pair="${esc(r.pair)}" data-bench="${esc(r.bench)}" data-scope="${esc(r.scope)}" ` +
        `data-bytes="${r.bytes}" data-value="${r.value}"${c.theirRatio === undefined ? "" : ` data-theirs="${c.theirRatio}"`}>` +
        `${esc(ratioText(r))}</div>`,
    );
    lines.push(
      `<tr><td>${esc(c.what)}<br><span class="hint">${esc(direction(c.metric))}</span></td>` +
        `<td class="n">${c.theirRatio === undefined ? "—" : fmtRatio(c.theirRatio)}</td>` +
        `<td>${esc(c.theirs)}</td><td class="ours">${ours.join("")}</td></tr>`,
    );
  }
  if (lines.length === 0) return "";
  return [
    `<section class="comparisons"><h2>Against the papers and peers</h2>`,
    "<p>The papers measured Myri-10G and 10GbE hardware; this run emulates the NIC, the driver domain and the wire with threads on this machine's cores, so compare ratios, not times.</p>",
    "<table><thead><tr><th>ratio</th><th>theirs</th><th>their figures</th><th>this run</th></tr></thead><tbody>",
    ...lines,
    "</tbody></table></section>",
  ].join("\n");
}

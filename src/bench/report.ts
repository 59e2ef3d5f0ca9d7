/**
 * HTML benchmark report: one self-contained file (inline CSS, inline SVG drawn at render time,
 * no external references) with the machine, the ratios against the same run's baselines (and,
 * with cross-host rows, the issue's cross-host targets met or not), one log–log plot per
 * (bench, scope, metric), the stacked latency breakdown and the full table.
 * Every plot carries its data in `data-` attributes and a JSON block so it can be checked.
 */

import { writeFileSync } from "node:fs";
import {
  type BenchReport,
  type BenchRow,
  formatBytes,
  formatValue,
  type MachineInfo,
  type Metric,
  prepareOutputFile,
  type Scope,
} from "./harness.js";
import { ISOLATION_AXES, ISOLATION_BETTER, ISOLATION_NOUNS } from "./qos-metrics.js";
import { checkCrossHostTargets } from "./targets.js";

export interface HtmlReportOptions {
  title?: string;
}

/** A row of the "breakdown" bench: one stage of a latency. */
export type BreakdownRow = BenchRow & { stage?: string };

// ---- escaping ---------------------------------------------------------------------------

/** Escape text for HTML content and double- or single-quoted attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const esc = escapeHtml;

/** JSON safe inside a `<script>` element: no `<`, `>` or `&` survive literally. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** A number in an SVG attribute: 2 decimals are plenty for coordinates. */
function n2(x: number): string {
  return String(Math.round(x * 100) / 100);
}

// ---- ratios -----------------------------------------------------------------------------

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
  { a: "bypass", b: "raw-sab", what: "the bypass path against raw shared memory (the floor)" },
  { a: "postmessage", b: "bypass", what: "Node's postMessage against the bypass path" },
  {
    a: "bypass",
    b: "raw-tcp",
    scope: "cross-host",
    what: "across hosts: the bypass path against raw TCP",
  },
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
}

function isBreakdown(r: BenchRow): boolean {
  return r.bench === "breakdown";
}

function groupKey(r: { bench: string; scope: string; metric: string }): string {
  return `${r.bench}\u0000${r.scope}\u0000${r.metric}`;
}

/** Every ratio of RATIO_PAIRS present in the rows (breakdown rows excluded), in a stable order. */
export function computeRatios(rows: readonly BenchRow[]): Ratio[] {
  const cells = new Map<string, BenchRow>();
  const order: string[] = [];
  for (const r of rows) {
    if (isBreakdown(r)) continue;
    const g = groupKey(r);
    if (!order.includes(g)) order.push(g);
    cells.set(`${g}\u0000${r.bytes}\u0000${r.transport}`, r);
  }
  const out: Ratio[] = [];
  for (const p of RATIO_PAIRS) {
    for (const g of order) {
      const sizes = [
        ...new Set(rows.filter((r) => !isBreakdown(r) && groupKey(r) === g).map((r) => r.bytes)),
      ];
      for (const bytes of sizes.sort((x, y) => x - y)) {
        const a = cells.get(`${g}\u0000${bytes}\u0000${p.a}`);
        const b = cells.get(`${g}\u0000${bytes}\u0000${p.b}`);
        if (!a || !b || b.median === 0) continue;
        if (p.scope && a.scope !== p.scope) continue;
        out.push({
          pair: `${p.a}/${p.b}`,
          bench: a.bench,
          scope: a.scope,
          metric: a.metric,
          bytes,
          a,
          b,
          value: a.median / b.median,
        });
      }
    }
  }
  return out;
}

const METRIC_NOUN: Record<Metric, string> = {
  latency_us: "latency",
  bandwidth_MBps: "bandwidth",
  ops_per_s: "operation rate",
  ...ISOLATION_NOUNS,
};
const METRIC_AXIS: Record<Metric, string> = {
  latency_us: "latency (µs, log scale)",
  bandwidth_MBps: "bandwidth (MB/s, log scale)",
  ops_per_s: "operations per second (ops/s, log scale)",
  ...ISOLATION_AXES,
};
const METRIC_BETTER: Record<Metric, string> = {
  latency_us: "lower is better",
  bandwidth_MBps: "higher is better",
  ops_per_s: "higher is better",
  ...ISOLATION_BETTER,
};

/** "At 8 B, bypass has 1.06× the latency of native (0.37 µs vs 0.35 µs): 6% higher." */
export function ratioSentence(r: Ratio): string {
  const [a, b] = r.pair.split("/");
  const pct = Math.round(Math.abs(r.value - 1) * 100);
  // Percentages read well below 2×; above, the ratio says it better than "1806% higher".
  const diff =
    r.value >= 2 ? "" : pct === 0 ? ": about the same" : `: ${pct}% ${r.value > 1 ? "higher" : "lower"}`;
  return (
    `At ${formatBytes(r.bytes)}, ${a} has ${r.value.toFixed(2)}× the ${METRIC_NOUN[r.metric]} of ${b} ` +
    `(${formatValue(r.metric, r.a.median)} vs ${formatValue(r.metric, r.b.median)})${diff}.`
  );
}

// ---- colours ----------------------------------------------------------------------------

const TRANSPORT_COLORS: Record<string, string> = {
  native: "#1f77b4",
  bypass: "#d62728",
  split: "#2ca02c",
  "raw-sab": "#7f7f7f",
  "raw-relay": "#bcbd22",
  postmessage: "#9467bd",
  "raw-tcp": "#8c564b",
  "raw-chain": "#c49c94",
  memcpy: "#17becf",
  evtchn: "#ff7f0e",
  ring: "#e377c2",
};
const FALLBACK = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"];
const STAGE_COLORS = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

function colorOf(transport: string): string {
  const known = TRANSPORT_COLORS[transport];
  if (known) return known;
  let h = 0;
  for (const ch of transport) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return FALLBACK[h % FALLBACK.length];
}

/** Raw baselines are drawn dashed, the system's own transports solid. */
function dashOf(transport: string): string {
  return transport.startsWith("raw-") || transport === "memcpy" ? ' stroke-dasharray="6 4"' : "";
}

// ---- scales -----------------------------------------------------------------------------

const W = 760;
const H = 420;
const M = { left: 78, right: 160, top: 34, bottom: 62 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

interface XScale {
  /** x pixel of a byte count (0 bytes: the left edge). */
  x(bytes: number): number;
  ticks: { bytes: number; label: string; major: boolean }[];
  hasZero: boolean;
}

/** log2 x axis over the positive sizes; 0 bytes sits one step left of the smallest size. */
function xScale(sizes: readonly number[]): XScale {
  const pos = sizes.filter((s) => s > 0);
  const hasZero = sizes.some((s) => s === 0);
  let lo = pos.length > 0 ? Math.floor(Math.log2(Math.min(...pos))) : 0;
  let hi = pos.length > 0 ? Math.ceil(Math.log2(Math.max(...pos))) : 1;
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  const left = hasZero ? lo - Math.max(1, Math.round((hi - lo) / 10)) : lo;
  const x = (bytes: number) => M.left + (((bytes > 0 ? Math.log2(bytes) : left) - left) / (hi - left)) * PW;
  const span = hi - lo;
  const step = [1, 2, 4, 5, 10].find((s) => span / s <= 8) ?? Math.ceil(span / 8);
  const ticks: XScale["ticks"] = [];
  if (hasZero) ticks.push({ bytes: 0, label: "0 B", major: true });
  for (let e = lo; e <= hi; e++) {
    ticks.push({ bytes: 2 ** e, label: formatBytes(2 ** e), major: e % step === 0 });
  }
  return { x, ticks, hasZero };
}

interface YScale {
  y(v: number): number;
  ticks: { v: number; label: string; major: boolean }[];
}

function formatTick(v: number): string {
  if (v >= 1e9) return `${v / 1e9}G`;
  if (v >= 1e6) return `${v / 1e6}M`;
  if (v >= 1e3) return `${v / 1e3}k`;
  return String(Number(v.toPrecision(3)));
}

/** log10 y axis over whole decades covering every positive value; values ≤ 0 sit on the floor. */
function yScale(values: readonly number[]): YScale {
  const pos = values.filter((v) => v > 0);
  let lo = pos.length > 0 ? Math.floor(Math.log10(Math.min(...pos))) : 0;
  let hi = pos.length > 0 ? Math.ceil(Math.log10(Math.max(...pos))) : 1;
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  const y = (v: number) => M.top + PH - (((v > 0 ? Math.log10(v) : lo) - lo) / (hi - lo)) * PH;
  const ticks: YScale["ticks"] = [];
  for (let e = lo; e <= hi; e++) {
    ticks.push({ v: 10 ** e, label: formatTick(10 ** e), major: true });
    if (hi - lo <= 3 && e < hi) {
      for (const m of [2, 5]) ticks.push({ v: m * 10 ** e, label: formatTick(m * 10 ** e), major: false });
    }
  }
  return { y, ticks };
}

// ---- line plots -------------------------------------------------------------------------

function orderedTransports(rows: readonly BenchRow[]): string[] {
  const seen: string[] = [];
  for (const r of rows) if (!seen.includes(r.transport)) seen.push(r.transport);
  return seen;
}

function axes(
  xs: XScale["ticks"],
  xOf: (b: number) => number,
  ys: YScale["ticks"],
  yOf: (v: number) => number,
): string {
  const out: string[] = [];
  const bottom = M.top + PH;
  out.push(`<g class="grid">`);
  for (const t of ys) {
    const y = n2(yOf(t.v));
    out.push(
      `<line x1="${M.left}" x2="${M.left + PW}" y1="${y}" y2="${y}" class="${t.major ? "g1" : "g2"}"/>`,
    );
  }
  for (const t of xs) {
    if (!t.major) continue;
    const x = n2(xOf(t.bytes));
    out.push(`<line x1="${x}" x2="${x}" y1="${M.top}" y2="${bottom}" class="g1"/>`);
  }
  out.push("</g>");
  out.push(`<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}" class="frame"/>`);
  out.push(`<g class="x-axis">`);
  for (const t of xs) {
    const x = n2(xOf(t.bytes));
    out.push(`<line x1="${x}" x2="${x}" y1="${bottom}" y2="${bottom + (t.major ? 6 : 3)}" class="tick"/>`);
    if (t.major) out.push(`<text x="${x}" y="${bottom + 20}" text-anchor="middle">${esc(t.label)}</text>`);
  }
  out.push("</g>");
  out.push(`<g class="y-axis">`);
  for (const t of ys) {
    const y = n2(yOf(t.v));
    out.push(`<line x1="${M.left - (t.major ? 6 : 3)}" x2="${M.left}" y1="${y}" y2="${y}" class="tick"/>`);
    const cls = t.major ? "" : ' class="minor"';
    out.push(`<text x="${M.left - 9}" y="${y}" dy="0.32em" text-anchor="end"${cls}>${esc(t.label)}</text>`);
  }
  out.push("</g>");
  return out.join("\n");
}

function legend(
  entries: { key: string; label: string; color: string; dash?: string; rect?: boolean }[],
): string {
  const x0 = M.left + PW + 16;
  const out = [`<g class="legend">`];
  entries.forEach((e, i) => {
    const y = M.top + 8 + i * 20;
    const swatch = e.rect
      ? `<rect x="${x0}" y="${y - 6}" width="22" height="12" fill="${e.color}"/>`
      : `<line x1="${x0}" x2="${x0 + 22}" y1="${y}" y2="${y}" stroke="${e.color}" stroke-width="2"${e.dash ?? ""}/>` +
        `<circle cx="${x0 + 11}" cy="${y}" r="3.5" fill="${e.color}"/>`;
    out.push(
      `<g class="legend-entry" data-key="${esc(e.key)}">${swatch}` +
        `<text x="${x0 + 28}" y="${y}" dy="0.32em">${esc(e.label)}</text></g>`,
    );
  });
  out.push("</g>");
  return out.join("\n");
}

function plotId(prefix: string, i: number): string {
  return `${prefix}-${i + 1}`;
}

function linePlot(rowsIn: readonly BenchRow[], index: number): string {
  let rows = rowsIn;
  const { bench, scope, metric } = rows[0];
  // bench scale plots against its `guests` field; everything else against message size.
  const byGuests = rows.every((r) => typeof (r as { guests?: unknown }).guests === "number");
  if (byGuests) rows = rows.map((r) => ({ ...r, bytes: (r as unknown as { guests: number }).guests }));
  const sizes = [...new Set(rows.map((r) => r.bytes))].sort((a, b) => a - b);
  const xs = xScale(sizes);
  const ys = yScale(rows.flatMap((r) => [r.min, r.median, r.max]));
  const transports = orderedTransports(rows);
  const title = `${bench}: ${METRIC_NOUN[metric]} vs ${byGuests ? "guests" : "message size"} (${scope})`;
  const id = plotId("plot", index);
  const svg: string[] = [
    `<svg class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-labelledby="${id}-t">`,
    `<title id="${id}-t">${esc(title)}</title>`,
    axes(xs.ticks, xs.x, ys.ticks, ys.y),
  ];
  if (xs.hasZero) {
    // An axis break between the 0-byte position and the first power of two.
    const bx = (xs.x(0) + xs.x(sizes.find((s) => s > 0) ?? 1)) / 2;
    const by = M.top + PH;
    svg.push(`<path class="axis-break" d="M${n2(bx - 6)},${by + 4} l6,-8 M${n2(bx)},${by + 4} l6,-8"/>`);
  }
  for (const t of transports) {
    const pts = rows.filter((r) => r.transport === t).sort((a, b) => a.bytes - b.bytes);
    const color = colorOf(t);
    const data = pts.map((r) => `${r.bytes}:${r.median}`).join(",");
    const coords = pts.map((r) => `${n2(xs.x(r.bytes))},${n2(ys.y(r.median))}`).join(" ");
    svg.push(`<g class="series" data-transport="${esc(t)}">`);
    for (const r of pts) {
      const x = n2(xs.x(r.bytes));
      const y1 = n2(ys.y(r.min));
      const y2 = n2(ys.y(r.max));
      svg.push(
        `<path class="whisker" data-bytes="${r.bytes}" data-min="${r.min}" data-max="${r.max}" ` +
          `d="M${x},${y1} V${y2} M${n2(xs.x(r.bytes) - 4)},${y1} h8 M${n2(xs.x(r.bytes) - 4)},${y2} h8" ` +
          `stroke="${color}"/>`,
      );
    }
    svg.push(
      `<polyline class="line" data-transport="${esc(t)}" data-points="${data}" points="${coords}" ` +
        `stroke="${color}"${dashOf(t)}/>`,
    );
    for (const r of pts) {
      const tip = `${t} ${formatBytes(r.bytes)}: ${formatValue(metric, r.median)} (min ${formatValue(metric, r.min)}, max ${formatValue(metric, r.max)}, ${r.runs} runs)`;
      svg.push(
        `<circle class="marker" cx="${n2(xs.x(r.bytes))}" cy="${n2(ys.y(r.median))}" r="3.5" fill="${color}">` +
          `<title>${esc(tip)}</title></circle>`,
      );
    }
    svg.push("</g>");
  }
  svg.push(
    legend(transports.map((t) => ({ key: t, label: t, color: colorOf(t), dash: dashOf(t) }))),
    `<text class="axis-label" x="${M.left + PW / 2}" y="${H - 14}" text-anchor="middle">${byGuests ? "guests (log₂ scale)" : `message size (bytes, log₂ scale${xs.hasZero ? "; 0 B at the left edge" : ""})`}</text>`,
    `<text class="axis-label" transform="translate(18 ${M.top + PH / 2}) rotate(-90)" text-anchor="middle">${esc(METRIC_AXIS[metric])}</text>`,
    `<text class="plot-title" x="${M.left}" y="${M.top - 12}">${esc(title)}</text>`,
    "</svg>",
  );
  return [
    `<figure class="plot" id="${id}" data-bench="${esc(bench)}" data-scope="${esc(scope)}" data-metric="${esc(metric)}">`,
    svg.join("\n"),
    `<figcaption>${esc(title)}. Markers: median of the runs; whiskers: min–max; dashed: raw baselines; ${esc(METRIC_BETTER[metric])}.</figcaption>`,
    `<script type="application/json" class="plot-data">${scriptJson(rows)}</script>`,
    "</figure>",
  ].join("\n");
}

// ---- breakdown --------------------------------------------------------------------------

function breakdownPlot(rows: readonly BreakdownRow[], index: number): string {
  const { scope, metric } = rows[0];
  const stages: string[] = [];
  for (const r of rows) {
    const s = r.stage ?? "(total)";
    if (!stages.includes(s)) stages.push(s);
  }
  const stageColor = (s: string) => STAGE_COLORS[stages.indexOf(s) % STAGE_COLORS.length];
  const transports = orderedTransports(rows);
  const sizes = [...new Set(rows.map((r) => r.bytes))].sort((a, b) => a - b);
  const bars: { transport: string; bytes: number; segs: BreakdownRow[] }[] = [];
  for (const bytes of sizes) {
    for (const t of transports) {
      const segs = rows.filter((r) => r.transport === t && r.bytes === bytes);
      segs.sort((a, b) => stages.indexOf(a.stage ?? "(total)") - stages.indexOf(b.stage ?? "(total)"));
      if (segs.length > 0) bars.push({ transport: t, bytes, segs });
    }
  }
  const total = Math.max(...bars.map((b) => b.segs.reduce((s, r) => s + Math.max(0, r.median), 0)), 0);
  // Linear y axis with a "nice" top.
  const pow = 10 ** Math.floor(Math.log10(total > 0 ? total : 1));
  const top = ([1, 2, 2.5, 5, 10].find((m) => m * pow >= total) ?? 10) * pow;
  const y = (v: number) => M.top + PH - (v / top) * PH;
  const slot = PW / Math.max(bars.length, 1);
  const bw = Math.min(56, slot * 0.6);
  const title = `Latency breakdown by stage (${scope})`;
  const id = plotId("breakdown", index);
  const svg: string[] = [
    `<svg class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-labelledby="${id}-t">`,
    `<title id="${id}-t">${esc(title)}</title>`,
    `<g class="grid">`,
  ];
  const yTicks: number[] = [];
  for (let i = 0; i <= 5; i++) yTicks.push((top * i) / 5);
  for (const v of yTicks) {
    svg.push(`<line x1="${M.left}" x2="${M.left + PW}" y1="${n2(y(v))}" y2="${n2(y(v))}" class="g1"/>`);
  }
  svg.push("</g>", `<rect x="${M.left}" y="${M.top}" width="${PW}" height="${PH}" class="frame"/>`);
  svg.push(`<g class="y-axis">`);
  for (const v of yTicks) {
    svg.push(
      `<line x1="${M.left - 6}" x2="${M.left}" y1="${n2(y(v))}" y2="${n2(y(v))}" class="tick"/>`,
      `<text x="${M.left - 9}" y="${n2(y(v))}" dy="0.32em" text-anchor="end">${esc(formatTick(Number(v.toPrecision(6))))}</text>`,
    );
  }
  svg.push("</g>");
  bars.forEach((b, i) => {
    const cx = M.left + slot * (i + 0.5);
    const x = n2(cx - bw / 2);
    let acc = 0;
    const sum = b.segs.reduce((s, r) => s + Math.max(0, r.median), 0);
    svg.push(
      `<g class="bar" data-transport="${esc(b.transport)}" data-bytes="${b.bytes}" data-total="${sum}">`,
    );
    for (const r of b.segs) {
      const v = Math.max(0, r.median);
      const stage = r.stage ?? "(total)";
      const tip = `${b.transport} ${formatBytes(b.bytes)}, ${stage}: ${formatValue(metric, r.median)}`;
      svg.push(
        `<rect class="segment" data-stage="${esc(stage)}" data-value="${r.median}" x="${x}" ` +
          `y="${n2(y(acc + v))}" width="${n2(bw)}" height="${n2(y(acc) - y(acc + v))}" fill="${stageColor(stage)}">` +
          `<title>${esc(tip)}</title></rect>`,
      );
      acc += v;
    }
    svg.push(
      `<text class="bar-total" x="${n2(cx)}" y="${n2(y(acc) - 5)}" text-anchor="middle">${esc(formatValue(metric, sum))}</text>`,
      `<text class="bar-label" x="${n2(cx)}" y="${M.top + PH + 16}" text-anchor="middle">${esc(b.transport)}</text>`,
      `<text class="bar-label" x="${n2(cx)}" y="${M.top + PH + 30}" text-anchor="middle">${esc(formatBytes(b.bytes))}</text>`,
      "</g>",
    );
  });
  svg.push(
    legend([...stages].reverse().map((s) => ({ key: s, label: s, color: stageColor(s), rect: true }))),
    `<text class="axis-label" x="${M.left + PW / 2}" y="${H - 10}" text-anchor="middle">transport and message size</text>`,
    `<text class="axis-label" transform="translate(18 ${M.top + PH / 2}) rotate(-90)" text-anchor="middle">${esc(METRIC_NOUN[metric])} (${metric === "latency_us" ? "µs" : esc(metric)}, linear)</text>`,
    `<text class="plot-title" x="${M.left}" y="${M.top - 12}">${esc(title)}</text>`,
    "</svg>",
  );
  return [
    `<figure class="breakdown" id="${id}" data-scope="${esc(scope)}" data-metric="${esc(metric)}">`,
    svg.join("\n"),
    `<figcaption>${esc(title)}: one stacked bar per transport and size, one segment per stage (median of the runs), bottom to top in the order the stages first appear.</figcaption>`,
    `<script type="application/json" class="breakdown-data">${scriptJson(rows)}</script>`,
    "</figure>",
  ].join("\n");
}

// ---- sections ---------------------------------------------------------------------------

function machineSection(m: MachineInfo): string {
  const gib = (m.totalMemBytes / 2 ** 30).toFixed(1);
  const load = (l: readonly number[] | undefined) => (l ? l.join(" / ") : "—");
  const items: [string, string][] = [
    ["CPU", `${m.cpus.count} × ${m.cpus.model}`],
    ["memory", `${gib} GiB`],
    ["Node.js", `${m.node} (V8 ${m.v8})`],
    ["kernel", `${m.platform}/${m.arch} ${m.release}`],
    ["host", m.hostname],
    ["load at start (1/5/15 min)", load(m.loadavgStart)],
    ["load at end (1/5/15 min)", load(m.loadavgEnd)],
    ["date", m.date],
  ];
  if (m.maxSpread !== undefined) items.push(["largest max/min spread", `${m.maxSpread}×`]);
  const banner = m.noisy
    ? `<div class="noisy-banner" role="alert"><strong>Noisy machine:</strong> ${esc(m.noiseReason ?? "unknown reason")}. Absolute numbers are unreliable; compare the ratios only (each is measured in the same run as its baseline).</div>\n`
    : "";
  return (
    `${banner}<section class="machine"><h2>Machine</h2><dl>` +
    items.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("") +
    "</dl></section>"
  );
}

function ratioSection(rows: readonly BenchRow[]): string {
  const ratios = computeRatios(rows);
  const out = [`<section class="ratios"><h2>Ratios</h2>`];
  if (ratios.length === 0) {
    out.push(
      "<p>No pair of transports measured at the same size in this report.</p>",
      ...targetList(rows),
      "</section>",
    );
    return out.join("\n");
  }
  out.push(
    "<p>Each ratio divides two medians of the same bench, scope and size, measured in the same run.</p>",
  );
  for (const p of RATIO_PAIRS) {
    const name = `${p.a}/${p.b}`;
    const mine = ratios.filter((r) => r.pair === name);
    if (mine.length === 0) continue;
    out.push(`<h3>${esc(name)}: ${esc(p.what)}</h3>`, "<ul>");
    for (const r of mine) {
      out.push(
        `<li class="ratio" data-pair="${esc(name)}" data-bench="${esc(r.bench)}" data-scope="${esc(r.scope)}" ` +
          `data-metric="${esc(r.metric)}" data-bytes="${r.bytes}" data-value="${r.value}">` +
          `<b>${esc(r.bench)}</b> (${esc(r.scope)}, ${esc(METRIC_NOUN[r.metric])}): ${esc(ratioSentence(r))} ` +
          `<span class="num">${esc(name)} = ${r.value.toFixed(2)}×</span></li>`,
      );
    }
    out.push("</ul>");
  }
  out.push(...targetList(rows), "</section>");
  return out.join("\n");
}

/** The cross-host targets checked on this report's rows (nothing without cross-host rows). */
function targetList(rows: readonly BenchRow[]): string[] {
  const checks = checkCrossHostTargets(rows);
  if (checks.length === 0) return [];
  const out = ["<h3>Cross-host targets</h3>", "<ul>"];
  for (const c of checks) {
    const state = c.met === undefined ? "unchecked" : c.met ? "met" : "not-met";
    out.push(
      `<li class="target" data-bench="${esc(c.target.bench)}" data-bytes="${c.target.bytes}" data-state="${state}"` +
        `${c.ratio === undefined ? "" : ` data-value="${c.ratio}"`}>${esc(c.sentence)}</li>`,
    );
  }
  out.push("</ul>");
  return out;
}

function tableSection(rows: readonly BreakdownRow[]): string {
  const hasStage = rows.some((r) => r.stage !== undefined);
  const head = ["bench", "transport", "scope", ...(hasStage ? ["stage"] : []), "size", "bytes", "metric"];
  const out = [
    `<section class="rows"><h2>All rows (${rows.length})</h2><table><thead><tr>`,
    [...head, "median", "min", "max", "runs"].map((h) => `<th>${esc(h)}</th>`).join(""),
    "</tr></thead><tbody>",
  ];
  for (const r of rows) {
    const cells = [r.bench, r.transport, r.scope, ...(hasStage ? [r.stage ?? ""] : [])];
    out.push(
      "<tr>" +
        cells.map((c) => `<td>${esc(c)}</td>`).join("") +
        `<td>${esc(formatBytes(r.bytes))}</td><td class="n">${r.bytes}</td><td>${esc(r.metric)}</td>` +
        [r.median, r.min, r.max].map((v) => `<td class="n">${esc(formatValue(r.metric, v))}</td>`).join("") +
        `<td class="n">${r.runs}</td></tr>`,
    );
  }
  out.push("</tbody></table></section>");
  return out.join("\n");
}

const CSS = `
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1000px; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-bottom: 4px; }
.noisy-banner { background: #fff3cd; border: 2px solid #e0a800; color: #5c4400; padding: 10px 14px; border-radius: 6px; margin: 12px 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; } dt { color: #666; } dd { margin: 0; }
.ratio .num { white-space: nowrap; font-variant-numeric: tabular-nums; color: #555; margin-left: 6px; }
figure { margin: 20px 0; } figcaption { color: #555; font-size: 13px; }
svg.chart { max-width: 100%; height: auto; font: 12px system-ui, sans-serif; background: #fff; }
svg .frame { fill: none; stroke: #444; } svg .tick { stroke: #444; }
svg .g1 { stroke: #e3e3e3; } svg .g2 { stroke: #f2f2f2; } svg .minor { fill: #888; font-size: 10px; }
svg .line { fill: none; stroke-width: 2; } svg .whisker { fill: none; stroke-width: 1.2; opacity: 0.7; }
svg .axis-label { font-size: 13px; fill: #333; } svg .plot-title { font-size: 14px; font-weight: 600; }
svg .axis-break { stroke: #444; fill: none; } svg .bar-total { font-size: 11px; fill: #333; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
`;

/** Render the whole report as one self-contained HTML document. */
export function renderHtmlReport(report: BenchReport, opts: HtmlReportOptions = {}): string {
  const rows = report.rows as readonly BreakdownRow[];
  const title = opts.title ?? "MyriXen benchmark report";
  const groups = new Map<string, BenchRow[]>();
  const breakdowns = new Map<string, BreakdownRow[]>();
  for (const r of rows) {
    const target = isBreakdown(r) ? breakdowns : groups;
    const k = isBreakdown(r) ? `${r.scope}\u0000${r.metric}` : groupKey(r);
    let list = target.get(k);
    if (!list) target.set(k, (list = []));
    list.push(r);
  }
  const plots = [...groups.values()].map((g, i) => linePlot(g, i));
  const bars = [...breakdowns.values()].map((g, i) => breakdownPlot(g, i));
  return [
    "<!DOCTYPE html>",
    `<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">`,
    `<title>${esc(title)}</title><style>${CSS}</style></head><body>`,
    `<h1>${esc(title)}</h1>`,
    `<p class="summary">${rows.length} rows, ${plots.length} plots${bars.length > 0 ? `, ${bars.length} latency breakdown${bars.length > 1 ? "s" : ""}` : ""}.</p>`,
    machineSection(report.machine),
    ratioSection(rows),
    `<section class="plots"><h2>Plots</h2>`,
    plots.length > 0 ? plots.join("\n") : "<p>No rows to plot.</p>",
    "</section>",
    bars.length > 0
      ? `<section class="breakdowns"><h2>Latency breakdown</h2>\n${bars.join("\n")}\n</section>`
      : "",
    tableSection(rows),
    "</body></html>",
    "",
  ].join("\n");
}

/** Write the HTML report to `file`, creating its directory. */
export function writeHtmlReport(file: string, report: BenchReport, opts: HtmlReportOptions = {}): void {
  const path = prepareOutputFile(file, "HTML report");
  const html = renderHtmlReport(report, opts);
  try {
    writeFileSync(path, html);
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new Error(`cannot write HTML report to ${file}: ${reason}`, { cause: e });
  }
}

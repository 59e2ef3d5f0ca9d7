/**
 * The HTML report's figures, drawn as inline SVG at render time: log–log line plots of a metric
 * against message size (one series per transport, each with its own colour, marker and dash),
 * bar charts for results measured at one size (NAS kernels, the substrate), and the stacked
 * latency breakdown. Each figure carries its rows in `data-` attributes and a JSON block so a
 * test can check what was drawn. The legend's width follows its longest label (never clipped).
 */
import { type BenchRow, formatBytes, formatValue, type Metric } from "./harness.js";
import { ISOLATION_AXES, ISOLATION_BETTER, ISOLATION_NOUNS } from "./qos-metrics.js";
import {
  escapeHtml as esc,
  markerSvg,
  n2,
  type SeriesStyle,
  STAGE_COLORS,
  scriptJson,
  styleOf,
  textWidth,
} from "./report-style.js";

/** A row of the "breakdown" bench: one stage of a latency. */
export type BreakdownRow = BenchRow & { stage?: string; handoffs?: number; wakeups?: number };

export const METRIC_NOUN: Record<Metric, string> = {
  latency_us: "latency",
  bandwidth_MBps: "bandwidth",
  ops_per_s: "operation rate",
  ...ISOLATION_NOUNS,
};
const METRIC_AXIS: Record<Metric, string> = {
  latency_us: "latency (µs, log scale)",
  bandwidth_MBps: "bandwidth (MB/s, log scale)",
  ops_per_s: "operations per second (log scale)",
  ...ISOLATION_AXES,
};
const METRIC_UNIT: Record<Metric, string> = {
  latency_us: "µs",
  bandwidth_MBps: "MB/s",
  ops_per_s: "ops/s",
  latency_slowdown: "×",
  latency_vs_solo: "×",
  cap_accuracy: "×",
  share_ratio: "×",
  jain_index: "index",
};
export const METRIC_BETTER: Record<Metric, string> = {
  latency_us: "lower is better",
  bandwidth_MBps: "higher is better",
  ops_per_s: "higher is better",
  ...ISOLATION_BETTER,
};

// ---- geometry ---------------------------------------------------------------------------

/** A plot's frame: margins around a plot area of pw × ph, and the whole SVG's size. */
interface Frame {
  left: number;
  top: number;
  pw: number;
  ph: number;
  w: number;
  h: number;
}

const PLOT_W = 470;
const PLOT_H = 300;

/** A frame whose right margin holds the legend's longest label whole. */
function frameFor(labels: readonly string[], legendExtra = 0): Frame {
  const legendW = 16 + 34 + Math.max(40, ...labels.map((l) => textWidth(l))) + 12 + legendExtra;
  const left = 72;
  const top = 34;
  const bottom = 58;
  const rowsH = 14 + labels.length * 20;
  const ph = Math.max(PLOT_H, rowsH);
  return { left, top, pw: PLOT_W, ph, w: left + PLOT_W + legendW, h: top + ph + bottom };
}

// ---- scales -----------------------------------------------------------------------------

interface XScale {
  x(bytes: number): number;
  ticks: { bytes: number; label: string; major: boolean }[];
  hasZero: boolean;
}

/** log2 x axis over the positive sizes; 0 bytes sits one step left of the smallest size. */
function xScale(f: Frame, sizes: readonly number[], label: (x: number) => string = formatBytes): XScale {
  const pos = sizes.filter((s) => s > 0);
  const hasZero = sizes.some((s) => s === 0);
  let lo = pos.length > 0 ? Math.floor(Math.log2(Math.min(...pos))) : 0;
  let hi = pos.length > 0 ? Math.ceil(Math.log2(Math.max(...pos))) : 1;
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  const left = hasZero ? lo - Math.max(1, Math.round((hi - lo) / 10)) : lo;
  const x = (bytes: number) => f.left + (((bytes > 0 ? Math.log2(bytes) : left) - left) / (hi - left)) * f.pw;
  const span = hi - lo;
  const step = [1, 2, 4, 5, 10].find((s) => span / s <= 7) ?? Math.ceil(span / 7);
  const ticks: XScale["ticks"] = [];
  if (hasZero) ticks.push({ bytes: 0, label: "0 B", major: true });
  for (let e = lo; e <= hi; e++)
    ticks.push({ bytes: 2 ** e, label: label(2 ** e), major: (e - lo) % step === 0 });
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
function yScale(f: Frame, values: readonly number[]): YScale {
  const pos = values.filter((v) => v > 0);
  let lo = pos.length > 0 ? Math.floor(Math.log10(Math.min(...pos))) : 0;
  let hi = pos.length > 0 ? Math.ceil(Math.log10(Math.max(...pos))) : 1;
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  const y = (v: number) => f.top + f.ph - (((v > 0 ? Math.log10(v) : lo) - lo) / (hi - lo)) * f.ph;
  const ticks: YScale["ticks"] = [];
  for (let e = lo; e <= hi; e++) {
    ticks.push({ v: 10 ** e, label: formatTick(10 ** e), major: true });
    if (hi - lo <= 3 && e < hi) {
      for (const m of [2, 5]) ticks.push({ v: m * 10 ** e, label: formatTick(m * 10 ** e), major: false });
    }
  }
  return { y, ticks };
}

/** A "nice" top for a linear axis from 0. */
function niceTop(max: number): number {
  const pow = 10 ** Math.floor(Math.log10(max > 0 ? max : 1));
  return ([1, 2, 2.5, 5, 10].find((m) => m * pow >= max) ?? 10) * pow;
}

// ---- parts ------------------------------------------------------------------------------

function orderedTransports(rows: readonly BenchRow[]): string[] {
  const seen: string[] = [];
  for (const r of rows) if (!seen.includes(r.transport)) seen.push(r.transport);
  return seen;
}

function axes(f: Frame, xs: XScale, ys: YScale): string {
  const out: string[] = [];
  const bottom = f.top + f.ph;
  out.push(`<g class="grid">`);
  for (const t of ys.ticks) {
    const y = n2(ys.y(t.v));
    out.push(
      `<line x1="${f.left}" x2="${f.left + f.pw}" y1="${y}" y2="${y}" class="${t.major ? "g1" : "g2"}"/>`,
    );
  }
  for (const t of xs.ticks) {
    if (!t.major) continue;
    const x = n2(xs.x(t.bytes));
    out.push(`<line x1="${x}" x2="${x}" y1="${f.top}" y2="${bottom}" class="g1"/>`);
  }
  out.push("</g>", `<rect x="${f.left}" y="${f.top}" width="${f.pw}" height="${f.ph}" class="frame"/>`);
  out.push(`<g class="x-axis">`);
  for (const t of xs.ticks) {
    const x = n2(xs.x(t.bytes));
    out.push(`<line x1="${x}" x2="${x}" y1="${bottom}" y2="${bottom + (t.major ? 6 : 3)}" class="tick"/>`);
    if (t.major) out.push(`<text x="${x}" y="${bottom + 20}" text-anchor="middle">${esc(t.label)}</text>`);
  }
  out.push("</g>", `<g class="y-axis">`);
  for (const t of ys.ticks) {
    const y = n2(ys.y(t.v));
    out.push(`<line x1="${f.left - (t.major ? 6 : 3)}" x2="${f.left}" y1="${y}" y2="${y}" class="tick"/>`);
    const cls = t.major ? "" : ' class="minor"';
    out.push(`<text x="${f.left - 9}" y="${y}" dy="0.32em" text-anchor="end"${cls}>${esc(t.label)}</text>`);
  }
  out.push("</g>");
  return out.join("\n");
}

interface LegendEntry {
  key: string;
  label: string;
  style?: SeriesStyle;
  /** A filled box instead of a line and marker (stacked bars). */
  box?: string;
}

function legend(f: Frame, entries: readonly LegendEntry[]): string {
  const x0 = f.left + f.pw + 16;
  const out = [`<g class="legend">`];
  entries.forEach((e, i) => {
    const y = f.top + 10 + i * 20;
    const swatch = e.box
      ? `<rect x="${x0}" y="${y - 6}" width="26" height="12" fill="${e.box}"/>`
      : `<line x1="${x0}" x2="${x0 + 28}" y1="${y}" y2="${y}" stroke="${e.style!.color}" stroke-width="2"` +
        `${e.style!.dash ? ` stroke-dasharray="${e.style!.dash}"` : ""}/>${markerSvg(e.style!, x0 + 14, y, 4)}`;
    out.push(
      `<g class="legend-entry" data-key="${esc(e.key)}">${swatch}` +
        `<text x="${x0 + 34}" y="${y}" dy="0.32em">${esc(e.label)}</text></g>`,
    );
  });
  out.push("</g>");
  return out.join("\n");
}

function titleOf(f: Frame, title: string): string {
  return `<text class="plot-title" x="${f.left}" y="${f.top - 12}">${esc(title)}</text>`;
}

function svgOpen(f: Frame, id: string, title: string): string {
  return (
    `<svg class="chart" viewBox="0 0 ${f.w} ${f.h}" width="${f.w}" height="${f.h}" role="img" aria-labelledby="${id}-t">` +
    `<title id="${id}-t">${esc(title)}</title>`
  );
}

// ---- line plots -------------------------------------------------------------------------

/** A metric against message size, one series per transport; `aside` goes beside the plot. */
export function linePlot(rowsIn: readonly BenchRow[], id: string, aside = ""): string {
  const { bench, scope, metric } = rowsIn[0];
  // bench scale plots against its `guests` field; everything else against message size.
  const byGuests = rowsIn.every((r) => typeof (r as { guests?: unknown }).guests === "number");
  const rows = byGuests
    ? rowsIn.map((r) => ({ ...r, bytes: (r as unknown as { guests: number }).guests }))
    : rowsIn;
  const xLabel = byGuests ? (g: number) => `${g} guest${g === 1 ? "" : "s"}` : formatBytes;
  const transports = orderedTransports(rows);
  const f = frameFor(transports);
  const sizes = [...new Set(rows.map((r) => r.bytes))].sort((a, b) => a - b);
  const xs = xScale(f, sizes, byGuests ? (g) => String(g) : formatBytes);
  const ys = yScale(
    f,
    rows.flatMap((r) => [r.min, r.median, r.max]),
  );
  const title = `${bench}: ${METRIC_NOUN[metric]} vs ${byGuests ? "guests" : "message size"} (${scope})`;
  const svg: string[] = [svgOpen(f, id, title), axes(f, xs, ys)];
  if (xs.hasZero) {
    // An axis break between the 0-byte position and the first power of two.
    const bx = (xs.x(0) + xs.x(sizes.find((s) => s > 0) ?? 1)) / 2;
    const by = f.top + f.ph;
    svg.push(`<path class="axis-break" d="M${n2(bx - 6)},${by + 4} l6,-8 M${n2(bx)},${by + 4} l6,-8"/>`);
  }
  for (const t of transports) {
    const st = styleOf(t);
    const pts = rows.filter((r) => r.transport === t).sort((a, b) => a.bytes - b.bytes);
    const data = pts.map((r) => `${r.bytes}:${r.median}`).join(",");
    const coords = pts.map((r) => `${n2(xs.x(r.bytes))},${n2(ys.y(r.median))}`).join(" ");
    svg.push(`<g class="series" data-transport="${esc(t)}">`);
    for (const r of pts) {
      const x = xs.x(r.bytes);
      const y1 = n2(ys.y(r.min));
      const y2 = n2(ys.y(r.max));
      svg.push(
        `<path class="whisker" data-bytes="${r.bytes}" data-min="${r.min}" data-max="${r.max}" ` +
          `d="M${n2(x)},${y1} V${y2} M${n2(x - 4)},${y1} h8 M${n2(x - 4)},${y2} h8" stroke="${st.color}"/>`,
      );
    }
    svg.push(
      `<polyline class="line" data-transport="${esc(t)}" data-points="${data}" points="${coords}" ` +
        `stroke="${st.color}"${st.dash ? ` stroke-dasharray="${st.dash}"` : ""}/>`,
    );
    for (const r of pts) {
      const tip = `${t} ${xLabel(r.bytes)}: ${formatValue(metric, r.median)} (min ${formatValue(metric, r.min)}, max ${formatValue(metric, r.max)}, ${r.runs} run${r.runs === 1 ? "" : "s"})`;
      svg.push(markerSvg(st, xs.x(r.bytes), ys.y(r.median), 4, "", `<title>${esc(tip)}</title>`));
    }
    svg.push("</g>");
  }
  svg.push(
    legend(
      f,
      transports.map((t) => ({ key: t, label: t, style: styleOf(t) })),
    ),
    `<text class="axis-label" x="${f.left + f.pw / 2}" y="${f.h - 14}" text-anchor="middle">${byGuests ? "guests (log₂ scale)" : `message size (bytes, log₂ scale${xs.hasZero ? "; 0 B at the left edge" : ""})`}</text>`,
    `<text class="axis-label" transform="translate(18 ${f.top + f.ph / 2}) rotate(-90)" text-anchor="middle">${esc(METRIC_AXIS[metric])}</text>`,
    titleOf(f, title),
    "</svg>",
  );
  return [
    `<figure class="plot" id="${id}" data-bench="${esc(bench)}" data-scope="${esc(scope)}" data-metric="${esc(metric)}">`,
    `<div class="plot-row"><div class="plot-svg">${svg.join("\n")}</div>${aside}</div>`,
    `<figcaption>${esc(title)}. Markers: median of the runs; whiskers: min–max; ${esc(METRIC_BETTER[metric])}.</figcaption>`,
    `<script type="application/json" class="plot-data">${scriptJson(rows)}</script>`,
    "</figure>",
  ].join("\n");
}

// ---- bar charts (one size) --------------------------------------------------------------

/** Results measured at one size (a NAS kernel, the substrate): one horizontal bar per transport. */
export function barPlot(rows: readonly BenchRow[], id: string, aside = ""): string {
  const { bench, scope, metric, bytes } = rows[0];
  const transports = orderedTransports(rows);
  const labelW = Math.max(60, ...transports.map((t) => textWidth(t))) + 16;
  const barH = 22;
  const gap = 12;
  const f: Frame = {
    left: labelW,
    top: 34,
    pw: 420,
    ph: transports.length * (barH + gap) + gap,
    w: labelW + 420 + 110,
    h: 0,
  };
  f.h = f.top + f.ph + 50;
  const top = niceTop(Math.max(...rows.map((r) => r.max), 0));
  const x = (v: number) => f.left + (Math.max(0, v) / top) * f.pw;
  const at = bytes > 0 ? ` at ${formatBytes(bytes)}` : "";
  const title = `${bench}: ${METRIC_NOUN[metric]}${at} (${scope})`;
  const svg: string[] = [svgOpen(f, id, title), `<g class="grid">`];
  const ticks = [0, 1, 2, 3, 4, 5].map((i) => (top * i) / 5);
  for (const v of ticks)
    svg.push(`<line x1="${n2(x(v))}" x2="${n2(x(v))}" y1="${f.top}" y2="${f.top + f.ph}" class="g1"/>`);
  svg.push("</g>", `<rect x="${f.left}" y="${f.top}" width="${f.pw}" height="${f.ph}" class="frame"/>`);
  svg.push(`<g class="x-axis">`);
  for (const v of ticks)
    svg.push(
      `<text x="${n2(x(v))}" y="${f.top + f.ph + 18}" text-anchor="middle">${esc(formatTick(Number(v.toPrecision(6))))}</text>`,
    );
  svg.push("</g>");
  transports.forEach((t, i) => {
    const r = rows.find((row) => row.transport === t)!;
    const st = styleOf(t);
    const y = f.top + gap + i * (barH + gap);
    const tip = `${t}: ${formatValue(metric, r.median)} (min ${formatValue(metric, r.min)}, max ${formatValue(metric, r.max)}, ${r.runs} run${r.runs === 1 ? "" : "s"})`;
    svg.push(
      `<g class="bar" data-transport="${esc(t)}" data-value="${r.median}">`,
      `<rect class="bar-fill" x="${f.left}" y="${y}" width="${n2(Math.max(1, x(r.median) - f.left))}" height="${barH}" fill="${st.color}" fill-opacity="0.8"><title>${esc(tip)}</title></rect>`,
      `<path class="whisker" d="M${n2(x(r.min))},${y + barH / 2} H${n2(x(r.max))} M${n2(x(r.min))},${y + 5} v${barH - 10} M${n2(x(r.max))},${y + 5} v${barH - 10}" stroke="#222"/>`,
      `<text class="bar-label" x="${f.left - 8}" y="${y + barH / 2}" dy="0.32em" text-anchor="end">${esc(t)}</text>`,
      `<text class="bar-total" x="${n2(Math.max(x(r.median), x(r.max)) + 6)}" y="${y + barH / 2}" dy="0.32em">${esc(formatValue(metric, r.median))}</text>`,
      "</g>",
    );
  });
  svg.push(
    `<text class="axis-label" x="${f.left + f.pw / 2}" y="${f.h - 12}" text-anchor="middle">${esc(METRIC_NOUN[metric])} (${METRIC_UNIT[metric]}, linear)</text>`,
    titleOf(f, title),
    "</svg>",
  );
  return [
    `<figure class="bars" id="${id}" data-bench="${esc(bench)}" data-scope="${esc(scope)}" data-metric="${esc(metric)}">`,
    `<div class="plot-row"><div class="plot-svg">${svg.join("\n")}</div>${aside}</div>`,
    `<figcaption>${esc(title)}. Bars: median of the runs; whiskers: min–max; ${esc(METRIC_BETTER[metric])}.</figcaption>`,
    `<script type="application/json" class="plot-data">${scriptJson(rows)}</script>`,
    "</figure>",
  ].join("\n");
}

// ---- breakdown --------------------------------------------------------------------------

/** The latency breakdown: one stacked bar per (transport, size), one segment per stage. */
export function breakdownPlot(rows: readonly BreakdownRow[], id: string): string {
  const { scope, metric } = rows[0];
  // The rows may come from a file a guest wrote (`run --out`): stage, handoffs and wakeups are
  // not checked there, so they are taken as text here and escaped like every other string.
  const stageOf = (r: BreakdownRow) => (r.stage === undefined ? "(total)" : String(r.stage));
  const stages: string[] = [];
  for (const r of rows) {
    const s = stageOf(r);
    if (!stages.includes(s)) stages.push(s);
  }
  const stageColor = (s: string) => STAGE_COLORS[stages.indexOf(s) % STAGE_COLORS.length];
  const transports = orderedTransports(rows);
  const sizes = [...new Set(rows.map((r) => r.bytes))].sort((a, b) => a - b);
  const bars: { transport: string; bytes: number; segs: BreakdownRow[] }[] = [];
  for (const bytes of sizes) {
    for (const t of transports) {
      const segs = rows.filter((r) => r.transport === t && r.bytes === bytes);
      segs.sort((a, b) => stages.indexOf(stageOf(a)) - stages.indexOf(stageOf(b)));
      if (segs.length > 0) bars.push({ transport: t, bytes, segs });
    }
  }
  const f = frameFor(stages, -8);
  const total = Math.max(...bars.map((b) => b.segs.reduce((s, r) => s + Math.max(0, r.median), 0)), 0);
  const top = niceTop(total);
  const y = (v: number) => f.top + f.ph - (v / top) * f.ph;
  const slot = f.pw / Math.max(bars.length, 1);
  const bw = Math.min(56, slot * 0.6);
  const title = `Latency breakdown by stage (${scope})`;
  const svg: string[] = [svgOpen(f, id, title), `<g class="grid">`];
  const yTicks = [0, 1, 2, 3, 4, 5].map((i) => (top * i) / 5);
  for (const v of yTicks)
    svg.push(`<line x1="${f.left}" x2="${f.left + f.pw}" y1="${n2(y(v))}" y2="${n2(y(v))}" class="g1"/>`);
  svg.push("</g>", `<rect x="${f.left}" y="${f.top}" width="${f.pw}" height="${f.ph}" class="frame"/>`);
  svg.push(`<g class="y-axis">`);
  for (const v of yTicks) {
    svg.push(
      `<line x1="${f.left - 6}" x2="${f.left}" y1="${n2(y(v))}" y2="${n2(y(v))}" class="tick"/>`,
      `<text x="${f.left - 9}" y="${n2(y(v))}" dy="0.32em" text-anchor="end">${esc(formatTick(Number(v.toPrecision(6))))}</text>`,
    );
  }
  svg.push("</g>");
  bars.forEach((b, i) => {
    const cx = f.left + slot * (i + 0.5);
    const x = n2(cx - bw / 2);
    let acc = 0;
    const sum = b.segs.reduce((s, r) => s + Math.max(0, r.median), 0);
    svg.push(
      `<g class="bar" data-transport="${esc(b.transport)}" data-bytes="${b.bytes}" data-total="${sum}">`,
    );
    for (const r of b.segs) {
      const v = Math.max(0, r.median);
      const stage = stageOf(r);
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
      `<text class="bar-label" x="${n2(cx)}" y="${f.top + f.ph + 16}" text-anchor="middle">${esc(b.transport)}</text>`,
      `<text class="bar-label" x="${n2(cx)}" y="${f.top + f.ph + 30}" text-anchor="middle">${esc(formatBytes(b.bytes))}</text>`,
      // Thread hand-offs and wake-ups per message (breakdown.ts), when the rows carry them.
      b.segs[0].handoffs !== undefined
        ? `<text class="bar-counts" x="${n2(cx)}" y="${n2(y(acc) - 18)}" text-anchor="middle"><title>thread hand-offs / wake-ups per message</title>${esc(b.segs[0].handoffs)}h ${esc(b.segs[0].wakeups ?? "?")}w</text>`
        : "",
      "</g>",
    );
  });
  svg.push(
    legend(
      f,
      [...stages].reverse().map((s) => ({ key: s, label: s, box: stageColor(s) })),
    ),
    `<text class="axis-label" x="${f.left + f.pw / 2}" y="${f.h - 10}" text-anchor="middle">transport and message size</text>`,
    `<text class="axis-label" transform="translate(18 ${f.top + f.ph / 2}) rotate(-90)" text-anchor="middle">${esc(METRIC_NOUN[metric])} (${esc(METRIC_UNIT[metric])}, linear)</text>`,
    titleOf(f, title),
    "</svg>",
  );
  return [
    `<figure class="breakdown" id="${id}" data-scope="${esc(scope)}" data-metric="${esc(metric)}">`,
    svg.join("\n"),
    `<figcaption>${esc(title)}: one stacked bar per transport and size, one segment per stage (median of the runs), bottom to top in the order the stages first appear; above each bar, the thread hand-offs (h) and wake-ups (w) per message.</figcaption>`,
    `<script type="application/json" class="breakdown-data">${scriptJson(rows)}</script>`,
    "</figure>",
  ].join("\n");
}

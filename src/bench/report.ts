/**
 * HTML benchmark report: one self-contained file (inline CSS, inline SVG drawn at render time,
 * no external references) laid out like the papers' figures: the machine (and a banner when it
 * was too noisy), the comparison with the papers' and peers' figures, one log–log plot per
 * (bench, scope, metric) with its ratios as a compact table beside it, a bar chart for results
 * measured at one size (NAS kernels), the stacked latency breakdown, and every row.
 * Data-driven: benches and transports it does not know still render (report-style.ts gives
 * them a colour, marker and dash). The figures live in report-svg.ts, the ratios in
 * report-ratios.ts.
 */

import { writeFileSync } from "node:fs";
import {
  type BenchReport,
  type BenchRow,
  formatBytes,
  formatValue,
  type MachineInfo,
  prepareOutputFile,
} from "./harness.js";
import { comparisonSection, ratioTable } from "./report-ratios.js";
import { escapeHtml as esc } from "./report-style.js";
import { type BreakdownRow, barPlot, breakdownPlot, linePlot } from "./report-svg.js";

export { computeRatios, RATIO_PAIRS, type Ratio, type RatioPair } from "./report-ratios.js";
export { escapeHtml } from "./report-style.js";
export type { BreakdownRow };

export interface HtmlReportOptions {
  title?: string;
}

function isBreakdown(r: BenchRow): boolean {
  return r.bench === "breakdown";
}

function groupKey(r: { bench: string; scope: string; metric: string }): string {
  return `${r.bench}\u0000${r.scope}\u0000${r.metric}`;
}

/** Raw limits measured beside the system: alone in a plot, they compare with nothing. */
function isBaseline(transport: string): boolean {
  return transport.startsWith("raw-") || transport === "memcpy";
}

// ---- sections ---------------------------------------------------------------------------

function machineSection(m: MachineInfo, manyRuns: boolean): string {
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
  if (m.maxSpread !== undefined && manyRuns) items.push(["largest max/min spread", `${m.maxSpread}×`]);
  const banner = m.noisy
    ? `<div class="noisy-banner" role="alert"><strong>Noisy machine:</strong> ${esc(m.noiseReason ?? "unknown reason")}. Times are unreliable here, and a ratio marked ? compares cells whose runs disagree: rerun on a quieter machine before quoting figures.</div>\n`
    : "";
  return (
    `${banner}<section class="machine"><h2>Machine</h2><dl>` +
    items.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("") +
    "</dl></section>"
  );
}

/** How the peers ran, or why one was not measured (the report's notes), when there are any. */
function notesSection(notes: readonly string[] | undefined): string {
  if (!notes || notes.length === 0) return "";
  return (
    '<section class="notes"><h2>How the peers ran</h2><ul>' +
    notes.map((n) => `<li>${esc(n)}</li>`).join("") +
    "</ul></section>"
  );
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
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1180px; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
.noisy-banner { background: #fff3cd; border: 2px solid #e0a800; color: #5c4400; padding: 10px 14px; border-radius: 6px; margin: 12px 0; }
.machine dl { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dt { color: #666; } dd { margin: 0; }
figure { margin: 20px 0 28px; } figcaption { color: #555; font-size: 13px; }
.plot-row { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px 20px; }
.plot-svg { flex: 0 1 auto; min-width: 0; }
.ratios-aside { flex: 0 0 auto; max-width: 100%; }
table.ratio-table { width: auto; font-size: 12px; }
table.ratio-table caption { caption-side: top; text-align: left; color: #555; font-size: 12px; padding-bottom: 4px; white-space: nowrap; }
table.ratio-table th, table.ratio-table td { padding: 2px 8px; } table.ratio-table th { text-align: right; font-weight: 600; } table.ratio-table th.size { text-align: left; }
td.shaky { color: #a15c00; } .shaky-note { color: #a15c00; font-size: 12px; max-width: 320px; }
td.none { color: #bbb; }
svg.chart { max-width: 100%; height: auto; font: 12px system-ui, sans-serif; background: #fff; }
svg .frame { fill: none; stroke: #444; } svg .tick { stroke: #444; }
svg .g1 { stroke: #e3e3e3; } svg .g2 { stroke: #f2f2f2; } svg .minor { fill: #888; font-size: 10px; }
svg .line { fill: none; stroke-width: 2; } svg .whisker { fill: none; stroke-width: 1.2; opacity: 0.7; }
svg .axis-label { font-size: 13px; fill: #333; } svg .plot-title { font-size: 14px; font-weight: 600; }
svg .axis-break { stroke: #444; fill: none; } svg .bar-total { font-size: 11px; fill: #333; } svg .bar-counts { font-size: 9px; fill: #666; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.comparisons .hint { color: #777; font-size: 12px; } .comparisons div.comparison { margin-bottom: 2px; }
details.rows summary { cursor: pointer; font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ddd; }
`;

/** Render the whole report as one self-contained HTML document. */
export function renderHtmlReport(report: BenchReport, opts: HtmlReportOptions = {}): string {
  const rows = report.rows as readonly BreakdownRow[];
  const manyRuns = rows.some((r) => r.runs > 1);
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
  // A group of raw baselines alone (raw-tcp measured for a scope the system was not) has
  // nothing to compare with: it stays in the table of rows, without an empty-looking plot.
  const alone: BenchRow[][] = [];
  const plots: string[] = [];
  const bars: string[] = [];
  for (const g of groups.values()) {
    if (g.every((r) => isBaseline(r.transport))) {
      alone.push(g);
      continue;
    }
    // bench scale's rows vary in their `guests`, not their size: a line against guests.
    const guests = g.every((r) => typeof (r as { guests?: unknown }).guests === "number");
    const sizes = new Set(g.map((r) => (guests ? (r as unknown as { guests: number }).guests : r.bytes)));
    if (sizes.size === 1) bars.push(barPlot(g, `bars-${bars.length + 1}`, ratioTable(g)));
    else plots.push(linePlot(g, `plot-${plots.length + 1}`, ratioTable(g)));
  }
  const breakdownFigs = [...breakdowns.values()].map((g, i) => breakdownPlot(g, `breakdown-${i + 1}`));
  const aloneNote =
    alone.length > 0
      ? `<p class="alone">Measured alone, so not plotted (see the rows below): ${alone
          .map((g) =>
            esc(`${g[0].bench} ${[...new Set(g.map((r) => r.transport))].join(", ")} (${g[0].scope})`),
          )
          .join("; ")}.</p>`
      : "";
  const counts = [
    `${rows.length} rows`,
    `${plots.length} plot${plots.length === 1 ? "" : "s"}`,
    ...(bars.length > 0 ? [`${bars.length} bar chart${bars.length === 1 ? "" : "s"}`] : []),
    ...(breakdownFigs.length > 0
      ? [`${breakdownFigs.length} latency breakdown${breakdownFigs.length > 1 ? "s" : ""}`]
      : []),
  ];
  return [
    "<!DOCTYPE html>",
    `<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">`,
    `<title>${esc(title)}</title><style>${CSS}</style></head><body>`,
    `<h1>${esc(title)}</h1>`,
    `<p class="summary">${counts.join(", ")}. ${
      manyRuns
        ? "Every figure is the median of repeated runs (whiskers: min–max)"
        : "One run per figure (no medians: the whiskers show the spread over ranks, if any)"
    }; each ratio divides two figures of the same bench, scope and size from this run.</p>`,
    machineSection(report.machine, manyRuns),
    notesSection(report.notes),
    comparisonSection(rows.filter((r) => !isBreakdown(r))),
    `<section class="plots"><h2>Plots</h2>`,
    plots.length + bars.length > 0 ? [...plots, ...bars].join("\n") : "<p>No rows to plot.</p>",
    aloneNote,
    "</section>",
    breakdownFigs.length > 0
      ? `<section class="breakdowns"><h2>Latency breakdown</h2>\n${breakdownFigs.join("\n")}\n</section>`
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

// Browser test of the HTML benchmark report: opens the written file (file://) in Debian's
// headless chromium through playwright-core and checks with the DOM that every plot really
// draws its lines, markers and legend, that no legend label is clipped, that the ratio tables
// stand beside their plots and that one-size results (NAS) are drawn as bars. Skips when
// chromium or playwright-core is missing. MYRIXEN_KEEP_SCREENSHOTS=1 keeps the screenshots.

import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type BenchReport, validateReport } from "../src/bench/harness.js";
import { writeHtmlReport } from "../src/bench/report.js";
import { chromiumOrSkip, LAUNCH } from "./helpers/browser.js";

const here = dirname(fileURLToPath(import.meta.url));

function loadFixture(): BenchReport {
  for (const f of [
    join(here, "fixtures/bench-report.json"),
    join(here, "../../test/fixtures/bench-report.json"),
  ]) {
    if (existsSync(f)) return validateReport(JSON.parse(readFileSync(f, "utf8")));
  }
  throw new Error("fixture test/fixtures/bench-report.json not found");
}

/** The little of the DOM the page-side check uses (the project's tsconfig has no "dom" lib). */
interface El {
  id: string;
  dataset: Record<string, string | undefined>;
  textContent: string | null;
  querySelector(sel: string): El | null;
  querySelectorAll(sel: string): Iterable<El> & { length: number };
  getBoundingClientRect(): {
    left: number;
    right: number;
    top: number;
    bottom: number;
    width: number;
    height: number;
  };
  getBBox(): { x: number; y: number; width: number; height: number };
  viewBox: { baseVal: { x: number; y: number; width: number; height: number } };
  points: { numberOfItems: number; getItem(i: number): { x: number; y: number } };
}

interface PlotCheck {
  id: string;
  svgSize: [number, number];
  lines: { transport: string; points: number; width: number; height: number; inside: boolean }[];
  markers: number;
  legend: string[];
  /** Legend labels whose box leaves the SVG's viewBox (clipped). */
  clipped: string[];
  /** The ratio table's box against the SVG's: to the right of it and overlapping it vertically. */
  tableBeside: boolean | undefined;
  bars: number;
  barsVisible: boolean;
  segments: number;
  segmentsVisible: boolean;
}

test("the HTML report draws its plots in headless chromium", { timeout: 180_000 }, async (t) => {
  const pw = await chromiumOrSkip(t);
  if (!pw) return;
  const dir = mkdtempSync(join(tmpdir(), "myrixen-report-browser-"));
  const fixture = loadFixture();
  // The fixture, plus what npm start adds: the split path and a NAS kernel measured at one size.
  const nas = (transport: string, mops: number) => ({
    bench: "nas-ep.S",
    transport,
    scope: "cross-host" as const,
    bytes: 0,
    metric: "ops_per_s" as const,
    median: mops * 1e6,
    min: mops * 0.95e6,
    max: mops * 1.05e6,
    runs: 3,
  });
  const split = fixture.rows
    .filter((r) => r.bench === "pingpong" && r.scope === "intra-host" && r.transport === "bypass")
    .map((r) => ({ ...r, transport: "split", median: r.median * 40, min: r.min * 40, max: r.max * 40 }));
  const report = validateReport({
    ...fixture,
    rows: [...fixture.rows, ...split, nas("native", 45), nas("bypass", 44), nas("split", 12)],
  });
  const file = join(dir, "report.html");
  writeHtmlReport(file, report);
  const context = await pw.chromium.launchPersistentContext(join(dir, "profile"), {
    ...LAUNCH,
    viewport: { width: 1240, height: 900 },
  });
  try {
    context.setDefaultTimeout(30_000);
    context.setDefaultNavigationTimeout(30_000);
    const page = context.pages()[0] ?? (await context.newPage());
    const external: string[] = [];
    page.on("request", (req) => {
      if (!req.url().startsWith("file:") && !req.url().startsWith("data:")) external.push(req.url());
    });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(pathToFileURL(file).href, { waitUntil: "load", timeout: 30_000 });

    const checks: PlotCheck[] = await page.evaluate(() => {
      const doc = (globalThis as unknown as { document: El }).document;
      const out: PlotCheck[] = [];
      for (const fig of doc.querySelectorAll("figure.plot, figure.breakdown, figure.bars")) {
        const svg = fig.querySelector("svg")!;
        const box = svg.getBoundingClientRect();
        const vb = svg.viewBox.baseVal;
        const lines = [...fig.querySelectorAll("polyline")].map((l) => {
          const b = l.getBBox();
          const pts = [...Array(l.points.numberOfItems).keys()].map((i) => l.points.getItem(i));
          return {
            transport: l.dataset.transport ?? "",
            points: pts.length,
            width: b.width,
            height: b.height,
            inside: pts.every(
              (p) => p.x >= vb.x && p.x <= vb.x + vb.width && p.y >= vb.y && p.y <= vb.y + vb.height,
            ),
          };
        });
        const segs = [...fig.querySelectorAll("rect.segment")];
        const clipped = [...fig.querySelectorAll(".legend-entry text, .bar-label, .bar-total")]
          .filter((e) => {
            const b = e.getBBox();
            return (
              b.x < vb.x || b.y < vb.y || b.x + b.width > vb.x + vb.width || b.y + b.height > vb.y + vb.height
            );
          })
          .map((e) => e.textContent ?? "");
        const table = fig.querySelector("table.ratio-table");
        const t = table?.getBoundingClientRect();
        const barRects = [...fig.querySelectorAll("rect.bar-fill")];
        out.push({
          id: fig.id,
          svgSize: [box.width, box.height],
          lines,
          markers: fig.querySelectorAll(".series .marker").length,
          legend: [...fig.querySelectorAll(".legend-entry text")].map((e) => e.textContent ?? ""),
          clipped,
          tableBeside: t
            ? t.left >= box.left + box.width - 1 && t.top < box.bottom && t.bottom > box.top
            : undefined,
          bars: barRects.length,
          barsVisible: barRects.every((r) => r.getBBox().width > 0 && r.getBBox().height > 0),
          segments: segs.length,
          segmentsVisible: segs.every((s) => s.getBBox().width > 0 && s.getBBox().height > 0),
        });
      }
      return out;
    });

    const rows = report.rows as (BenchReport["rows"][number] & { stage?: string })[];
    const lineRows = rows.filter((r) => r.bench !== "breakdown" && r.bench !== "nas-ep.S");
    const groups = new Set(lineRows.map((r) => `${r.bench}|${r.scope}|${r.metric}`));
    const plots = checks.filter((c) => c.id.startsWith("plot-"));
    const bars = checks.filter((c) => c.id.startsWith("breakdown-"));
    const nasBars = checks.filter((c) => c.id.startsWith("bars-"));
    assert.equal(plots.length, groups.size);
    assert.equal(bars.length, 1);
    assert.equal(nasBars.length, 1);
    assert.equal(nasBars[0].bars, 3);
    assert.ok(nasBars[0].barsVisible, "every NAS bar is visible");
    for (const c of checks) {
      assert.ok(c.svgSize[0] > 100 && c.svgSize[1] > 100, `${c.id} is laid out: ${c.svgSize}`);
      if (!c.id.startsWith("bars-")) assert.ok(c.legend.length > 0, `${c.id} has a legend`);
      assert.deepEqual(c.clipped, [], `${c.id}: labels inside the SVG`);
    }
    // Every plot with a pair of transports has its ratio table beside it (the page is wide enough).
    for (const c of [...plots, ...nasBars])
      if (c.tableBeside !== undefined) assert.ok(c.tableBeside, `${c.id}: ratios beside`);
    assert.ok(plots.filter((c) => c.tableBeside).length >= 3, "ratio tables beside the plots");
    for (const c of plots) {
      assert.ok(c.lines.length > 0, `${c.id} has lines`);
      let union = 0;
      for (const l of c.lines) {
        assert.ok(l.points >= 2, `${c.id} ${l.transport}: ${l.points} points`);
        assert.ok(l.inside, `${c.id} ${l.transport}: points inside the plot`);
        assert.ok(l.width > 0, `${c.id} ${l.transport}: line has width`);
        union = Math.max(union, l.height);
      }
      assert.ok(union > 0, `${c.id}: lines have height`);
      assert.equal(
        c.markers,
        c.lines.reduce((s, l) => s + l.points, 0),
      );
      assert.deepEqual(
        c.legend,
        c.lines.map((l) => l.transport),
      );
    }
    const bd = rows.filter((r) => r.bench === "breakdown");
    assert.equal(bars[0].segments, bd.length);
    assert.ok(bars[0].segmentsVisible, "every breakdown segment is visible");
    assert.deepEqual([...bars[0].legend].sort(), [...new Set(bd.map((r) => r.stage ?? ""))].sort());
    assert.deepEqual(external, [], "the report loads nothing from outside");
    assert.deepEqual(errors, []);

    const shot = join(dir, "report.png");
    await page.screenshot({ path: shot, fullPage: true, timeout: 30_000 });
    assert.ok(existsSync(shot));
    t.diagnostic(`screenshot: ${shot}`);
    const first = page.locator("figure.plot").first();
    await first.screenshot({ path: join(dir, "plot-1.png"), timeout: 30_000 });
    t.diagnostic(`first plot: ${join(dir, "plot-1.png")}`);
  } finally {
    await context.close().catch(() => {});
    if (!process.env.MYRIXEN_KEEP_SCREENSHOTS) rmSync(dir, { recursive: true, force: true });
  }
});

// Tests for the HTML benchmark report (src/bench/report.ts): every plot's embedded data against
// the fixture's rows, the stated ratios, the noisy banner, HTML escaping, no external references,
// and writing the file.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { type BenchReport, type BenchRow, validateReport } from "../src/bench/harness.js";
import { renderHtmlReport, writeHtmlReport } from "../src/bench/report.js";

type Row = BenchRow & { stage?: string };

const here = dirname(fileURLToPath(import.meta.url));
// Compiled to dist/test/, the fixture stays in test/fixtures/.
const FIXTURE = [
  join(here, "fixtures/bench-report.json"),
  join(here, "../../test/fixtures/bench-report.json"),
];

function loadFixture(): BenchReport {
  for (const f of FIXTURE) {
    try {
      return validateReport(JSON.parse(readFileSync(f, "utf8")));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
  }
  throw new Error(`fixture not found in ${FIXTURE.join(" or ")}`);
}

// ---- tiny HTML reading helpers ----------------------------------------------------------

function unescapeHtml(s: string): string {
  return s
    .replace(/&#(\d+);/g, (_, d: string) => String.fromCharCode(Number(d)))
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&amp;/g, "&");
}

function attrs(tag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of tag.matchAll(/([\w-]+)="([^"]*)"/g)) out[m[1]] = unescapeHtml(m[2]);
  return out;
}

function tags(html: string, name: string, cls?: string): Record<string, string>[] {
  const re = new RegExp(`<${name}\\b[^>]*>`, "g");
  return [...html.matchAll(re)].map((m) => attrs(m[0])).filter((a) => !cls || a.class === cls);
}

function figures(html: string, cls: string): { attrs: Record<string, string>; body: string }[] {
  const re = new RegExp(`<figure class="${cls}"[^>]*>([\\s\\S]*?)</figure>`, "g");
  return [...html.matchAll(re)].map((m) => ({
    attrs: attrs(m[0].slice(0, m[0].indexOf(">") + 1)),
    body: m[1],
  }));
}

function jsonBlock(body: string, cls: string): Row[] {
  const m = body.match(new RegExp(`<script type="application/json" class="${cls}">([\\s\\S]*?)</script>`));
  assert.ok(m, `no ${cls} JSON block`);
  return JSON.parse(m[1]);
}

function parsePoints(s: string): [number, number][] {
  return s.split(",").map((p) => {
    const [b, v] = p.split(":");
    return [Number(b), Number(v)];
  });
}

const isBreakdown = (r: Row) => r.bench === "breakdown";
const gkey = (r: { bench: string; scope: string; metric: string }) => `${r.bench}|${r.scope}|${r.metric}`;

// ---- tests ------------------------------------------------------------------------------

test("the fixture is a valid report with every kind of row", () => {
  const rep = loadFixture();
  const rows = rep.rows as Row[];
  for (const t of ["native", "bypass", "raw-sab", "postmessage"]) {
    const sizes = rows
      .filter((r) => r.bench === "pingpong" && r.scope === "intra-host" && r.transport === t)
      .map((r) => r.bytes);
    assert.deepEqual(sizes, [0, 8, 4096, 1048576]);
  }
  assert.ok(rows.some((r) => r.bench === "stream"));
  assert.ok(rows.some((r) => isBreakdown(r) && typeof r.stage === "string"));
});

test("every line plot's data matches the rows exactly", () => {
  const rep = loadFixture();
  const html = renderHtmlReport(rep);
  const rows = (rep.rows as Row[]).filter((r) => !isBreakdown(r));
  const groups = [...new Set(rows.map(gkey))];
  const figs = figures(html, "plot");
  assert.equal(figs.length, groups.length, "one plot per (bench, scope, metric)");
  for (const fig of figs) {
    const g = gkey({
      bench: fig.attrs["data-bench"],
      scope: fig.attrs["data-scope"],
      metric: fig.attrs["data-metric"],
    });
    assert.ok(groups.includes(g), `unexpected plot ${g}`);
    const expected = rows.filter((r) => gkey(r) === g);
    assert.deepEqual(jsonBlock(fig.body, "plot-data"), expected, `JSON block of ${g}`);

    const lines = tags(fig.body, "polyline");
    const transports = [...new Set(expected.map((r) => r.transport))];
    assert.deepEqual(
      lines.map((l) => l["data-transport"]),
      transports,
      `one polyline per transport in ${g}`,
    );
    for (const line of lines) {
      const t = line["data-transport"];
      const want = expected
        .filter((r) => r.transport === t)
        .sort((a, b) => a.bytes - b.bytes)
        .map((r) => [r.bytes, r.median]);
      assert.deepEqual(parsePoints(line["data-points"]), want, `points of ${t} in ${g}`);
      // The drawn coordinates follow the data: x grows with size; y falls as the value grows (log scale).
      const xy = line.points.split(" ").map((p) => p.split(",").map(Number));
      assert.equal(xy.length, want.length);
      for (let i = 1; i < xy.length; i++) {
        assert.ok(xy[i][0] > xy[i - 1][0], `x increases in ${t} ${g}`);
        const dv = Math.sign(want[i][1] - want[i - 1][1]);
        if (dv !== 0) assert.equal(Math.sign(xy[i - 1][1] - xy[i][1]), dv, `y follows value in ${t} ${g}`);
      }
    }
    // Whiskers carry min and max of every row.
    const whiskers = tags(fig.body, "path", "whisker").map((w) => [
      Number(w["data-bytes"]),
      Number(w["data-min"]),
      Number(w["data-max"]),
    ]);
    const wantW = transports.flatMap((t) =>
      expected
        .filter((r) => r.transport === t)
        .sort((a, b) => a.bytes - b.bytes)
        .map((r) => [r.bytes, r.min, r.max]),
    );
    assert.deepEqual(whiskers, wantW, `whiskers of ${g}`);
    // Legend: one entry per transport, in the same order.
    assert.deepEqual(
      tags(fig.body, "g", "legend-entry").map((e) => e["data-key"]),
      transports,
    );
    // Log-scale axes are labelled with units.
    assert.match(fig.body, /log₂ scale/);
    assert.match(fig.body, /log scale\)/);
  }
  // 0-byte rows sit at the left edge of the pingpong plot, with a "0 B" tick.
  const ping = figs.find(
    (f) => f.attrs["data-bench"] === "pingpong" && f.attrs["data-scope"] === "intra-host",
  );
  assert.ok(ping);
  assert.match(ping.body, />0 B</);
  const native = tags(ping.body, "polyline").find((l) => l["data-transport"] === "native")!;
  const xs = native.points.split(" ").map((p) => Number(p.split(",")[0]));
  assert.equal(xs[0], Math.min(...xs));
  assert.match(ping.body, /<rect x="([\d.]+)"[^>]*class="frame"/);
  const frameX = Number(ping.body.match(/<rect x="([\d.]+)"[^>]*class="frame"/)![1]);
  assert.equal(xs[0], frameX, "0 B at the left edge");
});

test("the latency breakdown stacks one segment per stage in first-appearance order", () => {
  const rep = loadFixture();
  const html = renderHtmlReport(rep);
  const rows = (rep.rows as Row[]).filter(isBreakdown);
  const stages = [...new Set(rows.map((r) => r.stage))];
  const figs = figures(html, "breakdown");
  assert.equal(figs.length, 1);
  assert.deepEqual(jsonBlock(figs[0].body, "breakdown-data"), rows);
  const bars = [...figs[0].body.matchAll(/<g class="bar"[^>]*>([\s\S]*?)<\/g>/g)];
  const pairs = new Set(rows.map((r) => `${r.transport}|${r.bytes}`));
  assert.equal(bars.length, pairs.size, "one bar per (transport, bytes)");
  for (const b of bars) {
    const a = attrs(b[0].slice(0, b[0].indexOf(">") + 1));
    const want = rows.filter(
      (r) => r.transport === a["data-transport"] && r.bytes === Number(a["data-bytes"]),
    );
    const segs = tags(b[1], "rect", "segment");
    assert.deepEqual(
      segs.map((s) => s["data-stage"]),
      stages,
    );
    for (const s of segs) {
      assert.equal(Number(s["data-value"]), want.find((r) => r.stage === s["data-stage"])!.median);
      assert.ok(Number(s.height) > 0);
    }
    const total = want.reduce((x, r) => x + r.median, 0);
    assert.ok(Math.abs(Number(a["data-total"]) - total) < 1e-12);
    // Segments stack: each one's bottom is the previous one's top.
    for (let i = 1; i < segs.length; i++) {
      const below = segs[i - 1];
      assert.ok(Math.abs(Number(segs[i].y) + Number(segs[i].height) - Number(below.y)) < 0.02);
    }
  }
  const legend = tags(figs[0].body, "g", "legend-entry").map((e) => e["data-key"]);
  assert.deepEqual([...legend].sort(), [...stages].sort());
  // Breakdown rows are not drawn as line plots.
  assert.ok(!figures(html, "plot").some((f) => f.attrs["data-bench"] === "breakdown"));
});

test("the ratios are stated in numbers and words, computed from the medians", () => {
  const rep = loadFixture();
  const html = renderHtmlReport(rep);
  const rows = (rep.rows as Row[]).filter((r) => !isBreakdown(r));
  const pairs: [string, string, string?][] = [
    ["bypass", "native"],
    ["split", "bypass"],
    ["bypass", "raw-sab"],
    ["postmessage", "bypass"],
    ["bypass", "raw-tcp", "cross-host"],
    ["evtchn", "raw-sab"],
  ];
  const expected = new Map<string, number>();
  for (const [a, b, scope] of pairs) {
    for (const ra of rows.filter((r) => r.transport === a && (!scope || r.scope === scope))) {
      const rb = rows.find((r) => r.transport === b && gkey(r) === gkey(ra) && r.bytes === ra.bytes);
      if (rb) expected.set(`${a}/${b}|${gkey(ra)}|${ra.bytes}`, ra.median / rb.median);
    }
  }
  const shown = html.match(/<li class="ratio"[^>]*>[\s\S]*?<\/li>/g) ?? [];
  const got = new Map<string, number>();
  for (const li of shown) {
    const a = attrs(li.slice(0, li.indexOf(">") + 1));
    const v = Number(a["data-value"]);
    got.set(
      `${a["data-pair"]}|${gkey({ bench: a["data-bench"], scope: a["data-scope"], metric: a["data-metric"] })}|${a["data-bytes"]}`,
      v,
    );
    assert.ok(li.includes(`= ${v.toFixed(2)}×`), `ratio number shown: ${li}`);
    assert.ok(li.includes(`has ${v.toFixed(2)}× the`), `ratio in words: ${li}`);
  }
  assert.deepEqual(got, expected);
  // Spot checks against hand-computed values.
  assert.equal(got.get("bypass/native|pingpong|intra-host|latency_us|1048576"), 110.5 / 152.2);
  assert.equal(got.get("evtchn/raw-sab|substrate|intra-host|ops_per_s|0"), 0.5);
  assert.ok(got.has("bypass/raw-tcp|pingpong|cross-host|latency_us|8"));
  assert.ok(![...got.keys()].some((k) => k.startsWith("split/")), "no split rows, no split ratio");
  assert.match(
    html,
    /At 1 MiB, bypass has 0\.73× the latency of native \(110\.50 µs vs 152\.20 µs\): 27% lower\./,
  );
  assert.match(html, /At 8 B, postmessage has 18\.00× the latency of bypass \(6\.30 µs vs 0\.35 µs\)\./);
});

test("cross-host rows: bypass/raw-tcp is stated for latency and bandwidth, with the targets met or not", () => {
  const rep = loadFixture();
  const cross = (transport: string, median: number): BenchRow => ({
    bench: "stream",
    transport,
    scope: "cross-host",
    bytes: 1048576,
    metric: "bandwidth_MBps",
    median,
    min: median * 0.9,
    max: median * 1.1,
    runs: 5,
  });
  const rows = [...rep.rows, cross("native", 880), cross("bypass", 900), cross("raw-tcp", 1800)];
  const html = renderHtmlReport({ ...rep, rows });
  const ratios = (html.match(/<li class="ratio"[^>]*>[\s\S]*?<\/li>/g) ?? []).filter((li) =>
    li.includes('data-pair="bypass/raw-tcp"'),
  );
  const byKey = new Map(
    ratios.map((li) => {
      const a = attrs(li.slice(0, li.indexOf(">") + 1));
      return [`${a["data-bench"]}|${a["data-scope"]}|${a["data-metric"]}|${a["data-bytes"]}`, li];
    }),
  );
  // Latency from the fixture (24.5 / 21.2 µs at 8 B), bandwidth from the rows added here.
  assert.ok(byKey.has("pingpong|cross-host|latency_us|8"));
  const bw = byKey.get("stream|cross-host|bandwidth_MBps|1048576");
  assert.ok(bw, "bandwidth ratio stated");
  assert.match(bw, /data-value="0\.5"/);
  assert.match(
    bw,
    /At 1 MiB, bypass has 0\.50× the bandwidth of raw-tcp \(900 MB\/s vs 1800 MB\/s\): 50% lower\./,
  );
  // Only cross-host rows are compared with raw-tcp (the intra-host bypass rows have no partner).
  for (const li of ratios) assert.match(li, /data-scope="cross-host"/);
  // The targets, from the same medians: 24.5 / 21.2 = 1.16 ≤ 1.3 met; 900 / 1800 = 0.50 < 0.8 not met.
  const targets = tags(html, "li", "target");
  assert.deepEqual(
    targets.map((t) => [t["data-bench"], t["data-bytes"], t["data-state"]]),
    [
      ["pingpong", "8", "met"],
      ["stream", "1048576", "not-met"],
    ],
  );
  assert.match(html, /cross-host target bypass 8 B latency ≤ 1\.3× raw-tcp: measured 1\.16× .*— met/);
  assert.match(html, /cross-host target bypass 1 MiB bandwidth ≥ 0\.8× raw-tcp: measured 0\.50× .*— NOT met/);
  // Without cross-host rows there is nothing to check and no such section.
  const intra = renderHtmlReport({ ...rep, rows: rep.rows.filter((r) => r.scope === "intra-host") });
  assert.ok(!intra.includes("Cross-host targets"));
  assert.ok(!intra.includes('data-pair="bypass/raw-tcp"'));
});

test("the machine is described, and the noisy banner appears only when noisy", () => {
  const rep = loadFixture();
  const quiet = renderHtmlReport(rep);
  assert.ok(!quiet.includes('class="noisy-banner"'));
  assert.match(quiet, /2 × Intel\(R\) Xeon\(R\) CPU @ 2\.20GHz/);
  assert.match(quiet, /24\.0 GiB/);
  assert.match(quiet, /20\.20\.2/);
  assert.match(quiet, /6\.1\.0-28-amd64/);
  assert.match(quiet, /0\.12 \/ 0\.2 \/ 0\.18/);
  assert.match(quiet, /0\.9 \/ 0\.4 \/ 0\.25/);
  assert.match(quiet, /2026-11-02T10:00:00\.000Z/);
  const noisy = renderHtmlReport({
    ...rep,
    machine: { ...rep.machine, noisy: true, noiseReason: 'load 3 > 1 & "busy" <core>' },
  });
  const banner = noisy.match(/<div class="noisy-banner"[^>]*>([\s\S]*?)<\/div>/);
  assert.ok(banner);
  assert.ok(banner[1].includes("load 3 &#62; 1 &#38; &#34;busy&#34; &#60;core&#62;"));
});

test("every string is escaped, including a transport called <script>", () => {
  const rep = loadFixture();
  const evil = '<script>alert("x")</script>';
  const row: BenchRow = { ...rep.rows[0], transport: evil };
  const row2: BenchRow = { ...rep.rows[1], transport: evil };
  const html = renderHtmlReport({ ...rep, rows: [...rep.rows, row, row2] }, { title: "<b>T&T</b>" });
  assert.ok(!html.includes("<script>alert"), "raw script tag");
  assert.ok(!html.includes("<b>T&T</b>"));
  assert.ok(html.includes("&#60;b&#62;T&#38;T&#60;/b&#62;"));
  // The only script elements are the JSON data blocks.
  for (const m of html.matchAll(/<script\b[^>]*>/g)) assert.match(m[0], /type="application\/json"/);
  const fig = figures(html, "plot").find((f) => f.attrs["data-bench"] === rep.rows[0].bench)!;
  assert.ok(tags(fig.body, "polyline").some((l) => l["data-transport"] === evil));
  assert.ok(jsonBlock(fig.body, "plot-data").some((r) => r.transport === evil));
  assert.ok(tags(fig.body, "g", "legend-entry").some((e) => e["data-key"] === evil));
});

test("the report is self-contained: no external references", () => {
  const html = renderHtmlReport(loadFixture());
  assert.ok(html.startsWith("<!DOCTYPE html>"));
  for (const bad of ["http://", "https://", "src=", "href=", "url(", "@import", "//cdn"]) {
    assert.ok(!html.includes(bad), `found ${bad}`);
  }
  assert.match(html, /<svg class="chart"/);
  assert.match(html, /<style>/);
  assert.match(html, /<section class="rows"><h2>All rows \(49\)<\/h2>/);
});

test("edge cases render: no rows, a single size, only 0-byte rows", () => {
  const rep = loadFixture();
  const empty = renderHtmlReport({ ...rep, rows: [] });
  assert.match(empty, /No rows to plot/);
  const one: BenchRow = {
    bench: "b",
    transport: "t",
    scope: "intra-host",
    bytes: 0,
    metric: "latency_us",
    median: 1,
    min: 1,
    max: 1,
    runs: 1,
  };
  const html = renderHtmlReport({ ...rep, rows: [one, { ...one, bytes: 64, median: 0, min: 0, max: 0 }] });
  assert.equal(figures(html, "plot").length, 1);
  assert.ok(!/NaN|Infinity/.test(html));
  const zeroOnly = renderHtmlReport({ ...rep, rows: [one] });
  assert.ok(!/NaN|Infinity/.test(zeroOnly));
});

test("writeHtmlReport creates the directory and reports a clear error", () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-report-"));
  try {
    const file = join(dir, "a/b/report.html");
    writeHtmlReport(file, loadFixture(), { title: "T" });
    const html = readFileSync(file, "utf8");
    assert.match(html, /<title>T<\/title>/);
    const blocker = join(dir, "file");
    writeFileSync(blocker, "x");
    assert.throws(
      () => writeHtmlReport(join(blocker, "r.html"), loadFixture()),
      (e: Error) => e.message.startsWith(`cannot write HTML report to ${join(blocker, "r.html")}: `),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

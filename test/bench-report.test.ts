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
import { computeRatios, renderHtmlReport, writeHtmlReport } from "../src/bench/report.js";
import { comparisonLines } from "../src/bench/report-ratios.js";

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

test("each plot has its ratios beside it: quotients of the medians, one table per plot", () => {
  const rep = loadFixture();
  const html = renderHtmlReport(rep);
  const rows = (rep.rows as Row[]).filter((r) => !isBreakdown(r));
  const pairs: [string, string, string?][] = [
    ["bypass", "native"],
    ["split", "bypass"],
    ["bypass", "openmpi"],
    ["bypass", "raw-sab"],
    ["postmessage", "bypass"],
    ["bypass", "raw-tcp", "cross-host"],
    ["bypass", "raw-chain", "cross-host"],
    ["evtchn", "raw-sab"],
  ];
  const expected = new Map<string, number>();
  for (const [a, b, scope] of pairs) {
    for (const ra of rows.filter((r) => r.transport === a && (!scope || r.scope === scope))) {
      const rb = rows.find((r) => r.transport === b && gkey(r) === gkey(ra) && r.bytes === ra.bytes);
      if (rb) expected.set(`${a}/${b}|${gkey(ra)}|${ra.bytes}`, ra.median / rb.median);
    }
  }
  const got = new Map<string, number>();
  for (const fig of figures(html, "plot")) {
    for (const td of tags(fig.body, "td").filter((t) => t.class?.includes("ratio"))) {
      // Each table sits in the figure of its own rows.
      assert.equal(td["data-bench"], fig.attrs["data-bench"]);
      assert.equal(td["data-scope"], fig.attrs["data-scope"]);
      got.set(
        `${td["data-pair"]}|${gkey({ bench: td["data-bench"], scope: td["data-scope"], metric: td["data-metric"] })}|${td["data-bytes"]}`,
        Number(td["data-value"]),
      );
    }
  }
  assert.deepEqual(got, expected);
  // Spot checks against hand-computed values, and the number as shown.
  assert.equal(got.get("bypass/native|pingpong|intra-host|latency_us|1048576"), 110.5 / 152.2);
  assert.equal(got.get("evtchn/raw-sab|substrate|intra-host|ops_per_s|0"), 0.5);
  assert.ok(got.has("bypass/raw-tcp|pingpong|cross-host|latency_us|8"));
  assert.match(html, /data-pair="postmessage\/bypass"[^>]*data-bytes="8"[^>]*>18\.0×</);
  assert.match(html, /data-pair="bypass\/native"[^>]*data-bytes="1048576"[^>]*>0\.73×</);
  // No wordy bullets and no internal targets.
  assert.ok(!html.includes('<li class="ratio"'));
  assert.ok(!/target/i.test(html), "no internal targets in the report");
  // A cell whose runs spread more than 3× marks its ratios as noise.
  const wild = rows.find((r) => r.bench === "pingpong" && r.transport === "native" && r.bytes === 8)!;
  const noisy = renderHtmlReport({
    ...rep,
    rows: rep.rows.map((r) => (r === wild ? { ...r, min: 0.3, max: 12 } : r)),
  });
  assert.match(noisy, /class="n ratio shaky" data-pair="bypass\/native"[^>]*data-bytes="8"[^>]*>1\.06×\?</);
  assert.match(noisy, /class="shaky-note"/);
  assert.ok(!html.includes('class="shaky-note"'));
});

test("the papers' and peers' figures: Xen2MX's split/bypass and bypass/native, Open MPI only with its rows", () => {
  const rep = loadFixture();
  const row = (
    transport: string,
    scope: "intra-host" | "cross-host",
    bytes: number,
    median: number,
  ): BenchRow => ({
    bench: "osu-latency",
    transport,
    scope,
    bytes,
    metric: "latency_us",
    median,
    min: median,
    max: median,
    runs: 3,
  });
  const rows = [
    ...rep.rows,
    row("native", "cross-host", 8, 100),
    row("bypass", "cross-host", 8, 110),
    row("split", "cross-host", 8, 330),
    row("native", "cross-host", 64, 120),
    row("bypass", "cross-host", 64, 130),
    row("split", "cross-host", 64, 400),
  ];
  const html = renderHtmlReport({ ...rep, rows });
  const comps = tags(html, "div", "comparison");
  const split = comps.find((c) => c["data-pair"] === "split/bypass" && c["data-bench"] === "osu-latency");
  assert.ok(split, "split/bypass compared with Xen2MX");
  assert.equal(split["data-bytes"], "8", "small messages: 8 B");
  assert.equal(Number(split["data-value"]), 3);
  assert.equal(Number(split["data-theirs"]), 44 / 14);
  assert.match(html, /Xen2MX \(Nanos &#38; Koziris, 2012\): 44 µs round trip/);
  assert.match(html, /3\.00× \(osu-latency, cross-host, 8 B: 330\.00 µs vs 110\.00 µs\)/);
  // bypass/native in latency (pingpong and osu-latency) and bandwidth (stream, at the largest size).
  assert.ok(comps.some((c) => c["data-pair"] === "bypass/native" && c["data-bench"] === "osu-latency"));
  const bw = comps.find((c) => c["data-pair"] === "bypass/native" && c["data-bench"] === "stream");
  assert.equal(bw?.["data-bytes"], "1048576");
  // Open MPI: nothing without openmpi rows; bypass/openmpi once they exist.
  assert.ok(!html.includes("Open MPI"));
  const withOmpi = renderHtmlReport({ ...rep, rows: [...rows, row("openmpi", "cross-host", 8, 55)] });
  const ompi = tags(withOmpi, "div", "comparison").find((c) => c["data-pair"] === "bypass/openmpi");
  assert.ok(ompi);
  assert.equal(Number(ompi["data-value"]), 2);
  assert.match(withOmpi, /Open MPI 4\.1 on this kind of 2-core machine/);
  // No split, native or openmpi rows: no comparison section at all.
  const bare = renderHtmlReport({ ...rep, rows: rep.rows.filter((r) => r.transport !== "native") });
  assert.ok(!bare.includes('class="comparisons"'));
});

test("a breakdown's stages are compared stage with stage, and never with the papers' whole-message figures", () => {
  const stage = (transport: string, name: string, median: number): BenchRow =>
    ({
      bench: "breakdown",
      transport,
      scope: "intra-host",
      bytes: 1048576,
      metric: "latency_us",
      median,
      min: median,
      max: median,
      runs: 3,
      stage: name,
    }) as BenchRow;
  // What `myrixen bench breakdown --sizes 1M` gives: the paths' stages differ (split has no
  // push-started, bypass no netback-tx), and the first of one once met the last of the other.
  const rows = [
    stage("bypass", "rndv-sent", 5),
    stage("bypass", "copied", 120),
    stage("bypass", "completed", 2),
    stage("split", "rndv-sent", 11.5),
    stage("split", "netback-tx", 10.7),
    stage("split", "completed", 1677.6),
  ];
  const ratios = computeRatios(rows).filter((r) => r.pair === "split/bypass");
  assert.deepEqual(
    ratios.map((r) => [
      (r.a as BenchRow & { stage?: string }).stage,
      (r.b as BenchRow & { stage?: string }).stage,
      r.value,
    ]),
    [
      ["rndv-sent", "rndv-sent", 2.3],
      ["completed", "completed", 838.8],
    ],
  );
  assert.deepEqual(comparisonLines(rows), [], "no whole-message comparison from stages");
  // Beside whole-message rows, the comparison names those only.
  const pp = (transport: string, median: number): BenchRow => ({
    bench: "pingpong",
    transport,
    scope: "intra-host",
    bytes: 8,
    metric: "latency_us",
    median,
    min: median,
    max: median,
    runs: 3,
  });
  const lines = comparisonLines([...rows, pp("bypass", 0.6), pp("split", 6)]);
  const split = lines.find((l) => l.includes("split / bypass"));
  assert.match(split ?? "", /10\.0× \(pingpong, intra-host, 8 B: 6\.00 µs vs 0\.60 µs\) {2}\[/);
  assert.ok(!lines.some((l) => l.includes("breakdown")), lines.join("\n"));
  assert.ok(
    !renderHtmlReport({ rows, machine: loadFixture().machine } as BenchReport).includes(
      'data-bench="breakdown"',
    ),
  );
});

test("a small-message figure is held only against a small message, a bandwidth figure only against a large one", () => {
  // A run of `bench pingpong --sizes 64K,1M --transports bypass,openmpi` set its 64 KiB
  // latency beside Open MPI's 0.135 µs as "small-message latency".
  const at = (transport: string, bytes: number, metric: "latency_us" | "bandwidth_MBps", median: number) =>
    ({
      bench: "pingpong",
      transport,
      scope: "intra-host",
      bytes,
      metric,
      median,
      min: median,
      max: median,
      runs: 3,
    }) as BenchRow;
  const mid = comparisonLines([
    at("bypass", 65536, "latency_us", 7.8),
    at("openmpi", 65536, "latency_us", 7.7),
  ]);
  assert.deepEqual(mid, [], mid.join("\n"));
  const small = comparisonLines([at("bypass", 8, "bandwidth_MBps", 9), at("native", 8, "bandwidth_MBps", 9)]);
  assert.deepEqual(small, [], small.join("\n"));
  const both = comparisonLines([
    at("bypass", 512, "latency_us", 1),
    at("openmpi", 512, "latency_us", 0.5),
    at("bypass", 65536, "latency_us", 7.8),
    at("openmpi", 65536, "latency_us", 7.7),
  ]);
  assert.match(both.join("\n"), /small-message latency: 2\.00× \(pingpong, intra-host, 512 B/);
});

test("the report keeps how its peers ran: notes validated, and shown escaped under the machine", () => {
  const rep = loadFixture();
  const notes = [
    "openmpi, intra-host: Open MPI 4.1.4, mpirun -np 2, shared memory (--mca btl self,vader; single copy: cma), pml ob1",
    "openmpi-cico: one host only (over TCP there is no single copy to turn off); not measured <cross-host>",
  ];
  const html = renderHtmlReport(validateReport({ ...rep, notes }));
  const section = /<section class="notes"><h2>How the peers ran<\/h2><ul>(.*?)<\/ul><\/section>/.exec(html);
  assert.ok(section, "a notes section");
  assert.equal(section[1].match(/<li>/g)?.length, 2);
  assert.match(section[1], /single copy: cma/);
  assert.match(section[1], /not measured &#60;cross-host&#62;/);
  assert.ok(!renderHtmlReport(rep).includes('class="notes"'), "no notes, no section");
  assert.throws(() => validateReport({ ...rep, notes: "openmpi" }), /notes: expected an array of strings/);
  assert.throws(() => validateReport({ ...rep, notes: ["ok", 3] }), /notes: expected an array of strings/);
});

test("every series of a plot is distinguishable: its own marker, dash and colour, and a whole legend", () => {
  const rep = loadFixture();
  const extra = (transport: string, f: number): BenchRow[] =>
    rep.rows
      .filter((r) => r.bench === "pingpong" && r.scope === "intra-host" && r.transport === "native")
      .map((r) => ({ ...r, transport, median: r.median * f, min: r.min * f, max: r.max * f }));
  const unknown = "a-transport-nobody-has-heard-of-yet";
  const rows = [
    ...rep.rows,
    ...extra("split", 30),
    ...extra("openmpi", 0.5),
    ...extra("postmessage-transfer", 20),
    ...extra(unknown, 2),
  ];
  const html = renderHtmlReport({ ...rep, rows });
  const ping = figures(html, "plot").find(
    (f) => f.attrs["data-bench"] === "pingpong" && f.attrs["data-scope"] === "intra-host",
  )!;
  const lines = tags(ping.body, "polyline");
  assert.equal(lines.length, 8);
  const looks = new Set<string>();
  const series = ping.body.split('<g class="series"').slice(1);
  assert.equal(series.length, lines.length);
  for (const [i, line] of lines.entries()) {
    // A marker's look: its element, its shape (path commands) and whether it is filled.
    const m = series[i].match(/<(circle|path) class="marker"(?: d="([^"]*)")?[^>]*fill="([^"]*)"/);
    assert.ok(m, `${line["data-transport"]} has markers`);
    const shape = m[1] === "circle" ? "circle" : (m[2] ?? "").replace(/[\d.,-]+/g, "");
    const look = `${shape}|${m[3] === "#fff" ? "open" : m[3] === "none" ? "stroke" : "filled"}|${line["stroke-dasharray"] ?? ""}`;
    assert.ok(!looks.has(look), `${line["data-transport"]} looks like another series: ${look}`);
    looks.add(look);
  }
  // native and bypass (equal values) differ in both marker and dash.
  const byT = new Map(lines.map((l) => [l["data-transport"], l]));
  assert.notEqual(byT.get("native")!["stroke-dasharray"], byT.get("bypass")!["stroke-dasharray"]);
  // The legend's longest label fits in the SVG (never clipped).
  const svg = tags(ping.body, "svg")[0];
  const width = Number(svg.width);
  const entry = ping.body.match(
    /<g class="legend-entry" data-key="a-transport[^"]*">[\s\S]*?<text x="([\d.]+)"/,
  );
  assert.ok(entry);
  assert.ok(Number(entry[1]) + unknown.length * 12 * 0.6 <= width, "legend label inside the SVG");
});

test("a group of baselines alone is not plotted; a result at one size (NAS) is a bar chart", () => {
  const rep = loadFixture();
  const nas = (transport: string, mops: number): BenchRow => ({
    bench: "nas-ep.S",
    transport,
    scope: "cross-host",
    bytes: 0,
    metric: "ops_per_s",
    median: mops * 1e6,
    min: mops * 0.9e6,
    max: mops * 1.1e6,
    runs: 3,
  });
  const intra = rep.rows.filter((r) => r.scope === "intra-host" || r.transport === "raw-tcp");
  const html = renderHtmlReport({
    ...rep,
    rows: [...intra, nas("native", 45), nas("bypass", 44), nas("split", 12)],
  });
  assert.ok(
    !figures(html, "plot").some((f) => f.attrs["data-scope"] === "cross-host"),
    "raw-tcp alone makes no plot",
  );
  assert.match(
    html,
    /Measured alone, so not plotted \(see the rows below\): pingpong raw-tcp \(cross-host\)/,
  );
  const bars = figures(html, "bars");
  assert.equal(bars.length, 1);
  assert.equal(bars[0].attrs["data-bench"], "nas-ep.S");
  const drawn = tags(bars[0].body, "g", "bar").map((b) => [b["data-transport"], Number(b["data-value"])]);
  assert.deepEqual(drawn, [
    ["native", 45e6],
    ["bypass", 44e6],
    ["split", 12e6],
  ]);
  // Longer bar for the larger value.
  const widths = tags(bars[0].body, "rect", "bar-fill").map((r) => Number(r.width));
  assert.ok(widths[0] > widths[1] && widths[1] > widths[2]);
  assert.match(bars[0].body, /data-pair="split\/bypass"[^>]*>0\.27×</);
  assert.match(bars[0].body, /45\.00 Mops\/s/);
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
  assert.equal(figures(zeroOnly, "bars").length, 1);
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

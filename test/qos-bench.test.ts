/**
 * bench isolation and scale's pure parts (issue 16): Jain's index, the rows' text, and the
 * HTML report plotting scale rows against their `guests` field. (The suites themselves are
 * run by `myrixen bench isolation|scale`: they measure speed, which tests never assert.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { machineInfo, makeRow } from "../src/bench/harness.js";
import { describeIsolation } from "../src/bench/isolation.js";
import { renderHtmlReport } from "../src/bench/report.js";
import { describeScale, jainIndex } from "../src/bench/scale.js";

test("Jain's index: 1 when all equal, 1/n when one has everything", () => {
  assert.equal(jainIndex([5, 5, 5, 5]), 1);
  assert.equal(jainIndex([8, 0, 0, 0]), 0.25);
  assert.ok(Math.abs(jainIndex([3, 1]) - 0.8) < 1e-12);
});

test("scale rows plot against guests; isolation and scale rows read as text", () => {
  const scale = [1, 2, 4].flatMap((guests) =>
    (["native", "bypass"] as const).flatMap((transport) => [
      {
        ...makeRow({ bench: "scale", transport, bytes: 65536, metric: "bandwidth_MBps" }, [100 * guests]),
        guests,
      },
      { ...makeRow({ bench: "scale", transport, bytes: 65536, metric: "jain_index" }, [0.99]), guests },
    ]),
  );
  const iso = [
    {
      ...makeRow(
        { bench: "isolation", transport: "bypass", bytes: 8, metric: "latency_slowdown" },
        [1.2, 1.3, 1.4],
      ),
      solo_us: 10,
      beside_cpu_us: 20,
      beside_stream_us: 26,
    },
    {
      ...makeRow({ bench: "isolation", transport: "bypass", bytes: 1 << 20, metric: "cap_accuracy" }, [0.98]),
      cap_MBps: 500,
      rate_MBps: 490,
    },
  ];
  const html = renderHtmlReport({ machine: machineInfo(), rows: [...scale, ...iso] });
  assert.match(html, /scale: bandwidth vs guests \(intra-host\)/);
  assert.match(html, /scale: Jain(&#39;|')s fairness index vs guests/);
  assert.match(html, /guests \(log₂ scale\)/);
  // Measured at one size: a bar.
  assert.match(html, /isolation: latency beside a stream ÷ beside a CPU-only neighbour at 8 B/);
  const text = describeIsolation(iso).join("\n");
  assert.match(
    text,
    /solo 10\.00 µs, beside a spinner 20\.00 µs, beside A's 1 MiB stream 26\.00 µs → latency_slowdown 1\.300×/,
  );
  assert.match(text, /A capped at 500 MB\/s streams 490 MB\/s → cap_accuracy 0\.980/);
  assert.match(describeScale(scale).join("\n"), /intra-host native 1: 100 MB\/s J=0\.990 {2}2: 200 MB\/s/);
});

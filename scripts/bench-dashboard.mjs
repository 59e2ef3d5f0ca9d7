#!/usr/bin/env node
// What watching costs the data path: `myrixen bench pingpong`'s 8 B one-way latency on the
// bypass path (the same mx-bench pair), measured in one run with runs interleaved — without
// a dashboard, with a dashboard whose WebSocket client is connected (the server takes a
// snapshot of the host every 500 ms and pushes it), and with the page open in headless
// chromium (which also renders every update) — and the median of each. Run after a build:
//   node scripts/bench-dashboard.mjs [runs=7] [iters=1000000]
// A run should last well over the dashboard's 500 ms interval (1,000,000 round trips: about
// a second on a quiet machine), so that every "with" run sees several snapshots.
import { existsSync } from "node:fs";
import WebSocket from "ws";
import { MxPair } from "../dist/src/bench/mx.js";
import { randomClusterKey } from "../dist/src/cluster/auth.js";
import { HostDaemon } from "../dist/src/cluster/host-daemon.js";
import { createLogger } from "../dist/src/cluster/log.js";
import { Dashboard } from "../dist/src/dashboard/server.js";
import { daemonSource } from "../dist/src/dashboard/sources.js";
import { Host } from "../dist/src/host/host.js";

const runs = Number(process.argv[2] ?? 7);
const iters = Number(process.argv[3] ?? 1_000_000);
const warmup = Math.floor(iters / 10);
const log = createLogger({ level: "warn", format: "text" });

const host = await Host.start({});
const key = randomClusterKey();
const daemon = await HostDaemon.serve(host, {
  listen: { host: "127.0.0.1", port: 0 },
  key,
  log,
  observeOnly: "bench",
});
const dash = await Dashboard.start({ port: 0, sources: [daemonSource("bench", daemon)], key, log });
const pair = await MxPair.start(host, "bypass");

let browser;
let page;
const CHROMIUM = "/usr/bin/chromium";
if (existsSync(CHROMIUM)) {
  const pw = await import("playwright-core");
  browser = await pw.chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage();
}

async function withClient(f) {
  const ws = new WebSocket(`ws://127.0.0.1:${dash.port}/ws`);
  await new Promise((r, j) => {
    ws.once("open", r);
    ws.once("error", j);
  });
  let updates = 0;
  ws.on("message", () => updates++);
  await new Promise((r) => setTimeout(r, 1200));
  const v = await f();
  ws.close();
  await new Promise((r) => setTimeout(r, 300));
  return { v, updates };
}

async function withBrowser(f) {
  await page.goto(dash.url);
  await page.waitForFunction(() => Number(document.body.dataset.updates) >= 2, undefined, {
    timeout: 20_000,
  });
  const v = await f();
  const updates = Number(await page.evaluate(() => document.body.dataset.updates));
  await page.goto("about:blank");
  await new Promise((r) => setTimeout(r, 300));
  return { v, updates };
}

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
// What one snapshot takes, wall clock (an upper bound on the host thread's time: it includes
// the wait for the driver domain's reply), and its size on the wire.
const snapMs = [];
let snapBytes = 0;
for (let i = 0; i < 40; i++) {
  const t = performance.now();
  const s = await daemon.inspector.snapshot();
  snapMs.push(performance.now() - t);
  snapBytes = JSON.stringify(s).length;
}
const off = [];
const ws = [];
const page_ = [];
let wsUpdates = 0;
let pageUpdates = 0;
await pair.pingpong(8, iters, warmup); // warm the JIT
for (let r = 0; r < runs; r++) {
  off.push(await pair.pingpong(8, iters, warmup));
  const a = await withClient(() => pair.pingpong(8, iters, warmup));
  ws.push(a.v);
  wsUpdates += a.updates;
  if (page) {
    try {
      const b = await withBrowser(() => pair.pingpong(8, iters, warmup));
      page_.push(b.v);
      pageUpdates += b.updates;
    } catch (e) {
      // The browser went away (killed from outside): measure on without it.
      process.stderr.write(`the browser is gone (${e.message.split("\n")[0]}): no more page runs\n`);
      page = undefined;
    }
  }
  process.stderr.write(
    `run ${r + 1}/${runs}: off ${off.at(-1).toFixed(3)} µs, ws ${ws.at(-1).toFixed(3)} µs${page ? `, page ${page_.at(-1).toFixed(3)} µs` : ""}\n`,
  );
}
const m0 = median(off);
console.log(`bypass pingpong 8 B one-way, median of ${runs} interleaved runs of ${iters} round trips:`);
console.log(
  `  no dashboard:                       ${m0.toFixed(3)} µs  (min ${Math.min(...off).toFixed(3)}, max ${Math.max(...off).toFixed(3)})`,
);
console.log(
  `  dashboard, a WebSocket client:      ${median(ws).toFixed(3)} µs  (${((median(ws) / m0 - 1) * 100).toFixed(1)}%; min ${Math.min(...ws).toFixed(3)}; ${wsUpdates} updates pushed)`,
);
if (page_.length > 0)
  console.log(
    `  dashboard open in headless chromium: ${median(page_).toFixed(3)} µs  (${((median(page_) / m0 - 1) * 100).toFixed(1)}%; min ${Math.min(...page_).toFixed(3)}; ${pageUpdates} updates drawn)`,
  );
console.log(
  `  one snapshot: ${median(snapMs).toFixed(2)} ms wall clock (median of 40; ${snapBytes} bytes of JSON), taken every 500 ms while a client watches`,
);
await browser?.close();
await pair.stop();
await dash.stop();
await daemon.stop();
await host.stop();
process.exit(0);

// A hostile guest against the operator's browser, end to end in Debian's headless chromium
// (playwright-core): what a guest controls reaches two pages, and must show there as text,
// never run as markup.
//
//   - The HTML bench report of `myrixen run --out DIR osu-*`: rank 0 hands the launcher the
//     rows file it asked for (a guest cannot write files, the host writes what the guest
//     sends), and the report draws those rows. A program of the user's named osu-*.mjs is
//     such a guest; its rows carry extra fields (a breakdown's hand-offs and wake-ups, a
//     stage that is not a string) that the row check does not look at.
//   - The live dashboard: a guest writes its own XenStore device directory (its MAC), which
//     the page shows in the clicked domain's details.
//
// Each payload tries to set a global and change document.title; the test asserts neither
// happened and that the payload shows literally. Skips when chromium or playwright-core is
// missing.

import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pathToFileURL } from "node:url";
import { DEVICE_TEXT_MAX } from "../src/host/snapshot.js";
import { chromiumOrSkip, LAUNCH } from "./helpers/browser.js";
import { runCli } from "./helpers/cli.js";
import { killChildren, myrixen, until } from "./helpers/hosts.js";

/** The little of the DOM the page-side checks use (the project's tsconfig has no "dom" lib). */
declare const document: {
  title: string;
  body: { dataset: Record<string, string | undefined> };
  querySelectorAll(sel: string): { length: number };
  querySelector(sel: string): { textContent: string | null } | null;
};
declare const window: { __pwned?: string };

after(() => {
  killChildren();
});

const HANDOFFS = `</text></svg><img src=x onerror="window.__pwned='handoffs';document.title='PWNED'">`;
const WAKEUPS = `<img src=x onerror="window.__pwned='wakeups';document.title='PWNED'">`;
// Within the 32 characters a snapshot keeps of a MAC (DEVICE_TEXT_MAX), so it shows whole.
const MAC = `<img src=x onerror=__pwned=1>`;
assert.ok(MAC.length <= DEVICE_TEXT_MAX);

/** rank 0 of `osu-hostile.mjs`: the rows file it was asked for (--json FILE) carries the payloads. */
const REPORT_GUEST = `export default async function main(guest) {
  const { job } = guest.args;
  const file = job.argv[job.argv.indexOf("--json") + 1];
  const row = (stage, extra) => ({
    bench: "breakdown", transport: "bypass", scope: "intra-host", bytes: 8, metric: "latency_us",
    median: 1, min: 1, max: 1, runs: 1, stage, ...extra,
  });
  const rows = [
    row("wire", { handoffs: ${JSON.stringify(HANDOFFS)}, wakeups: ${JSON.stringify(WAKEUPS)} }),
    // Not a string: the report must still be written.
    row(7, {}),
  ];
  guest.send({ type: "output-file", rank: job.rank, file, text: JSON.stringify({ machine: { noisy: false }, rows }) });
  return 0;
}
`;

/** A guest that puts markup in its own XenStore device directory, then waits to be looked at. */
const XENSTORE_GUEST = `export default async function main(guest) {
  await guest.xenstore.write(\`/local/domain/\${guest.domid}/device/vif/0/mac\`, ${JSON.stringify(MAC)});
  console.log("payload written");
  await new Promise((r) => setTimeout(r, 150_000));
  return 0;
}
`;

test("a rank's rows file cannot put markup in the HTML report of run --out", {
  timeout: 180_000,
}, async (t) => {
  const pw = await chromiumOrSkip(t);
  if (!pw) return;
  const dir = mkdtempSync(join(tmpdir(), "myrixen-hostile-report-"));
  try {
    writeFileSync(join(dir, "osu-hostile.mjs"), REPORT_GUEST);
    const r = await runCli(["run", "-n", "1", "--out", "out", "osu-hostile.mjs"], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /report written to out\/bench\.json and out\/bench\.html/);
    const html = join(dir, "out", "bench.html");
    assert.ok(existsSync(html), r.stderr);

    const browser = await pw.chromium.launch(LAUNCH);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      // "load" comes after every image has loaded or failed: an injected <img src=x> has run its onerror.
      await page.goto(pathToFileURL(html).href, { waitUntil: "load" });
      const seen = await page.evaluate(() => ({
        pwned: window.__pwned,
        title: document.title,
        imgs: document.querySelectorAll("img").length,
        counts: document.querySelector("svg text.bar-counts")?.textContent ?? null,
        stage: document.querySelector('rect.segment[data-stage="7"]') !== null,
      }));
      assert.equal(seen.pwned, undefined, "a payload ran in the report");
      assert.equal(seen.title, "MyriXen: osu-hostile.mjs");
      assert.equal(seen.imgs, 0, "the payload became elements");
      assert.ok(seen.counts?.includes(HANDOFFS), `the hand-offs shown literally: ${seen.counts}`);
      assert.ok(seen.counts?.includes(WAKEUPS), `the wake-ups shown literally: ${seen.counts}`);
      assert.ok(seen.stage, "the stage that is not a string is drawn as its text");
      assert.deepEqual(errors, []);
    } finally {
      await browser.close().catch(() => {});
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a guest's XenStore values show as text in the dashboard", { timeout: 240_000 }, async (t) => {
  const pw = await chromiumOrSkip(t);
  if (!pw) return;
  const dir = mkdtempSync(join(tmpdir(), "myrixen-hostile-dash-"));
  const program = join(dir, "xs-hostile.mjs");
  writeFileSync(program, XENSTORE_GUEST);
  let proc: ChildProcess | undefined;
  let url = "";
  let written = false;
  const done = myrixen(["run", "-n", "1", "--dashboard", "127.0.0.1:0", program], {
    killAfterMs: 200_000,
    onLine: (l, p) => {
      proc = p;
      const m = /dashboard at (http:\S+)/.exec(l);
      if (m) url = m[1];
      if (l.includes("payload written")) written = true;
    },
  });
  const browser = await pw.chromium.launch(LAUNCH);
  try {
    await until(() => url !== "" && written, "the dashboard and the guest's payload", 60_000);
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);
    await page.getByTestId("status").filter({ hasText: "live" }).waitFor({ timeout: 30_000 });
    const row = page.locator('tr[data-testid="domain-row"][data-name="rank0"]');
    await row.waitFor({ timeout: 30_000 });
    await row.click();
    await page.getByTestId("detail").filter({ hasText: MAC }).waitFor({ timeout: 20_000 });
    // A few more updates redraw the details: the payload must stay inert through them.
    const n0 = Number(await page.evaluate(() => document.body.dataset.updates));
    await page.waitForFunction((n) => Number(document.body.dataset.updates) >= n + 3, n0, {
      timeout: 20_000,
    });
    const seen = await page.evaluate(() => ({
      pwned: window.__pwned,
      imgs: document.querySelectorAll("#detail img").length,
      title: document.title,
    }));
    assert.equal(seen.pwned, undefined, "the guest's MAC ran in the dashboard");
    assert.equal(seen.imgs, 0);
    assert.equal(seen.title, "MyriXen — live");
    assert.deepEqual(errors, []);
  } finally {
    await browser.close().catch(() => {});
    proc?.kill("SIGINT");
    await done;
    rmSync(dir, { recursive: true, force: true });
  }
});

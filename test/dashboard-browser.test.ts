// The live dashboard in a real browser (Debian's headless chromium through playwright-core):
// a `myrixen host --dashboard` runs two jobs (one on the bypass path, one on the split path);
// the page must show their domains, endpoints and rates and keep updating them, show a
// clicked domain's endpoints and counters, and show a guest's death. A screenshot is saved
// in a temporary directory. Then the dashboard beyond the loopback: it asks for the cluster
// key (a wrong one is refused, the right one lets the page in), and refuses a WebSocket from
// another origin, or one that sends garbage. Skips when chromium or playwright-core is missing.

import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";
import { chromiumOrSkip, LAUNCH } from "./helpers/browser.js";
import { fixture, killChildren, myrixen, startHost, until } from "./helpers/hosts.js";

/** The little of the DOM the page-side checks use (the project's tsconfig has no "dom" lib). */
declare const document: {
  body: { dataset: Record<string, string | undefined> };
  querySelector(sel: string): { getAttribute(name: string): string | null } | null;
  querySelectorAll(sel: string): ArrayLike<{ textContent: string | null }>;
};

const dir = mkdtempSync(join(tmpdir(), "myrixen-dashboard-"));
const KEY_TEXT = "c3".repeat(32);
const KEY = join(dir, "cluster.key");
writeFileSync(KEY, `${KEY_TEXT}\n`, { mode: 0o600 });

after(() => {
  killChildren();
});

/** Starts `myrixen run ARGS` in the background; resolves with its process once it printed something. */
async function startJob(args: string[]): Promise<{ proc: ChildProcess; done: Promise<unknown> }> {
  let proc: ChildProcess | undefined;
  const done = myrixen(["run", ...args], {
    killAfterMs: 170_000,
    onLine: (_l, p) => {
      proc = p;
    },
  });
  await until(() => proc !== undefined, "the job's first output line", 60_000);
  return { proc: proc!, done };
}

test("the dashboard shows a running job's domains, endpoints and rates live, a clicked domain, and a guest's death", {
  timeout: 300_000,
}, async (t) => {
  const pw = await chromiumOrSkip(t);
  if (!pw) return;
  const host = await startHost(["--key-file", KEY, "--slots", "4", "--dashboard", "127.0.0.1:0"]);
  await until(() => host.logs.some((l) => l.msg === "dashboard ready"), "the dashboard", 20_000);
  const url = host.logs.find((l) => l.msg === "dashboard ready")!.url as string;
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);

  const bypass = await startJob(["-n", "2", "--hosts", host.label, "--key-file", KEY, fixture("mh-traffic")]);
  const split = await startJob([
    "-n",
    "2",
    "--path",
    "split",
    "--hosts",
    host.label,
    "--key-file",
    KEY,
    fixture("mh-traffic"),
  ]);

  const browser = await pw.chromium.launch({
    ...LAUNCH,
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);
    await page.getByTestId("status").filter({ hasText: "live" }).waitFor({ timeout: 30_000 });

    // The job's four guests, their devices connected, and each one's traffic on its path.
    const row = (name: string) => page.locator(`tr[data-testid="domain-row"][data-name="${name}"]`);
    for (const name of ["rank0", "rank1"]) await row(name).first().waitFor({ timeout: 30_000 });
    await page
      .locator('tr[data-testid="domain-row"] [data-testid="domain-path"] [data-path="bypass"]')
      .first()
      .waitFor({ timeout: 30_000 });
    await page
      .locator('tr[data-testid="domain-row"] [data-testid="domain-path"] [data-path="split"]')
      .first()
      .waitFor({ timeout: 60_000 });
    const devices = await row("rank0").first().textContent();
    assert.match(devices ?? "", /vif0: Connected\/Connected/);
    // Bypass endpoints: one per guest of the bypass job, with their co-resident peer.
    const eps = page.locator('#endpoints tr[data-testid="endpoint-row"][data-path="bypass"]');
    await eps.nth(1).waitFor({ timeout: 30_000 });
    assert.match((await eps.first().textContent()) ?? "", /ep\d+@dom\d+ \(channel\)/);

    // The proof: the bypass path's guests cost the hypervisor nothing; the split path's do.
    const proof = (p: string) => page.locator(`tr[data-testid="proof-row"][data-path="${p}"] td`);
    await page.waitForFunction(
      () => {
        const cells = document.querySelectorAll('tr[data-testid="proof-row"][data-path="split"] td');
        // Event-channel sends by the split path's guests (netfront notifying netback).
        return cells.length > 6 && cells[6].textContent !== "0";
      },
      undefined,
      { timeout: 30_000 },
    );
    const bypassCells = await proof("bypass").allTextContents();
    assert.ok(Number(bypassCells[1]) >= 1, `bypass domains with traffic: ${bypassCells.join(" | ")}`);
    assert.equal(bypassCells[5], "0", "grant operations per second on the bypass path");
    assert.equal(bypassCells[6], "0", "event-channel sends per second on the bypass path");

    // It keeps updating.
    const n0 = Number(await page.evaluate(() => document.body.dataset.updates));
    await page.waitForFunction((n) => Number(document.body.dataset.updates) >= n + 3, n0, {
      timeout: 30_000,
    });

    // Clicking a domain shows its endpoints and counters.
    await row("rank0").first().click();
    await page.getByTestId("detail").waitFor({ state: "visible", timeout: 10_000 });
    const detail = (await page.getByTestId("detail").textContent()) ?? "";
    assert.match(detail, /rank0 \(domain \d+ on .*\): running/);
    // What the hypervisor meters outside the guest's heap, beside its memory.
    assert.match(
      detail,
      /guest · 64(\.0)? MiB · heap [\d.]+ (B|KiB|MiB) · typed arrays [\d.]+ (B|KiB|MiB) · vCPU thread \d+/,
    );
    assert.match(detail, /Hypervisor counters/);
    assert.match(detail, /vif \(split path, netback's counters\)/);

    // Latency samples accumulate for the paths with traffic.
    await page.waitForFunction(
      () =>
        Number(document.querySelector('[data-testid="latency-bypass"]')?.getAttribute("data-samples")) > 0,
      undefined,
      { timeout: 30_000 },
    );

    // Kept after the test for a person to look at: one file in the project's reports/
    // (ignored by git), replaced by the next run, not a directory in /tmp per run.
    const shot = fileURLToPath(new URL("../../reports/dashboard-test.png", import.meta.url));
    mkdirSync(dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true, timeout: 30_000 });
    t.diagnostic(`screenshot: ${shot}`);

    // A guest's death: the bypass job's launcher is killed, the host stops its ranks.
    const doomed = await page
      .locator('tr[data-testid="domain-row"]')
      .filter({ has: page.locator('[data-path="bypass"]') })
      .first()
      .getAttribute("data-domid");
    bypass.proc.kill("SIGKILL");
    await page
      .locator(`tr[data-testid="domain-row"][data-domid="${doomed}"][data-state="destroyed"]`)
      .waitFor({ timeout: 30_000 });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close().catch(() => {});
    bypass.proc.kill("SIGKILL");
    split.proc.kill("SIGKILL");
    await Promise.all([bypass.done, split.done]);
  }
});

test("beyond the loopback the dashboard asks for the cluster key; foreign or garbage WebSockets are refused", {
  timeout: 180_000,
}, async (t) => {
  const pw = await chromiumOrSkip(t);
  if (!pw) return;
  const host = await startHost(["--key-file", KEY]);
  let dash: ChildProcess | undefined;
  let url = "";
  // 127.0.0.2 is not one of the names the dashboard treats as "this machine only".
  const done = myrixen(["dashboard", "--host", host.label, "--key-file", KEY, "--listen", "127.0.0.2:0"], {
    killAfterMs: 150_000,
    onLine: (l, p) => {
      dash = p;
      const m = /^myrixen dashboard: (http:\S+)/.exec(l);
      if (m) url = m[1];
    },
  });
  try {
    await until(() => url !== "", "the dashboard's address", 30_000);
    assert.match(url, /^http:\/\/127\.0\.0\.2:\d+\/$/);
    const api = await fetch(`${url}api/state`);
    assert.equal(api.status, 401);
    const ws = new WebSocket(`${url.replace("http", "ws")}ws`);
    const refused = await new Promise<number>((res) => {
      ws.on("unexpected-response", (_req, r) => res(r.statusCode ?? 0));
      ws.on("open", () => res(101));
      ws.on("error", () => res(-1));
    });
    assert.equal(refused, 401, "a WebSocket without a session");

    const browser = await pw.chromium.launch(LAUNCH);
    try {
      const page = await browser.newPage();
      await page.goto(url);
      await page.locator("#login").waitFor({ state: "visible", timeout: 20_000 });
      await page.fill("#login-key", "d4".repeat(32));
      await page.click("#login-form button");
      await page
        .locator("#login-error")
        .filter({ hasText: /not the cluster key/ })
        .waitFor({ timeout: 20_000 });
      await page.fill("#login-key", KEY_TEXT);
      await page.click("#login-form button");
      await page.getByTestId("status").filter({ hasText: "live" }).waitFor({ timeout: 30_000 });
      await page.locator('tr[data-testid="domain-row"][data-name="Domain-0"]').waitFor({ timeout: 30_000 });
      const cookies = await page.context().cookies();
      const session = cookies.find((c) => c.name === "myrixen_session");
      assert.ok(session?.httpOnly, "the session cookie is HttpOnly");

      // With the session, a WebSocket from another origin is still refused; one that sends garbage is dropped.
      const headers = { cookie: `myrixen_session=${session.value}` };
      const foreign = new WebSocket(`${url.replace("http", "ws")}ws`, {
        headers: { ...headers, origin: "http://evil.example" },
      });
      const code = await new Promise<number>((res) => {
        foreign.on("unexpected-response", (_req, r) => res(r.statusCode ?? 0));
        foreign.on("open", () => res(101));
        foreign.on("error", () => res(-1));
      });
      assert.equal(code, 403);
      const noisy = new WebSocket(`${url.replace("http", "ws")}ws`, { headers });
      await new Promise<void>((res, rej) => {
        noisy.on("open", () => res());
        noisy.on("error", rej);
      });
      noisy.send("garbage");
      const closed = await new Promise<number>((res) => noisy.on("close", (c) => res(c)));
      assert.equal(closed, 1008);
      // The page's own connection is unharmed.
      const n0 = Number(await page.evaluate(() => document.body.dataset.updates));
      await page.waitForFunction((n) => Number(document.body.dataset.updates) > n, n0, { timeout: 20_000 });
    } finally {
      await browser.close().catch(() => {});
    }
  } finally {
    dash?.kill("SIGINT");
    await done;
    host.proc.kill("SIGTERM");
    await host.exited;
    rmSync(dir, { recursive: true, force: true });
  }
});

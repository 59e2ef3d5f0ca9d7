/**
 * `myrixen start` — the main job (`npm start`): boots a virtual cluster on this machine — two
 * hosts (each a hypervisor, an emulated MX NIC and a driver domain), NICs linked over TCP, two
 * guests per host — and runs NAS EP class S on the 4 ranks and OSU latency and bandwidth
 * between 2 ranks on one host and across the hosts, on the native, bypass and split paths.
 * It prints one screen: the comparison with the ratios that matter (bypass against native,
 * split against bypass), what the split path cost the driver domain, and NAS's verification.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Table from "cli-table3";
import pc from "picocolors";
import type { BenchRow } from "../bench/harness.js";
import type { HostAddress } from "../cluster/hostfile.js";
import { Job, type JobTarget } from "../cluster/job.js";
import { startLocalCluster } from "../cluster/local-cluster.js";
import type { NetStats } from "../netback/stats.js";
import { type EmbeddedObservation, observeEmbedded } from "./embedded.js";
import { resolveProgram } from "./run.js";

const PATHS = ["native", "bypass", "split"] as const;
type Path = (typeof PATHS)[number];
const SCOPES = ["one host", "two hosts"] as const;
type Scope = (typeof SCOPES)[number];
/** A step of the main job that takes longer than this is stopped and reported. */
const STEP_LIMIT_MS = 120_000;

interface NasResult {
  verified: boolean;
  time_s: number;
  mops: number;
}

/**
 * OSU's loop counts are sized for sub-microsecond paths; a main job that must finish in well
 * under a minute runs fewer iterations (same method: warm-up skipped, then timed) where a
 * message takes tens of microseconds or more — across hosts and on the split path.
 */
function osuArgs(path: Path, scope: Scope, bench: "osu-latency" | "osu-bw"): string[] {
  const slow = path === "split" || scope === "two hosts";
  // On the fast paths OSU's own counts: V8 needs ~10,000 round trips before the MX code is
  // optimised, and a run that stops short measures the interpreter, not the path.
  if (bench === "osu-latency") return ["-m", "0:65536", ...(slow ? ["-i", "200", "-x", "20"] : [])];
  return ["-m", "65536:1048576", ...(slow ? ["-i", "8", "-x", "2"] : ["-i", "20", "-x", "4"])];
}

export async function runMainJob(
  out: (line: string) => void,
  err: (line: string) => void,
  opts: { dashboard?: HostAddress } = {},
): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-start-"));
  const t0 = performance.now();
  const steps = PATHS.length * 5;
  let step = 0;
  const progress = (what: string) => err(pc.dim(`[${++step}/${steps}] ${what}`));
  out(pc.bold("MyriXen: MPI over a cluster of VMs on this machine"));
  out(
    pc.dim(
      "  two hosts (hypervisor, emulated MX NIC, driver domain) linked over TCP, two guests each, as worker threads",
    ),
  );
  const cluster = await startLocalCluster(2, 2);
  // While it runs, `myrixen list`/`top`/`dashboard` see its hosts (and --dashboard serves the page).
  let observed: EmbeddedObservation | undefined;
  try {
    observed = await observeEmbedded(
      cluster.hosts.map((host, i) => ({
        host,
        name: `host${i + 1}`,
        linkAddress: cluster.targets[i].linkAddress,
      })),
      cluster.key,
      "myrixen start",
      opts,
      (l) => err(pc.dim(l)),
    );
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  const nas = new Map<Path, NasResult>();
  const osu = new Map<string, BenchRow[]>();
  const logs: string[] = [];
  const keep = (rank: number, _s: string, line: string) => logs.push(`[${rank}] ${line}`);
  let splitCost: { frames: number; copies: number; notifications: number; lookups: number } | undefined;
  const run = async (targets: JobTarget[], n: number, path: Path, program: string, argv: string[]) => {
    const job = new Job(targets, {
      n,
      path,
      program: resolveProgram(program),
      argv,
      pages: 4096,
      output: keep,
    });
    // Each step takes seconds; one that runs for minutes is stuck, and says so rather than hang.
    let stuck = false;
    const timer = setTimeout(() => {
      stuck = true;
      void job.stop();
    }, STEP_LIMIT_MS);
    const r = await job.run().finally(() => clearTimeout(timer));
    if (stuck)
      throw new Error(
        `${program} on the ${path} path did not finish within ${STEP_LIMIT_MS / 1000} s and was stopped:\n${logs.slice(-20).join("\n")}`,
      );
    if (r.exitCode !== 0)
      throw new Error(
        `${program} on the ${path} path failed (exit ${r.exitCode}):\n${logs.slice(-20).join("\n")}`,
      );
  };
  try {
    const [h1] = cluster.targets;
    for (const path of PATHS) {
      progress(`NAS EP class S on 4 ranks (2 hosts × 2 guests), ${path} path`);
      const file = join(dir, `ep-${path}.json`);
      await run(cluster.targets, 4, path, "nas-ep", ["--class", "S", "--json", file]);
      nas.set(path, JSON.parse(readFileSync(file, "utf8")) as NasResult);
      for (const scope of SCOPES) {
        for (const bench of ["osu-latency", "osu-bw"] as const) {
          progress(
            `${bench} on 2 ranks, ${scope === "one host" ? "same host" : "across the hosts"}, ${path} path`,
          );
          const f = join(dir, `${bench}-${path}-${scope}.json`);
          const before = path === "split" && scope === "one host" ? cluster.hosts[0].netStats() : undefined;
          await run(scope === "one host" ? [h1] : cluster.targets, 2, path, bench, [
            ...osuArgs(path, scope, bench),
            "--json",
            f,
          ]);
          if (before && bench === "osu-latency") splitCost = costOf(before, cluster.hosts[0].netStats());
          osu.set(`${path}/${scope}`, [
            ...(osu.get(`${path}/${scope}`) ?? []),
            ...(JSON.parse(readFileSync(f, "utf8")) as { rows: BenchRow[] }).rows,
          ]);
        }
      }
    }
  } finally {
    await observed.stop();
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  const table = new Table({
    head: ["", "native", "bypass", "split", "bypass vs native", "split vs bypass"],
    style: pc.isColorSupported ? {} : { head: [], border: [] },
    chars: { mid: "", "left-mid": "", "mid-mid": "", "right-mid": "" },
    colAligns: ["left", "right", "right", "right", "right", "right"],
  });
  // Every ratio is a slowdown (> 1: slower): times divide as they are, rates the other way.
  const slow = (v: number, base: number, rate: boolean) =>
    base > 0 && v > 0 && Number.isFinite(v) && Number.isFinite(base)
      ? `${(rate ? base / v : v / base).toFixed(2)}×`
      : "—";
  const row = (label: string, vals: Record<Path, number>, fmt: (v: number) => string, rate: boolean) =>
    table.push([
      label,
      fmt(vals.native),
      fmt(vals.bypass),
      fmt(vals.split),
      slow(vals.bypass, vals.native, rate),
      slow(vals.split, vals.bypass, rate),
    ]);
  const per = (f: (p: Path) => number) => ({ native: f("native"), bypass: f("bypass"), split: f("split") });
  row(
    "NAS EP class S, 4 ranks: time",
    per((p) => nas.get(p)!.time_s),
    (v) => `${v.toFixed(2)} s`,
    false,
  );
  row(
    "NAS EP class S, 4 ranks: Mop/s",
    per((p) => nas.get(p)!.mops),
    (v) => v.toFixed(1),
    true,
  );
  const pick = (path: Path, scope: Scope, bench: string, bytes: number) =>
    osu.get(`${path}/${scope}`)?.find((r) => r.bench === bench && r.bytes === bytes)?.median ?? Number.NaN;
  for (const scope of SCOPES) {
    for (const bytes of [8, 65536])
      row(
        `OSU latency ${size(bytes)}, ${scope}`,
        per((p) => pick(p, scope, "osu-latency", bytes)),
        (v) => `${v.toFixed(2)} µs`,
        false,
      );
    row(
      `OSU bandwidth 1 MiB, ${scope}`,
      per((p) => pick(p, scope, "osu-bw", 1 << 20)),
      (v) => `${v.toFixed(0)} MB/s`,
      true,
    );
  }
  out("");
  out(table.toString());
  out(
    pc.dim(
      "  native: a process of the driver domain on the NIC; bypass: a guest after myrifront/myrback set-up, straight to",
    ),
  );
  out(
    pc.dim(
      "  the NIC and its co-resident peers; split: the same MX over Ethernet through netfront, netback and the bridge.",
    ),
  );
  out(pc.dim("  Ratios are slowdowns (> 1 = slower): times as they are, rates inverted."));
  if (splitCost)
    out(
      pc.dim(
        `  split path, per frame through the driver domain (OSU latency, one host): ${splitCost.copies.toFixed(1)} grant copies, ` +
          `${splitCost.notifications.toFixed(2)} notifications, ${splitCost.lookups.toFixed(1)} bridge lookups (${splitCost.frames} frames)`,
      ),
    );
  const ok = PATHS.every((p) => nas.get(p)?.verified === true);
  out("");
  out(
    `  NAS EP class S: Verification = ${ok ? pc.green("SUCCESSFUL") : pc.red("UNSUCCESSFUL")} on ${PATHS.join(", ")}` +
      pc.dim(`   (whole job ${((performance.now() - t0) / 1000).toFixed(1)} s)`),
  );
  return ok;
}

/** What the driver domain did per frame between two readings of its counters. */
function costOf(a: NetStats, b: NetStats) {
  const frames = b.totals.txFrames - a.totals.txFrames;
  const d = (f: (s: NetStats) => number) => (frames > 0 ? (f(b) - f(a)) / frames : 0);
  return {
    frames,
    copies: d((s) => s.totals.grantCopies),
    notifications: d((s) => s.totals.notificationsSent + s.totals.notificationsReceived),
    lookups: d((s) => s.bridge.lookups),
  };
}

function size(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20} MiB` : bytes >= 1024 ? `${bytes >> 10} KiB` : `${bytes} B`;
}

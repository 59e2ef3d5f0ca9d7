/**
 * `myrixen start` — the main job (`npm start`): boots a virtual cluster on this machine (one
 * host: hypervisor, NIC, driver domain, four guests), runs NAS EP class S on 4 ranks and OSU
 * latency and bandwidth on 2 ranks, on the native and bypass paths, and prints one screen:
 * the comparison with ratios to native and the NAS verification line.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Table from "cli-table3";
import pc from "picocolors";
import type { BenchRow } from "../bench/harness.js";
import { Job } from "../cluster/job.js";
import { Host } from "../host/host.js";
import { resolveProgram } from "./run.js";

const PATHS = ["native", "bypass"] as const;
type Path = (typeof PATHS)[number];

interface NasResult {
  verified: boolean;
  time_s: number;
  mops: number;
}

export async function runMainJob(out: (line: string) => void, err: (line: string) => void): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-start-"));
  const t0 = performance.now();
  const steps = PATHS.length * 3;
  let step = 0;
  const progress = (what: string) => err(pc.dim(`[${++step}/${steps}] ${what}`));
  out(pc.bold("MyriXen: MPI over a cluster of VMs on this machine"));
  out(pc.dim("  one host: hypervisor, emulated MX NIC, driver domain (myrback), guests as worker threads"));
  const host = await Host.start({});
  const nas = new Map<Path, NasResult>();
  const osu = new Map<Path, BenchRow[]>();
  const logs: string[] = [];
  const keep = (rank: number, _s: string, line: string) => logs.push(`[${rank}] ${line}`);
  try {
    for (const path of PATHS) {
      progress(`NAS EP class S on 4 ranks, ${path} path`);
      const file = join(dir, `ep-${path}.json`);
      const job = new Job(host, {
        n: 4,
        path,
        program: resolveProgram("nas-ep"),
        argv: ["--class", "S", "--json", file],
        pages: 4096,
        output: keep,
      });
      const r = await job.run();
      if (r.exitCode !== 0)
        throw new Error(`NAS EP on ${path} failed (exit ${r.exitCode}):\n${logs.slice(-20).join("\n")}`);
      nas.set(path, JSON.parse(readFileSync(file, "utf8")) as NasResult);

      const rows: BenchRow[] = [];
      for (const [bench, sizes] of [
        ["osu-latency", "0:65536"],
        ["osu-bw", "4096:1048576"],
      ] as const) {
        progress(`${bench} on 2 ranks, ${path} path`);
        const f = join(dir, `${bench}-${path}.json`);
        const o = await new Job(host, {
          n: 2,
          path,
          program: resolveProgram(bench),
          argv: ["-m", sizes, "--json", f],
          pages: 4096,
          output: keep,
        }).run();
        if (o.exitCode !== 0) throw new Error(`${bench} on ${path} failed (exit ${o.exitCode})`);
        rows.push(...(JSON.parse(readFileSync(f, "utf8")) as { rows: BenchRow[] }).rows);
      }
      osu.set(path, rows);
    }
  } finally {
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  const table = new Table({
    head: ["", "native", "bypass", "bypass / native", "split"],
    style: pc.isColorSupported ? {} : { head: [], border: [] },
    chars: { mid: "", "left-mid": "", "mid-mid": "", "right-mid": "" },
    colAligns: ["left", "right", "right", "right", "right"],
  });
  const ratio = (b: number, n: number) => (n > 0 ? `${(b / n).toFixed(2)}×` : "—");
  const n = nas.get("native")!;
  const b = nas.get("bypass")!;
  table.push([
    "NAS EP class S, 4 ranks: time",
    `${n.time_s.toFixed(2)} s`,
    `${b.time_s.toFixed(2)} s`,
    ratio(b.time_s, n.time_s),
    "—",
  ]);
  table.push([
    "NAS EP class S, 4 ranks: Mop/s",
    n.mops.toFixed(1),
    b.mops.toFixed(1),
    ratio(b.mops, n.mops),
    "—",
  ]);
  const pick = (path: Path, bench: string, bytes: number) =>
    osu.get(path)!.find((r) => r.bench === bench && r.bytes === bytes)?.median ?? Number.NaN;
  for (const bytes of [8, 4096, 65536]) {
    const nv = pick("native", "osu-latency", bytes);
    const bv = pick("bypass", "osu-latency", bytes);
    table.push([
      `OSU latency ${size(bytes)}`,
      `${nv.toFixed(2)} µs`,
      `${bv.toFixed(2)} µs`,
      ratio(bv, nv),
      "—",
    ]);
  }
  for (const bytes of [65536, 1 << 20]) {
    const nv = pick("native", "osu-bw", bytes);
    const bv = pick("bypass", "osu-bw", bytes);
    table.push([
      `OSU bandwidth ${size(bytes)}`,
      `${nv.toFixed(0)} MB/s`,
      `${bv.toFixed(0)} MB/s`,
      ratio(bv, nv),
      "—",
    ]);
  }
  out("");
  out(table.toString());
  out(pc.dim("  split: the netfront/netback path is not built yet; its column fills in when it lands."));
  const ok = n.verified && b.verified;
  out("");
  out(
    `  NAS EP class S: Verification = ${ok ? pc.green("SUCCESSFUL") : pc.red("UNSUCCESSFUL")} on ${PATHS.join(" and ")}` +
      pc.dim(`   (whole job ${((performance.now() - t0) / 1000).toFixed(1)} s)`),
  );
  return ok;
}

function size(bytes: number): string {
  return bytes >= 1 << 20 ? `${bytes >> 20} MiB` : bytes >= 1024 ? `${bytes >> 10} KiB` : `${bytes} B`;
}

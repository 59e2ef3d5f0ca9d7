/**
 * The toolstack's live views: `myrixen top` (rates per domain and per path, refreshed, like
 * `xl top`) and `myrixen dashboard` (the web page, src/dashboard/).
 */
import { createLogger } from "../cluster/log.js";
import {
  connectObserver,
  type ObserveTarget,
  ObserveUsageError,
  observeTargets,
} from "../cluster/observe.js";
import {
  type HostRates,
  type HostSnapshot,
  rates,
  type TrafficPath,
  withSiPrefix,
} from "../host/snapshot.js";
import {
  type CommonOptions,
  connectAll,
  hostTitle,
  inspectionHostProblem,
  out,
  ToolstackUsageError,
  table,
} from "./toolstack-client.js";
import { RuntimeFailure } from "./usage.js";

const TOP_PATHS: readonly TrafficPath[] = ["bypass", "split", "native"];

function topFrame(s: HostSnapshot, r: HostRates, only: TrafficPath | undefined): string[] {
  const lines = [`${hostTitle(s)}  interval ${r.dt.toFixed(1)} s`];
  const rows = [
    [
      "Name",
      "ID",
      "State",
      "Path",
      "NIC msg/s",
      "Fast B/s",
      "vif frames/s",
      "vif B/s",
      "hypercalls/s",
      "grant ops/s",
      "evtchn/s",
    ],
  ];
  for (const d of s.domains) {
    const x = r.domains[d.domid];
    if (!x) continue;
    if (only && x.path !== only && x.path !== "both") continue;
    rows.push([
      d.name,
      String(d.domid),
      d.state,
      x.path,
      withSiPrefix(x.nicMsgs),
      withSiPrefix(x.bypassBytes),
      withSiPrefix(x.vifFrames),
      withSiPrefix(x.splitBytes),
      withSiPrefix(x.hypercalls),
      withSiPrefix(x.grantOps),
      withSiPrefix(x.evtchnSends),
    ]);
  }
  lines.push(...table(rows));
  lines.push("");
  const prow = [
    ["Path", "Domains", "Msgs/s", "Bytes/s", "hypercalls/s", "grant ops/s", "evtchn/s", "latency (median)"],
  ];
  for (const p of TOP_PATHS) {
    if (only && p !== only) continue;
    const x = r.paths[p];
    const lat = [...r.latencyUs[p]].sort((a, b) => a - b);
    const med = lat.length ? lat[Math.floor(lat.length / 2)] : undefined;
    prow.push([
      p,
      String(x.domains),
      withSiPrefix(x.msgs),
      withSiPrefix(x.bytes),
      withSiPrefix(x.hypercalls),
      withSiPrefix(x.grantOps),
      withSiPrefix(x.evtchnSends),
      med === undefined ? "-" : med < 1000 ? `${med.toFixed(1)} µs` : `${(med / 1000).toFixed(2)} ms`,
    ]);
  }
  lines.push(...table(prow));
  lines.push(
    `driver domain: ${withSiPrefix(r.backendRequests)} myrback requests/s, ${withSiPrefix(r.netbackGrantCopies)} netback grant copies/s, ${withSiPrefix(r.netbackNotifications)} notifications/s; NIC: ${withSiPrefix(r.nicSends)} sends/s, ${withSiPrefix(r.nicPulls)} pulls/s, ${withSiPrefix(r.nicFramesTx)} frames out/s`,
  );
  return lines;
}

export async function topCommand(
  o: CommonOptions & { interval: number; iterations?: number; path?: string },
): Promise<number> {
  if (o.path !== undefined && !TOP_PATHS.includes(o.path as TrafficPath))
    throw new ToolstackUsageError(`--path must be one of ${TOP_PATHS.join(", ")}, got "${o.path}"`, "top");
  const only = o.path as TrafficPath | undefined;
  const { hosts, failed } = await connectAll("top", o);
  if (hosts.length === 0) return 1;
  const prev = new Map<string, HostSnapshot>();
  let stop = false;
  const onSig = () => {
    stop = true;
  };
  process.once("SIGINT", onSig);
  let code = failed ? 1 : 0;
  const tty = process.stdout.isTTY && !o.json;
  try {
    for (let i = 0; !stop && (o.iterations === undefined || i <= o.iterations); i++) {
      const frame: string[] = [];
      const json: unknown[] = [];
      for (const { target, rh } of hosts) {
        try {
          const s = await rh.snapshot();
          const p = prev.get(target.label);
          prev.set(target.label, s);
          if (!p) continue;
          const r = rates(p, s);
          if (o.json) json.push({ host: target.label, time: s.time, rates: r });
          else frame.push(...topFrame(s, r, only), "");
        } catch (e) {
          process.stderr.write(`myrixen top: ${(e as Error).message}\n`);
          code = 1;
          stop = true;
        }
      }
      if (i > 0 && !stop) {
        if (o.json) out(JSON.stringify(json));
        else {
          if (tty) process.stdout.write("\x1b[H\x1b[2J");
          for (const l of frame) out(l);
        }
      }
      if (o.iterations !== undefined && i >= o.iterations) break;
      if (!stop) await new Promise((r) => setTimeout(r, o.interval * 1000));
    }
  } finally {
    process.off("SIGINT", onSig);
    for (const { rh } of hosts) rh.close();
  }
  return code;
}

export async function dashboardCommand(o: {
  host?: string;
  keyFile?: string;
  listen?: { host: string; port: number };
  interval?: number;
}): Promise<number> {
  const { Dashboard } = await import("../dashboard/server.js");
  const { remoteSource } = await import("../dashboard/sources.js");
  let targets: ObserveTarget[];
  let from: string;
  try {
    ({ targets, from } = observeTargets({ host: o.host, keyFile: o.keyFile }));
  } catch (e) {
    if (e instanceof ObserveUsageError) throw inspectionHostProblem(e, "dashboard");
    throw e;
  }
  // The first connection says at once whether the hosts are there.
  const first = await Promise.allSettled(targets.map((t) => connectObserver(t, "myrixen dashboard")));
  const bad = first.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
  for (const r of first) if (r.status === "fulfilled") r.value.close();
  if (bad.length === targets.length) {
    for (const m of bad) process.stderr.write(`myrixen dashboard: ${m}\n`);
    return 1;
  }
  const log = createLogger({ level: "warn", format: "text" });
  const listen = o.listen ?? { host: "127.0.0.1", port: 7480 };
  const d = await Dashboard.start({
    host: listen.host,
    port: listen.port,
    sources: targets.map((t) => remoteSource({ ...t.address, label: t.label }, t.key)),
    // Beyond the loopback, a browser proves the key of the hosts it watches.
    key: targets[0].key,
    log,
    intervalMs: o.interval,
  }).catch((e: Error) => {
    // Its message names the address and what to do ("already in use ...: give another port").
    throw new RuntimeFailure(e.message, "dashboard");
  });
  process.stderr.write(`myrixen dashboard: watching ${targets.map((t) => t.label).join(", ")} (${from})\n`);
  for (const m of bad) process.stderr.write(`myrixen dashboard: ${m} (retrying)\n`);
  out(`myrixen dashboard: ${d.url}${d.authRequired ? " (asks for the cluster key)" : ""}`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
  await d.stop();
  return 0;
}

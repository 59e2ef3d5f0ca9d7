/**
 * The toolstack commands, in the spirit of Xen's `xl` and `xenstore-ls`, against a running
 * `myrixen host` or the embedded cluster of a running `myrixen start`/`run` (see
 * src/cluster/observe.ts for how the hosts and the key are found):
 *
 *   myrixen list [DOMAIN]        domains: id, name, memory, vCPU thread, state, uptime, MX endpoints
 *   myrixen info                 host, NIC, links, quotas, versions, backend counters
 *   myrixen xenstore-ls [PATH]   the XenStore tree
 *   myrixen endpoints            per endpoint: owner, path, peers, queue depths, regions, traffic
 *   myrixen top                  rates per domain and per path, refreshed
 *   myrixen dashboard            the live dashboard for those hosts
 *
 * Each takes --host ADDR:PORT[,...], --key-file FILE and (but dashboard) --json; every --json
 * output is an array with one object per host. A host that cannot be reached is one line on
 * stderr and exit code 1; bad usage is exit code 2.
 */
import { type Command, InvalidArgumentError } from "commander";
import { createLogger } from "../cluster/log.js";
import {
  connectObserver,
  type ObserveTarget,
  ObserveUsageError,
  observeTargets,
} from "../cluster/observe.js";
import type { RemoteHost } from "../cluster/remote.js";
import {
  bytes,
  type DomainSnapshot,
  duration,
  type HostRates,
  type HostSnapshot,
  rates,
  type TrafficPath,
  withSiPrefix,
} from "../host/snapshot.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";

export class ToolstackUsageError extends Error {}

interface CommonOptions {
  host?: string;
  keyFile?: string;
  json?: boolean;
}

const out = (line: string) => process.stdout.write(`${line}\n`);

/** Pads columns; numbers (and cells starting with a digit) right-aligned. */
export function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const r of rows)
    r.forEach((c, i) => {
      widths[i] = Math.max(widths[i] ?? 0, c.length);
    });
  return rows.map((r) =>
    r
      .map((c, i) =>
        i > 0 && /^[\d.]/.test(c) && i < r.length - 1 ? c.padStart(widths[i]) : c.padEnd(widths[i]),
      )
      .join("  ")
      .trimEnd(),
  );
}

/** Connects to every target; reports each failure in one line. Exit code 1 if any failed. */
async function connectAll(
  cmd: string,
  o: CommonOptions,
): Promise<{ hosts: { target: ObserveTarget; rh: RemoteHost }[]; failed: boolean }> {
  let targets: ObserveTarget[];
  try {
    targets = observeTargets({ host: o.host, keyFile: o.keyFile }).targets;
  } catch (e) {
    if (e instanceof ObserveUsageError) throw new ToolstackUsageError(e.message);
    throw e;
  }
  const results = await Promise.allSettled(targets.map((t) => connectObserver(t, `myrixen ${cmd}`)));
  const hosts: { target: ObserveTarget; rh: RemoteHost }[] = [];
  let failed = false;
  results.forEach((r, i) => {
    if (r.status === "fulfilled") hosts.push({ target: targets[i], rh: r.value });
    else {
      failed = true;
      process.stderr.write(`myrixen ${cmd}: ${(r.reason as Error).message}\n`);
    }
  });
  return { hosts, failed };
}

async function snapshots(
  cmd: string,
  o: CommonOptions,
): Promise<{ snaps: { label: string; snap: HostSnapshot }[]; failed: boolean }> {
  const { hosts, failed } = await connectAll(cmd, o);
  let bad = failed;
  const snaps: { label: string; snap: HostSnapshot }[] = [];
  try {
    for (const { target, rh } of hosts) {
      try {
        snaps.push({ label: target.label, snap: await rh.snapshot() });
      } catch (e) {
        bad = true;
        process.stderr.write(`myrixen ${cmd}: ${(e as Error).message}\n`);
      }
    }
  } finally {
    for (const { rh } of hosts) rh.close();
  }
  return { snaps, failed: bad };
}

function hostTitle(s: HostSnapshot): string {
  return `${s.host.name} (NIC ${s.host.nicId}${s.host.control ? `, ${s.host.control}` : ""}${s.host.embedded ? `, ${s.host.embedded}` : ""})`;
}

function endpointsOf(s: HostSnapshot, d: DomainSnapshot): string {
  const eps = s.endpoints.filter((e) => e.domid === d.domid).map((e) => `ep${e.id} ${e.path}`);
  const vif = d.vif?.connected ? ["vif"] : [];
  return [...eps, ...vif].join(", ") || "-";
}

/** Finds DOMAIN (an id or a name) on a host; undefined: none. */
function findDomain(s: HostSnapshot, which: string): DomainSnapshot | undefined {
  const live = s.domains.filter((d) => d.endedAt === undefined);
  return /^\d+$/.test(which)
    ? (live.find((d) => d.domid === Number(which)) ?? s.domains.find((d) => d.domid === Number(which)))
    : (live.find((d) => d.name === which) ?? s.domains.find((d) => d.name === which));
}

function noDomain(s: HostSnapshot, which: string): string {
  return `no domain ${JSON.stringify(which)} on host ${s.host.name}; its domains: ${s.domains.map((d) => `${d.domid} (${d.name})`).join(", ")}`;
}

export async function listCommand(domain: string | undefined, o: CommonOptions): Promise<number> {
  const { snaps, failed } = await snapshots("list", o);
  let code = failed ? 1 : 0;
  const json: unknown[] = [];
  for (const { snap: s } of snaps) {
    let doms = s.domains;
    if (domain !== undefined) {
      const d = findDomain(s, domain);
      if (!d) {
        process.stderr.write(`myrixen list: ${noDomain(s, domain)}\n`);
        code = 1;
        continue;
      }
      doms = [d];
    }
    if (o.json) {
      json.push({
        host: s.host,
        domains: doms.map((d) => ({
          domid: d.domid,
          name: d.name,
          kind: d.kind,
          state: d.state,
          memoryKiB: d.memoryKiB,
          thread: d.thread,
          uptimeS: d.uptimeS,
          endedAt: d.endedAt,
          devices: d.devices,
          job: d.job,
          endpoints: s.endpoints.filter((e) => e.domid === d.domid).map((e) => ({ id: e.id, path: e.path })),
          vif: d.vif ? { connected: d.vif.connected } : undefined,
        })),
      });
      continue;
    }
    out(hostTitle(s));
    const rows = [["Name", "ID", "Mem(MiB)", "Thread", "State", "Uptime", "MX endpoints", "Job"]];
    for (const d of doms)
      rows.push([
        d.name,
        String(d.domid),
        (d.memoryKiB / 1024).toFixed(1),
        String(d.thread),
        d.state,
        duration(d.uptimeS),
        endpointsOf(s, d),
        d.job ? `${d.job.job} rank ${d.job.rank}` : "",
      ]);
    for (const l of table(rows)) out(l);
  }
  if (o.json) out(JSON.stringify(json, null, 2));
  return code;
}

export async function infoCommand(o: CommonOptions): Promise<number> {
  const { snaps, failed } = await snapshots("info", o);
  if (o.json) {
    out(
      JSON.stringify(
        snaps.map(({ snap: s }) => ({
          host: s.host,
          limits: s.limits,
          nic: s.nic,
          backend: s.backend,
          net: s.net,
          jobs: s.jobs,
          xenstore: s.xenstore,
          domains: s.domains.length,
        })),
        null,
        2,
      ),
    );
    return failed ? 1 : 0;
  }
  snaps.forEach(({ snap: s }, i) => {
    if (i > 0) out("");
    const running = s.domains.filter((d) => d.state === "running" || d.state === "booting");
    const b = s.backend;
    const n = s.net;
    const g = s.nic.counters;
    const lines: [string, string][] = [
      ["host", `${s.host.name} (hostname ${s.host.hostname}, pid ${s.host.pid})`],
      ["control", s.host.control ?? "-"],
      ["link", s.host.link ?? "(no NIC link listener)"],
      ...(s.host.embedded ? ([["serves", `inspection only: ${s.host.embedded}`]] as [string, string][]) : []),
      ...(s.host.slots !== undefined ? ([["slots", String(s.host.slots)]] as [string, string][]) : []),
      ["uptime", duration(s.host.uptimeS)],
      [
        "versions",
        `myrixen ${s.host.versions.myrixen}, control protocol ${s.host.versions.wire}, snapshot ${s.host.versions.snapshot}, node ${s.host.versions.node}`,
      ],
      [
        "nic",
        `NIC ${s.host.nicId}: ${s.nic.openEndpoints.length}/${s.nic.maxEndpoints} endpoints open, ${s.nic.regions} regions, Ethernet port ${s.nic.etherPort ? "open" : "closed"}`,
      ],
      [
        "links",
        s.nic.links.map((l) => `NIC ${l.peerNic} ${l.state} (${l.reconnects} reconnects)`).join(", ") ||
          "none",
      ],
      [
        "quotas",
        `per domain: ${s.limits.endpointsPerDomain} endpoints, ${s.limits.regionsPerDomain} regions, ${bytes(s.limits.registeredBytesPerDomain)} registered`,
      ],
      [
        "domains",
        `${s.domains.length} (${running.filter((d) => d.kind === "guest").length} running guests, ${running.filter((d) => d.kind === "native").length} native processes)`,
      ],
      [
        "myrback",
        `${b.requests} requests (${b.errors} errors), ${b.endpoints} endpoints, ${b.channels} channels, ${b.regions} regions, ${b.grantsInUse} grants in use, ${b.badKeys} bad keys`,
      ],
      [
        "netback",
        `${n.totals.vifsConnected} vifs connected, ${n.totals.txFrames + n.totals.rxFrames} frames, ${n.totals.grantCopies} grant copies, ${n.totals.notificationsSent} notifications sent`,
      ],
      ["bridge", `${n.bridge.lookups} lookups, ${n.bridge.entries} MAC entries, ${n.bridge.ports} ports`],
      [
        "nic counters",
        `${g.descriptors} descriptors, ${g.sends} sends, ${g.recvs} receives, ${g.pulls} pulls, ${g.frames_tx}/${g.frames_rx} frames out/in, ${g.errors} errors`,
      ],
      ["xenstore", `${s.xenstore.nodes} nodes`],
      ["jobs", s.jobs.map((j) => `${j.job} (${j.ranks.length} ranks)`).join(", ") || "none"],
    ];
    for (const [k, v] of lines) out(`${k.padEnd(13)}: ${v}`);
  });
  return failed ? 1 : 0;
}

function printTree(n: XenStoreTreeNode, depth: number, perms: boolean): void {
  for (const c of n.children) {
    out(`${" ".repeat(depth)}${c.name} = ${JSON.stringify(c.value)}${perms ? `  (${c.perms})` : ""}`);
    printTree(c, depth + 1, perms);
  }
}

export async function xenstoreCommand(
  path: string | undefined,
  o: CommonOptions & { perms?: boolean },
): Promise<number> {
  const p = path ?? "/";
  if (!p.startsWith("/")) throw new ToolstackUsageError(`PATH must be absolute (start with /), got "${p}"`);
  const { hosts, failed } = await connectAll("xenstore-ls", o);
  let code = failed ? 1 : 0;
  const json: unknown[] = [];
  try {
    for (const { target, rh } of hosts) {
      try {
        const t = await rh.xenstore(p);
        if (o.json)
          json.push({ host: target.label, path: p, tree: t.tree, nodes: t.nodes, truncated: t.truncated });
        else {
          if (hosts.length > 1) out(`${target.label}:`);
          printTree(t.tree, 0, o.perms ?? false);
          if (t.truncated)
            process.stderr.write(
              `myrixen xenstore-ls: cut at ${t.nodes} nodes; list a deeper path for the rest\n`,
            );
        }
      } catch (e) {
        code = 1;
        process.stderr.write(`myrixen xenstore-ls: host ${target.label}: ${(e as Error).message}\n`);
      }
    }
  } finally {
    for (const { rh } of hosts) rh.close();
  }
  if (o.json) out(JSON.stringify(json, null, 2));
  return code;
}

export async function endpointsCommand(o: CommonOptions & { domain?: string }): Promise<number> {
  const { snaps, failed } = await snapshots("endpoints", o);
  let code = failed ? 1 : 0;
  const json: unknown[] = [];
  for (const { snap: s } of snaps) {
    let eps = s.endpoints;
    if (o.domain !== undefined) {
      const d = findDomain(s, o.domain);
      if (!d) {
        process.stderr.write(`myrixen endpoints: ${noDomain(s, o.domain)}\n`);
        code = 1;
        continue;
      }
      eps = eps.filter((e) => e.domid === d.domid);
    }
    if (o.json) {
      json.push({ host: s.host, endpoints: eps });
      continue;
    }
    out(hostTitle(s));
    const rows = [
      [
        "EP",
        "Dom",
        "Owner",
        "Path",
        "Peers (co-resident)",
        "Send q",
        "Event q",
        "Recv area",
        "Regions",
        "NIC msgs in/out",
        "NIC bytes in/out",
        "Channel backlog in/out",
      ],
    ];
    for (const e of eps) {
      const n = e.nic;
      rows.push([
        String(e.id),
        String(e.domid),
        e.owner,
        e.path,
        e.peers.map((p) => `ep${p.endpoint}@dom${p.domid} ${p.via}`).join(", ") || "-",
        `${e.queues.sendQueue}/${e.queues.sendQueueSize}`,
        `${e.queues.eventQueue}/${e.queues.eventQueueSize}`,
        bytes(e.queues.recvBytes),
        `${e.regions} (${bytes(e.registeredBytes)})`,
        `${(n.recvs ?? 0) + (n.pulls ?? 0)}/${n.sends ?? 0}`,
        `${bytes((n.recv_bytes ?? 0) + (n.pull_bytes ?? 0))}/${bytes(n.send_bytes ?? 0)}`,
        e.channels.length
          ? `${bytes(e.channels.reduce((a, c) => a + c.backlogIn, 0))}/${bytes(e.channels.reduce((a, c) => a + c.backlogOut, 0))}`
          : "-",
      ]);
    }
    if (eps.length === 0) out("  no MX endpoints on this host's NIC");
    else for (const l of table(rows)) out(l);
  }
  if (o.json) out(JSON.stringify(json, null, 2));
  return code;
}

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
    throw new ToolstackUsageError(`--path must be one of ${TOP_PATHS.join(", ")}, got "${o.path}"`);
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
    if (e instanceof ObserveUsageError) throw new ToolstackUsageError(e.message);
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

function positive(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive number, got "${v}"`);
    return n;
  };
}

const HOST_HELP =
  "the hosts' control addresses, host[:port],... (default: the newest running `myrixen start`/`run` of this user, else 127.0.0.1:7470)";
const KEY_HELP = "the cluster key file (default: $MYRIXEN_KEY_FILE, then ~/.config/myrixen/cluster.key)";

/** Adds list, info, xenstore-ls, endpoints, top and dashboard to the program. */
export function configureToolstack(
  program: Command,
  run: (f: () => Promise<number>) => Promise<void>,
  parseListen: (v: string) => { host: string; port: number },
): void {
  const common = (c: Command, json = true) => {
    c.option("--host <addr:port,...>", HOST_HELP).option("--key-file <file>", KEY_HELP);
    if (json) c.option("--json", "print JSON (an array, one object per host)");
    return c;
  };
  common(
    program
      .command("list")
      .description(
        "the domains of a running host: id, name, memory, vCPU thread, state, uptime, MX endpoints",
      )
      .argument("[domain]", "only this domain (id or name)"),
  ).action((domain: string | undefined, o: CommonOptions) => run(() => listCommand(domain, o)));
  common(
    program.command("info").description("a running host: its NIC, links, quotas, versions and counters"),
  ).action((o: CommonOptions) => run(() => infoCommand(o)));
  common(
    program
      .command("xenstore-ls")
      .description("the XenStore tree of a running host (as xenstore-ls)")
      .argument("[path]", "the subtree to list (default /)")
      .option("-p, --perms", "show each node's permissions"),
  ).action((path: string | undefined, o: CommonOptions & { perms?: boolean }) =>
    run(() => xenstoreCommand(path, o)),
  );
  common(
    program
      .command("endpoints")
      .description("the MX endpoints of a running host: owner, path, peers, queue depths, regions, traffic")
      .option("--domain <domain>", "only this domain's (id or name)"),
  ).action((o: CommonOptions & { domain?: string }) => run(() => endpointsCommand(o)));
  common(
    program
      .command("top")
      .description("rates per domain and per path, refreshed (Ctrl-C stops)")
      .option("--interval <s>", "seconds between refreshes", positive("--interval"), 1)
      .option("-n, --iterations <n>", "stop after this many refreshes", (v: string) => {
        if (!/^\d+$/.test(v) || Number(v) < 1)
          throw new InvalidArgumentError(`-n must be a positive integer, got "${v}"`);
        return Number(v);
      })
      .option("--path <path>", "only domains whose traffic is on this path: bypass | split | native"),
  ).action((o: CommonOptions & { interval: number; iterations?: number; path?: string }) =>
    run(() => topCommand(o)),
  );
  common(
    program
      .command("dashboard")
      .description("serve the live dashboard (a web page) of running hosts")
      .option(
        "--listen <addr:port>",
        "where the page is served (default 127.0.0.1:7480; any other address asks for the cluster key)",
        parseListen,
      )
      .option("--interval <ms>", "milliseconds between updates (default 500)", positive("--interval")),
    false,
  ).action(
    (o: { host?: string; keyFile?: string; listen?: { host: string; port: number }; interval?: number }) =>
      run(() => dashboardCommand(o)),
  );
}

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
 * (top and dashboard live in live.ts, what all share in toolstack-client.ts, the flags and
 * help of all six in toolstack-commands.ts.)
 *
 * Each takes --host ADDR:PORT[,...], --key-file FILE and (but dashboard) --json; every --json
 * output is an array with one object per host. A host that cannot be reached is one line on
 * stderr and exit code 1; bad usage is exit code 2.
 */
import { bytes, type DomainSnapshot, duration, type HostSnapshot } from "../host/snapshot.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";

import {
  type CommonOptions,
  connectAll,
  hostTitle,
  out,
  snapshots,
  ToolstackUsageError,
  table,
} from "./toolstack-client.js";

export { dashboardCommand, topCommand } from "./live.js";
export { ToolstackUsageError, table };

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

/**
 * Each host as a line names it: its name, with its control address (as given to --host) when
 * another of the hosts has the same name (every host of one machine has that machine's name).
 */
function hostNames(snaps: readonly { label: string; snap: HostSnapshot }[]): Map<HostSnapshot, string> {
  return new Map(
    snaps.map(({ label, snap }) => [
      snap,
      snaps.filter((x) => x.snap.host.name === snap.host.name).length > 1
        ? `${snap.host.name} (${label})`
        : snap.host.name,
    ]),
  );
}

/**
 * The hosts to show and, with DOMAIN, that domain on each host that has it. With several
 * hosts a domain is on some of them (a job's ranks are spread): it is found if any has it.
 * Only if none has it, one line per host says so (and its domains); `missing` is then true.
 */
function withDomain(
  cmd: string,
  snaps: readonly { label: string; snap: HostSnapshot }[],
  which: string | undefined,
): { shown: { s: HostSnapshot; d?: DomainSnapshot }[]; missing: boolean } {
  if (which === undefined) return { shown: snaps.map(({ snap }) => ({ s: snap })), missing: false };
  const shown = snaps.flatMap(({ snap }) => {
    const d = findDomain(snap, which);
    return d ? [{ s: snap, d }] : [];
  });
  if (shown.length > 0 || snaps.length === 0) return { shown, missing: false };
  const names = hostNames(snaps);
  for (const { snap: s } of snaps)
    process.stderr.write(
      `myrixen ${cmd}: no domain ${JSON.stringify(which)} on host ${names.get(s)}; its domains: ${s.domains.map((d) => `${d.domid} (${d.name})`).join(", ")}\n`,
    );
  return { shown, missing: true };
}

export async function listCommand(domain: string | undefined, o: CommonOptions): Promise<number> {
  const { snaps, failed } = await snapshots("list", o);
  const { shown, missing } = withDomain("list", snaps, domain);
  const code = failed || missing ? 1 : 0;
  const json: unknown[] = [];
  for (const { s, d } of shown) {
    const doms = d ? [d] : s.domains;
    if (o.json) {
      json.push({
        host: s.host,
        domains: doms.map((d) => ({
          domid: d.domid,
          name: d.name,
          kind: d.kind,
          state: d.state,
          memoryKiB: d.memoryKiB,
          buffersKiB: d.buffersKiB,
          heapKiB: d.heapKiB,
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
    const rows = [
      ["Name", "ID", "Mem(MiB)", "Heap(MiB)", "Buf(MiB)", "Thread", "State", "Uptime", "MX endpoints", "Job"],
    ];
    for (const d of doms)
      rows.push([
        d.name,
        String(d.domid),
        (d.memoryKiB / 1024).toFixed(1),
        d.heapKiB === undefined ? "-" : (d.heapKiB / 1024).toFixed(1),
        d.buffersKiB === undefined ? "-" : (d.buffersKiB / 1024).toFixed(1),
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
        `${b.requests} requests (${b.errors} errors), ${b.endpoints} endpoints, ${b.channels} channels (${b.channelBuffers} buffers, ${b.channelsRefused} refused for a quota), ${b.regions} regions, ${b.grantsInUse} grants in use, ${b.badKeys} bad keys${b.intrPagesReplaced ? `, ${b.intrPagesReplaced} interrupt pages replaced (a former peer kept one mapped)` : ""}${b.driverEventsRefused ? `, ${b.driverEventsRefused} driver events refused (an endpoint not consuming events)` : ""}${b.ringSlicesCut ? `, ${b.ringSlicesCut} ring turns cut at their time slice (a guest asking for costly work)` : ""}`,
      ],
      [
        "netback",
        `${n.totals.vifsConnected} vifs connected, ${n.totals.txFrames + n.totals.rxFrames} frames, ${n.totals.grantCopies} grant copies, ${n.totals.notificationsSent} notifications sent`,
      ],
      [
        "bridge",
        `${n.bridge.lookups} lookups, ${n.bridge.entries} MAC entries, ${n.bridge.ports} ports, ${n.bridge.floods} floods (${n.bridge.floodsLimited} over a port's flood rate, dropped); MX frames: ${n.bridge.mxSteered} to their endpoint's owner, ${n.bridge.mxRefused} refused`,
      ],
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
  if (!p.startsWith("/"))
    throw new ToolstackUsageError(`PATH must be absolute (start with /), got "${p}"`, "xenstore-ls");
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
  const { shown, missing } = withDomain("endpoints", snaps, o.domain);
  const code = failed || missing ? 1 : 0;
  const json: unknown[] = [];
  for (const { s, d } of shown) {
    const eps = d ? s.endpoints.filter((e) => e.domid === d.domid) : s.endpoints;
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

/**
 * `myrixen host`: runs one host of a cluster (hypervisor, driver domain, NIC) and serves
 * launchers until Ctrl-C or SIGTERM, which stop it cleanly. Flags override the config file;
 * both are checked before anything starts (bad input: exit code 2, one line per problem),
 * the cluster key file too (auth.ts: --key-file, keyFile, MYRIXEN_KEY_FILE, or the default
 * file, generated on first use).
 */
import { hostname, networkInterfaces } from "node:os";
import { type Command, InvalidArgumentError, Option } from "commander";
import { type ClusterKey, KEY_FILE_ENV, KeyFileError, loadClusterKey } from "../cluster/auth.js";
import type { HostFlags } from "../cluster/config.js";
import { ConfigError, LIMITS } from "../cluster/config-limits.js";
import type { HostDaemon } from "../cluster/host-daemon.js";
import {
  DEFAULT_CONTROL_PORT,
  formatAddress,
  type HostAddress,
  type HostEntry,
  HostListError,
  parseAddress,
  parsePeerList,
} from "../cluster/hostfile.js";
import { createLogger, LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../cluster/log.js";
import type { Dashboard } from "../dashboard/server.js";

export { ConfigError };

function intFlag(name: string, [min, max]: readonly [number, number]) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max)
      throw new InvalidArgumentError(`${name} must be a whole number in ${min}..${max}, got "${v}"`);
    return n;
  };
}

/**
 * A dashboard's address flag (`--dashboard [addr:port]`, `dashboard --listen addr:port`): a
 * port alone binds 127.0.0.1; port 0 picks a free one. Its errors name `flag`, the one typed.
 */
export function dashboardAddressFlag(flag: string) {
  return (v: string): { host: string; port: number } => {
    if (/^\d+$/.test(v)) {
      const port = Number(v);
      if (port > 65535) throw new InvalidArgumentError(`${flag}: port ${v} is not 0..65535`);
      return { host: "127.0.0.1", port };
    }
    const a = parseAddress(v, 7480, true);
    if (typeof a === "string") throw new InvalidArgumentError(`${flag}: ${a}`);
    return a;
  };
}

/** `--dashboard [addr:port]`. */
export const parseDashboardFlag = dashboardAddressFlag("--dashboard");

const LOOPBACK = new Set(["localhost", "127.0.0.1", "::1"]);

/**
 * The peer that is this host itself: its control port at the address it listens on (or
 * localhost for a loopback listener, or, listening on every address, this machine's name,
 * localhost or one of its addresses); undefined if none is. A name that only DNS says is this
 * machine is not found here (its link then says that it has this host's NIC id).
 */
function ownAddressAmong(peers: readonly HostEntry[], listen: HostAddress): HostEntry | undefined {
  if (listen.port === 0) return undefined;
  const wildcard = listen.host === "0.0.0.0" || listen.host === "::" || listen.host === "";
  const local = new Set(
    [
      hostname(),
      ...Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address)),
    ].map((h) => h.toLowerCase()),
  );
  return peers.find((p) => {
    if (p.port !== listen.port) return false;
    const h = p.host.toLowerCase();
    const l = listen.host.toLowerCase();
    if (h === l) return true;
    if (LOOPBACK.has(l)) return h === "localhost" || (l === "localhost" && LOOPBACK.has(h));
    return wildcard && (LOOPBACK.has(h) || local.has(h));
  });
}

interface HostCliOptions {
  listen?: HostFlags["listen"];
  linkPort?: number;
  nicId?: number;
  slots?: number;
  /** --peers as given: checked with the config file (hostCommand). */
  peers?: string;
  maxEndpoints?: number;
  maxRanks?: number;
  maxGuestMb?: number;
  maxLinks?: number;
  maxLinksPerAddress?: number;
  config?: string;
  logLevel?: LogLevel;
  logFormat?: LogFormat;
  keyFile?: string;
  dashboard?: { host: string; port: number } | true;
}

/** Fills in `myrixen host` (the command object comes from main.ts, so it inherits its settings). */
export function configureHostCommand(cmd: Command): Command {
  return cmd
    .description("run a host (hypervisor, driver domain, NIC) that launchers start ranks on")
    .option(
      "--listen <addr:port>",
      `control address launchers connect to (default 127.0.0.1:${DEFAULT_CONTROL_PORT}); ` +
        "0.0.0.0 or [::] exposes it to the network — only clients that prove the cluster key are served; " +
        'port 0 picks a free port (logged in the "host ready" line)',
      (v: string) => {
        const a = parseAddress(v, DEFAULT_CONTROL_PORT, true);
        if (typeof a === "string") throw new InvalidArgumentError(`--listen: ${a}`);
        return a;
      },
    )
    .option(
      "--link-port <port>",
      "where the NIC accepts links from other hosts' NICs, on the --listen address (default: control port + 1; 0: a free port)",
      intFlag("--link-port", LIMITS.linkPort),
    )
    .option(
      "--nic-id <n>",
      "this host's NIC id, unique in the cluster (u32; default: derived from the hostname and control port, and logged)",
      intFlag("--nic-id", LIMITS.nicId),
    )
    .option(
      "--slots <n>",
      "ranks a launcher places here before the host counts as full (default: CPU count)",
      intFlag("--slots", LIMITS.slots),
    )
    .option(
      "--peers <list>",
      `other hosts' control addresses, host[:port],... (port default ${DEFAULT_CONTROL_PORT}): link this NIC to theirs on start and keep retrying`,
    )
    .option(
      "--max-endpoints <n>",
      "NIC endpoint contexts (default 32)",
      intFlag("--max-endpoints", LIMITS.maxEndpoints),
    )
    .option(
      "--max-ranks <n>",
      "ranks it runs at once, over every job and launcher; a start beyond is refused before any rank starts (default 4 per slot)",
      intFlag("--max-ranks", LIMITS.maxRanks),
    )
    .option(
      "--max-guest-mb <MiB>",
      "guest RAM (--pages × 4 KiB per rank) it commits to running ranks; a start beyond is refused (default half of this machine's RAM)",
      intFlag("--max-guest-mb", LIMITS.maxGuestMb),
    )
    .option(
      "--max-links <n>",
      "other hosts' NICs this NIC keeps linked, counting those linked in the last 10 min (default 1024)",
      intFlag("--max-links", LIMITS.maxLinks),
    )
    .option(
      "--max-links-per-address <n>",
      "the same from one address, that is one machine's hosts (default 32)",
      intFlag("--max-links-per-address", LIMITS.maxLinksPerAddress),
    )
    .option(
      "--key-file <file>",
      `the cluster key (at least 32 bytes, mode 600) that launchers and other hosts' NICs must prove; ` +
        `default: keyFile in --config, then $${KEY_FILE_ENV}, then ~/.config/myrixen/cluster.key ` +
        "(under $XDG_CONFIG_HOME if set; generated on first use)",
    )
    .option("--config <file>", "JSON settings file; flags given here override it (fields below)")
    .option(
      "--dashboard [addr:port]",
      "also serve the live dashboard (default 127.0.0.1:7480; on another address it asks for the cluster key)",
      parseDashboardFlag,
    )
    .addOption(
      new Option("--log-level <level>", "least severe log lines shown (default info)").choices(LOG_LEVELS),
    )
    .addOption(
      new Option(
        "--log-format <format>",
        "json: one JSON object per line on stderr (time, level, msg, fields); text: readable lines (default json)",
      ).choices(LOG_FORMATS),
    )
    .addHelpText(
      "after",
      "\nConfig file (every field optional; an unknown or wrong field is an error naming it):\n" +
        '  { "listen": "0.0.0.0:7470", "linkPort": 7471, "nicId": 12, "slots": 4,\n' +
        '    "peers": ["node2:7470", "node3"], "maxEndpoints": 64, "maxRanks": 16, "maxGuestMb": 8192,\n' +
        '    "logLevel": "info", "logFormat": "json",\n' +
        '    "keyFile": "cluster.key", "qos": { "weight": 2, "tx": { "bytesPerSec": 500e6 } } }\n' +
        "  (keyFile: relative to the config file; qos: the default weight and caps of the guests it starts)\n" +
        "\nA job's start is admitted whole or refused, before any of its ranks starts, when the ranks\n" +
        "running here (over every launcher) would pass --max-ranks or their guest RAM --max-guest-mb;\n" +
        "the refusal names the limit. A rank's share is given back when it exits.\n" +
        "\nEvery host of a cluster and every launcher that uses it hold the same key file; connections\n" +
        "and NIC links that cannot prove it are refused and logged.\n" +
        "\nCtrl-C or SIGTERM stops the host cleanly: every job's ranks are destroyed, the NIC stopped,\n" +
        "sockets closed. Launchers (myrixen run --hosts/--hostfile, or inside Slurm) connect to the\n" +
        "control port; hosts link their NICs to each other when a job spans them.",
    )
    .action(async (o: HostCliOptions) => {
      process.exitCode = await hostCommand(o);
    });
}

export async function hostCommand(o: HostCliOptions): Promise<number> {
  // Loaded here, not at the top: every other command (and a bad flag) starts without them.
  const { loadHostConfig, resolveHostSettings } = await import("../cluster/config.js");
  const { HostDaemon } = await import("../cluster/host-daemon.js");
  if (o.keyFile !== undefined && o.keyFile.trim() === "")
    throw new ConfigError([
      `--key-file needs a file name, got an empty one: write --key-file FILE, or leave it out for the config file's keyFile, $${KEY_FILE_ENV} or ~/.config/myrixen/cluster.key`,
    ]);
  let peers: HostEntry[] | undefined;
  const file = o.config !== undefined ? loadHostConfig(o.config) : undefined;
  // --peers, or else the config file's peers: each host once, no slot counts.
  try {
    if (o.peers !== undefined) peers = parsePeerList(o.peers);
    else if (file?.peers?.length) parsePeerList(file.peers.join(","), `${o.config} "peers"`);
  } catch (e) {
    if (e instanceof HostListError) throw new ConfigError(e.problems);
    throw e;
  }
  const s = resolveHostSettings(file, { ...o, peers }, o.config);
  const self = ownAddressAmong(s.peers, s.listen);
  if (self)
    throw new ConfigError([
      `${o.peers !== undefined ? "--peers" : `${o.config} "peers"`} names ${self.label}, this host's own control address (it listens on ${formatAddress(s.listen)}); list only the other hosts`,
    ]);
  let key: ClusterKey;
  try {
    key = loadClusterKey(s.keyFile ?? {});
  } catch (e) {
    if (e instanceof KeyFileError) throw new ConfigError([e.message]);
    throw e;
  }
  const log = createLogger({ level: s.logLevel, format: s.logFormat });
  if (key.created)
    log.warn(
      "generated a new cluster key: copy this file (mode 600) to every host and launcher of the cluster",
      {
        keyFile: key.file,
      },
    );
  // Listen for signals before starting: one that comes while the host starts stops it after.
  const signal = new Promise<NodeJS.Signals>((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  let daemon: HostDaemon;
  try {
    daemon = await HostDaemon.start({
      listen: s.listen,
      linkPort: s.linkPort,
      nicId: s.nicId,
      slots: s.slots,
      peers: s.peers,
      maxEndpoints: s.maxEndpoints,
      maxRanks: s.maxRanks,
      maxGuestMb: s.maxGuestMb,
      maxLinks: s.maxLinks,
      maxLinksPerAddress: s.maxLinksPerAddress,
      qos: s.qos,
      log,
      key,
    });
  } catch (e) {
    log.error("the host could not start", { error: (e as Error).message });
    return 1;
  }
  let dashboard: Dashboard | undefined;
  if (o.dashboard) {
    const at = o.dashboard === true ? { host: "127.0.0.1", port: 7480 } : o.dashboard;
    try {
      const { Dashboard } = await import("../dashboard/server.js");
      const { daemonSource } = await import("../dashboard/sources.js");
      dashboard = await Dashboard.start({
        host: at.host,
        port: at.port,
        sources: [daemonSource(`${daemon.hostname}:${daemon.control.port}`, daemon)],
        key,
        log,
      });
      log.info("dashboard ready", { url: dashboard.url, asksForKey: dashboard.authRequired });
    } catch (e) {
      log.error("the dashboard could not start", { error: (e as Error).message });
      await daemon.stop();
      return 1;
    }
  }
  log.info("signal received: stopping the host", { signal: await signal });
  await dashboard?.stop();
  // A second signal while stopping means "now".
  const force = () => process.exit(130);
  process.once("SIGINT", force);
  process.once("SIGTERM", force);
  await daemon.stop();
  process.off("SIGINT", force);
  process.off("SIGTERM", force);
  // Everything is closed; should a stray handle linger, it must not keep a stopped host alive.
  setTimeout(() => process.exit(0), 2000).unref();
  return 0;
}

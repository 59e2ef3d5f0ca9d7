/**
 * The toolstack commands' flags and help (list, info, xenstore-ls, endpoints, top, dashboard;
 * what they do: toolstack.ts and live.ts). Each command's code loads when it runs, so that
 * `myrixen --help` and a mistyped flag answer at once.
 */
import { type Command, InvalidArgumentError } from "commander";
import { DASHBOARD_INTERVAL_MS, TOP_INTERVAL_S } from "../cluster/config-limits.js";
import type { CommonOptions } from "./toolstack-client.js";
import { ToolstackUsageError } from "./usage.js";

const commands = () => import("./toolstack.js");

/**
 * A decimal number in [min, max] (a refresh interval: 1e12 s, 0 or NaN would hammer the hosts
 * or never refresh); a usage error naming the flag and its bounds otherwise.
 */
function numberIn(command: string, name: string, unit: string, [min, max]: readonly [number, number]) {
  return (v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!/^\d+(\.\d+)?$/.test(v.trim()) || !(n >= min && n <= max))
      throw new ToolstackUsageError(
        `${name} must be a number of ${unit} from ${min} to ${max}, got "${v}"`,
        command,
      );
    return n;
  };
}

/** The options every toolstack command shares, checked before it connects to anything. */
function checkCommon(command: string, o: { keyFile?: string }): void {
  if (o.keyFile !== undefined && o.keyFile.trim() === "")
    throw new ToolstackUsageError(
      "--key-file needs a file name, got an empty one: write --key-file FILE, or leave it out for $MYRIXEN_KEY_FILE or ~/.config/myrixen/cluster.key",
      command,
    );
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
  ).action((domain: string | undefined, o: CommonOptions) =>
    run(async () => {
      checkCommon("list", o);
      return (await commands()).listCommand(domain, o);
    }),
  );
  common(
    program.command("info").description("a running host: its NIC, links, quotas, versions and counters"),
  ).action((o: CommonOptions) =>
    run(async () => {
      checkCommon("info", o);
      return (await commands()).infoCommand(o);
    }),
  );
  common(
    program
      .command("xenstore-ls")
      .description("the XenStore tree of a running host (as xenstore-ls)")
      .argument("[path]", "the subtree to list (default /)")
      .option("-p, --perms", "show each node's permissions"),
  ).action((path: string | undefined, o: CommonOptions & { perms?: boolean }) =>
    run(async () => {
      checkCommon("xenstore-ls", o);
      return (await commands()).xenstoreCommand(path, o);
    }),
  );
  common(
    program
      .command("endpoints")
      .description("the MX endpoints of a running host: owner, path, peers, queue depths, regions, traffic")
      .option("--domain <domain>", "only this domain's (id or name)"),
  ).action((o: CommonOptions & { domain?: string }) =>
    run(async () => {
      checkCommon("endpoints", o);
      return (await commands()).endpointsCommand(o);
    }),
  );
  common(
    program
      .command("top")
      .description("rates per domain and per path, refreshed (Ctrl-C stops)")
      .option(
        "--interval <s>",
        `seconds between refreshes (default 1; ${TOP_INTERVAL_S[0]} to ${TOP_INTERVAL_S[1]})`,
      )
      .option("-n, --iterations <n>", "stop after this many refreshes", (v: string) => {
        if (!/^\d+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v)))
          throw new InvalidArgumentError(`-n must be a positive integer, got "${v}"`);
        return Number(v);
      })
      .option("--path <path>", "only domains whose traffic is on this path: bypass | split | native"),
  ).action((o: CommonOptions & { interval?: string; iterations?: number; path?: string }) =>
    run(async () => {
      checkCommon("top", o);
      const interval = numberIn("top", "--interval", "seconds", TOP_INTERVAL_S)(o.interval) ?? 1;
      return (await commands()).topCommand({ ...o, interval });
    }),
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
      .option(
        "--interval <ms>",
        `milliseconds between updates (default 500; ${DASHBOARD_INTERVAL_MS[0]} to ${DASHBOARD_INTERVAL_MS[1]})`,
      ),
    false,
  ).action(
    (o: { host?: string; keyFile?: string; listen?: { host: string; port: number }; interval?: string }) =>
      run(async () => {
        checkCommon("dashboard", o);
        const interval = numberIn(
          "dashboard",
          "--interval",
          "milliseconds",
          DASHBOARD_INTERVAL_MS,
        )(o.interval);
        return (await commands()).dashboardCommand({ ...o, interval });
      }),
  );
}

/**
 * What every toolstack command (toolstack.ts, live.ts) shares: its options, the connection to
 * each host's control port (one line per host that cannot be reached), snapshots, and tables.
 */
import {
  connectObserver,
  type ObserveTarget,
  ObserveUsageError,
  observeTargets,
} from "../cluster/observe.js";
import type { RemoteHost } from "../cluster/remote.js";
import type { HostSnapshot } from "../host/snapshot.js";
import { ToolstackUsageError } from "./usage.js";

export { ToolstackUsageError };

export interface CommonOptions {
  host?: string;
  keyFile?: string;
  json?: boolean;
}

export const out = (line: string) => process.stdout.write(`${line}\n`);

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

/**
 * An --host mistake of an inspection command: the host list's own words (src/cluster/hostfile.ts,
 * written for run --hosts) without the slot count, which an inspection command has no use for.
 */
export function inspectionHostProblem(e: ObserveUsageError, cmd: string): ToolstackUsageError {
  return new ToolstackUsageError(e.message.replaceAll("host[:port][*slots]", "host[:port]"), cmd);
}

/** Connects to every target; reports each failure in one line. Exit code 1 if any failed. */
export async function connectAll(
  cmd: string,
  o: CommonOptions,
): Promise<{ hosts: { target: ObserveTarget; rh: RemoteHost }[]; failed: boolean }> {
  let targets: ObserveTarget[];
  try {
    targets = observeTargets({ host: o.host, keyFile: o.keyFile }).targets;
  } catch (e) {
    if (e instanceof ObserveUsageError) throw inspectionHostProblem(e, cmd);
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

export async function snapshots(
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

export function hostTitle(s: HostSnapshot): string {
  return `${s.host.name} (NIC ${s.host.nicId}${s.host.control ? `, ${s.host.control}` : ""}${s.host.embedded ? `, ${s.host.embedded}` : ""})`;
}

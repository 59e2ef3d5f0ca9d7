/**
 * `myrixen run -n N [--hosts LIST | --hostfile FILE] [--map-by node|slot] [--path P] PROGRAM
 * [ARGS...]`: runs N ranks of PROGRAM on a host started in this process (the embedded
 * default), or across running `myrixen host`s (a list, an Open MPI hostfile, or the Slurm
 * allocation this runs in). Rank output is prefixed with `[rank]`; the exit code is the first
 * non-zero exit code of a rank; Ctrl-C stops every rank on every host (exit code 130); a host
 * that vanishes ends the job with a message naming it. Hosts are reached with the cluster key
 * (auth.ts: --key-file, MYRIXEN_KEY_FILE, or the default file); a host that refuses it is
 * named with the key file to use (exit code 1), an unusable key file is exit code 2.
 */
import { readFileSync } from "node:fs";
import {
  type ClusterKey,
  KEY_FILE_ENV,
  KeyFileError,
  loadClusterKey,
  randomClusterKey,
} from "../cluster/auth.js";
import {
  type HostAddress,
  type HostEntry,
  HostListError,
  hostsFromSlurm,
  parseHostfile,
  parseHostList,
} from "../cluster/hostfile.js";
import { Job, JobSetupError, type JobTarget, LocalTarget, type RankOutcome } from "../cluster/job.js";
import { createLogger } from "../cluster/log.js";
import { MAP_BY, type MapBy } from "../cluster/placement.js";
import { BUILTIN_PROGRAMS, ProgramError, resolveProgram } from "../cluster/programs.js";
import { AuthError, RemoteHost } from "../cluster/remote.js";
import { RANK_PATHS, type RankPath } from "../cluster/wire.js";
import type { Dashboard } from "../dashboard/server.js";
import { Host } from "../host/host.js";
import type { QosPolicy } from "../myrixen/qos-policy.js";
import { type EmbeddedObservation, observeEmbedded } from "./embedded.js";

export { BUILTIN_PROGRAMS, resolveProgram };

export class RunUsageError extends Error {}

export interface RunOptions {
  /** Ranks (default: SLURM_NTASKS inside Slurm, else the hosts' total slots; required with no hosts). */
  n?: number;
  path: string;
  pages?: number;
  /** Each rank's weight and caps (--qos; bypass ranks: their myri device's policy). */
  qos?: QosPolicy;
  /** `host[:port][*slots],...` */
  hosts?: string;
  hostfile?: string;
  mapBy?: string;
  oversubscribe?: boolean;
  /** Prefix lines with `[rank@host]` instead of `[rank]`. */
  tagOutput?: boolean;
  /** How long the hosts may take to link their NICs (ms, default 10 000). */
  linkTimeoutMs?: number;
  /** The cluster key file (default: MYRIXEN_KEY_FILE, then ~/.config/myrixen/cluster.key). */
  keyFile?: string;
  /** Where Slurm's variables and MYRIXEN_KEY_FILE come from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Serve the live dashboard of the job's hosts here while it runs. */
  dashboard?: HostAddress;
}

const err = (line: string) => process.stderr.write(`myrixen run: ${line}\n`);
const note = (line: string) => process.stderr.write(`${line}\n`);

/** Which hosts the job runs on: --hosts, --hostfile, Slurm's allocation, or none (embedded). */
function chooseHosts(o: RunOptions): { hosts?: HostEntry[]; ntasks?: number; source: string } {
  try {
    if (o.hosts !== undefined && o.hostfile !== undefined)
      throw new RunUsageError("give --hosts or --hostfile, not both");
    if (o.hosts !== undefined) return { hosts: parseHostList(o.hosts), source: "--hosts" };
    if (o.hostfile !== undefined) {
      let text: string;
      try {
        text = readFileSync(o.hostfile, "utf8");
      } catch (e) {
        throw new RunUsageError(`cannot read the hostfile ${o.hostfile}: ${(e as Error).message}`);
      }
      return { hosts: parseHostfile(text, o.hostfile), source: o.hostfile };
    }
    const slurm = hostsFromSlurm(o.env ?? process.env);
    if (slurm) return { hosts: slurm.hosts, ntasks: slurm.ntasks, source: "the Slurm allocation" };
    return { source: "embedded" };
  } catch (e) {
    if (e instanceof HostListError) throw new RunUsageError(e.message);
    throw e;
  }
}

async function connectAll(hosts: HostEntry[], key: ClusterKey): Promise<RemoteHost[]> {
  const results = await Promise.allSettled(
    hosts.map((h) =>
      RemoteHost.connect(h, {
        key,
        onLog: (level, msg) => {
          if (level === "error" || level === "warn") err(`host ${h.label}: ${msg}`);
        },
      }),
    ),
  );
  const ok = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const bad = results.flatMap((r) =>
    r.status === "fulfilled"
      ? []
      : r.reason instanceof AuthError
        ? [`${r.reason.message}; use the cluster's key file: --key-file FILE or ${KEY_FILE_ENV}=FILE`]
        : [(r.reason as Error).message],
  );
  if (bad.length > 0) {
    for (const h of ok) h.close();
    throw new Error(bad.join("\n"));
  }
  return ok;
}

function describeFailure(f: RankOutcome, lost: { label: string; nicId: number; reason: string }[]): string {
  if (f.state === "lost") {
    const l = lost.find((x) => x.label === f.host);
    if (l)
      return `host ${l.label} (NIC ${l.nicId}) was lost mid-job: ${l.reason}; its ranks are gone and the other ranks were stopped`;
    return `${f.error?.message ?? `rank ${f.rank} was lost`}; the other ranks were stopped`;
  }
  const how = f.state === "shutdown" ? `exited with code ${f.exitCode}` : f.state;
  return `rank ${f.rank} ${how}${f.error ? `: ${f.error.message}` : ""}; the other ranks were stopped`;
}

export async function runCommand(program: string, argv: string[], o: RunOptions): Promise<number> {
  if (!RANK_PATHS.includes(o.path as RankPath))
    throw new RunUsageError(`--path must be one of ${RANK_PATHS.join(", ")}, got "${o.path}"`);
  const mapBy = (o.mapBy ?? "node") as MapBy;
  if (!MAP_BY.includes(mapBy))
    throw new RunUsageError(`--map-by must be one of ${MAP_BY.join(", ")}, got "${o.mapBy}"`);
  const chosen = chooseHosts(o);

  let targets: JobTarget[];
  let cleanup: () => Promise<void>;
  let programRef: string | URL = program;
  let n = o.n;
  if (!chosen.hosts) {
    if (n === undefined)
      throw new RunUsageError(
        "-n is required (no --hosts, --hostfile or Slurm allocation to count slots from)",
      );
    try {
      programRef = resolveProgram(program);
    } catch (e) {
      if (e instanceof ProgramError) throw new RunUsageError(e.message);
      throw e;
    }
    const host = await Host.start({});
    // While it runs, `myrixen list`/`top`/`dashboard` see its host (and --dashboard serves the page).
    let observed: EmbeddedObservation;
    try {
      observed = await observeEmbedded([{ host, name: "local" }], randomClusterKey(), "myrixen run", o, note);
    } catch (e) {
      await host.stop();
      throw e;
    }
    targets = [new LocalTarget(host)];
    cleanup = async () => {
      await observed.stop();
      await host.stop();
    };
  } else {
    let key: ClusterKey;
    try {
      key = loadClusterKey({ flag: o.keyFile, env: o.env });
    } catch (e) {
      if (e instanceof KeyFileError) throw new RunUsageError(e.message);
      throw e;
    }
    if (key.created)
      err(`generated a new cluster key in ${key.file} (the hosts must hold the same key file)`);
    let remotes: RemoteHost[];
    try {
      remotes = await connectAll(chosen.hosts, key);
    } catch (e) {
      err((e as Error).message);
      return 1;
    }
    targets = remotes;
    let dashboard: Dashboard | undefined;
    if (o.dashboard) {
      const { Dashboard } = await import("../dashboard/server.js");
      const { remoteSource } = await import("../dashboard/sources.js");
      dashboard = await Dashboard.start({
        host: o.dashboard.host,
        port: o.dashboard.port,
        sources: chosen.hosts.map((h) => remoteSource(h, key)),
        key,
        log: createLogger({ level: "warn", format: "text" }),
      });
      err(`dashboard at ${dashboard.url}`);
    }
    cleanup = async () => {
      await dashboard?.stop();
      for (const r of remotes) r.close();
    };
    n ??= chosen.ntasks ?? chosen.hosts.reduce((s, h, i) => s + (h.slots ?? remotes[i].slots), 0);
  }

  const hosts = chosen.hosts;
  const job = new Job(targets, {
    n,
    path: o.path as RankPath,
    program: programRef,
    argv,
    pages: o.pages,
    qos: o.qos,
    mapBy,
    oversubscribe: o.oversubscribe,
    slots: hosts?.map((h) => ({ slots: h.slots, maxSlots: h.maxSlots })),
    linkTimeoutMs: o.linkTimeoutMs,
    output: o.tagOutput
      ? (rank, stream, line, host) =>
          (stream === "stdout" ? process.stdout : process.stderr).write(`[${rank}@${host}] ${line}\n`)
      : undefined,
  });
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\nmyrixen run: stopping the job${hosts ? " on every host" : ""}\n`);
    void job.stop();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const r = await job.run();
    if (r.failed) err(describeFailure(r.failed, r.lostHosts));
    if (interrupted) return 130;
    return r.exitCode;
  } catch (e) {
    if (e instanceof JobSetupError) {
      if (e.usage) throw new RunUsageError(e.message);
      err(e.message);
      return 1;
    }
    throw e;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await cleanup();
  }
}

/**
 * How the toolstack commands find the embedded cluster of a running `myrixen start` or
 * `myrixen run` (as xl finds xenstored): that process serves each of its hosts on an
 * ephemeral control port on 127.0.0.1, authenticated with its in-memory key, and writes the
 * addresses and the key to a per-user runtime file:
 *
 *   $XDG_RUNTIME_DIR/myrixen/embedded-<pid>.json   (else <tmpdir>/myrixen-<uid>/...)
 *
 * The directory is made with mode 0700 and the file with 0600; a reader refuses either when
 * it belongs to another user or is open to group or others (the key would be readable). The
 * file goes when the process exits; files of processes that are gone are ignored and removed.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { ClusterKey } from "./auth.js";
import type { HostAddress } from "./hostfile.js";

export interface EmbeddedHost {
  name: string;
  nicId: number;
  control: HostAddress;
}

export interface EmbeddedCluster {
  pid: number;
  /** "myrixen start" or "myrixen run". */
  command: string;
  started: number;
  hosts: EmbeddedHost[];
  key: ClusterKey;
  file: string;
}

/** The per-user directory for runtime files. */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, "myrixen");
  const uid = typeof process.getuid === "function" ? process.getuid() : os.userInfo().username;
  return path.join(os.tmpdir(), `myrixen-${uid}`);
}

/** Why a runtime path may not be trusted (another owner, or open to others), or undefined. */
function untrusted(p: string, st: fs.Stats): string | undefined {
  if (typeof process.getuid === "function" && st.uid !== process.getuid())
    return `${p} belongs to another user (uid ${st.uid})`;
  if (process.platform !== "win32" && (st.mode & 0o077) !== 0)
    return `${p} is open to group or others (mode ${(st.mode & 0o777).toString(8)})`;
  return undefined;
}

/**
 * Writes this process's runtime file and returns a function that removes it (also done at
 * exit). Returns a reason instead when the directory cannot be trusted or written.
 */
export function publishEmbedded(
  c: { command: string; hosts: EmbeddedHost[]; key: ClusterKey },
  env: NodeJS.ProcessEnv = process.env,
): { file: string; remove: () => void } | { error: string } {
  const dir = runtimeDir(env);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const bad = untrusted(dir, fs.lstatSync(dir));
    if (bad) return { error: `${bad}: not writing the runtime file there` };
    const file = path.join(dir, `embedded-${process.pid}.json`);
    const tmp = `${file}.tmp`;
    const body = {
      pid: process.pid,
      command: c.command,
      started: Date.now(),
      hosts: c.hosts,
      // The key as text (an in-memory key is 64 hex characters, as a key file holds).
      key: c.key.bytes.toString("latin1"),
    };
    fs.writeFileSync(tmp, `${JSON.stringify(body)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, file);
    const remove = () => {
      try {
        fs.rmSync(file, { force: true });
      } catch {
        // gone already
      }
      process.off("exit", remove);
    };
    process.on("exit", remove);
    return { file, remove };
  } catch (e) {
    return { error: `cannot write the runtime file in ${dir}: ${(e as Error).message}` };
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function parseFile(file: string): EmbeddedCluster | undefined {
  const raw = JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
  const pid = raw.pid;
  const key = raw.key;
  const hosts = raw.hosts;
  if (!Number.isInteger(pid) || typeof key !== "string" || !/^[\x21-\x7e]{32,4096}$/.test(key))
    return undefined;
  if (!Array.isArray(hosts) || hosts.length === 0 || hosts.length > 64) return undefined;
  const hs: EmbeddedHost[] = [];
  for (const h of hosts as Record<string, unknown>[]) {
    const ctl = h?.control as Record<string, unknown> | undefined;
    if (typeof h?.name !== "string" || !Number.isInteger(h.nicId) || typeof ctl?.host !== "string")
      return undefined;
    if (!Number.isInteger(ctl.port) || (ctl.port as number) < 1 || (ctl.port as number) > 65535)
      return undefined;
    hs.push({
      name: h.name,
      nicId: h.nicId as number,
      control: { host: ctl.host, port: ctl.port as number },
    });
  }
  return {
    pid: pid as number,
    command: typeof raw.command === "string" ? raw.command : "myrixen",
    started: typeof raw.started === "number" ? raw.started : 0,
    hosts: hs,
    key: {
      bytes: Buffer.from(key, "latin1"),
      source: `the in-memory key of ${String(raw.command)} (pid ${pid})`,
    },
    file,
  };
}

/**
 * The embedded clusters running now (newest first), from the runtime files; files of
 * processes that are gone are removed. Untrusted files are skipped, with the reason in `skipped`.
 */
export function findEmbedded(env: NodeJS.ProcessEnv = process.env): {
  clusters: EmbeddedCluster[];
  skipped: string[];
} {
  const dir = runtimeDir(env);
  const clusters: EmbeddedCluster[] = [];
  const skipped: string[] = [];
  let names: string[];
  try {
    const bad = untrusted(dir, fs.lstatSync(dir));
    if (bad) return { clusters, skipped: [bad] };
    names = fs.readdirSync(dir).filter((n) => /^embedded-\d+\.json$/.test(n));
  } catch {
    return { clusters, skipped };
  }
  for (const n of names) {
    const file = path.join(dir, n);
    try {
      const bad = untrusted(file, fs.lstatSync(file));
      if (bad) {
        skipped.push(bad);
        continue;
      }
      const c = parseFile(file);
      if (!c) {
        skipped.push(`${file} is not a runtime file of myrixen`);
        continue;
      }
      if (!alive(c.pid)) {
        fs.rmSync(file, { force: true });
        continue;
      }
      clusters.push(c);
    } catch (e) {
      skipped.push(`${file}: ${(e as Error).message}`);
    }
  }
  clusters.sort((a, b) => b.started - a.started);
  return { clusters, skipped };
}

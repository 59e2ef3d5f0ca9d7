/**
 * Test helper: real `myrixen host` processes and `myrixen` command runs, as a user starts
 * them. A host is started with `--listen 127.0.0.1:0`; its bound ports and NIC id come from
 * the "host ready" JSON log line. Every child is killed when the test file ends.
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { until as untilHolds } from "./until.js";

export const BIN = fileURLToPath(new URL("../../../bin/myrixen.js", import.meta.url));
export const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}.js`, import.meta.url));

export type Log = Record<string, unknown> & { msg: string; level: string };

export interface HostProc {
  proc: ChildProcess;
  port: number;
  linkPort: number;
  nicId: number;
  /** host:port as launchers name it. */
  label: string;
  /** Every stderr line that parsed as JSON. */
  logs: Log[];
  /** Every stderr line. */
  stderr: string[];
  exited: Promise<number | null>;
}

const children = new Set<ChildProcess>();

/** Kills every child still running (call from `after`). */
export function killChildren(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
}

function track(proc: ChildProcess): Promise<number | null> {
  children.add(proc);
  return new Promise((resolve) =>
    proc.once("exit", (code, signal) => {
      children.delete(proc);
      resolve(code ?? (signal ? 128 : null));
    }),
  );
}

export function lines(stream: NodeJS.ReadableStream | null, each: (line: string) => void): void {
  let buf = "";
  stream?.setEncoding("utf8");
  stream?.on("data", (d: string) => {
    buf += d;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      each(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

/** Starts `myrixen host --listen 127.0.0.1:0 ARGS`; resolves once it serves. */
export async function startHost(
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
  opts: { cwd?: string } = {},
): Promise<HostProc> {
  const proc = spawn(process.execPath, [BIN, "host", "--listen", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, ...env },
    cwd: opts.cwd,
  });
  const exited = track(proc);
  const logs: Log[] = [];
  const stderr: string[] = [];
  const ready = new Promise<Log>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`host not ready in 20 s:\n${stderr.join("\n")}`)),
      20_000,
    );
    lines(proc.stderr, (l) => {
      stderr.push(l);
      let o: Log;
      try {
        o = JSON.parse(l) as Log;
      } catch {
        return;
      }
      logs.push(o);
      if (o.msg === "host ready") {
        clearTimeout(timer);
        resolve(o);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`host exited (${code}) before it was ready:\n${stderr.join("\n")}`));
    });
  });
  const r = await ready;
  const port = r.controlPort as number;
  return {
    proc,
    port,
    linkPort: r.linkPort as number,
    nicId: r.nicId as number,
    label: `127.0.0.1:${port}`,
    logs,
    stderr,
    exited,
  };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI to its end (killed after `killAfterMs`, default 60 s). */
export function myrixen(
  args: string[],
  opts: {
    onLine?: (line: string, proc: ChildProcess) => void;
    env?: NodeJS.ProcessEnv;
    killAfterMs?: number;
    cwd?: string;
  } = {},
): Promise<RunResult> {
  const proc = spawn(process.execPath, [BIN, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1", ...opts.env },
    cwd: opts.cwd,
  });
  const exited = track(proc);
  const out: string[] = [];
  const err: string[] = [];
  lines(proc.stdout, (l) => {
    out.push(l);
    opts.onLine?.(l, proc);
  });
  lines(proc.stderr, (l) => {
    err.push(l);
    opts.onLine?.(l, proc);
  });
  const killer = setTimeout(() => proc.kill("SIGKILL"), opts.killAfterMs ?? 60_000);
  return exited.then(async (code) => {
    clearTimeout(killer);
    await new Promise((r) => setImmediate(r));
    return { code, stdout: out.join("\n"), stderr: err.join("\n") };
  });
}

/** Resolves once `pred` holds, polling every 50 ms; rejects with `what` after `ms`. */
export function until(pred: () => boolean, what: string, ms = 10_000): Promise<void> {
  return untilHolds(pred, what, ms, 50);
}

/**
 * The set-up CLI test files share when their commands need a running host: a temporary config
 * directory holding the cluster key (`env` points the CLI at it), a `myrixen host` with 2 slots
 * using it, and a loopback port something already listens on (for "port in use" cases). Its
 * before/after hooks are registered in the calling test file; the directory goes at the end.
 */
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { loadClusterKey } from "../../src/cluster/auth.js";
import { type HostProc, killChildren, startHost } from "./hosts.js";

export interface CliHost {
  /** The test file's temporary directory (its config directory too). */
  readonly tmp: string;
  /** The environment for the CLI: the config directory here, no key file from outside. */
  readonly env: { XDG_CONFIG_HOME: string; MYRIXEN_KEY_FILE: string };
  /** The host (once the before hook ran). */
  readonly host: HostProc;
  /** A loopback port in use (once the before hook ran). */
  readonly busyPort: number;
}

export function cliHost(prefix: string): CliHost {
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  let host: HostProc | undefined;
  let busy: net.Server | undefined;
  let busyPort = 0;
  const env = { XDG_CONFIG_HOME: tmp, MYRIXEN_KEY_FILE: "" };
  before(async () => {
    loadClusterKey({ env: { XDG_CONFIG_HOME: tmp } });
    host = await startHost(["--slots", "2"], env);
    const server = net.createServer();
    busy = server;
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    busyPort = (server.address() as net.AddressInfo).port;
  });
  after(async () => {
    killChildren();
    const server = busy;
    if (server) await new Promise<void>((r) => server.close(() => r()));
    rmSync(tmp, { recursive: true, force: true });
  });
  return {
    tmp,
    env,
    get host() {
      if (!host) throw new Error("cliHost: the host is started in the before hook");
      return host;
    },
    get busyPort() {
      return busyPort;
    },
  };
}

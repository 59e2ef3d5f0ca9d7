/**
 * Which hosts a toolstack command (`myrixen list`, `info`, `xenstore-ls`, `endpoints`, `top`,
 * `dashboard`) looks at, and with which key:
 *
 *   --host LIST   those control addresses (host[:port],...), with the cluster key — or, for an
 *                 address an embedded cluster of this user serves, that cluster's key;
 *   (none)        the newest embedded cluster of this user that is running (runtime.ts), else
 *                 the local host's control port 127.0.0.1:7470 with the cluster key.
 *
 * The cluster key comes from --key-file, MYRIXEN_KEY_FILE or the default file, as for a
 * launcher; a command that only looks never creates the default key file.
 */
import { type ClusterKey, chooseKeyFile, KEY_FILE_ENV, readKeyFile } from "./auth.js";
import {
  DEFAULT_CONTROL_PORT,
  formatAddress,
  type HostAddress,
  HostListError,
  parseHostList,
} from "./hostfile.js";
import { AuthError, RemoteHost } from "./remote.js";
import { findEmbedded } from "./runtime.js";

export interface ObserveTarget {
  label: string;
  address: HostAddress;
  key: ClusterKey;
}

/** Bad usage (a malformed --host, an unusable key file): exit code 2. */
export class ObserveUsageError extends Error {}

export function observeTargets(o: { host?: string; keyFile?: string; env?: NodeJS.ProcessEnv }): {
  targets: ObserveTarget[];
  from: string;
} {
  const env = o.env ?? process.env;
  let clusterKey: ClusterKey | undefined;
  const key = (): ClusterKey => {
    if (clusterKey) return clusterKey;
    const { file, from } = chooseKeyFile({ flag: o.keyFile, env });
    try {
      clusterKey = readKeyFile(file, from);
    } catch (e) {
      throw new ObserveUsageError((e as Error).message);
    }
    return clusterKey;
  };
  const embedded = findEmbedded(env).clusters;
  if (o.host !== undefined) {
    let entries: ReturnType<typeof parseHostList>;
    try {
      entries = parseHostList(o.host);
    } catch (e) {
      if (e instanceof HostListError) throw new ObserveUsageError(e.message.replaceAll("--hosts", "--host"));
      throw e;
    }
    const targets = entries.map((h) => {
      const emb = embedded.find((c) =>
        c.hosts.some(
          (x) => x.control.port === h.port && (x.control.host === h.host || h.host === "localhost"),
        ),
      );
      return {
        label: h.label,
        address: { host: h.host, port: h.port },
        key: o.keyFile === undefined && emb ? emb.key : key(),
      };
    });
    return { targets, from: "--host" };
  }
  const newest = embedded[0];
  if (newest)
    return {
      targets: newest.hosts.map((h) => ({ label: h.name, address: h.control, key: newest.key })),
      from: `the embedded cluster of ${newest.command} (pid ${newest.pid}; ${newest.file})`,
    };
  const local = { host: "127.0.0.1", port: DEFAULT_CONTROL_PORT };
  return { targets: [{ label: formatAddress(local), address: local, key: key() }], from: "the local host" };
}

/** Connects to one host as an observer; the error says in one line what failed and what to do. */
export async function connectObserver(t: ObserveTarget, name: string): Promise<RemoteHost> {
  try {
    return await RemoteHost.connect(
      { ...t.address, label: t.label },
      { key: t.key, role: "observer", name, timeoutMs: 5000 },
    );
  } catch (e) {
    if (e instanceof AuthError)
      throw new Error(`${e.message}; use the cluster's key file: --key-file FILE or ${KEY_FILE_ENV}=FILE`);
    throw e;
  }
}

/**
 * The control handshake against a man in the middle that an observer dials (a wrong address
 * for `myrixen list -H`, a dashboard, a `--peers` entry): it relays the observer's handshake to
 * a real host, rewriting the hello on the way. The proofs covered only the two nonces, not the
 * client's role, so the relayed observer's proof opened a *launcher* session on the host for
 * the attacker (link, start: any program). Now they cover the whole hello: a rewritten role or
 * name fails the host's check (one error line, logged as an authentication failure), a faithful
 * relay gets only what the observer could do, and honest observers and launchers work as before.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { readKeyFile } from "../src/cluster/auth.js";
import { Job } from "../src/cluster/job.js";
import { AuthError, RemoteHost } from "../src/cluster/remote.js";
import { fixture, type HostProc, killChildren, lines, startHost, until } from "./helpers/hosts.js";

after(killChildren);

const TMP = mkdtempSync(join(tmpdir(), "myrixen-relay-"));
after(() => rmSync(TMP, { recursive: true, force: true }));
process.env.XDG_CONFIG_HOME = join(TMP, "xdg-unused");
delete process.env.MYRIXEN_KEY_FILE;
const KEY_FILE = join(TMP, "cluster.key");
writeFileSync(KEY_FILE, randomBytes(32).toString("hex"), { mode: 0o600 });
chmodSync(KEY_FILE, 0o600);
const KEY = readKeyFile(KEY_FILE);

let T: HostProc;
before(async () => {
  T = await startHost(["--slots", "1", "--key-file", KEY_FILE]);
});

type Msg = { type: string; id?: number; ok?: boolean; code?: string; error?: string; msg?: string };

/**
 * The attacker: a server the victim dials. It relays the victim's handshake to the host on
 * `targetPort` (every line the host sends goes back to the victim), with the victim's hello
 * passed through `rewrite`. `toHost` is its own socket to the host, `fromHost` what came on it.
 */
async function manInTheMiddle(
  targetPort: number,
  rewrite: (hello: Record<string, unknown>) => Record<string, unknown>,
): Promise<{
  port: number;
  toHost: () => net.Socket | undefined;
  fromHost: Msg[];
  hostClosed: () => boolean;
  close(): void;
}> {
  let toHost: net.Socket | undefined;
  let closed = false;
  const fromHost: Msg[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((victim) => {
    sockets.add(victim);
    victim.on("error", () => {});
    lines(victim, (l) => {
      const m = JSON.parse(l) as Record<string, unknown>;
      if (m.type === "hello") {
        const t = net.connect({ host: "127.0.0.1", port: targetPort });
        toHost = t;
        sockets.add(t);
        t.on("error", () => {});
        t.on("close", () => {
          closed = true;
        });
        t.write(`${JSON.stringify(rewrite(m))}\n`);
        lines(t, (hl) => {
          fromHost.push(JSON.parse(hl) as Msg);
          if (!victim.destroyed) victim.write(`${hl}\n`);
        });
      } else if (m.type === "auth") toHost?.write(`${l}\n`);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    toHost: () => toHost,
    fromHost,
    hostClosed: () => closed,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** What the attacker tries once it holds a session: link, and start a program. */
function tryLaunch(s: net.Socket, job: string): void {
  s.write(`${JSON.stringify({ type: "link", id: 1, peers: [], timeoutMs: 1000 })}\n`);
  s.write(
    `${JSON.stringify({
      type: "start",
      id: 2,
      job,
      size: 1,
      path: "bypass",
      program: fixture("mh-hello"),
      argv: ["pwned"],
      ranks: [0],
      key: 0x1234567,
    })}\n`,
  );
}

test("an observer's handshake relayed with its hello rewritten (role launcher or peer, another name) is refused and logged; nothing starts", async () => {
  const rewrites: [string, (h: Record<string, unknown>) => Record<string, unknown>][] = [
    ["role observer → launcher", (h) => ({ ...h, role: "launcher" })],
    ["role observer → peer", (h) => ({ ...h, role: "peer" })],
    ["another name", (h) => ({ ...h, name: "ci-launcher" })],
  ];
  for (const [what, rewrite] of rewrites) {
    const logsBefore = T.logs.length;
    const mitm = await manInTheMiddle(T.port, rewrite);
    try {
      // The victim: an observer that dials the attacker, thinking it is a host.
      await assert.rejects(
        RemoteHost.connect(
          { host: "127.0.0.1", port: mitm.port },
          { key: KEY, role: "observer", name: "myrixen-list", timeoutMs: 5000 },
        ),
        (e: Error) => e instanceof AuthError && /refused authentication/.test(e.message),
        `${what}: the relayed observer's proof was accepted`,
      );
      await until(() => mitm.hostClosed(), `${what}: the host closes the attacker's connection`);
      const types = mitm.fromHost.map((m) => m.type);
      assert.deepEqual(
        types,
        ["challenge", "error"],
        `${what}: the host sent ${JSON.stringify(mitm.fromHost)}`,
      );
      assert.match(mitm.fromHost[1].msg ?? "", /^authentication failed/, what);
      // Logged by the host as an authentication failure of an unauthenticated client.
      await until(
        () =>
          T.logs
            .slice(logsBefore)
            .some(
              (l) =>
                l.msg === "dropping a control connection" &&
                /^authentication failed/.test(String(l.reason)) &&
                l.authenticated === false &&
                /127\.0\.0\.1:\d+/.test(String(l.client)),
            ),
        `${what}: the refusal logged as an authentication failure`,
      );
      assert.ok(
        !T.logs.slice(logsBefore).some((l) => l.msg === "client connected" || l.msg === "starting ranks"),
        `${what}: ${T.stderr.slice(-5).join("\n")}`,
      );
    } finally {
      mitm.close();
    }
  }
});

test("a faithful relay of an observer's handshake gets an observer's session only: link and start are refused", async () => {
  const mitm = await manInTheMiddle(T.port, (h) => h);
  try {
    const victim = await RemoteHost.connect(
      { host: "127.0.0.1", port: mitm.port },
      { key: KEY, role: "observer", name: "myrixen-list" },
    );
    assert.equal(victim.nicId, T.nicId);
    victim.close();
    tryLaunch(mitm.toHost()!, "relay-faithful");
    await until(() => mitm.fromHost.filter((m) => m.type === "reply").length === 2, "two replies");
    for (const r of mitm.fromHost.filter((m) => m.type === "reply")) {
      assert.equal(r.ok, false, JSON.stringify(r));
      assert.equal(r.code, "refused");
      assert.match(r.error ?? "", /an observer may only ask status, snapshot and xenstore/);
    }
    assert.ok(!T.logs.some((l) => l.msg === "starting ranks"), "the host started ranks for the relay");
  } finally {
    mitm.close();
  }
});

test("an honest observer and an honest launcher still connect: the observer looks, the launcher runs a job", async () => {
  const observer = await RemoteHost.connect(
    { host: "127.0.0.1", port: T.port },
    { key: KEY, role: "observer", name: "myrixen-list" },
  );
  try {
    const st = await observer.status();
    assert.equal(st.nicId, T.nicId);
    const snap = await observer.snapshot();
    assert.ok(snap, "a snapshot");
  } finally {
    observer.close();
  }
  const launcher = await RemoteHost.connect({ host: "127.0.0.1", port: T.port }, { key: KEY });
  try {
    const out: string[] = [];
    const res = await new Job([launcher], {
      n: 1,
      path: "bypass",
      program: fixture("mh-hello"),
      argv: ["honest"],
      output: (_rank, _stream, line) => out.push(line),
    }).run();
    assert.equal(res.exitCode, 0, out.join("\n"));
    assert.ok(
      out.some((l) => /^hello rank 0 size 1 .* argv \["honest"\]$/.test(l)),
      out.join("\n"),
    );
  } finally {
    launcher.close();
  }
});

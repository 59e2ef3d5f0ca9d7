/**
 * Connections to a host's control port before the host can serve them (src/cluster/listen.ts
 * EarlyConnections): `myrixen host` listens first (its NIC id may come from the port), then
 * starts its hypervisor, NIC and driver domain, a few hundred ms. Anyone may connect then.
 * Such sockets were kept in an array with no 'error' listener: an outsider without the key
 * that connected and reset (TCP RST) in that window ended the host process with an unhandled
 * 'error' (read ECONNRESET), at every restart, and nothing bounded how many were kept.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { EarlyConnections } from "../src/cluster/listen.js";
import { BIN } from "./helpers/hosts.js";
import { until } from "./helpers/until.js";

/** A client connection, open once connected; `closed` resolves when the server side ends it. */
function client(port: number): Promise<{ sock: net.Socket; closed: Promise<void>; data: Buffer[] }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    const data: Buffer[] = [];
    const closed = new Promise<void>((r) => sock.once("close", () => r()));
    sock.on("data", (d: Buffer) => data.push(d));
    sock.once("error", () => {});
    sock.once("connect", () => resolve({ sock, closed, data }));
    sock.once("error", reject);
  });
}

test("held connections: a reset only closes one, at most `max` are held (the oldest go), the rest are handed over whole", async () => {
  const early = new EarlyConnections(3);
  const server = net.createServer((s) => early.hold(s));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const clients = [];
    for (let i = 0; i < 5; i++) {
      clients.push(await client(port));
      await until(() => early.size === Math.min(i + 1, 3), `connection ${i} held`);
    }
    // The two oldest were dropped to keep three.
    await clients[0].closed;
    await clients[1].closed;
    // An attacker resets a held one: the server side sees ECONNRESET, which only closes it.
    clients[2].sock.resetAndDestroy();
    await until(() => early.size === 2, "the reset connection left");
    const taken: net.Socket[] = [];
    early.release((s) => taken.push(s));
    assert.equal(taken.length, 2);
    assert.equal(early.size, 0);
    // Handed over whole: the new owner talks on them.
    for (const s of taken) s.end("welcome\n");
    for (const c of clients.slice(3)) {
      await c.closed;
      assert.equal(Buffer.concat(c.data).toString(), "welcome\n");
    }
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
});

test("myrixen host survives resets on its control port while it starts, and then serves", {
  timeout: 60_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-early-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, "cluster.key");
  writeFileSync(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
  // A fixed port, so that the attacker can dial it before the host says it is ready.
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const proc = spawn(
    process.execPath,
    [BIN, "host", "--listen", `127.0.0.1:${port}`, "--link-port", "0", "--key-file", keyFile],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  t.after(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  });
  let stderr = "";
  proc.stderr!.setEncoding("utf8");
  proc.stderr!.on("data", (d: string) => {
    stderr += d;
  });
  let exitCode: number | null | undefined;
  const exited = new Promise<void>((r) =>
    proc.once("exit", (code) => {
      exitCode = code;
      r();
    }),
  );
  const ready = () => stderr.includes('"host ready"');
  // The attacker: connect as soon as the port listens and reset, again and again, until the host is ready.
  let resets = 0;
  while (!ready() && exitCode === undefined) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port });
      s.on("error", () => resolve(false));
      s.on("connect", () => {
        s.resetAndDestroy();
        resolve(true);
      });
    });
    if (ok) resets++;
    await new Promise((r) => setTimeout(r, 2));
  }
  t.diagnostic(`resets sent while the host started: ${resets}`);
  assert.equal(exitCode, undefined, `the host exited (${exitCode}):\n${stderr.slice(-1500)}`);
  // Still serving: a connection without the key gets the handshake's refusal, not a dead port.
  const c = await client(port);
  c.sock.write("not a hello\n");
  await c.closed;
  assert.equal(exitCode, undefined, "the host is still up");
  proc.kill("SIGTERM");
  await exited;
});

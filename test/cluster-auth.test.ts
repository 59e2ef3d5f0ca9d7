/**
 * Cluster authentication and per-job keys, tested by playing the attacker: an impostor NIC
 * on a host's link port (an old-version hello, a hello with no proof or a forged one, a NIC
 * with another key) while a job's traffic crosses the real link; a launcher that never proves
 * the key (raw start and status requests) and one with the wrong key file; floods of idle
 * connections on the control and link ports; a rank of one job connecting to another job's
 * endpoint; `host --peers` with a bad entry; the NIC's link log lines through the host's JSON
 * logger; where the key comes from (--key-file, keyFile, MYRIXEN_KEY_FILE, the default file).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { controlProof, readKeyFile } from "../src/cluster/auth.js";
import { Job, LocalTarget } from "../src/cluster/job.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { WIRE_VERSION } from "../src/cluster/wire.js";
import { Host } from "../src/host/host.js";
import { FRAME_MAX } from "../src/nic/frame.js";
import { TCP_LINK_MAGIC, TCP_LINK_VERSION } from "../src/nic/tcp-handshake.js";
import { connectTcpLink } from "../src/nic/tcp-link-setup.js";
import { fixture, type HostProc, killChildren, myrixen, startHost, until } from "./helpers/hosts.js";

after(killChildren);

const TMP = mkdtempSync(join(tmpdir(), "myrixen-auth-"));
after(() => rmSync(TMP, { recursive: true, force: true }));
// Nothing here may read or write the user's own key file.
process.env.XDG_CONFIG_HOME = join(TMP, "xdg-unused");
delete process.env.MYRIXEN_KEY_FILE;

/** Writes a key file with `mode` (the hosts' key, another cluster's key, bad ones). */
function keyFile(
  name: string,
  content: string | Buffer = randomBytes(32).toString("hex"),
  mode = 0o600,
): string {
  const f = join(TMP, name);
  writeFileSync(f, content, { mode });
  chmodSync(f, mode);
  return f;
}
const KEY_FILE = keyFile("cluster.key");
const WRONG_KEY_FILE = keyFile("other-cluster.key");
const KEY = readKeyFile(KEY_FILE);
const WITH_KEY = ["--key-file", KEY_FILE];

// ---- raw clients ---------------------------------------------------------------------------

/** A raw TCP client: what it received, and a promise for the host closing it. */
interface Raw {
  socket: net.Socket;
  got: Buffer[];
  text(): string;
  closed: Promise<void>;
}

function raw(port: number): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    const got: Buffer[] = [];
    const closed = new Promise<void>((r) => socket.on("close", () => r()));
    socket.on("data", (d: Buffer) => got.push(d));
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      socket.on("error", () => {});
      resolve({ socket, got, text: () => Buffer.concat(got).toString(), closed });
    });
  });
}

/** Resolves when `r` is closed by the other side; rejects (and closes it) after `ms`. */
async function closedBy(r: Raw, what: string, ms = 10_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: the host kept the connection open`)), ms);
  });
  try {
    await Promise.race([r.closed, timeout]);
  } finally {
    clearTimeout(timer);
    r.socket.destroy();
  }
}

/** The JSON lines a raw control client received. */
function received(r: Raw): { type: string; msg?: string; nonce?: string }[] {
  return r
    .text()
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as { type: string; msg?: string; nonce?: string });
}

/** Resolves with the next JSON line `r` receives of `type`. */
async function nextOf(r: Raw, type: string): Promise<{ type: string; nonce?: string; msg?: string }> {
  await until(() => received(r).some((m) => m.type === type), `a "${type}" line`);
  return received(r).find((m) => m.type === type)!;
}

/** The link hello of protocol version 1 (what every NIC spoke before authentication). */
function helloV1(nicId: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(TCP_LINK_MAGIC, 0);
  b.writeUInt16LE(1, 4);
  b.writeUInt32LE(nicId, 8);
  b.writeUInt32LE(FRAME_MAX, 12);
  return b;
}

/** A current hello (with a nonce) claiming `nicId`. */
function helloV2(nicId: number): Buffer {
  const b = Buffer.alloc(48);
  b.writeUInt32LE(TCP_LINK_MAGIC, 0);
  b.writeUInt16LE(TCP_LINK_VERSION, 4);
  b.writeUInt32LE(nicId, 8);
  b.writeUInt32LE(FRAME_MAX, 12);
  randomBytes(32).copy(b, 16);
  return b;
}

const jsonLine = (o: unknown) => `${JSON.stringify(o)}\n`;
const clientHello = () => ({
  type: "hello",
  version: WIRE_VERSION,
  role: "launcher",
  name: "raw",
  nonce: randomBytes(32).toString("hex"),
});

let A: HostProc;
let B: HostProc;
before(async () => {
  [A, B] = await Promise.all([
    startHost(["--slots", "2", ...WITH_KEY]),
    startHost(["--slots", "2", ...WITH_KEY]),
  ]);
});

// ---- 1. an impostor on the link port ---------------------------------------------------------

test("an impostor NIC claiming a linked peer's id is refused and logged; the job's traffic over the real link carries on", async () => {
  const [a, b] = await Promise.all([
    RemoteHost.connect({ host: "127.0.0.1", port: A.port }, { key: KEY }),
    RemoteHost.connect({ host: "127.0.0.1", port: B.port }, { key: KEY }),
  ]);
  // The higher NIC id listens for the link the lower one makes: the impostor goes there,
  // claiming the lower id (an accepted hello from that id used to replace the real link).
  const [listener, claimed] = A.nicId > B.nicId ? [A, B.nicId] : [B, A.nicId];
  const out: string[] = [];
  let lastRound = -1;
  const job = new Job([a, b], {
    n: 2,
    path: "bypass",
    program: fixture("mh-traffic"),
    pages: 4096,
    output: (rank, _s, line) => {
      out.push(`[${rank}] ${line}`);
      const m = /^round (\d+) ok$/.exec(line);
      if (m) lastRound = Number(m[1]);
    },
  });
  const done = job.run();
  let failedEarly = false;
  void done.then((r) => {
    if (r.failed) failedEarly = true;
  });
  try {
    await until(() => lastRound >= 20 || failedEarly, "traffic over the link", 30_000);
    assert.ok(!failedEarly, out.join("\n"));
    const logsBefore = listener.logs.length;

    // (a) The old protocol: a bare hello claiming the peer's NIC id.
    const v1 = await raw(listener.linkPort);
    v1.socket.write(helloV1(claimed));
    await closedBy(v1, "a version-1 hello");
    // (b) A current hello and no proof, then one with a forged proof.
    const noProof = await raw(listener.linkPort);
    noProof.socket.write(helloV2(claimed));
    await closedBy(noProof, "a hello and no proof");
    const forged = await raw(listener.linkPort);
    forged.socket.write(Buffer.concat([helloV2(claimed), randomBytes(32)]));
    await closedBy(forged, "a hello and a forged proof");
    // (c) A real NIC handshake with another cluster's key.
    await assert.rejects(
      connectTcpLink({
        nicId: claimed,
        host: "127.0.0.1",
        port: listener.linkPort,
        key: readKeyFile(WRONG_KEY_FILE).bytes,
        log: () => {},
      }),
      /closed the connection instead of proving the cluster key/,
    );

    // (d) The cluster's own key, claiming the linked peer's id (every key holder can prove
    // the key, not who it is): the handshake passes, but the real link answers its probe, so
    // the impostor is refused before it sees a frame. (It used to replace the real link, and
    // its goodbye kept the real peer from coming back: the job's messages went to the impostor.)
    const impostor = await connectTcpLink({
      nicId: claimed,
      host: "127.0.0.1",
      port: listener.linkPort,
      key: KEY.bytes,
      log: () => {},
    });
    let framesToImpostor = 0;
    impostor.onFrame(() => {
      framesToImpostor++;
    });
    let impostorClosed = false;
    impostor.onClose(() => {
      impostorClosed = true;
    });
    await until(() => impostorClosed, "the impostor with the cluster key refused", 10_000);
    assert.equal(framesToImpostor, 0, "the impostor received the job's frames");

    // The job keeps exchanging (and checking) messages over the real link afterwards.
    const mark = lastRound;
    await until(() => lastRound >= mark + 30 || failedEarly, "more traffic after the attacks", 30_000);
    assert.ok(!failedEarly, `the job failed:\n${out.join("\n")}`);
    const st = await a.status();
    assert.ok(st.links.includes(B.nicId), "the real link is still attached");
    await job.stop();
    const r = await done;
    assert.equal(r.failed, undefined, out.join("\n"));
    assert.ok(
      out.every((l) => /^\[0\] round \d+ ok$/.test(l)),
      `every line is a checked round:\n${out.join("\n")}`,
    );
    // Each refusal is logged by the host, with the remote address and the reason.
    const refusals = listener.logs
      .slice(logsBefore)
      .filter((l) => /tcp-link .*refused a connection/.test(l.msg));
    const show = listener.stderr.slice(-10).join("\n");
    for (const l of refusals) {
      assert.equal(l.level, "warn");
      assert.match(String(l.remote), /^127\.0\.0\.1:\d+$/);
    }
    assert.ok(
      refusals.some((l) => /version mismatch: peer speaks version 1/.test(String(l.reason))),
      show,
    );
    // The hello without a proof is held to the handshake deadline, then dropped.
    assert.ok(
      refusals.some((l) => /no handshake within 2000 ms/.test(String(l.reason))),
      show,
    );
    assert.equal(refusals.filter((l) => /authentication failed/.test(String(l.reason))).length, 2, show);
    assert.ok(
      refusals.some((l) =>
        new RegExp(`claims NIC ${claimed}, whose link is attached and answers`).test(String(l.reason)),
      ),
      show,
    );
    assert.ok(!listener.logs.slice(logsBefore).some((l) => /replaces the previous connection/.test(l.msg)));
  } finally {
    await job.stop();
    a.close();
    b.close();
  }
});

// ---- 2. an unauthenticated launcher ------------------------------------------------------------

test("a launcher that does not prove the cluster key gets one error line and nothing runs; a wrong key file is named", async () => {
  const logsBefore = A.logs.length;
  const start = {
    type: "start",
    id: 1,
    job: "intruder-1",
    size: 1,
    path: "bypass",
    program: fixture("mh-hang"),
    argv: [],
    ranks: [0],
    key: 0x1234567,
  };
  const cases: [string, unknown[], RegExp][] = [
    ["a start with no hello", [start], /the first message must be "hello"/],
    ["a status with no hello", [{ type: "status", id: 1 }], /the first message must be "hello"/],
    [
      "an old (version 1) hello",
      [{ type: "hello", version: 1, role: "launcher", name: "x" }],
      /version mismatch/,
    ],
    ["a start after the hello", [clientHello(), start], /"start" before authenticating/],
    [
      "a status after the hello",
      [clientHello(), { type: "status", id: 1 }],
      /"status" before authenticating/,
    ],
    [
      "a forged proof",
      [clientHello(), { type: "auth", proof: randomBytes(32).toString("hex") }],
      /authentication failed/,
    ],
  ];
  for (const [what, msgs, reason] of cases) {
    const c = await raw(A.port);
    for (const m of msgs) c.socket.write(jsonLine(m));
    await closedBy(c, what);
    const got = received(c);
    assert.ok(
      got.every((m) => m.type === "error" || m.type === "challenge"),
      `${what}: the host answered ${c.text()}`,
    );
    const errors = got.filter((m) => m.type === "error");
    assert.equal(errors.length, 1, `${what}: one error line, got ${c.text()}`);
    assert.match(errors[0].msg ?? "", reason, what);
    await until(
      () =>
        A.logs.some(
          (l) =>
            l.msg === "dropping a control connection" &&
            reason.test(String(l.reason)) &&
            /127\.0\.0\.1:\d+/.test(String(l.client)),
        ),
      `${what}: logged with the client's address and the reason`,
    );
  }
  // A proof made for another nonce (replayed from a real handshake) does not pass either.
  const real = await raw(A.port);
  const h1 = clientHello();
  real.socket.write(jsonLine(h1));
  const ch1 = await nextOf(real, "challenge");
  real.socket.write(jsonLine({ type: "auth", proof: controlProof(KEY, "client", h1, ch1.nonce!) }));
  await nextOf(real, "hello");
  const replay = await raw(A.port);
  replay.socket.write(jsonLine(h1));
  await nextOf(replay, "challenge");
  replay.socket.write(jsonLine({ type: "auth", proof: controlProof(KEY, "client", h1, ch1.nonce!) }));
  await closedBy(replay, "a replayed proof");
  assert.match(received(replay).find((m) => m.type === "error")?.msg ?? "", /authentication failed/);
  // The authenticated raw client is held to the request schema: a bad start and the old shared key.
  real.socket.write(jsonLine({ ...start, key: 0x4d504921 }));
  await closedBy(real, "a start with the old shared job key");
  assert.match(received(real).find((m) => m.type === "error")?.msg ?? "", /bad "start" message: field "key"/);

  assert.ok(!A.logs.slice(logsBefore).some((l) => l.msg === "starting ranks"), "the host started no ranks");
  const a = await RemoteHost.connect({ host: "127.0.0.1", port: A.port }, { key: KEY });
  const st = await a.status();
  a.close();
  assert.equal(st.guests, 0, `the host runs no guest: ${JSON.stringify(st)}`);
  assert.deepEqual(st.jobs, []);

  // A launcher with another cluster's key file: refused, in one line naming the file to give.
  const wrong = await myrixen([
    "run",
    "-n",
    "1",
    "--key-file",
    WRONG_KEY_FILE,
    "--hosts",
    A.label,
    fixture("mh-hello"),
  ]);
  assert.equal(wrong.code, 1, wrong.stderr);
  assert.equal(wrong.stderr.trim().split("\n").length, 1, wrong.stderr);
  assert.match(
    wrong.stderr,
    new RegExp(
      `host ${A.label} refused authentication: this side's cluster key \\(the key file ${WRONG_KEY_FILE} \\(--key-file\\)\\) is not the host's; use the cluster's key file: --key-file FILE or MYRIXEN_KEY_FILE=FILE`,
    ),
  );
  // The same key through the environment works.
  const env = await myrixen(["run", "-n", "1", "--hosts", A.label, fixture("mh-hello")], {
    env: { MYRIXEN_KEY_FILE: KEY_FILE },
  });
  assert.equal(env.code, 0, env.stderr);
});

// ---- 3. floods of idle connections -------------------------------------------------------------

test("hundreds of idle connections on the control and link ports: a launcher still runs a job; the host closes them", async () => {
  const [C, D] = await Promise.all([
    startHost(["--slots", "1", ...WITH_KEY]),
    startHost(["--slots", "1", ...WITH_KEY]),
  ]);
  const flood: Raw[] = [];
  // More than a host's control connections (256) on each port, and as many on its NIC's.
  for (const port of [C.port, C.linkPort, D.port, D.linkPort])
    for (let i = 0; i < 300; i++) flood.push(await raw(port));
  const r = await myrixen([
    "run",
    "-n",
    "2",
    ...WITH_KEY,
    "--hosts",
    `${C.label},${D.label}`,
    fixture("mh-mpi"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /allreduce of 1000 doubles over 2 ranks: ok/);
  // Every idle socket is closed by the host, sooner or later.
  await Promise.all(flood.map((f, i) => closedBy(f, `idle socket ${i}`, 30_000)));
  // The refusals were logged, but not one line each.
  const lines = C.logs.filter((l) => l.msg === "dropping a control connection").length;
  assert.ok(lines >= 1 && lines < 300, `${lines} lines for 300 refused control connections`);
  C.proc.kill("SIGTERM");
  D.proc.kill("SIGTERM");
  assert.deepEqual(await Promise.all([C.exited, D.exited]), [0, 0]);
});

// ---- 4. per-job endpoint keys ------------------------------------------------------------------

test("each job gets its own endpoint key: another job's rank cannot connect with its key, the old shared one or 0", async () => {
  const host = await Host.start({});
  const out: string[] = [];
  const victim = new Job(host, {
    n: 1,
    path: "bypass",
    program: fixture("key-victim"),
    pages: 1024,
    output: (_r, _s, line) => out.push(line),
  });
  const victimDone = victim.run();
  try {
    await until(() => out.some((l) => /^victim /.test(l)), "the victim's address");
    const m = /^victim key (\S+) nic (\d+) endpoint (\d+)$/.exec(out.find((l) => /^victim /.test(l))!)!;
    const [victimKey, nic, endpoint] = [
      m[1] === "undefined" ? undefined : (JSON.parse(m[1]) as unknown),
      m[2],
      m[3],
    ];
    const intruderOut: string[] = [];
    const intruder = new Job(host, {
      n: 1,
      path: "bypass",
      program: fixture("key-intruder"),
      argv: [nic, endpoint],
      pages: 1024,
      output: (_r, _s, line) => intruderOut.push(line),
    });
    const res = await intruder.run();
    assert.equal(res.exitCode, 0, intruderOut.join("\n"));
    for (const what of ["own", "old", "zero"])
      assert.ok(
        intruderOut.includes(`${what}: MX_BAD_CONNECTION_KEY`),
        `${what} key: ${intruderOut.join("\n")}`,
      );
    const intruderKey = JSON.parse(/^intruder key (\S+)$/m.exec(intruderOut.join("\n"))![1]) as unknown;
    for (const k of [victimKey, intruderKey]) {
      assert.equal(typeof k, "number", `a job key is a number: ${k}`);
      assert.ok(k !== 0 && k !== 0x4d504921, `a job key is neither 0 nor the old constant: ${k}`);
    }
    assert.notEqual(victimKey, intruderKey, "two jobs have different keys");

    // A launcher that names a running job's key is told nothing about it: its job starts as
    // any other would (a refusal of taken keys told a key holder, at thousands of start
    // requests a second, which key a running job held).
    const spec = {
      job: "dup",
      size: 1,
      path: "bypass" as const,
      program: fixture("mh-hello"),
      argv: [],
      ranks: [0],
      key: victimKey as number,
    };
    const events = { output() {}, addr() {}, file() {}, exit() {} };
    for (const key of [victimKey as number, ((victimKey as number) ^ 0x5a5a5a5a) >>> 0 || 1]) {
      let exited!: () => void;
      const ended = new Promise<void>((r) => (exited = r));
      await new LocalTarget(host).start({ ...spec, key }, { ...events, exit: () => exited() }).started;
      await ended;
    }
    for (const key of [0, 0x4d504921])
      await assert.rejects(
        new LocalTarget(host).start({ ...spec, key }, events).started,
        /no valid endpoint key/,
      );
    // MPI.init refuses a rank without a job key.
    const dom = await host.startGuest({
      module: new URL(fixture("key-victim"), "file://"),
      args: { job: { rank: 0, size: 1, path: "bypass", argv: [] } },
      pages: 256,
      output: "pipe",
    });
    const e = await dom.exited;
    assert.notEqual(e.state, "shutdown");
    assert.match(e.error?.message ?? "", /no valid job key/);
  } finally {
    await victim.stop();
    await victimDone;
    await host.stop();
  }
});

// ---- 5. CLI input and the host's logs ------------------------------------------------------------

test("a rank's result file is written by its launcher, where the job was launched: the host writes no file a job names", async () => {
  // A job's argv comes from its launcher, and a rank may ask for any file named there: when
  // the host that ran the rank wrote it, any key holder's job could write any file the host's
  // user may (its home, its configuration), resolved against the host's directory.
  const hostDir = mkdtempSync(join(TMP, "host-cwd-"));
  const launchDir = mkdtempSync(join(TMP, "launch-cwd-"));
  const H = await startHost(["--slots", "1", ...WITH_KEY], {}, { cwd: hostDir });
  try {
    const r = await myrixen(
      ["run", "-n", "1", ...WITH_KEY, "--hosts", H.label, "nas-ep", "--class", "S", "--json", "result.json"],
      { cwd: launchDir },
    );
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(readFileSync(join(launchDir, "result.json"), "utf8")) as { kernel?: string };
    assert.equal(result.kernel, "ep", "the launcher has the result file");
    assert.equal(existsSync(join(hostDir, "result.json")), false, "the host wrote nothing");
  } finally {
    H.proc.kill("SIGTERM");
  }
});

test("host --peers with a bad entry exits 2 naming it", async () => {
  const bad = await myrixen(["host", "--listen", "127.0.0.1:0", ...WITH_KEY, "--peers", "a,::::"], {
    killAfterMs: 15_000,
  });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--peers item 2: "::::" is not a host name, IPv4 or IPv6 address/);
  assert.ok(bad.stderr.trim().split("\n").length <= 2, bad.stderr);
});

test("the NIC's link log lines are the host's JSON log lines", async () => {
  const H = await startHost(["--log-format", "json", ...WITH_KEY]);
  const c = await raw(H.linkPort);
  c.socket.write(Buffer.from("GET / HTTP/1.1\r\n\r\n"));
  await closedBy(c, "garbage on the link port");
  await until(() => H.logs.some((l) => /tcp-link/.test(l.msg)), "a link log line");
  H.proc.kill("SIGTERM");
  assert.equal(await H.exited, 0);
  for (const l of H.stderr) assert.doesNotThrow(() => JSON.parse(l), `not a JSON log line: ${l}`);
  const line = H.logs.find((l) => /tcp-link/.test(l.msg))!;
  assert.equal(line.level, "warn");
  assert.equal(line.source, "nic");
  assert.match(String(line.remote), /^127\.0\.0\.1:\d+$/);
  assert.match(String(line.reason), /bad magic .*not a MyriXen TCP link/);
});

// ---- 6. where the key comes from ---------------------------------------------------------------

test("the cluster key: keyFile in the config, MYRIXEN_KEY_FILE, the default file made on first use; bad key files are one clear line", async () => {
  // keyFile in a config file, relative to it.
  const dir = join(TMP, "conf");
  mkdirSync(dir);
  writeFileSync(join(dir, "host.json"), JSON.stringify({ keyFile: "../cluster.key", slots: 1 }));
  const H = await startHost(["--config", join(dir, "host.json")]);
  assert.equal(H.logs.find((l) => l.msg === "host ready")?.clusterKey, KEY_FILE);
  const ok = await myrixen(["run", "-n", "1", ...WITH_KEY, "--hosts", H.label, fixture("mh-hello")]);
  assert.equal(ok.code, 0, ok.stderr);
  H.proc.kill("SIGTERM");
  const badField = join(dir, "bad.json");
  writeFileSync(badField, JSON.stringify({ keyFile: 5 }));
  const bf = await myrixen(["host", "--config", badField]);
  assert.equal(bf.code, 2);
  assert.match(bf.stderr, /bad\.json: field "keyFile": expected a file path \(the cluster key file\), got 5/);

  // The default file: made on first use (mode 600) by whoever comes first, then shared.
  const xdg = join(TMP, "xdg");
  const D = await startHost([], { XDG_CONFIG_HOME: xdg });
  const made = join(xdg, "myrixen", "cluster.key");
  assert.ok(existsSync(made));
  assert.equal(statSync(made).mode & 0o777, 0o600);
  assert.ok(D.logs.some((l) => l.msg.startsWith("generated a new cluster key") && l.keyFile === made));
  const viaDefault = await myrixen(["run", "-n", "1", "--hosts", D.label, fixture("mh-hello")], {
    env: { XDG_CONFIG_HOME: xdg },
  });
  assert.equal(viaDefault.code, 0, viaDefault.stderr);
  const viaEnv = await myrixen(["run", "-n", "1", "--hosts", D.label, fixture("mh-hello")], {
    env: { MYRIXEN_KEY_FILE: made },
  });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  D.proc.kill("SIGTERM");

  // Unusable key files: one line each, exit code 2, before anything starts.
  const open = keyFile("open.key", undefined, 0o644);
  const short = keyFile("short.key", "0123456789\n");
  // A named pipe where the key should be: opening it for reading waited for a writer for ever.
  const fifo = join(TMP, "fifo.key");
  execFileSync("mkfifo", ["-m", "600", fifo]);
  for (const [args, reason] of [
    [
      ["host", "--key-file", open],
      new RegExp(
        `${open} \\(--key-file\\) can be read or written by group or others \\(mode 0644\\): run chmod 600 ${open}`,
      ),
    ],
    [["host", "--key-file", short], /holds 10 bytes; a cluster key needs at least 32/],
    [["host", "--key-file", join(TMP, "missing.key")], /does not exist: copy the cluster's key file there/],
    [["list", "--key-file", fifo, "--host", "127.0.0.1:1"], /fifo\.key \(--key-file\) is not a regular file/],
    [
      ["run", "-n", "1", "--key-file", join(TMP, "missing.key"), "--hosts", "127.0.0.1:1", "x"],
      /does not exist/,
    ],
  ] as const) {
    const r = await myrixen([...args], { killAfterMs: 30_000 });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, reason);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});

/**
 * Multi-host jobs as a user runs them: real `myrixen host` processes on loopback (each with
 * `--listen 127.0.0.1:0`; the test reads the bound ports from the "host ready" JSON log line),
 * and `myrixen run --hosts/--hostfile` launchers. Placement and NIC ids across two and three
 * hosts, a failing rank, Ctrl-C, a host killed mid-job, duplicate NIC ids, refusals, config
 * validation and garbage on the control port. Then the same across two network namespaces
 * joined by a veth pair (root and `ip netns` only; skipped with the reason otherwise).
 *
 * Tests named "MX cross-host: ..." need MX messages between ranks on different hosts (NIC
 * links carrying CONNECT, SEND and remote PULL); everything else runs programs that never
 * message across hosts. Hosts and launchers share the default cluster key file, generated
 * on first use under this test's own XDG_CONFIG_HOME (cluster-auth.test.ts tests the key).
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadClusterKey } from "../src/cluster/auth.js";
import { Job } from "../src/cluster/job.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { MAX_LINE_BYTES, WIRE_VERSION } from "../src/cluster/wire.js";
import { fakeControlHost } from "./helpers/fake-host.js";

const BIN = fileURLToPath(new URL("../../bin/myrixen.js", import.meta.url));
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}.js`, import.meta.url));
const TMP = mkdtempSync(join(tmpdir(), "myrixen-multihost-"));
// The default key file goes here (children inherit it), never into the user's home.
process.env.XDG_CONFIG_HOME = TMP;
delete process.env.MYRIXEN_KEY_FILE;
const KEY = loadClusterKey();

type Log = Record<string, unknown> & { msg: string; level: string };

interface HostProc {
  proc: ChildProcess;
  port: number;
  linkPort: number;
  nicId: number;
  /** host:port as launchers name it. */
  label: string;
  logs: Log[];
  stderr: string[];
  exited: Promise<number | null>;
}

const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(TMP, { recursive: true, force: true });
});

function track(proc: ChildProcess): Promise<number | null> {
  children.add(proc);
  return new Promise((resolve) =>
    proc.once("exit", (code, signal) => {
      children.delete(proc);
      resolve(code ?? (signal ? 128 : null));
    }),
  );
}

function lines(stream: NodeJS.ReadableStream | null, each: (line: string) => void): void {
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

/** Starts `myrixen host` (optionally through a prefix such as `ip netns exec NS`); resolves once it serves. */
async function startHost(
  args: string[] = [],
  prefix: string[] = [],
  listen = "127.0.0.1:0",
): Promise<HostProc> {
  const argv = [...prefix, process.execPath, BIN, "host", "--listen", listen, ...args];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
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
        return; // not every line is ours (a NIC thread may warn in plain text)
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
  const host = listen.replace(/:\d+$/, "");
  const port = r.controlPort as number;
  return {
    proc,
    port,
    linkPort: r.linkPort as number,
    nicId: r.nicId as number,
    label: `${host}:${port}`,
    logs,
    stderr,
    exited,
  };
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs the CLI; `onLine` sees each output line as it comes (to act mid-job). */
function myrixen(
  args: string[],
  opts: {
    prefix?: string[];
    onLine?: (line: string, proc: ChildProcess) => void;
    env?: NodeJS.ProcessEnv;
  } = {},
): Promise<RunResult> {
  const argv = [...(opts.prefix ?? []), process.execPath, BIN, ...args];
  const t0 = Date.now();
  const proc = spawn(argv[0], argv.slice(1), {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1", ...opts.env },
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
  const killer = setTimeout(() => proc.kill("SIGKILL"), 45_000);
  return exited.then(async (code) => {
    clearTimeout(killer);
    await new Promise((r) => setImmediate(r));
    return { code, stdout: out.join("\n"), stderr: err.join("\n"), ms: Date.now() - t0 };
  });
}

async function status(h: { port: number }, host = "127.0.0.1") {
  const c = await RemoteHost.connect({ host, port: h.port }, { key: KEY });
  try {
    return await c.status();
  } finally {
    c.close();
  }
}

/** Polls until the host runs no guests and no jobs (a stopped job's ranks are gone). */
async function drained(h: HostProc, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  let s = await status(h);
  while ((s.guests > 0 || s.jobs.length > 0) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    s = await status(h);
  }
  assert.equal(s.guests, 0, `host ${h.label} still runs guests: ${JSON.stringify(s)}`);
  assert.deepEqual(s.jobs, [], `host ${h.label} still has jobs: ${JSON.stringify(s)}`);
}

const helloLine = (rank: number, size: number, nic: number, path = "bypass", argv = "[]") =>
  new RegExp(
    `^hello rank ${rank} size ${size} nic ${nic} path ${path} argv ${argv.replace(/[[\]]/g, "\\$&")}$`,
    "m",
  );

let A: HostProc;
let B: HostProc;
let C: HostProc;
before(async () => {
  [A, B, C] = await Promise.all([
    startHost(["--slots", "2"]),
    startHost(["--slots", "2"]),
    startHost(["--slots", "2"]),
  ]);
});

test("two hosts: -n 4 places ranks round-robin; each rank prints once, with size 4 and its host's NIC id", async () => {
  const r = await myrixen([
    "run",
    "-n",
    "4",
    "--hosts",
    `${A.label},${B.label}`,
    fixture("mh-hello"),
    "x",
    "--y",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const argv = JSON.stringify(["x", "--y"]);
  for (const [rank, h] of [A, B, A, B].entries())
    assert.match(r.stdout, helloLine(rank, 4, h.nicId, "bypass", argv));
  assert.equal(r.stdout.split("\n").length, 4, r.stdout);
  assert.notEqual(A.nicId, B.nicId);

  // --map-by slot fills A's two slots first; native processes this time.
  const s = await myrixen([
    "run",
    "-n",
    "4",
    "--map-by",
    "slot",
    "--path",
    "native",
    "--hosts",
    `${A.label},${B.label}`,
    fixture("mh-hello"),
  ]);
  assert.equal(s.code, 0, s.stderr);
  for (const [rank, h] of [A, A, B, B].entries())
    assert.match(s.stdout, helloLine(rank, 4, h.nicId, "native"));
  // The hosts linked their NICs for the first job (the lower NIC id connected).
  const st = await status(A);
  assert.ok(st.links.includes(B.nicId), JSON.stringify(st));
});

test("three hosts: -n 5 over --hosts, a hostfile with slots, --tag-output names the host", async () => {
  const r = await myrixen([
    "run",
    "-n",
    "5",
    "--tag-output",
    "--hosts",
    `${A.label},${B.label},${C.label}`,
    fixture("mh-hello"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  for (const [rank, h] of [A, B, C, A, B].entries())
    assert.match(
      r.stdout,
      new RegExp(`^\\[${rank}@${h.label}\\] hello rank ${rank} size 5 nic ${h.nicId} `, "m"),
    );

  const file = join(TMP, "hosts.txt");
  writeFileSync(file, `# three hosts\n${A.label} slots=1\n\n${B.label} slots=2 # two\n${C.label} slots=1\n`);
  const f = await myrixen(["run", "-n", "4", "--map-by", "slot", "--hostfile", file, fixture("mh-hello")]);
  assert.equal(f.code, 0, f.stderr);
  for (const [rank, h] of [A, B, B, C].entries()) assert.match(f.stdout, helloLine(rank, 4, h.nicId));
  // Without -n, the job fills the hostfile's slots (round-robin: B takes the fourth).
  const all = await myrixen(["run", "--hostfile", file, fixture("mh-hello")]);
  assert.equal(all.code, 0, all.stderr);
  for (const [rank, h] of [A, B, C, B].entries()) assert.match(all.stdout, helloLine(rank, 4, h.nicId));
});

test("more ranks than slots is refused before anything starts; --oversubscribe allows it", async () => {
  const r = await myrixen(["run", "-n", "5", "--hosts", `${A.label},${B.label}`, fixture("mh-hello")]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /5 ranks need 5 slots but the hosts have 4 \(.*:\d+ 2, .*:\d+ 2\).*--oversubscribe/);
  const o = await myrixen([
    "run",
    "-n",
    "5",
    "--oversubscribe",
    "--hosts",
    `${A.label},${B.label}`,
    fixture("mh-hello"),
  ]);
  assert.equal(o.code, 0, o.stderr);
  assert.match(o.stdout, helloLine(4, 5, A.nicId));
});

test("a failing rank ends the job with its exit code and its rank named; the ranks on every host are stopped", async () => {
  const r = await myrixen(["run", "-n", "4", "--hosts", `${A.label},${B.label}`, fixture("mh-fail"), "3"]);
  assert.equal(r.code, 7, r.stderr);
  assert.match(r.stderr, /^rank 3 gives up with code 7$/m);
  assert.match(r.stderr, /myrixen run: rank 3 exited with code 7; the other ranks were stopped/);
  await Promise.all([drained(A), drained(B)]);
});

test("Ctrl-C stops every rank on every host and exits 130; the hosts run no guests afterwards", async () => {
  let up = 0;
  const r = await myrixen(["run", "-n", "4", "--hosts", `${A.label},${B.label}`, fixture("mh-hang")], {
    onLine: (l, p) => {
      if (/hanging$/.test(l) && ++up === 4) p.kill("SIGINT");
    },
  });
  assert.equal(up, 4, r.stdout);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /stopping the job on every host/);
  await Promise.all([drained(A), drained(B)]);
  assert.ok(A.logs.some((l) => l.msg === "stopping a job's ranks"));
});

test("a launcher killed outright: the hosts stop its ranks; two launchers share the hosts at once", async () => {
  let up = 0;
  const r = await myrixen(["run", "-n", "4", "--hosts", `${A.label},${B.label}`, fixture("mh-hang")], {
    onLine: (l, p) => {
      if (/hanging$/.test(l) && ++up === 4) p.kill("SIGKILL");
    },
  });
  assert.equal(up, 4, r.stdout);
  await Promise.all([drained(A), drained(B)]);
  assert.ok(A.logs.some((l) => l.msg === "the job's launcher is gone: stopping its ranks here"));
  // Two jobs at once, each with its own ranks on both hosts.
  const [x, y] = await Promise.all([
    myrixen(["run", "-n", "2", "--hosts", `${A.label},${B.label}`, fixture("mh-hello"), "x"]),
    myrixen(["run", "-n", "2", "--hosts", `${B.label},${A.label}`, fixture("mh-hello"), "y"]),
  ]);
  assert.equal(x.code, 0, x.stderr);
  assert.equal(y.code, 0, y.stderr);
  assert.match(x.stdout, helloLine(1, 2, B.nicId, "bypass", JSON.stringify(["x"])));
  assert.match(y.stdout, helloLine(1, 2, A.nicId, "bypass", JSON.stringify(["y"])));
});

test("a launcher that runs job after job on one connection keeps nothing of the finished ones", async () => {
  // A library user's launcher lives as long as its application: each job it ran used to leave
  // its event handlers (and through them the job's outcomes) in the connection's job table.
  const [a, b] = await Promise.all([
    RemoteHost.connect({ host: "127.0.0.1", port: A.port }, { key: KEY }),
    RemoteHost.connect({ host: "127.0.0.1", port: B.port }, { key: KEY }),
  ]);
  const tables = () => [a, b].map((h) => (h as unknown as { jobs: Map<string, unknown> }).jobs.size);
  try {
    // Two that end well, one whose rank 1 fails (the launcher stops the other rank).
    for (const [i, [program, arg]] of [
      ["mh-hello", "x"],
      ["mh-hello", "y"],
      ["mh-fail", "1"],
    ].entries()) {
      const lines: string[] = [];
      const res = await new Job([a, b], {
        n: 2,
        path: "bypass",
        program: fixture(program),
        argv: [arg],
        output: (_rank, _stream, line) => lines.push(line),
      }).run();
      assert.equal(res.ranks.length, 2, lines.join("\n"));
      assert.equal(res.exitCode, program === "mh-fail" ? 7 : 0, lines.join("\n"));
      assert.deepEqual(tables(), [0, 0], `after job ${i} (${program}) the connections still hold jobs`);
    }
  } finally {
    a.close();
    b.close();
  }
  await Promise.all([drained(A), drained(B)]);
});

test("a host killed mid-job: the launcher names it and exits non-zero within seconds; the other host serves on", async () => {
  const [D, E] = await Promise.all([startHost(), startHost()]);
  let up = 0;
  let killedAt = 0;
  const r = await myrixen(["run", "-n", "4", "--hosts", `${D.label},${E.label}`, fixture("mh-hang")], {
    onLine: (l) => {
      if (/hanging$/.test(l) && ++up === 4) {
        killedAt = Date.now();
        E.proc.kill("SIGKILL");
      }
    },
  });
  assert.ok(killedAt > 0, r.stdout + r.stderr);
  const took = Date.now() - killedAt;
  assert.equal(r.code, 1, r.stderr);
  assert.ok(took < 4000, `the launcher took ${took} ms to end the job`);
  assert.match(r.stderr, new RegExp(`host ${E.label} \\(NIC ${E.nicId}\\) was lost mid-job`));
  await drained(D);
  const again = await myrixen(["run", "-n", "2", "--hosts", D.label, fixture("mh-hello")]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, helloLine(1, 2, D.nicId));
  assert.ok(
    D.logs.some(
      (l) =>
        l.msg === "the job's launcher is gone: stopping its ranks here" || l.msg === "stopping a job's ranks",
    ),
  );
  D.proc.kill("SIGTERM");
  assert.equal(await D.exited, 0);
  assert.ok(D.logs.some((l) => l.msg === "host stopped"));
});

test("two hosts with the same NIC id are refused with both named; unreachable hosts are named", async () => {
  const twin = await startHost(["--nic-id", String(A.nicId)]);
  const r = await myrixen(["run", "-n", "2", "--hosts", `${A.label},${twin.label}`, fixture("mh-hello")]);
  assert.equal(r.code, 2);
  assert.match(
    r.stderr,
    new RegExp(`hosts ${A.label} \\(.*\\) and ${twin.label} \\(.*\\) both have NIC id ${A.nicId}`),
  );
  twin.proc.kill("SIGKILL");
  // NIC ids that differ only in bits 24-25 would give both hosts' guests the same MACs.
  const clash = (A.nicId ^ 0x01000000) >>> 0;
  const near = await startHost(["--nic-id", String(clash)]);
  const m = await myrixen(["run", "-n", "2", "--hosts", `${A.label},${near.label}`, fixture("mh-hello")]);
  assert.equal(m.code, 2);
  assert.match(
    m.stderr,
    new RegExp(`NIC ids ${A.nicId} and ${clash}, which give their guests the same MACs`),
  );
  near.proc.kill("SIGKILL");
  const dead = await myrixen(["run", "-n", "2", "--hosts", `${A.label},127.0.0.1:1`, fixture("mh-hello")]);
  assert.equal(dead.code, 1);
  assert.match(
    dead.stderr,
    /cannot reach host 127\.0\.0\.1:1: connection refused \(is `myrixen host` running there/,
  );
});

/**
 * A control port that speaks the protocol (and holds the cluster key) but whose NIC is nowhere
 * (link port 1), or speaks garbage.
 */
async function fakeHost(mode: "no-nic" | "garbage"): Promise<{ port: number; close: () => void }> {
  if (mode === "no-nic")
    return fakeControlHost(KEY, {
      // The highest id: the real host must connect to it, and finds nothing there.
      nicId: 0xfffffffe,
      slots: 2,
      paths: ["bypass"],
      onMessage: (m, reply) => {
        if (m.type === "link") reply({ type: "reply", id: m.id, ok: true });
      },
    });
  const server = net.createServer((s) => {
    s.on("error", () => {});
    lines(s, () => s.write("HTTP/1.1 400 Bad Request\r\n\r\n"));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

test("a host whose NIC cannot be reached, and a control port that is not a host, are named", async () => {
  const fake = await fakeHost("no-nic");
  const label = `127.0.0.1:${fake.port}`;
  const r = await myrixen([
    "run",
    "-n",
    "2",
    "--link-timeout",
    "1000",
    "--hosts",
    `${A.label},${label}`,
    fixture("mh-hello"),
  ]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `cannot link the hosts' NICs:\\n  host ${A.label}: no NIC link to host ${label} \\(NIC 4294967294, link 127\\.0\\.0\\.1:1\\) within 1000 ms`,
    ),
  );
  fake.close();
  const junk = await fakeHost("garbage");
  const g = await myrixen(["run", "-n", "2", "--hosts", `127.0.0.1:${junk.port}`, fixture("mh-hello")]);
  assert.equal(g.code, 1);
  assert.match(g.stderr, new RegExp(`cannot reach host 127\\.0\\.0\\.1:${junk.port}: not a MyriXen host`));
  junk.close();
  await drained(A);
});

test("--path split runs guests without the fast path on every host; refusals from hosts are printed", async () => {
  const split = await myrixen([
    "run",
    "-n",
    "2",
    "--path",
    "split",
    "--hosts",
    `${A.label},${B.label}`,
    fixture("mh-hello"),
  ]);
  assert.equal(split.code, 0, split.stderr);
  assert.match(split.stdout, helloLine(0, 2, A.nicId, "split"));
  assert.match(split.stdout, helloLine(1, 2, B.nicId, "split"));
  const none = await myrixen(["run", "-n", "2", "--hosts", A.label, join(TMP, "no-such-program.js")]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no such file .*no-such-program\.js/);
  const both = await myrixen(["run", "-n", "2", "--hosts", A.label, "--hostfile", "x", fixture("mh-hello")]);
  assert.equal(both.code, 2);
  assert.match(both.stderr, /give one of -H, --hosts and --hostfile, not --hosts and --hostfile/);
  const badList = await myrixen(["run", "-n", "2", "--hosts", "a:b", fixture("mh-hello")]);
  assert.equal(badList.code, 2);
  assert.match(badList.stderr, /--hosts item 1: "a:b": port "b" is not a number/);
  await Promise.all([drained(A), drained(B)]);
});

test("inside a Slurm allocation the node list and task counts come from the environment", async () => {
  // Loopback addresses stand in for node names; every node is reached on port 7470, so only
  // the refusal path is exercised here (nothing listens there).
  const r = await myrixen(["run", fixture("mh-hello")], {
    env: { SLURM_JOB_NODELIST: "127.0.0.[2-3]", SLURM_TASKS_PER_NODE: "2(x2)", SLURM_NTASKS: "4" },
  });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot reach host 127\.0\.0\.2:7470/);
  assert.match(r.stderr, /cannot reach host 127\.0\.0\.3:7470/);
  const bad = await myrixen(["run", fixture("mh-hello")], { env: { SLURM_JOB_NODELIST: "node[1-2" } });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /SLURM_JOB_NODELIST: "\[" is never closed/);
});

test("host --help documents every option; run --help the multi-host flags", async () => {
  const h = await myrixen(["host", "--help"]);
  assert.equal(h.code, 0);
  for (const o of [
    "--listen <addr:port>",
    "--link-port <port>",
    "--nic-id <n>",
    "--slots <n>",
    "--peers <list>",
    "--max-endpoints <n>",
    "--max-ranks <n>",
    "--max-guest-mb <MiB>",
    "--config <file>",
    "--log-level <level>",
    "--log-format <format>",
    "--key-file <file>",
  ])
    assert.ok(h.stdout.includes(o), `${o} missing from:\n${h.stdout}`);
  assert.match(h.stdout, /0\.0\.0\.0 or \[::\] exposes it/);
  const r = await myrixen(["run", "--help"]);
  for (const o of [
    "--hosts <list>",
    "--hostfile <file>",
    "--map-by <how>",
    "--oversubscribe",
    "--tag-output",
    "--key-file <file>",
    "split",
  ])
    assert.ok(r.stdout.includes(o), `${o} missing from:\n${r.stdout}`);
});

test("config file: every wrong or unknown field is named; flags override the file", async () => {
  const bad = join(TMP, "bad.json");
  writeFileSync(
    bad,
    JSON.stringify({
      slots: "four",
      nicID: 3,
      logLevel: "loud",
      listen: "nohost:99999",
      peers: ["ok", 5],
      linkPort: -1,
      maxRanks: 0,
    }),
  );
  const r = await myrixen(["host", "--config", bad]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /bad\.json: field "slots": expected a whole number in 1\.\.4096, got "four"/);
  assert.match(r.stderr, /bad\.json: unknown field "nicID" \(known fields: listen, linkPort, nicId,/);
  assert.match(r.stderr, /bad\.json: field "logLevel": expected one of error, warn, info, debug, got "loud"/);
  assert.match(
    r.stderr,
    /bad\.json: field "listen": expected host:port; "nohost:99999": port 99999 is outside/,
  );
  assert.match(r.stderr, /bad\.json: field "peers\[1\]": expected a string host:port, got 5/);
  assert.match(r.stderr, /bad\.json: field "linkPort": expected a whole number in 0\.\.65535, got -1/);
  assert.match(r.stderr, /bad\.json: field "maxRanks": expected a whole number in 1\.\.65536, got 0/);
  const notJson = join(TMP, "broken.json");
  writeFileSync(notJson, "{ slots: 2 ");
  const j = await myrixen(["host", "--config", notJson]);
  assert.equal(j.code, 2);
  assert.match(j.stderr, /broken\.json is not valid JSON/);
  const missing = await myrixen(["host", "--config", join(TMP, "nope.json")]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /cannot read the config file .*nope\.json/);
  const flag = await myrixen(["host", "--slots", "0"]);
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /--slots must be a whole number in 1\.\.4096, got "0"/);

  const good = join(TMP, "good.json");
  writeFileSync(
    good,
    JSON.stringify({
      slots: 3,
      nicId: 4242,
      logLevel: "debug",
      logFormat: "json",
      maxRanks: 6,
      maxGuestMb: 512,
    }),
  );
  const h = await startHost(["--config", good, "--slots", "5", "--max-ranks", "7"]);
  const ready = h.logs.find((l) => l.msg === "host ready");
  assert.equal(ready?.slots, 5, "the flag wins");
  assert.equal(ready?.nicId, 4242, "the file's value stays where no flag overrides it");
  assert.equal(ready?.maxRanks, 7, "--max-ranks wins over the file's maxRanks");
  assert.equal(ready?.maxGuestMb, 512);
  // The host's own limit, whatever the launcher's --oversubscribe: refused before a rank starts.
  const over = await myrixen(["run", "-n", "8", "--oversubscribe", "--hosts", h.label, fixture("mh-hello")]);
  assert.equal(over.code, 2, over.stderr);
  assert.match(
    over.stderr,
    /host 127\.0\.0\.1:\d+: refused by the host's limit on ranks running at once: 7 \(myrixen host --max-ranks N; default 4 per slot\); 0 run here now and this job asks 8 more/,
  );
  assert.doesNotMatch(over.stdout, /hello rank/);
  h.proc.kill("SIGINT");
  assert.equal(await h.exited, 0);
  // Text logs: readable lines with key=value fields.
  let seen = "";
  const t = await myrixen(["host", "--listen", "127.0.0.1:0", "--log-format", "text", "--nic-id", "9"], {
    onLine: (l, p) => {
      seen += `${l}\n`;
      if (/host ready/.test(l)) p.kill("SIGINT");
    },
  });
  assert.equal(t.code, 0, seen);
  assert.match(seen, /^\S+Z INFO {2}host ready hostname=\S+ control=127\.0\.0\.1:\d+ .*nicId=9 /m);
  assert.match(seen, /INFO {2}host stopped/);
});

/** Connects, writes, and resolves when the host closes the connection (or after 3 s: still open). */
function poke(
  port: number,
  data: (Buffer | string)[],
  waitHello = false,
): Promise<{ closed: boolean; got: string }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    let got = "";
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ closed: false, got });
    }, 3000);
    s.on("data", (d) => {
      got += d.toString();
    });
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(timer);
      resolve({ closed: true, got });
    });
    s.on("connect", async () => {
      for (const d of data) {
        if (waitHello) await new Promise((r) => setTimeout(r, 50));
        s.write(d);
      }
      if (data.length === 0) s.destroy();
    });
  });
}

test("garbage on the control port is logged and dropped; the host keeps serving", async () => {
  const hello = `${JSON.stringify({ type: "hello", version: WIRE_VERSION, role: "launcher", name: "t", nonce: "cd".repeat(32) })}\n`;
  const random = Buffer.alloc(70_000);
  for (let i = 0; i < random.length; i++) random[i] = (i * 7919 + 13) & 0xff;
  const cases: [string, (Buffer | string)[], RegExp][] = [
    ["random bytes", [random], /not UTF-8|not JSON|longer than/],
    // Before it has proved the key, a client's lines are held to MAX_HANDSHAKE_LINE_BYTES.
    ["an oversized line", [Buffer.alloc(MAX_LINE_BYTES + 10, 0x61)], /a line longer than 4096 bytes/],
    ["not JSON", ["GET / HTTP/1.1\r\nHost: x\r\n\r\n"], /not JSON/],
    ["a JSON array", ["[1,2,3]\n"], /must be a JSON object/],
    [
      "a wrong version",
      [`${JSON.stringify({ type: "hello", version: 99, role: "launcher", name: "t" })}\n`],
      new RegExp(`protocol version mismatch: the peer speaks version 99, this side speaks ${WIRE_VERSION}`),
    ],
    [
      "no hello first",
      [`${JSON.stringify({ type: "status", id: 1 })}\n`],
      /the first message must be "hello"/,
    ],
    ["an unknown type", [hello, `${JSON.stringify({ type: "reboot" })}\n`], /unknown message type "reboot"/],
    [
      "a start before authenticating",
      [hello, `${JSON.stringify({ type: "start", id: 1, job: "j", size: -1 })}\n`],
      /"start" before authenticating/,
    ],
  ];
  const before = A.logs.length;
  for (const [what, data, reason] of cases) {
    const r = await poke(A.port, data, data.length > 1);
    assert.ok(r.closed, `${what}: the host kept the connection`);
    const log = A.logs
      .slice(before)
      .find((l) => l.msg === "dropping a control connection" && reason.test(String(l.reason)));
    assert.ok(log, `${what}: no log line matching ${reason}:\n${A.stderr.slice(-5).join("\n")}`);
    assert.equal(log.level, "warn");
  }
  // A port scan: connect and go. Debug-level only (no noise), and nothing breaks.
  await poke(A.port, []);
  // The host told the wrong-version client why before closing.
  const v = await poke(A.port, [
    `${JSON.stringify({ type: "hello", version: WIRE_VERSION + 1, role: "launcher", name: "t" })}\n`,
  ]);
  assert.match(v.got, /"type":"error".*version mismatch/);
  const s = await status(A);
  assert.equal(s.nicId, A.nicId);
  const r = await myrixen(["run", "-n", "2", "--hosts", `${A.label},${B.label}`, fixture("mh-hello")]);
  assert.equal(r.code, 0, r.stderr);
});

test("--peers: a host links its NIC to its peers on start and keeps retrying until they are up", async () => {
  const P = await startHost(["--peers", `127.0.0.1:${A.port},127.0.0.1:1`, "--log-level", "debug"]);
  const end = Date.now() + 5000;
  while (!P.logs.some((l) => l.msg === "linked to peer") && Date.now() < end)
    await new Promise((r) => setTimeout(r, 100));
  assert.ok(
    P.logs.some((l) => l.msg === "linked to peer" && l.peerNic === A.nicId),
    P.stderr.join("\n"),
  );
  assert.ok(P.logs.some((l) => l.msg === "cannot link to peer yet: retrying" && l.peer === "127.0.0.1:1"));
  const s = await status(P);
  assert.ok(s.links.includes(A.nicId));
  P.proc.kill("SIGTERM");
  assert.equal(await P.exited, 0);
});

// ---- needs MX across NICs -----------------------------------------------------------------

test("MX cross-host: 2 hosts x 2 ranks ping-pong 8 B and 1 MiB with contents checked, then allreduce, on each path", async () => {
  for (const path of ["bypass", "native", "split"]) {
    const r = await myrixen([
      "run",
      "-n",
      "4",
      "--path",
      path,
      "--pages",
      "4096",
      "--hosts",
      `${A.label},${B.label}`,
      fixture("mh-mpi"),
    ]);
    assert.equal(r.code, 0, `${path}: ${r.stderr}\n${r.stdout}`);
    for (const rank of [0, 1, 2, 3]) {
      const peer = rank ^ 1;
      assert.match(r.stdout, new RegExp(`^rank ${rank} ping-pong 8 B with rank ${peer}: ok$`, "m"));
      assert.match(r.stdout, new RegExp(`^rank ${rank} ping-pong 1048576 B with rank ${peer}: ok$`, "m"));
      assert.match(r.stdout, new RegExp(`^rank ${rank} allreduce of 1000 doubles over 4 ranks: ok$`, "m"));
    }
  }
});

test("MPI ranks busy-poll only when every peer shares their NIC: across hosts they leave the cores to the NIC threads", async () => {
  const across = await myrixen(["run", "-n", "2", "--hosts", `${A.label},${B.label}`, fixture("mpi-spin")]);
  assert.equal(across.code, 0, across.stderr);
  for (const rank of [0, 1]) assert.match(across.stdout, new RegExp(`^rank ${rank} spins up to 20 µs$`, "m"));
  const one = await myrixen(["run", "-n", "2", "--hosts", A.label, fixture("mpi-spin")]);
  assert.equal(one.code, 0, one.stderr);
  // A core per rank (CI's 2-core runners have one each): Open MPI's busy-polling, up to 1 ms.
  const busy = availableParallelism() >= 2 ? 1000 : 20;
  for (const rank of [0, 1])
    assert.match(one.stdout, new RegExp(`^rank ${rank} spins up to ${busy} µs$`, "m"));
});

test("MX cross-host: a host killed mid-transfer — its peer's MPI call fails within 2 s, the job ends, the other host serves on", async () => {
  const [F, G] = await Promise.all([startHost(), startHost()]);
  const [f, g] = await Promise.all([
    RemoteHost.connect({ host: "127.0.0.1", port: F.port }, { key: KEY }),
    RemoteHost.connect({ host: "127.0.0.1", port: G.port }, { key: KEY }),
  ]);
  let killedAt = 0;
  let failedAt = 0;
  const seen: string[] = [];
  const job = new Job([f, g], {
    n: 2,
    path: "bypass",
    program: fixture("mh-stream"),
    pages: 4096,
    // Leave the survivor time to see the loss itself, rather than being stopped at once.
    lostHostGraceMs: 4000,
    output: (rank, _s, line) => {
      seen.push(`[${rank}] ${line}`);
      if (/rank 1 streaming/.test(line) && !killedAt) {
        killedAt = Date.now();
        G.proc.kill("SIGKILL");
      }
      if (/rank 0: send failed/.test(line)) failedAt = Date.now();
    },
  });
  const t0 = Date.now();
  const res = await job.run();
  f.close();
  g.close();
  assert.ok(killedAt > 0, `never streamed: ${seen.join("\n")}`);
  assert.ok(failedAt > 0, `rank 0 never saw an error: ${seen.join("\n")}`);
  assert.ok(failedAt - killedAt < 2000, `rank 0 saw the error ${failedAt - killedAt} ms after the kill`);
  assert.ok(
    Date.now() - killedAt < 3500,
    `the job took ${Date.now() - killedAt} ms to end after the kill (started ${killedAt - t0} ms in)`,
  );
  assert.equal(res.ranks[0].exitCode, 9);
  assert.equal(res.ranks[1].state, "lost");
  assert.equal(res.lostHosts[0]?.label, g.label);
  await drained(F);
  const again = await myrixen(["run", "-n", "2", "--hosts", F.label, fixture("mh-hello")]);
  assert.equal(again.code, 0, again.stderr);
  F.proc.kill("SIGKILL");
});

test("MX cross-host: a frozen host (SIGSTOP) mid-transfer — its peer's MPI call fails ENDPOINT_UNREACHABLE saying why", async () => {
  const [F, G] = await Promise.all([startHost(), startHost()]);
  const [f, g] = await Promise.all([
    RemoteHost.connect({ host: "127.0.0.1", port: F.port }, { key: KEY }),
    RemoteHost.connect({ host: "127.0.0.1", port: G.port }, { key: KEY }),
  ]);
  let frozeAt = 0;
  let failedAt = 0;
  let failure = "";
  const seen: string[] = [];
  const job = new Job([f, g], {
    n: 2,
    path: "bypass",
    program: fixture("mh-stream"),
    pages: 4096,
    // The frozen host keeps its sockets: the survivor's NIC must notice the silence itself.
    lostHostGraceMs: 20_000,
    output: (rank, _s, line) => {
      seen.push(`[${rank}] ${line}`);
      if (/rank 1 streaming/.test(line) && !frozeAt) {
        frozeAt = Date.now();
        G.proc.kill("SIGSTOP");
      }
      if (/rank 0: send failed/.test(line)) {
        failedAt = Date.now();
        failure = line;
        void job.stop();
      }
    },
  });
  try {
    await job.run();
  } finally {
    G.proc.kill("SIGKILL");
    f.close();
    g.close();
  }
  assert.ok(frozeAt > 0, `never streamed: ${seen.join("\n")}`);
  assert.ok(failedAt > 0, `rank 0 never saw an error: ${seen.join("\n")}`);
  // The README's "about two seconds", with room for a loaded machine.
  assert.ok(failedAt - frozeAt < 10_000, `rank 0 saw the error ${failedAt - frozeAt} ms after the freeze`);
  assert.match(failure, /MX_STATUS_ENDPOINT_UNREACHABLE/);
  assert.match(failure, /no answer from the peer's NIC/, "the error says what happened");
  F.proc.kill("SIGKILL");
});

// ---- network namespaces -------------------------------------------------------------------

const NS_TAG = `${process.pid % 100000}${Math.floor(Math.random() * 90 + 10)}`;
const NS = [`mxa${NS_TAG}`, `mxb${NS_TAG}`];
let nsMade = false;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"], timeout: 5000 });
}

after(() => {
  if (!nsMade) return;
  for (const ns of NS) {
    try {
      ip("netns", "del", ns);
    } catch {
      // already gone
    }
  }
});

test("two network namespaces joined by a veth pair: a job across hosts in each", async (t) => {
  if (process.platform !== "linux") return t.skip("network namespaces need Linux");
  if (process.getuid?.() !== 0)
    return t.skip("creating network namespaces needs root (run the suite as root to include it)");
  try {
    execFileSync("ip", ["netns", "list"], { stdio: "ignore", timeout: 5000 });
  } catch (e) {
    return t.skip(`\`ip netns\` is not available: ${(e as Error).message}`);
  }
  const [na, nb] = NS;
  const [va, vb] = [`vxa${NS_TAG}`, `vxb${NS_TAG}`];
  try {
    nsMade = true;
    ip("netns", "add", na);
    ip("netns", "add", nb);
    ip("link", "add", va, "type", "veth", "peer", "name", vb);
    ip("link", "set", va, "netns", na);
    ip("link", "set", vb, "netns", nb);
    ip("-n", na, "addr", "add", "10.77.0.1/24", "dev", va);
    ip("-n", nb, "addr", "add", "10.77.0.2/24", "dev", vb);
    for (const [ns, dev] of [
      [na, va],
      [nb, vb],
    ]) {
      ip("-n", ns, "link", "set", dev, "up");
      ip("-n", ns, "link", "set", "lo", "up");
    }
  } catch (e) {
    return t.skip(`cannot set up namespaces and a veth pair here: ${(e as Error).message}`);
  }
  const inA = ["ip", "netns", "exec", na];
  const [HA, HB] = await Promise.all([
    startHost(["--nic-id", "101"], inA, "10.77.0.1:0"),
    startHost(["--nic-id", "102"], ["ip", "netns", "exec", nb], "10.77.0.2:0"),
  ]);
  const hosts = `${HA.label},${HB.label}`;
  const r = await myrixen(["run", "-n", "4", "--hosts", hosts, fixture("mh-hello")], { prefix: inA });
  assert.equal(r.code, 0, r.stderr);
  for (const [rank, nic] of [101, 102, 101, 102].entries()) assert.match(r.stdout, helloLine(rank, 4, nic));
  // The NICs' link crossed the veth pair: host A sees B's NIC.
  const s = await myrixen(["run", "-n", "2", "--hosts", hosts, fixture("mh-fail"), "1"], { prefix: inA });
  assert.equal(s.code, 7, s.stderr);

  await t.test("MX cross-host: MPI ping-pong and allreduce across the namespaces", async () => {
    const m = await myrixen(["run", "-n", "4", "--pages", "4096", "--hosts", hosts, fixture("mh-mpi")], {
      prefix: inA,
    });
    assert.equal(m.code, 0, m.stderr);
    assert.match(m.stdout, /^rank 3 allreduce of 1000 doubles over 4 ranks: ok$/m);
  });
  HA.proc.kill("SIGTERM");
  HB.proc.kill("SIGTERM");
  assert.deepEqual(await Promise.all([HA.exited, HB.exited]), [0, 0]);
});

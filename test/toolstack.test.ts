// The toolstack commands (myrixen list, info, xenstore-ls, endpoints, top) against a real
// `myrixen host` process running a job, with and without --json; a wrong key, a host that is
// not there, an unknown domain or path; garbage on the control port; and the embedded host of
// `myrixen run`, found through the runtime file.

import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { WIRE_VERSION } from "../src/cluster/wire.js";
import { LaneReader, LaneWriter } from "../src/mx/channel.js";
import { laneProgress } from "../src/myrixen/back.js";
import { CHANNEL_BYTES } from "../src/myrixen/channel-abi.js";
import { fixture, type HostProc, killChildren, myrixen, startHost, until } from "./helpers/hosts.js";

const dir = mkdtempSync(join(tmpdir(), "myrixen-toolstack-"));
const KEY = join(dir, "cluster.key");
const WRONG = join(dir, "wrong.key");
writeFileSync(KEY, `${"a1".repeat(32)}\n`, { mode: 0o600 });
writeFileSync(WRONG, `${"b2".repeat(32)}\n`, { mode: 0o600 });
// The runtime files of embedded clusters go here, not into the user's own directory.
const ENV = { XDG_RUNTIME_DIR: join(dir, "run") };

let host: HostProc;
let job: Promise<unknown> | undefined;
let jobProc: ChildProcess | undefined;

before(async () => {
  host = await startHost(["--key-file", KEY, "--slots", "2"]);
  job = myrixen(["run", "-n", "2", "--hosts", host.label, "--key-file", KEY, fixture("mh-traffic")], {
    killAfterMs: 170_000,
    onLine: (_l, p) => {
      jobProc = p;
    },
  });
  await until(() => jobProc !== undefined, "the job's first output line", 30_000);
});

after(async () => {
  jobProc?.kill("SIGKILL");
  await job;
  killChildren();
  rmSync(dir, { recursive: true, force: true });
});

const at = () => ["--host", host.label, "--key-file", KEY];

test("a lane's progress, as myrback reads it, follows what its writer and reader did", () => {
  const ch = new SharedArrayBuffer(CHANNEL_BYTES);
  const w = new LaneWriter(ch, 1);
  const r = new LaneReader(ch, 1, 15);
  for (let i = 0; i < 3; i++) {
    const at = w.reserve(100);
    w.words[(at >>> 2) + 1] = 1;
    w.commit();
  }
  const p = laneProgress(ch, 1);
  assert.equal(p.written, 3 * 152);
  assert.equal(p.backlog, 3 * 152);
  assert.equal(r.next(), true);
  r.countMessage();
  r.release();
  // The reader shows what it consumed in steps, and on each of its progress loop's sweeps
  // (every 32nd poll, and before it sleeps), which is what this stands for.
  r.publishHead();
  // The reader counts the messages it took (the library does it for message records).
  assert.deepEqual(laneProgress(ch, 1), { written: 3 * 152, backlog: 2 * 152, messages: 1 });
  assert.deepEqual(laneProgress(ch, 0), { written: 0, backlog: 0, messages: 0 });
});

test("myrixen list shows the job's domains, their state, uptime and MX endpoints (text and --json)", async () => {
  let r = await myrixen(["list", ...at()]);
  for (let i = 0; i < 100 && !/rank1 .*ep\d+ bypass/.test(r.stdout); i++) {
    await new Promise((res) => setTimeout(res, 200));
    r = await myrixen(["list", ...at()]);
  }
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /NIC \d+, 127\.0\.0\.1:\d+/);
  assert.match(
    r.stdout,
    /^Name\s+ID\s+Mem\(MiB\)\s+Heap\(MiB\)\s+Buf\(MiB\)\s+Thread\s+State\s+Uptime\s+MX endpoints\s+Job/m,
  );
  // The driver domain is not metered (the host's own code); a guest's typed arrays are.
  assert.match(r.stdout, /^Domain-0\s+0\s+2\.0\s+-\s+-\s+\d+\s+running\s+\d+:\d\d:\d\d/m);
  assert.match(
    r.stdout,
    /^rank0\s+\d+\s+64\.0\s+\d+\.\d\s+\d+\.\d\s+\d+\s+running\s+\d+:\d\d:\d\d\s+ep\d+ bypass, vif\s+\S+ rank 0/m,
  );

  const j = await myrixen(["list", "--json", ...at()]);
  assert.equal(j.code, 0, j.stderr);
  const [h] = JSON.parse(j.stdout) as {
    host: { nicId: number };
    domains: {
      name: string;
      state: string;
      kind: string;
      buffersKiB?: number;
      heapKiB?: number;
      endpoints: { path: string }[];
      job?: { rank: number };
    }[];
  }[];
  assert.equal(h.host.nicId, host.nicId);
  const rank1 = h.domains.find((d) => d.name === "rank1")!;
  assert.equal(rank1.kind, "guest");
  assert.equal(typeof rank1.buffersKiB, "number");
  assert.equal(typeof rank1.heapKiB, "number");
  assert.equal(h.domains.find((d) => d.name === "Domain-0")?.buffersKiB, undefined);
  assert.equal(rank1.state, "running");
  assert.equal(rank1.job?.rank, 1);
  assert.deepEqual(
    rank1.endpoints.map((e) => e.path),
    ["bypass"],
  );

  const one = await myrixen(["list", "rank1", ...at()]);
  assert.equal(one.code, 0, one.stderr);
  assert.doesNotMatch(one.stdout, /rank0/);
  const none = await myrixen(["list", "rank99", ...at()]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no domain "rank99" on host .*; its domains: 0 \(Domain-0\)/);
});

test("myrixen info and endpoints: the NIC, quotas, versions; each endpoint's owner, path, peers and queues", async () => {
  const r = await myrixen(["info", ...at()]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^nic\\s+: NIC ${host.nicId}: \\d+/32 endpoints open`, "m"));
  assert.match(r.stdout, /^quotas\s+: per domain: 8 endpoints, 1024 regions, 256\.0 MiB registered/m);
  assert.match(
    r.stdout,
    new RegExp(
      `^versions\\s+: myrixen \\d+\\.\\d+\\.\\d+, control protocol ${WIRE_VERSION}, snapshot 1, node `,
      "m",
    ),
  );
  assert.match(r.stdout, /^jobs\s+: \S+ \(2 ranks\)/m);
  const j = JSON.parse((await myrixen(["info", "--json", ...at()])).stdout) as {
    nic: { maxEndpoints: number; counters: Record<string, number> };
    limits: { endpointsPerDomain: number };
  }[];
  assert.equal(j[0].nic.maxEndpoints, 32);
  assert.equal(j[0].limits.endpointsPerDomain, 8);
  assert.equal(typeof j[0].nic.counters.pulls, "number");

  const e = await myrixen(["endpoints", ...at()]);
  assert.equal(e.code, 0, e.stderr);
  assert.match(e.stdout, /^EP\s+Dom\s+Owner\s+Path\s+Peers \(co-resident\)\s+Send q\s+Event q/m);
  assert.match(e.stdout, /^\d+\s+\d+\s+domain \d+\s+bypass\s+ep\d+@dom\d+ channel\s+\d+\/256\s+\d+\/1024/m);
  const ej = JSON.parse((await myrixen(["endpoints", "--json", ...at()])).stdout) as {
    endpoints: { id: number; domid: number; path: string; peers: { endpoint: number }[]; regions: number }[];
  }[];
  const eps = ej[0].endpoints;
  assert.equal(eps.length, 2);
  assert.deepEqual(
    eps.map((x) => x.path),
    ["bypass", "bypass"],
  );
  assert.equal(eps[0].peers[0].endpoint, eps[1].id, "each endpoint's co-resident peer is the other");
  const byDomain = await myrixen(["endpoints", "--domain", "nosuch", ...at()]);
  assert.equal(byDomain.code, 1);
  assert.match(byDomain.stderr, /no domain "nosuch"/);
});

test("myrixen xenstore-ls lists a subtree (text, -p, --json); a path that does not exist is a clear error", async () => {
  const r = await myrixen(["xenstore-ls", "/local/domain/0", ...at()]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^name = "Domain-0"$/m);
  assert.match(r.stdout, /^backend = ""$/m);
  assert.match(r.stdout, /^ myri = ""$/m);
  const p = await myrixen(["xenstore-ls", "-p", "/local/domain/0/name", ...at()]);
  assert.equal(p.code, 0, p.stderr);
  const j = await myrixen(["xenstore-ls", "--json", "/local", ...at()]);
  const [t] = JSON.parse(j.stdout) as {
    tree: { name: string; children: { name: string }[] };
    truncated: boolean;
  }[];
  assert.equal(t.tree.name, "/local");
  assert.deepEqual(
    t.tree.children.map((c) => c.name),
    ["domain"],
  );
  assert.equal(t.truncated, false);
  const bad = await myrixen(["xenstore-ls", "/no/such/path", ...at()]);
  assert.equal(bad.code, 1);
  assert.match(
    bad.stderr,
    /^myrixen xenstore-ls: host 127\.0\.0\.1:\d+: .*\/no\/such\/path does not exist$/m,
  );
  const rel = await myrixen(["xenstore-ls", "local", ...at()]);
  assert.equal(rel.code, 2);
  assert.match(rel.stderr, /PATH must be absolute/);
});

test("myrixen top --json gives rates per domain and per path; the bypass path costs the hypervisor nothing", async () => {
  const r = await myrixen(["top", "--json", "-n", "2", "--interval", "0.5", ...at()]);
  assert.equal(r.code, 0, r.stderr);
  const frames = r.stdout
    .split("\n")
    .map((l) => JSON.parse(l) as { rates: { paths: Record<string, Record<string, number>> } }[]);
  assert.equal(frames.length, 2);
  const bypass = frames.at(-1)![0].rates.paths.bypass;
  // The job's two ranks ping-pong all the time (64 KiB, pulled by the NIC).
  assert.equal(bypass.domains, 2);
  assert.ok(bypass.bytes > 0);
  assert.equal(bypass.grantOps, 0);
  assert.equal(bypass.evtchnSends, 0);
  const text = await myrixen(["top", "-n", "1", "--interval", "0.5", ...at()]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^rank0\s+\d+\s+running\s+bypass/m);
  assert.match(text.stdout, /^Path\s+Domains\s+Msgs\/s\s+Bytes\/s/m);
  const badPath = await myrixen(["top", "--path", "warp", ...at()]);
  assert.equal(badPath.code, 2);
  assert.match(badPath.stderr, /--path must be one of bypass, split, native, got "warp"/);
});

test("a wrong key is refused; a host that is not there is one line and exit code 1", async () => {
  const wrong = await myrixen(["list", "--host", host.label, "--key-file", WRONG]);
  assert.equal(wrong.code, 1);
  assert.match(
    wrong.stderr,
    /refused authentication: this side's cluster key .* is not the host's; use the cluster's key file/,
  );
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  const gone = await myrixen(["list", "--host", `127.0.0.1:${port}`, "--key-file", KEY]);
  assert.equal(gone.code, 1);
  assert.equal(gone.stderr.trim().split("\n").length, 1, gone.stderr);
  assert.match(
    gone.stderr,
    new RegExp(`^myrixen list: cannot reach host 127\\.0\\.0\\.1:${port}: connection refused`),
  );
});

test("garbage on the control port costs the host nothing: it drops those clients and keeps serving", async () => {
  const garbage = [
    "not json at all\n",
    `${JSON.stringify({ type: "snapshot", id: 1 })}\n`, // before the handshake
    "x".repeat(10_000),
    Buffer.from([0xff, 0xfe, 0x00, 0x0a]),
  ];
  const reasons = [
    /a line that is not JSON/,
    /the first message must be "hello", got "snapshot"/,
    /a line longer than 4096 bytes/,
    /bytes that are not UTF-8 text/,
  ];
  for (const [i, g] of garbage.entries()) {
    const sock = net.connect(host.port, "127.0.0.1");
    await new Promise<void>((res) => sock.once("connect", () => res()));
    let heard = "";
    // Read what the host says (a client that never reads would never see its end).
    sock.on("data", (d: Buffer) => {
      heard += d.toString();
    });
    sock.write(g);
    const closedByHost = await new Promise<boolean>((res) => {
      sock.once("close", () => res(true));
      sock.once("error", () => res(true));
      setTimeout(() => {
        sock.destroy();
        res(false);
      }, 20_000).unref();
    });
    assert.ok(closedByHost, `the host dropped the client that sent garbage ${i}`);
    const answer = JSON.parse(heard.trim().split("\n")[0]) as { type: string; msg: string };
    assert.equal(answer.type, "error");
    assert.match(answer.msg, reasons[i]);
  }
  const r = await myrixen(["list", ...at()]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /rank0/);
  assert.equal(host.proc.exitCode, null);
});

test("the embedded host of `myrixen run` serves inspection: myrixen list finds it through the runtime file", async () => {
  let runProc: ChildProcess | undefined;
  const run = myrixen(["run", "-n", "2", fixture("mh-traffic")], {
    env: ENV,
    killAfterMs: 120_000,
    onLine: (_l, p) => {
      runProc = p;
    },
  });
  try {
    let r = { code: 1 as number | null, stdout: "", stderr: "" };
    for (let i = 0; i < 150 && !/rank1 .*bypass/.test(r.stdout); i++) {
      await new Promise((res) => setTimeout(res, 200));
      r = await myrixen(["list"], { env: ENV });
    }
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^local \(NIC 0, 127\.0\.0\.1:\d+, the embedded host of myrixen run \(pid \d+\)\)$/m,
    );
    assert.match(r.stdout, /^rank1\s+\d+\s+64\.0/m);
    const runtime = join(ENV.XDG_RUNTIME_DIR, "myrixen");
    assert.equal(statSync(runtime).mode & 0o777, 0o700);
    const info = await myrixen(["info"], { env: ENV });
    assert.match(info.stdout, /^serves\s+: inspection only: the embedded host of myrixen run/m);
  } finally {
    runProc?.kill("SIGINT");
    await run;
  }
  // The runtime file goes with the run: the toolstack then looks for the local host.
  const after = await myrixen(["list", "--key-file", KEY], { env: ENV });
  assert.equal(after.code, 1);
  assert.match(after.stderr, /cannot reach host 127\.0\.0\.1:7470/);
});

/**
 * The launcher against a hostile or buggy host: a control port that holds the cluster key (so
 * it passes the handshake) and answers pings, but not what the launcher asks. The real Job and
 * RemoteHost drive it; the fake host is the attacker.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { type ClusterKey, randomClusterKey, readKeyFile } from "../src/cluster/auth.js";
import { Job, type JobResult } from "../src/cluster/job.js";
import {
  LINK_ANSWER_GRACE_MS,
  RemoteHost,
  START_ANSWER_BASE_MS,
  START_ANSWER_PER_RANK_MS,
} from "../src/cluster/remote.js";
import { runCli } from "./helpers/cli.js";
import { type FakeHost, fakeControlHost } from "./helpers/fake-host.js";

/**
 * A host that proves the key, pongs, and answers `link` and `start` unless `silent` lists
 * them (every message it got is in `got`); with `logOnHello`, it sends that log line first.
 */
function silentHost(
  key: ClusterKey,
  nicId: number,
  silent: string[],
  logOnHello?: { level: string; msg: string },
): Promise<FakeHost> {
  return fakeControlHost(key, {
    nicId,
    hostname: "hostile",
    afterHello: logOnHello && ((reply) => reply({ type: "log", ...logOnHello })),
    onMessage: (m, reply) => {
      if (silent.includes(m.type)) return;
      if (m.type === "link" || m.type === "start") reply({ type: "reply", id: m.id, ok: true });
    },
  });
}

/** The job's result, or "hung" if it has not ended long after the stop should have ended it. */
function endsOrHangs(run: Promise<JobResult>, ms: number): Promise<JobResult | "hung"> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    run,
    new Promise<"hung">((r) => {
      timer = setTimeout(() => r("hung"), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const until = async (cond: () => boolean) => {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
};

/** Two fake hosts (NIC ids `nics`; the second silent on `silentB`) and a launcher's connection to each. */
async function twoHosts(nics: [number, number], silentB: string[]) {
  const key = randomClusterKey();
  const a = await silentHost(key, nics[0], []);
  const b = await silentHost(key, nics[1], silentB);
  const ra = await RemoteHost.connect({ host: "127.0.0.1", port: a.port }, { key });
  const rb = await RemoteHost.connect({ host: "127.0.0.1", port: b.port }, { key });
  const close = () => {
    for (const x of [ra, rb, a, b]) x.close();
  };
  return { a, b, ra, rb, close };
}

/** The message a job's run failed with, "ran" if it did not fail, or "hung" after `ms`. */
function failureOf(job: Job, ms: number): Promise<string> {
  return endsOrHangs(
    job.run().then(
      () => "ran" as never,
      (e: Error) => e.message as never,
    ),
    ms,
  ) as Promise<string>;
}

test("a host that never answers `start` cannot keep a stopped job (Ctrl-C, --timeout) from ending", async () => {
  const key = randomClusterKey();
  const fake = await silentHost(key, 7, ["start"]);
  const rh = await RemoteHost.connect({ host: "127.0.0.1", port: fake.port }, { key });
  try {
    const job = new Job([rh], { n: 2, path: "native", program: "hello", stopTimeoutMs: 200 });
    const run = job.run();
    await until(() => fake.got.some((m) => m.type === "start"));
    await job.stop();
    const r = await endsOrHangs(run, 15_000);
    assert.notEqual(r, "hung", "the launcher waited forever for a start reply after the stop");
    if (r === "hung") return;
    assert.equal(r.stopped, true);
    assert.deepEqual(
      r.ranks.map((x) => x.state),
      ["lost", "lost"],
    );
    assert.ok(
      fake.got.some((m) => m.type === "stop"),
      "the stop reached the host",
    );
  } finally {
    rh.close();
    fake.close();
  }
});

test("a host that never answers `link` cannot keep a stopped job from ending", async () => {
  const { a, b, ra, rb, close } = await twoHosts([8, 9], ["link"]);
  try {
    const job = new Job([ra, rb], {
      n: 2,
      path: "native",
      program: "hello",
      stopTimeoutMs: 200,
      linkTimeoutMs: 600_000,
    });
    const run = job.run();
    await until(() => b.got.some((m) => m.type === "link"));
    await job.stop();
    const r = await endsOrHangs(run, 15_000);
    assert.notEqual(r, "hung", "the launcher waited forever for a link reply after the stop");
    if (r === "hung") return;
    assert.equal(r.stopped, true);
    assert.ok(!b.got.some((m) => m.type === "start") && !a.got.some((m) => m.type === "start"));
  } finally {
    close();
  }
});

test("a host that never answers `link`: the job fails after the link's deadline, naming the host (no --timeout needed)", async () => {
  // Before: without a stop (Ctrl-C, --timeout) the launcher waited for the answer for ever.
  const { a, b, ra, rb, close } = await twoHosts([11, 12], ["link"]);
  try {
    const job = new Job([ra, rb], { n: 2, path: "native", program: "hello", linkTimeoutMs: 100 });
    const outcome = await failureOf(job, LINK_ANSWER_GRACE_MS + 10_000);
    assert.notEqual(outcome, "hung", "the launcher waited for ever for a link reply");
    assert.match(String(outcome), /cannot link the hosts' NICs/);
    assert.match(
      String(outcome),
      new RegExp(`host 127\\.0\\.0\\.1:${b.port}.*did not answer its link request`),
    );
    assert.ok(!b.got.some((m) => m.type === "start") && !a.got.some((m) => m.type === "start"));
    assert.equal((rb as unknown as { pending: Map<number, unknown> }).pending.size, 0);
  } finally {
    close();
  }
});

test("a host that never answers `start`: the job fails after the start's deadline, naming the host", async () => {
  // Before: without a stop (Ctrl-C, --timeout) the launcher waited for the answer for ever (a
  // host whose hypervisor thread hangs still answers pings).
  const key = randomClusterKey();
  const fake = await silentHost(key, 13, ["start"]);
  const rh = await RemoteHost.connect({ host: "127.0.0.1", port: fake.port }, { key });
  try {
    const job = new Job([rh], {
      n: 2,
      path: "native",
      program: "hello",
      startTimeoutMs: 300,
      stopTimeoutMs: 200,
    });
    const outcome = await failureOf(job, 15_000);
    assert.notEqual(outcome, "hung", "the launcher waited for ever for a start reply");
    assert.match(
      String(outcome),
      new RegExp(`host 127\\.0\\.0\\.1:${fake.port}.*did not answer its start request in 300 ms`),
    );
    // The ranks it may have started are stopped (the stop is on its way when the job fails).
    const stopped = await endsOrHangs(
      until(() => fake.got.some((m) => m.type === "stop")).then(() => "stopped" as never),
      5000,
    );
    assert.equal(stopped, "stopped", `the host got: ${fake.got.map((m) => m.type).join(",")}`);
    // The default bound grows with the ranks a host is asked for.
    assert.ok(START_ANSWER_BASE_MS + START_ANSWER_PER_RANK_MS > LINK_ANSWER_GRACE_MS);
  } finally {
    rh.close();
    fake.close();
  }
});

test("a host whose RemoteHost is closed mid-job: the job ends, failed, naming the host (it waited for ever)", async () => {
  // An API user's close() (a launcher's shutdown, a dashboard dropping a host) cleared the
  // job's lost-callback and answered nothing: the job, its ranks still running there, never ended.
  const key = randomClusterKey();
  const fake = await silentHost(key, 14, []);
  const rh = await RemoteHost.connect({ host: "127.0.0.1", port: fake.port }, { key });
  try {
    const job = new Job([rh], { n: 2, path: "native", program: "hello", stopTimeoutMs: 200 });
    let ended = false;
    const run = job.run().finally(() => {
      ended = true;
    });
    await until(() => fake.got.some((m) => m.type === "start"));
    // The start's answer is on its way; the ranks "run" there (the fake host never ends them).
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(ended, false, "the job is under way");
    rh.close();
    const r = await endsOrHangs(run, 15_000);
    assert.notEqual(r, "hung", "the job never ended after its host's connection was closed");
    if (r === "hung") return;
    assert.equal(r.exitCode, 1);
    assert.deepEqual(
      r.ranks.map((x) => x.state),
      ["lost", "lost"],
    );
    const host = `127\\.0\\.0\\.1:${fake.port}`;
    assert.match(
      String(r.failed?.error?.message),
      new RegExp(
        `^host ${host} \\(NIC 14\\) was lost: its connection was closed on this side \\(RemoteHost\\.close\\(\\)\\)$`,
      ),
    );
    assert.deepEqual(
      r.lostHosts.map((l) => l.label),
      [`127.0.0.1:${fake.port}`],
    );
  } finally {
    rh.close();
    fake.close();
  }
});

test("RemoteHost.close() rejects every request still waiting, naming the host: a job whose start waits fails at once", async () => {
  // Before: a request without a deadline (status) waited for ever, one with a deadline (a
  // rank start: 60 s and more) until then.
  const key = randomClusterKey();
  const fake = await silentHost(key, 15, ["start", "status"]);
  const rh = await RemoteHost.connect({ host: "127.0.0.1", port: fake.port }, { key });
  try {
    const status = endsOrHangs(
      rh.status().then(
        () => "answered" as never,
        (e: Error) => e.message as never,
      ),
      15_000,
    );
    const job = new Job([rh], { n: 2, path: "native", program: "hello", stopTimeoutMs: 200 });
    const outcome = failureOf(job, 15_000);
    await until(() => fake.got.some((m) => m.type === "start") && fake.got.some((m) => m.type === "status"));
    rh.close();
    const host = `127\\.0\\.0\\.1:${fake.port}`;
    assert.match(
      String(await status),
      new RegExp(
        `^host ${host}: its connection was closed on this side \\(RemoteHost\\.close\\(\\)\\) before it answered the status request$`,
      ),
    );
    const failure = String(await outcome);
    assert.notEqual(failure, "hung", "the job waited for its start's answer after the close");
    assert.match(failure, new RegExp(`host ${host}.*closed on this side`));
    assert.equal((rh as unknown as { pending: Map<number, unknown> }).pending.size, 0);
    assert.match(String(await rh.status().catch((e: Error) => e.message)), new RegExp(`host ${host}`));
  } finally {
    rh.close();
    fake.close();
  }
});

test("a host that never answers snapshots: each request fails after its deadline and leaves nothing pending", async () => {
  // Observers (list, top, the dashboard's polls) asked without a deadline: `myrixen list` waited
  // for ever, and a long-running dashboard kept one pending entry per poll.
  const key = randomClusterKey();
  const fake = await silentHost(key, 10, ["snapshot", "xenstore"]);
  const rh = await RemoteHost.connect({ host: "127.0.0.1", port: fake.port }, { key, role: "observer" });
  try {
    /** What a request came to: its error, or "hung" long after its deadline. */
    const outcome = (p: Promise<unknown>) =>
      endsOrHangs(
        p.then(
          () => "answered",
          (e: Error) => e.message,
        ) as Promise<never>,
        5000,
      );
    for (let i = 0; i < 20; i++)
      assert.match(String(await outcome(rh.snapshot(50))), /did not answer its snapshot request in 50 ms/);
    assert.match(String(await outcome(rh.xenstore("/", 10, 50))), /did not answer its xenstore request/);
    // No public view of the pending requests: the private map the answers are matched in.
    assert.equal((rh as unknown as { pending: Map<number, unknown> }).pending.size, 0);
    assert.equal(rh.isLost, false, "a slow answer is not a lost host");
  } finally {
    rh.close();
    fake.close();
  }
});

test("a host's log text cannot move the launcher's cursor or erase its lines: control characters are shown", async () => {
  const dir = mkdtempSync(join(tmpdir(), "launcher-hostile-"));
  try {
    const keyFile = join(dir, "cluster.key");
    writeFileSync(keyFile, randomBytes(32).toString("hex"), { mode: 0o600 });
    const key = readKeyFile(keyFile);
    // Return to the line's start, erase it, and print a line of the launcher's own voice.
    const forged = "\r\x1b[2Kmyrixen run: all ranks ended normally";
    const fake = await silentHost(key, 11, [], { level: "warn", msg: forged });
    try {
      const r = await runCli([
        "run",
        "-n",
        "1",
        "--key-file",
        keyFile,
        "--hosts",
        `127.0.0.1:${fake.port}`,
        "--timeout",
        "1",
        "hello",
      ]);
      assert.notEqual(r.code, 0, "the fake host runs nothing: the job times out");
      const line = r.stderr.split("\n").find((l) => l.includes(`host 127.0.0.1:${fake.port}: `));
      assert.ok(line, r.stderr);
      assert.ok(!line.includes("\r") && !line.includes("\x1b"), JSON.stringify(line));
      assert.match(line, /\\x0d\\x1b\[2Kmyrixen run: all ranks ended normally/);
    } finally {
      fake.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

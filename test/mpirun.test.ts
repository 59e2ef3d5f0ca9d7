/**
 * `myrixen run` as an Open MPI user runs it (issue 14): mpirun's spellings (-np, -H, -N, -x,
 * --map-by, --tag-output, --display-map), output byte for byte as the program printed it,
 * oversubscription refused as Open MPI refuses it, --timeout's report of where each rank waits,
 * a throwing rank's stack naming the TypeScript line, and every newcomer mistake as one line
 * with exit code 2 (usage) or 1 (a failed job). Real launcher processes and real ranks.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseMapBy, parseOpenMpiHostList, TIMEOUT_EXIT_CODE } from "../src/cli/run.js";
import { loadClusterKey } from "../src/cluster/auth.js";
import { coreSlots } from "../src/cluster/placement.js";
import { BIN, runCli } from "./helpers/cli.js";

/** The TypeScript sources themselves (the guest loader compiles them), so stacks name .ts lines. */
const fixture = (name: string) => fileURLToPath(new URL(`../../test/fixtures/${name}.ts`, import.meta.url));
const TMP = mkdtempSync(join(tmpdir(), "myrixen-mpirun-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

const run = (args: string[], env: Record<string, string> = {}) =>
  runCli(["run", ...args], { env: { XDG_RUNTIME_DIR: TMP, ...env }, cwd: TMP });

/** stderr without the embedded host's "inspect it with myrixen list" note. */
const problems = (stderr: string) =>
  stderr.split("\n").filter((l) => l !== "" && !/inspect it with `myrixen list`/.test(l));

test("default output is byte for byte what the rank printed (no prefix, as Open MPI); --tag-output prefixes [rank@host]", async () => {
  const plain = await run(["-n", "1", fixture("mpirun-env"), "--bytes"]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(plain.stdout, "# OSU MPI Latency Test\n  8                       1.23\n\nlast line \n");
  const tagged = await run(["-n", "1", "--tag-output", fixture("mpirun-env"), "--bytes"]);
  assert.equal(tagged.code, 0, tagged.stderr);
  assert.equal(
    tagged.stdout,
    "[0@local] # OSU MPI Latency Test\n[0@local]   8                       1.23\n[0@local] \n[0@local] last line \n",
  );
});

test("mpirun's spellings: -np, -x VAR and VAR=VALUE, --display-map, Open MPI's rank variables; the program's own -np is its own", async () => {
  const r = await run(
    [
      "-np",
      "2",
      "-x",
      "MPIRUN_FOO",
      "-x",
      "MPIRUN_BAR=given here",
      "--display-map",
      "--map-by",
      "core",
      fixture("mpirun-env"),
      "-np",
      "5",
    ],
    { MPIRUN_FOO: "from the environment" },
  );
  assert.equal(r.code, 0, r.stderr);
  for (const rank of [0, 1])
    assert.match(
      r.stdout,
      new RegExp(
        `^rank ${rank} world ${rank}/2 FOO=from the environment BAR=given here argv \\["-np","5"\\]$`,
        "m",
      ),
    );
  assert.match(r.stderr, /job map: 2 ranks on 1 host, bypass path/);
  assert.match(r.stderr, /^ {2}local \(\d+ slots?\): ranks 0 1$/m);
  // Single-dash long options, as mpirun takes them.
  const single = await run(["-np", "1", "-npernode", "1", "-oversubscribe", fixture("mpirun-env")]);
  assert.equal(single.code, 0, single.stderr);
  assert.match(single.stdout, /^rank 0 world 0\/1 /m);
});

test("alone on this machine: one slot per core, as Open MPI counts them; more ranks are refused without --oversubscribe", async () => {
  const cores = coreSlots();
  const r = await run(["-n", String(cores + 1), fixture("mpirun-env")]);
  assert.equal(r.code, 2);
  assert.deepEqual(problems(r.stderr), [
    `myrixen run: ${cores + 1} ranks but this machine has ${cores} slot${cores === 1 ? "" : "s"} (one per core, as Open MPI counts them); pass --oversubscribe to run more ranks than cores, or use -n ${cores}`,
  ]);
  assert.equal(r.stdout, "");
  const npn = await run(["-N", String(cores + 1), fixture("mpirun-env")]);
  assert.equal(npn.code, 2);
  assert.match(npn.stderr, /--npernode \d+: this machine has \d+ slots? .*pass --oversubscribe/);
  const ok = await run(["-n", String(cores + 1), "--oversubscribe", fixture("mpirun-env")]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout.trim().split("\n").length, cores + 1);
});

test("-H takes Open MPI's host[:slots] (a host named again adds a slot); --map-by takes Open MPI's spellings", () => {
  const hosts = parseOpenMpiHostList("a,a,b:3,c:7471:2");
  assert.deepEqual(
    hosts.map((h) => [h.host, h.port, h.slots]),
    [
      ["a", 7470, 2],
      ["b", 7470, 3],
      ["c", 7471, 2],
    ],
  );
  assert.throws(() => parseOpenMpiHostList("a:7471"), /-H host:N gives N slots .* write host:port:slots/);
  assert.throws(() => parseOpenMpiHostList("a,,b"), /-H item 2 is empty/);
  assert.deepEqual(parseMapBy("ppr:2:node"), { mapBy: "slot", npernode: 2, oversubscribe: undefined });
  assert.deepEqual(parseMapBy("node:OVERSUBSCRIBE"), {
    mapBy: "node",
    npernode: undefined,
    oversubscribe: true,
  });
  assert.equal(parseMapBy("socket").mapBy, "slot");
  assert.throws(() => parseMapBy("diagonal"), /--map-by must be node or slot/);
  assert.throws(() => parseMapBy("slot:PE=2"), /the modifier "PE=2" is not supported/);
});

test("--timeout ends a stuck job with exit code 124 and where each rank waits; what a rank printed before it blocked is all there", async () => {
  const r = await run(["-n", "2", "--timeout", "8", fixture("mpirun-stuck")]);
  assert.equal(r.code, TIMEOUT_EXIT_CODE, r.stderr);
  assert.equal(r.stdout, "rank 1 line 1\nrank 1 line 2\nrank 1 line 3\n");
  assert.match(r.stderr, /the job ran past --timeout 8 s; stopping it\. Where each rank was:/);
  assert.match(r.stderr, /^ {2}rank 0: waiting in MPI_Recv\(source 1, tag 8\) for \d+\.\d s$/m);
  assert.match(r.stderr, /^ {2}rank 1: waiting in MPI_Recv\(source 0, tag 7\) for \d+\.\d s$/m);
});

test("a rank that returns without MPI_Finalize fails the job at once, as under mpirun (its peer waiting on it is stopped, not left forever)", async () => {
  // --timeout bounds the job this test plays: without the rule, rank 0 would wait forever.
  const r = await run(["-n", "2", "--timeout", "60", fixture("mpirun-no-finalize")]);
  assert.equal(r.code, 1, r.stderr);
  assert.deepEqual(problems(r.stderr), [
    "myrixen run: rank 1 returned from main after MPI.init without calling comm.finalize() (a failure under MPI, as with mpirun: the other ranks could wait for it forever); the other ranks were stopped",
  ]);
  // The same program finalizing: no complaint. A program that never calls MPI.init may return as it likes.
  const ok = await run(["-n", "2", fixture("mpirun-no-finalize"), "finalize"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "rank 0 got 7\n");
  const plain = await run(["-n", "2", fixture("mpirun-env")]);
  assert.equal(plain.code, 0, plain.stderr);
});

test("--max-heap sets each rank's heap limit; a rank that outgrows it fails with one line naming the flag", async () => {
  const r = await run(["-n", "1", "--max-heap", "64", fixture("mpirun-heap"), "200"]);
  assert.equal(r.code, 1, r.stderr);
  assert.deepEqual(problems(r.stderr), [
    "myrixen run: rank 0 ran out of memory: its JavaScript heap reached the 64 MiB limit (raise it with --max-heap <MiB>; typed arrays and guest memory do not count against it)",
  ]);
  const ok = await run(["-n", "1", "--max-heap", "1024", fixture("mpirun-heap"), "200"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "held 200 MiB in 3200 arrays\n");
  const bad = await run(["-n", "1", "--max-heap", "8", fixture("mpirun-heap")]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--max-heap must be 16\.\.16384 \(MiB\), got 8/);
});

test("--max-buffers bounds each rank's typed arrays outside its heap; a rank that holds more is stopped with one line naming the flag", async () => {
  const r = await run(["-n", "1", "--max-buffers", "64", fixture("mpirun-buffers"), "4096"]);
  assert.equal(r.code, 1, r.stderr);
  const lines = problems(r.stderr);
  assert.equal(lines.length, 1, r.stderr);
  assert.match(
    lines[0],
    /^myrixen run: rank 0 ran out of memory: it held \d+ MiB of ArrayBuffers and typed arrays, over the 64 MiB limit \(raise it with --max-buffers <MiB>; its JavaScript heap and guest memory do not count against it\)/,
  );
  const ok = await run(["-n", "1", "--max-buffers", "512", fixture("mpirun-buffers"), "200"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "held 200 MiB in 50 typed arrays\n");
});

test("a rank that throws: one line naming the rank, the error and the .ts line, then its stack through the user's functions", async () => {
  const r = await run(["-n", "2", fixture("mpirun-throws")]);
  assert.equal(r.code, 1);
  const lines = problems(r.stderr);
  assert.match(
    lines[0],
    /^myrixen run: rank 1 failed: RangeError: value 1 is out of range \(at \S*mpirun-throws\.ts:6:\d+\); the other ranks were stopped$/,
  );
  assert.match(lines[1], /^ {4}at checkValue \(\S*mpirun-throws\.ts:6:\d+\)$/);
  assert.match(lines[2], /^ {4}at main \(\S*mpirun-throws\.ts:12:\d+\)$/);
  // The tool's own runtime is not part of the user's stack.
  assert.doesNotMatch(r.stderr, /guest[/\\]runtime\.js|sandbox\.js/);
});

test("every newcomer mistake: one line naming what to fix, exit code 2 for usage and 1 for a program that does not compile", async () => {
  const syntax = join(TMP, "broken.ts");
  writeFileSync(syntax, "export default function main() {\n  const x = ;\n}\n");
  const notModule = join(TMP, "notes.txt");
  writeFileSync(notModule, "not a program\n");
  const noMain = join(TMP, "helpers.ts");
  writeFileSync(noMain, "export function helper(x: number): number {\n  return x + 1;\n}\n");
  const cases: [string[], number, RegExp][] = [
    [["-n", "2", "nas-epp"], 2, /no program "nas-epp" \(did you mean nas-ep\?\): give a built-in name/],
    [["-n", "0", "nas-ep"], 2, /-n must be a positive integer \(the number of ranks\), got "0"/],
    [["-n", "abc", "nas-ep"], 2, /-n must be a positive integer \(the number of ranks\), got "abc"/],
    [["-np", "0", "nas-ep"], 2, /-n must be a positive integer/],
    [["-n"], 2, /-n needs a value: write -n <n> \(the number of ranks, e\.g\. -n 4\)/],
    [["-n", "1", "--timeout"], 2, /--timeout needs a value/],
    [
      ["-n", "1", "--timeout", "soon", "nas-ep"],
      2,
      /--timeout must be a number of seconds greater than 0, got "soon"/,
    ],
    [[], 2, /no program given: write myrixen run \[-n N\] PROGRAM/],
    [["-n", "1", notModule], 2, /"[^"]*notes\.txt" is not a program/],
    [["-n", "1", "missing.ts"], 2, /no such file missing\.ts/],
    // A module whose exports hold no main: said before any rank starts (each rank failed with a TypeError).
    [["-n", "2", noMain], 2, /helpers\.ts exports no main\(guest\): export the function each rank runs/],
    // `--dashboard` takes an optional value: a program after it stays the program.
    [["-n", "2", "--dashboard", noMain], 2, /helpers\.ts exports no main\(guest\)/],
    [["-n", "1", "brokn.ts"], 2, /no such file brokn\.ts \(did you mean broken\.ts\?\)/],
    [["--hots", "a", "nas-ep"], 2, /unknown option --hots \(did you mean .*--hosts.*\)/],
    [["-x", "1BAD", "nas-ep"], 2, /-x 1BAD: "1BAD" is not a variable name/],
    [["-x", "MPIRUN_UNSET_VAR", "nas-ep"], 2, /-x MPIRUN_UNSET_VAR: MPIRUN_UNSET_VAR is not set here/],
    [["--map-by", "diagonal", "nas-ep"], 2, /--map-by must be node or slot/],
    [["--max-buffers", "8", "nas-ep"], 2, /--max-buffers must be 16\.\.1048576 \(MiB\), got 8/],
    // Beyond what a host takes in a link request: it failed mid-job as "host lost".
    [["--link-timeout", "700000", "nas-ep"], 2, /--link-timeout must be at most 600000 \(ms\), got 700000/],
    // A built-in's own arguments, checked before any rank starts (rank 0 used to say it after).
    [["-n", "2", "nas-ep", "--class", "Z"], 2, /ep: unknown class "Z" \(expected one of S, W, A\)/],
    [["-n", "2", "osu-bw", "-m", "0"], 2, /osu-bw: -m: minimum 1 is larger than maximum 0/],
    [
      ["-n", "1", syntax],
      1,
      /^myrixen run: broken\.ts:2:13: Unexpected ";" \(the program does not compile; no rank was started\)$/,
    ],
  ];
  // Two launchers at a time (each only parses, or compiles and refuses): the machine has two cores.
  const results: Awaited<ReturnType<typeof run>>[] = [];
  for (let i = 0; i < cases.length; i += 2)
    results.push(...(await Promise.all(cases.slice(i, i + 2).map(([args]) => run(args)))));
  for (const [i, [args, code, message]] of cases.entries()) {
    const r = results[i];
    const lines = problems(r.stderr);
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(lines.length, 1, `${args.join(" ")}: one line, got:\n${r.stderr}`);
    assert.match(lines[0], /^myrixen run: /, args.join(" "));
    assert.match(lines[0], message, args.join(" "));
    assert.doesNotMatch(r.stderr, /^\s+at /m, `${args.join(" ")}: no stack trace of the tool`);
  }
});

/** A `myrixen host` on loopback (port 0: its ports come in the "host ready" log line). */
async function startHost(env: Record<string, string>): Promise<{ proc: ChildProcess; label: string }> {
  const proc = spawn(process.execPath, [BIN, "host", "--listen", "127.0.0.1:0", "--slots", "1"], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, ...env },
  });
  let buf = "";
  const port = await new Promise<number>((resolve, reject) => {
    proc.stderr?.setEncoding("utf8");
    proc.stderr?.on("data", (d: string) => {
      buf += d;
      for (const line of buf.split("\n"))
        if (line.includes('"host ready"')) resolve((JSON.parse(line) as { controlPort: number }).controlPort);
    });
    proc.once("exit", (code) => reject(new Error(`myrixen host exited (${code}):\n${buf}`)));
  });
  return { proc, label: `127.0.0.1:${port}` };
}

test("across hosts (-H host:slots): a throwing rank's .ts stack and --timeout's report come from the host that ran it", async () => {
  // The hosts and the launcher share a cluster key file under this test's own config dir.
  const env = { XDG_CONFIG_HOME: TMP, MYRIXEN_KEY_FILE: "" };
  delete process.env.MYRIXEN_KEY_FILE;
  loadClusterKey({ env: { XDG_CONFIG_HOME: TMP } });
  const hosts = [await startHost(env), await startHost(env)];
  try {
    const H = hosts.map((h) => `${h.label}:1`).join(",");
    const throws = await run(["-H", H, fixture("mpirun-throws")], env);
    assert.equal(throws.code, 1, throws.stderr);
    assert.match(
      throws.stderr,
      /^myrixen run: rank 1 failed: RangeError: value 1 is out of range \(at \S*mpirun-throws\.ts:6:\d+\)/m,
    );
    assert.match(throws.stderr, /^ {4}at main \(\S*mpirun-throws\.ts:12:\d+\)$/m);
    const stuck = await run(["-H", H, "--timeout", "8", "--display-map", fixture("mpirun-stuck")], env);
    assert.equal(stuck.code, TIMEOUT_EXIT_CODE, stuck.stderr);
    assert.equal(stuck.stdout, "rank 1 line 1\nrank 1 line 2\nrank 1 line 3\n");
    assert.match(stuck.stderr, new RegExp(`^ {2}${hosts[0].label} \\(1 slot\\): rank 0$`, "m"));
    assert.match(
      stuck.stderr,
      new RegExp(
        `^ {2}rank 0 on ${hosts[0].label}: waiting in MPI_Recv\\(source 1, tag 8\\) for \\d+\\.\\d s$`,
        "m",
      ),
    );
    assert.match(
      stuck.stderr,
      new RegExp(
        `^ {2}rank 1 on ${hosts[1].label}: waiting in MPI_Recv\\(source 0, tag 7\\) for \\d+\\.\\d s$`,
        "m",
      ),
    );
  } finally {
    for (const h of hosts) h.proc.kill("SIGTERM");
  }
});

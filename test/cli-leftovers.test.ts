/**
 * What an audit of the command line left (each as a user meets it, through the real CLI): a
 * file that cannot be written at the end of `bench` and a dashboard port in use said "this is
 * a bug in myrixen"; a rejected `bench` left an empty reports/bench-<time>/; `top --interval`
 * took 1e12 (a refresh every millisecond, as setTimeout overflows); `-H [::1]:7471:2` was
 * refused and `-H [::1]:2` read as a port; `--json ""` was ignored; `--key-file ""` named the
 * working directory, `--transports " , "` an unknown ",", `--peers` took a host twice or
 * itself without a word; and an OSU `-m` too large for the ranks' memory, or a `--pages`
 * larger than a domain may have, failed after the job started; commander's own errors (a bad
 * `top -n`, an unknown option) took two lines in its words on every command but `run`; and
 * Ctrl-C during `bench` or `start` left an empty report directory without a word. Each
 * now ends with one line saying what to fix, exit code 2 for bad usage and 1 for the
 * environment.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { cliHost } from "./helpers/cli-host.js";
import { type HostProc, myrixen, type RunResult, startHost } from "./helpers/hosts.js";

const CLI = cliHost("myrixen-leftovers-");
const TMP = CLI.tmp;
const ENV = CLI.env;
const BUG_LINE = /this is a bug in myrixen/;

/** A usage error: exit 2 and exactly one line on stderr, matching `line`. */
function usage(r: RunResult, line: RegExp, what: string): void {
  assert.equal(r.code, 2, `${what}: exit ${r.code}\n${r.stderr}`);
  assert.deepEqual(r.stderr.trim().split("\n").length, 1, `${what}: one line\n${r.stderr}`);
  assert.match(r.stderr.trim(), line, what);
  assert.doesNotMatch(r.stderr, BUG_LINE);
}

const quote = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

test("bench --json /dev/full and dashboard --listen on a busy port: one runtime-failure line, exit 1, the rows kept", async () => {
  // raw-sab: the cheapest pair that makes rows (what is written, not what is measured, is tested).
  const bench = await myrixen(
    ["bench", "pingpong", "--quick", "--sizes", "8", "--transports", "raw-sab", "--json", "/dev/full"],
    { env: ENV, cwd: TMP, killAfterMs: 120_000 },
  );
  assert.equal(bench.code, 1, bench.stderr);
  assert.doesNotMatch(bench.stderr, BUG_LINE);
  const m =
    /^myrixen bench: cannot write benchmark JSON to \/dev\/full: ENOSPC[^\n]*; the rows are saved in (\S+) instead$/m.exec(
      bench.stderr,
    );
  assert.ok(m, bench.stderr);
  const saved = JSON.parse(readFileSync(m[1], "utf8")) as { rows: { transport: string; bytes: number }[] };
  rmSync(m[1], { force: true });
  assert.ok(saved.rows.some((r) => r.transport === "raw-sab" && r.bytes === 8));

  const dash = await myrixen(
    ["dashboard", "--host", CLI.host.label, "--listen", `127.0.0.1:${CLI.busyPort}`],
    {
      env: ENV,
      killAfterMs: 30_000,
    },
  );
  assert.equal(dash.code, 1, dash.stderr);
  assert.doesNotMatch(dash.stderr, BUG_LINE);
  assert.match(
    dash.stderr,
    new RegExp(
      `^myrixen dashboard: the dashboard cannot listen on 127\\.0\\.0\\.1:${CLI.busyPort}: already in use`,
      "m",
    ),
  );
});

test("a rejected bench leaves no directory behind (reports/bench-<time>/, --out's, --json's)", async () => {
  const cwd = mkdtempSync(join(TMP, "bench-"));
  for (const [args, line] of [
    [["--quick", "--transports", "nonsense"], /--transports: unknown "nonsense"/],
    [["--quick", "--sizes", "128M"], /--sizes: 134217728 bytes is more than the 64 MiB/],
    [
      [
        "pingpong",
        "--out",
        join(cwd, "o", "p"),
        "--json",
        join(cwd, "j", "k.json"),
        "--transports",
        "memcpy",
      ],
      /--transports: memcpy is not measured by pingpong/,
    ],
  ] as const) {
    const r = await myrixen(["bench", ...args], { env: ENV, cwd, killAfterMs: 30_000 });
    usage(r, line, args.join(" "));
    assert.deepEqual(readdirSync(cwd), [], `${args.join(" ")} left ${readdirSync(cwd).join(", ")}`);
  }
});

test("top --interval and dashboard --interval are bounded: 0, negative, 1e12, NaN, too small or large are one usage line", async () => {
  const at = ["--host", "127.0.0.1:1"];
  for (const v of ["0", "-1", "1e12", "NaN", "0.01", "3601"]) {
    const r = await myrixen(["top", "-n", "1", "--interval", v, ...at], { env: ENV, killAfterMs: 15_000 });
    usage(
      r,
      new RegExp(
        `^myrixen top: --interval must be a number of seconds from 0\\.1 to 3600, got "${quote(v)}"$`,
      ),
      `top --interval ${v}`,
    );
  }
  for (const v of ["5", "1e9"]) {
    const r = await myrixen(["dashboard", "--interval", v, ...at], { env: ENV, killAfterMs: 15_000 });
    usage(
      r,
      new RegExp(
        `^myrixen dashboard: --interval must be a number of milliseconds from 100 to 3600000, got "${v}"$`,
      ),
      `dashboard --interval ${v}`,
    );
  }
});

test("-H takes bracketed IPv6 as Open MPI's host[:port][:slots]: [::1]:7471:2, [::1]:2 (slots); the old forms stay", async (t) => {
  const { parseOpenMpiHostList } = await import("../src/cli/run.js");
  const read = (text: string) => parseOpenMpiHostList(text).map((h) => [h.label, h.slots]);
  assert.deepEqual(read("[::1]:7471:2"), [["[::1]:7471", 2]]);
  assert.deepEqual(read("[::1]:2"), [["[::1]:7470", 2]]);
  assert.deepEqual(read("[::1]:2,[::1]:7471:3,b"), [
    ["[::1]:7470", 2],
    ["[::1]:7471", 3],
    ["b:7470", 1],
  ]);
  // What -H took before, read as before.
  assert.deepEqual(read("[::1]:7471"), [["[::1]:7471", undefined]]);
  assert.deepEqual(read("[::1]:9*2"), [["[::1]:9", 2]]);
  assert.deepEqual(read("a,a,b:3,c:7471:2"), [
    ["a:7470", 2],
    ["b:7470", 3],
    ["c:7471", 2],
  ]);
  assert.throws(() => read("::1:2"), /-H item 1 "::1:2": write an IPv6 address in brackets/);
  assert.throws(() => read("[::1]:0"), /the slot count must be a positive integer, got "0"/);

  // Through the CLI, against a host on the IPv6 loopback (where this machine has one).
  let v6: HostProc;
  try {
    v6 = await startHost(["--listen", "[::1]:0", "--slots", "2"], ENV);
  } catch {
    t.skip("no IPv6 loopback here");
    return;
  }
  const r = await myrixen(
    [
      "run",
      "-n",
      "2",
      "-H",
      `[::1]:${v6.port}:2`,
      "--display-map",
      "osu-latency",
      "-m",
      "8",
      "-i",
      "10",
      "-x",
      "1",
    ],
    { env: ENV, killAfterMs: 60_000 },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`^ {2}\\[::1\\]:${v6.port} \\(2 slots\\): ranks 0 1$`, "m"));
  v6.proc.kill("SIGTERM");
  await v6.exited;
});

test('an empty --json "" (or --out "") is a usage error naming the flag, for bench, start and run\'s programs', async () => {
  const cases = [
    [
      ["bench", "pingpong", "--quick", "--sizes", "8", "--transports", "bypass", "--json", ""],
      "bench",
      "--json",
    ],
    [
      ["bench", "pingpong", "--quick", "--sizes", "8", "--transports", "bypass", "--out", ""],
      "bench",
      "--out",
    ],
    [["start", "--quick", "--json", ""], "start", "--json"],
    [
      ["run", "-n", "2", "osu-latency", "-m", "8", "-i", "10", "-x", "1", "--json", ""],
      "run",
      "osu-latency: --json",
    ],
    [["run", "-n", "2", "--out", "", "osu-latency", "-m", "8", "-i", "10", "-x", "1"], "run", "--out"],
  ] as const;
  for (const [args, cmd, flag] of cases) {
    const r = await myrixen([...args], { env: ENV, cwd: TMP, killAfterMs: 60_000 });
    usage(
      r,
      new RegExp(
        `^myrixen ${cmd}: ${flag} needs a (file name|directory), got an empty one: write ${flag.split(" ").at(-1)} (FILE|DIR)$`,
      ),
      args.join(" "),
    );
  }
  assert.ok(!existsSync(join(TMP, "bench.json")), "run --out '' wrote a report in the working directory");
});

test('misleading messages: --key-file "", --transports " , ", a peer named twice, a host its own peer', async () => {
  const keyLine = /--key-file needs a file name, got an empty one: write --key-file FILE/;
  for (const [args, cmd] of [
    [["run", "-n", "1", "-H", `${CLI.host.label}:1`, "--key-file", "", "nas-ep"], "run"],
    [["host", "--listen", "127.0.0.1:0", "--key-file", ""], "host"],
    [["list", "--host", CLI.host.label, "--key-file", ""], "list"],
  ] as const) {
    const r = await myrixen([...args], { env: ENV, cwd: TMP, killAfterMs: 30_000 });
    usage(r, new RegExp(`^myrixen ${cmd}: ${keyLine.source}`), args.join(" "));
  }
  for (const [v, line] of [
    [" , ", /^myrixen bench: --transports names no transport \(got " , "\); write some of: native,bypass,/],
    [
      "bypass,,native",
      /^myrixen bench: --transports "bypass,,native": item 2 is empty; write names separated by commas/,
    ],
  ] as const) {
    const r = await myrixen(["bench", "pingpong", "--quick", "--transports", v], { env: ENV, cwd: TMP });
    usage(r, line, `--transports "${v}"`);
  }
  const twice = await myrixen(
    ["host", "--listen", "127.0.0.1:0", "--peers", `${CLI.host.label},127.0.0.1:1,${CLI.host.label}`],
    { env: ENV, killAfterMs: 15_000 },
  );
  usage(
    twice,
    new RegExp(
      `^myrixen host: --peers names ${quote(CLI.host.label)} twice \\(items 1 and 3\\); list each peer once$`,
    ),
    "--peers twice",
  );
  const port = CLI.busyPort + 1;
  for (const peer of [`127.0.0.1:${port}`, `localhost:${port}`]) {
    const self = await myrixen(["host", "--listen", `127.0.0.1:${port}`, "--peers", peer], {
      env: ENV,
      killAfterMs: 15_000,
    });
    usage(
      self,
      new RegExp(
        `^myrixen host: --peers names ${quote(peer)}, this host's own control address \\(it listens on 127\\.0\\.0\\.1:${port}\\); list only the other hosts$`,
      ),
      `--peers ${peer}`,
    );
  }
});

test("an OSU -m too large for the ranks' guest memory, or a --pages no domain may have: exit 2 before anything starts", async () => {
  for (const [args, line] of [
    [
      ["run", "-n", "2", "osu-latency", "-m", "1G"],
      /^myrixen run: osu-latency -m: the largest message, 1073741824 bytes, needs a send and a receive buffer of that size in each rank's guest memory \(524288 pages, 2048 MiB\), more than its 16384 pages \(64 MiB, --pages\); give a smaller -m MAX or more --pages$/,
    ],
    [
      ["run", "-n", "2", "--pages", "8192", "osu-bw", "-m", "32M"],
      /^myrixen run: osu-bw -m: .* more than its 8192 pages \(32 MiB, --pages\)/,
    ],
    [
      ["run", "-n", "2", "--pages", "1048577", "osu-latency"],
      /^myrixen run: --pages must be at most 1048576 \(4 KiB pages: 4 GiB per rank\), got 1048577$/,
    ],
    [
      ["run", "-n", "2", "--pages", "99999999999", "osu-latency"],
      /^myrixen run: --pages must be at most 1048576/,
    ],
  ] as const) {
    const r = await myrixen([...args], { env: ENV, killAfterMs: 60_000 });
    usage(r, line, args.join(" "));
    assert.equal(r.stdout, "", `${args.join(" ")}: nothing ran`);
  }
});

test("commander's own errors are one line too, on every command, naming the command and where its usage is", async () => {
  for (const [args, line] of [
    [["top", "-n", "x"], /^myrixen top: -n must be a positive integer, got "x"$/],
    [["host", "--slots", "0"], /^myrixen host: --slots must be a whole number in 1\.\.4096, got "0"$/],
    [
      ["host", "--max-guest-mb", "lots"],
      /^myrixen host: --max-guest-mb must be a whole number in 1\.\.1073741824, got "lots"$/,
    ],
    [["bench", "--bogus"], /^myrixen bench: unknown option --bogus; see myrixen bench --help$/],
    [["bench", "--sizes"], /^myrixen bench: --sizes needs a value: write --sizes <list>$/],
    [["endpoints", "extra"], /^myrixen endpoints: too many arguments .*; see myrixen endpoints --help$/],
    [["frob"], /^myrixen: unknown command frob; see myrixen --help$/],
    [["run", "-n"], /^myrixen run: -n needs a value: write -n <n> \(the number of ranks, e.g\. -n 4\)$/],
  ] as const) {
    const r = await myrixen([...args], { env: ENV, killAfterMs: 15_000 });
    usage(r, line, args.join(" "));
  }
});

test("Ctrl-C in the middle of bench or start: one line, exit 130 (143 for SIGTERM), and no empty report directory left", async () => {
  for (const [args, signal, code] of [
    [["bench", "--quick"], "SIGINT", 130],
    [["bench", "--quick", "--json", "rows/r.json"], "SIGTERM", 143],
    [["start", "--quick", "--out", "report/here"], "SIGINT", 130],
  ] as const) {
    const cwd = mkdtempSync(join(TMP, "interrupted-"));
    let sent = false;
    const r = await myrixen([...args], {
      env: ENV,
      cwd,
      killAfterMs: 60_000,
      // Once the first measurement is under way (its directories were made before it).
      onLine: (line, proc) => {
        if (!sent && /^\[1\b/.test(line)) {
          sent = true;
          proc.kill(signal);
        }
      },
    });
    const what = `${args.join(" ")} + ${signal}`;
    assert.ok(sent, `${what}: no progress line came\n${r.stderr}`);
    assert.equal(r.code, code, `${what}\n${r.stderr}`);
    assert.match(r.stderr, new RegExp(`myrixen ${args[0]}: interrupted \\(${signal}\\); nothing written`));
    assert.doesNotMatch(r.stderr, BUG_LINE);
    assert.deepEqual(readdirSync(cwd), [], `${what}: left ${readdirSync(cwd).join(", ")}`);
  }
});

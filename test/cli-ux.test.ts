// What the inspection commands and the flags' errors say, as a user types them (real CLI
// processes): `list DOMAIN` and `endpoints --domain` across several hosts find a domain that
// is on only one of them, and name hosts that share a name by their control address; the
// dashboard's --listen, host's --log-level and --log-format, and the inspection commands'
// --host name the flag and the value typed (what bench prints of its hosts' link: test/cli.test.ts).
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fixture, killChildren, myrixen, type RunResult, startHost, until } from "./helpers/hosts.js";

const dir = mkdtempSync(join(tmpdir(), "myrixen-cli-ux-"));
const KEY = join(dir, "cluster.key");
writeFileSync(KEY, `${"c3".repeat(32)}\n`, { mode: 0o600 });
// Runtime files of embedded clusters go here, not into the user's own directory.
const ENV = { XDG_RUNTIME_DIR: join(dir, "run") };

after(() => {
  killChildren();
  rmSync(dir, { recursive: true, force: true });
});

/** A usage error: exit code 2, this one line on stderr, nothing on stdout. */
function usage(r: RunResult, line: string, what: string): void {
  assert.equal(r.code, 2, `${what}: ${r.stderr}`);
  assert.equal(r.stderr, line, what);
  assert.equal(r.stdout, "", what);
}

test("a domain on one of several hosts is found; only a domain on none is an error, naming each host by its address", async () => {
  const A = await startHost(["--key-file", KEY, "--slots", "1"]);
  const B = await startHost(["--key-file", KEY, "--slots", "1"]);
  let jobProc: ChildProcess | undefined;
  const job = myrixen(["run", "-n", "1", "--hosts", A.label, "--key-file", KEY, fixture("mh-hang")], {
    killAfterMs: 120_000,
    onLine: (l, p) => {
      if (/hanging$/.test(l)) jobProc = p;
    },
  });
  try {
    await until(() => jobProc !== undefined, "rank 0 on host A", 60_000);
    const both = ["--host", `${A.label},${B.label}`, "--key-file", KEY];

    const list = await myrixen(["list", "rank0", ...both], { env: ENV });
    assert.equal(list.code, 0, list.stderr);
    assert.equal(list.stderr, "");
    assert.match(list.stdout, new RegExp(`NIC ${A.nicId}, ${A.label}`));
    assert.match(list.stdout, /^rank0\s+\d+\s/m);
    assert.doesNotMatch(list.stdout, new RegExp(`NIC ${B.nicId}`), "a host without it is not shown");

    const json = await myrixen(["list", "rank0", "--json", ...both], { env: ENV });
    assert.equal(json.code, 0, json.stderr);
    const hosts = JSON.parse(json.stdout) as { host: { nicId: number }; domains: { name: string }[] }[];
    assert.deepEqual(
      hosts.map((h) => [h.host.nicId, h.domains.map((d) => d.name)]),
      [[A.nicId, ["rank0"]]],
    );

    const eps = await myrixen(["endpoints", "--domain", "rank0", ...both], { env: ENV });
    assert.equal(eps.code, 0, eps.stderr);
    assert.equal(eps.stderr, "");
    assert.match(eps.stdout, new RegExp(`NIC ${A.nicId}, ${A.label}`));
    assert.doesNotMatch(eps.stdout, new RegExp(`NIC ${B.nicId}`));

    // Both hosts have this machine's name: each is named with its control address.
    for (const args of [
      ["list", "rank9"],
      ["endpoints", "--domain", "rank9"],
    ]) {
      const none = await myrixen([...args, ...both], { env: ENV });
      assert.equal(none.code, 1, none.stderr);
      assert.equal(none.stdout, "");
      const lines = none.stderr.split("\n");
      assert.equal(lines.length, 2, none.stderr);
      assert.match(
        lines[0],
        new RegExp(
          `^myrixen ${args[0]}: no domain "rank9" on host \\S+ \\(${A.label}\\); its domains: 0 \\(Domain-0\\), \\d+ \\(rank0\\)$`,
        ),
      );
      assert.match(
        lines[1],
        new RegExp(
          `^myrixen ${args[0]}: no domain "rank9" on host \\S+ \\(${B.label}\\); its domains: 0 \\(Domain-0\\)$`,
        ),
      );
    }
  } finally {
    jobProc?.kill("SIGKILL");
    await job;
  }
});

test("the dashboard's --listen, host's --log-level and --log-format name the flag and the value typed", async () => {
  for (const [args, line] of [
    [
      ["dashboard", "--listen", "127.0.0.1:99999"],
      'myrixen dashboard: --listen: "127.0.0.1:99999": port 99999 is outside 0..65535',
    ],
    [["dashboard", "--listen", ""], "myrixen dashboard: --listen: an empty host address"],
    [["dashboard", "--listen", "99999"], "myrixen dashboard: --listen: port 99999 is not 0..65535"],
    [["host", "--dashboard=99999"], "myrixen host: --dashboard: port 99999 is not 0..65535"],
    [
      ["host", "--log-level", "loud"],
      'myrixen host: --log-level: "loud" is not one of error, warn, info, debug',
    ],
    [["host", "--log-format", "xml"], 'myrixen host: --log-format: "xml" is not one of json, text'],
  ] as const) {
    const r = await myrixen([...args], { env: ENV, killAfterMs: 15_000 });
    usage(r, line, args.join(" "));
  }
});

test("the inspection commands' --host hint is host[:port], without run's *slots", async () => {
  for (const cmd of ["list", "info", "endpoints", "xenstore-ls", "top", "dashboard"]) {
    const r = await myrixen([cmd, "--host", ""], { env: ENV, killAfterMs: 15_000 });
    usage(r, `myrixen ${cmd}: --host item 1 is empty (write host[:port], separated by commas)`, cmd);
  }
});

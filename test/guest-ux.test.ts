/**
 * What a new user sees when a guest program fails under `myrixen run` (a newcomer's report from
 * a clean clone): the rank's stack through their own files only (no frame of the library's
 * bundles or of Node's loader), a refused import named at the user's import line, the
 * program's arguments as guest.argv, Node globals absent (typeof works; using one says why),
 * a main that is not a function as a one-line usage mistake, refused and missing imports and
 * top-level await said in words the user can act on, writeRankFile from "myrixen", and
 * Open MPI's -np=N and a -x without its VAR. Real launcher processes and real ranks.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import * as index from "../src/index.js";
import { runCli } from "./helpers/cli.js";

const TMP = mkdtempSync(join(tmpdir(), "myrixen-guestux-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

const run = (args: string[]) => runCli(["run", ...args], { env: { XDG_RUNTIME_DIR: TMP }, cwd: TMP });

/** stderr without the embedded host's "inspect it with myrixen list" note. */
const problems = (stderr: string) =>
  stderr.split("\n").filter((l) => l !== "" && !/inspect it with `myrixen list`/.test(l));

/** Writes the program `name` (lines joined) into the test's folder. */
const program = (name: string, ...lines: string[]) => writeFileSync(join(TMP, name), `${lines.join("\n")}\n`);

/** What no line of a rank's failure may show: the library's files, its bundles, Node's internals. */
const INTERNAL =
  /bundles[/\\]|chunk-|node:internal|ModuleJob|runDomainThread|loadSandboxedProgram|dist[/\\]src/;

program(
  "fs.ts",
  'import { readFileSync } from "node:fs";',
  "export default async function main() {",
  "  return readFileSync ? 0 : 1;",
  "}",
);
program(
  "deep.ts",
  'import { y } from "./mid";',
  "export default async function main() {",
  "  return y ? 0 : 1;",
  "}",
);
program("mid.ts", 'import { x } from "./leaf";', "export const y = x;");
program("leaf.ts", 'import { statSync } from "node:fs";', "export const x = statSync;");
program(
  "check.ts",
  'import type { Guest } from "myrixen";',
  "",
  "function checkValue(x: number): number {",
  '  if (x >= 0) throw new RangeError("value " + x + " is out of range"); // line 4',
  "  return x;",
  "}",
  "",
  "export default async function main(guest: Guest) {",
  "  return checkValue(guest.argv.length); // line 9",
  "}",
);

test("a failing rank's stack names the user's files only: a throw, and a refused import at the importing line", async () => {
  const [thrown, refused, deep] = await Promise.all([
    run(["-n", "1", "check.ts"]),
    run(["-n", "1", "fs.ts"]),
    run(["-n", "1", "deep.ts"]),
  ]);
  for (const r of [thrown, refused, deep]) {
    assert.equal(r.code, 1, r.stderr);
    assert.doesNotMatch(r.stderr, INTERNAL, r.stderr);
    for (const frame of problems(r.stderr).slice(1))
      assert.match(frame, /^ {4}at .*\.ts:\d+:\d+\)?$/, r.stderr);
  }
  assert.deepEqual(problems(thrown.stderr), [
    "myrixen run: rank 0 failed: RangeError: value 0 is out of range (at check.ts:4:21)",
    "    at checkValue (check.ts:4:21)",
    "    at main (check.ts:9:10)",
  ]);
  assert.match(
    problems(refused.stderr)[0],
    /^myrixen run: rank 0 failed: TypeError: node:fs is not available in a guest: .* \(at fs\.ts:1:\d+\)$/,
  );
  // The import that was refused first, then the imports that led there.
  assert.match(problems(deep.stderr)[0], /node:fs is not available in a guest.* \(at leaf\.ts:1:\d+\)$/);
  assert.deepEqual(
    problems(deep.stderr)
      .slice(1)
      .map((l) => /\(([^:]+):/.exec(l)?.[1]),
    ["leaf.ts", "mid.ts", "deep.ts"],
  );
});

test("a failing rank's causes come under its frames, as Node prints them: each cause's message and frames in the user's files, a value as JSON", async () => {
  program(
    "cause.ts",
    "function readConfig(): never {",
    '  throw new Error("no config", { cause: { code: "ENOENT", path: "/etc/app.json" } }); // line 2',
    "}",
    "function load(): void {",
    "  try {",
    "    readConfig(); // line 6",
    "  } catch (e) {",
    '    throw new RangeError("bad setup", { cause: e }); // line 8',
    "  }",
    "}",
    "export default async function main() {",
    "  try {",
    "    load(); // line 13",
    "  } catch (e) {",
    '    throw new Error("rank cannot start", { cause: e }); // line 15',
    "  }",
    "}",
  );
  const r = await run(["-n", "1", "cause.ts"]);
  assert.equal(r.code, 1, r.stderr);
  assert.doesNotMatch(r.stderr, INTERNAL, r.stderr);
  assert.deepEqual(problems(r.stderr), [
    "myrixen run: rank 0 failed: rank cannot start (at cause.ts:15:11)",
    "    at main (cause.ts:15:11)",
    "    [cause]: RangeError: bad setup",
    "      at load (cause.ts:8:11)",
    "      at main (cause.ts:13:5)",
    "      [cause]: Error: no config",
    "        at readConfig (cause.ts:2:9)",
    "        at load (cause.ts:6:5)",
    "        at main (cause.ts:13:5)",
    '        [cause]: {"code":"ENOENT","path":"/etc/app.json"}',
  ]);
  // A cause that throws when looked at (a revoked proxy) leaves the rank's own error to be read.
  program(
    "proxycause.ts",
    "export default async function main() {",
    "  const { proxy, revoke } = Proxy.revocable({}, {});",
    "  revoke();",
    '  throw new Error("with a revoked cause", { cause: proxy }); // line 4',
    "}",
  );
  const p = await run(["-n", "1", "proxycause.ts"]);
  assert.equal(p.code, 1, p.stderr);
  assert.deepEqual(problems(p.stderr), [
    "myrixen run: rank 0 failed: with a revoked cause (at proxycause.ts:4:9)",
    "    at main (proxycause.ts:4:9)",
    "    [cause]: (cannot be shown)",
  ]);
});

test("a program in a folder whose name has spaces and parentheses: the same frames, the same paths", async () => {
  const dir = join(TMP, "p (copy)");
  mkdirSync(dir);
  writeFileSync(join(dir, "check.ts"), readFileSync(join(TMP, "check.ts")));
  const r = await runCli(["run", "-n", "1", "check.ts"], { env: { XDG_RUNTIME_DIR: TMP }, cwd: dir });
  assert.equal(r.code, 1, r.stderr);
  assert.deepEqual(problems(r.stderr), [
    "myrixen run: rank 0 failed: RangeError: value 0 is out of range (at check.ts:4:21)",
    "    at checkValue (check.ts:4:21)",
    "    at main (check.ts:9:10)",
  ]);
});

test("the program's arguments are guest.argv (and guest.args.job.argv); process.argv's refusal says so", async () => {
  program(
    "args.ts",
    "export default async function main(guest: any) {",
    "  console.log(JSON.stringify([guest.argv, guest.args.job.argv]));",
    '  if (guest.argv[0] === "process") return process.argv.length;',
    "  return 0;",
    "}",
  );
  const ok = await run(["-n", "2", "args.ts", "--size", "8", "x y"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(
    ok.stdout.trim().split("\n"),
    Array(2).fill(
      JSON.stringify([
        ["--size", "8", "x y"],
        ["--size", "8", "x y"],
      ]),
    ),
  );
  const bad = await run(["-n", "1", "args.ts", "process"]);
  assert.equal(bad.code, 1);
  assert.match(
    problems(bad.stderr)[0],
    /rank 0 failed: TypeError: process\.argv is not available in a guest: .*are guest\.argv \(at args\.ts:3:\d+\)$/,
  );
});

test("Node's globals are absent: typeof says undefined, and a rank that uses one is told why", async () => {
  program(
    "detect.ts",
    "export default async function main(guest: any) {",
    "  console.log(typeof Buffer, typeof process, typeof global, typeof WebAssembly, typeof __dirname);",
    "  // Isomorphic code's test for Node: false in a guest, and no error.",
    "  console.log(typeof process !== 'undefined' && !!process.versions?.node, typeof process.platform);",
    '  if (guest.argv[0] === "use") return (Buffer as any).from("x").length;',
    '  if (guest.argv[0] === "new") return new (Buffer as any)(1).length;',
    "  return 0;",
    "}",
  );
  const [detect, use, made] = await Promise.all([
    run(["-n", "1", "detect.ts"]),
    run(["-n", "1", "detect.ts", "use"]),
    run(["-n", "1", "detect.ts", "new"]),
  ]);
  assert.equal(detect.code, 0, detect.stderr);
  assert.equal(detect.stdout, "undefined object undefined undefined undefined\nfalse undefined\n");
  assert.equal(use.code, 1);
  assert.match(
    problems(use.stderr)[0],
    /rank 0 failed: TypeError: Cannot read properties of undefined \(reading 'from'\) \(Buffer is not available in a guest: .*; use Uint8Array, TextEncoder and TextDecoder\) \(at detect\.ts:5:\d+\)$/,
  );
  assert.match(
    problems(made.stderr)[0],
    /TypeError: Buffer is not a constructor \(Buffer is not available in a guest/,
  );
});

test("a main that is not a function is a usage mistake: one line, exit code 2, as a missing main", async () => {
  program("fortytwo.ts", "export default 42;");
  program("five.ts", "export const main = 5;");
  const [a, b] = await Promise.all([run(["-n", "2", "fortytwo.ts"]), run(["-n", "1", "five.ts"])]);
  for (const [r, what] of [
    [a, "fortytwo.ts exports no function main\\(guest\\) \\(its default export is a number\\)"],
    [b, "five.ts exports no function main\\(guest\\) \\(its main is a number\\)"],
  ] as const) {
    assert.equal(r.code, 2, r.stderr);
    const lines = problems(r.stderr);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], new RegExp(`^myrixen run: ${what}: export the function each rank runs`));
  }
  // A program that throws those words itself, naming another file, is a rank that failed.
  program(
    "forge.ts",
    "export default async function main() {",
    '  throw new TypeError("guest program /etc/shadow must export a function `main(guest)` (as default export or named `main`); pwned");',
    "}",
  );
  const forged = await run(["-n", "1", "forge.ts"]);
  assert.equal(forged.code, 1, forged.stderr);
  assert.match(
    problems(forged.stderr)[0],
    /^myrixen run: rank 0 failed: TypeError: guest program \/etc\/shadow/,
  );
});

test("an import refused by its name, a missing module and top-level await: one line the user can act on", async () => {
  program(
    "passwd.ts",
    'import x from "/etc/passwd";',
    "export default async function main() {",
    "  return x ? 0 : 0;",
    "}",
  );
  program(
    "missing.ts",
    'import { h } from "./helper";',
    "export default async function main() {",
    "  return h;",
    "}",
  );
  program(
    "tla.ts",
    "const k = await Promise.resolve(0);",
    "export default async function main() {",
    "  return k;",
    "}",
  );
  const [passwd, missing, tla] = await Promise.all([
    run(["-n", "1", "passwd.ts"]),
    run(["-n", "1", "missing.ts"]),
    run(["-n", "1", "tla.ts"]),
  ]);
  for (const r of [passwd, missing, tla]) {
    assert.equal(r.code, 1, r.stderr);
    assert.equal(problems(r.stderr).length, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /does not exist|"cjs"|output format/);
  }
  assert.match(
    problems(passwd.stderr)[0],
    /^myrixen run: passwd\.ts imports "\/etc\/passwd": there is no module \/etc\/passwd\.ts, \/etc\/passwd\.js, \/etc\/passwd\/index\.ts or \/etc\/passwd\/index\.js \(a guest program imports only TypeScript or JavaScript modules, .*a file of any other kind is refused by its name, whether it exists or not\)/,
  );
  assert.match(
    problems(missing.stderr)[0],
    /^myrixen run: missing\.ts imports "\.\/helper": there is no module \.\/helper\.ts, /,
  );
  assert.match(
    problems(tla.stderr)[0],
    /^myrixen run: tla\.ts:1:11: a guest program cannot use top-level await .*: move the await into main\(guest\)/,
  );
});

test('writeRankFile and rankArgs come from "myrixen" (the package index too)', async () => {
  assert.equal(typeof index.writeRankFile, "function");
  assert.equal(typeof index.rankArgs, "function");
  program(
    "writes.ts",
    'import { rankArgs, writeRankFile } from "myrixen";',
    "export default async function main(guest: any) {",
    "  const { rank, size, argv } = rankArgs(guest.args)!;",
    '  writeRankFile(guest, rank, argv[0], "rank " + rank + " of " + size + "\\n");',
    "  return 0;",
    "}",
  );
  const r = await run(["-n", "1", "writes.ts", "out.txt"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(readFileSync(join(TMP, "out.txt"), "utf8"), "rank 0 of 1\n");
});

test("Open MPI's -np=N is read as -np N; -x with no VAR before the program says so", async () => {
  program("ok.ts", "export default async function main() {", "  return 0;", "}");
  const [np, x] = await Promise.all([run(["-np=2", "ok.ts"]), run(["-n", "2", "-x", "nas-ep"])]);
  assert.equal(np.code, 0, np.stderr);
  assert.equal(x.code, 2, x.stderr);
  assert.deepEqual(problems(x.stderr), [
    'myrixen run: -x needs a variable before the program: write -x VAR or -x VAR=VALUE, then the program (got -x nas-ep, and "nas-ep" is not a variable name)',
  ]);
});

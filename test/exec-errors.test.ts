// `myrixen exec`'s failures as a user reads them: a script that does not compile is one line
// `file:line:col: message`; an error the script throws (at its top level or later) is its
// message and the frames of the user's own files, as paths — no data: URLs of compiled code,
// no tsx, esbuild, commander or node: frames. Real CLI processes, in a folder of their own.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { runCli } from "./helpers/cli.js";

const TMP = mkdtempSync(join(tmpdir(), "myrixen-exec-errors-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

/** A folder with these files (a package.json of "type": "module" when `esm`). */
function folder(name: string, esm: boolean, files: Record<string, string>): string {
  const dir = join(TMP, name);
  mkdirSync(dir);
  if (esm) writeFileSync(join(dir, "package.json"), '{ "type": "module" }\n');
  for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text);
  return dir;
}

const NESTED = [
  "function inner(n: number): number {",
  '  if (n > 1) throw new Error("deep failure " + n);',
  "  return n;",
  "}",
  "export function outer(): number {",
  "  return inner(5);",
  "}",
  "outer();",
  "",
].join("\n");

/** Nothing of tsx, esbuild, commander, Node's internals or myrixen's own code. */
function assertOnlyUserFrames(stderr: string): void {
  assert.doesNotMatch(stderr, /data:|node_modules|node:internal|\bdist\/|Command\.|esbuild|tsx/, stderr);
}

for (const esm of [false, true]) {
  const kind = esm ? "an ES module" : "CommonJS (no package.json)";
  test(`exec, ${kind}: a throw is its message and the user's frames, at the lines of the file`, async () => {
    const cwd = folder(`throw-${esm}`, esm, {
      "hthrow.ts": 'throw new Error("host script failed");\n',
      "hnested.ts": NESTED,
    });
    const one = await runCli(["exec", "hthrow.ts"], { cwd });
    assert.equal(one.code, 1);
    assert.equal(one.stderr, "Error: host script failed\n    at <anonymous> (hthrow.ts:1:7)\n");
    const nested = await runCli(["exec", "hnested.ts"], { cwd });
    assert.equal(nested.code, 1);
    assertOnlyUserFrames(nested.stderr);
    assert.deepEqual(nested.stderr.trimEnd().split("\n"), [
      "Error: deep failure 5",
      "    at inner (hnested.ts:2:20)",
      "    at outer (hnested.ts:6:10)",
      "    at <anonymous> (hnested.ts:8:1)",
    ]);
  });

  test(`exec, ${kind}: a syntax error is one line file:line:col: message`, async () => {
    const cwd = folder(`syntax-${esm}`, esm, {
      "hbad.ts": "const a = 1;\nconst x: number = ;\n",
      "main.ts": 'import { y } from "./lib.ts";\nconsole.log(y);\n',
      "lib.ts": "export const y = (;\n",
    });
    const r = await runCli(["exec", "hbad.ts"], { cwd });
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'hbad.ts:2:19: Unexpected ";"\n');
    const imported = await runCli(["exec", "main.ts"], { cwd });
    assert.equal(imported.code, 1);
    assert.match(imported.stderr, /^lib\.ts:1:\d+: [^\n]+\n$/);
  });

  test(`exec, ${kind}: a SyntaxError thrown while it runs (JSON.parse) is not a compile error: its frames are there`, async () => {
    const cwd = folder(`json-${esm}`, esm, {
      "hjson.ts": 'function parseConfig(t: string) {\n  return JSON.parse(t);\n}\nparseConfig("{bad");\n',
    });
    const r = await runCli(["exec", "hjson.ts"], { cwd });
    assert.equal(r.code, 1);
    assertOnlyUserFrames(r.stderr);
    assert.match(r.stderr, /^SyntaxError: .*JSON.*\n {4}at parseConfig \(hjson\.ts:2:\d+\)\n/);
  });
}

test("exec, JavaScript: a throw and a syntax error read the same way", async () => {
  const cwd = folder("js", false, {
    "hthrow.mjs": 'function f() {\n  throw new TypeError("js failed");\n}\nf();\n',
    "hbad.mjs": "const = 3;\n",
    "hbad.cjs": "const = 3;\n",
  });
  const thrown = await runCli(["exec", "hthrow.mjs"], { cwd });
  assert.equal(thrown.code, 1);
  assert.equal(thrown.stderr, "TypeError: js failed\n    at f (hthrow.mjs:2:9)\n    at hthrow.mjs:4:1\n");
  for (const f of ["hbad.mjs", "hbad.cjs"]) {
    const bad = await runCli(["exec", f], { cwd });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, new RegExp(`^${f.replace(".", "\\.")}:1:7: [^\\n]+\\n$`), bad.stderr);
  }
});

test("exec: an error the script leaves uncaught after its top level reads the same; its own handler keeps it", async () => {
  const cwd = folder("later", true, {
    "hasync.ts":
      'async function later(): Promise<void> {\n  await new Promise((r) => setTimeout(r, 10));\n  throw new RangeError("later failure");\n}\nlater();\n',
    "hown.ts":
      'process.on("uncaughtException", (e) => console.log("handled:", (e as Error).message));\nsetTimeout(() => {\n  throw new Error("mine");\n}, 10);\n',
  });
  const r = await runCli(["exec", "hasync.ts"], { cwd });
  assert.equal(r.code, 1);
  assert.equal(r.stderr, "RangeError: later failure\n    at later (hasync.ts:3:9)\n");
  const own = await runCli(["exec", "hown.ts"], { cwd });
  assert.equal(own.code, 0, own.stderr);
  assert.equal(own.stdout, "handled: mine\n");
});

test("exec: an error's cause is printed under it, as Node prints one: its message and the user's frames, indented", async () => {
  const cwd = folder("cause", true, {
    "hcause.ts": [
      "function load(path: string): string {",
      '  throw new Error("no such file: " + path);',
      "}",
      "function start(): void {",
      "  try {",
      '    load("cfg.json");',
      "  } catch (e) {",
      '    throw new Error("cannot start", { cause: e });',
      "  }",
      "}",
      "start();",
      "",
    ].join("\n"),
    "hvalue.ts": 'throw new Error("bad config", { cause: { code: 42, path: "/etc/x" } });\n',
    "hself.ts": 'const e = new Error("self");\n(e as { cause?: unknown }).cause = e;\nthrow e;\n',
    "hproxy.ts":
      'const { proxy, revoke } = Proxy.revocable({}, {});\nrevoke();\nthrow new Error("with a revoked cause", { cause: proxy });\n',
  });
  const r = await runCli(["exec", "hcause.ts"], { cwd });
  assert.equal(r.code, 1);
  assertOnlyUserFrames(r.stderr);
  assert.deepEqual(r.stderr.trimEnd().split("\n"), [
    "Error: cannot start",
    "    at start (hcause.ts:8:11)",
    "    at <anonymous> (hcause.ts:11:1)",
    "  [cause]: Error: no such file: cfg.json",
    "      at load (hcause.ts:2:9)",
    "      at start (hcause.ts:6:5)",
    "      at <anonymous> (hcause.ts:11:1)",
  ]);
  const value = await runCli(["exec", "hvalue.ts"], { cwd });
  assert.equal(value.code, 1);
  assert.match(
    value.stderr,
    /^Error: bad config\n(?: {4}at .*\n)+ {2}\[cause\]: \{ code: 42, path: '\/etc\/x' \}\n$/,
  );
  const self = await runCli(["exec", "hself.ts"], { cwd });
  assert.equal(self.code, 1);
  assert.match(self.stderr, /^Error: self\n(?: {4}at .*\n)+ {2}\[cause\]: \[Circular\]\n$/);
  // A cause that throws when looked at (a revoked proxy) leaves the error itself to be read.
  const proxy = await runCli(["exec", "hproxy.ts"], { cwd });
  assert.equal(proxy.code, 1);
  assert.match(
    proxy.stderr,
    /^Error: with a revoked cause\n(?: {4}at .*\n)+ {2}\[cause\]: \(cannot be shown\)\n$/,
  );
});

/**
 * The examples a user copies: every TypeScript example of the README is a file of examples/
 * (shown verbatim), each one type-checks against the package's declarations, and each runs as
 * the README says (`myrixen exec` for host scripts, `myrixen run -n 2` for the MPI program)
 * and prints what the README says it prints.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const EXAMPLES = join(REPO, "examples");
const BIN = join(REPO, "bin", "myrixen.js");

async function myrixen(...args: string[]): Promise<string> {
  try {
    const r = await promisify(execFile)(process.execPath, [BIN, ...args], {
      cwd: EXAMPLES,
      env: { ...process.env, NO_COLOR: "1" },
    });
    return r.stdout;
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    assert.fail(`myrixen ${args.join(" ")} failed (exit ${x.code}):\n${x.stdout}\n${x.stderr}`);
  }
}

test("every TypeScript example of the README is a file of examples/, verbatim", () => {
  const readme = readFileSync(join(REPO, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  assert.ok(blocks.length >= 4, "the README shows the examples");
  const files = new Map(
    readdirSync(EXAMPLES)
      .filter((f) => f.endsWith(".ts"))
      .map((f) => [readFileSync(join(EXAMPLES, f), "utf8"), f]),
  );
  for (const b of blocks)
    assert.ok(files.has(b), `this README example is not a file of examples/:\n${b.slice(0, 300)}`);
});

test("the examples type-check against the package's types", async () => {
  const tsc = join(REPO, "node_modules", "typescript", "bin", "tsc");
  try {
    await promisify(execFile)(process.execPath, [tsc, "-p", EXAMPLES], { cwd: REPO });
  } catch (e) {
    assert.fail(`tsc -p examples:\n${(e as { stdout: string }).stdout}`);
  }
});

test("host.ts: two guests ping-pong over MX on the bypass path; myrback serves only the set-up", async () => {
  const out = await myrixen("exec", "host.ts", "2000");
  assert.match(out, /^2000 round trips of 8 B on the bypass path: \d+(\.\d)? µs one way$/m);
  assert.match(out, /^guests: shutdown \(2000\), shutdown \(2000\)$/m);
  const served = /^myrback served (\d+) requests for 4000 messages$/m.exec(out);
  assert.ok(served, out);
  assert.ok(Number(served[1]) > 0 && Number(served[1]) < 100, `set-up only: ${served[1]} requests`);
});

test("grants.ts: a granted page and an event channel between ping.ts and pong.ts", async () => {
  const out = await myrixen("exec", "grants.ts");
  assert.match(out, /^ping: shutdown, read 42; pong: shutdown, answered$/m);
  assert.match(out, /^pong: \d+ hypercalls, 1 grant map, 1 event-channel send$/m);
});

test("mpi-hello.ts: myrixen run -n 2", async () => {
  const out = await myrixen("run", "-n", "2", "mpi-hello.ts");
  assert.match(out, /2 ranks, allreduce gave 1$/m);
  assert.match(out, /rank 1 got 42 from 0 \(tag 7\)$/m);
});

test("sum.ts: the program's arguments reach every rank as guest.argv", async () => {
  const out = await myrixen("run", "-n", "2", "sum.ts", "1000");
  assert.match(out, /^1 \+ \.\.\. \+ 1000 = 500500$/m);
});

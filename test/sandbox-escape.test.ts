/**
 * A hostile program against the loader, which runs on the host and reads the files a program
 * names: it must not make the host read a file that is not one of the program's modules (a
 * key, an .env, a note, shown back to the guest in esbuild's errors or run as code), nor open
 * a FIFO or a device that its source-map comment names (the host's thread blocked in open,
 * or its memory filled from /dev/zero). test/sandbox.test.ts covers the sandbox itself.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Worker } from "node:worker_threads";
import { Host } from "../src/host/host.js";

let host: Host;
let dir: string;
before(async () => {
  host = await Host.start({});
  dir = mkdtempSync(join(tmpdir(), "myrixen-escape-"));
});
after(async () => {
  await host.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A cluster key as `myrixen host` writes one (hex); this one starts with a letter, so it parses as JavaScript. */
const KEY = "deadbeef00112233445566778899aabbccddeeff00112233445566778899aabb";

test("a program cannot import a host file that is not a module: not run, not shown in an error, not even said to exist", async () => {
  const secrets = join(dir, "secrets");
  const prog = join(dir, "prog");
  const lib = join(dir, "lib");
  for (const d of [secrets, prog, lib]) mkdirSync(d);
  writeFileSync(join(secrets, "cluster.key"), `${KEY}\n`, { mode: 0o600 });
  writeFileSync(join(secrets, "note.txt"), "password hunter2\n");
  writeFileSync(join(secrets, ".env"), "TOKEN hunter3\n");
  writeFileSync(join(secrets, "plain"), "login hunter4\n");
  writeFileSync(join(lib, "util.ts"), "export const twice = (n: number): number => 2 * n;\n");
  writeFileSync(
    join(prog, "leak.ts"),
    [
      'import { twice } from "../lib/util.js";',
      "export default async function main() {",
      "  const out: Record<string, string> = { twice: String(twice(21)) };",
      "  const tries: [string, () => Promise<unknown>][] = [",
      '    ["key", () => import("../secrets/cluster.key")],',
      `    ["note", () => import(${JSON.stringify(join(secrets, "note.txt"))})],`,
      '    ["env", () => import("../secrets/.env")],',
      `    ["plain", () => import(${JSON.stringify(`file://${join(secrets, "plain")}`)})],`,
      '    ["missing", () => import("../secrets/nothing.txt")],',
      "  ];",
      "  for (const [name, load] of tries) {",
      "    try {",
      '      out[name] = "loaded: " + JSON.stringify(await load());',
      "    } catch (e) {",
      "      out[name] = String((e as Error).message);",
      "    }",
      "  }",
      "  return out;",
      "}",
      "",
    ].join("\n"),
  );
  const d = await host.startGuest({ module: join(prog, "leak.ts"), name: "leak" });
  const exit = await d.exited;
  assert.equal(exit.state, "shutdown", exit.error?.stack);
  const out = exit.result as Record<string, string>;
  // Its own modules, inside its folder or beside it, still load.
  assert.equal(out.twice, "42");
  for (const name of ["key", "note", "env", "plain", "missing"]) {
    assert.doesNotMatch(out[name], /^loaded/, `${name}: ${out[name]}`);
    assert.doesNotMatch(out[name], /hunter|deadbeef|Expected|Syntax error/, `${name}: ${out[name]}`);
  }
  // A file named as what it is not (a key, a note) is refused by name, whether it exists or not.
  for (const name of ["key", "note", "missing"])
    assert.match(out[name], /imports only TypeScript or JavaScript modules/, `${name}: ${out[name]}`);
  // One without an extension is looked for as a module (.ts, .js, an index) and not found.
  for (const name of ["env", "plain"]) assert.match(out[name], /cannot find module/, `${name}: ${out[name]}`);
});

test("a program's source-map comment cannot make the host open a FIFO (or a device): the host never blocks on it", async () => {
  const fifo = join(dir, "stall.map");
  execFileSync("mkfifo", [fifo]);
  // A writer on another thread, blocked until someone opens the FIFO to read: it then marks
  // the flag, writes a source map and closes. Were the host to open the FIFO, its main thread
  // would block there until this writer came (with /dev/stdin or /dev/zero, forever).
  const flag = new Int32Array(new SharedArrayBuffer(4));
  const writer = new Worker(
    `const { openSync, writeSync, closeSync } = require("node:fs");
     const { workerData } = require("node:worker_threads");
     const fd = openSync(workerData.fifo, "w");
     Atomics.store(workerData.flag, 0, 1);
     try { writeSync(fd, '{"version":3,"sources":["from-the-fifo.ts"],"names":[],"mappings":"AAAA"}'); } catch {}
     closeSync(fd);`,
    { eval: true, workerData: { fifo, flag } },
  );
  const writerDone = once(writer, "exit");
  await once(writer, "online");
  const prog = join(dir, "stall.js");
  writeFileSync(prog, 'export default function main() { return "ran"; }\n//# sourceMappingURL=stall.map\n');
  try {
    const d = await host.startGuest({ module: prog, name: "stall" });
    const exit = await d.exited;
    assert.equal(exit.state, "shutdown", exit.error?.stack);
    assert.equal(exit.result, "ran");
    assert.equal(Atomics.load(flag, 0), 0, "the host opened the FIFO the program's comment named");
  } finally {
    // Let the writer go (an open for reading that does not wait), then wait for it.
    const fd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    await writerDone;
    closeSync(fd);
  }
});

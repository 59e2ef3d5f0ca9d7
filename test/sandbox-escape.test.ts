/**
 * A hostile program against the loader, which runs on the host and reads the files a program
 * names: it must not make the host read a file that is not one of the program's modules (a
 * key, an .env, a note, shown back to the guest in esbuild's errors or run as code), nor open
 * a FIFO or a device that its source-map comment names (the host's thread blocked in open,
 * or its memory filled from /dev/zero), nor make it read a module outside the program's own
 * project (another user's, with the host's rights: its exports and its functions' source
 * back to the guest). test/sandbox.test.ts covers the sandbox itself.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import {
  closeSync,
  constants,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { Host } from "../src/host/host.js";
import { loadGuestImage } from "../src/xen/guest/loader.js";

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
  // One project holds them all (its package.json): the program's imports stay in its project.
  writeFileSync(join(dir, "package.json"), "{}\n");
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
  // Its own modules, inside its folder or beside it in its project, still load.
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

/** What bob keeps in his own project (mode 0600): what alice's program must not get back from the host. */
const BOB_SECRET = [
  'export const LICENSE_TOKEN = "bob-license-7f3a9c";',
  "export function model(x: number): number {",
  "  return x * 2.5 + LICENSE_TOKEN.length;",
  "}",
  "",
].join("\n");

test("a program cannot import another user's module (../, absolute path, file: URL, symbolic link): refused in one line, found or not; its own project's modules load", async () => {
  // Apart from `dir`, which is a project (its package.json): bob's has none.
  const tenants = mkdtempSync(join(tmpdir(), "myrixen-tenants-"));
  after(() => rmSync(tenants, { recursive: true, force: true }));
  const bob = join(tenants, "bob");
  const alice = join(tenants, "alice");
  for (const d of [bob, alice, join(alice, "src"), join(alice, "lib")]) mkdirSync(d);
  writeFileSync(join(bob, "simulation.ts"), BOB_SECRET, { mode: 0o600 });
  // Alice's project: a package.json at its top, her program in src/, a module of hers in lib/.
  writeFileSync(join(alice, "package.json"), '{ "name": "alice-sim" }\n');
  writeFileSync(join(alice, "lib", "util.ts"), "export const twice = (n: number): number => 2 * n;\n");
  // Links she made inside her project, to bob's file, his folder, and a file of his that does not exist.
  symlinkSync(join(bob, "simulation.ts"), join(alice, "src", "model.ts"));
  symlinkSync(bob, join(alice, "src", "bobs"));
  symlinkSync(join(bob, "nothing.ts"), join(alice, "src", "gone.ts"));
  writeFileSync(
    join(alice, "src", "reader.ts"),
    [
      'import { twice } from "../lib/util.js";',
      "export default async function main() {",
      "  const out: Record<string, string> = { twice: String(twice(21)) };",
      "  const tries: [string, () => Promise<{ model: () => number }>][] = [",
      `    ["absolute", () => import(${JSON.stringify(join(bob, "simulation.ts"))})],`,
      '    ["dotdot", () => import("../../bob/simulation.ts")],',
      '    ["dotdot-js", () => import("../../bob/simulation.js")],',
      `    ["file-url", () => import(${JSON.stringify(pathToFileURL(join(bob, "simulation.ts")).href)})],`,
      '    ["link", () => import("./model.ts")],',
      '    ["link-dir", () => import("./bobs/simulation.ts")],',
      '    ["missing", () => import("../../bob/nothing.ts")],',
      '    ["dangling-link", () => import("./gone.ts")],',
      "  ];",
      "  for (const [name, load] of tries) {",
      "    try {",
      '      out[name] = "loaded: " + String((await load()).model);',
      "    } catch (e) {",
      "      out[name] = String((e as Error).message);",
      "    }",
      "  }",
      "  return out;",
      "}",
      "",
    ].join("\n"),
  );
  const d = await host.startGuest({ module: join(alice, "src", "reader.ts"), name: "alice-reader" });
  const exit = await d.exited;
  assert.equal(exit.state, "shutdown", exit.error?.stack);
  const out = exit.result as Record<string, string>;
  // Her own module, a ../ away inside her project, loads.
  assert.equal(out.twice, "42");
  for (const name of [
    "absolute",
    "dotdot",
    "dotdot-js",
    "file-url",
    "link",
    "link-dir",
    "missing",
    "dangling-link",
  ]) {
    assert.doesNotMatch(out[name], /^loaded|LICENSE_TOKEN|2\.5|bob-license/, `${name}: ${out[name]}`);
    // One line: why, and what to do. Whether bob's file exists is not said either.
    assert.match(
      out[name],
      /outside the program's project .*move or copy the module into the project$/,
      `${name}: ${out[name]}`,
    );
    assert.ok(!out[name].includes("\n"), `${name}: one line`);
  }

  // A static import of bob's module: alice's program fails to load with that line, and the host goes on.
  writeFileSync(
    join(alice, "src", "static.ts"),
    `import { model } from ${JSON.stringify(join(bob, "simulation.ts"))};\nexport default function main() {\n  return String(model);\n}\n`,
  );
  const s = await host.startGuest({ module: join(alice, "src", "static.ts"), name: "alice-static" });
  const sexit = await s.exited;
  assert.equal(sexit.state, "crashed", String(sexit.result));
  assert.match(
    sexit.error!.message,
    /^cannot import ".*simulation\.ts" from .*static\.ts: it is outside the program's project/,
  );
  assert.doesNotMatch(sexit.error!.message, /LICENSE_TOKEN|2\.5|bob-license/);

  // Bob's own program, in his folder (no package.json: the folder is the project), imports his module.
  writeFileSync(
    join(bob, "run.ts"),
    'import { model } from "./simulation.js";\nexport default function main() {\n  return model(1);\n}\n',
  );
  const b = await host.startGuest({ module: join(bob, "run.ts"), name: "bob" });
  const bexit = await b.exited;
  assert.equal(bexit.state, "shutdown", bexit.error?.stack);
  assert.equal(bexit.result, 2.5 + "bob-license-7f3a9c".length);
});

test("a module two programs share resolves its imports for each program's project: the compile cache does not carry one's verdict to the other", async () => {
  // outer/ is one project, outer/inner/ another inside it; inner/shared.ts imports ../secret.ts.
  const outer = mkdtempSync(join(dir, "outer-"));
  const inner = join(outer, "inner");
  mkdirSync(inner);
  writeFileSync(join(outer, "package.json"), "{}\n");
  writeFileSync(join(inner, "package.json"), "{}\n");
  writeFileSync(join(outer, "secret.ts"), "export const secret = 1;\n");
  writeFileSync(join(inner, "shared.ts"), 'export { secret } from "../secret.js";\n');
  writeFileSync(join(outer, "big.ts"), 'export { secret as default } from "./inner/shared.js";\n');
  writeFileSync(join(inner, "small.ts"), 'export { secret as default } from "./shared.js";\n');
  const shared = pathToFileURL(join(inner, "shared.ts")).href;
  // First the program of the outer project: shared.ts's import is in its project.
  const big = await loadGuestImage(pathToFileURL(join(outer, "big.ts")).href);
  assert.equal(big.modules[shared].imports["../secret.js"].kind, "program");
  // Then the inner project's program: the same file, unchanged, but ../secret.ts is outside its project.
  const small = await loadGuestImage(pathToFileURL(join(inner, "small.ts")).href);
  const dep = small.modules[shared].imports["../secret.js"];
  assert.equal(dep.kind, "refused");
  assert.match((dep as { message: string }).message, /outside the program's project/);
  assert.equal(small.modules[pathToFileURL(join(outer, "secret.ts")).href], undefined, "not in the image");
  // And the outer program still gets it (the inner verdict is not carried back either).
  const again = await loadGuestImage(pathToFileURL(join(outer, "big.ts")).href);
  assert.equal(again.modules[shared].imports["../secret.js"].kind, "program");
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

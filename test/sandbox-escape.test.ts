/**
 * A hostile program against the loader, which runs on the host and reads the files a program
 * names: it must not make the host read a file that is not one of the program's modules (a
 * key, an .env, a note, shown back to the guest in esbuild's errors or run as code), nor open
 * a FIFO or a device that its source-map comment names (the host's thread blocked in open,
 * or its memory filled from /dev/zero), nor make it read a module of another user than the
 * program's (with the host's rights: its exports and its functions' source back to the
 * guest), while a program's own modules load wherever they lie. test/sandbox.test.ts covers the sandbox itself.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  linkSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
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

/** What bob keeps in a module of his (mode 0600): what alice's program must not get back from the host. */
const BOB_SECRET = [
  'export const LICENSE_TOKEN = "bob-license-7f3a9c";',
  "export function model(x: number): number {",
  "  return x * 2.5 + LICENSE_TOKEN.length;",
  "}",
  "",
].join("\n");

/** Bob's uid in these tests: a user other than the one running them (who owns alice's files). */
const BOB = 12345;

/** The one-line refusal of a module of bob's to a program of the user running the tests. */
const NOT_HERS = new RegExp(
  `it belongs to another user \\(uid ${BOB}, the program's is ${process.getuid?.()}\\); a guest program imports "myrixen" and modules of its own user .*: copy the module into a file of yours$`,
);

/** A file owned by bob, mode 0600. */
function bobs(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chownSync(path, BOB, BOB);
}

test("a program cannot import another user's module (absolute path, ../, file: URL, symbolic or hard link), wherever its entry is: refused in one line, nothing of it shown", async (t) => {
  // Only root can give a file to another user.
  if (process.getuid?.() !== 0) return t.skip("needs root, to make a file of another user (chown)");
  // A world-writable folder (as /tmp or /scratch) where bob keeps a project of his, and alice
  // her program. She may put files there: her entry beside bob's folder, a package.json above both.
  const shared = mkdtempSync(join(tmpdir(), "myrixen-tenants-"));
  after(() => rmSync(shared, { recursive: true, force: true }));
  chmodSync(shared, 0o1777);
  const bob = join(shared, "bob", "proj");
  const alice = join(shared, "alice");
  for (const d of [bob, join(alice, "src"), join(alice, "lib")]) mkdirSync(d, { recursive: true });
  bobs(join(bob, "package.json"), "{}\n");
  bobs(join(bob, "simulation.ts"), BOB_SECRET);
  chownSync(bob, BOB, BOB);
  chownSync(join(shared, "bob"), BOB, BOB);
  writeFileSync(join(shared, "package.json"), "{}\n");
  writeFileSync(join(alice, "lib", "util.ts"), "export const twice = (n: number): number => 2 * n;\n");
  // Links she made in her folder: to bob's file, to his folder, and a hard link (the same file, bob's).
  symlinkSync(join(bob, "simulation.ts"), join(alice, "src", "model.ts"));
  symlinkSync(bob, join(alice, "src", "bobs"));
  linkSync(join(bob, "simulation.ts"), join(alice, "src", "copy.ts"));
  const tries: Record<string, string> = {
    absolute: join(bob, "simulation.ts"),
    dotdot: "../../bob/proj/simulation.ts",
    "dotdot-js": "../../bob/proj/simulation.js",
    "file-url": pathToFileURL(join(bob, "simulation.ts")).href,
    link: "./model.ts",
    "link-dir": "./bobs/simulation.ts",
    "hard-link": "./copy.ts",
  };
  writeFileSync(
    join(alice, "src", "reader.ts"),
    [
      'import { twice } from "../lib/util.js";',
      "export default async function main() {",
      "  const out: Record<string, string> = { twice: String(twice(21)) };",
      "  const tries: [string, () => Promise<{ model: () => number }>][] = [",
      ...Object.entries(tries).map(
        ([name, spec]) => `    [${JSON.stringify(name)}, () => import(${JSON.stringify(spec)})],`,
      ),
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
  // Her own module, a ../ away, loads.
  assert.equal(out.twice, "42");
  for (const [name, spec] of Object.entries(tries)) {
    assert.doesNotMatch(out[name], /^loaded|LICENSE_TOKEN|2\.5|bob-license/, `${name}: ${out[name]}`);
    // One line: why, and what to do.
    assert.ok(out[name].startsWith(`cannot import "${spec}" from file:`), `${name}: ${out[name]}`);
    assert.match(out[name], NOT_HERS, `${name}: ${out[name]}`);
    assert.ok(!out[name].includes("\n"), `${name}: one line`);
  }

  // Her entry put in the shared folder itself, importing bob's module statically: the program
  // fails to load with that line, and the host goes on.
  writeFileSync(
    join(shared, "evil.ts"),
    'import { model } from "./bob/proj/simulation.js";\nexport default function main() {\n  return String(model);\n}\n',
  );
  const s = await host.startGuest({ module: join(shared, "evil.ts"), name: "alice-static" });
  const sexit = await s.exited;
  assert.equal(sexit.state, "crashed", String(sexit.result));
  assert.match(
    sexit.error!.message,
    /^cannot import "\.\/bob\/proj\/simulation\.js" from .*evil\.ts: it belongs/,
  );
  assert.match(sexit.error!.message.split("\n")[0], NOT_HERS);
  assert.doesNotMatch(sexit.error!.message, /LICENSE_TOKEN|2\.5|bob-license/);

  // A source map of bob's that her module's comment names is left out (its sources not read).
  bobs(
    join(bob, "simulation.js.map"),
    JSON.stringify({
      version: 3,
      sources: ["simulation.ts"],
      sourcesContent: [BOB_SECRET],
      names: [],
      mappings: "AAAA",
    }),
  );
  writeFileSync(
    join(alice, "src", "mapped.js"),
    "export default function main() { return 1; }\n//# sourceMappingURL=../../bob/proj/simulation.js.map\n",
  );
  const mapped = await loadGuestImage(pathToFileURL(join(alice, "src", "mapped.js")).href);
  const mm = mapped.modules[mapped.entry];
  assert.equal(mm.error, undefined);
  assert.doesNotMatch(mm.map ?? "", /bob-license|simulation\.ts/);

  // The check is made on the file the loader opens: her module, resolved and compiled (cached)
  // as hers, then given to bob unchanged (or a link to his swapped in), is refused when read.
  const before = await loadGuestImage(pathToFileURL(join(alice, "src", "reader.ts")).href);
  const util = pathToFileURL(join(alice, "lib", "util.ts")).href;
  assert.equal(before.modules[util].error, undefined);
  chownSync(join(alice, "lib", "util.ts"), BOB, BOB);
  const after_ = await loadGuestImage(pathToFileURL(join(alice, "src", "reader.ts")).href);
  assert.equal(after_.modules[util].code, undefined);
  assert.match(after_.modules[util].error!, /^cannot load file:.*util\.ts: it belongs to another user/);

  // Bob's own program imports his module: the program's user is its entry's owner.
  bobs(
    join(bob, "run.ts"),
    'import { model } from "./simulation.js";\nexport default function main() {\n  return model(1);\n}\n',
  );
  const b = await host.startGuest({ module: join(bob, "run.ts"), name: "bob" });
  const bexit = await b.exited;
  assert.equal(bexit.state, "shutdown", bexit.error?.stack);
  assert.equal(bexit.result, 2.5 + "bob-license-7f3a9c".length);
});

test("a program imports its own user's modules wherever they are: ../lib, a monorepo sibling package, a nested src/package.json, no package.json at all", async () => {
  const base = mkdtempSync(join(dir, "layouts-"));
  const files: Record<string, string> = {
    // Her own ../lib beside her program's folder, under her package.json.
    "alice/package.json": '{ "name": "alice-sim" }',
    "alice/lib/util.ts": "export const value = 21;",
    "alice/src/main.ts": "../lib/util.js",
    // A monorepo: packages/app imports its sibling package by ../.
    "mono/package.json": '{ "workspaces": ["packages/*"] }',
    "mono/packages/app/package.json": '{ "name": "app" }',
    "mono/packages/lib/package.json": '{ "name": "lib" }',
    "mono/packages/lib/index.ts": "export const value = 22;",
    "mono/packages/app/main.ts": "../lib/index.ts",
    // A src/package.json that only sets the module type, its program importing ../shared.
    "proj/package.json": '{ "name": "proj" }',
    "proj/src/package.json": '{ "type": "module" }',
    "proj/shared/util.ts": "export const value = 23;",
    "proj/src/main.ts": "../shared/util.ts",
    // No package.json anywhere: bin/main.ts imports ../lib.
    "plain/lib/x.ts": "export const value = 24;",
    "plain/bin/main.ts": "../lib/x.ts",
  };
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(base, name)), { recursive: true });
    const main = name.endsWith("main.ts")
      ? `import { value } from ${JSON.stringify(text)};\nexport default function main() {\n  return value;\n}\n`
      : `${text}\n`;
    writeFileSync(join(base, name), main);
  }
  const results: Record<string, unknown> = {};
  for (const entry of [
    "alice/src/main.ts",
    "mono/packages/app/main.ts",
    "proj/src/main.ts",
    "plain/bin/main.ts",
  ]) {
    const d = await host.startGuest({ module: join(base, entry), name: entry.split("/")[0] });
    const exit = await d.exited;
    results[entry] = exit.state === "shutdown" ? exit.result : exit.error?.message;
  }
  assert.deepEqual(results, {
    "alice/src/main.ts": 21,
    "mono/packages/app/main.ts": 22,
    "proj/src/main.ts": 23,
    "plain/bin/main.ts": 24,
  });
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

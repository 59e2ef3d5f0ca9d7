/**
 * A guest reaches only what it was handed: a hostile guest tries every way out (Node
 * built-ins, require, worker internals, the real global, intrinsics, the library's host-side
 * code, Node objects behind library objects, its own counters) while a bystander pair keeps
 * exchanging MX messages; a guest that imports a built-in fails to load with a clear error;
 * a TypeScript guest's error names its .ts file and line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { Host } from "../src/host/host.js";
import { resolveGuestImport } from "../src/xen/guest/loader.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

const ESCAPE = new URL("./fixtures/guests/escape.js", import.meta.url);
const fixture = (name: string) => new URL(`./fixtures/guests/${name}.js`, import.meta.url);
/** The TypeScript source, not its compiled output: its stack must point into the .ts file. */
const THROWS_TS = fileURLToPath(new URL("../../test/fixtures/guests/throws.ts", import.meta.url));

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

/** What every refusal that the sandbox itself makes says. */
const NOT_AVAILABLE = /not available in a guest/;

/** Escapes whose refusal must name what a guest lacks (the rest fail as plain JavaScript would). */
const NAMED = [
  "read a host file through node:fs",
  "read a host file through fs (no node: prefix)",
  "read a host file through node:fs/promises",
  "spawn a process through node:child_process",
  "open a socket through node:net",
  "reach workerData through node:worker_threads",
  "reach parentPort through node:worker_threads",
  "make a require through node:module",
  "require a built-in",
  "globalThis.process.binding",
  // (process.env holds only what the launcher gave the guest, `myrixen run -x`: the host's PATH is simply absent.)
  "the real global through new Function",
  // (WebAssembly and Buffer are absent, as in a browser: `typeof Buffer` is "undefined", and
  // using one fails as on undefined; the report of a guest that crashes on one names it.)
  "import the host-side Hypervisor (src/xen/hypervisor.js)",
  "import the host-side Host (src/host/host.js)",
  "the Hypervisor class from the package's index",
];

async function guest(role: string): Promise<{ d: Domain; first: Promise<unknown[]> }> {
  const d = await host.startGuest({ module: ESCAPE, args: { role }, name: role, pages: 512 });
  return { d, first: nextMessage(d) as Promise<unknown[]> };
}

test("a hostile guest finds every way out refused, and a bystander pair's traffic goes on", async () => {
  const ping = await guest("ping");
  const pong = await guest("pong");
  const [pingAddr] = await ping.first;
  const [pongAddr] = await pong.first;
  const connected = once(ping.d, "message");
  ping.d.send(pongAddr);
  pong.d.send(pingAddr);
  await connected;
  const mark = async () => {
    const got = once(ping.d, "message");
    ping.d.send("mark");
    return ((await got)[0] as { ok: number; bad: number }).ok;
  };
  const before = await mark();

  const hostile = await host.startGuest({ module: ESCAPE, args: { role: "hostile" }, name: "hostile" });
  const exit = await hostile.exited;
  assert.equal(exit.state, "shutdown", exit.error?.stack);
  const report = exit.result as { name: string; escaped: boolean; detail: string }[];
  const escaped = report.filter((r) => r.escaped);
  assert.deepEqual(
    escaped.map((r) => `${r.name}: ${r.detail}`),
    [],
    "every escape is refused",
  );
  assert.ok(report.length >= 35, `${report.length} escapes tried`);
  for (const r of report.filter((x) => NAMED.includes(x.name)))
    assert.match(r.detail, NOT_AVAILABLE, `${r.name}: the refusal names what a guest lacks (${r.detail})`);
  assert.equal(report.filter((r) => NAMED.includes(r.name)).length, NAMED.length);

  // Forged counters prove nothing: the host's view of the hostile guest's hypercalls is its own.
  const c = host.hypervisor.counters(hostile.domid);
  assert.ok(c.hypercalls < 24_690, `hypercalls as the hypervisor counted them: ${c.hypercalls}`);
  assert.ok(c.hypercalls > 0, "the guest's MX set-up made hypercalls");

  // The bystanders kept talking while the hostile guest tried, and nothing they carried changed.
  const during = await mark();
  assert.ok(during > before, `round trips during the attack: ${during - before}`);
  ping.d.send("stop");
  const [ep, eq] = await Promise.all([ping.d.exited, pong.d.exited]);
  assert.equal(ep.state, "shutdown", ep.error?.stack);
  assert.equal(eq.state, "shutdown", eq.error?.stack);
  const pr = ep.result as { ok: number; bad: number };
  assert.equal(pr.bad, 0);
  assert.ok(pr.ok >= during);
  assert.equal((eq.result as { ok: number }).ok, pr.ok);

  // And the host is fine: a new guest boots and runs.
  const hello = await host.startGuest({ module: fixture("hello"), name: "after" });
  assert.equal((await hello.exited).state, "shutdown");
});

test("a guest that imports a Node built-in fails to load, naming it; the host goes on", async () => {
  const d = await host.startGuest({ module: fixture("uses-fs"), name: "uses-fs" });
  const exit = await d.exited;
  assert.equal(exit.state, "crashed");
  assert.match(
    exit.error!.message,
    /node:fs is not available in a guest: a guest reaches the host only through the guest object/,
  );
  const hello = await host.startGuest({ module: fixture("hello"), name: "after-fs" });
  assert.equal((await hello.exited).state, "shutdown");
});

test("a TypeScript guest's error keeps its stack, with the .ts file and line", async () => {
  const d = await host.startGuest({ module: THROWS_TS, name: "throws", args: { depth: 2 } });
  const exit = await d.exited;
  assert.equal(exit.state, "crashed");
  assert.equal(exit.error!.name, "RangeError");
  assert.equal(exit.error!.message, "deliberate failure at depth 2");
  // The throw is on line 9 of throws.ts; the frames of descend() and main() follow it.
  assert.match(exit.error!.stack!, /at descend \(.*test\/fixtures\/guests\/throws\.ts:9:\d+\)/);
  assert.match(exit.error!.stack!, /at main \(.*test\/fixtures\/guests\/throws\.ts:14:\d+\)/);
});

test('a user\'s TypeScript program outside the repository imports "myrixen": one copy of the library, shared with the runtime', async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-user-"));
  try {
    writeFileSync(
      join(dir, "helper.ts"),
      'export const twice = (n: number): number => 2 * n;\nexport { MxError as Again } from "myrixen";\n',
    );
    writeFileSync(
      join(dir, "prog.ts"),
      [
        'import { GrantError, Mx, MxError, type Guest } from "myrixen";',
        'import { Again, twice } from "./helper.js";',
        "export default function main(guest: Guest) {",
        "  const mx = Mx.init(guest);",
        "  let fromLibrary = false;",
        "  try {",
        "    mx.openEndpoint({ key: -1 });",
        "  } catch (e) {",
        "    fromLibrary = e instanceof MxError;",
        "  }",
        "  const g = guest.grants.map(guest.domid, 99999);",
        "  mx.finalize();",
        "  return { fromLibrary, same: Again === MxError, grant: g.status !== 0, twice: twice(21), GrantError: typeof GrantError };",
        "}",
        "",
      ].join("\n"),
    );
    const d = await host.startGuest({ module: join(dir, "prog.ts"), name: "user" });
    const exit = await d.exited;
    assert.equal(exit.state, "shutdown", exit.error?.stack);
    assert.deepEqual(exit.result, {
      fromLibrary: true,
      same: true,
      grant: true,
      twice: 42,
      GrantError: "function",
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The library modules (paths under src/, no extension) and packages the built module `url` loads, itself included. */
function moduleGraph(url: string): { modules: Set<string>; packages: Set<string> } {
  const root = fileURLToPath(new URL("../src/", import.meta.url));
  const modules = new Set<string>();
  const packages = new Set<string>();
  const walk = (file: string): void => {
    const name = relative(root, file).replace(/\.js$/, "");
    if (modules.has(name)) return;
    modules.add(name);
    for (const { fileName } of ts.preProcessFile(readFileSync(file, "utf8"), true, true).importedFiles)
      if (fileName.startsWith(".")) walk(resolve(dirname(file), fileName));
      else packages.add(fileName);
  };
  walk(fileURLToPath(url));
  return { modules, packages };
}

test('a guest\'s "myrixen" loads none of the host side: no hypervisor, NIC, driver domain, launcher, compiler or config checks', () => {
  const dep = resolveGuestImport("myrixen", fileURLToPath(import.meta.url));
  assert.equal(dep.kind, "library");
  // Asked for by path, the package's index is the same guest-side module.
  const byPath = resolveGuestImport("../../src/index.js", fileURLToPath(import.meta.url));
  assert.deepEqual(byPath, dep);
  const { modules, packages } = moduleGraph((dep as { url: string }).url);
  assert.ok(modules.has("mpi/mpi") && modules.has("mx/mx"), "the guest's libraries are there");
  const host = [
    "xen/hypervisor",
    "xen/guest/loader",
    "host/host",
    "cluster/job",
    "nic/nic",
    "nic/device",
    "myrixen/back",
  ];
  assert.deepEqual(
    host.filter((m) => modules.has(m)),
    [],
    "host-side modules in a guest's import of myrixen",
  );
  // Node's built-ins only: no compiler (esbuild), no config validation (zod).
  assert.deepEqual(
    [...packages].filter((p) => !p.startsWith("node:")),
    [],
  );
  // The host's own import of the package still has everything (one API on both sides).
  const whole = moduleGraph(new URL("../src/index.js", import.meta.url).href);
  assert.ok(whole.modules.has("host/host") && whole.modules.has("guest-api"));
});

test("a native process (the native path's rank) is sandboxed too: every way out refused, its service link out of reach", async () => {
  const d = await host.startNative({ module: ESCAPE, args: { role: "hostile" }, name: "hostile-native" });
  const exit = await d.exited;
  assert.equal(exit.state, "shutdown", exit.error?.stack);
  const report = exit.result as { name: string; escaped: boolean; detail: string }[];
  assert.deepEqual(
    report.filter((r) => r.escaped).map((r) => `${r.name}: ${r.detail}`),
    [],
  );
  // Its MX worked (the walk opened an endpoint through the native service) and found no port.
  const walk = report.find((r) => r.name.startsWith("a Node object"));
  assert.match(walk?.detail ?? "", /nothing found in \d+ objects/);
});

test("a guest's TextDecoder and TextEncoder work and keep Node's state out of its reach: poking at a decoder cannot crash the host", () => {
  // Node's decoder keeps its native converter in a symbol-keyed property of each instance;
  // a guest that put a plain object there crashed the host process (SIGSEGV). The host runs
  // in a child process here, so that a crash is a failed assertion, not a lost test run.
  const run = (mode: string) => {
    const script = `
      import { Hypervisor } from ${JSON.stringify(new URL("../src/xen/hypervisor.js", import.meta.url).href)};
      const hv = new Hypervisor();
      const d = await hv.createDomain({ module: new URL(${JSON.stringify(fixture("text-codec").href)}), pages: 16, args: { mode: ${JSON.stringify(mode)} } });
      const exit = await d.exited;
      console.log(JSON.stringify({ state: exit.state, result: exit.result ?? null }));
      await hv.shutdown();
    `;
    const dir = mkdtempSync(join(tmpdir(), "myrixen-codec-"));
    try {
      const file = join(dir, "host.mjs");
      writeFileSync(file, script);
      return spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 30_000 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const look = run("look");
  assert.equal(look.status, 0, look.stderr);
  assert.deepEqual(JSON.parse(look.stdout).result, {
    decoderKeys: [],
    encoderKeys: [],
    utf8: "héllo €",
    utf16: "hi",
    streamed: "€",
    encoding: "utf-8 utf-8 false false",
    encodeInto: { read: 3, written: 3 },
    fatal: "TypeError",
  });
  const poke = run("crash");
  assert.equal(poke.signal, null, `the host process was killed by ${poke.signal}`);
  assert.equal(poke.status, 0, poke.stderr);
  assert.deepEqual(JSON.parse(poke.stdout), { state: "shutdown", result: { tried: 0, decoded: "A" } });
});

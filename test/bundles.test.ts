/**
 * The bundles of the CLI, the NIC's thread and the driver domain (scripts/bundle.mjs,
 * src/xen/bundles.ts): used only while they hold the code of the modules beside them, and
 * the modules themselves still run everything when they are not.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { Host } from "../src/host/host.js";
import { bundledGuestScript, bundledScript, freshBundles } from "../src/xen/bundles.js";
import type { GuestImage } from "../src/xen/guest/loader.js";
import { Hypervisor } from "../src/xen/hypervisor.js";

const DIST_SRC = new URL("../src/", import.meta.url);
const BUNDLES = new URL("bundles/", DIST_SRC);
const BIN = fileURLToPath(new URL("../../bin/myrixen.js", import.meta.url));

test("the build's bundles are fresh, and the CLI, the NIC, the driver domain and guests start from them", () => {
  const fresh = freshBundles(BUNDLES, DIST_SRC);
  assert.ok(fresh, "npm test bundles right after tsc: the bundles must be fresh");
  const stand = new URL("file:///nowhere/modules.js");
  for (const name of ["cli", "nic-worker", "driver-domain", "guest"])
    assert.equal(bundledScript(name, stand).href, new URL(`${name}.js`, BUNDLES).href, name);
  assert.equal(bundledScript("no-such-bundle", stand), stand);
});

/** A copy of the manifest and the modules it names, to make stale in ways a build can. */
function copyTree(): { dir: string; src: URL; bundles: URL; manifest: { inputs: Record<string, number> } } {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-bundles-"));
  cpSync(fileURLToPath(DIST_SRC), join(dir, "src"), { recursive: true, preserveTimestamps: true });
  const src = pathToFileURL(join(dir, "src/"));
  const bundles = new URL("bundles/", src);
  const manifest = JSON.parse(readFileSync(new URL("manifest.json", bundles), "utf8"));
  return { dir, src, bundles, manifest };
}

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test("a module newer than the bundles, or of another size, or a broken manifest: the modules run, not the bundles", () => {
  const t = copyTree();
  dirs.push(t.dir);
  assert.ok(freshBundles(t.bundles, t.src), "a copy with its times kept is as fresh as the build");
  const some = Object.keys(t.manifest.inputs).find((p) => p.startsWith("nic/"));
  assert.ok(some);
  const file = new URL(some, t.src);
  // `tsc` wrote it after the bundling (the time moves, the size does not).
  const later = new Date(Date.now() + 60_000);
  utimesSync(file, later, later);
  assert.equal(freshBundles(t.bundles, t.src), undefined, "a module rebuilt since the bundling");
  // Same time as the manifest, another size: edited and touched back.
  const manifestTime = new Date(0);
  utimesSync(file, manifestTime, manifestTime);
  assert.ok(freshBundles(t.bundles, t.src));
  writeFileSync(file, `${readFileSync(file, "utf8")}\n// edited\n`);
  utimesSync(file, manifestTime, manifestTime);
  assert.equal(freshBundles(t.bundles, t.src), undefined, "a module of another size");
  // A module the bundles hold, gone.
  rmSync(file);
  assert.equal(freshBundles(t.bundles, t.src), undefined, "a module removed");
});

test("a manifest that is garbage, or names a bundle outside its directory, is not followed", () => {
  const t = copyTree();
  dirs.push(t.dir);
  const manifestUrl = new URL("manifest.json", t.bundles);
  const write = (text: string) => {
    writeFileSync(manifestUrl, text);
    const future = new Date(Date.now() + 60_000);
    utimesSync(manifestUrl, future, future);
  };
  write("{ not json");
  assert.equal(freshBundles(t.bundles, t.src), undefined);
  write(JSON.stringify({ version: 2, bundles: {}, inputs: {} }));
  assert.equal(freshBundles(t.bundles, t.src), undefined);
  write(JSON.stringify({ version: 1, bundles: { cli: "../cli/main.js" }, inputs: {}, guestLibrary: [] }));
  assert.equal(freshBundles(t.bundles, t.src), undefined, "a bundle outside the bundle directory");
  write(
    JSON.stringify({ version: 1, bundles: { cli: "cli.js" }, inputs: t.manifest.inputs, guestLibrary: [] }),
  );
  assert.equal(freshBundles(t.bundles, t.src)?.scripts.get("cli")?.href, new URL("cli.js", t.bundles).href);
});

test("MYRIXEN_BUNDLES=0: a job runs on the modules themselves, as it does on the bundles", async () => {
  const program = fileURLToPath(new URL("../../examples/mpi-hello.ts", import.meta.url));
  for (const bundles of ["0", "1"]) {
    const r = await promisify(execFile)(
      process.execPath,
      [BIN, "run", "-n", "2", "--path", "bypass", program],
      {
        env: { ...process.env, MYRIXEN_BUNDLES: bundles },
      },
    );
    assert.match(r.stdout, /2 ranks, allreduce gave 1/, `MYRIXEN_BUNDLES=${bundles}`);
    assert.match(r.stdout, /rank 1 got 42 from 0/, `MYRIXEN_BUNDLES=${bundles}`);
  }
});

test("only the privileged domain may start from a script of its own: a guest always runs its sandbox image", async () => {
  const hv = new Hypervisor();
  try {
    const program = new URL("../../examples/mpi-hello.ts", import.meta.url);
    const script = new URL("driver-domain.js", BUNDLES);
    await assert.rejects(
      hv.createDomain({ module: program, script }),
      /`script` .* is for the privileged domain only/,
    );
    await assert.rejects(
      hv.createDomain({ module: program, privileged: true, script: script.href as unknown as URL }),
      /`script` .* as a URL/,
    );
    assert.equal(hv.domains().length, 0, "nothing was started");
  } finally {
    await hv.shutdown();
  }
});

/** An image whose entry imports these library modules (relative to dist/src, no `.js`). */
function imageImporting(...libs: string[]): GuestImage {
  const imports: GuestImage["modules"][string]["imports"] = {};
  for (const lib of libs)
    imports[lib] = { kind: "library", url: new URL(`${lib}.js`, DIST_SRC).href, index: lib === "guest-api" };
  return { entry: "file:///p.js", modules: { "file:///p.js": { url: "file:///p.js", code: "", imports } } };
}

test("a guest starts from the guest bundle only if the bundle holds every library module its program imports", () => {
  const guest = new URL("guest.js", BUNDLES).href;
  assert.equal(bundledGuestScript(imageImporting())?.href, guest, "no library at all");
  assert.equal(bundledGuestScript(imageImporting("guest-api", "mpi/mpi", "xen/memory"))?.href, guest);
  // Host-side code is never in it (the loader refuses such imports; were one to get through,
  // the guest would not start from the bundle and the sandbox's own checks would stand).
  assert.equal(bundledGuestScript(imageImporting("guest-api", "xen/hypervisor")), undefined);
  const elsewhere = imageImporting();
  elsewhere.modules["file:///p.js"].imports.x = {
    kind: "library",
    url: "file:///elsewhere/mpi/mpi.js",
    index: false,
  };
  assert.equal(bundledGuestScript(elsewhere), undefined, "a library module outside this dist/src");
});

test("from the bundle or module by module, a guest's program and its runtime share one copy of each library class", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-bundled-guest-"));
  dirs.push(dir);
  const byPath = new URL("xen/memory.js", DIST_SRC).href;
  writeFileSync(
    join(dir, "same-class.ts"),
    `import { GuestMemory } from "myrixen";
import * as memoryModule from ${JSON.stringify(byPath)};
const ByPath = memoryModule.GuestMemory;
export default async function main(guest: { memory: unknown }) {
  let stack = "";
  try {
    (guest.memory as { allocPages(n: number): unknown }).allocPages(-1);
  } catch (e) {
    stack = String((e as Error).stack);
  }
  return { same: GuestMemory === ByPath, runtimes: guest.memory instanceof ByPath, sealed: !Object.isExtensible((memoryModule as { default?: object }).default), stack };
}
`,
  );
  const host = await Host.start({});
  const saved = process.env.MYRIXEN_BUNDLES;
  try {
    for (const bundles of ["1", "0"]) {
      process.env.MYRIXEN_BUNDLES = bundles;
      const dom = await host.startGuest({
        module: join(dir, "same-class.ts"),
        name: `same-class-${bundles}`,
      });
      const e = await dom.exited;
      assert.equal(e.state, "shutdown", e.error?.message);
      const r = e.result as { same: boolean; runtimes: boolean; sealed: boolean; stack: string };
      // The namespace the sandbox hands over (the program's `import *` is a copy of it, with it
      // as `default`): a module namespace, or the bundle's stand-in, frozen like one.
      assert.equal(
        r.sealed,
        true,
        `MYRIXEN_BUNDLES=${bundles}: a library module's namespace takes no new names`,
      );
      assert.equal(
        r.same,
        true,
        `MYRIXEN_BUNDLES=${bundles}: "myrixen" and the module by path are one module`,
      );
      assert.equal(
        r.runtimes,
        true,
        `MYRIXEN_BUNDLES=${bundles}: the runtime's GuestMemory is the program's`,
      );
      // Where the library code ran from: the bundle's chunks, or dist/src/xen/memory.js.
      if (bundles === "1") assert.match(r.stack, /\/dist\/src\/bundles\/chunk-\w+\.js/);
      else assert.match(r.stack, /\/dist\/src\/xen\/memory\.js/);
    }
  } finally {
    if (saved === undefined) delete process.env.MYRIXEN_BUNDLES;
    else process.env.MYRIXEN_BUNDLES = saved;
    await host.stop();
  }
});

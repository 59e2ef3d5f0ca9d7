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
import { bundledScript, freshBundles } from "../src/xen/bundles.js";
import { Hypervisor } from "../src/xen/hypervisor.js";

const DIST_SRC = new URL("../src/", import.meta.url);
const BUNDLES = new URL("bundles/", DIST_SRC);
const BIN = fileURLToPath(new URL("../../bin/myrixen.js", import.meta.url));

test("the build's bundles are fresh, and the CLI, the NIC and the driver domain start from them", () => {
  const fresh = freshBundles(BUNDLES, DIST_SRC);
  assert.ok(fresh, "npm test bundles right after tsc: the bundles must be fresh");
  const stand = new URL("file:///nowhere/modules.js");
  for (const name of ["cli", "nic-worker", "driver-domain"])
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
  write(JSON.stringify({ version: 1, bundles: { cli: "../cli/main.js" }, inputs: {} }));
  assert.equal(freshBundles(t.bundles, t.src), undefined, "a bundle outside the bundle directory");
  write(JSON.stringify({ version: 1, bundles: { cli: "cli.js" }, inputs: t.manifest.inputs }));
  assert.equal(freshBundles(t.bundles, t.src)?.get("cli")?.href, new URL("cli.js", t.bundles).href);
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

/**
 * The package as a user gets it: `npm pack` from a clean checkout of this working tree (the
 * tracked and new files, no dist/: prepack builds it), `npm install ./myrixen-*.tgz` into an
 * empty directory (from the local npm cache), then the CLI, a built-in job, the user's own
 * TypeScript and JavaScript programs and host scripts importing "myrixen", and a type-check of
 * the user's TypeScript against the installed package's declarations.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const VERSION = (await import(join(REPO, "package.json"), { with: { type: "json" } })).default
  .version as string;
const tmp = mkdtempSync(join(tmpdir(), "myrixen-pack-"));
const CHECKOUT = join(tmp, "checkout");
const APP = join(tmp, "app");

/**
 * npm and the CLI as a user's shell runs them: none of the outer `npm test`'s variables (its
 * npm_config_local_prefix names this repository), only the settings that reach the registry.
 */
const KEPT_NPM = /^npm_config_(cache|userconfig|globalconfig|cafile|registry)$/i;
const env: NodeJS.ProcessEnv = { NO_COLOR: "1" };
for (const [k, v] of Object.entries(process.env))
  if ((!/^npm_/i.test(k) || KEPT_NPM.test(k)) && k !== "INIT_CWD") env[k] = v;

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}
async function sh(cmd: string, args: string[], cwd: string): Promise<Ran> {
  try {
    const r = await promisify(execFile)(cmd, args, { cwd, env, maxBuffer: 16 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return {
      code: typeof x.code === "number" ? x.code : 1,
      stdout: x.stdout ?? "",
      stderr: x.stderr ?? String(e),
    };
  }
}
function ok(r: Ran, what: string): string {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

let tarball = "";
let listing: string[] = [];

before(async () => {
  // A clean checkout: what git tracks (and new, not ignored, files), as they are now.
  const files = ok(
    await sh("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO),
    "git ls-files",
  )
    .split("\0")
    .filter((f) => f && existsSync(join(REPO, f)));
  for (const f of files) {
    mkdirSync(dirname(join(CHECKOUT, f)), { recursive: true });
    copyFileSync(join(REPO, f), join(CHECKOUT, f));
  }
  assert.ok(!existsSync(join(CHECKOUT, "dist")), "the checkout has no build");
  // The build tools of `npm ci` (tsc for prepack), without installing them again.
  symlinkSync(join(REPO, "node_modules"), join(CHECKOUT, "node_modules"), "dir");
  mkdirSync(join(tmp, "out"));
  ok(await sh("npm", ["pack", "--pack-destination", join(tmp, "out")], CHECKOUT), "npm pack");
  const tgz = readdirSync(join(tmp, "out")).filter((f) => f.endsWith(".tgz"));
  assert.deepEqual(tgz, [`myrixen-${VERSION}.tgz`]);
  tarball = join(tmp, "out", tgz[0]);
  listing = ok(await sh("tar", ["tzf", tarball], tmp), "tar")
    .split("\n")
    .filter(Boolean);

  mkdirSync(APP);
  writeFileSync(join(APP, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  ok(
    await sh("npm", ["install", tarball, "--prefer-offline", "--no-audit", "--no-fund"], APP),
    "npm install ./myrixen.tgz",
  );
  for (const [name, text] of Object.entries(USER_FILES)) writeFileSync(join(APP, name), text);
});

after(() => rmSync(tmp, { recursive: true, force: true }));

/** What the user writes: an MPI program in TypeScript and in JavaScript, host scripts in both. */
const USER_FILES: Record<string, string> = {
  "allmax.ts": `import { type Guest, MPI } from "myrixen";

export default async function main(guest: Guest): Promise<number> {
  const comm = await MPI.init(guest);
  const v = new Int32Array([comm.rank * 10]);
  comm.allreduce(MPI.IN_PLACE, v, MPI.MAX);
  if (comm.rank === 0) console.log(\`ts program: max \${v[0]} over \${comm.size} ranks\`);
  comm.finalize();
  return 0;
}
`,
  "allsum.mjs": `import { MPI } from "myrixen";

export default async function main(guest) {
  const comm = await MPI.init(guest);
  const v = new Float64Array([comm.rank + 1]);
  comm.allreduce(MPI.IN_PLACE, v, MPI.SUM);
  if (comm.rank === 0) console.log(\`mjs program: sum \${v[0]} over \${comm.size} ranks\`);
  comm.finalize();
  return 0;
}
`,
  "pages.ts": `import type { Guest } from "myrixen";

export default function main(guest: Guest): string {
  const run = guest.memory.allocPages(2);
  return \`domain \${guest.domid} has \${guest.memory.nrPages} pages, got pfn \${run.pfn}\`;
}
`,
  "host.ts": `import { type DomainExit, Hypervisor } from "myrixen";

const hv = new Hypervisor();
const dom = await hv.createDomain({ module: new URL("./pages.ts", import.meta.url), pages: 16 });
const exit: DomainExit = await dom.exited;
console.log(\`host.ts: \${exit.state}: \${String(exit.result)} (argv \${process.argv.slice(2).join(" ")})\`);
await hv.shutdown();
`,
  "host.mjs": `import { Hypervisor } from "myrixen";

const hv = new Hypervisor();
const dom = await hv.createDomain({ module: new URL("./pages.ts", import.meta.url), pages: 8 });
const exit = await dom.exited;
console.log(\`host.mjs: \${exit.state}: \${exit.result}\`);
await hv.shutdown();
`,
  // A user's tsconfig: Node's module resolution (the package's "exports" and "types"), strict.
  "tsconfig.json": JSON.stringify({
    compilerOptions: {
      target: "ES2022",
      module: "NodeNext",
      moduleResolution: "NodeNext",
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: ["node"],
      // @types/node is the user's (they write for Node); here it is the repository's copy.
      typeRoots: [join(REPO, "node_modules", "@types")],
    },
    include: ["*.ts"],
  }),
};

test("the tarball holds what a user needs and nothing of the development tree", () => {
  for (const f of [
    "package/package.json",
    "package/LICENSE",
    "package/README.md",
    // The README links into docs/: the measurements, the security model, performance
    // isolation, the design notes, and the pictures it shows.
    "package/docs/measurements.md",
    "package/docs/security.md",
    "package/docs/performance-isolation.md",
    "package/docs/design-notes.md",
    "package/docs/report.png",
    "package/docs/dashboard.png",
    "package/bin/myrixen.js",
    "package/dist/src/index.js",
    "package/dist/src/index.d.ts",
    "package/dist/src/cli/main.js",
    "package/dist/src/programs/nas/ep.js",
    "package/dist/src/bundles/manifest.json",
    "package/dist/src/bundles/cli.js",
    "package/dist/src/bundles/nic-worker.js",
    "package/dist/src/bundles/driver-domain.js",
    "package/src/dashboard/static/index.html",
    "package/src/bench/openmpi/pingpong.c",
    "package/src/bench/openmpi/is.c",
    "package/src/bench/openmpi/cg.c",
    "package/src/bench/openmpi/npb-rand.h",
  ])
    assert.ok(listing.includes(f), `${f} is in the tarball`);
  const stray = listing.filter(
    (f) =>
      /^package\/(test|dist\/test|\.ci|scripts|examples|node_modules)\//.test(f) ||
      /\.map$|tsbuildinfo/.test(f) ||
      // Sources ship only where they are the product: the dashboard's page, and the Open MPI
      // peer's C programs (the ping-pong `bench` and the IS and CG `run --openmpi` compile with
      // the machine's mpicc) and their header.
      (/^package\/src\//.test(f) &&
        !f.startsWith("package/src/dashboard/static/") &&
        !/^package\/src\/bench\/openmpi\/((pingpong|is|cg)\.c|npb-rand\.h)$/.test(f)),
  );
  assert.deepEqual(stray, []);
});

test("the installed package starts its CLI, its host's threads and its guests from its bundles (fresh as installed)", async () => {
  const installed = join(APP, "node_modules", "myrixen", "dist", "src");
  const probe = `import(${JSON.stringify(pathToFileURL(join(installed, "xen", "bundles.js")).href)}).then((b) => {
    const fresh = b.freshBundles(new URL("bundles/", ${JSON.stringify(pathToFileURL(`${installed}/`).href)}), new URL(${JSON.stringify(pathToFileURL(`${installed}/`).href)}));
    console.log(fresh ? [...fresh.scripts.keys()].sort().join(",") : "stale");
  })`;
  assert.equal(
    ok(await sh(process.execPath, ["-e", probe], APP), "the bundles probe").trim(),
    "cli,driver-domain,guest,nic-worker",
  );
});

test("npx myrixen --version and a built-in job run from node_modules", async () => {
  assert.equal(ok(await sh("npx", ["myrixen", "--version"], APP), "myrixen --version").trim(), VERSION);
  const ep = ok(await sh("npx", ["myrixen", "run", "-n", "2", "nas-ep", "--class", "S"], APP), "run nas-ep");
  assert.match(ep, /Class\s+=\s+S/);
  assert.match(ep, /Total processes\s+=\s+2/);
  assert.match(ep, /Verification\s+=\s+SUCCESSFUL/);
});

test("the user's own TypeScript and JavaScript programs import myrixen", async () => {
  const ts = ok(
    await sh("npx", ["myrixen", "run", "-n", "3", "--oversubscribe", "allmax.ts"], APP),
    "run allmax.ts",
  );
  assert.match(ts, /ts program: max 20 over 3 ranks/);
  const mjs = ok(await sh("npx", ["myrixen", "run", "-n", "2", "allsum.mjs"], APP), "run allsum.mjs");
  assert.match(mjs, /mjs program: sum 3 over 2 ranks/);
});

test("host scripts: `myrixen exec` for TypeScript, plain node for JavaScript", async () => {
  const ts = ok(await sh("npx", ["myrixen", "exec", "host.ts", "a", "b"], APP), "myrixen exec host.ts");
  assert.match(ts, /^host\.ts: shutdown: domain \d+ has 16 pages, got pfn \d+ \(argv a b\)$/m);
  const mjs = ok(await sh(process.execPath, ["host.mjs"], APP), "node host.mjs");
  assert.match(mjs, /^host\.mjs: shutdown: domain \d+ has 8 pages/m);
  const missing = await sh("npx", ["myrixen", "exec", "nope.ts"], APP);
  assert.equal(missing.code, 2);
  assert.equal(missing.stderr.trim(), "myrixen exec: no script nope.ts");
  // In a project as `npm init` makes it ("type": "commonjs"), a .ts host script is CommonJS
  // and its top-level await cannot compile: one line saying what to change, not esbuild's trace.
  const cjs = join(APP, "cjs");
  mkdirSync(cjs);
  writeFileSync(join(cjs, "package.json"), JSON.stringify({ name: "cjs-app", type: "commonjs" }));
  writeFileSync(join(cjs, "host.ts"), USER_FILES["host.ts"]);
  writeFileSync(join(cjs, "pages.ts"), USER_FILES["pages.ts"]);
  const tla = await sh("npx", ["myrixen", "exec", "host.ts"], cjs);
  assert.equal(tla.code, 1);
  assert.equal(
    tla.stderr.trim(),
    `myrixen exec: host.ts uses top-level await, which needs an ES module, but ${join(cjs, "package.json")} ("type": "commonjs") makes .ts files CommonJS: set "type": "module" there (npm pkg set type=module) or rename the script host.mts`,
  );
  // Renamed as it says, it runs.
  writeFileSync(join(cjs, "host.mts"), USER_FILES["host.ts"]);
  const mts = ok(await sh("npx", ["myrixen", "exec", "host.mts", "x"], cjs), "myrixen exec host.mts");
  assert.match(mts, /^host\.ts: shutdown: domain \d+ has 16 pages, got pfn \d+ \(argv x\)$/m);
});

test("TypeScript users get the package's types: tsc --noEmit of their files passes", async () => {
  const tsc = join(REPO, "node_modules", "typescript", "bin", "tsc");
  ok(await sh(process.execPath, [tsc, "-p", "."], APP), "tsc --noEmit");
  // And the types are real: a misuse is an error, not `any`.
  writeFileSync(join(APP, "wrong.ts"), `import { MPI } from "myrixen";\nMPI.init(42);\n`);
  const wrong = await sh(process.execPath, [tsc, "-p", "."], APP);
  rmSync(join(APP, "wrong.ts"));
  assert.notEqual(wrong.code, 0);
  assert.match(wrong.stdout, /wrong\.ts\(2,10\): error TS2345/);
});

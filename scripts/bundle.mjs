#!/usr/bin/env node
// Writes the scripts that start most often as bundles (esbuild, from the compiled dist/src):
// the CLI (`bin/myrixen.js`), the NIC's thread, the driver domain and the guest thread with
// the library a guest's program may import, which start at every `myrixen` command, host
// start and rank and otherwise resolve, read and compile 40 to 230 ES modules each time.
// Output: dist/src/bundles/, with the manifest src/xen/bundles.ts checks before using a
// bundle. Run after every `tsc` of the project (npm test, npm start, npm run build, prepare,
// prepack); bundles older than any module they hold are not used, so a forgotten run costs
// start time, never correctness.
import { readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("../", import.meta.url));
const srcDir = join(root, "dist", "src");
const outDir = join(srcDir, "bundles");
const tmpDir = join(srcDir, ".bundles-tmp");

/** Bundle name → the compiled entry module it stands for (relative to dist/src), or a virtual one. */
const ENTRIES = {
  cli: "cli/main.js",
  "nic-worker": "nic/nic-worker.js",
  "driver-domain": "host/driver-domain-thread.js",
  guest: "virtual:guest",
};

/**
 * What a guest's program may import of the library (the package's index and the modules
 * src/xen/guest/reach.ts allows by path), relative to dist/src without `.js`: the guest bundle
 * holds each as one module, in one chunk it loads when the program imports any of them.
 */
const { guestMayImport } = await import(pathToFileURL(join(srcDir, "xen", "guest", "reach.js")).href);
// The index ("myrixen", or index.js by path) is guest-api.js for a guest (guest/loader.ts).
// From the sources, not dist/src, which may hold what tsc compiled of a module since removed.
const guestLibrary = new Set(["guest-api"]);
const tsDir = join(root, "src");
const walk = (dir) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) {
      const name = relative(tsDir, p).split(sep).join("/").slice(0, -".ts".length);
      if (!name.startsWith("programs/") && name !== "index" && guestMayImport(name)) guestLibrary.add(name);
    }
  }
};
walk(tsDir);
const libraryNames = [...guestLibrary].sort();

/**
 * The guest thread: guest/runtime.ts's domain thread, handed the bundle's library (the
 * sandbox takes a program's library imports from there, never from Node's loader: one copy of
 * each class). The library is a chunk of its own, loaded only by programs that import it.
 */
const at = (name) => JSON.stringify(join(srcDir, `${name}.js`));
const VIRTUAL = {
  "virtual:guest": `import { runDomainThread } from ${at("xen/guest/domain-thread")};
const base = new URL("../", import.meta.url).href;
await runDomainThread(undefined, async (url) => {
  if (!url.startsWith(base) || !url.endsWith(".js")) return undefined;
  const { library } = await import("virtual:guest-library");
  const name = url.slice(base.length, -".js".length);
  // Non-extensible, as a module namespace is (esbuild's stand-in for one is a plain object).
  return Object.hasOwn(library, name) ? Object.freeze(library[name]) : undefined;
});
`,
  "virtual:guest-library": `${libraryNames.map((n, i) => `import * as m${i} from ${at(n)};`).join("\n")}
export const library = { ${libraryNames.map((n, i) => `${JSON.stringify(n)}: m${i}`).join(", ")} };
`,
};
const virtual = {
  name: "virtual-entries",
  setup(b) {
    b.onResolve({ filter: /^virtual:/ }, (args) => ({ path: args.path, namespace: "virtual" }));
    b.onLoad({ filter: /.*/, namespace: "virtual" }, (args) => ({
      contents: VIRTUAL[args.path],
      loader: "js",
      resolveDir: srcDir,
    }));
  },
};

/**
 * Dependencies stay where npm put them, loaded when used (a native binary, a web server the
 * dashboard loads on demand, CommonJS packages of a few files), except zod: ~200 ES modules,
 * ~90 ms of every process that validates a config or a wire message.
 */
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const external = Object.keys(pkg.dependencies).filter((d) => d !== "zod");

/**
 * Each module keeps its own import.meta.url (the URLs of worker scripts, static files and
 * packages it resolves are relative to it): every output file sits in one directory, so the
 * module's path from there stands in for it.
 */
const ownImportMeta = {
  name: "own-import-meta",
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, (args) => {
      const text = readFileSync(args.path, "utf8");
      const rel = relative(srcDir, args.path);
      if (rel.startsWith("..") || !text.includes("import.meta")) return undefined;
      if (/import\.meta\.(?!url\b)/.test(text))
        throw new Error(`bundle: ${rel} uses import.meta other than .url, which a bundle cannot keep`);
      // Not inside a string (loader.ts hands "import.meta.url" to esbuild as a name to define).
      const own = `new URL(${JSON.stringify(relative(outDir, args.path))}, import.meta.url).href`;
      return { contents: text.replace(/(?<!["'`])import\.meta\.url(?!["'`])/g, own), loader: "js" };
    });
  },
};

rmSync(tmpDir, { recursive: true, force: true });
const r = await build({
  entryPoints: Object.fromEntries(
    Object.entries(ENTRIES).map(([name, entry]) => [
      name,
      entry.startsWith("virtual:") ? entry : join(srcDir, entry),
    ]),
  ),
  bundle: true,
  // Code several entries share, and what one loads only on demand (a command's module, zod
  // for a QoS policy in the driver domain), in chunks of their own, beside the entries.
  splitting: true,
  chunkNames: "[name]-[hash]",
  platform: "node",
  format: "esm",
  target: "node20",
  outdir: tmpDir,
  external,
  plugins: [virtual, ownImportMeta],
  metafile: true,
  logLevel: "warning",
  banner: { js: "// Generated by scripts/bundle.mjs from dist/src: do not edit." },
});
const inputs = {};
for (const input of Object.keys(r.metafile.inputs)) {
  if (input.startsWith("virtual:")) continue;
  const rel = relative(srcDir, join(root, input));
  // A dependency's files: the bundle holds its own copy of them.
  if (!rel.startsWith("..")) inputs[rel] = statSync(join(srcDir, rel)).size;
}
// Written last, so its time is later than that of every file it vouches for.
const bundles = Object.fromEntries(Object.keys(ENTRIES).map((n) => [n, `${n}.js`]));
writeFileSync(
  join(tmpDir, "manifest.json"),
  `${JSON.stringify({ version: 1, bundles, inputs, guestLibrary: libraryNames }, null, 1)}\n`,
);
rmSync(outDir, { recursive: true, force: true });
renameSync(tmpDir, outDir);
const kib = (f) => `${(statSync(join(outDir, f)).size / 1024).toFixed(0)} KiB`;
console.log(
  `bundle: ${Object.values(bundles)
    .map((f) => `${f} (${kib(f)})`)
    .join(", ")} from ${Object.keys(inputs).length} modules, in ${relative(root, outDir)}/`,
);

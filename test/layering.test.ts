/**
 * The layering of src/: a folder imports only folders at its level or below, and no file
 * imports itself back through others. The same check as the reviewers' import-check tool,
 * kept here so that a change which runs an import up a layer, or closes a cycle, fails the
 * suite.
 *
 * Layers, low to high (README, "Code layout"):
 *   xen < nic < netfront, netback, myrixen < mx < host < cluster < mpi < programs < bench, dashboard < cli
 *
 * `import type` and `export type` are erased at compile time and are not edges. Every folder
 * of src/ is checked.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const LAYER: Record<string, number> = {
  xen: 1,
  nic: 2,
  netfront: 3,
  netback: 3,
  myrixen: 3,
  mx: 4,
  host: 5,
  cluster: 6,
  mpi: 7,
  programs: 8,
  bench: 9,
  dashboard: 9,
  cli: 10,
};

/** Folders whose upward imports and cycles fail the test: all of them. */
const CHECKED = Object.keys(LAYER);

/** The repository root: the nearest directory above this file with package.json and src/. */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "src"))) return dir;
    const up = dirname(dir);
    if (up === dir)
      throw new Error("layering test: no repository root (package.json and src/) above this file");
    dir = up;
  }
}

function sourceFiles(src: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (d: string): void => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith(".ts")) files.set(p, readFileSync(p, "utf8"));
    }
  };
  walk(src);
  return files;
}

interface Findings {
  /** "from -> to", paths relative to src. */
  upward: string[];
  /** Each cycle's files, relative to src. */
  cycles: string[][];
  /** Runtime imports: absolute path → the absolute paths it imports. */
  edges: Map<string, Set<string>>;
}

/** Runtime import edges, upward imports and file cycles of `files` (absolute path → text) under `src`. */
function analyse(src: string, files: Map<string, string>): Findings {
  const top = (f: string): string => relative(src, f).split("/")[0].replace(/\.ts$/, "");
  const edges = new Map<string, Set<string>>();
  const upward: string[] = [];
  for (const [f, text] of files) {
    const deps = new Set<string>();
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+["'](\.[^"']+)["']/g)) {
      const stmt = m[0].trim();
      if (/^import\s+type\b/.test(stmt) || /^export\s+type\b/.test(stmt)) continue;
      const t = resolve(dirname(f), m[1]).replace(/\.js$/, ".ts");
      deps.add(t);
      const a = top(f);
      const b = top(t);
      if (a !== b && LAYER[a] !== undefined && LAYER[b] !== undefined && LAYER[b] > LAYER[a])
        upward.push(`${relative(src, f)} -> ${relative(src, t)}`);
    }
    edges.set(f, deps);
  }
  // Strongly connected components (Tarjan): any with more than one file is a cycle.
  let next = 0;
  const stack: string[] = [];
  const onStack = new Set<string>();
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const cycles: string[][] = [];
  const connect = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!edges.has(w)) continue;
      if (!index.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(relative(src, w));
      } while (w !== v);
      if (scc.length > 1) cycles.push(scc.sort());
    }
  };
  for (const v of edges.keys()) if (!index.has(v)) connect(v);
  return { upward, cycles, edges };
}

/** Every file `start` loads at run time, itself included (paths relative to src). */
function loads(src: string, edges: Map<string, Set<string>>, start: string): Set<string> {
  const seen = new Set<string>();
  const visit = (f: string): void => {
    if (seen.has(f) || !edges.has(f)) return;
    seen.add(f);
    for (const d of edges.get(f)!) visit(d);
  };
  visit(join(src, start));
  return new Set([...seen].map((f) => relative(src, f)));
}

const inChecked = (rel: string): boolean => CHECKED.includes(rel.split("/")[0]);

test("no file of src/ imports a layer above it, and no file is in an import cycle", (t) => {
  const src = join(repoRoot(), "src");
  const { upward, cycles } = analyse(src, sourceFiles(src));
  for (const u of upward) t.diagnostic(`upward: ${u}`);
  for (const c of cycles) t.diagnostic(`cycle: ${c.join(" <-> ")}`);
  assert.deepEqual(
    upward.filter((u) => inChecked(u)),
    [],
    `imports that run up a layer (${CHECKED.join(", ")})`,
  );
  assert.deepEqual(
    cycles.filter((c) => c.some(inChecked)),
    [],
    `import cycles through ${CHECKED.join(", ")}`,
  );
});

test("the launcher and the host daemon load no MX, MPI or guest library: those run in the guests", () => {
  // Each `myrixen run` or `myrixen host` process would otherwise compile the runtime its
  // ranks load for themselves (a built-in program's argument check once pulled in all of MPI:
  // 875 KiB of bundle, ~0.1 s of CPU per command).
  const src = join(repoRoot(), "src");
  const { edges } = analyse(src, sourceFiles(src));
  for (const entry of ["cli/run.ts", "cli/main.ts", "cluster/host-daemon.ts"]) {
    const runtime = [...loads(src, edges, entry)].filter(
      (f) => /^(mx|mpi|netfront)\//.test(f) || f === "guest-api.ts",
    );
    assert.ok(edges.has(join(src, entry)), `${entry} exists`);
    assert.deepEqual(runtime, [], `${entry} loads guest-side modules`);
  }
});

test("every folder of src/ has a layer (a new folder is placed before it can be imported)", () => {
  const src = join(repoRoot(), "src");
  const folders = readdirSync(src).filter((f) => statSync(join(src, f)).isDirectory());
  assert.deepEqual(
    folders.filter((f) => !(f in LAYER)),
    [],
    "folders with no layer in LAYER (and in ../shared/tools/import-check.mjs)",
  );
});

test("the check sees an upward import and a cycle, and ignores type-only imports", () => {
  const src = "/repo/src";
  const files = new Map<string, string>([
    // nic → mx runs up a layer; a type-only import the other way is no edge.
    [`${src}/nic/a.ts`, 'import { x } from "../mx/b.js";\nimport type { Y } from "./c.js";\n'],
    [`${src}/mx/b.ts`, "export const x = 1;\n"],
    // c → d → c is a cycle, even spread over lines.
    [`${src}/nic/c.ts`, 'import {\n  d,\n} from "./d.js";\nexport type Y = number;\n'],
    [`${src}/nic/d.ts`, 'export { e } from "./c.js";\nexport const d = 1;\n'],
    // Downward and type-only: fine.
    [`${src}/mx/e.ts`, 'import { d } from "../nic/d.js";\nexport type { Z } from "../host/z.js";\n'],
  ]);
  const { upward, cycles } = analyse(src, files);
  assert.deepEqual(upward, ["nic/a.ts -> mx/b.ts"]);
  assert.deepEqual(cycles, [["nic/c.ts", "nic/d.ts"]]);
});

/**
 * The domain builder's compiler does not outlive its work: esbuild's service process, which
 * compiles guest programs, is stopped once no image has been built for a moment (idle, its Go
 * runtime wakes tens of times a second, each time taking a core from a busy-polling guest).
 */
import assert from "node:assert/strict";
import {
  closeSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import {
  compileCacheStats,
  guestProgramExports,
  IMAGE_MODULES_MAX,
  IMAGE_SOURCE_MAX_BYTES,
  loadGuestImage,
} from "../src/xen/guest/loader.js";

/** This process's children named esbuild, from /proc (Linux). */
function esbuildChildren(): number[] {
  const found: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    // pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
    const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    if (comm === "esbuild" && ppid === process.pid) found.push(Number(name));
  }
  return found;
}

test("esbuild's service compiles a guest program, then stops once the loader is idle", {
  skip: process.platform !== "linux",
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-loader-"));
  try {
    // A file never compiled before (the loader caches by path, size and time).
    const file = join(dir, `prog-${process.pid}-${Date.now()}.ts`);
    writeFileSync(
      file,
      "export default function main(): number {\n  const x: number = 41;\n  return x + 1;\n}\n",
    );
    const image = await loadGuestImage(pathToFileURL(file).href);
    const running = esbuildChildren();
    const mod = image.modules[image.entry];
    assert.equal(mod.error, undefined);
    assert.match(mod.code ?? "", /x \+ 1/, "compiled to JavaScript");
    assert.ok(running.length > 0, "the compile ran in esbuild's service process");
    // Stopped within moments of the last compile (COMPILER_IDLE_MS), not at the host's exit.
    for (let i = 0; i < 100 && esbuildChildren().length > 0; i++) await sleep(100);
    assert.deepEqual(esbuildChildren(), [], "esbuild's service is gone once nothing compiles");
    // And it comes back for the next program.
    writeFileSync(file, "export default function main(): number {\n  return 7;\n}\n");
    const again = await loadGuestImage(pathToFileURL(file).href);
    assert.match(again.modules[again.entry].code ?? "", /return 7/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a program's exports, read without running it: names, default, CommonJS; no answer for export * or a file that does not parse", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-exports-"));
  const file = (name: string, text: string) => {
    const f = join(dir, name);
    writeFileSync(f, text);
    return f;
  };
  try {
    file("impl.ts", "export async function main(): Promise<number> {\n  return 0;\n}\n");
    assert.deepEqual(await guestProgramExports(file("plain.ts", "export default function main() {}\n")), [
      "default",
    ]);
    assert.deepEqual(
      (
        await guestProgramExports(
          file("named.ts", 'export { main } from "./impl.ts";\nexport const x = 1;\n'),
        )
      )?.sort(),
      ["main", "x"],
    );
    assert.deepEqual(await guestProgramExports(file("helpers.ts", "export const helper = 1;\n")), ["helper"]);
    assert.deepEqual(await guestProgramExports(file("old.cjs", "module.exports = function main() {};\n")), [
      "default",
    ]);
    // Which names `export *` brings only the module it names knows: the launcher must not guess.
    assert.equal(await guestProgramExports(file("star.ts", 'export * from "./impl.ts";\n')), undefined);
    assert.equal(await guestProgramExports(file("broken.ts", "export const = ;\n")), undefined);
    assert.equal(await guestProgramExports(join(dir, "missing.ts")), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a program's image is bounded: more modules than IMAGE_MODULES_MAX, or more source than IMAGE_SOURCE_MAX_BYTES, is refused before it is compiled", async () => {
  // Built in the host's memory, before the guest and its meters exist: a tenant's program of a
  // 1 GiB file, or of 30,000 modules (56 s of compiles), spent what every tenant shares.
  const dir = mkdtempSync(join(tmpdir(), "myrixen-image-bound-"));
  try {
    const many = join(dir, "many.js");
    const n = IMAGE_MODULES_MAX + 1;
    for (let i = 0; i < n; i++) writeFileSync(join(dir, `m${i}.js`), `export const x${i} = ${i};\n`);
    writeFileSync(
      many,
      `${Array.from({ length: n }, (_, i) => `import { x${i} } from "./m${i}.js";`).join("\n")}\nexport default () => x0;\n`,
    );
    let before = compileCacheStats().compiles;
    let image = await loadGuestImage(pathToFileURL(many).href);
    assert.match(
      image.modules[image.entry]?.error ?? "",
      new RegExp(`imports more than ${IMAGE_MODULES_MAX} modules \\(IMAGE_MODULES_MAX\\)`),
    );
    assert.equal(compileCacheStats().compiles - before, 1, "only the entry was compiled");

    // A file past the bound (sparse: no bytes written) is not even read.
    const big = join(dir, "big.js");
    const fd = openSync(big, "w");
    ftruncateSync(fd, IMAGE_SOURCE_MAX_BYTES + 1);
    closeSync(fd);
    before = compileCacheStats().compiles;
    image = await loadGuestImage(pathToFileURL(big).href);
    assert.match(image.modules[image.entry]?.error ?? "", /source passes 64 MiB .*IMAGE_SOURCE_MAX_BYTES/);
    assert.equal(compileCacheStats().compiles - before, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

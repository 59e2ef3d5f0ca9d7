/**
 * NAS kernels (EP, IS, CG; class S) as MPI jobs: they verify against NPB 3.4's reference
 * values on 1, 2 and 4 ranks on the native path and on 2 ranks on the bypass path, write their
 * `--json` result, and reject an unknown class with a clear message and a non-zero exit code.
 * Also the serial pieces: the randlc/vranlc generator and the EP batch split.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";
import {
  A_MULT,
  AUTO_WARMUP_PASSES,
  CG_CLASSES,
  EP_CLASSES,
  parseNasArgs,
  randlc,
  vranlc,
} from "../src/programs/nas/common.js";
import { epShare } from "../src/programs/nas/ep.js";
import { MAX_ITERATIONS as IS_MAX_ITERATIONS } from "../src/programs/nas/is.js";

let host: Host;
let dir: string;
before(async () => {
  host = await Host.start({});
  dir = mkdtempSync(join(tmpdir(), "myrixen-nas-"));
});
after(async () => {
  await host.stop();
  rmSync(dir, { recursive: true, force: true });
});

type Kernel = "ep" | "is" | "cg";

async function runKernel(kernel: Kernel, n: number, path: "native" | "bypass", argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const res = await new Job(host, {
    n,
    path,
    program: new URL(`../src/programs/nas/${kernel}.js`, import.meta.url),
    argv,
    pages: 8192,
    output: (rank, stream, line) => (stream === "stdout" ? out : err).push(`${rank}|${line}`),
  }).run();
  const rank0 = out.filter((l) => l.startsWith("0|")).map((l) => l.slice(2));
  return { res, out: rank0.join("\n"), err: err.join("\n") };
}

test("randlc/vranlc: the NPB sequence from 314159265, exact in doubles", () => {
  const s = { x: 314159265 };
  assert.equal(randlc(s, A_MULT), 0.79452191118873827);
  assert.equal(s.x, 55909509111989);
  assert.equal(randlc(s, A_MULT), 0.86906527387453991);
  assert.equal(s.x, 61155031930969);
  const y = new Float64Array(2);
  const v = { x: 314159265 };
  vranlc(2, v, A_MULT, y);
  assert.deepEqual([...y], [0.79452191118873827, 0.86906527387453991]);
  assert.equal(v.x, 61155031930969);
});

test("EP batch split covers every batch once, NPB style (the first ranks take the remainder)", () => {
  for (const size of [1, 2, 3, 4, 7]) {
    let next = 0;
    for (let r = 0; r < size; r++) {
      const { first, count } = epShare(256, r, size);
      assert.equal(first, next);
      next += count;
    }
    assert.equal(next, 256);
  }
});

test("argument parsing: class and json, clear errors", () => {
  assert.deepEqual(parseNasArgs("ep", []), { cls: "S", json: undefined });
  assert.deepEqual(parseNasArgs("ep", ["--class", "w", "--json", "x.json"]), { cls: "W", json: "x.json" });
  assert.throws(() => parseNasArgs("ep", ["--class", "Z"]), /unknown class "Z" \(expected one of S, W, A\)/);
  assert.throws(() => parseNasArgs("ep", ["--bogus"]), /unknown argument "--bogus"/);
  assert.throws(() => parseNasArgs("ep", ["--class"]), /--class needs a value/);
});

test("argument parsing: --warmup auto|N for IS and CG (auto by default), refused for EP", () => {
  assert.deepEqual(parseNasArgs("is", []), { cls: "S", json: undefined, warmup: "auto" });
  assert.deepEqual(parseNasArgs("cg", ["--warmup", "1", "--class", "A"]), {
    cls: "A",
    json: undefined,
    warmup: 1,
  });
  assert.deepEqual(parseNasArgs("is", ["--warmup", "auto"]).warmup, "auto");
  assert.equal(parseNasArgs("cg", ["--warmup", "250"]).warmup, 250);
  for (const bad of ["0", "-1", "1.5", "two", "", "1e3", "1001"])
    assert.throws(
      () => parseNasArgs("is", ["--warmup", bad]),
      /is: --warmup takes "auto" or a whole number of untimed iterations from 1 to 1000 \(1 is NPB's rule\)/,
      bad,
    );
  assert.throws(() => parseNasArgs("cg", ["--warmup"]), /--warmup needs a value/);
  assert.throws(() => parseNasArgs("ep", ["--warmup", "2"]), /ep: --warmup does not apply/);
  assert.throws(() => parseNasArgs("ep", ["--bogus"]), /usage: ep \[--class S\|W\|A\] \[--json FILE\]\)/);
  assert.throws(
    () => parseNasArgs("cg", ["--bogus"]),
    /usage: cg \[--class S\|W\|A\] \[--warmup auto\|N\] \[--json FILE\]\)/,
  );
});

const SUCCESS = " Verification    =               SUCCESSFUL";

const checks: Record<Kernel, (out: string, values: Record<string, unknown>) => void> = {
  ep(out, v) {
    const ref = EP_CLASSES.S;
    assert.ok(Math.abs(((v.sx as number) - ref.sx) / ref.sx) <= 1e-8, `sx ${v.sx}`);
    assert.ok(Math.abs(((v.sy as number) - ref.sy) / ref.sy) <= 1e-8, `sy ${v.sy}`);
    assert.equal(v.gaussian_pairs, 13176389);
    assert.deepEqual(v.q, [6140517, 5865300, 1100361, 68546, 1648, 17, 0, 0, 0, 0]);
    assert.match(out, /No\. Gaussian Pairs = +13176389\./);
    assert.match(out, /Sums = +-3\.2478346520\d+E\+03 +-6\.9584070783\d+E\+03/);
  },
  is(out, v) {
    assert.equal(v.partial_passed, 50);
    assert.equal(v.keys_out_of_sort, 0);
    assert.match(out, /Partial verification: 50 of 50/);
    assert.match(out, /Full verification: 0 keys out of sort/);
  },
  cg(out, v) {
    const zetas = v.zeta_per_iteration as number[];
    assert.equal(zetas.length, 15);
    assert.ok(Math.abs((v.zeta as number) - 8.5971775078648) / 8.5971775078648 <= 1e-10, `zeta ${v.zeta}`);
    assert.match(out, / +15 +0\.\d+E-\d\d +8\.5971775078648/);
    assert.match(out, /VERIFICATION SUCCESSFUL/);
  },
};

const runs: [Kernel, number, "native" | "bypass"][] = [];
for (const k of ["ep", "is", "cg"] as const) {
  for (const n of [1, 2, 4]) runs.push([k, n, "native"]);
  runs.push([k, 2, "bypass"]);
}

for (const [kernel, n, path] of runs) {
  test(`${kernel.toUpperCase()} class S verifies on ${n} rank${n > 1 ? "s" : ""}, ${path} path`, async () => {
    const file = join(dir, `${kernel}-${n}-${path}.json`);
    const { res, out, err } = await runKernel(kernel, n, path, ["--class", "S", "--json", file]);
    assert.equal(
      res.exitCode,
      0,
      `exit code ${res.exitCode}: ${res.failed?.error?.message ?? ""}\n${out}\n${err}`,
    );
    assert.ok(out.includes(SUCCESS), out);
    assert.match(out, /Mop\/s total +=/);
    assert.match(out, /Time in seconds =/);
    const j = JSON.parse(readFileSync(file, "utf8"));
    assert.equal(j.kernel, kernel);
    assert.equal(j.class, "S");
    assert.equal(j.ranks, n);
    assert.equal(j.path, path);
    assert.equal(j.verified, true);
    assert.ok(typeof j.time_s === "number" && j.time_s > 0);
    assert.ok(typeof j.mops === "number" && j.mops > 0);
    checks[kernel](out, j.values);
  });
}

// Warm-up iterations must leave the kernel's state as NPB's single untimed one does: IS's
// iteration i rewrites two keys that the timed loop's partial verification expects untouched.
for (const kernel of ["is", "cg"] as const) {
  test(`${kernel.toUpperCase()} warms up as asked and still verifies; the count and time are in the report`, async () => {
    for (const [warmup, expect] of [
      ["3", 3],
      ["auto", AUTO_WARMUP_PASSES * (kernel === "is" ? IS_MAX_ITERATIONS : CG_CLASSES.S.niter)],
    ] as const) {
      const file = join(dir, `${kernel}-warmup-${warmup}.json`);
      const { res, out, err } = await runKernel(kernel, 2, "bypass", [
        "--class",
        "S",
        "--warmup",
        warmup,
        "--json",
        file,
      ]);
      assert.equal(res.exitCode, 0, `${out}\n${err}`);
      const j = JSON.parse(readFileSync(file, "utf8"));
      // "auto" stops after its passes at class S (far below its time budget) unless the machine is very slow.
      if (warmup === "auto")
        assert.ok(j.values.warmup_iterations <= expect && j.values.warmup_iterations >= 1);
      else assert.equal(j.values.warmup_iterations, expect);
      assert.ok(typeof j.values.warmup_s === "number" && j.values.warmup_s > 0);
      assert.equal(j.values.warmup, warmup === "auto" ? "auto" : Number(warmup));
      assert.match(out, new RegExp(` Warm-up: ${j.values.warmup_iterations} untimed iterations? \\(`));
      checks[kernel](out, j.values);
    }
  });
}

test("an unknown class fails with a clear message and a non-zero exit code", async () => {
  const { res, err } = await runKernel("ep", 2, "native", ["--class", "Q"]);
  assert.notEqual(res.exitCode, 0);
  assert.match(err, /ep: unknown class "Q" \(expected one of S, W, A\)/);
  const bad = await runKernel("is", 1, "native", ["--size", "9"]);
  assert.notEqual(bad.res.exitCode, 0);
  assert.match(bad.err, /is: unknown argument "--size"/);
});

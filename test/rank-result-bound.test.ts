/**
 * A rank's return value travels to its launcher as JSON of at most 256 KiB. The host used to
 * JSON.stringify whatever a rank returned and only then look at the length, on the main thread
 * that serves every guest's hypercalls and XenStore: a rank returning a 4 MiB Uint8Array stalled
 * it 2.1 s (RSS +299 MiB), 16 MiB 11.9 s (+878 MiB), and an array nested 40 deep with both
 * entries one array (a small clone, 2^40 leaves as JSON) for ever. Now a bounded walk
 * (client-jobs.ts jsonLengthPast) sees that such a value is too large before any stringify, and
 * the launcher is told why it gets no result. Observed without timing: this test's process is
 * the host, and JSON.stringify is watched for a typed array over the limit or a text longer
 * than a control line.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { randomClusterKey } from "../src/cluster/auth.js";
import { Job } from "../src/cluster/job.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { MAX_LINE_BYTES } from "../src/cluster/wire.js";
import { startLocalDaemon } from "./helpers/daemon.js";

const key = randomClusterKey();
/** The longest JSON text of a result a host sends (client-jobs.ts MAX_RESULT_JSON). */
const MAX_RESULT_JSON = 256 * 1024;
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}.js`, import.meta.url));

test("a rank returning a huge value gets a clear too-large note, and the host never stringifies it; an honest result still travels", async () => {
  const d = await startLocalDaemon(key);
  const at = { host: "127.0.0.1", port: d.control.port };
  // Everything this process (the host) gives JSON.stringify.
  const stringify = JSON.stringify;
  let biggestView = 0;
  let longestText = 0;
  JSON.stringify = ((value: unknown, ...rest: unknown[]) => {
    if (ArrayBuffer.isView(value)) biggestView = Math.max(biggestView, value.byteLength);
    const s = (stringify as (...a: unknown[]) => string | undefined)(value, ...rest);
    if (typeof s === "string") longestText = Math.max(longestText, s.length);
    return s;
  }) as typeof JSON.stringify;
  const notes: string[] = [];
  // A launcher that waits however long the host's thread is stalled: what is asserted is what
  // the host stringified, not how long it took.
  const rh = await RemoteHost.connect(at, {
    key,
    deadAfterMs: 600_000,
    onLog: (_level, msg) => notes.push(msg),
  });
  try {
    const lines: string[] = [];
    const res = await new Job(rh, {
      n: 2,
      path: "bypass",
      program: fixture("rank-returns"),
      // Rank 0: 4 MiB of bytes; rank 1: 2^20 leaves as JSON from 21 arrays.
      argv: ["bytes:4", "dag:20"],
      output: (_r, _s, l) => lines.push(l),
    }).run();
    assert.equal(res.exitCode, 0, lines.join("\n"));
    assert.equal(res.ranks[0].result, undefined);
    assert.equal(res.ranks[1].result, undefined);
    assert.equal(
      biggestView,
      0,
      `the host gave JSON.stringify a typed array of ${biggestView} bytes (the limit is ${MAX_RESULT_JSON})`,
    );
    assert.ok(
      longestText <= MAX_LINE_BYTES,
      `the host made a JSON text of ${longestText} characters (a control line is at most ${MAX_LINE_BYTES})`,
    );
    for (const rank of [0, 1])
      assert.ok(
        notes.some((n) =>
          n.includes(
            `rank ${rank}: its return value is over ${MAX_RESULT_JSON} bytes as JSON, more than a host sends`,
          ),
        ),
        `no too-large note for rank ${rank}: ${JSON.stringify(notes)}`,
      );

    // An honest job on the same host and connection gets its result.
    const ok = await new Job(rh, {
      n: 1,
      path: "bypass",
      program: fixture("rank-returns"),
      argv: ["small"],
    }).run();
    assert.equal(ok.exitCode, 0);
    assert.deepEqual(ok.ranks[0].result, { rank: 0, words: "a small result" });
  } finally {
    JSON.stringify = stringify;
    rh.close();
    await d.stop();
  }
});

test("jsonLengthPast: about the JSON length (within a small factor either way); past the limit, it stops", async () => {
  const { jsonLengthPast, wireResult } = await import("../src/cluster/client-jobs.js");
  const values: unknown[] = [
    0,
    -1.5e300,
    "",
    "x".repeat(1000),
    '\u0000\n"',
    true,
    null,
    [undefined, null, 1, "a"],
    { a: 1, b: [1, 2, { c: "d" }], "": "" },
    new Uint8Array(100),
    new Float64Array([Math.PI, -1e-300]),
    new Date(0),
    new Map([[1, 2]]),
    Array.from({ length: 1000 }, (_, i) => ({ i, s: String(i) })),
  ];
  for (const v of values) {
    const real = JSON.stringify(v).length;
    const est = jsonLengthPast(v, 1 << 20);
    // At most a separator more for every value; a string escapes to at most 6 times itself.
    assert.ok(
      est <= 2 * real + 1 && real <= 6 * est,
      `${JSON.stringify(v).slice(0, 60)}: ${est} for ${real}`,
    );
  }
  // Past the limit, whatever is left: a nested array of 2^60 leaves, a cycle, a big buffer.
  let dag: unknown[] = [1];
  for (let i = 0; i < 60; i++) dag = [dag, dag];
  const cycle: unknown[] = [];
  cycle.push(cycle);
  for (const v of [dag, cycle, new Uint8Array(64 << 20), new Array(1 << 20).fill(0)])
    assert.ok(jsonLengthPast(v, MAX_RESULT_JSON) > MAX_RESULT_JSON);
  // A bare buffer is written as {}, however large: it travels.
  assert.deepEqual(wireResult({ b: new ArrayBuffer(1 << 20) }), { result: { b: {} } });
  assert.deepEqual(wireResult(dag), {
    dropped: `its return value is over ${MAX_RESULT_JSON} bytes as JSON, more than a host sends`,
  });
  assert.deepEqual(wireResult({ a: [1, "b"] }), { result: { a: [1, "b"] } });
  assert.equal(wireResult(10n).dropped?.startsWith("its return value has no JSON form"), true);
});

/**
 * How a host reads a rank's output into lines (src/cluster/ranks.ts `lines`): as readline
 * splits them — the launcher prints them byte for byte — but never holding more than a bound
 * of one line, so a rank printing a line of hundreds of megabytes cannot make its host (a
 * daemon other jobs share) hold it. Real streams, every input cut into chunks at every place.
 */
import assert from "node:assert/strict";
import { createInterface } from "node:readline";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { lines, OUTPUT_CUT_MARK } from "../src/cluster/ranks.js";

async function viaLines(chunks: string[], max?: number): Promise<string[]> {
  const s = new PassThrough();
  const got: string[] = [];
  const done = lines(s, (l) => got.push(l), max);
  for (const c of chunks) s.write(c);
  s.end();
  await done;
  return got;
}

async function viaReadline(chunks: string[]): Promise<string[]> {
  const s = new PassThrough();
  const got: string[] = [];
  const rl = createInterface({ input: s, crlfDelay: Number.POSITIVE_INFINITY });
  rl.on("line", (l) => got.push(l));
  const closed = new Promise((r) => rl.once("close", r));
  for (const c of chunks) s.write(c);
  s.end();
  await closed;
  return got;
}

test("lines are split as readline splits them (\\n, \\r\\n, a lone \\r, a \\r\\n across chunks, a last line without a break), wherever the chunks are cut", async () => {
  const inputs = [
    "a\nb\n",
    "a\r\nb\r\n\r\n",
    "progress 1\rprogress 2\rdone\n",
    "x\n\ny",
    "",
    "\n",
    "\r",
    "é😀\nz\r",
  ];
  for (const text of inputs)
    for (let cut = 0; cut <= text.length; cut++) {
      const chunks = [text.slice(0, cut), text.slice(cut)].filter((c) => c.length > 0);
      assert.deepEqual(
        await viaLines(chunks),
        await viaReadline(chunks),
        `${JSON.stringify(text)} cut at ${cut}`,
      );
    }
});

test("a line longer than the bound goes out at once, cut and marked; the rest of it is dropped, the next line is whole", async () => {
  const long = "y".repeat(100);
  // Fed in small chunks: the cut comes when the bound is reached, not at the line's end.
  const chunks = [...`${long}\nnext\n`.match(/.{1,7}/gs)!];
  assert.deepEqual(await viaLines(chunks, 32), [`${"y".repeat(32)}${OUTPUT_CUT_MARK}`, "next"]);
  // Not between the halves of a surrogate pair.
  assert.deepEqual(await viaLines([`${"y".repeat(31)}😀yy\nz`], 32), [
    `${"y".repeat(31)}${OUTPUT_CUT_MARK}`,
    "z",
  ]);
  // Exactly the bound is not cut.
  assert.deepEqual(await viaLines([`${"y".repeat(32)}\n`], 32), ["y".repeat(32)]);
});

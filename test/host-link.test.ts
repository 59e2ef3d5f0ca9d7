/**
 * The way from a guest to its host is bounded (xen/host-link.ts): a guest that sends or prints
 * in a loop, faster than the host takes it in or with nobody reading, holds its flood in its
 * own memory; the host holds at most the window. Before, Node queued it all in the host: a
 * guest sending 64 KiB messages in a loop took the whole host down (out of memory) in 4 s.
 * Nothing is lost: once the host reads, every message and line arrives, in order.
 */
import assert from "node:assert/strict";
import { createInterface } from "node:readline";
import { after, test } from "node:test";
import {
  cloneBytes,
  MESSAGE_BASE_UNITS,
  MESSAGE_VALUES_MAX,
  OUTPUT_HELD_MAX,
  WINDOW_UNITS,
} from "../src/xen/host-link.js";
import { Hypervisor } from "../src/xen/hypervisor.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

const fixture = (name: string) => new URL(`./fixtures/guests/${name}.js`, import.meta.url);
const COUNT = 20_000;
const BLOCK = 4096;

async function flooded(domid: number): Promise<void> {
  for (let i = 0; i < 3000; i++) {
    if ((await hv.toolstack.read(`/local/domain/${domid}/data/flooder`).catch(() => "")) === "done") return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail("the flooder never finished its loop");
}

for (const mode of ["send", "send-beside-shared", "send-getter"] as const)
  test(`a guest sending in a loop with nobody listening (${mode}): the host holds at most the window; every message arrives once read`, async () => {
    const dom = await hv.createDomain({
      module: fixture("flooder"),
      args: { mode, count: COUNT },
      pages: 16,
    });
    await flooded(dom.domid);
    await new Promise((r) => setTimeout(r, 100));
    const got: number[] = [];
    let bytes = 0;
    let big = 0;
    dom.on("message", (m: { i?: number; block?: string; big?: string }) => {
      if (typeof m.i === "number") {
        got.push(m.i);
        bytes += 2 * (m.block?.length ?? 0);
      } else big = m.big?.length ?? -1;
    });
    // What the host held for a listener comes out at once (microtasks); the rest is still the guest's.
    for (let k = 0; k < 20; k++) await Promise.resolve();
    const held = got.length;
    assert.ok(
      held > 0 && held <= WINDOW_UNITS / MESSAGE_BASE_UNITS && bytes <= WINDOW_UNITS,
      `the host held ${held} messages (${bytes} bytes of blocks) for a listener; the window is ${WINDOW_UNITS} units, ${MESSAGE_BASE_UNITS} a message`,
    );
    const exit = await dom.exited;
    assert.equal(exit.state, "shutdown", exit.error?.message);
    assert.equal(exit.result, COUNT);
    assert.equal(got.length, COUNT);
    assert.ok(
      got.every((v, i) => v === i),
      "in order",
    );
    assert.equal(big, 5 << 20, "a message larger than the window goes alone");
  });

/** A flooder printing into a stream nobody reads, once its loop is done: the host holds at most the bound. */
async function printedUnread(mode: "print" | "print-long", count: number) {
  const dom = await hv.createDomain({
    module: fixture("flooder"),
    args: { mode, count },
    pages: 16,
    output: "pipe",
  });
  await flooded(dom.domid);
  await new Promise((r) => setTimeout(r, 100));
  const unread = dom.worker.stdout.readableLength;
  const most = OUTPUT_HELD_MAX + WINDOW_UNITS;
  assert.ok(unread <= most, `the host holds ${unread} bytes of unread output; the bound is ${most}`);
  assert.ok(unread > 0);
  return dom;
}

test("a guest printing in a loop into a stream nobody reads: the stream holds about a megabyte, not the flood; every line arrives once read", async () => {
  const dom = await printedUnread("print", COUNT);
  const lines: string[] = [];
  const rl = createInterface({ input: dom.worker.stdout });
  rl.on("line", (l) => lines.push(l));
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  await new Promise<void>((r) => rl.once("close", () => r()));
  assert.equal(lines.length, COUNT);
  assert.ok(
    lines.every((l, i) => l.startsWith(`${i} z`) && l.length === `${i} `.length + BLOCK),
    "every line, in order",
  );
});

test("a guest printing one huge line: it reaches the host in pieces within the window, not at once; the line arrives whole and intact", async () => {
  const LONG = 32 << 20;
  const dom = await printedUnread("print-long", LONG);
  const chunks: Buffer[] = [];
  dom.worker.stdout.on("data", (c: Buffer) => chunks.push(c));
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  if (!dom.worker.stdout.readableEnded) await new Promise((r) => dom.worker.stdout.once("end", r));
  const text = Buffer.concat(chunks).toString("utf8");
  assert.equal(text.length, LONG + 1, "every character and the newline");
  assert.equal(text.slice(65534, 65538), "y\u{1F600}y", "the surrogate pair at a piece's end survived");
  assert.ok(!text.includes("\uFFFD"), "no piece split a surrogate pair");
});

test("a message's cost counts what its clone carries: an Error's message and stack, a RegExp's source, a view's whole buffer (once), boxed strings, bigints", () => {
  const MIB = 1 << 20;
  const text = "q".repeat(MIB / 2); // 1 MiB of UTF-16
  const big = new Uint8Array(MIB);
  const cost = (v: unknown) => cloneBytes(structuredClone(v));
  for (const [what, v] of [
    ["an Error", { e: new Error(text) }],
    ["a RegExp", { re: new RegExp(text) }],
    ["a 1-byte view of 1 MiB", { view: big.subarray(0, 1) }],
    ["a DataView", new DataView(big.buffer, 5, 1)],
    ["a boxed string", new String(text)],
    ["a bigint of 1 MiB", BigInt(`0x${"f".repeat(2 * MIB)}`)],
  ] as const)
    assert.ok(cost(v) >= MIB, `${what}: ${cost(v)} bytes counted`);
  // Two views of one buffer carry it once.
  const twice = cost({ a: big.subarray(0, 1), b: big.subarray(1, 2) });
  assert.ok(twice >= MIB && twice < 1.5 * MIB, `two views of one buffer: ${twice}`);
  // Shared memory is shared, not copied.
  assert.ok(cost({ s: new Uint8Array(new SharedArrayBuffer(MIB)) }) < 1024);
});

const COUNT_UNPRICED = 64;
const SIZE_UNPRICED = 1 << 20;

for (const mode of ["string", "error", "regexp", "view"] as const)
  test(`a guest sending payload a shallow count would miss (${mode}), 64 × 1 MiB with nobody listening: the host holds at most the window`, async () => {
    const dom = await hv.createDomain({
      module: fixture("unpriced-send"),
      args: { mode, count: COUNT_UNPRICED, size: SIZE_UNPRICED },
      pages: 16,
    });
    await flooded(dom.domid);
    await new Promise((r) => setTimeout(r, 100));
    let held = 0;
    let bytes = 0;
    dom.on("message", (m: { text?: string; error?: Error; re?: RegExp; view?: Uint8Array }) => {
      held++;
      bytes +=
        2 * (m.text?.length ?? 0) +
        2 * (m.error?.message.length ?? 0) +
        2 * (m.re?.source.length ?? 0) +
        (m.view?.buffer.byteLength ?? 0);
    });
    // What the host already held comes out at once (microtasks); the rest would still be the guest's.
    for (let k = 0; k < 20; k++) await Promise.resolve();
    const [heldThen, bytesThen] = [held, bytes];
    dom.send("bye");
    const exit = await dom.exited;
    assert.equal(exit.state, "shutdown", exit.error?.message);
    assert.equal(held, COUNT_UNPRICED, "every message arrives once read");
    assert.ok(
      bytesThen <= WINDOW_UNITS,
      `the host held ${heldThen} messages carrying ${(bytesThen / 2 ** 20).toFixed(0)} MiB for nobody; the window is ${WINDOW_UNITS / 2 ** 20} MiB`,
    );
  });

test("a message or a result of too many values is refused in the guest; bulk bytes and small messages go; a crash's text is cut", async () => {
  // The host's thread decodes a message whole, about a quarter of a µs a value, while every
  // domain's hypercalls wait: one array of a million small objects held it a second a send;
  // and a crash's 400 Mi-character stack landed in its heap whole.
  const dom = await hv.createDomain({ module: fixture("dense-sends"), args: { mode: "send" }, pages: 16 });
  const got: unknown[] = [];
  dom.on("message", (m: unknown) => got.push(m));
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  assert.match(
    String(exit.result),
    new RegExp(
      `^RangeError: guest\\.send: this message holds \\d+ values; at most ${MESSAGE_VALUES_MAX} go in one`,
    ),
  );
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(got.length, 2, "only the honest messages came");
  assert.deepEqual(got[0], { honest: 1 });
  assert.equal((got[1] as Float64Array).length, 1 << 20);

  // The same value returned from main: the domain crashes, in its own thread, saying why.
  const result = await hv.createDomain({
    module: fixture("dense-sends"),
    args: { mode: "result" },
    pages: 16,
  });
  const ended = await result.exited;
  assert.equal(ended.state, "crashed", "a result of 200,001 values reached the host");
  assert.equal(ended.error?.name, "RangeError");
  assert.match(
    ended.error?.message ?? "",
    /^main\(\) returned a value of \d+ values; at most 65536 go to the host/,
  );

  const crash = await hv.createDomain({ module: fixture("dense-sends"), args: { mode: "crash" }, pages: 16 });
  const end = await crash.exited;
  assert.equal(end.state, "crashed");
  assert.ok(
    (end.error?.message.length ?? 0) <= 64 * 1024 + 2 && (end.error?.stack?.length ?? 0) <= 64 * 1024 + 2,
    `the host got a crash of ${end.error?.message.length} + ${end.error?.stack?.length} characters`,
  );
});

/** Domains: boot, guest programs in TS and JS, memory, states on every way a guest can end, destruction. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { compileCacheStats } from "../src/xen/guest/loader.js";
import { Hypervisor } from "../src/xen/hypervisor.js";
import { startAgent } from "./helpers/agent.js";
import { nextMessage } from "./helpers/messages.js";

const hv = new Hypervisor();
after(() => hv.shutdown());

const fixture = (name: string) => new URL(`./fixtures/guests/${name}.js`, import.meta.url);
// The TypeScript source itself, not its compiled output: guests may be written in TypeScript.
const tsSource = fileURLToPath(new URL("../../test/fixtures/guests/hello.ts", import.meta.url));

test("a guest boots as a worker with its domid, memory and args, and its result comes back", async () => {
  const a = await startAgent(hv, { pages: 32, args: { rank: 3 }, name: "agent-a" });
  assert.equal(a.dom.state, "running");
  const info = await a.rpc<{
    domid: number;
    name: string;
    pages: number;
    args: unknown;
    privileged: boolean;
  }>({
    op: "info",
  });
  assert.equal(info.domid, a.dom.domid);
  assert.ok(info.domid >= 1);
  assert.equal(info.name, "agent-a");
  assert.equal(info.pages, 32);
  assert.equal(info.privileged, false);
  assert.deepEqual(info.args, { rank: 3 });
  assert.equal(await hv.toolstack.read(`/local/domain/${info.domid}/name`), "agent-a");
  a.dom.send({ op: "exit" });
  const exit = await a.dom.exited;
  assert.equal(exit.state, "shutdown");
  assert.equal(exit.result, "bye");
});

test("a guest program written in TypeScript runs from its source file", async () => {
  const dom = await hv.createDomain({ module: tsSource, pages: 8 });
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  assert.deepEqual(exit.result, { from: dom.domid, pages: 8 });
});

test("the page allocator hands out contiguous runs and says clearly when memory runs out", async () => {
  const a = await startAgent(hv, { pages: 16 });
  const first = await a.rpc<{ pfn: number; free: number }>({ op: "alloc", pages: 10 });
  assert.equal(first.free, 6);
  const second = await a.rpc<{ pfn: number }>({ op: "alloc", pages: 6 });
  assert.equal(second.pfn, first.pfn + 10);
  const oom = await a.rpc<{ thrown: string; message: string }>({ op: "alloc", pages: 1 });
  assert.equal(oom.thrown, "OutOfMemoryError");
  assert.match(oom.message, /out of guest memory.*give the domain more pages/);
  await a.dom.destroy();
});

for (const how of ["throw", "reject", "uncaught", "exit", "unsendable"]) {
  test(`a guest that ends by "${how}" is reported as crashed with its error, and others keep running`, async () => {
    const bystander = await startAgent(hv);
    const dom = await hv.createDomain({ module: fixture("misbehave"), args: { how } });
    const exit = await dom.exited;
    assert.equal(exit.state, "crashed");
    assert.equal(dom.state, "crashed");
    assert.ok(exit.error instanceof Error);
    const expected = {
      throw: /deliberate throw/,
      reject: /rejected after a tick/,
      uncaught: /uncaught in a timer/,
      exit: /exited with code 3/,
      unsendable: /cannot receive/,
    }[how]!;
    assert.match(exit.error.message, expected);
    const info = await bystander.rpc<{ domid: number }>({ op: "info" });
    assert.equal(info.domid, bystander.dom.domid);
    await bystander.dom.destroy();
  });
}

test("a guest over its heap limit is stopped as crashed; the host survives", async () => {
  const dom = await hv.createDomain({ module: fixture("misbehave"), args: { how: "hog" }, maxHeapMb: 32 });
  const exit = await dom.exited;
  assert.equal(exit.state, "crashed");
  assert.match(exit.error!.message, /memory|heap/i);
});

test("a program without main fails to boot with a clear message", async () => {
  const dom = await hv.createDomain({ module: fixture("nomain") });
  const exit = await dom.exited;
  assert.equal(exit.state, "crashed");
  assert.match(exit.error!.message, /must export a function `main\(guest\)`/);
});

test("createDomain rejects bad configuration with the field's name", async () => {
  await assert.rejects(hv.createDomain({ module: fixture("hello"), pages: 0 }), /`pages` must be an integer/);
  await assert.rejects(hv.createDomain({ module: fixture("hello"), maxHeapMb: 1.5 }), /`maxHeapMb`/);
  await assert.rejects(hv.createDomain({ module: "" }), /`module` must be a path/);
  await assert.rejects(hv.createDomain({ module: fixture("hello"), name: "a b" }), /`name`/);
});

test("destroying a domain releases its channels, grants and XenStore subtree", async () => {
  const a = await startAgent(hv);
  const b = await startAgent(hv);
  const pa = await a.rpc<number>({ op: "allocUnbound", remote: b.dom.domid });
  const pb = await b.rpc<number>({ op: "bind", remote: a.dom.domid, port: pa });
  const shared = await a.rpc<{ pfn: number }>({ op: "allocShared", pages: 1 });
  const ref = await a.rpc<number>({ op: "grant", peer: b.dom.domid, pfn: shared.pfn });
  await a.dom.destroy();
  assert.equal(a.dom.state, "destroyed");
  assert.equal(await hv.toolstack.tryRead(`/local/domain/${a.dom.domid}`), undefined);
  // The peer's port is back to unbound, and waiting on it returns at once instead of hanging.
  assert.equal((await b.rpc<{ status: number }>({ op: "status", port: pb })).status, 1);
  assert.equal(await b.rpc({ op: "wait", port: pb, timeoutMs: 5000 }), "unbound");
  const map = await b.rpc<{ status: number; error: string }>({ op: "map", domid: a.dom.domid, ref });
  assert.equal(map.status, -2);
  assert.match(map.error, /GNTST_bad_domain/);
  await b.dom.destroy();
});

test("malformed hypercalls and XenStore requests get errors; the hypervisor keeps serving", async () => {
  const dom = await hv.createDomain({ module: fixture("garbage-hypercalls") });
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  const answers = exit.result as string[];
  assert.equal(answers.length, 15);
  for (const a of answers) assert.match(a, /^(E[A-Z]+:|statuses -|status -)/, a);
  assert.match(answers[3], /ENOSYS: unknown hypercall "no_such_op"/);
  assert.match(answers[11], /EPERM: domain \d+ is not privileged/);
  const bystander = await startAgent(hv);
  assert.equal((await bystander.rpc<{ domid: number }>({ op: "info" })).domid, bystander.dom.domid);
  await bystander.dom.destroy();
});

test("requests of any size are refused in the guest's own thread: the hypervisor serves none of them, then the largest honest ones", async () => {
  // Before, each was posted as built: the hypervisor's thread decoded it whole (seconds for a
  // 100 MiB value or a million perms, 32 in flight) while every domain's requests waited.
  const dom = await hv.createDomain({ module: fixture("oversized-requests"), pages: 16, maxHeapMb: 256 });
  const SERVED = ["hypercalls", "xenstore_ops", "xenstore_errors", "grant_map", "grant_errors"] as const;
  const served = () => {
    const c = hv.counters(dom.domid);
    return SERVED.map((k) => c[k]);
  };
  assert.deepEqual(await nextMessage(dom), ["ready"]);
  const before = served();
  dom.send("go");
  const [refused] = (await nextMessage(dom)) as [string[]];
  assert.deepEqual(served(), before, "the hypervisor served none of the oversized requests");
  const want: [string, RegExp][] = [
    [
      "hypercall port",
      /^hypercall port: EINVAL: evtchn_status\.port must be a number, a boolean or a short string, not a typed array/,
    ],
    [
      "hypercall refs",
      /^hypercall refs: EINVAL: grant_map: refs has 1000000 entries; a request carries at most 4096/,
    ],
    [
      "hypercall copy",
      /^hypercall copy: EINVAL: grant_copy: ops\[0\]\.source must be an object of fields, not a typed array/,
    ],
    ["hypercall op", /^hypercall op: EINVAL: hypercall op is a string of 1048576 characters/],
    [
      "xenstore value",
      /^xenstore value: EINVAL: value for data\/v is at least 8388608 bytes; the limit is 4096/,
    ],
    [
      "xenstore typed value",
      /^xenstore typed value: EINVAL: value for data\/v must be a string, got a typed array/,
    ],
    ["xenstore path", /^xenstore path: EINVAL: path is 1048581 characters long; the limit is 3072/],
    [
      "xenstore perms",
      /^xenstore perms: ENOSPC: perms for data has 1000000 entries; a request carries at most 512/,
    ],
    ["xenstore token", /^xenstore token: EINVAL: watch token is 1048576 characters long/],
    ["xenstore tx", /^xenstore tx: EINVAL: tx must be a number, a boolean or a short string, not an array/],
    ["xenstore sync", /^xenstore sync: EINVAL: value for data\/v is at least 8388608 bytes/],
    // The library's client patched to post its own request after the wrappers' checks.
    [
      "patched client",
      /^patched client: EINVAL: evtchn_status\.port must be a number, a boolean or a short string, not a typed array/,
    ],
  ];
  assert.equal(refused.length, want.length, refused.join("\n"));
  for (const [i, [, re]] of want.entries()) assert.match(refused[i], re);
  dom.send("go");
  const exit = await dom.exited;
  assert.equal(exit.state, "shutdown", exit.error?.message);
  assert.deepEqual(exit.result, { sameValue: true, status: "object" });
  const after = served();
  assert.ok(after[1] - before[1] >= 3, "the honest XenStore requests were served");
  assert.equal(after[0] - before[0], 1, "the honest hypercall was served");
});

test("a test waiting for a guest's next message fails at once, with the guest's error, when the guest throws instead", async () => {
  const d = await hv.createDomain({
    module: fixture("throws"),
    pages: 16,
    name: "thrower",
    args: { depth: 2 },
  });
  const started = performance.now();
  await assert.rejects(
    nextMessage(d),
    /domain thrower stopped \(crashed\) before its next message: RangeError: deliberate failure at depth 2/,
  );
  assert.ok(performance.now() - started < 30_000);
});

test("a message the guest sent just before it stopped is still its next message", async () => {
  const d = await hv.createDomain({ module: fixture("says-bye"), pages: 16, name: "leaver" });
  const exit = await d.exited;
  assert.equal(exit.state, "shutdown");
  assert.deepEqual(await nextMessage(d), ["bye"]);
  await assert.rejects(nextMessage(d), /domain leaver stopped \(shutdown\) before its next message/);
});

test("a stopped domain, kept for lookups, lets go of its listeners once its thread is gone", async () => {
  // A host keeps its last stopped domains (KEEP_STOPPED_DOMAINS); a listener holds whatever its
  // caller closed over (a launcher session: its job and rows), so it must not stay with them.
  const d = await hv.createDomain({ module: fixture("says-bye"), pages: 16, name: "listened" });
  const held = new Uint8Array(1024);
  d.on("message", () => held.fill(1));
  d.on("exit", () => held.fill(2));
  await d.exited;
  // The thread ends a moment after the guest returned (the grace for its last output).
  while (d.worker.threadId !== -1) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setImmediate(r));
  assert.equal(hv.domain(d.domid), d, "still there to be looked up");
  assert.equal(d.listenerCount("message"), 0);
  assert.equal(d.listenerCount("exit"), 0);
});

test("a destroyed domain is not kept, nor what it returned: 6 domains returning 32 MiB each hold nothing once destroyed", async () => {
  // The collector, as reclaim.ts fetches one (the test asks for collections itself).
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  setFlagsFromString("--no-expose-gc");
  const held = () => {
    gc();
    return process.memoryUsage().arrayBuffers;
  };
  const before = held();
  for (let i = 0; i < 6; i++) {
    const dom = await hv.createDomain({ module: fixture("big-result"), args: { mib: 32 }, name: `big-${i}` });
    const e = await dom.exited;
    assert.equal(e.state, "shutdown", e.error?.stack);
    assert.equal((e.result as Uint8Array).length, 32 * 2 ** 20);
    await dom.destroy();
    assert.equal(hv.domain(dom.domid), undefined, "a destroyed domain is no longer looked up");
  }
  // The last domain's own timers (its output grace) may still run on a loaded machine: the
  // host must let go of them all eventually, however the threads were scheduled.
  let grown = 0;
  for (let tries = 0; tries < 100; tries++) {
    grown = Math.round((held() - before) / 2 ** 20);
    if (grown < 64) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(grown < 64, `the host still holds ${grown} MiB of what 6 destroyed domains returned`);
});

test("domains created at once get their ids in the order they were asked for, whichever program compiled first", async () => {
  // A job starts its ranks at once (cluster/ranks.ts): rank order must stay domain-id order
  // although the first program here takes esbuild far longer to compile than the second.
  const dir = mkdtempSync(join(tmpdir(), "myrixen-id-order-"));
  try {
    const big = join(dir, "big.js");
    const small = join(dir, "small.js");
    const body = Array.from(
      { length: 40_000 },
      (_, i) => `function f${i}(x) { return x * ${i} + ${i % 7}; }`,
    );
    writeFileSync(big, `${body.join("\n")}\nexport default function main() { return f1(2); }\n`);
    writeFileSync(small, "export default function main() { return 1; }\n");
    const doms = await Promise.all(
      [big, small, small].map((module) => hv.createDomain({ module, pages: 8 })),
    );
    const ids = doms.map((d) => d.domid);
    for (const d of doms) await d.exited;
    assert.deepEqual(
      [...ids].sort((a, b) => a - b),
      ids,
      `ids ${ids.join(", ")} for the domains asked for first, second and third`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a program started in several domains at once is compiled once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "myrixen-one-compile-"));
  try {
    const program = join(dir, "rank.js");
    writeFileSync(program, "export default function main() { return 7; }\n");
    const before = compileCacheStats().compiles;
    const doms = await Promise.all([1, 2, 3, 4].map(() => hv.createDomain({ module: program, pages: 8 })));
    for (const d of doms) assert.equal((await d.exited).result, 7);
    assert.equal(
      compileCacheStats().compiles - before,
      1,
      "esbuild transforms for four domains of one program",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

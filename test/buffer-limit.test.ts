/**
 * A guest's ArrayBuffers and typed arrays live outside its JavaScript heap limit: the
 * hypervisor meters them (buffer-watch.ts) and stops a guest that holds more than its
 * maxBufferMb, even one that never yields, before it takes the host's memory; a guest within
 * its limit, beside it, runs on. Buffers that grow, which V8 allocates where that meter does
 * not see, a guest cannot make or grow (guest/fixed-length-buffers.ts).
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { WATCH_INTERVAL_MS } from "../src/xen/hypervisor/buffer-watch.js";
import { BUFFER_LIMIT_ERROR } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

const HOG = new URL("./fixtures/guests/buffer-hog.js", import.meta.url);
const GROWING = new URL("./fixtures/guests/growing-buffers.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

test("a guest that fills typed arrays past its maxBufferMb is stopped, naming the limit; its neighbour within limits runs on", async () => {
  const bystander = await host.startGuest({
    module: HOG,
    name: "bystander",
    args: { role: "bystander", holdMb: 48 },
    maxBufferMb: 128,
  });
  const [said] = (await nextMessage(bystander)) as [{ holding: number }];
  assert.equal(said.holding, 48);
  // The hypervisor's meter sees what the bystander holds (its next look, WATCH_INTERVAL_MS away).
  const deadline = Date.now() + 100 * WATCH_INTERVAL_MS;
  while (host.hypervisor.guestMemory(bystander.domid).buffers < 48 << 20 && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, WATCH_INTERVAL_MS));
  assert.ok(
    host.hypervisor.guestMemory(bystander.domid).buffers >= 48 << 20,
    "the meter reads the guest's own isolate",
  );
  // Its heap is read with them (myrixen list shows it; V8 keeps that limit, not the meter).
  assert.ok(host.hypervisor.guestMemory(bystander.domid).heap > 0);

  // Without the meter the hog would keep all 4 GiB (Node bounds only the heap) and return.
  const hog = await host.startGuest({
    module: HOG,
    name: "hog",
    args: { role: "hog", upToMb: 4096 },
    maxBufferMb: 64,
  });
  const exit = await hog.exited;
  assert.equal(exit.state, "crashed", `the hog was not stopped: ${String(exit.result)}`);
  assert.equal(exit.error?.name, BUFFER_LIMIT_ERROR);
  assert.match(
    exit.error?.message ?? "",
    /^domain \d+ \(hog\) held \d+ MiB of ArrayBuffers and typed arrays, over its limit of 64 MiB \(maxBufferMb\)$/,
  );

  // The bystander, within its limit all along, finishes normally.
  assert.equal(bystander.state, "running");
  bystander.send("done");
  const b = await bystander.exited;
  assert.equal(b.state, "shutdown", b.error?.stack);
  assert.equal(b.result, 3);
});

test("maxBufferMb out of range is refused when the domain is created", async () => {
  await assert.rejects(
    host.startGuest({ module: HOG, args: { role: "bystander" }, maxBufferMb: 8 }),
    /`maxBufferMb` must be an integer in 16\.\.1048576, got 8/,
  );
});

/** Twice the limit each attacker sets out to hold, and how long it then holds it (the meter's looks). */
const GROW_MB = 128;
const HOLD_MS = 5 * WATCH_INTERVAL_MS;

test("a guest cannot make a resizable ArrayBuffer or growable SharedArrayBuffer to grow past its maxBufferMb unseen, by any way to their constructors", async () => {
  for (const kind of ["ab", "sab"])
    for (const route of ["global", "buffer", "subclass", "reflect"]) {
      const d = await host.startGuest({
        module: GROWING,
        name: `grow-${kind}-${route}`,
        args: { kind, route, mb: GROW_MB, waitMs: HOLD_MS },
        maxBufferMb: 64,
      });
      const exit = await d.exited;
      const what = `${kind} by ${route}`;
      // Before the fix: "shutdown", "kept 128 MiB" (Node's count of the guest's buffers never moved).
      assert.equal(exit.state, "crashed", `${what}: not stopped: ${String(exit.result)}`);
      assert.equal(exit.error?.name, "TypeError", `${what}: ${exit.error?.stack}`);
      const ctor = kind === "ab" ? "ArrayBuffer" : "SharedArrayBuffer";
      assert.match(
        exit.error?.message ?? "",
        new RegExp(
          `^new ${ctor}\\(length, \\{ maxByteLength \\}\\): buffers that can grow are not available to a guest: .*\\(maxBufferMb\\)`,
        ),
        what,
      );
    }
});

test("a buffer that grows, handed to a guest by its host, cannot be grown there", async () => {
  for (const kind of ["ab", "sab"]) {
    const d = await host.startGuest({
      module: GROWING,
      name: `grow-${kind}-from-host`,
      args: { kind, route: "from-host", mb: GROW_MB, waitMs: HOLD_MS },
      maxBufferMb: 64,
    });
    const Ctor = (kind === "ab" ? ArrayBuffer : SharedArrayBuffer) as unknown as new (
      n: number,
      o: { maxByteLength: number },
    ) => ArrayBufferLike;
    d.send(new Ctor(16 << 20, { maxByteLength: GROW_MB << 20 }));
    const exit = await d.exited;
    assert.equal(exit.state, "crashed", `${kind}: not stopped: ${String(exit.result)}`);
    assert.equal(exit.error?.name, "TypeError", exit.error?.stack);
    const method = kind === "ab" ? "ArrayBuffer.prototype.resize" : "SharedArrayBuffer.prototype.grow";
    assert.ok(
      exit.error?.message.startsWith(`${method}: buffers that can grow are not available to a guest`),
      exit.error?.message,
    );
  }
});

test("a guest's fixed-length buffers work as programs use them", async () => {
  const d = await host.startGuest({ module: GROWING, args: { role: "plain" }, maxBufferMb: 64 });
  const exit = await d.exited;
  assert.equal(exit.state, "shutdown", exit.error?.stack);
  assert.deepEqual(exit.result, [true, 16, 16, true, true, 12, true, false, true]);
});

/**
 * The buffer meter (hypervisor/buffer-watch.ts) asks each guest's isolate through the
 * inspector, one question id per guest per look. V8's inspector takes int32 ids; the ids never
 * wrapped, and past 2^31 - 1 every question was refused with an error naming no id: the guest
 * asked stayed "being asked" for good, so no guest was metered again, and one over its
 * maxBufferMb kept all it held. Now ids wrap below 2^31 (skipping ones still waiting), an error
 * answer is an answer, and an unanswered question is asked again after a deadline. (Its own
 * file: a second hypervisor in a process where a meter already stopped a guest reads nothing,
 * old code and new alike.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_QUESTION_ID, WATCH_INTERVAL_MS } from "../src/xen/hypervisor/buffer-watch.js";
import { BUFFER_LIMIT_ERROR, Hypervisor } from "../src/xen/hypervisor.js";
import { nextMessage } from "./helpers/messages.js";

const RAMP = new URL("./fixtures/guests/meter-ramp.js", import.meta.url);

test("the meter's question ids wrap below 2^31: a guest over its maxBufferMb is still stopped after weeks of questions", async () => {
  // Started 3 questions short of the wrap, as weeks of looks would leave it.
  const hv = new Hypervisor({ meterFirstId: MAX_QUESTION_ID - 2 });
  try {
    const d = await hv.createDomain({
      module: RAMP,
      name: "ramp",
      args: { startMb: 16, growToMb: 256, holdMs: 50 * WATCH_INTERVAL_MS },
      pages: 256,
      maxBufferMb: 64,
    });
    await nextMessage(d);
    // Its first answers came (ids below the wrap) ...
    const deadline = Date.now() + 100 * WATCH_INTERVAL_MS;
    while (hv.guestMemory(d.domid).buffers < 16 << 20 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, WATCH_INTERVAL_MS));
    assert.ok(hv.guestMemory(d.domid).buffers >= 16 << 20, "the meter reads the guest");
    // ... and 10 more looks take the ids past 2^31 - 1 while it holds 16 MiB, within its limit.
    await new Promise((r) => setTimeout(r, 10 * WATCH_INTERVAL_MS));
    d.send("grow");
    const exit = await d.exited;
    // Before the fix: "shutdown", "kept 256 MiB".
    assert.equal(exit.state, "crashed", `not stopped: ${String(exit.result)}`);
    assert.equal(exit.error?.name, BUFFER_LIMIT_ERROR, exit.error?.stack);
  } finally {
    await hv.shutdown();
  }
});

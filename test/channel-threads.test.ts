/**
 * The co-resident channel's lane across two real threads: the reader polls each record's Size
 * (the writer stores it last), the writer zeroes the slot after each record and publishes a
 * wrapped record before its PAD, the reader shows its space in steps and when asked. Whatever
 * the two threads' timing, every record arrives once, in order, with its bytes.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { LaneReader } from "../src/mx/channel.js";
import { CHANNEL_BYTES, LANE_BYTES, RECORD_HEADER_BYTES } from "../src/myrixen/channel-abi.js";
import { byteOf, sizeOf } from "./fixtures/lane-writer.js";
import { channelEnd } from "./helpers/mx-parts.js";

const RECORDS = 200_000;

test("200,000 records of mixed sizes cross two threads through one lane: each once, in order, whole", async () => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const wake = new SharedArrayBuffer(4);
  const wakeWord = new Int32Array(wake);
  const worker = new Worker(new URL("./fixtures/lane-writer.js", import.meta.url), {
    workerData: { laneWriter: true, channel, wake, records: RECORDS },
  });
  const done = new Promise<{ fulls: number }>((resolve, reject) => {
    worker.once("message", resolve);
    worker.once("error", reject);
  });
  const r = new LaneReader(channel, 0, 3);
  let seq = 0;
  let polls = 0;
  let bad = "";
  // The reader runs in slices, yielding to the event loop so the worker's message can come.
  while (seq < RECORDS && bad === "") {
    const until = performance.now() + 20;
    while (seq < RECORDS && performance.now() < until) {
      const sweep = (++polls & 31) === 0;
      if (!r.next()) {
        if (r.broken) {
          bad = `lane broken: ${r.broken}`;
          break;
        }
        if (r.takeSpaceWanted(sweep)) {
          Atomics.add(wakeWord, 0, 1);
          Atomics.notify(wakeWord, 0);
        }
        continue;
      }
      const n = sizeOf(seq);
      if (r.matchHi !== seq || r.length !== n) {
        bad = `record ${seq}: got seq ${r.matchHi}, length ${r.length} (want ${n})`;
        break;
      }
      for (let k = 0; k < n; k += 997)
        if (r.bytes[r.payload + k] !== byteOf(seq, k)) bad = `record ${seq}: byte ${k} wrong`;
      if (n > 0 && r.bytes[r.payload + n - 1] !== byteOf(seq, n - 1)) bad = `record ${seq}: last byte wrong`;
      r.release();
      if (r.takeSpaceWanted(sweep)) {
        Atomics.add(wakeWord, 0, 1);
        Atomics.notify(wakeWord, 0);
      }
      seq++;
    }
    await new Promise((res) => setImmediate(res));
  }
  if (bad !== "") {
    // The writer may be waiting for space the reader will never give: stop it, then fail.
    await worker.terminate();
    assert.fail(bad);
  }
  const { fulls } = await done;
  await worker.terminate();
  assert.equal(seq, RECORDS);
  assert.equal(r.next(), false, "nothing more than was written");
  assert.ok(fulls > 0, "the writer found the lane full at times (the space protocol was used)");
});

test("a writer that refills its lane behind the reader gets a lane's worth read per call: one receive(), and the drain of a lane it closed", async () => {
  // A reviewer's PoC (lanes of a MiB): the drain of a closed lane read until 131,072 records
  // (a lane's bytes / 8), six times what the lane holds, while the writer refilled it behind
  // the reader: 262 s of a 500-messages-a-second cap taken at once.
  const most = Math.ceil(LANE_BYTES / RECORD_HEADER_BYTES);
  for (const close of [false, true]) {
    const channel = new SharedArrayBuffer(CHANNEL_BYTES);
    const flags = new Int32Array(new SharedArrayBuffer(16));
    const b = channelEnd(channel, 1);
    const worker = new Worker(new URL("./fixtures/lane-refiller.js", import.meta.url), {
      workerData: { laneRefiller: true, channel, flags: flags.buffer, closeWhenFull: close },
    });
    let failed: Error | undefined;
    worker.once("error", (e) => {
      failed = e;
    });
    await new Promise((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    while (Atomics.load(flags, 2) === 0 && failed === undefined)
      await new Promise((resolve) => setTimeout(resolve, 1));
    assert.equal(failed, undefined);
    if (close) b.path.checkClosed();
    else b.path.receive();
    Atomics.store(flags, 0, 1);
    await worker.terminate();
    // Each FRAG of no transfer is counted and dropped.
    const read = b.p.ctx.counters.channelErrors;
    assert.ok(
      read >= LANE_BYTES / (RECORD_HEADER_BYTES * 2),
      `${close ? "drain" : "receive"}: read ${read} records`,
    );
    assert.ok(read <= most, `${close ? "drain" : "receive"}: read ${read} records, a lane holds ${most}`);
  }
});

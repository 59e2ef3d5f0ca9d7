/**
 * An endpoint's interrupt page is granted to every co-resident peer of it (to wake it), so a
 * hostile peer writes it. The page held the owner's "I sleep, kick me" flag (I_SLEEPING), and
 * every waker — each honest peer, and the NIC for the peers behind it — kicked only while the
 * flag was up: a hostile peer that kept taking it down made all of them believe the owner
 * awake, and the owner slept out its whole slice (100 ms) before each message (round trips
 * 0.6 ms → 90 ms). Now the owner says it sleeps to each waker in memory only the two of them
 * reach: the lane that peer writes to it (channel-abi.ts ReaderSleeping), its NIC window
 * (window.ts W_OWNER_SLEEPING). A hostile peer can silence its own kicks, no one else's.
 *
 * Real endpoints in their own threads (test/fixtures/wake-peer.ts): the victim V, its honest
 * peer B, and H, which holds V's interrupt page and keeps setting every word of it but the
 * futex word back to 0. No timing is asserted: each of B's messages comes after a pause in
 * which V went to sleep, and the counters say whether V was kicked for it or slept its slice
 * out (MxEndpoint counters.sleepTimeouts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { type MessagePort, Worker } from "node:worker_threads";
import { CHANNEL_BYTES } from "../src/myrixen/channel-abi.js";
import { NicDevice } from "../src/nic/device.js";
import { INTR_BYTES } from "../src/nic/window.js";
import {
  CHANNEL_IDS,
  type WakePeerData,
  type WakePeerOpened,
  type WakePeerResult,
} from "./fixtures/wake-peer.js";

const FIXTURE = new URL("./fixtures/wake-peer.js", import.meta.url);
const MESSAGES = 10;
/** B's pause before each message: V spins ~20 µs, then sleeps (a slice is 100 ms). */
const GAP_MS = 20;

type Role = Omit<WakePeerData, "wakePeer" | "messages" | "gapMs">;

function start(data: Role, transfer: MessagePort[] = []): Worker {
  const workerData: WakePeerData = { wakePeer: true, messages: MESSAGES, gapMs: GAP_MS, ...data };
  return new Worker(FIXTURE, { workerData, transferList: transfer });
}

/** The next message `w` posts that has `key` (a thread that fails or exits first fails the test). */
function next<T>(w: Worker, key: "result" | "opened"): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onMessage = (m: Record<string, unknown>) => {
      if (!(key in m)) return;
      w.off("message", onMessage);
      resolve(m[key] as T);
    };
    w.on("message", onMessage);
    w.once("error", reject);
    w.once("exit", (code) => reject(new Error(`a peer thread exited (${code}) before it said ${key}`)));
  });
}

/** H: holds V's interrupt page and clears it until stopped; resolves once it runs. */
async function hostile(intrV: SharedArrayBuffer) {
  const control = new SharedArrayBuffer(12);
  const w = start({ role: "H", mode: "channel", intrV, control });
  const c = new Int32Array(control);
  let failed: unknown;
  w.once("error", (e) => {
    failed = e;
  });
  while (Atomics.load(c, 1) === 0 && failed === undefined) await new Promise((r) => setTimeout(r, 5));
  if (failed !== undefined) throw failed;
  return {
    async stop(): Promise<{ polls: number; cleared: number }> {
      Atomics.store(c, 0, 1);
      await new Promise((r) => w.once("exit", r));
      return { polls: Atomics.load(c, 1), cleared: Atomics.load(c, 2) };
    },
  };
}

function describe(v: WakePeerResult, b: WakePeerResult, h: { polls: number; cleared: number }): string {
  return (
    `V slept ${v.sleeps} times, ${v.sleepTimeouts} of them to the end of the slice; ` +
    `B kicked V ${b.kicks} times in ${MESSAGES} messages; H polled ${h.polls} times and cleared ${h.cleared} words`
  );
}

test("a co-resident peer that clears the victim's interrupt page cannot stop an honest peer's kicks: the victim is woken by them, not by its slice running out", async (t) => {
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  const intrV = new SharedArrayBuffer(INTR_BYTES);
  const intrB = new SharedArrayBuffer(INTR_BYTES);
  const h = await hostile(intrV);
  const v = start({ role: "V", mode: "channel", channel, intrV, intrB });
  const b = start({ role: "B", mode: "channel", channel, intrV, intrB });
  let results: WakePeerResult[];
  try {
    await Promise.all([next<WakePeerOpened>(v, "opened"), next<WakePeerOpened>(b, "opened")]);
    const done = Promise.all([next<WakePeerResult>(v, "result"), next<WakePeerResult>(b, "result")]);
    v.postMessage(CHANNEL_IDS.B);
    b.postMessage(CHANNEL_IDS.V);
    results = await done;
  } finally {
    await Promise.all([v.terminate(), b.terminate()]);
  }
  const did = await h.stop();
  const [vr, br] = results;
  const what = describe(vr, br, did);
  t.diagnostic(what);
  assert.ok(did.polls > 0, `H ran: ${what}`);
  assert.ok(vr.sleeps >= MESSAGES / 2, `V went to sleep while it waited (else this shows nothing): ${what}`);
  // B's messages came while V slept: B saw V's flag in its own lane and kicked.
  assert.ok(br.kicks >= MESSAGES / 2, `B's messages kicked the sleeping V: ${what}`);
  assert.ok(
    vr.sleepTimeouts < MESSAGES / 2,
    `V was woken by B's kicks, not by its slice running out: ${what}`,
  );
});

test("a co-resident peer that clears the victim's interrupt page cannot stop the NIC's kicks: the victim is woken for a message the NIC delivered", async (t) => {
  const nic = await NicDevice.start({ nicId: 41 });
  const workers: Worker[] = [];
  try {
    const ctlV = nic.driverEndpoint();
    const ctlB = nic.driverEndpoint();
    const v = start({ role: "V", mode: "nic", nicId: 41, port: ctlV.port, replyWord: ctlV.replyWord }, [
      ctlV.port,
    ]);
    const b = start({ role: "B", mode: "nic", nicId: 41, port: ctlB.port, replyWord: ctlB.replyWord }, [
      ctlB.port,
    ]);
    workers.push(v, b);
    const [openedV, openedB] = await Promise.all([
      next<WakePeerOpened>(v, "opened"),
      next<WakePeerOpened>(b, "opened"),
    ]);
    const h = await hostile(openedV.intr);
    const kicksBefore = nic.counters().global.interrupt_kicks;
    const done = Promise.all([next<WakePeerResult>(v, "result"), next<WakePeerResult>(b, "result")]);
    v.postMessage(openedB.endpointId);
    b.postMessage(openedV.endpointId);
    let results: WakePeerResult[];
    try {
      results = await done;
    } finally {
      await Promise.all(workers.map((w) => w.terminate()));
    }
    // B never sleeps (it polls): every kick the NIC made was V's.
    const nicKicks = nic.counters().global.interrupt_kicks - kicksBefore;
    const did = await h.stop();
    const [vr, br] = results;
    const what = `${describe(vr, br, did)}; the NIC kicked ${nicKicks} times`;
    t.diagnostic(what);
    assert.ok(did.polls > 0, `H ran: ${what}`);
    assert.ok(
      vr.sleeps >= MESSAGES / 2,
      `V went to sleep while it waited (else this shows nothing): ${what}`,
    );
    assert.ok(nicKicks >= MESSAGES / 2, `the NIC kicked the sleeping V for B's messages: ${what}`);
    assert.ok(
      vr.sleepTimeouts < MESSAGES / 2,
      `V was woken by the NIC's kicks, not by its slice running out: ${what}`,
    );
  } finally {
    await nic.stop();
  }
});

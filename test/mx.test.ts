/**
 * The MX API between two ranks, on every path and both scopes (one suite, parameterized):
 * on one host (co-resident channel, NIC DMA) and across two hosts whose NICs are joined by a
 * TCP link (NIC SEND, remote PULL). Matching, ordering, unexpected messages, truncation,
 * 0-byte and 64 MiB messages, issend, cancel, probe, ≥ 1000 outstanding requests, and
 * closing with requests pending.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Host } from "../src/host/host.js";
import type { Domain } from "../src/xen/hypervisor.js";
import { LINK_KEY } from "./helpers/link-key.js";
import { nextMessage } from "./helpers/messages.js";
import { freePort } from "./helpers/nic-harness.js";

const CONFORMANCE = new URL("./fixtures/guests/mx-conformance.js", import.meta.url);
const PAGES = 24_000; // 64 MiB messages on both sides, plus everything else the scenarios allocate

let host: Host;
/** A second host (NIC 2) linked to the first (NIC 1) over TCP on 127.0.0.1. */
let remote: Host;
before(async () => {
  host = await Host.start({ nicId: 1 });
  remote = await Host.start({ nicId: 2 });
  const port = await freePort();
  await remote.nic.attachLink({ kind: "tcp-listen", host: "127.0.0.1", port, key: LINK_KEY });
  await host.nic.attachLink({ kind: "tcp", host: "127.0.0.1", port, timeoutMs: 5000, key: LINK_KEY });
});
after(async () => {
  await host.stop();
  await remote.stop();
});

type Obs = Record<string, unknown>;

/**
 * A guest of `spec` on this host and one of `remoteSpec` on the remote host: they swap the
 * addresses they send first, run to the end, and are destroyed; their results. With
 * `holdRemote` the remote guest is told `"sender-done"` once the first has exited: a guest
 * that must outlive its peer's connect waits for that rather than for a timer.
 */
async function acrossHosts(
  spec: Parameters<Host["startGuest"]>[0],
  remoteSpec: Parameters<Host["startGuest"]>[0],
  { holdRemote = false } = {},
): Promise<[Record<string, unknown>, Record<string, unknown>]> {
  const s = await host.startGuest(spec);
  const gotS = nextMessage(s);
  const r = await remote.startGuest(remoteSpec);
  const gotR = nextMessage(r);
  const [[as], [ar]] = await Promise.all([gotS, gotR]);
  s.send(ar);
  r.send(as);
  if (holdRemote) void s.exited.then(() => r.send("sender-done"));
  const [es, er] = await Promise.all([s.exited, r.exited]);
  assert.equal(es.state, "shutdown", es.error?.stack);
  assert.equal(er.state, "shutdown", er.error?.stack);
  await Promise.all([s.destroy(), r.destroy()]);
  return [es.result, er.result] as [Record<string, unknown>, Record<string, unknown>];
}

async function pair(
  path: "bypass" | "native" | "split",
  scope: "one host" | "cross-host",
  args: Record<string, unknown> = {},
): Promise<[Obs, Obs]> {
  const start = (role: string) => {
    const on = scope === "cross-host" && role === "b" ? remote : host;
    return path !== "native"
      ? on.startGuest({
          module: CONFORMANCE,
          args: { role, ...(path === "split" ? { mxPath: "split" } : {}), ...args },
          pages: PAGES,
          maxHeapMb: 256,
          name: `conf-${role}`,
        })
      : on.startNative({
          module: CONFORMANCE,
          args: { role, ...args },
          pages: PAGES,
          maxHeapMb: 256,
          name: `conf-${role}`,
        });
  };
  // Listen before the next await: a domain's messages are events, not queued.
  const a: Domain = await start("a");
  const gotA = nextMessage(a);
  const b: Domain = await start("b");
  const gotB = nextMessage(b);
  const [addrA] = (await gotA) as [unknown];
  const [addrB] = (await gotB) as [unknown];
  a.send(addrB);
  b.send(addrA);
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", `rank a: ${ea.error?.stack}`);
  assert.equal(eb.state, "shutdown", `rank b: ${eb.error?.stack}`);
  await Promise.all([a.destroy(), b.destroy()]);
  return [ea.result as Obs, eb.result as Obs];
}

const CASES = [
  ["bypass", "one host"],
  ["native", "one host"],
  ["bypass", "cross-host"],
  ["native", "cross-host"],
  ["split", "one host"],
  ["split", "cross-host"],
] as const;

for (const [path, scope] of CASES) {
  describe(`MX conformance on the ${path} path, ${scope}`, () => {
    let a: Obs;
    let b: Obs;
    before(async () => {
      [a, b] = await pair(path, scope);
    });

    test("the peers sit where the scope says", () => {
      if (scope === "cross-host") assert.notEqual(a.nic, b.nic);
      else assert.equal(a.nic, b.nic);
    });

    test("the endpoint runs on the expected path", () => {
      assert.equal(a.path, path);
      assert.equal(b.path, path);
    });

    test("a wrong connection key is refused with MX_BAD_CONNECTION_KEY", () => {
      assert.equal(a.badKey, "MX_BAD_CONNECTION_KEY");
      assert.equal(b.badKey, "MX_BAD_CONNECTION_KEY");
    });

    test("masks and wildcards match; info outside the mask is MX_BAD_MATCH_MASK", () => {
      assert.equal(b.badMask, "MX_BAD_MATCH_MASK");
      assert.deepEqual(b.wildcard, { hi: 0x10, lo: 0x12340005, code: 0, source: true });
    });

    test("messages between two endpoints are matched in send order (eager and rendezvous mixed)", () => {
      assert.equal(b.ordered, true);
    });

    test("unexpected messages are queued, probed without being consumed, then matched", () => {
      assert.deepEqual(b.probe, { lo: 0, length: 64 });
      assert.equal(b.probeRndv, 100_000);
      assert.deepEqual(
        b.unexpected,
        Array.from({ length: 10 }, (_, k) => (9 - k) * 1000 + (9 - k)),
      );
      assert.deepEqual(b.unexpectedRndv, { code: 0, ok: true });
    });

    test("truncation is reported; 0-byte messages work", () => {
      assert.deepEqual(b.truncEager, { code: "MX_STATUS_TRUNCATED", msg: 100, xfer: 10 });
      assert.deepEqual(b.truncRndv, { code: "MX_STATUS_TRUNCATED", msg: 100_000, xfer: 50_000, ok: true });
      assert.deepEqual(b.zero, { code: "MX_STATUS_SUCCESS", msg: 0, xfer: 0 });
    });

    test("issend completes only after the receiver matched", () => {
      assert.equal(a.issendEarly, false);
      assert.equal(a.issend, "MX_STATUS_SUCCESS");
    });

    test("cancel removes an unmatched receive; wait times out; test_any finds a completion", () => {
      assert.equal(b.waitTimeout, true);
      assert.equal(b.cancel, true);
      assert.equal(b.cancelCode, "MX_STATUS_CANCELLED");
      assert.equal(b.cancelMatched, false, "a matched receive cannot be cancelled");
      assert.equal(b.testAny, 3);
    });

    test("1200 outstanding receives complete, each with its own message", () => {
      assert.equal(b.many, true);
    });

    test("buffers outside guest memory are bounce-copied, eager and rendezvous", () => {
      assert.deepEqual(b.bounce, { rndv: true, eager: true });
    });

    test("a 64 MiB rendezvous arrives intact (one copy by the NIC's DMA engine)", () => {
      assert.equal(a.bigSend, "MX_STATUS_SUCCESS");
      assert.deepEqual(b.big, { code: "MX_STATUS_SUCCESS", xfer: 64 * 1024 * 1024, ok: true });
    });

    test("closing an endpoint completes its pending requests with an error; its peer does not hang", () => {
      assert.deepEqual(b.closed, ["MX_STATUS_ENDPOINT_CLOSED", "MX_STATUS_ENDPOINT_CLOSED"]);
      assert.equal(b.afterClose, "MX_BAD_ENDPOINT");
      assert.match(String(a.sendToClosed), /MX_STATUS_ENDPOINT_(CLOSED|UNREACHABLE)/);
    });
  });
}

test("guests with the default 256 pages (1 MiB) send across hosts: eager and rendezvous, from guest memory and the heap", async () => {
  const SIZES = new URL("./fixtures/guests/mx-sizes.js", import.meta.url);
  const args = { count: 100, heapCount: 50, minLen: 1, maxLen: 100_000, bufBytes: 128 * 1024 };
  const a = await host.startGuest({ module: SIZES, args: { role: "a", ...args }, name: "small-a" });
  const gotA = nextMessage(a);
  const b = await remote.startGuest({ module: SIZES, args: { role: "b", ...args }, name: "small-b" });
  const gotB = nextMessage(b);
  const [addrA] = await gotA;
  const [addrB] = await gotB;
  a.send(addrB);
  b.send(addrA);
  const [ea, eb] = await Promise.all([a.exited, b.exited]);
  assert.equal(ea.state, "shutdown", ea.error?.stack);
  assert.equal(eb.state, "shutdown", eb.error?.stack);
  const ra = ea.result as { sent: number; errors: string[]; counters: Record<string, number> };
  const rb = eb.result as { received: number; bad: number; errors: string[] };
  assert.deepEqual(ra.errors, []);
  assert.deepEqual(rb.errors, []);
  assert.equal(ra.sent, 150);
  assert.equal(rb.received, 150);
  assert.equal(rb.bad, 0);
  assert.ok(ra.counters.wireSends >= 150, "the messages went through the NICs");
});

test("a receiver that closes right after its last receive: the sender's rendezvous still succeeds (the NOTIFY leaves first)", async () => {
  const CLOSE = new URL("./fixtures/guests/mx-close-notify.js", import.meta.url);
  // Five messages a second: the receiver's one-byte send puts its bucket in debt, so the
  // NOTIFY for the rendezvous waits in its send queue ~200 ms, by the NIC's clock, not by
  // how the threads run: the receiver has closed by then unless close() lets it leave.
  const [sent, got] = await acrossHosts(
    { module: CLOSE, args: { role: "sender" }, name: "close-sender" },
    { module: CLOSE, args: { role: "receiver" }, name: "close-receiver", qos: { tx: { msgsPerSec: 5 } } },
  );
  assert.equal(got.recv, "MX_STATUS_SUCCESS");
  assert.equal(sent.send, "MX_STATUS_SUCCESS", `the sender's rendezvous: ${sent.send} (${sent.reason})`);
});

test("a guest with the default 256 pages sends across hosts; with no memory left the status says what to give it", async () => {
  const SMALL = new URL("./fixtures/guests/mx-small.js", import.meta.url);
  // No `pages`: the host's default (256 pages, 1 MiB).
  const run = (hoard: boolean) =>
    acrossHosts(
      { module: SMALL, args: { role: "sender", hoard }, name: "small-sender" },
      {
        module: SMALL,
        args: { role: "receiver", waitMs: hoard ? 100 : 5000, hold: hoard },
        name: "small-receiver",
      },
      // The starved sender's messages never arrive; its receiver stays open until it is done,
      // however late a loaded runner lets it connect.
      { holdRemote: hoard },
    );
  const [sent, received] = await run(false);
  assert.deepEqual(
    [sent.eager, sent.rndv, received.eager, received.rndv],
    ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"],
  );
  const [starved] = await run(true);
  assert.equal(starved.eager, "MX_STATUS_NO_RESOURCES");
  assert.match(String(starved.eagerReason), /pages/, "the reason names the knob");
  assert.match(String(starved.eagerReason), /myrixen run --pages/);
});

/**
 * Hostile arguments to the MX API, on real endpoints (a guest on the bypass path runs
 * test/fixtures/guests/mx-arguments.ts): each gets an MxError with the MX code for the case
 * and a message that says what to fix, none costs an endpoint of the domain's quota, and the
 * endpoint still carries a message afterwards. And MPI calls after the rank's MX endpoint
 * was closed under MPI get an MpiError saying so.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Job } from "../src/cluster/job.js";
import { Host } from "../src/host/host.js";
import type { Outcome } from "./fixtures/guests/mx-arguments.js";

const FIXTURE = new URL("./fixtures/guests/mx-arguments.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({});
});
after(() => host.stop());

const runs = new Map<string, Promise<Record<string, unknown>>>();
/** The fixture's scenario, run once in a guest of its own (several tests read its result). */
function scenario(name: string): Promise<Record<string, unknown>> {
  let p = runs.get(name);
  if (!p) {
    p = (async () => {
      const d = await host.startGuest({
        module: FIXTURE,
        args: { scenario: name },
        pages: 1024,
        name: `args-${name}`,
      });
      const e = await d.exited;
      assert.equal(e.state, "shutdown", e.error?.stack);
      return e.result as Record<string, unknown>;
    })();
    runs.set(name, p);
  }
  return p;
}

function mxError(o: unknown, code: string, message: RegExp, what: string): void {
  const x = o as Outcome;
  assert.equal(x.name, "MxError", `${what}: ${JSON.stringify(x)}`);
  assert.equal(x.code, code, `${what}: ${JSON.stringify(x)}`);
  assert.match(x.message ?? "", message, what);
}

type Info = { endpoints: number };

test("openEndpoint: 160 refused opens, before and after the driver opened the endpoint, cost no endpoint; a good open still gets the fast path", async () => {
  const r = await scenario("options");
  assert.equal(r.path, "bypass");
  assert.deepEqual(r.infoAfterBadOpens, r.before as Info, "no endpoint left open");
  assert.deepEqual(r.good, { path: "bypass", fallbackReason: null, exchange: true });
  // 40 opens each; one outcome each (the same error every time).
  for (const [k, code, msg] of [
    ["trace", "MX_BAD_PARAM_VAL", /trace .* must be an integer in 1\.\.16777216/],
    ["ether", "MX_BAD_PARAM_VAL", /ether must be the guest's MX-over-Ethernet hub/],
    ["forgedHub", "MX_FAILURE", /it was closed again/],
    ["splitNoDevice", "MX_NO_DEV", /the split path needs a network device/],
  ] as const) {
    const seen = r[k] as Outcome[];
    assert.equal(seen.length, 1, `${k}: ${JSON.stringify(seen)}`);
    mxError(seen[0], code, msg, k);
  }
});

test("openEndpoint: spinUs is checked as spinMaxUs is (finite, ≥ 0, at most 1 s), and the error names it", async () => {
  const r = await scenario("options");
  for (const k of ["spinUsInfinity", "spinUsNaN", "spinUsNegative"])
    mxError(r[k], "MX_BAD_PARAM_VAL", /^MX_BAD_PARAM_VAL: spinUs must be a number of µs ≥ 0/, k);
  mxError(r.spinMaxInfinity, "MX_BAD_PARAM_VAL", /spinMaxUs must be a number of µs ≥ 0/, "spinMaxUs");
  assert.deepEqual(r.infoAfter, r.before);
});

test("openEndpoint: endpointId must be a number in 0..2^32−1 (no coercion: NaN, 2^32+7, 1.5, '3', valueOf)", async () => {
  const r = await scenario("options");
  for (const k of [
    "endpointIdNaN",
    "endpointIdWraps",
    "endpointIdFraction",
    "endpointIdString",
    "endpointIdObject",
  ])
    mxError(r[k], "MX_BAD_PARAM_VAL", /endpointId must be an integer in 0\.\.2\^32−1/, k);
  assert.equal(r.valueOfRuns, 0, "an endpointId's valueOf is never run");
  assert.deepEqual(r.infoAfter, r.before);
});

test("myrifront: a control request's arguments are plain numbers, checked before the request is written (no re-entry through valueOf)", async () => {
  const r = await scenario("driver");
  for (const k of ["endpointId", "key"]) {
    const x = r[k] as Outcome;
    assert.equal(x.name, "MxDriverError", `${k}: ${JSON.stringify(x)}`);
    assert.equal(x.code, "MX_BAD_PARAM_VAL", k);
    assert.match(x.message ?? "", /openEndpoint: \w+ must be an integer in 0\.\.2\^32−1/, k);
  }
  mxError(r.viaMx, "MX_BAD_PARAM_VAL", /endpointId must be an integer/, "mx.openEndpoint");
  assert.equal(r.nested, null, "the argument's valueOf never ran");
  assert.deepEqual(r.after, r.before, "no endpoint was opened behind the caller's back");
  assert.deepEqual(r.good, { path: "bypass", exchange: true });
});

test("irecv: a match value is read once (a valueOf answering 0, then 0xffffffff, posts nothing outside its mask)", async () => {
  const r = await scenario("calls");
  mxError(r.toctou, "MX_BAD_PARAM_VAL", /irecv: matchLo must be an integer/, "valueOf 0 then 0xffffffff");
  assert.equal(r.toctouReads, 0, "the match value's valueOf never ran");
  mxError(r.outsideMask, "MX_BAD_MATCH_MASK", /bits outside the match mask/, "outside the mask");
  assert.equal(r.exchange, true);
});

test("match values and masks: integers in 0..2^32−1 only (NaN, Infinity, -1, 2^53, 2^32+5, 1.5, '7', 1n, Symbol, valueOf refused)", async () => {
  const r = await scenario("calls");
  assert.equal(r.path, "bypass");
  for (const [k, o] of Object.entries(r.match as Record<string, Outcome>))
    mxError(o, "MX_BAD_PARAM_VAL", /(matchHi|matchLo|maskHi|maskLo) must be an integer in 0\.\.2\^32−1/, k);
  assert.equal(r.exchange, true);
});

test("requests are brand-checked: a look-alike or another endpoint's request is MX_BAD_REQUEST, and its owner still completes it", async () => {
  const r = await scenario("calls");
  mxError(
    r.forged,
    "MX_BAD_REQUEST",
    /not a request of this library/,
    "wait(Object.create(MxRequest.prototype))",
  );
  mxError(r.forgedTest, "MX_BAD_REQUEST", /not a request of this library/, "test(look-alike)");
  mxError(r.foreign, "MX_BAD_REQUEST", /belongs to another endpoint/, "wait(another endpoint's request)");
  mxError(
    r.foreignCancel,
    "MX_BAD_REQUEST",
    /belongs to another endpoint/,
    "cancel(another endpoint's request)",
  );
  assert.equal(r.foreignStillTheirs, true, "the other endpoint still cancels and reaps its request");
  assert.equal(r.exchange, true);
});

test("negative timeouts are MX_BAD_PARAM_VAL (wait, probe, waitAny, peek), and the request is still there", async () => {
  const r = await scenario("calls");
  for (const k of ["negativeWait", "negativeProbe", "negativeWaitAny", "negativePeek"])
    mxError(r[k], "MX_BAD_PARAM_VAL", /timeout must be a number of ms ≥ 0 \(0 = MX_INFINITE\)/, k);
  assert.equal(
    typeof r.pendingStillCancels,
    "string",
    "the request a bad timeout was given is still cancelled and reaped",
  );
  assert.equal(r.exchange, true);
});

test("blocking calls on a closed endpoint return at once: waitAny reaps what its close completed, peek finds nothing, probe is MX_BAD_ENDPOINT", {
  timeout: 60_000,
}, async () => {
  const r = await scenario("calls");
  assert.equal(r.closedWaitAny, "MX_STATUS_ENDPOINT_CLOSED");
  assert.equal(r.closedWaitAnyAgain, true);
  assert.equal(r.closedPeek, true);
  mxError(r.closedProbe, "MX_BAD_ENDPOINT", /endpoint \d+ is closed/, "probe");
});

test("free: only what alloc handed out, once (MX_BAD_SEG_MEM otherwise); a stale free takes no one's pages", async () => {
  const r = await scenario("calls");
  for (const k of ["freeObject", "freeHeap", "freeSubarray", "freeTwice", "freeStale"])
    mxError(
      r[k],
      "MX_BAD_SEG_MEM",
      /free: not a buffer that alloc on this endpoint handed out, or one already freed/,
      k,
    );
  assert.deepEqual(r.freeFirst, { name: "ok" });
  assert.deepEqual(r.freeZero, { name: "ok" });
  assert.equal(r.allocOverlap, false, "no two live buffers share memory");
  assert.equal(r.exchange, true);
});

test("close frees the buffers alloc handed out and free did not take back: open, alloc, close in a loop does not run the domain out of memory", async () => {
  // 48 rounds of 256 KiB in a 4 MiB domain: without close freeing them, alloc failed
  // MX_NO_RESOURCES around the 14th (a soak: 157 rounds of alloc(8) in 1 MiB).
  const r = await scenario("allocClose");
  assert.equal(r.failure, undefined, JSON.stringify(r.failure));
  assert.equal(r.passed, r.rounds);
  assert.deepEqual(r.freeAfterClose, { name: "ok" }, "a free after close does nothing");
  mxError(r.secondFree, "MX_BAD_SEG_MEM", /one already freed/, "a second free after close");
  assert.equal(r.stillWorks, true);
});

test("MPI calls after the rank's MX endpoint was closed under it: MpiError naming the cause", async () => {
  const lines: string[] = [];
  const job = new Job(host, {
    n: 1,
    path: "bypass",
    program: new URL("./fixtures/mpi-closed-endpoint.js", import.meta.url),
    argv: [],
    pages: 1024,
    maxHeapMb: 128,
    output: (rank, stream, line) => lines.push(`[${rank} ${stream}] ${line}`),
  });
  const res = await job.run();
  // The rank returns what its calls threw (MPI.finalize cannot run either: the job then fails, as it should).
  const out = res.ranks[0]?.result as Record<string, { name: string; message: string }> | undefined;
  assert.ok(out, `${res.failed?.error?.stack ?? ""}\n${lines.join("\n")}`);
  assert.equal(out.finalize.name, "MpiError", JSON.stringify(out.finalize));
  assert.match(
    out.finalize.message,
    /^MPI finalize: its barrier failed .*MPI barrier: this rank's MX endpoint \d+ was closed/,
  );
  for (const k of ["irecv", "isend", "iprobe", "barrier"]) {
    assert.equal(out[k].name, "MpiError", `${k}: ${JSON.stringify(out[k])}`);
    assert.match(out[k].message, new RegExp(`^MPI ${k}: this rank's MX endpoint \\d+ was closed`), k);
  }
});

test("Mx.init a second time before finalize is MX_ALREADY_INITIALIZED at once (it waited 10 s on XenStore), and the first still works; after finalize it inits again", async () => {
  const r = await scenario("twice");
  mxError(
    r.again,
    "MX_ALREADY_INITIALIZED",
    /already initialised in this domain .*MPI\.init/,
    "the second init",
  );
  assert.equal(r.stillWorks, true);
  assert.equal(r.afterWorks, true);
});

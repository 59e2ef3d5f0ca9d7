/**
 * The MPI library's pieces that need no ranks: the argument checks every call runs first
 * (src/mpi/args.ts), buffers and scratch (buffers.ts), the reduction ops on sub-ranges
 * (ops.ts), and the call codes the library writes for `myrixen run --timeout`
 * (src/mpi/call-state.ts), read back the way the host reads them (cluster/rank-state.ts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { CALL_NAMES, callCode, RankStateWriter, SENDING, StateWatch } from "../src/cluster/rank-state.js";
import {
  atLeast,
  blocksArg,
  bufferArg,
  opArg,
  perRankArg,
  rankArg,
  sameTypeArg,
  tagArg,
} from "../src/mpi/args.js";
import { bytesOf, copyElems, isMpiBuffer, Scratch } from "../src/mpi/buffers.js";
import {
  CALL_PROBE,
  CALL_RECV,
  CALL_SEND,
  CALL_SENDRECV,
  CALL_WAIT,
  CALL_WAITALL,
  CALL_WAITANY,
} from "../src/mpi/call-state.js";
import { ANY_SOURCE, ANY_TAG, MAX_TAG } from "../src/mpi/constants.js";
import { MpiError, MpiOp } from "../src/mpi/mpi.js";
import { MAX, MIN, PROD, SUM } from "../src/mpi/ops.js";

function throwsMpi(f: () => unknown, ...parts: string[]): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof MpiError, `expected an MpiError, got ${String(e)}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" does not say "${p}"`);
    return true;
  });
}

test("ranks: 0..size-1, ANY_SOURCE only where a wildcard is allowed; the error names the call and the range", () => {
  assert.equal(rankArg("send", "dest", 0, 3), 0);
  assert.equal(rankArg("send", "dest", 2, 3), 2);
  assert.equal(rankArg("recv", "source", ANY_SOURCE, 3, true), ANY_SOURCE);
  throwsMpi(() => rankArg("send", "dest", 3, 3), "MPI send", "dest 3", "0..2");
  throwsMpi(() => rankArg("send", "dest", ANY_SOURCE, 3), "dest -1", "0..2");
  throwsMpi(() => rankArg("recv", "source", 1.5, 3, true), "source 1.5", "MPI.ANY_SOURCE");
  throwsMpi(() => rankArg("bcast", "root", "1", 3), "root 1");
});

test("tags: 0..MAX_TAG, ANY_TAG only where a wildcard is allowed", () => {
  assert.equal(tagArg("send", MAX_TAG), MAX_TAG);
  assert.equal(tagArg("recv", ANY_TAG, true), ANY_TAG);
  throwsMpi(() => tagArg("send", MAX_TAG + 1), "tag 2147483648", `0..${MAX_TAG}`);
  throwsMpi(() => tagArg("send", ANY_TAG), "tag -1");
  throwsMpi(() => tagArg("recv", Number.NaN, true), "MPI.ANY_TAG");
});

test("buffers: numeric TypedArrays (BigInt ones too) of one element type; room for the count", () => {
  const f = new Float64Array(4);
  assert.equal(bufferArg("send", "buf", f), f);
  assert.ok(bufferArg("send", "buf", new BigInt64Array(1)) instanceof BigInt64Array);
  throwsMpi(() => bufferArg("send", "buf", [1, 2]), "buf must be a numeric TypedArray", "Array");
  throwsMpi(() => bufferArg("send", "buf", new DataView(new ArrayBuffer(8))), "DataView");
  throwsMpi(
    () => sameTypeArg("reduce", "rbuf", new Float32Array(4), f, "sbuf"),
    "rbuf is a Float32Array but sbuf is a Float64Array",
  );
  atLeast("gather", "rbuf", f, 4, "size 2 × count 2");
  throwsMpi(() => atLeast("gather", "rbuf", f, 6, "size 3 × count 2"), "has 4 elements", "at least 6");
});

test("ops: only the predefined operations", () => {
  assert.ok(opArg("allreduce", SUM) instanceof MpiOp);
  throwsMpi(() => opArg("allreduce", "sum"), "op sum is not an MPI operation", "MPI.SUM");
});

test("counts and displacements: one non-negative integer per rank, each block inside the buffer", () => {
  assert.deepEqual(Array.from(perRankArg("gatherv", "counts", new Int32Array([1, 2]), 2)), [1, 2]);
  throwsMpi(() => perRankArg("gatherv", "counts", [1], 2), "counts must be an array of 2 integers");
  throwsMpi(() => perRankArg("gatherv", "counts", [1, -1], 2), "counts[1] = -1");
  throwsMpi(() => perRankArg("gatherv", "counts", [1, 0.5], 2), "counts[1] = 0.5");
  const b = new Int32Array(10);
  const [c, d] = blocksArg("gatherv", "rbuf", b, "counts", [4, 6], "displs", [0, 4], 2);
  assert.deepEqual([c[1], d[1]], [6, 4]);
  throwsMpi(
    () => blocksArg("gatherv", "rbuf", b, "counts", [4, 6], "displs", [0, 5], 2),
    "block 1 (displs[1] = 5, counts[1] = 6) ends past the end of rbuf (10 elements)",
  );
});

test("call codes: each point-to-point code and each collective's name is the call the --timeout report names", () => {
  const p2p: [number, string][] = [
    [CALL_SEND, "MPI_Send"],
    [CALL_RECV, "MPI_Recv"],
    [CALL_WAIT, "MPI_Wait"],
    [CALL_WAITALL, "MPI_Waitall"],
    [CALL_WAITANY, "MPI_Waitany"],
    [CALL_SENDRECV, "MPI_Sendrecv"],
    [CALL_PROBE, "MPI_Probe"],
  ];
  for (const [code, name] of p2p) assert.equal(CALL_NAMES[code], name);
  // The names the collectives pass to their waits (coll-rooted.ts, coll-nonrooted.ts).
  for (const call of [
    "barrier",
    "bcast",
    "reduce",
    "allreduce",
    "gather",
    "scatter",
    "gatherv",
    "scatterv",
    "allgather",
    "allgatherv",
    "alltoall",
    "alltoallv",
  ])
    assert.equal(CALL_NAMES[callCode(call)].toLowerCase(), `mpi_${call}`);
  // What the point-to-point layer writes before a blocking send, as the host reads it.
  const sab = new SharedArrayBuffer(32);
  const writer = new RankStateWriter(sab);
  const watch = new StateWatch(sab);
  writer.block(CALL_SEND, SENDING, 1, 5);
  assert.match(watch.describe(0), /^waiting in MPI_Send\(dest 1, tag 5\) for /);
  writer.unblock();
  assert.equal(watch.describe(0), "running, not in an MPI call (last blocked in MPI_Send(dest 1, tag 5))");
});

test("buffers: byte views share memory; copies land on element ranges; scratch grows and is reused", () => {
  const f = new Float64Array([1, 2, 3, 4]);
  const v = bytesOf(f, 1, 2);
  assert.equal(v.byteLength, 16);
  assert.equal(v.byteOffset, 8);
  assert.equal(v.buffer, f.buffer);
  const g = new Float64Array(4);
  copyElems(g, 2, f, 0, 2);
  assert.deepEqual(Array.from(g), [0, 0, 1, 2]);
  copyElems(g, 0, f, 3, 0);
  assert.deepEqual(Array.from(g), [0, 0, 1, 2]);
  assert.ok(isMpiBuffer(new Uint8ClampedArray(1)) && isMpiBuffer(new BigUint64Array(1)));
  assert.ok(!isMpiBuffer(new DataView(new ArrayBuffer(1))) && !isMpiBuffer([1]) && !isMpiBuffer(null));
  const scratch = new Scratch();
  const a = scratch.get(0, new Int32Array(0), 10);
  assert.ok(a instanceof Int32Array && a.length === 10);
  const again = scratch.get(0, new Float64Array(0), 5);
  assert.ok(again instanceof Float64Array && again.buffer === a.buffer, "a smaller request reuses the slot");
  const bigger = scratch.get(0, new Float64Array(0), 1000);
  assert.ok(bigger.length === 1000 && bigger.buffer !== a.buffer);
  assert.notEqual(scratch.get(1, new Int32Array(0), 10).buffer, bigger.buffer, "slots are separate");
});

test("ops: in place on sub-ranges; 32-bit products wrap as C does; BigInt arrays", () => {
  const a = new Float64Array([1, 2, 3, 4]);
  SUM.apply(a, 1, new Float64Array([10, 20, 30]), 1, 2);
  assert.deepEqual(Array.from(a), [1, 22, 33, 4]);
  // 0x7fffffff² needs 62 bits: a double product loses the low ones (0), C's wraps to 1.
  const i = new Int32Array([0x7fffffff]);
  PROD.apply(i, 0, new Int32Array([0x7fffffff]), 0, 1);
  assert.equal(i[0], 1);
  const big = new BigInt64Array([5n, -3n]);
  MIN.apply(big, 0, new BigInt64Array([2n, 7n]), 0, 2);
  assert.deepEqual(Array.from(big), [2n, -3n]);
  MAX.apply(big, 0, new BigInt64Array([1n, 9n]), 0, 2);
  assert.deepEqual(Array.from(big), [2n, 9n]);
});

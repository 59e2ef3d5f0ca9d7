/**
 * NAS IS (NPB 3.4): integer sort by bucketed key ranking. Keys come from one global random
 * sequence (each rank skips ahead to its own slice, so the keys do not depend on the rank
 * count); each of 10 ranking iterations buckets the local keys, allreduces the bucket sizes,
 * hands whole buckets to ranks with alltoall/alltoallv and ranks them by counting. Partial
 * verification checks the ranks of 5 test keys every iteration, full verification sorts the
 * keys of the last iteration and checks the global order.
 */
import { type Comm, MPI } from "../../mpi/mpi.js";
import type { Guest } from "../../xen/guest/guest.js";
import {
  A_MULT,
  IS_CLASSES,
  type IsParams,
  nasOptions,
  powTwo,
  randlc,
  report,
  skipAhead,
  usageExit,
  warmUp,
  warmupLine,
} from "./common.js";

export const MAX_ITERATIONS = 10;
const TEST_ARRAY_SIZE = 5;
const SEED = 314159265;

/** The keys of rank `rank` of `size`: slice [rank·n, (rank+1)·n) of the global key sequence. */
export function createKeys(p: IsParams, rank: number, size: number): Int32Array {
  const totalKeys = 2 ** p.totalKeysLog2;
  const numKeys = totalKeys / size;
  const nq = (4 * totalKeys) / size;
  const an = powTwo(A_MULT, Math.log2(nq));
  const seed = { x: skipAhead(SEED, an, rank) };
  const k = 2 ** p.maxKeyLog2 / 4;
  const keys = new Int32Array(numKeys);
  for (let i = 0; i < numKeys; i++) {
    let x = randlc(seed, A_MULT);
    x += randlc(seed, A_MULT);
    x += randlc(seed, A_MULT);
    x += randlc(seed, A_MULT);
    keys[i] = Math.trunc(k * x);
  }
  return keys;
}

interface RankState {
  /** Partial verification checks passed on this rank. */
  passed: number;
  failed: string[];
  /** After the last iteration: the local keys (received), their cumulative counts, key range. */
  keys2?: Int32Array;
  localKeys?: number;
  counts?: Int32Array;
  minKey?: number;
}

class IsRanker {
  readonly numKeys: number;
  readonly maxKey: number;
  readonly nb: number;
  readonly shift: number;
  private readonly bucketSize: Int32Array;
  private readonly totals: Int32Array;
  private readonly bucketPtrs: Int32Array;
  private readonly keyBuff1: Int32Array;
  private keyBuff2: Int32Array;
  private counts: Int32Array;
  private readonly sendCount: Int32Array;
  private readonly sendDispl: Int32Array;
  private readonly recvCount: Int32Array;
  private readonly recvDispl: Int32Array;
  private readonly ptr1: Int32Array;
  private readonly ptr2: Int32Array;

  constructor(
    private readonly comm: Comm,
    private readonly p: IsParams,
    private readonly keys: Int32Array,
    readonly state: RankState,
  ) {
    const size = comm.size;
    this.numKeys = keys.length;
    this.maxKey = 2 ** p.maxKeyLog2;
    this.nb = 2 ** p.numBucketsLog2;
    this.shift = p.maxKeyLog2 - p.numBucketsLog2;
    this.bucketSize = new Int32Array(this.nb + TEST_ARRAY_SIZE);
    this.totals = new Int32Array(this.nb + TEST_ARRAY_SIZE);
    this.bucketPtrs = new Int32Array(this.nb);
    this.keyBuff1 = new Int32Array(this.numKeys);
    this.keyBuff2 = new Int32Array(Math.ceil((3 * this.numKeys) / 2));
    this.counts = new Int32Array(1 << this.shift);
    this.sendCount = new Int32Array(size);
    this.sendDispl = new Int32Array(size);
    this.recvCount = new Int32Array(size);
    this.recvDispl = new Int32Array(size);
    this.ptr1 = new Int32Array(size);
    this.ptr2 = new Int32Array(size);
  }

  rank(iteration: number): void {
    const { comm, p, keys, nb, shift, numKeys, bucketSize, totals } = this;
    const me = comm.rank;
    const size = comm.size;
    if (me === 0) {
      keys[iteration] = iteration;
      keys[iteration + MAX_ITERATIONS] = this.maxKey - iteration;
    }
    bucketSize.fill(0);
    for (let i = 0; i < TEST_ARRAY_SIZE; i++) {
      if (Math.floor(p.testIndex[i] / numKeys) === me) bucketSize[nb + i] = keys[p.testIndex[i] % numKeys];
    }
    for (let i = 0; i < numKeys; i++) bucketSize[keys[i] >> shift]++;
    const ptrs = this.bucketPtrs;
    ptrs[0] = 0;
    for (let i = 1; i < nb; i++) ptrs[i] = ptrs[i - 1] + bucketSize[i - 1];
    const kb1 = this.keyBuff1;
    for (let i = 0; i < numKeys; i++) {
      const key = keys[i];
      kb1[ptrs[key >> shift]++] = key;
    }
    comm.allreduce(bucketSize, totals, MPI.SUM);

    // Whole buckets go to ranks: rank j gets buckets until the running total passes (j+1)·numKeys.
    const { sendCount, sendDispl, recvCount, recvDispl, ptr1, ptr2 } = this;
    sendCount.fill(0);
    sendDispl.fill(0);
    ptr1.fill(0);
    ptr2.fill(0);
    let acc = 0;
    let localAcc = 0;
    let j = 0;
    for (let i = 0; i < nb && j < size; i++) {
      acc += totals[i];
      localAcc += bucketSize[i];
      if (acc >= (j + 1) * numKeys) {
        sendCount[j] = localAcc;
        if (j !== 0) {
          sendDispl[j] = sendDispl[j - 1] + sendCount[j - 1];
          ptr1[j] = ptr2[j - 1] + 1;
        }
        ptr2[j++] = i;
        localAcc = 0;
      }
    }
    for (; j < size; j++) {
      sendCount[j] = 0;
      sendDispl[j] = j > 0 ? sendDispl[j - 1] + sendCount[j - 1] : 0;
      ptr1[j] = 1;
      ptr2[j] = 0;
    }
    comm.alltoall(sendCount, recvCount);
    recvDispl[0] = 0;
    for (let i = 1; i < size; i++) recvDispl[i] = recvDispl[i - 1] + recvCount[i - 1];
    const incoming = recvDispl[size - 1] + recvCount[size - 1];
    if (incoming > this.keyBuff2.length) this.keyBuff2 = new Int32Array(incoming);
    const kb2 = this.keyBuff2;
    comm.alltoallv(kb1, sendCount, sendDispl, kb2, recvCount, recvDispl);

    const minKey = ptr1[me] << shift;
    const maxKey = ((ptr2[me] + 1) << shift) - 1;
    const range = Math.max(0, maxKey - minKey + 1);
    if (range > this.counts.length) this.counts = new Int32Array(range);
    const cnt = this.counts;
    cnt.fill(0, 0, range);
    let m = 0;
    for (let k = 0; k < me; k++) for (let i = ptr1[k]; i <= ptr2[k]; i++) m += totals[i];
    let local = 0;
    for (let i = ptr1[me]; i <= ptr2[me]; i++) local += totals[i];
    for (let i = 0; i < local; i++) cnt[kb2[i] - minKey]++;
    for (let i = 0; i < range - 1; i++) cnt[i + 1] += cnt[i];

    for (let i = 0; i < TEST_ARRAY_SIZE; i++) {
      const k = totals[nb + i];
      if (minKey <= k && k <= maxKey) {
        const keyRank = (k - 1 >= minKey ? cnt[k - 1 - minKey] : 0) + m;
        const expected = p.expected(i, iteration, p.testRank[i]);
        if (keyRank === expected) this.state.passed++;
        else
          this.state.failed.push(
            `Failed partial verification: iteration ${iteration}, processor ${me}, test key ${i}, key rank ${keyRank} (expected ${expected})`,
          );
      }
    }
    if (iteration === MAX_ITERATIONS) {
      this.state.keys2 = kb2;
      this.state.localKeys = local;
      this.state.counts = cnt;
      this.state.minKey = minKey;
    }
  }
}

/** Sorts the last iteration's keys and counts keys out of order, across rank boundaries too. */
function fullVerify(comm: Comm, st: RankState): number {
  const n = st.localKeys ?? 0;
  const keys2 = st.keys2!;
  const cnt = st.counts!;
  const minKey = st.minKey ?? 0;
  const sorted = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const key = keys2[i];
    sorted[--cnt[key - minKey]] = key;
  }
  // The largest key so far travels up the ranks (an empty rank forwards its neighbour's).
  const prev = new Int32Array([-1]);
  if (comm.rank > 0) comm.recv(prev, comm.rank - 1, 1000);
  let bad = 0;
  if (n > 0 && prev[0] > sorted[0]) bad++;
  for (let i = 1; i < n; i++) if (sorted[i - 1] > sorted[i]) bad++;
  if (comm.rank < comm.size - 1) {
    const last = new Int32Array([n > 0 ? Math.max(prev[0], sorted[n - 1]) : prev[0]]);
    comm.send(last, comm.rank + 1, 1000);
  }
  if (bad !== 0) console.log(` Processor ${comm.rank}:  Full_verify: number of keys out of sort: ${bad}`);
  return bad;
}

async function run(guest: Guest): Promise<number> {
  const opts = nasOptions(guest, "is");
  if (!opts) return usageExit(guest);
  const size = opts.size;
  if ((size & (size - 1)) !== 0) {
    if (opts.rank === 0) console.error(`is: the number of ranks must be a power of two, got ${size}`);
    return usageExit(guest);
  }
  const p = IS_CLASSES[opts.cls];
  const comm = await MPI.init(guest);
  const me = comm.rank;
  const totalKeys = 2 ** p.totalKeysLog2;
  if (me === 0) {
    console.log("\n\n NAS Parallel Benchmarks 3.4 -- IS Benchmark\n");
    console.log(` Size:  ${totalKeys}  (class ${opts.cls})`);
    console.log(` Iterations:   ${MAX_ITERATIONS}`);
    console.log(` Number of processes:     ${size}\n`);
  }
  const keys = createKeys(p, me, size);
  const state: RankState = { passed: 0, failed: [] };
  const ranker = new IsRanker(comm, p, keys, state);
  // NPB's untimed iteration is rank(1), repeated here: iteration i also sets keys[i] and
  // keys[i + MAX_ITERATIONS], which the timed loop's partial verification expects untouched.
  const warm = warmUp(comm, opts.warmup ?? "auto", MAX_ITERATIONS, () => ranker.rank(1));
  if (me === 0) console.log(warmupLine(warm));
  state.passed = 0;
  state.failed = [];
  comm.barrier();
  const t0 = MPI.wtime();
  for (let it = 1; it <= MAX_ITERATIONS; it++) ranker.rank(it);
  const tmax = new Float64Array(1);
  comm.allreduce(new Float64Array([MPI.wtime() - t0]), tmax, MPI.MAX);
  const time = tmax[0];
  for (const f of state.failed) console.log(f);
  const bad = fullVerify(comm, state);
  const tally = new Int32Array(3);
  comm.allreduce(new Int32Array([state.passed, bad === 0 ? 1 : 0, bad]), tally, MPI.SUM);
  const [partial, fullOk, outOfSort] = tally;
  const partialTotal = TEST_ARRAY_SIZE * MAX_ITERATIONS;
  const verified = partial === partialTotal && fullOk === size;
  const mops = (MAX_ITERATIONS * totalKeys) / time / 1e6;
  if (me === 0) {
    console.log(` Partial verification: ${partial} of ${partialTotal} test-key ranks correct`);
    console.log(` Full verification: ${outOfSort} keys out of sort (${fullOk} of ${size} processes sorted)`);
  }
  report(guest, opts, {
    kernel: "is",
    cls: opts.cls,
    ranks: size,
    path: opts.path,
    verified,
    time_s: time,
    mops,
    size: String(totalKeys),
    iterations: MAX_ITERATIONS,
    opType: "keys ranked",
    values: {
      total_keys: totalKeys,
      max_key: 2 ** p.maxKeyLog2,
      partial_passed: partial,
      partial_total: partialTotal,
      full_sorted_ranks: fullOk,
      keys_out_of_sort: outOfSort,
      warmup: opts.warmup ?? "auto",
      warmup_iterations: warm.iterations,
      warmup_s: warm.seconds,
    },
  });
  comm.finalize();
  return verified ? 0 : 1;
}

/** (The guest runtime hands on what the program printed before its domain ends.) */
export default function main(guest: Guest): Promise<number> {
  return run(guest);
}

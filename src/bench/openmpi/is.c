/*
 * openmpi-is: MyriXen's NAS IS (src/programs/nas/is.ts) in C over Open MPI, line for line: the
 * same keys (NPB's randlc, each rank skipping ahead to its slice), the same bucketed ranking
 * with allreduce, alltoall and alltoallv, the same partial and full verification. Not NPB's
 * own code (which this machine cannot fetch): the same kernel, so `myrixen run -n N nas-is
 * --openmpi` can set Open MPI's scaling beside MyriXen's, measured in the same run.
 * src/bench/openmpi-nas.ts compiles it with mpicc and starts it with mpirun.
 *
 * Usage: openmpi-is CLASS (S, W or A). Rank 0 prints NPB's report lines, of which the runner
 * reads "Time in seconds", "Mop/s total" and "Verification".
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npb-rand.h"

#define MAX_ITERATIONS 10
#define TEST_ARRAY_SIZE 5
#define SEED 314159265.0

typedef struct {
  char name;
  int totalKeysLog2, maxKeyLog2, numBucketsLog2;
  long testIndex[TEST_ARRAY_SIZE];
  long testRank[TEST_ARRAY_SIZE];
} IsClass;

static const IsClass CLASSES[] = {
    {'S', 16, 11, 9, {48427, 17148, 23627, 62548, 4431}, {0, 18, 346, 64917, 65463}},
    {'W', 20, 16, 10, {357773, 934767, 875723, 898999, 404505}, {1249, 11698, 1039987, 1043896, 1048018}},
    {'A', 23, 19, 10, {2112377, 662041, 5336171, 3642833, 4250760}, {104, 17523, 123928, 8288932, 8388264}},
};

/* The expected rank of test key i at iteration it (NPB's per-class rule). */
static long expected(char cls, int i, int it, long base) {
  if (cls == 'S') return i <= 2 ? base + it : base - it;
  if (cls == 'W') return i < 2 ? base + (it - 2) : base - it;
  return i <= 2 ? base + (it - 1) : base - (it - 1);
}

static double pow_two(double a, int k) {
  double t = a;
  for (int i = 0; i < k; i++) randlc(&t, t);
  return t;
}

static double skip_ahead(double s, double an, long kk) {
  double t1 = s, t2 = an;
  long k = kk;
  for (int i = 0; i < 100; i++) {
    const long ik = k / 2;
    if (2 * ik != k) randlc(&t1, t2);
    if (ik == 0) break;
    randlc(&t2, t2);
    k = ik;
  }
  return t1;
}

/* ---- the ranking ---------------------------------------------------------------------------- */

static const IsClass *P;
static int me, size;
static long numKeys, maxKey, nb, shift;
static int *keys, *bucketSize, *totals, *bucketPtrs, *kb1, *kb2, *counts;
static long kb2Len, countsLen;
static int *sendCount, *sendDispl, *recvCount, *recvDispl, *ptr1, *ptr2;
static int passed;
/* After the last iteration: local keys, key range. */
static long lastLocal, lastMinKey;

static void *alloc(long n) {
  void *p = calloc(n > 0 ? n : 1, sizeof(int));
  if (!p) {
    fprintf(stderr, "openmpi-is: out of memory (%ld ints)\n", n);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

static void rank_keys(int iteration) {
  if (me == 0) {
    keys[iteration] = iteration;
    keys[iteration + MAX_ITERATIONS] = (int)(maxKey - iteration);
  }
  memset(bucketSize, 0, (nb + TEST_ARRAY_SIZE) * sizeof(int));
  for (int i = 0; i < TEST_ARRAY_SIZE; i++)
    if (P->testIndex[i] / numKeys == me) bucketSize[nb + i] = keys[P->testIndex[i] % numKeys];
  for (long i = 0; i < numKeys; i++) bucketSize[keys[i] >> shift]++;
  bucketPtrs[0] = 0;
  for (long i = 1; i < nb; i++) bucketPtrs[i] = bucketPtrs[i - 1] + bucketSize[i - 1];
  for (long i = 0; i < numKeys; i++) {
    const int key = keys[i];
    kb1[bucketPtrs[key >> shift]++] = key;
  }
  MPI_Allreduce(bucketSize, totals, (int)(nb + TEST_ARRAY_SIZE), MPI_INT, MPI_SUM, MPI_COMM_WORLD);

  /* Whole buckets go to ranks: rank j gets buckets until the running total passes (j+1)·numKeys. */
  memset(sendCount, 0, size * sizeof(int));
  memset(sendDispl, 0, size * sizeof(int));
  memset(ptr1, 0, size * sizeof(int));
  memset(ptr2, 0, size * sizeof(int));
  long acc = 0, localAcc = 0;
  int j = 0;
  for (long i = 0; i < nb && j < size; i++) {
    acc += totals[i];
    localAcc += bucketSize[i];
    if (acc >= (long)(j + 1) * numKeys) {
      sendCount[j] = (int)localAcc;
      if (j != 0) {
        sendDispl[j] = sendDispl[j - 1] + sendCount[j - 1];
        ptr1[j] = ptr2[j - 1] + 1;
      }
      ptr2[j++] = (int)i;
      localAcc = 0;
    }
  }
  for (; j < size; j++) {
    sendCount[j] = 0;
    sendDispl[j] = j > 0 ? sendDispl[j - 1] + sendCount[j - 1] : 0;
    ptr1[j] = 1;
    ptr2[j] = 0;
  }
  MPI_Alltoall(sendCount, 1, MPI_INT, recvCount, 1, MPI_INT, MPI_COMM_WORLD);
  recvDispl[0] = 0;
  for (int i = 1; i < size; i++) recvDispl[i] = recvDispl[i - 1] + recvCount[i - 1];
  const long incoming = (long)recvDispl[size - 1] + recvCount[size - 1];
  if (incoming > kb2Len) {
    free(kb2);
    kb2 = alloc(incoming);
    kb2Len = incoming;
  }
  MPI_Alltoallv(kb1, sendCount, sendDispl, MPI_INT, kb2, recvCount, recvDispl, MPI_INT, MPI_COMM_WORLD);

  const long minKey = (long)ptr1[me] << shift;
  const long maxK = (((long)ptr2[me] + 1) << shift) - 1;
  const long range = maxK - minKey + 1 > 0 ? maxK - minKey + 1 : 0;
  if (range > countsLen) {
    free(counts);
    counts = alloc(range);
    countsLen = range;
  }
  memset(counts, 0, range * sizeof(int));
  long m = 0;
  for (int k = 0; k < me; k++)
    for (int i = ptr1[k]; i <= ptr2[k]; i++) m += totals[i];
  long local = 0;
  for (int i = ptr1[me]; i <= ptr2[me]; i++) local += totals[i];
  for (long i = 0; i < local; i++) counts[kb2[i] - minKey]++;
  for (long i = 0; i < range - 1; i++) counts[i + 1] += counts[i];

  for (int i = 0; i < TEST_ARRAY_SIZE; i++) {
    const long k = totals[nb + i];
    if (minKey <= k && k <= maxK) {
      const long keyRank = (k - 1 >= minKey ? counts[k - 1 - minKey] : 0) + m;
      const long want = expected(P->name, i, iteration, P->testRank[i]);
      if (keyRank == want) passed++;
      else
        printf("Failed partial verification: iteration %d, processor %d, test key %d, key rank %ld (expected %ld)\n",
               iteration, me, i, keyRank, want);
    }
  }
  lastLocal = local;
  lastMinKey = minKey;
}

/* Sorts the last iteration's keys and counts keys out of order, across rank boundaries too. */
static long full_verify(void) {
  const long n = lastLocal;
  int *sorted = alloc(n);
  for (long i = 0; i < n; i++) {
    const int key = kb2[i];
    sorted[--counts[key - lastMinKey]] = key;
  }
  int prev = -1;
  if (me > 0) MPI_Recv(&prev, 1, MPI_INT, me - 1, 1000, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  long bad = 0;
  if (n > 0 && prev > sorted[0]) bad++;
  for (long i = 1; i < n; i++)
    if (sorted[i - 1] > sorted[i]) bad++;
  if (me < size - 1) {
    int last = n > 0 ? (prev > sorted[n - 1] ? prev : sorted[n - 1]) : prev;
    MPI_Send(&last, 1, MPI_INT, me + 1, 1000, MPI_COMM_WORLD);
  }
  free(sorted);
  return bad;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  P = NULL;
  for (unsigned c = 0; c < sizeof CLASSES / sizeof CLASSES[0]; c++)
    if (argc > 1 && argv[1][0] == CLASSES[c].name && argv[1][1] == 0) P = &CLASSES[c];
  if (!P || (size & (size - 1)) != 0) {
    if (me == 0)
      fprintf(stderr, "usage: openmpi-is S|W|A, on a power-of-two number of ranks (got %s on %d)\n",
              argc > 1 ? argv[1] : "no class", size);
    MPI_Finalize();
    return 2;
  }
  const long totalKeys = 1L << P->totalKeysLog2;
  numKeys = totalKeys / size;
  maxKey = 1L << P->maxKeyLog2;
  nb = 1L << P->numBucketsLog2;
  shift = P->maxKeyLog2 - P->numBucketsLog2;
  if (me == 0) {
    printf("\n\n NAS Parallel Benchmarks 3.4 -- IS Benchmark (MyriXen's kernel in C, Open MPI)\n\n");
    printf(" Size:  %ld  (class %c)\n Iterations:   %d\n Number of processes:     %d\n\n", totalKeys, P->name,
           MAX_ITERATIONS, size);
  }
  /* The keys of this rank: slice [me·n, (me+1)·n) of the global key sequence. */
  keys = alloc(numKeys);
  const long nq = 4 * totalKeys / size;
  const double an = pow_two(A_MULT, (int)lround(log2((double)nq)));
  double seed = skip_ahead(SEED, an, me);
  const double k4 = (double)maxKey / 4;
  for (long i = 0; i < numKeys; i++) {
    double x = randlc(&seed, A_MULT);
    x += randlc(&seed, A_MULT);
    x += randlc(&seed, A_MULT);
    x += randlc(&seed, A_MULT);
    keys[i] = (int)trunc(k4 * x);
  }
  bucketSize = alloc(nb + TEST_ARRAY_SIZE);
  totals = alloc(nb + TEST_ARRAY_SIZE);
  bucketPtrs = alloc(nb);
  kb1 = alloc(numKeys);
  kb2Len = (3 * numKeys + 1) / 2;
  kb2 = alloc(kb2Len);
  countsLen = 1L << shift;
  counts = alloc(countsLen);
  sendCount = alloc(size);
  sendDispl = alloc(size);
  recvCount = alloc(size);
  recvDispl = alloc(size);
  ptr1 = alloc(size);
  ptr2 = alloc(size);

  rank_keys(1); /* one untimed iteration */
  passed = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  for (int it = 1; it <= MAX_ITERATIONS; it++) rank_keys(it);
  double mine = MPI_Wtime() - t0, time;
  MPI_Allreduce(&mine, &time, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const long bad = full_verify();
  long tally[3] = {passed, bad == 0 ? 1 : 0, bad}, sum[3];
  MPI_Allreduce(tally, sum, 3, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  const int verified = sum[0] == TEST_ARRAY_SIZE * MAX_ITERATIONS && sum[1] == size;
  if (me == 0) {
    printf(" Partial verification: %ld of %d test-key ranks correct\n", sum[0], TEST_ARRAY_SIZE * MAX_ITERATIONS);
    printf(" Full verification: %ld keys out of sort (%ld of %d processes sorted)\n\n", sum[2], sum[1], size);
    printf(" IS Benchmark Completed\n Class           =                        %c\n", P->name);
    printf(" Total processes =                        %d\n", size);
    printf(" Time in seconds =                     %.2f\n", time);
    printf(" Time exact      =                     %.6f\n", time);
    printf(" Mop/s total     =                   %.2f\n", MAX_ITERATIONS * (double)totalKeys / time / 1e6);
    printf(" Verification    =               %s\n", verified ? "SUCCESSFUL" : "UNSUCCESSFUL");
  }
  MPI_Finalize();
  return verified ? 0 : 1;
}

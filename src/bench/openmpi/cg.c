/*
 * openmpi-cg: MyriXen's NAS CG (src/programs/nas/cg.ts) in C over Open MPI, line for line: the
 * same matrix (NPB's makea: sprnvc, vecset, the outer products, sparse), rows split into equal
 * blocks, the matrix-vector product gathering the direction with allgather, dot products
 * allreduced, 25 CG iterations per inverse-power step. Not NPB's own code (which this machine
 * cannot fetch): the same kernel, so `myrixen run -n N --openmpi nas-cg` can set Open MPI's
 * scaling beside MyriXen's. src/bench/openmpi-nas.ts compiles it with mpicc, starts it with
 * mpirun.
 *
 * Usage: openmpi-cg CLASS (S, W or A). Rank 0 prints NPB's report lines, of which the runner
 * reads "Time exact", "Mop/s total" and "Verification".
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npb-rand.h"

#define CGITMAX 25
#define EPSILON 1e-10

typedef struct {
  char name;
  int na, nonzer, niter;
  double shift, rcond, zeta;
} CgClass;

static const CgClass CLASSES[] = {
    {'S', 1400, 7, 15, 10.0, 0.1, 8.5971775078648},
    {'W', 7000, 8, 15, 12.0, 0.1, 10.362595087124},
    {'A', 14000, 11, 15, 20.0, 0.1, 17.130235054029},
};

static void *alloc(size_t n, size_t each) {
  void *p = calloc(n > 0 ? n : 1, each);
  if (!p) {
    fprintf(stderr, "openmpi-cg: out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return p;
}

/* ---- the matrix (makea for this rank's rows) ------------------------------------------------ */

typedef struct {
  int rows;
  int *rowStart, *col;
  double *val;
} Csr;

/* Growing triple lists. */
static int *arow, *acol;
static double *aelt;
static long ntrip, captrip;

static void push(int r, int c, double v) {
  if (ntrip == captrip) {
    captrip = captrip ? 2 * captrip : 1 << 16;
    arow = realloc(arow, captrip * sizeof(int));
    acol = realloc(acol, captrip * sizeof(int));
    aelt = realloc(aelt, captrip * sizeof(double));
    if (!arow || !acol || !aelt) {
      fprintf(stderr, "openmpi-cg: out of memory\n");
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  arow[ntrip] = r;
  acol[ntrip] = c;
  aelt[ntrip++] = v;
}

/* Random sparse vector of nz distinct positions in 1..n (NPB sprnvc); positions 1-based. */
static int sprnvc(int n, int nz, double *tran, unsigned char *mark, double *v, int *iv) {
  int nn1 = 1;
  do nn1 *= 2;
  while (nn1 < n);
  int count = 0;
  while (count < nz) {
    const double vecelt = randlc(tran, A_MULT);
    const double vecloc = randlc(tran, A_MULT);
    const int i = (int)trunc(nn1 * vecloc) + 1;
    if (i > n || mark[i]) continue;
    mark[i] = 1;
    v[count] = vecelt;
    iv[count++] = i;
  }
  for (int k = 0; k < count; k++) mark[iv[k]] = 0;
  return count;
}

/* NPB sparse: bucket the triples by row, sum duplicates (first-appearance order), drop zeros. */
static Csr sparse(int n, int lo, int rows) {
  int *start = alloc(rows + 1, sizeof(int));
  for (long k = 0; k < ntrip; k++) start[arow[k] - lo + 1]++;
  for (int j = 0; j < rows; j++) start[j + 1] += start[j];
  int *fill = alloc(rows + 1, sizeof(int));
  memcpy(fill, start, (rows + 1) * sizeof(int));
  int *bc = alloc(ntrip, sizeof(int));
  double *bv = alloc(ntrip, sizeof(double));
  for (long k = 0; k < ntrip; k++) {
    const int j = arow[k] - lo;
    bc[fill[j]] = acol[k];
    bv[fill[j]++] = aelt[k];
  }
  double *x = alloc(n + 1, sizeof(double));
  unsigned char *mark = alloc(n + 1, 1);
  int *nzloc = alloc(n, sizeof(int));
  Csr a = {rows, alloc(rows + 1, sizeof(int)), alloc(ntrip, sizeof(int)), alloc(ntrip, sizeof(double))};
  int nza = 0;
  for (int j = 0; j < rows; j++) {
    int nzrow = 0;
    for (int k = start[j]; k < start[j + 1]; k++) {
      const int i = bc[k];
      x[i] += bv[k];
      if (mark[i] == 0 && x[i] != 0) {
        mark[i] = 1;
        nzloc[nzrow++] = i;
      }
    }
    for (int k = 0; k < nzrow; k++) {
      const int i = nzloc[k];
      mark[i] = 0;
      const double xi = x[i];
      x[i] = 0;
      if (xi != 0) {
        a.col[nza] = i - 1;
        a.val[nza++] = xi;
      }
    }
    a.rowStart[j + 1] = nza;
  }
  free(start);
  free(fill);
  free(bc);
  free(bv);
  free(x);
  free(mark);
  free(nzloc);
  return a;
}

/* NPB makea for rows [firstRow, firstRow + rows): the whole random sequence, this rank's rows. */
static Csr makea(const CgClass *p, int firstRow, int rows) {
  const int n = p->na;
  double tran = 314159265.0;
  randlc(&tran, A_MULT); /* zeta = randlc(tran, amult) before makea, as NPB does */
  const int lo = firstRow + 1, hi = firstRow + rows;
  const double ratio = pow(p->rcond, 1.0 / n);
  double size = 1;
  unsigned char *mark = alloc(n + 1, 1);
  double *v = alloc(p->nonzer + 1, sizeof(double));
  int *iv = alloc(p->nonzer + 1, sizeof(int));
  ntrip = 0;
  for (int iouter = 1; iouter <= n; iouter++) {
    int nz = sprnvc(n, p->nonzer, &tran, mark, v, iv);
    int set = 0;
    for (int k = 0; k < nz; k++)
      if (iv[k] == iouter) {
        v[k] = 0.5;
        set = 1;
      }
    if (!set) {
      v[nz] = 0.5;
      iv[nz++] = iouter;
    }
    for (int a = 0; a < nz; a++) {
      const int jcol = iv[a];
      const double scale = size * v[a];
      for (int b = 0; b < nz; b++) {
        const int irow = iv[b];
        if (irow >= lo && irow <= hi) push(irow, jcol, v[b] * scale);
      }
    }
    size *= ratio;
  }
  for (int i = lo; i <= hi; i++) push(i, i, p->rcond - p->shift);
  free(mark);
  free(v);
  free(iv);
  return sparse(n, lo, rows);
}

/* ---- the solver ------------------------------------------------------------------------------ */

static Csr A;
static int blk, nloc, nranks;
static double *x, *z, *pv, *q, *r, *full;

static double sum(double s) {
  double out;
  MPI_Allreduce(&s, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

/* out = A · v (v distributed; gathered first). */
static void matvec(const double *v, double *out) {
  MPI_Allgather(v, blk, MPI_DOUBLE, full, blk, MPI_DOUBLE, MPI_COMM_WORLD);
  for (int j = 0; j < nloc; j++) {
    double s = 0;
    for (int k = A.rowStart[j]; k < A.rowStart[j + 1]; k++) s += A.val[k] * full[A.col[k]];
    out[j] = s;
  }
}

/* Solves A z = x approximately (25 CG iterations); returns ||x - A z||. */
static double conj_grad(void) {
  memset(q, 0, blk * sizeof(double));
  memset(z, 0, blk * sizeof(double));
  memcpy(r, x, blk * sizeof(double));
  memcpy(pv, r, blk * sizeof(double));
  double s = 0;
  for (int j = 0; j < nloc; j++) s += r[j] * r[j];
  double rho = sum(s);
  for (int it = 0; it < CGITMAX; it++) {
    matvec(pv, q);
    s = 0;
    for (int j = 0; j < nloc; j++) s += pv[j] * q[j];
    const double d = sum(s);
    const double alpha = rho / d, rho0 = rho;
    for (int j = 0; j < nloc; j++) {
      z[j] += alpha * pv[j];
      r[j] -= alpha * q[j];
    }
    s = 0;
    for (int j = 0; j < nloc; j++) s += r[j] * r[j];
    rho = sum(s);
    const double beta = rho / rho0;
    for (int j = 0; j < nloc; j++) pv[j] = r[j] + beta * pv[j];
  }
  matvec(z, r);
  s = 0;
  for (int j = 0; j < nloc; j++) {
    const double d = x[j] - r[j];
    s += d * d;
  }
  return sqrt(sum(s));
}

/* [x . z, z . z] over all ranks. */
static void norms(double out[2]) {
  double t[2] = {0, 0};
  for (int j = 0; j < nloc; j++) {
    t[0] += x[j] * z[j];
    t[1] += z[j] * z[j];
  }
  MPI_Allreduce(t, out, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

static void normalize(double zz) {
  const double f = 1 / sqrt(zz);
  for (int j = 0; j < nloc; j++) x[j] = f * z[j];
}

static void reset_x(void) {
  memset(x, 0, blk * sizeof(double));
  for (int j = 0; j < nloc; j++) x[j] = 1;
}

int main(int argc, char **argv) {
  int rank;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &nranks);
  const CgClass *p = NULL;
  for (unsigned c = 0; c < sizeof CLASSES / sizeof CLASSES[0]; c++)
    if (argc > 1 && argv[1][0] == CLASSES[c].name && argv[1][1] == 0) p = &CLASSES[c];
  if (!p) {
    if (rank == 0) fprintf(stderr, "usage: openmpi-cg S|W|A (got %s)\n", argc > 1 ? argv[1] : "no class");
    MPI_Finalize();
    return 2;
  }
  if (rank == 0)
    printf("\n\n NAS Parallel Benchmarks 3.4 -- CG Benchmark (MyriXen's kernel in C, Open MPI)\n\n"
           " Size: %10d  (class %c)\n Iterations: %5d\n Number of processes: %5d\n",
           p->na, p->name, p->niter, nranks);
  blk = (p->na + nranks - 1) / nranks;
  int first = rank * blk < p->na ? rank * blk : p->na;
  int last = first + blk < p->na ? first + blk : p->na;
  nloc = last - first > 0 ? last - first : 0;
  A = makea(p, first, nloc);
  x = alloc(blk, sizeof(double));
  z = alloc(blk, sizeof(double));
  pv = alloc(blk, sizeof(double));
  q = alloc(blk, sizeof(double));
  r = alloc(blk, sizeof(double));
  full = alloc((size_t)blk * nranks, sizeof(double));

  /* One untimed iteration to touch all code and data, then start again from x = 1. */
  double nz2[2];
  reset_x();
  conj_grad();
  norms(nz2);
  normalize(nz2[1]);
  reset_x();

  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  double zeta = 0;
  for (int it = 1; it <= p->niter; it++) {
    const double rnorm = conj_grad();
    norms(nz2);
    zeta = p->shift + 1 / nz2[0];
    if (rank == 0) {
      if (it == 1) printf("\n   iteration           ||r||                 zeta\n");
      printf("    %5d       %20.14e%20.13f\n", it, rnorm, zeta);
    }
    normalize(nz2[1]);
  }
  double mine = MPI_Wtime() - t0, t;
  MPI_Allreduce(&mine, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  const double err = fabs(zeta - p->zeta) / p->zeta;
  const int verified = !isnan(err) && err <= EPSILON;
  const double nz = (double)p->nonzer * (p->nonzer + 1);
  const double mops = t > 0 ? 1e-6 * 2 * p->niter * p->na * (3 + nz + 25 * (5 + nz) + 3) / t : 0;
  if (rank == 0) {
    printf(" Benchmark completed\n Zeta is    %20.13e\n Error is   %20.13e\n\n", zeta, err);
    printf(" CG Benchmark Completed\n Class           =                        %c\n", p->name);
    printf(" Total processes =                        %d\n", nranks);
    printf(" Time in seconds =                     %.2f\n", t);
    printf(" Time exact      =                     %.6f\n", t);
    printf(" Mop/s total     =                   %.2f\n", mops);
    printf(" Verification    =               %s\n", verified ? "SUCCESSFUL" : "UNSUCCESSFUL");
  }
  MPI_Finalize();
  return verified ? 0 : 1;
}

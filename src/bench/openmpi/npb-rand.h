/*
 * npb-rand.h: NPB's linear congruential generator (x <- a·x mod 2^46, exact in IEEE doubles),
 * as src/programs/nas/common.ts's randlc, for the C kernels beside it (is.c, cg.c).
 */
#ifndef MYRIXEN_NPB_RAND_H
#define MYRIXEN_NPB_RAND_H
#include <math.h>

#define A_MULT 1220703125.0

/* x <- a·x mod 2^46; returns x / 2^46 in (0, 1). a and x split into 23-bit halves. */
static double randlc(double *x, double a) {
  const double R23 = 1.0 / 8388608.0, T23 = 8388608.0, R46 = R23 * R23, T46 = T23 * T23;
  double t1 = R23 * a;
  const double a1 = trunc(t1), a2 = a - T23 * a1;
  t1 = R23 * *x;
  const double x1 = trunc(t1), x2 = *x - T23 * x1;
  t1 = a1 * x2 + a2 * x1;
  const double t2 = trunc(R23 * t1), z = t1 - T23 * t2;
  const double t3 = T23 * z + a2 * x2, t4 = trunc(R46 * t3);
  *x = t3 - T46 * t4;
  return R46 * *x;
}

#endif

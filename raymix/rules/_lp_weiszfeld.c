/* The smoothed l^p Weiszfeld iteration of raymix's geomed(p) rule as one C loop, for the
 * pool-aware attack's inner loop (raymix/attacks/pool_values.py), which runs it for 15 values
 * of p, tens of iterations each, at every lambda it tries: with torch ops each map is five to
 * ten passes over the rows and ~1 ms; here it is two passes, the terms kept in registers.
 *
 * The iteration is the rule's (raymix/rules/geomed.py, p != 2): from the weighted mean of the
 * rows, z <- sum_i w_i x_i / sum_i w_i with w_i = mult_i / max(nu, ||x_i - z||_p / s), until
 * ||z_new - z||_2 <= tol ||z_new||_2 or `iters` maps. The terms |x - z|^p are float32
 * products by squaring, as the rule's; their sums accumulate in float64 (the rule's in float32).
 * Subnormal terms are flushed to zero (x86: FTZ/DAZ, restored on return), as the rule's
 * threshold zeroes terms below 1e-35: subnormal arithmetic is ~100x slower.
 *
 * A row whose sum is below 1e-25 (one that may have underflowed: the iterate near or on it,
 * as when the crafted rows capture a median) is measured again with its terms scaled by their
 * largest, as the rule measures it. Returns 0, or 1 where a sum is not finite: the caller then
 * runs the rule's own path. Built on first use by raymix/rules/_native.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define RAYMIX_X86 1
#endif

/* One code path per instruction set, chosen when the library loads (GCC on x86-64 Linux). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* lp_sum_P: sum_c |x_c - z_c|^P; lp_scaled_P: the same with every term divided by M (float32)
 * first, as the rule measures a row whose plain sum may have underflowed (its one-chunk
 * rescaled pass, raymix/rules/_kernels/distances.py: _lp_dist_to_scaled). */
#define LP_SUM(P, BODY)                                                                     \
  CLONES static double lp_sum_##P(const float *x, const float *z, int64_t d) {              \
    double acc = 0.0;                                                                       \
    _Pragma("omp simd reduction(+ : acc)") for (int64_t c = 0; c < d; ++c) {                \
      const float a = fabsf(x[c] - z[c]);                                                   \
      BODY                                                                                  \
    }                                                                                       \
    return acc;                                                                             \
  }                                                                                         \
  CLONES static double lp_scaled_##P(const float *x, const float *z, int64_t d, float M) {  \
    double acc = 0.0;                                                                       \
    _Pragma("omp simd reduction(+ : acc)") for (int64_t c = 0; c < d; ++c) {                \
      const float a = fabsf(x[c] - z[c]) / M;                                               \
      BODY                                                                                  \
    }                                                                                       \
    return acc;                                                                             \
  }
LP_SUM(1, acc += (double)a;)
LP_SUM(2, const float q2 = a * a; acc += (double)q2;)
LP_SUM(3, const float q2 = a * a; const float q3 = a * q2; acc += (double)q3;)
LP_SUM(4, const float q2 = a * a; const float q4 = q2 * q2; acc += (double)q4;)
LP_SUM(5, const float q2 = a * a; const float q4 = q2 * q2; const float q5 = a * q4; acc += (double)q5;)
LP_SUM(6, const float q2 = a * a; const float q3 = a * q2; const float q6 = q3 * q3; acc += (double)q6;)
LP_SUM(7, const float q2 = a * a; const float q3 = a * q2; const float q6 = q3 * q3; const float q7 = a * q6; acc += (double)q7;)
LP_SUM(8, const float q2 = a * a; const float q4 = q2 * q2; const float q8 = q4 * q4; acc += (double)q8;)
LP_SUM(9, const float q2 = a * a; const float q4 = q2 * q2; const float q8 = q4 * q4; const float q9 = a * q8; acc += (double)q9;)
LP_SUM(10, const float q2 = a * a; const float q4 = q2 * q2; const float q5 = a * q4; const float q10 = q5 * q5; acc += (double)q10;)
LP_SUM(11, const float q2 = a * a; const float q4 = q2 * q2; const float q5 = a * q4; const float q10 = q5 * q5; const float q11 = a * q10; acc += (double)q11;)
LP_SUM(12, const float q2 = a * a; const float q3 = a * q2; const float q6 = q3 * q3; const float q12 = q6 * q6; acc += (double)q12;)
LP_SUM(13, const float q2 = a * a; const float q3 = a * q2; const float q6 = q3 * q3; const float q12 = q6 * q6; const float q13 = a * q12; acc += (double)q13;)
LP_SUM(14, const float q2 = a * a; const float q3 = a * q2; const float q6 = q3 * q3; const float q7 = a * q6; const float q14 = q7 * q7; acc += (double)q14;)
LP_SUM(15, const float q2 = a * a; const float q3 = a * q2; const float q6 = q3 * q3; const float q7 = a * q6; const float q14 = q7 * q7; const float q15 = a * q14; acc += (double)q15;)
LP_SUM(16, const float q2 = a * a; const float q4 = q2 * q2; const float q8 = q4 * q4; const float q16 = q8 * q8; acc += (double)q16;)

typedef double (*lp_sum_fn)(const float *, const float *, int64_t);
static const lp_sum_fn LP_SUMS[17] = {0,        lp_sum_1,  lp_sum_2,  lp_sum_3,  lp_sum_4,  lp_sum_5,
                                      lp_sum_6, lp_sum_7,  lp_sum_8,  lp_sum_9,  lp_sum_10, lp_sum_11,
                                      lp_sum_12, lp_sum_13, lp_sum_14, lp_sum_15, lp_sum_16};
typedef double (*lp_scaled_fn)(const float *, const float *, int64_t, float);
static const lp_scaled_fn LP_SCALED[17] = {0,           lp_scaled_1,  lp_scaled_2,  lp_scaled_3,  lp_scaled_4,
                                           lp_scaled_5, lp_scaled_6,  lp_scaled_7,  lp_scaled_8,  lp_scaled_9,
                                           lp_scaled_10, lp_scaled_11, lp_scaled_12, lp_scaled_13, lp_scaled_14,
                                           lp_scaled_15, lp_scaled_16};

/* max_c |x_c - z_c| (float32) */
CLONES static float absmax(const float *x, const float *z, int64_t d) {
  float m = 0.0f;
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < d; ++c) {
    const float a = fabsf(x[c] - z[c]);
    m = a > m ? a : m;
  }
  return m;
}

/* ||x - z||_p with x, z scaled (|.| <= 1): the plain sum, or, where it may have underflowed
 * (below 1e-25: a row near the iterate), the row measured again with its terms divided by
 * their largest, M * (sum (|x - z| / M)^p)^(1/p), as the rule does; 0 on the iterate. */
static double lp_dist(const float *x, const float *z, int64_t d, int p, double *S_out) {
  const double S = LP_SUMS[p](x, z, d);
  *S_out = S;
  if (S >= 1e-25 || !isfinite(S)) return pow(S, 1.0 / p);
  const float M = absmax(x, z, d);
  if (!(M > 0.0f)) return 0.0;
  return (double)M * pow(LP_SCALED[p](x, z, d, M), 1.0 / p);
}

/* out = sum_i a_i x_i (float32, the rows added in order, one pass per row); returns
 * ||out - z||_2^2 and ||out||_2^2 in float64. */
CLONES static void combine(const float *X, const float *a, int64_t m, int64_t d, const float *z, float *out,
                           double *dz2, double *zn2) {
  const float a0 = a[0];
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) out[c] = a0 * X[c];
  for (int64_t i = 1; i < m; ++i) {
    const float ai = a[i];
    const float *x = X + i * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) out[c] += ai * x[c];
  }
  double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t c = 0; c < d; ++c) {
    const double q = (double)(out[c] - z[c]), r = (double)out[c];
    s1 += q * q;
    s2 += r * r;
  }
  *dz2 = s1;
  *zn2 = s2;
}

/* X: (m, d) float32 rows (finite, scaled by s, so |x| <= 1); mult: (m,) row weights; z, work:
 * (d,) floats; w: (m,) doubles of scratch. On return z holds the iterate (0) or garbage (1). */
int raymix_lp_weiszfeld(const float *X, int64_t m, int64_t d, const double *mult, int p, double nu,
                        int64_t iters, double tol, double s, float *z, float *work, double *w, float *a,
                        int64_t *done) {
  if (p < 1 || p > 16 || m < 1 || m > 4096) return 1;
#ifdef RAYMIX_X86
  const unsigned int csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040); /* FTZ | DAZ */
#endif
  int status = 0;
  double msum = 0.0, dz2, zn2;
  for (int64_t i = 0; i < m; ++i) msum += mult[i];
  for (int64_t i = 0; i < m; ++i) a[i] = (float)(mult[i] / msum);
  combine(X, a, m, d, z, z, &dz2, &zn2); /* z's old values are not read for the result */
  int64_t it = 0;
  while (it < iters) {
    double total = 0.0;
    for (int64_t i = 0; i < m && !status; ++i) {
      double S;
      const double dist = lp_dist(X + i * d, z, d, p, &S) / s;
      if (!isfinite(S)) status = 1;
      w[i] = mult[i] / (dist > nu ? dist : nu);
      total += w[i];
    }
    if (status || !isfinite(total) || !(total > 0)) break;
    for (int64_t i = 0; i < m; ++i) a[i] = (float)(w[i] / total);
    combine(X, a, m, d, z, work, &dz2, &zn2);
    memcpy(z, work, (size_t)d * sizeof(float));
    ++it;
    if (sqrt(dz2) <= tol * sqrt(zn2)) break;
  }
  *done = it;
#ifdef RAYMIX_X86
  _mm_setcsr(csr);
#endif
  return status;
}

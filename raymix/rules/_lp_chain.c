/* Every integer power sum of |x - y| for pairs of float32 rows at once: the pool-aware attack's
 * l^p distances for Krum(p) members (raymix/attacks/pool_values.py, _lp_from_diffs), which
 * needs, for each pair, sum_c a_c^e for e = 1..maxe with a = |x - y| / max|x - y| (the max
 * taken first, so no power overflows or underflows). With torch ops that is maxe passes over
 * an (r, d) float64 tensor; here each block of 256 columns is raised through every power while
 * it sits in L1.
 *
 * The arithmetic is the torch chain's: the difference in float32, its magnitude in float64,
 * divided by the pair's max, terms at or below `floor` set to 0, the powers by repeated
 * products (a, a*a, (a*a)*a, ...); the sums accumulate in float64 in another order (they
 * differ from torch's by float64 rounding). Built on first use by raymix/rules/_native.py. */
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#define BLOCK 256

/* Pair t is (A[ia[t]], B[ib[t]]) (row strides lda, ldb floats), d columns. Writes smax[t] and
 * sums[t * maxe + e - 1] for e = 1..maxe. */
CLONES int raymix_lp_chain(const float *A, int64_t lda, const int64_t *ia, const float *B, int64_t ldb,
                           const int64_t *ib, int64_t r, int64_t d, int maxe, double floor, double *smax,
                           double *sums) {
  if (maxe < 1 || maxe > 64) return 1;
  double a[BLOCK], p[BLOCK];
  for (int64_t t = 0; t < r; ++t) {
    const float *x = A + ia[t] * lda, *y = B + ib[t] * ldb;
    double s = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const double v = (double)fabsf(x[c] - y[c]);
      s = v > s ? v : s;
    }
    smax[t] = s;
    double *out = sums + t * maxe;
    for (int e = 0; e < maxe; ++e) out[e] = 0.0;
    const double safe = s > 0.0 ? s : 1.0;
    for (int64_t c0 = 0; c0 < d; c0 += BLOCK) {
      const int64_t n = (d - c0 < BLOCK) ? d - c0 : BLOCK;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const double v = (double)fabsf(x[c0 + k] - y[c0 + k]) / safe;
        a[k] = v > floor ? v : 0.0;
        p[k] = a[k];
      }
      for (int e = 0; e < maxe; ++e) {
        double acc = 0.0;
        if (e > 0) {
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) p[k] *= a[k];
        }
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < n; ++k) acc += p[k];
        out[e] += acc;
      }
    }
  }
  return 0;
}

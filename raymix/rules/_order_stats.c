/* Coordinate-wise order statistics (comed, trimmed mean) of a few rows by a comparator network,
 * one L1-sized column block at a time. The network is the one raymix/rules/_kernels/networks.py
 * runs with torch ops (Batcher's odd-even merge sort, pruned to the wires the rule needs); here
 * a block of B columns stays in L1 for all of its comparators, and each comparator is one
 * vectorised min/max pass over the block, with no per-op call cost. At n = 30, d = 1M that is
 * ~30 ms on one core where a sort along the row axis costs ~20-50 ns per element.
 *
 * NaN counts as +inf (the rules' convention): it is replaced when the block is loaded. The
 * outputs are the torch network's, in its order of arithmetic:
 *   mode 0 (median): W[lo] for lo == hi, else (W[lo] + W[hi]) * 0.5f;
 *   mode 1 (trimmed mean): (W[lo] + W[lo+1] + ... + W[hi]) summed left to right, times `scale`;
 *   mode 2 (sorted columns): wires lo..hi themselves, wire r in row r - lo of `out` (row
 *           stride `ldo`).
 * Built on first use by raymix/rules/_native.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* One code path per instruction set, chosen when the library loads (GCC on x86-64 Linux). */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* Floats as order-preserving int32 keys (the map b -> b ^ ((b >> 31) & 0x7fffffff) on the bit
 * pattern, its own inverse): integer min/max vectorise without NaN or trap semantics in the
 * way (GCC does not if-convert a float compare under -ftrapping-math). -0.0 sorts just below
 * +0.0; NaN is replaced by +inf first. */
static inline int32_t key_of(float x) {
  int32_t b;
  if (x != x) x = INFINITY;
  memcpy(&b, &x, 4);
  return b ^ ((b >> 31) & 0x7fffffff);
}
static inline float float_of(int32_t k) {
  const int32_t b = k ^ ((k >> 31) & 0x7fffffff);
  float x;
  memcpy(&x, &b, 4);
  return x;
}

/* rows: n row indices into G (row stride ld floats); columns [c0, c1); net: ncmp pairs (i, j)
 * with i < j; work: n * B keys. Writes out[c0:c1] (mode 2: those columns of hi - lo + 1 rows of
 * stride ldo). */
CLONES int raymix_order_stats(const float *G, int64_t ld, const int64_t *rows, int n, int64_t c0, int64_t c1,
                              const int32_t *net, int ncmp, int mode, int lo, int hi, float scale,
                              float *out, int64_t ldo, int32_t *work, int64_t B) {
  if (n < 1 || B < 1 || lo < 0 || hi < lo || hi >= n) return 1;
  for (int64_t a = c0; a < c1; a += B) {
    const int64_t c = (c1 - a < B) ? c1 - a : B;
    for (int i = 0; i < n; ++i) {
      const float *src = G + rows[i] * ld + a;
      int32_t *w = work + (int64_t)i * B;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) w[k] = key_of(src[k]);
    }
    for (int t = 0; t < ncmp; ++t) {
      int32_t *restrict x = work + (int64_t)net[2 * t] * B;
      int32_t *restrict y = work + (int64_t)net[2 * t + 1] * B;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) {
        const int32_t u = x[k], v = y[k];
        x[k] = v < u ? v : u;
        y[k] = v < u ? u : v;
      }
    }
    const int32_t *wl = work + (int64_t)lo * B;
    float *o = out + a;
    if (mode == 2) {
      for (int r = lo; r <= hi; ++r) {
        const int32_t *wr = work + (int64_t)r * B;
        float *orow = out + (int64_t)(r - lo) * ldo + a;
        for (int64_t k = 0; k < c; ++k) orow[k] = float_of(wr[k]);
      }
    } else if (mode == 0 && lo == hi) {
      for (int64_t k = 0; k < c; ++k) o[k] = float_of(wl[k]);
    } else if (mode == 0) {
      const int32_t *wh = work + (int64_t)hi * B;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) o[k] = (float_of(wl[k]) + float_of(wh[k])) * 0.5f;
    } else {
      for (int64_t k = 0; k < c; ++k) o[k] = float_of(wl[k]);
      for (int r = lo + 1; r <= hi; ++r) {
        const int32_t *wr = work + (int64_t)r * B;
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) o[k] += float_of(wr[k]);
      }
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) o[k] *= scale;
    }
  }
  return 0;
}

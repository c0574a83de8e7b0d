// SiLU, x · σ(x) = x / (1 + e^−x), over a float buffer, split across the OpenMP team oneDNN
// runs on. oneDNN 2.6's swish (standalone or as a convolution's post-op) costs about 0.3 ns a
// value on two threads here; this one 0.16 (docs/benchmarks.md, "SiLU"), which is most of
// EfficientNet's gap to ONNX Runtime. The exponential is Cephes' expf: range reduction by ln 2
// in two parts and a degree-6 polynomial, within 2e-7 relative of the exact SiLU.
#include "cdnnl.h"
#include <immintrin.h>
#include <math.h>

// libgomp's entry point for `#pragma omp parallel` (what GCC emits): SwiftPM's clang would
// emit LLVM's __kmpc calls instead, and oneDNN's team is libgomp's.
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
int omp_get_thread_num(void);
int omp_get_num_threads(void);

#define EXP_CONSTANTS(set1)                                                                     \
  const VEC lo = set1(-87.3f), hi = set1(88.3f), log2e = set1(1.44269504088896341f),            \
            ln2hi = set1(0.693359375f), ln2lo = set1(-2.12194440e-4f), c0 = set1(1.9875691500e-4f), \
            c1 = set1(1.3981999507e-3f), c2 = set1(8.3334519073e-3f), c3 = set1(4.1665795894e-2f), \
            c4 = set1(1.6666665459e-1f), c5 = set1(5.0000001201e-1f), one = set1(1.0f)

__attribute__((target("avx512f"))) static void silu_avx512(float *dst, const float *src, int64_t n) {
#define VEC __m512
  EXP_CONSTANTS(_mm512_set1_ps);
#undef VEC
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(m, src + i);
    // e^−x, with −x clamped to where e^−x is a normal float.
    __m512 t = _mm512_max_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), hi), lo);
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, ln2lo, _mm512_fnmadd_ps(k, ln2hi, t));
    __m512 p = _mm512_fmadd_ps(c0, r, c1);
    p = _mm512_fmadd_ps(p, r, c2);
    p = _mm512_fmadd_ps(p, r, c3);
    p = _mm512_fmadd_ps(p, r, c4);
    p = _mm512_fmadd_ps(p, r, c5);
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, one));
    __m512 e = _mm512_scalef_ps(p, k);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_div_ps(x, _mm512_add_ps(one, e)));
  }
}

// The package's baseline, x86-64-v3 (AVX2, FMA).
static void silu_avx2(float *dst, const float *src, int64_t n) {
#define VEC __m256
  EXP_CONSTANTS(_mm256_set1_ps);
#undef VEC
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(src + i);
    __m256 t = _mm256_max_ps(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), hi), lo);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(t, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, ln2lo, _mm256_fnmadd_ps(k, ln2hi, t));
    __m256 p = _mm256_fmadd_ps(c0, r, c1);
    p = _mm256_fmadd_ps(p, r, c2);
    p = _mm256_fmadd_ps(p, r, c3);
    p = _mm256_fmadd_ps(p, r, c4);
    p = _mm256_fmadd_ps(p, r, c5);
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
    // 2^k from its exponent bits: k is in [−126, 127] after the clamp.
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    _mm256_storeu_ps(dst + i, _mm256_div_ps(x, _mm256_add_ps(one, e)));
  }
  for (; i < n; i++) dst[i] = src[i] / (1.0f + expf(-src[i]));
}

static void silu_range(float *dst, const float *src, int64_t n) {
  if (__builtin_cpu_supports("avx512f")) silu_avx512(dst, src, n);
  else silu_avx2(dst, src, n);
}

struct silu_job {
  float *dst;
  const float *src;
  int64_t n;
};

// Each thread of the team takes one contiguous share, in whole 64-byte lines.
static void silu_share(void *p) {
  const struct silu_job *job = p;
  int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
  int64_t lines = (job->n + 15) / 16;
  int64_t begin = lines * t / threads * 16, end = lines * (t + 1) / threads * 16;
  if (end > job->n) end = job->n;
  if (begin < end) silu_range(job->dst + begin, job->src + begin, end - begin);
}

void veil_silu_f32_with(float *dst, const float *src, int64_t n, int isa) {
  if (isa == 2 && __builtin_cpu_supports("avx512f")) silu_avx512(dst, src, n);
  else if (isa == 1) silu_avx2(dst, src, n);
  else silu_range(dst, src, n);
}

void veil_silu_f32(float *dst, const float *src, int64_t n) {
  if (n <= 0) return;
  // Below this a team's wake-up costs more than the work (about 5 µs on one thread).
  if (n < 16384 || omp_get_max_threads() < 2) {
    silu_range(dst, src, n);
    return;
  }
  struct silu_job job = {dst, src, n};
  GOMP_parallel(silu_share, &job, 0, 0);
}

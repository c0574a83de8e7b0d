// SiLU, x · σ(x) = x / (1 + e^−x), over a float buffer, split across the OpenMP team oneDNN
// runs on. oneDNN 2.6's swish (standalone or as a convolution's post-op) takes 1.5–2× as long
// on two threads here (bench/silu.c; docs/benchmarks.md, "SiLU"), which was most of
// EfficientNet's gap to ONNX Runtime. The exponential is Cephes' expf: range reduction by ln 2
// in two parts and a degree-6 polynomial, within 2e-7 relative of the exact SiLU.
#include "cdnnl.h"
#include <immintrin.h>
#include <math.h>

// Split across Veil's team (team.c) through GOMP_parallel, the entry point oneDNN calls too:
// SwiftPM's clang would emit LLVM's __kmpc calls for `#pragma omp parallel` instead.

// One vector of SiLU, for either width: V(op) names the width's intrinsic, ROUND and SCALE its
// rounding to an integer and its multiplication by 2^k.
#define SILU_VECTOR(VEC, x, out)                                                               \
  do {                                                                                         \
    const VEC lo = V(set1_ps)(-87.3f), hi = V(set1_ps)(88.3f), one = V(set1_ps)(1.0f);         \
    /* e^−x, with −x clamped to where e^−x is a normal float; k = round(−x / ln 2). */         \
    VEC t = V(max_ps)(V(min_ps)(V(sub_ps)(V(setzero_ps)(), x), hi), lo);                       \
    VEC k = ROUND(V(mul_ps)(t, V(set1_ps)(1.44269504088896341f)));                             \
    VEC r = V(fnmadd_ps)(k, V(set1_ps)(-2.12194440e-4f), V(fnmadd_ps)(k, V(set1_ps)(0.693359375f), t)); \
    VEC p = V(fmadd_ps)(V(set1_ps)(1.9875691500e-4f), r, V(set1_ps)(1.3981999507e-3f));       \
    p = V(fmadd_ps)(p, r, V(set1_ps)(8.3334519073e-3f));                                       \
    p = V(fmadd_ps)(p, r, V(set1_ps)(4.1665795894e-2f));                                       \
    p = V(fmadd_ps)(p, r, V(set1_ps)(1.6666665459e-1f));                                       \
    p = V(fmadd_ps)(p, r, V(set1_ps)(5.0000001201e-1f));                                       \
    p = V(fmadd_ps)(p, V(mul_ps)(r, r), V(add_ps)(r, one));                                    \
    out = V(div_ps)(x, V(add_ps)(one, SCALE(p, k)));                                           \
  } while (0)

#define V(op) _mm512_##op
#define ROUND(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define SCALE(p, k) _mm512_scalef_ps(p, k)
__attribute__((target("avx512f"))) static void silu_avx512(float *dst, const float *src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(m, src + i), y;
    SILU_VECTOR(__m512, x, y);
    _mm512_mask_storeu_ps(dst + i, m, y);
  }
}
#undef V
#undef ROUND
#undef SCALE

// The package's baseline, x86-64-v3 (AVX2, FMA). 2^k from its exponent bits: k is in
// [−126, 127] after the clamp.
#define V(op) _mm256_##op
#define ROUND(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define SCALE(p, k) \
  _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23)))
static void silu_avx2(float *dst, const float *src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(src + i), y;
    SILU_VECTOR(__m256, x, y);
    _mm256_storeu_ps(dst + i, y);
  }
  for (; i < n; i++) dst[i] = src[i] / (1.0f + expf(-src[i]));
}
#undef V
#undef ROUND
#undef SCALE

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

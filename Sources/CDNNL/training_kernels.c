// Element-wise and per-channel kernels of the training engine (VeilTrain) on plain layouts:
// batch normalisation's statistics, normalisation and backward, and Adam's update. Written in
// C so that clang vectorises them for AVX2 (restrict pointers, no errno on sqrt); the Swift
// loops they replace ran one lane at a time (docs/benchmarks.md, attacker throughput).
#include "cdnnl.h"
#include <math.h>

// Sum of a row in eight float lanes (one AVX register), widened to double at the end.
static double row_sum(const float *restrict p, int64_t len) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += p[i + j];
  double s = 0;
  for (int j = 0; j < 8; j++) s += acc[j];
  for (; i < len; i++) s += p[i];
  return s;
}

static double row_squared_deviation(const float *restrict p, int64_t len, float mu) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int j = 0; j < 8; j++) {
      float d = p[i + j] - mu;
      acc[j] += d * d;
    }
  double s = 0;
  for (int j = 0; j < 8; j++) s += acc[j];
  for (; i < len; i++) s += (double)(p[i] - mu) * (p[i] - mu);
  return s;
}

static double row_dot(const float *restrict a, const float *restrict b, int64_t len) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
  double s = 0;
  for (int j = 0; j < 8; j++) s += acc[j];
  for (; i < len; i++) s += (double)a[i] * b[i];
  return s;
}

void veil_channel_mean_var(const float *x, int64_t n, int64_t c, int64_t inner, double *mean, double *var) {
  double m = (double)(n * inner);
  for (int64_t ch = 0; ch < c; ch++) {
    double s = 0;
    for (int64_t b = 0; b < n; b++) s += row_sum(x + (b * c + ch) * inner, inner);
    double mu = s / m;
    double q = 0;
    for (int64_t b = 0; b < n; b++) q += row_squared_deviation(x + (b * c + ch) * inner, inner, (float)mu);
    // The deviations were taken from the float mean; correct for its rounding.
    double shift = mu - (double)(float)mu;
    mean[ch] = mu;
    var[ch] = fmax(q / m - shift * shift, 0);
  }
}

void veil_batchnorm_apply(const float *restrict x, int64_t n, int64_t c, int64_t inner, const float *mean,
                          const float *inv_std, const float *gamma, const float *beta, float *restrict xhat,
                          float *restrict y) {
  for (int64_t b = 0; b < n; b++)
    for (int64_t ch = 0; ch < c; ch++) {
      const int64_t base = (b * c + ch) * inner;
      const float mu = mean[ch], is = inv_std[ch], g = gamma[ch], t = beta[ch];
      for (int64_t i = 0; i < inner; i++) {
        float h = (x[base + i] - mu) * is;
        xhat[base + i] = h;
        y[base + i] = g * h + t;
      }
    }
}

void veil_channel_sums(const float *g, const float *h, int64_t n, int64_t c, int64_t inner, double *sum_g,
                       double *sum_gh) {
  for (int64_t ch = 0; ch < c; ch++) {
    double sg = 0, sgh = 0;
    for (int64_t b = 0; b < n; b++) {
      const int64_t base = (b * c + ch) * inner;
      sg += row_sum(g + base, inner);
      sgh += row_dot(g + base, h + base, inner);
    }
    sum_g[ch] = sg;
    sum_gh[ch] = sgh;
  }
}

void veil_batchnorm_backward(const float *restrict g, const float *restrict h, int64_t n, int64_t c, int64_t inner,
                             const float *k, const float *mean_g, const float *mean_gh, float *restrict dx) {
  for (int64_t b = 0; b < n; b++)
    for (int64_t ch = 0; ch < c; ch++) {
      const int64_t base = (b * c + ch) * inner;
      const float kc = k[ch], a = mean_g[ch], q = mean_gh[ch];
      for (int64_t i = 0; i < inner; i++) dx[base + i] = kc * (g[base + i] - a - h[base + i] * q);
    }
}

void veil_channel_affine(const float *restrict x, int64_t n, int64_t c, int64_t inner, const float *a, const float *m,
                         const float *b, float *restrict y) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t ch = 0; ch < c; ch++) {
      const int64_t base = (i * c + ch) * inner;
      const float s = a[ch], mu = m[ch], t = b[ch];
      for (int64_t j = 0; j < inner; j++) y[base + j] = s * (x[base + j] - mu) + t;
    }
}

void veil_adam_f32(float *restrict w, float *restrict m, float *restrict v, const float *restrict g, int64_t count,
                   float beta1, float beta2, float lr, float c1, float c2, float eps, float weight_decay) {
  for (int64_t i = 0; i < count; i++) {
    float gi = g[i] + weight_decay * w[i];
    m[i] = beta1 * m[i] + (1 - beta1) * gi;
    v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
    w[i] -= lr * (m[i] / c1) / (sqrtf(v[i] / c2) + eps);
  }
}

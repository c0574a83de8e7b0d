// Veil's SiLU (Sources/CDNNL/silu.c) against oneDNN 2.6's eltwise swish on the same values, on
// the OpenMP team both use; docs/benchmarks.md, "SiLU". Not part of the build:
//
//   gcc -O3 -march=x86-64-v3 -ISources/CDNNL/include bench/silu.c Sources/CDNNL/silu.c \
//       -o /tmp/silu-bench -ldnnl -lgomp -lm && OMP_NUM_THREADS=2 /tmp/silu-bench [VALUES...]
//
// For each count of values (default 9633792, 1204224, 150528: EfficientNet-B0's largest SiLU
// at batch 8 and two smaller ones): the median of 3 rounds of 10 runs each, in ms, and the
// largest error of each against x / (1 + e^-x) in double precision.
#include "cdnnl.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double max_error(const float *x, const float *y, long n) {
  double worst = 0;
  for (long i = 0; i < n; i++) {
    double want = x[i] / (1.0 + exp(-(double)x[i]));
    double e = fabs(y[i] - want) / fmax(fabs(want), 1e-6);
    if (e > worst) worst = e;
  }
  return worst;
}

static void bench(long n) {
  float *x = aligned_alloc(64, n * 4), *y = aligned_alloc(64, n * 4);
  for (long i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 20000) / 1000.0f - 10.0f;
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  dnnl_engine_create(&engine, dnnl_cpu, 0);
  dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
  dnnl_memory_desc_t md;
  dnnl_dims_t dims = {n};
  dnnl_memory_desc_init_by_tag(&md, 1, dims, dnnl_f32, dnnl_a);
  dnnl_eltwise_desc_t desc;
  dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, dnnl_eltwise_swish, &md, 1, 0);
  dnnl_primitive_desc_t pd;
  dnnl_primitive_t swish;
  dnnl_primitive_desc_create(&pd, &desc, NULL, engine, NULL);
  dnnl_primitive_create(&swish, pd);
  dnnl_memory_t mx, my;
  dnnl_memory_create(&mx, &md, engine, x);
  dnnl_memory_create(&my, &md, engine, y);
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DST, my}};
  double onednn[3], veil[3], e_onednn = 0, e_veil = 0;
  for (int r = 0; r < 3; r++) {
    double t0 = now_ms();
    for (int k = 0; k < 10; k++) {
      dnnl_primitive_execute(swish, stream, 2, args);
      dnnl_stream_wait(stream);
    }
    double t1 = now_ms();
    if (r == 0) e_onednn = max_error(x, y, n);
    for (int k = 0; k < 10; k++) veil_silu_f32(y, x, n);
    double t2 = now_ms();
    if (r == 0) e_veil = max_error(x, y, n);
    onednn[r] = (t1 - t0) / 10;
    veil[r] = (t2 - t1) / 10;
  }
  qsort(onednn, 3, sizeof(double), by_value);
  qsort(veil, 3, sizeof(double), by_value);
  printf("%9ld values: oneDNN swish %.3f ms (error %.1e), Veil SiLU %.3f ms (error %.1e)\n", n, onednn[1], e_onednn,
         veil[1], e_veil);
  dnnl_primitive_destroy(swish);
  dnnl_primitive_desc_destroy(pd);
  dnnl_memory_destroy(mx);
  dnnl_memory_destroy(my);
  dnnl_stream_destroy(stream);
  dnnl_engine_destroy(engine);
  free(x);
  free(y);
}

int main(int argc, char **argv) {
  if (argc > 1)
    for (int i = 1; i < argc; i++) bench(atol(argv[i]));
  else {
    bench(9633792);
    bench(1204224);
    bench(150528);
  }
  return 0;
}

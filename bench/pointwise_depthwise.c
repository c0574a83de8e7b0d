// An inverted residual block's 1×1 expansion and 3×3 depthwise convolution (ReLU6 after each),
// run apart as Veil ran them before (each in the layout oneDNN picks for it alone) and as one
// oneDNN kernel (the depthwise post-op, in the layout oneDNN picks for that), alternating;
// docs/benchmarks.md, "One kernel for the expansion and the depthwise step". Not part of the
// build:
//
//   gcc -O2 bench/pointwise_depthwise.c -o /tmp/pwdw-bench -ldnnl -lgomp
//   OMP_NUM_THREADS=2 /tmp/pwdw-bench [N C E H STRIDE]...
//
// Each block is five numbers: batch, input channels, expanded channels, height (= width) and
// the depthwise stride (default: MobileNet V2's expansions at batch 8). For each: the kernels
// oneDNN chose, then the mean of 20 runs apart and fused, over 5 alternating rounds, in ms.
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(x)                                                           \
  do {                                                                     \
    dnnl_status_t s_ = (x);                                                \
    if (s_ != dnnl_success) {                                              \
      fprintf(stderr, "%s:%d: %s failed: status %d\n", __FILE__, __LINE__, #x, (int)s_); \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

static dnnl_engine_t engine;
static dnnl_stream_t stream;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static const dnnl_memory_desc_t *arg_md(dnnl_primitive_desc_t pd, int arg) {
  return dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, arg);
}

// A memory of the primitive's argument `arg`, filled with small values.
static dnnl_memory_t filled(dnnl_primitive_desc_t pd, int arg) {
  const dnnl_memory_desc_t *md = arg_md(pd, arg);
  dnnl_memory_t m;
  CHECK(dnnl_memory_create(&m, md, engine, DNNL_MEMORY_ALLOCATE));
  float *p;
  CHECK(dnnl_memory_get_data_handle(m, (void **)&p));
  size_t n = dnnl_memory_desc_get_size(md) / sizeof(float);
  for (size_t i = 0; i < n; i++) p[i] = (float)((i * 7) % 13) / 13.f - 0.3f;
  return m;
}

static const char *implementation(dnnl_primitive_desc_t pd) {
  const char *name = "?";
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
  return name;
}

static dnnl_primitive_attr_t relu6_then(int depthwise_stride) {
  dnnl_primitive_attr_t a;
  dnnl_post_ops_t po;
  CHECK(dnnl_primitive_attr_create(&a));
  CHECK(dnnl_post_ops_create(&po));
  CHECK(dnnl_post_ops_append_eltwise(po, 1.f, dnnl_eltwise_clip, 0.f, 6.f));
  if (depthwise_stride) {
    CHECK(dnnl_post_ops_append_dw(po, dnnl_f32, dnnl_f32, dnnl_f32, 3, depthwise_stride, 1, 0, 0, NULL));
    CHECK(dnnl_post_ops_append_eltwise(po, 1.f, dnnl_eltwise_clip, 0.f, 6.f));
  }
  CHECK(dnnl_primitive_attr_set_post_ops(a, po));
  dnnl_post_ops_destroy(po);
  return a;
}

static void block(int n, int c, int e, int h, int stride) {
  int ho = (h - 1) / stride + 1;
  dnnl_memory_desc_t src, w1, bias, mid, wdw, dst;
  dnnl_dims_t src_dims = {n, c, h, h}, w1_dims = {e, c, 1, 1}, bias_dims = {e}, mid_dims = {n, e, h, h},
              wdw_dims = {e, 1, 1, 3, 3}, dst_dims = {n, e, ho, ho};
  CHECK(dnnl_memory_desc_init_by_tag(&src, 4, src_dims, dnnl_f32, dnnl_format_tag_any));
  CHECK(dnnl_memory_desc_init_by_tag(&w1, 4, w1_dims, dnnl_f32, dnnl_format_tag_any));
  CHECK(dnnl_memory_desc_init_by_tag(&bias, 1, bias_dims, dnnl_f32, dnnl_x));
  CHECK(dnnl_memory_desc_init_by_tag(&mid, 4, mid_dims, dnnl_f32, dnnl_format_tag_any));
  CHECK(dnnl_memory_desc_init_by_tag(&wdw, 5, wdw_dims, dnnl_f32, dnnl_format_tag_any));
  CHECK(dnnl_memory_desc_init_by_tag(&dst, 4, dst_dims, dnnl_f32, dnnl_format_tag_any));
  dnnl_dims_t one = {1, 1}, zero = {0, 0}, pad = {1, 1}, strides = {stride, stride};

  // Apart: the expansion, then the depthwise convolution reading the expansion's layout.
  dnnl_convolution_desc_t expand, depthwise;
  CHECK(dnnl_convolution_forward_desc_init(
    &expand, dnnl_forward_inference, dnnl_convolution_direct, &src, &w1, &bias, &mid, one, zero, zero));
  dnnl_primitive_attr_t a1 = relu6_then(0), a2 = relu6_then(0), af = relu6_then(stride);
  dnnl_primitive_desc_t pd1, pd2, pdf;
  CHECK(dnnl_primitive_desc_create(&pd1, &expand, a1, engine, NULL));
  CHECK(dnnl_convolution_forward_desc_init(
    &depthwise, dnnl_forward_inference, dnnl_convolution_direct, arg_md(pd1, DNNL_ARG_DST), &wdw, &bias, &dst, strides,
    pad, pad));
  CHECK(dnnl_primitive_desc_create(&pd2, &depthwise, a2, engine, NULL));
  // Fused: the expansion with the depthwise post-op.
  CHECK(dnnl_primitive_desc_create(&pdf, &expand, af, engine, NULL));
  printf("N%d C%d E%d H%d stride %d: apart %s then %s; fused %s\n", n, c, e, h, stride, implementation(pd1),
    implementation(pd2), implementation(pdf));

  dnnl_primitive_t p1, p2, pf;
  CHECK(dnnl_primitive_create(&p1, pd1));
  CHECK(dnnl_primitive_create(&p2, pd2));
  CHECK(dnnl_primitive_create(&pf, pdf));
  dnnl_memory_t b = filled(pd1, DNNL_ARG_BIAS), m = filled(pd1, DNNL_ARG_DST);
  dnnl_exec_arg_t args1[] = {{DNNL_ARG_SRC, filled(pd1, DNNL_ARG_SRC)}, {DNNL_ARG_WEIGHTS, filled(pd1, DNNL_ARG_WEIGHTS)},
    {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, m}};
  dnnl_exec_arg_t args2[] = {{DNNL_ARG_SRC, m}, {DNNL_ARG_WEIGHTS, filled(pd2, DNNL_ARG_WEIGHTS)}, {DNNL_ARG_BIAS, b},
    {DNNL_ARG_DST, filled(pd2, DNNL_ARG_DST)}};
  dnnl_exec_arg_t argsf[] = {{DNNL_ARG_SRC, filled(pdf, DNNL_ARG_SRC)}, {DNNL_ARG_WEIGHTS, filled(pdf, DNNL_ARG_WEIGHTS)},
    {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, filled(pdf, DNNL_ARG_DST)},
    {DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, filled(pdf, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS)},
    {DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS, b}};
  const int runs = 20, rounds = 5;
  double apart = 0, fused = 0;
  for (int r = 0; r < rounds; r++) {
    double t0 = now_ms();
    for (int i = 0; i < runs; i++) {
      CHECK(dnnl_primitive_execute(p1, stream, 4, args1));
      CHECK(dnnl_primitive_execute(p2, stream, 4, args2));
    }
    CHECK(dnnl_stream_wait(stream));
    double t1 = now_ms();
    for (int i = 0; i < runs; i++) CHECK(dnnl_primitive_execute(pf, stream, 6, argsf));
    CHECK(dnnl_stream_wait(stream));
    double t2 = now_ms();
    apart += (t1 - t0) / runs;
    fused += (t2 - t1) / runs;
  }
  printf("  apart %.3f ms, fused %.3f ms (%.2f×)\n", apart / rounds, fused / rounds, fused / apart);
}

int main(int argc, char **argv) {
  CHECK(dnnl_engine_create(&engine, dnnl_cpu, 0));
  CHECK(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
  static const int mobilenet_v2[][5] = {
    {8, 16, 96, 112, 2}, {8, 24, 144, 56, 1}, {8, 24, 144, 56, 2}, {8, 32, 192, 28, 1}, {8, 32, 192, 28, 2},
    {8, 64, 384, 14, 1}, {8, 96, 576, 14, 1}, {8, 96, 576, 14, 2}, {8, 160, 960, 7, 1}, {1, 16, 96, 112, 2},
  };
  if (argc > 1) {
    for (int i = 1; i + 4 < argc; i += 5)
      block(atoi(argv[i]), atoi(argv[i + 1]), atoi(argv[i + 2]), atoi(argv[i + 3]), atoi(argv[i + 4]));
  } else {
    for (size_t i = 0; i < sizeof mobilenet_v2 / sizeof mobilenet_v2[0]; i++)
      block(mobilenet_v2[i][0], mobilenet_v2[i][1], mobilenet_v2[i][2], mobilenet_v2[i][3], mobilenet_v2[i][4]);
  }
  return 0;
}

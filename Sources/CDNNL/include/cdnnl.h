/// CDNNL: the system-library seam for oneDNN 2.6 (Debian libdnnl-dev), plus small C helpers.
///
/// Swift imports fixed-size C arrays inside structs as tuples, which is clumsy for
/// dnnl_memory_desc_t; the helpers here read and build descriptors through plain pointers.
/// The kernels at the bottom cover the few plain-layout ops oneDNN does not provide, and SiLU,
/// which oneDNN's swish computes slower (silu.c). It also holds Veil's thread team (the OpenMP
/// entry points oneDNN calls, team.c), the allocator's tuning, and the training kernels
/// (BatchNorm and Adam in vectorised C, training_kernels.c). It depends on oneDNN, libgomp and
/// libc only; no library module but VeilTensor imports it (and VeilTensor's tests, for the
/// team's counters and SiLU).
#ifndef VEIL_CDNNL_H
#define VEIL_CDNNL_H

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stddef.h>
#include <stdint.h>

/// The thread team (team.c): the OpenMP entry points oneDNN's OpenMP build calls, defined by
/// Veil so that Veil decides how its threads wait. The thread count is per thread, as in
/// OpenMP; its default is OMP_NUM_THREADS or the cores this process may run on.
void omp_set_num_threads(int n);
int omp_get_max_threads(void);
int omp_get_num_threads(void);
int omp_get_thread_num(void);
int omp_in_parallel(void);
/// `#pragma omp parallel` and `#pragma omp barrier` as GCC emits them (what libdnnl calls):
/// runs `fn(data)` on a team of `num_threads` (0: omp_get_max_threads()), the caller as
/// thread 0, and returns when every thread has; a region inside another, or while the team
/// serves another caller, runs on the calling thread alone.
void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
void GOMP_barrier(void);
/// Marks a stretch of parallel regions close together (an executor's pass): while any is
/// held, the team's threads spin between regions for up to `held_ns` each wait before they
/// sleep; otherwise for `free_ns`. Holds nest and may come from several threads. `on`: 1
/// holds, 2 holds for one pass, which runs pinned (caller and workers each on a CPU of its own)
/// when it starts after idleness on a machine with a free CPU (team.c, pin_for_pass), 0
/// releases.
void veil_team_hold(int on);
void veil_team_set_spin(long held_ns, long free_ns);
/// Parallel regions this process's team has run, and how many threads have gone to sleep
/// waiting (for tests and benchmarks).
unsigned long veil_team_regions(void);
unsigned long veil_team_sleeps(void);
/// Tests only: the last worker out of a region waits `ns` between leaving it and saying so.
void veil_team_set_late_worker(long ns);
/// Pinning of a pass (veil_team_hold(2); team.c, pin_for_pass): 0 never, 1 when it pays (the
/// default), 2 every pass (tests). How many passes ran pinned; the caller's CPU in the last of
/// them, and the CPU the first worker ran its latest region on.
void veil_team_set_placement(int mode);
unsigned long veil_team_placements(void);
void veil_team_last_placement(int *caller_cpu, int *worker_cpu);

/// A float32 descriptor with the plain row-major tag for its rank (a, ab, abc, abcd, ...).
dnnl_status_t veil_md_plain(dnnl_memory_desc_t *md, int ndims, const int64_t *dims);
/// A float32 descriptor whose layout the primitive chooses (format_tag any).
dnnl_status_t veil_md_any(dnnl_memory_desc_t *md, int ndims, const int64_t *dims);
/// A float32 descriptor with explicit strides (elements).
dnnl_status_t veil_md_strided(dnnl_memory_desc_t *md, int ndims, const int64_t *dims,
                              const int64_t *strides);
/// A float32 descriptor with a named tag.
dnnl_status_t veil_md_tag(dnnl_memory_desc_t *md, int ndims, const int64_t *dims,
                          dnnl_format_tag_t tag);
int veil_md_ndims(const dnnl_memory_desc_t *md);
void veil_md_dims(const dnnl_memory_desc_t *md, int64_t *out);
size_t veil_md_size(const dnnl_memory_desc_t *md);
int veil_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b);
/// 1 when the descriptor is dense row-major float32 with no blocking (what NCHW means).
int veil_md_is_plain(const dnnl_memory_desc_t *md);
/// 1 when the descriptor's first dimension is the outermost, dense and unblocked, so that a
/// batch of N items is N equal slices one after the other.
int veil_md_batch_outer(const dnnl_memory_desc_t *md);
/// A descriptor for `dims` laid out like `ref` (same dimension order and channel blocking),
/// e.g. [N,C,1,1] in the 8-channel blocks of an [N,C,H,W] tensor. dnnl_unimplemented when the
/// reference's layout has no such counterpart.
dnnl_status_t veil_md_like(dnnl_memory_desc_t *md, const dnnl_memory_desc_t *ref, const int64_t *dims);
/// A short human-readable form of a layout ("f32 1x64x56x56 aBcd8b"), for logs and errors.
void veil_md_describe(const dnnl_memory_desc_t *md, char *buf, size_t len);

/// Fixes glibc's mmap threshold at 1 MiB so that large tensors are returned to the OS when freed.
void veil_tune_malloc(void);
void veil_malloc_keep_freed(void);

/// Constant, reflect or edge padding of an NCHW-like tensor (any rank), plain layout.
/// pads: begin[0..rank) then end[0..rank), may be negative (cropping).
/// mode: 0 constant, 1 reflect, 2 edge.
void veil_pad_f32(const float *src, const int64_t *src_dims, int rank, const int64_t *pads,
                  int mode, float value, float *dst);

/// Element-wise binary op with numpy broadcasting on plain layouts; op: 0 add, 1 sub, 2 mul, 3 div.
/// a_strides and b_strides are the broadcast strides (0 on broadcast axes) over dst_dims.
void veil_binary_broadcast_f32(const float *a, const int64_t *a_strides, const float *b,
                               const int64_t *b_strides, float *dst, const int64_t *dst_dims,
                               int rank, int op);

/// SiLU (x · sigmoid(x)) of `n` floats, on the calling thread's OpenMP team (silu.c); `dst`
/// may be `src`. Within 2e-7 relative of the exact value.
void veil_silu_f32(float *dst, const float *src, int64_t n);
/// The same on the calling thread alone, with one instruction set: 1 AVX2, 2 AVX-512 (where the
/// CPU has it), 0 the best the CPU has. For tests of each path.
void veil_silu_f32_with(float *dst, const float *src, int64_t n, int isa);

// Training kernels (training_kernels.c), plain layouts; x is [n, c, inner] for the per-channel ones.
/// Per-channel mean and biased variance (two passes), accumulated in double.
void veil_channel_mean_var(const float *x, int64_t n, int64_t c, int64_t inner, double *mean, double *var);
/// xhat = (x − mean)·inv_std and y = gamma·xhat + beta, per channel.
void veil_batchnorm_apply(const float *x, int64_t n, int64_t c, int64_t inner, const float *mean,
                          const float *inv_std, const float *gamma, const float *beta, float *xhat, float *y);
/// Per-channel Σg and Σg·h.
void veil_channel_sums(const float *g, const float *h, int64_t n, int64_t c, int64_t inner, double *sum_g,
                       double *sum_gh);
/// dx = k·(g − mean_g − h·mean_gh), per channel.
void veil_batchnorm_backward(const float *g, const float *h, int64_t n, int64_t c, int64_t inner, const float *k,
                             const float *mean_g, const float *mean_gh, float *dx);
/// y = a·(x − m) + b, per channel: batch normalisation in evaluation mode (a = γ/σ, m = μ,
/// b = β; centring first keeps the precision where x is near μ) and its input gradient
/// (m = b = 0).
void veil_channel_affine(const float *x, int64_t n, int64_t c, int64_t inner, const float *a, const float *m,
                         const float *b, float *y);
/// One Adam step in place: g += wd·w; m, v moving averages; w −= lr·(m/c1)/(√(v/c2) + eps).
void veil_adam_f32(float *w, float *m, float *v, const float *g, int64_t count, float beta1, float beta2, float lr,
                   float c1, float c2, float eps, float weight_decay);

#endif

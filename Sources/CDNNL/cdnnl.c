#include "cdnnl.h"
#include <stdio.h>
#include <string.h>

static dnnl_format_tag_t plain_tag(int ndims) {
  switch (ndims) {
  case 1: return dnnl_a;
  case 2: return dnnl_ab;
  case 3: return dnnl_abc;
  case 4: return dnnl_abcd;
  case 5: return dnnl_abcde;
  case 6: return dnnl_abcdef;
  default: return dnnl_format_tag_undef;
  }
}

dnnl_status_t veil_md_plain(dnnl_memory_desc_t *md, int ndims, const int64_t *dims) {
  /* The strides below live on the stack: a rank beyond oneDNN's is refused, not written past
     (the executor refuses such graphs first, naming the node). */
  if (ndims < 0 || ndims > DNNL_MAX_NDIMS) return dnnl_invalid_arguments;
  dnnl_format_tag_t tag = plain_tag(ndims);
  if (tag == dnnl_format_tag_undef) {
    int64_t strides[DNNL_MAX_NDIMS];
    int64_t s = 1;
    for (int i = ndims - 1; i >= 0; --i) { strides[i] = s; s *= dims[i]; }
    return dnnl_memory_desc_init_by_strides(md, ndims, dims, dnnl_f32, strides);
  }
  return dnnl_memory_desc_init_by_tag(md, ndims, dims, dnnl_f32, tag);
}

dnnl_status_t veil_md_any(dnnl_memory_desc_t *md, int ndims, const int64_t *dims) {
  return dnnl_memory_desc_init_by_tag(md, ndims, dims, dnnl_f32, dnnl_format_tag_any);
}

dnnl_status_t veil_md_strided(dnnl_memory_desc_t *md, int ndims, const int64_t *dims,
                              const int64_t *strides) {
  return dnnl_memory_desc_init_by_strides(md, ndims, dims, dnnl_f32, strides);
}

dnnl_status_t veil_md_tag(dnnl_memory_desc_t *md, int ndims, const int64_t *dims,
                          dnnl_format_tag_t tag) {
  return dnnl_memory_desc_init_by_tag(md, ndims, dims, dnnl_f32, tag);
}

int veil_md_ndims(const dnnl_memory_desc_t *md) { return md->ndims; }

void veil_md_dims(const dnnl_memory_desc_t *md, int64_t *out) {
  for (int i = 0; i < md->ndims; ++i) out[i] = md->dims[i];
}

size_t veil_md_size(const dnnl_memory_desc_t *md) { return dnnl_memory_desc_get_size(md); }

int veil_md_equal(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b) {
  return dnnl_memory_desc_equal(a, b);
}

int veil_md_is_plain(const dnnl_memory_desc_t *md) {
  if (md->format_kind != dnnl_blocked || md->data_type != dnnl_f32) return 0;
  const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
  if (b->inner_nblks != 0 || md->offset0 != 0) return 0;
  int64_t s = 1;
  for (int i = md->ndims - 1; i >= 0; --i) {
    if (md->padded_dims[i] != md->dims[i]) return 0;
    if (md->dims[i] != 1 && b->strides[i] != s) return 0;
    s *= md->dims[i];
  }
  return 1;
}

int veil_md_batch_outer(const dnnl_memory_desc_t *md) {
  if (md->format_kind != dnnl_blocked || md->ndims < 1) return 0;
  const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
  for (int k = 0; k < b->inner_nblks; ++k)
    if (b->inner_idxs[k] == 0) return 0;
  if (md->offset0 != 0) return 0;
  /* The batch stride must equal the size of one item, and be the largest stride. */
  int64_t item = (int64_t)dnnl_memory_desc_get_size(md) / 4 / (md->padded_dims[0] ? md->padded_dims[0] : 1);
  if (md->dims[0] > 1 && b->strides[0] != item) return 0;
  return 1;
}

void veil_md_describe(const dnnl_memory_desc_t *md, char *buf, size_t len) {
  size_t n = 0;
  #define PUT(...) do { int w = snprintf(buf + n, n < len ? len - n : 0, __VA_ARGS__); if (w > 0) n += (size_t)w; } while (0)
  for (int i = 0; i < md->ndims; ++i) PUT(i ? "x%lld" : "%lld", (long long)md->dims[i]);
  if (md->format_kind == dnnl_format_kind_any) { PUT(" any"); return; }
  if (md->format_kind != dnnl_blocked) {
    /* Winograd's and RNN's packed weights: no strides to print, and two of them with the same
       dims may differ (tile and block sizes follow the layer's spatial size), so the name
       carries a hash of the whole descriptor: caches key primitives by this text. */
    const unsigned char *p = (const unsigned char *)md;
    unsigned long long h = 1469598103934665603ULL;
    for (size_t i = 0; i < sizeof(*md); ++i) { h ^= p[i]; h *= 1099511628211ULL; }
    PUT(" opaque %016llx", h);
    return;
  }
  const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
  PUT(" strides");
  for (int i = 0; i < md->ndims; ++i) PUT(i ? ",%lld" : " %lld", (long long)b->strides[i]);
  for (int k = 0; k < b->inner_nblks; ++k) PUT(" %c%lld", 'a' + (int)b->inner_idxs[k], (long long)b->inner_blks[k]);
  if (md->offset0) PUT(" +%lld", (long long)md->offset0);
  #undef PUT
  if (n >= len && len) buf[len - 1] = 0;
}

void veil_pad_f32(const float *src, const int64_t *src_dims, int rank, const int64_t *pads,
                  int mode, float value, float *dst) {
  int64_t dst_dims[DNNL_MAX_NDIMS], sstr[DNNL_MAX_NDIMS];
  int64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    dst_dims[i] = src_dims[i] + pads[i] + pads[rank + i];
    total *= dst_dims[i];
  }
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; --i) { sstr[i] = s; s *= src_dims[i]; }
  int64_t idx[DNNL_MAX_NDIMS] = {0};
  for (int64_t o = 0; o < total; ++o) {
    int64_t off = 0;
    int inside = 1;
    for (int d = 0; d < rank; ++d) {
      int64_t i = idx[d] - pads[d];
      int64_t n = src_dims[d];
      if (i < 0 || i >= n) {
        if (mode == 0) { inside = 0; break; }
        if (mode == 1) {
          if (n == 1) i = 0;
          else {
            int64_t period = 2 * (n - 1);
            i = i % period; if (i < 0) i += period;
            if (i >= n) i = period - i;
          }
        } else {
          i = i < 0 ? 0 : n - 1;
        }
      }
      off += i * sstr[d];
    }
    dst[o] = inside ? src[off] : value;
    for (int d = rank - 1; d >= 0; --d) {
      if (++idx[d] < dst_dims[d]) break;
      idx[d] = 0;
    }
  }
}

void veil_binary_broadcast_f32(const float *a, const int64_t *a_strides, const float *b,
                               const int64_t *b_strides, float *dst, const int64_t *dst_dims,
                               int rank, int op) {
  if (rank == 0) {
    float x = a[0], y = b[0];
    dst[0] = op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : x / y;
    return;
  }
  int64_t total = 1;
  for (int i = 0; i < rank; ++i) total *= dst_dims[i];
  int64_t inner = dst_dims[rank - 1];
  int64_t as = a_strides[rank - 1], bs = b_strides[rank - 1];
  int64_t idx[DNNL_MAX_NDIMS] = {0};
  for (int64_t o = 0; o < total; o += inner) {
    int64_t ao = 0, bo = 0;
    for (int d = 0; d < rank - 1; ++d) { ao += idx[d] * a_strides[d]; bo += idx[d] * b_strides[d]; }
    const float *pa = a + ao, *pb = b + bo;
    float *pd = dst + o;
    switch (op) {
    case 0: for (int64_t i = 0; i < inner; ++i) pd[i] = pa[i * as] + pb[i * bs]; break;
    case 1: for (int64_t i = 0; i < inner; ++i) pd[i] = pa[i * as] - pb[i * bs]; break;
    case 2: for (int64_t i = 0; i < inner; ++i) pd[i] = pa[i * as] * pb[i * bs]; break;
    default: for (int64_t i = 0; i < inner; ++i) pd[i] = pa[i * as] / pb[i * bs]; break;
    }
    for (int d = rank - 2; d >= 0; --d) {
      if (++idx[d] < dst_dims[d]) break;
      idx[d] = 0;
    }
  }
}

dnnl_status_t veil_md_like(dnnl_memory_desc_t *md, const dnnl_memory_desc_t *ref, const int64_t *dims) {
  if (ref->format_kind != dnnl_blocked) return dnnl_unimplemented;
  const dnnl_blocking_desc_t *b = &ref->format_desc.blocking;
  int n = ref->ndims;
  if (b->inner_nblks == 0) {
    /* Same dimension order as the reference, dense. */
    int order[DNNL_MAX_NDIMS];
    for (int i = 0; i < n; ++i) order[i] = i;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j)
        if (b->strides[order[j]] > b->strides[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    int64_t strides[DNNL_MAX_NDIMS];
    int64_t s = 1;
    for (int k = n - 1; k >= 0; --k) { strides[order[k]] = s; s *= dims[order[k]]; }
    return dnnl_memory_desc_init_by_strides(md, n, dims, dnnl_f32, strides);
  }
  if (b->inner_nblks == 1 && b->inner_idxs[0] == 1 && n == 4) {
    switch (b->inner_blks[0]) {
    case 4: return dnnl_memory_desc_init_by_tag(md, n, dims, dnnl_f32, dnnl_aBcd4b);
    case 8: return dnnl_memory_desc_init_by_tag(md, n, dims, dnnl_f32, dnnl_aBcd8b);
    case 16: return dnnl_memory_desc_init_by_tag(md, n, dims, dnnl_f32, dnnl_aBcd16b);
    default: break;
    }
  }
  return dnnl_unimplemented;
}

#include <malloc.h>
void veil_tune_malloc(void) {
  /* glibc raises its mmap threshold each time a large block is freed, after which big
     tensors come from the heap and freed weights stay resident. A fixed 1 MiB threshold keeps
     every tensor-sized block in its own mapping, returned to the OS on free. */
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
}

void veil_malloc_keep_freed(void) {
  /* A process in its steady state (a server that has loaded and compiled its models, a
     benchmark between its timed runs) frees and allocates blocks of the same sizes on every
     request. Past the 1 MiB threshold each one would be a fresh mapping, paying a page fault
     and the kernel's zeroing per 4 KiB on every request. From here on blocks up to 32 MiB come
     from the heap and, freed, stay there for the next request (up to 64 MiB at its top before
     glibc trims it); larger ones are still mapped and unmapped on their own. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

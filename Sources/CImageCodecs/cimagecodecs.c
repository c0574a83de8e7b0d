// The setjmp/longjmp side of Veil's image codecs; see include/cimagecodecs.h.
#include "cimagecodecs.h"

// jpeglib.h needs FILE declared first.
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static void set_error(veil_codec_error *error, size_t offset, const char *message) {
  snprintf(error->message, sizeof error->message, "%s", message);
  error->offset = offset;
}

void veil_codec_free(void *p) { free(p); }

// MARK: - PNG

typedef struct {
  const uint8_t *data;
  size_t size;
  size_t pos;
  veil_codec_error *error;
  /// The last warning: libpng warns with the reason ("Image width exceeds user limit in IHDR")
  /// and then fails with a generic error ("Invalid IHDR data").
  char warning[128];
} png_source;

static void png_fail(png_structp png, png_const_charp message) {
  png_source *src = (png_source *)png_get_error_ptr(png);
  if (src->warning[0]) {
    char both[256];
    snprintf(both, sizeof both, "%s (%s)", message, src->warning);
    set_error(src->error, src->pos, both);
  } else {
    set_error(src->error, src->pos, message);
  }
  png_longjmp(png, 1);
}

// Warnings (a bad CRC on an ancillary chunk, an unknown chunk) leave the pixels intact; the last
// one is kept to explain a later error.
static void png_warn(png_structp png, png_const_charp message) {
  png_source *src = (png_source *)png_get_error_ptr(png);
  if (src) snprintf(src->warning, sizeof src->warning, "%s", message);
}

static int over_limit(const veil_decode_limits *limits, uint64_t width, uint64_t height) {
  return width * height > limits->max_pixels || width > limits->max_side || height > limits->max_side;
}

static void png_read_bytes(png_structp png, png_bytep out, size_t n) {
  png_source *src = (png_source *)png_get_io_ptr(png);
  if (n > src->size - src->pos) png_error(png, "file ends early (truncated)");
  memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

// Every chunk up to IEND must fit in the bytes there are. libpng 1.6.39 allocates some
// ancillary chunks (eXIf) at their declared length before it reads them and before its chunk
// malloc limit applies, so a 30-byte file could ask for 2 GiB; checked here, the declared
// lengths are bounded by the file itself.
static int png_chunks_fit(const uint8_t *data, size_t size, veil_codec_error *error) {
  size_t pos = 8;
  while (size - pos >= 8) {
    const uint8_t *p = data + pos;
    uint32_t length = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (length > 0x7fffffffu || (size_t)length > size - pos - 8 || size - pos - 8 - length < 4) {
      char type[5];
      for (int i = 0; i < 4; i++) type[i] = p[4 + i] >= 0x20 && p[4 + i] < 0x7f ? (char)p[4 + i] : '?';
      type[4] = 0;
      char message[200];
      snprintf(message, sizeof message, "chunk '%s' declares %u bytes, the file has %zu left after its header (truncated)",
               type, length, size - pos - 8);
      set_error(error, pos, message);
      return 0;
    }
    if (memcmp(p + 4, "IEND", 4) == 0) break;
    pos += 12 + (size_t)length;
  }
  return 1;
}

// Ancillary chunks Veil never uses are skipped unread (no inflating, no allocation): only
// tRNS (alpha of palette and grey images) changes the pixels Veil returns.
static const png_byte png_ignored_chunks[] = {
    'b', 'K', 'G', 'D', 0, 'c', 'H', 'R', 'M', 0, 'e', 'X', 'I', 'f', 0, 'g', 'A', 'M', 'A', 0, 'h', 'I', 'S', 'T', 0,
    'i', 'C', 'C', 'P', 0, 'i', 'T', 'X', 't', 0, 'o', 'F', 'F', 's', 0, 'p', 'C', 'A', 'L', 0, 'p', 'H', 'Y', 's', 0,
    's', 'B', 'I', 'T', 0, 's', 'C', 'A', 'L', 0, 's', 'P', 'L', 'T', 0, 's', 'R', 'G', 'B', 0, 't', 'E', 'X', 't', 0,
    't', 'I', 'M', 'E', 0, 'z', 'T', 'X', 't', 0,
};

int veil_png_decode(const uint8_t *data, size_t size, const veil_decode_limits *limits, veil_decoded_image *out,
                    veil_codec_error *error) {
  memset(out, 0, sizeof *out);
  out->orientation = 1;
  set_error(error, 0, "");
  if (size < 8 || png_sig_cmp(data, 0, 8) != 0) {
    set_error(error, 0, "not a PNG file: the first 8 bytes are not the PNG signature");
    return 1;
  }
  if (!png_chunks_fit(data, size, error)) return 1;
  png_source src = {data, size, 0, error, ""};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_fail, png_warn);
  if (!png) {
    set_error(error, 0, "libpng could not allocate its reader");
    return 1;
  }
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    set_error(error, 0, "libpng could not allocate its info struct");
    return 1;
  }
  uint8_t *volatile pixels = NULL;
  png_bytep *volatile rows = NULL;
  if (setjmp(png_jmpbuf(png))) {
    free(pixels);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    return 1;
  }
  png_set_read_fn(png, &src, png_read_bytes);
  // Inside libpng: IHDR sides, and what ancillary chunks may cost (their inflated size and how
  // many are kept). The pixel count is checked below, before any row is allocated.
  uint32_t side = limits->max_side < 0x7fffffffu ? limits->max_side : 0x7fffffffu;
  png_set_user_limits(png, side, side);
  png_set_chunk_cache_max(png, limits->max_chunks);
  png_set_chunk_malloc_max(png, limits->max_chunk_bytes);
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, 0);
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, png_ignored_chunks, (int)(sizeof png_ignored_chunks / 5));
  png_read_info(png, info);
  png_uint_32 declared_width = png_get_image_width(png, info);
  png_uint_32 declared_height = png_get_image_height(png, info);
  if (over_limit(limits, declared_width, declared_height)) {
    out->width = declared_width;
    out->height = declared_height;
    set_error(error, src.pos, "the image is over the pixel limit");
    png_destroy_read_struct(&png, &info, NULL);
    return VEIL_CODEC_OVER_LIMIT;
  }
  int color = png_get_color_type(png, info);
  int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (depth == 16) png_set_swap(png);
#endif
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  png_uint_32 width = png_get_image_width(png, info);
  png_uint_32 height = png_get_image_height(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  if (height == 0 || rowbytes == 0 || rowbytes > ((size_t)1 << 40) / height) png_error(png, "image too large");
  pixels = malloc(rowbytes * height);
  rows = malloc(sizeof(png_bytep) * height);
  if (!pixels || !rows) png_error(png, "out of memory for the pixels");
  for (png_uint_32 y = 0; y < height; y++) rows[y] = pixels + (size_t)y * rowbytes;
  png_read_image(png, rows);
  png_read_end(png, NULL);
  out->width = width;
  out->height = height;
  out->channels = png_get_channels(png, info);
  out->bit_depth = png_get_bit_depth(png, info);
  out->pixels = pixels;
  free(rows);
  png_destroy_read_struct(&png, &info, NULL);
  return 0;
}

typedef struct {
  uint8_t *data;
  size_t size;
  size_t capacity;
  veil_codec_error *error;
} png_sink;

static void png_write_bytes(png_structp png, png_bytep bytes, size_t n) {
  png_sink *sink = (png_sink *)png_get_io_ptr(png);
  if (sink->size + n > sink->capacity) {
    size_t capacity = sink->capacity ? sink->capacity : 4096;
    while (capacity < sink->size + n) capacity *= 2;
    uint8_t *grown = realloc(sink->data, capacity);
    if (!grown) png_error(png, "out of memory for the encoded PNG");
    sink->data = grown;
    sink->capacity = capacity;
  }
  memcpy(sink->data + sink->size, bytes, n);
  sink->size += n;
}

static void png_flush_nothing(png_structp png) { (void)png; }

static void png_warn_writing(png_structp png, png_const_charp message) {
  (void)png;
  (void)message;
}

static void png_fail_writing(png_structp png, png_const_charp message) {
  png_sink *sink = (png_sink *)png_get_error_ptr(png);
  set_error(sink->error, sink->size, message);
  png_longjmp(png, 1);
}

int veil_png_encode(const uint8_t *pixels, uint32_t width, uint32_t height, uint32_t channels,
                    uint8_t **png_out, size_t *png_size, veil_codec_error *error) {
  *png_out = NULL;
  *png_size = 0;
  set_error(error, 0, "");
  static const int types[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                               PNG_COLOR_TYPE_RGB_ALPHA};
  if (channels < 1 || channels > 4 || width == 0 || height == 0) {
    set_error(error, 0, "PNG encoding needs 1 to 4 channels and a non-empty image");
    return 1;
  }
  png_sink sink = {NULL, 0, 0, error};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &sink, png_fail_writing, png_warn_writing);
  if (!png) {
    set_error(error, 0, "libpng could not allocate its writer");
    return 1;
  }
  png_infop info = png_create_info_struct(png);
  png_bytep *volatile rows = NULL;
  if (!info || setjmp(png_jmpbuf(png))) {
    free(rows);
    free(sink.data);
    png_destroy_write_struct(&png, &info);
    if (!info) set_error(error, 0, "libpng could not allocate its info struct");
    return 1;
  }
  png_set_write_fn(png, &sink, png_write_bytes, png_flush_nothing);
  png_set_IHDR(png, info, width, height, 8, types[channels], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  rows = malloc(sizeof(png_bytep) * height);
  if (!rows) png_error(png, "out of memory for the row table");
  for (uint32_t y = 0; y < height; y++) rows[y] = (png_bytep)pixels + (size_t)y * width * channels;
  png_set_rows(png, info, rows);
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
  free(rows);
  png_destroy_write_struct(&png, &info);
  *png_out = sink.data;
  *png_size = sink.size;
  return 0;
}

// MARK: - JPEG

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
} jpeg_failure;

static void jpeg_fail(j_common_ptr cinfo) { longjmp(((jpeg_failure *)cinfo->err)->jump, 1); }

// A progressive JPEG may hold any number of scans, each a pass over the coefficients: stop at
// the limit (libjpeg-turbo's own tools do the same with -maxscans).
typedef struct {
  struct jpeg_progress_mgr pub;
  uint32_t max_scans;
  int over;
} jpeg_scan_limit;

static void jpeg_count_scans(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  j_decompress_ptr d = (j_decompress_ptr)cinfo;
  jpeg_scan_limit *limit = (jpeg_scan_limit *)cinfo->progress;
  if (d->input_scan_number > 0 && (uint32_t)d->input_scan_number > limit->max_scans) {
    limit->over = 1;
    jpeg_fail(cinfo);
  }
}

// libjpeg only warns when a scan ends early or a Huffman code is bad, then pads the rest of
// the image with grey. Those pixels were never in the file, so treat them as errors; the
// other warnings (extraneous bytes between markers, odd progression) leave the pixels intact.
static void jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  int code = cinfo->err->msg_code;
  if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE) jpeg_fail(cinfo);
  cinfo->err->num_warnings++;
}

static uint32_t read16(const uint8_t *p, int little) {
  return little ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | (uint32_t)p[1];
}

static uint32_t read32(const uint8_t *p, int little) {
  return little ? read16(p, 1) | read16(p + 2, 1) << 16 : read16(p, 0) << 16 | read16(p + 2, 0);
}

// The Orientation tag (0x0112, SHORT) of IFD0 in an APP1 "Exif" segment; 1 when absent.
static uint32_t exif_orientation(jpeg_saved_marker_ptr marker) {
  for (; marker; marker = marker->next) {
    if (marker->marker != JPEG_APP0 + 1 || marker->data_length < 6 + 8 + 2) continue;
    if (memcmp(marker->data, "Exif\0\0", 6) != 0) continue;
    const uint8_t *tiff = marker->data + 6;
    size_t n = marker->data_length - 6;
    int little;
    if (tiff[0] == 'I' && tiff[1] == 'I') little = 1;
    else if (tiff[0] == 'M' && tiff[1] == 'M') little = 0;
    else continue;
    uint32_t ifd = read32(tiff + 4, little);
    if (ifd < 8 || ifd > n - 2) continue;
    uint32_t entries = read16(tiff + ifd, little);
    for (uint32_t i = 0; i < entries; i++) {
      size_t e = ifd + 2 + 12 * (size_t)i;
      if (e + 12 > n) break;
      if (read16(tiff + e, little) == 0x0112 && read16(tiff + e + 2, little) == 3) {
        uint32_t v = read16(tiff + e + 8, little);
        if (v >= 1 && v <= 8) return v;
      }
    }
  }
  return 1;
}

int veil_jpeg_decode(const uint8_t *data, size_t size, const veil_decode_limits *limits, veil_decoded_image *out,
                     veil_codec_error *error) {
  memset(out, 0, sizeof *out);
  out->orientation = 1;
  set_error(error, 0, "");
  if (size < 3 || data[0] != 0xFF || data[1] != 0xD8) {
    set_error(error, 0, "not a JPEG file: it does not start with the SOI marker FF D8");
    return 1;
  }
  struct jpeg_decompress_struct cinfo;
  jpeg_failure failure;
  jpeg_scan_limit scans;
  memset(&scans, 0, sizeof scans);
  scans.pub.progress_monitor = jpeg_count_scans;
  scans.max_scans = limits->max_scans;
  uint8_t *volatile pixels = NULL;
  cinfo.err = jpeg_std_error(&failure.pub);
  failure.pub.error_exit = jpeg_fail;
  failure.pub.emit_message = jpeg_message;
  if (setjmp(failure.jump)) {
    char message[JMSG_LENGTH_MAX];
    // Read through a volatile pointer: `scans` changed after setjmp, in a callee.
    if (((volatile jpeg_scan_limit *)&scans)->over) {
      snprintf(message, sizeof message, "more than %u progressive scans (the decoder's limit)", limits->max_scans);
    } else if (cinfo.err->msg_code == JERR_NO_BACKING_STORE) {
      snprintf(message, sizeof message, "the image needs more decoder memory than its pixel limit allows");
    } else {
      (*cinfo.err->format_message)((j_common_ptr)&cinfo, message);
    }
    size_t offset = size;
    if (cinfo.src && cinfo.src->next_input_byte >= data && cinfo.src->next_input_byte <= data + size)
      offset = (size_t)(cinfo.src->next_input_byte - data);
    set_error(error, offset, message);
    free(pixels);
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &scans.pub;
  // Whole-image coefficient buffers (progressive and multi-scan files) within what the pixel
  // limit implies: 3 components of 2-byte coefficients per pixel, plus working room.
  // (0 is libjpeg's "no limit", for limits too large to matter.)
  uint64_t budget = limits->max_pixels > (1ull << 40) ? 0 : limits->max_pixels * 6 + (64ull << 20);
  cinfo.mem->max_memory_to_use = (long)budget;
  jpeg_mem_src(&cinfo, data, (unsigned long)size);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  if (over_limit(limits, cinfo.image_width, cinfo.image_height)) {
    out->width = cinfo.image_width;
    out->height = cinfo.image_height;
    size_t offset = cinfo.src->next_input_byte >= data ? (size_t)(cinfo.src->next_input_byte - data) : 0;
    set_error(error, offset, "the image is over the pixel limit");
    jpeg_destroy_decompress(&cinfo);
    return VEIL_CODEC_OVER_LIMIT;
  }
  if (cinfo.num_components != 1 && cinfo.num_components != 3 && cinfo.jpeg_color_space != JCS_CMYK &&
      cinfo.jpeg_color_space != JCS_YCCK) {
    cinfo.err->msg_code = JERR_CONVERSION_NOTIMPL;
    jpeg_fail((j_common_ptr)&cinfo);
  }
  out->orientation = exif_orientation(cinfo.marker_list);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    cinfo.err->msg_code = JERR_CONVERSION_NOTIMPL;
    jpeg_fail((j_common_ptr)&cinfo);
  }
  cinfo.out_color_space = cinfo.jpeg_color_space == JCS_GRAYSCALE ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  size_t stride = (size_t)cinfo.output_width * cinfo.output_components;
  pixels = malloc(stride * cinfo.output_height);
  if (!pixels) {
    cinfo.err->msg_code = JERR_OUT_OF_MEMORY;
    jpeg_fail((j_common_ptr)&cinfo);
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = pixels + (size_t)cinfo.output_scanline * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  out->width = cinfo.output_width;
  out->height = cinfo.output_height;
  out->channels = (uint32_t)cinfo.output_components;
  out->bit_depth = 8;
  out->pixels = pixels;
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

// MARK: - gzip

int veil_read_maybe_gzip(const char *path, size_t max_bytes, uint8_t **bytes, size_t *size, veil_codec_error *error) {
  *bytes = NULL;
  *size = 0;
  set_error(error, 0, "");
  gzFile file = gzopen(path, "rb");
  if (!file) {
    set_error(error, 0, "cannot open the file");
    return 1;
  }
  size_t capacity = 1 << 20, used = 0;
  uint8_t *buffer = malloc(capacity);
  for (;;) {
    if (!buffer) {
      gzclose(file);
      set_error(error, used, "out of memory");
      return 1;
    }
    if (used > max_bytes) {
      char message[160];
      snprintf(message, sizeof message, "more than %zu bytes once inflated (the reader's limit)", max_bytes);
      set_error(error, used, message);
      free(buffer);
      gzclose(file);
      return 1;
    }
    if (used == capacity) {
      capacity *= 2;
      uint8_t *grown = realloc(buffer, capacity);
      if (!grown) free(buffer);
      buffer = grown;
      continue;
    }
    // Never read more than one byte past the limit, so the check above sees it.
    size_t want = capacity - used;
    if (max_bytes < SIZE_MAX && want > max_bytes + 1 - used) want = max_bytes + 1 - used;
    int n = gzread(file, buffer + used, (unsigned)(want > (1u << 30) ? (1u << 30) : want));
    if (n < 0) {
      int code;
      const char *message = gzerror(file, &code);
      set_error(error, used, message);
      free(buffer);
      gzclose(file);
      return 1;
    }
    if (n == 0) {
      int code;
      const char *message = gzerror(file, &code);
      if (code != Z_OK) {
        set_error(error, used, message);
        free(buffer);
        gzclose(file);
        return 1;
      }
      break;
    }
    used += (size_t)n;
  }
  gzclose(file);
  *bytes = buffer;
  *size = used;
  return 0;
}

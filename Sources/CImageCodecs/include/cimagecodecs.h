// C side of Veil's image codecs: libpng, libjpeg-turbo and zlib (Debian's libpng-dev,
// libjpeg62-turbo-dev, zlib1g-dev). The libraries report fatal errors by longjmp, which Swift
// cannot catch, so every setjmp lives here: each entry point returns 0 on success, or non-zero
// with a message and the byte offset reached, and never exits or aborts the process.
#ifndef VEIL_CIMAGECODECS_H
#define VEIL_CIMAGECODECS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  char message[256];
  /// How far into the input the decoder had read when it failed (bytes).
  size_t offset;
} veil_codec_error;

/// A decoded image: interleaved rows, `channels` samples per pixel, each 8 or 16 bits (16-bit
/// samples in native byte order). `pixels` is malloc'd; free it with `veil_codec_free`.
typedef struct {
  uint32_t width;
  uint32_t height;
  uint32_t channels;
  uint32_t bit_depth;
  /// EXIF orientation (1-8) of a JPEG, 1 when absent or not a JPEG.
  uint32_t orientation;
  void *pixels;
} veil_decoded_image;

/// Decodes a PNG held in memory: grey, grey+alpha, RGB, RGBA, palette (expanded to RGB or RGBA
/// when it has transparency), 1/2/4-bit grey (expanded to 8), 8 or 16 bits, interlaced or not.
int veil_png_decode(const uint8_t *data, size_t size, veil_decoded_image *out, veil_codec_error *error);

/// Decodes a baseline or progressive JPEG held in memory to grey (1 channel) or RGB (3), and
/// reads the EXIF orientation tag. Corrupt-data warnings (a truncated scan) count as errors.
int veil_jpeg_decode(const uint8_t *data, size_t size, veil_decoded_image *out, veil_codec_error *error);

/// Encodes 8-bit grey (1), grey+alpha (2), RGB (3) or RGBA (4) rows as a PNG in memory; `*png`
/// is malloc'd, free it with `veil_codec_free`.
int veil_png_encode(const uint8_t *pixels, uint32_t width, uint32_t height, uint32_t channels,
                    uint8_t **png, size_t *png_size, veil_codec_error *error);

/// Reads a whole file, inflating it when it is gzip-compressed (a plain file passes through):
/// IDX files ship as `*-ubyte.gz`. `*bytes` is malloc'd, free it with `veil_codec_free`.
int veil_read_maybe_gzip(const char *path, uint8_t **bytes, size_t *size, veil_codec_error *error);

void veil_codec_free(void *p);

#endif

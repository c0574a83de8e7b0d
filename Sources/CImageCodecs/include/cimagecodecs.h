/// CImageCodecs: the C side of Veil's image codecs: libpng, libjpeg-turbo and zlib (Debian's libpng-dev,
/// libjpeg62-turbo-dev, zlib1g-dev). The libraries report fatal errors by longjmp, which Swift
/// cannot catch, so every setjmp lives here: each entry point returns 0 on success, or non-zero
/// with a message and the byte offset reached, and never exits or aborts the process.
/// It depends on those three libraries and libc only; VeilData alone imports it.
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

/// What a decoder may be asked for, checked inside it once the header is read and before the
/// pixels are allocated.
typedef struct {
  /// Most pixels (width × height, computed in 64 bits).
  uint64_t max_pixels;
  /// Most pixels on one side (PNG: libpng's user limits, at most 0x7fffffff).
  uint32_t max_side;
  /// Most scans of a progressive JPEG (each may make a pass over every coefficient).
  uint32_t max_scans;
  /// Largest ancillary chunk libpng inflates or keeps (iCCP, zTXt, iTXt, unknown), in bytes.
  uint32_t max_chunk_bytes;
  /// Most ancillary chunks libpng keeps (text, sPLT, unknown).
  uint32_t max_chunks;
} veil_decode_limits;

/// Returned, with `width` and `height` filled in, when the image is over `max_pixels` or
/// `max_side`: the file is fine, the caller's limit is not.
#define VEIL_CODEC_OVER_LIMIT 2

/// Decodes a PNG held in memory: grey, grey+alpha, RGB, RGBA, palette (expanded to RGB or RGBA
/// when it has transparency), 1/2/4-bit grey (expanded to 8), 8 or 16 bits, interlaced or not.
int veil_png_decode(const uint8_t *data, size_t size, const veil_decode_limits *limits, veil_decoded_image *out,
                    veil_codec_error *error);

/// Decodes a baseline or progressive JPEG held in memory to grey (1 channel) or RGB (3), and
/// reads the EXIF orientation tag. Corrupt-data warnings (a truncated scan) count as errors.
/// The size is checked after `jpeg_read_header`, which reads the whole marker sequence up to the
/// first scan, so no segment placed before the frame header can hide it.
int veil_jpeg_decode(const uint8_t *data, size_t size, const veil_decode_limits *limits, veil_decoded_image *out,
                     veil_codec_error *error);

/// Encodes 8-bit grey (1), grey+alpha (2), RGB (3) or RGBA (4) rows as a PNG in memory; `*png`
/// is malloc'd, free it with `veil_codec_free`.
int veil_png_encode(const uint8_t *pixels, uint32_t width, uint32_t height, uint32_t channels,
                    uint8_t **png, size_t *png_size, veil_codec_error *error);

/// Reads a whole file, inflating it when it is gzip-compressed (a plain file passes through):
/// IDX files ship as `*-ubyte.gz`. More than `max_bytes` after inflating is an error (a small
/// gzip file can inflate a thousandfold). `*bytes` is malloc'd, free it with `veil_codec_free`.
int veil_read_maybe_gzip(const char *path, size_t max_bytes, uint8_t **bytes, size_t *size, veil_codec_error *error);

void veil_codec_free(void *p);

#endif

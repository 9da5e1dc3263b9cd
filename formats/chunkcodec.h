/* Chunked compression of tensor bytes. The raw bytes are cut into chunks (a whole number of
 * elements each); every chunk is compressed alone, so chunks decompress in parallel straight
 * into their place in the destination buffer.
 *
 * Per chunk: transform by dtype, then one zstd frame with the content size in its header.
 *   16-bit (F16, BF16, U16, I16): byte-grouped, all high bytes (sign + exponent bits) then all
 *                                 low bytes (mantissa bits);
 *   32-bit (F32, I32, U32):       split into 4 byte planes, most significant plane first;
 *   other dtypes:                 as is.
 * A chunk whose frame is not below 95% of its raw size is stored raw (untransformed). */
#ifndef KV_CHUNKCODEC_H
#define KV_CHUNKCODEC_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "base/pool.h" /* kv_pool_run: the codec's threads */

#define KV_CHUNK_DEFAULT_SIZE     ((size_t)2 << 20) /* raw bytes per chunk */
#define KV_CHUNK_MAX_SIZE         ((size_t)64 << 20) /* bound accepted when decoding */
/* Default profile: zstd level 1 with a 2^8-entry match table. Measured (docs/BUNDLE.md) on
 * transformed weights, few and short matches are found, almost everything is entropy-coded
 * literals: level-19 ratios (0.670 of raw BF16) at level-1 speed. */
#define KV_CHUNK_DEFAULT_LEVEL    1
#define KV_CHUNK_DEFAULT_HASH_LOG 8
#define KV_CHUNK_RAW_PERCENT      95 /* stored raw unless frame < 95% of raw */

typedef enum { KV_CODEC_RAW = 0, KV_CODEC_ZSTD = 1 } kv_chunk_codec;

typedef enum {
    KV_XFORM_NONE = 0,
    KV_XFORM_BYTEGROUP2 = 1, /* 2-byte elements: high bytes, then low bytes */
    KV_XFORM_BYTEPLANE4 = 2, /* 4-byte elements: byte 3 plane, 2, 1, 0 */
} kv_chunk_transform;

typedef struct {
    uint64_t raw_offset; /* into the destination buffer */
    uint64_t raw_size; /* bytes after decoding */
    uint64_t stored_offset; /* into the stored bytes */
    uint64_t stored_size;
    kv_chunk_codec codec;
    kv_chunk_transform transform; /* KV_XFORM_NONE for raw chunks */
    uint32_t stored_crc32c; /* of the stored bytes: zstd does not promise to notice a
                                   * flipped bit, so decode checks this first */
} kv_chunk;

typedef struct {
    size_t chunk_size; /* raw bytes per chunk, rounded down to whole elements; 0 = default */
    int level; /* zstd level 1..22; 0 = the default profile (level and hash log) */
    int hash_log; /* zstd hashLog 6..30 override; 0 = the level's own (default profile: 8) */
    int threads; /* 0 = online CPUs */
} kv_codec_opts;

typedef struct {
    kv_chunk *chunks; /* raw_offset from 0, stored_offset from 0, both contiguous */
    int n_chunks;
    uint8_t *stored; /* concatenated chunk bytes */
    size_t stored_size;
} kv_encoded;

const char *kv_codec_name(kv_chunk_codec c); /* "raw", "zstd" */
const char *kv_transform_name(kv_chunk_transform t); /* "none", "bytegroup2", "byteplane4" */
int kv_codec_parse(const char *name, kv_chunk_codec *out); /* 0 or -1 */
int kv_transform_parse(const char *name, kv_chunk_transform *out); /* 0 or -1 */
kv_chunk_transform kv_transform_for(kv_dtype t); /* by element size */
/* element size a transform needs (1 for none) */
size_t kv_transform_elem_size(kv_chunk_transform t);

/* forward / inverse transform of n bytes (n a multiple of the element size); no overlap */
void kv_transform_apply(kv_chunk_transform t, uint8_t *dst, const uint8_t *src, size_t n);
void kv_transform_undo(kv_chunk_transform t, uint8_t *dst, const uint8_t *src, size_t n);

/* n bytes of dtype -> chunk table + stored bytes (kv_encoded_free after). n must be a whole
 * number of elements. Same input and options give the same output whatever the threads. */
int kv_chunk_encode(const void *buf, size_t n, kv_dtype dtype, const kv_codec_opts *opts,
                    kv_encoded *out, kv_error *err);
void kv_encoded_free(kv_encoded *e);

/* Checks a chunk table against the stored and destination sizes before any decoding: every
 * chunk inside both buffers, raw_size <= KV_CHUNK_MAX_SIZE and a whole number of transform
 * elements, raw chunks with stored_size == raw_size. label names the source in errors. */
int kv_chunk_table_check(const kv_chunk *chunks, int n_chunks, size_t stored_size, size_t dst_size,
                         const char *label, kv_error *err);

/* Decodes every chunk into dst + raw_offset, in parallel (threads 0 = online CPUs). Each zstd
 * chunk must be exactly one frame that declares and yields exactly raw_size bytes; the
 * decompressor is never given more room than that; the stored bytes must match stored_crc32c
 * before any decoding. On failure *bad_chunk (if non-NULL) is the
 * index of the first failing chunk, else -1. Bytes of dst outside the chunks are untouched. */
int kv_chunk_decode(const kv_chunk *chunks, int n_chunks, const uint8_t *stored, size_t stored_size,
                    void *dst, size_t dst_size, int threads, int *bad_chunk, const char *label,
                    kv_error *err);

/* CRC-32C (Castagnoli, reflected 0x82F63B78, init and final xor ~0): "123456789" -> 0xE3069283.
 * SSE4.2 instruction where the CPU has it, else tables. */
uint32_t kv_crc32c(const void *data, size_t n);
/* 1 if the SSE4.2 path is in use; enable = 0 forces the table path (tests compare both) */
int kv_crc32c_use_hw(int enable);

#endif

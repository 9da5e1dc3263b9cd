/* SHA-256 (FIPS 180-4): streaming, one-shot, hex, whole file.
 * The compression function has a portable definition and, on x86-64 CPUs with the SHA
 * extensions, an accelerated twin chosen at run time; both give the same digests. */
#ifndef KV_SHA256_H
#define KV_SHA256_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct {
    uint32_t h[8]; /* chaining state H0..H7 */
    uint64_t n_bytes; /* message length so far */
    uint8_t block[64]; /* pending partial block */
    size_t n_block; /* bytes in block (< 64) */
} kv_sha256_ctx;

void kv_sha256_init(kv_sha256_ctx *c);
void kv_sha256_update(kv_sha256_ctx *c, const void *data, size_t n);
void kv_sha256_final(kv_sha256_ctx *c, uint8_t out[32]); /* c must be re-initialised after */

void kv_sha256(const void *data, size_t n, uint8_t out[32]);
/* digests of two independent messages, as two kv_sha256 calls would give; with the SHA
 * extensions their rounds are interleaved (1.05-1.25x one stream's throughput on the dev VM) */
/* as kv_sha256_update(a, pa, n) then kv_sha256_update(b, pb, n); with the SHA extensions and
 * both contexts on a block boundary the two messages' rounds are interleaved */
void kv_sha256_update_x2(kv_sha256_ctx *a, const void *pa, kv_sha256_ctx *b, const void *pb,
                         size_t n);
void kv_sha256_x2(const void *a, size_t na, uint8_t out_a[32], const void *b, size_t nb,
                  uint8_t out_b[32]);
void kv_sha256_hex(const uint8_t d[32], char out[65]); /* lower-case, NUL-terminated */
/* 64 hex digits (either case) -> 32 bytes; 0 or -1 if malformed */
int kv_sha256_parse_hex(const char *hex, uint8_t out[32]);

/* digest of a whole file (buffered reads) as hex */
int kv_sha256_file(const char *path, char hex[65], kv_error *err);
/* digests of n files into hex[n], largest first, on up to n_threads threads (the caller's
 * among them). On one thread, or with at least two files per thread, each thread hashes two
 * files at a time through kv_sha256_update_x2 (shards of a checkpoint are alike in size); else
 * one file per thread at a time (threads from kv_pool_run). stop (may be NULL): when it becomes
 * non-zero the hashing gives up with an error. No file starts after a failure; the one returned,
 * naming its file, is that of the first failing task in that order. */
int kv_sha256_files(const char *const *paths, int n, char (*hex)[65], int n_threads,
                    const atomic_int *stop, kv_error *err);

/* 1 if the accelerated compression function is in use. enable = 0 forces the portable one
 * (tests compare both), 1 picks the accelerated one where the CPU has it. Not thread-safe:
 * call before hashing starts. */
int kv_sha256_use_hw(int enable);

#endif

/* Decode attention alone, against a read loop of the same run: one query token over a cache of
 * --keys positions (default 512) of stories110M's shape (12 query and kv heads of 64; --heads N
 * and --kv-heads N for other shapes, e.g. TinyLlama-1.1B's 32 and 4), for
 * --layers caches back to back (default 96: 302 MB of F32 K and V, and BF16 copies, past the
 * last-level cache, as in decode, where the weights evict the cache between layers). Runs
 * kv_attention_cache on F32 and BF16 caches laid out position-major ([S, nkv, hd]: a head's 64
 * values every nkv*hd) and head by head ([nkv, S, hd]: the KV cache's layout, kvcache.h), 1
 * thread and --threads N (default 2). Prints the best pass of --repeat N (default 6) as ms per
 * layer, GB/s of K and V, the ratio to the read loop over 512 MiB on as many threads, and head by
 * head over position-major. Usage: attention_bench [--threads N] [--repeat N] [--keys N]
 * [--layers N] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/arena.h"
#include "bench/bench.h"
#include "kernels/cpu/baseline.h"
#include "kernels/kernels.h"

enum { HEAD_DIM = 64 };

/* the best of repeat passes over every layer's cache: seconds per pass */
static double best_pass(float *out, const float *q, const char *k, const char *v, kv_dtype dt,
                        int head_rows, int keys, int layers, size_t layer_bytes, int heads,
                        int kv_heads, int repeat) {
    double best = 1e30;
    for (int r = 0; r < repeat; r++) {
        const double t0 = bench_seconds();
        for (int l = 0; l < layers; l++)
            kv_attention_cache(out, q, k + (size_t)l * layer_bytes, v + (size_t)l * layer_bytes, dt,
                               head_rows, 1, keys - 1, keys, heads, kv_heads, HEAD_DIM,
                               KV_MASK_CAUSAL, 0, 0);
        const double t = bench_seconds() - t0;
        if (t < best) best = t;
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = 2, repeat = 6, keys = 512, layers = 96, heads = 12, kv_heads = 12;
    for (int i = 1; i < argc; i++) {
        int *opt = !strcmp(argv[i], "--threads")    ? &threads
                   : !strcmp(argv[i], "--repeat")   ? &repeat
                   : !strcmp(argv[i], "--keys")     ? &keys
                   : !strcmp(argv[i], "--layers")   ? &layers
                   : !strcmp(argv[i], "--heads")    ? &heads
                   : !strcmp(argv[i], "--kv-heads") ? &kv_heads
                                                    : NULL;
        if (!opt || i + 1 >= argc) {
            fprintf(stderr, "usage: attention_bench [--threads N] [--repeat N] [--keys N] "
                            "[--layers N] [--heads N] [--kv-heads N]\n");
            return 2;
        }
        *opt = atoi(argv[++i]);
    }
    if (threads < 1 || repeat < 1 || keys < 1 || keys > 1 << 20 || layers < 1 || layers > 4096 ||
        kv_heads < 1 || heads < kv_heads || heads > 1024 || heads % kv_heads) {
        fprintf(stderr, "attention_bench: --threads, --repeat >= 1; --keys 1..2^20; --layers "
                        "1..4096; --heads 1..1024, a multiple of --kv-heads\n");
        return 2;
    }
    const size_t per_layer = (size_t)keys * kv_heads * HEAD_DIM; /* elements of K (and of V) */
    const size_t n = per_layer * (size_t)layers;
    /* the caches in one arena, as the runtime's (huge pages advised) */
    size_t total = 0;
    kv_arena a;
    kv_error err = {0};
    if (kv_arena_reserve(&total, n, sizeof(float)) || kv_arena_reserve(&total, n, sizeof(float)) ||
        kv_arena_reserve(&total, n, sizeof(uint16_t)) ||
        kv_arena_reserve(&total, n, sizeof(uint16_t)) ||
        kv_arena_init(&a, total, "attention_bench caches", &err)) {
        fprintf(stderr, "attention_bench: %s\n", err.msg[0] ? err.msg : "sizes overflow");
        return 1;
    }
    float *k = kv_arena_take(&a, n, sizeof(float)), *v = kv_arena_take(&a, n, sizeof(float));
    uint16_t *k16 = kv_arena_take(&a, n, sizeof(uint16_t));
    uint16_t *v16 = kv_arena_take(&a, n, sizeof(uint16_t));
    float *q = malloc(sizeof(float) * (size_t)heads * HEAD_DIM),
          *out = malloc(sizeof(float) * (size_t)heads * HEAD_DIM);
    if (!q || !out) {
        fprintf(stderr, "attention_bench: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) { /* U(-0.5, 0.5), no subnormals */
        k[i] = (float)(i * 2654435761u >> 16 & 1023) / 1024.0f - 0.5f;
        v[i] = (float)(i * 40503u >> 8 & 1023) / 1024.0f - 0.5f;
    }
    kv_dtype_cast(k16, KV_BF16, k, KV_F32, n);
    kv_dtype_cast(v16, KV_BF16, v, KV_F32, n);
    for (int i = 0; i < heads * HEAD_DIM; i++) q[i] = 0.01f * (float)(i % 17) - 0.08f;
    const int counts[2] = {1, threads};
    for (int c = 0; c < (threads > 1 ? 2 : 1); c++) {
        double loop = 0;
        if (bench_read_loop("attention_bench", counts[c], &loop)) return 1;
        printf("%d thread(s), %d keys x %d layers, %d/%d heads: read loop %.1f GB/s\n", counts[c],
               keys, layers, heads, kv_heads, loop);
        for (int d = 0; d < 2; d++) {
            const kv_dtype dt = d ? KV_BF16 : KV_F32;
            const size_t layer_bytes = per_layer * kv_dtype_size(dt);
            const char *kc = d ? (const char *)k16 : (const char *)k;
            const char *vc = d ? (const char *)v16 : (const char *)v;
            double t[2];
            for (int head_major = 0; head_major < 2; head_major++) {
                t[head_major] = best_pass(out, q, kc, vc, dt, head_major ? keys : 0, keys, layers,
                                          layer_bytes, heads, kv_heads, repeat);
                const double gbps = 2.0 * (double)layer_bytes * layers / t[head_major] / 1e9;
                printf("  %-4s %-15s %7.4f ms/layer  %6.1f GB/s  = %.2f x the read loop\n",
                       kv_dtype_name(dt), head_major ? "head by head" : "position-major",
                       t[head_major] / layers * 1e3, gbps, gbps / loop);
            }
            printf("  %-4s head by head / position-major: %.2f x the speed\n", kv_dtype_name(dt),
                   t[0] / t[1]);
        }
    }
    kv_arena_free(&a);
    free(q), free(out);
    return 0;
}

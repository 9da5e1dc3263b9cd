/* Decode's matrix-vector products alone, against a read loop of the same run: every weight matrix
 * of one stories110M decode step (12 layers of q, k, v, o [768 x 768], gate, up [2048 x 768],
 * down [768 x 2048], then the LM head [32000 x 768]; 438 MB F32, 219 MB BF16) through kv_gemv,
 * for each gemv variant this CPU runs (KV_CPU_ISA's names), F32 and BF16 weights, 1 thread and
 * --threads N (default 2). Prints the best pass of --repeat N (default 15) in ms and GB/s, its
 * ratio to the read loop over 512 MiB on as many threads, and the cost of one empty
 * kv_parallel_for call on the kernel threads (what every parallel kernel of a decode step pays),
 * then decode's pass shapes one at a time with the default variant (one_shape_rows).
 * Usage: gemv_bench [--threads N] [--repeat N] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "base/pool.h"
#include "kernels/cpu/baseline.h"
#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"

enum { LAYERS = 12, HIDDEN = 768, FFN = 2048, VOCAB = 32000, EMPTY_CALLS = 20000 };
enum {
    HIDDEN_1B = 2048,
    KV_1B = 256, /* 4 kv heads of 64 */
    FFN_1B = 5632,
    X_LEN = FFN_1B
}; /* TinyLlama-1.1B's sizes; x holds the longest row */

/* elements of all the step's matrices */
static size_t step_elems(void) {
    return (size_t)LAYERS * (4 * (size_t)HIDDEN * HIDDEN + 3 * (size_t)FFN * HIDDEN) +
           (size_t)VOCAB * HIDDEN;
}

/* one decode step's products over W (the matrices back to back); y [VOCAB], x [X_LEN] */
static void step(float *y, const float *x, const char *W, kv_dtype dt) {
    const size_t es = kv_dtype_size(dt);
    for (int l = 0; l < LAYERS; l++) {
        const int shape[7][2] = {{HIDDEN, HIDDEN}, {HIDDEN, HIDDEN}, {HIDDEN, HIDDEN},
                                 {HIDDEN, HIDDEN}, {HIDDEN, FFN},    {HIDDEN, FFN},
                                 {FFN, HIDDEN}}; /* {n_in, n_out} */
        for (int m = 0; m < 7; m++) {
            kv_gemv(y, x, W, dt, NULL, shape[m][0], shape[m][1], 0);
            W += (size_t)shape[m][0] * (size_t)shape[m][1] * es;
        }
    }
    kv_gemv(y, x, W, dt, NULL, HIDDEN, VOCAB, 0);
}

static void nothing(void *ctx, int item, int worker) { (void)ctx, (void)item, (void)worker; }

/* One shape at a time, the default variant: as many matrices of the shape as fill SHAPE_BYTES of
 * W, back to back (each pass from memory, one after another as a decode step reads them); the
 * best of `repeat` over the read loop. On 2 threads each pass pays for starting its workers and
 * their streams, so short passes read less of the loop than long ones (docs/RESULTS.md, round 8):
 * the shapes of decode's passes, 110M's and 1.1B's (q|k|v, gate|up joined). */
enum { SHAPE_BYTES = 256 << 20 };

static void one_shape_rows(float *y, const float *x, const char *W, kv_dtype dt, int repeat,
                           double loop) {
    static const struct {
        int n_out, n_in;
        const char *what;
    } shapes[] = {{HIDDEN, HIDDEN, "o_proj"},
                  {3 * HIDDEN, HIDDEN, "q|k|v"},
                  {2 * FFN, HIDDEN, "gate|up"},
                  {HIDDEN, FFN, "down_proj"},
                  {HIDDEN_1B, HIDDEN_1B, "1.1B o_proj"},
                  {HIDDEN_1B + 2 * KV_1B, HIDDEN_1B, "1.1B q|k|v"},
                  {2 * FFN_1B, HIDDEN_1B, "1.1B gate|up"},
                  {HIDDEN_1B, FFN_1B, "1.1B down_proj"}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const size_t each = (size_t)shapes[k].n_out * (size_t)shapes[k].n_in * kv_dtype_size(dt);
        const size_t count = SHAPE_BYTES / each;
        double best = 1e30;
        for (int r = 0; r < repeat; r++) {
            const double s = bench_seconds();
            for (size_t m = 0; m < count; m++)
                kv_gemv(y, x, W + m * each, dt, NULL, shapes[k].n_in, shapes[k].n_out, 0);
            const double dt_s = bench_seconds() - s;
            if (dt_s < best) best = dt_s;
        }
        const double gbps = (double)(count * each) / best / 1e9;
        printf("  %-4s %5d x %-5d %-15s %6.1f GB/s  = %.2f x the read loop (%.2f MB a pass)\n",
               kv_dtype_name(dt), shapes[k].n_out, shapes[k].n_in, shapes[k].what, gbps,
               gbps / loop, (double)each / 1e6);
    }
}

int main(int argc, char **argv) {
    int threads = 2, repeat = 15;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: gemv_bench [--threads N] [--repeat N]\n");
            return 2;
        }
    }
    if (threads < 1 || repeat < 1) {
        fprintf(stderr, "gemv_bench: --threads and --repeat take N >= 1\n");
        return 2;
    }
    const size_t n = step_elems();
    /* 64-byte aligned as the runtime's arena carves weights and activations: malloc's 16-byte
     * alignment made every 64-byte load of a BF16 row straddle two cache lines */
    char *W = NULL;
    float *x = NULL, *y = NULL;
    if (posix_memalign((void **)&W, 64, n * sizeof(float)) ||
        posix_memalign((void **)&x, 64, sizeof(float) * X_LEN) ||
        posix_memalign((void **)&y, 64, sizeof(float) * VOCAB)) {
        fprintf(stderr, "gemv_bench: out of memory\n");
        return 1;
    }
    for (int i = 0; i < X_LEN; i++) x[i] = 0.01f * (float)(i % 13) - 0.05f;
    const int counts[2] = {1, threads};
    for (int c = 0; c < (threads > 1 ? 2 : 1); c++) {
        double loop = 0;
        if (bench_read_loop("gemv_bench", counts[c], &loop)) return 1;
        const double t0 = bench_seconds();
        for (int i = 0; i < EMPTY_CALLS; i++) kv_parallel_for(counts[c], counts[c], nothing, NULL);
        const double empty_us = (bench_seconds() - t0) / EMPTY_CALLS * 1e6;
        printf("%d thread(s): read loop %.1f GB/s; empty kv_parallel_for %.2f us\n", counts[c],
               loop, empty_us);
        for (int d = 0; d < 2; d++) {
            const kv_dtype dt = d ? KV_BF16 : KV_F32;
            if (dt == KV_BF16) { /* normal BF16 values of either sign in [2^-7, 2): every
                                   * mantissa pattern; no subnormal, Inf or NaN, which real weights
                                   * do not hold and which slowed FMA 3x on the Xeon VM */
                uint16_t *p = (uint16_t *)W;
                for (size_t i = 0; i < n; i++) {
                    const size_t h = i * 2654435761u >> 20;
                    p[i] = (uint16_t)(0x3c00 | (h & 0x3ff) | (h >> 10 & 1) << 15);
                }
            } else {
                float *p = (float *)W;
                for (size_t i = 0; i < n; i++) p[i] = 1.0f / (float)(1 + (i & 7));
            }
            const double bytes = (double)n * (double)kv_dtype_size(dt);
            for (int isa = 0; isa < KV_GEMV_N_ISA; isa++) {
                if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) continue;
                kv_gemv_force((kv_gemv_isa)isa);
                double best = 1e30;
                for (int r = 0; r < repeat; r++) {
                    const double s = bench_seconds();
                    step(y, x, W, dt);
                    const double dt_s = bench_seconds() - s;
                    if (dt_s < best) best = dt_s;
                }
                printf("  %-4s %-10s %7.2f ms  %6.1f GB/s  = %.2f x the read loop\n",
                       kv_dtype_name(dt), kv_gemv_isa_name((kv_gemv_isa)isa), best * 1e3,
                       bytes / best / 1e9, bytes / best / 1e9 / loop);
            }
            kv_gemv_force(KV_GEMV_N_ISA);
            one_shape_rows(y, x, W, dt, repeat, loop);
        }
    }
    free(W), free(x), free(y);
    return 0;
}

/* Matrix-vector products for decode (one token): y[n_out] (+)= W[n_out, n_in] x[n_in] (+ bias),
 * W in HF layout ([out, in]), F32, BF16 or F16, x and y F32.
 *
 * Variants: portable C (the reference), AVX2+FMA and AVX-512F, each compiled for its ISA with
 * target attributes and chosen at run time from the CPU's features (the build stays portable).
 * BF16 weights are widened in registers (exact: a 16-bit shift), F16 weights by vcvtph2ps (F16C,
 * exact; AVX2 requires it here), and multiplied in F32; x is never rounded. Each output row is one dot product computed by one thread in a fixed order, so
 * results do not depend on the thread count or on how rows are split. Variants differ from each
 * other only in the order of the F32 additions (and FMA's single rounding): for every variant
 * |y - exact| <= 1e-6 * (sum_i |W[o,i] x[i]| + |bias[o]| + |y0[o]|) on the sizes tests/test_gemv.c
 * covers (n_in up to 1001); in general the bound grows like n_in / lanes * 2^-24.
 *
 * avx512, BF16 weights: x is de-interleaved once per call (evens and odds of each block of 32),
 * so that a line of 32 weights is widened by one shift (evens) and one mask (odds) in place of a
 * cross-lane widening; the same exact products, added in another order.
 *
 * avx512bf16: vdpbf16ps multiplies BF16 pairs, so x is split once per call into three BF16 parts
 * hi + mid + lo that add up to x exactly (round to nearest even, then the remainders); each
 * weight meets each part in an exact product, so x is still never rounded, and the error is
 * that of the F32 accumulation as above (three accumulators, added smallest first). */
#ifndef KV_CPU_GEMV_H
#define KV_CPU_GEMV_H

#include "base/dtype.h"

/* Bytes ahead of the current weight row position that the AVX2 / AVX-512 loops (and the read
 * loop, kernels/cpu/baseline.c) prefetch, one line per 64 bytes read. Measured on the 2-core
 * Intel Xeon VM of 2026-12-06 (model 207; DRAM-bound, 1 thread, a 200k x 768 matrix): none
 * -> 4 KB: F32 13.0 -> 15.3 GB/s, BF16 9.7 -> 13.8 GB/s; 2 KB about the same as 4, 256 B
 * nothing. On a second Xeon VM (model 167, a later session) 2 KB beat 4 KB: gemv_bench
 * on huge pages, 1 thread, F32 15.5-16.0 -> 17.0-17.4 GB/s, BF16 15.5-16.3 -> 16.9-18.1, and
 * 1 KB / 8 KB were slower than 2 KB (docs/RESULTS.md). An earlier try on a loaded Zen 5 VM found
 * prefetching slower. */
enum { KV_STREAM_PREFETCH_BYTES = 2048 };

typedef enum {
    KV_GEMV_C = 0,
    KV_GEMV_AVX2 = 1,
    KV_GEMV_AVX512 = 2,
    KV_GEMV_AVX512BF16 = 3, /* BF16 weights by vdpbf16ps (AVX512_BF16); F32 weights as AVX512 */
    KV_GEMV_N_ISA = 4
} kv_gemv_isa;

/* "c", "avx2", "avx512", "avx512bf16" */
const char *kv_gemv_isa_name(kv_gemv_isa isa);
/* 0 and *isa set for one of the names above; -1 otherwise */
int kv_gemv_isa_parse(kv_gemv_isa *isa, const char *s);
/* 1 when this CPU runs the variant (C: always) */
int kv_gemv_isa_supported(kv_gemv_isa isa);
/* The variant kv_gemv uses: kv_gemv_force's choice, else the environment's KV_CPU_ISA
 * (c | avx2 | avx512 | avx512bf16), else AVX2 where the CPU has it (AVX-512 measured slower for this
 * bandwidth-bound loop on Zen 5: opt in with KV_CPU_ISA=avx512), else C. A choice the CPU does
 * not run falls back to the best supported variant below it; an unknown name counts as unset. */
kv_gemv_isa kv_gemv_isa_active(void);
/* The variant kv_gemv runs for weights of w_type: kv_gemv_isa_active's, except that when neither
 * kv_gemv_force nor KV_CPU_ISA chose one, BF16 weights take avx512 where the CPU has it (on the
 * Xeon VM of 2026-12-06 its even/odd loop streamed 15.0 GB/s against AVX2's 13.5, F32's 15.4). */
kv_gemv_isa kv_gemv_isa_for(kv_dtype w_type);
/* forces a variant for later calls (tests, benches); KV_GEMV_N_ISA clears the choice. Returns
 * the variant now active. Not thread-safe against running kernels. */
kv_gemv_isa kv_gemv_force(kv_gemv_isa isa);

/* rows [o0, o1) of y = W x (+ bias) with one variant, on the calling thread; accumulate: y +=.
 * w_type KV_F32, KV_BF16 or KV_F16 (W then points to uint16_t bits); isa must be supported. */
void kv_gemv_rows(kv_gemv_isa isa, float *y, const float *x, const void *W, kv_dtype w_type,
                  const float *bias, int n_in, int o0, int o1, int accumulate);

/* all n_out rows with the active variant, rows split over the kernel threads (kernels.h's
 * kv_parallel_workers / kv_parallel_for). 0, or -1 for a w_type other than F32/BF16/F16. */
int kv_gemv(float *y, const float *x, const void *W, kv_dtype w_type, const float *bias, int n_in,
            int n_out, int accumulate);

#endif

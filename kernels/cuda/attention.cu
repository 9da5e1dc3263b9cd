// GQA attention over a KV cache, forward and backward, twin of kernels/cpu/attention.c.
// Masks as kv_attn_visible below (kernels.h): causal sees s <= p, strict s < p (a query at
// position 0 sees nothing and outputs zeros); only s < S is read. Both directions take kernels.h's
// sliding window (s > p - W); the forward also its ring (key s at row s % R). head_dim <= 256.
//
// Forward: one warp per (query token, head); keys in chunks of 32 (one per lane), online
// softmax; each lane owns output dims lane, lane+32, ... F32 or BF16 cache (widened on load).
//
// Backward (deterministic, no atomics), FlashAttention-2 style in two passes:
//  1. attn_dq_kernel, one warp per query row (t, h): recomputes the scores, the row's max m and
//     sum l, and D = sum_s P_s dP_s (dP_s = dout . v_s); then dq += scale sum_s dS_s k_s with
//     dS_s = P_s (dP_s - D). m, l, D go to scratch.
//  2. attn_dkv_kernel, one warp per key row (s, kv head g): loops over every query row that sees
//     s (all tokens from the first that sees it, every head of g's group), recomputes P and dS
//     from m, l, D, and owns dk[s, g] += scale sum dS q, dv[s, g] += sum P dout.
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

#define ATT_MAX_HD 256
#define ATT_J      (ATT_MAX_HD / 32) /* dims per lane */
#define ATT_WARPS  4

// number of keys visible to the query at position p in a cache of S
__device__ __forceinline__ int kv_attn_visible(int p, int S, int strict) {
    const int n = strict ? p : p + 1;
    return n < S ? n : S;
}
// first key visible to the query at position p with a window of W positions (0: none)
__device__ __forceinline__ int kv_attn_first(int p, int W) {
    return W > 0 && p >= W ? p - W + 1 : 0;
}
// row of k / v holding key s: s % ring in a ring, s without one (ring 0)
__device__ __forceinline__ size_t kv_attn_row(int s, int ring) {
    return (size_t)(ring ? s % ring : s);
}

// the two dot products attention backward needs per key s: q.k_s and dO.v_s
__device__ __forceinline__ void qk_and_dov(const float *q, const float *dout, const float *ks,
                                           const float *vs, int hd, float *qk, float *dov) {
    float a = 0.0f, b = 0.0f;
    for (int d = 0; d < hd; d++) {
        a += q[d] * ks[d];
        b += dout[d] * vs[d];
    }
    *qk = a;
    *dov = b;
}
__device__ __forceinline__ float att_ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float att_ld(const uint16_t *p, size_t i) { return kv_bf16_widen(p[i]); }

template <typename KV>
__global__ void attention_kernel(float *out, const float *q, const KV *k, const KV *v, int T,
                                 int pos0, int S, int nh, int nkv, int hd, int strict, int window,
                                 int ring, size_t pos_stride, size_t head_stride, float scale) {
    __shared__ float qs[ATT_WARPS][ATT_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * ATT_WARPS + warp; // t * nh + h
    if (row >= (long)T * nh) return; // warp-uniform
    const int t = (int)(row / nh), h = (int)(row % nh), g = h / (nh / nkv);
    const float *qr = q + (size_t)row * hd;
    for (int d = lane; d < hd; d += 32) qs[warp][d] = qr[d];
    __syncwarp();
    const int n = kv_attn_visible(pos0 + t, S, strict), lo = kv_attn_first(pos0 + t, window);
    const KV *kg = k + (size_t)g * head_stride, *vg = v + (size_t)g * head_stride;
    float m = -INFINITY, l = 0.0f, acc[ATT_J];
#pragma unroll
    for (int j = 0; j < ATT_J; j++) acc[j] = 0.0f;
    for (int s0 = lo; s0 < n; s0 += 32) {
        const int s = s0 + lane;
        float x = -INFINITY;
        if (s < n) {
            const KV *ks = kg + kv_attn_row(s, ring) * pos_stride;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += qs[warp][d] * att_ld(ks, d);
            x = dot * scale;
        }
        const float m_new = fmaxf(m, kv_warp_max(x)); // finite: lane 0's key is visible
        const float pl = s < n ? expf(x - m_new) : 0.0f;
        const float corr = expf(m - m_new); // 0 on the first chunk
        l = l * corr + kv_warp_sum(pl);
        const int cnt = n - s0 < 32 ? n - s0 : 32;
#pragma unroll
        for (int j = 0; j < ATT_J; j++) acc[j] *= corr;
        for (int i = 0; i < cnt; i++) {
            const float pi = __shfl_sync(0xffffffffu, pl, i);
            const KV *vs = vg + kv_attn_row(s0 + i, ring) * pos_stride;
#pragma unroll
            for (int j = 0; j < ATT_J; j++) {
                const int d = lane + 32 * j;
                if (d < hd) acc[j] += pi * att_ld(vs, d);
            }
        }
        m = m_new;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f; // nothing visible: zero row
    float *o = out + (size_t)row * hd;
#pragma unroll
    for (int j = 0; j < ATT_J; j++) {
        const int d = lane + 32 * j;
        if (d < hd) o[d] = acc[j] * inv;
    }
}

// the checks both directions share; 0 or KV_EINVAL / KV_EUNSUPPORTED naming `what`
static int attn_check(const char *what, int T, int S, int n_heads, int n_kv_heads, int head_dim,
                      kv_error *err) {
    if (head_dim <= 0 || head_dim > ATT_MAX_HD)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda %s: head_dim must be in 1..%d", what,
                       ATT_MAX_HD);
    if (n_kv_heads <= 0 || n_heads <= 0 || n_heads % n_kv_heads)
        return kv_fail(err, KV_EINVAL, "cuda %s: query heads not a multiple of kv heads", what);
    if (T < 0 || S < 0) return kv_fail(err, KV_EINVAL, "cuda %s: negative size", what);
    return 0;
}

int kv_cuda_attention(kv_backend *b, float *out, const float *q, const void *k, const void *v,
                      kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                      int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring,
                      kv_error *err) {
    char what[192];
    snprintf(what, sizeof what,
             "attention (%s cache, T %d at %d, S %d, %d/%d heads of %d, window %d, ring %d, "
             "%d rows per head)",
             kv_dtype_name(cache_type), T, pos0, S, n_heads, n_kv_heads, head_dim, window, ring,
             head_rows);
    if (cache_type != KV_F32 && cache_type != KV_BF16)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda %s: the cache must be F32 or BF16", what);
    int rc = attn_check(what, T, S, n_heads, n_kv_heads, head_dim, err);
    if (rc) return rc;
    if (window < 0 || ring < 0 || (ring && (!window || ring < window + T - 1)))
        return kv_fail(err, KV_EINVAL, "cuda %s: a ring needs a window and >= window + T - 1 rows",
                       what);
    size_t pos_stride, head_stride; // the CPU's layout rule (kernels.h)
    if (kv_attention_strides(head_rows, ring, S, n_kv_heads, head_dim, &pos_stride, &head_stride))
        return kv_fail(err, KV_EINVAL, "cuda %s: fewer rows per head than keys", what);
    const long rows = (long)T * n_heads;
    if (rows <= 0) return 0;
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    const unsigned blocks = (unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS);
    const int strict = mask == KV_MASK_STRICT;
    cudaStream_t st = kv_cuda_stream(b);
    if (cache_type == KV_F32)
        attention_kernel<float><<<blocks, 32 * ATT_WARPS, 0, st>>>(
            out, q, (const float *)k, (const float *)v, T, pos0, S, n_heads, n_kv_heads, head_dim,
            strict, window, ring, pos_stride, head_stride, scale);
    else
        attention_kernel<uint16_t><<<blocks, 32 * ATT_WARPS, 0, st>>>(
            out, q, (const uint16_t *)k, (const uint16_t *)v, T, pos0, S, n_heads, n_kv_heads,
            head_dim, strict, window, ring, pos_stride, head_stride, scale);
    return kv_cuda_launched(what, err);
}

// ---- backward -------------------------------------------------------------------------------

// pass 1: one warp per query row; stats[row] = (m, l, D) for pass 2; dq (if any) added
__global__ void attn_dq_kernel(float *dq, float *stats, const float *dout, const float *q,
                               const float *k, const float *v, int T, int pos0, int S, int nh,
                               int nkv, int hd, int strict, int window, float scale) {
    __shared__ float qs[ATT_WARPS][ATT_MAX_HD], os[ATT_WARPS][ATT_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * ATT_WARPS + warp;
    if (row >= (long)T * nh) return; // warp-uniform
    const int t = (int)(row / nh), h = (int)(row % nh), g = h / (nh / nkv);
    for (int d = lane; d < hd; d += 32) {
        qs[warp][d] = q[(size_t)row * hd + d];
        os[warp][d] = dout[(size_t)row * hd + d];
    }
    __syncwarp();
    const int n = kv_attn_visible(pos0 + t, S, strict), lo = kv_attn_first(pos0 + t, window);
    const size_t kv_stride = (size_t)nkv * hd;
    const float *kg = k + (size_t)g * hd, *vg = v + (size_t)g * hd;
    float m = -INFINITY, l = 0.0f, a = 0.0f; // a = sum_s e^(x_s - m) dP_s
    for (int s0 = lo; s0 < n; s0 += 32) {
        const int s = s0 + lane;
        float x = -INFINITY, dp = 0.0f;
        if (s < n) {
            float dk, dv;
            qk_and_dov(qs[warp], os[warp], kg + (size_t)s * kv_stride, vg + (size_t)s * kv_stride,
                       hd, &dk, &dv);
            x = dk * scale;
            dp = dv;
        }
        const float m_new = fmaxf(m, kv_warp_max(x));
        const float e = s < n ? expf(x - m_new) : 0.0f;
        const float corr = expf(m - m_new);
        l = l * corr + kv_warp_sum(e);
        a = a * corr + kv_warp_sum(e * dp);
        m = m_new;
    }
    const float D = l > 0.0f ? a / l : 0.0f;
    if (lane == 0) {
        stats[3 * row] = m;
        stats[3 * row + 1] = l;
        stats[3 * row + 2] = D;
    }
    if (!dq || n <= lo) return; // nothing visible: no gradient flows
    float acc[ATT_J];
#pragma unroll
    for (int j = 0; j < ATT_J; j++) acc[j] = 0.0f;
    const float inv_l = 1.0f / l;
    for (int s0 = lo; s0 < n; s0 += 32) {
        const int s = s0 + lane;
        float ds = 0.0f;
        if (s < n) {
            float dk, dv;
            qk_and_dov(qs[warp], os[warp], kg + (size_t)s * kv_stride, vg + (size_t)s * kv_stride,
                       hd, &dk, &dv);
            const float p = expf(dk * scale - m) * inv_l;
            ds = p * (dv - D) * scale;
        }
        const int cnt = n - s0 < 32 ? n - s0 : 32;
        for (int i = 0; i < cnt; i++) {
            const float dsi = __shfl_sync(0xffffffffu, ds, i);
            const float *ks = kg + (size_t)(s0 + i) * kv_stride;
#pragma unroll
            for (int j = 0; j < ATT_J; j++) {
                const int d = lane + 32 * j;
                if (d < hd) acc[j] += dsi * ks[d];
            }
        }
    }
    float *dqr = dq + (size_t)row * hd;
#pragma unroll
    for (int j = 0; j < ATT_J; j++) {
        const int d = lane + 32 * j;
        if (d < hd) dqr[d] += acc[j];
    }
}

// pass 2: one warp per key row (s, g), over every query row that sees key s
__global__ void attn_dkv_kernel(float *dk, float *dv, const float *stats, const float *dout,
                                const float *q, const float *k, const float *v, int T, int pos0,
                                int S, int nh, int nkv, int hd, int strict, int window,
                                float scale) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long idx = (long)blockIdx.x * ATT_WARPS + warp;
    if (idx >= (long)S * nkv) return; // warp-uniform
    const int s = (int)(idx / nkv), g = (int)(idx % nkv), group = nh / nkv;
    const size_t kvoff = (size_t)s * nkv * hd + (size_t)g * hd;
    float kr[ATT_J], vr[ATT_J], dka[ATT_J], dva[ATT_J];
#pragma unroll
    for (int j = 0; j < ATT_J; j++) {
        const int d = lane + 32 * j;
        kr[j] = d < hd ? k[kvoff + d] : 0.0f;
        vr[j] = d < hd ? v[kvoff + d] : 0.0f;
        dka[j] = dva[j] = 0.0f;
    }
    // first token that sees s: its position p needs s <= p (causal) or s < p (strict)
    int t0 = s - pos0 + (strict ? 1 : 0);
    if (t0 < 0) t0 = 0;
    // past the last token that sees s under a window: its position p needs p < s + W
    long t_end = T;
    if (window > 0 && (long)s + window - pos0 < t_end) t_end = (long)s + window - pos0;
    for (int t = t0; t < t_end; t++)
        for (int h = g * group; h < (g + 1) * group; h++) {
            const size_t row = (size_t)t * nh + h;
            const float *qr = q + row * hd, *go = dout + row * hd;
            float qd[ATT_J], od[ATT_J], xs = 0.0f, dp = 0.0f;
#pragma unroll
            for (int j = 0; j < ATT_J; j++) {
                const int d = lane + 32 * j;
                qd[j] = d < hd ? qr[d] : 0.0f;
                od[j] = d < hd ? go[d] : 0.0f;
                xs += qd[j] * kr[j];
                dp += od[j] * vr[j];
            }
            xs = kv_warp_sum(xs);
            dp = kv_warp_sum(dp);
            const float m = stats[3 * row], l = stats[3 * row + 1], D = stats[3 * row + 2];
            const float p = expf(xs * scale - m) / l;
            const float ds = p * (dp - D) * scale;
#pragma unroll
            for (int j = 0; j < ATT_J; j++) {
                dka[j] += ds * qd[j];
                dva[j] += p * od[j];
            }
        }
#pragma unroll
    for (int j = 0; j < ATT_J; j++) {
        const int d = lane + 32 * j;
        if (d >= hd) continue;
        if (dk) dk[kvoff + d] += dka[j];
        if (dv) dv[kvoff + d] += dva[j];
    }
}

int kv_cuda_attention_backward(kv_backend *b, float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v, int T, int pos0,
                               int S, int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask,
                               int window, kv_error *err) {
    char what[160];
    snprintf(what, sizeof what,
             "attention_backward (T %d at %d, S %d, %d/%d heads of %d, window %d)", T, pos0, S,
             n_heads, n_kv_heads, head_dim, window);
    int rc = attn_check(what, T, S, n_heads, n_kv_heads, head_dim, err);
    if (!rc && window < 0) rc = kv_fail(err, KV_EINVAL, "cuda %s: negative window", what);
    if (rc || (!dq && !dk && !dv)) return rc;
    const long rows = (long)T * n_heads;
    if (rows <= 0 || S <= 0) return 0;
    void *stats = NULL;
    rc = kv_cuda_scratch(b, &stats, sizeof(float) * 3 * (size_t)rows, what, err);
    if (rc) return rc;
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    const int strict = mask == KV_MASK_STRICT;
    cudaStream_t st = kv_cuda_stream(b);
    attn_dq_kernel<<<(unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS), 32 * ATT_WARPS, 0, st>>>(
        dq, (float *)stats, dout, q, k, v, T, pos0, S, n_heads, n_kv_heads, head_dim, strict,
        window, scale);
    rc = kv_cuda_launched(what, err);
    if (rc || (!dk && !dv)) return rc;
    const long keys = (long)S * n_kv_heads;
    attn_dkv_kernel<<<(unsigned)((keys + ATT_WARPS - 1) / ATT_WARPS), 32 * ATT_WARPS, 0, st>>>(
        dk, dv, (const float *)stats, dout, q, k, v, T, pos0, S, n_heads, n_kv_heads, head_dim,
        strict, window, scale);
    return kv_cuda_launched(what, err);
}

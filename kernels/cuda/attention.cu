// Attention twin: one warp per (query token, head), keys in chunks of 32 (one per lane),
// online softmax; each lane owns output dims lane, lane+32, ... (head_dim <= 256).
#include "kernels/cuda/cuda_util.h"

#define ATT_MAX_HD 256
#define ATT_WARPS 4

__global__ void attention_kernel(float *out, const float *q, const float *k, const float *v,
                                 int T, int pos0, int S, int nh, int nkv, int hd, int strict,
                                 float scale) {
    __shared__ float qs[ATT_WARPS][ATT_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * ATT_WARPS + warp; // t * nh + h
    if (row >= T * nh) return; // warp-uniform
    const int t = row / nh, h = row % nh, g = h / (nh / nkv);
    const float *qr = q + (size_t)row * hd;
    for (int d = lane; d < hd; d += 32) qs[warp][d] = qr[d];
    __syncwarp();
    const int p = pos0 + t;
    int n = strict ? p : p + 1;
    if (n > S) n = S;
    const size_t kv_stride = (size_t)nkv * hd;
    const float *kg = k + (size_t)g * hd, *vg = v + (size_t)g * hd;
    float m = -INFINITY, l = 0.0f, acc[ATT_MAX_HD / 32];
#pragma unroll
    for (int j = 0; j < ATT_MAX_HD / 32; j++) acc[j] = 0.0f;
    for (int s0 = 0; s0 < n; s0 += 32) {
        const int s = s0 + lane;
        float x = -INFINITY;
        if (s < n) {
            const float *ks = kg + (size_t)s * kv_stride;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += qs[warp][d] * ks[d];
            x = dot * scale;
        }
        const float m_new = fmaxf(m, kv_warp_max(x)); // finite: chunk has >= 1 visible key
        const float pl = s < n ? expf(x - m_new) : 0.0f;
        const float corr = expf(m - m_new); // 0 on the first chunk
        l = l * corr + kv_warp_sum(pl);
        const int cnt = n - s0 < 32 ? n - s0 : 32;
#pragma unroll
        for (int j = 0; j < ATT_MAX_HD / 32; j++) acc[j] *= corr;
        for (int i = 0; i < cnt; i++) {
            const float pi = __shfl_sync(0xffffffffu, pl, i);
            const float *vs = vg + (size_t)(s0 + i) * kv_stride;
#pragma unroll
            for (int j = 0; j < ATT_MAX_HD / 32; j++) {
                const int d = lane + 32 * j;
                if (d < hd) acc[j] += pi * vs[d];
            }
        }
        m = m_new;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f; // nothing visible: zero row
    float *o = out + (size_t)row * hd;
#pragma unroll
    for (int j = 0; j < ATT_MAX_HD / 32; j++) {
        const int d = lane + 32 * j;
        if (d < hd) o[d] = acc[j] * inv;
    }
}

extern "C" int kv_cuda_attention(float *out, const float *q, const float *k, const float *v,
                                 int T, int pos0, int S, int n_heads, int n_kv_heads,
                                 int head_dim, kv_attn_mask mask, kv_error *err) {
    if (head_dim <= 0 || head_dim > ATT_MAX_HD)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda attention: head_dim %d outside 1..%d",
                       head_dim, ATT_MAX_HD);
    if (n_kv_heads <= 0 || n_heads % n_kv_heads)
        return kv_fail(err, KV_EINVAL, "cuda attention: %d heads not a multiple of %d kv heads",
                       n_heads, n_kv_heads);
    const long rows = (long)T * n_heads;
    if (rows <= 0) return 0;
    const float scale = (float)(1.0 / sqrt((double)head_dim));
    attention_kernel<<<(unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS), 32 * ATT_WARPS>>>(
        out, q, k, v, T, pos0, S, n_heads, n_kv_heads, head_dim, mask == KV_MASK_STRICT, scale);
    return kv_cuda_check_launch("attention", err);
}

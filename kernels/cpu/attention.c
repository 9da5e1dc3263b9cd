/* Causal / diagonal-masked GQA attention over a KV cache, forward and backward.
 * Forward: blocked online softmax (flash style). Keys are visited in blocks of KB, the same
 * blocks in the same order for every query row, so a row's result does not depend on T, on how
 * rows are grouped into work items, or on threads. */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* number of keys 0 .. n-1 visible to the query at position p in a cache of S positions */
static int attn_visible(int p, int S, kv_attn_mask mask) {
    int n = mask == KV_MASK_STRICT ? p : p + 1;
    return n < S ? n : S;
}

/* float dot product with 8 running partial sums (vectorizable, fixed order) */
static inline float attn_dot(const float *a, const float *b, int n) {
    float part[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) part[u] += a[i + u] * b[i + u];
    float s = ((part[0] + part[1]) + (part[2] + part[3])) +
              ((part[4] + part[5]) + (part[6] + part[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

enum { ROWS = 16, KB = 64 }; /* about ROWS query rows per work item, KB keys per block */

typedef struct {
    float *out;
    const float *q, *k, *v;
    const uint16_t *k16, *v16; /* BF16 cache instead of k, v (both NULL for F32) */
    int T, pos0, S, nh, nkv, hd;
    kv_attn_mask mask;
    int group;        /* query heads per kv head */
    int tokens;       /* tokens per work item; rows per item = tokens * group */
    int n_tblocks;
    float scale;
    size_t scratch_per_worker;
    float *scratch;   /* per worker: acc [rows, hd], m [rows], l [rows], scores [KB];
                         BF16: then K, V of one block of head g as F32 [KB, hd] each */
} attn_job;

/* rows s0 .. e-1 of kv head g as F32: straight from an F32 cache (stride nkv*hd), or widened
 * from BF16 into blk [e-s0, hd] (exact, so results equal the F32 path on the same values) */
static const float *attn_block(const float *f32, const uint16_t *bf16, float *blk, int s0, int e,
                               int g, size_t kv_stride, int hd, size_t *stride) {
    if (!bf16) {
        *stride = kv_stride;
        return f32 + (size_t)s0 * kv_stride + (size_t)g * hd;
    }
    for (int s = s0; s < e; s++) {
        const uint16_t *src = bf16 + (size_t)s * kv_stride + (size_t)g * hd;
        float *dst = blk + (size_t)(s - s0) * hd;
        for (int d = 0; d < hd; d++) {
            const uint32_t bits = (uint32_t)src[d] << 16;
            memcpy(&dst[d], &bits, sizeof bits);
        }
    }
    *stride = (size_t)hd;
    return blk;
}

/* item = (token block, kv head g): the rows are every query head reading g for every token of
 * the block, so each K/V block is loaded once for all of them */
static void attn_item(void *ctx, int item, int worker) {
    const attn_job *j = ctx;
    const int hd = j->hd, g = item % j->nkv, tb = item / j->nkv, group = j->group;
    const int t0 = tb * j->tokens, t1 = t0 + j->tokens < j->T ? t0 + j->tokens : j->T;
    const int rows = (t1 - t0) * group;
    const size_t q_stride = (size_t)j->nh * hd, kv_stride = (size_t)j->nkv * hd;
    float *acc = j->scratch + (size_t)worker * j->scratch_per_worker;
    float *m = acc + (size_t)rows * hd, *l = m + rows, *score = l + rows;
    float *k_blk = score + KB, *v_blk = k_blk + (size_t)KB * hd;
    for (int r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (size_t i = 0; i < (size_t)rows * hd; i++) acc[i] = 0.0f;
    const int s_end = attn_visible(j->pos0 + t1 - 1, j->S, j->mask); /* the last sees most */
    for (int s0 = 0; s0 < s_end; s0 += KB) {
        const int blk_end = s0 + KB < s_end ? s0 + KB : s_end;
        size_t ks, vst; /* row strides of kb, vb */
        const float *kb = attn_block(j->k, j->k16, k_blk, s0, blk_end, g, kv_stride, hd, &ks);
        const float *vb = attn_block(j->v, j->v16, v_blk, s0, blk_end, g, kv_stride, hd, &vst);
        for (int r = 0; r < rows; r++) {
            const int t = t0 + r / group, h = g * group + r % group;
            const int n_vis = attn_visible(j->pos0 + t, j->S, j->mask);
            const int e = s0 + KB < n_vis ? s0 + KB : n_vis;
            if (e <= s0) continue;
            const float *qr = j->q + (size_t)t * q_stride + (size_t)h * hd;
            float mb = m[r];
            for (int s = s0; s < e; s++) {
                float x = attn_dot(qr, kb + (size_t)(s - s0) * ks, hd) * j->scale;
                score[s - s0] = x;
                if (x > mb) mb = x;
            }
            const float corr = expf(m[r] - mb); /* 0 on the first block: m = -inf */
            float *ar = acc + (size_t)r * hd;
            float lsum = 0.0f;
            for (int d = 0; d < hd; d++) ar[d] *= corr;
            for (int s = s0; s < e; s++) {
                const float p = expf(score[s - s0] - mb);
                lsum += p;
                const float *vs = vb + (size_t)(s - s0) * vst;
                for (int d = 0; d < hd; d++) ar[d] += p * vs[d];
            }
            l[r] = l[r] * corr + lsum;
            m[r] = mb;
        }
    }
    for (int r = 0; r < rows; r++) {
        const int t = t0 + r / group, h = g * group + r % group;
        float *o = j->out + (size_t)t * q_stride + (size_t)h * hd;
        const float *ar = acc + (size_t)r * hd;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f; /* nothing visible: zero row */
        for (int d = 0; d < hd; d++) o[d] = ar[d] * inv;
    }
}

static int attention_run(attn_job j, int T, int pos0, int S, int n_heads, int n_kv_heads,
                         int head_dim) {
    j.T = T, j.pos0 = pos0, j.S = S, j.nh = n_heads, j.nkv = n_kv_heads, j.hd = head_dim;
    j.group = n_heads / n_kv_heads;
    j.scale = (float)(1.0 / sqrt((double)head_dim));
    j.tokens = ROWS / j.group > 0 ? ROWS / j.group : 1;
    j.n_tblocks = (T + j.tokens - 1) / j.tokens;
    const size_t rows = (size_t)j.tokens * j.group;
    j.scratch_per_worker = rows * (head_dim + 2) + KB + (j.k16 ? 2 * (size_t)KB * head_dim : 0);
    const int n_items = j.n_tblocks * n_kv_heads;
    const double flops = 4.0 * n_heads * (double)T * (S < pos0 + T ? S : pos0 + T) * head_dim;
    const int workers = kv_parallel_workers(n_items, flops);
    j.scratch = malloc(sizeof(float) * workers * j.scratch_per_worker);
    if (!j.scratch) return KV_ENOMEM;
    kv_parallel_for(n_items, workers, attn_item, &j);
    free(j.scratch);
    return 0;
}

int kv_attention(float *out, const float *q, const float *k, const float *v, int T, int pos0,
                 int S, int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask) {
    const attn_job j = {.out = out, .q = q, .k = k, .v = v, .mask = mask};
    return attention_run(j, T, pos0, S, n_heads, n_kv_heads, head_dim);
}

int kv_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v, int T,
                      int pos0, int S, int n_heads, int n_kv_heads, int head_dim,
                      kv_attn_mask mask) {
    const attn_job j = {.out = out, .q = q, .k16 = k, .v16 = v, .mask = mask};
    return attention_run(j, T, pos0, S, n_heads, n_kv_heads, head_dim);
}

/* ---- backward ---------------------------------------------------------------------------
 * Work item = one kv head g: it owns dk/dv[:, g, :] and dq of the query heads reading g, so no
 * two threads write the same memory. Per query row, with P the recomputed probabilities:
 *   dP_s = dout . v_s;  dS_s = P_s (dP_s - sum_u P_u dP_u);
 *   dq += scale sum_s dS_s k_s;  dk_s += scale dS_s q;  dv_s += P_s dout. */

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v;
    int T, pos0, S, nh, nkv, hd;
    kv_attn_mask mask;
    float scale;
    float *scratch; /* per worker: p [S], dp [S] */
} attn_grad_job;

static void attn_grad_item(void *ctx, int g, int worker) {
    const attn_grad_job *j = ctx;
    const int hd = j->hd, group = j->nh / j->nkv;
    const size_t q_stride = (size_t)j->nh * hd, kv_stride = (size_t)j->nkv * hd;
    float *p = j->scratch + (size_t)worker * 2 * j->S, *dp = p + j->S;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int t = 0; t < j->T; t++) {
            const int n = attn_visible(j->pos0 + t, j->S, j->mask);
            if (n <= 0) continue; /* zero output: no gradient flows */
            const size_t qoff = (size_t)t * q_stride + (size_t)h * hd;
            const float *qr = j->q + qoff, *go = j->dout + qoff;
            float mx = -INFINITY;
            for (int s = 0; s < n; s++) {
                p[s] = attn_dot(qr, j->k + (size_t)s * kv_stride + (size_t)g * hd, hd) * j->scale;
                if (p[s] > mx) mx = p[s];
            }
            double sum = 0.0;
            for (int s = 0; s < n; s++) {
                p[s] = expf(p[s] - mx);
                sum += p[s];
            }
            const float inv = (float)(1.0 / sum);
            double pdp = 0.0;
            for (int s = 0; s < n; s++) {
                p[s] *= inv;
                dp[s] = attn_dot(go, j->v + (size_t)s * kv_stride + (size_t)g * hd, hd);
                pdp += (double)p[s] * dp[s];
            }
            float *dqr = j->dq ? j->dq + qoff : NULL;
            for (int s = 0; s < n; s++) {
                const size_t kvoff = (size_t)s * kv_stride + (size_t)g * hd;
                const float ds = p[s] * (dp[s] - (float)pdp) * j->scale;
                if (dqr) {
                    const float *ks = j->k + kvoff;
                    for (int d = 0; d < hd; d++) dqr[d] += ds * ks[d];
                }
                if (j->dk) {
                    float *dks = j->dk + kvoff;
                    for (int d = 0; d < hd; d++) dks[d] += ds * qr[d];
                }
                if (j->dv) {
                    float *dvs = j->dv + kvoff;
                    for (int d = 0; d < hd; d++) dvs[d] += p[s] * go[d];
                }
            }
        }
    }
}

int kv_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, int T, int pos0, int S, int n_heads,
                          int n_kv_heads, int head_dim, kv_attn_mask mask) {
    if (!dq && !dk && !dv) return 0;
    attn_grad_job j = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .q = q, .k = k, .v = v,
                       .T = T, .pos0 = pos0, .S = S, .nh = n_heads, .nkv = n_kv_heads,
                       .hd = head_dim, .mask = mask,
                       .scale = (float)(1.0 / sqrt((double)head_dim))};
    const double flops = 8.0 * n_heads * (double)T * (S < pos0 + T ? S : pos0 + T) * head_dim;
    const int workers = kv_parallel_workers(n_kv_heads, flops);
    j.scratch = malloc(sizeof(float) * (size_t)workers * 2 * (size_t)(S > 0 ? S : 1));
    if (!j.scratch) return KV_ENOMEM;
    kv_parallel_for(n_kv_heads, workers, attn_grad_item, &j);
    free(j.scratch);
    return 0;
}

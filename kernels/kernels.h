/* The math of a Llama forward and backward pass: small plain-C reference kernels (the oracle).
 * kernels/cpu/X.c holds them; kernels/cuda/X.cu the CUDA twins of the same ops behind the backend
 * seam (kernels/backend.h), checked against these by the parity table (kernels/parity.h).
 *
 * Conventions (every function below follows them unless its comment says otherwise)
 *  - float32, dense, row-major. A shape [A, B, C] means element (a, b, c) is at (a*B + b)*C + c.
 *    Names: T query tokens, S cached key positions, H hidden size, nh query heads, nkv key/value
 *    heads (nh % nkv == 0), hd head size, FFN intermediate size, V vocabulary.
 *  - Forward kernels overwrite their output; *_acc variants add into it.
 *  - Backward kernels ADD into every gradient buffer (dx += ...), so gradients from several uses
 *    of one tensor (GQA heads, layers sharing K/V) accumulate; the caller zeroes them once.
 *    A NULL gradient pointer means "not wanted" and that part of the work is skipped.
 *  - Buffers must not overlap unless a comment says "in place" or "may alias".
 *  - Kernels trust their sizes and indices (positive sizes, indices in range): they are checked
 *    once where the data enters (config, tokenizer). Functions taking a kv_error validate.
 *  - Reductions (norms, softmax sums, losses) accumulate in double; dot products inside matmul
 *    and attention are float (OpenBLAS / plain loops).
 *  - Results do not depend on the thread count: every output element is computed by one
 *    thread in a fixed order. */
#ifndef KV_KERNELS_H
#define KV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "base/dtype.h"
#include "base/error.h"
#include "base/pool.h"
#include "base/rope_config.h"

/* ---- threads ---------------------------------------------------------------------------- */

/* Worker threads for the kernels here (attention, matrix products: OpenBLAS single-threaded on
 * blocks of output rows); n < 1 means 1.
 * Default: the number of online CPUs. Not thread-safe: call it before running kernels. */
void kv_kernels_set_threads(int n);
int kv_kernels_threads(void);

/* how many workers are worth starting for n_items items costing about `flops` in all
 * (1 for small work; never more than kv_kernels_threads() or n_items) */
int kv_parallel_workers(int n_items, double flops);
/* Rows of a matrix product's output (tokens) cut at multiples of this keep every output's bits
 * those of one unsplit OpenBLAS call under its Haswell kernels (kernels/cpu/matmul.c) */
enum { KV_GEMM_ROW_ALIGN = 12 };
/* cut[0..parts]: m rows in parts (1 <= parts <= ceil(m / align)) split at the multiples of align
 * nearest to equal shares, none empty (the last may be shorter than align) */
void kv_row_cuts(int *cut, int m, int parts, int align);

/* ---- forward ------------------------------------------------------------------------------ */

/* out[T, n_out] = x[T, n_in] @ W[n_out, n_in]^T + bias[n_out] (bias may be NULL).
 * W in HF layout ([out, in]). OpenBLAS sgemv for T == 1, sgemm otherwise on blocks of rows of
 * out run by the kernel threads (kernels/cpu/matmul.c). */
void kv_matmul(float *out, const float *x, const float *W, const float *bias, int T, int n_in,
               int n_out);
/* the same into rows ld_out floats apart (ld_out >= n_out): row t at out + t * ld_out, the
 * floats between rows untouched; every output the bits of kv_matmul's */
void kv_matmul_strided(float *out, int ld_out, const float *x, const float *W, const float *bias,
                       int T, int n_in, int n_out);
/* kv_matmul_strided (T > 1) as one OpenBLAS call on the calling thread: for a worker running
 * its own part of a product (rows cut at multiples of KV_GEMM_ROW_ALIGN keep kv_matmul's bits) */
void kv_matmul_serial(float *out, int ld_out, const float *x, const float *W, const float *bias,
                      int T, int n_in, int n_out);
/* out[T, n_out] += x @ W^T + bias (bias may be NULL): e.g. o_proj/down_proj into the residual */
void kv_matmul_acc(float *out, const float *x, const float *W, const float *bias, int T, int n_in,
                   int n_out);

/* HF LlamaRMSNorm: out[t] = w * (x[t] * rsqrt(mean(x[t]^2) + eps)); x, out [T, dim], w [dim].
 * In place allowed (out == x). */
void kv_rmsnorm(float *out, const float *x, const float *w, int T, int dim, float eps);

/* out[t, :] = table[ids[t], :]; table [vocab, dim], out [T, dim].
 * KV_EINVAL (naming the position and id) if an id is outside [0, vocab). */
int kv_embedding(float *out, const float *table, int vocab, int dim, const int32_t *ids, int T,
                 kv_error *err);

/* RoPE, HF rotate-half layout: for a head vector x[hd] at position p, with h = hd/2 and
 * i < h: x'[i] = x[i]*cos(p*f_i) - x[i+h]*sin(p*f_i); x'[i+h] = x[i+h]*cos(p*f_i) + x[i]*sin(p*f_i).
 * Inverse frequencies f_i = theta^(-2i/hd) in double, then by rope_scaling (HF
 * modeling_rope_utils; L = sequence length, c = original_max_position):
 *   llama3 (wl_i = 2*pi/f_i, lo = c/low_freq_factor, hi = c/high_freq_factor): wl_i < hi: f_i;
 *     wl_i > lo: f_i/factor; otherwise, with s = (c/wl_i - low_freq_factor)/(high_freq_factor -
 *     low_freq_factor): (1-s)*f_i/factor + s*f_i;
 *   linear: f_i/factor;
 *   dynamic (NTK): L <= c: f_i; L > c: theta replaced by
 *     theta * (factor*L/c - (factor-1))^(hd/(hd-2));
 *   yarn: d(r) = hd*ln(c/(2*pi*r))/(2*ln theta), lo = d(beta_fast), hi = d(beta_slow) (floor /
 *     ceil when truncate), clamped to [0, hd-1] (hi += 0.001 if equal); ramp_i = clamp((i-lo)/
 *     (hi-lo), 0, 1): f_i/factor*ramp_i + f_i*(1-ramp_i); attention factor: attention_factor if
 *     given, else m(factor, mscale)/m(factor, mscale_all_dim) if both given, else m(factor, 1),
 *     m(s, k) = 0.1*k*ln(s) + 1 (1 for s <= 1);
 *   longrope: f_i / e_i with e = long_factor when L > c, else short_factor; attention factor:
 *     attention_factor if given, else 1 for factor <= 1, else sqrt(1 + ln(factor)/ln(c)).
 * The attention factor multiplies cos and sin (so q.k by its square). Angles p*f_i are computed
 * in double, then cos/sin (times the attention factor) rounded to float. */

/* (kv_rope_check, kv_rope_scaling_name, kv_rope_attention_factor: base/rope_config.h) */
/* inv_freq[hd/2] (double) for a sequence of seq_len tokens (only dynamic and longrope depend on
 * it). KV_EINVAL for an odd or non-positive hd or bad parameters (kv_rope_check). */
int kv_rope_inv_freq_at(double *inv_freq, int head_dim, const kv_rope_config *c, long seq_len,
                        kv_error *err);
/* the same at seq_len 0: the frequencies up to original_max_position */
int kv_rope_inv_freq(double *inv_freq, int head_dim, const kv_rope_config *c, kv_error *err);

/* The table: row p holds the angles of position p. For dynamic and longrope the frequencies of
 * row p are those of a sequence of p+1 tokens (HF's when it generates token by token: the
 * length-dependent scaling takes effect once position p >= original_max_position). */
typedef struct {
    int head_dim; /* hd */
    int max_pos; /* positions 0 .. max_pos-1 */
    float *cos; /* [max_pos, hd/2] */
    float *sin; /* [max_pos, hd/2] */
} kv_rope_table;
int kv_rope_table_init(kv_rope_table *t, int head_dim, int max_pos, const kv_rope_config *c,
                       kv_error *err);
void kv_rope_table_free(kv_rope_table *t);

/* in place: x [T, n_heads, hd], token t at position pos[t] (0 <= pos[t] < table->max_pos) */
void kv_rope(float *x, int T, int n_heads, const int32_t *pos, const kv_rope_table *table);

/* Attention with GQA. q [T, nh, hd] for query positions pos0 .. pos0+T-1; k, v [S, nkv, hd] hold
 * positions 0 .. S-1 (the cache, RoPE already applied to k); query head h reads kv head
 * h / (nh/nkv). Scores q.k / sqrt(hd), stable softmax over the visible keys, out [T, nh*hd].
 * Visible keys of the query at position p (only s < S are ever read):
 *   KV_MASK_CAUSAL: s <= p (diagonal included);
 *   KV_MASK_STRICT: s <  p (diagonal masked: METHODS.md "upward" layers) — at p = 0 nothing is
 *                   visible and the output row is the zero vector;
 * and, with a sliding window of W >= 1 positions (window = W; 0: none), only s > p - W: the
 * last W positions up to p (causal), or the W - 1 before p (strict). ring = R >= 1 keeps the
 * keys in a ring of R rows (key s is row s % R of k and v, which hold R rows, not S; it needs a
 * window and R >= W + T - 1, so that every key a row of this call reads is still there); 0: key
 * s is row s. Without a window, or with one no row reaches past (W > pos0 + T - 1), the result
 * is the windowless one bit for bit.
 * Blocked online softmax (flash style); threads over (kv head, block of tokens), every query
 * head of a GQA group in the same work item so K/V are read once per group. A query's result is
 * bit-identical whether it runs in a prefill of T tokens, a chunk of one, or alone as a decode
 * step, with any thread count (with or without a window: keys are visited in blocks aligned
 * to multiples of 64 positions). Allocates a small scratch per call (about 16*(hd+2)+64 floats
 * per thread). 0, KV_EINVAL for a negative window or ring or a ring as above it does not meet,
 * or KV_ENOMEM when the scratch allocation fails. */
typedef enum { KV_MASK_CAUSAL = 0, KV_MASK_STRICT = 1 } kv_attn_mask;
int kv_attention(float *out, const float *q, const float *k, const float *v, int T, int pos0, int S,
                 int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask, int window,
                 int ring);
/* The same over a BF16 cache (k, v [S or R, nkv, hd] as BF16 bits): keys and values are widened to
 * F32 (exact) and go through the same arithmetic, so the result equals kv_attention's on the
 * widened values bit for bit. Work items with 4 or more query rows widen each block of 64 keys
 * once into scratch (2*64*hd more floats per thread); smaller ones widen as they read. */
int kv_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v, int T,
                      int pos0, int S, int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask,
                      int window, int ring);
/* Either of the two over a cache laid out head by head: k, v [nkv, head_rows, hd] of cache_type
 * (KV_F32 or KV_BF16), key s of kv head g at row attn row (s, or s % R) of head g's head_rows
 * rows, which must cover them (head_rows >= R with a ring, >= S without); head_rows = 0 is the
 * [S or R, nkv, hd] layout above. A head's keys are contiguous, so decode streams them. The
 * result is the same as on the same keys in the other layout, bit for bit. KV_EINVAL also for a
 * dtype other than F32 / BF16 or too few head_rows. */
int kv_attention_cache(float *out, const float *q, const void *k, const void *v,
                       kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                       int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring);
/* the layout kv_attention_cache reads (the CUDA twin reads it too): key s of kv head g at
 * g * *head_stride + row(s) * *pos_stride elements; 0, or KV_EINVAL for head_rows < 0 or fewer
 * rows per head than keys (ring's R, or S) */
int kv_attention_strides(int head_rows, int ring, int S, int n_kv_heads, int head_dim,
                         size_t *pos_stride, size_t *head_stride);

/* h[n] = silu(gate[n]) * up[n], silu(g) = g / (1 + exp(-g)). h may alias gate or up. */
void kv_swiglu(float *h, const float *gate, const float *up, size_t n);

/* in place: each row of x [rows, n] becomes softmax(row) (max subtracted, sum in double) */
void kv_softmax(float *x, int rows, int n);
/* out[n] = x - logsumexp(x); out may alias x */
void kv_log_softmax(float *out, const float *x, int n);
/* cross-entropy of one logits row at `target`: -log softmax(logits)[target], in nats */
double kv_cross_entropy(const float *logits, int vocab, int target);

/* ---- backward (frozen embedding: no embedding gradient) ------------------------------------ */

/* for out = x @ W^T + bias: dx[T, n_in] += dout[T, n_out] @ W; dW[n_out, n_in] += dout^T @ x;
 * dbias[n_out] += sum over t of dout[t]. Any of dx, dW, dbias may be NULL. */
void kv_matmul_backward(float *dx, float *dW, float *dbias, const float *dout, const float *x,
                        const float *W, int T, int n_in, int n_out);

/* for out = kv_rmsnorm(x, w): dx[T, dim] +=, dw[dim] += (either may be NULL) */
void kv_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         int T, int dim, float eps);

/* in place: turns d(loss)/d(rope(x)) into d(loss)/d(x) — the inverse rotation (the rotation is
 * orthogonal). Same shapes and positions as kv_rope. The one backward that does not add. */
void kv_rope_backward(float *dx, int T, int n_heads, const int32_t *pos,
                      const kv_rope_table *table);

/* for out = kv_attention(q, k, v, ...) with the same sizes, mask and window (no ring):
 * dq[T, nh, hd] +=, dk[S, nkv, hd] +=, dv[S, nkv, hd] += (each may be NULL; dk/dv sum over the
 * query heads sharing a kv head). Nothing is saved by the forward: the probabilities are
 * recomputed from q and k, so q, k, v must be the forward's inputs (k after RoPE).
 * Threads over kv heads. 0, or KV_ENOMEM. */
int kv_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, int T, int pos0, int S, int n_heads,
                          int n_kv_heads, int head_dim, kv_attn_mask mask, int window);

/* for h = silu(gate) * up: dgate[n] += dh * up * silu'(gate); dup[n] += dh * silu(gate) */
void kv_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n);

/* ---- losses ----------------------------------------------------------------------------- */

/* Distillation loss, averaged over the T tokens with per-row weights w[T] (NULL: all 1):
 *   loss = (1/T) sum_t w_t temp^2 * KL(softmax(teacher[t]/temp) || softmax(student[t]/temp))
 * student, teacher [T, V] logits. Returns loss (nats). If dstudent [T, V] is not NULL it gets
 * dstudent += grad_scale * d(loss)/d(student) = grad_scale * w_t * temp * (q - p) / T. A row with
 * w_t = 0 is skipped: it adds nothing to the loss and leaves its gradient row untouched.
 * (A mean over the rows with w_t = 1 only: w_t = T / count for those, 0 for the others.) */
double kv_distill_kl(float *dstudent, const float *student, const float *teacher,
                     const float *weights, int T, int V, float temp, float grad_scale);

/* Next-token cross-entropy on the data (the hard labels), for B sequences of T tokens:
 *   loss = mean over the B*(T-1) positions t < T-1 of -log softmax(logits[b,t])[tokens[b,t+1]]
 * logits [B*T, V], tokens [B*T]; the last position of each sequence has no target. Returns loss
 * (nats). If dlogits [B*T, V] is not NULL it gets += grad_scale * (softmax - onehot) / (B*(T-1)). */
double kv_next_token_ce(float *dlogits, const float *logits, const int32_t *tokens, int B, int T,
                        int V, float grad_scale);

/* loss = mean over all n elements of (student - teacher)^2 (torch MSELoss "mean");
 * dstudent[n] += grad_scale * 2 * (student - teacher) / n when not NULL. Returns loss. */
double kv_mse(float *dstudent, const float *student, const float *teacher, size_t n,
              float grad_scale);

/* ---- optimiser ------------------------------------------------------------------------- */

/* AdamW (decoupled weight decay, as torch.optim.AdamW), step t (1-based), learning rate lr:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w -= lr * wd * w;  w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * Moments are float; the arithmetic of one element is double. */
void kv_adamw(float *w, const float *g, float *m, float *v, size_t n, double beta1, double beta2,
              double eps, double weight_decay, long t, double lr);
/* returns acc + the sum of x[i]^2, accumulated in double in index order from acc */
double kv_sumsq(double acc, const float *x, size_t n);
/* x[i] *= k */
void kv_scale(float *x, float k, size_t n);
/* dst[i] += src[i] */
void kv_add(float *dst, const float *src, size_t n);

#ifdef __cplusplus
}
#endif

#endif

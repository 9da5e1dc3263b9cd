/* Full-sequence forward with saved activations, and its backward, for training and evaluation
 * of original, cross-layer and SwiftKV models (METHODS.md s1-s3). Not the runtime's KV-cache
 * forward: here B whole sequences of T tokens run at once as N = B*T rows, every activation a
 * backward needs is kept, and gradients land in the model's trainable tensors (kvt_param.g).
 *
 * Layer i on rows x [N, H] (sequence b = rows b*T .. b*T+T-1, positions 0 .. T-1):
 *   xn1 = rmsnorm(x, input_layernorm); q = RoPE(xn1 Wq^T + bq)
 *   layer computes K/V:  K[slot] = RoPE(xn1 Wk^T + bk), V[slot] = xn1 Wv^T + bv
 *   att = attention(q, K/V of slot(kv(i))), causal, or diagonal-masked when kv(i) > i
 *   x_mid = x + att Wo^T;  xn2 = rmsnorm(x_mid, post_attention_layernorm)
 *   x_out = x_mid + (silu(xn2 Wg^T) * (xn2 Wu^T)) Wd^T
 * SwiftKV (l, g): entering layer l, s = rmsnorm(h_l, norm_swiftkv) and every group leader j
 * writes K[slot j] = RoPE(s Wk_swiftkv_j^T), V = s Wv_swiftkv_j^T; layers >= l use
 * q_proj_swiftkv and read their leader's K/V (causal).
 * Upward layers (kv(i) > i): LCKV's iterative plan. In layer order, layers outside the cyclic
 * groups once; each cyclic group [lo, hi] `passes` times, after the groups below it, from the
 * same hidden state entering it, upward layers reading the target K/V of the previous pass
 * (zeros before the first); each group's last pass is saved and differentiated. With
 * grad_passes = b (LCKV's b; METHODS.md's plan is b = 1) the last b passes of every group are
 * saved and differentiated: the gradient of the K/V an upward layer reads flows into the pass
 * that wrote them; the K/V entering the first of those b passes are constants. With one group
 * this is the single cyclic block; kvt_run_init_plan(.., block = 1, ..) iterates the whole
 * block [lo, hi] as one group whatever the map.
 * Head: logits = rmsnorm(x_out, norm) lm_head^T.
 *
 * Device: a run lives on one backend (kernels/backend.h). Every buffer below is device memory
 * carved from one backend allocation (the table of sizes in train_forward.c), every op goes
 * through the backend's table, and the model's tensors are reached through device views (dp):
 * a map of the host values for frozen tensors; for the trainable tensors of a run with gradients
 * a writable copy and a gradient buffer (on a unified backend, the host arrays p->w and p->g
 * themselves). kvt_run_params_to_host brings trained values back to p->w. */
#ifndef KV_TRAIN_FORWARD_H
#define KV_TRAIN_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "transform/train/train_model.h"

/* one layer's saved activations (device) */
typedef struct {
    float *x_in; /* [N, H] residual entering the layer */
    float *xn1; /* [N, H] input_layernorm(x_in) */
    float *q; /* [N, nh*hd] queries after RoPE */
    float *att; /* [N, nh*hd] attention output */
    float *x_mid; /* [N, H] residual after attention */
    float *xn2; /* [N, H] post_attention_layernorm(x_mid) */
    float *gate, *up; /* [N, FFN] */
    float *act; /* [N, FFN] silu(gate) * up */
} kvt_layer_acts;

/* device views of one model tensor (kvt_param), all [p->n] floats */
typedef struct {
    const float *w; /* what the ops read; NULL when the forward does not use the tensor */
    float *wt; /* the same array, writable: trainable tensors of a run with gradients */
    float *g; /* gradient (trainable, run with gradients), else NULL */
} kvt_dparam;

typedef struct {
    kv_backend *b; /* not owned */
    const kvt_model *m;
    kvt_dparam *dp; /* [m->n_params] device views, indexed like m->params */
    int B, T, N; /* sequences, tokens per sequence, rows N = B*T */
    int passes; /* iterative plan (upward maps), >= 1 */
    int grad_passes; /* trailing passes differentiated, 1..passes (1 without upward) */
    int has_upward, block_lo, block_hi; /* block: the span of all cyclic groups */
    int n_groups; /* the iterative plan's cyclic groups (kvmap_cyclic_group), or the
                                 single block (kvt_run_init_plan with block = 1) */
    int *group_lo, *group_hi; /* [n_groups] host: their layers, ascending */
    int n_slots;
    int want_grad;
    int grad_lo; /* lowest layer the backward visits (L: none) */
    kv_rope_table rope_host; /* positions 0 .. T-1, host arrays */
    kv_rope_table rope; /* the same on the device (kv_backend_rope_table) */
    int32_t *pos; /* [N] device: row r is at position r % T */
    int32_t *tokens; /* [N] device token ids (next-token cross-entropy) */
    float *row_weight; /* [N] device: the KL's per-position weights (kvt_distill_microbatch) */
    kvt_layer_acts *acts; /* [L] */
    float **k, **v; /* [slots] -> [N, nkv*hd] this pass (K after RoPE) */
    float **k_prev, **v_prev; /* [slots] previous pass; only targets of upward layers */
    float *s_norm; /* [N, H] SwiftKV norm_swiftkv(h_l) */
    float *x_out; /* [N, H] residual after the last layer */
    float *xn_out; /* [N, H] model.norm(x_out) */
    float *logits; /* [N, V] */
    /* backward (want_grad) */
    float *dlogits; /* [N, V] d loss / d logits, filled by the caller */
    float *dh_last; /* [N, H] d loss / d (input of layer L-1), added by the caller */
    float *dx, *dxn; /* [N, H] */
    float *dq, *datt; /* [N, nh*hd] */
    float *dgate, *dup, *dact; /* [N, FFN] */
    float **dk, **dv; /* [slots] -> [N, nkv*hd] */
    float *ds; /* [N, H] SwiftKV */
    /* grad_passes > 1 (want_grad): earlier differentiated passes e = 0 .. grad_passes-2 */
    kvt_layer_acts *acts_early; /* [(grad_passes-1) * L] group layers' activations of pass e */
    float **k_read, **v_read; /* [(grad_passes-1) * slots] K/V pass e's upward layers read
                                   (for e > 0 the same buffers as pass e-1's k_made/v_made) */
    float **k_made, **v_made; /* [(grad_passes-1) * slots] K/V pass e wrote */
    float **dk_prev, **dv_prev; /* [slots] d loss / d (K/V read by upward layers), per pass */
    float *x_spill; /* [N, H] output of a group's top layer in pass e (unused) */
    float *dx_block; /* [N, H] d loss / d group input, summed over the passes */
    float **k_mix, **v_mix; /* [slots] backward of pass e: pass e's K/V for the group's
                                   slots, the final ones for the others */
    int read_grad; /* backward: upward layers add into dk_prev/dv_prev */
    void *arena; /* the one backend allocation every device buffer is carved from */
    size_t arena_bytes;
    uint64_t mem_reserved; /* arena_bytes once held in the memory budget (base/membudget.h) */
} kvt_run;

/* passes: iterative prefill passes for maps with upward layers (ignored otherwise), >= 1.
 * T <= max_position_embeddings. want_grad: allocate the backward buffers and device copies of
 * the trainable tensors (kvt_model_set_trainable_* first). b outlives the run. */
int kvt_run_init(kvt_run *r, kv_backend *b, const kvt_model *m, int B, int T, int passes,
                 int want_grad, kv_error *err);
/* the same with the last grad_passes (1..passes) passes differentiated */
int kvt_run_init_grad(kvt_run *r, kv_backend *b, const kvt_model *m, int B, int T, int passes,
                      int grad_passes, int want_grad, kv_error *err);
/* the same; block = 1 iterates the single cyclic block (lowest upward layer .. highest target)
 * instead of one cyclic group at a time (the plan before LCKV's; the same with one group) */
int kvt_run_init_plan(kvt_run *r, kv_backend *b, const kvt_model *m, int B, int T, int passes,
                      int grad_passes, int block, int want_grad, kv_error *err);
void kvt_run_free(kvt_run *r);

/* tokens: host ids [N] (checked against the vocabulary); fills every activation and logits */
int kvt_forward(kvt_run *r, const int32_t *tokens, kv_error *err);
/* [N, H] device: the residual entering layer L-1 (what the MSE term compares) */
const float *kvt_last_layer_input(const kvt_run *r);

/* After kvt_forward: adds d loss / d w into every trainable tensor's device gradient (dp[i].g),
 * given r->dlogits and r->dh_last (both zeroed by kvt_forward and filled by the caller). */
int kvt_backward(kvt_run *r, kv_error *err);

/* the device views of tensor p of r's model */
const kvt_dparam *kvt_run_param(const kvt_run *r, const kvt_param *p);
/* trained values of the run's writable tensors back into the host arrays p->w (no copy on a
 * unified backend: they are the same arrays) */
int kvt_run_params_to_host(const kvt_run *r, kv_error *err);
/* n floats of device buffer src readable on the host: *out = src on a unified backend, else
 * src downloaded into host_scratch[n] and *out = host_scratch */
int kvt_run_host_view(const kvt_run *r, const float **out, const float *src, float *host_scratch,
                      size_t n, kv_error *err);

typedef struct {
    double loss; /* kl + mse_weight * mse + ce_weight * ce */
    double kl; /* temp^2 * KL(teacher || student) averaged over the N tokens (row-weighted) */
    double mse; /* mean squared difference of the inputs of layer L-1 */
    double ce; /* next-token cross-entropy on the data (0 when ce_weight is 0: not computed) */
} kvt_loss;

typedef struct {
    float temp; /* KL temperature (METHODS.md: 2) */
    float mse_weight; /* METHODS.md: 1 */
    float ce_weight; /* hard-label term, not in METHODS.md: 0 leaves the loss as specified */
} kvt_loss_weights;

/* One distillation micro-batch: teacher and student forward on host tokens [N] (runs of the same
 * B, T and backend), the loss, and (when grad_scale > 0 and the student run has gradients) the
 * backward, adding grad_scale * d loss / d w into the student's gradients. row_weight: host [N]
 * per-position weights of the KL term (kv_distill_kl: a mean over the positions with weight 1
 * when the others are T/count and 0), NULL: every position 1; the MSE and CE terms ignore it. */
int kvt_distill_microbatch(kvt_run *student, kvt_run *teacher, const int32_t *tokens,
                           const float *row_weight, const kvt_loss_weights *w, float grad_scale,
                           kvt_loss *out, kv_error *err);

#endif

/* Calibration (METHODS.md s3): measure before training which transform to apply.
 *  - the teacher's per-layer cosine similarity of hidden states (the residual entering each layer
 *    and leaving the last), and of K and V between layers, averaged over calibration tokens;
 *  - for every candidate KV map: the zero-shot student (distill_init.h, mean initialisation), its
 *    perplexity and mean per-token KL(teacher || student) on the same text;
 *  - candidates ranked by KL; the recommendation is the cheapest (fewest KV-cache slots, then the
 *    lowest KL) whose perplexity is within budget_pct percent of the teacher's. A candidate that
 *    saves nothing (no KV-cache slot, no prefill compute) is never recommended. */
#ifndef KV_CALIBRATE_H
#define KV_CALIBRATE_H

#include "base/error.h"
#include "formats/kvmap.h"
#include "kernels/backend.h"

typedef struct {
    const char *teacher_dir;
    const char *const *data;
    int n_data;
    int seq_len; /* 128 */
    int batch; /* 8 */
    int passes; /* iterative plan for upward maps, 9 */
    long max_seqs; /* calibration sequences used, 64 */
    double budget_pct; /* 5 */
    kv_backend *backend; /* where the runs live (not owned); NULL: a CPU backend at the
                               kernels' current thread count */
} calib_opts;

void calib_opts_default(calib_opts *o);

typedef struct {
    kv_map map;
    int slots; /* KV-cache slots */
    double cache_saving; /* 1 - slots / L */
    double prefill_saving; /* SwiftKV: share of a prompt token's layer FLOPs prefill skips
                               (model_swiftkv_prefill_saving); 0 for cross-layer maps */
    int saves; /* cache_saving > 0 or prefill_saving > 0 */
    double ppl, kl;
    double ppl_increase_pct;
    int within_budget;
} calib_candidate;

typedef struct {
    int L;
    double *hidden_sim; /* [(L+1) * (L+1)]: states 0..L-1 enter layers, L leaves the last */
    double *k_sim, *v_sim; /* [L * L] */
    double teacher_ppl;
    long tokens; /* calibration tokens */
    int n_cand;
    calib_candidate *cand; /* ranked, lowest KL first */
    int recommended; /* index into cand, -1 when no saving candidate is within budget */
    int best_saving; /* the saving candidate of lowest KL (budget or not), -1 if none */
    double budget_pct;
} calib_result;

/* tick(ctx, done, total) after each candidate (may be NULL) */
int calib_run(const calib_opts *o, const kv_map *maps, int n_maps, void (*tick)(void *, int, int),
              void *tick_ctx, calib_result *r, kv_error *err);
void calib_result_free(calib_result *r);

/* JSON text (malloc'd, NULL on allocation failure) */
char *calib_json(const calib_result *r);
/* SVG heat maps (hidden states, K, V) of layer similarity, written atomically */
int calib_write_svg(const calib_result *r, const char *path, kv_error *err);

#endif

/* Parity of two logits dumps (kvrun --logits-out, or a golden file): same tokens, max |a-b|,
 * mean KL(softmax(a) || softmax(b)) per position, argmax agreement. */
#ifndef KV_LOGITS_PARITY_H
#define KV_LOGITS_PARITY_H

#include "base/error.h"

typedef struct {
    int n_positions, vocab;
    double max_abs; /* max |a - b| over all logits */
    int worst_position; /* position of max_abs */
    double mean_kl, max_kl; /* KL(softmax(a) || softmax(b)) in nats per position */
    int argmax_agree; /* positions whose argmax is the same */
    int tokens_checked; /* 1 when both files carry token ids and they were compared */
} kv_logits_report;

/* adds T more positions of a and b [T, V] (host) to r: max_abs, worst_position (counted from
 * r's first position), mean/max KL, argmax agreement; r starts zeroed */
void kv_logits_report_add(kv_logits_report *r, const float *a, const float *b, int T, int V);

/* a, b: safetensors files with 'logits' F32 [T, V] or [B, T, V] and optional 'tokens'
 * I32 [T] / [B, T]; batch selects the row of a 3-D file (-1: the file must be 2-D, or B = 1).
 * Differing shapes or token ids are an error (KV_EMISMATCH) naming both files. */
int kv_logits_compare(kv_logits_report *r, const char *path_a, int batch_a, const char *path_b,
                      int batch_b, kv_error *err);

#endif

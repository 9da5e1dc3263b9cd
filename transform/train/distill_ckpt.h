/* Checkpoints of a distillation run: OUT_DIR/checkpoint/state.safetensors holds every trainable
 * tensor's values and AdamW moments ("param.NAME", "adam_m.NAME", "adam_v.NAME", F32 [n]) and
 * the step, tokens trained, seconds and the run's fingerprint as metadata; written atomically.
 * A run resumes only from a checkpoint with its own fingerprint. */
#ifndef KV_DISTILL_CKPT_H
#define KV_DISTILL_CKPT_H

#include "base/error.h"
#include "transform/train/distill.h"
#include "transform/train/distill_data.h"
#include "transform/train/optim.h"

typedef struct {
    long step; /* optimiser steps done */
    long tokens_trained;
    double seconds; /* wall time of the run so far, all processes */
} distill_ckpt_meta;

/* sha256 (64 hex digits) of everything the trajectory depends on: the options, total and
 * warm-up steps, the map, the training sequences and the trainable tensors' host values (call
 * before the first step) */
void distill_fingerprint(char out[65], const distill_opts *o, long total_steps, long warmup,
                         const char *map_name, const distill_seqs *train, const kvt_optim *opt);

/* dir (created) / path: the state of opt (device values read back) and meta */
int distill_ckpt_save(const char *dir, const char *path, const char *fingerprint,
                      const kvt_optim *opt, const distill_ckpt_meta *meta, kv_error *err);
/* restores opt's device values and moments and meta from path; KV_EINVAL when it was made with
 * another fingerprint, KV_EFORMAT when it is not a checkpoint of this run's shape or its step
 * exceeds total_steps */
int distill_ckpt_load(const char *path, const char *fingerprint, long total_steps,
                      const kvt_optim *opt, distill_ckpt_meta *meta, kv_error *err);

#endif

/* The optimiser step on a backend (kernels/backend.h): the trainable tensors of a student run,
 * reached through the run's device views (kvt_run_param), AdamW moments on the device, the global
 * gradient norm, clipping and AdamW (adamw.h's math, kv_adamw_step). Nothing comes back to the
 * host but the norm. */
#ifndef KV_TRAIN_OPTIM_H
#define KV_TRAIN_OPTIM_H

#include <stddef.h>

#include "base/error.h"
#include "kernels/backend.h"
#include "transform/train/adamw.h"
#include "transform/train/dist.h"
#include "transform/train/train_forward.h"

typedef struct {
    kv_backend *b; /* the run's */
    int n; /* trainable tensors, in the model's (name) order */
    kvt_param **p; /* [n] host tensors: name, element count p[i]->n, host values */
    float **w, **g; /* [n] device values and gradients [p[i]->n] (the run's views) */
    float **m, **v; /* [n] device AdamW moments [p[i]->n], carved from arena */
    size_t count; /* trainable elements, all tensors */
    void *arena; /* one backend allocation: the moments, zeroed */
    uint64_t mem_reserved; /* its bytes held in the memory budget (base/membudget.h) */
    size_t *counts; /* [n] p[i]->n (the collectives' counts) */
    float *host; /* [count] host staging for the collectives when the backend is not
                               unified; allocated on first use */
} kvt_optim;

/* the trainable tensors of a run with gradients (kvt_model_set_trainable_* before the run) */
int kvt_optim_init(kvt_optim *o, const kvt_run *student, kv_error *err);
void kvt_optim_free(kvt_optim *o);

int kvt_optim_zero_grads(const kvt_optim *o, kv_error *err);
/* *norm = global L2 norm of every gradient (double accumulation, tensors in order) */
int kvt_optim_grad_norm(const kvt_optim *o, double *norm, kv_error *err);
/* every gradient *= k */
int kvt_optim_scale_grads(const kvt_optim *o, float k, kv_error *err);
/* one AdamW update of every tensor: step t (1-based) at learning rate lr */
int kvt_optim_adamw(const kvt_optim *o, const adamw_hparams *h, long t, double lr, kv_error *err);

/* ---- data parallel (dist.h): collective, every process of d calls them in the same order ----
 * Each runs all of its collectives whatever its local errors (a failed download or upload) and
 * returns the first error, so that the processes stay in step (dist.h's failure protocol); a
 * group of one returns at once. Device memory crosses through o->host unless the backend is
 * unified (in place) or d takes device buffers. */
/* the host staging buffer a group of several processes needs on a backend that is not unified
 * (not collective; call at set-up, before the status check that follows it) */
int kvt_optim_dist_prepare(kvt_optim *o, const kv_dist *d, kv_error *err);
/* every gradient summed over the processes; each gets the sums */
int kvt_optim_allreduce_grads(kvt_optim *o, kv_dist *d, kv_error *err);
/* root's trainable values and AdamW moments to every process (a resumed run) */
int kvt_optim_bcast_state(kvt_optim *o, kv_dist *d, int root, kv_error *err);
/* SHA-256 of the trainable values, tensors in order (not collective: replicas compare it) */
int kvt_optim_digest(kvt_optim *o, unsigned char out[32], kv_error *err);

#endif

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
#include "transform/train/train_forward.h"

typedef struct {
    kv_backend *b;          /* the run's */
    int n;                  /* trainable tensors, in the model's (name) order */
    kvt_param **p;          /* [n] host tensors: name, element count p[i]->n, host values */
    float **w, **g;         /* [n] device values and gradients [p[i]->n] (the run's views) */
    float **m, **v;         /* [n] device AdamW moments [p[i]->n], carved from arena */
    size_t count;           /* trainable elements, all tensors */
    void *arena;            /* one backend allocation: the moments, zeroed */
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

#endif

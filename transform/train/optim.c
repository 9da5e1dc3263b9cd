/* The optimiser step on a backend: moments, gradient norm, clipping, AdamW (optim.h). */
#include "transform/train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MOMENT_ALIGN = 256 }; /* bytes: each tensor's moments start on it */

static size_t aligned_floats(size_t n) {
    const size_t k = MOMENT_ALIGN / sizeof(float);
    return (n + k - 1) / k * k;
}

int kvt_optim_init(kvt_optim *o, const kvt_run *student, kv_error *err) {
    memset(o, 0, sizeof *o);
    const kvt_model *m = student->m;
    o->b = student->b;
    for (int i = 0; i < m->n_params; i++) o->n += kvt_run_param(student, &m->params[i])->wt != NULL;
    const size_t k = (size_t)o->n + 1;
    o->p = calloc(k, sizeof *o->p);
    o->w = calloc(k, sizeof *o->w);
    o->g = calloc(k, sizeof *o->g);
    o->m = calloc(k, sizeof *o->m);
    o->v = calloc(k, sizeof *o->v);
    if (!o->p || !o->w || !o->g || !o->m || !o->v) {
        kvt_optim_free(o);
        return kv_fail(err, KV_ENOMEM, "optimiser: out of memory");
    }
    size_t floats = 0; /* the moments: sizes, then one allocation carved */
    for (int i = 0, j = 0; i < m->n_params; i++) {
        const kvt_dparam *d = kvt_run_param(student, &m->params[i]);
        if (!d->wt) continue;
        o->p[j] = &m->params[i];
        o->w[j] = d->wt;
        o->g[j] = d->g;
        o->count += m->params[i].n;
        floats += 2 * aligned_floats(m->params[i].n);
        j++;
    }
    int rc = o->b->ops->alloc(o->b, &o->arena, sizeof(float) * floats, err);
    if (rc) {
        kv_wrap(err, "optimiser: AdamW moments of %zu parameters", o->count);
        kvt_optim_free(o);
        return rc;
    }
    float *p = o->arena;
    for (int j = 0; j < o->n; j++) {
        o->m[j] = p;
        p += aligned_floats(o->p[j]->n);
        o->v[j] = p;
        p += aligned_floats(o->p[j]->n);
    }
    return 0;
}

void kvt_optim_free(kvt_optim *o) {
    if (o->arena) o->b->ops->free(o->b, o->arena);
    free(o->p), free(o->w), free(o->g), free(o->m), free(o->v);
    memset(o, 0, sizeof *o);
}

int kvt_optim_zero_grads(const kvt_optim *o, kv_error *err) {
    for (int i = 0; i < o->n; i++) {
        int rc = o->b->ops->zero(o->b, o->g[i], sizeof(float) * o->p[i]->n, err);
        if (rc) return rc;
    }
    return 0;
}

int kvt_optim_grad_norm(const kvt_optim *o, double *norm, kv_error *err) {
    double s = 0; /* sumsq continues the running sum: one double accumulation over every tensor */
    for (int i = 0; i < o->n; i++) {
        int rc = o->b->ops->sumsq(o->b, &s, o->g[i], o->p[i]->n, err);
        if (rc) return rc;
    }
    *norm = sqrt(s);
    return 0;
}

int kvt_optim_scale_grads(const kvt_optim *o, float k, kv_error *err) {
    for (int i = 0; i < o->n; i++) {
        int rc = o->b->ops->scale(o->b, o->g[i], k, o->p[i]->n, err);
        if (rc) return rc;
    }
    return 0;
}

int kvt_optim_adamw(const kvt_optim *o, const adamw_hparams *h, long t, double lr, kv_error *err) {
    const kv_adamw_step step = {.beta1 = h->beta1, .beta2 = h->beta2, .eps = h->eps,
                                .weight_decay = h->weight_decay, .lr = lr, .t = t};
    for (int i = 0; i < o->n; i++) {
        int rc = o->b->ops->adamw(o->b, o->w[i], o->g[i], o->m[i], o->v[i], o->p[i]->n, &step, err);
        if (rc) return rc;
    }
    return 0;
}

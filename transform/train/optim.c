/* The optimiser step on a backend: moments, gradient norm, clipping, AdamW (optim.h). */
#include "transform/train/optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/membudget.h"
#include "base/sha256.h"

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
    o->counts = calloc(k, sizeof *o->counts);
    if (!o->p || !o->w || !o->g || !o->m || !o->v || !o->counts) {
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
        o->counts[j] = m->params[i].n;
        o->count += m->params[i].n;
        floats += 2 * aligned_floats(m->params[i].n);
        j++;
    }
    const kv_mem_item moments = {"AdamW moments", sizeof(float) * (uint64_t)floats};
    int rc = kv_mem_reserve("training", &moments, 1, err);
    if (rc) {
        kvt_optim_free(o);
        return rc;
    }
    o->mem_reserved = moments.bytes;
    rc = o->b->ops->alloc(o->b, &o->arena, sizeof(float) * floats, err);
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
    const kv_mem_item moments = {"AdamW moments", o->mem_reserved};
    kv_mem_release(&moments, 1);
    free(o->p), free(o->w), free(o->g), free(o->m), free(o->v);
    free(o->counts), free(o->host);
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
    const kv_adamw_step step = {.beta1 = h->beta1,
                                .beta2 = h->beta2,
                                .eps = h->eps,
                                .weight_decay = h->weight_decay,
                                .lr = lr,
                                .t = t};
    for (int i = 0; i < o->n; i++) {
        int rc = o->b->ops->adamw(o->b, o->w[i], o->g[i], o->m[i], o->v[i], o->p[i]->n, &step, err);
        if (rc) return rc;
    }
    return 0;
}

/* ---- data parallel ---- */

int kvt_optim_dist_prepare(kvt_optim *o, const kv_dist *d, kv_error *err) {
    if (d->size == 1 || o->b->unified || o->host) return 0;
    if (!(o->host = malloc(sizeof(float) * (o->count + 1))))
        return kv_fail(err, KV_ENOMEM, "optimiser: out of memory for a host copy of %zu values",
                       o->count);
    return 0;
}

/* arrays[i] (device, tensor i) -> o->host, packed; stops at the first error */
static int download_all(kvt_optim *o, float *const *arrays, kv_error *err) {
    size_t off = 0;
    for (int i = 0; i < o->n; i++) {
        int rc =
            o->b->ops->download(o->b, o->host + off, arrays[i], sizeof(float) * o->counts[i], err);
        if (rc) return rc;
        off += o->counts[i];
    }
    return 0;
}

static int upload_all(kvt_optim *o, float *const *arrays, kv_error *err) {
    size_t off = 0;
    for (int i = 0; i < o->n; i++) {
        int rc =
            o->b->ops->upload(o->b, arrays[i], o->host + off, sizeof(float) * o->counts[i], err);
        if (rc) return rc;
        off += o->counts[i];
    }
    return 0;
}

/* the staging buffer exists: kvt_optim_dist_prepare runs at set-up, before a status check, so a
 * process that could not allocate it has already stopped the run; missing here is a caller's bug */
static int need_host(const kvt_optim *o, kv_error *err) {
    return o->host ? 0
                   : kv_fail(err, KV_EINVAL, "optimiser: kvt_optim_dist_prepare was not called");
}

int kvt_optim_allreduce_grads(kvt_optim *o, kv_dist *d, kv_error *err) {
    if (d->size == 1) return 0;
    if (o->b->unified) return kv_dist_allreduce_f32(d, o->g, o->counts, o->n, err);
    if (d->device_buffers) { /* the backward queued on the backend must be done first */
        kv_error local = {0};
        const int lrc = o->b->ops->sync(o->b, &local);
        const int rc = kv_dist_allreduce_f32(d, o->g, o->counts, o->n, err);
        if (rc) return rc;
        if (lrc) *err = local;
        return lrc;
    }
    int rc = need_host(o, err);
    if (rc) return rc;
    kv_error local = {0};
    const int lrc = download_all(o, o->g, &local); /* on failure the sum goes on, unused here */
    float *buf = o->host;
    const size_t count = o->count;
    if ((rc = kv_dist_allreduce_f32(d, &buf, &count, 1, err))) return rc;
    if (lrc) {
        *err = local;
        return lrc;
    }
    return upload_all(o, o->g, err);
}

/* kind k of tensor i: values, first moments, second moments (device) */
static float *const *state_kind(const kvt_optim *o, int k) {
    return k == 0 ? o->w : k == 1 ? o->m : o->v;
}

int kvt_optim_bcast_state(kvt_optim *o, kv_dist *d, int root, kv_error *err) {
    if (d->size == 1) return 0;
    int lrc = 0, rc;
    kv_error local = {0};
    if (o->b->unified) {
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < o->n; i++)
                if ((rc = kv_dist_bcast(d, state_kind(o, k)[i], sizeof(float) * o->counts[i], root,
                                        err)))
                    return rc;
        return 0;
    }
    if ((rc = need_host(o, err))) return rc;
    for (int k = 0; k < 3; k++) {
        if (d->rank == root && !lrc) lrc = download_all(o, state_kind(o, k), &local);
        if ((rc = kv_dist_bcast(d, o->host, sizeof(float) * o->count, root, err))) return rc;
        if (d->rank != root && !lrc) lrc = upload_all(o, state_kind(o, k), &local);
    }
    if (lrc) *err = local;
    return lrc;
}

int kvt_optim_digest(kvt_optim *o, unsigned char out[32], kv_error *err) {
    kv_sha256_ctx c;
    kv_sha256_init(&c);
    float *tmp = NULL;
    int rc = 0;
    for (int i = 0; i < o->n && !rc; i++) {
        const float *w = o->w[i];
        if (!o->b->unified) {
            free(tmp);
            if (!(tmp = malloc(sizeof(float) * (o->counts[i] + 1)))) {
                rc = kv_fail(err, KV_ENOMEM, "optimiser: out of memory");
                break;
            }
            if ((rc = o->b->ops->download(o->b, tmp, o->w[i], sizeof(float) * o->counts[i], err)))
                break;
            w = tmp;
        }
        kv_sha256_update(&c, w, sizeof(float) * o->counts[i]);
    }
    free(tmp);
    if (!rc) kv_sha256_final(&c, out);
    return rc;
}

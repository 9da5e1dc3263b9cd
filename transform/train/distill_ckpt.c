/* Checkpoint save/resume and the run's fingerprint (distill_ckpt.h). */
#include "transform/train/distill_ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "base/sha256.h"
#include "formats/safetensors.h"
#include "transform/train/distill_state.h"

static const char *const KINDS[3] = {"param.", "adam_m.", "adam_v."};

/* tensor i's array of kind k (KINDS), device */
static float *state_array(const kvt_optim *o, int i, int k) {
    return k == 0 ? o->w[i] : k == 1 ? o->m[i] : o->v[i];
}

void distill_fingerprint(char out[65], const distill_opts *o, long total_steps, long warmup,
                         const char *map_name, const distill_seqs *train, const kvt_optim *opt) {
    char buf[1024];
    int len = snprintf(buf, sizeof buf,
                       "T=%d B=%d accum=%d steps=%ld warmup=%ld seed=%llu lr=%.17g decay=%d "
                       "b1=%.17g b2=%.17g eps=%.17g wd=%.17g clip=%.17g temp=%.17g mse=%.17g "
                       "passes=%d map=%s n_train=%ld",
                       o->seq_len, o->batch, o->accum, total_steps, warmup,
                       (unsigned long long)o->seed, o->lr, (int)o->decay, o->adam.beta1,
                       o->adam.beta2, o->adam.eps, o->adam.weight_decay, o->clip, o->temperature,
                       o->mse_weight, o->passes, map_name, train->n);
    /* default runs keep their old fingerprint */
    if (o->grad_passes > 1 && len > 0 && (size_t)len < sizeof buf)
        len += snprintf(buf + len, sizeof buf - (size_t)len, " grad_passes=%d", o->grad_passes);
    if (o->ce_weight != 0 && len > 0 && (size_t)len < sizeof buf)
        len += snprintf(buf + len, sizeof buf - (size_t)len, " ce=%.17g", o->ce_weight);
    kv_sha256_ctx c;
    kv_sha256_init(&c);
    kv_sha256_update(&c, buf, (size_t)len);
    kv_sha256_update(&c, train->ids, sizeof(int32_t) * (size_t)(train->n * train->T));
    if (distill_uses_mask(o, train)) { /* text runs keep their old fingerprint */
        kv_sha256_update(&c, "kl_mask", 7);
        kv_sha256_update(&c, train->kl_mask, (size_t)(train->n * train->T));
    }
    for (int i = 0; i < opt->n; i++) {
        kv_sha256_update(&c, opt->p[i]->name, strlen(opt->p[i]->name));
        kv_sha256_update(&c, opt->p[i]->w, sizeof(float) * opt->p[i]->n);
    }
    uint8_t d[32];
    kv_sha256_final(&c, d);
    kv_sha256_hex(d, out);
}

int distill_ckpt_save(const char *dir, const char *path, const char *fingerprint,
                      const kvt_optim *o, const distill_ckpt_meta *meta, kv_error *err) {
    const int n = 3 * o->n;
    kv_backend *b = o->b;
    st_spec *specs = calloc((size_t)n + 1, sizeof *specs);
    const void **data = calloc((size_t)n + 1, sizeof *data);
    char(*names)[KVT_NAME_MAX + 16] = calloc((size_t)n + 1, sizeof *names);
    /* host copies of the device state, unless device pointers are host pointers */
    float *host = b->unified ? NULL : malloc(sizeof(float) * (3 * o->count + 1));
    int rc = 0;
    if (!specs || !data || !names || (!b->unified && !host)) {
        rc = kv_fail(err, KV_ENOMEM, "checkpoint: out of memory");
        goto out;
    }
    float *next = host;
    for (int i = 0; i < o->n && !rc; i++)
        for (int k = 0; k < 3 && !rc; k++) {
            const int j = 3 * i + k;
            snprintf(names[j], sizeof names[j], "%s%s", KINDS[k], o->p[i]->name);
            specs[j].name = names[j];
            specs[j].dtype = KV_F32;
            specs[j].n_dims = 1;
            specs[j].shape[0] = (int64_t)o->p[i]->n;
            data[j] = state_array(o, i, k);
            if (host) {
                rc = b->ops->download(b, next, state_array(o, i, k), sizeof(float) * o->p[i]->n,
                                      err);
                data[j] = next;
                next += o->p[i]->n;
            }
        }
    if (rc) goto out;
    char step[32], tokens[32], secs[64];
    snprintf(step, sizeof step, "%ld", meta->step);
    snprintf(tokens, sizeof tokens, "%ld", meta->tokens_trained);
    snprintf(secs, sizeof secs, "%.17g", meta->seconds);
    const char *kv[] = {
        "format", DISTILL_STATE_FORMAT, "step",     step, "tokens_trained", tokens, "seconds",
        secs,     "fingerprint",        fingerprint};
    if (!(rc = kv_mkdir_p(dir, err))) rc = st_write_file(path, specs, data, n, kv, 5, err);
out:
    free(host);
    free(specs);
    free(data);
    free(names);
    return rc;
}

int distill_ckpt_load(const char *path, const char *fingerprint, long total_steps,
                      const kvt_optim *o, distill_ckpt_meta *meta, kv_error *err) {
    st_file f;
    int rc = st_open(&f, path, err);
    if (rc) return rc;
    distill_state st;
    if ((rc = distill_state_read(&f, fingerprint, total_steps, &st, err))) goto out;
    meta->step = st.step;
    meta->tokens_trained = st.tokens_trained;
    meta->seconds = st.seconds;
    for (int i = 0; i < o->n && !rc; i++)
        for (int k = 0; k < 3; k++) {
            const st_tensor *t = distill_state_tensor(&f, KINDS[k], o->p[i]->name, o->p[i]->n);
            if (!t) {
                rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s%s' missing or of the wrong shape",
                             path, KINDS[k], o->p[i]->name);
                break;
            }
            if ((rc = o->b->ops->upload(o->b, state_array(o, i, k), t->data, t->n_bytes, err)))
                break;
        }
out:
    st_close(&f);
    return rc;
}

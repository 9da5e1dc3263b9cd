#include "verify/tensor_compare.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/dtype.h"
#include "formats/safetensors.h"

/* one side: a file or a directory of shards, tensors sorted by name */
typedef struct {
    int is_dir;
    st_file f;
    st_checkpoint c;
    int n;
    const st_tensor **t;
} side;

static int side_open(side *s, const char *path, kv_error *err) {
    memset(s, 0, sizeof *s);
    struct stat st;
    s->is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    if (s->is_dir) {
        int rc = st_checkpoint_open(&s->c, path, err);
        if (rc) return rc;
        s->n = s->c.n_tensors;
        s->t = s->c.tensors;
        return 0;
    }
    int rc = st_open(&s->f, path, err);
    if (rc) return rc;
    s->n = s->f.n_tensors;
    if (!(s->t = malloc(sizeof *s->t * ((size_t)s->n + 1)))) {
        st_close(&s->f);
        return kv_fail(err, KV_ENOMEM, "out of memory");
    }
    for (int i = 0; i < s->n; i++) s->t[i] = &s->f.tensors[i];
    return 0;
}

static void side_close(side *s) {
    if (s->is_dir) {
        st_checkpoint_close(&s->c);
    } else {
        free(s->t);
        st_close(&s->f);
    }
}

static int is_float(kv_dtype t) { return t == KV_F32 || kv_dtype_is_float16(t); }

/* the values of one tensor as F32 (a view of F32 data, else converted into *buf) */
static const float *as_f32(const st_tensor *t, float **buf) {
    if (t->dtype == KV_F32) return t->data;
    if (!(*buf = malloc(sizeof(float) * (t->n_elements + 1)))) return NULL;
    kv_to_f32(*buf, t->data, t->dtype, t->n_elements);
    return *buf;
}

static int compare_one(kv_tensor_report *r, const st_tensor *a, const st_tensor *b, kv_error *err) {
    if (a->dtype != b->dtype || a->n_dims != b->n_dims ||
        memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->n_dims))
        return kv_fail(err, KV_EMISMATCH, "tensor '%s': dtype or shape differs", a->name);
    r->n_tensors++;
    r->n_values += a->n_elements;
    double rel = 0;
    if (!is_float(a->dtype)) {
        if (memcmp(a->data, b->data, a->n_bytes)) rel = 1;
    } else {
        float *ba = NULL, *bb = NULL;
        const float *x = as_f32(a, &ba), *y = as_f32(b, &bb);
        if (!x || !y) {
            free(ba);
            free(bb);
            return kv_fail(err, KV_ENOMEM, "out of memory");
        }
        double diff = 0, scale = 0;
        for (size_t i = 0; i < a->n_elements; i++) {
            const double d = fabs((double)x[i] - (double)y[i]);
            if (d > diff || d != d) diff = d != d ? INFINITY : d;
            if (fabs((double)y[i]) > scale) scale = fabs((double)y[i]);
        }
        free(ba);
        free(bb);
        if (diff > r->max_abs) r->max_abs = diff;
        rel = diff == 0 ? 0 : scale > 0 ? diff / scale : diff;
    }
    if (rel > 0) r->n_differing++;
    if (rel > r->max_rel || (rel > 0 && !r->worst[0])) {
        r->max_rel = rel;
        snprintf(r->worst, sizeof r->worst, "%s", a->name);
    }
    return 0;
}

int kv_tensor_compare(kv_tensor_report *r, const char *path_a, const char *path_b, kv_error *err) {
    memset(r, 0, sizeof *r);
    side a, b;
    int rc = side_open(&a, path_a, err);
    if (rc) return rc;
    if ((rc = side_open(&b, path_b, err))) {
        side_close(&a);
        return rc;
    }
    int i = 0, j = 0;
    while (!rc && (i < a.n || j < b.n)) {
        const int c = i == a.n ? 1 : j == b.n ? -1 : strcmp(a.t[i]->name, b.t[j]->name);
        if (c < 0)
            rc = kv_fail(err, KV_EMISMATCH, "tensor '%s' is in %s only", a.t[i]->name, path_a);
        else if (c > 0)
            rc = kv_fail(err, KV_EMISMATCH, "tensor '%s' is in %s only", b.t[j]->name, path_b);
        else rc = compare_one(r, a.t[i++], b.t[j++], err);
    }
    side_close(&a);
    side_close(&b);
    return rc;
}

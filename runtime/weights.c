#include "runtime/weights.h"

#include <string.h>

static int checkpoint_find(void *ctx, const char *name, kv_tensor_ref *out, kv_error *err) {
    (void)err;
    const st_tensor *t = st_checkpoint_find(ctx, name);
    if (!t) return 0;
    *out = (kv_tensor_ref){.dtype = t->dtype, .n_dims = t->n_dims, .data = t->data};
    for (int d = 0; d < t->n_dims && d < ST_MAX_DIMS; d++) out->shape[d] = t->shape[d];
    return 1;
}

void kv_tensor_source_checkpoint(kv_tensor_source *s, const st_checkpoint *c) {
    *s = (kv_tensor_source){.find = checkpoint_find, .ctx = (void *)c, .label = c->dir};
}

static int table_find(void *ctx, const char *name, kv_tensor_ref *out, kv_error *err) {
    const kv_tensor_table *t = ctx;
    for (int i = 0; i < t->n_items; i++) {
        if (strcmp(t->items[i].name, name) == 0) {
            *out = t->items[i].ref;
            return 1;
        }
    }
    if (t->fallback) return t->fallback->find(t->fallback->ctx, name, out, err);
    return 0;
}

void kv_tensor_source_table(kv_tensor_source *s, const kv_tensor_table *t, const char *label) {
    *s = (kv_tensor_source){.find = table_find, .ctx = (void *)t, .label = label};
}

size_t kv_tensor_ref_elements(const kv_tensor_ref *r) {
    if (r->n_dims < 0 || r->n_dims > ST_MAX_DIMS) return 0;
    size_t n = 1;
    for (int d = 0; d < r->n_dims; d++) {
        if (r->shape[d] < 0 || __builtin_mul_overflow(n, (size_t)r->shape[d], &n)) return 0;
    }
    return n;
}

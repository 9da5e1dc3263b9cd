#include "formats/tensor_source.h"

#include <stdint.h>
#include <string.h>

static const st_tensor *checkpoint_tensor(const void *ctx, int i) {
    return ((const st_checkpoint *)ctx)->tensors[i];
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* the shard holding t; for a missing tensor the one file, the index, or the directory */
static const char *checkpoint_where(const void *ctx, const st_tensor *t) {
    const st_checkpoint *ck = ctx;
    if (t)
        return t->file_index >= 0 && t->file_index < ck->n_files
                   ? base_name(ck->files[t->file_index].path)
                   : "checkpoint";
    if (ck->n_files == 1) return base_name(ck->files[0].path);
    if (ck->sharded) return "model.safetensors.index.json";
    return ck->dir ? ck->dir : "checkpoint";
}

void kv_tensor_source_checkpoint(kv_tensor_source *s, const st_checkpoint *c) {
    *s = (kv_tensor_source){.n_tensors = c->n_tensors,
                            .tensor = checkpoint_tensor,
                            .where = checkpoint_where,
                            .ctx = c};
}

static const st_tensor *table_tensor(const void *ctx, int i) {
    const kv_tensor_table *t = ctx;
    return i < t->n_items ? &t->items[i] : t->base->tensor(t->base->ctx, i - t->n_items);
}

static const char *table_where(const void *ctx, const st_tensor *x) {
    const kv_tensor_table *t = ctx;
    const uintptr_t off = (uintptr_t)x - (uintptr_t)t->items;
    if (!x || !t->base || off < (uintptr_t)t->n_items * sizeof *t->items)
        return t->label ? t->label : "tensors";
    return t->base->where(t->base->ctx, x);
}

void kv_tensor_source_table(kv_tensor_source *s, const kv_tensor_table *t) {
    *s = (kv_tensor_source){.n_tensors = t->n_items + (t->base ? t->base->n_tensors : 0),
                            .tensor = table_tensor,
                            .where = table_where,
                            .ctx = t};
}

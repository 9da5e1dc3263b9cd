/* Where a model's tensors come from: a set of st_tensor records (HF name, dtype, shape, bytes)
 * that llama_view (formats/llama_view.h) binds by name. A checkpoint directory, a bundle (its
 * checkpoint view) and tensors built in memory (tests, benches, a student) all bind the same
 * way. */
#ifndef KV_TENSOR_SOURCE_H
#define KV_TENSOR_SOURCE_H

#include "formats/safetensors.h"

typedef struct kv_tensor_source {
    int n_tensors;
    /* tensor i, 0 <= i < n_tensors; no two share a name */
    const st_tensor *(*tensor)(const void *ctx, int i);
    /* the file holding t, for messages; t == NULL: where a missing tensor was looked for */
    const char *(*where)(const void *ctx, const st_tensor *t);
    const void *ctx;
} kv_tensor_source;

/* the tensors of an open checkpoint (data: views into its mapping); c must outlive s */
void kv_tensor_source_checkpoint(kv_tensor_source *s, const st_checkpoint *c);

/* tensors held in memory: items, then (when not NULL) every tensor of base, which must not
 * repeat an item's name. Lets a test or bench build a model without files, or add tensors to a
 * checkpoint. t must outlive s. */
typedef struct {
    const st_tensor *items;
    int n_items;
    const kv_tensor_source *base;
    const char *label; /* names the items in messages */
} kv_tensor_table;
void kv_tensor_source_table(kv_tensor_source *s, const kv_tensor_table *t);

#endif

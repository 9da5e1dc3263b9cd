/* Where a model's tensors come from: a lookup "HF tensor name -> (dtype, shape, bytes)".
 * The runtime binds weights through this interface only, so a checkpoint directory, a bundle
 * or tensors built in memory (tests, benches) all load the same way. */
#ifndef KV_WEIGHTS_H
#define KV_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "formats/safetensors.h"

typedef struct {
    kv_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* prod(shape) elements, row-major; valid while the source lives */
} kv_tensor_ref;

typedef struct {
    /* 1 and *out filled when `name` exists, 0 when absent, < 0 (err filled) on failure */
    int (*find)(void *ctx, const char *name, kv_tensor_ref *out, kv_error *err);
    void *ctx;
    const char *label;  /* names the source in errors: a directory, a bundle */
} kv_tensor_source;

/* tensors of an open checkpoint (zero-copy views into its mapping); c must outlive s */
void kv_tensor_source_checkpoint(kv_tensor_source *s, const st_checkpoint *c);

/* tensors held in memory: items first, then (when not NULL) the fallback source. Lets a test
 * or bench build a model without files, or overlay a few tensors on a checkpoint. */
typedef struct {
    const char *name;
    kv_tensor_ref ref;
} kv_named_tensor;
typedef struct {
    const kv_named_tensor *items;
    int n_items;
    const kv_tensor_source *fallback;
} kv_tensor_table;
void kv_tensor_source_table(kv_tensor_source *s, const kv_tensor_table *t, const char *label);

/* number of elements of a ref; 0 for a bad rank/negative dim or on overflow */
size_t kv_tensor_ref_elements(const kv_tensor_ref *r);

#endif

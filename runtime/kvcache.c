#include "runtime/kvcache.h"

int kv_cache_init(kv_cache *c, kv_backend *b, const kv_map *map, int n_kv_heads, int head_dim,
                  int max_seq, kv_dtype dtype, kv_error *err) {
    *c = (kv_cache){0};
    if (n_kv_heads < 1 || head_dim < 1 || max_seq < 1)
        return kv_fail(err, KV_EINVAL, "KV cache: kv heads %d, head_dim %d, positions %d",
                       n_kv_heads, head_dim, max_seq);
    if (dtype != KV_F32 && dtype != KV_BF16)
        return kv_fail(err, KV_EINVAL, "KV cache: dtype %s (F32 or BF16)", kv_dtype_name(dtype));
    int rc = kvmap_validate(map, err);
    if (rc) return rc;
    const size_t elem = kv_dtype_size(dtype);
    const size_t per_token = kvmap_cache_bytes_per_token(map, n_kv_heads, head_dim, elem);
    size_t bytes, stride;
    if (per_token == 0 || __builtin_mul_overflow(per_token, (size_t)max_seq, &bytes) ||
        __builtin_mul_overflow((size_t)max_seq * (size_t)n_kv_heads, (size_t)head_dim, &stride))
        return kv_fail(err, KV_ENOMEM, "KV cache: size overflows (%d positions)", max_seq);
    c->backend = b;
    c->n_slots = kvmap_n_slots(map);
    c->max_seq = max_seq;
    c->n_kv_heads = n_kv_heads;
    c->head_dim = head_dim;
    c->dtype = dtype;
    c->elem = elem;
    c->slot_stride = stride;
    for (int i = 0; i < map->n_layers; i++) c->slot_of[i] = kvmap_slot_of(map, i);
    /* K and V halves: bytes / 2 each (per_token counts both) */
    if ((rc = b->ops->alloc(b, &c->k, bytes / 2, err)) ||
        (rc = b->ops->alloc(b, &c->v, bytes / 2, err))) {
        kv_cache_free(c);
        return rc == KV_ENOMEM ? kv_fail(err, rc, "KV cache: cannot allocate %zu bytes", bytes)
                               : kv_wrap(err, "KV cache");
    }
    c->bytes = bytes;
    return 0;
}

void kv_cache_free(kv_cache *c) {
    if (c->backend) {
        c->backend->ops->free(c->backend, c->k);
        c->backend->ops->free(c->backend, c->v);
    }
    *c = (kv_cache){0};
}

void *kv_cache_k(const kv_cache *c, int layer) {
    return (char *)c->k + (size_t)c->slot_of[layer] * c->slot_stride * c->elem;
}

void *kv_cache_v(const kv_cache *c, int layer) {
    return (char *)c->v + (size_t)c->slot_of[layer] * c->slot_stride * c->elem;
}

int kv_cache_zero(kv_cache *c, int layer, int pos0, int n, kv_error *err) {
    const size_t row_bytes = (size_t)c->n_kv_heads * c->head_dim * c->elem; /* 0 is +0.0 in both */
    const size_t offset = (size_t)pos0 * row_bytes, bytes = row_bytes * (size_t)n;
    kv_backend *b = c->backend;
    int rc = b->ops->zero(b, (char *)kv_cache_k(c, layer) + offset, bytes, err);
    if (!rc) rc = b->ops->zero(b, (char *)kv_cache_v(c, layer) + offset, bytes, err);
    return rc;
}

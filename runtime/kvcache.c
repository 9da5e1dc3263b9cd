#include "runtime/kvcache.h"

int kv_cache_init(kv_cache *c, kv_backend *b, const kv_map *map, const int *window, int max_batch,
                  int n_kv_heads, int head_dim, int max_seq, kv_dtype dtype, kv_error *err) {
    *c = (kv_cache){0};
    if (n_kv_heads < 1 || head_dim < 1 || max_seq < 1 || max_batch < 1)
        return kv_fail(err, KV_EINVAL, "KV cache: kv heads %d, head_dim %d, positions %d, batch %d",
                       n_kv_heads, head_dim, max_seq, max_batch);
    if (dtype != KV_F32 && dtype != KV_BF16)
        return kv_fail(err, KV_EINVAL, "KV cache: dtype %s (F32 or BF16)", kv_dtype_name(dtype));
    int rc = kvmap_validate(map, err);
    if (rc) return rc;
    const size_t elem = kv_dtype_size(dtype);
    const size_t bytes = kvmap_cache_bytes_windowed(map, window, max_batch, n_kv_heads, head_dim,
                                                    max_seq, elem, c->ring);
    if (bytes == 0)
        return kv_fail(err, KV_ENOMEM, "KV cache: size overflows (%d positions)", max_seq);
    c->backend = b;
    c->n_slots = kvmap_n_slots(map);
    c->max_seq = max_seq;
    c->n_kv_heads = n_kv_heads;
    c->head_dim = head_dim;
    c->dtype = dtype;
    c->elem = elem;
    const size_t row = (size_t)n_kv_heads * (size_t)head_dim; /* fits: bytes did not overflow */
    size_t at = 0;
    for (int s = 0; s < c->n_slots; s++) {
        c->slot_start[s] = at;
        at += (size_t)(c->ring[s] ? c->ring[s] : max_seq) * row;
    }
    for (int i = 0; i < map->n_layers; i++) c->slot_of[i] = kvmap_slot_of(map, i);
    /* K and V halves: bytes / 2 each */
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
    return (char *)c->k + c->slot_start[c->slot_of[layer]] * c->elem;
}

void *kv_cache_v(const kv_cache *c, int layer) {
    return (char *)c->v + c->slot_start[c->slot_of[layer]] * c->elem;
}

int kv_cache_ring(const kv_cache *c, int layer) { return c->ring[c->slot_of[layer]]; }

int kv_cache_head_rows(const kv_cache *c, int layer) {
    const int r = kv_cache_ring(c, layer);
    return r ? r : c->max_seq;
}

int kv_cache_row(const kv_cache *c, int layer, int pos) {
    const int r = kv_cache_ring(c, layer);
    return r ? pos % r : pos;
}

int kv_cache_runs(const kv_cache *c, int layer, int pos0, int n, int first[2], int row[2],
                  int count[2]) {
    const int r = kv_cache_ring(c, layer), r0 = kv_cache_row(c, layer, pos0);
    first[0] = pos0, row[0] = r0, count[0] = n;
    if (!r || r0 + n <= r) return 1;
    count[0] = r - r0; /* to the end of the ring, then on from row 0 */
    first[1] = pos0 + count[0], row[1] = 0, count[1] = n - count[0];
    return 2;
}

int kv_cache_zero(kv_cache *c, int layer, int pos0, int n, kv_error *err) {
    const size_t row_bytes = (size_t)c->head_dim * c->elem; /* one head's; 0 is +0.0 in both */
    const size_t head_bytes = (size_t)kv_cache_head_rows(c, layer) * row_bytes;
    kv_backend *b = c->backend;
    int first[2], row[2], count[2], rc = 0;
    const int runs = kv_cache_runs(c, layer, pos0, n, first, row, count);
    for (int g = 0; g < c->n_kv_heads; g++)
        for (int j = 0; !rc && j < runs; j++) {
            const size_t offset = (size_t)g * head_bytes + (size_t)row[j] * row_bytes,
                         bytes = row_bytes * (size_t)count[j];
            rc = b->ops->zero(b, (char *)kv_cache_k(c, layer) + offset, bytes, err);
            if (!rc) rc = b->ops->zero(b, (char *)kv_cache_v(c, layer) + offset, bytes, err);
        }
    return rc;
}

/* KV cache with a slot only for each KV layer (METHODS.md: l KV layers; SwiftKV l + (L-l)/g).
 * Slot s holds K and V, each [max_seq, nkv, hd] in the cache's dtype (F32, or BF16 as deployed
 * runtimes keep it), RoPE already applied to K; a layer reads the slot of its target kv(i).
 * Size = kvmap_cache_bytes_per_token(map, nkv, hd, elem) * max_seq
 * = 2 * slots * nkv * hd * elem * max_seq bytes exactly, elem = 4 (F32) or 2 (BF16).
 * The storage is the backend's (kernels/backend.h): k and v are device pointers. */
#ifndef KV_KVCACHE_H
#define KV_KVCACHE_H

#include <stddef.h>

#include "base/dtype.h"
#include "base/error.h"
#include "formats/kvmap.h"
#include "kernels/backend.h"

typedef struct {
    kv_backend *backend; /* owns k and v */
    int n_slots, max_seq, n_kv_heads, head_dim;
    int slot_of[KVMAP_MAX_LAYERS]; /* layer -> slot of the K/V it reads (kvmap_slot_of) */
    kv_dtype dtype; /* KV_F32 or KV_BF16 */
    size_t elem; /* bytes per element: 4 or 2 */
    size_t slot_stride; /* elements per slot: max_seq * nkv * hd */
    void *k, *v; /* [n_slots, max_seq, nkv, hd] each, device memory (zeroed) */
    size_t bytes; /* bytes of k and v together */
} kv_cache;

/* dtype KV_F32 or KV_BF16 (anything else is refused); storage from b, which must outlive c */
int kv_cache_init(kv_cache *c, kv_backend *b, const kv_map *map, int n_kv_heads, int head_dim,
                  int max_seq, kv_dtype dtype, kv_error *err);
void kv_cache_free(kv_cache *c);
/* K / V rows of the slot `layer` reads: [max_seq, nkv, hd] of c->dtype (device pointers) */
void *kv_cache_k(const kv_cache *c, int layer);
void *kv_cache_v(const kv_cache *c, int layer);
/* zeroes positions [pos0, pos0 + n) of the slot `layer` reads (the backend's zero) */
int kv_cache_zero(kv_cache *c, int layer, int pos0, int n, kv_error *err);

#endif

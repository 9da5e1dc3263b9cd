/* KV cache with a slot only for each KV layer (METHODS.md: l KV layers; SwiftKV l + (L-l)/g).
 * Slot s holds K and V, each [max_seq, nkv, hd] F32, RoPE already applied to K; a layer reads
 * the slot of its target kv(i). Size = kvmap_cache_bytes_per_token(map, nkv, hd, 4) * max_seq
 * = 2 * slots * nkv * hd * 4 * max_seq bytes, exactly. */
#ifndef KV_KVCACHE_H
#define KV_KVCACHE_H

#include <stddef.h>

#include "formats/error.h"
#include "transform/kvmap.h"

typedef struct {
    int n_slots, max_seq, n_kv_heads, head_dim;
    int slot_of[HF_MAX_LAYERS];  /* layer -> slot of the K/V it reads (kvmap_slot_of) */
    size_t slot_stride;          /* floats per slot: max_seq * nkv * hd */
    float *k, *v;                /* [n_slots, max_seq, nkv, hd] each */
    size_t bytes;                /* bytes of k and v together */
} kv_cache;

int kv_cache_init(kv_cache *c, const kv_map *map, int n_kv_heads, int head_dim, int max_seq,
                  kv_error *err);
void kv_cache_free(kv_cache *c);
/* K / V rows of the slot `layer` reads: [max_seq, nkv, hd] */
float *kv_cache_k(const kv_cache *c, int layer);
float *kv_cache_v(const kv_cache *c, int layer);
/* zeroes positions [pos0, pos0 + n) of the slot `layer` reads */
void kv_cache_zero(kv_cache *c, int layer, int pos0, int n);

#endif

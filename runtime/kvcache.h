/* KV cache with a slot only for each KV layer (METHODS.md: l KV layers; SwiftKV l + (L-l)/g).
 * Slot s holds K and V, each [nkv, rows(s), hd] in the cache's dtype (F32, or BF16 as deployed
 * runtimes keep it), RoPE already applied to K; a layer reads the slot of its target kv(i).
 * Head by head: one head's keys are contiguous, so attention streams them (a decode step reads
 * every head's rows; laid out [rows, nkv, hd] it read a head's 256 B of every 3 KB row).
 * rows(s) = max_seq, except for a slot that only sliding-window layers read (every layer i with
 * slot(kv(i)) = s has window[i] > 0): a ring of R = max window of its readers + max_batch - 1
 * rows when that is below max_seq, position p in row p % R (kernels.h: the attention reads it
 * so). R covers the W - 1 positions before a pass of up to max_batch tokens and the pass itself,
 * so every key a pass reads is still there; memory is bounded by the window, not the context.
 * Without windows: size = kvmap_cache_bytes_per_token(map, nkv, hd, elem) * max_seq
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
    int ring[KVMAP_MAX_LAYERS]; /* slot -> rows of its ring (0: max_seq rows, row p = p) */
    size_t slot_start[KVMAP_MAX_LAYERS]; /* slot -> its first element in k (and in v) */
    kv_dtype dtype; /* KV_F32 or KV_BF16 */
    size_t elem; /* bytes per element: 4 or 2 */
    void *k, *v; /* [nkv, rows(s), hd] each, slot after slot, device memory (zeroed) */
    size_t bytes; /* bytes of k and v together */
} kv_cache;

/* dtype KV_F32 or KV_BF16 (anything else is refused); storage from b, which must outlive c;
 * WINDOW [n_layers] per-layer sliding windows (NULL or all 0: none; hf_config.layer_window) and
 * max_batch size the rings, and the bytes, as kvmap_cache_bytes_windowed (formats/kvmap.h) */
int kv_cache_init(kv_cache *c, kv_backend *b, const kv_map *map, const int *window, int max_batch,
                  int n_kv_heads, int head_dim, int max_seq, kv_dtype dtype, kv_error *err);
void kv_cache_free(kv_cache *c);
/* K / V of the slot `layer` reads: [nkv, rows, hd] of c->dtype (device pointers), rows =
 * kv_cache_head_rows */
void *kv_cache_k(const kv_cache *c, int layer);
void *kv_cache_v(const kv_cache *c, int layer);
/* ring rows of the slot `layer` reads (0: none), and the row holding position pos */
int kv_cache_ring(const kv_cache *c, int layer);
/* rows per head of the slot `layer` reads: its ring's, or max_seq */
int kv_cache_head_rows(const kv_cache *c, int layer);
int kv_cache_row(const kv_cache *c, int layer, int pos);
/* positions [pos0, pos0 + n) of the slot `layer` reads as at most two runs of consecutive rows:
 * run j is positions first[j] .. first[j] + count[j] - 1 at rows row[j] ..; returns the number
 * of runs (1, or 2 when a ring wraps; n <= the ring's rows) */
int kv_cache_runs(const kv_cache *c, int layer, int pos0, int n, int first[2], int row[2],
                  int count[2]);
/* zeroes positions [pos0, pos0 + n) of the slot `layer` reads (the backend's zero) */
int kv_cache_zero(kv_cache *c, int layer, int pos0, int n, kv_error *err);

#endif

/* KV maps: for every layer i, kv(i) = the layer whose K/V layer i attends to (METHODS.md s1, s2).
 * Built from a spec string, a SwiftKV (l, g) pair or a config; validated; described.
 *
 * Spec strings accepted by kvmap_parse (L = n_layers):
 *   "identity"                        every layer is a KV layer
 *   "{pizza|sandwich|lasagna}-{bottom|top|middle}:l"   1 <= l <= L KV layers
 *   "cla:F"        CLA factor F, 1 <= F <= L: consecutive groups of exactly F layers from the
 *                  bottom, each reading its first layer; when F does not divide L the last group
 *                  holds the remaining L mod F layers (so l = ceil(L/F)). This equals
 *                  lasagna-bottom:ceil(L/F) only when F divides L (lasagna puts the larger groups
 *                  first, CLA keeps every group but the last at size F).
 *   "yoco"         pizza-bottom with l = L/2 + 1; L must be even and >= 2 (YOCO splits the stack
 *                  into two equal halves; an odd L is refused - use "pizza-bottom:l" instead).
 *   "lckv:W"       W >= 0 warm-up layers: sandwich-top with l = W + 1; requires W + 1 <= L.
 *   "swiftkv:l" or "swiftkv:l,g"       same as kvmap_parse_swiftkv
 *   literal        LCKV layer_types "kv(0)_kv(1)_..._kv(L-1)", decimal, exactly L entries.
 * A config.json describes its map with the same layer_types literal (or a list of integers) or
 * the SwiftKV fields; kvmap_read_config reads them. Every map built here is validated before it
 * is returned. */
#ifndef KV_KVMAP_H
#define KV_KVMAP_H

#include <stddef.h>

#include "base/error.h"

#define KVMAP_MAX_LAYERS     1024
/* passes of the iterative plan per cyclic group (LCKV's m + b = 7 + 2) unless told otherwise */
#define KVMAP_DEFAULT_PASSES 9

struct cJSON;

typedef enum { KVMAP_IDENTITY, KVMAP_CROSS, KVMAP_SWIFTKV } kvmap_kind;

typedef struct {
    kvmap_kind kind;
    int n_layers; /* L, 1..KVMAP_MAX_LAYERS */
    int kv_layer_of[KVMAP_MAX_LAYERS]; /* cross-layer: kv(i). SwiftKV: i for i < l, else the group
                                       leader l + ((j-l)/g)*g whose swiftkv K/V layer j reads */
    int swiftkv_l, swiftkv_g; /* SwiftKV only (0 otherwise) */
    char name[96]; /* canonical spec: "sandwich-middle:3", "cla:2", "yoco",
                                       "swiftkv:3,1", "identity", a literal when it fits, else
                                       "custom" */
} kv_map;

int kvmap_identity(kv_map *m, int n_layers);

/* Which tensors a SwiftKV checkpoint holds on layers j >= l (docs/INTEROP.md):
 *   hf-swiftkv (default): the teacher's q/k/v_proj kept beside the *_swiftkv projections, as
 *     Snowflake's checkpoints are; every version of ArcticInference's llama_swiftkv loads it;
 *   deploy: the teacher's q/k/v_proj dropped (smaller; kvforge reads it, loader versions that
 *     build those projections on every layer do not). */
typedef enum { KV_LAYOUT_HF_SWIFTKV = 0, KV_LAYOUT_DEPLOY = 1 } kv_swiftkv_layout;
const char *kvmap_layout_name(kv_swiftkv_layout layout); /* "hf-swiftkv" or "deploy" */
/* What the reference server (ArcticInference's llama_swiftkv) cannot load of SwiftKV map M
 * written in LAYOUT: the deploy layout, and AcrossKV (g > 1), which loader versions that split
 * the fused K/V projection per layer serve wrongly. Returns how many limitations apply (0 for a
 * non-SwiftKV map) and writes them, one sentence each separated by "\n", into WHY (may be
 * NULL). */
int kvmap_swiftkv_serving_limits(const kv_map *m, kv_swiftkv_layout layout, char *why, size_t cap);
int kvmap_parse(kv_map *m, const char *spec, int n_layers, kv_error *err);
/* SwiftKV: 1 <= l < L, g >= 1, (L - l) % g == 0 */
int kvmap_swiftkv(kv_map *m, int n_layers, int l, int g, kv_error *err);
int kvmap_parse_swiftkv(kv_map *m, const char *spec /* "l" or "l,g" (g = 1) */, int n_layers,
                        kv_error *err);
/* ranges, kv(kv(i)) = kv(i), kind-specific consistency (SwiftKV leaders, identity) */
int kvmap_validate(const kv_map *m, kv_error *err);
/* The map a config.json object describes for its n_layers = num_hidden_layers:
 *   "swiftkv": true (absent: swiftkv_default, set when the architecture implies SwiftKV) ->
 *     SwiftKV with l = num_key_value_layers (required), g = key_value_group_size (default 1);
 *   else an integer "layer_types", "0_0_2_2_4" or [0, 0, 2, 2, 4] -> that map (named by its
 *     literal); a list of strings (HF's attention kinds, one per layer) is no KV map: the
 *     identity, with "sliding_attention" layers marked in SLIDING and kinds other than that and
 *     "full_attention" refused (KV_EUNSUPPORTED, naming the layer); LCKV's 's' suffix
 *     ("0_1s_2") marks its layer in SLIDING too;
 *   else the identity.
 * SLIDING [n_layers] gets 1 for the layers marked sliding-window, 0 for the others (may be NULL:
 * not reported; the window itself is the config's sliding_window, read by hf_config). A KV map
 * given as a kvmap_parse literal refuses the 's' suffix.
 * SwiftKV together with an integer layer_types is refused (KV_EUNSUPPORTED); other errors are
 * KV_EFORMAT and name LABEL and the field. JSON null counts as absent. */
int kvmap_read_config(kv_map *m, const struct cJSON *config, int n_layers, int swiftkv_default,
                      unsigned char *sliding, const char *label, kv_error *err);

int kvmap_is_identity(const kv_map *m); /* no sharing and not SwiftKV */
int kvmap_target(const kv_map *m, int layer); /* kv(layer); -1 if bad */
int kvmap_is_kv_layer(const kv_map *m, int layer); /* owns K/V projections and a cache slot */
int kvmap_is_swiftkv_layer(const kv_map *m, int layer); /* SwiftKV and layer >= l */
int kvmap_n_slots(const kv_map *m); /* KV-cache slots: KV layers, l + (L-l)/g */
int kvmap_slot_of(const kv_map *m, int layer); /* slot of the K/V `layer` reads; -1 if bad */
int kvmap_is_upward(const kv_map *m, int layer); /* kv(i) > i: diagonal-masked attention */
double kvmap_cache_saving(const kv_map *m); /* 1 - slots / L, a fraction in [0, 1) */
/* same layers, same kv(i) and, for SwiftKV, the same l and g (names and the identity/cross
 * label aside) */
int kvmap_equal(const kv_map *a, const kv_map *b);

/* iterative prefill cyclic block [lo, hi]: lo = lowest upward layer, hi = highest target of any
 * upward layer. Returns the block's layer count hi-lo+1, or 0 with lo = hi = -1 when no layer is
 * upward. */
int kvmap_cyclic_block(const kv_map *m, int *lo, int *hi);
/* LCKV's iteration plan (METHODS.md s1): the cyclic groups. A group starts at an upward layer
 * lo and ends at hi, the highest target read by any layer of lo..hi (the runs [i, kv(i)] of the
 * upward layers merged while they overlap). kvmap_cyclic_group gives the lowest group whose first
 * layer is >= from (from: 0 or the layer after a group): returns its layer count hi-lo+1, or 0
 * with lo = hi = -1 when there is none. Groups are disjoint and ascending: the next one is
 * kvmap_cyclic_group(m, hi + 1, ..). With one
 * group, it is the cyclic block. */
int kvmap_cyclic_group(const kv_map *m, int from, int *lo, int *hi);
int kvmap_n_cyclic_groups(const kv_map *m);
/* the plan as JSON, {"passes": N, "cyclic_groups": G, "steps": [{"layers": [first, last],
 * "passes": 1 or N, "cyclic": false/true}, ..]} in layer order, N = KVMAP_DEFAULT_PASSES; NULL
 * when no layer is upward (or out of memory). The caller owns it. */
struct cJSON *kvmap_plan_json(const kv_map *m);
/* layers i with kv(i) = target (target itself included when it is a KV layer), ascending: writes
 * up to cap of them into out and returns how many there are in all; KV_EINVAL on a bad layer */
int kvmap_readers(const kv_map *m, int target, int *out, int cap);
/* "0_0_2_2_4". snprintf-like: returns the full length, truncates (NUL-terminated) when it is
 * >= cap; KV_EINVAL on a bad map */
int kvmap_layer_types(const kv_map *m, char *buf, size_t cap);
/* 2 * slots * nkv * hd * elem_bytes; 0 on bad arguments or overflow */
size_t kvmap_cache_bytes_per_token(const kv_map *m, int n_kv_heads, int head_dim,
                                   size_t elem_bytes);
/* Bytes of a KV cache of MAP for max_seq positions run in passes of up to max_batch tokens, with
 * per-layer sliding windows WINDOW [n_layers] (NULL or all 0: none): a slot that only windowed
 * layers read keeps a ring of (its readers' widest window) + max_batch - 1 rows when that is
 * below max_seq, every other slot max_seq rows; K and V, elem bytes each element (runtime/
 * kvcache.h). RING [n_slots] (may be NULL) gets each slot's ring rows (0: none). 0 on bad
 * arguments or overflow. Without windows: kvmap_cache_bytes_per_token(...) * max_seq. */
size_t kvmap_cache_bytes_windowed(const kv_map *m, const int *window, int max_batch, int n_kv_heads,
                                  int head_dim, int max_seq, size_t elem, int *ring);
#define KVMAP_RUN_BATCH 512 /* kvrun's default --batch: the passes info / plan count with */
/* per-layer diagram, one line per layer, the iterative prefill plan of a map with upward layers
 * (its steps: layers run once, cyclic groups run N times), then "KV cache: X of L slots
 * (saving Y%)".
 * snprintf-like return and truncation, as kvmap_layer_types. */
int kvmap_diagram(const kv_map *m, char *buf, size_t cap);

#endif

/* Sliding-window attention in config.json (docs/INTEROP.md "Sliding windows"): which layers
 * attend over a window, and how wide, from the fields each family uses; and LCKV's layer_types
 * string with its 's' suffix for writing them back. Internal to formats/hfconfig.c. */
#ifndef KV_HFWINDOW_H
#define KV_HFWINDOW_H

#include <cjson/cJSON.h>

#include "base/error.h"
#include "formats/hfconfig.h"

#define HF_DEFAULT_WINDOW            4096 /* MistralConfig's, Qwen2Config's and LCKV's sliding_window */
#define HF_DEFAULT_MAX_WINDOW_LAYERS 28 /* Qwen2Config's max_window_layers */

/* c->sliding_window and c->layer_window[] from ROOT, c's family, map and n_layers already read;
 * SLIDING [n_layers]: the layers kvmap_read_config found marked (LCKV's 's', HF's
 * "sliding_attention"). The rules:
 *   Mistral: every layer, W = sliding_window (absent: 4096; null: none);
 *   Qwen2: with use_sliding_window true, W = sliding_window (absent: 4096; null: none) on the
 *     layers an HF layer_types list marks or, without one, on layers i >= max_window_layers
 *     (absent: 28), as Qwen2Config; use_sliding_window false: none;
 *   others (Llama, LCKV): the marked layers, W = sliding_window (LCKV: absent 4096; Llama:
 *     required); null refused.
 * A window W >= max_position_embeddings reaches every position a run can hold: full attention
 * (all layer_window 0, sliding_window 0). Windows with a SwiftKV map are refused
 * (KV_EUNSUPPORTED). Errors name LABEL and the field. */
int hf_parse_windows(hf_config *c, const cJSON *root, const unsigned char *sliding,
                     const char *label, kv_error *err);

/* 1 when some layer of c has a window */
int hf_has_windows(const hf_config *c);

/* c->map's layer_types string with LCKV's 's' after every layer that has a window (malloc'd;
 * NULL when out of memory or the map has no string) */
char *hf_layer_types_with_windows(const hf_config *c);

#endif

/* Sliding-window fields of config.json (formats/hfwindow.h). */
#include "formats/hfwindow.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "formats/json_field.h"

/* layer_types as HF's list of attention kinds (strings) */
static int has_kind_list(const cJSON *root) {
    const cJSON *lt = json_field(root, "layer_types");
    return cJSON_IsArray(lt) && lt->child && cJSON_IsString(lt->child);
}

int hf_parse_windows(hf_config *c, const cJSON *root, const unsigned char *sliding,
                     const char *label, kv_error *err) {
    const int L = c->n_layers;
    unsigned char on[HF_MAX_LAYERS] = {0};
    int any = 0, rc, W = 0;
    for (int i = 0; i < L; i++) any |= sliding[i];
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    const int sw_null = sw && cJSON_IsNull(sw);
    if (c->family == HF_FAMILY_MISTRAL) {
        if (sw_null) return 0;
        if ((rc = json_get_int(root, label, "sliding_window", 0, HF_DEFAULT_WINDOW, 1, INT_MAX, &W,
                               err)))
            return rc;
        memset(on, 1, (size_t)L);
    } else if (c->family == HF_FAMILY_QWEN2) {
        int use = 0, from = 0;
        if ((rc = json_get_bool(root, label, "use_sliding_window", 0, &use, err))) return rc;
        if (!use || sw_null) return 0; /* Qwen2Config: sliding_window None */
        if ((rc = json_get_int(root, label, "sliding_window", 0, HF_DEFAULT_WINDOW, 1, INT_MAX, &W,
                               err)) ||
            (rc = json_get_int(root, label, "max_window_layers", 0, HF_DEFAULT_MAX_WINDOW_LAYERS, 0,
                               INT_MAX, &from, err)))
            return rc;
        if (has_kind_list(root)) memcpy(on, sliding, (size_t)L);
        else
            for (int i = from; i < L; i++) on[i] = 1;
    } else {
        if (!any) return 0;
        int first = 0;
        while (!sliding[first]) first++;
        if (sw_null)
            return kv_fail(err, KV_EFORMAT,
                           "%s: layer %d attends over a sliding window but field "
                           "'sliding_window' is null",
                           label, first);
        const int lckv = strcmp(c->model_type, "lckv-llama") == 0;
        if (!lckv && !sw)
            return kv_fail(err, KV_EFORMAT,
                           "%s: layer %d attends over a sliding window (field 'layer_types') but "
                           "field 'sliding_window' is missing",
                           label, first);
        if ((rc = json_get_int(root, label, "sliding_window", 0, HF_DEFAULT_WINDOW, 1, INT_MAX, &W,
                               err)))
            return rc;
        memcpy(on, sliding, (size_t)L);
    }
    if (W >= c->max_position_embeddings) return 0; /* every position in reach: full attention */
    int n_on = 0;
    for (int i = 0; i < L; i++) n_on += on[i];
    if (!n_on) return 0;
    if (c->map.kind == KVMAP_SWIFTKV)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: field 'sliding_window' (%d) gives %d layers a sliding window, which "
                       "kvforge does not run together with SwiftKV",
                       label, W, n_on);
    c->sliding_window = W;
    for (int i = 0; i < L; i++) c->layer_window[i] = on[i] ? W : 0;
    return 0;
}

int hf_has_windows(const hf_config *c) {
    for (int i = 0; i < c->n_layers && i < HF_MAX_LAYERS; i++)
        if (c->layer_window[i] > 0) return 1;
    return 0;
}

char *hf_layer_types_with_windows(const hf_config *c) {
    const int n = kvmap_layer_types(&c->map, NULL, 0);
    if (n < 0) return NULL;
    char *plain = malloc((size_t)n + 1), *out = malloc((size_t)n + (size_t)c->n_layers + 1);
    if (!plain || !out) {
        free(plain), free(out);
        return NULL;
    }
    kvmap_layer_types(&c->map, plain, (size_t)n + 1);
    size_t o = 0;
    int layer = 0;
    for (const char *p = plain;; p++) {
        if (*p == '_' || *p == '\0') {
            if (layer < c->n_layers && c->layer_window[layer] > 0) out[o++] = 's';
            layer++;
        }
        if (*p == '\0') break;
        out[o++] = *p;
    }
    out[o] = '\0';
    free(plain);
    return out;
}

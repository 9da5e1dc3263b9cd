#include "transform/convert/model_info.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *model_kv_kind_name(model_kv_kind k) {
    switch (k) {
    case MODEL_KV_CROSS: return "cross-layer";
    case MODEL_KV_SWIFTKV: return "swiftkv";
    default: return "identity";
    }
}

const char *model_info_schema_note(const char *schema) {
    if (!strcmp(schema, "llama")) return "plain Hugging Face Llama: every Llama loader and kvforge";
    if (!strcmp(schema, "mistral")) return "Hugging Face Mistral: every Mistral loader and kvforge";
    if (!strcmp(schema, "qwen2")) return "Hugging Face Qwen2: every Qwen2 loader and kvforge";
    if (!strcmp(schema, "lckv-llama"))
        return "LCKV's cross-layer Llama: whyNLP/LCKV's code and kvforge";
    if (!strcmp(schema, "llama_swiftkv"))
        return "Snowflake's SwiftKV: ArcticInference (vLLM) and kvforge";
    if (!strcmp(schema, "llama_swiftkv-off") || !strcmp(schema, "qwen2_swiftkv-off"))
        return "Snowflake's SwiftKV saved with swiftkv false (ArcticTraining's teacher mode): runs "
               "as the teacher on every layer's own q/k/v_proj; set swiftkv true in config.json to "
               "run its SwiftKV projections";
    if (!strcmp(schema, "qwen2_swiftkv"))
        return "Snowflake's Qwen2 SwiftKV (ArcticTraining's qwen2_swiftkv) and kvforge";
    if (!strcmp(schema, "qwen2+layer_types"))
        return "kvforge's cross-layer Qwen2 (LCKV has no Qwen2 model): only kvforge reads it "
               "right, a plain Qwen2 loader would ignore layer_types";
    if (!strcmp(schema, "llama+layer_types") || !strcmp(schema, "mistral+layer_types"))
        return "non-standard (kvforge before LCKV's schema): only kvforge reads it right, a plain "
               "Llama "
               "loader would ignore layer_types";
    if (!strcmp(schema, "llama+swiftkv"))
        return "non-standard (swiftkv under LlamaForCausalLM): only kvforge reads it right";
    return "non-standard (swiftkv under a plain architecture): only kvforge reads it right";
}

/* 2 * slots * nkv * hd * elem; 0 on overflow */
static size_t kv_bytes(int slots, int n_kv_heads, int head_dim, size_t elem) {
    size_t n = 2;
    if (__builtin_mul_overflow(n, (size_t)slots, &n) ||
        __builtin_mul_overflow(n, (size_t)n_kv_heads, &n) ||
        __builtin_mul_overflow(n, (size_t)head_dim, &n) || __builtin_mul_overflow(n, elem, &n))
        return 0;
    return n;
}

double model_swiftkv_prefill_saving(const hf_config *c, int l, int g) {
    const int L = c->n_layers;
    if (l >= L || l < 0 || g < 1 || L < 1) return 0.0;
    const double H = c->hidden_size, q = H * c->n_heads * c->head_dim,
                 kv = 2.0 * H * c->n_kv_heads * c->head_dim,
                 o = (double)c->n_heads * c->head_dim * H, mlp = 3.0 * H * c->intermediate_size;
    const double layer = q + kv + o + mlp, leaders = (double)((L - l + g - 1) / g);
    /* the original as kvrun runs it: a prompt token's last layer computes only its K/V (the rest
     * feeds nothing but logits; METHODS.md, tail skip) */
    const double full = (L - 1) * layer + kv, prefill = l * layer + leaders * kv;
    return full > 0 && prefill < full ? 1.0 - prefill / full : 0.0;
}

const char *model_change_text(double before, double after, char *buf, size_t cap) {
    const double pct = before != 0 ? 100.0 * (after - before) / before : 0.0;
    if (pct >= 0.05) snprintf(buf, cap, "growth %.1f%%", pct);
    else if (pct <= -0.05) snprintf(buf, cap, "saving %.1f%%", -pct);
    else if (after != before)
        snprintf(buf, cap, "%s under 0.1%%", after < before ? "saving" : "growth");
    else snprintf(buf, cap, "no change");
    return buf;
}

kv_dtype model_info_cache_dtype(const model_info *mi) {
    return mi->dtype == KV_F32 || mi->dtype == KV_F16 || mi->dtype == KV_BF16 ? mi->dtype : KV_F32;
}

int model_info_fill(model_info *mi, const llama_view *v, kv_error *err) {
    memset(mi, 0, sizeof *mi);
    const hf_config *c = v->cfg;
    const st_checkpoint *ck = v->ckpt;
    if (!c || !ck) return kv_fail(err, KV_EINVAL, "model info: view is not bound");
    snprintf(mi->architecture, sizeof mi->architecture, "%s", c->architecture);
    snprintf(mi->model_type, sizeof mi->model_type, "%s", c->model_type);
    mi->schema = hf_config_schema(c);
    if (c->map.kind == KVMAP_SWIFTKV)
        mi->swiftkv_layout = v->layers && v->layers[c->map.swiftkv_l].q ? "hf-swiftkv" : "deploy";
    mi->n_layers = c->n_layers;
    mi->n_heads = c->n_heads;
    mi->n_kv_heads = c->n_kv_heads;
    mi->head_dim = c->head_dim;
    mi->hidden_size = c->hidden_size;
    mi->ffn_size = c->intermediate_size;
    mi->vocab_size = c->vocab_size;
    mi->max_position = c->max_position_embeddings;
    mi->tied = c->tie_word_embeddings;
    snprintf(mi->biases, sizeof mi->biases, "%s%s%s%s", c->attention_bias ? "q/k/v" : "",
             c->o_bias ? "/o" : "", c->mlp_bias && c->attention_bias ? ", " : "",
             c->mlp_bias ? "mlp" : "");
    mi->dtype = c->torch_dtype;
    mi->n_params = v->n_params;
    mi->n_params_config = hf_config_param_count(c);
    mi->n_tensors = ck->n_tensors;
    mi->n_files = ck->n_files;
    for (int t = 0; t < KV_DTYPE_COUNT; t++) {
        mi->bytes_by_dtype[t] = v->bytes_by_dtype[t];
        mi->bytes_total += v->bytes_by_dtype[t];
    }
    mi->kv_slots = kvmap_n_slots(&c->map);
    size_t elem = kv_dtype_size(model_info_cache_dtype(mi));
    mi->kv_bytes_per_token = kv_bytes(mi->kv_slots, c->n_kv_heads, c->head_dim, elem);
    mi->kv_bytes_per_token_full = kv_bytes(c->n_layers, c->n_kv_heads, c->head_dim, elem);
    if (!mi->kv_bytes_per_token || !mi->kv_bytes_per_token_full)
        return kv_fail(err, KV_ENOMEM, "model info: KV-cache bytes per token overflow");
    mi->rope = c->rope;
    for (int i = 0; i < c->n_layers; i++) mi->window_layers += c->layer_window[i] > 0;
    if (mi->window_layers) {
        int ring[HF_MAX_LAYERS];
        const int ctx = c->max_position_embeddings;
        mi->sliding_window = c->sliding_window;
        mi->kv_bytes_context = kvmap_cache_bytes_windowed(
            &c->map, c->layer_window, KVMAP_RUN_BATCH, c->n_kv_heads, c->head_dim, ctx, elem, ring);
        mi->kv_bytes_context_full = kvmap_cache_bytes_windowed(
            &c->map, NULL, KVMAP_RUN_BATCH, c->n_kv_heads, c->head_dim, ctx, elem, NULL);
        if (!mi->kv_bytes_context || !mi->kv_bytes_context_full)
            return kv_fail(err, KV_ENOMEM, "model info: KV-cache bytes at %d positions overflow",
                           ctx);
        for (int s = 0; s < mi->kv_slots; s++) mi->ring_slots += ring[s] > 0;
    }
    if (c->map.kind == KVMAP_SWIFTKV) {
        mi->kv_kind = MODEL_KV_SWIFTKV;
        mi->prefill_saving = model_swiftkv_prefill_saving(c, c->map.swiftkv_l, c->map.swiftkv_g);
        mi->swiftkv_layers = c->map.swiftkv_l;
        mi->swiftkv_group = c->map.swiftkv_g;
        snprintf(mi->kv_map, sizeof mi->kv_map, "l=%d,g=%d", c->map.swiftkv_l, c->map.swiftkv_g);
        return 0;
    }
    mi->kv_kind = c->map.kind == KVMAP_CROSS ? MODEL_KV_CROSS : MODEL_KV_IDENTITY;
    int n = kvmap_layer_types(&c->map, mi->kv_map, sizeof mi->kv_map);
    if (n < 0 || (size_t)n >= sizeof mi->kv_map)
        return kv_fail(err, KV_EINVAL, "layer map: %d layers do not fit in %zu bytes", c->n_layers,
                       sizeof mi->kv_map);
    return 0;
}

int model_info_load_dir(model_info *mi, const char *dir, kv_error *err) {
    llama_model_dir *m = malloc(sizeof *m);
    if (!m) return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    int rc = llama_view_open_dir(m, dir, err);
    if (!rc) {
        rc = model_info_fill(mi, &m->view, err);
        llama_view_close_dir(m);
    }
    free(m);
    return rc;
}

/* "  RoPE  theta ..; rope_scaling KIND (parameters)" */
static void print_rope(FILE *f, const kv_rope_config *r) {
    const char *kind = kv_rope_scaling_name(r->scaling);
    fprintf(f, "  RoPE           theta %g; rope_scaling ", r->theta);
    switch (r->scaling) {
    case KV_ROPE_LLAMA3:
        fprintf(f,
                "llama3 (factor %g, low_freq_factor %g, high_freq_factor %g, "
                "original_max_position_embeddings %d)\n",
                r->factor, r->low_freq_factor, r->high_freq_factor, r->original_max_position);
        break;
    case KV_ROPE_LINEAR: fprintf(f, "linear (factor %g)\n", r->factor); break;
    case KV_ROPE_DYNAMIC:
    case KV_ROPE_LONGROPE:
        fprintf(f, "%s (factor %g, original_max_position_embeddings %d, attention factor %g)\n",
                kind, r->factor, r->original_max_position, kv_rope_attention_factor(r));
        break;
    case KV_ROPE_YARN:
        fprintf(f,
                "yarn (factor %g, original_max_position_embeddings %d, beta_fast %g, beta_slow "
                "%g, attention factor %g)\n",
                r->factor, r->original_max_position, r->beta_fast, r->beta_slow,
                kv_rope_attention_factor(r));
        break;
    default: fprintf(f, "none\n"); break;
    }
}

/* rope_scaling as HF writes it, plus the attention factor in effect */
static cJSON *rope_json(const kv_rope_config *r) {
    cJSON *rs = cJSON_CreateObject();
    int ok = rs && cJSON_AddStringToObject(rs, "rope_type", kv_rope_scaling_name(r->scaling)) &&
             cJSON_AddNumberToObject(rs, "factor", r->factor);
    if (r->scaling == KV_ROPE_LLAMA3)
        ok = ok && cJSON_AddNumberToObject(rs, "low_freq_factor", r->low_freq_factor) &&
             cJSON_AddNumberToObject(rs, "high_freq_factor", r->high_freq_factor);
    if (r->scaling != KV_ROPE_LINEAR)
        ok = ok && cJSON_AddNumberToObject(rs, "original_max_position_embeddings",
                                           r->original_max_position);
    if (r->scaling == KV_ROPE_YARN)
        ok = ok && cJSON_AddNumberToObject(rs, "beta_fast", r->beta_fast) &&
             cJSON_AddNumberToObject(rs, "beta_slow", r->beta_slow) &&
             cJSON_AddBoolToObject(rs, "truncate", r->truncate);
    if (r->scaling == KV_ROPE_YARN || r->scaling == KV_ROPE_LONGROPE)
        ok = ok && cJSON_AddNumberToObject(rs, "attention_factor", kv_rope_attention_factor(r));
    if (!ok) {
        cJSON_Delete(rs);
        return NULL;
    }
    return rs;
}

/* "1.23 M"-style helper for the text form */
static void human(char *out, size_t cap, double x) {
    if (x >= 1e9) snprintf(out, cap, "%.2f G", x / 1e9);
    else if (x >= 1e6) snprintf(out, cap, "%.2f M", x / 1e6);
    else if (x >= 1e3) snprintf(out, cap, "%.2f K", x / 1e3);
    else snprintf(out, cap, "%.0f", x);
}

int model_info_text(const model_info *mi, const char *label, char **out, kv_error *err) {
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return kv_fail(err, KV_ENOMEM, "model info: out of memory");
    char h[32];
    if (label) fprintf(f, "%s\n", label);
    fprintf(f, "  architecture   %s (%s)\n", mi->architecture, mi->model_type);
    fprintf(f, "  schema         %s%s%s (%s)\n", mi->schema, mi->swiftkv_layout ? ", layout " : "",
            mi->swiftkv_layout ? mi->swiftkv_layout : "", model_info_schema_note(mi->schema));
    fprintf(f, "  layers         %d\n", mi->n_layers);
    fprintf(f, "  hidden         %d (ffn %d)\n", mi->hidden_size, mi->ffn_size);
    fprintf(f, "  heads          %d query, %d key/value, head_dim %d\n", mi->n_heads,
            mi->n_kv_heads, mi->head_dim);
    if (mi->biases[0]) fprintf(f, "  biases         %s\n", mi->biases);
    fprintf(f, "  vocab          %d%s\n", mi->vocab_size, mi->tied ? " (tied embeddings)" : "");
    fprintf(f, "  context        %d positions\n", mi->max_position);
    print_rope(f, &mi->rope);
    human(h, sizeof h, (double)mi->n_params);
    fprintf(f, "  parameters     %lld (%s) in %d tensors, %d file%s\n", (long long)mi->n_params, h,
            mi->n_tensors, mi->n_files, mi->n_files == 1 ? "" : "s");
    if (mi->n_params_config != mi->n_params)
        fprintf(f, "                 %lld in the deploy layout the config describes\n",
                (long long)mi->n_params_config);
    for (int t = 0; t < KV_DTYPE_COUNT; t++) {
        if (!mi->bytes_by_dtype[t]) continue;
        human(h, sizeof h, (double)mi->bytes_by_dtype[t]);
        fprintf(f, "  bytes %-8s %zu (%sB)\n", kv_dtype_name((kv_dtype)t), mi->bytes_by_dtype[t],
                h);
    }
    fprintf(f, "  KV map         %s %s\n", model_kv_kind_name(mi->kv_kind), mi->kv_map);
    char ch[48];
    model_change_text((double)mi->kv_bytes_per_token_full, (double)mi->kv_bytes_per_token, ch,
                      sizeof ch);
    fprintf(f,
            "  KV cache       %zu bytes/token in %s (%d of %d slots; the original's %d in %s: %zu, "
            "%s)\n",
            mi->kv_bytes_per_token, kv_dtype_name(model_info_cache_dtype(mi)), mi->kv_slots,
            mi->n_layers, mi->n_layers, kv_dtype_name(model_info_cache_dtype(mi)),
            mi->kv_bytes_per_token_full, ch);
    if (mi->window_layers) {
        char cw[48];
        model_change_text((double)mi->kv_bytes_context_full, (double)mi->kv_bytes_context, cw,
                          sizeof cw);
        fprintf(f,
                "  sliding window %d positions on %d of %d layers; %d of %d slots are rings of "
                "window + batch - 1 rows: at %d positions (batch %d) the KV cache holds %zu "
                "bytes, %zu without rings (%s)\n",
                mi->sliding_window, mi->window_layers, mi->n_layers, mi->ring_slots, mi->kv_slots,
                mi->max_position, KVMAP_RUN_BATCH, mi->kv_bytes_context, mi->kv_bytes_context_full,
                cw);
    }
    if (mi->kv_kind == MODEL_KV_SWIFTKV) {
        fprintf(f,
                "  SwiftKV        prefill skips %.1f%% of a prompt token's layer FLOPs (layers "
                "%d..%d run "
                "only K/V projections); AcrossKV (g=%d) saves %.1f%% of the KV cache%s\n",
                100.0 * mi->prefill_saving, mi->swiftkv_layers, mi->n_layers - 1, mi->swiftkv_group,
                100.0 * (1.0 - (double)mi->kv_slots / mi->n_layers),
                mi->swiftkv_group == 1 ? " (g = 1: SingleInputKV saves compute, not memory)" : "");
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || !buf) {
        free(buf);
        return kv_fail(err, KV_ENOMEM, "model info: out of memory");
    }
    *out = buf;
    return 0;
}

int model_info_json(const model_info *mi, char **out, kv_error *err) {
    *out = NULL;
    cJSON *o = cJSON_CreateObject(), *bytes = cJSON_CreateObject();
    int ok = o && bytes;
#define NUM(key, val) ok = ok && cJSON_AddNumberToObject(o, key, (double)(val))
#define STR(key, val) ok = ok && cJSON_AddStringToObject(o, key, val)
    STR("architecture", mi->architecture);
    STR("model_type", mi->model_type);
    STR("schema", mi->schema);
    STR("schema_note", model_info_schema_note(mi->schema));
    if (mi->swiftkv_layout) STR("swiftkv_layout", mi->swiftkv_layout);
    NUM("layers", mi->n_layers);
    NUM("hidden_size", mi->hidden_size);
    NUM("intermediate_size", mi->ffn_size);
    NUM("heads", mi->n_heads);
    NUM("kv_heads", mi->n_kv_heads);
    NUM("head_dim", mi->head_dim);
    NUM("vocab_size", mi->vocab_size);
    NUM("max_position_embeddings", mi->max_position);
    ok = ok && cJSON_AddBoolToObject(o, "tied", mi->tied);
    if (mi->biases[0]) STR("biases", mi->biases);
    STR("dtype", kv_dtype_name(mi->dtype));
    NUM("parameters", mi->n_params);
    NUM("parameters_config", mi->n_params_config);
    NUM("tensors", mi->n_tensors);
    NUM("files", mi->n_files);
    NUM("bytes_total", mi->bytes_total);
    for (int t = 0; ok && t < KV_DTYPE_COUNT; t++)
        if (mi->bytes_by_dtype[t])
            ok = cJSON_AddNumberToObject(bytes, kv_dtype_name((kv_dtype)t),
                                         (double)mi->bytes_by_dtype[t]) != NULL;
    if (ok) {
        ok = cJSON_AddItemToObject(o, "bytes_per_dtype", bytes);
        if (ok) bytes = NULL;
    }
    STR("kv_map_kind", model_kv_kind_name(mi->kv_kind));
    STR("kv_map", mi->kv_map);
    if (mi->kv_kind == MODEL_KV_SWIFTKV) {
        NUM("swiftkv_layers", mi->swiftkv_layers);
        NUM("swiftkv_group", mi->swiftkv_group);
        NUM("across_kv_saving", (double)(mi->n_layers - mi->kv_slots) / mi->n_layers);
        NUM("prefill_compute_saving", mi->prefill_saving);
    }
    NUM("rope_theta", mi->rope.theta);
    if (mi->rope.scaling != KV_ROPE_PLAIN) {
        cJSON *rs = rope_json(&mi->rope);
        if (rs && ok) ok = cJSON_AddItemToObject(o, "rope_scaling", rs);
        else ok = 0, cJSON_Delete(rs);
    } else {
        ok = ok && cJSON_AddNullToObject(o, "rope_scaling");
    }
    NUM("kv_slots", mi->kv_slots);
    STR("kv_cache_dtype", kv_dtype_name(model_info_cache_dtype(mi)));
    NUM("kv_cache_bytes_per_token", mi->kv_bytes_per_token);
    NUM("kv_cache_bytes_per_token_full", mi->kv_bytes_per_token_full);
    NUM("kv_cache_saving", ((double)mi->kv_bytes_per_token_full - (double)mi->kv_bytes_per_token) /
                               (double)mi->kv_bytes_per_token_full);
    if (mi->window_layers) {
        NUM("sliding_window", mi->sliding_window);
        NUM("sliding_window_layers", mi->window_layers);
        NUM("kv_ring_slots", mi->ring_slots);
        NUM("kv_cache_bytes_at_context", mi->kv_bytes_context);
        NUM("kv_cache_bytes_at_context_without_rings", mi->kv_bytes_context_full);
    }
#undef NUM
#undef STR
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(bytes);
    cJSON_Delete(o);
    if (!text) return kv_fail(err, KV_ENOMEM, "model info: out of memory building JSON");
    *out = strdup(text);
    cJSON_free(text);
    if (!*out) return kv_fail(err, KV_ENOMEM, "model info: out of memory");
    return 0;
}

#include "transform/synth/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"

#define CHUNK_ELEMS (1u << 20)

static const struct {
    const char *name;
    synth_spec s;
} presets[] = {
    {"tiny",
     {4, 64, 8, 4, 8, 172, 512, 512, 1, KV_F32, 10000.0, 1, 0, 0.02f, 0, NULL, SYNTH_LLAMA, 0, 0}},
    {"stories260k",
     {5, 64, 8, 4, 8, 172, 512, 512, 1, KV_F32, 10000.0, 1, 0, 0.02f, 0, NULL, SYNTH_LLAMA, 0, 0}},
    {"stories110m",
     {12, 768, 12, 12, 64, 2048, 32000, 1024, 0, KV_F32, 10000.0, 1, 0, 0.02f, 0, NULL, SYNTH_LLAMA,
      0, 0}},
    {"tinyllama-1.1b",
     {22, 2048, 32, 4, 64, 5632, 32000, 2048, 0, KV_BF16, 10000.0, 1, 0, 0.02f, 0, NULL,
      SYNTH_LLAMA, 0, 0}},
    {"llama-3.2-1b",
     {16, 2048, 32, 8, 64, 8192, 128256, 2048, 1, KV_BF16, 500000.0, 1, 0, 0.02f, 0, NULL,
      SYNTH_LLAMA, 0, 0}},
    {"llama-3.1-8b",
     {32, 4096, 32, 8, 128, 14336, 128256, 131072, 0, KV_BF16, 500000.0, 1, 0, 0.02f, 1, NULL,
      SYNTH_LLAMA, 0, 0}},
    {"qwen2-0.5b",
     {24, 896, 14, 2, 64, 4864, 151936, 32768, 1, KV_BF16, 1000000.0, 1, 0, 0.02f, 0, NULL,
      SYNTH_QWEN2, 0, 0}},
    {"qwen2-tiny",
     {4, 64, 4, 2, 16, 96, 512, 512, 1, KV_F32, 1000000.0, 1, 0, 0.02f, 0, NULL, SYNTH_QWEN2, 0,
      0}},
};

int synth_preset(synth_spec *s, const char *name) {
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (strcmp(presets[i].name, name) == 0) {
            *s = presets[i].s;
            return 0;
        }
    return -1;
}

const char *synth_preset_names(void) {
    return "tiny|stories260k|stories110m|tinyllama-1.1b|llama-3.2-1b|llama-3.1-8b|qwen2-0.5b|"
           "qwen2-tiny";
}

/* splitmix64: a counter-based stream, so any element can be generated independently */
static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* element i of a tensor: Box-Muller on the pair (i/2), cosine for even i, sine for odd i */
void synth_gaussian(float *out, size_t n, size_t first, uint64_t seed, const char *name,
                    float std) {
    uint64_t key = splitmix64(name_hash(name) ^ splitmix64(seed));
    for (size_t k = 0; k < n; k++) {
        size_t i = first + k, pair = i / 2;
        uint64_t r1 = splitmix64(key + 2 * pair), r2 = splitmix64(key + 2 * pair + 1);
        double u1 = ((double)(r1 >> 11) + 1.0) * (1.0 / 9007199254740992.0); /* (0, 1] */
        double u2 = (double)(r2 >> 11) * (1.0 / 9007199254740992.0);
        double radius = sqrt(-2.0 * log(u1)), angle = 6.283185307179586 * u2;
        out[k] = (float)(std * radius * ((i & 1) ? sin(angle) : cos(angle)));
    }
}

typedef struct {
    const synth_spec *s;
    const st_spec *specs;
    float *f32;
    void *converted;
} fill_ctx;

static int is_norm(const char *name) { return strstr(name, "norm") != NULL; }

static int fill_tensor(void *vctx, int index, st_writer *w, kv_error *err) {
    fill_ctx *c = vctx;
    const st_spec *sp = &c->specs[index];
    size_t n = st_spec_bytes(sp) / kv_dtype_size(sp->dtype);
    for (size_t first = 0; first < n; first += CHUNK_ELEMS) {
        size_t count = n - first < CHUNK_ELEMS ? n - first : CHUNK_ELEMS;
        if (is_norm(sp->name))
            for (size_t k = 0; k < count; k++) c->f32[k] = 1.0f;
        else synth_gaussian(c->f32, count, first, c->s->seed, sp->name, c->s->std);
        kv_dtype_cast(c->converted, sp->dtype, c->f32, KV_F32, count);
        int rc = st_writer_put(w, c->converted, count * kv_dtype_size(sp->dtype), err);
        if (rc) return rc;
    }
    return 0;
}

static int add_spec(st_spec *specs, char (*names)[96], int *n, const char *name, kv_dtype t,
                    int64_t rows, int64_t cols) {
    snprintf(names[*n], 96, "%s", name);
    specs[*n] =
        (st_spec){.name = names[*n], .dtype = t, .n_dims = cols ? 2 : 1, .shape = {rows, cols}};
    (*n)++;
    return 0;
}

static const char *const llama3_scaling =
    "{\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
    "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}";

char *synth_config_json(const synth_spec *s) {
    const char *dtype = s->dtype == KV_BF16  ? "bfloat16"
                        : s->dtype == KV_F16 ? "float16"
                                             : "float32";
    const char *rs = s->rope_scaling ? s->rope_scaling : s->rope_llama3 ? llama3_scaling : "null";
    static const char *const archs[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                        "Qwen2ForCausalLM"};
    static const char *const types[] = {"llama", "mistral", "qwen2"};
    const int a = s->arch == SYNTH_MISTRAL ? 1 : s->arch == SYNTH_QWEN2 ? 2 : 0;
    char window[160] = "";
    if (a == 1 && s->sliding_window)
        snprintf(window, sizeof window, "  \"sliding_window\": %d,\n", s->sliding_window);
    else if (a == 1) snprintf(window, sizeof window, "  \"sliding_window\": null,\n");
    else if (a == 2) /* as Qwen2 checkpoints ship it: a window switched off, unless asked */
        snprintf(window, sizeof window,
                 "  \"use_sliding_window\": %s,\n  \"sliding_window\": %d,\n"
                 "  \"max_window_layers\": %d,\n",
                 s->window_layers ? "true" : "false",
                 s->sliding_window ? s->sliding_window : s->max_pos,
                 s->window_layers ? s->window_layers - 1 : s->n_layers);
    const char *biases = a == 2 ? "" : "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n";
    const size_t cap = 4096 + strlen(rs);
    char *text = malloc(cap);
    if (!text) return NULL;
    int n = snprintf(
        text, cap,
        "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n"
        "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
        "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
        "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-05,\n"
        "  \"rope_theta\": %.1f,\n  \"rope_scaling\": %s,\n  \"tie_word_embeddings\": %s,\n"
        "%s  \"hidden_act\": \"silu\",\n%s"
        "  \"torch_dtype\": \"%s\",\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n"
        "  \"kvforge_synthetic\": {\"seed\": %llu, \"std\": %g}\n}\n",
        archs[a], types[a], s->hidden, s->ffn, s->n_layers, s->n_heads, s->n_kv_heads, s->head_dim,
        s->vocab, s->max_pos, s->rope_theta, rs, s->tied ? "true" : "false", window, biases, dtype,
        (unsigned long long)s->seed, (double)s->std);
    if (n < 0 || (size_t)n >= cap) {
        free(text);
        return NULL;
    }
    return text;
}

/* the config text, checked to be one kvforge reads (a bad --rope-scaling text fails here,
 * naming the field, before anything is written) */
static int make_config(const synth_spec *s, char **out, kv_error *err) {
    *out = synth_config_json(s);
    if (!*out) return kv_fail(err, KV_ENOMEM, "config.json: out of memory");
    hf_config *check = malloc(sizeof *check);
    int rc = check ? hf_config_parse(check, *out, "synthetic config.json", err)
                   : kv_fail(err, KV_ENOMEM, "config.json: out of memory");
    free(check);
    if (rc) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

int synth_write(const char *dir, const synth_spec *s, kv_error *err) {
    if (s->n_layers < 1 || s->n_layers > 1024 || s->hidden < 1 || s->n_heads < 1 ||
        s->n_kv_heads < 1 || s->head_dim < 1 || s->ffn < 1 || s->vocab < 300 ||
        s->n_heads % s->n_kv_heads || s->max_pos < 1)
        return kv_fail(err, KV_EINVAL,
                       "synthetic model: invalid shape (layers %d, hidden %d, heads %d/%d, "
                       "head_dim %d, ffn %d, vocab %d >= 300)",
                       s->n_layers, s->hidden, s->n_heads, s->n_kv_heads, s->head_dim, s->ffn,
                       s->vocab);
    if (s->dtype != KV_F32 && !kv_dtype_is_float16(s->dtype))
        return kv_fail(err, KV_EINVAL, "synthetic model: dtype must be F32, F16 or BF16");
    char *config = NULL;
    int rc = make_config(s, &config, err);
    if (!rc) rc = kv_mkdir_p(dir, err);
    if (rc) {
        free(config);
        return rc;
    }
    int max_specs = 12 * s->n_layers + 3;
    st_spec *specs = calloc((size_t)max_specs, sizeof *specs);
    char(*names)[96] = calloc((size_t)max_specs, sizeof *names);
    fill_ctx ctx = {s, specs, malloc(CHUNK_ELEMS * sizeof(float)),
                    malloc(CHUNK_ELEMS * sizeof(float))};
    if (!specs || !names || !ctx.f32 || !ctx.converted) {
        rc = kv_fail(err, KV_ENOMEM, "out of memory");
        goto done;
    }
    int n = 0;
    int64_t H = s->hidden, q_rows = (int64_t)s->n_heads * s->head_dim,
            kv_rows = (int64_t)s->n_kv_heads * s->head_dim;
    char name[96];
    add_spec(specs, names, &n, "model.embed_tokens.weight", s->dtype, s->vocab, H);
    add_spec(specs, names, &n, "model.norm.weight", s->dtype, H, 0);
    if (!s->tied) add_spec(specs, names, &n, "lm_head.weight", s->dtype, s->vocab, H);
    for (int i = 0; i < s->n_layers; i++) {
        const struct {
            const char *suffix;
            int64_t rows, cols;
        } layer[] = {
            {"input_layernorm.weight", H, 0},        {"post_attention_layernorm.weight", H, 0},
            {"self_attn.q_proj.weight", q_rows, H},  {"self_attn.k_proj.weight", kv_rows, H},
            {"self_attn.v_proj.weight", kv_rows, H}, {"self_attn.o_proj.weight", H, q_rows},
            {"mlp.gate_proj.weight", s->ffn, H},     {"mlp.up_proj.weight", s->ffn, H},
            {"mlp.down_proj.weight", H, s->ffn},
        };
        for (size_t k = 0; k < sizeof layer / sizeof *layer; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", i, layer[k].suffix);
            add_spec(specs, names, &n, name, s->dtype, layer[k].rows, layer[k].cols);
        }
        for (int k = 0; s->arch == SYNTH_QWEN2 && k < 3; k++) { /* q/k/v biases */
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%c_proj.bias", i, "qkv"[k]);
            add_spec(specs, names, &n, name, s->dtype, k ? kv_rows : q_rows, 0);
        }
    }
    const char *meta[] = {"format", "pt"};
    rc = st_write_checkpoint(dir, specs, n, s->shard_bytes, meta, 1, fill_tensor, &ctx, err);
    char path[4096];
    if (!rc) rc = kv_join(path, sizeof path, dir, "config.json", err);
    if (!rc) rc = kv_write_file_atomic(path, config, strlen(config), err);
    if (!rc) rc = kv_join(path, sizeof path, dir, "tokenizer.json", err);
    if (!rc) rc = kv_tokenizer_write_synthetic(path, s->vocab, err);
done:
    free(config);
    free(specs);
    free(names);
    free(ctx.f32);
    free(ctx.converted);
    return rc;
}

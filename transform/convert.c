#include "transform/convert.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/fileio.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "formats/sha256.h"
#include "formats/version.h"

#define CHUNK_ELEMS (1u << 20)
#define MAX_MEAN 256

/* one output tensor and where its values come from */
typedef struct {
    char name[128];
    kv_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    int n_src;                     /* 1: copy (with dtype conversion); >1: element-wise mean */
    const st_tensor *src[MAX_MEAN];
} out_tensor;

typedef struct {
    st_checkpoint ckpt;
    hf_config cfg;
    char *config_text;
    out_tensor *out;
    int n_out;
    st_spec *specs;
    float *acc, *chunk;           /* [CHUNK_ELEMS] float scratch */
    double *sum;                  /* [CHUNK_ELEMS] */
    void *converted;              /* [CHUNK_ELEMS * 4] */
    kv_convert_progress_fn progress;
    void *progress_ctx;
    size_t done, total;
} convert_ctx;

static void ctx_free(convert_ctx *c) {
    st_checkpoint_close(&c->ckpt);
    free(c->config_text);
    free(c->out);
    free(c->specs);
    free(c->acc);
    free(c->chunk);
    free(c->sum);
    free(c->converted);
}

static const st_tensor *need(convert_ctx *c, const char *name, kv_error *err) {
    const st_tensor *t = st_checkpoint_find(&c->ckpt, name);
    if (!t) kv_fail(err, KV_EFORMAT, "%s: missing tensor '%s'", c->ckpt.dir, name);
    return t;
}

static int add_out(convert_ctx *c, const char *name, const st_tensor *const *src, int n_src, int out_dtype, kv_error *err) {
    out_tensor *o = &c->out[c->n_out++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->dtype = out_dtype >= 0 ? (kv_dtype)out_dtype : src[0]->dtype;
    o->n_dims = src[0]->n_dims;
    memcpy(o->shape, src[0]->shape, sizeof o->shape);
    if (n_src > MAX_MEAN) return kv_fail(err, KV_EINVAL, "tensor '%s': more than %d sources to average", name, MAX_MEAN);
    for (int i = 0; i < n_src; i++) {
        if (src[i]->n_dims != o->n_dims || memcmp(src[i]->shape, o->shape, sizeof o->shape))
            return kv_fail(err, KV_EFORMAT, "tensor '%s': sources '%s' and '%s' differ in shape", name, src[0]->name, src[i]->name);
        o->src[i] = src[i];
    }
    o->n_src = n_src;
    if (src[0]->dtype != KV_F32 && !kv_dtype_is_float16(src[0]->dtype))
        return kv_fail(err, KV_EUNSUPPORTED, "tensor '%s': dtype %s (need F32, F16 or BF16)", src[0]->name, kv_dtype_name(src[0]->dtype));
    return 0;
}

/* "model.layers.<i>.self_attn.<proj>.<kind>" -> layer i, proj and kind; -1 if not an attention projection */
static int parse_attn_name(const char *name, char *proj, size_t proj_cap, const char **kind) {
    int layer, n = 0;
    if (sscanf(name, "model.layers.%d.self_attn.%n", &layer, &n) != 1 || n == 0) return -1;
    const char *p = name + n, *dot = strchr(p, '.');
    if (!dot || (size_t)(dot - p) >= proj_cap) return -1;
    memcpy(proj, p, (size_t)(dot - p));
    proj[dot - p] = 0;
    *kind = dot + 1;
    return layer;
}

static int build_plan(convert_ctx *c, const kv_convert_opts *o, kv_convert_report *rep, kv_error *err) {
    const kv_map *m = &o->map;
    const hf_config *cfg = &c->cfg;
    int L = cfg->n_layers;
    if (m->n_layers != L) return kv_fail(err, KV_EINVAL, "map '%s' is for %d layers but the model has %d", m->name, m->n_layers, L);
    if (cfg->swiftkv || cfg->has_layer_map) return kv_fail(err, KV_EUNSUPPORTED, "%s: already transformed (config.json has a KV map); convert the original", c->ckpt.dir);
    int swift = m->kind == KVMAP_SWIFTKV, l = m->swiftkv_l;
    c->out = calloc((size_t)c->ckpt.n_tensors + 4 * (size_t)L + 2, sizeof *c->out);
    if (!c->out) return kv_fail(err, KV_ENOMEM, "out of memory");
    char name[160];
    const st_tensor *src[MAX_MEAN];
    int readers[HF_MAX_LAYERS];
    for (int i = 0; i < c->ckpt.n_tensors; i++) {
        const st_tensor *t = c->ckpt.tensors[i];
        char proj[32] = "";
        const char *kind = "";
        int layer = parse_attn_name(t->name, proj, sizeof proj, &kind);
        int is_kv = layer >= 0 && (strcmp(proj, "k_proj") == 0 || strcmp(proj, "v_proj") == 0);
        int is_q = layer >= 0 && strcmp(proj, "q_proj") == 0;
        if (layer >= L) return kv_fail(err, KV_EFORMAT, "%s: tensor '%s' names layer %d of %d", c->ckpt.dir, t->name, layer, L);
        if (swift && layer >= l && (is_kv || is_q)) {
            if (o->layout == KV_LAYOUT_DEPLOY) { rep->n_dropped++; continue; }
        } else if (!swift && is_kv && !kvmap_is_kv_layer(m, layer)) {
            rep->n_dropped++;
            continue;
        } else if (!swift && is_kv && o->kv_init == KV_INIT_MEAN) {
            int n = kvmap_readers(m, layer, readers, HF_MAX_LAYERS);
            if (n > 1) {
                for (int r = 0; r < n && r < MAX_MEAN; r++) {
                    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.%s", readers[r], proj, kind);
                    if (!(src[r] = need(c, name, err))) return err->code;
                }
                int rc = add_out(c, t->name, src, n, o->out_dtype, err);
                if (rc) return rc;
                rep->n_averaged++;
                continue;
            }
        }
        int rc = add_out(c, t->name, &t, 1, o->out_dtype, err);
        if (rc) return rc;
    }
    if (swift) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if (!(src[0] = need(c, name, err))) return err->code;
        int rc = add_out(c, "model.norm_swiftkv.weight", src, 1, o->out_dtype, err);
        rep->n_added++;
        const char *kinds[2] = {"weight", "bias"};
        for (int j = l; j < L && !rc; j++)
            for (int k = 0; k < 1 + cfg->attention_bias && !rc; k++) {
                snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj.%s", j, kinds[k]);
                if (!(src[0] = need(c, name, err))) return err->code;
                char out_name[160];
                snprintf(out_name, sizeof out_name, "model.layers.%d.self_attn.q_proj_swiftkv.%s", j, kinds[k]);
                rc = add_out(c, out_name, src, 1, o->out_dtype, err);
                rep->n_added++;
                if (rc || (j - l) % m->swiftkv_g) continue;
                const char *projs[2] = {"k_proj", "v_proj"};
                for (int p = 0; p < 2 && !rc; p++) {
                    int n = kvmap_readers(m, j, readers, HF_MAX_LAYERS);
                    for (int r = 0; r < n && r < MAX_MEAN; r++) {
                        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.%s", readers[r], projs[p], kinds[k]);
                        if (!(src[r] = need(c, name, err))) return err->code;
                    }
                    snprintf(out_name, sizeof out_name, "model.layers.%d.self_attn.%s_swiftkv.%s", j, projs[p], kinds[k]);
                    rc = add_out(c, out_name, src, n, o->out_dtype, err);
                    rep->n_added++;
                    rep->n_averaged += n > 1;
                }
            }
        if (rc) return rc;
    }
    rep->n_tensors_in = c->ckpt.n_tensors;
    rep->n_tensors_out = c->n_out;
    c->specs = calloc((size_t)c->n_out + 1, sizeof *c->specs);
    if (!c->specs) return kv_fail(err, KV_ENOMEM, "out of memory");
    rep->params_before = rep->params_after = 0;
    for (int i = 0; i < c->ckpt.n_tensors; i++) rep->params_before += (int64_t)c->ckpt.tensors[i]->n_elements;
    c->total = 0;
    for (int i = 0; i < c->n_out; i++) {
        out_tensor *ot = &c->out[i];
        c->specs[i] = (st_spec){.name = ot->name, .dtype = ot->dtype, .n_dims = ot->n_dims};
        memcpy(c->specs[i].shape, ot->shape, sizeof ot->shape);
        rep->params_after += (int64_t)ot->src[0]->n_elements;
        c->total += st_spec_bytes(&c->specs[i]);
    }
    kv_dtype model_t = o->out_dtype >= 0 ? (kv_dtype)o->out_dtype : cfg->torch_dtype;
    kv_map identity;
    kvmap_identity(&identity, L);
    rep->kv_bytes_before = kvmap_cache_bytes_per_token(&identity, cfg->n_kv_heads, cfg->head_dim, kv_dtype_size(cfg->torch_dtype));
    rep->kv_bytes_after = kvmap_cache_bytes_per_token(m, cfg->n_kv_heads, cfg->head_dim, kv_dtype_size(model_t));
    rep->bytes_written = c->total;
    return 0;
}

/* releases the page cache/mapping of a source range once it has been streamed */
static void drop_pages(const void *p, size_t n) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1), end = ((uintptr_t)p + n) & ~((uintptr_t)page - 1);
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
}

static int fill(void *vctx, int index, st_writer *w, kv_error *err) {
    convert_ctx *c = vctx;
    const out_tensor *ot = &c->out[index];
    size_t n = ot->src[0]->n_elements, esz = kv_dtype_size(ot->dtype);
    int rc = 0;
    if (ot->n_src == 1 && ot->src[0]->dtype == ot->dtype) {
        const uint8_t *p = ot->src[0]->data;
        size_t bytes = ot->src[0]->n_bytes, step = (size_t)CHUNK_ELEMS * 4;
        for (size_t off = 0; off < bytes && !rc; off += step) {
            size_t len = bytes - off < step ? bytes - off : step;
            rc = st_writer_put(w, p + off, len, err);
            drop_pages(p + off, len);
        }
    } else {
        for (size_t first = 0; first < n && !rc; first += CHUNK_ELEMS) {
            size_t count = n - first < CHUNK_ELEMS ? n - first : CHUNK_ELEMS;
            const float *vals = c->acc;
            if (ot->n_src == 1) {
                const st_tensor *s = ot->src[0];
                kv_to_f32(c->acc, (const uint8_t *)s->data + first * kv_dtype_size(s->dtype), s->dtype, count);
            } else { /* mean in double, rounded once to float */
                memset(c->sum, 0, count * sizeof *c->sum);
                for (int k = 0; k < ot->n_src; k++) {
                    const st_tensor *s = ot->src[k];
                    kv_to_f32(c->chunk, (const uint8_t *)s->data + first * kv_dtype_size(s->dtype), s->dtype, count);
                    for (size_t e = 0; e < count; e++) c->sum[e] += c->chunk[e];
                }
                for (size_t e = 0; e < count; e++) c->acc[e] = (float)(c->sum[e] / ot->n_src);
            }
            kv_convert(c->converted, ot->dtype, vals, KV_F32, count);
            rc = st_writer_put(w, c->converted, count * esz, err);
        }
        for (int k = 0; k < ot->n_src; k++) drop_pages(ot->src[k]->data, ot->src[k]->n_bytes);
    }
    c->done += n * esz;
    if (c->progress) c->progress(c->progress_ctx, c->done, c->total);
    return rc;
}

static int open_ctx(convert_ctx *c, const char *src_dir, const kv_convert_opts *o, kv_convert_report *rep, kv_error *err) {
    memset(c, 0, sizeof *c);
    memset(rep, 0, sizeof *rep);
    char path[4096];
    int rc = kv_join(path, sizeof path, src_dir, "config.json", err);
    if (!rc) rc = kv_read_file(path, &c->config_text, NULL, HF_MAX_CONFIG_BYTES, err);
    if (!rc) rc = hf_config_parse(&c->cfg, c->config_text, path, err);
    if (!rc && o->out_dtype >= 0 && o->out_dtype != KV_F32 && !kv_dtype_is_float16((kv_dtype)o->out_dtype))
        rc = kv_fail(err, KV_EINVAL, "output dtype must be F32, F16 or BF16");
    if (!rc) rc = kvmap_validate(&o->map, err);
    if (!rc) rc = st_checkpoint_open(&c->ckpt, src_dir, err);
    if (!rc) rc = build_plan(c, o, rep, err);
    return rc;
}

int kv_convert_plan(const char *src_dir, const kv_convert_opts *o, kv_convert_report *rep, kv_error *err) {
    convert_ctx c;
    int rc = open_ctx(&c, src_dir, o, rep, err);
    ctx_free(&c);
    return rc;
}

static const char *const copied_files[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                           "special_tokens_map.json", "generation_config.json"};

static int write_manifest(convert_ctx *c, const char *src_dir, const char *dir, const kv_convert_opts *o,
                          const kv_convert_report *rep, kv_error *err) {
    char layer_types[HF_MAX_LAYERS * 5 + 1], path[4096], hex[65];
    kvmap_layer_types(&o->map, layer_types, sizeof layer_types);
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    if (!text) return kv_fail(err, KV_ENOMEM, "out of memory");
#define EMIT(...) len += (size_t)snprintf(text + len, len < cap ? cap - len : 0, __VA_ARGS__)
    EMIT("{\n  \"tool\": \"kvconvert\",\n  \"kvforge_version\": \"%s\",\n", KVFORGE_VERSION_STRING);
    EMIT("  \"recipe\": {\n    \"map\": \"%s\",\n    \"kind\": \"%s\",\n    \"layer_types\": \"%s\",\n", o->map.name,
         o->map.kind == KVMAP_SWIFTKV ? "swiftkv" : o->map.kind == KVMAP_CROSS ? "cross-layer" : "identity", layer_types);
    if (o->map.kind == KVMAP_SWIFTKV)
        EMIT("    \"num_key_value_layers\": %d,\n    \"key_value_group_size\": %d,\n    \"layout\": \"%s\",\n", o->map.swiftkv_l,
             o->map.swiftkv_g, o->layout == KV_LAYOUT_DEPLOY ? "deploy" : "hf-swiftkv");
    EMIT("    \"kv_init\": \"%s\",\n    \"dtype\": \"%s\"\n  },\n", o->kv_init == KV_INIT_MEAN ? "mean" : "target",
         o->out_dtype >= 0 ? kv_dtype_name((kv_dtype)o->out_dtype) : "source");
    EMIT("  \"source\": {\n    \"files\": [");
    int first = 1;
    for (int f = 0; f < c->ckpt.n_files; f++) {
        const char *base = strrchr(c->ckpt.files[f].path, '/');
        base = base ? base + 1 : c->ckpt.files[f].path;
        int rc = kv_sha256_file(c->ckpt.files[f].path, hex, err);
        if (rc) { free(text); return rc; }
        EMIT("%s\n      {\"name\": \"%s\", \"sha256\": \"%s\"}", first ? "" : ",", base, hex);
        first = 0;
    }
    const char *extra[] = {"config.json", "model.safetensors.index.json", "tokenizer.json"};
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) {
        if (kv_join(path, sizeof path, src_dir, extra[i], err) || !kv_path_exists(path)) continue;
        int rc = kv_sha256_file(path, hex, err);
        if (rc) { free(text); return rc; }
        EMIT(",\n      {\"name\": \"%s\", \"sha256\": \"%s\"}", extra[i], hex);
    }
    EMIT("\n    ]\n  },\n");
    EMIT("  \"params\": {\"before\": %lld, \"after\": %lld, \"saving\": %.6f},\n", (long long)rep->params_before,
         (long long)rep->params_after, rep->params_before ? 1.0 - (double)rep->params_after / (double)rep->params_before : 0.0);
    EMIT("  \"kv_cache_bytes_per_token\": {\"before\": %zu, \"after\": %zu, \"saving\": %.6f},\n", rep->kv_bytes_before,
         rep->kv_bytes_after, rep->kv_bytes_before ? 1.0 - (double)rep->kv_bytes_after / (double)rep->kv_bytes_before : 0.0);
    EMIT("  \"tensors\": {\"in\": %d, \"out\": %d, \"dropped\": %d, \"added\": %d, \"averaged\": %d}\n}\n", rep->n_tensors_in,
         rep->n_tensors_out, rep->n_dropped, rep->n_added, rep->n_averaged);
#undef EMIT
    int rc = len >= cap ? kv_fail(err, KV_EINVAL, "kvforge.json too long") : 0;
    if (!rc) rc = kv_join(path, sizeof path, dir, "kvforge.json", err);
    if (!rc) rc = kv_write_file_atomic(path, text, len, err);
    free(text);
    return rc;
}

static int write_all(convert_ctx *c, const char *src_dir, const char *dir, const kv_convert_opts *o,
                     const kv_convert_report *rep, kv_error *err) {
    const char *meta[] = {"format", "pt"};
    int rc = st_write_checkpoint(dir, c->specs, c->n_out, o->shard_bytes, meta, 1, fill, c, err);
    if (rc) return rc;
    hf_config out_cfg = c->cfg;
    const kv_map *m = &o->map;
    if (m->kind == KVMAP_SWIFTKV) {
        out_cfg.swiftkv = 1;
        out_cfg.swiftkv_layers = m->swiftkv_l;
        out_cfg.swiftkv_group = m->swiftkv_g;
    } else if (m->kind == KVMAP_CROSS) {
        out_cfg.has_layer_map = 1;
        memcpy(out_cfg.kv_layer_of, m->kv_layer_of, sizeof(int) * (size_t)m->n_layers);
    }
    if (o->out_dtype >= 0) out_cfg.torch_dtype = (kv_dtype)o->out_dtype;
    char *json = NULL, path[4096], src_path[4096];
    rc = hf_config_write_json(&out_cfg, c->config_text, "config.json", &json, err);
    if (!rc) rc = kv_join(path, sizeof path, dir, "config.json", err);
    if (!rc) rc = kv_write_file_atomic(path, json, strlen(json), err);
    free(json);
    for (size_t i = 0; !rc && i < sizeof copied_files / sizeof *copied_files; i++) {
        if (kv_join(src_path, sizeof src_path, src_dir, copied_files[i], err) || !kv_path_exists(src_path)) continue;
        rc = kv_join(path, sizeof path, dir, copied_files[i], err);
        if (!rc) rc = kv_copy_file_atomic(src_path, path, err);
    }
    if (!rc) rc = write_manifest(c, src_dir, dir, o, rep, err);
    return rc;
}

static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void remove_dir_files(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path) unlink(path);
    if (d) closedir(d);
    rmdir(dir);
}

int kv_convert_run(const char *src_dir, const char *dst_dir, const kv_convert_opts *o, kv_convert_report *rep,
                   kv_convert_progress_fn progress, void *progress_ctx, kv_error *err) {
    if (same_file(src_dir, dst_dir)) return kv_fail(err, KV_EINVAL, "%s: destination is the source directory", dst_dir);
    if (!o->force && !kv_dir_is_empty(dst_dir)) return kv_fail(err, KV_EINVAL, "%s: not empty (use --force to replace its model files)", dst_dir);
    convert_ctx c;
    int rc = open_ctx(&c, src_dir, o, rep, err);
    c.progress = progress;
    c.progress_ctx = progress_ctx;
    c.acc = malloc(CHUNK_ELEMS * sizeof(float));
    c.chunk = malloc(CHUNK_ELEMS * sizeof(float));
    c.sum = malloc(CHUNK_ELEMS * sizeof(double));
    c.converted = malloc(CHUNK_ELEMS * sizeof(float));
    if (!rc && (!c.acc || !c.chunk || !c.sum || !c.converted)) rc = kv_fail(err, KV_ENOMEM, "out of memory");
    /* everything goes to a fresh folder beside DST, moved into place only when complete */
    char tmp[4096];
    if (!rc) {
        int n = snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", dst_dir);
        if (n < 0 || (size_t)n >= sizeof tmp || !mkdtemp(tmp)) rc = kv_fail(err, KV_EIO, "%s: cannot create a temporary folder beside it", dst_dir);
        else {
            rc = write_all(&c, src_dir, tmp, o, rep, err);
            if (!rc) {
                if (kv_path_exists(dst_dir)) remove_dir_files(dst_dir); /* empty, or --force */
                if (rename(tmp, dst_dir) != 0) rc = kv_fail(err, KV_EIO, "%s: cannot move the finished model into place", dst_dir);
            }
            if (rc) remove_dir_files(tmp);
        }
    }
    ctx_free(&c);
    return rc;
}

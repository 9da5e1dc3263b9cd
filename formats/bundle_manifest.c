/* Bundle manifest: JSON <-> kvb_manifest, validated at the door; KV map from config.json. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/bundle_internal.h"
#include "base/sha256.h"

const char *const kvb_file_names[] = {
    "config.json",    "generation_config.json", "kvforge.json",          "special_tokens_map.json",
    "tokenizer.json", "tokenizer.model",        "tokenizer_config.json",
};
const int kvb_n_file_names = (int)(sizeof kvb_file_names / sizeof kvb_file_names[0]);

int kvb_file_index(const char *name) {
    for (int i = 0; i < kvb_n_file_names; i++)
        if (strcmp(name, kvb_file_names[i]) == 0) return i;
    return -1;
}

int kvb_entry_name_safe(const char *name) {
    if (!name || !name[0] || name[0] == '/') return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '\\') return 0;
    const char *c = name;
    for (;;) { /* each '/'-separated component */
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        if (!slash) return 1;
        c = slash + 1;
    }
}

/* ---------------- KV map ---------------- */

static int json_int(const cJSON *v, long long lo, long long hi, long long *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || floor(d) != d) return -1;
    *out = (long long)d;
    return 0;
}

int kvb_kv_map(const cJSON *config, kv_map *map, const char *label, kv_error *err) {
    long long n_layers;
    if (json_int(cJSON_GetObjectItemCaseSensitive(config, "num_hidden_layers"), 1, 1 << 20,
                 &n_layers))
        return kv_fail(err, KV_EFORMAT, "%s: 'num_hidden_layers' missing or not a positive integer",
                       label);
    /* Snowflake's configs may leave "swiftkv" out: its architecture implies it (hf_config) */
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(config, "architectures");
    const cJSON *arch = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(config, "model_type");
    const int swiftkv =
        cJSON_IsString(arch)
            ? strcmp(arch->valuestring, "LlamaSwiftKVForCausalLM") == 0
            : cJSON_IsString(type) && strcmp(type->valuestring, "llama_swiftkv") == 0;
    return kvmap_read_config(map, config, (int)n_layers, swiftkv, NULL, label, err);
}

/* ---------------- printing ---------------- */

static cJSON *u64_number(uint64_t v) { return cJSON_CreateNumber((double)v); }

char *kvb_manifest_print(const kvb_manifest *m, const cJSON *config, const kv_map *map,
                         const cJSON *kvforge) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "format", KV_BUNDLE_FORMAT);
    cJSON_AddNumberToObject(root, "format_version", KV_BUNDLE_VERSION);
    cJSON_AddStringToObject(root, "architecture", m->architecture ? m->architecture : "");
    cJSON_AddItemToObject(root, "config", cJSON_Duplicate(config, 1));
    cJSON *targets = cJSON_AddArrayToObject(root, "kv_map");
    for (int i = 0; i < map->n_layers; i++)
        cJSON_AddItemToArray(targets, cJSON_CreateNumber(kvmap_target(map, i)));
    if (kvforge) { /* recipe as is; provenance as is, else kvconvert's tool, version and source */
        const cJSON *recipe = cJSON_GetObjectItemCaseSensitive(kvforge, "recipe");
        if (recipe) cJSON_AddItemToObject(root, "recipe", cJSON_Duplicate(recipe, 1));
        const cJSON *prov = cJSON_GetObjectItemCaseSensitive(kvforge, "provenance");
        if (prov) {
            cJSON_AddItemToObject(root, "provenance", cJSON_Duplicate(prov, 1));
        } else {
            const char *keys[] = {"tool", "kvforge_version", "source"};
            cJSON *p = NULL;
            for (int k = 0; k < 3; k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(kvforge, keys[k]);
                if (!v) continue;
                if (!p) p = cJSON_AddObjectToObject(root, "provenance");
                cJSON_AddItemToObject(p, keys[k], cJSON_Duplicate(v, 1));
            }
        }
        cJSON_AddItemToObject(root, "kvforge", cJSON_Duplicate(kvforge, 1));
    }
    cJSON *meta = cJSON_AddObjectToObject(root, "safetensors_metadata");
    for (int i = 0; i < m->n_meta; i++)
        cJSON_AddStringToObject(meta, m->meta_keys[i], m->meta_values[i]);
    cJSON_AddItemToObject(root, "chunk_size", u64_number(m->chunk_size));
    cJSON_AddItemToObject(root, "raw_size", u64_number(m->raw_size));
    cJSON_AddItemToObject(root, "stored_size", u64_number(m->stored_size));

    cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
    for (int i = 0; i < m->n_tensors; i++) {
        const kvb_tensor *t = &m->tensors[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(tensors, o);
        cJSON_AddStringToObject(o, "name", t->name);
        cJSON_AddStringToObject(o, "dtype", kv_dtype_name(t->dtype));
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->n_dims; d++)
            cJSON_AddItemToArray(shape, u64_number((uint64_t)t->shape[d]));
        cJSON_AddItemToObject(o, "offset", u64_number(t->offset));
        cJSON_AddItemToObject(o, "size", u64_number(t->size));
        char hex[65];
        kv_sha256_hex(t->sha256, hex);
        cJSON_AddStringToObject(o, "sha256", hex);
        cJSON_AddStringToObject(o, "transform", kv_transform_name(t->transform));
        cJSON *chunks = cJSON_AddArrayToObject(o, "chunks");
        for (int c = 0; c < t->n_chunks; c++) {
            const kv_chunk *k = &m->chunks[t->first_chunk + c];
            cJSON *a = cJSON_CreateArray();
            cJSON_AddItemToArray(a, u64_number(k->raw_size));
            cJSON_AddItemToArray(a, u64_number(k->stored_offset));
            cJSON_AddItemToArray(a, u64_number(k->stored_size));
            cJSON_AddItemToArray(a, cJSON_CreateString(kv_codec_name(k->codec)));
            cJSON_AddItemToArray(a, u64_number(k->stored_crc32c));
            cJSON_AddItemToArray(chunks, a);
        }
    }
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    for (int i = 0; i < m->n_files; i++) {
        const kvb_file *f = &m->files[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(files, o);
        cJSON_AddStringToObject(o, "name", f->name);
        cJSON_AddStringToObject(o, "entry", f->entry);
        cJSON_AddStringToObject(o, "codec", kv_codec_name(f->codec));
        cJSON_AddItemToObject(o, "size", u64_number(f->size));
        cJSON_AddItemToObject(o, "stored_size", u64_number(f->stored_size));
        char hex[65];
        kv_sha256_hex(f->sha256, hex);
        cJSON_AddStringToObject(o, "sha256", hex);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* ---------------- parsing ---------------- */

void kvb_manifest_free(kvb_manifest *m) {
    if (!m) return;
    free(m->architecture);
    for (int i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
    free(m->tensors);
    free(m->chunks);
    for (int i = 0; i < m->n_meta; i++) {
        free(m->meta_keys[i]);
        free(m->meta_values[i]);
    }
    free(m->meta_keys);
    free(m->meta_values);
    free(m->map);
    memset(m, 0, sizeof *m);
}

/* a whole number in [0, 2^53] */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static const cJSON *field(const cJSON *o, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static int parse_chunks(kvb_manifest *m, kvb_tensor *t, const cJSON *chunks, int *cap,
                        const char *label, kv_error *err) {
    if (!cJSON_IsArray(chunks))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: tensor '%s': 'chunks' is not an array",
                       label, t->name);
    size_t esize = kv_dtype_size(t->dtype), tsize = kv_transform_elem_size(t->transform);
    uint64_t raw_pos = 0;
    t->first_chunk = m->n_chunks;
    const cJSON *c;
    int k = 0;
    cJSON_ArrayForEach(c, chunks) {
        uint64_t raw_size, stored_offset, stored_size, crc;
        const cJSON *codec = cJSON_GetArrayItem(c, 3);
        kv_chunk_codec cc;
        if (!cJSON_IsArray(c) || cJSON_GetArraySize(c) != 5 ||
            json_u64(cJSON_GetArrayItem(c, 0), &raw_size) ||
            json_u64(cJSON_GetArrayItem(c, 1), &stored_offset) ||
            json_u64(cJSON_GetArrayItem(c, 2), &stored_size) || !cJSON_IsString(codec) ||
            kv_codec_parse(codec->valuestring, &cc) || json_u64(cJSON_GetArrayItem(c, 4), &crc) ||
            crc > UINT32_MAX)
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: tensor '%s': chunk %d is not [raw_size, stored_offset, "
                           "stored_size, \"zstd\"|\"raw\", crc32c]",
                           label, t->name, k);
        if (raw_size == 0 || raw_size > KV_CHUNK_MAX_SIZE || raw_size % esize || raw_size % tsize)
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: tensor '%s': chunk %d: raw size %llu is not 1..%zu bytes "
                           "of whole %s elements",
                           label, t->name, k, (unsigned long long)raw_size, KV_CHUNK_MAX_SIZE,
                           kv_dtype_name(t->dtype));
        if (stored_offset != m->stored_size)
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: tensor '%s': chunk %d starts at stored offset %llu, "
                           "expected %llu (chunks must be contiguous)",
                           label, t->name, k, (unsigned long long)stored_offset,
                           (unsigned long long)m->stored_size);
        if (cc == KV_CODEC_RAW ? stored_size != raw_size : stored_size == 0)
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: tensor '%s': chunk %d: stored size %llu impossible for a "
                           "%s chunk of %llu bytes",
                           label, t->name, k, (unsigned long long)stored_size, kv_codec_name(cc),
                           (unsigned long long)raw_size);
        if (raw_pos + raw_size > t->size)
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: tensor '%s': chunks hold more than its %llu bytes", label,
                           t->name, (unsigned long long)t->size);
        if (m->n_chunks >= KVB_MAX_CHUNKS)
            return kv_fail(err, KV_EFORMAT, "%s: manifest: more than %d chunks", label,
                           KVB_MAX_CHUNKS);
        if (m->n_chunks == *cap) {
            int ncap = *cap ? *cap * 2 : 256;
            kv_chunk *p = realloc(m->chunks, (size_t)ncap * sizeof *p);
            if (!p)
                return kv_fail(err, KV_ENOMEM, "%s: manifest: no memory for %d chunks", label,
                               ncap);
            m->chunks = p;
            *cap = ncap;
        }
        m->chunks[m->n_chunks++] =
            (kv_chunk){.raw_offset = t->offset + raw_pos,
                       .raw_size = raw_size,
                       .stored_offset = stored_offset,
                       .stored_size = stored_size,
                       .codec = cc,
                       .transform = cc == KV_CODEC_ZSTD ? t->transform : KV_XFORM_NONE,
                       .stored_crc32c = (uint32_t)crc};
        raw_pos += raw_size;
        m->stored_size += stored_size; /* running total; checked against the declared one after */
        if (m->stored_size > 9007199254740992ULL)
            return kv_fail(err, KV_EFORMAT, "%s: manifest: stored sizes overflow", label);
        k++;
    }
    if (raw_pos != t->size)
        return kv_fail(err, KV_EFORMAT,
                       "%s: manifest: tensor '%s': chunks hold %llu bytes, the tensor %llu", label,
                       t->name, (unsigned long long)raw_pos, (unsigned long long)t->size);
    t->n_chunks = k;
    return 0;
}

static int parse_tensor(kvb_manifest *m, int i, const cJSON *o, uint64_t *raw_end, int *chunk_cap,
                        const char *label, kv_error *err) {
    kvb_tensor *t = &m->tensors[i];
    const cJSON *name = field(o, "name"), *dtype = field(o, "dtype"), *shape = field(o, "shape");
    const cJSON *sha = field(o, "sha256"), *transform = field(o, "transform");
    if (!cJSON_IsObject(o) || !cJSON_IsString(name) || !name->valuestring[0])
        return kv_fail(err, KV_EFORMAT, "%s: manifest: tensor %d has no name", label, i);
    if (!(t->name = strdup(name->valuestring)))
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    if (i > 0 && strcmp(m->tensors[i - 1].name, t->name) >= 0)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: tensor '%s' out of name order or repeated",
                       label, t->name);
    if (!cJSON_IsString(dtype) || kv_dtype_parse(dtype->valuestring, &t->dtype))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: tensor '%s': unknown dtype", label, t->name);
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) > ST_MAX_DIMS)
        return kv_fail(err, KV_EFORMAT,
                       "%s: manifest: tensor '%s': shape is not an array of at most %d dims", label,
                       t->name, ST_MAX_DIMS);
    t->n_dims = cJSON_GetArraySize(shape);
    uint64_t bytes = kv_dtype_size(t->dtype);
    for (int d = 0; d < t->n_dims; d++) {
        uint64_t dim;
        if (json_u64(cJSON_GetArrayItem(shape, d), &dim) ||
            __builtin_mul_overflow(bytes, dim, &bytes) || bytes > 9007199254740992ULL)
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: tensor '%s': shape[%d] bad or overflowing", label,
                           t->name, d);
        t->shape[d] = (int64_t)dim;
    }
    if (json_u64(field(o, "size"), &t->size) || t->size != bytes)
        return kv_fail(err, KV_EFORMAT,
                       "%s: manifest: tensor '%s': size is not %llu (its shape and dtype)", label,
                       t->name, (unsigned long long)bytes);
    uint64_t want = kvb_align_up(*raw_end);
    if (json_u64(field(o, "offset"), &t->offset) || t->offset != want)
        return kv_fail(err, KV_EFORMAT,
                       "%s: manifest: tensor '%s': offset is not %llu (packed, %d-byte aligned)",
                       label, t->name, (unsigned long long)want, KV_BUNDLE_ALIGN);
    *raw_end = t->offset + t->size;
    if (*raw_end > 9007199254740992ULL)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: raw sizes overflow", label);
    if (!cJSON_IsString(sha) || kv_sha256_parse_hex(sha->valuestring, t->sha256))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: tensor '%s': sha256 is not 64 hex digits",
                       label, t->name);
    if (!cJSON_IsString(transform) || kv_transform_parse(transform->valuestring, &t->transform) ||
        t->transform != kv_transform_for(t->dtype))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: tensor '%s': transform is not '%s' (for %s)",
                       label, t->name, kv_transform_name(kv_transform_for(t->dtype)),
                       kv_dtype_name(t->dtype));
    return parse_chunks(m, t, field(o, "chunks"), chunk_cap, label, err);
}

static int parse_file(kvb_manifest *m, int i, const cJSON *o, const char *label, kv_error *err) {
    kvb_file *f = &m->files[i];
    const cJSON *name = field(o, "name"), *entry = field(o, "entry"), *codec = field(o, "codec");
    const cJSON *sha = field(o, "sha256");
    int idx = cJSON_IsString(name) ? kvb_file_index(name->valuestring) : -1;
    if (!cJSON_IsObject(o) || idx < 0)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: file %d is not one a bundle may carry",
                       label, i);
    f->name = kvb_file_names[idx];
    if (i > 0 && kvb_file_index(m->files[i - 1].name) >= idx)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: file '%s' out of order or repeated", label,
                       f->name);
    if (!cJSON_IsString(codec) || kv_codec_parse(codec->valuestring, &f->codec))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: file '%s': codec is not 'raw' or 'zstd'",
                       label, f->name);
    snprintf(f->entry, sizeof f->entry, "%s%s", f->name, f->codec == KV_CODEC_ZSTD ? ".zst" : "");
    if (!cJSON_IsString(entry) || strcmp(entry->valuestring, f->entry) != 0)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: file '%s': entry is not '%s'", label,
                       f->name, f->entry);
    if (json_u64(field(o, "size"), &f->size) || f->size > KV_BUNDLE_MAX_FILE ||
        json_u64(field(o, "stored_size"), &f->stored_size) || f->stored_size > KV_BUNDLE_MAX_FILE ||
        (f->codec == KV_CODEC_RAW && f->stored_size != f->size) ||
        (f->codec == KV_CODEC_ZSTD && f->stored_size == 0))
        return kv_fail(err, KV_EFORMAT,
                       "%s: manifest: file '%s': sizes missing, inconsistent or above %zu bytes",
                       label, f->name, KV_BUNDLE_MAX_FILE);
    if (!cJSON_IsString(sha) || kv_sha256_parse_hex(sha->valuestring, f->sha256))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: file '%s': sha256 is not 64 hex digits",
                       label, f->name);
    return 0;
}

static int parse_root(kvb_manifest *m, const cJSON *root, const char *label, kv_error *err) {
    const cJSON *format = field(root, "format"), *arch = field(root, "architecture");
    uint64_t version = 0;
    if (!cJSON_IsObject(root) || !cJSON_IsString(format) ||
        strcmp(format->valuestring, KV_BUNDLE_FORMAT) != 0)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'format' is not \"%s\"", label,
                       KV_BUNDLE_FORMAT);
    if (json_u64(field(root, "format_version"), &version) || version != KV_BUNDLE_VERSION)
        return kv_fail(err, version > KV_BUNDLE_VERSION ? KV_EUNSUPPORTED : KV_EFORMAT,
                       "%s: manifest: format_version is not %d", label, KV_BUNDLE_VERSION);
    if (!cJSON_IsString(arch))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'architecture' is not a string", label);
    if (!(m->architecture = strdup(arch->valuestring)))
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    const cJSON *config = field(root, "config");
    if (!cJSON_IsObject(config))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'config' is not an object", label);
    kv_map *map = m->map = malloc(sizeof *map);
    if (!map) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    char config_label[512];
    snprintf(config_label, sizeof config_label, "%s: manifest config", label);
    int rc = kvb_kv_map(config, map, config_label, err);
    if (rc) return rc;
    const cJSON *targets = field(root, "kv_map"), *t;
    int same = cJSON_IsArray(targets), i = 0;
    cJSON_ArrayForEach(t, targets) { /* one pass: indexing a cJSON array is linear per item */
        long long v;
        same = same && i < map->n_layers && json_int(t, 0, map->n_layers, &v) == 0 &&
               v == kvmap_target(map, i);
        i++;
    }
    if (!same || i != map->n_layers)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'kv_map' does not match the config's KV map",
                       label);

    const cJSON *meta = field(root, "safetensors_metadata");
    if (!cJSON_IsObject(meta))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'safetensors_metadata' is not an object",
                       label);
    int n_meta = cJSON_GetArraySize(meta);
    m->meta_keys = calloc((size_t)n_meta + 1, sizeof(char *));
    m->meta_values = calloc((size_t)n_meta + 1, sizeof(char *));
    if (!m->meta_keys || !m->meta_values)
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    const cJSON *e;
    cJSON_ArrayForEach(e, meta) {
        if (!cJSON_IsString(e))
            return kv_fail(err, KV_EFORMAT,
                           "%s: manifest: safetensors_metadata '%s' is not a string", label,
                           e->string);
        m->meta_keys[m->n_meta] = strdup(e->string);
        m->meta_values[m->n_meta] = strdup(e->valuestring);
        m->n_meta++;
        if (!m->meta_keys[m->n_meta - 1] || !m->meta_values[m->n_meta - 1])
            return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    }

    uint64_t raw_size, stored_size;
    if (json_u64(field(root, "chunk_size"), &m->chunk_size) || m->chunk_size == 0 ||
        m->chunk_size > KV_CHUNK_MAX_SIZE)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: chunk_size is not 1..%zu", label,
                       KV_CHUNK_MAX_SIZE);
    if (json_u64(field(root, "raw_size"), &raw_size) ||
        json_u64(field(root, "stored_size"), &stored_size))
        return kv_fail(err, KV_EFORMAT, "%s: manifest: raw_size / stored_size missing", label);

    const cJSON *tensors = field(root, "tensors");
    if (!cJSON_IsArray(tensors) || cJSON_GetArraySize(tensors) > KVB_MAX_TENSORS)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'tensors' is not an array of at most %d",
                       label, KVB_MAX_TENSORS);
    int n = cJSON_GetArraySize(tensors);
    if (!(m->tensors = calloc((size_t)n + 1, sizeof *m->tensors)))
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    uint64_t raw_end = 0;
    int chunk_cap = 0;
    i = 0;
    cJSON_ArrayForEach(e, tensors) {
        m->n_tensors = i + 1; /* so free() sees the name */
        if ((rc = parse_tensor(m, i, e, &raw_end, &chunk_cap, label, err))) return rc;
        i++;
    }
    if (raw_end != raw_size)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: raw_size %llu but the tensors end at %llu",
                       label, (unsigned long long)raw_size, (unsigned long long)raw_end);
    if (m->stored_size != stored_size)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: stored_size %llu but the chunks hold %llu",
                       label, (unsigned long long)stored_size, (unsigned long long)m->stored_size);
    m->raw_size = raw_size;

    const cJSON *files = field(root, "files");
    if (!cJSON_IsArray(files) || cJSON_GetArraySize(files) > kvb_n_file_names)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: 'files' is not an array of at most %d",
                       label, kvb_n_file_names);
    i = 0;
    cJSON_ArrayForEach(e, files) {
        if ((rc = parse_file(m, i, e, label, err))) return rc;
        m->n_files = ++i;
    }
    if (m->n_files == 0 || strcmp(m->files[0].name, "config.json") != 0)
        return kv_fail(err, KV_EFORMAT, "%s: manifest: no config.json among the files", label);
    return 0;
}

int kvb_manifest_parse(kvb_manifest *m, const char *text, size_t n, const char *label,
                       kv_error *err) {
    memset(m, 0, sizeof *m);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!root) return kv_fail(err, KV_EFORMAT, "%s: manifest.json is not valid JSON", label);
    int rc = 0;
    for (const char *p = end; p < text + n && !rc; p++)
        if (!isspace((unsigned char)*p))
            rc =
                kv_fail(err, KV_EFORMAT, "%s: manifest.json: trailing bytes after the JSON", label);
    if (!rc) rc = parse_root(m, root, label, err);
    cJSON_Delete(root);
    if (rc) kvb_manifest_free(m);
    return rc;
}

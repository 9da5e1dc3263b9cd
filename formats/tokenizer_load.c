/* tokenizer.json reader: every field the pipeline uses is checked at the door; an error names
 * the file and the JSON field ("model.merges[12]"). Unknown top-level keys are ignored. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h> /* malloc_trim */
#endif

#include "base/fileio.h"
#include "formats/tokenizer_impl.h"

#define MAX_JSON_BYTES ((size_t)1 << 30)
#define MAX_IDS        (1 << 24)
#define MAX_DEPTH      8

typedef struct {
    const char *file;
    kv_error *err;
} load_ctx;

__attribute__((format(printf, 4, 5))) static int bad(const load_ctx *c, int code, const char *field,
                                                     const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kv_fail(c->err, code, "%s: field '%s': %s", c->file, field, msg);
}

static int oom(const load_ctx *c) {
    return kv_fail(c->err, KV_ENOMEM, "%s: out of memory", c->file);
}

static int str_dup(kv_tok_str *out, const char *s, size_t n) {
    out->s = malloc(n + 1);
    if (!out->s) return KV_ENOMEM;
    memcpy(out->s, s, n);
    out->s[n] = 0;
    out->n = n;
    return 0;
}

/* field path "base.key" or "base[i]" into buf (cut short if it does not fit) */
static const char *sub(char *buf, size_t cap, const char *base, const char *key) {
    if (snprintf(buf, cap, "%s.%s", base, key) < 0) buf[0] = 0;
    return buf;
}

static const char *idx(char *buf, size_t cap, const char *base, int i) {
    if (snprintf(buf, cap, "%s[%d]", base, i) < 0) buf[0] = 0;
    return buf;
}

/* required string member; *out points into the cJSON tree */
static int get_string(const load_ctx *c, const cJSON *obj, const char *key, const char *field,
                      const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    char f[256];
    if (!v) return bad(c, KV_EFORMAT, sub(f, sizeof f, field, key), "missing");
    if (!cJSON_IsString(v) || !v->valuestring)
        return bad(c, KV_EFORMAT, sub(f, sizeof f, field, key), "not a string");
    *out = v->valuestring;
    return 0;
}

/* optional bool member (absent or null gives def) */
static int get_bool(const load_ctx *c, const cJSON *obj, const char *key, const char *field,
                    int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    char f[256];
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return bad(c, KV_EFORMAT, sub(f, sizeof f, field, key), "not a boolean");
    *out = cJSON_IsTrue(v);
    return 0;
}

/* integer value in [lo, hi] */
static int as_int(const load_ctx *c, const cJSON *v, const char *field, long lo, long hi,
                  int *out) {
    if (!v) return bad(c, KV_EFORMAT, field, "missing");
    if (!cJSON_IsNumber(v)) return bad(c, KV_EFORMAT, field, "not a number");
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d)) return bad(c, KV_EFORMAT, field, "not an integer");
    if (d < (double)lo || d > (double)hi)
        return bad(c, KV_EFORMAT, field, "%.0f outside [%ld, %ld]", d, lo, hi);
    *out = (int)d;
    return 0;
}

static const char *type_of(const load_ctx *c, const cJSON *obj, const char *field, int *rc) {
    const char *type = NULL;
    *rc = 0;
    if (!cJSON_IsObject(obj)) {
        *rc = bad(c, KV_EFORMAT, field, "not an object");
        return NULL;
    }
    *rc = get_string(c, obj, "type", field, &type);
    return *rc ? NULL : type;
}

/* a "pattern": {"String": "..."} member; Regex patterns are not supported */
static int get_pattern(const load_ctx *c, const cJSON *obj, const char *field, kv_tok_str *out) {
    char f[256], g[256];
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "pattern");
    sub(f, sizeof f, field, "pattern");
    if (!p) return bad(c, KV_EFORMAT, f, "missing");
    if (!cJSON_IsObject(p)) return bad(c, KV_EFORMAT, f, "not an object");
    if (cJSON_GetObjectItemCaseSensitive(p, "Regex"))
        return bad(c, KV_EUNSUPPORTED, f, "Regex patterns are not supported");
    const char *s;
    int rc = get_string(c, p, "String", f, &s);
    if (rc) return rc;
    if (!*s) return bad(c, KV_EUNSUPPORTED, sub(g, sizeof g, f, "String"), "empty pattern");
    return str_dup(out, s, strlen(s)) ? oom(c) : 0;
}

/* exactly one UTF-8 character */
static int get_char(const load_ctx *c, const cJSON *obj, const char *key, const char *field,
                    kv_tok_str *out) {
    const char *s;
    char f[256];
    int rc = get_string(c, obj, key, field, &s);
    if (rc) return rc;
    size_t n = strlen(s);
    if (n == 0 || !kv_tok_utf8_valid((const unsigned char *)s, n) ||
        kv_tok_utf8_len((const unsigned char *)s, n) != n)
        return bad(c, KV_EFORMAT, sub(f, sizeof f, field, key), "'%s' is not one character", s);
    return str_dup(out, s, n) ? oom(c) : 0;
}

/* Metaspace prepend_scheme, or the older add_prefix_space flag */
static int get_prepend_scheme(const load_ctx *c, const cJSON *obj, const char *field,
                              kv_tok_prepend_scheme *out) {
    char f[256];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "prepend_scheme");
    if (v && !cJSON_IsNull(v)) {
        sub(f, sizeof f, field, "prepend_scheme");
        if (!cJSON_IsString(v)) return bad(c, KV_EFORMAT, f, "not a string");
        if (!strcmp(v->valuestring, "always")) *out = KV_TOK_PREPEND_ALWAYS;
        else if (!strcmp(v->valuestring, "first")) *out = KV_TOK_PREPEND_FIRST;
        else if (!strcmp(v->valuestring, "never")) *out = KV_TOK_PREPEND_NEVER;
        else return bad(c, KV_EFORMAT, f, "'%s' is not always, first or never", v->valuestring);
        return 0;
    }
    int add;
    int rc = get_bool(c, obj, "add_prefix_space", field, 1, &add);
    *out = add ? KV_TOK_PREPEND_ALWAYS : KV_TOK_PREPEND_NEVER;
    return rc;
}

static int push_norm(const load_ctx *c, kv_tokenizer *t, kv_tok_norm_step step) {
    if (t->n_norm >= KV_TOK_MAX_STEPS) {
        free(step.pat.s);
        free(step.with.s);
        return bad(c, KV_EUNSUPPORTED, "normalizer", "more than %d steps", KV_TOK_MAX_STEPS);
    }
    kv_tok_norm_step *p = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *p);
    if (!p) {
        free(step.pat.s);
        free(step.with.s);
        return oom(c);
    }
    t->norm = p;
    t->norm[t->n_norm++] = step;
    return 0;
}

static int parse_normalizer(const load_ctx *c, kv_tokenizer *t, const cJSON *n, const char *field,
                            int depth) {
    int rc;
    char f[256], g[256];
    if (depth == 0 && (!n || cJSON_IsNull(n))) return 0;
    if (depth > MAX_DEPTH) return bad(c, KV_EFORMAT, field, "nested too deeply");
    const char *type = type_of(c, n, field, &rc);
    if (rc) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        sub(f, sizeof f, field, "normalizers");
        if (!cJSON_IsArray(list)) return bad(c, KV_EFORMAT, f, list ? "not an array" : "missing");
        int i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++)
            if ((rc = parse_normalizer(c, t, e, idx(g, sizeof g, f, i), depth + 1))) return rc;
        return 0;
    }
    kv_tok_norm_step step = {0};
    if (!strcmp(type, "Prepend")) {
        const char *s;
        if ((rc = get_string(c, n, "prepend", field, &s))) return rc;
        step.kind = KV_TOK_NORM_PREPEND;
        if (str_dup(&step.with, s, strlen(s))) return oom(c);
        return push_norm(c, t, step);
    }
    if (!strcmp(type, "Replace")) {
        const char *s;
        step.kind = KV_TOK_NORM_REPLACE;
        if ((rc = get_pattern(c, n, field, &step.pat))) return rc;
        if ((rc = get_string(c, n, "content", field, &s)) || str_dup(&step.with, s, strlen(s))) {
            free(step.pat.s);
            return rc ? rc : oom(c);
        }
        return push_norm(c, t, step);
    }
    return bad(c, KV_EUNSUPPORTED, sub(f, sizeof f, field, "type"),
               "normalizer '%s' is not supported", type);
}

static int parse_metaspace(const load_ctx *c, kv_tokenizer *t, const cJSON *p, const char *field) {
    int rc;
    if (t->pre.kind != KV_TOK_PRE_NONE)
        return bad(c, KV_EUNSUPPORTED, field, "more than one pre-tokenizer");
    if ((rc = get_char(c, p, "replacement", field, &t->pre.rep))) return rc;
    if ((rc = get_prepend_scheme(c, p, field, &t->pre.scheme))) return rc;
    if ((rc = get_bool(c, p, "split", field, 1, &t->pre.split))) return rc;
    t->pre.kind = KV_TOK_PRE_METASPACE;
    return 0;
}

static int parse_pre_tokenizer(const load_ctx *c, kv_tokenizer *t, const cJSON *p,
                               const char *field, int depth) {
    int rc;
    char f[256], g[256];
    if (depth == 0 && (!p || cJSON_IsNull(p))) return 0;
    if (depth > MAX_DEPTH) return bad(c, KV_EFORMAT, field, "nested too deeply");
    const char *type = type_of(c, p, field, &rc);
    if (rc) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        sub(f, sizeof f, field, "pretokenizers");
        if (!cJSON_IsArray(list)) return bad(c, KV_EFORMAT, f, list ? "not an array" : "missing");
        int i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++)
            if ((rc = parse_pre_tokenizer(c, t, e, idx(g, sizeof g, f, i), depth + 1))) return rc;
        return 0;
    }
    if (!strcmp(type, "Metaspace")) return parse_metaspace(c, t, p, field);
    return bad(c, KV_EUNSUPPORTED, sub(f, sizeof f, field, "type"),
               "pre-tokenizer '%s' is not supported", type);
}

static int push_dec(const load_ctx *c, kv_tokenizer *t, kv_tok_dec_step step) {
    if (t->n_dec >= KV_TOK_MAX_STEPS) {
        free(step.pat.s);
        free(step.with.s);
        return bad(c, KV_EUNSUPPORTED, "decoder", "more than %d steps", KV_TOK_MAX_STEPS);
    }
    kv_tok_dec_step *p = realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *p);
    if (!p) {
        free(step.pat.s);
        free(step.with.s);
        return oom(c);
    }
    t->dec = p;
    t->dec[t->n_dec++] = step;
    return 0;
}

static int parse_decoder(const load_ctx *c, kv_tokenizer *t, const cJSON *d, const char *field,
                         int depth) {
    int rc;
    char f[256], g[256];
    if (depth == 0 && (!d || cJSON_IsNull(d))) return 0;
    if (depth > MAX_DEPTH) return bad(c, KV_EFORMAT, field, "nested too deeply");
    t->has_decoder = 1;
    const char *type = type_of(c, d, field, &rc);
    if (rc) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        sub(f, sizeof f, field, "decoders");
        if (!cJSON_IsArray(list)) return bad(c, KV_EFORMAT, f, list ? "not an array" : "missing");
        int i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++)
            if ((rc = parse_decoder(c, t, e, idx(g, sizeof g, f, i), depth + 1))) return rc;
        return 0;
    }
    kv_tok_dec_step step = {0};
    if (!strcmp(type, "ByteFallback")) {
        step.kind = KV_TOK_DEC_BYTE_FALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        step.kind = KV_TOK_DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        const char *s;
        step.kind = KV_TOK_DEC_REPLACE;
        if ((rc = get_pattern(c, d, field, &step.pat))) return rc;
        if ((rc = get_string(c, d, "content", field, &s)) || str_dup(&step.with, s, strlen(s))) {
            free(step.pat.s);
            return rc ? rc : oom(c);
        }
    } else if (!strcmp(type, "Strip")) {
        step.kind = KV_TOK_DEC_STRIP;
        if ((rc = as_int(c, cJSON_GetObjectItemCaseSensitive(d, "start"),
                         sub(f, sizeof f, field, "start"), 0, 1 << 20, &step.start)) ||
            (rc = as_int(c, cJSON_GetObjectItemCaseSensitive(d, "stop"),
                         sub(f, sizeof f, field, "stop"), 0, 1 << 20, &step.stop)) ||
            (rc = get_char(c, d, "content", field, &step.pat)))
            return rc;
    } else if (!strcmp(type, "Metaspace")) {
        kv_tok_prepend_scheme scheme;
        step.kind = KV_TOK_DEC_METASPACE;
        if ((rc = get_prepend_scheme(c, d, field, &scheme))) return rc;
        step.prepend = scheme != KV_TOK_PREPEND_NEVER;
        if ((rc = get_char(c, d, "replacement", field, &step.pat))) return rc;
    } else {
        return bad(c, KV_EUNSUPPORTED, sub(f, sizeof f, field, "type"),
                   "decoder '%s' is not supported", type);
    }
    return push_dec(c, t, step);
}

/* model.vocab -> piece[] (ids dense over vocab and added tokens; checked by the caller) */
static int parse_vocab(const load_ctx *c, const cJSON *vocab, int *max_id, int *n_entries) {
    int i = 0;
    char f[300];
    if (!cJSON_IsObject(vocab))
        return bad(c, KV_EFORMAT, "model.vocab", vocab ? "not an object" : "missing");
    for (const cJSON *e = vocab->child; e; e = e->next, i++) {
        int id, rc;
        if (i >= MAX_IDS) return bad(c, KV_EFORMAT, "model.vocab", "more than %d entries", MAX_IDS);
        snprintf(f, sizeof f, "model.vocab[\"%.200s\"]", e->string ? e->string : "");
        if (!e->string || !*e->string) return bad(c, KV_EFORMAT, f, "empty token");
        if ((rc = as_int(c, e, f, 0, MAX_IDS - 1, &id))) return rc;
        if (id > *max_id) *max_id = id;
    }
    if (i == 0) return bad(c, KV_EFORMAT, "model.vocab", "empty");
    *n_entries = i;
    return 0;
}

typedef struct {
    int id;
    const char *content;
    int lstrip, rstrip, normalized, special;
} added_entry;

static int parse_added(const load_ctx *c, const cJSON *list, added_entry **out, int *n_out,
                       int *max_id) {
    *out = NULL;
    *n_out = 0;
    if (!list || cJSON_IsNull(list)) return 0;
    if (!cJSON_IsArray(list)) return bad(c, KV_EFORMAT, "added_tokens", "not an array");
    int n = cJSON_GetArraySize(list), i = 0, rc;
    if (n > MAX_IDS) return bad(c, KV_EFORMAT, "added_tokens", "more than %d entries", MAX_IDS);
    added_entry *a = calloc((size_t)n + 1, sizeof *a);
    if (!a) return oom(c);
    char f[64], g[96];
    for (const cJSON *e = list->child; e; e = e->next, i++) {
        idx(f, sizeof f, "added_tokens", i);
        int single_word = 0;
        if (!cJSON_IsObject(e)) {
            rc = bad(c, KV_EFORMAT, f, "not an object");
            goto fail;
        }
        if ((rc = as_int(c, cJSON_GetObjectItemCaseSensitive(e, "id"), sub(g, sizeof g, f, "id"), 0,
                         MAX_IDS - 1, &a[i].id)) ||
            (rc = get_string(c, e, "content", f, &a[i].content)) ||
            (rc = get_bool(c, e, "special", f, 0, &a[i].special)) ||
            (rc = get_bool(c, e, "lstrip", f, 0, &a[i].lstrip)) ||
            (rc = get_bool(c, e, "rstrip", f, 0, &a[i].rstrip)) ||
            (rc = get_bool(c, e, "normalized", f, !a[i].special, &a[i].normalized)) ||
            (rc = get_bool(c, e, "single_word", f, 0, &single_word)))
            goto fail;
        if (!*a[i].content) {
            rc = bad(c, KV_EFORMAT, sub(g, sizeof g, f, "content"), "empty");
            goto fail;
        }
        if (single_word) {
            rc = bad(c, KV_EUNSUPPORTED, sub(g, sizeof g, f, "single_word"),
                     "single_word tokens are not supported");
            goto fail;
        }
        if (a[i].id > *max_id) *max_id = a[i].id;
    }
    *out = a;
    *n_out = n;
    return 0;
fail:
    free(a);
    return rc;
}

/* fills piece[]/flags[] from vocab and added tokens; checks ids are dense and consistent */
static int fill_ids(const load_ctx *c, kv_tokenizer *t, const cJSON *vocab, const added_entry *a,
                    int n_added) {
    char f[300];
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int id = (int)e->valuedouble;
        snprintf(f, sizeof f, "model.vocab[\"%.200s\"]", e->string);
        if (t->flags[id])
            return bad(c, KV_EFORMAT, f, "id %d is also given to '%.200s'", id, t->piece[id].s);
        if (str_dup(&t->piece[id], e->string, strlen(e->string))) return oom(c);
        t->flags[id] = KV_TOK_F_MODEL;
        int old = kv_tok_idmap_put(&t->vocab, t->piece, id);
        if (old >= 0) return bad(c, KV_EFORMAT, f, "token listed twice (ids %d and %d)", old, id);
    }
    for (int i = 0; i < n_added; i++) {
        int id = a[i].id;
        snprintf(f, sizeof f, "added_tokens[%d]", i);
        if (t->flags[id] & KV_TOK_F_ADDED)
            return bad(c, KV_EFORMAT, f, "id %d is listed twice", id);
        if (t->flags[id] & KV_TOK_F_MODEL) {
            if (strcmp(t->piece[id].s, a[i].content))
                return bad(c, KV_EFORMAT, f,
                           "'%.200s' has id %d, which model.vocab gives to '%.200s'", a[i].content,
                           id, t->piece[id].s);
        } else if (str_dup(&t->piece[id], a[i].content, strlen(a[i].content))) {
            return oom(c);
        }
        t->flags[id] |= KV_TOK_F_ADDED | (a[i].special ? KV_TOK_F_SPECIAL : 0);
    }
    for (int id = 0; id < t->n_ids; id++) {
        if (!t->flags[id])
            return bad(c, KV_EFORMAT, "model.vocab", "no token has id %d (ids must be 0..%d)", id,
                       t->n_ids - 1);
        int old = kv_tok_idmap_put(&t->all, t->piece, id);
        if (old >= 0)
            return bad(c, KV_EFORMAT, "added_tokens", "'%.200s' has ids %d and %d", t->piece[id].s,
                       old, id);
    }
    return 0;
}

static int find_vocab(const load_ctx *c, const kv_tokenizer *t, const char *s, size_t n,
                      const char *field, const char *what, int *id) {
    *id = kv_tok_idmap_get(&t->vocab, t->piece, s, n);
    if (*id < 0)
        return bad(c, KV_EFORMAT, field, "%s '%.*s' is not in model.vocab", what,
                   (int)(n > 200 ? 200 : n), s);
    return 0;
}

static int parse_merges(const load_ctx *c, kv_tokenizer *t, const cJSON *merges) {
    if (!cJSON_IsArray(merges))
        return bad(c, KV_EFORMAT, "model.merges", merges ? "not an array" : "missing");
    int n = cJSON_GetArraySize(merges);
    if (n < 0 || n > MAX_IDS * 4) return bad(c, KV_EFORMAT, "model.merges", "too many merges");
    if (kv_tok_mergemap_init(&t->merges, (size_t)n)) return oom(c);
    if (!(t->merge_new_id = malloc(((size_t)n + 1) * sizeof *t->merge_new_id))) return oom(c);
    char f[64], joined[1024];
    int rank = 0;
    for (const cJSON *e = merges->child; e; e = e->next, rank++) {
        const char *a, *b;
        size_t na, nb;
        idx(f, sizeof f, "model.merges", rank);
        if (cJSON_IsString(e)) {
            const char *s = e->valuestring, *sp = strchr(s, ' ');
            if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' '))
                return bad(c, KV_EFORMAT, f, "'%.200s' is not two tokens separated by one space",
                           s);
            a = s, na = (size_t)(sp - s), b = sp + 1, nb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            a = e->child->valuestring, na = strlen(a), b = e->child->next->valuestring,
            nb = strlen(b);
            if (!na || !nb) return bad(c, KV_EFORMAT, f, "empty token");
        } else {
            return bad(c, KV_EFORMAT, f, "not a string \"a b\" or a pair [\"a\", \"b\"]");
        }
        if (na + nb >= sizeof joined)
            return bad(c, KV_EFORMAT, f, "merged token longer than %zu bytes", sizeof joined - 1);
        int left, right, merged, rc;
        memcpy(joined, a, na);
        memcpy(joined + na, b, nb);
        if ((rc = find_vocab(c, t, a, na, f, "left part", &left)) ||
            (rc = find_vocab(c, t, b, nb, f, "right part", &right)) ||
            (rc = find_vocab(c, t, joined, na + nb, f, "merged token", &merged)))
            return rc;
        kv_tok_mergemap_put(&t->merges, left, right, rank, merged);
        t->merge_new_id[rank] = merged;
    }
    t->n_merges = rank;
    return kv_tok_build_char_pairs(t) ? oom(c) : 0;
}

static int parse_model(const load_ctx *c, kv_tokenizer *t, const cJSON *model) {
    int rc;
    char f[64];
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(model, "dropout")) && !cJSON_IsNull(v) &&
        !(cJSON_IsNumber(v) && v->valuedouble == 0.0))
        return bad(c, KV_EUNSUPPORTED, "model.dropout", "BPE dropout is not supported");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !*v->valuestring))
            return bad(c, KV_EUNSUPPORTED, sub(f, sizeof f, "model", affixes[i]), "not supported");
    }
    if ((rc = get_bool(c, model, "byte_fallback", "model", 0, &t->byte_fallback)) ||
        (rc = get_bool(c, model, "fuse_unk", "model", 0, &t->fuse_unk)) ||
        (rc = get_bool(c, model, "ignore_merges", "model", 0, &t->ignore_merges)))
        return rc;
    t->unk_id = -1;
    v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v)) return bad(c, KV_EFORMAT, "model.unk_token", "not a string");
        if ((rc = find_vocab(c, t, v->valuestring, strlen(v->valuestring), "model.unk_token",
                             "token", &t->unk_id)))
            return rc;
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = kv_tok_idmap_get(&t->vocab, t->piece, name, 6);
    }
    return parse_merges(c, t, cJSON_GetObjectItemCaseSensitive(model, "merges"));
}

/* BOS from a TemplateProcessing post-processor (possibly inside a Sequence) */
static int parse_post_processor(const load_ctx *c, kv_tokenizer *t, const cJSON *p,
                                const char *field, int depth) {
    int rc;
    char f[256], g[256];
    if (depth == 0 && (!p || cJSON_IsNull(p))) return 0;
    if (depth > MAX_DEPTH) return bad(c, KV_EFORMAT, field, "nested too deeply");
    const char *type = type_of(c, p, field, &rc);
    if (rc) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        sub(f, sizeof f, field, "processors");
        if (!cJSON_IsArray(list)) return bad(c, KV_EFORMAT, f, list ? "not an array" : "missing");
        int i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++)
            if ((rc = parse_post_processor(c, t, e, idx(g, sizeof g, f, i), depth + 1))) return rc;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing")) return 0; /* other processors do not name a BOS */
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    sub(f, sizeof f, field, "single");
    if (!cJSON_IsArray(single)) return bad(c, KV_EFORMAT, f, single ? "not an array" : "missing");
    const cJSON *first = single->child,
                *st = first ? cJSON_GetObjectItemCaseSensitive(first, "SpecialToken") : NULL;
    if (!st) return 0; /* template starts with the sequence: no BOS */
    idx(g, sizeof g, f, 0);
    const char *name;
    if ((rc = get_string(c, st, "id", g, &name))) return rc;
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    const cJSON *entry =
        cJSON_IsObject(specials) ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
    if (entry) {
        snprintf(g, sizeof g, "%s.special_tokens[\"%.100s\"].ids", field, name);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids");
        if (!cJSON_IsArray(ids) || cJSON_GetArraySize(ids) != 1)
            return bad(c, KV_EUNSUPPORTED, g, "BOS must be exactly one id");
        return as_int(c, ids->child, g, 0, t->n_ids - 1, &t->bos);
    }
    t->bos = kv_tok_idmap_get(&t->all, t->piece, name, strlen(name));
    if (t->bos < 0) return bad(c, KV_EFORMAT, g, "special token '%.200s' is not a token", name);
    return 0;
}

static int first_token_of(const kv_tokenizer *t, const char *const *names, int n) {
    for (int i = 0; i < n; i++) {
        int id = kv_tok_idmap_get(&t->all, t->piece, names[i], strlen(names[i]));
        if (id >= 0) return id;
    }
    return -1;
}

static int build_added(const load_ctx *c, kv_tokenizer *t, const added_entry *a, int n_added) {
    t->added = calloc((size_t)n_added + 1, sizeof *t->added);
    if (!t->added) return oom(c);
    for (int i = 0; i < n_added; i++) {
        kv_tok_added *d = &t->added[t->n_added++];
        d->id = a[i].id;
        d->lstrip = (unsigned char)a[i].lstrip;
        d->rstrip = (unsigned char)a[i].rstrip;
        d->normalized = (unsigned char)a[i].normalized;
        d->special = (unsigned char)a[i].special;
        if (d->normalized) {
            kv_tok_buf b = {0};
            size_t n = strlen(a[i].content);
            int rc = kv_tok_normalize(t, a[i].content, n, &b);
            if (rc) {
                char f[64];
                free(b.s);
                if (rc != KV_EUNSUPPORTED) return oom(c);
                return bad(c, KV_EUNSUPPORTED, idx(f, sizeof f, "added_tokens", i),
                           "the normalizer grows its %zu bytes past %d x + %d bytes; such a "
                           "normalizer is not "
                           "supported",
                           n, KV_TOK_GROWTH, KV_TOK_GROWTH_SLACK);
            }
            d->match.s = b.s ? b.s : calloc(1, 1);
            d->match.n = b.n;
            if (!d->match.s) return oom(c);
        } else if (str_dup(&d->match, a[i].content, strlen(a[i].content))) {
            return oom(c);
        }
        if (d->match.n > KV_TOK_MAX_ADDED_BYTES) {
            char f[64];
            return bad(c, KV_EUNSUPPORTED, idx(f, sizeof f, "added_tokens", i),
                       "%zu bytes%s, more than %d", d->match.n,
                       d->normalized ? " once normalized" : "", KV_TOK_MAX_ADDED_BYTES);
        }
    }
    if (kv_tok_matcher_build(t, &t->match_raw, 0) || kv_tok_matcher_build(t, &t->match_norm, 1))
        return oom(c);
    return 0;
}

/* Dense ids 0..max_id need at least max_id + 1 entries. When there are fewer, names the
 * smallest missing id (one below the entry count is missing) using a bitmap sized by the
 * entries: nothing is sized by the ids themselves. */
static int check_dense(const load_ctx *c, const cJSON *vocab, const added_entry *a, int n_added,
                       int max_id, int n_vocab) {
    size_t n_entries = (size_t)n_vocab + (size_t)n_added;
    if ((size_t)max_id < n_entries) return 0;
    unsigned char *seen = calloc(n_entries + 1, 1);
    if (!seen) return oom(c);
    for (const cJSON *e = vocab->child; e; e = e->next)
        if ((size_t)e->valuedouble < n_entries) seen[(size_t)e->valuedouble] = 1;
    for (int i = 0; i < n_added; i++)
        if ((size_t)a[i].id < n_entries) seen[a[i].id] = 1;
    size_t missing = 0;
    while (seen[missing]) missing++;
    free(seen);
    return bad(c, KV_EFORMAT, "model.vocab", "no token has id %zu (ids must be 0..%d)", missing,
               max_id);
}

static int load_tree(const load_ctx *c, kv_tokenizer *t, const cJSON *root) {
    int rc, max_id = -1, n_added = 0, n_vocab = 0;
    added_entry *added = NULL;
    if (!cJSON_IsObject(root))
        return kv_fail(c->err, KV_EFORMAT, "%s: top level is not a JSON object", c->file);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!model) return bad(c, KV_EFORMAT, "model", "missing");
    const char *type = type_of(c, model, "model", &rc);
    if (rc) return rc;
    if (strcmp(type, "BPE"))
        return bad(c, KV_EUNSUPPORTED, "model.type", "model '%s' is not supported (only BPE)",
                   type);
    t->model = KV_TOK_MODEL_BPE;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if ((rc = parse_vocab(c, vocab, &max_id, &n_vocab))) return rc;
    if ((rc = parse_added(c, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &added,
                          &n_added, &max_id)))
        return rc;
    /* ids must be dense: checked here, before any table is sized by the largest id */
    if ((rc = check_dense(c, vocab, added, n_added, max_id, n_vocab))) goto done;
    t->n_ids = max_id + 1;
    t->piece = calloc((size_t)t->n_ids, sizeof *t->piece);
    t->flags = calloc((size_t)t->n_ids, 1);
    if (!t->piece || !t->flags || kv_tok_idmap_init(&t->vocab, (size_t)t->n_ids) ||
        kv_tok_idmap_init(&t->all, (size_t)t->n_ids)) {
        rc = oom(c);
        goto done;
    }
    if ((rc = fill_ids(c, t, vocab, added, n_added)) || (rc = parse_model(c, t, model)) ||
        (rc = parse_normalizer(c, t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                               "normalizer", 0)) ||
        (rc = parse_pre_tokenizer(c, t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                                  "pre_tokenizer", 0)) ||
        (rc = parse_decoder(c, t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder",
                            0)) ||
        (rc = build_added(c, t, added, n_added)))
        goto done;
    t->bos = -1;
    if ((rc = parse_post_processor(c, t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                                   "post_processor", 0)))
        goto done;
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>"}, *const eos_names[] = {
                                                                             "</s>",
                                                                             "<|end_of_text|>"};
    if (t->bos < 0) t->bos = first_token_of(t, bos_names, 2);
    t->eos = first_token_of(t, eos_names, 2);
done:
    free(added);
    return rc;
}

enum { TRIM_JSON_BYTES = 256 << 10 }; /* tokenizer.json from here on: the heap trimmed after it */

int kv_tokenizer_load_json(kv_tokenizer **out, const char *json, size_t len, const char *name,
                           kv_error *err) {
    *out = NULL;
    load_ctx c = {.file = name ? name : "tokenizer.json", .err = err};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        long at = end && end >= json ? (long)(end - json) : -1;
        return kv_fail(err, KV_EFORMAT, "%s: not valid JSON (error near byte %ld)", c.file, at);
    }
    kv_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return oom(&c);
    }
    t->bos = t->eos = t->unk_id = -1;
    int rc = load_tree(&c, t, root);
    cJSON_Delete(root);
#ifdef __GLIBC__
    /* a large tree's freed pages (some 4 MB at 32k tokens) leave the resident set */
    if (len >= TRIM_JSON_BYTES) malloc_trim(0);
#endif
    if (rc) {
        kv_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int kv_tokenizer_load(kv_tokenizer **out, const char *path, kv_error *err) {
    char *json;
    size_t n;
    *out = NULL;
    int rc = kv_read_file(path, &json, &n, MAX_JSON_BYTES, err);
    if (rc) return rc;
    rc = kv_tokenizer_load_json(out, json, n, path, err);
    free(json);
    return rc;
}

/* KV maps: building from specs and config.json fields, validation, slots, readers, diagram
 * (METHODS.md s1, s2). */
#include "formats/kvmap.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "formats/json_field.h"

#define SPEC_HELP                                                                                  \
    "expected {pizza|sandwich|lasagna}-{bottom|top|middle}:l, cla:F, yoco, lckv:W, "               \
    "swiftkv:l[,g], identity, or a layer_types literal such as 0_0_2_2"

typedef enum { CFG_PIZZA, CFG_SANDWICH, CFG_LASAGNA } cross_config;
typedef enum { TGT_BOTTOM, TGT_TOP, TGT_MIDDLE } group_target;

static const char *const config_names[] = {"pizza", "sandwich", "lasagna"};
static const char *const target_names[] = {"bottom", "top", "middle"};

/* How a parse or check words its errors: prefix opens every message ("KV map '0_0_2'",
 * "SwiftKV", "config.json: field 'layer_types'"), code is returned, config names the SwiftKV
 * values as config.json fields rather than as spec arguments. */
typedef struct {
    char prefix[256];
    int code;
    int config;
} report;

static int validate_as(const kv_map *m, const report *r, kv_error *err);

static void map_reset(kv_map *m, kvmap_kind kind, int n_layers) {
    memset(m, 0, sizeof *m);
    m->kind = kind;
    m->n_layers = n_layers;
    for (int i = 0; i < n_layers && i < KVMAP_MAX_LAYERS; i++) m->kv_layer_of[i] = i;
}

static int check_n_layers(int n_layers, const char *what, kv_error *err) {
    if (n_layers < 1 || n_layers > KVMAP_MAX_LAYERS)
        return kv_fail(err, KV_EINVAL, "KV map '%s': %d layers, expected 1..%d", what, n_layers,
                       KVMAP_MAX_LAYERS);
    return 0;
}

int kvmap_identity(kv_map *m, int n_layers) {
    if (!m || n_layers < 1 || n_layers > KVMAP_MAX_LAYERS) return KV_EINVAL;
    map_reset(m, KVMAP_IDENTITY, n_layers);
    snprintf(m->name, sizeof m->name, "identity");
    return 0;
}

/* every layer of [start, end] reads the group's chosen target */
static void fill_group(kv_map *m, int start, int end, group_target t) {
    int target = t == TGT_BOTTOM ? start : t == TGT_TOP ? end : (start + end) / 2;
    for (int i = start; i <= end; i++) m->kv_layer_of[i] = target;
}

/* l KV layers out of L = m->n_layers, 1 <= l <= L checked by the caller */
static void build_cross(kv_map *m, cross_config cfg, group_target t, int l) {
    const int L = m->n_layers;
    for (int i = 0; i < L; i++) m->kv_layer_of[i] = i;
    if (cfg == CFG_PIZZA) {
        fill_group(m, l - 1, L - 1, t); /* layers 0..l-2 stay KV layers */
    } else if (cfg == CFG_SANDWICH) {
        int bottom = l / 2; /* ceil((l-1)/2) */
        int top = (l - 1) / 2; /* floor((l-1)/2) */
        fill_group(m, bottom, L - 1 - top, t);
    } else {
        int base = L / l, larger = L % l, start = 0;
        for (int g = 0; g < l; g++) {
            int size = base + (g < larger);
            fill_group(m, start, start + size - 1, t);
            start += size;
        }
    }
}

/* whole string a decimal number 0..1000000, no sign, no spaces */
static int parse_count(const char *s, int *out) {
    long v = 0;
    if (!s || !*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (*s - '0');
        if (v > 1000000) return -1;
    }
    *out = (int)v;
    return 0;
}

static int write_layer_types(const kv_map *m, char *buf, size_t cap);

/* the literal itself when it fits in name, else "custom"; needs 1 <= n_layers <= max */
static void set_literal_name(kv_map *m) {
    char buf[sizeof m->name];
    int n = write_layer_types(m, buf, sizeof buf);
    if (n >= 0 && (size_t)n < sizeof buf) memcpy(m->name, buf, sizeof buf);
    else snprintf(m->name, sizeof m->name, "custom");
}

/* kind from the targets (all kv(i) = i: identity), name from the literal */
static void finish_literal(kv_map *m) {
    int all_self = 1;
    for (int i = 0; i < m->n_layers; i++) all_self &= m->kv_layer_of[i] == i;
    m->kind = all_self ? KVMAP_IDENTITY : KVMAP_CROSS;
    set_literal_name(m);
}

static int check_count(int count, int L, const report *r, kv_error *err) {
    if (count > L)
        return kv_fail(err, r->code,
                       "%s has more than %d entries (%d entries but the model has %d layers)",
                       r->prefix, L, count, L);
    if (count < L)
        return kv_fail(err, r->code, "%s has %d entries but the model has %d layers", r->prefix,
                       count, L);
    return 0;
}

/* layer_types "kv(0)_kv(1)_..._kv(L-1)" into m: entries of at most 7 decimal digits, exactly L
 * of them; kind and name set, targets not yet validated. LCKV's 's' suffix (sliding window,
 * "0_1s_2") sets sliding[i] = 1, or is refused when sliding is NULL. */
static int parse_layer_types(kv_map *m, const char *text, int L, const report *r,
                             unsigned char *sliding, kv_error *err) {
    map_reset(m, KVMAP_CROSS, L);
    int count = 0;
    const char *p = text;
    for (;;) {
        const char *start = p;
        int v = 0;
        while (*p >= '0' && *p <= '9') {
            if (p - start >= 7)
                return kv_fail(err, r->code, "%s: entry %d is too long", r->prefix, count);
            v = v * 10 + (*p - '0');
            p++;
        }
        if (p == start)
            return kv_fail(err, r->code,
                           "%s: entry %d is %s, expected a layer number "
                           "(layer_types is kv(0)_kv(1)_..._kv(L-1))",
                           r->prefix, count, (*p == '_' || !*p) ? "empty" : "not a number");
        if (*p == 's' && (p[1] == '_' || p[1] == '\0')) {
            if (!sliding)
                return kv_fail(err, KV_EUNSUPPORTED,
                               "%s: layer %d is '%.*s': LCKV's 's' suffix (sliding-window "
                               "attention) belongs in a config's layer_types, not in a KV map "
                               "(docs/INTEROP.md)",
                               r->prefix, count, (int)(p + 1 - start), start);
            if (count < L) sliding[count] = 1;
            p++;
        }
        if (*p != '_' && *p != '\0')
            return kv_fail(err, r->code,
                           "%s: unexpected character '%c' in entry %d "
                           "(entries are decimal numbers joined by '_')",
                           r->prefix, *p, count);
        if (count < L) m->kv_layer_of[count] = v;
        count++;
        if (*p == '\0') break;
        p++;
    }
    int rc = check_count(count, L, r, err);
    if (!rc) finish_literal(m);
    return rc;
}

static int parse_literal(kv_map *m, const char *spec, int L, kv_error *err) {
    report r = {.code = KV_EINVAL};
    snprintf(r.prefix, sizeof r.prefix, "KV map '%.200s'", spec);
    int rc = parse_layer_types(m, spec, L, &r, NULL, err);
    return rc ? rc : kvmap_validate(m, err);
}

static int parse_named_cross(kv_map *m, const char *spec, const char *colon, int L, kv_error *err) {
    size_t head = (size_t)(colon - spec);
    int cfg = -1, tgt = -1;
    for (int c = 0; c < 3 && cfg < 0; c++) {
        size_t n = strlen(config_names[c]);
        if (head > n + 1 && !strncmp(spec, config_names[c], n) && spec[n] == '-') {
            for (int t = 0; t < 3; t++) {
                size_t tn = strlen(target_names[t]);
                if (head == n + 1 + tn && !strncmp(spec + n + 1, target_names[t], tn)) {
                    cfg = c;
                    tgt = t;
                }
            }
        }
    }
    if (cfg < 0) return kv_fail(err, KV_EINVAL, "KV map '%.200s': unknown kind; " SPEC_HELP, spec);
    int l;
    if (parse_count(colon + 1, &l))
        return kv_fail(err, KV_EINVAL, "KV map '%.200s': '%.40s' is not a number of KV layers",
                       spec, colon + 1);
    if (l < 1)
        return kv_fail(err, KV_EINVAL, "KV map '%.200s': l = %d KV layers, need at least 1", spec,
                       l);
    if (l > L)
        return kv_fail(err, KV_EINVAL,
                       "KV map '%.200s': l = %d KV layers but the model has only %d layers", spec,
                       l, L);
    map_reset(m, KVMAP_CROSS, L);
    build_cross(m, (cross_config)cfg, (group_target)tgt, l);
    snprintf(m->name, sizeof m->name, "%s-%s:%d", config_names[cfg], target_names[tgt], l);
    return kvmap_validate(m, err);
}

static int parse_cla(kv_map *m, const char *spec, const char *arg, int L, kv_error *err) {
    int f;
    if (parse_count(arg, &f))
        return kv_fail(err, KV_EINVAL, "KV map '%.200s': '%.40s' is not a sharing factor", spec,
                       arg);
    if (f < 1 || f > L)
        return kv_fail(err, KV_EINVAL,
                       "KV map '%.200s': CLA factor %d outside 1..%d (the number of layers)", spec,
                       f, L);
    map_reset(m, KVMAP_CROSS, L);
    for (int start = 0; start < L; start += f) {
        int end = start + f - 1 < L - 1 ? start + f - 1 : L - 1;
        fill_group(m, start, end, TGT_BOTTOM);
    }
    snprintf(m->name, sizeof m->name, "cla:%d", f);
    return kvmap_validate(m, err);
}

static int parse_yoco(kv_map *m, int L, kv_error *err) {
    if (L < 2 || L % 2)
        return kv_fail(err, KV_EINVAL,
                       "KV map 'yoco': needs an even number of layers (two equal halves), "
                       "the model has %d; use pizza-bottom:l instead",
                       L);
    map_reset(m, KVMAP_CROSS, L);
    build_cross(m, CFG_PIZZA, TGT_BOTTOM, L / 2 + 1);
    snprintf(m->name, sizeof m->name, "yoco");
    return kvmap_validate(m, err);
}

static int parse_lckv(kv_map *m, const char *spec, const char *arg, int L, kv_error *err) {
    int w;
    if (parse_count(arg, &w))
        return kv_fail(err, KV_EINVAL, "KV map '%.200s': '%.40s' is not a number of warm-up layers",
                       spec, arg);
    if (w + 1 > L)
        return kv_fail(err, KV_EINVAL,
                       "KV map '%.200s': %d warm-up layers need at least %d layers, the model "
                       "has %d",
                       spec, w, w + 1, L);
    map_reset(m, KVMAP_CROSS, L);
    build_cross(m, CFG_SANDWICH, TGT_TOP, w + 1);
    snprintf(m->name, sizeof m->name, "lckv:%d", w);
    return kvmap_validate(m, err);
}

int kvmap_parse(kv_map *m, const char *spec, int n_layers, kv_error *err) {
    if (!m) return kv_fail(err, KV_EINVAL, "KV map: no output map");
    if (!spec || !*spec) return kv_fail(err, KV_EINVAL, "KV map: empty spec; " SPEC_HELP);
    int rc = check_n_layers(n_layers, spec, err);
    if (rc) return rc;
    if (spec[0] >= '0' && spec[0] <= '9') return parse_literal(m, spec, n_layers, err);
    if (!strcmp(spec, "identity")) return kvmap_identity(m, n_layers);
    if (!strcmp(spec, "yoco")) return parse_yoco(m, n_layers, err);
    const char *colon = strchr(spec, ':');
    if (!colon) {
        /* a known kind without its number: say what is missing */
        static const char *const needs[][2] = {{"cla", "cla:F (F layers per group)"},
                                               {"lckv", "lckv:W (W warm-up layers)"},
                                               {"swiftkv", "swiftkv:l[,g]"}};
        for (size_t i = 0; i < sizeof needs / sizeof needs[0]; i++)
            if (!strcmp(spec, needs[i][0]))
                return kv_fail(err, KV_EINVAL, "KV map '%.200s': missing the number: %s", spec,
                               needs[i][1]);
        for (int c = 0; c < 3; c++)
            for (int t = 0; t < 3; t++) {
                char name[64];
                snprintf(name, sizeof name, "%s-%s", config_names[c], target_names[t]);
                if (!strcmp(spec, name))
                    return kv_fail(
                        err, KV_EINVAL,
                        "KV map '%.200s': missing the number of KV layers: %s:l, e.g. %s:%d", spec,
                        name, name, n_layers > 2 ? n_layers / 2 : 1);
            }
        return kv_fail(err, KV_EINVAL, "KV map '%.200s': unknown kind; " SPEC_HELP, spec);
    }
    size_t head = (size_t)(colon - spec);
    if (head == 3 && !strncmp(spec, "cla", 3)) return parse_cla(m, spec, colon + 1, n_layers, err);
    if (head == 4 && !strncmp(spec, "lckv", 4))
        return parse_lckv(m, spec, colon + 1, n_layers, err);
    if (head == 7 && !strncmp(spec, "swiftkv", 7))
        return kvmap_parse_swiftkv(m, colon + 1, n_layers, err);
    return parse_named_cross(m, spec, colon, n_layers, err);
}

/* "NAME = V" in a spec's messages; "field 'NAME' is V" (paren: "field 'NAME' (V)") in a
 * config's */
static const char *value_text(char *buf, size_t cap, const report *r, const char *name, int v,
                              int paren) {
    if (!r->config) snprintf(buf, cap, "%s = %d", name, v);
    else if (paren) snprintf(buf, cap, "field '%s' (%d)", name, v);
    else snprintf(buf, cap, "field '%s' is %d", name, v);
    return buf;
}

/* SwiftKV (l, g) over L layers, 1 <= L <= max checked by the caller */
static int build_swiftkv(kv_map *m, int L, int l, int g, const report *r, kv_error *err) {
    char lt[96], gt[96];
    if (l < 1 || l >= L)
        return kv_fail(err, r->code, "%s: %s, expected 1..%d (%d layers; l = L changes nothing)",
                       r->prefix, value_text(lt, sizeof lt, r, "num_key_value_layers", l, 0), L - 1,
                       L);
    if (g < 1)
        return kv_fail(err, r->code, "%s: %s, expected >= 1", r->prefix,
                       value_text(gt, sizeof gt, r, "key_value_group_size", g, 0));
    if ((L - l) % g)
        return kv_fail(err, r->code,
                       "%s: %s does not divide the %d layers from %s to the last (L = %d)",
                       r->prefix, value_text(gt, sizeof gt, r, "key_value_group_size", g, 1), L - l,
                       value_text(lt, sizeof lt, r, "num_key_value_layers", l, 1), L);
    map_reset(m, KVMAP_SWIFTKV, L);
    for (int j = l; j < L; j++) m->kv_layer_of[j] = l + ((j - l) / g) * g;
    m->swiftkv_l = l;
    m->swiftkv_g = g;
    snprintf(m->name, sizeof m->name, "swiftkv:%d,%d", l, g);
    return validate_as(m, r, err);
}

int kvmap_swiftkv(kv_map *m, int n_layers, int l, int g, kv_error *err) {
    if (!m) return kv_fail(err, KV_EINVAL, "SwiftKV map: no output map");
    int rc = check_n_layers(n_layers, "swiftkv", err);
    if (rc) return rc;
    const report r = {.prefix = "SwiftKV", .code = KV_EINVAL};
    return build_swiftkv(m, n_layers, l, g, &r, err);
}

int kvmap_parse_swiftkv(kv_map *m, const char *spec, int n_layers, kv_error *err) {
    if (!spec || !*spec)
        return kv_fail(err, KV_EINVAL, "SwiftKV: empty spec, expected \"l\" or \"l,g\"");
    char first[32];
    const char *comma = strchr(spec, ',');
    size_t n = comma ? (size_t)(comma - spec) : strlen(spec);
    int l, g = 1;
    if (n >= sizeof first)
        return kv_fail(err, KV_EINVAL, "SwiftKV '%.200s': expected \"l\" or \"l,g\"", spec);
    memcpy(first, spec, n);
    first[n] = '\0';
    if (parse_count(first, &l) || (comma && parse_count(comma + 1, &g)))
        return kv_fail(err, KV_EINVAL,
                       "SwiftKV '%.200s': expected \"l\" or \"l,g\" with decimal numbers", spec);
    return kvmap_swiftkv(m, n_layers, l, g, err);
}

static int validate_as(const kv_map *m, const report *r, kv_error *err) {
    const char *who = r->prefix;
    const int L = m->n_layers;
    if (L < 1 || L > KVMAP_MAX_LAYERS)
        return kv_fail(err, r->code, "%s: %d layers, expected 1..%d", who, L, KVMAP_MAX_LAYERS);
    if (m->kind != KVMAP_IDENTITY && m->kind != KVMAP_CROSS && m->kind != KVMAP_SWIFTKV)
        return kv_fail(err, r->code, "%s: unknown kind %d", who, (int)m->kind);
    for (int i = 0; i < L; i++) {
        int t = m->kv_layer_of[i];
        if (t < 0 || t >= L)
            return kv_fail(err, r->code, "%s: layer %d reads layer %d, outside 0..%d", who, i, t,
                           L - 1);
    }
    for (int i = 0; i < L; i++) {
        int t = m->kv_layer_of[i];
        if (m->kv_layer_of[t] != t)
            return kv_fail(err, r->code,
                           "%s: layer %d reads layer %d, which is not a KV layer (it "
                           "reads layer %d); a target must read itself, kv(kv(i)) = kv(i)",
                           who, i, t, m->kv_layer_of[t]);
    }
    if (m->kind == KVMAP_IDENTITY) {
        for (int i = 0; i < L; i++)
            if (m->kv_layer_of[i] != i)
                return kv_fail(err, r->code, "%s: marked identity but layer %d reads layer %d", who,
                               i, m->kv_layer_of[i]);
    }
    if (m->kind == KVMAP_SWIFTKV) {
        const int l = m->swiftkv_l, g = m->swiftkv_g;
        if (l < 1 || l >= L || g < 1 || (L - l) % g)
            return kv_fail(err, r->code,
                           "%s: SwiftKV l = %d, g = %d invalid for %d layers (need "
                           "1 <= l < L, g >= 1, (L - l) %% g = 0)",
                           who, l, g, L);
        for (int j = 0; j < L; j++) {
            int want = j < l ? j : l + ((j - l) / g) * g;
            if (m->kv_layer_of[j] != want)
                return kv_fail(err, r->code, "%s: SwiftKV layer %d reads layer %d, expected %d",
                               who, j, m->kv_layer_of[j], want);
        }
    }
    return 0;
}

int kvmap_validate(const kv_map *m, kv_error *err) {
    if (!m) return kv_fail(err, KV_EINVAL, "KV map: none given");
    report r = {.code = KV_EINVAL};
    snprintf(r.prefix, sizeof r.prefix, "KV map '%s'",
             memchr(m->name, '\0', sizeof m->name) ? m->name : "?");
    return validate_as(m, &r, err);
}

/* layer_types of a config: a string "0_0_2_2_4" or a list of integers is a map (*found = 1);
 * absent, or a list of strings that are all "full_attention" (HF's attention kinds), leaves the
 * identity; other attention kinds are refused */
static int read_layer_types(kv_map *m, const cJSON *config, int L, const char *label, int *found,
                            unsigned char *sliding, kv_error *err) {
    *found = 0;
    kvmap_identity(m, L);
    memset(sliding, 0, (size_t)L);
    const cJSON *lt = json_field(config, "layer_types");
    if (!lt) return 0;
    report r = {.code = KV_EFORMAT, .config = 1};
    snprintf(r.prefix, sizeof r.prefix, "%s: field 'layer_types'", label);
    int rc;
    if (cJSON_IsString(lt)) {
        if ((rc = parse_layer_types(m, lt->valuestring, L, &r, sliding, err))) return rc;
    } else if (cJSON_IsArray(lt)) {
        int n = cJSON_GetArraySize(lt), n_str = 0;
        for (const cJSON *e = lt->child; e; e = e->next) n_str += cJSON_IsString(e) ? 1 : 0;
        if (n > 0 && n_str == n) { /* HF's attention kinds, not a KV map */
            if ((rc = check_count(n, L, &r, err))) return rc;
            int i = 0;
            for (const cJSON *e = lt->child; e; e = e->next, i++) {
                if (strcmp(e->valuestring, "sliding_attention") == 0) sliding[i] = 1;
                else if (strcmp(e->valuestring, "full_attention") != 0)
                    return kv_fail(err, KV_EUNSUPPORTED,
                                   "%s is a list of strings, Hugging Face's per-layer attention "
                                   "kinds (a different meaning from LCKV's KV map string); layer "
                                   "%d is '%.64s', which kvforge does not support (only "
                                   "'full_attention' and 'sliding_attention')",
                                   r.prefix, i, e->valuestring);
            }
            return 0;
        }
        if (n_str > 0) return kv_fail(err, r.code, "%s mixes strings and other values", r.prefix);
        if ((rc = check_count(n, L, &r, err))) return rc;
        map_reset(m, KVMAP_CROSS, L);
        int i = 0;
        for (const cJSON *e = lt->child; e; e = e->next, i++)
            if ((rc =
                     json_number_int(e, label, "layer_types", 0, INT_MAX, &m->kv_layer_of[i], err)))
                return rc;
        finish_literal(m);
    } else {
        return kv_fail(err, r.code, "%s is %s, expected a string like \"0_0_2_2_4\" or a list",
                       r.prefix, json_kind(lt));
    }
    *found = 1;
    return validate_as(m, &r, err);
}

int kvmap_read_config(kv_map *m, const cJSON *config, int n_layers, int swiftkv_default,
                      unsigned char *sliding, const char *label, kv_error *err) {
    unsigned char unused[KVMAP_MAX_LAYERS];
    if (!sliding) sliding = unused;
    if (!label) label = "config.json";
    if (!m || !cJSON_IsObject(config))
        return kv_fail(err, KV_EINVAL, "%s: no config object or no output map", label);
    if (n_layers < 1 || n_layers > KVMAP_MAX_LAYERS)
        return kv_fail(err, KV_EFORMAT, "%s: field 'num_hidden_layers' is %d, expected 1..%d",
                       label, n_layers, KVMAP_MAX_LAYERS);
    int has_map, swift, rc;
    if ((rc = read_layer_types(m, config, n_layers, label, &has_map, sliding, err)) ||
        (rc = json_get_bool(config, label, "swiftkv", swiftkv_default, &swift, err)))
        return rc;
    if (!swift) return 0;
    if (has_map)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: fields 'swiftkv' and an integer 'layer_types' are both set; kvforge "
                       "handles one transform at a time",
                       label);
    int l, g;
    if ((rc = json_get_int(config, label, "num_key_value_layers", 1, 0, INT_MIN, INT_MAX, &l,
                           err)) ||
        (rc = json_get_int(config, label, "key_value_group_size", 0, 1, INT_MIN, INT_MAX, &g, err)))
        return rc;
    report r = {.code = KV_EFORMAT, .config = 1};
    snprintf(r.prefix, sizeof r.prefix, "%s", label);
    return build_swiftkv(m, n_layers, l, g, &r, err);
}

static int layer_ok(const kv_map *m, int layer) {
    return m && m->n_layers >= 1 && m->n_layers <= KVMAP_MAX_LAYERS && layer >= 0 &&
           layer < m->n_layers;
}

int kvmap_is_identity(const kv_map *m) {
    if (!m || m->kind == KVMAP_SWIFTKV || m->n_layers < 1 || m->n_layers > KVMAP_MAX_LAYERS)
        return 0;
    for (int i = 0; i < m->n_layers; i++)
        if (m->kv_layer_of[i] != i) return 0;
    return 1;
}

int kvmap_target(const kv_map *m, int layer) {
    return layer_ok(m, layer) ? m->kv_layer_of[layer] : -1;
}

int kvmap_is_kv_layer(const kv_map *m, int layer) {
    return layer_ok(m, layer) && m->kv_layer_of[layer] == layer;
}

int kvmap_is_swiftkv_layer(const kv_map *m, int layer) {
    return layer_ok(m, layer) && m->kind == KVMAP_SWIFTKV && layer >= m->swiftkv_l;
}

int kvmap_n_slots(const kv_map *m) {
    if (!m || m->n_layers < 1 || m->n_layers > KVMAP_MAX_LAYERS) return 0;
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) n += m->kv_layer_of[i] == i;
    return n;
}

int kvmap_slot_of(const kv_map *m, int layer) {
    if (!layer_ok(m, layer)) return -1;
    int t = m->kv_layer_of[layer];
    if (t < 0 || t >= m->n_layers) return -1;
    int slot = 0;
    for (int i = 0; i < t; i++) slot += m->kv_layer_of[i] == i;
    return slot;
}

int kvmap_is_upward(const kv_map *m, int layer) {
    return layer_ok(m, layer) && m->kv_layer_of[layer] > layer;
}

double kvmap_cache_saving(const kv_map *m) {
    if (!m || m->n_layers < 1 || m->n_layers > KVMAP_MAX_LAYERS) return 0.0;
    return 1.0 - (double)kvmap_n_slots(m) / (double)m->n_layers;
}

int kvmap_equal(const kv_map *a, const kv_map *b) {
    if (!a || !b || a->n_layers != b->n_layers || a->n_layers < 1 || a->n_layers > KVMAP_MAX_LAYERS)
        return 0;
    const int swift = a->kind == KVMAP_SWIFTKV;
    if (swift != (b->kind == KVMAP_SWIFTKV) ||
        (swift && (a->swiftkv_l != b->swiftkv_l || a->swiftkv_g != b->swiftkv_g)))
        return 0;
    return memcmp(a->kv_layer_of, b->kv_layer_of, sizeof(int) * (size_t)a->n_layers) == 0;
}

int kvmap_cyclic_block(const kv_map *m, int *lo, int *hi) {
    int a = -1, b = -1;
    if (m && m->n_layers >= 1 && m->n_layers <= KVMAP_MAX_LAYERS) {
        for (int i = 0; i < m->n_layers; i++) {
            if (m->kv_layer_of[i] <= i) continue;
            if (a < 0) a = i;
            if (m->kv_layer_of[i] > b) b = m->kv_layer_of[i];
        }
    }
    if (lo) *lo = a;
    if (hi) *hi = b;
    return a < 0 ? 0 : b - a + 1;
}

int kvmap_cyclic_group(const kv_map *m, int from, int *lo, int *hi) {
    int a = -1, b = -1;
    if (m && m->n_layers >= 1 && m->n_layers <= KVMAP_MAX_LAYERS) {
        int i = from < 0 ? 0 : from;
        while (i < m->n_layers && m->kv_layer_of[i] <= i) i++;
        if (i < m->n_layers) {
            a = i;
            b = m->kv_layer_of[i];
            /* a layer inside the run whose own run reaches higher extends it */
            for (int j = i + 1; j < b; j++)
                if (m->kv_layer_of[j] > b) b = m->kv_layer_of[j];
        }
    }
    if (lo) *lo = a;
    if (hi) *hi = b;
    return a < 0 ? 0 : b - a + 1;
}

int kvmap_n_cyclic_groups(const kv_map *m) {
    int n = 0, hi = -1;
    while (kvmap_cyclic_group(m, hi + 1, NULL, &hi) > 0) n++;
    return n;
}

static int add_plan_step(cJSON *steps, int first, int last, int passes, int cyclic) {
    cJSON *st = cJSON_CreateObject(), *layers = cJSON_CreateArray();
    if (!st || !layers || !cJSON_AddItemToObject(st, "layers", layers)) {
        cJSON_Delete(st);
        cJSON_Delete(layers);
        return 0;
    }
    cJSON_AddItemToArray(layers, cJSON_CreateNumber(first));
    cJSON_AddItemToArray(layers, cJSON_CreateNumber(last));
    cJSON_AddNumberToObject(st, "passes", passes);
    cJSON_AddBoolToObject(st, "cyclic", cyclic);
    return cJSON_AddItemToArray(steps, st);
}

cJSON *kvmap_plan_json(const kv_map *m) {
    const int groups = kvmap_n_cyclic_groups(m);
    if (groups == 0) return NULL;
    cJSON *plan = cJSON_CreateObject();
    if (!plan) return NULL;
    cJSON_AddNumberToObject(plan, "passes", KVMAP_DEFAULT_PASSES);
    cJSON_AddNumberToObject(plan, "cyclic_groups", groups);
    cJSON *steps = cJSON_AddArrayToObject(plan, "steps");
    int ok = steps != NULL, next = 0, lo, hi;
    while (ok && kvmap_cyclic_group(m, next, &lo, &hi) > 0) {
        if (lo > next) ok = add_plan_step(steps, next, lo - 1, 1, 0);
        if (ok) ok = add_plan_step(steps, lo, hi, KVMAP_DEFAULT_PASSES, 1);
        next = hi + 1;
    }
    if (ok && next < m->n_layers) ok = add_plan_step(steps, next, m->n_layers - 1, 1, 0);
    if (!ok) {
        cJSON_Delete(plan);
        return NULL;
    }
    return plan;
}

int kvmap_readers(const kv_map *m, int target, int *out, int cap) {
    if (!layer_ok(m, target) || cap < 0 || (cap > 0 && !out)) return KV_EINVAL;
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        if (m->kv_layer_of[i] != target) continue;
        if (n < cap) out[n] = i;
        n++;
    }
    return n;
}

/* snprintf-style accumulator: len counts everything, buf holds what fits */
typedef struct {
    char *buf;
    size_t cap, len;
} text_out;

__attribute__((format(printf, 2, 3))) static void out_printf(text_out *o, const char *fmt, ...) {
    char *dst = o->len < o->cap ? o->buf + o->len : NULL;
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n;
}

static int out_finish(text_out *o) {
    if (o->cap > 0) o->buf[o->len < o->cap ? o->len : o->cap - 1] = '\0';
    return o->len > (size_t)0x7fffffff ? KV_ENOMEM : (int)o->len;
}

static int write_layer_types(const kv_map *m, char *buf, size_t cap) {
    text_out o = {buf, cap, 0};
    for (int i = 0; i < m->n_layers; i++) out_printf(&o, i ? "_%d" : "%d", m->kv_layer_of[i]);
    return out_finish(&o);
}

int kvmap_layer_types(const kv_map *m, char *buf, size_t cap) {
    if (kvmap_validate(m, NULL) || (cap > 0 && !buf)) return KV_EINVAL;
    return write_layer_types(m, buf, cap);
}

size_t kvmap_cache_bytes_per_token(const kv_map *m, int n_kv_heads, int head_dim,
                                   size_t elem_bytes) {
    if (kvmap_validate(m, NULL) || n_kv_heads < 1 || head_dim < 1 || elem_bytes < 1) return 0;
    size_t n = 2 * (size_t)kvmap_n_slots(m);
    if (__builtin_mul_overflow(n, (size_t)n_kv_heads, &n) ||
        __builtin_mul_overflow(n, (size_t)head_dim, &n) ||
        __builtin_mul_overflow(n, elem_bytes, &n))
        return 0;
    return n;
}

size_t kvmap_cache_bytes_windowed(const kv_map *map, const int *window, int max_batch,
                                  int n_kv_heads, int head_dim, int max_seq, size_t elem,
                                  int *ring) {
    if (kvmap_validate(map, NULL)) return 0;
    const int n_slots = kvmap_n_slots(map);
    if (n_slots < 1 || n_kv_heads < 1 || head_dim < 1 || max_seq < 1 || max_batch < 1 || !elem)
        return 0;
    /* per slot: the widest window of its readers, -1 once a full-attention layer reads it */
    int widest[KVMAP_MAX_LAYERS] = {0};
    for (int i = 0; i < map->n_layers; i++) {
        const int s = kvmap_slot_of(map, i), w = window ? window[i] : 0;
        if (s < 0) return 0;
        if (w <= 0) widest[s] = -1;
        else if (widest[s] >= 0 && w > widest[s]) widest[s] = w;
    }
    const int batch = max_batch < max_seq ? max_batch : max_seq;
    size_t rows = 0, bytes;
    for (int s = 0; s < n_slots; s++) {
        int r = 0; /* a ring only when it is smaller than the context */
        if (widest[s] > 0 && (int64_t)widest[s] + batch - 1 < max_seq) r = widest[s] + batch - 1;
        if (ring) ring[s] = r;
        rows += (size_t)(r ? r : max_seq);
    }
    if (__builtin_mul_overflow(rows, (size_t)n_kv_heads * (size_t)head_dim, &bytes) ||
        __builtin_mul_overflow(bytes, 2 * elem, &bytes))
        return 0;
    return bytes;
}

static int digits(int v) {
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

int kvmap_diagram(const kv_map *m, char *buf, size_t cap) {
    if (kvmap_validate(m, NULL) || (cap > 0 && !buf)) return KV_EINVAL;
    text_out o = {buf, cap, 0};
    const int L = m->n_layers, slots = kvmap_n_slots(m);
    const int w = digits(L - 1), sw = digits(slots - 1);
    if (m->kind == KVMAP_SWIFTKV)
        out_printf(&o,
                   "KV map %s: %d layers; layers 0..%d unchanged; layers %d..%d take K/V from "
                   "norm_swiftkv(input of layer %d), one slot per group of %d\n",
                   m->name, L, m->swiftkv_l - 1, m->swiftkv_l, L - 1, m->swiftkv_l, m->swiftkv_g);
    else out_printf(&o, "KV map %s: %d layers, %d KV layers\n", m->name, L, slots);
    for (int i = 0; i < L; i++) {
        const int t = m->kv_layer_of[i];
        const int swift = m->kind == KVMAP_SWIFTKV && i >= m->swiftkv_l;
        char col[32];
        if (t == i) snprintf(col, sizeof col, "%s", swift ? "KV swiftkv" : "KV");
        else snprintf(col, sizeof col, "-> %*d", w, t);
        out_printf(&o, "layer %*d  %-10s  slot %*d", w, i, col, sw, kvmap_slot_of(m, i));
        if (t > i) out_printf(&o, "  upward (diagonal masked)");
        if (t == i) {
            int readers = kvmap_readers(m, i, NULL, 0);
            if (readers > 1) out_printf(&o, "  shared by %d layers", readers);
        }
        out_printf(&o, "\n");
    }
    const int groups = kvmap_n_cyclic_groups(m);
    if (groups > 0) {
        /* LCKV's iteration plan, in order: plain layers once, each cyclic group N times */
        out_printf(&o,
                   "iterative prefill: %d cyclic group%s, N passes each (N = %d unless "
                   "kvrun --prefill iterative:N / kvdistill --passes N)\n",
                   groups, groups == 1 ? "" : "s", KVMAP_DEFAULT_PASSES);
        int next = 0, lo, hi, g = 0;
        while (kvmap_cyclic_group(m, next, &lo, &hi) > 0) {
            if (lo > next) out_printf(&o, "  layers %*d..%*d  once\n", w, next, w, lo - 1);
            out_printf(&o, "  layers %*d..%*d  cyclic group %d: %d passes\n", w, lo, w, hi, ++g,
                       KVMAP_DEFAULT_PASSES);
            next = hi + 1;
        }
        if (next < L) out_printf(&o, "  layers %*d..%*d  once\n", w, next, w, L - 1);
    }
    out_printf(&o, "KV cache: %d of %d slots (saving %.1f%%)\n", slots, L,
               100.0 * kvmap_cache_saving(m));
    return out_finish(&o);
}

const char *kvmap_layout_name(kv_swiftkv_layout layout) {
    return layout == KV_LAYOUT_DEPLOY ? "deploy" : "hf-swiftkv";
}

int kvmap_swiftkv_serving_limits(const kv_map *m, kv_swiftkv_layout layout, char *why, size_t cap) {
    if (why && cap) why[0] = 0;
    if (!m || m->kind != KVMAP_SWIFTKV) return 0;
    int n = 0;
    size_t used = 0;
    char line[320];
    for (int k = 0; k < 2; k++) {
        if (k == 0 && layout != KV_LAYOUT_DEPLOY) continue;
        if (k == 1 && m->swiftkv_g <= 1) continue;
        if (k == 0)
            snprintf(line, sizeof line,
                     "layout 'deploy' drops q/k/v_proj of layers >= %d: versions of "
                     "ArcticInference's llama_swiftkv that build those projections on every "
                     "layer cannot load it (the default layout hf-swiftkv keeps them)",
                     m->swiftkv_l);
        else
            snprintf(line, sizeof line,
                     "AcrossKV (key_value_group_size %d > 1) is not served by every version of "
                     "ArcticInference's llama_swiftkv: versions that split the fused K/V "
                     "projection per layer rather than per group compute wrong K/V; g = 1 is "
                     "served by all",
                     m->swiftkv_g);
        if (why && cap > used + 1) {
            int w = snprintf(why + used, cap - used, "%s%s", n ? "\n" : "", line);
            if (w > 0) used += (size_t)w < cap - used ? (size_t)w : cap - used - 1;
        }
        n++;
    }
    return n;
}

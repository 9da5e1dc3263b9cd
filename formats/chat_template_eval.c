/* Chat templates: rendering the parsed tree (chat_template_impl.h) over a conversation, with the
 * assistant-content provenance of every output byte carried through strings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/chat_template_impl.h"

#define MAX_STEPS 1000000L
#define NS_MAX    32

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_STR, V_LIST, V_DICT, V_NS, V_LOOP } vkind;

typedef struct ns_obj ns_obj;
typedef struct {
    vkind k;
    long i; /* BOOL, INT; LOOP: index0 */
    const char *s; /* STR */
    size_t n;
    const unsigned char *m; /* STR: [n] 1 = assistant content byte; NULL: none */
    const cJSON *j; /* LIST: array, items [lo, hi); DICT: object */
    long lo, hi; /* LIST; LOOP: hi = length */
    ns_obj *ns; /* NS */
} val;

struct ns_obj {
    const char *names[NS_MAX];
    val vals[NS_MAX];
    int n;
};

typedef struct {
    const char *name;
    val v;
} var;

typedef struct {
    const kv_chat_template *t;
    kv_error *err;
    void **pool;
    int n_pool, cap_pool;
    var *vars;
    int n_vars, cap_vars, scope; /* vars[scope ..] belong to the innermost loop */
    char *out;
    unsigned char *mask;
    size_t len, cap;
    long steps;
} rctx;

static void *ralloc(rctx *r, size_t bytes) {
    if (r->n_pool == r->cap_pool) {
        int cap = r->cap_pool ? 2 * r->cap_pool : 256;
        void **p = realloc(r->pool, sizeof(void *) * (size_t)cap);
        if (!p) return NULL;
        r->pool = p, r->cap_pool = cap;
    }
    void *m = malloc(bytes ? bytes : 1);
    if (m) r->pool[r->n_pool++] = m;
    return m;
}

static int oom(rctx *r) {
    return kv_fail(r->err, KV_ENOMEM, "%s: out of memory rendering the template", r->t->label);
}

static int fail_at(rctx *r, const ct_expr *e, int code, const char *what) {
    return kv_fail(r->err, code, "%s: line %d: %s", r->t->label, e ? e->line : 0, what);
}

static int unsupported(rctx *r, const ct_expr *e, const char *kind, const char *name) {
    return kv_fail(r->err, KV_EUNSUPPORTED,
                   "%s: line %d: chat_template uses %s '%.64s', which kvdistill does not support; "
                   "use --chat-template fallback",
                   r->t->label, e->line, kind, name);
}

static const char *kind_name(vkind k) {
    static const char *const names[] = {"undefined",  "none",        "a boolean",
                                        "an integer", "a string",    "a list",
                                        "a mapping",  "a namespace", "a loop"};
    return names[k];
}

static val str_val(const char *s, size_t n, const unsigned char *m) {
    return (val){.k = V_STR, .s = s, .n = n, .m = m};
}

static val from_json(const cJSON *j) {
    if (!j) return (val){.k = V_UNDEF};
    if (cJSON_IsString(j)) return str_val(j->valuestring, strlen(j->valuestring), NULL);
    if (cJSON_IsBool(j)) return (val){.k = V_BOOL, .i = cJSON_IsTrue(j)};
    if (cJSON_IsNumber(j)) return (val){.k = V_INT, .i = (long)j->valuedouble};
    if (cJSON_IsArray(j)) return (val){.k = V_LIST, .j = j, .lo = 0, .hi = cJSON_GetArraySize(j)};
    if (cJSON_IsObject(j)) return (val){.k = V_DICT, .j = j};
    return (val){.k = V_NONE};
}

static int truthy(const val *v) {
    switch (v->k) {
    case V_BOOL:
    case V_INT: return v->i != 0;
    case V_STR: return v->n > 0;
    case V_LIST: return v->hi > v->lo;
    case V_DICT: return v->j->child != NULL;
    case V_NS:
    case V_LOOP: return 1;
    default: return 0;
    }
}

/* the string of v as {{ }} prints it */
static int to_str(rctx *r, const ct_expr *e, const val *v, val *out) {
    char buf[32];
    switch (v->k) {
    case V_STR: *out = *v; return 0;
    case V_UNDEF: *out = str_val("", 0, NULL); return 0;
    case V_NONE: *out = str_val("None", 4, NULL); return 0;
    case V_BOOL: *out = str_val(v->i ? "True" : "False", v->i ? 4 : 5, NULL); return 0;
    case V_INT: {
        int n = snprintf(buf, sizeof buf, "%ld", v->i);
        char *s = ralloc(r, (size_t)n + 1);
        if (!s) return oom(r);
        memcpy(s, buf, (size_t)n + 1);
        *out = str_val(s, (size_t)n, NULL);
        return 0;
    }
    default: {
        char what[64];
        snprintf(what, sizeof what, "cannot turn %s into text", kind_name(v->k));
        return fail_at(r, e, KV_EUNSUPPORTED, what);
    }
    }
}

static int concat(rctx *r, const val *a, const val *b, val *out) {
    if (a->n + b->n > KV_CHAT_RENDER_MAX_BYTES)
        return kv_fail(r->err, KV_EUNSUPPORTED, "%s: a string longer than %zu bytes", r->t->label,
                       KV_CHAT_RENDER_MAX_BYTES);
    char *s = ralloc(r, a->n + b->n + 1);
    unsigned char *m = a->m || b->m ? ralloc(r, a->n + b->n + 1) : NULL;
    if (!s || ((a->m || b->m) && !m)) return oom(r);
    memcpy(s, a->s, a->n);
    memcpy(s + a->n, b->s, b->n);
    s[a->n + b->n] = 0;
    if (m) {
        if (a->m) memcpy(m, a->m, a->n);
        else memset(m, 0, a->n);
        if (b->m) memcpy(m + a->n, b->m, b->n);
        else memset(m + a->n, 0, b->n);
    }
    *out = str_val(s, a->n + b->n, m);
    return 0;
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* v with leading (left) and/or trailing (right) whitespace dropped; shares the bytes */
static val strip(const val *v, int left, int right) {
    size_t b = 0, e = v->n;
    while (left && b < e && is_space(v->s[b])) b++;
    while (right && e > b && is_space(v->s[e - 1])) e--;
    return str_val(v->s + b, e - b, v->m ? v->m + b : NULL);
}

static int change_case(rctx *r, const val *v, int upper, val *out) {
    char *s = ralloc(r, v->n + 1);
    if (!s) return oom(r);
    for (size_t i = 0; i < v->n; i++) {
        char c = v->s[i];
        if (upper && c >= 'a' && c <= 'z') c = (char)(c - 32);
        if (!upper && c >= 'A' && c <= 'Z') c = (char)(c + 32);
        s[i] = c;
    }
    s[v->n] = 0;
    *out = str_val(s, v->n, v->m);
    return 0;
}

static int equal(const val *a, const val *b) {
    const int an = a->k == V_INT || a->k == V_BOOL, bn = b->k == V_INT || b->k == V_BOOL;
    if (an && bn) return a->i == b->i;
    if (a->k != b->k) return 0;
    switch (a->k) {
    case V_STR: return a->n == b->n && !memcmp(a->s, b->s, a->n);
    case V_LIST: return a->j == b->j && a->lo == b->lo && a->hi == b->hi;
    case V_DICT: return a->j == b->j;
    case V_NS: return a->ns == b->ns;
    default: return 1; /* undefined, none */
    }
}

static const cJSON *list_item(const val *l, long i) {
    return cJSON_GetArrayItem(l->j, (int)(l->lo + i));
}

/* d[key]; the content of an assistant message carries the assistant mask */
static int dict_get(rctx *r, const val *d, const char *key, size_t klen, val *out) {
    const cJSON *it = NULL;
    for (const cJSON *c = d->j->child; c; c = c->next)
        if (c->string && strlen(c->string) == klen && !memcmp(c->string, key, klen)) it = c;
    *out = from_json(it);
    if (out->k == V_STR && klen == 7 && !memcmp(key, "content", 7)) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(d->j, "role");
        if (cJSON_IsString(role) && !strcmp(role->valuestring, "assistant")) {
            unsigned char *m = ralloc(r, out->n);
            if (!m) return oom(r);
            memset(m, 1, out->n);
            out->m = m;
        }
    }
    return 0;
}

static int get_attr(rctx *r, const ct_expr *e, const val *o, const char *name, size_t n, val *out) {
    (void)e;
    *out = (val){.k = V_UNDEF};
    if (o->k == V_DICT) return dict_get(r, o, name, n, out);
    if (o->k == V_NS) {
        for (int i = 0; i < o->ns->n; i++)
            if (!strcmp(o->ns->names[i], name)) *out = o->ns->vals[i];
        return 0;
    }
    if (o->k == V_LOOP) {
        const long i = o->i, len = o->hi;
        if (!strcmp(name, "index0")) *out = (val){.k = V_INT, .i = i};
        else if (!strcmp(name, "index")) *out = (val){.k = V_INT, .i = i + 1};
        else if (!strcmp(name, "revindex0")) *out = (val){.k = V_INT, .i = len - 1 - i};
        else if (!strcmp(name, "revindex")) *out = (val){.k = V_INT, .i = len - i};
        else if (!strcmp(name, "first")) *out = (val){.k = V_BOOL, .i = i == 0};
        else if (!strcmp(name, "last")) *out = (val){.k = V_BOOL, .i = i == len - 1};
        else if (!strcmp(name, "length")) *out = (val){.k = V_INT, .i = len};
        else return unsupported(r, e, "loop attribute", name);
    }
    return 0;
}

static int eval(rctx *r, const ct_expr *e, val *out);

static int get_index(rctx *r, const ct_expr *e, const val *o, const val *key, val *out) {
    *out = (val){.k = V_UNDEF};
    if (o->k == V_DICT || o->k == V_NS || o->k == V_LOOP) {
        if (key->k != V_STR) return fail_at(r, e, KV_EINVAL, "a mapping indexed by a non-string");
        char name[128];
        if (key->n >= sizeof name) return 0;
        memcpy(name, key->s, key->n);
        name[key->n] = 0;
        return get_attr(r, e, o, name, key->n, out);
    }
    if (o->k == V_LIST || o->k == V_STR) {
        if (key->k != V_INT) return fail_at(r, e, KV_EINVAL, "a list indexed by a non-integer");
        const long len = o->k == V_LIST ? o->hi - o->lo : (long)o->n;
        long i = key->i < 0 ? key->i + len : key->i;
        if (i < 0 || i >= len) return 0; /* undefined, as Jinja */
        if (o->k == V_STR) *out = str_val(o->s + i, 1, o->m ? o->m + i : NULL);
        else *out = from_json(list_item(o, i));
        /* an indexed message keeps its provenance through dict_get */
        return 0;
    }
    if (o->k == V_UNDEF) return fail_at(r, e, KV_EINVAL, "indexing an undefined value");
    return 0;
}

static int eval_slice(rctx *r, const ct_expr *e, val *out) {
    val o, lo = {.k = V_NONE}, hi = {.k = V_NONE};
    int rc = eval(r, e->a, &o);
    if (!rc && e->b) rc = eval(r, e->b, &lo);
    if (!rc && e->c) rc = eval(r, e->c, &hi);
    if (rc) return rc;
    if (o.k != V_LIST && o.k != V_STR) return fail_at(r, e, KV_EINVAL, "slicing a non-list");
    if ((lo.k != V_NONE && lo.k != V_INT) || (hi.k != V_NONE && hi.k != V_INT))
        return fail_at(r, e, KV_EINVAL, "a slice bound that is not an integer");
    const long len = o.k == V_LIST ? o.hi - o.lo : (long)o.n;
    long a = lo.k == V_INT ? lo.i : 0, b = hi.k == V_INT ? hi.i : len;
    if (a < 0) a += len;
    if (b < 0) b += len;
    a = a < 0 ? 0 : a > len ? len : a;
    b = b < a ? a : b > len ? len : b;
    if (o.k == V_STR) *out = str_val(o.s + a, (size_t)(b - a), o.m ? o.m + a : NULL);
    else *out = (val){.k = V_LIST, .j = o.j, .lo = o.lo + a, .hi = o.lo + b};
    return 0;
}

static int length_of(rctx *r, const ct_expr *e, const val *v, val *out) {
    if (v->k == V_STR) *out = (val){.k = V_INT, .i = (long)v->n};
    else if (v->k == V_LIST) *out = (val){.k = V_INT, .i = v->hi - v->lo};
    else if (v->k == V_DICT) *out = (val){.k = V_INT, .i = cJSON_GetArraySize(v->j)};
    else return fail_at(r, e, KV_EINVAL, "length of a value without one");
    return 0;
}

static int eval_filter(rctx *r, const ct_expr *e, val *out) {
    val v;
    int rc = eval(r, e->a, &v);
    if (rc) return rc;
    const char *f = e->s;
    if (e->nargs && strcmp(f, "trim")) return unsupported(r, e, "filter with arguments", f);
    if (e->nargs) return unsupported(r, e, "filter with arguments", f);
    if (!strcmp(f, "length") || !strcmp(f, "count")) return length_of(r, e, &v, out);
    if (!strcmp(f, "string")) return to_str(r, e, &v, out);
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        if (v.k != V_LIST) return fail_at(r, e, KV_EINVAL, "first/last of a non-list");
        const long len = v.hi - v.lo;
        *out = len ? from_json(list_item(&v, f[0] == 'f' ? 0 : len - 1)) : (val){.k = V_UNDEF};
        return 0;
    }
    const int is_trim = !strcmp(f, "trim"), is_up = !strcmp(f, "upper"),
              is_low = !strcmp(f, "lower");
    if (!is_trim && !is_up && !is_low) return unsupported(r, e, "filter", f);
    val s;
    if ((rc = to_str(r, e, &v, &s))) return rc;
    if (is_trim) {
        *out = strip(&s, 1, 1);
        return 0;
    }
    return change_case(r, &s, is_up, out);
}

static int eval_call(rctx *r, const ct_expr *e, val *out) {
    val args[16];
    for (int i = 0; i < e->nargs; i++) {
        int rc = eval(r, e->args[i], &args[i]);
        if (rc) return rc;
    }
    if (e->a->kind == CE_NAME) {
        const char *f = e->a->s;
        if (!strcmp(f, "raise_exception")) {
            val msg = {.k = V_STR, .s = "", .n = 0};
            if (e->nargs && to_str(r, e, &args[0], &msg)) return r->err->code;
            return kv_fail(r->err, KV_EINVAL, "%s: line %d: the template raised an exception: %.*s",
                           r->t->label, e->line, (int)(msg.n > 400 ? 400 : msg.n), msg.s);
        }
        if (!strcmp(f, "namespace")) {
            ns_obj *ns = ralloc(r, sizeof *ns);
            if (!ns) return oom(r);
            ns->n = 0;
            for (int i = 0; i < e->nargs; i++) {
                if (!e->kw[i]) return fail_at(r, e, KV_EINVAL, "namespace() takes k=v arguments");
                ns->names[ns->n] = e->kw[i];
                ns->vals[ns->n++] = args[i];
            }
            *out = (val){.k = V_NS, .ns = ns};
            return 0;
        }
        return unsupported(r, e, "function", f);
    }
    /* method */
    val o;
    int rc = eval(r, e->a->a, &o);
    if (rc) return rc;
    const char *f = e->a->s;
    if (o.k != V_STR) return unsupported(r, e, "method of a non-string", f);
    if (!strcmp(f, "strip") || !strcmp(f, "lstrip") || !strcmp(f, "rstrip")) {
        if (e->nargs) return unsupported(r, e, "method with arguments", f);
        *out = strip(&o, f[0] != 'r', f[0] != 'l');
        return 0;
    }
    if (!strcmp(f, "upper") || !strcmp(f, "lower")) return change_case(r, &o, f[0] == 'u', out);
    if (!strcmp(f, "startswith") || !strcmp(f, "endswith")) {
        if (e->nargs != 1 || args[0].k != V_STR)
            return fail_at(r, e, KV_EINVAL, "startswith/endswith take one string");
        const val *x = &args[0];
        int hit = x->n <= o.n && !memcmp(f[0] == 's' ? o.s : o.s + o.n - x->n, x->s, x->n);
        *out = (val){.k = V_BOOL, .i = hit};
        return 0;
    }
    return unsupported(r, e, "method", f);
}

static int eval_test(rctx *r, const ct_expr *e, val *out) {
    val v;
    int rc = eval(r, e->a, &v);
    if (rc) return rc;
    const char *t = e->s;
    int hit;
    if (!strcmp(t, "defined")) hit = v.k != V_UNDEF;
    else if (!strcmp(t, "undefined")) hit = v.k == V_UNDEF;
    else if (!strcmp(t, "none")) hit = v.k == V_NONE;
    else if (!strcmp(t, "string")) hit = v.k == V_STR;
    else if (!strcmp(t, "number")) hit = v.k == V_INT;
    else return unsupported(r, e, "test", t);
    *out = (val){.k = V_BOOL, .i = e->i ? !hit : hit};
    return 0;
}

static int contains(rctx *r, const ct_expr *e, const val *x, const val *in, int *hit) {
    *hit = 0;
    if (in->k == V_STR) {
        if (x->k != V_STR) return fail_at(r, e, KV_EINVAL, "'in' a string needs a string");
        if (!x->n) *hit = 1;
        for (size_t i = 0; !*hit && i + x->n <= in->n; i++) *hit = !memcmp(in->s + i, x->s, x->n);
    } else if (in->k == V_LIST) {
        for (long i = 0; !*hit && i < in->hi - in->lo; i++) {
            val it = from_json(list_item(in, i));
            *hit = equal(x, &it);
        }
    } else if (in->k == V_DICT) {
        *hit = x->k == V_STR && cJSON_GetObjectItemCaseSensitive(in->j, x->s) != NULL;
    } else {
        return fail_at(r, e, KV_EINVAL, "'in' a value that is not a string, list or mapping");
    }
    return 0;
}

static int eval_bin(rctx *r, const ct_expr *e, val *out) {
    val a, b;
    int rc = eval(r, e->a, &a);
    if (rc) return rc;
    if (e->op == OP_AND || e->op == OP_OR) { /* Python: the deciding operand */
        if (truthy(&a) == (e->op == OP_OR)) {
            *out = a;
            return 0;
        }
        return eval(r, e->b, out);
    }
    if ((rc = eval(r, e->b, &b))) return rc;
    const int an = a.k == V_INT || a.k == V_BOOL, bn = b.k == V_INT || b.k == V_BOOL;
    char what[96];
    switch (e->op) {
    case OP_EQ: *out = (val){.k = V_BOOL, .i = equal(&a, &b)}; return 0;
    case OP_NE: *out = (val){.k = V_BOOL, .i = !equal(&a, &b)}; return 0;
    case OP_IN:
    case OP_NOT_IN: {
        int hit;
        if ((rc = contains(r, e, &a, &b, &hit))) return rc;
        *out = (val){.k = V_BOOL, .i = e->op == OP_IN ? hit : !hit};
        return 0;
    }
    case OP_CONCAT: {
        val sa, sb;
        if ((rc = to_str(r, e, &a, &sa)) || (rc = to_str(r, e, &b, &sb))) return rc;
        return concat(r, &sa, &sb, out);
    }
    case OP_ADD:
        if (a.k == V_STR && b.k == V_STR) return concat(r, &a, &b, out);
        /* fall through */
    default: break;
    }
    if (e->op >= OP_LT && e->op <= OP_GE) {
        int c;
        if (an && bn) c = a.i < b.i ? -1 : a.i > b.i;
        else if (a.k == V_STR && b.k == V_STR) {
            int m = memcmp(a.s, b.s, a.n < b.n ? a.n : b.n);
            c = m ? m : a.n < b.n ? -1 : a.n > b.n;
        } else {
            snprintf(what, sizeof what, "comparing %s with %s", kind_name(a.k), kind_name(b.k));
            return fail_at(r, e, KV_EINVAL, what);
        }
        const int hit = e->op == OP_LT   ? c < 0
                        : e->op == OP_LE ? c <= 0
                        : e->op == OP_GT ? c > 0
                                         : c >= 0;
        *out = (val){.k = V_BOOL, .i = hit};
        return 0;
    }
    if (!an || !bn) {
        snprintf(what, sizeof what, "arithmetic on %s and %s", kind_name(a.k), kind_name(b.k));
        return fail_at(r, e, KV_EINVAL, what);
    }
    if ((e->op == OP_MOD || e->op == OP_FLOORDIV) && b.i == 0)
        return fail_at(r, e, KV_EINVAL, "division by zero");
    const long x = a.i, y = b.i;
    long v;
    switch (e->op) {
    case OP_ADD: v = x + y; break;
    case OP_SUB: v = x - y; break;
    case OP_MUL: v = x * y; break;
    case OP_FLOORDIV: v = x / y - ((x % y != 0) && ((x < 0) != (y < 0))); break;
    default:
        v = x % y;
        v += (v != 0 && ((v < 0) != (y < 0))) ? y : 0;
        break; /* Python's % */
    }
    *out = (val){.k = V_INT, .i = v};
    return 0;
}

static int lookup(rctx *r, const char *name, val *out) {
    for (int i = r->n_vars - 1; i >= 0; i--)
        if (!strcmp(r->vars[i].name, name)) {
            *out = r->vars[i].v;
            return 1;
        }
    *out = (val){.k = V_UNDEF};
    return 0;
}

static int eval(rctx *r, const ct_expr *e, val *out) {
    if (++r->steps > MAX_STEPS)
        return kv_fail(r->err, KV_EUNSUPPORTED, "%s: rendering takes more than %ld steps",
                       r->t->label, MAX_STEPS);
    int rc;
    val a, k;
    switch (e->kind) {
    case CE_STR: *out = str_val(e->s, e->n, NULL); return 0;
    case CE_INT: *out = (val){.k = V_INT, .i = e->i}; return 0;
    case CE_BOOL: *out = (val){.k = V_BOOL, .i = e->i}; return 0;
    case CE_NONE: *out = (val){.k = V_NONE}; return 0;
    case CE_NAME: lookup(r, e->s, out); return 0;
    case CE_ATTR:
        if ((rc = eval(r, e->a, &a))) return rc;
        if (a.k == V_UNDEF) return fail_at(r, e, KV_EINVAL, "an attribute of an undefined value");
        return get_attr(r, e, &a, e->s, e->n, out);
    case CE_INDEX:
        if ((rc = eval(r, e->a, &a)) || (rc = eval(r, e->b, &k))) return rc;
        return get_index(r, e, &a, &k, out);
    case CE_SLICE: return eval_slice(r, e, out);
    case CE_CALL: return eval_call(r, e, out);
    case CE_FILTER: return eval_filter(r, e, out);
    case CE_TEST: return eval_test(r, e, out);
    case CE_BIN: return eval_bin(r, e, out);
    case CE_NOT:
        if ((rc = eval(r, e->a, &a))) return rc;
        *out = (val){.k = V_BOOL, .i = !truthy(&a)};
        return 0;
    case CE_NEG:
        if ((rc = eval(r, e->a, &a))) return rc;
        if (a.k != V_INT && a.k != V_BOOL) return fail_at(r, e, KV_EINVAL, "'-' of a non-number");
        *out = (val){.k = V_INT, .i = -a.i};
        return 0;
    case CE_COND:
        if ((rc = eval(r, e->a, &a))) return rc;
        if (truthy(&a)) return eval(r, e->b, out);
        if (e->c) return eval(r, e->c, out);
        *out = (val){.k = V_UNDEF};
        return 0;
    }
    return fail_at(r, e, KV_EINVAL, "bad expression");
}

/* ---- statements ---- */

static int emit(rctx *r, const char *s, size_t n, const unsigned char *m) {
    if (n > KV_CHAT_RENDER_MAX_BYTES - r->len)
        return kv_fail(r->err, KV_EUNSUPPORTED, "%s: the rendered text exceeds %zu bytes",
                       r->t->label, KV_CHAT_RENDER_MAX_BYTES);
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + n + 1) cap *= 2;
        char *o = realloc(r->out, cap);
        if (o) r->out = o;
        unsigned char *mk = o ? realloc(r->mask, cap) : NULL;
        if (!o || !mk) return oom(r);
        r->mask = mk, r->cap = cap;
    }
    memcpy(r->out + r->len, s, n);
    if (m) memcpy(r->mask + r->len, m, n);
    else memset(r->mask + r->len, 0, n);
    r->len += n;
    r->out[r->len] = 0;
    return 0;
}

/* binds name in the innermost scope (replacing a binding there) */
static int bind(rctx *r, const char *name, const val *v) {
    for (int i = r->n_vars - 1; i >= r->scope; i--)
        if (!strcmp(r->vars[i].name, name)) {
            r->vars[i].v = *v;
            return 0;
        }
    if (r->n_vars == r->cap_vars) {
        int cap = r->cap_vars ? 2 * r->cap_vars : 32;
        if (cap > 65536)
            return kv_fail(r->err, KV_EUNSUPPORTED, "%s: too many variables", r->t->label);
        var *p = realloc(r->vars, sizeof(var) * (size_t)cap);
        if (!p) return oom(r);
        r->vars = p, r->cap_vars = cap;
    }
    r->vars[r->n_vars++] = (var){name, *v};
    return 0;
}

static int exec_block(rctx *r, const ct_block *b);

static int exec_stmt(rctx *r, const ct_stmt *s) {
    if (++r->steps > MAX_STEPS)
        return kv_fail(r->err, KV_EUNSUPPORTED, "%s: rendering takes more than %ld steps",
                       r->t->label, MAX_STEPS);
    val v, str;
    int rc;
    switch (s->kind) {
    case CS_TEXT: return emit(r, s->text, s->len, NULL);
    case CS_OUT:
        if ((rc = eval(r, s->e, &v)) || (rc = to_str(r, s->e, &v, &str))) return rc;
        return emit(r, str.s, str.n, str.m);
    case CS_IF:
        if ((rc = eval(r, s->e, &v))) return rc;
        return exec_block(r, truthy(&v) ? &s->body : &s->orelse);
    case CS_SET:
        if ((rc = eval(r, s->e, &v))) return rc;
        if (s->attr) {
            val o;
            lookup(r, s->name, &o);
            if (o.k != V_NS)
                return fail_at(r, s->e, KV_EINVAL, "'set x.attr' on something not a namespace()");
            for (int i = 0; i < o.ns->n; i++)
                if (!strcmp(o.ns->names[i], s->attr)) {
                    o.ns->vals[i] = v;
                    return 0;
                }
            if (o.ns->n == NS_MAX)
                return fail_at(r, s->e, KV_EUNSUPPORTED, "a namespace with too many attributes");
            o.ns->names[o.ns->n] = s->attr;
            o.ns->vals[o.ns->n++] = v;
            return 0;
        }
        return bind(r, s->name, &v);
    case CS_FOR: {
        if ((rc = eval(r, s->e, &v))) return rc;
        if (v.k == V_UNDEF || v.k == V_NONE) return 0;
        if (v.k != V_LIST)
            return fail_at(r, s->e, KV_EUNSUPPORTED, "a 'for' loop over something not a list");
        const int outer = r->scope, mark = r->n_vars;
        r->scope = mark;
        const long len = v.hi - v.lo;
        const cJSON *it = list_item(&v, 0);
        for (long i = 0; i < len && !rc; i++, it = it ? it->next : NULL) {
            const val item = from_json(it), loop = {.k = V_LOOP, .i = i, .hi = len};
            if (!(rc = bind(r, s->name, &item)) && !(rc = bind(r, "loop", &loop)))
                rc = exec_block(r, &s->body);
        }
        r->n_vars = mark;
        r->scope = outer;
        return rc;
    }
    }
    return 0;
}

static int exec_block(rctx *r, const ct_block *b) {
    for (int i = 0; i < b->n; i++) {
        int rc = exec_stmt(r, b->v[i]);
        if (rc) return rc;
    }
    return 0;
}

int kv_chat_template_render(const kv_chat_template *t, const cJSON *messages,
                            const kv_chat_vars *vars, char **text, unsigned char **assistant,
                            size_t *len, kv_error *err) {
    *text = NULL, *assistant = NULL, *len = 0;
    rctx r = {.t = t, .err = err};
    val v = from_json(messages);
    int rc = bind(&r, "messages", &v);
    if (!rc && vars->bos_token) {
        v = str_val(vars->bos_token, strlen(vars->bos_token), NULL);
        rc = bind(&r, "bos_token", &v);
    }
    if (!rc && vars->eos_token) {
        v = str_val(vars->eos_token, strlen(vars->eos_token), NULL);
        rc = bind(&r, "eos_token", &v);
    }
    v = (val){.k = V_BOOL, .i = vars->add_generation_prompt != 0};
    if (!rc) rc = bind(&r, "add_generation_prompt", &v);
    if (!rc) rc = exec_block(&r, &t->root);
    if (!rc) rc = emit(&r, "", 0, NULL); /* a buffer even for empty output */
    for (int i = 0; i < r.n_pool; i++) free(r.pool[i]);
    free(r.pool);
    free(r.vars);
    if (rc) {
        free(r.out), free(r.mask);
        return rc;
    }
    *text = r.out, *assistant = r.mask, *len = r.len;
    return 0;
}

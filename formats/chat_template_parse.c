/* Chat templates: lexer (text, tags, whitespace control, trim_blocks / lstrip_blocks as
 * transformers sets them) and the recursive-descent parser into chat_template_impl.h's tree. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/chat_template_impl.h"

typedef enum {
    TK_TEXT,
    TK_OUT_BEGIN,
    TK_OUT_END,
    TK_STMT_BEGIN,
    TK_STMT_END,
    TK_NAME,
    TK_STR,
    TK_INT,
    TK_OP,
    TK_EOF
} tk_kind;

typedef struct {
    tk_kind kind;
    const char *s; /* TEXT: into the source; NAME/STR/OP: owned, NUL-terminated */
    size_t n;
    long i;
    int line;
} token;

typedef struct {
    kv_chat_template *t;
    const char *src;
    size_t len;
    token *tk;
    int n_tk, cap_tk, at;
    int depth;
    size_t line_pos; /* line_at's cache: src[line_pos] is on line line_no */
    int line_no;
    kv_error *err;
} parser;

void *ct_alloc(kv_chat_template *t, size_t bytes) {
    if (t->n_allocs == t->cap_allocs) {
        int cap = t->cap_allocs ? 2 * t->cap_allocs : 256;
        void **p = realloc(t->allocs, sizeof(void *) * (size_t)cap);
        if (!p) return NULL;
        t->allocs = p;
        t->cap_allocs = cap;
    }
    void *m = calloc(1, bytes ? bytes : 1);
    if (m) t->allocs[t->n_allocs++] = m;
    return m;
}

/* 1-based line of src[pos]; counts on from the last query (positions mostly grow) */
static int line_at(parser *p, size_t pos) {
    if (pos > p->len) pos = p->len;
    if (pos < p->line_pos) p->line_pos = 0, p->line_no = 1;
    for (; p->line_pos < pos; p->line_pos++) p->line_no += p->src[p->line_pos] == '\n';
    return p->line_no;
}

static int oom(parser *p) {
    return kv_fail(p->err, KV_ENOMEM, "%s: out of memory parsing the template", p->t->label);
}

static int push(parser *p, tk_kind kind, const char *s, size_t n, long i, int line) {
    if (p->n_tk == p->cap_tk) {
        int cap = p->cap_tk ? 2 * p->cap_tk : 256;
        token *tk = realloc(p->tk, sizeof(token) * (size_t)cap);
        if (!tk) return oom(p);
        p->tk = tk;
        p->cap_tk = cap;
    }
    p->tk[p->n_tk++] = (token){kind, s, n, i, line};
    return 0;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* a copy of s[n] owned by the template, NUL-terminated */
static char *own(parser *p, const char *s, size_t n) {
    char *c = ct_alloc(p->t, n + 1);
    if (c) memcpy(c, s, n);
    return c;
}

/* string literal at src[*pos] (the quote); unescapes into an owned copy */
static int lex_string(parser *p, size_t *pos, int line) {
    const char q = p->src[*pos];
    char *out = ct_alloc(p->t, p->len - *pos + 1);
    if (!out) return oom(p);
    size_t n = 0, i = *pos + 1;
    for (; i < p->len && p->src[i] != q; i++) {
        char c = p->src[i];
        if (c == '\\' && i + 1 < p->len) {
            char e = p->src[++i];
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            if (e != 'n' && e != 't' && e != 'r' && e != '\\' && e != '\'' && e != '"')
                out[n++] = '\\'; /* Python keeps unknown escapes */
        }
        out[n++] = c;
    }
    if (i >= p->len)
        return kv_fail(p->err, KV_EFORMAT, "%s: line %d: unterminated string literal", p->t->label,
                       line);
    *pos = i + 1;
    return push(p, TK_STR, out, n, 0, line);
}

/* the expression tokens of one tag from *pos up to its closing "}}" / "%}"; *strip_after: 1 when
 * it ends with "-", 2 with "+", else 0 */
static int lex_tag(parser *p, size_t *pos, char close, int *strip_after) {
    size_t i = *pos;
    for (;;) {
        while (i < p->len && is_ws(p->src[i])) i++;
        const int line = line_at(p, i);
        if (i >= p->len)
            return kv_fail(p->err, KV_EFORMAT, "%s: line %d: a tag is not closed", p->t->label,
                           line);
        const char *s = p->src + i;
        const size_t left = p->len - i;
        if (left >= 3 && (s[0] == '-' || s[0] == '+') && s[1] == close && s[2] == '}') {
            *strip_after = s[0] == '-' ? 1 : 2; /* 2: "+%}" keeps the newline */
            *pos = i + 3;
            return 0;
        }
        if (left >= 2 && s[0] == close && s[1] == '}') {
            *strip_after = 0, *pos = i + 2;
            return 0;
        }
        int rc;
        if (s[0] == '\'' || s[0] == '"') {
            if ((rc = lex_string(p, &i, line))) return rc;
            continue;
        }
        if (is_alpha(s[0])) {
            size_t n = 1;
            while (n < left && (is_alpha(s[n]) || is_digit(s[n]))) n++;
            char *name = own(p, s, n);
            if (!name) return oom(p);
            if ((rc = push(p, TK_NAME, name, n, 0, line))) return rc;
            i += n;
            continue;
        }
        if (is_digit(s[0])) {
            size_t n = 0;
            long v = 0;
            while (n < left && is_digit(s[n])) {
                if (v > 100000000000L)
                    return kv_fail(p->err, KV_EUNSUPPORTED, "%s: line %d: integer too large",
                                   p->t->label, line);
                v = v * 10 + (s[n++] - '0');
            }
            if (n < left && (s[n] == '.' || is_alpha(s[n])))
                return kv_fail(p->err, KV_EUNSUPPORTED,
                               "%s: line %d: chat_template uses a float literal, which kvdistill "
                               "does not support; use --chat-template fallback",
                               p->t->label, line);
            if ((rc = push(p, TK_INT, NULL, 0, v, line))) return rc;
            i += n;
            continue;
        }
        static const char *const two[] = {"==", "!=", "<=", ">=", "//"};
        size_t n = 0;
        for (size_t k = 0; k < sizeof two / sizeof *two && !n; k++)
            if (left >= 2 && s[0] == two[k][0] && s[1] == two[k][1]) n = 2;
        if (!n && strchr("+-*/%~()[].,|:=<>{}", s[0])) n = 1;
        if (!n)
            return kv_fail(p->err, KV_EFORMAT, "%s: line %d: unexpected character '%c' in a tag",
                           p->t->label, line, s[0]);
        char *op = own(p, s, n);
        if (!op) return oom(p);
        if ((rc = push(p, TK_OP, op, n, 0, line))) return rc;
        i += n;
    }
}

static int lex(parser *p) {
    size_t pos = 0;
    int strip_next = 0, trim_newline = 0;
    while (pos <= p->len) {
        size_t q = pos;
        while (q + 1 < p->len &&
               !(p->src[q] == '{' &&
                 (p->src[q + 1] == '{' || p->src[q + 1] == '%' || p->src[q + 1] == '#')))
            q++;
        const int tag = q + 1 < p->len;
        if (!tag) q = p->len;
        size_t b = pos, e = q;
        if (strip_next)
            while (b < e && is_ws(p->src[b])) b++;
        else if (trim_newline && b < e && p->src[b] == '\n') b++;
        else if (trim_newline && b + 1 < e && p->src[b] == '\r' && p->src[b + 1] == '\n') b += 2;
        const int line_start = b == 0 || p->src[b - 1] == '\n';
        char kind = tag ? p->src[q + 1] : 0;
        const char mod = tag && q + 2 < p->len ? p->src[q + 2] : 0;
        if (tag && mod == '-') {
            while (e > b && is_ws(p->src[e - 1])) e--;
        } else if (tag && kind != '{' && mod != '+') { /* lstrip_blocks */
            size_t k = e;
            while (k > b && (p->src[k - 1] == ' ' || p->src[k - 1] == '\t')) k--;
            if ((k > b && p->src[k - 1] == '\n') || (k == b && line_start)) e = k;
        }
        int rc;
        if (e > b && (rc = push(p, TK_TEXT, p->src + b, e - b, 0, line_at(p, b)))) return rc;
        if (!tag) break;
        pos = q + 2 + (mod == '-' || mod == '+');
        if (kind == '#') {
            size_t c = pos;
            while (c + 1 < p->len && !(p->src[c] == '#' && p->src[c + 1] == '}')) c++;
            if (c + 1 >= p->len)
                return kv_fail(p->err, KV_EFORMAT, "%s: line %d: a comment is not closed",
                               p->t->label, line_at(p, q));
            strip_next = c > pos && p->src[c - 1] == '-';
            trim_newline = 1;
            pos = c + 2;
        } else {
            const int out = kind == '{';
            if ((rc = push(p, out ? TK_OUT_BEGIN : TK_STMT_BEGIN, NULL, 0, 0, line_at(p, q))))
                return rc;
            if ((rc = lex_tag(p, &pos, out ? '}' : '%', &strip_next))) return rc;
            if ((rc = push(p, out ? TK_OUT_END : TK_STMT_END, NULL, 0, 0, line_at(p, pos))))
                return rc;
            trim_newline = !out && strip_next != 2;
            strip_next = strip_next == 1;
        }
    }
    return push(p, TK_EOF, NULL, 0, 0, line_at(p, p->len));
}

/* ---- parser ---- */

static const token *peek(const parser *p) { return &p->tk[p->at]; }
static int is_op(const token *t, const char *op) { return t->kind == TK_OP && !strcmp(t->s, op); }
static int is_name(const token *t, const char *w) { return t->kind == TK_NAME && !strcmp(t->s, w); }

static const char *tk_desc(const token *t) {
    switch (t->kind) {
    case TK_TEXT: return "text";
    case TK_OUT_BEGIN: return "'{{'";
    case TK_OUT_END: return "'}}'";
    case TK_STMT_BEGIN: return "'{%'";
    case TK_STMT_END: return "'%}'";
    case TK_INT: return "a number";
    case TK_STR: return "a string";
    case TK_EOF: return "the end of the template";
    default: return t->s;
    }
}

static int syntax(parser *p, const char *expected) {
    const token *t = peek(p);
    return kv_fail(p->err, KV_EFORMAT, "%s: line %d: expected %s, found %s", p->t->label, t->line,
                   expected, tk_desc(t));
}

static int unsupported(parser *p, const char *what) {
    return kv_fail(p->err, KV_EUNSUPPORTED,
                   "%s: line %d: chat_template uses %s, which kvdistill does not support; use "
                   "--chat-template fallback",
                   p->t->label, peek(p)->line, what);
}

static int expect_op(parser *p, const char *op) {
    if (!is_op(peek(p), op)) {
        char want[16];
        snprintf(want, sizeof want, "'%s'", op);
        return syntax(p, want);
    }
    p->at++;
    return 0;
}

static ct_expr *node(parser *p, ct_expr_kind kind) {
    ct_expr *e = ct_alloc(p->t, sizeof *e);
    if (e) e->kind = kind, e->line = peek(p)->line;
    return e;
}

static int parse_expr(parser *p, ct_expr **out);

static int parse_args(parser *p, ct_expr *call) {
    /* '(' already consumed */
    ct_expr *args[16];
    const char *kw[16];
    int n = 0, rc;
    while (!is_op(peek(p), ")")) {
        if (n == 16) return unsupported(p, "a call with more than 16 arguments");
        kw[n] = NULL;
        if (peek(p)->kind == TK_NAME && is_op(&p->tk[p->at + 1], "=")) {
            kw[n] = peek(p)->s;
            p->at += 2;
        }
        if ((rc = parse_expr(p, &args[n]))) return rc;
        n++;
        if (!is_op(peek(p), ",")) break;
        p->at++;
    }
    if ((rc = expect_op(p, ")"))) return rc;
    call->nargs = n;
    call->args = ct_alloc(p->t, sizeof(ct_expr *) * (size_t)(n ? n : 1));
    call->kw = ct_alloc(p->t, sizeof(char *) * (size_t)(n ? n : 1));
    if (!call->args || !call->kw) return oom(p);
    memcpy(call->args, args, sizeof(ct_expr *) * (size_t)n);
    memcpy((void *)call->kw, kw, sizeof(char *) * (size_t)n);
    return 0;
}

static int parse_primary(parser *p, ct_expr **out) {
    const token *t = peek(p);
    ct_expr *e = NULL;
    int rc;
    if (t->kind == TK_STR) {
        /* adjacent literals concatenate */
        size_t n = 0;
        int k = p->at;
        while (p->tk[k].kind == TK_STR) n += p->tk[k++].n;
        char *s = ct_alloc(p->t, n + 1);
        if (!(e = node(p, CE_STR)) || !s) return oom(p);
        n = 0;
        while (peek(p)->kind == TK_STR) {
            memcpy(s + n, peek(p)->s, peek(p)->n);
            n += peek(p)->n;
            p->at++;
        }
        e->s = s, e->n = n;
    } else if (t->kind == TK_INT) {
        if (!(e = node(p, CE_INT))) return oom(p);
        e->i = t->i;
        p->at++;
    } else if (t->kind == TK_NAME) {
        const char *w = t->s;
        if (!strcmp(w, "true") || !strcmp(w, "True") || !strcmp(w, "false") ||
            !strcmp(w, "False")) {
            if (!(e = node(p, CE_BOOL))) return oom(p);
            e->i = w[0] == 't' || w[0] == 'T';
        } else if (!strcmp(w, "none") || !strcmp(w, "None")) {
            if (!(e = node(p, CE_NONE))) return oom(p);
        } else {
            if (!(e = node(p, CE_NAME))) return oom(p);
            e->s = w, e->n = t->n;
        }
        p->at++;
    } else if (is_op(t, "(")) {
        p->at++;
        if ((rc = parse_expr(p, &e)) || (rc = expect_op(p, ")"))) return rc;
        if (is_op(peek(p), ",")) return unsupported(p, "a tuple");
    } else if (is_op(t, "[")) {
        return unsupported(p, "a list literal");
    } else if (is_op(t, "{")) {
        return unsupported(p, "a dict literal");
    } else {
        return syntax(p, "a value");
    }
    *out = e;
    return 0;
}

static int parse_postfix(parser *p, ct_expr **out) {
    ct_expr *e = NULL;
    int rc = parse_primary(p, &e);
    if (rc) return rc;
    for (;;) {
        const token *t = peek(p);
        ct_expr *n;
        if (is_op(t, ".")) {
            p->at++;
            if (peek(p)->kind != TK_NAME) return syntax(p, "an attribute name");
            if (!(n = node(p, CE_ATTR))) return oom(p);
            n->a = e, n->s = peek(p)->s, n->n = peek(p)->n;
            p->at++;
        } else if (is_op(t, "[")) {
            p->at++;
            ct_expr *lo = NULL, *hi = NULL;
            if (!is_op(peek(p), ":") && (rc = parse_expr(p, &lo))) return rc;
            if (is_op(peek(p), ":")) {
                p->at++;
                if (!is_op(peek(p), "]") && (rc = parse_expr(p, &hi))) return rc;
                if (is_op(peek(p), ":")) return unsupported(p, "a slice with a step");
                if (!(n = node(p, CE_SLICE))) return oom(p);
                n->b = lo, n->c = hi;
            } else {
                if (!lo) return syntax(p, "an index");
                if (!(n = node(p, CE_INDEX))) return oom(p);
                n->b = lo;
            }
            if ((rc = expect_op(p, "]"))) return rc;
            n->a = e;
        } else if (is_op(t, "(")) {
            if (e->kind != CE_NAME && e->kind != CE_ATTR)
                return unsupported(p, "a call of a computed value");
            p->at++;
            if (!(n = node(p, CE_CALL))) return oom(p);
            n->a = e;
            if ((rc = parse_args(p, n))) return rc;
        } else if (is_op(t, "|")) {
            p->at++;
            if (peek(p)->kind != TK_NAME) return syntax(p, "a filter name");
            if (!(n = node(p, CE_FILTER))) return oom(p);
            n->a = e, n->s = peek(p)->s, n->n = peek(p)->n;
            p->at++;
            if (is_op(peek(p), "(")) {
                p->at++;
                if ((rc = parse_args(p, n))) return rc;
            }
        } else if (is_name(t, "is")) {
            p->at++;
            if (!(n = node(p, CE_TEST))) return oom(p);
            if (is_name(peek(p), "not")) n->i = 1, p->at++;
            const token *w = peek(p);
            if (w->kind != TK_NAME && !(w->kind == TK_NAME)) return syntax(p, "a test name");
            n->a = e, n->s = w->s, n->n = w->n;
            p->at++;
            if (is_op(peek(p), "(")) return unsupported(p, "a test with arguments");
        } else {
            break;
        }
        e = n;
    }
    *out = e;
    return 0;
}

static int parse_unary(parser *p, ct_expr **out) {
    if (is_op(peek(p), "-")) {
        p->at++;
        ct_expr *e = node(p, CE_NEG);
        if (!e) return oom(p);
        if (++p->depth > CT_MAX_DEPTH) return unsupported(p, "expressions nested too deeply");
        int rc = parse_unary(p, &e->a);
        p->depth--;
        *out = e;
        return rc;
    }
    return parse_postfix(p, out);
}

typedef int (*level_fn)(parser *, ct_expr **);

static int binary(parser *p, ct_expr **out, ct_op op, ct_expr *a, level_fn next) {
    ct_expr *e = node(p, CE_BIN);
    if (!e) return oom(p);
    e->op = op, e->a = a;
    int rc = next(p, &e->b);
    *out = e;
    return rc;
}

static int parse_mul(parser *p, ct_expr **out) {
    int rc = parse_unary(p, out);
    while (!rc) {
        const token *t = peek(p);
        if (is_op(t, "/")) return unsupported(p, "'/' (float division)");
        ct_op op = is_op(t, "*")    ? OP_MUL
                   : is_op(t, "//") ? OP_FLOORDIV
                   : is_op(t, "%")  ? OP_MOD
                                    : -1;
        if ((int)op < 0) break;
        p->at++;
        rc = binary(p, out, op, *out, parse_unary);
    }
    return rc;
}

static int parse_concat(parser *p, ct_expr **out) {
    int rc = parse_mul(p, out);
    while (!rc && is_op(peek(p), "~")) {
        p->at++;
        rc = binary(p, out, OP_CONCAT, *out, parse_mul);
    }
    return rc;
}

static int parse_add(parser *p, ct_expr **out) {
    int rc = parse_concat(p, out);
    while (!rc && (is_op(peek(p), "+") || is_op(peek(p), "-"))) {
        const ct_op op = is_op(peek(p), "+") ? OP_ADD : OP_SUB;
        p->at++;
        rc = binary(p, out, op, *out, parse_concat);
    }
    return rc;
}

static int parse_cmp(parser *p, ct_expr **out) {
    int rc = parse_add(p, out);
    while (!rc) {
        const token *t = peek(p);
        static const char *const ops[] = {"==", "!=", "<", "<=", ">", ">="};
        int op = -1;
        for (int k = 0; k < 6; k++)
            if (is_op(t, ops[k])) op = OP_EQ + k;
        if (op < 0 && is_name(t, "in")) op = OP_IN;
        if (op < 0 && is_name(t, "not") && is_name(&p->tk[p->at + 1], "in"))
            op = OP_NOT_IN, p->at++;
        if (op < 0) break;
        p->at++;
        rc = binary(p, out, (ct_op)op, *out, parse_add);
    }
    return rc;
}

static int parse_not(parser *p, ct_expr **out) {
    if (is_name(peek(p), "not")) {
        p->at++;
        ct_expr *e = node(p, CE_NOT);
        if (!e) return oom(p);
        if (++p->depth > CT_MAX_DEPTH) return unsupported(p, "expressions nested too deeply");
        int rc = parse_not(p, &e->a);
        p->depth--;
        *out = e;
        return rc;
    }
    return parse_cmp(p, out);
}

static int parse_and(parser *p, ct_expr **out) {
    int rc = parse_not(p, out);
    while (!rc && is_name(peek(p), "and")) {
        p->at++;
        rc = binary(p, out, OP_AND, *out, parse_not);
    }
    return rc;
}

static int parse_or(parser *p, ct_expr **out) {
    int rc = parse_and(p, out);
    while (!rc && is_name(peek(p), "or")) {
        p->at++;
        rc = binary(p, out, OP_OR, *out, parse_and);
    }
    return rc;
}

static int parse_expr(parser *p, ct_expr **out) {
    if (++p->depth > CT_MAX_DEPTH) return unsupported(p, "expressions nested too deeply");
    int rc = parse_or(p, out);
    if (!rc && is_name(peek(p), "if")) {
        p->at++;
        ct_expr *e = node(p, CE_COND);
        if (!e) return oom(p);
        e->b = *out;
        if (!(rc = parse_or(p, &e->a)) && is_name(peek(p), "else")) {
            p->at++;
            rc = parse_expr(p, &e->c);
        }
        *out = e;
    }
    p->depth--;
    return rc;
}

/* ---- statements ---- */

static int add_stmt(parser *p, ct_block *b, ct_stmt **out, ct_stmt_kind kind) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 8;
        ct_stmt **v = ct_alloc(p->t, sizeof(ct_stmt *) * (size_t)cap);
        if (!v) return oom(p);
        if (b->n) memcpy(v, b->v, sizeof(ct_stmt *) * (size_t)b->n);
        b->v = v, b->cap = cap; /* the old array stays in the pool */
    }
    ct_stmt *s = ct_alloc(p->t, sizeof *s);
    if (!s) return oom(p);
    s->kind = kind, s->line = peek(p)->line;
    b->v[b->n++] = s;
    *out = s;
    return 0;
}

static int end_tag(parser *p) {
    if (peek(p)->kind != TK_STMT_END) return syntax(p, "'%}'");
    p->at++;
    return 0;
}

/* parses statements into b until a {% WORD %} with WORD in stop (NULL-terminated; left
 * unconsumed at the tag's name, *stopped set) or the end of the template */
static int parse_block(parser *p, ct_block *b, const char *const *stop, const char **stopped);

static int parse_if_rest(parser *p, ct_stmt *s) {
    static const char *const stop[] = {"elif", "else", "endif", NULL};
    const char *w = NULL;
    int rc = parse_block(p, &s->body, stop, &w);
    if (rc) return rc;
    p->at++; /* the word */
    if (!strcmp(w, "elif")) {
        ct_stmt *n;
        if ((rc = add_stmt(p, &s->orelse, &n, CS_IF)) || (rc = parse_expr(p, &n->e)) ||
            (rc = end_tag(p)))
            return rc;
        return parse_if_rest(p, n);
    }
    if ((rc = end_tag(p))) return rc;
    if (!strcmp(w, "endif")) return 0;
    static const char *const stop_endif[] = {"endif", NULL};
    if ((rc = parse_block(p, &s->orelse, stop_endif, &w))) return rc;
    p->at++;
    return end_tag(p);
}

static int parse_stmt(parser *p, ct_block *b) {
    const token *t = peek(p);
    if (t->kind != TK_NAME) return syntax(p, "a statement name");
    ct_stmt *s;
    int rc;
    if (!strcmp(t->s, "if")) {
        p->at++;
        if ((rc = add_stmt(p, b, &s, CS_IF)) || (rc = parse_expr(p, &s->e)) || (rc = end_tag(p)))
            return rc;
        return parse_if_rest(p, s);
    }
    if (!strcmp(t->s, "for")) {
        p->at++;
        if ((rc = add_stmt(p, b, &s, CS_FOR))) return rc;
        if (peek(p)->kind != TK_NAME) return syntax(p, "a loop variable");
        s->name = peek(p)->s;
        p->at++;
        if (is_op(peek(p), ",")) return unsupported(p, "'for' with several loop variables");
        if (!is_name(peek(p), "in")) return syntax(p, "'in'");
        p->at++;
        if ((rc = parse_expr(p, &s->e))) return rc;
        if (is_name(peek(p), "if")) return unsupported(p, "'for ... if' (a loop filter)");
        if (is_name(peek(p), "recursive")) return unsupported(p, "'recursive' loops");
        if ((rc = end_tag(p))) return rc;
        static const char *const stop[] = {"endfor", "else", NULL};
        const char *w = NULL;
        if ((rc = parse_block(p, &s->body, stop, &w))) return rc;
        if (!strcmp(w, "else")) return unsupported(p, "'for ... else'");
        p->at++;
        return end_tag(p);
    }
    if (!strcmp(t->s, "set")) {
        p->at++;
        if ((rc = add_stmt(p, b, &s, CS_SET))) return rc;
        if (peek(p)->kind != TK_NAME) return syntax(p, "a variable name");
        s->name = peek(p)->s;
        p->at++;
        if (is_op(peek(p), ".")) {
            p->at++;
            if (peek(p)->kind != TK_NAME) return syntax(p, "an attribute name");
            s->attr = peek(p)->s;
            p->at++;
        }
        if (is_op(peek(p), ",")) return unsupported(p, "'set' of several variables");
        if (peek(p)->kind == TK_STMT_END) return unsupported(p, "block 'set' ({% endset %})");
        if ((rc = expect_op(p, "=")) || (rc = parse_expr(p, &s->e))) return rc;
        return end_tag(p);
    }
    char what[96];
    snprintf(what, sizeof what, "'%.64s'", t->s);
    return unsupported(p, what);
}

static int parse_block(parser *p, ct_block *b, const char *const *stop, const char **stopped) {
    if (++p->depth > CT_MAX_DEPTH) return unsupported(p, "blocks nested too deeply");
    int rc = 0;
    for (;;) {
        const token *t = peek(p);
        ct_stmt *s;
        if (t->kind == TK_EOF) {
            if (stop) {
                char want[32];
                snprintf(want, sizeof want, "{%% %s %%}", stop[stop[1] && stop[2] ? 2 : 0]);
                rc = syntax(p, want);
            }
            break;
        }
        if (t->kind == TK_TEXT) {
            if ((rc = add_stmt(p, b, &s, CS_TEXT))) break;
            s->text = t->s, s->len = t->n;
            p->at++;
        } else if (t->kind == TK_OUT_BEGIN) {
            p->at++;
            if ((rc = add_stmt(p, b, &s, CS_OUT)) || (rc = parse_expr(p, &s->e))) break;
            if (peek(p)->kind != TK_OUT_END) {
                rc = syntax(p, "'}}'");
                break;
            }
            p->at++;
        } else if (t->kind == TK_STMT_BEGIN) {
            p->at++;
            const token *w = peek(p);
            int hit = 0;
            for (int k = 0; stop && stop[k] && w->kind == TK_NAME; k++)
                if (!strcmp(w->s, stop[k])) hit = 1, *stopped = stop[k];
            if (hit) break;
            if ((rc = parse_stmt(p, b))) break;
        } else {
            rc = syntax(p, "text or a tag");
            break;
        }
    }
    p->depth--;
    return rc;
}

int kv_chat_template_parse(kv_chat_template **out, const char *src, size_t len, const char *label,
                           kv_error *err) {
    *out = NULL;
    if (len > KV_CHAT_TEMPLATE_MAX_BYTES)
        return kv_fail(err, KV_EUNSUPPORTED, "%s: a chat template of %zu bytes (at most %zu)",
                       label, len, KV_CHAT_TEMPLATE_MAX_BYTES);
    kv_chat_template *t = calloc(1, sizeof *t);
    if (!t) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    snprintf(t->label, sizeof t->label, "%s", label);
    parser p = {.t = t, .err = err, .line_no = 1};
    char *copy = ct_alloc(t, len + 1);
    int rc = copy ? 0 : oom(&p);
    if (!rc) {
        memcpy(copy, src, len);
        p.src = copy, p.len = len;
        rc = lex(&p);
    }
    if (!rc) rc = parse_block(&p, &t->root, NULL, NULL);
    free(p.tk);
    if (rc) {
        kv_chat_template_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void kv_chat_template_free(kv_chat_template *t) {
    if (!t) return;
    for (int i = 0; i < t->n_allocs; i++) free(t->allocs[i]);
    free(t->allocs);
    free(t);
}

/* Encoding pipeline (added tokens -> normalizer -> pre-tokenizer -> BPE), decoder chain,
 * run.c-style streaming pieces, accessors. */
#include <stdlib.h>
#include <string.h>

#include "formats/tokenizer_impl.h"

void kv_tokenizer_free(kv_tokenizer *t) {
    if (!t) return;
    if (t->piece)
        for (int i = 0; i < t->n_ids; i++) free(t->piece[i].s);
    free(t->piece);
    free(t->flags);
    kv_tok_idmap_free(&t->vocab);
    kv_tok_idmap_free(&t->all);
    kv_tok_mergemap_free(&t->merges);
    free(t->merge_new_id);
    kv_tok_mergemap_free(&t->char_pairs);
    free(t->first_char);
    free(t->last_char);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].pat.s);
        free(t->norm[i].with.s);
    }
    free(t->norm);
    free(t->pre.rep.s);
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].pat.s);
        free(t->dec[i].with.s);
    }
    free(t->dec);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].match.s);
    free(t->added);
    kv_tok_mergemap_free(&t->match_raw.edges);
    kv_tok_mergemap_free(&t->match_norm.edges);
    free(t->match_raw.term);
    free(t->match_norm.term);
    free(t);
}

int kv_tokenizer_vocab_size(const kv_tokenizer *t) { return t->n_ids; }
int kv_tokenizer_bos(const kv_tokenizer *t) { return t->bos; }
int kv_tokenizer_eos(const kv_tokenizer *t) { return t->eos; }

int kv_tokenizer_set_bos_eos(kv_tokenizer *t, int bos, int eos, kv_error *err) {
    if (bos < -1 || bos >= t->n_ids || eos < -1 || eos >= t->n_ids)
        return kv_fail(err, KV_EINVAL, "tokenizer: bos %d / eos %d outside the %d ids", bos, eos,
                       t->n_ids);
    t->bos = bos;
    t->eos = eos;
    return 0;
}

const char *kv_tokenizer_token(const kv_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids ? t->piece[id].s : NULL;
}

int kv_tokenizer_token_id(const kv_tokenizer *t, const char *token) {
    return kv_tok_idmap_get(&t->all, t->piece, token, strlen(token));
}

int kv_tokenizer_is_special(const kv_tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids && (t->flags[id] & KV_TOK_F_SPECIAL);
}

/* ---- normalizer ---- */

/* appends s[0..n) to out with every occurrence of pat replaced by with (left to right), in time
 * linear in n (memmem); KV_EUNSUPPORTED, with out left short, once out would pass limit bytes */
static int replace_all(kv_tok_buf *out, const char *s, size_t n, const kv_tok_str *pat,
                       const kv_tok_str *with, size_t limit) {
    size_t i = 0;
    if (n == 0) return kv_tok_buf_add(out, "", 0); /* out->s is non-NULL afterwards, as always */
    while (i < n) {
        const char *hit = pat->n ? memmem(s + i, n - i, pat->s, pat->n) : NULL;
        size_t keep = hit ? (size_t)(hit - (s + i)) : n - i, add = keep + (hit ? with->n : 0);
        if (add > limit || out->n > limit - add) return KV_EUNSUPPORTED;
        if (kv_tok_buf_add(out, s + i, keep)) return KV_ENOMEM;
        if (!hit) break;
        if (kv_tok_buf_add(out, with->s, with->n)) return KV_ENOMEM;
        i += keep + pat->n;
    }
    return 0;
}

int kv_tok_normalize(const kv_tokenizer *t, const char *s, size_t n, kv_tok_buf *out) {
    kv_tok_buf tmp = {0};
    const size_t cap = kv_tok_growth_cap(n);
    out->n = 0;
    int rc = kv_tok_buf_add(out, s, n);
    for (int i = 0; i < t->n_norm && !rc; i++) {
        const kv_tok_norm_step *st = &t->norm[i];
        tmp.n = 0;
        if (st->kind == KV_TOK_NORM_PREPEND) {
            if (out->n == 0) continue; /* HF prepends only to non-empty text */
            if (st->with.n > cap || out->n > cap - st->with.n) rc = KV_EUNSUPPORTED;
            if (!rc) rc = kv_tok_buf_add(&tmp, st->with.s, st->with.n);
            if (!rc) rc = kv_tok_buf_add(&tmp, out->s, out->n);
        } else {
            rc = replace_all(&tmp, out->s, out->n, &st->pat, &st->with, cap);
        }
        kv_tok_buf swap = *out;
        *out = tmp;
        tmp = swap;
    }
    free(tmp.s);
    if (!rc && !out->s) rc = kv_tok_buf_add(out, "", 0); /* always a NUL-terminated buffer */
    return rc;
}

/* ---- added tokens ---- */

int kv_tok_matcher_build(kv_tokenizer *t, kv_tok_matcher *m, int normalized) {
    size_t bytes = 0;
    m->n = m->n_nodes = 0;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].normalized == normalized) bytes += t->added[i].match.n;
    if (bytes > (size_t)INT32_MAX - 1) return KV_ENOMEM;
    m->term = malloc((bytes + 1) * sizeof *m->term);
    if (!m->term || kv_tok_mergemap_init(&m->edges, 0)) return KV_ENOMEM;
    m->term[m->n_nodes++] = -1;
    for (int i = 0; i < t->n_added; i++) {
        const kv_tok_added *a = &t->added[i];
        if (a->normalized != normalized || a->match.n == 0) continue;
        int node = 0;
        for (size_t k = 0; k < a->match.n; k++) {
            int byte = (unsigned char)a->match.s[k];
            const kv_tok_merge_slot *e = kv_tok_mergemap_get(&m->edges, node, byte);
            if (e) {
                node = e->new_id;
                continue;
            }
            int child = m->n_nodes++;
            m->term[child] = -1;
            if (kv_tok_mergemap_add(&m->edges, node, byte, 0, child)) return KV_ENOMEM;
            node = child;
        }
        /* the same text twice (two normalized tokens normalizing alike): the lower id wins */
        if (m->term[node] < 0 || a->id < t->added[m->term[node]].id) m->term[node] = i;
        m->n++;
    }
    return 0;
}

/* leftmost-longest added token in s[from..n): match [*ms, *me) widened by lstrip/rstrip */
static int find_added(const kv_tokenizer *t, const kv_tok_matcher *m, const char *s, size_t from,
                      size_t n, size_t *ms, size_t *me, int *id) {
    if (m->n == 0) return 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = from; i < n; i++) {
        int node = 0, best = -1;
        size_t best_end = i;
        for (size_t j = i; j < n; j++) {
            const kv_tok_merge_slot *e = kv_tok_mergemap_get(&m->edges, node, u[j]);
            if (!e) break;
            node = e->new_id;
            if (m->term[node] >= 0) best = m->term[node], best_end = j + 1;
        }
        if (best < 0) continue;
        const kv_tok_added *a = &t->added[best];
        size_t start = i, end = best_end, w;
        if (a->lstrip)
            while (start > from && (w = kv_tok_space_len_before(u + from, start - from)))
                start -= w;
        if (a->rstrip)
            while (end < n && (w = kv_tok_space_len(u + end, n - end))) end += w;
        *ms = start;
        *me = end;
        *id = a->id;
        return 1;
    }
    return 0;
}

/* ---- encode ---- */

typedef struct {
    const kv_tokenizer *t;
    kv_tok_scratch *scratch;
    kv_tok_ids *out;
    kv_tok_buf norm, pre;
    kv_error *err;
} enc_ctx;

static int oom(kv_error *err) { return kv_fail(err, KV_ENOMEM, "tokenizer: out of memory"); }

/* a kv_tok_normalize / replace_all failure: out of memory or past the growth cap */
static int grow_fail(kv_error *err, int rc, const char *what, size_t n) {
    if (rc != KV_EUNSUPPORTED) return oom(err);
    return kv_fail(
        err, KV_EUNSUPPORTED,
        "tokenizer: the %s chain grows %zu bytes of text past %d x + %d bytes; such a chain is not "
        "supported",
        what, n, KV_TOK_GROWTH, KV_TOK_GROWTH_SLACK);
}

/* pre-tokenizer then BPE on one normalized piece; at_start: it begins the original text */
static int encode_pretok(enc_ctx *c, const char *s, size_t n, int at_start) {
    const kv_tokenizer *t = c->t;
    if (n == 0) return 0;
    if (t->pre.kind == KV_TOK_PRE_NONE) return kv_tok_bpe_word(t, s, n, c->scratch, c->out, c->err);
    /* Metaspace: ' ' -> replacement, optional prefix, optional split before each replacement */
    const kv_tok_str *rep = &t->pre.rep;
    kv_tok_buf *b = &c->pre;
    static const kv_tok_str space = {.s = " ", .n = 1};
    b->n = 0;
    if (replace_all(b, s, n, &space, rep, SIZE_MAX)) return oom(c->err);
    int starts_rep = b->n >= rep->n && memcmp(b->s, rep->s, rep->n) == 0;
    int prepend = t->pre.scheme == KV_TOK_PREPEND_ALWAYS ||
                  (t->pre.scheme == KV_TOK_PREPEND_FIRST && at_start);
    if (prepend && !starts_rep) {
        size_t old = b->n;
        if (kv_tok_buf_add(b, rep->s, rep->n)) return oom(c->err);
        memmove(b->s + rep->n, b->s, old);
        memcpy(b->s, rep->s, rep->n);
    }
    if (!t->pre.split) return kv_tok_bpe_word(t, b->s, b->n, c->scratch, c->out, c->err);
    size_t word = 0;
    for (size_t i = 1; i <= b->n; i++) {
        int boundary = i == b->n || (b->n - i >= rep->n && memcmp(b->s + i, rep->s, rep->n) == 0);
        if (!boundary) continue;
        int rc = kv_tok_bpe_word(t, b->s + word, i - word, c->scratch, c->out, c->err);
        if (rc) return rc;
        word = i;
    }
    return 0;
}

/* raw text between added tokens: normalize, split on normalized added tokens, encode */
static int encode_section(enc_ctx *c, const char *s, size_t n, int at_start) {
    const kv_tokenizer *t = c->t;
    if (n == 0) return 0;
    if (t->n_norm == 0 && t->match_norm.n == 0) return encode_pretok(c, s, n, at_start);
    int rc = kv_tok_normalize(t, s, n, &c->norm);
    if (rc) return grow_fail(c->err, rc, "normalizer", n);
    const char *ns = c->norm.s;
    size_t nn = c->norm.n, pos = 0, ms, me;
    int id;
    if (t->match_norm.n == 0) return encode_pretok(c, ns, nn, at_start);
    /* encode_pretok reuses c->pre, not c->norm, so ns stays valid */
    while (pos < nn && find_added(t, &t->match_norm, ns, pos, nn, &ms, &me, &id)) {
        if ((rc = encode_pretok(c, ns + pos, ms - pos, at_start && pos == 0))) return rc;
        if (kv_tok_ids_push(c->out, id)) return oom(c->err);
        pos = me;
    }
    return encode_pretok(c, ns + pos, nn - pos, at_start && pos == 0);
}

int kv_tokenizer_encode(const kv_tokenizer *t, const char *text, size_t len, int add_bos, int **ids,
                        int *n_ids, kv_error *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!text && len) return kv_fail(err, KV_EINVAL, "tokenizer: NULL text");
    if (add_bos && t->bos < 0)
        return kv_fail(err, KV_EINVAL, "tokenizer: BOS requested but the tokenizer has none");
    kv_tok_ids out = {0};
    enc_ctx c = {.t = t, .scratch = kv_tok_scratch_new(), .out = &out, .err = err};
    int rc = c.scratch ? 0 : oom(err);
    if (!rc && add_bos && kv_tok_ids_push(&out, t->bos)) rc = oom(err);
    size_t pos = 0, ms, me;
    int id;
    while (!rc && pos < len) {
        if (!find_added(t, &t->match_raw, text, pos, len, &ms, &me, &id)) {
            rc = encode_section(&c, text + pos, len - pos, pos == 0);
            break;
        }
        rc = encode_section(&c, text + pos, ms - pos, pos == 0);
        if (!rc && kv_tok_ids_push(&out, id)) rc = oom(err);
        pos = me;
    }
    if (!rc && out.n > (size_t)INT32_MAX)
        rc = kv_fail(err, KV_EINVAL, "tokenizer: more than 2^31 tokens");
    if (!rc && !out.v && !(out.v = malloc(sizeof(int)))) rc = oom(err);
    kv_tok_scratch_free(c.scratch);
    free(c.norm.s);
    free(c.pre.s);
    if (rc) {
        free(out.v);
        return rc;
    }
    *ids = out.v;
    *n_ids = (int)out.n;
    return 0;
}

/* ---- decode ---- */

/* a list of token strings: token i is text.s[off[i] .. off[i+1]) */
typedef struct {
    kv_tok_buf text;
    size_t *off;
    size_t n, cap;
} tok_list;

static int list_end_token(tok_list *l) {
    if (l->n + 2 > l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        size_t *p = realloc(l->off, cap * sizeof *p);
        if (!p) return KV_ENOMEM;
        l->off = p;
        l->cap = cap;
    }
    if (l->n == 0) l->off[0] = 0;
    l->off[++l->n] = l->text.n;
    return 0;
}

static int list_push(tok_list *l, const char *s, size_t n) {
    return kv_tok_buf_add(&l->text, s, n) || list_end_token(l) ? KV_ENOMEM : 0;
}

static void list_clear(tok_list *l) {
    l->text.n = 0;
    l->n = 0;
}

/* "<0xXX>" with two hex digits (either case) */
static int byte_token(const char *s, size_t n, unsigned char *out) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = s[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0) return 0;
        v = v * 16 + d;
    }
    *out = (unsigned char)v;
    return 1;
}

static int flush_bytes(tok_list *dst, const unsigned char *bytes, size_t n) {
    if (n == 0) return 0;
    if (kv_tok_utf8_valid(bytes, n)) return list_push(dst, (const char *)bytes, n);
    for (size_t i = 0; i < n; i++)
        if (list_push(dst, "\xEF\xBF\xBD", 3)) return KV_ENOMEM; /* U+FFFD per byte, as HF */
    return 0;
}

/* one decoder step; limit: the most bytes dst may hold (KV_EUNSUPPORTED past it) */
static int apply_step(const kv_tok_dec_step *st, const tok_list *src, tok_list *dst,
                      kv_tok_buf *bytes, size_t limit) {
    list_clear(dst);
    if (st->kind == KV_TOK_DEC_FUSE) {
        if (kv_tok_buf_add(&dst->text, src->text.s ? src->text.s : "", src->text.n))
            return KV_ENOMEM;
        return list_end_token(dst);
    }
    bytes->n = 0;
    for (size_t i = 0; i < src->n; i++) {
        const char *s = src->text.s + src->off[i];
        size_t n = src->off[i + 1] - src->off[i];
        int rc = 0;
        switch (st->kind) {
        case KV_TOK_DEC_REPLACE:
            rc = replace_all(&dst->text, s, n, &st->pat, &st->with, limit);
            if (!rc) rc = list_end_token(dst);
            break;
        case KV_TOK_DEC_BYTE_FALLBACK: {
            unsigned char b;
            if (byte_token(s, n, &b)) {
                rc = kv_tok_buf_add(bytes, (const char *)&b, 1);
            } else {
                rc = flush_bytes(dst, (const unsigned char *)bytes->s, bytes->n) ||
                     list_push(dst, s, n);
                bytes->n = 0;
            }
            break;
        }
        case KV_TOK_DEC_STRIP: {
            size_t a = 0, z = n;
            for (int k = 0;
                 k < st->start && z - a >= st->pat.n && !memcmp(s + a, st->pat.s, st->pat.n); k++)
                a += st->pat.n;
            for (int k = 0; k < st->stop && z - a >= st->pat.n &&
                            !memcmp(s + z - st->pat.n, st->pat.s, st->pat.n);
                 k++)
                z -= st->pat.n;
            rc = list_push(dst, s + a, z - a);
            break;
        }
        case KV_TOK_DEC_METASPACE: {
            /* HF: replacement -> ' ', except that the first token drops all of them when prepending */
            static const kv_tok_str none = {.s = "", .n = 0}, space = {.s = " ", .n = 1};
            const kv_tok_str *with = i == 0 && st->prepend ? &none : &space;
            rc = replace_all(&dst->text, s, n, &st->pat, with,
                             SIZE_MAX); /* never grows: pat is one character */
            if (!rc) rc = list_end_token(dst);
            break;
        }
        case KV_TOK_DEC_FUSE: break;
        }
        if (rc) return rc == KV_EUNSUPPORTED ? rc : KV_ENOMEM;
    }
    if (st->kind == KV_TOK_DEC_BYTE_FALLBACK &&
        flush_bytes(dst, (const unsigned char *)bytes->s, bytes->n))
        return KV_ENOMEM;
    return 0;
}

int kv_tokenizer_decode_ex(const kv_tokenizer *t, const int *ids, int n, int skip_special,
                           char **text, size_t *text_len, kv_error *err) {
    *text = NULL;
    if (text_len) *text_len = 0;
    if (n < 0 || (n > 0 && !ids))
        return kv_fail(err, KV_EINVAL, "tokenizer: bad id list (n=%d)", n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_ids)
            return kv_fail(err, KV_EINVAL, "tokenizer: id %d at position %d outside the %d ids",
                           ids[i], i, t->n_ids);
    tok_list a = {0}, b = {0};
    kv_tok_buf bytes = {0}, out = {0};
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (skip_special && (t->flags[ids[i]] & KV_TOK_F_SPECIAL)) continue;
        rc = list_push(&a, t->piece[ids[i]].s, t->piece[ids[i]].n);
    }
    if (!t->has_decoder) {
        for (size_t i = 0; i < a.n && !rc; i++) /* HF without a decoder joins tokens with spaces */
            rc = kv_tok_buf_add(&out, i ? " " : "", i ? 1 : 0) ||
                 kv_tok_buf_add(&out, a.text.s + a.off[i], a.off[i + 1] - a.off[i]);
    } else {
        tok_list *src = &a, *dst = &b;
        const size_t limit = kv_tok_growth_cap(a.text.n);
        for (int s = 0; s < t->n_dec && !rc; s++) {
            rc = apply_step(&t->dec[s], src, dst, &bytes, limit);
            tok_list *swap = src;
            src = dst;
            dst = swap;
        }
        if (!rc) rc = kv_tok_buf_add(&out, src->text.s ? src->text.s : "", src->text.n);
    }
    if (!rc && !out.s) rc = kv_tok_buf_add(&out, "", 0);
    free(a.text.s);
    free(a.off);
    free(b.text.s);
    free(b.off);
    free(bytes.s);
    if (rc) {
        free(out.s);
        return grow_fail(err, rc, "decoder", a.text.n);
    }
    *text = out.s;
    if (text_len) *text_len = out.n;
    return 0;
}

int kv_tokenizer_decode(const kv_tokenizer *t, const int *ids, int n, char **text, kv_error *err) {
    return kv_tokenizer_decode_ex(t, ids, n, 0, text, NULL, err);
}

/* ---- run.c streaming pieces ---- */

static int hex_digit(char ch) {
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

const char *kv_tokenizer_piece_runc(const kv_tokenizer *t, int prev, int id, char *buf,
                                    size_t cap) {
    if (!buf || cap == 0) return "";
    buf[0] = 0;
    if (id < 0 || id >= t->n_ids) return buf;
    /* run.c's vocab: "▁" -> ' ', BOS/EOS exported as "\n<s>\n" / "\n</s>\n" */
    kv_tok_buf p = {0};
    static const kv_tok_str meta = {.s = "\xE2\x96\x81", .n = 3}, space = {.s = " ", .n = 1};
    int rc;
    if (id == t->bos) rc = kv_tok_buf_add(&p, "\n<s>\n", 5);
    else if (id == t->eos) rc = kv_tok_buf_add(&p, "\n</s>\n", 6);
    else rc = replace_all(&p, t->piece[id].s, t->piece[id].n, &meta, &space, SIZE_MAX);
    if (rc || !p.s) {
        free(p.s);
        return buf;
    }
    const char *s = p.s;
    size_t n = p.n;
    if (prev == t->bos && prev >= 0 && n && s[0] == ' ') s++, n--;
    /* sscanf(piece, "<0x%02hhX>") in run.c: "<0x" and one or two hex digits give a raw byte */
    char byte;
    if (n >= 4 && !memcmp(s, "<0x", 3) && hex_digit(s[3]) >= 0) {
        int v = hex_digit(s[3]);
        if (n >= 5 && hex_digit(s[4]) >= 0) v = v * 16 + hex_digit(s[4]);
        byte = (char)v;
        s = &byte;
        n = 1;
    }
    /* safe_printf: one byte that is neither printable nor whitespace prints nothing */
    if (n == 1) {
        unsigned char ch = (unsigned char)s[0];
        if (!((ch >= 0x20 && ch <= 0x7e) || (ch >= 0x09 && ch <= 0x0d))) n = 0;
    }
    if (n > cap - 1) n = cap - 1;
    memcpy(buf, s, n);
    buf[n] = 0;
    free(p.s);
    return buf;
}

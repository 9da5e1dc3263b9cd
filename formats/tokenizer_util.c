/* Hash maps, growable vectors and UTF-8 helpers for the tokenizer. */
#include <stdlib.h>
#include <string.h>

#include "formats/tokenizer_impl.h"

uint64_t kv_tok_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a 64 */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* power of two >= 2 * n_entries, at least 16 */
static size_t table_size(size_t n_entries) {
    size_t cap = 16;
    while (cap < 2 * n_entries) {
        if (cap > SIZE_MAX / 4) return 0;
        cap <<= 1;
    }
    return cap;
}

int kv_tok_idmap_init(kv_tok_idmap *m, size_t n_entries) {
    size_t cap = table_size(n_entries);
    m->slots = cap ? malloc(cap * sizeof *m->slots) : NULL;
    if (!m->slots) return KV_ENOMEM;
    memset(m->slots, 0xff, cap * sizeof *m->slots); /* -1 */
    m->mask = cap - 1;
    return 0;
}

void kv_tok_idmap_free(kv_tok_idmap *m) {
    free(m->slots);
    m->slots = NULL;
}

int kv_tok_idmap_get(const kv_tok_idmap *m, const kv_tok_str *piece, const char *s, size_t n) {
    for (size_t i = kv_tok_hash(s, n) & m->mask;; i = (i + 1) & m->mask) {
        int id = m->slots[i];
        if (id < 0) return -1;
        if (piece[id].n == n && memcmp(piece[id].s, s, n) == 0) return id;
    }
}

int kv_tok_idmap_put(kv_tok_idmap *m, const kv_tok_str *piece, int id) {
    const kv_tok_str *p = &piece[id];
    for (size_t i = kv_tok_hash(p->s, p->n) & m->mask;; i = (i + 1) & m->mask) {
        int old = m->slots[i];
        if (old < 0) {
            m->slots[i] = id;
            return -1;
        }
        if (piece[old].n == p->n && memcmp(piece[old].s, p->s, p->n) == 0) return old;
    }
}

static size_t pair_hash(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ull;
    key ^= key >> 33;
    return (size_t)key;
}

int kv_tok_mergemap_init(kv_tok_mergemap *m, size_t n_entries) {
    size_t cap = table_size(n_entries);
    m->slots = cap && cap <= SIZE_MAX / sizeof *m->slots ? malloc(cap * sizeof *m->slots) : NULL;
    if (!m->slots) return KV_ENOMEM;
    for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

void kv_tok_mergemap_free(kv_tok_mergemap *m) {
    free(m->slots);
    m->slots = NULL;
}

void kv_tok_mergemap_put(kv_tok_mergemap *m, int left, int right, int rank, int new_id) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = pair_hash(key) & m->mask;; i = (i + 1) & m->mask) {
        kv_tok_merge_slot *s = &m->slots[i];
        if (s->key == UINT64_MAX || s->key == key) {
            if (s->key == UINT64_MAX) m->count++;
            s->key = key;
            s->rank = rank;
            s->new_id = new_id;
            return;
        }
    }
}

int kv_tok_mergemap_add(kv_tok_mergemap *m, int left, int right, int rank, int new_id) {
    if (2 * (m->count + 1) > m->mask + 1) { /* keep it at most half full: double and rehash */
        kv_tok_mergemap bigger;
        if (m->mask + 1 > SIZE_MAX / 4 || kv_tok_mergemap_init(&bigger, m->mask + 1))
            return KV_ENOMEM;
        for (size_t i = 0; i <= m->mask; i++) {
            const kv_tok_merge_slot *s = &m->slots[i];
            if (s->key != UINT64_MAX)
                kv_tok_mergemap_put(&bigger, (int)(uint32_t)(s->key >> 32), (int)(uint32_t)s->key,
                                    s->rank, s->new_id);
        }
        free(m->slots);
        *m = bigger;
    }
    kv_tok_mergemap_put(m, left, right, rank, new_id);
    return 0;
}

const kv_tok_merge_slot *kv_tok_mergemap_get(const kv_tok_mergemap *m, int left, int right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = pair_hash(key) & m->mask;; i = (i + 1) & m->mask) {
        const kv_tok_merge_slot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
    }
}

int kv_tok_ids_push(kv_tok_ids *v, int id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int *p = cap > SIZE_MAX / sizeof *p ? NULL : realloc(v->v, cap * sizeof *p);
        if (!p) return KV_ENOMEM;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = id;
    return 0;
}

int kv_tok_buf_add(kv_tok_buf *b, const char *s, size_t n) {
    if (n > SIZE_MAX - b->n - 1) return KV_ENOMEM;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) {
            if (cap > SIZE_MAX / 2) return KV_ENOMEM;
            cap *= 2;
        }
        char *p = realloc(b->s, cap);
        if (!p) return KV_ENOMEM;
        b->s = p;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

/* decodes one strictly valid UTF-8 character; returns its length or 0 if invalid */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        len = 2, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return len;
}

size_t kv_tok_utf8_len(const unsigned char *s, size_t n) {
    uint32_t cp;
    size_t len = utf8_decode(s, n, &cp);
    return len ? len : 1;
}

int kv_tok_utf8_valid(const unsigned char *s, size_t n) {
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_decode(s + i, n - i, &cp);
        if (!len) return 0;
        i += len;
    }
    return 1;
}

static int is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

size_t kv_tok_space_len(const unsigned char *s, size_t n) {
    uint32_t cp;
    size_t len = n ? utf8_decode(s, n, &cp) : 0;
    return len && is_white_space(cp) ? len : 0;
}

size_t kv_tok_space_len_before(const unsigned char *s, size_t n) {
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        const unsigned char *p = s + n - back;
        if ((*p & 0xc0) == 0x80) continue;
        uint32_t cp;
        size_t len = utf8_decode(p, back, &cp);
        return len == back && is_white_space(cp) ? len : 0;
    }
    return 0;
}

/* BPE on one pre-tokenized word, as HF tokenizers' BPE model does it: characters become
 * vocab symbols (else byte-fallback "<0xXX>" symbols, else unk, fused when fuse_unk), then the
 * lowest-ranked adjacent pair is merged first (ties: leftmost), over a linked list of symbols
 * with a binary heap of candidate merges: O(n log n) per word. A long word (a whole text when
 * there is no pre-tokenizer) is merged in independent stretches cut where no token can span. */
#include <limits.h>
#include <stdlib.h>

#include "formats/tokenizer_impl.h"

typedef struct {
    int id;
    int prev, next; /* neighbour indices, -1 at the ends */
    uint32_t len; /* bytes covered; 0 once merged into its left neighbour */
} bpe_sym;

/* candidate merge: rank << 32 | position of its left symbol; smaller merges first
 * (lowest rank, then leftmost); the merged id is merge_new_id[rank] */
typedef uint64_t bpe_merge;

struct kv_tok_scratch {
    bpe_sym *sym;
    size_t cap_sym;
    bpe_merge *heap;
    size_t n_heap, cap_heap;
};

kv_tok_scratch *kv_tok_scratch_new(void) { return calloc(1, sizeof(kv_tok_scratch)); }

void kv_tok_scratch_free(kv_tok_scratch *s) {
    if (!s) return;
    free(s->sym);
    free(s->heap);
    free(s);
}

static int scratch_reserve(kv_tok_scratch *s, size_t n_sym) {
    if (n_sym > s->cap_sym) {
        bpe_sym *p = realloc(s->sym, n_sym * sizeof *p);
        if (!p) return KV_ENOMEM;
        s->sym = p;
        s->cap_sym = n_sym;
    }
    size_t n_heap = 3 * n_sym + 1; /* initial pairs + two per merge */
    if (n_heap > s->cap_heap) {
        bpe_merge *p = realloc(s->heap, n_heap * sizeof *p);
        if (!p) return KV_ENOMEM;
        s->heap = p;
        s->cap_heap = n_heap;
    }
    return 0;
}

static void heap_push(kv_tok_scratch *s, bpe_merge m) {
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (m >= s->heap[parent]) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = m;
}

static bpe_merge heap_pop(kv_tok_scratch *s) {
    bpe_merge top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && s->heap[c + 1] < s->heap[c]) c++;
        if (s->heap[c] >= last) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static void add_sym(kv_tok_scratch *s, size_t *n_sym, int id, size_t len) {
    size_t k = (*n_sym)++;
    s->sym[k] = (bpe_sym){.id = id, .prev = (int)k - 1, .next = (int)k + 1, .len = (uint32_t)len};
}

static void push_pair(const kv_tokenizer *t, kv_tok_scratch *s, int pos) {
    const bpe_sym *a = &s->sym[pos];
    if (a->next < 0) return;
    const kv_tok_merge_slot *m = kv_tok_mergemap_get(&t->merges, a->id, s->sym[a->next].id);
    if (m) heap_push(s, (uint64_t)(uint32_t)m->rank << 32 | (uint32_t)pos);
}

/* merges symbols lo..hi-1, which no merge can join to symbols outside */
static void merge_range(const kv_tokenizer *t, kv_tok_scratch *s, size_t lo, size_t hi) {
    s->sym[lo].prev = -1;
    s->sym[hi - 1].next = -1;
    s->n_heap = 0;
    for (size_t i = lo; i + 1 < hi; i++) push_pair(t, s, (int)i);
    while (s->n_heap) {
        bpe_merge top = heap_pop(s);
        int pos = (int)(uint32_t)top, new_id = t->merge_new_id[top >> 32];
        bpe_sym *cur = &s->sym[pos];
        if (cur->len == 0 || cur->next < 0) continue;
        int right_pos = cur->next;
        bpe_sym right = s->sym[right_pos];
        /* stale entry: the pair at pos no longer merges into new_id (HF's test) */
        const kv_tok_merge_slot *m = kv_tok_mergemap_get(&t->merges, cur->id, right.id);
        if (!m || m->new_id != new_id) continue;
        cur->id = new_id;
        cur->len += right.len;
        cur->next = right.next;
        s->sym[right_pos].len = 0;
        if (right.next >= 0) s->sym[right.next].prev = pos;
        if (cur->prev >= 0) push_pair(t, s, cur->prev);
        push_pair(t, s, pos);
    }
}

static uint32_t pack_char(const unsigned char *s, size_t len) {
    uint32_t v = 0;
    for (size_t i = 0; i < len; i++) v = v << 8 | s[i];
    return v;
}

int kv_tok_build_char_pairs(kv_tokenizer *t) {
    t->can_split = 0;
    for (int id = 0; id < t->n_ids; id++)
        if (!kv_tok_utf8_valid((const unsigned char *)t->piece[id].s, t->piece[id].n))
            return 0; /* no cutting: still correct, only slower */
    t->first_char = malloc((size_t)t->n_ids * sizeof *t->first_char);
    t->last_char = malloc((size_t)t->n_ids * sizeof *t->last_char);
    /* sized by the distinct pairs there are (a few thousand in a real vocab), not by the
     * vocab's bytes: the table grows as pairs arrive */
    if (!t->first_char || !t->last_char || kv_tok_mergemap_init(&t->char_pairs, 0))
        return KV_ENOMEM;
    for (int id = 0; id < t->n_ids; id++) {
        const unsigned char *p = (const unsigned char *)t->piece[id].s;
        size_t n = t->piece[id].n, len = kv_tok_utf8_len(p, n);
        uint32_t prev = pack_char(p, len);
        t->first_char[id] = prev;
        for (size_t i = len; i < n; i += len) {
            len = kv_tok_utf8_len(p + i, n - i);
            uint32_t cur = pack_char(p + i, len);
            if ((t->flags[id] & KV_TOK_F_MODEL) &&
                kv_tok_mergemap_add(&t->char_pairs, (int)prev, (int)cur, 0, 0))
                return KV_ENOMEM;
            prev = cur;
        }
        t->last_char[id] = prev;
    }
    t->can_split = 1;
    return 0;
}

/* no vocab token spans the boundary between symbols with ids a and b */
static int can_cut(const kv_tokenizer *t, int a, int b) {
    return !kv_tok_mergemap_get(&t->char_pairs, (int)t->last_char[a], (int)t->first_char[b]);
}

int kv_tok_bpe_word(const kv_tokenizer *t, const char *w, size_t n, kv_tok_scratch *s,
                    kv_tok_ids *out, kv_error *err) {
    if (n == 0) return 0;
    if (n > (size_t)INT_MAX / 4)
        return kv_fail(err, KV_EINVAL, "tokenizer: word of %zu bytes is too long", n);
    if (t->ignore_merges) {
        int id = kv_tok_idmap_get(&t->vocab, t->piece, w, n);
        if (id >= 0)
            return kv_tok_ids_push(out, id) ? kv_fail(err, KV_ENOMEM, "tokenizer: out of memory")
                                            : 0;
    }
    if (scratch_reserve(s, n))
        return kv_fail(err, KV_ENOMEM, "tokenizer: out of memory for a %zu-byte word", n);

    size_t n_sym = 0;
    int unk_pending = 0;
    size_t unk_len = 0;
    const unsigned char *u = (const unsigned char *)w;
    for (size_t i = 0; i < n;) {
        size_t clen = kv_tok_utf8_len(u + i, n - i);
        int id = kv_tok_idmap_get(&t->vocab, t->piece, w + i, clen);
        if (id >= 0) {
            if (unk_pending) add_sym(s, &n_sym, t->unk_id, unk_len);
            unk_pending = 0;
            add_sym(s, &n_sym, id, clen);
            i += clen;
            continue;
        }
        if (t->byte_fallback) {
            size_t k = 0;
            while (k < clen && t->byte_id[u[i + k]] >= 0) k++;
            if (k == clen) {
                /* as in HF, a pending unk is not flushed before byte symbols */
                for (k = 0; k < clen; k++) add_sym(s, &n_sym, t->byte_id[u[i + k]], 1);
                i += clen;
                continue;
            }
        }
        if (t->unk_id >= 0) {
            if (unk_pending && t->fuse_unk) {
                unk_len += clen;
            } else {
                if (unk_pending) add_sym(s, &n_sym, t->unk_id, unk_len);
                unk_pending = 1;
                unk_len = clen;
            }
        } /* no unk token: the character is dropped, as HF does */
        i += clen;
    }
    if (unk_pending) add_sym(s, &n_sym, t->unk_id, unk_len);
    if (n_sym == 0) return 0;
    s->sym[n_sym - 1].next = -1;

    if (t->can_split) {
        size_t lo = 0;
        for (size_t k = 1; k < n_sym; k++) {
            if (!can_cut(t, s->sym[k - 1].id, s->sym[k].id)) continue;
            merge_range(t, s, lo, k);
            lo = k;
        }
        merge_range(t, s, lo, n_sym);
    } else {
        merge_range(t, s, 0, n_sym);
    }
    for (size_t i = 0; i < n_sym; i++) {
        if (s->sym[i].len && kv_tok_ids_push(out, s->sym[i].id))
            return kv_fail(err, KV_ENOMEM, "tokenizer: out of memory");
    }
    return 0;
}

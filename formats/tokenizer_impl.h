/* Internal layout of kv_tokenizer, shared by formats/tokenizer*.c only.
 * The pipeline is a set of switches (model kind, pre-tokenizer kind, step lists) so that a
 * byte-level BPE (ByteLevel pre-tokenizer/decoder) can be added beside the SentencePiece one. */
#ifndef KV_TOKENIZER_IMPL_H
#define KV_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "formats/tokenizer.h"

typedef enum { KV_TOK_MODEL_BPE } kv_tok_model_kind;

/* pre-tokenizers; a ByteLevel kind would go here */
typedef enum { KV_TOK_PRE_NONE, KV_TOK_PRE_METASPACE } kv_tok_pre_kind;
typedef enum {
    KV_TOK_PREPEND_NEVER,
    KV_TOK_PREPEND_FIRST,
    KV_TOK_PREPEND_ALWAYS
} kv_tok_prepend_scheme;

typedef enum { KV_TOK_NORM_PREPEND, KV_TOK_NORM_REPLACE } kv_tok_norm_kind;
typedef enum {
    KV_TOK_DEC_REPLACE,
    KV_TOK_DEC_BYTE_FALLBACK,
    KV_TOK_DEC_FUSE,
    KV_TOK_DEC_STRIP,
    KV_TOK_DEC_METASPACE,
} kv_tok_dec_kind;

/* a byte string; s is NUL-terminated, n excludes the NUL */
typedef struct {
    char *s;
    size_t n;
} kv_tok_str;

typedef struct {
    kv_tok_norm_kind kind;
    kv_tok_str pat; /* REPLACE: text replaced */
    kv_tok_str with; /* PREPEND: prefix; REPLACE: replacement */
} kv_tok_norm_step;

typedef struct {
    kv_tok_dec_kind kind;
    kv_tok_str pat; /* REPLACE: text replaced; STRIP: the one character; METASPACE: replacement */
    kv_tok_str with; /* REPLACE: replacement */
    int start, stop; /* STRIP: characters removed at most at each end */
    int prepend; /* METASPACE: prepend_scheme != never */
} kv_tok_dec_step;

typedef struct {
    kv_tok_pre_kind kind;
    kv_tok_str rep; /* METASPACE: replacement character */
    kv_tok_prepend_scheme scheme;
    int split;
} kv_tok_pre;

typedef struct {
    int id;
    kv_tok_str match; /* content, normalized with the normalizer when normalized=1 */
    unsigned char lstrip, rstrip, normalized, special;
} kv_tok_added;

/* string -> id, open addressing; slots hold ids whose text is piece[id] (-1 empty) */
typedef struct {
    int *slots;
    size_t mask;
} kv_tok_idmap;

/* (left id, right id) -> (rank, merged id) */
typedef struct {
    uint64_t key; /* left << 32 | right; UINT64_MAX empty */
    int32_t rank, new_id;
} kv_tok_merge_slot;

typedef struct {
    kv_tok_merge_slot *slots;
    size_t mask;
    size_t count; /* distinct keys (kv_tok_mergemap_add keeps the table at most half full) */
} kv_tok_mergemap;

/* added tokens of one class (raw or normalized) as a byte trie: node 0 is the root, edge
 * (node, byte) -> child in `edges` (key node:byte, new_id the child), term[node] the added token
 * (index into kv_tokenizer.added) whose text ends there, -1 if none. The leftmost-longest match
 * at a position walks the text down the trie: at most KV_TOK_MAX_ADDED_BYTES steps, however
 * many added tokens share a prefix. */
typedef struct {
    kv_tok_mergemap edges;
    int *term; /* [n_nodes] */
    int n_nodes;
    int n; /* tokens in the trie */
} kv_tok_matcher;

/* longest added-token text (after normalization) accepted at load */
#define KV_TOK_MAX_ADDED_BYTES 1024

struct kv_tokenizer {
    kv_tok_model_kind model;
    int n_ids; /* dense ids 0..n_ids-1 */
    kv_tok_str *piece; /* [n_ids] token text */
    unsigned char *flags; /* [n_ids] KV_TOK_F_* */
    kv_tok_idmap vocab; /* model vocab only */
    kv_tok_idmap all; /* model vocab and added tokens */
    kv_tok_mergemap merges;
    int n_merges;
    int *merge_new_id; /* [n_merges] rank -> merged id */
    /* long words are cut where no vocab token can span: between symbols a, b when the pair
     * (last character of a, first character of b) occurs in no vocab token (can_split: the
     * vocab is valid UTF-8, so substrings align with characters) */
    int can_split;
    kv_tok_mergemap char_pairs; /* characters packed big-endian into 32 bits; rank/new_id unused */
    uint32_t *first_char, *last_char; /* [n_ids] packed first/last character of each token */
    int unk_id; /* -1 if none */
    int byte_fallback, fuse_unk, ignore_merges;
    int byte_id[256]; /* id of "<0xXX>" in the model vocab, -1 if absent */

    kv_tok_norm_step *norm;
    int n_norm;
    kv_tok_pre pre;
    kv_tok_dec_step *dec;
    int n_dec;
    int has_decoder; /* 0: tokens joined with " " (HF default) */

    kv_tok_added *added;
    int n_added;
    kv_tok_matcher match_raw, match_norm;

    int bos, eos;
};

enum { KV_TOK_F_MODEL = 1, KV_TOK_F_ADDED = 2, KV_TOK_F_SPECIAL = 4 };

/* growable int vector */
typedef struct {
    int *v;
    size_t n, cap;
} kv_tok_ids;

/* growable byte buffer, always NUL-terminated once non-empty */
typedef struct {
    char *s;
    size_t n, cap;
} kv_tok_buf;

/* per-encode scratch for BPE words */
typedef struct kv_tok_scratch kv_tok_scratch;

/* Text a normalizer or decoder chain produces from n bytes may be at most
 * KV_TOK_GROWTH * n + KV_TOK_GROWTH_SLACK bytes (see tokenizer.h); chains longer than
 * KV_TOK_MAX_STEPS steps are refused at load. */
#define KV_TOK_GROWTH       16
#define KV_TOK_GROWTH_SLACK 4096
#define KV_TOK_MAX_STEPS    256
static inline size_t kv_tok_growth_cap(size_t n) {
    return n > (SIZE_MAX - KV_TOK_GROWTH_SLACK) / KV_TOK_GROWTH
               ? SIZE_MAX
               : KV_TOK_GROWTH * n + KV_TOK_GROWTH_SLACK;
}

/* tokenizer_util.c */
uint64_t kv_tok_hash(const char *s, size_t n);
int kv_tok_idmap_init(kv_tok_idmap *m, size_t n_entries);
void kv_tok_idmap_free(kv_tok_idmap *m);
/* inserts id (text piece[id]); returns the id already holding that text, or -1 */
int kv_tok_idmap_put(kv_tok_idmap *m, const kv_tok_str *piece, int id);
int kv_tok_idmap_get(const kv_tok_idmap *m, const kv_tok_str *piece, const char *s, size_t n);
int kv_tok_mergemap_init(kv_tok_mergemap *m, size_t n_entries);
void kv_tok_mergemap_free(kv_tok_mergemap *m);
/* a later merge of the same pair replaces the earlier one (HF behaviour); the table must have
 * been sized (init) for every key put */
void kv_tok_mergemap_put(kv_tok_mergemap *m, int left, int right, int rank, int new_id);
/* the same into a table that grows as keys arrive (0 or KV_ENOMEM) */
int kv_tok_mergemap_add(kv_tok_mergemap *m, int left, int right, int rank, int new_id);
const kv_tok_merge_slot *kv_tok_mergemap_get(const kv_tok_mergemap *m, int left, int right);

int kv_tok_ids_push(kv_tok_ids *v, int id);
int kv_tok_buf_add(kv_tok_buf *b, const char *s, size_t n);

/* length of the UTF-8 character at s (1..4), 1 for an invalid byte; n > 0 */
size_t kv_tok_utf8_len(const unsigned char *s, size_t n);
/* 1 if s[0..n) is valid UTF-8 (no overlongs, surrogates or values above U+10FFFF) */
int kv_tok_utf8_valid(const unsigned char *s, size_t n);
/* Unicode White_Space character at s: its byte length, else 0 */
size_t kv_tok_space_len(const unsigned char *s, size_t n);
size_t kv_tok_space_len_before(const unsigned char *s, size_t n);

/* tokenizer_bpe.c: builds can_split/char_pairs after the vocab is loaded (0 or KV_ENOMEM) */
int kv_tok_build_char_pairs(kv_tokenizer *t);
/* appends the ids of one pre-tokenized word */
kv_tok_scratch *kv_tok_scratch_new(void);
void kv_tok_scratch_free(kv_tok_scratch *s);
int kv_tok_bpe_word(const kv_tokenizer *t, const char *w, size_t n, kv_tok_scratch *s,
                    kv_tok_ids *out, kv_error *err);

/* tokenizer.c */
/* runs the normalizer over s[0..n) into out: 0, KV_ENOMEM, or KV_EUNSUPPORTED when the text
 * would grow past kv_tok_growth_cap(n) (nothing that large is built) */
int kv_tok_normalize(const kv_tokenizer *t, const char *s, size_t n, kv_tok_buf *out);
int kv_tok_matcher_build(kv_tokenizer *t, kv_tok_matcher *m, int normalized);

#endif

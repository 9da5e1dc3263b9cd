/* Distillation data: token streams from text or pre-tokenised files, packed into sequences,
 * a held-out split, and the deterministic order in which training sequences are drawn.
 *
 * Text files: split into blocks on blank lines ("\n\n"); each block, stripped of surrounding
 * whitespace, is encoded with the model's tokenizer.json, BOS first when the tokenizer has one;
 * the blocks are concatenated in file order. Pre-tokenised files (name ending in ".bin"): raw
 * little-endian token ids, uint16 when the vocabulary has at most 65536 ids, else uint32
 * (llama2.c's pretokenised shards are uint16). Every id is checked against the vocabulary. */
#ifndef KV_DISTILL_DATA_H
#define KV_DISTILL_DATA_H

#include <stdint.h>

#include "base/error.h"
#include "formats/hfconfig.h"
#include "formats/tokenizer.h"

/* tokenizer.json of the first of dirs that has one, BOS/EOS from cfg (when set); *out = NULL
 * when none has one (only pre-tokenised data can then be read) */
int distill_tokenizer_load(kv_tokenizer **out, const char *const *dirs, int n_dirs,
                           const hf_config *cfg, kv_error *err);

typedef struct {
    int32_t *ids;
    /* [cap] the KL mask of chat data (distill_chat.h): kl_mask[i] = 1 when the logits at
     * position i predict an assistant token (ids[i + 1] is one); NULL: no chat data was read */
    uint8_t *kl_mask;
    long n, cap;
} distill_tokens;

/* appends the tokens of one file; tok may be NULL for .bin files */
int distill_tokens_load(distill_tokens *d, const char *path, const kv_tokenizer *tok, int vocab,
                        kv_error *err);
/* room for more tokens (the mask too, when there is one) */
int distill_tokens_reserve(distill_tokens *d, long more, const char *label, kv_error *err);
/* allocates kl_mask when absent, the tokens already read counting wholly (1) */
int distill_tokens_want_mask(distill_tokens *d, const char *label, kv_error *err);
/* appends ids encoded from text in memory (blocks as for text files); label names it */
int distill_tokens_from_text(distill_tokens *d, const char *text, size_t len,
                             const kv_tokenizer *tok, const char *label, kv_error *err);
void distill_tokens_free(distill_tokens *d);

typedef struct {
    int32_t *ids; /* [n, T] */
    uint8_t *kl_mask; /* [n, T] the tokens' kl_mask, NULL when they have none */
    long n;
    int T;
} distill_seqs;

/* consecutive non-overlapping sequences of T tokens (a shorter tail is dropped) of ids[from, to) */
int distill_pack(distill_seqs *s, const distill_tokens *d, long from, long to, int T,
                 kv_error *err);
/* splits all into train (the first n - n_eval) and eval (the last n_eval = round(frac * n), at
 * least 1 when frac > 0); copies */
int distill_split(distill_seqs *train, distill_seqs *eval, const distill_seqs *all, double frac,
                  kv_error *err);
void distill_seqs_free(distill_seqs *s);

/* The k-th training sequence drawn (k = 0, 1, ...): epoch e = k / n walks a permutation of the
 * n sequences made by a Fisher-Yates shuffle seeded from (seed, e). Same (seed, k) -> same
 * sequence, so a resumed run only needs k. */
typedef struct {
    long n;
    uint64_t seed;
    long epoch; /* of the cached permutation, -1 none */
    long *perm; /* [n] */
} distill_sampler;

int distill_sampler_init(distill_sampler *s, long n, uint64_t seed, kv_error *err);
long distill_sampler_get(distill_sampler *s, long k);
void distill_sampler_free(distill_sampler *s);

#endif

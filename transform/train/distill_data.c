/* Token streams, packing, held-out split, deterministic sampling. */
#include "transform/train/distill_data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

#define DATA_MAX_BYTES ((size_t)8 << 30)

int distill_tokens_reserve(distill_tokens *d, long more, const char *label, kv_error *err) {
    if (d->n + more <= d->cap) return 0;
    long cap = d->cap ? d->cap : 4096;
    while (cap < d->n + more) {
        if (cap > (long)1 << 40) return kv_fail(err, KV_ENOMEM, "%s: too many tokens", label);
        cap *= 2;
    }
    int32_t *p = realloc(d->ids, sizeof(int32_t) * (size_t)cap);
    if (!p) return kv_fail(err, KV_ENOMEM, "%s: out of memory for %ld tokens", label, cap);
    d->ids = p;
    if (d->kl_mask) {
        uint8_t *m = realloc(d->kl_mask, (size_t)cap);
        if (!m) return kv_fail(err, KV_ENOMEM, "%s: out of memory for %ld tokens", label, cap);
        d->kl_mask = m;
    }
    d->cap = cap;
    return 0;
}

int distill_tokens_want_mask(distill_tokens *d, const char *label, kv_error *err) {
    if (d->kl_mask) return 0;
    d->kl_mask = malloc(d->cap ? (size_t)d->cap : 1);
    if (!d->kl_mask) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    memset(d->kl_mask, 1, (size_t)d->n);
    return 0;
}

static int reserve(distill_tokens *d, long more, const char *label, kv_error *err) {
    return distill_tokens_reserve(d, more, label, err);
}

/* the mask of n tokens appended from text or .bin files: they count wholly */
static void mask_all(distill_tokens *d, long from, long n) {
    if (d->kl_mask) memset(d->kl_mask + from, 1, (size_t)n);
}

int distill_tokenizer_load(kv_tokenizer **out, const char *const *dirs, int n_dirs,
                           const hf_config *cfg, kv_error *err) {
    *out = NULL;
    char path[4096];
    for (int i = 0; i < n_dirs; i++) {
        int rc = kv_join(path, sizeof path, dirs[i], "tokenizer.json", err);
        if (rc) return rc;
        if (!kv_path_exists(path)) continue;
        if ((rc = kv_tokenizer_load(out, path, err))) return rc;
        const int n = kv_tokenizer_vocab_size(*out);
        if (cfg->bos_token_id >= 0 && cfg->bos_token_id < n) {
            int eos = cfg->n_eos && cfg->eos_token_ids[0] < n ? cfg->eos_token_ids[0]
                                                              : kv_tokenizer_eos(*out);
            kv_tokenizer_set_bos_eos(*out, cfg->bos_token_id, eos, NULL);
        }
        return 0;
    }
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int distill_tokens_from_text(distill_tokens *d, const char *text, size_t len,
                             const kv_tokenizer *tok, const char *label, kv_error *err) {
    if (!tok)
        return kv_fail(err, KV_EINVAL, "%s: text data needs the model's tokenizer.json", label);
    const int bos = kv_tokenizer_bos(tok);
    size_t at = 0;
    while (at < len) {
        /* block = [at, end) up to the next blank line */
        size_t end = at;
        while (end < len && !(text[end] == '\n' && end + 1 < len && text[end + 1] == '\n')) end++;
        size_t b = at, e = end;
        while (b < e && is_space(text[b])) b++;
        while (e > b && is_space(text[e - 1])) e--;
        if (e > b) {
            int *ids = NULL, n = 0;
            int rc = kv_tokenizer_encode(tok, text + b, e - b, bos >= 0, &ids, &n, err);
            if (rc) return kv_wrap(err, "%s: byte %zu", label, b), rc;
            rc = reserve(d, n, label, err);
            if (!rc) {
                for (int i = 0; i < n; i++) d->ids[d->n + i] = ids[i];
                mask_all(d, d->n, n);
                d->n += n;
            }
            free(ids);
            if (rc) return rc;
        }
        at = end;
        while (at < len && text[at] == '\n') at++;
    }
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

int distill_tokens_load(distill_tokens *d, const char *path, const kv_tokenizer *tok, int vocab,
                        kv_error *err) {
    char *buf = NULL;
    size_t len = 0;
    int rc = kv_read_file(path, &buf, &len, DATA_MAX_BYTES, err);
    if (rc) return rc;
    if (!ends_with(path, ".bin")) {
        rc = distill_tokens_from_text(d, buf, len, tok, path, err);
        free(buf);
        return rc;
    }
    const size_t width = vocab <= 65536 ? 2 : 4;
    if (len % width) {
        free(buf);
        return kv_fail(err, KV_EFORMAT, "%s: %zu bytes is not a whole number of uint%zu ids", path,
                       len, width * 8);
    }
    const long n = (long)(len / width);
    if ((rc = reserve(d, n, path, err))) {
        free(buf);
        return rc;
    }
    const unsigned char *u = (const unsigned char *)buf;
    for (long i = 0; i < n; i++) {
        uint32_t v = width == 2 ? (uint32_t)u[2 * i] | (uint32_t)u[2 * i + 1] << 8
                                : (uint32_t)u[4 * i] | (uint32_t)u[4 * i + 1] << 8 |
                                      (uint32_t)u[4 * i + 2] << 16 | (uint32_t)u[4 * i + 3] << 24;
        if (v >= (uint32_t)vocab) {
            free(buf);
            return kv_fail(err, KV_EFORMAT, "%s: token %ld is id %u, outside the vocabulary of %d",
                           path, i, v, vocab);
        }
        d->ids[d->n + i] = (int32_t)v;
    }
    mask_all(d, d->n, n);
    d->n += n;
    free(buf);
    return 0;
}

void distill_tokens_free(distill_tokens *d) {
    free(d->ids);
    free(d->kl_mask);
    memset(d, 0, sizeof *d);
}

int distill_pack(distill_seqs *s, const distill_tokens *d, long from, long to, int T,
                 kv_error *err) {
    memset(s, 0, sizeof *s);
    if (T < 2) return kv_fail(err, KV_EINVAL, "data: sequence length %d, expected >= 2", T);
    if (from < 0 || to > d->n || from > to) return kv_fail(err, KV_EINVAL, "data: bad range");
    s->T = T;
    s->n = (to - from) / T;
    s->ids = malloc(sizeof(int32_t) * (size_t)(s->n ? s->n * T : 1));
    if (!s->ids) return kv_fail(err, KV_ENOMEM, "data: out of memory for %ld sequences", s->n);
    memcpy(s->ids, d->ids + from, sizeof(int32_t) * (size_t)(s->n * T));
    if (d->kl_mask) {
        s->kl_mask = malloc((size_t)(s->n ? s->n * T : 1));
        if (!s->kl_mask) {
            distill_seqs_free(s);
            return kv_fail(err, KV_ENOMEM, "data: out of memory for %ld sequences", s->n);
        }
        memcpy(s->kl_mask, d->kl_mask + from, (size_t)(s->n * T));
    }
    return 0;
}

static int copy_range(distill_seqs *dst, const distill_seqs *src, long from, long n,
                      kv_error *err) {
    dst->T = src->T;
    dst->n = n;
    dst->ids = malloc(sizeof(int32_t) * (size_t)(n ? n * src->T : 1));
    if (!dst->ids) return kv_fail(err, KV_ENOMEM, "data: out of memory");
    memcpy(dst->ids, src->ids + from * src->T, sizeof(int32_t) * (size_t)(n * src->T));
    if (src->kl_mask) {
        dst->kl_mask = malloc((size_t)(n ? n * src->T : 1));
        if (!dst->kl_mask) return kv_fail(err, KV_ENOMEM, "data: out of memory");
        memcpy(dst->kl_mask, src->kl_mask + from * src->T, (size_t)(n * src->T));
    }
    return 0;
}

int distill_split(distill_seqs *train, distill_seqs *eval, const distill_seqs *all, double frac,
                  kv_error *err) {
    memset(train, 0, sizeof *train);
    memset(eval, 0, sizeof *eval);
    if (!(frac >= 0 && frac < 1))
        return kv_fail(err, KV_EINVAL, "data: held-out fraction %g", frac);
    long n_eval = (long)llround(frac * (double)all->n);
    if (frac > 0 && n_eval < 1) n_eval = 1;
    if (all->n - n_eval < 1)
        return kv_fail(err, KV_EINVAL, "data: %ld sequences of %d tokens leave none to train on",
                       all->n, all->T);
    int rc = copy_range(train, all, 0, all->n - n_eval, err);
    if (!rc) rc = copy_range(eval, all, all->n - n_eval, n_eval, err);
    if (rc) distill_seqs_free(train), distill_seqs_free(eval);
    return rc;
}

void distill_seqs_free(distill_seqs *s) {
    free(s->ids);
    free(s->kl_mask);
    memset(s, 0, sizeof *s);
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int distill_sampler_init(distill_sampler *s, long n, uint64_t seed, kv_error *err) {
    memset(s, 0, sizeof *s);
    if (n < 1) return kv_fail(err, KV_EINVAL, "data: no training sequences");
    s->n = n;
    s->seed = seed;
    s->epoch = -1;
    s->perm = malloc(sizeof(long) * (size_t)n);
    if (!s->perm) return kv_fail(err, KV_ENOMEM, "data: out of memory");
    return 0;
}

long distill_sampler_get(distill_sampler *s, long k) {
    const long e = k / s->n;
    if (e != s->epoch) {
        uint64_t st = s->seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(e + 1));
        for (long i = 0; i < s->n; i++) s->perm[i] = i;
        for (long i = s->n - 1; i > 0; i--) {
            long j = (long)(splitmix64(&st) % (uint64_t)(i + 1));
            long t = s->perm[i];
            s->perm[i] = s->perm[j];
            s->perm[j] = t;
        }
        s->epoch = e;
    }
    return s->perm[k % s->n];
}

void distill_sampler_free(distill_sampler *s) {
    free(s->perm);
    memset(s, 0, sizeof *s);
}

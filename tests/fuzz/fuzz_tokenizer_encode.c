/* tokenizer encoding of arbitrary bytes with each tokenizer kind the project supports
 * (tests/fuzz/tok_variants.h, built from the synthetic tokenizer at start-up): ids in range,
 * decode works, and for the Llama 1/2 kind (byte fallback) valid UTF-8 without added-token or
 * "▁" text decodes back to itself exactly */
#include "formats/tokenizer.h"
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/tok_variants.h"

static kv_tokenizer *toks[TOK_N_VARIANTS];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char *json[TOK_N_VARIANTS];
    kv_error err = {0};
    if (tok_variants(json)) abort();
    for (int v = 0; v < TOK_N_VARIANTS; v++) {
        if (kv_tokenizer_load_json(&toks[v], json[v], strlen(json[v]), tok_variant_names[v],
                                   &err)) {
            fprintf(stderr, "variant %s: %s\n", tok_variant_names[v], err.msg);
            abort();
        }
        free(json[v]);
    }
    return 0;
}

static int utf8_valid(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t len = c < 0x80                 ? 1
                     : c >= 0xc2 && c <= 0xdf ? 2
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xf0 && c <= 0xf4 ? 4
                                              : 0;
        if (!len || n - i < len) return 0;
        uint32_t v = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            v = v << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10ffff)) ||
            (v >= 0xd800 && v <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    int round_trip = utf8_valid(data, size) && !memchr(data, '<', size) &&
                     !memmem(data, size, "\xE2\x96\x81", 3);
    for (int v = 0; v < TOK_N_VARIANTS; v++) {
        kv_tokenizer *t = toks[v];
        int n = kv_tokenizer_vocab_size(t), *ids = NULL, n_ids = 0;
        kv_error err = {0};
        int rc = kv_tokenizer_encode(t, text, size, 0, &ids, &n_ids, &err);
        FUZZ_CHECK(rc == 0, "%s: encode of %zu bytes failed: %s", tok_variant_names[v], size,
                   err.msg);
        FUZZ_CHECK(ids != NULL && (size == 0 || n_ids > 0 || v == TOK_UNK), "%s: no ids",
                   tok_variant_names[v]);
        for (int k = 0; k < n_ids; k++)
            FUZZ_CHECK(ids[k] >= 0 && ids[k] < n, "%s: id %d", tok_variant_names[v], ids[k]);
        char *out = NULL;
        size_t len = 0;
        rc = kv_tokenizer_decode_ex(t, ids, n_ids, 0, &out, &len, &err);
        FUZZ_CHECK(rc == 0 && out, "%s: decode failed: %s", tok_variant_names[v], err.msg);
        if (v == TOK_SP && round_trip)
            FUZZ_CHECK(len == size && !memcmp(out, data, size),
                       "sp: round trip: %zu bytes in, %zu out", size, len);
        free(out);
        char piece[32];
        for (int k = 0; k < n_ids && k < 64; k++)
            kv_tokenizer_piece_runc(t, k ? ids[k - 1] : -1, ids[k], piece, sizeof piece);
        free(ids);
        /* with BOS, the same ids one place later */
        int *ids2 = NULL, n2 = 0;
        if (kv_tokenizer_bos(t) >= 0) {
            rc = kv_tokenizer_encode(t, text, size, 1, &ids2, &n2, &err);
            FUZZ_CHECK(rc == 0 && n2 == n_ids + 1 && ids2[0] == kv_tokenizer_bos(t), "%s: add_bos",
                       tok_variant_names[v]);
            free(ids2);
        }
    }
    return 0;
}

/* tokenizer.json loading (kv_tokenizer_load_json), then a little of everything on what loads:
 * encode a few texts, decode every id, run.c pieces, token <-> id */
#include "formats/tokenizer.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kv_tokenizer *t = NULL;
    kv_error err = {0};
    if (kv_tokenizer_load_json(&t, (const char *)data, size, "fuzz.tokenizer.json", &err)) {
        FUZZ_CHECK(t == NULL && strstr(err.msg, "fuzz.tokenizer.json"), "failed load: %s", err.msg);
        return 0;
    }
    int n = kv_tokenizer_vocab_size(t);
    FUZZ_CHECK(n >= 1, "vocab %d", n);
    int bos = kv_tokenizer_bos(t), eos = kv_tokenizer_eos(t);
    FUZZ_CHECK(bos >= -1 && bos < n && eos >= -1 && eos < n, "bos %d eos %d of %d", bos, eos, n);
    static const char *const texts[] = {"", "Hello, world! <s> caf\xC3\xA9 \xE2\x96\x81x",
                                        " a  b\n\tc\xFF\xC3", "</s><unk>aaaa"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int *ids = NULL, n_ids = 0;
        if (kv_tokenizer_encode(t, texts[i], strlen(texts[i]), bos >= 0, &ids, &n_ids, &err) == 0) {
            for (int k = 0; k < n_ids; k++)
                FUZZ_CHECK(ids[k] >= 0 && ids[k] < n, "id %d out of range", ids[k]);
            char *text = NULL;
            if (kv_tokenizer_decode(t, ids, n_ids, &text, &err) == 0)
                FUZZ_CHECK(text != NULL, "decode gave NULL");
            free(text);
        }
        free(ids);
    }
    int limit = n < 2048 ? n : 2048;
    int *all = malloc(sizeof(int) * (size_t)(limit + 1));
    if (!all) abort();
    char piece[64];
    for (int id = 0; id < limit; id++) {
        all[id] = id;
        const char *tok = kv_tokenizer_token(t, id);
        FUZZ_CHECK(tok != NULL, "id %d has no token", id);
        int back = kv_tokenizer_token_id(t, tok);
        FUZZ_CHECK(back >= 0 && !strcmp(kv_tokenizer_token(t, back), tok), "token '%s' -> %d", tok,
                   back);
        kv_tokenizer_piece_runc(t, id ? id - 1 : bos, id, piece, sizeof piece);
        FUZZ_CHECK(strlen(piece) < sizeof piece, "piece");
        (void)kv_tokenizer_is_special(t, id);
    }
    char *text = NULL;
    size_t len = 0;
    if (kv_tokenizer_decode_ex(t, all, limit, 1, &text, &len, &err) == 0)
        FUZZ_CHECK(text && strlen(text) <= len, "decode_ex");
    free(text);
    free(all);
    FUZZ_CHECK(kv_tokenizer_token(t, n) == NULL && kv_tokenizer_token(t, -1) == NULL,
               "out-of-range token");
    kv_tokenizer_free(t);
    return 0;
}

/* Synthetic SentencePiece-style BPE tokenizer.json for demo models of any vocab size.
 * Ids: 0..2 specials, 3..258 byte fallback, 259 "▁", 260..353 printable ASCII (most frequent
 * English letters first); after that level L pieces are every level L-1 piece (starting from
 * "▁" and the ASCII characters) followed by one ASCII character, in order, each with the merge
 * "prefix char" ranked by id. Any text encodes (byte fallback) and decodes back exactly. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/tokenizer.h"

#define META        "\xE2\x96\x81" /* U+2581 "▁" */
#define FIRST_PIECE 259 /* "▁" */

/* the 94 printable non-space ASCII characters, frequent English letters first */
static void build_alphabet(char out[95]) {
    static const char lead[] =
        "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,'\"!?;:-()";
    int n = 0;
    for (const char *p = lead; *p; p++) out[n++] = *p;
    for (int ch = 33; ch <= 126; ch++)
        if (!memchr(lead, ch, sizeof lead - 1)) out[n++] = (char)ch;
    out[n] = 0;
}

static cJSON *added_token(int id, const char *content) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "id", id);
    cJSON_AddStringToObject(o, "content", content);
    cJSON_AddBoolToObject(o, "single_word", 0);
    cJSON_AddBoolToObject(o, "lstrip", 0);
    cJSON_AddBoolToObject(o, "rstrip", 0);
    cJSON_AddBoolToObject(o, "normalized", 0);
    cJSON_AddBoolToObject(o, "special", 1);
    return o;
}

static cJSON *typed(const char *type) {
    cJSON *o = cJSON_CreateObject();
    if (o) cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *string_pattern(const char *s) {
    cJSON *o = cJSON_CreateObject();
    if (o) cJSON_AddStringToObject(o, "String", s);
    return o;
}

/* the fixed parts: normalizer, decoder, post-processor, added tokens */
static void add_pipeline(cJSON *root) {
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    static const char *const specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) cJSON_AddItemToArray(added, added_token(i, specials[i]));

    cJSON *norm = typed("Sequence"), *norms = cJSON_AddArrayToObject(norm, "normalizers");
    cJSON *prepend = typed("Prepend"), *replace = typed("Replace");
    cJSON_AddStringToObject(prepend, "prepend", META);
    cJSON_AddItemToObject(replace, "pattern", string_pattern(" "));
    cJSON_AddStringToObject(replace, "content", META);
    cJSON_AddItemToArray(norms, prepend);
    cJSON_AddItemToArray(norms, replace);
    cJSON_AddItemToObject(root, "normalizer", norm);
    cJSON_AddNullToObject(root, "pre_tokenizer");

    cJSON *post = typed("TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(post, "single"), *bos = cJSON_CreateObject(),
          *seq = cJSON_CreateObject();
    cJSON *bos_tok = cJSON_AddObjectToObject(bos, "SpecialToken"),
          *seq_a = cJSON_AddObjectToObject(seq, "Sequence");
    cJSON_AddStringToObject(bos_tok, "id", "<s>");
    cJSON_AddNumberToObject(bos_tok, "type_id", 0);
    cJSON_AddStringToObject(seq_a, "id", "A");
    cJSON_AddNumberToObject(seq_a, "type_id", 0);
    cJSON_AddItemToArray(single, bos);
    cJSON_AddItemToArray(single, seq);
    cJSON *sp = cJSON_AddObjectToObject(post, "special_tokens"),
          *sp_bos = cJSON_AddObjectToObject(sp, "<s>");
    cJSON_AddStringToObject(sp_bos, "id", "<s>");
    cJSON_AddItemToObject(sp_bos, "ids", cJSON_CreateIntArray((const int[]){1}, 1));
    cJSON_AddItemToObject(sp_bos, "tokens",
                          cJSON_CreateStringArray((const char *const[]){"<s>"}, 1));
    cJSON_AddItemToObject(root, "post_processor", post);

    cJSON *dec = typed("Sequence"), *decs = cJSON_AddArrayToObject(dec, "decoders");
    cJSON *d_rep = typed("Replace"), *d_strip = typed("Strip");
    cJSON_AddItemToObject(d_rep, "pattern", string_pattern(META));
    cJSON_AddStringToObject(d_rep, "content", " ");
    cJSON_AddStringToObject(d_strip, "content", " ");
    cJSON_AddNumberToObject(d_strip, "start", 1);
    cJSON_AddNumberToObject(d_strip, "stop", 0);
    cJSON_AddItemToArray(decs, d_rep);
    cJSON_AddItemToArray(decs, typed("ByteFallback"));
    cJSON_AddItemToArray(decs, typed("Fuse"));
    cJSON_AddItemToArray(decs, d_strip);
    cJSON_AddItemToObject(root, "decoder", dec);
}

/* pieces[id] for ids >= FIRST_PIECE; merges for ids past the single characters */
static int add_model(cJSON *root, int vocab_size, char **pieces) {
    char alphabet[95], name[8];
    build_alphabet(alphabet);
    const int n_alpha = (int)strlen(alphabet), first_level1 = FIRST_PIECE,
              end_level1 = FIRST_PIECE + 1 + n_alpha;
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 1);
    cJSON_AddBoolToObject(model, "byte_fallback", 1);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab"),
          *merges = cJSON_AddArrayToObject(model, "merges");
    if (!vocab || !merges) return KV_ENOMEM;
    static const char *const specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) cJSON_AddNumberToObject(vocab, specials[i], i);
    for (int b = 0; b < 256; b++) {
        snprintf(name, sizeof name, "<0x%02X>", b);
        cJSON_AddNumberToObject(vocab, name, 3 + b);
    }
    int id = FIRST_PIECE;
    pieces[id++] = strdup(META);
    for (int i = 0; i < n_alpha && id < vocab_size; i++) pieces[id++] = strndup(&alphabet[i], 1);
    /* level by level: each piece of the previous level extended by one character */
    int lo = first_level1, hi = end_level1 < vocab_size ? end_level1 : vocab_size;
    while (id < vocab_size) {
        int level_start = id;
        for (int p = lo; p < hi && id < vocab_size; p++) {
            for (int i = 0; i < n_alpha && id < vocab_size; i++) {
                if (!pieces[p]) return KV_ENOMEM;
                size_t n = strlen(pieces[p]);
                char *s = malloc(n + 2), *merge = malloc(n + 3);
                if (!s || !merge) {
                    free(s);
                    free(merge);
                    return KV_ENOMEM;
                }
                memcpy(s, pieces[p], n);
                s[n] = alphabet[i];
                s[n + 1] = 0;
                snprintf(merge, n + 3, "%s %c", pieces[p], alphabet[i]);
                pieces[id++] = s;
                cJSON *m = cJSON_CreateString(merge);
                free(merge);
                if (!m) return KV_ENOMEM;
                cJSON_AddItemToArray(merges, m);
            }
        }
        lo = level_start;
        hi = id;
    }
    for (int i = FIRST_PIECE; i < vocab_size; i++) {
        if (!pieces[i] || !cJSON_AddNumberToObject(vocab, pieces[i], i)) return KV_ENOMEM;
    }
    return 0;
}

int kv_tokenizer_write_synthetic(const char *path, int vocab_size, kv_error *err) {
    if (vocab_size < FIRST_PIECE + 1 || vocab_size > KV_TOKENIZER_SYNTH_MAX)
        return kv_fail(err, KV_EINVAL, "%s: synthetic tokenizer vocab_size %d outside [%d, %d]",
                       path, vocab_size, FIRST_PIECE + 1, KV_TOKENIZER_SYNTH_MAX);
    char **pieces = calloc((size_t)vocab_size, sizeof *pieces);
    cJSON *root = cJSON_CreateObject();
    char *json = NULL;
    int rc = pieces && root ? 0 : KV_ENOMEM;
    if (!rc) {
        add_pipeline(root);
        rc = add_model(root, vocab_size, pieces);
    }
    if (!rc && !(json = cJSON_PrintUnformatted(root))) rc = KV_ENOMEM;
    if (rc) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory building a %d-token tokenizer", path,
                     vocab_size);
    } else {
        /* self-check before writing: the file must load and hold exactly vocab_size ids */
        kv_tokenizer *t = NULL;
        rc = kv_tokenizer_load_json(&t, json, strlen(json), path, err);
        if (!rc && kv_tokenizer_vocab_size(t) != vocab_size)
            rc = kv_fail(err, KV_EINVAL, "%s: synthetic tokenizer has %d ids, not %d", path,
                         kv_tokenizer_vocab_size(t), vocab_size);
        kv_tokenizer_free(t);
        if (!rc) rc = kv_write_file_atomic(path, json, strlen(json), err);
    }
    free(json);
    cJSON_Delete(root);
    if (pieces)
        for (int i = 0; i < vocab_size; i++) free(pieces[i]);
    free(pieces);
    return rc;
}

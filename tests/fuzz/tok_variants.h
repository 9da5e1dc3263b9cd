/* The tokenizer kinds the project supports, as tokenizer.json texts built from the project's
 * own synthetic tokenizer (kv_tokenizer_write_synthetic): used by fuzz_tokenizer_encode (loaded
 * once) and written as seeds for fuzz_tokenizer_load by tests/fuzz/seeds.c.
 *   sp        Llama 1/2: Prepend + Replace normalizer, no pre-tokenizer, byte fallback,
 *             Replace/ByteFallback/Fuse/Strip decoder (the synthetic file as written)
 *   metaspace Metaspace pre-tokenizer (prepend first, split) and decoder, no normalizer
 *   unk       no byte fallback: unk (fused), ignore_merges, added tokens with lstrip/rstrip
 *             and a normalized one
 *   nodec     Metaspace (prepend always, no split), no decoder (tokens joined by spaces) */
#ifndef KV_TOK_VARIANTS_H
#define KV_TOK_VARIANTS_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/tokenizer.h"

#define TOK_VARIANT_VOCAB 600
enum { TOK_SP, TOK_METASPACE, TOK_UNK, TOK_NODEC, TOK_N_VARIANTS };
static const char *const tok_variant_names[TOK_N_VARIANTS] = {"sp", "metaspace", "unk", "nodec"};

static cJSON *tv_obj(const char *json) {
    cJSON *o = cJSON_Parse(json);
    if (!o) abort();
    return o;
}

/* the four variants as malloc'd JSON texts; 0 or -1 */
static int tok_variants(char *out[TOK_N_VARIANTS]) {
    char path[] = "/tmp/kvfuzz-tok-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    kv_error err = {0};
    char *text = NULL;
    size_t n = 0;
    int rc = kv_tokenizer_write_synthetic(path, TOK_VARIANT_VOCAB, &err);
    if (!rc) rc = kv_read_file(path, &text, &n, 1 << 24, &err);
    unlink(path);
    if (rc) {
        fprintf(stderr, "tok_variants: %s\n", err.msg);
        return -1;
    }
    for (int v = 0; v < TOK_N_VARIANTS; v++) {
        cJSON *root = cJSON_ParseWithLength(text, n);
        if (!root) abort();
        cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
        static const char meta_pre[] = "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\","
                                       "\"prepend_scheme\":\"first\",\"split\":true}";
        switch (v) {
        case TOK_SP: break;
        case TOK_METASPACE:
            cJSON_DeleteItemFromObject(root, "normalizer");
            cJSON_DeleteItemFromObject(root, "pre_tokenizer");
            cJSON_AddItemToObject(root, "pre_tokenizer", tv_obj(meta_pre));
            cJSON_DeleteItemFromObject(root, "decoder");
            cJSON_AddItemToObject(
                root, "decoder",
                tv_obj(
                    "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Metaspace\",\"replacement\":"
                    "\"\\u2581\",\"prepend_scheme\":\"first\"},{\"type\":\"ByteFallback\"},"
                    "{\"type\":\"Fuse\"}]}"));
            break;
        case TOK_UNK: {
            cJSON_ReplaceItemInObject(model, "byte_fallback", cJSON_CreateFalse());
            cJSON_DeleteItemFromObject(model, "fuse_unk");
            cJSON_AddTrueToObject(model, "fuse_unk");
            cJSON_DeleteItemFromObject(model, "ignore_merges");
            cJSON_AddTrueToObject(model, "ignore_merges");
            cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
            char tok[160];
            snprintf(tok, sizeof tok,
                     "{\"id\":%d,\"content\":\"<|sep|>\",\"lstrip\":true,\"rstrip\":true,"
                     "\"special\":true}",
                     TOK_VARIANT_VOCAB);
            cJSON_AddItemToArray(added, tv_obj(tok));
            snprintf(tok, sizeof tok,
                     "{\"id\":%d,\"content\":\" the\",\"normalized\":true,\"special\":false}",
                     TOK_VARIANT_VOCAB + 1);
            cJSON_AddItemToArray(added, tv_obj(tok));
            break;
        }
        case TOK_NODEC:
            cJSON_DeleteItemFromObject(root, "normalizer");
            cJSON_DeleteItemFromObject(root, "pre_tokenizer");
            cJSON_AddItemToObject(
                root, "pre_tokenizer",
                tv_obj("{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":"
                       "\"always\",\"split\":false}"));
            cJSON_DeleteItemFromObject(root, "decoder");
            break;
        }
        out[v] = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        if (!out[v]) abort();
    }
    free(text);
    return 0;
}

#endif

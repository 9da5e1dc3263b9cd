/* tokenizer.json tokenizer: golden ids from an independent implementation (132 rows), decode
 * round trips, run.c streaming text, added tokens, malformed files, synthetic tokenizers. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/tokenizer.h"
#include "formats/tokenizer_impl.h" /* whitebox: can_split switch */
#include "tests/check.h"

#define STORIES_TOK SHARED_DIR "/models/stories260K/tokenizer.json"
#define LLAMA2_TOK  SHARED_DIR "/models/llama2-tokenizer/tokenizer.json"

static char tmpdir[] = "/tmp/kvtok-XXXXXX";

static int ids_equal(const int *a, int na, const cJSON *arr) {
    if (cJSON_GetArraySize(arr) != na) return 0;
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++)
        if (!cJSON_IsNumber(e) || e->valueint != a[i]) return 0;
    return 1;
}

static void print_ids(const char *what, const int *ids, int n) {
    fprintf(stderr, "  %s (%d):", what, n);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

static int encode(const kv_tokenizer *t, const char *s, int **ids) {
    int n = -1;
    kv_error err = {0};
    int rc = kv_tokenizer_encode(t, s, strlen(s), 0, ids, &n, &err);
    CHECK(rc == 0, "encode '%s': %s", s, err.msg);
    return rc ? -1 : n;
}

static char *decode(const kv_tokenizer *t, const int *ids, int n) {
    char *text = NULL;
    kv_error err = {0};
    int rc = kv_tokenizer_decode(t, ids, n, &text, &err);
    CHECK(rc == 0 && text, "decode: %s", err.msg);
    return text;
}

static void test_golden_cases(const kv_tokenizer *stories, const kv_tokenizer *llama2) {
    char *data;
    size_t n;
    kv_error err = {0};
    int rc = kv_read_file(SHARED_DIR "/golden/tokenizer_cases.jsonl", &data, &n, 1 << 24, &err);
    CHECK(rc == 0, "%s", err.msg);
    if (rc) return;
    int rows = 0, matched = 0, round_trips = 0;
    for (char *line = data, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!*line) continue;
        cJSON *row = cJSON_Parse(line);
        const cJSON *tok = cJSON_GetObjectItem(row, "tokenizer"),
                    *text = cJSON_GetObjectItem(row, "text"),
                    *want = cJSON_GetObjectItem(row, "ids");
        CHECK(cJSON_IsString(tok) && cJSON_IsString(text) && cJSON_IsArray(want),
              "row %d malformed", rows);
        if (!cJSON_IsString(tok) || !cJSON_IsString(text) || !cJSON_IsArray(want)) {
            cJSON_Delete(row);
            continue;
        }
        rows++;
        const kv_tokenizer *t = strcmp(tok->valuestring, "llama2") ? stories : llama2;
        int *ids = NULL;
        int n_ids = encode(t, text->valuestring, &ids);
        int same = n_ids >= 0 && ids_equal(ids, n_ids, want);
        matched += same;
        CHECK(same, "%s row %d: ids differ for '%.60s'", tok->valuestring, rows, text->valuestring);
        if (!same && n_ids >= 0) print_ids("got", ids, n_ids);
        char *back = n_ids >= 0 ? decode(t, ids, n_ids) : NULL;
        int trip = back && !strcmp(back, text->valuestring);
        round_trips += trip;
        CHECK(trip, "%s row %d: decode gives '%.60s' for '%.60s'", tok->valuestring, rows,
              back ? back : "", text->valuestring);
        free(back);
        free(ids);
        cJSON_Delete(row);
    }
    CHECK(rows == 132, "%d golden rows, expected 132", rows);
    printf("golden tokenizer cases: %d/%d ids match, %d round trips\n", matched, rows, round_trips);
    free(data);
}

/* run.c prints every prompt token after BOS and every generated token via decode(prev, token) */
static void test_runc_stream(const kv_tokenizer *t) {
    char *data;
    size_t n;
    kv_error err = {0};
    int rc = kv_read_file(SHARED_DIR "/golden/stories260K_greedy.json", &data, &n, 1 << 20, &err);
    CHECK(rc == 0, "%s", err.msg);
    if (rc) return;
    cJSON *g = cJSON_Parse(data);
    const cJSON *prompt = cJSON_GetObjectItem(g, "prompt_ids"),
                *greedy = cJSON_GetObjectItem(g, "greedy_ids"),
                *text = cJSON_GetObjectItem(g, "text");
    CHECK(cJSON_IsArray(prompt) && cJSON_IsArray(greedy) && cJSON_IsString(text),
          "greedy golden malformed");
    if (cJSON_IsArray(prompt) && cJSON_IsArray(greedy) && cJSON_IsString(text)) {
        char out[8192] = "", buf[64];
        int prev = prompt->child->valueint;
        CHECK(prev == kv_tokenizer_bos(t), "prompt starts with BOS");
        for (int part = 0; part < 2; part++) {
            const cJSON *e = part == 0 ? prompt->child->next : greedy->child;
            for (; e; e = e->next) {
                strncat(out, kv_tokenizer_piece_runc(t, prev, e->valueint, buf, sizeof buf),
                        sizeof out - strlen(out) - 1);
                prev = e->valueint;
            }
        }
        CHECK(!strcmp(out, text->valuestring), "run.c stream differs:\n got  '%s'\n want '%s'", out,
              text->valuestring);
    }
    cJSON_Delete(g);
    free(data);

    char buf[16];
    int nl = kv_tokenizer_token_id(t, "<0x0A>"), e2 = kv_tokenizer_token_id(t, "<0xE2>");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 5, nl, buf, sizeof buf), "\n"),
          "<0x0A> prints a newline");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 5, e2, buf, sizeof buf), ""),
          "<0xE2> alone prints nothing");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 5, 99999, buf, sizeof buf), ""),
          "bad id prints nothing");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 5, 2, buf, sizeof buf), "\n</s>\n"),
          "EOS as run.c's vocab has it");
    int a = kv_tokenizer_token_id(t, "\xE2\x96\x81"
                                     "a");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 1, a, buf, sizeof buf), "a"),
          "space dropped after BOS");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 5, a, buf, sizeof buf), " a"), "space kept elsewhere");
    CHECK(!strcmp(kv_tokenizer_piece_runc(t, 5, a, buf, 2), " "), "truncated to cap-1");
}

/* added tokens are matched in the raw text; each text section is normalized on its own */
static void test_added_tokens(const kv_tokenizer *t) {
    int *hello, *mixed, *with_bos;
    int n_hello = encode(t, "Hello", &hello), n_mixed = encode(t, "<s>Hello</s>", &mixed);
    CHECK(n_mixed == n_hello + 2 && mixed[0] == 1 && mixed[n_mixed - 1] == 2 &&
              !memcmp(mixed + 1, hello, (size_t)n_hello * sizeof(int)),
          "'<s>Hello</s>' is [1] + enc('Hello') + [2]");
    int n = -1;
    kv_error err = {0};
    CHECK(kv_tokenizer_encode(t, "Hello", 5, 1, &with_bos, &n, &err) == 0 && n == n_hello + 1 &&
              with_bos[0] == 1 && !memcmp(with_bos + 1, hello, (size_t)n_hello * sizeof(int)),
          "add_bos prepends 1");
    char *s = decode(t, mixed, n_mixed);
    CHECK(s && !strcmp(s, "<s> Hello</s>"), "decode keeps special tokens: '%s'", s ? s : "");
    free(s);
    size_t len = 0;
    CHECK(kv_tokenizer_decode_ex(t, mixed, n_mixed, 1, &s, &len, &err) == 0 &&
              !strcmp(s, "Hello") && len == 5,
          "skip_special decode: '%s'", s ? s : "");
    free(s);
    /* a lone invalid byte run decodes to one U+FFFD per byte */
    int bad[] = {kv_tokenizer_token_id(t, "<0xE2>"), kv_tokenizer_token_id(t, "<0x82>"),
                 kv_tokenizer_token_id(t, "\xE2\x96\x81"
                                          "a")};
    s = decode(t, bad, 3);
    CHECK(s && !strcmp(s, "\xEF\xBF\xBD\xEF\xBF\xBD a"),
          "invalid bytes decode to U+FFFD each: '%s'", s ? s : "");
    free(s);
    int ok_bytes[] = {kv_tokenizer_token_id(t, "<0xE2>"), kv_tokenizer_token_id(t, "<0x82>"),
                      kv_tokenizer_token_id(t, "<0xAC>")};
    s = decode(t, ok_bytes, 3);
    CHECK(s && !strcmp(s, "\xE2\x82\xAC"), "byte run decodes to the euro sign");
    free(s);
    int out_of_range = 70000;
    CHECK(kv_tokenizer_decode(t, &out_of_range, 1, &s, &err) == KV_EINVAL,
          "decode rejects bad ids");
    int *empty;
    CHECK(encode(t, "", &empty) == 0 && empty, "empty text gives no ids");
    free(empty);
    /* invalid UTF-8 in the text is byte-fallback encoded and decodes to U+FFFD */
    int *inv;
    int n_inv = encode(t,
                       "a\xff"
                       "b",
                       &inv);
    s = n_inv > 0 ? decode(t, inv, n_inv) : NULL;
    CHECK(s && !strcmp(s, "a\xEF\xBF\xBD"
                          "b"),
          "invalid UTF-8 input: '%s'", s ? s : "");
    free(s);
    free(inv);
    free(hello);
    free(mixed);
    free(with_bos);
}

/* the whole validation text as one word: round trip, and cutting it into stretches where no
 * token can span gives the same ids as merging it in one piece */
static void test_long_text(kv_tokenizer *t) {
    char *data;
    size_t n;
    kv_error err = {0};
    int rc = kv_read_file(SHARED_DIR "/data/tinystories_val.txt", &data, &n, 1 << 24, &err);
    CHECK(rc == 0, "%s", err.msg);
    if (rc) return;
    int *ids = NULL, n_ids = 0;
    rc = kv_tokenizer_encode(t, data, n, 0, &ids, &n_ids, &err);
    CHECK(rc == 0 && n_ids > (int)(n / 8) && n_ids < (int)n,
          "whole validation text: rc %d, %d ids for %zu bytes", rc, n_ids, n);
    char *back = rc ? NULL : decode(t, ids, n_ids);
    CHECK(back && strlen(back) == n && !memcmp(back, data, n), "validation text round trip");
    free(back);
    CHECK(t->can_split, "fixture vocab allows cutting");
    int *whole = NULL, n_whole = 0;
    t->can_split = 0;
    rc = kv_tokenizer_encode(t, data, n, 0, &whole, &n_whole, &err);
    t->can_split = 1;
    CHECK(rc == 0 && n_whole == n_ids && !memcmp(whole, ids, (size_t)n_ids * sizeof(int)),
          "cut and uncut encodings agree (%d vs %d ids)", n_ids, n_whole);
    free(whole);
    free(ids);
    free(data);
}

/* a tokenizer.json with its normalizer moved into an equivalent Metaspace pre-tokenizer */
static void test_metaspace(const kv_tokenizer *ref) {
    char *data;
    size_t n;
    kv_error err = {0};
    if (kv_read_file(STORIES_TOK, &data, &n, 1 << 24, &err)) return;
    cJSON *root = cJSON_Parse(data);
    free(data);
    cJSON_ReplaceItemInObject(root, "normalizer", cJSON_CreateNull());
    cJSON *meta = cJSON_Parse(
        "{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\",\"prepend_scheme\":\"always\","
        "\"split\":false}");
    cJSON_ReplaceItemInObject(root, "pre_tokenizer", meta);
    char *json = cJSON_PrintUnformatted(root);
    kv_tokenizer *t = NULL;
    int rc = kv_tokenizer_load_json(&t, json, strlen(json), "metaspace.json", &err);
    CHECK(rc == 0, "metaspace variant: %s", err.msg);
    static const char *const texts[] = {"Hello world",
                                        "Once upon a time, there was a little girl named Lily.",
                                        "a  b   c",
                                        "line one\nline two",
                                        "caf\xC3\xA9 \xF0\x9F\x98\x80",
                                        "<s>x</s>y"};
    for (size_t i = 0; t && i < sizeof texts / sizeof *texts; i++) {
        int *a, *b;
        int na = encode(ref, texts[i], &a), nb = encode(t, texts[i], &b);
        CHECK(na == nb && na >= 0 && !memcmp(a, b, (size_t)na * sizeof(int)),
              "metaspace 'always' == prepend for '%s'", texts[i]);
        free(a);
        free(b);
    }
    kv_tokenizer_free(t);
    t = NULL;
    /* Metaspace decoder: replacement -> space, the first token's dropped */
    cJSON_ReplaceItemInObject(
        root, "decoder",
        cJSON_Parse("{\"type\":\"Metaspace\",\"replacement\":\"\xE2\x96\x81\","
                    "\"prepend_scheme\":\"always\",\"split\":false}"));
    free(json);
    json = cJSON_PrintUnformatted(root);
    rc = kv_tokenizer_load_json(&t, json, strlen(json), "metaspace.json", &err);
    CHECK(rc == 0, "metaspace decoder: %s", err.msg);
    if (t) {
        int *ids;
        int nids = encode(t, "Once upon a time", &ids);
        char *back = nids > 0 ? decode(t, ids, nids) : NULL;
        CHECK(back && !strcmp(back, "Once upon a time"), "metaspace decode '%s'", back ? back : "");
        free(back);
        free(ids);
    }
    kv_tokenizer_free(t);
    t = NULL;
    /* prepend_scheme "first": no "▁" after an added token; split: words start at each "▁" */
    cJSON_ReplaceItemInObject(meta, "prepend_scheme", cJSON_CreateString("first"));
    free(json);
    json = cJSON_PrintUnformatted(root);
    rc = kv_tokenizer_load_json(&t, json, strlen(json), "metaspace.json", &err);
    CHECK(rc == 0, "metaspace first: %s", err.msg);
    if (t) {
        int *ids;
        int nids = encode(t, "a</s>a", &ids);
        int want[] = {kv_tokenizer_token_id(t, "\xE2\x96\x81"
                                               "a"),
                      2, kv_tokenizer_token_id(t, "a")};
        CHECK(nids == 3 && !memcmp(ids, want, sizeof want), "prepend_scheme first");
        free(ids);
    }
    kv_tokenizer_free(t);
    free(json);
    cJSON_Delete(root);
}

static void test_small_model(void) {
    /* hand-made: no normalizer, one merge; unknown characters are dropped without unk */
    const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<u>\":3}"
                       ",\"merges\":[\"a b\"]}}";
    kv_tokenizer *t = NULL;
    kv_error err = {0};
    CHECK(kv_tokenizer_load_json(&t, json, strlen(json), "small.json", &err) == 0, "small: %s",
          err.msg);
    if (!t) return;
    CHECK(kv_tokenizer_vocab_size(t) == 4 && kv_tokenizer_bos(t) == -1 && kv_tokenizer_eos(t) == -1,
          "small sizes");
    int *ids;
    int n = encode(t, "aabcb", &ids);
    int want[] = {0, 2, 1};
    CHECK(n == 3 && !memcmp(ids, want, sizeof want), "aabcb -> a ab b");
    free(ids);
    char *s = decode(t, want, 3);
    CHECK(s && !strcmp(s, "a ab b"), "no decoder: tokens joined by spaces ('%s')", s ? s : "");
    free(s);
    int n_ids = 0;
    CHECK(kv_tokenizer_encode(t, "a", 1, 1, &ids, &n_ids, &err) == KV_EINVAL,
          "add_bos without BOS");
    kv_tokenizer_free(t);

    /* unk fused over unknown characters */
    json = "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<u>\",\"fuse_unk\":true,"
           "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<u>\":3},\"merges\":[[\"a\",\"b\"]]}}";
    CHECK(kv_tokenizer_load_json(&t, json, strlen(json), "unk.json", &err) == 0, "unk: %s",
          err.msg);
    if (!t) return;
    n = encode(t, "xyab\xC3\xA9z", &ids);
    int want_unk[] = {3, 2, 3};
    CHECK(n == 3 && !memcmp(ids, want_unk, sizeof want_unk), "unknown runs fuse into one unk");
    free(ids);
    kv_tokenizer_free(t);

    /* added tokens: lstrip/rstrip swallow the whitespace beside a raw match; a normalized token
     * is matched in the normalized text with its content normalized the same way */
    json = "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<u>\",\"fuse_unk\":true,"
           "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"<u>\":3,\"_\":4},\"merges\":[\"a b\"]},"
           "\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"_\"},"
           "\"added_tokens\":[{\"id\":5,\"content\":\"<x>\",\"lstrip\":true,\"rstrip\":true,"
           "\"normalized\":false},"
           "{\"id\":6,\"content\":\"<y>\",\"normalized\":false},{\"id\":7,\"content\":\"p "
           "q\",\"normalized\":true}]}";
    CHECK(kv_tokenizer_load_json(&t, json, strlen(json), "added.json", &err) == 0, "added: %s",
          err.msg);
    if (!t) return;
    n = encode(t, "a \t<x>  b", &ids);
    int want_strip[] = {0, 5, 1};
    CHECK(n == 3 && !memcmp(ids, want_strip, sizeof want_strip), "lstrip/rstrip");
    free(ids);
    n = encode(t, "a <y> b", &ids);
    int want_plain[] = {0, 4, 6, 4, 1};
    CHECK(n == 5 && !memcmp(ids, want_plain, sizeof want_plain),
          "no strip: spaces stay (normalized to _)");
    free(ids);
    n = encode(t, "ap qb", &ids);
    int want_norm[] = {0, 7, 1};
    CHECK(n == 3 && !memcmp(ids, want_norm, sizeof want_norm),
          "normalized added token 'p q' matches 'p_q'");
    free(ids);
    kv_tokenizer_free(t);
}

typedef struct {
    const char *json; /* single quotes stand for double quotes */
    int code;
    const char *field; /* must appear in the message */
} bad_case;

static void test_malformed(void) {
#define M(vocab, merges) "{'model':{'type':'BPE','vocab':" vocab ",'merges':" merges "}"
#define OK_MODEL         M("{'a':0,'b':1,'ab':2}", "['a b']")
    static const bad_case cases[] = {
        {"", KV_EFORMAT, "not valid JSON"},
        {"{'model':", KV_EFORMAT, "not valid JSON"},
        {"[]", KV_EFORMAT, "top level"},
        {"'model'", KV_EFORMAT, "top level"},
        {"{}", KV_EFORMAT, "'model'"},
        {"{'model':5}", KV_EFORMAT, "'model'"},
        {"{'model':{'vocab':{}}}", KV_EFORMAT, "'model.type'"},
        {"{'model':{'type':'Unigram','vocab':[]}}", KV_EUNSUPPORTED, "'model.type'"},
        {"{'model':{'type':'BPE','merges':[]}}", KV_EFORMAT, "'model.vocab'"},
        {M("[]", "[]") "}", KV_EFORMAT, "'model.vocab'"},
        {M("{}", "[]") "}", KV_EFORMAT, "'model.vocab'"},
        {M("{'a':0,'b':'1'}", "[]") "}", KV_EFORMAT, "model.vocab[\"b\"]"},
        {M("{'a':0,'b':1.5}", "[]") "}", KV_EFORMAT, "model.vocab[\"b\"]"},
        {M("{'a':-1}", "[]") "}", KV_EFORMAT, "model.vocab[\"a\"]"},
        {M("{'a':0,'b':0}", "[]") "}", KV_EFORMAT, "model.vocab[\"b\"]"},
        {M("{'a':0,'a':1}", "[]") "}", KV_EFORMAT, "model.vocab[\"a\"]"},
        {M("{'a':0,'b':2}", "[]") "}", KV_EFORMAT, "no token has id 1"},
        {M("{'':0}", "[]") "}", KV_EFORMAT, "model.vocab"},
        {"{'model':{'type':'BPE','vocab':{'a':0}}}", KV_EFORMAT, "'model.merges'"},
        {M("{'a':0}", "{}") "}", KV_EFORMAT, "'model.merges'"},
        {M("{'a':0,'b':1,'ab':2}", "['a b c']") "}", KV_EFORMAT, "'model.merges[0]'"},
        {M("{'a':0,'b':1,'ab':2}", "['ab']") "}", KV_EFORMAT, "'model.merges[0]'"},
        {M("{'a':0,'b':1,'ab':2}", "['a b',' b']") "}", KV_EFORMAT, "'model.merges[1]'"},
        {M("{'a':0,'b':1,'ab':2}", "['a x']") "}", KV_EFORMAT, "'model.merges[0]'"},
        {M("{'a':0,'b':1}", "['a b']") "}", KV_EFORMAT, "merged token"},
        {M("{'a':0,'b':1,'ab':2}", "[5]") "}", KV_EFORMAT, "'model.merges[0]'"},
        {M("{'a':0,'b':1,'ab':2}", "[['a']]") "}", KV_EFORMAT, "'model.merges[0]'"},
        {"{'model':{'type':'BPE','unk_token':'zz','vocab':{'a':0},'merges':[]}}", KV_EFORMAT,
         "'model.unk_token'"},
        {"{'model':{'type':'BPE','unk_token':3,'vocab':{'a':0},'merges':[]}}", KV_EFORMAT,
         "'model.unk_token'"},
        {"{'model':{'type':'BPE','byte_fallback':'yes','vocab':{'a':0},'merges':[]}}", KV_EFORMAT,
         "'model.byte_fallback'"},
        {"{'model':{'type':'BPE','dropout':0.1,'vocab':{'a':0},'merges':[]}}", KV_EUNSUPPORTED,
         "'model.dropout'"},
        {"{'model':{'type':'BPE','continuing_subword_prefix':'##','vocab':{'a':0},'merges':[]}}",
         KV_EUNSUPPORTED, "continuing_subword_prefix"},
        {OK_MODEL ",'added_tokens':{}}", KV_EFORMAT, "'added_tokens'"},
        {OK_MODEL ",'added_tokens':[5]}", KV_EFORMAT, "'added_tokens[0]'"},
        {OK_MODEL ",'added_tokens':[{'content':'x'}]}", KV_EFORMAT, "'added_tokens[0].id'"},
        {OK_MODEL ",'added_tokens':[{'id':3}]}", KV_EFORMAT, "'added_tokens[0].content'"},
        {OK_MODEL ",'added_tokens':[{'id':3,'content':''}]}", KV_EFORMAT,
         "'added_tokens[0].content'"},
        {OK_MODEL ",'added_tokens':[{'id':0,'content':'zz'}]}", KV_EFORMAT, "'added_tokens[0]'"},
        {OK_MODEL ",'added_tokens':[{'id':3,'content':'x'},{'id':3,'content':'y'}]}", KV_EFORMAT,
         "'added_tokens[1]'"},
        {OK_MODEL ",'added_tokens':[{'id':3,'content':'a'}]}", KV_EFORMAT, "'added_tokens'"},
        {OK_MODEL ",'added_tokens':[{'id':5,'content':'x'}]}", KV_EFORMAT, "no token has id 3"},
        {OK_MODEL ",'added_tokens':[{'id':3,'content':'x','special':1}]}", KV_EFORMAT,
         "'added_tokens[0].special'"},
        {OK_MODEL ",'added_tokens':[{'id':3,'content':'x','single_word':true}]}", KV_EUNSUPPORTED,
         "single_word"},
        {OK_MODEL ",'normalizer':5}", KV_EFORMAT, "'normalizer'"},
        {OK_MODEL ",'normalizer':{'type':'NFKC'}}", KV_EUNSUPPORTED, "'normalizer.type'"},
        {OK_MODEL ",'normalizer':{'type':'Sequence'}}", KV_EFORMAT, "'normalizer.normalizers'"},
        {OK_MODEL ",'normalizer':{'type':'Sequence','normalizers':[{'type':'Prepend'}]}}",
         KV_EFORMAT, "'normalizer.normalizers[0].prepend'"},
        {OK_MODEL ",'normalizer':{'type':'Replace','pattern':{'Regex':' '},'content':'x'}}",
         KV_EUNSUPPORTED, "'normalizer.pattern'"},
        {OK_MODEL ",'normalizer':{'type':'Replace','pattern':' ','content':'x'}}", KV_EFORMAT,
         "'normalizer.pattern'"},
        {OK_MODEL ",'normalizer':{'type':'Replace','pattern':{'String':' '}}}", KV_EFORMAT,
         "'normalizer.content'"},
        {OK_MODEL ",'pre_tokenizer':{'type':'ByteLevel'}}", KV_EUNSUPPORTED,
         "'pre_tokenizer.type'"},
        {OK_MODEL ",'pre_tokenizer':{'type':'Metaspace','replacement':'ab'}}", KV_EFORMAT,
         "'pre_tokenizer.replacement'"},
        {OK_MODEL
         ",'pre_tokenizer':{'type':'Metaspace','replacement':'_','prepend_scheme':'sometimes'}}",
         KV_EFORMAT, "'pre_tokenizer.prepend_scheme'"},
        {OK_MODEL ",'decoder':[]}", KV_EFORMAT, "'decoder'"},
        {OK_MODEL ",'decoder':{'type':'ByteLevel'}}", KV_EUNSUPPORTED, "'decoder.type'"},
        {OK_MODEL ",'decoder':{'type':'Sequence','decoders':[{'type':'Fuse'},{}]}}", KV_EFORMAT,
         "'decoder.decoders[1].type'"},
        {OK_MODEL ",'decoder':{'type':'Strip','content':'ab','start':1,'stop':0}}", KV_EFORMAT,
         "'decoder.content'"},
        {OK_MODEL ",'decoder':{'type':'Strip','content':' ','start':-1,'stop':0}}", KV_EFORMAT,
         "'decoder.start'"},
        {OK_MODEL ",'decoder':{'type':'Strip','content':' ','start':1}}", KV_EFORMAT,
         "'decoder.stop'"},
        {OK_MODEL ",'post_processor':{'type':'TemplateProcessing'}}", KV_EFORMAT,
         "'post_processor.single'"},
        {OK_MODEL ",'post_processor':{'type':'TemplateProcessing','single':[{'SpecialToken':{'id':'"
                  "<zz>'}}]}}",
         KV_EFORMAT, "'post_processor.single[0]'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char json[1024];
        snprintf(json, sizeof json, "%s", cases[i].json);
        for (char *p = json; *p; p++)
            if (*p == '\'') *p = '"';
        kv_tokenizer *t = (kv_tokenizer *)1;
        kv_error err = {0};
        int rc = kv_tokenizer_load_json(&t, json, strlen(json), "bad.json", &err);
        CHECK(rc == cases[i].code && t == NULL, "case %zu (%s): rc %d (%s), want %d", i, json, rc,
              err.msg, cases[i].code);
        CHECK(strstr(err.msg, "bad.json") && strstr(err.msg, cases[i].field),
              "case %zu (%s): message '%s' lacks '%s'", i, json, err.msg, cases[i].field);
    }
    /* the base of the cases above is valid */
    char json[256];
    snprintf(json, sizeof json, "%s}", OK_MODEL);
    for (char *p = json; *p; p++)
        if (*p == '\'') *p = '"';
    kv_tokenizer *t = NULL;
    kv_error err = {0};
    CHECK(kv_tokenizer_load_json(&t, json, strlen(json), "ok.json", &err) == 0,
          "base case loads: %s", err.msg);
    kv_tokenizer_free(t);
#undef M
#undef OK_MODEL

    CHECK(kv_tokenizer_load(&t, SHARED_DIR "/no/such/tokenizer.json", &err) == KV_EIO && !t &&
              strstr(err.msg, "no/such/tokenizer.json"),
          "missing file: %s", err.msg);
}

static uint32_t lcg(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* truncated and corrupted copies of a real file: errors or a working tokenizer, never a crash */
static void test_corrupted_files(void) {
    char *data;
    size_t n;
    kv_error err = {0};
    if (kv_read_file(STORIES_TOK, &data, &n, 1 << 24, &err)) return;
    char path[256];
    snprintf(path, sizeof path, "%s/cut.json", tmpdir);
    size_t last_brace = n;
    while (last_brace > 0 && data[last_brace - 1] != '}') last_brace--;
    int failures = 0, cuts = 0;
    for (size_t cut = 0; cut < last_brace; cut += last_brace / 37 + 1, cuts++) {
        kv_tokenizer *t = NULL;
        CHECK(kv_write_file_atomic(path, data, cut, &err) == 0, "%s", err.msg);
        int rc = kv_tokenizer_load(&t, path, &err);
        failures += rc < 0 && !t && strstr(err.msg, path) != NULL;
        kv_tokenizer_free(t);
    }
    CHECK(failures == cuts, "%d of %d truncated files rejected with the path in the message",
          failures, cuts);
    unlink(path);

    uint32_t seed = 12345;
    int loaded = 0, rejected = 0;
    char *copy = malloc(n);
    for (int trial = 0; trial < 300; trial++) {
        memcpy(copy, data, n);
        for (int k = 0; k < 1 + trial % 3; k++) copy[lcg(&seed) % n] = (char)(lcg(&seed) & 0xff);
        kv_tokenizer *t = NULL;
        int rc = kv_tokenizer_load_json(&t, copy, n, "flip.json", &err);
        if (rc == 0) {
            loaded++;
            int *ids = NULL, n_ids = 0;
            char *text = NULL;
            if (kv_tokenizer_encode(t, "Hello, world! <s> caf\xC3\xA9", 21, 1, &ids, &n_ids,
                                    &err) == 0)
                kv_tokenizer_decode(t, ids, n_ids, &text, &err);
            free(ids);
            free(text);
            kv_tokenizer_free(t);
        } else {
            rejected += t == NULL && strstr(err.msg, "flip.json") != NULL;
        }
    }
    CHECK(loaded + rejected == 300, "corrupted copies: %d loaded, %d rejected cleanly of 300",
          loaded, rejected);
    free(copy);
    free(data);
}

static void test_synthetic(int vocab_size) {
    char path[256], path2[256];
    kv_error err = {0};
    snprintf(path, sizeof path, "%s/synth%d.json", tmpdir, vocab_size);
    snprintf(path2, sizeof path2, "%s/synth%d-again.json", tmpdir, vocab_size);
    int rc = kv_tokenizer_write_synthetic(path, vocab_size, &err);
    CHECK(rc == 0, "write synthetic %d: %s", vocab_size, err.msg);
    CHECK(kv_tokenizer_write_synthetic(path2, vocab_size, &err) == 0, "%s", err.msg);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    kv_read_file(path, &a, &na, 1 << 26, &err);
    kv_read_file(path2, &b, &nb, 1 << 26, &err);
    CHECK(a && b && na == nb && !memcmp(a, b, na), "synthetic %d is deterministic", vocab_size);
    free(a);
    free(b);
    unlink(path2);
    kv_tokenizer *t = NULL;
    rc = rc ? rc : kv_tokenizer_load(&t, path, &err);
    CHECK(rc == 0, "load synthetic %d: %s", vocab_size, err.msg);
    unlink(path);
    if (rc) return;
    CHECK(kv_tokenizer_vocab_size(t) == vocab_size, "synthetic has %d ids, want %d",
          kv_tokenizer_vocab_size(t), vocab_size);
    CHECK(kv_tokenizer_bos(t) == 1 && kv_tokenizer_eos(t) == 2, "synthetic bos/eos");
    CHECK(kv_tokenizer_token_id(t, "<0x00>") == 3 && kv_tokenizer_token_id(t, "<0xFF>") == 258 &&
              kv_tokenizer_token_id(t, "\xE2\x96\x81") == 259,
          "synthetic fixed ids");
    static const char *const texts[] = {
        "Once upon a time, there was a little girl named Lily.",
        "  two leading, trailing two  ",
        "tabs\tand\nnewlines\r\n",
        "Gr\xC3\xBC\xC3\x9F"
        "e, \xE4\xB8\x96\xE7\x95\x8C! \xF0\x9F\x98\x80 "
        "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
        "x",
        "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int *ids;
        int n = encode(t, texts[i], &ids);
        int in_range = 1;
        for (int k = 0; k < n; k++) in_range &= ids[k] >= 0 && ids[k] < vocab_size;
        CHECK(in_range, "synthetic %d ids in range", vocab_size);
        char *back = n >= 0 ? decode(t, ids, n) : NULL;
        CHECK(back && !strcmp(back, texts[i]), "synthetic %d round trip '%s' -> '%s'", vocab_size,
              texts[i], back ? back : "");
        free(back);
        free(ids);
    }
    if (vocab_size >= 512) { /* "▁t" is among the first merged pieces */
        int *ids;
        int n = encode(t, "the", &ids);
        CHECK(n > 0 && n < 4, "synthetic %d merges: 'the' gives %d tokens", vocab_size, n);
        free(ids);
    }
    kv_tokenizer_free(t);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    kv_tokenizer *stories = NULL, *llama2 = NULL;
    kv_error err = {0};
    CHECK(kv_tokenizer_load(&stories, STORIES_TOK, &err) == 0, "%s", err.msg);
    CHECK(kv_tokenizer_load(&llama2, LLAMA2_TOK, &err) == 0, "%s", err.msg);
    if (stories && llama2) {
        CHECK(kv_tokenizer_vocab_size(stories) == 512 && kv_tokenizer_vocab_size(llama2) == 32000,
              "vocab sizes");
        CHECK(kv_tokenizer_bos(stories) == 1 && kv_tokenizer_eos(stories) == 2, "stories bos/eos");
        CHECK(kv_tokenizer_bos(llama2) == 1 && kv_tokenizer_eos(llama2) == 2, "llama2 bos/eos");
        CHECK(kv_tokenizer_is_special(llama2, 1) && !kv_tokenizer_is_special(llama2, 3),
              "special flags");
        test_golden_cases(stories, llama2);
        test_runc_stream(stories);
        test_added_tokens(llama2);
        test_added_tokens(stories);
        test_long_text(stories);
        test_long_text(llama2);
        test_metaspace(stories);
    }
    test_small_model();
    test_malformed();
    test_corrupted_files();
    test_synthetic(260);
    test_synthetic(512);
    test_synthetic(32000);
    test_synthetic(128256);
    CHECK(kv_tokenizer_write_synthetic("/tmp/never.json", 259, &err) == KV_EINVAL,
          "vocab 259 refused");
    kv_tokenizer_free(stories);
    kv_tokenizer_free(llama2);
    rmdir(tmpdir);
    return check_done("test_tokenizer");
}

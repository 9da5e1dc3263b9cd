/* chat data for distillation (a JSONL file of conversations, untrusted): distill_tokens_from_chat
 * over the input with the fallback format and with a ChatML template, on the Llama 1/2 kind of
 * tokenizer (tests/fuzz/tok_variants.h). On success every id is in the vocabulary and the KL
 * mask holds only 0 and 1, one per token; on failure nothing is left half-read that leaks. */
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/tok_variants.h"
#include "transform/train/distill_chat.h"

static kv_tokenizer *tok;
static distill_chat_format formats[2];

static const char chatml[] =
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char *json[TOK_N_VARIANTS];
    kv_error err = {0};
    if (tok_variants(json)) abort();
    if (kv_tokenizer_load_json(&tok, json[TOK_SP], strlen(json[TOK_SP]), "sp", &err)) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        abort();
    }
    for (int v = 0; v < TOK_N_VARIANTS; v++) free(json[v]);
    if (distill_chat_format_load(&formats[0], "fallback", NULL, 0, tok, &err)) {
        fprintf(stderr, "fallback format: %s\n", err.msg);
        abort();
    }
    formats[1] = formats[0];
    if (kv_chat_template_parse(&formats[1].tpl, chatml, strlen(chatml), "chatml", &err)) {
        fprintf(stderr, "chatml: %s\n", err.msg);
        abort();
    }
    snprintf(formats[1].source, sizeof formats[1].source, "chatml");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const int vocab = kv_tokenizer_vocab_size(tok);
    for (int f = 0; f < 2; f++) {
        distill_tokens d = {0};
        kv_error err = {0};
        if (distill_tokens_from_chat(&d, (const char *)data, size, tok, &formats[f],
                                     "fuzz: chat.jsonl", &err) == 0) {
            FUZZ_CHECK(d.n == 0 || (d.ids && d.kl_mask), "tokens without a mask");
            for (long i = 0; i < d.n; i++) {
                FUZZ_CHECK(d.ids[i] >= 0 && d.ids[i] < vocab, "id %d at %ld", d.ids[i], i);
                FUZZ_CHECK(d.kl_mask[i] <= 1, "mask %u at %ld", d.kl_mask[i], i);
            }
        } else {
            FUZZ_CHECK(err.msg[0], "failure without a message");
        }
        distill_tokens_free(&d);
    }
    return 0;
}

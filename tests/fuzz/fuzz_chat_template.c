/* chat templates (tokenizer_config.json's chat_template, untrusted): kv_chat_template_parse of
 * the input, then kv_chat_template_render over a fixed conversation; a render's text has the
 * length it reports and its assistant map holds only 0 and 1 */
#include "formats/chat_template.h"
#include "tests/fuzz/fuzz.h"

static const char *const conversation =
    "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
    "{\"role\":\"assistant\",\"content\":\" Hello! \"},{\"role\":\"user\",\"content\":\"Bye\"}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kv_chat_template *t = NULL;
    kv_error err = {0};
    if (kv_chat_template_parse(&t, (const char *)data, size, "fuzz: chat_template", &err)) return 0;
    cJSON *m = cJSON_Parse(conversation);
    if (!m) abort();
    const kv_chat_vars v = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = 1};
    char *text = NULL;
    unsigned char *mask = NULL;
    size_t len = 0;
    if (kv_chat_template_render(t, m, &v, &text, &mask, &len, &err) == 0) {
        FUZZ_CHECK(text && mask && text[len] == 0, "render output");
        FUZZ_CHECK(len <= KV_CHAT_RENDER_MAX_BYTES, "%zu bytes", len);
        for (size_t i = 0; i < len; i++) FUZZ_CHECK(mask[i] <= 1, "mask byte %u", mask[i]);
    } else {
        FUZZ_CHECK(!text && !mask, "outputs left on failure");
    }
    free(text), free(mask);
    cJSON_Delete(m);
    kv_chat_template_free(t);
    return 0;
}

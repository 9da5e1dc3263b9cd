/* Chat template engine (formats/chat_template.h): the real templates of common models rendered
 * against outputs derived by hand, the assistant-byte provenance, the Jinja details HF relies on
 * (trim_blocks, lstrip_blocks, whitespace control, scoping, namespace), and the refusals. */
#include <stdlib.h>
#include <string.h>

#include "formats/chat_template.h"
#include "tests/check.h"

/* renders tpl over the JSON messages; returns the status, output in *text / *mask */
static int render(const char *tpl, const char *messages_json, int gen, char **text,
                  unsigned char **mask, size_t *len, kv_error *err) {
    kv_chat_template *t = NULL;
    *text = NULL, *mask = NULL, *len = 0;
    int rc = kv_chat_template_parse(&t, tpl, strlen(tpl), "test: chat_template", err);
    if (rc) return rc;
    cJSON *m = cJSON_Parse(messages_json);
    if (!m) {
        kv_chat_template_free(t);
        return kv_fail(err, KV_EFORMAT, "bad test JSON");
    }
    kv_chat_vars v = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = gen};
    if (strstr(tpl, "start_header_id")) v.bos_token = "<|begin_of_text|>";
    rc = kv_chat_template_render(t, m, &v, text, mask, len, err);
    cJSON_Delete(m);
    kv_chat_template_free(t);
    return rc;
}

/* the mask is 1 exactly on the bytes of the listed (unique) substrings */
static int mask_is(const char *text, const unsigned char *mask, size_t len,
                   const char *const *spans) {
    unsigned char *want = calloc(len + 1, 1);
    for (int i = 0; spans[i]; i++) {
        const char *at = strstr(text, spans[i]);
        if (!at) {
            free(want);
            return 0;
        }
        memset(want + (at - text), 1, strlen(spans[i]));
    }
    int ok = !memcmp(want, mask, len);
    free(want);
    return ok;
}

static void expect(const char *name, const char *tpl, const char *msgs, int gen, const char *want,
                   const char *const *spans) {
    char *text;
    unsigned char *mask;
    size_t len;
    kv_error err = {0};
    int rc = render(tpl, msgs, gen, &text, &mask, &len, &err);
    CHECK(rc == 0, "%s: render failed: %s", name, err.msg);
    if (rc) return;
    CHECK(len == strlen(want) && !strcmp(text, want), "%s: rendered\n[%s]\nwanted\n[%s]", name,
          text, want);
    if (spans) CHECK(mask_is(text, mask, len, spans), "%s: assistant mask differs", name);
    free(text), free(mask);
}

static void expect_error(const char *name, const char *tpl, const char *msgs, int code,
                         const char *needle) {
    char *text;
    unsigned char *mask;
    size_t len;
    kv_error err = {0};
    int rc = render(tpl, msgs, 0, &text, &mask, &len, &err);
    CHECK(rc == code, "%s: status %d, wanted %d (%s)", name, rc, code, err.msg);
    CHECK(strstr(err.msg, needle) != NULL, "%s: message '%s' lacks '%s'", name, err.msg, needle);
    CHECK(rc == 0 || (!text && !mask), "%s: outputs left on error", name);
    if (!rc) free(text), free(mask);
}

static const char *const llama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% "
    "endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

static const char *const zephyr =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
    "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
    "'<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' "
    "%}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last "
    "and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

static const char *const chatml =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif "
    "%}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static const char *const llama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
    "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
    "system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] "
    "== 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
    "alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and "
    "system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% "
    "endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' "
    "[/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + "
    "eos_token }}{% endif %}{% endfor %}";

static const char *const conv3 =
    "[{\"role\":\"system\",\"content\":\"You are helpful.\"},{\"role\":\"user\",\"content\":"
    "\"Hi\"},{\"role\":\"assistant\",\"content\":\" Hello! \"}]";

static void test_real_templates(void) {
    const char *const hello[] = {"Hello!", NULL}, *const hello_ws[] = {" Hello! ", NULL};
    expect("llama3", llama3, conv3, 0,
           "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are "
           "helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_"
           "header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
           hello);
    expect("llama3 generation prompt", llama3, "[{\"role\":\"user\",\"content\":\"Hi\"}]", 1,
           "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_"
           "header_id|>assistant<|end_header_id|>\n\n",
           (const char *const[]){NULL});
    expect("zephyr", zephyr, conv3, 0,
           "<|system|>\nYou are helpful.</s>\n<|user|>\nHi</s>\n<|assistant|>\n Hello! </s>\n",
           hello_ws);
    expect("zephyr generation prompt", zephyr, "[{\"role\":\"user\",\"content\":\"Hi\"}]", 1,
           "<|user|>\nHi</s>\n<|assistant|>\n", NULL);
    expect("chatml default system", chatml,
           "[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Sure\"}]",
           0,
           "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_"
           "end|>\n<|im_start|>assistant\nSure<|im_end|>\n",
           (const char *const[]){"Sure", NULL});
    expect("chatml own system", chatml, conv3, 1,
           "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_"
           "start|>assistant\n Hello! <|im_end|>\n<|im_start|>assistant\n",
           hello_ws);
    expect("llama2 with system", llama2,
           "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi "
           "\"},{\"role\":\"assistant\",\"content\":\"Hello \"},{\"role\":\"user\",\"content\":"
           "\"Bye\"}]",
           0,
           "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]",
           (const char *const[]){"Hello", NULL});
    expect("llama2 no system", llama2,
           "[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Yo\"}]",
           0, "<s>[INST] Hi [/INST] Yo </s>", (const char *const[]){"Yo", NULL});
    expect_error("llama2 roles must alternate", llama2,
                 "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]",
                 KV_EINVAL, "Conversation roles must alternate");
}

static const char *const conv2 =
    "[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Yo\"}]";

static void test_jinja_details(void) {
    expect("expressions",
           "{{ messages | length }}{{ 'AbC' | upper }}{{ 'AbC' | lower }}{% if foo is not defined "
           "%}U{% endif %}{{ 7 % 3 }}{{ -7 // 2 }}{{ -7 % 3 }}{{ 'x' if false else 'y' }}{{ 'b' in "
           "'abc' }}{{ messages[-1].role }}{{ 'u' ~ 1 ~ none }}{{ messages[1:] | length }}{{ "
           "'user' not in messages[0].role }}{{ (1 + 2) * 3 }}{{ 'a' 'b' }}{{ '\\'q\\'' }}",
           conv2, 0, "2ABCabcU1-42yTrueassistantu1None1False9ab'q'", NULL);
    expect("and/or return operands", "{{ '' or 'z' }}{{ 'a' and 'b' }}{{ foo or 'd' }}", conv2, 0,
           "zbd", NULL);
    expect("loop variables",
           "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ "
           "loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
           conv2, 0, "102TrueFalse2;211FalseTrue2;", NULL);
    expect(
        "loop scope",
        "{% set x = 'a' %}{% for m in messages %}{{ x }}{% set x = 'b' %}{{ x }}{% endfor %}{{ x "
        "}}",
        conv2, 0, "abbba", NULL);
    expect("namespace",
           "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == "
           "'assistant' %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor "
           "%}{{ ns.found }}{{ ns.n }}",
           conv2, 0, "True2", NULL);
    expect("whitespace control", "a  {{- 'b' -}}  c {%- if true %} d{% endif -%}\n\n e", conv2, 0,
           "abc de", NULL);
    expect("trim_blocks and lstrip_blocks",
           "line\n    {% if true %}\n  x\n    {% endif %}\n{# note #}\nend{%+ if true %}!{% endif "
           "+%}\n.",
           conv2, 0, "line\n  x\nend!\n.", NULL);
    expect("provenance through filters and methods",
           "{% for m in messages %}[{{ m.content | trim | upper }}|{{ m['content'].strip() "
           "}}|{{ m.content[1:] }}]{% endfor %}",
           "[{\"role\":\"user\",\"content\":\"ab\"},{\"role\":\"assistant\",\"content\":\" cd "
           "\"}]",
           0, "[AB|ab|b][CD|cd|cd ]", NULL);
    char *text;
    unsigned char *mask;
    size_t len;
    kv_error err = {0};
    CHECK(render("{% for m in messages %}[{{ m.content | trim | upper }}|{{ m['content'].strip() "
                 "}}|{{ m.content[1:] }}]{% endfor %}",
                 "[{\"role\":\"user\",\"content\":\"ab\"},{\"role\":\"assistant\",\"content\":"
                 "\" cd \"}]",
                 0, &text, &mask, &len, &err) == 0,
          "provenance: %s", err.msg);
    const char *want = "00000000001101101110"; /* [AB|ab|b][CD|cd|cd ] */
    int same = len == strlen(want);
    for (size_t i = 0; same && i < len; i++) same = mask[i] == (want[i] == '1');
    CHECK(same, "provenance through trim, upper, strip and a slice");
    free(text), free(mask);
    CHECK(render("{{ messages[1].content }}-{{ messages[0].content }}", conv2, 0, &text, &mask,
                 &len, &err) == 0,
          "indexed: %s", err.msg);
    CHECK(len == 5 && !memcmp(mask, "\1\1\0\0\0", 5), "indexed message keeps provenance");
    free(text), free(mask);
}

static void test_refusals(void) {
    expect_error("macro", "{% macro f() %}x{% endmacro %}", conv2, KV_EUNSUPPORTED,
                 "chat_template uses 'macro', which kvdistill does not support");
    expect_error("unknown filter", "{{ messages | tojson }}", conv2, KV_EUNSUPPORTED,
                 "filter 'tojson'");
    expect_error("unknown function", "{{ range(3) }}", conv2, KV_EUNSUPPORTED, "function 'range'");
    expect_error("list literal", "{% if 'a' in ['a'] %}{% endif %}", conv2, KV_EUNSUPPORTED,
                 "a list literal");
    expect_error("unclosed if", "{% if true %}x", conv2, KV_EFORMAT, "{% endif %}");
    expect_error("unclosed tag", "{{ 'a' ", conv2, KV_EFORMAT, "not closed");
    expect_error("unterminated string", "{{ 'a }}", conv2, KV_EFORMAT, "unterminated");
    expect_error("line numbers", "a\nb\n{{ 1 + }}", conv2, KV_EFORMAT, "line 3");
    expect_error("undefined arithmetic", "{{ nothing + 'a' }}", conv2, KV_EINVAL,
                 "arithmetic on undefined");
    expect_error("float", "{{ 1.5 }}", conv2, KV_EUNSUPPORTED, "float");
    expect_error("for else", "{% for m in messages %}{% else %}{% endfor %}", conv2,
                 KV_EUNSUPPORTED, "for ... else");
    /* nesting and runaway loops are bounded */
    char deep[2000] = "{{ ";
    for (int i = 0; i < 200; i++) strcat(deep, "(");
    strcat(deep, "1");
    for (int i = 0; i < 200; i++) strcat(deep, ")");
    strcat(deep, " }}");
    expect_error("deep nesting", deep, conv2, KV_EUNSUPPORTED, "nested too deeply");
    char *big = malloc(KV_CHAT_TEMPLATE_MAX_BYTES + 2);
    memset(big, 'x', KV_CHAT_TEMPLATE_MAX_BYTES + 1);
    big[KV_CHAT_TEMPLATE_MAX_BYTES + 1] = 0;
    expect_error("template size", big, conv2, KV_EUNSUPPORTED, "bytes");
    free(big);
    expect_error("output size",
                 "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for a in messages %}{% for b "
                 "in messages %}{% set ns.s = ns.s + ns.s + ns.s + ns.s %}{% endfor %}{% endfor "
                 "%}{% for a in messages %}{% for b in messages %}{% for c in messages %}{% set "
                 "ns.s = ns.s + ns.s + ns.s + ns.s + ns.s + ns.s + ns.s + ns.s %}{% endfor %}{% "
                 "endfor %}{% endfor %}{{ ns.s }}",
                 conv2, KV_EUNSUPPORTED, "longer than");
}

int main(void) {
    test_real_templates();
    test_jinja_details();
    test_refusals();
    return check_done("test_chat_template");
}

/* Chat templates: the Jinja subset that Hugging Face chat templates (tokenizer_config.json's
 * chat_template) use, rendered as transformers' apply_chat_template does (trim_blocks and
 * lstrip_blocks on), with byte provenance: every output byte knows whether it came from the
 * content of an assistant message.
 *
 * Supported: text, {{ expr }}, {% if %}/{% elif %}/{% else %}/{% endif %},
 * {% for x in expr %}/{% endfor %} (loop.index0/index/first/last/length/revindex/revindex0),
 * {% set name = expr %}, {% set ns.attr = expr %} with namespace(k=v, ...), {# comments #},
 * whitespace control {%- -%} {{- -}}. Expressions: string ('..' or "..", escapes \n \t \r \\ \'
 * \"), integer, true/false/none literals, names, x.attr, x['key'], x[i], x[a:b], ( ), unary -,
 * + - * // % on integers, + on strings, ~, == != < <= > >=, in / not in, and / or / not,
 * a if c else b, tests (is [not] defined/undefined/none/string/number), filters trim, length,
 * count, upper, lower, string, first, last, methods .strip() .lstrip() .rstrip() .upper()
 * .lower() .startswith(s) .endswith(s), raise_exception(msg) (an error carrying msg).
 * Anything else (macro, call, filter blocks, list literals, unknown filters or functions...) is
 * refused at parse time, or at render time for names only known then, with KV_EUNSUPPORTED
 * naming the construct and LABEL.
 *
 * Variables: messages (the conversation, a cJSON array of {role, content} objects), bos_token,
 * eos_token, add_generation_prompt. Undefined names are Jinja's Undefined: empty when printed,
 * false as a condition, an error in arithmetic.
 * Limits (templates are untrusted): at most 64 KiB of template, expressions nested 64 deep,
 * blocks nested 64 deep, 16 MiB of output and 1e6 evaluation steps per render. */
#ifndef KV_CHAT_TEMPLATE_H
#define KV_CHAT_TEMPLATE_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "base/error.h"

#define KV_CHAT_TEMPLATE_MAX_BYTES ((size_t)64 << 10)
#define KV_CHAT_RENDER_MAX_BYTES   ((size_t)16 << 20)

typedef struct kv_chat_template kv_chat_template;

/* parses src[len]; label names it in errors ("DIR/tokenizer_config.json: chat_template") */
int kv_chat_template_parse(kv_chat_template **out, const char *src, size_t len, const char *label,
                           kv_error *err);
void kv_chat_template_free(kv_chat_template *t);

typedef struct {
    const char *bos_token, *eos_token; /* NULL: undefined */
    int add_generation_prompt; /* false for training */
} kv_chat_vars;

/* Renders messages. *text: malloc'd, NUL-terminated, *len bytes; *assistant: malloc'd [len],
 * 1 where the byte comes from the content of a message whose role is "assistant", else 0. */
int kv_chat_template_render(const kv_chat_template *t, const cJSON *messages,
                            const kv_chat_vars *vars, char **text, unsigned char **assistant,
                            size_t *len, kv_error *err);

#endif

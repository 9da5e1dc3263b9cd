/* Chat data for distillation: JSONL conversations rendered through the model's chat template
 * (or the fallback format), tokenized, with the KL mask of assistant tokens (docs/DISTILL.md,
 * "Chat data").
 *
 * File: one JSON object per line (blank lines skipped) with "messages": a non-empty list of
 * {"role": "system" | "user" | "assistant", "content": string} objects (other keys ignored,
 * none twice). At most 4096 messages per conversation, 1 MiB per line. Errors name FILE:LINE
 * and the field.
 *
 * Template: tokenizer_config.json's chat_template (formats/chat_template.h; a list of named
 * templates: the one named "default"), bos_token and eos_token (a string or {"content": ...});
 * when absent, the tokenizer's BOS/EOS token strings. Fallback format, per conversation:
 *   BOS "<|role|>\n" content "\n" ... with EOS right after each assistant message's content:
 *   "<s><|user|>\nHi\n<|assistant|>\nHello</s>\n"
 *
 * Masking: the rendered text is encoded whole (no BOS added: templates write their own) and the
 * tokens are aligned with the text's bytes (token pieces, "▁" as a space and <0xXX> as the byte,
 * matched in order; a space the normalizer prepended matches nothing). A token is an assistant
 * token when one of its bytes comes from an assistant message's content; so is the turn's end:
 * the first special token after that content with only whitespace between (<|eot_id|>,
 * <|im_end|>, </s>). kl_mask[i] = 1 when token i + 1 is an assistant token, since the logits at
 * position i predict token i + 1 (HF's shifted labels). The last token of a conversation gets 0. */
#ifndef KV_DISTILL_CHAT_H
#define KV_DISTILL_CHAT_H

#include <stddef.h>

#include "base/error.h"
#include "formats/chat_template.h"
#include "formats/tokenizer.h"
#include "transform/train/distill_data.h"

#define DISTILL_CHAT_MAX_MESSAGES 4096
#define DISTILL_CHAT_MAX_LINE     ((size_t)1 << 20)

typedef struct {
    kv_chat_template *tpl; /* NULL: the fallback format */
    char bos[256], eos[256]; /* token strings; "" when none */
    char source[4200]; /* where the template came from, for messages ("fallback" when none) */
} distill_chat_format;

/* which: NULL or "auto" (tokenizer_config.json's template beside tokenizer.json in the first of
 * dirs that has one, else the fallback), "fallback", or the path of a Jinja template file */
int distill_chat_format_load(distill_chat_format *f, const char *which, const char *const *dirs,
                             int n_dirs, const kv_tokenizer *tok, kv_error *err);
void distill_chat_format_free(distill_chat_format *f);

/* Appends the tokens and kl_mask of every conversation of a JSONL text; label names the file. */
int distill_tokens_from_chat(distill_tokens *d, const char *text, size_t len,
                             const kv_tokenizer *tok, const distill_chat_format *f,
                             const char *label, kv_error *err);

/* One conversation (a validated messages array) rendered: malloc'd text[len] and assistant[len]
 * (1: the byte comes from an assistant message's content; the fallback's EOS after it too) */
int distill_chat_render(const distill_chat_format *f, const cJSON *messages, char **text,
                        unsigned char **assistant, size_t *len, kv_error *err);

/* The tokens of text[len] (encoded whole) and, per token, whether it is an assistant token
 * (rules above). ids and is_assistant malloc'd [*n]. */
int distill_chat_tokenize(const kv_tokenizer *tok, const char *text, const unsigned char *assistant,
                          size_t len, int **ids, unsigned char **is_assistant, int *n,
                          const char *label, kv_error *err);

#endif

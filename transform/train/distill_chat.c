/* Chat data: JSONL conversations -> rendered text -> tokens with the assistant KL mask. */
#include "transform/train/distill_chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/json_field.h"

#define CONFIG_MAX_BYTES ((size_t)16 << 20)

static int token_string(const cJSON *cfg, const char *name, char *out, size_t cap,
                        const char *label, kv_error *err) {
    const cJSON *it = json_field(cfg, name);
    if (!it) return 0;
    if (cJSON_IsObject(it)) it = json_field(it, "content");
    if (!cJSON_IsString(it))
        return kv_fail(err, KV_EFORMAT, "%s: %s: %s, expected a string or {\"content\": string}",
                       label, name, json_kind(it));
    if (strlen(it->valuestring) >= cap)
        return kv_fail(err, KV_EFORMAT, "%s: %s: longer than %zu bytes", label, name, cap - 1);
    snprintf(out, cap, "%s", it->valuestring);
    return 0;
}

static int parse_template(distill_chat_format *f, const char *src, size_t len, const char *where,
                          kv_error *err) {
    snprintf(f->source, sizeof f->source, "%s", where);
    return kv_chat_template_parse(&f->tpl, src, len, where, err);
}

static int load_config(distill_chat_format *f, const char *path, kv_error *err) {
    char *buf = NULL;
    size_t len = 0;
    int rc = kv_read_file(path, &buf, &len, CONFIG_MAX_BYTES, err);
    if (rc) return rc;
    cJSON *cfg = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!cfg) return kv_fail(err, KV_EFORMAT, "%s: not valid JSON", path);
    if (!cJSON_IsObject(cfg)) rc = kv_fail(err, KV_EFORMAT, "%s: not a JSON object", path);
    if (!rc) rc = token_string(cfg, "bos_token", f->bos, sizeof f->bos, path, err);
    if (!rc) rc = token_string(cfg, "eos_token", f->eos, sizeof f->eos, path, err);
    const cJSON *tpl = rc ? NULL : json_field(cfg, "chat_template");
    char where[4200];
    snprintf(where, sizeof where, "%s: chat_template", path);
    if (tpl && cJSON_IsArray(tpl)) { /* [{"name": ..., "template": ...}]: the default one */
        const cJSON *pick = NULL;
        for (const cJSON *c = tpl->child; c; c = c->next) {
            const cJSON *name = json_field(c, "name");
            if (cJSON_IsString(name) && !strcmp(name->valuestring, "default"))
                pick = json_field(c, "template");
        }
        if (!pick)
            rc = kv_fail(err, KV_EFORMAT, "%s: a list of templates without one named 'default'",
                         where);
        tpl = pick;
    }
    if (!rc && tpl && !cJSON_IsString(tpl))
        rc = kv_fail(err, KV_EFORMAT, "%s: %s, expected a string", where, json_kind(tpl));
    if (!rc && tpl) rc = parse_template(f, tpl->valuestring, strlen(tpl->valuestring), where, err);
    cJSON_Delete(cfg);
    return rc;
}

int distill_chat_format_load(distill_chat_format *f, const char *which, const char *const *dirs,
                             int n_dirs, const kv_tokenizer *tok, kv_error *err) {
    memset(f, 0, sizeof *f);
    snprintf(f->source, sizeof f->source, "fallback");
    const char *bos = tok ? kv_tokenizer_token(tok, kv_tokenizer_bos(tok)) : NULL;
    const char *eos = tok ? kv_tokenizer_token(tok, kv_tokenizer_eos(tok)) : NULL;
    if (bos && strlen(bos) < sizeof f->bos) snprintf(f->bos, sizeof f->bos, "%s", bos);
    if (eos && strlen(eos) < sizeof f->eos) snprintf(f->eos, sizeof f->eos, "%s", eos);
    if (which && !strcmp(which, "fallback")) return 0;
    int rc;
    if (which && strcmp(which, "auto")) {
        char *buf = NULL;
        size_t len = 0;
        if ((rc = kv_read_file(which, &buf, &len, KV_CHAT_TEMPLATE_MAX_BYTES, err))) return rc;
        rc = parse_template(f, buf, len, which, err);
        free(buf);
        return rc;
    }
    char path[4096];
    for (int i = 0; i < n_dirs; i++) {
        if ((rc = kv_join(path, sizeof path, dirs[i], "tokenizer.json", err))) return rc;
        if (!kv_path_exists(path)) continue;
        if ((rc = kv_join(path, sizeof path, dirs[i], "tokenizer_config.json", err))) return rc;
        return kv_path_exists(path) ? load_config(f, path, err) : 0;
    }
    return 0;
}

void distill_chat_format_free(distill_chat_format *f) {
    kv_chat_template_free(f->tpl);
    f->tpl = NULL;
}

/* ---- rendering ---- */

typedef struct {
    char *text;
    unsigned char *mask;
    size_t len, cap;
} rbuf;

static int put(rbuf *b, const char *s, size_t n, int mask, kv_error *err) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *t = realloc(b->text, cap);
        if (t) b->text = t;
        unsigned char *m = t ? realloc(b->mask, cap) : NULL;
        if (!t || !m) return kv_fail(err, KV_ENOMEM, "chat: out of memory rendering");
        b->mask = m, b->cap = cap;
    }
    memcpy(b->text + b->len, s, n);
    memset(b->mask + b->len, mask, n);
    b->len += n;
    b->text[b->len] = 0;
    return 0;
}

int distill_chat_render(const distill_chat_format *f, const cJSON *messages, char **text,
                        unsigned char **assistant, size_t *len, kv_error *err) {
    if (f->tpl) {
        const kv_chat_vars v = {.bos_token = f->bos[0] ? f->bos : NULL,
                                .eos_token = f->eos[0] ? f->eos : NULL,
                                .add_generation_prompt = 0};
        return kv_chat_template_render(f->tpl, messages, &v, text, assistant, len, err);
    }
    rbuf b = {0};
    int rc = put(&b, f->bos, strlen(f->bos), 0, err);
    for (const cJSON *m = messages->child; m && !rc; m = m->next) {
        const char *role = json_field(m, "role")->valuestring;
        const char *content = json_field(m, "content")->valuestring;
        const int asst = !strcmp(role, "assistant");
        if (!(rc = put(&b, "<|", 2, 0, err)) && !(rc = put(&b, role, strlen(role), 0, err)) &&
            !(rc = put(&b, "|>\n", 3, 0, err)) &&
            !(rc = put(&b, content, strlen(content), asst, err)) && asst)
            rc = put(&b, f->eos, strlen(f->eos), 1, err);
        if (!rc) rc = put(&b, "\n", 1, 0, err);
    }
    if (rc) {
        free(b.text), free(b.mask);
        return rc;
    }
    *text = b.text, *assistant = b.mask, *len = b.len;
    return 0;
}

/* ---- tokens aligned with the text ---- */

/* the bytes token id stands for in the text: special tokens verbatim, "<0xHH>" the byte, "▁"
 * a space; at most cap - 1 bytes */
static size_t piece_bytes(const kv_tokenizer *tok, int id, char *out, size_t cap) {
    const char *p = kv_tokenizer_token(tok, id);
    if (!p) return 0;
    size_t n = 0;
    if (!kv_tokenizer_is_special(tok, id) && strlen(p) == 6 && !strncmp(p, "<0x", 3) &&
        p[5] == '>') {
        unsigned v = 0;
        if (sscanf(p + 3, "%2x", &v) == 1) {
            out[0] = (char)v;
            return 1;
        }
    }
    const int special = kv_tokenizer_is_special(tok, id);
    for (; *p && n + 1 < cap; p++) {
        if (!special && !strncmp(p, "\xe2\x96\x81", 3)) {
            out[n++] = ' ';
            p += 2;
        } else {
            out[n++] = *p;
        }
    }
    return n;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int distill_chat_tokenize(const kv_tokenizer *tok, const char *text, const unsigned char *assistant,
                          size_t len, int **ids_out, unsigned char **asst_out, int *n_out,
                          const char *label, kv_error *err) {
    *ids_out = NULL, *asst_out = NULL, *n_out = 0;
    int *ids = NULL, n = 0;
    int rc = kv_tokenizer_encode(tok, text, len, 0, &ids, &n, err);
    if (rc) return rc;
    unsigned char *asst = calloc((size_t)n + 1, 1);
    size_t *begin = malloc(sizeof(size_t) * ((size_t)n + 1)),
           *end = malloc(sizeof(size_t) * ((size_t)n + 1));
    if (!asst || !begin || !end) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
        goto out;
    }
    size_t at = 0;
    char piece[1100];
    for (int k = 0; k < n; k++) {
        const size_t m = piece_bytes(tok, ids[k], piece, sizeof piece);
        size_t skip = 0;
        if (m <= len - at && !memcmp(text + at, piece, m)) skip = 0;
        else if (m && piece[0] == ' ' && m - 1 <= len - at && !memcmp(text + at, piece + 1, m - 1))
            skip = 1; /* a space the normalizer prepended */
        else {
            const char *s = kv_tokenizer_token(tok, ids[k]);
            rc = kv_fail(err, KV_EUNSUPPORTED,
                         "%s: token %d ('%.40s') does not match the rendered text at byte %zu; "
                         "this tokenizer cannot be aligned for --loss-tokens assistant (use "
                         "--loss-tokens all)",
                         label, k, s ? s : "?", at);
            goto out;
        }
        begin[k] = at;
        end[k] = at + m - skip;
        for (size_t i = begin[k]; i < end[k]; i++) asst[k] |= assistant[i];
        at = end[k];
    }
    if (at != len) {
        rc = kv_fail(err, KV_EUNSUPPORTED,
                     "%s: the tokens cover %zu of the %zu rendered bytes; this tokenizer cannot be "
                     "aligned for --loss-tokens assistant (use --loss-tokens all)",
                     label, at, len);
        goto out;
    }
    /* the turn's end: the first special token after assistant content, whitespace between */
    for (int k = 0; k + 1 < n; k++) {
        if (!asst[k] || asst[k + 1]) continue;
        int j = k + 1;
        for (;;) {
            if (j >= n || kv_tokenizer_is_special(tok, ids[j])) break;
            int blank = 1;
            for (size_t i = begin[j]; i < end[j]; i++) blank &= is_ws(text[i]);
            if (!blank) break;
            j++;
        }
        if (j < n && kv_tokenizer_is_special(tok, ids[j])) asst[j] = 2; /* not a run start */
    }
    for (int k = 0; k < n; k++) asst[k] = asst[k] != 0;
out:
    free(begin), free(end);
    if (rc) {
        free(ids), free(asst);
        return rc;
    }
    *ids_out = ids, *asst_out = asst, *n_out = n;
    return 0;
}

/* ---- the JSONL file ---- */

static int check_string(const cJSON *obj, const char *key, int i, const char *where,
                        kv_error *err) {
    const cJSON *it = json_field(obj, key);
    if (!it) return kv_fail(err, KV_EFORMAT, "%s: messages[%d].%s: missing", where, i, key);
    if (!cJSON_IsString(it))
        return kv_fail(err, KV_EFORMAT, "%s: messages[%d].%s: %s, expected a string", where, i, key,
                       json_kind(it));
    return 0;
}

static int validate(const cJSON *j, const char *where, const cJSON **messages, kv_error *err) {
    if (!cJSON_IsObject(j))
        return kv_fail(err, KV_EFORMAT, "%s: %s, expected an object with \"messages\"", where,
                       json_kind(j));
    int rc = json_unique_keys(j, where, "", err);
    if (rc) return rc;
    const cJSON *m = json_field(j, "messages");
    if (!m) return kv_fail(err, KV_EFORMAT, "%s: messages: missing", where);
    if (!cJSON_IsArray(m))
        return kv_fail(err, KV_EFORMAT, "%s: messages: %s, expected a list", where, json_kind(m));
    const int n = cJSON_GetArraySize(m);
    if (n < 1) return kv_fail(err, KV_EFORMAT, "%s: messages: an empty list", where);
    if (n > DISTILL_CHAT_MAX_MESSAGES)
        return kv_fail(err, KV_EFORMAT, "%s: messages: %d of them (at most %d)", where, n,
                       DISTILL_CHAT_MAX_MESSAGES);
    int i = 0;
    for (const cJSON *it = m->child; it; it = it->next, i++) {
        if (!cJSON_IsObject(it))
            return kv_fail(err, KV_EFORMAT, "%s: messages[%d]: %s, expected an object", where, i,
                           json_kind(it));
        char at[4300];
        snprintf(at, sizeof at, "%.4200s: messages[%d]", where, i);
        if ((rc = json_unique_keys(it, at, "", err)) ||
            (rc = check_string(it, "role", i, where, err)) ||
            (rc = check_string(it, "content", i, where, err)))
            return rc;
        const char *role = json_field(it, "role")->valuestring;
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))
            return kv_fail(err, KV_EFORMAT,
                           "%s: messages[%d].role: '%.40s' is not system, user or assistant", where,
                           i, role);
    }
    *messages = m;
    return 0;
}

static int append_conversation(distill_tokens *d, const cJSON *messages, const kv_tokenizer *tok,
                               const distill_chat_format *f, const char *where, kv_error *err) {
    char *text = NULL;
    unsigned char *asst = NULL, *tok_asst = NULL;
    size_t len = 0;
    int *ids = NULL, n = 0;
    int rc = distill_chat_render(f, messages, &text, &asst, &len, err);
    if (rc) return kv_wrap(err, "%s", where), rc;
    rc = distill_chat_tokenize(tok, text, asst, len, &ids, &tok_asst, &n, where, err);
    if (!rc) rc = distill_tokens_reserve(d, n, where, err);
    if (!rc) {
        for (int i = 0; i < n; i++) {
            d->ids[d->n + i] = ids[i];
            d->kl_mask[d->n + i] = i + 1 < n ? tok_asst[i + 1] : 0;
        }
        d->n += n;
    }
    free(text), free(asst), free(ids), free(tok_asst);
    return rc;
}

int distill_tokens_from_chat(distill_tokens *d, const char *text, size_t len,
                             const kv_tokenizer *tok, const distill_chat_format *f,
                             const char *label, kv_error *err) {
    if (!tok)
        return kv_fail(err, KV_EINVAL, "%s: chat data needs the model's tokenizer.json", label);
    int rc = distill_tokens_want_mask(d, label, err);
    if (rc) return rc;
    size_t at = 0;
    long line = 0, conversations = 0;
    char where[4200];
    while (at < len && !rc) {
        size_t end = at;
        while (end < len && text[end] != '\n') end++;
        line++;
        snprintf(where, sizeof where, "%.4100s:%ld", label, line);
        size_t b = at, e = end;
        while (b < e && is_ws(text[b])) b++;
        while (e > b && is_ws(text[e - 1])) e--;
        at = end + 1;
        if (e == b) continue;
        if (e - b > DISTILL_CHAT_MAX_LINE)
            return kv_fail(err, KV_EFORMAT, "%s: a line of %zu bytes (at most %zu)", where, e - b,
                           DISTILL_CHAT_MAX_LINE);
        const char *parsed_end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(text + b, e - b, &parsed_end, 0);
        if (!j)
            return kv_fail(err, KV_EFORMAT, "%s: not valid JSON (at byte %ld of the line)", where,
                           parsed_end ? (long)(parsed_end - (text + b)) : 0L);
        if (parsed_end != text + e) {
            cJSON_Delete(j);
            return kv_fail(err, KV_EFORMAT, "%s: more than one JSON value on the line", where);
        }
        const cJSON *messages = NULL;
        rc = validate(j, where, &messages, err);
        if (!rc) rc = append_conversation(d, messages, tok, f, where, err);
        cJSON_Delete(j);
        conversations++;
    }
    if (!rc && !conversations) rc = kv_fail(err, KV_EFORMAT, "%s: no conversations", label);
    return rc;
}

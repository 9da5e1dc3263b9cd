/* Chat data for distillation (transform/train/distill_chat.h): JSONL validation errors naming
 * FILE:LINE and the field, the fallback format, tokenizer_config.json's template, token alignment
 * and the assistant mask, and the acceptance test of the masked KL on a tiny synthetic model:
 * positions outside assistant turns get exactly zero KL gradient on the student's logits, the
 * masked KL is the mean of independently computed per-position KLs over assistant positions, and
 * --loss-tokens all (no weights) is the unmasked loss. Needs no fixtures. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/kvmap.h"
#include "tests/check.h"
#include "transform/synth/synth.h"
#include "transform/train/distill.h"
#include "transform/train/distill_chat.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_forward.h"
#include "transform/train/train_model.h"

static char dir[256];

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static void expect_bad(const kv_tokenizer *tok, const distill_chat_format *fmt, const char *jsonl,
                       const char *needle) {
    distill_tokens d = {0};
    kv_error err = {0};
    int rc = distill_tokens_from_chat(&d, jsonl, strlen(jsonl), tok, fmt, "c.jsonl", &err);
    CHECK(rc == KV_EFORMAT, "'%s': status %d (%s)", needle, rc, err.msg);
    CHECK(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'", err.msg, needle);
    distill_tokens_free(&d);
}

static const char *const good =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":"
    "\"Hello there.\"}]}";

static void test_validation(const kv_tokenizer *tok, const distill_chat_format *fmt) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s\n{\"messages\": [", good);
    expect_bad(tok, fmt, buf, "c.jsonl:2: not valid JSON");
    expect_bad(tok, fmt, "\n\n[1, 2]", "c.jsonl:3: a list, expected an object");
    expect_bad(tok, fmt, "{\"msgs\": []}", "c.jsonl:1: messages: missing");
    expect_bad(tok, fmt, "{\"messages\": {}}", "c.jsonl:1: messages: an object, expected a list");
    expect_bad(tok, fmt, "{\"messages\": []}", "c.jsonl:1: messages: an empty list");
    expect_bad(tok, fmt, "{\"messages\": [\"hi\"]}", "c.jsonl:1: messages[0]: a string");
    expect_bad(tok, fmt, "{\"messages\": [{\"content\": \"x\"}]}",
               "c.jsonl:1: messages[0].role: missing");
    expect_bad(tok, fmt, "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}",
               "messages[0].role: 'tool' is not system, user or assistant");
    expect_bad(tok, fmt,
               "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": "
               "\"assistant\", \"content\": [{\"type\": \"text\"}]}]}",
               "c.jsonl:1: messages[1].content: a list, expected a string");
    expect_bad(tok, fmt, "{\"messages\": [{\"role\": \"user\", \"content\": null}]}",
               "messages[0].content: missing");
    expect_bad(tok, fmt,
               "{\"messages\": [{\"role\": \"user\", \"role\": \"user\", \"content\": \"\"}]}",
               "role");
    expect_bad(tok, fmt, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]} 5",
               "more than one JSON value");
    expect_bad(tok, fmt, "\n  \n", "c.jsonl: no conversations");
    char *big = malloc(DISTILL_CHAT_MAX_LINE + 64);
    memset(big, ' ', DISTILL_CHAT_MAX_LINE + 63);
    big[0] = '{', big[DISTILL_CHAT_MAX_LINE + 62] = '}', big[DISTILL_CHAT_MAX_LINE + 63] = 0;
    expect_bad(tok, fmt, big, "at most");
    free(big);
}

/* the tokens of one conversation, with is_assistant per token */
static int conv_tokens(const kv_tokenizer *tok, const distill_chat_format *fmt, const char *json,
                       char **text, int **ids, unsigned char **asst, int *n) {
    cJSON *j = cJSON_Parse(json);
    unsigned char *bytes = NULL;
    size_t len = 0;
    kv_error err = {0};
    int rc = distill_chat_render(fmt, cJSON_GetObjectItem(j, "messages"), text, &bytes, &len, &err);
    if (!rc) rc = distill_chat_tokenize(tok, *text, bytes, len, ids, asst, n, "t", &err);
    CHECK(rc == 0, "conversation: %s", err.msg);
    free(bytes);
    cJSON_Delete(j);
    return rc;
}

/* the decoded text of the assistant tokens */
static void assistant_text(const kv_tokenizer *tok, const int *ids, const unsigned char *asst,
                           int n, char *out, size_t cap) {
    int sel[512], k = 0;
    for (int i = 0; i < n && k < 512; i++)
        if (asst[i]) sel[k++] = ids[i];
    char *s = NULL;
    size_t len = 0;
    kv_error err = {0};
    out[0] = 0;
    if (kv_tokenizer_decode_ex(tok, sel, k, 0, &s, &len, &err) == 0) snprintf(out, cap, "%s", s);
    free(s);
}

static void test_fallback(const kv_tokenizer *tok, const distill_chat_format *fmt) {
    char *text = NULL, got[512];
    int *ids = NULL, n = 0;
    unsigned char *asst = NULL;
    if (conv_tokens(tok, fmt, good, &text, &ids, &asst, &n)) return;
    CHECK(!strcmp(text, "<s><|user|>\nHi\n<|assistant|>\nHello there.</s>\n"), "fallback: [%s]",
          text);
    assistant_text(tok, ids, asst, n, got, sizeof got);
    CHECK(!strcmp(got, "Hello there.</s>"), "fallback assistant tokens: [%s]", got);
    CHECK(ids[0] == kv_tokenizer_bos(tok), "fallback starts with BOS");
    /* the kl_mask is the assistant flags shifted by one */
    distill_tokens d = {0};
    kv_error err = {0};
    CHECK(distill_tokens_from_chat(&d, good, strlen(good), tok, fmt, "g", &err) == 0, "%s",
          err.msg);
    CHECK(d.n == n && d.kl_mask, "one conversation: %ld tokens", d.n);
    int same = d.n == n;
    for (int i = 0; same && i < n; i++)
        same = d.ids[i] == ids[i] && d.kl_mask[i] == (i + 1 < n ? asst[i + 1] : 0);
    CHECK(same, "kl_mask[i] = assistant(i + 1)");
    distill_tokens_free(&d);
    free(text), free(ids), free(asst);
}

static const char *const zephyr_config =
    "{\"bos_token\": {\"content\": \"<s>\", \"lstrip\": false}, \"eos_token\": \"</s>\", "
    "\"chat_template\": \"{% for message in messages %}\\n{% if message['role'] == 'user' "
    "%}\\n{{ '<|user|>\\n' + message['content'] + eos_token }}\\n{% elif message['role'] == "
    "'system' %}\\n{{ '<|system|>\\n' + message['content'] + eos_token }}\\n{% elif "
    "message['role'] == 'assistant' %}\\n{{ '<|assistant|>\\n'  + message['content'] + eos_token "
    "}}\\n{% endif %}\\n{% if loop.last and add_generation_prompt %}\\n{{ '<|assistant|>' "
    "}}\\n{% endif %}\\n{% endfor %}\"}";

static void test_config_template(const kv_tokenizer *tok, const char *model) {
    char path[600];
    snprintf(path, sizeof path, "%.500s/tokenizer_config.json", model);
    CHECK(write_text(path, zephyr_config) == 0, "write tokenizer_config.json");
    distill_chat_format fmt;
    kv_error err = {0};
    const char *dirs[] = {model};
    int rc = distill_chat_format_load(&fmt, "auto", dirs, 1, tok, &err);
    CHECK(rc == 0 && fmt.tpl && strstr(fmt.source, "tokenizer_config.json: chat_template"),
          "template from tokenizer_config.json: %s", err.msg);
    if (rc) return;
    char *text = NULL, got[512];
    int *ids = NULL, n = 0;
    unsigned char *asst = NULL;
    if (!conv_tokens(tok, &fmt, good, &text, &ids, &asst, &n)) {
        CHECK(!strcmp(text, "<|user|>\nHi</s>\n<|assistant|>\nHello there.</s>\n"),
              "zephyr render: [%s]", text);
        assistant_text(tok, ids, asst, n, got, sizeof got);
        CHECK(!strcmp(got, "Hello there.</s>"), "end of turn counts: [%s]", got);
        /* the user's </s> is not an assistant token */
        int eos_user = 0;
        for (int i = 0; i < n; i++)
            if (ids[i] == kv_tokenizer_eos(tok) && !asst[i]) eos_user++;
        CHECK(eos_user == 1, "the user turn's EOS is outside: %d", eos_user);
    }
    free(text), free(ids), free(asst);
    distill_chat_format_free(&fmt);
    /* fallback on request; an unsupported template names the file and the construct */
    CHECK(distill_chat_format_load(&fmt, "fallback", dirs, 1, tok, &err) == 0 && !fmt.tpl,
          "--chat-template fallback");
    distill_chat_format_free(&fmt);
    CHECK(write_text(path, "{\"chat_template\": \"{% macro m() %}{% endmacro %}\"}") == 0, "w");
    rc = distill_chat_format_load(&fmt, "auto", dirs, 1, tok, &err);
    CHECK(rc == KV_EUNSUPPORTED && strstr(err.msg, "tokenizer_config.json: chat_template") &&
              strstr(err.msg, "'macro', which kvdistill does not support; use --chat-template "
                              "fallback"),
          "unsupported template: %s", err.msg);
    distill_chat_format_free(&fmt);
    CHECK(write_text(path, "{\"chat_template\": 7}") == 0, "w");
    rc = distill_chat_format_load(&fmt, "auto", dirs, 1, tok, &err);
    CHECK(rc == KV_EFORMAT && strstr(err.msg, "chat_template: a number"), "bad type: %s", err.msg);
    distill_chat_format_free(&fmt);
    unlink(path);
}

/* ---- acceptance: the masked KL ---- */

/* temp^2 KL(softmax(zt/temp) || softmax(zs/temp)) of one row, in double */
static double row_kl(const float *zs, const float *zt, int V, double temp) {
    double ms = -INFINITY, mt = -INFINITY, ss = 0, st = 0, kl = 0;
    for (int i = 0; i < V; i++) ms = fmax(ms, zs[i] / temp), mt = fmax(mt, zt[i] / temp);
    for (int i = 0; i < V; i++) ss += exp(zs[i] / temp - ms), st += exp(zt[i] / temp - mt);
    for (int i = 0; i < V; i++) {
        const double lp = zt[i] / temp - mt - log(st), lq = zs[i] / temp - ms - log(ss);
        kl += exp(lp) * (lp - lq);
    }
    return temp * temp * kl;
}

/* held-out evaluation of chat data: the assistant figures are the KL and perplexity over the
 * masked positions, computed here from the runs' logits; without a mask there are none */
static void test_masked_eval(kvt_run *rs, kvt_run *rt, distill_tokens *d, int V) {
    const int B = rs->B, T = rs->T;
    distill_seqs seqs = {.ids = d->ids, .kl_mask = d->kl_mask, .n = B, .T = T};
    distill_eval_result ev, plain;
    kv_error err = {0};
    int rc = distill_evaluate(rs, rt, &seqs, 0, &ev, NULL, NULL, &err);
    CHECK(rc == 0, "evaluate: %s", err.msg);
    if (rc) return;
    double kl = 0, nll_s = 0, nll_t = 0;
    long rows = 0, pred = 0;
    for (int k = 0; k < B; k++)
        for (int p = 0; p < T; p++) {
            const size_t row = (size_t)k * T + p;
            if (!d->kl_mask[row]) continue;
            kl += row_kl(rs->logits + row * V, rt->logits + row * V, V, 1.0), rows++;
            if (p + 1 == T) continue;
            nll_s += kv_cross_entropy(rs->logits + row * V, V, d->ids[row + 1]);
            nll_t += kv_cross_entropy(rt->logits + row * V, V, d->ids[row + 1]);
            pred++;
        }
    CHECK(ev.asst_kl_rows == rows && ev.asst_tokens == pred && pred > 0 && pred < ev.tokens,
          "assistant rows %ld (want %ld), positions %ld (want %ld of %ld)", ev.asst_kl_rows, rows,
          ev.asst_tokens, pred, ev.tokens);
    CHECK_NEAR(ev.asst_kl, kl / rows, 1e-5 * kl / rows, "assistant KL");
    CHECK_NEAR(ev.asst_student_ppl, exp(nll_s / pred), 1e-9 * exp(nll_s / pred),
               "assistant student perplexity");
    CHECK_NEAR(ev.asst_teacher_ppl, exp(nll_t / pred), 1e-9 * exp(nll_t / pred),
               "assistant teacher perplexity");
    CHECK(fabs(ev.asst_kl - ev.kl) > 1e-3 * ev.kl, "assistant KL %g = overall %g", ev.asst_kl,
          ev.kl);
    seqs.kl_mask = NULL;
    rc = distill_evaluate(rs, rt, &seqs, 0, &plain, NULL, NULL, &err);
    CHECK(rc == 0 && plain.asst_tokens == 0 && plain.asst_kl_rows == 0 && isnan(plain.asst_kl) &&
              plain.kl == ev.kl && plain.student_ppl == ev.student_ppl,
          "without a mask: no assistant figures, the same overall ones (%s)", err.msg);
}

static void test_masked_kl(const kv_tokenizer *tok, const distill_chat_format *fmt,
                           const char *model) {
    /* chat tokens: a few conversations packed */
    const char *jsonl =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Be kind.\"},{\"role\":\"user\","
        "\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello there.\"}]}\n"
        "{\"messages\":[{\"role\":\"user\",\"content\":\"A cat?\"},{\"role\":\"assistant\","
        "\"content\":\"A cat sat.\"},{\"role\":\"user\",\"content\":\"And?\"},{\"role\":"
        "\"assistant\",\"content\":\"On a mat.\"}]}\n";
    distill_tokens d = {0};
    kv_error err = {0};
    int rc = distill_tokens_from_chat(&d, jsonl, strlen(jsonl), tok, fmt, "a", &err);
    CHECK(rc == 0, "chat tokens: %s", err.msg);
    enum { B = 2, T = 24, N = B * T };
    CHECK(d.n >= N, "%ld tokens", d.n);
    if (rc || d.n < N) return distill_tokens_free(&d);
    int count = 0;
    for (int i = 0; i < N; i++) count += d.kl_mask[i];
    CHECK(count > 0 && count < N, "the first %d positions: %d assistant", N, count);

    kvt_model teacher, student;
    rc = kvt_model_load(&teacher, model, &err);
    CHECK(rc == 0, "load: %s", err.msg);
    if (rc) return distill_tokens_free(&d);
    kv_map map;
    rc = kvmap_parse(&map, "swiftkv:2", teacher.dims.n_layers, &err);
    if (!rc) rc = distill_student_init(&student, &teacher, &map, DISTILL_INIT_MEAN, &err);
    CHECK(rc == 0, "student: %s", err.msg);
    if (rc) {
        kvt_model_free(&teacher);
        return distill_tokens_free(&d);
    }
    CHECK(kvt_model_set_trainable_distill(&student, &err) > 0, "trainable: %s", err.msg);
    for (int i = 0; i < student.n_params; i++) { /* off the teacher: a KL to train */
        kvt_param *p = &student.params[i];
        for (size_t k = 0; p->trainable && k < p->n; k++)
            p->w[k] += 0.05f * (float)sin((double)(k * 7 + (size_t)i));
    }
    kv_backend cpu;
    kvt_run rs, rt;
    CHECK(kv_backend_cpu_init(&cpu, 0, &err) == 0, "backend");
    CHECK(kvt_run_init_grad(&rs, &cpu, &student, B, T, 3, 1, 1, &err) == 0 &&
              kvt_run_init(&rt, &cpu, &teacher, B, T, 3, 0, &err) == 0,
          "runs: %s", err.msg);
    const int V = teacher.dims.vocab;
    float weight[N], ones[N];
    for (int i = 0; i < N; i++) weight[i] = d.kl_mask[i] ? (float)N / (float)count : 0.0f;
    for (int i = 0; i < N; i++) ones[i] = 1.0f;
    const kvt_loss_weights lw = {2.0f, 0.0f, 0.0f}; /* the KL alone */
    kvt_loss masked, all, all_ones;
    rc = kvt_distill_microbatch(&rs, &rt, d.ids, weight, &lw, 1.0f, &masked, &err);
    CHECK(rc == 0, "masked step: %s", err.msg);
    /* outside assistant turns: exactly zero gradient on the student's logits */
    int zero_out = 1, nonzero_in = 1;
    for (int t = 0; t < N && !rc; t++) {
        int any = 0;
        for (int v = 0; v < V; v++) any |= rs.dlogits[(size_t)t * V + v] != 0.0f;
        if (d.kl_mask[t]) nonzero_in &= any;
        else zero_out &= !any;
    }
    CHECK(zero_out, "positions outside assistant turns have a KL gradient");
    CHECK(nonzero_in, "an assistant position has no KL gradient");
    /* the masked KL = mean over assistant positions of per-position KLs computed here */
    double ref_masked = 0, ref_all = 0;
    for (int t = 0; t < N; t++) {
        const double kl = row_kl(rs.logits + (size_t)t * V, rt.logits + (size_t)t * V, V, 2.0);
        ref_all += kl;
        if (d.kl_mask[t]) ref_masked += kl;
    }
    ref_masked /= count, ref_all /= N;
    CHECK_NEAR(masked.kl, ref_masked, 1e-6 * ref_masked, "masked KL = mean over assistant tokens");
    CHECK(fabs(ref_masked - ref_all) > 1e-3 * ref_all, "the mask changes the loss (%g vs %g)",
          ref_masked, ref_all);
    /* --loss-tokens all: no weights, the unmasked mean; weights of 1 give the same bits */
    rc = kvt_distill_microbatch(&rs, &rt, d.ids, NULL, &lw, 0.0f, &all, &err);
    CHECK(rc == 0, "unmasked: %s", err.msg);
    CHECK_NEAR(all.kl, ref_all, 1e-9 * ref_all, "unmasked KL = mean over every position");
    rc = kvt_distill_microbatch(&rs, &rt, d.ids, ones, &lw, 0.0f, &all_ones, &err);
    CHECK(rc == 0 && all_ones.kl == all.kl, "weights of 1: %.17g vs %.17g", all_ones.kl, all.kl);
    test_masked_eval(&rs, &rt, &d, V);
    kvt_run_free(&rs);
    kvt_run_free(&rt);
    kv_backend_free(&cpu);
    kvt_model_free(&student);
    kvt_model_free(&teacher);
    distill_tokens_free(&d);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/kvforge_chat_XXXXXX");
    if (!mkdtemp(dir)) return 1;
    char model[300];
    snprintf(model, sizeof model, "%.250s/model", dir);
    synth_spec spec;
    synth_preset(&spec, "tiny");
    kv_error err = {0};
    int rc = synth_write(model, &spec, &err);
    CHECK(rc == 0, "synth: %s", err.msg);
    kv_tokenizer *tok = NULL;
    char path[600];
    snprintf(path, sizeof path, "%.500s/tokenizer.json", model);
    if (!rc) rc = kv_tokenizer_load(&tok, path, &err);
    CHECK(rc == 0, "tokenizer: %s", err.msg);
    if (!rc) {
        distill_chat_format fmt;
        const char *dirs[] = {model};
        CHECK(distill_chat_format_load(&fmt, "auto", dirs, 1, tok, &err) == 0 && !fmt.tpl &&
                  !strcmp(fmt.source, "fallback") && !strcmp(fmt.bos, "<s>") &&
                  !strcmp(fmt.eos, "</s>"),
              "no tokenizer_config.json: the fallback, BOS/EOS from the tokenizer (%s)", err.msg);
        test_validation(tok, &fmt);
        test_fallback(tok, &fmt);
        test_masked_kl(tok, &fmt, model);
        test_config_template(tok, model);
        distill_chat_format_free(&fmt);
    }
    kv_tokenizer_free(tok);
    kv_remove_flat_dir(model);
    rmdir(dir);
    return check_done("test_distill_chat");
}

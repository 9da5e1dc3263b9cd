/* report.json (distill_report.h). */
#include "transform/train/distill_report.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

void distill_map_name(const kv_map *m, char *out, size_t cap) {
    snprintf(out, cap, "%s", m->name);
    if (m->kind != KVMAP_CROSS) return;
    static const char *const cfgs[] = {"pizza", "sandwich", "lasagna"};
    static const char *const tgts[] = {"bottom", "top", "middle"};
    const int l = kvmap_n_slots(m);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            char spec[64];
            kv_map c;
            snprintf(spec, sizeof spec, "%s-%s:%d", cfgs[i], tgts[j], l);
            if (!kvmap_parse(&c, spec, m->n_layers, NULL) &&
                !memcmp(c.kv_layer_of, m->kv_layer_of, sizeof(int) * (size_t)m->n_layers)) {
                snprintf(out, cap, "%s", spec);
                return;
            }
        }
}

int distill_report_write(const distill_opts *o, long warmup_steps, const kv_map *map, int n_layers,
                         const distill_report *rep, kv_error *err) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return kv_fail(err, KV_ENOMEM, "report: out of memory");
    cJSON_AddStringToObject(j, "teacher", o->teacher_dir);
    cJSON_AddStringToObject(j, "student", o->student_dir);
    cJSON_AddStringToObject(j, "map", rep->map_name);
    if (map->kind == KVMAP_CROSS) cJSON_AddStringToObject(j, "layer_types", rep->layer_types);
    cJSON_AddNumberToObject(j, "kv_slots", kvmap_n_slots(map));
    cJSON_AddNumberToObject(j, "layers", n_layers);
    cJSON_AddNumberToObject(j, "teacher_ppl", rep->teacher_ppl);
    cJSON_AddNumberToObject(j, "student_before_ppl", rep->student_before_ppl);
    cJSON_AddNumberToObject(j, "student_after_ppl", rep->student_after_ppl);
    cJSON_AddNumberToObject(j, "kl_before", rep->kl_before);
    cJSON_AddNumberToObject(j, "kl_after", rep->kl_after);
    const double gap = rep->student_before_ppl - rep->teacher_ppl;
    const double closed = rep->student_before_ppl - rep->student_after_ppl;
    cJSON_AddNumberToObject(j, "gap_closed", gap != 0 ? closed / gap : 0);
    cJSON_AddNumberToObject(j, "ppl_ratio_after", rep->student_after_ppl / rep->teacher_ppl);
    cJSON_AddNumberToObject(j, "tokens_trained", (double)rep->tokens_trained);
    cJSON_AddNumberToObject(j, "steps", (double)rep->steps);
    cJSON_AddNumberToObject(j, "seconds", rep->seconds);
    cJSON_AddNumberToObject(j, "train_seconds", rep->train_seconds);
    cJSON_AddNumberToObject(j, "tokens_per_second", rep->tokens_per_s);
    cJSON_AddNumberToObject(j, "resumed_from_step", (double)rep->resumed_from_step);
    cJSON_AddNumberToObject(j, "eval_tokens", (double)rep->eval_tokens);
    cJSON_AddNumberToObject(j, "train_tokens_available", (double)rep->train_tokens_available);
    cJSON_AddNumberToObject(j, "trainable_params", (double)rep->trainable_params);
    if (rep->chat) { /* text runs keep their report */
        cJSON_AddStringToObject(j, "loss_tokens", rep->loss_assistant ? "assistant" : "all");
        cJSON_AddNumberToObject(j, "loss_tokens_trained", (double)rep->loss_tokens_trained);
        cJSON_AddStringToObject(j, "chat_template", rep->chat_template);
        cJSON *a = rep->asst_eval_tokens > 0 ? cJSON_AddObjectToObject(j, "assistant_eval") : NULL;
        if (a) { /* held-out figures over the assistant positions */
            cJSON_AddNumberToObject(a, "tokens", (double)rep->asst_eval_tokens);
            cJSON_AddNumberToObject(a, "teacher_ppl", rep->asst_teacher_ppl);
            cJSON_AddNumberToObject(a, "student_before_ppl", rep->asst_student_before_ppl);
            cJSON_AddNumberToObject(a, "student_after_ppl", rep->asst_student_after_ppl);
            cJSON_AddNumberToObject(a, "kl_before", rep->asst_kl_before);
            cJSON_AddNumberToObject(a, "kl_after", rep->asst_kl_after);
        }
    }
    cJSON *opt = cJSON_AddObjectToObject(j, "options");
    cJSON_AddNumberToObject(opt, "seq_len", o->seq_len);
    cJSON_AddNumberToObject(opt, "batch", o->batch);
    cJSON_AddNumberToObject(opt, "accum", o->accum);
    cJSON_AddNumberToObject(opt, "lr", o->lr);
    cJSON_AddNumberToObject(opt, "warmup_steps", (double)warmup_steps);
    cJSON_AddStringToObject(opt, "decay",
                            o->decay == LR_COSINE     ? "cosine"
                            : o->decay == LR_CONSTANT ? "constant"
                                                      : "linear");
    cJSON_AddNumberToObject(opt, "clip", o->clip);
    cJSON_AddNumberToObject(opt, "temperature", o->temperature);
    cJSON_AddNumberToObject(opt, "mse_weight", o->mse_weight);
    cJSON_AddNumberToObject(opt, "ce_weight", o->ce_weight);
    cJSON_AddNumberToObject(opt, "passes", o->passes);
    cJSON_AddNumberToObject(opt, "grad_passes", o->grad_passes);
    cJSON_AddNumberToObject(opt, "seed", (double)o->seed);
    if (rep->processes > 1) /* data parallel: the same run, split over this many processes */
        cJSON_AddNumberToObject(opt, "processes", rep->processes);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return kv_fail(err, KV_ENOMEM, "report: out of memory");
    char path[4096];
    int rc = kv_join(path, sizeof path, o->out_dir, "report.json", err);
    if (!rc) {
        size_t len = strlen(text);
        text[len] = '\n';
        rc = kv_write_file_atomic(path, text, len + 1, err);
    }
    free(text);
    return rc;
}

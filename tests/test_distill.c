/* Short distillation runs on stories260K: the loss goes down, only the tensors METHODS.md s3
 * lists change (every other byte of the output equals the student's), report.json has its keys,
 * the output loads again, and a run stopped after its checkpoint and resumed ends with exactly
 * the weights (and per-step losses) of an uninterrupted run. The same runs on a backend that is
 * not unified (split_backend.h) end bit for bit where the CPU backend's do. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/safetensors.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/split_backend.h"
#include "transform/train/distill.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_model.h"

#define MODEL SHARED_DIR "/models/stories260K"

static char tmp[256];

static void path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmp, name);
}

static int make_student(const char *spec, const char *name) {
    kv_error err = {0};
    kvt_model t, s;
    kv_map map;
    char dir[512];
    path(dir, sizeof dir, name);
    int rc = kvt_model_load(&t, MODEL, &err);
    if (!rc && !(rc = kvmap_parse(&map, spec, t.dims.n_layers, &err)) &&
        !(rc = distill_student_init(&s, &t, &map, DISTILL_INIT_MEAN, &err))) {
        rc = kvt_model_save(&s, dir, NULL, &err);
        kvt_model_free(&s);
    }
    kvt_model_free(&t);
    CHECK(rc == 0, "student %s: %s", spec, err.msg);
    return rc;
}

static void base_opts(distill_opts *o, const char *student, const char *out, const char **data) {
    static char sdir[512], odir[512];
    distill_opts_default(o);
    path(sdir, sizeof sdir, student);
    path(odir, sizeof odir, out);
    o->teacher_dir = MODEL;
    o->student_dir = strdup(sdir);
    o->out_dir = strdup(odir);
    o->data = data;
    o->n_data = 1;
    o->seq_len = 32;
    o->batch = 4;
    o->steps = 12;
    o->lr = 3e-3;
    o->passes = 3;
    o->eval_max_seqs = 8;
    o->eval_frac = 0.1;
}

static void free_opts(distill_opts *o) {
    free((char *)o->student_dir);
    free((char *)o->out_dir);
}

/* tensors of two safetensors files: names equal; changed[] gets the names whose bytes differ */
static int diff_tensors(const char *a, const char *b, char changed[][96], int cap) {
    kv_error err = {0};
    st_file fa, fb;
    if (st_open(&fa, a, &err) || st_open(&fb, b, &err)) {
        CHECK(0, "open %s / %s: %s", a, b, err.msg);
        return -1;
    }
    int n = 0;
    CHECK(fa.n_tensors == fb.n_tensors, "same tensor count %d vs %d", fa.n_tensors, fb.n_tensors);
    for (int i = 0; i < fa.n_tensors && i < fb.n_tensors; i++) {
        const st_tensor *x = &fa.tensors[i], *y = st_find(&fb, x->name);
        CHECK(y && y->dtype == x->dtype && y->n_bytes == x->n_bytes, "%s in both", x->name);
        if (y && y->n_bytes == x->n_bytes && memcmp(x->data, y->data, x->n_bytes) && n < cap)
            snprintf(changed[n++], 96, "%s", x->name);
    }
    st_close(&fa);
    st_close(&fb);
    return n;
}

static int in_list(const char *name, const char *const *list) {
    for (; *list; list++)
        if (!strcmp(name, *list)) return 1;
    return 0;
}

static void check_only_listed(const char *student, const char *out, const char *const *want) {
    char a[512], b[512], changed[64][96];
    snprintf(a, sizeof a, "%s/%s/model.safetensors", tmp, student);
    snprintf(b, sizeof b, "%s/%s/model.safetensors", tmp, out);
    int n = diff_tensors(a, b, changed, 64), n_want = 0;
    for (int i = 0; i < n; i++)
        CHECK(in_list(changed[i], want), "%s changed but is not trainable", changed[i]);
    for (; want[n_want]; n_want++) {
        int found = 0;
        for (int i = 0; i < n; i++) found |= !strcmp(changed[i], want[n_want]);
        CHECK(found, "%s did not change", want[n_want]);
    }
}

static cJSON *read_json(const char *file) {
    char *text = NULL;
    size_t len;
    kv_error err = {0};
    if (kv_read_file(file, &text, &len, 1 << 20, &err)) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    return j;
}

static int log_losses(const char *file, char lines[][160], int cap) {
    FILE *f = fopen(file, "r");
    if (!f) return -1;
    char buf[512];
    int n = 0;
    while (fgets(buf, sizeof buf, f) && n < cap) {
        char *s = strstr(buf, ", \"seconds\"");
        if (s) *s = 0; /* everything but the wall time must repeat */
        buf[159] = 0;
        memcpy(lines[n++], buf, strlen(buf) + 1);
    }
    fclose(f);
    return n;
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/kvtdistillXXXXXX");
    if (!mkdtemp(tmp)) return 1;
    kv_kernels_set_threads(1);
    kv_error err = {0};
    /* ~40 KB of the fixture's text as training data */
    char data_path[512];
    path(data_path, sizeof data_path, "data.txt");
    {
        char *text = NULL;
        size_t len;
        int rc = kv_read_file(SHARED_DIR "/data/tinystories_val.txt", &text, &len, 1 << 22, &err);
        CHECK(rc == 0, "fixture text: %s", err.msg);
        if (rc) return check_done("test_distill");
        kv_write_file_atomic(data_path, text, len < 40000 ? len : 40000, &err);
        free(text);
    }
    const char *data[] = {data_path};
    if (make_student("lasagna-top:2", "st_cross") || make_student("swiftkv:3", "st_skv"))
        return check_done("test_distill");

    /* uninterrupted cross-layer run (top targets: iterative plan, 3 passes) */
    distill_opts o;
    distill_report rep;
    base_opts(&o, "st_cross", "a", data);
    o.save_every = 4;
    int rc = distill_train(&o, NULL, NULL, &rep, &err);
    CHECK(rc == 0, "run a: %s", err.msg);
    CHECK(rep.kl_after < 0.9 * rep.kl_before, "KL falls: %g -> %g", rep.kl_before, rep.kl_after);
    CHECK(rep.student_after_ppl < rep.student_before_ppl, "perplexity falls: %g -> %g",
          rep.student_before_ppl, rep.student_after_ppl);
    CHECK(rep.tokens_trained == 12 * 4 * 32 && rep.steps == 12, "tokens %ld", rep.tokens_trained);
    static const char *const cross_trainable[] = {
        "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight",
        "model.layers.3.self_attn.q_proj.weight", "model.layers.2.self_attn.k_proj.weight",
        "model.layers.2.self_attn.v_proj.weight", "model.layers.4.self_attn.k_proj.weight",
        "model.layers.4.self_attn.v_proj.weight", NULL};
    check_only_listed("st_cross", "a", cross_trainable);
    char file[600];
    snprintf(file, sizeof file, "%s/a/report.json", tmp);
    cJSON *j = read_json(file);
    CHECK(j != NULL, "report.json parses");
    static const char *const keys[] = {"teacher_ppl", "student_before_ppl", "student_after_ppl",
                                       "kl_before",   "kl_after",           "tokens_trained",
                                       "seconds"};
    for (size_t k = 0; j && k < sizeof keys / sizeof *keys; k++)
        CHECK(cJSON_IsNumber(cJSON_GetObjectItem(j, keys[k])), "report.json: %s", keys[k]);
    if (j) {
        CHECK(cJSON_GetObjectItem(j, "tokens_trained")->valuedouble == 12 * 4 * 32, "tokens key");
        CHECK(cJSON_GetObjectItem(j, "teacher_ppl")->valuedouble < rep.student_before_ppl,
              "teacher better than the zero-shot student");
    }
    cJSON_Delete(j);
    /* the output is a complete model directory again */
    kvt_model back;
    snprintf(file, sizeof file, "%s/a", tmp);
    rc = kvt_model_load(&back, file, &err);
    CHECK(rc == 0, "output loads: %s", err.msg);
    if (!rc) {
        CHECK(!strcmp(back.cfg.map.name, "lasagna-top:2") || back.cfg.map.kind == KVMAP_CROSS,
              "output keeps the map (%s)", back.cfg.map.name);
        kvt_model_free(&back);
    }
    snprintf(file, sizeof file, "%s/a/tokenizer.json", tmp);
    CHECK(kv_path_exists(file), "tokenizer copied");
    char lines_a[32][160], lines_b[32][160];
    snprintf(file, sizeof file, "%s/a/train_log.jsonl", tmp);
    CHECK(log_losses(file, lines_a, 32) == 12, "12 log lines");

    /* stopped after step 6 (checkpoint at 4: steps 5-6 are lost, as with SIGKILL), resumed */
    distill_opts ob;
    base_opts(&ob, "st_cross", "b", data);
    ob.save_every = 4;
    ob.stop_after = 6;
    rc = distill_train(&ob, NULL, NULL, &rep, &err);
    CHECK(rc == 0, "run b (stopped): %s", err.msg);
    snprintf(file, sizeof file, "%s/b/model.safetensors", tmp);
    CHECK(!kv_path_exists(file), "no model written by the stopped run");
    rc = distill_train(&ob, NULL, NULL, &rep, &err);
    CHECK(rc != 0 && strstr(err.msg, "not empty"), "no --resume into a used dir: %s", err.msg);
    ob.stop_after = 0;
    ob.resume = 1;
    ob.lr = 1e-3;
    rc = distill_train(&ob, NULL, NULL, &rep, &err);
    CHECK(rc != 0 && strstr(err.msg, "other options"), "resume with another lr refused: %s",
          err.msg);
    ob.lr = o.lr;
    rc = distill_train(&ob, NULL, NULL, &rep, &err);
    CHECK(rc == 0, "run b (resumed): %s", err.msg);
    CHECK(rep.resumed_from_step == 4, "resumed from step %ld", rep.resumed_from_step);
    char fa[600], fb[600], changed[4][96];
    snprintf(fa, sizeof fa, "%s/a/model.safetensors", tmp);
    snprintf(fb, sizeof fb, "%s/b/model.safetensors", tmp);
    CHECK(diff_tensors(fa, fb, changed, 4) == 0, "resumed weights == uninterrupted weights");
    snprintf(file, sizeof file, "%s/b/train_log.jsonl", tmp);
    int nb = log_losses(file, lines_b, 32), same = nb == 12;
    for (int i = 0; i < 12 && same; i++) same = !strcmp(lines_a[i], lines_b[i]);
    CHECK(same, "resumed log == uninterrupted log (%d lines)", nb);
    /* resuming a finished run changes nothing */
    rc = distill_train(&ob, NULL, NULL, &rep, &err);
    CHECK(rc == 0 && rep.resumed_from_step == 12, "resume after the end: %s", err.msg);
    CHECK(diff_tensors(fa, fb, changed, 4) == 0, "still equal");
    free_opts(&o);
    free_opts(&ob);

    /* SwiftKV, with a held-out file and gradient accumulation */
    base_opts(&o, "st_skv", "c", data);
    const char *eval[] = {data_path};
    o.eval_data = eval;
    o.n_eval_data = 1;
    o.accum = 2;
    o.steps = 6;
    rc = distill_train(&o, NULL, NULL, &rep, &err);
    CHECK(rc == 0, "run c: %s", err.msg);
    CHECK(rep.kl_after < rep.kl_before, "SwiftKV KL falls: %g -> %g", rep.kl_before, rep.kl_after);
    CHECK(rep.tokens_trained == 6 * 2 * 4 * 32, "accumulated tokens %ld", rep.tokens_trained);
    static const char *const skv_trainable[] = {"model.norm_swiftkv.weight",
                                                "model.layers.3.self_attn.q_proj_swiftkv.weight",
                                                "model.layers.4.self_attn.q_proj_swiftkv.weight",
                                                "model.layers.3.self_attn.k_proj_swiftkv.weight",
                                                "model.layers.3.self_attn.v_proj_swiftkv.weight",
                                                "model.layers.4.self_attn.k_proj_swiftkv.weight",
                                                "model.layers.4.self_attn.v_proj_swiftkv.weight",
                                                NULL};
    check_only_listed("st_skv", "c", skv_trainable);
    free_opts(&o);

    /* a non-unified backend: gradient through 2 passes and the cross-entropy term on, so every
     * path of the step runs; weights, optimiser state, logs and report numbers equal the CPU
     * backend's bit for bit, and so do they after a stop and a resume on it */
    kv_backend split;
    rc = split_backend_init(&split, 1, &err);
    CHECK(rc == 0, "split backend: %s", err.msg);
    const char *outs[] = {"e_cpu", "e_split", "e_resumed"};
    distill_report reps[3];
    for (int k = 0; k < 3 && !rc; k++) {
        base_opts(&o, "st_cross", outs[k], data);
        o.steps = 8;
        o.grad_passes = 2;
        o.ce_weight = 0.3;
        o.save_every = 4;
        o.backend = k ? &split : NULL;
        if (k == 2) { /* stopped after step 6, resumed from the checkpoint of step 4 */
            o.stop_after = 6;
            rc = distill_train(&o, NULL, NULL, &reps[k], &err);
            CHECK(rc == 0, "split run (stopped): %s", err.msg);
            o.stop_after = 0;
            o.resume = 1;
        }
        if (!rc) rc = distill_train(&o, NULL, NULL, &reps[k], &err);
        CHECK(rc == 0, "run %s: %s", outs[k], err.msg);
        free_opts(&o);
    }
    for (int k = 1; k < 3 && !rc; k++) {
        static const char *const files[] = {"model.safetensors", "checkpoint/state.safetensors"};
        for (int f = 0; f < 2; f++) {
            snprintf(fa, sizeof fa, "%s/%s/%s", tmp, outs[0], files[f]);
            snprintf(fb, sizeof fb, "%s/%s/%s", tmp, outs[k], files[f]);
            CHECK(diff_tensors(fa, fb, changed, 4) == 0, "%s: %s differs from the CPU run's",
                  outs[k], files[f]);
        }
        snprintf(file, sizeof file, "%s/%s/train_log.jsonl", tmp, outs[0]);
        log_losses(file, lines_a, 32);
        snprintf(file, sizeof file, "%s/%s/train_log.jsonl", tmp, outs[k]);
        nb = log_losses(file, lines_b, 32), same = nb == 8;
        for (int i = 0; i < 8 && same; i++) same = !strcmp(lines_a[i], lines_b[i]);
        CHECK(same, "%s: step log == the CPU run's (%d lines)", outs[k], nb);
        CHECK(reps[k].student_before_ppl == reps[0].student_before_ppl &&
                  reps[k].student_after_ppl == reps[0].student_after_ppl &&
                  reps[k].teacher_ppl == reps[0].teacher_ppl &&
                  reps[k].kl_before == reps[0].kl_before && reps[k].kl_after == reps[0].kl_after,
              "%s: report numbers == the CPU run's (ppl after %.9g vs %.9g)", outs[k],
              reps[k].student_after_ppl, reps[0].student_after_ppl);
    }
    CHECK(reps[2].resumed_from_step == 4, "split run resumed from step %ld",
          reps[2].resumed_from_step);
    kv_backend_free(&split);
    CHECK(split_allocations() == 0, "%d device allocations left behind", split_allocations());

    /* an identity "student" has nothing to train */
    base_opts(&o, "st_skv", "d", data);
    free((char *)o.student_dir);
    o.student_dir = strdup(MODEL);
    rc = distill_train(&o, NULL, NULL, &rep, &err);
    CHECK(rc != 0 && strstr(err.msg, "identity"), "identity student refused: %s", err.msg);
    free((char *)o.student_dir);
    free((char *)o.out_dir);

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    return check_done("test_distill");
}

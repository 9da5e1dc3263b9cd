/* Distillation throughput: tokens/s of one whole step (teacher forward, student forward and
 * backward, KL + MSE, clipping, AdamW) on stories260K and on the synthetic stories110M shape,
 * with the teacher forward alone as the baseline measured in the same run (ratio = step time /
 * forward time). Random token ids; the student is built in memory from the teacher.
 * Usage: distill_bench [--quick] (env KV_THREADS: kernel threads) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "transform/synth/synth.h"
#include "kernels/kernels.h"
#include "kernels/backend.h"
#include "transform/train/adamw.h"
#include "transform/train/distill_init.h"
#include "transform/train/optim.h"
#include "transform/train/train_forward.h"
#include "transform/train/train_model.h"

static int bench(const char *label, const char *dir, const char *spec, int B, int T, int passes,
                 int steps) {
    kv_error err = {0};
    kvt_model t, s;
    kv_map map;
    if (kvt_model_load(&t, dir, &err)) return fprintf(stderr, "%s: %s\n", label, err.msg), 1;
    if (kvmap_parse(&map, spec, t.dims.n_layers, &err) ||
        distill_student_init(&s, &t, &map, DISTILL_INIT_MEAN, &err) ||
        kvt_model_set_trainable_distill(&s, &err) < 0) {
        fprintf(stderr, "%s: %s\n", label, err.msg);
        kvt_model_free(&t);
        return 1;
    }
    kv_backend cpu;
    kvt_run rs, rt;
    kvt_optim opt;
    if (kv_backend_cpu_init(&cpu, 0, &err) || kvt_run_init(&rs, &cpu, &s, B, T, passes, 1, &err) ||
        kvt_run_init(&rt, &cpu, &t, B, T, 1, 0, &err) || kvt_optim_init(&opt, &rs, &err)) {
        fprintf(stderr, "%s: %s\n", label, err.msg);
        return 1;
    }
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)B * T);
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < B * T; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tokens[i] = (int32_t)(x % (uint64_t)t.dims.vocab);
    }
    const adamw_hparams h = {0.9, 0.999, 1e-8, 0};
    /* baseline: the teacher forward alone */
    kvt_forward(&rt, tokens, &err); /* warm-up */
    double t0 = bench_seconds();
    for (int k = 0; k < steps; k++) kvt_forward(&rt, tokens, &err);
    const double fwd = (bench_seconds() - t0) / steps;
    /* whole steps: METHODS.md's loss */
    kvt_loss loss;
    const kvt_loss_weights weights = {2.0f, 1.0f, 0.0f};
    kvt_optim_zero_grads(&opt, &err);
    kvt_distill_microbatch(&rs, &rt, tokens, NULL, &weights, 1.0f, &loss, &err); /* warm-up */
    t0 = bench_seconds();
    for (int k = 0; k < steps; k++) {
        double norm = 0;
        if (kvt_optim_zero_grads(&opt, &err) ||
            kvt_distill_microbatch(&rs, &rt, tokens, NULL, &weights, 1.0f, &loss, &err) ||
            kvt_optim_grad_norm(&opt, &norm, &err) ||
            (norm > 1.0 && kvt_optim_scale_grads(&opt, (float)(1.0 / norm), &err)) ||
            kvt_optim_adamw(&opt, &h, k + 1, 1e-4, &err)) {
            fprintf(stderr, "%s: %s\n", label, err.msg);
            return 1;
        }
    }
    const double step = (bench_seconds() - t0) / steps;
    long trainable = (long)opt.count, all = 0;
    for (int i = 0; i < s.n_params; i++) all += (long)s.params[i].n;
    printf("distill %-18s %-18s T=%d B=%d: %8.0f tokens/s (step %.3f s)   teacher forward %8.0f "
           "tokens/s   ratio %.2f   trainable %ld of %ld params\n",
           label, map.name, T, B, B * T / step, step, B * T / fwd, step / fwd, trainable, all);
    fflush(stdout);
    free(tokens);
    kvt_optim_free(&opt);
    kvt_run_free(&rs);
    kvt_run_free(&rt);
    kv_backend_free(&cpu);
    kvt_model_free(&s);
    kvt_model_free(&t);
    return 0;
}

int main(int argc, char **argv) {
    const int quick = argc > 1 && !strcmp(argv[1], "--quick");
    const char *th = getenv("KV_THREADS");
    if (th) kv_kernels_set_threads(atoi(th));
    printf("threads: %d\n", kv_kernels_threads());
    const char *m260 = "../shared/models/stories260K";
    int rc = 0;
    rc |= bench("stories260K", m260, "swiftkv:3", 8, 128, 9, quick ? 5 : 30);
    rc |= bench("stories260K", m260, "pizza-bottom:3", 8, 128, 9, quick ? 5 : 30);
    rc |= bench("stories260K", m260, "lasagna-top:3", 8, 128, 9, quick ? 2 : 10);
    char dir[] = "/tmp/kvdistill_benchXXXXXX";
    if (!mkdtemp(dir)) return 1;
    synth_spec sp;
    kv_error err = {0};
    synth_preset(&sp, "stories110m");
    if (synth_write(dir, &sp, &err)) {
        fprintf(stderr, "synth: %s\n", err.msg);
        rc = 1;
    } else {
        rc |= bench("stories110M-shape", dir, "swiftkv:6", 2, 128, 9, quick ? 1 : 3);
        rc |= bench("stories110M-shape", dir, "cla:2", 2, 128, 9, quick ? 1 : 3);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}

/* The process-group seam (transform/train/dist.h) without a launcher: the single-process group
 * and its collectives, the launcher detection from the environment, the refusal of a build
 * without MPI to run under one; and the split evaluation of data-parallel runs: the parts' sums
 * of distill_evaluate_part, added, give distill_evaluate's result (stories260K, a SwiftKV
 * student, 7 held-out sequences split in 2 and 3 parts, an uneven last batch). */
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "transform/train/dist.h"
#include "transform/train/distill.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_model.h"

#define MODEL SHARED_DIR "/models/stories260K"

static const char *const LAUNCHER_VARS[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
                                            "PMIX_RANK", "SLURM_NTASKS"};

static void clear_launcher(void) {
    for (size_t i = 0; i < sizeof LAUNCHER_VARS / sizeof *LAUNCHER_VARS; i++)
        unsetenv(LAUNCHER_VARS[i]);
}

static void test_single(void) {
    kv_dist d;
    kv_error err = {0};
    kv_dist_init_single(&d);
    CHECK(d.rank == 0 && d.size == 1 && d.local_rank == 0 && d.local_size == 1, "single group");
    float a[3] = {1, 2, 3}, *bufs[1] = {a};
    size_t counts[1] = {3};
    double x[2] = {0.5, -1};
    CHECK(kv_dist_allreduce_f32(&d, bufs, counts, 1, &err) == 0 && a[2] == 3, "f32 sum of one");
    CHECK(kv_dist_allreduce_f64(&d, x, 2, &err) == 0 && x[1] == -1, "f64 sum of one");
    CHECK(kv_dist_bcast(&d, x, sizeof x, 0, &err) == 0, "bcast from 0");
    CHECK(kv_dist_bcast(&d, x, sizeof x, 1, &err) == KV_EINVAL, "bcast from a rank that is not");
    int first = 7;
    CHECK(kv_dist_fail_any(&d, 0, &first, &err) == 0 && first == -1, "no failure");
    CHECK(kv_dist_fail_any(&d, 1, &first, &err) == 0 && first == 0, "own failure");
    CHECK(kv_dist_barrier(&d, &err) == 0 && !d.broken, "barrier");
    kv_dist_free(&d);
}

static void test_launcher(void) {
    clear_launcher();
    CHECK(kv_dist_launcher_size() == 0, "no launcher");
    kv_dist d;
    kv_error err = {0};
    CHECK(kv_dist_init(&d, &err) == 0 && d.size == 1, "no launcher: one process, no MPI_Init");
    kv_dist_free(&d);
    setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
    CHECK(kv_dist_launcher_size() == 3, "mpirun -np 3");
    setenv("OMPI_COMM_WORLD_SIZE", "x3", 1);
    CHECK(kv_dist_launcher_size() == 0, "a size that is not a number");
    clear_launcher();
    setenv("PMI_SIZE", "2", 1);
    CHECK(kv_dist_launcher_size() == 2, "hydra / PMI-2");
    clear_launcher();
    setenv("PMIX_RANK", "0", 1);
    CHECK(kv_dist_launcher_size() == -1, "PMIx without a size");
    setenv("SLURM_NTASKS", "4", 1);
    CHECK(kv_dist_launcher_size() == 4, "srun --mpi=pmix");
    clear_launcher();
    if (!kv_dist_have_mpi()) { /* with MPI these would call MPI_Init: mpirun's test covers them */
        setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
        CHECK(kv_dist_init(&d, &err) == 0 && d.size == 1, "mpirun -np 1 without MPI: one process");
        kv_dist_free(&d);
        setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
        CHECK(kv_dist_init(&d, &err) == KV_EUNSUPPORTED && strstr(err.msg, "no MPI support"),
              "mpirun -np 2 without MPI refused: %s", err.msg);
        kv_dist_free(&d);
        CHECK(kv_dist_init_mpi(&d, &err) == KV_EUNSUPPORTED, "no MPI group");
        kv_dist_free(&d);
        clear_launcher();
    }
    if (!kv_dist_have_nccl()) {
        kv_dist single, n;
        kv_dist_init_single(&single);
        CHECK(kv_dist_init_nccl(&n, &single, 0, &err) == KV_EUNSUPPORTED, "no NCCL group");
        kv_dist_free(&n);
        kv_dist_free(&single);
    }
}

static void test_eval_parts(void) {
    kv_error err = {0};
    kvt_model t, s;
    kv_map map;
    int rc = kvt_model_load(&t, MODEL, &err);
    CHECK(rc == 0, "teacher: %s", err.msg);
    if (rc) return;
    if ((rc = kvmap_parse(&map, "swiftkv:3", t.dims.n_layers, &err)) ||
        (rc = distill_student_init(&s, &t, &map, DISTILL_INIT_MEAN, &err))) {
        CHECK(0, "student: %s", err.msg);
        kvt_model_free(&t);
        return;
    }
    const int T = 16, B = 2, n = 7;
    distill_seqs seqs = {.ids = malloc(sizeof(int32_t) * n * T), .n = n, .T = T};
    for (int i = 0; i < n * T; i++) seqs.ids[i] = (int32_t)((i * 37 + 11) % t.dims.vocab);
    kv_backend b;
    kvt_run rs, rt;
    rc = kv_backend_cpu_init(&b, 1, &err);
    if (!rc) rc = kvt_run_init(&rs, &b, &s, B, T, 1, 0, &err);
    if (!rc) rc = kvt_run_init(&rt, &b, &t, B, T, 1, 0, &err);
    CHECK(rc == 0, "runs: %s", err.msg);
    if (!rc) {
        distill_eval_result whole, split;
        CHECK(distill_evaluate(&rs, &rt, &seqs, 0, &whole, NULL, NULL, &err) == 0, "%s", err.msg);
        for (int parts = 2; parts <= 3; parts++) {
            distill_eval_sums sum = {0}, p;
            for (int part = 0; part < parts; part++) {
                CHECK(distill_evaluate_part(&rs, &rt, &seqs, 0, part, parts, &p, NULL, NULL,
                                            &err) == 0,
                      "%s", err.msg);
                sum.nll_s += p.nll_s, sum.nll_t += p.nll_t, sum.kl += p.kl;
                sum.tokens += p.tokens;
            }
            distill_evaluate_finish(&sum, distill_eval_count(&seqs, 0), T, 1, &split);
            CHECK(split.tokens == whole.tokens && whole.tokens == n * (T - 1), "positions %ld",
                  split.tokens);
            CHECK_NEAR(split.student_ppl, whole.student_ppl, 1e-12 * whole.student_ppl, "ppl");
            CHECK_NEAR(split.teacher_ppl, whole.teacher_ppl, 1e-12 * whole.teacher_ppl, "teacher");
            CHECK_NEAR(split.kl, whole.kl, 1e-12 + 1e-9 * whole.kl, "kl");
        }
        CHECK(whole.kl > 0, "the student differs from the teacher");
        distill_eval_sums p;
        CHECK(distill_evaluate_part(&rs, &rt, &seqs, 0, 2, 2, &p, NULL, NULL, &err) == KV_EINVAL,
              "part out of range");
        CHECK(distill_eval_count(&seqs, 3) == 3 && distill_eval_count(&seqs, 0) == n, "count");
        kvt_run_free(&rs);
        kvt_run_free(&rt);
        kv_backend_free(&b);
    }
    free(seqs.ids);
    kvt_model_free(&s);
    kvt_model_free(&t);
}

int main(void) {
    test_single();
    test_launcher();
    test_eval_parts();
    return check_done("test_dist");
}

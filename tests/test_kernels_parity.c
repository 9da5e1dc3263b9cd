/* kernels/parity: the table covers every op of kv_backend_ops; the whole table runs here with
 * device = the CPU backend at 2 threads against the CPU backend at 1 thread, bit for bit (the
 * kernels promise results independent of the thread count); broken backends are caught. The
 * CUDA backend: without a GPU (or a CUDA build) init says so; with one the table must pass.
 * The matmul cases compare 1 thread with 1 thread when bits are wanted (see below). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/parity.h"
#include "tests/check.h"

static void print_failures(const kv_parity_report *rep) {
    for (int i = 0; i < rep->n; i++)
        if (!rep->r[i].pass)
            printf("  FAIL %-60s bad %zu of %zu, max_abs %.3g %s\n", rep->r[i].name, rep->r[i].bad,
                   rep->r[i].n, rep->r[i].max_abs, rep->r[i].note);
}

/* ---- broken twins of CPU ops ---- */
static const kv_backend_ops *cpu_ops;

static int scale_one_ulp_off(kv_backend *b, float *x, float k, size_t n, kv_error *err) {
    int rc = cpu_ops->scale(b, x, k, n, err);
    for (size_t i = 0; i < n; i++) x[i] = nextafterf(x[i], INFINITY);
    return rc;
}

static int matmul_nudged(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                         const float *bias, int T, int n_in, int n_out, int accumulate,
                         kv_error *err) {
    int rc = cpu_ops->matmul(b, out, x, W, w_type, bias, T, n_in, n_out, accumulate, err);
    out[0] += 1e-6f; /* well inside every matmul case's tolerance, not bit-exact */
    return rc;
}

/* overwrites dv instead of adding into it */
static int attention_backward_overwrites(kv_backend *b, float *dq, float *dk, float *dv,
                                         const float *dout, const float *q, const float *k,
                                         const float *v, int T, int pos0, int S, int nh, int nkv,
                                         int hd, kv_attn_mask mask, int window, kv_error *err) {
    if (dv) memset(dv, 0, sizeof(float) * (size_t)S * nkv * hd);
    return cpu_ops->attention_backward(b, dq, dk, dv, dout, q, k, v, T, pos0, S, nh, nkv, hd, mask,
                                       window, err);
}

static int rmsnorm_refuses(kv_backend *b, float *out, const float *x, const float *w, int T,
                           int dim, float eps, kv_error *err) {
    (void)b, (void)out, (void)x, (void)w, (void)eps;
    return kv_fail(err, KV_EUNSUPPORTED, "broken: rmsnorm [%d x %d] not here", T, dim);
}

/* copies the rows of valid ids and never refuses */
static int embedding_accepts_all(kv_backend *b, float *out, const float *table, int vocab, int dim,
                                 const int32_t *ids, int T, kv_error *err) {
    (void)b, (void)err;
    for (int t = 0; t < T; t++)
        if (ids[t] >= 0 && ids[t] < vocab)
            memcpy(out + (size_t)t * dim, table + (size_t)ids[t] * dim, sizeof(float) * dim);
    return 0;
}

/* runs the cases matching filter on a CPU backend whose ops are `ops` against the plain CPU */
static int run_broken(kv_parity_report *rep, const kv_backend_ops *ops, const char *filter,
                      unsigned flags, kv_error *err) {
    kv_backend dev, ref; /* one thread each when exact: OpenBLAS is bit-exact only then */
    kv_backend_cpu_init(&dev, flags & KV_PARITY_EXACT ? 1 : 2, err);
    kv_backend_cpu_init(&ref, 1, err);
    dev.ops = ops;
    const kv_parity_opts o = {.seed = 7, .flags = flags, .filter = filter};
    return kv_parity_run(rep, &dev, &ref, &o, err);
}

/* every failed result's name contains `what`, and there is at least one */
static int only_failures_of(const kv_parity_report *rep, const char *what) {
    int failed = 0;
    for (int i = 0; i < rep->n; i++) {
        if (rep->r[i].pass) continue;
        if (!strstr(rep->r[i].name, what)) return 0;
        failed++;
    }
    return failed > 0 && failed == rep->failed;
}

int main(void) {
    kv_error err = {0};

    /* the table is whole: every op of kv_backend_ops has a case */
    CHECK(kv_parity_table_check(&err) == 0, "%s", err.msg);
    CHECK(kv_parity_n_ops() * sizeof(void (*)(void)) == sizeof(kv_backend_ops),
          "%d ops listed for a table of %zu bytes", kv_parity_n_ops(), sizeof(kv_backend_ops));
    for (int i = 0; i < kv_parity_n_ops(); i++)
        CHECK(kv_parity_op_cases(i) >= 1, "op %s has no parity case", kv_parity_op_name(i));
    /* "attention" counts the attention cases, not attention_backward's */
    int att = -1, named = 0;
    for (int i = 0; i < kv_parity_n_ops(); i++)
        if (strcmp(kv_parity_op_name(i), "attention") == 0) att = i;
    for (int c = 0; c < kv_parity_n_cases(); c++)
        named += strcmp(kv_parity_case_ops(c), "attention") == 0;
    CHECK(att >= 0 && kv_parity_op_cases(att) == named, "attention: %d cases named", named);
    CHECK(kv_parity_n_cases() > 16, "%d cases", kv_parity_n_cases());
    CHECK(kv_parity_case_name(kv_parity_n_cases()) == NULL, "past the end");

    /* the whole table: CPU at 2 threads against 1 thread, bit for bit. The ops on OpenBLAS
     * (matmul, matmul_backward) run it single-threaded on blocks of output rows cut where its
     * Haswell kernels keep an unsplit call's bits (kernels/cpu/matmul.c), so under those kernels
     * (the CI's OPENBLAS_CORETYPE) they are bit for bit too; other OpenBLAS kernels may differ in
     * the last bits between thread counts (as OpenBLAS's own threads did here before), and must
     * then still pass their tolerances (next run). Any other op differing fails. */
    const int blas_exact = strcmp(openblas_get_corename(), "Haswell") == 0;
    kv_backend dev, ref;
    CHECK(kv_backend_cpu_init(&dev, 2, &err) == 0, "%s", err.msg);
    CHECK(kv_backend_cpu_init(&ref, 1, &err) == 0, "%s", err.msg);
    const int threads_before = kv_kernels_threads();
    kv_parity_report rep;
    const kv_parity_opts exact = {.seed = 1234, .flags = KV_PARITY_EXACT};
    int rc = kv_parity_run(&rep, &dev, &ref, &exact, &err);
    CHECK(rc == 0 || rc == KV_EMISMATCH, "rc %d: %s", rc, err.msg);
    int blas_differ = 0;
    for (int i = 0; i < rep.n; i++) {
        if (rep.r[i].pass) continue;
        const int blas = !blas_exact && (!strcmp(rep.r[i].op, "matmul") ||
                                         !strcmp(rep.r[i].op, "matmul_backward"));
        blas_differ += blas;
        CHECK(blas, "%s: %zu of %zu elements differ between 2 threads and 1 (max %.3g) %s",
              rep.r[i].name, rep.r[i].bad, rep.r[i].n, rep.r[i].max_abs, rep.r[i].note);
    }
    CHECK(rep.cases == kv_parity_n_cases(), "%d of %d cases ran", rep.cases, kv_parity_n_cases());
    CHECK(rep.n > 64, "only %d results (the report grows past any fixed size)", rep.n);
    CHECK(strstr(rep.device, "2 threads") && strstr(rep.reference, "1 thread"), "%s / %s",
          rep.device, rep.reference);
    CHECK(kv_kernels_threads() == threads_before, "threads %d after the run, %d before",
          kv_kernels_threads(), threads_before);
    size_t compared = 0;
    for (int i = 0; i < rep.n; i++) compared += rep.r[i].n;
    CHECK(compared > 1000000, "%zu elements compared", compared);
    printf("parity table: %d cases, %d results, %zu elements, %s vs %s: bit for bit but %d "
           "OpenBLAS results\n",
           rep.cases, rep.n, compared, rep.device, rep.reference, blas_differ);
    kv_parity_report_free(&rep);

    /* the same at one thread on both sides: every result bit for bit, OpenBLAS included */
    kv_backend one;
    kv_backend_cpu_init(&one, 1, &err);
    rc = kv_parity_run(&rep, &one, &ref, &exact, &err);
    CHECK(rc == 0 && rep.failed == 0, "1 thread against 1 thread: rc %d: %s", rc, err.msg);
    kv_parity_report_free(&rep);

    /* with the table's tolerances (what kvverify does on a GPU) everything passes */
    const kv_parity_opts tol = {.seed = 99};
    rc = kv_parity_run(&rep, &dev, &ref, &tol, &err);
    print_failures(&rep);
    CHECK(rc == 0 && rep.failed == 0, "rc %d: %s", rc, err.msg);
    kv_parity_report_free(&rep);

    /* a filter runs only its cases */
    const kv_parity_opts conv = {.seed = 1, .flags = KV_PARITY_EXACT, .filter = "convert"};
    rc = kv_parity_run(&rep, &dev, &ref, &conv, &err);
    CHECK(rc == 0 && rep.cases >= 6 && rep.cases < kv_parity_n_cases(), "rc %d, %d cases", rc,
          rep.cases);
    for (int i = 0; i < rep.n; i++)
        CHECK(strncmp(rep.r[i].name, "convert", 7) == 0, "%s", rep.r[i].name);
    kv_parity_report_free(&rep);

    /* broken backends are caught, and only where they are broken */
    cpu_ops = dev.ops;
    kv_backend_ops broken = *cpu_ops;
    broken.scale = scale_one_ulp_off;
    rc = run_broken(&rep, &broken, NULL, 0, &err); /* the whole table, with tolerances */
    CHECK(rc == KV_EMISMATCH && strstr(err.msg, "scale"), "rc %d: %s", rc, err.msg);
    CHECK(only_failures_of(&rep, "scale"), "%d failures, not all scale", rep.failed);
    CHECK(rep.cases == kv_parity_n_cases(), "the run stopped early: %d cases", rep.cases);
    kv_parity_report_free(&rep);
    rc = run_broken(&rep, &broken, "scale", KV_PARITY_EXACT, &err);
    CHECK(rc == KV_EMISMATCH && only_failures_of(&rep, "scale"), "exact: rc %d", rc);
    kv_parity_report_free(&rep);

    broken = *cpu_ops;
    broken.matmul = matmul_nudged;
    rc = run_broken(&rep, &broken, "matmul ", KV_PARITY_EXACT, &err);
    CHECK(rc == KV_EMISMATCH && only_failures_of(&rep, "matmul"), "exact: rc %d", rc);
    kv_parity_report_free(&rep);
    rc = run_broken(&rep, &broken, "matmul ", 0, &err);
    CHECK(rc == 0 && rep.failed == 0, "a 1e-6 nudge failed matmul's tolerance: %s", err.msg);
    kv_parity_report_free(&rep);

    broken = *cpu_ops;
    broken.attention_backward = attention_backward_overwrites;
    rc = run_broken(&rep, &broken, "attention_backward", 0, &err);
    CHECK(rc == KV_EMISMATCH && only_failures_of(&rep, ": dv"), "rc %d", rc);
    kv_parity_report_free(&rep);

    broken = *cpu_ops;
    broken.rmsnorm = rmsnorm_refuses;
    rc = run_broken(&rep, &broken, "rmsnorm", 0, &err);
    CHECK(rc == KV_EMISMATCH, "rc %d", rc);
    int refused = 0, backward_ok = 0;
    for (int i = 0; i < rep.n; i++) {
        if (!rep.r[i].pass && strstr(rep.r[i].note, "broken: rmsnorm")) refused++;
        if (rep.r[i].pass && strstr(rep.r[i].name, "rmsnorm_backward")) backward_ok++;
    }
    CHECK(refused == 3 && backward_ok > 0, "%d refusals recorded, %d backward results", refused,
          backward_ok);
    kv_parity_report_free(&rep);

    broken = *cpu_ops;
    broken.embedding = embedding_accepts_all;
    rc = run_broken(&rep, &broken, "embedding", 0, &err);
    CHECK(rc == KV_EMISMATCH && only_failures_of(&rep, "refused"), "rc %d", rc);
    kv_parity_report_free(&rep);

    /* the CUDA backend */
    kv_backend gpu;
    rc = kv_backend_cuda_init(&gpu, 0, &err);
#if KV_CUDA
    if (rc) {
        printf("cuda: %s\n", err.msg);
        CHECK(rc == KV_EUNSUPPORTED && strstr(err.msg, "no CUDA device found"), "rc %d: %s", rc,
              err.msg);
        CHECK(gpu.ops == NULL, "ops set after a failed init");
    } else {
        CHECK(gpu.device == KV_DEVICE_CUDA && !gpu.unified && gpu.name[0], "%s", gpu.name);
        kv_backend cpu_all;
        kv_backend_cpu_init(&cpu_all, 0, &err);
        const kv_parity_opts o = {.seed = 1234};
        rc = kv_parity_run(&rep, &gpu, &cpu_all, &o, &err);
        print_failures(&rep);
        CHECK(rc == 0 && rep.failed == 0, "CUDA against CPU: rc %d: %s", rc, err.msg);
        kv_parity_report_free(&rep);
        kv_backend_free(&gpu);
    }
    /* cuBLAS is dlopen'ed, not linked: the loader finds the library and every entry point
     * (needs no GPU) */
    rc = kv_cuda_blas_load(&err);
    CHECK(rc == 0, "loading cuBLAS: %s", err.msg);
#else
    CHECK(rc == KV_EUNSUPPORTED && strstr(err.msg, "no CUDA support"), "rc %d: %s", rc, err.msg);
    CHECK(kv_cuda_blas_load(&err) == KV_EUNSUPPORTED, "cuBLAS without CUDA");
#endif
    kv_backend_free(&dev);
    kv_backend_free(&ref);
    kv_backend_free(&one);
    return check_done("test_kernels_parity");
}

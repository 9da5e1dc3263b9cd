/* CUDA twins vs CPU reference kernels on shared random inputs (see kernel_parity.h). */
#include "verify/kernel_parity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#if KV_CUDA
#include "kernels/cuda/kv_cuda.h"
#endif

const char *kv_parity_status_name(kv_parity_status s) {
    switch (s) {
    case KV_PARITY_PASSED: return "passed";
    case KV_PARITY_FAILED: return "failed";
    case KV_PARITY_NO_DEVICE: return "no CUDA device";
    case KV_PARITY_NOT_BUILT: return "built without CUDA";
    case KV_PARITY_ERROR: return "error";
    }
    return "unknown";
}

#if KV_CUDA

#include <stdio.h>

#define MAX_DEV_BUFS 64

typedef struct {
    kv_parity_report *rep;
    kv_error *err;
    uint64_t rng;
    void *dev[MAX_DEV_BUFS]; /* every device buffer, freed at the end */
    int n_dev;
} parity_run;

static double next_uniform(parity_run *p) { /* splitmix64 -> [0, 1) */
    uint64_t z = (p->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* host buffer of n floats uniform in [-scale, scale); NULL on allocation failure */
static float *host_random(parity_run *p, size_t n, float scale) {
    float *h = malloc(sizeof(float) * (n ? n : 1));
    if (h)
        for (size_t i = 0; i < n; i++) h[i] = scale * (float)(2.0 * next_uniform(p) - 1.0);
    return h;
}

/* *out = a device copy of host[bytes]; 0 or a KV_E* code (err filled) */
static int to_device(parity_run *p, void *out, const void *host, size_t bytes) {
    if (p->n_dev == MAX_DEV_BUFS)
        return kv_fail(p->err, KV_ENOMEM, "kernel parity: too many device buffers");
    void *d = NULL;
    int rc = kv_cuda_alloc(&d, bytes, p->err);
    if (rc) return rc;
    p->dev[p->n_dev++] = d;
    memcpy(out, &d, sizeof d); /* out is a float ** or int32_t ** */
    return kv_cuda_upload(d, host, bytes, p->err);
}

static void free_device(parity_run *p) {
    for (int i = 0; i < p->n_dev; i++) kv_cuda_free(p->dev[i]);
    p->n_dev = 0;
}

/* downloads gpu[n] and records its comparison with cpu[n] under `name` */
static int compare(parity_run *p, const char *name, const float *gpu_dev, const float *cpu,
                   size_t n, double atol, double rtol) {
    float *g = malloc(sizeof(float) * (n ? n : 1));
    if (!g) return kv_fail(p->err, KV_ENOMEM, "kernel parity: %s: %zu floats", name, n);
    int rc = kv_cuda_download(g, gpu_dev, sizeof(float) * n, p->err);
    if (rc) {
        free(g);
        return kv_wrap(p->err, "kernel parity: %s", name);
    }
    kv_parity_result *r = &p->rep->r[p->rep->n++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->n = n;
    r->atol = atol;
    r->rtol = rtol;
    r->pass = 1;
    for (size_t i = 0; i < n; i++) {
        const double c = cpu[i], d = fabs((double)g[i] - c);
        if (!(d <= atol + rtol * fabs(c))) r->pass = 0; /* NaN fails */
        if (!(d <= r->max_abs)) r->max_abs = d;
        const double rel = d / (fabs(c) + atol);
        if (!(rel <= r->max_rel)) r->max_rel = rel;
    }
    free(g);
    return 0;
}

/* a scalar compared like a one-element tensor */
static int compare_scalar(parity_run *p, const char *name, double gpu, double cpu, double atol,
                          double rtol) {
    kv_parity_result *r = &p->rep->r[p->rep->n++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->n = 1;
    r->atol = atol;
    r->rtol = rtol;
    r->max_abs = fabs(gpu - cpu);
    r->max_rel = r->max_abs / (fabs(cpu) + atol);
    r->pass = r->max_abs <= atol + rtol * fabs(cpu);
    return 0;
}

/* in a case function with `int rc` and a `fail:` label */
#define TRY(expr)                                                                              \
    do {                                                                                       \
        if ((rc = (expr)) != 0) goto fail;                                                     \
    } while (0)

/* Each case: host inputs, device copies, CPU reference, CUDA kernel, comparison. 0, or the
 * failure's code with p->err filled; host memory is freed either way (device: at the end). */

static int case_matmul(parity_run *p, int T, int n_in, int n_out, int accumulate,
                       const char *name) {
    int rc = 0;
    const size_t ny = (size_t)T * n_out;
    float *x = host_random(p, (size_t)T * n_in, 1.0f), *W = host_random(p, (size_t)n_out * n_in, 0.5f);
    float *b = host_random(p, n_out, 1.0f), *y = host_random(p, ny, 1.0f);
    float *dx = NULL, *dW = NULL, *db = NULL, *dy = NULL;
    if (!x || !W || !b || !y) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: %s inputs", name);
        goto fail;
    }
    TRY(to_device(p, &dx, x, sizeof(float) * T * n_in));
    TRY(to_device(p, &dW, W, sizeof(float) * n_out * n_in));
    TRY(to_device(p, &db, b, sizeof(float) * n_out));
    TRY(to_device(p, &dy, y, sizeof(float) * ny)); /* the accumulate case adds into this */
    if (accumulate) kv_matmul_acc(y, x, W, b, T, n_in, n_out);
    else kv_matmul(y, x, W, b, T, n_in, n_out);
    TRY(kv_cuda_matmul(dy, dx, dW, db, T, n_in, n_out, accumulate, p->err));
    TRY(compare(p, name, dy, y, ny, 1e-4, 1e-4));
fail:
    free(x), free(W), free(b), free(y);
    return rc;
}

static int case_rmsnorm(parity_run *p) {
    enum { T = 33, D = 640 };
    int rc = 0;
    float *x = host_random(p, T * D, 3.0f), *w = host_random(p, D, 1.0f), *y = malloc(sizeof(float) * T * D);
    float *dx = NULL, *dw = NULL, *dy = NULL;
    if (!x || !w || !y) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: rmsnorm inputs");
        goto fail;
    }
    kv_rmsnorm(y, x, w, T, D, 1e-5f);
    TRY(to_device(p, &dx, x, sizeof(float) * T * D));
    TRY(to_device(p, &dw, w, sizeof(float) * D));
    TRY(to_device(p, &dy, x, sizeof(float) * T * D));
    TRY(kv_cuda_rmsnorm(dy, dx, dw, T, D, 1e-5f, p->err));
    TRY(compare(p, "rmsnorm", dy, y, (size_t)T * D, 1e-6, 1e-5));
fail:
    free(x), free(w), free(y);
    return rc;
}

static int case_rope(parity_run *p) {
    enum { T = 29, NH = 6, HD = 64, MAXP = 4096 };
    int rc = 0;
    kv_rope_table tab = {0};
    kv_rope_config cfg = {.theta = 500000.0, .scaling = KV_ROPE_LLAMA3, .factor = 8.0,
                          .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                          .original_max_position = 8192};
    float *x = host_random(p, T * NH * HD, 2.0f);
    int32_t pos[T];
    float *dx = NULL, *dcos = NULL, *dsin = NULL;
    int32_t *dpos = NULL;
    for (int t = 0; t < T; t++) pos[t] = (int32_t)(next_uniform(p) * MAXP);
    if (!x) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: rope inputs");
        goto fail;
    }
    TRY(kv_rope_table_init(&tab, HD, MAXP, &cfg, p->err));
    TRY(to_device(p, &dx, x, sizeof(float) * T * NH * HD));
    TRY(to_device(p, &dcos, tab.cos, sizeof(float) * MAXP * HD / 2));
    TRY(to_device(p, &dsin, tab.sin, sizeof(float) * MAXP * HD / 2));
    TRY(to_device(p, &dpos, pos, sizeof pos));
    kv_rope(x, T, NH, pos, &tab);
    TRY(kv_cuda_rope(dx, T, NH, HD, dpos, dcos, dsin, p->err));
    TRY(compare(p, "rope llama3", dx, x, (size_t)T * NH * HD, 1e-6, 1e-5));
fail:
    kv_rope_table_free(&tab);
    free(x);
    return rc;
}

static int case_attention(parity_run *p, int T, int pos0, int S, int nh, int nkv, int hd,
                          kv_attn_mask mask, const char *name) {
    int rc = 0;
    const size_t nq = (size_t)T * nh * hd, nk = (size_t)S * nkv * hd;
    float *q = host_random(p, nq, 1.5f), *k = host_random(p, nk, 1.5f), *v = host_random(p, nk, 1.0f);
    float *o = malloc(sizeof(float) * nq);
    float *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
    if (!q || !k || !v || !o) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: %s inputs", name);
        goto fail;
    }
    if (kv_attention(o, q, k, v, T, pos0, S, nh, nkv, hd, mask)) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: %s: CPU scratch", name);
        goto fail;
    }
    TRY(to_device(p, &dq, q, sizeof(float) * nq));
    TRY(to_device(p, &dk, k, sizeof(float) * nk));
    TRY(to_device(p, &dv, v, sizeof(float) * nk));
    TRY(to_device(p, &dout, q, sizeof(float) * nq)); /* garbage to be overwritten */
    TRY(kv_cuda_attention(dout, dq, dk, dv, T, pos0, S, nh, nkv, hd, mask, p->err));
    TRY(compare(p, name, dout, o, nq, 1e-5, 1e-4));
fail:
    free(q), free(k), free(v), free(o);
    return rc;
}

static int case_swiglu(parity_run *p) {
    enum { N = 10007 };
    int rc = 0;
    float *g = host_random(p, N, 6.0f), *u = host_random(p, N, 2.0f), *h = malloc(sizeof(float) * N);
    float *dg = NULL, *du = NULL, *dh = NULL;
    if (!g || !u || !h) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: swiglu inputs");
        goto fail;
    }
    kv_swiglu(h, g, u, N);
    TRY(to_device(p, &dg, g, sizeof(float) * N));
    TRY(to_device(p, &du, u, sizeof(float) * N));
    TRY(to_device(p, &dh, g, sizeof(float) * N));
    TRY(kv_cuda_swiglu(dh, dg, du, N, p->err));
    TRY(compare(p, "swiglu", dh, h, N, 1e-6, 1e-5));
fail:
    free(g), free(u), free(h);
    return rc;
}

static int case_softmax(parity_run *p) {
    enum { R = 7, N = 5000 };
    int rc = 0;
    float *x = host_random(p, R * N, 8.0f);
    float *dx = NULL;
    if (!x) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: softmax inputs");
        goto fail;
    }
    for (int i = 0; i < N; i++) x[3 * N + i] += 500.0f; /* stability */
    TRY(to_device(p, &dx, x, sizeof(float) * R * N));
    kv_softmax(x, R, N);
    TRY(kv_cuda_softmax(dx, R, N, p->err));
    TRY(compare(p, "softmax", dx, x, (size_t)R * N, 1e-8, 1e-4));
fail:
    free(x);
    return rc;
}

static int case_distill_kl(parity_run *p) {
    enum { T = 9, V = 3000 };
    int rc = 0;
    const float temp = 2.0f, scale = 1.0f;
    float *s = host_random(p, T * V, 6.0f), *t = host_random(p, T * V, 6.0f);
    float *g = host_random(p, T * V, 1.0f);
    float *ds = NULL, *dt = NULL, *dg = NULL;
    double gpu_loss = 0.0;
    if (!s || !t || !g) {
        rc = kv_fail(p->err, KV_ENOMEM, "kernel parity: distill_kl inputs");
        goto fail;
    }
    TRY(to_device(p, &ds, s, sizeof(float) * T * V));
    TRY(to_device(p, &dt, t, sizeof(float) * T * V));
    TRY(to_device(p, &dg, g, sizeof(float) * T * V)); /* the gradient adds into this */
    const double cpu_loss = kv_distill_kl(g, s, t, T, V, temp, scale);
    TRY(kv_cuda_distill_kl(&gpu_loss, dg, ds, dt, T, V, temp, scale, p->err));
    TRY(compare_scalar(p, "distill_kl loss", gpu_loss, cpu_loss, 1e-6, 1e-4));
    TRY(compare(p, "distill_kl grad", dg, g, (size_t)T * V, 1e-6, 1e-4));
fail:
    free(s), free(t), free(g);
    return rc;
}

int kv_kernel_parity(kv_parity_report *rep, uint64_t seed, kv_error *err) {
    memset(rep, 0, sizeof *rep);
    if (kv_cuda_device_count() <= 0) {
        rep->status = KV_PARITY_NO_DEVICE;
        return kv_fail(err, KV_EUNSUPPORTED,
                       "kernel parity: no CUDA device (cudaGetDeviceCount failed or found none)");
    }
    kv_error local = {0};
    if (!err) err = &local;
    err->code = 0;
    parity_run p = {.rep = rep, .err = err, .rng = seed};
    int rc = kv_cuda_init(err);
    if (rc) {
        rep->status = rc == KV_EUNSUPPORTED ? KV_PARITY_NO_DEVICE : KV_PARITY_ERROR;
        return rc;
    }
    kv_cuda_device_name(rep->device, sizeof rep->device, NULL);
    if (!rc) rc = case_matmul(&p, 1, 256, 384, 0, "matmul T=1");
    if (!rc) rc = case_matmul(&p, 37, 256, 200, 1, "matmul_acc T=37");
    if (!rc) rc = case_rmsnorm(&p);
    if (!rc) rc = case_rope(&p);
    if (!rc) rc = case_attention(&p, 40, 90, 130, 8, 2, 64, KV_MASK_CAUSAL, "attention causal");
    if (!rc) rc = case_attention(&p, 40, 0, 40, 8, 2, 128, KV_MASK_STRICT, "attention strict");
    if (!rc) rc = case_attention(&p, 1, 1499, 1500, 4, 1, 96, KV_MASK_CAUSAL, "attention decode");
    if (!rc) rc = case_swiglu(&p);
    if (!rc) rc = case_softmax(&p);
    if (!rc) rc = case_distill_kl(&p);
    if (!rc) rc = kv_cuda_sync(err);
    free_device(&p);
    if (rc) {
        rep->status = KV_PARITY_ERROR;
        return rc;
    }
    rep->status = KV_PARITY_PASSED;
    char failed[512] = "";
    for (int i = 0; i < rep->n; i++)
        if (!rep->r[i].pass) {
            rep->status = KV_PARITY_FAILED;
            size_t used = strlen(failed);
            snprintf(failed + used, sizeof failed - used, "%s%s (max abs %.3g)", used ? ", " : "",
                     rep->r[i].name, rep->r[i].max_abs);
        }
    if (rep->status == KV_PARITY_FAILED)
        return kv_fail(err, KV_EMISMATCH, "kernel parity on %s: outside tolerance: %s",
                       rep->device, failed);
    return 0;
}

#else /* !KV_CUDA */

int kv_kernel_parity(kv_parity_report *rep, uint64_t seed, kv_error *err) {
    (void)seed;
    memset(rep, 0, sizeof *rep);
    rep->status = KV_PARITY_NOT_BUILT;
    return kv_fail(err, KV_EUNSUPPORTED,
                   "kernel parity: built without CUDA (make CUDA=0, or nvcc not found)");
}

#endif

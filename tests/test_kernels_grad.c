/* Every backward kernel against central finite differences of a double-precision forward
 * written here. For an op y = f(x) the checked scalar is L = sum(dout * y) with a random dout,
 * so dL/dx is exactly what the backward kernel returns. Gradient buffers start from random
 * values (the kernels must add, not overwrite). A wrong sign, transpose or factor fails by far. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "tests/check.h"
#define TEST_RAND_SEED 0xd1b54a32d192ed03ull
#include "tests/rand.h"

static double *to_double(const float *x, size_t n) {
    double *d = malloc(sizeof(double) * n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static float *copy_f(const float *x, size_t n) {
    float *c = malloc(sizeof(float) * n);
    memcpy(c, x, sizeof(float) * n);
    return c;
}

/* L(ctx) evaluated in double with the current parameter values */
typedef double (*loss_fn)(void *ctx);

/* Compares (grad - base), the amount the kernel added, with central differences of L over
 * every element of param. Tolerance: rtol * max|fd| over the tensor (float arithmetic in the
 * kernel against an exact double derivative). */
static void check_grad(const char *what, double *param, size_t n, const float *grad,
                       const double *base, loss_fn L, void *ctx, double rtol) {
    const double h = 1e-6;
    double *fd = malloc(sizeof(double) * n), scale = 0, err = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        const double keep = param[i];
        param[i] = keep + h;
        const double lp = L(ctx);
        param[i] = keep - h;
        const double lm = L(ctx);
        param[i] = keep;
        fd[i] = (lp - lm) / (2 * h);
        scale = fmax(scale, fabs(fd[i]));
    }
    for (size_t i = 0; i < n; i++) {
        const double added = (double)grad[i] - (base ? base[i] : 0.0);
        const double e = fabs(added - fd[i]);
        if (!(e <= err)) err = e, worst_i = i;
    }
    CHECK(scale > 1e-3, "%s: finite differences all ~0 (%g): the case tests nothing", what, scale);
    CHECK(err <= rtol * scale,
          "%s: element %zu: kernel %.9g vs finite difference %.9g "
          "(max error %.3g, scale %.3g)",
          what, worst_i, (double)grad[worst_i] - (base ? base[worst_i] : 0.0), fd[worst_i], err,
          scale);
    free(fd);
}

static double dot_d(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- matmul ---- */
typedef struct {
    int T, n_in, n_out;
    double *x, *W, *b, *dout;
} mm_ctx;

static double mm_loss(void *p) {
    mm_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->T; t++)
        for (int o = 0; o < c->n_out; o++) {
            double y = c->b[o];
            for (int i = 0; i < c->n_in; i++) y += c->x[t * c->n_in + i] * c->W[o * c->n_in + i];
            L += c->dout[t * c->n_out + o] * y;
        }
    return L;
}

static void test_matmul_grad(int T, int n_in, int n_out) {
    const size_t nx = (size_t)T * n_in, nw = (size_t)n_out * n_in, ny = (size_t)T * n_out;
    float *x = rand_buf(nx, 1), *W = rand_buf(nw, 1), *b = rand_buf(n_out, 1),
          *dout = rand_buf(ny, 1);
    float *dx = rand_buf(nx, 1), *dW = rand_buf(nw, 1), *db = rand_buf(n_out, 1);
    float *dx0 = copy_f(dx, nx), *dW0 = copy_f(dW, nw), *db0 = copy_f(db, n_out);
    kv_matmul_backward(dx, dW, db, dout, x, W, T, n_in, n_out);
    mm_ctx c = {T,
                n_in,
                n_out,
                to_double(x, nx),
                to_double(W, nw),
                to_double(b, n_out),
                to_double(dout, ny)};
    double *dx0d = to_double(dx0, nx), *dW0d = to_double(dW0, nw), *db0d = to_double(db0, n_out);
    check_grad(T == 1 ? "matmul dx (T=1)" : "matmul dx", c.x, nx, dx, dx0d, mm_loss, &c, 1e-5);
    check_grad(T == 1 ? "matmul dW (T=1)" : "matmul dW", c.W, nw, dW, dW0d, mm_loss, &c, 1e-5);
    check_grad("matmul dbias", c.b, n_out, db, db0d, mm_loss, &c, 1e-5);
    /* NULL gradients are skipped */
    float *dW2 = copy_f(dW0, nw);
    kv_matmul_backward(NULL, dW2, NULL, dout, x, W, T, n_in, n_out);
    CHECK(memcmp(dW2, dW, sizeof(float) * nw) == 0, "matmul dW alone differs");
    free(x), free(W), free(b), free(dout), free(dx), free(dW), free(db), free(dx0), free(dW0),
        free(db0), free(c.x), free(c.W), free(c.b), free(c.dout), free(dx0d), free(dW0d),
        free(db0d), free(dW2);
}

/* ---- rmsnorm ---- */
typedef struct {
    int T, D;
    double eps, *x, *w, *dout;
} rn_ctx;

static double rn_loss(void *p) {
    rn_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->T; t++) {
        const double *x = c->x + t * c->D;
        double r = 1.0 / sqrt(dot_d(x, x, c->D) / c->D + c->eps);
        for (int i = 0; i < c->D; i++) L += c->dout[t * c->D + i] * x[i] * r * c->w[i];
    }
    return L;
}

static void test_rmsnorm_grad(void) {
    enum { T = 3, D = 11 };
    float *x = rand_buf(T * D, 2), *w = rand_buf(D, 1), *dout = rand_buf(T * D, 1);
    float *dx = rand_buf(T * D, 1), *dw = rand_buf(D, 1);
    double *dx0 = to_double(dx, T * D), *dw0 = to_double(dw, D);
    const float eps = 1e-5f;
    kv_rmsnorm_backward(dx, dw, dout, x, w, T, D, eps);
    rn_ctx c = {T, D, eps, to_double(x, T * D), to_double(w, D), to_double(dout, T * D)};
    check_grad("rmsnorm dx", c.x, T * D, dx, dx0, rn_loss, &c, 2e-5);
    check_grad("rmsnorm dw", c.w, D, dw, dw0, rn_loss, &c, 2e-5);
    free(x), free(w), free(dout), free(dx), free(dw), free(dx0), free(dw0), free(c.x), free(c.w),
        free(c.dout);
}

/* ---- rope: a fixed rotation by the table's (float) cos/sin ---- */
typedef struct {
    int T, NH, HD;
    const int32_t *pos;
    const kv_rope_table *tab;
    double *x, *dout;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    const int half = c->HD / 2;
    double L = 0;
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->NH; h++)
            for (int i = 0; i < half; i++) {
                const size_t o = ((size_t)t * c->NH + h) * c->HD;
                double cs = c->tab->cos[c->pos[t] * half + i],
                       sn = c->tab->sin[c->pos[t] * half + i];
                double a = c->x[o + i], b = c->x[o + i + half];
                L += c->dout[o + i] * (a * cs - b * sn) + c->dout[o + i + half] * (b * cs + a * sn);
            }
    return L;
}

static void test_rope_grad(void) {
    enum { T = 3, NH = 2, HD = 6, N = T * NH * HD };
    kv_error err = {0};
    kv_rope_config cfg = {.theta = 100.0};
    kv_rope_table tab;
    CHECK(kv_rope_table_init(&tab, HD, 32, &cfg, &err) == 0, "%s", err.msg);
    const int32_t pos[T] = {5, 0, 31};
    float *x = rand_buf(N, 1), *dout = rand_buf(N, 1);
    float *g = copy_f(dout, N);
    kv_rope_backward(g, T, NH, pos, &tab); /* in place: d/d(out) -> d/d(x) */
    rope_ctx c = {T, NH, HD, pos, &tab, to_double(x, N), to_double(dout, N)};
    check_grad("rope backward", c.x, N, g, NULL, rope_loss, &c, 1e-6);
    kv_rope_table_free(&tab);
    free(x), free(dout), free(g), free(c.x), free(c.dout);
}

/* ---- attention ---- */
typedef struct {
    int T, pos0, S, nh, nkv, hd;
    kv_attn_mask mask;
    int window; /* keys s > p - window (0: all) */
    double *q, *k, *v, *dout;
} at_ctx;

static double at_loss(void *p) {
    at_ctx *c = p;
    const int hd = c->hd;
    double L = 0, w[64];
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->nh; h++) {
            const int g = h / (c->nh / c->nkv), pp = c->pos0 + t;
            int n = c->mask == KV_MASK_CAUSAL ? pp + 1 : pp;
            if (n > c->S) n = c->S;
            const int lo = c->window > 0 && pp - c->window + 1 > 0 ? pp - c->window + 1 : 0;
            double m = -INFINITY, z = 0;
            for (int s = lo; s < n; s++) {
                w[s] = dot_d(c->q + (t * c->nh + h) * hd, c->k + (s * c->nkv + g) * hd, hd) /
                       sqrt((double)hd);
                m = fmax(m, w[s]);
            }
            for (int s = lo; s < n; s++) z += (w[s] = exp(w[s] - m));
            for (int s = lo; s < n; s++)
                L += w[s] / z *
                     dot_d(c->dout + (t * c->nh + h) * hd, c->v + (s * c->nkv + g) * hd, hd);
        }
    return L;
}

static void test_attention_grad(int T, int pos0, int S, int nh, int nkv, int hd, kv_attn_mask mask,
                                int window) {
    const size_t nq = (size_t)T * nh * hd, nk = (size_t)S * nkv * hd;
    float *q = rand_buf(nq, 1.5f), *k = rand_buf(nk, 1.5f), *v = rand_buf(nk, 1),
          *dout = rand_buf(nq, 1);
    float *dq = rand_buf(nq, 1), *dk = rand_buf(nk, 1), *dv = rand_buf(nk, 1);
    double *dq0 = to_double(dq, nq), *dk0 = to_double(dk, nk), *dv0 = to_double(dv, nk);
    CHECK(kv_attention_backward(dq, dk, dv, dout, q, k, v, T, pos0, S, nh, nkv, hd, mask, window) ==
              0,
          "attention backward rc");
    at_ctx c = {T,
                pos0,
                S,
                nh,
                nkv,
                hd,
                mask,
                window,
                to_double(q, nq),
                to_double(k, nk),
                to_double(v, nk),
                to_double(dout, nq)};
    char what[96];
    snprintf(what, sizeof what, "attention dq (T=%d pos0=%d S=%d %s W=%d)", T, pos0, S,
             mask ? "strict" : "causal", window);
    check_grad(what, c.q, nq, dq, dq0, at_loss, &c, 2e-5);
    what[10] = 'k';
    check_grad(what, c.k, nk, dk, dk0, at_loss, &c, 2e-5);
    what[10] = 'v';
    check_grad(what, c.v, nk, dv, dv0, at_loss, &c, 2e-5);
    if (mask == KV_MASK_STRICT && pos0 == 0) { /* t = 0 sees nothing: no gradient to its q */
        int untouched = 1;
        for (size_t i = 0; i < (size_t)nh * hd; i++) untouched &= dq[i] == (float)dq0[i];
        CHECK(untouched, "strict mask: gradient reached q at t=0");
    }
    /* with threads the result is identical (work split over kv heads) */
    float *dk1 = copy_f(dk, nk);
    for (size_t i = 0; i < nk; i++) dk[i] = (float)dk0[i];
    kv_kernels_set_threads(4);
    kv_attention_backward(NULL, dk, NULL, dout, q, k, v, T, pos0, S, nh, nkv, hd, mask, window);
    kv_kernels_set_threads(2);
    CHECK(memcmp(dk, dk1, sizeof(float) * nk) == 0, "attention dk alone / threaded differs");
    free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dv), free(dq0), free(dk0),
        free(dv0), free(c.q), free(c.k), free(c.v), free(c.dout), free(dk1);
}

/* ---- swiglu ---- */
typedef struct {
    size_t n;
    double *g, *u, *dout;
} sw_ctx;

static double sw_loss(void *p) {
    sw_ctx *c = p;
    double L = 0;
    for (size_t i = 0; i < c->n; i++) L += c->dout[i] * c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
    return L;
}

static void test_swiglu_grad(void) {
    enum { N = 40 };
    float *g = rand_buf(N, 5), *u = rand_buf(N, 2), *dh = rand_buf(N, 1);
    float *dg = rand_buf(N, 1), *du = rand_buf(N, 1);
    double *dg0 = to_double(dg, N), *du0 = to_double(du, N);
    kv_swiglu_backward(dg, du, dh, g, u, N);
    sw_ctx c = {N, to_double(g, N), to_double(u, N), to_double(dh, N)};
    check_grad("swiglu dgate", c.g, N, dg, dg0, sw_loss, &c, 1e-5);
    check_grad("swiglu dup", c.u, N, du, du0, sw_loss, &c, 1e-5);
    free(g), free(u), free(dh), free(dg), free(du), free(dg0), free(du0), free(c.g), free(c.u),
        free(c.dout);
}

/* ---- losses ---- */
typedef struct {
    int T, V;
    double temp, scale, *s, *t;
} kl_ctx;

static double kl_loss(void *p) {
    kl_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->T; t++) {
        const double *zs = c->s + t * c->V, *zt = c->t + t * c->V;
        double zsum = 0, tsum = 0;
        for (int i = 0; i < c->V; i++) zsum += exp(zs[i] / c->temp), tsum += exp(zt[i] / c->temp);
        for (int i = 0; i < c->V; i++) {
            double lp = zt[i] / c->temp - log(tsum), lq = zs[i] / c->temp - log(zsum);
            L += exp(lp) * (lp - lq);
        }
    }
    return c->scale * c->temp * c->temp * L / c->T;
}

static void test_kl_grad(void) {
    enum { T = 3, V = 13, N = T * V };
    float *s = rand_buf(N, 3), *te = rand_buf(N, 3), *g = rand_buf(N, 1);
    double *g0 = to_double(g, N);
    const float scale = 0.7f;
    double loss = kv_distill_kl(g, s, te, NULL, T, V, 2.0f, scale);
    kl_ctx c = {T, V, 2.0, scale, to_double(s, N), to_double(te, N)};
    CHECK_NEAR(loss * scale, kl_loss(&c), 1e-12, "KL value");
    check_grad("distill KL dstudent", c.s, N, g, g0, kl_loss, &c, 1e-5);
    /* temperature 1 too */
    c.temp = 1.0;
    float *g1 = calloc(N, sizeof(float));
    kv_distill_kl(g1, s, te, NULL, T, V, 1.0f, scale);
    check_grad("distill KL dstudent (temp 1)", c.s, N, g1, NULL, kl_loss, &c, 1e-5);
    free(s), free(te), free(g), free(g0), free(g1), free(c.s), free(c.t);
}

typedef struct {
    int B, T, V;
    double scale, *z;
    const int32_t *tok;
} ce_ctx;

/* scale * mean over b, t < T-1 of -log softmax(z[b,t])[tok[b,t+1]], in double */
static double ce_loss(void *p) {
    ce_ctx *c = p;
    double L = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t + 1 < c->T; t++) {
            const double *z = c->z + ((size_t)b * c->T + t) * c->V;
            double sum = 0;
            for (int i = 0; i < c->V; i++) sum += exp(z[i]);
            L += log(sum) - z[c->tok[b * c->T + t + 1]];
        }
    return c->scale * L / (c->B * (c->T - 1));
}

static void test_ce_grad(void) {
    enum { B = 2, T = 4, V = 11, N = B * T * V };
    const int32_t tok[B * T] = {3, 0, 10, 7, 7, 2, 2, 5};
    float *z = rand_buf(N, 3), *g = rand_buf(N, 1);
    double *g0 = to_double(g, N);
    const float scale = 0.6f;
    double loss = kv_next_token_ce(g, z, tok, B, T, V, scale);
    ce_ctx c = {B, T, V, scale, to_double(z, N), tok};
    CHECK_NEAR(loss * scale, ce_loss(&c), 1e-12, "next-token CE value");
    check_grad("next-token CE dlogits", c.z, N, g, g0, ce_loss, &c, 1e-5);
    /* the last position of each sequence has no target: its gradient stays as it was */
    int untouched = 1;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < V; i++) {
            size_t k = ((size_t)b * T + T - 1) * V + i;
            untouched &= g[k] == (float)g0[k];
        }
    CHECK(untouched, "next-token CE: the last position of a sequence got a gradient");
    CHECK_NEAR(kv_next_token_ce(NULL, z, tok, B, 1, V, 1.0f), 0.0, 0,
               "next-token CE, T = 1: nothing scored");
    free(z), free(g), free(g0), free(c.z);
}

typedef struct {
    size_t n;
    double scale, *s, *t;
} mse_ctx;

static double mse_loss(void *p) {
    mse_ctx *c = p;
    double L = 0;
    for (size_t i = 0; i < c->n; i++) L += (c->s[i] - c->t[i]) * (c->s[i] - c->t[i]);
    return c->scale * L / c->n;
}

static void test_mse_grad(void) {
    enum { N = 17 };
    float *s = rand_buf(N, 2), *te = rand_buf(N, 2), *g = rand_buf(N, 1);
    double *g0 = to_double(g, N);
    kv_mse(g, s, te, N, 1.5f);
    mse_ctx c = {N, 1.5, to_double(s, N), to_double(te, N)};
    check_grad("mse dstudent", c.s, N, g, g0, mse_loss, &c, 1e-5);
    free(s), free(te), free(g), free(g0), free(c.s), free(c.t);
}

/* ---- a chain: x -> rmsnorm -> q, k, v projections -> rope(q, k) -> attention -> o_proj,
 * backpropagated with the kernels, against finite differences of the whole chain in double ---- */
enum { CT = 4, CH = 8, CNH = 2, CNKV = 1, CHD = 4 };
typedef struct {
    double *x, *nw, *Wq, *Wk, *Wv, *Wo, *dout;
    const kv_rope_table *tab;
    const int32_t *pos;
    kv_attn_mask mask;
} chain_ctx;

static void proj_d(double *y, const double *x, const double *W, int T, int n_in, int n_out) {
    for (int t = 0; t < T; t++)
        for (int o = 0; o < n_out; o++) y[t * n_out + o] = dot_d(x + t * n_in, W + o * n_in, n_in);
}
static void rope_d(double *x, int T, int nh, const chain_ctx *c) {
    const int half = CHD / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < half; i++) {
                double *a = x + (t * nh + h) * CHD;
                double cs = c->tab->cos[c->pos[t] * half + i],
                       sn = c->tab->sin[c->pos[t] * half + i];
                double x0 = a[i], x1 = a[i + half];
                a[i] = x0 * cs - x1 * sn;
                a[i + half] = x1 * cs + x0 * sn;
            }
}

static double chain_loss(void *p) {
    chain_ctx *c = p;
    double xn[CT * CH], q[CT * CNH * CHD], k[CT * CNKV * CHD], v[CT * CNKV * CHD];
    double att[CT * CNH * CHD], y[CT * CH];
    for (int t = 0; t < CT; t++) {
        double r = 1.0 / sqrt(dot_d(c->x + t * CH, c->x + t * CH, CH) / CH + 1e-5);
        for (int i = 0; i < CH; i++) xn[t * CH + i] = c->x[t * CH + i] * r * c->nw[i];
    }
    proj_d(q, xn, c->Wq, CT, CH, CNH * CHD);
    proj_d(k, xn, c->Wk, CT, CH, CNKV * CHD);
    proj_d(v, xn, c->Wv, CT, CH, CNKV * CHD);
    rope_d(q, CT, CNH, c);
    rope_d(k, CT, CNKV, c);
    for (int t = 0; t < CT; t++)
        for (int h = 0; h < CNH; h++) {
            const int g = h / (CNH / CNKV), n = c->mask == KV_MASK_CAUSAL ? t + 1 : t;
            double w[CT], m = -INFINITY, z = 0;
            for (int s = 0; s < n; s++) {
                w[s] = dot_d(q + (t * CNH + h) * CHD, k + (s * CNKV + g) * CHD, CHD) / sqrt(CHD);
                m = fmax(m, w[s]);
            }
            for (int s = 0; s < n; s++) z += (w[s] = exp(w[s] - m));
            for (int i = 0; i < CHD; i++) {
                double o = 0;
                for (int s = 0; s < n; s++) o += w[s] / z * v[(s * CNKV + g) * CHD + i];
                att[(t * CNH + h) * CHD + i] = o;
            }
        }
    proj_d(y, att, c->Wo, CT, CNH * CHD, CH);
    return dot_d(y, c->dout, CT * CH);
}

static void test_chain(kv_attn_mask mask) {
    enum { NQ = CNH * CHD, NK = CNKV * CHD };
    kv_error err = {0};
    kv_rope_config cfg = {.theta = 10.0};
    kv_rope_table tab;
    kv_rope_table_init(&tab, CHD, CT, &cfg, &err);
    const int32_t pos[CT] = {0, 1, 2, 3};
    float *x = rand_buf(CT * CH, 1), *nw = rand_buf(CH, 1), *Wq = rand_buf(NQ * CH, 1),
          *Wk = rand_buf(NK * CH, 1), *Wv = rand_buf(NK * CH, 1), *Wo = rand_buf(CH * NQ, 1),
          *dout = rand_buf(CT * CH, 1);
    /* forward with the kernels, keeping what the backward needs */
    float xn[CT * CH], q[CT * NQ], k[CT * NK], v[CT * NK], att[CT * NQ], y[CT * CH];
    kv_rmsnorm(xn, x, nw, CT, CH, 1e-5f);
    kv_matmul(q, xn, Wq, NULL, CT, CH, NQ);
    kv_matmul(k, xn, Wk, NULL, CT, CH, NK);
    kv_matmul(v, xn, Wv, NULL, CT, CH, NK);
    kv_rope(q, CT, CNH, pos, &tab);
    kv_rope(k, CT, CNKV, pos, &tab);
    kv_attention(att, q, k, v, CT, 0, CT, CNH, CNKV, CHD, mask, 0, 0);
    kv_matmul(y, att, Wo, NULL, CT, NQ, CH);
    /* backward */
    float datt[CT * NQ] = {0}, dq[CT * NQ] = {0}, dk[CT * NK] = {0}, dv[CT * NK] = {0};
    float dxn[CT * CH] = {0}, dx[CT * CH] = {0}, dnw[CH] = {0};
    float *dWq = calloc(NQ * CH, 4), *dWk = calloc(NK * CH, 4), *dWv = calloc(NK * CH, 4),
          *dWo = calloc(CH * NQ, 4);
    kv_matmul_backward(datt, dWo, NULL, dout, att, Wo, CT, NQ, CH);
    kv_attention_backward(dq, dk, dv, datt, q, k, v, CT, 0, CT, CNH, CNKV, CHD, mask, 0);
    kv_rope_backward(dq, CT, CNH, pos, &tab);
    kv_rope_backward(dk, CT, CNKV, pos, &tab);
    kv_matmul_backward(dxn, dWq, NULL, dq, xn, Wq, CT, CH, NQ);
    kv_matmul_backward(dxn, dWk, NULL, dk, xn, Wk, CT, CH, NK);
    kv_matmul_backward(dxn, dWv, NULL, dv, xn, Wv, CT, CH, NK);
    kv_rmsnorm_backward(dx, dnw, dxn, x, nw, CT, CH, 1e-5f);

    chain_ctx c = {to_double(x, CT * CH),
                   to_double(nw, CH),
                   to_double(Wq, NQ * CH),
                   to_double(Wk, NK * CH),
                   to_double(Wv, NK * CH),
                   to_double(Wo, CH * NQ),
                   to_double(dout, CT * CH),
                   &tab,
                   pos,
                   mask};
    double yd = 0;
    for (int i = 0; i < CT * CH; i++) yd += (double)y[i] * dout[i];
    CHECK_NEAR(yd, chain_loss(&c), 1e-4 * (1 + fabs(yd)), "chain forward: kernels vs double");
    const double tol = 5e-5;
    check_grad(mask ? "chain dx (strict)" : "chain dx", c.x, CT * CH, dx, NULL, chain_loss, &c,
               tol);
    check_grad("chain d norm weight", c.nw, CH, dnw, NULL, chain_loss, &c, tol);
    check_grad("chain dWq", c.Wq, NQ * CH, dWq, NULL, chain_loss, &c, tol);
    check_grad("chain dWk", c.Wk, NK * CH, dWk, NULL, chain_loss, &c, tol);
    check_grad("chain dWv", c.Wv, NK * CH, dWv, NULL, chain_loss, &c, tol);
    check_grad("chain dWo", c.Wo, CH * NQ, dWo, NULL, chain_loss, &c, tol);
    kv_rope_table_free(&tab);
    free(x), free(nw), free(Wq), free(Wk), free(Wv), free(Wo), free(dout), free(dWq), free(dWk),
        free(dWv), free(dWo), free(c.x), free(c.nw), free(c.Wq), free(c.Wk), free(c.Wv), free(c.Wo),
        free(c.dout);
}

int main(void) {
    kv_kernels_set_threads(2);
    test_matmul_grad(4, 7, 5);
    test_matmul_grad(1, 9, 6);
    test_rmsnorm_grad();
    test_rope_grad();
    for (int mask = 0; mask < 2; mask++) {
        test_attention_grad(5, 0, 5, 4, 2, 4, mask, 0); /* prefill, GQA */
        test_attention_grad(3, 4, 7, 2, 1, 8, mask, 0); /* after a cached prefix, MQA */
        test_attention_grad(1, 6, 7, 3, 3, 4, mask, 0); /* decode, MHA */
        /* sliding windows over 7 positions (from 2 keys: one key has no q/k gradient, and the
         * strict mask sees one fewer) */
        for (int w = 2 + mask; w <= 4; w++) test_attention_grad(7, 0, 7, 4, 2, 4, mask, w);
        test_attention_grad(3, 4, 7, 2, 1, 8, mask, 3); /* windowed, after a prefix */
    }
    test_attention_grad(2, 3, 4, 4, 2, 4, KV_MASK_STRICT,
                        0); /* cache one short: strict needs < p */
    test_swiglu_grad();
    test_kl_grad();
    test_ce_grad();
    test_mse_grad();
    test_chain(KV_MASK_CAUSAL);
    test_chain(KV_MASK_STRICT);
    return check_done("test_kernels_grad");
}

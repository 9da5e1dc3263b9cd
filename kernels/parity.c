/* The parity table (kernels/parity.h): each op of kv_backend_ops contributes its cases; a case
 * runs its op on `dev` and on `ref` from the same seeded inputs and compares every output. */
#include "kernels/parity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the ops of kv_backend_ops, in declaration order -------------------------------------- */

#define OP(m)                                                                                      \
    { #m, offsetof(kv_backend_ops, m) }
static const struct {
    const char *name;
    size_t off;
} op_list[] = {
    OP(alloc),
    OP(free),
    OP(map),
    OP(unmap),
    OP(upload),
    OP(download),
    OP(zero),
    OP(copy),
    OP(convert),
    OP(store_heads),
    OP(sync),
    OP(release),
    OP(matmul),
    OP(rmsnorm),
    OP(rope),
    OP(attention),
    OP(swiglu),
    OP(embedding),
    OP(distill_kl),
    OP(next_token_ce),
    OP(mse),
    OP(matmul_backward),
    OP(rmsnorm_backward),
    OP(rope_backward),
    OP(attention_backward),
    OP(swiglu_backward),
    OP(sumsq),
    OP(scale),
    OP(add),
    OP(adamw),
};
#undef OP
enum { N_OPS = sizeof op_list / sizeof op_list[0] };
/* a member added to kv_backend_ops must be listed here, and then needs a case
 * (kv_parity_table_check, tests/test_kernels_parity.c) */
_Static_assert(sizeof(kv_backend_ops) == N_OPS * sizeof(void (*)(void)),
               "kv_backend_ops changed: list its members in op_list and give each a case");

/* ---- the runner's state ------------------------------------------------------------------- */

enum { MAX_HOST = 24, MAX_BUF = 16 };

typedef struct {
    void *d[2]; /* [0] on dev, [1] on ref */
    size_t bytes;
} pbuf;

typedef struct pcase pcase;

typedef struct {
    kv_backend *b[2]; /* dev, ref */
    kv_parity_report *rep;
    unsigned flags;
    kv_error *err;
    uint64_t rng;
    const pcase *c;
    void *host[MAX_HOST]; /* this case's host memory */
    int n_host;
    pbuf buf[MAX_BUF]; /* this case's buffers on both backends */
    int n_buf;
} prun;

/* a case function returns 0 (compared), CASE_STOP (an op failed on dev: recorded, go on with
 * the next case) or a negative KV_E* code (the run cannot go on; p->err filled) */
enum { CASE_STOP = 1 };
typedef int (*case_fn)(prun *p, const pcase *c);

enum { G_A = 1, G_B = 2, G_C = 4, G_ALL = 7 }; /* gradients wanted (the others are NULL) */

struct pcase {
    const char *name;
    const char *ops; /* the kv_backend_ops members it exercises, space-separated */
    case_fn run;
    int T, pos0, S, nh, nkv, hd; /* attention (S: cache length); rope: T, nh, hd, S = max_pos */
    int n_in, n_out; /* matmul */
    int dim, V, B; /* rows of rmsnorm / swiglu / embedding; losses */
    size_t n; /* element-wise ops */
    kv_dtype dt, src_dt; /* weights / cache / convert's destination; convert's source */
    kv_attn_mask mask;
    int window, ring; /* attention: sliding window, ring rows (kernels.h); 0: none */
    int head_rows; /* attention: k, v [nkv, head_rows, hd] (the KV cache's layout); 0: [S, nkv, hd] */
    int acc, bias, inplace, llama3, bad_id;
    unsigned grads; /* G_* */
    float f1, f2; /* temperature & grad scale; scale k; lr & weight decay; ... */
    long step;
    double atol, rtol;
};

/* splitmix64 */
static uint64_t next_u64(prun *p) {
    uint64_t z = (p->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(prun *p) { return (double)(next_u64(p) >> 11) * (1.0 / 9007199254740992.0); }

static void *halloc(prun *p, size_t bytes) {
    if (p->n_host == MAX_HOST) return NULL;
    void *h = calloc(1, bytes ? bytes : 1);
    if (h) p->host[p->n_host++] = h;
    return h;
}

static int oom(prun *p, const char *what) {
    return kv_fail(p->err, KV_ENOMEM, "parity %s: host memory for %s", p->c->name, what);
}

/* n floats uniform in [-s, s) */
static float *hrand(prun *p, size_t n, float s) {
    float *h = halloc(p, sizeof(float) * n);
    if (h)
        for (size_t i = 0; i < n; i++) h[i] = s * (float)(2.0 * uniform(p) - 1.0);
    return h;
}

/* backend s, with the process-wide CPU thread count set to its own */
static kv_backend *side(prun *p, int s) {
    kv_backend *b = p->b[s];
    if (b->device == KV_DEVICE_CPU && b->threads > 0 && kv_kernels_threads() != b->threads)
        kv_kernels_set_threads(b->threads);
    return b;
}

static kv_parity_result *push(prun *p) {
    kv_parity_report *r = p->rep;
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 64;
        kv_parity_result *g = realloc(r->r, sizeof *g * (size_t)cap);
        if (!g) return NULL;
        r->r = g;
        r->cap = cap;
    }
    kv_parity_result *x = &r->r[r->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", p->c->name);
    x->op = p->c->ops;
    x->atol = p->flags & KV_PARITY_EXACT ? 0.0 : p->c->atol;
    x->rtol = p->flags & KV_PARITY_EXACT ? 0.0 : p->c->rtol;
    return x;
}

static void set_name(kv_parity_result *x, const char *case_name, const char *what) {
    snprintf(x->name, sizeof x->name, "%.60s: %.33s", case_name, what);
}

/* rc of an op on side s: 0 goes on; on dev a failure is a failed result (CASE_STOP); on ref it
 * ends the run (the oracle must not fail) */
static int op_rc(prun *p, int s, int rc, const char *op) {
    if (!rc) return 0;
    if (s == 1) return kv_wrap(p->err, "parity %s: reference %s", p->c->name, op);
    kv_parity_result *x = push(p);
    if (!x) return oom(p, "the report");
    set_name(x, p->c->name, op);
    snprintf(x->note, sizeof x->note, "%.32s failed: %.400s", op, p->err->msg);
    p->rep->failed++;
    p->err->code = 0;
    p->err->msg[0] = 0;
    return CASE_STOP;
}

/* a buffer of `bytes` on both backends, holding host[bytes] when host is not NULL (else zeros) */
static int dbuf(prun *p, pbuf **out, const void *host, size_t bytes) {
    if (p->n_buf == MAX_BUF)
        return kv_fail(p->err, KV_ENOMEM, "parity %s: more than %d buffers", p->c->name, MAX_BUF);
    pbuf *x = &p->buf[p->n_buf++];
    *x = (pbuf){.bytes = bytes};
    for (int s = 0; s < 2; s++) {
        kv_backend *b = p->b[s];
        int rc = op_rc(p, s, b->ops->alloc(b, &x->d[s], bytes, p->err), "alloc");
        if (!rc && host)
            rc = op_rc(p, s, b->ops->upload(b, x->d[s], host, bytes, p->err), "upload");
        if (rc) return rc;
    }
    *out = x;
    return 0;
}

static double widen(const void *a, kv_dtype t, size_t i) {
    if (t == KV_F32) return ((const float *)a)[i];
    if (t == KV_F64) return ((const double *)a)[i];
    if (t == KV_BF16) return kv_bf16_to_f32(((const uint16_t *)a)[i]);
    if (t == KV_F16) return kv_f16_to_f32(((const uint16_t *)a)[i]);
    return ((const int32_t *)a)[i];
}

/* records dev[n] vs ref[n] (host arrays of type t) as "<case>: what" */
static int cmp_host(prun *p, const char *what, const void *dev, const void *ref, kv_dtype t,
                    size_t n) {
    kv_parity_result *x = push(p);
    if (!x) return oom(p, "the report");
    set_name(x, p->c->name, what);
    x->n = n;
    const size_t es = kv_dtype_size(t);
    for (size_t i = 0; i < n; i++) {
        const double d = widen(dev, t, i), r = widen(ref, t, i), diff = fabs(d - r);
        const int same_bits =
            memcmp((const char *)dev + i * es, (const char *)ref + i * es, es) == 0;
        const int ok = same_bits || (!(p->flags & KV_PARITY_EXACT) &&
                                     diff <= x->atol + x->rtol * fabs(r)); /* NaN fails */
        if (!ok) x->bad++;
        if (!same_bits) {
            if (!(diff <= x->max_abs)) x->max_abs = diff; /* NaN is the max */
            const double rel = diff / (fabs(r) + x->atol);
            if (!(rel <= x->max_rel)) x->max_rel = rel;
        }
    }
    x->pass = x->bad == 0;
    if (!x->pass) p->rep->failed++;
    return 0;
}

/* downloads n elements of type t of buf from both backends and compares them */
static int cmp_buf(prun *p, const char *what, const pbuf *buf, kv_dtype t, size_t n) {
    const size_t bytes = n * kv_dtype_size(t);
    void *h[2] = {halloc(p, bytes), halloc(p, bytes)};
    if (!h[0] || !h[1]) return oom(p, what);
    for (int s = 0; s < 2; s++) {
        kv_backend *b = p->b[s];
        int rc = op_rc(p, s, b->ops->download(b, h[s], buf->d[s], bytes, p->err), "download");
        if (rc) return rc;
    }
    return cmp_host(p, what, h[0], h[1], t, n);
}

static int cmp_f32(prun *p, const char *what, const pbuf *buf, size_t n) {
    return cmp_buf(p, what, buf, KV_F32, n);
}

static int cmp_scalar(prun *p, const char *what, double dev, double ref) {
    return cmp_host(p, what, &dev, &ref, KV_F64, 1);
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_) return rc_;                                                                       \
    } while (0)
/* runs `call` (an op of b) on both sides: b and s are in scope for the arguments */
#define BOTH(opname, call)                                                                         \
    for (int s = 0; s < 2; s++) {                                                                  \
        kv_backend *b = side(p, s);                                                                \
        TRY(op_rc(p, s, b->ops->call, opname));                                                    \
    }
#define D(buf)         ((buf) ? (buf)->d[s] : NULL) /* buf's pointer on side s */
#define F(buf)         ((float *)D(buf))
#define WANT(bit, buf) (c->grads & (bit) ? F(buf) : NULL)

/* ---- the cases, by op ----------------------------------------------------------------------- */

/* alloc (zero-filled), upload/download, copy, zero of a range, map/unmap, sync */
static int case_memory(prun *p, const pcase *c) {
    const size_t n = c->n, bytes = sizeof(float) * n;
    float *a = hrand(p, n, 1.0f), *m = hrand(p, n, 100.0f);
    if (!a || !m) return oom(p, "inputs");
    pbuf *A, *B, *C;
    TRY(dbuf(p, &A, NULL, bytes));
    TRY(dbuf(p, &B, NULL, bytes));
    TRY(dbuf(p, &C, NULL, bytes));
    TRY(cmp_f32(p, "alloc zero-filled", A, n));
    for (int s = 0; s < 2; s++) {
        kv_backend *b = side(p, s);
        const void *mapped = NULL;
        TRY(op_rc(p, s, b->ops->upload(b, A->d[s], a, bytes, p->err), "upload"));
        TRY(op_rc(p, s, b->ops->copy(b, B->d[s], A->d[s], bytes, p->err), "copy"));
        TRY(op_rc(p, s, b->ops->zero(b, F(B) + n / 4, sizeof(float) * (n / 2 - n / 4), p->err),
                  "zero"));
        TRY(op_rc(p, s, b->ops->map(b, &mapped, m, bytes, p->err), "map"));
        int rc = op_rc(p, s, b->ops->copy(b, C->d[s], mapped, bytes, p->err), "copy");
        b->ops->unmap(b, mapped);
        TRY(rc);
        TRY(op_rc(p, s, b->ops->sync(b, p->err), "sync"));
    }
    TRY(cmp_f32(p, "upload, download", A, n));
    TRY(cmp_f32(p, "copy, zero a range", B, n));
    return cmp_f32(p, "map, copy, unmap", C, n);
}

/* a fresh backend of each side's kind: alloc, upload, scale, download, free, release */
static int case_lifecycle(prun *p, const pcase *c) {
    const size_t n = c->n, bytes = sizeof(float) * n;
    float *x = hrand(p, n, 1.0f), *out[2] = {halloc(p, bytes), halloc(p, bytes)};
    if (!x || !out[0] || !out[1]) return oom(p, "inputs");
    for (int s = 0; s < 2; s++) {
        kv_backend f;
        side(p, s);
        int rc = p->b[s]->device == KV_DEVICE_CUDA ? kv_backend_cuda_init(&f, 0, p->err)
                                                   : kv_backend_cpu_init(&f, 0, p->err);
        TRY(op_rc(p, s, rc, "init"));
        void *d = NULL;
        rc = f.ops->alloc(&f, &d, bytes, p->err);
        if (!rc) rc = f.ops->upload(&f, d, x, bytes, p->err);
        if (!rc) rc = f.ops->scale(&f, d, c->f1, n, p->err);
        if (!rc) rc = f.ops->download(&f, out[s], d, bytes, p->err);
        f.ops->free(&f, d);
        kv_backend_free(&f); /* release */
        TRY(op_rc(p, s, rc, "alloc, upload, scale, download"));
    }
    return cmp_host(p, "fresh backend", out[0], out[1], KV_F32, n);
}

/* F32 -> F16/BF16: specials (zeros, infinities, NaNs with payloads, ties, overflow, F16 and F32
 * subnormals) then random bit patterns and random values over a wide range of exponents;
 * F16/BF16 -> anything: every one of the 65536 bit patterns */
static int case_convert(prun *p, const pcase *c) {
    size_t n = c->n;
    void *src;
    if (c->src_dt == KV_F32) {
        static const uint32_t special[] = {
            0x00000000u, 0x80000000u, 0x3f800000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
            0x7f800001u, 0xffa5a5a5u, 0x7fffffffu, 0x3f808000u, 0x3f818000u, 0x3f80c000u,
            0x3f807fffu, 0x7f7fffffu, 0xff7fffffu, 0x00000001u, 0x807fffffu, 0x00800000u,
            0x477fe000u, 0x477ff000u, 0x477fefffu, 0x38800000u, 0x33800000u, 0x33000000u,
            0x33000001u, 0x387fc000u, 0x3f801000u, 0x3f803000u, 0x47800000u, 0xc77ff000u,
        };
        const size_t ns = sizeof special / sizeof special[0];
        uint32_t *u = halloc(p, sizeof(uint32_t) * n);
        if (!u) return oom(p, "inputs");
        for (size_t i = 0; i < n; i++) {
            if (i < ns) {
                u[i] = special[i];
            } else if (i % 2) {
                u[i] = (uint32_t)next_u64(p);
            } else {
                const float f =
                    (float)((2.0 * uniform(p) - 1.0) * ldexp(1.0, (int)(uniform(p) * 60) - 30));
                memcpy(&u[i], &f, sizeof f);
            }
        }
        src = u;
    } else {
        n = 65536;
        uint16_t *h = halloc(p, sizeof(uint16_t) * n);
        if (!h) return oom(p, "inputs");
        for (size_t i = 0; i < n; i++) h[i] = (uint16_t)i;
        src = h;
    }
    pbuf *S, *O;
    TRY(dbuf(p, &S, src, n * kv_dtype_size(c->src_dt)));
    TRY(dbuf(p, &O, NULL, n * kv_dtype_size(c->dt)));
    BOTH("convert", convert(b, D(O), c->dt, D(S), c->src_dt, n, p->err));
    return cmp_buf(p, "out", O, c->dt, n);
}

/* src [T, nh, hd] U(-4, 4) into a head-major buffer of head_rows rows per head at row pos0 */
static int case_store_heads(prun *p, const pcase *c) {
    const size_t nsrc = (size_t)c->T * c->nh * c->hd, pitch = (size_t)c->head_rows * c->hd;
    const size_t ndst = (size_t)c->nh * pitch, es = kv_dtype_size(c->dt);
    float *src = hrand(p, nsrc, 4.0f);
    unsigned char *dst = halloc(p, ndst * es);
    if (!src || !dst) return oom(p, "inputs");
    memset(dst, 0x5a, ndst * es); /* rows it does not write keep this */
    pbuf *S, *O;
    TRY(dbuf(p, &S, src, sizeof(float) * nsrc));
    TRY(dbuf(p, &O, dst, ndst * es));
    BOTH("store_heads", store_heads(b, (char *)D(O) + (size_t)c->pos0 * c->hd * es, c->dt, pitch,
                                    F(S), c->T, c->nh, c->hd, p->err));
    return cmp_buf(p, "out", O, c->dt, ndst);
}

static int case_matmul(prun *p, const pcase *c) {
    const int T = c->T, n_in = c->n_in, n_out = c->n_out;
    float *x = hrand(p, (size_t)T * n_in, 1.0f), *W = hrand(p, (size_t)n_out * n_in, 0.5f);
    float *bias = hrand(p, n_out, 1.0f), *y = hrand(p, (size_t)T * n_out, 1.0f);
    uint16_t *Wb = halloc(p, sizeof(uint16_t) * (size_t)n_out * n_in);
    if (!x || !W || !bias || !y || !Wb) return oom(p, "inputs");
    const void *w = W;
    if (c->dt == KV_BF16 || c->dt == KV_F16) {
        kv_dtype_cast(Wb, c->dt, W, KV_F32, (size_t)n_out * n_in);
        w = Wb;
    }
    pbuf *X, *Wd, *Bd = NULL, *Y;
    TRY(dbuf(p, &X, x, sizeof(float) * T * n_in));
    TRY(dbuf(p, &Wd, w, kv_dtype_size(c->dt) * n_out * n_in));
    if (c->bias) TRY(dbuf(p, &Bd, bias, sizeof(float) * n_out));
    TRY(dbuf(p, &Y, y, sizeof(float) * T * n_out)); /* added to, or overwritten */
    BOTH("matmul", matmul(b, F(Y), F(X), D(Wd), c->dt, F(Bd), T, n_in, n_out, c->acc, p->err));
    return cmp_f32(p, "out", Y, (size_t)T * n_out);
}

static int case_matmul_backward(prun *p, const pcase *c) {
    const int T = c->T, n_in = c->n_in, n_out = c->n_out;
    const size_t nx = (size_t)T * n_in, nw = (size_t)n_out * n_in, ny = (size_t)T * n_out;
    float *x = hrand(p, nx, 1.0f), *W = hrand(p, nw, 0.5f), *dy = hrand(p, ny, 1.0f);
    float *gx = hrand(p, nx, 1.0f), *gw = hrand(p, nw, 1.0f), *gb = hrand(p, n_out, 1.0f);
    if (!x || !W || !dy || !gx || !gw || !gb) return oom(p, "inputs");
    pbuf *X, *Wd, *DY, *GX, *GW, *GB;
    TRY(dbuf(p, &X, x, sizeof(float) * nx));
    TRY(dbuf(p, &Wd, W, sizeof(float) * nw));
    TRY(dbuf(p, &DY, dy, sizeof(float) * ny));
    TRY(dbuf(p, &GX, gx, sizeof(float) * nx));
    TRY(dbuf(p, &GW, gw, sizeof(float) * nw));
    TRY(dbuf(p, &GB, gb, sizeof(float) * n_out));
    BOTH("matmul_backward", matmul_backward(b, WANT(G_A, GX), WANT(G_B, GW), WANT(G_C, GB), F(DY),
                                            F(X), F(Wd), T, n_in, n_out, p->err));
    TRY(cmp_f32(p, c->grads & G_A ? "dx" : "dx (not wanted: unchanged)", GX, nx));
    TRY(cmp_f32(p, c->grads & G_B ? "dW" : "dW (not wanted: unchanged)", GW, nw));
    return cmp_f32(p, c->grads & G_C ? "dbias" : "dbias (not wanted: unchanged)", GB, n_out);
}

static int case_rmsnorm(prun *p, const pcase *c) {
    const size_t n = (size_t)c->T * c->dim;
    float *x = hrand(p, n, 3.0f), *w = hrand(p, c->dim, 1.0f), *y = hrand(p, n, 1.0f);
    if (!x || !w || !y) return oom(p, "inputs");
    pbuf *X, *Wd, *Y;
    TRY(dbuf(p, &X, x, sizeof(float) * n));
    TRY(dbuf(p, &Wd, w, sizeof(float) * c->dim));
    TRY(dbuf(p, &Y, y, sizeof(float) * n));
    pbuf *out = c->inplace ? X : Y;
    BOTH("rmsnorm", rmsnorm(b, F(out), F(X), F(Wd), c->T, c->dim, 1e-5f, p->err));
    return cmp_f32(p, c->inplace ? "out (in place)" : "out", out, n);
}

static int case_rmsnorm_backward(prun *p, const pcase *c) {
    const size_t n = (size_t)c->T * c->dim;
    float *x = hrand(p, n, 3.0f), *w = hrand(p, c->dim, 1.0f), *dy = hrand(p, n, 1.0f);
    float *gx = hrand(p, n, 1.0f), *gw = hrand(p, c->dim, 1.0f);
    if (!x || !w || !dy || !gx || !gw) return oom(p, "inputs");
    pbuf *X, *Wd, *DY, *GX, *GW;
    TRY(dbuf(p, &X, x, sizeof(float) * n));
    TRY(dbuf(p, &Wd, w, sizeof(float) * c->dim));
    TRY(dbuf(p, &DY, dy, sizeof(float) * n));
    TRY(dbuf(p, &GX, gx, sizeof(float) * n));
    TRY(dbuf(p, &GW, gw, sizeof(float) * c->dim));
    BOTH("rmsnorm_backward", rmsnorm_backward(b, WANT(G_A, GX), WANT(G_B, GW), F(DY), F(X), F(Wd),
                                              c->T, c->dim, 1e-5f, p->err));
    TRY(cmp_f32(p, c->grads & G_A ? "dx" : "dx (not wanted: unchanged)", GX, n));
    return cmp_f32(p, c->grads & G_B ? "dw" : "dw (not wanted: unchanged)", GW, c->dim);
}

/* rope and rope_backward: c->S is the table's max_pos; positions random below it */
static int rope_case(prun *p, const pcase *c, int backward) {
    const size_t n = (size_t)c->T * c->nh * c->hd;
    float *x = hrand(p, n, 2.0f);
    int32_t *pos = halloc(p, sizeof(int32_t) * c->T);
    if (!x || !pos) return oom(p, "inputs");
    for (int t = 0; t < c->T; t++) pos[t] = (int32_t)(uniform(p) * c->S);
    if (c->T > 2) pos[0] = 0, pos[c->T - 1] = c->S - 1; /* both ends of the table */
    kv_rope_config cfg = {.theta = 10000.0, .scaling = KV_ROPE_PLAIN};
    if (c->llama3)
        cfg = (kv_rope_config){.theta = 500000.0,
                               .scaling = KV_ROPE_LLAMA3,
                               .factor = 8.0,
                               .low_freq_factor = 1.0,
                               .high_freq_factor = 4.0,
                               .original_max_position = 8192};
    kv_rope_table host;
    TRY(kv_rope_table_init(&host, c->hd, c->S, &cfg, p->err));
    pbuf *X, *P;
    int rc = dbuf(p, &X, x, sizeof(float) * n);
    if (!rc) rc = dbuf(p, &P, pos, sizeof(int32_t) * c->T);
    for (int s = 0; s < 2 && !rc; s++) {
        kv_backend *b = side(p, s);
        kv_rope_table dt;
        rc = op_rc(p, s, kv_backend_rope_table(b, &dt, &host, p->err), "rope table");
        if (rc) break;
        rc = backward ? b->ops->rope_backward(b, F(X), c->T, c->nh, D(P), &dt, p->err)
                      : b->ops->rope(b, F(X), c->T, c->nh, D(P), &dt, p->err);
        rc = op_rc(p, s, rc, backward ? "rope_backward" : "rope");
        if (!rc) rc = op_rc(p, s, b->ops->sync(b, p->err), "sync"); /* the table goes next */
        kv_backend_rope_table_free(b, &dt);
    }
    kv_rope_table_free(&host);
    return rc ? rc : cmp_f32(p, backward ? "dx" : "x", X, n);
}
static int case_rope(prun *p, const pcase *c) { return rope_case(p, c, 0); }
static int case_rope_backward(prun *p, const pcase *c) { return rope_case(p, c, 1); }

static int case_attention(prun *p, const pcase *c) {
    const size_t rows = (size_t)(c->head_rows ? c->head_rows : c->ring ? c->ring : c->S);
    const size_t nq = (size_t)c->T * c->nh * c->hd, nk = rows * c->nkv * c->hd;
    float *q = hrand(p, nq, c->f1 > 0 ? c->f1 : 1.5f), *k = hrand(p, nk, 1.5f);
    float *v = hrand(p, nk, 1.0f), *o = hrand(p, nq, 1.0f);
    uint16_t *kb = halloc(p, sizeof(uint16_t) * nk), *vb = halloc(p, sizeof(uint16_t) * nk);
    if (!q || !k || !v || !o || !kb || !vb) return oom(p, "inputs");
    const void *kc = k, *vc = v;
    if (c->dt == KV_BF16) {
        kv_dtype_cast(kb, KV_BF16, k, KV_F32, nk);
        kv_dtype_cast(vb, KV_BF16, v, KV_F32, nk);
        kc = kb, vc = vb;
    }
    const size_t es = kv_dtype_size(c->dt);
    pbuf *Q, *K, *Vd, *O;
    TRY(dbuf(p, &Q, q, sizeof(float) * nq));
    TRY(dbuf(p, &K, kc, es * nk));
    TRY(dbuf(p, &Vd, vc, es * nk));
    TRY(dbuf(p, &O, o, sizeof(float) * nq)); /* overwritten */
    BOTH("attention", attention(b, F(O), F(Q), D(K), D(Vd), c->dt, c->head_rows, c->T, c->pos0,
                                c->S, c->nh, c->nkv, c->hd, c->mask, c->window, c->ring, p->err));
    return cmp_f32(p, "out", O, nq);
}

static int case_attention_backward(prun *p, const pcase *c) {
    const size_t nq = (size_t)c->T * c->nh * c->hd, nk = (size_t)c->S * c->nkv * c->hd;
    float *q = hrand(p, nq, 1.5f), *k = hrand(p, nk, 1.5f), *v = hrand(p, nk, 1.0f);
    float *dy = hrand(p, nq, 1.0f), *gq = hrand(p, nq, 1.0f), *gk = hrand(p, nk, 1.0f);
    float *gv = hrand(p, nk, 1.0f);
    if (!q || !k || !v || !dy || !gq || !gk || !gv) return oom(p, "inputs");
    pbuf *Q, *K, *Vd, *DY, *GQ, *GK, *GV;
    TRY(dbuf(p, &Q, q, sizeof(float) * nq));
    TRY(dbuf(p, &K, k, sizeof(float) * nk));
    TRY(dbuf(p, &Vd, v, sizeof(float) * nk));
    TRY(dbuf(p, &DY, dy, sizeof(float) * nq));
    TRY(dbuf(p, &GQ, gq, sizeof(float) * nq));
    TRY(dbuf(p, &GK, gk, sizeof(float) * nk));
    TRY(dbuf(p, &GV, gv, sizeof(float) * nk));
    BOTH("attention_backward",
         attention_backward(b, WANT(G_A, GQ), WANT(G_B, GK), WANT(G_C, GV), F(DY), F(Q), F(K),
                            F(Vd), c->T, c->pos0, c->S, c->nh, c->nkv, c->hd, c->mask, c->window,
                            p->err));
    TRY(cmp_f32(p, c->grads & G_A ? "dq" : "dq (not wanted: unchanged)", GQ, nq));
    TRY(cmp_f32(p, c->grads & G_B ? "dk" : "dk (not wanted: unchanged)", GK, nk));
    return cmp_f32(p, c->grads & G_C ? "dv" : "dv (not wanted: unchanged)", GV, nk);
}

static int case_swiglu(prun *p, const pcase *c) {
    const size_t n = (size_t)c->T * c->dim;
    float *g = hrand(p, n, 6.0f), *u = hrand(p, n, 2.0f), *h = hrand(p, n, 1.0f);
    if (!g || !u || !h) return oom(p, "inputs");
    pbuf *G, *U, *H;
    TRY(dbuf(p, &G, g, sizeof(float) * n));
    TRY(dbuf(p, &U, u, sizeof(float) * n));
    TRY(dbuf(p, &H, h, sizeof(float) * n));
    pbuf *out = c->inplace ? G : H; /* h may alias gate */
    BOTH("swiglu", swiglu(b, F(out), F(G), F(U), c->T, c->dim, p->err));
    return cmp_f32(p, c->inplace ? "h (aliasing gate)" : "h", out, n);
}

static int case_swiglu_backward(prun *p, const pcase *c) {
    const size_t n = c->n;
    float *g = hrand(p, n, 6.0f), *u = hrand(p, n, 2.0f), *dh = hrand(p, n, 1.0f);
    float *gg = hrand(p, n, 1.0f), *gu = hrand(p, n, 1.0f);
    if (!g || !u || !dh || !gg || !gu) return oom(p, "inputs");
    pbuf *G, *U, *DH, *GG, *GU;
    TRY(dbuf(p, &G, g, sizeof(float) * n));
    TRY(dbuf(p, &U, u, sizeof(float) * n));
    TRY(dbuf(p, &DH, dh, sizeof(float) * n));
    TRY(dbuf(p, &GG, gg, sizeof(float) * n));
    TRY(dbuf(p, &GU, gu, sizeof(float) * n));
    BOTH("swiglu_backward",
         swiglu_backward(b, WANT(G_A, GG), WANT(G_B, GU), F(DH), F(G), F(U), n, p->err));
    TRY(cmp_f32(p, c->grads & G_A ? "dgate" : "dgate (not wanted: unchanged)", GG, n));
    return cmp_f32(p, c->grads & G_B ? "dup" : "dup (not wanted: unchanged)", GU, n);
}

/* host ids; with bad_id the last is outside the vocabulary: both backends must refuse it with
 * KV_EINVAL and leave out as it was */
static int case_embedding(prun *p, const pcase *c) {
    const size_t n = (size_t)c->T * c->dim;
    float *table = hrand(p, (size_t)c->V * c->dim, 1.0f), *o = hrand(p, n, 1.0f);
    int32_t *ids = halloc(p, sizeof(int32_t) * c->T);
    if (!table || !o || !ids) return oom(p, "inputs");
    for (int t = 0; t < c->T; t++) ids[t] = (int32_t)(uniform(p) * c->V);
    if (c->T > 1) ids[1] = c->V - 1; /* the last row of the table */
    if (c->bad_id) ids[c->T - 1] = c->bad_id > 0 ? c->V : -1;
    pbuf *Tb, *O;
    TRY(dbuf(p, &Tb, table, sizeof(float) * c->V * c->dim));
    TRY(dbuf(p, &O, o, sizeof(float) * n));
    if (!c->bad_id) {
        BOTH("embedding", embedding(b, F(O), F(Tb), c->V, c->dim, ids, c->T, p->err));
        return cmp_f32(p, "out", O, n);
    }
    int rc[2];
    char msg[2][sizeof p->err->msg];
    for (int s = 0; s < 2; s++) {
        kv_backend *b = side(p, s);
        rc[s] = b->ops->embedding(b, F(O), F(Tb), c->V, c->dim, ids, c->T, p->err);
        snprintf(msg[s], sizeof msg[s], "%s", rc[s] ? p->err->msg : "accepted");
        p->err->code = 0;
    }
    kv_parity_result *x = push(p);
    if (!x) return oom(p, "the report");
    set_name(x, c->name, "refused (KV_EINVAL)");
    x->n = 1;
    x->pass = rc[0] == KV_EINVAL && rc[1] == KV_EINVAL;
    x->bad = !x->pass;
    snprintf(x->note, sizeof x->note, "device: %.200s; reference: %.200s", msg[0], msg[1]);
    if (!x->pass) p->rep->failed++;
    return cmp_f32(p, "out (unchanged)", O, n);
}

/* c->acc: the gradient starts random (checks that it adds) instead of zero; c->bias: per-row
 * weights, every third row 0 (an assistant-token mask: skipped rows keep their gradient), the
 * others T / (rows kept) */
static int case_distill_kl(prun *p, const pcase *c) {
    const size_t n = (size_t)c->T * c->V;
    float *st = hrand(p, n, 6.0f), *te = hrand(p, n, 6.0f);
    float *g = c->acc ? hrand(p, n, 1e-3f) : halloc(p, sizeof(float) * n);
    float *w = halloc(p, sizeof(float) * (size_t)c->T);
    if (!st || !te || !g || !w) return oom(p, "inputs");
    int kept = 0;
    for (int t = 0; t < c->T; t++) kept += t % 3 != 0;
    for (int t = 0; t < c->T; t++) w[t] = t % 3 != 0 ? (float)c->T / (float)kept : 0.0f;
    pbuf *S, *Te, *G, *Wt;
    TRY(dbuf(p, &S, st, sizeof(float) * n));
    TRY(dbuf(p, &Te, te, sizeof(float) * n));
    TRY(dbuf(p, &G, g, sizeof(float) * n));
    TRY(dbuf(p, &Wt, w, sizeof(float) * (size_t)c->T));
    double loss[2] = {0, 0};
    BOTH("distill_kl", distill_kl(b, &loss[s], WANT(G_A, G), F(S), F(Te), c->bias ? F(Wt) : NULL,
                                  c->T, c->V, c->f1, c->f2, p->err));
    TRY(cmp_scalar(p, "loss", loss[0], loss[1]));
    return cmp_f32(p, c->grads & G_A ? "dstudent" : "dstudent (not wanted: unchanged)", G, n);
}

static int case_next_token_ce(prun *p, const pcase *c) {
    const size_t rows = (size_t)c->B * c->T, n = rows * c->V;
    float *z = hrand(p, n, 6.0f);
    float *g = c->acc ? hrand(p, n, 1e-3f) : halloc(p, sizeof(float) * n);
    int32_t *tok = halloc(p, sizeof(int32_t) * rows);
    if (!z || !g || !tok) return oom(p, "inputs");
    for (size_t i = 0; i < rows; i++) tok[i] = (int32_t)(uniform(p) * c->V);
    if (rows > 1) tok[1] = c->V - 1;
    pbuf *Z, *G, *Tk;
    TRY(dbuf(p, &Z, z, sizeof(float) * n));
    TRY(dbuf(p, &G, g, sizeof(float) * n));
    TRY(dbuf(p, &Tk, tok, sizeof(int32_t) * rows));
    double loss[2] = {0, 0};
    BOTH("next_token_ce",
         next_token_ce(b, &loss[s], WANT(G_A, G), F(Z), D(Tk), c->B, c->T, c->V, c->f2, p->err));
    TRY(cmp_scalar(p, "loss", loss[0], loss[1]));
    return cmp_f32(p, c->grads & G_A ? "dlogits" : "dlogits (not wanted: unchanged)", G, n);
}

static int case_mse(prun *p, const pcase *c) {
    const size_t n = c->n;
    float *st = hrand(p, n, 2.0f), *te = hrand(p, n, 2.0f), *g = hrand(p, n, 1e-3f);
    if (!st || !te || !g) return oom(p, "inputs");
    pbuf *S, *Te, *G;
    TRY(dbuf(p, &S, st, sizeof(float) * n));
    TRY(dbuf(p, &Te, te, sizeof(float) * n));
    TRY(dbuf(p, &G, g, sizeof(float) * n));
    double loss[2] = {0, 0};
    BOTH("mse", mse(b, &loss[s], WANT(G_A, G), F(S), F(Te), n, c->f2, p->err));
    TRY(cmp_scalar(p, "loss", loss[0], loss[1]));
    return cmp_f32(p, c->grads & G_A ? "dstudent" : "dstudent (not wanted: unchanged)", G, n);
}

/* the sum continues from c->f2 */
static int case_sumsq(prun *p, const pcase *c) {
    float *x = hrand(p, c->n, c->f1);
    if (!x) return oom(p, "inputs");
    pbuf *X;
    TRY(dbuf(p, &X, x, sizeof(float) * c->n));
    double acc[2] = {c->f2, c->f2};
    BOTH("sumsq", sumsq(b, &acc[s], F(X), c->n, p->err));
    return cmp_scalar(p, "sum", acc[0], acc[1]);
}

static int case_scale(prun *p, const pcase *c) {
    float *x = hrand(p, c->n, 3.0f);
    if (!x) return oom(p, "inputs");
    pbuf *X;
    TRY(dbuf(p, &X, x, sizeof(float) * c->n));
    BOTH("scale", scale(b, F(X), c->f1, c->n, p->err));
    return cmp_f32(p, "x", X, c->n);
}

static int case_add(prun *p, const pcase *c) {
    float *dst = hrand(p, c->n, 3.0f), *src = hrand(p, c->n, 1.0f);
    if (!dst || !src) return oom(p, "inputs");
    pbuf *D, *S;
    TRY(dbuf(p, &D, dst, sizeof(float) * c->n));
    TRY(dbuf(p, &S, src, sizeof(float) * c->n));
    BOTH("add", add(b, F(D), F(S), c->n, p->err));
    return cmp_f32(p, "dst", D, c->n);
}

static int case_adamw(prun *p, const pcase *c) {
    const size_t n = c->n;
    float *w = hrand(p, n, 1.0f), *g = hrand(p, n, 0.1f), *m = hrand(p, n, 0.01f);
    float *v = hrand(p, n, 1e-4f);
    if (!w || !g || !m || !v) return oom(p, "inputs");
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    if (c->step == 1) memset(m, 0, sizeof(float) * n), memset(v, 0, sizeof(float) * n);
    pbuf *W, *G, *M, *Vd;
    TRY(dbuf(p, &W, w, sizeof(float) * n));
    TRY(dbuf(p, &G, g, sizeof(float) * n));
    TRY(dbuf(p, &M, m, sizeof(float) * n));
    TRY(dbuf(p, &Vd, v, sizeof(float) * n));
    const kv_adamw_step st = {.beta1 = 0.9,
                              .beta2 = 0.999,
                              .eps = 1e-8,
                              .weight_decay = c->f2,
                              .lr = c->f1,
                              .t = c->step};
    BOTH("adamw", adamw(b, F(W), F(G), F(M), F(Vd), n, &st, p->err));
    TRY(cmp_f32(p, "w", W, n));
    TRY(cmp_f32(p, "m", M, n));
    return cmp_f32(p, "v", Vd, n);
}

/* ---- the table -------------------------------------------------------------------------------
 * Tolerances are for a GPU against the CPU: float sums in another order (and fused multiply-add)
 * cost a few ulps per term; matmul with BF16 weights and T > 1 rounds x to BF16 (kv_cuda.h), a
 * relative 2^-9 per product. Conversions, copies, embedding and scale must be exact. */

#define MEM_OPS "alloc free map unmap upload download zero copy sync"
#define CAUSAL  KV_MASK_CAUSAL
#define STRICT  KV_MASK_STRICT

static const pcase cases[] = {
    /* memory */
    {.name = "memory 1001 floats", .ops = MEM_OPS, .run = case_memory, .n = 1001},
    {.name = "memory 1 float", .ops = MEM_OPS, .run = case_memory, .n = 1},
    {.name = "backend init, release",
     .ops = "release",
     .run = case_lifecycle,
     .n = 4097,
     .f1 = 0.5f},

    /* convert (exact) */
    {.name = "store_heads F32 T=5 at 3 of 16 rows, 3 heads of 40",
     .ops = "store_heads",
     .run = case_store_heads,
     .T = 5,
     .pos0 = 3,
     .nh = 3,
     .hd = 40,
     .head_rows = 16,
     .dt = KV_F32},
    {.name = "store_heads BF16 T=33 at 0 of 40 rows, 4 heads of 64",
     .ops = "store_heads",
     .run = case_store_heads,
     .T = 33,
     .nh = 4,
     .hd = 64,
     .head_rows = 40,
     .dt = KV_BF16},
    {.name = "convert F32 -> BF16",
     .ops = "convert",
     .run = case_convert,
     .n = 20001,
     .src_dt = KV_F32,
     .dt = KV_BF16},
    {.name = "convert F32 -> F16",
     .ops = "convert",
     .run = case_convert,
     .n = 20001,
     .src_dt = KV_F32,
     .dt = KV_F16},
    {.name = "convert BF16 -> F32 (all)",
     .ops = "convert",
     .run = case_convert,
     .src_dt = KV_BF16,
     .dt = KV_F32},
    {.name = "convert F16 -> F32 (all)",
     .ops = "convert",
     .run = case_convert,
     .src_dt = KV_F16,
     .dt = KV_F32},
    {.name = "convert F16 -> BF16 (all)",
     .ops = "convert",
     .run = case_convert,
     .src_dt = KV_F16,
     .dt = KV_BF16},
    {.name = "convert BF16 -> F16 (all)",
     .ops = "convert",
     .run = case_convert,
     .src_dt = KV_BF16,
     .dt = KV_F16},
    {.name = "convert F32 -> F32",
     .ops = "convert",
     .run = case_convert,
     .n = 777,
     .src_dt = KV_F32,
     .dt = KV_F32},

    /* matmul: x U(-1,1), W U(-.5,.5) */
    {.name = "matmul f32 T=1 256x384 bias",
     .ops = "matmul",
     .run = case_matmul,
     .T = 1,
     .n_in = 256,
     .n_out = 384,
     .bias = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul f32 T=1 odd 257x131 acc",
     .ops = "matmul",
     .run = case_matmul,
     .T = 1,
     .n_in = 257,
     .n_out = 131,
     .acc = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul f32 T=37 256x200 acc bias",
     .ops = "matmul",
     .run = case_matmul,
     .T = 37,
     .n_in = 256,
     .n_out = 200,
     .acc = 1,
     .bias = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul f32 T=5 odd 33x17",
     .ops = "matmul",
     .run = case_matmul,
     .T = 5,
     .n_in = 33,
     .n_out = 17,
     .atol = 1e-5,
     .rtol = 1e-4},
    {.name = "matmul bf16 T=1 512x300 bias",
     .ops = "matmul",
     .run = case_matmul,
     .T = 1,
     .n_in = 512,
     .n_out = 300,
     .dt = KV_BF16,
     .bias = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul bf16 T=1 odd 129x77 acc",
     .ops = "matmul",
     .run = case_matmul,
     .T = 1,
     .n_in = 129,
     .n_out = 77,
     .dt = KV_BF16,
     .acc = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul bf16 T=37 256x200 acc bias",
     .ops = "matmul",
     .run = case_matmul,
     .T = 37,
     .n_in = 256,
     .n_out = 200,
     .dt = KV_BF16,
     .acc = 1,
     .bias = 1,
     .atol = 3e-2,
     .rtol = 1e-2},
    {.name = "matmul bf16 T=7 odd 65x33",
     .ops = "matmul",
     .run = case_matmul,
     .T = 7,
     .n_in = 65,
     .n_out = 33,
     .dt = KV_BF16,
     .atol = 2e-2,
     .rtol = 1e-2},
    /* F16 weights: widened exactly on both sides (CUDA T > 1: F32 GEMM on widened blocks), so
     * F32 tolerances */
    {.name = "matmul f16 T=1 512x300 bias",
     .ops = "matmul",
     .run = case_matmul,
     .T = 1,
     .n_in = 512,
     .n_out = 300,
     .dt = KV_F16,
     .bias = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul f16 T=1 odd 129x77 acc",
     .ops = "matmul",
     .run = case_matmul,
     .T = 1,
     .n_in = 129,
     .n_out = 77,
     .dt = KV_F16,
     .acc = 1,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul f16 T=37 256x200 acc bias",
     .ops = "matmul",
     .run = case_matmul,
     .T = 37,
     .n_in = 256,
     .n_out = 200,
     .dt = KV_F16,
     .acc = 1,
     .bias = 1,
     .atol = 1e-4,
     .rtol = 1e-4},

    /* rmsnorm: x U(-3,3) */
    {.name = "rmsnorm T=1 64",
     .ops = "rmsnorm",
     .run = case_rmsnorm,
     .T = 1,
     .dim = 64,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "rmsnorm T=33 640",
     .ops = "rmsnorm",
     .run = case_rmsnorm,
     .T = 33,
     .dim = 640,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "rmsnorm T=7 odd 1001 in place",
     .ops = "rmsnorm",
     .run = case_rmsnorm,
     .T = 7,
     .dim = 1001,
     .inplace = 1,
     .atol = 1e-5,
     .rtol = 1e-5},

    /* rope: S = the table's positions */
    {.name = "rope T=1 8x64 plain",
     .ops = "rope",
     .run = case_rope,
     .T = 1,
     .nh = 8,
     .hd = 64,
     .S = 2048,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "rope T=29 6x64 llama3",
     .ops = "rope",
     .run = case_rope,
     .T = 29,
     .nh = 6,
     .hd = 64,
     .S = 4096,
     .llama3 = 1,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "rope T=13 odd 3x2 plain",
     .ops = "rope",
     .run = case_rope,
     .T = 13,
     .nh = 3,
     .hd = 2,
     .S = 100,
     .atol = 1e-5,
     .rtol = 1e-5},

    /* attention: q U(-1.5,1.5) (f1), k U(-1.5,1.5), v U(-1,1); GQA ratio = nh / nkv */
    {.name = "attention f32 mha causal T=17",
     .ops = "attention",
     .run = case_attention,
     .T = 17,
     .S = 17,
     .nh = 4,
     .nkv = 4,
     .hd = 64,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa2 strict T=40 from 0",
     .ops = "attention",
     .run = case_attention,
     .T = 40,
     .S = 40,
     .nh = 8,
     .nkv = 4,
     .hd = 128,
     .mask = STRICT,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa4 causal T=40 at 90",
     .ops = "attention",
     .run = case_attention,
     .T = 40,
     .pos0 = 90,
     .S = 130,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa8 causal T=1 S=1500",
     .ops = "attention",
     .run = case_attention,
     .T = 1,
     .pos0 = 1499,
     .S = 1500,
     .nh = 8,
     .nkv = 1,
     .hd = 96,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa8 strict T=1 S=1100",
     .ops = "attention",
     .run = case_attention,
     .T = 1,
     .pos0 = 1099,
     .S = 1100,
     .nh = 16,
     .nkv = 2,
     .hd = 64,
     .mask = STRICT,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa2 odd hd=33 T=9 S<pos",
     .ops = "attention",
     .run = case_attention,
     .T = 9,
     .pos0 = 11,
     .S = 15,
     .nh = 6,
     .nkv = 3,
     .hd = 33,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 mha strict T=1 at 0",
     .ops = "attention",
     .run = case_attention,
     .T = 1,
     .S = 1,
     .nh = 2,
     .nkv = 2,
     .hd = 16,
     .mask = STRICT,
     .atol = 0,
     .rtol = 0},
    {.name = "attention f32 gqa4 causal sharp T=24",
     .ops = "attention",
     .run = case_attention,
     .T = 24,
     .pos0 = 40,
     .S = 64,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .f1 = 12.0f,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa4 causal window 7 T=40 at 90",
     .ops = "attention",
     .run = case_attention,
     .T = 40,
     .pos0 = 90,
     .S = 130,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .window = 7,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa2 strict window 2 T=33 from 0",
     .ops = "attention",
     .run = case_attention,
     .T = 33,
     .S = 33,
     .nh = 6,
     .nkv = 3,
     .hd = 33,
     .mask = STRICT,
     .window = 2,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa8 causal window 100 ring 100 T=1 S=1500",
     .ops = "attention",
     .run = case_attention,
     .T = 1,
     .pos0 = 1499,
     .S = 1500,
     .nh = 8,
     .nkv = 1,
     .hd = 96,
     .window = 100,
     .ring = 100,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 gqa2 causal window 70 ring 90 T=21 at 300",
     .ops = "attention",
     .run = case_attention,
     .T = 21,
     .pos0 = 300,
     .S = 321,
     .nh = 4,
     .nkv = 2,
     .hd = 128,
     .dt = KV_BF16,
     .window = 70,
     .ring = 90,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 mha strict window 1 T=9 at 5",
     .ops = "attention",
     .run = case_attention,
     .T = 9,
     .pos0 = 5,
     .S = 14,
     .nh = 2,
     .nkv = 2,
     .hd = 16,
     .dt = KV_BF16,
     .mask = STRICT,
     .window = 1,
     .atol = 0,
     .rtol = 0},
    {.name = "attention bf16 gqa4 causal T=1 S=1200",
     .ops = "attention",
     .run = case_attention,
     .T = 1,
     .pos0 = 1199,
     .S = 1200,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .dt = KV_BF16,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 mha strict T=24 from 0",
     .ops = "attention",
     .run = case_attention,
     .T = 24,
     .S = 24,
     .nh = 4,
     .nkv = 4,
     .hd = 80,
     .dt = KV_BF16,
     .mask = STRICT,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 gqa2 causal T=64 S=1064",
     .ops = "attention",
     .run = case_attention,
     .T = 64,
     .pos0 = 1000,
     .S = 1064,
     .nh = 4,
     .nkv = 2,
     .hd = 128,
     .dt = KV_BF16,
     .atol = 2e-5,
     .rtol = 1e-4},
    /* the KV cache's layout, head by head: rows beyond the keys (head_rows > S or the ring) */
    {.name = "attention f32 mha causal T=1 S=700 head rows 800",
     .ops = "attention",
     .run = case_attention,
     .T = 1,
     .pos0 = 699,
     .S = 700,
     .nh = 6,
     .nkv = 6,
     .hd = 64,
     .head_rows = 800,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention f32 gqa4 strict T=40 at 90 head rows 130",
     .ops = "attention",
     .run = case_attention,
     .T = 40,
     .pos0 = 90,
     .S = 130,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .mask = STRICT,
     .head_rows = 130,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 gqa2 causal window 70 ring 90 T=21 at 300 head rows 96",
     .ops = "attention",
     .run = case_attention,
     .T = 21,
     .pos0 = 300,
     .S = 321,
     .nh = 4,
     .nkv = 2,
     .hd = 128,
     .dt = KV_BF16,
     .window = 70,
     .ring = 90,
     .head_rows = 96,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 mha causal T=64 S=1064 head rows 1100",
     .ops = "attention",
     .run = case_attention,
     .T = 64,
     .pos0 = 1000,
     .S = 1064,
     .nh = 4,
     .nkv = 4,
     .hd = 64,
     .dt = KV_BF16,
     .head_rows = 1100,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention bf16 gqa8 strict T=5 S=1030",
     .ops = "attention",
     .run = case_attention,
     .T = 5,
     .pos0 = 1025,
     .S = 1030,
     .nh = 8,
     .nkv = 1,
     .hd = 64,
     .dt = KV_BF16,
     .mask = STRICT,
     .atol = 2e-5,
     .rtol = 1e-4},

    /* swiglu: gate U(-6,6), up U(-2,2) */
    {.name = "swiglu T=1 odd 10007",
     .ops = "swiglu",
     .run = case_swiglu,
     .T = 1,
     .dim = 10007,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "swiglu T=13 352 aliasing gate",
     .ops = "swiglu",
     .run = case_swiglu,
     .T = 13,
     .dim = 352,
     .inplace = 1,
     .atol = 1e-5,
     .rtol = 1e-5},

    /* embedding (exact) */
    {.name = "embedding T=1 1000x288",
     .ops = "embedding",
     .run = case_embedding,
     .T = 1,
     .V = 1000,
     .dim = 288},
    {.name = "embedding T=37 odd 517x33",
     .ops = "embedding",
     .run = case_embedding,
     .T = 37,
     .V = 517,
     .dim = 33},
    {.name = "embedding id = vocab refused",
     .ops = "embedding",
     .run = case_embedding,
     .T = 5,
     .V = 100,
     .dim = 16,
     .bad_id = 1},
    {.name = "embedding id < 0 refused",
     .ops = "embedding",
     .run = case_embedding,
     .T = 3,
     .V = 100,
     .dim = 16,
     .bad_id = -1},

    /* losses: logits U(-6,6); f1 = temperature, f2 = grad_scale */
    {.name = "distill_kl T=9 V=3000 temp 2",
     .ops = "distill_kl",
     .run = case_distill_kl,
     .T = 9,
     .V = 3000,
     .f1 = 2.0f,
     .f2 = 1.0f,
     .grads = G_A,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "distill_kl T=1 V=32000 temp 1 adds",
     .ops = "distill_kl",
     .run = case_distill_kl,
     .T = 1,
     .V = 32000,
     .f1 = 1.0f,
     .f2 = 0.5f,
     .grads = G_A,
     .acc = 1,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "distill_kl T=10 V=3000 temp 2 row weights (mask) adds",
     .ops = "distill_kl",
     .run = case_distill_kl,
     .T = 10,
     .V = 3000,
     .f1 = 2.0f,
     .f2 = 0.5f,
     .grads = G_A,
     .acc = 1,
     .bias = 1,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "distill_kl T=4 odd V=1001 temp .7 no grad",
     .ops = "distill_kl",
     .run = case_distill_kl,
     .T = 4,
     .V = 1001,
     .f1 = 0.7f,
     .f2 = 1.0f,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "next_token_ce B=2 T=9 V=3000",
     .ops = "next_token_ce",
     .run = case_next_token_ce,
     .B = 2,
     .T = 9,
     .V = 3000,
     .f2 = 1.0f,
     .grads = G_A,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "next_token_ce B=1 T=2 odd V=517 adds",
     .ops = "next_token_ce",
     .run = case_next_token_ce,
     .B = 1,
     .T = 2,
     .V = 517,
     .f2 = 0.25f,
     .grads = G_A,
     .acc = 1,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "next_token_ce B=3 T=5 V=2000 no grad",
     .ops = "next_token_ce",
     .run = case_next_token_ce,
     .B = 3,
     .T = 5,
     .V = 2000,
     .f2 = 1.0f,
     .atol = 1e-9,
     .rtol = 1e-5},
    {.name = "next_token_ce B=3 T=1 (no targets)",
     .ops = "next_token_ce",
     .run = case_next_token_ce,
     .B = 3,
     .T = 1,
     .V = 50,
     .f2 = 1.0f,
     .grads = G_A,
     .atol = 0,
     .rtol = 0},
    {.name = "mse odd 10007",
     .ops = "mse",
     .run = case_mse,
     .n = 10007,
     .f2 = 1.0f,
     .grads = G_A,
     .atol = 1e-9,
     .rtol = 1e-6},
    {.name = "mse 1 scale 2",
     .ops = "mse",
     .run = case_mse,
     .n = 1,
     .f2 = 2.0f,
     .grads = G_A,
     .atol = 1e-9,
     .rtol = 1e-6},
    {.name = "mse 300000 no grad",
     .ops = "mse",
     .run = case_mse,
     .n = 300000,
     .f2 = 1.0f,
     .atol = 1e-9,
     .rtol = 1e-6},

    /* backward; gradients start random (they add); G_* name the ones wanted */
    {.name = "matmul_backward T=1 odd 129x77",
     .ops = "matmul_backward",
     .run = case_matmul_backward,
     .T = 1,
     .n_in = 129,
     .n_out = 77,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul_backward T=37 256x200",
     .ops = "matmul_backward",
     .run = case_matmul_backward,
     .T = 37,
     .n_in = 256,
     .n_out = 200,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "matmul_backward T=5 odd 33x17 dx",
     .ops = "matmul_backward",
     .run = case_matmul_backward,
     .T = 5,
     .n_in = 33,
     .n_out = 17,
     .grads = G_A,
     .atol = 1e-5,
     .rtol = 1e-4},
    {.name = "matmul_backward T=64 96x160 dW dbias",
     .ops = "matmul_backward",
     .run = case_matmul_backward,
     .T = 64,
     .n_in = 96,
     .n_out = 160,
     .grads = G_B | G_C,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "rmsnorm_backward T=1 64",
     .ops = "rmsnorm_backward",
     .run = case_rmsnorm_backward,
     .T = 1,
     .dim = 64,
     .grads = G_ALL,
     .atol = 1e-5,
     .rtol = 1e-4},
    {.name = "rmsnorm_backward T=33 640",
     .ops = "rmsnorm_backward",
     .run = case_rmsnorm_backward,
     .T = 33,
     .dim = 640,
     .grads = G_ALL,
     .atol = 1e-5,
     .rtol = 1e-4},
    {.name = "rmsnorm_backward T=7 odd 1001 dx",
     .ops = "rmsnorm_backward",
     .run = case_rmsnorm_backward,
     .T = 7,
     .dim = 1001,
     .grads = G_A,
     .atol = 1e-5,
     .rtol = 1e-4},
    {.name = "rmsnorm_backward T=300 odd 77 dw",
     .ops = "rmsnorm_backward",
     .run = case_rmsnorm_backward,
     .T = 300,
     .dim = 77,
     .grads = G_B,
     .atol = 1e-4,
     .rtol = 1e-4},
    {.name = "rope_backward T=1 8x64 plain",
     .ops = "rope_backward",
     .run = case_rope_backward,
     .T = 1,
     .nh = 8,
     .hd = 64,
     .S = 2048,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "rope_backward T=29 6x128 llama3",
     .ops = "rope_backward",
     .run = case_rope_backward,
     .T = 29,
     .nh = 6,
     .hd = 128,
     .S = 4096,
     .llama3 = 1,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "attention_backward gqa2 causal window 5 T=40 at 90",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 40,
     .pos0 = 90,
     .S = 130,
     .nh = 4,
     .nkv = 2,
     .hd = 64,
     .window = 5,
     .grads = G_ALL,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention_backward mha strict window 2 T=24 from 0",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 24,
     .S = 24,
     .nh = 2,
     .nkv = 2,
     .hd = 33,
     .mask = STRICT,
     .window = 2,
     .grads = G_ALL,
     .atol = 2e-5,
     .rtol = 1e-4},
    {.name = "attention_backward mha causal T=17",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 17,
     .S = 17,
     .nh = 4,
     .nkv = 4,
     .hd = 64,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "attention_backward gqa2 strict T=24 from 0",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 24,
     .S = 24,
     .nh = 4,
     .nkv = 2,
     .hd = 32,
     .mask = STRICT,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "attention_backward gqa4 causal T=40 at 90",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 40,
     .pos0 = 90,
     .S = 130,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "attention_backward gqa8 causal T=1 S=1100",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 1,
     .pos0 = 1099,
     .S = 1100,
     .nh = 8,
     .nkv = 1,
     .hd = 64,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "attention_backward gqa4 strict T=32 S=1032",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 32,
     .pos0 = 1000,
     .S = 1032,
     .nh = 8,
     .nkv = 2,
     .hd = 64,
     .mask = STRICT,
     .grads = G_ALL,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "attention_backward gqa2 odd hd=33 S<pos dq",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 9,
     .pos0 = 11,
     .S = 15,
     .nh = 6,
     .nkv = 3,
     .hd = 33,
     .grads = G_A,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "attention_backward gqa8 causal T=16 dk dv",
     .ops = "attention_backward",
     .run = case_attention_backward,
     .T = 16,
     .pos0 = 8,
     .S = 24,
     .nh = 8,
     .nkv = 1,
     .hd = 48,
     .grads = G_B | G_C,
     .atol = 1e-4,
     .rtol = 1e-3},
    {.name = "swiglu_backward odd 10007",
     .ops = "swiglu_backward",
     .run = case_swiglu_backward,
     .n = 10007,
     .grads = G_ALL,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "swiglu_backward 257 dgate",
     .ops = "swiglu_backward",
     .run = case_swiglu_backward,
     .n = 257,
     .grads = G_A,
     .atol = 1e-5,
     .rtol = 1e-5},
    {.name = "swiglu_backward 64 dup",
     .ops = "swiglu_backward",
     .run = case_swiglu_backward,
     .n = 64,
     .grads = G_B,
     .atol = 1e-5,
     .rtol = 1e-5},

    /* optimiser: sumsq f1 = input scale, f2 = the sum it continues; adamw f1 = lr, f2 = wd */
    {.name = "sumsq 1 from 3.5",
     .ops = "sumsq",
     .run = case_sumsq,
     .n = 1,
     .f1 = 1.0f,
     .f2 = 3.5f,
     .atol = 0,
     .rtol = 1e-12},
    {.name = "sumsq odd 100003 from 0",
     .ops = "sumsq",
     .run = case_sumsq,
     .n = 100003,
     .f1 = 1.0f,
     .atol = 0,
     .rtol = 1e-12},
    {.name = "sumsq 1048576 from 1000",
     .ops = "sumsq",
     .run = case_sumsq,
     .n = 1 << 20,
     .f1 = 0.01f,
     .f2 = 1000.0f,
     .atol = 0,
     .rtol = 1e-12},
    {.name = "scale odd 10007 by .5", .ops = "scale", .run = case_scale, .n = 10007, .f1 = 0.5f},
    {.name = "scale 1 by -3", .ops = "scale", .run = case_scale, .n = 1, .f1 = -3.0f},
    {.name = "add odd 10007", .ops = "add", .run = case_add, .n = 10007},
    {.name = "add 1", .ops = "add", .run = case_add, .n = 1},
    {.name = "adamw odd 10007 step 1 wd .1",
     .ops = "adamw",
     .run = case_adamw,
     .n = 10007,
     .f1 = 1e-3f,
     .f2 = 0.1f,
     .step = 1,
     .atol = 2e-7,
     .rtol = 1e-6},
    {.name = "adamw 257 step 1000",
     .ops = "adamw",
     .run = case_adamw,
     .n = 257,
     .f1 = 3e-4f,
     .step = 1000,
     .atol = 2e-7,
     .rtol = 1e-6},
};
enum { N_CASES = sizeof cases / sizeof cases[0] };

/* ---- table queries ------------------------------------------------------------------------ */

int kv_parity_n_cases(void) { return N_CASES; }
const char *kv_parity_case_name(int i) { return i >= 0 && i < N_CASES ? cases[i].name : NULL; }
const char *kv_parity_case_ops(int i) { return i >= 0 && i < N_CASES ? cases[i].ops : NULL; }
int kv_parity_n_ops(void) { return N_OPS; }
const char *kv_parity_op_name(int i) { return i >= 0 && i < N_OPS ? op_list[i].name : NULL; }

/* op is one of the space-separated words of ops */
static int has_word(const char *ops, const char *op) {
    const size_t n = strlen(op);
    for (const char *s = ops; (s = strstr(s, op)) != NULL; s += n)
        if ((s == ops || s[-1] == ' ') && (s[n] == 0 || s[n] == ' ')) return 1;
    return 0;
}

int kv_parity_op_cases(int i) {
    if (i < 0 || i >= N_OPS) return 0;
    int k = 0;
    for (int c = 0; c < N_CASES; c++) k += has_word(cases[c].ops, op_list[i].name);
    return k;
}

int kv_parity_table_check(kv_error *err) {
    for (int i = 0; i < N_OPS; i++)
        if (op_list[i].off != (size_t)i * sizeof(void (*)(void)))
            return kv_fail(err, KV_EINVAL,
                           "parity: op %d '%s' is not member %d of "
                           "kv_backend_ops (listed out of order or twice)",
                           i, op_list[i].name, i);
    for (int c = 0; c < N_CASES; c++) {
        if (!cases[c].name || !cases[c].ops || !cases[c].run)
            return kv_fail(err, KV_EINVAL, "parity: case %d lacks a name, ops or run", c);
        for (int d = 0; d < c; d++)
            if (strcmp(cases[c].name, cases[d].name) == 0)
                return kv_fail(err, KV_EINVAL, "parity: two cases named '%s'", cases[c].name);
        char words[128];
        snprintf(words, sizeof words, "%s", cases[c].ops);
        char *save = NULL;
        for (char *w = strtok_r(words, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            int known = 0;
            for (int i = 0; i < N_OPS; i++) known |= strcmp(w, op_list[i].name) == 0;
            if (!known)
                return kv_fail(err, KV_EINVAL,
                               "parity: case '%s' names '%s', not an op of "
                               "kv_backend_ops",
                               cases[c].name, w);
        }
    }
    for (int i = 0; i < N_OPS; i++)
        if (kv_parity_op_cases(i) == 0)
            return kv_fail(err, KV_EINVAL, "parity: op '%s' of kv_backend_ops has no case",
                           op_list[i].name);
    return 0;
}

/* ---- running ------------------------------------------------------------------------------ */

static uint64_t name_hash(const char *s) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void case_end(prun *p) {
    for (int i = 0; i < p->n_buf; i++)
        for (int s = 0; s < 2; s++)
            if (p->buf[i].d[s]) p->b[s]->ops->free(p->b[s], p->buf[i].d[s]);
    for (int i = 0; i < p->n_host; i++) free(p->host[i]);
    p->n_buf = p->n_host = 0;
}

void kv_parity_report_free(kv_parity_report *rep) {
    free(rep->r);
    memset(rep, 0, sizeof *rep);
}

int kv_parity_run(kv_parity_report *rep, kv_backend *dev, kv_backend *ref,
                  const kv_parity_opts *opts, kv_error *err) {
    memset(rep, 0, sizeof *rep);
    snprintf(rep->device, sizeof rep->device, "%s", dev->name);
    snprintf(rep->reference, sizeof rep->reference, "%s", ref->name);
    kv_error local = {0};
    if (!err) err = &local;
    const kv_parity_opts none = {0};
    if (!opts) opts = &none;
    const int threads = kv_kernels_threads();
    prun p = {.b = {dev, ref}, .rep = rep, .flags = opts->flags, .err = err};
    int rc = 0;
    for (int i = 0; i < N_CASES && !rc; i++) {
        if (opts->filter && !strstr(cases[i].name, opts->filter)) continue;
        p.c = &cases[i];
        p.rng = opts->seed ^ name_hash(cases[i].name);
        rep->cases++;
        rc = cases[i].run(&p, &cases[i]);
        if (rc == CASE_STOP) rc = 0;
        case_end(&p);
    }
    if (kv_kernels_threads() != threads) kv_kernels_set_threads(threads);
    if (rc) return rc;
    if (!rep->failed) return 0;
    char names[512] = "";
    int listed = 0;
    for (int i = 0; i < rep->n && listed < 4; i++) {
        if (rep->r[i].pass) continue;
        size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%s%s", listed ? "; " : "", rep->r[i].name);
        listed++;
    }
    return kv_fail(err, KV_EMISMATCH, "parity of %s against %s: %d of %d results failed: %s%s",
                   rep->device, rep->reference, rep->failed, rep->n, names,
                   rep->failed > listed ? "; ..." : "");
}

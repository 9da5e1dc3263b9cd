/* Whole student steps against central finite differences of an independent double-precision
 * forward written here (naive loops): for tiny random models (original, cross-layer with bottom,
 * top and middle targets under the iterative plan, SwiftKV with and without AcrossKV, with and
 * without biases, Qwen2's q/k/v-only biases, tied and untied heads), the gradient of
 *   loss = T^2 KL(teacher || student) + w * MSE(h_{L-1})
 * that kvt_distill_microbatch leaves in every trainable tensor must equal d loss / d w of the
 * double forward, and the float loss must equal the double loss. The previous iterative pass's
 * K/V are constants (METHODS.md s3): the double forward computes them once at the unperturbed
 * weights and holds them fixed while differencing. The same step on a backend that is not
 * unified (split_backend.h) leaves bit-identical losses and gradients. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/safetensors.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/split_backend.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_forward.h"
#include "transform/train/train_model.h"

/* ---- a tiny random teacher on disk ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

typedef struct {
    int L, H, nh, nkv, hd, F, V, bias, tied; /* bias 1: every projection; 2: Qwen2 (q/k/v) */
    int window; /* > 0: a Mistral with this sliding_window on every layer */
} tiny_shape;

typedef struct {
    st_spec spec[256];
    float *data[256];
    char names[256][96];
    int n;
} tensor_set;

static void add_tensor(tensor_set *s, const char *name, int d0, int d1, double scale,
                       double offset) {
    int i = s->n++;
    snprintf(s->names[i], sizeof s->names[i], "%s", name);
    s->spec[i].name = s->names[i];
    s->spec[i].dtype = KV_F32;
    s->spec[i].n_dims = d1 ? 2 : 1;
    s->spec[i].shape[0] = d0;
    s->spec[i].shape[1] = d1;
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    s->data[i] = malloc(sizeof(float) * n);
    for (size_t k = 0; k < n; k++) s->data[i][k] = (float)(offset + scale * urand());
}

static int write_tiny(const char *dir, const tiny_shape *t) {
    kv_error err = {0};
    tensor_set s = {0};
    char name[96];
    const double wscale = 1.2 / sqrt((double)t->H);
    add_tensor(&s, "model.embed_tokens.weight", t->V, t->H, 1.0, 0);
    add_tensor(&s, "model.norm.weight", t->H, 0, 0.3, 1.0);
    if (!t->tied) add_tensor(&s, "lm_head.weight", t->V, t->H, 1.0, 0);
    for (int i = 0; i < t->L; i++) {
        const int Q = t->nh * t->hd, KV = t->nkv * t->hd;
#define T2(fmt, d0, d1, sc)                                                                        \
    snprintf(name, sizeof name, "model.layers.%d." fmt, i);                                        \
    add_tensor(&s, name, d0, d1, sc, 0)
        T2("input_layernorm.weight", t->H, 0, 0.3);
        for (int k = 0; k < t->H; k++) s.data[s.n - 1][k] += 1;
        T2("post_attention_layernorm.weight", t->H, 0, 0.3);
        for (int k = 0; k < t->H; k++) s.data[s.n - 1][k] += 1;
        T2("self_attn.q_proj.weight", Q, t->H, wscale * 1.5);
        T2("self_attn.k_proj.weight", KV, t->H, wscale * 1.5);
        T2("self_attn.v_proj.weight", KV, t->H, wscale);
        T2("self_attn.o_proj.weight", t->H, Q, wscale);
        T2("mlp.gate_proj.weight", t->F, t->H, wscale);
        T2("mlp.up_proj.weight", t->F, t->H, wscale);
        T2("mlp.down_proj.weight", t->H, t->F, wscale);
        if (t->bias) {
            T2("self_attn.q_proj.bias", Q, 0, 0.2);
            T2("self_attn.k_proj.bias", KV, 0, 0.2);
            T2("self_attn.v_proj.bias", KV, 0, 0.2);
        }
        if (t->bias == 1) {
            T2("self_attn.o_proj.bias", t->H, 0, 0.2);
            T2("mlp.gate_proj.bias", t->F, 0, 0.2);
            T2("mlp.up_proj.bias", t->F, 0, 0.2);
            T2("mlp.down_proj.bias", t->H, 0, 0.2);
        }
#undef T2
    }
    char path[1024], cfg[2048];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_write_file(path, s.spec, (const void *const *)s.data, s.n, NULL, 0, &err);
    for (int i = 0; i < s.n; i++) free(s.data[i]);
    if (rc) return fprintf(stderr, "%s\n", err.msg), rc;
    const int qwen2 = t->bias == 2, mistral = t->window > 0;
    char window[64] = "";
    if (mistral) snprintf(window, sizeof window, ", \"sliding_window\": %d", t->window);
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\"%s, "
             "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
             "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
             "\"vocab_size\": %d, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5, "
             "\"rope_theta\": 10000.0, \"tie_word_embeddings\": %s, \"attention_bias\": %s, "
             "\"mlp_bias\": %s, \"bos_token_id\": 1, \"eos_token_id\": 2}",
             qwen2     ? "Qwen2ForCausalLM"
             : mistral ? "MistralForCausalLM"
                       : "LlamaForCausalLM",
             qwen2     ? "qwen2"
             : mistral ? "mistral"
                       : "llama",
             window, t->H, t->F, t->L, t->nh, t->nkv, t->hd, t->V, t->tied ? "true" : "false",
             t->bias == 1 ? "true" : "false", t->bias == 1 ? "true" : "false");
    snprintf(path, sizeof path, "%s/config.json", dir);
    return kv_write_file_atomic(path, cfg, strlen(cfg), &err);
}

/* ---- the double-precision reference forward ---- */

typedef struct {
    const kvt_model *m;
    double **w; /* [n_params] double copy of every bound tensor, else NULL */
    int B, T, N, passes, grad_passes;
    const int32_t *tokens;
    double **k, **v; /* [slots] this pass, [N, KV] */
    double **kp, **vp; /* [slots] previous pass */
    double **kc, **vc; /* [slots] entering the first differentiated pass (constants) */
    double *t_logits, *t_h; /* teacher outputs */
    double temp, mse_w, ce_w;
    /* scratch */
    double **xin; /* [L+1] residual entering each layer, [L] = after the last */
    double *xn, *q, *att, *g, *u, *s, *logits;
} ref_ctx;

static double *W_of(const ref_ctx *c, const kvt_param *p) {
    return p ? c->w[p - c->m->params] : NULL;
}

static void r_rmsnorm(double *out, const double *x, const double *w, int N, int D, double eps) {
    for (int r = 0; r < N; r++) {
        double ss = 0;
        for (int i = 0; i < D; i++) ss += x[r * D + i] * x[r * D + i];
        double inv = 1.0 / sqrt(ss / D + eps);
        for (int i = 0; i < D; i++) out[r * D + i] = w[i] * x[r * D + i] * inv;
    }
}

static void r_matmul(double *out, const double *x, const double *W, const double *b, int N, int nin,
                     int nout) {
    for (int r = 0; r < N; r++)
        for (int o = 0; o < nout; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < nin; i++) s += x[r * nin + i] * W[o * nin + i];
            out[r * nout + o] = s;
        }
}

static void r_rope(double *x, int N, int T, int heads, int hd, double theta) {
    const int h = hd / 2;
    for (int r = 0; r < N; r++) {
        const int p = r % T;
        for (int hh = 0; hh < heads; hh++) {
            double *v = x + ((size_t)r * heads + hh) * hd;
            for (int i = 0; i < h; i++) {
                double a = p * pow(theta, -2.0 * i / hd), c = cos(a), s = sin(a);
                double x0 = v[i], x1 = v[i + h];
                v[i] = x0 * c - x1 * s;
                v[i + h] = x1 * c + x0 * s;
            }
        }
    }
}

/* per sequence, GQA, causal or strict */
static void r_attention(double *out, const double *q, const double *K, const double *V, int B,
                        int T, int nh, int nkv, int hd, int strict, int window) {
    const int Q = nh * hd, KVd = nkv * hd, grp = nh / nkv;
    double sc[256];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                const double *qv = q + ((size_t)(b * T + t)) * Q + h * hd;
                double *o = out + ((size_t)(b * T + t)) * Q + h * hd;
                for (int d = 0; d < hd; d++) o[d] = 0;
                const int kh = h / grp, n_vis = strict ? t : t + 1;
                const int lo = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0; /* s > t-W */
                if (n_vis <= lo) continue;
                double mx = -1e300, sum = 0;
                for (int s = lo; s < n_vis; s++) {
                    const double *kv = K + ((size_t)(b * T + s)) * KVd + kh * hd;
                    double d = 0;
                    for (int k = 0; k < hd; k++) d += qv[k] * kv[k];
                    sc[s] = d / sqrt((double)hd);
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = lo; s < n_vis; s++) sum += (sc[s] = exp(sc[s] - mx));
                for (int s = lo; s < n_vis; s++) {
                    const double *vv = V + ((size_t)(b * T + s)) * KVd + kh * hd;
                    for (int d = 0; d < hd; d++) o[d] += sc[s] / sum * vv[d];
                }
            }
}

static void r_layer(ref_ctx *c, int i) {
    const kvt_model *m = c->m;
    const kvt_layer *ly = &m->layers[i];
    const int N = c->N, H = m->dims.hidden, Q = m->dims.q_dim, KV = m->dims.kv_dim, F = m->dims.ffn;
    const double *x = c->xin[i];
    double *y = c->xin[i + 1];
    if (m->cfg.map.kind == KVMAP_SWIFTKV && i == m->cfg.map.swiftkv_l) {
        r_rmsnorm(c->s, x, W_of(c, m->norm_swiftkv), N, H, m->dims.eps);
        for (int j = i; j < m->dims.n_layers; j++) {
            if (!kvmap_is_kv_layer(&m->cfg.map, j)) continue;
            const int sl = kvmap_slot_of(&m->cfg.map, j);
            r_matmul(c->k[sl], c->s, W_of(c, m->layers[j].k), W_of(c, m->layers[j].k_b), N, H, KV);
            r_rope(c->k[sl], N, c->T, m->dims.n_kv_heads, m->dims.head_dim, m->dims.rope.theta);
            r_matmul(c->v[sl], c->s, W_of(c, m->layers[j].v), W_of(c, m->layers[j].v_b), N, H, KV);
        }
    }
    r_rmsnorm(c->xn, x, W_of(c, ly->attn_norm), N, H, m->dims.eps);
    r_matmul(c->q, c->xn, W_of(c, ly->q), W_of(c, ly->q_b), N, H, Q);
    r_rope(c->q, N, c->T, m->dims.n_heads, m->dims.head_dim, m->dims.rope.theta);
    const int sl = kvmap_slot_of(&m->cfg.map, i);
    const int own = kvmap_is_kv_layer(&m->cfg.map, i) &&
                    !(m->cfg.map.kind == KVMAP_SWIFTKV && i >= m->cfg.map.swiftkv_l);
    if (own) {
        r_matmul(c->k[sl], c->xn, W_of(c, ly->k), W_of(c, ly->k_b), N, H, KV);
        r_rope(c->k[sl], N, c->T, m->dims.n_kv_heads, m->dims.head_dim, m->dims.rope.theta);
        r_matmul(c->v[sl], c->xn, W_of(c, ly->v), W_of(c, ly->v_b), N, H, KV);
    }
    const int up = m->cfg.map.kv_layer_of[i] > i && m->cfg.map.kind != KVMAP_SWIFTKV;
    r_attention(c->att, c->q, up ? c->kp[sl] : c->k[sl], up ? c->vp[sl] : c->v[sl], c->B, c->T,
                m->dims.n_heads, m->dims.n_kv_heads, m->dims.head_dim, up, m->cfg.layer_window[i]);
    double *mid = malloc(sizeof(double) * N * H), *tmp = malloc(sizeof(double) * N * H);
    r_matmul(tmp, c->att, W_of(c, ly->o), W_of(c, ly->o_b), N, Q, H);
    for (int k = 0; k < N * H; k++) mid[k] = x[k] + tmp[k];
    r_rmsnorm(c->xn, mid, W_of(c, ly->mlp_norm), N, H, m->dims.eps);
    r_matmul(c->g, c->xn, W_of(c, ly->gate), W_of(c, ly->gate_b), N, H, F);
    r_matmul(c->u, c->xn, W_of(c, ly->up), W_of(c, ly->up_b), N, H, F);
    for (int k = 0; k < N * F; k++) c->g[k] = c->g[k] / (1 + exp(-c->g[k])) * c->u[k];
    r_matmul(tmp, c->g, W_of(c, ly->down), W_of(c, ly->down_b), N, F, H);
    for (int k = 0; k < N * H; k++) y[k] = mid[k] + tmp[k];
    free(mid);
    free(tmp);
}

/* full forward; with set_prev, the K/V entering the first differentiated pass are (re)computed
 * from the current weights first (passes - grad_passes block passes of the iterative plan),
 * otherwise the stored ones are used; the grad_passes passes run from them. Fills c->logits and
 * c->xin. */
static void r_forward(ref_ctx *c, int set_prev) {
    const kvt_model *m = c->m;
    const int N = c->N, H = m->dims.hidden, L = m->dims.n_layers;
    const double *E = W_of(c, m->embed);
    for (int r = 0; r < N; r++)
        for (int k = 0; k < H; k++) c->xin[0][r * H + k] = E[(size_t)c->tokens[r] * H + k];
    int lo, hi;
    if (kvmap_cyclic_block(&m->cfg.map, &lo, &hi) > 0 && m->cfg.map.kind != KVMAP_SWIFTKV) {
        /* LCKV's plan: each cyclic group in turn, after the layers below it */
        const size_t kvb = sizeof(double) * N * m->dims.kv_dim;
        int next = 0;
        while (kvmap_cyclic_group(&m->cfg.map, next, &lo, &hi) > 0) {
            for (int i = next; i < lo; i++) r_layer(c, i);
            int s0 = 0, s1 = 0; /* the group's slots */
            for (int i = 0; i <= hi; i++)
                if (kvmap_is_kv_layer(&m->cfg.map, i)) s0 += i < lo, s1++;
            if (set_prev) {
                for (int s = s0; s < s1; s++) memset(c->kp[s], 0, kvb), memset(c->vp[s], 0, kvb);
                for (int p = 1; p <= c->passes - c->grad_passes; p++) {
                    for (int i = lo; i <= hi; i++) r_layer(c, i);
                    for (int s = s0; s < s1; s++)
                        memcpy(c->kp[s], c->k[s], kvb), memcpy(c->vp[s], c->v[s], kvb);
                }
                for (int s = s0; s < s1; s++)
                    memcpy(c->kc[s], c->kp[s], kvb), memcpy(c->vc[s], c->vp[s], kvb);
            }
            for (int s = s0; s < s1; s++)
                memcpy(c->kp[s], c->kc[s], kvb), memcpy(c->vp[s], c->vc[s], kvb);
            for (int p = 1; p < c->grad_passes; p++) {
                for (int i = lo; i <= hi; i++) r_layer(c, i);
                for (int s = s0; s < s1; s++)
                    memcpy(c->kp[s], c->k[s], kvb), memcpy(c->vp[s], c->v[s], kvb);
            }
            for (int i = lo; i <= hi; i++) r_layer(c, i);
            next = hi + 1;
        }
        for (int i = next; i < L; i++) r_layer(c, i);
    } else {
        for (int i = 0; i < L; i++) r_layer(c, i);
    }
    r_rmsnorm(c->xn, c->xin[L], W_of(c, m->final_norm), N, H, m->dims.eps);
    r_matmul(c->logits, c->xn, W_of(c, m->lm_head), NULL, N, H, m->dims.vocab);
}

static double r_loss(ref_ctx *c) {
    r_forward(c, 0);
    const kvt_model *m = c->m;
    const int N = c->N, V = m->dims.vocab;
    double kl = 0;
    for (int r = 0; r < N; r++) {
        const double *zs = c->logits + (size_t)r * V, *zt = c->t_logits + (size_t)r * V;
        double ms = -1e300, mt = -1e300, ss = 0, st = 0;
        for (int i = 0; i < V; i++) {
            if (zs[i] / c->temp > ms) ms = zs[i] / c->temp;
            if (zt[i] / c->temp > mt) mt = zt[i] / c->temp;
        }
        for (int i = 0; i < V; i++)
            ss += exp(zs[i] / c->temp - ms), st += exp(zt[i] / c->temp - mt);
        for (int i = 0; i < V; i++) {
            double lp = zt[i] / c->temp - mt - log(st), lq = zs[i] / c->temp - ms - log(ss);
            kl += exp(lp) * (lp - lq);
        }
    }
    kl = c->temp * c->temp * kl / N;
    double mse = 0;
    const double *h = c->xin[m->dims.n_layers - 1];
    for (int k = 0; k < N * m->dims.hidden; k++) mse += (h[k] - c->t_h[k]) * (h[k] - c->t_h[k]);
    mse /= (double)N * m->dims.hidden;
    double ce = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t + 1 < c->T; t++) {
            const double *zs = c->logits + ((size_t)b * c->T + t) * V;
            double mz = -1e300, sum = 0;
            for (int i = 0; i < V; i++) mz = zs[i] > mz ? zs[i] : mz;
            for (int i = 0; i < V; i++) sum += exp(zs[i] - mz);
            ce += mz + log(sum) - zs[c->tokens[b * c->T + t + 1]];
        }
    ce /= (double)c->B * (c->T - 1);
    return kl + c->mse_w * mse + c->ce_w * ce;
}

static double **alloc_rows(int n, size_t each) {
    double **p = calloc((size_t)n, sizeof *p);
    for (int i = 0; i < n; i++) p[i] = calloc(each, sizeof(double));
    return p;
}
static void free_rows(double **p, int n) {
    for (int i = 0; i < n; i++) free(p[i]);
    free(p);
}

static void ref_init(ref_ctx *c, const kvt_model *m, int B, int T, int passes, int grad_passes,
                     const int32_t *tokens) {
    memset(c, 0, sizeof *c);
    c->m = m;
    c->B = B, c->T = T, c->N = B * T, c->passes = passes, c->tokens = tokens;
    c->grad_passes = grad_passes;
    c->w = calloc((size_t)m->n_params, sizeof *c->w);
    for (int i = 0; i < m->n_params; i++) {
        const kvt_param *p = &m->params[i];
        if (!p->used) continue;
        c->w[i] = malloc(sizeof(double) * p->n);
        for (size_t k = 0; k < p->n; k++) c->w[i][k] = p->w[k];
    }
    const int S = kvmap_n_slots(&m->cfg.map), N = c->N;
    const size_t big =
        (size_t)N * (size_t)(m->dims.ffn > m->dims.vocab ? m->dims.ffn : m->dims.vocab) +
        (size_t)N * (m->dims.q_dim > m->dims.hidden ? m->dims.q_dim : m->dims.hidden);
    c->k = alloc_rows(S, (size_t)N * m->dims.kv_dim);
    c->v = alloc_rows(S, (size_t)N * m->dims.kv_dim);
    c->kp = alloc_rows(S, (size_t)N * m->dims.kv_dim);
    c->vp = alloc_rows(S, (size_t)N * m->dims.kv_dim);
    c->kc = alloc_rows(S, (size_t)N * m->dims.kv_dim);
    c->vc = alloc_rows(S, (size_t)N * m->dims.kv_dim);
    c->xin = alloc_rows(m->dims.n_layers + 1, (size_t)N * m->dims.hidden);
    c->xn = calloc(big, sizeof(double));
    c->q = calloc(big, sizeof(double));
    c->att = calloc(big, sizeof(double));
    c->g = calloc(big, sizeof(double));
    c->u = calloc(big, sizeof(double));
    c->s = calloc(big, sizeof(double));
    c->logits = calloc(big, sizeof(double));
}

static void ref_free(ref_ctx *c) {
    const int S = kvmap_n_slots(&c->m->cfg.map);
    for (int i = 0; i < c->m->n_params; i++) free(c->w[i]);
    free(c->w);
    free_rows(c->k, S), free_rows(c->v, S), free_rows(c->kp, S), free_rows(c->vp, S);
    free_rows(c->kc, S), free_rows(c->vc, S);
    free_rows(c->xin, c->m->dims.n_layers + 1);
    free(c->xn), free(c->q), free(c->att), free(c->g), free(c->u), free(c->s), free(c->logits);
    free(c->t_logits), free(c->t_h);
}

/* ---- one case ---- */

static const char *tmpdir;

static void run_case(const char *label, const tiny_shape *shape, const char *map_spec, int passes,
                     int grad_passes, int all_trainable) {
    kv_error err = {0};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, label);
    kv_mkdir_p(dir, &err);
    CHECK(write_tiny(dir, shape) == 0, "%s: write tiny model", label);
    kvt_model teacher, student;
    int rc = kvt_model_load(&teacher, dir, &err);
    CHECK(rc == 0, "%s: load: %s", label, err.msg);
    if (rc) return;
    kv_map map;
    rc = kvmap_parse(&map, map_spec, shape->L, &err);
    CHECK(rc == 0, "%s: map: %s", label, err.msg);
    rc = distill_student_init(&student, &teacher, &map, DISTILL_INIT_MEAN, &err);
    CHECK(rc == 0, "%s: init: %s", label, err.msg);
    if (rc) {
        kvt_model_free(&teacher);
        return;
    }
    long n_train = all_trainable ? kvt_model_set_trainable_all(&student, &err)
                                 : kvt_model_set_trainable_distill(&student, &err);
    CHECK(n_train > 0, "%s: trainable: %s", label, err.msg);
    /* move the trainable weights off the teacher's so every loss term has a gradient */
    for (int i = 0; i < student.n_params; i++) {
        kvt_param *p = &student.params[i];
        if (p->trainable)
            for (size_t k = 0; k < p->n; k++) p->w[k] += (float)(0.05 * urand());
    }
    const int B = 2, T = 5, N = B * T;
    int32_t tokens[16];
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)((urand() + 1) * 0.5 * shape->V);
    kvt_run rs, rt;
    kv_backend cpu;
    CHECK(kv_backend_cpu_init(&cpu, 0, &err) == 0, "%s: backend: %s", label, err.msg);
    CHECK(kvt_run_init_grad(&rs, &cpu, &student, B, T, passes, grad_passes, 1, &err) == 0,
          "%s: run: %s", label, err.msg);
    CHECK(kvt_run_init(&rt, &cpu, &teacher, B, T, passes, 0, &err) == 0, "%s: run: %s", label,
          err.msg);
    /* the same runs on the split backend, made while the gradients are still zero */
    kv_backend split;
    kvt_run rs2, rt2;
    CHECK(split_backend_init(&split, 0, &err) == 0, "%s: split backend: %s", label, err.msg);
    CHECK(kvt_run_init_grad(&rs2, &split, &student, B, T, passes, grad_passes, 1, &err) == 0 &&
              kvt_run_init(&rt2, &split, &teacher, B, T, passes, 0, &err) == 0,
          "%s: split runs: %s", label, err.msg);
    kvt_loss loss, loss2;
    const kvt_loss_weights lw = {2.0f, 0.7f, 0.3f};
    rc = kvt_distill_microbatch(&rs, &rt, tokens, NULL, &lw, 1.0f, &loss, &err);
    CHECK(rc == 0, "%s: step: %s", label, err.msg);
    rc = kvt_distill_microbatch(&rs2, &rt2, tokens, NULL, &lw, 1.0f, &loss2, &err);
    CHECK(rc == 0 && !memcmp(&loss, &loss2, sizeof loss), "%s: split backend: loss %.9g vs %.9g %s",
          label, loss2.loss, loss.loss, err.msg);
    for (int i = 0; i < student.n_params && !rc; i++) {
        const kvt_param *p = &student.params[i];
        if (!p->trainable) continue;
        float *host = malloc(sizeof(float) * p->n);
        const float *g2 = NULL;
        rc = kvt_run_host_view(&rs2, &g2, kvt_run_param(&rs2, p)->g, host, p->n, &err);
        CHECK(rc == 0 && !memcmp(g2, kvt_run_param(&rs, p)->g, sizeof(float) * p->n),
              "%s: split backend: %s gradient differs %s", label, p->name, err.msg);
        free(host);
    }
    kvt_run_free(&rs2);
    kvt_run_free(&rt2);
    kv_backend_free(&split);
    CHECK(split_allocations() == 0, "%s: device allocations left behind", label);
    /* the single-block plan (kvt_run_init_plan, block = 1): the same loss, bit for bit, when the
     * map has one cyclic group; another loss when it has several (a different plan) */
    if (kvmap_n_cyclic_groups(&map) > 0) {
        kvt_run rb;
        kvt_loss lb;
        rc = kvt_run_init_plan(&rb, &cpu, &student, B, T, passes, 1, 1, 0, &err);
        if (!rc) rc = kvt_distill_microbatch(&rb, &rt, tokens, NULL, &lw, 0.0f, &lb, &err);
        CHECK(rc == 0, "%s: block plan: %s", label, err.msg);
        if (kvmap_n_cyclic_groups(&map) == 1)
            CHECK(rc == 0 && !memcmp(&lb, &loss, sizeof lb), "%s: block plan loss %.9g vs %.9g",
                  label, lb.loss, loss.loss);
        else
            CHECK(rc == 0 && lb.loss != loss.loss, "%s: block plan, %d groups: same loss", label,
                  kvmap_n_cyclic_groups(&map));
        kvt_run_free(&rb);
    }

    /* the reference: teacher outputs, then the student loss and its finite differences */
    ref_ctx tc, sc;
    ref_init(&tc, &teacher, B, T, 1, 1, tokens);
    r_forward(&tc, 1);
    ref_init(&sc, &student, B, T, passes,
             kvmap_cyclic_block(&map, &(int){0}, &(int){0}) > 0 ? grad_passes : 1, tokens);
    sc.temp = lw.temp, sc.mse_w = lw.mse_weight, sc.ce_w = lw.ce_weight;
    sc.t_logits = malloc(sizeof(double) * N * shape->V);
    sc.t_h = malloc(sizeof(double) * N * shape->H);
    memcpy(sc.t_logits, tc.logits, sizeof(double) * N * shape->V);
    memcpy(sc.t_h, tc.xin[shape->L - 1], sizeof(double) * N * shape->H);
    r_forward(&sc, 1); /* previous-pass K/V at the unperturbed weights */
    const double ref = r_loss(&sc);
    CHECK(fabs(ref - loss.loss) <= 1e-4 * fabs(ref) + 1e-6, "%s: loss %.9g vs double %.9g", label,
          loss.loss, ref);
    CHECK(loss.kl > 1e-4 && loss.mse > 1e-5 && loss.ce > 1e-2,
          "%s: degenerate loss kl %g mse %g ce %g", label, loss.kl, loss.mse, loss.ce);

    int n_checked = 0;
    for (int i = 0; i < student.n_params; i++) {
        kvt_param *p = &student.params[i];
        if (!p->trainable) continue;
        double *w = sc.w[i], scale = 0, worst = 0;
        size_t worst_k = 0;
        double *fd = malloc(sizeof(double) * p->n);
        const double h = 1e-5;
        for (size_t k = 0; k < p->n; k++) {
            const double keep = w[k];
            w[k] = keep + h;
            const double lp = r_loss(&sc);
            w[k] = keep - h;
            const double lm = r_loss(&sc);
            w[k] = keep;
            fd[k] = (lp - lm) / (2 * h);
            if (fabs(fd[k]) > scale) scale = fabs(fd[k]);
        }
        const float *g = kvt_run_param(&rs, p)->g; /* the CPU backend: a host array */
        for (size_t k = 0; k < p->n; k++) {
            double e = fabs(fd[k] - g[k]);
            if (e > worst) worst = e, worst_k = k;
        }
        CHECK(scale > 1e-6, "%s: %s: finite differences all ~0 (%g)", label, p->name, scale);
        CHECK(worst <= 2e-3 * scale + 1e-7,
              "%s: %s[%zu]: backward %.9g vs finite difference %.9g"
              " (scale %.3g)",
              label, p->name, worst_k, (double)g[worst_k], fd[worst_k], scale);
        free(fd);
        n_checked++;
    }
    CHECK(n_checked > 0, "%s: nothing checked", label);
    /* frozen tensors have no gradient buffer at all */
    for (int i = 0; i < student.n_params; i++)
        if (!student.params[i].trainable)
            CHECK(student.params[i].g == NULL, "%s: frozen %s has a gradient", label,
                  student.params[i].name);
    ref_free(&tc);
    ref_free(&sc);
    kvt_run_free(&rs);
    kvt_run_free(&rt);
    kv_backend_free(&cpu);
    kvt_model_free(&student);
    kvt_model_free(&teacher);
}

int main(void) {
    char tmpl[] = "/tmp/kvtgradXXXXXX";
    tmpdir = mkdtemp(tmpl);
    if (!tmpdir) return 1;
    kv_kernels_set_threads(2);
    const tiny_shape plain = {
        .L = 4, .H = 8, .nh = 2, .nkv = 1, .hd = 4, .F = 12, .V = 16, .bias = 0, .tied = 0};
    const tiny_shape biased = {
        .L = 5, .H = 8, .nh = 4, .nkv = 2, .hd = 2, .F = 10, .V = 12, .bias = 1, .tied = 1};
    /* every op's backward in the composition (all tensors but the embedding trainable) */
    run_case("all-pizza-bottom", &plain, "pizza-bottom:2", 1, 1, 1);
    run_case("all-lasagna-top", &plain, "lasagna-top:2", 3, 1, 1);
    run_case("all-swiftkv", &biased, "swiftkv:2", 1, 1, 1);
    run_case("all-sandwich-middle-bias", &biased, "sandwich-middle:3", 2, 1, 1);
    /* the distillation set of METHODS.md s3 */
    run_case("cla", &plain, "cla:2", 1, 1, 0);
    run_case("pizza-top", &plain, "pizza-top:2", 4, 1, 0);
    run_case("lasagna-middle-bias", &biased, "lasagna-middle:2", 3, 1, 0);
    run_case("swiftkv-acrosskv", &plain, "swiftkv:2,2", 1, 1, 0);
    run_case("swiftkv-acrosskv-bias", &biased, "swiftkv:1,2", 1, 1, 0);
    run_case("sandwich-top-2pass", &biased, "sandwich-top:3", 2, 1, 0);
    /* gradient through the earlier passes too (LCKV's b): the K/V upward layers read carry it */
    run_case("pizza-top-b2", &plain, "pizza-top:2", 4, 2, 0);
    run_case("all-lasagna-top-b3", &plain, "lasagna-top:2", 3, 3, 1);
    run_case("lasagna-middle-bias-b2", &biased, "lasagna-middle:2", 3, 2, 0);
    run_case("all-sandwich-middle-b2", &biased, "sandwich-middle:3", 4, 2, 1);
    run_case("literal-inner-kv-b2", &biased, "0_3_2_3_4", 3, 2, 1);
    run_case("bottom-map-b2-ignored", &plain, "cla:2", 2, 2, 0);
    /* Qwen2: q/k/v biases, no o_proj or MLP bias (SwiftKV's *_swiftkv biases too) */
    const tiny_shape qwen2 = {
        .L = 4, .H = 8, .nh = 4, .nkv = 2, .hd = 2, .F = 10, .V = 12, .bias = 2, .tied = 1};
    run_case("all-qwen2-swiftkv", &qwen2, "swiftkv:2", 1, 1, 1);
    run_case("qwen2-swiftkv-acrosskv", &qwen2, "swiftkv:1,3", 1, 1, 0);
    run_case("all-qwen2-sandwich-middle", &qwen2, "sandwich-middle:2", 2, 1, 1);
    /* sliding windows (a Mistral, window 3 of T = 5): every layer's attention sees the last 3 */
    tiny_shape windowed = plain;
    windowed.window = 3;
    run_case("all-window-sandwich-middle", &windowed, "sandwich-middle:3", 2, 1, 1);
    run_case("window-cla", &windowed, "cla:2", 1, 1, 0);
    run_case("all-window-pizza-top-b2", &windowed, "pizza-top:2", 3, 2, 1);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_done("test_train_grad");
}

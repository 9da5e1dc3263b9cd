/* Model loading: every weight taken from a bound llama_view (names, shapes, dtypes checked
 * there), config checks, then one pass converting what is not usable in place. */
#include "runtime/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "base/membudget.h"
#include "formats/llama_view.h"

/* one weight to take: where the pointer goes, the tensor it comes from, whether it is a matrix
 * (held as the model's mat_type) or a vector (held as F32) */
typedef struct {
    const void **dst;
    const st_tensor *t;
    int matrix;
} binding;

typedef struct {
    const kv_tensor_source *src;
    binding *items;
    int n, cap;
    int copy_weights;
    int release_source; /* drop the source's mapped pages of each tensor once copied */
    kv_error *err;
} loader;

/* the dtype a tensor is held as */
static kv_dtype held_type(const binding *b, kv_dtype mat_type) {
    return b->matrix ? mat_type : KV_F32;
}

static int needs_store(const loader *ld, const binding *b, kv_dtype mat_type) {
    const kv_dtype h = held_type(b, mat_type);
    return b->t->dtype != h || ld->copy_weights || ((uintptr_t)b->t->data % kv_dtype_size(h)) != 0;
}

/* queues t for *dst; a NULL t (the model has no such tensor) leaves *dst NULL */
static int take(loader *ld, const void **dst, const st_tensor *t, int matrix) {
    *dst = NULL;
    if (!t) return 0;
    const char *where = ld->src->where(ld->src->ctx, t);
    if (!t->data)
        return kv_fail(ld->err, KV_EFORMAT, "%s: tensor '%s' has no data", where, t->name);
    if (ld->n == ld->cap) {
        int cap = ld->cap ? 2 * ld->cap : 64;
        binding *p = realloc(ld->items, sizeof *p * (size_t)cap);
        if (!p) return kv_fail(ld->err, KV_ENOMEM, "%s: out of memory binding weights", where);
        ld->items = p;
        ld->cap = cap;
    }
    ld->items[ld->n++] = (binding){.dst = dst, .t = t, .matrix = matrix};
    return 0;
}

/* every tensor the forward pass runs with (formats/llama_view.h) */
static int take_all(loader *ld, kv_model *m, const llama_view *v) {
    int rc;
    if ((rc = take(ld, &m->embed, v->embed, 1)) ||
        (rc = take(ld, (const void **)&m->final_norm, v->norm, 0)) ||
        (rc = take(ld, &m->lm_head, v->lm_head, 1)) ||
        (rc = take(ld, (const void **)&m->norm_swiftkv, v->norm_swiftkv, 0)))
        return rc;
    for (int i = 0; i < m->dims.n_layers; i++) {
        kv_layer_weights *w = &m->layers[i];
        const void **dst[LLAMA_N_ROLES] = {/* llama_role order */
                                           (const void **)&w->attn_norm,
                                           &w->wq,
                                           (const void **)&w->bq,
                                           &w->wk,
                                           (const void **)&w->bk,
                                           &w->wv,
                                           (const void **)&w->bv,
                                           &w->wo,
                                           (const void **)&w->bo,
                                           (const void **)&w->mlp_norm,
                                           &w->w_gate,
                                           (const void **)&w->b_gate,
                                           &w->w_up,
                                           (const void **)&w->b_up,
                                           &w->w_down,
                                           (const void **)&w->b_down};
        for (int r = 0; r < LLAMA_N_ROLES; r++) {
            const st_tensor *t = llama_view_used(v, i, (llama_role)r);
            if ((rc = take(ld, dst[r], t, t && t->n_dims == 2))) return rc;
        }
    }
    return 0;
}

/* BF16 (F16) when every matrix is stored BF16 (F16) and not asked to widen, else F32 */
static kv_dtype pick_mat_type(const loader *ld, int widen_f32) {
    if (widen_f32) return KV_F32;
    kv_dtype held = KV_F32;
    for (int i = 0; i < ld->n; i++)
        if (ld->items[i].matrix) {
            const kv_dtype t = ld->items[i].t->dtype;
            if ((t != KV_BF16 && t != KV_F16) || (held != KV_F32 && t != held)) return KV_F32;
            held = t;
        }
    return held;
}

/* t's elements converted into dst (held as h), COPY_CHUNK_BYTES of the source at a time; with
 * release, each chunk's mapped pages leave the resident set once read, so a load peaks at the
 * arena plus one chunk, not plus the largest tensor (the embedding: 98 MB of F32 at 110M) */
enum { COPY_CHUNK_BYTES = 4 << 20 };

static int copy_tensor(void *dst, kv_dtype h, const st_tensor *t, int release) {
    const size_t src_elem = kv_dtype_size(t->dtype), dst_elem = kv_dtype_size(h);
    const size_t chunk = COPY_CHUNK_BYTES / src_elem;
    const char *src = t->data, *unreleased = t->data;
    const long page = release ? sysconf(_SC_PAGESIZE) : 0;
    for (size_t i = 0; i < t->n_elements; i += chunk) {
        const size_t n = t->n_elements - i < chunk ? t->n_elements - i : chunk;
        if (kv_dtype_cast((char *)dst + i * dst_elem, h, src + i * src_elem, t->dtype, n))
            return -1;
        if (page <= 0) continue;
        const char *read_to = src + (i + n) * src_elem;
        kv_release_mapped(unreleased, (size_t)(read_to - unreleased));
        unreleased =
            read_to - (uintptr_t)read_to % (uintptr_t)page; /* read_to's page, partly read */
    }
    return 0;
}

/* every binding's pointer: in place, or converted (copied) into m->store */
static int bind_all(kv_model *m, const loader *ld, kv_error *err) {
    size_t store_bytes = 0;
    for (int i = 0; i < ld->n; i++) {
        const binding *b = &ld->items[i];
        if (needs_store(ld, b, m->mat_type) &&
            kv_arena_reserve(&store_bytes, b->t->n_elements,
                             kv_dtype_size(held_type(b, m->mat_type))))
            return kv_fail(err, KV_ENOMEM, "%s: weights too large",
                           ld->src->where(ld->src->ctx, b->t));
    }
    /* weights copied or widened into the arena: the memory budget first */
    const kv_mem_item held = {"weights", store_bytes};
    int rc = kv_mem_reserve("the model", &held, 1, err);
    if (!rc) m->mem_reserved = store_bytes;
    if (!rc) rc = kv_arena_init(&m->store, store_bytes, "model weights", err);
    for (int i = 0; !rc && i < ld->n; i++) {
        const binding *b = &ld->items[i];
        const kv_dtype h = held_type(b, m->mat_type);
        if (!needs_store(ld, b, m->mat_type)) {
            *b->dst = b->t->data;
            continue;
        }
        void *p = kv_arena_take(&m->store, b->t->n_elements, kv_dtype_size(h));
        if (!p) rc = kv_fail(err, KV_ENOMEM, "model: weight arena too small");
        else if (copy_tensor(p, h, b->t, ld->release_source))
            rc = kv_fail(err, KV_EUNSUPPORTED, "model: tensor '%s': cannot convert %s to %s",
                         b->t->name, kv_dtype_name(b->t->dtype), kv_dtype_name(h));
        *b->dst = p;
    }
    for (int i = 0; !rc && i < ld->n; i++) {
        m->n_params += ld->items[i].t->n_elements;
        m->weight_bytes +=
            ld->items[i].t->n_elements * kv_dtype_size(held_type(&ld->items[i], m->mat_type));
    }
    return rc;
}

/* the sizes every kernel trusts, checked once here */
static int check_config(const hf_config *c, kv_error *err) {
    const char *who = "config.json";
    if (c->n_layers < 1 || c->n_layers > HF_MAX_LAYERS)
        return kv_fail(err, KV_EFORMAT, "%s: num_hidden_layers %d outside 1..%d", who, c->n_layers,
                       HF_MAX_LAYERS);
    if (c->hidden_size < 1 || c->intermediate_size < 1 || c->vocab_size < 1 || c->n_heads < 1 ||
        c->n_kv_heads < 1 || c->head_dim < 1 || c->max_position_embeddings < 1)
        return kv_fail(err, KV_EFORMAT,
                       "%s: sizes must be positive (hidden %d, intermediate %d, vocab %d, heads "
                       "%d, kv heads %d, head_dim %d, max_position_embeddings %d)",
                       who, c->hidden_size, c->intermediate_size, c->vocab_size, c->n_heads,
                       c->n_kv_heads, c->head_dim, c->max_position_embeddings);
    if (c->n_heads % c->n_kv_heads)
        return kv_fail(err, KV_EFORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       who, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2)
        return kv_fail(err, KV_EFORMAT, "%s: head_dim %d must be even for RoPE", who, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > (1 << 24) || c->hidden_size > (1 << 24) ||
        c->intermediate_size > (1 << 26) || c->vocab_size > (1 << 26))
        return kv_fail(err, KV_EFORMAT, "%s: sizes too large", who);
    if (!(c->rms_norm_eps > 0.0f))
        return kv_fail(err, KV_EFORMAT, "%s: rms_norm_eps %g must be positive", who,
                       (double)c->rms_norm_eps);
    return 0;
}

int kv_model_swiftkv_layer(const kv_model *m, int layer) {
    return kvmap_is_swiftkv_layer(&m->cfg.map, layer);
}

int kv_model_writes_own_kv(const kv_model *m, int layer) {
    return kvmap_is_kv_layer(&m->cfg.map, layer) && !kv_model_swiftkv_layer(m, layer);
}

static size_t count_step_bytes(const kv_model *m) {
    const size_t H = (size_t)m->dims.hidden, Q = (size_t)m->dims.q_dim, KV = (size_t)m->dims.kv_dim,
                 F = (size_t)m->dims.ffn;
    size_t mat = H + (size_t)m->dims.vocab * H; /* matrix elements: embedding row, LM head */
    size_t vec = H; /* F32 elements: final norm */
    if (m->norm_swiftkv) vec += H;
    for (int i = 0; i < m->dims.n_layers; i++) {
        const kv_layer_weights *w = &m->layers[i];
        mat += Q * H + H * Q + 3 * F * H;
        vec += 2 * H;
        if (w->wk) mat += 2 * KV * H;
        if (w->bq) vec += Q + (w->bk ? 2 * KV : 0);
        if (w->bo) vec += H;
        if (w->b_gate) vec += 2 * F + H;
    }
    return mat * kv_dtype_size(m->mat_type) + vec * sizeof(float);
}

int kv_model_from_source(kv_model *m, const hf_config *cfg, const kv_tensor_source *src,
                         const kv_model_opts *o, kv_error *err) {
    *m = (kv_model){0};
    m->cfg = *cfg;
    llama_view view;
    int rc = llama_view_bind_source(&view, &m->cfg, src, err);
    if (rc) return rc;
    loader ld = {.src = src,
                 .copy_weights = o && o->copy_weights,
                 .release_source = o && o->copy_weights && o->map_file < 0,
                 .err = err};
    if ((rc = check_config(cfg, err))) goto done;
    llama_dims_init(&m->dims, cfg);
    { /* RoPE parameters are checked here, once, rather than at the first forward */
        if ((rc = kv_rope_check(m->dims.head_dim, &m->dims.rope, err))) {
            kv_wrap(err, "config.json");
            goto done;
        }
    }
    m->layers = calloc((size_t)m->dims.n_layers, sizeof *m->layers);
    if (!m->layers) {
        rc = kv_fail(err, KV_ENOMEM, "model: out of memory");
        goto done;
    }
    rc = take_all(&ld, m, &view);
    if (!rc) {
        m->mat_type = pick_mat_type(&ld, o && o->widen_f32);
        rc = bind_all(m, &ld, err);
    }
done:
    free(ld.items);
    llama_view_free(&view);
    if (rc) {
        kv_model_free(m);
        return rc;
    }
    if (cfg->tie_word_embeddings) m->lm_head = m->embed;
    m->step_bytes = count_step_bytes(m);
    return 0;
}

int kv_model_load(kv_model *m, const char *dir, const kv_model_opts *o, kv_error *err) {
    *m = (kv_model){0};
    char path[4096];
    hf_config cfg;
    int rc = kv_join(path, sizeof path, dir, "config.json", err);
    if (rc || (rc = hf_config_load(&cfg, path, err))) return rc;
    st_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    if ((rc = st_checkpoint_open(ck, dir, err))) {
        free(ck);
        return rc;
    }
    kv_tensor_source src;
    kv_tensor_source_checkpoint(&src, ck);
    /* copied into the arena, the file's pages dropped behind (map_file < 0 says so to
     * kv_model_from_source), unless asked to map */
    kv_model_opts use = o ? *o : (kv_model_opts){0};
    if (!use.map_file) use.copy_weights = 1, use.map_file = -1;
    if ((rc = kv_model_from_source(m, &cfg, &src, &use, err))) {
        st_checkpoint_close(ck);
        free(ck);
        return rc;
    }
    m->ckpt = ck;
    return 0;
}

void kv_model_free(kv_model *m) {
    if (!m) return;
    free(m->layers);
    kv_arena_free(&m->store);
    const kv_mem_item widened = {"weights", m->mem_reserved};
    if (m->mem_reserved) kv_mem_release(&widened, 1);
    if (m->ckpt) {
        st_checkpoint_close(m->ckpt);
        free(m->ckpt);
    }
    *m = (kv_model){0};
}

double kv_model_prefill_flops(const kv_model *m, int T) {
    const llama_dims *d = &m->dims;
    const kv_map *map = &m->cfg.map;
    const double kv_proj = 2.0 * d->hidden * d->kv_dim; /* K and V */
    double per_token = 0;
    for (int i = 0; i < d->n_layers; i++) {
        per_token += 2.0 * d->hidden * d->q_dim + 3.0 * d->hidden * d->ffn;
        if (kvmap_is_kv_layer(map, i)) per_token += kv_proj;
    }
    /* attention: token t sees t + 1 positions, QK^T and PV each 2 nh hd per position */
    const double visible = (double)T * (T + 1) / 2;
    return 2.0 * per_token * T + 4.0 * d->q_dim * visible * d->n_layers +
           2.0 * d->hidden * d->vocab;
}

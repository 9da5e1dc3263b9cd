/* kvconvert run: streams the plan's tensors into a staging folder beside DST, adds config.json,
 * the tokenizer files and kvforge.json, then moves the folder into place. Source files are
 * hashed on a second thread while the tensors are written. */
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/chunkcodec.h"
#include "transform/convert/hashcache.h"
#include "base/sha256.h"
#include "transform/convert/convert.h"

const char *const convert_side_files[] = {"added_tokens.json",
                                          "generation_config.json",
                                          "merges.txt",
                                          "special_tokens_map.json",
                                          "tokenizer.json",
                                          "tokenizer.model",
                                          "tokenizer_config.json",
                                          "vocab.json",
                                          NULL};

#define CHUNK_ELEMS ((size_t)1 << 20) /* elements per converted chunk */

/* ---- paths ---- */

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* canonical absolute path of PATH, which need not exist: realpath of its longest existing
 * ancestor, then the missing components as written */
static int resolve_path(const char *path, char *out, kv_error *err) {
    char head[PATH_MAX], tail[PATH_MAX] = "";
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof head)
        return kv_fail(err, KV_EINVAL, "'%.200s': path empty or too long", path);
    memcpy(head, path, n + 1);
    while (!realpath(head, out)) {
        if (errno != ENOENT) return kv_fail(err, KV_EIO, "%s: %s", path, strerror(errno));
        while (n > 1 && head[n - 1] == '/') head[--n] = 0;
        char *slash = strrchr(head, '/');
        const char *last = slash ? slash + 1 : head;
        size_t ll = strlen(last), tl = strlen(tail);
        if (ll + 1 + tl >= sizeof tail) return kv_fail(err, KV_EINVAL, "%s: path too long", path);
        memmove(tail + ll + 1, tail, tl + 1);
        tail[0] = '/';
        memcpy(tail + 1, last, ll);
        if (!slash) {
            memcpy(head, ".", 2);
            n = 1;
        } else if (slash == head) {
            head[1] = 0;
            n = 1;
        } else {
            *slash = 0;
            n = (size_t)(slash - head);
        }
    }
    size_t len = strlen(out);
    if (len == 1 && tail[0]) len = 0; /* "/" + "/x" */
    if (len + strlen(tail) >= PATH_MAX) return kv_fail(err, KV_EINVAL, "%s: path too long", path);
    strcpy(out + len, tail);
    return 0;
}

static int is_within(const char *child, const char *parent) {
    size_t n = strlen(parent);
    if (n == 1 && parent[0] == '/') return 1;
    return strncmp(child, parent, n) == 0 && (child[n] == 0 || child[n] == '/');
}

/* ---- source files and their digests ---- */

static int cmp_hash_name(const void *a, const void *b) {
    return strcmp(((const convert_file_hash *)a)->name, ((const convert_file_hash *)b)->name);
}

static int add_file(const char *dir, const char *name, convert_file_hash *out, int *n,
                    kv_error *err) {
    char path[4096];
    int rc = kv_join(path, sizeof path, dir, name, err);
    if (rc) return rc;
    struct stat st;
    if (stat(path, &st) != 0) return kv_fail(err, KV_EIO, "%s: %s", path, strerror(errno));
    convert_file_hash *f = &out[(*n)++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->bytes = (uint64_t)st.st_size;
    return 0;
}

/* config.json, the weight files (and index), the side files present; sorted by name */
static int list_source_files(const convert_source *s, convert_file_hash **out, int *n_out,
                             kv_error *err) {
    int cap = s->ckpt.n_files + 16, n = 0;
    convert_file_hash *f = calloc((size_t)cap, sizeof *f);
    if (!f) return kv_fail(err, KV_ENOMEM, "out of memory");
    int rc = add_file(s->dir, "config.json", f, &n, err);
    if (!rc && s->ckpt.sharded) rc = add_file(s->dir, "model.safetensors.index.json", f, &n, err);
    for (int i = 0; i < s->ckpt.n_files && !rc; i++)
        rc = add_file(s->dir, base_name(s->ckpt.files[i].path), f, &n, err);
    for (int i = 0; convert_side_files[i] && !rc; i++) {
        char path[4096];
        rc = kv_join(path, sizeof path, s->dir, convert_side_files[i], err);
        if (!rc && kv_path_exists(path)) rc = add_file(s->dir, convert_side_files[i], f, &n, err);
    }
    if (rc) {
        free(f);
        return rc;
    }
    qsort(f, (size_t)n, sizeof *f, cmp_hash_name);
    *out = f;
    *n_out = n;
    return 0;
}

typedef struct {
    const char *dir;
    convert_file_hash *files;
    int use_cache; /* formats/hashcache: reuse digests of unchanged files */
    int n, rc;
    atomic_int stop; /* set by the writer when it failed: hashing is pointless then */
    kv_error err;
} hash_job;

typedef struct {
    char path[4096];
    struct stat st;
    int has_stat; /* st is valid (the cache is in use and stat worked) */
    int todo; /* index among the files to hash, -1 when the cache had the digest */
} hash_item;

/* the digests of the source files: from the cache where a file is unchanged, else hashed (on
 * up to 8 threads; see kv_sha256_files) and remembered */
static void hash_sources(hash_job *j) {
    const size_t n = (size_t)(j->n > 0 ? j->n : 1);
    hash_item *items = calloc(n, sizeof *items);
    const char **todo = calloc(n, sizeof *todo);
    char(*hex)[65] = calloc(n, sizeof *hex);
    if (!items || !todo || !hex) {
        j->rc = kv_fail(&j->err, KV_ENOMEM, "out of memory");
        goto done;
    }
    int n_todo = 0;
    for (int i = 0; i < j->n && !j->rc; i++) {
        hash_item *it = &items[i];
        if ((j->rc = kv_join(it->path, sizeof it->path, j->dir, j->files[i].name, &j->err))) break;
        it->has_stat = j->use_cache && stat(it->path, &it->st) == 0;
        it->todo = -1;
        if (it->has_stat && kv_hash_cache_lookup(it->path, &it->st, j->files[i].sha256)) continue;
        it->todo = n_todo;
        todo[n_todo++] = it->path;
    }
    /* the shards of a sharded source in parallel, one thread per CPU (up to 8) beside the
     * writer: on the 2-vCPU dev VM a 4-shard 2.2 GB cold conversion took 1.8-1.95 s this way
     * against 2.1-2.3 s with one hashing thread */
    if (!j->rc)
        j->rc = kv_sha256_files(todo, n_todo, hex, kv_resolve_threads(0, 8), &j->stop, &j->err);
    for (int i = 0; i < j->n && !j->rc; i++) {
        const hash_item *it = &items[i];
        if (it->todo < 0) continue;
        memcpy(j->files[i].sha256, hex[it->todo], sizeof hex[0]);
        if (it->has_stat) kv_hash_cache_store(it->path, &it->st, j->files[i].sha256);
    }
done:
    free(items);
    free(todo);
    free(hex);
}

/* ---- streaming the tensors ---- */

/* Tensor bytes are read with pread from the source files (reopened by path, size checked
 * against the validated mapping) rather than through the mapping: on the benchmark VM that
 * cuts the kernel time by more than half (no page faults) and keeps RSS flat. */
typedef struct {
    const convert_plan *p;
    kv_convert_progress_fn progress;
    void *progress_ctx;
    size_t done;
    int *fds; /* [n_files] source descriptors, -1 until opened */
    float *f32; /* [CHUNK_ELEMS] one source chunk widened */
    double *acc; /* [CHUNK_ELEMS] mean accumulator */
    void *out; /* [CHUNK_ELEMS * 4] output chunk */
    void *in; /* [CHUNK_ELEMS * 4] source chunk as stored */
} fill_ctx;

/* the descriptor of t's source file, opened on first use */
static int source_fd(fill_ctx *c, const st_tensor *t, kv_error *err) {
    const st_file *f = &c->p->source->ckpt.files[t->file_index];
    int *fd = &c->fds[t->file_index];
    if (*fd < 0) {
        if ((*fd = open(f->path, O_RDONLY | O_CLOEXEC)) < 0)
            return kv_fail(err, KV_EIO, "%s: cannot reopen: %s", f->path, strerror(errno));
        struct stat st;
        if (fstat(*fd, &st) != 0 || (size_t)st.st_size != f->map_size)
            return kv_fail(err, KV_EIO, "%s: changed while being converted", f->path);
        posix_fadvise(*fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    return 0;
}

/* t's first byte in its source file */
static off_t source_pos(fill_ctx *c, const st_tensor *t) {
    const st_file *f = &c->p->source->ckpt.files[t->file_index];
    return (off_t)((const uint8_t *)t->data - (const uint8_t *)f->map);
}

/* bytes [off, off+n) of tensor t into dst */
static int read_source(fill_ctx *c, const st_tensor *t, size_t off, size_t n, void *dst,
                       kv_error *err) {
    const st_file *f = &c->p->source->ckpt.files[t->file_index];
    int *fd = &c->fds[t->file_index];
    int rc = source_fd(c, t, err);
    if (rc) return rc;
    off_t pos = source_pos(c, t) + (off_t)off;
    for (size_t got = 0; got < n;) {
        ssize_t r = pread(*fd, (uint8_t *)dst + got, n - got, pos + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return kv_fail(err, KV_EIO, "%s: tensor '%s': read failed: %s", f->path, t->name,
                           r < 0 ? strerror(errno) : "file shrank");
        got += (size_t)r;
    }
    return 0;
}

static void report(fill_ctx *c, size_t bytes) {
    c->done += bytes;
    if (c->progress) c->progress(c->progress_ctx, c->done, (size_t)c->p->out_bytes);
}

/* elements [first, first+n) of t (n <= CHUNK_ELEMS) as F32 into c->f32 */
static int widen(fill_ctx *c, const st_tensor *t, size_t first, size_t n, kv_error *err) {
    size_t es = kv_dtype_size(t->dtype);
    int rc = read_source(c, t, first * es, n * es, c->in, err);
    if (!rc && (rc = kv_to_f32(c->f32, c->in, t->dtype, n)))
        rc = kv_fail(err, rc, "tensor '%s': cannot read %s as F32", t->name,
                     kv_dtype_name(t->dtype));
    return rc;
}

static int fill_copy(fill_ctx *c, const convert_tensor *ct, st_writer *w, kv_error *err) {
    const st_tensor *t = ct->src[0];
    int rc = 0;
    if (t->dtype == ct->spec.dtype) { /* verbatim: copied inside the kernel */
        if ((rc = source_fd(c, t, err))) return rc;
        rc = st_writer_copy(w, c->fds[t->file_index], source_pos(c, t), t->n_bytes, err);
        report(c, t->n_bytes);
        return rc;
    }
    size_t os = kv_dtype_size(ct->spec.dtype);
    for (size_t first = 0; first < t->n_elements && !rc; first += CHUNK_ELEMS) {
        size_t n = t->n_elements - first < CHUNK_ELEMS ? t->n_elements - first : CHUNK_ELEMS;
        rc = widen(c, t, first, n, err);
        if (!rc && (rc = kv_dtype_cast(c->out, ct->spec.dtype, c->f32, KV_F32, n)))
            rc = kv_fail(err, rc, "tensor '%s': cannot convert to %s", t->name,
                         kv_dtype_name(ct->spec.dtype));
        if (!rc) rc = st_writer_put(w, c->out, n * os, err);
        report(c, n * os);
    }
    return rc;
}

static int fill_mean(fill_ctx *c, const convert_tensor *ct, st_writer *w, kv_error *err) {
    const size_t total = ct->src[0]->n_elements, os = kv_dtype_size(ct->spec.dtype);
    const double count = ct->n_src;
    int rc = 0;
    for (size_t first = 0; first < total && !rc; first += CHUNK_ELEMS) {
        size_t n = total - first < CHUNK_ELEMS ? total - first : CHUNK_ELEMS;
        memset(c->acc, 0, n * sizeof *c->acc);
        for (int k = 0; k < ct->n_src && !rc; k++) {
            if ((rc = widen(c, ct->src[k], first, n, err))) break;
            for (size_t e = 0; e < n; e++) c->acc[e] += c->f32[e];
        }
        if (rc) break;
        for (size_t e = 0; e < n; e++) c->f32[e] = (float)(c->acc[e] / count);
        if ((rc = kv_dtype_cast(c->out, ct->spec.dtype, c->f32, KV_F32, n)))
            rc = kv_fail(err, rc, "tensor '%s': cannot convert to %s", ct->name,
                         kv_dtype_name(ct->spec.dtype));
        if (!rc) rc = st_writer_put(w, c->out, n * os, err);
        report(c, n * os);
    }
    return rc;
}

static int fill_tensor(void *ctx, int index, st_writer *w, kv_error *err) {
    fill_ctx *c = ctx;
    const convert_tensor *ct = &c->p->out[index];
    return ct->op == CONVERT_MEAN ? fill_mean(c, ct, w, err) : fill_copy(c, ct, w, err);
}

static int write_weights(const convert_plan *p, const char *dir, kv_convert_progress_fn progress,
                         void *progress_ctx, kv_error *err) {
    const int n_files = p->source->ckpt.n_files;
    fill_ctx c = {.p = p, .progress = progress, .progress_ctx = progress_ctx};
    st_spec *specs = malloc(((size_t)p->n_out + 1) * sizeof *specs);
    c.fds = malloc(((size_t)n_files + 1) * sizeof *c.fds);
    c.f32 = malloc(CHUNK_ELEMS * sizeof *c.f32);
    c.acc = malloc(CHUNK_ELEMS * sizeof *c.acc);
    c.out = malloc(CHUNK_ELEMS * 4);
    c.in = malloc(CHUNK_ELEMS * 4);
    int rc = 0;
    if (!specs || !c.fds || !c.f32 || !c.acc || !c.out || !c.in)
        rc = kv_fail(err, KV_ENOMEM, "out of memory");
    for (int i = 0; i < n_files && c.fds; i++) c.fds[i] = -1;
    for (int i = 0; i < p->n_out && !rc; i++) specs[i] = p->out[i].spec;
    static const char *const meta[] = {"format", "pt"};
    /* the output's data on the page offset of the (first) source file's: verbatim tensors then
     * copy page onto page */
    const st_file *first = &p->source->ckpt.files[0];
    const long residue = (long)((size_t)(first->data - (const uint8_t *)first->map) % 4096);
    if (!rc)
        rc = st_write_checkpoint_ex(dir, specs, p->n_out, p->opt.shard_bytes,
                                    p->opt.no_sync ? ST_WRITE_NO_SYNC : 0, residue, meta, 1,
                                    fill_tensor, &c, err);
    for (int i = 0; i < n_files && c.fds; i++)
        if (c.fds[i] >= 0) close(c.fds[i]);
    free(specs);
    free(c.fds);
    free(c.f32);
    free(c.acc);
    free(c.out);
    free(c.in);
    return rc;
}

/* ---- staging folder ---- */

/* removes the (flat) staging folder and what is in it */
static void remove_stage(const char *stage) {
    DIR *d = opendir(stage);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[4096];
        if (kv_join(path, sizeof path, stage, e->d_name, NULL) == 0) unlink(path);
    }
    if (d) closedir(d);
    rmdir(stage);
}

static void fsync_path(const char *path) {
    DIR *d = opendir(path);
    if (!d) return;
    fsync(dirfd(d));
    closedir(d);
}

static int write_text(const char *dir, const char *name, const char *text, int durable,
                      kv_error *err) {
    char path[4096];
    int rc = kv_join(path, sizeof path, dir, name, err);
    if (rc) return rc;
    size_t n = strlen(text);
    char *buf = malloc(n + 2);
    if (!buf) return kv_fail(err, KV_ENOMEM, "out of memory");
    memcpy(buf, text, n);
    buf[n] = '\n';
    rc = kv_write_file_atomic_ex(path, buf, n + 1, durable, err);
    free(buf);
    return rc;
}

static int is_checkpoint_file(const char *name) {
    size_t n = strlen(name);
    return strcmp(name, "model.safetensors.index.json") == 0 ||
           (n > 12 && strcmp(name + n - 12, ".safetensors") == 0);
}

/* --force into a non-empty DST: each staged file renamed over its namesake */
static int move_files_into(const char *stage, const char *dst, kv_error *err) {
    DIR *d = opendir(stage);
    if (!d) return kv_fail(err, KV_EIO, "%s: cannot open: %s", stage, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char from[4096], to[4096];
        rc = kv_join(from, sizeof from, stage, e->d_name, err);
        if (!rc) rc = kv_join(to, sizeof to, dst, e->d_name, err);
        if (!rc && rename(from, to) != 0)
            rc = kv_fail(err, KV_EIO, "%s: cannot move into place: %s", to, strerror(errno));
    }
    closedir(d);
    return rc;
}

/* names of the files convert_run produced (those in the staging folder before the move) */
static int collect_names(const char *dir, char ***names, int *n, kv_error *err) {
    DIR *d = opendir(dir);
    if (!d) return kv_fail(err, KV_EIO, "%s: cannot open: %s", dir, strerror(errno));
    struct dirent *e;
    int cap = 0;
    *names = NULL;
    *n = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **p = realloc(*names, (size_t)cap * sizeof *p);
            if (!p) break;
            *names = p;
        }
        if (!((*names)[*n] = strdup(e->d_name))) break;
        (*n)++;
    }
    int complete = e == NULL;
    closedir(d);
    return complete ? 0 : kv_fail(err, KV_ENOMEM, "out of memory");
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

static int remove_stale(const char *dst, char **keep, int n_keep, kv_error *err) {
    DIR *d = opendir(dst);
    if (!d) return kv_fail(err, KV_EIO, "%s: cannot open: %s", dst, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!is_checkpoint_file(e->d_name)) continue;
        int kept = 0;
        for (int i = 0; i < n_keep && !kept; i++) kept = strcmp(keep[i], e->d_name) == 0;
        if (kept) continue;
        char path[4096];
        rc = kv_join(path, sizeof path, dst, e->d_name, err);
        if (!rc && unlink(path) != 0)
            rc = kv_fail(err, KV_EIO, "%s: cannot remove stale file: %s", path, strerror(errno));
    }
    closedir(d);
    return rc;
}

static int commit_stage(const char *stage, const char *dst, int durable, kv_error *err) {
    struct stat st;
    if (stat(dst, &st) != 0 || (S_ISDIR(st.st_mode) && kv_dir_is_empty(dst))) {
        /* rename replaces an empty folder in one step */
        if (rename(stage, dst) != 0)
            return kv_fail(err, KV_EIO, "%s: cannot move %s into place: %s", dst, stage,
                           strerror(errno));
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", dst);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) *slash = 0;
        else snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
        if (durable) fsync_path(parent);
        return 0;
    }
    char **names = NULL;
    int n = 0, rc = collect_names(stage, &names, &n, err);
    if (!rc) rc = move_files_into(stage, dst, err);
    if (!rc) rc = remove_stale(dst, names, n, err);
    if (!rc && durable) fsync_path(dst);
    if (!rc) rmdir(stage);
    free_names(names, n);
    return rc;
}

/* ---- the run ---- */

static int check_destination(const convert_plan *p, const char *dst, kv_error *err) {
    char src_real[PATH_MAX], dst_real[PATH_MAX];
    int rc = resolve_path(p->source->dir, src_real, err);
    if (!rc) rc = resolve_path(dst, dst_real, err);
    if (rc) return rc;
    if (strcmp(src_real, dst_real) == 0)
        return kv_fail(err, KV_EINVAL, "%s: destination is the source folder", dst);
    if (is_within(dst_real, src_real))
        return kv_fail(err, KV_EINVAL, "%s: destination lies inside the source folder %s", dst,
                       p->source->dir);
    if (is_within(src_real, dst_real))
        return kv_fail(err, KV_EINVAL, "%s: destination contains the source folder %s", dst,
                       p->source->dir);
    struct stat st;
    if (stat(dst, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return kv_fail(err, KV_EINVAL, "%s: exists and is not a folder", dst);
        if (!p->opt.force && !kv_dir_is_empty(dst))
            return kv_fail(err, KV_EINVAL, "%s: not empty (use --force to write into it)", dst);
    } else if (errno != ENOENT) {
        return kv_fail(err, KV_EIO, "%s: %s", dst, strerror(errno));
    }
    return 0;
}

/* the two halves of a conversion, run side by side on the pool */
typedef struct {
    const convert_plan *p;
    const char *dst, *stage;
    kv_convert_progress_fn progress;
    void *progress_ctx;
    hash_job *hash;
} convert_job;

/* weights, config.json and the side files into the staging folder */
static int write_model(const convert_job *j, kv_error *err) {
    const convert_plan *p = j->p;
    int rc = write_weights(p, j->stage, j->progress, j->progress_ctx, err);
    if (!rc) {
        char *cfg;
        char label[4200];
        snprintf(label, sizeof label, "%s/config.json", j->dst);
        rc = hf_config_write_json(&p->out_cfg, p->source->config_text, label, &cfg, err);
        if (!rc) rc = write_text(j->stage, "config.json", cfg, !p->opt.no_sync, err);
        free(cfg);
    }
    for (int i = 0; convert_side_files[i] && !rc; i++) {
        char from[4096], to[4096];
        rc = kv_join(from, sizeof from, p->source->dir, convert_side_files[i], err);
        if (!rc) rc = kv_join(to, sizeof to, j->stage, convert_side_files[i], err);
        if (!rc && kv_path_exists(from))
            rc = kv_copy_file_atomic_ex(from, to, !p->opt.no_sync, err);
    }
    return rc;
}

static int convert_task(void *ctx, int i, int worker, kv_error *err) {
    (void)worker;
    convert_job *j = ctx;
    if (i == 0) {
        int rc = write_model(j, err);
        if (rc) atomic_store(&j->hash->stop, 1); /* hashing is pointless then */
        return rc;
    }
    hash_sources(j->hash);
    if (j->hash->rc) *err = j->hash->err;
    return j->hash->rc;
}

int convert_run(const convert_plan *p, const char *dst_in, kv_convert_progress_fn progress,
                void *progress_ctx, char **manifest_out, kv_error *err) {
    if (manifest_out) *manifest_out = NULL;
    char dst[4096], stage[4200];
    int n = snprintf(dst, sizeof dst, "%s", dst_in);
    if (n <= 0 || (size_t)n >= sizeof dst)
        return kv_fail(err, KV_EINVAL, "destination path empty or too long");
    while (n > 1 && dst[n - 1] == '/') dst[--n] = 0;
    int rc = check_destination(p, dst, err);
    if (rc) return rc;
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", dst);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        if ((rc = kv_mkdir_p(parent, err))) return rc;
    }
    int stage_lock;
    if ((rc = kv_tmpdir_beside(dst, stage, sizeof stage, &stage_lock, err))) return rc;

    convert_file_hash *files = NULL;
    int n_files = 0;
    rc = list_source_files(p->source, &files, &n_files, err);
    hash_job job = {
        .dir = p->source->dir, .files = files, .n = n_files, .use_cache = !p->opt.no_hash_cache};
    convert_job cj = {.p = p,
                      .dst = dst,
                      .stage = stage,
                      .progress = progress,
                      .progress_ctx = progress_ctx,
                      .hash = &job};
    /* task 0 writes the model, task 1 hashes the source beside it (one after the other when a
     * second thread cannot be started); a writer's failure is the one reported */
    if (!rc) rc = kv_pool_run(2, 2, convert_task, &cj, NULL, err);
    char *manifest = NULL;
    if (!rc && !(manifest = convert_plan_json(p, files, n_files)))
        rc = kv_fail(err, KV_ENOMEM, "out of memory");
    if (!rc) rc = write_text(stage, "kvforge.json", manifest, !p->opt.no_sync, err);
    free(files);
    if (!rc) rc = commit_stage(stage, dst, !p->opt.no_sync, err);
    if (rc) {
        remove_stage(stage);
        kv_error_replace_dir(err, stage, dst);
    }
    if (stage_lock >= 0) close(stage_lock);
    if (rc) {
        free(manifest);
        return rc;
    }
    if (manifest_out) *manifest_out = manifest;
    else free(manifest);
    return 0;
}

/* ---- one-call API ---- */

int kv_convert_plan(const char *src_dir, const kv_convert_opts *o, kv_convert_report *rep,
                    kv_error *err) {
    convert_source s;
    int rc = convert_source_open(&s, src_dir, err);
    if (rc) return rc;
    convert_plan p;
    rc = convert_plan_build(&p, &s, o, err);
    if (!rc) {
        if (rep) convert_plan_report(&p, rep);
        convert_plan_free(&p);
    }
    convert_source_close(&s);
    return rc;
}

int kv_convert_run(const char *src_dir, const char *dst_dir, const kv_convert_opts *o,
                   kv_convert_report *rep, kv_convert_progress_fn progress, void *progress_ctx,
                   kv_error *err) {
    convert_source s;
    int rc = convert_source_open(&s, src_dir, err);
    if (rc) return rc;
    convert_plan p;
    rc = convert_plan_build(&p, &s, o, err);
    if (!rc) {
        rc = convert_run(&p, dst_dir, progress, progress_ctx, NULL, err);
        if (!rc && rep) convert_plan_report(&p, rep);
        convert_plan_free(&p);
    }
    convert_source_close(&s);
    return rc;
}

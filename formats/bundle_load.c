/* Bundle tensors: parallel decode straight into place + per-tensor sha256; load, verify,
 * unbundle back to an HF directory. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/bundle_internal.h"
#include "base/fileio.h"
#include "base/membudget.h"
#include "base/sha256.h"

#define KVB_VERIFY_BATCH ((size_t)256 << 20) /* raw bytes decoded at a time by verify */

typedef struct {
    const kv_bundle *b;
    const int *order; /* tensor indices, largest first */
    const uint8_t *dst;
    uint64_t base; /* raw offset of dst[0] */
} hash_job;

/* task i hashes tensors order[2i] and order[2i+1] (neighbours in size) together */
static int hash_tensor_pair(void *ctx, int i, int worker, kv_error *err) {
    const hash_job *j = ctx;
    (void)worker;
    const kvb_tensor *t[2] = {&j->b->m.tensors[j->order[2 * i]], NULL};
    if (j->order[2 * i + 1] >= 0) t[1] = &j->b->m.tensors[j->order[2 * i + 1]];
    uint8_t d[2][32];
    if (t[1])
        kv_sha256_x2(j->dst + (t[0]->offset - j->base), (size_t)t[0]->size, d[0],
                     j->dst + (t[1]->offset - j->base), (size_t)t[1]->size, d[1]);
    else kv_sha256(j->dst + (t[0]->offset - j->base), (size_t)t[0]->size, d[0]);
    for (int k = 0; k < 2 && t[k]; k++)
        if (memcmp(d[k], t[k]->sha256, 32) != 0)
            return kv_fail(err, KV_ECHECKSUM,
                           "%s: tensor '%s': sha256 mismatch: the tensor data are corrupted",
                           j->b->path, t[k]->name);
    return 0;
}

static int tensor_of_chunk(const kvb_manifest *m, int t0, int t1, int chunk) {
    int lo = t0, hi = t1 - 1; /* last tensor whose first_chunk <= chunk, skipping empty ones */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (m->tensors[mid].first_chunk <= chunk) lo = mid;
        else hi = mid - 1;
    }
    while (lo > t0 && m->tensors[lo].n_chunks == 0) lo--;
    return lo;
}

static int by_size_desc(const void *a, const void *b, void *tensors) {
    const kvb_tensor *t = tensors;
    uint64_t x = t[*(const int *)a].size, y = t[*(const int *)b].size;
    if (x != y) return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

int kvb_decode_tensors(kv_bundle *b, int t0, int t1, uint8_t *dst, int threads, kv_error *err) {
    const kvb_manifest *m = &b->m;
    if (t0 >= t1) return 0;
    uint64_t base = m->tensors[t0].offset;
    uint64_t end = m->tensors[t1 - 1].offset + m->tensors[t1 - 1].size;
    int c0 = m->tensors[t0].first_chunk;
    int c1 = m->tensors[t1 - 1].first_chunk + m->tensors[t1 - 1].n_chunks;
    for (int i = t0; i < t1; i++) /* empty tensors carry first_chunk = their successor's */
        if (m->tensors[i].n_chunks && m->tensors[i].first_chunk < c0)
            c0 = m->tensors[i].first_chunk;
    int n_chunks = c1 - c0;
    kv_chunk *chunks = malloc(((size_t)n_chunks + 1) * sizeof *chunks);
    int *order = malloc(((size_t)(t1 - t0) + 2) * sizeof *order);
    if (!chunks || !order) {
        free(chunks);
        free(order);
        return kv_fail(err, KV_ENOMEM, "%s: no memory for the chunk table", b->path);
    }
    for (int c = 0; c < n_chunks; c++) {
        chunks[c] = m->chunks[c0 + c];
        chunks[c].raw_offset -= base;
    }
    /* gaps between tensors (alignment) are zero */
    uint64_t pos = base;
    for (int i = t0; i < t1; i++) {
        memset(dst + (pos - base), 0, (size_t)(m->tensors[i].offset - pos));
        pos = m->tensors[i].offset + m->tensors[i].size;
    }
    threads = kv_resolve_threads(threads, n_chunks > t1 - t0 ? n_chunks : t1 - t0);
    int bad = -1;
    int rc = kv_chunk_decode(chunks, n_chunks, b->stored, (size_t)m->stored_size, dst,
                             (size_t)(end - base), threads, &bad, "decode", err);
    if (rc && bad >= 0) {
        int t = tensor_of_chunk(m, t0, t1, c0 + bad);
        const kvb_tensor *tt = &m->tensors[t];
        char prefix[64], detail[sizeof err->msg];
        snprintf(prefix, sizeof prefix, "decode: chunk %d: ", bad);
        snprintf(detail, sizeof detail, "%s",
                 strncmp(err->msg, prefix, strlen(prefix)) == 0 ? err->msg + strlen(prefix)
                                                                : err->msg);
        rc = kv_fail(err, rc, "%s: tensor '%s': chunk %d of %d: %s", b->path, tt->name,
                     c0 + bad - tt->first_chunk, tt->n_chunks, detail);
    } else if (rc) {
        kv_wrap(err, "%s", b->path);
    }
    if (!rc) {
        for (int i = 0; i < t1 - t0; i++) order[i] = t0 + i;
        qsort_r(order, (size_t)(t1 - t0), sizeof *order, by_size_desc, m->tensors);
        order[t1 - t0] = -1; /* an odd count leaves the last one alone */
        hash_job j = {.b = b, .order = order, .dst = dst, .base = base};
        int n_pairs = (t1 - t0 + 1) / 2;
        rc = kv_pool_run(n_pairs, kv_resolve_threads(threads, n_pairs), hash_tensor_pair, &j, NULL,
                         err);
    }
    free(chunks);
    free(order);
    return rc;
}

int kv_bundle_load_tensors(kv_bundle *b, void *buf, size_t cap, int threads, kv_error *err) {
    if (b->loaded) return kv_fail(err, KV_EINVAL, "%s: tensors already loaded", b->path);
    size_t raw = (size_t)b->m.raw_size;
    uint8_t *dst = buf;
    size_t map_size = 0;
    if (buf) {
        if (cap < raw)
            return kv_fail(err, KV_EINVAL, "%s: buffer of %zu bytes, the tensors need %zu", b->path,
                           cap, raw);
    } else {
        /* the decoded tensors: in the memory budget (base/membudget.h) before the mapping */
        const kv_mem_item decoded = {"bundle tensors", raw};
        int rc = kv_mem_reserve(b->path, &decoded, 1, err);
        if (rc) return rc;
        const size_t huge = (size_t)2 << 20;
        map_size = raw ? (raw + huge - 1) / huge * huge : huge;
        void *p = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            kv_mem_release(&decoded, 1);
            return kv_fail(err, KV_ENOMEM, "%s: cannot allocate %zu bytes for the tensors", b->path,
                           raw);
        }
        if (map_size >= ((size_t)64 << 20))
            madvise(p, map_size, MADV_HUGEPAGE); /* fewer page faults; a hint only */
        dst = p;
    }
    int rc = kvb_decode_tensors(b, 0, b->m.n_tensors, dst, threads, err);
    if (rc) {
        if (map_size) {
            munmap(dst, map_size);
            const kv_mem_item decoded = {"bundle tensors", raw};
            kv_mem_release(&decoded, 1);
        }
        return rc;
    }
    b->raw = dst;
    b->raw_map_size = map_size;
    b->st.data = dst;
    for (int i = 0; i < b->st.n_tensors; i++) b->st.tensors[i].data = dst + b->st.tensors[i].offset;
    b->loaded = 1;
    return 0;
}

int kv_bundle_verify(const char *path, kv_bundle_report *report, kv_error *err) {
    if (report) memset(report, 0, sizeof *report);
    kv_bundle *b;
    int rc = kv_bundle_open(&b, path, err);
    if (rc) return rc;
    const kvb_manifest *m = &b->m;
    size_t cap = (size_t)m->raw_size < KVB_VERIFY_BATCH ? (size_t)m->raw_size : KVB_VERIFY_BATCH;
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].size > cap) cap = (size_t)m->tensors[i].size;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) rc = kv_fail(err, KV_ENOMEM, "%s: no memory for a %zu-byte verify buffer", path, cap);
    for (int t0 = 0; !rc && t0 < m->n_tensors;) {
        int t1 = t0 + 1;
        while (t1 < m->n_tensors &&
               m->tensors[t1].offset + m->tensors[t1].size - m->tensors[t0].offset <= cap)
            t1++;
        rc = kvb_decode_tensors(b, t0, t1, buf, 0, err);
        t0 = t1;
    }
    free(buf);
    if (!rc && report) {
        report->n_tensors = m->n_tensors;
        report->n_chunks = m->n_chunks;
        for (int c = 0; c < m->n_chunks; c++)
            report->n_zstd_chunks += m->chunks[c].codec == KV_CODEC_ZSTD;
        report->n_files = m->n_files;
        report->raw_bytes = m->raw_size;
        report->stored_bytes = m->stored_size;
        report->file_bytes = b->map_size;
    }
    kv_bundle_close(b);
    return rc;
}

/* ---------------- unbundle ---------------- */

static int write_hf_dir(kv_bundle *b, const char *dir, kv_error *err) {
    const kvb_manifest *m = &b->m;
    int n = m->n_tensors;
    st_spec *specs = calloc((size_t)n + 1, sizeof *specs);
    const void **data = calloc((size_t)n + 1, sizeof *data);
    const char **meta = calloc(2 * (size_t)m->n_meta + 1, sizeof *meta);
    char path[4096];
    int rc = 0;
    if (!specs || !data || !meta) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", b->path);
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = &b->st.tensors[i];
        specs[i] = (st_spec){.name = t->name, .dtype = t->dtype, .n_dims = t->n_dims};
        memcpy(specs[i].shape, t->shape, sizeof specs[i].shape);
        data[i] = t->data;
    }
    for (int i = 0; i < m->n_meta; i++) {
        meta[2 * i] = m->meta_keys[i];
        meta[2 * i + 1] = m->meta_values[i];
    }
    if (!rc) rc = kv_join(path, sizeof path, dir, "model.safetensors", err);
    if (!rc) rc = st_write_file(path, specs, data, n, meta, m->n_meta, err);
    if (!rc) rc = kv_bundle_extract_files(b, dir, err);
    free(specs);
    free(data);
    free(meta);
    return rc;
}

int kv_bundle_unbundle(const char *path, const char *dir, kv_error *err) {
    struct stat st;
    if (stat(dir, &st) == 0 && (!S_ISDIR(st.st_mode) || !kv_dir_is_empty(dir)))
        return kv_fail(err, KV_EINVAL,
                       "%s: exists and is not an empty directory; refusing to unbundle into it",
                       dir);
    char parent[4096], tmp[4096];
    if (snprintf(parent, sizeof parent, "%s", dir) >= (int)sizeof parent)
        return kv_fail(err, KV_EINVAL, "%s: path too long", dir);
    int rc = kv_mkdir_p(dirname(parent), err);
    if (rc) return rc;

    kv_bundle *b;
    if ((rc = kv_bundle_open(&b, path, err))) return rc;
    rc = kv_bundle_load_tensors(b, NULL, 0, 0, err);
    int tmp_lock = -1;
    if (!rc && !(rc = kv_tmpdir_beside(dir, tmp, sizeof tmp, &tmp_lock, err))) {
        rc = write_hf_dir(b, tmp, err);
        if (!rc && rename(tmp, dir) != 0)
            rc = kv_fail(err, KV_EIO, "%s: cannot move the unbundled directory into place: %s", dir,
                         strerror(errno));
        if (rc) {
            kv_remove_flat_dir(tmp);
            kv_error_replace_dir(err, tmp, dir);
        }
        if (tmp_lock >= 0) close(tmp_lock);
    }
    kv_bundle_close(b);
    if (!rc) { /* make the rename durable */
        snprintf(parent, sizeof parent, "%s", dir);
        int fd = open(dirname(parent), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    return rc;
}

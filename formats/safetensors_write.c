/* safetensors writer: deterministic header (metadata first, tensors sorted by name, compact
 * JSON, space-padded to a multiple of 8), data streamed to a temp file, fsync, rename. While a
 * durable file is written, writeback of every finished WRITEBACK_STEP is started at once, so
 * the fsync at the end waits for the last step only, not the whole file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/safetensors.h"

struct st_writer {
    char path[4096], tmp[4096];
    int fd;
    int n;
    st_spec *specs; /* sorted by name; names borrowed from the caller */
    size_t *ends; /* ends[i] = end offset of tensor i in the data buffer */
    size_t written; /* data bytes written so far */
    char *buf; /* staging buffer for small puts */
    size_t buf_len;
    int durable; /* fsync before the rename (default) */
    off_t file_pos; /* bytes in the file (header included) */
    off_t kicked; /* writeback started for [0, kicked) */
};

#define WRITER_BUF     (1u << 20)
#define WRITEBACK_STEP ((off_t)32 << 20)
#define COPY_STEP      ((size_t)32 << 20) /* bytes per copy_file_range call */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}
static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_put(b, esc, 6);
        } else sb_put(b, (const char *)p, 1);
    }
    sb_put(b, "\"", 1);
}

static int cmp_spec_name(const void *a, const void *b) {
    return strcmp(((const st_spec *)a)->name, ((const st_spec *)b)->name);
}

/* starts writeback of the complete WRITEBACK_STEPs written since the last call */
static void kick_writeback(st_writer *w) {
    if (!w->durable) return;
    off_t end = w->file_pos / WRITEBACK_STEP * WRITEBACK_STEP;
    if (end <= w->kicked) return;
    sync_file_range(w->fd, w->kicked, end - w->kicked, SYNC_FILE_RANGE_WRITE);
    w->kicked = end;
}

static int write_out(st_writer *w, const void *bytes, size_t n) {
    if (kv_write_all(w->fd, bytes, n) != 0) return -1;
    w->file_pos += (off_t)n;
    kick_writeback(w);
    return 0;
}

static int flush_buf(st_writer *w) {
    if (w->buf_len && write_out(w, w->buf, w->buf_len) != 0) return -1;
    w->buf_len = 0;
    return 0;
}

void st_writer_abort(st_writer *w) {
    if (!w) return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    free(w->specs);
    free(w->ends);
    free(w->buf);
    free(w);
}

int st_writer_open(st_writer **out, const char *path, const st_spec *specs, int n_specs,
                   const char *const *meta_kv, int n_meta, kv_error *err) {
    return st_writer_open_aligned(out, path, specs, n_specs, meta_kv, n_meta, -1, err);
}

int st_writer_open_aligned(st_writer **out, const char *path, const st_spec *specs, int n_specs,
                           const char *const *meta_kv, int n_meta, long data_residue,
                           kv_error *err) {
    *out = NULL;
    st_writer *w = calloc(1, sizeof *w);
    if (!w) return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    w->fd = -1;
    w->durable = 1;
    snprintf(w->path, sizeof w->path, "%s", path);
    w->n = n_specs;
    w->specs = malloc(((size_t)n_specs + 1) * sizeof *w->specs);
    w->ends = malloc(((size_t)n_specs + 1) * sizeof *w->ends);
    w->buf = malloc(WRITER_BUF);
    if (!w->specs || !w->ends || !w->buf) {
        st_writer_abort(w);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    }
    if (n_specs) memcpy(w->specs, specs, (size_t)n_specs * sizeof *specs);
    qsort(w->specs, (size_t)n_specs, sizeof *w->specs, cmp_spec_name);
    strbuf h = {0};
    sb_str(&h, "{");
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) sb_str(&h, ",");
            sb_json_string(&h, meta_kv[2 * i]);
            sb_str(&h, ":");
            sb_json_string(&h, meta_kv[2 * i + 1]);
        }
        sb_str(&h, "}");
    }
    size_t offset = 0;
    int rc = 0;
    for (int i = 0; i < n_specs && !rc; i++) {
        const st_spec *s = &w->specs[i];
        size_t bytes = st_spec_bytes(s);
        if (bytes == SIZE_MAX) {
            rc =
                kv_fail(err, KV_EINVAL, "%s: tensor '%s': bad dtype, rank or shape", path, s->name);
            break;
        }
        if (i && strcmp(w->specs[i - 1].name, s->name) == 0) {
            rc = kv_fail(err, KV_EINVAL, "%s: tensor '%s' given twice", path, s->name);
            break;
        }
        if (i || n_meta > 0) sb_str(&h, ",");
        sb_json_string(&h, s->name);
        char num[64];
        snprintf(num, sizeof num, ":{\"dtype\":\"%s\",\"shape\":[", kv_dtype_name(s->dtype));
        sb_str(&h, num);
        for (int d = 0; d < s->n_dims; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)s->shape[d]);
            sb_str(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", offset, offset + bytes);
        sb_str(&h, num);
        offset += bytes;
        w->ends[i] = offset;
    }
    sb_str(&h, "}");
    while (!h.oom && h.len % 8) sb_str(&h, " ");
    /* data start (8 + header) on the requested page residue: tensors copied from a source whose
     * data starts there keep their page offsets, and the kernel copies whole pages */
    if (data_residue >= 0 && data_residue % 8 == 0)
        while (!h.oom && (8 + h.len) % 4096 != (size_t)data_residue % 4096) sb_str(&h, "        ");
    if (!rc && h.oom) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    if (!rc && h.len > ST_MAX_HEADER)
        rc = kv_fail(err, KV_EINVAL, "%s: header of %zu bytes exceeds 100 MB", path, h.len);
    if (!rc) rc = kv_tmpfile_beside(path, w->tmp, sizeof w->tmp, &w->fd, err);
    if (!rc) {
        uint8_t len_le[8];
        for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
        memcpy(w->buf, len_le, 8);
        w->buf_len = 8;
        if (flush_buf(w) != 0 || write_out(w, h.s, h.len) != 0)
            rc = kv_fail(err, KV_EIO, "%s: cannot write header: %s", path, strerror(errno));
    }
    free(h.s);
    if (rc) {
        st_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

const char *st_writer_next(const st_writer *w) {
    for (int i = 0; i < w->n; i++)
        if (w->written < w->ends[i]) return w->specs[i].name;
    return NULL;
}

void st_writer_set_durable(st_writer *w, int durable) { w->durable = durable; }

static int check_room(const st_writer *w, size_t n, kv_error *err) {
    size_t total = w->n ? w->ends[w->n - 1] : 0;
    if (n > total - w->written)
        return kv_fail(err, KV_EINVAL, "%s: %zu more data bytes than the header declares", w->path,
                       n - (total - w->written));
    return 0;
}

int st_writer_put(st_writer *w, const void *bytes, size_t n, kv_error *err) {
    int rc = check_room(w, n, err);
    if (rc) return rc;
    w->written += n;
    if (w->buf_len + n <= WRITER_BUF) {
        memcpy(w->buf + w->buf_len, bytes, n);
        w->buf_len += n;
        return 0;
    }
    if (flush_buf(w) != 0)
        return kv_fail(err, KV_EIO, "%s: write failed: %s", w->path, strerror(errno));
    if (n <= WRITER_BUF / 2) {
        memcpy(w->buf, bytes, n);
        w->buf_len = n;
        return 0;
    }
    if (write_out(w, bytes, n) != 0)
        return kv_fail(err, KV_EIO, "%s: write failed: %s", w->path, strerror(errno));
    return 0;
}

/* ---- in-kernel copy ---- */

/* [src_off, +n) of src_fd to [dst_off, +n) of dst_fd: copy_file_range, or pread + pwrite where
 * the filesystems refuse it. 0, or an errno value. */
static int copy_range(int src_fd, off_t src_off, int dst_fd, off_t dst_off, size_t n) {
    char *buf = NULL;
    while (n > 0) {
        ssize_t r = -1;
        if (!buf) {
            r = copy_file_range(src_fd, &src_off, dst_fd, &dst_off, n < COPY_STEP ? n : COPY_STEP,
                                0);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                          errno == EOPNOTSUPP || errno == EBADF)) {
                if (!(buf = malloc(WRITER_BUF))) return ENOMEM;
                continue;
            }
            if (r <= 0) {
                free(buf);
                return r ? errno : EIO;
            }
        } else {
            r = pread(src_fd, buf, n < WRITER_BUF ? n : WRITER_BUF, src_off);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                int e = r ? errno : EIO;
                free(buf);
                return e;
            }
            for (ssize_t done = 0; done < r;) {
                ssize_t w = pwrite(dst_fd, buf + done, (size_t)(r - done), dst_off + done);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) {
                    int e = w ? errno : EIO;
                    free(buf);
                    return e;
                }
                done += w;
            }
            src_off += r;
            dst_off += r;
        }
        n -= (size_t)r;
    }
    free(buf);
    return 0;
}

/* One thread: buffered writes to one file serialise on its inode lock in the kernel, so copies
 * split across threads measured slower (lock contention), not faster. */
int st_writer_copy(st_writer *w, int src_fd, off_t src_off, size_t n, kv_error *err) {
    int rc = check_room(w, n, err);
    if (rc) return rc;
    w->written += n;
    if (flush_buf(w) != 0)
        return kv_fail(err, KV_EIO, "%s: write failed: %s", w->path, strerror(errno));
    int e = copy_range(src_fd, src_off, w->fd, w->file_pos, n);
    if (e) return kv_fail(err, KV_EIO, "%s: copy failed: %s", w->path, strerror(e));
    w->file_pos += (off_t)n;
    if (lseek(w->fd, w->file_pos, SEEK_SET) != w->file_pos)
        return kv_fail(err, KV_EIO, "%s: seek failed: %s", w->path, strerror(errno));
    kick_writeback(w);
    return 0;
}

int st_writer_finish(st_writer *w, kv_error *err) {
    size_t total = w->n ? w->ends[w->n - 1] : 0;
    int rc = 0;
    if (w->written != total) {
        const char *next = st_writer_next(w);
        rc = kv_fail(err, KV_EINVAL,
                     "%s: only %zu of %zu data bytes written (tensor '%s' incomplete)", w->path,
                     w->written, total, next ? next : "?");
    } else if (flush_buf(w) != 0) {
        rc = kv_fail(err, KV_EIO, "%s: write failed: %s", w->path, strerror(errno));
    } else {
        rc = kv_commit_tmpfile_ex(w->fd, w->tmp, w->path, w->durable, err);
        w->fd = -1; /* commit closed (and on failure removed) it */
    }
    st_writer_abort(w);
    return rc;
}

int st_write_file(const char *path, const st_spec *specs, const void *const *data, int n,
                  const char *const *meta_kv, int n_meta, kv_error *err) {
    st_writer *w;
    int rc = st_writer_open(&w, path, specs, n, meta_kv, n_meta, err);
    if (rc) return rc;
    /* the writer sorted the specs: emit the callers' buffers in that order */
    for (int i = 0; i < n && !rc; i++) {
        const char *name = w->specs[i].name;
        int j = 0;
        while (j < n && strcmp(specs[j].name, name) != 0) j++;
        rc = st_writer_put(w, data[j], st_spec_bytes(&specs[j]), err);
    }
    if (rc) {
        st_writer_abort(w);
        return rc;
    }
    return st_writer_finish(w, err);
}

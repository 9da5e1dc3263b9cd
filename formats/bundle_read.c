/* Bundle reader: the archive is mapped and walked with libarchive; nothing in it is trusted.
 * Entries must come in the manifest's order with the manifest's names and sizes; every byte of
 * the file is either covered by a digest (manifest, files, tensors), a tar header checksum, or
 * checked to be zero (tar padding and end blocks). */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "formats/bundle_internal.h"
#include "base/fileio.h"
#include "base/membudget.h"
#include "base/sha256.h"

/* ---------------- archive walk ---------------- */

typedef struct {
    struct archive *a;
    kv_bundle *b;
    int index; /* entries read so far */
    uint64_t data_end; /* map offset after the last entry's data; UINT64_MAX unknown */
} walker;

static int zero_bytes(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* the checksum field of a tar header as this writer makes it: six octal digits, NUL, space
 * (its terminators are the only header bytes the checksum itself does not cover) */
static int check_header_chksum(walker *w, uint64_t pos, const char *name, kv_error *err) {
    if (pos + 512 > w->b->map_size) return 0;
    const uint8_t *h = w->b->map + pos + 148;
    int ok = h[6] == 0 && h[7] == ' ';
    for (int i = 0; i < 6; i++) ok &= h[i] >= '0' && h[i] <= '7';
    if (!ok)
        return kv_fail(err, KV_ECHECKSUM,
                       "%s: entry '%s': tar header checksum field altered (corrupted archive)",
                       w->b->path, name);
    return 0;
}

/* everything between the previous entry's data and `until` must be zero (tar padding) */
static int check_gap(walker *w, uint64_t until, const char *what, kv_error *err) {
    if (w->data_end == UINT64_MAX || until < w->data_end || until > w->b->map_size) return 0;
    if (!zero_bytes(w->b->map + w->data_end, (size_t)(until - w->data_end)))
        return kv_fail(
            err, KV_ECHECKSUM,
            "%s: non-zero bytes in the tar padding before %s (corrupted or altered archive)",
            w->b->path, what);
    return 0;
}

/* Reads the next entry, which must be `want` with a size at most max (exactly max if exact).
 * *data points into the map when the entry's bytes are contiguous there, else into *copy. */
static int next_entry(walker *w, const char *want, uint64_t max, int exact, const uint8_t **data,
                      uint64_t *size_out, uint8_t **copy, kv_error *err) {
    kv_bundle *b = w->b;
    struct archive_entry *e;
    *data = NULL;
    *copy = NULL;
    int rc = archive_read_next_header(w->a, &e);
    if (rc == ARCHIVE_EOF)
        return kv_fail(err, KV_EFORMAT,
                       "%s: archive ends after %d entries; '%s' is missing (truncated bundle?)",
                       b->path, w->index, want);
    if (rc != ARCHIVE_OK)
        return kv_fail(err, KV_EFORMAT, "%s: entry %d: damaged archive: %s", b->path, w->index,
                       archive_error_string(w->a) ? archive_error_string(w->a)
                                                  : "unreadable header");
    const char *name = archive_entry_pathname(e);
    if (!name)
        return kv_fail(err, KV_EFORMAT, "%s: entry %d has no readable name", b->path, w->index);
    if (!kvb_entry_name_safe(name))
        return kv_fail(
            err, KV_EFORMAT,
            "%s: entry '%s': unsafe path (absolute, '..' or control characters), refused", b->path,
            name);
    if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e) ||
        archive_entry_symlink(e))
        return kv_fail(err, KV_EFORMAT,
                       "%s: entry '%s': not a regular file (link, device or directory), refused",
                       b->path, name);
    if (strcmp(name, want) != 0)
        return kv_fail(
            err, KV_EFORMAT,
            "%s: entry %d is '%s' where '%s' was expected (entries missing, extra or out of order)",
            b->path, w->index, name, want);
    if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
        return kv_fail(err, KV_EFORMAT, "%s: entry '%s' has no size", b->path, name);
    uint64_t size = (uint64_t)archive_entry_size(e);
    if (exact ? size != max : size > max)
        return kv_fail(err, KV_EFORMAT, "%s: entry '%s' holds %llu bytes, the manifest %s %llu",
                       b->path, name, (unsigned long long)size, exact ? "says" : "allows at most",
                       (unsigned long long)max);
    if (size > b->map_size)
        return kv_fail(err, KV_EFORMAT,
                       "%s: entry '%s' claims %llu bytes, more than the file (truncated bundle?)",
                       b->path, name, (unsigned long long)size);
    uint64_t header_pos = (uint64_t)archive_read_header_position(w->a);
    if ((rc = check_gap(w, header_pos, name, err))) return rc;
    if ((rc = check_header_chksum(w, header_pos, name, err))) return rc;
    w->index++;

    /* data blocks: expected to be one contiguous run inside the map */
    const uint8_t *start = NULL;
    uint64_t got = 0;
    for (;;) {
        const void *blk;
        size_t n;
        la_int64_t off;
        rc = archive_read_data_block(w->a, &blk, &n, &off);
        if (rc == ARCHIVE_EOF) break;
        if (rc != ARCHIVE_OK) {
            free(*copy);
            *copy = NULL;
            return kv_fail(err, KV_EFORMAT, "%s: entry '%s': %s (truncated bundle?)", b->path, name,
                           archive_error_string(w->a) ? archive_error_string(w->a)
                                                      : "cannot read data");
        }
        if (off < 0 || (uint64_t)off != got || n > size - got) {
            free(*copy);
            *copy = NULL;
            return kv_fail(err, KV_EFORMAT,
                           "%s: entry '%s': data out of sequence (sparse or damaged entry)",
                           b->path, name);
        }
        const uint8_t *p = blk;
        int in_map = p >= b->map && p + n <= b->map + b->map_size;
        if (got == 0 && in_map) start = p;
        if (start && (!in_map || p != start + got)) { /* not contiguous: fall back to a copy */
            if (!(*copy = malloc(size ? size : 1)))
                return kv_fail(err, KV_ENOMEM, "%s: entry '%s': no memory for %llu bytes", b->path,
                               name, (unsigned long long)size);
            memcpy(*copy, start, got);
            start = NULL;
        } else if (!start && !*copy) {
            if (!(*copy = malloc(size ? size : 1)))
                return kv_fail(err, KV_ENOMEM, "%s: entry '%s': no memory for %llu bytes", b->path,
                               name, (unsigned long long)size);
        }
        if (*copy) memcpy(*copy + got, p, n);
        got += n;
    }
    if (got != size) {
        free(*copy);
        *copy = NULL;
        return kv_fail(err, KV_EFORMAT, "%s: entry '%s': %llu of %llu bytes (truncated bundle?)",
                       b->path, name, (unsigned long long)got, (unsigned long long)size);
    }
    if (start && (uint64_t)(start - b->map) >= header_pos + 1024) { /* pax extended header before */
        if ((rc = check_header_chksum(w, (uint64_t)(start - b->map) - 512, name, err))) return rc;
    }
    static const uint8_t empty[1];
    *data = *copy ? *copy : start ? start : empty;
    *size_out = size;
    w->data_end = start ? (uint64_t)(start - b->map) + size : UINT64_MAX;
    return 0;
}

/* after the last entry: the end marker, and nothing but zeros up to the end of the file */
static int expect_end(walker *w, kv_error *err) {
    struct archive_entry *e;
    int rc = archive_read_next_header(w->a, &e);
    if (rc == ARCHIVE_OK)
        return kv_fail(err, KV_EFORMAT,
                       "%s: unexpected extra entry '%s' after the manifest's files", w->b->path,
                       archive_entry_pathname(e) ? archive_entry_pathname(e) : "?");
    if (rc != ARCHIVE_EOF)
        return kv_fail(err, KV_EFORMAT, "%s: damaged archive end: %s", w->b->path,
                       archive_error_string(w->a) ? archive_error_string(w->a) : "unreadable");
    int rc2 = check_gap(w, w->b->map_size, "the end of the file", err);
    if (rc2) return rc2;
    /* the end marker: two zero blocks right after the last entry's padded data */
    if (w->data_end != UINT64_MAX && w->b->map_size != (w->data_end + 511) / 512 * 512 + 1024)
        return kv_fail(err, KV_EFORMAT,
                       "%s: the archive does not end with exactly its two end blocks (truncated or "
                       "padded bundle)",
                       w->b->path);
    return 0;
}

/* manifest.json, then manifest.json.sha256 ("<hex>  manifest.json\n") which must match it */
static int read_manifest(walker *w, kv_error *err) {
    kv_bundle *b = w->b;
    const uint8_t *data;
    uint8_t *copy;
    uint64_t n;
    uint64_t max = b->map_size < KV_BUNDLE_MAX_MANIFEST ? b->map_size : KV_BUNDLE_MAX_MANIFEST;
    int rc = next_entry(w, KVB_MANIFEST, max, 0, &data, &n, &copy, err);
    if (rc) return rc;
    b->manifest_text = malloc((size_t)n + 1);
    if (!b->manifest_text) {
        free(copy);
        return kv_fail(err, KV_ENOMEM, "%s: no memory for the manifest", b->path);
    }
    memcpy(b->manifest_text, data, (size_t)n);
    b->manifest_text[n] = 0;
    free(copy);
    size_t manifest_len = (size_t)n;
    if (memchr(b->manifest_text, 0, manifest_len))
        return kv_fail(err, KV_EFORMAT, "%s: %s contains a NUL byte", b->path, KVB_MANIFEST);

    if ((rc = next_entry(w, KVB_MANIFEST_SHA, 256, 0, &data, &n, &copy, err))) return rc;
    /* exactly the line the writer makes: lower-case hex of the manifest bytes */
    uint8_t d[32];
    char hex[65], want[128];
    kv_sha256(b->manifest_text, manifest_len, d);
    kv_sha256_hex(d, hex);
    int want_len = snprintf(want, sizeof want, "%s  %s\n", hex, KVB_MANIFEST);
    int same = n == (uint64_t)want_len && memcmp(data, want, (size_t)n) == 0;
    free(copy);
    if (!same)
        return kv_fail(err, KV_ECHECKSUM, "%s: %s: sha256 mismatch: the manifest is corrupted",
                       b->path, KVB_MANIFEST);
    return kvb_manifest_parse(&b->m, b->manifest_text, manifest_len, b->path, err);
}

static int read_tensor_data(walker *w, kv_error *err) {
    kv_bundle *b = w->b;
    uint64_t n;
    return next_entry(w, KVB_DATA, b->m.stored_size, 1, &b->stored, &n, &b->stored_copy, err);
}

/* each file entry: exact stored size, decoded to exactly its size, sha256 checked */
static int read_files(walker *w, kv_error *err) {
    kv_bundle *b = w->b;
    for (int i = 0; i < b->m.n_files; i++) {
        const kvb_file *f = &b->m.files[i];
        const uint8_t *data;
        uint8_t *copy;
        uint64_t n;
        int rc = next_entry(w, f->entry, f->stored_size, 1, &data, &n, &copy, err);
        if (rc) return rc;
        char *out = malloc((size_t)f->size + 1);
        if (!out) {
            free(copy);
            return kv_fail(err, KV_ENOMEM, "%s: file '%s': no memory for %llu bytes", b->path,
                           f->name, (unsigned long long)f->size);
        }
        if (f->codec == KV_CODEC_RAW) {
            memcpy(out, data, (size_t)f->size);
        } else {
            size_t frame = ZSTD_findFrameCompressedSize(data, (size_t)n);
            unsigned long long declared = ZSTD_getFrameContentSize(data, (size_t)n);
            size_t got = 0;
            if (ZSTD_isError(frame) || frame != n || declared != f->size) rc = -1;
            if (!rc) got = ZSTD_decompress(out, (size_t)f->size, data, (size_t)n);
            if (rc || ZSTD_isError(got) || got != f->size) {
                free(out);
                free(copy);
                return kv_fail(
                    err, KV_ECHECKSUM,
                    "%s: file '%s': entry '%s' does not decompress to its %llu bytes (corrupted)",
                    b->path, f->name, f->entry, (unsigned long long)f->size);
            }
        }
        free(copy);
        out[f->size] = 0;
        b->file_data[i] = out;
        uint8_t d[32];
        kv_sha256(out, (size_t)f->size, d);
        if (memcmp(d, f->sha256, 32) != 0)
            return kv_fail(err, KV_ECHECKSUM,
                           "%s: file '%s': sha256 mismatch: the file is corrupted", b->path,
                           f->name);
    }
    return 0;
}

/* The JSON files hold no NUL byte (readers take them as C strings: text after one would be
 * ignored, unseen by the digest's meaning), and the embedded config.json describes the same KV
 * map as the manifest that lists the bundle's tensors. */
static int check_embedded_json(kv_bundle *b, kv_error *err) {
    for (int i = 0; i < b->m.n_files; i++) {
        const kvb_file *f = &b->m.files[i];
        const size_t n = strlen(f->name);
        const char *nul = memchr(b->file_data[i], 0, (size_t)f->size);
        if (n >= 5 && strcmp(f->name + n - 5, ".json") == 0 && nul)
            return kv_fail(err, KV_EFORMAT, "%s: file '%s': NUL byte at offset %zu (not JSON text)",
                           b->path, f->name, (size_t)(nul - b->file_data[i]));
    }
    size_t n_config = 0;
    const char *text = kv_bundle_file(b, "config.json", &n_config);
    cJSON *config = text ? cJSON_ParseWithLength(text, n_config) : NULL;
    if (!config) return kv_fail(err, KV_EFORMAT, "%s: file 'config.json' is not JSON", b->path);
    kv_map map;
    char label[600];
    snprintf(label, sizeof label, "%s: file 'config.json'", b->path);
    int rc = kvb_kv_map(config, &map, label, err);
    cJSON_Delete(config);
    if (!rc && !kvmap_equal(&map, b->m.map))
        rc = kv_fail(err, KV_EFORMAT,
                     "%s: file 'config.json' describes another KV map than the manifest", b->path);
    return rc;
}

/* the tensor table as st_file / st_checkpoint (data pointers set by a load) */
static int build_view(kv_bundle *b, kv_error *err) {
    const kvb_manifest *m = &b->m;
    st_file *s = &b->st;
    s->tensors = calloc((size_t)m->n_tensors + 1, sizeof *s->tensors);
    s->meta_keys = calloc((size_t)m->n_meta + 1, sizeof(char *));
    s->meta_values = calloc((size_t)m->n_meta + 1, sizeof(char *));
    s->path = strdup(b->path);
    b->ck.dir = strdup(b->path);
    b->ck.tensors = calloc((size_t)m->n_tensors + 1, sizeof *b->ck.tensors);
    if (!s->tensors || !s->meta_keys || !s->meta_values || !s->path || !b->ck.dir || !b->ck.tensors)
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", b->path);
    for (int i = 0; i < m->n_tensors; i++) {
        const kvb_tensor *t = &m->tensors[i];
        st_tensor *o = &s->tensors[i];
        if (!(o->name = strdup(t->name)))
            return kv_fail(err, KV_ENOMEM, "%s: out of memory", b->path);
        s->n_tensors = i + 1;
        o->dtype = t->dtype;
        o->n_dims = t->n_dims;
        memcpy(o->shape, t->shape, sizeof o->shape);
        o->n_elements = 1;
        for (int d = 0; d < t->n_dims; d++) o->n_elements *= (size_t)t->shape[d];
        o->n_bytes = (size_t)t->size;
        o->offset = (size_t)t->offset;
        o->file_index = 0;
        b->ck.tensors[i] = o;
    }
    for (int i = 0; i < m->n_meta; i++) {
        s->meta_keys[i] = strdup(m->meta_keys[i]);
        s->meta_values[i] = strdup(m->meta_values[i]);
        s->n_meta = i + 1;
        if (!s->meta_keys[i] || !s->meta_values[i])
            return kv_fail(err, KV_ENOMEM, "%s: out of memory", b->path);
    }
    s->data_size = (size_t)m->raw_size;
    b->ck.n_files = 1;
    b->ck.files = s;
    b->ck.n_tensors = m->n_tensors;
    return 0;
}

static int map_file(kv_bundle *b, kv_error *err) {
    int fd = open(b->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_fail(err, KV_EIO, "%s: cannot open: %s", b->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kv_fail(err, KV_EIO, "%s: not a regular file", b->path);
    }
    if (st.st_size < 1024) {
        close(fd);
        return kv_fail(err, KV_EFORMAT, "%s: %lld bytes, too short for a bundle (truncated?)",
                       b->path, (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return kv_fail(err, KV_EIO, "%s: mmap failed: %s", b->path, strerror(e));
    b->map = p;
    b->map_size = (size_t)st.st_size;
    return 0;
}

void kv_bundle_close(kv_bundle *b) {
    if (!b) return;
    if (b->raw_map_size) {
        munmap(b->raw, b->raw_map_size);
        const kv_mem_item decoded = {"bundle tensors", (uint64_t)b->m.raw_size};
        kv_mem_release(&decoded, 1);
    }
    for (int i = 0; i < b->st.n_tensors; i++) free(b->st.tensors[i].name);
    free(b->st.tensors);
    for (int i = 0; i < b->st.n_meta; i++) {
        free(b->st.meta_keys[i]);
        free(b->st.meta_values[i]);
    }
    free(b->st.meta_keys);
    free(b->st.meta_values);
    free(b->st.path);
    free(b->ck.dir);
    free(b->ck.tensors);
    for (int i = 0; i < KVB_MAX_FILES; i++) free(b->file_data[i]);
    free(b->stored_copy);
    kvb_manifest_free(&b->m);
    free(b->manifest_text);
    if (b->map) munmap((void *)b->map, b->map_size);
    free(b->path);
    free(b);
}

int kv_bundle_open(kv_bundle **out, const char *path, kv_error *err) {
    *out = NULL;
    kv_bundle *b = calloc(1, sizeof *b);
    if (!b) return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    if (!(b->path = strdup(path))) {
        free(b);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    }
    int rc = map_file(b, err);
    walker w = {.b = b, .data_end = 0};
    if (!rc) {
        w.a = archive_read_new();
        if (!w.a) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    }
    if (!rc && (archive_read_support_format_tar(w.a) != ARCHIVE_OK ||
                archive_read_open_memory(w.a, b->map, b->map_size) != ARCHIVE_OK))
        rc = kv_fail(err, KV_EFORMAT, "%s: not a tar archive: %s", path,
                     archive_error_string(w.a) ? archive_error_string(w.a) : "unreadable");
    if (!rc) rc = read_manifest(&w, err);
    if (!rc) rc = read_tensor_data(&w, err);
    if (!rc) rc = read_files(&w, err);
    if (!rc) rc = expect_end(&w, err);
    if (!rc) rc = check_embedded_json(b, err);
    if (w.a) archive_read_free(w.a);
    if (!rc) rc = build_view(b, err);
    if (rc) {
        kv_bundle_close(b);
        return rc;
    }
    *out = b;
    return 0;
}

/* ---------------- accessors ---------------- */

size_t kv_bundle_raw_size(const kv_bundle *b) { return (size_t)b->m.raw_size; }
const st_checkpoint *kv_bundle_checkpoint(const kv_bundle *b) { return &b->ck; }
const st_tensor *kv_bundle_find(const kv_bundle *b, const char *name) {
    return st_find(&b->st, name);
}
const char *kv_bundle_manifest(const kv_bundle *b) { return b->manifest_text; }
const char *kv_bundle_architecture(const kv_bundle *b) {
    return b->m.architecture ? b->m.architecture : "";
}

const char *kv_bundle_file(const kv_bundle *b, const char *name, size_t *n) {
    for (int i = 0; i < b->m.n_files; i++)
        if (strcmp(b->m.files[i].name, name) == 0) {
            if (n) *n = (size_t)b->m.files[i].size;
            return b->file_data[i];
        }
    if (n) *n = 0;
    return NULL;
}

int kv_bundle_extract_files(const kv_bundle *b, const char *dir, kv_error *err) {
    char path[4096];
    for (int i = 0; i < b->m.n_files; i++) {
        int rc = kv_join(path, sizeof path, dir, b->m.files[i].name, err);
        if (!rc) rc = kv_write_file_atomic(path, b->file_data[i], (size_t)b->m.files[i].size, err);
        if (rc) return rc;
    }
    return 0;
}

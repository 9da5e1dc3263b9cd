/* Bundle writer: model directory -> deterministic pax tar, written beside OUT and renamed. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "formats/bundle_internal.h"
#include "base/fileio.h"
#include "base/sha256.h"
#include "formats/hfconfig.h"
#include "formats/llama_view.h"

#define KVB_FILE_LEVEL 19 /* config / tokenizer files: small, compressed hard */

typedef struct {
    char *bytes[KVB_MAX_FILES]; /* original contents, by position in the manifest file table */
    uint8_t *stored[KVB_MAX_FILES]; /* zstd frame when codec is zstd */
    cJSON *config, *kvforge;
    kv_map map;
} model_files;

static void model_files_free(model_files *f) {
    for (int i = 0; i < KVB_MAX_FILES; i++) {
        free(f->bytes[i]);
        free(f->stored[i]);
    }
    cJSON_Delete(f->config);
    cJSON_Delete(f->kvforge);
}

/* config.json and kvforge.json are copied into manifest.json one level down; cJSON refuses to
 * read text nested over 1000 levels, so a file nested near that would make a bundle no reader
 * opens. Real ones are a few levels deep. */
#define KVB_MAX_JSON_DEPTH 64

static int json_depth_ok(const cJSON *v, int depth) {
    if (depth > KVB_MAX_JSON_DEPTH) return 0;
    for (const cJSON *c = v->child; c; c = c->next)
        if (!json_depth_ok(c, depth + 1)) return 0;
    return 1;
}

static int parse_json_file(cJSON **out, const char *text, size_t n, const char *path,
                           kv_error *err) {
    *out = cJSON_ParseWithLength(text, n);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return kv_fail(err, KV_EFORMAT, "%s: not a JSON object", path);
    }
    if (!json_depth_ok(*out, 1)) {
        cJSON_Delete(*out);
        *out = NULL;
        return kv_fail(err, KV_EFORMAT, "%s: nested deeper than %d levels", path,
                       KVB_MAX_JSON_DEPTH);
    }
    return 0;
}

/* reads the known files of dir into m->files / f, compressing each when it pays */
static int read_model_files(kvb_manifest *m, model_files *f, const char *dir, kv_error *err) {
    char path[4096];
    for (int k = 0; k < kvb_n_file_names; k++) {
        const char *name = kvb_file_names[k];
        int rc = kv_join(path, sizeof path, dir, name, err);
        if (rc) return rc;
        if (!kv_path_exists(path)) {
            if (k == 0) return kv_fail(err, KV_EIO, "%s: no config.json", dir);
            continue;
        }
        int i = m->n_files;
        size_t n = 0;
        if ((rc = kv_read_file(path, &f->bytes[i], &n, KV_BUNDLE_MAX_FILE, err))) return rc;
        const size_t name_len = strlen(name);
        const char *nul = memchr(f->bytes[i], 0, n);
        if (nul && name_len >= 5 && strcmp(name + name_len - 5, ".json") == 0)
            return kv_fail(err, KV_EFORMAT, "%s: NUL byte at offset %zu (not JSON text)", path,
                           (size_t)(nul - f->bytes[i]));
        kvb_file *e = &m->files[i];
        m->n_files++;
        e->name = name;
        e->size = n;
        kv_sha256(f->bytes[i], n, e->sha256);
        e->codec = KV_CODEC_RAW;
        e->stored_size = n;
        if (n > 0) {
            size_t cap = ZSTD_compressBound(n);
            uint8_t *z = malloc(cap);
            if (!z) return kv_fail(err, KV_ENOMEM, "%s: no memory to compress", path);
            size_t got = ZSTD_compress(z, cap, f->bytes[i], n, KVB_FILE_LEVEL);
            if (!ZSTD_isError(got) &&
                (unsigned long long)got * 100 < (unsigned long long)n * KV_CHUNK_RAW_PERCENT) {
                f->stored[i] = z;
                e->codec = KV_CODEC_ZSTD;
                e->stored_size = got;
            } else {
                free(z);
            }
        }
        snprintf(e->entry, sizeof e->entry, "%s%s", name, e->codec == KV_CODEC_ZSTD ? ".zst" : "");
        if (k == 0) {
            if ((rc = parse_json_file(&f->config, f->bytes[i], n, path, err))) return rc;
            if ((rc = kvb_kv_map(f->config, &f->map, path, err))) return rc;
        } else if (strcmp(name, "kvforge.json") == 0) {
            if ((rc = parse_json_file(&f->kvforge, f->bytes[i], n, path, err))) return rc;
        }
    }
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(f->config, "architectures");
    const cJSON *arch = cJSON_GetArrayItem(archs, 0);
    if (!cJSON_IsString(arch)) arch = cJSON_GetObjectItemCaseSensitive(f->config, "model_type");
    m->architecture = strdup(cJSON_IsString(arch) ? arch->valuestring : "");
    if (!m->architecture) return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    return 0;
}

/* the model is one kvforge runs: config.json parses (hf_config: a supported schema) and every
 * tensor binds (llama_view), so an unsupported model is refused before anything is written */
static int check_model(const model_files *f, const st_checkpoint *ck, const char *dir,
                       kv_error *err) {
    char label[4096];
    snprintf(label, sizeof label, "%s/config.json", dir);
    hf_config *c = malloc(sizeof *c);
    if (!c) return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    int rc = hf_config_parse(c, f->bytes[0], label, err);
    if (!rc) {
        llama_view v;
        rc = llama_view_bind(&v, c, ck, err);
        if (rc) kv_wrap(err, "%s", dir);
        else llama_view_free(&v);
    }
    free(c);
    return rc;
}

/* encodes every tensor into data_fd (tensors.bin) and fills the manifest's tensor table */
static int encode_tensors(kvb_manifest *m, const st_checkpoint *ck, int data_fd,
                          const kv_bundle_opts *opts, const char *out_path, kv_error *err) {
    m->tensors = calloc((size_t)ck->n_tensors + 1, sizeof *m->tensors);
    if (!m->tensors) return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
    kv_codec_opts co = {.chunk_size = opts ? opts->chunk_size : 0,
                        .level = opts ? opts->level : 0,
                        .threads = opts ? opts->threads : 0};
    m->chunk_size = co.chunk_size ? co.chunk_size : KV_CHUNK_DEFAULT_SIZE;
    int chunk_cap = 0;
    uint64_t raw_end = 0;
    for (int i = 0; i < ck->n_tensors; i++) {
        const st_tensor *s = ck->tensors[i];
        kvb_tensor *t = &m->tensors[i];
        m->n_tensors = i + 1;
        if (!(t->name = strdup(s->name)))
            return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
        t->dtype = s->dtype;
        t->n_dims = s->n_dims;
        memcpy(t->shape, s->shape, sizeof t->shape);
        t->offset = kvb_align_up(raw_end);
        t->size = s->n_bytes;
        raw_end = t->offset + t->size;
        t->transform = kv_transform_for(s->dtype);
        kv_sha256(s->data, s->n_bytes, t->sha256);

        kv_encoded e;
        int rc = kv_chunk_encode(s->data, s->n_bytes, s->dtype, &co, &e, err);
        if (rc) return kv_wrap(err, "%s: tensor '%s'", out_path, s->name);
        if (kv_write_all(data_fd, e.stored, e.stored_size) != 0) {
            kv_encoded_free(&e);
            return kv_fail(err, KV_EIO, "%s: cannot write tensor data to a temporary file: %s",
                           out_path, strerror(errno));
        }
        if (m->n_chunks + e.n_chunks > chunk_cap) {
            int cap = chunk_cap ? chunk_cap : 256;
            while (cap < m->n_chunks + e.n_chunks) cap *= 2;
            kv_chunk *p = realloc(m->chunks, (size_t)cap * sizeof *p);
            if (!p) {
                kv_encoded_free(&e);
                return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
            }
            m->chunks = p;
            chunk_cap = cap;
        }
        t->first_chunk = m->n_chunks;
        t->n_chunks = e.n_chunks;
        for (int c = 0; c < e.n_chunks; c++) {
            kv_chunk k = e.chunks[c];
            k.raw_offset += t->offset;
            k.stored_offset += m->stored_size;
            m->chunks[m->n_chunks++] = k;
        }
        m->stored_size += e.stored_size;
        kv_encoded_free(&e);
    }
    m->raw_size = raw_end;
    return 0;
}

static int copy_meta(kvb_manifest *m, const st_checkpoint *ck, const char *out_path,
                     kv_error *err) {
    if (ck->n_files == 0) return 0;
    const st_file *f = &ck->files[0];
    m->meta_keys = calloc((size_t)f->n_meta + 1, sizeof(char *));
    m->meta_values = calloc((size_t)f->n_meta + 1, sizeof(char *));
    if (!m->meta_keys || !m->meta_values)
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
    for (int i = 0; i < f->n_meta; i++) {
        m->meta_keys[i] = strdup(f->meta_keys[i]);
        m->meta_values[i] = strdup(f->meta_values[i]);
        m->n_meta++;
        if (!m->meta_keys[i] || !m->meta_values[i])
            return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
    }
    return 0;
}

/* ---- archive ---- */

/* libarchive's message, with the system error when there is one ("Write error: No space left
 * on device") */
static const char *archive_why(struct archive *a, char *buf, size_t cap) {
    const char *msg = archive_error_string(a) ? archive_error_string(a) : "write failed";
    int e = archive_errno(a);
    if (e > 0 && !strstr(msg, strerror(e))) snprintf(buf, cap, "%s: %s", msg, strerror(e));
    else snprintf(buf, cap, "%s", msg);
    return buf;
}

static int put_header(struct archive *a, const char *name, uint64_t size, const char *out_path,
                      kv_error *err) {
    struct archive_entry *e = archive_entry_new();
    if (!e) return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
    archive_entry_set_pathname(e, name);
    archive_entry_set_size(e, (la_int64_t)size);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, 0, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    int rc = archive_write_header(a, e);
    archive_entry_free(e);
    char why[512];
    if (rc != ARCHIVE_OK)
        return kv_fail(err, KV_EIO, "%s: entry '%s': %s", out_path, name,
                       archive_why(a, why, sizeof why));
    return 0;
}

static int put_data(struct archive *a, const void *bytes, size_t n, const char *name,
                    const char *out_path, kv_error *err) {
    const uint8_t *p = bytes;
    char why[512];
    while (n > 0) {
        la_ssize_t w = archive_write_data(a, p, n);
        if (w <= 0)
            return kv_fail(err, KV_EIO, "%s: entry '%s': %s", out_path, name,
                           archive_why(a, why, sizeof why));
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int put_entry(struct archive *a, const char *name, const void *bytes, size_t n,
                     const char *out_path, kv_error *err) {
    int rc = put_header(a, name, n, out_path, err);
    return rc ? rc : put_data(a, bytes, n, name, out_path, err);
}

static int put_tensor_data(struct archive *a, int data_fd, uint64_t size, const char *out_path,
                           kv_error *err) {
    int rc = put_header(a, KVB_DATA, size, out_path, err);
    if (rc) return rc;
    enum { BLOCK = 4 << 20 };
    uint8_t *buf = malloc(BLOCK);
    if (!buf) return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
    uint64_t pos = 0;
    while (!rc && pos < size) {
        size_t want = size - pos < BLOCK ? (size_t)(size - pos) : BLOCK;
        ssize_t got = pread(data_fd, buf, want, (off_t)pos);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            rc = kv_fail(err, KV_EIO, "%s: cannot read back the temporary tensor data", out_path);
            break;
        }
        rc = put_data(a, buf, (size_t)got, KVB_DATA, out_path, err);
        pos += (uint64_t)got;
    }
    free(buf);
    return rc;
}

static int write_archive(int fd, const char *manifest, const kvb_manifest *m, const model_files *f,
                         int data_fd, const char *out_path, kv_error *err) {
    struct archive *a = archive_write_new();
    if (!a) return kv_fail(err, KV_ENOMEM, "%s: out of memory", out_path);
    int rc = 0;
    if (archive_write_set_format_pax(a) != ARCHIVE_OK ||
        archive_write_add_filter_none(a) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
        archive_write_open_fd(a, fd) != ARCHIVE_OK)
        rc = kv_fail(err, KV_EIO, "%s: cannot start the archive: %s", out_path,
                     archive_error_string(a));
    size_t manifest_len = strlen(manifest);
    if (!rc) rc = put_entry(a, KVB_MANIFEST, manifest, manifest_len, out_path, err);
    if (!rc) {
        uint8_t d[32];
        char hex[65], line[128];
        kv_sha256(manifest, manifest_len, d);
        kv_sha256_hex(d, hex);
        int n = snprintf(line, sizeof line, "%s  %s\n", hex, KVB_MANIFEST);
        rc = put_entry(a, KVB_MANIFEST_SHA, line, (size_t)n, out_path, err);
    }
    if (!rc) rc = put_tensor_data(a, data_fd, m->stored_size, out_path, err);
    for (int i = 0; i < m->n_files && !rc; i++) {
        const kvb_file *e = &m->files[i];
        const void *bytes =
            e->codec == KV_CODEC_ZSTD ? (const void *)f->stored[i] : (const void *)f->bytes[i];
        rc = put_entry(a, e->entry, bytes, (size_t)e->stored_size, out_path, err);
    }
    char why[512];
    if (!rc && archive_write_close(a) != ARCHIVE_OK)
        rc = kv_fail(err, KV_EIO, "%s: cannot finish the archive: %s", out_path,
                     archive_why(a, why, sizeof why));
    archive_write_free(a);
    return rc;
}

int kv_bundle_check_output(const char *out_path, const char *const *dirs, int n_dirs, int force,
                           kv_error *err) {
    struct stat os;
    if (stat(out_path, &os) != 0) return 0; /* nothing there: a new file */
    for (int d = 0; d < n_dirs; d++) {
        struct stat ds;
        if (!dirs[d] || stat(dirs[d], &ds) != 0) continue;
        if (ds.st_dev == os.st_dev && ds.st_ino == os.st_ino)
            return kv_fail(err, KV_EINVAL,
                           "%s: is the model %s itself; give a new file name for the bundle",
                           out_path, dirs[d]);
        DIR *dh = S_ISDIR(ds.st_mode) ? opendir(dirs[d]) : NULL;
        if (!dh) continue;
        struct dirent *e;
        int clash = 0;
        char path[4096];
        while (!clash && (e = readdir(dh))) {
            struct stat fs;
            if (snprintf(path, sizeof path, "%s/%s", dirs[d], e->d_name) >= (int)sizeof path)
                continue;
            if (stat(path, &fs) == 0 && S_ISREG(fs.st_mode) && fs.st_dev == os.st_dev &&
                fs.st_ino == os.st_ino)
                clash = 1;
        }
        closedir(dh);
        if (clash)
            return kv_fail(
                err, KV_EINVAL,
                "%s: is %s, a file of the model directory %s; give a new file name for the bundle",
                out_path, path, dirs[d]);
    }
    if (S_ISDIR(os.st_mode))
        return kv_fail(err, KV_EINVAL,
                       "%s: is a directory; the bundle is one file (e.g. %s/model.kvb)", out_path,
                       out_path);
    if (!force) return kv_fail(err, KV_EINVAL, "%s: already exists; --force replaces it", out_path);
    return 0;
}

int kv_bundle_write(const char *model_dir, const char *out_path, const kv_bundle_opts *opts,
                    kv_error *err) {
    {
        const char *dirs[1] = {model_dir};
        const int rc = kv_bundle_check_output(out_path, dirs, 1, 1, err);
        if (rc) return rc;
    }
    kvb_manifest m;
    model_files f;
    st_checkpoint ck;
    memset(&m, 0, sizeof m);
    memset(&f, 0, sizeof f);
    memset(&ck, 0, sizeof ck);
    char *manifest = NULL;
    char data_tmp[4096], out_tmp[4096], data_base[4096];
    int data_fd = -1, out_fd = -1;

    int rc = read_model_files(&m, &f, model_dir, err);
    if (!rc) rc = st_checkpoint_open(&ck, model_dir, err);
    if (!rc && opts && opts->check_model) rc = check_model(&f, &ck, model_dir, err);
    if (!rc) rc = copy_meta(&m, &ck, out_path, err);
    if (!rc && snprintf(data_base, sizeof data_base, "%s.data", out_path) >= (int)sizeof data_base)
        rc = kv_fail(err, KV_EINVAL, "%s: path too long", out_path);
    if (!rc) rc = kv_tmpfile_beside(data_base, data_tmp, sizeof data_tmp, &data_fd, err);
    if (!rc) unlink(data_tmp); /* anonymous from here: gone with the descriptor whatever happens */
    if (!rc) rc = encode_tensors(&m, &ck, data_fd, opts, out_path, err);
    if (!rc) {
        manifest = kvb_manifest_print(&m, f.config, &f.map, f.kvforge);
        if (!manifest) rc = kv_fail(err, KV_ENOMEM, "%s: cannot build the manifest", out_path);
        else if (strlen(manifest) > KV_BUNDLE_MAX_MANIFEST)
            rc = kv_fail(err, KV_EUNSUPPORTED,
                         "%s: manifest of %zu bytes exceeds the %zu limit (use larger chunks)",
                         out_path, strlen(manifest), KV_BUNDLE_MAX_MANIFEST);
    }
    if (!rc) rc = kv_tmpfile_beside(out_path, out_tmp, sizeof out_tmp, &out_fd, err);
    if (!rc) {
        rc = write_archive(out_fd, manifest, &m, &f, data_fd, out_path, err);
        if (rc) {
            close(out_fd);
            unlink(out_tmp);
        } else {
            rc = kv_commit_tmpfile(out_fd, out_tmp, out_path, err);
        }
    }
    if (data_fd >= 0) close(data_fd);
    free(manifest);
    st_checkpoint_close(&ck);
    model_files_free(&f);
    kvb_manifest_free(&m);
    return rc;
}

/* A bundle that is corrupted, truncated, padded, reordered, path-traversing, linking, or whose
 * manifest was rewritten, gives a clear error; a flipped byte anywhere is detected and one in
 * the tensor data names its tensor; failed writes and unbundles leave nothing behind. */
#include <archive.h>
#include <archive_entry.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/bundle.h"
#include "base/dtype.h"
#include "base/fileio.h"
#include "formats/safetensors.h"
#include "base/sha256.h"
#include "tests/check.h"

#ifdef __SANITIZE_ADDRESS__
#define FLIP_STRIDE 61
#else
#define FLIP_STRIDE 7
#endif

static char root[] = "/tmp/kv_test_bundle_corrupt_XXXXXX";
static char model_dir[600], good_path[600], bad_path[600];
static uint8_t *good;
static size_t good_size;

static uint64_t rng = 0x2545F4914F6CDD1DULL;
static uint32_t next32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* ---- a small BF16 model: 5 tensors, 4 KiB chunks ---- */

static int fill(void *ctx, int index, st_writer *w, kv_error *err) {
    const st_spec *specs = ctx;
    size_t n = st_spec_bytes(&specs[index]) / 2;
    uint16_t *v = malloc(2 * n + 2);
    for (size_t i = 0; i < n; i++) {
        float x = ((float)(next32() % 2001) - 1000.0f) * 2e-5f; /* small weights */
        v[i] = kv_f32_to_bf16(x);
    }
    int rc = st_writer_put(w, v, 2 * n, err);
    free(v);
    return rc;
}

static int make_model(const char *dir) {
    kv_error err = {0};
    char path[700];
    if (kv_mkdir_p(dir, &err)) return -1;
    const char *config =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2,\"hidden_size\":16}\n";
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (kv_write_file_atomic(path, config, strlen(config), &err)) return -1;
    const char *tok = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"hello\":0,\"world\":1,\"hello "
                      "world\":2}},\"added_tokens\":[]}\n";
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (kv_write_file_atomic(path, tok, strlen(tok), &err)) return -1;
    st_spec specs[5] = {
        {.name = "a.weight", .dtype = KV_BF16, .n_dims = 2, .shape = {40, 100}},
        {.name = "b.weight", .dtype = KV_BF16, .n_dims = 1, .shape = {16}},
        {.name = "c.weight", .dtype = KV_BF16, .n_dims = 2, .shape = {16, 130}},
        {.name = "d.weight", .dtype = KV_BF16, .n_dims = 1, .shape = {3}},
        {.name = "e.weight", .dtype = KV_BF16, .n_dims = 2, .shape = {30, 70}},
    };
    return st_write_checkpoint(dir, specs, 5, 0, NULL, 0, fill, specs, &err);
}

/* ---- helpers ---- */

static int write_bytes(const char *path, const uint8_t *b, size_t n) {
    unlink(path); /* a new file, not a truncated one: ext4 flushes truncate-and-rewrite on close */
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(b, 1, n, f) : 0;
    return fclose(f) == 0 && w == n ? 0 : -1;
}

/* open + load: 0 or the first error */
static int open_and_load(const char *path, kv_error *err) {
    kv_bundle *b;
    int rc = kv_bundle_open(&b, path, err);
    if (rc) return rc;
    rc = kv_bundle_load_tensors(b, NULL, 0, 2, err);
    kv_bundle_close(b);
    return rc;
}

/* our own walk of the ustar headers (independent of libarchive): data offset of an entry */
static int find_entry(const uint8_t *t, size_t n, const char *name, size_t *data_off,
                      size_t *size) {
    size_t pos = 0;
    while (pos + 512 <= n && t[pos]) {
        size_t sz = 0;
        for (int i = 124; i < 136 && t[pos + i] >= '0' && t[pos + i] <= '7'; i++)
            sz = sz * 8 + (size_t)(t[pos + i] - '0');
        if (strncmp((const char *)t + pos, name, 100) == 0) {
            *data_off = pos + 512;
            *size = sz;
            return 0;
        }
        pos += 512 + (sz + 511) / 512 * 512;
    }
    return -1;
}

typedef struct {
    const char *name;
    const void *bytes;
    size_t size;
    int type; /* AE_IFREG (0 means regular), AE_IFLNK, AE_IFCHR, AE_IFDIR */
    const char *link; /* symlink target */
    const char *hardlink;
} entry;

static int write_archive(const char *path, const entry *e, int n) {
    unlink(path);
    struct archive *a = archive_write_new();
    archive_write_set_format_pax(a);
    archive_write_set_bytes_in_last_block(a, 1);
    if (archive_write_open_filename(a, path) != ARCHIVE_OK) return -1;
    for (int i = 0; i < n; i++) {
        struct archive_entry *x = archive_entry_new();
        archive_entry_set_pathname(x, e[i].name);
        archive_entry_set_filetype(x, e[i].type ? (unsigned)e[i].type : AE_IFREG);
        archive_entry_set_perm(x, 0644);
        archive_entry_set_mtime(x, 0, 0);
        if (e[i].link) archive_entry_set_symlink(x, e[i].link);
        if (e[i].hardlink) archive_entry_set_hardlink(x, e[i].hardlink);
        int reg = !e[i].type || e[i].type == AE_IFREG;
        archive_entry_set_size(x, reg && !e[i].hardlink ? (la_int64_t)e[i].size : 0);
        archive_write_header(a, x);
        if (reg && !e[i].hardlink && e[i].size) archive_write_data(a, e[i].bytes, e[i].size);
        archive_entry_free(x);
    }
    archive_write_close(a);
    archive_write_free(a);
    return 0;
}

/* the good bundle's entries, in order (bytes point into `good`) */
static int good_entries(entry *e, int max) {
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    archive_read_open_memory(a, good, good_size);
    struct archive_entry *x;
    int n = 0;
    static char names[16][128];
    while (n < max && archive_read_next_header(a, &x) == ARCHIVE_OK) {
        snprintf(names[n], sizeof names[n], "%s", archive_entry_pathname(x));
        size_t off, size;
        find_entry(good, good_size, names[n], &off, &size);
        e[n] = (entry){.name = names[n], .bytes = good + off, .size = size};
        n++;
    }
    archive_read_free(a);
    return n;
}

static void expect_error(const entry *e, int n, int want_code, const char *want_text,
                         const char *what) {
    kv_error err = {0};
    CHECK(write_archive(bad_path, e, n) == 0, "%s: write archive", what);
    int rc = open_and_load(bad_path, &err);
    CHECK(rc != 0 && (!want_code || rc == want_code), "%s: rc %d (%s), want %d", what, rc, err.msg,
          want_code);
    CHECK(!want_text || strstr(err.msg, want_text), "%s: message '%s' lacks '%s'", what, err.msg,
          want_text);
}

/* ---- the checks ---- */

/* stored byte -> tensor name, from the manifest */
static const char *owner_of(cJSON *manifest, size_t stored) {
    cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItem(manifest, "tensors")) {
        cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(t, "chunks")) {
            size_t off = (size_t)cJSON_GetArrayItem(c, 1)->valuedouble,
                   n = (size_t)cJSON_GetArrayItem(c, 2)->valuedouble;
            if (stored >= off && stored < off + n)
                return cJSON_GetObjectItem(t, "name")->valuestring;
        }
    }
    return NULL;
}

static void check_every_flip(void) {
    size_t m_off, m_size, d_off, d_size;
    CHECK(find_entry(good, good_size, "manifest.json", &m_off, &m_size) == 0, "manifest entry");
    CHECK(find_entry(good, good_size, "tensors.bin", &d_off, &d_size) == 0, "tensors.bin entry");
    cJSON *manifest = cJSON_ParseWithLength((const char *)good + m_off, m_size);
    CHECK(manifest != NULL, "manifest parses");
    if (!manifest) return;
    CHECK(d_size > 4 && good[d_off] == 0x28 && good[d_off + 1] == 0xB5,
          "tensors.bin starts with a zstd frame");

    uint8_t *bad = malloc(good_size);
    int trials = 0, undetected = 0, misnamed = 0;
    for (size_t p = 0; p < good_size; p += FLIP_STRIDE) {
        memcpy(bad, good, good_size);
        bad[p] ^= (uint8_t)(1u << (p % 8));
        write_bytes(bad_path, bad, good_size);
        kv_error err = {0};
        int rc = open_and_load(bad_path, &err);
        trials++;
        if (rc == 0) {
            undetected++;
            fprintf(stderr, "  flip at byte %zu went undetected\n", p);
            continue;
        }
        if (p >= d_off &&
            p < d_off + d_size) { /* tensor data: a checksum error naming the tensor */
            const char *name = owner_of(manifest, p - d_off);
            char quoted[128];
            snprintf(quoted, sizeof quoted, "tensor '%s'", name ? name : "?");
            if (rc != KV_ECHECKSUM || !strstr(err.msg, quoted)) {
                misnamed++;
                fprintf(stderr, "  flip at %zu (tensor %s): %d %s\n", p, name, rc, err.msg);
            }
        }
    }
    CHECK(undetected == 0, "%d of %d flips undetected", undetected, trials);
    CHECK(misnamed == 0, "%d flips in tensor data not reported as that tensor's checksum error",
          misnamed);
    CHECK(trials > 100, "only %d flip trials", trials);
    free(bad);
    cJSON_Delete(manifest);
}

static void check_truncated_and_padded(void) {
    size_t cuts[] = {0,
                     100,
                     511,
                     512,
                     1000,
                     good_size / 3,
                     good_size / 2,
                     good_size - 1024 - 1,
                     good_size - 1024,
                     good_size - 512,
                     good_size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(bad_path, good, cuts[i]);
        kv_error err = {0};
        int rc = open_and_load(bad_path, &err);
        CHECK(rc != 0 && err.msg[0], "truncated to %zu bytes: rc %d", cuts[i], rc);
    }
    write_bytes(bad_path, good, good_size - 1024);
    kv_error err = {0};
    open_and_load(bad_path, &err);
    CHECK(strstr(err.msg, "end blocks") != NULL, "missing end blocks: %s", err.msg);

    uint8_t *longer = calloc(1, good_size + 4096);
    memcpy(longer, good, good_size);
    write_bytes(bad_path, longer, good_size + 512);
    CHECK(open_and_load(bad_path, &err) != 0, "zero padding appended accepted");
    longer[good_size + 100] = 'x';
    write_bytes(bad_path, longer, good_size + 4096);
    CHECK(open_and_load(bad_path, &err) != 0, "junk appended accepted");
    free(longer);
}

static void check_entries(void) {
    entry e[16], r[16];
    int n = good_entries(e, 16);
    CHECK(n == 5, "good bundle has %d entries", n);
    if (n != 5) return;
    /* rebuilt unchanged: accepted (the rebuild itself is sound) */
    kv_error err = {0};
    write_archive(bad_path, e, n);
    CHECK(open_and_load(bad_path, &err) == 0, "rebuilt bundle: %s", err.msg);

    memcpy(r, e, sizeof r); /* tensors.bin after the config */
    r[2] = e[3];
    r[3] = e[2];
    expect_error(r, 5, KV_EFORMAT, "out of order", "reordered data and file");
    memcpy(r, e, sizeof r); /* digest before manifest */
    r[0] = e[1];
    r[1] = e[0];
    expect_error(r, 5, KV_EFORMAT, "out of order", "manifest not first");
    memcpy(r, e, sizeof r); /* tokenizer before config */
    r[3] = e[4];
    r[4] = e[3];
    expect_error(r, 5, KV_EFORMAT, "out of order", "files swapped");
    expect_error(e, 4, KV_EFORMAT, "missing", "tokenizer entry missing");
    memcpy(r, e, sizeof r);
    r[5] = (entry){.name = "extra.txt", .bytes = "x", .size = 1};
    expect_error(r, 6, KV_EFORMAT, "extra entry", "extra trailing entry");

    const char *unsafe[] = {"../tokenizer.json", "/tmp/tokenizer.json", "a/../../tokenizer.json",
                            "./tokenizer.json"};
    for (int i = 0; i < 4; i++) {
        memcpy(r, e, sizeof r);
        r[4].name = unsafe[i];
        expect_error(r, 5, KV_EFORMAT, "unsafe path", unsafe[i]);
    }
    memcpy(r, e, sizeof r);
    r[4] = (entry){.name = e[4].name, .type = AE_IFLNK, .link = "/etc/passwd"};
    expect_error(r, 5, KV_EFORMAT, "not a regular file", "symlink entry");
    memcpy(r, e, sizeof r);
    r[4] = (entry){.name = e[4].name, .type = AE_IFCHR};
    expect_error(r, 5, KV_EFORMAT, "not a regular file", "device entry");
    memcpy(r, e, sizeof r);
    r[4] = (entry){.name = e[4].name, .hardlink = "manifest.json"};
    expect_error(r, 5, KV_EFORMAT, "not a regular file", "hardlink entry");
    memcpy(r, e, sizeof r);
    r[4] = (entry){.name = e[4].name, .type = AE_IFDIR};
    expect_error(r, 5, KV_EFORMAT, "refused", "directory entry");
}

/* manifest rewritten with a matching digest: the reader's own checks must catch it */
typedef void (*mutate_fn)(cJSON *m);
static void m_shape(cJSON *m) {
    cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "tensors"), 0);
    cJSON_SetNumberValue(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "shape"), 0), 41);
}
static void m_stored_offset(cJSON *m) {
    cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "tensors"), 1);
    cJSON_SetNumberValue(
        cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "chunks"), 0), 1), 3);
}
static void m_order(cJSON *m) { /* names of tensors 0 and 1 swapped */
    cJSON *ts = cJSON_GetObjectItem(m, "tensors");
    cJSON *a = cJSON_GetArrayItem(ts, 0), *b = cJSON_GetArrayItem(ts, 1);
    char *na = strdup(cJSON_GetObjectItem(a, "name")->valuestring);
    cJSON_ReplaceItemInObject(a, "name",
                              cJSON_CreateString(cJSON_GetObjectItem(b, "name")->valuestring));
    cJSON_ReplaceItemInObject(b, "name", cJSON_CreateString(na));
    free(na);
}
static void m_huge(cJSON *m) { cJSON_SetNumberValue(cJSON_GetObjectItem(m, "stored_size"), 1e15); }
static void m_version(cJSON *m) {
    cJSON_SetNumberValue(cJSON_GetObjectItem(m, "format_version"), 2);
}
static void m_file_name(cJSON *m) {
    cJSON *f = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "files"), 1);
    cJSON_ReplaceItemInObject(f, "name", cJSON_CreateString("../../etc/passwd"));
}
static void m_bomb(cJSON *m) { /* a chunk claiming more than the 64 MiB chunk bound */
    cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "tensors"), 0);
    cJSON_SetNumberValue(
        cJSON_GetArrayItem(cJSON_GetArrayItem(cJSON_GetObjectItem(t, "chunks"), 0), 0), 1e12);
}
static void m_kv_map(cJSON *m) {
    cJSON_SetNumberValue(cJSON_GetArrayItem(cJSON_GetObjectItem(m, "kv_map"), 1), 0);
}
/* the manifest's config says layer 1 reads layer 0, its kv_map agrees; config.json does not */
static void m_config_map(cJSON *m) {
    cJSON_AddStringToObject(cJSON_GetObjectItem(m, "config"), "layer_types", "0_0");
    cJSON_SetNumberValue(cJSON_GetArrayItem(cJSON_GetObjectItem(m, "kv_map"), 1), 0);
}
static void m_sha(cJSON *m) {
    cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "tensors"), 2);
    char hex[65];
    snprintf(hex, sizeof hex, "%s", cJSON_GetObjectItem(t, "sha256")->valuestring);
    hex[0] = hex[0] == '0' ? '1' : '0';
    cJSON_ReplaceItemInObject(t, "sha256", cJSON_CreateString(hex));
}

/* r = the 5 entries e with manifest m (deleted here) and its digest line (in line[128]); returns
 * the manifest text, which r[0] points into (free it after use) */
static char *with_manifest(entry r[5], const entry e[5], cJSON *m, char line[128]) {
    char *text = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    uint8_t d[32];
    char hex[65];
    kv_sha256(text, strlen(text), d);
    kv_sha256_hex(d, hex);
    snprintf(line, 128, "%s  manifest.json\n", hex);
    for (int i = 0; i < 5; i++) r[i] = e[i];
    r[0].bytes = text;
    r[0].size = strlen(text);
    r[1].bytes = line;
    r[1].size = strlen(line);
    return text;
}

static void check_manifest_rewrites(void) {
    entry e[16];
    int n = good_entries(e, 16);
    if (n != 5) return;
    struct {
        mutate_fn fn;
        int code;
        const char *text;
        const char *what;
    } cases[] = {
        {m_shape, KV_EFORMAT, "size is not", "shape changed"},
        {m_stored_offset, KV_EFORMAT, "contiguous", "stored offset moved"},
        {m_order, KV_EFORMAT, "name order", "tensors reordered"},
        {m_huge, KV_EFORMAT, "stored_size", "huge stored size"},
        {m_version, KV_EUNSUPPORTED, "format_version", "future version"},
        {m_file_name, KV_EFORMAT, "may carry", "file name with a path"},
        {m_bomb, KV_EFORMAT, "raw size", "chunk size above the bound"},
        {m_kv_map, KV_EFORMAT, "kv_map", "kv_map inconsistent with the config"},
        {m_config_map, KV_EFORMAT, "another KV map than the manifest",
         "config.json's map not the manifest's"},
        {m_sha, KV_ECHECKSUM, "tensor 'c.weight': sha256 mismatch", "tensor digest changed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *m = cJSON_ParseWithLength(e[0].bytes, e[0].size);
        cases[i].fn(m);
        char line[128];
        entry r[5];
        char *text = with_manifest(r, e, m, line);
        expect_error(r, 5, cases[i].code, cases[i].text, cases[i].what);
        free(text);
    }
    /* manifest changed without updating its digest */
    cJSON *m = cJSON_ParseWithLength(e[0].bytes, e[0].size);
    m_shape(m);
    char *text = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    entry r[5] = {e[0], e[1], e[2], e[3], e[4]};
    r[0].bytes = text;
    r[0].size = strlen(text);
    expect_error(r, 5, KV_ECHECKSUM, "manifest is corrupted", "manifest edited, digest kept");
    free(text);
}

/* config.json replaced by `bytes` (stored raw), the manifest's entry and digests updated */
static void expect_config_refused(const char *bytes, size_t n, const char *want_text,
                                  const char *what) {
    entry e[16];
    if (good_entries(e, 16) != 5) return;
    int at = -1;
    for (int i = 0; i < 5; i++)
        if (strncmp(e[i].name, "config.json", 11) == 0) at = i;
    CHECK(at >= 0, "%s: config.json entry", what);
    if (at < 0) return;
    cJSON *m = cJSON_ParseWithLength(e[0].bytes, e[0].size);
    cJSON *f = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "files"), 0);
    uint8_t d[32];
    char hex[65], line[128];
    kv_sha256(bytes, n, d);
    kv_sha256_hex(d, hex);
    cJSON_ReplaceItemInObject(f, "codec", cJSON_CreateString("raw"));
    cJSON_ReplaceItemInObject(f, "entry", cJSON_CreateString("config.json"));
    cJSON_ReplaceItemInObject(f, "size", cJSON_CreateNumber((double)n));
    cJSON_ReplaceItemInObject(f, "stored_size", cJSON_CreateNumber((double)n));
    cJSON_ReplaceItemInObject(f, "sha256", cJSON_CreateString(hex));
    entry r[5];
    char *text = with_manifest(r, e, m, line);
    r[at] = (entry){.name = "config.json", .bytes = bytes, .size = n};
    expect_error(r, 5, KV_EFORMAT, want_text, what);
    free(text);
}

/* the embedded config.json is read as text by the runtime: it must say what the manifest says */
static void check_embedded_config(void) {
    static const char with_nul[] =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2,"
        "\"hidden_size\":16}\0{\"layer_types\":\"0_0\"}";
    expect_config_refused(with_nul, sizeof with_nul - 1, "NUL byte at offset 77",
                          "config.json with a NUL byte");
    static const char other_map[] =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2,"
        "\"hidden_size\":16,\"layer_types\":\"0_0\"}";
    expect_config_refused(other_map, sizeof other_map - 1, "another KV map than the manifest",
                          "config.json with another map than the manifest");
    /* the writer refuses such a config.json in the first place */
    char dir[700], path[800];
    kv_error err = {0};
    snprintf(dir, sizeof dir, "%s/nul_model", root);
    CHECK(make_model(dir) == 0, "nul model");
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(kv_write_file_atomic(path, with_nul, sizeof with_nul - 1, &err) == 0, "write config: %s",
          err.msg);
    snprintf(path, sizeof path, "%s/nul.kvb", root);
    kv_bundle_opts o = {.chunk_size = 4096, .threads = 1};
    CHECK(kv_bundle_write(dir, path, &o, &err) == KV_EFORMAT && strstr(err.msg, "NUL byte"),
          "writer took a config.json with a NUL byte: %s", err.msg);
}

static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void check_nothing_left_behind(void) {
    char work[700], out[800], target[800];
    kv_error err = {0};
    snprintf(work, sizeof work, "%s/leftovers", root);
    kv_mkdir_p(work, &err);

    /* unbundle of a bundle with a corrupted tensor: fails, leaves no directory */
    uint8_t *bad = malloc(good_size);
    memcpy(bad, good, good_size);
    size_t d_off, d_size;
    find_entry(good, good_size, "tensors.bin", &d_off, &d_size);
    bad[d_off + d_size / 2] ^= 0x10;
    snprintf(out, sizeof out, "%s/bad.kvb", work);
    write_bytes(out, bad, good_size);
    free(bad);
    snprintf(target, sizeof target, "%s/model_out", work);
    CHECK(kv_bundle_unbundle(out, target, &err) == KV_ECHECKSUM,
          "unbundle of a corrupted bundle: %s", err.msg);
    CHECK(!kv_path_exists(target) && dir_entries(work) == 1, "unbundle left %d entries",
          dir_entries(work));
    unlink(out);

    /* write from a directory without config.json, or with a broken checkpoint */
    char src[800], path[900];
    snprintf(src, sizeof src, "%s/src_broken", work);
    kv_mkdir_p(src, &err);
    snprintf(out, sizeof out, "%s/x.kvb", work);
    CHECK(kv_bundle_write(src, out, NULL, &err) != 0, "write without config.json succeeded");
    snprintf(path, sizeof path, "%s/config.json", src);
    kv_write_file_atomic(path, "{\"num_hidden_layers\": 1}", 24, &err);
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    kv_write_file_atomic(path, "\x10\0\0\0\0\0\0\0{\"a\":1}", 15, &err);
    CHECK(kv_bundle_write(src, out, NULL, &err) != 0, "write from a broken checkpoint succeeded");
    CHECK(!kv_path_exists(out) && dir_entries(work) == 1, "failed writes left %d entries",
          dir_entries(work));
}

int main(void) {
    if (!mkdtemp(root)) return 1;
    snprintf(model_dir, sizeof model_dir, "%s/model", root);
    snprintf(good_path, sizeof good_path, "%s/good.kvb", root);
    snprintf(bad_path, sizeof bad_path, "%s/bad.kvb", root);
    kv_error err = {0};
    CHECK(make_model(model_dir) == 0, "make model");
    kv_bundle_opts o = {.chunk_size = 4096, .threads = 2};
    CHECK(kv_bundle_write(model_dir, good_path, &o, &err) == 0, "write: %s", err.msg);
    CHECK(kv_read_file(good_path, (char **)&good, &good_size, 1 << 26, &err) == 0, "read back: %s",
          err.msg);
    CHECK(open_and_load(good_path, &err) == 0, "good bundle: %s", err.msg);

    check_every_flip();
    check_truncated_and_padded();
    check_entries();
    check_manifest_rewrites();
    check_embedded_config();
    check_nothing_left_behind();

    free(good);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (getenv("KV_KEEP_TMP")) fprintf(stderr, "kept %s\n", root);
    else if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return check_done("test_bundle_corrupt");
}
